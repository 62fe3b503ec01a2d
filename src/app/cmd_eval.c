/* cmd_eval.c: `calmflow eval` — distances between two point sets (HDF5 /x) as JSON:
 * exact W2 and W1, RBF MMD (gamma 2 and multi-bandwidth), energy distance and optionally the
 * noise floor W2(ref, b) of a second independent data sample, computed on rank 0; and the
 * collective metrics, computed by all ranks together: the Frechet distance of the fitted
 * Gaussians (ScaLAPACK, the points split over the ranks) and entropic OT (Sinkhorn,
 * the cost rows split over the ranks). Every rank reads all points.
 * With -eval_pca FILE (a `calmflow data` file, docs/data-format.md) the points are PCA
 * coordinates of that file: rank 0 also maps the two mean points to its gene space
 * (v = mean + z components) and reports the R^2 of mean expression (cf_r2_mean_expression,
 * a predicting b) over all genes and over the -eval_r2_top genes of largest variance over the
 * file's own cells (its /x through the same map). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/metrics.h"

/* The gene-space inputs of the R^2 of mean expression (-eval_pca). */
struct gene_map {
  float *comp;  /* (k, g) /pca/components */
  float *mean;  /* (g) /pca/mean */
  float *cells; /* (n, k) the file's /x */
  int64_t k, g, n;
};

/* Local. Free what gene_map_read allocated (harmless to repeat). */
static void gene_map_release(struct gene_map *m) {
  cf_free((void **)&m->comp);
  cf_free((void **)&m->mean);
  cf_free((void **)&m->cells);
}

/* Collective on comm. Read the PCA of -eval_pca for points of dimension k; on failure *m holds
 * nothing. */
static cf_status gene_map_read(MPI_Comm comm, const char *path, int64_t k, struct gene_map *m) {
  memset(m, 0, sizeof *m);
  int64_t kk, dx;
  cf_status st = cf_h5_read_points(comm, path, "/pca/components", 0, &m->comp, &kk, &m->g);
  if (st == CF_OK && kk != k)
    st = cf_err(CF_EINVAL,
                "option -eval_pca: '%s' has %lld principal components; the point sets have D = "
                "%lld",
                path, (long long)kk, (long long)k);
  m->k = k;
  if (st == CF_OK) st = cf_h5_read_points(comm, path, "/x", k, &m->cells, &m->n, &dx);
  int64_t g = 0;
  if (st == CF_OK) st = cf_h5_read_vector(comm, path, "/pca/mean", m->g, &m->mean, &g);
  if (st != CF_OK) gene_map_release(m);
  return st;
}

/* Local. v (g) = mean + zbar components, zbar the mean of the n points x (n, k). */
static void mean_expression(const struct gene_map *m, const float *x, int64_t n, double *zbar,
                            double *v) {
  for (int64_t c = 0; c < m->k; c++)
    zbar[c] = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t c = 0; c < m->k; c++)
      zbar[c] += x[i * m->k + c];
  for (int64_t c = 0; c < m->k; c++)
    zbar[c] /= (double)n;
  for (int64_t j = 0; j < m->g; j++)
    v[j] = m->mean[j];
  for (int64_t c = 0; c < m->k; c++)
    for (int64_t j = 0; j < m->g; j++)
      v[j] += zbar[c] * m->comp[c * m->g + j];
}

/* qsort order of gene indices: decreasing g_sort_key, ties to the lower index. */
static const double *g_sort_key;
static int by_key_desc(const void *pa, const void *pb) {
  int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
  if (g_sort_key[a] != g_sort_key[b]) return g_sort_key[a] < g_sort_key[b] ? 1 : -1;
  return a < b ? -1 : (a > b);
}

/* Local (rank 0). r2[0]: R^2 of the mean expression of a against b over all genes; r2[1]:
 * over the top genes of largest variance of the file's cells in gene space (NaN when top is
 * 0). The gene-space variance of cell set Z is that of Z components (the mean drops out). */
static cf_status r2_gene_space(const struct gene_map *m, const float *a, int64_t na, const float *b,
                               int64_t nb, int64_t top, double *r2) {
  double *buf = NULL;
  int64_t *idx = NULL;
  int64_t k = m->k, g = m->g;
  CF_CHECK(top == 0 || (top <= g && m->n >= 2), CF_EINVAL,
           "option -eval_r2_top %lld: the -eval_pca file has %lld genes and %lld cells",
           (long long)top, (long long)g, (long long)m->n);
  CF_TRY(cf_alloc((void **)&buf, (size_t)(4 * g + 2 * k) * sizeof *buf, "r2 buffers"));
  double *pred = buf, *real = pred + g, *var = real + g, *row = var + g, *zbar = row + g;
  mean_expression(m, a, na, zbar, pred);
  mean_expression(m, b, nb, zbar, real);
  cf_status st = cf_r2_mean_expression(pred, real, g, NULL, 0, &r2[0]);
  r2[1] = NAN;
  if (st == CF_OK && top > 0) {
    double *zc = zbar; /* the cells' mean point, then centred rows through the components */
    for (int64_t c = 0; c < k; c++)
      zc[c] = 0;
    for (int64_t i = 0; i < m->n; i++)
      for (int64_t c = 0; c < k; c++)
        zc[c] += m->cells[i * k + c] / (double)m->n;
    for (int64_t j = 0; j < g; j++)
      var[j] = 0;
    for (int64_t i = 0; i < m->n; i++) {
      for (int64_t j = 0; j < g; j++)
        row[j] = 0;
      for (int64_t c = 0; c < k; c++) {
        double z = m->cells[i * k + c] - zc[c];
        for (int64_t j = 0; j < g; j++)
          row[j] += z * m->comp[c * g + j];
      }
      for (int64_t j = 0; j < g; j++)
        var[j] += row[j] * row[j];
    }
    st = cf_alloc((void **)&idx, (size_t)g * sizeof *idx, "gene order");
    if (st == CF_OK) {
      for (int64_t j = 0; j < g; j++)
        idx[j] = j;
      g_sort_key = var;
      qsort(idx, (size_t)g, sizeof *idx, by_key_desc);
      st = cf_r2_mean_expression(pred, real, g, idx, top, &r2[1]);
    }
  }
  cf_free((void **)&idx);
  cf_free((void **)&buf);
  return st;
}

/* Append ",\n  \"key\": value" with 17 significant digits (null when not finite). */
static int put_num(char *js, size_t cap, int n, const char *key, double v) {
  if (n < 0 || (size_t)n >= cap) return n;
  if (isfinite(v)) return n + snprintf(js + n, cap - (size_t)n, ",\n  \"%s\": %.17g", key, v);
  return n + snprintf(js + n, cap - (size_t)n, ",\n  \"%s\": null", key);
}

/* Local. The Sinkhorn options of `calmflow eval`. */
static cf_status sinkhorn_opts(const struct cf_opts *o, struct cf_sinkhorn_opts *so) {
  cf_sinkhorn_defaults(so);
  double eps_abs, mib;
  int64_t iters;
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_eps", 1e-6, 1e6, &so->eps));
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_eps_abs", 0, 1e300, &eps_abs));
  if (eps_abs > 0) {
    so->eps = eps_abs;
    so->eps_absolute = 1;
  }
  CF_TRY(cf_opt_int(o, "eval_sinkhorn_iters", 1, 100000000, &iters));
  so->max_iter = iters;
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_tol", 0, 1, &so->tol));
  CF_TRY(cf_opt_bool(o, "eval_sinkhorn_debias", &so->debias));
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_mem", 0, 1048576, &mib));
  so->cache_bytes = (size_t)(mib * 1048576.0);
  return CF_OK;
}

/* Collective on comm. The collective metrics into fr (when do_frechet) and sk (when
 * sk_max > 0). a, b are identical on every rank. */
static cf_status collective_metrics(MPI_Comm comm, const struct cf_sinkhorn_opts *so,
                                    const float *a, int64_t na, const float *b, int64_t nb,
                                    int64_t d, int do_frechet, int64_t sk_max,
                                    struct cf_frechet *fr, struct cf_sinkhorn *sk) {
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  if (do_frechet) {
    int64_t alo = na * rank / size, ahi = na * (rank + 1) / size;
    int64_t blo = nb * rank / size, bhi = nb * (rank + 1) / size;
    CF_TRY(cf_frechet(comm, a + alo * d, ahi - alo, b + blo * d, bhi - blo, d, NULL, fr));
  }
  if (sk_max > 0) {
    CF_TRY(
        cf_sinkhorn(comm, a, na < sk_max ? na : sk_max, b, nb < sk_max ? nb : sk_max, d, so, sk));
    if (rank == 0 && !sk->converged)
      fprintf(stderr,
              "calmflow: warning: Sinkhorn stopped at the iteration cap (%lld) with marginal "
              "error %.3g > -eval_sinkhorn_tol %g (sinkhorn_converged = 0 in the JSON)\n",
              (long long)so->max_iter, sk->err, so->tol);
  }
  return CF_OK;
}

cf_status cf_cmd_eval(MPI_Comm comm) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  struct cf_opts *o = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  CF_TRY(cf_opts_load(o, NULL, CMD_EVAL));
  CF_TRY(cf_opts_check_unknown("eval"));
  const char *fa = cf_opt_str(o, "eval_a"), *fb = cf_opt_str(o, "eval_b");
  const char *fr = cf_opt_str(o, "eval_ref"), *out = cf_opt_str(o, "eval_out");
  CF_CHECK(fa[0] != '\0', CF_EINVAL, "option -eval_a: required (an HDF5 file with /x, n x D)");
  CF_CHECK(fb[0] != '\0', CF_EINVAL, "option -eval_b: required (an HDF5 file with /x, n x D)");
  int64_t max_exact, sk_max;
  int do_frechet;
  CF_TRY(cf_opt_int(o, "eval_max_exact", 1, 100000, &max_exact));
  CF_TRY(cf_opt_bool(o, "eval_frechet", &do_frechet));
  CF_TRY(cf_opt_int(o, "eval_sinkhorn_max", 0, 1000000000, &sk_max));
  struct cf_sinkhorn_opts so;
  CF_TRY(sinkhorn_opts(o, &so));
  const char *fp = cf_opt_str(o, "eval_pca");
  int64_t r2_top;
  CF_TRY(cf_opt_int(o, "eval_r2_top", 0, 100000000, &r2_top));
  float *a = NULL, *b = NULL, *r = NULL;
  int64_t na, nb, nr = 0, da, db, dr;
  CF_TRY(cf_app_check_finished(comm, fa, "-eval_a")); /* not a failed sampling run's samples */
  CF_TRY(cf_app_check_finished(comm, fb, "-eval_b"));
  if (fr[0] != '\0') CF_TRY(cf_app_check_finished(comm, fr, "-eval_ref"));
  CF_TRY(cf_h5_read_points(comm, fa, "/x", 0, &a, &na, &da));
  CF_TRY(cf_h5_read_points(comm, fb, "/x", da, &b, &nb, &db));
  if (fr[0] != '\0') CF_TRY(cf_h5_read_points(comm, fr, "/x", da, &r, &nr, &dr));
  struct gene_map gm;
  memset(&gm, 0, sizeof gm);
  if (fp[0] != '\0') CF_TRY(gene_map_read(comm, fp, da, &gm));

  /* The collective metrics first (every rank), then rank 0's exact ones. */
  struct cf_frechet fm;
  struct cf_sinkhorn sk;
  memset(&fm, 0, sizeof fm);
  memset(&sk, 0, sizeof sk);
  CF_TRY(collective_metrics(comm, &so, a, na, b, nb, da, do_frechet, sk_max, &fm, &sk));

  struct cf_metrics m;
  double floor_w2 = NAN, res[8], r2[2] = {NAN, NAN};
  cf_status st = CF_OK;
  if (rank == 0) {
    st = cf_metrics_compute(a, na, b, nb, da, max_exact, &m);
    if (st == CF_OK && r) {
      int64_t n = nr < nb ? nr : nb;
      if (n > max_exact) n = max_exact;
      st = cf_wasserstein_exact(r, b, n, da, 2, &floor_w2);
    }
    if (st == CF_OK && gm.comp) st = r2_gene_space(&gm, a, na, b, nb, r2_top, r2);
    res[0] = m.w2, res[1] = m.w1, res[2] = m.mmd2_rbf, res[3] = m.mmd2_rbf_multi;
    res[4] = m.energy, res[5] = (double)m.n_ot, res[6] = floor_w2, res[7] = st;
  }
  CF_MPI(MPI_Bcast(res, 8, MPI_DOUBLE, 0, comm));
  if (rank != 0 && res[7] != 0) return cf_err(CF_EREMOTE, "evaluation failed on rank 0");
  CF_TRY(st);
  if (rank == 0) {
    char js[4096];
    int n = snprintf(js, sizeof js,
                     "{\n  \"w2\": %.9g,\n  \"w1\": %.9g,\n  \"mmd2_rbf\": %.9g,\n"
                     "  \"mmd2_rbf_multi\": %.9g,\n  \"energy\": %.9g,\n  \"n_a\": %lld,\n"
                     "  \"n_b\": %lld,\n  \"n_ot\": %lld,\n  \"dim\": %lld",
                     m.w2, m.w1, m.mmd2_rbf, m.mmd2_rbf_multi, m.energy, (long long)na,
                     (long long)nb, (long long)m.n_ot, (long long)da);
    if (r)
      n += snprintf(js + n, sizeof js - (size_t)n, ",\n  \"w2_floor\": %.9g,\n  \"w2_ratio\": %.9g",
                    floor_w2, m.w2 / floor_w2);
    /* The collective metrics: 17 significant digits, so runs at different rank counts can be
     * compared to the last bits. */
    if (do_frechet) n = put_num(js, sizeof js, n, "frechet", fm.value);
    if (gm.comp) {
      n = put_num(js, sizeof js, n, "r2_mean_expr", r2[0]);
      if (r2_top > 0) n = put_num(js, sizeof js, n, "r2_mean_expr_top", r2[1]);
      if (n >= 0 && (size_t)n < sizeof js)
        n += snprintf(js + n, sizeof js - (size_t)n, ",\n  \"r2_genes\": %lld,\n  \"r2_top\": %lld",
                      (long long)gm.g, (long long)r2_top);
    }
    if (sk_max > 0) {
      n = put_num(js, sizeof js, n, "sinkhorn_w2", sk.w2);
      n = put_num(js, sizeof js, n, "sinkhorn_div", sk.divergence); /* null without debias */
      n = put_num(js, sizeof js, n, "sinkhorn_eps", sk.eps);
      if (n >= 0 && (size_t)n < sizeof js)
        n += snprintf(js + n, sizeof js - (size_t)n,
                      ",\n  \"sinkhorn_iters\": %lld,\n  \"sinkhorn_converged\": %d,\n"
                      "  \"n_sinkhorn_a\": %lld,\n  \"n_sinkhorn_b\": %lld",
                      (long long)sk.iters, sk.converged, (long long)(na < sk_max ? na : sk_max),
                      (long long)(nb < sk_max ? nb : sk_max));
    }
    if (n >= 0 && (size_t)n < sizeof js) snprintf(js + n, sizeof js - (size_t)n, "\n}\n");
    if (out[0] == '\0') {
      fputs(js, stdout);
      fflush(stdout);
    } else {
      st = cf_write_text_atomic(out, js);
    }
  }
  int bad = st != CF_OK;
  CF_MPI(MPI_Bcast(&bad, 1, MPI_INT, 0, comm));
  if (bad && rank != 0) return cf_err(CF_EREMOTE, "rank 0 could not write the result");
  CF_TRY(st);
  cf_free((void **)&a);
  cf_free((void **)&b);
  cf_free((void **)&r);
  gene_map_release(&gm);
  cf_free((void **)&o);
  return CF_OK;
}
