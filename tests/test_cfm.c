/* test_cfm.c: the CFM baseline (src/flow/cfm.c, cfm_ode.c).
 *   layout     tensor table, parameter count, deterministic init
 *   gradient   the analytic gradient of the I-CFM loss against central differences, per
 *              coordinate of every tensor and along a random direction of all parameters
 *   pairs      cf_cfm_draw keys and cf_cfm_path formulas
 *   ot         the global-batch OT coupling on comm equals the one-rank coupling of the same
 *              global batch (any split, empty blocks included), is optimal (brute force over
 *              all permutations), costs no more than the identity pairing, and an oversized
 *              batch fails on every rank alike
 *   ode        PETSc TS on dx/dt = A x (closed form), dx/dt = 2 t x, a fixed-step scheme
 *              selected by options, a failing right-hand side; cf_cfm_sample against RK4
 *   smoke      I-CFM and OT-CFM training (Adam written here) on N(0, I) -> N(mu, 0.25 I):
 *              the loss falls, sampled mean and std near the target's
 *   cond       the conditional network (C one-hot features at the end of the input): layout,
 *              a one-hot row equals the unconditional network with that column of fc1 added to
 *              its bias, the gradient against central differences (the condition columns of
 *              fc1 included), a missing condition refused, conditional sampling per point
 *   ot groups  the OT coupling within condition groups: a permutation inside each group, each
 *              group's assignment the one-rank coupling of that group alone, the same on comm
 *              as on one rank
 * Usage: test_cfm [all | ot]  (mpiexec -n 2, 3 run `ot`: only the parts that communicate).
 */
#include <math.h>
#include <mpi.h>
#include <petscsys.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/cfm.h"
#include "calmflow/rng.h"
#include "cf_test.h"

static int g_rank, g_size;

/* ---- helpers ---- */

/* Loss of the current parameters on (x, t, u): sum ||v - u||^2 / B in double. */
static double eval_loss(struct cf_cfm *m, int64_t B, const float *x, const float *t, const float *u,
                        float *v) {
  if (cf_cfm_forward(m, B, x, t, v) != CF_OK) return NAN;
  double s = 0;
  for (int64_t i = 0; i < B * m->cfg.D; i++) {
    double d = (double)v[i] - (double)u[i];
    s += d * d;
  }
  return s / (double)B;
}

static void normals(uint64_t seed, uint32_t dom, float *out, size_t n, float scale) {
  struct cf_rng r = {.seed = seed, .domain = dom, .step = 0, .index = 0};
  cf_rng_normal(&r, 0, out, n);
  for (size_t i = 0; i < n; i++)
    out[i] *= scale;
}

/* ---- layout and init ---- */

static void test_layout(void) {
  struct cf_cfm_cfg c = {.D = 3, .width = 8, .layers = 3, .time_freqs = 2};
  struct cf_cfm a, b;
  EXPECT_OK(cf_cfm_init(&a, &c, 4), "init a");
  EXPECT_OK(cf_cfm_init(&b, &c, 9), "init b");
  if (a.impl == NULL || b.impl == NULL) return;
  EXPECT(cf_cfm_in_features(&c) == 3 + 1 + 4, "in features %lld",
         (long long)cf_cfm_in_features(&c));
  size_t want = 8 * 8 + 8 + 2 * (8 * 8 + 8) + 3 * 8 + 3;
  EXPECT(a.n_params == want && cf_cfm_param_count(&c) == want, "param count %zu / %zu, want %zu",
         a.n_params, cf_cfm_param_count(&c), want);
  EXPECT(a.n_tensors == 8, "tensors %d", a.n_tensors);
  size_t off = 0;
  for (int t = 0; t < a.n_tensors; t++) {
    EXPECT(a.tensors[t].offset == off, "tensor %s offset %zu, want %zu", a.tensors[t].name,
           a.tensors[t].offset, off);
    off += a.tensors[t].numel;
  }
  EXPECT(off == a.n_params, "tensors cover %zu of %zu", off, a.n_params);
  const struct cf_tensor_info *w1 = cf_cfm_find(&a, "cfm.fc1.weight");
  const struct cf_tensor_info *wo = cf_cfm_find(&a, "cfm.out.weight");
  const struct cf_tensor_info *b3 = cf_cfm_find(&a, "cfm.fc3.bias");
  EXPECT(w1 && w1->shape[0] == 8 && w1->shape[1] == 8 && w1->ndim == 2, "cfm.fc1.weight shape");
  EXPECT(wo && wo->shape[0] == 3 && wo->shape[1] == 8, "cfm.out.weight shape");
  EXPECT(b3 && b3->ndim == 1 && b3->shape[0] == 8, "cfm.fc3.bias shape");
  EXPECT(cf_cfm_find(&a, "cfm.fc4.weight") == NULL, "a fourth hidden layer exists");
  /* init: a function of the seed only (not of max_batch), inside U(-1/sqrt(in), 1/sqrt(in)) */
  cf_cfm_init_weights(&a, 7);
  cf_cfm_init_weights(&b, 7);
  EXPECT(memcmp(a.params, b.params, a.n_params * sizeof(float)) == 0, "init depends on the batch");
  if (w1 != NULL) {
    float mx = 0;
    for (size_t i = 0; i < w1->numel; i++)
      mx = fmaxf(mx, fabsf(a.params[w1->offset + i]));
    EXPECT(mx <= 1 / sqrtf(8.0f) && mx > 0.5f / sqrtf(8.0f), "fc1 init max %g", mx);
  }
  cf_cfm_init_weights(&b, 8);
  EXPECT(memcmp(a.params, b.params, a.n_params * sizeof(float)) != 0, "seed ignored");
  struct cf_cfm_cfg bad = c;
  bad.layers = 0;
  EXPECT_FAIL(cf_cfm_cfg_check(&bad), "hidden layers", "layers 0");
  bad = c;
  bad.width = 0;
  EXPECT_FAIL(cf_cfm_cfg_check(&bad), "hidden width", "width 0");
  float x[3 * 5] = {0}, t[5] = {0};
  EXPECT_FAIL(cf_cfm_forward(&a, 5, x, t, NULL), "forward of 5 points", "batch over max");
  cf_cfm_release(&a);
  cf_cfm_release(&a); /* idempotent */
  cf_cfm_release(&b);
}

/* ---- gradient check ---- */

static void test_gradient(void) {
  struct cf_cfm_cfg c = {.D = 3, .width = 8, .layers = 2, .time_freqs = 2};
  const int64_t B = 6;
  struct cf_cfm m;
  EXPECT_OK(cf_cfm_init(&m, &c, B), "init");
  if (m.impl == NULL) return;
  cf_cfm_init_weights(&m, 11);
  float x[6 * 3], u[6 * 3], t[6], v[6 * 3];
  normals(1, CF_RNG_X0, x, 18, 1.0f);
  normals(2, CF_RNG_X1, u, 18, 1.0f);
  struct cf_rng rt = {.seed = 3, .domain = CF_RNG_PATH};
  cf_rng_uniform(&rt, 0, t, 6);

  cf_cfm_zero_grad(&m);
  double loss = 0;
  EXPECT_OK(cf_cfm_loss_grad(&m, B, x, t, u, (double)B, &loss), "loss_grad");
  double l0 = eval_loss(&m, B, x, t, u, v);
  EXPECT(fabs(loss - l0) <= 1e-6 * l0, "loss_grad loss %.9g, forward %.9g", loss, l0);
  float *g = cf_test_floats(m.n_params);
  memcpy(g, m.grads, m.n_params * sizeof(float));

  /* every tensor: up to 10 coordinates spread over it */
  const double h = 1e-3;
  int checked = 0, worst_t = -1;
  double worst = 0;
  for (int ti = 0; ti < m.n_tensors; ti++) {
    const struct cf_tensor_info *T = &m.tensors[ti];
    size_t stride = T->numel / 10 ? T->numel / 10 : 1;
    for (size_t k = (size_t)ti % stride; k < T->numel; k += stride) {
      float *p = &m.params[T->offset + k], p0 = *p;
      *p = (float)(p0 + h);
      double hp = (double)*p - p0;
      double lp = eval_loss(&m, B, x, t, u, v);
      *p = (float)(p0 - h);
      double hm = p0 - (double)*p;
      double lm = eval_loss(&m, B, x, t, u, v);
      *p = p0;
      double fd = (lp - lm) / (hp + hm), an = g[T->offset + k];
      double err = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-2);
      if (err > worst) {
        worst = err;
        worst_t = ti;
      }
      EXPECT(err < 2e-2, "%s[%zu]: analytic %.6g, finite differences %.6g", T->name, k, an, fd);
      checked++;
    }
  }
  EXPECT(checked >= 40, "only %d coordinates checked", checked);
  if (worst_t >= 0)
    printf("gradient: %d coordinates, worst relative error %.2e (%s)\n", checked, worst,
           m.tensors[worst_t].name);

  /* along one direction of all parameters at once: the gradient plus as much noise, unit norm */
  float *dir = cf_test_floats(m.n_params), *p0 = cf_test_floats(m.n_params);
  normals(5, CF_RNG_INIT, dir, m.n_params, 1.0f);
  memcpy(p0, m.params, m.n_params * sizeof(float));
  double gn = 0;
  for (size_t i = 0; i < m.n_params; i++)
    gn += (double)g[i] * g[i];
  double grms = sqrt(gn / (double)m.n_params), gd = 0, dn = 0;
  for (size_t i = 0; i < m.n_params; i++) {
    dir[i] = (float)(g[i] + grms * dir[i]);
    dn += (double)dir[i] * dir[i];
  }
  for (size_t i = 0; i < m.n_params; i++) {
    dir[i] = (float)(dir[i] / sqrt(dn));
    gd += (double)g[i] * dir[i];
  }
  const double e = 1e-2;
  for (size_t i = 0; i < m.n_params; i++)
    m.params[i] = (float)(p0[i] + e * dir[i]);
  double lp = eval_loss(&m, B, x, t, u, v);
  for (size_t i = 0; i < m.n_params; i++)
    m.params[i] = (float)(p0[i] - e * dir[i]);
  double lm = eval_loss(&m, B, x, t, u, v);
  memcpy(m.params, p0, m.n_params * sizeof(float));
  double fd = (lp - lm) / (2 * e);
  EXPECT(fabs(fd - gd) <= 2e-3 * fabs(gd), "directional derivative: analytic %.8g, fd %.8g", gd,
         fd);
  printf("gradient: |g| %.4g, directional %.8g vs %.8g\n", sqrt(gn), gd, fd);

  /* the gradient adds up: twice the same batch is twice the gradient */
  EXPECT_OK(cf_cfm_loss_grad(&m, B, x, t, u, (double)B, &loss), "second loss_grad");
  double dmax = 0;
  for (size_t i = 0; i < m.n_params; i++)
    dmax = fmax(dmax, fabs(m.grads[i] - 2 * g[i]) / (fabs(g[i]) + 1e-3));
  EXPECT(dmax < 1e-4, "gradients do not accumulate (%g)", dmax);
  EXPECT_FAIL(cf_cfm_backward(&m, m.grads), "backward without a forward", "second backward");
  free(dir);
  free(p0);
  free(g);
  cf_cfm_release(&m);
}

/* ---- the conditional network ---- */

/* Loss of the current parameters on (x, t, c, u), as eval_loss. */
static double eval_loss_c(struct cf_cfm *m, int64_t B, const float *x, const float *t,
                          const float *c, const float *u, float *v) {
  if (cf_cfm_forward_c(m, B, x, t, c, v) != CF_OK) return NAN;
  double s = 0;
  for (int64_t i = 0; i < B * m->cfg.D; i++) {
    double d = (double)v[i] - (double)u[i];
    s += d * d;
  }
  return s / (double)B;
}

/* Two condition columns of 2 and 3 categories: row i has categories (i % 2, i % 3). */
static void onehot_rows(int64_t B, float *c) {
  memset(c, 0, (size_t)(B * 5) * sizeof(float));
  for (int64_t i = 0; i < B; i++) {
    c[i * 5 + i % 2] = 1.0f;
    c[i * 5 + 2 + i % 3] = 1.0f;
  }
}

static void test_cond(void) {
  const struct cf_cfm_cfg c0 = {.D = 3, .width = 8, .layers = 2, .time_freqs = 2};
  struct cf_cfm_cfg c1 = c0;
  c1.cond_dim = 5;
  const int64_t B = 6, I0 = 3 + 1 + 4, W = 8;
  struct cf_cfm u, m;
  EXPECT_OK(cf_cfm_init(&u, &c0, 1), "init unconditional");
  EXPECT_OK(cf_cfm_init(&m, &c1, B), "init conditional");
  if (u.impl == NULL || m.impl == NULL) return;
  EXPECT(cf_cfm_in_features(&c1) == I0 + 5, "in features %lld", (long long)cf_cfm_in_features(&c1));
  EXPECT(m.n_params == u.n_params + (size_t)(W * 5) && m.n_tensors == u.n_tensors,
         "conditional params %zu (tensors %d), unconditional %zu (%d)", m.n_params, m.n_tensors,
         u.n_params, u.n_tensors);
  const struct cf_tensor_info *w1 = cf_cfm_find(&m, "cfm.fc1.weight");
  const struct cf_tensor_info *b1 = cf_cfm_find(&m, "cfm.fc1.bias");
  EXPECT(w1 && w1->shape[0] == W && w1->shape[1] == I0 + 5, "cfm.fc1.weight shape");
  if (w1 == NULL || b1 == NULL) return;
  cf_cfm_init_weights(&m, 13);
  float x[18], t[6], cnd[30], v1[18], v0[3], un[18];
  normals(21, CF_RNG_X0, x, 18, 1.0f);
  normals(22, CF_RNG_X1, un, 18, 1.0f);
  struct cf_rng rt = {.seed = 23, .domain = CF_RNG_PATH};
  cf_rng_uniform(&rt, 0, t, 6);
  onehot_rows(B, cnd);
  EXPECT_OK(cf_cfm_forward_c(&m, B, x, t, cnd, v1), "conditional forward");

  /* row i with categories (a, b) = the unconditional network whose fc1 bias gets columns
   * I0 + a and I0 + 2 + b of the conditional fc1 weight added */
  double worst = 0;
  for (int64_t i = 0; i < B; i++) {
    for (int ti = 0; ti < u.n_tensors; ti++) {
      const struct cf_tensor_info *tu = &u.tensors[ti], *tm = &m.tensors[ti];
      if (tm == w1) {
        for (int64_t r = 0; r < W; r++)
          memcpy(u.params + tu->offset + r * I0, m.params + tm->offset + r * (I0 + 5),
                 (size_t)I0 * sizeof(float));
      } else if (tm == b1) {
        for (int64_t r = 0; r < W; r++) {
          const float *wr = m.params + w1->offset + r * (I0 + 5);
          u.params[tu->offset + r] = m.params[tm->offset + r] + wr[I0 + i % 2] + wr[I0 + 2 + i % 3];
        }
      } else {
        memcpy(u.params + tu->offset, m.params + tm->offset, tm->numel * sizeof(float));
      }
    }
    EXPECT_OK(cf_cfm_forward(&u, 1, x + i * 3, t + i, v0), "unconditional forward");
    for (int d = 0; d < 3; d++)
      worst = fmax(worst, fabs((double)v0[d] - v1[i * 3 + d]));
  }
  EXPECT(worst < 1e-5, "one-hot input differs from the bias-shifted network by %g", worst);
  printf("cond: one-hot rows vs the bias-shifted unconditional network: max difference %.2e\n",
         worst);
  EXPECT_FAIL(cf_cfm_forward(&m, B, x, t, v1), "no condition was given", "missing condition");

  /* gradient: every tensor at up to 10 coordinates, and every condition column of fc1 */
  cf_cfm_zero_grad(&m);
  double loss = 0;
  EXPECT_OK(cf_cfm_loss_grad_c(&m, B, x, t, cnd, un, (double)B, &loss), "conditional loss_grad");
  double l0 = eval_loss_c(&m, B, x, t, cnd, un, v1);
  EXPECT(fabs(loss - l0) <= 1e-6 * l0, "loss_grad loss %.9g, forward %.9g", loss, l0);
  float *g = cf_test_floats(m.n_params);
  memcpy(g, m.grads, m.n_params * sizeof(float));
  const double h = 1e-3;
  int checked = 0;
  double werr = 0;
  for (int ti = 0; ti < m.n_tensors; ti++) {
    const struct cf_tensor_info *T = &m.tensors[ti];
    size_t stride = T->numel / 10 ? T->numel / 10 : 1;
    for (size_t k = 0; k < T->numel; k++) {
      int cond_col = T == w1 && (int64_t)(k % (size_t)(I0 + 5)) >= I0;
      if (!cond_col && k % stride != (size_t)ti % stride) continue;
      float *p = &m.params[T->offset + k], p0 = *p;
      *p = (float)(p0 + h);
      double hp = (double)*p - p0, lp = eval_loss_c(&m, B, x, t, cnd, un, v1);
      *p = (float)(p0 - h);
      double hm = p0 - (double)*p, lm = eval_loss_c(&m, B, x, t, cnd, un, v1);
      *p = p0;
      double fd = (lp - lm) / (hp + hm), an = g[T->offset + k];
      double err = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-2);
      werr = fmax(werr, err);
      EXPECT(err < 2e-2, "%s[%zu]: analytic %.6g, finite differences %.6g", T->name, k, an, fd);
      checked++;
    }
  }
  EXPECT(checked >= 80, "only %d coordinates checked", checked);
  printf("cond: gradient at %d coordinates (40 of them the condition columns), worst relative "
         "error %.2e\n",
         checked, werr);

  /* sampling: each point flows under its own condition */
  struct cf_cfm_cfg c2 = {.D = 2, .width = 16, .layers = 2, .time_freqs = 3, .cond_dim = 2};
  struct cf_cfm s2;
  EXPECT_OK(cf_cfm_init(&s2, &c2, 4), "init sampler");
  if (s2.impl != NULL) {
    cf_cfm_init_weights(&s2, 31);
    float x0[8], xa[8], xb[4], xc[4], ca[8] = {1, 0, 0, 1, 1, 0, 0, 1}, one[4] = {1, 0, 1, 0},
                                      two[4] = {0, 1, 0, 1};
    normals(41, CF_RNG_X0, x0, 8, 1.0f);
    struct cf_ode_opts o;
    cf_ode_opts_default(&o);
    o.atol = o.rtol = 1e-8;
    memcpy(xa, x0, sizeof xa);
    EXPECT_OK(cf_cfm_sample_c(&s2, 4, xa, ca, &o, NULL), "sample mixed conditions");
    /* points 0 and 2 alone under condition 0, points 1 and 3 under condition 1 */
    xb[0] = x0[0], xb[1] = x0[1], xb[2] = x0[4], xb[3] = x0[5];
    xc[0] = x0[2], xc[1] = x0[3], xc[2] = x0[6], xc[3] = x0[7];
    EXPECT_OK(cf_cfm_sample_c(&s2, 2, xb, one, &o, NULL), "sample condition 0");
    EXPECT_OK(cf_cfm_sample_c(&s2, 2, xc, two, &o, NULL), "sample condition 1");
    double e = 0;
    for (int d = 0; d < 2; d++) {
      e = fmax(e, fabs(xa[d] - xb[d]));
      e = fmax(e, fabs(xa[4 + d] - xb[2 + d]));
      e = fmax(e, fabs(xa[2 + d] - xc[d]));
      e = fmax(e, fabs(xa[6 + d] - xc[2 + d]));
    }
    /* the same start under the other condition ends elsewhere */
    float xd[2] = {x0[0], x0[1]};
    EXPECT_OK(cf_cfm_sample_c(&s2, 1, xd, two + 2, &o, NULL), "sample swapped");
    double moved = fabs(xd[0] - xa[0]) + fabs(xd[1] - xa[1]);
    printf("cond: sampling per point's condition: together vs apart %.2e, the other condition "
           "moves the end point by %.3g\n",
           e, moved);
    EXPECT(e < 1e-4, "a point's sample depends on the others' conditions by %g", e);
    EXPECT(moved > 1e-3, "the condition does not change the flow (%g)", moved);
    EXPECT_FAIL(cf_cfm_sample(&s2, 2, xb, NULL, NULL), "without a condition",
                "sampling without a condition");
  }
  cf_cfm_release(&s2);
  free(g);
  cf_cfm_release(&u);
  cf_cfm_release(&m);
}

/* ---- pairs ---- */

static void test_pairs(void) {
  const int64_t D = 3, B = 4;
  struct cf_dist src, tgt;
  EXPECT_OK(cf_dist_by_name(&src, "normal", D, "-data_source"), "src");
  EXPECT_OK(cf_dist_by_name(&tgt, "4blobs", D, "-data_name"), "tgt");
  float x0[12], x1[12], t[4], eps[12], xt[12], u[12];
  EXPECT_OK(cf_cfm_draw(&src, &tgt, D, 9, 5, 100, B, x0, x1, t, eps), "draw");
  /* sample 102 drawn alone is the same as inside the batch */
  float a0[3], a1[3], at[1], ae[3];
  EXPECT_OK(cf_cfm_draw(&src, &tgt, D, 9, 5, 102, 1, a0, a1, at, ae), "draw one");
  EXPECT(memcmp(a0, x0 + 6, sizeof a0) == 0 && memcmp(a1, x1 + 6, sizeof a1) == 0 &&
             at[0] == t[2] && memcmp(ae, eps + 6, sizeof ae) == 0,
         "a sample depends on its batch");
  struct cf_rng rp = {.seed = 9, .domain = CF_RNG_PATH, .step = 5, .index = 101};
  EXPECT(t[1] == (float)cf_rng_uniform1(&rp, 0) && eps[3 + 2] == cf_rng_normal1(&rp, 6),
         "t / eps keys");
  for (int i = 0; i < 4; i++)
    EXPECT(t[i] >= 0 && t[i] < 1, "t %g", t[i]);
  cf_cfm_path(B, D, x0, x1, t, eps, 0.5, xt, u);
  for (int i = 0; i < 12; i++) {
    float ti = t[i / 3], want = (1 - ti) * x0[i] + ti * x1[i] + 0.5f * eps[i];
    EXPECT(fabsf(xt[i] - want) < 1e-5f && u[i] == x1[i] - x0[i], "path element %d", i);
  }
  cf_cfm_path(B, D, x0, x1, t, NULL, 0.0, xt, u);
  EXPECT(fabsf(xt[4] - ((1 - t[1]) * x0[4] + t[1] * x1[4])) < 1e-6f, "path without noise");
  struct cf_dist d2;
  EXPECT_OK(cf_dist_by_name(&d2, "normal", 2, "-data_source"), "d2");
  EXPECT_FAIL(cf_cfm_draw(&d2, &tgt, D, 9, 5, 0, 1, a0, a1, at, NULL), "source dimension",
              "wrong dimension");
}

/* ---- OT coupling ---- */

/* The global batch: x0 normal, x1 normal + (2, 0, ...), row g keyed by g. */
static void global_batch(int64_t N, int64_t D, float *x0, float *x1) {
  for (int64_t g = 0; g < N; g++) {
    struct cf_rng r0 = {.seed = 77, .domain = CF_RNG_X0, .step = 1, .index = (uint64_t)g};
    struct cf_rng r1 = {.seed = 77, .domain = CF_RNG_X1, .step = 1, .index = (uint64_t)g};
    cf_rng_normal(&r0, 0, x0 + g * D, (size_t)D);
    cf_rng_normal(&r1, 0, x1 + g * D, (size_t)D);
    x1[g * D] += 2.0f;
  }
}

static double pair_cost(const float *a, const float *b, int64_t D) {
  double s = 0;
  for (int64_t d = 0; d < D; d++) {
    double q = (double)a[d] - b[d];
    s += q * q;
  }
  return s;
}

/* Minimum over all permutations of n <= 8 (Heap's algorithm). */
static double brute_force(const float *x0, const float *x1, int64_t n, int64_t D) {
  int p[8], c[8] = {0};
  for (int i = 0; i < n; i++)
    p[i] = i;
  double best = INFINITY;
  for (;;) {
    double s = 0;
    for (int i = 0; i < n; i++)
      s += pair_cost(x0 + i * D, x1 + p[i] * D, D);
    if (s < best) best = s;
    int i = 1;
    while (i < n && c[i] >= i)
      c[i++] = 0;
    if (i >= n) break;
    int j = i % 2 ? c[i] : 0, tmp = p[j];
    p[j] = p[i];
    p[i] = tmp;
    c[i]++;
  }
  return best;
}

/* Couple a global batch of N on MPI_COMM_WORLD with rank r holding rows [lo[r], lo[r+1]) and
 * compare with the one-rank coupling on MPI_COMM_SELF. */
static void ot_case(int64_t N, int64_t D, const int64_t *lo, const char *what) {
  float *x0 = cf_test_floats((size_t)(N * D)), *x1 = cf_test_floats((size_t)(N * D));
  float *ref1 = cf_test_floats((size_t)(N * D)), *my1 = cf_test_floats((size_t)(N * D));
  int64_t *refp = calloc((size_t)N, sizeof(int64_t)), *myp = calloc((size_t)N, sizeof(int64_t));
  global_batch(N, D, x0, x1);
  memcpy(ref1, x1, (size_t)(N * D) * sizeof(float));
  struct cf_cfm_ot self, world;
  double ref_ot = 0, ref_id = 0, ot = 0, id = 0;
  EXPECT_OK(cf_cfm_ot_init(&self, MPI_COMM_SELF, N, D), "ot init self");
  EXPECT_OK(cf_cfm_ot_couple(&self, N, x0, ref1, refp, &ref_ot, &ref_id), "ot couple self");
  cf_cfm_ot_release(&self);
  /* reference: a permutation, optimal, no worse than the identity */
  int *seen = calloc((size_t)N, sizeof(int));
  double sum = 0, ident = 0;
  for (int64_t i = 0; i < N; i++) {
    EXPECT(refp[i] >= 0 && refp[i] < N && !seen[refp[i]]++, "%s: not a permutation at %lld", what,
           (long long)i);
    EXPECT(memcmp(ref1 + i * D, x1 + refp[i] * D, (size_t)D * sizeof(float)) == 0,
           "%s: x1 row %lld is not row pair[%lld]", what, (long long)i, (long long)i);
    sum += pair_cost(x0 + i * D, ref1 + i * D, D);
    ident += pair_cost(x0 + i * D, x1 + i * D, D);
  }
  free(seen);
  EXPECT(fabs(sum - ref_ot) <= 1e-9 * sum, "%s: reported cost %.12g, pairs cost %.12g", what,
         ref_ot, sum);
  EXPECT(fabs(ident - ref_id) <= 1e-9 * ident, "%s: identity cost %.12g vs %.12g", what, ref_id,
         ident);
  EXPECT(ref_ot <= ref_id, "%s: OT cost %g above the identity's %g", what, ref_ot, ref_id);
  if (N <= 8) {
    double bf = brute_force(x0, x1, N, D);
    EXPECT(fabs(bf - ref_ot) <= 1e-9 * bf, "%s: OT cost %.12g, brute force %.12g", what, ref_ot,
           bf);
  }
  /* the same on the world communicator, this rank holding its block */
  int64_t a = lo[g_rank], b = lo[g_rank + 1], Bm = b - a;
  memcpy(my1, x1 + a * D, (size_t)(Bm * D) * sizeof(float));
  EXPECT_OK(cf_cfm_ot_init(&world, MPI_COMM_WORLD, N, D), "ot init world");
  EXPECT_OK(cf_cfm_ot_couple(&world, Bm, x0 + a * D, my1, myp, &ot, &id), "ot couple world");
  for (int64_t i = 0; i < Bm; i++)
    EXPECT(myp[i] == refp[a + i] &&
               memcmp(my1 + i * D, ref1 + (a + i) * D, (size_t)D * sizeof(float)) == 0,
           "%s: row %lld paired with %lld, one rank pairs it with %lld", what, (long long)(a + i),
           (long long)myp[i], (long long)refp[a + i]);
  EXPECT(ot == ref_ot && id == ref_id,
         "%s: costs %.17g / %.17g differ from one rank's %.17g / %.17g", what, ot, id, ref_ot,
         ref_id);
  if (g_rank == 0)
    printf("ot %s: N %lld, ranks %d: cost %.6g <= identity %.6g\n", what, (long long)N, g_size, ot,
           id);
  cf_cfm_ot_release(&world);
  free(x0);
  free(x1);
  free(ref1);
  free(my1);
  free(refp);
  free(myp);
}

static void test_ot(void) {
  int64_t lo[65];
  /* balanced split, brute-force size */
  for (int r = 0; r <= g_size; r++)
    lo[r] = 7 * r / g_size;
  ot_case(7, 3, lo, "balanced");
  /* uneven split: rank r holds r + 1 parts */
  int64_t parts = (int64_t)g_size * (g_size + 1) / 2, N = 61;
  lo[0] = 0;
  for (int r = 0; r < g_size; r++)
    lo[r + 1] = N * ((int64_t)(r + 1) * (r + 2) / 2) / parts;
  ot_case(N, 5, lo, "uneven");
  /* all rows on the last rank, the others empty */
  for (int r = 0; r < g_size; r++)
    lo[r] = 0;
  lo[g_size] = 40;
  ot_case(40, 2, lo, "one holder");
  /* D = 21: the cost's eight-lane blocks and a tail of 5 (the cases above are all tail) */
  for (int r = 0; r <= g_size; r++)
    lo[r] = 30 * r / g_size;
  ot_case(30, 21, lo, "wide rows");

  /* a global batch larger than the workspace fails on every rank, nobody hangs */
  struct cf_cfm_ot ot;
  EXPECT_OK(cf_cfm_ot_init(&ot, MPI_COMM_WORLD, 4, 2), "small ot init");
  float y0[10] = {0}, y1[10] = {0};
  EXPECT_FAIL_STATUS(cf_cfm_ot_couple(&ot, 5, y0, y1, NULL, NULL, NULL), CF_EINVAL,
                     "the workspace holds 4", "oversized batch");
  cf_cfm_ot_release(&ot);
  int ok = 1, all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT(all == g_size, "ranks out of step after the oversized batch");
}

/* OT within condition groups: N points, group of row g = (7 g) % 3, rank r holding rows
 * [lo[r], lo[r+1]). */
static void ot_groups_case(int64_t N, int64_t D, const int64_t *lo) {
  float *x0 = cf_test_floats((size_t)(N * D)), *x1 = cf_test_floats((size_t)(N * D));
  float *ref1 = cf_test_floats((size_t)(N * D)), *my1 = cf_test_floats((size_t)(N * D));
  float *g0 = cf_test_floats((size_t)(N * D)), *g1 = cf_test_floats((size_t)(N * D));
  int64_t *grp = calloc((size_t)N, sizeof(int64_t)), *refp = calloc((size_t)N, sizeof(int64_t));
  int64_t *myp = calloc((size_t)N, sizeof(int64_t)), *rows = calloc((size_t)N, sizeof(int64_t));
  int64_t *gp = calloc((size_t)N, sizeof(int64_t));
  global_batch(N, D, x0, x1);
  for (int64_t g = 0; g < N; g++)
    grp[g] = (7 * g) % 3 + 10; /* any numbers */
  memcpy(ref1, x1, (size_t)(N * D) * sizeof(float));
  struct cf_cfm_ot self, world;
  double ref_ot = 0, ref_id = 0, ot = 0, id = 0, sum_groups = 0;
  EXPECT_OK(cf_cfm_ot_init(&self, MPI_COMM_SELF, N, D), "ot init self");
  EXPECT_OK(cf_cfm_ot_couple_groups(&self, N, x0, ref1, grp, refp, &ref_ot, &ref_id),
            "ot groups self");
  /* each group alone, coupled without groups, gives the same pairs */
  for (int64_t gg = 10; gg < 13; gg++) {
    int64_t m = 0;
    for (int64_t g = 0; g < N; g++)
      if (grp[g] == gg) {
        memcpy(g0 + m * D, x0 + g * D, (size_t)D * sizeof(float));
        memcpy(g1 + m * D, x1 + g * D, (size_t)D * sizeof(float));
        rows[m++] = g;
      }
    double c = 0;
    EXPECT_OK(cf_cfm_ot_couple(&self, m, g0, g1, gp, &c, NULL), "ot one group");
    sum_groups += c;
    for (int64_t p = 0; p < m; p++)
      EXPECT(refp[rows[p]] == rows[gp[p]], "group %lld: row %lld paired with %lld, alone %lld",
             (long long)gg, (long long)rows[p], (long long)refp[rows[p]], (long long)rows[gp[p]]);
  }
  cf_cfm_ot_release(&self);
  for (int64_t i = 0; i < N; i++)
    EXPECT(grp[refp[i]] == grp[i] &&
               memcmp(ref1 + i * D, x1 + refp[i] * D, (size_t)D * sizeof(float)) == 0,
           "row %lld (group %lld) got x1 row %lld of group %lld", (long long)i, (long long)grp[i],
           (long long)refp[i], (long long)grp[refp[i]]);
  EXPECT(fabs(ref_ot - sum_groups) <= 1e-9 * sum_groups, "cost %.12g, groups alone %.12g", ref_ot,
         sum_groups);
  /* on the world communicator */
  int64_t a = lo[g_rank], b = lo[g_rank + 1], Bm = b - a;
  memcpy(my1, x1 + a * D, (size_t)(Bm * D) * sizeof(float));
  EXPECT_OK(cf_cfm_ot_init(&world, MPI_COMM_WORLD, N, D), "ot init world");
  EXPECT_OK(cf_cfm_ot_couple_groups(&world, Bm, x0 + a * D, my1, grp + a, myp, &ot, &id),
            "ot groups world");
  for (int64_t i = 0; i < Bm; i++)
    EXPECT(myp[i] == refp[a + i], "groups: row %lld paired with %lld, one rank %lld",
           (long long)(a + i), (long long)myp[i], (long long)refp[a + i]);
  EXPECT(ot == ref_ot && id == ref_id, "groups: costs %.17g / %.17g, one rank %.17g / %.17g", ot,
         id, ref_ot, ref_id);
  if (g_rank == 0)
    printf("ot groups: N %lld in 3 groups, ranks %d: cost %.6g, identity %.6g\n", (long long)N,
           g_size, ot, id);
  cf_cfm_ot_release(&world);
  free(x0);
  free(x1);
  free(ref1);
  free(my1);
  free(g0);
  free(g1);
  free(grp);
  free(refp);
  free(myp);
  free(rows);
  free(gp);
}

static void test_ot_groups(void) {
  int64_t lo[65], N = 29;
  for (int r = 0; r <= g_size; r++)
    lo[r] = N * r / g_size;
  ot_groups_case(N, 3, lo);
  for (int r = 0; r < g_size; r++) /* everything on the last rank */
    lo[r] = 0;
  lo[g_size] = 17;
  ot_groups_case(17, 2, lo);
}

/* ---- ODE integration ---- */

struct rot {
  double a, b; /* A = [[a, -b], [b, a]] */
};
static cf_status rhs_rot(void *ctx, double t, int64_t n, const double *x, double *f) {
  const struct rot *r = ctx;
  for (int64_t i = 0; i < n; i += 2) {
    f[i] = r->a * x[i] - r->b * x[i + 1];
    f[i + 1] = r->b * x[i] + r->a * x[i + 1];
  }
  return CF_OK;
}
static cf_status rhs_tx(void *ctx, double t, int64_t n, const double *x, double *f) {
  for (int64_t i = 0; i < n; i++)
    f[i] = 2.0 * t * x[i];
  return CF_OK;
}
static cf_status rhs_fail(void *ctx, double t, int64_t n, const double *x, double *f) {
  int *calls = ctx;
  if (++*calls == 3) return cf_err(CF_ENUM, "test right-hand side fails on call 3");
  for (int64_t i = 0; i < n; i++)
    f[i] = -x[i];
  return CF_OK;
}

/* Max error of the rotation-decay ODE integrated with tolerance tol against expm(A) x0. */
static double rot_error(double tol, struct cf_ode_stats *st) {
  struct rot r = {-0.5, 2.0};
  double x[10], x0[10];
  for (int i = 0; i < 10; i++)
    x[i] = x0[i] = 0.3 * i - 1.0;
  struct cf_ode_opts o;
  cf_ode_opts_default(&o);
  o.atol = o.rtol = tol;
  EXPECT_OK(cf_ode_solve(rhs_rot, &r, 10, x, &o, st), "ode rotation");
  double ea = exp(r.a), c = cos(r.b), s = sin(r.b), err = 0;
  for (int i = 0; i < 10; i += 2) {
    double w0 = ea * (c * x0[i] - s * x0[i + 1]), w1 = ea * (s * x0[i] + c * x0[i + 1]);
    err = fmax(err, fmax(fabs(x[i] - w0), fabs(x[i + 1] - w1)));
  }
  return err;
}

static void test_ode(void) {
  struct cf_ode_stats st;
  double e4 = rot_error(1e-4, &st);
  printf("ode: rotation, tol 1e-4: error %.2e, %lld steps, %lld rejected, %lld evaluations, %s\n",
         e4, (long long)st.steps, (long long)st.rejected, (long long)st.nfe, st.type);
  EXPECT(e4 < 1e-3, "rotation at tolerance 1e-4: error %g", e4);
  EXPECT(strcmp(st.type, "rk/5dp") == 0, "default scheme %s, expected rk/5dp", st.type);
  EXPECT(st.t_final == 1.0, "final time %.17g", st.t_final);
  EXPECT(st.steps >= 3 && st.steps < 100 && st.nfe >= 6 * st.steps, "steps %lld, evaluations %lld",
         (long long)st.steps, (long long)st.nfe);
  int64_t nfe4 = st.nfe;
  double e9 = rot_error(1e-9, &st);
  printf("ode: rotation, tol 1e-9: error %.2e, %lld steps, %lld evaluations\n", e9,
         (long long)st.steps, (long long)st.nfe);
  EXPECT(e9 < 1e-7, "rotation at tolerance 1e-9: error %g", e9);
  EXPECT(st.nfe > nfe4, "a tighter tolerance took no more evaluations (%lld vs %lld)",
         (long long)st.nfe, (long long)nfe4);

  /* time enters the right-hand side: dx/dt = 2 t x, x(1) = e x(0) */
  double y[3] = {1.0, -2.0, 0.5};
  EXPECT_OK(cf_ode_solve(rhs_tx, NULL, 3, y, NULL, &st), "ode 2tx");
  double ety = 0;
  for (int i = 0; i < 3; i++)
    ety = fmax(ety, fabs(y[i] / (i == 0 ? 1.0 : i == 1 ? -2.0 : 0.5) - exp(1.0)));
  EXPECT(ety < 1e-3, "dx/dt = 2tx: relative error %g", ety);

  /* options pick the scheme: forward Euler, fixed steps of 0.02 */
  EXPECT(PetscOptionsSetValue(NULL, "-cfmtest_ts_type", "euler") == 0, "set option");
  EXPECT(PetscOptionsSetValue(NULL, "-cfmtest_ts_adapt_type", "none") == 0, "set option");
  EXPECT(PetscOptionsSetValue(NULL, "-cfmtest_ts_dt", "0.02") == 0, "set option");
  struct cf_ode_opts o;
  cf_ode_opts_default(&o);
  o.prefix = "cfmtest_";
  double z[2] = {1.0, 0.0};
  struct rot r = {-0.5, 2.0};
  EXPECT_OK(cf_ode_solve(rhs_rot, &r, 2, z, &o, &st), "ode euler");
  printf("ode: options: %s, %lld steps, %lld evaluations\n", st.type, (long long)st.steps,
         (long long)st.nfe);
  EXPECT(strcmp(st.type, "euler") == 0 && st.steps == 50 && st.nfe == 50,
         "options: %s with %lld steps and %lld evaluations, expected euler, 50, 50", st.type,
         (long long)st.steps, (long long)st.nfe);
  double ez = fabs(z[0] - exp(-0.5) * cos(2.0));
  EXPECT(ez > 1e-3 && ez < 0.1, "euler error %g not first-order sized", ez);
  PetscOptionsClearValue(NULL, "-cfmtest_ts_type");
  PetscOptionsClearValue(NULL, "-cfmtest_ts_adapt_type");
  PetscOptionsClearValue(NULL, "-cfmtest_ts_dt");

  /* a failing right-hand side comes back as its own status and message */
  int calls = 0;
  double w[2] = {1, 1};
  PetscPushErrorHandler(PetscReturnErrorHandler, NULL);
  EXPECT_FAIL_STATUS(cf_ode_solve(rhs_fail, &calls, 2, w, NULL, NULL), CF_ENUM, "fails on call 3",
                     "failing rhs");
  /* a step limit too small is reported with the options to change */
  o.prefix = "cfm_";
  o.max_steps = 2;
  EXPECT_FAIL_STATUS(cf_ode_solve(rhs_rot, &r, 2, z, &o, NULL), CF_EPETSC, "ts_max_steps",
                     "step limit");
  PetscPopErrorHandler();
  cf_ode_opts_default(&o);
  o.t1 = 0;
  EXPECT_FAIL(cf_ode_solve(rhs_rot, &r, 2, z, &o, NULL), "end time", "t1 <= t0");

  /* the network's flow: cf_cfm_sample against RK4 on cf_cfm_forward (400 steps) */
  struct cf_cfm_cfg c = {.D = 2, .width = 16, .layers = 2, .time_freqs = 3};
  struct cf_cfm m;
  EXPECT_OK(cf_cfm_init(&m, &c, 3), "init"); /* 7 points: chunks of 3, 3, 1 */
  if (m.impl == NULL) return;
  cf_cfm_init_weights(&m, 21);
  float x0[14], xs[14], xt[14];
  normals(4, CF_RNG_X0, x0, 14, 1.0f);
  double ref[14], k[4][14], tmp[14];
  for (int i = 0; i < 14; i++)
    ref[i] = x0[i];
  const int nst = 400;
  const double hh = 1.0 / nst;
  for (int s = 0; s < nst; s++) {
    for (int q = 0; q < 4; q++) {
      double tq = s * hh + (q == 0 ? 0 : q == 3 ? hh : hh / 2);
      for (int i = 0; i < 14; i++)
        tmp[i] = ref[i] + (q == 0 ? 0 : (q == 3 ? hh : hh / 2) * k[q - 1][i]);
      for (int p = 0; p < 7; p += 3) {
        int nb = 7 - p < 3 ? 7 - p : 3;
        float xf[6], tf[3], vf[6];
        for (int i = 0; i < 2 * nb; i++)
          xf[i] = (float)tmp[2 * p + i];
        for (int i = 0; i < nb; i++)
          tf[i] = (float)tq;
        EXPECT_OK(cf_cfm_forward(&m, nb, xf, tf, vf), "rk4 forward");
        for (int i = 0; i < 2 * nb; i++)
          k[q][2 * p + i] = vf[i];
      }
    }
    for (int i = 0; i < 14; i++)
      ref[i] += hh / 6 * (k[0][i] + 2 * k[1][i] + 2 * k[2][i] + k[3][i]);
  }
  memcpy(xs, x0, sizeof xs);
  EXPECT_OK(cf_cfm_sample(&m, 7, xs, NULL, &st), "sample");
  cf_ode_opts_default(&o);
  o.atol = o.rtol = 1e-8;
  memcpy(xt, x0, sizeof xt);
  struct cf_ode_stats st8;
  EXPECT_OK(cf_cfm_sample(&m, 7, xt, &o, &st8), "sample tight");
  double es = 0, et = 0, mv = 0;
  for (int i = 0; i < 14; i++) {
    es = fmax(es, fabs(xs[i] - ref[i]));
    et = fmax(et, fabs(xt[i] - ref[i]));
    mv = fmax(mv, fabs(ref[i] - x0[i]));
  }
  printf("ode: network flow vs rk4: tol 1e-4 error %.2e (%lld evaluations), tol 1e-8 error %.2e "
         "(%lld), displacement %.3g\n",
         es, (long long)st.nfe, et, (long long)st8.nfe, mv);
  EXPECT(mv > 0.05, "the random network barely moves the points (%g)", mv);
  EXPECT(es < 1e-2, "sample at tolerance 1e-4 differs from rk4 by %g", es);
  EXPECT(et < 2e-5, "sample at tolerance 1e-8 differs from rk4 by %g", et);
  cf_cfm_release(&m);
}

/* ---- training smoke ---- */

struct adam {
  float *m, *v;
  int t;
};
static void adam_step(struct adam *a, float *p, const float *g, size_t n, float lr) {
  a->t++;
  float b1 = 0.9f, b2 = 0.999f;
  float c1 = 1 - powf(b1, (float)a->t), c2 = 1 - powf(b2, (float)a->t);
  for (size_t i = 0; i < n; i++) {
    a->m[i] = b1 * a->m[i] + (1 - b1) * g[i];
    a->v[i] = b2 * a->v[i] + (1 - b2) * g[i] * g[i];
    p[i] -= lr * (a->m[i] / c1) / (sqrtf(a->v[i] / c2) + 1e-8f);
  }
}

/* Train I-CFM (ot = 0) or OT-CFM (ot = 1) on N(0, I) -> N(mu, 0.25 I) in 2-D; returns the mean
 * loss of the last 50 steps. */
static double smoke(int ot, double *first, double mean[2], double sd[2], int64_t *nfe) {
  const int64_t D = 2, B = ot ? 64 : 128, steps = ot ? 600 : 800, npts = 4096, ns = 1000;
  const float mu[2] = {2.5f, -1.5f};
  float *data = cf_test_floats((size_t)(npts * D));
  normals(99, CF_RNG_DATA, data, (size_t)(npts * D), 0.5f);
  for (int64_t i = 0; i < npts; i++) {
    data[i * D] += mu[0];
    data[i * D + 1] += mu[1];
  }
  struct cf_dist src, tgt;
  EXPECT_OK(cf_dist_by_name(&src, "normal", D, "-data_source"), "src");
  cf_dist_points(&tgt, data, npts, D);
  struct cf_cfm_cfg c = {.D = D, .width = 32, .layers = 2, .time_freqs = 4};
  struct cf_cfm m;
  struct cf_cfm_ot w;
  EXPECT_OK(cf_cfm_init(&m, &c, B), "smoke init");
  EXPECT_OK(cf_cfm_ot_init(&w, MPI_COMM_SELF, B, D), "smoke ot init");
  if (m.impl == NULL || w.cost == NULL) return NAN;
  cf_cfm_init_weights(&m, 5);
  struct adam ad = {cf_test_floats(m.n_params), cf_test_floats(m.n_params), 0};
  float *x0 = cf_test_floats((size_t)(B * D)), *x1 = cf_test_floats((size_t)(B * D));
  float *eps = cf_test_floats((size_t)(B * D)), *xt = cf_test_floats((size_t)(B * D));
  float *u = cf_test_floats((size_t)(B * D)), t[128];
  double head = 0, tail = 0;
  for (int64_t s = 0; s < steps; s++) {
    EXPECT_OK(cf_cfm_draw(&src, &tgt, D, 1234, (uint32_t)s, (uint64_t)(s * B), B, x0, x1, t, eps),
              "smoke draw");
    if (ot) EXPECT_OK(cf_cfm_ot_couple(&w, B, x0, x1, NULL, NULL, NULL), "smoke couple");
    cf_cfm_path(B, D, x0, x1, t, eps, 0.01, xt, u);
    double loss = 0;
    cf_cfm_zero_grad(&m);
    EXPECT_OK(cf_cfm_loss_grad(&m, B, xt, t, u, (double)B, &loss), "smoke loss");
    adam_step(&ad, m.params, m.grads, m.n_params, 5e-3f * (1.0f - 0.9f * (float)s / (float)steps));
    if (s < 20) head += loss / 20;
    if (s >= steps - 50) tail += loss / 50;
  }
  /* sample from fresh source points */
  float *xs = cf_test_floats((size_t)(ns * D));
  for (int64_t i = 0; i < ns; i++) {
    struct cf_rng r = {.seed = 4321, .domain = CF_RNG_SAMPLE, .step = 0, .index = (uint64_t)i};
    cf_dist_draw(&src, &r, xs + i * D);
  }
  struct cf_ode_stats st;
  EXPECT_OK(cf_cfm_sample(&m, ns, xs, NULL, &st), "smoke sample");
  for (int d = 0; d < 2; d++) {
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < ns; i++) {
      s1 += xs[i * D + d];
      s2 += (double)xs[i * D + d] * xs[i * D + d];
    }
    mean[d] = s1 / ns;
    sd[d] = sqrt(fmax(0, s2 / ns - mean[d] * mean[d]));
  }
  *first = head;
  *nfe = st.nfe;
  free(xs);
  free(x0);
  free(x1);
  free(eps);
  free(xt);
  free(u);
  free(ad.m);
  free(ad.v);
  free(data);
  cf_cfm_ot_release(&w);
  cf_cfm_release(&m);
  return tail;
}

static void test_smoke(void) {
  const char *name[2] = {"I-CFM", "OT-CFM"};
  double last[2];
  for (int ot = 0; ot < 2; ot++) {
    double first = 0, mean[2], sd[2];
    int64_t nfe = 0;
    last[ot] = smoke(ot, &first, mean, sd, &nfe);
    printf("smoke %s: loss %.3f -> %.3f; samples mean (%.3f, %.3f) std (%.3f, %.3f); %lld "
           "evaluations\n",
           name[ot], first, last[ot], mean[0], mean[1], sd[0], sd[1], (long long)nfe);
    EXPECT(last[ot] < 0.5 * first, "%s: loss %g -> %g does not fall", name[ot], first, last[ot]);
    EXPECT(fabs(mean[0] - 2.5) < 0.15 && fabs(mean[1] + 1.5) < 0.15,
           "%s: sampled mean (%g, %g), target (2.5, -1.5)", name[ot], mean[0], mean[1]);
    EXPECT(fabs(sd[0] - 0.5) < 0.15 && fabs(sd[1] - 0.5) < 0.15,
           "%s: sampled std (%g, %g), target 0.5", name[ot], sd[0], sd[1]);
  }
  /* OT pairs make the regression target nearly deterministic */
  EXPECT(last[1] < 0.5 * last[0], "OT-CFM loss %g not well below I-CFM's %g", last[1], last[0]);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size > 1) cf_test_rank = g_rank;
  const char *mode = argc > 1 ? argv[1] : "all";
  int one = 1;
  char *pargv0[2] = {argv[0], NULL}, **pargv = pargv0;
  if (PetscInitialize(&one, &pargv, NULL, NULL) != 0) {
    printf("FAIL: PetscInitialize\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  if (g_size > 64) {
    printf("FAIL: at most 64 ranks\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  int all = strcmp(mode, "all") == 0;
  if (all) {
    test_layout();
    test_gradient();
    test_pairs();
    test_cond();
  }
  test_ot();
  test_ot_groups();
  if (all) {
    test_ode();
    test_smoke();
  }
  int fails = cf_test_fails, total = 0;
  MPI_Allreduce(&fails, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  cf_test_fails = total;
  int rc = cf_test_done("test_cfm");
  PetscFinalize();
  MPI_Finalize();
  return rc;
}
