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
                             const float *adam_m, const float *adam_v) {
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
      e->data = (float *)base[g] + ti->offset;
    }
  return CF_OK;
}

void cf_ckpt_table_release(struct cf_ckpt_table *ct) {
  void *t = ct->t, *n = ct->names;
  cf_free(&t);
  cf_free(&n);
  memset(ct, 0, sizeof *ct);
}

static cf_status save(MPI_Comm comm, const char *run_dir, int64_t step,
                      const struct cf_train_cfg *tc, const char *options_yaml,
                      const struct cf_ckpt_table *ct, int64_t keep, char *out, size_t cap) {
  int world;
  MPI_Comm_size(comm, &world);
  char dir[4096], name[64], path[4200];
  snprintf(dir, sizeof dir, "%s/ckpt", run_dir);
  snprintf(name, sizeof name, "step-%07lld.h5", (long long)step);
  snprintf(path, sizeof path, "%s/%s", dir, name);
  struct cf_ckpt_meta meta = {.step = step,
                              .seed = tc->seed,
                              .world = world,
                              .data_cursor = step,
                              .options_yaml = options_yaml,
                              .model_kind = "calmflow"};
  CF_TRY(cf_ckpt_write(comm, path, &meta, ct->t, ct->nt));
  CF_TRY(cf_ckpt_latest_write(comm, dir, name));
  CF_TRY(cf_ckpt_prune(comm, dir, keep));
  snprintf(out, cap, "%s", path);
  return CF_OK;
}

cf_status cf_train_cfg_check(const struct cf_train_cfg *tc, const struct cf_model_cfg *mc,
                             int world) {
  CF_CHECK(tc->batch % mc->P == 0, CF_EINVAL,
           "option -train_batch: %lld paths do not fill whole sequences of -flow_trajectories %lld",
           (long long)tc->batch, (long long)mc->P);
  const int64_t Bs = tc->batch / mc->P;
  CF_CHECK(Bs >= world, CF_ETOPO,
           "option -train_batch: %lld sequences per step cannot feed %d ranks (need >= 1 per rank)",
           (long long)Bs, world);
  CF_CHECK(tc->microbatches >= 1 && tc->microbatches <= Bs / world, CF_EINVAL,
           "option -train_microbatches: expected 1..%lld (sequences per rank), got %lld",
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
static cf_status checkpoint(MPI_Comm comm, const char *run_dir, int64_t step,
                            const struct cf_train_cfg *tc, const char *options_yaml,
                            const struct cf_model *m, const struct cf_optim *o,
                            const struct zero_shard *z, const struct cf_ckpt_table *ct,
                            struct cf_train_result *res) {
  if (!tc->zero)
    return save(comm, run_dir, step, tc, options_yaml, ct, tc->ckpt_keep, res->last_ckpt,
                sizeof res->last_ckpt);
  const size_t n = m->n_params;
  float *g = NULL;
  struct cf_ckpt_table zt;
  CF_TRY(cf_alloc((void **)&g, 2 * n * sizeof(float), "gathered optimizer moments"));
  cf_status st = cf_ckpt_table_init(&zt, m, g, g + n);
  if (st == CF_OK && MPI_Allgatherv(o->m, (int)(z->hi - z->lo), MPI_FLOAT, g, z->counts, z->displs,
                                    MPI_FLOAT, comm) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "gathering the optimizer moments for the checkpoint failed");
  if (st == CF_OK && MPI_Allgatherv(o->v, (int)(z->hi - z->lo), MPI_FLOAT, g + n, z->counts,
                                    z->displs, MPI_FLOAT, comm) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "gathering the optimizer moments for the checkpoint failed");
  if (st == CF_OK)
    st = save(comm, run_dir, step, tc, options_yaml, &zt, tc->ckpt_keep, res->last_ckpt,
              sizeof res->last_ckpt);
  cf_ckpt_table_release(&zt);
  cf_free((void **)&g);
  return st;
}

/* Collective. Parameters and AdamW moments from checkpoint `path` (ZeRO: this rank's shard of
 * the moments). The moments are read into a temporary full buffer, as they were written. */
static cf_status load(MPI_Comm comm, const char *path, struct cf_model *m, struct cf_optim *o,
                      const struct zero_shard *z) {
  const size_t n = m->n_params;
  float *g = NULL;
  struct cf_ckpt_table t;
  CF_TRY(cf_alloc((void **)&g, 2 * n * sizeof(float), "checkpoint moments"));
  cf_status st = cf_ckpt_table_init(&t, m, g, g + n);
  if (st == CF_OK) st = cf_ckpt_read_tensors(comm, path, t.t, t.nt);
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

cf_status cf_train_run(MPI_Comm comm, const struct cf_train_cfg *tc, const struct cf_model_cfg *mc,
                       const struct cf_flow_cfg *fc, const struct cf_dist *src,
                       const struct cf_dist *tgt, const char *run_dir, const char *options_yaml,
                       const char *resume, struct cf_train_result *res) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  memset(res, 0, sizeof *res);
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H;
  const int64_t J = N * P, T = J * S;
  CF_TRY(cf_train_cfg_check(tc, mc, world));
  const int64_t Bs = tc->batch / P;
  const int64_t lo = Bs * rank / world, hi = Bs * (rank + 1) / world, local = hi - lo;
  CF_CHECK(tc->microbatches >= 1 && tc->microbatches <= local, CF_EINVAL,
           "option -train_microbatches: expected 1..%lld (sequences on this rank), got %lld",
           (long long)local, (long long)tc->microbatches);
  const int64_t mb = (local + tc->microbatches - 1) / tc->microbatches;

  struct cf_model m;
  CF_TRY(cf_model_init(&m, mc, mb));
  cf_model_init_weights(&m, tc->seed);
  /* ZeRO-1: rank r keeps the AdamW moments of parameters [zlo, zhi) only, updates that range
   * and all-gathers the parameters; without it every rank updates everything */
  struct zero_shard z;
  CF_TRY(zero_init(&z, comm, m.n_params, tc->zero));
  struct cf_optim opt;
  CF_TRY(cf_optim_init(&opt, (size_t)(z.hi - z.lo)));
  struct cf_reducer red;
  CF_TRY(cf_reducer_init(&red, comm, m.grads, m.n_params, tc->bucket));
  struct cf_ckpt_table ct; /* with ZeRO it is built at each checkpoint (checkpoint()) */
  memset(&ct, 0, sizeof ct);
  if (!tc->zero) CF_TRY(cf_ckpt_table_init(&ct, &m, opt.m, opt.v));
  int64_t start = 0;
  if (resume) {
    struct cf_ckpt_meta meta;
    char *yaml_ck = NULL;
    CF_TRY(cf_ckpt_read_meta(comm, resume, &meta, &yaml_ck));
    cf_free((void **)&yaml_ck);
    CF_CHECK(meta.step >= 0 && meta.step < tc->steps, CF_EINVAL,
             "option -train_steps: checkpoint '%s' is at step %lld, expected fewer than %lld",
             resume, (long long)meta.step, (long long)tc->steps);
    CF_TRY(load(comm, resume, &m, &opt, &z));
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
    lb.z = cf_arena_floats(&ar, (size_t)(mb * J * D));
    lb.y = cf_arena_floats(&ar, (size_t)(mb * J * D));
    lb.eps = cf_arena_floats(&ar, mc->head == CF_HEAD_VAE ? (size_t)(mb * T * H) : 1);
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
  cf_status st = CF_OK;
  for (int64_t step = start; step < tc->steps && st == CF_OK; step++) {
    double ts = now_s();
    uint64_t a0 = cf_alloc_count();
    cf_model_zero_grad(&m);
    double part[5] = {0, 0, 0, 0, 0}; /* loss, recon, kl, nll, ranks that got a stop signal */
    for (int64_t s0 = lo; s0 < hi; s0 += mb) {
      int64_t b = hi - s0 < mb ? hi - s0 : mb;
      cf_watchdog_where(step, 0, (s0 - lo) / mb);
      cf_flow_batch(fc, src, tgt, tc->seed, (uint32_t)step, (uint64_t)s0, b, lb.z, lb.y, lb.work);
      if (mc->head == CF_HEAD_VAE)
        for (int64_t i = 0; i < b; i++) {
          struct cf_rng r = {tc->seed, CF_RNG_LATENT, (uint32_t)step, (uint64_t)(s0 + i)};
          cf_rng_normal(&r, 0, lb.eps + i * T * H, (size_t)(T * H));
        }
      struct cf_dropkey dk = {tc->seed, (uint32_t)step, (uint64_t)s0};
      struct cf_loss l;
      PetscLogEventBegin(ev_fwd, 0, 0, 0, 0);
      st = cf_model_forward(&m, b, lb.z, lb.y, mc->head == CF_HEAD_VAE ? lb.eps : NULL, &dk, n_pts,
                            (float)tc->kl_weight, &l);
      PetscLogEventEnd(ev_fwd, 0, 0, 0, 0);
      if (st != CF_OK) break;
      /* the last micro-batch's backward starts the gradient buckets as layers finish */
      int last = s0 + mb >= hi;
      if (last) cf_reducer_begin(&red);
      m.grad_ready = last ? cf_reducer_ready : NULL;
      m.grad_ctx = &red;
      PetscLogEventBegin(ev_bwd, 0, 0, 0, 0);
      st = cf_model_backward(&m);
      PetscLogEventEnd(ev_bwd, 0, 0, 0, 0);
      if (st != CF_OK) break;
      part[0] += l.loss;
      part[1] += l.recon;
      part[2] += l.kl;
      part[3] += l.nll;
    }
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
    double gnorm = cf_clip_grad(m.grads, m.n_params, tc->clip);
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
                            comm));
    PetscLogEventEnd(ev_opt, 0, 0, 0, 0);
    if (step > start) step_allocs += cf_alloc_count() - a0;

    double tn = now_s(), el = tn - t0;
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
      st = checkpoint(comm, run_dir, done, tc, options_yaml, &m, &opt, &z, &ct, res);
      PetscLogEventEnd(ev_ckpt, 0, 0, 0, 0);
    }
    if (stop && st == CF_OK) {
      res->stopped_at = done;
      st = CF_STOPPED;
    }
  }
  if (st == CF_OK) {
    PetscLogEventBegin(ev_ckpt, 0, 0, 0, 0);
    st = checkpoint(comm, run_dir, tc->steps, tc, options_yaml, &m, &opt, &z, &ct, res);
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
  {
    struct rusage ru;
    double mine = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0;
    if (MPI_Allreduce(&mine, &res->peak_rss, 1, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS)
      res->peak_rss = mine;
  }
  if (log) fclose(log);
  cf_ckpt_table_release(&ct);
  cf_arena_release(&ar);
  cf_optim_release(&opt);
  zero_release(&z);
  cf_model_release(&m);
  return st;
}
