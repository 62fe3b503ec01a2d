/* kvcache.c: inference with a KV cache. cf_model_extend runs the encoder and the transformer
 * on newly appended points only, attending to the cached rotated keys and values of the
 * prefix; cf_head_sample draws the head's prediction from final hidden states.
 *
 * Batch invariance: a sequence's results are bit-identical whatever other sequences share the
 * call and wherever it sits among them, so a sample depends only on its own inputs, not on
 * -sample_batch or the number of ranks. Every linear runs through cf_linear_rows (each
 * element a fixed sequence of float operations, independent of the number of rows);
 * LayerNorm, GELU, the LN+ReLU unit, rotary and softmax work row by row or element by
 * element; attention is one cblas_sgemm per (sequence, head) whose shape (new tokens x cached
 * tokens x head size) does not depend on the number of sequences. Training keeps
 * cf_linear_fwd (cblas_sgemm over all rows). */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "calmflow/mem.h"
#include "model/layers.h"

struct cf_kv_impl {
  struct cf_arena arena;
  int64_t layers, H, heads, dh, S; /* the model this cache was made for */
  float *k, *v;                    /* (layers, B, heads, max_len, dh) rotated keys, values */
  float *cs, *sn;                  /* (max_len, rot/2) */
  /* workspace for up to max_new tokens (pmax points) per sequence */
  struct cf_unit_a enc; /* (B*pmax, SH) */
  float *x, *xn;        /* (B*max_new, H) residual stream */
  float *xh, *rs, *u;   /* LayerNorm scratch */
  float *qkv;           /* (B*max_new, 3H) */
  float *ao;            /* (B*max_new, H) */
  float *f;             /* (B*max_new, ffn) */
  float *sc;            /* (max_new, max_len) scores */
  struct cf_unit_a umu, ulv;
  float *mu, *lv, *zeta;     /* (B*max_new, H) vae */
  struct cf_unit_a ud1, ud2; /* (B*pmax, I) */
  float *out;                /* (B*pmax, Dout) */
};

static void unit_layout(struct cf_arena *a, struct cf_unit_a *u, size_t rows, size_t n) {
  u->xh = cf_arena_floats(a, rows * n);
  u->rs = cf_arena_floats(a, rows);
  u->mask = NULL;
  u->d = cf_arena_floats(a, rows * n);
}

static void kv_layout(struct cf_kv_impl *kv, const struct cf_model *m, int64_t B, int64_t max_len,
                      int64_t max_new, struct cf_arena *a) {
  const struct cf_model_cfg *c = &m->cfg;
  const struct cf_model_impl *im = m->impl;
  size_t H = (size_t)c->H, Mt = (size_t)(B * max_new), Mp = (size_t)(B * (max_new / c->S));
  size_t half = (size_t)(im->rot / 2);
  kv->k = cf_arena_floats(a, (size_t)c->layers * (size_t)B * (size_t)max_len * H);
  kv->v = cf_arena_floats(a, (size_t)c->layers * (size_t)B * (size_t)max_len * H);
  kv->cs = cf_arena_floats(a, (size_t)max_len * half);
  kv->sn = cf_arena_floats(a, (size_t)max_len * half);
  unit_layout(a, &kv->enc, Mp, (size_t)im->SH);
  kv->x = cf_arena_floats(a, Mt * H);
  kv->xn = cf_arena_floats(a, Mt * H);
  kv->xh = cf_arena_floats(a, Mt * H);
  kv->rs = cf_arena_floats(a, Mt);
  kv->u = cf_arena_floats(a, Mt * H);
  kv->qkv = cf_arena_floats(a, Mt * 3 * H);
  kv->ao = cf_arena_floats(a, Mt * H);
  kv->f = cf_arena_floats(a, Mt * (size_t)c->ffn);
  kv->sc = cf_arena_floats(a, (size_t)max_new * (size_t)max_len);
  if (c->head == CF_HEAD_VAE) {
    unit_layout(a, &kv->umu, Mt, H);
    unit_layout(a, &kv->ulv, Mt, H);
    kv->mu = cf_arena_floats(a, Mt * H);
    kv->lv = cf_arena_floats(a, Mt * H);
    kv->zeta = cf_arena_floats(a, Mt * H);
  }
  unit_layout(a, &kv->ud1, Mp, (size_t)im->Idec);
  unit_layout(a, &kv->ud2, Mp, (size_t)im->Idec);
  kv->out = cf_arena_floats(a, Mp * (size_t)im->Dout);
}

cf_status cf_kvcache_init(struct cf_kvcache *c, const struct cf_model *m, int64_t B,
                          int64_t max_len, int64_t max_new) {
  CF_CHECK(c != NULL, CF_EINVAL, "kvcache: init without a cache");
  memset(c, 0, sizeof *c);
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "kvcache: model not initialized");
  const struct cf_model_cfg *mc = &m->cfg;
  const struct cf_model_impl *mi = m->impl;
  CF_CHECK(mi->first && mi->last && mi->n_tp == 1 && mi->n_cp == 1, CF_EINVAL,
           "kvcache: sampling needs the whole model on each rank (no tensor, pipeline or "
           "context split)");
  CF_CHECK(B >= 1 && max_len >= 1, CF_EINVAL,
           "kvcache: need at least one sequence and one token (got B %lld, max_len %lld)",
           (long long)B, (long long)max_len);
  CF_CHECK(max_new >= mc->S && max_new <= max_len, CF_EINVAL,
           "kvcache: max_new (%lld) must be in [S = %lld, max_len = %lld]", (long long)max_new,
           (long long)mc->S, (long long)max_len);
  double big = (double)mc->layers * (double)B * (double)max_len * (double)mc->H;
  double rows = (double)B * (double)max_new;
  double wide = rows * fmax((double)mc->ffn, 3.0 * (double)mc->H);
  CF_CHECK(rows <= (double)INT_MAX && (double)max_len <= (double)INT_MAX && big <= 1e12 &&
               wide <= 1e12 && (double)max_new * (double)max_len <= 1e12,
           CF_EINVAL, "kvcache: %lld sequences x %lld tokens is too large", (long long)B,
           (long long)max_len);
  void *p = NULL;
  CF_TRY(cf_alloc(&p, sizeof(struct cf_kv_impl), "kv cache state"));
  struct cf_kv_impl *kv = p;
  const struct cf_model_impl *im = m->impl;
  kv->layers = mc->layers;
  kv->H = mc->H;
  kv->heads = mc->heads;
  kv->dh = im->dh;
  kv->S = mc->S;
  cf_arena_plan(&kv->arena);
  kv_layout(kv, m, B, max_len, max_new, &kv->arena);
  cf_status st = cf_arena_commit(&kv->arena, 0, "kv cache");
  if (st != CF_OK) {
    cf_free(&p);
    cf_trace_push(__FILE__, __LINE__, "cf_arena_commit");
    return st;
  }
  kv_layout(kv, m, B, max_len, max_new, &kv->arena);
  cf_rotary_tables(kv->cs, kv->sn, max_len, im->rot, mc->rotary_base);
  c->B = B;
  c->max_len = max_len;
  c->max_new = max_new;
  c->len = 0;
  c->impl = kv;
  return CF_OK;
}

void cf_kvcache_release(struct cf_kvcache *c) {
  if (c == NULL) return;
  struct cf_kv_impl *kv = c->impl;
  if (kv != NULL) {
    cf_arena_release(&kv->arena);
    void *p = kv;
    cf_free(&p);
  }
  memset(c, 0, sizeof *c);
}

void cf_kvcache_reset(struct cf_kvcache *c) {
  if (c != NULL) c->len = 0;
}

/* Row-deterministic copies of cf_mlp2_fwd and cf_decoder_fwd (no dropout). */
static void mlp2_rows(const struct cf_lin *l1, const struct cf_lin *l2, const float *in, int64_t M,
                      const struct cf_unit_a *u, float *out) {
  cf_linear_rows(in, M, l1->w, l1->b, l1->out, l1->in, 0, u->xh);
  cf_lnrelu_fwd(u->xh, u->rs, NULL, M, l1->out, u->d);
  cf_linear_rows(u->d, M, l2->w, l2->b, l2->out, l2->in, 0, out);
}

static void decoder_rows(const struct cf_model_impl *im, const float *in, int64_t M,
                         const struct cf_unit_a *u1, const struct cf_unit_a *u2, float *out) {
  mlp2_rows(&im->dec1, &im->dec2, in, M, u1, u2->xh);
  cf_lnrelu_fwd(u2->xh, u2->rs, NULL, M, im->Idec, u2->d);
  cf_linear_rows(u2->d, M, im->dec3.w, im->dec3.b, im->Dout, im->Idec, 0, out);
}

static cf_status kv_match(const struct cf_model *m, const struct cf_kvcache *c) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "kvcache: model not initialized");
  CF_CHECK(c != NULL && c->impl != NULL, CF_EINVAL, "kvcache: cache not initialized");
  const struct cf_kv_impl *kv = c->impl;
  CF_CHECK(kv->layers == m->cfg.layers && kv->H == m->cfg.H && kv->heads == m->cfg.heads &&
               kv->S == m->cfg.S,
           CF_EINVAL, "kvcache: cache was made for a different model shape");
  return CF_OK;
}

cf_status cf_model_extend(const struct cf_model *m, struct cf_kvcache *c, const float *z_new,
                          int64_t np, float *h_out) {
  CF_TRY(kv_match(m, c));
  const struct cf_model_cfg *cf = &m->cfg;
  const struct cf_model_impl *im = m->impl;
  struct cf_kv_impl *kv = c->impl;
  const int64_t S = cf->S, H = cf->H, H3 = 3 * H, heads = cf->heads, dh = im->dh;
  CF_CHECK(np >= 1 && np * S <= c->max_new, CF_EINVAL,
           "kvcache: extend by %lld points (%lld tokens) but the cache takes 1..%lld tokens per "
           "call",
           (long long)np, (long long)(np * S), (long long)c->max_new);
  CF_CHECK(c->len + np * S <= c->max_len, CF_EINVAL,
           "kvcache: extend to %lld tokens exceeds max_len %lld", (long long)(c->len + np * S),
           (long long)c->max_len);
  CF_CHECK(z_new != NULL && h_out != NULL, CF_EINVAL, "kvcache: extend needs z_new and h_out");
  const int64_t B = c->B, n = np * S, M = B * n, len = c->len, L = len + n;
  const float scale = (float)(1.0 / sqrt((double)dh));

  /* encoder: z_new (B*np, D) -> x (B*np, SH) = (M, H) */
  float *x = kv->x, *xn = kv->xn;
  mlp2_rows(&im->enc1, &im->enc2, z_new, B * np, &kv->enc, x);

  for (int64_t l = 0; l < cf->layers; l++) {
    const struct cf_block_p *p = &im->blk[l];
    cf_layernorm_fwd(x, M, H, p->ln1.w, p->ln1.b, kv->xh, kv->rs, kv->u);
    cf_linear_rows(kv->u, M, p->qkv.w, p->qkv.b, H3, H, 0, kv->qkv);
    for (int64_t b = 0; b < B; b++) {
      float *qb = kv->qkv + b * n * H3;
      cf_rotary_apply(qb, n, H3, heads, dh, im->rot, kv->cs, kv->sn, len, 0);
      for (int64_t h = 0; h < heads; h++) {
        size_t cbase = (size_t)(((l * B + b) * heads + h) * c->max_len) * (size_t)dh;
        float *Kc = kv->k + cbase, *Vc = kv->v + cbase;
        for (int64_t t = 0; t < n; t++) {
          const float *src = qb + t * H3 + h * 3 * dh;
          memcpy(Kc + (len + t) * dh, src + dh, (size_t)dh * sizeof(float));
          memcpy(Vc + (len + t) * dh, src + 2 * dh, (size_t)dh * sizeof(float));
        }
        /* scores (n, L) over the cached prefix and the new tokens, causal. The same sgemm
         * shapes for every sequence and every B, so OpenBLAS takes the same path for each */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)L, (int)dh, scale,
                    qb + h * 3 * dh, (int)H3, Kc, (int)dh, 0.0f, kv->sc, (int)L);
        for (int64_t t = 0; t < n; t++)
          cf_causal_softmax_row(kv->sc + t * L, len + t, L);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)dh, (int)L, 1.0f,
                    kv->sc, (int)L, Vc, (int)dh, 0.0f, kv->ao + b * n * H + h * dh, (int)H);
      }
    }
    memcpy(xn, x, (size_t)(M * H) * sizeof(float));
    cf_linear_rows(kv->ao, M, p->out.w, p->out.b, H, H, 1, xn);
    cf_layernorm_fwd(x, M, H, p->ln2.w, p->ln2.b, kv->xh, kv->rs, kv->u);
    cf_linear_rows(kv->u, M, p->fc1.w, p->fc1.b, cf->ffn, H, 0, kv->f);
    cf_gelu_fwd(kv->f, kv->f, NULL, (size_t)(M * cf->ffn));
    cf_linear_rows(kv->f, M, p->fc2.w, p->fc2.b, H, cf->ffn, 1, xn);
    float *tmp = x;
    x = xn;
    xn = tmp;
  }
  cf_layernorm_fwd(x, M, H, im->lnf.w, im->lnf.b, kv->xh, kv->rs, h_out);
  c->len = L;
  return CF_OK;
}

cf_status cf_head_sample(const struct cf_model *m, struct cf_kvcache *c, int64_t np, const float *h,
                         const float *eps, float tau, float *y) {
  CF_TRY(kv_match(m, c));
  const struct cf_model_cfg *cf = &m->cfg;
  const struct cf_model_impl *im = m->impl;
  struct cf_kv_impl *kv = c->impl;
  const int64_t S = cf->S, D = cf->D, H = cf->H;
  CF_CHECK(np >= 1 && np * S <= c->max_new, CF_EINVAL,
           "kvcache: head sample of %lld points but the cache takes 1..%lld tokens per call",
           (long long)np, (long long)c->max_new);
  CF_CHECK(h != NULL && y != NULL, CF_EINVAL, "kvcache: head sample needs h and y");
  CF_CHECK(eps != NULL || tau == 0.0f, CF_EINVAL, "kvcache: head sample with tau != 0 needs eps");
  const int64_t Mp = c->B * np, M = Mp * S;
  if (cf->head == CF_HEAD_GAUSS) {
    decoder_rows(im, h, Mp, &kv->ud1, &kv->ud2, kv->out);
    const float lo = cf->logstd_min, hi = cf->logstd_max;
    for (int64_t r = 0; r < Mp; r++) {
      const float *o = kv->out + r * 2 * D;
      for (int64_t d = 0; d < D; d++) {
        float ls = o[D + d] < lo ? lo : (o[D + d] > hi ? hi : o[D + d]);
        float e = eps != NULL ? eps[r * D + d] : 0.0f;
        y[r * D + d] = o[d] + tau * expf(ls) * e;
      }
    }
  } else {
    mlp2_rows(&im->mu1, &im->mu2, h, M, &kv->umu, kv->mu);
    mlp2_rows(&im->lv1, &im->lv2, h, M, &kv->ulv, kv->lv);
    size_t tot = (size_t)(M * H);
    for (size_t i = 0; i < tot; i++) {
      float e = eps != NULL ? eps[i] : 0.0f;
      kv->zeta[i] = kv->mu[i] + tau * sqrtf(expf(kv->lv[i]) + 1e-4f) * e;
    }
    decoder_rows(im, kv->zeta, Mp, &kv->ud1, &kv->ud2, y);
  }
  return CF_OK;
}
