/* h5io.h: point sets in parallel HDF5 files (data sets, samples).
 *
 * A point set is a 2-D dataset, by default "/x", of n rows (points) and D columns
 * (coordinates), float32 or float64 on disk, always float32 in memory. Files are opened
 * with the MPI-IO driver on the communicator the caller passes; every function here is
 * collective on that communicator and returns the same status on every rank (when one
 * rank fails, the others report its message).
 *
 * Writes are atomic: the file is built under "<path>.tmp.<pid of rank 0>", closed,
 * fsync'd and renamed over <path> (then the directory is fsync'd). On any failure the
 * temporary file is removed and <path> is left as it was.
 *
 * HDF5's own error printing is switched off (H5Eset_auto2); failures come back as one
 * cf_err message naming the file and what was expected.
 */
#ifndef CALMFLOW_H5IO_H
#define CALMFLOW_H5IO_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"

/* Collective on comm. Read dataset `dset` (e.g. "/x") of file `path`: 2-D (n, d), float32 or
 * float64 (converted to float32; a float64 value outside the float32 range is an error).
 * Every rank gets the whole array in *x (n, d) row-major, cf_alloc'd; the caller cf_free's it.
 * Each rank reads its own row range collectively, then the ranges are all-gathered.
 * expect_d > 0 requires d == expect_d. Errors (one line naming the file): missing file, not
 * HDF5, truncated or corrupt, missing dataset, rank != 2, n == 0 or d == 0, non-float type,
 * wrong column count, a NaN or Inf value ("'f.h5' /x row 17 column 1 is NaN", rows and
 * columns counted from 0). On error *x == NULL and *n == *d == 0 on every rank. */
cf_status cf_h5_read_points(MPI_Comm comm, const char *path, const char *dset, int64_t expect_d,
                            float **x, int64_t *n, int64_t *d);

/* Collective on comm. cf_h5_read_points for a 1-D float dataset (e.g. "/pca/mean"): *v (n),
 * on every rank; expect_n > 0 requires n == expect_n. Same checks and errors. */
cf_status cf_h5_read_vector(MPI_Comm comm, const char *path, const char *dset, int64_t expect_n,
                            float **v, int64_t *n);

/* Collective on comm. Write x (n, d) float32, identical on all ranks, as dataset `dset` of a
 * new file `path` (replacing any old one atomically), plus string attributes on the root
 * group: attrs[2i] = key, attrs[2i+1] = value for i < n_attrs. Each rank writes its row
 * range [r*n/R, (r+1)*n/R) with a collective transfer. */
cf_status cf_h5_write_points(MPI_Comm comm, const char *path, const char *dset, const float *x,
                             int64_t n, int64_t d, const char *const *attrs, int n_attrs);

/* An atomic multi-dataset writer (samples.h5: /x (n, D) and /traj (n, N, D)).
 * Usage: open, any number of put / attr, then commit (or abort on an error). Every call is
 * collective on the writer's communicator with identical arguments on all ranks. After a
 * failed call the writer only accepts commit (which fails) or abort. */
#define CF_H5_PATH_MAX 4096
struct cf_h5_writer {
  MPI_Comm comm;                 /* borrowed */
  int64_t file;                  /* HDF5 file id (hid_t), -1 when closed */
  int rank, size;                /* in comm */
  int failed;                    /* a call failed (on some rank): only abort remains */
  char path[CF_H5_PATH_MAX];     /* final name */
  char tmp[CF_H5_PATH_MAX + 32]; /* "<path>.tmp.<pid of rank 0>" */
  const char *rename_fault;      /* fault site (fault.h) rank 0 passes before the rename, or NULL */
  double used, reserved;         /* bytes accounted for so far / reserved on disk (rank 0) */
};

/* Collective on comm. Create the temporary file for `path` (whose directory must exist and
 * be writable). On error nothing is left behind and w needs no abort. */
cf_status cf_h5_writer_open(struct cf_h5_writer *w, MPI_Comm comm, const char *path);
/* Collective. Count `bytes` more that the caller is about to write through w->file itself and
 * make sure the disk has room for all that is counted: rank 0 reserves it in the temporary file
 * (posix_fallocate) before HDF5 writes anything it would have to flush, so a full disk, a quota
 * or a file-size limit fails here ("cannot write 'F': no room on disk for its first N MiB (...)")
 * and abort can still close and remove the file (a failed H5Fclose crashes HDF5 1.10.8 at exit).
 * open counts room for HDF5's metadata, put and attr count what they add. HDF5 cuts the file
 * to its real size when it closes it. After a failure only abort remains. */
cf_status cf_h5_writer_reserve(struct cf_h5_writer *w, double bytes);
/* Collective. Add dataset `dset` (intermediate groups are created) of float32 x with
 * ndim (1..8) dimensions shape[0..ndim-1], all >= 1, row-major; x identical on all ranks,
 * each rank writes rows [r*shape[0]/R, (r+1)*shape[0]/R) collectively. */
cf_status cf_h5_writer_put(struct cf_h5_writer *w, const char *dset, const float *x, int ndim,
                           const int64_t *shape);
/* Collective. Add (or replace) the string attribute key = value on the root group. */
cf_status cf_h5_writer_attr(struct cf_h5_writer *w, const char *key, const char *value);
/* Collective. Close the file, fsync it, rename it over the final path, fsync the directory.
 * On failure the temporary file is removed and the final path is untouched. */
cf_status cf_h5_writer_commit(struct cf_h5_writer *w);
/* Collective. Close the file if open and remove the temporary file. Harmless to repeat. */
void cf_h5_writer_abort(struct cf_h5_writer *w);

#endif
