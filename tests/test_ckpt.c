/* test_ckpt.c: checkpoints under MPI (run at 1 to 4 ranks for uneven splits):
 * tensor and metadata round trip (7x3, 5, 1x1, nested groups, a 100 KB options string),
 * shape mismatch and missing tensor errors, checksum mismatch after overwriting one element
 * through HDF5 and after flipping a raw byte in the dataset region, missing completion
 * mark, foreign file, newer format version, diverged replicas, failed writes that leave no
 * temporary file and the old checkpoint intact, ckpt/LATEST, and pruning to the newest K.
 * Sharded tensors: written from row blocks, column blocks (with empty blocks when there are
 * more ranks than rows), whole tensors held by a subset of ranks (pipeline stages, replicas
 * inferred or explicit), column blocks replicated over data-parallel groups, and replicated
 * whole tensors; read back at every other blocking and compared bit for bit with the global
 * values; the stored checksums against an independent whole-tensor computation (and pinned
 * values from docs/checkpoint-format.md's numpy recipe); flipped bits detected under any read
 * blocking; layouts that do not tile a tensor, bad blocks, differing tensor lists or metadata
 * and diverged replicas of a block refused; version-1 files (FNV-1a) still read; writing and
 * reading through a 4-D Cartesian communicator. */
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
    memset(&t[i], 0, sizeof t[i]); /* block fields zero: whole tensor, replicated */
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
  EXPECT_FAIL(cf_ckpt_read_meta(comm, p, &m, &opt), "format_version 3, newer than this build",
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
    touch("ckpt/step-0000004.h5.tmp.99"); /* a killed writer's temporary: removed */
    touch("ckpt/step-0000004.h5.tmp.x9"); /* not a writer's name: kept */
    touch("ckpt/xstep-0000001.h5");
  }
  MPI_Barrier(comm);
  EXPECT_OK(cf_ckpt_latest_write(comm, ck, "step-0000002.h5"), "LATEST -> step 2");
  EXPECT_OK(cf_ckpt_prune(comm, ck, 2), "prune keep 2");
  static const char *left[] = {"ckpt/step-0000002.h5",  "ckpt/step-0000005.h5",
                               "ckpt/step-0000006.h5",  "ckpt/notes.txt",
                               "ckpt/step-12.h5",       "ckpt/step-0000004.h5.tmp.x9",
                               "ckpt/xstep-0000001.h5", "ckpt/LATEST"};
  static const char *gone[] = {"ckpt/step-0000001.h5", "ckpt/step-0000003.h5",
                               "ckpt/step-0000004.h5", "ckpt/step-0000004.h5.tmp.99"};
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

/* ---- checksums and sharded tensors ---- */

/* The version-1 checksum (FNV-1a 64 over the little-endian bytes), to make version-1 files. */
static uint64_t fnv1a64(const float *x, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], sizeof u);
    for (int k = 0; k < 4; k++) {
      h ^= (u >> (8 * k)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

static void test_checksum(void) {
  /* Pinned with the numpy recipe of docs/checkpoint-format.md. */
  float one = 1.0f, v[6];
  for (int k = 0; k < 6; k++)
    v[k] = 0.5f * (float)k - 1.0f;
  EXPECT(cf_ckpt_checksum(&one, 1, 0, 0, 1, 1) == 0x420ff4a59b4c94c3ull,
         "checksum of [1.0f] is %016llx",
         (unsigned long long)cf_ckpt_checksum(&one, 1, 0, 0, 1, 1));
  EXPECT(cf_ckpt_checksum(v, 3, 0, 0, 2, 3) == 0x2b458ec5e3e40141ull,
         "checksum of the 2x3 tensor is %016llx",
         (unsigned long long)cf_ckpt_checksum(v, 3, 0, 0, 2, 3));
  /* Blocks add up: column 0..1 and column 2 of the 2x3 tensor; and rows 0 and 1. */
  float left[4] = {v[0], v[1], v[3], v[4]}, right[2] = {v[2], v[5]};
  uint64_t cols = cf_ckpt_checksum(left, 3, 0, 0, 2, 2) + cf_ckpt_checksum(right, 3, 0, 2, 2, 1);
  uint64_t rows = cf_ckpt_checksum(v, 3, 0, 0, 1, 3) + cf_ckpt_checksum(v + 3, 3, 1, 0, 1, 3);
  EXPECT(cols == 0x2b458ec5e3e40141ull && rows == cols, "block checksums do not add up");
  /* Position matters: the same value elsewhere, or two values swapped, changes it. */
  float sw[6];
  memcpy(sw, v, sizeof sw);
  sw[1] = v[2];
  sw[2] = v[1];
  EXPECT(cf_ckpt_checksum(sw, 3, 0, 0, 2, 3) != 0x2b458ec5e3e40141ull, "swap not seen");
  EXPECT(cf_ckpt_checksum(&one, 1, 1, 0, 1, 1) != 0x420ff4a59b4c94c3ull, "index not mixed in");
  /* The test's FNV-1a (for version-1 files) against the value version 1 pinned. */
  EXPECT(fnv1a64(&one, 1) == 0x4b72477f9c5c2f98ull, "fnv1a64 of 1.0f");
}

#define NS 6
static const char *snames[NS] = {"tp/qkv.weight",   "tp/out.weight", "tp/out.bias",
                                 "pp/stage.weight", "dp/ln.scale",   "tp/tiny"};
static const int sndims[NS] = {2, 2, 1, 2, 2, 2};
static const int64_t sshapes[NS][2] = {{9, 5}, {6, 7}, {11, 1}, {5, 4}, {4, 3}, {2, 6}};
static float *gref[NS]; /* the global values */

static int64_t scols(int i) {
  return sndims[i] == 2 ? sshapes[i][1] : 1;
}

/* How the ranks hold a tensor. */
enum {
  K_REPL,       /* whole on every rank, zero-initialised fields (plain data parallelism) */
  K_ROWS,       /* row blocks over all ranks (empty ones are data = NULL) */
  K_COLS,       /* column blocks over all ranks (1-D: row blocks) */
  K_STAGE_AUTO, /* whole on the upper half of the ranks only, replicas inferred */
  K_STAGE_ROWS, /* row blocks over the lower half of the ranks only, n_replicas 1 */
  K_TPDP,       /* column blocks over 2 tensor-parallel groups (rank % 2), replicated rank / 2 */
  K_STAGE_EXPL, /* whole on the upper half, explicit replica and n_replicas */
  NK
};

static void split(int64_t n, int r, int R, int64_t *lo, int64_t *hi) {
  *lo = n * r / R;
  *hi = n * (r + 1) / R;
}

/* Fill e (name, shape, block) for tensor i held as `kind` on this rank; *buf receives a fresh
 * buffer for the block (NULL when nothing is held). */
static void make_entry(struct cf_ckpt_tensor *e, int i, int kind, float **buf) {
  memset(e, 0, sizeof *e);
  e->name = snames[i];
  e->ndim = sndims[i];
  e->shape[0] = sshapes[i][0];
  e->shape[1] = sndims[i] == 2 ? sshapes[i][1] : 0;
  int64_t rows = sshapes[i][0], cols = scols(i);
  int64_t r0 = 0, nr = rows, c0 = 0, nc = cols, lo, hi;
  int held = 1, whole = 0, lower = size / 2 > 0 ? size / 2 : 1, upper = size / 2;
  switch (kind) {
  case K_REPL:
    whole = 1;
    break;
  case K_ROWS:
    split(rows, rank, size, &lo, &hi);
    r0 = lo;
    nr = hi - lo;
    break;
  case K_COLS:
    if (sndims[i] == 1) {
      split(rows, rank, size, &lo, &hi);
      r0 = lo;
      nr = hi - lo;
    } else {
      split(cols, rank, size, &lo, &hi);
      c0 = lo;
      nc = hi - lo;
    }
    break;
  case K_STAGE_AUTO:
    held = rank >= upper;
    whole = 1;
    break;
  case K_STAGE_ROWS:
    held = rank < lower;
    split(rows, rank, lower, &lo, &hi);
    r0 = lo;
    nr = hi - lo;
    e->replica = 0;
    e->n_replicas = 1;
    break;
  case K_TPDP: {
    int groups = size >= 2 ? 2 : 1, g = rank % groups;
    if (sndims[i] == 1) {
      split(rows, g, groups, &lo, &hi);
      r0 = lo;
      nr = hi - lo;
    } else {
      split(cols, g, groups, &lo, &hi);
      c0 = lo;
      nc = hi - lo;
    }
    e->replica = rank / groups;
    e->n_replicas = (size - g + groups - 1) / groups;
    break;
  }
  case K_STAGE_EXPL:
    held = rank >= upper;
    e->replica = rank - upper;
    e->n_replicas = size - upper;
    whole = 1;
    break;
  }
  *buf = NULL;
  if (!held || nr == 0 || nc == 0) return;
  if (!whole) {
    e->start[0] = r0;
    e->start[1] = c0;
    e->count[0] = nr;
    e->count[1] = sndims[i] == 2 ? nc : 0;
  }
  *buf = cf_test_floats((size_t)(nr * nc));
  e->data = *buf;
}

/* The block of entry e, from the global values (or, with to_ref, back into the global array). */
static void block_copy(const struct cf_ckpt_tensor *e, int i, float *blk, int to_ref) {
  int64_t cols = scols(i), r0 = e->start[0], c0 = sndims[i] == 2 ? e->start[1] : 0;
  int64_t nr = e->count[0], nc = sndims[i] == 2 ? e->count[1] : 1;
  if (e->count[0] == 0 && e->count[1] == 0) {
    nr = sshapes[i][0];
    nc = cols;
  }
  for (int64_t r = 0; r < nr; r++)
    for (int64_t c = 0; c < nc; c++) {
      if (to_ref)
        gref[i][(r0 + r) * cols + c0 + c] = blk[r * nc + c];
      else
        blk[r * nc + c] = gref[i][(r0 + r) * cols + c0 + c];
    }
}

static size_t block_len(const struct cf_ckpt_tensor *e, int i) {
  if (e->count[0] == 0 && e->count[1] == 0) return (size_t)(sshapes[i][0] * scols(i));
  return (size_t)(e->count[0] * (sndims[i] == 2 ? e->count[1] : 1));
}

/* A table where tensor i is held as kind (i + shift) % NK; write tables get the values. */
static void make_table(struct cf_ckpt_tensor *t, float **bufs, int shift, int for_write) {
  for (int i = 0; i < NS; i++) {
    make_entry(&t[i], i, (i + shift) % NK, &bufs[i]);
    if (bufs[i] == NULL) continue;
    if (for_write)
      block_copy(&t[i], i, bufs[i], 0);
    else
      memset(bufs[i], 0xff, block_len(&t[i], i) * sizeof(float)); /* NaN: must be overwritten */
  }
}

static void free_table(float **bufs) {
  for (int i = 0; i < NS; i++) {
    free(bufs[i]);
    bufs[i] = NULL;
  }
}

/* Read `path` with blocking `shift` and compare every held block bit for bit. */
static void read_and_compare(const char *path, int shift, const char *what) {
  struct cf_ckpt_tensor t[NS];
  float *bufs[NS];
  make_table(t, bufs, shift, 0);
  char msg[160];
  snprintf(msg, sizeof msg, "%s: read with blocking %d", what, shift);
  EXPECT_OK(cf_ckpt_read_tensors(comm, path, t, NS), msg);
  for (int i = 0; i < NS; i++) {
    if (bufs[i] == NULL) continue;
    float *want = cf_test_floats(block_len(&t[i], i));
    block_copy(&t[i], i, want, 0);
    EXPECT(memcmp(want, bufs[i], block_len(&t[i], i) * sizeof(float)) == 0,
           "%s: tensor %s (kind %d) differs", msg, snames[i], (i + shift) % NK);
    free(want);
  }
  free_table(bufs);
}

/* Rank 0, plain HDF5: the stored data and checksums of a sharded file against the globals. */
static void check_stored(const char *path) {
  if (rank == 0) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    EXPECT(f >= 0, "open %s", path);
    int64_t ver = 0;
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_INT64, &ver);
    H5Aclose(a);
    EXPECT(ver == 2, "format_version %lld", (long long)ver);
    char alg[64] = "";
    a = H5Aopen(f, "checksum_algorithm", H5P_DEFAULT);
    hid_t ty = H5Aget_type(a);
    if (H5Tget_size(ty) < sizeof alg) H5Aread(a, ty, alg);
    H5Tclose(ty);
    H5Aclose(a);
    EXPECT(strcmp(alg, "mix64sum-f32") == 0, "checksum_algorithm '%s'", alg);
    for (int i = 0; i < NS; i++) {
      size_t n = (size_t)(sshapes[i][0] * scols(i));
      float *x = cf_test_floats(n);
      char d[128];
      snprintf(d, sizeof d, "/%s", snames[i]);
      hid_t ds = H5Dopen2(f, d, H5P_DEFAULT);
      uint64_t sum = 0;
      EXPECT(ds >= 0 && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0,
             "read %s", d);
      a = H5Aopen(ds, "checksum", H5P_DEFAULT);
      H5Aread(a, H5T_NATIVE_UINT64, &sum);
      H5Aclose(a);
      H5Dclose(ds);
      EXPECT(memcmp(x, gref[i], n * sizeof(float)) == 0, "%s: stored %s differs", path, d);
      uint64_t want = cf_ckpt_checksum(gref[i], scols(i), 0, 0, sshapes[i][0], scols(i));
      EXPECT(sum == want, "%s: %s checksum %016llx, expected %016llx", path, d,
             (unsigned long long)sum, (unsigned long long)want);
      free(x);
    }
    H5Fclose(f);
  }
  MPI_Barrier(comm);
}

static void write_sharded(const char *name, int shift, char *p, size_t cap) {
  struct cf_ckpt_tensor t[NS];
  float *bufs[NS];
  make_table(t, bufs, shift, 1);
  struct cf_ckpt_meta m = {.step = 5, .world = size, .options_yaml = "x: 1\n", .model_kind = "cfm"};
  cf_test_path(p, cap, name);
  char msg[160];
  snprintf(msg, sizeof msg, "write %s with blocking %d", name, shift);
  EXPECT_OK(cf_ckpt_write(comm, p, &m, t, NS), msg);
  free_table(bufs);
}

static void test_sharded(void) {
  for (int i = 0; i < NS; i++) {
    size_t n = (size_t)(sshapes[i][0] * scols(i));
    gref[i] = cf_test_floats(n);
    for (size_t k = 0; k < n; k++)
      gref[i][k] = cosf(0.61f * (float)k + 0.3f * (float)i) * (float)(i + 2);
  }
  gref[1][0] = -0.0f; /* sign bits must survive */
  char p[512];
  static const int wshifts[] = {0, 3, 5};
  for (size_t w = 0; w < sizeof wshifts / sizeof *wshifts; w++) {
    char name[64];
    snprintf(name, sizeof name, "shard-w%d.h5", wshifts[w]);
    write_sharded(name, wshifts[w], p, sizeof p);
    check_stored(p);
    for (int r = 0; r < NK; r++)
      read_and_compare(p, r, name);
  }
  /* A checkpoint written by plain data parallelism (all whole) reads into every blocking. */
  struct cf_ckpt_tensor t[NS];
  float *bufs[NS];
  for (int i = 0; i < NS; i++) {
    make_entry(&t[i], i, K_REPL, &bufs[i]);
    block_copy(&t[i], i, bufs[i], 0);
  }
  struct cf_ckpt_meta m = {.step = 6, .world = size, .options_yaml = "", .model_kind = "cfm"};
  cf_test_path(p, sizeof p, "shard-dp.h5");
  EXPECT_OK(cf_ckpt_write(comm, p, &m, t, NS), "write whole tensors");
  free_table(bufs);
  check_stored(p);
  for (int r = 0; r < NK; r++)
    read_and_compare(p, r, "shard-dp.h5");
  /* Through a 4-D Cartesian communicator (like the training grid): Open MPI's OMPIO lost data
   * of collective writes on one until the io layer gave MPI-IO a topology-free copy. */
  MPI_Comm plain = comm, cart;
  int dims[4] = {size, 1, 1, 1}, periods[4] = {0, 0, 0, 0};
  MPI_Cart_create(plain, 4, dims, periods, 0, &cart);
  comm = cart;
  for (int w = 0; w < 3; w++) {
    char name[64];
    snprintf(name, sizeof name, "shard-cart%d.h5", w);
    write_sharded(name, 2 * w, p, sizeof p);
    check_stored(p);
    for (int r = 0; r < NK; r++)
      read_and_compare(p, r, name);
  }
  comm = plain;
  MPI_Comm_free(&cart);
}

/* Rank 0 flips bits of one element of tp/out.weight (row 2, column 5) and of tp/out.bias. */
static void flip_element_bits(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  static const char *which[2] = {"/tp/out.weight", "/tp/out.bias"};
  static const hsize_t at[2][2] = {{2, 5}, {7, 0}};
  for (int k = 0; k < 2; k++) {
    hid_t d = H5Dopen2(f, which[k], H5P_DEFAULT);
    hid_t fs = H5Dget_space(d);
    hsize_t count[2] = {1, 1}, one = 1;
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, at[k], NULL, count, NULL);
    hid_t ms = H5Screate_simple(1, &one, NULL);
    float v = 0;
    uint32_t u;
    EXPECT(H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v) >= 0, "read element");
    memcpy(&u, &v, sizeof u);
    u ^= k == 0 ? 0x00400000u : 0x00000001u; /* a mantissa bit; the last bit */
    memcpy(&v, &u, sizeof v);
    EXPECT(H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v) >= 0, "write element");
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
  }
  H5Fclose(f);
}

/* Rank 0 turns a version-2 file with the sharded tensors into a version-1 file. */
static void to_version1(const char *path) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
  int64_t v = 1;
  EXPECT(H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0, "write format_version 1");
  H5Aclose(a);
  for (int i = 0; i < NS; i++) {
    size_t n = (size_t)(sshapes[i][0] * scols(i));
    float *x = cf_test_floats(n);
    char d[128];
    snprintf(d, sizeof d, "/%s", snames[i]);
    hid_t ds = H5Dopen2(f, d, H5P_DEFAULT);
    EXPECT(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0, "read %s", d);
    uint64_t sum = fnv1a64(x, n);
    a = H5Aopen(ds, "checksum", H5P_DEFAULT);
    EXPECT(H5Awrite(a, H5T_NATIVE_UINT64, &sum) >= 0, "write v1 checksum");
    H5Aclose(a);
    H5Dclose(ds);
    free(x);
  }
  H5Fclose(f);
}

static void edited_sharded(const char *name, edit_fn edit, char *p, size_t cap) {
  char from[512];
  cf_test_path(from, sizeof from, "shard-w0.h5");
  cf_test_path(p, cap, name);
  copy_file(from, p);
  if (rank == 0) edit(p);
  MPI_Barrier(comm);
}

static void test_layout_errors(void) {
  char p[512], q[512];
  struct cf_ckpt_meta m = {.step = 1, .world = size, .options_yaml = "", .model_kind = "cfm"};
  struct cf_ckpt_tensor t[NS];
  float *bufs[NS];
  cf_test_path(q, sizeof q, "shard-w0.h5");

  /* Flipped bits are found whichever blocking reads the file (the first named, others counted). */
  edited_sharded("shard-flip.h5", flip_element_bits, p, sizeof p);
  for (int r = 0; r < NK; r++) {
    make_table(t, bufs, r, 0);
    EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, t, NS),
                "tensor 'tp/out.weight' fails its checksum (stored",
                "flipped bits under some blocking");
    EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, t + 2, 1), "tensor 'tp/out.bias' fails its checksum",
                "flipped last bit");
    free_table(bufs);
  }
  make_table(t, bufs, 1, 0);
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, t, NS), "(and 1 more tensors fail theirs)",
              "two corrupt tensors");
  free_table(bufs);

  /* A gap: the last rank drops its row block. */
  make_table(t, bufs, 0, 1); /* tensor 0 is K_REPL, tensor 1 K_ROWS, ... */
  float *keep = t[1].data;
  if (rank == size - 1) t[1].data = NULL;
  cf_test_path(p, sizeof p, "bad.h5");
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, t, NS),
              "checkpoint tensor 'tp/out.weight': the blocks the ranks hold do not cover it "
              "exactly once",
              "gap in row blocks (write)");
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, q, t, NS), "'tp/out.weight': the blocks the ranks hold",
              "gap in row blocks (read)");
  t[1].data = keep;
  /* An overlap: every rank claims to be the only holder of the whole tensor. */
  if (size > 1) {
    t[0].n_replicas = 1;
    EXPECT_FAIL(cf_ckpt_write(comm, p, &m, t, NS), "'tp/qkv.weight': the blocks the ranks hold",
                "overlapping whole tensors");
    EXPECT_FAIL(cf_ckpt_read_tensors(comm, q, t, NS), "'tp/qkv.weight': the blocks the ranks hold",
                "overlapping whole tensors (read)");
    t[0].n_replicas = 0;
  }
  /* Bad blocks and replica fields (checked on every rank, reported by all). */
  struct cf_ckpt_tensor b = t[1];
  if (rank == 0) {
    b.start[0] = 5;
    b.count[0] = 2;
    b.start[1] = 3;
    b.count[1] = 5;
  }
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &b, 1), "is empty or outside its shape 6x7",
              "block outside");
  b = t[2];
  if (rank == 0) {
    b.count[0] = 1;
    b.count[1] = 1;
    b.start[1] = 1;
  }
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, q, &b, 1), "is 1-D but its block has start[1] = 1",
              "1-D block with a column offset");
  b = t[0];
  if (rank == 0) b.start[0] = 1;
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &b, 1), "count 0 (the whole tensor) but start 1,0",
              "whole tensor with a start");
  b = t[0];
  if (rank == 0) {
    b.replica = 2;
    b.n_replicas = 2;
  }
  EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &b, 1), "has replica 2 of n_replicas 2", "bad replica");
  /* The ranks disagree on the list. */
  b = t[0];
  if (rank == size - 1) {
    b.shape[1] = 6;
    b.data = NULL;
  }
  if (size > 1)
    EXPECT_FAIL(cf_ckpt_write(comm, p, &m, &b, 1), "different checkpoint tensor lists",
                "different lists");
  /* ... or different metadata (HDF5 would hang on attributes of different sizes). */
  struct cf_ckpt_meta m2 = m;
  if (rank == size - 1) m2.options_yaml = "y: 2\nlonger: text\n";
  if (size > 1)
    EXPECT_FAIL(cf_ckpt_write(comm, p, &m2, t, NS), "or different metadata (step, seed",
                "different options");
  free_table(bufs);

  /* Replicas of a column block that diverged (size >= 3: ranks 0 and 2 hold the same block),
   * also in rows that the other replica writes; and duplicate replica indices. */
  if (size >= 3) {
    make_table(t, bufs, K_TPDP, 1); /* tensor 0 is K_TPDP */
    EXPECT(t[0].n_replicas == 2 || rank == 1 || rank == 3, "TPDP layout");
    if (rank == 2) t[0].data[0] += 1.0f; /* block row 0: written by replica 0 (rank 0) */
    EXPECT_FAIL(cf_ckpt_write(comm, p, &m, t, NS), "'tp/qkv.weight' differs between ranks",
                "diverged replicas of a block");
    if (rank == 2) {
      t[0].data[0] -= 1.0f;
      t[0].replica = 0;
    }
    EXPECT_FAIL(cf_ckpt_write(comm, p, &m, t, NS), "'tp/qkv.weight': the blocks the ranks hold",
                "two replicas with index 0");
    free_table(bufs);
  }
  EXPECT(cf_test_count_tmp(cf_test_dir) == 0, "temporary file left after refused writes");
  EXPECT(!exists("bad.h5"), "a refused write left bad.h5");
}

static void test_version1(void) {
  char p[512];
  edited_sharded("shard-v1.h5", to_version1, p, sizeof p);
  struct cf_ckpt_meta m;
  char *opt = NULL;
  EXPECT_OK(cf_ckpt_read_meta(comm, p, &m, &opt), "meta of a version-1 file");
  cf_free((void **)&opt);
  for (int r = 0; r < NK; r++)
    read_and_compare(p, r, "shard-v1.h5");
  /* Corruption in a version-1 file is still found by the ranks holding the tensor. */
  char from[512];
  cf_test_path(from, sizeof from, "shard-v1.h5");
  cf_test_path(p, sizeof p, "shard-v1-flip.h5");
  copy_file(from, p);
  if (rank == 0) flip_element_bits(p);
  MPI_Barrier(comm);
  struct cf_ckpt_tensor t[NS];
  float *bufs[NS];
  make_table(t, bufs, 4, 0);
  EXPECT_FAIL(cf_ckpt_read_tensors(comm, p, t, NS), "tensor 'tp/out.weight' fails its checksum",
              "corrupt version-1 file");
  free_table(bufs);
  for (int i = 0; i < NS; i++)
    free(gref[i]);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  cf_test_mpi_begin("test_ckpt", &comm, &rank, &size);
  for (int i = 0; i < NT; i++) {
    cf_alloc((void **)&src[i], count_of(i) * sizeof(float), "test");
    for (size_t k = 0; k < count_of(i); k++)
      src[i][k] = sinf(0.37f * (float)k + (float)i) * (float)(i + 1);
  }
  test_checksum();
  test_roundtrip();
  test_corruption();
  test_failed_writes();
  test_latest_and_prune();
  test_sharded();
  test_layout_errors();
  test_version1();
  for (int i = 0; i < NT; i++)
    cf_free((void **)&src[i]);
  EXPECT(cf_alloc_bytes() == 0, "%zu bytes still allocated", cf_alloc_bytes());
  const char *name = cf_test_mpi_end(&comm, "test_ckpt");
  MPI_Finalize();
  return cf_test_done(name);
}
