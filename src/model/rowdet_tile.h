/* rowdet_tile.h: the tiles of rowdet.c for one hardware vector width. Private to rowdet.c,
 * which includes it once per width with RDT_VW (4 or 8 floats per vector) and RDT_NAME(x)
 * (appends a suffix to x) defined. Each 8-lane accumulator of rowdet.c is RDT_NV vectors of
 * RDT_VW lanes: lane u of the accumulator is element u % RDT_VW of vector u / RDT_VW, so every
 * width performs the same per-lane operations. */

#define RDT_NV (RD_LANES / RDT_VW)
#define RDT_VEC RDT_NAME(rd_vec)
#define RDT_UVEC RDT_NAME(rd_uvec)
#define RDT_SUM4 RDT_NAME(rd_sum4)
#define RDT_FINISH RDT_NAME(rd_finish)
#define RDT_TILE RDT_NAME(rd_tile)
#define RDT_PASS RDT_NAME(rd_pass)
#define RDT_ROWS RDT_NAME(rd_rows)
/* load RDT_NV vectors v[] from p (any float alignment) */
#define RDT_LOAD(v, p)                                                                             \
  do {                                                                                             \
    RD_UNROLL                                                                                      \
    for (int j_ = 0; j_ < RDT_NV; j_++)                                                            \
      (v)[j_] = *(const RDT_UVEC *)((p) + j_ * RDT_VW);                                            \
  } while (0)

typedef float RDT_VEC __attribute__((vector_size(RDT_VW * sizeof(float))));
/* the same, readable at any float's address (as the x86 intrinsics' unaligned types) */
typedef float RDT_UVEC __attribute__((vector_size(RDT_VW * sizeof(float)), aligned(4), may_alias));

/* The rd_sum of accumulators a[0..3] (each RDT_NV vectors), for j < 4, as one 4-float vector,
 * in vector form: level 1 adds lane pairs (0+1, 2+3, ...) of two accumulators in one vector,
 * level 2 the pairs of those, level 3 the half of lanes 0..3 to the half of lanes 4..7: the
 * tree of rd_sum, operand for operand. */
#if RD_SHUFFLE
RD_INLINE rd_vec4 RDT_SUM4(RDT_VEC a[4][RDT_NV]) {
#if RDT_VW == 8
  RDT_VEC h01 = __builtin_shufflevector(a[0][0], a[1][0], 0, 2, 8, 10, 4, 6, 12, 14) +
                __builtin_shufflevector(a[0][0], a[1][0], 1, 3, 9, 11, 5, 7, 13, 15);
  RDT_VEC h23 = __builtin_shufflevector(a[2][0], a[3][0], 0, 2, 8, 10, 4, 6, 12, 14) +
                __builtin_shufflevector(a[2][0], a[3][0], 1, 3, 9, 11, 5, 7, 13, 15);
  /* q = [lo(a0) lo(a1) lo(a2) lo(a3) hi(a0) hi(a1) hi(a2) hi(a3)], lo = (0+1)+(2+3) */
  RDT_VEC q = __builtin_shufflevector(h01, h23, 0, 2, 8, 10, 4, 6, 12, 14) +
              __builtin_shufflevector(h01, h23, 1, 3, 9, 11, 5, 7, 13, 15);
  rd_vec4 r = __builtin_shufflevector(q, q, 0, 1, 2, 3) + __builtin_shufflevector(q, q, 4, 5, 6, 7);
#else
  RDT_VEC half[2];
  RD_UNROLL
  for (int j = 0; j < 2; j++) { /* lanes 0..3, then lanes 4..7 */
    RDT_VEC h01 = __builtin_shufflevector(a[0][j], a[1][j], 0, 2, 4, 6) +
                  __builtin_shufflevector(a[0][j], a[1][j], 1, 3, 5, 7);
    RDT_VEC h23 = __builtin_shufflevector(a[2][j], a[3][j], 0, 2, 4, 6) +
                  __builtin_shufflevector(a[2][j], a[3][j], 1, 3, 5, 7);
    half[j] = __builtin_shufflevector(h01, h23, 0, 2, 4, 6) +
              __builtin_shufflevector(h01, h23, 1, 3, 5, 7);
  }
  rd_vec4 r = half[0] + half[1];
#endif
  return r;
}
#endif

/* The end of a tile whose accumulators acc (R, O, RDT_NV) hold values 0 .. k-1 of the in
 * values (k a multiple of 8): the last in - k < 8 values, one lane each, then the lane sums,
 * the bias and the store into y (R, ldy). */
RD_INLINE void RDT_FINISH(const int R, const int O, RDT_VEC acc[RD_RMAX][RD_OMAX][RDT_NV],
                          int64_t k, const float *x, int64_t ldx, const float *W, const float *b,
                          int64_t in, float *y, int64_t ldy, int accumulate) {
  /* scalar updates of lanes 0 .. in-k-1 */
  RD_UNROLL
  for (int u = 0; u < RD_LANES - 1; u++) {
    if (k + u >= in) break;
    RD_UNROLL
    for (int r = 0; r < R; r++) {
      const float xu = x[r * ldx + k + u];
      RD_UNROLL
      for (int o = 0; o < O; o++)
        acc[r][o][u / RDT_VW][u % RDT_VW] =
            acc[r][o][u / RDT_VW][u % RDT_VW] + xu * W[o * in + k + u];
    }
  }

  RD_UNROLL
  for (int r = 0; r < R; r++) {
    float *yr = y + r * ldy;
    int o4 = 0;
#if RD_SHUFFLE
    /* four outputs at a time: sums, bias and store as 4-float vectors (the same per-element
     * operations as below) */
    RD_UNROLL
    for (; o4 + 4 <= O; o4 += 4) {
      rd_vec4 t = RDT_SUM4(acc[r] + o4);
      if (b != NULL) t = t + *(const rd_uvec4 *)(b + o4);
      if (accumulate) t = *(const rd_uvec4 *)(yr + o4) + t;
      *(rd_uvec4 *)(yr + o4) = t;
    }
#endif
    RD_UNROLL
    for (int o = o4; o < O; o++) {
      float l[RD_LANES];
      RD_UNROLL
      for (int u = 0; u < RD_LANES; u++)
        l[u] = acc[r][o][u / RDT_VW][u % RDT_VW];
      float t = rd_sum(l);
      if (b != NULL) t = t + b[o];
      yr[o] = accumulate ? yr[o] + t : t;
    }
  }
}

/* One tile: rows x (R, in) with row stride ldx and weights W (O, in) with row stride in; y
 * (R, ldy). R <= RD_RMAX and O <= RD_OMAX are constants at every call site (always inlined),
 * so the loops unroll and acc stays in registers. pf: NULL, or O * in weights to prefetch
 * (into L2, RD_PF_LOC) while the tile runs, O * 8 of them a step. Prefetches change no
 * operation. */
RD_INLINE void RDT_TILE(const int R, const int O, const float *x, int64_t ldx, const float *W,
                        const float *b, int64_t in, const float *pf, float *y, int64_t ldy,
                        int accumulate) {
  RDT_VEC acc[RD_RMAX][RD_OMAX][RDT_NV], xv[RDT_NV], wv[RD_OMAX][RDT_NV];
  RD_UNROLL
  for (int r = 0; r < R; r++) {
    RD_UNROLL
    for (int o = 0; o < O; o++) {
      RD_UNROLL
      for (int j = 0; j < RDT_NV; j++)
        acc[r][o][j] = (RDT_VEC){0};
    }
  }
  int64_t k = 0;
#define RDT_STEP                                                                                   \
  do {                                                                                             \
    RD_UNROLL                                                                                      \
    for (int o = 0; o < O; o++)                                                                    \
      RDT_LOAD(wv[o], W + o * in + k);                                                             \
    RD_UNROLL                                                                                      \
    for (int r = 0; r < R; r++) {                                                                  \
      RDT_LOAD(xv, x + r * ldx + k);                                                               \
      RD_UNROLL                                                                                    \
      for (int o = 0; o < O; o++) {                                                                \
        RD_UNROLL                                                                                  \
        for (int j = 0; j < RDT_NV; j++)                                                           \
          acc[r][o][j] = acc[r][o][j] + xv[j] * wv[o][j];                                          \
      }                                                                                            \
    }                                                                                              \
  } while (0)
  if (pf != NULL) {
    /* O * 8 weights a step: O / 2 lines of 64 bytes (one when O is 1) */
    for (; k + RD_LANES <= in; k += RD_LANES) {
      RD_UNROLL
      for (int l = 0; l < O * RD_LANES; l += 16)
        __builtin_prefetch(pf + O * k + l, 0, RD_PF_LOC);
      RDT_STEP;
    }
  } else {
    for (; k + RD_LANES <= in; k += RD_LANES)
      RDT_STEP;
  }
#undef RDT_STEP
  RDT_FINISH(R, O, acc, k, x, ldx, W, b, in, y, ldy, accumulate);
}

/* R rows (xi (R, in) with row stride ldx, yi (R, ldy)) times outputs o0 .. o1-1 of out: tiles
 * of O outputs, then the outputs left over one by one. With pf set (the first row tile over a
 * block of weights, which come from L3 or memory), each tile prefetches the weights of the
 * tile RD_PF_TILES after it. */
RD_INLINE void RDT_PASS(const int R, const int O, const float *xi, int64_t ldx, const float *W,
                        const float *b, int64_t o0, int64_t o1, int64_t out, int64_t in, int pf,
                        float *yi, int64_t ldy, int accumulate) {
  int64_t o = o0;
  for (; o + O <= o1; o += O) {
    const int64_t op = o + RD_PF_TILES * O;
    const float *p = pf && op + O <= out ? W + op * in : NULL;
    RDT_TILE(R, O, xi, ldx, W + o * in, b != NULL ? b + o : NULL, in, p, yi + o, ldy, accumulate);
  }
  for (; o < o1; o++)
    RDT_TILE(R, 1, xi, ldx, W + o * in, b != NULL ? b + o : NULL, in, NULL, yi + o, ldy,
             accumulate);
}

/* RDT_PASS on rows xi (R, in), first copied to xp with row stride in + RD_PAD when xp is not
 * NULL (the copy holds the same floats). */
RD_INLINE void RDT_ROWS(const int R, const int O, const float *xi, float *xp, const float *W,
                        const float *b, int64_t o0, int64_t o1, int64_t out, int64_t in, int pf,
                        float *yi, int64_t ldy, int accumulate) {
  if (xp != NULL) {
    RD_UNROLL
    for (int r = 0; r < R; r++)
      memcpy(xp + r * (in + RD_PAD), xi + r * in, sizeof(float) * (size_t)in);
    RDT_PASS(R, O, xp, in + RD_PAD, W, b, o0, o1, out, in, pf, yi, ldy, accumulate);
  } else {
    RDT_PASS(R, O, xi, in, W, b, o0, o1, out, in, pf, yi, ldy, accumulate);
  }
}

/* The whole product with R x O tiles (constants per instantiation): outputs in blocks of
 * about RD_WBLOCK_FLOATS weights (kept in L2 while every row tile passes over them); the rows
 * left over (fewer than R) as tiles of 4, 2 and 1 rows, the outputs left over one by one.
 * When in is a multiple of RD_PAD_EVERY floats (4 KiB), rows of x and W sit in the same L1
 * set, which holds only 8 lines, so the x rows of a tile keep evicting each other and the
 * weights: with at least RD_PAD_ROWS rows and in at most RD_PAD_MAX, each row tile is copied
 * with a padded stride first (the copy pays off only when enough output tiles reuse it). */
RD_INLINE void RDT_NAME(rd_linear)(const int R, const int O, const float *x, int64_t M,
                                   const float *W, const float *b, int64_t out, int64_t in,
                                   int accumulate, float *y) {
  float pad[RD_RMAX * (RD_PAD_MAX + RD_PAD)];
  float *xp = M >= RD_PAD_ROWS && in > 0 && in % RD_PAD_EVERY == 0 && in <= RD_PAD_MAX ? pad : NULL;
  int64_t ob = RD_WBLOCK_FLOATS / (in > 0 ? in : 1);
  ob = ob < O ? O : ob - ob % O;
  for (int64_t o0 = 0; o0 < out; o0 += ob) {
    const int64_t o1 = o0 + ob < out ? o0 + ob : out;
    int64_t i = 0;
    for (; i + R <= M; i += R)
      RDT_ROWS(R, O, x + i * in, xp, W, b, o0, o1, out, in, i == 0, y + i * out, out, accumulate);
    /* fewer than R rows left: tiles of 4, 2 and 1 rows (literal row counts, so every tile
     * is unrolled) */
    if (R > 4 && i + 4 <= M) {
      RDT_ROWS(4, O, x + i * in, xp, W, b, o0, o1, out, in, i == 0, y + i * out, out, accumulate);
      i += 4;
    }
    if (R > 2 && i + 2 <= M) {
      RDT_ROWS(2, O, x + i * in, xp, W, b, o0, o1, out, in, i == 0, y + i * out, out, accumulate);
      i += 2;
    }
    if (R > 1 && i + 1 <= M)
      RDT_ROWS(1, O, x + i * in, xp, W, b, o0, o1, out, in, i == 0, y + i * out, out, accumulate);
  }
}

#undef RDT_LOAD
#undef RDT_ROWS
#undef RDT_PASS
#undef RDT_TILE
#undef RDT_FINISH
#undef RDT_SUM4
#undef RDT_UVEC
#undef RDT_VEC
#undef RDT_NV
