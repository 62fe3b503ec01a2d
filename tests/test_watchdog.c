/* test_watchdog.c: the -par_timeout watchdog.
 *
 *   test_watchdog unit
 *       one process, no MPI: argument checks, and forked children that get stuck (must end
 *       with CF_EXIT_WATCHDOG and one exact "stuck" line) or stay busy without getting stuck
 *       (must end normally).
 *   test_watchdog loop TIMEOUT NSTEPS SLEEP_MS   (under mpiexec; driven by test_watchdog.sh)
 *       NSTEPS steps, each: sleep SLEEP_MS outside communication, the fault point
 *       "grad_allreduce", then one MPI_Allreduce inside cf_watchdog_enter/leave with the
 *       watchdog at TIMEOUT seconds. CF_FAULT=grad_allreduce:1:3:hang makes rank 1 stop before
 *       its 3rd all-reduce, so rank 0 waits in step 3's and its watchdog must end the job.
 */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "calmflow/fault.h"
#include "calmflow/watchdog.h"
#include "cf_test.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s) {
  struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

/* Run body() in a child whose stderr goes to a pipe; wait at most limit_s. Returns the wait
 * status (or -1 if the child had to be killed), the child's stderr in err, the seconds taken. */
static int run_child(void (*body)(void), double limit_s, char *err, size_t errcap, double *secs) {
  int fd[2];
  if (pipe(fd) != 0) return -2;
  double t0 = now_s();
  pid_t pid = fork();
  if (pid < 0) return -2;
  if (pid == 0) {
    close(fd[0]);
    dup2(fd[1], STDERR_FILENO);
    body();
    _exit(0);
  }
  close(fd[1]);
  int status = 0, done = 0;
  while (now_s() - t0 < limit_s) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      done = 1;
      break;
    }
    sleep_s(0.01);
  }
  if (!done) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    status = -1;
  }
  *secs = now_s() - t0;
  size_t n = 0;
  ssize_t r;
  while (n + 1 < errcap && (r = read(fd[0], err + n, errcap - 1 - n)) > 0)
    n += (size_t)r;
  err[n] = '\0';
  close(fd[0]);
  return status;
}

/* A rank stuck in a point-to-point receive from rank 3 at step 5, stage 2, micro-batch 4. */
static void child_stuck_p2p(void) {
  if (cf_watchdog_start(0.3, 7) != CF_OK) _exit(10);
  cf_watchdog_where(5, 2, 4);
  cf_watchdog_enter("stage_recv", 3);
  sleep_s(5);
  _exit(11); /* the watchdog should have ended the process */
}

/* Nested: the inner operation ends, the outer one then stays too long; reported as outer. */
static void child_stuck_nested(void) {
  if (cf_watchdog_start(0.3, 0) != CF_OK) _exit(10);
  cf_watchdog_where(9, -1, -1);
  cf_watchdog_enter("ckpt_agree", -1);
  cf_watchdog_enter("inner_bcast", -1);
  sleep_s(0.1);
  cf_watchdog_leave();
  sleep_s(5);
  _exit(11);
}

/* 1.5 s of short communications (each 20 ms) with a 0.3 s timeout: never stuck. */
static void child_busy(void) {
  if (cf_watchdog_start(0.3, 0) != CF_OK) _exit(10);
  double t0 = now_s();
  for (int64_t i = 0; now_s() - t0 < 1.5; i++) {
    cf_watchdog_where(i, 0, 0);
    cf_watchdog_enter("grad_allreduce", -1);
    sleep_s(0.02);
    cf_watchdog_leave();
    sleep_s(0.01);
  }
  /* Also: a long time outside communication is not a hang of the watchdog's kind. */
  sleep_s(0.6);
  cf_watchdog_stop();
  _exit(0);
}

/* Timeout 0: the watchdog is off and enter without leave is harmless. */
static void child_off(void) {
  if (cf_watchdog_start(0, 0) != CF_OK) _exit(10);
  if (cf_watchdog_running()) _exit(12);
  cf_watchdog_enter("grad_allreduce", -1);
  sleep_s(0.5);
  _exit(0);
}

static int unit(void) {
  EXPECT_FAIL(cf_watchdog_start(-1, 0), "-par_timeout", "negative timeout");
  EXPECT_FAIL(cf_watchdog_start(NAN, 0), "-par_timeout", "NaN timeout");
  EXPECT(!cf_watchdog_running(), "running after a failed start");
  EXPECT_OK(cf_watchdog_start(30, 0), "start");
  EXPECT(cf_watchdog_running(), "not running after start");
  EXPECT_FAIL(cf_watchdog_start(30, 0), "already started", "second start");
  cf_watchdog_enter("x", -1);
  cf_watchdog_leave();
  cf_watchdog_leave(); /* unmatched: ignored */
  cf_watchdog_stop();
  EXPECT(!cf_watchdog_running(), "running after stop");
  cf_watchdog_stop(); /* second stop: harmless */
  EXPECT_OK(cf_watchdog_start(30, 0), "start after stop");
  cf_watchdog_stop();

  char err[4096];
  double secs;
  int st = run_child(child_stuck_p2p, 10, err, sizeof err, &secs);
  EXPECT(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == CF_EXIT_WATCHDOG,
         "stuck p2p: status %d (exited %d code %d), want exit %d", st, st >= 0 && WIFEXITED(st),
         st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, CF_EXIT_WATCHDOG);
  EXPECT(secs > 0.25 && secs < 3, "stuck p2p: took %.2f s with a 0.3 s timeout", secs);
  EXPECT(strncmp(err, "calmflow: error: rank 7 stuck 0.", 32) == 0,
         "stuck p2p: stderr '%s' does not start with the message", err);
  EXPECT(strstr(err, " s in stage_recv (peer 3) at step 5, stage 2, micro-batch 4; "
                     "-par_timeout 0.3 exceeded, aborting\n") != NULL,
         "stuck p2p: stderr '%s' lacks the op, peer and position", err);
  EXPECT(strchr(err, '\n') == err + strlen(err) - 1, "stuck p2p: not exactly one line: '%s'", err);

  st = run_child(child_stuck_nested, 10, err, sizeof err, &secs);
  EXPECT(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == CF_EXIT_WATCHDOG, "stuck nested: status %d",
         st);
  EXPECT(strstr(err, "rank 0 stuck") && strstr(err, "in ckpt_agree (collective) at step 9; "),
         "stuck nested: stderr '%s'", err);

  st = run_child(child_busy, 10, err, sizeof err, &secs);
  EXPECT(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "busy: status %d, stderr '%s'", st, err);
  EXPECT(err[0] == '\0', "busy: unexpected stderr '%s'", err);

  st = run_child(child_off, 10, err, sizeof err, &secs);
  EXPECT(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "off: status %d, stderr '%s'", st, err);
  return cf_test_done("test_watchdog unit");
}

static int loop(double timeout, int nsteps, double sleep_ms) {
  int provided, rank, size;
  MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cf_test_rank = rank;
  if (cf_fault_init(rank) != CF_OK || cf_watchdog_start(timeout, rank) != CF_OK) {
    fprintf(stderr, "calmflow: error: %s\n", cf_errmsg());
    MPI_Abort(MPI_COMM_WORLD, CF_EXIT_ERROR);
  }
  for (int step = 1; step <= nsteps; step++) {
    cf_watchdog_where(step, 0, 0);
    sleep_s(sleep_ms * 1e-3);
    EXPECT_OK(cf_fault_point("grad_allreduce"), "fault point");
    double x = rank + step, sum = 0;
    cf_watchdog_enter("grad_allreduce", -1);
    MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    cf_watchdog_leave();
    double want = size * (size - 1) / 2.0 + (double)size * step;
    EXPECT(sum == want, "step %d: sum %g, want %g", step, sum, want);
  }
  cf_watchdog_stop();
  int rc = cf_test_done("test_watchdog loop");
  MPI_Finalize();
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "unit") == 0) return unit();
  if (argc == 5 && strcmp(argv[1], "loop") == 0)
    return loop(atof(argv[2]), atoi(argv[3]), atof(argv[4]));
  fprintf(stderr, "usage: test_watchdog unit | loop TIMEOUT NSTEPS SLEEP_MS\n");
  return 2;
}
