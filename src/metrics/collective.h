/* collective.h: the few MPI helpers the collective metrics (sinkhorn.c, frechet.c) share:
 * agreeing on a failure, and sums that come out bit-identical on every rank. Internal to
 * src/metrics/. */
#ifndef CALMFLOW_METRICS_COLLECTIVE_H
#define CALMFLOW_METRICS_COLLECTIVE_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"

/* Collective on comm. Every rank passes its own status; all ranks return a failure when any
 * rank failed: their own status and message where they failed themselves, else CF_EREMOTE
 * with "<what> failed on another rank". */
cf_status cf_metrics_agree(MPI_Comm comm, cf_status st, const char *what);

/* Collective on comm. In-place sum of buf (n doubles) over the ranks, reduced on rank 0 and
 * broadcast, so every rank holds the same bits (MPI_Allreduce does not promise that). */
cf_status cf_metrics_sum(MPI_Comm comm, double *buf, int64_t n);

/* Collective on comm. Check that the point sets are free of NaN / Inf: x (n, d) on each rank,
 * `name` naming the set in the message (row numbers are row0 + local row). */
cf_status cf_metrics_check_finite(MPI_Comm comm, const float *x, int64_t n, int64_t d, int64_t row0,
                                  const char *name);

#endif
