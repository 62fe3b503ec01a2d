/* test_selffeed.c: training on the model's own rollout (selffeed.h) against an independent
 * construction.
 * The reference rolls each pass out point by point through its own KV cache (P points per
 * extend, as sampling does), draws with the documented noise streams, and recomputes the
 * targets (an endpoint from the documented candidates, then the bridge step in double
 * precision); the endpoint's draw (cf_flow_endpoint) is checked against a posterior worked
 * out by hand. Checked: steps 0 and prob 0 change nothing;
 * with prob 1 every point t in 1 .. N-2 holds the model's own m-step rollout (m = 1, 2, 3) and
 * the rest is untouched; the last target lands exactly on its endpoint; with prob 0.5 about half
 * the points change and the others keep their bits; a call with fewer sequences than the buffers
 * hold (padding) gives the same bits; straight paths continue the line through x0 and the model's
 * point; every sequence takes its endpoints from its own target distribution; bad options are
 * refused; nothing allocates in a call. Gauss and gmm heads (their noise widths differ), S 1 and 2,
 * next-point and velocity targets. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/flow.h"
#include "calmflow/mem.h"
#include "calmflow/rng.h"
#include "calmflow/selffeed.h"
#include "cf_test.h"

static double maxdiff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)a[i] - (double)b[i]));
  return m;
}

/* The reference pass r: out = in with every point t >= 1 drawn from the history of `in`
 * before it, rolled out P points per extend through a cache of its own. */
static void ref_pass(const struct cf_model *m, const struct cf_flow_cfg *f, uint64_t seed,
                     uint32_t step, uint64_t seq0, int64_t b, int64_t r, const float *in,
                     float *out) {
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t N = mc->N, P = mc->P, D = mc->D, S = mc->S, H = mc->H, J = N * P;
  const int64_t W = cf_head_noise_width(mc);
  struct cf_kvcache kv;
  EXPECT_OK(cf_kvcache_init(&kv, m, b, J * S, P * S), "reference cache");
  float *pts = cf_test_floats((size_t)(b * P * D)), *h = cf_test_floats((size_t)(b * P * S * H));
  float *eps = cf_test_floats((size_t)(b * P * W)), *y = cf_test_floats((size_t)(b * P * D));
  memcpy(out, in, (size_t)(b * J * D) * sizeof(float));
  for (int64_t t = 0; t + 1 < N; t++) {
    for (int64_t k = 0; k < b; k++)
      memcpy(pts + k * P * D, in + (k * J + t * P) * D, (size_t)(P * D) * sizeof(float));
    EXPECT_OK(cf_model_extend(m, &kv, pts, P, h), "reference extend");
    for (int64_t k = 0; k < b; k++)
      for (int64_t p = 0; p < P; p++) {
        uint64_t g = (seq0 + (uint64_t)k) * (uint64_t)P + (uint64_t)p;
        struct cf_rng q = {seed, CF_RNG_SELFFEED_HEAD, step,
                           (g * (uint64_t)N + (uint64_t)t) * (uint64_t)N + (uint64_t)r};
        cf_head_noise(mc, &q, eps + (k * P + p) * W);
      }
    EXPECT_OK(cf_head_sample(m, &kv, P, h, eps, 1.0f, y), "reference head sample");
    for (int64_t k = 0; k < b; k++)
      for (int64_t p = 0; p < P; p++)
        cf_flow_advance(f, in + (k * J + t * P + p) * D, y + (k * P + p) * D,
                        out + (k * J + (t + 1) * P + p) * D);
  }
  free(pts), free(h), free(eps), free(y);
  cf_kvcache_release(&kv);
}

struct setup {
  struct cf_model_cfg mc;
  struct cf_flow_cfg f;
  struct cf_model m;
  struct cf_dist src, tgt;
  struct cf_dist tgts[64]; /* every sequence's targets: tgt */
  int64_t J;
};

static int setup_init(struct setup *s, enum cf_head head, int64_t S, enum cf_path path,
                      enum cf_predict pred) {
  memset(s, 0, sizeof *s);
  s->mc = (struct cf_model_cfg){.D = 2,
                                .N = 6,
                                .P = 2,
                                .S = S,
                                .H = 16,
                                .layers = 2,
                                .heads = 2,
                                .ffn = 32,
                                .rotary_pct = 0.25,
                                .rotary_base = 10000.0,
                                .head = head,
                                .dropout = 0.1f,
                                .logstd_min = -7,
                                .logstd_max = 5,
                                .gmm_k = 3};
  s->f = (struct cf_flow_cfg){
      .D = 2, .N = 6, .P = 2, .S = S, .path = path, .sigma = 0.7, .predict = pred};
  s->J = s->mc.N * s->mc.P;
  cf_status st = cf_model_init(&s->m, &s->mc, 1);
  EXPECT(st == CF_OK, "model init: %s", cf_errmsg());
  if (st != CF_OK) return 0;
  cf_model_init_weights(&s->m, 7);
  EXPECT_OK(cf_dist_by_name(&s->src, "8gaussians", 2, "src"), "source");
  EXPECT_OK(cf_dist_by_name(&s->tgt, "moons", 2, "tgt"), "target");
  for (int i = 0; i < 64; i++)
    s->tgts[i] = s->tgt;
  return 1;
}

/* A teacher-forced batch of b sequences from seq0, step 3. */
static void batch(const struct setup *s, int64_t b, uint64_t seq0, float *z, float *y) {
  float *work = cf_test_floats((size_t)((s->mc.N + 2) * s->mc.D));
  cf_flow_batch(&s->f, &s->src, &s->tgt, 5, 3, seq0, b, z, y, work);
  free(work);
}

/* A teacher-forced batch of b sequences from 0, then one self-feeding pass (prob 1, `cands`
 * candidates) over it. */
static void fed_batch(struct setup *s, int64_t b, int64_t cands, float *z, float *y,
                      const char *what) {
  batch(s, b, 0, z, y);
  struct cf_selffeed sf;
  EXPECT_OK(cf_selffeed_init(&sf, &s->m, b, 1, 1.0, cands), what);
  EXPECT_OK(cf_selffeed_apply(&sf, &s->m, &s->f, 5, 3, s->tgts, 0, b, NULL, z, y), what);
  cf_selffeed_release(&sf);
}

/* prob 1, m passes: inputs against the reference rollout, targets against the bridge. */
static void check_full(enum cf_head head, int64_t S, enum cf_predict pred, int64_t steps,
                       const char *what) {
  struct setup s;
  if (!setup_init(&s, head, S, CF_PATH_BRIDGE, pred)) return;
  const int64_t b = 3, N = s.mc.N, P = s.mc.P, D = s.mc.D, J = s.J;
  const size_t n = (size_t)(b * J * D);
  const uint64_t seq0 = 11;
  float *z = cf_test_floats(n), *y = cf_test_floats(n), *z0 = cf_test_floats(n),
        *y0 = cf_test_floats(n), *a = cf_test_floats(n), *c = cf_test_floats(n);
  batch(&s, b, seq0, z0, y0);
  memcpy(z, z0, n * sizeof(float));
  memcpy(y, y0, n * sizeof(float));
  struct cf_selffeed sf;
  EXPECT_OK(cf_selffeed_init(&sf, &s.m, b, steps, 1.0, 64), what);
  uint64_t allocs = cf_alloc_count();
  EXPECT_OK(cf_selffeed_apply(&sf, &s.m, &s.f, 5, 3, s.tgts, seq0, b, NULL, z, y), what);
  EXPECT(cf_alloc_count() == allocs, "%s: a call allocated", what);
  memcpy(a, z0, n * sizeof(float));
  for (int64_t r = 0; r < steps; r++) {
    ref_pass(&s.m, &s.f, 5, 3, seq0, b, r, a, c);
    memcpy(a, c, n * sizeof(float));
  }
  double dz = 0, dsame = 0, dx1 = 0, dy = 0;
  const double n1 = (double)(N - 1);
  const int64_t K = 64;
  float *cand = cf_test_floats((size_t)(K * D));
  double w[64];
  for (int64_t k = 0; k < b; k++)
    for (int64_t p = 0; p < P; p++) {
      const uint64_t g = (seq0 + (uint64_t)k) * (uint64_t)P + (uint64_t)p;
      const struct cf_rng q = {5, CF_RNG_SELFFEED, 3, g};
      for (int64_t i = 0; i < K; i++) { /* the path's candidate endpoints */
        struct cf_rng r1 = {5, CF_RNG_SELFFEED_X1, 3, g * (uint64_t)K + (uint64_t)i};
        cf_dist_draw(&s.tgt, &r1, cand + i * D);
      }
      const float *x0 = z0 + (k * J + p) * D;
      for (int64_t t = 0; t < N; t++) {
        const int64_t o = (k * J + t * P + p) * D;
        if (t == 0 || t == N - 1) { /* unchanged rows */
          dsame = fmax(dsame, maxdiff(z + o, z0 + o, (size_t)D));
          if (t == 0) dsame = fmax(dsame, maxdiff(y + o, y0 + o, (size_t)D));
          continue;
        }
        dz = fmax(dz, maxdiff(z + o, a + o, (size_t)D));
        float x1[8];
        cf_flow_endpoint(&s.f, (double)t / n1, x0, z + o, cand, K,
                         cf_rng_uniform1(&q, (1ull << 40) + (1ull << 30) + (uint64_t)t), w, x1);
        const double left = n1 - (double)t, sd = 0.7 * sqrt((left - 1.0) / (left * n1));
        for (int64_t d = 0; d < D; d++) {
          double u = z[o + d];
          double nxt = u + (x1[d] - u) / left + sd * cf_rng_normal1(&q, (uint64_t)(t * D + d));
          double want = pred == CF_PREDICT_NEXT ? nxt : (nxt - u) * n1;
          dy = fmax(dy, fabs(want - y[o + d]) / fmax(1.0, fabs(want)));
          if (t == N - 2) { /* the last step lands on the endpoint */
            double land = pred == CF_PREDICT_NEXT ? y[o + d] : u + y[o + d] / n1;
            dx1 = fmax(dx1, fabs(land - x1[d]));
          }
        }
      }
    }
  free(cand);
  EXPECT(dsame == 0, "%s: the source points, endpoints or first targets changed (%g)", what, dsame);
  EXPECT(dz < 1e-4, "%s: inputs differ from the reference %lld-step rollout by %g", what,
         (long long)steps, dz);
  EXPECT(maxdiff(z, z0, n) > 1e-3, "%s: no input changed", what);
  EXPECT(dy < 1e-5, "%s: targets differ from the bridge continuation by %g", what, dy);
  EXPECT(dx1 < 1e-5, "%s: the last step misses its endpoint by %g", what, dx1);

  /* padding: the same first two sequences from a call of 2 in buffers of 3 */
  float *z2 = cf_test_floats(n), *y2 = cf_test_floats(n);
  memcpy(z2, z0, n * sizeof(float));
  memcpy(y2, y0, n * sizeof(float));
  EXPECT_OK(cf_selffeed_apply(&sf, &s.m, &s.f, 5, 3, s.tgts, seq0, 2, NULL, z2, y2), what);
  size_t n2 = (size_t)(2 * J * D);
  EXPECT(memcmp(z2, z, n2 * sizeof(float)) == 0 && memcmp(y2, y, n2 * sizeof(float)) == 0,
         "%s: 2 sequences in buffers of 3 differ from 3 in 3", what);
  EXPECT(memcmp(z2 + n2, z0 + n2, (n - n2) * sizeof(float)) == 0,
         "%s: a call of 2 sequences wrote the third", what);
  EXPECT_FAIL(cf_selffeed_apply(&sf, &s.m, &s.f, 5, 3, s.tgts, seq0, 4, NULL, z2, y2),
              "buffers hold 3", "4 sequences in buffers of 3");
  cf_selffeed_release(&sf);
  free(z), free(y), free(z0), free(y0), free(a), free(c), free(z2), free(y2);
  cf_model_release(&s.m);
}

/* steps 0 and prob 0 keep every bit; prob 0.5 changes about half the points, the rest keep
 * their bits (inputs and targets). */
static void check_share(void) {
  struct setup s;
  if (!setup_init(&s, CF_HEAD_GAUSS, 1, CF_PATH_BRIDGE, CF_PREDICT_VELOCITY)) return;
  const int64_t b = 40, N = s.mc.N, P = s.mc.P, D = s.mc.D, J = s.J;
  const size_t n = (size_t)(b * J * D);
  float *z = cf_test_floats(n), *y = cf_test_floats(n), *z0 = cf_test_floats(n),
        *y0 = cf_test_floats(n);
  batch(&s, b, 0, z0, y0);
  const double probs[3] = {0.0, 1.0, 0.5};
  const int64_t steps[3] = {2, 0, 2};
  for (int c = 0; c < 3; c++) {
    struct cf_selffeed sf;
    EXPECT_OK(cf_selffeed_init(&sf, &s.m, b, steps[c], probs[c], 64), "share init");
    memcpy(z, z0, n * sizeof(float));
    memcpy(y, y0, n * sizeof(float));
    EXPECT_OK(cf_selffeed_apply(&sf, &s.m, &s.f, 5, 3, s.tgts, 0, b, NULL, z, y), "share apply");
    int64_t changed = 0, bad = 0;
    for (int64_t k = 0; k < b; k++)
      for (int64_t j = P; j < (N - 1) * P; j++) {
        size_t o = (size_t)((k * J + j) * D);
        int dz = memcmp(z + o, z0 + o, (size_t)D * sizeof(float)) != 0;
        int dy = memcmp(y + o, y0 + o, (size_t)D * sizeof(float)) != 0;
        changed += dz;
        bad += dz != dy; /* a changed input has a new target, an unchanged one its old */
      }
    double share = (double)changed / (double)(b * (N - 2) * P);
    if (c < 2)
      EXPECT(memcmp(z, z0, n * sizeof(float)) == 0 && memcmp(y, y0, n * sizeof(float)) == 0,
             "steps %lld prob %g changed the batch", (long long)steps[c], probs[c]);
    else
      EXPECT(share > 0.4 && share < 0.6 && bad == 0,
             "prob 0.5: %.3f of the points changed (%lld inputs without their targets)", share,
             (long long)bad);
    cf_selffeed_release(&sf);
  }
  free(z), free(y), free(z0), free(y0);
  cf_model_release(&s.m);
}

/* Straight paths (no bridge noise): the endpoint is the line's through x0 and the model's point
 * u, so the velocity target is (u - x0) / t at every changed point. */
static void check_straight(void) {
  struct setup s;
  if (!setup_init(&s, CF_HEAD_GAUSS, 1, CF_PATH_STRAIGHT, CF_PREDICT_VELOCITY)) return;
  const int64_t b = 2, N = s.mc.N, P = s.mc.P, D = s.mc.D, J = s.J;
  const size_t n = (size_t)(b * J * D);
  float *z = cf_test_floats(n), *y = cf_test_floats(n);
  fed_batch(&s, b, 64, z, y, "straight");
  double dev = 0;
  for (int64_t k = 0; k < b; k++)
    for (int64_t p = 0; p < P; p++) {
      const float *x0 = z + (k * J + p) * D;
      for (int64_t t = 1; t + 1 < N; t++)
        for (int64_t d = 0; d < D; d++) {
          int64_t o = (k * J + t * P + p) * D + d;
          double want = (z[o] - x0[d]) / ((double)t / (double)(N - 1));
          dev = fmax(dev, fabs(y[o] - want) / fmax(1.0, fabs(want)));
        }
    }
  EXPECT(dev < 1e-5, "straight: the velocity targets leave the line through x0 by %g", dev);
  free(z), free(y);
  cf_model_release(&s.m);
}

/* Each sequence draws its candidates from its own target distribution (a prompt's group): with
 * one point per sequence, every last step of sequence k lands on sequence k's point. */
static void check_groups(void) {
  struct setup s;
  if (!setup_init(&s, CF_HEAD_GAUSS, 1, CF_PATH_BRIDGE, CF_PREDICT_VELOCITY)) return;
  const int64_t b = 3, N = s.mc.N, P = s.mc.P, D = s.mc.D, J = s.J;
  const size_t n = (size_t)(b * J * D);
  const float pts[6] = {4, 4, -4, 4, 0, -4};
  for (int64_t k = 0; k < b; k++)
    cf_dist_points(&s.tgts[k], pts + k * D, 1, D);
  float *z = cf_test_floats(n), *y = cf_test_floats(n);
  fed_batch(&s, b, 8, z, y, "groups");
  double off = 0;
  for (int64_t k = 0; k < b; k++)
    for (int64_t p = 0; p < P; p++) {
      const int64_t o = (k * J + (N - 2) * P + p) * D;
      for (int64_t d = 0; d < D; d++)
        off = fmax(off, fabs(z[o + d] + y[o + d] / (double)(N - 1) - pts[k * D + d]));
    }
  EXPECT(off < 1e-5, "groups: a last step lands %g away from its sequence's target point", off);
  free(z), free(y);
  cf_model_release(&s.m);
}

/* cf_flow_endpoint against the bridge's posterior worked out by hand: x0 = 0, t = 1/2,
 * sigma 1, candidates a = (1, 0) twice and b = (-1, 0) once, u = (0.3, 0): the likelihood
 * ratio of a to b is exp(-((0.3 - 0.5)^2 - (0.3 + 0.5)^2) / (2 * 0.25)) = exp(1.2), so a is
 * picked with probability 2 e^1.2 / (2 e^1.2 + 1), and each a by half of that: the pick
 * switches from the first a to the second at e^1.2 / (2 e^1.2 + 1) of the uniform and to b
 * at 2 e^1.2 / (2 e^1.2 + 1). Straight paths and sigma 0: the line through x0 and u. */
static void check_endpoint(void) {
  struct cf_flow_cfg f = {.D = 2, .N = 3, .P = 1, .S = 1, .path = CF_PATH_BRIDGE, .sigma = 1};
  const float x0[2] = {0, 0}, u[2] = {0.3f, 0}, cand[6] = {1, 0, -1, 0, 1, 0};
  const float order[6] = {1, 0, 1, 0, -1, 0}; /* a, a, b: the boundaries in order */
  double w[3], e = exp(1.2), b1 = e / (2 * e + 1), b2 = 2 * e / (2 * e + 1);
  const double us[6] = {0, b1 - 1e-6, b1 + 1e-6, b2 - 1e-6, b2 + 1e-6, 0.999999};
  const int want[6] = {0, 0, 1, 1, 2, 2};
  float x1[2];
  for (int k = 0; k < 6; k++) {
    cf_flow_endpoint(&f, 0.5, x0, u, order, 3, us[k], w, x1);
    EXPECT(x1[0] == order[want[k] * 2] && x1[1] == 0, "endpoint at uniform %.7f: (%g, %g)", us[k],
           x1[0], x1[1]);
  }
  cf_flow_endpoint(&f, 0.5, x0, u, cand, 3, 0.5, w, x1); /* the same weights in another order */
  EXPECT(x1[0] == -1, "endpoint: the uniform 0.5 falls on b in the order a, b, a");
  const float far[4] = {40, 0, -40, 0}; /* weights underflow without the max shift */
  cf_flow_endpoint(&f, 0.5, x0, u, far, 2, 0.3, w, x1);
  EXPECT(x1[0] == 40, "endpoint: far candidates, picked %g instead of the nearer 40", x1[0]);
  f.path = CF_PATH_STRAIGHT;
  const float x0b[2] = {1, -1}, ub[2] = {2, 1};
  cf_flow_endpoint(&f, 0.25, x0b, ub, cand, 3, 0.5, w, x1); /* (u - 0.75 x0) / 0.25 */
  EXPECT(fabs(x1[0] - 5.0) < 1e-6 && fabs(x1[1] - 7.0) < 1e-6, "straight endpoint (%g, %g)", x1[0],
         x1[1]);
  f.path = CF_PATH_BRIDGE;
  f.sigma = 0;
  cf_flow_endpoint(&f, 0.25, x0b, ub, cand, 3, 0.5, w, x1);
  EXPECT(fabs(x1[0] - 5.0) < 1e-6 && fabs(x1[1] - 7.0) < 1e-6, "bridge sigma 0 endpoint");
}

static void check_options(void) {
  struct cf_flow_cfg f = {.D = 2, .N = 6, .P = 2, .S = 1, .path = CF_PATH_BRIDGE, .sigma = 1};
  EXPECT_OK(cf_selffeed_check(&f, 4, 0.5, 1), "steps N - 2");
  EXPECT_FAIL(cf_selffeed_check(&f, 5, 0.5, 1), "-train_selffeed_steps: expected 0..4",
              "steps N-1");
  EXPECT_FAIL(cf_selffeed_check(&f, -1, 0.5, 1), "-train_selffeed_steps", "steps < 0");
  EXPECT_FAIL(cf_selffeed_check(&f, 1, 1.01, 1), "-train_selffeed_prob", "prob > 1");
  EXPECT_FAIL(cf_selffeed_check(&f, 1, NAN, 1), "-train_selffeed_prob", "prob NaN");
  EXPECT_FAIL(cf_selffeed_check(&f, 1, 0.5, 0), "-train_selffeed_cands", "no candidates");
  f.path = CF_PATH_VE;
  EXPECT_FAIL(cf_selffeed_check(&f, 1, 0.5, 1),
              "bridge or straight (the path continued from the model's point is a bridge), got ve",
              "ve path");
  EXPECT_OK(cf_selffeed_check(&f, 0, 0.5, 1), "ve path without self-feeding");
}

int main(void) {
  check_full(CF_HEAD_GAUSS, 1, CF_PREDICT_VELOCITY, 1, "gauss, S 1, velocity, 1 step");
  check_full(CF_HEAD_GAUSS, 2, CF_PREDICT_VELOCITY, 2, "gauss, S 2, velocity, 2 steps");
  check_full(CF_HEAD_GMM, 1, CF_PREDICT_NEXT, 3, "gmm, S 1, next point, 3 steps");
  check_share();
  check_straight();
  check_endpoint();
  check_groups();
  check_options();
  return cf_test_done("test_selffeed");
}
