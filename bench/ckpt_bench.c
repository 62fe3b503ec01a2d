/* ckpt_bench.c: checkpoint write and read throughput of the io layer (bench/ckpt.sh runs it
 * beside dd on the same disk).
 *
 * Builds a model-like list of float32 tensors (3 groups params/adam_m/adam_v, each with 4
 * transformer layers of qkv (3H, H), qkv bias (3H), out (H, H), fc1 (4H, H), fc2 (H, 4H), plus
 * embed (256, H) and norm (H): 66 tensors) with H chosen so the total is close to -mb MiB, held
 * in one of two layouts:
 *   dp  every rank holds every tensor whole (data parallelism): each writes 1/R of the rows of
 *       each tensor, and each reads (and verifies 1/R of) every tensor;
 *   tp  every rank holds a row block of every tensor (tensor parallelism, no replicas).
 * Each rep: cf_ckpt_write (checks, checksums, collective HDF5 writes, close, fsync, rename,
 * fsync of the directory), then (-drop 1) the page cache is dropped (drop_caches when
 * permitted, else posix_fadvise(DONTNEED) of the file), then cf_ckpt_read_tensors into fresh
 * buffers (checks, reads, checksum verification) "cold", then once more "warm" (from the
 * page cache). Then the same for a plain-HDF5 baseline: the same datasets and rows through the
 * io layer's own helpers, with no checks, checksums, attributes or rename. The data read back
 * are compared bit for bit with what was written (outside the timing). Also timed: the
 * checksum passes the library makes (cf_ckpt_checksum over the same blocks: on writing every
 * rank's whole held data, on reading the rows each rank verifies), the same sums compiled for
 * AVX-512 where the CPU has it (checked equal: what a vectorised checksum would cost), and the
 * argument checks (tensor-list agreement and the tiling pass, timed as a read of a file that
 * does not exist). Each timed write starts from the same page-cache state (warm_page_cache).
 * Times are rank 0's wall clock between barriers, checksum times the slowest rank's. Prints one
 * JSON object (bytes, times in s, GB/s with GB = 1e9 bytes) with the medians over the reps.
 *
 * Usage: ckpt_bench [-mb 256] [-reps 3] [-layout dp|tp] [-dir .] [-drop 1]
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <fcntl.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/ckpt.h"
#include "calmflow/mem.h"
#include "io/h5util.h" /* the io layer's own HDF5 helpers, for the plain-HDF5 baseline */

#define MAX_T 96
#define MAX_REPS 50

static int rank, size;

struct opts {
  double mb;
  int reps;
  int tp;
  int drop;
  const char *dir;
};

/* One tensor: global shape and this rank's block (rows r0 .. r0 + nr - 1, all columns). */
struct tensor {
  char name[96];
  int ndim;
  int64_t rows, cols;
  int64_t r0, nr;
  float *src, *dst;
};

static void row_range(int64_t rows, int r, int n, int64_t *lo, int64_t *hi) {
  *lo = rows / n * r + (rows % n) * r / n;
  *hi = rows / n * (r + 1) + (rows % n) * (r + 1) / n;
}

static int64_t elems_for(int64_t h) {
  return 3 * (4 * (3 * h * h + 3 * h + h * h + 4 * h * h + 4 * h * h) + 256 * h + h);
}

/* The tensor list for hidden size h (names and global shapes only). */
static int make_list(int64_t h, struct tensor *t) {
  static const char *group[3] = {"params", "adam_m", "adam_v"};
  int n = 0;
  for (int g = 0; g < 3; g++) {
    for (int l = 0; l < 4; l++) {
      const struct {
        const char *what;
        int ndim;
        int64_t rows, cols;
      } s[5] = {{"attn.qkv.weight", 2, 3 * h, h},
                {"attn.qkv.bias", 1, 3 * h, 1},
                {"attn.out.weight", 2, h, h},
                {"mlp.fc1.weight", 2, 4 * h, h},
                {"mlp.fc2.weight", 2, h, 4 * h}};
      for (int k = 0; k < 5; k++, n++) {
        snprintf(t[n].name, sizeof t[n].name, "%s/layers.%d.%s", group[g], l, s[k].what);
        t[n].ndim = s[k].ndim;
        t[n].rows = s[k].rows;
        t[n].cols = s[k].cols;
      }
    }
    snprintf(t[n].name, sizeof t[n].name, "%s/embed.weight", group[g]);
    t[n].ndim = 2;
    t[n].rows = 256;
    t[n].cols = h;
    n++;
    snprintf(t[n].name, sizeof t[n].name, "%s/norm.scale", group[g]);
    t[n].ndim = 1;
    t[n].rows = h;
    t[n].cols = 1;
    n++;
  }
  return n;
}

/* Deterministic values of element i of tensor k, the same on every rank. */
static float value(int k, uint64_t i) {
  uint64_t x = i * 0x9e3779b97f4a7c15ull + (uint64_t)k * 0xd1b54a32d192ed03ull;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return (float)((double)(x >> 40) / (double)(1ull << 24) - 0.5);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  double s[MAX_REPS];
  memcpy(s, v, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmp_double);
  return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static void die(const char *what) {
  fprintf(stderr, "ckpt_bench: error: %s: %s\n", what, cf_errmsg());
  MPI_Abort(MPI_COMM_WORLD, 1);
}

/* Rank 0: drop the page cache (all of it when permitted, else the file's pages). Returns the
 * method used: "drop_caches" or "fadvise". */
static const char *drop_cache(const char *path) {
  static const char *method = "fadvise";
  if (rank == 0) {
    /* cf_ckpt_write has fsync'd the file, so its pages are clean and can be dropped. */
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    int ok = f != NULL && fputs("3\n", f) >= 0;
    if (f != NULL && fclose(f) != 0) ok = 0;
    method = ok ? "drop_caches" : "fadvise";
    if (!ok) {
      int fd = open(path, O_RDONLY);
      if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
      }
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return method;
}

static void fill_args(const struct tensor *t, int n, int use_dst, struct cf_ckpt_tensor *c) {
  for (int i = 0; i < n; i++) {
    memset(&c[i], 0, sizeof c[i]);
    c[i].name = t[i].name;
    c[i].ndim = t[i].ndim;
    c[i].shape[0] = t[i].rows;
    c[i].shape[1] = t[i].ndim == 2 ? t[i].cols : 0;
    c[i].data = use_dst ? t[i].dst : t[i].src;
    if (t[i].nr != t[i].rows) { /* a row block (tp); whole tensors keep count 0 */
      c[i].start[0] = t[i].r0;
      c[i].count[0] = t[i].nr;
      c[i].count[1] = t[i].ndim == 2 ? t[i].cols : 1;
      c[i].n_replicas = 1;
    }
  }
}

/* Rank 0 writes `bytes` of zeros to a scratch file in dir and deletes it, just before a timed
 * write, so that every writer (cf_ckpt_write, the baselines below, and dd in bench/ckpt.sh,
 * which does the same) fills the page cache from memory the kernel has just freed. On a
 * virtual machine with free page reporting (virtio-balloon) memory left free for a few seconds
 * returns to the host, and taking it again costs a host fault per page: a 262 MB pwrite took
 * 0.08 s right after a delete and 0.3-0.8 s after 6 s idle on the machine this was written on,
 * more than the rest of the write, and which writer got which state depended on what ran
 * before it. */
static void warm_page_cache(const char *dir, size_t bytes) {
  static float zeros[1 << 20]; /* 4 MB */
  if (rank == 0) {
    char scratch[4096];
    snprintf(scratch, sizeof scratch, "%s/ckpt_bench_scratch", dir);
    int fd = open(scratch, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (size_t done = 0; fd >= 0 && done < bytes;) {
      size_t k = bytes - done < sizeof zeros ? bytes - done : sizeof zeros;
      ssize_t w = write(fd, zeros, k);
      if (w <= 0) break;
      done += (size_t)w;
    }
    if (fd >= 0) close(fd);
    unlink(scratch);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

/* The plain-HDF5 baseline: the same datasets written through the io layer's helpers (its file
 * access list, dataset creation and collective block transfers) with the same rows per rank
 * as cf_ckpt_write, then close and fsync; no checks, checksums, attributes or rename. */
static double h5_write(const char *path, const char *dir, const struct tensor *t, int n, int tp,
                       size_t bytes) {
  if (rank == 0) unlink(path);
  warm_page_cache(dir, bytes);
  double t0 = MPI_Wtime();
  hid_t fapl = cf_io_fapl(MPI_COMM_WORLD);
  hid_t fid = fapl >= 0 ? H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, fapl) : -1;
  if (fapl >= 0) H5Pclose(fapl);
  if (fid < 0) die("H5Fcreate");
  for (int i = 0; i < n; i++) {
    char dset[128];
    snprintf(dset, sizeof dset, "/%s", t[i].name);
    int64_t shape[2] = {t[i].rows, t[i].cols}, lo = 0, hi = t[i].nr;
    if (!tp) row_range(t[i].nr, rank, size, &lo, &hi);
    int64_t start[2] = {t[i].r0 + lo, 0}, count[2] = {hi - lo, t[i].cols};
    hid_t did;
    if (cf_io_create_f32(fid, dset, t[i].ndim, shape, path, &did) != CF_OK ||
        cf_io_write_block(did, t[i].ndim, start, count, t[i].src + lo * t[i].cols, path, dset) !=
            CF_OK)
      die("plain HDF5 write");
    H5Dclose(did);
  }
  if (H5Fclose(fid) < 0) die("H5Fclose");
  if (rank == 0 && cf_io_fsync_file(path) != CF_OK) die("fsync");
  MPI_Barrier(MPI_COMM_WORLD);
  return MPI_Wtime() - t0;
}

/* The POSIX baseline: the same bytes and rows per rank as h5_write, written with pwrite into
 * one flat file (the tensors one after another) from the same buffers, then fsync: what the
 * page cache and the disk allow this process, without HDF5 or MPI-IO. */
static double posix_write(const char *path, const char *dir, const struct tensor *t, int n, int tp,
                          size_t bytes) {
  if (rank == 0) unlink(path);
  warm_page_cache(dir, bytes);
  double t0 = MPI_Wtime();
  int fd = open(path, O_WRONLY | O_CREAT, 0644);
  if (fd < 0) die("open of the POSIX baseline file");
  size_t base = 0;
  for (int i = 0; i < n; i++) {
    int64_t lo = 0, hi = t[i].nr;
    if (!tp) row_range(t[i].nr, rank, size, &lo, &hi);
    size_t row = (size_t)t[i].cols * sizeof(float), off = base + (size_t)(t[i].r0 + lo) * row;
    const char *p = (const char *)(t[i].src + lo * t[i].cols);
    size_t left = (size_t)(hi - lo) * row;
    while (left > 0) {
      ssize_t k = pwrite(fd, p, left, (off_t)off);
      if (k <= 0) die("pwrite of the POSIX baseline file");
      p += k, off += (size_t)k, left -= (size_t)k;
    }
    base += (size_t)t[i].rows * row;
  }
  close(fd);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && cf_io_fsync_file(path) != CF_OK) die("fsync");
  MPI_Barrier(MPI_COMM_WORLD);
  double dt = MPI_Wtime() - t0;
  if (rank == 0) unlink(path);
  return dt;
}

/* The plain-HDF5 baseline of reading: each rank reads its block of every dataset. */
static double h5_read(const char *path, const struct tensor *t, int n) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  hid_t fid;
  if (cf_io_open_read(MPI_COMM_WORLD, path, &fid) != CF_OK) die("plain HDF5 open");
  for (int i = 0; i < n; i++) {
    char dset[128];
    snprintf(dset, sizeof dset, "/%s", t[i].name);
    int64_t start[2] = {t[i].r0, 0}, count[2] = {t[i].nr, t[i].cols};
    hid_t did = H5Dopen2(fid, dset, H5P_DEFAULT);
    if (did < 0 || cf_io_read_block(did, t[i].ndim, start, count, H5T_NATIVE_FLOAT, t[i].dst, path,
                                    dset) != CF_OK)
      die("plain HDF5 read");
    H5Dclose(did);
  }
  H5Fclose(fid);
  MPI_Barrier(MPI_COMM_WORLD);
  return MPI_Wtime() - t0;
}

/* Every rank's read buffers equal its source blocks (else abort). */
static void verify(const struct tensor *t, int n, const char *what) {
  int bad = 0, anybad = 0;
  for (int i = 0; i < n && !bad; i++)
    bad = memcmp(t[i].src, t[i].dst, (size_t)(t[i].nr * t[i].cols) * sizeof(float)) != 0;
  MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (anybad) {
    if (rank == 0) fprintf(stderr, "ckpt_bench: error: data read back by %s differ\n", what);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

static void clear_dst(const struct tensor *t, int n) {
  for (int i = 0; i < n; i++)
    memset(t[i].dst, 0xff, (size_t)(t[i].nr * t[i].cols) * sizeof(float));
}

/* What a vectorised checksum would cost: the version-2 sum of the contiguous elements x[0..n-1]
 * whose global indices start at i0, written plainly and compiled for AVX-512 (8 64-bit
 * multiplies per instruction), where this CPU has it. The result must equal cf_ckpt_checksum
 * (checked). Not the library's code: a measure of what the fix suggested in docs/bench/ckpt.md
 * would gain. */
static inline uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_WIDE 1
__attribute__((target("avx512f,avx512dq"))) static uint64_t wide_sum(const float *x, uint64_t i0,
                                                                     int64_t n) {
  uint64_t s = 0;
  for (int64_t e = 0; e < n; e++) {
    uint32_t bits;
    memcpy(&bits, &x[e], sizeof bits);
    s += mix(mix(i0 + (uint64_t)e + 0x9e3779b97f4a7c15ull) ^ bits);
  }
  return s;
}
static int wide_ok(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}
#else
#define HAVE_WIDE 0
static uint64_t wide_sum(const float *x, uint64_t i0, int64_t n) {
  return 0;
}
static int wide_ok(void) {
  return 0;
}
#endif

/* The checksum passes cf_ckpt_write (every held element) or cf_ckpt_read_tensors (the rows
 * this rank verifies) makes, with cf_ckpt_checksum (wide 0) or wide_sum (wide 1); the slowest
 * rank's time. */
static double time_checksums(const struct tensor *t, int n, int tp, int reading, int wide) {
  uint64_t sum[MAX_T];
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < n; i++) {
    int64_t lo = 0, hi = t[i].nr, c = t[i].cols;
    if (reading && !tp) row_range(t[i].nr, rank, size, &lo, &hi);
    if (wide)
      sum[i] = wide_sum(t[i].src + lo * c, (uint64_t)((t[i].r0 + lo) * c), (hi - lo) * c);
    else
      sum[i] = cf_ckpt_checksum(t[i].src + lo * c, c, t[i].r0 + lo, 0, hi - lo, c);
  }
  double dt = MPI_Wtime() - t0, mx = 0;
  MPI_Allreduce(&dt, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  for (int i = 0; i < n && wide; i++) {
    int64_t lo = 0, hi = t[i].nr, c = t[i].cols;
    if (reading && !tp) row_range(t[i].nr, rank, size, &lo, &hi);
    if (sum[i] != cf_ckpt_checksum(t[i].src + lo * c, c, t[i].r0 + lo, 0, hi - lo, c)) {
      fprintf(stderr, "ckpt_bench: error: the AVX-512 checksum of '%s' differs\n", t[i].name);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  return mx;
}

static int parse(int argc, char **argv, struct opts *o) {
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) return 0;
    if (strcmp(argv[i], "-mb") == 0)
      o->mb = atof(argv[i + 1]);
    else if (strcmp(argv[i], "-reps") == 0)
      o->reps = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "-layout") == 0 && strcmp(argv[i + 1], "dp") == 0)
      o->tp = 0;
    else if (strcmp(argv[i], "-layout") == 0 && strcmp(argv[i + 1], "tp") == 0)
      o->tp = 1;
    else if (strcmp(argv[i], "-dir") == 0)
      o->dir = argv[i + 1];
    else if (strcmp(argv[i], "-drop") == 0)
      o->drop = atoi(argv[i + 1]);
    else
      return 0;
  }
  return o->mb >= 1 && o->mb <= 65536 && o->reps >= 1 && o->reps <= MAX_REPS;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  struct opts o = {256, 3, 0, 1, "."};
  if (!parse(argc, argv, &o)) {
    if (rank == 0)
      fprintf(stderr,
              "ckpt_bench: error: usage: ckpt_bench [-mb 1..65536] [-reps 1..%d] "
              "[-layout dp|tp] [-dir DIR] [-drop 0|1]\n",
              MAX_REPS);
    MPI_Finalize();
    return 2;
  }

  /* The largest multiple of 8 for H that stays within the target, at least 8. */
  int64_t want = (int64_t)(o.mb * 1048576.0 / 4.0), h = 8;
  while (elems_for(h + 8) <= want)
    h += 8;
  static struct tensor t[MAX_T];
  int n = make_list(h, t);
  int64_t total = 0, held = 0;
  for (int i = 0; i < n; i++) {
    total += t[i].rows * t[i].cols;
    t[i].r0 = 0;
    t[i].nr = t[i].rows;
    if (o.tp) {
      int64_t hi;
      row_range(t[i].rows, rank, size, &t[i].r0, &hi);
      t[i].nr = hi - t[i].r0;
    }
    size_t bytes = (size_t)(t[i].nr * t[i].cols) * sizeof(float);
    held += t[i].nr * t[i].cols;
    if (cf_alloc((void **)&t[i].src, bytes + 4, "source tensor") != CF_OK ||
        cf_alloc((void **)&t[i].dst, bytes + 4, "read tensor") != CF_OK)
      die("allocation");
    for (int64_t e = 0; e < t[i].nr * t[i].cols; e++)
      t[i].src[e] = value(i, (uint64_t)(t[i].r0 * t[i].cols + e));
  }
  struct cf_ckpt_tensor wr[MAX_T], rd[MAX_T];
  fill_args(t, n, 0, wr);
  fill_args(t, n, 1, rd);

  char path[4096], missing[4096], plain[4096];
  snprintf(path, sizeof path, "%s/ckpt_bench.h5", o.dir);
  snprintf(plain, sizeof plain, "%s/ckpt_bench_plain.h5", o.dir);
  snprintf(missing, sizeof missing, "%s/ckpt_bench_missing.h5", o.dir);
  struct cf_ckpt_meta meta = {.step = 1000,
                              .seed = 1,
                              .world = size,
                              .data_cursor = 0,
                              .options_yaml = "bench: ckpt\n",
                              .model_kind = "bench"};

  double w[MAX_REPS], rc[MAX_REPS], rw[MAX_REPS], cw[MAX_REPS], cr[MAX_REPS], pr[MAX_REPS];
  double pw[MAX_REPS], hw[MAX_REPS], hrc[MAX_REPS], hrw[MAX_REPS], xw[MAX_REPS], xr[MAX_REPS];
  int wide = HAVE_WIDE && wide_ok();
  const char *cache = o.drop ? "?" : "none";
  long long file_bytes = 0;
  for (int r = 0; r < o.reps; r++) {
    if (rank == 0) unlink(path);
    warm_page_cache(o.dir, (size_t)total * sizeof(float));
    double t0 = MPI_Wtime();
    if (cf_ckpt_write(MPI_COMM_WORLD, path, &meta, wr, n) != CF_OK) die("cf_ckpt_write");
    MPI_Barrier(MPI_COMM_WORLD);
    w[r] = MPI_Wtime() - t0;
    struct stat sb;
    if (rank == 0 && stat(path, &sb) == 0) file_bytes = (long long)sb.st_size;

    if (o.drop) cache = drop_cache(path);
    for (int pass = 0; pass < 2; pass++) {
      clear_dst(t, n);
      MPI_Barrier(MPI_COMM_WORLD);
      t0 = MPI_Wtime();
      if (cf_ckpt_read_tensors(MPI_COMM_WORLD, path, rd, n) != CF_OK) die("cf_ckpt_read_tensors");
      MPI_Barrier(MPI_COMM_WORLD);
      (pass == 0 ? rc : rw)[r] = MPI_Wtime() - t0;
      verify(t, n, "cf_ckpt_read_tensors");
    }

    hw[r] = h5_write(plain, o.dir, t, n, o.tp, (size_t)total * sizeof(float));
    if (o.drop) drop_cache(plain);
    for (int pass = 0; pass < 2; pass++) {
      clear_dst(t, n);
      (pass == 0 ? hrc : hrw)[r] = h5_read(plain, t, n);
      verify(t, n, "plain HDF5");
    }
    if (rank == 0) unlink(plain);
    pw[r] = posix_write(plain, o.dir, t, n, o.tp, (size_t)total * sizeof(float));

    cw[r] = time_checksums(t, n, o.tp, 0, 0);
    cr[r] = time_checksums(t, n, o.tp, 1, 0);
    if (wide) {
      xw[r] = time_checksums(t, n, o.tp, 0, 1);
      xr[r] = time_checksums(t, n, o.tp, 1, 1);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    if (cf_ckpt_read_tensors(MPI_COMM_WORLD, missing, rd, n) == CF_OK)
      die("reading a missing file");
    cf_err_clear();
    MPI_Barrier(MPI_COMM_WORLD);
    pr[r] = MPI_Wtime() - t0;
  }
  if (rank == 0) unlink(path);

  if (rank == 0) {
    double bytes = (double)total * 4.0, ws = median(w, o.reps), rcs = median(rc, o.reps);
    double rws = median(rw, o.reps);
    printf("{\"ranks\": %d, \"layout\": \"%s\", \"tensors\": %d, \"hidden\": %lld, "
           "\"bytes\": %.0f, \"file_bytes\": %lld, \"bytes_held_per_rank\": %.0f, \"reps\": %d, "
           "\"cache\": \"%s\",\n",
           size, o.tp ? "tp" : "dp", n, (long long)h, bytes, file_bytes, (double)held * 4.0, o.reps,
           cache);
    printf(" \"write_s\": %.4f, \"read_s\": %.4f, \"read_warm_s\": %.4f, \"write_gbs\": %.3f, "
           "\"read_gbs\": %.3f, \"read_warm_gbs\": %.3f,\n",
           ws, rcs, rws, bytes / ws / 1e9, bytes / rcs / 1e9, bytes / rws / 1e9);
    double hws = median(hw, o.reps), hrcs = median(hrc, o.reps), hrws = median(hrw, o.reps);
    printf(" \"h5_write_s\": %.4f, \"h5_read_s\": %.4f, \"h5_read_warm_s\": %.4f, "
           "\"h5_write_gbs\": %.3f, \"h5_read_gbs\": %.3f, \"h5_read_warm_gbs\": %.3f,\n",
           hws, hrcs, hrws, bytes / hws / 1e9, bytes / hrcs / 1e9, bytes / hrws / 1e9);
    printf(" \"posix_write_s\": %.4f, \"posix_write_gbs\": %.3f,\n", median(pw, o.reps),
           bytes / median(pw, o.reps) / 1e9);
    printf(" \"checksum_write_s\": %.4f, \"checksum_read_s\": %.4f, \"prepare_s\": %.4f,\n",
           median(cw, o.reps), median(cr, o.reps), median(pr, o.reps));
    if (wide)
      printf(" \"checksum_avx512_write_s\": %.4f, \"checksum_avx512_read_s\": %.4f,\n",
             median(xw, o.reps), median(xr, o.reps));
    else
      printf(" \"checksum_avx512_write_s\": null, \"checksum_avx512_read_s\": null,\n");
    printf(" \"write_s_all\": [");
    for (int r = 0; r < o.reps; r++)
      printf("%s%.4f", r ? ", " : "", w[r]);
    printf("], \"read_s_all\": [");
    for (int r = 0; r < o.reps; r++)
      printf("%s%.4f", r ? ", " : "", rc[r]);
    printf("], \"read_warm_s_all\": [");
    for (int r = 0; r < o.reps; r++)
      printf("%s%.4f", r ? ", " : "", rw[r]);
    printf("]}\n");
  }
  for (int i = 0; i < n; i++) {
    cf_free((void **)&t[i].src);
    cf_free((void **)&t[i].dst);
  }
  MPI_Finalize();
  return 0;
}
