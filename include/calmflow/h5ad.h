/* h5ad.h: reading AnnData .h5ad files (single-cell expression matrices) over parallel HDF5.
 *
 * An .h5ad file holds X (n_obs cells x n_var genes) and two data frames, obs (one row per
 * cell) and var (one row per gene). The file is opened with the MPI-IO driver on the
 * caller's communicator (cf_io_fapl: a topology-free copy, collective metadata) and X is read
 * with collective transfers, each rank its own row range, into dense float32 rows.
 *
 * What is read (anything else is refused with one line naming the file, the HDF5 path, what
 * was found and what was expected, e.g. "'a.h5ad' /X: encoding-type 'awkward-array' not
 * supported (expected csr_matrix, csc_matrix or array)"):
 *   X    group encoding-type "csr_matrix" or "csc_matrix" (encoding-version 0.1.0; attribute
 *        shape, datasets data, indices, indptr), or a 2-D dataset "array" (0.2.0); the old
 *        layouts without encoding attributes too (a group with h5sparse_format "csr"/"csc"
 *        and h5sparse_shape, a plain 2-D dataset). indptr and indices: any integer type
 *        (int32 and int64 in practice); data / the array: float32, float64, any integer
 *        type or h5py's bool. Duplicate entries of a sparse row are summed (as scipy does).
 *        A float64 value outside the float32 range is an error; NaN passes through.
 *   obs, var  group encoding-type "dataframe" (0.2.0, or 0.1.0 with its __categories), its
 *        index named by the attribute _index, its columns listed by column-order. Columns:
 *          "array" (1-D numbers: any integer or float type; h5py's bool enum -> BOOLEAN),
 *          "string-array" (variable-length or fixed-length strings, UTF-8 or ASCII),
 *          "categorical" (0.2.0: group with codes (integers, -1 = missing) and categories
 *          (strings or numbers)), the old categorical (a codes dataset whose attribute
 *          "categories" references a dataset, dataframe 0.1.0), "nullable-integer" and
 *          "nullable-boolean" (0.1.0: values + mask, masked = missing).
 * Missing values (code -1, masked) read as "" in strings and NaN in numbers.
 *
 * Reading rows of a CSC matrix needs a scan: a read of rows [lo, hi) reads every stored value
 * (indices and data) of the selected columns, whatever the rows, so it costs O(nnz of those
 * columns) on every rank per call (per block in cf_h5ad_scan); CSR costs O(nnz of the rows)
 * and dense O(rows x n_var). Reads go in pieces of at most max_read stored values (sparse) or
 * rows of n_var values (dense), so temporary memory stays bounded whatever the range.
 *
 * Every function that takes a struct cf_h5ad is collective on the communicator it was opened
 * on and returns the same status on every rank (a failing rank's message is adopted by the
 * others). HDF5's own error printing is switched off. Output arrays are cf_alloc'd (one block
 * each: a string array is the pointers followed by the bytes) and released with cf_free.
 */
#ifndef CALMFLOW_H5AD_H
#define CALMFLOW_H5AD_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/h5io.h"

/* How X is stored. */
enum cf_h5ad_x {
  CF_H5AD_X_NONE = 0, /* the file has no X */
  CF_H5AD_X_CSR,      /* csr_matrix: rows are contiguous */
  CF_H5AD_X_CSC,      /* csc_matrix: columns are contiguous (row reads scan, see above) */
  CF_H5AD_X_DENSE     /* array (n_obs, n_var) */
};

/* What an obs / var column holds. */
enum cf_h5ad_kind {
  CF_H5AD_NUMERIC = 1, /* integers or floats (nullable-integer included) */
  CF_H5AD_BOOLEAN,     /* h5py bools (nullable-boolean included) */
  CF_H5AD_STRING,      /* string-array */
  CF_H5AD_CATEGORICAL  /* codes + categories */
};

struct cf_h5ad {
  MPI_Comm comm;             /* borrowed */
  int rank, size;            /* in comm */
  int64_t file;              /* hid_t, -1 when closed */
  char path[CF_H5_PATH_MAX]; /* the file, for messages */
  int64_t n_obs, n_var;      /* cells, genes */
  enum cf_h5ad_x x_encoding; /* how X is stored */
  int64_t x_nnz;             /* stored values: sparse nnz, dense n_obs * n_var */
  char x_dtype[16];          /* X's values on disk: "float32", "float64", "int32", "bool", ... */
  char x_index_dtype[16];    /* sparse: indptr's type ("int32", "int64"); "" otherwise */
  int64_t max_read;          /* stored values per transfer (0: 1 << 20); tests set it small */
  /* private */
  int64_t x_data, x_indices, x_indptr;            /* hid_t of X's datasets, -1 where absent */
  int x_data_kind, x_indices_kind, x_indptr_kind; /* element kinds (h5ad.c) */
  int64_t *csc_indptr;                            /* CSC: (n_var + 1) column starts, read at open */
};

/* Collective on comm. Open `path` read-only and check X's layout (encoding, shape, dataset
 * lengths and types) and obs / var (dataframe encoding, index length equal to X's rows /
 * columns; a sparse X needs the index that confirms the dimension only its shape attribute
 * gives: var for CSR, obs for CSC). On error *a is closed (nothing to release) on every rank. */
cf_status cf_h5ad_open(struct cf_h5ad *a, MPI_Comm comm, const char *path);
/* Collective. Close the file; harmless to repeat. */
void cf_h5ad_close(struct cf_h5ad *a);

/* Local. "csr_matrix", "csc_matrix", "array" or "none". */
const char *cf_h5ad_x_name(enum cf_h5ad_x e);
/* Local. This rank's share of the rows: [rank * n_obs / size, (rank + 1) * n_obs / size). */
void cf_h5ad_rows(const struct cf_h5ad *a, int64_t *lo, int64_t *hi);

/* Collective. Rows [lo, hi) of X (each rank its own range, lo == hi to take no rows) as dense
 * float32 *x (hi - lo, ncols), row-major, cf_alloc'd (at least one float). Columns: cols ==
 * NULL reads all n_var in order (ncols ignored); else the var indices cols[0..ncols-1], each
 * in 0..n_var-1 and listed once, in the caller's order (e.g. highly variable genes).
 * *ncols_out, when not NULL, receives the number of columns read. */
cf_status cf_h5ad_read_x(struct cf_h5ad *a, int64_t lo, int64_t hi, const int64_t *cols,
                         int64_t ncols, float **x, int64_t *ncols_out);

/* Called by cf_h5ad_scan with rows [row0, row0 + nrows) of X, block (nrows, ncols) dense
 * row-major, valid for the call only. A failure ends the scan (on every rank). */
typedef cf_status (*cf_h5ad_block_fn)(void *ctx, int64_t row0, int64_t nrows, int64_t ncols,
                                      const float *block);

/* Collective. Stream rows [lo, hi) of X (each rank its own range) through fn in blocks of
 * block_rows rows (<= 0: as many rows as fit in 16 Mi floats, at least one), columns as in
 * cf_h5ad_read_x. Holds one block at a time; ranks with fewer blocks take part in the others'
 * transfers with empty selections. For CSC every block rescans the selected columns (header
 * comment): use one block (block_rows >= hi - lo) when it fits. */
cf_status cf_h5ad_scan(struct cf_h5ad *a, int64_t lo, int64_t hi, int64_t block_rows,
                       const int64_t *cols, int64_t ncols, cf_h5ad_block_fn fn, void *ctx);

/* Collective. frame is "obs" or "var". The column names in column-order (*names, *n). */
cf_status cf_h5ad_columns(struct cf_h5ad *a, const char *frame, char ***names, int64_t *n);
/* Collective. What column `name` of frame holds (reads only metadata). */
cf_status cf_h5ad_column_kind(struct cf_h5ad *a, const char *frame, const char *name,
                              enum cf_h5ad_kind *kind);
/* Collective. The frame's index (cell / gene names), *n = n_obs or n_var strings. */
cf_status cf_h5ad_read_index(struct cf_h5ad *a, const char *frame, char ***s, int64_t *n);
/* Collective. Column `name` as one string per row (for prompts): strings as stored,
 * categoricals as their category, numbers in the shortest %g form that reads back to the
 * stored value (integers without a fraction), booleans "True" / "False", missing "". */
cf_status cf_h5ad_read_strings(struct cf_h5ad *a, const char *frame, const char *name, char ***s,
                               int64_t *n);
/* Collective. Column `name` as one double per row: numbers, booleans 0 / 1, categoricals as
 * their category's value (numeric categories, or string categories that all parse as numbers,
 * e.g. hours "0", "24"), strings parsed as numbers; missing NaN. A string that is not a number
 * is an error naming it. */
cf_status cf_h5ad_read_numbers(struct cf_h5ad *a, const char *frame, const char *name, double **v,
                               int64_t *n);
/* Collective. A categorical column: *codes (n) in -1..ncat-1 (-1 missing) and the categories
 * as strings (numeric categories formatted as in cf_h5ad_read_strings). Any other kind is an
 * error naming what the column is. */
cf_status cf_h5ad_read_categorical(struct cf_h5ad *a, const char *frame, const char *name,
                                   int32_t **codes, int64_t *n, char ***categories, int64_t *ncat);

#endif
