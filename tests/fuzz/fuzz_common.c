/* fuzz_common.c: start-up, scratch files and the after-each-input checks shared by the
 * libFuzzer targets (see fuzz_common.h). */
#include "fuzz_common.h"

#include <fcntl.h>
#include <hdf5.h>
#include <petscsys.h>
#include <sanitizer/lsan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/error.h"

/* ASan defaults of every target (ASAN_OPTIONS adds to them): leaks are checked per input by
 * libFuzzer; the check at exit would only list what MPI and PETSc keep until MPI_Finalize. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "leak_check_at_exit=0";
}

/* No leak suppressions: PETSc 3.18's PetscOptionsInsertStringYAML leaks libyaml's parser when
 * it refuses a text, but calmflow passes it only texts its own check (src/app/yamlcheck.c,
 * which calls libyaml itself) accepts, so a leak there is a finding. */

static MPI_Comm g_comm = MPI_COMM_NULL;

/* HDF5 objects still open in any file (files, groups, datasets, named types, attributes):
 * after an input there must be none. (Transient types, spaces and property lists cannot be
 * counted through the public API of HDF5 1.10, which refuses H5Inmembers on library types.) */
static ssize_t h5_open_objects(void) {
  return (ssize_t)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
}

void cf_fuzz_init(int *argc, char ***argv) {
  int inited = 0, provided = 0;
  MPI_Initialized(&inited);
  if (inited) return;
  /* what MPI and PETSc allocate for good at start-up (and MPI-IO when it first opens a file,
   * below) is not a leak of any input */
  __lsan_disable();
  /* Open MPI's handlers of SIGSEGV, SIGABRT, ... would take the faults from ASan and libFuzzer
   * (which then write no reproducer) */
  setenv("OMPI_MCA_opal_signal", "", 1);
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_dup(MPI_COMM_SELF, &g_comm);
  MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN);
  /* PETSc's own SIGSEGV handler would hide the faults from ASan and libFuzzer */
  static char a0[] = "cf_fuzz", a1[] = "-no_signal_handler";
  static char *pargv_s[] = {a0, a1, NULL};
  int pargc = 2;
  char **pargv = pargv_s;
  PETSC_COMM_WORLD = g_comm;
  if (PetscInitialize(&pargc, &pargv, NULL, NULL) != 0) {
    fprintf(stderr, "cf_fuzz: PETSc initialization failed\n");
    abort();
  }
  H5open();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  /* HDF5 keeps more of its freed blocks for reuse (64 MiB per kind, 16 MiB per list, instead
   * of 1 / 0.25 MiB): each file open would otherwise map and fault in fresh pages for its
   * metadata cache (ASan maps large blocks one by one), four times slower; without a limit the
   * lists of all the sizes the inputs make grow without bound */
  H5set_free_list_limits(64 << 20, 16 << 20, 64 << 20, 16 << 20, 64 << 20, 16 << 20);
  /* one file opened through MPI-IO loads Open MPI's I/O components */
  const char *warm = cf_fuzz_path("warm.h5");
  hid_t fid = H5Fcreate(warm, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (fid >= 0) H5Fclose(fid);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl, g_comm, MPI_INFO_NULL);
  fid = H5Fopen(warm, H5F_ACC_RDONLY, fapl);
  if (fid >= 0) H5Fclose(fid);
  H5Pclose(fapl);
  unlink(warm);
  __lsan_enable();
}

MPI_Comm cf_fuzz_comm(void) {
  return g_comm;
}

static char g_files[8][512];
static int g_nfiles;

static void remove_files(void) {
  for (int i = 0; i < g_nfiles; i++)
    unlink(g_files[i]);
}

int cf_fuzz_note(const char *what, int st) {
  if (getenv("CF_FUZZ_VERBOSE"))
    fprintf(stderr, "cf_fuzz: %s: %s\n", what, st == CF_OK ? "ok" : cf_errmsg());
  return st;
}

const char *cf_fuzz_path(const char *name) {
  static char names[8][64];
  char(*buf)[512] = g_files;
  int used = g_nfiles;
  for (int i = 0; i < used; i++)
    if (strcmp(names[i], name) == 0) return buf[i];
  if (used == 8) abort();
  struct stat sb;
  const char *dir = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : NULL;
  if (dir == NULL) dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(names[used], sizeof names[used], "%s", name);
  snprintf(buf[used], sizeof buf[used], "%s/cf-fuzz-%ld-%s", dir, (long)getpid(), name);
  if (g_nfiles++ == 0 && !getenv("CF_FUZZ_VERBOSE")) atexit(remove_files);
  return buf[used];
}

void cf_fuzz_write(const char *path, const void *data, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) {
    perror(path);
    abort();
  }
  const char *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) {
      perror(path);
      abort();
    }
    p += w;
    n -= (size_t)w;
  }
  close(fd);
}

void cf_fuzz_after(const char *what) {
  cf_err_clear();
  if (!getenv("CF_FUZZ_VERBOSE")) /* libFuzzer may leave without running atexit handlers */
    remove_files();
  ssize_t open = h5_open_objects();
  if (getenv("CF_FUZZ_VERBOSE")) fprintf(stderr, "cf_fuzz: %zd HDF5 objects open\n", open);
  if (open != 0) {
    fprintf(stderr,
            "cf_fuzz %s: HDF5 objects left open after this input: the reader leaked an "
            "identifier (files %zd, groups %zd, datasets %zd, named types %zd, attributes %zd)\n",
            what, (ssize_t)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_FILE),
            (ssize_t)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_GROUP),
            (ssize_t)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_DATASET),
            (ssize_t)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_DATATYPE),
            (ssize_t)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ATTR));
    abort();
  }
}

int cf_fuzz_is_hdf5(const uint8_t *data, size_t n) {
  static const uint8_t sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  return n >= 8 && memcmp(data, sig, 8) == 0;
}

void cf_fuzz_h5_input(const char *path, const struct cf_fuzz_dict *dict, const uint8_t *data,
                      size_t n) {
  static int raw = -1;
  if (raw < 0) raw = getenv("CF_FUZZ_RAW") != NULL && atoi(getenv("CF_FUZZ_RAW")) != 0;
  if (raw && cf_fuzz_is_hdf5(data, n))
    cf_fuzz_write(path, data, n);
  else if (cf_fuzz_h5_build(path, dict, data, n) != 0)
    abort();
}
