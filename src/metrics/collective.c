/* collective.c: failure agreement, rank-identical sums and the finite-value check shared by
 * the collective metrics (Sinkhorn, Frechet, PCA), and the BLACS grid and ScaLAPACK symmetric
 * eigensolver calls of the Frechet distance and PCA.
 *
 * Every failure that can happen on one rank only (allocation, a ScaLAPACK info) is agreed on
 * (cf_metrics_agree) before the next collective call, so no rank is left waiting; the BLACS
 * grid is released with Cblacs_gridexit and the system handle freed, never with Cblacs_exit,
 * which would end MPI. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "collective.h"

cf_status cf_metrics_agree(MPI_Comm comm, cf_status st, const char *what) {
  int bad = st != CF_OK, any = 0;
  CF_MPI(MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, comm));
  if (!any) return CF_OK;
  if (bad) return st;
  return cf_err(CF_EREMOTE, "%s failed on another rank", what);
}

cf_status cf_metrics_sum(MPI_Comm comm, double *buf, int64_t n) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  /* reduce to rank 0 and broadcast (the same bits everywhere); mpichunk.h splits large n */
  CF_MPI(cf_mpi_reduce(rank == 0 ? MPI_IN_PLACE : buf, rank == 0 ? buf : NULL, (size_t)n,
                       MPI_DOUBLE, MPI_SUM, 0, comm));
  CF_MPI(cf_mpi_bcast(buf, (size_t)n, MPI_DOUBLE, 0, comm));
  return CF_OK;
}

cf_status cf_metrics_check_finite(MPI_Comm comm, const float *x, int64_t n, int64_t d, int64_t row0,
                                  const char *name) {
  cf_status st = CF_OK;
  for (int64_t i = 0; i < n && st == CF_OK; i++)
    for (int64_t k = 0; k < d; k++) {
      float v = x[i * d + k];
      if (!isfinite(v)) {
        st = cf_err(CF_ECORRUPT, "eval set %s has %s at row %lld (column %lld)", name,
                    isnan(v) ? "NaN" : "Inf", (long long)(row0 + i), (long long)k);
        break;
      }
    }
  return cf_metrics_agree(comm, st, "the finite-value check");
}

int cf_sl_grid_rows(int size) {
  int p = 1;
  for (int i = 1; (int64_t)i * i <= size; i++)
    if (size % i == 0) p = i;
  return p;
}

cf_status cf_sl_grid_open(MPI_Comm comm, int p, int q, int n, int nb, const char *what,
                          struct cf_sl_grid *g) {
  memset(g, 0, sizeof *g);
  g->handle = Csys2blacs_handle(comm);
  g->ctxt = g->handle;
  Cblacs_gridinit(&g->ctxt, "Row", p, q);
  Cblacs_gridinfo(g->ctxt, &g->p, &g->q, &g->myr, &g->myc);
  cf_status st = CF_OK;
  if (g->p != p || g->q != q || g->myr < 0 || g->myc < 0)
    st = cf_err(CF_ETOPO, "%s: BLACS grid %d x %d could not be built (got %d x %d)", what, p, q,
                g->p, g->q);
  st = cf_metrics_agree(comm, st, what);
  if (st != CF_OK) {
    if (g->myr >= 0 && g->myc >= 0 && g->p > 0) Cblacs_gridexit(g->ctxt);
    Cfree_blacs_system_handle(g->handle);
    return st;
  }
  int zero = 0, info = 0;
  g->n = n;
  g->nb = nb;
  g->mloc = numroc_(&g->n, &g->nb, &g->myr, &zero, &g->p);
  g->nloc = numroc_(&g->n, &g->nb, &g->myc, &zero, &g->q);
  g->lld = g->mloc > 1 ? g->mloc : 1;
  descinit_(g->desc, &g->n, &g->n, &g->nb, &g->nb, &zero, &zero, &g->ctxt, &g->lld, &info);
  if (info != 0) st = cf_err(CF_ENUM, "%s: descinit failed (info %d)", what, info);
  st = cf_metrics_agree(comm, st, what);
  if (st != CF_OK) {
    Cblacs_gridexit(g->ctxt);
    Cfree_blacs_system_handle(g->handle);
  }
  return st;
}

void cf_sl_grid_close(struct cf_sl_grid *g) {
  Cblacs_gridexit(g->ctxt);
  Cfree_blacs_system_handle(g->handle);
}

/* Collective. Allocate work (lwork doubles) and iwork (liwork ints) for a ScaLAPACK call,
 * checking the 32-bit limit; agreed over comm. need, ni: the sizes wanted. */
static cf_status sl_work(MPI_Comm comm, const struct cf_sl_grid *g, double need, int64_t ni,
                         const char *what, double **work, int *lwork, int **iwork, int *liwork) {
  if (ni < 1) ni = 1;
  cf_status st = need <= (double)INT_MAX && ni <= INT_MAX
                     ? CF_OK
                     : cf_err(CF_EINVAL,
                              "%s: ScaLAPACK workspace of %.0f doubles exceeds the 32-bit "
                              "limit (dimension %d; use more ranks)",
                              what, need, g->n);
  *lwork = (int)need + 1;
  *liwork = (int)ni;
  char nm[2][64];
  snprintf(nm[0], sizeof nm[0], "%s work", what);
  snprintf(nm[1], sizeof nm[1], "%s iwork", what);
  if (st == CF_OK) st = cf_alloc((void **)work, (size_t)*lwork * sizeof(double), nm[0]);
  if (st == CF_OK) st = cf_alloc((void **)iwork, (size_t)*liwork * sizeof(int), nm[1]);
  return cf_metrics_agree(comm, st, what);
}

cf_status cf_sl_eig(MPI_Comm comm, const struct cf_sl_grid *g, double *A, double *w, double *Z,
                    int vectors, const char *what) {
  const int one = 1;
  int info = 0, lwork = -1, liwork = -1, iq = 0;
  double wq = 0;
  if (vectors)
    pdsyevd_("V", "L", &g->n, A, &one, &one, g->desc, w, Z, &one, &one, g->desc, &wq, &lwork, &iq,
             &liwork, &info, 1, 1);
  else
    pdsyev_("N", "L", &g->n, A, &one, &one, g->desc, w, Z, &one, &one, g->desc, &wq, &lwork, &info,
            1, 1);
  cf_status st = CF_OK;
  if (info != 0)
    st = cf_err(CF_ENUM, "%s: %s workspace query failed (info %d)", what,
                vectors ? "pdsyevd" : "pdsyev", info);
  CF_TRY(cf_metrics_agree(comm, st, what));
  /* pdsyevd's documented minimum, in case the query comes out short, plus room for the
   * back-transformation (pdormtr needs up to (np + nq + nb) nb + nb^2 more than pdsyevd
   * reserves: with nb = n on one rank the query alone is too small, pdormtr complains about
   * its LWORK and pdsyevd still returns info 0). */
  double need = wq;
  int64_t ni = iq;
  int64_t n = g->n, nb = g->nb, np = g->mloc, nq = g->nloc;
  if (vectors) {
    int64_t tri = 3 * n + (nb * (np + 1) > 3 * nb ? nb * (np + 1) : 3 * nb);
    int64_t lw = (1 + 6 * n + 2 * np * nq > tri ? 1 + 6 * n + 2 * np * nq : tri) + 2 * n;
    if ((double)lw > need) need = (double)lw;
    if (7 * n + 8 * g->q + 2 > ni) ni = 7 * n + 8 * g->q + 2;
  }
  need += (double)((np + nq + 2 * nb) * nb);
  double *work = NULL;
  int *iwork = NULL;
  st = sl_work(comm, g, need, ni, what, &work, &lwork, &iwork, &liwork);
  if (st == CF_OK) {
    if (vectors)
      pdsyevd_("V", "L", &g->n, A, &one, &one, g->desc, w, Z, &one, &one, g->desc, work, &lwork,
               iwork, &liwork, &info, 1, 1);
    else
      pdsyev_("N", "L", &g->n, A, &one, &one, g->desc, w, Z, &one, &one, g->desc, work, &lwork,
              &info, 1, 1);
    if (info != 0)
      st = cf_err(CF_ENUM, "%s: %s failed (info %d) on a %d x %d covariance", what,
                  vectors ? "pdsyevd" : "pdsyev", info, g->n, g->n);
    st = cf_metrics_agree(comm, st, what);
  }
  cf_free((void **)&work);
  cf_free((void **)&iwork);
  return st;
}

cf_status cf_sl_eig_top(MPI_Comm comm, const struct cf_sl_grid *g, double *A, int k, double *w,
                        double *Z, int *m, const char *what) {
  CF_CHECK(k >= 1 && k <= g->n, CF_EINVAL, "%s: %d eigenpairs asked of a %d x %d matrix", what, k,
           g->n, g->n);
  /* pdsyevr hands pdormtr (the back-transformation) max(18 n, np0 mz0 + 2 nb^2) doubles of its
   * workspace, where mz0 = the local column count of the mz wanted vectors on grid column 0,
   * whatever LWORK is; pdormtr needs max(nb (nb - 1) / 2, (np + mz0) nb) + nb^2. That fits
   * when mz >= nb or mz = n, and fails ("PDORMTR parameter number 16 had an illegal value",
   * info still 0 on some ranks) for fewer vectors on more than one block. So ask for at
   * least nb of them. */
  int kk = k > g->nb ? k : g->nb;
  if (kk > g->n) kk = g->n;
  /* Asked for more than half of the pairs, pdsyevr (ScaLAPACK 2.2, one rank) sometimes returns
   * one eigenvalue twice and loses the next, with a garbage vector (tests/test_pca.c, 40-86 x
   * 161): take the whole spectrum from pdsyevd instead, which costs about as much there. */
  if (2 * kk > g->n) {
    CF_TRY(cf_sl_eig(comm, g, A, w, Z, 1, what));
    *m = g->n;
    return CF_OK;
  }
  const int one = 1, il = g->n - kk + 1, iu = g->n;
  const double vl = 0, vu = 0;
  int info = 0, lwork = -1, liwork = -1, iq = 0, nz = 0;
  double wq = 0;
  *m = 0;
  pdsyevr_("V", "I", "L", &g->n, A, &one, &one, g->desc, &vl, &vu, &il, &iu, m, &nz, w, Z, &one,
           &one, g->desc, &wq, &lwork, &iq, &liwork, &info, 1, 1, 1);
  cf_status st = CF_OK;
  if (info != 0) st = cf_err(CF_ENUM, "%s: pdsyevr workspace query failed (info %d)", what, info);
  CF_TRY(cf_metrics_agree(comm, st, what));
  /* The query's answer plus the same margin as above (it does not reach pdormtr, whose share
   * pdsyevr fixes itself, but costs little). */
  int64_t nb = g->nb, np = g->mloc, nq = g->nloc;
  double need = wq + (double)((np + nq + 2 * nb) * nb);
  double *work = NULL;
  int *iwork = NULL;
  st = sl_work(comm, g, need, (int64_t)iq, what, &work, &lwork, &iwork, &liwork);
  if (st == CF_OK) {
    pdsyevr_("V", "I", "L", &g->n, A, &one, &one, g->desc, &vl, &vu, &il, &iu, m, &nz, w, Z, &one,
             &one, g->desc, work, &lwork, iwork, &liwork, &info, 1, 1, 1);
    if (info != 0)
      st = cf_err(CF_ENUM, "%s: pdsyevr failed (info %d) on a %d x %d matrix", what, info, g->n,
                  g->n);
    else if (*m != kk || nz != kk)
      st = cf_err(CF_ENUM, "%s: pdsyevr found %d eigenvalues and %d vectors of the %d asked", what,
                  *m, nz, kk);
    st = cf_metrics_agree(comm, st, what);
  }
  cf_free((void **)&work);
  cf_free((void **)&iwork);
  return st;
}
