/* h5io.c: point sets in parallel HDF5 files: the checked reader (cf_h5_read_points) and
 * the atomic multi-dataset writer (cf_h5_writer_*) that cf_h5_write_points and the
 * checkpoint writer build on. */
#include "calmflow/h5io.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "io/h5util.h"

/* ---- writer ---- */

#define WRITER_META_BYTES 65536.0 /* room for HDF5's metadata: superblock, groups, headers */
#define WRITER_ITEM_BYTES 2048.0  /* per dataset or attribute: its object header, about */

/* Local (rank 0): the directory of `path` exists and is writable, path is not a directory. */
static cf_status check_output_local(const char *path) {
  char dir[CF_H5_PATH_MAX];
  cf_io_dirname(path, dir, sizeof dir);
  struct stat sb;
  if (stat(dir, &sb) != 0) {
    if (errno == ENOENT)
      return cf_err(CF_EIO, "cannot write '%s': directory '%s' does not exist", path, dir);
    return cf_err(CF_EIO, "cannot write '%s': directory '%s': %s", path, dir, strerror(errno));
  }
  CF_CHECK(S_ISDIR(sb.st_mode), CF_EIO, "cannot write '%s': '%s' is not a directory", path, dir);
  CF_CHECK(access(dir, W_OK | X_OK) == 0, CF_EIO,
           "cannot write '%s': directory '%s' is not writable", path, dir);
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
    return cf_err(CF_EIO, "cannot write '%s': it is a directory", path);
  return CF_OK;
}

/* Local (rank 0). Create the temporary file and reserve room for HDF5's metadata in it before
 * HDF5 opens it: on a disk with no room at all, HDF5 could not close an empty file it created
 * (the ranks would then hang in its collective close). HDF5 recreates it (truncating) and the
 * room is reserved again; the file is removed on failure. */
static cf_status probe_room(const struct cf_h5_writer *w) {
  int fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
  CF_CHECK(fd >= 0, CF_EIO, "cannot create '%s': %s", w->tmp, strerror(errno));
  char what[CF_H5_PATH_MAX + 8];
  snprintf(what, sizeof what, "'%s'", w->path);
  cf_status st = cf_io_reserve(w->tmp, fd, 0, WRITER_META_BYTES, what);
  close(fd);
  if (st != CF_OK) unlink(w->tmp);
  return st;
}

cf_status cf_h5_writer_open(struct cf_h5_writer *w, MPI_Comm comm, const char *path) {
  cf_io_h5_quiet();
  memset(w, 0, sizeof *w);
  w->file = -1;
  w->comm = comm;
  w->failed = 1; /* until the file exists */
  MPI_Comm_rank(comm, &w->rank);
  MPI_Comm_size(comm, &w->size);
  cf_status st = CF_OK;
  if (path == NULL || path[0] == '\0')
    st = cf_err(CF_EINVAL, "output file name is empty");
  else if (strlen(path) >= sizeof w->path)
    st = cf_err(CF_EINVAL, "output file name '%.64s...' is too long", path);
  else if (path[strlen(path) - 1] == '/')
    st = cf_err(CF_EINVAL, "output file name '%s' names a directory", path);
  long pid = w->rank == 0 ? (long)getpid() : 0;
  CF_MPI(MPI_Bcast(&pid, 1, MPI_LONG, 0, comm));
  if (st == CF_OK) {
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, pid);
    if (w->rank == 0) {
      st = check_output_local(path);
      /* A stale temporary of a crashed run with the same pid: ours to replace. */
      if (st == CF_OK && unlink(w->tmp) != 0 && errno != ENOENT)
        st = cf_err(CF_EIO, "cannot remove stale '%s': %s", w->tmp, strerror(errno));
      if (st == CF_OK) st = probe_room(w);
    }
  }
  CF_TRY(cf_agree(comm, st));

  char why[256];
  hid_t fapl = cf_io_fapl(comm);
  hid_t fid = -1;
  if (fapl < 0) {
    st = cf_err(CF_EIO, "cannot set up MPI-IO access for '%s': %s", w->tmp,
                cf_io_h5_reason(why, sizeof why));
  } else {
    fid = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl); /* (probe_room made it) */
    if (fid < 0)
      st = cf_err(CF_EIO, "cannot create '%s': %s", w->tmp, cf_io_h5_reason(why, sizeof why));
    H5Pclose(fapl);
  }
  st = cf_agree(comm, st);
  if (st != CF_OK) {
    if (fid >= 0) H5Fclose(fid);
    if (w->rank == 0) unlink(w->tmp);
    return st;
  }
  w->file = fid;
  w->failed = 0;
  st = cf_h5_writer_reserve(w, WRITER_META_BYTES);
  if (st != CF_OK) cf_h5_writer_abort(w);
  return st;
}

static cf_status writer_usable(const struct cf_h5_writer *w) {
  CF_CHECK(!w->failed && w->file >= 0, CF_EINVAL,
           "writer for '%s' used after a failure or after commit", w->path);
  return CF_OK;
}

/* Collective. Grow the reservation of the temporary file to `total` bytes (ckpt.c,
 * cf_io_reserve: before HDF5 writes what it would have to flush). */
static cf_status writer_room(struct cf_h5_writer *w, double total) {
  if (total <= w->reserved) return CF_OK;
  cf_status st = CF_OK;
  if (w->rank == 0) {
    char what[CF_H5_PATH_MAX + 8];
    snprintf(what, sizeof what, "'%s'", w->path);
    st = cf_io_reserve(w->tmp, -1, w->reserved, total, what);
  }
  w->reserved = total;
  return cf_agree(w->comm, st);
}

/* Collective. Count `bytes` about to be added, growing the reservation when needed. */
static cf_status writer_use(struct cf_h5_writer *w, double bytes) {
  w->used += bytes > 0 ? bytes : 0;
  cf_status st = writer_room(w, w->used);
  if (st != CF_OK) w->failed = 1;
  return st;
}

cf_status cf_h5_writer_reserve(struct cf_h5_writer *w, double bytes) {
  CF_TRY(writer_usable(w));
  return writer_use(w, bytes);
}

/* The body of a put: validation is identical on all ranks, so a failure there is seen
 * by all of them before any collective HDF5 call. */
static cf_status put_body(struct cf_h5_writer *w, const char *dset, const float *x, int ndim,
                          const int64_t *shape, const uint64_t *checksum) {
  CF_CHECK(dset != NULL && dset[0] != '\0', CF_EINVAL, "empty dataset name for '%s'", w->path);
  CF_CHECK(ndim >= 1 && ndim <= CF_IO_MAXDIM, CF_EINVAL,
           "dataset '%s' of '%s' has %d dimensions, expected 1..%d", dset, w->path, ndim,
           CF_IO_MAXDIM);
  hsize_t dims[CF_IO_MAXDIM];
  size_t total = 1;
  for (int i = 0; i < ndim; i++) {
    CF_CHECK(shape[i] >= 1, CF_EINVAL,
             "dataset '%s' of '%s' has dimension %d = %lld, expected >= 1", dset, w->path, i,
             (long long)shape[i]);
    dims[i] = (hsize_t)shape[i];
    CF_TRY(cf_mul_size(&total, total, (size_t)shape[i], dset));
  }
  CF_CHECK(x != NULL, CF_EINVAL, "dataset '%s' of '%s' has no data", dset, w->path);
  int64_t rowlen = (int64_t)(total / (size_t)shape[0]);

  char why[256];
  cf_status st = CF_OK;
  hid_t fid = (hid_t)w->file;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hid_t sp = H5Screate_simple(ndim, dims, NULL), did = -1;
  if (lcpl < 0 || dcpl < 0 || sp < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0)
    st = cf_err(CF_EIO, "cannot set up dataset '%s' of '%s': %s", dset, w->tmp,
                cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) {
    did = H5Dcreate2(fid, dset, H5T_IEEE_F32LE, sp, lcpl, dcpl, H5P_DEFAULT);
    if (did < 0)
      st = cf_err(CF_EIO, "cannot create dataset '%s' in '%s': %s", dset, w->tmp,
                  cf_io_h5_reason(why, sizeof why));
  }
  if (st == CF_OK) {
    int64_t lo, hi;
    cf_io_row_range(shape[0], w->rank, w->size, &lo, &hi);
    st = cf_io_write_rows(did, ndim, dims, lo, hi, x + lo * rowlen, w->tmp, dset);
  }
  if (st == CF_OK && checksum != NULL) st = cf_io_attr_put_u64(did, "checksum", *checksum, w->tmp);
  if (did >= 0) H5Dclose(did);
  if (sp >= 0) H5Sclose(sp);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (lcpl >= 0) H5Pclose(lcpl);
  return st;
}

cf_status cf_io_writer_put_sum(struct cf_h5_writer *w, const char *dset, const float *x, int ndim,
                               const int64_t *shape, const uint64_t *checksum) {
  CF_TRY(writer_usable(w));
  double bytes = WRITER_ITEM_BYTES + (dset != NULL ? (double)strlen(dset) : 0.0);
  double values = sizeof(float);
  for (int i = 0; i < ndim && i < CF_IO_MAXDIM && shape != NULL; i++)
    values *= shape[i] > 0 ? (double)shape[i] : 0.0;
  CF_TRY(writer_use(w, bytes + values));
  /* fault site h5_write (fault.h), agreed first: every rank stops before the collective create */
  cf_status st = cf_agree(w->comm, cf_fault_point("h5_write"));
  if (st == CF_OK) st = cf_agree(w->comm, put_body(w, dset, x, ndim, shape, checksum));
  if (st != CF_OK) w->failed = 1;
  return st;
}

cf_status cf_h5_writer_put(struct cf_h5_writer *w, const char *dset, const float *x, int ndim,
                           const int64_t *shape) {
  CF_TRY(cf_io_writer_put_sum(w, dset, x, ndim, shape, NULL));
  return CF_OK;
}

static cf_status writer_finish_attr(struct cf_h5_writer *w, cf_status st) {
  st = cf_agree(w->comm, st);
  if (st != CF_OK) w->failed = 1;
  return st;
}

cf_status cf_h5_writer_attr(struct cf_h5_writer *w, const char *key, const char *value) {
  CF_TRY(writer_usable(w));
  cf_status st = CF_OK;
  if (key == NULL || key[0] == '\0' || value == NULL)
    st = cf_err(CF_EINVAL, "empty attribute key or value for '%s'", w->path);
  else /* (a large value goes to dense storage: a heap and its index, twice its size, about) */
    CF_TRY(writer_use(w, 256.0 + (double)strlen(key) + 2.0 * (double)strlen(value)));
  if (st == CF_OK) st = cf_io_attr_put_str((hid_t)w->file, key, value, w->tmp);
  return writer_finish_attr(w, st);
}

cf_status cf_io_writer_attr_i64(struct cf_h5_writer *w, const char *key, int64_t value) {
  CF_TRY(writer_usable(w));
  return writer_finish_attr(w, cf_io_attr_put_i64((hid_t)w->file, key, value, w->tmp));
}

cf_status cf_io_writer_attr_u64(struct cf_h5_writer *w, const char *key, uint64_t value) {
  CF_TRY(writer_usable(w));
  return writer_finish_attr(w, cf_io_attr_put_u64((hid_t)w->file, key, value, w->tmp));
}

/* Local (rank 0): fsync the closed temporary file, rename it, fsync the directory. */
static cf_status publish_local(const struct cf_h5_writer *w) {
  CF_TRY(cf_io_fsync_file(w->tmp));
  if (w->rename_fault != NULL) CF_TRY(cf_fault_point(w->rename_fault));
  CF_CHECK(rename(w->tmp, w->path) == 0, CF_EIO, "cannot rename '%s' to '%s': %s", w->tmp, w->path,
           strerror(errno));
  char dir[CF_H5_PATH_MAX];
  cf_io_dirname(w->path, dir, sizeof dir);
  CF_TRY(cf_io_fsync_dir(dir));
  return CF_OK;
}

cf_status cf_h5_writer_commit(struct cf_h5_writer *w) {
  if (w->failed || w->file < 0) {
    cf_h5_writer_abort(w);
    return cf_err(CF_EIO, "write of '%s' abandoned after an earlier failure", w->path);
  }
  char why[256];
  cf_status st = CF_OK;
  if (H5Fclose((hid_t)w->file) < 0)
    st = cf_err(CF_EIO, "cannot close '%s': %s", w->tmp, cf_io_h5_reason(why, sizeof why));
  w->file = -1;
  st = cf_agree(w->comm, st);
  if (w->rank == 0) {
    if (st == CF_OK) st = publish_local(w);
    if (st != CF_OK) unlink(w->tmp);
  }
  st = cf_agree(w->comm, st);
  w->failed = 1; /* committed or not, the writer is done */
  return st;
}

void cf_h5_writer_abort(struct cf_h5_writer *w) {
  if (w->file >= 0) H5Fclose((hid_t)w->file);
  w->file = -1;
  w->failed = 1;
  if (w->rank == 0 && w->tmp[0] != '\0') unlink(w->tmp);
  MPI_Barrier(w->comm);
}

cf_status cf_h5_write_points(MPI_Comm comm, const char *path, const char *dset, const float *x,
                             int64_t n, int64_t d, const char *const *attrs, int n_attrs) {
  CF_CHECK(n_attrs >= 0 && (n_attrs == 0 || attrs != NULL), CF_EINVAL,
           "bad attribute list for '%s' (%d pairs)", path ? path : "", n_attrs);
  CF_CHECK(n >= 1 && d >= 1, CF_EINVAL, "cannot write '%s': %lld x %lld points, expected n, D >= 1",
           path ? path : "", (long long)n, (long long)d);
  struct cf_h5_writer w;
  CF_TRY(cf_h5_writer_open(&w, comm, path));
  int64_t shape[2] = {n, d};
  cf_status st = cf_h5_writer_put(&w, dset, x, 2, shape);
  for (int i = 0; i < n_attrs && st == CF_OK; i++)
    st = cf_h5_writer_attr(&w, attrs[2 * i], attrs[2 * i + 1]);
  if (st == CF_OK) {
    st = cf_h5_writer_commit(&w);
  } else {
    cf_h5_writer_abort(&w);
  }
  CF_TRY(st);
  return CF_OK;
}

/* ---- reader ---- */

static const char *class_name(H5T_class_t c) {
  switch (c) {
  case H5T_INTEGER:
    return "integers";
  case H5T_FLOAT:
    return "floats";
  case H5T_STRING:
    return "strings";
  case H5T_BITFIELD:
    return "bitfields";
  case H5T_OPAQUE:
    return "opaque data";
  case H5T_COMPOUND:
    return "compound records";
  case H5T_REFERENCE:
    return "references";
  case H5T_ENUM:
    return "enums";
  case H5T_VLEN:
    return "variable-length data";
  case H5T_ARRAY:
    return "arrays";
  default:
    return "an unknown type";
  }
}

/* Local. The first NaN/Inf (or float32 overflow, for float64 input) in rows [lo, hi). */
static cf_status check_values(const float *x, const double *xd, int64_t lo, int64_t hi, int64_t d,
                              const char *path, const char *dset) {
  for (int64_t i = 0; i < (hi - lo) * d; i++) {
    double v = xd ? xd[i] : (double)x[i];
    long long row = (long long)(lo + i / d), col = (long long)(i % d);
    if (isnan(v))
      return cf_err(CF_ECORRUPT, "'%s' %s row %lld column %lld is NaN", path, dset, row, col);
    if (isinf(v))
      return cf_err(CF_ECORRUPT, "'%s' %s row %lld column %lld is %sInf", path, dset, row, col,
                    v < 0 ? "-" : "");
    if (xd && fabs(v) > 3.4028234663852886e38)
      return cf_err(CF_ECORRUPT, "'%s' %s row %lld column %lld is %g, outside the float32 range",
                    path, dset, row, col, v);
  }
  return CF_OK;
}

/* Collective. Validate the dataset (identical on all ranks) and report its shape and
 * whether it is stored with more than 4 bytes per value. */
static cf_status inspect_points(hid_t fid, hid_t did, const char *path, const char *dset,
                                int64_t expect_d, int vec, hsize_t *dims, int *wide) {
  const char *want = vec ? "expected a 1-D float array" : "expected an n x D float array";
  hid_t ty = H5Dget_type(did), sp = H5Dget_space(did), dcpl = H5Dget_create_plist(did);
  cf_status st = CF_OK;
  if (ty < 0 || sp < 0 || dcpl < 0) {
    char why[256];
    st = cf_err(CF_ECORRUPT, "'%s' %s cannot be inspected (%s)", path, dset,
                cf_io_h5_reason(why, sizeof why));
    goto done;
  }
  H5T_class_t cls = H5Tget_class(ty);
  if (cls != H5T_FLOAT) {
    st = cf_err(CF_ECORRUPT, "'%s' %s holds %s, %s", path, dset, class_name(cls), want);
    goto done;
  }
  *wide = H5Tget_size(ty) > 4;
  int nd = H5Sget_simple_extent_ndims(sp);
  if (nd != (vec ? 1 : 2)) {
    st = cf_err(CF_ECORRUPT, "'%s' %s is %d-D, %s", path, dset, nd, want);
    goto done;
  }
  H5Sget_simple_extent_dims(sp, dims, NULL);
  if (vec) dims[1] = 1; /* a vector reads as one column */
  if (dims[0] == 0 || dims[1] == 0) {
    st = cf_err(CF_ECORRUPT, "'%s' %s is empty (%llu x %llu), %s with n, D > 0", path, dset,
                (unsigned long long)dims[0], (unsigned long long)dims[1], want);
    goto done;
  }
  if (vec && expect_d > 0 && (int64_t)dims[0] != expect_d) {
    st = cf_err(CF_ECORRUPT, "'%s' %s has %llu values, expected %lld", path, dset,
                (unsigned long long)dims[0], (long long)expect_d);
    goto done;
  }
  if (!vec && expect_d > 0 && (int64_t)dims[1] != expect_d) {
    st = cf_err(CF_ECORRUPT, "'%s' %s has %llu columns, expected %lld", path, dset,
                (unsigned long long)dims[1], (long long)expect_d);
    goto done;
  }
  /* Bound the allocation by the file (a compressed dataset by its stored chunks); an extent
   * whose size overflows is named with the file */
  st = cf_io_check_dset(did, path, dset, NULL);
  if (st != CF_OK) goto done;
  size_t bytes;
  if (cf_mul_size(&bytes, (size_t)dims[0], (size_t)dims[1], dset) != CF_OK ||
      cf_mul_size(&bytes, bytes, H5Tget_size(ty), dset) != CF_OK) {
    st = CF_ECORRUPT;
    goto done;
  }
  st = cf_io_check_backed(fid, did, bytes, path, dset);
done:
  if (dcpl >= 0) H5Pclose(dcpl);
  if (sp >= 0) H5Sclose(sp);
  if (ty >= 0) H5Tclose(ty);
  return st;
}

static cf_status read_points_open(MPI_Comm comm, hid_t fid, const char *path, const char *dset,
                                  int64_t expect_d, int vec, float **x, int64_t *n, int64_t *d) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  cf_status st = CF_OK;
  hid_t did = -1;
  double *xd = NULL;
  int64_t rows = 0, cols = 0, lo = 0, hi = 0;
  const char *want = vec ? "a 1-D float array" : "an n x D float array";
  if (H5Lexists(fid, dset, H5P_DEFAULT) <= 0) {
    st = cf_err(CF_ECORRUPT, "'%s' has no dataset '%s' (expected %s)", path, dset, want);
  } else {
    did = H5Dopen2(fid, dset, H5P_DEFAULT);
    if (did < 0)
      st = cf_err(CF_ECORRUPT, "'%s' %s is not a dataset (expected %s)", path, dset, want);
  }
  hsize_t dims[2] = {0, 0};
  int wide = 0;
  if (st == CF_OK) st = inspect_points(fid, did, path, dset, expect_d, vec, dims, &wide);
  if (st == CF_OK) {
    size_t bytes;
    st = cf_io_check_alloc((uint64_t)dims[0] * dims[1], sizeof(float), path, dset, &bytes);
    if (st == CF_OK) st = cf_alloc((void **)x, bytes, "point set");
  }
  st = cf_agree(comm, st);
  if (st != CF_OK) goto done;

  rows = (int64_t)dims[0];
  cols = (int64_t)dims[1];
  cf_io_row_range(rows, rank, size, &lo, &hi);
  if (wide)
    st = cf_alloc((void **)&xd, (size_t)((hi - lo) * cols + 1) * sizeof(double), "float64 rows");
  st = cf_agree(comm, st);
  if (st != CF_OK) goto done;
  if (wide) {
    st = cf_io_read_rows(did, vec ? 1 : 2, dims, lo, hi, H5T_NATIVE_DOUBLE, xd, path, dset);
    if (st == CF_OK) st = check_values(NULL, xd, lo, hi, cols, path, dset);
    for (int64_t i = 0; st == CF_OK && i < (hi - lo) * cols; i++)
      (*x)[lo * cols + i] = (float)xd[i];
  } else {
    st = cf_io_read_rows(did, vec ? 1 : 2, dims, lo, hi, H5T_NATIVE_FLOAT, *x + lo * cols, path,
                         dset);
    if (st == CF_OK) st = check_values(*x + lo * cols, NULL, lo, hi, cols, path, dset);
  }
  st = cf_agree(comm, st);
  if (st == CF_OK) st = cf_agree(comm, cf_io_allgather_rows(comm, *x, rows, cols, dset));
  if (st == CF_OK) {
    *n = rows;
    *d = cols;
  }
done:
  cf_free((void **)&xd);
  if (did >= 0) H5Dclose(did);
  return st;
}

cf_status cf_h5_read_points(MPI_Comm comm, const char *path, const char *dset, int64_t expect_d,
                            float **x, int64_t *n, int64_t *d) {
  cf_io_h5_quiet();
  *x = NULL;
  *n = *d = 0;
  CF_CHECK(dset != NULL && dset[0] != '\0', CF_EINVAL, "empty dataset name for '%s'",
           path ? path : "");
  hid_t fid;
  CF_TRY(cf_io_open_read(comm, path, &fid));
  cf_status st = read_points_open(comm, fid, path, dset, expect_d, 0, x, n, d);
  H5Fclose(fid);
  if (st != CF_OK) {
    cf_free((void **)x);
    *n = *d = 0;
  }
  CF_TRY(st);
  return CF_OK;
}

cf_status cf_h5_read_vector(MPI_Comm comm, const char *path, const char *dset, int64_t expect_n,
                            float **v, int64_t *n) {
  cf_io_h5_quiet();
  *v = NULL;
  *n = 0;
  CF_CHECK(dset != NULL && dset[0] != '\0', CF_EINVAL, "empty dataset name for '%s'",
           path ? path : "");
  hid_t fid;
  CF_TRY(cf_io_open_read(comm, path, &fid));
  int64_t one = 0;
  cf_status st = read_points_open(comm, fid, path, dset, expect_n, 1, v, n, &one);
  H5Fclose(fid);
  if (st != CF_OK) {
    cf_free((void **)v);
    *n = 0;
  }
  return st;
}
