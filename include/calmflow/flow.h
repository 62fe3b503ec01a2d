/* flow.h: what CaLMFlow learns from — source and target distributions, conditional paths
 * from x0 to x1 on N time points, and the layout of P trajectories x S spatial tokens in one
 * causal sequence (calmflow-method.md sections 1.2, 2.3).
 *
 * Every draw is keyed by (seed, domain, step, global path index) through rng.h, so a batch is
 * the same whatever the number of ranks or micro-batches that build it:
 *   path g of a step is trajectory p = g % P of global sequence g / P;
 *   x0 of path g: {seed, CF_RNG_X0, step, g}; x1: {seed, CF_RNG_X1, step, g};
 *   path noise: {seed, CF_RNG_PATH, step, g}, element i*D + d for time point i.
 */
#ifndef CALMFLOW_FLOW_H
#define CALMFLOW_FLOW_H

#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/rng.h"

/* ---- distributions ---- */
enum cf_dist_kind {
  CF_DIST_NORMAL,       /* N(0, I_D) */
  CF_DIST_8GAUSSIANS,   /* 2-D: 8 components on a circle of radius 5, variance 0.1 */
  CF_DIST_MOONS,        /* 2-D: two moons, noise 0.2, scaled x3 - 1 */
  CF_DIST_CHECKERBOARD, /* 2-D: 4x4 checkerboard on [-4, 4]^2 */
  CF_DIST_GAUSSIAN,     /* any D: N(0, I_D) (alias of normal, for symmetry with the paper) */
  CF_DIST_4BLOBS,       /* any D: unit Gaussians at (-15|-5|5|15, 0, ..., 0) */
  CF_DIST_2GAUSSIANS,   /* any D: unit Gaussians at (+-5, 0, ..., 0), the source of 2to4gaussians */
  CF_DIST_2TO4,         /* any D >= 2: unit Gaussians at (+-5, +-5, 0, ..., 0) */
  CF_DIST_CHECKER_ND,   /* any D >= 2: uniform on the cubes of side 2 of [-4, 4]^D whose cell
                           indices floor((x_d + 4) / 2) have an even sum (the authors' N-D
                           checkerboard notebook) */
  CF_DIST_POINTS        /* an empirical set (a data file): uniform choice of a row */
};

struct cf_dist {
  enum cf_dist_kind kind;
  int64_t dim;
  const float *x; /* (n, dim) for CF_DIST_POINTS, borrowed */
  int64_t n;
};

/* Local. Set d to the named synthetic distribution in dimension dim. Names: normal, gaussian,
 * 8gaussians, moons, checkerboard, checkerboardnd, 4blobs, 2gaussians, 2to4gaussians. CF_EINVAL
 * naming `option` for an unknown name or a dimension the distribution does not support. */
cf_status cf_dist_by_name(struct cf_dist *d, const char *name, int64_t dim, const char *option);
/* Local. An empirical distribution over the rows of x (n, dim), borrowed. */
void cf_dist_points(struct cf_dist *d, const float *x, int64_t n, int64_t dim);
/* Local. One draw from d with the random stream r (elements 0, 1, 2, ...): out (dim). */
void cf_dist_draw(const struct cf_dist *d, const struct cf_rng *r, float *out);
/* Local. The row of a point set (CF_DIST_POINTS) that cf_dist_draw with r draws; -1 for any
 * other distribution. */
int64_t cf_dist_row(const struct cf_dist *d, const struct cf_rng *r);
/* Local. The names accepted by cf_dist_by_name, for help texts. */
const char *cf_dist_names(void);

/* ---- paths and sequences ---- */
enum cf_path {
  CF_PATH_STRAIGHT, /* z_i = (1-t_i) x0 + t_i x1 (the paper's) */
  CF_PATH_BRIDGE,   /* + sigma * B(t_i), B a Brownian bridge on the grid (default) */
  CF_PATH_NOISY,    /* + independent N(0, s(t)^2), s linear from sigma (t=0) to sigma_min (t=1) */
  CF_PATH_VE        /* + independent N(0, s(t)^2), s = sigma_min (sigma/sigma_min)^(1-t) */
};
enum cf_predict {
  CF_PREDICT_NEXT,    /* the head predicts the absolute next point z_{i+1} (the paper's) */
  CF_PREDICT_VELOCITY /* the head predicts (z_{i+1} - z_i) * (N - 1) */
};

struct cf_flow_cfg {
  int64_t D, N, P, S;
  enum cf_path path;
  double sigma;     /* bridge / noisy / ve scale */
  double sigma_min; /* noisy: value at t = 1; ve: the floor (1e-4) */
  enum cf_predict predict;
  double context_noise; /* training only: N(0, s^2) added to the inputs of points t >= 1 */
};

/* Local. Validate (messages name -flow_... options). */
cf_status cf_flow_cfg_check(const struct cf_flow_cfg *f);
/* Local. Parse option values; CF_EINVAL naming the option on an unknown word. */
cf_status cf_path_parse(const char *s, enum cf_path *p);
cf_status cf_predict_parse(const char *s, enum cf_predict *p);
const char *cf_path_name(enum cf_path p);
const char *cf_predict_name(enum cf_predict p);

/* Local. Fill one conditional path: z (N, D) from x0, x1 (D) and the noise stream r. */
void cf_flow_path(const struct cf_flow_cfg *f, const float *x0, const float *x1,
                  const struct cf_rng *r, float *z);

/* Local. Build B sequences [seq0, seq0 + B) of training step `step`:
 *   z (B, J, D) the teacher-forced inputs, point j = t*P + p
 *   y (B, J, D) targets: row j holds what the output at j must predict (row j + P's point,
 *               or its velocity); rows j >= (N-1)*P are zero
 * With context_noise s > 0 the inputs of points t >= 1 carry N(0, s^2) noise (stream
 * CF_RNG_CONTEXT) and velocity targets lead from the noisy point to the clean next one, so the
 * model learns to pull a drifted history back (against the exposure bias of the rollout).
 *   work ((N + 2) * D floats) scratch */
void cf_flow_batch(const struct cf_flow_cfg *f, const struct cf_dist *src,
                   const struct cf_dist *tgt, uint64_t seed, uint32_t step, uint64_t seq0,
                   int64_t B, float *z, float *y, float *work);

/* Local. An endpoint x1 (D) given the source point x0 and the point u at time t in (0, 1) under
 * the paths' law with independent endpoints. Bridge paths with sigma > 0: one of the K
 * candidates cand (K, D) (draws from the target distribution), candidate i with probability
 * w_i / sum w, w_i = exp(-|u - (1 - t) x0 - t c_i|^2 / (2 sigma^2 t (1 - t))): the one whose
 * cumulative weight interval holds uniform * sum (uniform in [0, 1); self-normalized importance
 * sampling of p(x1 | x0, x_t = u)). Other paths (and sigma 0): the line's through x0 and u,
 * (u - (1 - t) x0) / t. w (K) scratch. */
void cf_flow_endpoint(const struct cf_flow_cfg *f, double t, const float *x0, const float *u,
                      const float *cand, int64_t K, double uniform, double *w, float *x1);

/* Local. The rollout's update: next point from the current one and the head's output y (D). */
void cf_flow_advance(const struct cf_flow_cfg *f, const float *cur, const float *y, float *next);

#endif
