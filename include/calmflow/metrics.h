/* metrics.h: distances between two point sets (generated samples vs target data).
 *
 * The exact W1/W2, MMD and energy functions are Local: each rank computes on the points it
 * is handed. Sinkhorn and Frechet are Collective on comm: the ranks share the work. Point
 * sets are row-major float arrays, a (na, d) and b (nb, d); every sum is accumulated in
 * double. docs/metrics.md has the definitions with examples and timings.
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
 *
 * The collective metrics (Collective on comm; see cf_sinkhorn and cf_frechet below):
 *   sinkhorn_w2     entropic optimal transport with squared-Euclidean cost
 *                   C_ij = ||a_i - b_j||^2, uniform weights alpha_i = 1/na, beta_j = 1/nb:
 *                     P_eps = argmin over couplings P of <P, C> + eps KL(P | alpha x beta),
 *                   solved by log-domain Sinkhorn iterations; sinkhorn_w2 = sqrt(<P_eps, C>)
 *                   (the transport cost of the entropic plan, no entropy term; it tends to
 *                   the exact W2 as eps -> 0 and exceeds it for eps > 0).
 *                   eps = eps_rel * s by default, s = E||y - y'||^2 over pairs of points
 *                   of b (the reference set: 2 x the mean squared distance to b's mean),
 *                   so every sample set evaluated against the same data gets the same eps;
 *                   or an absolute eps.
 *   sinkhorn_div    the debiased Sinkhorn divergence, in squared-distance units:
 *                   OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2, where
 *                   OT_eps = <P_eps, C> + eps KL(P_eps | alpha x beta) is the entropic
 *                   objective (evaluated as the dual value <alpha, f> + <beta, g>). It is
 *                   >= 0, zero for a == b, and exactly |v|^2 between a and a + v.
 *   frechet         the Frechet distance between the Gaussians fitted to a and b (the
 *                   closed-form W2^2 between N(mu_a, S_a) and N(mu_b, S_b), as in FID):
 *                     ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),
 *                   sample means and unbiased covariances (divisor n - 1). The trace of the
 *                   square root is sum_k sqrt(mu_k) over the eigenvalues mu_k of
 *                   L^1/2 V^T S_b V L^1/2 (S_a = V L V^T), which is similar to
 *                   S_a^1/2 S_b S_a^1/2; eigenvalues of S_a and of that matrix below zero
 *                   (rounding) are clamped to 0. Squared-distance units, no square root.
 *                   When n <= D the covariances are singular and the clamped rounding
 *                   noise of the null space adds about sqrt(1e-16 tr S) per null direction.
 */
#ifndef CALMFLOW_METRICS_H
#define CALMFLOW_METRICS_H

#include <mpi.h>
#include <stddef.h>
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

/* Workspace of the dense assignment solver for problems of size up to n_max (9 n_max doubles),
 * for callers that solve one assignment per step and must not allocate in it (OT-CFM's
 * coupling). */
struct cf_lsa {
  int64_t n_max;
  size_t per;  /* bytes of one of its arrays */
  void *block; /* the arrays */
};
/* Local. */
cf_status cf_lsa_init(struct cf_lsa *lsa, int64_t n_max);
void cf_lsa_release(struct cf_lsa *lsa); /* idempotent; *lsa all-zero after */
/* Local. cf_lsa_dense in lsa's workspace, with no allocation (n <= lsa->n_max; lsa NULL: a
 * workspace of its own, as cf_lsa_dense). The same assignment as cf_lsa_dense. */
cf_status cf_lsa_solve_dense(struct cf_lsa *lsa, const double *cost, int64_t n, int64_t *col_of_row,
                             double *total);

/* Local. The V-statistic squared MMD with K = exp(-gamma ||x - y||^2). Returns NaN
 * when na < 1, nb < 1 or d < 1; does not check for NaN inputs. */
double cf_mmd2_rbf(const float *a, int64_t na, const float *b, int64_t nb, int64_t d, double gamma);
/* Local. Mean of cf_mmd2_rbf over sigma in cf_mmd_sigmas, gamma = 1 / (2 sigma^2). */
double cf_mmd2_rbf_multi(const float *a, int64_t na, const float *b, int64_t nb, int64_t d);
/* Local. Energy distance (V-statistics, see above). NaN when a size is < 1. */
double cf_energy_distance(const float *a, int64_t na, const float *b, int64_t nb, int64_t d);

/* ---- R^2 of mean expression ---- */

/* Local. The coefficient of determination of the mean expression of generated cells, pred,
 * against that of real cells, real (both (d): one value per gene), over the genes listed in
 * genes (n_genes indices in 0..d-1, repeats count again) or over all d genes when genes is
 * NULL:
 *   R^2 = 1 - SS_res / SS_tot,  SS_res = sum_g (pred_g - real_g)^2,
 *                               SS_tot = sum_g (real_g - mean over the genes of real)^2,
 * as the CPA and scGPT perturbation papers report it for mean expression (scikit-learn's
 * r2_score(real, pred)): 1 for a perfect match, 0 for predicting the average gene everywhere,
 * negative when worse. Not symmetric: real is the reference. Sums in double.
 * Fails (CF_EINVAL) for d < 1, fewer than 2 genes, an index outside 0..d-1, or SS_tot = 0
 * (real constant over the genes: R^2 undefined), and (CF_ECORRUPT) for NaN / Inf in either
 * vector, naming the gene. */
cf_status cf_r2_mean_expression(const double *pred, const double *real, int64_t d,
                                const int64_t *genes, int64_t n_genes, double *r2);

/* ---- Sinkhorn (entropic optimal transport) ---- */

struct cf_sinkhorn_opts {
  double eps;         /* > 0: eps_rel (times s, see above; times the mean cost between a and b
                       * when all points of b coincide), or absolute when eps_absolute */
  int eps_absolute;   /* 0: eps is relative to s; 1: eps is in squared-distance units */
  int64_t max_iter;   /* iterations per transport problem, annealing included (>= 1) */
  double tol;         /* stop when the L1 marginal violation sum_j |P 1 - beta|_j <= tol */
  int debias;         /* 1: also OT_eps(a, a), OT_eps(b, b) and the divergence */
  size_t cache_bytes; /* per rank: keep the rank's rows of C when they fit (0: never) */
};

struct cf_sinkhorn {
  double w2;         /* sqrt(<P, C>) ("sinkhorn_w2") */
  double cost;       /* <P, C> */
  double ot_ab;      /* OT_eps(a, b), the entropic objective */
  double ot_aa;      /* OT_eps(a, a) (NaN without debias) */
  double ot_bb;      /* OT_eps(b, b) (NaN without debias) */
  double divergence; /* ot_ab - (ot_aa + ot_bb) / 2 ("sinkhorn_div"; NaN without debias) */
  double eps;        /* the absolute eps used */
  double scale;      /* s = E||y - y'||^2 over b */
  double err;        /* largest L1 marginal violation at the stop, over the problems */
  int64_t iters;     /* iterations of OT(a, b); iters_aa, iters_bb of the debiasing terms */
  int64_t iters_aa, iters_bb;
  int64_t rescued; /* column updates of OT(a, b) that needed the exact (two-pass) form */
  int converged;   /* 1 when every problem reached tol within max_iter */
  int cached;      /* 1 when the cost rows of OT(a, b) were kept in memory */
};

/* Local. The defaults: eps 0.05 relative, max_iter 1000, tol 1e-6, debias 1, 256 MiB. */
void cf_sinkhorn_defaults(struct cf_sinkhorn_opts *o);

/* Collective on comm. Entropic OT between a (na, d) and b (nb, d), which must be identical
 * on every rank of comm (replicated); each rank works on a contiguous range of rows of the
 * cost matrix (rows [r n / R, (r + 1) n / R) of C(a, b), likewise of C(a, a) and C(b, b)),
 * so the work and the cost cache divide by the rank count. The result is the same at any rank
 * count up to rounding (about 1e-15 relative in the tests, which allow 1e-12): rows are
 * processed identically whatever the split, the few global sums are reduced on rank 0 and
 * broadcast, so all ranks hold identical values and stop after the same iteration.
 *
 * Log-domain stabilized Sinkhorn: potentials f (na), g (nb),
 *   f_i = -eps log sum_j beta_j exp((g_j - C_ij) / eps),
 *   g_j = -eps log sum_i alpha_i exp((f_i - C_ij) / eps),
 * each log-sum-exp shifted by its maximum (terms more than 50 eps below it are dropped; the
 * column update comes from the plan's column sums, see src/metrics/sinkhorn.c). eps is
 * annealed from the mean cost down to its target by halving it each iteration; then the
 * iterations run at the target until the L1 column-marginal violation of the plan with exact
 * row marginals is <= tol, or max_iter. Plain Sinkhorn slows down sharply at small eps
 * (2-D, 1000 points: eps_rel 0.05 about 150 iterations, 0.01 about 800, 0.002 about 4000).
 * OT(a, a) and OT(b, b) use the symmetric averaged update f <- (f + T(f)) / 2.
 *
 * C_ij = ||a_i - b_j||^2 is computed after subtracting b's mean from both sets, directly for
 * d < 8 and by dgemm (|x|^2 + |y|^2 - 2 x.y, clamped at 0) for d >= 8, 64 rows at a time;
 * never as an na x nb matrix unless the rank's rows of it fit in cache_bytes (then they are
 * computed once and kept). Memory per rank: 8 (na + nb) (d + 1) bytes for double copies of
 * the sets, O(na + nb) vectors, a 64-row block, plus the cache when used. Debiasing adds the
 * two self problems: 1.2x (2-D, iteration-bound) to 3x (d = 1000, dgemm-bound) the time.
 *
 * Not converging within max_iter is not an error: out->converged = 0 and out->err say so.
 * Fails (CF_EINVAL) for na, nb < 1, d < 1, bad options, (CF_ECORRUPT) for NaN / Inf,
 * naming the set and row; all ranks fail together. */
cf_status cf_sinkhorn(MPI_Comm comm, const float *a, int64_t na, const float *b, int64_t nb,
                      int64_t d, const struct cf_sinkhorn_opts *opt, struct cf_sinkhorn *out);

/* ---- Frechet distance (Gaussian W2^2) with ScaLAPACK ---- */

struct cf_frechet_opts {
  int64_t block; /* block-cyclic block size nb (0: 64) */
  int grid_rows; /* process-grid rows p (0: the largest divisor of R with p <= sqrt(R)) */
};

struct cf_frechet {
  double value;      /* "frechet" */
  double mean_term;  /* ||mu_a - mu_b||^2 */
  double trace_a;    /* tr S_a */
  double trace_b;    /* tr S_b */
  double trace_sqrt; /* tr (S_a^1/2 S_b S_a^1/2)^1/2 */
  int64_t n_a, n_b, dim;
  int grid_rows, grid_cols;
};

/* Collective on comm. The Frechet distance (see above) between the set a, whose rows are
 * spread over the ranks (this rank holds na_local rows, (na_local, d), any split, 0 rows
 * allowed), and the set b (nb_local rows here). Means and traces are summed over the ranks;
 * the covariances are assembled straight into a block-cyclic (nb x nb blocks) distribution on
 * a p x q BLACS grid built on comm (Csys2blacs_handle + Cblacs_gridinit, released with
 * Cblacs_gridexit): each rank multiplies its centred rows (dgemm, one block column at a time)
 * and the block column is summed over the ranks. Then ScaLAPACK: pdsyevd (eigenvalues and
 * vectors of S_a), pdgemm twice (K = W^T S_b W with W = V L^1/2), pdsyev (eigenvalues of K).
 * Memory per rank: 3 D^2 / R doubles, a 2 D x nb panel and the rank's rows in double.
 * The result is identical on all ranks (broadcast from rank 0) and the same at any rank
 * count, grid, block size or row split up to rounding (about 1e-14 of tr S_a + tr S_b in
 * the tests, which allow 1e-10 of the value).
 * Fails (CF_EINVAL) for d < 1, d differing between ranks, fewer than 2 points in a set in
 * total, a block < 1 or a grid_rows that does not divide the rank count, (CF_ECORRUPT) for
 * NaN / Inf (naming the set and the global row) and (CF_ENUM) when ScaLAPACK reports an
 * error; all ranks fail together. */
cf_status cf_frechet(MPI_Comm comm, const float *a, int64_t na_local, const float *b,
                     int64_t nb_local, int64_t d, const struct cf_frechet_opts *opt,
                     struct cf_frechet *out);

#endif
