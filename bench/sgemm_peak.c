/* sgemm_peak.c: the single-core sgemm rate the layout benchmark (bench/layouts.sh) divides by
 * to get a model FLOP utilisation (MFU).
 *
 * Times C = A B (n x n x n, row-major, cblas_sgemm) in rounds of enough calls to last at least
 * 50 ms and prints the best round as one JSON line {"n": .., "rounds": .., "gflops": .., ...},
 * with the OpenBLAS kernel set that ran ("core": openblas_get_corename()) and OPENBLAS_CORETYPE
 * (set: the kernels were chosen by it, not by detecting the CPU).
 * Run it with OPENBLAS_NUM_THREADS=1 for the per-core figure.
 * Usage: sgemm_peak [n (512)] [rounds (7)]
 */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? strtol(argv[1], NULL, 10) : 512;
  long rounds = argc > 2 ? strtol(argv[2], NULL, 10) : 7;
  if (n < 16 || n > 8192 || rounds < 1 || rounds > 1000) {
    fprintf(stderr, "sgemm_peak: error: expected 16 <= n <= 8192 and 1 <= rounds <= 1000\n");
    return 2;
  }
  size_t nn = (size_t)n * (size_t)n;
  float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float));
  float *c = malloc(nn * sizeof(float));
  if (a == NULL || b == NULL || c == NULL) {
    fprintf(stderr, "sgemm_peak: error: out of memory for three %ld x %ld matrices\n", n, n);
    return 1;
  }
  for (size_t i = 0; i < nn; i++) { /* small values, no denormals */
    a[i] = (float)((i * 7u) % 13u) / 13.0f - 0.5f;
    b[i] = (float)((i * 5u) % 11u) / 11.0f - 0.5f;
    c[i] = 0.0f;
  }
  const double flops = 2.0 * (double)n * (double)n * (double)n;
  /* warm-up call, then size a round to about 50 ms */
  double t0 = now_s();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f, a, (int)n, b,
              (int)n, 0.0f, c, (int)n);
  double one = now_s() - t0;
  long calls = one > 0 ? (long)(0.05 / one) + 1 : 1;
  double best = 0;
  for (long r = 0; r < rounds; r++) {
    t0 = now_s();
    for (long k = 0; k < calls; k++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f, a,
                  (int)n, b, (int)n, k ? 1.0f : 0.0f, c, (int)n);
    double el = now_s() - t0, rate = flops * (double)calls / el;
    if (rate > best) best = rate;
  }
  const char *forced = getenv("OPENBLAS_CORETYPE");
  printf("{\"n\": %ld, \"rounds\": %ld, \"calls_per_round\": %ld, \"gflops\": %.3f, "
         "\"check\": %g, \"core\": \"%s\", \"coretype_env\": \"%s\"}\n",
         n, rounds, calls, best / 1e9, (double)c[nn / 2], openblas_get_corename(),
         forced != NULL ? forced : "");
  free(a);
  free(b);
  free(c);
  return 0;
}
