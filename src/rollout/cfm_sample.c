/* cfm_sample.c: sampling the CFM baseline (rollout.h, cf_rollout_cfm_run): chunks of
 * -sample_batch points integrated with PETSc TS (under one condition for a conditional model),
 * dealt to the ranks round by round and gathered on rank 0 in sample order for the sink. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/rollout.h"
#include "calmflow/watchdog.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Local. Samples [i0, i0 + count): x0 draws, then the integration; out (count, N, D) with every
 * time point when traj, else (count, D). x (count, D) is the working state; c (count, C) the
 * samples' conditions or NULL. */
static cf_status chunk(struct cf_cfm *m, const struct cf_dist *src, const float *c,
                       const struct cf_sample_cfg *sc, int64_t N, const struct cf_ode_opts *o,
                       int64_t i0, int64_t count, float *x, float *out, struct cf_ode_stats *acc) {
  const int64_t D = m->cfg.D;
  for (int64_t q = 0; q < count; q++) {
    struct cf_rng r = {sc->seed, CF_RNG_X0, UINT32_MAX, (uint64_t)(i0 + q)};
    cf_dist_draw(src, &r, x + q * D);
  }
  struct cf_ode_stats st;
  if (!sc->traj) {
    CF_TRY(cf_cfm_sample_c(m, count, x, c, o, &st));
    acc->nfe += st.nfe, acc->steps += st.steps, acc->rejected += st.rejected;
    memcpy(out, x, (size_t)(count * D) * sizeof(float));
    snprintf(acc->type, sizeof acc->type, "%s", st.type);
    return CF_OK;
  }
  for (int64_t q = 0; q < count; q++)
    memcpy(out + q * N * D, x + q * D, (size_t)D * sizeof(float));
  for (int64_t t = 0; t + 1 < N; t++) { /* stop at every time point of the grid */
    struct cf_ode_opts seg = *o;
    seg.t0 = o->t0 + (o->t1 - o->t0) * (double)t / (double)(N - 1);
    seg.t1 = o->t0 + (o->t1 - o->t0) * (double)(t + 1) / (double)(N - 1);
    CF_TRY(cf_cfm_sample_c(m, count, x, c, &seg, &st));
    acc->nfe += st.nfe, acc->steps += st.steps, acc->rejected += st.rejected;
    snprintf(acc->type, sizeof acc->type, "%s", st.type);
    for (int64_t q = 0; q < count; q++)
      memcpy(out + (q * N + t + 1) * D, x + q * D, (size_t)D * sizeof(float));
  }
  return CF_OK;
}

cf_status cf_rollout_cfm_run(MPI_Comm comm, struct cf_cfm *m, const struct cf_dist *src,
                             const float *cond, const struct cf_sample_cfg *sc, int64_t N,
                             const struct cf_ode_opts *o, cf_rollout_sink sink, void *sink_ctx,
                             struct cf_rollout_stats *stats, struct cf_rollout_ode *ode) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  const int64_t D = m->cfg.D, b = sc->batch, per = sc->traj ? N * D : D;
  CF_CHECK(sc->n >= 1 && sc->first >= 0 && sc->first <= sc->n && b >= 1, CF_EINVAL,
           "sampling: %lld samples from %lld in chunks of %lld", (long long)sc->n,
           (long long)sc->first, (long long)b);
  CF_CHECK(N >= 2 || !sc->traj, CF_EINVAL, "sampling: -sample_traj needs at least 2 time points");
  CF_CHECK((double)b * (double)per * (double)world < 2147483647.0, CF_EINVAL,
           "option -sample_batch: chunks of %lld samples on %d ranks are too large for one "
           "message; use a smaller batch",
           (long long)b, world);
  const int64_t left = sc->n - sc->first, nchunks = (left + b - 1) / b;
  const int64_t C = m->cfg.cond_dim;
  CF_CHECK((C == 0) == (cond == NULL), CF_EINVAL,
           "sampling: the model takes %lld condition features, %s", (long long)C,
           cond ? "but a condition was given" : "but no condition was given");
  float *x = NULL, *mine = NULL, *all = NULL, *xs = NULL, *cb = NULL;
  int64_t *counts = NULL, *displs = NULL;
  cf_status st = cf_alloc((void **)&x, (size_t)(b * D) * sizeof(float), "cfm sample state");
  if (st == CF_OK && C > 0) /* (b, C): every sample's condition, the same */
    st = cf_alloc((void **)&cb, (size_t)(b * C) * sizeof(float), "cfm sample conditions");
  for (int64_t q = 0; st == CF_OK && q < b && C > 0; q++)
    memcpy(cb + q * C, cond, (size_t)C * sizeof(float));
  if (st == CF_OK) st = cf_alloc((void **)&mine, (size_t)(b * per) * sizeof(float), "cfm chunk");
  if (st == CF_OK && rank == 0) {
    st = cf_alloc((void **)&all, (size_t)(world * b * per) * sizeof(float), "cfm gather");
    if (st == CF_OK) st = cf_alloc((void **)&xs, (size_t)(b * D) * sizeof(float), "cfm x");
    if (st == CF_OK) st = cf_alloc((void **)&counts, (size_t)world * sizeof(int64_t), "cfm gather");
    if (st == CF_OK) st = cf_alloc((void **)&displs, (size_t)world * sizeof(int64_t), "cfm gather");
  }
  struct cf_ode_stats acc;
  memset(&acc, 0, sizeof acc);
  double t0 = now_s(), busy = 0, coord = 0, last_print = t0;
  int64_t made = 0, solves = 0;
  for (int64_t round = 0; round * world < nchunks; round++) {
    /* everyone learns of a failure (allocation, integration, the sink) before the next round */
    int bad = st != CF_OK, any = 0;
    cf_watchdog_enter("sample_agree", -1);
    int e = MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_LOR, comm);
    cf_watchdog_leave();
    CF_MPI(e);
    if (any) break;
    const int64_t k = round * world + rank, i0 = sc->first + k * b;
    const int64_t count = k < nchunks ? (left - k * b < b ? left - k * b : b) : 0;
    if (count > 0) {
      double tb = now_s();
      st = cf_fault_point("sample_batch");
      if (st == CF_OK) st = chunk(m, src, cb, sc, N, o, i0, count, x, mine, &acc);
      busy += now_s() - tb;
      made++;
      solves += sc->traj ? N - 1 : 1;
    }
    int64_t n_send = st == CF_OK ? count * per : 0;
    cf_watchdog_enter("sample_gather", 0);
    e = MPI_Gather(&n_send, 1, MPI_INT64_T, counts, 1, MPI_INT64_T, 0, comm);
    if (e == MPI_SUCCESS && rank == 0)
      for (int64_t r = 0, off = 0; r < world; r++)
        displs[r] = off, off += counts[r];
    if (e == MPI_SUCCESS)
      e = cf_mpi_gatherv(mine, (size_t)n_send, all, counts, displs, MPI_FLOAT, 0, comm);
    cf_watchdog_leave();
    CF_MPI(e);
    if (rank != 0 || st != CF_OK) continue;
    double tc = now_s();
    for (int r = 0; r < world && st == CF_OK; r++) { /* in sample order; a gap ends it */
      const int64_t kr = round * world + r, nr = counts[r] / per;
      if (kr >= nchunks) break;
      if (nr == 0) {
        st = cf_err(CF_EREMOTE, "sampling failed on rank %d", r);
        break;
      }
      const float *d = all + displs[r];
      if (sc->traj) {
        for (int64_t q = 0; q < nr; q++)
          memcpy(xs + q * D, d + (q * N + N - 1) * D, (size_t)D * sizeof(float));
        st = sink(sink_ctx, sc->first + kr * b, nr, xs, d);
      } else {
        st = sink(sink_ctx, sc->first + kr * b, nr, d, NULL);
      }
    }
    coord += now_s() - tc;
    double tn = now_s();
    if (!sc->quiet && st == CF_OK && (tn - last_print >= 2.0 || (round + 1) * world >= nchunks)) {
      int64_t done = sc->first + ((round + 1) * world * b < left ? (round + 1) * world * b : left);
      double rate = (double)(done - sc->first) / (tn - t0 > 1e-9 ? tn - t0 : 1e-9);
      printf("sample: %lld/%lld  %.0f samples/s  ETA %.0fs\n", (long long)done, (long long)sc->n,
             rate, rate > 0 ? (double)(sc->n - done) / rate : 0.0);
      fflush(stdout);
      last_print = tn;
    }
  }
  double wall = now_s() - t0;
  /* the outcome and the figures, the same on every rank */
  int bad = st != CF_OK, anybad = 0;
  double fr[2] = {-(wall > 0 ? busy / wall : 0), wall > 0 ? busy / wall : 0};
  int64_t sum[5] = {made, acc.nfe, acc.steps, acc.rejected, solves};
  cf_watchdog_enter("sample_agree", -1);
  int e = MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_LOR, comm);
  if (e == MPI_SUCCESS) e = MPI_Allreduce(MPI_IN_PLACE, fr, 2, MPI_DOUBLE, MPI_MAX, comm);
  if (e == MPI_SUCCESS) e = MPI_Allreduce(MPI_IN_PLACE, sum, 5, MPI_INT64_T, MPI_SUM, comm);
  cf_watchdog_leave();
  if (stats) {
    memset(stats, 0, sizeof *stats);
    stats->seconds = wall;
    stats->busy_min = -fr[0];
    stats->busy_max = fr[1];
    stats->coord_seconds = rank == 0 ? coord : 0;
    stats->batches = sum[0];
  }
  if (ode) {
    memset(ode, 0, sizeof *ode);
    ode->nfe = sum[1];
    ode->steps = sum[2];
    ode->rejected = sum[3];
    ode->solves = sum[4];
    snprintf(ode->type, sizeof ode->type, "%s", acc.type[0] ? acc.type : "rk/5dp");
  }
  cf_free((void **)&x);
  cf_free((void **)&cb);
  cf_free((void **)&mine);
  cf_free((void **)&all);
  cf_free((void **)&xs);
  cf_free((void **)&counts);
  cf_free((void **)&displs);
  if (st != CF_OK) return st;
  CF_MPI(e);
  if (anybad) return cf_err(CF_EREMOTE, "sampling failed on another rank");
  return CF_OK;
}
