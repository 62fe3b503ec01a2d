/* h5util.c: private helpers of the io layer (see h5util.h): HDF5 error capture, status
 * agreement across ranks, input checks, row-range and block hyperslab transfers, float32
 * dataset creation, attributes, fsync of files and directories. */
#include "io/h5util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"

void cf_io_h5_quiet(void) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

struct reason_ctx {
  char *buf;
  size_t cap;
  int got;
};

static herr_t reason_cb(unsigned n, const H5E_error2_t *e, void *data) {
  struct reason_ctx *c = data;
  if (!c->got && e->desc != NULL && e->desc[0] != '\0') {
    snprintf(c->buf, c->cap, "%s", e->desc);
    c->got = 1;
  }
  return 0;
}

const char *cf_io_h5_reason(char *buf, size_t cap) {
  struct reason_ctx c = {buf, cap, 0};
  buf[0] = '\0';
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, reason_cb, &c);
  if (!c.got) snprintf(buf, cap, "no detail from HDF5");
  for (char *p = buf; *p != '\0'; p++) /* one line: some descriptions hold a newline */
    if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
  return buf;
}

/* Local (rank 0): is `path` a readable regular HDF5 file? */
static cf_status check_input_local(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) {
    if (errno == ENOENT) return cf_err(CF_EIO, "cannot open '%s': no such file", path);
    return cf_err(CF_EIO, "cannot open '%s': %s", path, strerror(errno));
  }
  if (S_ISDIR(sb.st_mode))
    return cf_err(CF_EIO, "'%s' is a directory, expected an HDF5 file", path);
  if (!S_ISREG(sb.st_mode)) return cf_err(CF_EIO, "'%s' is not a regular file", path);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return cf_err(CF_EIO, "cannot open '%s': %s", path, strerror(errno));
  close(fd);
  htri_t is = H5Fis_hdf5(path);
  if (is == 0) return cf_err(CF_ECORRUPT, "'%s' is not an HDF5 file", path);
  if (is < 0) {
    char why[256];
    return cf_err(CF_ECORRUPT, "'%s' is not a readable HDF5 file (%s)", path,
                  cf_io_h5_reason(why, sizeof why));
  }
  return CF_OK;
}

cf_status cf_io_check_input(MPI_Comm comm, const char *path) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  cf_status st = CF_OK;
  if (path == NULL || path[0] == '\0')
    st = cf_err(CF_EINVAL, "input file name is empty");
  else if (rank == 0)
    st = check_input_local(path);
  return cf_agree(comm, st);
}

hid_t cf_io_fapl(MPI_Comm comm) {
  /* MPI-IO gets a copy of comm without its process topology: Open MPI 4.1's OMPIO corrupted
   * collective writes on a 4-D Cartesian communicator (the training grid) of 3 ranks, losing
   * parts of some ranks' data, while the same writes on a plain communicator are correct.
   * HDF5 duplicates the communicator it is given, so ours is freed at once. */
  int topo = MPI_UNDEFINED, rank = 0;
  MPI_Comm plain = MPI_COMM_NULL;
  if (MPI_Topo_test(comm, &topo) != MPI_SUCCESS) return -1;
  if (topo != MPI_UNDEFINED && (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS ||
                                MPI_Comm_split(comm, 0, rank, &plain) != MPI_SUCCESS))
    return -1;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0 &&
      (H5Pset_fapl_mpio(fapl, plain != MPI_COMM_NULL ? plain : comm, MPI_INFO_NULL) < 0 ||
       H5Pset_all_coll_metadata_ops(fapl, 1) < 0 || H5Pset_coll_metadata_write(fapl, 1) < 0 ||
       H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0)) {
    H5Pclose(fapl);
    fapl = -1;
  }
  if (plain != MPI_COMM_NULL) MPI_Comm_free(&plain);
  return fapl;
}

void cf_io_superblock(const char *path, int *version, int *flags) {
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  *version = *flags = -1;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return;
  for (off_t off = 0; off <= 65536; off = off == 0 ? 512 : 2 * off) {
    unsigned char b[12];
    if (pread(fd, b, sizeof b, off) != (ssize_t)sizeof b) break;
    if (memcmp(b, sig, sizeof sig) != 0) continue;
    *version = b[8];
    if (b[8] >= 2) *flags = b[11];
    break;
  }
  close(fd);
}

/* The error for a file HDF5 would not open under the 1.8 format bounds: a clear word when it is
 * in a newer format (superblock version 3: libver "v110" or "latest", or a SWMR writer). */
static cf_status open_error(const char *path, const char *why) {
  int v, flags;
  cf_io_superblock(path, &v, &flags);
  if (v >= 3)
    return cf_err(CF_ECORRUPT,
                  "cannot read '%s': it is in a newer HDF5 file format (superblock version %d: "
                  "written with libver 'v110' or 'latest', or by a SWMR writer, perhaps one that "
                  "did not close it) and calmflow reads the 1.8 format; write it again with "
                  "h5py's default libver ('earliest') or libver=('earliest', 'v108') (HDF5: %s)",
                  path, v, why);
  return cf_err(CF_ECORRUPT, "cannot read '%s': HDF5 cannot open it (%s); %s", path, why,
                v < 0 ? "not an HDF5 file (no HDF5 signature)" : "truncated or corrupt?");
}

cf_status cf_io_open_read(MPI_Comm comm, const char *path, hid_t *fid) {
  *fid = -1;
  CF_TRY(cf_io_check_input(comm, path));
  cf_status st = CF_OK;
  char why[256];
  hid_t fapl = cf_io_fapl(comm);
  if (fapl < 0) {
    st = cf_err(CF_EIO, "cannot set up MPI-IO access for '%s': %s", path,
                cf_io_h5_reason(why, sizeof why));
  } else {
    *fid = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (*fid < 0) st = open_error(path, cf_io_h5_reason(why, sizeof why));
    H5Pclose(fapl);
  }
  st = cf_agree(comm, st);
  if (st != CF_OK && *fid >= 0) {
    H5Fclose(*fid);
    *fid = -1;
  }
  return st;
}

cf_status cf_io_check_backed(hid_t fid, hid_t did, size_t bytes, const char *path,
                             const char *what) {
  hid_t dcpl = H5Dget_create_plist(did);
  int nfilters = dcpl >= 0 ? H5Pget_nfilters(dcpl) : -1;
  if (dcpl >= 0) H5Pclose(dcpl);
  CF_CHECK(nfilters >= 0, CF_ECORRUPT, "'%s' %s: its storage cannot be inspected", path, what);
  if (nfilters == 0) {
    hsize_t fsize = 0;
    if (H5Fget_filesize(fid, &fsize) < 0) return CF_OK; /* then only the allocation decides */
    CF_CHECK(bytes <= fsize, CF_ECORRUPT,
             "'%s' %s claims %zu bytes of values, more than the file holds (%llu bytes)", path,
             what, bytes, (unsigned long long)fsize);
    return CF_OK;
  }
  /* compressed: every chunk must be in the file, and deflate (zlib) cannot expand more than
   * 1032 to 1 */
  H5D_space_status_t ss = H5D_SPACE_STATUS_ERROR;
  CF_CHECK(H5Dget_space_status(did, &ss) >= 0 && ss == H5D_SPACE_STATUS_ALLOCATED, CF_ECORRUPT,
           "'%s' %s is compressed but not all of its chunks are written (%zu bytes of values "
           "claimed)",
           path, what, bytes);
  hsize_t stored = H5Dget_storage_size(did);
  CF_CHECK(bytes / 1032 <= stored, CF_ECORRUPT,
           "'%s' %s claims %zu bytes of values but stores %llu compressed bytes (more than "
           "deflate's 1032:1)",
           path, what, bytes, (unsigned long long)stored);
  return CF_OK;
}

size_t cf_io_alloc_cap(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return (size_t)1 << 40; /* unknown: 1 TiB */
  if ((unsigned long)pages > SIZE_MAX / (unsigned long)page) return SIZE_MAX;
  return (size_t)pages * (size_t)page;
}

cf_status cf_io_check_alloc(uint64_t count, size_t elem, const char *path, const char *what,
                            size_t *bytes) {
  *bytes = 0;
  CF_CHECK(count <= SIZE_MAX && (elem == 0 || count <= SIZE_MAX / elem), CF_ECORRUPT,
           "'%s' %s: %llu values of %zu bytes overflow the address space", path, what,
           (unsigned long long)count, elem);
  const size_t b = (size_t)count * elem, cap = cf_io_alloc_cap();
  CF_CHECK(b <= cap, CF_ECORRUPT,
           "'%s' %s: %llu values need %zu bytes, more than this machine's memory (%zu bytes)", path,
           what, (unsigned long long)count, b, cap);
  *bytes = b;
  return CF_OK;
}

cf_status cf_io_check_dset(hid_t did, const char *path, const char *what, uint64_t *count) {
  hid_t sp = H5Dget_space(did), ty = H5Dget_type(did), fid = H5Iget_file_id(did);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  hsize_t dims[CF_IO_MAXDIM];
  size_t elem = ty >= 0 ? H5Tget_size(ty) : 0;
  if (nd >= 0 && nd <= CF_IO_MAXDIM) H5Sget_simple_extent_dims(sp, dims, NULL);
  if (sp >= 0) H5Sclose(sp);
  if (ty >= 0) H5Tclose(ty);
  cf_status st = CF_OK;
  uint64_t n = 1;
  if (nd < 0 || nd > CF_IO_MAXDIM || elem == 0 || fid < 0)
    st = cf_err(CF_ECORRUPT, "'%s' %s: its dataspace or type cannot be read (%d dimensions)", path,
                what, nd);
  for (int i = 0; st == CF_OK && i < nd; i++) {
    if (dims[i] != 0 && n > UINT64_MAX / dims[i]) {
      char ext[200];
      size_t used = 0;
      for (int k = 0; k < nd && used < sizeof ext; k++) {
        int w = snprintf(ext + used, sizeof ext - used, "%s%llu", k ? " x " : "",
                         (unsigned long long)dims[k]);
        if (w < 0) break;
        used += (size_t)w;
      }
      st = cf_err(CF_ECORRUPT, "'%s' %s claims %s values: the count overflows", path, what, ext);
    }
    n *= dims[i];
  }
  if (st == CF_OK && n > SIZE_MAX / elem)
    st = cf_err(CF_ECORRUPT, "'%s' %s claims %llu values of %zu bytes: the size overflows", path,
                what, (unsigned long long)n, elem);
  if (st == CF_OK) st = cf_io_check_backed(fid, did, (size_t)n * elem, path, what);
  if (fid >= 0) H5Fclose(fid);
  if (st == CF_OK && count) *count = n;
  return st;
}

void cf_io_row_range(int64_t rows, int rank, int size, int64_t *lo, int64_t *hi) {
  *lo = rows / size * rank + (rows % size) * rank / size;
  *hi = rows / size * (rank + 1) + (rows % size) * (rank + 1) / size;
}

/* Select the block start/count of the file space and a matching memory space (count[0] == 0:
 * none of either). Returns CF_EIO without a message on failure. */
static cf_status slab_spaces(hid_t dset, int ndim, const hsize_t *start, const hsize_t *count,
                             hid_t *fs, hid_t *ms) {
  hsize_t one[CF_IO_MAXDIM];
  for (int i = 0; i < ndim; i++)
    one[i] = 1;
  *ms = -1;
  *fs = H5Dget_space(dset);
  if (*fs < 0) return CF_EIO;
  herr_t e;
  if (count[0] > 0) {
    e = H5Sselect_hyperslab(*fs, H5S_SELECT_SET, start, NULL, count, NULL);
    *ms = H5Screate_simple(ndim, count, NULL);
  } else {
    e = H5Sselect_none(*fs);
    *ms = H5Screate_simple(ndim, one, NULL);
    if (*ms >= 0 && H5Sselect_none(*ms) < 0) e = -1;
  }
  if (e < 0 || *ms < 0) return CF_EIO;
  return CF_OK;
}

/* Collective. The transfer itself; CF_EIO without a message on failure. */
static cf_status transfer(int write, hid_t dset, int ndim, const hsize_t *start,
                          const hsize_t *count, hid_t memtype, void *buf) {
  hid_t fs = -1, ms = -1, dxpl = -1;
  cf_status st = slab_spaces(dset, ndim, start, count, &fs, &ms);
  float dummy[1] = {0};
  if (st == CF_OK) {
    dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0) st = CF_EIO;
  }
  if (st == CF_OK) {
    void *b = count[0] > 0 ? buf : (void *)dummy;
    herr_t e =
        write ? H5Dwrite(dset, memtype, ms, fs, dxpl, b) : H5Dread(dset, memtype, ms, fs, dxpl, b);
    if (e < 0) st = CF_EIO;
  }
  if (dxpl >= 0) H5Pclose(dxpl);
  if (ms >= 0) H5Sclose(ms);
  if (fs >= 0) H5Sclose(fs);
  return st;
}

static cf_status transfer_rows(int write, hid_t dset, int ndim, const hsize_t *dims, int64_t lo,
                               int64_t hi, hid_t memtype, void *buf, const char *path,
                               const char *what) {
  hsize_t start[CF_IO_MAXDIM] = {0}, count[CF_IO_MAXDIM];
  for (int i = 0; i < ndim; i++)
    count[i] = dims[i];
  start[0] = (hsize_t)lo;
  count[0] = (hsize_t)(hi - lo);
  cf_status st = transfer(write, dset, ndim, start, count, memtype, buf);
  char why[256];
  if (st != CF_OK)
    st = cf_err(write ? CF_EIO : CF_ECORRUPT, "cannot %s %s rows %lld..%lld of '%s': %s",
                write ? "write" : "read", what, (long long)lo, (long long)hi, path,
                cf_io_h5_reason(why, sizeof why));
  return st;
}

cf_status cf_io_read_rows(hid_t dset, int ndim, const hsize_t *dims, int64_t lo, int64_t hi,
                          hid_t memtype, void *buf, const char *path, const char *what) {
  return transfer_rows(0, dset, ndim, dims, lo, hi, memtype, buf, path, what);
}

cf_status cf_io_write_rows(hid_t dset, int ndim, const hsize_t *dims, int64_t lo, int64_t hi,
                           const float *buf, const char *path, const char *what) {
  return transfer_rows(1, dset, ndim, dims, lo, hi, H5T_NATIVE_FLOAT, (void *)buf, path, what);
}

static cf_status transfer_block(int write, hid_t dset, int ndim, const int64_t *start,
                                const int64_t *count, hid_t memtype, void *buf, const char *path,
                                const char *what) {
  CF_CHECK(ndim >= 1 && ndim <= CF_IO_MAXDIM, CF_EINVAL, "%s of '%s': %d dimensions", what, path,
           ndim);
  hsize_t s[CF_IO_MAXDIM] = {0}, c[CF_IO_MAXDIM] = {0};
  int empty = 0;
  for (int i = 0; i < ndim; i++) {
    s[i] = (hsize_t)start[i];
    c[i] = (hsize_t)count[i];
    if (count[i] <= 0) empty = 1;
  }
  if (empty) c[0] = 0;
  cf_status st = transfer(write, dset, ndim, s, c, memtype, buf);
  char why[256], at[160] = "";
  if (st != CF_OK) {
    size_t used = 0;
    for (int i = 0; i < ndim && used < sizeof at; i++) {
      int w = snprintf(at + used, sizeof at - used, "%s%lld..%lld", i ? ", " : "",
                       (long long)start[i], (long long)(start[i] + count[i]));
      if (w < 0) break;
      used += (size_t)w;
    }
    st = cf_err(write ? CF_EIO : CF_ECORRUPT, "cannot %s %s block [%s] of '%s': %s",
                write ? "write" : "read", what, at, path, cf_io_h5_reason(why, sizeof why));
  }
  return st;
}

cf_status cf_io_read_block(hid_t dset, int ndim, const int64_t *start, const int64_t *count,
                           hid_t memtype, void *buf, const char *path, const char *what) {
  return transfer_block(0, dset, ndim, start, count, memtype, buf, path, what);
}

cf_status cf_io_write_block(hid_t dset, int ndim, const int64_t *start, const int64_t *count,
                            const float *buf, const char *path, const char *what) {
  return transfer_block(1, dset, ndim, start, count, H5T_NATIVE_FLOAT, (void *)buf, path, what);
}

cf_status cf_io_create_f32(hid_t fid, const char *dset, int ndim, const int64_t *shape,
                           const char *path, hid_t *did) {
  *did = -1;
  CF_CHECK(ndim >= 1 && ndim <= CF_IO_MAXDIM, CF_EINVAL,
           "dataset '%s' of '%s' has %d dimensions, expected 1..%d", dset, path, ndim,
           CF_IO_MAXDIM);
  hsize_t dims[CF_IO_MAXDIM];
  for (int i = 0; i < ndim; i++) {
    CF_CHECK(shape[i] >= 1, CF_EINVAL,
             "dataset '%s' of '%s' has dimension %d = %lld, expected >= 1", dset, path, i,
             (long long)shape[i]);
    dims[i] = (hsize_t)shape[i];
  }
  char why[256];
  cf_status st = CF_OK;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hid_t sp = H5Screate_simple(ndim, dims, NULL);
  if (lcpl < 0 || dcpl < 0 || sp < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0)
    st = cf_err(CF_EIO, "cannot set up dataset '%s' of '%s': %s", dset, path,
                cf_io_h5_reason(why, sizeof why));
  if (st == CF_OK) {
    *did = H5Dcreate2(fid, dset, H5T_IEEE_F32LE, sp, lcpl, dcpl, H5P_DEFAULT);
    if (*did < 0)
      st = cf_err(CF_EIO, "cannot create dataset '%s' in '%s': %s", dset, path,
                  cf_io_h5_reason(why, sizeof why));
  }
  if (sp >= 0) H5Sclose(sp);
  if (dcpl >= 0) H5Pclose(dcpl);
  if (lcpl >= 0) H5Pclose(lcpl);
  return st;
}

cf_status cf_io_allgather_rows(MPI_Comm comm, float *buf, int64_t rows, int64_t rowlen,
                               const char *what) {
  int size;
  MPI_Comm_size(comm, &size);
  if (size == 1) return CF_OK;
  size_t total;
  CF_TRY(cf_mul_size(&total, (size_t)rows, (size_t)rowlen, what));
  int64_t *counts = NULL;
  CF_TRY(cf_alloc((void **)&counts, 2 * (size_t)size * sizeof(int64_t), "row gather counts"));
  int64_t *displs = counts + size;
  int rank;
  MPI_Comm_rank(comm, &rank);
  for (int r = 0; r < size; r++) { /* in floats: any size (mpichunk.h splits what is large) */
    int64_t lo, hi;
    cf_io_row_range(rows, r, size, &lo, &hi);
    counts[r] = (hi - lo) * rowlen;
    displs[r] = lo * rowlen;
  }
  int e =
      cf_mpi_allgatherv(MPI_IN_PLACE, (size_t)counts[rank], buf, counts, displs, MPI_FLOAT, comm);
  cf_free((void **)&counts);
  if (e != MPI_SUCCESS) return cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Allgatherv of rows");
  return CF_OK;
}

/* ---- attributes ---- */

static cf_status attr_put(hid_t loc, const char *key, hid_t ftype, hid_t mtype, const void *v,
                          const char *file) {
  char why[256];
  cf_status st = CF_OK;
  if (H5Aexists(loc, key) > 0 && H5Adelete(loc, key) < 0) st = CF_EIO;
  hid_t sp = st == CF_OK ? H5Screate(H5S_SCALAR) : -1;
  hid_t a = sp >= 0 ? H5Acreate2(loc, key, ftype, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (a < 0 || H5Awrite(a, mtype, v) < 0) st = CF_EIO;
  if (st != CF_OK)
    st = cf_err(CF_EIO, "cannot write attribute '%s' to '%s': %s", key, file,
                cf_io_h5_reason(why, sizeof why));
  if (a >= 0) H5Aclose(a);
  if (sp >= 0) H5Sclose(sp);
  return st;
}

cf_status cf_io_attr_put_str(hid_t loc, const char *key, const char *value, const char *file) {
  hid_t t = H5Tcopy(H5T_C_S1);
  CF_CHECK(t >= 0, CF_EIO, "cannot make a string type for attribute '%s'", key);
  size_t len = strlen(value);
  H5Tset_size(t, len + 1);
  H5Tset_strpad(t, H5T_STR_NULLTERM);
  cf_status st = attr_put(loc, key, t, t, value, file);
  H5Tclose(t);
  return st;
}

cf_status cf_io_attr_put_i64(hid_t loc, const char *key, int64_t value, const char *file) {
  return attr_put(loc, key, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, file);
}

cf_status cf_io_attr_put_u64(hid_t loc, const char *key, uint64_t value, const char *file) {
  return attr_put(loc, key, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value, file);
}

/* Open attribute key of loc, check it exists, holds one element, and has class want. */
static cf_status attr_open(hid_t loc, const char *key, const char *file, const char *owner,
                           H5T_class_t want, const char *want_name, hid_t *a, hid_t *ft) {
  *a = -1;
  *ft = -1;
  CF_CHECK(H5Aexists(loc, key) > 0, CF_ECORRUPT, "'%s' has no %s '%s'", file, owner, key);
  *a = H5Aopen(loc, key, H5P_DEFAULT);
  if (*a < 0) return cf_err(CF_ECORRUPT, "'%s': cannot open %s '%s'", file, owner, key);
  *ft = H5Aget_type(*a);
  hid_t sp = H5Aget_space(*a);
  hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  if (sp >= 0) H5Sclose(sp);
  if (*ft < 0 || H5Tget_class(*ft) != want || np != 1) {
    if (*ft >= 0) H5Tclose(*ft);
    H5Aclose(*a);
    *a = *ft = -1;
    return cf_err(CF_ECORRUPT, "'%s' %s '%s' is not a single %s", file, owner, key, want_name);
  }
  return CF_OK;
}

cf_status cf_io_attr_get_str(hid_t loc, const char *key, const char *file, const char *owner,
                             size_t max_bytes, char **out) {
  *out = NULL;
  hid_t a, ft;
  CF_TRY(attr_open(loc, key, file, owner, H5T_STRING, "string", &a, &ft));
  cf_status st = CF_OK;
  hid_t mt = H5Tcopy(H5T_C_S1);
  if (H5Tis_variable_str(ft) > 0) {
    char *s = NULL;
    if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Aread(a, mt, &s) < 0) {
      st = cf_err(CF_ECORRUPT, "'%s': cannot read %s '%s'", file, owner, key);
    } else {
      size_t len = s ? strlen(s) : 0;
      if (len >= max_bytes)
        st = cf_err(CF_ECORRUPT, "'%s' %s '%s' is too long (%zu bytes)", file, owner, key, len);
      else if ((st = cf_alloc((void **)out, len + 1, "string attribute")) == CF_OK && len)
        memcpy(*out, s, len);
      if (s) H5free_memory(s);
    }
  } else {
    size_t n = H5Tget_size(ft);
    if (n == 0 || n >= max_bytes) {
      st = cf_err(CF_ECORRUPT, "'%s' %s '%s' has a bad size (%zu bytes)", file, owner, key, n);
    } else if ((st = cf_alloc((void **)out, n + 1, "string attribute")) == CF_OK) {
      hid_t rt = H5Tcopy(ft);
      if (rt < 0 || H5Aread(a, rt, *out) < 0)
        st = cf_err(CF_ECORRUPT, "'%s': cannot read %s '%s'", file, owner, key);
      if (rt >= 0) H5Tclose(rt);
      if (st == CF_OK) (*out)[n] = '\0';
    }
  }
  if (mt >= 0) H5Tclose(mt);
  H5Tclose(ft);
  H5Aclose(a);
  if (st != CF_OK) cf_free((void **)out);
  return st;
}

static cf_status attr_get_int(hid_t loc, const char *key, const char *file, const char *owner,
                              hid_t mt, void *out) {
  hid_t a, ft;
  CF_TRY(attr_open(loc, key, file, owner, H5T_INTEGER, "integer", &a, &ft));
  cf_status st = CF_OK;
  if (H5Aread(a, mt, out) < 0)
    st = cf_err(CF_ECORRUPT, "'%s': cannot read %s '%s'", file, owner, key);
  H5Tclose(ft);
  H5Aclose(a);
  return st;
}

cf_status cf_io_attr_get_i64(hid_t loc, const char *key, const char *file, const char *owner,
                             int64_t *out) {
  return attr_get_int(loc, key, file, owner, H5T_NATIVE_INT64, out);
}

cf_status cf_io_attr_get_u64(hid_t loc, const char *key, const char *file, const char *owner,
                             uint64_t *out) {
  return attr_get_int(loc, key, file, owner, H5T_NATIVE_UINT64, out);
}

/* ---- disk space ---- */

cf_status cf_io_reserve(const char *path, int fd, double from, double to, const char *what) {
  if (from < 0) from = 0;
  if (to <= from) return CF_OK;
  int own = fd < 0;
  if (own) fd = open(path, O_WRONLY);
  int e = fd < 0 ? errno : posix_fallocate(fd, (off_t)from, (off_t)(to - from));
  if (own && fd >= 0) close(fd);
  CF_CHECK(e == 0, CF_EIO, "cannot write %s: no room on disk for its first %.2f MiB (%s)", what,
           to / 1048576.0, strerror(e));
  return CF_OK;
}

cf_status cf_io_trim_to_eoa(const char *path) {
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  unsigned char b[36];
  int fd = open(path, O_RDWR);
  cf_status st = CF_OK;
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    st = cf_err(CF_EIO, "cannot open '%s' to cut its reserved tail: %s", path, strerror(errno));
  } else if (pread(fd, b, sizeof b, 0) == (ssize_t)sizeof b && memcmp(b, sig, 8) == 0 &&
             (b[8] == 2 || b[8] == 3) && b[9] == 8) {
    /* superblock v2/v3: signature, version, sizes of offsets and lengths, flags, then the base,
     * extension and end-of-file addresses (8 bytes each, little-endian) */
    uint64_t base = 0, eoa = 0;
    for (int i = 7; i >= 0; i--) {
      base = base << 8 | b[12 + i];
      eoa = eoa << 8 | b[28 + i];
    }
    uint64_t end = base + eoa;
    if (base == 0 && end >= sizeof b && end < (uint64_t)sb.st_size &&
        ftruncate(fd, (off_t)end) != 0)
      st = cf_err(CF_EIO, "cannot cut '%s' to its %llu bytes: %s", path, (unsigned long long)end,
                  strerror(errno));
  }
  if (fd >= 0) close(fd);
  return st;
}

/* ---- durable rename steps ---- */

void cf_io_dirname(const char *path, char *out, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    snprintf(out, cap, ".");
  } else if (slash == path) {
    snprintf(out, cap, "/");
  } else {
    int len = (int)(slash - path);
    snprintf(out, cap, "%.*s", len, path);
  }
}

cf_status cf_io_fsync_file(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return cf_err(CF_EIO, "cannot open '%s' to fsync it: %s", path, strerror(errno));
  int e = fsync(fd);
  int saved = errno;
  close(fd);
  CF_CHECK(e == 0, CF_EIO, "fsync of '%s' failed: %s", path, strerror(saved));
  return CF_OK;
}

cf_status cf_io_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    return cf_err(CF_EIO, "cannot open directory '%s' to fsync it: %s", dir, strerror(errno));
  int e = fsync(fd);
  int saved = errno;
  close(fd);
  /* Some file systems refuse fsync on a directory (EINVAL); the rename is still done. */
  CF_CHECK(e == 0 || saved == EINVAL, CF_EIO, "fsync of directory '%s' failed: %s", dir,
           strerror(saved));
  return CF_OK;
}
