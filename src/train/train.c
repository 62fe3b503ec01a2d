/* train.c: the data-parallel training loop (see train.h): batches from flow, forward and
 * backward through the model, one gradient all-reduce, clipping, the optimizer, log.jsonl,
 * progress lines and checkpoints. Nothing is allocated inside a step. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "calmflow/cfpetsc.h"
#include "calmflow/ckpt.h"
#include "calmflow/commstat.h"
#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/reducer.h"
#include "calmflow/train.h"
#include "calmflow/watchdog.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void fmt_dur(char *buf, size_t cap, double s) {
  if (s < 0 || !isfinite(s)) s = 0;
  long v = (long)(s + 0.5);
  if (v >= 3600)
    snprintf(buf, cap, "%ldh%02ldm", v / 3600, (v / 60) % 60);
  else if (v >= 60)
    snprintf(buf, cap, "%ldm%02lds", v / 60, v % 60);
  else
    snprintf(buf, cap, "%lds", v);
}

cf_status cf_ckpt_table_init(struct cf_ckpt_table *ct, const struct cf_model *m,
                             const struct cf_grid *grid, const float *adam_m, const float *adam_v) {
  static const char *groups[3] = {"params", "adam_m", "adam_v"};
  const float *base[3] = {m->params, adam_m, adam_v};
  int ng = adam_m && adam_v ? 3 : 1;
  void *t = NULL, *names = NULL;
  memset(ct, 0, sizeof *ct);
  CF_TRY(cf_alloc(&t, (size_t)(ng * m->n_tensors) * sizeof(struct cf_ckpt_tensor),
                  "checkpoint table"));
  CF_TRY(cf_alloc(&names, (size_t)(ng * m->n_tensors) * CF_CKPT_NAME_MAX, "checkpoint names"));
  ct->nt = ng * m->n_tensors;
  ct->t = t;
  ct->names = names;
  for (int g = 0; g < ng; g++)
    for (int i = 0; i < m->n_tensors; i++) {
      const struct cf_tensor_info *ti = &m->tensors[i];
      struct cf_ckpt_tensor *e = &ct->t[g * m->n_tensors + i];
      char *nm = ct->names + (size_t)(g * m->n_tensors + i) * CF_CKPT_NAME_MAX;
      snprintf(nm, CF_CKPT_NAME_MAX, "%s/%s", groups[g], ti->name);
      e->name = nm;
      e->ndim = ti->ndim;
      e->shape[0] = ti->shape[0];
      e->shape[1] = ti->ndim > 1 ? ti->shape[1] : 1;
      e->data = ti->held ? (float *)base[g] + ti->offset : NULL;
      e->start[0] = e->start[1] = e->count[0] = e->count[1] = 0;
      e->replica = e->n_replicas = 0;
      if (grid != NULL && ti->held) {
        /* the ranks holding the same block: the data and context groups, and for a tensor
         * the tensor group does not split, the tensor group too */
        int dc = grid->dp_rank * grid->n_cp + grid->cp_rank, ndc = grid->n_dp * grid->n_cp;
        e->start[0] = ti->start[0];
        e->start[1] = ti->start[1];
        e->count[0] = ti->count[0];
        e->count[1] = ti->ndim > 1 ? ti->count[1] : 1;
        e->replica = ti->split == CF_SPLIT_NONE ? dc * grid->n_tp + grid->tp_rank : dc;
        e->n_replicas = ti->split == CF_SPLIT_NONE ? ndc * grid->n_tp : ndc;
      }
    }
  return CF_OK;
}

void cf_ckpt_table_release(struct cf_ckpt_table *ct) {
  void *t = ct->t, *n = ct->names;
  cf_free(&t);
  cf_free(&n);
  memset(ct, 0, sizeof *ct);
}

static cf_status save(const struct cf_grid *g, const char *run_dir, int64_t step,
                      const struct cf_train_cfg *tc, const char *options_yaml,
                      const struct cf_ckpt_table *ct, int64_t keep, char *out, size_t cap) {
  MPI_Comm comm = g->cart;
  int world = g->size;
  char dir[4096], name[64], path[4200];
  snprintf(dir, sizeof dir, "%s/ckpt", run_dir);
  snprintf(name, sizeof name, "step-%07lld.h5", (long long)step);
  snprintf(path, sizeof path, "%s/%s", dir, name);
  /* every draw is a pure function of (seed, domain, step, index, element) (rng.h): the state to
   * continue from is the seed and the step counter the next step draws with (0-based: step) */
  char layout[128];
  cf_grid_describe(g, layout, sizeof layout);
  struct cf_ckpt_meta meta = {.step = step,
                              .seed = tc->seed,
                              .world = world,
                              .data_cursor = step,
                              .options_yaml = options_yaml,
                              .model_kind = "calmflow",
                              .layout = layout,
                              .rng = "philox4x32-10 keyed by (seed, domain, step, index)",
                              .rng_step = step};
  CF_TRY(cf_ckpt_write(comm, path, &meta, ct->t, ct->nt));
  CF_TRY(cf_ckpt_latest_write(comm, dir, name));
  CF_TRY(cf_ckpt_prune(comm, dir, keep));
  snprintf(out, cap, "%s", path);
  return CF_OK;
}

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

struct zero_shard {
  int64_t lo, hi;       /* this rank's parameter range */
  int *counts, *displs; /* (world) ranges of all ranks, for MPI_Allgatherv */
};

static cf_status zero_init(struct zero_shard *z, MPI_Comm comm, size_t n, int on) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  memset(z, 0, sizeof *z);
  z->hi = (int64_t)n;
  if (!on) return CF_OK;
  CF_CHECK(n < (size_t)INT32_MAX, CF_EINVAL,
           "option -par_zero: %zu parameters exceed one MPI message; use -par_zero 0", n);
  CF_TRY(cf_alloc((void **)&z->counts, (size_t)world * sizeof(int), "ZeRO ranges"));
  CF_TRY(cf_alloc((void **)&z->displs, (size_t)world * sizeof(int), "ZeRO ranges"));
  for (int r = 0; r < world; r++) {
    z->displs[r] = (int)((int64_t)n * r / world);
    z->counts[r] = (int)((int64_t)n * (r + 1) / world) - z->displs[r];
  }
  z->lo = z->displs[rank];
  z->hi = z->lo + z->counts[rank];
  return CF_OK;
}

static void zero_release(struct zero_shard *z) {
  cf_free((void **)&z->counts);
  cf_free((void **)&z->displs);
}

/* Collective. Write the checkpoint of step `step`. With ZeRO the full moments are assembled
 * from every rank's shard into a buffer that lives only while the file is written. */
static cf_status checkpoint(const struct cf_grid *grid, const char *run_dir, int64_t step,
                            const struct cf_train_cfg *tc, const char *options_yaml,
                            const struct cf_model *m, const struct cf_optim *o,
                            const struct zero_shard *z, const struct cf_ckpt_table *ct,
                            struct cf_train_result *res) {
  if (!tc->zero)
    return save(grid, run_dir, step, tc, options_yaml, ct, tc->ckpt_keep, res->last_ckpt,
                sizeof res->last_ckpt);
  const size_t n = m->n_params;
  float *g = NULL;
  struct cf_ckpt_table zt;
  CF_TRY(cf_alloc((void **)&g, 2 * n * sizeof(float), "gathered optimizer moments"));
  cf_status st = cf_ckpt_table_init(&zt, m, grid, g, g + n);
  if (st == CF_OK && MPI_Allgatherv(o->m, (int)(z->hi - z->lo), MPI_FLOAT, g, z->counts, z->displs,
                                    MPI_FLOAT, grid->dpcp) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "gathering the optimizer moments for the checkpoint failed");
  if (st == CF_OK && MPI_Allgatherv(o->v, (int)(z->hi - z->lo), MPI_FLOAT, g + n, z->counts,
                                    z->displs, MPI_FLOAT, grid->dpcp) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "gathering the optimizer moments for the checkpoint failed");
  if (st == CF_OK)
    st = save(grid, run_dir, step, tc, options_yaml, &zt, tc->ckpt_keep, res->last_ckpt,
              sizeof res->last_ckpt);
  cf_ckpt_table_release(&zt);
  cf_free((void **)&g);
  return st;
}

/* Collective. Parameters and AdamW moments from checkpoint `path` (ZeRO: this rank's shard of
 * the moments). The moments are read into a temporary full buffer, as they were written. */
static cf_status load(const struct cf_grid *grid, const char *path, struct cf_model *m,
                      struct cf_optim *o, const struct zero_shard *z) {
  const size_t n = m->n_params;
  float *g = NULL;
  struct cf_ckpt_table t;
  CF_TRY(cf_alloc((void **)&g, 2 * n * sizeof(float), "checkpoint moments"));
  cf_status st = cf_ckpt_table_init(&t, m, grid, g, g + n);
  if (st == CF_OK) st = cf_ckpt_read_tensors(grid->cart, path, t.t, t.nt);
  if (st == CF_OK) {
    memcpy(o->m, g + z->lo, (size_t)(z->hi - z->lo) * sizeof(float));
    memcpy(o->v, g + n + z->lo, (size_t)(z->hi - z->lo) * sizeof(float));
  }
  cf_ckpt_table_release(&t);
  cf_free((void **)&g);
  return st;
}

/* SIGUSR1 / SIGTERM (Slurm's --signal and preemption): remember, act at the step boundary */
static volatile sig_atomic_t g_stop_signal;
static void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

struct loop_bufs {
  float *z, *y, *eps, *work;
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
  CF_CHECK(n <= INT_MAX, CF_EINVAL, "pipeline: a boundary message of %lld floats is too large",
           (long long)n);
  cf_watchdog_enter(op, peer == p->stage - 1 ? p->prev_world : p->next_world);
  double t0 = cf_commstat_now();
  int e = MPI_Recv(buf, (int)n, MPI_FLOAT, peer, tag, p->g->pp, MPI_STATUS_IGNORE);
  cf_commstat_add(CF_COMM_PP, 0.0, cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

static cf_status pipe_send(const struct pipe *p, const float *buf, int64_t n, int peer, int tag,
                           MPI_Request *r) {
  CF_CHECK(n <= INT_MAX, CF_EINVAL, "pipeline: a boundary message of %lld floats is too large",
           (long long)n);
  CF_MPI(MPI_Isend(buf, (int)n, MPI_FLOAT, peer, tag, p->g->pp, r));
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
  int64_t step;
  double n_pts;
  PetscLogEvent ev_fwd, ev_bwd;
  double part[4]; /* loss, recon, kl, nll of this rank (last stage, tensor rank 0) */
};

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
  if (p->first || p->last) {
    cf_flow_batch(c->fc, c->src, c->tgt, c->tc->seed, (uint32_t)c->step, (uint64_t)s0, b, c->lb->z,
                  c->lb->y, c->lb->work);
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

cf_status cf_train_run(const struct cf_grid *g, const struct cf_train_cfg *tc,
                       const struct cf_model_cfg *mc, const struct cf_flow_cfg *fc,
                       const struct cf_dist *src, const struct cf_dist *tgt, const char *run_dir,
                       const char *options_yaml, const char *resume, struct cf_train_result *res) {
  MPI_Comm comm = g->cart;
  const int rank = g->rank;
  memset(res, 0, sizeof *res);
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H;
  const int64_t J = N * P, T = J * S;
  CF_TRY(cf_train_cfg_check(tc, mc, g->n_dp));
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
  /* ZeRO-1: rank r of the group holding the same parameters keeps the AdamW moments of its
   * range [zlo, zhi) only, updates that range and all-gathers the parameters; without it
   * every rank updates everything it holds */
  struct zero_shard z;
  CF_TRY(zero_init(&z, g->dpcp, m.n_params, tc->zero));
  struct cf_optim opt;
  CF_TRY(cf_optim_init(&opt, (size_t)(z.hi - z.lo)));
  struct cf_reducer red;
  CF_TRY(cf_reducer_init(&red, g->dpcp, m.grads, m.n_params, tc->bucket));
  struct cf_ckpt_table ct; /* with ZeRO it is built at each checkpoint (checkpoint()) */
  memset(&ct, 0, sizeof ct);
  if (!tc->zero) CF_TRY(cf_ckpt_table_init(&ct, &m, g, opt.m, opt.v));
  int64_t start = 0;
  if (resume) {
    struct cf_ckpt_meta meta;
    char *yaml_ck = NULL;
    CF_TRY(cf_ckpt_read_meta(comm, resume, &meta, &yaml_ck));
    cf_free((void **)&yaml_ck);
    CF_CHECK(meta.step >= 0 && meta.step < tc->steps, CF_EINVAL,
             "option -train_steps: checkpoint '%s' is at step %lld, expected fewer than %lld",
             resume, (long long)meta.step, (long long)tc->steps);
    CF_TRY(load(g, resume, &m, &opt, &z));
    start = meta.step;
    opt.t = start;
  }
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

  PetscClassId cid;
  PetscLogEvent ev_fwd, ev_bwd, ev_red, ev_opt, ev_ckpt;
  CF_PETSC(PetscClassIdRegister("calmflow", &cid));
  CF_PETSC(PetscLogEventRegister("cfForward", cid, &ev_fwd));
  CF_PETSC(PetscLogEventRegister("cfBackward", cid, &ev_bwd));
  CF_PETSC(PetscLogEventRegister("cfGradAllreduce", cid, &ev_red));
  CF_PETSC(PetscLogEventRegister("cfOptimizer", cid, &ev_opt));
  CF_PETSC(PetscLogEventRegister("cfCheckpoint", cid, &ev_ckpt));

  FILE *log = NULL;
  if (rank == 0) {
    char lp[4200];
    snprintf(lp, sizeof lp, "%s/log.jsonl", run_dir);
    log = fopen(lp, "a");
  }
  int log_ok = rank != 0 || log != NULL;
  CF_MPI(MPI_Bcast(&log_ok, 1, MPI_INT, 0, comm));
  CF_CHECK(log_ok, CF_EIO, "cannot open '%s/log.jsonl' for writing", run_dir);

  const double n_pts = (double)Bs * (double)((N - 1) * P);
  const double tokens_per_step = (double)Bs * (double)T;
  double t0 = now_s(), last_print = -1e9, tail_sum = 0;
  int64_t tail_n = 0;
  uint64_t step_allocs = 0; /* cf_alloc calls inside steps after the first (must stay 0) */
  struct sigaction sa, old_usr1, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  g_stop_signal = 0;
  sigaction(SIGUSR1, &sa, &old_usr1);
  sigaction(SIGTERM, &sa, &old_term);
  struct step_ctx sc = {.tc = tc,
                        .mc = mc,
                        .fc = fc,
                        .src = src,
                        .tgt = tgt,
                        .m = &m,
                        .red = &red,
                        .lb = &lb,
                        .p = &pp,
                        .n_pts = n_pts,
                        .ev_fwd = ev_fwd,
                        .ev_bwd = ev_bwd};
  cf_status st = CF_OK;
  double steady_s = 0; /* seconds of the steps after the first, checkpoints left out */
  cf_commstat_reset();
  for (int64_t step = start; step < tc->steps && st == CF_OK; step++) {
    if (step == start + 1) cf_commstat_reset();
    double ts = now_s();
    uint64_t a0 = cf_alloc_count();
    cf_model_zero_grad(&m);
    double part[5] = {0, 0, 0, 0, 0}; /* loss, recon, kl, nll, ranks that got a stop signal */
    sc.step = step;
    memset(sc.part, 0, sizeof sc.part);
    st = step_passes(&sc);
    for (int k = 0; k < 4; k++)
      part[k] = sc.part[k];
    /* Every rank that got through backward completes its buckets, then all agree on success.
     * A rank that failed inside forward or backward has not started its buckets and the others
     * wait for it in cf_reducer_finish: -par_timeout (the watchdog) ends such a job. */
    PetscLogEventBegin(ev_red, 0, 0, 0, 0);
    cf_watchdog_enter("grad_allreduce", -1);
    if (st == CF_OK) st = cf_reducer_finish(&red);
    cf_watchdog_leave();
    if (st == CF_OK) st = cf_fault_point("grad_allreduce"); /* hang here = never arrives */
    int bad = st != CF_OK, anybad = 0;
    cf_watchdog_enter("grad_allreduce", -1);
    if (MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_LOR, comm) != MPI_SUCCESS) anybad = 1;
    cf_watchdog_leave();
    PetscLogEventEnd(ev_red, 0, 0, 0, 0);
    if (anybad) {
      if (st == CF_OK) st = cf_err(CF_EREMOTE, "another rank failed at step %lld", (long long)step);
      break;
    }
    cf_watchdog_enter("loss_allreduce", -1);
    part[4] = g_stop_signal != 0;
    int e_part = MPI_Allreduce(MPI_IN_PLACE, part, 5, MPI_DOUBLE, MPI_SUM, comm);
    cf_watchdog_leave();
    CF_MPI(e_part);
    PetscLogEventBegin(ev_opt, 0, 0, 0, 0);
    double sq = cf_model_grad_sqnorm(&m);
    cf_watchdog_enter("grad_norm_allreduce", -1);
    int e_norm = MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, g->mp);
    cf_watchdog_leave();
    CF_MPI(e_norm);
    double gnorm = sqrt(sq);
    cf_clip_apply(m.grads, m.n_params, gnorm, tc->clip);
    if (!isfinite(part[0]) || !isfinite(gnorm)) {
      st = cf_err(CF_ENUM,
                  "step %lld: the loss (%g) or gradient norm (%g) is not finite; "
                  "lower -train_lr or check the data",
                  (long long)step, part[0], gnorm);
      PetscLogEventEnd(ev_opt, 0, 0, 0, 0);
      break;
    }
    double lr = cf_train_lr(tc, step);
    cf_optim_step(&opt, tc, m.params + z.lo, m.grads + z.lo, lr);
    if (tc->zero)
      CF_MPI(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, m.params, z.counts, z.displs, MPI_FLOAT,
                            g->dpcp));
    PetscLogEventEnd(ev_opt, 0, 0, 0, 0);
    if (step > start) step_allocs += cf_alloc_count() - a0;

    double tn = now_s(), el = tn - t0;
    if (step > start) steady_s += tn - ts;
    if (step >= tc->steps - 50) tail_sum += part[0], tail_n++;
    int64_t done = step + 1;
    if (rank == 0 && (done % tc->log_every == 0 || done == tc->steps)) {
      fprintf(log,
              "{\"step\": %lld, \"loss\": %.8g, \"recon\": %.8g, \"kl\": %.8g, \"nll\": %.8g, "
              "\"lr\": %.6g, \"grad_norm\": %.6g, \"tokens_per_s\": %.6g, \"seconds\": %.4f, "
              "\"step_allocs\": %llu}\n",
              (long long)done, part[0], part[1], part[2], part[3], lr, gnorm,
              tokens_per_step / (tn - ts), el, (unsigned long long)step_allocs);
      fflush(log);
    }
    if (rank == 0 && !tc->quiet && (tn - last_print >= 2.0 || done == tc->steps || done == 1)) {
      char e1[32], e2[32];
      fmt_dur(e1, sizeof e1, el);
      fmt_dur(e2, sizeof e2, el / (double)(done - start) * (double)(tc->steps - done));
      printf("step %6lld/%lld  loss %9.5f  lr %.2e  |g| %8.3g  %8.0f tok/s  %s elapsed  ETA %s\n",
             (long long)done, (long long)tc->steps, part[0], lr, gnorm,
             tokens_per_step * (double)(done - start) / el, e1, e2);
      fflush(stdout);
      last_print = tn;
    }
    int stop = part[4] > 0 && done != tc->steps; /* every rank sees the same sum */
    if (stop || (tc->ckpt_every > 0 && done % tc->ckpt_every == 0 && done != tc->steps)) {
      PetscLogEventBegin(ev_ckpt, 0, 0, 0, 0);
      st = checkpoint(g, run_dir, done, tc, options_yaml, &m, &opt, &z, &ct, res);
      PetscLogEventEnd(ev_ckpt, 0, 0, 0, 0);
    }
    if (stop && st == CF_OK) {
      res->stopped_at = done;
      st = CF_STOPPED;
    }
  }
  if (st == CF_OK) {
    PetscLogEventBegin(ev_ckpt, 0, 0, 0, 0);
    st = checkpoint(g, run_dir, tc->steps, tc, options_yaml, &m, &opt, &z, &ct, res);
    PetscLogEventEnd(ev_ckpt, 0, 0, 0, 0);
  }
  sigaction(SIGUSR1, &old_usr1, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  res->stop_signal = g_stop_signal;
  res->seconds = now_s() - t0;
  res->tokens_per_s = tokens_per_step *
                      (double)((st == CF_STOPPED ? res->stopped_at : tc->steps) - start) /
                      res->seconds;
  res->final_loss = tail_n ? tail_sum / (double)tail_n : NAN;
  res->grad_bytes_per_step = red.bytes / (double)(tc->steps > 0 ? tc->steps : 1);
  res->state_bytes = (double)(2 * m.n_params + 2 * opt.n) * sizeof(float);
  res->flops_per_step = cf_model_flops(mc) * (double)Bs;
  {
    int64_t ran = (st == CF_STOPPED ? res->stopped_at : tc->steps) - start - 1;
    double buf[9];
    cf_commstat_get(buf, buf + 4);
    for (int k = 0; k < 8; k++)
      buf[k] = ran > 0 ? buf[k] / (double)ran : 0.0;
    buf[8] = res->state_bytes;
    if (MPI_Allreduce(MPI_IN_PLACE, buf, 9, MPI_DOUBLE, MPI_MAX, comm) == MPI_SUCCESS) {
      for (int k = 0; k < 4; k++) {
        res->comm_bytes[k] = buf[k];
        res->comm_seconds[k] = buf[4 + k];
      }
      res->state_bytes_max = buf[8];
    }
    res->steady_tokens_per_s =
        ran > 0 && steady_s > 0 ? tokens_per_step * (double)ran / steady_s : res->tokens_per_s;
  }
  {
    struct rusage ru;
    double mine = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0;
    if (MPI_Allreduce(&mine, &res->peak_rss, 1, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS)
      res->peak_rss = mine;
  }
  if (log) fclose(log);
  cf_ckpt_table_release(&ct);
  cf_arena_release(&ar);
  cf_free((void **)&reqs);
  cf_optim_release(&opt);
  zero_release(&z);
  cf_model_release(&m);
  return st;
}
