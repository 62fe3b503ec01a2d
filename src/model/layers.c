/* layers.c: the model's kernels with forward and backward: linear (cblas_sgemm), LayerNorm,
 * exact GELU, the LN+ReLU+dropout unit, dropout masks, rotary embedding and causal attention;
 * vectorized exp / erf for GELU and softmax with a portable and an AVX2 copy chosen at run
 * time. */
#include "model/layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "calmflow/rng.h"

static void cf_colsum_add(const float *dy, int64_t M, int64_t out, float *gb);
static void cf_rows_add(float *y, int64_t M, int64_t out, const float *b);

void cf_linear_fwd(const float *x, int64_t M, const float *W, const float *b, int64_t out,
                   int64_t in, int accumulate, float *y) {
  float beta = accumulate ? 1.0f : 0.0f;
  if (b != NULL && !accumulate && M > 0) {
    /* the bias into every row: one row, then doubling copies (few large memcpy calls) */
    memcpy(y, b, (size_t)out * sizeof(float));
    for (int64_t done = 1; done < M;) {
      int64_t n = done < M - done ? done : M - done;
      memcpy(y + done * out, y, (size_t)(n * out) * sizeof(float));
      done += n;
    }
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)out, (int)in, 1.0f, x, (int)in,
              W, (int)in, beta, y, (int)out);
  if (b != NULL && accumulate) cf_rows_add(y, M, out, b);
}

void cf_linear_bwd(const float *x, const float *dy, int64_t M, const float *W, int64_t out,
                   int64_t in, float *gW, float *gb, float *dx, int accumulate) {
  if (gW != NULL)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)M, 1.0f, dy,
                (int)out, x, (int)in, 1.0f, gW, (int)in);
  if (gb != NULL) cf_colsum_add(dy, M, out, gb);
  if (dx != NULL)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)in, (int)out, 1.0f, dy,
                (int)out, W, (int)in, accumulate ? 1.0f : 0.0f, dx, (int)in);
}

/* ---- vectors of floats (LayerNorm, GELU, softmax) ----
 *
 * GCC vector extensions of 8 floats (and 16 for the AVX-512 copy of GELU; the math is
 * model/vmath_tile.h, once per width). Every result element is the same sequence of float
 * operations on its own input (no lane ever mixes with another, except the fixed-order sums
 * of the softmax and the LayerNorm reductions, always in 8 lanes), and this file is compiled
 * without multiply-add contraction (-ffp-contract=off, CMakeLists.txt), so the portable copy
 * (SSE2: each 8-float operation as two 4-float ones) and the AVX2 / AVX-512 copies chosen at
 * run time (LayerNorm: target_clones; GELU, softmax: cf_vmath_path) give the same bits;
 * sampling's batch invariance (kvcache.c) and test_vmath rely on that. The helpers are always
 * inlined, so no wide vector crosses a function boundary (so -Wpsabi, which GCC reports at
 * the end of the file, is off from here on). */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef double vm_d4 __attribute__((vector_size(4 * sizeof(double))));
typedef float vm_f4 __attribute__((vector_size(4 * sizeof(float))));
#define VM_INLINE static inline __attribute__((always_inline))
#define VM_W 8

#define VMT_W 8
#define VMT(x) x##8
#include "model/vmath_tile.h"
#undef VMT_W
#undef VMT
#if defined(__x86_64__)
#define VMT_W 16
#define VMT(x) x##16
#include "model/vmath_tile.h"
#undef VMT_W
#undef VMT
#endif

/* gb (out) += the column sums of dy (M, out), row by row in order (every column's sum is the
 * same sequence of additions as a scalar loop). */
CF_CLONES static void cf_colsum_add(const float *dy, int64_t M, int64_t out, float *gb) {
  int64_t o = 0;
  for (; o + VM_W <= out; o += VM_W) {
    vm_f8 acc = vm_load8(gb + o);
    for (int64_t i = 0; i < M; i++)
      acc += vm_load8(dy + i * out + o);
    vm_store8(gb + o, acc);
  }
  for (; o < out; o++) {
    float acc = gb[o];
    for (int64_t i = 0; i < M; i++)
      acc += dy[i * out + o];
    gb[o] = acc;
  }
}

/* y (M, out) += b (out) on every row. */
CF_CLONES static void cf_rows_add(float *y, int64_t M, int64_t out, const float *b) {
  for (int64_t i = 0; i < M; i++) {
    float *yr = y + i * out;
    int64_t o = 0;
    for (; o + VM_W <= out; o += VM_W)
      vm_store8(yr + o, vm_load8(yr + o) + vm_load8(b + o));
    for (; o < out; o++)
      yr[o] += b[o];
  }
}

/* Reductions over a row: eight float partial sums (independent chains the compiler can keep
 * in one vector register), combined in double. Rows here are at most a few thousand long, so
 * each partial sum adds at most a few hundred terms. */
static double row_sum(const float *x, int64_t n) {
  float acc[8] = {0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; u++)
      acc[u] += x[k + u];
  double s = 0;
  for (; k < n; k++)
    s += x[k];
  for (int u = 0; u < 8; u++)
    s += acc[u];
  return s;
}

static double row_dot(const float *a, const float *b, int64_t n) {
  float acc[8] = {0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; u++)
      acc[u] += a[k + u] * b[k + u];
  double s = 0;
  for (; k < n; k++)
    s += (double)a[k] * b[k];
  for (int u = 0; u < 8; u++)
    s += acc[u];
  return s;
}

static double row_sqdev(const float *x, float m, int64_t n) {
  float acc[8] = {0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; u++) {
      float d = x[k + u] - m;
      acc[u] += d * d;
    }
  double s = 0;
  for (; k < n; k++) {
    double d = (double)x[k] - m;
    s += d * d;
  }
  for (int u = 0; u < 8; u++)
    s += acc[u];
  return s;
}

CF_CLONES void cf_layernorm_fwd(const float *x, int64_t M, int64_t n, const float *g,
                                const float *b, float *xhat, float *rstd, float *y) {
  for (int64_t i = 0; i < M; i++) {
    const float *xr = x + i * n;
    float fm = (float)(row_sum(xr, n) / (double)n);
    double v = row_sqdev(xr, fm, n) / (double)n;
    float frs = (float)(1.0 / sqrt(v + CF_LN_EPS));
    float *hr = xhat + i * n;
    rstd[i] = frs;
    int64_t k = 0;
    if (y != NULL && g != NULL) { /* one pass writes xhat and y */
      float *yr = y + i * n;
      for (; k + VM_W <= n; k += VM_W) {
        vm_f8 h = (vm_load8(xr + k) - fm) * frs;
        vm_store8(hr + k, h);
        vm_store8(yr + k, h * vm_load8(g + k) + vm_load8(b + k));
      }
      for (; k < n; k++) {
        float h = (xr[k] - fm) * frs;
        hr[k] = h;
        yr[k] = h * g[k] + b[k];
      }
      continue;
    }
    for (; k + VM_W <= n; k += VM_W)
      vm_store8(hr + k, (vm_load8(xr + k) - fm) * frs);
    for (; k < n; k++)
      hr[k] = (xr[k] - fm) * frs;
    if (y != NULL && y + i * n != hr) memcpy(y + i * n, hr, (size_t)n * sizeof(float));
  }
}

CF_CLONES void cf_layernorm_affine(const float *xhat, int64_t M, int64_t n, const float *g,
                                   const float *b, float *y) {
  for (int64_t i = 0; i < M; i++) {
    const float *hr = xhat + i * n;
    float *yr = y + i * n;
    int64_t k = 0;
    for (; k + VM_W <= n; k += VM_W)
      vm_store8(yr + k, vm_load8(hr + k) * vm_load8(g + k) + vm_load8(b + k));
    for (; k < n; k++)
      yr[k] = hr[k] * g[k] + b[k];
  }
}

CF_CLONES double cf_sqsum(const float *x, size_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++)
      lane[k] += (double)x[i + k] * (double)x[i + k];
  for (; i < n; i++)
    s += (double)x[i] * (double)x[i];
  for (int k = 0; k < 8; k++)
    s += lane[k];
  return s;
}

CF_CLONES void cf_mul(const float *a, const float *b, float *y, size_t n) {
  size_t k = 0;
  for (; k + VM_W <= n; k += VM_W)
    vm_store8(y + k, vm_load8(a + k) * vm_load8(b + k));
  for (; k < n; k++)
    y[k] = a[k] * b[k];
}

/* The lane sums of a and b (8 lanes each) into *s1, *s2 after the tail terms already there,
 * lane 0 first (the order of row_sum). */
VM_INLINE void vm_lanes2(vm_f8 a, vm_f8 b, double *s1, double *s2) {
  for (int u = 0; u < VM_W; u++)
    *s1 += a[u], *s2 += b[u];
}

CF_CLONES void cf_layernorm_bwd(const float *dy, const float *xhat, const float *rstd, int64_t M,
                                int64_t n, const float *g, float *gg, float *gb, float *dx,
                                int accumulate) {
  for (int64_t i = 0; i < M; i++) {
    const float *dr = dy + i * n, *hr = xhat + i * n;
    double s1 = 0, s2 = 0;
    if (g != NULL) {
      /* lane u sums the terms k = u mod 8 of the whole vectors; the affine gradients in the
       * same pass */
      vm_f8 a1 = {0}, a2 = {0};
      int64_t k = 0;
      for (; k + VM_W <= n; k += VM_W) {
        vm_f8 d0 = vm_load8(dr + k), h = vm_load8(hr + k), d = d0 * vm_load8(g + k);
        a1 += d;
        a2 += d * h;
        if (gg != NULL) {
          vm_store8(gg + k, vm_load8(gg + k) + d0 * h);
          vm_store8(gb + k, vm_load8(gb + k) + d0);
        }
      }
      for (int64_t j = k; gg != NULL && j < n; j++) {
        gg[j] += dr[j] * hr[j];
        gb[j] += dr[j];
      }
      for (; k < n; k++) {
        float d = dr[k] * g[k];
        s1 += d;
        s2 += (double)d * hr[k];
      }
      vm_lanes2(a1, a2, &s1, &s2);
    } else {
      s1 = row_sum(dr, n);
      s2 = row_dot(dr, hr, n);
    }
    float m1 = (float)(s1 / (double)n), m2 = (float)(s2 / (double)n), rs = rstd[i];
    float *xr = dx + i * n;
    int64_t k = 0;
    if (g != NULL) {
      for (; k + VM_W <= n; k += VM_W) {
        vm_f8 v = rs * (vm_load8(dr + k) * vm_load8(g + k) - m1 - vm_load8(hr + k) * m2);
        vm_store8(xr + k, accumulate ? vm_load8(xr + k) + v : v);
      }
      for (; k < n; k++) {
        float v = rs * (dr[k] * g[k] - m1 - hr[k] * m2);
        xr[k] = accumulate ? xr[k] + v : v;
      }
    } else {
      for (; k + VM_W <= n; k += VM_W) {
        vm_f8 v = rs * (vm_load8(dr + k) - m1 - vm_load8(hr + k) * m2);
        vm_store8(xr + k, accumulate ? vm_load8(xr + k) + v : v);
      }
      for (; k < n; k++) {
        float v = rs * (dr[k] - m1 - hr[k] * m2);
        xr[k] = accumulate ? xr[k] + v : v;
      }
    }
  }
}

/* ---- vector math: exp, the normal CDF (exact GELU) and softmax (types above) ---- */

/* r[j] = exp(r[j] - mx) for j < n; returns the sum of the new r in double: eight partial sums
 * (lane j % 8), combined in a fixed tree. */
VM_INLINE double vm_exp_sum(float *r, size_t n, float mx) {
  vm_d4 s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
  for (size_t i = 0; i < n; i += VM_W) {
    size_t c = n - i < VM_W ? n - i : VM_W;
    vm_f8 e = vm_exp8(vm_loadn8(r + i, c, -INFINITY) - mx);
    vm_storen8(r + i, e, c);
    vm_f4 lo, hi;
    memcpy(&lo, &e, sizeof lo);
    memcpy(&hi, (const char *)&e + sizeof lo, sizeof hi);
    s0 += __builtin_convertvector(lo, vm_d4);
    s1 += __builtin_convertvector(hi, vm_d4);
  }
  return ((s0[0] + s0[1]) + (s0[2] + s0[3])) + ((s1[0] + s1[1]) + (s1[2] + s1[3]));
}

VM_INLINE float vm_max(const float *r, size_t n) {
  vm_f8 m = (vm_f8){0} - INFINITY;
  for (size_t i = 0; i < n; i += VM_W) {
    size_t c = n - i < VM_W ? n - i : VM_W;
    vm_f8 v = vm_loadn8(r + i, c, -INFINITY);
    m = vm_sel8(v > m, v, m);
  }
  float mx = m[0];
  for (int k = 1; k < VM_W; k++)
    mx = m[k] > mx ? m[k] : mx;
  return mx;
}

VM_INLINE void vm_scale(float *r, size_t n, float a) {
  for (size_t i = 0; i < n; i += VM_W) {
    size_t c = n - i < VM_W ? n - i : VM_W;
    vm_storen8(r + i, vm_loadn8(r + i, c, 0.0f) * a, c);
  }
}

/* Lanes k of the vector at offset o with o + k >= n (past the row's last column). */
VM_INLINE vm_i8 vm_past(size_t o, size_t n) {
  const vm_i8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  return lane >= (vm_i8){0} + (int32_t)(n - o);
}

VM_INLINE void vm_softmax(float *r, int64_t first, int64_t i, int64_t ncol) {
  size_t n = (size_t)(i - first + 1), nv = (n + VM_W - 1) / VM_W * VM_W;
  float *s = r + first;
  if ((size_t)first + nv <= (size_t)ncol) {
    /* whole vectors up to nv: lanes past the last column read as -inf, so they come out 0
     * (the value those columns must get) and every other value has the bits of the padded
     * tail below */
    const vm_f8 ninf = (vm_f8){0} - INFINITY;
    vm_f8 m = ninf;
    for (size_t o = 0; o < nv; o += VM_W) {
      vm_f8 v = vm_sel8(vm_past(o, n), ninf, vm_load8(s + o));
      m = vm_sel8(v > m, v, m);
    }
    float mx = m[0];
    for (int k = 1; k < VM_W; k++)
      mx = m[k] > mx ? m[k] : mx;
    vm_d4 s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
    for (size_t o = 0; o < nv; o += VM_W) {
      vm_f8 e = vm_exp8(vm_sel8(vm_past(o, n), ninf, vm_load8(s + o)) - mx);
      vm_store8(s + o, e);
      vm_f4 lo, hi;
      memcpy(&lo, &e, sizeof lo);
      memcpy(&hi, (const char *)&e + sizeof lo, sizeof hi);
      s0 += __builtin_convertvector(lo, vm_d4);
      s1 += __builtin_convertvector(hi, vm_d4);
    }
    double sum = ((s0[0] + s0[1]) + (s0[2] + s0[3])) + ((s1[0] + s1[1]) + (s1[2] + s1[3]));
    float inv = (float)(1.0 / sum);
    for (size_t o = 0; o < nv; o += VM_W)
      vm_store8(s + o, vm_load8(s + o) * inv);
    if (first > 0) memset(r, 0, (size_t)first * sizeof(float));
    if ((size_t)ncol > first + nv)
      memset(s + nv, 0, ((size_t)ncol - (size_t)first - nv) * sizeof(float));
    return;
  }
  float mx = vm_max(s, n);
  float inv = (float)(1.0 / vm_exp_sum(s, n, mx));
  vm_scale(s, n, inv);
  if (first > 0) memset(r, 0, (size_t)first * sizeof(float));
  if (ncol > i + 1) memset(r + i + 1, 0, (size_t)(ncol - i - 1) * sizeof(float));
}

/* The copies: portable (the build's baseline ISA), AVX2 and AVX-512 (no FMA: see above; the
 * AVX-512 copy runs GELU on 16-float vectors, the softmax on 8-float ones like the others). */
#define VM_COPIES(suffix, attr, W)                                                                 \
  attr static void gelu_fwd_##suffix(const float *x, float *y, float *cdf, size_t n) {             \
    vm_gelu_fwd##W(x, y, cdf, n);                                                                  \
  }                                                                                                \
  attr static void gelu_bwd_##suffix(const float *x, const float *cdf, const float *dy, float *dx, \
                                     size_t n) {                                                   \
    vm_gelu_bwd##W(x, cdf, dy, dx, n);                                                             \
  }                                                                                                \
  attr static double exp_sum_##suffix(float *r, size_t n, float mx) {                              \
    return vm_exp_sum(r, n, mx);                                                                   \
  }                                                                                                \
  attr static void softmax_##suffix(float *r, int64_t first, int64_t i, int64_t ncol) {            \
    vm_softmax(r, first, i, ncol);                                                                 \
  }                                                                                                \
  attr static void map_##suffix(const float *x, float *y, size_t n, int which) {                   \
    vm_map##W(x, y, n, which);                                                                     \
  }
VM_COPIES(portable, , 8)
#if defined(__x86_64__)
VM_COPIES(avx2, __attribute__((target("avx2"))), 8)
VM_COPIES(avx512, __attribute__((target("avx2,avx512f,avx512vl"))), 16)
#endif

/* Test hook state: the forced copy, or -1 for the best the CPU has. */
static int vm_forced = -1;

static int vm_best(void) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2")) return 0;
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2 : 1;
#else
  return 0;
#endif
}

static int vm_path(void) {
  return vm_forced >= 0 ? vm_forced : vm_best();
}

int cf_vmath_path(int force) {
  int best = vm_best();
  if (force >= -1) vm_forced = force > best ? best : force;
  return vm_path();
}

#if defined(__x86_64__)
#define VM_DISPATCH(fn, ...)                                                                       \
  do {                                                                                             \
    int p_ = vm_path();                                                                            \
    if (p_ == 2) {                                                                                 \
      fn##_avx512(__VA_ARGS__);                                                                    \
      return;                                                                                      \
    }                                                                                              \
    if (p_ == 1) {                                                                                 \
      fn##_avx2(__VA_ARGS__);                                                                      \
      return;                                                                                      \
    }                                                                                              \
    fn##_portable(__VA_ARGS__);                                                                    \
  } while (0)
#else
#define VM_DISPATCH(fn, ...) fn##_portable(__VA_ARGS__)
#endif

void cf_vmath_map(const float *x, float *y, size_t n, int which) {
  VM_DISPATCH(map, x, y, n, which);
}

double cf_exp_sum(float *r, int64_t n, float mx) {
  if (n <= 0) return 0.0;
#if defined(__x86_64__)
  int p = vm_path();
  if (p == 2) return exp_sum_avx512(r, (size_t)n, mx);
  if (p == 1) return exp_sum_avx2(r, (size_t)n, mx);
#endif
  return exp_sum_portable(r, (size_t)n, mx);
}

void cf_gelu_fwd(const float *x, float *y, float *cdf, size_t n) {
  VM_DISPATCH(gelu_fwd, x, y, cdf, n);
}

void cf_gelu_bwd(const float *x, const float *cdf, const float *dy, float *dx, size_t n) {
  VM_DISPATCH(gelu_bwd, x, cdf, dy, dx, n);
}

void cf_span_softmax_row(float *r, int64_t first, int64_t i, int64_t ncol) {
  VM_DISPATCH(softmax, r, first, i, ncol);
}

CF_CLONES void cf_lnrelu_fwd(float *a, float *rstd, const float *mask, int64_t M, int64_t n,
                             float *d) {
  const vm_f8 zero = {0};
  for (int64_t i = 0; i < M; i++) { /* cf_layernorm_fwd's arithmetic, ReLU in the same pass */
    float *ar = a + i * n, *dr = d + i * n;
    const float *mr = mask != NULL ? mask + i * n : NULL;
    float fm = (float)(row_sum(ar, n) / (double)n);
    double v = row_sqdev(ar, fm, n) / (double)n;
    float frs = (float)(1.0 / sqrt(v + CF_LN_EPS));
    rstd[i] = frs;
    int64_t k = 0;
    for (; k + VM_W <= n; k += VM_W) {
      vm_f8 h = (vm_load8(ar + k) - fm) * frs;
      vm_store8(ar + k, h);
      vm_store8(dr + k, vm_sel8(h > 0.0f, mr != NULL ? h * vm_load8(mr + k) : h, zero));
    }
    for (; k < n; k++) {
      float h = (ar[k] - fm) * frs;
      ar[k] = h;
      dr[k] = h > 0.0f ? (mr != NULL ? h * mr[k] : h) : 0.0f;
    }
  }
}

CF_CLONES void cf_lnrelu_bwd(const float *dd, const float *xhat, const float *rstd,
                             const float *mask, int64_t M, int64_t n, float *da) {
  const vm_f8 zero = {0};
  for (int64_t i = 0; i < M; i++) {
    /* the ReLU / dropout gradient and cf_layernorm_bwd's two row sums (row_sum, row_dot order)
     * in one pass, then the input gradient */
    const float *ddr = dd + i * n, *hr = xhat + i * n, *mr = mask != NULL ? mask + i * n : NULL;
    float *xr = da + i * n;
    vm_f8 a1 = zero, a2 = zero;
    int64_t k = 0;
    for (; k + VM_W <= n; k += VM_W) {
      vm_f8 h = vm_load8(hr + k), g = vm_load8(ddr + k);
      vm_f8 t = vm_sel8(h > 0.0f, mr != NULL ? g * vm_load8(mr + k) : g, zero);
      vm_store8(xr + k, t);
      a1 += t;
      a2 += t * h;
    }
    double s1 = 0, s2 = 0;
    for (int64_t j = k; j < n; j++) {
      float h = hr[j], g = ddr[j];
      float t = h > 0.0f ? (mr != NULL ? g * mr[j] : g) : 0.0f;
      xr[j] = t;
      s1 += t;
      s2 += (double)t * h;
    }
    vm_lanes2(a1, a2, &s1, &s2);
    float m1 = (float)(s1 / (double)n), m2 = (float)(s2 / (double)n), rs = rstd[i];
    for (k = 0; k + VM_W <= n; k += VM_W)
      vm_store8(xr + k, rs * (vm_load8(xr + k) - m1 - vm_load8(hr + k) * m2));
    for (; k < n; k++)
      xr[k] = rs * (xr[k] - m1 - hr[k] * m2);
  }
}

void cf_dropout_mask_rows(float *mask, int64_t B, const int64_t lo[2], const int64_t hi[2],
                          int64_t width, float p, const struct cf_dropkey *dk, int site) {
  size_t n0 = (size_t)(hi[0] - lo[0]) * (size_t)width, n1 = (size_t)(hi[1] - lo[1]) * (size_t)width;
  float keep = 1.0f / (1.0f - p);
  for (int64_t b = 0; b < B; b++) {
    struct cf_rng r = {.seed = dk->seed,
                       .domain = (uint32_t)(CF_RNG_DROPOUT + site),
                       .step = dk->step,
                       .index = dk->seq0 + (uint64_t)b};
    float *mb = mask + (size_t)b * (n0 + n1);
    if (n0) cf_rng_uniform(&r, (uint64_t)lo[0] * (uint64_t)width, mb, n0);
    if (n1) cf_rng_uniform(&r, (uint64_t)lo[1] * (uint64_t)width, mb + n0, n1);
    for (size_t e = 0; e < n0 + n1; e++)
      mb[e] = mb[e] < p ? 0.0f : keep;
  }
}

void cf_dropout_mask(float *mask, int64_t B, int64_t rows, int64_t width, float p,
                     const struct cf_dropkey *dk, int site) {
  const int64_t lo[2] = {0, rows}, hi[2] = {rows, rows};
  cf_dropout_mask_rows(mask, B, lo, hi, width, p, dk, site);
}

void cf_rotary_tables(float *cs, float *sn, int64_t npos, int64_t rot, double base) {
  int64_t half = rot / 2;
  for (int64_t pos = 0; pos < npos; pos++) {
    for (int64_t i = 0; i < half; i++) {
      double ang = (double)pos * pow(base, -2.0 * (double)i / (double)rot);
      cs[pos * half + i] = (float)cos(ang);
      sn[pos * half + i] = (float)sin(ang);
    }
  }
}

void cf_rotary_apply(float *qkv, int64_t n, int64_t ld, int64_t heads, int64_t dh, int64_t rot,
                     const float *cs, const float *sn, int64_t pos0, int inverse) {
  int64_t half = rot / 2;
  if (half == 0) return;
  float sgn = inverse ? -1.0f : 1.0f;
  for (int64_t t = 0; t < n; t++) {
    const float *c = cs + (pos0 + t) * half, *s = sn + (pos0 + t) * half;
    float *row = qkv + t * ld;
    for (int64_t h = 0; h < heads; h++) {
      for (int part = 0; part < 2; part++) { /* q then k */
        float *v = row + h * 3 * dh + part * dh;
        for (int64_t i = 0; i < half; i++) {
          float a = v[i], b = v[i + half], si = sgn * s[i];
          v[i] = a * c[i] - b * si;
          v[i + half] = b * c[i] + a * si;
        }
      }
    }
  }
}

void cf_causal_softmax_row(float *r, int64_t i, int64_t ncol) {
  cf_span_softmax_row(r, 0, i, ncol);
}

void cf_attn_fwd(const float *qkv, int64_t B, int64_t T, int64_t heads, int64_t dh, int64_t win,
                 float *probs, float *out) {
  int64_t H = heads * dh, ld = 3 * H;
  float scale = (float)(1.0 / sqrt((double)dh));
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < heads; h++) {
      const float *Q = qkv + b * T * ld + h * 3 * dh, *K = Q + dh, *V = Q + 2 * dh;
      float *Pm = probs + (b * heads + h) * T * T;
      float *O = out + b * T * H + h * dh;
      for (int64_t r0 = 0; r0 < T; r0 += CF_ATTN_CHUNK) {
        int64_t r1 = r0 + CF_ATTN_CHUNK < T ? r0 + CF_ATTN_CHUNK : T, m = r1 - r0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)r1, (int)dh, scale,
                    Q + r0 * ld, (int)ld, K, (int)ld, 0.0f, Pm + r0 * T, (int)T);
        for (int64_t i = r0; i < r1; i++)
          cf_span_softmax_row(Pm + i * T, cf_attn_first(i, win), i, r1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)dh, (int)r1, 1.0f,
                    Pm + r0 * T, (int)T, V, (int)ld, 0.0f, O + r0 * H, (int)H);
      }
    }
  }
}

void cf_attn_bwd(const float *qkv, const float *probs, const float *dout, int64_t B, int64_t T,
                 int64_t heads, int64_t dh, float *dqkv, float *scratch) {
  int64_t H = heads * dh, ld = 3 * H;
  float scale = (float)(1.0 / sqrt((double)dh));
  memset(dqkv, 0, (size_t)(B * T * ld) * sizeof(float));
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < heads; h++) {
      const float *Q = qkv + b * T * ld + h * 3 * dh, *K = Q + dh, *V = Q + 2 * dh;
      const float *Pm = probs + (b * heads + h) * T * T;
      const float *dO = dout + b * T * H + h * dh;
      float *dQ = dqkv + b * T * ld + h * 3 * dh, *dK = dQ + dh, *dV = dQ + 2 * dh;
      for (int64_t r0 = 0; r0 < T; r0 += CF_ATTN_CHUNK) {
        int64_t r1 = r0 + CF_ATTN_CHUNK < T ? r0 + CF_ATTN_CHUNK : T, m = r1 - r0;
        float *dS = scratch; /* (m, r1) */
        /* dP = dO V^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)r1, (int)dh, 1.0f,
                    dO + r0 * H, (int)H, V, (int)ld, 0.0f, dS, (int)r1);
        /* dV += P^T dO */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r1, (int)dh, (int)m, 1.0f,
                    Pm + r0 * T, (int)T, dO + r0 * H, (int)H, 1.0f, dV, (int)ld);
        /* dS = P * (dP - sum_j P dP) */
        for (int64_t i = r0; i < r1; i++) {
          const float *pr = Pm + i * T;
          float *sr = dS + (i - r0) * r1;
          float a = (float)row_dot(pr, sr, i + 1);
          for (int64_t j = 0; j <= i; j++)
            sr[j] = pr[j] * (sr[j] - a);
          for (int64_t j = i + 1; j < r1; j++)
            sr[j] = 0.0f;
        }
        /* dQ = scale dS K, dK += scale dS^T Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)dh, (int)r1, scale, dS,
                    (int)r1, K, (int)ld, 0.0f, dQ + r0 * ld, (int)ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r1, (int)dh, (int)m, scale, dS,
                    (int)r1, Q + r0 * ld, (int)ld, 1.0f, dK, (int)ld);
      }
    }
  }
}
