/* pca.c: distributed PCA (include/calmflow/pca.h) on a BLACS grid: the covariance route
 * (S = Xc^T Xc / (n - 1), (D, D)) and the Gram route (G = Xc Xc^T / (n - 1), (n, n)), each
 * assembled block-cyclic and handed to pdsyevr for its K largest eigenpairs.
 *
 * Assembly, both routes: the matrix M (N, N) is symmetric and pdsyevr reads its lower
 * triangle only, so block column J (columns c0..c0+w) is computed from row c0 down: a panel
 * (N - c0, w), column-major. Covariance: every rank multiplies its centred rows,
 * P = Xc_loc[:, c0:]^T Xc_loc[:, c0:c0+w] (dgemm), and P is summed over the ranks
 * (MPI_Allreduce). Gram: the cells c0..c0+w are gathered to every rank (MPI_Allgatherv of
 * their centred rows, (w, D)), each rank fills the panel rows of its own cells at or below
 * c0 (dgemm) and leaves the others zero, and the panel is summed. Then the owners of block
 * column J copy their blocks out of the panel.
 *
 * After pdsyevr the K eigenvector columns are collected on every rank (each entry is owned
 * by one rank; the others add zeros, cf_metrics_sum) and reversed into decreasing order.
 * Covariance: they are the components. Gram: V = U^T Xc, each rank multiplying its own rows
 * of U with its cells, summed over the ranks, then each row orthogonalised against the rows
 * before it and normalised (|Xc^T u|^2 = (n - 1) l). Pdsyevr is asked for at least nb
 * eigenpairs (cf_sl_eig_top: its own back-transformation workspace is too small otherwise)
 * and the top K kept. Null components (variance <= 1e-12 of the largest) are completed as
 * pca.h says, every component is sign-normalised, the variances are broadcast from rank 0,
 * and the projections z = Xc_loc V^T come from the centred rows in double.
 *
 * Every failure that can happen on one rank only is agreed on (cf_metrics_agree) before the
 * next collective call. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/pca.h"
#include "collective.h"

#define CF_PCA_NB 64
#define CF_PCA_NULL_REL 1e-12 /* a component is null when its variance is <= this x the top */
#define CF_PCA_CHUNK 64       /* rows per dgemm in the projections */

static int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
static int64_t max64(int64_t a, int64_t b) {
  return a > b ? a : b;
}

/* Local. Copy block column bj of the lower triangle from the summed panel P (N - c0, w),
 * column-major (global rows c0..N), into this rank's blocks of A (lld, nloc). */
static void panel_store(const struct cf_sl_grid *g, int64_t bj, const double *P, double *A) {
  const int64_t N = g->n, nb = g->nb, c0 = bj * nb, w = min64(nb, N - c0), ldp = N - c0;
  if (bj % g->q != g->myc) return;
  int64_t lc0 = (bj / g->q) * nb;
  for (int64_t bi = g->myr; bi * nb < N; bi += g->p) {
    if (bi < bj) continue;
    int64_t r0 = bi * nb, h = min64(nb, N - r0), lr0 = (bi / g->p) * nb;
    for (int64_t c = 0; c < w; c++)
      memcpy(A + lr0 + (lc0 + c) * g->lld, P + (r0 - c0) + c * ldp, (size_t)h * sizeof(double));
  }
}

/* Collective. S = Xc^T Xc / (n - 1) (D, D), lower triangle, into A; xc (nl, D) row-major is
 * this rank's centred rows. panel: D nb doubles. */
static cf_status assemble_cov(MPI_Comm comm, const struct cf_sl_grid *g, const double *xc,
                              int64_t nl, int64_t n, double *panel, double *A) {
  const int64_t D = g->n, nb = g->nb;
  for (int64_t bj = 0; bj * nb < D; bj++) {
    int64_t c0 = bj * nb, w = min64(nb, D - c0), m = D - c0;
    /* xc row-major (nl, D) is Xc^T column-major (D, nl); rows c0.. of it start at xc + c0. */
    if (nl > 0)
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, (int)m, (int)w, (int)nl,
                  1.0 / (double)(n - 1), xc + c0, (int)D, xc + c0, (int)D, 0.0, panel, (int)m);
    else
      memset(panel, 0, (size_t)(m * w) * sizeof(double));
    CF_MPI(cf_mpi_allreduce(MPI_IN_PLACE, panel, (size_t)(m * w), MPI_DOUBLE, MPI_SUM, comm));
    panel_store(g, bj, panel, A);
  }
  return CF_OK;
}

/* Collective. G = Xc Xc^T / (n - 1) (n, n), lower triangle, into A; xc (nl, d) row-major is
 * this rank's centred rows, global rows off..off+nl; offs (R + 1) the row offsets of all
 * ranks. rows: nb d doubles; panel: n nb doubles; cnt, dsp: R int64s. */
static cf_status assemble_gram(MPI_Comm comm, const struct cf_sl_grid *g, const double *xc,
                               int64_t nl, int64_t off, int64_t d, const int64_t *offs, int R,
                               int rank, double *rows, int64_t *cnt, int64_t *dsp, double *panel,
                               double *A) {
  const int64_t n = g->n, nb = g->nb;
  for (int64_t bj = 0; bj * nb < n; bj++) {
    int64_t c0 = bj * nb, w = min64(nb, n - c0), m = n - c0;
    /* The centred rows of cells c0..c0+w, (w, d), on every rank. */
    for (int r = 0; r < R; r++) {
      int64_t lo = max64(offs[r], c0), hi = min64(offs[r + 1], c0 + w);
      cnt[r] = hi > lo ? (hi - lo) * d : 0;
      dsp[r] = hi > lo ? (lo - c0) * d : 0;
    }
    const double *send = cnt[rank] > 0 ? xc + (max64(off, c0) - off) * d : rows;
    CF_MPI(cf_mpi_allgatherv(send, (size_t)cnt[rank], rows, cnt, dsp, MPI_DOUBLE, comm));
    /* Panel rows of this rank's cells at or below c0: Xc_loc[i0:] rows . gathered rows. */
    memset(panel, 0, (size_t)(m * w) * sizeof(double));
    int64_t i0 = max64(0, c0 - off), mi = nl - i0;
    if (mi > 0)
      cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, (int)mi, (int)w, (int)d,
                  1.0 / (double)(n - 1), xc + i0 * d, (int)d, rows, (int)d, 0.0,
                  panel + (off + i0 - c0), (int)m);
    CF_MPI(cf_mpi_allreduce(MPI_IN_PLACE, panel, (size_t)(m * w), MPI_DOUBLE, MPI_SUM, comm));
    panel_store(g, bj, panel, A);
  }
  return CF_OK;
}

/* Collective. Columns m-k..m-1 of the distributed Z into U (N, k), column-major, on every
 * rank, in reverse order (U column t = Z column m - 1 - t: decreasing eigenvalues). */
static cf_status gather_top(MPI_Comm comm, const struct cf_sl_grid *g, const double *Z, int64_t m,
                            int64_t k, double *U) {
  const int64_t N = g->n;
  memset(U, 0, (size_t)(N * k) * sizeof(double));
  for (int64_t lc = 0; lc < g->nloc; lc++) {
    int64_t gc = cf_sl_gcol(g, lc);
    if (gc >= m || gc < m - k) continue;
    double *col = U + (m - 1 - gc) * N;
    for (int64_t lr = 0; lr < g->mloc; lr++)
      col[cf_sl_grow(g, lr)] = Z[lr + lc * g->lld];
  }
  return cf_metrics_sum(comm, U, N * k);
}

/* Local. Remove from v (d) its parts along the orthonormal rows 0..t-1 of V (classical
 * Gram-Schmidt, two passes); returns |v| after. c: t doubles of scratch. */
static double orthogonalise(const double *V, int64_t t, int64_t d, double *v, double *c) {
  for (int pass = 0; pass < 2 && t > 0; pass++) {
    cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)t, (int)d, 1.0, V, (int)d, v, 1, 0.0, c, 1);
    cblas_dgemv(CblasRowMajor, CblasTrans, (int)t, (int)d, -1.0, V, (int)d, c, 1, 1.0, v, 1);
  }
  return cblas_dnrm2((int)d, v, 1);
}

/* Local. Make row t of V (t, d) a unit vector orthogonal to rows 0..t-1: the first e_j (from
 * *next on, wrapping) that keeps at least half its length after orthogonalise, else the e_j
 * that keeps the most. c: t doubles of scratch. */
static void complete_null(double *V, int64_t t, int64_t d, int64_t *next, double *c) {
  double *v = V + t * d, best = -1;
  int64_t bestj = 0;
  for (int64_t s = 0; s <= d; s++) {
    int64_t j = s < d ? (*next + s) % d : bestj;
    memset(v, 0, (size_t)d * sizeof(double));
    v[j] = 1.0;
    double nr = orthogonalise(V, t, d, v, c);
    if (s == d || nr >= 0.5) {
      cblas_dscal((int)d, 1.0 / nr, v, 1);
      *next = (j + 1) % d;
      return;
    }
    if (nr > best) {
      best = nr;
      bestj = j;
    }
  }
}

/* Local. Flip v (d) so that its entry of largest magnitude (the first on a tie) is positive. */
static void sign_normalise(double *v, int64_t d) {
  int64_t jm = 0;
  for (int64_t j = 1; j < d; j++)
    if (fabs(v[j]) > fabs(v[jm])) jm = j;
  if (v[jm] < 0)
    for (int64_t j = 0; j < d; j++)
      v[j] = -v[j];
}

/* Local. z (nl, k) float = xc (nl, d) V^T, CF_PCA_CHUNK rows at a time through buf. */
static void project(const double *xc, int64_t nl, int64_t d, const double *V, int64_t k,
                    double *buf, float *z) {
  for (int64_t i0 = 0; i0 < nl; i0 += CF_PCA_CHUNK) {
    int64_t m = min64(CF_PCA_CHUNK, nl - i0);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)k, (int)d, 1.0, xc + i0 * d,
                (int)d, V, (int)d, 0.0, buf, (int)k);
    for (int64_t e = 0; e < m * k; e++)
      z[i0 * k + e] = (float)buf[e];
  }
}

/* The distributed stage's buffers. */
struct pca_work {
  double *A, *Z, *ev, *panel, *rows, *U;
  int64_t *cnt;
};

static void work_free(struct pca_work *w) {
  cf_free((void **)&w->A);
  cf_free((void **)&w->Z);
  cf_free((void **)&w->ev);
  cf_free((void **)&w->panel);
  cf_free((void **)&w->rows);
  cf_free((void **)&w->U);
  cf_free((void **)&w->cnt);
}

/* Collective. Everything after the grid exists: the matrix, its top-k eigenpairs, the
 * components (pca->components, unnormalised signs) and variances (pca->variance). */
static cf_status fit_grid(MPI_Comm comm, const struct cf_sl_grid *g, int gram, const double *xc,
                          int64_t nl, const int64_t *offs, int R, int rank, struct cf_pca *pca) {
  const int64_t N = g->n, d = pca->d, k = pca->k, n = pca->n, off = offs[rank];
  const int64_t w = min64(g->nb, N);
  struct pca_work wk = {0};
  size_t loc = (size_t)g->lld * (size_t)(g->nloc > 0 ? g->nloc : 1);
  cf_status st = CF_OK;
  if (loc > (size_t)INT_MAX)
    st = cf_err(CF_EINVAL,
                "pca: this rank's share of the %lld x %lld %s matrix exceeds ScaLAPACK's 32-bit "
                "indexing; use more ranks",
                (long long)N, (long long)N, gram ? "Gram" : "covariance");
  if (st == CF_OK) st = cf_alloc((void **)&wk.A, loc * sizeof(double), "pca matrix");
  if (st == CF_OK) st = cf_alloc((void **)&wk.Z, loc * sizeof(double), "pca eigenvectors");
  if (st == CF_OK) st = cf_alloc((void **)&wk.ev, (size_t)N * sizeof(double), "pca eigenvalues");
  if (st == CF_OK) st = cf_alloc((void **)&wk.panel, (size_t)(N * w) * sizeof(double), "pca panel");
  if (st == CF_OK && gram)
    st = cf_alloc((void **)&wk.rows, (size_t)(w * d) * sizeof(double), "pca gathered rows");
  if (st == CF_OK) st = cf_alloc((void **)&wk.cnt, (size_t)(2 * R) * sizeof(int64_t), "pca counts");
  if (st == CF_OK) st = cf_alloc((void **)&wk.U, (size_t)(N * k) * sizeof(double), "pca vectors");
  st = cf_metrics_agree(comm, st, "pca");
  if (st == CF_OK) {
    if (gram)
      st = assemble_gram(comm, g, xc, nl, off, d, offs, R, rank, wk.rows, wk.cnt, wk.cnt + R,
                         wk.panel, wk.A);
    else
      st = assemble_cov(comm, g, xc, nl, n, wk.panel, wk.A);
  }
  cf_free((void **)&wk.panel);
  cf_free((void **)&wk.rows);
  int m = 0;
  if (st == CF_OK) st = cf_sl_eig_top(comm, g, wk.A, (int)k, wk.ev, wk.Z, &m, "pca");
  cf_free((void **)&wk.A);
  if (st == CF_OK) st = gather_top(comm, g, wk.Z, m, k, wk.U);
  if (st == CF_OK) {
    /* Decreasing variances, clamped at 0, rank 0's values everywhere. */
    for (int64_t t = 0; t < k; t++)
      pca->variance[t] = wk.ev[m - 1 - t] > 0 ? wk.ev[m - 1 - t] : 0.0;
    int e = cf_mpi_bcast(pca->variance, (size_t)k, MPI_DOUBLE, 0, comm);
    if (e != MPI_SUCCESS) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Bcast");
  }
  if (st == CF_OK && !gram) {
    for (int64_t t = 0; t < k; t++)
      for (int64_t j = 0; j < d; j++)
        pca->components[t * d + j] = wk.U[j + t * N];
  } else if (st == CF_OK) {
    /* V (k, d) row-major = (d, k) column-major = Xc_loc^T U[off:off+nl, :], summed. */
    if (nl > 0)
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)d, (int)k, (int)nl, 1.0, xc,
                  (int)d, wk.U + off, (int)N, 0.0, pca->components, (int)d);
    else
      memset(pca->components, 0, (size_t)(k * d) * sizeof(double));
    st = cf_metrics_sum(comm, pca->components, k * d);
  }
  work_free(&wk);
  return st;
}

cf_status cf_pca_fit(MPI_Comm comm, const float *x, int64_t n_local, int64_t d, int64_t k,
                     const struct cf_pca_opts *opt, struct cf_pca *pca, float *z) {
  int rank, R;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &R));
  if (pca) memset(pca, 0, sizeof *pca);
  /* Arguments: checked everywhere, agreed, so that no rank enters a collective alone. */
  int64_t blk = opt && opt->block ? opt->block : CF_PCA_NB;
  int method = opt ? opt->method : CF_PCA_AUTO;
  int p = opt && opt->grid_rows ? opt->grid_rows : cf_sl_grid_rows(R);
  cf_status st = CF_OK;
  if (pca == NULL)
    st = cf_err(CF_EINVAL, "pca: NULL output");
  else if (d < 1 || d > INT_MAX / 1024)
    st = cf_err(CF_EINVAL, "pca: data has %lld genes; expected 1 <= d <= %d", (long long)d,
                INT_MAX / 1024);
  else if (n_local < 0 || n_local > INT_MAX)
    st = cf_err(CF_EINVAL, "pca: this rank's row count %lld is out of range", (long long)n_local);
  else if (n_local > 0 && x == NULL)
    st = cf_err(CF_EINVAL, "pca: NULL data");
  else if (k < 1 || k > d)
    st = cf_err(CF_EINVAL, "pca: %lld components asked of %lld genes; expected 1 <= k <= %lld",
                (long long)k, (long long)d, (long long)d);
  else if (method != CF_PCA_AUTO && method != CF_PCA_COVARIANCE && method != CF_PCA_GRAM)
    st = cf_err(CF_EINVAL, "pca: unknown method %d; expected auto (0), covariance (1) or gram (2)",
                method);
  else if (blk < 1 || blk > 1024)
    st = cf_err(CF_EINVAL, "pca: block size %lld; expected 1 to 1024", (long long)blk);
  else if (p < 1 || R % p != 0)
    st = cf_err(CF_ETOPO, "pca: %d grid rows do not divide %d ranks", p, R);
  CF_TRY(cf_metrics_agree(comm, st, "pca"));
  int64_t dk[4] = {d, -d, k, -k};
  CF_MPI(MPI_Allreduce(MPI_IN_PLACE, dk, 4, MPI_INT64_T, MPI_MAX, comm));
  CF_CHECK(dk[0] == d && -dk[1] == d, CF_EINVAL,
           "pca: the ranks pass different gene counts (%lld to %lld)", (long long)-dk[1],
           (long long)dk[0]);
  CF_CHECK(dk[2] == k && -dk[3] == k, CF_EINVAL,
           "pca: the ranks pass different component counts (%lld to %lld)", (long long)-dk[3],
           (long long)dk[2]);

  /* Row offsets of every rank, the total, the finite check. */
  int64_t *offs = NULL;
  st = cf_alloc((void **)&offs, (size_t)(R + 1) * sizeof(int64_t), "pca offsets");
  CF_TRY(cf_metrics_agree(comm, st, "pca"));
  st = CF_OK;
  {
    int e = MPI_Allgather(&n_local, 1, MPI_INT64_T, offs + 1, 1, MPI_INT64_T, comm);
    if (e != MPI_SUCCESS) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Allgather");
  }
  for (int r = 0; r < R; r++)
    offs[r + 1] += offs[r];
  const int64_t n = offs[R], off = offs[rank], nl = n_local;
  if (st == CF_OK && n < 2)
    st = cf_err(CF_EINVAL, "pca: %lld cells in all; PCA needs at least 2", (long long)n);
  else if (st == CF_OK && k > n)
    st = cf_err(CF_EINVAL, "pca: %lld components asked of %lld cells; expected k <= %lld",
                (long long)k, (long long)n, (long long)n);
  const int gram = method == CF_PCA_GRAM || (method == CF_PCA_AUTO && n < d);
  if (st == CF_OK && gram && n > INT_MAX / 1024)
    st = cf_err(CF_EINVAL, "pca: %lld cells in all; the Gram route takes at most %d", (long long)n,
                INT_MAX / 1024);
  if (st != CF_OK) {
    cf_free((void **)&offs);
    return st; /* every rank found the same */
  }
  for (int64_t i = 0; i < nl && st == CF_OK; i++)
    for (int64_t j = 0; j < d; j++)
      if (!isfinite(x[i * d + j])) {
        st = cf_err(CF_ECORRUPT, "pca: data has %s at row %lld (gene %lld)",
                    isnan(x[i * d + j]) ? "NaN" : "Inf", (long long)(off + i), (long long)j);
        break;
      }
  st = cf_metrics_agree(comm, st, "the pca finite-value check");

  /* Outputs, the centred rows, the projection buffer. */
  double *xc = NULL, *zbuf = NULL;
  size_t len = 0;
  if (st == CF_OK) st = cf_mul_size(&len, (size_t)nl, (size_t)d * sizeof(double), "pca rows");
  if (st == CF_OK) st = cf_alloc((void **)&xc, len, "pca rows");
  if (st == CF_OK) st = cf_alloc((void **)&pca->mean, (size_t)(d + 1) * sizeof(double), "pca mean");
  if (st == CF_OK)
    st = cf_alloc((void **)&pca->components, (size_t)(k * d) * sizeof(double), "pca components");
  if (st == CF_OK) st = cf_alloc((void **)&pca->variance, (size_t)k * sizeof(double), "pca var");
  if (st == CF_OK)
    st = cf_alloc((void **)&zbuf, (size_t)(CF_PCA_CHUNK * k) * sizeof(double), "pca projections");
  st = cf_metrics_agree(comm, st, "pca");

  /* Mean (rank-identical sums), centred rows, total variance (mean[d] holds the sum). */
  double *mu = pca ? pca->mean : NULL;
  if (st == CF_OK) {
    for (int64_t i = 0; i < nl; i++)
      for (int64_t j = 0; j < d; j++)
        mu[j] += (double)x[i * d + j];
    st = cf_metrics_sum(comm, mu, d);
  }
  if (st == CF_OK) {
    for (int64_t j = 0; j < d; j++)
      mu[j] /= (double)n;
    double ss = 0;
    for (int64_t i = 0; i < nl; i++)
      for (int64_t j = 0; j < d; j++) {
        double v = (double)x[i * d + j] - mu[j];
        xc[i * d + j] = v;
        ss += v * v;
      }
    mu[d] = ss;
    st = cf_metrics_sum(comm, mu + d, 1);
    pca->total_variance = mu[d] / (double)(n - 1);
    mu[d] = 0;
  }

  /* The distributed eigenproblem. */
  int64_t N = gram ? n : d;
  struct cf_sl_grid g;
  if (st == CF_OK) {
    pca->n = n;
    pca->d = d;
    pca->k = k;
    pca->method = gram ? CF_PCA_GRAM : CF_PCA_COVARIANCE;
    st = cf_sl_grid_open(comm, p, R / p, (int)N, (int)min64(blk, N), "pca", &g);
    if (st == CF_OK) {
      pca->grid_rows = g.p;
      pca->grid_cols = g.q;
      st = fit_grid(comm, &g, gram, xc, nl, offs, R, rank, pca);
      cf_sl_grid_close(&g);
    }
  }

  /* Null components, normalisation, signs (the same arithmetic on identical data on every
   * rank), then the projections of this rank's rows. */
  if (st == CF_OK) {
    double *V = pca->components, top = pca->variance[0];
    int64_t next = 0;
    for (int64_t t = 0; t < k; t++) {
      double *v = V + t * d;
      int null = pca->variance[t] <= CF_PCA_NULL_REL * top || top <= 0;
      pca->null_components += null;
      if (gram) {
        /* Xc^T u_t, made orthogonal to the components before it (for small variances the
         * rounding of G, eps l_1, tilts it by about eps l_1 / l_t), then normalised; a null
         * one, or one that loses half its length on the way, is completed instead. */
        double n0 = cblas_dnrm2((int)d, v, 1);
        double nr = null || !(n0 > 0) ? 0.0 : orthogonalise(V, t, d, v, zbuf);
        if (nr > 0.5 * n0 && nr > 0)
          cblas_dscal((int)d, 1.0 / nr, v, 1);
        else
          complete_null(V, t, d, &next, zbuf);
      }
      sign_normalise(v, d);
    }
    if (z != NULL) project(xc, nl, d, V, k, zbuf, z);
  }
  cf_free((void **)&xc);
  cf_free((void **)&zbuf);
  cf_free((void **)&offs);
  if (st != CF_OK && pca) cf_pca_release(pca);
  return st;
}

void cf_pca_release(struct cf_pca *pca) {
  if (pca == NULL) return;
  cf_free((void **)&pca->mean);
  cf_free((void **)&pca->components);
  cf_free((void **)&pca->variance);
  memset(pca, 0, sizeof *pca);
}

/* Local. The checks transform and inverse share. */
static cf_status check_model(const struct cf_pca *pca, int64_t n, const void *in, const void *out,
                             const char *what) {
  CF_CHECK(pca != NULL && pca->mean != NULL && pca->components != NULL && pca->d > 0 && pca->k > 0,
           CF_EINVAL, "pca %s: the model is not fitted", what);
  CF_CHECK(n >= 0 && n <= INT_MAX, CF_EINVAL, "pca %s: row count %lld is out of range", what,
           (long long)n);
  CF_CHECK(n == 0 || (in != NULL && out != NULL), CF_EINVAL, "pca %s: NULL rows", what);
  return CF_OK;
}

cf_status cf_pca_transform(const struct cf_pca *pca, const float *x, int64_t n, float *z) {
  CF_TRY(check_model(pca, n, x, z, "transform"));
  const int64_t d = pca->d, k = pca->k, c = min64(n, CF_PCA_CHUNK);
  if (n == 0) return CF_OK;
  double *buf = NULL;
  CF_TRY(cf_alloc((void **)&buf, (size_t)(c * (d + k)) * sizeof(double), "pca transform"));
  for (int64_t i0 = 0; i0 < n; i0 += c) {
    int64_t m = min64(c, n - i0);
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < d; j++)
        buf[i * d + j] = (double)x[(i0 + i) * d + j] - pca->mean[j];
    project(buf, m, d, pca->components, k, buf + c * d, z + i0 * k);
  }
  cf_free((void **)&buf);
  return CF_OK;
}

cf_status cf_pca_inverse(const struct cf_pca *pca, const float *z, int64_t n, float *x) {
  CF_TRY(check_model(pca, n, z, x, "inverse"));
  const int64_t d = pca->d, k = pca->k, c = min64(n, CF_PCA_CHUNK);
  if (n == 0) return CF_OK;
  double *buf = NULL;
  CF_TRY(cf_alloc((void **)&buf, (size_t)(c * (d + k)) * sizeof(double), "pca inverse"));
  double *zb = buf + c * d;
  for (int64_t i0 = 0; i0 < n; i0 += c) {
    int64_t m = min64(c, n - i0);
    for (int64_t e = 0; e < m * k; e++)
      zb[e] = (double)z[i0 * k + e];
    /* (m, d) = zb (m, k) V (k, d), then + mean. */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)k, 1.0, zb, (int)k,
                pca->components, (int)d, 0.0, buf, (int)d);
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < d; j++)
        x[(i0 + i) * d + j] = (float)(buf[i * d + j] + pca->mean[j]);
  }
  cf_free((void **)&buf);
  return CF_OK;
}
