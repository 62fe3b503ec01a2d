/* rollout.h: autoregressive VIE rollout from noise to data (calmflow-method.md section 6),
 * scheduled by a coordinator rank.
 *
 * Sample i is trajectory p = i % P of sequence i / P. Its x0 is drawn from the source with the
 * stream {seed, CF_RNG_X0, UINT32_MAX, i} and the head noise of rollout step t with
 * {seed, CF_RNG_SAMPLE, t, i}; the model's sampling arithmetic gives each row the same bits
 * whatever else shares the call (kvcache.c), so a sample depends only on (seed, i), not on the
 * batch size, the rank count or which rank made it. With the KV cache each step feeds only the
 * P*S new tokens; -sample_kvcache 0 recomputes the whole prefix each step (the authors' way)
 * and gives the same samples to round-off.
 *
 * Scheduling: the sequences are cut into batches of sc->batch; rank 0 (the coordinator) owns
 * the queue. The workers are model replicas: with a process grid, the ranks of one
 * data-parallel index hold one whole model between them (tensor, pipeline and context
 * parallel) and their leader (stage 0, tensor and context rank 0) talks to the coordinator;
 * without one, every rank is a replica. Every other replica holds up to two assigned batches,
 * computes one while the next is already known (only while more batches are left than there
 * are replicas, so the last ones go to whoever is free), and its leader sends each result to
 * rank 0, which answers with the next batch. Rank 0's replica also computes batches and rank 0
 * serves the queue between the rollout steps of its own batch. Results are reordered on rank 0 and
 * handed to the sink strictly in sample order, as soon as a contiguous run is complete; the
 * batches handed out never run more than a window of 2 x replicas + 2 batches ahead of the
 * first unfinished one, which bounds rank 0's memory.
 *
 * Inside a replica a batch is cut into pp micro-batches, each with its own exactly sized KV
 * cache; every stage takes them in the order (step, micro-batch) and the last stage sends
 * each micro-batch's new points back to the first, so all pp micro-batches are in flight and
 * every stage has one to work on. Pipeline stages do not change any arithmetic: the samples
 * are bit-identical at any number of replicas, stages and -sample_batch; tensor and context
 * parallel sum partial results in another order, so those layouts agree to round-off.
 */
#ifndef CALMFLOW_ROLLOUT_H
#define CALMFLOW_ROLLOUT_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/cfm.h"
#include "calmflow/error.h"
#include "calmflow/flow.h"
#include "calmflow/grid.h"
#include "calmflow/model.h"

struct cf_sample_cfg {
  int64_t n;     /* samples in all */
  int64_t first; /* samples already made (resume; a multiple of P, or n) */
  int64_t batch; /* sequences per model call */
  double tau;    /* temperature: scales the predictive std (vae: latent std) */
  int kvcache;   /* 1: KV cache, 0: recompute the prefix */
  int traj;      /* the sink also gets every time point */
  uint64_t seed;
  int quiet;
  const int32_t *prompt; /* a prompt model (model.h "text prompt"): (prompt_len) left-padded ids
                            every sequence starts with, prefilled into its KV cache (recompute:
                            on every step); NULL for a model without prompt */
};

/* Rank 0 only: samples [i0, i0 + count) are done, in order (each call continues the last).
 *   x (count, D) the points at t = 1;  traj (count, N, D) every time point, or NULL */
typedef cf_status (*cf_rollout_sink)(void *ctx, int64_t i0, int64_t count, const float *x,
                                     const float *traj);

struct cf_rollout_stats {
  double seconds;       /* wall time of the rollout (rank 0) */
  double busy_min;      /* fraction of the wall time a rank spent computing: least busy rank */
  double busy_max;      /* most busy rank */
  double coord_seconds; /* rank 0: time serving the queue, reordering and in the sink */
  int64_t batches;      /* batches made in all */
};

/* Collective on comm. Make samples [sc->first, sc->n) with the trained model m and pass them
 * to sink on rank 0. g NULL: m is the whole model on every rank of comm. Otherwise g is the
 * process grid over comm and m this rank's part on it (cf_model_init_part): the ranks of a
 * data-parallel index form one replica. Every rank returns the same status: a failure on any
 * rank (its own error, CF_EREMOTE elsewhere) stops the queue; what reached the sink before
 * stays valid. stats may be NULL. */
cf_status cf_rollout_run(MPI_Comm comm, const struct cf_grid *g, const struct cf_model *m,
                         const struct cf_flow_cfg *fc, const struct cf_dist *src,
                         const struct cf_sample_cfg *sc, cf_rollout_sink sink, void *sink_ctx,
                         struct cf_rollout_stats *stats);

/* What the CFM baseline's integrations cost, summed over every rank. */
struct cf_rollout_ode {
  int64_t nfe;      /* velocity-field evaluations, each over one chunk's points */
  int64_t steps;    /* accepted steps */
  int64_t rejected; /* rejected steps */
  int64_t solves;   /* TS solves (one per chunk; N - 1 per chunk with traj) */
  char type[32];    /* the TS used, e.g. "rk/5dp" */
};

/* Collective on comm. The CFM baseline's samples [sc->first, sc->n) for sink on rank 0. Sample
 * i starts at x0 drawn with {seed, CF_RNG_X0, UINT32_MAX, i}, as CaLMFlow's, and is integrated
 * along m's velocity field from t = o->t0 to o->t1 with PETSc TS (cf_cfm_sample; o NULL: the
 * defaults) together with the other samples of its chunk of sc->batch. Chunk k goes to rank
 * k % size; rank 0 gathers each round's chunks and hands them to the sink in sample order. The
 * adaptive step is shared within a chunk, so a sample depends on -sample_batch but not on the
 * rank count. traj: the N time points t0 + (t1 - t0) i / (N - 1) are stops of the integration
 * (one solve per interval) and the sink gets all of them. A conditional model (cond_dim C > 0)
 * flows every sample under the condition cond (C), e.g. cf_conds_onehot of -sample_cond; cond
 * is NULL for an unconditional one. Every rank returns the same status; what reached the sink
 * stays valid. stats and ode may be NULL. */
cf_status cf_rollout_cfm_run(MPI_Comm comm, struct cf_cfm *m, const struct cf_dist *src,
                             const float *cond, const struct cf_sample_cfg *sc, int64_t N,
                             const struct cf_ode_opts *o, cf_rollout_sink sink, void *sink_ctx,
                             struct cf_rollout_stats *stats, struct cf_rollout_ode *ode);

#endif
