/* test_samples.c: the streaming samples file (samples.h). Create, append in uneven batches,
 * finish and read back bit for bit with plain HDF5; close without finishing and resume;
 * every mismatch of a resume named; a complete file resumed; bad files; a second writer
 * refused; then the kill test: a child appends known rows forever and is SIGKILLed at random
 * moments, and every file it leaves must resume with its first n_done rows exact and take
 * more rows, and a SWMR reader must read it as the writer left it. Last, with MPI:
 * cf_h5_read_points reads finished files (final form) exactly; a file in the live form it reads
 * exactly or refuses with HDF5's reason (the io layer's 1.8 format bounds), a killed one until
 * resumed. The kill trials fork before MPI_Init. CF_SAMPLES_KILL_TRIALS=N runs N kill trials
 * (20 by default); CF_TEST_KEEP=1 keeps the files. */
#include <dirent.h>
#include <hdf5.h>
#include <mpi.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/samples.h"
#include "cf_test.h"

static char dir[256];

static const char *at(const char *name) {
  static char buf[8][512];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

/* Known values: element j of sample i (x), element (t, j) of sample i (traj). */
static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static float xval(int64_t i, int64_t j) {
  return (float)((int64_t)(mix((uint64_t)i * 1000003u + (uint64_t)j) >> 40) - (1 << 23)) / 4096.f;
}
static float tval(int64_t i, int64_t t, int64_t j) {
  return (float)((int64_t)(mix(~((uint64_t)i * 7919u + (uint64_t)t * 131u + (uint64_t)j)) >> 40) -
                 (1 << 23)) /
         65536.f;
}
static void fill(int64_t i0, int64_t count, int64_t D, int64_t N, float *x, float *tr) {
  for (int64_t i = 0; i < count; i++) {
    for (int64_t j = 0; j < D; j++)
      x[i * D + j] = xval(i0 + i, j);
    for (int64_t t = 0; tr && t < N; t++)
      for (int64_t j = 0; j < D; j++)
        tr[(i * N + t) * D + j] = tval(i0 + i, t, j);
  }
}

/* Append rows [i0, i0 + count) of the known values. */
static cf_status append_known(struct cf_samples *s, int64_t i0, int64_t count) {
  float *x = cf_test_floats((size_t)(count * s->D));
  float *tr = s->traj ? cf_test_floats((size_t)(count * s->N * s->D)) : NULL;
  fill(i0, count, s->D, s->N, x, tr);
  cf_status st = cf_samples_append(s, count, x, tr);
  free(tr);
  free(x);
  return st;
}

/* What plain HDF5 (default access, read-only) sees in a samples file. */
struct seen {
  int opened;
  unsigned sb; /* superblock version: 3 while written (live form), 2 once finished */
  int64_t n_done, n_total, complete, version, D, N, traj, resumes, rows_x, rows_t;
  char format[64], config[256];
  int exact; /* /x (and /traj) hold exactly the known values in all their rows */
};

static int64_t get_i64(hid_t f, const char *k) {
  int64_t v = -999;
  hid_t a = H5Aopen(f, k, H5P_DEFAULT);
  if (a >= 0) {
    H5Aread(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
  }
  return v;
}
static void get_str(hid_t f, const char *k, char *out, size_t cap) {
  out[0] = '\0';
  hid_t a = H5Aopen(f, k, H5P_DEFAULT);
  if (a < 0) return;
  hid_t t = H5Aget_type(a);
  size_t n = H5Tget_size(t);
  if (n < cap) {
    H5Aread(a, t, out);
    out[n] = '\0';
  }
  H5Tclose(t);
  H5Aclose(a);
}

static int64_t read_all(hid_t f, const char *name, int nd, size_t row, float **buf) {
  *buf = NULL;
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t sp = H5Dget_space(d);
  hsize_t dims[3] = {0, 0, 0};
  int64_t rows = -1;
  if (H5Sget_simple_extent_ndims(sp) == nd) {
    H5Sget_simple_extent_dims(sp, dims, NULL);
    rows = (int64_t)dims[0];
    *buf = cf_test_floats((size_t)rows * row);
    if (rows > 0 && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *buf) < 0)
      rows = -2;
  }
  H5Sclose(sp);
  H5Dclose(d);
  return rows;
}

/* swmr: open in SWMR read mode (what h5py.File(path, "r", swmr=True) does), which also opens
 * a file whose writer was killed, and compare only the first n_done rows (those beyond are not
 * committed); else an ordinary read-only open and all rows compared. */
static struct seen look_as(const char *path, int64_t D, int64_t N, int swmr) {
  struct seen v;
  memset(&v, 0, sizeof v);
  H5E_BEGIN_TRY { /* a refused open is an expected outcome for some callers */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY | (swmr ? H5F_ACC_SWMR_READ : 0), H5P_DEFAULT);
    if (f >= 0) {
      v.opened = 1;
      H5F_info2_t info;
      if (H5Fget_info2(f, &info) >= 0) v.sb = info.super.version;
      v.n_done = get_i64(f, "n_done");
      v.n_total = get_i64(f, "n_total");
      v.complete = get_i64(f, "complete");
      v.version = get_i64(f, "version");
      v.D = get_i64(f, "D");
      v.N = get_i64(f, "N");
      v.traj = get_i64(f, "traj");
      v.resumes = get_i64(f, "resumes");
      get_str(f, "format", v.format, sizeof v.format);
      get_str(f, "config", v.config, sizeof v.config);
      float *x = NULL, *tr = NULL;
      v.rows_x = read_all(f, "/x", 2, (size_t)D, &x);
      v.rows_t = H5Lexists(f, "/traj", H5P_DEFAULT) > 0
                     ? read_all(f, "/traj", 3, (size_t)(N * D), &tr)
                     : -1;
      v.exact = v.rows_x >= 0 &&
                (!swmr || (v.rows_x >= v.n_done && (tr == NULL || v.rows_t >= v.n_done)));
      int64_t rows = v.rows_x > 0 ? v.rows_x : 0;
      if (swmr && v.exact) rows = v.n_done;
      float *ex = cf_test_floats((size_t)(rows * D)), *et = cf_test_floats((size_t)(rows * N * D));
      fill(0, rows, D, N, ex, et);
      if (v.exact && memcmp(ex, x, (size_t)(rows * D) * sizeof(float)) != 0) v.exact = 0;
      if (v.exact && tr &&
          ((!swmr && v.rows_t != v.rows_x) ||
           memcmp(et, tr, (size_t)(rows * N * D) * sizeof(float)) != 0))
        v.exact = 0;
      free(ex);
      free(et);
      free(x);
      free(tr);
      H5Fclose(f);
    }
  }
  H5E_END_TRY;
  return v;
}

static struct seen look(const char *path, int64_t D, int64_t N) {
  return look_as(path, D, N, 0);
}

static void remove_dir(void) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(at(e->d_name));
  closedir(d);
  rmdir(dir);
}

static int copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  int ok = a && b;
  char buf[65536];
  size_t n;
  while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
    ok = fwrite(buf, 1, n, b) == n;
  if (a) fclose(a);
  if (b && fclose(b) != 0) ok = 0;
  return ok;
}

/* ---- the parts ---- */

static void test_roundtrip(void) {
  const int64_t D = 3, N = 4, n = 1000;
  struct cf_samples_spec spec = {.n = n, .D = D, .N = N, .traj = 1, .config = "seed: 1\nx: 2\n"};
  struct cf_samples s;
  EXPECT_OK(cf_samples_create(&s, at("a.h5"), &spec), "create a.h5");
  EXPECT(s.n_done == 0 && s.open, "fresh file: n_done %lld open %d", (long long)s.n_done, s.open);
  int64_t batches[] = {1, 7, 0, 100, 33, 2, 500, 1, 356};
  int64_t i0 = 0;
  float one[3] = {0, 0, 0};
  EXPECT_FAIL_STATUS(cf_samples_append(&s, 1, NULL, NULL), CF_EINVAL, "without x data",
                     "append no data");
  EXPECT_FAIL_STATUS(cf_samples_append(&s, 1, one, NULL), CF_EINVAL, "without traj data",
                     "append no traj");
  EXPECT(s.n_done == 0 && !s.failed, "refused appends changed the file");
  for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
    EXPECT_OK(append_known(&s, i0, batches[b]), "append a batch");
    i0 += batches[b];
    EXPECT(s.n_done == i0, "n_done %lld after %lld rows", (long long)s.n_done, (long long)i0);
  }
  EXPECT(i0 == n, "batches sum to %lld", (long long)i0);
  EXPECT_FAIL_STATUS(append_known(&s, n, 1), CF_EINVAL, "would exceed n = 1000", "append past n");
  EXPECT_OK(cf_samples_finish(&s), "finish a.h5");
  EXPECT(!s.open && s.complete, "finished: open %d complete %d", s.open, s.complete);
  EXPECT_FAIL(append_known(&s, n, 1), "is complete", "append after finish");
  EXPECT_OK(cf_samples_finish(&s), "finish twice");
  cf_samples_close(&s);

  struct seen v = look(at("a.h5"), D, N);
  EXPECT(v.opened, "plain HDF5 cannot open the finished file");
  EXPECT(strcmp(v.format, "calmflow-samples") == 0 && v.version == 1, "format '%s' version %lld",
         v.format, (long long)v.version);
  EXPECT(strcmp(v.config, spec.config) == 0, "config '%s'", v.config);
  EXPECT(v.n_done == n && v.n_total == n && v.complete == 1,
         "n_done %lld n_total %lld complete %lld", (long long)v.n_done, (long long)v.n_total,
         (long long)v.complete);
  EXPECT(v.D == D && v.N == N && v.traj == 1 && v.resumes == 0,
         "D %lld N %lld traj %lld resumes %lld", (long long)v.D, (long long)v.N, (long long)v.traj,
         (long long)v.resumes);
  EXPECT(v.rows_x == n && v.rows_t == n, "rows x %lld traj %lld", (long long)v.rows_x,
         (long long)v.rows_t);
  EXPECT(v.exact, "finished file's rows differ from what was appended");
  EXPECT(v.sb == 2, "finished file has superblock version %u, expected 2 (HDF5 1.8 format)", v.sb);

  /* without traj there is no /traj */
  struct cf_samples_spec sp2 = {.n = 50, .D = 2, .N = 5, .traj = 0, .config = "", .nosync = 1};
  EXPECT_OK(cf_samples_create(&s, at("b.h5"), &sp2), "create b.h5");
  EXPECT_OK(append_known(&s, 0, 20), "append b");
  EXPECT_OK(append_known(&s, 20, 30), "append b");
  EXPECT_OK(cf_samples_finish(&s), "finish b");
  v = look(at("b.h5"), 2, 5);
  EXPECT(v.rows_x == 50 && v.rows_t == -1 && v.traj == 0 && v.exact, "b.h5: rows %lld traj %lld",
         (long long)v.rows_x, (long long)v.rows_t);

  /* bad specs and paths */
  struct cf_samples_spec bad = spec;
  bad.D = 0;
  EXPECT_FAIL_STATUS(cf_samples_create(&s, at("c.h5"), &bad), CF_EINVAL, "expected all >= 1",
                     "D = 0");
  bad = spec;
  bad.config = NULL;
  EXPECT_FAIL_STATUS(cf_samples_create(&s, at("c.h5"), &bad), CF_EINVAL, "no config", "config");
  EXPECT_FAIL(cf_samples_create(&s, at("nodir/c.h5"), &spec), "does not exist", "no directory");
  EXPECT_FAIL(cf_samples_create(&s, "", &spec), "empty", "empty path");
  EXPECT(!s.open, "a failed create left s open");
  cf_samples_close(&s);
}

static void test_resume(void) {
  const int64_t D = 2, N = 3, n = 100;
  struct cf_samples_spec spec = {
      .n = n, .D = D, .N = N, .traj = 1, .config = "checkpoint: a.h5\nseed: 7\ntemperature: 1\n"};
  struct cf_samples s;
  EXPECT_OK(cf_samples_create(&s, at("r.h5"), &spec), "create r.h5");
  EXPECT_OK(append_known(&s, 0, 30), "append");
  EXPECT_OK(append_known(&s, 30, 7), "append");
  cf_samples_close(&s);
  EXPECT(!s.open, "closed");
  cf_samples_close(&s); /* harmless twice */

  struct seen v = look(at("r.h5"), D, N);
  EXPECT(v.sb == 3, "unfinished file has superblock version %u, expected 3", v.sb);
  EXPECT(v.opened && v.n_done == 37 && v.complete == 0 && v.rows_x == 37 && v.exact,
         "closed unfinished file: opened %d n_done %lld complete %lld rows %lld exact %d", v.opened,
         (long long)v.n_done, (long long)v.complete, (long long)v.rows_x, v.exact);

  /* every mismatch is one line naming the attribute and both values; the file is untouched */
  struct cf_samples_spec other = spec;
  other.D = 4;
  other.N = 5;
  other.config = "checkpoint: a.h5\nseed: 8\ntemperature: 1\n";
  EXPECT_FAIL_STATUS(cf_samples_resume(&s, at("r.h5"), &other), CF_EINVAL,
                     "attribute D is 2, this run has D = 4", "resume D");
  EXPECT(!s.open, "a failed resume left s open");
  EXPECT_FAIL(cf_samples_resume(&s, at("r.h5"), &other), "attribute N is 3, this run has N = 5",
              "resume N");
  EXPECT_FAIL(cf_samples_resume(&s, at("r.h5"), &other),
              "config differs from this run's at line 2: the file has 'seed: 7', this run has "
              "'seed: 8'",
              "resume config");
  cf_status st = cf_samples_resume(&s, at("r.h5"), &other);
  int lines = 1;
  for (const char *p = cf_errmsg(); *p; p++)
    lines += *p == '\n';
  EXPECT(st != CF_OK && lines == 3, "three mismatches give %d lines: %s", lines, cf_errmsg());
  cf_err_clear();
  other = spec;
  other.traj = 0;
  other.n = 200;
  EXPECT_FAIL(cf_samples_resume(&s, at("r.h5"), &other),
              "attribute traj is 1, this run has traj = 0", "resume traj");
  EXPECT_FAIL(cf_samples_resume(&s, at("r.h5"), &other),
              "attribute n_total is 100, this run has n_total = 200", "resume n_total");
  other = spec;
  other.config = "checkpoint: a.h5\nseed: 7\n";
  EXPECT_FAIL(cf_samples_resume(&s, at("r.h5"), &other), "at line 3", "resume config shorter");
  v = look(at("r.h5"), D, N);
  EXPECT(v.n_done == 37 && v.rows_x == 37 && v.exact && v.resumes == 0,
         "failed resumes changed the file");

  /* resume continues; the second writer is refused while it is open */
  EXPECT_OK(cf_samples_resume(&s, at("r.h5"), &spec), "resume r.h5");
  EXPECT(s.open && s.n_done == 37 && !s.complete && !s.was_open && s.n_dropped == 0,
         "resumed: open %d n_done %lld complete %d was_open %d dropped %lld", s.open,
         (long long)s.n_done, s.complete, s.was_open, (long long)s.n_dropped);
  struct cf_samples s2;
  EXPECT_FAIL(cf_samples_resume(&s2, at("r.h5"), &spec), "in use by another process",
              "second writer (resume)");
  EXPECT_FAIL(cf_samples_create(&s2, at("r.h5"), &spec), "in use by another process",
              "second writer (create)");
  EXPECT_FAIL(cf_samples_finish(&s), "cannot finish with 37 of 100", "finish early");
  EXPECT_OK(append_known(&s, 37, 63), "append the rest");
  EXPECT_OK(cf_samples_finish(&s), "finish r.h5");
  v = look(at("r.h5"), D, N);
  EXPECT(v.n_done == n && v.complete == 1 && v.rows_x == n && v.rows_t == n && v.exact &&
             v.resumes == 1,
         "resumed file: n_done %lld complete %lld rows %lld exact %d resumes %lld",
         (long long)v.n_done, (long long)v.complete, (long long)v.rows_x, v.exact,
         (long long)v.resumes);

  /* a complete file resumed: CF_OK, n_done == n, nothing to append; finish accepts it */
  EXPECT_OK(cf_samples_resume(&s, at("r.h5"), &spec), "resume a complete file");
  EXPECT(s.complete && s.n_done == n && !s.open, "complete: complete %d n_done %lld open %d",
         s.complete, (long long)s.n_done, s.open);
  EXPECT_FAIL(append_known(&s, n, 1), "is complete", "append to a complete file");
  EXPECT_OK(cf_samples_finish(&s), "finish a complete file");
  cf_samples_close(&s);
  v = look(at("r.h5"), D, N);
  EXPECT(v.resumes == 1 && v.exact && v.n_done == n, "resuming a complete file changed it");

  /* complete but still in the live form (a kill between finish's completion mark and its
   * rename): resume rewrites it in the final form and reports it complete */
  struct cf_samples_spec sl = {.n = 12, .D = 2, .N = 3, .traj = 1, .config = "live\n", .nosync = 1};
  EXPECT_OK(cf_samples_create(&s, at("live.h5"), &sl), "create live.h5");
  EXPECT_OK(append_known(&s, 0, 12), "append live.h5");
  cf_samples_close(&s);
  hid_t lf = H5Fopen(at("live.h5"), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t la = lf >= 0 ? H5Aopen(lf, "complete", H5P_DEFAULT) : -1;
  int64_t one64 = 1;
  EXPECT(la >= 0 && H5Awrite(la, H5T_NATIVE_INT64, &one64) >= 0, "cannot mark live.h5 complete");
  if (la >= 0) H5Aclose(la);
  if (lf >= 0) H5Fclose(lf);
  v = look(at("live.h5"), 2, 3);
  EXPECT(v.sb == 3 && v.complete == 1, "live.h5 before: superblock %u complete %lld", v.sb,
         (long long)v.complete);
  EXPECT_OK(cf_samples_resume(&s, at("live.h5"), &sl), "resume a complete live file");
  EXPECT(s.complete && !s.open && s.n_done == 12, "complete live file: complete %d open %d",
         s.complete, s.open);
  v = look(at("live.h5"), 2, 3);
  EXPECT(v.sb == 2 && v.complete == 1 && v.n_done == 12 && v.rows_x == 12 && v.exact,
         "live.h5 after resume: superblock %u complete %lld rows %lld exact %d", v.sb,
         (long long)v.complete, (long long)v.rows_x, v.exact);

  /* a config beyond 64 KiB (attributes in dense storage) survives append, close, resume */
  size_t big = 100000;
  char *cfg = malloc(big + 1);
  for (size_t i = 0; i < big; i++)
    cfg[i] = i % 50 == 49 ? '\n' : (char)('a' + i % 26);
  cfg[big] = '\0';
  struct cf_samples_spec sb = {.n = 40, .D = 2, .N = 2, .traj = 0, .config = cfg, .nosync = 1};
  EXPECT_OK(cf_samples_create(&s, at("big.h5"), &sb), "create with a large config");
  EXPECT_OK(append_known(&s, 0, 15), "append (large config)");
  cf_samples_close(&s);
  EXPECT_OK(cf_samples_resume(&s, at("big.h5"), &sb), "resume (large config)");
  EXPECT(s.n_done == 15, "large config: n_done %lld", (long long)s.n_done);
  EXPECT_OK(append_known(&s, 15, 25), "append (large config)");
  EXPECT_OK(cf_samples_finish(&s), "finish (large config)");
  v = look(at("big.h5"), 2, 2);
  EXPECT(v.n_done == 40 && v.rows_x == 40 && v.exact, "large config file: n_done %lld",
         (long long)v.n_done);
  free(cfg);

  /* files that are not samples files */
  EXPECT_FAIL_STATUS(cf_samples_resume(&s, at("none.h5"), &spec), CF_EIO, "no such file",
                     "resume a missing file");
  FILE *f = fopen(at("junk.h5"), "w");
  if (f) {
    fputs("not an hdf5 file\n", f);
    fclose(f);
  }
  EXPECT_FAIL_STATUS(cf_samples_resume(&s, at("junk.h5"), &spec), CF_ECORRUPT,
                     "HDF5 cannot open it", "resume a text file");
  hid_t h = H5Fcreate(at("other.h5"), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(h);
  EXPECT_FAIL_STATUS(cf_samples_resume(&s, at("other.h5"), &spec), CF_ECORRUPT,
                     "is not a calmflow samples file (no 'format' attribute)",
                     "resume an HDF5 file without attributes");
}

/* ---- the kill test ---- */

#define KD 8
#define KN 256
#define KTRIALS 20

/* The child: create the file and append known rows forever in batches of 1..13. */
static void child_append_forever(const char *path, int nosync) {
  struct cf_samples_spec spec = {.n = (int64_t)1 << 40,
                                 .D = KD,
                                 .N = KN,
                                 .traj = 1,
                                 .config = "kill test\n",
                                 .nosync = nosync};
  struct cf_samples s;
  if (cf_samples_create(&s, path, &spec) != CF_OK) {
    printf("child: create failed: %s\n", cf_errmsg());
    _exit(3);
  }
  static const int sizes[] = {1, 2, 3, 5, 8, 13, 4, 7};
  for (int64_t b = 0, i0 = 0;; b++) {
    int64_t c = sizes[b % 8];
    if (append_known(&s, i0, c) != CF_OK) {
      printf("child: append failed: %s\n", cf_errmsg());
      _exit(3);
    }
    i0 += c;
  }
}

static void test_kill(void) {
  struct cf_samples_spec spec = {
      .n = (int64_t)1 << 40, .D = KD, .N = KN, .traj = 1, .config = "kill test\n", .nosync = 1};
  uint64_t rng = 20240611;
  int absent = 0, killed_open = 0, dropped = 0, zero = 0, ok = 0;
  int64_t min_done = -1, max_done = 0;
  int swmr_ok = 0;
  int kept_crashed = 0;
  const char *path = at("kill.h5");
  int trials = KTRIALS; /* CF_SAMPLES_KILL_TRIALS=N runs more (a longer soak) */
  if (getenv("CF_SAMPLES_KILL_TRIALS")) trials = atoi(getenv("CF_SAMPLES_KILL_TRIALS"));
  if (trials < 1) trials = 1;
  for (int trial = 0; trial < trials; trial++) {
    unlink(path);
    rng = mix(rng + 0x9e3779b97f4a7c15ull);
    int ms = 5 + (int)(rng % 196);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
      EXPECT(0, "fork failed");
      return;
    }
    if (pid == 0) child_append_forever(path, trial % 2);
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
           "trial %d: the child ended on its own (status %d)", trial, status);
    struct stat sb;
    if (stat(path, &sb) != 0) { /* killed before the first file was published */
      absent++;
      continue;
    }
    /* keep one killed file for the MPI reader checks */
    if (!kept_crashed && trial >= trials / 2)
      kept_crashed = copy_file(path, at("crashed.h5")) && copy_file(path, at("crashed-raw.h5"));
    /* as the writer left it: a SWMR reader sees a consistent file with exact committed rows */
    struct seen r = look_as(path, KD, KN, 1);
    EXPECT(r.opened && r.n_done >= 0 && r.exact,
           "trial %d (kill after %d ms): SWMR read of the killed file: opened %d n_done %lld rows "
           "%lld/%lld exact %d",
           trial, ms, r.opened, (long long)r.n_done, (long long)r.rows_x, (long long)r.rows_t,
           r.exact);
    swmr_ok += r.opened && r.exact;

    struct cf_samples s;
    cf_status st = cf_samples_resume(&s, path, &spec);
    EXPECT(st == CF_OK, "trial %d (kill after %d ms): the file does not resume: %s", trial, ms,
           cf_errmsg());
    cf_err_clear();
    if (st != CF_OK) continue;
    int64_t done = s.n_done;
    killed_open += s.was_open;
    dropped += s.n_dropped > 0;
    zero += done == 0;
    if (min_done < 0 || done < min_done) min_done = done;
    if (done > max_done) max_done = done;
    EXPECT(done >= 0 && s.n_dropped >= 0 && done == r.n_done,
           "trial %d: n_done %lld (SWMR reader: %lld) dropped %lld", trial, (long long)done,
           (long long)r.n_done, (long long)s.n_dropped);
    cf_samples_close(&s);
    struct seen v = look(path, KD, KN);
    EXPECT(v.opened && v.n_done == done && v.rows_x == done && v.rows_t == done && v.exact,
           "trial %d: resumed file: opened %d n_done %lld rows %lld/%lld exact %d", trial, v.opened,
           (long long)v.n_done, (long long)v.rows_x, (long long)v.rows_t, v.exact);
    /* appending continues */
    EXPECT_OK(cf_samples_resume(&s, path, &spec), "resume again");
    EXPECT_OK(append_known(&s, done, 10), "append after the kill");
    cf_samples_close(&s);
    v = look(path, KD, KN);
    int good = v.n_done == done + 10 && v.rows_x == done + 10 && v.exact;
    EXPECT(good, "trial %d: after appending: n_done %lld rows %lld exact %d", trial,
           (long long)v.n_done, (long long)v.rows_x, v.exact);
    ok += good && st == CF_OK;
  }
  printf("kill test: %d trials: %d killed files read exactly by a SWMR reader, %d resumed with "
         "exact rows and took more (n_done %lld..%lld, %d with 0 rows), %d killed before the file "
         "existed; %d still marked open by the killed writer, %d had uncommitted rows dropped\n",
         trials, swmr_ok, ok, (long long)(min_done < 0 ? 0 : min_done), (long long)max_done, zero,
         absent, killed_open, dropped);
  EXPECT(ok + absent == trials, "only %d of %d trials ended well", ok + absent, trials);
  EXPECT(ok >= trials / 2, "only %d trials had a file to resume", ok);
  EXPECT(kept_crashed, "no killed file kept for the reader checks");
}

/* ---- readers that use MPI-IO ---- */

/* cf_h5_read_points on a file in the live form: want rows (>= 1) exact, or a refusal naming
 * the file and HDF5's reason; killed: the refusal must be the writer's flags (or the bounds). */
static void live_read(const char *path, int64_t D, int64_t want, int killed) {
  float *x = NULL;
  int64_t n = 0, d = 0;
  cf_status st = cf_h5_read_points(MPI_COMM_WORLD, path, "/x", D, &x, &n, &d);
  if (st == CF_OK) {
    float *e = cf_test_floats((size_t)(n * D));
    fill(0, n, D, 1, e, NULL);
    EXPECT(!killed && n == want && d == D && memcmp(x, e, (size_t)(n * D) * sizeof(float)) == 0,
           "cf_h5_read_points on '%s': %lld x %lld, expected %lld rows%s", path, (long long)n,
           (long long)d, (long long)want, killed ? " (or a refusal: its writer was killed)" : "");
    free(e);
    cf_free((void **)&x);
    return;
  }
  const char *m = cf_errmsg();
  int bounds = strstr(m, "superblock version exceeds high bound") != NULL;
  EXPECT(strstr(m, path) && (bounds || (killed && strstr(m, "already open for write"))),
         "cf_h5_read_points on '%s': unexpected refusal: %s", path, m);
  if (bounds)
    printf("note: cf_h5_read_points refuses the live (HDF5 1.10 format) file %s: the io layer "
           "opens files with 1.8 format bounds\n",
           strrchr(path, '/') + 1);
  cf_err_clear();
}

static void test_mpi_readers(void) {
  float *x = NULL;
  int64_t n = 0, d = 0;
  EXPECT_OK(cf_h5_read_points(MPI_COMM_WORLD, at("a.h5"), "/x", 3, &x, &n, &d),
            "cf_h5_read_points on a finished file");
  float *e = cf_test_floats(1000 * 3);
  fill(0, 1000, 3, 1, e, NULL);
  EXPECT(n == 1000 && d == 3 && x && memcmp(x, e, sizeof(float) * 3000) == 0,
         "finished file through cf_h5_read_points: %lld x %lld", (long long)n, (long long)d);
  cf_free((void **)&x);
  free(e);

  /* A file in the live form (HDF5 1.10 format: not finished yet) through cf_h5_read_points:
   * it reads exactly the committed rows, or, while the io layer opens files with 1.8 format
   * bounds (cf_io_fapl), refuses with HDF5's reason; a killed writer's file is refused until
   * resumed (its "open for write" flags). */
  struct cf_samples_spec spec = {.n = 100, .D = 2, .N = 3, .traj = 1, .config = "u\n", .nosync = 1};
  struct cf_samples s;
  EXPECT_OK(cf_samples_create(&s, at("u.h5"), &spec), "create u.h5");
  EXPECT_OK(append_known(&s, 0, 21), "append u.h5");
  cf_samples_close(&s);
  live_read(at("u.h5"), 2, 21, 0);
  live_read(at("crashed.h5"), KD, -1, 1);
  struct cf_samples_spec ks = {
      .n = (int64_t)1 << 40, .D = KD, .N = KN, .traj = 1, .config = "kill test\n", .nosync = 1};
  EXPECT_OK(cf_samples_resume(&s, at("crashed.h5"), &ks), "resume the killed file");
  int64_t done = s.n_done;
  cf_samples_close(&s);
  if (done > 0) live_read(at("crashed.h5"), KD, done, 0);
}

int main(int argc, char **argv) {
  snprintf(dir, sizeof dir, "%s/cf_samples_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(dir) == NULL) {
    printf("FAIL: cannot make a temporary directory\n");
    return 2;
  }
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  test_roundtrip();
  test_resume();
  test_kill(); /* forks: before MPI_Init */
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &cf_test_rank);
  test_mpi_readers();
  if (getenv("CF_TEST_KEEP") == NULL) /* set it to look at the files afterwards */
    remove_dir();
  else
    printf("files kept in %s\n", dir);
  int rc = cf_test_done("test_samples");
  MPI_Finalize();
  return rc;
}
