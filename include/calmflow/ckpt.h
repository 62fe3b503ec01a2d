/* ckpt.h: checkpoints as one parallel-HDF5 file, plus the run directory's ckpt/LATEST.
 *
 * The io layer does not know the model: a checkpoint is a flat list of named float32
 * tensors (parameters, optimizer moments, ...) plus a few root attributes. Every tensor is
 * stored in its global (unsharded) shape as dataset "/<name>", so a run saved at one rank
 * count or layout loads at any other. The on-disk layout is documented in
 * docs/checkpoint-format.md.
 *
 * Writing follows the atomic-commit sequence of reliability.md G1: a temporary name agreed
 * on by all ranks, each rank writing its row range collectively, the "complete" mark written
 * last, close, fsync, rename, fsync of the directory. Reading checks the format, version,
 * completion mark, every tensor's shape, and a per-tensor FNV-1a checksum.
 *
 * All functions except cf_ckpt_latest_read and cf_ckpt_checksum are collective on comm and
 * return the same status on every rank.
 */
#ifndef CALMFLOW_CKPT_H
#define CALMFLOW_CKPT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

#define CF_CKPT_FORMAT "calmflow-ckpt"
#define CF_CKPT_FORMAT_VERSION 1

/* One tensor: dataset "/<name>" where name is like "params/enc.fc1.weight" (slash-separated
 * groups, no leading slash, no empty, "." or ".." components). ndim is 1 (shape[0]) or 2
 * (shape[0] x shape[1]); rows (shape[0]) are what the ranks split. data is (shape) row-major. */
struct cf_ckpt_tensor {
  const char *name;
  int ndim;
  int64_t shape[2];
  float *data;
};

struct cf_ckpt_meta {
  int64_t step;             /* training steps completed */
  uint64_t seed;            /* the run's -seed */
  int64_t world;            /* ranks of the run that wrote it */
  int64_t data_cursor;      /* position in the data stream */
  const char *options_yaml; /* resolved options, stored as a string attribute */
  const char *model_kind;   /* e.g. "calmflow" or "cfm" */
};

/* Local. 64-bit FNV-1a of the little-endian bytes of x[0..n-1] (the stored checksum). */
uint64_t cf_ckpt_checksum(const float *x, size_t n);

/* Collective on comm. Write the nt tensors t (data identical on every rank, as under data
 * parallelism; checked by comparing checksums across ranks) and meta into `path`
 * atomically. Rank r of R writes rows [r*rows/R, (r+1)*rows/R) of every tensor with
 * collective transfers. Root attributes: format, format_version, step, seed, world,
 * data_cursor, options, model_kind, n_tensors, checksum_algorithm, and "complete" = 1
 * written last; each dataset carries a "checksum" attribute (cf_ckpt_checksum, uint64).
 * On failure the temporary file is removed and an existing `path` is untouched. */
cf_status cf_ckpt_write(MPI_Comm comm, const char *path, const struct cf_ckpt_meta *meta,
                        const struct cf_ckpt_tensor *t, int nt);

/* Collective on comm. Read the metadata of checkpoint `path`. *options_yaml receives a
 * cf_alloc'd copy of the options string (the caller cf_free's it); meta->options_yaml points
 * to that same buffer. meta->model_kind points to a buffer owned by the io layer, valid until
 * the next cf_ckpt_read_meta (so it outlives the options buffer).
 * Errors: missing file, not HDF5 or corrupt, not a calmflow checkpoint, format_version newer
 * than CF_CKPT_FORMAT_VERSION, completion mark missing, a required attribute missing. */
cf_status cf_ckpt_read_meta(MPI_Comm comm, const char *path, struct cf_ckpt_meta *meta,
                            char **options_yaml);

/* Collective on comm. Read each tensor t[i] by name into t[i].data (caller-owned, sized by
 * t[i].shape). First every tensor's presence, type and shape are checked against t[i]
 * (error "'ck.h5' tensor 'params/x' has shape 4x3, expected 4x5", plus how many other
 * tensors do not match) before any data is read; then each rank reads its row range
 * collectively, the ranges are all-gathered (MPI_Allgatherv) and the checksum is verified
 * (error naming the tensor). On failure the contents of the t[i].data buffers are
 * unspecified: load into scratch state and adopt it only on success. */
cf_status cf_ckpt_read_tensors(MPI_Comm comm, const char *path, const struct cf_ckpt_tensor *t,
                               int nt);

/* Collective on comm. Rank 0 writes `file_name` (a plain file name such as
 * "step-0000100.h5") into <ckpt_dir>/LATEST atomically (LATEST.tmp, fsync, rename, fsync
 * of the directory). */
cf_status cf_ckpt_latest_write(MPI_Comm comm, const char *ckpt_dir, const char *file_name);

/* Local. path_out = "<ckpt_dir>/<name in LATEST>" (cap bytes). Errors: "no checkpoint in
 * 'dir' (dir/LATEST missing)", a LATEST that does not hold a plain file name, a named file
 * that does not exist, a path longer than cap. */
cf_status cf_ckpt_latest_read(const char *ckpt_dir, char *path_out, size_t cap);

/* Collective on comm. Rank 0 deletes the older step-NNNNNNN.h5 files (7 or more digits) in
 * ckpt_dir, keeping the `keep` (>= 1) with the highest step numbers and always the file
 * LATEST names; nothing else in the directory is touched. Call it only after the newest
 * checkpoint has committed. */
cf_status cf_ckpt_prune(MPI_Comm comm, const char *ckpt_dir, int keep);

#endif
