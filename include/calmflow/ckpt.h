/* ckpt.h: checkpoints as one parallel-HDF5 file, plus the run directory's ckpt/LATEST.
 *
 * The io layer does not know the model: a checkpoint is a flat list of named float32
 * tensors (parameters, optimizer moments, ...) plus a few root attributes. Every tensor is
 * stored in its global (unsharded) shape as dataset "/<name>", so a run saved at one rank
 * count or layout loads at any other. The on-disk layout is documented in
 * docs/checkpoint-format.md.
 *
 * A rank may hold a whole tensor, a block of it (rows and/or columns, as under tensor
 * parallelism), or nothing of it (another pipeline stage's layers); blocks may be replicated
 * (data parallelism). Writing follows the atomic-commit sequence of reliability.md G1: a
 * temporary name agreed on by all ranks, the replicas of each block splitting its rows and
 * writing them collectively, the "complete" mark written last, close, fsync, rename, fsync of
 * the directory. Reading checks the format, version, completion mark, every tensor's shape,
 * and a per-tensor checksum that is a sum over elements, so it is computed from blocks.
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
#define CF_CKPT_FORMAT_VERSION 2
#define CF_CKPT_CHECKSUM_ALGORITHM "mix64sum-f32" /* version 2; version 1: "fnv1a64-f32le" */

/* One tensor: dataset "/<name>" where name is like "params/enc.fc1.weight" (slash-separated
 * groups, no leading slash, no empty, "." or ".." components). ndim is 1 (shape[0]; shape[1]
 * is ignored) or 2 (shape[0] x shape[1]): the GLOBAL shape. Every rank passes the same list
 * of names and shapes in the same order (checked); only data and the block fields differ.
 * A zero-initialised entry with data set means what it always meant: this rank holds the
 * whole tensor, as do all ranks of comm.
 *
 *   data        this rank's block, row-major (count[0] x count[1]; 1-D: count[0]); NULL: this
 *               rank holds nothing of the tensor (the block fields are then ignored).
 *   start,count the block in global coordinates (rows start[0] .. start[0]+count[0]-1, columns
 *               start[1] .. start[1]+count[1]-1). count all zero (start zero too): the whole
 *               tensor. Otherwise each count >= 1 and the block lies inside shape; for 1-D
 *               tensors start[1] is 0 and count[1] is 0 or 1. An empty block is data = NULL.
 *   replica,    among the ranks holding this same block: this rank's index 0..n_replicas-1
 *   n_replicas  and their number. n_replicas 0: for a whole tensor, the ranks holding it whole
 *               with n_replicas 0 are its replicas in rank order (all ranks: today's data
 *               parallelism; a pipeline stage's ranks: that stage); for a part block, this rank
 *               is its only holder.
 * The held blocks, counted once per replica set, must tile the tensor exactly (checked, on
 * writing and on reading). */
struct cf_ckpt_tensor {
  const char *name;
  int ndim;
  int64_t shape[2];
  float *data;
  int64_t start[2], count[2];
  int replica, n_replicas;
};

/* The root attributes. layout, rng, rng_step and conditions are optional (added to version 2
 * without a version bump; files written before them still load): on writing, layout NULL stores
 * no "layout", rng NULL stores neither "rng" nor "rng_step" and conditions NULL no
 * "conditions" (so a zero-initialised meta writes what it always wrote); rng set needs
 * rng_step >= 0. On reading, an absent attribute gives NULL (layout, rng, conditions) or -1
 * (rng_step). */
struct cf_ckpt_meta {
  int64_t step;             /* training steps completed */
  uint64_t seed;            /* the run's -seed */
  int64_t world;            /* ranks of the run that wrote it */
  int64_t data_cursor;      /* position in the data stream */
  const char *options_yaml; /* resolved options, stored as a string attribute */
  const char *model_kind;   /* e.g. "calmflow" or "cfm" */
  const char *layout;       /* the writer's process grid, e.g. "dp2 x pp1 x cp1 x tp2 (4 ranks)" */
  const char *rng;          /* the generator and its keying, e.g. "philox4x32-10 keyed by ..." */
  int64_t rng_step;         /* the step counter of the first draw after this checkpoint */
  const char *conditions;   /* optional: a conditional model's condition columns and their
                               categories (conds.h's text form, at most CF_CONDS_TEXT_MAX bytes) */
};

/* Local. The version-2 checksum of the block x (nr x nc, row-major) that sits at rows r0..,
 * columns c0.. of a tensor with `cols` columns (1 for a 1-D tensor): the sum (mod 2^64) over
 * its elements of mix(mix(i + 0x9e3779b97f4a7c15) ^ b), where i is the element's row-major
 * index in the global tensor, b the float's IEEE-754 bit pattern (as a uint32) and mix the
 * splitmix64 finaliser (docs/checkpoint-format.md). Sums of disjoint blocks add up (mod 2^64)
 * to the checksum of their union; the stored one covers the whole tensor. */
uint64_t cf_ckpt_checksum(const float *x, int64_t cols, int64_t r0, int64_t c0, int64_t nr,
                          int64_t nc);

/* Collective on comm. Write the nt tensors t (each rank's blocks, see struct cf_ckpt_tensor)
 * and meta into `path` atomically. Checked first, before the file is created: the tensor lists
 * agree across ranks, the blocks tile every tensor exactly, and the replicas of each block
 * hold the same values (compared through block checksums: "replicas diverged"). Replica i of n
 * of a block writes its rows [i*nr/n, (i+1)*nr/n) with a collective transfer (all ranks of
 * comm holding whole tensors: rank r of R writes rows [r*rows/R, (r+1)*rows/R)). Root
 * attributes: format, format_version, step, seed, world, data_cursor, options, model_kind,
 * layout (if given), rng and rng_step (if rng is given), conditions (if given), n_tensors,
 * checksum_algorithm, and
 * "complete" = 1 written last; each dataset carries a
 * "checksum" attribute (cf_ckpt_checksum of the whole tensor, uint64, summed from the
 * writers' parts with MPI_Allreduce). On failure the temporary file is removed and an
 * existing `path` is untouched. */
cf_status cf_ckpt_write(MPI_Comm comm, const char *path, const struct cf_ckpt_meta *meta,
                        const struct cf_ckpt_tensor *t, int nt);

/* Collective on comm. Read the metadata of checkpoint `path`. *options_yaml receives a
 * cf_alloc'd copy of the options string (the caller cf_free's it); meta->options_yaml points
 * to that same buffer. meta->model_kind, meta->layout and meta->rng point to buffers owned by
 * the io layer, valid until the next cf_ckpt_read_meta (so they outlive the options buffer),
 * and so does meta->conditions; layout, rng and conditions are NULL and rng_step -1 when the
 * file does not store them.
 * Errors: missing file, not HDF5 or corrupt, not a calmflow checkpoint, format_version newer
 * than CF_CKPT_FORMAT_VERSION, completion mark missing, a required attribute missing. */
cf_status cf_ckpt_read_meta(MPI_Comm comm, const char *path, struct cf_ckpt_meta *meta,
                            char **options_yaml);

/* Collective on comm. Read each tensor t[i] by name into this rank's block t[i].data
 * (caller-owned, sized by the block; see struct cf_ckpt_tensor), whatever layout wrote the
 * file. First every tensor's presence, type and global shape are checked against t[i] (error
 * "'ck.h5' tensor 'params/x' has shape 4x3, expected 4x5", plus how many other tensors do not
 * match) and the blocks must tile each tensor, before any data is read; then each holding
 * rank reads its own block with a collective transfer (empty selections elsewhere), and the
 * checksum is verified: the replicas of a block split its rows as when writing, their partial
 * checksums are summed with MPI_Allreduce and compared with the stored one (error naming the
 * tensor). Version-1 files (whole-tensor FNV-1a checksums) are read too: each holding rank
 * reads the whole tensor into scratch memory, verifies it and keeps its block. On failure the
 * contents of the t[i].data buffers are unspecified: load into scratch state and adopt it
 * only on success. */
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
 * LATEST names, and the temporaries step-NNNNNNN.h5.tmp.<digits> that writers killed before
 * their rename left; nothing else in the directory is touched. Call it only after the newest
 * checkpoint has committed (then no temporary is in use: the run directory lock keeps other
 * jobs out). */
cf_status cf_ckpt_prune(MPI_Comm comm, const char *ckpt_dir, int keep);

#endif
