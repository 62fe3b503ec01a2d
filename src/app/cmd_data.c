/* cmd_data.c: `calmflow data` — either draw -data_n points of a synthetic distribution into an
 * HDF5 file (/x, n x D; point i is the draw {seed, CF_RNG_DATA, 0, i}, the same at any rank
 * count), or, with -data_h5ad FILE, preprocess a single-cell expression matrix into a PCA
 * point set (include/calmflow/scprep.h for the steps, docs/data-format.md for the output). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "calmflow/h5ad.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/pca.h"
#include "calmflow/scprep.h"

/* The options of the .h5ad route besides -data_h5ad itself. */
static const char *const g_h5ad_opts[] = {"data_min_genes", "data_min_cells", "data_normalize",
                                          "data_log1p",     "data_hvg",       "data_pca",
                                          "data_obs"};
#define N_H5AD_OPTS ((int)(sizeof g_h5ad_opts / sizeof g_h5ad_opts[0]))

/* Everything the .h5ad route holds, released in one place whatever failed. */
struct h5ad_run {
  struct cf_h5ad a;
  int open;
  struct cf_scprep p;
  char **cols;
  int64_t ncols;
  struct cf_scprep_labels l;
  float *x; /* (local_cells, G) gene space */
  float *z; /* (local_cells, K) PCA coordinates */
  struct cf_pca pca;
};

static void h5ad_release(struct h5ad_run *r) {
  if (r->open) cf_h5ad_close(&r->a);
  r->open = 0;
  cf_scprep_labels_release(&r->l);
  cf_free((void **)&r->cols);
  cf_scprep_release(&r->p);
  cf_free((void **)&r->x);
  cf_free((void **)&r->z);
  cf_pca_release(&r->pca);
}

/* Collective (rank 0 looks, then broadcasts): does `out` name the same file as `in`? */
static cf_status check_not_input(MPI_Comm comm, int rank, const char *in, const char *out) {
  int same = strcmp(in, out) == 0;
  if (rank == 0 && !same) {
    struct stat si, so;
    same = stat(in, &si) == 0 && stat(out, &so) == 0 && si.st_dev == so.st_dev &&
           si.st_ino == so.st_ino;
  }
  CF_MPI(MPI_Bcast(&same, 1, MPI_INT, 0, comm));
  CF_CHECK(!same, CF_EINVAL,
           "option -data_out: '%s' is the input file -data_h5ad, expected "
           "another file",
           out);
  return CF_OK;
}

/* What /x's gene space is, as a formula of the raw value x (for the file's attributes). */
static void gene_space_text(const struct cf_scprep_opts *so, const char *norm, char *buf,
                            size_t cap) {
  char inner[128];
  if (so->normalize > 0)
    snprintf(inner, sizeof inner, "x * %s / total", norm);
  else
    snprintf(inner, sizeof inner, "x");
  snprintf(buf, cap, "%s%s%s%s", so->log1p ? "log1p(" : "", inner, so->log1p ? ")" : "",
           so->normalize > 0 ? ", total = the cell's sum over all genes of the file" : "");
}

static double seconds_max(MPI_Comm comm, double t) {
  double m = t;
  MPI_Allreduce(&t, &m, 1, MPI_DOUBLE, MPI_MAX, comm);
  return m;
}

static cf_status h5ad_body(MPI_Comm comm, int rank, const struct cf_opts *o, struct h5ad_run *r) {
  const char *synthetic[] = {"data_name", "data_dim", "data_n"};
  for (int i = 0; i < 3; i++)
    CF_CHECK(!cf_opt_given(o, synthetic[i]), CF_EINVAL,
             "option -%s: not used with -data_h5ad (the points come from the file)", synthetic[i]);
  const char *path = cf_opt_str(o, "data_h5ad"), *out = cf_opt_str(o, "data_out");
  const char *obs = cf_opt_str(o, "data_obs");
  struct cf_scprep_opts so;
  memset(&so, 0, sizeof so);
  const int64_t big = (int64_t)1 << 40;
  int64_t k;
  CF_TRY(cf_opt_int(o, "data_min_genes", 0, big, &so.min_genes));
  CF_TRY(cf_opt_int(o, "data_min_cells", 0, big, &so.min_cells));
  CF_TRY(cf_opt_real(o, "data_normalize", 0, 1e12, &so.normalize));
  CF_TRY(cf_opt_bool(o, "data_log1p", &so.log1p));
  CF_TRY(cf_opt_int(o, "data_hvg", 0, big, &so.hvg));
  CF_TRY(cf_opt_int(o, "data_pca", 0, 1 << 20, &k));
  CF_CHECK(out[0] != '\0', CF_EINVAL, "option -data_out: expected a file name");
  CF_TRY(check_not_input(comm, rank, path, out));

  double t0 = MPI_Wtime();
  CF_TRY(cf_h5ad_open(&r->a, comm, path));
  r->open = 1;
  const int64_t n_obs = r->a.n_obs, n_var = r->a.n_var;
  CF_CHECK(k <= n_obs && k <= n_var, CF_EINVAL,
           "option -data_pca: %lld components, expected at most min(cells, genes) = "
           "min(%lld, %lld) of '%s'",
           (long long)k, (long long)n_obs, (long long)n_var, path);
  CF_TRY(cf_scprep_obs_columns(&r->a, obs, "-data_obs", &r->cols, &r->ncols));
  CF_TRY(cf_scprep_scan(&r->a, &so, &r->p));
  const struct cf_scprep *p = &r->p;
  CF_CHECK(p->n_cells >= 2, CF_EINVAL,
           "option -data_min_genes %lld leaves %lld of the %lld cells of '%s', expected at "
           "least 2",
           (long long)so.min_genes, (long long)p->n_cells, (long long)n_obs, path);
  CF_CHECK(p->n_genes >= 1, CF_EINVAL,
           "option -data_min_cells %lld leaves none of the %lld genes of '%s' (each expressed "
           "in fewer of the %lld kept cells)",
           (long long)so.min_cells, (long long)n_var, path, (long long)p->n_cells);
  CF_CHECK(k <= p->n_cells && k <= p->n_genes, CF_EINVAL,
           "option -data_pca: %lld components, expected at most min(cells, genes) = "
           "min(%lld, %lld) after the filters and gene selection",
           (long long)k, (long long)p->n_cells, (long long)p->n_genes);
  double t_scan = seconds_max(comm, MPI_Wtime() - t0);
  t0 = MPI_Wtime();
  CF_TRY(cf_scprep_read(&r->a, &so, p, &r->x));
  CF_TRY(cf_scprep_labels_read(&r->a, r->cols, r->ncols, &r->l));
  cf_h5ad_close(&r->a);
  r->open = 0;
  double t_read = seconds_max(comm, MPI_Wtime() - t0);

  const int64_t g = p->n_genes;
  struct cf_scprep_pca po;
  memset(&po, 0, sizeof po);
  double t_pca = 0;
  if (k > 0) {
    t0 = MPI_Wtime();
    size_t zb = (size_t)(p->local_cells > 0 ? p->local_cells : 1) * (size_t)k * sizeof(float);
    CF_TRY(cf_agree(comm, cf_alloc((void **)&r->z, zb, "PCA coordinates")));
    struct cf_pca_opts popt; /* the defaults: the Gram route when cells < genes */
    memset(&popt, 0, sizeof popt);
    CF_TRY(cf_pca_fit(comm, r->x, p->local_cells, g, k, &popt, &r->pca, r->z));
    po.k = k;
    po.mean = r->pca.mean;
    po.components = r->pca.components;
    po.variance = r->pca.variance;
    po.total_variance = r->pca.total_variance;
    t_pca = seconds_max(comm, MPI_Wtime() - t0);
  }

  /* attributes: every option of this route as resolved, the source, how the values were made */
  char space[256];
  gene_space_text(&so, cf_opt_str(o, "data_normalize"), space, sizeof space);
  const char *attrs[2 * (N_H5AD_OPTS + 8)];
  int na = 0;
  attrs[2 * na] = "source";
  attrs[2 * na++ + 1] = path;
  attrs[2 * na] = "producer";
  attrs[2 * na++ + 1] = "calmflow data -data_h5ad";
  attrs[2 * na] = "data_h5ad";
  attrs[2 * na++ + 1] = path;
  for (int i = 0; i < N_H5AD_OPTS; i++) {
    attrs[2 * na] = g_h5ad_opts[i];
    attrs[2 * na++ + 1] = cf_opt_str(o, g_h5ad_opts[i]);
  }
  attrs[2 * na] = "data_out";
  attrs[2 * na++ + 1] = out;
  attrs[2 * na] = "gene_space";
  attrs[2 * na++ + 1] = space;
  attrs[2 * na] = "hvg_rule";
  attrs[2 * na++ + 1] =
      "largest sample variance (divisor n - 1) of the gene-space values over the kept cells, "
      "among the genes expressed in at least data_min_cells kept cells; ties to the lower gene "
      "index; listed in the file's gene order";
  attrs[2 * na] = "pca_method";
  attrs[2 * na++ + 1] = k == 0 ? "none" : r->pca.method == CF_PCA_GRAM ? "gram" : "covariance";
  t0 = MPI_Wtime();
  CF_TRY(cf_scprep_write(comm, out, p, &r->l, k > 0 ? r->z : r->x, k > 0 ? k : g,
                         k > 0 ? &po : NULL, attrs, na));
  double t_write = seconds_max(comm, MPI_Wtime() - t0);

  if (rank == 0) {
    printf("wrote %lld cells x %lld %s to %s (cells: %lld of %lld; genes: %lld of %lld, %lld "
           "left by -data_min_cells %lld; %lld obs columns)\n",
           (long long)p->n_cells, (long long)(k > 0 ? k : g), k > 0 ? "PCA coordinates" : "genes",
           out, (long long)p->n_cells, (long long)n_obs, (long long)g, (long long)n_var,
           (long long)p->n_expressed, (long long)so.min_cells, (long long)r->ncols);
    if (k > 0) {
      printf("explained variance ratio (of %lld genes' total %.6g):", (long long)g,
             r->pca.total_variance);
      double cum = 0;
      for (int64_t i = 0; i < k && i < 10; i++) {
        double f = r->pca.total_variance > 0 ? r->pca.variance[i] / r->pca.total_variance : 0;
        cum += f;
        printf(" PC%lld %.4f", (long long)(i + 1), f);
      }
      double all = 0;
      for (int64_t i = 0; i < k; i++)
        all += r->pca.total_variance > 0 ? r->pca.variance[i] / r->pca.total_variance : 0;
      printf("; first %lld %.4f, all %lld %.4f\n", (long long)(k < 10 ? k : 10), cum, (long long)k,
             all);
    }
    printf("seconds: scan %.3f, read %.3f, pca %.3f, write %.3f\n", t_scan, t_read, t_pca, t_write);
  }
  return CF_OK;
}

static cf_status cmd_h5ad(MPI_Comm comm, int rank, const struct cf_opts *o) {
  struct h5ad_run *r = NULL;
  CF_TRY(cf_alloc((void **)&r, sizeof *r, "preprocessing state"));
  r->a.file = -1;
  cf_status st = h5ad_body(comm, rank, o, r);
  h5ad_release(r);
  cf_free((void **)&r);
  return st;
}

static cf_status cmd_synthetic(MPI_Comm comm, int rank, const struct cf_opts *o) {
  for (int i = 0; i < N_H5AD_OPTS; i++)
    CF_CHECK(!cf_opt_given(o, g_h5ad_opts[i]), CF_EINVAL,
             "option -%s: only used with -data_h5ad FILE", g_h5ad_opts[i]);
  int64_t dim, n, seed;
  CF_TRY(cf_opt_int(o, "data_dim", 1, (int64_t)1 << 24, &dim));
  CF_TRY(cf_opt_int(o, "data_n", 1, (int64_t)1 << 40, &n));
  CF_TRY(cf_opt_int(o, "seed", 0, INT64_MAX, &seed));
  const char *name = cf_opt_str(o, "data_name"), *out = cf_opt_str(o, "data_out");
  CF_CHECK(out[0] != '\0', CF_EINVAL, "option -data_out: expected a file name");
  struct cf_dist d;
  CF_TRY(cf_dist_by_name(&d, name, dim, "-data_name"));
  float *x = NULL;
  size_t bytes;
  CF_TRY(cf_mul_size(&bytes, (size_t)n * (size_t)dim, sizeof(float), "-data_n x -data_dim"));
  CF_TRY(cf_alloc((void **)&x, bytes, "generated points"));
  for (int64_t i = 0; i < n; i++) {
    struct cf_rng r = {(uint64_t)seed, CF_RNG_DATA, 0, (uint64_t)i};
    cf_dist_draw(&d, &r, x + i * dim);
  }
  char sseed[32], sdim[32];
  snprintf(sseed, sizeof sseed, "%lld", (long long)seed);
  snprintf(sdim, sizeof sdim, "%lld", (long long)dim);
  const char *attrs[] = {"generator", name, "seed",     sseed,
                         "dim",       sdim, "producer", "calmflow data"};
  cf_status st = cf_h5_write_points(comm, out, "/x", x, n, dim, attrs, 4);
  cf_free((void **)&x);
  CF_TRY(st);
  if (rank == 0)
    printf("wrote %lld x %lld points of '%s' to %s\n", (long long)n, (long long)dim, name, out);
  return CF_OK;
}

cf_status cf_cmd_data(MPI_Comm comm) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  struct cf_opts *o = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  cf_status st = cf_opts_load(o, NULL, CMD_DATA);
  if (st == CF_OK) st = cf_opts_check_unknown("data");
  if (st == CF_OK)
    st = cf_opt_str(o, "data_h5ad")[0] != '\0' ? cmd_h5ad(comm, rank, o)
                                               : cmd_synthetic(comm, rank, o);
  cf_free((void **)&o);
  CF_TRY(st);
  return CF_OK;
}
