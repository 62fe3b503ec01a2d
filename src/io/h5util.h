/* h5util.h: private helpers of the io layer: HDF5 error capture, agreement of a status
 * across ranks, opening input files, row-range and block hyperslab transfers, float32 dataset
 * creation, attributes, and the durable-rename steps. Not a public header (only src/io/ includes
 * it). */
#ifndef CALMFLOW_IO_H5UTIL_H
#define CALMFLOW_IO_H5UTIL_H

#include <hdf5.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/h5io.h"

#define CF_IO_MAXDIM 8

/* Local. Switch off HDF5's automatic error printing (called at every public entry). */
void cf_io_h5_quiet(void);
/* Local. The innermost description on the HDF5 error stack, into buf; returns buf. */
const char *cf_io_h5_reason(char *buf, size_t cap);
/* Local. The superblock version of HDF5 file `path` (the byte after the signature, found at
 * byte 0, 512, 1024, ... up to 64 KiB) and, for versions 2 and 3, its file consistency flags
 * (HDF5 file format specification); both -1 when no signature is found. */
void cf_io_superblock(const char *path, int *version, int *flags);

/* Collective on comm. Rank 0 checks that `path` is an existing, readable regular HDF5 file
 * ("cannot open 'f': no such file", "'f' is not an HDF5 file"); agreed. */
cf_status cf_io_check_input(MPI_Comm comm, const char *path);
/* Collective on comm. cf_io_check_input, then open read-only with the MPI-IO driver. */
cf_status cf_io_open_read(MPI_Comm comm, const char *path, hid_t *fid);
/* File access properties: MPI-IO on comm (on a topology-free copy when comm has a process
 * topology, e.g. a Cartesian grid), collective metadata, v1.8 format bounds. Local for a plain
 * comm; collective on comm (MPI_Comm_split) for one with a topology. -1 on failure. */
hid_t cf_io_fapl(MPI_Comm comm);

/* Local (metadata reads). Are the `bytes` bytes of values that dataset did of file fid claims
 * (its extent times its element size) backed by the file, so that a reader may allocate them?
 * Unfiltered: at most the file's size. Filtered (compressed): every chunk written, and at most
 * 1032 times the stored bytes (deflate's largest ratio). CF_ECORRUPT naming `what` of `path`
 * otherwise: a small file cannot make a reader allocate (and touch) gigabytes. */
cf_status cf_io_check_backed(hid_t fid, hid_t did, size_t bytes, const char *path,
                             const char *what);

/* Local. The most bytes one reader allocation may take for what a file claims: the machine's
 * physical memory (more cannot be read here, and touching it would wake the OOM killer). */
size_t cf_io_alloc_cap(void);
/* Local. *bytes = count x elem for an allocation sized by `what` of `path`: CF_ECORRUPT naming
 * both when the product overflows or exceeds cf_io_alloc_cap(). Call before the allocation. */
cf_status cf_io_check_alloc(uint64_t count, size_t elem, const char *path, const char *what,
                            size_t *bytes);
/* Local (metadata reads). Dataset did's extent as claimed by `path` (`what` names it): at most
 * CF_IO_MAXDIM dimensions, their product (*count, may be NULL) and its bytes in the file's
 * element type do not overflow, and the file backs those bytes (cf_io_check_backed).
 * CF_ECORRUPT naming the file and the dataset otherwise. Call before sizing anything by it. */
cf_status cf_io_check_dset(hid_t did, const char *path, const char *what, uint64_t *count);

/* Local. Rank r of R owns rows [r*rows/R, (r+1)*rows/R). */
void cf_io_row_range(int64_t rows, int rank, int size, int64_t *lo, int64_t *hi);
/* Collective (H5Dread/H5Dwrite). Transfer rows [lo, hi) of dataset dset (ndim dims) between
 * the file and buf (the slab (hi - lo, dims[1], ...), in memtype), collectively; lo == hi
 * takes part with an empty selection. `path` and `what` name the file and dataset. */
cf_status cf_io_read_rows(hid_t dset, int ndim, const hsize_t *dims, int64_t lo, int64_t hi,
                          hid_t memtype, void *buf, const char *path, const char *what);
cf_status cf_io_write_rows(hid_t dset, int ndim, const hsize_t *dims, int64_t lo, int64_t hi,
                           const float *buf, const char *path, const char *what);
/* Collective (H5Dread/H5Dwrite). Transfer the block at start[0..ndim-1] of extent
 * count[0..ndim-1] of dataset dset between the file and buf (the block, contiguous row-major,
 * in memtype), collectively; a block with any count <= 0 takes part with an empty selection.
 * Messages name `what` of `path` and the block's index ranges. */
cf_status cf_io_read_block(hid_t dset, int ndim, const int64_t *start, const int64_t *count,
                           hid_t memtype, void *buf, const char *path, const char *what);
cf_status cf_io_write_block(hid_t dset, int ndim, const int64_t *start, const int64_t *count,
                            const float *buf, const char *path, const char *what);
/* Collective (H5Dcreate2 in a file opened with the MPI-IO driver). Create the little-endian
 * float32 dataset `dset` of shape[0..ndim-1] (all >= 1) in fid: contiguous, never filled,
 * intermediate groups created; *did receives it (-1 on failure). `path` names the file. */
cf_status cf_io_create_f32(hid_t fid, const char *dset, int ndim, const int64_t *shape,
                           const char *path, hid_t *did);
/* Collective on comm. buf (rows, rowlen) holds this rank's cf_io_row_range rows; afterwards
 * every rank holds all rows (MPI_Allgatherv in place). */
cf_status cf_io_allgather_rows(MPI_Comm comm, float *buf, int64_t rows, int64_t rowlen,
                               const char *what);

/* Local. Attribute helpers on loc (file = root group, or a dataset); `file` names the file
 * in messages. Writes are collective in parallel HDF5 (identical arguments on all ranks). */
cf_status cf_io_attr_put_str(hid_t loc, const char *key, const char *value, const char *file);
cf_status cf_io_attr_put_i64(hid_t loc, const char *key, int64_t value, const char *file);
cf_status cf_io_attr_put_u64(hid_t loc, const char *key, uint64_t value, const char *file);
/* Read a string attribute (fixed or variable length) into a cf_alloc'd, NUL-terminated
 * buffer; max_bytes bounds its size. Missing -> CF_ECORRUPT "'file' is missing attribute". */
cf_status cf_io_attr_get_str(hid_t loc, const char *key, const char *file, const char *owner,
                             size_t max_bytes, char **out);
cf_status cf_io_attr_get_i64(hid_t loc, const char *key, const char *file, const char *owner,
                             int64_t *out);
cf_status cf_io_attr_get_u64(hid_t loc, const char *key, const char *file, const char *owner,
                             uint64_t *out);

/* Local. The directory part of path ("." when none) into out. */
void cf_io_dirname(const char *path, char *out, size_t cap);
/* Local. Reserve bytes [from, to) of the file `path` on disk with posix_fallocate (the blocks
 * not yet allocated are allocated, the contents are kept, the size grows to at least `to`;
 * the bytes before `from` are reserved already), through descriptor fd when fd >= 0, else by
 * opening path for writing. A full disk, a quota or a file-size limit then fails here, as CF_EIO
 * "cannot write WHAT: no room on disk for its first N MiB (reason)" (`what` names the file,
 * e.g. "'f.h5'"; N: to), before HDF5
 * holds data it would have to flush: in HDF5 1.10.8 a failed write-back leaves the file open with a
 * dangling ID (a failed H5Fclose), and the library crashes on it when it shuts down in MPI_Finalize
 * (HDFFV-11052, fixed upstream by HDFGroup/hdf5 pull request 2291). Reserve before HDF5 writes:
 * in the new file before HDF5 creates it over it (on a disk with no room at all HDF5 could not
 * even close an empty file) and again right after, before appending to a file. Closing with the
 * MPI-IO driver cuts the file to its real size; with the default (sec2) driver, cut the reserved
 * tail off after closing it (cf_io_trim_to_eoa). */
cf_status cf_io_reserve(const char *path, int fd, double from, double to, const char *what);
/* Local. Cut the closed HDF5 file `path` (superblock version 2 or 3, 8-byte addresses: what
 * calmflow writes) to the end-of-file address its superblock records, dropping a tail that
 * cf_io_reserve added and HDF5 did not use; a file HDF5 already cut, or any other superblock,
 * is left alone. CF_EIO naming the file when it cannot be read or cut. */
cf_status cf_io_trim_to_eoa(const char *path);
/* Local. fsync a file / a directory by name; CF_EIO naming it and errno on failure. */
cf_status cf_io_fsync_file(const char *path);
cf_status cf_io_fsync_dir(const char *dir);

/* Collective (writer internals shared with ckpt.c). Put with an optional uint64 "checksum"
 * attribute on the dataset; put an int64 / uint64 root attribute. */
cf_status cf_io_writer_put_sum(struct cf_h5_writer *w, const char *dset, const float *x, int ndim,
                               const int64_t *shape, const uint64_t *checksum);
cf_status cf_io_writer_attr_i64(struct cf_h5_writer *w, const char *key, int64_t value);
cf_status cf_io_writer_attr_u64(struct cf_h5_writer *w, const char *key, uint64_t value);

#endif
