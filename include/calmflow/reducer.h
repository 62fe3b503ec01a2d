/* reducer.h: data-parallel gradient all-reduce in buckets, started while backward still runs.
 *
 * The model reports (cf_model.grad_ready) each time a suffix [offset, n) of its gradient arena is
 * final; the reducer starts MPI_Iallreduce (sum, in place) over the newly final range, in pieces
 * of at most `bucket` floats, as soon as it holds at least `bucket` floats, and
 * cf_reducer_finish starts the rest and waits for all.
 * Each element is summed exactly once over the same ranks as a single MPI_Allreduce would, so
 * the result differs from it at most by the summation order inside MPI.
 *
 * At most CF_REDUCER_IN_FLIGHT buckets are in flight: starting one more first waits for the
 * oldest. MPI's non-blocking all-reduce holds temporaries of about its message's size until it
 * completes, so with a whole layer per message and every message in flight a data-parallel
 * rank held up to a second copy of its gradients (2 ranks, 200 MiB of gradients: peak RSS
 * 1019-1072 MiB per rank, against 890 MiB with the bound and 882 MiB on one rank).
 */
#ifndef CALMFLOW_REDUCER_H
#define CALMFLOW_REDUCER_H

#include <mpi.h>
#include <stddef.h>

#include "calmflow/error.h"

#define CF_REDUCER_MAX_BUCKETS 4096
#define CF_REDUCER_IN_FLIGHT 4 /* buckets started and not yet waited for, at most */

struct cf_reducer {
  MPI_Comm comm; /* borrowed: the data-parallel communicator */
  int size;      /* of comm */
  float *buf;    /* (n) the gradient arena, borrowed */
  size_t n;
  size_t bucket;      /* floats per bucket (>= 1) */
  size_t hi;          /* [hi, n) has been started */
  int nreq;           /* requests started since begin */
  int nwaited;        /* [0, nwaited) of them completed and waited for */
  int most_in_flight; /* the most requests in flight at once since init */
  MPI_Request req[CF_REDUCER_MAX_BUCKETS];
  double bytes; /* bytes reduced by this rank since init */
  int buckets;  /* buckets started since init */
};

/* Local. Reduce buf (n floats) over comm in buckets of about `bucket` floats. */
cf_status cf_reducer_init(struct cf_reducer *r, MPI_Comm comm, float *buf, size_t n, size_t bucket);
/* Local. Arm for one backward: nothing started yet. */
void cf_reducer_begin(struct cf_reducer *r);
/* Collective on comm (every rank reports the same offsets in the same order). Gradients in
 * [offset, n) are final: start the buckets that are full. Matches cf_grad_ready_fn. */
cf_status cf_reducer_ready(void *reducer, size_t offset);
/* Collective on comm. Start what is left and wait for every bucket. */
cf_status cf_reducer_finish(struct cf_reducer *r);

#endif
