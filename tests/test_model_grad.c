/* test_model_grad.c: the model's kernels and full loss against independent references.
 *   - each kernel's forward against a naive double-precision loop (linear, LayerNorm with and
 *     without affine, GELU, rotary causal attention) and its causality;
 *   - central-difference gradient checks of each kernel on its own (linear, LayerNorm with
 *     and without affine, GELU, the fc -> LN -> ReLU -> dropout -> fc MLP, rotary causal
 *     attention across more than one query block, one transformer block);
 *   - the full loss w.r.t. every parameter tensor (a handful of coordinates each) for the
 *     gauss, vae, gmm, fm and cvae heads, with and without dropout (fixed key), with clamped
 *     log-stds, with a text prompt in front of the tokens (prompt.wte included), and every
 *     loss field recomputed from the saved head activations;
 *   - the fm / cvae training noise drawn inside the forward is the documented counter-RNG
 *     draw (cf_head_train_noise) and does not depend on batching;
 *   - a deliberately wrong gradient is caught (the check can fail), perturbing weights
 *     changes the loss, dropout masks are independent of batching, configuration errors
 *     name their option, and forward / backward allocate nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/model.h"
#include "calmflow/rng.h"
#include "cf_test.h"
#include "model/layers.h"

static uint64_t g_stream;

/* x = shift + scale * N(0, 1), a fresh deterministic stream per call. */
static void randn(float *x, size_t n, float scale, float shift) {
  struct cf_rng r = {.seed = 20240611, .domain = CF_RNG_DATA, .step = 0, .index = g_stream++};
  cf_rng_normal(&r, 0, x, n);
  for (size_t i = 0; i < n; i++)
    x[i] = shift + scale * x[i];
}

static double wsum(const float *w, const float *y, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)w[i] * (double)y[i];
  return s;
}

static double maxdiff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    m = d > m ? d : m;
  }
  return m;
}

/* ---- the central-difference checker ---- */

typedef double (*lossfn)(void *ctx);

static double central(lossfn f, void *ctx, float *x, size_t i, double h) {
  float xi = x[i];
  x[i] = (float)(xi + h);
  double hp = (double)x[i] - xi, fp = f(ctx);
  x[i] = (float)(xi - h);
  double hm = xi - (double)x[i], fm = f(ctx);
  x[i] = xi;
  return (fp - fm) / (hp + hm);
}

struct fdopt {
  int ncoord; /* coordinates to check (all when the tensor is smaller) */
  double h;   /* step */
  double tol; /* relative error allowed per coordinate and over the checked set */
  int kinks;  /* skip coordinates whose difference quotient changes between h and 3h
                 (a ReLU or clamp kink within reach) */
  int quiet;  /* no report line (negative controls) */
};

/* Directional derivative along the analytic gradient: (f(x + h u) - f(x - h u)) / (2h) with
 * u = an / |an| should be |an|. Uses every coordinate at once, so float round-off in f
 * matters far less than for a single coordinate. Returns the relative error. */
static double fd_direction(lossfn f, void *ctx, float *x, size_t n, const float *an, double h) {
  double nrm = 0;
  for (size_t i = 0; i < n; i++)
    nrm += (double)an[i] * an[i];
  nrm = sqrt(nrm);
  if (nrm == 0) return 1.0;
  float *x0 = malloc(n * sizeof(float));
  memcpy(x0, x, n * sizeof(float));
  double step = 0;
  for (size_t i = 0; i < n; i++) {
    x[i] = (float)(x0[i] + h * an[i] / nrm);
    step += (x[i] - (double)x0[i]) * an[i] / nrm;
  }
  double fp = f(ctx);
  for (size_t i = 0; i < n; i++) {
    x[i] = (float)(x0[i] - h * an[i] / nrm);
    step += ((double)x0[i] - x[i]) * an[i] / nrm;
  }
  double fm = f(ctx);
  memcpy(x, x0, n * sizeof(float));
  free(x0);
  return fabs((fp - fm) / step - nrm) / nrm;
}

/* Compare the analytic gradient an (n) of f w.r.t. x (n) with central differences: at up to
 * o.ncoord coordinates (always including the largest), each within o.tol of
 * |an_i| + 0.1 max|an|, together within o.tol in relative norm, and along the gradient's
 * direction within o.tol / 3. Returns 1 when it agrees; *moved = whether some single
 * perturbation changed the loss. */
static int fd_check(const char *what, lossfn f, void *ctx, float *x, size_t n, const float *an,
                    struct fdopt o, int *moved) {
  size_t idx[64];
  int k = 0;
  size_t imax = 0;
  for (size_t i = 1; i < n; i++)
    if (fabsf(an[i]) > fabsf(an[imax])) imax = i;
  if (n <= (size_t)o.ncoord) {
    for (size_t i = 0; i < n; i++)
      idx[k++] = i;
  } else {
    idx[k++] = imax;
    for (int j = 1; j < o.ncoord; j++)
      idx[k++] = (size_t)(((uint64_t)j * 2654435761u + 12345u) % n);
  }
  double amax = fabs(an[imax]);
  double se = 0, sa = 0, worst = 0;
  int skipped = 0, bad = 0, mv = 0;
  for (int j = 0; j < k; j++) {
    size_t i = idx[j];
    double base = f(ctx);
    float xi = x[i];
    x[i] = (float)(xi + o.h);
    if (f(ctx) != base) mv = 1;
    x[i] = xi;
    double fd = central(f, ctx, x, i, o.h);
    if (o.kinks) {
      double fd2 = central(f, ctx, x, i, 3 * o.h);
      if (fabs(fd - fd2) > o.tol * (fmax(fabs(fd), fabs(fd2)) + 0.1 * amax) + 1e-9) {
        skipped++;
        continue;
      }
    }
    double err = fabs(fd - an[i]), scale = fabs(an[i]) + 0.1 * amax + 1e-12;
    worst = fmax(worst, err / scale);
    if (err > o.tol * scale) bad++;
    se += err * err;
    sa += (double)an[i] * an[i];
  }
  double rel = sqrt(se) / fmax(sqrt(sa), 1e-30);
  double dir = fd_direction(f, ctx, x, n, an, o.h);
  int ok = bad == 0 && rel <= o.tol && dir <= o.tol / 3 && skipped <= k / 2 && amax > 0;
  if (moved != NULL) *moved = mv;
  if (!o.quiet)
    printf("  %-28s n=%-5zu checked %2d skipped %d rel.err coords %.1e worst %.1e direction "
           "%.1e |g|max %.1e%s\n",
           what, n, k - skipped, skipped, rel, worst, dir, amax, ok ? "" : "  <-- FAIL");
  return ok;
}

/* ---- kernel contexts ---- */

struct lin_ctx {
  int64_t M, out, in;
  float *x, *W, *b, *y, *w;
};
static double lin_loss(void *p) {
  struct lin_ctx *c = p;
  cf_linear_fwd(c->x, c->M, c->W, c->b, c->out, c->in, 0, c->y);
  return wsum(c->w, c->y, (size_t)(c->M * c->out));
}

static void test_linear(void) {
  printf("linear\n");
  struct lin_ctx c = {.M = 5, .out = 4, .in = 7};
  size_t nx = 35, nw = 28, ny = 20;
  c.x = cf_test_floats(nx), c.W = cf_test_floats(nw), c.b = cf_test_floats(4),
  c.y = cf_test_floats(ny), c.w = cf_test_floats(ny);
  randn(c.x, nx, 1, 0), randn(c.W, nw, 0.5f, 0), randn(c.b, 4, 0.5f, 0), randn(c.w, ny, 1, 0);
  /* forward against a naive loop, and the accumulate flag */
  lin_loss(&c);
  double err = 0;
  for (int64_t i = 0; i < c.M; i++)
    for (int64_t o = 0; o < c.out; o++) {
      double s = c.b[o];
      for (int64_t k = 0; k < c.in; k++)
        s += (double)c.x[i * c.in + k] * c.W[o * c.in + k];
      err = fmax(err, fabs(s - c.y[i * c.out + o]));
    }
  EXPECT(err < 1e-5, "linear forward differs from the naive product by %g", err);
  float *y2 = cf_test_floats(ny), *y0 = cf_test_floats(ny);
  randn(y0, ny, 1, 0);
  memcpy(y2, y0, ny * sizeof(float));
  cf_linear_fwd(c.x, c.M, c.W, c.b, c.out, c.in, 1, y2);
  for (size_t i = 0; i < ny; i++)
    y2[i] -= y0[i];
  EXPECT(maxdiff(y2, c.y, ny) < 1e-5, "linear accumulate differs by %g", maxdiff(y2, c.y, ny));
  /* backward: gradients are added to what is there */
  float *gW = cf_test_floats(nw), *gb = cf_test_floats(4), *dx = cf_test_floats(nx),
        *c0 = cf_test_floats(nw), *c1 = cf_test_floats(4);
  randn(c0, nw, 1, 0), randn(c1, 4, 1, 0);
  memcpy(gW, c0, nw * sizeof(float));
  memcpy(gb, c1, 4 * sizeof(float));
  cf_linear_bwd(c.x, c.w, c.M, c.W, c.out, c.in, gW, gb, dx, 0);
  for (size_t i = 0; i < nw; i++)
    gW[i] -= c0[i];
  for (size_t i = 0; i < 4; i++)
    gb[i] -= c1[i];
  struct fdopt o = {.ncoord = 40, .h = 1e-2, .tol = 1e-3};
  EXPECT(fd_check("linear dx", lin_loss, &c, c.x, nx, dx, o, NULL), "linear dx");
  EXPECT(fd_check("linear dW", lin_loss, &c, c.W, nw, gW, o, NULL), "linear dW");
  EXPECT(fd_check("linear db", lin_loss, &c, c.b, 4, gb, o, NULL), "linear db");
  float *dx2 = cf_test_floats(nx), *c2 = cf_test_floats(nx);
  randn(c2, nx, 1, 0);
  memcpy(dx2, c2, nx * sizeof(float));
  cf_linear_bwd(c.x, c.w, c.M, c.W, c.out, c.in, NULL, NULL, dx2, 1);
  for (size_t i = 0; i < nx; i++)
    dx2[i] -= c2[i];
  EXPECT(maxdiff(dx2, dx, nx) < 1e-5, "linear backward accumulate differs");
  free(c.x), free(c.W), free(c.b), free(c.y), free(c.w), free(y2), free(y0);
  free(gW), free(gb), free(dx), free(c0), free(c1), free(dx2), free(c2);
}

struct ln_ctx {
  int64_t M, n;
  float *x, *g, *b, *xh, *rs, *y, *w;
};
static double ln_loss(void *p) {
  struct ln_ctx *c = p;
  cf_layernorm_fwd(c->x, c->M, c->n, c->g, c->b, c->xh, c->rs, c->y);
  return wsum(c->w, c->y, (size_t)(c->M * c->n));
}

static void test_layernorm(int affine) {
  printf("layernorm %s\n", affine ? "with affine" : "without affine");
  struct ln_ctx c = {.M = 4, .n = 9};
  size_t nx = 36;
  c.x = cf_test_floats(nx), c.xh = cf_test_floats(nx), c.rs = cf_test_floats(4),
  c.y = cf_test_floats(nx), c.w = cf_test_floats(nx);
  randn(c.x, nx, 2, 0.7f), randn(c.w, nx, 1, 0);
  if (affine) {
    c.g = cf_test_floats(9), c.b = cf_test_floats(9);
    randn(c.g, 9, 0.3f, 1), randn(c.b, 9, 0.3f, 0);
  }
  ln_loss(&c);
  double err = 0;
  for (int64_t i = 0; i < c.M; i++) {
    double mu = 0, var = 0;
    for (int64_t k = 0; k < c.n; k++)
      mu += c.x[i * c.n + k] / (double)c.n;
    for (int64_t k = 0; k < c.n; k++)
      var += (c.x[i * c.n + k] - mu) * (c.x[i * c.n + k] - mu) / (double)c.n;
    for (int64_t k = 0; k < c.n; k++) {
      double v = (c.x[i * c.n + k] - mu) / sqrt(var + 1e-5);
      if (affine) v = v * c.g[k] + c.b[k];
      err = fmax(err, fabs(v - c.y[i * c.n + k]));
    }
  }
  EXPECT(err < 1e-5, "layernorm forward differs from the formula by %g", err);
  float *dx = cf_test_floats(nx), *gg = cf_test_floats(9), *gb = cf_test_floats(9);
  cf_layernorm_bwd(c.w, c.xh, c.rs, c.M, c.n, c.g, affine ? gg : NULL, affine ? gb : NULL, dx, 0);
  struct fdopt o = {.ncoord = 40, .h = 1e-2, .tol = 1e-3};
  EXPECT(fd_check("layernorm dx", ln_loss, &c, c.x, nx, dx, o, NULL), "layernorm dx");
  if (affine) {
    EXPECT(fd_check("layernorm dgain", ln_loss, &c, c.g, 9, gg, o, NULL), "layernorm dgain");
    EXPECT(fd_check("layernorm dbias", ln_loss, &c, c.b, 9, gb, o, NULL), "layernorm dbias");
  }
  free(c.x), free(c.xh), free(c.rs), free(c.y), free(c.w), free(c.g), free(c.b);
  free(dx), free(gg), free(gb);
}

struct gelu_ctx {
  size_t n;
  float *x, *y, *w, *cdf;
};
static double gelu_loss(void *p) {
  struct gelu_ctx *c = p;
  cf_gelu_fwd(c->x, c->y, c->cdf, c->n);
  return wsum(c->w, c->y, c->n);
}

static void test_gelu(void) {
  printf("gelu\n");
  struct gelu_ctx c = {.n = 64};
  c.x = cf_test_floats(64), c.y = cf_test_floats(64), c.w = cf_test_floats(64),
  c.cdf = cf_test_floats(64);
  randn(c.x, 64, 2, 0), randn(c.w, 64, 1, 0);
  gelu_loss(&c);
  double err = 0;
  for (size_t i = 0; i < c.n; i++)
    err = fmax(err, fabs(0.5 * c.x[i] * (1 + erf(c.x[i] / sqrt(2.0))) - c.y[i]));
  EXPECT(err < 1e-6, "gelu forward differs from the erf formula by %g", err);
  float *dx = cf_test_floats(64), *dx2 = cf_test_floats(64);
  cf_gelu_bwd(c.x, c.cdf, c.w, dx, c.n);
  cf_gelu_bwd(c.x, NULL, c.w, dx2, c.n);
  EXPECT(maxdiff(dx, dx2, 64) < 1e-6, "gelu backward with and without the saved cdf differ");
  struct fdopt o = {.ncoord = 64, .h = 1e-2, .tol = 1e-3};
  EXPECT(fd_check("gelu dx", gelu_loss, &c, c.x, c.n, dx, o, NULL), "gelu dx");
  free(c.x), free(c.y), free(c.w), free(c.cdf), free(dx), free(dx2);
}

/* fc1 -> LN (no affine) -> ReLU -> dropout -> fc2 */
struct mlp_ctx {
  int64_t M, in, hid, out;
  float *x, *W1, *b1, *W2, *b2, *mask, *xh, *rs, *d, *y, *w;
};
static double mlp_loss(void *p) {
  struct mlp_ctx *c = p;
  cf_linear_fwd(c->x, c->M, c->W1, c->b1, c->hid, c->in, 0, c->xh);
  cf_lnrelu_fwd(c->xh, c->rs, c->mask, c->M, c->hid, c->d);
  cf_linear_fwd(c->d, c->M, c->W2, c->b2, c->out, c->hid, 0, c->y);
  return wsum(c->w, c->y, (size_t)(c->M * c->out));
}

static void test_mlp(int dropout) {
  printf("relu+LN MLP %s\n", dropout ? "with dropout" : "without dropout");
  struct mlp_ctx c = {.M = 6, .in = 5, .hid = 8, .out = 3};
  size_t nx = 30, n1 = 40, nh = 48, n2 = 24, ny = 18;
  c.x = cf_test_floats(nx), c.W1 = cf_test_floats(n1), c.b1 = cf_test_floats(8),
  c.W2 = cf_test_floats(n2), c.b2 = cf_test_floats(3);
  c.xh = cf_test_floats(nh), c.rs = cf_test_floats(6), c.d = cf_test_floats(nh),
  c.y = cf_test_floats(ny), c.w = cf_test_floats(ny);
  randn(c.x, nx, 1, 0), randn(c.W1, n1, 0.5f, 0), randn(c.b1, 8, 0.5f, 0);
  randn(c.W2, n2, 0.5f, 0), randn(c.b2, 3, 0.5f, 0), randn(c.w, ny, 1, 0);
  if (dropout) {
    c.mask = cf_test_floats(nh);
    struct cf_dropkey dk = {.seed = 5, .step = 2, .seq0 = 3};
    cf_dropout_mask(c.mask, 1, c.M, c.hid, 0.3f, &dk, 1);
    int zeros = 0, scaled = 0;
    for (size_t i = 0; i < nh; i++) {
      zeros += c.mask[i] == 0.0f;
      scaled += fabsf(c.mask[i] - 1.0f / 0.7f) < 1e-6f;
    }
    EXPECT(zeros > 0 && zeros + scaled == (int)nh, "dropout mask: %d zeros %d kept of %zu", zeros,
           scaled, nh);
    /* the mask is the counter RNG's element e of (seed, DROPOUT + site, step, seq) */
    struct cf_rng r = {.seed = 5, .domain = CF_RNG_DROPOUT + 1, .step = 2, .index = 3};
    float u[48];
    cf_rng_uniform(&r, 0, u, 48);
    int agree = 1;
    for (size_t i = 0; i < nh; i++)
      agree &= (u[i] < 0.3f) == (c.mask[i] == 0.0f);
    EXPECT(agree, "dropout mask is not the documented counter-RNG draw");
  }
  /* keep every ReLU input at least 0.02 from its kink (redraw x otherwise) */
  for (int tries = 0;; tries++) {
    mlp_loss(&c);
    double mn = 1e9;
    for (size_t i = 0; i < nh; i++)
      mn = fmin(mn, fabs(c.xh[i]));
    if (mn > 0.02 || tries == 100) break;
    randn(c.x, nx, 1, 0);
  }
  float *gW1 = cf_test_floats(n1), *gb1 = cf_test_floats(8), *gW2 = cf_test_floats(n2),
        *gb2 = cf_test_floats(3), *gd = cf_test_floats(nh);
  float *dx = cf_test_floats(nx);
  cf_linear_bwd(c.d, c.w, c.M, c.W2, c.out, c.hid, gW2, gb2, gd, 0);
  cf_lnrelu_bwd(gd, c.xh, c.rs, c.mask, c.M, c.hid, gd);
  cf_linear_bwd(c.x, gd, c.M, c.W1, c.hid, c.in, gW1, gb1, dx, 0);
  struct fdopt o = {.ncoord = 40, .h = 1e-3, .tol = 1e-2, .kinks = 1};
  EXPECT(fd_check("mlp dx", mlp_loss, &c, c.x, nx, dx, o, NULL), "mlp dx");
  EXPECT(fd_check("mlp dW1", mlp_loss, &c, c.W1, n1, gW1, o, NULL), "mlp dW1");
  EXPECT(fd_check("mlp db1", mlp_loss, &c, c.b1, 8, gb1, o, NULL), "mlp db1");
  EXPECT(fd_check("mlp dW2", mlp_loss, &c, c.W2, n2, gW2, o, NULL), "mlp dW2");
  EXPECT(fd_check("mlp db2", mlp_loss, &c, c.b2, 3, gb2, o, NULL), "mlp db2");
  free(c.x), free(c.W1), free(c.b1), free(c.W2), free(c.b2), free(c.mask), free(c.xh);
  free(c.rs), free(c.d), free(c.y), free(c.w), free(gW1), free(gb1), free(gW2), free(gb2);
  free(gd), free(dx);
}

/* rotary + causal attention on a fused qkv */
struct attn_ctx {
  int64_t B, T, heads, dh, rot, win;
  float *pre, *qkv, *probs, *out, *w, *cs, *sn;
};
static void attn_run(struct attn_ctx *c) {
  int64_t H3 = 3 * c->heads * c->dh;
  memcpy(c->qkv, c->pre, (size_t)(c->B * c->T * H3) * sizeof(float));
  for (int64_t b = 0; b < c->B; b++)
    cf_rotary_apply(c->qkv + b * c->T * H3, c->T, H3, c->heads, c->dh, c->rot, c->cs, c->sn, 0, 0);
  cf_attn_fwd(c->qkv, c->B, c->T, c->heads, c->dh, c->win, c->probs, c->out);
}
static double attn_loss(void *p) {
  struct attn_ctx *c = p;
  attn_run(c);
  return wsum(c->w, c->out, (size_t)(c->B * c->T * c->heads * c->dh));
}

/* Naive double-precision rotary attention for sequence b, head h: out (T, dh). */
static void attn_naive(const struct attn_ctx *c, int64_t b, int64_t h, double base, double *out) {
  int64_t T = c->T, dh = c->dh, H3 = 3 * c->heads * dh, half = c->rot / 2;
  double *q = calloc((size_t)(T * dh), sizeof(double)),
         *k = calloc((size_t)(T * dh), sizeof(double));
  double *s = calloc((size_t)T, sizeof(double));
  for (int64_t t = 0; t < T; t++) {
    const float *row = c->pre + (b * T + t) * H3 + h * 3 * dh;
    for (int64_t i = 0; i < dh; i++) {
      q[t * dh + i] = row[i];
      k[t * dh + i] = row[dh + i];
    }
    for (int64_t i = 0; i < half; i++) {
      double th = (double)t * pow(base, -2.0 * (double)i / (double)c->rot);
      double cs = cos(th), sn = sin(th);
      double q0 = row[i], q1 = row[i + half], k0 = row[dh + i], k1 = row[dh + i + half];
      q[t * dh + i] = q0 * cs - q1 * sn;
      q[t * dh + i + half] = q1 * cs + q0 * sn;
      k[t * dh + i] = k0 * cs - k1 * sn;
      k[t * dh + i + half] = k1 * cs + k0 * sn;
    }
  }
  for (int64_t t = 0; t < T; t++) {
    double mx = -1e300, sum = 0;
    int64_t j0 = c->win > 0 ? (t / c->win) * c->win : 0; /* the window, written out */
    for (int64_t j = j0; j <= t; j++) {
      double d = 0;
      for (int64_t i = 0; i < dh; i++)
        d += q[t * dh + i] * k[j * dh + i];
      s[j] = d / sqrt((double)dh);
      mx = fmax(mx, s[j]);
    }
    for (int64_t j = j0; j <= t; j++)
      sum += (s[j] = exp(s[j] - mx));
    for (int64_t i = 0; i < dh; i++) {
      double o = 0;
      for (int64_t j = j0; j <= t; j++)
        o += s[j] / sum * c->pre[(b * T + j) * H3 + h * 3 * dh + 2 * dh + i];
      out[t * dh + i] = o;
    }
  }
  free(q), free(k), free(s);
}

static void test_attention(int64_t win) {
  printf("rotary causal attention (T spans %d-row query blocks), window %lld\n", CF_ATTN_CHUNK,
         (long long)win);
  struct attn_ctx c = {.B = 2, .T = CF_ATTN_CHUNK + 6, .heads = 2, .dh = 8, .rot = 4, .win = win};
  int64_t H = c.heads * c.dh, H3 = 3 * H, R = c.B * c.T;
  size_t nq = (size_t)(R * H3), no = (size_t)(R * H);
  c.pre = cf_test_floats(nq), c.qkv = cf_test_floats(nq),
  c.probs = cf_test_floats((size_t)(c.B * c.heads * c.T * c.T));
  c.out = cf_test_floats(no), c.w = cf_test_floats(no), c.cs = cf_test_floats((size_t)(c.T * 2)),
  c.sn = cf_test_floats((size_t)(c.T * 2));
  randn(c.pre, nq, 1.0f, 0), randn(c.w, no, 1, 0);
  cf_rotary_tables(c.cs, c.sn, c.T, c.rot, 10000.0);
  attn_run(&c);
  /* forward against the naive loop */
  double *ref = calloc((size_t)(c.T * c.dh), sizeof(double)), err = 0;
  for (int64_t b = 0; b < c.B; b++)
    for (int64_t h = 0; h < c.heads; h++) {
      attn_naive(&c, b, h, 10000.0, ref);
      for (int64_t t = 0; t < c.T; t++)
        for (int64_t i = 0; i < c.dh; i++)
          err = fmax(err, fabs(ref[t * c.dh + i] - c.out[(b * c.T + t) * H + h * c.dh + i]));
    }
  EXPECT(err < 2e-5, "attention forward differs from the naive rotary attention by %g", err);
  free(ref);
  /* causality: changing token t changes nothing before t */
  float *o0 = cf_test_floats(no);
  memcpy(o0, c.out, no * sizeof(float));
  int64_t tc = 40;
  for (int64_t i = 0; i < H3; i++)
    c.pre[tc * H3 + i] += 1.0f;
  attn_run(&c);
  EXPECT(memcmp(o0, c.out, (size_t)(tc * H) * sizeof(float)) == 0,
         "attention: a later token changed an earlier output");
  EXPECT(maxdiff(o0 + tc * H, c.out + tc * H, (size_t)H) > 1e-3,
         "attention: changing a token did not change its own output");
  if (win > 0) { /* nor anything outside its window: the next window starts unchanged */
    int64_t nx = tc - tc % win + win;
    EXPECT(memcmp(o0 + nx * H, c.out + nx * H, (size_t)(win * H) * sizeof(float)) == 0,
           "attention window %lld: a token changed outputs of the next window", (long long)win);
  }
  for (int64_t i = 0; i < H3; i++)
    c.pre[tc * H3 + i] -= 1.0f;
  /* gradients */
  attn_run(&c);
  float *dqkv = cf_test_floats(nq), *scratch = cf_test_floats((size_t)(CF_ATTN_CHUNK * c.T));
  cf_attn_bwd(c.qkv, c.probs, c.w, c.B, c.T, c.heads, c.dh, dqkv, scratch);
  for (int64_t b = 0; b < c.B; b++)
    cf_rotary_apply(dqkv + b * c.T * H3, c.T, H3, c.heads, c.dh, c.rot, c.cs, c.sn, 0, 1);
  struct fdopt o = {.ncoord = 48, .h = 1e-2, .tol = 2e-3};
  EXPECT(fd_check("attention d(q,k,v) sampled", attn_loss, &c, c.pre, nq, dqkv, o, NULL),
         "attention dqkv");
  /* the rotated dims of q and k of a late token in the second query block, every dim */
  for (int part = 0; part < 3; part++) {
    static const char *nm[3] = {"attention dq (t=67, head 1)", "attention dk (t=67, head 1)",
                                "attention dv (t=67, head 1)"};
    size_t off = (size_t)((c.T + 67) * H3 + 3 * c.dh + part * c.dh);
    o.ncoord = (int)c.dh;
    o.tol = 1e-2; /* small gradients of a late token: relatively more round-off */
    EXPECT(fd_check(nm[part], attn_loss, &c, c.pre + off, (size_t)c.dh, dqkv + off, o, NULL), "%s",
           nm[part]);
  }
  free(c.pre), free(c.qkv), free(c.probs), free(c.out), free(c.w), free(c.cs), free(c.sn);
  free(o0), free(dqkv), free(scratch);
}

/* one transformer block with its own parameters */
struct block_ctx {
  int64_t B, T;
  struct cf_block_dims d;
  struct cf_block_p p;
  struct cf_block_a a;
  float *x, *xn, *w;
};
static double block_loss(void *p) {
  struct block_ctx *c = p;
  memcpy(c->a.x, c->x, (size_t)(c->B * c->T * c->d.H) * sizeof(float));
  cf_block_fwd(&c->p, &c->a, c->B, c->T, &c->d, c->xn);
  return wsum(c->w, c->xn, (size_t)(c->B * c->T * c->d.H));
}

static void test_block(void) {
  printf("one transformer block\n");
  struct block_ctx c = {.B = 2, .T = 9};
  int64_t H = 16, heads = 2, dh = 8, rot = 4, ffn = 24, R = c.B * c.T;
  float *cs = cf_test_floats((size_t)(c.T * 2)), *sn = cf_test_floats((size_t)(c.T * 2));
  cf_rotary_tables(cs, sn, c.T, rot, 10000.0);
  c.d = (struct cf_block_dims){.H = H,
                               .heads = heads,
                               .dh = dh,
                               .rot = rot,
                               .ffn = ffn,
                               .cs = cs,
                               .sn = sn,
                               .tp = MPI_COMM_NULL,
                               .ring = NULL};
  struct {
    const char *name;
    float **w, **g;
    size_t n;
    float scale, shift;
  } t[12] = {
      {"block ln1.weight", &c.p.ln1.w, &c.p.ln1.gw, 16, 0.2f, 1},
      {"block ln1.bias", &c.p.ln1.b, &c.p.ln1.gb, 16, 0.2f, 0},
      {"block ln2.weight", &c.p.ln2.w, &c.p.ln2.gw, 16, 0.2f, 1},
      {"block ln2.bias", &c.p.ln2.b, &c.p.ln2.gb, 16, 0.2f, 0},
      {"block attn.qkv.weight", &c.p.qkv.w, &c.p.qkv.gw, 48 * 16, 0.3f, 0},
      {"block attn.qkv.bias", &c.p.qkv.b, &c.p.qkv.gb, 48, 0.2f, 0},
      {"block attn.out.weight", &c.p.out.w, &c.p.out.gw, 16 * 16, 0.3f, 0},
      {"block attn.out.bias", &c.p.out.b, &c.p.out.gb, 16, 0.2f, 0},
      {"block mlp.fc1.weight", &c.p.fc1.w, &c.p.fc1.gw, 24 * 16, 0.3f, 0},
      {"block mlp.fc1.bias", &c.p.fc1.b, &c.p.fc1.gb, 24, 0.2f, 0},
      {"block mlp.fc2.weight", &c.p.fc2.w, &c.p.fc2.gw, 16 * 24, 0.3f, 0},
      {"block mlp.fc2.bias", &c.p.fc2.b, &c.p.fc2.gb, 16, 0.2f, 0},
  };
  for (int i = 0; i < 12; i++) {
    *t[i].w = cf_test_floats(t[i].n);
    *t[i].g = cf_test_floats(t[i].n);
    randn(*t[i].w, t[i].n, t[i].scale, t[i].shift);
  }
  c.p.qkv.out = 48, c.p.qkv.in = 16, c.p.out.out = 16, c.p.out.in = 16;
  c.p.fc1.out = 24, c.p.fc1.in = 16, c.p.fc2.out = 16, c.p.fc2.in = 24;
  size_t nh = (size_t)(R * H);
  c.a.x = cf_test_floats(nh), c.a.xh1 = cf_test_floats(nh), c.a.rs1 = cf_test_floats((size_t)R),
  c.a.u1 = cf_test_floats(nh);
  c.a.qkv = cf_test_floats(3 * nh), c.a.probs = cf_test_floats((size_t)(c.B * heads * c.T * c.T)),
  c.a.ao = cf_test_floats(nh);
  c.a.u2 = cf_test_floats(nh);
  c.a.f = cf_test_floats((size_t)(R * ffn)), c.a.g = cf_test_floats((size_t)(R * ffn));
  c.a.cdf = cf_test_floats((size_t)(R * ffn));
  c.x = cf_test_floats(nh), c.xn = cf_test_floats(nh), c.w = cf_test_floats(nh);
  randn(c.x, nh, 1, 0.3f), randn(c.w, nh, 1, 0);
  block_loss(&c);
  float *gx = cf_test_floats(nh);
  memcpy(gx, c.w, nh * sizeof(float));
  struct cf_block_ws ws = {.gt = cf_test_floats(2 * nh),
                           .gao = cf_test_floats(nh),
                           .gqkv = cf_test_floats(3 * nh),
                           .gf = cf_test_floats((size_t)(R * ffn)),
                           .gs = cf_test_floats((size_t)(CF_ATTN_CHUNK * c.T))};
  cf_block_bwd(&c.p, &c.a, c.B, c.T, &c.d, gx, &ws);
  struct fdopt o = {.ncoord = 12, .h = 1e-2, .tol = 2e-3};
  o.ncoord = 24;
  EXPECT(fd_check("block dx", block_loss, &c, c.x, nh, gx, o, NULL), "block dx");
  o.ncoord = 10;
  for (int i = 0; i < 12; i++)
    EXPECT(fd_check(t[i].name, block_loss, &c, *t[i].w, t[i].n, *t[i].g, o, NULL), "%s", t[i].name);
  for (int i = 0; i < 12; i++)
    free(*t[i].w), free(*t[i].g);
  free(c.a.x), free(c.a.xh1), free(c.a.rs1), free(c.a.u1), free(c.a.qkv), free(c.a.probs);
  free(c.a.ao), free(c.a.u2), free(c.a.f), free(c.a.g);
  free(c.a.cdf);
  free(c.x), free(c.xn), free(c.w), free(gx), free(ws.gt), free(ws.gao), free(ws.gqkv);
  free(ws.gf), free(ws.gs), free(cs), free(sn);
}

/* ---- the full model ---- */

static int g_no_history; /* test_model: the ODE-style ablation (no history, time input) */
static int g_prompt;     /* test_model: a text prompt of 3 tokens (vocabulary 7, pad id 6) */

static struct cf_model_cfg small_cfg(enum cf_head head) {
  struct cf_model_cfg c = {.D = 3,
                           .S = 2,
                           .P = 2,
                           .N = 4,
                           .H = 16,
                           .layers = 2,
                           .heads = 2,
                           .ffn = 64,
                           .rotary_pct = 0.5,
                           .rotary_base = 10000.0,
                           .head = head,
                           .dropout = 0.0f,
                           .logstd_min = -7.0f,
                           .logstd_max = 5.0f,
                           .gmm_k = 3,
                           .fm_width = 8,
                           .fm_draws = 2,
                           .fm_steps = 4,
                           .cvae_dz = 3,
                           .no_history = g_no_history,
                           .time_input = g_no_history,
                           .prompt_len = g_prompt ? 3 : 0,
                           .vocab = 7,
                           .prompt_pad = 6};
  return c;
}

struct model_ctx {
  struct cf_model *m;
  int64_t B;
  float *z, *y, *eps;
  const struct cf_dropkey *dk;
  double n_pts;
  float beta;
};
static double model_loss(void *p) {
  struct model_ctx *c = p;
  struct cf_loss l;
  cf_status st = cf_model_forward(c->m, c->B, c->z, c->y, c->eps, c->dk, c->n_pts, c->beta, &l);
  if (st != CF_OK) {
    printf("FAIL: forward: %s\n", cf_errmsg());
    exit(1);
  }
  return l.loss;
}

/* Random weights of a size that makes every part of the network matter. */
static void model_weights(struct cf_model *m) {
  cf_model_init_weights(m, 77);
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    float *noise = cf_test_floats(ti->numel);
    randn(noise, ti->numel, strstr(ti->name, "layers.") ? 0.25f : 0.1f, 0);
    for (size_t i = 0; i < ti->numel; i++)
      m->params[ti->offset + i] += noise[i];
    free(noise);
  }
}

/* Distance of the nearest ReLU input (where dropout keeps it) or counted log-std of the last
 * forward from its kink. */
static double unit_margin(const struct cf_unit_a *u, size_t n, int drop) {
  double mn = 1e9;
  for (size_t i = 0; i < n; i++)
    if (!drop || u->mask[i] != 0.0f) mn = fmin(mn, fabs(u->xh[i]));
  return mn;
}
static double kink_margin(const struct cf_model *m, int64_t B) {
  const struct cf_model_impl *im = m->impl;
  const struct cf_model_cfg *c = &m->cfg;
  int drop = im->last_drop;
  size_t Rp = (size_t)(B * im->J), R = (size_t)(B * im->T);
  double mn = unit_margin(&im->enc, Rp * (size_t)im->SH, drop);
  if (c->head == CF_HEAD_FM) { /* the velocity MLP's units (no dropout) */
    size_t nq = Rp * (size_t)(im->R * im->F);
    mn = fmin(mn, unit_margin(&im->fu1, nq, 0));
    mn = fmin(mn, unit_margin(&im->fu2, nq, 0));
    return fmin(mn, unit_margin(&im->fu3, nq, 0));
  }
  mn = fmin(mn, unit_margin(&im->ud1, Rp * (size_t)im->Idec, drop));
  mn = fmin(mn, unit_margin(&im->ud2, Rp * (size_t)im->Idec, drop));
  if (c->head == CF_HEAD_CVAE) { /* posterior, prior units; latent and output log-stds */
    mn = fmin(mn, unit_margin(&im->uq, Rp * (size_t)im->Idec, drop));
    mn = fmin(mn, unit_margin(&im->up, Rp * (size_t)im->Idec, drop));
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < im->n_pred_pts; j++) {
        const int64_t p = b * im->J + j;
        for (int64_t i = 0; i < im->dz; i++) {
          double rq = im->cv_q[p * 2 * im->dz + im->dz + i],
                 rp = im->cv_p[p * 2 * im->dz + im->dz + i];
          mn = fmin(mn, fmin(fabs(rq - c->logstd_min), fabs(rq - c->logstd_max)));
          mn = fmin(mn, fmin(fabs(rp - c->logstd_min), fabs(rp - c->logstd_max)));
        }
        for (int64_t d = 0; d < c->D; d++) {
          double r = im->out[p * im->Dout + c->D + d];
          mn = fmin(mn, fmin(fabs(r - c->logstd_min), fabs(r - c->logstd_max)));
        }
      }
    return mn;
  }
  if (c->head == CF_HEAD_VAE) {
    mn = fmin(mn, unit_margin(&im->umu, R * (size_t)c->H, drop));
    mn = fmin(mn, unit_margin(&im->ulv, R * (size_t)c->H, drop));
  } else { /* the log-std columns: gauss [m | r], gmm [a | m | r] */
    int64_t K = c->head == CF_HEAD_GMM ? c->gmm_k : 1;
    int64_t r0 = c->head == CF_HEAD_GMM ? K + K * c->D : c->D;
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < im->n_pred_pts; j++)
        for (int64_t d = 0; d < K * c->D; d++) {
          double r = im->out[(b * im->J + j) * im->Dout + r0 + d];
          mn = fmin(mn, fmin(fabs(r - c->logstd_min), fabs(r - c->logstd_max)));
        }
  }
  return mn;
}

/* The training noise of point j of sequence b as the forward saw it: the explicit eps, or the
 * documented draws, written out here from rng.h (not through cf_head_train_noise): stream
 * {seed, CF_RNG_HEAD, step, seq0 + b}; fm: y0 normals at base + r*D + d and s uniforms at
 * base + n + r with n = 4*ceil(R*D/4), base = j*(n + 4*ceil(R/4)); cvae: normals at j*dz + i. */
static void train_noise_of(const struct cf_model_cfg *g, const struct model_ctx *c, int64_t b,
                           int64_t j, float *out) {
  const int64_t W = cf_head_train_width(g), J = g->N * g->P;
  if (c->eps != NULL) {
    memcpy(out, c->eps + (b * J + j) * W, (size_t)W * sizeof(float));
    return;
  }
  struct cf_rng r = {.seed = c->dk ? c->dk->seed : 0,
                     .domain = CF_RNG_HEAD,
                     .step = c->dk ? c->dk->step : 0,
                     .index = (c->dk ? c->dk->seq0 : 0) + (uint64_t)b};
  if (g->head == CF_HEAD_CVAE) {
    for (int64_t i = 0; i < g->cvae_dz; i++)
      out[i] = cf_rng_normal1(&r, (uint64_t)(j * g->cvae_dz + i));
    return;
  }
  const int64_t R = g->fm_draws, D = g->D, n = (R * D + 3) / 4 * 4;
  const int64_t base = j * (n + (R + 3) / 4 * 4);
  for (int64_t q = 0; q < R; q++) {
    float u;
    cf_rng_uniform(&r, (uint64_t)(base + n + q), &u, 1);
    out[q * (1 + D)] = u;
    for (int64_t d = 0; d < D; d++)
      out[q * (1 + D) + 1 + d] = cf_rng_normal1(&r, (uint64_t)(base + q * D + d));
  }
}

/* fm: the MLP inputs [y_s, phi(s)] and the flow-matching loss from the saved velocities. */
static void fm_formulas(const struct cf_model *m, const struct model_ctx *c,
                        const struct cf_loss *l, const char *label) {
  const struct cf_model_impl *im = m->impl;
  const struct cf_model_cfg *g = &m->cfg;
  const int64_t D = g->D, J = im->J, R = g->fm_draws, Dw = D + 8, W = cf_head_train_width(g);
  float *nz = cf_test_floats((size_t)W);
  double fm = 0, ierr = 0;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t j = 0; j < J; j++) {
      const int counted = j < (g->N - 1) * g->P;
      const float *yv = c->y + (b * J + j) * D;
      train_noise_of(g, c, b, j, nz);
      for (int64_t r = 0; r < R; r++) {
        const double s = nz[r * (1 + D)];
        const float *y0 = nz + r * (1 + D) + 1, *in = im->fm_in + ((b * J + j) * R + r) * Dw;
        const float *v = im->out + ((b * J + j) * R + r) * D;
        EXPECT(s >= 0 && s < 1, "%s: flow time %g outside [0, 1)", label, s);
        for (int64_t d = 0; d < D; d++) {
          double ys = (1 - s) * y0[d] + s * (counted ? yv[d] : 0.0);
          ierr = fmax(ierr, fabs(ys - in[d]));
          if (counted) fm += (v[d] - (yv[d] - (double)y0[d])) * (v[d] - (yv[d] - (double)y0[d]));
        }
        for (int i = 0; i < 4; i++) {
          double a = 3.141592653589793 * (double)(1 << i) * s;
          ierr = fmax(ierr, fabs(sin(a) - in[D + 2 * i]));
          ierr = fmax(ierr, fabs(cos(a) - in[D + 2 * i + 1]));
        }
      }
    }
  fm /= c->n_pts * (double)R;
  EXPECT(ierr < 1e-6, "%s: the velocity MLP's input is not [(1-s) y0 + s y, phi(s)] (%g)", label,
         ierr);
  EXPECT(fabs(fm - l->recon) <= 1e-6 * fm && l->loss == l->recon && l->nll == 0 && l->kl == 0,
         "%s: fm loss %g (recon %g nll %g kl %g), recomputed %g", label, l->loss, l->recon, l->nll,
         l->kl, fm);
  free(nz);
}

/* cvae: z, the KL of the posterior to the prior, the decoder's Gaussian NLL and recon. */
static void cvae_formulas(const struct cf_model *m, const struct model_ctx *c,
                          const struct cf_loss *l, const char *label) {
  const struct cf_model_impl *im = m->impl;
  const struct cf_model_cfg *g = &m->cfg;
  const int64_t D = g->D, J = im->J, dz = g->cvae_dz, SH = g->S * g->H, Dout = 2 * D;
  const double lo = g->logstd_min, hi = g->logstd_max;
  float *e = cf_test_floats((size_t)dz);
  double kl = 0, nll = 0, rec = 0, zerr = 0;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t j = 0; j < J; j++) {
      const int64_t p = b * J + j;
      const float *q = im->cv_q + p * 2 * dz, *pr = im->cv_p + p * 2 * dz;
      train_noise_of(g, c, b, j, e);
      for (int64_t i = 0; i < dz; i++) {
        double lq = fmin(fmax(q[dz + i], lo), hi), lp = fmin(fmax(pr[dz + i], lo), hi);
        zerr = fmax(zerr, fabs(q[i] + exp(lq) * e[i] - im->cv_din[p * (SH + dz) + SH + i]));
        if (j >= (g->N - 1) * g->P) continue;
        double sq2 = exp(2 * lq), sp2 = exp(2 * lp), dm = (double)q[i] - pr[i];
        /* KL(N(mq, sq^2) || N(mp, sp^2)) = log(sp/sq) + (sq^2 + dm^2) / (2 sp^2) - 1/2 */
        kl += log(sqrt(sp2) / sqrt(sq2)) + (sq2 + dm * dm) / (2 * sp2) - 0.5;
      }
      if (j >= (g->N - 1) * g->P) continue;
      const float *o = im->out + p * Dout, *yv = c->y + p * D;
      for (int64_t d = 0; d < D; d++) {
        double ls = fmin(fmax(o[D + d], lo), hi), u = (yv[d] - (double)o[d]) / exp(ls);
        nll += 0.5 * u * u + ls + 0.5 * log(6.283185307179586);
        rec += (yv[d] - (double)o[d]) * (yv[d] - (double)o[d]);
      }
    }
  kl /= c->n_pts, nll /= c->n_pts, rec /= c->n_pts;
  EXPECT(zerr < 1e-5, "%s: z is not mq + exp(clamp(rq)) eps_z (%g)", label, zerr);
  EXPECT(fabs(kl - l->kl) <= 1e-5 * kl, "%s: kl %g, recomputed %g", label, l->kl, kl);
  EXPECT(fabs(nll - l->nll) <= 1e-6 * fabs(nll), "%s: nll %g, recomputed %g", label, l->nll, nll);
  EXPECT(fabs(rec - l->recon) <= 1e-6 * rec, "%s: recon %g, recomputed %g", label, l->recon, rec);
  double want = nll + (double)c->beta * kl;
  EXPECT(fabs(l->loss - want) <= 1e-5 * fabs(want), "%s: loss %g, nll + beta kl %g", label, l->loss,
         want);
  free(e);
}

/* The loss fields recomputed in double from the saved head activations. */
static void head_formulas(const struct cf_model *m, const struct model_ctx *c,
                          const struct cf_loss *l, const char *label) {
  const struct cf_model_impl *im = m->impl;
  const struct cf_model_cfg *g = &m->cfg;
  int64_t D = g->D, J = im->J, T = im->T, H = g->H;
  double rec = 0, nll = 0, kl = 0, zerr = 0;
  if (g->head == CF_HEAD_FM) {
    fm_formulas(m, c, l, label);
    return;
  }
  if (g->head == CF_HEAD_CVAE) {
    cvae_formulas(m, c, l, label);
    return;
  }
  if (g->head == CF_HEAD_GMM) { /* the mixture written out: -log sum_k pi_k prod_d N */
    const int64_t K = g->gmm_k;
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t j = 0; j < (g->N - 1) * g->P; j++) {
        const float *o = im->out + (b * J + j) * im->Dout, *yv = c->y + (b * J + j) * D;
        double zs = 0, like = 0;
        for (int64_t k = 0; k < K; k++)
          zs += exp((double)o[k]);
        for (int64_t d = 0; d < D; d++) {
          double mm = 0;
          for (int64_t k = 0; k < K; k++)
            mm += exp((double)o[k]) / zs * o[K + k * D + d];
          rec += (yv[d] - mm) * (yv[d] - mm);
        }
        for (int64_t k = 0; k < K; k++) {
          double p = exp((double)o[k]) / zs;
          for (int64_t d = 0; d < D; d++) {
            double ls = fmin(fmax(o[K + K * D + k * D + d], g->logstd_min), g->logstd_max);
            double sd = exp(ls), u = (yv[d] - o[K + k * D + d]) / sd;
            p *= exp(-0.5 * u * u) / (sd * sqrt(6.283185307179586));
          }
          like += p;
        }
        nll -= log(like);
      }
  } else
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t j = 0; j < (g->N - 1) * g->P; j++)
        for (int64_t d = 0; d < D; d++) {
          const float *o = im->out + (b * J + j) * im->Dout;
          double yv = c->y[(b * J + j) * D + d], mv = o[d];
          rec += (mv - yv) * (mv - yv);
          if (g->head == CF_HEAD_GAUSS) {
            double ls = fmin(fmax(o[D + d], g->logstd_min), g->logstd_max);
            nll += 0.5 * (yv - mv) * (yv - mv) * exp(-2 * ls) + ls + 0.5 * log(6.283185307179586);
          }
        }
  if (g->head == CF_HEAD_VAE) {
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t k = 0; k < T; k++)
        for (int64_t h = 0; h < H; h++) {
          size_t i = (size_t)((b * T + k) * H + h);
          double mu = im->mu[i], var = exp((double)im->v[i]) + 1e-4;
          zerr = fmax(zerr, fabs(mu + sqrt(var) * c->eps[i] - im->zeta[i]));
          if (k < (g->N - 1) * g->P * g->S) kl += 0.5 * (mu * mu + var - 1 - log(var));
        }
    kl /= c->n_pts * (double)g->S;
    EXPECT(zerr < 1e-5, "%s: zeta is not mu + sqrt(exp(v) + 1e-4) eps (%g)", label, zerr);
    EXPECT(fabs(kl - l->kl) <= 1e-5 * kl, "%s: kl %g, recomputed %g", label, l->kl, kl);
  } else {
    nll /= c->n_pts;
    EXPECT(fabs(nll - l->nll) <= 1e-6 * fabs(nll), "%s: nll %g, recomputed %g", label, l->nll, nll);
  }
  rec /= c->n_pts;
  EXPECT(fabs(rec - l->recon) <= 1e-6 * rec, "%s: recon %g, recomputed %g", label, l->recon, rec);
}

static void test_model(enum cf_head head, int dropout, float lsmin, float lsmax,
                       const char *label) {
  printf("full loss: %s\n", label);
  struct cf_model_cfg cfg = small_cfg(head);
  cfg.dropout = dropout ? 0.2f : 0.0f;
  cfg.logstd_min = lsmin;
  cfg.logstd_max = lsmax;
  struct cf_model m;
  cf_status st = cf_model_init(&m, &cfg, 2);
  EXPECT(st == CF_OK, "model init: %s", cf_errmsg());
  if (st != CF_OK) return;
  model_weights(&m);
  if (g_prompt) { /* sequence 0 left-padded; id 3 in both, so its wte row gets two sums */
    const int32_t ids[6] = {6, 6, 3, 1, 4, 3};
    EXPECT_OK(cf_model_set_prompt(&m, 0, 2, ids), "prompt ids");
  }
  int64_t B = 2, J = cfg.N * cfg.P, T = J * cfg.S;
  struct cf_dropkey dk = {.seed = 9, .step = 4, .seq0 = 10};
  struct model_ctx c = {.m = &m,
                        .B = B,
                        .dk = dropout ? &dk : NULL,
                        .n_pts = (double)(B * (cfg.N - 1) * cfg.P),
                        .beta = 0.7f};
  size_t nz = (size_t)(B * J * cfg.D), ne = (size_t)(B * T * cfg.H);
  c.z = cf_test_floats(nz), c.y = cf_test_floats(nz);
  if (head == CF_HEAD_VAE) c.eps = cf_test_floats(ne);
  /* fm / cvae: explicit training noise without dropout, drawn by the forward with it */
  if ((head == CF_HEAD_FM || head == CF_HEAD_CVAE) && !dropout) {
    ne = (size_t)(B * J * cf_head_train_width(&cfg));
    c.eps = cf_test_floats(ne);
  }
  /* draw data until every ReLU input and log-std is at least 3e-3 from its kink, so the
   * central differences (h = 1e-3) rarely straddle one; keep the best draw seen */
  double margin = 0;
  float *bz = cf_test_floats(nz), *by = cf_test_floats(nz), *be = c.eps ? cf_test_floats(ne) : NULL;
  for (int tries = 0; tries < 2000 && margin < 3e-3; tries++) {
    randn(c.z, nz, 1, 0), randn(c.y, nz, 1, 0);
    if (c.eps != NULL) randn(c.eps, ne, 1, 0);
    if (c.eps != NULL && head == CF_HEAD_FM) /* flow times in [0, 1) */
      for (size_t i = 0; i < ne; i += (size_t)(1 + cfg.D))
        c.eps[i] = (float)(0.5 + 0.49 * tanh((double)c.eps[i]));
    model_loss(&c);
    double mg = kink_margin(&m, B);
    if (mg > margin) {
      margin = mg;
      memcpy(bz, c.z, nz * sizeof(float)), memcpy(by, c.y, nz * sizeof(float));
      if (be) memcpy(be, c.eps, ne * sizeof(float));
    }
  }
  memcpy(c.z, bz, nz * sizeof(float)), memcpy(c.y, by, nz * sizeof(float));
  if (be) memcpy(c.eps, be, ne * sizeof(float));
  free(bz), free(by), free(be);
  EXPECT(margin >= 3e-3, "%s: no data far enough from ReLU kinks (margin %g)", label, margin);
  cf_model_zero_grad(&m);
  uint64_t a0 = cf_alloc_count();
  struct cf_loss l;
  EXPECT_OK(cf_model_forward(&m, B, c.z, c.y, c.eps, c.dk, c.n_pts, c.beta, &l), "forward");
  EXPECT_OK(cf_model_backward(&m), "backward");
  EXPECT(cf_alloc_count() == a0, "forward/backward allocated %llu times",
         (unsigned long long)(cf_alloc_count() - a0));
  EXPECT(isfinite(l.loss) && l.loss != 0, "loss %g", l.loss);
  if (head == CF_HEAD_FM)
    EXPECT(l.kl == 0 && l.nll == 0 && l.loss == l.recon && l.recon > 0,
           "%s loss fields %g %g %g %g", label, l.loss, l.nll, l.recon, l.kl);
  else if (head == CF_HEAD_CVAE)
    EXPECT(l.kl > 0 && l.recon > 0 &&
               fabs(l.loss - (l.nll + (double)0.7f * l.kl)) < 1e-9 * fabs(l.loss),
           "cvae loss fields %g %g %g %g", l.loss, l.nll, l.recon, l.kl);
  else if (head != CF_HEAD_VAE)
    EXPECT(l.kl == 0 && l.loss == l.nll && l.recon > 0, "%s loss fields %g %g %g %g", label, l.loss,
           l.nll, l.recon, l.kl);
  else
    EXPECT(l.nll == 0 && l.kl > 0 &&
               fabs(l.loss - (l.recon + (double)0.7f * l.kl)) < 1e-9 * fabs(l.loss),
           "vae loss fields %g %g %g %g", l.loss, l.nll, l.recon, l.kl);
  printf("  loss %.6f recon %.6f kl %.6f nll %.6f\n", l.loss, l.recon, l.kl, l.nll);
  head_formulas(&m, &c, &l, label);
  /* The gradient norm and its NaN / Inf check in one pass: the norm against a plain sum, and a
   * non-finite element at either end of the arena (first and last tensor) seen. */
  {
    int fin = -1;
    double q = cf_model_grad_sqnorm(&m, &fin), want = 0;
    for (size_t i = 0; i < m.n_params; i++)
      want += (double)m.grads[i] * (double)m.grads[i];
    EXPECT(fin == 1 && fabs(q - want) <= 1e-12 * want,
           "%s: grad sqnorm %.17g (finite %d), plain %.17g", label, q, fin, want);
    const size_t at[2] = {0, m.n_params - 1};
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int a = 0; a < 2; a++)
      for (int k = 0; k < 3; k++) {
        float keep = m.grads[at[a]];
        m.grads[at[a]] = bad[k];
        fin = -1;
        (void)cf_model_grad_sqnorm(&m, &fin);
        EXPECT(fin == 0, "%s: gradient %g at element %zu not flagged", label, (double)bad[k],
               at[a]);
        m.grads[at[a]] = keep;
      }
  }
  /* A backward consumes its forward: a second one is refused. Backward adds: a second
   * forward and backward doubles the gradients. */
  float *g1 = cf_test_floats(m.n_params);
  memcpy(g1, m.grads, m.n_params * sizeof(float));
  EXPECT_FAIL(cf_model_backward(&m), "without a forward since its last backward",
              "a second backward after one forward");
  EXPECT(memcmp(g1, m.grads, m.n_params * sizeof(float)) == 0,
         "%s: a refused backward changed the gradients", label);
  struct cf_loss l2;
  EXPECT_OK(cf_model_forward(&m, B, c.z, c.y, c.eps, c.dk, c.n_pts, c.beta, &l2), "second forward");
  EXPECT(l2.loss == l.loss, "%s: the second forward's loss differs (%g, %g)", label, l2.loss,
         l.loss);
  cf_model_backward(&m);
  double derr = 0, gmax = 0;
  for (size_t i = 0; i < m.n_params; i++) {
    derr = fmax(derr, fabs(m.grads[i] - 2.0 * g1[i]));
    gmax = fmax(gmax, fabs(g1[i]));
  }
  EXPECT(derr <= 1e-6 * gmax, "a second backward does not add the same gradients (%g)", derr);
  /* A failed forward leaves its sequences without one, even after a later forward of others:
   * sequence 0 forward, a failed forward of sequence 0, sequence 1 forward; the backward of
   * sequence 0 is refused, that of sequence 1 runs. */
  const size_t zs = nz / (size_t)B, es = ne / (size_t)B;
  const float *e1 = c.eps != NULL ? c.eps + es : NULL;
  EXPECT_OK(cf_model_forward_at(&m, 0, 1, c.z, c.y, c.eps, c.dk, c.n_pts, c.beta, &l2),
            "forward of sequence 0");
  EXPECT_FAIL(cf_model_forward_at(&m, 0, 1, c.z, c.y, c.eps, c.dk, 0.0, c.beta, &l2),
              "positive point count", "a forward with no points");
  EXPECT_OK(cf_model_forward_at(&m, 1, 1, c.z + zs, c.y + zs, e1, c.dk, c.n_pts, c.beta, &l2),
            "forward of sequence 1");
  EXPECT_FAIL(cf_model_backward_at(&m, 0, 1), "without a forward since its last backward",
              "the backward of a sequence whose last forward failed");
  EXPECT_OK(cf_model_backward_at(&m, 1, 1), "backward of sequence 1");

  struct fdopt o = {.ncoord = 6, .h = 1e-3, .tol = 3e-2, .kinks = 1};
  for (int t = 0; t < m.n_tensors; t++) {
    const struct cf_tensor_info *ti = &m.tensors[t];
    int moved = 0;
    int ok = fd_check(ti->name, model_loss, &c, m.params + ti->offset, ti->numel, g1 + ti->offset,
                      o, &moved);
    EXPECT(ok, "%s: gradient check of %s", label, ti->name);
    EXPECT(moved, "%s: perturbing %s does not change the loss", label, ti->name);
  }
  /* Negative control: a gradient 5% off is caught. */
  const struct cf_tensor_info *q = cf_model_find(&m, "layers.1.attn.qkv.weight");
  float *wrong = cf_test_floats(q->numel);
  for (size_t i = 0; i < q->numel; i++)
    wrong[i] = 1.05f * g1[q->offset + i];
  struct fdopt oq = o;
  oq.quiet = 1;
  EXPECT(!fd_check("wrong", model_loss, &c, m.params + q->offset, q->numel, wrong, oq, NULL),
         "%s: the gradient check accepted a gradient 5%% off", label);
  /* Input gradient smoke: the targets of the last P points do not matter. */
  double l0 = model_loss(&c);
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = (cfg.N - 1) * cfg.P; j < J; j++)
      for (int64_t d = 0; d < cfg.D; d++)
        c.y[(b * J + j) * cfg.D + d] += 5.0f;
  EXPECT(model_loss(&c) == l0, "%s: targets of the last time point change the loss", label);
  if (cfg.no_history) { /* a point's output depends on that point (and its time) only */
    const int64_t Dout = head == CF_HEAD_GAUSS ? 2 * cfg.D : cfg.D;
    size_t no = (size_t)(B * J * Dout);
    float *o0 = cf_test_floats(no);
    model_loss(&c);
    memcpy(o0, cf_model_test_output(&m), no * sizeof(float));
    for (int64_t b = 0; b < B; b++) /* move point j = 1 of every sequence */
      for (int64_t d = 0; d < cfg.D; d++)
        c.z[(b * J + 1) * cfg.D + d] += 1.0f;
    model_loss(&c);
    const float *o1 = cf_model_test_output(&m);
    int others = 1, own = 0;
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < J; j++) {
        int same = memcmp(o0 + (b * J + j) * Dout, o1 + (b * J + j) * Dout,
                          (size_t)Dout * sizeof(float)) == 0;
        if (j == 1)
          own += !same;
        else
          others &= same;
      }
    EXPECT(others && own == B, "%s: without history another point's input changed an output",
           label);
    free(o0);
  }
  free(wrong), free(g1), free(c.z), free(c.y), free(c.eps);
  cf_model_release(&m);
}

/* Dropout masks depend on the global sequence index, not on the batch. */
static void test_dropout_batching(void) {
  printf("dropout masks independent of batching\n");
  struct cf_model_cfg cfg = small_cfg(CF_HEAD_VAE);
  cfg.dropout = 0.3f;
  struct cf_model m;
  if (cf_model_init(&m, &cfg, 3) != CF_OK) {
    EXPECT(0, "init: %s", cf_errmsg());
    return;
  }
  model_weights(&m);
  int64_t J = cfg.N * cfg.P, T = J * cfg.S, B = 3;
  size_t nz = (size_t)(J * cfg.D), ne = (size_t)(T * cfg.H);
  float *z = cf_test_floats(3 * nz), *y = cf_test_floats(3 * nz), *eps = cf_test_floats(3 * ne);
  randn(z, 3 * nz, 1, 0), randn(y, 3 * nz, 1, 0), randn(eps, 3 * ne, 1, 0);
  struct cf_dropkey dk = {.seed = 3, .step = 11, .seq0 = 100};
  struct cf_loss all, one, nodrop;
  cf_model_forward(&m, B, z, y, eps, &dk, 6.0, 1.0f, &all);
  float *out_all = cf_test_floats((size_t)(B * J * cfg.D));
  memcpy(out_all, cf_model_test_output(&m), (size_t)(B * J * cfg.D) * sizeof(float));
  struct cf_dropkey dk2 = {.seed = 3, .step = 11, .seq0 = 102};
  cf_model_forward(&m, 1, z + 2 * nz, y + 2 * nz, eps + 2 * ne, &dk2, 6.0, 1.0f, &one);
  double d = maxdiff(out_all + 2 * J * cfg.D, cf_model_test_output(&m), (size_t)(J * cfg.D));
  EXPECT(d < 1e-5, "sequence 102 decodes differently alone than in a batch (%g)", d);
  cf_model_forward(&m, B, z, y, eps, NULL, 6.0, 1.0f, &nodrop);
  EXPECT(fabs(nodrop.loss - all.loss) > 1e-6, "dropout does not change the loss");
  struct cf_dropkey dk3 = dk;
  dk3.step = 12;
  struct cf_loss other;
  cf_model_forward(&m, B, z, y, eps, &dk3, 6.0, 1.0f, &other);
  EXPECT(fabs(other.loss - all.loss) > 1e-6, "dropout masks do not depend on the step");
  struct cf_loss again;
  cf_model_forward(&m, B, z, y, eps, &dk, 6.0, 1.0f, &again);
  EXPECT(again.loss == all.loss, "forward is not deterministic");
  free(z), free(y), free(eps), free(out_all);
  cf_model_release(&m);
}

/* fm / cvae training noise drawn inside the forward: the documented draw of
 * cf_head_train_noise (the same loss as passing those draws explicitly), keyed by the global
 * sequence (a sequence alone gives its outputs in a batch) and by the step. */
static void test_head_noise(enum cf_head head) {
  printf("%s training noise: the documented draw, independent of batching\n", cf_head_name(head));
  struct cf_model_cfg cfg = small_cfg(head);
  struct cf_model m;
  if (cf_model_init(&m, &cfg, 3) != CF_OK) {
    EXPECT(0, "init: %s", cf_errmsg());
    return;
  }
  model_weights(&m);
  const int64_t J = cfg.N * cfg.P, W = cf_head_train_width(&cfg), B = 3;
  const size_t nz = (size_t)(J * cfg.D), ne = (size_t)(J * W);
  const size_t no =
      head == CF_HEAD_FM ? (size_t)(J * cfg.fm_draws * cfg.D) : (size_t)(J * 2 * cfg.D);
  float *z = cf_test_floats(3 * nz), *y = cf_test_floats(3 * nz), *eps = cf_test_floats(3 * ne);
  float *o_all = cf_test_floats(3 * no);
  randn(z, 3 * nz, 1, 0), randn(y, 3 * nz, 1, 0);
  struct cf_dropkey dk = {.seed = 3, .step = 11, .seq0 = 100};
  for (int64_t b = 0; b < B; b++) {
    struct cf_rng r = {.seed = 3, .domain = CF_RNG_HEAD, .step = 11, .index = (uint64_t)(100 + b)};
    for (int64_t j = 0; j < J; j++)
      cf_head_train_noise(&cfg, &r, j, eps + b * ne + (size_t)(j * W));
  }
  struct cf_loss drawn, given, one, other;
  EXPECT_OK(cf_model_forward(&m, B, z, y, NULL, &dk, 6.0, 0.5f, &drawn), "forward");
  memcpy(o_all, cf_model_test_output(&m), 3 * no * sizeof(float));
  EXPECT_OK(cf_model_forward(&m, B, z, y, eps, &dk, 6.0, 0.5f, &given), "forward");
  EXPECT(drawn.loss == given.loss && drawn.recon == given.recon && drawn.kl == given.kl,
         "%s: the drawn training noise is not cf_head_train_noise's (loss %.9g vs %.9g)",
         cf_head_name(head), drawn.loss, given.loss);
  struct cf_dropkey dk2 = {.seed = 3, .step = 11, .seq0 = 102};
  EXPECT_OK(cf_model_forward(&m, 1, z + 2 * nz, y + 2 * nz, NULL, &dk2, 6.0, 0.5f, &one),
            "forward");
  double d = maxdiff(o_all + 2 * no, cf_model_test_output(&m), no);
  EXPECT(d < 1e-5, "%s: sequence 102 gets other head outputs alone than in a batch (%g)",
         cf_head_name(head), d);
  struct cf_dropkey dk3 = dk;
  dk3.step = 12;
  EXPECT_OK(cf_model_forward(&m, B, z, y, NULL, &dk3, 6.0, 0.5f, &other), "forward");
  EXPECT(fabs(other.loss - drawn.loss) > 1e-6, "%s: the training noise does not depend on the step",
         cf_head_name(head));
  free(z), free(y), free(eps), free(o_all);
  cf_model_release(&m);
}

static void test_cfg_and_layout(void) {
  printf("configuration checks, tensor layout, initialization\n");
  struct cf_model_cfg c = small_cfg(CF_HEAD_GAUSS), b;
  EXPECT(cf_model_cfg_check(&c) == CF_OK, "good config rejected: %s", cf_errmsg());
  cf_err_clear();
  b = c, b.heads = 3;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-net_heads", "heads = 3");
  b = c, b.H = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-net_hidden", "H = 0");
  b = c, b.layers = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-net_layers", "layers = 0");
  b = c, b.S = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_spatial_tokens", "S = 0");
  b = c, b.P = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_trajectories", "P = 0");
  b = c, b.N = 1;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_time_points", "N = 1");
  b = c, b.D = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-data_dim", "D = 0");
  b = c, b.dropout = 1.0f;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-net_dropout", "dropout = 1.0f");
  b = c, b.dropout = -0.1f;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-net_dropout", "dropout = -0.1f");
  b = c, b.logstd_min = 5.0f;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "logstd", "logstd_min = 5.0f");
  b = c, b.rotary_pct = 1.5;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "rotary", "rotary_pct = 1.5");
  b = c, b.ffn = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "ffn", "ffn = 0");
  b = small_cfg(CF_HEAD_FM), b.fm_width = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_fm_width", "fm_width = 0");
  b = small_cfg(CF_HEAD_FM), b.fm_draws = 65;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_fm_draws", "fm_draws = 65");
  b = small_cfg(CF_HEAD_FM), b.fm_steps = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_fm_steps", "fm_steps = 0");
  b = small_cfg(CF_HEAD_CVAE), b.cvae_dz = 0;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_cvae_dz", "cvae_dz = 0");
  b = c, b.head = (enum cf_head)5;
  EXPECT_FAIL_STATUS(cf_model_cfg_check(&b), CF_EINVAL, "-flow_head", "head = 5");

  struct cf_model m;
  size_t bytes0 = cf_alloc_bytes();
  EXPECT(cf_model_init(&m, &c, 2) == CF_OK, "init: %s", cf_errmsg());
  int64_t H = 16, SH = 32, I = 32;
  size_t expect =
      (size_t)(SH * 3 + SH + SH * SH + SH) +
      2 * (size_t)(4 * H + 3 * H * H + 3 * H + H * H + H + 4 * H * H + 4 * H + H * 4 * H + H) +
      (size_t)(2 * H) + (size_t)(I * SH + I + I * I + I + 6 * I + 6);
  EXPECT(m.n_params == expect, "n_params %zu, expected %zu", m.n_params, expect);
  EXPECT(m.n_tensors == 4 + 24 + 2 + 6, "n_tensors %d", m.n_tensors);
  const struct cf_tensor_info *t = cf_model_find(&m, "layers.1.attn.qkv.weight");
  EXPECT(t && t->ndim == 2 && t->shape[0] == 48 && t->shape[1] == 16, "qkv tensor info");
  t = cf_model_find(&m, "dec.fc3.weight");
  EXPECT(t && t->shape[0] == 6 && t->shape[1] == 32, "gauss dec.fc3 shape");
  EXPECT(cf_model_find(&m, "head.mu.fc1.weight") == NULL, "gauss model has a vae head");
  size_t off = 0;
  for (int i = 0; i < m.n_tensors; i++) {
    EXPECT(m.tensors[i].offset == off, "tensor %s not contiguous", m.tensors[i].name);
    off += m.tensors[i].numel;
  }
  cf_model_init_weights(&m, 5);
  const struct cf_tensor_info *ln = cf_model_find(&m, "layers.0.ln1.weight");
  const struct cf_tensor_info *qb = cf_model_find(&m, "layers.0.attn.qkv.bias");
  const struct cf_tensor_info *qw = cf_model_find(&m, "layers.0.attn.qkv.weight");
  const struct cf_tensor_info *e1 = cf_model_find(&m, "enc.fc1.weight");
  EXPECT(m.params[ln->offset] == 1.0f && m.params[qb->offset] == 0.0f, "LN / bias init");
  double s2 = 0, emax = 0;
  for (size_t i = 0; i < qw->numel; i++)
    s2 += (double)m.params[qw->offset + i] * m.params[qw->offset + i];
  for (size_t i = 0; i < e1->numel; i++)
    emax = fmax(emax, fabs(m.params[e1->offset + i]));
  double sd = sqrt(s2 / (double)qw->numel);
  EXPECT(sd > 0.015 && sd < 0.025, "transformer init std %g", sd);
  EXPECT(emax <= 1.0 / sqrt(3.0) && emax > 0.4, "encoder init bound %g", emax);
  float *p1 = cf_test_floats(m.n_params);
  memcpy(p1, m.params, m.n_params * sizeof(float));
  cf_model_init_weights(&m, 5);
  EXPECT(memcmp(p1, m.params, m.n_params * sizeof(float)) == 0, "init not deterministic");
  free(p1);
  cf_model_release(&m);
  cf_model_release(&m);
  EXPECT(m.params == NULL && m.impl == NULL, "release does not zero the model");
  EXPECT(cf_alloc_bytes() == bytes0, "release leaves %lld bytes allocated",
         (long long)cf_alloc_bytes() - (long long)bytes0);

  struct cf_model_cfg v = small_cfg(CF_HEAD_VAE);
  EXPECT(cf_model_init(&m, &v, 1) == CF_OK, "vae init: %s", cf_errmsg());
  EXPECT(m.n_tensors == 4 + 24 + 2 + 8 + 6, "vae n_tensors %d", m.n_tensors);
  t = cf_model_find(&m, "dec.fc3.weight");
  EXPECT(t && t->shape[0] == 3, "vae dec.fc3 shape");
  EXPECT(cf_model_find(&m, "head.lv.fc2.bias") != NULL, "vae head tensors");
  cf_model_release(&m);

  /* fm: the velocity MLP replaces the decoder; cvae: posterior and prior MLPs, decoder on
   * [c, z] (small_cfg: D 3, S*H 32, I 32, F 8, dz 3) */
  struct cf_model_cfg fc = small_cfg(CF_HEAD_FM);
  EXPECT(cf_model_init(&m, &fc, 1) == CF_OK, "fm init: %s", cf_errmsg());
  size_t core =
      (size_t)(SH * 3 + SH + SH * SH + SH) +
      2 * (size_t)(4 * H + 3 * H * H + 3 * H + H * H + H + 4 * H * H + 4 * H + H * 4 * H + H) +
      (size_t)(2 * H);
  EXPECT(m.n_tensors == 4 + 24 + 2 + 10, "fm n_tensors %d", m.n_tensors);
  EXPECT(m.n_params == core + (8 * 32 + 8) + (8 * 11 + 8) + 2 * (64 + 8) + (3 * 8 + 3),
         "fm n_params %zu", m.n_params);
  t = cf_model_find(&m, "head.fm.fc1.weight");
  EXPECT(t && t->shape[0] == 8 && t->shape[1] == 11 && t->split == CF_SPLIT_NONE,
         "fm fc1 tensor info");
  t = cf_model_find(&m, "head.fm.cond.weight");
  EXPECT(t && t->shape[0] == 8 && t->shape[1] == 32, "fm cond tensor info");
  EXPECT(cf_model_find(&m, "dec.fc1.weight") == NULL, "fm model has a decoder");
  cf_model_release(&m);
  struct cf_model_cfg cv = small_cfg(CF_HEAD_CVAE);
  EXPECT(cf_model_init(&m, &cv, 1) == CF_OK, "cvae init: %s", cf_errmsg());
  EXPECT(m.n_tensors == 4 + 24 + 2 + 8 + 6, "cvae n_tensors %d", m.n_tensors);
  EXPECT(m.n_params == core + (32 * 35 + 32) + (6 * 32 + 6) + (32 * 32 + 32) + (6 * 32 + 6) +
                           (32 * 35 + 32) + (32 * 32 + 32) + (6 * 32 + 6),
         "cvae n_params %zu", m.n_params);
  t = cf_model_find(&m, "dec.fc1.weight");
  EXPECT(t && t->shape[0] == 32 && t->shape[1] == 35, "cvae dec.fc1 shape (S*H + dz inputs)");
  t = cf_model_find(&m, "head.cvae.post.fc1.weight");
  EXPECT(t && t->shape[1] == 35, "cvae posterior sees [c, y]");
  t = cf_model_find(&m, "head.cvae.prior.fc2.bias");
  EXPECT(t && t->shape[0] == 6, "cvae prior outputs [mp | rp]");
  cf_model_release(&m);
  /* flops: each extra fm draw adds one MLP pass per point (forward + backward = 3x) */
  struct cf_model_cfg f1 = fc;
  f1.fm_draws = 1;
  double J = (double)(fc.N * fc.P), per = 2.0 * (8.0 * 11 + 2 * 64 + 8 * 3);
  EXPECT(fabs(cf_model_flops(&fc) - cf_model_flops(&f1) - 3.0 * J * per) <
             1e-6 * cf_model_flops(&fc),
         "fm flops do not count the draws");
  EXPECT(cf_model_flops(&cv) > cf_model_flops(&c), "cvae flops do not count the head");

  EXPECT(cf_model_init(&m, &v, 1) == CF_OK, "vae init: %s", cf_errmsg());
  float z[24] = {0}, y[24] = {0};
  struct cf_loss l;
  cf_err_clear();
  EXPECT(cf_model_forward(&m, 1, z, y, NULL, NULL, 6.0, 1.0f, &l) == CF_EINVAL,
         "vae forward without eps accepted");
  EXPECT(cf_model_forward(&m, 2, z, y, NULL, NULL, 6.0, 1.0f, &l) == CF_EINVAL,
         "forward beyond max_batch accepted");
  cf_err_clear();
  EXPECT(cf_model_backward(&m) == CF_EINVAL, "backward without forward accepted");
  cf_err_clear();
  cf_model_release(&m);
}

int main(void) {
  test_cfg_and_layout();
  test_linear();
  test_layernorm(1);
  test_layernorm(0);
  test_gelu();
  test_mlp(0);
  test_mlp(1);
  test_attention(0);
  test_attention(5);
  test_block();
  test_model(CF_HEAD_GAUSS, 0, -7.0f, 5.0f, "gauss head");
  test_model(CF_HEAD_GAUSS, 1, -7.0f, 5.0f, "gauss head, dropout 0.2");
  test_model(CF_HEAD_GAUSS, 0, -0.4f, 0.4f, "gauss head, log-std clamped to [-0.4, 0.4]");
  test_model(CF_HEAD_VAE, 0, -7.0f, 5.0f, "vae head");
  test_model(CF_HEAD_VAE, 1, -7.0f, 5.0f, "vae head, dropout 0.2");
  test_model(CF_HEAD_GMM, 0, -7.0f, 5.0f, "gmm head (K = 3)");
  test_model(CF_HEAD_GMM, 1, -1.0f, 1.0f, "gmm head (K = 3), dropout 0.2, log-std in [-1, 1]");
  test_model(CF_HEAD_FM, 0, -7.0f, 5.0f, "fm head (F 8, 2 draws), explicit noise");
  test_model(CF_HEAD_FM, 1, -7.0f, 5.0f, "fm head, encoder dropout 0.2, drawn noise");
  test_model(CF_HEAD_CVAE, 0, -7.0f, 5.0f, "cvae head (dz 3), explicit noise");
  test_model(CF_HEAD_CVAE, 1, -7.0f, 5.0f, "cvae head, dropout 0.2, drawn noise");
  test_model(CF_HEAD_CVAE, 0, -0.4f, 0.4f, "cvae head, log-stds clamped to [-0.4, 0.4]");
  g_no_history = 1;
  test_model(CF_HEAD_GAUSS, 0, -7.0f, 5.0f, "gauss head, no history, time input");
  test_model(CF_HEAD_VAE, 0, -7.0f, 5.0f, "vae head, no history, time input");
  g_no_history = 0;
  g_prompt = 1;
  test_model(CF_HEAD_GAUSS, 0, -7.0f, 5.0f, "gauss head, 3-token prompt");
  test_model(CF_HEAD_VAE, 0, -7.0f, 5.0f, "vae head, 3-token prompt");
  test_model(CF_HEAD_FM, 0, -7.0f, 5.0f, "fm head, 3-token prompt");
  g_prompt = 0;
  test_dropout_batching();
  test_head_noise(CF_HEAD_FM);
  test_head_noise(CF_HEAD_CVAE);
  return cf_test_done("test_model_grad");
}
