/* train_cfm.c: training the CFM baseline (cfm.h) with the shared loop (loop.h). A step draws
 * tc->batch points over the data-parallel ranks (rank r builds points [r*n/R, (r+1)*n/R)),
 * couples them (OT-CFM: exact OT over the whole global batch; I-CFM: as drawn), builds the
 * conditional path and adds the loss gradient, which goes to the reducer in one piece. A
 * conditional model (-cfm_cond) gives each point the one-hot condition of the data row its x1
 * comes from, and OT couples within each condition group. */
#include <string.h>

#include "calmflow/cfpetsc.h"
#include "calmflow/mem.h"
#include "calmflow/train.h"
#include "train/loop.h"

struct cfm_ctx {
  const struct cf_train_cfm_opts *opt;
  const struct cf_dist *src, *tgt;
  uint64_t seed;
  struct cf_cfm *m;
  struct cf_cfm_ot ot;
  int64_t g0, B, n;                  /* this rank's points [g0, g0 + B) of n per step */
  float *x0, *x1, *t, *eps, *xt, *u; /* (B, D) each, t (B) */
  float *cond;                       /* conditional: (B, C) the points' one-hot conditions */
  int64_t *row, *grp;                /* conditional: (B) x1's data row, its condition group */
  PetscLogEvent ev_ot, ev_fb;
};

static void cfm_zero_grad(void *ctx) {
  cf_cfm_zero_grad(((struct cfm_ctx *)ctx)->m);
}

static double cfm_grad_sqnorm(void *ctx, int *finite) {
  return cf_cfm_grad_sqnorm(((struct cfm_ctx *)ctx)->m, finite);
}

/* Collective on the data-parallel ranks (the OT coupling gathers the global batch). */
static cf_status cfm_step(void *ctx, int64_t step, struct cf_reducer *red, double part[4]) {
  struct cfm_ctx *c = ctx;
  const int64_t D = c->m->cfg.D, B = c->B;
  const double sigma = c->opt->sigma;
  const struct cf_conds *cd = c->opt->conds;
  cf_status st = CF_OK;
  if (B > 0)
    st = cf_cfm_draw_rows(c->src, c->tgt, D, c->seed, (uint32_t)step, (uint64_t)c->g0, B, c->x0,
                          c->x1, c->t, sigma > 0 ? c->eps : NULL, cd ? c->row : NULL);
  for (int64_t i = 0; st == CF_OK && cd != NULL && i < B; i++) { /* the rows' conditions */
    const int32_t *codes = cd->codes + c->row[i] * cd->ncol;
    cf_conds_onehot(cd, codes, c->cond + i * cd->C);
    c->grp[i] = cf_conds_group(cd, codes);
  }
  if (c->opt->ot) { /* every rank takes part, also after a local failure: nobody waits */
    PetscLogEventBegin(c->ev_ot, 0, 0, 0, 0);
    cf_status so = cf_cfm_ot_couple_groups(&c->ot, st == CF_OK ? B : 0, c->x0, c->x1,
                                           cd ? c->grp : NULL, NULL, NULL, NULL);
    PetscLogEventEnd(c->ev_ot, 0, 0, 0, 0);
    if (st == CF_OK) st = so;
  }
  double loss = 0;
  if (st == CF_OK && B > 0) {
    cf_cfm_path(B, D, c->x0, c->x1, c->t, sigma > 0 ? c->eps : NULL, sigma, c->xt, c->u);
    PetscLogEventBegin(c->ev_fb, 0, 0, 0, 0);
    st = cf_cfm_loss_grad_c(c->m, B, c->xt, c->t, cd ? c->cond : NULL, c->u, (double)c->n, &loss);
    PetscLogEventEnd(c->ev_fb, 0, 0, 0, 0);
  }
  CF_TRY(st);
  part[0] += loss;
  part[1] += loss; /* recon: the same squared error */
  cf_reducer_begin(red);
  return cf_reducer_ready(red, 0);
}

cf_status cf_train_cfm_run(const struct cf_grid *g, const struct cf_train_cfg *tc,
                           const struct cf_cfm_cfg *cc, const struct cf_train_cfm_opts *opt,
                           const struct cf_dist *src, const struct cf_dist *tgt,
                           const char *run_dir, const char *options_yaml, const char *resume,
                           struct cf_train_result *res) {
  memset(res, 0, sizeof *res);
  CF_CHECK(g->n_tp == 1 && g->n_pp == 1 && g->n_cp == 1, CF_ETOPO,
           "-model cfm: the velocity MLP is split by data parallelism only (use -par_tp, "
           "-par_pp and -par_cp 1)");
  CF_CHECK(tc->batch >= g->n_dp, CF_ETOPO,
           "option -train_batch: %lld points per step cannot feed %d data-parallel ranks",
           (long long)tc->batch, g->n_dp);
  CF_CHECK(!opt->ot || tc->batch <= 20000, CF_EINVAL,
           "option -train_batch: %lld points per step; exact OT coupling (-cfm_coupling ot) is "
           "O(n^2) memory and O(n^3) time, expected at most 20000",
           (long long)tc->batch);
  const struct cf_conds *cd = opt->conds;
  CF_CHECK(cd == NULL || (tgt->kind == CF_DIST_POINTS && cd->n == tgt->n), CF_EINVAL,
           "-cfm_cond: the conditions cover %lld rows, the training data has %lld",
           (long long)(cd ? cd->n : 0), (long long)tgt->n);
  CF_CHECK(cc->cond_dim == (cd ? cd->C : 0), CF_EINVAL,
           "-cfm_cond: the network takes %lld condition features, the columns give %lld",
           (long long)cc->cond_dim, (long long)(cd ? cd->C : 0));
  const int64_t D = cc->D, n = tc->batch;
  struct cfm_ctx c;
  memset(&c, 0, sizeof c);
  c.opt = opt;
  c.src = src;
  c.tgt = tgt;
  c.seed = tc->seed;
  c.n = n;
  c.g0 = n * g->dp_rank / g->n_dp;
  c.B = n * (g->dp_rank + 1) / g->n_dp - c.g0;
  struct cf_cfm m;
  CF_TRY(cf_cfm_init(&m, cc, c.B > 0 ? c.B : 1));
  cf_cfm_init_weights(&m, tc->seed);
  c.m = &m;
  cf_status st = CF_OK;
  if (opt->ot) st = cf_cfm_ot_init(&c.ot, g->dp, n, D);
  struct cf_arena ar;
  cf_arena_plan(&ar);
  for (int pass = 0; pass < 2 && st == CF_OK; pass++) {
    if (pass == 1) {
      st = cf_arena_commit(&ar, 0, "cfm batch buffers");
      if (st != CF_OK) break;
    }
    size_t bd = (size_t)((c.B > 0 ? c.B : 1) * D);
    c.x0 = cf_arena_floats(&ar, bd);
    c.x1 = cf_arena_floats(&ar, bd);
    c.eps = cf_arena_floats(&ar, bd);
    c.xt = cf_arena_floats(&ar, bd);
    c.u = cf_arena_floats(&ar, bd);
    c.t = cf_arena_floats(&ar, (size_t)(c.B > 0 ? c.B : 1));
    if (cd != NULL) c.cond = cf_arena_floats(&ar, (size_t)((c.B > 0 ? c.B : 1) * cd->C));
  }
  if (st == CF_OK && cd != NULL)
    st = cf_alloc((void **)&c.row, 2 * (size_t)(c.B > 0 ? c.B : 1) * sizeof(int64_t),
                  "cfm condition rows");
  if (st == CF_OK && cd != NULL) c.grp = c.row + (c.B > 0 ? c.B : 1);
  if (st == CF_OK) {
    PetscClassId cid;
    st = PetscClassIdRegister("calmflow", &cid) == 0 &&
                 PetscLogEventRegister("cfmOTCouple", cid, &c.ev_ot) == 0 &&
                 PetscLogEventRegister("cfmForwardBackward", cid, &c.ev_fb) == 0
             ? CF_OK
             : cf_err(CF_EPETSC, "registering the CFM log events failed");
  }
  if (st == CF_OK) {
    struct cf_learner L = {.kind = "cfm",
                           .conditions = cd ? cd->text : NULL,
                           .n_params = m.n_params,
                           .params = m.params,
                           .grads = m.grads,
                           .tensors = m.tensors,
                           .n_tensors = m.n_tensors,
                           .grad_comm = g->dp,
                           .norm_comm = MPI_COMM_SELF,
                           .tokens_per_step = (double)n,
                           .flops_per_step = cf_cfm_flops(cc) * (double)n,
                           .ctx = &c,
                           .zero_grad = cfm_zero_grad,
                           .step = cfm_step,
                           .grad_sqnorm = cfm_grad_sqnorm};
    st = cf_train_loop(g, tc, &L, run_dir, options_yaml, resume, res);
  }
  cf_arena_release(&ar);
  cf_free((void **)&c.row);
  cf_cfm_ot_release(&c.ot);
  cf_cfm_release(&m);
  return st;
}
