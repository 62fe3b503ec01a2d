/* layers.c: the model's kernels with forward and backward: linear (cblas_sgemm), LayerNorm,
 * exact GELU, the LN+ReLU+dropout unit, dropout masks, rotary embedding and causal attention. */
#include "model/layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "calmflow/rng.h"

void cf_linear_fwd(const float *x, int64_t M, const float *W, const float *b, int64_t out,
                   int64_t in, int accumulate, float *y) {
  float beta = accumulate ? 1.0f : 0.0f;
  if (b != NULL && !accumulate) {
    for (int64_t i = 0; i < M; i++)
      memcpy(y + i * out, b, (size_t)out * sizeof(float));
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)out, (int)in, 1.0f, x, (int)in,
              W, (int)in, beta, y, (int)out);
  if (b != NULL && accumulate) {
    for (int64_t i = 0; i < M; i++) {
      float *yr = y + i * out;
      for (int64_t o = 0; o < out; o++)
        yr[o] += b[o];
    }
  }
}

void cf_linear_bwd(const float *x, const float *dy, int64_t M, const float *W, int64_t out,
                   int64_t in, float *gW, float *gb, float *dx, int accumulate) {
  if (gW != NULL)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)M, 1.0f, dy,
                (int)out, x, (int)in, 1.0f, gW, (int)in);
  if (gb != NULL) {
    for (int64_t i = 0; i < M; i++) {
      const float *dr = dy + i * out;
      for (int64_t o = 0; o < out; o++)
        gb[o] += dr[o];
    }
  }
  if (dx != NULL)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)in, (int)out, 1.0f, dy,
                (int)out, W, (int)in, accumulate ? 1.0f : 0.0f, dx, (int)in);
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

void cf_layernorm_fwd(const float *x, int64_t M, int64_t n, const float *g, const float *b,
                      float *xhat, float *rstd, float *y) {
  for (int64_t i = 0; i < M; i++) {
    const float *xr = x + i * n;
    float fm = (float)(row_sum(xr, n) / (double)n);
    double v = row_sqdev(xr, fm, n) / (double)n;
    float frs = (float)(1.0 / sqrt(v + CF_LN_EPS));
    float *hr = xhat + i * n;
    for (int64_t k = 0; k < n; k++)
      hr[k] = (xr[k] - fm) * frs;
    rstd[i] = frs;
    if (y != NULL) {
      float *yr = y + i * n;
      if (g != NULL) {
        for (int64_t k = 0; k < n; k++)
          yr[k] = hr[k] * g[k] + b[k];
      } else if (yr != hr) {
        memcpy(yr, hr, (size_t)n * sizeof(float));
      }
    }
  }
}

void cf_layernorm_bwd(const float *dy, const float *xhat, const float *rstd, int64_t M, int64_t n,
                      const float *g, float *gg, float *gb, float *dx, int accumulate) {
  for (int64_t i = 0; i < M; i++) {
    const float *dr = dy + i * n, *hr = xhat + i * n;
    double s1, s2;
    if (g != NULL) {
      float a1[8] = {0}, a2[8] = {0};
      int64_t k = 0;
      for (; k + 8 <= n; k += 8)
        for (int u = 0; u < 8; u++) {
          float d = dr[k + u] * g[k + u];
          a1[u] += d;
          a2[u] += d * hr[k + u];
        }
      s1 = 0, s2 = 0;
      for (; k < n; k++) {
        float d = dr[k] * g[k];
        s1 += d;
        s2 += (double)d * hr[k];
      }
      for (int u = 0; u < 8; u++)
        s1 += a1[u], s2 += a2[u];
      if (gg != NULL) {
        for (int64_t j = 0; j < n; j++) {
          gg[j] += dr[j] * hr[j];
          gb[j] += dr[j];
        }
      }
    } else {
      s1 = row_sum(dr, n);
      s2 = row_dot(dr, hr, n);
    }
    float m1 = (float)(s1 / (double)n), m2 = (float)(s2 / (double)n), rs = rstd[i];
    float *xr = dx + i * n;
    if (g != NULL) {
      if (accumulate) {
        for (int64_t k = 0; k < n; k++)
          xr[k] += rs * (dr[k] * g[k] - m1 - hr[k] * m2);
      } else {
        for (int64_t k = 0; k < n; k++)
          xr[k] = rs * (dr[k] * g[k] - m1 - hr[k] * m2);
      }
    } else {
      if (accumulate) {
        for (int64_t k = 0; k < n; k++)
          xr[k] += rs * (dr[k] - m1 - hr[k] * m2);
      } else {
        for (int64_t k = 0; k < n; k++)
          xr[k] = rs * (dr[k] - m1 - hr[k] * m2);
      }
    }
  }
}

#define CF_SQRT1_2 0.70710678118654752440f
#define CF_INV_SQRT_2PI 0.39894228040143267794f

void cf_gelu_fwd(const float *x, float *y, float *cdf, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i], c = 0.5f * (1.0f + erff(v * CF_SQRT1_2));
    if (cdf != NULL) cdf[i] = c;
    y[i] = v * c;
  }
}

void cf_gelu_bwd(const float *x, const float *cdf, const float *dy, float *dx, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    float c = cdf != NULL ? cdf[i] : 0.5f * (1.0f + erff(v * CF_SQRT1_2));
    float pdf = CF_INV_SQRT_2PI * expf(-0.5f * v * v);
    dx[i] = dy[i] * (c + v * pdf);
  }
}

void cf_lnrelu_fwd(float *a, float *rstd, const float *mask, int64_t M, int64_t n, float *d) {
  cf_layernorm_fwd(a, M, n, NULL, NULL, a, rstd, NULL);
  size_t tot = (size_t)M * (size_t)n;
  if (mask != NULL) {
    for (size_t i = 0; i < tot; i++)
      d[i] = a[i] > 0.0f ? a[i] * mask[i] : 0.0f;
  } else {
    for (size_t i = 0; i < tot; i++)
      d[i] = a[i] > 0.0f ? a[i] : 0.0f;
  }
}

void cf_lnrelu_bwd(const float *dd, const float *xhat, const float *rstd, const float *mask,
                   int64_t M, int64_t n, float *da) {
  size_t tot = (size_t)M * (size_t)n;
  if (mask != NULL) {
    for (size_t i = 0; i < tot; i++)
      da[i] = xhat[i] > 0.0f ? dd[i] * mask[i] : 0.0f;
  } else {
    for (size_t i = 0; i < tot; i++)
      da[i] = xhat[i] > 0.0f ? dd[i] : 0.0f;
  }
  cf_layernorm_bwd(da, xhat, rstd, M, n, NULL, NULL, NULL, da, 0);
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

void cf_span_softmax_row(float *r, int64_t first, int64_t i, int64_t ncol) {
  float mx = r[first];
  for (int64_t j = first + 1; j <= i; j++)
    mx = r[j] > mx ? r[j] : mx;
  double s = 0;
  for (int64_t j = first; j <= i; j++) {
    float e = expf(r[j] - mx);
    r[j] = e;
    s += e;
  }
  float inv = (float)(1.0 / s);
  for (int64_t j = 0; j < first; j++)
    r[j] = 0.0f;
  for (int64_t j = first; j <= i; j++)
    r[j] *= inv;
  for (int64_t j = i + 1; j < ncol; j++)
    r[j] = 0.0f;
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
