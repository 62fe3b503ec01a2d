/* scprep.c: single-cell preprocessing for `calmflow data -data_h5ad` (include/calmflow/scprep.h):
 * the streaming per-cell / per-gene statistics, the choice of highly variable genes, the
 * normalized log1p rows of the chosen genes, and the output file (docs/data-format.md) with its
 * row-distributed /x and fixed-length string datasets. */
#include "calmflow/scprep.h"

#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "io/h5util.h"

/* ---- the transform (steps 1 and 3 share it) ---- */

/* The factor a row's values are multiplied by: normalize / total, 1 when off, 0 for an empty
 * row (its values are all 0 anyway). */
static double row_scale(const struct cf_scprep_opts *o, double total) {
  if (o->normalize <= 0) return 1.0;
  return total > 0 ? o->normalize / total : 0.0;
}

static float transform(const struct cf_scprep_opts *o, float x, double scale) {
  double v = (double)x * scale;
  if (o->log1p) v = log1p(v);
  return (float)v;
}

/* ---- double-double sums: hl[0] + hl[1] carries the sum to about 1e-32 relative ---- */

static void dd_add(double *hl, double v) {
  double s = hl[0] + v, bb = s - hl[0];
  double e = (hl[0] - (s - bb)) + (v - bb);
  hl[0] = s;
  hl[1] += e;
}

/* MPI reduction of (hi, lo) pairs. */
static void dd_reduce(void *in, void *inout, int *len, MPI_Datatype *dt) {
  (void)dt;
  const double *a = in;
  double *b = inout;
  for (int i = 0; i < *len; i++) {
    double h1 = a[2 * i], h2 = b[2 * i];
    double s = h1 + h2, bb = s - h1;
    double e = (h1 - (s - bb)) + (h2 - bb) + (a[2 * i + 1] + b[2 * i + 1]);
    double t = s + e;
    b[2 * i + 1] = e - (t - s);
    b[2 * i] = t;
  }
}

/* ---- step 1: the scan ---- */

struct scan_ctx {
  const struct cf_scprep_opts *o;
  struct cf_scprep *p;
  const char *path;
  uint8_t *keep_local; /* (hi - lo) */
  int64_t *count;      /* (n_var) kept cells expressing the gene */
  double *sums;        /* (2 n_var) pairs: n_var sums of v, then n_var sums of v^2 */
};

static cf_status scan_block(void *vctx, int64_t row0, int64_t nrows, int64_t ncols,
                            const float *blk) {
  struct scan_ctx *c = vctx;
  const struct cf_scprep_opts *o = c->o;
  struct cf_scprep *p = c->p;
  const int nonneg = o->normalize > 0 || o->log1p;
  double *sq = c->sums + 2 * ncols;
  for (int64_t r = 0; r < nrows; r++) {
    const float *x = blk + r * ncols;
    int64_t li = row0 + r - p->lo, nz = 0;
    double tot = 0;
    for (int64_t j = 0; j < ncols; j++) {
      float v = x[j];
      if (!isfinite(v) || (nonneg && v < 0))
        return cf_err(CF_ECORRUPT, "'%s' /X row %lld gene %lld is %g, expected a finite value%s",
                      c->path, (long long)(row0 + r), (long long)j, (double)v,
                      nonneg ? " >= 0 (counts or expression; -data_normalize and -data_log1p "
                               "need them)"
                             : "");
      tot += v;
      nz += v != 0;
    }
    p->total[li] = tot;
    if (nz < o->min_genes) continue;
    c->keep_local[li] = 1;
    double scale = row_scale(o, tot);
    for (int64_t j = 0; j < ncols; j++) {
      if (x[j] == 0) continue;
      double v = transform(o, x[j], scale);
      c->count[j]++;
      dd_add(c->sums + 2 * j, v);
      dd_add(sq + 2 * j, v * v);
    }
  }
  return CF_OK;
}

struct gene_rank {
  double var;
  int64_t j;
};

static int by_var_desc(const void *x, const void *y) {
  const struct gene_rank *a = x, *b = y;
  if (a->var != b->var) return a->var > b->var ? -1 : 1;
  return a->j < b->j ? -1 : a->j > b->j;
}

static int by_index(const void *x, const void *y) {
  int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
  return a < b ? -1 : a > b;
}

/* Rank 0: the genes left after min_cells and the hvg of largest variance, ascending, into
 * p (n_expressed, n_genes, genes, gene_mean, gene_var, hvg_min_var). */
static cf_status choose_genes(const struct cf_scprep_opts *o, struct cf_scprep *p,
                              const int64_t *count, const double *sums) {
  int64_t nv = p->n_var, n = p->n_cells;
  const double *sq = sums + 2 * nv;
  struct gene_rank *g = NULL;
  CF_TRY(cf_alloc((void **)&g, (size_t)(nv > 0 ? nv : 1) * sizeof *g, "gene variances"));
  int64_t m = 0;
  for (int64_t j = 0; j < nv; j++) {
    if (count[j] < o->min_cells) continue;
    double s = sums[2 * j] + sums[2 * j + 1], q = sq[2 * j] + sq[2 * j + 1], var = 0;
    if (n >= 2) var = (q - s * (s / (double)n)) / (double)(n - 1);
    g[m].var = var > 0 ? var : 0;
    g[m].j = j;
    m++;
  }
  p->n_expressed = m;
  int64_t keep = o->hvg > 0 && o->hvg < m ? o->hvg : m;
  if (keep < m) qsort(g, (size_t)m, sizeof *g, by_var_desc);
  cf_status st = CF_OK;
  size_t k1 = (size_t)(keep > 0 ? keep : 1);
  st = cf_alloc((void **)&p->genes, k1 * sizeof(int64_t), "chosen genes");
  if (st == CF_OK) st = cf_alloc((void **)&p->gene_mean, k1 * sizeof(double), "gene means");
  if (st == CF_OK) st = cf_alloc((void **)&p->gene_var, k1 * sizeof(double), "gene variances");
  if (st == CF_OK) {
    for (int64_t i = 0; i < keep; i++)
      p->genes[i] = g[i].j;
    qsort(p->genes, (size_t)keep, sizeof(int64_t), by_index);
    p->hvg_min_var = keep > 0 ? INFINITY : 0;
    for (int64_t i = 0; i < keep; i++) {
      int64_t j = p->genes[i];
      double s = sums[2 * j] + sums[2 * j + 1], q = sq[2 * j] + sq[2 * j + 1], var = 0;
      if (n >= 2) var = (q - s * (s / (double)n)) / (double)(n - 1);
      p->gene_mean[i] = n > 0 ? s / (double)n : 0;
      p->gene_var[i] = var > 0 ? var : 0;
      if (p->gene_var[i] < p->hvg_min_var) p->hvg_min_var = p->gene_var[i];
    }
    p->n_genes = keep;
  }
  cf_free((void **)&g);
  return st;
}

/* Reduce the gene statistics to rank 0, choose there, broadcast the choice. */
static cf_status reduce_and_choose(MPI_Comm comm, int rank, const struct cf_scprep_opts *o,
                                   struct cf_scprep *p, struct scan_ctx *c) {
  int64_t nv = p->n_var;
  MPI_Datatype pair = MPI_DATATYPE_NULL;
  MPI_Op op = MPI_OP_NULL;
  CF_MPI(MPI_Type_contiguous(2, MPI_DOUBLE, &pair));
  CF_MPI(MPI_Type_commit(&pair));
  CF_MPI(MPI_Op_create(dd_reduce, 1, &op));
  int e1 = cf_mpi_reduce(rank == 0 ? MPI_IN_PLACE : c->count, c->count, (size_t)nv, MPI_INT64_T,
                         MPI_SUM, 0, comm);
  int e2 = cf_mpi_reduce(rank == 0 ? MPI_IN_PLACE : c->sums, c->sums, (size_t)(2 * nv), pair, op, 0,
                         comm);
  MPI_Op_free(&op);
  MPI_Type_free(&pair);
  CF_MPI(e1);
  CF_MPI(e2);
  cf_status st = rank == 0 ? choose_genes(o, p, c->count, c->sums) : CF_OK;
  CF_TRY(cf_agree(comm, st));
  int64_t hdr[2] = {p->n_expressed, p->n_genes};
  CF_MPI(MPI_Bcast(hdr, 2, MPI_INT64_T, 0, comm));
  p->n_expressed = hdr[0];
  p->n_genes = hdr[1];
  size_t k1 = (size_t)(p->n_genes > 0 ? p->n_genes : 1);
  st = CF_OK;
  if (rank != 0) {
    st = cf_alloc((void **)&p->genes, k1 * sizeof(int64_t), "chosen genes");
    if (st == CF_OK) st = cf_alloc((void **)&p->gene_mean, k1 * sizeof(double), "gene means");
    if (st == CF_OK) st = cf_alloc((void **)&p->gene_var, k1 * sizeof(double), "gene variances");
  }
  CF_TRY(cf_agree(comm, st));
  CF_MPI(cf_mpi_bcast(p->genes, (size_t)p->n_genes, MPI_INT64_T, 0, comm));
  CF_MPI(cf_mpi_bcast(p->gene_mean, (size_t)p->n_genes, MPI_DOUBLE, 0, comm));
  CF_MPI(cf_mpi_bcast(p->gene_var, (size_t)p->n_genes, MPI_DOUBLE, 0, comm));
  CF_MPI(MPI_Bcast(&p->hvg_min_var, 1, MPI_DOUBLE, 0, comm));
  return CF_OK;
}

/* The kept-cell flags of every rank to every rank, and the counts derived from them. */
static cf_status share_cells(struct cf_h5ad *a, struct cf_scprep *p, const uint8_t *keep_local) {
  int64_t *counts = NULL, *displs = NULL;
  cf_status st = cf_alloc((void **)&counts, (size_t)a->size * sizeof(int64_t), "row counts");
  if (st == CF_OK)
    st = cf_alloc((void **)&displs, (size_t)a->size * sizeof(int64_t), "row offsets");
  if (st == CF_OK) st = cf_alloc((void **)&p->keep, (size_t)(p->n_obs + 1), "kept cells");
  st = cf_agree(a->comm, st);
  if (st == CF_OK) {
    for (int r = 0; r < a->size; r++) {
      int64_t lo, hi;
      cf_io_row_range(p->n_obs, r, a->size, &lo, &hi);
      counts[r] = hi - lo;
      displs[r] = lo;
    }
    int e = cf_mpi_allgatherv(keep_local, (size_t)(p->hi - p->lo), p->keep, counts, displs,
                              MPI_UINT8_T, a->comm);
    if (e != 0) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Allgatherv(keep)");
  }
  cf_free((void **)&counts);
  cf_free((void **)&displs);
  CF_TRY(st);
  p->n_cells = p->local_cells = p->cell_offset = 0;
  for (int64_t i = 0; i < p->n_obs; i++) {
    if (!p->keep[i]) continue;
    p->n_cells++;
    if (i < p->lo) p->cell_offset++;
    if (i >= p->lo && i < p->hi) p->local_cells++;
  }
  st = cf_alloc((void **)&p->cells, (size_t)(p->n_cells > 0 ? p->n_cells : 1) * sizeof(int64_t),
                "kept cells");
  CF_TRY(cf_agree(a->comm, st));
  for (int64_t i = 0, k = 0; i < p->n_obs; i++)
    if (p->keep[i]) p->cells[k++] = i;
  return CF_OK;
}

static cf_status scan_body(struct cf_h5ad *a, const struct cf_scprep_opts *o, struct cf_scprep *p,
                           struct scan_ctx *c) {
  CF_CHECK(o->min_genes >= 0 && o->min_cells >= 0 && o->hvg >= 0 && o->normalize >= 0 &&
               isfinite(o->normalize),
           CF_EINVAL, "preprocessing of '%s': negative or non-finite option", a->path);
  CF_CHECK(a->x_encoding != CF_H5AD_X_NONE, CF_ECORRUPT, "'%s' has no X (expression matrix)",
           a->path);
  CF_CHECK(a->n_obs >= 1 && a->n_var >= 1, CF_ECORRUPT, "'%s' X is %lld x %lld, expected >= 1",
           a->path, (long long)a->n_obs, (long long)a->n_var);
  CF_CHECK(a->n_obs <= INT_MAX && a->n_var <= INT_MAX / 2, CF_EINVAL,
           "'%s' X is %lld x %lld: too large for this preprocessing (at most %d cells, %d genes)",
           a->path, (long long)a->n_obs, (long long)a->n_var, INT_MAX, INT_MAX / 2);
  int64_t nv = a->n_var;
  p->n_obs = a->n_obs;
  p->n_var = nv;
  cf_h5ad_rows(a, &p->lo, &p->hi);
  size_t nl = (size_t)(p->hi - p->lo + 1);
  cf_status st = cf_alloc((void **)&p->total, nl * sizeof(double), "library sizes");
  if (st == CF_OK) st = cf_alloc((void **)&c->keep_local, nl, "kept cells");
  if (st == CF_OK) st = cf_alloc((void **)&c->count, (size_t)nv * sizeof(int64_t), "gene counts");
  if (st == CF_OK) st = cf_alloc((void **)&c->sums, (size_t)nv * 4 * sizeof(double), "gene sums");
  CF_TRY(cf_agree(a->comm, st));
  c->o = o;
  c->p = p;
  c->path = a->path;
  /* CSC rescans the columns for every block: one block of this rank's rows when it fits in
   * 2^28 floats (1 GiB), else the reader's default blocks */
  int64_t block = 0, rows = p->hi - p->lo;
  if (a->x_encoding == CF_H5AD_X_CSC && rows > 0 && rows <= ((int64_t)1 << 28) / nv) block = rows;
  CF_TRY(cf_h5ad_scan(a, p->lo, p->hi, block, NULL, 0, scan_block, c));
  CF_TRY(share_cells(a, p, c->keep_local));
  CF_TRY(reduce_and_choose(a->comm, a->rank, o, p, c));
  return CF_OK;
}

cf_status cf_scprep_scan(struct cf_h5ad *a, const struct cf_scprep_opts *o, struct cf_scprep *p) {
  memset(p, 0, sizeof *p);
  struct scan_ctx c;
  memset(&c, 0, sizeof c);
  cf_status st = scan_body(a, o, p, &c);
  cf_free((void **)&c.keep_local);
  cf_free((void **)&c.count);
  cf_free((void **)&c.sums);
  if (st != CF_OK) cf_scprep_release(p);
  return st;
}

void cf_scprep_release(struct cf_scprep *p) {
  cf_free((void **)&p->total);
  cf_free((void **)&p->keep);
  cf_free((void **)&p->cells);
  cf_free((void **)&p->genes);
  cf_free((void **)&p->gene_mean);
  cf_free((void **)&p->gene_var);
  memset(p, 0, sizeof *p);
}

/* ---- step 3: the chosen genes of the kept cells ---- */

cf_status cf_scprep_read(struct cf_h5ad *a, const struct cf_scprep_opts *o,
                         const struct cf_scprep *p, float **x) {
  *x = NULL;
  CF_CHECK(p->n_genes >= 1 && p->genes != NULL, CF_EINVAL, "'%s': no genes chosen to read",
           a->path);
  int64_t g = p->n_genes;
  CF_TRY(cf_h5ad_read_x(a, p->lo, p->hi, p->genes, g, x, NULL));
  float *v = *x;
  int64_t k = 0;
  for (int64_t i = p->lo; i < p->hi; i++) {
    int64_t li = i - p->lo;
    if (!p->keep[i]) continue;
    double scale = row_scale(o, p->total[li]);
    const float *src = v + li * g;
    float *dst = v + k * g; /* k <= li: rows only move down */
    for (int64_t j = 0; j < g; j++)
      dst[j] = transform(o, src[j], scale);
    k++;
  }
  return CF_OK;
}

/* ---- obs columns ---- */

/* Split spec on commas into the trimmed names (pointers into buf). */
static int64_t split_names(char *buf, char **out, int64_t cap) {
  int64_t n = 0;
  char *s = buf;
  for (;;) {
    char *comma = strchr(s, ',');
    if (comma) *comma = '\0';
    while (*s == ' ' || *s == '\t')
      s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
      *--e = '\0';
    if (n < cap) out[n] = s;
    n++;
    if (!comma) break;
    s = comma + 1;
  }
  return n;
}

/* The chosen names (pointers into the caller's strings) as one cf_alloc'd block. */
static cf_status pack_names(char **src, int64_t n, char ***out) {
  size_t bytes = (size_t)(n + 1) * sizeof(char *);
  for (int64_t i = 0; i < n; i++)
    bytes += strlen(src[i]) + 1;
  CF_TRY(cf_alloc((void **)out, bytes, "obs column names"));
  char **ptr = *out;
  char *text = (char *)(ptr + n + 1);
  for (int64_t i = 0; i < n; i++) {
    size_t len = strlen(src[i]) + 1;
    memcpy(text, src[i], len);
    ptr[i] = text;
    text += len;
  }
  return CF_OK;
}

static cf_status check_column_name(const char *file, const char *option, const char *name) {
  CF_CHECK(name[0] != '\0', CF_EINVAL, "option %s: empty column name", option);
  CF_CHECK(strchr(name, '/') == NULL && strcmp(name, ".") != 0 && strcmp(name, "_index") != 0,
           CF_EINVAL,
           "option %s: obs column '%s' of '%s' cannot be copied (expected a name "
           "without '/', not '.' or '_index')",
           option, name, file);
  return CF_OK;
}

cf_status cf_scprep_obs_columns(struct cf_h5ad *a, const char *spec, const char *option,
                                char ***names, int64_t *n) {
  *names = NULL;
  *n = 0;
  char **all = NULL;
  int64_t nall = 0;
  CF_TRY(cf_h5ad_columns(a, "obs", &all, &nall));
  int *want = NULL; /* per column of the file: copy it */
  char *buf = NULL;
  char **list = NULL;
  cf_status st = cf_alloc((void **)&want, (size_t)(nall + 1) * sizeof(int), "obs columns");
  if (spec[0] == '\0') {
    /* every categorical and string column: the kinds are collective reads, so the ranks
     * agree first and then stop together */
    st = cf_agree(a->comm, st);
    for (int64_t i = 0; i < nall && st == CF_OK; i++) {
      enum cf_h5ad_kind kind;
      st = cf_h5ad_column_kind(a, "obs", all[i], &kind);
      if (st == CF_OK) want[i] = kind == CF_H5AD_CATEGORICAL || kind == CF_H5AD_STRING;
      if (st == CF_OK && want[i] && check_column_name(a->path, option, all[i]) != CF_OK) {
        cf_err_clear(); /* a default column that cannot be a dataset name is skipped */
        want[i] = 0;
      }
    }
  } else if (st == CF_OK && strcmp(spec, "none") != 0) {
    size_t len = strlen(spec) + 1;
    st = cf_alloc((void **)&buf, len, "obs column list");
    if (st == CF_OK) st = cf_alloc((void **)&list, len * sizeof(char *), "obs column list");
    if (st == CF_OK) {
      memcpy(buf, spec, len);
      int64_t m = split_names(buf, list, (int64_t)len);
      for (int64_t i = 0; i < m && st == CF_OK; i++) {
        st = check_column_name(a->path, option, list[i]);
        int64_t found = -1;
        for (int64_t c = 0; st == CF_OK && c < nall && found < 0; c++)
          if (strcmp(all[c], list[i]) == 0) found = c;
        if (st == CF_OK && found < 0) {
          char have[512] = "";
          size_t used = 0;
          for (int64_t c = 0; c < nall && used + 1 < sizeof have; c++) {
            int w = snprintf(have + used, sizeof have - used, "%s%s", c ? ", " : "", all[c]);
            if (w < 0) break;
            used += (size_t)w;
          }
          st = cf_err(CF_EINVAL, "option %s: '%s' has no obs column '%s' (columns: %s)", option,
                      a->path, list[i], nall ? have : "none");
        }
        if (st == CF_OK && want[found])
          st = cf_err(CF_EINVAL, "option %s: obs column '%s' is listed twice", option, list[i]);
        if (st == CF_OK) want[found] = 1 + (int)i; /* remember the caller's order */
      }
      /* in the caller's order */
      if (st == CF_OK) {
        for (int64_t c = 0; c < nall; c++)
          if (want[c]) list[want[c] - 1] = all[c];
        st = pack_names(list, m, names);
        if (st == CF_OK) *n = m;
      }
    }
  }
  if (st == CF_OK && *names == NULL) {
    int64_t m = 0;
    st = cf_alloc((void **)&list, (size_t)(nall + 1) * sizeof(char *), "obs column list");
    for (int64_t c = 0; st == CF_OK && c < nall; c++)
      if (want[c]) list[m++] = all[c];
    if (st == CF_OK) st = pack_names(list, m, names);
    if (st == CF_OK) *n = m;
  }
  cf_free((void **)&buf);
  cf_free((void **)&list);
  cf_free((void **)&want);
  cf_free((void **)&all);
  st = cf_agree(a->comm, st);
  if (st != CF_OK) {
    cf_free((void **)names);
    *n = 0;
  }
  return st;
}

/* ---- labels ---- */

cf_status cf_scprep_labels_read(struct cf_h5ad *a, char **columns, int64_t n_columns,
                                struct cf_scprep_labels *l) {
  memset(l, 0, sizeof *l);
  int64_t n = 0;
  cf_status st = cf_h5ad_read_index(a, "var", &l->var_index, &n);
  if (st == CF_OK) st = cf_h5ad_read_index(a, "obs", &l->obs_index, &n);
  if (st == CF_OK)
    st = cf_agree(a->comm, cf_alloc((void **)&l->values, (size_t)(n_columns + 1) * sizeof(char **),
                                    "obs columns"));
  size_t nc = (size_t)(n_columns + 1);
  if (st == CF_OK)
    st = cf_agree(a->comm, cf_alloc((void **)&l->kinds, nc * sizeof *l->kinds, "obs kinds"));
  if (st == CF_OK)
    st = cf_agree(a->comm,
                  cf_alloc((void **)&l->n_categories, nc * sizeof(int64_t), "obs categories"));
  if (st == CF_OK)
    st = cf_agree(a->comm,
                  cf_alloc((void **)&l->categories, nc * sizeof(char **), "obs categories"));
  if (st == CF_OK) {
    l->columns = columns;
    l->n_columns = n_columns;
  }
  for (int64_t c = 0; st == CF_OK && c < n_columns; c++) {
    st = cf_h5ad_read_strings(a, "obs", columns[c], &l->values[c], &n);
    if (st == CF_OK) st = cf_h5ad_column_kind(a, "obs", columns[c], &l->kinds[c]);
    if (st == CF_OK && l->kinds[c] == CF_H5AD_CATEGORICAL) {
      int32_t *codes = NULL;
      int64_t nn = 0;
      st = cf_h5ad_read_categorical(a, "obs", columns[c], &codes, &nn, &l->categories[c],
                                    &l->n_categories[c]);
      cf_free((void **)&codes);
    }
  }
  if (st != CF_OK) cf_scprep_labels_release(l);
  return st;
}

void cf_scprep_labels_release(struct cf_scprep_labels *l) {
  cf_free((void **)&l->var_index);
  cf_free((void **)&l->obs_index);
  for (int64_t c = 0; l->values && c < l->n_columns; c++)
    cf_free((void **)&l->values[c]);
  for (int64_t c = 0; l->categories && c < l->n_columns; c++)
    cf_free((void **)&l->categories[c]);
  cf_free((void **)&l->values);
  cf_free((void **)&l->kinds);
  cf_free((void **)&l->n_categories);
  cf_free((void **)&l->categories);
  memset(l, 0, sizeof *l);
}

/* ---- the output file ---- */

static cf_status writer_ok(const struct cf_h5_writer *w) {
  CF_CHECK(!w->failed && w->file >= 0, CF_EINVAL, "writer for '%s' used after a failure", w->path);
  return CF_OK;
}

/* Collective. Float32 dataset dset (n_total, cols) of which this rank holds rows
 * [offset, offset + rows) in x. */
static cf_status put_rows(struct cf_h5_writer *w, const char *dset, const float *x, int64_t rows,
                          int64_t cols, int64_t offset, int64_t n_total) {
  CF_TRY(writer_ok(w));
  int64_t shape[2] = {n_total, cols};
  hid_t did = -1;
  CF_TRY(cf_h5_writer_reserve(w, 2048.0 + (double)n_total * (double)cols * sizeof(float)));
  cf_status st = cf_io_create_f32((hid_t)w->file, dset, 2, shape, w->tmp, &did);
  if (st == CF_OK) {
    hsize_t dims[2] = {(hsize_t)n_total, (hsize_t)cols};
    st = cf_io_write_rows(did, 2, dims, offset, offset + rows, x, w->tmp, dset);
  }
  if (did >= 0) H5Dclose(did);
  st = cf_agree(w->comm, st);
  if (st != CF_OK) w->failed = 1;
  return st;
}

/* Collective. x (identical on every rank) in double, written as float32 dataset dset. */
static cf_status put_f64(struct cf_h5_writer *w, const char *dset, const double *x, int ndim,
                         const int64_t *shape) {
  CF_TRY(writer_ok(w));
  size_t total = 1;
  cf_status st = CF_OK;
  for (int i = 0; i < ndim && st == CF_OK; i++)
    st = cf_mul_size(&total, total, (size_t)shape[i], dset);
  float *f = NULL;
  if (st == CF_OK) st = cf_alloc((void **)&f, (total ? total : 1) * sizeof(float), dset);
  st = cf_agree(w->comm, st);
  if (st != CF_OK) {
    w->failed = 1;
    return st;
  }
  for (size_t i = 0; i < total; i++)
    f[i] = (float)x[i];
  st = cf_h5_writer_put(w, dset, f, ndim, shape);
  cf_free((void **)&f);
  return st;
}

/* Collective. Dataset dset of n fixed-length UTF-8 strings s[sel[i]] (sel NULL: s[i]), NUL
 * terminated and padded; rank 0 writes them (the others take part with empty selections). */
static cf_status put_strings(struct cf_h5_writer *w, const char *dset, char *const *s,
                             const int64_t *sel, int64_t n) {
  CF_TRY(writer_ok(w));
  size_t width = 1;
  for (int64_t i = 0; i < n; i++) {
    size_t len = strlen(s[sel ? sel[i] : i]) + 1;
    if (len > width) width = len;
  }
  char *buf = NULL;
  size_t bytes = 0;
  cf_status st = cf_mul_size(&bytes, (size_t)n, width, dset);
  if (st == CF_OK && w->rank == 0) st = cf_alloc((void **)&buf, bytes ? bytes : 1, dset);
  st = cf_agree(w->comm, st);
  if (st != CF_OK) {
    w->failed = 1;
    cf_free((void **)&buf);
    return st;
  }
  st = cf_h5_writer_reserve(w, 2048.0 + (double)bytes);
  if (st != CF_OK) {
    cf_free((void **)&buf);
    return st;
  }
  if (w->rank == 0)
    for (int64_t i = 0; i < n; i++)
      memcpy(buf + (size_t)i * width, s[sel ? sel[i] : i], strlen(s[sel ? sel[i] : i]));

  char why[256];
  hsize_t dims[1] = {(hsize_t)n}, one[1] = {1};
  hid_t t = H5Tcopy(H5T_C_S1), lcpl = H5Pcreate(H5P_LINK_CREATE);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), sp = H5Screate_simple(1, dims, NULL);
  hid_t did = -1, fs = -1, ms = -1, dxpl = -1;
  if (t < 0 || lcpl < 0 || dcpl < 0 || sp < 0 || H5Tset_size(t, width) < 0 ||
      H5Tset_strpad(t, H5T_STR_NULLTERM) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0 ||
      H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0)
    st = cf_err(CF_EIO, "cannot set up dataset '%s' of '%s': %s", dset, w->tmp,
                cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) {
    did = H5Dcreate2((hid_t)w->file, dset, t, sp, lcpl, dcpl, H5P_DEFAULT);
    if (did < 0)
      st = cf_err(CF_EIO, "cannot create dataset '%s' in '%s': %s", dset, w->tmp,
                  cf_io_h5_reason(why, sizeof why));
  }
  if (st == CF_OK) {
    fs = H5Dget_space(did);
    ms = H5Screate_simple(1, w->rank == 0 ? dims : one, NULL);
    dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (fs < 0 || ms < 0 || dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0 ||
        (w->rank != 0 && (H5Sselect_none(fs) < 0 || H5Sselect_none(ms) < 0)))
      st = cf_err(CF_EIO, "cannot select '%s' of '%s': %s", dset, w->tmp,
                  cf_io_h5_reason(why, sizeof why));
  }
  if (st == CF_OK) {
    char dummy[1] = {0};
    if (H5Dwrite(did, t, ms, fs, dxpl, w->rank == 0 ? (void *)buf : (void *)dummy) < 0)
      st = cf_err(CF_EIO, "cannot write '%s' of '%s': %s", dset, w->tmp,
                  cf_io_h5_reason(why, sizeof why));
  }
  if (dxpl >= 0) H5Pclose(dxpl);
  if (ms >= 0) H5Sclose(ms);
  if (fs >= 0) H5Sclose(fs);
  if (did >= 0) H5Dclose(did);
  if (sp >= 0) H5Sclose(sp);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (lcpl >= 0) H5Pclose(lcpl);
  if (t >= 0) H5Tclose(t);
  cf_free((void **)&buf);
  st = cf_agree(w->comm, st);
  if (st != CF_OK) w->failed = 1;
  return st;
}

/* Collective. The attributes of obs column dataset dset: kind ("categorical", "string",
 * "numeric", "boolean") and, for a categorical column with categories, categories (a 1-D
 * fixed-length UTF-8 string attribute, the categories in code order). */
static cf_status put_column_attrs(struct cf_h5_writer *w, const char *dset, enum cf_h5ad_kind kind,
                                  char *const *cats, int64_t ncat) {
  CF_TRY(writer_ok(w));
  static const char *const names[] = {"", "numeric", "boolean", "string", "categorical"};
  const char *kn = kind >= CF_H5AD_NUMERIC && kind <= CF_H5AD_CATEGORICAL ? names[kind] : "";
  char why[256];
  size_t width = 1;
  for (int64_t i = 0; i < ncat; i++)
    if (strlen(cats[i]) + 1 > width) width = strlen(cats[i]) + 1;
  CF_TRY(cf_h5_writer_reserve(w, 512.0 + 2.0 * (double)(ncat > 0 ? ncat : 0) * (double)width));
  char *buf = NULL;
  size_t bytes = 0;
  cf_status st = cf_mul_size(&bytes, (size_t)(ncat > 0 ? ncat : 1), width, dset);
  if (st == CF_OK) st = cf_alloc((void **)&buf, bytes, dset);
  for (int64_t i = 0; st == CF_OK && i < ncat; i++)
    memcpy(buf + (size_t)i * width, cats[i], strlen(cats[i]));
  hid_t did = st == CF_OK ? H5Dopen2((hid_t)w->file, dset, H5P_DEFAULT) : -1;
  if (st == CF_OK && did < 0)
    st = cf_err(CF_EIO, "cannot open '%s' of '%s': %s", dset, w->tmp,
                cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) st = cf_io_attr_put_str(did, "kind", kn, w->tmp);
  if (st == CF_OK && kind == CF_H5AD_CATEGORICAL && ncat > 0) {
    hsize_t dims[1] = {(hsize_t)ncat};
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate_simple(1, dims, NULL), at = -1;
    if (t >= 0 && sp >= 0 && H5Tset_size(t, width) >= 0 &&
        H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0 && H5Tset_cset(t, H5T_CSET_UTF8) >= 0)
      at = H5Acreate2(did, "categories", t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (at < 0 || H5Awrite(at, t, buf) < 0)
      st = cf_err(CF_EIO, "cannot write the categories of '%s' in '%s': %s", dset, w->tmp,
                  cf_io_h5_reason(why, sizeof why));
    if (at >= 0) H5Aclose(at);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
  }
  if (did >= 0) H5Dclose(did);
  cf_free((void **)&buf);
  st = cf_agree(w->comm, st);
  if (st != CF_OK) w->failed = 1;
  return st;
}

/* Collective. A float64 root attribute. */
static cf_status attr_f64(struct cf_h5_writer *w, const char *key, double v) {
  CF_TRY(writer_ok(w));
  char why[256];
  cf_status st = CF_OK;
  hid_t sp = H5Screate(H5S_SCALAR), at = -1;
  if (sp >= 0) at = H5Acreate2((hid_t)w->file, key, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (sp < 0 || at < 0 || H5Awrite(at, H5T_NATIVE_DOUBLE, &v) < 0)
    st = cf_err(CF_EIO, "cannot write attribute '%s' of '%s': %s", key, w->tmp,
                cf_io_h5_reason(why, sizeof why));
  if (at >= 0) H5Aclose(at);
  if (sp >= 0) H5Sclose(sp);
  st = cf_agree(w->comm, st);
  if (st != CF_OK) w->failed = 1;
  return st;
}

static cf_status write_body(struct cf_h5_writer *w, const struct cf_scprep *p,
                            const struct cf_scprep_labels *l, const float *x, int64_t x_cols,
                            const struct cf_scprep_pca *pca, const char *const *attrs,
                            int n_attrs) {
  int64_t g = p->n_genes;
  CF_TRY(put_rows(w, "/x", x, p->local_cells, x_cols, p->cell_offset, p->n_cells));
  if (pca) {
    int64_t sc[2] = {pca->k, g}, sm[1] = {g}, sv[1] = {pca->k};
    CF_TRY(put_f64(w, "/pca/components", pca->components, 2, sc));
    CF_TRY(put_f64(w, "/pca/mean", pca->mean, 1, sm));
    CF_TRY(put_f64(w, "/pca/variance", pca->variance, 1, sv));
  }
  CF_TRY(put_strings(w, "/genes", l->var_index, p->genes, g));
  CF_TRY(put_strings(w, "/obs/_index", l->obs_index, p->cells, p->n_cells));
  for (int64_t c = 0; c < l->n_columns; c++) {
    char name[CF_H5_PATH_MAX];
    snprintf(name, sizeof name, "/obs/%s", l->columns[c]);
    CF_TRY(put_strings(w, name, l->values[c], p->cells, p->n_cells));
    if (l->kinds != NULL)
      CF_TRY(put_column_attrs(w, name, l->kinds[c], l->categories ? l->categories[c] : NULL,
                              l->n_categories ? l->n_categories[c] : 0));
  }
  /* the copied columns in the order they were asked for (HDF5 lists a group's members by
   * name) */
  size_t len = 1;
  for (int64_t c = 0; c < l->n_columns; c++)
    len += strlen(l->columns[c]) + 1;
  char *names = NULL;
  cf_status st = cf_agree(w->comm, cf_alloc((void **)&names, len, "obs column names"));
  if (st != CF_OK) {
    w->failed = 1;
    return st;
  }
  for (int64_t c = 0; c < l->n_columns; c++) {
    if (c) strcat(names, ",");
    strcat(names, l->columns[c]);
  }
  st = cf_h5_writer_attr(w, "obs_columns", names);
  cf_free((void **)&names);
  CF_TRY(st);
  CF_TRY(cf_h5_writer_attr(w, "format", "calmflow-scdata"));
  CF_TRY(cf_io_writer_attr_i64(w, "version", 1));
  CF_TRY(cf_io_writer_attr_i64(w, "n_obs_file", p->n_obs));
  CF_TRY(cf_io_writer_attr_i64(w, "n_var_file", p->n_var));
  CF_TRY(cf_io_writer_attr_i64(w, "n_cells", p->n_cells));
  CF_TRY(cf_io_writer_attr_i64(w, "n_genes_expressed", p->n_expressed));
  CF_TRY(cf_io_writer_attr_i64(w, "n_genes", g));
  CF_TRY(cf_io_writer_attr_i64(w, "pca_k", pca ? pca->k : 0));
  CF_TRY(attr_f64(w, "hvg_min_variance", p->hvg_min_var));
  if (pca) CF_TRY(attr_f64(w, "pca_total_variance", pca->total_variance));
  for (int i = 0; i < n_attrs; i++)
    CF_TRY(cf_h5_writer_attr(w, attrs[2 * i], attrs[2 * i + 1]));
  return CF_OK;
}

cf_status cf_scprep_write(MPI_Comm comm, const char *path, const struct cf_scprep *p,
                          const struct cf_scprep_labels *l, const float *x, int64_t x_cols,
                          const struct cf_scprep_pca *pca, const char *const *attrs, int n_attrs) {
  CF_CHECK(p->n_cells >= 1 && p->n_genes >= 1 && x_cols >= 1 && (pca == NULL || pca->k >= 1),
           CF_EINVAL, "cannot write '%s': %lld cells, %lld genes, %lld columns", path,
           (long long)p->n_cells, (long long)p->n_genes, (long long)x_cols);
  struct cf_h5_writer w;
  CF_TRY(cf_h5_writer_open(&w, comm, path));
  cf_status st = write_body(&w, p, l, x, x_cols, pca, attrs, n_attrs);
  if (st == CF_OK) {
    st = cf_h5_writer_commit(&w);
  } else {
    cf_h5_writer_abort(&w);
  }
  CF_TRY(st);
  return CF_OK;
}
