/* fuzz_h5ad.c: libFuzzer target for the AnnData .h5ad reader (src/io/h5ad.c) as `calmflow data
 * -data_h5ad` uses it: open (layout checks), the obs / var columns in every form (kinds,
 * strings, numbers, categorical codes), the indexes, and X rows from CSR, CSC or dense storage,
 * whole and in column subsets, read at once and streamed in blocks with small transfer pieces.
 * The input is an HDF5 file image, or operations for the structured builder (fuzz_common.h)
 * with the names anndata writes. Oracles besides ASan/UBSan: a scan in blocks gives the same
 * values as one read of the same rows, categorical codes lie in -1..ncat-1, and column reads
 * return one entry per row. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/h5ad.h"
#include "calmflow/mem.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

/* The dictionary (make_seeds.py reads it from here): anndata's names, obs columns c0..c5 and
 * var columns v0..v3 in each column layout (plain, categorical codes / categories, nullable
 * values / mask, the old __categories). */
#define COLUMN(f, c)                                                                               \
  f "/" c, f "/" c "/codes", f "/" c "/categories", f "/" c "/values", f "/" c "/mask",            \
      f "/__categories/" c
static const char *const g_paths[] = {"X",
                                      "X/data",
                                      "X/indices",
                                      "X/indptr",
                                      "obs",
                                      "obs/_index",
                                      "obs/index",
                                      "var",
                                      "var/_index",
                                      "var/index",
                                      "layers",
                                      "raw/X",
                                      "uns",
                                      COLUMN("obs", "c0"),
                                      COLUMN("obs", "c1"),
                                      COLUMN("obs", "c2"),
                                      COLUMN("obs", "c3"),
                                      COLUMN("obs", "c4"),
                                      COLUMN("obs", "c5"),
                                      COLUMN("var", "v0"),
                                      COLUMN("var", "v1"),
                                      COLUMN("var", "v2"),
                                      COLUMN("var", "v3")};
static const char *const g_attrs[] = {"encoding-type",   "encoding-version", "shape",
                                      "h5sparse_format", "h5sparse_shape",   "_index",
                                      "column-order",    "categories",       "ordered"};
static const char *const g_strs[] = {"anndata",
                                     "0.1.0",
                                     "0.2.0",
                                     "csr_matrix",
                                     "csc_matrix",
                                     "array",
                                     "dataframe",
                                     "categorical",
                                     "string-array",
                                     "nullable-integer",
                                     "nullable-boolean",
                                     "csr",
                                     "csc",
                                     "_index",
                                     "index",
                                     "c0",
                                     "c1",
                                     "c2",
                                     "c3",
                                     "c4",
                                     "c5",
                                     "v0",
                                     "v1",
                                     "v2",
                                     "v3",
                                     "",
                                     "0.3.0",
                                     "awkward-array",
                                     "dict",
                                     "1",
                                     "2.5",
                                     "nan",
                                     "True",
                                     "a/b",
                                     "..",
                                     "-3e2",
                                     "\xc3\xa9",
                                     "cell-1",
                                     "x y",
                                     "inf"};
#define COUNT(a) ((int)(sizeof a / sizeof a[0]))
static const struct cf_fuzz_dict g_dict = {g_paths,        COUNT(g_paths), g_attrs,
                                           COUNT(g_attrs), g_strs,         COUNT(g_strs)};

/* names read besides those in column-order (missing ones, bad names, the index by name) */
static const char *const g_extra[] = {"c0", "c1", "c5", "v0", "v3", "_index", "..", "a/b"};

#define MAX_ROWS 64  /* rows of X read per input */
#define MAX_COLS 256 /* columns of X read per input (a subset beyond) */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  cf_fuzz_init(argc, argv);
  return 0;
}

static void fail(const char *what) {
  fprintf(stderr, "cf_fuzz h5ad: %s\n", what);
  abort();
}

static void read_column(struct cf_h5ad *a, const char *frame, const char *name, int64_t rows) {
  enum cf_h5ad_kind kind;
  (void)cf_h5ad_column_kind(a, frame, name, &kind);
  char **s = NULL;
  int64_t n = 0;
  if (cf_fuzz_note(name, cf_h5ad_read_strings(a, frame, name, &s, &n)) == CF_OK && n != rows)
    fail("read_strings returned a different row count");
  for (int64_t i = 0; s && i < n; i++)
    (void)strlen(s[i]);
  cf_free((void **)&s);
  double *v = NULL;
  if (cf_h5ad_read_numbers(a, frame, name, &v, &n) == CF_OK && n != rows)
    fail("read_numbers returned a different row count");
  cf_free((void **)&v);
  int32_t *codes = NULL;
  char **cats = NULL;
  int64_t ncat = 0;
  if (cf_h5ad_read_categorical(a, frame, name, &codes, &n, &cats, &ncat) == CF_OK) {
    if (n != rows) fail("read_categorical returned a different row count");
    for (int64_t i = 0; i < n; i++)
      if (codes[i] < -1 || codes[i] >= ncat) fail("a categorical code is outside -1..ncat-1");
    for (int64_t i = 0; i < ncat; i++)
      (void)strlen(cats[i]);
  }
  cf_free((void **)&codes);
  cf_free((void **)&cats);
  cf_err_clear();
}

static void read_frame(struct cf_h5ad *a, const char *frame, int64_t rows) {
  char **names = NULL, **idx = NULL;
  int64_t n = 0, ni = 0;
  if (cf_h5ad_read_index(a, frame, &idx, &ni) == CF_OK && ni != rows)
    fail("read_index returned a different row count");
  cf_free((void **)&idx);
  if (cf_h5ad_columns(a, frame, &names, &n) == CF_OK)
    for (int64_t i = 0; i < n && i < 16; i++)
      read_column(a, frame, names[i], rows);
  cf_free((void **)&names);
  for (size_t i = 0; i < sizeof g_extra / sizeof g_extra[0]; i++)
    read_column(a, frame, g_extra[i], rows);
  cf_err_clear();
}

struct scan_ctx {
  const float *ref; /* (rows, ncols) from one read, or NULL */
  int64_t lo, hi, ncols;
};

static cf_status scan_cb(void *ctx, int64_t row0, int64_t nrows, int64_t ncols,
                         const float *block) {
  struct scan_ctx *c = ctx;
  if (row0 < c->lo || nrows < 1 || row0 + nrows > c->hi || ncols != c->ncols)
    fail("scan block outside the requested rows or with another column count");
  if (c->ref &&
      memcmp(block, c->ref + (row0 - c->lo) * ncols, (size_t)(nrows * ncols) * sizeof(float)))
    fail("a scan block differs from the same rows read at once");
  return CF_OK;
}

/* Rows [0, hi) of X with column list cols (NULL: all), read at once and scanned in blocks. */
static void read_x(struct cf_h5ad *a, int64_t hi, const int64_t *cols, int64_t ncols,
                   int64_t block) {
  float *x = NULL;
  int64_t got = 0;
  cf_status st = cf_fuzz_note("cf_h5ad_read_x", cf_h5ad_read_x(a, 0, hi, cols, ncols, &x, &got));
  if (st == CF_OK && got != (cols ? ncols : a->n_var)) fail("read_x: wrong column count");
  struct scan_ctx c = {st == CF_OK ? x : NULL, 0, hi, cols ? ncols : a->n_var};
  (void)cf_fuzz_note("cf_h5ad_scan", cf_h5ad_scan(a, 0, hi, block, cols, ncols, scan_cb, &c));
  cf_free((void **)&x);
  cf_err_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  MPI_Comm comm = cf_fuzz_comm();
  const char *path = cf_fuzz_path("cells.h5ad");
  cf_fuzz_h5_input(path, &g_dict, data, n);
  struct cf_h5ad a;
  if (cf_fuzz_note("cf_h5ad_open", cf_h5ad_open(&a, comm, path)) == CF_OK) {
    (void)cf_h5ad_x_name(a.x_encoding);
    int64_t lo, hi;
    cf_h5ad_rows(&a, &lo, &hi);
    if (lo != 0 || hi != a.n_obs) fail("one rank does not own all rows");
    read_frame(&a, "obs", a.n_obs);
    read_frame(&a, "var", a.n_var);
    char **names = NULL;
    int64_t nn = 0;
    if (cf_h5ad_columns(&a, "uns", &names, &nn) == CF_OK) fail("'uns' read as a frame");
    cf_err_clear();
    if (a.x_encoding != CF_H5AD_X_NONE) {
      unsigned knob = n > 0 ? data[n - 1] : 0;
      a.max_read = 1 + knob % 7; /* small transfer pieces: many pieces per read */
      int64_t rows = a.n_obs < MAX_ROWS ? a.n_obs : MAX_ROWS;
      int64_t nc = a.n_var < MAX_COLS ? a.n_var : MAX_COLS;
      int64_t *cols = NULL;
      if (cf_alloc((void **)&cols, (size_t)(nc + 1) * sizeof *cols, "columns") != CF_OK) abort();
      if (a.n_var <= MAX_COLS) read_x(&a, rows, NULL, 0, 1 + (knob >> 3) % 4);
      for (int64_t c = 0; c < nc; c++) /* reversed, every column up to MAX_COLS */
        cols[c] = nc - 1 - c;
      read_x(&a, rows, cols, nc, 2);
      for (int64_t c = 0; c < nc / 2; c++) /* every other column from the end */
        cols[c] = a.n_var - 1 - 2 * c;
      read_x(&a, rows, cols, nc / 2, 0);
      cols[0] = a.n_var; /* out of range: refused */
      read_x(&a, rows, cols, 1, 1);
      cf_free((void **)&cols);
    }
    cf_h5ad_close(&a);
  }
  cf_fuzz_after("h5ad");
  return 0;
}
