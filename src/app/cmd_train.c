/* cmd_train.c: `calmflow train` — resolve options, lock and prepare the run directory
 * (.lock, config.yaml, log.jsonl, ckpt/), load or name the source and target, and run the
 * training loop. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "calmflow/ckpt.h"
#include "calmflow/conds.h"
#include "calmflow/grid.h"
#include "calmflow/mem.h"
#include "calmflow/neox.h"
#include "calmflow/selffeed.h"
#include "calmflow/watchdog.h"

/* Rank 0's descriptor of <run_dir>/.lock, whose fcntl write lock marks the directory as in use.
 * It is never closed: the kernel drops the lock when the process ends, however it ends, and
 * with POSIX record locks closing any descriptor of the file would drop it early. */
static int g_run_lock_fd = -1;

/* Local. "pid 123 on host n01, started 2024-01-02T03:04:05+0000": the holder of the lock on fd,
 * from the text it wrote into the file. The holder writes it just after taking the lock, so an
 * empty file is read again for up to a second; failing that, the pid fcntl reports. */
static void lock_holder(int fd, char *out, size_t cap) {
  char text[512], host[256], started[64];
  long pid = 0;
  for (int tries = 0; tries < 20; tries++) {
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    text[n > 0 ? n : 0] = '\0';
    if (sscanf(text, "%ld %255s %63s", &pid, host, started) == 3) {
      snprintf(out, cap, "pid %ld on host %s, started %s", pid, host, started);
      return;
    }
    struct timespec nap = {0, 50 * 1000 * 1000};
    nanosleep(&nap, NULL);
  }
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
    snprintf(out, cap, "pid %ld, host unknown: the lock file is empty", (long)fl.l_pid);
  else
    snprintf(out, cap, "holder unknown: the lock file is empty");
}

/* Rank 0: create the run directory if needed and take an exclusive lock on <dir>/.lock
 * without waiting: fcntl(F_SETLK) with a write lock on the whole file (POSIX, and the kind of
 * lock NFS and Lustre mounted with -o flock make coherent across nodes; docs/
 * checkpoint-format.md). The holder writes "pid host start-time" into the file. A held lock is
 * an error naming the directory and the holder. A file system without lock support (Lustre
 * mounted without -o flock or localflock: ENOSYS; NFS without a lock manager: ENOLCK) gets a
 * warning and the run goes ahead unprotected. The file stays in place afterwards: removing it
 * would let two later runs lock two different files of the same name. Only the lock file is
 * created, and prepare_run_dir does not count it as a run. */
static cf_status lock_run_dir(const char *dir) {
  if (g_run_lock_fd >= 0) return CF_OK; /* this process holds it already */
  char p[4200];
  CF_TRY(cf_mkdirs(dir));
  snprintf(p, sizeof p, "%s/.lock", dir);
  int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  CF_CHECK(fd >= 0, CF_EIO, "cannot open the run directory lock '%s': %s", p, strerror(errno));
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    int e = errno;
    if (e == EACCES || e == EAGAIN) {
      char who[512];
      lock_holder(fd, who, sizeof who);
      close(fd);
      return cf_err(CF_EINVAL,
                    "run directory '%s' is in use by another calmflow train (%s; lock '%s'); "
                    "wait for it to end or choose another -run_dir",
                    dir, who, p);
    }
    close(fd);
    if (e == ENOSYS || e == ENOLCK || e == EOPNOTSUPP) {
      fprintf(stderr,
              "calmflow: warning: cannot lock '%s' (%s): this file system does not support "
              "locks, so nothing stops a second run on '%s'\n",
              p, strerror(e), dir);
      return CF_OK;
    }
    return cf_err(CF_EIO, "cannot lock the run directory lock '%s': %s", p, strerror(e));
  }
  char host[256] = "unknown", stamp[64] = "unknown", text[512];
  if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
  host[sizeof host - 1] = '\0';
  time_t now = time(NULL);
  struct tm tm;
  if (localtime_r(&now, &tm) != NULL) strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S%z", &tm);
  int n = snprintf(text, sizeof text, "%ld %s %s\n", (long)getpid(), host, stamp);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != (ssize_t)n)
    fprintf(stderr, "calmflow: warning: cannot write the holder into '%s': %s\n", p,
            strerror(errno));
  g_run_lock_fd = fd;
  return CF_OK;
}

/* Lines of log.jsonl up to step `keep` (a resumed run rewrites what came after). */
static cf_status truncate_log(const char *dir, int64_t keep) {
  char p[4200];
  snprintf(p, sizeof p, "%s/log.jsonl", dir);
  FILE *f = fopen(p, "r");
  if (f == NULL) return CF_OK;
  char *text = NULL, line[4096];
  size_t len = 0, cap = 1 << 16;
  cf_status st = cf_alloc((void **)&text, cap, "log.jsonl");
  while (st == CF_OK && fgets(line, sizeof line, f) != NULL) {
    long long step = -1;
    if (sscanf(line, "{\"step\": %lld", &step) != 1 || step > keep) continue;
    size_t n = strlen(line);
    if (len + n + 1 > cap) {
      char *bigger = NULL;
      st = cf_alloc((void **)&bigger, 2 * cap + n, "log.jsonl");
      if (st != CF_OK) break;
      memcpy(bigger, text, len);
      cf_free((void **)&text);
      text = bigger;
      cap = 2 * cap + n;
    }
    memcpy(text + len, line, n + 1);
    len += n;
  }
  fclose(f);
  if (st == CF_OK) st = cf_write_text_atomic(p, text);
  cf_free((void **)&text);
  return st;
}

/* Local. Remove dir/name when it exists; an error names the file. */
static cf_status remove_file(const char *dir, const char *name) {
  char p[4600];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  CF_CHECK(unlink(p) == 0 || errno == ENOENT, CF_EIO,
           "cannot remove '%s' to start the run afresh: %s", p, strerror(errno));
  return CF_OK;
}

/* Rank 0: make the run directory and its ckpt/ folder. Resuming (resume_step >= 0): the log is
 * cut back to that step. Otherwise what an earlier run left there and a new one would mix with
 * (ckpt/step-*, their temporaries, ckpt/LATEST, log.jsonl, summary.json) is removed up front:
 * find_resume has already refused a directory that belongs to another run, so this is
 * -run_overwrite 1 or a restart of the same configuration that never reached a checkpoint.
 * Other files (samples, metrics, the lock) are left alone; config.yaml is rewritten next. */
static cf_status prepare_run_dir(const char *dir, int overwrite, int64_t resume_step) {
  char p[4200];
  CF_TRY(cf_mkdirs(dir));
  snprintf(p, sizeof p, "%s/ckpt", dir);
  CF_TRY(cf_mkdirs(p));
  if (resume_step >= 0) return truncate_log(dir, resume_step);
  CF_TRY(remove_file(dir, "log.jsonl"));
  CF_TRY(remove_file(dir, "summary.json"));
  CF_TRY(remove_file(p, "LATEST")); /* first: no LATEST ever names a removed file */
  DIR *d = opendir(p);
  CF_CHECK(d != NULL, CF_EIO, "cannot list '%s': %s", p, strerror(errno));
  struct dirent *e;
  cf_status st = CF_OK;
  while (st == CF_OK && (e = readdir(d)) != NULL)
    if (strncmp(e->d_name, "step-", 5) == 0) st = remove_file(p, e->d_name);
  closedir(d);
  return st;
}

/* Local. The checkpoint step-NNNNNNN.h5 in dir with the largest step below `below`; "" if none. */
static void older_checkpoint(const char *dir, int64_t below, char *path, size_t cap) {
  long long best = -1, k;
  DIR *d = opendir(dir);
  struct dirent *e;
  char tail[8];
  while (d != NULL && (e = readdir(d)) != NULL)
    if (sscanf(e->d_name, "step-%lld.h%1s", &k, tail) == 2 && strcmp(tail, "5") == 0 &&
        strlen(e->d_name) == 15 && k < below && k > best)
      best = k;
  if (d) closedir(d);
  path[0] = '\0';
  if (best >= 0) snprintf(path, cap, "%s/step-%07lld.h5", dir, best);
}

/* Collective. Starting from `path` (what LATEST names), the newest checkpoint that passes
 * verification (structure, shapes and checksums of every tensor); each one that fails is
 * skipped with a warning. */
static cf_status newest_valid(MPI_Comm comm, const char *dir, char *path, size_t cap) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  struct cf_opts *tmp = NULL;
  CF_TRY(cf_alloc((void **)&tmp, sizeof *tmp, "options"));
  char first_err[1024] = "";
  /* rank 0's warnings, printed once a valid checkpoint is found: without one the error line
   * alone reports (one line); a list too long for the buffer is printed as it goes */
  char skipped[8192] = "";
  size_t slen = 0;
  cf_status st = CF_OK;
  while (path[0] != '\0') {
    struct cf_model m;
    struct cf_cfm cm;
    struct cf_flow_cfg fc;
    struct cf_ckpt_meta meta;
    memset(&m, 0, sizeof m);
    memset(&cm, 0, sizeof cm);
    st = cf_app_ckpt_options(comm, path, tmp, &meta);
    if (st == CF_OK && strcmp(cf_opt_str(tmp, "model"), "cfm") == 0)
      st = cf_load_cfm(comm, path, tmp, &cm, &meta, 1, 1, NULL);
    else if (st == CF_OK)
      st = cf_load_model(comm, path, tmp, &m, &fc, &meta, 1, NULL);
    cf_model_release(&m);
    cf_cfm_release(&cm);
    if (st == CF_OK) break;
    if (rank == 0) {
      int w = snprintf(skipped + slen, sizeof skipped - slen,
                       "calmflow: warning: skipping checkpoint '%s': %s\n", path, cf_errmsg());
      if (w > 0 && (size_t)w < sizeof skipped - slen) {
        slen += (size_t)w;
      } else {
        skipped[slen] = '\0';
        fprintf(stderr, "%scalmflow: warning: skipping checkpoint '%s': %s\n", skipped, path,
                cf_errmsg());
        skipped[0] = '\0';
        slen = 0;
      }
    }
    if (first_err[0] == '\0') snprintf(first_err, sizeof first_err, "%s", cf_errmsg());
    cf_err_clear();
    long long k = -1;
    const char *b = strrchr(path, '/');
    if (sscanf(b ? b + 1 : path, "step-%lld", &k) != 1) k = -1;
    older_checkpoint(dir, k < 0 ? INT64_MAX : k, path, cap);
  }
  cf_free((void **)&tmp);
  if (rank == 0 && path[0] != '\0') fputs(skipped, stderr);
  CF_CHECK(path[0] != '\0', CF_ECORRUPT,
           "no valid checkpoint to resume from in '%s' (the newest failed: %s); pass "
           "-run_overwrite 1 to start afresh",
           dir, first_err);
  return CF_OK;
}

/* What a run directory holds of a training run (rank 0 looks, every rank learns). */
struct run_files {
  int latest, steps;        /* ckpt/LATEST; ckpt/step-NNNNNNN.h5 files */
  int log, summary, config; /* log.jsonl, summary.json, config.yaml */
};

/* Collective. The run files in dir. */
static cf_status run_files_find(MPI_Comm comm, const char *dir, struct run_files *f) {
  int rank, v[5] = {0, 0, 0, 0, 0};
  CF_MPI(MPI_Comm_rank(comm, &rank));
  if (rank == 0) {
    static const char *const names[5] = {"ckpt/LATEST", "", "log.jsonl", "summary.json",
                                         "config.yaml"};
    char p[4300];
    struct stat sb;
    for (int i = 0; i < 5; i++) {
      snprintf(p, sizeof p, "%s/%s", dir, names[i]);
      v[i] = i != 1 && stat(p, &sb) == 0;
    }
    snprintf(p, sizeof p, "%s/ckpt", dir);
    char newest[4400];
    older_checkpoint(p, INT64_MAX, newest, sizeof newest);
    v[1] = newest[0] != '\0';
  }
  CF_MPI(MPI_Bcast(v, 5, MPI_INT, 0, comm));
  *f = (struct run_files){v[0], v[1], v[2], v[3], v[4]};
  return CF_OK;
}

/* Rank 0. The first option (not in free_opts) whose value in dir/config.yaml differs from o;
 * an error naming the directory, the option and both values, or one saying the file cannot be
 * read, either way telling how to go on. */
static cf_status config_matches(const char *dir, const struct cf_opts *o,
                                const char *const *free_opts) {
  static const char *const how =
      "pass -run_overwrite 1 to start afresh there (its checkpoints, log and summary are "
      "deleted), -train_resume CKPT to continue from a checkpoint trained with these options, "
      "or choose another -run_dir";
  char p[4300];
  snprintf(p, sizeof p, "%s/config.yaml", dir);
  char *text = NULL;
  struct cf_opts *cfg = NULL;
  const size_t cap = 1 << 20;
  CF_TRY(cf_alloc((void **)&text, cap, "config.yaml"));
  cf_status st = cf_alloc((void **)&cfg, sizeof *cfg, "options");
  FILE *f = st == CF_OK ? fopen(p, "r") : NULL;
  size_t n = f ? fread(text, 1, cap - 1, f) : 0;
  int complete = f != NULL && !ferror(f) && n < cap - 1;
  if (f) fclose(f);
  text[n] = '\0';
  PetscOptions db = NULL;
  if (complete && cf_opts_yaml_check(text, n, p) != CF_OK) { /* PETSc would crash on some */
    complete = 0;
    cf_err_clear();
  }
  if (st == CF_OK && complete && PetscOptionsCreate(&db) == 0) {
    PetscPushErrorHandler(PetscReturnErrorHandler, NULL);
    PetscErrorCode e = PetscOptionsInsertStringYAML(db, text);
    PetscPopErrorHandler();
    complete = e == 0 && cf_opts_load(cfg, db, CMD_TRAIN) == CF_OK;
    if (!complete) cf_err_clear(); /* replaced by the message below */
    PetscOptionsDestroy(&db);
  } else
    complete = 0;
  if (st == CF_OK && !complete)
    st = cf_err(CF_EINVAL,
                "run directory '%s' belongs to another run: it holds a run but its config.yaml "
                "cannot be read to compare this invocation with; %s",
                dir, how);
  const char *diff = st == CF_OK ? cf_opts_first_difference(o, cfg, CMD_TRAIN, free_opts) : NULL;
  if (diff != NULL)
    st = cf_err(CF_EINVAL,
                "run directory '%s' belongs to another run: its config.yaml has -%s '%s', this "
                "invocation '%s'; %s",
                dir, diff, cf_opt_str(cfg, diff), cf_opt_str(o, diff), how);
  cf_free((void **)&cfg);
  cf_free((void **)&text);
  return st;
}

/* Collective. The checkpoint to resume from: -train_resume, else, unless -run_overwrite is 1,
 * the newest valid checkpoint of run_dir/ckpt (from what LATEST names or, when LATEST is
 * missing, the newest step-NNNNNNN.h5); "" for a fresh start. Checks that the checkpoint was
 * trained with the same options (those that may change on resume are listed in `free_opts`).
 * Without -train_resume and -run_overwrite 1, a run directory that belongs to another run is
 * refused: one whose checkpoint was trained with other options, or, with no checkpoint, whose
 * config.yaml differs or is missing while log.jsonl or summary.json show a run. */
static cf_status find_resume(MPI_Comm comm, const struct cf_opts *o, int overwrite, char *path,
                             size_t cap, int64_t *step) {
  static const char *const free_opts[] = {"run_dir",
                                          "run_overwrite",
                                          "train_steps",
                                          "train_quiet",
                                          "train_log_every",
                                          "train_ckpt_every",
                                          "train_ckpt_keep",
                                          "train_resume",
                                          "par_tp",
                                          "par_pp",
                                          "par_cp",
                                          "par_timeout",
                                          "par_zero",
                                          "par_bucket_mb",
                                          "train_nan_policy",
                                          "train_nan_max_skips",
                                          NULL};
  path[0] = '\0';
  *step = -1;
  const char *given = cf_opt_str(o, "train_resume"), *run_dir = cf_opt_str(o, "run_dir");
  struct run_files rf = {0, 0, 0, 0, 0};
  CF_TRY(run_files_find(comm, run_dir, &rf));
  if (given[0] != '\0') {
    snprintf(path, cap, "%s", given);
  } else if (!overwrite && (rf.latest || rf.steps)) {
    char dir[4300];
    snprintf(dir, sizeof dir, "%s/ckpt", run_dir);
    if (rf.latest)
      CF_TRY(cf_ckpt_latest_read(dir, path, cap));
    else
      older_checkpoint(dir, INT64_MAX, path, cap);
    CF_TRY(newest_valid(comm, dir, path, cap));
  } else if (!overwrite && (rf.log || rf.summary || rf.config)) {
    int rank;
    CF_MPI(MPI_Comm_rank(comm, &rank));
    cf_status st = rank == 0 ? config_matches(run_dir, o, free_opts) : CF_OK;
    int ok = st == CF_OK;
    CF_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, comm));
    if (!ok) return st != CF_OK ? st : cf_err(CF_EREMOTE, "run directory '%s' refused", run_dir);
    return CF_OK; /* the same configuration without a checkpoint: start it again */
  } else {
    return CF_OK;
  }
  struct cf_opts *ck = NULL;
  struct cf_ckpt_meta meta;
  CF_TRY(cf_alloc((void **)&ck, sizeof *ck, "options"));
  cf_status st = cf_app_ckpt_options(comm, path, ck, &meta);
  if (st == CF_OK) {
    const char *diff = cf_opts_first_difference(o, ck, CMD_TRAIN, free_opts);
    if (diff != NULL && given[0] != '\0')
      st = cf_err(CF_EINVAL,
                  "option -%s is '%s' but checkpoint '%s' was trained with '%s'; resume with the "
                  "same options, or start afresh with -run_overwrite 1 or a new -run_dir",
                  diff, cf_opt_str(o, diff), path, cf_opt_str(ck, diff));
    else if (diff != NULL)
      st = cf_err(CF_EINVAL,
                  "option -%s is '%s' but checkpoint '%s' was trained with '%s': run directory "
                  "'%s' belongs to another run; pass -run_overwrite 1 to start afresh there (its "
                  "checkpoints, log and summary are deleted), -train_resume CKPT to continue from "
                  "a checkpoint trained with these options, or choose another -run_dir",
                  diff, cf_opt_str(o, diff), path, cf_opt_str(ck, diff), run_dir);
    *step = meta.step;
  }
  cf_free((void **)&ck);
  return st;
}

/* Append the summary's ", "nan_skips": n, "nan_skipped_steps": [...]" (the steps whose update
 * -train_nan_policy skip dropped, the first CF_NAN_LISTED of them) at out; returns the length
 * written (at most cap - 1). */
static size_t append_nan(char *out, size_t cap, const struct cf_train_result *r) {
  const int64_t listed = r->nan_skips < CF_NAN_LISTED ? r->nan_skips : CF_NAN_LISTED;
  size_t n = 0;
  int k = snprintf(out, cap, ", \"nan_skips\": %lld, \"nan_skipped_steps\": [",
                   (long long)r->nan_skips);
  for (int64_t i = 0; i <= listed && k > 0 && n + (size_t)k < cap; i++) {
    n += (size_t)k;
    k = i < listed
            ? snprintf(out + n, cap - n, "%s%lld", i ? ", " : "", (long long)r->nan_skipped[i])
            : snprintf(out + n, cap - n, "]");
  }
  if (k > 0 && n + (size_t)k < cap) n += (size_t)k;
  return n;
}

/* Close the summary's JSON object at out, with the diagnostics (train.h) when computed:
 * "diag": {"sequences", "step_loss": [...], "attn": [{per layer}]}. */
static void append_diag(char *out, size_t cap, const struct cf_train_diag *d) {
  size_t n = 0;
#define CF_PUT(...)                                                                                \
  do {                                                                                             \
    int k_ = snprintf(out + n, n < cap ? cap - n : 0, __VA_ARGS__);                                \
    if (k_ > 0) n += (size_t)k_;                                                                   \
  } while (0)
  if (d->sequences > 0) {
    CF_PUT(", \"diag\": {\"sequences\": %lld, \"step_loss\": [", (long long)d->sequences);
    for (int64_t t = 0; t < d->n_steps; t++)
      CF_PUT("%s%.6g", t ? ", " : "", d->step_loss[t]);
    CF_PUT("], \"attn\": [");
    for (int64_t l = 0; l < d->layers; l++) {
      const struct cf_attn_stats *a = &d->attn[l];
      CF_PUT("%s{\"past\": %.6g, \"uniform\": %.6g, \"entropy\": %.6g, \"q_norm\": %.6g, "
             "\"k_norm\": %.6g}",
             l ? ", " : "", a->past, a->uniform, a->entropy, a->q_norm, a->k_norm);
    }
    CF_PUT("]}");
  }
  CF_PUT("}\n");
#undef CF_PUT
}

cf_status cf_app_train_cfg(const struct cf_opts *o, struct cf_train_cfg *tc) {
  memset(tc, 0, sizeof *tc);
  const int64_t big = (int64_t)1 << 40;
  int64_t seed;
  CF_TRY(cf_opt_int(o, "seed", 0, INT64_MAX, &seed));
  tc->seed = (uint64_t)seed;
  CF_TRY(cf_opt_int(o, "train_steps", 1, UINT32_MAX - 1, &tc->steps));
  CF_TRY(cf_opt_int(o, "train_batch", 1, big, &tc->batch));
  CF_TRY(cf_opt_int(o, "train_microbatches", 1, big, &tc->microbatches));
  CF_TRY(cf_opt_int(o, "train_warmup", 0, big, &tc->warmup));
  CF_TRY(cf_opt_int(o, "train_log_every", 1, big, &tc->log_every));
  CF_TRY(cf_opt_int(o, "train_ckpt_every", 0, big, &tc->ckpt_every));
  CF_TRY(cf_opt_int(o, "train_ckpt_keep", 1, 1000000, &tc->ckpt_keep));
  CF_TRY(cf_opt_real(o, "train_lr", 1e-12, 10, &tc->lr));
  CF_TRY(cf_opt_real(o, "train_lr_min", 0, 10, &tc->lr_min));
  CF_TRY(cf_decay_parse(cf_opt_str(o, "train_decay"), &tc->decay));
  CF_TRY(cf_optimizer_parse(cf_opt_str(o, "train_optimizer"), &tc->optimizer));
  CF_TRY(cf_opt_real(o, "train_weight_decay", 0, 10, &tc->weight_decay));
  CF_TRY(cf_opt_real(o, "train_beta1", 0, 0.999999, &tc->beta1));
  CF_TRY(cf_opt_real(o, "train_beta2", 0, 0.999999999, &tc->beta2));
  CF_TRY(cf_opt_real(o, "train_eps", 1e-30, 1, &tc->adam_eps));
  CF_TRY(cf_opt_real(o, "train_clip", 0, 1e12, &tc->clip));
  CF_TRY(cf_nan_policy_parse(cf_opt_str(o, "train_nan_policy"), &tc->nan_policy));
  CF_TRY(cf_opt_int(o, "train_nan_max_skips", 0, big, &tc->nan_max_skips));
  CF_TRY(cf_opt_int(o, "train_selffeed_steps", 0, big, &tc->selffeed_steps));
  CF_TRY(cf_opt_real(o, "train_selffeed_prob", 0, 1, &tc->selffeed_prob));
  CF_TRY(cf_opt_int(o, "train_selffeed_cands", 1, 1 << 20, &tc->selffeed_cands));
  CF_TRY(cf_opt_real(o, "flow_kl_weight", 0, 1e6, &tc->kl_weight));
  CF_TRY(cf_opt_bool(o, "train_quiet", &tc->quiet));
  double mb;
  CF_TRY(cf_opt_real(o, "par_bucket_mb", 1e-6, 1e6, &mb));
  tc->bucket = (size_t)(mb * 1048576.0 / sizeof(float));
  CF_TRY(cf_opt_bool(o, "par_zero", &tc->zero));
  if (tc->bucket < 1) tc->bucket = 1;
  return CF_OK;
}

static const char *const g_par_axes[3] = {"par_tp", "par_pp", "par_cp"};

static cf_status read_par(const struct cf_opts *o, int par[3]) {
  for (int i = 0; i < 3; i++) {
    int64_t v;
    CF_TRY(cf_opt_int(o, g_par_axes[i], 1, 1 << 20, &v));
    par[i] = (int)v;
  }
  return CF_OK;
}

cf_status cf_app_layout_data_only(const struct cf_opts *o, const char *why) {
  int par[3];
  CF_TRY(read_par(o, par));
  for (int i = 0; i < 3; i++)
    CF_CHECK(par[i] == 1, CF_ETOPO, "option -%s: %s (expected 1, got %d)", g_par_axes[i], why,
             par[i]);
  return CF_OK;
}

cf_status cf_app_layout(const struct cf_opts *o, int world, const struct cf_model_cfg *mc,
                        int64_t microbatches, int par[3]) {
  CF_TRY(read_par(o, par));
  if (microbatches <= 0) microbatches = par[1];
  CF_CHECK(!mc->no_history || par[2] == 1, CF_ETOPO,
           "-flow_history 0 with -par_cp %d: without history a point attends only to itself, so "
           "there is no sequence to split (use -par_cp 1)",
           par[2]);
  CF_TRY(cf_grid_check(world, par[0], par[1], par[2], mc->layers, mc->heads, mc->N * mc->P,
                       microbatches));
  CF_CHECK(mc->ffn % par[0] == 0, CF_ETOPO,
           "-net_ffn %lld is not divisible by -par_tp %d (each tensor-parallel rank owns an equal "
           "share of the MLP)",
           (long long)mc->ffn, par[0]);
  return CF_OK;
}

cf_status cf_cmd_train(MPI_Comm comm) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  struct cf_opts *o = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  CF_TRY(cf_opts_load(o, NULL, CMD_TRAIN));
  CF_TRY(cf_opts_check_unknown("train"));
  const char *model = cf_opt_str(o, "model");
  const int cfm = strcmp(model, "cfm") == 0;
  CF_CHECK(cfm || strcmp(model, "calmflow") == 0, CF_EINVAL,
           "option -model: unknown method '%s' (expected calmflow or cfm)", model);
  CF_TRY(cf_app_pretrained_options(o)); /* -model_init_hf: the backbone's -net_ options */
  struct cf_model_cfg mc;
  struct cf_flow_cfg fc;
  struct cf_train_cfg tc;
  struct cf_cfm_cfg cc;
  struct cf_train_cfm_opts copt;
  CF_TRY(cf_app_train_cfg(o, &tc));
  tc.init_hf = cf_opt_str(o, "model_init_hf");
  /* -data_prompt: the rows, their prompts and groups (prompt.c); resolves -net_prompt_* */
  struct cf_prompt_data prompt;
  struct cf_dist prompt_tgt;
  float *prompt_pts = NULL;
  CF_TRY(cf_app_prompt_train(comm, o, tc.quiet, &prompt_tgt, &prompt_pts, &prompt));
  tc.prompt = prompt.L > 0 ? &prompt : NULL;
  double timeout;
  CF_TRY(cf_opt_real(o, "par_timeout", 0, 1e9, &timeout));
  CF_TRY(cf_watchdog_start(timeout, rank));
  int par[3] = {1, 1, 1};
  if (cfm) {
    CF_TRY(cf_app_cfm_cfg(o, &cc, &copt));
    memset(&mc, 0, sizeof mc);
    mc.D = cc.D;
    CF_TRY(cf_app_layout_data_only(o, "-model cfm is split by data parallelism only"));
    CF_CHECK(tc.selffeed_steps == 0, CF_EINVAL,
             "option -train_selffeed_steps: -model cfm has no history to feed (expected 0, got "
             "%lld)",
             (long long)tc.selffeed_steps);
    CF_CHECK(tc.batch >= world, CF_ETOPO,
             "option -train_batch: %lld points per step cannot feed %d ranks", (long long)tc.batch,
             world);
  } else {
    CF_TRY(cf_app_model_cfg(o, &mc, &fc));
    CF_TRY(cf_app_layout(o, world, &mc, tc.microbatches, par));
    CF_TRY(cf_train_cfg_check(&tc, &mc, world / (par[0] * par[1] * par[2])));
    CF_TRY(cf_selffeed_check(&fc, tc.selffeed_steps, tc.selffeed_prob, tc.selffeed_cands));
    CF_CHECK(tc.selffeed_steps == 0 || par[1] == 1, CF_ETOPO,
             "option -train_selffeed_steps: the own-rollout passes need the whole model on each "
             "rank (expected -par_pp 1, got %d)",
             par[1]);
  }
  int overwrite;
  CF_TRY(cf_opt_bool(o, "run_overwrite", &overwrite));
  const char *run_dir = cf_opt_str(o, "run_dir");
  CF_CHECK(run_dir[0] != '\0', CF_EINVAL, "option -run_dir: expected a directory");

  /* data before touching the run directory: a bad file leaves no half-made run */
  struct cf_dist src, tgt;
  float *src_pts = NULL, *tgt_pts = NULL;
  const char *train_file = cf_opt_str(o, "data_train");
  if (tc.prompt != NULL) { /* read, -data_exclude applied and sorted by prompt already */
    tgt = prompt_tgt;
    tgt_pts = prompt_pts;
  } else if (train_file[0] != '\0')
    CF_TRY(cf_app_dist(comm, train_file, mc.D, "-data_train", &tgt, &tgt_pts));
  else
    CF_TRY(cf_dist_by_name(&tgt, cf_opt_str(o, "data_name"), mc.D, "-data_name"));
  CF_TRY(cf_app_dist(comm, cf_opt_str(o, "data_source"), mc.D, "-data_source", &src, &src_pts));
  /* -data_exclude (rows left out) and -cfm_cond (the kept rows' conditions) */
  struct cf_conds conds;
  if (tc.prompt == NULL)
    CF_TRY(cf_app_train_rows(comm, o, cfm, &tgt, tgt_pts, &conds, &cc, tc.quiet));
  else
    memset(&conds, 0, sizeof conds);
  copt.conds = conds.ncol > 0 ? &conds : NULL;
  /* -model_init_hf: config.json and every weight's header, shape and dtype, also before the run
   * directory is touched (cf_train_run loads the weights) */
  if (!cfm && tc.init_hf[0] != '\0') CF_TRY(cf_neox_check(comm, &mc, tc.init_hf));

  /* one run per directory: rank 0 locks it (creating it if needed) before anything in it is
   * read for resuming or changed; all ranks fail together */
  cf_status st = rank == 0 ? lock_run_dir(run_dir) : CF_OK;
  int locked = st == CF_OK;
  CF_MPI(MPI_Bcast(&locked, 1, MPI_INT, 0, comm));
  if (!locked) return st != CF_OK ? st : cf_err(CF_EREMOTE, "rank 0 could not lock '%s'", run_dir);

  char resume[4096];
  int64_t resume_step;
  CF_TRY(find_resume(comm, o, overwrite, resume, sizeof resume, &resume_step));
  if (resume[0] != '\0' && cfm) CF_TRY(cf_app_resume_conds(comm, resume, &conds));
  if (resume_step >= tc.steps) {
    if (rank == 0 && !tc.quiet)
      printf("calmflow train: '%s' is at step %lld of %lld: nothing to do\n", resume,
             (long long)resume_step, (long long)tc.steps);
    cf_conds_release(&conds);
    cf_app_prompt_release(&prompt);
    cf_free((void **)&src_pts);
    cf_free((void **)&tgt_pts);
    cf_free((void **)&o);
    return CF_OK;
  }

  char *yaml = NULL;
  CF_TRY(cf_alloc((void **)&yaml, 1 << 16, "resolved options"));
  CF_TRY(cf_opts_yaml(o, CMD_TRAIN, yaml, 1 << 16));
  if (rank == 0) {
    st = prepare_run_dir(run_dir, overwrite, resume_step);
    if (st == CF_OK) {
      char p[4200];
      snprintf(p, sizeof p, "%s/config.yaml", run_dir);
      st = cf_write_text_atomic(p, yaml);
    }
  }
  int bad = st != CF_OK;
  CF_MPI(MPI_Bcast(&bad, 1, MPI_INT, 0, comm));
  if (bad) return st != CF_OK ? st : cf_err(CF_EREMOTE, "rank 0 could not prepare '%s'", run_dir);

  if (rank == 0 && !tc.quiet && cfm) {
    printf("calmflow train (CFM baseline): %s -> %s, D=%lld, MLP %lld x %lld, %s coupling, "
           "sigma=%g, %s lr=%g, batch=%lld points on %d rank%s\n",
           cf_opt_str(o, "data_source"), train_file[0] ? train_file : cf_opt_str(o, "data_name"),
           (long long)cc.D, (long long)cc.layers, (long long)cc.width,
           copt.ot ? "exact OT" : "independent", copt.sigma, cf_optimizer_name(tc.optimizer), tc.lr,
           (long long)tc.batch, world, world > 1 ? "s" : "");
    fflush(stdout);
  } else if (rank == 0 && !tc.quiet) {
    printf("calmflow train: %s -> %s, D=%lld N=%lld P=%lld S=%lld, H=%lld layers=%lld heads=%lld, "
           "head=%s predict=%s path=%s sigma=%g, %s lr=%g, batch=%lld paths on %d rank%s\n",
           cf_opt_str(o, "data_source"), train_file[0] ? train_file : cf_opt_str(o, "data_name"),
           (long long)mc.D, (long long)mc.N, (long long)mc.P, (long long)mc.S, (long long)mc.H,
           (long long)mc.layers, (long long)mc.heads, cf_head_name(mc.head),
           cf_predict_name(fc.predict), cf_path_name(fc.path), fc.sigma,
           cf_optimizer_name(tc.optimizer), tc.lr, (long long)tc.batch, world,
           world > 1 ? "s" : "");
    fflush(stdout);
  }
  struct cf_grid grid;
  CF_TRY(cf_grid_init(&grid, comm, par[0], par[1], par[2]));
  if (rank == 0 && !tc.quiet) {
    char lay[128];
    cf_grid_describe(&grid, lay, sizeof lay);
    printf("layout: %s\n", lay);
    if (resume[0]) printf("resuming from %s (step %lld)\n", resume, (long long)resume_step);
  }
  struct cf_train_result res;
  cf_status st_run = cfm ? cf_train_cfm_run(&grid, &tc, &cc, &copt, &src, &tgt, run_dir, yaml,
                                            resume[0] ? resume : NULL, &res)
                         : cf_train_run(&grid, &tc, &mc, &fc, &src, &tgt, run_dir, yaml,
                                        resume[0] ? resume : NULL, &res);
  cf_grid_release(&grid);
  if (st_run == CF_STOPPED) {
    if (rank == 0)
      printf("calmflow train: stopped by %s after step %lld; checkpoint %s written; exit code 75 "
             "means: requeue me, the same command resumes\n",
             res.stop_signal == SIGTERM ? "SIGTERM" : "SIGUSR1", (long long)res.stopped_at,
             res.last_ckpt);
    return CF_STOPPED;
  }
  CF_TRY(st_run);
  if (rank == 0 && !tc.quiet)
    printf("trained %lld steps in %.1f s (%.0f tokens/s), final loss %.5f, checkpoint %s\n"
           "memory: peak RSS %.1f MiB on the largest rank (calmflow's own heap at most %.1f MiB); "
           "parameters + gradients + AdamW state %.2f MiB per rank; gradient all-reduce %.2f MiB "
           "per step and rank\n",
           (long long)tc.steps, res.seconds, res.tokens_per_s, res.final_loss, res.last_ckpt,
           res.peak_rss / 1048576.0, res.heap_peak / 1048576.0, res.state_bytes / 1048576.0,
           res.grad_bytes_per_step / 1048576.0);
  if (rank == 0) {
    /* machine-readable figures of the run, for benchmarks (bench/) */
    char path[4200], *text = NULL;
    const size_t cap = 2048 + 32 * (size_t)res.diag.n_steps + 192 * (size_t)res.diag.layers;
    CF_TRY(cf_alloc((void **)&text, cap, "summary"));
    snprintf(path, sizeof path, "%s/summary.json", run_dir);
    int len = snprintf(
        text, cap,
        "{\"ranks\": %d, \"dp\": %d, \"tp\": %d, \"pp\": %d, \"cp\": %d, "
        "\"steps\": %lld, \"seconds\": %.6g, \"tokens_per_s\": %.6g, "
        "\"steady_tokens_per_s\": %.6g, \"flops_per_step\": %.6g, \"peak_rss\": %.6g, "
        "\"heap_peak\": %.6g, \"state_bytes_max\": %.6g, \"final_loss\": %.8g, "
        "\"ckpt_seconds\": %.6g, \"ckpts\": %lld, "
        "\"comm_bytes_per_step\": {\"dp\": %.6g, \"tp\": %.6g, \"pp\": %.6g, "
        "\"cp\": %.6g}, \"comm_seconds_per_step\": {\"dp\": %.6g, \"tp\": %.6g, "
        "\"pp\": %.6g, \"cp\": %.6g}",
        world, world / (par[0] * par[1] * par[2]), par[0], par[1], par[2], (long long)tc.steps,
        res.seconds, res.tokens_per_s, res.steady_tokens_per_s, res.flops_per_step, res.peak_rss,
        res.heap_peak, res.state_bytes_max, res.final_loss, res.ckpt_seconds, (long long)res.ckpts,
        res.comm_bytes[0], res.comm_bytes[1], res.comm_bytes[2], res.comm_bytes[3],
        res.comm_seconds[0], res.comm_seconds[1], res.comm_seconds[2], res.comm_seconds[3]);
    len += (int)append_nan(text + len, cap - (size_t)len, &res);
    append_diag(text + len, cap - (size_t)len, &res.diag);
    cf_status sw = cf_write_text_atomic(path, text);
    if (sw != CF_OK) fprintf(stderr, "calmflow: warning: %s\n", cf_errmsg());
    cf_free((void **)&text);
  }
  cf_train_diag_release(&res.diag);
  cf_conds_release(&conds);
  cf_app_prompt_release(&prompt);
  cf_free((void **)&yaml);
  cf_free((void **)&src_pts);
  cf_free((void **)&tgt_pts);
  cf_free((void **)&o);
  return CF_OK;
}
