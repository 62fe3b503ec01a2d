/* test_prompt_model.c: the text prompt in the model (model.h, "text prompt") on one rank.
 *   - the tensor prompt.wte.weight (V, H) exists only with a prompt, on the first stage, with
 *     GPT-NeoX's N(0, 0.02) init; configuration errors name -data_prompt / -flow_history;
 *     cf_model_set_prompt refuses ids outside the vocabulary and models without a prompt;
 *   - the trajectory hidden states depend on the prompt ids (and the pad tokens count: a
 *     shorter prompt left-padded differs from the same prompt without pads), the loss is on
 *     the trajectory only, and the backward gives exactly zero gradient to wte rows no id
 *     uses and to no others;
 *   - a model with prompt length L whose prompt is all pads still differs from the same
 *     weights without a prompt (the pads are attended);
 *   - the KV cache: prefill + point-by-point extend (np = P, and a prompt longer than one
 *     extend's max_new), one extend over the whole trajectory, and recompute after a reset all
 *     give the training forward's hidden states to round-off; extend before prefill, a second
 *     prefill and an id outside the vocabulary are refused; a sequence's hidden states are
 *     bit-identical alone and inside a batch of three with other prompts; nothing allocates
 *     after init. */
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
  struct cf_rng r = {.seed = 4242, .domain = CF_RNG_DATA, .step = 3, .index = g_stream++};
  cf_rng_normal(&r, 0, x, n);
  for (size_t i = 0; i < n; i++)
    x[i] *= scale;
}

static double maxdiff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)a[i] - (double)b[i]));
  return m;
}

static double maxabs(const float *a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    m = fmax(m, fabs(a[i]));
  return m;
}

static struct cf_model_cfg cfg_of(enum cf_head head, int64_t L) {
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
                           .dropout = 0.1f,
                           .logstd_min = -7.0f,
                           .logstd_max = 5.0f,
                           .gmm_k = 3,
                           .fm_width = 8,
                           .fm_draws = 2,
                           .fm_steps = 4,
                           .cvae_dz = 3,
                           .prompt_len = L,
                           .vocab = 11,
                           .prompt_pad = 10};
  return c;
}

/* Perturb every weight so attention is far from uniform and every part matters. */
static void weights(struct cf_model *m) {
  cf_model_init_weights(m, 5);
  float *n = cf_test_floats(m->n_params);
  randn(n, m->n_params, 0.2f);
  for (size_t i = 0; i < m->n_params; i++)
    m->params[i] += n[i];
  free(n);
}

static void test_tensors_and_errors(void) {
  printf("prompt.wte.weight and configuration errors\n");
  struct cf_model_cfg c = cfg_of(CF_HEAD_GAUSS, 4);
  struct cf_model m, m0;
  EXPECT_OK(cf_model_init(&m, &c, 2), "init with a prompt");
  struct cf_model_cfg c0 = cfg_of(CF_HEAD_GAUSS, 0);
  EXPECT_OK(cf_model_init(&m0, &c0, 2), "init without a prompt");
  if (cf_test_fails) return;
  cf_model_init_weights(&m, 1);
  const struct cf_tensor_info *t = cf_model_find(&m, "prompt.wte.weight");
  EXPECT(t != NULL && t->ndim == 2 && t->shape[0] == 11 && t->shape[1] == 16 &&
             t->split == CF_SPLIT_NONE && t->numel == 11 * 16,
         "prompt.wte.weight missing or not (V, H) = (11, 16) replicated");
  EXPECT(cf_model_find(&m0, "prompt.wte.weight") == NULL, "a model without prompt has prompt.wte");
  EXPECT(m.n_tensors == m0.n_tensors + 1 && m.n_params == m0.n_params + 11 * 16,
         "the prompt adds more than its one tensor");
  if (t != NULL) { /* N(0, 0.02) */
    double s = 0, s2 = 0;
    for (size_t i = 0; i < t->numel; i++) {
      s += m.params[t->offset + i];
      s2 += (double)m.params[t->offset + i] * m.params[t->offset + i];
    }
    double sd = sqrt(s2 / (double)t->numel);
    EXPECT(sd > 0.015 && sd < 0.025 && fabs(s / (double)t->numel) < 0.005,
           "prompt.wte init std %g (expected about 0.02)", sd);
  }
  EXPECT(cf_model_local_tokens(&m) == 4 + c.N * c.P * c.S,
         "local rows %lld, expected the prompt's 4 plus the tokens",
         (long long)cf_model_local_tokens(&m));
  const int32_t bad[4] = {1, 2, 11, 3};
  EXPECT_FAIL(cf_model_set_prompt(&m, 0, 1, bad), "outside the vocabulary", "id 11 of 11");
  const int32_t neg[4] = {-1, 2, 1, 3};
  EXPECT_FAIL(cf_model_set_prompt(&m, 0, 1, neg), "outside the vocabulary", "id -1");
  EXPECT_FAIL(cf_model_set_prompt(&m, 1, 2, bad), "max_batch", "past max_batch");
  EXPECT_FAIL(cf_model_set_prompt(&m0, 0, 1, bad), "no prompt", "model without prompt");
  struct cf_model_cfg e = c;
  e.no_history = 1;
  EXPECT_FAIL(cf_model_cfg_check(&e), "-flow_history", "prompt without history");
  e = c;
  e.prompt_pad = 11;
  EXPECT_FAIL(cf_model_cfg_check(&e), "pad token id", "pad outside the vocabulary");
  e = c;
  e.vocab = 0;
  EXPECT_FAIL(cf_model_cfg_check(&e), "vocabulary size", "vocabulary 0");
  cf_model_release(&m);
  cf_model_release(&m0);
}

/* The forward on fixed inputs with the given ids (B sequences); hidden states into h. */
static double fwd(struct cf_model *m, int64_t B, const int32_t *ids, const float *z, const float *y,
                  float *h) {
  struct cf_loss l;
  if (ids != NULL) EXPECT_OK(cf_model_set_prompt(m, 0, B, ids), "set prompt");
  EXPECT_OK(cf_model_forward(m, B, z, y, NULL, NULL, 1.0, 1.0f, &l), "forward");
  const int64_t T = m->cfg.N * m->cfg.P * m->cfg.S;
  if (h != NULL) memcpy(h, cf_model_test_hidden(m), (size_t)(B * T * m->cfg.H) * sizeof(float));
  return l.loss;
}

static void test_effects(void) {
  printf("prompt effects on the forward and the wte gradient\n");
  const int64_t L = 4, B = 2;
  struct cf_model_cfg c = cfg_of(CF_HEAD_GAUSS, L), c0 = cfg_of(CF_HEAD_GAUSS, 0);
  struct cf_model m, m0;
  EXPECT_OK(cf_model_init(&m, &c, B), "init");
  EXPECT_OK(cf_model_init(&m0, &c0, B), "init without prompt");
  if (cf_test_fails) return;
  weights(&m);
  /* the same weights without the prompt table */
  for (int t = 0; t < m0.n_tensors; t++) {
    const struct cf_tensor_info *a = &m0.tensors[t], *b = cf_model_find(&m, a->name);
    memcpy(m0.params + a->offset, m.params + b->offset, a->numel * sizeof(float));
  }
  const int64_t J = c.N * c.P, T = J * c.S, H = c.H;
  size_t nz = (size_t)(B * J * c.D), nh = (size_t)(B * T * H);
  float *z = cf_test_floats(nz), *y = cf_test_floats(nz);
  float *h1 = cf_test_floats(nh), *h2 = cf_test_floats(nh), *h3 = cf_test_floats(nh);
  randn(z, nz, 1), randn(y, nz, 1);
  const int32_t ids_a[8] = {10, 10, 3, 7, 1, 2, 3, 4}; /* sequence 0: "3 7" left-padded */
  const int32_t ids_b[8] = {10, 10, 3, 8, 1, 2, 3, 4}; /* one id of sequence 0 changed */
  const int32_t ids_c[8] = {10, 3, 7, 10, 1, 2, 3, 4}; /* the pads moved */
  double la = fwd(&m, B, ids_a, z, y, h1);
  fwd(&m, B, ids_b, z, y, h2);
  double d_id = maxdiff(h1, h2, (size_t)(T * H)),
         d_other = maxdiff(h1 + T * H, h2 + T * H, (size_t)(T * H));
  EXPECT(d_id > 1e-4 && d_other == 0.0,
         "changing a prompt id of sequence 0: its hidden states moved %g, sequence 1's %g", d_id,
         d_other);
  fwd(&m, B, ids_c, z, y, h3);
  EXPECT(maxdiff(h1, h3, (size_t)(T * H)) > 1e-4, "moving the pads does not change anything");
  /* an all-pad prompt still differs from no prompt: pads are attended */
  const int32_t pads[8] = {10, 10, 10, 10, 10, 10, 10, 10};
  fwd(&m, B, pads, z, y, h2);
  fwd(&m0, B, NULL, z, y, h3);
  EXPECT(maxdiff(h2, h3, nh) > 1e-4, "an all-pad prompt gives the same as no prompt");
  /* the loss ignores the prompt positions' outputs; wte rows get gradient only where used */
  fwd(&m, B, ids_a, z, y, NULL);
  cf_model_zero_grad(&m);
  uint64_t a0 = cf_alloc_count();
  EXPECT_OK(cf_model_backward(&m), "backward");
  EXPECT(cf_alloc_count() == a0, "backward allocated");
  const struct cf_tensor_info *t = cf_model_find(&m, "prompt.wte.weight");
  int used[11] = {0};
  for (int i = 0; i < 8; i++)
    used[ids_a[i]] = 1;
  int ok_rows = 1;
  for (int v = 0; v < 11; v++) {
    double g = maxabs(m.grads + t->offset + v * H, (size_t)H);
    if ((used[v] && g == 0.0) || (!used[v] && g != 0.0)) ok_rows = 0;
  }
  EXPECT(ok_rows, "wte gradient rows do not match the ids used");
  /* the same loss as a forward at b0 = 1 of one sequence: ids are per stored sequence */
  EXPECT(isfinite(la), "loss %g", la);
  free(z), free(y), free(h1), free(h2), free(h3);
  cf_model_release(&m);
  cf_model_release(&m0);
}

/* ---- the KV cache ---- */

static void gather(const float *x, int64_t B, int64_t rows, int64_t w, int64_t j0, int64_t np,
                   float *out) {
  for (int64_t b = 0; b < B; b++)
    memcpy(out + b * np * w, x + (b * rows + j0) * w, (size_t)(np * w) * sizeof(float));
}

static void test_kvcache(enum cf_head head, int64_t L, const char *label) {
  printf("KV cache with a %lld-token prompt: %s\n", (long long)L, label);
  const int64_t B = 3;
  struct cf_model_cfg c = cfg_of(head, L);
  struct cf_model m;
  EXPECT_OK(cf_model_init(&m, &c, B), "init");
  if (cf_test_fails) return;
  weights(&m);
  const int64_t D = c.D, S = c.S, P = c.P, N = c.N, H = c.H, J = N * P, T = J * S;
  size_t nz = (size_t)(B * J * D), nh = (size_t)(B * T * H);
  float *z = cf_test_floats(nz), *y = cf_test_floats(nz), *zero = cf_test_floats(nh);
  float *href = cf_test_floats(nh), *hn = cf_test_floats(nh), *zn = cf_test_floats(nz);
  float *hall = cf_test_floats(nh), *h1 = cf_test_floats((size_t)(T * H));
  randn(z, nz, 1), randn(y, nz, 1);
  int32_t *ids = calloc((size_t)(B * L), sizeof(int32_t));
  for (int64_t b = 0; b < B; b++) /* sequence b: b pads, then ids */
    for (int64_t i = 0; i < L; i++)
      ids[b * L + i] = i < b ? 10 : (int32_t)((3 * b + 2 * i + 1) % 10);
  struct cf_loss l;
  EXPECT_OK(cf_model_set_prompt(&m, 0, B, ids), "set prompt");
  EXPECT_OK(cf_model_forward(&m, B, z, y, head == CF_HEAD_VAE ? zero : NULL, NULL, 1.0, 1.0f, &l),
            "forward");
  memcpy(href, cf_model_test_hidden(&m), nh * sizeof(float));
  const double tol = 1e-5 * fmax(1.0, maxabs(href, nh));

  struct cf_kvcache ca, cb;
  EXPECT_OK(cf_kvcache_init(&ca, &m, B, T, P * S), "cache, max_new P*S");
  EXPECT_OK(cf_kvcache_init(&cb, &m, B, T, T), "cache, max_new T");
  if (cf_test_fails) return;
  uint64_t a0 = cf_alloc_count();
  cf_err_clear();
  gather(z, B, J, D, 0, P, zn);
  EXPECT_FAIL(cf_model_extend(&m, &ca, zn, P, hn), "prefill", "extend before prefill");
  int32_t keep = ids[1];
  ids[1] = 11;
  EXPECT_FAIL(cf_model_prefill(&m, &ca, ids, NULL, NULL), "outside the vocabulary", "bad id");
  ids[1] = keep;
  cf_kvcache_reset(&ca);
  EXPECT_OK(cf_model_prefill(&m, &ca, ids, NULL, NULL), "prefill");
  EXPECT(ca.len == 0, "prefill counts in len (%lld)", (long long)ca.len);
  EXPECT_FAIL(cf_model_prefill(&m, &ca, ids, NULL, NULL), "empty cache", "second prefill");
  double d1 = 0;
  for (int64_t t = 0; t < N; t++) {
    gather(z, B, J, D, t * P, P, zn);
    EXPECT_OK(cf_model_extend(&m, &ca, zn, P, hn), "extend");
    for (int64_t b = 0; b < B; b++)
      d1 = fmax(d1,
                maxdiff(hn + b * P * S * H, href + (b * T + t * P * S) * H, (size_t)(P * S * H)));
  }
  printf("  prefill + point-by-point extend vs training forward: max |diff| %.2e (tol %.1e)\n", d1,
         tol);
  EXPECT(d1 <= tol, "%s: point-by-point extend differs by %g", label, d1);
  EXPECT_OK(cf_model_prefill(&m, &cb, ids, NULL, NULL), "prefill whole");
  EXPECT_OK(cf_model_extend(&m, &cb, z, J, hall), "extend whole");
  double d2 = maxdiff(hall, href, nh);
  printf("  one extend over the trajectory vs training forward: max |diff| %.2e\n", d2);
  EXPECT(d2 <= tol, "%s: whole extend differs by %g", label, d2);
  /* recompute after a reset: the prompt must be prefilled again */
  cf_kvcache_reset(&cb);
  cf_err_clear();
  EXPECT_FAIL(cf_model_extend(&m, &cb, z, J, hall), "prefill", "extend after reset");
  EXPECT_OK(cf_model_prefill(&m, &cb, ids, NULL, NULL), "prefill again");
  EXPECT_OK(cf_model_extend(&m, &cb, z, J, hn), "extend again");
  EXPECT(memcmp(hn, hall, nh * sizeof(float)) == 0, "%s: a reset cache gives other bits", label);
  EXPECT(cf_alloc_count() == a0, "%s: prefill / extend allocated", label);
  /* sequence 1 alone: the same bits */
  struct cf_kvcache c1;
  EXPECT_OK(cf_kvcache_init(&c1, &m, 1, T, T), "cache of one");
  EXPECT_OK(cf_model_prefill(&m, &c1, ids + L, NULL, NULL), "prefill one");
  EXPECT_OK(cf_model_extend(&m, &c1, z + J * D, J, h1), "extend one");
  EXPECT(memcmp(h1, hall + T * H, (size_t)(T * H) * sizeof(float)) == 0,
         "%s: a sequence alone differs from the same sequence in a batch of 3", label);
  cf_kvcache_release(&c1);
  cf_kvcache_release(&ca);
  cf_kvcache_release(&cb);
  /* a model without prompt refuses prefill */
  struct cf_model_cfg c0 = cfg_of(head, 0);
  struct cf_model m0;
  EXPECT_OK(cf_model_init(&m0, &c0, 1), "init without prompt");
  EXPECT_OK(cf_kvcache_init(&c1, &m0, 1, T, T), "cache without prompt");
  EXPECT_FAIL(cf_model_prefill(&m0, &c1, ids, NULL, NULL), "without a prompt", "prefill");
  cf_kvcache_release(&c1);
  cf_model_release(&m0);
  free(ids), free(z), free(y), free(zero), free(href), free(hn), free(zn), free(hall), free(h1);
  cf_model_release(&m);
}

int main(void) {
  test_tensors_and_errors();
  test_effects();
  test_kvcache(CF_HEAD_GAUSS, 3, "gauss head");
  test_kvcache(CF_HEAD_GAUSS, 7, "gauss head, prompt longer than one extend (P*S = 4)");
  test_kvcache(CF_HEAD_VAE, 5, "vae head");
  return cf_test_done("test_prompt_model");
}
