/* layers.h: private to src/model (and its tests). The model's kernels (linear, LayerNorm,
 * GELU, the LayerNorm+ReLU+dropout unit of the encoder / head / decoder MLPs, rotary causal
 * attention), each with its backward; sampling's row-deterministic linear (rowdet.c); the
 * parameter and activation layout behind struct cf_model.impl; and test hooks.
 *
 * Conventions: row-major float buffers, weights (out, in), y = x W^T + b. Backward functions
 * ADD into weight / bias gradients; an input gradient is overwritten or added (argument
 * says which). All functions are Local and allocate nothing.
 */
#ifndef CALMFLOW_MODEL_LAYERS_H
#define CALMFLOW_MODEL_LAYERS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/mem.h"
#include "calmflow/model.h"
#include "calmflow/ring.h"

#define CF_LN_EPS 1e-5

/* A function compiled twice, for AVX2 and for the baseline, the copy picked at run time (GCC on
 * x86-64). Only for code whose result must not depend on the copy: no reassociation, and no
 * fused multiply-add (neither copy enables FMA). */
#if defined(__x86_64__) && !defined(__clang__)
#define CF_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CF_CLONES
#endif
/* Rows of queries handled per attention block; keys beyond the block's last row are skipped
 * (causal), so roughly half the score matrix is never computed. */
#define CF_ATTN_CHUNK 64

/* Sum of squares of x (n) in double: eight running sums (lane k over i = k, k + 8, ...), then
 * the tail, then the lanes in order; the same bits from every run-time copy. Finite exactly
 * when every element is (a sum of squares of floats cannot overflow a double below 10^200
 * elements), so one pass gives a gradient's norm and its NaN / Inf check. */
double cf_sqsum(const float *x, size_t n);

/* ---- kernels ---- */

/* y (M, out) = x (M, in) W^T + b, or y += ... when accumulate (b may be NULL). */
void cf_linear_fwd(const float *x, int64_t M, const float *W, const float *b, int64_t out,
                   int64_t in, int accumulate, float *y);
/* Row-deterministic y (M, out) = x (M, in) W^T + b (b may be NULL), or y += x W^T + b when
 * accumulate (rowdet.c): each element is a fixed sequence of float operations that depends
 * only on its row of x, W and b, not on M, the row's position or the CPU's vector width.
 * Used by sampling (kvcache.c); training keeps cf_linear_fwd. */
void cf_linear_rows(const float *x, int64_t M, const float *W, const float *b, int64_t out,
                    int64_t in, int accumulate, float *y);
/* Test hook: which copy of cf_linear_rows runs: 0 portable, 1 AVX2, 2 AVX-512VL (x86-64).
 * force -1 lets the CPU decide (the default), 0..2 forces that copy (or the best the CPU has
 * below it), anything below -1 only asks. Returns the copy now in use. */
int cf_linear_rows_path(int force);
/* gW (out, in) += dy^T x; gb (out) += column sums of dy (either may be NULL);
 * dx (M, in) = dy W (or += when accumulate; dx may be NULL). */
void cf_linear_bwd(const float *x, const float *dy, int64_t M, const float *W, int64_t out,
                   int64_t in, float *gW, float *gb, float *dx, int accumulate);

/* LayerNorm over rows of n (eps 1e-5): xhat (M, n) and rstd (M) are kept for backward
 * (xhat may alias x); y = xhat*g + b when g != NULL, else y = xhat (y may be NULL). */
void cf_layernorm_fwd(const float *x, int64_t M, int64_t n, const float *g, const float *b,
                      float *xhat, float *rstd, float *y);
/* y (M, n) = xhat * g + b: the affine part of cf_layernorm_fwd alone, from a kept xhat (the
 * same bits as the y of cf_layernorm_fwd that made xhat). */
void cf_layernorm_affine(const float *xhat, int64_t M, int64_t n, const float *g, const float *b,
                         float *y);
/* y (n) = a * b elementwise (y may alias a or b). */
void cf_mul(const float *a, const float *b, float *y, size_t n);
/* dx (M, n) = d LN / d x applied to dy (or += when accumulate; dx may alias dy when not
 * accumulating); gg, gb (n) += affine gradients when g != NULL. */
void cf_layernorm_bwd(const float *dy, const float *xhat, const float *rstd, int64_t M, int64_t n,
                      const float *g, float *gg, float *gb, float *dx, int accumulate);

/* Exact GELU y = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)), over n values (y may alias x);
 * Phi is kept in cdf for backward unless cdf is NULL. Phi has an absolute error below 1e-7
 * (vectorized erfc, layers.c); each element's bits depend only on its own x, not on n, its
 * position or the copy the CPU runs (cf_vmath_path). */
void cf_gelu_fwd(const float *x, float *y, float *cdf, size_t n);
/* dx = dy * (Phi(x) + x phi(x)) (dx may alias dy); cdf from forward, or NULL to recompute. */
void cf_gelu_bwd(const float *x, const float *cdf, const float *dy, float *dx, size_t n);

/* LN (no affine) -> ReLU -> dropout unit. a (M, n) holds the pre-activation on entry and the
 * normalized xhat on return; rstd (M); mask (M, n) holds 0 or 1/(1-p) per element, or NULL
 * for no dropout; d (M, n) = relu(xhat) * mask. */
void cf_lnrelu_fwd(float *a, float *rstd, const float *mask, int64_t M, int64_t n, float *d);
/* da (M, n) = gradient w.r.t. the pre-activation from dd (da may alias dd). */
void cf_lnrelu_bwd(const float *dd, const float *xhat, const float *rstd, const float *mask,
                   int64_t M, int64_t n, float *da);

/* Dropout scale mask for B sequences of rows x width elements at site `site`:
 * mask[b][e] = 0 if u(seed, CF_RNG_DROPOUT + site, step, seq0 + b; e) < p else 1/(1-p). */
void cf_dropout_mask(float *mask, int64_t B, int64_t rows, int64_t width, float p,
                     const struct cf_dropkey *dk, int site);
/* The same for a context-parallel rank: its rows of each sequence are the global rows
 * [lo[0], hi[0]) then [lo[1], hi[1]); mask (B, rows held, width) holds exactly the values
 * cf_dropout_mask gives those rows. */
void cf_dropout_mask_rows(float *mask, int64_t B, const int64_t lo[2], const int64_t hi[2],
                          int64_t width, float p, const struct cf_dropkey *dk, int site);

/* Rotary tables for positions [0, npos): cs, sn (npos, rot/2),
 * angle = pos * base^(-2i/rot). */
void cf_rotary_tables(float *cs, float *sn, int64_t npos, int64_t rot, double base);
/* Rotate (or inverse-rotate, for gradients) the first rot dims of every head's q and k in
 * n rows of a fused qkv buffer (row stride ld, per head [q | k | v] of dh each); row t has
 * position pos0 + t. */
void cf_rotary_apply(float *qkv, int64_t n, int64_t ld, int64_t heads, int64_t dh, int64_t rot,
                     const float *cs, const float *sn, int64_t pos0, int inverse);

/* Test hook: which copy of the vector math (GELU, softmax, cf_exp_sum, cf_vmath_map) runs:
 * 0 portable, 1 AVX2, 2 AVX-512F/VL (x86-64; no FMA, so all give the same bits). force -1
 * lets the CPU decide (the default), 0..2 forces that copy (or the best the CPU has below it),
 * anything below -1 only asks. Returns the copy now in use. */
int cf_vmath_path(int force);
/* Test hook: y[i] = f(x[i]) for n values with the kernels' vector math: which 0 exp, 1 erf,
 * 2 Phi (the normal CDF). */
void cf_vmath_map(const float *x, float *y, size_t n, int which);
/* r[j] = exp(r[j] - mx) for j < n (vectorized exp, a few float ulps); returns the sum of the
 * new values in double, added in a fixed order that depends only on n. */
double cf_exp_sum(float *r, int64_t n, float mx);

/* Softmax of score row r over columns [0, last] in place (sum in double); columns
 * (last, ncol) are set to 0. */
void cf_causal_softmax_row(float *r, int64_t last, int64_t ncol);
/* The same over columns [first, last]; every other column of [0, ncol) is set to 0. */
void cf_span_softmax_row(float *r, int64_t first, int64_t last, int64_t ncol);
/* First key token query token i may attend to: 0, or with win > 0 (-flow_history 0: tokens
 * attend only within their own point of win = S tokens) the start of i's point. */
static inline int64_t cf_attn_first(int64_t i, int64_t win) {
  return win > 0 ? i - i % win : 0;
}

/* Causal attention for B sequences of T tokens from a rotated fused qkv (B*T, 3H):
 * probs (B, heads, T, T) (only the causal blocks written), out (B*T, H) = softmax(QK^T/sqrt dh) V
 * with heads concatenated. win > 0: token i attends only to keys from cf_attn_first(i, win)
 * (probabilities outside are 0, so cf_attn_bwd needs no window). */
void cf_attn_fwd(const float *qkv, int64_t B, int64_t T, int64_t heads, int64_t dh, int64_t win,
                 float *probs, float *out);
/* dqkv (B*T, 3H) = gradient w.r.t. the rotated qkv from dout (B*T, H) (overwritten);
 * scratch holds CF_ATTN_CHUNK*T floats. The caller inverse-rotates dq, dk. */
void cf_attn_bwd(const float *qkv, const float *probs, const float *dout, int64_t B, int64_t T,
                 int64_t heads, int64_t dh, float *dqkv, float *scratch);

/* The fm head's 8 Fourier features of flow time s (model.h): sin and cos of 2^i pi s for
 * i = 0..3, each the float of the double value (the same in training and sampling). */
#define CF_FM_FEATURES 8
static inline void cf_fm_features(float s, float *phi) {
  for (int i = 0; i < 4; i++) {
    double a = 3.14159265358979323846 * (double)(1 << i) * (double)s;
    phi[2 * i] = (float)sin(a);
    phi[2 * i + 1] = (float)cos(a);
  }
}

/* ---- parameter and activation layout (model.c) ---- */

struct cf_lin {
  float *w, *b, *gw, *gb; /* (out, in), (out) */
  int64_t out, in;
};
struct cf_lnp {
  float *w, *b, *gw, *gb; /* (n) */
};
struct cf_block_p {
  struct cf_lnp ln1, ln2;
  struct cf_lin qkv, out, fc1, fc2;
};
/* Saved activations of one transformer block for R = B*T rows. */
struct cf_block_a {
  float *x;         /* (R, H) block input */
  float *xh1, *rs1; /* (R, H), (R) the normalized block input and 1/std, shared by ln1
                       and ln2 (both normalize x) */
  float *u1;        /* (R, H) ln1 output */
  float *qkv;       /* (R, 3H) after rotary */
  float *probs;     /* (B, heads, T, T) */
  float *ao;        /* (R, H) attention output before the out projection */
  float *u2;        /* (R, H) ln2 output */
  float *f, *cdf;   /* (R, ffn) fc1 output, Phi(f) (kept for backward) */
  float *g;         /* (R, ffn) gelu(f): forward scratch shared by all layers (backward
                       recomputes f * Phi(f) bit for bit) */
};
/* One LN+ReLU+dropout unit's saved state. */
struct cf_unit_a {
  float *xh, *rs, *mask, *d;
};

struct cf_model_impl {
  int64_t J, T, dh, rot, SH, Idec, Dout; /* Idec = max(S*H, D) */
  int64_t n_pred_pts;                    /* (N-1)*P points per sequence that carry a loss */
  int64_t n_pred_tok;                    /* (N-1)*P*S tokens */
  double *pl;                            /* cf_model.point_loss during a forward */
  /* this rank's part of the model (cf_model_init_part; all "whole model" when serial) */
  MPI_Comm tpc; /* tensor-parallel group, MPI_COMM_NULL when n_tp == 1 */
  int n_tp, tp_rank, n_cp, cp_rank;
  int64_t l0, l1;             /* transformer layers held: [l0, l1) */
  int first, last;            /* holds the encoder / holds lnf, the head and the decoder */
  int64_t heads_l, Hl, ffn_l; /* local heads, their width heads_l*dh, local MLP width */
  int64_t Jl, Tl;             /* points / tokens of each sequence held (context parallel) */
  int64_t plo[2], phi[2];     /* the global point ranges held */
  int64_t tlo[2], thi[2];     /* the same in tokens */
  int has_ring;               /* n_cp > 1: attention through ring */
  struct cf_ring ring;
  int64_t F, R, Wt; /* fm width, fm draws, head training noise per point */
  int64_t dz;       /* cvae latent size */
  /* text prompt (cfg.prompt_len > 0; without one L = Lp = 0, Tx = Tl, Tt = T, x* = t*) */
  int64_t L;              /* prompt tokens per sequence */
  int64_t Lp;             /* prompt rows held per sequence: L on context rank 0, else 0 */
  int64_t Tx;             /* rows per sequence through the blocks: Lp + Tl */
  int64_t Tt;             /* positions of the whole sequence: L + T */
  int64_t xlo[2], xhi[2]; /* the rows held as ranges of the whole sequence [prompt | tokens] */
  int64_t b0;             /* first stored sequence of the current call (act_select) */
  float *wte, *gwte;      /* (V, H) prompt.wte and its gradient (first stage) */
  int32_t *ids;           /* (max_batch, L) prompt ids per stored sequence */
  float *eout;            /* (B*Tl, H) encoder output before it moves behind the prompt rows */
  /* parameters */
  struct cf_lin enc1, enc2, mu1, mu2, lv1, lv2, dec1, dec2, dec3;
  struct cf_lin fmc, fm1, fm2, fm3, fmo; /* fm: cond, fc1, fc2, fc3, out */
  struct cf_lin cq1, cq2, cp1, cp2;      /* cvae: posterior fc1, fc2; prior fc1, fc2 */
  struct cf_block_p *blk;                /* (layers) */
  struct cf_lnp lnf;
  signed char *init_kind; /* (n_tensors) 0 zero, 1 one, 2 normal(0.02), 3 uniform(1/sqrt(in)) */
  int64_t *fan_in;        /* (n_tensors) */
  char *names;            /* tensor name storage */
  /* activations for max_batch sequences */
  struct cf_arena arena;
  float *cs, *sn; /* (T, rot/2) rotary tables */
  float *z;       /* (B*J, D) copy of the input points */
  struct cf_unit_a enc;
  struct cf_block_a *ba; /* (layers) */
  float *xL;             /* (R, H) last residual stream */
  float *xhf, *rsf, *hf; /* lnf */
  float *mu, *v;         /* (R, H) vae posterior mean and raw log-variance */
  struct cf_unit_a umu, ulv;
  float *zeta, *fac, *gmu_kl, *gv_kl; /* (R, H) */
  struct cf_unit_a ud1, ud2;          /* decoder units (B*J, I) */
  float *out, *dout; /* (B*J, Dout) decoder output and dloss/dout; fm (B*J*R, D) velocities */
  float *hnoise;     /* (B*J, Wt) fm / cvae training noise of the call's points */
  /* fm: rows B*J*R (point-major, draw r of point p at p*R + r) */
  float *fm_cp;                   /* (B*J, F) cond(c) */
  float *fm_in;                   /* (B*J*R, D+8) [y_s, phi(s)] */
  struct cf_unit_a fu1, fu2, fu3; /* (B*J*R, F) */
  float *fm_g1, *fm_g2;           /* (B*J*R, F) backward scratch */
  float *fm_gc;                   /* (B*J, F) d loss / d cond(c), summed over draws */
  /* cvae: rows B*J */
  float *cv_qin;           /* (B*J, S*H + D) [c, y] */
  struct cf_unit_a uq, up; /* (B*J, I) posterior, prior units */
  float *cv_q, *cv_p;      /* (B*J, 2dz) [mq | rq], [mp | rp] */
  float *cv_din;           /* (B*J, S*H + dz) [c, z] */
  float *cv_fac;           /* (B*J, dz) d z / d rq: exp(lq) eps_z inside the clamp, else 0 */
  float *cv_gqkl, *cv_gp;  /* (B*J, 2dz) KL gradients w.r.t. [mq | rq] and [mp | rp] */
  float *cv_gq;            /* (B*J, 2dz) backward: total gradient w.r.t. [mq | rq] */
  float *cv_gdin;          /* (B*J, S*H + dz) */
  float *cv_gqin;          /* (B*J, S*H + D) */
  /* backward scratch */
  float *gx, *gao, *gh; /* (R, H) */
  float *gt;            /* (2, R, H): [d ln1 out | d ln2 out] in a block's backward */
  float *gqkv;          /* (R, 3H) */
  float *gf;            /* (R, ffn) */
  float *gs;            /* (CF_ATTN_CHUNK, T) */
  float *gd1, *gd2;     /* (B*J, I) */
  float *genc;          /* (B*J, SH) */
  /* scratch sharing (act_layout says when each is live): gf, gqkv, gd1, dout (not fm), genc;
   * gt, gd2 and the block inputs x_l after the stage's first (with xL); gao, gh. With one
   * pipeline stage xL is gx. */
  float *gmu, *gv;       /* (R, H) */
  int64_t last_B;        /* sequences in the last forward (0: none) */
  int last_drop;         /* dropout masks valid for the last forward */
  unsigned char *fwd_ok; /* (max_batch) 1: the sequence's forward ran, its backward not yet */
};

/* Sizes and rotary tables a transformer block needs. */
struct cf_block_dims {
  int64_t H, heads, dh, rot, ffn; /* heads and ffn: this rank's share under tensor parallelism */
  int64_t win;                    /* attention window (cf_attn_first): S without history, else 0 */
  const float *cs, *sn;           /* (>= T, rot/2) rotary tables, position = row of the whole
                                     sequence ([prompt | tokens]) */
  MPI_Comm tp;                    /* tensor-parallel group (MPI_COMM_NULL: none) */
  struct cf_ring *ring;   /* context parallel: attention over the ring (NULL: whole sequence) */
  int64_t tlo[2], thi[2]; /* with ring: the global row ranges of each sequence's rows */
};
/* Backward scratch for R = B*T rows. */
struct cf_block_ws {
  float *gt;   /* (2, R, H) */
  float *gao;  /* (R, H) */
  float *gqkv; /* (R, 3H) */
  float *gf;   /* (R, ffn) */
  float *gs;   /* (CF_ATTN_CHUNK, T) */
};
/* One block for B sequences of T tokens each (this rank's tokens under context parallelism):
 * xn (R, H) = a->x + attn(ln1(a->x)) + mlp(ln2(a->x)), filling every saved activation in a
 * (a->x is the input). Under tensor parallelism p holds this rank's heads and MLP columns
 * and the partial sums of the out projection and fc2 are all-reduced once over d->tp.
 * Collective on d->tp and d->ring when given. */
cf_status cf_block_fwd(const struct cf_block_p *p, const struct cf_block_a *a, int64_t B, int64_t T,
                       const struct cf_block_dims *d, float *xn);
/* Backward of cf_block_fwd: gx (R, H) holds d loss / d xn on entry and d loss / d a->x on
 * return; parameter gradients are added. One all-reduce over d->tp of the two LayerNorm
 * output gradients. Collective as cf_block_fwd. */
cf_status cf_block_bwd(const struct cf_block_p *p, const struct cf_block_a *a, int64_t B, int64_t T,
                       const struct cf_block_dims *d, float *gx, const struct cf_block_ws *w);

/* Decoder forward on rows (M, SH) through the given units and linears (no allocation), on
 * cf_linear_fwd: training's. Sampling has a row-deterministic copy in kvcache.c.
 * out (M, Dout). */
void cf_decoder_fwd(const struct cf_model_impl *im, const float *in, int64_t M,
                    const struct cf_unit_a *u1, const struct cf_unit_a *u2, float *out);
/* TwoLayerMLP forward (fc1 -> unit -> fc2) on rows (M, in). out (M, l2->out). */
void cf_mlp2_fwd(const struct cf_lin *l1, const struct cf_lin *l2, const float *in, int64_t M,
                 const struct cf_unit_a *u, float *out);

/* ---- test hooks ---- */
/* Final hidden states (after lnf) of the last cf_model_forward: (B, T, H). */
const float *cf_model_test_hidden(const struct cf_model *m);
/* Decoder output of the last cf_model_forward for every point: (B, J, Dout); fm: the
 * velocities (B, J, R, D). */
const float *cf_model_test_output(const struct cf_model *m);

#endif
