/* test_h5ad.c: the .h5ad reader under MPI against the committed fixtures in tests/data/h5ad
 * (made by tests/reference/make_h5ad_fixtures.py, expected values in expected.txt): X of every
 * fixture (CSR int32 / int64, CSC, dense, float32 / float64 / integer values, the old h5sparse
 * layout) read as each rank's partition, as a column subset, as a given range, with uneven
 * ranges, in tiny pieces and through the streaming scan; obs / var columns as strings, numbers
 * and categoricals; and the one-line errors for unsupported encodings and malformed data.
 * Then, when present, the real data set ../shared/data/hsmm/hsmm.h5ad (271 x 47192 CSR): its
 * checksums from the data's README, per-gene log1p variances through the scan, a read of the
 * 2000 most variable genes, obs / var columns, and timings.
 *
 * Usage: test_h5ad [FIXTURE_DIR [HSMM.h5ad]]  (default $CF_SOURCE_DIR/tests/data/h5ad and
 * $CF_SOURCE_DIR/../shared/data/hsmm/hsmm.h5ad). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calmflow/h5ad.h"
#include "calmflow/mem.h"
#include "cf_test_mpi.h"

static int rank, size;
static MPI_Comm comm;

#define MAXF 70000

/* Split line at tabs in place into f[0..n-1]. */
static int split(char *line, char **f, int maxf) {
  int n = 0;
  char *p = line;
  size_t l = strlen(p);
  while (l > 0 && (p[l - 1] == '\n' || p[l - 1] == '\r'))
    p[--l] = '\0';
  f[n++] = p;
  for (; *p && n < maxf; p++)
    if (*p == '\t') {
      *p = '\0';
      f[n++] = p + 1;
    }
  return n;
}

/* ---- fixture state ---- */

struct fixture {
  char name[256];
  int opened, told; /* told: "did not open" was reported */
  cf_status open_st;
  char open_msg[1024];
  struct cf_h5ad a;
  int meta;
  int64_t n_obs, n_var;
  float *x; /* (n_obs, n_var) expected */
};

/* Compare got (hi - lo, ncols) with the expected rows [lo, hi), columns cols (NULL: all). */
static void compare_rows(const struct fixture *f, const float *got, int64_t lo, int64_t hi,
                         const int64_t *cols, int64_t ncols, const char *what) {
  int bad = 0;
  for (int64_t i = lo; i < hi; i++)
    for (int64_t c = 0; c < ncols; c++) {
      int64_t j = cols ? cols[c] : c;
      float want = f->x[i * f->n_var + j], have = got[(i - lo) * ncols + c];
      if (want != have && bad++ < 4)
        EXPECT(0, "%s %s: row %lld column %lld: got %.9g, expected %.9g", f->name, what,
               (long long)i, (long long)j, have, want);
    }
  EXPECT(bad == 0, "%s %s: %d values differ", f->name, what, bad);
}

static void read_and_compare(struct fixture *f, int64_t lo, int64_t hi, const int64_t *cols,
                             int64_t ncols, const char *what) {
  float *x = NULL;
  int64_t nc = -1;
  cf_status st = cf_h5ad_read_x(&f->a, lo, hi, cols, ncols, &x, &nc);
  EXPECT(st == CF_OK, "%s %s: read_x failed: %s", f->name, what, cf_errmsg());
  cf_err_clear();
  if (st == CF_OK) {
    EXPECT(nc == (cols ? ncols : f->n_var), "%s %s: %lld columns", f->name, what, (long long)nc);
    compare_rows(f, x, lo, hi, cols, cols ? ncols : f->n_var, what);
  }
  cf_free((void **)&x);
}

struct scan_ctx {
  const struct fixture *f;
  const int64_t *cols;
  int64_t ncols, rows, expect_row;
  double *sum; /* (ncols) */
  int bad;
};

static cf_status scan_cb(void *vctx, int64_t row0, int64_t nrows, int64_t ncols,
                         const float *block) {
  struct scan_ctx *c = vctx;
  if (row0 != c->expect_row || ncols != c->ncols) c->bad++;
  c->expect_row = row0 + nrows;
  c->rows += nrows;
  compare_rows(c->f, block, row0, row0 + nrows, c->cols, ncols, "scan block");
  for (int64_t i = 0; i < nrows; i++)
    for (int64_t j = 0; j < ncols; j++)
      c->sum[j] += block[i * ncols + j];
  return CF_OK;
}

static cf_status failing_cb(void *ctx, int64_t row0, int64_t nrows, int64_t ncols,
                            const float *block) {
  return cf_err(CF_EINVAL, "callback stops at row %lld", (long long)row0);
}

static void check_scan(struct fixture *f, int64_t block_rows, const int64_t *cols, int64_t ncols,
                       int64_t max_read) {
  int64_t lo, hi, nc = cols ? ncols : f->n_var;
  cf_h5ad_rows(&f->a, &lo, &hi);
  struct scan_ctx c = {f, cols, nc, 0, lo, NULL, 0};
  c.sum = calloc((size_t)nc + 1, sizeof(double));
  double *all = calloc((size_t)nc + 1, sizeof(double));
  f->a.max_read = max_read;
  EXPECT_OK(cf_h5ad_scan(&f->a, lo, hi, block_rows, cols, ncols, scan_cb, &c), "scan");
  f->a.max_read = 0;
  EXPECT(c.bad == 0 && c.rows == hi - lo, "%s scan: blocks out of order or %lld rows of %lld",
         f->name, (long long)c.rows, (long long)(hi - lo));
  MPI_Allreduce(c.sum, all, (int)nc, MPI_DOUBLE, MPI_SUM, comm);
  for (int64_t k = 0; k < nc; k++) {
    int64_t j = cols ? cols[k] : k;
    double want = 0;
    for (int64_t i = 0; i < f->n_obs; i++)
      want += f->x[i * f->n_var + j];
    EXPECT(fabs(all[k] - want) <= 1e-6 * (fabs(want) + 1), "%s scan: column %lld sum %g, want %g",
           f->name, (long long)j, all[k], want);
  }
  free(all);
  free(c.sum);
}

static void check_x(struct fixture *f) {
  struct cf_h5ad *a = &f->a;
  int64_t lo, hi, nv = f->n_var, no = f->n_obs;
  cf_h5ad_rows(a, &lo, &hi);
  EXPECT(lo == rank * no / size && hi == (rank + 1) * no / size, "%s: rows %lld..%lld", f->name,
         (long long)lo, (long long)hi);
  read_and_compare(f, lo, hi, NULL, 0, "partition");
  /* a subset in the caller's order (last, first, middle, second) */
  int64_t sub[4], ns = 0, cand[4] = {nv - 1, 0, nv / 2, 1};
  for (int k = 0; k < 4; k++) {
    int dup = cand[k] < 0 || cand[k] >= nv;
    for (int q = 0; q < ns; q++)
      dup |= sub[q] == cand[k];
    if (!dup) sub[ns++] = cand[k];
  }
  read_and_compare(f, lo, hi, sub, ns, "subset");
  read_and_compare(f, lo, hi, sub, 0, "empty subset");
  if (no >= 2) {
    int64_t rev[4];
    for (int k = 0; k < ns; k++)
      rev[k] = sub[ns - 1 - k];
    read_and_compare(f, 1, no - 1, rev, ns, "given range");
  }
  read_and_compare(f, 0, rank == 0 ? no : 0, NULL, 0, "uneven ranges");
  read_and_compare(f, rank == size - 1 ? 0 : no, no, sub, ns, "uneven subset");
  for (int64_t p = 1; p <= 3; p++) {
    a->max_read = p;
    read_and_compare(f, lo, hi, NULL, 0, "tiny pieces");
    read_and_compare(f, 0, no, sub, ns, "tiny pieces, subset");
  }
  a->max_read = 0;
  check_scan(f, 2, NULL, 0, 0);
  check_scan(f, 1, sub, ns, 2);
  check_scan(f, 0, sub, ns, 0);
  float *x = NULL;
  int64_t bad_dup[3] = {0, 1, 0}, bad_out[2] = {0, nv};
  EXPECT_FAIL_STATUS(cf_h5ad_read_x(a, lo, hi, bad_dup, 3, &x, NULL), CF_EINVAL,
                     "var index 0 is listed twice (entries 0 and 2)", "duplicate column");
  EXPECT_FAIL_STATUS(cf_h5ad_read_x(a, lo, hi, bad_out, 2, &x, NULL), CF_EINVAL, "is outside 0..",
                     "column out of range");
  EXPECT_FAIL_STATUS(cf_h5ad_read_x(a, 0, no + 1, NULL, 0, &x, NULL), CF_EINVAL,
                     "expected a range within", "rows out of range");
  EXPECT(x == NULL, "failed read left a buffer");
  /* one rank's callback failure stops the scan on all of them */
  struct scan_ctx c = {0};
  EXPECT_FAIL(cf_h5ad_scan(a, 0, rank == size - 1 ? no : 0, 1, NULL, 0,
                           rank == size - 1 ? failing_cb : scan_cb, &c),
              "callback stops at row 0", "failing callback");
}

/* ---- column records ---- */

static void check_strings_list(const struct fixture *f, char **got, int64_t n, char **want, int nw,
                               const char *what) {
  EXPECT(n == nw, "%s %s: %lld strings, expected %d", f->name, what, (long long)n, nw);
  for (int64_t i = 0; i < n && i < nw; i++)
    EXPECT(strcmp(got[i], want[i]) == 0, "%s %s[%lld]: '%s', expected '%s'", f->name, what,
           (long long)i, got[i], want[i]);
}

static enum cf_h5ad_kind kind_of(const char *s) {
  if (strcmp(s, "numeric") == 0) return CF_H5AD_NUMERIC;
  if (strcmp(s, "boolean") == 0) return CF_H5AD_BOOLEAN;
  if (strcmp(s, "string") == 0) return CF_H5AD_STRING;
  return CF_H5AD_CATEGORICAL;
}

/* The failure of op (args fl[2], fl[3]) on fixture f must contain fl[4]. */
static void check_error(struct fixture *f, char **fl, int nf) {
  if (nf < 5) {
    EXPECT(0, "%s: short error record", f->name);
    return;
  }
  const char *op = fl[1], *sub = fl[4];
  char what[512];
  snprintf(what, sizeof what, "%s: %s %s %s", f->name, op, fl[2], fl[3]);
  if (strcmp(op, "open") == 0) {
    EXPECT(f->open_st != CF_OK, "%s: opened, expected an error containing '%s'", what, sub);
    EXPECT(strstr(f->open_msg, sub) != NULL && strstr(f->open_msg, f->name) != NULL,
           "%s: message '%s' lacks '%s' or the file name", what, f->open_msg, sub);
    if (getenv("CF_TEST_VERBOSE") && rank == 0) printf("[%s] %s\n", what, f->open_msg);
    return;
  }
  if (!f->opened) {
    EXPECT(f->told++, "%s: file did not open: %s", what, f->open_msg);
    return;
  }
  cf_status st;
  if (strcmp(op, "x") == 0) {
    float *x = NULL;
    st = cf_h5ad_read_x(&f->a, atoll(fl[2]), atoll(fl[3]), NULL, 0, &x, NULL);
    EXPECT(x == NULL, "%s: failed read left a buffer", what);
  } else if (strcmp(op, "strings") == 0) {
    char **s = NULL;
    int64_t n;
    st = cf_h5ad_read_strings(&f->a, fl[2], fl[3], &s, &n);
    EXPECT(s == NULL && n == 0, "%s: failed read left output", what);
  } else if (strcmp(op, "numbers") == 0) {
    double *v = NULL;
    int64_t n;
    st = cf_h5ad_read_numbers(&f->a, fl[2], fl[3], &v, &n);
    EXPECT(v == NULL && n == 0, "%s: failed read left output", what);
  } else if (strcmp(op, "categorical") == 0) {
    int32_t *codes = NULL;
    char **cats = NULL;
    int64_t n, nc;
    st = cf_h5ad_read_categorical(&f->a, fl[2], fl[3], &codes, &n, &cats, &nc);
    EXPECT(codes == NULL && cats == NULL, "%s: failed read left output", what);
  } else {
    enum cf_h5ad_kind k;
    st = cf_h5ad_column_kind(&f->a, fl[2], fl[3], &k);
  }
  EXPECT(st != CF_OK, "%s: succeeded, expected an error containing '%s'", what, sub);
  EXPECT(strstr(cf_errmsg(), sub) != NULL && strstr(cf_errmsg(), f->name) != NULL,
         "%s: message '%s' lacks '%s' or the file name", what, cf_errmsg(), sub);
  if (getenv("CF_TEST_VERBOSE") && rank == 0) printf("[%s] %s\n", what, cf_errmsg());
  cf_err_clear();
}

static void check_record(struct fixture *f, char **fl, int nf) {
  const char *key = fl[0];
  if (strcmp(key, "error") == 0) {
    check_error(f, fl, nf);
    return;
  }
  if (!f->opened) {
    EXPECT(f->told++, "%s: cannot check '%s' (and what follows): the file did not open: %s",
           f->name, key, f->open_msg);
    return;
  }
  struct cf_h5ad *a = &f->a;
  char what[300];
  snprintf(what, sizeof what, "%s %s %s", key, nf > 1 ? fl[1] : "", nf > 2 ? fl[2] : "");
  if (strcmp(key, "meta") == 0 && nf == 7) {
    f->meta = 1;
    f->n_obs = atoll(fl[1]);
    f->n_var = atoll(fl[2]);
    EXPECT(a->n_obs == f->n_obs && a->n_var == f->n_var, "%s: shape %lld x %lld, expected %s x %s",
           f->name, (long long)a->n_obs, (long long)a->n_var, fl[1], fl[2]);
    EXPECT(strcmp(cf_h5ad_x_name(a->x_encoding), fl[3]) == 0, "%s: encoding %s, expected %s",
           f->name, cf_h5ad_x_name(a->x_encoding), fl[3]);
    EXPECT(strcmp(a->x_dtype, fl[4]) == 0, "%s: dtype %s, expected %s", f->name, a->x_dtype, fl[4]);
    EXPECT(strcmp(fl[5], "-") == 0 ? a->x_index_dtype[0] == '\0'
                                   : strcmp(a->x_index_dtype, fl[5]) == 0,
           "%s: index dtype '%s', expected %s", f->name, a->x_index_dtype, fl[5]);
    EXPECT(a->x_nnz == atoll(fl[6]), "%s: nnz %lld, expected %s", f->name, (long long)a->x_nnz,
           fl[6]);
    f->x = cf_test_floats((size_t)(f->n_obs * f->n_var));
  } else if (strcmp(key, "row") == 0) {
    int64_t i = atoll(fl[1]);
    EXPECT(f->x && i >= 0 && i < f->n_obs && nf - 2 == f->n_var, "%s: bad row record", f->name);
    for (int64_t j = 0; f->x && i >= 0 && i < f->n_obs && j < f->n_var && j + 2 < nf; j++)
      f->x[i * f->n_var + j] = (float)strtod(fl[2 + j], NULL);
  } else if (strcmp(key, "index") == 0 || strcmp(key, "columns") == 0) {
    char **s = NULL;
    int64_t n = 0;
    if (key[0] == 'i')
      EXPECT_OK(cf_h5ad_read_index(a, fl[1], &s, &n), what);
    else
      EXPECT_OK(cf_h5ad_columns(a, fl[1], &s, &n), what);
    if (s) check_strings_list(f, s, n, fl + 2, nf - 2, what);
    cf_free((void **)&s);
  } else if (strcmp(key, "kind") == 0) {
    enum cf_h5ad_kind k = 0;
    EXPECT_OK(cf_h5ad_column_kind(a, fl[1], fl[2], &k), what);
    EXPECT(k == kind_of(fl[3]), "%s %s: kind %d, expected %s", f->name, what, (int)k, fl[3]);
  } else if (strcmp(key, "strings") == 0) {
    char **s = NULL;
    int64_t n = 0;
    EXPECT_OK(cf_h5ad_read_strings(a, fl[1], fl[2], &s, &n), what);
    if (s) check_strings_list(f, s, n, fl + 3, nf - 3, what);
    cf_free((void **)&s);
  } else if (strcmp(key, "numbers") == 0) {
    double *v = NULL;
    int64_t n = 0;
    EXPECT_OK(cf_h5ad_read_numbers(a, fl[1], fl[2], &v, &n), what);
    EXPECT(n == nf - 3, "%s %s: %lld numbers, expected %d", f->name, what, (long long)n, nf - 3);
    for (int64_t i = 0; v && i < n && i + 3 < nf; i++) {
      double want = strtod(fl[3 + i], NULL);
      EXPECT(isnan(want) ? isnan(v[i]) : v[i] == want, "%s %s[%lld]: %.17g, expected %s", f->name,
             what, (long long)i, v[i], fl[3 + i]);
    }
    cf_free((void **)&v);
  } else if (strcmp(key, "codes") == 0 || strcmp(key, "categories") == 0) {
    int32_t *codes = NULL;
    char **cats = NULL;
    int64_t n = 0, nc = 0;
    EXPECT_OK(cf_h5ad_read_categorical(a, fl[1], fl[2], &codes, &n, &cats, &nc), what);
    if (key[1] == 'o') {
      EXPECT(n == nf - 3, "%s %s: %lld codes, expected %d", f->name, what, (long long)n, nf - 3);
      for (int64_t i = 0; codes && i < n && i + 3 < nf; i++)
        EXPECT(codes[i] == atoi(fl[3 + i]), "%s %s[%lld]: %d, expected %s", f->name, what,
               (long long)i, codes[i], fl[3 + i]);
    } else if (cats) {
      check_strings_list(f, cats, nc, fl + 3, nf - 3, what);
    }
    cf_free((void **)&codes);
    cf_free((void **)&cats);
  } else {
    EXPECT(0, "%s: unknown record '%s'", f->name, key);
  }
}

static int run_fixtures(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/expected.txt", dir);
  FILE *in = fopen(path, "r");
  EXPECT(in != NULL, "cannot open %s", path);
  if (!in) return 0;
  char *line = NULL, **fl = calloc(MAXF, sizeof(char *));
  size_t cap = 0;
  struct fixture f;
  memset(&f, 0, sizeof f);
  int files = 0;
  while (getline(&line, &cap, in) > 0) {
    if (line[0] == '#' || line[0] == '\n') continue;
    int nf = split(line, fl, MAXF);
    if (strcmp(fl[0], "file") == 0) {
      memset(&f, 0, sizeof f);
      snprintf(f.name, sizeof f.name, "%s", fl[1]);
      snprintf(path, sizeof path, "%s/%s", dir, fl[1]);
      f.open_st = cf_h5ad_open(&f.a, comm, path);
      f.opened = f.open_st == CF_OK;
      snprintf(f.open_msg, sizeof f.open_msg, "%s", cf_errmsg());
      cf_err_clear();
      files++;
    } else if (strcmp(fl[0], "end") == 0) {
      if (f.opened && f.meta) check_x(&f);
      if (f.opened) cf_h5ad_close(&f.a);
      cf_h5ad_close(&f.a); /* harmless to repeat */
      free(f.x);
      f.x = NULL;
      EXPECT(cf_alloc_bytes() == 0, "%s: %zu bytes still held", f.name, cf_alloc_bytes());
    } else {
      check_record(&f, fl, nf);
    }
  }
  free(line);
  free(fl);
  fclose(in);
  return files;
}

/* ---- the real data set ---- */

struct gene_stats {
  double *s, *s2; /* (n_var) sums of log1p(x) and its square */
  double sum, sum_log;
};

static cf_status stats_cb(void *vctx, int64_t row0, int64_t nrows, int64_t ncols,
                          const float *block) {
  struct gene_stats *g = vctx;
  for (int64_t i = 0; i < nrows; i++)
    for (int64_t j = 0; j < ncols; j++) {
      double v = block[i * ncols + j], l = log1p(v);
      g->s[j] += l;
      g->s2[j] += l * l;
      g->sum += v;
      g->sum_log += l;
    }
  return CF_OK;
}

static double tmax(double t) {
  double m = 0;
  MPI_Allreduce(&t, &m, 1, MPI_DOUBLE, MPI_MAX, comm);
  return m;
}

static const double *sort_key;
static int by_key_desc(const void *x, const void *y) {
  double a = sort_key[*(const int64_t *)x], b = sort_key[*(const int64_t *)y];
  return a < b ? 1 : a > b ? -1 : 0;
}

static void run_hsmm(const char *path) {
  if (access(path, R_OK) != 0) {
    if (rank == 0) printf("test_h5ad: %s not found, skipping the hsmm.h5ad checks\n", path);
    return;
  }
  struct cf_h5ad a;
  double t0 = MPI_Wtime();
  cf_status st = cf_h5ad_open(&a, comm, path);
  double t_open = tmax(MPI_Wtime() - t0);
  EXPECT(st == CF_OK, "hsmm open: %s", cf_errmsg());
  if (st != CF_OK) return;
  EXPECT(a.n_obs == 271 && a.n_var == 47192 && a.x_encoding == CF_H5AD_X_CSR &&
             a.x_nnz == 2004745 && strcmp(a.x_dtype, "float32") == 0 &&
             strcmp(a.x_index_dtype, "int32") == 0,
         "hsmm: %lld x %lld %s %s %s nnz %lld", (long long)a.n_obs, (long long)a.n_var,
         cf_h5ad_x_name(a.x_encoding), a.x_dtype, a.x_index_dtype, (long long)a.x_nnz);
  int64_t lo, hi, nv = a.n_var;
  cf_h5ad_rows(&a, &lo, &hi);

  /* the whole partition, dense */
  float *x = NULL;
  t0 = MPI_Wtime();
  EXPECT_OK(cf_h5ad_read_x(&a, lo, hi, NULL, 0, &x, NULL), "hsmm read_x");
  double t_read = tmax(MPI_Wtime() - t0);
  double part[3] = {0, 0, 0}, tot[3];
  for (int64_t k = 0; x && k < (hi - lo) * nv; k++) {
    part[0] += x[k];
    part[1] += log1p(x[k]);
    part[2] += x[k] != 0;
  }
  MPI_Allreduce(part, tot, 3, MPI_DOUBLE, MPI_SUM, comm);
  EXPECT(fabs(tot[0] - 138347894.158) < 0.01, "hsmm sum(X) %.3f, expected 138347894.158", tot[0]);
  EXPECT(fabs(tot[1] - 4931205.769) < 0.002, "hsmm sum(log1p X) %.3f, expected 4931205.769",
         tot[1]);
  EXPECT(tot[2] == 2004745, "hsmm nonzeros %.0f, expected 2004745", tot[2]);

  /* per-gene variance of log1p(X) through the scan (blocks of 32 rows) */
  struct gene_stats g = {calloc((size_t)nv, sizeof(double)), calloc((size_t)nv, sizeof(double)), 0,
                         0};
  t0 = MPI_Wtime();
  EXPECT_OK(cf_h5ad_scan(&a, lo, hi, 32, NULL, 0, stats_cb, &g), "hsmm scan");
  MPI_Allreduce(MPI_IN_PLACE, g.s, (int)nv, MPI_DOUBLE, MPI_SUM, comm);
  MPI_Allreduce(MPI_IN_PLACE, g.s2, (int)nv, MPI_DOUBLE, MPI_SUM, comm);
  double t_scan = tmax(MPI_Wtime() - t0);
  double *var = calloc((size_t)nv, sizeof(double));
  int64_t *order = calloc((size_t)nv, sizeof(int64_t));
  for (int64_t j = 0; j < nv; j++) {
    double m = g.s[j] / 271.0;
    var[j] = g.s2[j] / 271.0 - m * m;
    order[j] = j;
  }
  sort_key = var;
  qsort(order, (size_t)nv, sizeof(int64_t), by_key_desc);
  char **names = NULL;
  int64_t nn = 0;
  EXPECT_OK(cf_h5ad_read_strings(&a, "var", "gene_short_name", &names, &nn), "gene names");
  const char *top[6] = {"ACTC1", "ACTA2", "SCARNA22", "TNNI1", "CHRNA1", "TNNT2"};
  for (int k = 0; names && k < 6; k++)
    EXPECT(strcmp(names[order[k]], top[k]) == 0, "hsmm: gene %d by log1p variance is %s, want %s",
           k, names[order[k]], top[k]);

  /* the 2000 most variable genes only, against the full read */
  float *h = NULL;
  t0 = MPI_Wtime();
  EXPECT_OK(cf_h5ad_read_x(&a, lo, hi, order, 2000, &h, NULL), "hsmm read_x of 2000 genes");
  double t_hvg = tmax(MPI_Wtime() - t0);
  int bad = 0;
  for (int64_t i = 0; h && x && i < hi - lo; i++)
    for (int64_t c = 0; c < 2000; c++)
      bad += h[i * 2000 + c] != x[i * nv + order[c]];
  EXPECT(bad == 0, "hsmm: %d values of the 2000-gene read differ from the full read", bad);

  /* obs / var columns */
  t0 = MPI_Wtime();
  double *hours = NULL, *use = NULL, *pt = NULL;
  int64_t n = 0;
  EXPECT_OK(cf_h5ad_read_numbers(&a, "obs", "Hours", &hours, &n), "Hours");
  int cnt[4] = {0, 0, 0, 0};
  for (int64_t i = 0; hours && i < n; i++)
    if (hours[i] == 0 || hours[i] == 24 || hours[i] == 48 || hours[i] == 72)
      cnt[(int)hours[i] / 24]++;
  EXPECT(cnt[0] == 69 && cnt[1] == 74 && cnt[2] == 79 && cnt[3] == 49,
         "hsmm Hours counts %d %d %d %d, expected 69 74 79 49", cnt[0], cnt[1], cnt[2], cnt[3]);
  EXPECT_OK(cf_h5ad_read_numbers(&a, "var", "use_for_ordering", &use, &n), "use_for_ordering");
  int ntrue = 0;
  for (int64_t i = 0; use && i < n; i++)
    ntrue += use[i] == 1;
  EXPECT(ntrue == 518, "hsmm use_for_ordering: %d TRUE, expected 518", ntrue);
  EXPECT_OK(cf_h5ad_read_numbers(&a, "obs", "Pseudotime", &pt, &n), "Pseudotime");
  double pmax = 0;
  for (int64_t i = 0; pt && i < n; i++)
    pmax = pt[i] > pmax ? pt[i] : pmax;
  EXPECT(fabs(pmax - 76.65) < 0.01, "hsmm Pseudotime max %g, expected 76.65", pmax);
  char **cells = NULL, **media = NULL, **cats = NULL;
  int32_t *codes = NULL;
  int64_t ncat = 0;
  EXPECT_OK(cf_h5ad_read_index(&a, "obs", &cells, &n), "obs index");
  EXPECT(cells && n == 271 && strcmp(cells[0], "T0_CT_A01") == 0, "hsmm first cell '%s'",
         cells && n ? cells[0] : "");
  EXPECT_OK(cf_h5ad_read_strings(&a, "obs", "Media", &media, &n), "Media");
  EXPECT(media && strcmp(media[0], "GM") == 0, "hsmm Media of cell 0 '%s', expected GM",
         media ? media[0] : "");
  EXPECT_OK(cf_h5ad_read_categorical(&a, "var", "gene_short_name", &codes, &n, &cats, &ncat),
            "gene_short_name");
  EXPECT(n == 47192 && ncat == 46994, "hsmm gene_short_name: %lld codes, %lld categories",
         (long long)n, (long long)ncat);
  double t_cols = tmax(MPI_Wtime() - t0);
  double *well = NULL;
  EXPECT_FAIL(cf_h5ad_read_numbers(&a, "obs", "Well", &well, &n), "category 'A01'", "Well numbers");
  EXPECT(well == NULL, "failed read left output");
  if (rank == 0)
    printf("test_h5ad: hsmm.h5ad on %d rank(s): open %.3f s, read_x of all %lld x %lld (dense "
           "%.0f MiB on rank 0) %.3f s, scan for per-gene log1p variance %.3f s, read_x of 2000 "
           "genes %.3f s, obs/var columns %.3f s\n",
           size, t_open, (long long)a.n_obs, (long long)nv, (double)(hi - lo) * nv * 4 / 1048576,
           t_read, t_scan, t_hvg, t_cols);
  cf_free((void **)&x);
  cf_free((void **)&h);
  cf_free((void **)&hours);
  cf_free((void **)&use);
  cf_free((void **)&pt);
  cf_free((void **)&names);
  cf_free((void **)&cells);
  cf_free((void **)&media);
  cf_free((void **)&codes);
  cf_free((void **)&cats);
  free(var);
  free(order);
  free(g.s);
  free(g.s2);
  cf_h5ad_close(&a);
  EXPECT(cf_alloc_bytes() == 0, "hsmm: %zu bytes still held", cf_alloc_bytes());
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  cf_test_mpi_begin("test_h5ad", &comm, &rank, &size);
  const char *src = getenv("CF_SOURCE_DIR");
  char dir[4096], hsmm[4096];
  snprintf(dir, sizeof dir, "%s/tests/data/h5ad", src ? src : ".");
  snprintf(hsmm, sizeof hsmm, "%s/../shared/data/hsmm/hsmm.h5ad", src ? src : ".");
  if (argc > 1) snprintf(dir, sizeof dir, "%s", argv[1]);
  if (argc > 2) snprintf(hsmm, sizeof hsmm, "%s", argv[2]);
  int files = run_fixtures(dir);
  EXPECT(files >= 10, "only %d fixtures in %s/expected.txt", files, dir);

  /* a missing file and a file that is not HDF5 */
  struct cf_h5ad a;
  char p[600];
  cf_test_path(p, sizeof p, "missing.h5ad");
  EXPECT_FAIL(cf_h5ad_open(&a, comm, p), "no such file", "missing file");
  snprintf(p, sizeof p, "%s/expected.txt", dir);
  EXPECT_FAIL(cf_h5ad_open(&a, comm, p), "is not an HDF5 file", "text file");

  run_hsmm(hsmm);
  const char *label = cf_test_mpi_end(&comm, "test_h5ad");
  int rc = cf_test_done(label);
  MPI_Finalize();
  return rc;
}
