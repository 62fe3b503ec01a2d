/* loop.c: the training loop every method shares (loop.h): gradient all-reduce, agreement on
 * failure and on the stop signal, clipping, the optimizer (ZeRO-1 optional), log.jsonl,
 * progress lines, checkpoints and resume. Nothing is allocated inside a step. */
#include "train/loop.h"

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
#include "calmflow/mpichunk.h"
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

cf_status cf_ckpt_table_init_tensors(struct cf_ckpt_table *ct, const struct cf_tensor_info *tensors,
                                     int n_tensors, const float *params, const struct cf_grid *grid,
                                     const float *adam_m, const float *adam_v) {
  static const char *groups[3] = {"params", "adam_m", "adam_v"};
  const float *base[3] = {params, adam_m, adam_v};
  int ng = adam_m && adam_v ? 3 : 1;
  void *t = NULL, *names = NULL;
  memset(ct, 0, sizeof *ct);
  CF_TRY(
      cf_alloc(&t, (size_t)(ng * n_tensors) * sizeof(struct cf_ckpt_tensor), "checkpoint table"));
  CF_TRY(cf_alloc(&names, (size_t)(ng * n_tensors) * CF_CKPT_NAME_MAX, "checkpoint names"));
  ct->nt = ng * n_tensors;
  ct->t = t;
  ct->names = names;
  for (int g = 0; g < ng; g++)
    for (int i = 0; i < n_tensors; i++) {
      const struct cf_tensor_info *ti = &tensors[i];
      struct cf_ckpt_tensor *e = &ct->t[g * n_tensors + i];
      char *nm = ct->names + (size_t)(g * n_tensors + i) * CF_CKPT_NAME_MAX;
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

cf_status cf_ckpt_table_init(struct cf_ckpt_table *ct, const struct cf_model *m,
                             const struct cf_grid *grid, const float *adam_m, const float *adam_v) {
  return cf_ckpt_table_init_tensors(ct, m->tensors, m->n_tensors, m->params, grid, adam_m, adam_v);
}

void cf_ckpt_table_release(struct cf_ckpt_table *ct) {
  void *t = ct->t, *n = ct->names;
  cf_free(&t);
  cf_free(&n);
  memset(ct, 0, sizeof *ct);
}

static cf_status save(const struct cf_grid *g, const char *run_dir, int64_t step,
                      const struct cf_train_cfg *tc, const char *options_yaml,
                      const struct cf_learner *L, const struct cf_ckpt_table *ct, int64_t keep,
                      char *out, size_t cap) {
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
                              .model_kind = L->kind,
                              .conditions = L->conditions,
                              .layout = layout,
                              .rng = "philox4x32-10 keyed by (seed, domain, step, index)",
                              .rng_step = step};
  CF_TRY(cf_ckpt_write(comm, path, &meta, ct->t, ct->nt));
  CF_TRY(cf_ckpt_latest_write(comm, dir, name));
  CF_TRY(cf_ckpt_prune(comm, dir, keep));
  snprintf(out, cap, "%s", path);
  return CF_OK;
}

struct zero_shard {
  int64_t lo, hi;           /* this rank's parameter range */
  int64_t *counts, *displs; /* (world) ranges of all ranks, for cf_mpi_allgatherv */
};

static cf_status zero_init(struct zero_shard *z, MPI_Comm comm, size_t n, int on) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  memset(z, 0, sizeof *z);
  z->hi = (int64_t)n;
  if (!on) return CF_OK;
  CF_TRY(cf_alloc((void **)&z->counts, (size_t)world * sizeof(int64_t), "ZeRO ranges"));
  CF_TRY(cf_alloc((void **)&z->displs, (size_t)world * sizeof(int64_t), "ZeRO ranges"));
  for (int r = 0; r < world; r++) {
    z->displs[r] = (int64_t)((uint64_t)n * (uint64_t)r / (uint64_t)world);
    z->counts[r] = (int64_t)((uint64_t)n * (uint64_t)(r + 1) / (uint64_t)world) - z->displs[r];
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
                            const struct cf_learner *m, const struct cf_optim *o,
                            const struct zero_shard *z, const struct cf_ckpt_table *ct,
                            struct cf_train_result *res) {
  if (!tc->zero)
    return save(grid, run_dir, step, tc, options_yaml, m, ct, tc->ckpt_keep, res->last_ckpt,
                sizeof res->last_ckpt);
  const size_t n = m->n_params;
  float *g = NULL;
  struct cf_ckpt_table zt;
  CF_TRY(cf_alloc((void **)&g, 2 * n * sizeof(float), "gathered optimizer moments"));
  cf_status st =
      cf_ckpt_table_init_tensors(&zt, m->tensors, m->n_tensors, m->params, grid, g, g + n);
  if (st == CF_OK && cf_mpi_allgatherv(o->m, (size_t)(z->hi - z->lo), g, z->counts, z->displs,
                                       MPI_FLOAT, m->grad_comm) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "gathering the optimizer moments for the checkpoint failed");
  if (st == CF_OK && cf_mpi_allgatherv(o->v, (size_t)(z->hi - z->lo), g + n, z->counts, z->displs,
                                       MPI_FLOAT, m->grad_comm) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "gathering the optimizer moments for the checkpoint failed");
  if (st == CF_OK)
    st = save(grid, run_dir, step, tc, options_yaml, m, &zt, tc->ckpt_keep, res->last_ckpt,
              sizeof res->last_ckpt);
  cf_ckpt_table_release(&zt);
  cf_free((void **)&g);
  return st;
}

/* Collective. Parameters and AdamW moments from checkpoint `path` (ZeRO: this rank's shard of
 * the moments). The moments are read into a temporary full buffer, as they were written. */
static cf_status load(const struct cf_grid *grid, const char *path, struct cf_learner *m,
                      struct cf_optim *o, const struct zero_shard *z) {
  const size_t n = m->n_params;
  float *g = NULL;
  struct cf_ckpt_table t;
  CF_TRY(cf_alloc((void **)&g, 2 * n * sizeof(float), "checkpoint moments"));
  cf_status st =
      cf_ckpt_table_init_tensors(&t, m->tensors, m->n_tensors, m->params, grid, g, g + n);
  if (st == CF_OK) st = cf_ckpt_read_tensors(grid->cart, path, t.t, t.nt);
  if (st == CF_OK) {
    memcpy(o->m, g + z->lo, (size_t)(z->hi - z->lo) * sizeof(float));
    memcpy(o->v, g + n + z->lo, (size_t)(z->hi - z->lo) * sizeof(float));
  }
  cf_ckpt_table_release(&t);
  cf_free((void **)&g);
  return st;
}

/* Local. The fault-injection value sites of a step (fault.h): nan_grad poisons the first
 * gradient element of the range this rank updates, nan_loss this rank's share of the loss. */
static cf_status poison(struct cf_learner *L, size_t at, double *loss) {
  double gv = L->grads[at];
  CF_TRY(cf_fault_poison("nan_grad", &gv));
  L->grads[at] = (float)gv;
  return cf_fault_poison("nan_loss", loss);
}

/* SIGUSR1 / SIGTERM (Slurm's --signal and preemption): remember, act at the step boundary */
static volatile sig_atomic_t g_stop_signal;
static void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

cf_status cf_train_loop(const struct cf_grid *g, const struct cf_train_cfg *tc,
                        struct cf_learner *L, const char *run_dir, const char *options_yaml,
                        const char *resume, struct cf_train_result *res) {
  MPI_Comm comm = g->cart;
  const int rank = g->rank;
  /* ZeRO-1: rank r of the group holding the same parameters keeps the AdamW moments of its
   * range [zlo, zhi) only, updates that range and all-gathers the parameters; without it
   * every rank updates everything it holds */
  struct zero_shard z;
  CF_TRY(zero_init(&z, L->grad_comm, L->n_params, tc->zero));
  struct cf_optim opt;
  CF_TRY(cf_optim_init(&opt, (size_t)(z.hi - z.lo)));
  struct cf_reducer red;
  CF_TRY(cf_reducer_init(&red, L->grad_comm, L->grads, L->n_params, tc->bucket));
  struct cf_ckpt_table ct; /* with ZeRO it is built at each checkpoint (checkpoint()) */
  memset(&ct, 0, sizeof ct);
  if (!tc->zero)
    CF_TRY(cf_ckpt_table_init_tensors(&ct, L->tensors, L->n_tensors, L->params, g, opt.m, opt.v));
  int64_t start = 0;
  if (resume) {
    struct cf_ckpt_meta meta;
    char *yaml_ck = NULL;
    CF_TRY(cf_ckpt_read_meta(comm, resume, &meta, &yaml_ck));
    cf_free((void **)&yaml_ck);
    CF_CHECK(meta.step >= 0 && meta.step < tc->steps, CF_EINVAL,
             "option -train_steps: checkpoint '%s' is at step %lld, expected fewer than %lld",
             resume, (long long)meta.step, (long long)tc->steps);
    CF_TRY(load(g, resume, L, &opt, &z));
    start = meta.step;
    opt.t = start;
  }
  PetscClassId cid;
  PetscLogEvent ev_red, ev_opt, ev_ckpt;
  CF_PETSC(PetscClassIdRegister("calmflow", &cid));
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

  const double tokens_per_step = L->tokens_per_step;
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
  double steady_s = 0; /* seconds of the steps after the first, checkpoints left out */
  int64_t nan_run = 0; /* consecutive steps skipped for a non-finite loss or gradient */
  cf_commstat_reset();
  for (int64_t step = start; step < tc->steps && st == CF_OK; step++) {
    if (step == start + 1) cf_commstat_reset();
    double ts = now_s();
    uint64_t a0 = cf_alloc_count();
    L->zero_grad(L->ctx);
    /* loss, recon, kl, nll, ranks that got a stop signal, ranks whose loss share is not
     * finite, ranks whose (reduced) gradient is not finite */
    double part[7] = {0, 0, 0, 0, 0, 0, 0};
    st = L->step(L->ctx, step, &red, part);
    /* Every rank that got through backward completes its buckets, then all agree on success.
     * A rank that failed inside forward or backward has not started its buckets and the others
     * wait for it in cf_reducer_finish: -par_timeout (the watchdog) ends such a job. */
    PetscLogEventBegin(ev_red, 0, 0, 0, 0);
    cf_watchdog_enter("grad_allreduce", -1);
    if (st == CF_OK) st = cf_reducer_finish(&red);
    cf_watchdog_leave();
    if (st == CF_OK) st = cf_fault_point("grad_allreduce"); /* hang here = never arrives */
    if (st == CF_OK) st = poison(L, (size_t)z.lo, &part[0]);
    int bad = st != CF_OK, anybad = 0;
    cf_watchdog_enter("grad_allreduce", -1);
    if (MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_LOR, comm) != MPI_SUCCESS) anybad = 1;
    cf_watchdog_leave();
    PetscLogEventEnd(ev_red, 0, 0, 0, 0);
    if (anybad) {
      if (st == CF_OK) st = cf_err(CF_EREMOTE, "another rank failed at step %lld", (long long)step);
      break;
    }
    /* The numerical guard: each rank flags a non-finite share of the loss and a non-finite
     * element anywhere in its gradient after the reduction; the flags ride on the loss
     * all-reduce, so every rank of every group sees the same counts and takes the same branch */
    int grad_finite = 0;
    double sq = L->grad_sqnorm(L->ctx, &grad_finite);
    part[5] = !isfinite(part[0]);
    part[6] = !grad_finite;
    cf_watchdog_enter("loss_allreduce", -1);
    part[4] = g_stop_signal != 0;
    int e_part = MPI_Allreduce(MPI_IN_PLACE, part, 7, MPI_DOUBLE, MPI_SUM, comm);
    cf_watchdog_leave();
    CF_MPI(e_part);
    int64_t done = step + 1;
    const int bad_loss = part[5] > 0, bad_grad = part[6] > 0, skipped = bad_loss || bad_grad;
    const char *what = bad_loss && bad_grad ? "loss and the gradient"
                       : bad_loss           ? "loss"
                                            : "gradient";
    double lr = cf_train_lr(tc, step), gnorm = 0;
    if (skipped) {
      /* the update is dropped: no parameter or moment changes. The bias-correction counter
       * still counts the step, like the learning-rate schedule, so that it stays equal to the
       * step number a resumed run restarts it from (checkpoints do not store it) */
      opt.t++;
      nan_run++;
      if (tc->nan_policy == CF_NAN_STOP) {
        st = cf_err(CF_ENUM,
                    "step %lld: the %s is not finite (NaN or Inf); -train_nan_policy stop: the run "
                    "ends without this update and without a checkpoint of it (ckpt/LATEST names "
                    "the last good one); lower -train_lr, check the data, or pass "
                    "-train_nan_policy skip",
                    (long long)done, what);
        break;
      }
      if (nan_run > tc->nan_max_skips) {
        st = cf_err(CF_ENUM,
                    "step %lld: the %s is not finite (NaN or Inf) in %lld consecutive steps, more "
                    "than -train_nan_max_skips %lld; the run ends without this update and without "
                    "a checkpoint of it (ckpt/LATEST names the last good one)",
                    (long long)done, what, (long long)nan_run, (long long)tc->nan_max_skips);
        break;
      }
      if (res->nan_skips < CF_NAN_LISTED) res->nan_skipped[res->nan_skips] = done;
      res->nan_skips++;
    } else {
      nan_run = 0;
      PetscLogEventBegin(ev_opt, 0, 0, 0, 0);
      cf_watchdog_enter("grad_norm_allreduce", -1);
      int e_norm = MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, L->norm_comm);
      cf_watchdog_leave();
      CF_MPI(e_norm);
      gnorm = sqrt(sq);
      cf_optim_step_scaled(&opt, tc, L->params + z.lo, L->grads + z.lo, lr,
                           cf_clip_scale(gnorm, tc->clip)); /* clipping fused */
      if (tc->zero)
        CF_MPI(cf_mpi_allgatherv(MPI_IN_PLACE, (size_t)(z.hi - z.lo), L->params, z.counts, z.displs,
                                 MPI_FLOAT, L->grad_comm));
      PetscLogEventEnd(ev_opt, 0, 0, 0, 0);
    }
    if (step > start) step_allocs += cf_alloc_count() - a0;

    double tn = now_s(), el = tn - t0;
    if (step > start) steady_s += tn - ts;
    if (skipped) {
      /* one warning line, and a log.jsonl line for the step whatever -train_log_every says */
      if (rank == 0) {
        fprintf(stderr,
                "calmflow: warning: step %lld: the %s is not finite (NaN or Inf); update skipped "
                "(-train_nan_policy skip: %lld in a row, at most %lld)\n",
                (long long)done, what, (long long)nan_run, (long long)tc->nan_max_skips);
        fflush(stderr);
        char lv[32] = "null";
        if (isfinite(part[0])) snprintf(lv, sizeof lv, "%.8g", part[0]);
        fprintf(log, "{\"step\": %lld, \"skipped\": \"%s\", \"loss\": %s, \"seconds\": %.4f}\n",
                (long long)done,
                bad_loss && bad_grad ? "loss+grad"
                : bad_loss           ? "loss"
                                     : "grad",
                lv, el);
        fflush(log);
      }
    } else if (step >= tc->steps - 50)
      tail_sum += part[0], tail_n++;
    if (!skipped && rank == 0 && (done % tc->log_every == 0 || done == tc->steps)) {
      fprintf(log,
              "{\"step\": %lld, \"loss\": %.8g, \"recon\": %.8g, \"kl\": %.8g, \"nll\": %.8g, "
              "\"lr\": %.6g, \"grad_norm\": %.6g, \"tokens_per_s\": %.6g, \"seconds\": %.4f, "
              "\"step_allocs\": %llu}\n",
              (long long)done, part[0], part[1], part[2], part[3], lr, gnorm,
              tokens_per_step / (tn - ts), el, (unsigned long long)step_allocs);
      fflush(log);
    }
    if (!skipped && rank == 0 && !tc->quiet &&
        (tn - last_print >= 2.0 || done == tc->steps || done == 1)) {
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
      double tc0 = now_s();
      st = checkpoint(g, run_dir, done, tc, options_yaml, L, &opt, &z, &ct, res);
      res->ckpt_seconds += now_s() - tc0;
      res->ckpts++;
      PetscLogEventEnd(ev_ckpt, 0, 0, 0, 0);
    }
    if (stop && st == CF_OK) {
      res->stopped_at = done;
      st = CF_STOPPED;
    }
  }
  if (st == CF_OK) {
    PetscLogEventBegin(ev_ckpt, 0, 0, 0, 0);
    double tc0 = now_s();
    st = checkpoint(g, run_dir, tc->steps, tc, options_yaml, L, &opt, &z, &ct, res);
    res->ckpt_seconds += now_s() - tc0;
    res->ckpts++;
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
  res->state_bytes = (double)(2 * L->n_params + 2 * opt.n) * sizeof(float);
  res->flops_per_step = L->flops_per_step;
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
    double mine[2] = {getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0,
                      (double)cf_alloc_peak()},
           most[2];
    if (MPI_Allreduce(mine, most, 2, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS)
      memcpy(most, mine, sizeof most); /* this rank's figures */
    res->peak_rss = most[0];
    res->heap_peak = most[1];
  }
  if (log) fclose(log);
  cf_ckpt_table_release(&ct);
  cf_optim_release(&opt);
  zero_release(&z);
  return st;
}
