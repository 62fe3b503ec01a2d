/* fault.h: fault injection for the reliability tests, driven by one environment variable.
 *
 *   CF_FAULT="site:rank:occurrence:action[,site:rank:occurrence:action...]"
 *
 * e.g. CF_FAULT=grad_allreduce:1:3:hang makes rank 1 hang the 3rd time it reaches the site
 * "grad_allreduce". Fields:
 *   site        one of the names below (an unknown name is an error, so a typo cannot make a
 *               fault test pass for the wrong reason)
 *   rank        a rank number, or '*' for every rank
 *   occurrence  n >= 1: the n-th time this rank reaches the site (counted per site and rank,
 *               from 1, since cf_fault_init); '*': every time
 *   action      hang      sleep forever, outside any communication (stopped only by a signal)
 *               kill      raise(SIGKILL) on itself (no cleanup, no flush)
 *               exit      _exit(1) (no atexit handlers, no stdio flush, no MPI_Finalize)
 *               eio       cf_fault_point returns CF_EIO with the message
 *                         "injected fault at <site> (eio)" and sets errno = EIO
 *               enospc    the same with "(enospc)" and errno = ENOSPC
 *               delay=S   sleep S seconds (S >= 0, fractions allowed), then continue
 *               nan, inf  only at the value sites (nan_grad, nan_loss): the value the site hands
 *                         to cf_fault_poison becomes NaN / +Inf (a parse error elsewhere)
 * hang, kill and exit print one line "calmflow: injected fault: rank R <action> at <site>
 * (occurrence N)" to stderr first, so a log shows why the process stopped. When several entries
 * match the same call they act in the order written; the first eio/enospc ends the call.
 *
 * Sites (the list grows; add a name here and in `sites` in src/core/fault.c):
 *   grad_allreduce  before the gradient all-reduce of a training step (outside the
 *                   watchdog's enter/leave, so a hang there is a rank that never arrives)
 *   ckpt_write      before a checkpoint tensor is written
 *   ckpt_rename     before the temporary checkpoint file is renamed into place
 *   h5_write        before a dataset is written by the HDF5 point-set writer
 *   sample_batch    before a batch of sequences is rolled out
 *   pipeline_send   before a pipeline stage sends a micro-batch's activations to the next
 *   nan_grad        value site: one element of this rank's gradient (the first of the range
 *                   it updates), after the data-parallel reduction of a training step
 *   nan_loss        value site: this rank's share of a training step's loss, before the loss
 *                   all-reduce
 *
 * Cost: when CF_FAULT is unset, cf_fault_point is one predictable branch (an inline test of a
 * global flag), so call sites stay in release builds.
 * Threads: call from the thread that calls MPI (the counters are not locked).
 */
#ifndef CALMFLOW_FAULT_H
#define CALMFLOW_FAULT_H

#include "calmflow/error.h"

/* Local. Read CF_FAULT from the environment and keep the entries that apply to `rank`
 * (resetting all counters; calling it again re-reads the variable). Unset or empty: no faults.
 * A malformed value is CF_EINVAL with a message naming CF_FAULT, the entry and what was
 * expected; no fault is armed then. */
cf_status cf_fault_init(int rank);

/* Local. Disarm all faults (as if CF_FAULT were unset). */
void cf_fault_reset(void);

/* Non-zero while at least one entry is armed for this rank. Read through cf_fault_point. */
extern int cf_fault_armed_;

/* Local. The slow path of cf_fault_point; call cf_fault_point instead. */
cf_status cf_fault_hit_(const char *site);

/* Local. The slow path of cf_fault_poison; call cf_fault_poison instead. */
cf_status cf_fault_poison_(const char *site, double *x);

/* Local. Count one arrival at `site` and perform what CF_FAULT says for this arrival: hang,
 * kill and exit do not return; delay returns CF_OK after sleeping; eio/enospc return CF_EIO
 * (propagate it with CF_TRY like a real i/o failure). CF_OK otherwise. */
static inline cf_status cf_fault_point(const char *site) {
  if (__builtin_expect(!cf_fault_armed_, 1)) return CF_OK;
  return cf_fault_hit_(site);
}

/* Local. cf_fault_point for a value site: the same arrival counting and actions, and nan / inf
 * replace *x by NaN / +Inf (x is left alone otherwise). */
static inline cf_status cf_fault_poison(const char *site, double *x) {
  if (__builtin_expect(!cf_fault_armed_, 1)) return CF_OK;
  return cf_fault_poison_(site, x);
}

#endif
