/* model.c: the CaLMFlow network's configuration check, parameter layout (one arena for
 * parameters, one for gradients, named tensors), initialization, and the training forward
 * and backward: encoder, GPT-NeoX blocks, final LayerNorm, the vae, gauss, gmm, fm or cvae
 * head, decoder. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "calmflow/commstat.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/rng.h"
#include "calmflow/watchdog.h"
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
  CF_CHECK(c->head == CF_HEAD_VAE || c->head == CF_HEAD_GAUSS || c->head == CF_HEAD_GMM ||
               c->head == CF_HEAD_FM || c->head == CF_HEAD_CVAE,
           CF_EINVAL, "-flow_head must be vae, gauss, gmm, fm or cvae (got code %d)", (int)c->head);
  CF_CHECK(c->head != CF_HEAD_FM || (c->fm_width >= 1 && c->fm_width <= 65536), CF_EINVAL,
           "-flow_fm_width must be in [1, 65536] (got %lld)", (long long)c->fm_width);
  CF_CHECK(c->head != CF_HEAD_FM || (c->fm_draws >= 1 && c->fm_draws <= 64), CF_EINVAL,
           "-flow_fm_draws must be in [1, 64] (got %lld)", (long long)c->fm_draws);
  CF_CHECK(c->head != CF_HEAD_FM || (c->fm_steps >= 1 && c->fm_steps <= 100000), CF_EINVAL,
           "-flow_fm_steps must be in [1, 100000] (got %lld)", (long long)c->fm_steps);
  CF_CHECK(c->head != CF_HEAD_CVAE || (c->cvae_dz >= 1 && c->cvae_dz <= 65536), CF_EINVAL,
           "-flow_cvae_dz must be in [1, 65536] (got %lld)", (long long)c->cvae_dz);
  CF_CHECK(c->head != CF_HEAD_GMM || (c->gmm_k >= 1 && c->gmm_k <= 4096), CF_EINVAL,
           "-flow_gmm_k must be in [1, 4096] (got %lld)", (long long)c->gmm_k);
  CF_CHECK(c->head != CF_HEAD_GMM || (double)c->gmm_k * (2.0 * (double)c->D + 1) <= CF_MAX_DIM,
           CF_EINVAL, "-flow_gmm_k x (2 -data_dim + 1) = %.0f is too large (at most %lld)",
           (double)c->gmm_k * (2.0 * (double)c->D + 1), CF_MAX_DIM);
  CF_CHECK((c->no_history == 0 || c->no_history == 1) && (c->time_input == 0 || c->time_input == 1),
           CF_EINVAL, "-flow_history and -net_time_input must be 0 or 1");
  CF_CHECK(c->logstd_min < c->logstd_max && isfinite(c->logstd_min) && isfinite(c->logstd_max),
           CF_EINVAL, "-net_logstd_min (%g) must be below -net_logstd_max (%g), both finite",
           (double)c->logstd_min, (double)c->logstd_max);
  CF_CHECK(c->prompt_len >= 0 && c->prompt_len <= 65536, CF_EINVAL,
           "-data_prompt: a prompt of %lld tokens, expected at most 65536",
           (long long)c->prompt_len);
  if (c->prompt_len > 0) {
    CF_CHECK(c->vocab >= 1 && c->vocab <= CF_MAX_DIM, CF_EINVAL,
             "-data_prompt: the tokenizer's vocabulary size must be in [1, %lld] (got %lld)",
             CF_MAX_DIM, (long long)c->vocab);
    CF_CHECK(c->prompt_pad >= 0 && c->prompt_pad < c->vocab, CF_EINVAL,
             "-data_prompt: the pad token id %lld is outside the vocabulary [0, %lld)",
             (long long)c->prompt_pad, (long long)c->vocab);
    CF_CHECK((double)c->vocab * (double)c->H <= (double)CF_MAX_BUF, CF_EINVAL,
             "-data_prompt: prompt.wte (%lld x %lld) is too large", (long long)c->vocab,
             (long long)c->H);
    CF_CHECK(!c->no_history, CF_EINVAL,
             "-data_prompt with -flow_history 0: without history a token attends only to its own "
             "point, never to the prompt (use -flow_history 1)");
  }
  /* Derived sizes: the sequence and the biggest per-sequence buffers must stay addressable. */
  double T = (double)c->N * (double)c->P * (double)c->S + (double)c->prompt_len;
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
  int held; /* the tensors being added belong to this rank's stage */
  int n;
  size_t off;
};

/* Add a tensor of global shape (d0, d1) (d1 ignored for ndim 1) split over the tensor group as
 * `split`; returns its offset into the arena (meaningful only when held). */
static size_t add_tensor(struct tbuild *t, const char *name, int ndim, int64_t d0, int64_t d1,
                         enum cf_split split, int kind, int64_t fan_in) {
  const struct cf_model_impl *im = t->im;
  int64_t c0 = d0, c1 = ndim == 2 ? d1 : 1, s0 = 0, s1 = 0;
  if (split == CF_SPLIT_ROWS) {
    c0 = d0 / im->n_tp;
    s0 = c0 * im->tp_rank;
  } else if (split == CF_SPLIT_COLS) {
    c1 = d1 / im->n_tp;
    s1 = c1 * im->tp_rank;
  }
  size_t numel = t->held ? (size_t)c0 * (size_t)c1 : 0, off = t->off;
  if (t->fill) {
    struct cf_tensor_info *ti = &t->m->tensors[t->n];
    char *nm = t->im->names + (size_t)t->n * CF_NAME_LEN;
    snprintf(nm, CF_NAME_LEN, "%s", name);
    ti->name = nm;
    ti->ndim = ndim;
    ti->shape[0] = d0;
    ti->shape[1] = ndim == 2 ? d1 : 0;
    ti->held = t->held;
    ti->split = split;
    ti->start[0] = s0;
    ti->start[1] = s1;
    ti->count[0] = c0;
    ti->count[1] = c1;
    ti->offset = t->held ? off : 0;
    ti->numel = numel;
    t->im->init_kind[t->n] = (signed char)kind;
    t->im->fan_in[t->n] = fan_in;
  }
  t->n++;
  t->off += numel;
  return off;
}

/* A linear layer (out, in): transformer ones N(0, 0.02) with zero bias, others PyTorch's
 * default. ROWS splits weight and bias by output rows; COLS splits the weight's input columns
 * and keeps the bias whole. */
static void add_lin(struct tbuild *t, struct cf_lin *L, const char *prefix, int64_t out, int64_t in,
                    int transformer, enum cf_split split) {
  char nm[CF_NAME_LEN];
  snprintf(nm, sizeof nm, "%s.weight", prefix);
  size_t ow = add_tensor(t, nm, 2, out, in, split, transformer ? INIT_NORMAL : INIT_UNIFORM, in);
  snprintf(nm, sizeof nm, "%s.bias", prefix);
  size_t ob = add_tensor(t, nm, 1, out, 0, split == CF_SPLIT_ROWS ? CF_SPLIT_ROWS : CF_SPLIT_NONE,
                         transformer ? INIT_ZERO : INIT_UNIFORM, in);
  if (t->fill && t->held) {
    L->w = t->m->params + ow;
    L->gw = t->m->grads + ow;
    L->b = t->m->params + ob;
    L->gb = t->m->grads + ob;
    L->out = split == CF_SPLIT_ROWS ? out / t->im->n_tp : out;
    L->in = split == CF_SPLIT_COLS ? in / t->im->n_tp : in;
  }
}

static void add_ln(struct tbuild *t, struct cf_lnp *L, const char *prefix, int64_t n) {
  char nm[CF_NAME_LEN];
  snprintf(nm, sizeof nm, "%s.weight", prefix);
  size_t ow = add_tensor(t, nm, 1, n, 0, CF_SPLIT_NONE, INIT_ONE, n);
  snprintf(nm, sizeof nm, "%s.bias", prefix);
  size_t ob = add_tensor(t, nm, 1, n, 0, CF_SPLIT_NONE, INIT_ZERO, n);
  if (t->fill && t->held) {
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
  t->held = im->first;
  add_lin(t, &im->enc1, "enc.fc1", SH, c->D + (c->time_input != 0), 0, CF_SPLIT_NONE);
  add_lin(t, &im->enc2, "enc.fc2", SH, SH, 0, CF_SPLIT_NONE);
  if (c->prompt_len > 0) { /* GPT-NeoX's embed_in: N(0, 0.02) */
    size_t ow = add_tensor(t, "prompt.wte.weight", 2, c->vocab, H, CF_SPLIT_NONE, INIT_NORMAL, H);
    if (t->fill && t->held) {
      im->wte = t->m->params + ow;
      im->gwte = t->m->grads + ow;
    }
  }
  for (int64_t l = 0; l < c->layers; l++) {
    struct cf_block_p dummy, *p = t->fill ? &im->blk[l] : &dummy;
    char pre[CF_NAME_LEN];
    t->held = l >= im->l0 && l < im->l1;
    snprintf(pre, sizeof pre, "layers.%lld.ln1", (long long)l);
    add_ln(t, &p->ln1, pre, H);
    snprintf(pre, sizeof pre, "layers.%lld.ln2", (long long)l);
    add_ln(t, &p->ln2, pre, H);
    snprintf(pre, sizeof pre, "layers.%lld.attn.qkv", (long long)l);
    add_lin(t, &p->qkv, pre, 3 * H, H, 1, CF_SPLIT_ROWS);
    snprintf(pre, sizeof pre, "layers.%lld.attn.out", (long long)l);
    add_lin(t, &p->out, pre, H, H, 1, CF_SPLIT_COLS);
    snprintf(pre, sizeof pre, "layers.%lld.mlp.fc1", (long long)l);
    add_lin(t, &p->fc1, pre, c->ffn, H, 1, CF_SPLIT_ROWS);
    snprintf(pre, sizeof pre, "layers.%lld.mlp.fc2", (long long)l);
    add_lin(t, &p->fc2, pre, H, c->ffn, 1, CF_SPLIT_COLS);
  }
  t->held = im->last;
  add_ln(t, &im->lnf, "lnf", H);
  if (c->head == CF_HEAD_VAE) {
    add_lin(t, &im->mu1, "head.mu.fc1", H, H, 0, CF_SPLIT_NONE);
    add_lin(t, &im->mu2, "head.mu.fc2", H, H, 0, CF_SPLIT_NONE);
    add_lin(t, &im->lv1, "head.lv.fc1", H, H, 0, CF_SPLIT_NONE);
    add_lin(t, &im->lv2, "head.lv.fc2", H, H, 0, CF_SPLIT_NONE);
  } else if (c->head == CF_HEAD_CVAE) {
    add_lin(t, &im->cq1, "head.cvae.post.fc1", im->Idec, SH + c->D, 0, CF_SPLIT_NONE);
    add_lin(t, &im->cq2, "head.cvae.post.fc2", 2 * im->dz, im->Idec, 0, CF_SPLIT_NONE);
    add_lin(t, &im->cp1, "head.cvae.prior.fc1", im->Idec, SH, 0, CF_SPLIT_NONE);
    add_lin(t, &im->cp2, "head.cvae.prior.fc2", 2 * im->dz, im->Idec, 0, CF_SPLIT_NONE);
  } else if (c->head == CF_HEAD_FM) { /* the velocity MLP replaces the decoder */
    add_lin(t, &im->fmc, "head.fm.cond", im->F, SH, 0, CF_SPLIT_NONE);
    add_lin(t, &im->fm1, "head.fm.fc1", im->F, c->D + CF_FM_FEATURES, 0, CF_SPLIT_NONE);
    add_lin(t, &im->fm2, "head.fm.fc2", im->F, im->F, 0, CF_SPLIT_NONE);
    add_lin(t, &im->fm3, "head.fm.fc3", im->F, im->F, 0, CF_SPLIT_NONE);
    add_lin(t, &im->fmo, "head.fm.out", c->D, im->F, 0, CF_SPLIT_NONE);
    return;
  }
  add_lin(t, &im->dec1, "dec.fc1", im->Idec, SH + (c->head == CF_HEAD_CVAE ? im->dz : 0), 0,
          CF_SPLIT_NONE);
  add_lin(t, &im->dec2, "dec.fc2", im->Idec, im->Idec, 0, CF_SPLIT_NONE);
  add_lin(t, &im->dec3, "dec.fc3", im->Dout, im->Idec, 0, CF_SPLIT_NONE);
}

/* ---- activation layout (planned, then carved; a call at b0 re-carves shifted by b0) ---- */

struct carver {
  struct cf_arena *a;
  int64_t B, b0; /* sequences stored, first sequence of the call */
};

/* per-sequence buffer: B pieces of `per` floats; the call's view starts at piece b0 */
static float *seq_buf(struct carver *k, size_t per) {
  float *p = cf_arena_floats(k->a, (size_t)k->B * per);
  return p != NULL ? p + (size_t)k->b0 * per : NULL;
}

static void unit_layout(struct carver *k, struct cf_unit_a *u, size_t rows, size_t n, int drop) {
  u->xh = seq_buf(k, rows * n);
  u->rs = seq_buf(k, rows);
  u->mask = drop ? seq_buf(k, rows * n) : NULL;
  u->d = seq_buf(k, rows * n);
}

/* Rows per sequence: Tl tokens, Jl points (this rank's share). */
static void act_layout(struct cf_model_impl *im, const struct cf_model_cfg *c, int64_t B,
                       struct cf_arena *a, int64_t b0) {
  struct carver k = {a, B, b0};
  size_t H = (size_t)c->H, Tl = (size_t)im->Tl, Jl = (size_t)im->Jl;
  size_t Tx = (size_t)im->Tx, Tt = (size_t)im->Tt; /* rows per sequence in the blocks, positions */
  size_t Id = (size_t)im->Idec, SH = (size_t)im->SH, ffn = (size_t)im->ffn_l;
  size_t Hl = (size_t)im->Hl, half = (size_t)(im->rot / 2);
  int drop = c->dropout > 0.0f;
  im->cs = cf_arena_floats(a, Tt * half);
  im->sn = cf_arena_floats(a, Tt * half);
  if (im->first) {
    im->z = seq_buf(&k, Jl * (size_t)(c->D + (c->time_input != 0)));
    unit_layout(&k, &im->enc, Jl, SH, drop);
    if (im->Lp > 0) im->eout = seq_buf(&k, Tl * H);
  }
  for (int64_t l = im->l0; l < im->l1; l++) {
    struct cf_block_a *ba = &im->ba[l];
    if (l == im->l0) ba->x = seq_buf(&k, Tx * H); /* the stage input; later ones: below */
    ba->xh1 = seq_buf(&k, Tx * H);
    ba->rs1 = seq_buf(&k, Tx);
    ba->u1 = seq_buf(&k, Tx * H);
    ba->qkv = seq_buf(&k, Tx * 3 * Hl);
    ba->probs = seq_buf(&k, (size_t)im->heads_l * Tx * Tt);
    ba->ao = seq_buf(&k, Tx * Hl);
    ba->u2 = seq_buf(&k, Tx * H);
    ba->f = seq_buf(&k, Tx * ffn);
    ba->cdf = seq_buf(&k, Tx * ffn);
  }
  const int alone = im->first && im->last;  /* one stage: no activation or gradient is sent */
  if (!alone) im->xL = seq_buf(&k, Tx * H); /* the stage output (sent on by all but the last) */
  if (im->last) {
    im->xhf = seq_buf(&k, Tl * H);
    im->rsf = seq_buf(&k, Tl);
    im->hf = seq_buf(&k, Tl * H);
    if (c->head == CF_HEAD_VAE) {
      unit_layout(&k, &im->umu, Tl, H, drop);
      unit_layout(&k, &im->ulv, Tl, H, drop);
      im->mu = seq_buf(&k, Tl * H);
      im->v = seq_buf(&k, Tl * H);
      im->zeta = seq_buf(&k, Tl * H);
      im->fac = seq_buf(&k, Tl * H);
      im->gmu_kl = seq_buf(&k, Tl * H);
      im->gv_kl = seq_buf(&k, Tl * H);
      im->gmu = seq_buf(&k, Tl * H);
      im->gv = seq_buf(&k, Tl * H);
    }
    const size_t Wt = (size_t)im->Wt, R = (size_t)im->R, F = (size_t)im->F, dz = (size_t)im->dz;
    const size_t D = (size_t)c->D;
    if (Wt > 0) im->hnoise = seq_buf(&k, Jl * Wt);
    if (c->head == CF_HEAD_FM) { /* no decoder; no dropout */
      im->fm_cp = seq_buf(&k, Jl * F);
      im->fm_in = seq_buf(&k, Jl * R * (D + CF_FM_FEATURES));
      unit_layout(&k, &im->fu1, Jl * R, F, 0);
      unit_layout(&k, &im->fu2, Jl * R, F, 0);
      unit_layout(&k, &im->fu3, Jl * R, F, 0);
      im->out = seq_buf(&k, Jl * R * D);
      im->dout = seq_buf(&k, Jl * R * D);
      im->fm_g1 = seq_buf(&k, Jl * R * F);
      im->fm_g2 = seq_buf(&k, Jl * R * F);
      im->fm_gc = seq_buf(&k, Jl * F);
    } else {
      if (c->head == CF_HEAD_CVAE) {
        im->cv_qin = seq_buf(&k, Jl * (SH + D));
        unit_layout(&k, &im->uq, Jl, Id, drop);
        unit_layout(&k, &im->up, Jl, Id, drop);
        im->cv_q = seq_buf(&k, Jl * 2 * dz);
        im->cv_p = seq_buf(&k, Jl * 2 * dz);
        im->cv_din = seq_buf(&k, Jl * (SH + dz));
        im->cv_fac = seq_buf(&k, Jl * dz);
        im->cv_gqkl = seq_buf(&k, Jl * 2 * dz);
        im->cv_gp = seq_buf(&k, Jl * 2 * dz);
        im->cv_gq = seq_buf(&k, Jl * 2 * dz);
        im->cv_gdin = seq_buf(&k, Jl * (SH + dz));
        im->cv_gqin = seq_buf(&k, Jl * (SH + D));
      }
      unit_layout(&k, &im->ud1, Jl, Id, drop);
      unit_layout(&k, &im->ud2, Jl, Id, drop);
      im->out = seq_buf(&k, Jl * (size_t)im->Dout);
    }
  }
  im->gx = seq_buf(&k, Tx * H);
  if (alone) im->xL = im->gx; /* read by the final LayerNorm only, before gx is written */
  /* Three scratches, each shared by buffers never live at once and each as large (per
   * sequence) as its largest use:
   *   s1: the blocks' GELU outputs (forward, each within its block); the loss's output
   *       gradient dout, written in forward, read by the decoder's last layer, whose
   *       first-layer gradient gd1 then overwrites it (so a backward consumes its forward:
   *       cf_model_backward_at refuses a second one); in a block's backward fc1's input
   *       gradient, after it qkv's; the encoder's gradient genc after the blocks
   *   s2: in forward the residual stream between blocks (with xL, below); a block's
   *       LayerNorm output gradients gt; the decoder's gd2
   *   s3: a block's attention output gradient gao; gh, from the head to the final LayerNorm
   *       (and the prompt's split after the blocks) */
  const int dec = im->last && c->head != CF_HEAD_FM;
  const size_t Do = (size_t)im->Dout, DI = Do > Id ? Do : Id;
  size_t s1 = Tx * (ffn > 3 * Hl ? ffn : 3 * Hl), s2 = 2 * Tx * H, s3 = Tx * Hl;
  if (dec && Jl * DI > s1) s1 = Jl * DI;
  if (im->first && Jl * SH > s1) s1 = Jl * SH;
  if (dec && Jl * Id > s2) s2 = Jl * Id;
  if (Tl * H > s3) s3 = Tl * H;
  im->gqkv = im->gf = seq_buf(&k, s1);
  im->gt = seq_buf(&k, s2);
  im->gao = im->gh = seq_buf(&k, s3);
  if (dec) {
    im->dout = im->gd1 = im->gf;
    im->gd2 = im->gt;
  }
  if (im->first) im->genc = im->gf;
  for (int64_t l = im->l0; l < im->l1; l++)
    im->ba[l].g = im->gf; /* the GELU output is forward scratch (cf_block_a) */
  /* Block l reads x_l and writes x_{l+1}; only the forward reads them (a block's backward
   * works from xh1 and rs1). Counting back from xL, they alternate between gt and xL: xL is
   * free again before each forward (its send is waited for), gt is backward-only. */
  for (int64_t l = im->l1 - 1; l > im->l0; l--)
    im->ba[l].x = (im->l1 - l) % 2 ? im->gt : im->xL;
  im->gs = cf_arena_floats(a, (size_t)CF_ATTN_CHUNK * Tt);
}

/* Point the activation views at sequences [b0, ...) of the storage. */
static void act_select(struct cf_model *m, int64_t b0) {
  struct cf_model_impl *im = m->impl;
  im->b0 = b0;
  cf_arena_rewind(&im->arena);
  act_layout(im, &m->cfg, m->max_batch, &im->arena, b0);
}

static cf_status buf_check(double n, const char *what) {
  CF_CHECK(n <= (double)CF_MAX_BUF, CF_EINVAL, "model: %s needs %.0f floats, too many", what, n);
  return CF_OK;
}

/* Local. This rank's part from the grid (NULL: everything). */
static cf_status part_init(struct cf_model_impl *im, const struct cf_model_cfg *c,
                           const struct cf_grid *g) {
  im->tpc = MPI_COMM_NULL;
  im->n_tp = 1;
  im->n_cp = 1;
  im->l0 = 0;
  im->l1 = c->layers;
  if (g != NULL) {
    CF_TRY(cf_grid_check(g->size, g->n_tp, g->n_pp, g->n_cp, c->layers, c->heads, c->N * c->P,
                         g->n_pp));
    CF_CHECK(c->ffn % g->n_tp == 0, CF_ETOPO,
             "-net_ffn %lld is not divisible by -par_tp %d (each tensor-parallel rank owns an "
             "equal share of the MLP)",
             (long long)c->ffn, g->n_tp);
    im->n_tp = g->n_tp;
    im->tp_rank = g->tp_rank;
    im->tpc = g->n_tp > 1 ? g->tp : MPI_COMM_NULL;
    im->n_cp = g->n_cp;
    im->cp_rank = g->cp_rank;
    CF_CHECK(!c->no_history || g->n_cp == 1, CF_ETOPO,
             "-flow_history 0 with -par_cp %d: without history a point attends only to itself, "
             "so there is no sequence to split (use -par_cp 1)",
             g->n_cp);
    cf_grid_stage_layers(c->layers, g->n_pp, g->pp_rank, &im->l0, &im->l1);
  }
  im->first = im->l0 == 0;
  im->last = im->l1 == c->layers;
  im->heads_l = c->heads / im->n_tp;
  im->Hl = im->heads_l * im->dh;
  im->ffn_l = c->ffn / im->n_tp;
  cf_grid_cp_chunks(im->n_cp, im->cp_rank, im->J, im->plo, im->phi);
  im->Jl = (im->phi[0] - im->plo[0]) + (im->phi[1] - im->plo[1]);
  for (int i = 0; i < 2; i++) {
    im->tlo[i] = im->plo[i] * c->S;
    im->thi[i] = im->phi[i] * c->S;
  }
  im->Tl = im->Jl * c->S;
  /* the prompt's L rows go in front of context rank 0's rows (its first chunk starts the
   * sequence); every other row moves L positions on */
  im->L = c->prompt_len;
  im->Lp = im->cp_rank == 0 ? im->L : 0;
  im->Tx = im->Lp + im->Tl;
  im->Tt = im->T + im->L;
  for (int i = 0; i < 2; i++) {
    im->xlo[i] = im->tlo[i] + im->L;
    im->xhi[i] = im->thi[i] + im->L;
  }
  if (im->Lp > 0) im->xlo[0] = 0;
  return CF_OK;
}

cf_status cf_model_init(struct cf_model *m, const struct cf_model_cfg *cfg, int64_t max_batch) {
  return cf_model_init_part(m, cfg, max_batch, NULL);
}

cf_status cf_model_init_part(struct cf_model *m, const struct cf_model_cfg *cfg, int64_t max_batch,
                             const struct cf_grid *g) {
  CF_CHECK(m != NULL, CF_EINVAL, "model: init without a model");
  memset(m, 0, sizeof *m);
  CF_TRY(cf_model_cfg_check(cfg));
  CF_CHECK(max_batch >= 1 && max_batch <= INT_MAX, CF_EINVAL,
           "model: max_batch must be in [1, %d] sequences (got %lld)", INT_MAX,
           (long long)max_batch);
  const struct cf_model_cfg *c = cfg;
  double Tt = (double)c->N * (double)c->P * (double)c->S + (double)c->prompt_len;
  double R = (double)max_batch * Tt;
  double Iw = fmax((double)c->S * (double)c->H, (double)c->D);
  CF_CHECK(R <= (double)INT_MAX, CF_EINVAL, "model: %lld sequences of %.0f tokens is too many rows",
           (long long)max_batch, Tt);
  CF_TRY(buf_check(R * fmax((double)c->ffn, 3.0 * (double)c->H), "an activation"));
  CF_TRY(buf_check((double)max_batch * (double)c->heads * Tt * Tt, "attention probabilities"));
  CF_TRY(buf_check(R * Iw, "a decoder activation"));
  CF_TRY(buf_check(Iw * Iw, "dec.fc2.weight"));
  if (c->head == CF_HEAD_FM) {
    double F = (double)c->fm_width;
    CF_TRY(buf_check(R * (double)c->fm_draws * fmax(F, (double)c->D + CF_FM_FEATURES),
                     "an fm head activation"));
    CF_TRY(buf_check(F * fmax(F, (double)c->S * (double)c->H), "an fm head weight"));
  }
  if (c->head == CF_HEAD_CVAE) {
    double w = (double)c->S * (double)c->H + fmax((double)c->D, (double)c->cvae_dz);
    CF_TRY(buf_check(R * w, "a cvae head activation"));
    CF_TRY(buf_check(Iw * w, "a cvae head weight"));
  }

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
  im->Dout = cf_model_dout(c);
  im->n_pred_pts = (c->N - 1) * c->P;
  im->n_pred_tok = im->n_pred_pts * c->S;
  im->F = c->head == CF_HEAD_FM ? c->fm_width : 0;
  im->R = c->head == CF_HEAD_FM ? c->fm_draws : 0;
  im->dz = c->head == CF_HEAD_CVAE ? c->cvae_dz : 0;
  im->Wt = cf_head_train_width(c);

  cf_status st = part_init(im, c, g);
  if (st != CF_OK) goto fail;
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
  CF_ALLOC_OR_FAIL(m->params, (m->n_params ? m->n_params : 1) * sizeof(float), "model parameters");
  CF_ALLOC_OR_FAIL(m->grads, (m->n_params ? m->n_params : 1) * sizeof(float), "model gradients");
  CF_ALLOC_OR_FAIL(im->blk, (size_t)c->layers * sizeof(struct cf_block_p), "model layer table");
  CF_ALLOC_OR_FAIL(im->ba, (size_t)c->layers * sizeof(struct cf_block_a), "model layer table");
  if (im->L > 0) {
    CF_ALLOC_OR_FAIL(im->ids, (size_t)(max_batch * im->L) * sizeof(int32_t), "prompt ids");
    for (int64_t i = 0; i < max_batch * im->L; i++)
      im->ids[i] = (int32_t)c->prompt_pad;
  }
#undef CF_ALLOC_OR_FAIL
  memset(im->blk, 0, (size_t)c->layers * sizeof(struct cf_block_p));
  memset(im->ba, 0, (size_t)c->layers * sizeof(struct cf_block_a));
  tb = (struct tbuild){.m = m, .im = im, .fill = 1};
  build_tensors(&tb);

  if (im->n_cp > 1) {
    int64_t lo[2 * 64], hi[2 * 64], *plo = lo, *phi = hi;
    void *buf = NULL;
    if (im->n_cp > 64) {
      st = cf_alloc(&buf, (size_t)(4 * im->n_cp) * sizeof(int64_t), "context-parallel ranges");
      if (st != CF_OK) goto fail;
      plo = buf;
      phi = plo + 2 * im->n_cp;
    }
    for (int r = 0; r < im->n_cp; r++) {
      cf_grid_cp_chunks(im->n_cp, r, im->J, plo + 2 * r, phi + 2 * r);
      for (int i = 0; i < 2; i++) {
        plo[2 * r + i] *= c->S;
        phi[2 * r + i] *= c->S;
      }
    }
    for (int r = 0; r < im->n_cp; r++) /* rows of the whole sequence [prompt | tokens] */
      for (int i = 0; i < 2; i++) {
        plo[2 * r + i] += im->L;
        phi[2 * r + i] += im->L;
      }
    if (im->L > 0) plo[0] = 0; /* context rank 0 holds the prompt */
    st = cf_ring_init(&im->ring, g->cp, im->Tt, plo, phi, max_batch, im->heads_l, im->dh);
    cf_free(&buf);
    if (st != CF_OK) goto fail;
    im->has_ring = 1;
  }

  cf_arena_plan(&im->arena);
  act_layout(im, c, max_batch, &im->arena, 0);
  st = cf_arena_commit(&im->arena, 0, "model activations");
  if (st != CF_OK) goto fail;
  st = cf_alloc((void **)&im->fwd_ok, (size_t)max_batch, "model activations");
  if (st != CF_OK) goto fail;
  act_layout(im, c, max_batch, &im->arena, 0);
  cf_rotary_tables(im->cs, im->sn, im->Tt, im->rot, c->rotary_base);
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
    if (im->has_ring) cf_ring_release(&im->ring);
    cf_arena_release(&im->arena);
    void *p = im->fwd_ok;
    cf_free(&p);
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
    p = im->ids;
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

/* Fill n values of tensor t starting at global element e0 (a contiguous run). */
static void init_run(const struct cf_model_impl *im, int t, uint64_t seed, uint64_t e0, float *w,
                     size_t n) {
  struct cf_rng r = {.seed = seed, .domain = CF_RNG_INIT, .step = 0, .index = (uint64_t)t};
  switch (im->init_kind[t]) {
  case INIT_ZERO:
    memset(w, 0, n * sizeof(float));
    break;
  case INIT_ONE:
    for (size_t i = 0; i < n; i++)
      w[i] = 1.0f;
    break;
  case INIT_NORMAL:
    cf_rng_normal(&r, e0, w, n);
    for (size_t i = 0; i < n; i++)
      w[i] *= 0.02f;
    break;
  default: {
    float bound = (float)(1.0 / sqrt((double)im->fan_in[t]));
    cf_rng_uniform(&r, e0, w, n);
    for (size_t i = 0; i < n; i++)
      w[i] = (2.0f * w[i] - 1.0f) * bound;
  }
  }
}

void cf_model_init_weights(struct cf_model *m, uint64_t seed) {
  struct cf_model_impl *im = m->impl;
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    if (!ti->held) continue;
    float *w = m->params + ti->offset;
    int64_t cols = ti->ndim == 2 ? ti->shape[1] : 1;
    if (ti->count[1] == cols) { /* whole rows: one contiguous run */
      init_run(im, t, seed, (uint64_t)(ti->start[0] * cols), w, ti->numel);
    } else {
      for (int64_t i = 0; i < ti->count[0]; i++)
        init_run(im, t, seed, (uint64_t)((ti->start[0] + i) * cols + ti->start[1]),
                 w + i * ti->count[1], (size_t)ti->count[1]);
    }
  }
}

double cf_model_flops(const struct cf_model_cfg *c) {
  double J = (double)(c->N * c->P), H = (double)c->H, D = (double)c->D;
  double T = J * (double)c->S + (double)c->prompt_len; /* the blocks also run the prompt */
  double SH = (double)c->S * H, I = fmax(SH, D), Dout = (double)cf_model_dout(c);
  double f = J * 2.0 * (D * SH + SH * SH);                               /* encoder */
  f += (double)c->layers * (T * (8.0 * H * H + 4.0 * H * (double)c->ffn) /* qkv, out, mlp */
                            + 2.0 * T * T * H);                          /* causal attention */
  if (c->head == CF_HEAD_VAE) f += J * (double)c->S * 2.0 * 4.0 * H * H; /* mu, lv MLPs */
  if (c->head == CF_HEAD_FM) { /* cond once per point, the MLP once per draw */
    double F = (double)c->fm_width, R = (double)c->fm_draws;
    f += J * 2.0 * (F * SH + R * (F * (D + CF_FM_FEATURES) + 2.0 * F * F + F * D));
    return 3.0 * f;
  }
  double din = SH;
  if (c->head == CF_HEAD_CVAE) { /* posterior, prior; the decoder also sees z */
    double dz = (double)c->cvae_dz;
    f += J * 2.0 * ((SH + D) * I + SH * I + 2.0 * I * 2.0 * dz);
    din += dz;
  }
  f += J * 2.0 * (din * I + I * I + I * Dout); /* decoder */
  return 3.0 * f;
}

const struct cf_tensor_info *cf_model_find(const struct cf_model *m, const char *name) {
  if (m == NULL || name == NULL) return NULL;
  for (int t = 0; t < m->n_tensors; t++)
    if (m->tensors[t].held && strcmp(m->tensors[t].name, name) == 0) return &m->tensors[t];
  return NULL;
}

void cf_model_zero_grad(struct cf_model *m) {
  if (m != NULL && m->grads != NULL) memset(m->grads, 0, m->n_params * sizeof(float));
}

cf_status cf_model_set_prompt(struct cf_model *m, int64_t b0, int64_t B, const int32_t *ids) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "model: prompt before cf_model_init");
  struct cf_model_impl *im = m->impl;
  CF_CHECK(im->L > 0, CF_EINVAL, "model: prompt ids given but the model has no prompt");
  CF_CHECK(ids != NULL && B >= 1 && b0 >= 0 && b0 + B <= m->max_batch, CF_EINVAL,
           "model: prompt ids for %lld sequences at %lld, expected 1..%lld (max_batch) in all",
           (long long)B, (long long)b0, (long long)m->max_batch);
  for (int64_t i = 0; i < B * im->L; i++)
    CF_CHECK(ids[i] >= 0 && ids[i] < m->cfg.vocab, CF_EINVAL,
             "model: prompt token id %d is outside the vocabulary [0, %lld)", (int)ids[i],
             (long long)m->cfg.vocab);
  memcpy(im->ids + b0 * im->L, ids, (size_t)(B * im->L) * sizeof(int32_t));
  return CF_OK;
}

int cf_model_first(const struct cf_model *m) {
  return ((const struct cf_model_impl *)m->impl)->first;
}

int cf_model_last(const struct cf_model *m) {
  return ((const struct cf_model_impl *)m->impl)->last;
}

cf_status cf_model_attn_stats(const struct cf_model *m, int64_t B, struct cf_attn_stats *st) {
  const struct cf_model_impl *im = m->impl;
  const struct cf_model_cfg *c = &m->cfg;
  CF_CHECK(im != NULL && im->n_tp == 1 && im->n_cp == 1 && im->l0 == 0 && im->l1 == c->layers,
           CF_EINVAL, "model: attention statistics need the whole model on one rank");
  CF_CHECK(im->L == 0, CF_EINVAL, "model: attention statistics of a prompt model are not kept");
  CF_CHECK(B >= 1 && B <= m->max_batch, CF_EINVAL,
           "model: attention statistics of %lld sequences, expected 1..%lld", (long long)B,
           (long long)m->max_batch);
  const int64_t T = im->T, S = c->S, P = c->P, heads = c->heads, dh = im->dh, H = c->H;
  const int64_t tok_t = P * S; /* tokens per time point: token i is at time i / tok_t */
  const int64_t win = c->no_history ? S : 0;
  for (int64_t l = 0; l < c->layers; l++) {
    const float *pr = im->ba[l].probs;
    double past = 0, uni = 0, ent = 0, n = 0;
    for (int64_t bh = 0; bh < B * heads; bh++)
      for (int64_t i = tok_t; i < T; i++) {
        const float *r = pr + (bh * T + i) * T;
        const int64_t k0 = cf_attn_first(i, win), hist = (i / tok_t) * tok_t; /* keys < hist */
        double pm = 0, e = 0;
        for (int64_t k = k0; k <= i; k++) {
          if (k < hist) pm += r[k];
          if (r[k] > 0.0f) e -= (double)r[k] * log((double)r[k]);
        }
        past += pm;
        ent += e;
        uni += (double)(hist > k0 ? hist - k0 : 0) / (double)(i - k0 + 1);
        n += 1.0;
      }
    struct cf_attn_stats *o = &st[l];
    o->past = n > 0 ? past / n : 0.0;
    o->uniform = n > 0 ? uni / n : 0.0;
    o->entropy = n > 0 ? ent / n : 0.0;
    double qq = 0, kk = 0;
    const float *w = im->blk[l].qkv.w; /* (3H, H), per head rows [q | k | v] of dh each */
    for (int64_t h = 0; h < heads; h++)
      for (int64_t r = 0; r < 2 * dh; r++)
        for (int64_t col = 0; col < H; col++) {
          const double v = w[(h * 3 * dh + r) * H + col];
          *(r < dh ? &qq : &kk) += v * v;
        }
    o->q_norm = sqrt(qq);
    o->k_norm = sqrt(kk);
  }
  return CF_OK;
}

int64_t cf_model_local_tokens(const struct cf_model *m) {
  return ((const struct cf_model_impl *)m->impl)->Tx;
}

/* One cf_sqsum per held tensor: each tensor's sum tells whether it is finite, the counted ones
 * add up to the norm; the gradient is read once. */
double cf_model_grad_sqnorm(const struct cf_model *m, int *finite) {
  const struct cf_model_impl *im = m->impl;
  double s = 0;
  int ok = 1;
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    if (!ti->held) continue;
    double q = cf_sqsum(m->grads + ti->offset, ti->numel);
    ok &= isfinite(q) != 0;
    if (ti->split != CF_SPLIT_NONE || im->tp_rank == 0) s += q;
  }
  if (finite) *finite = ok;
  return s;
}

float *cf_model_stage_in(struct cf_model *m, int64_t b0, int64_t B) {
  struct cf_model_impl *im = m->impl;
  (void)B;
  act_select(m, b0);
  return im->ba[im->l0].x;
}

const float *cf_model_stage_out(struct cf_model *m, int64_t b0, int64_t B) {
  (void)B;
  act_select(m, b0);
  return ((struct cf_model_impl *)m->impl)->xL;
}

float *cf_model_stage_grad(struct cf_model *m, int64_t b0, int64_t B) {
  (void)B;
  act_select(m, b0);
  return ((struct cf_model_impl *)m->impl)->gx;
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

/* Rotate (or inverse-rotate) q and k of B sequences of T rows each at their global positions:
 * 0.. T-1, or the two context-parallel token ranges. */
static void rotary_rows(float *qkv, int64_t B, int64_t T, const struct cf_block_dims *d,
                        int inverse) {
  const int64_t ld = 3 * d->heads * d->dh;
  for (int64_t b = 0; b < B; b++) {
    float *q = qkv + b * T * ld;
    if (d->ring == NULL) {
      cf_rotary_apply(q, T, ld, d->heads, d->dh, d->rot, d->cs, d->sn, 0, inverse);
      continue;
    }
    for (int i = 0; i < 2; i++) {
      int64_t n = d->thi[i] - d->tlo[i];
      if (n > 0)
        cf_rotary_apply(q, n, ld, d->heads, d->dh, d->rot, d->cs, d->sn, d->tlo[i], inverse);
      q += n * ld;
    }
  }
}

/* Collective on tp. In-place sum of n floats over the tensor-parallel group. */
static cf_status tp_sum(MPI_Comm tp, float *x, int64_t n) {
  cf_watchdog_enter("tp_allreduce", -1);
  double t0 = cf_commstat_now();
  int e = cf_mpi_allreduce(MPI_IN_PLACE, x, (size_t)n, MPI_FLOAT, MPI_SUM, tp);
  cf_commstat_add(CF_COMM_TP, (double)n * sizeof(float), cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

cf_status cf_block_fwd(const struct cf_block_p *p, const struct cf_block_a *a, int64_t B, int64_t T,
                       const struct cf_block_dims *d, float *xn) {
  const int64_t H = d->H, Hl = d->heads * d->dh, H3 = 3 * Hl, R = B * T;
  cf_layernorm_fwd(a->x, R, H, p->ln1.w, p->ln1.b, a->xh1, a->rs1, a->u1);
  cf_linear_fwd(a->u1, R, p->qkv.w, p->qkv.b, H3, H, 0, a->qkv);
  rotary_rows(a->qkv, B, T, d, 0);
  if (d->ring != NULL)
    CF_TRY(cf_ring_attn_fwd(d->ring, B, a->qkv, a->probs, a->ao));
  else
    cf_attn_fwd(a->qkv, B, T, d->heads, d->dh, d->win, a->probs, a->ao);
  cf_layernorm_affine(a->xh1, R, H, p->ln2.w, p->ln2.b, a->u2); /* ln2 normalizes x too */
  cf_linear_fwd(a->u2, R, p->fc1.w, p->fc1.b, d->ffn, H, 0, a->f);
  cf_gelu_fwd(a->f, a->g, a->cdf, (size_t)(R * d->ffn));
  if (d->tp == MPI_COMM_NULL) {
    memcpy(xn, a->x, (size_t)(R * H) * sizeof(float));
    cf_linear_fwd(a->ao, R, p->out.w, p->out.b, H, Hl, 1, xn);
    cf_linear_fwd(a->g, R, p->fc2.w, p->fc2.b, H, d->ffn, 1, xn);
    return CF_OK;
  }
  /* tensor parallel: this rank's heads and MLP columns give partial sums of both row-split
   * projections; one all-reduce adds them, then the residual and the (replicated) biases */
  cf_linear_fwd(a->ao, R, p->out.w, NULL, H, Hl, 0, xn);
  cf_linear_fwd(a->g, R, p->fc2.w, NULL, H, d->ffn, 1, xn);
  CF_TRY(tp_sum(d->tp, xn, R * H));
  for (int64_t i = 0; i < R; i++) {
    float *y = xn + i * H;
    const float *x = a->x + i * H;
    for (int64_t o = 0; o < H; o++)
      y[o] += x[o] + p->out.b[o] + p->fc2.b[o];
  }
  return CF_OK;
}

cf_status cf_block_bwd(const struct cf_block_p *p, const struct cf_block_a *a, int64_t B, int64_t T,
                       const struct cf_block_dims *d, float *gx, const struct cf_block_ws *w) {
  const int64_t H = d->H, Hl = d->heads * d->dh, H3 = 3 * Hl, R = B * T, ffn = d->ffn;
  float *gt1 = w->gt, *gt2 = w->gt + R * H; /* d ln1 output, d ln2 output */
  /* both branches read d loss / d xn before their LayerNorm gradients are added to gx */
  cf_linear_bwd(a->ao, gx, R, p->out.w, H, Hl, p->out.gw, p->out.gb, w->gao, 0);
  /* gelu(f) again (the forward's bits: f * Phi(f)) for fc2's weight gradient, then its
   * input gradient over it */
  cf_mul(a->f, a->cdf, w->gf, (size_t)(R * ffn));
  cf_linear_bwd(w->gf, gx, R, p->fc2.w, H, ffn, p->fc2.gw, p->fc2.gb, NULL, 0);
  cf_linear_bwd(NULL, gx, R, p->fc2.w, H, ffn, NULL, NULL, w->gf, 0);
  cf_gelu_bwd(a->f, a->cdf, w->gf, w->gf, (size_t)(R * ffn));
  cf_linear_bwd(a->u2, w->gf, R, p->fc1.w, ffn, H, p->fc1.gw, p->fc1.gb, gt2, 0);
  if (d->ring != NULL)
    CF_TRY(cf_ring_attn_bwd(d->ring, B, a->qkv, a->probs, a->ao, w->gao, w->gqkv));
  else
    cf_attn_bwd(a->qkv, a->probs, w->gao, B, T, d->heads, d->dh, w->gqkv, w->gs);
  rotary_rows(w->gqkv, B, T, d, 1);
  cf_linear_bwd(a->u1, w->gqkv, R, p->qkv.w, H3, H, p->qkv.gw, p->qkv.gb, gt1, 0);
  if (d->tp != MPI_COMM_NULL) CF_TRY(tp_sum(d->tp, w->gt, 2 * R * H));
  cf_layernorm_bwd(gt2, a->xh1, a->rs1, R, H, p->ln2.w, p->ln2.gw, p->ln2.gb, gx, 1);
  cf_layernorm_bwd(gt1, a->xh1, a->rs1, R, H, p->ln1.w, p->ln1.gw, p->ln1.gb, gx, 1);
  return CF_OK;
}

static struct cf_block_dims block_dims(const struct cf_model *m) {
  struct cf_model_impl *im = m->impl;
  struct cf_block_dims d = {.H = m->cfg.H,
                            .heads = im->heads_l,
                            .dh = im->dh,
                            .rot = im->rot,
                            .ffn = im->ffn_l,
                            .win = m->cfg.no_history ? m->cfg.S : 0,
                            .cs = im->cs,
                            .sn = im->sn,
                            .tp = im->tpc,
                            .ring = im->has_ring ? &im->ring : NULL};
  for (int i = 0; i < 2; i++) {
    d.tlo[i] = im->xlo[i];
    d.thi[i] = im->xhi[i];
  }
  return d;
}

/* Global index of local row r of a sequence whose rows are the ranges [lo0, hi0), [lo1, hi1). */
static int64_t global_row(const int64_t lo[2], const int64_t hi[2], int64_t r) {
  int64_t n0 = hi[0] - lo[0];
  return r < n0 ? lo[0] + r : lo[1] + (r - n0);
}

/* ---- training forward ---- */

const char *cf_head_name(enum cf_head h) {
  switch (h) {
  case CF_HEAD_VAE:
    return "vae";
  case CF_HEAD_GAUSS:
    return "gauss";
  case CF_HEAD_GMM:
    return "gmm";
  case CF_HEAD_FM:
    return "fm";
  case CF_HEAD_CVAE:
    return "cvae";
  }
  return "?";
}

void cf_head_train_noise(const struct cf_model_cfg *c, const struct cf_rng *r, int64_t j,
                         float *out) {
  if (c->head == CF_HEAD_FM) {
    const uint64_t R = (uint64_t)c->fm_draws, D = (uint64_t)c->D, n = (R * D + 3) / 4 * 4;
    const uint64_t base = (uint64_t)j * (n + (R + 3) / 4 * 4);
    for (uint64_t q = 0; q < R; q++) {
      float *o = out + q * (1 + D);
      cf_rng_uniform(r, base + n + q, o, 1);
      cf_rng_normal(r, base + q * D, o + 1, (size_t)D);
    }
  } else if (c->head == CF_HEAD_CVAE) {
    cf_rng_normal(r, (uint64_t)j * (uint64_t)c->cvae_dz, out, (size_t)c->cvae_dz);
  }
}

/* The call's head training noise (fm, cvae) into hnoise (B*Jl, Wt): rows of eps (B, J, Wt)
 * when given, else drawn per point from {seed, CF_RNG_HEAD, step, seq0 + b} of the key. */
static void head_noise(struct cf_model_impl *im, const struct cf_model_cfg *c, int64_t B,
                       const float *eps, const struct cf_dropkey *dk) {
  const int64_t Wt = im->Wt, Jl = im->Jl, J = im->J;
  for (int64_t b = 0; b < B; b++) {
    struct cf_rng r = {.seed = dk != NULL ? dk->seed : 0,
                       .domain = CF_RNG_HEAD,
                       .step = dk != NULL ? dk->step : 0,
                       .index = (dk != NULL ? dk->seq0 : 0) + (uint64_t)b};
    for (int64_t jl = 0; jl < Jl; jl++) {
      int64_t j = global_row(im->plo, im->phi, jl);
      float *dst = im->hnoise + (b * Jl + jl) * Wt;
      if (eps != NULL)
        memcpy(dst, eps + (b * J + j) * Wt, (size_t)Wt * sizeof(float));
      else
        cf_head_train_noise(c, &r, j, dst);
    }
  }
}

/* The diagonal Gaussian NLL of target y (D) under one [m (D) | r (D)] row o with log-std
 * clamp(r, lo, hi): returns it, adds the squared error of m to *rec and puts the gradient
 * w.r.t. o divided by n in g (zero for a clamped r). */
static double gauss_nll(const float *o, const float *y, int64_t D, float lo, float hi, double n,
                        float *g, double *rec) {
  double nll = 0;
  for (int64_t d = 0; d < D; d++) {
    float r = o[D + d], ls = r < lo ? lo : (r > hi ? hi : r);
    double diff = (double)y[d] - (double)o[d], is = exp(-(double)ls), zz = diff * is;
    nll += 0.5 * zz * zz + ls + CF_HALF_LOG_2PI;
    *rec += diff * diff;
    g[d] = (float)(-diff * is * is / n);
    g[D + d] = (r >= lo && r <= hi) ? (float)((1.0 - zz * zz) / n) : 0.0f;
  }
  return nll;
}

/* log pi_k + log N(y; m_k, diag s_k^2) of component k of the gmm row o (lza: log sum exp a). */
static double gmm_logp(const struct cf_model_cfg *c, const float *o, const float *y, int64_t k,
                       double lza) {
  const int64_t K = c->gmm_k, D = c->D;
  const float *mu = o + K + k * D, *r = o + K + K * D + k * D;
  double l = (double)o[k] - lza;
  for (int64_t d = 0; d < D; d++) {
    float ls = r[d] < c->logstd_min ? c->logstd_min : (r[d] > c->logstd_max ? c->logstd_max : r[d]);
    double z = ((double)y[d] - (double)mu[d]) * exp(-(double)ls);
    l -= 0.5 * z * z + ls + CF_HALF_LOG_2PI;
  }
  return l;
}

/* The gmm head's NLL of target y (D) under one decoder row o = [a (K) | m (K, D) | r (K, D)];
 * g (Dout) gets scale x its gradient, *r2 the squared error of the mixture mean. Sums in
 * double, log-sum-exps shifted by their largest term. */
static double gmm_nll(const struct cf_model_cfg *c, const float *o, const float *y, double scale,
                      float *g, double *r2) {
  const int64_t K = c->gmm_k, D = c->D;
  const float *a = o, *mu = o + K, *r = o + K + K * D;
  const float lo = c->logstd_min, hi = c->logstd_max;
  double amax = -INFINITY, lmax = -INFINITY, za = 0, zl = 0;
  for (int64_t k = 0; k < K; k++)
    amax = fmax(amax, (double)a[k]);
  for (int64_t k = 0; k < K; k++)
    za += exp((double)a[k] - amax);
  const double lza = amax + log(za); /* log sum_k exp a_k */
  for (int64_t k = 0; k < K; k++)
    lmax = fmax(lmax, gmm_logp(c, o, y, k, lza));
  for (int64_t k = 0; k < K; k++)
    zl += exp(gmm_logp(c, o, y, k, lza) - lmax);
  const double nll = -(lmax + log(zl));
  double err = 0;
  for (int64_t d = 0; d < D; d++) {
    double mm = 0;
    for (int64_t k = 0; k < K; k++)
      mm += exp((double)a[k] - lza) * (double)mu[k * D + d];
    err += ((double)y[d] - mm) * ((double)y[d] - mm);
  }
  *r2 = err;
  for (int64_t k = 0; k < K; k++) {
    /* responsibility of component k, and the gradients of -log sum_k pi_k N_k */
    double resp = exp(gmm_logp(c, o, y, k, lza) + nll), pi = exp((double)a[k] - lza);
    g[k] = (float)(scale * (pi - resp));
    for (int64_t d = 0; d < D; d++) {
      float rr = r[k * D + d], ls = rr < lo ? lo : (rr > hi ? hi : rr);
      double is = exp(-(double)ls), diff = (double)y[d] - (double)mu[k * D + d], z = diff * is;
      g[K + k * D + d] = (float)(-scale * resp * diff * is * is);
      g[K + K * D + k * D + d] =
          (rr >= lo && rr <= hi) ? (float)(scale * resp * (1.0 - z * z)) : 0.0f;
    }
  }
  return nll;
}

/* ---- the fm head (training) ---- */

/* Velocity MLP forward on the call's B*Jl*R draw rows from the saved noise: fills fm_cp,
 * fm_in, the units, out (velocities) and dout; the loss into *out. */
static void fm_forward(struct cf_model_impl *im, const struct cf_model_cfg *c, int64_t B,
                       const float *y, double n_pts, struct cf_loss *out) {
  const int64_t D = c->D, J = im->J, Jl = im->Jl, R = im->R, F = im->F, Wt = im->Wt;
  const int64_t Dw = D + CF_FM_FEATURES, Rp = B * Jl, Rq = Rp * R;
  cf_linear_fwd(im->hf, Rp, im->fmc.w, im->fmc.b, F, im->SH, 0, im->fm_cp); /* (Rp, F) */
  for (int64_t b = 0; b < B; b++) {
    for (int64_t jl = 0; jl < Jl; jl++) {
      const int64_t j = global_row(im->plo, im->phi, jl), p = b * Jl + jl;
      const float *yr = j < im->n_pred_pts ? y + (b * J + j) * D : NULL; /* others: y = 0 */
      for (int64_t r = 0; r < R; r++) {
        const float *nz = im->hnoise + p * Wt + r * (1 + D), s = nz[0];
        float *in = im->fm_in + (p * R + r) * Dw;
        for (int64_t d = 0; d < D; d++)
          in[d] = (1.0f - s) * nz[1 + d] + s * (yr != NULL ? yr[d] : 0.0f);
        cf_fm_features(s, in + D);
      }
    }
  }
  cf_linear_fwd(im->fm_in, Rq, im->fm1.w, im->fm1.b, F, Dw, 0, im->fu1.xh);
  for (int64_t q = 0; q < Rq; q++) {
    float *a = im->fu1.xh + q * F;
    const float *cp = im->fm_cp + (q / R) * F;
    for (int64_t f = 0; f < F; f++)
      a[f] += cp[f];
  }
  cf_lnrelu_fwd(im->fu1.xh, im->fu1.rs, NULL, Rq, F, im->fu1.d);
  cf_linear_fwd(im->fu1.d, Rq, im->fm2.w, im->fm2.b, F, F, 0, im->fu2.xh);
  cf_lnrelu_fwd(im->fu2.xh, im->fu2.rs, NULL, Rq, F, im->fu2.d);
  cf_linear_fwd(im->fu2.d, Rq, im->fm3.w, im->fm3.b, F, F, 0, im->fu3.xh);
  cf_lnrelu_fwd(im->fu3.xh, im->fu3.rs, NULL, Rq, F, im->fu3.d);
  cf_linear_fwd(im->fu3.d, Rq, im->fmo.w, im->fmo.b, D, F, 0, im->out); /* (Rq, D) */
  const double div = n_pts * (double)R;
  double fm = 0;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t jl = 0; jl < Jl; jl++) {
      const int64_t j = global_row(im->plo, im->phi, jl), p = b * Jl + jl;
      if (j >= im->n_pred_pts) continue;
      const float *yr = y + (b * J + j) * D;
      double f1 = 0;
      for (int64_t r = 0; r < R; r++) {
        const float *nz = im->hnoise + p * Wt + r * (1 + D) + 1, *v = im->out + (p * R + r) * D;
        float *g = im->dout + (p * R + r) * D;
        for (int64_t d = 0; d < D; d++) {
          double diff = (double)v[d] - ((double)yr[d] - (double)nz[d]);
          f1 += diff * diff;
          g[d] = (float)(2.0 * diff / div);
        }
      }
      fm += f1;
      if (im->pl != NULL) im->pl[j] += f1 / (double)R;
    }
  }
  out->recon = fm / div;
  out->loss = out->recon;
}

/* Backward of fm_forward for B sequences: parameter gradients added, gh (Rp, S*H) =
 * d loss / d c (overwritten). */
static void fm_backward(struct cf_model_impl *im, const struct cf_model_cfg *c, int64_t B) {
  const int64_t D = c->D, R = im->R, F = im->F, Rp = B * im->Jl, Rq = Rp * R;
  const int64_t Dw = D + CF_FM_FEATURES;
  float *g1 = im->fm_g1, *g2 = im->fm_g2;
  cf_linear_bwd(im->fu3.d, im->dout, Rq, im->fmo.w, D, F, im->fmo.gw, im->fmo.gb, g1, 0);
  cf_lnrelu_bwd(g1, im->fu3.xh, im->fu3.rs, NULL, Rq, F, g1);
  cf_linear_bwd(im->fu2.d, g1, Rq, im->fm3.w, F, F, im->fm3.gw, im->fm3.gb, g2, 0);
  cf_lnrelu_bwd(g2, im->fu2.xh, im->fu2.rs, NULL, Rq, F, g2);
  cf_linear_bwd(im->fu1.d, g2, Rq, im->fm2.w, F, F, im->fm2.gw, im->fm2.gb, g1, 0);
  cf_lnrelu_bwd(g1, im->fu1.xh, im->fu1.rs, NULL, Rq, F, g1); /* d loss / d a1 */
  cf_linear_bwd(im->fm_in, g1, Rq, im->fm1.w, F, Dw, im->fm1.gw, im->fm1.gb, NULL, 0);
  for (int64_t p = 0; p < Rp; p++) { /* cond(c) enters every draw of its point */
    float *gc = im->fm_gc + p * F;
    memcpy(gc, g1 + p * R * F, (size_t)F * sizeof(float));
    for (int64_t r = 1; r < R; r++) {
      const float *gr = g1 + (p * R + r) * F;
      for (int64_t f = 0; f < F; f++)
        gc[f] += gr[f];
    }
  }
  cf_linear_bwd(im->hf, im->fm_gc, Rp, im->fmc.w, F, im->SH, im->fmc.gw, im->fmc.gb, im->gh, 0);
}

/* ---- the cvae head (training) ---- */

static float clampf(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

/* Posterior, prior, reparameterized z, KL terms and decoder NLL for B sequences from the
 * saved noise (eps_z); dout, cv_gqkl, cv_gp and cv_fac get what backward needs. */
static void cvae_forward(struct cf_model_impl *im, const struct cf_model_cfg *c, int64_t B,
                         const float *y, const struct cf_dropkey *dk, int drop, double n_pts,
                         float beta, struct cf_loss *out) {
  const int64_t D = c->D, J = im->J, Jl = im->Jl, SH = im->SH, dz = im->dz, Id = im->Idec;
  const int64_t Rp = B * Jl, Wq = SH + D, Wd = SH + dz, Dout = im->Dout;
  const float lo = c->logstd_min, hi = c->logstd_max;
  struct cf_unit_a uq = unit_masked(&im->uq, drop), up = unit_masked(&im->up, drop);
  struct cf_unit_a u1 = unit_masked(&im->ud1, drop), u2 = unit_masked(&im->ud2, drop);
  if (drop) {
    cf_dropout_mask_rows(im->uq.mask, B, im->plo, im->phi, Id, c->dropout, dk, 5);
    cf_dropout_mask_rows(im->up.mask, B, im->plo, im->phi, Id, c->dropout, dk, 6);
  }
  for (int64_t b = 0; b < B; b++) { /* posterior input [c, y] (y = 0 where no loss) */
    for (int64_t jl = 0; jl < Jl; jl++) {
      const int64_t j = global_row(im->plo, im->phi, jl), p = b * Jl + jl;
      float *q = im->cv_qin + p * Wq;
      memcpy(q, im->hf + p * SH, (size_t)SH * sizeof(float));
      if (j < im->n_pred_pts)
        memcpy(q + SH, y + (b * J + j) * D, (size_t)D * sizeof(float));
      else
        memset(q + SH, 0, (size_t)D * sizeof(float));
    }
  }
  cf_mlp2_fwd(&im->cq1, &im->cq2, im->cv_qin, Rp, &uq, im->cv_q);
  cf_mlp2_fwd(&im->cp1, &im->cp2, im->hf, Rp, &up, im->cv_p);
  const double klw = (double)beta / n_pts;
  double kl = 0;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t jl = 0; jl < Jl; jl++) {
      const int64_t j = global_row(im->plo, im->phi, jl), p = b * Jl + jl;
      const int counted = j < im->n_pred_pts;
      const float *q = im->cv_q + p * 2 * dz, *pp = im->cv_p + p * 2 * dz;
      const float *e = im->hnoise + p * dz;
      float *din = im->cv_din + p * Wd, *fac = im->cv_fac + p * dz;
      float *gq = im->cv_gqkl + p * 2 * dz, *gp = im->cv_gp + p * 2 * dz;
      memcpy(din, im->hf + p * SH, (size_t)SH * sizeof(float));
      for (int64_t i = 0; i < dz; i++) {
        const float rq = q[dz + i], rp = pp[dz + i], lq = clampf(rq, lo, hi);
        const float lp = clampf(rp, lo, hi), sq = expf(lq);
        din[SH + i] = q[i] + sq * e[i];
        if (!counted) {
          fac[i] = gq[i] = gq[dz + i] = gp[i] = gp[dz + i] = 0.0f;
          continue;
        }
        const int inq = rq >= lo && rq <= hi, inp = rp >= lo && rp <= hi;
        const double vq = exp(2.0 * (double)lq), ivp = exp(-2.0 * (double)lp);
        const double dm = (double)q[i] - (double)pp[i];
        kl += (double)lp - (double)lq + 0.5 * (vq + dm * dm) * ivp - 0.5;
        fac[i] = inq ? sq * e[i] : 0.0f;
        gq[i] = (float)(klw * dm * ivp);
        gq[dz + i] = inq ? (float)(klw * (vq * ivp - 1.0)) : 0.0f;
        gp[i] = (float)(-klw * dm * ivp);
        gp[dz + i] = inp ? (float)(klw * (1.0 - (vq + dm * dm) * ivp)) : 0.0f;
      }
    }
  }
  cf_decoder_fwd(im, im->cv_din, Rp, &u1, &u2, im->out);
  double nll = 0, rec = 0;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t jl = 0; jl < Jl; jl++) {
      const int64_t j = global_row(im->plo, im->phi, jl), p = b * Jl + jl;
      if (j >= im->n_pred_pts) continue;
      const double v = gauss_nll(im->out + p * Dout, y + (b * J + j) * D, D, lo, hi, n_pts,
                                 im->dout + p * Dout, &rec);
      nll += v;
      if (im->pl != NULL) im->pl[j] += v;
    }
  }
  out->nll = nll / n_pts;
  out->recon = rec / n_pts;
  out->kl = kl / n_pts;
  out->loss = out->nll + (double)beta * out->kl;
}

/* Backward of cvae_forward after the decoder's: cv_gdin holds d loss / d [c, z]; parameter
 * gradients added, gh (Rp, S*H) = d loss / d c (overwritten). */
static void cvae_backward(struct cf_model_impl *im, int64_t B, int drop) {
  const int64_t Jl = im->Jl, SH = im->SH, dz = im->dz, Id = im->Idec, Rp = B * Jl;
  const int64_t Wq = im->cq1.in, Wd = SH + dz;
  struct cf_unit_a uq = unit_masked(&im->uq, drop), up = unit_masked(&im->up, drop);
  for (int64_t p = 0; p < Rp; p++) { /* z = mq + exp(lq) eps_z, plus the KL terms */
    const float *gz = im->cv_gdin + p * Wd + SH, *gk = im->cv_gqkl + p * 2 * dz;
    const float *fac = im->cv_fac + p * dz;
    float *gq = im->cv_gq + p * 2 * dz;
    for (int64_t i = 0; i < dz; i++) {
      gq[i] = gz[i] + gk[i];
      gq[dz + i] = gz[i] * fac[i] + gk[dz + i];
    }
  }
  cf_linear_bwd(uq.d, im->cv_gq, Rp, im->cq2.w, 2 * dz, Id, im->cq2.gw, im->cq2.gb, im->gd1, 0);
  cf_lnrelu_bwd(im->gd1, uq.xh, uq.rs, uq.mask, Rp, Id, im->gd1);
  cf_linear_bwd(im->cv_qin, im->gd1, Rp, im->cq1.w, Id, Wq, im->cq1.gw, im->cq1.gb, im->cv_gqin, 0);
  cf_linear_bwd(up.d, im->cv_gp, Rp, im->cp2.w, 2 * dz, Id, im->cp2.gw, im->cp2.gb, im->gd1, 0);
  cf_lnrelu_bwd(im->gd1, up.xh, up.rs, up.mask, Rp, Id, im->gd1);
  cf_linear_bwd(im->hf, im->gd1, Rp, im->cp1.w, Id, SH, im->cp1.gw, im->cp1.gb, im->gh, 0);
  for (int64_t p = 0; p < Rp; p++) {
    float *g = im->gh + p * SH;
    const float *a = im->cv_gdin + p * Wd, *q = im->cv_gqin + p * Wq;
    for (int64_t k = 0; k < SH; k++)
      g[k] += a[k] + q[k];
  }
}

cf_status cf_model_forward(struct cf_model *m, int64_t B, const float *z, const float *y,
                           const float *eps, const struct cf_dropkey *dk, double n_pts, float beta,
                           struct cf_loss *out) {
  return cf_model_forward_at(m, 0, B, z, y, eps, dk, n_pts, beta, out);
}

/* A successful forward of sequences [b0, b0 + B): they may now run their backward, once. */
static void fwd_done(struct cf_model_impl *im, int64_t b0, int64_t B) {
  im->last_B = B;
  memset(im->fwd_ok + b0, 1, (size_t)B);
}

cf_status cf_model_forward_at(struct cf_model *m, int64_t b0, int64_t B, const float *z,
                              const float *y, const float *eps, const struct cf_dropkey *dk,
                              double n_pts, float beta, struct cf_loss *out) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "model: forward before cf_model_init");
  CF_CHECK(B >= 1 && b0 >= 0 && b0 + B <= m->max_batch, CF_EINVAL,
           "model: forward with %lld sequences at %lld, expected 1..%lld (max_batch) in all",
           (long long)B, (long long)b0, (long long)m->max_batch);
  const struct cf_model_cfg *c = &m->cfg;
  struct cf_model_impl *im = m->impl;
  /* from here until it succeeds, the sequences' stored activations may be partly overwritten:
   * no backward of them (fwd_done marks them again) */
  memset(im->fwd_ok + b0, 0, (size_t)B);
  CF_CHECK(out != NULL && (!im->first || z != NULL) && (!im->last || y != NULL), CF_EINVAL,
           "model: forward needs z, y and out");
  CF_CHECK(n_pts > 0.0, CF_EINVAL, "model: forward needs a positive point count (got %g)", n_pts);
  CF_CHECK(!im->last || c->head != CF_HEAD_VAE || eps != NULL, CF_EINVAL,
           "model: the vae head needs latent noise eps");
  const int64_t H = c->H, D = c->D, S = c->S, J = im->J, T = im->T, Id = im->Idec, SH = im->SH;
  const int64_t Jl = im->Jl, Tl = im->Tl, R = B * Tl, Rp = B * Jl, Dout = im->Dout;
  const int drop = dk != NULL && c->dropout > 0.0f;
  im->last_B = 0;
  im->last_drop = drop;
  im->pl = m->point_loss;
  memset(out, 0, sizeof *out);
  act_select(m, b0);

  /* encoder: z (Rp, D) (or [z, t] (Rp, D+1) with the time input) -> e (Rp, SH) = x0 (R, H) */
  if (im->first) {
    const int64_t Din = D + (c->time_input != 0);
    for (int64_t b = 0; b < B; b++) {
      float *dst = im->z + b * Jl * Din;
      for (int i = 0; i < 2; i++) {
        for (int64_t j = im->plo[i]; j < im->phi[i]; j++) {
          memcpy(dst, z + (b * J + j) * D, (size_t)D * sizeof(float));
          if (c->time_input) dst[D] = cf_model_point_time(c, j);
          dst += Din;
        }
      }
    }
    if (drop) cf_dropout_mask_rows(im->enc.mask, B, im->plo, im->phi, SH, c->dropout, dk, 0);
    struct cf_unit_a ue = unit_masked(&im->enc, drop);
    if (im->Lp == 0) {
      cf_mlp2_fwd(&im->enc1, &im->enc2, im->z, Rp, &ue, im->ba[im->l0].x);
    } else { /* x (B, Lp + Tl, H) = [wte rows of the ids | encoder output] */
      const int64_t Lp = im->Lp, Tx = im->Tx;
      cf_mlp2_fwd(&im->enc1, &im->enc2, im->z, Rp, &ue, im->eout);
      for (int64_t b = 0; b < B; b++) {
        float *xb = im->ba[im->l0].x + b * Tx * H;
        const int32_t *ids = im->ids + (b0 + b) * im->L;
        for (int64_t i = 0; i < Lp; i++)
          memcpy(xb + i * H, im->wte + (int64_t)ids[i] * H, (size_t)H * sizeof(float));
        memcpy(xb + Lp * H, im->eout + b * Tl * H, (size_t)(Tl * H) * sizeof(float));
      }
    }
  }

  /* transformer blocks: x += attn(ln1(x)) + mlp(ln2(x)) */
  struct cf_block_dims bd = block_dims(m);
  for (int64_t l = im->l0; l < im->l1; l++) {
    float *xn = l + 1 < im->l1 ? im->ba[l + 1].x : im->xL; /* (B*Tx, H) */
    CF_TRY(cf_block_fwd(&im->blk[l], &im->ba[l], B, im->Tx, &bd, xn));
  }
  if (!im->last) {
    fwd_done(im, b0, B);
    return CF_OK;
  }
  if (im->Lp == 0)
    cf_layernorm_fwd(im->xL, R, H, im->lnf.w, im->lnf.b, im->xhf, im->rsf, im->hf);
  else /* the trajectory rows of each sequence; the prompt rows' outputs are not used */
    for (int64_t b = 0; b < B; b++)
      cf_layernorm_fwd(im->xL + (b * im->Tx + im->Lp) * H, Tl, H, im->lnf.w, im->lnf.b,
                       im->xhf + b * Tl * H, im->rsf + b * Tl, im->hf + b * Tl * H);

  /* head */
  if (im->Wt > 0) head_noise(im, c, B, eps, dk);
  if (c->head == CF_HEAD_FM) {
    memset(im->dout, 0, (size_t)(Rp * im->R * D) * sizeof(float));
    fm_forward(im, c, B, y, n_pts, out);
    fwd_done(im, b0, B);
    return CF_OK;
  }
  struct cf_unit_a u1 = unit_masked(&im->ud1, drop), u2 = unit_masked(&im->ud2, drop);
  if (drop) {
    cf_dropout_mask_rows(im->ud1.mask, B, im->plo, im->phi, Id, c->dropout, dk, 3);
    cf_dropout_mask_rows(im->ud2.mask, B, im->plo, im->phi, Id, c->dropout, dk, 4);
  }
  memset(im->dout, 0, (size_t)(Rp * Dout) * sizeof(float));
  if (c->head == CF_HEAD_CVAE) {
    cvae_forward(im, c, B, y, dk, drop, n_pts, beta, out);
  } else if (c->head == CF_HEAD_GAUSS) {
    cf_decoder_fwd(im, im->hf, Rp, &u1, &u2, im->out);
    const float lo = c->logstd_min, hi = c->logstd_max;
    double nll = 0, rec = 0;
    for (int64_t b = 0; b < B; b++) {
      for (int64_t jl = 0; jl < Jl; jl++) {
        int64_t j = global_row(im->plo, im->phi, jl), row = b * Jl + jl;
        if (j >= im->n_pred_pts) continue;
        const double v = gauss_nll(im->out + row * Dout, y + (b * J + j) * D, D, lo, hi, n_pts,
                                   im->dout + row * Dout, &rec);
        nll += v;
        if (im->pl != NULL) im->pl[j] += v;
      }
    }
    out->nll = nll / n_pts;
    out->recon = rec / n_pts;
    out->loss = out->nll;
  } else if (c->head == CF_HEAD_GMM) {
    cf_decoder_fwd(im, im->hf, Rp, &u1, &u2, im->out);
    double nll = 0, rec = 0;
    for (int64_t b = 0; b < B; b++) {
      for (int64_t jl = 0; jl < Jl; jl++) {
        int64_t j = global_row(im->plo, im->phi, jl), row = b * Jl + jl;
        if (j >= im->n_pred_pts) continue;
        double r2;
        const double v = gmm_nll(c, im->out + row * Dout, y + (b * J + j) * D, 1.0 / n_pts,
                                 im->dout + row * Dout, &r2);
        nll += v;
        if (im->pl != NULL) im->pl[j] += v;
        rec += r2;
      }
    }
    out->nll = nll / n_pts;
    out->recon = rec / n_pts;
    out->loss = out->nll;
  } else {
    struct cf_unit_a um = unit_masked(&im->umu, drop), ul = unit_masked(&im->ulv, drop);
    if (drop) {
      cf_dropout_mask_rows(im->umu.mask, B, im->tlo, im->thi, H, c->dropout, dk, 1);
      cf_dropout_mask_rows(im->ulv.mask, B, im->tlo, im->thi, H, c->dropout, dk, 2);
    }
    cf_mlp2_fwd(&im->mu1, &im->mu2, im->hf, R, &um, im->mu);
    cf_mlp2_fwd(&im->lv1, &im->lv2, im->hf, R, &ul, im->v);
    const double klw = (double)beta / (n_pts * (double)S);
    double kl = 0;
    for (int64_t b = 0; b < B; b++) {
      for (int64_t kk = 0; kk < Tl; kk++) {
        int64_t k = global_row(im->tlo, im->thi, kk);
        size_t base = (size_t)((b * Tl + kk) * H);
        const float *mu = im->mu + base, *v = im->v + base, *e = eps + (b * T + k) * H;
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
      for (int64_t jl = 0; jl < Jl; jl++) {
        int64_t j = global_row(im->plo, im->phi, jl), row = b * Jl + jl;
        if (j >= im->n_pred_pts) continue;
        const float *o = im->out + row * Dout, *yr = y + (b * J + j) * D;
        float *g = im->dout + row * Dout;
        double r1 = 0;
        for (int64_t d = 0; d < D; d++) {
          double diff = (double)o[d] - (double)yr[d];
          r1 += diff * diff;
          g[d] = (float)(2.0 * diff / n_pts);
        }
        rec += r1;
        if (im->pl != NULL) im->pl[j] += r1;
      }
    }
    out->recon = rec / n_pts;
    out->kl = kl / (n_pts * (double)S);
    out->loss = out->recon + (double)beta * out->kl;
  }
  fwd_done(im, b0, B);
  return CF_OK;
}

/* ---- training backward ---- */

/* Offset of the first gradient that is final once the tensors from `name` on are done: every
 * tensor at or after `name` in the arena (the arena runs enc, layers, lnf, heads, dec). */
static size_t grad_mark(const struct cf_model *m, const char *name) {
  const struct cf_tensor_info *t = cf_model_find(m, name);
  return t != NULL ? t->offset : 0;
}

cf_status cf_model_backward(struct cf_model *m) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "model: backward before cf_model_init");
  struct cf_model_impl *im = m->impl;
  CF_CHECK(im->last_B > 0, CF_EINVAL, "model: backward without a successful forward");
  return cf_model_backward_at(m, 0, im->last_B);
}

cf_status cf_model_backward_at(struct cf_model *m, int64_t b0, int64_t B) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "model: backward before cf_model_init");
  struct cf_model_impl *im = m->impl;
  CF_CHECK(im->last_B > 0, CF_EINVAL, "model: backward without a successful forward");
  CF_CHECK(B >= 1 && b0 >= 0 && b0 + B <= m->max_batch, CF_EINVAL,
           "model: backward with %lld sequences at %lld, expected 1..%lld (max_batch) in all",
           (long long)B, (long long)b0, (long long)m->max_batch);
  for (int64_t b = b0; b < b0 + B; b++) /* the forward's output gradient is consumed */
    CF_CHECK(im->fwd_ok[b], CF_EINVAL,
             "model: backward of sequence %lld without a forward since its last backward",
             (long long)b);
  memset(im->fwd_ok + b0, 0, (size_t)B);
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t H = c->H, Tl = im->Tl, Id = im->Idec, SH = im->SH;
  const int64_t R = B * Tl, Rp = B * im->Jl;
  const int drop = im->last_drop;
  act_select(m, b0);

  if (im->last && c->head == CF_HEAD_FM) {
    fm_backward(im, c, B);
  } else if (im->last) {
    struct cf_unit_a u1 = unit_masked(&im->ud1, drop), u2 = unit_masked(&im->ud2, drop);
    /* decoder: dout (Rp, Dout) -> d(decoder input) (Rp, SH; cvae SH + dz) */
    const float *dec_in =
        c->head == CF_HEAD_VAE ? im->zeta : (c->head == CF_HEAD_CVAE ? im->cv_din : im->hf);
    float *g_in =
        c->head == CF_HEAD_VAE ? im->gt : (c->head == CF_HEAD_CVAE ? im->cv_gdin : im->gh);
    cf_linear_bwd(u2.d, im->dout, Rp, im->dec3.w, im->Dout, Id, im->dec3.gw, im->dec3.gb, im->gd2,
                  0);
    cf_lnrelu_bwd(im->gd2, u2.xh, u2.rs, u2.mask, Rp, Id, im->gd2);
    cf_linear_bwd(u1.d, im->gd2, Rp, im->dec2.w, Id, Id, im->dec2.gw, im->dec2.gb, im->gd1, 0);
    cf_lnrelu_bwd(im->gd1, u1.xh, u1.rs, u1.mask, Rp, Id, im->gd1);
    cf_linear_bwd(dec_in, im->gd1, Rp, im->dec1.w, Id, im->dec1.in, im->dec1.gw, im->dec1.gb, g_in,
                  0);

    if (c->head == CF_HEAD_CVAE) cvae_backward(im, B, drop);
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
  }
  if (im->last) {
    /* final LayerNorm */
    if (im->Lp == 0) {
      cf_layernorm_bwd(im->gh, im->xhf, im->rsf, R, H, im->lnf.w, im->lnf.gw, im->lnf.gb, im->gx,
                       0);
    } else { /* no loss reaches the prompt rows */
      for (int64_t b = 0; b < B; b++) {
        float *gb = im->gx + b * im->Tx * H;
        memset(gb, 0, (size_t)(im->Lp * H) * sizeof(float));
        cf_layernorm_bwd(im->gh + b * Tl * H, im->xhf + b * Tl * H, im->rsf + b * Tl, Tl, H,
                         im->lnf.w, im->lnf.gw, im->lnf.gb, gb + im->Lp * H, 0);
      }
    }
    if (m->grad_ready) CF_TRY(m->grad_ready(m->grad_ctx, grad_mark(m, "lnf.weight")));
  }

  /* blocks, last to first; gx holds d loss / d x_{l+1} on entry, d loss / d x_l on exit */
  struct cf_block_dims bd = block_dims(m);
  struct cf_block_ws ws = {
      .gt = im->gt, .gao = im->gao, .gqkv = im->gqkv, .gf = im->gf, .gs = im->gs};
  for (int64_t l = im->l1 - 1; l >= im->l0; l--) {
    CF_TRY(cf_block_bwd(&im->blk[l], &im->ba[l], B, im->Tx, &bd, im->gx, &ws));
    if (m->grad_ready) {
      char nm[64];
      snprintf(nm, sizeof nm, "layers.%lld.ln1.weight", (long long)l);
      CF_TRY(m->grad_ready(m->grad_ctx, grad_mark(m, nm)));
    }
  }

  /* encoder: gx (R, H) = d loss / d e (Rp, SH); with a prompt gx (B, Lp + Tl, H), whose
   * prompt rows go to the wte rows of their ids */
  if (im->first) {
    struct cf_unit_a ue = unit_masked(&im->enc, drop);
    const float *ge = im->gx;
    if (im->Lp > 0) {
      for (int64_t b = 0; b < B; b++) {
        const float *gb = im->gx + b * im->Tx * H;
        const int32_t *ids = im->ids + (b0 + b) * im->L;
        for (int64_t i = 0; i < im->Lp; i++) {
          float *gw = im->gwte + (int64_t)ids[i] * H;
          for (int64_t h = 0; h < H; h++)
            gw[h] += gb[i * H + h];
        }
        memcpy(im->gh + b * Tl * H, gb + im->Lp * H, (size_t)(Tl * H) * sizeof(float));
      }
      ge = im->gh;
    }
    cf_linear_bwd(ue.d, ge, Rp, im->enc2.w, SH, SH, im->enc2.gw, im->enc2.gb, im->genc, 0);
    cf_lnrelu_bwd(im->genc, ue.xh, ue.rs, ue.mask, Rp, SH, im->genc);
    cf_linear_bwd(im->z, im->genc, Rp, im->enc1.w, SH, c->D + (c->time_input != 0), im->enc1.gw,
                  im->enc1.gb, NULL, 0);
    if (m->grad_ready) CF_TRY(m->grad_ready(m->grad_ctx, 0));
  }
  return CF_OK;
}

/* ---- test hooks ---- */

const float *cf_model_test_hidden(const struct cf_model *m) {
  return m->impl != NULL ? ((const struct cf_model_impl *)m->impl)->hf : NULL;
}

const float *cf_model_test_output(const struct cf_model *m) {
  return m->impl != NULL ? ((const struct cf_model_impl *)m->impl)->out : NULL;
}
