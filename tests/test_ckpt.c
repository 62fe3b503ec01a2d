/* test_ckpt.c: checkpoints under MPI (run at 1, 2 and 3 ranks for uneven row splits):
 * tensor and metadata round trip (7x3, 5, 1x1, nested groups, a 100 KB options string),
 * shape mismatch and missing tensor errors, checksum mismatch after overwriting one element
 * through HDF5 and after flipping a raw byte in the dataset region, missing completion
 * mark, foreign file, newer format version, diverged replicas, failed writes that leave no
 * temporary file and the old checkpoint intact, ckpt/LATEST, and pruning to the newest K. */
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/ckpt.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "cf_test_mpi.h"

static int rank, size;
static MPI_Comm comm;

/* Rank 0 copies a file (then everyone waits). */
static void copy_file(const char *from, const char *to) {
  if (rank == 0) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int c;
    EXPECT(a && b, "copy %s -> %s", from, to);
    while (a && b && (c = fgetc(a)) != EOF)
      fputc(c, b);
    if (a) fclose(a);
    if (b) fclose(b);
  }
  MPI_Barrier(comm);
}

static void touch(const char *name) {
  char p[512];
  cf_test_path(p, sizeof p, name);
  FILE *f = fopen(p, "w");
  if (f) fclose(f);
}

static int exists(const char *name) {
  char p[512];
  cf_test_path(p, sizeof p, name);
  return access(p, F_OK) == 0;
}

#define NT 5
static const char *names[NT] = {"params/enc.fc1.weight", "params/enc.fc1.bias", "params/scale",
                                "adam_m/enc.fc1.weight", "adam_v/deep/nested/x"};
static const int ndims[NT] = {2, 1, 2, 2, 2};
static const int64_t shapes[NT][2] = {{7, 3}, {5, 0}, {1, 1}, {7, 3}, {2, 4}};
static float *src[NT];

static void make_tensors(struct cf_ckpt_tensor *t, float **data) {
  for (int i = 0; i < NT; i++) {
    t[i].name = names[i];
    t[i].ndim = ndims[i];
    t[i].shape[0] = shapes[i][0];
    t[i].shape[1] = shapes[i][1];
    t[i].data = data[i];
  }
}

static size_t count_of(int i) {
  return (size_t)shapes[i][0] * (size_t)(ndims[i] == 2 ? shapes[i][1] : 1);
}

static const char *options =
    "model: calmflow\nflow:\n  time_points: 8\n  path: bridge\ntrain:\n  lr: 1e-3\n  steps: 50\n";

static void test_roundtrip(void) {
  char p[512];
  cf_test_path(p, sizeof p, "ck.h5");
  struct cf_ckpt_tensor t[NT];
  make_tensors(t, src);
  struct cf_ckpt_meta m = {.step = 1234,
                           .seed = 0xdeadbeefcafef00dull,
                           .world = size,
                           .data_cursor = 98765,
                           .options_yaml = options,
                           .model_kind = "calmflow"};
  EXPECT_OK(cf_ckpt_write(comm, p, &m, t, NT), "write ck.h5");
  EXPECT(cf_test_count_tmp(cf_test_dir) == 0, "temporary file left after write");

  struct cf_ckpt_meta r;
  char *opt = NULL;
  EXPECT_OK(cf_ckpt_read_meta(comm, p, &r, &opt), "read meta");
  EXPECT(r.step == 1234 && r.seed == 0xdeadbeefcafef00dull && r.world == size &&
             r.data_cursor == 98765,
         "meta %lld %llx %lld %lld", (long long)r.step, (unsigned long long)r.seed,
         (long long)r.world, (long long)r.data_cursor);
  EXPECT(opt && r.options_yaml == opt && strcmp(opt, options) == 0, "options '%s'", opt ? opt : "");
  cf_free((void **)&opt);
  EXPECT(r.model_kind && strcmp(r.model_kind, "calmflow") == 0,
         "model_kind (after freeing options)");

  float *dst[NT];
  for (int i = 0; i < NT; i++)
    cf_alloc((void **)&dst[i], count_of(i) * sizeof(float), "test");
  struct cf_ckpt_tensor u[NT];
  make_tensors(u, dst);
  EXPECT_OK(cf_ckpt_read_tensors(comm, p, u, NT), "read tensors");
  for (int i = 0; i < NT; i++)
    EXPECT(memcmp(dst[i], src[i], count_of(i) * sizeof(float)) == 0, "tensor %s differs", names[i]);
  /* A subset in another order reads too. */
  struct cf_ckpt_tensor sub[2] = {u[3], u[1]};
  memset(dst[3], 0, count_of(3) * sizeof(float));
  EXPECT_OK(cf_ckpt_read_tensors(comm, p, sub, 2), "read subset");
  EXPECT(memcmp(dst[3], src[3], count_of(3) * sizeof(float)) == 0, "subset tensor differs");

  /* Shape mismatches (all counted), ndim mismatch, missing tensors. */
  u[0].shape[1] = 4;
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, 1),
              "tensor 'params/enc.fc1.weight' has shape 7x3, expected 7x4", "shape mismatch");
  u[3].shape[0] = 8;
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "(and 1 more", "two mismatches");
  make_tensors(u, dst);
  u[1].ndim = 2;
  u[1].shape[1] = 1;
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "has shape 5, expected 5x1", "ndim mismatch");
  make_tensors(u, dst);
  u[2].name = "params/nope";
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "has no tensor 'params/nope'",
              "missing tensor");
  u[2].name = "zzz/a";
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "has no tensor 'zzz/a'", "missing group");
  u[2].name = "params/../x";
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "'..' component", "bad name");
  for (int i = 0; i < NT; i++)
    cf_free((void **)&dst[i]);
}

/* Rank 0 modifies a copy of ck.h5 through `edit`, then every rank reads it. */
typedef void (*edit_fn)(const char *path);

static void overwrite_element(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "/params/enc.fc1.weight", H5P_DEFAULT);
  hid_t fs = H5Dget_space(d);
  hsize_t start[2] = {3, 1}, count[2] = {1, 1}, one = 1;
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
  hid_t ms = H5Screate_simple(1, &one, NULL);
  float v = src[0][3 * 3 + 1] + 1.0f;
  EXPECT(H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v) >= 0, "overwrite element");
  H5Sclose(ms);
  H5Sclose(fs);
  H5Dclose(d);
  H5Fclose(f);
}

static void flip_raw_byte(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "/adam_v/deep/nested/x", H5P_DEFAULT);
  haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  EXPECT(off != HADDR_UNDEF, "no offset for a contiguous dataset");
  int fd = open(path, O_RDWR);
  unsigned char b = 0;
  off_t at = (off_t)off + 13;
  EXPECT(fd >= 0 && pread(fd, &b, 1, at) == 1, "pread");
  b ^= 0x10;
  EXPECT(pwrite(fd, &b, 1, at) == 1, "pwrite");
  close(fd);
}

static void drop_complete(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  EXPECT(H5Adelete(f, "complete") >= 0, "delete complete");
  H5Fclose(f);
}

static void future_version(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
  int64_t v = CF_CKPT_FORMAT_VERSION + 1;
  EXPECT(H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0, "write format_version");
  H5Aclose(a);
  H5Fclose(f);
}

static void edited_copy(const char *name, edit_fn edit, char *p, size_t cap) {
  char ck[512];
  cf_test_path(ck, sizeof ck, "ck.h5");
  cf_test_path(p, cap, name);
  copy_file(ck, p);
  if (rank == 0) edit(p);
  MPI_Barrier(comm);
}

static void test_corruption(void) {
  char p[512];
  float *dst[NT];
  for (int i = 0; i < NT; i++)
    cf_alloc((void **)&dst[i], count_of(i) * sizeof(float), "test");
  struct cf_ckpt_tensor u[NT];
  make_tensors(u, dst);
  struct cf_ckpt_meta m;
  char *opt = NULL;

  edited_copy("elem.h5", overwrite_element, p, sizeof p);
  EXPECT_OK(cf_ckpt_read_meta(comm, p, &m, &opt), "meta of a file with a bad tensor");
  cf_free((void **)&opt);
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT),
              "tensor 'params/enc.fc1.weight' fails its checksum", "overwritten element");
  edited_copy("flip.h5", flip_raw_byte, p, sizeof p);
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT),
              "tensor 'adam_v/deep/nested/x' fails its checksum", "flipped byte");

  edited_copy("nomark.h5", drop_complete, p, sizeof p);
  EXPECT_FAIL(cf_ckpt_read_meta(comm, p, &m, &opt), "incomplete (no 'complete' mark)",
              "missing mark (meta)");
  EXPECT(opt == NULL && m.options_yaml == NULL, "meta output not cleared on error");
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "incomplete", "missing mark (tensors)");

  edited_copy("future.h5", future_version, p, sizeof p);
  EXPECT_FAIL(cf_ckpt_read_meta(comm, p, &m, &opt), "format_version 2, newer than this build",
              "future version");

  float x[4] = {1, 2, 3, 4};
  cf_test_path(p, sizeof p, "points.h5");
  EXPECT_OK(cf_h5_write_points(comm, p, "/x", x, 2, 2, NULL, 0), "write a points file");
  EXPECT_FAIL(cf_ckpt_read_meta(comm, p, &m, &opt), "is not a calmflow checkpoint", "foreign file");
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "is not a calmflow checkpoint",
              "foreign file (tensors)");
  cf_test_path(p, sizeof p, "nothere.h5");
  EXPECT_FAIL(cf_ckpt_read_meta(comm, p, &m, &opt), "no such file", "missing checkpoint");
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, u, NT), "no such file", "missing checkpoint (tensors)");
  for (int i = 0; i < NT; i++)
    cf_free((void **)&dst[i]);
}

static void test_failed_writes(void) {
  char p[512];
  struct cf_ckpt_tensor t[NT];
  make_tensors(t, src);
  struct cf_ckpt_meta m = {
      .step = 7, .seed = 1, .world = size, .options_yaml = "", .model_kind = "cfm"};
  cf_test_path(p, sizeof p, "missing-dir/step-0000007.h5");
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, t, NT), "does not exist", "write into a missing dir");

  /* Failures before and in the middle of a write leave ck.h5 as it was. */
  cf_test_path(p, sizeof p, "ck.h5");
  long len0 = 0, len1 = 0;
  unsigned char *before = rank == 0 ? cf_test_slurp(p, &len0) : NULL;
  struct cf_ckpt_tensor dup[3] = {t[0], t[1], t[0]};
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, dup, 3), "cannot create dataset '/params/enc.fc1.weight'",
              "duplicate tensor (fails inside HDF5 after the first tensors)");
  struct cf_ckpt_tensor bad = t[0];
  bad.ndim = 3;
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &bad, 1), "ndim 3", "bad ndim");
  bad = t[0];
  bad.name = "/params/x";
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &bad, 1), "must not start with '/'", "leading slash");
  if (size > 1) {
    float *w = NULL;
    cf_alloc((void **)&w, count_of(2) * sizeof(float), "test");
    memcpy(w, src[2], count_of(2) * sizeof(float));
    if (rank == size - 1) w[0] += 1.0f;
    struct cf_ckpt_tensor dv = t[2];
    dv.data = w;
    EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &dv, 1), "'params/scale' differs between ranks",
                "diverged replicas");
    cf_free((void **)&w);
  }
  if (rank == 0) {
    unsigned char *after = cf_test_slurp(p, &len1);
    EXPECT(before && after && len0 == len1 && memcmp(before, after, (size_t)len0) == 0,
           "ck.h5 changed by failed writes");
    free(after);
    free(before);
  }
  MPI_Barrier(comm);
  EXPECT(cf_test_count_tmp(cf_test_dir) == 0, "temporary file left after failed writes");

  /* A large options string (beyond the 64 KB compact attribute limit). */
  char *big = NULL;
  size_t nb = 100000;
  cf_alloc((void **)&big, nb + 1, "test");
  for (size_t i = 0; i < nb; i++)
    big[i] = (i % 61 == 60) ? '\n' : (char)('a' + i % 26);
  m.options_yaml = big;
  cf_test_path(p, sizeof p, "bigopt.h5");
  EXPECT_OK(cf_ckpt_write(comm, p, &m, t, 1), "write with 100 KB options");
  struct cf_ckpt_meta r;
  char *opt = NULL;
  EXPECT_OK(cf_ckpt_read_meta(comm, p, &r, &opt), "read 100 KB options");
  EXPECT(opt && strcmp(opt, big) == 0 && strcmp(r.model_kind, "cfm") == 0 && r.step == 7,
         "100 KB options round trip");
  cf_free((void **)&opt);
  cf_free((void **)&big);
}

static void test_latest_and_prune(void) {
  char ck[512], p[600];
  cf_test_path(ck, sizeof ck, "ckpt");
  if (rank == 0) mkdir(ck, 0700);
  MPI_Barrier(comm);
  EXPECT_FAIL(cf_ckpt_latest_read(ck, p, sizeof p), "LATEST missing", "no LATEST");
  MPI_Barrier(comm); /* rank 0 writes LATEST as soon as it enters the next call */
  EXPECT_OK(cf_ckpt_latest_write(comm, ck, "step-0000003.h5"), "LATEST write");
  EXPECT_FAIL(cf_ckpt_latest_read(ck, p, sizeof p), "names 'step-0000003.h5', which does not exist",
              "LATEST names a missing file");
  MPI_Barrier(comm); /* every rank has looked before rank 0 creates the file */
  if (rank == 0) touch("ckpt/step-0000003.h5");
  MPI_Barrier(comm);
  char want[600];
  snprintf(want, sizeof want, "%s/step-0000003.h5", ck);
  EXPECT_OK(cf_ckpt_latest_read(ck, p, sizeof p), "LATEST read");
  EXPECT(strcmp(p, want) == 0, "LATEST read '%s', expected '%s'", p, want);
  EXPECT_FAIL(cf_ckpt_latest_read(ck, p, 10), "longer than 10 bytes", "small buffer");
  EXPECT_FAIL(cf_ckpt_latest_write(comm, ck, "../x.h5"), "not a plain checkpoint file name",
              "LATEST with a path");
  EXPECT(!exists("ckpt/LATEST.tmp"), "LATEST.tmp left behind");
  MPI_Barrier(comm);
  if (rank == 0) {
    snprintf(p, sizeof p, "%s/LATEST", ck);
    FILE *f = fopen(p, "w");
    fputs("a/b\n", f);
    fclose(f);
  }
  MPI_Barrier(comm);
  EXPECT_FAIL(cf_ckpt_latest_read(ck, p, sizeof p), "does not hold a checkpoint file name",
              "corrupt LATEST");
  EXPECT_FAIL(cf_ckpt_prune(comm, ck, 2), "does not hold a checkpoint file name",
              "prune with a corrupt LATEST");

  /* Prune: steps 1..6, LATEST names the old step 2; keep 2 -> 5, 6 and 2 remain. */
  if (rank == 0) {
    char nm[64];
    for (int s = 1; s <= 6; s++) {
      snprintf(nm, sizeof nm, "ckpt/step-%07d.h5", s);
      touch(nm);
    }
    touch("ckpt/notes.txt");
    touch("ckpt/step-12.h5");
    touch("ckpt/step-0000004.h5.tmp.99");
    touch("ckpt/xstep-0000001.h5");
  }
  MPI_Barrier(comm);
  EXPECT_OK(cf_ckpt_latest_write(comm, ck, "step-0000002.h5"), "LATEST -> step 2");
  EXPECT_OK(cf_ckpt_prune(comm, ck, 2), "prune keep 2");
  static const char *left[] = {"ckpt/step-0000002.h5",  "ckpt/step-0000005.h5",
                               "ckpt/step-0000006.h5",  "ckpt/notes.txt",
                               "ckpt/step-12.h5",       "ckpt/step-0000004.h5.tmp.99",
                               "ckpt/xstep-0000001.h5", "ckpt/LATEST"};
  static const char *gone[] = {"ckpt/step-0000001.h5", "ckpt/step-0000003.h5",
                               "ckpt/step-0000004.h5"};
  for (size_t i = 0; i < sizeof left / sizeof *left; i++)
    EXPECT(exists(left[i]), "prune removed %s", left[i]);
  for (size_t i = 0; i < sizeof gone / sizeof *gone; i++)
    EXPECT(!exists(gone[i]), "prune kept %s", gone[i]);
  EXPECT_FAIL(cf_ckpt_prune(comm, ck, 0), "at least 1", "keep 0");
  EXPECT_OK(cf_ckpt_latest_write(comm, ck, "step-0000006.h5"), "LATEST -> step 6");
  EXPECT_OK(cf_ckpt_prune(comm, ck, 1), "prune keep 1");
  EXPECT(exists("ckpt/step-0000006.h5") && !exists("ckpt/step-0000005.h5") &&
             !exists("ckpt/step-0000002.h5"),
         "prune keep 1 with LATEST = newest");
  /* Without LATEST, prune keeps the newest K. */
  MPI_Barrier(comm);
  if (rank == 0) {
    snprintf(p, sizeof p, "%s/LATEST", ck);
    unlink(p);
    touch("ckpt/step-10000000.h5"); /* 8 digits sorts by number, not by name */
  }
  MPI_Barrier(comm);
  EXPECT_OK(cf_ckpt_prune(comm, ck, 1), "prune without LATEST");
  EXPECT(exists("ckpt/step-10000000.h5") && !exists("ckpt/step-0000006.h5"),
         "prune without LATEST kept the wrong file");
  MPI_Barrier(comm);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  cf_test_mpi_begin("test_ckpt", &comm, &rank, &size);
  for (int i = 0; i < NT; i++) {
    cf_alloc((void **)&src[i], count_of(i) * sizeof(float), "test");
    for (size_t k = 0; k < count_of(i); k++)
      src[i][k] = sinf(0.37f * (float)k + (float)i) * (float)(i + 1);
  }
  /* The checksum is FNV-1a 64 over the little-endian bytes: pin one value. */
  float one = 1.0f; /* bytes 00 00 80 3f */
  EXPECT(cf_ckpt_checksum(&one, 1) == 0x4b72477f9c5c2f98ull, "checksum of 1.0f is %016llx",
         (unsigned long long)cf_ckpt_checksum(&one, 1));
  test_roundtrip();
  test_corruption();
  test_failed_writes();
  test_latest_and_prune();
  for (int i = 0; i < NT; i++)
    cf_free((void **)&src[i]);
  EXPECT(cf_alloc_bytes() == 0, "%zu bytes still allocated", cf_alloc_bytes());
  const char *name = cf_test_mpi_end(&comm, "test_ckpt");
  MPI_Finalize();
  return cf_test_done(name);
}
