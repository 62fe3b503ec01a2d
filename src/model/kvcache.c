/* kvcache.c: inference with a KV cache. cf_model_extend runs the encoder and the transformer
 * on newly appended points only, attending to the cached rotated keys and values of the
 * prefix; cf_head_sample draws the head's prediction from final hidden states. On a model
 * part (tensor, pipeline, context parallel) each rank caches and computes its share; see
 * model.h.
 *
 * Batch invariance: a sequence's results are bit-identical whatever other sequences share the
 * call and wherever it sits among them, so a sample depends only on its own inputs, not on
 * -sample_batch or the number of model replicas. Every linear runs through cf_linear_rows
 * (each element a fixed sequence of float operations, independent of the number of rows);
 * LayerNorm, GELU, the LN+ReLU unit, rotary and softmax work row by row or element by
 * element; attention is one cblas_sgemm per (sequence, head) whose shape (new tokens x cached
 * tokens x head size) does not depend on the number of sequences; partial results of tensor
 * and context ranks are combined in rank order after an all-gather (an all-reduce's summation
 * order can change with the message size). Training keeps cf_linear_fwd (cblas_sgemm over
 * all rows). The fm head's Euler steps and the cvae head's prior, latent and decoder work the
 * same way, row by row. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "calmflow/commstat.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/watchdog.h"
#include "model/layers.h"

struct cf_kv_impl {
  struct cf_arena arena;
  int64_t layers, H, heads, S; /* the model this cache was made for (whole-model shape) */
  int64_t l0, nl;              /* transformer layers held: [l0, l0 + nl) */
  int64_t hl, dh, Hl, ffn;     /* local heads, head size, hl*dh, local MLP width */
  int first, last;             /* holds the encoder / lnf and the head */
  MPI_Comm tp, cp;             /* tensor / context groups, MPI_COMM_NULL when not split */
  int n_tp, n_cp;
  int64_t tlo[2], thi[2]; /* the global token ranges whose keys and values this rank caches */
  int64_t lmax;           /* tokens cached per sequence at most */
  int64_t L;              /* prompt tokens in front of the trajectory (positions 0 .. L-1) */
  int filled;             /* the prompt is cached (cf_model_prefill) */
  int64_t rows_new;       /* token rows per sequence of the workspace: max(max_new, L) */
  int64_t win;            /* attention window (cf_attn_first): S without history, else 0 */
  float *k, *v;           /* (nl, B, hl, lmax, dh) rotated keys, values */
  float *cs, *sn;         /* (max_len, rot/2) */
  /* workspace for up to max_new tokens (pmax points) per sequence */
  struct cf_unit_a enc; /* (B*pmax, SH) first stage */
  float *zin;           /* (B*pmax, D+1) encoder input with the time column (time_input) */
  float *x, *xn;        /* (B*max_new, H) residual stream */
  float *xh, *rs, *u;   /* LayerNorm scratch */
  float *qkv;           /* (B*max_new, 3*Hl) */
  float *ao;            /* (B*max_new, Hl) */
  float *f;             /* (B*max_new, ffn) */
  float *sc;            /* (max_new, lmax) scores */
  float *own, *gath;    /* tensor parallel: (M, H) this rank's partial sums, (n_tp, M, H) all */
  float *cpo, *cpg;     /* context parallel: (M, hl, dh+2) [max, sum, out] attention partials of
                           this rank's keys, (n_cp, M, hl, dh+2) everyone's */
  struct cf_unit_a umu, ulv;
  float *mu, *lv, *zeta;     /* (B*max_new, H) vae */
  struct cf_unit_a ud1, ud2; /* (B*pmax, I) */
  float *out;                /* (B*pmax, Dout) */
  /* fm head */
  float *fm_cp;                   /* (B*pmax, F) cond(c) */
  float *fm_in;                   /* (B*pmax, D+8) [y_s, phi(s)] */
  struct cf_unit_a fu1, fu2, fu3; /* (B*pmax, F) */
  float *fm_v;                    /* (B*pmax, D) velocity */
  /* cvae head */
  struct cf_unit_a up; /* (B*pmax, I) prior unit */
  float *cv_p;         /* (B*pmax, 2dz) [mp | rp] */
  float *cv_din;       /* (B*pmax, S*H + dz) [c, z] */
};

/* Tokens below global position len that this rank caches. */
static int64_t local_count(const struct cf_kv_impl *kv, int64_t len) {
  int64_t n = 0;
  for (int i = 0; i < 2; i++) {
    int64_t a = len - kv->tlo[i], w = kv->thi[i] - kv->tlo[i];
    n += a < 0 ? 0 : (a > w ? w : a);
  }
  return n;
}

/* Cache slot of global position p on this rank, -1 when another context rank caches it. */
static int64_t local_index(const struct cf_kv_impl *kv, int64_t p) {
  if (p >= kv->tlo[0] && p < kv->thi[0]) return p - kv->tlo[0];
  if (p >= kv->tlo[1] && p < kv->thi[1]) return (kv->thi[0] - kv->tlo[0]) + p - kv->tlo[1];
  return -1;
}

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
  size_t H = (size_t)c->H, Mt = (size_t)(B * kv->rows_new), Mp = (size_t)(B * (max_new / c->S));
  size_t half = (size_t)(im->rot / 2), Hl = (size_t)kv->Hl;
  size_t kvn = (size_t)kv->nl * (size_t)B * (size_t)kv->hl * (size_t)kv->lmax * (size_t)kv->dh;
  kv->k = cf_arena_floats(a, kvn);
  kv->v = cf_arena_floats(a, kvn);
  kv->cs = cf_arena_floats(a, (size_t)(kv->L + max_len) * half);
  kv->sn = cf_arena_floats(a, (size_t)(kv->L + max_len) * half);
  if (kv->first) unit_layout(a, &kv->enc, Mp, (size_t)im->SH);
  if (kv->first && c->time_input) kv->zin = cf_arena_floats(a, Mp * (size_t)(c->D + 1));
  kv->x = cf_arena_floats(a, Mt * H);
  kv->xn = cf_arena_floats(a, Mt * H);
  kv->xh = cf_arena_floats(a, Mt * H);
  kv->rs = cf_arena_floats(a, Mt);
  kv->u = cf_arena_floats(a, Mt * H);
  kv->qkv = cf_arena_floats(a, Mt * 3 * Hl);
  kv->ao = cf_arena_floats(a, Mt * Hl);
  kv->f = cf_arena_floats(a, Mt * (size_t)kv->ffn);
  kv->sc = cf_arena_floats(a, (size_t)kv->rows_new * (size_t)kv->lmax);
  if (kv->n_tp > 1) {
    kv->own = cf_arena_floats(a, Mt * H);
    kv->gath = cf_arena_floats(a, (size_t)kv->n_tp * Mt * H);
  }
  if (kv->n_cp > 1) {
    size_t per = Mt * (size_t)kv->hl * (size_t)(kv->dh + 2);
    kv->cpo = cf_arena_floats(a, per);
    kv->cpg = cf_arena_floats(a, (size_t)kv->n_cp * per);
  }
  if (kv->last && c->head == CF_HEAD_VAE) {
    unit_layout(a, &kv->umu, Mt, H);
    unit_layout(a, &kv->ulv, Mt, H);
    kv->mu = cf_arena_floats(a, Mt * H);
    kv->lv = cf_arena_floats(a, Mt * H);
    kv->zeta = cf_arena_floats(a, Mt * H);
  }
  if (kv->last && c->head == CF_HEAD_FM) {
    const size_t F = (size_t)im->F;
    kv->fm_cp = cf_arena_floats(a, Mp * F);
    kv->fm_in = cf_arena_floats(a, Mp * (size_t)(c->D + CF_FM_FEATURES));
    unit_layout(a, &kv->fu1, Mp, F);
    unit_layout(a, &kv->fu2, Mp, F);
    unit_layout(a, &kv->fu3, Mp, F);
    kv->fm_v = cf_arena_floats(a, Mp * (size_t)c->D);
  } else if (kv->last) {
    unit_layout(a, &kv->ud1, Mp, (size_t)im->Idec);
    unit_layout(a, &kv->ud2, Mp, (size_t)im->Idec);
    kv->out = cf_arena_floats(a, Mp * (size_t)im->Dout);
  }
  if (kv->last && c->head == CF_HEAD_CVAE) {
    unit_layout(a, &kv->up, Mp, (size_t)im->Idec);
    kv->cv_p = cf_arena_floats(a, Mp * 2 * (size_t)im->dz);
    kv->cv_din = cf_arena_floats(a, Mp * (size_t)(im->SH + im->dz));
  }
}

cf_status cf_kvcache_init(struct cf_kvcache *c, const struct cf_model *m, int64_t B,
                          int64_t max_len, int64_t max_new) {
  CF_CHECK(c != NULL, CF_EINVAL, "kvcache: init without a cache");
  memset(c, 0, sizeof *c);
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "kvcache: model not initialized");
  const struct cf_model_cfg *mc = &m->cfg;
  const struct cf_model_impl *mi = m->impl;
  CF_CHECK(B >= 1 && max_len >= 1, CF_EINVAL,
           "kvcache: need at least one sequence and one token (got B %lld, max_len %lld)",
           (long long)B, (long long)max_len);
  CF_CHECK(max_new >= mc->S && max_new <= max_len, CF_EINVAL,
           "kvcache: max_new (%lld) must be in [S = %lld, max_len = %lld]", (long long)max_new,
           (long long)mc->S, (long long)max_len);
  CF_CHECK(mi->n_cp == 1 || max_len <= mi->T, CF_EINVAL,
           "kvcache: under context parallelism the cache holds at most the model's %lld tokens "
           "(asked for %lld)",
           (long long)mi->T, (long long)max_len);
  const int64_t L = mc->prompt_len, rows_new = max_new > L ? max_new : L;
  double big = (double)mc->layers * (double)B * (double)(L + max_len) * (double)mc->H;
  double rows = (double)B * (double)rows_new;
  double wide = rows * fmax((double)mc->ffn, 3.0 * (double)mc->H) * (double)mi->n_tp;
  CF_CHECK(rows <= (double)INT_MAX && (double)max_len <= (double)INT_MAX && big <= 1e12 &&
               wide <= 1e12 && (double)rows_new * (double)(L + max_len) <= 1e12 &&
               rows * (double)mc->H <= (double)INT_MAX &&
               rows * (double)(mc->H + 2 * mc->heads) <= (double)INT_MAX,
           CF_EINVAL, "kvcache: %lld sequences x %lld tokens is too large", (long long)B,
           (long long)max_len);
  void *p = NULL;
  CF_TRY(cf_alloc(&p, sizeof(struct cf_kv_impl), "kv cache state"));
  struct cf_kv_impl *kv = p;
  kv->layers = mc->layers;
  kv->H = mc->H;
  kv->heads = mc->heads;
  kv->S = mc->S;
  kv->l0 = mi->l0;
  kv->nl = mi->l1 - mi->l0;
  kv->hl = mi->heads_l;
  kv->dh = mi->dh;
  kv->Hl = mi->Hl;
  kv->ffn = mi->ffn_l;
  kv->first = mi->first;
  kv->last = mi->last;
  kv->n_tp = mi->n_tp;
  kv->tp = mi->tpc;
  kv->n_cp = mi->n_cp;
  kv->cp = mi->has_ring ? mi->ring.comm : MPI_COMM_NULL;
  kv->L = L;
  kv->rows_new = rows_new;
  if (kv->n_cp > 1) { /* the model's rows of the whole sequence [prompt | tokens] */
    for (int i = 0; i < 2; i++) {
      kv->tlo[i] = mi->xlo[i];
      kv->thi[i] = mi->xhi[i];
    }
  } else {
    kv->tlo[0] = 0;
    kv->thi[0] = L + max_len;
    kv->tlo[1] = kv->thi[1] = L + max_len;
  }
  kv->lmax = local_count(kv, L + max_len);
  kv->win = mc->no_history ? mc->S : 0;
  if (kv->lmax < 1) kv->lmax = 1;
  cf_arena_plan(&kv->arena);
  kv_layout(kv, m, B, max_len, max_new, &kv->arena);
  cf_status st = cf_arena_commit(&kv->arena, 0, "kv cache");
  if (st != CF_OK) {
    cf_free(&p);
    cf_trace_push(__FILE__, __LINE__, "cf_arena_commit");
    return st;
  }
  kv_layout(kv, m, B, max_len, max_new, &kv->arena);
  cf_rotary_tables(kv->cs, kv->sn, L + max_len, mi->rot, mc->rotary_base);
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
  if (c == NULL) return;
  c->len = 0;
  if (c->impl != NULL) ((struct cf_kv_impl *)c->impl)->filled = 0;
}

void cf_head_noise(const struct cf_model_cfg *c, const struct cf_rng *r, float *out) {
  const int gmm = c->head == CF_HEAD_GMM;
  cf_rng_normal(r, 0, out, (size_t)(cf_head_noise_width(c) - gmm));
  /* element 2^40 is Philox block 2^39, apart from the normals' blocks (rng.c keeps 40 bits of
   * the block index: 2^62, used before, wrapped onto block 0, the first normals' bits) */
  if (gmm) out[c->D] = (float)cf_rng_uniform1(r, (uint64_t)1 << 40);
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

/* The fm head's sampler on Mp point rows: y (Mp, D) <- tau*eps, then fm_steps Euler steps of
 * the velocity MLP from s = 0 to 1, conditioned on the rows of h (Mp, S*H). */
static void fm_sample(const struct cf_model *m, struct cf_kv_impl *kv, int64_t Mp, const float *h,
                      const float *eps, float tau, float *y) {
  const struct cf_model_impl *im = m->impl;
  const int64_t D = m->cfg.D, F = im->F, Dw = D + CF_FM_FEATURES, K = m->cfg.fm_steps;
  const float step = (float)(1.0 / (double)K);
  cf_linear_rows(h, Mp, im->fmc.w, im->fmc.b, F, im->SH, 0, kv->fm_cp);
  for (int64_t i = 0; i < Mp * D; i++)
    y[i] = tau * (eps != NULL ? eps[i] : 0.0f);
  for (int64_t k = 0; k < K; k++) {
    float s = (float)((double)k / (double)K), phi[CF_FM_FEATURES];
    cf_fm_features(s, phi);
    for (int64_t r = 0; r < Mp; r++) {
      float *in = kv->fm_in + r * Dw;
      memcpy(in, y + r * D, (size_t)D * sizeof(float));
      memcpy(in + D, phi, sizeof phi);
    }
    cf_linear_rows(kv->fm_in, Mp, im->fm1.w, im->fm1.b, F, Dw, 0, kv->fu1.xh);
    for (int64_t i = 0; i < Mp * F; i++)
      kv->fu1.xh[i] += kv->fm_cp[i];
    cf_lnrelu_fwd(kv->fu1.xh, kv->fu1.rs, NULL, Mp, F, kv->fu1.d);
    cf_linear_rows(kv->fu1.d, Mp, im->fm2.w, im->fm2.b, F, F, 0, kv->fu2.xh);
    cf_lnrelu_fwd(kv->fu2.xh, kv->fu2.rs, NULL, Mp, F, kv->fu2.d);
    cf_linear_rows(kv->fu2.d, Mp, im->fm3.w, im->fm3.b, F, F, 0, kv->fu3.xh);
    cf_lnrelu_fwd(kv->fu3.xh, kv->fu3.rs, NULL, Mp, F, kv->fu3.d);
    cf_linear_rows(kv->fu3.d, Mp, im->fmo.w, im->fmo.b, D, F, 0, kv->fm_v);
    for (int64_t i = 0; i < Mp * D; i++)
      y[i] += step * kv->fm_v[i];
  }
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

/* Attention of the n new tokens of one sequence and head over the keys this rank caches
 * (Kc, Vc: lc slots), new keys already appended. Whole sequence on this rank (no context
 * split): o (n, dh; row stride ldo) is the attention output. Context split: the row's partial
 * softmax over this rank's keys at or before the query's position goes to pr (n rows of
 * stride ldp): [max score, sum of exp, unnormalized output (dh)]; a rank without such keys
 * gives max -inf and zeros. Shapes depend on len, n and dh only, never on B. */
static void attend(const struct cf_kv_impl *kv, const float *q, int64_t ldq, const float *Kc,
                   const float *Vc, int64_t len, int64_t n, float scale, float *o, int64_t ldo,
                   float *pr, int64_t ldp) {
  const int64_t dh = kv->dh, lc = local_count(kv, len + n);
  float *sc = kv->sc;
  if (pr == NULL) { /* scores (n, lc) over the prefix and the new tokens, causal */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)lc, (int)dh, scale, q,
                (int)ldq, Kc, (int)dh, 0.0f, sc, (int)lc);
    for (int64_t t = 0; t < n; t++)
      cf_span_softmax_row(sc + t * lc, cf_attn_first(len + t, kv->win), len + t, lc);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)dh, (int)lc, 1.0f, sc,
                (int)lc, Vc, (int)dh, 0.0f, o, (int)ldo);
    return;
  }
  if (lc > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)lc, (int)dh, scale, q,
                (int)ldq, Kc, (int)dh, 0.0f, sc, (int)lc);
  for (int64_t t = 0; t < n; t++) {
    float *r = sc + t * lc, *p = pr + t * ldp;
    /* this rank's keys in the query's window: positions [first, len + t] */
    int64_t j0 = local_count(kv, cf_attn_first(len + t, kv->win)),
            nv = local_count(kv, len + t + 1);
    float mx = -INFINITY;
    for (int64_t j = j0; j < nv; j++)
      mx = r[j] > mx ? r[j] : mx;
    double s = cf_exp_sum(r + j0, nv - j0, mx); /* softmax's exp and summation order */
    for (int64_t j = 0; j < j0; j++)
      r[j] = 0.0f;
    for (int64_t j = nv; j < lc; j++)
      r[j] = 0.0f;
    p[0] = mx;
    p[1] = (float)s;
  }
  if (lc > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)dh, (int)lc, 1.0f, sc,
                (int)lc, Vc, (int)dh, 0.0f, pr + 2, (int)ldp);
  else
    for (int64_t t = 0; t < n; t++)
      memset(pr + t * ldp + 2, 0, (size_t)dh * sizeof(float));
}

/* Collective on the context group. Gather every rank's partials (cpo, M rows) and merge them
 * in rank order into ao (M, Hl): the same bits on every rank, whatever M is. */
static cf_status cp_merge(struct cf_kv_impl *kv, int64_t M) {
  const int64_t hl = kv->hl, dh = kv->dh, w = dh + 2, per = M * hl * w;
  cf_watchdog_enter("sample_cp_allgather", -1);
  double t0 = cf_commstat_now();
  int e = cf_mpi_allgather(kv->cpo, (size_t)per, kv->cpg, MPI_FLOAT, kv->cp);
  cf_commstat_add(CF_COMM_CP, (double)per * (double)kv->n_cp * sizeof(float),
                  cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  for (int64_t r = 0; r < M * hl; r++) {
    float mx = -INFINITY;
    for (int c = 0; c < kv->n_cp; c++) {
      float m = kv->cpg[c * per + r * w];
      mx = m > mx ? m : mx;
    }
    float *o = kv->ao + (r / hl) * kv->Hl + (r % hl) * dh;
    double den = 0;
    for (int64_t d = 0; d < dh; d++)
      o[d] = 0.0f;
    for (int c = 0; c < kv->n_cp; c++) {
      const float *p = kv->cpg + c * per + r * w;
      if (p[0] == -INFINITY) continue;
      float f = expf(p[0] - mx);
      den += (double)(p[1] * f);
      for (int64_t d = 0; d < dh; d++)
        o[d] += p[2 + d] * f;
    }
    float inv = (float)(1.0 / den);
    for (int64_t d = 0; d < dh; d++)
      o[d] *= inv;
  }
  return CF_OK;
}

/* Collective on the tensor group. y (M, H) = x + the sum over tensor ranks of their partial
 * projections (own), added in rank order (an all-reduce's order may change with the message
 * size, which would make a sample depend on the batch), + the two replicated biases. */
static cf_status tp_merge(struct cf_kv_impl *kv, const struct cf_block_p *p, const float *x,
                          int64_t M, float *y) {
  const int64_t H = kv->H, n = M * H;
  cf_watchdog_enter("sample_tp_allgather", -1);
  double t0 = cf_commstat_now();
  int e = cf_mpi_allgather(kv->own, (size_t)n, kv->gath, MPI_FLOAT, kv->tp);
  cf_commstat_add(CF_COMM_TP, (double)n * (double)kv->n_tp * sizeof(float), cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  for (int64_t i = 0; i < n; i++) {
    float s = kv->gath[i];
    for (int c = 1; c < kv->n_tp; c++)
      s += kv->gath[c * n + i];
    int64_t o = i % H;
    y[i] = s + (x[i] + p->out.b[o] + p->fc2.b[o]);
  }
  return CF_OK;
}

/* Collective as cf_model_extend. This rank's layers on n new tokens per sequence at positions
 * pos0 .. pos0+n-1 of the whole sequence [prompt | tokens]: x (B*n, H) holds their input;
 * on return *xp points at the residual stream after the layers (kv->x or kv->xn). */
static cf_status run_layers(const struct cf_model *m, struct cf_kv_impl *kv, int64_t B, int64_t n,
                            int64_t pos0, float **xp) {
  const struct cf_model_impl *im = m->impl;
  const int64_t H = m->cfg.H, Hl = kv->Hl, H3 = 3 * Hl, hl = kv->hl, dh = kv->dh, M = B * n;
  const float scale = (float)(1.0 / sqrt((double)dh));
  const int split_cp = kv->n_cp > 1;
  float *x = kv->x, *xn = kv->xn;
  for (int64_t l = 0; l < kv->nl; l++) {
    const struct cf_block_p *p = &im->blk[kv->l0 + l];
    cf_layernorm_fwd(x, M, H, p->ln1.w, p->ln1.b, kv->xh, kv->rs, kv->u);
    cf_linear_rows(kv->u, M, p->qkv.w, p->qkv.b, H3, H, 0, kv->qkv);
    for (int64_t b = 0; b < B; b++) {
      float *qb = kv->qkv + b * n * H3;
      cf_rotary_apply(qb, n, H3, hl, dh, im->rot, kv->cs, kv->sn, pos0, 0);
      for (int64_t h = 0; h < hl; h++) {
        size_t cbase = (size_t)(((l * B + b) * hl + h) * kv->lmax) * (size_t)dh;
        float *Kc = kv->k + cbase, *Vc = kv->v + cbase;
        for (int64_t t = 0; t < n; t++) {
          int64_t li = local_index(kv, pos0 + t);
          if (li < 0) continue; /* another context rank caches this token */
          const float *src = qb + t * H3 + h * 3 * dh;
          memcpy(Kc + li * dh, src + dh, (size_t)dh * sizeof(float));
          memcpy(Vc + li * dh, src + 2 * dh, (size_t)dh * sizeof(float));
        }
        const int64_t w = dh + 2;
        attend(kv, qb + h * 3 * dh, H3, Kc, Vc, pos0, n, scale, kv->ao + b * n * Hl + h * dh, Hl,
               split_cp ? kv->cpo + (b * n * hl + h) * w : NULL, hl * w);
      }
    }
    if (split_cp) CF_TRY(cp_merge(kv, M));
    cf_layernorm_affine(kv->xh, M, H, p->ln2.w, p->ln2.b, kv->u); /* ln2 normalizes x too */
    cf_linear_rows(kv->u, M, p->fc1.w, p->fc1.b, kv->ffn, H, 0, kv->f);
    cf_gelu_fwd(kv->f, kv->f, NULL, (size_t)(M * kv->ffn));
    if (kv->n_tp == 1) {
      memcpy(xn, x, (size_t)(M * H) * sizeof(float));
      cf_linear_rows(kv->ao, M, p->out.w, p->out.b, H, Hl, 1, xn);
      cf_linear_rows(kv->f, M, p->fc2.w, p->fc2.b, H, kv->ffn, 1, xn);
    } else {
      cf_linear_rows(kv->ao, M, p->out.w, NULL, H, Hl, 0, kv->own);
      cf_linear_rows(kv->f, M, p->fc2.w, NULL, H, kv->ffn, 1, kv->own);
      CF_TRY(tp_merge(kv, p, x, M, xn));
    }
    float *tmp = x;
    x = xn;
    xn = tmp;
  }
  *xp = x;
  return CF_OK;
}

cf_status cf_model_prefill(const struct cf_model *m, struct cf_kvcache *c, const int32_t *ids,
                           const float *in, float *out) {
  CF_TRY(kv_match(m, c));
  const struct cf_model_impl *im = m->impl;
  struct cf_kv_impl *kv = c->impl;
  const int64_t L = kv->L, H = m->cfg.H, B = c->B, M = B * L;
  CF_CHECK(L > 0, CF_EINVAL, "kvcache: prefill on a model without a prompt");
  CF_CHECK(c->len == 0 && !kv->filled, CF_EINVAL,
           "kvcache: prefill needs an empty cache (reset it first)");
  CF_CHECK(kv->first ? ids != NULL : in != NULL, CF_EINVAL,
           "kvcache: prefill needs the prompt ids (first stage) or the previous stage's output");
  CF_CHECK(kv->last || out != NULL, CF_EINVAL, "kvcache: prefill needs out before the last stage");
  float *x = kv->x;
  if (kv->first) {
    for (int64_t i = 0; i < M; i++) {
      CF_CHECK(ids[i] >= 0 && ids[i] < m->cfg.vocab, CF_EINVAL,
               "kvcache: prompt token id %d is outside the vocabulary [0, %lld)", (int)ids[i],
               (long long)m->cfg.vocab);
      memcpy(x + i * H, im->wte + (int64_t)ids[i] * H, (size_t)H * sizeof(float));
    }
  } else {
    memcpy(x, in, (size_t)(M * H) * sizeof(float));
  }
  CF_TRY(run_layers(m, kv, B, L, 0, &x));
  if (!kv->last) memcpy(out, x, (size_t)(M * H) * sizeof(float));
  kv->filled = 1;
  return CF_OK;
}

cf_status cf_model_extend(const struct cf_model *m, struct cf_kvcache *c, const float *in,
                          int64_t np, float *out) {
  CF_TRY(kv_match(m, c));
  const struct cf_model_cfg *cf = &m->cfg;
  const struct cf_model_impl *im = m->impl;
  struct cf_kv_impl *kv = c->impl;
  const int64_t S = cf->S, H = cf->H;
  CF_CHECK(np >= 1 && np * S <= c->max_new, CF_EINVAL,
           "kvcache: extend by %lld points (%lld tokens) but the cache takes 1..%lld tokens per "
           "call",
           (long long)np, (long long)(np * S), (long long)c->max_new);
  CF_CHECK(c->len + np * S <= c->max_len, CF_EINVAL,
           "kvcache: extend to %lld tokens exceeds max_len %lld", (long long)(c->len + np * S),
           (long long)c->max_len);
  CF_CHECK(in != NULL && out != NULL, CF_EINVAL, "kvcache: extend needs its input and output");
  CF_CHECK(kv->L == 0 || kv->filled, CF_EINVAL,
           "kvcache: the model has a prompt; prefill the cache (cf_model_prefill) before extend");
  const int64_t B = c->B, n = np * S, M = B * n, len = c->len;

  /* first stage: encoder z_new (B*np, D) -> x (B*np, SH) = (M, H); else the previous
   * stage's residual stream */
  float *x = kv->x;
  if (kv->first && cf->time_input) { /* [z, t] rows: point len/S + i of each sequence */
    const int64_t D = cf->D;
    for (int64_t b = 0; b < B; b++)
      for (int64_t i = 0; i < np; i++) {
        float *dst = kv->zin + (b * np + i) * (D + 1);
        memcpy(dst, in + (b * np + i) * D, (size_t)D * sizeof(float));
        dst[D] = cf_model_point_time(cf, len / S + i);
      }
    mlp2_rows(&im->enc1, &im->enc2, kv->zin, B * np, &kv->enc, x);
  } else if (kv->first) {
    mlp2_rows(&im->enc1, &im->enc2, in, B * np, &kv->enc, x);
  } else {
    memcpy(x, in, (size_t)(M * H) * sizeof(float));
  }
  CF_TRY(run_layers(m, kv, B, n, kv->L + len, &x)); /* trajectory token k at position L + k */
  if (kv->last)
    cf_layernorm_fwd(x, M, H, im->lnf.w, im->lnf.b, kv->xh, kv->rs, out);
  else
    memcpy(out, x, (size_t)(M * H) * sizeof(float));
  c->len = len + n;
  return CF_OK;
}

cf_status cf_head_sample(const struct cf_model *m, struct cf_kvcache *c, int64_t np, const float *h,
                         const float *eps, float tau, float *y) {
  CF_TRY(kv_match(m, c));
  const struct cf_model_cfg *cf = &m->cfg;
  const struct cf_model_impl *im = m->impl;
  struct cf_kv_impl *kv = c->impl;
  const int64_t S = cf->S, D = cf->D, H = cf->H;
  CF_CHECK(kv->last, CF_EINVAL, "kvcache: the head is on the last pipeline stage");
  CF_CHECK(np >= 1 && np * S <= c->max_new, CF_EINVAL,
           "kvcache: head sample of %lld points but the cache takes 1..%lld tokens per call",
           (long long)np, (long long)c->max_new);
  CF_CHECK(h != NULL && y != NULL, CF_EINVAL, "kvcache: head sample needs h and y");
  CF_CHECK(eps != NULL || tau == 0.0f, CF_EINVAL, "kvcache: head sample with tau != 0 needs eps");
  const int64_t Mp = c->B * np, M = Mp * S;
  if (cf->head == CF_HEAD_FM) {
    fm_sample(m, kv, Mp, h, eps, tau, y);
  } else if (cf->head == CF_HEAD_CVAE) {
    const int64_t dz = im->dz, SH = im->SH, Wd = SH + dz, W = dz + D;
    const float lo = cf->logstd_min, hi = cf->logstd_max;
    mlp2_rows(&im->cp1, &im->cp2, h, Mp, &kv->up, kv->cv_p);
    for (int64_t r = 0; r < Mp; r++) { /* z = mp + tau exp(lp) eps_z */
      const float *p = kv->cv_p + r * 2 * dz, *e = eps != NULL ? eps + r * W : NULL;
      float *din = kv->cv_din + r * Wd;
      memcpy(din, h + r * SH, (size_t)SH * sizeof(float));
      for (int64_t i = 0; i < dz; i++) {
        float rp = p[dz + i], lp = rp < lo ? lo : (rp > hi ? hi : rp);
        din[SH + i] = p[i] + tau * expf(lp) * (e != NULL ? e[i] : 0.0f);
      }
    }
    decoder_rows(im, kv->cv_din, Mp, &kv->ud1, &kv->ud2, kv->out);
    for (int64_t r = 0; r < Mp; r++) { /* y = m + tau exp(ls) eps_y */
      const float *o = kv->out + r * 2 * D, *e = eps != NULL ? eps + r * W + dz : NULL;
      for (int64_t d = 0; d < D; d++) {
        float ls = o[D + d] < lo ? lo : (o[D + d] > hi ? hi : o[D + d]);
        y[r * D + d] = o[d] + tau * expf(ls) * (e != NULL ? e[d] : 0.0f);
      }
    }
  } else if (cf->head == CF_HEAD_GMM) {
    decoder_rows(im, h, Mp, &kv->ud1, &kv->ud2, kv->out);
    const int64_t K = cf->gmm_k, W = D + 1;
    const float lo = cf->logstd_min, hi = cf->logstd_max;
    for (int64_t r = 0; r < Mp; r++) {
      const float *o = kv->out + r * im->Dout, *e = eps != NULL ? eps + r * W : NULL;
      int64_t k = 0;
      for (int64_t q = 1; q < K; q++) /* the most probable component */
        if (o[q] > o[k]) k = q;
      if (e != NULL) { /* the component whose share of softmax(a) holds the uniform */
        double tot = 0, amax = o[k];
        for (int64_t q = 0; q < K; q++)
          tot += exp((double)o[q] - amax);
        double want = (double)e[D] * tot, cum = 0;
        for (k = 0; k < K - 1; k++) {
          cum += exp((double)o[k] - amax);
          if (want < cum) break;
        }
      }
      const float *mu = o + K + k * D, *rr = o + K + K * D + k * D;
      for (int64_t d = 0; d < D; d++) {
        float ls = rr[d] < lo ? lo : (rr[d] > hi ? hi : rr[d]);
        y[r * D + d] = mu[d] + tau * expf(ls) * (e != NULL ? e[d] : 0.0f);
      }
    }
  } else if (cf->head == CF_HEAD_GAUSS) {
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
