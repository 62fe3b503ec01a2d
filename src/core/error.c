/* error.c: the recorded error message and trace behind cf_err / CF_TRY. */
#include "calmflow/error.h"

#include <mpi.h>
#include <stdio.h>
#include <string.h>

static char g_msg[1024];
static char g_trace[4096];
static size_t g_trace_len;

cf_status cf_err(cf_status st, const char *fmt, ...) {
  if (g_msg[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
  }
  return st;
}

void cf_trace_push(const char *file, int line, const char *expr) {
  if (g_trace_len + 8 >= sizeof g_trace) return;
  int n = snprintf(g_trace + g_trace_len, sizeof g_trace - g_trace_len, "  at %s:%d: %s\n", file,
                   line, expr);
  if (n > 0) g_trace_len += (size_t)n < sizeof g_trace - g_trace_len ? (size_t)n : 0;
}

const char *cf_errmsg(void) {
  return g_msg;
}
const char *cf_errtrace(void) {
  return g_trace;
}

void cf_err_clear(void) {
  g_msg[0] = '\0';
  g_trace[0] = '\0';
  g_trace_len = 0;
}

const char *cf_status_name(cf_status st) {
  static const char *names[CF_NSTATUS] = {
      "ok",         "invalid argument", "out of memory",     "i/o error",   "corrupt input",
      "bad layout", "remote failure",   "numerical failure", "petsc error", "mpi error",
      "stopped"};
  return (st >= 0 && st < CF_NSTATUS) ? names[st] : "unknown";
}

cf_status cf_mpi_fail(int code, const char *file, int line, const char *expr) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  if (MPI_Error_string(code, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "code %d", code);
  cf_err(CF_EMPI, "MPI call failed: %s (%s)", s, expr);
  cf_trace_push(file, line, expr);
  return CF_EMPI;
}

cf_status cf_agree(MPI_Comm comm, cf_status st) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = st != CF_OK ? rank : size, first = size;
  CF_MPI(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  if (first == size) return CF_OK;
  struct {
    int st;
    char msg[1024];
  } m;
  memset(&m, 0, sizeof m);
  if (rank == first) {
    m.st = (int)st;
    snprintf(m.msg, sizeof m.msg, "%s", cf_errmsg()[0] ? cf_errmsg() : "(no message)");
  }
  CF_MPI(MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, first, comm));
  if (st != CF_OK) return st;
  if (m.msg[0] == '\0' || m.st <= CF_OK || m.st >= CF_NSTATUS)
    return cf_err(CF_EREMOTE, "rank %d failed", first);
  return cf_err((cf_status)m.st, "%s", m.msg);
}
