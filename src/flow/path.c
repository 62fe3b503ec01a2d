/* path.c: conditional paths x0 -> x1 on the time grid t_i = i/(N-1), and the training batch:
 * P trajectories per sequence in time-major order with next-point or velocity targets. */
#include <math.h>
#include <string.h>

#include "calmflow/flow.h"

static const char *g_path_names[] = {"straight", "bridge", "noisy", "ve"};
static const char *g_predict_names[] = {"next", "velocity"};

const char *cf_path_name(enum cf_path p) {
  return g_path_names[p];
}
const char *cf_predict_name(enum cf_predict p) {
  return g_predict_names[p];
}

cf_status cf_path_parse(const char *s, enum cf_path *p) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, g_path_names[i]) == 0) {
      *p = (enum cf_path)i;
      return CF_OK;
    }
  return cf_err(CF_EINVAL,
                "option -flow_path: unknown path '%s' (expected straight, bridge, noisy or ve)", s);
}

cf_status cf_predict_parse(const char *s, enum cf_predict *p) {
  for (int i = 0; i < 2; i++)
    if (strcmp(s, g_predict_names[i]) == 0) {
      *p = (enum cf_predict)i;
      return CF_OK;
    }
  return cf_err(CF_EINVAL, "option -flow_predict: unknown target '%s' (expected next or velocity)",
                s);
}

cf_status cf_flow_cfg_check(const struct cf_flow_cfg *f) {
  CF_CHECK(f->N >= 2, CF_EINVAL, "option -flow_time_points: expected >= 2, got %lld",
           (long long)f->N);
  CF_CHECK(f->P >= 1, CF_EINVAL, "option -flow_trajectories: expected >= 1, got %lld",
           (long long)f->P);
  CF_CHECK(f->S >= 1, CF_EINVAL, "option -flow_spatial_tokens: expected >= 1, got %lld",
           (long long)f->S);
  CF_CHECK(f->D >= 1, CF_EINVAL, "option -data_dim: expected >= 1, got %lld", (long long)f->D);
  CF_CHECK(f->sigma >= 0 && isfinite(f->sigma), CF_EINVAL,
           "option -flow_sigma: expected a finite value >= 0, got %g", f->sigma);
  CF_CHECK(f->sigma_min >= 0 && isfinite(f->sigma_min), CF_EINVAL,
           "option -flow_sigma_min: expected a finite value >= 0, got %g", f->sigma_min);
  CF_CHECK(f->context_noise >= 0 && isfinite(f->context_noise), CF_EINVAL,
           "option -flow_context_noise: expected a finite value >= 0, got %g", f->context_noise);
  CF_CHECK(f->path != CF_PATH_VE || (f->sigma_min > 0 && f->sigma >= f->sigma_min), CF_EINVAL,
           "option -flow_sigma_min: ve paths need 0 < -flow_sigma_min <= -flow_sigma (got %g, %g)",
           f->sigma_min, f->sigma);
  return CF_OK;
}

/* Point i of the straight path from x0 to x1, coordinate d. */
static float straight_at(const float *x0, const float *x1, int64_t i, int64_t N, int64_t d) {
  double t = (double)i / (double)(N - 1);
  return (float)((1.0 - t) * x0[d] + t * x1[d]);
}

/* z[k] += s * (standard normal of element e0 + k), k < n; the normals drawn in blocks (the same
 * values as cf_rng_normal1 gives one by one). */
static void add_normals(const struct cf_rng *r, uint64_t e0, double s, float *z, int64_t n) {
  float buf[64];
  for (int64_t k0 = 0; k0 < n; k0 += 64) {
    int64_t m = n - k0 < 64 ? n - k0 : 64;
    cf_rng_normal(r, e0 + (uint64_t)k0, buf, (size_t)m);
    for (int64_t k = 0; k < m; k++)
      z[k0 + k] += (float)(s * buf[k]);
  }
}

void cf_flow_path(const struct cf_flow_cfg *f, const float *x0, const float *x1,
                  const struct cf_rng *r, float *z) {
  int64_t N = f->N, D = f->D;
  if (f->path == CF_PATH_BRIDGE && f->sigma != 0) {
    /* W_i = sum_{k<=i} sqrt(dt) xi_k (W_0 = 0); bridge B_i = W_i - t_i W_{N-1}; xi_i of
     * coordinate d is element i*D + d. Each xi is drawn once, row by row into z's row i, which
     * is overwritten with the path point once its column has been summed. */
    double dt = 1.0 / (double)(N - 1), sq = sqrt(dt);
    for (int64_t i = 1; i < N; i++)
      cf_rng_normal(r, (uint64_t)(i * D), z + i * D, (size_t)D);
    for (int64_t d = 0; d < D; d++) {
      double w = 0, wend = 0;
      for (int64_t i = 1; i < N; i++)
        wend += sq * z[i * D + d];
      for (int64_t i = 1; i < N - 1; i++) {
        w += sq * z[i * D + d];
        z[i * D + d] =
            straight_at(x0, x1, i, N, d) + (float)(f->sigma * (w - (double)i * dt * wend));
      }
    }
    for (int64_t d = 0; d < D; d++) { /* the endpoints are exact */
      z[d] = straight_at(x0, x1, 0, N, d);
      z[(N - 1) * D + d] = straight_at(x0, x1, N - 1, N, d);
    }
    return;
  }
  for (int64_t i = 0; i < N; i++)
    for (int64_t d = 0; d < D; d++)
      z[i * D + d] = straight_at(x0, x1, i, N, d);
  if (f->path == CF_PATH_STRAIGHT || f->path == CF_PATH_BRIDGE) return;
  if (f->sigma == 0 && f->sigma_min == 0) return; /* no noise */
  for (int64_t i = 0; i < N; i++) {
    double t = (double)i / (double)(N - 1), s;
    if (f->path == CF_PATH_NOISY)
      s = f->sigma + (f->sigma_min - f->sigma) * t;
    else
      s = f->sigma_min * pow(f->sigma / f->sigma_min, 1.0 - t);
    add_normals(r, (uint64_t)(i * D), s, z + i * D, D);
  }
}

void cf_flow_batch(const struct cf_flow_cfg *f, const struct cf_dist *src,
                   const struct cf_dist *tgt, uint64_t seed, uint32_t step, uint64_t seq0,
                   int64_t B, float *z, float *y, float *work) {
  int64_t N = f->N, P = f->P, D = f->D, J = N * P;
  float *x0p = work, *x1p = work + D, *path = work + 2 * D; /* (D), (D), (N, D) */
  memset(y, 0, (size_t)(B * J * D) * sizeof(float));
  for (int64_t b = 0; b < B; b++) {
    float *zb = z + b * J * D, *yb = y + b * J * D;
    for (int64_t p = 0; p < P; p++) {
      uint64_t g = (seq0 + (uint64_t)b) * (uint64_t)P + (uint64_t)p;
      struct cf_rng r0 = {seed, CF_RNG_X0, step, g}, r1 = {seed, CF_RNG_X1, step, g},
                    rp = {seed, CF_RNG_PATH, step, g}, rc = {seed, CF_RNG_CONTEXT, step, g};
      cf_dist_draw(src, &r0, x0p);
      cf_dist_draw(tgt, &r1, x1p);
      cf_flow_path(f, x0p, x1p, &rp, path);
      for (int64_t t = 0; t < N; t++) {
        float *zr = zb + (t * P + p) * D;
        memcpy(zr, path + t * D, (size_t)D * sizeof(float));
        if (f->context_noise > 0 && t > 0) /* x0 is exact in the rollout too */
          add_normals(&rc, (uint64_t)(t * D), f->context_noise, zr, D);
      }
      for (int64_t t = 0; t + 1 < N; t++) {
        float *yr = yb + (t * P + p) * D;
        const float *cur = zb + (t * P + p) * D, *nxt = path + (t + 1) * D;
        for (int64_t d = 0; d < D; d++)
          yr[d] = f->predict == CF_PREDICT_NEXT ? nxt[d] : (nxt[d] - cur[d]) * (float)(N - 1);
      }
    }
  }
}

void cf_flow_endpoint(const struct cf_flow_cfg *f, double t, const float *x0, const float *u,
                      const float *cand, int64_t K, double uniform, double *w, float *x1) {
  const int64_t D = f->D;
  if (f->path != CF_PATH_BRIDGE || f->sigma == 0 || K < 1) {
    for (int64_t d = 0; d < D; d++)
      x1[d] = (float)((u[d] - (1.0 - t) * x0[d]) / t);
    return;
  }
  const double inv = 1.0 / (2.0 * f->sigma * f->sigma * t * (1.0 - t));
  double most = -INFINITY, sum = 0, acc = 0;
  for (int64_t i = 0; i < K; i++) {
    const float *c = cand + i * D;
    double e = 0;
    for (int64_t d = 0; d < D; d++) {
      double r = u[d] - (1.0 - t) * x0[d] - t * c[d];
      e += r * r;
    }
    w[i] = -e * inv;
    if (w[i] > most) most = w[i];
  }
  for (int64_t i = 0; i < K; i++)
    sum += w[i] = exp(w[i] - most);
  const double pick = uniform * sum;
  int64_t i = 0;
  for (; i + 1 < K; i++) {
    acc += w[i];
    if (pick < acc) break;
  }
  memcpy(x1, cand + i * D, (size_t)D * sizeof(float));
}

void cf_flow_advance(const struct cf_flow_cfg *f, const float *cur, const float *y, float *next) {
  for (int64_t d = 0; d < f->D; d++)
    next[d] = f->predict == CF_PREDICT_NEXT ? y[d] : cur[d] + y[d] / (float)(f->N - 1);
}
