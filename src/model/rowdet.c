/* rowdet.c: the row-deterministic linear layer of sampling, y = x W^T + b, where every output
 * element is the same sequence of float operations whatever the number of rows M, wherever its
 * row sits in x, and whichever vector width the CPU runs (so a sample does not depend on how
 * many samples share a batch or a rank).
 *
 * Element (i, o) is computed as
 *   acc[u] = 0 for u < 8; for k = 0, 1, .., in-1 (in order): acc[k % 8] += x[i][k] * W[o][k]
 *   s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
 *   s = s + b[o] (when b);  y[i][o] = s, or y[i][o] = y[i][o] + s when accumulating
 * with every multiply and add rounded to float (no fused multiply-add: CMakeLists.txt compiles
 * this file with -ffp-contract=off; GCC ignores #pragma STDC FP_CONTRACT). The eight lanes
 * are one 8-float vector (AVX2) or two 4-float vectors (SSE2, NEON) and IEEE multiply and add
 * are correctly rounded lane by lane, so every vector width gives the order above bit for bit.
 * The last in % 8 values update lanes 0 .. in%8 - 1 one at a time.
 *
 * Speed: tiles of R rows x O outputs share each loaded vector (x loaded once per O outputs, W
 * once per R rows) and keep R*O accumulators in registers; outputs are taken in blocks whose
 * weights fit in L2. Remainder rows run the same tile code with R = 2 or 1 (4, 2, 1 when R >
 * 4), remainder outputs with O = 1, so full tiles and remainders perform identical per-element
 * operations; the final lane sums of four outputs are done together by vector shuffles that
 * add the same operands in the same tree, and their bias and store are 4-float vectors. In a
 * rollout the weights come from L3 or memory at each call, so the first row tile over a block
 * prefetches the weights of the tiles ahead of it; rows of x whose stride is a multiple of 4
 * KiB (all in one L1 set) are copied with a padded stride (a 33 KiB stack buffer). Neither
 * changes an operation. The tile code is rowdet_tile.h, compiled here for 4-float vectors (the
 * portable copy) and, on x86-64, for 8-float vectors as an AVX2 and an AVX-512VL copy (32
 * vector registers, larger tiles) chosen at run time; test_kvcache checks that all copies
 * agree bit for bit. On Zen 4 the 4 x 4 tile of the AVX-512VL copy runs near the multiply +
 * add throughput of the core with warm weights (bench/rowdet_rate.c: 85-95 GFLOP/s beside
 * cblas_sgemm's 95-100 at 512 rows); 5 x 5, 6 x 4, 4 x 6, 8 x 3 and 3 x 8 tiles, 512-bit
 * vectors holding two outputs' lanes, and chunks of in (accumulators saved between them)
 * were slower. */
#include <float.h>
#include <string.h>

#include "model/layers.h"

#if !defined(__GNUC__)
#error "rowdet.c needs GCC-style vector extensions (GCC, clang)"
#endif
#if FLT_EVAL_METHOD != 0
#error "rowdet.c needs float arithmetic evaluated in float (FLT_EVAL_METHOD 0, e.g. SSE, not x87)"
#endif
#if defined(__FAST_MATH__)
#error "rowdet.c must not be built with -ffast-math: it relies on unreordered float arithmetic"
#endif

#define RD_LANES 8
#define RD_RMAX 4
#define RD_OMAX 4
/* Weights per output block: 128 KiB, so a block stays in L2 while every row tile of x passes
 * over it. */
#define RD_WBLOCK_FLOATS (32 * 1024)
/* x rows of in = a multiple of RD_PAD_EVERY floats, up to RD_PAD_MAX, are copied with RD_PAD
 * floats of padding per row when x has at least RD_PAD_ROWS rows (rowdet_tile.h; on Zen 4,
 * (256, 1024) weights: +10-15% at 16 and 64 rows, -3% at 8, slower at in 3072) */
#define RD_PAD_EVERY 1024
#define RD_PAD_MAX 2048
#define RD_PAD 16
#define RD_PAD_ROWS 16
/* The first row tile over a block of weights prefetches the weights RD_PF_TILES tiles ahead
 * into L2 (locality 2: prefetcht1; rowdet_tile.h). On Zen 4 with weights from memory: 1.3-2.5x
 * at 8-16 rows, 1.1-1.3x at 64; into L1 (locality 3), 1, 3 or 4 tiles ahead, or prefetching
 * in every row tile were no better. */
#define RD_PF_TILES 2
#define RD_PF_LOC 2
#define RD_INLINE static inline __attribute__((always_inline))
#define RD_UNROLL _Pragma("GCC unroll 8")
#if defined(__clang__) || __GNUC__ >= 12
#define RD_SHUFFLE 1 /* __builtin_shufflevector */
#else
#define RD_SHUFFLE 0
#endif
#if defined(__x86_64__)
#define RD_X86 1
#else
#define RD_X86 0
#endif

typedef float rd_vec4 __attribute__((vector_size(4 * sizeof(float))));
/* the same, readable and writable at any float's address */
typedef float rd_uvec4 __attribute__((vector_size(4 * sizeof(float)), aligned(4), may_alias));

/* The fixed combination of the eight lanes of one accumulator. */
RD_INLINE float rd_sum(const float l[RD_LANES]) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* 4-float vectors: rd_tile_w4, rd_linear_w4 */
#define RDT_VW 4
#define RDT_NAME(x) x##_w4
#include "model/rowdet_tile.h"
#undef RDT_VW
#undef RDT_NAME

/* 8-float vectors: rd_tile_w8, rd_linear_w8 (only inlined into the AVX copies, so no 8-float
 * vector crosses a function boundary) */
#if RD_X86
#define RDT_VW 8
#define RDT_NAME(x) x##_w8
#include "model/rowdet_tile.h"
#undef RDT_VW
#undef RDT_NAME
#endif

typedef void (*rd_fn)(const float *x, int64_t M, const float *W, const float *b, int64_t out,
                      int64_t in, int accumulate, float *y);

/* The portable copy: 4-float vectors, 1 x 4 tiles on x86-64 (16 SSE registers, two per
 * accumulator), 2 x 4 elsewhere (NEON has 32). */
static void rd_linear_portable(const float *x, int64_t M, const float *W, const float *b,
                               int64_t out, int64_t in, int accumulate, float *y) {
  rd_linear_w4(RD_X86 ? 1 : 2, 4, x, M, W, b, out, in, accumulate, y);
}

#if RD_X86
/* AVX2: 16 registers of 8 floats: 3 x 4 tiles (12 accumulators). */
__attribute__((target("avx2"))) static void rd_linear_avx2(const float *x, int64_t M,
                                                           const float *W, const float *b,
                                                           int64_t out, int64_t in, int accumulate,
                                                           float *y) {
  rd_linear_w8(3, 4, x, M, W, b, out, in, accumulate, y);
}
/* AVX-512VL on 8-float vectors: 32 registers, 4 x 4 tiles (16 accumulators). */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
rd_linear_avx512(const float *x, int64_t M, const float *W, const float *b, int64_t out, int64_t in,
                 int accumulate, float *y) {
  rd_linear_w8(4, 4, x, M, W, b, out, in, accumulate, y);
}
#endif

/* Test hook state: the forced copy, or -1 for the best the CPU has. */
static int rd_forced = -1;

static int rd_best(void) {
#if RD_X86
  if (!__builtin_cpu_supports("avx2")) return 0;
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2 : 1;
#else
  return 0;
#endif
}

int cf_linear_rows_path(int force) {
  int best = rd_best();
  if (force >= -1) rd_forced = force > best ? best : force;
  return rd_forced >= 0 ? rd_forced : best;
}

void cf_linear_rows(const float *x, int64_t M, const float *W, const float *b, int64_t out,
                    int64_t in, int accumulate, float *y) {
  rd_fn fn = rd_linear_portable;
#if RD_X86
  int path = rd_forced >= 0 ? rd_forced : rd_best();
  if (path == 2)
    fn = rd_linear_avx512;
  else if (path == 1)
    fn = rd_linear_avx2;
#endif
  fn(x, M, W, b, out, in, accumulate, y);
}
