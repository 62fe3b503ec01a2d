/* test_kvcache.c: the KV-cached incremental forward against the training forward, and its
 * batch invariance.
 * Final hidden states from cf_model_extend point by point (np = P per call, max_new = P*S),
 * from one extend over the whole sequence, and from uneven chunks all equal those of
 * cf_model_forward (to float round-off); cf_head_sample with tau = 0 gives the gauss mean /
 * the vae decoding of mu, and with tau = 1 matches the training head on the same noise;
 * bad extends are refused; nothing allocates after init. Every head, two rotary widths. The fm
 * and cvae heads' samples (tau 0 without noise, tau 1 with noise) are recomputed here in double
 * precision from the weights and the definitions in model.h (Euler steps of the velocity MLP;
 * prior, latent and decoder). cf_head_noise draws the documented elements (the gmm component
 * uniform independent of the normals).
 * cf_linear_rows (sampling's linear) matches a double-precision product to round-off and gives
 * each row the same bits alone, inside 2, 7, 64 or 129 rows at any offset, in any column
 * position and with every copy (portable, AVX2, AVX-512VL) the CPU runs. A rollout of
 * sequences in batches of 1, 5 and 16 (others different) gives every shared sequence
 * bit-identical hidden states and samples, every head, KV cache and recompute. */
#include <float.h>
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

static void randn(float *x, size_t n, float scale) {
  struct cf_rng r = {.seed = 99, .domain = CF_RNG_DATA, .step = 1, .index = g_stream++};
  cf_rng_normal(&r, 0, x, n);
  for (size_t i = 0; i < n; i++)
    x[i] *= scale;
}

static double maxabs(const float *a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    m = fmax(m, fabs(a[i]));
  return m;
}

static double maxdiff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)a[i] - (double)b[i]));
  return m;
}

/* Rows [j0, j0+np) of every sequence of x (B, rows, w) into out (B, np, w). */
static void gather(const float *x, int64_t B, int64_t rows, int64_t w, int64_t j0, int64_t np,
                   float *out) {
  for (int64_t b = 0; b < B; b++)
    memcpy(out + b * np * w, x + (b * rows + j0) * w, (size_t)(np * w) * sizeof(float));
}

static int g_no_history; /* run(): the ODE-style ablation (no history, time input) */

/* ---- an independent double-precision head sampler for the fm and cvae heads ---- */

/* y (out) = x (in) W^T + b for tensor `name`.weight / .bias of m, one row, in double. */
static void lin_d(const struct cf_model *m, const char *name, const double *x, double *y) {
  char nw[96], nb[96];
  snprintf(nw, sizeof nw, "%s.weight", name);
  snprintf(nb, sizeof nb, "%s.bias", name);
  const struct cf_tensor_info *tw = cf_model_find(m, nw), *tb = cf_model_find(m, nb);
  if (tw == NULL || tb == NULL) {
    printf("FAIL: tensor %s missing\n", name);
    exit(1);
  }
  const float *W = m->params + tw->offset, *b = m->params + tb->offset;
  const int64_t out = tw->shape[0], in = tw->shape[1];
  for (int64_t o = 0; o < out; o++) {
    double s = b[o];
    for (int64_t k = 0; k < in; k++)
      s += (double)W[o * in + k] * x[k];
    y[o] = s;
  }
}

/* LayerNorm without affine (eps 1e-5), then ReLU, in place. */
static void lnrelu_d(double *x, int64_t n) {
  double mu = 0, var = 0;
  for (int64_t i = 0; i < n; i++)
    mu += x[i] / (double)n;
  for (int64_t i = 0; i < n; i++)
    var += (x[i] - mu) * (x[i] - mu) / (double)n;
  for (int64_t i = 0; i < n; i++)
    x[i] = fmax(0.0, (x[i] - mu) / sqrt(var + 1e-5));
}

static double clamp_d(double v, double lo, double hi) {
  return fmin(fmax(v, lo), hi);
}

/* One point's sample from its hidden states c (S*H) and noise e (cf_head_noise_width, or
 * NULL): fm: K Euler steps of v([y, phi(s)], c) from tau*e; cvae: z = mp + tau exp(lp) e_z,
 * y = m + tau exp(ls) e_y. */
static void ref_sample(const struct cf_model *m, const float *c, const float *e, float tau,
                       double *y) {
  const struct cf_model_cfg *g = &m->cfg;
  const int64_t D = g->D, SH = g->S * g->H, I = SH > D ? SH : D, W = 512;
  double cd[512], a[512], b[512], cp[512], in[512];
  for (int64_t k = 0; k < SH; k++)
    cd[k] = c[k];
  if (g->head == CF_HEAD_FM) {
    const int64_t K = g->fm_steps;
    lin_d(m, "head.fm.cond", cd, cp);
    for (int64_t d = 0; d < D; d++)
      y[d] = (double)tau * (e != NULL ? e[d] : 0.0);
    for (int64_t k = 0; k < K; k++) {
      const float s = (float)((double)k / (double)K); /* the float flow time */
      for (int64_t d = 0; d < D; d++)
        in[d] = (float)y[d]; /* the state is a float between steps */
      for (int i = 0; i < 4; i++) {
        in[D + 2 * i] = (float)sin(3.141592653589793 * (double)(1 << i) * (double)s);
        in[D + 2 * i + 1] = (float)cos(3.141592653589793 * (double)(1 << i) * (double)s);
      }
      lin_d(m, "head.fm.fc1", in, a);
      for (int64_t f = 0; f < g->fm_width; f++)
        a[f] += cp[f];
      lnrelu_d(a, g->fm_width);
      lin_d(m, "head.fm.fc2", a, b);
      lnrelu_d(b, g->fm_width);
      lin_d(m, "head.fm.fc3", b, a);
      lnrelu_d(a, g->fm_width);
      lin_d(m, "head.fm.out", a, b);
      for (int64_t d = 0; d < D; d++)
        y[d] += b[d] / (double)K;
    }
    return;
  }
  const int64_t dz = g->cvae_dz;
  const double lo = g->logstd_min, hi = g->logstd_max;
  if (SH + dz > W || I > W) {
    printf("FAIL: ref_sample sizes\n");
    exit(1);
  }
  lin_d(m, "head.cvae.prior.fc1", cd, a);
  lnrelu_d(a, I);
  lin_d(m, "head.cvae.prior.fc2", a, b); /* [mp | rp] */
  for (int64_t i = 0; i < dz; i++)
    cd[SH + i] = (float)(b[i] + tau * exp(clamp_d(b[dz + i], lo, hi)) * (e != NULL ? e[i] : 0.0));
  lin_d(m, "dec.fc1", cd, a);
  lnrelu_d(a, I);
  lin_d(m, "dec.fc2", a, b);
  lnrelu_d(b, I);
  lin_d(m, "dec.fc3", b, a); /* [m | r] */
  for (int64_t d = 0; d < D; d++)
    y[d] = a[d] + tau * exp(clamp_d(a[D + d], lo, hi)) * (e != NULL ? e[dz + d] : 0.0);
}

/* cf_head_sample of the fm / cvae head over every point of h (B*J points) at tau 0 (no noise)
 * and tau 1 (noise e) against ref_sample. Returns the worst error relative to max(1, |y|). */
static double check_new_head(const struct cf_model *m, struct cf_kvcache *kc, int64_t BJ,
                             const float *h, const float *e, const char *label) {
  const struct cf_model_cfg *g = &m->cfg;
  const int64_t D = g->D, SH = g->S * g->H, W = cf_head_noise_width(g);
  float *ys = cf_test_floats((size_t)(BJ * D));
  double worst = 0;
  for (int pass = 0; pass < 2; pass++) {
    const float tau = pass == 0 ? 0.0f : 1.0f, *eps = pass == 0 ? NULL : e;
    EXPECT_OK(cf_head_sample(m, kc, BJ / kc->B, h, eps, tau, ys), "head sample");
    double err = 0, mag = 1;
    for (int64_t r = 0; r < BJ; r++) {
      double want[64];
      ref_sample(m, h + r * SH, eps != NULL ? eps + r * W : NULL, tau, want);
      for (int64_t d = 0; d < D; d++) {
        err = fmax(err, fabs(ys[r * D + d] - want[d]));
        mag = fmax(mag, fabs(want[d]));
      }
    }
    printf("  head sample tau=%g vs the double-precision recomputation: max |diff| %.2e\n",
           (double)tau, err);
    EXPECT(err <= 2e-5 * mag, "%s: head sample at tau %g differs from the recomputation by %g",
           label, (double)tau, err);
    worst = fmax(worst, err / mag);
  }
  free(ys);
  return worst;
}

static void run(enum cf_head head, double rotary_pct, float lsmax, const char *label) {
  printf("%s\n", label);
  struct cf_model_cfg cfg = {.D = 3,
                             .S = 2,
                             .P = 2,
                             .N = 5,
                             .H = 16,
                             .layers = 2,
                             .heads = 2,
                             .ffn = 64,
                             .rotary_pct = rotary_pct,
                             .rotary_base = 10000.0,
                             .head = head,
                             .dropout = 0.1f,
                             .logstd_min = -lsmax,
                             .logstd_max = lsmax,
                             .gmm_k = 4,
                             .fm_width = 12,
                             .fm_draws = 2,
                             .fm_steps = 6,
                             .cvae_dz = 3,
                             .no_history = g_no_history,
                             .time_input = g_no_history};
  const int64_t B = 3, D = cfg.D, S = cfg.S, P = cfg.P, N = cfg.N, H = cfg.H;
  const int64_t Dout = cf_model_dout(&cfg), W = cf_head_noise_width(&cfg), K = cfg.gmm_k;
  const int64_t J = N * P, T = J * S;
  struct cf_model m;
  cf_status st = cf_model_init(&m, &cfg, B);
  EXPECT(st == CF_OK, "init: %s", cf_errmsg());
  if (st != CF_OK) return;
  cf_model_init_weights(&m, 31);
  float *noise = cf_test_floats(m.n_params);
  randn(noise, m.n_params, 0.2f); /* make attention far from uniform */
  for (size_t i = 0; i < m.n_params; i++)
    m.params[i] += noise[i];
  free(noise);
  if (head == CF_HEAD_VAE) { /* small posterior variances, where the 1e-4 floor matters */
    const struct cf_tensor_info *lb = cf_model_find(&m, "head.lv.fc2.bias");
    for (size_t i = 0; i < lb->numel; i++)
      m.params[lb->offset + i] -= 7.0f;
  }

  size_t nz = (size_t)(B * J * D), nh = (size_t)(B * T * H);
  float *z = cf_test_floats(nz), *y = cf_test_floats(nz), *eps = cf_test_floats(nh),
        *zero = cf_test_floats(nh);
  randn(z, nz, 1.0f), randn(y, nz, 1.0f), randn(eps, nh, 1.0f);
  struct cf_loss loss;
  EXPECT_OK(
      cf_model_forward(&m, B, z, y, head == CF_HEAD_VAE ? zero : NULL, NULL, 1.0, 1.0f, &loss),
      "forward");
  float *href = cf_test_floats(nh), *oref = cf_test_floats((size_t)(B * J * Dout));
  memcpy(href, cf_model_test_hidden(&m), nh * sizeof(float));
  size_t nout = (size_t)(B * J * Dout);
  memcpy(oref, cf_model_test_output(&m), nout * sizeof(float));
  double tol = 1e-5 * fmax(1.0, maxabs(href, nh));

  /* point by point: np = P per call, a cache sized exactly for N*P*S tokens */
  struct cf_kvcache ca, cb;
  EXPECT_OK(cf_kvcache_init(&ca, &m, B, T, P * S), "kvcache init");
  st = cf_kvcache_init(&cb, &m, B, T + 5, T);
  EXPECT(st == CF_OK, "kvcache init: %s", cf_errmsg());
  if (st != CF_OK) return;
  float *zn = cf_test_floats(nz), *hn = cf_test_floats(nh), *hall = cf_test_floats(nh),
        *ys = cf_test_floats(nz);
  uint64_t a0 = cf_alloc_count();
  double d1 = 0;
  for (int64_t t = 0; t < N; t++) {
    gather(z, B, J, D, t * P, P, zn);
    st = cf_model_extend(&m, &ca, zn, P, hn);
    EXPECT(st == CF_OK, "extend at t=%lld: %s", (long long)t, cf_errmsg());
    for (int64_t b = 0; b < B; b++)
      d1 = fmax(d1,
                maxdiff(hn + b * P * S * H, href + (b * T + t * P * S) * H, (size_t)(P * S * H)));
    /* the head on the newest points runs on the small cache's workspace */
    st = cf_head_sample(&m, &ca, P, hn, eps, 1.0f, ys);
    EXPECT(st == CF_OK, "head sample at t=%lld: %s", (long long)t, cf_errmsg());
  }
  EXPECT(ca.len == T, "cache length %lld after N extends, expected %lld", (long long)ca.len,
         (long long)T);
  printf("  point-by-point extend vs training forward: max |diff| %.2e (tol %.1e)\n", d1, tol);
  EXPECT(d1 <= tol, "%s: point-by-point extend differs from the training forward by %g", label, d1);

  /* a full cache refuses more, and a call larger than max_new is refused */
  cf_err_clear();
  EXPECT(cf_model_extend(&m, &ca, zn, P, hn) == CF_EINVAL, "extend past max_len accepted");
  cf_kvcache_reset(&ca);
  EXPECT(ca.len == 0, "reset does not empty the cache");
  cf_err_clear();
  EXPECT(cf_model_extend(&m, &ca, z, P + 1, hn) == CF_EINVAL, "extend past max_new accepted");
  cf_err_clear();

  /* the whole sequence in one call */
  EXPECT_OK(cf_model_extend(&m, &cb, z, J, hall), "extend whole");
  double d2 = maxdiff(hall, href, nh);
  printf("  one extend over the whole sequence vs training forward: max |diff| %.2e\n", d2);
  EXPECT(d2 <= tol, "%s: whole-sequence extend differs from the training forward by %g", label, d2);

  /* uneven chunks after a reset: 1, 3, then the rest */
  cf_kvcache_reset(&cb);
  int64_t chunks[3] = {1, 3, J - 4}, j0 = 0;
  double d3 = 0;
  for (int c = 0; c < 3; c++) {
    int64_t np = chunks[c];
    gather(z, B, J, D, j0, np, zn);
    st = cf_model_extend(&m, &cb, zn, np, hn);
    EXPECT(st == CF_OK, "extend chunk %d: %s", c, cf_errmsg());
    for (int64_t b = 0; b < B; b++)
      d3 =
          fmax(d3, maxdiff(hn + b * np * S * H, href + (b * T + j0 * S) * H, (size_t)(np * S * H)));
    j0 += np;
  }
  printf("  uneven chunks (1, 3, %lld points) vs training forward: max |diff| %.2e\n",
         (long long)(J - 4), d3);
  EXPECT(d3 <= tol, "%s: chunked extend differs by %g", label, d3);

  /* head samples on every point from the whole-sequence hidden states */
  float *ysamp = cf_test_floats(nz);
  const size_t nn = (size_t)(B * J * W);
  float *enoise = cf_test_floats(nn);
  randn(enoise, nn, 1.0f);
  float *yt = cf_test_floats(nz);
  if (head == CF_HEAD_FM || head == CF_HEAD_CVAE) {
    check_new_head(&m, &cb, B * J, hall, enoise, label);
    EXPECT_OK(cf_head_sample(&m, &cb, J, hall, enoise, 1.0f, ysamp), "head sample tau=1");
  } else {
    EXPECT_OK(cf_head_sample(&m, &cb, J, hall, NULL, 0.0f, ysamp), "head sample tau=0");
    double otol = 1e-5 * fmax(1.0, maxabs(oref, nout)), d4 = 0;
    for (int64_t r = 0; r < B * J; r++) {
      const float *o = oref + r * Dout;
      int64_t kb = 0; /* gmm: the most probable component */
      for (int64_t k = 1; head == CF_HEAD_GMM && k < K; k++)
        if (o[k] > o[kb]) kb = k;
      for (int64_t d = 0; d < D; d++) {
        float want = head == CF_HEAD_GMM ? o[K + kb * D + d] : o[d];
        d4 = fmax(d4, fabs(ysamp[r * D + d] - want));
      }
    }
    printf("  head sample tau=0 vs %s: max |diff| %.2e\n",
           head == CF_HEAD_VAE ? "decoding mu"
                               : (head == CF_HEAD_GMM ? "the likeliest mean" : "the gauss mean"),
           d4);
    EXPECT(d4 <= otol, "%s: head sample with tau=0 differs by %g", label, d4);

    int64_t picked[8] = {0}; /* gmm: how often each component is drawn */
    for (int64_t r = 0; head == CF_HEAD_GMM && r < B * J; r++)
      enoise[r * W + D] = (float)fmod(0.137 + 0.618034 * (double)r, 1.0); /* spread uniforms */
    EXPECT_OK(cf_head_sample(&m, &cb, J, hall, enoise, 1.0f, ysamp), "head sample tau=1");
    double d5 = 0;
    if (head == CF_HEAD_GMM) { /* the component whose softmax interval holds the uniform */
      for (int64_t r = 0; r < B * J; r++) {
        const float *o = oref + r * Dout;
        double zs = 0, cum = 0;
        for (int64_t k = 0; k < K; k++)
          zs += exp((double)o[k]);
        int64_t k = 0;
        for (; k < K - 1; k++) {
          cum += exp((double)o[k]) / zs;
          if (enoise[r * W + D] < cum) break;
        }
        picked[k]++;
        for (int64_t d = 0; d < D; d++) {
          float ls = o[K + K * D + k * D + d];
          ls = ls < cfg.logstd_min ? cfg.logstd_min : (ls > cfg.logstd_max ? cfg.logstd_max : ls);
          double want = o[K + k * D + d] + exp(ls) * enoise[r * W + d];
          d5 = fmax(d5, fabs(ysamp[r * D + d] - want));
        }
      }
      int used = 0;
      for (int64_t k = 0; k < K; k++)
        used += picked[k] > 0;
      EXPECT(used >= 2, "%s: the uniforms picked only %d component(s)", label, used);
    } else if (head == CF_HEAD_GAUSS) {
      for (int64_t r = 0; r < B * J; r++)
        for (int64_t d = 0; d < D; d++) {
          float ls = oref[r * 2 * D + D + d];
          ls = ls < cfg.logstd_min ? cfg.logstd_min : (ls > cfg.logstd_max ? cfg.logstd_max : ls);
          double want = oref[r * 2 * D + d] + exp(ls) * enoise[r * D + d];
          d5 = fmax(d5, fabs(ysamp[r * D + d] - want));
        }
    } else {
      /* the training head decodes mu + sqrt(exp(v) + 1e-4) * eps: the same draw */
      EXPECT_OK(cf_model_forward(&m, B, z, y, enoise, NULL, 1.0, 1.0f, &loss), "forward");
      d5 = maxdiff(ysamp, cf_model_test_output(&m), nz);
    }
    printf("  head sample tau=1 vs the training head on the same noise: max |diff| %.2e\n", d5);
    EXPECT(d5 <= otol, "%s: head sample with tau=1 differs by %g", label, d5);
  }
  /* temperature matters */
  cf_head_sample(&m, &cb, J, hall, enoise, 0.5f, yt);
  EXPECT(maxdiff(yt, ysamp, nz) > 1e-4, "%s: temperature does not change the sample", label);
  EXPECT(cf_alloc_count() == a0, "%s: extend / head sample allocated %llu times", label,
         (unsigned long long)(cf_alloc_count() - a0));
  cf_err_clear();
  EXPECT(cf_head_sample(&m, &ca, P + 1, hall, enoise, 1.0f, ysamp) == CF_EINVAL,
         "head sample beyond the cache workspace accepted");
  cf_err_clear();

  cf_kvcache_release(&ca);
  cf_kvcache_release(&cb);
  cf_kvcache_release(&cb);
  EXPECT(cb.impl == NULL && cb.len == 0, "release does not zero the cache");
  cf_model_release(&m);
  free(z), free(y), free(eps), free(zero), free(href), free(oref), free(zn), free(hn), free(hall);
  free(ys), free(ysamp), free(enoise), free(yt);
}

/* ---- cf_head_noise ---- */

/* The normals are elements 0.. of the stream for every head; the gmm component uniform is
 * independent of them (it once shared the first normal's Philox block: u was a function of
 * |eps_0|, which skewed which component a large first coordinate came from). */
static void test_head_noise(void) {
  printf("cf_head_noise: documented elements, gmm uniform independent of the normals\n");
  const enum cf_head heads[5] = {CF_HEAD_VAE, CF_HEAD_GAUSS, CF_HEAD_GMM, CF_HEAD_FM, CF_HEAD_CVAE};
  struct cf_model_cfg c = {.D = 3, .S = 2, .H = 4, .gmm_k = 4, .cvae_dz = 5, .fm_width = 8};
  for (int i = 0; i < 5; i++) {
    c.head = heads[i];
    const int64_t W = cf_head_noise_width(&c), nn = W - (c.head == CF_HEAD_GMM);
    EXPECT(W == (c.head == CF_HEAD_VAE    ? 8
                 : c.head == CF_HEAD_GMM  ? 4
                 : c.head == CF_HEAD_CVAE ? 8
                                          : 3),
           "%s: noise width %lld", cf_head_name(c.head), (long long)W);
    float out[16], want[16];
    struct cf_rng r = {.seed = 5, .domain = CF_RNG_SAMPLE, .step = 2, .index = 7};
    cf_head_noise(&c, &r, out);
    cf_rng_normal(&r, 0, want, (size_t)nn);
    EXPECT(memcmp(out, want, (size_t)nn * sizeof(float)) == 0,
           "%s: the normals are not elements "
           "0..%lld of the stream",
           cf_head_name(c.head), (long long)(nn - 1));
  }
  c.head = CF_HEAD_GMM;
  enum { NS = 4000 };
  double su = 0, sa = 0, suu = 0, saa = 0, sua = 0;
  for (int i = 0; i < NS; i++) {
    struct cf_rng r = {.seed = 11, .domain = CF_RNG_SAMPLE, .step = 3, .index = (uint64_t)i};
    float out[4];
    cf_head_noise(&c, &r, out);
    EXPECT(out[3] >= 0.0f && out[3] < 1.0f, "gmm uniform %g", (double)out[3]);
    double u = out[3], a = fabs((double)out[0]);
    su += u, sa += a, suu += u * u, saa += a * a, sua += u * a;
  }
  double cov = sua / NS - (su / NS) * (sa / NS);
  double corr = cov / sqrt((suu / NS - su * su / NS / NS) * (saa / NS - sa * sa / NS / NS));
  printf("  correlation of the gmm uniform with |eps_0| over %d streams: %.3f\n", NS, corr);
  EXPECT(fabs(corr) < 0.08, "the gmm component uniform depends on the first normal (corr %.3f)",
         corr);
}

/* ---- cf_linear_rows ---- */

/* Rows x (M, in) and preset y (M, out, used when accumulating) with row `pos` set to xr / y0r;
 * the other rows random. Returns cf_linear_rows' row pos in yr. */
static void rows_at(int64_t M, int64_t pos, const float *xr, const float *y0r, const float *W,
                    const float *b, int64_t out, int64_t in, int acc, float *yr) {
  float *x = cf_test_floats((size_t)(M * in)), *y = cf_test_floats((size_t)(M * out));
  randn(x, (size_t)(M * in), 1.0f);
  randn(y, (size_t)(M * out), 1.0f);
  memcpy(x + pos * in, xr, (size_t)in * sizeof(float));
  memcpy(y + pos * out, y0r, (size_t)out * sizeof(float));
  cf_linear_rows(x, M, W, b, out, in, acc, y);
  memcpy(yr, y + pos * out, (size_t)out * sizeof(float));
  free(x), free(y);
}

static void test_linear_rows(void) {
  const int best = cf_linear_rows_path(-2);
  printf("cf_linear_rows: copies 0..%d on this CPU (0 portable, 1 AVX2, 2 AVX-512VL)\n", best);
  /* (in, out): k-tails of 0..7 values, column remainders, several weight blocks (in 1024) */
  const int64_t shapes[][2] = {{1, 1}, {7, 3}, {8, 4}, {13, 5}, {64, 17}, {100, 9}, {1024, 70}};
  const int64_t Ms[] = {2, 7, 64, 129};
  double worst = 0;
  int n_cmp = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    const int64_t in = shapes[si][0], out = shapes[si][1];
    for (int variant = 0; variant < 3; variant++) { /* bias; no bias; bias + accumulate */
      const int acc = variant == 2;
      float *W = cf_test_floats((size_t)(out * in)), *bb = cf_test_floats((size_t)out);
      float *xr = cf_test_floats((size_t)in), *y0 = cf_test_floats((size_t)out);
      float *y1 = cf_test_floats((size_t)out), *yr = cf_test_floats((size_t)out);
      randn(W, (size_t)(out * in), 0.5f), randn(bb, (size_t)out, 1.0f);
      randn(xr, (size_t)in, 1.0f), randn(y0, (size_t)out, 1.0f);
      const float *b = variant == 1 ? NULL : bb;
      /* alone, against double precision */
      memcpy(y1, y0, (size_t)out * sizeof(float));
      cf_linear_rows(xr, 1, W, b, out, in, acc, y1);
      for (int64_t o = 0; o < out; o++) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < in; k++) {
          ref += (double)xr[k] * W[o * in + k];
          mag += fabs((double)xr[k] * W[o * in + k]);
        }
        if (b != NULL) ref += b[o], mag += fabs(b[o]);
        if (acc) ref += y0[o], mag += fabs(y0[o]);
        double err = fabs(y1[o] - ref), tol = ((double)in / 8 + 6) * FLT_EPSILON * mag;
        worst = fmax(worst, err / (FLT_EPSILON * fmax(mag, 1e-30)));
        EXPECT(err <= tol,
               "linear_rows in %lld out %lld variant %d: output %lld is %.9g, double "
               "gives %.9g (tol %.2g)",
               (long long)in, (long long)out, variant, (long long)o, y1[o], ref, tol);
      }
      /* the same bits inside M rows at several offsets */
      for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        const int64_t M = Ms[mi], pos[4] = {0, 1, M / 2 + 1, M - 1};
        for (int pi = 0; pi < 4; pi++) {
          if (pos[pi] >= M) continue;
          rows_at(M, pos[pi], xr, y0, W, b, out, in, acc, yr);
          n_cmp++;
          EXPECT(memcmp(yr, y1, (size_t)out * sizeof(float)) == 0,
                 "linear_rows in %lld out %lld variant %d: row %lld of %lld differs from the row "
                 "alone",
                 (long long)in, (long long)out, variant, (long long)pos[pi], (long long)M);
        }
      }
      /* every copy the CPU runs */
      for (int p = 0; p <= best; p++) {
        cf_linear_rows_path(p);
        rows_at(129, 77, xr, y0, W, b, out, in, acc, yr);
        n_cmp++;
        EXPECT(memcmp(yr, y1, (size_t)out * sizeof(float)) == 0,
               "linear_rows in %lld out %lld variant %d: copy %d differs from the default",
               (long long)in, (long long)out, variant, p);
      }
      cf_linear_rows_path(-1);
      /* another column position: outputs 1..out-1 alone move from a 4-wide tile to the
       * remainder and back */
      if (out > 1) {
        memcpy(yr, y0 + 1, (size_t)(out - 1) * sizeof(float));
        cf_linear_rows(xr, 1, W + in, b != NULL ? b + 1 : NULL, out - 1, in, acc, yr);
        n_cmp++;
        EXPECT(memcmp(yr, y1 + 1, (size_t)(out - 1) * sizeof(float)) == 0,
               "linear_rows in %lld out %lld variant %d: outputs shifted by one column differ",
               (long long)in, (long long)out, variant);
      }
      free(W), free(bb), free(xr), free(y0), free(y1), free(yr);
    }
  }
  printf("  worst error vs double: %.2f eps x sum |terms|; %d bit-for-bit row comparisons\n", worst,
         n_cmp);
}

/* ---- batch invariance of sampling ---- */

/* A rollout of B sequences as rollout.c runs it: x0 (B, P, D) first points; per step t
 * (t < N-1) extend (np = P with the KV cache, else the whole prefix after a reset), sample
 * the head for the last P points with noise eps (N-1, B, epsw) and take y as points t+1.
 * Records hs (B, N-1, P*S*H) hidden states and ys (B, N-1, P*D) samples. */
static void roll(struct cf_model *m, int64_t B, int kv, const float *x0, const float *eps,
                 int64_t epsw, float *hs, float *ys) {
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t P = c->P, S = c->S, D = c->D, H = c->H, N = c->N, J = N * P, T = J * S;
  struct cf_kvcache kc;
  cf_status st = cf_kvcache_init(&kc, m, B, T, kv ? P * S : T);
  EXPECT(st == CF_OK, "kvcache init: %s", cf_errmsg());
  if (st != CF_OK) return;
  float *seq = cf_test_floats((size_t)(B * J * D)), *stage = cf_test_floats((size_t)(B * J * D));
  float *h = cf_test_floats((size_t)(B * T * H)), *hl = cf_test_floats((size_t)(B * P * S * H));
  float *y = cf_test_floats((size_t)(B * P * D)), *e = cf_test_floats((size_t)(B * epsw));
  for (int64_t b = 0; b < B; b++)
    memcpy(seq + b * J * D, x0 + b * P * D, (size_t)(P * D) * sizeof(float));
  for (int64_t t = 0; t + 1 < N; t++) {
    int64_t np = kv ? P : (t + 1) * P, first = kv ? t * P : 0;
    if (!kv) cf_kvcache_reset(&kc);
    for (int64_t b = 0; b < B; b++)
      memcpy(stage + b * np * D, seq + (b * J + first) * D, (size_t)(np * D) * sizeof(float));
    EXPECT_OK(cf_model_extend(m, &kc, stage, np, h), "extend");
    for (int64_t b = 0; b < B; b++) {
      memcpy(hl + b * P * S * H, h + (b * np * S + (np - P) * S) * H,
             (size_t)(P * S * H) * sizeof(float));
      memcpy(e + b * epsw, eps + (t * B + b) * epsw, (size_t)epsw * sizeof(float));
    }
    EXPECT_OK(cf_head_sample(m, &kc, P, hl, e, 1.0f, y), "head sample");
    for (int64_t b = 0; b < B; b++) {
      memcpy(seq + (b * J + (t + 1) * P) * D, y + b * P * D, (size_t)(P * D) * sizeof(float));
      memcpy(hs + (b * (N - 1) + t) * P * S * H, hl + b * P * S * H,
             (size_t)(P * S * H) * sizeof(float));
      memcpy(ys + (b * (N - 1) + t) * P * D, y + b * P * D, (size_t)(P * D) * sizeof(float));
    }
  }
  cf_kvcache_release(&kc);
  free(seq), free(stage), free(h), free(hl), free(y), free(e);
}

static void batch_invariance(enum cf_head head, int kv) {
  /* odd P*S and widths with k-tails, so sequences straddle row tiles */
  struct cf_model_cfg cfg = {.D = 3,
                             .S = 3,
                             .P = 3,
                             .N = 4,
                             .H = 20,
                             .layers = 2,
                             .heads = 2,
                             .ffn = 76,
                             .rotary_pct = 0.5,
                             .rotary_base = 10000.0,
                             .head = head,
                             .dropout = 0.1f,
                             .logstd_min = -7.0f,
                             .logstd_max = 5.0f,
                             .gmm_k = 5,
                             .fm_width = 12,
                             .fm_draws = 2,
                             .fm_steps = 5,
                             .cvae_dz = 3};
  char label[64];
  snprintf(label, sizeof label, "%s, %s", cf_head_name(head), kv ? "KV cache" : "recompute");
  const int64_t P = cfg.P, S = cfg.S, D = cfg.D, H = cfg.H, N = cfg.N;
  const int64_t epsw = P * cf_head_noise_width(&cfg);
  const size_t nh = (size_t)((N - 1) * P * S * H), ny = (size_t)((N - 1) * P * D);
  struct cf_model m;
  cf_status st = cf_model_init(&m, &cfg, 1);
  EXPECT(st == CF_OK, "init: %s", cf_errmsg());
  if (st != CF_OK) return;
  cf_model_init_weights(&m, 5);
  float *noise = cf_test_floats(m.n_params);
  randn(noise, m.n_params, 0.2f);
  for (size_t i = 0; i < m.n_params; i++)
    m.params[i] += noise[i];
  free(noise);

  /* a pool of 20 sequences, each its own first points and noise */
  enum { POOL = 20 };
  float *px0 = cf_test_floats((size_t)(POOL * P * D)),
        *peps = cf_test_floats((size_t)(POOL * (N - 1) * epsw));
  randn(px0, (size_t)(POOL * P * D), 1.0f);
  randn(peps, (size_t)(POOL * (N - 1) * epsw), 1.0f);
  /* batches of pool sequences: 0 in all three, 1 and 3 in the last two, at other places */
  static const int b1[] = {0}, b5[] = {3, 7, 0, 9, 1};
  static const int b16[] = {2, 4, 5, 6, 1, 8, 10, 11, 12, 13, 14, 0, 15, 16, 17, 3};
  const int *batches[3] = {b1, b5, b16};
  const int64_t Bs[3] = {1, 5, 16};
  float *first_h = cf_test_floats(POOL * nh), *first_y = cf_test_floats(POOL * ny);
  int seen[POOL] = {0}, shared = 0;
  const int best = cf_linear_rows_path(-2);
  /* the three batches with the CPU's copy, then the batch of 16 with each copy */
  for (int run = 0; run < 3 + best + 1; run++) {
    const int bi = run < 3 ? run : 2;
    if (run >= 3) cf_linear_rows_path(run - 3);
    const int64_t B = Bs[bi];
    float *x0 = cf_test_floats((size_t)(B * P * D)),
          *eps = cf_test_floats((size_t)((N - 1) * B * epsw));
    for (int64_t b = 0; b < B; b++) {
      const int q = batches[bi][b];
      memcpy(x0 + b * P * D, px0 + q * P * D, (size_t)(P * D) * sizeof(float));
      for (int64_t t = 0; t + 1 < N; t++)
        memcpy(eps + (t * B + b) * epsw, peps + (q * (N - 1) + t) * epsw,
               (size_t)epsw * sizeof(float));
    }
    float *hs = cf_test_floats((size_t)B * nh), *ys = cf_test_floats((size_t)B * ny);
    roll(&m, B, kv, x0, eps, epsw, hs, ys);
    for (int64_t b = 0; b < B; b++) {
      const int q = batches[bi][b];
      if (!seen[q]) {
        seen[q] = 1;
        memcpy(first_h + q * nh, hs + b * nh, nh * sizeof(float));
        memcpy(first_y + q * ny, ys + b * ny, ny * sizeof(float));
        continue;
      }
      shared++;
      EXPECT(memcmp(first_h + q * nh, hs + b * nh, nh * sizeof(float)) == 0,
             "%s: hidden states of sequence %d differ in a batch of %lld (place %lld%s)", label, q,
             (long long)B, (long long)b, run >= 3 ? ", forced copy" : "");
      EXPECT(memcmp(first_y + q * ny, ys + b * ny, ny * sizeof(float)) == 0,
             "%s: samples of sequence %d differ in a batch of %lld (place %lld%s)", label, q,
             (long long)B, (long long)b, run >= 3 ? ", forced copy" : "");
    }
    free(x0), free(eps), free(hs), free(ys);
  }
  cf_linear_rows_path(-1);
  /* the check must be able to fail: a different sequence gives different bits */
  EXPECT(memcmp(first_y, first_y + 1 * ny, ny * sizeof(float)) != 0,
         "%s: two different sequences gave the same samples", label);
  printf("%s: batches of 1, 5, 16 and copies 0..%d: %d shared sequences bit-identical\n", label,
         best, shared);
  free(px0), free(peps), free(first_h), free(first_y);
  cf_model_release(&m);
}

int main(void) {
  run(CF_HEAD_GAUSS, 0.25, 5.0f, "gauss head, rotary_pct 0.25 (2 of 8 dims)");
  run(CF_HEAD_VAE, 1.0, 5.0f, "vae head, rotary_pct 1 (all 8 dims)");
  run(CF_HEAD_GAUSS, 0.0, 0.3f, "gauss head, no rotary, log-std clamped to [-0.3, 0.3]");
  run(CF_HEAD_GMM, 0.25, 5.0f, "gmm head (K = 4), rotary_pct 0.25");
  run(CF_HEAD_FM, 0.25, 5.0f, "fm head (F 12, 6 Euler steps), rotary_pct 0.25");
  run(CF_HEAD_CVAE, 0.5, 5.0f, "cvae head (dz 3), rotary_pct 0.5");
  run(CF_HEAD_CVAE, 0.5, 0.3f, "cvae head, log-stds clamped to [-0.3, 0.3]");
  test_head_noise();
  g_no_history = 1;
  run(CF_HEAD_GAUSS, 0.25, 5.0f, "gauss head, no history, time input");
  run(CF_HEAD_VAE, 1.0, 5.0f, "vae head, no history, time input");
  g_no_history = 0;
  test_linear_rows();
  for (int kv = 1; kv >= 0; kv--) {
    batch_invariance(CF_HEAD_GAUSS, kv);
    batch_invariance(CF_HEAD_VAE, kv);
    batch_invariance(CF_HEAD_GMM, kv);
    batch_invariance(CF_HEAD_FM, kv);
    batch_invariance(CF_HEAD_CVAE, kv);
  }
  return cf_test_done("test_kvcache");
}
