/* commstat.c: process-wide communication totals per parallel dimension (see commstat.h). */
#include "calmflow/commstat.h"

#include <time.h>

static double g_bytes[CF_COMM_NKINDS], g_secs[CF_COMM_NKINDS];

void cf_commstat_add(enum cf_comm_kind k, double bytes, double seconds) {
  if ((int)k < 0 || k >= CF_COMM_NKINDS) return;
  g_bytes[k] += bytes;
  g_secs[k] += seconds;
}

void cf_commstat_get(double bytes[CF_COMM_NKINDS], double seconds[CF_COMM_NKINDS]) {
  for (int k = 0; k < CF_COMM_NKINDS; k++) {
    if (bytes) bytes[k] = g_bytes[k];
    if (seconds) seconds[k] = g_secs[k];
  }
}

void cf_commstat_reset(void) {
  for (int k = 0; k < CF_COMM_NKINDS; k++)
    g_bytes[k] = g_secs[k] = 0;
}

double cf_commstat_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

const char *cf_commstat_name(enum cf_comm_kind k) {
  static const char *names[CF_COMM_NKINDS] = {"dp", "tp", "pp", "cp"};
  return (int)k >= 0 && k < CF_COMM_NKINDS ? names[k] : "?";
}
