/* reducer.c: bucketed, overlapped gradient all-reduce (see reducer.h). */
#include "calmflow/reducer.h"

#include "calmflow/commstat.h"
#include "calmflow/mpichunk.h"
#include "calmflow/watchdog.h"

#include <string.h>

cf_status cf_reducer_init(struct cf_reducer *r, MPI_Comm comm, float *buf, size_t n,
                          size_t bucket) {
  memset(r, 0, sizeof *r);
  CF_CHECK(bucket >= 1, CF_EINVAL, "option -par_bucket_mb: bucket must hold at least one value");
  r->comm = comm;
  CF_MPI(MPI_Comm_size(comm, &r->size));
  r->buf = buf;
  r->n = n;
  /* never more buckets than requests we can hold */
  size_t minb = n / (CF_REDUCER_MAX_BUCKETS - 2) + 1;
  r->bucket = bucket < minb ? minb : bucket;
  r->hi = n;
  return CF_OK;
}

void cf_reducer_begin(struct cf_reducer *r) {
  r->hi = r->n;
  r->nreq = 0;
  r->nwaited = 0;
}

/* wait for the oldest bucket in flight (its time counts as data-parallel wait); inside
 * backward, so bracketed for the watchdog as cf_reducer_finish's wait is by its caller */
static cf_status wait_oldest(struct cf_reducer *r) {
  double t0 = cf_commstat_now();
  cf_watchdog_enter("grad_allreduce", -1);
  int e = MPI_Wait(&r->req[r->nwaited], MPI_STATUS_IGNORE);
  cf_watchdog_leave();
  if (r->size > 1) cf_commstat_add(CF_COMM_DP, 0.0, cf_commstat_now() - t0);
  CF_MPI(e);
  r->nwaited++;
  return CF_OK;
}

static cf_status start(struct cf_reducer *r, size_t lo) {
  size_t cnt = r->hi - lo;
  /* a range final at once (a whole layer's gradients) goes out in buckets, so that the in-flight
   * bound holds MPI's temporaries to a few buckets; MPI counts are int besides */
  const size_t chunk = cf_mpi_chunk(), most = r->bucket < chunk ? r->bucket : chunk;
  while (cnt > 0) {
    size_t piece = cnt > most ? most : cnt;
    if (r->nreq == CF_REDUCER_MAX_BUCKETS) { /* no request left (tiny chunks): the rest now */
      piece = cnt;
      CF_MPI(cf_mpi_allreduce(MPI_IN_PLACE, r->buf + r->hi - piece, piece, MPI_FLOAT, MPI_SUM,
                              r->comm));
    } else {
      if (r->nreq - r->nwaited >= CF_REDUCER_IN_FLIGHT) CF_TRY(wait_oldest(r));
      CF_MPI(MPI_Iallreduce(MPI_IN_PLACE, r->buf + r->hi - piece, (int)piece, MPI_FLOAT, MPI_SUM,
                            r->comm, &r->req[r->nreq++]));
      if (r->nreq - r->nwaited > r->most_in_flight) r->most_in_flight = r->nreq - r->nwaited;
    }
    r->hi -= piece;
    cnt -= piece;
    r->bytes += (double)piece * sizeof(float);
    if (r->size > 1) cf_commstat_add(CF_COMM_DP, (double)piece * sizeof(float), 0.0);
    r->buckets++;
  }
  return CF_OK;
}

cf_status cf_reducer_ready(void *reducer, size_t offset) {
  struct cf_reducer *r = reducer;
  if (offset < r->hi && r->hi - offset >= r->bucket) CF_TRY(start(r, offset));
  if (r->nreq > r->nwaited) { /* give MPI a chance to progress the buckets in flight */
    int done;
    CF_MPI(MPI_Testall(r->nreq - r->nwaited, r->req + r->nwaited, &done, MPI_STATUSES_IGNORE));
  }
  return CF_OK;
}

cf_status cf_reducer_finish(struct cf_reducer *r) {
  if (r->hi > 0) CF_TRY(start(r, 0));
  double t0 = cf_commstat_now();
  int e = MPI_Waitall(r->nreq - r->nwaited, r->req + r->nwaited, MPI_STATUSES_IGNORE);
  if (r->size > 1) cf_commstat_add(CF_COMM_DP, 0.0, cf_commstat_now() - t0);
  CF_MPI(e);
  r->nreq = 0;
  r->nwaited = 0;
  return CF_OK;
}
