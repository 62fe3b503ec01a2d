/* watchdog.c: the -par_timeout monitor thread (see watchdog.h).
 *
 * The communicating thread is the only writer of the position record; it publishes each change
 * under a sequence counter (a seqlock: odd while writing), so the monitor reads a consistent
 * snapshot without a lock and enter/leave never block. All shared fields are C11 atomics
 * accessed with relaxed order; the fences around the counter order them. */
#include "calmflow/watchdog.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WD_DEPTH 8

static atomic_int g_on; /* enter/leave/where record only while the monitor runs */
static atomic_uint_least64_t g_seq;
static atomic_int g_depth;                   /* communications currently entered */
static _Atomic(const char *) g_op[WD_DEPTH]; /* (WD_DEPTH) innermost recorded levels */
static atomic_int g_peer[WD_DEPTH];
static atomic_int_least64_t g_t_ns; /* monotonic time of the last enter or leave */
static atomic_int_least64_t g_step, g_micro;
static atomic_int g_stage;

static pthread_t g_thread;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;
static int g_stop;    /* under g_mu */
static int g_started; /* touched by start/stop only (the owning thread) */
static double g_timeout;
static int g_rank;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Seqlock write side (one writer: the communicating thread). */
static inline uint64_t write_begin(void) {
  uint64_t s = atomic_load_explicit(&g_seq, memory_order_relaxed);
  atomic_store_explicit(&g_seq, s + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  return s;
}
static inline void write_end(uint64_t s) {
  atomic_store_explicit(&g_seq, s + 2, memory_order_release);
}

void cf_watchdog_where(int64_t step, int stage, int64_t microbatch) {
  if (!atomic_load_explicit(&g_on, memory_order_relaxed)) return;
  uint64_t s = write_begin();
  atomic_store_explicit(&g_step, step, memory_order_relaxed);
  atomic_store_explicit(&g_stage, stage, memory_order_relaxed);
  atomic_store_explicit(&g_micro, microbatch, memory_order_relaxed);
  write_end(s);
}

void cf_watchdog_enter(const char *op, int peer) {
  if (!atomic_load_explicit(&g_on, memory_order_relaxed)) return;
  int64_t t = now_ns();
  uint64_t s = write_begin();
  int d = atomic_load_explicit(&g_depth, memory_order_relaxed);
  if (d < WD_DEPTH) {
    atomic_store_explicit(&g_op[d], op, memory_order_relaxed);
    atomic_store_explicit(&g_peer[d], peer, memory_order_relaxed);
  }
  atomic_store_explicit(&g_depth, d + 1, memory_order_relaxed);
  atomic_store_explicit(&g_t_ns, t, memory_order_relaxed);
  write_end(s);
}

void cf_watchdog_leave(void) {
  if (!atomic_load_explicit(&g_on, memory_order_relaxed)) return;
  int d = atomic_load_explicit(&g_depth, memory_order_relaxed);
  if (d <= 0) return; /* unmatched leave: nothing to end */
  int64_t t = d > 1 ? now_ns() : 0;
  uint64_t s = write_begin();
  atomic_store_explicit(&g_depth, d - 1, memory_order_relaxed);
  if (d > 1) atomic_store_explicit(&g_t_ns, t, memory_order_relaxed);
  write_end(s);
}

struct snapshot {
  int depth, peer, stage;
  const char *op;
  int64_t t_ns, step, micro;
};

/* Seqlock read side: 1 with a consistent snapshot, 0 if a write was in progress. */
static int read_snapshot(struct snapshot *sn) {
  uint64_t s1 = atomic_load_explicit(&g_seq, memory_order_acquire);
  if (s1 & 1) return 0;
  sn->depth = atomic_load_explicit(&g_depth, memory_order_relaxed);
  int top = (sn->depth < WD_DEPTH ? sn->depth : WD_DEPTH) - 1;
  sn->op = top >= 0 ? atomic_load_explicit(&g_op[top], memory_order_relaxed) : NULL;
  sn->peer = top >= 0 ? atomic_load_explicit(&g_peer[top], memory_order_relaxed) : -1;
  sn->t_ns = atomic_load_explicit(&g_t_ns, memory_order_relaxed);
  sn->step = atomic_load_explicit(&g_step, memory_order_relaxed);
  sn->stage = atomic_load_explicit(&g_stage, memory_order_relaxed);
  sn->micro = atomic_load_explicit(&g_micro, memory_order_relaxed);
  atomic_thread_fence(memory_order_acquire);
  return atomic_load_explicit(&g_seq, memory_order_relaxed) == s1;
}

/* Write the one "stuck" line and end the process. */
static void report_and_exit(const struct snapshot *sn, double stuck_s) {
  char with[48], at[128] = "", line[512];
  if (sn->peer >= 0)
    snprintf(with, sizeof with, "peer %d", sn->peer);
  else
    snprintf(with, sizeof with, "collective");
  size_t n = 0;
  if (sn->step >= 0)
    n += (size_t)snprintf(at + n, sizeof at - n, "%s step %lld", n ? "," : " at",
                          (long long)sn->step);
  if (sn->stage >= 0 && n < sizeof at)
    n += (size_t)snprintf(at + n, sizeof at - n, "%s stage %d", n ? "," : " at", sn->stage);
  if (sn->micro >= 0 && n < sizeof at)
    n += (size_t)snprintf(at + n, sizeof at - n, "%s micro-batch %lld", n ? "," : " at",
                          (long long)sn->micro);
  int k = snprintf(line, sizeof line,
                   "calmflow: error: rank %d stuck %.1f s in %s (%s)%s; -par_timeout %g exceeded, "
                   "aborting\n",
                   g_rank, stuck_s, sn->op ? sn->op : "?", with, at, g_timeout);
  if (k > 0) {
    size_t len = (size_t)k < sizeof line ? (size_t)k : sizeof line - 1;
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
  }
  _exit(CF_EXIT_WATCHDOG);
}

static void *monitor(void *arg) {
  (void)arg;
  int64_t timeout_ns = (int64_t)(g_timeout * 1e9);
  double poll = g_timeout / 10;
  if (poll < 0.005) poll = 0.005;
  if (poll > 0.25) poll = 0.25;
  int64_t poll_ns = (int64_t)(poll * 1e9);
  pthread_mutex_lock(&g_mu);
  while (!g_stop) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    int64_t ns = (int64_t)until.tv_nsec + poll_ns;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    int rc = pthread_cond_timedwait(&g_cv, &g_mu, &until);
    if (g_stop) break;
    if (rc != 0 && rc != ETIMEDOUT) continue;
    struct snapshot sn;
    if (!read_snapshot(&sn) || sn.depth <= 0) continue;
    int64_t stuck = now_ns() - sn.t_ns;
    if (stuck >= timeout_ns) report_and_exit(&sn, (double)stuck * 1e-9);
  }
  pthread_mutex_unlock(&g_mu);
  return NULL;
}

cf_status cf_watchdog_start(double timeout_s, int rank) {
  CF_CHECK(isfinite(timeout_s) && timeout_s >= 0, CF_EINVAL,
           "-par_timeout must be a number of seconds >= 0 (0 = off), got %g", timeout_s);
  CF_CHECK(!g_started, CF_EINVAL, "watchdog already started (cf_watchdog_start called twice)");
  if (timeout_s == 0) return CF_OK;
  g_timeout = timeout_s;
  g_rank = rank;
  atomic_store(&g_depth, 0);
  atomic_store(&g_step, -1);
  atomic_store(&g_stage, -1);
  atomic_store(&g_micro, -1);
  atomic_store(&g_t_ns, 0);

  pthread_condattr_t ca;
  CF_CHECK(pthread_condattr_init(&ca) == 0, CF_ENOMEM, "watchdog: cannot create a condition");
  int rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (rc == 0) rc = pthread_cond_init(&g_cv, &ca);
  pthread_condattr_destroy(&ca);
  CF_CHECK(rc == 0, CF_ENOMEM, "watchdog: cannot create a condition variable: %s", strerror(rc));
  g_stop = 0;
  atomic_store(&g_on, 1);

  /* The monitor takes no signals: preemption and terminal signals go to the main thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&g_thread, NULL, monitor, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    atomic_store(&g_on, 0);
    pthread_cond_destroy(&g_cv);
    return cf_err(CF_ENOMEM, "watchdog: cannot start the monitor thread: %s", strerror(rc));
  }
  g_started = 1;
  return CF_OK;
}

void cf_watchdog_stop(void) {
  if (!g_started) return;
  pthread_mutex_lock(&g_mu);
  g_stop = 1;
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
  pthread_join(g_thread, NULL);
  pthread_cond_destroy(&g_cv);
  atomic_store(&g_on, 0);
  atomic_store(&g_depth, 0);
  g_started = 0;
}

int cf_watchdog_running(void) {
  return g_started;
}
