/* gemm_floor.c: how fast can one training step of the transformer be on this CPU, if it did
 * nothing but its matrix multiplies? Times cblas_sgemm (the OpenBLAS calmflow and PyTorch both
 * call) on the exact shapes of one step's linear layers and attention products, forward and
 * backward, and prints their total: a floor for the step time of any implementation that uses
 * this BLAS, and the MFU that floor would have. The small models of the paper are far below
 * the 512^3 sgemm peak even here.
 *
 *   gemm_floor L H HEADS N P S PATHS [D]   (one thread: OPENBLAS_NUM_THREADS=1)
 * prints one JSON line: the FLOPs and best-of-5 seconds per group, the total, and the rate.
 * Shapes (per step; sequences = PATHS / P, T = N P S tokens a sequence, M = sequences T):
 *   per layer: qkv (M, H) x (H, 3H), out (M, H) x (H, H), fc1 (M, H) x (H, 4H), fc2 (M, 4H) x
 *   (4H, H), each forward plus two backward products (dX = dY W^T, dW = X^T dY); attention per
 *   sequence and head: scores (T, hd) x (hd, T) and mix (T, T) x (T, hd), forward plus two
 *   backward each, counted full (T x T; calmflow skips the masked half in its own kernels).
 * Encoder and decoder (D-sized) are left out: they are under 3% of the FLOPs at D <= 100. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Best of `rounds` seconds for `reps` products C (m, n) = op(A) op(B), k inner. */
static double time_gemm(int ta, int tb, int m, int n, int k, int reps, int rounds, float *a,
                        float *b, float *c) {
  double best = 1e30;
  for (int r = 0; r < rounds; r++) {
    double t0 = now();
    for (int i = 0; i < reps; i++)
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m,
                  n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, 0.0f, c, n);
    double t = now() - t0;
    if (t < best) best = t;
  }
  return best;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: gemm_floor L H HEADS N P S PATHS [D]\n");
    return 2;
  }
  long L = atol(argv[1]), H = atol(argv[2]), heads = atol(argv[3]), N = atol(argv[4]),
       P = atol(argv[5]), S = atol(argv[6]), paths = atol(argv[7]);
  if (L < 1 || H < 1 || heads < 1 || H % heads || N < 1 || P < 1 || S < 1 || paths < P) {
    fprintf(stderr, "gemm_floor: bad sizes\n");
    return 2;
  }
  long seqs = paths / P, T = N * P * S, M = seqs * T, hd = H / heads;
  size_t big = (size_t)M * 4 * H;
  if ((size_t)T * T > big) big = (size_t)T * T;
  if ((size_t)16 * H * H > big) big = (size_t)16 * H * H;
  float *a = malloc(big * sizeof *a), *b = malloc(big * sizeof *b), *c = malloc(big * sizeof *c);
  if (!a || !b || !c) {
    fprintf(stderr, "gemm_floor: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < big; i++) {
    a[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    b[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    c[i] = 0;
  }
  /* linear layers: (in, out) per layer */
  long lin[4][2] = {{H, 3 * H}, {H, H}, {H, 4 * H}, {4 * H, H}};
  double lin_s = 0, lin_f = 0;
  for (int j = 0; j < 4; j++) {
    long K = lin[j][0], Nn = lin[j][1];
    double t = time_gemm(0, 0, (int)M, (int)Nn, (int)K, 1, 5, a, b, c)    /* Y = X W */
               + time_gemm(0, 1, (int)M, (int)K, (int)Nn, 1, 5, a, b, c)  /* dX = dY W^T */
               + time_gemm(1, 0, (int)K, (int)Nn, (int)M, 1, 5, a, b, c); /* dW = X^T dY */
    lin_s += L * t;
    lin_f += L * 3.0 * 2.0 * (double)M * (double)K * (double)Nn;
  }
  /* attention: seqs * heads products of each shape (all the same, so time one batch of them) */
  int reps = (int)(seqs * heads);
  double att_s = L * (time_gemm(0, 1, (int)T, (int)T, (int)hd, reps, 3, a, b, c)     /* q k^T */
                      + time_gemm(0, 0, (int)T, (int)hd, (int)T, reps, 3, a, b, c)   /* p v */
                      + time_gemm(0, 0, (int)T, (int)hd, (int)T, reps, 3, a, b, c)   /* dS k */
                      + time_gemm(1, 0, (int)T, (int)hd, (int)T, reps, 3, a, b, c)   /* dS^T q */
                      + time_gemm(0, 1, (int)T, (int)T, (int)hd, reps, 3, a, b, c)   /* dO v^T */
                      + time_gemm(1, 0, (int)T, (int)hd, (int)T, reps, 3, a, b, c)); /* p^T dO */
  double att_f = L * (double)reps * 6.0 * 2.0 * (double)T * (double)T * (double)hd;
  printf("{\"L\": %ld, \"H\": %ld, \"heads\": %ld, \"N\": %ld, \"P\": %ld, \"S\": %ld, "
         "\"paths\": %ld, \"tokens\": %ld, \"linear_gflop\": %.4f, \"linear_s\": %.6f, "
         "\"attention_gflop_full\": %.4f, \"attention_s\": %.6f, \"total_s\": %.6f, "
         "\"linear_gflops\": %.2f, \"attention_gflops\": %.2f}\n",
         L, H, heads, N, P, S, paths, M, lin_f * 1e-9, lin_s, att_f * 1e-9, att_s, lin_s + att_s,
         lin_f / lin_s * 1e-9, att_f / att_s * 1e-9);
  free(a);
  free(b);
  free(c);
  return 0;
}
