/* watchdog.h: the communication watchdog behind -par_timeout.
 *
 * A monitor thread (one per rank) watches where the rank is. Code says where it is in the
 * schedule with cf_watchdog_where(step, stage, micro-batch) and brackets every communication
 * with cf_watchdog_enter(op, peer) / cf_watchdog_leave(). If the rank stays inside one
 * communication longer than the timeout, the thread writes one line to stderr,
 *
 *   calmflow: error: rank 0 stuck 2.0 s in grad_allreduce (collective) at step 12, stage 0,
 *   micro-batch 1; -par_timeout 2 exceeded, aborting
 *
 * (one line in the real output) and ends the process with _exit(CF_EXIT_WATCHDOG) (exitcodes.h).
 * It does not call MPI_Abort: a second thread must not call MPI while the main thread is inside
 * MPI unless MPI was initialized with MPI_THREAD_MULTIPLE. The launcher (mpiexec, or srun with
 * --kill-on-bad-exit) then ends the other ranks; docs/exit-codes.md has the details.
 *
 * Which rank reports: the one waiting inside the communication. A rank that hangs outside any
 * communication (a deadlocked computation, a fault injected with CF_FAULT=...:hang) is not
 * reported itself; its partners are, naming the step they were at.
 *
 * Threads: the monitor thread calls no MPI and stdio only through write(2). Strictly, MPI
 * requires MPI_Init_thread with at least MPI_THREAD_FUNNELED for a process that has more than
 * one thread; the watchdog works the same under MPI_THREAD_SINGLE with Open MPI.
 * All functions except start/stop are called from the thread that communicates.
 *
 * Cost: with the watchdog off, enter/leave/where are one branch on a flag. With it on, enter is
 * a clock_gettime(CLOCK_MONOTONIC) plus a few relaxed atomic stores, leave two stores.
 */
#ifndef CALMFLOW_WATCHDOG_H
#define CALMFLOW_WATCHDOG_H

#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/exitcodes.h"

/* Local. Start the monitor thread for `rank` (used in the message) with the timeout in seconds;
 * 0 leaves the watchdog off (CF_OK). A negative or non-finite timeout is CF_EINVAL naming
 * -par_timeout; starting twice without a stop is CF_EINVAL. Resets the position (where) to
 * "no step yet". */
cf_status cf_watchdog_start(double timeout_s, int rank);

/* Local. Stop and join the monitor thread (returns at once; safe when not started). */
void cf_watchdog_stop(void);

/* Local. Non-zero while the monitor thread runs. */
int cf_watchdog_running(void);

/* Local. Record the position in the schedule: training step (or sampling batch), pipeline
 * stage, micro-batch. Negative values mean "not applicable" and are left out of the message. */
void cf_watchdog_where(int64_t step, int stage, int64_t microbatch);

/* Local. The rank enters communication `op` (a string that outlives the call, normally a
 * literal such as "grad_allreduce") with `peer`, the partner rank of a point-to-point
 * operation, or -1 for a collective. Pairs may nest (8 levels are recorded); the innermost is
 * reported. The timer restarts at every enter and leave: the rank is stuck when it has been
 * inside communication, without entering or leaving any, longer than the timeout. */
void cf_watchdog_enter(const char *op, int peer);

/* Local. The rank leaves the innermost communication. */
void cf_watchdog_leave(void);

#endif
