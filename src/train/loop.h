/* loop.h: the training loop every method shares (train layer, internal). The method — the
 * CaLMFlow transformer with its pipeline schedule (train.c) or the CFM velocity MLP
 * (train_cfm.c) — fills a cf_learner: its parameters, gradients and tensor table, and the
 * forward + backward of one step. The loop does the rest the same way for every method:
 * gradient all-reduce in buckets (reducer.h), agreement on failure, loss all-reduce carrying
 * the stop signal, global-norm clipping, AdamW (optionally ZeRO-1 sharded), log.jsonl,
 * progress lines, checkpoints (ckpt.h) with resume, SIGUSR1 / SIGTERM handling and the
 * run's figures (cf_train_result). */
#ifndef CALMFLOW_TRAIN_LOOP_H
#define CALMFLOW_TRAIN_LOOP_H

#include "calmflow/reducer.h"
#include "calmflow/train.h"

struct cf_learner {
  const char *kind;       /* the checkpoint's model_kind: "calmflow", "cfm" */
  const char *conditions; /* the checkpoint's conditions (conds.h text form), or NULL */
  size_t n_params;
  float *params, *grads;                /* (n_params) this rank's */
  const struct cf_tensor_info *tensors; /* (n_tensors) the checkpoint's tensors */
  int n_tensors;
  MPI_Comm grad_comm; /* ranks holding the same parameters: gradients summed, ZeRO shards */
  MPI_Comm norm_comm; /* ranks whose grad_sqnorm add up to the whole gradient's */
  double tokens_per_step, flops_per_step;
  void *ctx;
  void (*zero_grad)(void *ctx);
  /* Forward and backward of step `step` on this rank: part[0..3] += this rank's loss, recon,
   * kl and nll contributions (summed over the ranks they give the global values). Every
   * gradient must have been handed to red (cf_reducer_begin, cf_reducer_ready) on return;
   * the loop finishes the reduction. Collective as the method needs. */
  cf_status (*step)(void *ctx, int64_t step, struct cf_reducer *red, double part[4]);
  /* This rank's share of the squared gradient norm; *finite = 1 when every element of its
   * grads (all n_params, counted in the norm or not) is finite: one pass over them a step. */
  double (*grad_sqnorm)(void *ctx, int *finite);
};

/* Collective on the grid. Train L for tc->steps steps into run_dir, from resume (a checkpoint
 * path) or from its current parameters (NULL), as cf_train_run describes. */
cf_status cf_train_loop(const struct cf_grid *g, const struct cf_train_cfg *tc,
                        struct cf_learner *L, const char *run_dir, const char *options_yaml,
                        const char *resume, struct cf_train_result *res);

#endif
