/* test_optim.c: the optimizer layer of train.h (src/train/optim.c).
 *
 * 1. cf_train_lr: linear warm-up reaching lr at step warmup-1, cosine / linear decay reaching
 *    lr_min at the last step, constant staying at lr; values against hand-computed numbers.
 * 2. cf_clip_grad: returns the pre-clip norm, scales to maxnorm (1e-6 relative), leaves
 *    gradients below the limit untouched, maxnorm <= 0 means off.
 * 3. cf_optim_step against double-precision references written from torch's update rules:
 *      torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *                         p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 *      torch.optim.Adam(weight_decay=wd): the same with g += wd p and no decoupled decay
 *    over several steps with nonzero weight decay, 1e-6 relative on the parameters (relative to
 *    max(|p_ref|, |p_0|)) and 1e-5 on the moments (relative to max |g|, max g^2); the two
 *    differ when wd > 0 and agree bit for bit when wd = 0.
 * 4. cf_optimizer_parse / cf_decay_parse round trips and errors naming the option.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/train.h"
#include "cf_test.h"

static double rel(double got, double want) {
  return fabs(got - want) / (fabs(want) > 1e-300 ? fabs(want) : 1e-300);
}

/* ---- 1. learning-rate schedule ---- */
static struct cf_train_cfg sched(int64_t steps, int64_t warmup, double lr, double lr_min,
                                 enum cf_decay decay) {
  struct cf_train_cfg c;
  memset(&c, 0, sizeof c);
  c.steps = steps;
  c.warmup = warmup;
  c.lr = lr;
  c.lr_min = lr_min;
  c.decay = decay;
  return c;
}

static void test_lr(void) {
  /* 111 steps, 10 warm-up: the decay runs over steps 10..110, f = (step - 10) / 100 */
  struct cf_train_cfg c = sched(111, 10, 1e-3, 1e-5, CF_DECAY_COSINE);
  static const struct {
    int64_t step;
    double want;
  } warm[] = {{0, 1e-4}, {1, 2e-4}, {4, 5e-4}, {8, 9e-4}, {9, 1e-3}};
  for (int dec = 0; dec < 3; dec++) {
    c.decay = (enum cf_decay)dec;
    for (size_t i = 0; i < sizeof warm / sizeof warm[0]; i++)
      EXPECT(rel(cf_train_lr(&c, warm[i].step), warm[i].want) < 1e-12,
             "%s warm-up: lr(%lld) = %.12g, want %.12g", cf_decay_name(c.decay),
             (long long)warm[i].step, cf_train_lr(&c, warm[i].step), warm[i].want);
    EXPECT(cf_train_lr(&c, 10) == 1e-3, "%s: lr(10) = %.12g, want the peak 1e-3",
           cf_decay_name(c.decay), cf_train_lr(&c, 10));
  }
  /* cosine: w = (1 + cos(pi f)) / 2; f = 0.25 -> 0.853553390593, f = 0.5 -> 0.5 */
  c.decay = CF_DECAY_COSINE;
  static const struct {
    int64_t step;
    double want;
  } cosv[] = {{35, 1e-5 + 9.9e-4 * 0.8535533905932737},
              {60, 5.05e-4},
              {85, 1e-5 + 9.9e-4 * 0.1464466094067262},
              {110, 1e-5}};
  for (size_t i = 0; i < sizeof cosv / sizeof cosv[0]; i++)
    EXPECT(rel(cf_train_lr(&c, cosv[i].step), cosv[i].want) < 1e-9,
           "cosine: lr(%lld) = %.12g, want %.12g", (long long)cosv[i].step,
           cf_train_lr(&c, cosv[i].step), cosv[i].want);
  EXPECT(rel(cf_train_lr(&c, 500), 1e-5) < 1e-12, "cosine past the end: %.12g",
         cf_train_lr(&c, 500));
  /* linear: w = 1 - f */
  c.decay = CF_DECAY_LINEAR;
  static const struct {
    int64_t step;
    double want;
  } linv[] = {{35, 7.525e-4}, {60, 5.05e-4}, {85, 2.575e-4}, {109, 1.99e-5}, {110, 1e-5}};
  for (size_t i = 0; i < sizeof linv / sizeof linv[0]; i++)
    EXPECT(rel(cf_train_lr(&c, linv[i].step), linv[i].want) < 1e-9,
           "linear: lr(%lld) = %.12g, want %.12g", (long long)linv[i].step,
           cf_train_lr(&c, linv[i].step), linv[i].want);
  /* both decays are non-increasing after the warm-up and never below lr_min */
  for (int dec = 0; dec < 2; dec++) {
    c.decay = (enum cf_decay)dec;
    int bad = 0;
    for (int64_t s = 10; s < 111; s++)
      if (!(cf_train_lr(&c, s + 1) <= cf_train_lr(&c, s)) || !(cf_train_lr(&c, s) >= 1e-5)) bad++;
    EXPECT(bad == 0, "%s: %d steps increase or undershoot lr_min", cf_decay_name(c.decay), bad);
  }
  /* constant: lr after the warm-up, to the end and beyond */
  c.decay = CF_DECAY_CONSTANT;
  int bad = 0;
  for (int64_t s = 10; s < 200; s++)
    if (cf_train_lr(&c, s) != 1e-3) bad++;
  EXPECT(bad == 0, "constant: %d steps after the warm-up are not lr", bad);
  /* no warm-up: step 0 is the peak, the last step is lr_min (here 0) */
  c = sched(5, 0, 2e-3, 0, CF_DECAY_LINEAR);
  static const double lin5[5] = {2e-3, 1.5e-3, 1e-3, 5e-4, 0};
  for (int s = 0; s < 5; s++)
    EXPECT(fabs(cf_train_lr(&c, s) - lin5[s]) < 1e-15, "linear, no warm-up: lr(%d) = %.12g", s,
           cf_train_lr(&c, s));
  c.decay = CF_DECAY_COSINE;
  static const double cos5[5] = {2e-3, 1.7071067811865475e-3, 1e-3, 2.928932188134524e-4, 0};
  for (int s = 0; s < 5; s++)
    EXPECT(fabs(cf_train_lr(&c, s) - cos5[s]) < 1e-15, "cosine, no warm-up: lr(%d) = %.12g", s,
           cf_train_lr(&c, s));
  /* a single step: lr */
  c = sched(1, 0, 3e-4, 1e-6, CF_DECAY_COSINE);
  EXPECT(cf_train_lr(&c, 0) == 3e-4, "one step: lr(0) = %g", cf_train_lr(&c, 0));
}

/* ---- 2. clipping ---- */
static void fill(float *g, size_t n, uint64_t index) {
  struct cf_rng r = {21, CF_RNG_EVAL, 0, index};
  cf_rng_normal(&r, 0, g, n);
}

static double norm2(const float *g, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)g[i] * g[i];
  return sqrt(s);
}

static void test_clip(void) {
  enum { n = 1000 };
  static float g[n], g0[n];
  static const double maxnorms[] = {1.0, 0.25, 5.0, 31.0};
  for (size_t k = 0; k < sizeof maxnorms / sizeof maxnorms[0]; k++) {
    fill(g, n, k);
    double before = norm2(g, n); /* ~ sqrt(1000) = 31.6 */
    memcpy(g0, g, sizeof g);
    double ret = cf_clip_grad(g, n, maxnorms[k]);
    EXPECT(rel(ret, before) < 1e-12, "clip %g: returned %.12g, pre-clip norm %.12g", maxnorms[k],
           ret, before);
    double after = norm2(g, n);
    EXPECT(rel(after, maxnorms[k]) < 1e-6, "clip %g: norm after %.12g (rel err %.3g)", maxnorms[k],
           after, rel(after, maxnorms[k]));
    /* the direction is kept: one common factor */
    double kf = after / before;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
      if (!(fabs(g[i] - kf * g0[i]) <= 1e-6 * fabs(g0[i]) * kf + 1e-30)) bad++;
    EXPECT(bad == 0, "clip %g: %d entries not scaled by the common factor", maxnorms[k], bad);
  }
  /* below the limit (and exactly at it): untouched */
  fill(g, n, 9);
  double before = norm2(g, n);
  memcpy(g0, g, sizeof g);
  double ret = cf_clip_grad(g, n, before * 1.5);
  EXPECT(memcmp(g, g0, sizeof g) == 0 && rel(ret, before) < 1e-12, "clip above the norm changed g");
  ret = cf_clip_grad(g, n, before);
  EXPECT(memcmp(g, g0, sizeof g) == 0 && rel(ret, before) < 1e-12, "clip at the norm changed g");
  /* maxnorm 0 or negative: off, however large g is */
  for (size_t i = 0; i < n; i++)
    g[i] = g0[i] * 1e6f;
  memcpy(g0, g, sizeof g);
  ret = cf_clip_grad(g, n, 0);
  EXPECT(memcmp(g, g0, sizeof g) == 0, "clip with maxnorm 0 changed g");
  EXPECT(rel(ret, norm2(g0, n)) < 1e-12, "clip with maxnorm 0 returned %g", ret);
  ret = cf_clip_grad(g, n, -1);
  EXPECT(memcmp(g, g0, sizeof g) == 0, "clip with maxnorm -1 changed g");
  /* a hand example: (3, 4) has norm 5; clip to 1 gives (0.6, 0.8) */
  float h[2] = {3, 4};
  ret = cf_clip_grad(h, 2, 1.0);
  EXPECT(ret == 5.0 && fabs(h[0] - 0.6) < 1e-6 && fabs(h[1] - 0.8) < 1e-6,
         "clip (3,4) to 1: returned %g, g = (%g, %g)", ret, h[0], h[1]);
  EXPECT(cf_clip_grad(h, 0, 1.0) == 0, "clip of an empty vector");
}

/* ---- 3. AdamW / Adam-L2 against double references ---- */
enum { NP = 64, NSTEP = 25 };

struct ref {
  double p[NP], m[NP], v[NP], gmax[NP];
};

/* One torch-style update of the reference in double. */
static void ref_step(struct ref *s, const struct cf_train_cfg *c, const float *g, double lr,
                     int64_t t) {
  double bc1 = 1 - pow(c->beta1, (double)t), bc2 = 1 - pow(c->beta2, (double)t);
  for (int i = 0; i < NP; i++) {
    double gi = g[i];
    if (c->optimizer == CF_OPT_ADAM_L2)
      gi += c->weight_decay * s->p[i]; /* torch.optim.Adam(weight_decay=wd) */
    else
      s->p[i] *= 1 - lr * c->weight_decay; /* torch.optim.AdamW */
    if (fabs(gi) > s->gmax[i]) s->gmax[i] = fabs(gi);
    s->m[i] = c->beta1 * s->m[i] + (1 - c->beta1) * gi;
    s->v[i] = c->beta2 * s->v[i] + (1 - c->beta2) * gi * gi;
    double mhat = s->m[i] / bc1, vhat = s->v[i] / bc2;
    s->p[i] -= lr * mhat / (sqrt(vhat) + c->adam_eps);
  }
}

/* Parameters of mixed sign and size, bounded away from 0 (relative errors stay meaningful). */
static void init_params(float *p) {
  for (int i = 0; i < NP; i++)
    p[i] = (float)((i % 2 ? -1 : 1) * (0.5 + 0.05 * i));
}

/* Gradient of step t: element groups with size ~1, ~1e-3, ~1e-9 (comparable to eps, so the
 * position of eps matters), exact zeros, sign flips and a constant. */
static void grad(float *g, int64_t t) {
  struct cf_rng r = {5, CF_RNG_EVAL, (uint32_t)t, 0};
  cf_rng_normal(&r, 0, g, NP);
  for (int i = 0; i < NP; i++) {
    switch (i % 6) {
    case 0:
      break;
    case 1:
      g[i] *= 1e-3f;
      break;
    case 2:
      g[i] *= 1e-9f;
      break;
    case 3:
      g[i] = (t % 3 == 0) ? 0.0f : g[i];
      break;
    case 4:
      g[i] = (t % 2 ? -0.7f : 0.9f);
      break;
    default:
      g[i] = 0.25f;
      break;
    }
  }
}

/* Run NSTEP updates with per-step lr, compare parameters (1e-6 relative) and moments. */
static void check_adam(const char *what, const struct cf_train_cfg *c, float *pout) {
  struct cf_optim o;
  EXPECT_OK(cf_optim_init(&o, NP), "cf_optim_init");
  if (!o.m) return;
  float p[NP], g[NP];
  struct ref s;
  memset(&s, 0, sizeof s);
  float p0[NP];
  init_params(p);
  memcpy(p0, p, sizeof p);
  for (int i = 0; i < NP; i++)
    s.p[i] = p[i];
  double worst_p = 0, worst_m = 0, worst_v = 0;
  for (int64_t t = 1; t <= NSTEP; t++) {
    double lr = 0.02 * (1 + 0.1 * (double)t) / (1 + 0.01 * (double)(t * t));
    grad(g, t);
    cf_optim_step(&o, c, p, g, lr);
    ref_step(&s, c, g, lr, t);
    for (int i = 0; i < NP; i++) {
      /* relative to the parameter's scale: max(|p_ref|, |p_0|), so a parameter that decays
       * towards 0 does not turn float round-off into a large relative error */
      double ep = fabs(p[i] - s.p[i]) / fmax(fabs(s.p[i]), fabs(p0[i]));
      double em = fabs(o.m[i] - s.m[i]) / (s.gmax[i] > 0 ? s.gmax[i] : 1e-30);
      double ev = fabs(o.v[i] - s.v[i]) / (s.gmax[i] > 0 ? s.gmax[i] * s.gmax[i] : 1e-30);
      if (s.gmax[i] == 0) em = fabs(o.m[i]), ev = fabs(o.v[i]);
      if (!(ep <= worst_p)) worst_p = ep; /* NaN sticks */
      if (!(em <= worst_m)) worst_m = em; /* NaN sticks */
      if (!(ev <= worst_v)) worst_v = ev; /* NaN sticks */
    }
  }
  EXPECT(o.t == NSTEP, "%s: %lld updates counted, want %d", what, (long long)o.t, NSTEP);
  EXPECT(worst_p <= 1e-6, "%s: parameters differ from the reference by %.3g relative", what,
         worst_p);
  EXPECT(worst_m <= 1e-5, "%s: first moments differ by %.3g (relative to max |g|)", what, worst_m);
  EXPECT(worst_v <= 1e-5, "%s: second moments differ by %.3g (relative to max g^2)", what, worst_v);
  if (pout) memcpy(pout, p, sizeof p);
  cf_optim_release(&o);
  EXPECT(o.m == NULL && o.v == NULL && o.n == 0 && o.t == 0, "%s: release leaves state", what);
}

static struct cf_train_cfg adam_cfg(enum cf_optimizer opt, double wd, double b1, double b2,
                                    double eps) {
  struct cf_train_cfg c;
  memset(&c, 0, sizeof c);
  c.optimizer = opt;
  c.weight_decay = wd;
  c.beta1 = b1;
  c.beta2 = b2;
  c.adam_eps = eps;
  return c;
}

static void test_adam(void) {
  size_t held = cf_alloc_bytes();
  float pw[NP], pl[NP];
  struct cf_train_cfg c = adam_cfg(CF_OPT_ADAMW, 0.1, 0.9, 0.999, 1e-8);
  check_adam("adamw wd 0.1", &c, pw);
  c.optimizer = CF_OPT_ADAM_L2;
  check_adam("adam_l2 wd 0.1", &c, pl);
  double maxdiff = 0;
  for (int i = 0; i < NP; i++)
    if (!(fabs(pw[i] - pl[i]) <= maxdiff)) maxdiff = fabs(pw[i] - pl[i]);
  EXPECT(maxdiff > 1e-3, "adamw and adam_l2 agree (max diff %g) although wd = 0.1", maxdiff);

  /* other hyper-parameters: strong decay, other betas, a large eps */
  c = adam_cfg(CF_OPT_ADAMW, 1.0, 0.8, 0.99, 1e-3);
  check_adam("adamw wd 1 b(0.8,0.99) eps 1e-3", &c, NULL);
  c.optimizer = CF_OPT_ADAM_L2;
  check_adam("adam_l2 wd 1 b(0.8,0.99) eps 1e-3", &c, NULL);
  c = adam_cfg(CF_OPT_ADAMW, 0.01, 0.5, 0.9, 1e-6);
  check_adam("adamw wd 0.01 b(0.5,0.9)", &c, NULL);

  /* wd = 0: both are plain Adam, bit for bit */
  c = adam_cfg(CF_OPT_ADAMW, 0, 0.9, 0.999, 1e-8);
  check_adam("adamw wd 0", &c, pw);
  c.optimizer = CF_OPT_ADAM_L2;
  check_adam("adam_l2 wd 0", &c, pl);
  EXPECT(memcmp(pw, pl, sizeof pw) == 0, "adamw and adam_l2 differ with wd = 0");

  /* the first AdamW step by hand: m = 0.1 g, v = 0.001 g^2, mhat = g, vhat = g^2, so
   * p = p (1 - lr wd) - lr g / (|g| + eps) = 2 (1 - 0.01) - 0.1 sign(g) for |g| >> eps */
  struct cf_optim o;
  EXPECT_OK(cf_optim_init(&o, 3), "cf_optim_init(3)");
  if (o.m) {
    EXPECT(o.n == 3 && o.t == 0 && o.m[0] == 0 && o.v[2] == 0, "fresh optimizer state");
    float p[3] = {2.0f, 2.0f, 2.0f}, g[3] = {0.5f, -3.0f, 0.0f};
    c = adam_cfg(CF_OPT_ADAMW, 0.1, 0.9, 0.999, 1e-8);
    cf_optim_step(&o, &c, p, g, 0.1);
    EXPECT(fabs(p[0] - 1.88) < 1e-6 && fabs(p[1] - 2.08) < 1e-6 && fabs(p[2] - 1.98) < 1e-6,
           "first adamw step by hand: %.9g %.9g %.9g, want 1.88 2.08 1.98", p[0], p[1], p[2]);
    cf_optim_release(&o);
  }
  EXPECT(cf_alloc_bytes() == held, "optimizer state leaked: %zu bytes held, %zu before",
         cf_alloc_bytes(), held);
}

/* ---- 4. parsing ---- */
static void test_parse(void) {
  enum cf_optimizer o;
  enum cf_decay d;
  EXPECT_OK(cf_optimizer_parse("adamw", &o), "adamw");
  EXPECT(o == CF_OPT_ADAMW && strcmp(cf_optimizer_name(o), "adamw") == 0, "adamw round trip");
  EXPECT_OK(cf_optimizer_parse("adam_l2", &o), "adam_l2");
  EXPECT(o == CF_OPT_ADAM_L2 && strcmp(cf_optimizer_name(o), "adam_l2") == 0, "adam_l2 round trip");
  EXPECT_FAIL(cf_optimizer_parse("sgd", &o), "-train_optimizer", "unknown optimizer");
  EXPECT_FAIL(cf_optimizer_parse("sgd", &o), "'sgd'", "unknown optimizer word");
  EXPECT_FAIL(cf_optimizer_parse("AdamW", &o), "-train_optimizer", "optimizer case");
  EXPECT_FAIL(cf_optimizer_parse("", &o), "-train_optimizer", "empty optimizer");
  static const char *decays[] = {"cosine", "linear", "constant"};
  static const enum cf_decay kinds[] = {CF_DECAY_COSINE, CF_DECAY_LINEAR, CF_DECAY_CONSTANT};
  for (int i = 0; i < 3; i++) {
    EXPECT_OK(cf_decay_parse(decays[i], &d), decays[i]);
    EXPECT(d == kinds[i] && strcmp(cf_decay_name(d), decays[i]) == 0, "%s round trip", decays[i]);
  }
  EXPECT_FAIL(cf_decay_parse("step", &d), "-train_decay", "unknown decay");
  EXPECT_FAIL(cf_decay_parse("step", &d), "'step'", "unknown decay word");
  EXPECT_FAIL(cf_decay_parse("", &d), "-train_decay", "empty decay");
}

int main(void) {
  test_lr();
  test_clip();
  test_adam();
  test_parse();
  return cf_test_done("test_optim");
}
