/* rollout.c: KV-cached (or recompute-the-prefix) autoregressive sampling, with sequences split
 * statically across ranks and gathered at the end (see rollout.h). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/rollout.h"
#include "calmflow/watchdog.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct bufs {
  float *seq;   /* (B, J, D) points of the batch, time-major */
  float *stage; /* (B, J, D) contiguous input for extend */
  float *h;     /* (B, J*S, H) hidden states */
  float *hl;    /* (B, P*S, H) hidden states of the newest point */
  float *eps;   /* (B, P*S*H) or (B, P*D) */
  float *y;     /* (B, P, D) head output */
};

/* Roll out sequences [s0, s0 + b) of the global order into out (b*P, N, D). */
static cf_status rollout_batch(const struct cf_model *m, const struct cf_flow_cfg *fc,
                               const struct cf_dist *src, const struct cf_sample_cfg *sc,
                               struct cf_kvcache *c, struct bufs *w, int64_t s0, int64_t b,
                               float *out) {
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t B = c->B, P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H, J = N * P;
  const int vae = mc->head == CF_HEAD_VAE;
  const int64_t epsw = vae ? P * S * H : P * D; /* noise floats per sequence and step */
  /* t = 0: the source points; padding sequences (b < B) repeat sequence s0 */
  for (int64_t i = 0; i < B; i++)
    for (int64_t p = 0; p < P; p++) {
      uint64_t g = (uint64_t)((s0 + (i < b ? i : 0)) * P + p);
      struct cf_rng r = {sc->seed, CF_RNG_X0, UINT32_MAX, g};
      cf_dist_draw(src, &r, w->seq + i * J * D + p * D);
    }
  cf_kvcache_reset(c);
  for (int64_t t = 0; t + 1 < N; t++) {
    int64_t np, first;
    if (sc->kvcache) {
      np = P;
      first = t * P;
    } else {
      cf_kvcache_reset(c);
      np = (t + 1) * P;
      first = 0;
    }
    for (int64_t i = 0; i < B; i++)
      memcpy(w->stage + i * np * D, w->seq + (i * J + first) * D, (size_t)(np * D) * sizeof(float));
    CF_TRY(cf_model_extend(m, c, w->stage, np, w->h));
    for (int64_t i = 0; i < B; i++)
      memcpy(w->hl + i * P * S * H, w->h + (i * np * S + (np - P) * S) * H,
             (size_t)(P * S * H) * sizeof(float));
    for (int64_t i = 0; i < B; i++)
      for (int64_t p = 0; p < P; p++) {
        uint64_t g = (uint64_t)((s0 + (i < b ? i : 0)) * P + p);
        struct cf_rng r = {sc->seed, CF_RNG_SAMPLE, (uint32_t)t, g};
        int64_t per = vae ? S * H : D;
        cf_rng_normal(&r, 0, w->eps + i * epsw + p * per, (size_t)per);
      }
    CF_TRY(cf_head_sample(m, c, P, w->hl, w->eps, (float)sc->tau, w->y));
    for (int64_t i = 0; i < B; i++)
      for (int64_t p = 0; p < P; p++) {
        const float *cur = w->seq + (i * J + t * P + p) * D;
        float *nxt = w->seq + (i * J + (t + 1) * P + p) * D;
        cf_flow_advance(fc, cur, w->y + (i * P + p) * D, nxt);
      }
  }
  for (int64_t i = 0; i < b; i++)
    for (int64_t p = 0; p < P; p++)
      for (int64_t t = 0; t < N; t++)
        memcpy(out + ((i * P + p) * N + t) * D, w->seq + (i * J + t * P + p) * D,
               (size_t)D * sizeof(float));
  return CF_OK;
}

cf_status cf_rollout_run(MPI_Comm comm, const struct cf_model *m, const struct cf_flow_cfg *fc,
                         const struct cf_dist *src, const struct cf_sample_cfg *sc, float *x,
                         float *traj) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H, J = N * P, T = J * S;
  CF_CHECK(sc->n >= 1, CF_EINVAL, "option -sample_n: expected >= 1, got %lld", (long long)sc->n);
  CF_CHECK(sc->batch >= 1, CF_EINVAL, "option -sample_batch: expected >= 1, got %lld",
           (long long)sc->batch);
  const int64_t Ns = (sc->n + P - 1) / P; /* sequences in all */
  const int64_t lo = Ns * rank / world, hi = Ns * (rank + 1) / world;
  const int64_t B = sc->batch < (hi - lo) ? sc->batch : (hi - lo > 0 ? hi - lo : 1);

  struct cf_kvcache c;
  CF_TRY(cf_kvcache_init(&c, m, B, T, sc->kvcache ? P * S : T));
  struct cf_arena ar;
  struct bufs w;
  int64_t per_seq = N * P * D; /* floats of one sequence's output */
  float *mine = NULL, *all = NULL;
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1)
      CF_TRY(cf_arena_commit(&ar, 0, "rollout buffers"));
    else
      cf_arena_plan(&ar);
    w.seq = cf_arena_floats(&ar, (size_t)(B * J * D));
    w.stage = cf_arena_floats(&ar, (size_t)(B * J * D));
    w.h = cf_arena_floats(&ar, (size_t)(B * T * H));
    w.hl = cf_arena_floats(&ar, (size_t)(B * P * S * H));
    w.eps = cf_arena_floats(&ar, (size_t)(B * P * (S * H > D ? S * H : D)));
    w.y = cf_arena_floats(&ar, (size_t)(B * P * D));
    mine = cf_arena_floats(&ar, (size_t)((hi - lo) * per_seq + 1));
    all = cf_arena_floats(&ar, (size_t)(Ns * per_seq));
  }
  double t0 = now_s(), last = t0;
  cf_status st = CF_OK;
  for (int64_t s = lo; s < hi && st == CF_OK; s += B) {
    int64_t b = hi - s < B ? hi - s : B;
    st = cf_fault_point("sample_batch");
    if (st != CF_OK) break;
    st = rollout_batch(m, fc, src, sc, &c, &w, s, b, mine + (s - lo) * per_seq);
    double tn = now_s();
    if (rank == 0 && !sc->quiet && (tn - last > 2.0 || s + b >= hi)) {
      double done = (double)(s + b - lo) * (double)P;
      printf("sample: %.0f/%lld on rank 0  %.0f samples/s  ETA %.0fs\n", done,
             (long long)((hi - lo) * P), done / (tn - t0),
             (double)((hi - lo) * P - (int64_t)done) / (done / (tn - t0)));
      fflush(stdout);
      last = tn;
    }
  }
  int bad = st != CF_OK, anybad = 0;
  cf_watchdog_enter("sample_agree", -1);
  int e_agree = MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_LOR, comm);
  cf_watchdog_leave();
  CF_MPI(e_agree);
  if (anybad) {
    cf_kvcache_release(&c);
    cf_arena_release(&ar);
    return st != CF_OK ? st : cf_err(CF_EREMOTE, "sampling failed on another rank");
  }
  /* gather every rank's sequences (counts in floats; sizes here are far below 2^31) */
  int counts[4096], displs[4096];
  CF_CHECK(world <= 4096, CF_ETOPO, "sampling supports at most 4096 ranks for now, got %d", world);
  for (int r = 0; r < world; r++) {
    int64_t a = Ns * r / world, e = Ns * (r + 1) / world;
    counts[r] = (int)((e - a) * per_seq);
    displs[r] = (int)(a * per_seq);
  }
  cf_watchdog_enter("sample_gather", -1);
  int e_gather =
      MPI_Allgatherv(mine, counts[rank], MPI_FLOAT, all, counts, displs, MPI_FLOAT, comm);
  cf_watchdog_leave();
  CF_MPI(e_gather);
  for (int64_t i = 0; i < sc->n; i++) {
    const float *tr = all + i * N * D; /* sequence-major then trajectory: index i = s*P + p */
    memcpy(x + i * D, tr + (N - 1) * D, (size_t)D * sizeof(float));
    if (traj) memcpy(traj + i * N * D, tr, (size_t)(N * D) * sizeof(float));
  }
  cf_kvcache_release(&c);
  cf_arena_release(&ar);
  return CF_OK;
}
