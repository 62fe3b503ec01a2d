/* cf_test_mpi.h: what the MPI tests that write files (test_h5io, test_ckpt) share, on top of
 * cf_test.h. cf_test_mpi_begin (after MPI_Init) gives the test its own communicator, rank and
 * size, sets cf_test_rank, and has rank 0 make a fresh directory cf_test_dir under $TMPDIR (or
 * /tmp) that every rank then knows; cf_test_path names a file in it; cf_test_count_tmp counts
 * the temporary files a write left in a directory; cf_test_slurp reads a whole file;
 * cf_test_mpi_end adds up the failures of all ranks into cf_test_fails (so cf_test_done
 * reports and returns the total on every rank), removes the directory when there were none or
 * says where it is kept, frees the communicator and gives the name for the closing line.
 * Header-only, static inline functions. */
#ifndef CALMFLOW_CF_TEST_MPI_H
#define CALMFLOW_CF_TEST_MPI_H

#include <dirent.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_test.h"

static char cf_test_dir[256];

/* Collective on MPI_COMM_WORLD. `name` (e.g. "test_ckpt") names the directory. */
static inline void cf_test_mpi_begin(const char *name, MPI_Comm *comm, int *rank, int *size) {
  MPI_Comm_dup(MPI_COMM_WORLD, comm);
  MPI_Comm_rank(*comm, rank);
  MPI_Comm_size(*comm, size);
  cf_test_rank = *rank;
  if (*rank == 0) {
    const char *tmp = getenv("TMPDIR");
    snprintf(cf_test_dir, sizeof cf_test_dir, "%s/cf_%s.XXXXXX", tmp && tmp[0] ? tmp : "/tmp",
             name);
    if (!mkdtemp(cf_test_dir)) {
      perror("mkdtemp");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  MPI_Bcast(cf_test_dir, sizeof cf_test_dir, MPI_CHAR, 0, *comm);
}

/* Local. buf = cf_test_dir/name. */
static inline void cf_test_path(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", cf_test_dir, name);
}

/* Local. Entries of directory d whose name contains ".tmp" (none should be left by a write). */
static inline int cf_test_count_tmp(const char *d) {
  int n = 0;
  DIR *dd = opendir(d);
  if (!dd) return 0;
  struct dirent *e;
  while ((e = readdir(dd)) != NULL)
    if (strstr(e->d_name, ".tmp")) n++;
  closedir(dd);
  return n;
}

/* Local. The whole file in a malloc'd buffer (NULL if it cannot be opened; *len = -1 on a
 * short read), for "left untouched" checks. */
static inline unsigned char *cf_test_slurp(const char *path, long *len) {
  FILE *f = fopen(path, "rb");
  *len = 0;
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)*len + 1);
  if (b && fread(b, 1, (size_t)*len, f) != (size_t)*len) *len = -1;
  fclose(f);
  return b;
}

/* Local. Remove directory d and everything below it. */
static inline void cf_test_remove_tree(const char *d) {
  DIR *dd = opendir(d);
  struct dirent *e;
  char p[700];
  while (dd && (e = readdir(dd)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(p, sizeof p, "%s/%s", d, e->d_name);
    struct stat sb;
    if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
      cf_test_remove_tree(p);
    else
      unlink(p);
  }
  if (dd) closedir(dd);
  rmdir(d);
}

/* Collective on comm, which it frees. Call before MPI_Finalize; returns "name (N ranks)" for
 * cf_test_done. */
static inline const char *cf_test_mpi_end(MPI_Comm *comm, const char *name) {
  static char label[128];
  int total = 0, size = 1;
  MPI_Comm_size(*comm, &size);
  MPI_Allreduce(&cf_test_fails, &total, 1, MPI_INT, MPI_SUM, *comm);
  cf_test_fails = total;
  if (cf_test_rank == 0) {
    if (total == 0)
      cf_test_remove_tree(cf_test_dir);
    else
      printf("%s: files kept in %s\n", name, cf_test_dir);
  }
  MPI_Comm_free(comm);
  snprintf(label, sizeof label, "%s (%d ranks)", name, size);
  return label;
}

#endif
