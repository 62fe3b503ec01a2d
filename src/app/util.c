/* util.c: run-directory and data-source helpers shared by the subcommands. */
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"

cf_status cf_mkdirs(const char *path) {
  char buf[4096];
  CF_CHECK(strlen(path) < sizeof buf && path[0] != '\0', CF_EINVAL, "bad directory name '%s'",
           path);
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return cf_err(CF_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST)
    return cf_err(CF_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
  struct stat sb;
  CF_CHECK(stat(buf, &sb) == 0 && S_ISDIR(sb.st_mode), CF_EIO, "'%s' is not a directory", buf);
  return CF_OK;
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

cf_status cf_app_dist(MPI_Comm comm, const char *spec, int64_t dim, const char *option,
                      struct cf_dist *d, float **owned) {
  *owned = NULL;
  if (ends_with(spec, ".h5") || ends_with(spec, ".hdf5") || strchr(spec, '/') != NULL) {
    int64_t n = 0, dd = 0;
    CF_TRY(cf_app_check_finished(comm, spec, option));
    CF_TRY(cf_h5_read_points(comm, spec, "/x", dim, owned, &n, &dd));
    cf_dist_points(d, *owned, n, dd);
    return CF_OK;
  }
  return cf_dist_by_name(d, spec, dim, option);
}

/* Local (rank 0). Integer attribute `name` of the root group of fid into *v; 0 if it cannot. */
static int attr_i64(hid_t fid, const char *name, long long *v) {
  if (H5Aexists(fid, name) <= 0) return 0;
  hid_t a = H5Aopen(fid, name, H5P_DEFAULT);
  int ok = a >= 0 && H5Aread(a, H5T_NATIVE_LLONG, v) >= 0;
  if (a >= 0) H5Aclose(a);
  return ok;
}

cf_status cf_app_check_finished(MPI_Comm comm, const char *path, const char *option) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  long long v[3] = {1, 0, 0}; /* complete, n_done, n_total */
  struct stat sb;
  if (rank == 0 && stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
    H5E_auto2_t fn = NULL;
    void *data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &fn, &data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    /* a killed writer's file opens in SWMR read mode only; HDF5's own locks are not ours */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) H5Pset_file_locking(fapl, 0, 1);
    hid_t fid = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, fapl >= 0 ? fapl : H5P_DEFAULT);
    if (fid < 0) fid = H5Fopen(path, H5F_ACC_RDONLY, fapl >= 0 ? fapl : H5P_DEFAULT);
    long long c = 1;
    if (fid >= 0 && H5Aexists(fid, "format") > 0 && attr_i64(fid, "complete", &c) && c == 0 &&
        attr_i64(fid, "n_done", &v[1]) && attr_i64(fid, "n_total", &v[2]))
      v[0] = 0;
    if (fid >= 0) H5Fclose(fid);
    if (fapl >= 0) H5Pclose(fapl);
    H5Eset_auto2(H5E_DEFAULT, fn, data);
  }
  CF_MPI(MPI_Bcast(v, 3, MPI_LONG_LONG, 0, comm));
  CF_CHECK(v[0] != 0, CF_EINVAL,
           "option %s: '%s' is an unfinished samples file (%lld of %lld samples, complete = 0), "
           "expected a finished one; finish it with the same calmflow sample command and "
           "-sample_resume 1",
           option, path, v[1], v[2]);
  return CF_OK;
}

cf_status cf_write_text_atomic(const char *path, const char *text) {
  char tmp[4300];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  CF_CHECK(f != NULL, CF_EIO, "cannot write '%s': %s", path, strerror(errno));
  int ok = fputs(text, f) >= 0;
  ok = (fflush(f) == 0) && ok;
  ok = (fsync(fileno(f)) == 0) && ok;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return cf_err(CF_EIO, "cannot write '%s': %s", path, strerror(e));
  }
  return CF_OK;
}
