/* reducer.c: bucketed, overlapped gradient all-reduce (see reducer.h). */
#include "calmflow/reducer.h"

#include "calmflow/commstat.h"
#include "calmflow/mpichunk.h"

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
}

static cf_status start(struct cf_reducer *r, size_t lo) {
  size_t cnt = r->hi - lo;
  const size_t most = cf_mpi_chunk(); /* MPI counts are int: split very large ranges */
  while (cnt > 0) {
    size_t piece = cnt > most ? most : cnt;
    if (r->nreq == CF_REDUCER_MAX_BUCKETS) { /* no request left (tiny chunks): the rest now */
      piece = cnt;
      CF_MPI(cf_mpi_allreduce(MPI_IN_PLACE, r->buf + r->hi - piece, piece, MPI_FLOAT, MPI_SUM,
                              r->comm));
    } else
      CF_MPI(MPI_Iallreduce(MPI_IN_PLACE, r->buf + r->hi - piece, (int)piece, MPI_FLOAT, MPI_SUM,
                            r->comm, &r->req[r->nreq++]));
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
  if (r->nreq > 0) { /* give MPI a chance to progress the buckets already started */
    int done;
    CF_MPI(MPI_Testall(r->nreq, r->req, &done, MPI_STATUSES_IGNORE));
  }
  return CF_OK;
}

cf_status cf_reducer_finish(struct cf_reducer *r) {
  if (r->hi > 0) CF_TRY(start(r, 0));
  double t0 = cf_commstat_now();
  int e = MPI_Waitall(r->nreq, r->req, MPI_STATUSES_IGNORE);
  if (r->size > 1) cf_commstat_add(CF_COMM_DP, 0.0, cf_commstat_now() - t0);
  CF_MPI(e);
  r->nreq = 0;
  return CF_OK;
}
