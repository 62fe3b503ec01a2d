/* commstat.h: what this process spent on communication, per parallel dimension.
 *
 * Every communication of the parallel paths reports its payload (the bytes of the buffer it
 * sends or reduces, as the application sees them, not the bytes MPI puts on the wire) and the
 * wall seconds the rank spent inside the call or waiting for it to finish. The training loop
 * reads the totals per step for log.jsonl and the scaling benchmark. Process-wide counters,
 * updated from the thread that calls MPI (MPI_THREAD_FUNNELED).
 */
#ifndef CALMFLOW_COMMSTAT_H
#define CALMFLOW_COMMSTAT_H

enum cf_comm_kind {
  CF_COMM_DP = 0, /* gradient all-reduce over the data (and context) group */
  CF_COMM_TP = 1, /* tensor-parallel all-reduces inside the blocks */
  CF_COMM_PP = 2, /* pipeline stage boundaries (activations forward, gradients back) */
  CF_COMM_CP = 3, /* ring attention K/V (and dK/dV) blocks */
  CF_COMM_NKINDS = 4
};

/* Local. Add bytes and seconds to kind k. */
void cf_commstat_add(enum cf_comm_kind k, double bytes, double seconds);
/* Local. Totals since the last reset; either array may be NULL. */
void cf_commstat_get(double bytes[CF_COMM_NKINDS], double seconds[CF_COMM_NKINDS]);
/* Local. Zero all totals. */
void cf_commstat_reset(void);
/* Local. Monotonic wall clock in seconds (for timing a call). */
double cf_commstat_now(void);
/* Local. "dp", "tp", "pp", "cp". */
const char *cf_commstat_name(enum cf_comm_kind k);

#endif
