/* model.c: the CaLMFlow network's configuration check, parameter layout (one arena for
 * parameters, one for gradients, named tensors), initialization, and the training forward
 * and backward: encoder, GPT-NeoX blocks, final LayerNorm, vae or gauss head, decoder. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/rng.h"
#include "model/layers.h"

#define CF_MAX_DIM (1LL << 24) /* largest single size option */
#define CF_MAX_BUF (1LL << 40) /* largest single buffer, in floats */
#define CF_NAME_LEN 64         /* bytes per tensor name */
#define CF_HALF_LOG_2PI 0.91893853320467274178

enum { INIT_ZERO = 0, INIT_ONE = 1, INIT_NORMAL = 2, INIT_UNIFORM = 3 };

cf_status cf_model_cfg_check(const struct cf_model_cfg *c) {
  CF_CHECK(c != NULL, CF_EINVAL, "model: no configuration given");
#define CF_SIZE_OK(v, lo, opt)                                                                     \
  CF_CHECK((v) >= (lo) && (v) <= CF_MAX_DIM, CF_EINVAL, opt " must be in [%d, %lld] (got %lld)",   \
           (int)(lo), CF_MAX_DIM, (long long)(v))
  CF_SIZE_OK(c->H, 1, "-net_hidden");
  CF_SIZE_OK(c->heads, 1, "-net_heads");
  CF_CHECK(c->H % c->heads == 0, CF_EINVAL,
           "option -net_heads: -net_hidden (%lld) must be a multiple of -net_heads (%lld)",
           (long long)c->H, (long long)c->heads);
  CF_SIZE_OK(c->layers, 1, "-net_layers");
  CF_SIZE_OK(c->ffn, 1, "-net_ffn");
  CF_SIZE_OK(c->S, 1, "-flow_spatial_tokens");
  CF_SIZE_OK(c->P, 1, "-flow_trajectories");
  CF_SIZE_OK(c->N, 2, "-flow_time_points");
  CF_SIZE_OK(c->D, 1, "-data_dim");
#undef CF_SIZE_OK
  CF_CHECK(c->dropout >= 0.0f && c->dropout < 1.0f, CF_EINVAL,
           "-net_dropout must be in [0, 1) (got %g)", (double)c->dropout);
  CF_CHECK(c->rotary_pct >= 0.0 && c->rotary_pct <= 1.0, CF_EINVAL,
           "-net_rotary_pct must be in [0, 1] (got %g)", c->rotary_pct);
  CF_CHECK(c->rotary_base > 0.0 && isfinite(c->rotary_base), CF_EINVAL,
           "-net_rotary_base must be positive and finite (got %g)", c->rotary_base);
  CF_CHECK(c->head == CF_HEAD_VAE || c->head == CF_HEAD_GAUSS, CF_EINVAL,
           "-flow_head must be vae or gauss for this model (got code %d)", (int)c->head);
  CF_CHECK(c->logstd_min < c->logstd_max && isfinite(c->logstd_min) && isfinite(c->logstd_max),
           CF_EINVAL, "-net_logstd_min (%g) must be below -net_logstd_max (%g), both finite",
           (double)c->logstd_min, (double)c->logstd_max);
  /* Derived sizes: the sequence and the biggest per-sequence buffers must stay addressable. */
  double T = (double)c->N * (double)c->P * (double)c->S;
  CF_CHECK(T <= (double)INT_MAX, CF_EINVAL,
           "-flow_time_points x -flow_trajectories x -flow_spatial_tokens = %.0f tokens per "
           "sequence is too many (at most %d)",
           T, INT_MAX);
  CF_CHECK((double)c->S * (double)c->H <= (double)CF_MAX_DIM, CF_EINVAL,
           "-flow_spatial_tokens x -net_hidden = %.0f is too large (at most %lld)",
           (double)c->S * (double)c->H, CF_MAX_DIM);
  return CF_OK;
}

/* ---- tensor list ---- */

struct tbuild {
  struct cf_model *m;
  struct cf_model_impl *im;
  int fill; /* 0: count only */
  int n;
  size_t off;
};

static size_t add_tensor(struct tbuild *t, const char *name, int ndim, int64_t d0, int64_t d1,
                         int kind, int64_t fan_in) {
  size_t numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1), off = t->off;
  if (t->fill) {
    struct cf_tensor_info *ti = &t->m->tensors[t->n];
    char *nm = t->im->names + (size_t)t->n * CF_NAME_LEN;
    snprintf(nm, CF_NAME_LEN, "%s", name);
    ti->name = nm;
    ti->ndim = ndim;
    ti->shape[0] = d0;
    ti->shape[1] = ndim == 2 ? d1 : 0;
    ti->offset = off;
    ti->numel = numel;
    t->im->init_kind[t->n] = (signed char)kind;
    t->im->fan_in[t->n] = fan_in;
  }
  t->n++;
  t->off += numel;
  return off;
}

static void add_lin(struct tbuild *t, struct cf_lin *L, const char *prefix, int64_t out, int64_t in,
                    int transformer) {
  char nm[CF_NAME_LEN];
  snprintf(nm, sizeof nm, "%s.weight", prefix);
  size_t ow = add_tensor(t, nm, 2, out, in, transformer ? INIT_NORMAL : INIT_UNIFORM, in);
  snprintf(nm, sizeof nm, "%s.bias", prefix);
  size_t ob = add_tensor(t, nm, 1, out, 0, transformer ? INIT_ZERO : INIT_UNIFORM, in);
  if (t->fill) {
    L->w = t->m->params + ow;
    L->gw = t->m->grads + ow;
    L->b = t->m->params + ob;
    L->gb = t->m->grads + ob;
    L->out = out;
    L->in = in;
  }
}

static void add_ln(struct tbuild *t, struct cf_lnp *L, const char *prefix, int64_t n) {
  char nm[CF_NAME_LEN];
  snprintf(nm, sizeof nm, "%s.weight", prefix);
  size_t ow = add_tensor(t, nm, 1, n, 0, INIT_ONE, n);
  snprintf(nm, sizeof nm, "%s.bias", prefix);
  size_t ob = add_tensor(t, nm, 1, n, 0, INIT_ZERO, n);
  if (t->fill) {
    L->w = t->m->params + ow;
    L->gw = t->m->grads + ow;
    L->b = t->m->params + ob;
    L->gb = t->m->grads + ob;
  }
}

static void build_tensors(struct tbuild *t) {
  const struct cf_model_cfg *c = &t->m->cfg;
  struct cf_model_impl *im = t->im;
  int64_t H = c->H, SH = im->SH;
  add_lin(t, &im->enc1, "enc.fc1", SH, c->D, 0);
  add_lin(t, &im->enc2, "enc.fc2", SH, SH, 0);
  for (int64_t l = 0; l < c->layers; l++) {
    struct cf_block_p dummy, *p = t->fill ? &im->blk[l] : &dummy;
    char pre[CF_NAME_LEN];
    snprintf(pre, sizeof pre, "layers.%lld.ln1", (long long)l);
    add_ln(t, &p->ln1, pre, H);
    snprintf(pre, sizeof pre, "layers.%lld.ln2", (long long)l);
    add_ln(t, &p->ln2, pre, H);
    snprintf(pre, sizeof pre, "layers.%lld.attn.qkv", (long long)l);
    add_lin(t, &p->qkv, pre, 3 * H, H, 1);
    snprintf(pre, sizeof pre, "layers.%lld.attn.out", (long long)l);
    add_lin(t, &p->out, pre, H, H, 1);
    snprintf(pre, sizeof pre, "layers.%lld.mlp.fc1", (long long)l);
    add_lin(t, &p->fc1, pre, c->ffn, H, 1);
    snprintf(pre, sizeof pre, "layers.%lld.mlp.fc2", (long long)l);
    add_lin(t, &p->fc2, pre, H, c->ffn, 1);
  }
  add_ln(t, &im->lnf, "lnf", H);
  if (c->head == CF_HEAD_VAE) {
    add_lin(t, &im->mu1, "head.mu.fc1", H, H, 0);
    add_lin(t, &im->mu2, "head.mu.fc2", H, H, 0);
    add_lin(t, &im->lv1, "head.lv.fc1", H, H, 0);
    add_lin(t, &im->lv2, "head.lv.fc2", H, H, 0);
  }
  add_lin(t, &im->dec1, "dec.fc1", im->Idec, SH, 0);
  add_lin(t, &im->dec2, "dec.fc2", im->Idec, im->Idec, 0);
  add_lin(t, &im->dec3, "dec.fc3", im->Dout, im->Idec, 0);
}

/* ---- activation layout (planned, then carved) ---- */

static void unit_layout(struct cf_arena *a, struct cf_unit_a *u, size_t rows, size_t n, int drop) {
  u->xh = cf_arena_floats(a, rows * n);
  u->rs = cf_arena_floats(a, rows);
  u->mask = drop ? cf_arena_floats(a, rows * n) : NULL;
  u->d = cf_arena_floats(a, rows * n);
}

static void act_layout(struct cf_model_impl *im, const struct cf_model_cfg *c, int64_t B,
                       struct cf_arena *a) {
  size_t H = (size_t)c->H, R = (size_t)(B * im->T), Rp = (size_t)(B * im->J);
  size_t T = (size_t)im->T, Id = (size_t)im->Idec, SH = (size_t)im->SH, ffn = (size_t)c->ffn;
  size_t half = (size_t)(im->rot / 2);
  int drop = c->dropout > 0.0f;
  im->cs = cf_arena_floats(a, T * half);
  im->sn = cf_arena_floats(a, T * half);
  im->z = cf_arena_floats(a, Rp * (size_t)c->D);
  unit_layout(a, &im->enc, Rp, SH, drop);
  for (int64_t l = 0; l < c->layers; l++) {
    struct cf_block_a *ba = &im->ba[l];
    ba->x = cf_arena_floats(a, R * H);
    ba->xh1 = cf_arena_floats(a, R * H);
    ba->rs1 = cf_arena_floats(a, R);
    ba->u1 = cf_arena_floats(a, R * H);
    ba->qkv = cf_arena_floats(a, R * 3 * H);
    ba->probs = cf_arena_floats(a, (size_t)B * (size_t)c->heads * T * T);
    ba->ao = cf_arena_floats(a, R * H);
    ba->xh2 = cf_arena_floats(a, R * H);
    ba->rs2 = cf_arena_floats(a, R);
    ba->u2 = cf_arena_floats(a, R * H);
    ba->f = cf_arena_floats(a, R * ffn);
    ba->g = cf_arena_floats(a, R * ffn);
    ba->cdf = cf_arena_floats(a, R * ffn);
  }
  im->xL = cf_arena_floats(a, R * H);
  im->xhf = cf_arena_floats(a, R * H);
  im->rsf = cf_arena_floats(a, R);
  im->hf = cf_arena_floats(a, R * H);
  if (c->head == CF_HEAD_VAE) {
    unit_layout(a, &im->umu, R, H, drop);
    unit_layout(a, &im->ulv, R, H, drop);
    im->mu = cf_arena_floats(a, R * H);
    im->v = cf_arena_floats(a, R * H);
    im->zeta = cf_arena_floats(a, R * H);
    im->fac = cf_arena_floats(a, R * H);
    im->gmu_kl = cf_arena_floats(a, R * H);
    im->gv_kl = cf_arena_floats(a, R * H);
    im->gmu = cf_arena_floats(a, R * H);
    im->gv = cf_arena_floats(a, R * H);
  }
  unit_layout(a, &im->ud1, Rp, Id, drop);
  unit_layout(a, &im->ud2, Rp, Id, drop);
  im->out = cf_arena_floats(a, Rp * (size_t)im->Dout);
  im->dout = cf_arena_floats(a, Rp * (size_t)im->Dout);
  im->gx = cf_arena_floats(a, R * H);
  im->gt = cf_arena_floats(a, R * H);
  im->gao = cf_arena_floats(a, R * H);
  im->gh = cf_arena_floats(a, R * H);
  im->gqkv = cf_arena_floats(a, R * 3 * H);
  im->gf = cf_arena_floats(a, R * ffn);
  im->gs = cf_arena_floats(a, (size_t)CF_ATTN_CHUNK * T);
  im->gd1 = cf_arena_floats(a, Rp * Id);
  im->gd2 = cf_arena_floats(a, Rp * Id);
  im->genc = cf_arena_floats(a, Rp * SH);
}

static cf_status buf_check(double n, const char *what) {
  CF_CHECK(n <= (double)CF_MAX_BUF, CF_EINVAL, "model: %s needs %.0f floats, too many", what, n);
  return CF_OK;
}

cf_status cf_model_init(struct cf_model *m, const struct cf_model_cfg *cfg, int64_t max_batch) {
  CF_CHECK(m != NULL, CF_EINVAL, "model: init without a model");
  memset(m, 0, sizeof *m);
  CF_TRY(cf_model_cfg_check(cfg));
  CF_CHECK(max_batch >= 1 && max_batch <= INT_MAX, CF_EINVAL,
           "model: max_batch must be in [1, %d] sequences (got %lld)", INT_MAX,
           (long long)max_batch);
  const struct cf_model_cfg *c = cfg;
  double R = (double)max_batch * (double)c->N * (double)c->P * (double)c->S;
  double Tt = (double)c->N * (double)c->P * (double)c->S;
  double Iw = fmax((double)c->S * (double)c->H, (double)c->D);
  CF_CHECK(R <= (double)INT_MAX, CF_EINVAL, "model: %lld sequences of %.0f tokens is too many rows",
           (long long)max_batch, Tt);
  CF_TRY(buf_check(R * fmax((double)c->ffn, 3.0 * (double)c->H), "an activation"));
  CF_TRY(buf_check((double)max_batch * (double)c->heads * Tt * Tt, "attention probabilities"));
  CF_TRY(buf_check(R * Iw, "a decoder activation"));
  CF_TRY(buf_check(Iw * Iw, "dec.fc2.weight"));

  m->cfg = *cfg;
  m->max_batch = max_batch;
  void *p = NULL;
  CF_TRY(cf_alloc(&p, sizeof(struct cf_model_impl), "model state"));
  struct cf_model_impl *im = p;
  m->impl = im;
  im->J = c->N * c->P;
  im->T = im->J * c->S;
  im->dh = c->H / c->heads;
  im->rot = 2 * (int64_t)floor(c->rotary_pct * (double)im->dh / 2.0);
  im->SH = c->S * c->H;
  im->Idec = im->SH > c->D ? im->SH : c->D;
  im->Dout = c->head == CF_HEAD_GAUSS ? 2 * c->D : c->D;
  im->n_pred_pts = (c->N - 1) * c->P;
  im->n_pred_tok = im->n_pred_pts * c->S;

  cf_status st;
  struct tbuild tb = {.m = m, .im = im, .fill = 0};
  build_tensors(&tb);
  m->n_tensors = tb.n;
  m->n_params = tb.off;
#define CF_ALLOC_OR_FAIL(ptr, bytes, what)                                                         \
  do {                                                                                             \
    void *q_ = NULL;                                                                               \
    st = cf_alloc(&q_, (bytes), (what));                                                           \
    if (st != CF_OK) goto fail;                                                                    \
    ptr = q_;                                                                                      \
  } while (0)
  CF_ALLOC_OR_FAIL(m->tensors, (size_t)m->n_tensors * sizeof(struct cf_tensor_info),
                   "model tensor table");
  CF_ALLOC_OR_FAIL(im->names, (size_t)m->n_tensors * CF_NAME_LEN, "model tensor names");
  CF_ALLOC_OR_FAIL(im->init_kind, (size_t)m->n_tensors, "model init table");
  CF_ALLOC_OR_FAIL(im->fan_in, (size_t)m->n_tensors * sizeof(int64_t), "model init table");
  CF_ALLOC_OR_FAIL(m->params, m->n_params * sizeof(float), "model parameters");
  CF_ALLOC_OR_FAIL(m->grads, m->n_params * sizeof(float), "model gradients");
  CF_ALLOC_OR_FAIL(im->blk, (size_t)c->layers * sizeof(struct cf_block_p), "model layer table");
  CF_ALLOC_OR_FAIL(im->ba, (size_t)c->layers * sizeof(struct cf_block_a), "model layer table");
#undef CF_ALLOC_OR_FAIL
  tb = (struct tbuild){.m = m, .im = im, .fill = 1};
  build_tensors(&tb);

  cf_arena_plan(&im->arena);
  act_layout(im, c, max_batch, &im->arena);
  st = cf_arena_commit(&im->arena, 0, "model activations");
  if (st != CF_OK) goto fail;
  act_layout(im, c, max_batch, &im->arena);
  cf_rotary_tables(im->cs, im->sn, im->T, im->rot, c->rotary_base);
  return CF_OK;
fail:
  cf_trace_push(__FILE__, __LINE__, "cf_model_init");
  cf_model_release(m);
  return st;
}

void cf_model_release(struct cf_model *m) {
  if (m == NULL) return;
  struct cf_model_impl *im = m->impl;
  if (im != NULL) {
    cf_arena_release(&im->arena);
    void *p;
    p = im->names;
    cf_free(&p);
    p = im->init_kind;
    cf_free(&p);
    p = im->fan_in;
    cf_free(&p);
    p = im->blk;
    cf_free(&p);
    p = im->ba;
    cf_free(&p);
    p = im;
    cf_free(&p);
  }
  void *p = m->tensors;
  cf_free(&p);
  p = m->params;
  cf_free(&p);
  p = m->grads;
  cf_free(&p);
  memset(m, 0, sizeof *m);
}

void cf_model_init_weights(struct cf_model *m, uint64_t seed) {
  struct cf_model_impl *im = m->impl;
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    float *w = m->params + ti->offset;
    struct cf_rng r = {.seed = seed, .domain = CF_RNG_INIT, .step = 0, .index = (uint64_t)t};
    switch (im->init_kind[t]) {
    case INIT_ZERO:
      memset(w, 0, ti->numel * sizeof(float));
      break;
    case INIT_ONE:
      for (size_t i = 0; i < ti->numel; i++)
        w[i] = 1.0f;
      break;
    case INIT_NORMAL:
      cf_rng_normal(&r, 0, w, ti->numel);
      for (size_t i = 0; i < ti->numel; i++)
        w[i] *= 0.02f;
      break;
    default: {
      float bound = (float)(1.0 / sqrt((double)im->fan_in[t]));
      cf_rng_uniform(&r, 0, w, ti->numel);
      for (size_t i = 0; i < ti->numel; i++)
        w[i] = (2.0f * w[i] - 1.0f) * bound;
    }
    }
  }
}

const struct cf_tensor_info *cf_model_find(const struct cf_model *m, const char *name) {
  if (m == NULL || name == NULL) return NULL;
  for (int t = 0; t < m->n_tensors; t++)
    if (strcmp(m->tensors[t].name, name) == 0) return &m->tensors[t];
  return NULL;
}

void cf_model_zero_grad(struct cf_model *m) {
  if (m != NULL && m->grads != NULL) memset(m->grads, 0, m->n_params * sizeof(float));
}

/* ---- shared forward pieces (training and sampling) ---- */

void cf_mlp2_fwd(const struct cf_lin *l1, const struct cf_lin *l2, const float *in, int64_t M,
                 const struct cf_unit_a *u, float *out) {
  cf_linear_fwd(in, M, l1->w, l1->b, l1->out, l1->in, 0, u->xh);
  cf_lnrelu_fwd(u->xh, u->rs, u->mask, M, l1->out, u->d);
  cf_linear_fwd(u->d, M, l2->w, l2->b, l2->out, l2->in, 0, out);
}

void cf_decoder_fwd(const struct cf_model_impl *im, const float *in, int64_t M,
                    const struct cf_unit_a *u1, const struct cf_unit_a *u2, float *out) {
  cf_mlp2_fwd(&im->dec1, &im->dec2, in, M, u1, u2->xh);
  cf_lnrelu_fwd(u2->xh, u2->rs, u2->mask, M, im->Idec, u2->d);
  cf_linear_fwd(u2->d, M, im->dec3.w, im->dec3.b, im->Dout, im->Idec, 0, out);
}

static struct cf_unit_a unit_masked(const struct cf_unit_a *u, int drop) {
  struct cf_unit_a r = *u;
  if (!drop) r.mask = NULL;
  return r;
}

void cf_block_fwd(const struct cf_block_p *p, const struct cf_block_a *a, int64_t B, int64_t T,
                  const struct cf_block_dims *d, float *xn) {
  const int64_t H = d->H, H3 = 3 * H, R = B * T;
  cf_layernorm_fwd(a->x, R, H, p->ln1.w, p->ln1.b, a->xh1, a->rs1, a->u1);
  cf_linear_fwd(a->u1, R, p->qkv.w, p->qkv.b, H3, H, 0, a->qkv);
  for (int64_t b = 0; b < B; b++)
    cf_rotary_apply(a->qkv + b * T * H3, T, H3, d->heads, d->dh, d->rot, d->cs, d->sn, 0, 0);
  cf_attn_fwd(a->qkv, B, T, d->heads, d->dh, a->probs, a->ao);
  memcpy(xn, a->x, (size_t)(R * H) * sizeof(float));
  cf_linear_fwd(a->ao, R, p->out.w, p->out.b, H, H, 1, xn);
  cf_layernorm_fwd(a->x, R, H, p->ln2.w, p->ln2.b, a->xh2, a->rs2, a->u2);
  cf_linear_fwd(a->u2, R, p->fc1.w, p->fc1.b, d->ffn, H, 0, a->f);
  cf_gelu_fwd(a->f, a->g, a->cdf, (size_t)(R * d->ffn));
  cf_linear_fwd(a->g, R, p->fc2.w, p->fc2.b, H, d->ffn, 1, xn);
}

void cf_block_bwd(const struct cf_block_p *p, const struct cf_block_a *a, int64_t B, int64_t T,
                  const struct cf_block_dims *d, float *gx, const struct cf_block_ws *w) {
  const int64_t H = d->H, H3 = 3 * H, R = B * T, ffn = d->ffn;
  /* both branches read d loss / d xn before their LayerNorm gradients are added to gx */
  cf_linear_bwd(a->ao, gx, R, p->out.w, H, H, p->out.gw, p->out.gb, w->gao, 0);
  cf_linear_bwd(a->g, gx, R, p->fc2.w, H, ffn, p->fc2.gw, p->fc2.gb, w->gf, 0);
  cf_gelu_bwd(a->f, a->cdf, w->gf, w->gf, (size_t)(R * ffn));
  cf_linear_bwd(a->u2, w->gf, R, p->fc1.w, ffn, H, p->fc1.gw, p->fc1.gb, w->gt, 0);
  cf_layernorm_bwd(w->gt, a->xh2, a->rs2, R, H, p->ln2.w, p->ln2.gw, p->ln2.gb, gx, 1);
  cf_attn_bwd(a->qkv, a->probs, w->gao, B, T, d->heads, d->dh, w->gqkv, w->gs);
  for (int64_t b = 0; b < B; b++)
    cf_rotary_apply(w->gqkv + b * T * H3, T, H3, d->heads, d->dh, d->rot, d->cs, d->sn, 0, 1);
  cf_linear_bwd(a->u1, w->gqkv, R, p->qkv.w, H3, H, p->qkv.gw, p->qkv.gb, w->gt, 0);
  cf_layernorm_bwd(w->gt, a->xh1, a->rs1, R, H, p->ln1.w, p->ln1.gw, p->ln1.gb, gx, 1);
}

static struct cf_block_dims block_dims(const struct cf_model *m) {
  const struct cf_model_impl *im = m->impl;
  struct cf_block_dims d = {.H = m->cfg.H,
                            .heads = m->cfg.heads,
                            .dh = im->dh,
                            .rot = im->rot,
                            .ffn = m->cfg.ffn,
                            .cs = im->cs,
                            .sn = im->sn};
  return d;
}

/* ---- training forward ---- */

cf_status cf_model_forward(struct cf_model *m, int64_t B, const float *z, const float *y,
                           const float *eps, const struct cf_dropkey *dk, double n_pts, float beta,
                           struct cf_loss *out) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "model: forward before cf_model_init");
  CF_CHECK(B >= 1 && B <= m->max_batch, CF_EINVAL,
           "model: forward with %lld sequences, expected 1..%lld (max_batch)", (long long)B,
           (long long)m->max_batch);
  CF_CHECK(z != NULL && y != NULL && out != NULL, CF_EINVAL, "model: forward needs z, y and out");
  CF_CHECK(n_pts > 0.0, CF_EINVAL, "model: forward needs a positive point count (got %g)", n_pts);
  const struct cf_model_cfg *c = &m->cfg;
  struct cf_model_impl *im = m->impl;
  CF_CHECK(c->head != CF_HEAD_VAE || eps != NULL, CF_EINVAL,
           "model: the vae head needs latent noise eps");
  const int64_t H = c->H, D = c->D, S = c->S, J = im->J, T = im->T, Id = im->Idec, SH = im->SH;
  const int64_t R = B * T, Rp = B * J, Dout = im->Dout;
  const int drop = dk != NULL && c->dropout > 0.0f;
  im->last_B = 0;
  im->last_drop = drop;

  /* encoder: z (Rp, D) -> e (Rp, SH) = x0 (R, H) */
  memcpy(im->z, z, (size_t)(Rp * D) * sizeof(float));
  if (drop) cf_dropout_mask(im->enc.mask, B, J, SH, c->dropout, dk, 0);
  struct cf_unit_a ue = unit_masked(&im->enc, drop);
  cf_mlp2_fwd(&im->enc1, &im->enc2, im->z, Rp, &ue, im->ba[0].x);

  /* transformer blocks: x += attn(ln1(x)) + mlp(ln2(x)) */
  struct cf_block_dims bd = block_dims(m);
  for (int64_t l = 0; l < c->layers; l++) {
    float *xn = l + 1 < c->layers ? im->ba[l + 1].x : im->xL; /* (R, H) */
    cf_block_fwd(&im->blk[l], &im->ba[l], B, T, &bd, xn);
  }
  cf_layernorm_fwd(im->xL, R, H, im->lnf.w, im->lnf.b, im->xhf, im->rsf, im->hf);

  /* head */
  struct cf_unit_a u1 = unit_masked(&im->ud1, drop), u2 = unit_masked(&im->ud2, drop);
  if (drop) {
    cf_dropout_mask(im->ud1.mask, B, J, Id, c->dropout, dk, 3);
    cf_dropout_mask(im->ud2.mask, B, J, Id, c->dropout, dk, 4);
  }
  memset(im->dout, 0, (size_t)(Rp * Dout) * sizeof(float));
  memset(out, 0, sizeof *out);
  if (c->head == CF_HEAD_GAUSS) {
    cf_decoder_fwd(im, im->hf, Rp, &u1, &u2, im->out);
    const float lo = c->logstd_min, hi = c->logstd_max;
    double nll = 0, rec = 0;
    for (int64_t b = 0; b < B; b++) {
      for (int64_t j = 0; j < im->n_pred_pts; j++) {
        int64_t row = b * J + j;
        const float *o = im->out + row * Dout, *yr = y + row * D;
        float *g = im->dout + row * Dout;
        for (int64_t d = 0; d < D; d++) {
          float r = o[D + d], ls = r < lo ? lo : (r > hi ? hi : r);
          double diff = (double)yr[d] - (double)o[d], is = exp(-(double)ls), zz = diff * is;
          nll += 0.5 * zz * zz + ls + CF_HALF_LOG_2PI;
          rec += diff * diff;
          g[d] = (float)(-diff * is * is / n_pts);
          g[D + d] = (r >= lo && r <= hi) ? (float)((1.0 - zz * zz) / n_pts) : 0.0f;
        }
      }
    }
    out->nll = nll / n_pts;
    out->recon = rec / n_pts;
    out->loss = out->nll;
  } else {
    struct cf_unit_a um = unit_masked(&im->umu, drop), ul = unit_masked(&im->ulv, drop);
    if (drop) {
      cf_dropout_mask(im->umu.mask, B, T, H, c->dropout, dk, 1);
      cf_dropout_mask(im->ulv.mask, B, T, H, c->dropout, dk, 2);
    }
    cf_mlp2_fwd(&im->mu1, &im->mu2, im->hf, R, &um, im->mu);
    cf_mlp2_fwd(&im->lv1, &im->lv2, im->hf, R, &ul, im->v);
    const double klw = (double)beta / (n_pts * (double)S);
    double kl = 0;
    for (int64_t b = 0; b < B; b++) {
      for (int64_t k = 0; k < T; k++) {
        size_t base = (size_t)((b * T + k) * H);
        const float *mu = im->mu + base, *v = im->v + base, *e = eps + base;
        float *zeta = im->zeta + base, *fac = im->fac + base;
        float *gm = im->gmu_kl + base, *gv = im->gv_kl + base;
        int counted = k < im->n_pred_tok;
        for (int64_t h = 0; h < H; h++) {
          float ev = expf(v[h]), var = ev + 1e-4f, sd = sqrtf(var);
          zeta[h] = mu[h] + sd * e[h];
          if (counted) {
            double mm = mu[h], vr = var;
            kl += 0.5 * (mm * mm + vr - 1.0 - log(vr));
            gm[h] = (float)(klw * mm);
            gv[h] = (float)(klw * 0.5 * (1.0 - 1.0 / vr) * (double)ev);
            fac[h] = e[h] * ev / (2.0f * sd);
          } else {
            gm[h] = gv[h] = fac[h] = 0.0f;
          }
        }
      }
    }
    cf_decoder_fwd(im, im->zeta, Rp, &u1, &u2, im->out);
    double rec = 0;
    for (int64_t b = 0; b < B; b++) {
      for (int64_t j = 0; j < im->n_pred_pts; j++) {
        int64_t row = b * J + j;
        const float *o = im->out + row * Dout, *yr = y + row * D;
        float *g = im->dout + row * Dout;
        for (int64_t d = 0; d < D; d++) {
          double diff = (double)o[d] - (double)yr[d];
          rec += diff * diff;
          g[d] = (float)(2.0 * diff / n_pts);
        }
      }
    }
    out->recon = rec / n_pts;
    out->kl = kl / (n_pts * (double)S);
    out->loss = out->recon + (double)beta * out->kl;
  }
  im->last_B = B;
  return CF_OK;
}

/* ---- training backward ---- */

/* Offset of the first gradient that is final once the tensors from `name` on are done: every
 * tensor at or after `name` in the arena (the arena runs enc, layers 0..L-1, lnf, heads, dec). */
static size_t grad_mark(const struct cf_model *m, const char *name) {
  const struct cf_tensor_info *t = cf_model_find(m, name);
  return t != NULL ? t->offset : 0;
}

cf_status cf_model_backward(struct cf_model *m) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "model: backward before cf_model_init");
  struct cf_model_impl *im = m->impl;
  CF_CHECK(im->last_B > 0, CF_EINVAL, "model: backward without a successful forward");
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t B = im->last_B, H = c->H, T = im->T, Id = im->Idec, SH = im->SH;
  const int64_t R = B * T, Rp = B * im->J;
  const int drop = im->last_drop;
  struct cf_unit_a u1 = unit_masked(&im->ud1, drop), u2 = unit_masked(&im->ud2, drop);

  /* decoder: dout (Rp, Dout) -> d(decoder input) (Rp, SH) */
  const float *dec_in = c->head == CF_HEAD_GAUSS ? im->hf : im->zeta;
  float *g_in = c->head == CF_HEAD_GAUSS ? im->gh : im->gt;
  cf_linear_bwd(u2.d, im->dout, Rp, im->dec3.w, im->Dout, Id, im->dec3.gw, im->dec3.gb, im->gd2, 0);
  cf_lnrelu_bwd(im->gd2, u2.xh, u2.rs, u2.mask, Rp, Id, im->gd2);
  cf_linear_bwd(u1.d, im->gd2, Rp, im->dec2.w, Id, Id, im->dec2.gw, im->dec2.gb, im->gd1, 0);
  cf_lnrelu_bwd(im->gd1, u1.xh, u1.rs, u1.mask, Rp, Id, im->gd1);
  cf_linear_bwd(dec_in, im->gd1, Rp, im->dec1.w, Id, SH, im->dec1.gw, im->dec1.gb, g_in, 0);

  if (c->head == CF_HEAD_VAE) {
    /* zeta = mu + sqrt(exp(v) + 1e-4) eps, plus the KL terms computed in forward */
    size_t n = (size_t)(R * H);
    for (size_t i = 0; i < n; i++) {
      float gz = im->gt[i];
      im->gmu[i] = gz + im->gmu_kl[i];
      im->gv[i] = gz * im->fac[i] + im->gv_kl[i];
    }
    struct cf_unit_a um = unit_masked(&im->umu, drop), ul = unit_masked(&im->ulv, drop);
    cf_linear_bwd(um.d, im->gmu, R, im->mu2.w, H, H, im->mu2.gw, im->mu2.gb, im->gt, 0);
    cf_lnrelu_bwd(im->gt, um.xh, um.rs, um.mask, R, H, im->gt);
    cf_linear_bwd(im->hf, im->gt, R, im->mu1.w, H, H, im->mu1.gw, im->mu1.gb, im->gh, 0);
    cf_linear_bwd(ul.d, im->gv, R, im->lv2.w, H, H, im->lv2.gw, im->lv2.gb, im->gt, 0);
    cf_lnrelu_bwd(im->gt, ul.xh, ul.rs, ul.mask, R, H, im->gt);
    cf_linear_bwd(im->hf, im->gt, R, im->lv1.w, H, H, im->lv1.gw, im->lv1.gb, im->gh, 1);
  }

  /* final LayerNorm */
  cf_layernorm_bwd(im->gh, im->xhf, im->rsf, R, H, im->lnf.w, im->lnf.gw, im->lnf.gb, im->gx, 0);
  if (m->grad_ready) CF_TRY(m->grad_ready(m->grad_ctx, grad_mark(m, "lnf.weight")));

  /* blocks, last to first; gx holds d loss / d x_{l+1} on entry, d loss / d x_l on exit */
  struct cf_block_dims bd = block_dims(m);
  struct cf_block_ws ws = {
      .gt = im->gt, .gao = im->gao, .gqkv = im->gqkv, .gf = im->gf, .gs = im->gs};
  for (int64_t l = c->layers - 1; l >= 0; l--) {
    cf_block_bwd(&im->blk[l], &im->ba[l], B, T, &bd, im->gx, &ws);
    if (m->grad_ready) {
      char nm[64];
      snprintf(nm, sizeof nm, "layers.%lld.ln1.weight", (long long)l);
      CF_TRY(m->grad_ready(m->grad_ctx, grad_mark(m, nm)));
    }
  }

  /* encoder: gx (R, H) = d loss / d e (Rp, SH) */
  struct cf_unit_a ue = unit_masked(&im->enc, drop);
  cf_linear_bwd(ue.d, im->gx, Rp, im->enc2.w, SH, SH, im->enc2.gw, im->enc2.gb, im->genc, 0);
  cf_lnrelu_bwd(im->genc, ue.xh, ue.rs, ue.mask, Rp, SH, im->genc);
  cf_linear_bwd(im->z, im->genc, Rp, im->enc1.w, SH, c->D, im->enc1.gw, im->enc1.gb, NULL, 0);
  if (m->grad_ready) CF_TRY(m->grad_ready(m->grad_ctx, 0));
  return CF_OK;
}

/* ---- test hooks ---- */

const float *cf_model_test_hidden(const struct cf_model *m) {
  return m->impl != NULL ? ((const struct cf_model_impl *)m->impl)->hf : NULL;
}

const float *cf_model_test_output(const struct cf_model *m) {
  return m->impl != NULL ? ((const struct cf_model_impl *)m->impl)->out : NULL;
}
