/* samples.h: the samples file, written by ONE rank as samples finish, that survives a kill.
 *
 * `calmflow sample` streams its samples into one HDF5 file: /x (k, D) float32 and, with traj,
 * /traj (k, N, D) float32, both extendible along the first dimension (unlimited, chunked, about
 * 1 MiB a chunk), and root attributes (docs/samples-format.md): format "calmflow-samples",
 * version 1, config, n_total, n_done, complete, D, N, traj, created, resumes, hdf5_version. One
 * rank (the rollout's coordinator) owns the file and uses serial HDF5 on it (the default sec2
 * driver, not MPI-IO, also in Debian's parallel HDF5 build); no function here is collective,
 * the other ranks never touch the file.
 *
 * Life of a file: cf_samples_create (or cf_samples_resume), cf_samples_append in sample order
 * any number of times, then cf_samples_finish once n_done == n, or cf_samples_close on an error
 * path (closes cleanly, complete stays 0, resumable). Only one writer at a time: the writer
 * holds flock(LOCK_SH) on the file, and create / resume need LOCK_EX ("in use by another
 * process" otherwise; SWMR readers take LOCK_SH and may watch a live file).
 *
 * Two forms on disk. While it is written (and when closed unfinished or killed) the file is
 * in the LIVE form: HDF5 1.10 format (superblock v3, extensible-array chunk index), which SWMR
 * needs. cf_samples_finish marks it complete, closes it and rewrites it in the FINAL form:
 * HDF5 1.8 format (superblock v2, v1 B-tree chunk index), a copy renamed over it, the same
 * format as checkpoints; so any HDF5 1.8+ reader, and calmflow's MPI-IO readers
 * (cf_h5_read_points: 1.8 format bounds), read a finished file. h5py (HDF5 1.10+) reads both.
 *
 * Crash semantics (what a SIGKILL at any moment leaves behind):
 *  - The file at `path` is built under "<path>.tmp.<pid>", closed, fsync'd and renamed over
 *    `path` (create, every resume, finish), so `path` is never a half-built file; a killed
 *    run may leave a stale temporary beside it.
 *  - While appending, the file is open in HDF5's SWMR write mode (H5F_ACC_SWMR_WRITE). SWMR
 *    makes the metadata cache write its entries in dependency order (a pointer reaches the
 *    file only after what it points to; the metadata accumulator is off), so that a concurrent
 *    SWMR reader sees a consistent, if older, file between any two write() calls of the
 *    writer. A killed writer leaves the file as such a reader would have seen it at that
 *    instant: the guarantee relied on is HDF5's SWMR reader guarantee, applied to a frozen file.
 *  - append writes and flushes the rows (H5Fflush: chunk data, then metadata) before it
 *    writes and flushes the new n_done, so n_done never counts rows that are not in the file;
 *    /x and /traj may hold more rows than n_done (killed between the two flushes): those are
 *    not committed. Rows below n_done are never rewritten with other values (a partly filled
 *    chunk is rewritten in place with the same bytes for them).
 *  - A killed file still carries HDF5's "open for write" superblock flags: ordinary (non-SWMR)
 *    HDF5 opens refuse it ("file is already open for write"), h5py.File(path, "r") included;
 *    h5py.File(path, "r", swmr=True) reads it. cf_samples_resume makes it an ordinary file.
 *  - Limits: this covers the process dying (SIGKILL, OOM kill, crash), not the machine: after
 *    each flush the descriptor is fsync'd (unless spec.nosync), which makes committed rows
 *    durable, but a power loss during a flush may leave the last writes on disk in any order,
 *    which SWMR does not cover. The file must be on a local POSIX file system (SWMR's own
 *    requirement). The kernel may end a write() of several pages between two pages when the
 *    process is killed; a metadata entry torn that way would fail its checksum and the file
 *    would not open (never seen in tests; docs/samples-format.md).
 *
 * Resume (cf_samples_resume) opens the file read-only in SWMR read mode, checks it against the
 * run's spec, and copies its committed part (attributes and the first n_done rows) into a new
 * file that replaces it atomically, then continues appending to that: resume costs one copy
 * of the committed rows, drops any uncommitted ones, and clears the flags of a killed writer.
 */
#ifndef CALMFLOW_SAMPLES_H
#define CALMFLOW_SAMPLES_H

#include <stdint.h>

#include "calmflow/error.h"

#define CF_SAMPLES_FORMAT "calmflow-samples"
#define CF_SAMPLES_VERSION 1
#define CF_SAMPLES_PATH_MAX 4096
#define CF_SAMPLES_CONFIG_MAX (1 << 20) /* bytes of the config attribute */

struct cf_samples_spec {
  int64_t n;          /* samples the run will make in all (>= 1) */
  int64_t D, N;       /* data dimension, time points (both >= 1; N is stored even without traj) */
  int traj;           /* also /traj (n, N, D): every time point */
  const char *config; /* what made it (resolved options YAML, checkpoint path, seed, ...): stored
                         as attribute "config"; resume requires it to match exactly */
  int nosync;         /* 1: skip the fsync after each flush (a killed process loses nothing
                         more; a machine crash may lose the recent appends); 0: fsync */
};

/* An open samples file. Zero-initialised it is "not open" (cf_samples_close is harmless). */
struct cf_samples {
  int64_t n_done;    /* rows written and committed (the file's n_done) */
  int64_t n, D, N;   /* from the spec */
  int traj;          /* /traj is written */
  int complete;      /* the file is marked complete (finished, or resumed complete) */
  int nosync;        /* from the spec */
  int open;          /* file, x, tr are open HDF5 handles and lock_fd is held */
  int failed;        /* an append failed: only close remains */
  int64_t file;      /* hid_t of the file */
  int64_t x, tr;     /* hid_t of /x and /traj (tr -1 without traj) */
  int lock_fd;       /* descriptor holding the writer's flock(LOCK_SH) on the file */
  int64_t n_dropped; /* resume: rows beyond n_done that were found and dropped */
  int was_open;      /* resume: the file still carried a writer's "open" flags (a kill) */
  char path[CF_SAMPLES_PATH_MAX];
};

/* Local. Create the samples file `path` for spec (its directory must exist and be writable)
 * with n_done = 0, replacing any file of that name atomically, and open it for appending.
 * Errors: bad spec (n, D, N < 1, config NULL or longer than CF_SAMPLES_CONFIG_MAX, rows too
 * large for one HDF5 chunk), path empty, too long, a directory, or not writable. On error
 * nothing is left behind and s is not open. */
cf_status cf_samples_create(struct cf_samples *s, const char *path,
                            const struct cf_samples_spec *spec);

/* Local. Continue the samples file `path` written by an earlier run with the same spec. The
 * file must say format "calmflow-samples", version <= 1, and match spec in config, D, N, traj
 * and n_total: every mismatch is one line of the error message naming the attribute and both
 * values ("'s.h5' attribute D is 2, this run has D = 3"; for config the first differing line).
 * /x and /traj must hold at least n_done rows of the right shape. The committed rows are copied
 * into a new file that replaces `path` (rows beyond n_done are dropped, s->n_dropped counts
 * them; s->was_open says the writer had been killed), which is opened for appending at
 * s->n_done. A complete file (complete = 1, n_done == n) is left as it is when it is in the
 * final form (else rewritten in it) and returned not open, with s->complete = 1 and
 * s->n_done == n: CF_OK, the caller decides (finish and close accept it). On error `path` is
 * unchanged and s is not open. */
cf_status cf_samples_resume(struct cf_samples *s, const char *path,
                            const struct cf_samples_spec *spec);

/* Local. Append rows n_done .. n_done + count - 1: x (count, D) and, when the file has /traj,
 * traj (count, N, D) (ignored otherwise). Reserves the disk space the rows need (posix_fallocate:
 * a full disk fails here, "cannot write samples to 'f': no room on disk for its first N MiB (...)",
 * before anything is written), extends the datasets, writes, flushes (and fsyncs), then writes
 * n_done += count and flushes (and fsyncs) again. count == 0 does nothing. Errors: not open,
 * failed before, complete, n_done + count > n, NULL data, no room, HDF5 write failure (then
 * the file keeps its last committed n_done and s only accepts close). */
cf_status cf_samples_append(struct cf_samples *s, int64_t count, const float *x, const float *traj);

/* Local. Mark the file complete (complete = 1, flushed), close it, and rewrite it in the final
 * form (a copy of all rows, renamed over it). Requires n_done == n (else an error naming both
 * counts; the file stays open for the caller to close). A failure after the mark leaves a
 * complete file in the live form, which resume turns into the final form. A file resumed
 * complete, or finished before: CF_OK. */
cf_status cf_samples_finish(struct cf_samples *s);

/* Local. 1 when `path` is a calmflow samples file that is not complete (a sampling run that
 * failed or was killed, also one whose writer still holds it), with its counts; 0 for any
 * other file, also one that does not open or is not HDF5 (its reader reports that). */
int cf_samples_unfinished(const char *path, int64_t *n_done, int64_t *n_total);

/* Local. Close without completing (error paths): the file is closed cleanly (in the live form),
 * keeps its n_done, and can be resumed. Harmless on a closed or zero-initialised s, and after
 * finish. Records no error of its own over one already recorded. */
void cf_samples_close(struct cf_samples *s);

#endif
