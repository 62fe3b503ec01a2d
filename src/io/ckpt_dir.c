/* ckpt_dir.c: the run directory's checkpoint folder: the ckpt/LATEST hint (written
 * atomically by rank 0) and pruning old step-NNNNNNN.h5 files down to the newest K, along
 * with the temporaries (step-NNNNNNN.h5.tmp.<pid>) of writers killed before their rename. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/ckpt.h"
#include "calmflow/mem.h"
#include "io/h5util.h"

#define LATEST_NAME_MAX 256

/* Local. A plain file name: non-empty, no '/', not "." or "..", printable without spaces. */
static int plain_name(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n >= LATEST_NAME_MAX) return 0;
  if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] == '/' || s[i] <= 0x20 || s[i] >= 0x7f) return 0;
  return 1;
}

static cf_status latest_write_local(const char *dir, const char *name) {
  char tmp[CF_H5_PATH_MAX], fin[CF_H5_PATH_MAX];
  int a = snprintf(tmp, sizeof tmp, "%s/LATEST.tmp", dir);
  int b = snprintf(fin, sizeof fin, "%s/LATEST", dir);
  CF_CHECK(a > 0 && b > 0 && (size_t)a < sizeof tmp, CF_EINVAL,
           "checkpoint directory name '%.64s...' is too long", dir);
  if (unlink(tmp) != 0 && errno != ENOENT)
    return cf_err(CF_EIO, "cannot remove stale '%s': %s", tmp, strerror(errno));
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
  if (fd < 0) return cf_err(CF_EIO, "cannot create '%s': %s", tmp, strerror(errno));
  char line[LATEST_NAME_MAX + 2];
  int len = snprintf(line, sizeof line, "%s\n", name);
  ssize_t done = 0;
  while (done < len) {
    ssize_t w = write(fd, line + done, (size_t)(len - done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    done += w;
  }
  int saved = errno;
  cf_status st = CF_OK;
  if (done != len) st = cf_err(CF_EIO, "cannot write '%s': %s", tmp, strerror(saved));
  if (st == CF_OK && fsync(fd) != 0)
    st = cf_err(CF_EIO, "fsync of '%s' failed: %s", tmp, strerror(errno));
  if (close(fd) != 0 && st == CF_OK)
    st = cf_err(CF_EIO, "cannot close '%s': %s", tmp, strerror(errno));
  if (st == CF_OK && rename(tmp, fin) != 0)
    st = cf_err(CF_EIO, "cannot rename '%s' to '%s': %s", tmp, fin, strerror(errno));
  if (st != CF_OK) {
    unlink(tmp);
    return st;
  }
  return cf_io_fsync_dir(dir);
}

cf_status cf_ckpt_latest_write(MPI_Comm comm, const char *ckpt_dir, const char *file_name) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  cf_status st = CF_OK;
  if (ckpt_dir == NULL || ckpt_dir[0] == '\0')
    st = cf_err(CF_EINVAL, "empty checkpoint directory name");
  else if (!plain_name(file_name))
    st = cf_err(CF_EINVAL, "'%s' is not a plain checkpoint file name for %s/LATEST",
                file_name ? file_name : "", ckpt_dir);
  else if (rank == 0)
    st = latest_write_local(ckpt_dir, file_name);
  CF_TRY(cf_agree(comm, st));
  return CF_OK;
}

/* Local. Read the name in <dir>/LATEST into name (LATEST_NAME_MAX). Returns 1 when LATEST
 * does not exist (nothing recorded), 0 on success, or -1 with an error recorded in *st. */
static int latest_name(const char *dir, char *name, cf_status *st) {
  char p[CF_H5_PATH_MAX];
  int a = snprintf(p, sizeof p, "%s/LATEST", dir);
  if (a < 0 || (size_t)a >= sizeof p) {
    *st = cf_err(CF_EINVAL, "checkpoint directory name '%.64s...' is too long", dir);
    return -1;
  }
  int fd = open(p, O_RDONLY);
  if (fd < 0) {
    if (errno == ENOENT) return 1;
    *st = cf_err(CF_EIO, "cannot open '%s': %s", p, strerror(errno));
    return -1;
  }
  char buf[LATEST_NAME_MAX + 8];
  ssize_t n = 0, r;
  while (n < (ssize_t)sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - (size_t)n)) != 0) {
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    n += r;
  }
  close(fd);
  buf[n] = '\0';
  while (n > 0 &&
         (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
    buf[--n] = '\0';
  if (!plain_name(buf)) {
    *st = cf_err(CF_ECORRUPT, "'%s' does not hold a checkpoint file name", p);
    return -1;
  }
  snprintf(name, LATEST_NAME_MAX, "%s", buf);
  return 0;
}

cf_status cf_ckpt_latest_read(const char *ckpt_dir, char *path_out, size_t cap) {
  CF_CHECK(ckpt_dir != NULL && ckpt_dir[0] != '\0' && path_out != NULL && cap > 0, CF_EINVAL,
           "bad arguments to cf_ckpt_latest_read");
  path_out[0] = '\0';
  char name[LATEST_NAME_MAX];
  cf_status st = CF_OK;
  int r = latest_name(ckpt_dir, name, &st);
  if (r < 0) CF_TRY(st);
  CF_CHECK(r == 0, CF_EIO, "no checkpoint in '%s' (%s/LATEST missing)", ckpt_dir, ckpt_dir);
  int n = snprintf(path_out, cap, "%s/%s", ckpt_dir, name);
  if (n < 0 || (size_t)n >= cap) {
    path_out[0] = '\0';
    return cf_err(CF_EINVAL, "checkpoint path '%s/%s' is longer than %zu bytes", ckpt_dir, name,
                  cap);
  }
  struct stat sb;
  if (stat(path_out, &sb) != 0) {
    int e = errno;
    path_out[0] = '\0';
    return cf_err(CF_EIO, "'%s/LATEST' names '%s', which %s", ckpt_dir, name,
                  e == ENOENT ? "does not exist" : strerror(e));
  }
  return CF_OK;
}

struct step_file {
  int64_t step;
  char name[40];
};

/* Local. step-NNNNNNN.h5 with 7..18 digits -> the step, else -1. */
static int64_t step_of(const char *name) {
  size_t n = strlen(name);
  if (n < 5 + 7 + 3 || n > 5 + 18 + 3) return -1;
  if (strncmp(name, "step-", 5) != 0 || strcmp(name + n - 3, ".h5") != 0) return -1;
  int64_t s = 0;
  for (size_t i = 5; i < n - 3; i++) {
    if (name[i] < '0' || name[i] > '9') return -1;
    s = s * 10 + (name[i] - '0');
  }
  return s;
}

/* Local. Is name "step-<7..18 digits>.h5.tmp.<digits>", the temporary name cf_ckpt_write
 * uses (h5io.h: "<path>.tmp.<pid of rank 0>")? */
static int is_ckpt_tmp(const char *name) {
  const char *t = strstr(name, ".h5.tmp.");
  if (t == NULL) return 0;
  size_t n = (size_t)(t - name) + 3;
  char base[5 + 18 + 3 + 1];
  if (n >= sizeof base) return 0;
  memcpy(base, name, n);
  base[n] = '\0';
  if (step_of(base) < 0) return 0;
  const char *pid = t + 8;
  if (*pid == '\0') return 0;
  for (; *pid != '\0'; pid++)
    if (*pid < '0' || *pid > '9') return 0;
  return 1;
}

static int newer_first(const void *a, const void *b) {
  const struct step_file *x = a, *y = b;
  if (x->step != y->step) return x->step > y->step ? -1 : 1;
  return -strcmp(x->name, y->name);
}

static cf_status prune_local(const char *dir, int keep) {
  char latest[LATEST_NAME_MAX] = "";
  cf_status st = CF_OK;
  int r = latest_name(dir, latest, &st);
  if (r < 0) return st;
  if (r == 1) latest[0] = '\0';
  DIR *d = opendir(dir);
  if (d == NULL)
    return cf_err(CF_EIO, "cannot open checkpoint directory '%s': %s", dir, strerror(errno));
  struct step_file *f = NULL;
  size_t nf = 0, cap = 0;
  struct dirent *e;
  while (st == CF_OK && (e = readdir(d)) != NULL) {
    /* A temporary of a writer killed before its rename (reliability.md G1): nothing uses it
     * (our own write has just committed, and the run directory lock keeps other jobs out),
     * and it would be left to pile up, one checkpoint's size per crash. */
    if (is_ckpt_tmp(e->d_name)) {
      if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT)
        st = cf_err(CF_EIO, "cannot remove the stale temporary checkpoint '%s/%s': %s", dir,
                    e->d_name, strerror(errno));
      continue;
    }
    int64_t s = step_of(e->d_name);
    if (s < 0) continue;
    if (nf == cap) {
      struct step_file *g = NULL;
      size_t nc = cap ? 2 * cap : 64;
      st = cf_alloc((void **)&g, nc * sizeof *g, "checkpoint file list");
      if (st != CF_OK) break;
      if (nf) memcpy(g, f, nf * sizeof *g);
      cf_free((void **)&f);
      f = g;
      cap = nc;
    }
    f[nf].step = s;
    snprintf(f[nf].name, sizeof f[nf].name, "%s", e->d_name);
    nf++;
  }
  if (st == CF_OK && nf > 0) qsort(f, nf, sizeof *f, newer_first);
  for (size_t i = (size_t)keep; st == CF_OK && i < nf; i++) {
    if (strcmp(f[i].name, latest) == 0) continue;
    if (unlinkat(dirfd(d), f[i].name, 0) != 0 && errno != ENOENT)
      st = cf_err(CF_EIO, "cannot remove old checkpoint '%s/%s': %s", dir, f[i].name,
                  strerror(errno));
  }
  closedir(d);
  cf_free((void **)&f);
  CF_TRY(st);
  return cf_io_fsync_dir(dir);
}

cf_status cf_ckpt_prune(MPI_Comm comm, const char *ckpt_dir, int keep) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  cf_status st = CF_OK;
  if (ckpt_dir == NULL || ckpt_dir[0] == '\0')
    st = cf_err(CF_EINVAL, "empty checkpoint directory name");
  else if (keep < 1)
    st = cf_err(CF_EINVAL, "checkpoints to keep must be at least 1 (got %d)", keep);
  else if (rank == 0)
    st = prune_local(ckpt_dir, keep);
  CF_TRY(cf_agree(comm, st));
  return CF_OK;
}
