/* fuzz_common.h: what the libFuzzer targets of tests/fuzz share: one-time MPI / PETSc / HDF5
 * start-up on a single rank, the per-process scratch files the readers open by name, the
 * after-each-input checks (no HDF5 object left open, the error buffer cleared), and the
 * structured HDF5 builder (fuzz_h5build.c) that turns input bytes into a well-formed HDF5 file
 * so the readers' own validation, not HDF5's parser, gets the mutations. */
#ifndef CALMFLOW_FUZZ_COMMON_H
#define CALMFLOW_FUZZ_COMMON_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

/* Start MPI (MPI_THREAD_FUNNELED, as calmflow does), PETSc (without its signal handler, so
 * ASan and libFuzzer see the faults) and switch off HDF5's error printing. Once per process;
 * call it from LLVMFuzzerInitialize. */
void cf_fuzz_init(int *argc, char ***argv);

/* The communicator the readers run on: one rank (MPI_COMM_SELF's duplicate). */
MPI_Comm cf_fuzz_comm(void);

/* "/dev/shm/cf-fuzz-<pid>-<name>" (or $TMPDIR when /dev/shm is missing); the same buffer on
 * every call with the same name. The files are removed after each input (cf_fuzz_after) and at
 * exit; CF_FUZZ_VERBOSE keeps them. */
const char *cf_fuzz_path(const char *name);

/* Write n bytes to path (replacing it). Aborts on failure: the harness is broken, not the
 * reader. */
void cf_fuzz_write(const char *path, const void *data, size_t n);

/* After one input: abort with a message when an HDF5 object (file, group, dataset, named
 * type, attribute) is still open (a reader leaked an identifier on some path), and clear the
 * recorded error. `what` names the target in the message. */
void cf_fuzz_after(const char *what);

/* With CF_FUZZ_VERBOSE set in the environment: print "<what>: ok" or the recorded error
 * (seeing why a seed is refused); returns st. */
int cf_fuzz_note(const char *what, int st);

/* Is data an HDF5 file image (the 8-byte signature at offset 0)? */
int cf_fuzz_is_hdf5(const uint8_t *data, size_t n);

/* ---- the structured builder (fuzz_h5build.c) ----
 *
 * The input is a list of operations, each taking bytes as it needs them (missing bytes read
 * as 0; at most 160 operations):
 *   op % 4 == 0  group      path
 *   op % 4 == 1  dataset    path, type, ndim (0..3), dims, chunked?, values
 *   op % 4 == 2  attribute  object (a path, or the root), name, type, ndim (0..2), dims, values
 *   op % 4 == 3  link       soft or hard link from one path to another
 * Paths, attribute names and string values come from the target's dictionary (struct
 * cf_fuzz_dict), by byte index, so the names the reader looks for are one mutation away.
 * Types: the integer and float types of both byte orders, h5py's bool enum, another enum,
 * variable- and fixed-length strings (ASCII and UTF-8), object references (to a dictionary
 * path), a compound, an array type, and two "checksum" types that store the calmflow
 * checkpoint checksum (version 2 or 1) of the dataset the attribute is put on (so the fuzzer
 * gets past checksum verification). A dimension byte b is b itself below 240, else one of a
 * few large values (65536 up to 2^62), which need a chunked dataset and write no values. */
struct cf_fuzz_dict {
  const char *const *paths; /* dataset / group paths, relative to the root */
  int npaths;
  const char *const *attrs; /* attribute names */
  int nattrs;
  const char *const *strs; /* string values */
  int nstrs;
};

/* Build the file `path` from the operations in data. Returns 0 when a file was written (some
 * operations may have failed: they are skipped), -1 when not even the empty file could be
 * created (aborts: a harness problem). */
int cf_fuzz_h5_build(const char *path, const struct cf_fuzz_dict *dict, const uint8_t *data,
                     size_t n);

/* Build the file from operations; with CF_FUZZ_RAW=1 in the environment, an input that is an
 * HDF5 file image (cf_fuzz_is_hdf5) is written as it is instead (replaying a file, or fuzzing
 * HDF5's own parser: HDF5 1.10 is not robust against corrupt files, so that mode finds hangs
 * and crashes inside libhdf5, which calmflow cannot fix). The input of every HDF5 target goes
 * through this. */
void cf_fuzz_h5_input(const char *path, const struct cf_fuzz_dict *dict, const uint8_t *data,
                      size_t n);

#endif
