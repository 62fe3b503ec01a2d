/* frechet.c: the Frechet distance between the Gaussians fitted to two point sets (the W2^2
 * of FID), with the covariances distributed block-cyclically over a BLACS grid on the
 * communicator and the matrix square roots replaced by ScaLAPACK symmetric eigensolvers:
 *
 *   S_a = V L V^T (pdsyevd), W = V L^1/2 (L clamped at 0), K = W^T S_b W (two pdgemm),
 *   tr (S_a^1/2 S_b S_a^1/2)^1/2 = sum_k sqrt(max(mu_k, 0)), mu = eig(K) (pdsyev, values only),
 *
 * since K = Q^T (S_a^1/2 S_b S_a^1/2) Q with Q = V orthogonal. The traces of S_a and S_b come
 * from the centred rows directly, not from the eigenvalues.
 *
 * Matrices (D, D) are distributed in nb x nb blocks over a p x q grid ("Row" order: rank r
 * of comm is grid position (r / q, r % q)); a rank holds the blocks (I, J) with I % p equal
 * to its grid row and J % q to its grid column, column-major locally with leading dimension
 * lld. The covariance is assembled one block column J at a time: each rank multiplies its
 * centred rows into the (D, w) panel (dgemm), the panel is summed over the ranks
 * (MPI_Allreduce), and the owners of block column J copy out their blocks.
 *
 * Every failure that can happen on one rank only (allocation, bad arguments) is agreed on
 * (cf_metrics_agree) before the next collective call, so no rank is left waiting. The BLACS
 * grid (released with Cblacs_gridexit, never Cblacs_exit), the eigensolver calls with their
 * workspace margin and the ScaLAPACK prototypes are in collective.c / collective.h, shared
 * with pca.c.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/metrics.h"
#include "calmflow/mpichunk.h"
#include "collective.h"

#define CF_FRECHET_NB 64

/* Collective. Assemble S_a and S_b ((d, d), divisor n - 1) from the centred local rows
 * xa (na_loc, d), xb (nb_loc, d) into the local pieces A, B (lld, nloc). panel: 2 d nb. */
static cf_status assemble(MPI_Comm comm, const struct cf_sl_grid *g, const double *xa,
                          int64_t na_loc, int64_t na, const double *xb, int64_t nb_loc,
                          int64_t nb_tot, double *panel, double *A, double *B) {
  const int64_t d = g->n, nb = g->nb, nblk = (d + nb - 1) / nb;
  for (int64_t bj = 0; bj < nblk; bj++) {
    int64_t c0 = bj * nb, w = d - c0 < nb ? d - c0 : nb;
    double *pa = panel, *pb = panel + d * w; /* (d, w) column-major each */
    /* P = X^T X[:, c0:c0+w] / (n - 1): x row-major (n_loc, d) is X^T column-major (d, n_loc). */
    if (na_loc > 0)
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, (int)d, (int)w, (int)na_loc,
                  1.0 / (double)(na - 1), xa, (int)d, xa + c0, (int)d, 0.0, pa, (int)d);
    else
      memset(pa, 0, (size_t)(d * w) * sizeof(double));
    if (nb_loc > 0)
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, (int)d, (int)w, (int)nb_loc,
                  1.0 / (double)(nb_tot - 1), xb, (int)d, xb + c0, (int)d, 0.0, pb, (int)d);
    else
      memset(pb, 0, (size_t)(d * w) * sizeof(double));
    CF_MPI(cf_mpi_allreduce(MPI_IN_PLACE, panel, (size_t)(2 * d * w), MPI_DOUBLE, MPI_SUM, comm));
    if (bj % g->q != g->myc) continue;
    int64_t lc0 = (bj / g->q) * nb;
    for (int64_t bi = g->myr; bi * nb < d; bi += g->p) {
      int64_t r0 = bi * nb, h = d - r0 < nb ? d - r0 : nb, lr0 = (bi / g->p) * nb;
      for (int64_t c = 0; c < w; c++) {
        size_t lo = (size_t)(lr0 + (lc0 + c) * g->lld);
        memcpy(A + lo, pa + r0 + c * d, (size_t)h * sizeof(double));
        memcpy(B + lo, pb + r0 + c * d, (size_t)h * sizeof(double));
      }
    }
  }
  return CF_OK;
}

/* Collective. Everything after the grid exists: A, B, Z (lld, nloc) and the two eigenvalue
 * vectors; returns tr sqrt(K) (rank 0's value, broadcast). */
static cf_status trace_sqrt(MPI_Comm comm, const struct cf_sl_grid *g, const double *xa,
                            int64_t na_loc, int64_t na, const double *xb, int64_t nb_loc,
                            int64_t nb_tot, double *ts) {
  const int64_t d = g->n;
  size_t loc = (size_t)g->lld * (size_t)(g->nloc > 0 ? g->nloc : 1);
  double *A = NULL, *B = NULL, *Z = NULL, *ev = NULL, *panel = NULL;
  cf_status st = CF_OK;
  if (loc > (size_t)INT_MAX)
    st = cf_err(CF_EINVAL,
                "frechet: this rank's share of the %lld x %lld covariance exceeds ScaLAPACK's "
                "32-bit indexing; use more ranks",
                (long long)d, (long long)d);
  if (st == CF_OK) st = cf_alloc((void **)&A, loc * sizeof(double), "frechet matrix");
  if (st == CF_OK) st = cf_alloc((void **)&B, loc * sizeof(double), "frechet matrix");
  if (st == CF_OK) st = cf_alloc((void **)&Z, loc * sizeof(double), "frechet matrix");
  if (st == CF_OK) st = cf_alloc((void **)&ev, (size_t)(2 * d) * sizeof(double), "frechet eig");
  if (st == CF_OK) {
    int64_t w = d < g->nb ? d : g->nb;
    st = cf_alloc((void **)&panel, (size_t)(2 * d * w) * sizeof(double), "frechet panel");
  }
  st = cf_metrics_agree(comm, st, "frechet");
  if (st == CF_OK) st = assemble(comm, g, xa, na_loc, na, xb, nb_loc, nb_tot, panel, A, B);
  cf_free((void **)&panel);
  if (st == CF_OK) st = cf_sl_eig(comm, g, A, ev, Z, 1, "frechet");
  if (st == CF_OK) {
    /* W = V L^1/2: scale the local columns of Z by sqrt(max(l_gc, 0)). */
    for (int lc = 0; lc < g->nloc; lc++) {
      int64_t gc = ((int64_t)(lc / g->nb) * g->q + g->myc) * g->nb + lc % g->nb;
      double s = ev[gc] > 0 ? sqrt(ev[gc]) : 0.0;
      double *col = Z + (size_t)lc * (size_t)g->lld;
      for (int r = 0; r < g->mloc; r++)
        col[r] *= s;
    }
    const int one = 1;
    const double o = 1.0, z = 0.0;
    /* A = S_b W, then B = W^T A = K. */
    pdgemm_("N", "N", &g->n, &g->n, &g->n, &o, B, &one, &one, g->desc, Z, &one, &one, g->desc, &z,
            A, &one, &one, g->desc, 1, 1);
    pdgemm_("T", "N", &g->n, &g->n, &g->n, &o, Z, &one, &one, g->desc, A, &one, &one, g->desc, &z,
            B, &one, &one, g->desc, 1, 1);
    st = cf_sl_eig(comm, g, B, ev + d, Z, 0, "frechet");
  }
  if (st == CF_OK) {
    double s = 0;
    for (int64_t k = 0; k < d; k++)
      s += ev[d + k] > 0 ? sqrt(ev[d + k]) : 0.0;
    *ts = s;
    st = cf_metrics_agree(comm, CF_OK, "frechet");
    if (st == CF_OK) {
      int e = MPI_Bcast(ts, 1, MPI_DOUBLE, 0, comm);
      if (e != MPI_SUCCESS) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Bcast");
    }
  }
  cf_free((void **)&A);
  cf_free((void **)&B);
  cf_free((void **)&Z);
  cf_free((void **)&ev);
  return st;
}

cf_status cf_frechet(MPI_Comm comm, const float *a, int64_t na_local, const float *b,
                     int64_t nb_local, int64_t d, const struct cf_frechet_opts *opt,
                     struct cf_frechet *out) {
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  /* Arguments: checked everywhere, agreed, so that no rank enters a collective alone. */
  int64_t blk = opt && opt->block ? opt->block : CF_FRECHET_NB;
  int p = opt && opt->grid_rows ? opt->grid_rows : cf_sl_grid_rows(size);
  cf_status st = CF_OK;
  if (out == NULL)
    st = cf_err(CF_EINVAL, "frechet: NULL output");
  else if (d < 1 || d > INT_MAX / 2048)
    st = cf_err(CF_EINVAL, "eval sets have dimension %lld; expected 1 <= d <= %d", (long long)d,
                INT_MAX / 2048);
  else if (na_local < 0 || nb_local < 0 || na_local > INT_MAX || nb_local > INT_MAX)
    st = cf_err(CF_EINVAL, "frechet: this rank's row counts %lld and %lld are out of range",
                (long long)na_local, (long long)nb_local);
  else if ((na_local > 0 && a == NULL) || (nb_local > 0 && b == NULL))
    st = cf_err(CF_EINVAL, "frechet: NULL point set");
  else if (blk < 1 || blk > 1024)
    st = cf_err(CF_EINVAL, "frechet: block size %lld; expected 1 to 1024", (long long)blk);
  else if (p < 1 || size % p != 0)
    st = cf_err(CF_ETOPO, "frechet: %d grid rows do not divide %d ranks", p, size);
  CF_TRY(cf_metrics_agree(comm, st, "frechet"));
  int64_t dd[2] = {d, -d};
  CF_MPI(MPI_Allreduce(MPI_IN_PLACE, dd, 2, MPI_INT64_T, MPI_MAX, comm));
  CF_CHECK(dd[0] == d && -dd[1] == d, CF_EINVAL,
           "frechet: the ranks pass different dimensions (%lld to %lld)", (long long)-dd[1],
           (long long)dd[0]);
  int64_t cnt[2] = {na_local, nb_local}, off[2] = {0, 0};
  CF_MPI(MPI_Exscan(cnt, off, 2, MPI_INT64_T, MPI_SUM, comm));
  if (rank == 0) off[0] = off[1] = 0;
  CF_TRY(cf_metrics_check_finite(comm, a, na_local, d, off[0], "a"));
  CF_TRY(cf_metrics_check_finite(comm, b, nb_local, d, off[1], "b"));
  int64_t tot[2] = {na_local, nb_local};
  CF_MPI(MPI_Allreduce(MPI_IN_PLACE, tot, 2, MPI_INT64_T, MPI_SUM, comm));
  CF_CHECK(tot[0] >= 2, CF_EINVAL,
           "eval set a has %lld points in all; the Frechet distance needs at least 2",
           (long long)tot[0]);
  CF_CHECK(tot[1] >= 2, CF_EINVAL,
           "eval set b has %lld points in all; the Frechet distance needs at least 2",
           (long long)tot[1]);
  if (blk > d) blk = d;

  /* Means, then centred double rows and the traces. */
  double *buf = NULL;
  size_t len;
  st = cf_mul_size(&len, (size_t)(na_local + nb_local + 2), (size_t)d, "frechet rows");
  if (st == CF_OK) st = cf_mul_size(&len, len + 2, sizeof(double), "frechet rows");
  if (st == CF_OK) st = cf_alloc((void **)&buf, len, "frechet rows");
  CF_TRY(cf_metrics_agree(comm, st, "frechet"));
  double *mu = buf, *xa = mu + 2 * d + 2, *xb = xa + na_local * d;
  for (int64_t i = 0; i < na_local; i++)
    for (int64_t k = 0; k < d; k++)
      mu[k] += (double)a[i * d + k];
  for (int64_t i = 0; i < nb_local; i++)
    for (int64_t k = 0; k < d; k++)
      mu[d + k] += (double)b[i * d + k];
  st = cf_metrics_sum(comm, mu, 2 * d);
  double mt = 0;
  for (int64_t k = 0; k < d; k++) {
    mu[k] /= (double)tot[0];
    mu[d + k] /= (double)tot[1];
    double t = mu[k] - mu[d + k];
    mt += t * t;
  }
  double *tr = mu + 2 * d;
  for (int64_t i = 0; i < na_local; i++)
    for (int64_t k = 0; k < d; k++) {
      double v = (double)a[i * d + k] - mu[k];
      xa[i * d + k] = v;
      tr[0] += v * v;
    }
  for (int64_t i = 0; i < nb_local; i++)
    for (int64_t k = 0; k < d; k++) {
      double v = (double)b[i * d + k] - mu[d + k];
      xb[i * d + k] = v;
      tr[1] += v * v;
    }
  if (st == CF_OK) st = cf_metrics_sum(comm, tr, 2);
  struct cf_frechet r = {0};
  r.mean_term = mt;
  r.trace_a = tr[0] / (double)(tot[0] - 1);
  r.trace_b = tr[1] / (double)(tot[1] - 1);
  r.n_a = tot[0];
  r.n_b = tot[1];
  r.dim = d;

  struct cf_sl_grid g;
  if (st == CF_OK) st = cf_sl_grid_open(comm, p, size / p, (int)d, (int)blk, "frechet", &g);
  if (st == CF_OK) {
    st = trace_sqrt(comm, &g, xa, na_local, tot[0], xb, nb_local, tot[1], &r.trace_sqrt);
    r.grid_rows = g.p;
    r.grid_cols = g.q;
    cf_sl_grid_close(&g);
  }
  cf_free((void **)&buf);
  CF_TRY(st);
  r.value = r.mean_term + r.trace_a + r.trace_b - 2.0 * r.trace_sqrt;
  *out = r;
  return CF_OK;
}
