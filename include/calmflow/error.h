/* error.h: status codes, the one checking macro, and the error message buffer.
 *
 * Every fallible function returns cf_status. The first failure records one
 * human-readable message (what went wrong, which file or option, what was
 * expected) with cf_err(); callers propagate with CF_TRY, which adds a
 * file:line trace entry. main() prints the message once and exits non-zero.
 * Nothing a user or a file can trigger is checked with assert().
 *
 * The message buffer is per process (calmflow ranks are single-threaded).
 */
#ifndef CALMFLOW_ERROR_H
#define CALMFLOW_ERROR_H

#include <mpi.h>
#include <stdarg.h>

typedef enum {
  CF_OK = 0,
  CF_EINVAL,   /* bad option value or argument */
  CF_ENOMEM,   /* allocation failed */
  CF_EIO,      /* file could not be opened, read or written */
  CF_ECORRUPT, /* file contents malformed (shape, type, NaN, checksum) */
  CF_ETOPO,    /* rank layout does not fit */
  CF_EREMOTE,  /* another rank failed */
  CF_ENUM,     /* numerical failure (NaN/Inf in loss or gradients) */
  CF_EPETSC,   /* a PETSc call failed */
  CF_EMPI,     /* an MPI call failed */
  CF_STOPPED,  /* not an error: stopped on a signal after writing a checkpoint (exit 75) */
  CF_NSTATUS
} cf_status;

/* Local. Record a formatted message (only if none is recorded yet) and return st. */
cf_status cf_err(cf_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Collective on comm. CF_OK when st is CF_OK on every rank; otherwise every rank fails, those
 * that succeeded with the status and message of the lowest failing rank. */
cf_status cf_agree(MPI_Comm comm, cf_status st);

/* Local. Append one trace frame (file:line expr) to the recorded error. */
void cf_trace_push(const char *file, int line, const char *expr);

/* Local. The recorded message ("" when none), the trace, and reset. */
const char *cf_errmsg(void);
const char *cf_errtrace(void);
void cf_err_clear(void);
const char *cf_status_name(cf_status st);

/* Propagate a failure from a cf_status expression. */
#define CF_TRY(x)                                                                                  \
  do {                                                                                             \
    cf_status cf_st_ = (x);                                                                        \
    if (cf_st_ != CF_OK) {                                                                         \
      cf_trace_push(__FILE__, __LINE__, #x);                                                       \
      return cf_st_;                                                                               \
    }                                                                                              \
  } while (0)

/* Fail with status st and a formatted message unless cond holds. */
#define CF_CHECK(cond, st, ...)                                                                    \
  do {                                                                                             \
    if (!(cond)) return cf_err((st), __VA_ARGS__);                                                 \
  } while (0)

/* Local. Translate an MPI error code into a recorded CF_EMPI failure. */
cf_status cf_mpi_fail(int code, const char *file, int line, const char *expr);
#define CF_MPI(x)                                                                                  \
  do {                                                                                             \
    int cf_e_ = (x);                                                                               \
    if (cf_e_ != 0) return cf_mpi_fail(cf_e_, __FILE__, __LINE__, #x);                             \
  } while (0)

#endif
