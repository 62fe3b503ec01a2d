/* test_kvcache.c: the KV-cached incremental forward against the training forward.
 * Final hidden states from cf_model_extend point by point (np = P per call, max_new = P*S),
 * from one extend over the whole sequence, and from uneven chunks all equal those of
 * cf_model_forward (to float round-off); cf_head_sample with tau = 0 gives the gauss mean /
 * the vae decoding of mu, and with tau = 1 matches the training head on the same noise;
 * bad extends are refused; nothing allocates after init. Both heads, two rotary widths. */
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
                             .logstd_max = lsmax};
  const int64_t B = 3, D = cfg.D, S = cfg.S, P = cfg.P, N = cfg.N, H = cfg.H;
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
  float *href = cf_test_floats(nh), *oref = cf_test_floats((size_t)(B * J * 2 * D));
  memcpy(href, cf_model_test_hidden(&m), nh * sizeof(float));
  size_t nout = (size_t)(B * J * (head == CF_HEAD_GAUSS ? 2 * D : D));
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
  EXPECT_OK(cf_head_sample(&m, &cb, J, hall, NULL, 0.0f, ysamp), "head sample tau=0");
  double otol = 1e-5 * fmax(1.0, maxabs(oref, nout)), d4 = 0;
  for (int64_t r = 0; r < B * J; r++)
    for (int64_t d = 0; d < D; d++) {
      float want = head == CF_HEAD_GAUSS ? oref[r * 2 * D + d] : oref[r * D + d];
      d4 = fmax(d4, fabs(ysamp[r * D + d] - want));
    }
  printf("  head sample tau=0 vs %s: max |diff| %.2e\n",
         head == CF_HEAD_GAUSS ? "the gauss mean" : "decoding mu", d4);
  EXPECT(d4 <= otol, "%s: head sample with tau=0 differs by %g", label, d4);

  float *enoise = cf_test_floats(head == CF_HEAD_GAUSS ? nz : nh);
  randn(enoise, head == CF_HEAD_GAUSS ? nz : nh, 1.0f);
  EXPECT_OK(cf_head_sample(&m, &cb, J, hall, enoise, 1.0f, ysamp), "head sample tau=1");
  double d5 = 0;
  if (head == CF_HEAD_GAUSS) {
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
  /* temperature matters */
  float *yt = cf_test_floats(nz);
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

int main(void) {
  run(CF_HEAD_GAUSS, 0.25, 5.0f, "gauss head, rotary_pct 0.25 (2 of 8 dims)");
  run(CF_HEAD_VAE, 1.0, 5.0f, "vae head, rotary_pct 1 (all 8 dims)");
  run(CF_HEAD_GAUSS, 0.0, 0.3f, "gauss head, no rotary, log-std clamped to [-0.3, 0.3]");
  return cf_test_done("test_kvcache");
}
