/* collective.c: failure agreement, rank-identical sums and the finite-value check shared by
 * the collective metrics (Sinkhorn, Frechet). */
#include <math.h>
#include <stdint.h>

#include "collective.h"

cf_status cf_metrics_agree(MPI_Comm comm, cf_status st, const char *what) {
  int bad = st != CF_OK, any = 0;
  CF_MPI(MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, comm));
  if (!any) return CF_OK;
  if (bad) return st;
  return cf_err(CF_EREMOTE, "%s failed on another rank", what);
}

cf_status cf_metrics_sum(MPI_Comm comm, double *buf, int64_t n) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  /* In chunks that fit an int count. */
  const int64_t chunk = (int64_t)1 << 28;
  for (int64_t o = 0; o < n; o += chunk) {
    int c = (int)(n - o < chunk ? n - o : chunk);
    if (rank == 0)
      CF_MPI(MPI_Reduce(MPI_IN_PLACE, buf + o, c, MPI_DOUBLE, MPI_SUM, 0, comm));
    else
      CF_MPI(MPI_Reduce(buf + o, NULL, c, MPI_DOUBLE, MPI_SUM, 0, comm));
    CF_MPI(MPI_Bcast(buf + o, c, MPI_DOUBLE, 0, comm));
  }
  return CF_OK;
}

cf_status cf_metrics_check_finite(MPI_Comm comm, const float *x, int64_t n, int64_t d, int64_t row0,
                                  const char *name) {
  cf_status st = CF_OK;
  for (int64_t i = 0; i < n && st == CF_OK; i++)
    for (int64_t k = 0; k < d; k++) {
      float v = x[i * d + k];
      if (!isfinite(v)) {
        st = cf_err(CF_ECORRUPT, "eval set %s has %s at row %lld (column %lld)", name,
                    isnan(v) ? "NaN" : "Inf", (long long)(row0 + i), (long long)k);
        break;
      }
    }
  return cf_metrics_agree(comm, st, "the finite-value check");
}
