/* samples.c: the streaming samples file (samples.h): build under a temporary name and rename,
 * append in HDF5's SWMR write mode with data flushed before n_done, resume by copying the
 * committed rows of a (possibly killed) file read in SWMR read mode. Serial HDF5 (sec2 driver)
 * on one rank; nothing here is collective. docs/samples-format.md describes the file. */
#define _DEFAULT_SOURCE /* flock */
#include "calmflow/samples.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "calmflow/mem.h"
#include "io/h5util.h"

#if !H5_VERSION_GE(1, 10, 7)
#error "samples.c needs HDF5 1.10.7 or newer (H5Pset_file_locking, SWMR)"
#endif

#define CHUNK_TARGET ((size_t)1 << 20) /* bytes per chunk, about */
#define COPY_TARGET ((size_t)16 << 20) /* bytes per block when resume copies rows */
#define SB_WRITE_ACCESS 0x01           /* superblock v3 file consistency flags */
#define SB_SWMR_WRITE_ACCESS 0x04

/* The attributes a file records about itself (read back by resume). */
struct meta {
  char *format, *config, *created;
  int64_t version, n_total, n_done, complete, D, N, traj, resumes;
};

static void meta_free(struct meta *m) {
  cf_free((void **)&m->format);
  cf_free((void **)&m->config);
  cf_free((void **)&m->created);
}

/* ---- checks ---- */

static cf_status check_spec(const struct cf_samples_spec *spec, const char *path) {
  CF_CHECK(spec != NULL, CF_EINVAL, "samples file '%s': no spec", path);
  CF_CHECK(spec->n >= 1 && spec->D >= 1 && spec->N >= 1, CF_EINVAL,
           "samples file '%s': n = %lld, D = %lld, N = %lld, expected all >= 1", path,
           (long long)spec->n, (long long)spec->D, (long long)spec->N);
  CF_CHECK(spec->config != NULL, CF_EINVAL, "samples file '%s': no config string", path);
  CF_CHECK(strlen(spec->config) < CF_SAMPLES_CONFIG_MAX, CF_EINVAL,
           "samples file '%s': config is %zu bytes, at most %d allowed", path, strlen(spec->config),
           CF_SAMPLES_CONFIG_MAX - 1);
  /* one row of /traj must fit a chunk (HDF5: < 4 GiB) with room to spare */
  size_t row;
  CF_TRY(cf_mul_size(&row, (size_t)spec->N, (size_t)spec->D, "samples row"));
  CF_CHECK(row <= ((size_t)1 << 28), CF_EINVAL,
           "samples file '%s': a trajectory of N x D = %lld x %lld floats is too large", path,
           (long long)spec->N, (long long)spec->D);
  return CF_OK;
}

static cf_status check_path(const char *path) {
  CF_CHECK(path != NULL && path[0] != '\0', CF_EINVAL, "samples file name is empty");
  CF_CHECK(strlen(path) + 32 < CF_SAMPLES_PATH_MAX, CF_EINVAL,
           "samples file name '%.64s...' is too long", path);
  CF_CHECK(path[strlen(path) - 1] != '/', CF_EINVAL, "samples file name '%s' names a directory",
           path);
  char dir[CF_SAMPLES_PATH_MAX];
  cf_io_dirname(path, dir, sizeof dir);
  struct stat sb;
  if (stat(dir, &sb) != 0)
    return cf_err(CF_EIO, "cannot write '%s': directory '%s': %s", path, dir,
                  errno == ENOENT ? "does not exist" : strerror(errno));
  CF_CHECK(S_ISDIR(sb.st_mode), CF_EIO, "cannot write '%s': '%s' is not a directory", path, dir);
  CF_CHECK(access(dir, W_OK | X_OK) == 0, CF_EIO,
           "cannot write '%s': directory '%s' is not writable", path, dir);
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
    return cf_err(CF_EIO, "cannot write '%s': it is a directory", path);
  return CF_OK;
}

/* ---- the writer's lock: flock(LOCK_SH) on the file while it is open for appending (SWMR
 * readers take LOCK_SH too); create and resume need LOCK_EX, so a second writer is refused.
 * HDF5's own locking is switched off on our handles (H5Pset_file_locking): the SWMR writer
 * drops its lock after opening, so we hold one for it. */

/* *fd = a descriptor of path holding lock `how` (LOCK_SH / LOCK_EX), or -1 when path does not
 * exist (allowed when `may_be_absent`). */
static cf_status lock_file(const char *path, int how, int may_be_absent, int *fd) {
  *fd = open(path, O_RDONLY);
  if (*fd < 0) {
    if (errno == ENOENT && may_be_absent) return CF_OK;
    if (errno == ENOENT) return cf_err(CF_EIO, "cannot resume '%s': no such file", path);
    return cf_err(CF_EIO, "cannot open '%s': %s", path, strerror(errno));
  }
  if (flock(*fd, how | LOCK_NB) != 0) {
    int e = errno;
    close(*fd);
    *fd = -1;
    if (e == EWOULDBLOCK)
      return cf_err(CF_EIO,
                    "'%s' is in use by another process (a samples writer still running, or an "
                    "open reader); stop it first",
                    path);
    return cf_err(CF_EIO, "cannot lock '%s': %s", path, strerror(e));
  }
  return CF_OK;
}

static void unlock_file(int *fd) {
  if (*fd >= 0) close(*fd); /* drops the flock */
  *fd = -1;
}

/* ---- HDF5 pieces ---- */

/* The two physical forms of a samples file: LIVE while it is written (HDF5 1.10 format, which
 * SWMR needs: superblock v3, extensible-array chunk index), FINAL once complete (HDF5 1.8
 * format: superblock v2, v1 B-tree chunk index, readable by calmflow's MPI-IO readers, whose
 * file access is bounded to 1.8, and by any HDF5 1.8+ reader). */
enum form { LIVE, FINAL };

/* File access: default (sec2) driver, the form's format bounds (what is written; the LIVE
 * bounds read both forms), HDF5 file locking off. */
static hid_t make_fapl(enum form form) {
  H5F_libver_t lo = form == FINAL ? H5F_LIBVER_V18 : H5F_LIBVER_LATEST;
  H5F_libver_t hi = form == FINAL ? H5F_LIBVER_V18 : H5F_LIBVER_LATEST;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0 &&
      (H5Pset_libver_bounds(fapl, lo, hi) < 0 || H5Pset_file_locking(fapl, 0, 1) < 0)) {
    H5Pclose(fapl);
    fapl = -1;
  }
  return fapl;
}

static int64_t chunk_rows(int64_t n, size_t row_bytes) {
  int64_t r = (int64_t)(CHUNK_TARGET / row_bytes);
  if (r < 1) r = 1;
  if (r > n) r = n;
  return r;
}

/* Dataset access with a chunk cache that holds a few chunks of this dataset. */
static hid_t make_dapl(int64_t rows, size_t row_bytes) {
  size_t bytes = 2 * (size_t)rows * row_bytes + ((size_t)4 << 20);
  hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
  if (dapl >= 0 && H5Pset_chunk_cache(dapl, 521, bytes, 1.0) < 0) {
    H5Pclose(dapl);
    dapl = -1;
  }
  return dapl;
}

/* Create the extendible float32 dataset `name` of shape (rows, inner...) in fid. */
static cf_status create_rows(hid_t fid, const char *name, int ndim, const hsize_t *inner,
                             int64_t rows, int64_t n, const char *file, hid_t *did) {
  hsize_t dims[3], maxd[3], chunk[3];
  size_t row_bytes = sizeof(float);
  dims[0] = (hsize_t)rows;
  maxd[0] = H5S_UNLIMITED;
  for (int i = 1; i < ndim; i++) {
    dims[i] = maxd[i] = chunk[i] = inner[i - 1];
    row_bytes *= (size_t)inner[i - 1];
  }
  chunk[0] = (hsize_t)chunk_rows(n, row_bytes);
  char why[256];
  cf_status st = CF_OK;
  hid_t sp = H5Screate_simple(ndim, dims, maxd), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hid_t dapl = make_dapl((int64_t)chunk[0], row_bytes);
  *did = -1;
  float zero = 0; /* a chunk's unwritten tail is 0, not whatever was in memory */
  if (sp < 0 || dcpl < 0 || dapl < 0 || H5Pset_chunk(dcpl, ndim, chunk) < 0 ||
      H5Pset_fill_value(dcpl, H5T_NATIVE_FLOAT, &zero) < 0)
    st = cf_err(CF_EIO, "cannot set up dataset %s of '%s': %s", name, file,
                cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) {
    *did = H5Dcreate2(fid, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, dapl);
    if (*did < 0)
      st = cf_err(CF_EIO, "cannot create dataset %s in '%s': %s", name, file,
                  cf_io_h5_reason(why, sizeof why));
  }
  if (dapl >= 0) H5Pclose(dapl);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (sp >= 0) H5Sclose(sp);
  return st;
}

/* Transfer rows [r0, r0 + count) of dataset did (ndim dims; the inner ones are `inner`)
 * between the file and buf. */
static cf_status rows_io(int write, hid_t did, int ndim, const hsize_t *inner, int64_t r0,
                         int64_t count, float *buf, const char *file, const char *name) {
  hsize_t start[3] = {(hsize_t)r0, 0, 0}, cnt[3] = {(hsize_t)count, 0, 0};
  for (int i = 1; i < ndim; i++)
    cnt[i] = inner[i - 1];
  hid_t fs = H5Dget_space(did), ms = H5Screate_simple(ndim, cnt, NULL);
  herr_t e = -1;
  if (fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL) >= 0)
    e = write ? H5Dwrite(did, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf)
              : H5Dread(did, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf);
  if (ms >= 0) H5Sclose(ms);
  if (fs >= 0) H5Sclose(fs);
  char why[256];
  CF_CHECK(e >= 0, write ? CF_EIO : CF_ECORRUPT, "cannot %s %s rows %lld..%lld of '%s': %s",
           write ? "write" : "read", name, (long long)r0, (long long)(r0 + count), file,
           cf_io_h5_reason(why, sizeof why));
  return CF_OK;
}

/* Overwrite the existing int64 attribute `key` of the root group (allowed in SWMR write mode,
 * unlike creating one). */
static cf_status attr_set_i64(hid_t fid, const char *key, int64_t v, const char *file) {
  hid_t a = H5Aopen(fid, key, H5P_DEFAULT);
  herr_t e = a >= 0 ? H5Awrite(a, H5T_NATIVE_INT64, &v) : -1;
  if (a >= 0) H5Aclose(a);
  char why[256];
  CF_CHECK(e >= 0, CF_EIO, "cannot write attribute %s = %lld to '%s': %s", key, (long long)v, file,
           cf_io_h5_reason(why, sizeof why));
  return CF_OK;
}

/* H5Fflush, then fsync the file's descriptor unless nosync. */
static cf_status flush_file(hid_t fid, int nosync, const char *file, const char *what) {
  char why[256];
  CF_CHECK(H5Fflush(fid, H5F_SCOPE_LOCAL) >= 0, CF_EIO, "cannot flush %s to '%s': %s", what, file,
           cf_io_h5_reason(why, sizeof why));
  if (nosync) return CF_OK;
  int *fd = NULL;
  CF_CHECK(H5Fget_vfd_handle(fid, H5P_DEFAULT, (void **)&fd) >= 0 && fd != NULL, CF_EIO,
           "cannot get the descriptor of '%s' to fsync it: %s", file,
           cf_io_h5_reason(why, sizeof why));
  CF_CHECK(fsync(*fd) == 0, CF_EIO, "fsync of '%s' failed: %s", file, strerror(errno));
  return CF_OK;
}

static void utc_now(char *buf, size_t cap) {
  time_t t = time(NULL);
  struct tm tm;
  if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, cap, "unknown");
}

/* ---- building a file under a temporary name ---- */

/* The source of the rows a new file starts with (resume), or none (create). */
struct source {
  hid_t x, tr; /* -1: none */
  int64_t rows;
};

/* Copy rows [0, src->rows) of src into the new datasets, a block at a time. */
static cf_status copy_rows(const struct cf_samples *s, const struct source *src, hid_t x, hid_t tr,
                           const char *from, const char *to) {
  size_t row = (size_t)s->D * sizeof(float), trow = (size_t)(s->N * s->D) * sizeof(float);
  size_t per = row + (s->traj ? trow : 0);
  int64_t block = (int64_t)(COPY_TARGET / per);
  if (block < 1) block = 1;
  if (block > src->rows) block = src->rows;
  float *bx = NULL, *bt = NULL;
  cf_status st = cf_alloc((void **)&bx, (size_t)block * row, "resume copy buffer");
  if (st == CF_OK && s->traj) st = cf_alloc((void **)&bt, (size_t)block * trow, "resume copy");
  hsize_t ix[1] = {(hsize_t)s->D}, it[2] = {(hsize_t)s->N, (hsize_t)s->D};
  for (int64_t r = 0; st == CF_OK && r < src->rows; r += block) {
    int64_t c = src->rows - r < block ? src->rows - r : block;
    st = rows_io(0, src->x, 2, ix, r, c, bx, from, "/x");
    if (st == CF_OK) st = rows_io(1, x, 2, ix, r, c, bx, to, "/x");
    if (st == CF_OK && s->traj) st = rows_io(0, src->tr, 3, it, r, c, bt, from, "/traj");
    if (st == CF_OK && s->traj) st = rows_io(1, tr, 3, it, r, c, bt, to, "/traj");
  }
  cf_free((void **)&bt);
  cf_free((void **)&bx);
  return st;
}

static cf_status put_attrs(hid_t fid, const struct cf_samples *s, const char *config,
                           const char *created, int64_t resumes, const char *file) {
  unsigned maj = 0, min = 0, rel = 0;
  char ver[64];
  H5get_libversion(&maj, &min, &rel);
  snprintf(ver, sizeof ver, "%u.%u.%u", maj, min, rel);
  CF_TRY(cf_io_attr_put_str(fid, "format", CF_SAMPLES_FORMAT, file));
  CF_TRY(cf_io_attr_put_i64(fid, "version", CF_SAMPLES_VERSION, file));
  CF_TRY(cf_io_attr_put_i64(fid, "n_total", s->n, file));
  CF_TRY(cf_io_attr_put_i64(fid, "n_done", s->n_done, file));
  CF_TRY(cf_io_attr_put_i64(fid, "complete", s->complete, file));
  CF_TRY(cf_io_attr_put_i64(fid, "D", s->D, file));
  CF_TRY(cf_io_attr_put_i64(fid, "N", s->N, file));
  CF_TRY(cf_io_attr_put_i64(fid, "traj", s->traj, file));
  CF_TRY(cf_io_attr_put_i64(fid, "resumes", resumes, file));
  CF_TRY(cf_io_attr_put_str(fid, "created", created, file));
  CF_TRY(cf_io_attr_put_str(fid, "hdf5_version", ver, file));
  CF_TRY(cf_io_attr_put_str(fid, "config", config, file));
  return CF_OK;
}

/* Bytes of the chunks that rows [k, k + count) of a dataset with `row_bytes` per row start
 * (whole chunks: HDF5 allocates them so; the chunk holding row k - 1 is there already). */
static double chunk_bytes(const struct cf_samples *s, size_t row_bytes, int64_t k, int64_t count) {
  int64_t cr = chunk_rows(s->n, row_bytes);
  int64_t first = (k + cr - 1) / cr, last = (k + count - 1) / cr;
  return count > 0 && last >= first ? (double)(last - first + 1) * (double)cr * (double)row_bytes
                                    : 0.0;
}

/* The room on disk to reserve for `count` rows from row k on, with their metadata. */
static double rows_bytes(const struct cf_samples *s, int64_t k, int64_t count) {
  size_t row = (size_t)s->D * sizeof(float), trow = (size_t)(s->N * s->D) * sizeof(float);
  double b = chunk_bytes(s, row, k, count) + (s->traj ? chunk_bytes(s, trow, k, count) : 0.0);
  return 65536.0 + b + b / 64.0; /* + the chunk index and object headers, generously */
}

/* Create `tmp` and reserve `bytes` in it before HDF5 opens it (cf_io_reserve: on a disk without
 * room HDF5 could not even close an empty file); removed again on failure. */
static cf_status probe_room(const char *tmp, double bytes, const char *what) {
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
  CF_CHECK(fd >= 0, CF_EIO, "cannot create '%s': %s", tmp, strerror(errno));
  cf_status st = cf_io_reserve(tmp, fd, 0, bytes, what);
  close(fd);
  if (st != CF_OK) unlink(tmp);
  return st;
}

/* Write the file s describes (n_done rows from src, or none) in the given form as
 * <path>.tmp.<pid>, close and fsync it, and rename it over path (then fsync the directory).
 * Room for all of it is reserved first, so a full disk stops it before HDF5 writes (a failed
 * H5Fclose crashes HDF5 1.10.8 at exit); the tail HDF5 does not use is cut off after the close. */
static cf_status build_and_publish(const struct cf_samples *s, const struct source *src,
                                   const char *config, const char *created, int64_t resumes,
                                   enum form form) {
  char tmp[CF_SAMPLES_PATH_MAX + 32], why[256];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", s->path, (long)getpid());
  /* a stale temporary of a killed run with our pid: ours to replace */
  CF_CHECK(unlink(tmp) == 0 || errno == ENOENT, CF_EIO, "cannot remove stale '%s': %s", tmp,
           strerror(errno));
  int64_t rows = src ? src->rows : 0;
  char what[CF_SAMPLES_PATH_MAX + 8];
  snprintf(what, sizeof what, "'%s'", s->path);
  double room = rows_bytes(s, 0, rows) + 2.0 * (double)(strlen(config) + strlen(created));
  CF_TRY(probe_room(tmp, room, what));
  hid_t fapl = make_fapl(form), fcpl = H5Pcreate(H5P_FILE_CREATE);
  hid_t fid = -1, x = -1, tr = -1;
  cf_status st = CF_OK;
  /* all attributes in the root group's header (compact), a large config moves them to dense
   * storage by itself */
  if (fapl < 0 || fcpl < 0 || H5Pset_attr_phase_change(fcpl, 32, 24) < 0)
    st = cf_err(CF_EIO, "cannot set up '%s': %s", tmp, cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) {
    fid = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl); /* (probe_room made it) */
    if (fid < 0) st = cf_err(CF_EIO, "cannot create '%s': %s", tmp, cf_io_h5_reason(why, 256));
  }
  if (st == CF_OK) st = cf_io_reserve(tmp, -1, 0, room, what); /* again: creating truncated it */
  hsize_t ix[1] = {(hsize_t)s->D}, it[2] = {(hsize_t)s->N, (hsize_t)s->D};
  if (st == CF_OK) st = create_rows(fid, "/x", 2, ix, rows, s->n, tmp, &x);
  if (st == CF_OK && s->traj) st = create_rows(fid, "/traj", 3, it, rows, s->n, tmp, &tr);
  if (st == CF_OK && rows > 0) st = copy_rows(s, src, x, tr, s->path, tmp);
  if (st == CF_OK) st = put_attrs(fid, s, config, created, resumes, tmp);
  if (tr >= 0) H5Dclose(tr);
  if (x >= 0) H5Dclose(x);
  if (fid >= 0 && H5Fclose(fid) < 0 && st == CF_OK)
    st = cf_err(CF_EIO, "cannot close '%s': %s", tmp, cf_io_h5_reason(why, sizeof why));
  if (fcpl >= 0) H5Pclose(fcpl);
  if (fapl >= 0) H5Pclose(fapl);
  if (st == CF_OK) st = cf_io_trim_to_eoa(tmp);
  if (st == CF_OK) st = cf_io_fsync_file(tmp);
  if (st == CF_OK && rename(tmp, s->path) != 0)
    st = cf_err(CF_EIO, "cannot rename '%s' to '%s': %s", tmp, s->path, strerror(errno));
  if (st != CF_OK) {
    unlink(tmp);
    return st;
  }
  char dir[CF_SAMPLES_PATH_MAX];
  cf_io_dirname(s->path, dir, sizeof dir);
  CF_TRY(cf_io_fsync_dir(dir));
  return CF_OK;
}

/* Open the published file for appending: SWMR write mode, both datasets, the writer's lock. */
static cf_status open_append(struct cf_samples *s) {
  char why[256];
  hid_t fapl = make_fapl(LIVE);
  CF_CHECK(fapl >= 0, CF_EIO, "cannot set up access to '%s': %s", s->path,
           cf_io_h5_reason(why, sizeof why));
  hid_t fid = H5Fopen(s->path, H5F_ACC_RDWR | H5F_ACC_SWMR_WRITE, fapl);
  H5Pclose(fapl);
  CF_CHECK(fid >= 0, CF_EIO, "cannot open '%s' for appending (SWMR write): %s", s->path,
           cf_io_h5_reason(why, sizeof why));
  size_t row = (size_t)s->D * sizeof(float), trow = (size_t)(s->N * s->D) * sizeof(float);
  hid_t dx = make_dapl(chunk_rows(s->n, row), row);
  hid_t dt = s->traj ? make_dapl(chunk_rows(s->n, trow), trow) : -1;
  hid_t x = dx >= 0 ? H5Dopen2(fid, "/x", dx) : -1;
  hid_t tr = s->traj && dt >= 0 ? H5Dopen2(fid, "/traj", dt) : -1;
  if (dt >= 0) H5Pclose(dt);
  if (dx >= 0) H5Pclose(dx);
  cf_status st = CF_OK;
  if (x < 0 || (s->traj && tr < 0))
    st = cf_err(CF_EIO, "cannot open the datasets of '%s': %s", s->path,
                cf_io_h5_reason(why, sizeof why));
  int lock_fd = -1;
  if (st == CF_OK) st = lock_file(s->path, LOCK_SH, 0, &lock_fd);
  if (st != CF_OK) {
    if (tr >= 0) H5Dclose(tr);
    if (x >= 0) H5Dclose(x);
    H5Fclose(fid);
    return st;
  }
  s->file = fid;
  s->x = x;
  s->tr = s->traj ? tr : -1;
  s->lock_fd = lock_fd;
  s->open = 1;
  return CF_OK;
}

/* ---- public ---- */

static cf_status init_struct(struct cf_samples *s, const char *path,
                             const struct cf_samples_spec *spec) {
  cf_io_h5_quiet();
  memset(s, 0, sizeof *s);
  s->file = s->x = s->tr = -1;
  s->lock_fd = -1;
  CF_TRY(check_path(path));
  CF_TRY(check_spec(spec, path));
  snprintf(s->path, sizeof s->path, "%s", path);
  s->n = spec->n;
  s->D = spec->D;
  s->N = spec->N;
  s->traj = spec->traj != 0;
  s->nosync = spec->nosync != 0;
  return CF_OK;
}

cf_status cf_samples_create(struct cf_samples *s, const char *path,
                            const struct cf_samples_spec *spec) {
  CF_TRY(init_struct(s, path, spec));
  int fd = -1;
  CF_TRY(lock_file(s->path, LOCK_EX, 1, &fd)); /* no writer may be using an old file */
  char created[64];
  utc_now(created, sizeof created);
  cf_status st = build_and_publish(s, NULL, spec->config, created, 0, LIVE);
  unlock_file(&fd);
  CF_TRY(st);
  CF_TRY(open_append(s));
  return CF_OK;
}

static cf_status read_meta(hid_t fid, const char *path, struct meta *m) {
  const char *a = "attribute";
  htri_t has = H5Aexists(fid, "format");
  CF_CHECK(has >= 0, CF_ECORRUPT,
           "'%s': the root group's metadata cannot be read; the file is corrupt", path);
  CF_CHECK(has > 0, CF_ECORRUPT,
           "'%s' is not a calmflow samples file (no 'format' attribute), expected one written by "
           "calmflow sample",
           path);
  CF_TRY(cf_io_attr_get_str(fid, "format", path, a, 256, &m->format));
  CF_CHECK(strcmp(m->format, CF_SAMPLES_FORMAT) == 0, CF_ECORRUPT,
           "'%s' is not a calmflow samples file (attribute format is '%s', expected '%s')", path,
           m->format, CF_SAMPLES_FORMAT);
  CF_TRY(cf_io_attr_get_i64(fid, "version", path, a, &m->version));
  CF_CHECK(m->version >= 1 && m->version <= CF_SAMPLES_VERSION, CF_ECORRUPT,
           "'%s' has samples format version %lld, this build reads versions 1..%d", path,
           (long long)m->version, CF_SAMPLES_VERSION);
  CF_TRY(cf_io_attr_get_str(fid, "config", path, a, CF_SAMPLES_CONFIG_MAX + 1, &m->config));
  CF_TRY(cf_io_attr_get_i64(fid, "n_total", path, a, &m->n_total));
  CF_TRY(cf_io_attr_get_i64(fid, "n_done", path, a, &m->n_done));
  CF_TRY(cf_io_attr_get_i64(fid, "complete", path, a, &m->complete));
  CF_TRY(cf_io_attr_get_i64(fid, "D", path, a, &m->D));
  CF_TRY(cf_io_attr_get_i64(fid, "N", path, a, &m->N));
  CF_TRY(cf_io_attr_get_i64(fid, "traj", path, a, &m->traj));
  CF_TRY(cf_io_attr_get_i64(fid, "resumes", path, a, &m->resumes));
  CF_TRY(cf_io_attr_get_str(fid, "created", path, a, 256, &m->created));
  return CF_OK;
}

/* Append "line\n" to msg (cap bytes, *used so far). */
static void add_line(char *msg, size_t cap, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_line(char *msg, size_t cap, size_t *used, const char *fmt, ...) {
  if (*used >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(msg + *used, cap - *used, fmt, ap);
  va_end(ap);
  if (w > 0) *used += (size_t)w < cap - *used ? (size_t)w : cap - *used - 1;
  if (*used + 1 < cap) {
    msg[(*used)++] = '\n';
    msg[*used] = '\0';
  }
}

/* Where the stored config and this run's first differ: line number (from 1) and the lines. */
static void config_diff(const char *a, const char *b, char *msg, size_t cap, size_t *used,
                        const char *path) {
  int line = 1;
  const char *la = a, *lb = b;
  while (*a && *a == *b) {
    if (*a == '\n') {
      line++;
      la = a + 1;
      lb = b + 1;
    }
    a++;
    b++;
  }
  int na = (int)strcspn(la, "\n"), nb = (int)strcspn(lb, "\n");
  add_line(msg, cap, used,
           "'%s' attribute config differs from this run's at line %d: the file has '%.*s%s', "
           "this run has '%.*s%s'",
           path, line, na > 100 ? 100 : na, la, na > 100 ? "..." : "", nb > 100 ? 100 : nb, lb,
           nb > 100 ? "..." : "");
}

/* Every mismatch between the file and this run, one line each. */
static cf_status compare(const char *path, const struct meta *m,
                         const struct cf_samples_spec *spec) {
  char msg[2048];
  size_t used = 0;
  msg[0] = '\0';
  struct {
    const char *key;
    int64_t file, run;
  } v[] = {{"D", m->D, spec->D},
           {"N", m->N, spec->N},
           {"traj", m->traj, spec->traj != 0},
           {"n_total", m->n_total, spec->n}};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
    if (v[i].file != v[i].run)
      add_line(msg, sizeof msg, &used, "'%s' attribute %s is %lld, this run has %s = %lld", path,
               v[i].key, (long long)v[i].file, v[i].key, (long long)v[i].run);
  if (strcmp(m->config, spec->config) != 0)
    config_diff(m->config, spec->config, msg, sizeof msg, &used, path);
  if (used == 0) return CF_OK;
  if (msg[used - 1] == '\n') msg[used - 1] = '\0';
  return cf_err(CF_EINVAL, "%s", msg);
}

/* The rows of dataset `name` (expected (k, inner...)) into *rows. */
static cf_status dataset_rows(hid_t fid, const char *name, int ndim, const int64_t *inner,
                              const char *path, hid_t *did, int64_t *rows) {
  *did = -1;
  CF_CHECK(H5Lexists(fid, name, H5P_DEFAULT) > 0, CF_ECORRUPT, "'%s' has no dataset %s", path,
           name);
  *did = H5Dopen2(fid, name, H5P_DEFAULT);
  CF_CHECK(*did >= 0, CF_ECORRUPT, "'%s' %s cannot be opened as a dataset", path, name);
  hid_t sp = H5Dget_space(*did), ty = H5Dget_type(*did);
  hsize_t d[8] = {0};
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  int ok = nd == ndim && ty >= 0 && H5Tget_class(ty) == H5T_FLOAT;
  if (ok) H5Sget_simple_extent_dims(sp, d, NULL);
  for (int i = 1; ok && i < ndim; i++)
    ok = (int64_t)d[i] == inner[i - 1];
  if (ty >= 0) H5Tclose(ty);
  if (sp >= 0) H5Sclose(sp);
  if (!ok) {
    char want[96];
    if (ndim == 2)
      snprintf(want, sizeof want, "(k, %lld)", (long long)inner[0]);
    else
      snprintf(want, sizeof want, "(k, %lld, %lld)", (long long)inner[0], (long long)inner[1]);
    return cf_err(CF_ECORRUPT, "'%s' %s is not a float array of shape %s", path, name, want);
  }
  *rows = (int64_t)d[0];
  return CF_OK;
}

/* A samples file opened for reading its committed part. */
struct committed {
  hid_t fid;
  struct meta m;
  struct source src; /* src.rows = n_done */
  int64_t rows;      /* rows found in /x (or /traj, the larger) */
};

static void committed_close(struct committed *c) {
  if (c->src.tr >= 0) H5Dclose(c->src.tr);
  if (c->src.x >= 0) H5Dclose(c->src.x);
  if (c->fid >= 0) H5Fclose(c->fid);
  meta_free(&c->m);
  c->fid = c->src.x = c->src.tr = -1;
}

/* Open s->path and check it: attributes (and, when spec is given, their match with this run),
 * n_done against n_total and complete, datasets of the right shape with >= n_done rows. In SWMR
 * read mode: the view a reader would have had when the writer stopped, also a killed one; a
 * file without the SWMR flags (closed cleanly, or in the final form) opens the ordinary way. */
static cf_status committed_open(struct committed *c, const struct cf_samples *s,
                                const struct cf_samples_spec *spec) {
  const char *path = s->path;
  char why[256];
  memset(c, 0, sizeof *c);
  c->fid = c->src.x = c->src.tr = -1;
  hid_t fapl = make_fapl(LIVE);
  CF_CHECK(fapl >= 0, CF_EIO, "cannot set up access to '%s': %s", path,
           cf_io_h5_reason(why, sizeof why));
  c->fid = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl);
  if (c->fid < 0) {
    cf_io_h5_reason(why, sizeof why);
    H5Eclear2(H5E_DEFAULT);
    c->fid = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  }
  H5Pclose(fapl);
  CF_CHECK(c->fid >= 0, CF_ECORRUPT,
           "cannot read '%s': HDF5 cannot open it (%s); not an HDF5 file, truncated or corrupt?",
           path, why);
  struct meta *m = &c->m;
  CF_TRY(read_meta(c->fid, path, m));
  if (spec != NULL) CF_TRY(compare(path, m, spec));
  CF_CHECK(m->n_done >= 0 && m->n_done <= m->n_total && (m->complete == 0 || m->complete == 1) &&
               (!m->complete || m->n_done == m->n_total),
           CF_ECORRUPT, "'%s' has n_done = %lld of n_total = %lld and complete = %lld", path,
           (long long)m->n_done, (long long)m->n_total, (long long)m->complete);
  int64_t ix[1] = {s->D}, it[2] = {s->N, s->D}, kx = 0, kt = 0;
  CF_TRY(dataset_rows(c->fid, "/x", 2, ix, path, &c->src.x, &kx));
  if (s->traj) CF_TRY(dataset_rows(c->fid, "/traj", 3, it, path, &c->src.tr, &kt));
  CF_CHECK(kx >= m->n_done && (!s->traj || kt >= m->n_done), CF_ECORRUPT,
           "'%s' says n_done = %lld but %s has only %lld rows", path, (long long)m->n_done,
           kx < m->n_done ? "/x" : "/traj", (long long)(kx < m->n_done ? kx : kt));
  c->src.rows = m->n_done;
  c->rows = s->traj && kt > kx ? kt : kx;
  return CF_OK;
}

/* Local. Integer attribute `name` of the root group of fid into *v; 0 if it cannot. */
static int attr_i64(hid_t fid, const char *name, int64_t *v) {
  if (H5Aexists(fid, name) <= 0) return 0;
  hid_t a = H5Aopen(fid, name, H5P_DEFAULT);
  int ok = a >= 0 && H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
  if (a >= 0) H5Aclose(a);
  return ok;
}

int cf_samples_unfinished(const char *path, int64_t *n_done, int64_t *n_total) {
  struct stat sb;
  *n_done = *n_total = 0;
  if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
  H5E_auto2_t fn = NULL;
  void *data = NULL;
  H5Eget_auto2(H5E_DEFAULT, &fn, &data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  /* a killed writer's file opens in SWMR read mode only; HDF5's own locks are not ours */
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0) H5Pset_file_locking(fapl, 0, 1);
  hid_t fid = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl >= 0 ? fapl : H5P_DEFAULT);
  if (fid < 0) fid = H5Fopen(path, H5F_ACC_RDONLY, fapl >= 0 ? fapl : H5P_DEFAULT);
  int64_t c = 1;
  int unfinished = fid >= 0 && H5Aexists(fid, "format") > 0 && attr_i64(fid, "complete", &c) &&
                   c == 0 && attr_i64(fid, "n_done", n_done) && attr_i64(fid, "n_total", n_total);
  if (fid >= 0) H5Fclose(fid);
  if (fapl >= 0) H5Pclose(fapl);
  H5Eclear2(H5E_DEFAULT);
  H5Eset_auto2(H5E_DEFAULT, fn, data);
  return unfinished;
}

/* Resume with the file locked (LOCK_EX): check it, then publish its committed part, in the
 * live form to go on appending, or in the final form if it is complete (and not already). */
static cf_status resume_locked(struct cf_samples *s, const struct cf_samples_spec *spec) {
  int version, flags;
  cf_io_superblock(s->path, &version, &flags);
  s->was_open = flags > 0 && (flags & (SB_WRITE_ACCESS | SB_SWMR_WRITE_ACCESS)) != 0;
  struct committed c;
  cf_status st = committed_open(&c, s, spec);
  if (st == CF_OK) {
    struct meta *m = &c.m;
    s->n_done = m->n_done;
    s->complete = (int)m->complete;
    s->n_dropped = c.rows - m->n_done;
    if (!m->complete)
      st = build_and_publish(s, &c.src, m->config, m->created, m->resumes + 1, LIVE);
    else if (version != 2 || s->was_open) /* finish stopped before the final form */
      st = build_and_publish(s, &c.src, m->config, m->created, m->resumes, FINAL);
  }
  committed_close(&c);
  return st;
}

cf_status cf_samples_resume(struct cf_samples *s, const char *path,
                            const struct cf_samples_spec *spec) {
  CF_TRY(init_struct(s, path, spec));
  int fd = -1;
  CF_TRY(lock_file(s->path, LOCK_EX, 0, &fd));
  cf_status st = resume_locked(s, spec);
  unlock_file(&fd);
  if (st != CF_OK) {
    s->complete = 0;
    s->n_done = 0;
    return st;
  }
  if (!s->complete) CF_TRY(open_append(s));
  return CF_OK;
}

/* Reserve room for `count` more rows (whole chunks, and their metadata) past the end of the
 * space HDF5 uses, before anything of them is written: a full disk fails here, while the file
 * still holds its last committed state and closes cleanly (cf_io_reserve). */
static cf_status reserve_append(const struct cf_samples *s, int64_t count) {
  char why[256], what[CF_SAMPLES_PATH_MAX + 8];
  haddr_t eoa = 0;
  int *fd = NULL;
  CF_CHECK(H5Fget_eoa(s->file, &eoa) >= 0 &&
               H5Fget_vfd_handle(s->file, H5P_DEFAULT, (void **)&fd) >= 0 && fd != NULL,
           CF_EIO, "cannot find the end of '%s' to make room for samples: %s", s->path,
           cf_io_h5_reason(why, sizeof why));
  snprintf(what, sizeof what, "samples to '%s'", s->path);
  CF_TRY(cf_io_reserve(s->path, *fd, (double)eoa, (double)eoa + rows_bytes(s, s->n_done, count),
                       what));
  return CF_OK;
}

static cf_status append_body(struct cf_samples *s, int64_t count, const float *x,
                             const float *traj) {
  char why[256];
  int64_t k = s->n_done;
  CF_TRY(reserve_append(s, count));
  hsize_t ex[2] = {(hsize_t)(k + count), (hsize_t)s->D};
  hsize_t et[3] = {(hsize_t)(k + count), (hsize_t)s->N, (hsize_t)s->D};
  hsize_t ix[1] = {(hsize_t)s->D}, it[2] = {(hsize_t)s->N, (hsize_t)s->D};
  CF_CHECK(H5Dset_extent(s->x, ex) >= 0, CF_EIO, "cannot extend /x of '%s' to %lld rows: %s",
           s->path, (long long)(k + count), cf_io_h5_reason(why, sizeof why));
  CF_TRY(rows_io(1, s->x, 2, ix, k, count, (float *)x, s->path, "/x"));
  if (s->traj) {
    CF_CHECK(H5Dset_extent(s->tr, et) >= 0, CF_EIO, "cannot extend /traj of '%s' to %lld rows: %s",
             s->path, (long long)(k + count), cf_io_h5_reason(why, sizeof why));
    CF_TRY(rows_io(1, s->tr, 3, it, k, count, (float *)traj, s->path, "/traj"));
  }
  /* the rows reach the file before the count that covers them */
  CF_TRY(flush_file(s->file, s->nosync, s->path, "samples"));
  CF_TRY(attr_set_i64(s->file, "n_done", k + count, s->path));
  CF_TRY(flush_file(s->file, s->nosync, s->path, "n_done"));
  s->n_done = k + count;
  return CF_OK;
}

cf_status cf_samples_append(struct cf_samples *s, int64_t count, const float *x,
                            const float *traj) {
  CF_CHECK(!s->complete, CF_EINVAL, "samples file '%s' is complete: nothing more to append",
           s->path);
  CF_CHECK(s->open && !s->failed, CF_EINVAL, "samples file '%s' is not open for appending%s",
           s->path, s->failed ? " (an earlier append failed)" : "");
  CF_CHECK(count >= 0, CF_EINVAL, "samples file '%s': cannot append %lld samples", s->path,
           (long long)count);
  if (count == 0) return CF_OK;
  CF_CHECK(count <= s->n - s->n_done, CF_EINVAL,
           "samples file '%s': appending %lld samples to %lld would exceed n = %lld", s->path,
           (long long)count, (long long)s->n_done, (long long)s->n);
  CF_CHECK(x != NULL && (!s->traj || traj != NULL), CF_EINVAL,
           "samples file '%s': append without %s data", s->path, x == NULL ? "x" : "traj");
  cf_status st = append_body(s, count, x, traj);
  if (st != CF_OK) s->failed = 1;
  return st;
}

/* Close the HDF5 handles (H5Fclose clears the writer's superblock flags) and fsync; the
 * writer's lock stays. */
static cf_status close_handles(struct cf_samples *s) {
  if (!s->open) return CF_OK;
  char why[256];
  cf_status st = CF_OK;
  if (s->tr >= 0) H5Dclose(s->tr);
  if (s->x >= 0) H5Dclose(s->x);
  if (H5Fclose(s->file) < 0)
    st = cf_err(CF_EIO, "cannot close '%s': %s", s->path, cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) st = cf_io_trim_to_eoa(s->path); /* the tail reserve_append left */
  if (st == CF_OK && !s->nosync && fsync(s->lock_fd) != 0)
    st = cf_err(CF_EIO, "fsync of '%s' failed: %s", s->path, strerror(errno));
  s->file = s->x = s->tr = -1;
  s->open = 0;
  return st;
}

/* Rewrite the complete, closed file in the final form (a copy, renamed over it). */
static cf_status publish_final(struct cf_samples *s) {
  struct committed c;
  cf_status st = committed_open(&c, s, NULL);
  if (st == CF_OK) st = build_and_publish(s, &c.src, c.m.config, c.m.created, c.m.resumes, FINAL);
  committed_close(&c);
  return st;
}

cf_status cf_samples_finish(struct cf_samples *s) {
  if (s->complete && !s->open) return CF_OK; /* resumed complete, or finished before */
  CF_CHECK(s->open && !s->failed, CF_EINVAL, "samples file '%s' is not open for appending%s",
           s->path, s->failed ? " (an earlier append failed)" : "");
  CF_CHECK(s->n_done == s->n, CF_EINVAL,
           "samples file '%s': cannot finish with %lld of %lld samples written", s->path,
           (long long)s->n_done, (long long)s->n);
  cf_status st = attr_set_i64(s->file, "complete", 1, s->path);
  if (st == CF_OK) st = flush_file(s->file, s->nosync, s->path, "the completion mark");
  if (st != CF_OK) {
    s->failed = 1;
    return st;
  }
  s->complete = 1;
  st = close_handles(s);
  /* complete from here on; a kill before the rename leaves it complete in the live form, and
   * resume finishes the job */
  if (st == CF_OK) st = publish_final(s);
  unlock_file(&s->lock_fd);
  CF_TRY(st);
  return CF_OK;
}

void cf_samples_close(struct cf_samples *s) {
  if (s == NULL || !s->open) return;
  /* error paths: the error being reported stays the recorded one; a failure here adds none */
  int had = cf_errmsg()[0] != '\0';
  if (close_handles(s) != CF_OK && !had) cf_err_clear();
  unlock_file(&s->lock_fd);
}
