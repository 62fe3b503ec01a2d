/* test_model_diag.c: the model's diagnostics (model.h: point_loss, cf_model_attn_stats).
 *   - per-point losses: over the predicted points they add up to the forward's loss terms for
 *     every head (nll for gauss, gmm and cvae; recon for vae and fm), points that carry no
 *     loss stay 0, and a NULL point_loss changes nothing;
 *   - attention: with the q and k rows of every qkv weight zeroed attention is uniform, so the
 *     mass on the history equals the uniform figure and the entropy is the mean log of the
 *     number of visible keys; with random q and k it differs; without history it is 0;
 *     the q / k norms are the Frobenius norms of those rows;
 *   - a split model is refused. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "calmflow/model.h"
#include "calmflow/rng.h"
#include "cf_test.h"

static struct cf_model_cfg cfg_for(enum cf_head head, int no_history) {
  struct cf_model_cfg c = {.D = 3,
                           .S = 2,
                           .P = 2,
                           .N = 4,
                           .H = 16,
                           .layers = 2,
                           .heads = 2,
                           .ffn = 32,
                           .rotary_pct = 0.5,
                           .rotary_base = 10000.0,
                           .head = head,
                           .logstd_min = -7,
                           .logstd_max = 5,
                           .gmm_k = 3,
                           .fm_width = 8,
                           .fm_draws = 2,
                           .fm_steps = 4,
                           .cvae_dz = 2,
                           .no_history = no_history,
                           .time_input = no_history};
  return c;
}

static void fill(float *x, size_t n, uint64_t index) {
  struct cf_rng r = {.seed = 7, .domain = CF_RNG_DATA, .step = 0, .index = index};
  cf_rng_normal(&r, 0, x, n);
}

/* Forward B sequences of random points into m; out gets the loss terms. */
static cf_status forward(struct cf_model *m, int64_t B, struct cf_loss *out) {
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t J = c->N * c->P, T = J * c->S;
  float *z = cf_test_floats((size_t)(B * J * c->D)), *y = cf_test_floats((size_t)(B * J * c->D));
  float *eps = cf_test_floats((size_t)(B * T * c->H));
  fill(z, (size_t)(B * J * c->D), 1);
  fill(y, (size_t)(B * J * c->D), 2);
  fill(eps, (size_t)(B * T * c->H), 3);
  cf_status st = cf_model_forward(m, B, z, y, c->head == CF_HEAD_VAE ? eps : NULL, NULL,
                                  (double)B * (double)((c->N - 1) * c->P), 0.5f, out);
  free(z);
  free(y);
  free(eps);
  return st;
}

static void point_losses(enum cf_head head, const char *name) {
  struct cf_model_cfg c = cfg_for(head, 0);
  const int64_t B = 3, J = c.N * c.P, npred = (c.N - 1) * c.P;
  struct cf_model m;
  EXPECT_OK(cf_model_init(&m, &c, B), "init");
  cf_model_init_weights(&m, 11);
  struct cf_loss plain, with;
  EXPECT_OK(forward(&m, B, &plain), "forward without point losses");
  double pl[64] = {0};
  m.point_loss = pl;
  EXPECT_OK(forward(&m, B, &with), "forward with point losses");
  m.point_loss = NULL;
  double sum = 0;
  for (int64_t j = 0; j < J; j++) {
    if (j >= npred)
      EXPECT(pl[j] == 0.0, "%s: point %lld carries no loss, got %g", name, (long long)j, pl[j]);
    sum += pl[j];
  }
  const double n_pts = (double)(B * npred);
  const double want = (head == CF_HEAD_VAE || head == CF_HEAD_FM) ? with.recon : with.nll;
  EXPECT(fabs(sum / n_pts - want) <= 1e-9 * (1.0 + fabs(want)),
         "%s: point losses add up to %.12g per point, the forward says %.12g", name, sum / n_pts,
         want);
  EXPECT(memcmp(&plain, &with, sizeof plain) == 0, "%s: recording point losses changed the loss",
         name);
  for (int64_t j = 0; j + 1 < npred; j++)
    if (pl[j] == pl[j + 1])
      EXPECT(0, "%s: points %lld and %lld have the same loss %g (not per point?)", name,
             (long long)j, (long long)j + 1, pl[j]);
  cf_model_release(&m);
}

/* Zero the q and k rows of every layer's qkv weight and bias. */
static void zero_qk(struct cf_model *m) {
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t dh = c->H / c->heads;
  char name[64];
  for (int64_t l = 0; l < c->layers; l++) {
    snprintf(name, sizeof name, "layers.%lld.attn.qkv.weight", (long long)l);
    const struct cf_tensor_info *w = cf_model_find(m, name);
    snprintf(name, sizeof name, "layers.%lld.attn.qkv.bias", (long long)l);
    const struct cf_tensor_info *b = cf_model_find(m, name);
    for (int64_t h = 0; h < c->heads; h++)
      for (int64_t r = 0; r < 2 * dh; r++) {
        const int64_t row = h * 3 * dh + r;
        memset(m->params + w->offset + row * c->H, 0, (size_t)c->H * sizeof(float));
        m->params[b->offset + row] = 0.0f;
      }
  }
}

static void attention(void) {
  struct cf_model_cfg c = cfg_for(CF_HEAD_GAUSS, 0);
  const int64_t B = 2, S = c.S, P = c.P, T = c.N * P * S, dh = c.H / c.heads;
  struct cf_model m;
  EXPECT_OK(cf_model_init(&m, &c, B), "init");
  cf_model_init_weights(&m, 5);
  /* make q, k large enough that attention is far from uniform */
  for (int64_t l = 0; l < c.layers; l++) {
    char name[64];
    snprintf(name, sizeof name, "layers.%lld.attn.qkv.weight", (long long)l);
    const struct cf_tensor_info *w = cf_model_find(&m, name);
    for (size_t i = 0; i < w->numel; i++)
      m.params[w->offset + i] *= 40.0f;
  }
  struct cf_loss l;
  struct cf_attn_stats st[2];
  EXPECT_OK(forward(&m, B, &l), "forward");
  EXPECT_OK(cf_model_attn_stats(&m, B, st), "stats");
  double qn = 0, kn = 0;
  const struct cf_tensor_info *w0 = cf_model_find(&m, "layers.0.attn.qkv.weight");
  for (int64_t h = 0; h < c.heads; h++)
    for (int64_t r = 0; r < 2 * dh; r++)
      for (int64_t i = 0; i < c.H; i++) {
        double v = m.params[w0->offset + (h * 3 * dh + r) * c.H + i];
        *(r < dh ? &qn : &kn) += v * v;
      }
  EXPECT(fabs(st[0].q_norm - sqrt(qn)) < 1e-6 * sqrt(qn) &&
             fabs(st[0].k_norm - sqrt(kn)) < 1e-6 * sqrt(kn),
         "q / k norms %g %g, expected %g %g", st[0].q_norm, st[0].k_norm, sqrt(qn), sqrt(kn));
  EXPECT(fabs(st[0].past - st[0].uniform) > 1e-3 || fabs(st[1].past - st[1].uniform) > 1e-3,
         "sharp attention gives the uniform history mass (%g, %g vs %g)", st[0].past, st[1].past,
         st[0].uniform);

  /* uniform attention: the expected figures by counting keys */
  zero_qk(&m);
  EXPECT_OK(forward(&m, B, &l), "forward, q = k = 0");
  EXPECT_OK(cf_model_attn_stats(&m, B, st), "stats, q = k = 0");
  double uni = 0, ent = 0, n = 0;
  for (int64_t i = P * S; i < T; i++) {
    const double keys = (double)(i + 1), hist = (double)((i / (P * S)) * (P * S));
    uni += hist / keys;
    ent += log(keys);
    n += 1;
  }
  for (int k = 0; k < 2; k++) {
    EXPECT(fabs(st[k].uniform - uni / n) < 1e-12, "layer %d: uniform mass %.15g, expected %.15g", k,
           st[k].uniform, uni / n);
    EXPECT(fabs(st[k].past - uni / n) < 1e-5,
           "layer %d: q = k = 0 gives history mass %g, "
           "expected the uniform %g",
           k, st[k].past, uni / n);
    EXPECT(fabs(st[k].entropy - ent / n) < 1e-4, "layer %d: entropy %g, expected %g", k,
           st[k].entropy, ent / n);
    EXPECT(st[k].q_norm == 0.0 && st[k].k_norm == 0.0, "layer %d: zeroed q / k have norms %g %g", k,
           st[k].q_norm, st[k].k_norm);
  }
  cf_model_release(&m);

  /* no history: nothing on earlier time points */
  c = cfg_for(CF_HEAD_GAUSS, 1);
  EXPECT_OK(cf_model_init(&m, &c, B), "init, no history");
  cf_model_init_weights(&m, 5);
  EXPECT_OK(forward(&m, B, &l), "forward, no history");
  EXPECT_OK(cf_model_attn_stats(&m, B, st), "stats, no history");
  for (int k = 0; k < 2; k++)
    EXPECT(st[k].past == 0.0 && st[k].uniform == 0.0, "layer %d without history: mass %g / %g", k,
           st[k].past, st[k].uniform);
  EXPECT_FAIL(cf_model_attn_stats(&m, B + 1, st), "statistics of 3 sequences", "too many");
  cf_model_release(&m);
}

int main(void) {
  point_losses(CF_HEAD_GAUSS, "gauss");
  point_losses(CF_HEAD_GMM, "gmm");
  point_losses(CF_HEAD_VAE, "vae");
  point_losses(CF_HEAD_FM, "fm");
  point_losses(CF_HEAD_CVAE, "cvae");
  attention();
  return cf_test_done("test_model_diag");
}
