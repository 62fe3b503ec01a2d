/* test_h5io.c: point-set HDF5 files under MPI: float32 and float64 round trips, root
 * attributes, the samples writer with a 3-D dataset, every bad input giving its message on
 * every rank (missing, not HDF5, truncated, missing dataset, wrong rank, empty, integer,
 * wrong column count, NaN/Inf/out of float32 range), and failed writes that leave no
 * temporary file and an existing target untouched. */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "cf_test_mpi.h"

static int rank, size;
static MPI_Comm comm;

/* Rank 0: a serial HDF5 file with one dataset of the given file/memory types. */
static void write_raw(const char *path, const char *dset, hid_t ftype, hid_t mtype, int nd,
                      const hsize_t *dims, const void *data) {
  if (rank == 0) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t s = H5Screate_simple(nd, dims, NULL);
    hid_t d = H5Dcreate2(f, dset, ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int ok =
        f >= 0 && s >= 0 && d >= 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    EXPECT(ok, "cannot write raw test file %s", path);
    H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
  }
  MPI_Barrier(comm);
}

/* Rank 0: string attribute `key` of the root group of path. */
static void expect_attr(const char *path, const char *key, const char *want) {
  if (rank != 0) return;
  char got[256] = "";
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t a = f >= 0 ? H5Aopen(f, key, H5P_DEFAULT) : -1;
  hid_t t = a >= 0 ? H5Aget_type(a) : -1;
  if (t >= 0 && H5Tget_size(t) < sizeof got) H5Aread(a, t, got);
  EXPECT(strcmp(got, want) == 0, "attribute %s of %s is '%s', expected '%s'", key, path, got, want);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  if (f >= 0) H5Fclose(f);
}

static void test_roundtrips(void) {
  char p[512];
  float x[7 * 3];
  for (int i = 0; i < 21; i++)
    x[i] = (float)i * 0.5f - 3.0f + (float)(i % 3) * 0.25f;
  const char *attrs[] = {"producer", "test_h5io", "generator", "moons"};
  cf_test_path(p, sizeof p, "pts.h5");
  EXPECT_OK(cf_h5_write_points(comm, p, "/x", x, 7, 3, attrs, 2), "write 7x3");
  float *y = NULL;
  int64_t n = 0, d = 0;
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", 3, &y, &n, &d), "read 7x3");
  EXPECT(n == 7 && d == 3 && y != NULL, "read shape %lld x %lld", (long long)n, (long long)d);
  for (int i = 0; y && i < 21; i++)
    EXPECT(y[i] == x[i], "element %d: %g vs %g", i, y[i], x[i]);
  cf_free((void **)&y);
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "read 7x3 without expect_d");
  cf_free((void **)&y);
  expect_attr(p, "producer", "test_h5io");
  expect_attr(p, "generator", "moons");
  /* Overwrite in place (rename over an existing file). */
  x[4] = 42.0f;
  EXPECT_OK(cf_h5_write_points(comm, p, "/x", x, 7, 3, NULL, 0), "rewrite 7x3");
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", 3, &y, &n, &d), "reread 7x3");
  EXPECT(y && y[4] == 42.0f, "rewritten value not read back");
  cf_free((void **)&y);

  /* One row: ranks beyond the first own no rows. */
  float one[2] = {1.5f, -2.5f};
  cf_test_path(p, sizeof p, "one.h5");
  EXPECT_OK(cf_h5_write_points(comm, p, "/x", one, 1, 2, NULL, 0), "write 1x2");
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", 2, &y, &n, &d), "read 1x2");
  EXPECT(n == 1 && d == 2 && y && y[0] == 1.5f && y[1] == -2.5f, "1x2 round trip");
  cf_free((void **)&y);

  /* float64 written by the test itself. */
  double xd[5 * 2];
  for (int i = 0; i < 10; i++)
    xd[i] = 0.1 * i - 0.33;
  hsize_t dims[2] = {5, 2};
  cf_test_path(p, sizeof p, "f64.h5");
  write_raw(p, "/x", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, dims, xd);
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", 2, &y, &n, &d), "read float64");
  EXPECT(n == 5 && d == 2, "float64 shape %lld x %lld", (long long)n, (long long)d);
  for (int i = 0; y && i < 10; i++)
    EXPECT(y[i] == (float)xd[i], "float64 element %d: %g vs %g", i, y[i], xd[i]);
  cf_free((void **)&y);
  MPI_Barrier(comm); /* every rank done with the directory (the MPI-IO layer's files too) */
  EXPECT(cf_test_count_tmp(cf_test_dir) == 0, "temporary files left after round trips");
}

static void test_samples_writer(void) {
  char p[512];
  cf_test_path(p, sizeof p, "samples.h5");
  enum { N = 5, T = 3, D = 2 };
  float x[N * D], traj[N * T * D];
  for (int i = 0; i < N * T * D; i++)
    traj[i] = (float)i * 0.125f;
  for (int i = 0; i < N; i++)
    for (int k = 0; k < D; k++)
      x[i * D + k] = traj[(i * T + T - 1) * D + k];
  struct cf_h5_writer w;
  EXPECT_OK(cf_h5_writer_open(&w, comm, p), "writer open");
  int64_t sx[2] = {N, D}, st[3] = {N, T, D}, sn[1] = {3};
  EXPECT_OK(cf_h5_writer_put(&w, "/x", x, 2, sx), "put /x");
  EXPECT_OK(cf_h5_writer_put(&w, "/traj", traj, 3, st), "put /traj");
  EXPECT_OK(cf_h5_writer_put(&w, "/extra/deep/v", traj, 1, sn), "put nested /extra/deep/v");
  EXPECT_OK(cf_h5_writer_attr(&w, "producer", "calmflow sample"), "attr");
  EXPECT(rank != 0 || access(p, F_OK) != 0, "final file visible before commit");
  EXPECT_OK(cf_h5_writer_commit(&w), "commit");
  cf_h5_writer_abort(&w); /* harmless after commit */
  EXPECT(access(p, F_OK) == 0, "samples file missing after commit (or removed by abort)");
  float *y = NULL;
  int64_t n, d;
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", D, &y, &n, &d), "read samples /x");
  for (int i = 0; y && i < N * D; i++)
    EXPECT(y[i] == x[i], "samples /x element %d", i);
  cf_free((void **)&y);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/traj", 0, &y, &n, &d), "/traj is 3-D",
              "/traj read as points");
  EXPECT(y == NULL && n == 0 && d == 0, "outputs not cleared on error");
  expect_attr(p, "producer", "calmflow sample");
  if (rank == 0) {
    float back[N * T * D];
    hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "/traj", H5P_DEFAULT);
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[3] = {0, 0, 0};
    EXPECT(H5Sget_simple_extent_ndims(sp) == 3, "/traj is not 3-D");
    H5Sget_simple_extent_dims(sp, dims, NULL);
    EXPECT(dims[0] == N && dims[1] == T && dims[2] == D, "/traj dims %llu %llu %llu",
           (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2]);
    EXPECT(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, back) >= 0, "read /traj");
    for (int i = 0; i < N * T * D; i++)
      EXPECT(back[i] == traj[i], "/traj element %d: %g vs %g", i, back[i], traj[i]);
    H5Sclose(sp);
    H5Dclose(ds);
    H5Fclose(f);
  }
  MPI_Barrier(comm);
}

static void test_bad_inputs(void) {
  char p[512];
  float *y = NULL;
  int64_t n = -1, d = -1;
  cf_test_path(p, sizeof p, "missing.h5");
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "no such file", "missing file");
  EXPECT(y == NULL && n == 0 && d == 0, "outputs not cleared on error");
  EXPECT_FAIL(cf_h5_read_points(comm, cf_test_dir, "/x", 0, &y, &n, &d), "is a directory",
              "directory");

  cf_test_path(p, sizeof p, "garbage.h5");
  if (rank == 0) {
    FILE *f = fopen(p, "wb");
    for (int i = 0; i < 4000; i++)
      fputc((i * 7919) & 0xff, f);
    fclose(f);
  }
  MPI_Barrier(comm);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "is not an HDF5 file", "garbage");

  /* Truncated: a real file cut in half. */
  enum { BIG = 400 };
  float *big = NULL;
  cf_alloc((void **)&big, BIG * 4 * sizeof(float), "test");
  for (int i = 0; i < BIG * 4; i++)
    big[i] = (float)i;
  cf_test_path(p, sizeof p, "trunc.h5");
  EXPECT_OK(cf_h5_write_points(comm, p, "/x", big, BIG, 4, NULL, 0), "write file to truncate");
  cf_free((void **)&big);
  if (rank == 0) {
    struct stat sb;
    stat(p, &sb);
    EXPECT(truncate(p, sb.st_size / 2) == 0, "truncate");
  }
  MPI_Barrier(comm);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "trunc.h5", "truncated file");

  /* Structure errors. */
  cf_test_path(p, sizeof p, "pts.h5");
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/y", 0, &y, &n, &d),
              "has no dataset '/y' (expected an n x D float array)", "missing dataset");
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/g/y", 0, &y, &n, &d), "has no dataset '/g/y'",
              "missing nested dataset");
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 2, &y, &n, &d), "/x has 3 columns, expected 2",
              "column count");
  float v1[4] = {1, 2, 3, 4};
  hsize_t d1[1] = {4};
  cf_test_path(p, sizeof p, "rank1.h5");
  write_raw(p, "/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, d1, v1);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "/x is 1-D", "1-D dataset");
  hsize_t d0[2] = {0, 2};
  cf_test_path(p, sizeof p, "empty.h5");
  write_raw(p, "/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, d0, v1);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "is empty", "n == 0");
  int iv[6] = {1, 2, 3, 4, 5, 6};
  hsize_t di[2] = {3, 2};
  cf_test_path(p, sizeof p, "int.h5");
  write_raw(p, "/x", H5T_STD_I32LE, H5T_NATIVE_INT, 2, di, iv);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "holds integers", "integer dataset");

  /* Non-finite values, reported with row and column on every rank (the bad row sits in the
   * last rank's range). */
  float xb[7 * 3];
  hsize_t db[2] = {7, 3};
  for (int i = 0; i < 21; i++)
    xb[i] = (float)i;
  xb[5 * 3 + 1] = NAN;
  cf_test_path(p, sizeof p, "nan.h5");
  write_raw(p, "/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, db, xb);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "/x row 5 column 1 is NaN", "NaN");
  xb[5 * 3 + 1] = 0;
  xb[6 * 3 + 2] = INFINITY;
  cf_test_path(p, sizeof p, "inf.h5");
  write_raw(p, "/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, db, xb);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "row 6 column 2 is Inf", "Inf");
  xb[6 * 3 + 2] = 0;
  xb[0] = -INFINITY;
  cf_test_path(p, sizeof p, "minf.h5");
  write_raw(p, "/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, db, xb);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "row 0 column 0 is -Inf", "-Inf");
  double xd[3 * 2] = {0, 1, 2, 1e300, 4, 5};
  hsize_t dd[2] = {3, 2};
  cf_test_path(p, sizeof p, "f64big.h5");
  write_raw(p, "/x", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, dd, xd);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d),
              "row 1 column 1 is 1e+300, outside the float32 range", "float64 overflow");
  xd[3] = NAN;
  cf_test_path(p, sizeof p, "f64nan.h5");
  write_raw(p, "/x", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, dd, xd);
  EXPECT_FAIL(cf_h5_read_points(comm, p, "/x", 0, &y, &n, &d), "row 1 column 1 is NaN",
              "float64 NaN");
  EXPECT(y == NULL, "buffer returned on error");
}

static void test_failed_writes(void) {
  char p[512], q[512];
  float x[6] = {1, 2, 3, 4, 5, 6};
  cf_test_path(p, sizeof p, "nodir/sub/out.h5");
  EXPECT_FAIL(cf_h5_write_points(comm, p, "/x", x, 3, 2, NULL, 0), "does not exist",
              "write under a missing directory");
  EXPECT_FAIL(cf_h5_write_points(comm, cf_test_dir, "/x", x, 3, 2, NULL, 0), "is a directory",
              "write onto a directory");
  EXPECT_FAIL(cf_h5_write_points(comm, "", "/x", x, 3, 2, NULL, 0), "empty", "empty name");

  /* An existing target survives failed writes byte for byte. */
  cf_test_path(p, sizeof p, "keep.h5");
  EXPECT_OK(cf_h5_write_points(comm, p, "/x", x, 3, 2, NULL, 0), "write keep.h5");
  long len0 = 0, len1 = 0;
  unsigned char *before = rank == 0 ? cf_test_slurp(p, &len0) : NULL;
  float y[6] = {9, 9, 9, 9, 9, 9};
  EXPECT_FAIL(cf_h5_write_points(comm, p, "", y, 3, 2, NULL, 0), "empty dataset name",
              "empty dataset name");
  struct cf_h5_writer w;
  int64_t s2[2] = {3, 2}, s0[2] = {3, 0};
  EXPECT_OK(cf_h5_writer_open(&w, comm, p), "writer open on keep.h5");
  EXPECT_OK(cf_h5_writer_put(&w, "/x", y, 2, s2), "put");
  EXPECT_FAIL(cf_h5_writer_put(&w, "/x", y, 2, s2), "cannot create dataset '/x'",
              "duplicate dataset (HDF5 failure)");
  EXPECT_FAIL(cf_h5_writer_attr(&w, "k", "v"), "after a failure", "attr after failure");
  EXPECT_FAIL(cf_h5_writer_commit(&w), "abandoned", "commit after failure");
  cf_h5_writer_abort(&w);
  EXPECT_OK(cf_h5_writer_open(&w, comm, p), "writer open again");
  EXPECT_FAIL(cf_h5_writer_put(&w, "/y", y, 2, s0), "dimension 1 = 0", "zero dimension");
  cf_h5_writer_abort(&w);
  cf_h5_writer_abort(&w);
  EXPECT_OK(cf_h5_writer_open(&w, comm, p), "writer open a third time");
  EXPECT_FAIL(cf_h5_writer_put(&w, "/y", y, 0, s2), "0 dimensions", "ndim 0");
  cf_h5_writer_abort(&w);
  if (rank == 0) {
    unsigned char *after = cf_test_slurp(p, &len1);
    EXPECT(before && after && len0 == len1 && memcmp(before, after, (size_t)len0) == 0,
           "keep.h5 changed by failed writes (%ld -> %ld bytes)", len0, len1);
    free(after);
    free(before);
  }
  float *r = NULL;
  int64_t n, d;
  EXPECT_OK(cf_h5_read_points(comm, p, "/x", 2, &r, &n, &d), "read keep.h5");
  EXPECT(r && r[0] == 1 && r[5] == 6, "keep.h5 contents changed");
  cf_free((void **)&r);

  /* A read-only directory (only meaningful when not root). */
  if (geteuid() != 0) {
    cf_test_path(q, sizeof q, "ro");
    if (rank == 0) mkdir(q, 0555);
    MPI_Barrier(comm);
    cf_test_path(p, sizeof p, "ro/out.h5");
    EXPECT_FAIL(cf_h5_write_points(comm, p, "/x", x, 3, 2, NULL, 0), "not writable",
                "read-only directory");
    EXPECT(cf_test_count_tmp(q) == 0, "temporary file left in read-only dir");
    if (rank == 0) rmdir(q);
  }
  MPI_Barrier(comm);
  EXPECT(cf_test_count_tmp(cf_test_dir) == 0, "temporary files left after failed writes");
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  cf_test_mpi_begin("test_h5io", &comm, &rank, &size);
  test_roundtrips();
  test_samples_writer();
  test_bad_inputs();
  test_failed_writes();
  EXPECT(cf_alloc_bytes() == 0, "%zu bytes still allocated", cf_alloc_bytes());
  const char *name = cf_test_mpi_end(&comm, "test_h5io");
  MPI_Finalize();
  return cf_test_done(name);
}
