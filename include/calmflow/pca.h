/* pca.h: distributed principal component analysis on ScaLAPACK, for the single-cell
 * preprocessing (cells x genes expression matrices, after HVG selection or not).
 *
 * The data X (n, D) (n cells, D genes) is spread over the ranks of a communicator by rows:
 * each rank holds a contiguous block of cells (local_n, D), any split, empty ranks allowed;
 * rank r's rows come after those of ranks 0..r-1. The fit gives, identically on every rank:
 *   mean        mu (D), the mean cell,
 *   components  V (K, D), the top K principal directions, orthonormal rows, in order of
 *               decreasing variance, each sign-normalised: its entry of largest magnitude
 *               (the first one, on a tie) is positive,
 *   variance    (K), the explained variance of each component, divisor n - 1 (the
 *               eigenvalues of the sample covariance S = Xc^T Xc / (n - 1), Xc = X - 1 mu^T,
 *               scikit-learn's explained_variance_), and total_variance = tr S, so
 *               variance / total_variance is the explained-variance ratio,
 * and on each rank the projections of its own rows, z = (x - mu) V^T (local_n, K).
 *
 * Method (two routes, same results up to rounding; docs in src/metrics/pca.c):
 *   covariance  S (D, D) is assembled straight into a block-cyclic distribution on a BLACS
 *               grid (each rank multiplies its centred rows, one block column of the lower
 *               triangle at a time, and the block column is summed over the ranks), then
 *               pdsyevr (MRRR, RANGE = 'I') computes only the K largest eigenpairs. Cost
 *               n D^2 / R flops per rank for S, O(D^3) for the eigensolver (the reduction to
 *               tridiagonal form; only max(K, nb) vectors are back-transformed), D^2 / R
 *               doubles per matrix per rank. Right when n >= D (many cells, few genes).
 *   gram        the Gram matrix G = Xc Xc^T / (n - 1) (n, n) has the same nonzero
 *               eigenvalues as S; with G u = l u, the direction is v = Xc^T u / |Xc^T u|. G
 *               is assembled block-cyclic in the same way (the cells of one block column are
 *               gathered to every rank, MPI_Allgatherv, and multiplied with each rank's own
 *               cells), pdsyevr gives its K largest eigenpairs, and V = U^T Xc is summed over
 *               the ranks. Cost n^2 D / R flops per rank, O(n^3) for the eigensolver, n^2 / R
 *               doubles per matrix. Right when n < D: for 271 cells x 47k genes G is 271 x 271
 *               where S would be 47k x 47k (17 GB, and an O(D^3) eigensolver).
 *   CF_PCA_AUTO takes the Gram route when n < D, the covariance route otherwise (the flop
 *   counts above cross at n = D).
 * Both routes centre in double and compute in double; the inputs and projections are float.
 * Components whose variance is at most 1e-12 of the largest are "null" (the centred data has
 * rank < K: K >= n, or collinear cells or genes): they carry no variance and any orthonormal
 * completion is a valid answer. The covariance route takes pdsyevr's eigenvectors; the Gram
 * route, where Xc^T u is only rounding noise, takes the unit vectors e_0, e_1, ...
 * orthogonalised against the components before them (Gram-Schmidt, twice), skipping those
 * that are nearly in their span. Reconstruction of the data from all non-null components is
 * exact either way. The Gram route also orthogonalises every component against the ones
 * before it (rounding in G, about 1e-16 of the top variance, tilts Xc^T u by that over the
 * component's own variance, so small components would otherwise lose orthogonality).
 *
 * Memory per rank: the rank's rows in double (local_n D), two distributed (N, N) matrices
 * (N = D or n: 2 N^2 / R doubles), a panel of N x nb doubles (plus nb x D for the Gram route),
 * the replicated K x N eigenvectors and the K x D components.
 *
 * Layout invariance: the results are the same at any rank count, grid, block size and row
 * split up to rounding (a few 1e-15 on the components and, relative, on the variances in the
 * tests at 1-3 ranks, which allow 1e-9 and 1e-12; the float projections came out identical).
 */
#ifndef CALMFLOW_PCA_H
#define CALMFLOW_PCA_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"

enum cf_pca_method {
  CF_PCA_AUTO = 0,       /* Gram when n < D, else covariance */
  CF_PCA_COVARIANCE = 1, /* eigenpairs of S (D, D) */
  CF_PCA_GRAM = 2        /* eigenpairs of G (n, n) */
};

struct cf_pca_opts {
  int method;    /* enum cf_pca_method */
  int64_t block; /* block-cyclic block size nb (0: 64; capped at the matrix order) */
  int grid_rows; /* process-grid rows p (0: the largest divisor of R with p <= sqrt(R)) */
};

/* The fitted model; the arrays are owned (cf_alloc) and identical on every rank. */
struct cf_pca {
  int64_t n, d, k;         /* cells in all, genes, components */
  double *mean;            /* (d) */
  double *components;      /* (k, d) row-major, orthonormal rows, decreasing variance */
  double *variance;        /* (k) explained variance (divisor n - 1), decreasing, >= 0 */
  double total_variance;   /* tr S, the variance summed over the genes */
  int64_t null_components; /* components with variance <= 1e-12 of the largest */
  int method;              /* the route taken: CF_PCA_COVARIANCE or CF_PCA_GRAM */
  int grid_rows, grid_cols;
};

/* Collective on comm. Fit a K-component PCA to the rows x (n_local, d) of this rank (any
 * split over the ranks, 0 rows allowed; d and k the same everywhere) and, when z is not NULL,
 * write the projections of this rank's rows to z (n_local, k). opt may be NULL (defaults).
 * *pca is overwritten (release it with cf_pca_release); on failure it holds nothing.
 * Fails (CF_EINVAL) for d < 1, k < 1, k > min(n, d), fewer than 2 cells in all, d or k
 * differing between ranks, a block outside 1..1024, an unknown method, a matrix too large
 * for ScaLAPACK's 32-bit indexing; (CF_ETOPO) for grid rows that do not divide the rank
 * count; (CF_ECORRUPT) for NaN / Inf in x, naming the global row and the gene; (CF_ENUM)
 * when ScaLAPACK reports an error; all ranks fail together. */
cf_status cf_pca_fit(MPI_Comm comm, const float *x, int64_t n_local, int64_t d, int64_t k,
                     const struct cf_pca_opts *opt, struct cf_pca *pca, float *z);

/* Local. Free the arrays of a fitted model and zero it (a second call is harmless). */
void cf_pca_release(struct cf_pca *pca);

/* Local. Project rows x (n, d) onto the components: z = (x - mean) V^T (n, k). */
cf_status cf_pca_transform(const struct cf_pca *pca, const float *x, int64_t n, float *z);

/* Local. Back to gene space: x = mean + z V (n, d) from z (n, k), e.g. for samples generated
 * in PCA space. With k = the rank of the centred data it inverts cf_pca_transform up to
 * float rounding. */
cf_status cf_pca_inverse(const struct cf_pca *pca, const float *z, int64_t n, float *x);

#endif
