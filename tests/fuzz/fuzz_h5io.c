/* fuzz_h5io.c: libFuzzer target for the point-set reader behind `calmflow train -data_train
 * FILE.h5` / -data_source and `calmflow eval` (cf_app_dist and cf_h5_read_points, src/io/h5io.c).
 * The input is an HDF5 file image, or operations for the structured builder (fuzz_common.h)
 * with the names the reader looks for. Oracle besides ASan/UBSan: what the reader accepts has
 * n, D >= 1, the expected D and only finite values (its documented contract). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "app/app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

static const char *const g_paths[] = {"x", "y", "g", "g/x", "x/x", "data", "X", "xx"};
static const char *const g_attrs[] = {"a", "CLASS", "checksum", "producer"};
static const char *const g_strs[] = {"", "x", "/x", "float32", "calmflow data"};
static const struct cf_fuzz_dict g_dict = {g_paths, 8, g_attrs, 4, g_strs, 5};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  cf_fuzz_init(argc, argv);
  return 0;
}

static void check_points(const float *x, int64_t n, int64_t d, int64_t expect_d) {
  if (n < 1 || d < 1 || (expect_d > 0 && d != expect_d)) {
    fprintf(stderr, "cf_fuzz h5io: accepted %lld x %lld points (expected D %lld)\n", (long long)n,
            (long long)d, (long long)expect_d);
    abort();
  }
  for (int64_t i = 0; i < n * d; i++)
    if (!isfinite(x[i])) {
      fprintf(stderr, "cf_fuzz h5io: accepted a non-finite value at %lld\n", (long long)i);
      abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  MPI_Comm comm = cf_fuzz_comm();
  const char *path = cf_fuzz_path("points.h5");
  cf_fuzz_h5_input(path, &g_dict, data, n);
  /* as -data_train with -data_dim 2 */
  struct cf_dist dist;
  float *pts = NULL;
  if (cf_fuzz_note("cf_app_dist", cf_app_dist(comm, path, 2, "-data_train", &dist, &pts)) == CF_OK)
    check_points(pts, dist.n, dist.dim, 2);
  cf_free((void **)&pts);
  cf_err_clear();
  /* as eval's first set: any D */
  int64_t rows = 0, cols = 0;
  if (cf_fuzz_note("cf_h5_read_points",
                   cf_h5_read_points(comm, path, "/x", 0, &pts, &rows, &cols)) == CF_OK)
    check_points(pts, rows, cols, 0);
  cf_free((void **)&pts);
  cf_fuzz_after("h5io");
  return 0;
}
