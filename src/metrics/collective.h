/* collective.h: the few MPI helpers the collective metrics (sinkhorn.c, frechet.c, pca.c)
 * share: agreeing on a failure, sums that come out bit-identical on every rank, and the
 * BLACS grid / ScaLAPACK symmetric eigensolvers of frechet.c and pca.c. Internal to
 * src/metrics/.
 *
 * Distributed matrices (n, n) are split in nb x nb blocks over a p x q BLACS grid ("Row"
 * order: rank r of comm is grid position (r / q, r % q)); a rank holds the blocks (I, J) with
 * I % p equal to its grid row and J % q to its grid column, column-major locally with leading
 * dimension lld. ScaLAPACK and BLACS have no C header on Debian: the prototypes are declared
 * here. Fortran routines get their hidden character-length arguments (size_t) at the end. */
#ifndef CALMFLOW_METRICS_COLLECTIVE_H
#define CALMFLOW_METRICS_COLLECTIVE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

/* Collective on comm. Every rank passes its own status; all ranks return a failure when any
 * rank failed: their own status and message where they failed themselves, else CF_EREMOTE
 * with "<what> failed on another rank". */
cf_status cf_metrics_agree(MPI_Comm comm, cf_status st, const char *what);

/* Collective on comm. In-place sum of buf (n doubles) over the ranks, reduced on rank 0 and
 * broadcast, so every rank holds the same bits (MPI_Allreduce does not promise that). */
cf_status cf_metrics_sum(MPI_Comm comm, double *buf, int64_t n);

/* Collective on comm. Check that the point sets are free of NaN / Inf: x (n, d) on each rank,
 * `name` naming the set in the message (row numbers are row0 + local row). */
cf_status cf_metrics_check_finite(MPI_Comm comm, const float *x, int64_t n, int64_t d, int64_t row0,
                                  const char *name);

/* ---- BLACS / ScaLAPACK ---- */

int Csys2blacs_handle(MPI_Comm comm);
void Cfree_blacs_system_handle(int handle);
void Cblacs_gridinit(int *ctxt, const char *order, int nprow, int npcol);
void Cblacs_gridinfo(int ctxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int ctxt);
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb,
               const int *irsrc, const int *icsrc, const int *ictxt, const int *lld, int *info);
void pdsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *ia,
              const int *ja, const int *desca, double *w, double *z, const int *iz, const int *jz,
              const int *descz, double *work, const int *lwork, int *iwork, const int *liwork,
              int *info, size_t ljobz, size_t luplo);
void pdsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *ia,
             const int *ja, const int *desca, double *w, double *z, const int *iz, const int *jz,
             const int *descz, double *work, const int *lwork, int *info, size_t ljobz,
             size_t luplo);
void pdsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a,
              const int *ia, const int *ja, const int *desca, const double *vl, const double *vu,
              const int *il, const int *iu, int *m, int *nz, double *w, double *z, const int *iz,
              const int *jz, const int *descz, double *work, const int *lwork, int *iwork,
              const int *liwork, int *info, size_t ljobz, size_t lrange, size_t luplo);
void pdgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
             const double *alpha, const double *a, const int *ia, const int *ja, const int *desca,
             const double *b, const int *ib, const int *jb, const int *descb, const double *beta,
             double *c, const int *ic, const int *jc, const int *descc, size_t lta, size_t ltb);

/* The rank's share of one distributed (n, n) matrix: grid, block size, local shape. */
struct cf_sl_grid {
  int handle, ctxt, p, q, myr, myc;
  int n, nb, mloc, nloc, lld;
  int desc[9];
};

/* Local. Largest divisor of size that is <= sqrt(size) (the default grid rows). */
int cf_sl_grid_rows(int size);

/* Collective on comm. The BLACS grid p x q on comm (p q = ranks of comm) and the descriptor
 * of an (n, n) matrix in nb x nb blocks. `what` prefixes the messages ("frechet", "pca").
 * On failure nothing is left to release. */
cf_status cf_sl_grid_open(MPI_Comm comm, int p, int q, int n, int nb, const char *what,
                          struct cf_sl_grid *g);

/* Collective on the grid. Release the BLACS grid and the system handle (never blacs_exit,
 * which would finalize MPI). */
void cf_sl_grid_close(struct cf_sl_grid *g);

/* Local. Global row (column) index of local row lr (column lc) of the grid's matrix. */
static inline int64_t cf_sl_grow(const struct cf_sl_grid *g, int64_t lr) {
  return ((lr / g->nb) * g->p + g->myr) * g->nb + lr % g->nb;
}
static inline int64_t cf_sl_gcol(const struct cf_sl_grid *g, int64_t lc) {
  return ((lc / g->nb) * g->q + g->myc) * g->nb + lc % g->nb;
}

/* Collective on comm (the grid's). Eigenvalues w (n, ascending) and, when vectors, the
 * eigenvectors into Z (same layout as A) of the symmetric A (lower triangle read); A is
 * destroyed. vectors = 1: pdsyevd; vectors = 0: pdsyev, values only (Z untouched). The
 * workspace is the query's answer raised to pdsyevd's documented minimum plus room for the
 * back-transformation (see collective.c). */
cf_status cf_sl_eig(MPI_Comm comm, const struct cf_sl_grid *g, double *A, double *w, double *Z,
                    int vectors, const char *what);

/* Collective on comm (the grid's). The m largest eigenvalues of the symmetric A (lower
 * triangle read; 1 <= k <= n) and their eigenvectors, by pdsyevr (MRRR) with RANGE = 'I',
 * where m = min(n, max(k, nb)) >= k (pdsyevr's back-transformation runs out of workspace for
 * fewer than nb vectors, see collective.c): w[0..m) ascending (w must hold n), the vectors in
 * columns 0..m-1 of Z (same layout as A), so the k largest are the last k. A is destroyed.
 * When that is more than half of the n pairs, all n come from pdsyevd (cf_sl_eig): pdsyevr
 * is unreliable there (collective.c). */
cf_status cf_sl_eig_top(MPI_Comm comm, const struct cf_sl_grid *g, double *A, int k, double *w,
                        double *Z, int *m, const char *what);

#endif
