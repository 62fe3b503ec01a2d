/* rollout.h: autoregressive VIE rollout from noise to data (calmflow-method.md section 6).
 *
 * Sample i is trajectory p = i % P of sequence i / P. Its x0 is drawn from the source with the
 * stream {seed, CF_RNG_X0, UINT32_MAX, i} and the head noise of rollout step t with
 * {seed, CF_RNG_SAMPLE, t, i}, so a sample depends only on (seed, i) and its sequence mates,
 * not on the batch size or the rank count. With the KV cache each step feeds only the P*S new
 * tokens; -sample_kvcache 0 recomputes the whole prefix each step (the authors' way) and gives
 * the same samples to round-off.
 */
#ifndef CALMFLOW_ROLLOUT_H
#define CALMFLOW_ROLLOUT_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/flow.h"
#include "calmflow/model.h"

struct cf_sample_cfg {
  int64_t n;     /* samples */
  int64_t batch; /* sequences per model call */
  double tau;    /* temperature: scales the predictive std (vae: latent std) */
  int kvcache;   /* 1: KV cache, 0: recompute the prefix */
  uint64_t seed;
  int quiet;
};

/* Collective on comm. Generate sc->n samples with the trained model m (its cfg must match fc).
 *   x    (n, D)     the points at t = 1, on every rank
 *   traj (n, N, D)  every time point of every trajectory, or NULL */
cf_status cf_rollout_run(MPI_Comm comm, const struct cf_model *m, const struct cf_flow_cfg *fc,
                         const struct cf_dist *src, const struct cf_sample_cfg *sc, float *x,
                         float *traj);

#endif
