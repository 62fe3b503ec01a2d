/* train.c: training the CaLMFlow model (see train.h): batches from flow (their history
 * optionally the model's own rollout, selffeed.h), forward and backward
 * through this rank's part of the model in the 1F1B pipeline schedule, the gradients handed
 * to the reducer as layers finish; the shared loop (loop.c) does the rest. Nothing is
 * allocated inside a step. */
#include <stdio.h>
#include <string.h>

#include "calmflow/cfpetsc.h"
#include "calmflow/commstat.h"
#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/neox.h"
#include "calmflow/reducer.h"
#include "calmflow/selffeed.h"
#include "calmflow/train.h"
#include "calmflow/watchdog.h"
#include "train/loop.h"

cf_status cf_train_cfg_check(const struct cf_train_cfg *tc, const struct cf_model_cfg *mc,
                             int world) { /* world: the data-parallel degree */
  CF_CHECK(tc->batch % mc->P == 0, CF_EINVAL,
           "option -train_batch: %lld paths do not fill whole sequences of -flow_trajectories %lld",
           (long long)tc->batch, (long long)mc->P);
  const int64_t Bs = tc->batch / mc->P;
  CF_CHECK(
      Bs >= world, CF_ETOPO,
      "option -train_batch: %lld sequences per step cannot feed %d data-parallel ranks (need >= "
      "1 per rank)",
      (long long)Bs, world);
  CF_CHECK(tc->microbatches >= 1 && tc->microbatches <= Bs / world, CF_EINVAL,
           "option -train_microbatches: expected 1..%lld (sequences per data-parallel rank), got "
           "%lld",
           (long long)(Bs / world), (long long)tc->microbatches);
  CF_CHECK(tc->lr_min <= tc->lr, CF_EINVAL,
           "option -train_lr_min: expected <= -train_lr (%g), got %g", tc->lr, tc->lr_min);
  return CF_OK;
}

struct loop_bufs {
  float *z, *y, *eps, *work;
  int32_t *ids; /* (mb, L) prompt ids of the micro-batch's sequences (text prompts only) */
};

/* The pipeline's state during one step: this rank's stage, its neighbours, micro-batches and
 * the outstanding boundary sends (one activation and one gradient send per activation slot). */
struct pipe {
  const struct cf_grid *g;
  int stage, n_stages, first, last;
  int64_t lo, local, M, mb, slots; /* this rank's sequences [lo, lo+local) in M micro-batches */
  int64_t rows;                    /* floats per sequence at the stage boundary (Tl * H) */
  int prev_world, next_world;      /* the neighbour stages' ranks in the grid (watchdog) */
  MPI_Request *act_req, *grad_req; /* (slots) */
};

static void pipe_mb(const struct pipe *p, int64_t i, int64_t *s0, int64_t *b) {
  *s0 = p->lo + p->local * i / p->M;
  *b = p->lo + p->local * (i + 1) / p->M - *s0;
}

/* Collective on g->pp. Wait for a boundary send before its buffer is reused. */
static cf_status pipe_wait(MPI_Request *r, const char *op, int peer /* grid rank */) {
  if (*r == MPI_REQUEST_NULL) return CF_OK;
  cf_watchdog_enter(op, peer);
  double t0 = cf_commstat_now();
  int e = MPI_Wait(r, MPI_STATUS_IGNORE);
  cf_commstat_add(CF_COMM_PP, 0.0, cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

/* Collective on g->pp. Blocking receive of n floats from stage `peer` (pipeline rank). */
static cf_status pipe_recv(const struct pipe *p, float *buf, int64_t n, int peer, int tag,
                           const char *op) {
  cf_watchdog_enter(op, peer == p->stage - 1 ? p->prev_world : p->next_world);
  double t0 = cf_commstat_now();
  int e = cf_mpi_recv(buf, (size_t)n, MPI_FLOAT, peer, tag, p->g->pp);
  cf_commstat_add(CF_COMM_PP, 0.0, cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

static cf_status pipe_send(const struct pipe *p, const float *buf, int64_t n, int peer, int tag,
                           MPI_Request *r) {
  CF_MPI(cf_mpi_isend(buf, (size_t)n, MPI_FLOAT, peer, tag, p->g->pp, r));
  cf_commstat_add(CF_COMM_PP, (double)n * sizeof(float), 0.0);
  return CF_OK;
}

/* Tags: micro-batch i's activation 2i, its gradient 2i+1 (MPI keeps order per pair anyway). */
#define CF_PIPE_TAG(i, kind) ((int)(((i) % 100000) * 2 + (kind)))

struct step_ctx {
  const struct cf_train_cfg *tc;
  const struct cf_model_cfg *mc;
  const struct cf_flow_cfg *fc;
  const struct cf_dist *src, *tgt;
  struct cf_model *m;
  struct cf_reducer *red;
  struct loop_bufs *lb;
  struct pipe *p;
  struct cf_selffeed *sf;  /* -train_selffeed_*: own-rollout inputs (steps 0: none) */
  struct cf_dist *seq_tgt; /* (mb) the micro-batch's sequences' target distributions */
  int64_t step;
  double n_pts;
  PetscLogEvent ev_fwd, ev_bwd, ev_sf;
  double part[4]; /* loss, recon, kl, nll of this rank (last stage, tensor rank 0) */
};

/* Local. Sequences [s0, s0 + b) of the step with text prompts (train.h, cf_prompt_data): each
 * sequence's group from its own draw, its paths from the group's rows (cf_flow_batch of one
 * sequence keys every draw as the whole batch would), its prompt ids into lb->ids. */
static void prompt_batch(const struct step_ctx *c, int64_t s0, int64_t b) {
  const struct cf_prompt_data *pd = c->tc->prompt;
  const int64_t J = c->mc->N * c->mc->P, D = c->mc->D, L = pd->L, n = pd->start[pd->n_groups];
  for (int64_t k = 0; k < b; k++) {
    struct cf_rng r = {c->tc->seed, CF_RNG_X1, (uint32_t)c->step, (uint64_t)(s0 + k)};
    int64_t u = (int64_t)(cf_rng_uniform1(&r, (uint64_t)1 << 40) * (double)n), lo = 0;
    int64_t hi = pd->n_groups - 1;
    if (u >= n) u = n - 1;
    while (lo < hi) { /* the group k with start[k] <= u < start[k + 1] */
      int64_t mid = (lo + hi + 1) / 2;
      if (pd->start[mid] <= u)
        lo = mid;
      else
        hi = mid - 1;
    }
    struct cf_dist grp;
    cf_dist_points(&grp, c->tgt->x + pd->start[lo] * D, pd->start[lo + 1] - pd->start[lo], D);
    c->seq_tgt[k] = grp;
    cf_flow_batch(c->fc, c->src, &grp, c->tc->seed, (uint32_t)c->step, (uint64_t)(s0 + k), 1,
                  c->lb->z + k * J * D, c->lb->y + k * J * D, c->lb->work);
    memcpy(c->lb->ids + k * L, pd->ids + lo * L, (size_t)L * sizeof(int32_t));
  }
}

/* Forward of micro-batch i: receive the stage input, draw the batch, run the stage, send on. */
static cf_status step_forward(struct step_ctx *c, int64_t i) {
  struct pipe *p = c->p;
  const struct cf_model_cfg *mc = c->mc;
  const int64_t T = mc->N * mc->P * mc->S, H = mc->H;
  int64_t s0, b, slot = i % p->slots, b0 = slot * p->mb;
  pipe_mb(p, i, &s0, &b);
  cf_watchdog_where(c->step, p->stage, i);
  if (!p->first)
    CF_TRY(pipe_recv(p, cf_model_stage_in(c->m, b0, b), b * p->rows, p->stage - 1,
                     CF_PIPE_TAG(i, 0), "pp_recv_activation"));
  if ((p->first || p->last) && c->tc->prompt != NULL) {
    prompt_batch(c, s0, b);
    if (p->first) CF_TRY(cf_model_set_prompt(c->m, b0, b, c->lb->ids));
  }
  if ((p->first || p->last) && c->tc->prompt == NULL)
    cf_flow_batch(c->fc, c->src, c->tgt, c->tc->seed, (uint32_t)c->step, (uint64_t)s0, b, c->lb->z,
                  c->lb->y, c->lb->work);
  if (c->sf->steps > 0) { /* whole model on this rank (cf_selffeed_init) */
    PetscLogEventBegin(c->ev_sf, 0, 0, 0, 0);
    cf_status sst = cf_selffeed_apply(c->sf, c->m, c->fc, c->tc->seed, (uint32_t)c->step,
                                      c->seq_tgt, (uint64_t)s0, b, c->lb->ids, c->lb->z, c->lb->y);
    PetscLogEventEnd(c->ev_sf, 0, 0, 0, 0);
    CF_TRY(sst);
  }
  if (p->first || p->last) {
    if (p->last && mc->head == CF_HEAD_VAE)
      for (int64_t k = 0; k < b; k++) {
        struct cf_rng r = {c->tc->seed, CF_RNG_LATENT, (uint32_t)c->step, (uint64_t)(s0 + k)};
        cf_rng_normal(&r, 0, c->lb->eps + k * T * H, (size_t)(T * H));
      }
  }
  /* the send of the slot's previous micro-batch reads the buffer this forward overwrites */
  if (!p->last) CF_TRY(pipe_wait(&p->act_req[slot], "pp_send_activation", p->next_world));
  struct cf_dropkey dk = {c->tc->seed, (uint32_t)c->step, (uint64_t)s0};
  struct cf_loss l;
  PetscLogEventBegin(c->ev_fwd, 0, 0, 0, 0);
  cf_status st = cf_model_forward_at(c->m, b0, b, c->lb->z, c->lb->y,
                                     mc->head == CF_HEAD_VAE ? c->lb->eps : NULL, &dk, c->n_pts,
                                     (float)c->tc->kl_weight, &l);
  PetscLogEventEnd(c->ev_fwd, 0, 0, 0, 0);
  CF_TRY(st);
  if (!p->last) {
    CF_TRY(cf_fault_point("pipeline_send"));
    CF_TRY(pipe_send(p, cf_model_stage_out(c->m, b0, b), b * p->rows, p->stage + 1,
                     CF_PIPE_TAG(i, 0), &p->act_req[slot]));
  }
  if (p->last && p->g->tp_rank == 0) {
    c->part[0] += l.loss;
    c->part[1] += l.recon;
    c->part[2] += l.kl;
    c->part[3] += l.nll;
  }
  return CF_OK;
}

/* Backward of micro-batch i: receive the output gradient, run the stage backward (the last
 * micro-batch starts the gradient buckets as layers finish), send the input gradient back. */
static cf_status step_backward(struct step_ctx *c, int64_t i) {
  struct pipe *p = c->p;
  int64_t s0, b, slot = i % p->slots, b0 = slot * p->mb;
  pipe_mb(p, i, &s0, &b);
  cf_watchdog_where(c->step, p->stage, i);
  if (!p->first) CF_TRY(pipe_wait(&p->grad_req[slot], "pp_send_gradient", p->prev_world));
  if (!p->last)
    CF_TRY(pipe_recv(p, cf_model_stage_grad(c->m, b0, b), b * p->rows, p->stage + 1,
                     CF_PIPE_TAG(i, 1), "pp_recv_gradient"));
  int last = i == p->M - 1;
  if (last) cf_reducer_begin(c->red);
  c->m->grad_ready = last ? cf_reducer_ready : NULL;
  c->m->grad_ctx = c->red;
  PetscLogEventBegin(c->ev_bwd, 0, 0, 0, 0);
  cf_status st = cf_model_backward_at(c->m, b0, b);
  PetscLogEventEnd(c->ev_bwd, 0, 0, 0, 0);
  CF_TRY(st);
  if (!p->first)
    CF_TRY(pipe_send(p, cf_model_stage_grad(c->m, b0, b), b * p->rows, p->stage - 1,
                     CF_PIPE_TAG(i, 1), &p->grad_req[slot]));
  return CF_OK;
}

/* One step's forward and backward passes in the 1F1B order: stage s runs min(pp-s-1, M)
 * forwards, then alternates forward / backward, then drains the backwards. Receives block,
 * sends do not, and every stage issues them in the order its neighbours expect, so the
 * schedule cannot deadlock. All sends are complete on return. */
static cf_status step_passes(struct step_ctx *c) {
  struct pipe *p = c->p;
  int64_t warm = p->n_stages - p->stage - 1, nf = 0, nb = 0;
  if (warm > p->M) warm = p->M;
  cf_status st = CF_OK;
  while (st == CF_OK && nf < warm)
    st = step_forward(c, nf++);
  while (st == CF_OK && nf < p->M) {
    st = step_forward(c, nf++);
    if (st == CF_OK) st = step_backward(c, nb++);
  }
  while (st == CF_OK && nb < p->M)
    st = step_backward(c, nb++);
  for (int64_t k = 0; k < p->slots && st == CF_OK; k++) {
    st = pipe_wait(&p->act_req[k], "pp_send_activation", p->next_world);
    if (st == CF_OK) st = pipe_wait(&p->grad_req[k], "pp_send_gradient", p->prev_world);
  }
  return st;
}

/* The CaLMFlow model as the loop's learner (loop.h). */
static void learner_zero_grad(void *ctx) {
  cf_model_zero_grad(((struct step_ctx *)ctx)->m);
}

static double learner_grad_sqnorm(void *ctx, int *finite) {
  return cf_model_grad_sqnorm(((struct step_ctx *)ctx)->m, finite);
}

static cf_status learner_step(void *ctx, int64_t step, struct cf_reducer *red, double part[4]) {
  struct step_ctx *c = ctx;
  c->step = step;
  c->red = red;
  memset(c->part, 0, sizeof c->part);
  cf_status st = step_passes(c);
  for (int k = 0; k < 4; k++)
    part[k] += c->part[k];
  return st;
}

void cf_train_diag_release(struct cf_train_diag *d) {
  cf_free((void **)&d->step_loss);
  cf_free((void **)&d->attn);
  memset(d, 0, sizeof *d);
}

/* Local. The diagnostics (train.h) on the first b sequences of a step no training run reaches
 * (UINT32_MAX), forward only, no dropout. Needs the whole model on this rank. */
static cf_status train_diag(struct step_ctx *c, int64_t b, struct cf_train_diag *d) {
  const struct cf_model_cfg *mc = c->mc;
  const int64_t N = mc->N, P = mc->P, J = N * P, T = J * mc->S, H = mc->H;
  const uint32_t step = UINT32_MAX;
  double *pl = NULL;
  CF_TRY(cf_alloc((void **)&pl, (size_t)J * sizeof(double), "diagnostics"));
  CF_TRY(cf_alloc((void **)&d->step_loss, (size_t)(N - 1) * sizeof(double), "diagnostics"));
  CF_TRY(cf_alloc((void **)&d->attn, (size_t)mc->layers * sizeof(struct cf_attn_stats),
                  "diagnostics"));
  cf_flow_batch(c->fc, c->src, c->tgt, c->tc->seed, step, 0, b, c->lb->z, c->lb->y, c->lb->work);
  if (mc->head == CF_HEAD_VAE)
    for (int64_t k = 0; k < b; k++) {
      struct cf_rng r = {c->tc->seed, CF_RNG_LATENT, step, (uint64_t)k};
      cf_rng_normal(&r, 0, c->lb->eps + k * T * H, (size_t)(T * H));
    }
  struct cf_loss l;
  c->m->point_loss = pl;
  cf_status st =
      cf_model_forward(c->m, b, c->lb->z, c->lb->y, mc->head == CF_HEAD_VAE ? c->lb->eps : NULL,
                       NULL, (double)b * (double)((N - 1) * P), (float)c->tc->kl_weight, &l);
  c->m->point_loss = NULL;
  if (st == CF_OK) st = cf_model_attn_stats(c->m, b, d->attn);
  if (st == CF_OK) {
    for (int64_t t = 0; t + 1 < N; t++) {
      double sum = 0;
      for (int64_t p = 0; p < P; p++)
        sum += pl[t * P + p];
      d->step_loss[t] = sum / (double)(b * P);
    }
    d->sequences = b;
    d->n_steps = N - 1;
    d->layers = mc->layers;
  }
  cf_free((void **)&pl);
  return st;
}

cf_status cf_train_run(const struct cf_grid *g, const struct cf_train_cfg *tc,
                       const struct cf_model_cfg *mc, const struct cf_flow_cfg *fc,
                       const struct cf_dist *src, const struct cf_dist *tgt, const char *run_dir,
                       const char *options_yaml, const char *resume, struct cf_train_result *res) {
  memset(res, 0, sizeof *res);
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H;
  const int64_t J = N * P, T = J * S;
  CF_TRY(cf_train_cfg_check(tc, mc, g->n_dp));
  CF_CHECK((tc->prompt != NULL ? tc->prompt->L : 0) == mc->prompt_len &&
               (tc->prompt == NULL || (tc->prompt->n_groups >= 1 && tgt->kind == CF_DIST_POINTS &&
                                       tc->prompt->start[tc->prompt->n_groups] == tgt->n)),
           CF_EINVAL,
           "training: the prompt data (%lld tokens) does not fit the model (prompt length %lld) "
           "or the target points",
           (long long)(tc->prompt != NULL ? tc->prompt->L : 0), (long long)mc->prompt_len);
  CF_TRY(cf_grid_check(g->size, g->n_tp, g->n_pp, g->n_cp, mc->layers, mc->heads, J,
                       tc->microbatches));
  const int64_t Bs = tc->batch / P;
  struct pipe pp = {.g = g, .stage = g->pp_rank, .n_stages = g->n_pp};
  pp.lo = Bs * g->dp_rank / g->n_dp;
  pp.local = Bs * (g->dp_rank + 1) / g->n_dp - pp.lo;
  pp.M = tc->microbatches;
  CF_CHECK(pp.M >= 1 && pp.M <= pp.local, CF_EINVAL,
           "option -train_microbatches: expected 1..%lld (sequences on this rank), got %lld",
           (long long)pp.local, (long long)pp.M);
  pp.mb = (pp.local + pp.M - 1) / pp.M;
  pp.slots = g->n_pp - g->pp_rank < pp.M ? g->n_pp - g->pp_rank : pp.M;
  {
    /* grid ranks of the neighbour stages (same dp, cp, tp coordinates) */
    int co[4] = {g->dp_rank, g->pp_rank - 1, g->cp_rank, g->tp_rank};
    pp.prev_world = pp.next_world = -1;
    if (g->pp_rank > 0) CF_MPI(MPI_Cart_rank(g->cart, co, &pp.prev_world));
    co[1] = g->pp_rank + 1;
    if (g->pp_rank + 1 < g->n_pp) CF_MPI(MPI_Cart_rank(g->cart, co, &pp.next_world));
  }

  struct cf_model m;
  CF_TRY(cf_model_init_part(&m, mc, pp.mb * pp.slots, g));
  cf_model_init_weights(&m, tc->seed);
  if (resume == NULL && tc->init_hf != NULL && tc->init_hf[0] != '\0') { /* -model_init_hf */
    struct cf_neox_info ni;
    CF_TRY(cf_neox_load(g->cart, &m, tc->init_hf, &ni));
    if (g->rank == 0 && !tc->quiet)
      printf("pretrained backbone: %d tensors from GPT-NeoX '%s'%s; encoder and head start "
             "afresh\n",
             ni.n_loaded, tc->init_hf, ni.wte ? " (embed_in as prompt.wte)" : "");
  }
  pp.first = cf_model_first(&m);
  pp.last = cf_model_last(&m);
  pp.rows = cf_model_local_tokens(&m) * H;
  MPI_Request *reqs = NULL;
  CF_TRY(
      cf_alloc((void **)&reqs, (size_t)(2 * pp.slots) * sizeof(MPI_Request), "pipeline requests"));
  for (int64_t k = 0; k < 2 * pp.slots; k++)
    reqs[k] = MPI_REQUEST_NULL;
  pp.act_req = reqs;
  pp.grad_req = reqs + pp.slots;
  struct cf_arena ar;
  struct loop_bufs lb;
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1)
      CF_TRY(cf_arena_commit(&ar, 0, "training batch buffers"));
    else
      cf_arena_plan(&ar);
    lb.z = cf_arena_floats(&ar, (size_t)(pp.mb * J * D));
    lb.y = cf_arena_floats(&ar, (size_t)(pp.mb * J * D));
    lb.eps = cf_arena_floats(&ar, mc->head == CF_HEAD_VAE ? (size_t)(pp.mb * T * H) : 1);
    lb.work = cf_arena_floats(&ar, (size_t)((N + 2) * D));
  }
  lb.ids = NULL;
  if (tc->prompt != NULL)
    CF_TRY(cf_alloc((void **)&lb.ids, (size_t)(pp.mb * tc->prompt->L) * sizeof(int32_t),
                    "prompt ids"));
  PetscClassId cid;
  PetscLogEvent ev_fwd, ev_bwd, ev_sf;
  CF_PETSC(PetscClassIdRegister("calmflow", &cid));
  CF_PETSC(PetscLogEventRegister("cfForward", cid, &ev_fwd));
  CF_PETSC(PetscLogEventRegister("cfBackward", cid, &ev_bwd));
  CF_PETSC(PetscLogEventRegister("cfSelfFeed", cid, &ev_sf));
  struct cf_selffeed sf;
  CF_TRY(
      cf_selffeed_init(&sf, &m, pp.mb, tc->selffeed_steps, tc->selffeed_prob, tc->selffeed_cands));
  struct cf_dist *seq_tgt = NULL; /* every sequence's targets, a prompt's group set per batch */
  CF_TRY(cf_alloc((void **)&seq_tgt, (size_t)pp.mb * sizeof *seq_tgt, "target distributions"));
  for (int64_t k = 0; k < pp.mb; k++)
    seq_tgt[k] = *tgt;
  struct step_ctx sc = {.tc = tc,
                        .mc = mc,
                        .fc = fc,
                        .src = src,
                        .tgt = tgt,
                        .m = &m,
                        .lb = &lb,
                        .p = &pp,
                        .sf = &sf,
                        .seq_tgt = seq_tgt,
                        .n_pts = (double)Bs * (double)((N - 1) * P),
                        .ev_fwd = ev_fwd,
                        .ev_bwd = ev_bwd,
                        .ev_sf = ev_sf};
  struct cf_learner L = {.kind = "calmflow",
                         .n_params = m.n_params,
                         .params = m.params,
                         .grads = m.grads,
                         .tensors = m.tensors,
                         .n_tensors = m.n_tensors,
                         .grad_comm = g->dpcp,
                         .norm_comm = g->mp,
                         .tokens_per_step = (double)Bs * (double)T,
                         .flops_per_step = cf_model_flops(mc) * (double)Bs,
                         .ctx = &sc,
                         .zero_grad = learner_zero_grad,
                         .step = learner_step,
                         .grad_sqnorm = learner_grad_sqnorm};
  cf_status st = cf_train_loop(g, tc, &L, run_dir, options_yaml, resume, res);
  if (st == CF_OK && g->n_tp == 1 && g->n_pp == 1 && g->n_cp == 1 && mc->prompt_len == 0) {
    st = train_diag(&sc, pp.mb, &res->diag);
    if (st != CF_OK) cf_train_diag_release(&res->diag);
  }
  cf_selffeed_release(&sf);
  cf_free((void **)&seq_tgt);
  cf_arena_release(&ar);
  cf_free((void **)&lb.ids);
  cf_free((void **)&reqs);
  cf_model_release(&m);
  return st;
}
