/* test_fault.c: CF_FAULT parsing and actions (one process, no MPI).
 *
 * Parsing, per-site occurrence counting, the rank filter, '*' for rank and occurrence,
 * malformed values (an error naming CF_FAULT, nothing armed), eio/enospc statuses and
 * messages, delay timing, the nan / inf poisoning of the value sites, and unset = no effect.
 * hang, kill and exit run in forked children.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "calmflow/fault.h"
#include "cf_test.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Set CF_FAULT (NULL: unset) and initialize for `rank`. */
static cf_status init_with(const char *spec, int rank) {
  if (spec)
    setenv("CF_FAULT", spec, 1);
  else
    unsetenv("CF_FAULT");
  return cf_fault_init(rank);
}

/* Which of n calls at `site` return non-OK: a bit string "0010..." in out. */
static void pattern(const char *site, int n, char *out) {
  for (int i = 0; i < n; i++) {
    out[i] = cf_fault_point(site) == CF_OK ? '0' : '1';
    cf_err_clear();
  }
  out[n] = '\0';
}

/* Fork a child that initializes CF_FAULT=spec for rank 1 and reaches `site` 3 times, then
 * exits 0. Returns the wait status, or -1 if it was still running after limit_s (killed). */
static int child(const char *spec, double limit_s) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, STDERR_FILENO); /* keep the "injected fault" lines out of the log */
    if (init_with(spec, 1) != CF_OK) _exit(20);
    for (int i = 0; i < 3; i++)
      if (cf_fault_point("ckpt_write") != CF_OK) _exit(21);
    _exit(0);
  }
  double t0 = now_s();
  int status;
  while (now_s() - t0 < limit_s) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

int main(void) {
  char p[64];

  /* Unset and empty: nothing armed, every site passes. */
  EXPECT_OK(init_with(NULL, 0), "unset");
  EXPECT(!cf_fault_armed_, "armed with CF_FAULT unset");
  pattern("ckpt_write", 5, p);
  EXPECT(strcmp(p, "00000") == 0, "unset: pattern %s", p);
  EXPECT_OK(init_with("", 0), "empty");
  EXPECT(!cf_fault_armed_, "armed with CF_FAULT empty");

  /* Occurrence counting: the 3rd arrival only, counted per site. */
  EXPECT_OK(init_with("ckpt_write:0:3:eio", 0), "eio at 3");
  EXPECT(cf_fault_armed_, "not armed");
  pattern("h5_write", 4, p);
  EXPECT(strcmp(p, "0000") == 0, "other site affected: %s", p);
  pattern("ckpt_write", 6, p);
  EXPECT(strcmp(p, "001000") == 0, "eio at 3: pattern %s", p);

  /* The status and message of eio and enospc; errno is set. */
  EXPECT_OK(init_with("ckpt_rename:0:1:eio,h5_write:0:1:enospc", 0), "eio + enospc");
  errno = 0;
  cf_status st = cf_fault_point("ckpt_rename");
  EXPECT(st == CF_EIO, "eio: status %d", (int)st);
  EXPECT(errno == EIO, "eio: errno %d", errno);
  EXPECT(strcmp(cf_errmsg(), "injected fault at ckpt_rename (eio)") == 0, "eio: message '%s'",
         cf_errmsg());
  cf_err_clear();
  st = cf_fault_point("h5_write");
  EXPECT(st == CF_EIO, "enospc: status %d", (int)st);
  EXPECT(errno == ENOSPC, "enospc: errno %d", errno);
  EXPECT(strcmp(cf_errmsg(), "injected fault at h5_write (enospc)") == 0, "enospc: message '%s'",
         cf_errmsg());
  cf_err_clear();

  /* Rank filter: an entry for rank 1 does nothing on rank 0 (not even armed). */
  EXPECT_OK(init_with("ckpt_write:1:1:eio", 0), "rank 1 on rank 0");
  EXPECT(!cf_fault_armed_, "armed for another rank");
  pattern("ckpt_write", 3, p);
  EXPECT(strcmp(p, "000") == 0, "rank filter: pattern %s", p);
  EXPECT_OK(init_with("ckpt_write:1:2:eio", 1), "rank 1 on rank 1");
  pattern("ckpt_write", 3, p);
  EXPECT(strcmp(p, "010") == 0, "rank 1: pattern %s", p);
  EXPECT_OK(init_with("ckpt_write:12:1:eio", 1), "rank 12 on rank 1");
  pattern("ckpt_write", 2, p);
  EXPECT(strcmp(p, "00") == 0, "rank 12 matched rank 1: %s", p);

  /* '*' for rank and for occurrence; several entries on one site share its counter. */
  EXPECT_OK(init_with("sample_batch:*:*:eio", 5), "every time, every rank");
  pattern("sample_batch", 4, p);
  EXPECT(strcmp(p, "1111") == 0, "*:*: pattern %s", p);
  EXPECT_OK(init_with("ckpt_write:*:2:eio,ckpt_write:3:4:enospc,grad_allreduce:*:1:eio", 3),
            "three entries");
  pattern("ckpt_write", 5, p);
  EXPECT(strcmp(p, "01010") == 0, "two entries on one site: pattern %s", p);
  pattern("grad_allreduce", 2, p);
  EXPECT(strcmp(p, "10") == 0, "third entry: pattern %s", p);

  /* Re-init resets the counters. */
  EXPECT_OK(init_with("ckpt_write:0:1:eio", 0), "re-init");
  pattern("ckpt_write", 2, p);
  EXPECT(strcmp(p, "10") == 0, "after re-init: pattern %s", p);
  cf_fault_reset();
  pattern("ckpt_write", 2, p);
  EXPECT(strcmp(p, "00") == 0 && !cf_fault_armed_, "after reset: pattern %s", p);

  /* Malformed values: an error naming CF_FAULT and what was expected; nothing stays armed. */
  static const struct {
    const char *spec, *want;
  } bad[] = {
      {"ckpt_write:0:3", "expected site:rank:occurrence:action"},
      {"ckpt_write:0:3:eio:x", "too many fields"},
      {"ckpt_write", "too few fields"},
      {"ckpt.write:0:3:eio", "unknown site 'ckpt.write'"},
      {":0:3:eio", "unknown site ''"},
      {"ckpt_write:-1:3:eio", "rank '-1'"},
      {"ckpt_write::3:eio", "rank ''"},
      {"ckpt_write:x:3:eio", "rank 'x'"},
      {"ckpt_write:0:0:eio", "occurrence '0' is not a count >= 1"},
      {"ckpt_write:0:3x:eio", "occurrence '3x'"},
      {"ckpt_write:0:99999999999999999999999:eio", "occurrence"},
      {"ckpt_write:0:3:explode", "unknown action 'explode'"},
      {"ckpt_write:0:3:", "unknown action ''"},
      {"ckpt_write:0:3:delay=", "delay ''"},
      {"ckpt_write:0:3:delay=-1", "delay '-1'"},
      {"ckpt_write:0:3:delay=1s", "delay '1s'"},
      {"ckpt_write:0:3:delay=nan", "delay 'nan'"},
      {"ckpt_write:0:1:eio,", "entry 2 ''"},
      {"ckpt_write:0:1:eio,,h5_write:0:1:eio", "entry 2"},
      {"ckpt_write:0:1:eio,h5_write:0:1:boom", "entry 2 'h5_write:0:1:boom'"},
      {"grad_allreduce:0:1:nan", "action 'nan' needs a value site"},
      {"ckpt_write:0:1:inf", "action 'inf' needs a value site"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    st = init_with(bad[i].spec, 0);
    EXPECT(st == CF_EINVAL, "'%s': status %d, want CF_EINVAL", bad[i].spec, (int)st);
    EXPECT(strncmp(cf_errmsg(), "CF_FAULT: ", 10) == 0, "'%s': message '%s' does not name CF_FAULT",
           bad[i].spec, cf_errmsg());
    EXPECT(strstr(cf_errmsg(), bad[i].want) != NULL, "'%s': message '%s' lacks '%s'", bad[i].spec,
           cf_errmsg(), bad[i].want);
    EXPECT(!cf_fault_armed_, "'%s': armed after an error", bad[i].spec);
    cf_err_clear();
  }
  /* A bad entry for another rank is still an error (every rank must reject the same value). */
  EXPECT_FAIL(init_with("ckpt_write:1:1:boom", 0), "unknown action", "bad entry, other rank");
  char big[5000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  EXPECT_FAIL(init_with(big, 0), "CF_FAULT: value is 4999 characters", "too long");

  /* delay sleeps about that long, then the call succeeds; other occurrences do not sleep. */
  EXPECT_OK(init_with("sample_batch:0:2:delay=0.3", 0), "delay");
  double t0 = now_s();
  EXPECT_OK(cf_fault_point("sample_batch"), "delay: 1st");
  double t1 = now_s();
  EXPECT_OK(cf_fault_point("sample_batch"), "delay: 2nd");
  double t2 = now_s();
  EXPECT_OK(cf_fault_point("sample_batch"), "delay: 3rd");
  double t3 = now_s();
  EXPECT(t1 - t0 < 0.05, "delay: 1st call took %.3f s", t1 - t0);
  EXPECT(t2 - t1 >= 0.3 && t2 - t1 < 1.0, "delay=0.3 took %.3f s", t2 - t1);
  EXPECT(t3 - t2 < 0.05, "delay: 3rd call took %.3f s", t3 - t2);
  EXPECT_OK(init_with("sample_batch:0:1:delay=0", 0), "delay=0");
  EXPECT_OK(cf_fault_point("sample_batch"), "delay=0 call");

  /* nan / inf at the value sites: the 2nd nan_grad and every nan_loss arrival of rank 0 are
   * poisoned, the value is left alone otherwise; other actions work there too. */
  EXPECT_OK(init_with("nan_grad:0:2:nan,nan_loss:0:*:inf,nan_grad:1:1:inf", 0), "nan/inf");
  double g[3] = {1.5, 1.5, 1.5}, l = 2.0;
  for (int i = 0; i < 3; i++)
    EXPECT_OK(cf_fault_poison("nan_grad", &g[i]), "poison nan_grad");
  EXPECT(g[0] == 1.5 && isnan(g[1]) && g[2] == 1.5, "nan_grad: %g %g %g", g[0], g[1], g[2]);
  EXPECT_OK(cf_fault_poison("nan_loss", &l), "poison nan_loss");
  EXPECT(isinf(l) && l > 0, "nan_loss: %g", l);
  EXPECT_OK(init_with("nan_loss:0:1:eio", 0), "eio at a value site");
  l = 2.0;
  EXPECT(cf_fault_poison("nan_loss", &l) == CF_EIO && l == 2.0, "eio at nan_loss");
  cf_err_clear();
  EXPECT_OK(init_with(NULL, 0), "unset");
  EXPECT_OK(cf_fault_poison("nan_grad", &l), "unset poison");
  EXPECT(l == 2.0, "unset: value changed to %g", l);

  /* hang, kill and exit (in children reaching ckpt_write 3 times as rank 1). */
  int ws = child("ckpt_write:1:2:exit", 10);
  EXPECT(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "exit: wait status %d", ws);
  ws = child("ckpt_write:1:2:kill", 10);
  EXPECT(ws >= 0 && WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL, "kill: wait status %d", ws);
  ws = child("ckpt_write:1:3:hang", 1.0);
  EXPECT(ws == -1, "hang: child ended by itself (wait status %d)", ws);
  ws = child("ckpt_write:0:2:hang", 10); /* other rank: the child runs through */
  EXPECT(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "hang on rank 0: wait status %d", ws);
  ws = child("ckpt_write:1:4:exit", 10); /* only 3 arrivals: never fires */
  EXPECT(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit at 4: wait status %d", ws);

  unsetenv("CF_FAULT");
  return cf_test_done("test_fault");
}
