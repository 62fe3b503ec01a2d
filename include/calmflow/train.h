/* train.h: the training loop — data-parallel teacher-forced training of the VIE objective
 * with AdamW (or the authors' coupled-L2 Adam), warm-up + decay, gradient clipping,
 * log.jsonl and periodic HDF5 checkpoints.
 *
 * A step draws train_batch paths (train_batch / P sequences) over all ranks; rank r of R
 * builds sequences [r*Bs/R, (r+1)*Bs/R) in -train_microbatches chunks, gradients are summed
 * in buckets started while the last chunk's backward still runs (reducer.h), and every rank
 * applies the same update. Because every draw is keyed
 * by (seed, step, global path index), the loss sequence is the same at any rank count up to
 * floating-point summation order.
 */
#ifndef CALMFLOW_TRAIN_H
#define CALMFLOW_TRAIN_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/cfm.h"
#include "calmflow/ckpt.h"
#include "calmflow/conds.h"
#include "calmflow/error.h"
#include "calmflow/flow.h"
#include "calmflow/grid.h"
#include "calmflow/model.h"

enum cf_optimizer { CF_OPT_ADAMW, CF_OPT_ADAM_L2 };
enum cf_decay { CF_DECAY_COSINE, CF_DECAY_LINEAR, CF_DECAY_CONSTANT };
/* What a step whose loss or gradient is not finite (NaN / Inf) does (-train_nan_policy): either
 * way it changes no parameter and no optimizer moment. stop: end the run with CF_ENUM, no
 * checkpoint of that step; skip: go on with the next step, up to nan_max_skips in a row. */
enum cf_nan_policy { CF_NAN_STOP, CF_NAN_SKIP };

/* Text-prompt conditions of the training data (-data_prompt, model.h "text prompt"): the
 * target points sorted by their prompt into groups. All P trajectories of a sequence share one
 * prompt: global sequence g of step t draws a row u uniformly from all n target rows with the
 * stream {seed, CF_RNG_X1, t, g} at element 2^40 (cf_rng_uniform1), takes u's group, and its
 * paths draw their targets x1 (as always, path g*P + p) uniformly from that group's rows only.
 * So a batch holds each condition in proportion to its rows, independently of the layout. */
struct cf_prompt_data {
  int64_t L;        /* tokens per prompt, left-padded (the model's prompt_len) */
  int64_t n_groups; /* distinct prompts */
  int32_t *ids;     /* (n_groups, L) each group's token ids */
  int64_t *start;   /* (n_groups + 1): group k holds target rows [start[k], start[k+1]) */
  char **text;      /* (n_groups) the prompts as text */
};

struct cf_train_cfg {
  int64_t steps;        /* optimizer steps */
  int64_t batch;        /* paths per step over all ranks (multiple of P) */
  int64_t microbatches; /* chunks per rank and step (gradient accumulation) */
  int64_t warmup;       /* linear warm-up steps */
  int64_t log_every;    /* log.jsonl line every k steps */
  int64_t ckpt_every;   /* checkpoint every k steps (0: only at the end) */
  int64_t ckpt_keep;    /* checkpoints kept */
  double lr, lr_min;    /* peak and final learning rate */
  enum cf_decay decay;
  enum cf_optimizer optimizer;
  double weight_decay, beta1, beta2, adam_eps, clip;
  double kl_weight; /* beta of the vae head */
  uint64_t seed;
  size_t bucket; /* floats per gradient all-reduce bucket (reducer.h) */
  int zero;      /* 1: ZeRO-1, AdamW moments sharded over the data-parallel ranks */
  enum cf_nan_policy nan_policy;
  int64_t nan_max_skips;  /* skip: the most consecutive steps skipped; one more stops the run */
  int64_t selffeed_steps; /* own-rollout passes before each forward (selffeed.h); 0: none */
  double selffeed_prob;   /* share of the history that takes the own-rollout inputs */
  int64_t selffeed_cands; /* candidate endpoints per path for the targets */
  int quiet;              /* no progress lines */
  const char *init_hf;    /* a Hugging Face GPT-NeoX directory whose backbone replaces the
                             initial blocks (neox.h; not on resume); NULL or "": none */
  const struct cf_prompt_data *prompt; /* CaLMFlow with text prompts (the target distribution
                                          is then the points, sorted by group); NULL: none */
};

/* ---- optimizer ---- */
struct cf_optim {
  size_t n;
  float *m, *v; /* (n) first and second moments */
  int64_t t;    /* updates applied */
};
/* Local. Moments for n parameters, zeroed. */
cf_status cf_optim_init(struct cf_optim *o, size_t n);
void cf_optim_release(struct cf_optim *o);
/* Local. Learning rate at step (0-based): linear warm-up to lr, then decay to lr_min. */
double cf_train_lr(const struct cf_train_cfg *c, int64_t step);
/* Local. Scale g (n) so its 2-norm is at most maxnorm (maxnorm <= 0: no clipping); returns the
 * norm before clipping. */
double cf_clip_grad(float *g, size_t n, double maxnorm);
/* Local. The scaling step of cf_clip_grad for a norm computed elsewhere (model parallel: the
 * norm of the whole model's gradient). */
void cf_clip_apply(float *g, size_t n, double norm, double maxnorm);
/* Local. The factor cf_clip_apply multiplies the gradient by: 1 when norm <= maxnorm or
 * maxnorm <= 0. */
float cf_clip_scale(double norm, double maxnorm);
/* Local. One AdamW / Adam-L2 update of p (n) with gradient g at learning rate lr. */
void cf_optim_step(struct cf_optim *o, const struct cf_train_cfg *c, float *p, const float *g,
                   double lr);
/* Local. cf_optim_step with the gradient g * gscale (gscale = cf_clip_scale: clipping fused
 * into the update, one pass over memory less; bit-identical to clipping first). */
void cf_optim_step_scaled(struct cf_optim *o, const struct cf_train_cfg *c, float *p,
                          const float *g, double lr, float gscale);

/* Local. Parse -train_optimizer / -train_decay words. */
cf_status cf_optimizer_parse(const char *s, enum cf_optimizer *o);
cf_status cf_decay_parse(const char *s, enum cf_decay *d);
const char *cf_optimizer_name(enum cf_optimizer o);
const char *cf_decay_name(enum cf_decay d);
cf_status cf_nan_policy_parse(const char *s, enum cf_nan_policy *p);
const char *cf_nan_policy_name(enum cf_nan_policy p);

/* The checkpoint's tensors for a model: "params/<name>" for every model tensor, then
 * "adam_m/<name>" and "adam_v/<name>" when moments are given, pointing into m->params and the
 * moment arrays (n_params floats each, laid out like the parameters). */
#define CF_CKPT_NAME_MAX 256
struct cf_ckpt_table {
  int nt;
  struct cf_ckpt_tensor *t; /* (nt) */
  char *names;              /* (nt, CF_CKPT_NAME_MAX) */
};
/* Local. adam_m and adam_v may both be NULL (parameters only). Every tensor of the whole model
 * is listed (checkpoints hold them all); a tensor this rank does not hold has data NULL. grid:
 * the layout m was made for (blocks and replica sets from it), or NULL for a whole model on
 * every rank of the checkpoint's communicator. */
cf_status cf_ckpt_table_init(struct cf_ckpt_table *ct, const struct cf_model *m,
                             const struct cf_grid *grid, const float *adam_m, const float *adam_v);
/* Local. The same for any tensor list laid out in params (the CFM baseline's, cfm.h). */
cf_status cf_ckpt_table_init_tensors(struct cf_ckpt_table *ct, const struct cf_tensor_info *tensors,
                                     int n_tensors, const float *params, const struct cf_grid *grid,
                                     const float *adam_m, const float *adam_v);
void cf_ckpt_table_release(struct cf_ckpt_table *ct);

/* Diagnostics of a trained CaLMFlow model on one batch of fresh paths (no dropout), beside the
 * sample metrics: whether the model uses its history (heads-experiment.md). */
struct cf_train_diag {
  int64_t sequences;          /* evaluation sequences; 0: not computed (model split over ranks) */
  int64_t n_steps;            /* N - 1 */
  double *step_loss;          /* (n_steps) mean loss of a point at time t + 1 given times <= t */
  int64_t layers;             /* transformer layers */
  struct cf_attn_stats *attn; /* (layers) */
};
void cf_train_diag_release(struct cf_train_diag *d); /* idempotent */

/* What a run leaves behind. */
#define CF_NAN_LISTED 64
struct cf_train_result {
  int64_t stopped_at;         /* CF_STOPPED: the step whose checkpoint was written */
  int stop_signal;            /* the signal that stopped it (SIGUSR1 or SIGTERM) */
  double peak_rss;            /* largest peak resident set over the ranks, bytes */
  double heap_peak;           /* largest cf_alloc peak over the ranks (mem.h), bytes */
  double state_bytes;         /* this rank's parameters, gradients and AdamW moments, bytes */
  double grad_bytes_per_step; /* gradient bytes this rank all-reduced per step */
  double final_loss;          /* mean of the last min(50, steps) logged losses */
  double seconds;
  double tokens_per_s;
  /* steady state: the steps after the first, without checkpoints (benchmarks) */
  double steady_tokens_per_s;
  double comm_bytes[4];   /* per step, by commstat.h kind (dp, tp, pp, cp): max over ranks */
  double comm_seconds[4]; /* per step, the same */
  double state_bytes_max; /* state_bytes, max over ranks */
  double flops_per_step;  /* model FLOPs of one step (forward + backward), cf_model_flops */
  double ckpt_seconds;    /* wall time spent writing checkpoints (rank 0's), all of them */
  int64_t ckpts;          /* checkpoints written */
  int64_t nan_skips;      /* steps skipped for a non-finite loss or gradient (this invocation) */
  int64_t nan_skipped[CF_NAN_LISTED]; /* the first CF_NAN_LISTED of them (1-based step numbers) */
  char last_ckpt[4096];
  struct cf_train_diag diag; /* CaLMFlow runs that finish; release with cf_train_diag_release */
};

/* Local. Check tc against the model and the rank count (batch fills whole sequences, every
 * rank gets at least one sequence, micro-batches fit); errors name the option. */
cf_status cf_train_cfg_check(const struct cf_train_cfg *tc, const struct cf_model_cfg *mc,
                             int world);

/* Collective on the grid. Train into run_dir (which must exist with a ckpt/ subfolder): appends
 * run_dir/log.jsonl, writes run_dir/ckpt/step-NNNNNNN.h5 and ckpt/LATEST. options_yaml is the
 * resolved configuration stored in every checkpoint. resume (NULL: from scratch) names a
 * checkpoint to continue from: its parameters, AdamW moments and step; because every draw is
 * keyed by the step, the continued run is bit-identical to an uninterrupted one at the same
 * layout. SIGUSR1 or SIGTERM on any rank stops the run at the next step boundary (the ranks
 * agree through the loss all-reduce): a checkpoint is written and CF_STOPPED returned. */
cf_status cf_train_run(const struct cf_grid *g, const struct cf_train_cfg *tc,
                       const struct cf_model_cfg *mc, const struct cf_flow_cfg *fc,
                       const struct cf_dist *src, const struct cf_dist *tgt, const char *run_dir,
                       const char *options_yaml, const char *resume, struct cf_train_result *res);

/* ---- the CFM baseline (-model cfm) ---- */
struct cf_train_cfm_opts {
  double sigma; /* path noise: x_t = (1 - t) x0 + t x1 + sigma eps (-cfm_sigma) */
  int ot;       /* 1: OT-CFM, exact OT coupling over the global batch; 0: I-CFM */
  /* -cfm_cond: the condition of each row of the target point set (conds->n == its rows,
   * conds->C == the model's cond_dim), or NULL for the unconditional model. A training point
   * takes the condition of the data row its x1 is drawn from; OT couples within each condition
   * group; the checkpoints store conds->text (attribute conditions). */
  const struct cf_conds *conds;
};

/* Collective on the grid (data parallel only: tp = pp = cp = 1, else CF_ETOPO). Train the CFM
 * velocity field cc for tc->steps steps of tc->batch points into run_dir, with the same loop,
 * log.jsonl, checkpoints (model_kind "cfm", tensors cfm.*), resume and stop signals as
 * cf_train_run; log.jsonl's loss is the CFM squared error (recon the same, kl and nll 0). */
cf_status cf_train_cfm_run(const struct cf_grid *g, const struct cf_train_cfg *tc,
                           const struct cf_cfm_cfg *cc, const struct cf_train_cfm_opts *opt,
                           const struct cf_dist *src, const struct cf_dist *tgt,
                           const char *run_dir, const char *options_yaml, const char *resume,
                           struct cf_train_result *res);

#endif
