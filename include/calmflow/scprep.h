/* scprep.h: single-cell preprocessing of an .h5ad expression matrix into a point set, the
 * numeric steps of `calmflow data -data_h5ad` (src/app/cmd_data.c runs them, with cf_pca_fit
 * between cf_scprep_read and cf_scprep_write; the file format is docs/data-format.md).
 *
 * The pipeline, on the file's X (n_obs cells, n_var genes), rows split over the ranks as
 * cf_h5ad_rows says (no rank holds the whole matrix):
 *   1. one streaming pass (cf_h5ad_scan over all genes, cf_scprep_scan): per cell the library
 *      size total_i = sum_j x_ij over ALL n_var genes and the number of expressed (nonzero)
 *      genes; cells with fewer than min_genes expressed genes are dropped; over the kept
 *      cells, per gene the number of cells expressing it and the sum and sum of squares of
 *      the transformed values v_ij (step 3);
 *   2. genes expressed in fewer than min_cells kept cells are dropped; of the rest the hvg
 *      genes of largest variance of v (sample variance over the kept cells, divisor n - 1;
 *      ties to the lower gene index) are kept (hvg 0 or hvg >= the genes left: all of them),
 *      listed in the file's gene order. Rank 0 chooses and broadcasts, so every rank holds
 *      the same list. The sums are accumulated in double-double (error-free two-sum), so the
 *      variances, and the choice, do not depend on the rank count except for ties closer
 *      than about 1e-30 relative;
 *   3. the kept genes of this rank's rows are read (cf_h5ad_read_x with the column subset),
 *      the dropped cells removed, and each value transformed
 *          v_ij = log1p(x_ij * (normalize / total_i))     (normalize > 0, log1p on)
 *      where the factor is 1 when normalize == 0, the library size is the full row's (before
 *      any gene is dropped), a cell with total 0 keeps its zeros, and log1p is skipped when
 *      off; computed in double, stored as float32. Steps 1 and 3 use the same expression, so
 *      the values whose variance chose the genes are the values the PCA sees.
 * X must hold finite values, and values >= 0 when normalize or log1p is on (an error names
 * the row and gene otherwise).
 *
 * Every function here that takes a communicator or a struct cf_h5ad is collective on it and
 * returns the same status on every rank. Arrays are cf_alloc'd.
 */
#ifndef CALMFLOW_SCPREP_H
#define CALMFLOW_SCPREP_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/h5ad.h"

struct cf_scprep_opts {
  int64_t min_genes; /* cells with fewer expressed genes are dropped (0: none) */
  int64_t min_cells; /* genes expressed in fewer kept cells are dropped (0: none) */
  double normalize;  /* library-size target, e.g. 1e4 (0: no normalization) */
  int log1p;         /* 1: v = log1p(normalized x) */
  int64_t hvg;       /* highly variable genes kept (0: all genes left after min_cells) */
};

/* The result of cf_scprep_scan. Arrays owned (cf_scprep_release); genes, keep, cells and the
 * gene statistics are identical on every rank. */
struct cf_scprep {
  int64_t n_obs, n_var; /* the file's cells and genes */
  int64_t lo, hi;       /* this rank's rows of the file */
  int64_t n_cells;      /* cells kept (min_genes) */
  int64_t n_expressed;  /* genes left after min_cells */
  int64_t n_genes;      /* genes chosen, G */
  int64_t local_cells;  /* kept cells among this rank's rows */
  int64_t cell_offset;  /* kept cells of the ranks before: this rank's first output row */
  double *total;        /* (hi - lo) library size of this rank's rows */
  uint8_t *keep;        /* (n_obs) 1 = cell kept */
  int64_t *cells;       /* (n_cells) the kept cells' rows in the file, ascending */
  int64_t *genes;       /* (n_genes) the chosen genes' columns in the file, ascending */
  double *gene_mean;    /* (n_genes) mean of v over the kept cells */
  double *gene_var;     /* (n_genes) sample variance of v (divisor n_cells - 1) */
  double hvg_min_var;   /* smallest variance among the chosen genes */
};

/* Collective on a's communicator. Steps 1 and 2 above (one pass over X). On failure *p holds
 * nothing. CF_EINVAL for negative options; CF_ECORRUPT for a NaN / Inf, or a negative value
 * when normalize or log1p is on, naming the cell and gene. No check on the counts left (the
 * caller decides what is too few). */
cf_status cf_scprep_scan(struct cf_h5ad *a, const struct cf_scprep_opts *o, struct cf_scprep *p);

/* Collective. Step 3: *x (local_cells, n_genes) float32 row-major, this rank's kept cells in
 * file order (at least one float is allocated). */
cf_status cf_scprep_read(struct cf_h5ad *a, const struct cf_scprep_opts *o,
                         const struct cf_scprep *p, float **x);

/* Local. Free the arrays and zero *p (harmless to repeat). */
void cf_scprep_release(struct cf_scprep *p);

/* Collective. The obs columns named by spec: "" = every categorical and string column in
 * column-order, "none" = no column, else a comma-separated list (spaces around names
 * ignored; any column kind) checked against the file. A name with '/' or equal to "_index"
 * or repeated is refused. *names (cf_alloc'd, one block: pointers then bytes; *n of them,
 * *names non-NULL even when *n == 0). `option` names the option in messages. */
cf_status cf_scprep_obs_columns(struct cf_h5ad *a, const char *spec, const char *option,
                                char ***names, int64_t *n);

/* The labels written with the points: read from the .h5ad before it is closed. */
struct cf_scprep_labels {
  char **var_index;         /* (n_var) gene names */
  char **obs_index;         /* (n_obs) cell names */
  int64_t n_columns;        /* obs columns copied */
  char **columns;           /* (n_columns) their names (borrowed, from cf_scprep_obs_columns) */
  char ***values;           /* (n_columns) each (n_obs) strings, cf_h5ad_read_strings */
  enum cf_h5ad_kind *kinds; /* (n_columns) what each column is in the .h5ad */
  int64_t *n_categories;    /* (n_columns) a categorical column's category count, else 0 */
  char ***categories;       /* (n_columns) a categorical column's categories in code order
                               (as cf_h5ad_read_categorical formats them), else NULL */
};

/* Collective. Read the var and obs indices and the obs columns `columns` (as strings:
 * categories as their category, numbers in the shortest form, missing ""), each column's kind
 * and, for a categorical one, its categories. */
cf_status cf_scprep_labels_read(struct cf_h5ad *a, char **columns, int64_t n_columns,
                                struct cf_scprep_labels *l);
/* Local. Free what cf_scprep_labels_read allocated (not the column names). */
void cf_scprep_labels_release(struct cf_scprep_labels *l);

/* The fitted PCA to store (NULL in cf_scprep_write: /x holds the genes). */
struct cf_scprep_pca {
  int64_t k;                /* components */
  const double *mean;       /* (n_genes) */
  const double *components; /* (k, n_genes) row-major, orthonormal rows */
  const double *variance;   /* (k) explained variance, divisor n_cells - 1 */
  double total_variance;    /* sum of the genes' variances */
};

/* Collective on comm. Write the output file `path` atomically (temporary + rename; on any
 * failure nothing is left and an old file at path is untouched): /x from this rank's rows x
 * (p->local_cells, x_cols) at output rows [cell_offset, cell_offset + local_cells), the
 * /pca group when pca != NULL, /genes, /obs/_index and /obs/<column> (fixed-length UTF-8
 * strings, kept cells / chosen genes only; each column dataset with the attribute kind and,
 * when categorical, categories), the root attributes describing the file
 * (format, version, sizes) and then the string attributes attrs[2i] = key, attrs[2i+1] =
 * value, i < n_attrs (the options). Layout: docs/data-format.md. */
cf_status cf_scprep_write(MPI_Comm comm, const char *path, const struct cf_scprep *p,
                          const struct cf_scprep_labels *l, const float *x, int64_t x_cols,
                          const struct cf_scprep_pca *pca, const char *const *attrs, int n_attrs);

#endif
