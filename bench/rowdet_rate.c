/* rowdet_rate.c: how fast is sampling's row-deterministic linear layer (cf_linear_rows,
 * src/model/rowdet.c) beside OpenBLAS? Times y (M, out) = x (M, in) W^T + b with
 * cf_linear_rows and the same product with cblas_sgemm (one thread) on the shapes of a KV-cache
 * rollout's linear layers (qkv, attention out, fc1, fc2 of L12 H768, H256 and H64 models) for
 * M rows in {8, 16, 64, 512}, and prints one line per shape: best-of-ROUNDS seconds per call
 * and GFLOP/s of both, the ratio rowdet seconds / sgemm seconds, and a hash of cf_linear_rows's
 * output bits (the same hash from two builds of rowdet.c means the same bits; every copy the CPU
 * runs, forced through cf_linear_rows_path, must give it too, or the line says MISMATCH).
 *
 * Built by hand (not part of the CMake build), against a build's model layer library:
 *   cmake --build build-rd --target cf_model
 *   mpicc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -Iinclude -Isrc bench/rowdet_rate.c \
 *     build-rd/libcf_model.a $(pkg-config --cflags --libs openblas) -o build-rd/rowdet_rate
 *   OPENBLAS_NUM_THREADS=1 build-rd/rowdet_rate [ROUNDS (5)] [PATH (-1)] [MS (20)] [SHAPE]
 *     [COLD (0)]
 * PATH forces a copy of cf_linear_rows (0 portable, 1 AVX2, 2 AVX-512VL; -1 the best the CPU
 * has); each round lasts about MS milliseconds; SHAPE M:out:in (0 for any) runs only the
 * shapes it matches; COLD > 0 cycles the calls through copies of W that take at least COLD MiB
 * (e.g. 64, beyond L2 and L3, as a rollout whose model does not fit in cache), 0 reuses one
 * (warm in L2 / L3). A last line gives, per copy, one hash over shapes off the tile grid (M 1
 * to 19, in and out with every remainder): equal hashes from two builds mean equal bits there
 * too. Only rowdet.o of the library is linked in. Exit status 1 when copies disagree. */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/layers.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform floats in [-1, 1) from a 64-bit LCG: the same inputs in every build. */
static void fill(float *a, int64_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    a[i] = (float)((double)(s >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
  }
}

/* FNV-1a over the bits of y (n floats). */
static uint64_t hash_bits(const float *y, int64_t n) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char *p = (const unsigned char *)y;
  for (int64_t i = 0; i < n * (int64_t)sizeof(float); i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* One hash of cf_linear_rows's output bits over shapes off the tile grid: every M from 1 to
 * 13, then 15, 17, 19, (out, in) with in % 8 from 0 to 7, out % 4 from 0 to 3 and in a
 * multiple of 1024, each with a bias, without, and with a bias while accumulating into y. */
static uint64_t hash_odd(void) {
  static const int64_t oi[][2] = {{1, 1},    {3, 7},     {5, 9},     {6, 100}, {9, 64},
                                  {17, 250}, {70, 1027}, {13, 1024}, {6, 2048}};
  uint64_t h = 0;
  for (int s = 0; s < (int)(sizeof oi / sizeof oi[0]); s++) {
    const int64_t out = oi[s][0], in = oi[s][1];
    for (int64_t M = 1; M <= 19; M += M < 13 ? 1 : 2) {
      for (int v = 0; v < 3; v++) {
        float *x = malloc(sizeof(float) * (size_t)(M * in));
        float *W = malloc(sizeof(float) * (size_t)(out * in));
        float *b = malloc(sizeof(float) * (size_t)out);
        float *y = malloc(sizeof(float) * (size_t)(M * out));
        if (!x || !W || !b || !y) {
          fprintf(stderr, "rowdet_rate: out of memory\n");
          exit(1);
        }
        fill(x, M * in, (uint64_t)(100 * s + M));
        fill(W, out * in, (uint64_t)(7 + s));
        fill(b, out, (uint64_t)(9 + s));
        fill(y, M * out, (uint64_t)(11 + s));
        cf_linear_rows(x, M, W, v == 1 ? NULL : b, out, in, v == 2, y);
        h = h * 31 + hash_bits(y, M * out);
        free(x);
        free(W);
        free(b);
        free(y);
      }
    }
  }
  return h;
}

/* Best of `rounds` seconds per call, with `reps` calls a round; which = 0 rowdet, 1 sgemm. */
static double time_it(int which, int rounds, int reps, const float *x, int64_t M, const float *W,
                      int ncopy, const float *b, int64_t out, int64_t in, float *y) {
  double best = 1e30;
  for (int r = 0; r < rounds; r++) {
    double t0 = now();
    for (int i = 0; i < reps; i++) {
      if (which == 0)
        cf_linear_rows(x, M, W + (i % ncopy) * out * in, b, out, in, 0, y);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)out, (int)in, 1.0f, x,
                    (int)in, W + (i % ncopy) * out * in, (int)in, 0.0f, y, (int)out);
    }
    double t = (now() - t0) / reps;
    if (t < best) best = t;
  }
  return best;
}

int main(int argc, char **argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 5;
  const int path = argc > 2 ? atoi(argv[2]) : -1;
  const double ms = argc > 3 ? atof(argv[3]) : 20.0;
  const double cold_mib = argc > 5 ? atof(argv[5]) : 0;
  long long only[3] = {0, 0, 0}; /* M, out, in; 0 matches any */
  if (argc > 4 && sscanf(argv[4], "%lld:%lld:%lld", &only[0], &only[1], &only[2]) != 3) {
    fprintf(stderr, "rowdet_rate: SHAPE '%s': expected M:out:in (0 for any)\n", argv[4]);
    return 2;
  }
  if (rounds < 1 || path < -1 || path > 2 || ms <= 0 || cold_mib < 0) {
    fprintf(stderr,
            "usage: rowdet_rate [ROUNDS >= 1] [PATH -1..2] [MS > 0] [M:out:in] [COLD >= 0]\n");
    return 2;
  }
  static const int64_t shapes[][2] = {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072},
                                      {768, 256},  {256, 256}, {1024, 256}, {256, 1024},
                                      {192, 64},   {64, 64},   {256, 64},   {64, 256}};
  static const int64_t rows[] = {8, 16, 64, 512};
  const int nshape = (int)(sizeof shapes / sizeof shapes[0]);
  const int best = cf_linear_rows_path(-2);
  const int used = cf_linear_rows_path(path);
  printf("# cf_linear_rows copy %d (best on this CPU %d); best of %d rounds of ~%g ms; weights "
         "cycled through: %g MiB\n",
         used, best, rounds, ms, cold_mib);
  printf("%5s %5s %5s %11s %8s %11s %8s %6s  %s\n", "M", "out", "in", "rowdet_s", "GF/s", "sgemm_s",
         "GF/s", "ratio", "hash");
  int bad = 0;
  double sum_rd = 0, sum_bl = 0;
  for (int s = 0; s < nshape; s++) {
    for (int mi = 0; mi < 4; mi++) {
      const int64_t M = rows[mi], out = shapes[s][0], in = shapes[s][1];
      if ((only[0] && only[0] != M) || (only[1] && only[1] != out) || (only[2] && only[2] != in))
        continue;
      float *x = malloc(sizeof(float) * (size_t)(M * in));
      /* copies of W cycled through when timing: at least COLD MiB in all */
      int ncopy = (int)(cold_mib * 1048576.0 / (4.0 * (double)(out * in))) + 1;
      float *W = malloc(sizeof(float) * (size_t)(out * in) * (size_t)ncopy);
      float *b = malloc(sizeof(float) * (size_t)out);
      float *y = malloc(sizeof(float) * (size_t)(M * out));
      float *y2 = malloc(sizeof(float) * (size_t)(M * out));
      if (!x || !W || !b || !y || !y2) {
        fprintf(stderr, "rowdet_rate: out of memory\n");
        return 1;
      }
      fill(x, M * in, (uint64_t)(s * 16 + mi));
      fill(W, out * in, (uint64_t)(1000 + s));
      for (int c = 1; c < ncopy; c++)
        memcpy(W + (int64_t)c * out * in, W, sizeof(float) * (size_t)(out * in));
      fill(b, out, (uint64_t)(2000 + s));
      /* the output's bits, from this copy and from every other one the CPU has */
      cf_linear_rows(x, M, W, b, out, in, 0, y);
      const uint64_t h = hash_bits(y, M * out);
      int agree = 1;
      for (int p = 0; p <= best; p++) {
        cf_linear_rows_path(p);
        cf_linear_rows(x, M, W, b, out, in, 0, y2);
        if (memcmp(y, y2, sizeof(float) * (size_t)(M * out)) != 0) agree = 0;
      }
      cf_linear_rows_path(path);
      /* calls a round: about `ms` at 50 GFLOP/s, at least 1 */
      const double flop = 2.0 * (double)M * (double)out * (double)in;
      int reps = (int)(ms * 1e-3 * 50e9 / flop);
      if (reps < 1) reps = 1;
      const double t_rd = time_it(0, rounds, reps, x, M, W, ncopy, b, out, in, y2);
      const double t_bl = time_it(1, rounds, reps, x, M, W, ncopy, b, out, in, y2);
      sum_rd += t_rd;
      sum_bl += t_bl;
      printf("%5lld %5lld %5lld %11.4e %8.2f %11.4e %8.2f %6.2f  %016llx%s\n", (long long)M,
             (long long)out, (long long)in, t_rd, flop / t_rd * 1e-9, t_bl, flop / t_bl * 1e-9,
             t_rd / t_bl, (unsigned long long)h, agree ? "" : " MISMATCH");
      fflush(stdout);
      bad |= !agree;
      free(x);
      free(W);
      free(b);
      free(y);
      free(y2);
    }
  }
  printf("# total seconds of one call per shape: rowdet %.4e, sgemm %.4e, ratio %.2f\n", sum_rd,
         sum_bl, sum_rd / sum_bl);
  printf("# odd shapes (M 1..19, k-tails, output remainders; bias, none, bias + accumulate), hash "
         "per copy:");
  uint64_t h0 = 0;
  for (int p = 0; p <= best; p++) {
    cf_linear_rows_path(p);
    const uint64_t h = hash_odd();
    if (p == 0) h0 = h;
    bad |= h != h0;
    printf(" %d:%016llx", p, (unsigned long long)h);
  }
  printf("%s\n", bad ? " MISMATCH" : "");
  cf_linear_rows_path(path);
  return bad;
}
