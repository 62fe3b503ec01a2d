/* cf_test.h: the few helpers every C test uses — a failure counter, EXPECT with file:line
 * (and the rank, in MPI tests), status expectations, scratch buffers and the closing line.
 * Header-only. With CF_TEST_VERBOSE set, EXPECT_FAIL / EXPECT_FAIL_STATUS also print each
 * expected message (on rank 0 in MPI tests), to review what users would read. */
#ifndef CALMFLOW_CF_TEST_H
#define CALMFLOW_CF_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/error.h"

static int cf_test_fails;
static int cf_test_rank = -1; /* set by MPI tests to prefix failures with the rank */

#define EXPECT(c, ...)                                                                             \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      cf_test_fails++;                                                                             \
      if (cf_test_rank >= 0) printf("[rank %d] ", cf_test_rank);                                   \
      printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                  \
      printf(__VA_ARGS__);                                                                         \
      printf("\n");                                                                                \
      fflush(stdout);                                                                              \
    }                                                                                              \
  } while (0)

/* The call must succeed. */
#define EXPECT_OK(st, what)                                                                        \
  do {                                                                                             \
    cf_status cf_t_st_ = (st);                                                                     \
    EXPECT(cf_t_st_ == CF_OK, "%s: failed: %s", (what), cf_errmsg());                              \
    cf_err_clear();                                                                                \
  } while (0)

/* The message of an expected failure must contain `sub`; clears the error. */
#define CF_TEST_MESSAGE_(sub, what)                                                                \
  do {                                                                                             \
    EXPECT(strstr(cf_errmsg(), (sub)) != NULL, "%s: message '%s' lacks '%s'", (what), cf_errmsg(), \
           (sub));                                                                                 \
    if (getenv("CF_TEST_VERBOSE") && cf_test_rank <= 0) printf("[%s] %s\n", (what), cf_errmsg());  \
    cf_err_clear();                                                                                \
  } while (0)

/* The call must fail with `sub` in its message. */
#define EXPECT_FAIL(st, sub, what)                                                                 \
  do {                                                                                             \
    cf_status cf_t_st_ = (st);                                                                     \
    EXPECT(cf_t_st_ != CF_OK, "%s: succeeded, expected an error containing '%s'", (what), (sub));  \
    CF_TEST_MESSAGE_(sub, what);                                                                   \
  } while (0)

/* The call must fail with status `want` (CF_EINVAL, CF_ECORRUPT, ...) and `sub` in its message. */
#define EXPECT_FAIL_STATUS(st, want, sub, what)                                                    \
  do {                                                                                             \
    cf_status cf_t_st_ = (st);                                                                     \
    EXPECT(cf_t_st_ == (want), "%s: status %s, expected %s", (what), cf_status_name(cf_t_st_),     \
           cf_status_name(want));                                                                  \
    CF_TEST_MESSAGE_(sub, what);                                                                   \
  } while (0)

/* n zeroed floats (at least one) for the test's own buffers, released with free(); a failed
 * allocation ends the test with status 2. */
static inline float *cf_test_floats(size_t n) {
  float *p = calloc(n ? n : 1, sizeof(float));
  if (p == NULL) {
    printf("FAIL: out of memory in the test\n");
    exit(2);
  }
  return p;
}

/* Print the closing line and return the exit status for main. */
static inline int cf_test_done(const char *name) {
  if (cf_test_rank <= 0) {
    if (cf_test_fails)
      printf("%s: %d failures\n", name, cf_test_fails);
    else
      printf("%s: ok\n", name);
  }
  return cf_test_fails != 0;
}

#endif
