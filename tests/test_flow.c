/* test_flow.c: conditional paths, training-batch layout and the synthetic distributions
 * (flow.h, src/flow/path.c and src/flow/dist.c).
 *
 * 1. Straight paths are (1 - t_i) x0 + t_i x1 exactly on t_i = i/(N-1), endpoints exact.
 * 2. Bridge paths: endpoints exact; over many noise streams B_i = z_i - straight_i has mean 0
 *    and Cov(B_i, B_j) = sigma^2 (min(t_i, t_j) - t_i t_j), no correlation across coordinates;
 *    the noise of point i, coordinate d is element i*D + d of the path stream (flow.h).
 * 3. Noisy and ve paths: per-point std follows the documented schedule, independent across
 *    points and coordinates, mean (1 - t) x0 + t x1.
 * 4. cf_flow_batch: z[b, t*P + p] is path (seq0 + b)*P + p at time t (keys as in flow.h), y holds
 *    the next point or the velocity and zeros at the last time point, and building [0, 4) at
 *    once equals [0, 2) + [2, 4) byte for byte; cf_flow_advance inverts the velocity target.
 * 5. Distributions: 8gaussians, moons, checkerboard, 4blobs, 2gaussians, 2to4gaussians, normal,
 *    gaussian and empirical points against their definitions; determinism by key; errors.
 * 6. cf_flow_cfg_check / cf_path_parse / cf_predict_parse errors name the option.
 *
 * Statistical checks use fixed seeds (so the test is deterministic) and 5-standard-error
 * tolerances computed from the sample size.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/flow.h"
#include "calmflow/mem.h"
#include "calmflow/rng.h"
#include "cf_test.h"

static const double PI = 3.14159265358979323846;

/* Exact-size heap block (malloc, so AddressSanitizer sees one float past the end). */
static float *xalloc(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  if (!p) {
    printf("FAIL out of memory in test\n");
    exit(1);
  }
  return p;
}

static struct cf_flow_cfg mkcfg(enum cf_path path, int64_t N, int64_t D, double sigma,
                                double sigma_min) {
  struct cf_flow_cfg f = {.D = D,
                          .N = N,
                          .P = 1,
                          .S = 1,
                          .path = path,
                          .sigma = sigma,
                          .sigma_min = sigma_min,
                          .predict = CF_PREDICT_NEXT};
  return f;
}

/* The straight point as path.c is documented to compute it (double, rounded once). */
static float straight(const float *x0, const float *x1, int64_t i, int64_t N, int64_t d) {
  double t = (double)i / (double)(N - 1);
  return (float)((1.0 - t) * x0[d] + t * x1[d]);
}

/* ---- 1. straight ---- */
static void test_straight(void) {
  const int64_t N = 7, D = 3;
  const float x0[3] = {1.25f, -3.0f, 0.1f}, x1[3] = {-2.5f, 4.0f, 0.7f};
  float z[21], z2[21];
  struct cf_flow_cfg f = mkcfg(CF_PATH_STRAIGHT, N, D, 1.0, 0.1);
  struct cf_rng r = {5, CF_RNG_PATH, 0, 3}, r2 = {5, CF_RNG_PATH, 0, 4};
  cf_flow_path(&f, x0, x1, &r, z);
  for (int64_t i = 0; i < N; i++)
    for (int64_t d = 0; d < D; d++)
      EXPECT(z[i * D + d] == straight(x0, x1, i, N, d), "straight z[%lld,%lld] = %.9g, want %.9g",
             (long long)i, (long long)d, z[i * D + d], straight(x0, x1, i, N, d));
  EXPECT(memcmp(z, x0, sizeof x0) == 0, "straight path does not start at x0");
  EXPECT(memcmp(z + (N - 1) * D, x1, sizeof x1) == 0, "straight path does not end at x1");
  /* t_3 = 1/2: the midpoint */
  for (int64_t d = 0; d < D; d++)
    EXPECT(fabsf(z[3 * D + d] - 0.5f * (x0[d] + x1[d])) <= 1e-6f, "midpoint %lld: %.9g",
           (long long)d, z[3 * D + d]);
  /* no noise: another stream gives the same path; a bridge with sigma = 0 is straight */
  cf_flow_path(&f, x0, x1, &r2, z2);
  EXPECT(memcmp(z, z2, sizeof z) == 0, "straight path depends on the noise stream");
  f.path = CF_PATH_BRIDGE;
  f.sigma = 0;
  cf_flow_path(&f, x0, x1, &r, z2);
  EXPECT(memcmp(z, z2, sizeof z) == 0, "bridge path with sigma 0 is not straight");
}

/* ---- 2. bridge ---- */
#define BR_N 9
#define BR_D 2
#define BR_K (BR_N * BR_D)
static void test_bridge(void) {
  const int64_t N = BR_N, D = BR_D, M = 50000;
  const double sigma = 1.5;
  const float x0[2] = {1.0f, -2.0f}, x1[2] = {3.0f, 0.5f};
  struct cf_flow_cfg f = mkcfg(CF_PATH_BRIDGE, N, D, sigma, 1e-4);
  static double s1[BR_K], s2[BR_K][BR_K];
  memset(s1, 0, sizeof s1);
  memset(s2, 0, sizeof s2);
  float z[BR_K];
  int endpoint_bad = 0, key_bad = 0;
  double key_err = 0;
  for (int64_t m = 0; m < M; m++) {
    struct cf_rng r = {1234, CF_RNG_PATH, 2, (uint64_t)m};
    cf_flow_path(&f, x0, x1, &r, z);
    if (memcmp(z, x0, sizeof x0) != 0 || memcmp(z + (N - 1) * D, x1, sizeof x1) != 0)
      endpoint_bad++;
    double b[BR_K];
    for (int64_t i = 0; i < N; i++)
      for (int64_t d = 0; d < D; d++)
        b[i * D + d] = (double)z[i * D + d] - (double)straight(x0, x1, i, N, d);
    if (m < 200) { /* keying: increment of point i, coordinate d is element i*D + d */
      double sq = sqrt(1.0 / (double)(N - 1));
      for (int64_t d = 0; d < D; d++) {
        double wend = 0, w = 0;
        for (int64_t i = 1; i < N; i++)
          wend += sq * cf_rng_normal1(&r, (uint64_t)(i * D + d));
        for (int64_t i = 1; i < N - 1; i++) {
          double t = (double)i / (double)(N - 1);
          w += sq * cf_rng_normal1(&r, (uint64_t)(i * D + d));
          double e = fabs(b[i * D + d] - sigma * (w - t * wend));
          if (!(e <= key_err)) key_err = e;
          if (!(e <= 1e-5)) key_bad++;
        }
      }
    }
    for (int k = 0; k < BR_K; k++) {
      s1[k] += b[k];
      for (int l = 0; l < BR_K; l++)
        s2[k][l] += b[k] * b[l];
    }
  }
  EXPECT(endpoint_bad == 0, "bridge: %d of %lld paths do not start at x0 and end at x1",
         endpoint_bad, (long long)M);
  EXPECT(key_bad == 0, "bridge: noise is not W_i - t_i W_{N-1} of elements i*D+d (max err %g)",
         key_err);
  double cov[BR_K][BR_K], mean[BR_K];
  for (int k = 0; k < BR_K; k++)
    mean[k] = s1[k] / (double)M;
  for (int k = 0; k < BR_K; k++)
    for (int l = 0; l < BR_K; l++)
      cov[k][l] = s2[k][l] / (double)M - mean[k] * mean[l];
  int bad_mean = 0, bad_cov = 0;
  for (int64_t i = 0; i < N; i++) {
    double ti = (double)i / (double)(N - 1);
    for (int64_t d = 0; d < D; d++) {
      int k = (int)(i * D + d);
      double var = sigma * sigma * ti * (1 - ti);
      if (!(fabs(mean[k]) <= 5 * sqrt(var / (double)M) + 1e-7)) {
        bad_mean++;
        printf("  bridge mean at i=%lld d=%lld: %g\n", (long long)i, (long long)d, mean[k]);
      }
      for (int64_t j = 0; j < N; j++) {
        double tj = (double)j / (double)(N - 1);
        for (int64_t e = 0; e < D; e++) {
          int l = (int)(j * D + e);
          double want = d == e ? sigma * sigma * (fmin(ti, tj) - ti * tj) : 0.0;
          double vj = sigma * sigma * tj * (1 - tj);
          double se = sqrt((var * vj + want * want) / (double)M);
          if (!(fabs(cov[k][l] - want) <= 5 * se + 1e-7)) {
            bad_cov++;
            if (bad_cov <= 10)
              printf("  bridge Cov(B[%lld,%lld], B[%lld,%lld]) = %.5f, want %.5f (se %.5f)\n",
                     (long long)i, (long long)d, (long long)j, (long long)e, cov[k][l], want, se);
          }
        }
      }
    }
  }
  EXPECT(bad_mean == 0, "bridge: %d point means are not ~0", bad_mean);
  EXPECT(bad_cov == 0, "bridge: %d covariances differ from sigma^2 (min(t_i,t_j) - t_i t_j)",
         bad_cov);
  /* the increments: Cov(dB_i, dB_j) = sigma^2 (dt [i == j] - dt^2) */
  double dt = 1.0 / (double)(N - 1);
  int bad_inc = 0;
  for (int64_t i = 0; i + 1 < N; i++)
    for (int64_t j = 0; j + 1 < N; j++) {
      int a = (int)(i * D), a1 = (int)((i + 1) * D), c = (int)(j * D), c1 = (int)((j + 1) * D);
      double got = cov[a1][c1] - cov[a1][c] - cov[a][c1] + cov[a][c];
      double want = sigma * sigma * ((i == j ? dt : 0.0) - dt * dt);
      double se = sigma * sigma * dt * sqrt(2.0 / (double)M);
      if (!(fabs(got - want) <= 5 * se)) {
        bad_inc++;
        printf("  bridge increment Cov(%lld, %lld) = %.5f, want %.5f\n", (long long)i, (long long)j,
               got, want);
      }
    }
  EXPECT(bad_inc == 0, "bridge: %d increment covariances wrong", bad_inc);
}

/* ---- 3. noisy and ve ---- */
static void check_pointwise_noise(enum cf_path path, double sigma, double sigma_min,
                                  const float *x0, const float *x1) {
  enum { N = 6, D = 3, K = N * D };
  const int64_t M = 50000;
  const char *name = cf_path_name(path);
  struct cf_flow_cfg f = mkcfg(path, N, D, sigma, sigma_min);
  double s1[K] = {0}, s2[K] = {0}, snext[K] = {0}, scross[K] = {0};
  float z[K];
  int key_bad = 0;
  for (int64_t m = 0; m < M; m++) {
    struct cf_rng r = {99, CF_RNG_PATH, 7, (uint64_t)m};
    cf_flow_path(&f, x0, x1, &r, z);
    double e[K];
    for (int i = 0; i < N; i++)
      for (int d = 0; d < D; d++) {
        double t = (double)i / (N - 1);
        double s = path == CF_PATH_NOISY ? sigma + (sigma_min - sigma) * t
                                         : sigma_min * pow(sigma / sigma_min, 1.0 - t);
        e[i * D + d] = (double)z[i * D + d] - (double)straight(x0, x1, i, N, d);
        if (m < 200) {
          float want =
              straight(x0, x1, i, N, d) + (float)(s * cf_rng_normal1(&r, (uint64_t)(i * D + d)));
          if (!(fabsf(z[i * D + d] - want) <= 1e-6f * (fabsf(want) + 1.0f))) key_bad++;
        }
      }
    for (int k = 0; k < K; k++) {
      s1[k] += e[k];
      s2[k] += e[k] * e[k];
      if (k + D < K) snext[k] += e[k] * e[k + D];       /* same coordinate, next point */
      scross[k] += e[k] * e[(k / D) * D + (k + 1) % D]; /* same point, next coordinate */
    }
  }
  EXPECT(key_bad == 0, "%s: %d values are not straight + s(t_i) * element i*D+d", name, key_bad);
  for (int i = 0; i < N; i++) {
    double t = (double)i / (N - 1);
    double s = path == CF_PATH_NOISY ? sigma + (sigma_min - sigma) * t
                                     : sigma_min * pow(sigma / sigma_min, 1.0 - t);
    for (int d = 0; d < D; d++) {
      int k = i * D + d;
      double mean = s1[k] / (double)M, var = s2[k] / (double)M - mean * mean;
      EXPECT(fabs(mean) <= 5 * s / sqrt((double)M) + 1e-6, "%s: mean at t=%g d=%d is %g", name, t,
             d, mean);
      EXPECT(fabs(sqrt(var) / s - 1) <= 5 * sqrt(0.5 / (double)M),
             "%s: std at t=%g d=%d is %.6g, want %.6g", name, t, d, sqrt(var), s);
      double sd_next = 0, sd_cross = 0;
      if (i + 1 < N) {
        double t1 = (double)(i + 1) / (N - 1);
        double s_1 = path == CF_PATH_NOISY ? sigma + (sigma_min - sigma) * t1
                                           : sigma_min * pow(sigma / sigma_min, 1.0 - t1);
        sd_next = snext[k] / (double)M / (s * s_1);
        EXPECT(fabs(sd_next) <= 5 / sqrt((double)M), "%s: corr(point %d, %d) at d=%d is %g", name,
               i, i + 1, d, sd_next);
      }
      sd_cross = scross[k] / (double)M / (s * s);
      EXPECT(fabs(sd_cross) <= 5 / sqrt((double)M), "%s: corr(d=%d, d=%d) at t=%g is %g", name, d,
             (d + 1) % D, t, sd_cross);
    }
  }
}

static void test_noisy_ve(void) {
  const float x0[3] = {2.0f, -1.0f, 0.5f}, x1[3] = {-1.0f, 1.0f, 3.0f}, zero[3] = {0, 0, 0};
  check_pointwise_noise(CF_PATH_NOISY, 0.8, 0.1, x0, x1);
  check_pointwise_noise(CF_PATH_NOISY, 0.3, 0.6, x0, x1); /* growing is allowed too */
  check_pointwise_noise(CF_PATH_VE, 2.0, 0.05, x0, x1);
  /* the authors' setting: sigma_max 10 down to 1e-4 at t = 1 (zero mean keeps the tiny
   * endpoint noise above float round-off) */
  check_pointwise_noise(CF_PATH_VE, 10.0, 1e-4, zero, zero);

  /* noisy with sigma = 0 (at t = 0) and sigma_min = 0.5 (at t = 1): s(t) = 0.5 t, so x0 stays
   * exact while the last point has std 0.5 (flow.h: "s linear from sigma (t=0) to sigma_min
   * (t=1)"; options.c: "-flow_sigma_min: noisy: noise at t = 1") */
  enum { N = 5, D = 3, M = 4000 };
  struct cf_flow_cfg f = mkcfg(CF_PATH_NOISY, N, D, 0.0, 0.5);
  float z[N * D];
  double s2 = 0;
  int moved = 0;
  for (int m = 0; m < M; m++) {
    struct cf_rng r = {8, CF_RNG_PATH, 1, (uint64_t)m};
    cf_flow_path(&f, x0, x1, &r, z);
    if (memcmp(z, x0, sizeof x0) != 0) moved++;
    for (int d = 0; d < D; d++) {
      double e = (double)z[(N - 1) * D + d] - x1[d];
      s2 += e * e;
    }
  }
  double sd = sqrt(s2 / (M * D));
  EXPECT(moved == 0, "noisy sigma 0: %d paths do not start exactly at x0", moved);
  EXPECT(fabs(sd / 0.5 - 1) <= 5 * sqrt(0.5 / (M * D)),
         "noisy sigma 0 -> sigma_min 0.5: std at t = 1 is %g, want 0.5", sd);
  /* both zero: the straight path */
  f.sigma_min = 0;
  struct cf_rng r = {8, CF_RNG_PATH, 1, 0};
  cf_flow_path(&f, x0, x1, &r, z);
  int bad = 0;
  for (int i = 0; i < N; i++)
    for (int d = 0; d < D; d++)
      if (z[i * D + d] != straight(x0, x1, i, N, d)) bad++;
  EXPECT(bad == 0, "noisy with sigma = sigma_min = 0: %d values off the straight path", bad);
}

/* ---- 4. batch layout, targets, advance ---- */
static void check_batch(enum cf_predict predict, enum cf_path path) {
  const int64_t N = 5, P = 3, D = 2, J = N * P, B = 4;
  const uint64_t seed = 11;
  const uint32_t step = 4;
  struct cf_flow_cfg f = {.D = D,
                          .N = N,
                          .P = P,
                          .S = 1,
                          .path = path,
                          .sigma = 0.7,
                          .sigma_min = 0.05,
                          .predict = predict};
  struct cf_dist src, tgt;
  EXPECT_OK(cf_dist_by_name(&src, "8gaussians", 2, "-flow_source"), "8gaussians");
  EXPECT_OK(cf_dist_by_name(&tgt, "moons", 2, "-data_name"), "moons");
  size_t nz = (size_t)(B * J * D);
  float *z = xalloc(nz), *y = xalloc(nz), *z2 = xalloc(nz), *y2 = xalloc(nz);
  float *work = xalloc((size_t)((N + 2) * D)); /* exactly the documented scratch size */
  memset(y, 0x7f, nz * sizeof(float));         /* garbage: the last rows must be cleared */
  cf_flow_batch(&f, &src, &tgt, seed, step, 0, B, z, y, work);

  float x0[2], x1[2], pz[10];
  int bad_z = 0, bad_y = 0, bad_zero = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t p = 0; p < P; p++) {
      uint64_t g = (uint64_t)(b * P + p);
      struct cf_rng r0 = {seed, CF_RNG_X0, step, g}, r1 = {seed, CF_RNG_X1, step, g},
                    rp = {seed, CF_RNG_PATH, step, g};
      cf_dist_draw(&src, &r0, x0);
      cf_dist_draw(&tgt, &r1, x1);
      cf_flow_path(&f, x0, x1, &rp, pz);
      for (int64_t t = 0; t < N; t++) {
        const float *zr = z + (b * J + t * P + p) * D, *yr = y + (b * J + t * P + p) * D;
        if (memcmp(zr, pz + t * D, (size_t)D * sizeof(float)) != 0) bad_z++;
        for (int64_t d = 0; d < D; d++) {
          if (t == N - 1) {
            if (yr[d] != 0.0f) bad_zero++;
            continue;
          }
          float want = predict == CF_PREDICT_NEXT
                           ? pz[(t + 1) * D + d]
                           : (pz[(t + 1) * D + d] - pz[t * D + d]) * (float)(N - 1);
          if (yr[d] != want) bad_y++;
        }
      }
    }
  const char *what = predict == CF_PREDICT_NEXT ? "next" : "velocity";
  EXPECT(bad_z == 0, "batch (%s, %s): %d input rows are not path (seq0+b)*P+p at time t", what,
         cf_path_name(path), bad_z);
  EXPECT(bad_y == 0, "batch (%s, %s): %d target values wrong", what, cf_path_name(path), bad_y);
  EXPECT(bad_zero == 0, "batch (%s, %s): %d last-time-point target values are not zero", what,
         cf_path_name(path), bad_zero);

  /* layout invariance: [0, 2) and [2, 4) separately equal [0, 4) */
  memset(z2, 0x55, nz * sizeof(float));
  memset(y2, 0x55, nz * sizeof(float));
  cf_flow_batch(&f, &src, &tgt, seed, step, 0, 2, z2, y2, work);
  cf_flow_batch(&f, &src, &tgt, seed, step, 2, 2, z2 + 2 * J * D, y2 + 2 * J * D, work);
  EXPECT(memcmp(z, z2, nz * sizeof(float)) == 0, "batch (%s): z of [0,2)+[2,4) != [0,4)", what);
  EXPECT(memcmp(y, y2, nz * sizeof(float)) == 0, "batch (%s): y of [0,2)+[2,4) != [0,4)", what);
  /* one sequence at a time, in reverse order */
  for (int64_t b = B - 1; b >= 0; b--)
    cf_flow_batch(&f, &src, &tgt, seed, step, (uint64_t)b, 1, z2 + b * J * D, y2 + b * J * D, work);
  EXPECT(memcmp(z, z2, nz * sizeof(float)) == 0, "batch (%s): per-sequence z differs", what);
  EXPECT(memcmp(y, y2, nz * sizeof(float)) == 0, "batch (%s): per-sequence y differs", what);
  /* another step or seed gives another batch */
  cf_flow_batch(&f, &src, &tgt, seed, step + 1, 0, B, z2, y2, work);
  EXPECT(memcmp(z, z2, nz * sizeof(float)) != 0, "batch (%s): step does not change z", what);
  cf_flow_batch(&f, &src, &tgt, seed + 1, step, 0, B, z2, y2, work);
  EXPECT(memcmp(z, z2, nz * sizeof(float)) != 0, "batch (%s): seed does not change z", what);

  /* advance inverts the target: one step, and the whole rollout from z_0 */
  int bad_adv = 0;
  double worst = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t p = 0; p < P; p++) {
      float cur[2], nxt[2];
      memcpy(cur, z + (b * J + p) * D, sizeof cur);
      for (int64_t t = 0; t + 1 < N; t++) {
        const float *zt = z + (b * J + t * P + p) * D, *z1 = z + (b * J + (t + 1) * P + p) * D;
        const float *yt = y + (b * J + t * P + p) * D;
        cf_flow_advance(&f, zt, yt, nxt);
        for (int64_t d = 0; d < D; d++) {
          double err = fabs((double)nxt[d] - z1[d]);
          double tol = 4 * FLT_EPSILON * (fabs(zt[d]) + fabs(z1[d]));
          if (predict == CF_PREDICT_NEXT) tol = 0;
          if (!(err <= tol)) bad_adv++;
          if (!(err <= worst)) worst = err;
        }
        cf_flow_advance(&f, cur, yt, nxt); /* rollout: errors may add up over N-1 steps */
        memcpy(cur, nxt, sizeof cur);
      }
      for (int64_t d = 0; d < D; d++) {
        const float *zl = z + (b * J + (N - 1) * P + p) * D;
        EXPECT(fabsf(cur[d] - zl[d]) <= 4 * (float)N * FLT_EPSILON * (fabsf(zl[d]) + 8),
               "batch (%s): rollout by advance ends at %.9g, path at %.9g", what, cur[d], zl[d]);
      }
    }
  EXPECT(bad_adv == 0, "batch (%s): %d advance(z_t, y_t) != z_{t+1} (worst %g)", what, bad_adv,
         worst);
  free(z);
  free(y);
  free(z2);
  free(y2);
  free(work);
}

static void test_batch(void) {
  check_batch(CF_PREDICT_NEXT, CF_PATH_BRIDGE);
  check_batch(CF_PREDICT_VELOCITY, CF_PATH_BRIDGE);
  check_batch(CF_PREDICT_VELOCITY, CF_PATH_STRAIGHT);
  check_batch(CF_PREDICT_NEXT, CF_PATH_VE);
  /* the velocity advance step is 1/(N-1): a straight path's velocity is x1 - x0 */
  struct cf_flow_cfg f = mkcfg(CF_PATH_STRAIGHT, 5, 2, 0, 0);
  f.predict = CF_PREDICT_VELOCITY;
  const float cur[2] = {1.0f, -1.0f}, vel[2] = {2.0f, 4.0f};
  float nxt[2];
  cf_flow_advance(&f, cur, vel, nxt);
  EXPECT(nxt[0] == 1.5f && nxt[1] == 0.0f, "velocity advance (N=5): %g %g, want 1.5 0", nxt[0],
         nxt[1]);
  f.predict = CF_PREDICT_NEXT;
  cf_flow_advance(&f, cur, vel, nxt);
  EXPECT(nxt[0] == 2.0f && nxt[1] == 4.0f, "next advance: %g %g, want 2 4", nxt[0], nxt[1]);
}

/* ---- 5. distributions ---- */
static struct cf_dist dist(const char *name, int64_t dim) {
  struct cf_dist d;
  EXPECT_OK(cf_dist_by_name(&d, name, dim, "-data_name"), name);
  return d;
}

static void draw(const struct cf_dist *d, uint64_t i, float *out) {
  struct cf_rng r = {2024, CF_RNG_X1, 0, i};
  cf_dist_draw(d, &r, out);
}

static void test_8gaussians(void) {
  const int64_t M = 40000;
  struct cf_dist d = dist("8gaussians", 2);
  EXPECT(d.kind == CF_DIST_8GAUSSIANS && d.dim == 2, "8gaussians kind/dim");
  double cnt[8] = {0}, s1[8][2] = {{0}}, s2[8][2] = {{0}};
  int far = 0;
  for (int64_t m = 0; m < M; m++) {
    float x[2];
    draw(&d, (uint64_t)m, x);
    double ang = atan2(x[1], x[0]);
    int k = (int)lround(ang / (PI / 4));
    k = (k + 8) % 8;
    double cx = 5 * cos(k * PI / 4), cy = 5 * sin(k * PI / 4);
    double dx = x[0] - cx, dy = x[1] - cy;
    if (!(hypot(dx, dy) <= 2.0)) far++;
    cnt[k]++;
    s1[k][0] += dx;
    s1[k][1] += dy;
    s2[k][0] += dx * dx;
    s2[k][1] += dy * dy;
  }
  EXPECT(far == 0, "8gaussians: %d points farther than 2 from the nearest center", far);
  for (int k = 0; k < 8; k++) {
    EXPECT(fabs(cnt[k] - M / 8.0) <= 5 * sqrt(M * (1 / 8.0) * (7 / 8.0)),
           "8gaussians: component %d (angle %d deg) has %g of %lld points", k, k * 45, cnt[k],
           (long long)M);
    for (int c = 0; c < 2; c++) {
      double mean = s1[k][c] / cnt[k], var = s2[k][c] / cnt[k] - mean * mean;
      EXPECT(fabs(mean) <= 5 * sqrt(0.1 / cnt[k]), "8gaussians: component %d coord %d offset %g", k,
             c, mean);
      EXPECT(fabs(var / 0.1 - 1) <= 5 * sqrt(2 / cnt[k]),
             "8gaussians: component %d coord %d variance %g, want 0.1", k, c, var);
    }
  }
}

static void test_moons(void) {
  const int64_t M = 40000;
  struct cf_dist d = dist("moons", 2);
  double s1[2] = {0}, s2[2] = {0}, n_up = 0, up1[2] = {0}, lo1[2] = {0};
  double rad_up = 0, rad_lo = 0, rad2_up = 0, rad2_lo = 0;
  float lo[2] = {1e9f, 1e9f}, hi[2] = {-1e9f, -1e9f};
  for (int64_t m = 0; m < M; m++) {
    float x[2];
    struct cf_rng r = {2024, CF_RNG_X1, 0, (uint64_t)m};
    cf_dist_draw(&d, &r, x);
    for (int c = 0; c < 2; c++) {
      s1[c] += x[c];
      s2[c] += (double)x[c] * x[c];
      if (x[c] < lo[c]) lo[c] = x[c];
      if (x[c] > hi[c]) hi[c] = x[c];
    }
    /* the two clusters by the draw: element 0 picks the moon */
    int upper = cf_rng_uniform1(&r, 0) < 0.5;
    double u = (x[0] + 1) / 3, v = (x[1] + 1) / 3; /* undo the x3 - 1 scaling */
    if (upper) {
      n_up++;
      up1[0] += x[0];
      up1[1] += x[1];
      double rr = hypot(u, v); /* upper moon: unit half circle around (0, 0) */
      rad_up += rr;
      rad2_up += rr * rr;
    } else {
      lo1[0] += x[0];
      lo1[1] += x[1];
      double rr = hypot(u - 1, v - 0.5); /* lower moon: unit half circle around (1, 0.5) */
      rad_lo += rr;
      rad2_lo += rr * rr;
    }
  }
  double n_lo = (double)M - n_up;
  /* mixture of a ~ U(0, pi): outer (cos a, sin a), inner (1 - cos a, 0.5 - sin a), noise 0.2,
   * then x3 - 1: mean (0.5, -0.25); var x = 9 (0.5 + 0.25 + 0.04), var y = 9 (0.5 - 4/pi^2 +
   * (4/pi - 0.5)^2 / 4 + 0.04) */
  double vy = 9 * (0.5 - 4 / (PI * PI) + (4 / PI - 0.5) * (4 / PI - 0.5) / 4 + 0.04);
  double want_mean[2] = {0.5, -0.25}, want_var[2] = {9 * 0.79, vy};
  for (int c = 0; c < 2; c++) {
    double mean = s1[c] / (double)M, var = s2[c] / (double)M - mean * mean;
    EXPECT(fabs(mean - want_mean[c]) <= 5 * sqrt(want_var[c] / (double)M),
           "moons: mean of coord %d is %g, want %g", c, mean, want_mean[c]);
    EXPECT(fabs(var / want_var[c] - 1) <= 0.04, "moons: variance of coord %d is %g, want %g", c,
           var, want_var[c]);
  }
  EXPECT(lo[0] >= -7 && hi[0] <= 8 && lo[1] >= -5 && hi[1] <= 5,
         "moons: extent [%g, %g] x [%g, %g] outside [-7, 8] x [-5, 5]", lo[0], hi[0], lo[1], hi[1]);
  EXPECT(lo[0] <= -4 && hi[0] >= 5, "moons: x extent [%g, %g] narrower than [-4, 5]", lo[0], hi[0]);
  EXPECT(fabs(n_up / (double)M - 0.5) <= 5 * sqrt(0.25 / (double)M), "moons: %g upper of %lld",
         n_up, (long long)M);
  /* cluster means: upper 3 (0, 2/pi) - 1, lower 3 (1, 0.5 - 2/pi) - 1 */
  double wu[2] = {-1, 6 / PI - 1}, wl[2] = {2, 3 * (0.5 - 2 / PI) - 1};
  for (int c = 0; c < 2; c++) {
    EXPECT(fabs(up1[c] / n_up - wu[c]) <= 0.05, "moons: upper mean coord %d %g, want %g", c,
           up1[c] / n_up, wu[c]);
    EXPECT(fabs(lo1[c] / n_lo - wl[c]) <= 0.05, "moons: lower mean coord %d %g, want %g", c,
           lo1[c] / n_lo, wl[c]);
  }
  /* distance to the moon's circle: ~1 (E ~ 1 + 0.2^2/2), spread ~ the noise 0.2 */
  double mu = rad_up / n_up, ml = rad_lo / n_lo;
  double su = sqrt(rad2_up / n_up - mu * mu), sl = sqrt(rad2_lo / n_lo - ml * ml);
  EXPECT(fabs(mu - 1.02) <= 0.01 && fabs(ml - 1.02) <= 0.01,
         "moons: mean radius upper %g lower %g, want ~1.02", mu, ml);
  EXPECT(fabs(su - 0.2) <= 0.01 && fabs(sl - 0.2) <= 0.01,
         "moons: radial spread upper %g lower %g, want ~0.2", su, sl);
}

static void test_checkerboard(void) {
  const int64_t M = 40000;
  struct cf_dist d = dist("checkerboard", 2);
  double cnt[4][4] = {{0}}, frac[2] = {0}, frac2[2] = {0};
  int outside = 0, light = 0;
  for (int64_t m = 0; m < M; m++) {
    float x[2];
    draw(&d, (uint64_t)m, x);
    if (!(x[0] >= -4 && x[0] < 4 && x[1] >= -4 && x[1] < 4)) {
      outside++;
      continue;
    }
    int cx = (int)floor(x[0] / 2), cy = (int)floor(x[1] / 2);
    if (((cx + cy) % 2 + 2) % 2 != 0) light++;
    cnt[cx + 2][cy + 2]++;
    for (int c = 0; c < 2; c++) {
      double f = x[c] / 2 - floor(x[c] / 2); /* position inside the cell */
      frac[c] += f;
      frac2[c] += f * f;
    }
  }
  EXPECT(outside == 0, "checkerboard: %d points outside [-4, 4)^2", outside);
  EXPECT(light == 0, "checkerboard: %d points in light cells (floor(x/2)+floor(y/2) odd)", light);
  for (int cx = -2; cx < 2; cx++)
    for (int cy = -2; cy < 2; cy++) {
      if (((cx + cy) % 2 + 2) % 2 != 0) continue;
      double c = cnt[cx + 2][cy + 2];
      EXPECT(fabs(c - M / 8.0) <= 5 * sqrt(M * (1 / 8.0) * (7 / 8.0)),
             "checkerboard: dark cell (%d, %d) has %g of %lld points", cx, cy, c, (long long)M);
    }
  for (int c = 0; c < 2; c++) {
    double mean = frac[c] / (double)M, var = frac2[c] / (double)M - mean * mean;
    EXPECT(fabs(mean - 0.5) <= 5 * sqrt(1 / 12.0 / (double)M) && fabs(var * 12 - 1) <= 0.03,
           "checkerboard: in-cell position of coord %d has mean %g var %g (want uniform)", c, mean,
           var);
  }
}

/* The N-D checkerboard in 5-D: every point in [-4, 4]^5 with an even cell-index sum, each of
 * the 512 even cells about equally often, coordinates uniform within their cells. */
static void test_checkerboard_nd(void) {
  const int64_t M = 100000, D = 5;
  struct cf_dist d = dist("checkerboardnd", D);
  static double cells[1024];
  double s1[5] = {0}, s2[5] = {0};
  int bad = 0;
  float x[5];
  for (int64_t m = 0; m < M; m++) {
    draw(&d, (uint64_t)m, x);
    int id = 0, sum = 0;
    for (int64_t k = 0; k < D; k++) {
      if (!(x[k] >= -4.0f && x[k] < 4.0f)) bad++;
      int c = (int)floor((x[k] + 4.0) / 2.0);
      c = c < 0 ? 0 : (c > 3 ? 3 : c);
      sum += c;
      id = id * 4 + c;
      double in = (x[k] + 4.0) / 2.0 - c; /* position inside the cell, uniform on [0, 1) */
      s1[k] += in, s2[k] += in * in;
    }
    if (sum % 2) bad++;
    cells[id]++;
  }
  EXPECT(bad == 0, "checkerboardnd: %d points outside [-4, 4)^5 or in odd cells", bad);
  double want = (double)M / 512, worst = 0;
  for (int id = 0; id < 1024; id++) {
    int sum = 0;
    for (int k = 0, v = id; k < 5; k++, v /= 4)
      sum += v % 4;
    if (sum % 2 == 0) worst = fmax(worst, fabs(cells[id] - want));
  }
  EXPECT(worst <= 5 * sqrt(want), "checkerboardnd: a cell is %g points off %g", worst, want);
  for (int64_t k = 0; k < D; k++) {
    double mean = s1[k] / M, var = s2[k] / M - mean * mean;
    EXPECT(fabs(mean - 0.5) < 0.01 && fabs(var - 1.0 / 12) < 0.01,
           "checkerboardnd: in-cell coordinate %lld mean %g var %g (want uniform)", (long long)k,
           mean, var);
  }
}

/* Mixtures of unit Gaussians: the cluster of a point is the nearest of the `nc` centers
 * (c_k0, c_k1, 0, ...); checks weights, means and unit variances of every coordinate. */
static void check_mixture(const char *name, int64_t D, int nc, const double (*ctr)[2],
                          int two_coords) {
  const int64_t M = 40000;
  struct cf_dist d = dist(name, D);
  double cnt[4] = {0}, s1[4][4] = {{0}}, s2[4][4] = {{0}};
  float x[4];
  for (int64_t m = 0; m < M; m++) {
    draw(&d, (uint64_t)m, x);
    int best = 0;
    double bd = 1e300;
    for (int k = 0; k < nc; k++) {
      double dd = (x[0] - ctr[k][0]) * (x[0] - ctr[k][0]);
      if (two_coords) dd += (x[1] - ctr[k][1]) * (x[1] - ctr[k][1]);
      if (dd < bd) bd = dd, best = k;
    }
    cnt[best]++;
    for (int64_t c = 0; c < D; c++) {
      double off = x[c] - (c == 0 ? ctr[best][0] : c == 1 && two_coords ? ctr[best][1] : 0.0);
      s1[best][c] += off;
      s2[best][c] += off * off;
    }
  }
  for (int k = 0; k < nc; k++) {
    EXPECT(fabs(cnt[k] - (double)M / nc) <= 5 * sqrt((double)M / nc * (1 - 1.0 / nc)),
           "%s: cluster at (%g, %g) has %g of %lld points", name, ctr[k][0], ctr[k][1], cnt[k],
           (long long)M);
    for (int64_t c = 0; c < D; c++) {
      double mean = s1[k][c] / cnt[k], var = s2[k][c] / cnt[k] - mean * mean;
      EXPECT(fabs(mean) <= 5 / sqrt(cnt[k]), "%s: cluster (%g, %g) coord %lld mean offset %g", name,
             ctr[k][0], ctr[k][1], (long long)c, mean);
      EXPECT(fabs(var - 1) <= 5 * sqrt(2 / cnt[k]), "%s: cluster (%g, %g) coord %lld variance %g",
             name, ctr[k][0], ctr[k][1], (long long)c, var);
    }
  }
}

static void test_mixtures(void) {
  static const double blobs[4][2] = {{-15, 0}, {-5, 0}, {5, 0}, {15, 0}};
  static const double two[2][2] = {{-5, 0}, {5, 0}};
  static const double four[4][2] = {{-5, -5}, {5, -5}, {-5, 5}, {5, 5}};
  check_mixture("4blobs", 3, 4, blobs, 0);
  check_mixture("4blobs", 1, 4, blobs, 0);
  check_mixture("2gaussians", 3, 2, two, 0);
  check_mixture("2to4gaussians", 3, 4, four, 1);
  check_mixture("2to4gaussians", 2, 4, four, 1);
  static const double origin[1][2] = {{0, 0}};
  check_mixture("normal", 4, 1, origin, 1);
  check_mixture("gaussian", 3, 1, origin, 1);

  /* normal: no correlation between coordinates */
  struct cf_dist d = dist("normal", 4);
  const int64_t M = 40000;
  double c01 = 0, c23 = 0;
  float x[4];
  for (int64_t m = 0; m < M; m++) {
    draw(&d, (uint64_t)m, x);
    c01 += (double)x[0] * x[1];
    c23 += (double)x[2] * x[3];
  }
  EXPECT(fabs(c01 / (double)M) <= 5 / sqrt((double)M) &&
             fabs(c23 / (double)M) <= 5 / sqrt((double)M),
         "normal: coordinates correlated (%g, %g)", c01 / (double)M, c23 / (double)M);
  /* gaussian is an alias of normal: the same key gives the same point */
  struct cf_dist g = dist("gaussian", 4);
  float y[4];
  draw(&d, 77, x);
  draw(&g, 77, y);
  EXPECT(memcmp(x, y, sizeof x) == 0, "gaussian and normal differ for the same key");
}

static void test_points(void) {
  enum { n = 5, D = 3 };
  const float set[n * D] = {0, 1, 2, 10, 11, 12, -1, -2, -3, 7.5f, 0.25f, 1e6f, 3, 3, 3};
  struct cf_dist d;
  cf_dist_points(&d, set, n, D);
  EXPECT(d.kind == CF_DIST_POINTS && d.n == n && d.dim == D && d.x == set, "cf_dist_points");
  const int64_t M = 50000;
  double cnt[n] = {0};
  int notrow = 0;
  for (int64_t m = 0; m < M; m++) {
    float x[D];
    draw(&d, (uint64_t)m, x);
    int hit = -1;
    for (int i = 0; i < n; i++)
      if (memcmp(x, set + i * D, sizeof x) == 0) hit = i;
    if (hit < 0)
      notrow++;
    else
      cnt[hit]++;
  }
  EXPECT(notrow == 0, "points: %d draws are not rows of the set", notrow);
  for (int i = 0; i < n; i++)
    EXPECT(fabs(cnt[i] - (double)M / n) <= 5 * sqrt((double)M / n * (1 - 1.0 / n)),
           "points: row %d drawn %g times of %lld", i, cnt[i], (long long)M);
  /* one row: always that row */
  cf_dist_points(&d, set + 3 * D, 1, D);
  int bad = 0;
  for (int64_t m = 0; m < 1000; m++) {
    float x[D];
    draw(&d, (uint64_t)m, x);
    if (memcmp(x, set + 3 * D, sizeof x) != 0) bad++;
  }
  EXPECT(bad == 0, "points with one row: %d draws differ from it", bad);
}

static void test_dist_determinism(void) {
  static const char *names[] = {"normal",       "gaussian", "8gaussians", "moons",
                                "checkerboard", "4blobs",   "2gaussians", "2to4gaussians"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    struct cf_dist d = dist(names[i], 2);
    float a[2], b[2], c[2];
    struct cf_rng r = {3, CF_RNG_X0, 9, 1000 + i};
    cf_dist_draw(&d, &r, a);
    cf_dist_draw(&d, &r, b);
    EXPECT(memcmp(a, b, sizeof a) == 0, "%s: the same key gives different points", names[i]);
    int differ = 0;
    for (uint64_t k = 1; k <= 4; k++) { /* index, step, seed or domain change the point */
      struct cf_rng q = r;
      if (k == 1) q.index++;
      if (k == 2) q.step++;
      if (k == 3) q.seed++;
      if (k == 4) q.domain = CF_RNG_X1;
      cf_dist_draw(&d, &q, c);
      if (memcmp(a, c, sizeof a) != 0) differ++;
    }
    EXPECT(differ == 4, "%s: only %d of 4 key changes change the point", names[i], differ);
  }
}

static void test_dist_errors(void) {
  struct cf_dist d;
  EXPECT_FAIL(cf_dist_by_name(&d, "spiral", 2, "-data_name"), "-data_name", "unknown name");
  EXPECT_FAIL(cf_dist_by_name(&d, "spiral", 2, "-flow_source"), "'spiral'", "unknown name word");
  EXPECT_FAIL(cf_dist_by_name(&d, "Moons", 2, "-data_name"), "-data_name", "case matters");
  EXPECT_FAIL(cf_dist_by_name(&d, "", 2, "-data_name"), "-data_name", "empty name");
  EXPECT_FAIL(cf_dist_by_name(&d, "8gaussians", 3, "-flow_source"), "-flow_source", "8g dim 3");
  EXPECT_FAIL(cf_dist_by_name(&d, "moons", 1, "-data_name"), "-data_dim", "moons dim 1");
  EXPECT_FAIL(cf_dist_by_name(&d, "checkerboard", 4, "-data_name"), "-data_name", "cb dim 4");
  EXPECT_FAIL(cf_dist_by_name(&d, "2to4gaussians", 1, "-data_name"), "-data_name", "2to4 dim 1");
  EXPECT_FAIL(cf_dist_by_name(&d, "normal", 0, "-data_name"), "-data_name", "normal dim 0");
  EXPECT_FAIL(cf_dist_by_name(&d, "4blobs", -1, "-data_name"), "-data_name", "4blobs dim -1");
  /* every advertised name is accepted in 2-D, with the right kind */
  static const struct {
    const char *name;
    enum cf_dist_kind kind;
  } ok[] = {{"normal", CF_DIST_NORMAL},
            {"gaussian", CF_DIST_GAUSSIAN},
            {"8gaussians", CF_DIST_8GAUSSIANS},
            {"moons", CF_DIST_MOONS},
            {"checkerboard", CF_DIST_CHECKERBOARD},
            {"4blobs", CF_DIST_4BLOBS},
            {"2gaussians", CF_DIST_2GAUSSIANS},
            {"2to4gaussians", CF_DIST_2TO4}};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    EXPECT_OK(cf_dist_by_name(&d, ok[i].name, 2, "-data_name"), ok[i].name);
    EXPECT(d.kind == ok[i].kind && d.dim == 2, "%s: kind %d dim %lld", ok[i].name, (int)d.kind,
           (long long)d.dim);
    EXPECT(strstr(cf_dist_names(), ok[i].name) != NULL, "cf_dist_names lacks %s", ok[i].name);
  }
  EXPECT_OK(cf_dist_by_name(&d, "4blobs", 50, "-data_name"), "4blobs in 50-D");
  EXPECT(d.dim == 50, "4blobs dim %lld", (long long)d.dim);
}

/* ---- 4b. context noise: noisy inputs at t >= 1, targets lead back to the clean path ---- */
static void test_context_noise(void) {
  const int64_t N = 5, P = 2, D = 2, J = N * P, B = 400;
  const double s = 0.3;
  struct cf_flow_cfg f = mkcfg(CF_PATH_BRIDGE, N, D, 0.7, 0);
  f.P = P;
  f.predict = CF_PREDICT_VELOCITY;
  struct cf_dist src, tgt;
  EXPECT_OK(cf_dist_by_name(&src, "8gaussians", 2, "-flow_source"), "8gaussians");
  EXPECT_OK(cf_dist_by_name(&tgt, "moons", 2, "-data_name"), "moons");
  size_t nz = (size_t)(B * J * D);
  float *z = xalloc(nz), *y = xalloc(nz), *zn = xalloc(nz), *yn = xalloc(nz);
  float *work = xalloc((size_t)((N + 2) * D));
  cf_flow_batch(&f, &src, &tgt, 5, 2, 0, B, z, y, work); /* clean */
  f.context_noise = s;
  cf_flow_batch(&f, &src, &tgt, 5, 2, 0, B, zn, yn, work);
  double sum = 0, sum2 = 0, worst = 0;
  int64_t n = 0, bad_x0 = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < N; t++)
      for (int64_t p = 0; p < P; p++) {
        const int64_t j = b * J + t * P + p;
        for (int64_t d = 0; d < D; d++) {
          double e = (double)zn[j * D + d] - z[j * D + d];
          if (t == 0) {
            bad_x0 += e != 0;
            continue;
          }
          sum += e, sum2 += e * e, n++;
        }
        if (t + 1 == N) continue;
        float nxt[2]; /* the noisy point advanced by its target is the clean next point */
        cf_flow_advance(&f, zn + j * D, yn + j * D, nxt);
        for (int64_t d = 0; d < D; d++)
          worst = fmax(worst, fabs((double)nxt[d] - z[(j + P) * D + d]));
      }
  double mean = sum / (double)n, sd = sqrt(sum2 / (double)n - mean * mean);
  EXPECT(bad_x0 == 0, "context noise: %lld source values changed (x0 must stay exact)",
         (long long)bad_x0);
  EXPECT(fabs(mean) < 4 * s / sqrt((double)n), "context noise: mean %g, want 0 (n %lld)", mean,
         (long long)n);
  EXPECT(fabs(sd - s) < 0.05 * s, "context noise: std %g, want %g", sd, s);
  EXPECT(worst < 1e-5,
         "context noise: noisy point + velocity target misses the clean next "
         "point by %g",
         worst);
  f.predict = CF_PREDICT_NEXT; /* absolute targets stay the clean next points */
  cf_flow_batch(&f, &src, &tgt, 5, 2, 0, B, zn, yn, work);
  f.context_noise = 0;
  cf_flow_batch(&f, &src, &tgt, 5, 2, 0, B, z, y, work);
  EXPECT(memcmp(y, yn, nz * sizeof(float)) == 0, "context noise changed next-point targets");
  free(z);
  free(y);
  free(zn);
  free(yn);
  free(work);
}

/* ---- 6. configuration and parsing ---- */
static void test_cfg(void) {
  struct cf_flow_cfg good = {.D = 2,
                             .N = 16,
                             .P = 4,
                             .S = 1,
                             .path = CF_PATH_BRIDGE,
                             .sigma = 1,
                             .sigma_min = 1e-4,
                             .predict = CF_PREDICT_NEXT};
  EXPECT_OK(cf_flow_cfg_check(&good), "default-like flow config");
  struct cf_flow_cfg f = good;
  f.N = 2;
  EXPECT_OK(cf_flow_cfg_check(&f), "N = 2");
  f.N = 1;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_time_points", "N = 1");
  f = good;
  f.P = 0;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_trajectories", "P = 0");
  f = good;
  f.S = 0;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_spatial_tokens", "S = 0");
  f = good;
  f.D = 0;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-data_dim", "D = 0");
  f = good;
  f.sigma = -0.5;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma", "sigma < 0");
  f.sigma = NAN;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma", "sigma NaN");
  f.sigma = INFINITY;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma", "sigma inf");
  f = good;
  f.sigma = 0;
  EXPECT_OK(cf_flow_cfg_check(&f), "sigma = 0");
  f = good;
  f.sigma_min = -1;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma_min", "sigma_min < 0");
  f.sigma_min = NAN;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma_min", "sigma_min NaN");
  f = good;
  f.context_noise = -0.1;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_context_noise", "context noise < 0");
  f.context_noise = NAN;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_context_noise", "context noise NaN");
  f = good;
  f.path = CF_PATH_VE;
  EXPECT_OK(cf_flow_cfg_check(&f), "ve 1e-4 .. 1");
  f.sigma_min = 0;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma_min", "ve sigma_min 0");
  f.sigma_min = 2;
  EXPECT_FAIL(cf_flow_cfg_check(&f), "-flow_sigma_min", "ve sigma_min > sigma");

  enum cf_path p;
  enum cf_predict q;
  static const char *paths[] = {"straight", "bridge", "noisy", "ve"};
  for (int i = 0; i < 4; i++) {
    p = (enum cf_path)99;
    EXPECT_OK(cf_path_parse(paths[i], &p), paths[i]);
    EXPECT((int)p == i && strcmp(cf_path_name(p), paths[i]) == 0, "path %s -> %d", paths[i],
           (int)p);
  }
  EXPECT(CF_PATH_STRAIGHT == 0 && CF_PATH_BRIDGE == 1 && CF_PATH_NOISY == 2 && CF_PATH_VE == 3,
         "path enum order");
  EXPECT_FAIL(cf_path_parse("curved", &p), "-flow_path", "unknown path");
  EXPECT_FAIL(cf_path_parse("curved", &p), "'curved'", "unknown path word");
  EXPECT_FAIL(cf_path_parse("", &p), "-flow_path", "empty path");
  EXPECT_FAIL(cf_path_parse("Bridge", &p), "-flow_path", "path case");
  EXPECT_OK(cf_predict_parse("next", &q), "next");
  EXPECT(q == CF_PREDICT_NEXT && strcmp(cf_predict_name(q), "next") == 0, "predict next");
  EXPECT_OK(cf_predict_parse("velocity", &q), "velocity");
  EXPECT(q == CF_PREDICT_VELOCITY && strcmp(cf_predict_name(q), "velocity") == 0,
         "predict velocity");
  EXPECT_FAIL(cf_predict_parse("score", &q), "-flow_predict", "unknown predict");
  EXPECT_FAIL(cf_predict_parse("score", &q), "'score'", "unknown predict word");
}

int main(void) {
  test_straight();
  test_bridge();
  test_noisy_ve();
  test_batch();
  test_context_noise();
  test_8gaussians();
  test_moons();
  test_checkerboard();
  test_checkerboard_nd();
  test_mixtures();
  test_points();
  test_dist_determinism();
  test_dist_errors();
  test_cfg();
  EXPECT(cf_alloc_bytes() == 0, "%zu bytes still allocated", cf_alloc_bytes());
  return cf_test_done("test_flow");
}
