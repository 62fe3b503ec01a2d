/* cmd_data.c: `calmflow data` — draw -data_n points of a synthetic distribution into an HDF5
 * file (/x, n x D); point i is the draw {seed, CF_RNG_DATA, 0, i}, the same at any rank count. */
#include <stdio.h>

#include "app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"

cf_status cf_cmd_data(MPI_Comm comm) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  struct cf_opts *o = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  CF_TRY(cf_opts_load(o, NULL, CMD_DATA));
  CF_TRY(cf_opts_check_unknown("data"));
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
  CF_TRY(cf_h5_write_points(comm, out, "/x", x, n, dim, attrs, 4));
  if (rank == 0)
    printf("wrote %lld x %lld points of '%s' to %s\n", (long long)n, (long long)dim, name, out);
  cf_free((void **)&x);
  cf_free((void **)&o);
  return CF_OK;
}
