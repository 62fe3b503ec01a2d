/* rowdet_tile.h: the tiles of rowdet.c for one hardware vector width. Private to rowdet.c,
 * which includes it once per width with RDT_VW (4 or 8 floats per vector) and RDT_NAME(x)
 * (appends a suffix to x) defined. Each 8-lane accumulator of rowdet.c is RDT_NV vectors of
 * RDT_VW lanes: lane u of the accumulator is element u % RDT_VW of vector u / RDT_VW, so every
 * width performs the same per-lane operations. */

#define RDT_NV (RD_LANES / RDT_VW)
#define RDT_VEC RDT_NAME(rd_vec)
#define RDT_UVEC RDT_NAME(rd_uvec)
#define RDT_SUM4 RDT_NAME(rd_sum4)
#define RDT_TILE RDT_NAME(rd_tile)
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

/* s[j] = rd_sum of accumulator a[j] (each RDT_NV vectors), for j < 4, in vector form: level 1
 * adds lane pairs (0+1, 2+3, ...) of two accumulators in one vector, level 2 the pairs of
 * those, level 3 the half of lanes 0..3 to the half of lanes 4..7: the tree of rd_sum, operand
 * for operand. */
#if RD_SHUFFLE
RD_INLINE void RDT_SUM4(RDT_VEC a[4][RDT_NV], float s[4]) {
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
  RDT_VEC r = half[0] + half[1];
#endif
  memcpy(s, &r, 4 * sizeof(float));
}
#endif

/* One tile: rows x (R, in) and weights W (O, in), both with row stride in; y (R, ldy).
 * R <= RD_RMAX and O <= RD_OMAX are constants at every call site (always inlined), so the
 * loops unroll and acc stays in registers. */
RD_INLINE void RDT_TILE(const int R, const int O, const float *x, const float *W, const float *b,
                        int64_t in, float *y, int64_t ldy, int accumulate) {
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
  for (; k + RD_LANES <= in; k += RD_LANES) {
    RD_UNROLL
    for (int o = 0; o < O; o++)
      RDT_LOAD(wv[o], W + o * in + k);
    RD_UNROLL
    for (int r = 0; r < R; r++) {
      RDT_LOAD(xv, x + r * in + k);
      RD_UNROLL
      for (int o = 0; o < O; o++) {
        RD_UNROLL
        for (int j = 0; j < RDT_NV; j++)
          acc[r][o][j] = acc[r][o][j] + xv[j] * wv[o][j];
      }
    }
  }
  /* the last in - k < 8 values, one lane each (scalar updates of lanes 0 .. in-k-1) */
  RD_UNROLL
  for (int u = 0; u < RD_LANES - 1; u++) {
    if (k + u >= in) break;
    RD_UNROLL
    for (int r = 0; r < R; r++) {
      const float xu = x[r * in + k + u];
      RD_UNROLL
      for (int o = 0; o < O; o++)
        acc[r][o][u / RDT_VW][u % RDT_VW] =
            acc[r][o][u / RDT_VW][u % RDT_VW] + xu * W[o * in + k + u];
    }
  }

  RD_UNROLL
  for (int r = 0; r < R; r++) {
    float s[RD_OMAX];
#if RD_SHUFFLE
    if (O == 4) {
      RDT_SUM4(acc[r], s);
    } else
#endif
    {
      RD_UNROLL
      for (int o = 0; o < O; o++) {
        float l[RD_LANES];
        RD_UNROLL
        for (int u = 0; u < RD_LANES; u++)
          l[u] = acc[r][o][u / RDT_VW][u % RDT_VW];
        s[o] = rd_sum(l);
      }
    }
    RD_UNROLL
    for (int o = 0; o < O; o++) {
      float t = s[o];
      if (b != NULL) t = t + b[o];
      float *yo = y + r * ldy + o;
      *yo = accumulate ? *yo + t : t;
    }
  }
}

/* The whole product with R x O tiles (constants per instantiation): outputs in blocks of
 * about RD_WBLOCK_FLOATS weights (kept in L2 while every row tile passes over them); rows and
 * outputs left over run the same tile with R = 1 or O = 1. */
RD_INLINE void RDT_NAME(rd_linear)(const int R, const int O, const float *x, int64_t M,
                                   const float *W, const float *b, int64_t out, int64_t in,
                                   int accumulate, float *y) {
  int64_t ob = RD_WBLOCK_FLOATS / (in > 0 ? in : 1);
  ob = ob < O ? O : ob - ob % O;
  for (int64_t o0 = 0; o0 < out; o0 += ob) {
    const int64_t o1 = o0 + ob < out ? o0 + ob : out;
    const int64_t ofull = o0 + (o1 - o0) / O * O;
    int64_t i = 0;
    for (; i + R <= M; i += R) {
      const float *xi = x + i * in;
      float *yi = y + i * out;
      int64_t o = o0;
      for (; o < ofull; o += O)
        RDT_TILE(R, O, xi, W + o * in, b != NULL ? b + o : NULL, in, yi + o, out, accumulate);
      for (; o < o1; o++)
        RDT_TILE(R, 1, xi, W + o * in, b != NULL ? b + o : NULL, in, yi + o, out, accumulate);
    }
    for (; i < M; i++) {
      const float *xi = x + i * in;
      float *yi = y + i * out;
      int64_t o = o0;
      for (; o < ofull; o += O)
        RDT_TILE(1, O, xi, W + o * in, b != NULL ? b + o : NULL, in, yi + o, out, accumulate);
      for (; o < o1; o++)
        RDT_TILE(1, 1, xi, W + o * in, b != NULL ? b + o : NULL, in, yi + o, out, accumulate);
    }
  }
}

#undef RDT_LOAD
#undef RDT_TILE
#undef RDT_SUM4
#undef RDT_UVEC
#undef RDT_VEC
#undef RDT_NV
