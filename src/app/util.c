/* util.c: run-directory and data-source helpers shared by the subcommands. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/samples.h"

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

cf_status cf_app_check_finished(MPI_Comm comm, const char *path, const char *option) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  int64_t v[3] = {0, 0, 0}; /* unfinished, n_done, n_total */
  if (rank == 0) v[0] = cf_samples_unfinished(path, &v[1], &v[2]);
  CF_MPI(MPI_Bcast(v, 3, MPI_INT64_T, 0, comm));
  CF_CHECK(v[0] == 0, CF_EINVAL,
           "option %s: '%s' is an unfinished samples file (%lld of %lld samples, complete = 0), "
           "expected a finished one; finish it with the same calmflow sample command and "
           "-sample_resume 1",
           option, path, (long long)v[1], (long long)v[2]);
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
