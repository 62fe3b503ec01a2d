/* cfm.h: the conditional flow matching (CFM) baseline — an MLP velocity field v_theta(x, t)
 * with hand-written forward and backward, the I-CFM and OT-CFM training pairs (exact OT
 * coupling over the global batch of all data-parallel ranks), and sampling by integrating
 * dx/dt = v_theta(x, t) from t = 0 to 1 with PETSc TS (calmflow-method.md section 7.4).
 *
 * Network (D data dims, K time frequencies, C condition features, width W, L >= 1 hidden
 * layers):
 *   in   = [x (D) | t | sin(pi k t), cos(pi k t) for k = 1..K | c (C)]   (D + 1 + 2K + C)
 *   h_1  = relu(ln(fc1(in)))        fc1 (W, D + 1 + 2K + C)
 *   h_l  = relu(ln(fc_l(h_{l-1})))  fc_l (W, W), l = 2..L
 *   v    = out(h_L)                 out (D, W)
 * ln is a LayerNorm without affine (eps 1e-5): the model's LN+ReLU unit (src/model/layers.h),
 * with no dropout. Linears are y = x W^T + b, weights (out, in) row-major, initialized
 * PyTorch-style U(-1/sqrt(in), 1/sqrt(in)) for weight and bias from CF_RNG_INIT with
 * index = tensor id and element = the value's index in the tensor, as model.c does.
 * The conditional CFM (C > 0, -cfm_cond): c is the condition of the point, the one-hot
 * vectors of its data row's categories (conds.h); C = 0 is the unconditional network.
 * Tensors, in this order in one contiguous parameter buffer (gradients laid out alike):
 *   cfm.fc1.weight (W, D+1+2K+C) cfm.fc1.bias (W) ... cfm.fcL.weight (W, W) cfm.fcL.bias (W)
 *   cfm.out.weight (D, W) cfm.out.bias (D)
 *
 * Training pairs for global sample g of training step `step` (flow.h's keys, so CaLMFlow and
 * CFM see the same x0 and x1 for the same g):
 *   x0 = draw of src with {seed, CF_RNG_X0, step, g}
 *   x1 = draw of tgt with {seed, CF_RNG_X1, step, g}
 *   t  = cf_rng_uniform1({seed, CF_RNG_PATH, step, g}, 0), eps_d = cf_rng_normal1(same, 4 + d)
 *   OT-CFM only: x1 rows are re-paired by the exact OT assignment over the global batch; a
 *   conditional model solves one assignment per condition group of the global batch, so a
 *   point keeps its condition (cf_cfm_ot_couple_groups)
 *   x_t = (1 - t) x0 + t x1 + sigma eps,  u = x1 - x0
 *   loss = (1/n) sum_i ||v_theta(x_t,i, t_i) - u_i||^2  (squared norm summed over D, mean
 *          over the n points of the global batch)
 *
 * Sampling: each rank integrates its own points (a sequential Vec on PETSC_COMM_SELF holding
 * all of them) with TSRK 5dp (Dormand-Prince 5(4)), adaptive, atol = rtol = 1e-4 by default;
 * options with the prefix (default "cfm_") select anything else: -cfm_ts_type, -cfm_ts_rk_type,
 * -cfm_ts_adapt_type, -cfm_ts_atol, -cfm_ts_rtol, -cfm_ts_dt, -cfm_ts_monitor, ...
 * The adaptive step is shared by all points of one call, so a point's result depends on the
 * other points integrated with it (within the tolerance), not only on its own start.
 */
#ifndef CALMFLOW_CFM_H
#define CALMFLOW_CFM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/flow.h"
#include "calmflow/metrics.h"
#include "calmflow/model.h"

struct cf_cfm_cfg {
  int64_t D;          /* data dimension */
  int64_t width;      /* hidden width W */
  int64_t layers;     /* hidden layers L (>= 1); L + 1 linears */
  int64_t time_freqs; /* K: time features t, sin(pi k t), cos(pi k t), k = 1..K (8) */
  int64_t cond_dim;   /* C: condition features at the end of the input (0: unconditional) */
};

struct cf_cfm {
  struct cf_cfm_cfg cfg;
  int64_t max_batch; /* points per forward / backward call */
  size_t n_params;   /* floats */
  float *params;     /* (n_params) */
  float *grads;      /* (n_params) */
  int n_tensors;
  struct cf_tensor_info *tensors; /* every tensor whole (held, CF_SPLIT_NONE) */
  void *impl;                     /* activations and workspaces (cfm.c) */
};

/* Local. Check cfg (CF_EINVAL naming what is wrong: D, width, layers >= 1, time_freqs in
 * [0, 64], cond_dim in [0, 2^20]). */
cf_status cf_cfm_cfg_check(const struct cf_cfm_cfg *cfg);
/* Local. Input features of the network: D + 1 + 2K + C. */
int64_t cf_cfm_in_features(const struct cf_cfm_cfg *cfg);
/* Local. Parameters (floats) of the network, without allocating. */
size_t cf_cfm_param_count(const struct cf_cfm_cfg *cfg);
/* Local. Floating-point operations of one training forward + backward of one point (matrix
 * products 2 flops per multiply-add, backward twice the forward), as cf_model_flops. */
double cf_cfm_flops(const struct cf_cfm_cfg *cfg);

/* Local. Allocate parameters, gradients and activations for up to max_batch points per call.
 * Weights are zero until cf_cfm_init_weights. */
cf_status cf_cfm_init(struct cf_cfm *m, const struct cf_cfm_cfg *cfg, int64_t max_batch);
void cf_cfm_release(struct cf_cfm *m); /* idempotent; *m all-zero after */
/* Local. Deterministic initialization from seed (see above); the same at any layout. */
void cf_cfm_init_weights(struct cf_cfm *m, uint64_t seed);
void cf_cfm_zero_grad(struct cf_cfm *m);
/* Local. Sum of squares of m->grads (every rank holds the whole network); *finite (may be
 * NULL) = 1 when every element is finite, from the same pass. */
double cf_cfm_grad_sqnorm(const struct cf_cfm *m, int *finite);
/* Local. Look up a tensor by name (NULL if absent). */
const struct cf_tensor_info *cf_cfm_find(const struct cf_cfm *m, const char *name);

/* Local. v (B, D) = v_theta(x, t) for x (B, D), t (B), B <= max_batch; keeps the activations
 * for cf_cfm_backward (v may be NULL: kept internally only). */
cf_status cf_cfm_forward(struct cf_cfm *m, int64_t B, const float *x, const float *t, float *v);
/* Local. The same with the conditions c (B, C) of the points (NULL only when C == 0);
 * cf_cfm_forward is this with c NULL. */
cf_status cf_cfm_forward_c(struct cf_cfm *m, int64_t B, const float *x, const float *t,
                           const float *c, float *v);
/* Local. Backward of the last cf_cfm_forward: adds d loss / d params for dv = d loss / d v
 * (B, D) into m->grads. */
cf_status cf_cfm_backward(struct cf_cfm *m, const float *dv);
/* Local. Forward, loss and backward on a built batch: xt, u (B, D), t (B). *loss = this
 * call's sum_i ||v_i - u_i||^2 / n_total (summed over ranks with n_total the global batch it is
 * the global loss); gradients of that are added to m->grads. A loss that is not finite is
 * returned as it is (the training loop's -train_nan_policy decides, on every rank alike). */
cf_status cf_cfm_loss_grad(struct cf_cfm *m, int64_t B, const float *xt, const float *t,
                           const float *u, double n_total, double *loss);
/* Local. The same with the conditions c (B, C) (NULL only when C == 0). */
cf_status cf_cfm_loss_grad_c(struct cf_cfm *m, int64_t B, const float *xt, const float *t,
                             const float *c, const float *u, double n_total, double *loss);

/* ---- training pairs ---- */

/* Local. The draws of global samples [g0, g0 + B) of training step `step` (keys above):
 * x0, x1, eps (B, D), t (B); eps may be NULL (sigma = 0). src and tgt must have dimension D. */
cf_status cf_cfm_draw(const struct cf_dist *src, const struct cf_dist *tgt, int64_t D,
                      uint64_t seed, uint32_t step, uint64_t g0, int64_t B, float *x0, float *x1,
                      float *t, float *eps);
/* Local. cf_cfm_draw that also returns row (B): the row of tgt each x1 is (cf_dist_row; tgt
 * must be a point set, CF_EINVAL otherwise), for the row's condition. */
cf_status cf_cfm_draw_rows(const struct cf_dist *src, const struct cf_dist *tgt, int64_t D,
                           uint64_t seed, uint32_t step, uint64_t g0, int64_t B, float *x0,
                           float *x1, float *t, float *eps, int64_t *row);
/* Local. The conditional path: xt = (1 - t) x0 + t x1 + sigma eps, u = x1 - x0, all (B, D);
 * eps may be NULL when sigma == 0. */
void cf_cfm_path(int64_t B, int64_t D, const float *x0, const float *x1, const float *t,
                 const float *eps, double sigma, float *xt, float *u);

/* Exact OT coupling over the global batch: the ranks of comm hold consecutive blocks of it
 * (rank r's rows come after rank r-1's; blocks may differ in size and be empty). */
struct cf_cfm_ot {
  MPI_Comm comm; /* borrowed: must outlive the struct */
  int size, rank;
  int64_t max_n, D;       /* global batch capacity, dimension */
  int64_t *counts, *offs; /* (size) elements per rank, their offsets (cf_mpi_allgatherv) */
  float *x0, *x1;         /* (max_n, D) the gathered global batch */
  double *cost;           /* (max_n, max_n) squared Euclidean costs */
  int64_t *col;           /* (max_n) x1 row assigned to each x0 row */
  int64_t *blocks;        /* (size) points per rank in the last call */
  int64_t *grp, *idx;     /* (max_n) gathered condition groups, rows sorted by group */
  int64_t *sub;           /* (max_n) one group's assignment */
  struct cf_lsa lsa;      /* the assignment solver's workspace (max_n) */
};
/* Local. Workspace for global batches of up to max_n points in dimension D on comm
 * (max_n^2 doubles for the cost matrix). */
cf_status cf_cfm_ot_init(struct cf_cfm_ot *ot, MPI_Comm comm, int64_t max_n, int64_t D);
void cf_cfm_ot_release(struct cf_cfm_ot *ot); /* idempotent; *ot all-zero after */
/* Collective on ot->comm. This rank's B rows x0, x1 (B, D): gathers every rank's rows
 * (MPI_Allgatherv), builds the global cost ||x0_i - x1_j||^2 (in double, in a fixed order)
 * and solves the assignment with cf_lsa_solve_dense on every rank, then checks that all ranks found
 * the same one (CF_EREMOTE if not). On return x1 holds, for each local x0 row, its assigned
 * x1 row of the global batch. Optional outputs: pair (B) the global index of that x1 row;
 * cost_ot / cost_id the global batch's total cost of the assignment / of the identity pairing
 * (sum over all rows, the same on every rank). Does not allocate (its workspace is ot's).
 * Every rank fails alike when the global batch exceeds max_n or a value is not finite. */
cf_status cf_cfm_ot_couple(struct cf_cfm_ot *ot, int64_t B, const float *x0, float *x1,
                           int64_t *pair, double *cost_ot, double *cost_id);
/* Collective on ot->comm. cf_cfm_ot_couple within condition groups: group (B) holds each local
 * row's group (any int64; rows of equal group have equal conditions; NULL: one group, exactly
 * cf_cfm_ot_couple). The global batch is split by group; each group's rows (in global order)
 * get their own exact assignment of their x1 rows to their x0 rows, groups in increasing order,
 * so a row's x1 always comes from a row of its own group. cost_ot sums the groups' costs. */
cf_status cf_cfm_ot_couple_groups(struct cf_cfm_ot *ot, int64_t B, const float *x0, float *x1,
                                  const int64_t *group, int64_t *pair, double *cost_ot,
                                  double *cost_id);

/* ---- integration with PETSc TS ---- */

/* Right-hand side f (n) = F(t, x (n)) of an ODE dx/dt = F(t, x). */
typedef cf_status (*cf_ode_rhs_fn)(void *ctx, double t, int64_t n, const double *x, double *f);

struct cf_ode_opts {
  const char *prefix; /* PETSc options prefix ("cfm_") */
  double t0, t1;      /* integrate from t0 to t1 (0, 1) */
  double atol, rtol;  /* adaptive tolerances (1e-4, 1e-4) */
  double dt0;         /* first step (1e-2) */
  int64_t max_steps;  /* step limit (100000) */
};
struct cf_ode_stats {
  int64_t nfe;      /* right-hand side evaluations (each evaluates all points of the call) */
  int64_t steps;    /* accepted steps */
  int64_t rejected; /* rejected steps */
  double t_final;   /* time reached (t1 on success) */
  char type[32];    /* the TS type used, and the RK scheme for rk ("rk/5dp") */
};

/* Local. The defaults above. */
void cf_ode_opts_default(struct cf_ode_opts *o);
/* Local (a TS on PETSC_COMM_SELF; PETSc must be initialized). Integrate x (n) in place from
 * t0 to t1: TSRK 5dp with adaptive steps, then TSSetFromOptions with o->prefix, so options
 * can change any of it. CF_EPETSC naming the TS type and time reached when the solve fails
 * or diverges; a failure of rhs is returned as its own status. */
cf_status cf_ode_solve(cf_ode_rhs_fn rhs, void *ctx, int64_t n, double *x,
                       const struct cf_ode_opts *o, struct cf_ode_stats *st);
/* Local, as cf_ode_solve. Sample: integrate the n points x (n, D) in place along
 * dx/dt = v_theta(x, t) from o->t0 to o->t1 (the network evaluated max_batch points at a time;
 * it overwrites the activations of the last cf_cfm_forward). o NULL: the defaults.
 * CF_ENUM when a result is not finite. */
cf_status cf_cfm_sample(struct cf_cfm *m, int64_t n, float *x, const struct cf_ode_opts *o,
                        struct cf_ode_stats *st);
/* Local. cf_cfm_sample of a conditional model: point i flows under the condition c (n, C) row
 * i (NULL only when C == 0). */
cf_status cf_cfm_sample_c(struct cf_cfm *m, int64_t n, float *x, const float *c,
                          const struct cf_ode_opts *o, struct cf_ode_stats *st);

#endif
