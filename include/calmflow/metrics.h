/* metrics.h: distances between two point sets (generated samples vs target data).
 *
 * All functions here are Local: each rank computes on the points it is handed.
 * Point sets are row-major float arrays, a (na, d) and b (nb, d); every sum is
 * accumulated in double.
 *
 * Definitions (what `calmflow eval` writes to metrics.json):
 *   w2, w1          exact Wasserstein distances with uniform weights between the
 *                   first n_ot = min(na, nb, max_exact) rows of a and of b:
 *                   W_p = (min over permutations sigma of
 *                          (1/n) sum_i ||a_i - b_sigma(i)||^p)^(1/p),
 *                   solved exactly by a dense shortest-augmenting-path assignment
 *                   solver (O(n^3) worst case, O(n d) memory). Measured on one
 *                   shared core, d = 2: n = 2000 about 1.5 s (W2) + 1.8 s (W1);
 *                   n = 5000 about 22 s + 24 s (time grows like n^3).
 *   mmd2_rbf        squared MMD, biased V-statistic (all pairs, diagonals included)
 *                   with the RBF kernel K(x, y) = exp(-gamma ||x - y||^2), gamma = 2:
 *                   mean K(a, a') + mean K(b, b') - 2 mean K(a, b).
 *   mmd2_rbf_multi  the mean of the same V-statistic over the five bandwidths
 *                   sigma in {0.01, 0.1, 1, 10, 100}, gamma = 1 / (2 sigma^2).
 *   energy          energy distance, V-statistics over all pairs incl. diagonals:
 *                   2 E||a - b|| - E||a - a'|| - E||b - b'||.
 */
#ifndef CALMFLOW_METRICS_H
#define CALMFLOW_METRICS_H

#include <stdint.h>

#include "calmflow/error.h"

/* The gamma of mmd2_rbf, and the bandwidths of mmd2_rbf_multi. */
#define CF_MMD_GAMMA 2.0
#define CF_MMD_NSIGMA 5
extern const double cf_mmd_sigmas[CF_MMD_NSIGMA]; /* 0.01, 0.1, 1, 10, 100 */

struct cf_metrics {
  double w2, w1, mmd2_rbf, mmd2_rbf_multi, energy;
  int64_t n_a, n_b; /* points in each set (MMD and energy use all of them) */
  int64_t n_ot;     /* points of each set used by W1/W2 (the first n_ot rows) */
  int64_t dim;
};

/* Local. All metrics between a (na, d) and b (nb, d). W1/W2 use the first
 * n_ot = min(na, nb, max_exact) rows of each set (max_exact >= 1); MMD and energy
 * use all points. Fails (CF_EINVAL) for na, nb < 1, d < 1 or max_exact < 1, and
 * (CF_ECORRUPT) when a value is NaN or Inf, naming the set and row. */
cf_status cf_metrics_compute(const float *a, int64_t na, const float *b, int64_t nb, int64_t d,
                             int64_t max_exact, struct cf_metrics *out);

/* Local. Exact W_p (p = 1 or 2) between the equal-size sets a (n, d) and b (n, d):
 * the optimal assignment minimising sum_i cost(i, sigma(i)), cost = ||a_i - b_j||^p,
 * gives *w = (mean cost)^(1/p). Costs are computed row by row on the fly (no n x n
 * matrix); workspace O(n d) from cf_alloc. Inputs are not checked for NaN here. */
cf_status cf_wasserstein_exact(const float *a, const float *b, int64_t n, int64_t d, int p,
                               double *w);

/* Local. Dense linear sum assignment on the row-major cost matrix cost (n, n):
 * col_of_row[i] = sigma(i) minimising sum_i cost[i, sigma(i)], *total = that sum
 * (either output may be NULL). Costs must be finite. */
cf_status cf_lsa_dense(const double *cost, int64_t n, int64_t *col_of_row, double *total);

/* Local. The V-statistic squared MMD with K = exp(-gamma ||x - y||^2). Returns NaN
 * when na < 1, nb < 1 or d < 1; does not check for NaN inputs. */
double cf_mmd2_rbf(const float *a, int64_t na, const float *b, int64_t nb, int64_t d, double gamma);
/* Local. Mean of cf_mmd2_rbf over sigma in cf_mmd_sigmas, gamma = 1 / (2 sigma^2). */
double cf_mmd2_rbf_multi(const float *a, int64_t na, const float *b, int64_t nb, int64_t d);
/* Local. Energy distance (V-statistics, see above). NaN when a size is < 1. */
double cf_energy_distance(const float *a, int64_t na, const float *b, int64_t nb, int64_t d);

#endif
