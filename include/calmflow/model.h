/* model.h: the CaLMFlow network — encoder, GPT-NeoX causal transformer, output head —
 * with hand-written forward and backward passes and a KV-cached incremental forward.
 *
 * Shapes (one sequence holds P trajectories at N time points, S spatial tokens per point):
 *   J = N*P points per sequence, point index j = t*P + p (time-major)
 *   T = J*S tokens per sequence, token index k = j*S + s
 *   B sequences per call.
 *
 * Network (calmflow-method.md, Appendix A):
 *   encoder  e = fc2(dropout(relu(ln0(fc1(z)))))   z (D) -> e (S*H), ln0 = LayerNorm, no affine
 *            (with time_input, fc1 sees [z, t_j]: D + 1 inputs)
 *            token k = j*S + s takes e_j[s*H : (s+1)*H]
 *   blocks   x += attn(ln1(x)) + mlp(ln2(x))       (parallel residual, pre-LN)
 *            attn: fused qkv (3H x H), per head the 3*dh rows are [q | k | v] (GPT-NeoX),
 *                  rotary (rotate-half, base rotary_base) on the first
 *                  rot = 2*floor(rotary_pct*dh/2) dims of q and k, position = token index k,
 *                  scores / sqrt(dh), causal softmax (-flow_history 0: within the token's
 *                  point only), out projection (H x H)
 *            mlp:  fc2(gelu(fc1(x))), fc1 (ffn x H), exact erf GELU
 *   final    h = lnf(x)
 *   head vae (authors): mu = mlp_mu(h_k), v = mlp_lv(h_k) (TwoLayerMLP H->H each: fc1 -> LN no
 *            affine -> ReLU -> dropout -> fc2), var = exp(v) + 1e-4,
 *            zeta_k = mu + tau*sqrt(var)*eps_k (tau = 1 in training),
 *            xhat_j = dec([zeta_{jS} .. zeta_{jS+S-1}]) (S*H -> D);
 *            loss: recon = sum_d (xhat - y)^2, kl = 0.5*sum_h (mu^2 + var - 1 - log var)
 *   head gauss (default): [m, r] = dec([h_{jS} .. h_{jS+S-1}]) (S*H -> 2D),
 *            logstd = clamp(r, logstd_min, logstd_max) (zero gradient outside),
 *            nll = sum_d 0.5*((y - m)/exp(logstd))^2 + logstd + 0.5*log(2*pi)
 *   head gmm (GIVT-style): [a (K) | m (K, D) | r (K, D)] = dec(...) (S*H -> K(1 + 2D)),
 *            pi = softmax(a), logstd_k = clamp(r_k) as gauss,
 *            nll = -log sum_k pi_k N(y; m_k, diag exp(2 logstd_k)); recon is the squared error
 *            of the mixture mean sum_k pi_k m_k
 *   head fm (flow matching per point, MAR "diffusion loss" style; no decoder dec): with
 *            c = [h_{jS} .. h_{jS+S-1}] (S*H), F = fm_width, a point y_s (D) at flow time s,
 *            phi(s) = [sin(pi s), cos(pi s), sin(2 pi s), cos(2 pi s), sin(4 pi s), cos(4 pi s),
 *                      sin(8 pi s), cos(8 pi s)] (8 Fourier features, float of the double value),
 *            the velocity MLP (3 hidden layers, U = LN no affine -> ReLU, no dropout)
 *              a1 = fc1([y_s, phi(s)]) + cond(c)   fc1 (F x (D+8)), cond (F x S*H): together one
 *                                                  linear on [y_s, phi(s), c] (biases summed)
 *              v  = out(U(fc3(U(fc2(U(a1))))))     fc2, fc3 (F x F), out (D x F)
 *            training: R = fm_draws draws per point of s_r ~ U[0, 1) and y0_r ~ N(0, I)
 *            (cf_head_train_noise), y_s = (1 - s_r) y0_r + s_r y,
 *            fm = (1/R) sum_r sum_d (v_d - (y_d - y0_d))^2; loss = recon = fm per point.
 *            sampling: y <- tau*eps, then K = fm_steps Euler steps y += v(y, k/K, c) / K for
 *            k = 0 .. K-1 (the float s = k/K; the step is the float 1/K)
 *   head cvae (conditional VAE; posterior sees the target), dz = cvae_dz, I as for dec:
 *            [mq | rq] = post([c, y]) (TwoLayerMLP S*H+D -> I -> 2dz, as mu / lv above),
 *            [mp | rp] = prior(c) (TwoLayerMLP S*H -> I -> 2dz), lq = clamp(rq), lp = clamp(rp)
 *            (the log-std clamp of gauss), z = mq + exp(lq) eps_z (eps_z: cf_head_train_noise),
 *            [m | r] = dec([c, z]) (dec with S*H + dz inputs, Dout = 2D), nll of y as gauss,
 *            kl = sum_i lp_i - lq_i + (exp(2 lq_i) + (mq_i - mp_i)^2) / (2 exp(2 lp_i)) - 1/2;
 *            loss = nll + beta*kl (per point), recon = squared error of m.
 *            sampling: z = mp + tau*exp(lp) eps_z, [m | r] = dec([c, z]), y = m + tau*exp(ls) eps_y
 *   decoder dec (every head but fm), I = max(S*H, D): fc1 (I x S*H; cvae: I x (S*H + dz)) -> LN
 *                  no affine -> ReLU -> dropout -> fc2 (I x I) -> LN no affine -> ReLU -> dropout
 *                  -> fc3 (Dout x I)
 *   text prompt (optional, cfg.prompt_len = L > 0; calmflow-method.md 2.4): L token ids per
 *            sequence (left-padded with cfg.prompt_pad, see cf_model_set_prompt) are embedded
 *            by the table prompt.wte (V, H): row id is the token's input vector, no scaling,
 *            no position term. The sequence through the blocks is [prompt (L) | trajectory
 *            tokens (T)]: prompt token i at rotary position i, trajectory token k at L + k.
 *            Attention stays plain causal over the whole sequence: there is no padding mask,
 *            so pad tokens are ordinary tokens every later token attends to. lnf, the head,
 *            the decoder and the loss see the T trajectory tokens only (the prompt rows'
 *            outputs are dropped); d loss / d (prompt rows) flows into the wte rows of the ids
 *            used. Needs history (-flow_history 1).
 *   All LayerNorms use eps 1e-5. Weights are stored PyTorch-style (out, in), row-major;
 *   y = x W^T + b through cblas_sgemm (sampling: cf_linear_rows, row-deterministic).
 *
 * Parameters and gradients each live in one contiguous float arena (one MPI_Allreduce for
 * the gradients, one loop for the optimizer); cf_model_tensor() names every tensor with its
 * global shape (checkpoint dataset names). Tensor names:
 *   enc.fc1.weight (S*H, D; D+1 with time_input)  enc.fc1.bias (S*H)
 *   enc.fc2.weight (S*H, S*H)  enc.fc2.bias (S*H)
 *   prompt.wte.weight (V, H)   only with a prompt (V = cfg.vocab, the tokenizer's vocabulary
 *                              size: the layout of GPT-NeoX's gpt_neox.embed_in.weight)
 *   layers.L.ln1.weight (H) .ln1.bias .ln2.weight .ln2.bias
 *   layers.L.attn.qkv.weight (3H, H) .attn.qkv.bias (3H) .attn.out.weight (H, H) .attn.out.bias (H)
 *   layers.L.mlp.fc1.weight (ffn, H) .mlp.fc1.bias (ffn) .mlp.fc2.weight (H, ffn) .mlp.fc2.bias (H)
 *   lnf.weight (H) lnf.bias (H)
 *   vae only: head.mu.fc1.weight (H, H) head.mu.fc1.bias head.mu.fc2.weight head.mu.fc2.bias
 *             head.lv.fc1.weight ... head.lv.fc2.bias
 *   fm only (instead of dec): head.fm.cond.weight (F, S*H) .cond.bias (F)
 *             head.fm.fc1.weight (F, D+8) .fc1.bias (F) .fc2.weight (F, F) .fc2.bias (F)
 *             .fc3.weight (F, F) .fc3.bias (F) .out.weight (D, F) .out.bias (D)
 *   cvae only: head.cvae.post.fc1.weight (I, S*H+D) .post.fc1.bias (I) .post.fc2.weight (2dz, I)
 *             .post.fc2.bias (2dz) head.cvae.prior.fc1.weight (I, S*H) ... .prior.fc2.bias (2dz)
 *   dec.fc1.weight (I, S*H; cvae (I, S*H+dz)) dec.fc1.bias (I) dec.fc2.weight (I, I)
 *   dec.fc2.bias (I) dec.fc3.weight (Dout, I) dec.fc3.bias (Dout)   (every head but fm)
 *   Dout = D (vae), 2D (gauss, cvae: [mean | logstd]) or K(1 + 2D) (gmm: [logits | means |
 *   logstds]); the fm head's velocity (D) per draw
 *   All head tensors are replicated under tensor parallelism and live on the last stage.
 *
 * Dropout (training only, when cfg.dropout > 0 and a key is given): element e of site `site`
 * for global sequence g is dropped iff the float draw
 *   u = cf_rng_uniform({seed, CF_RNG_DROPOUT + site, step, g}, e) < dropout,
 * kept elements scaled by 1/(1-dropout). Sites: 0 encoder, 1 mu mlp, 2 lv mlp, 3 dec after fc1,
 * 4 dec after fc2, 5 cvae posterior, 6 cvae prior; e = row-within-sequence * width + column.
 * The transformer and the fm head have no dropout.
 *
 * Head training noise (fm, cvae; cf_head_train_noise) is drawn inside cf_model_forward unless
 * given: point j of global sequence g at step `step` uses the stream
 * {seed, CF_RNG_HEAD, step, g} (seed, step and g = seq0 + b from the dropout key; without a
 * key seed 0, step 0, g = b), so it does not depend on batching or the rank layout.
 *
 * Parallel parts (cf_model_init_part with a process grid, grid.h): a rank holds
 *   - pipeline: the layers [l0, l1) of its stage (cf_grid_stage_layers); stage 0 also the
 *     encoder and prompt.wte, the last stage also lnf, the head and the decoder;
 *   - tensor (Megatron): heads [t*heads/tp, (t+1)*heads/tp) of every block it holds, i.e. the
 *     row block of attn.qkv (weight and bias), the column block of attn.out.weight, the row
 *     block of mlp.fc1 (ffn/tp rows) and the column block of mlp.fc2.weight; LayerNorms, the
 *     out / fc2 biases, encoder, prompt.wte (not split by vocabulary: every tensor rank
 *     embeds the whole prompt), head and decoder are replicated. One all-reduce over the
 *     tensor group per block in forward, one in backward;
 *   - context: the points [plo[0], phi[0]) and [plo[1], phi[1]) of every sequence
 *     (cf_grid_cp_chunks over the N*P points, so a point's S tokens stay together); attention
 *     runs over the ring (ring.h). Inputs stay whole sequences; the rank uses its rows. With a
 *     prompt, context rank 0 (whose first chunk starts the sequence) also holds the L prompt
 *     rows in front of its trajectory rows; the ring's token ranges are those of the whole
 *     sequence [prompt | trajectory].
 *   Rows per sequence through the blocks (stage boundaries, cf_model_local_tokens): the
 *   prompt rows held (L or 0) followed by the trajectory token rows held.
 * The tensor table lists every tensor of the whole model on every rank (checkpoints name
 * them all) with this rank's block; tensors of other stages have held = 0.
 * Weights are initialized by global element index, so any layout starts from the same model.
 * Summing gradients over the ranks holding the same parameters (data and context groups) is
 * the caller's job (reducer.h). No function allocates after cf_model_init / cf_kvcache_init.
 */
#ifndef CALMFLOW_MODEL_H
#define CALMFLOW_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/grid.h"
#include "calmflow/rng.h"

enum cf_head {
  CF_HEAD_VAE = 0,
  CF_HEAD_GAUSS = 1,
  CF_HEAD_GMM = 2,
  CF_HEAD_FM = 3,  /* flow-matching velocity MLP per point */
  CF_HEAD_CVAE = 4 /* conditional VAE, posterior sees the target */
};

/* Local. "vae", "gauss", "gmm", "fm", "cvae". */
const char *cf_head_name(enum cf_head h);

struct cf_model_cfg {
  int64_t D;          /* data dimension */
  int64_t S;          /* spatial tokens per point */
  int64_t P;          /* trajectories per sequence */
  int64_t N;          /* time points */
  int64_t H;          /* hidden size (= vae latent size) */
  int64_t layers;     /* transformer blocks */
  int64_t heads;      /* attention heads; H % heads == 0 */
  int64_t ffn;        /* MLP width (4H by default) */
  double rotary_pct;  /* fraction of each head's dims with rotary (0.25) */
  double rotary_base; /* 10000 */
  enum cf_head head;
  float dropout;    /* encoder / head / decoder MLP dropout (0.1) */
  float logstd_min; /* gauss clamp (-7) */
  float logstd_max; /* gauss clamp (5) */
  int64_t gmm_k;    /* gmm head: mixture components (16) */
  int64_t fm_width; /* fm head: velocity MLP width F (128) */
  int64_t fm_draws; /* fm head: draws of (s, y0) per point in training R (2) */
  int64_t fm_steps; /* fm head: Euler steps per sampled point K (20) */
  int64_t cvae_dz;  /* cvae head: latent size dz (8) */
  int no_history;   /* 1: ODE-style ablation (-flow_history 0): a token attends only to the
                       tokens of its own point, so the next point depends on the current one
                       only; needs -par_cp 1 */
  int time_input;   /* 1: the encoder also sees the point's time t_j = (j / P) / (N - 1) as an
                       extra input column (enc.fc1 is (S*H, D + 1)); the default without
                       history, where rotary positions alone cannot tell the time */
  /* text prompt (0: none; see "text prompt" above) */
  int64_t prompt_len; /* L: text-prompt tokens in front of every sequence (0: no prompt) */
  int64_t vocab;      /* V: rows of prompt.wte, the tokenizer's vocabulary size (prompt only) */
  int64_t prompt_pad; /* the left-pad token id, in [0, V) (GPT-2 / GPT-NeoX: <|endoftext|>) */
};

/* Dropout key: sequence b of a call is global sequence seq0 + b. */
struct cf_dropkey {
  uint64_t seed;
  uint32_t step;
  uint64_t seq0;
};

enum cf_split {
  CF_SPLIT_NONE = 0, /* whole tensor on every rank of the tensor group */
  CF_SPLIT_ROWS = 1, /* row block per tensor rank */
  CF_SPLIT_COLS = 2  /* column block per tensor rank */
};

struct cf_tensor_info {
  const char *name;
  int ndim;         /* 1 or 2 */
  int64_t shape[2]; /* global shape (shape[1] = 0 for ndim 1) */
  int held;         /* 0: another pipeline stage's tensor (offset, numel 0) */
  enum cf_split split;
  int64_t start[2]; /* this rank's block in global coordinates */
  int64_t count[2]; /* its shape (count[1] = 1 for ndim 1) */
  size_t offset;    /* in floats, into params / grads */
  size_t numel;     /* floats held */
};

/* Per-call loss contributions: sums over this call's positions divided by the given
 * global counts, so summing across ranks gives the global mean. */
struct cf_loss {
  double loss;  /* recon + beta*kl (vae), nll (gauss, gmm), fm (fm), nll + beta*kl (cvae) */
  double recon; /* vae: mean squared error summed over D; gauss, cvae: mean squared error of m;
                   gmm: of the mixture mean; fm: the flow-matching loss fm per point */
  double kl;    /* vae: mean KL per token summed over H; cvae: mean KL(q || p) per point; else 0 */
  double nll;   /* gauss, gmm, cvae: mean NLL per point; vae, fm: 0 */
};

/* Called by cf_model_backward each time the gradients in [offset, n_params) are final:
 * after the heads and lnf, after each block (last to first) and after the encoder (offset 0).
 * Offsets only decrease. A non-OK status stops the backward and is returned by it. */
typedef cf_status (*cf_grad_ready_fn)(void *ctx, size_t offset);

struct cf_model {
  struct cf_model_cfg cfg;
  cf_grad_ready_fn grad_ready; /* optional (NULL): lets the caller reduce while backward runs */
  void *grad_ctx;
  int64_t max_batch; /* sequences per training call */
  size_t n_params;   /* floats */
  float *params;     /* (n_params) */
  float *grads;      /* (n_params) */
  int n_tensors;
  struct cf_tensor_info *tensors;
  void *impl; /* activations and workspaces (model.c) */
  /* optional (J), NULL by default: each forward adds every predicted point's loss, summed over
   * its sequences, at the point's global index j (gauss, gmm, cvae: the NLL; vae: the squared
   * error; fm: the flow-matching loss averaged over the draws); for diagnostics */
  double *point_loss;
};

/* Local. Check cfg (every field; CF_EINVAL naming the option -net_..., -flow_... that is wrong). */
cf_status cf_model_cfg_check(const struct cf_model_cfg *cfg);

/* Local. Allocate parameters, gradients and training activations for up to max_batch
 * sequences. Weights are zero until cf_model_init_weights. */
cf_status cf_model_init(struct cf_model *m, const struct cf_model_cfg *cfg, int64_t max_batch);
/* Local. The same for this rank's part of the model on grid g (NULL: the whole model, as
 * cf_model_init). Checks that tensor parallelism divides heads and ffn and that context
 * parallelism leaves every rank points (errors name the options). The grid must outlive m. */
cf_status cf_model_init_part(struct cf_model *m, const struct cf_model_cfg *cfg, int64_t max_batch,
                             const struct cf_grid *g);
/* Local. Whether this rank holds the encoder (first stage) / the head (last stage). */
int cf_model_first(const struct cf_model *m);
int cf_model_last(const struct cf_model *m);
/* Local. Rows per sequence through this rank's blocks: its trajectory tokens (T, or its
 * context-parallel share) plus the L prompt rows when it holds them (a prompt model on
 * context rank 0). The stage-boundary buffers hold this many rows per sequence. */
int64_t cf_model_local_tokens(const struct cf_model *m);
/* Local. Sum of squares of the gradients this rank counts for the global gradient norm: its
 * blocks of tensor-split tensors, replicated tensors on tensor rank 0 only. Summed over the
 * model group (grid.mp) it is the squared norm of the whole model's gradient. In the same pass,
 * *finite (may be NULL) = 1 when every gradient element this rank holds (all of m->grads,
 * replicated tensors included) is finite, 0 when one is NaN or Inf. */
double cf_model_grad_sqnorm(const struct cf_model *m, int *finite);
void cf_model_release(struct cf_model *m); /* idempotent; *m all-zero after */

/* Local. Decoder outputs per point: D (vae), 2D (gauss, cvae), K(1 + 2D) (gmm); fm: D (its
 * velocity per draw, no decoder). */
static inline int64_t cf_model_dout(const struct cf_model_cfg *c) {
  switch (c->head) {
  case CF_HEAD_GAUSS:
  case CF_HEAD_CVAE:
    return 2 * c->D;
  case CF_HEAD_GMM:
    return c->gmm_k * (1 + 2 * c->D);
  default:
    return c->D;
  }
}

/* Local. Head training noise floats per point: fm R*(1 + D) (per draw r: [s_r, y0_r (D)]),
 * cvae dz (eps_z); 0 for the other heads. */
static inline int64_t cf_head_train_width(const struct cf_model_cfg *c) {
  return c->head == CF_HEAD_FM ? c->fm_draws * (1 + c->D)
                               : (c->head == CF_HEAD_CVAE ? c->cvae_dz : 0);
}
/* Local. Point j's head training noise from stream r (= {seed, CF_RNG_HEAD, step, g}): out
 * (cf_head_train_width). fm: with n = 4*ceil(R*D/4) and base = j*(n + 4*ceil(R/4)), y0_r[d] is
 * the normal at element base + r*D + d and s_r the uniform (cf_rng_uniform) at element
 * base + n + r (separate Philox blocks, so s and y0 are independent); cvae: eps_z[i] is the
 * normal at element j*dz + i. */
void cf_head_train_noise(const struct cf_model_cfg *c, const struct cf_rng *r, int64_t j,
                         float *out);

/* Local. The time input of point j (time_input): t = (j / P) / (N - 1), in [0, 1]. */
static inline float cf_model_point_time(const struct cf_model_cfg *c, int64_t j) {
  return (float)((double)(j / c->P) / (double)(c->N - 1));
}

/* Local. Deterministic initialization from seed: transformer linears N(0, 0.02), biases 0,
 * LayerNorm weight 1 bias 0; encoder / head / decoder linears PyTorch default
 * U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. Uses CF_RNG_INIT with index = tensor id. */
void cf_model_init_weights(struct cf_model *m, uint64_t seed);

/* Local. Floating-point operations of one training forward + backward of one sequence of the
 * whole model (matrix products counted as 2 flops per multiply-add, causal attention as half
 * the full score matrix, backward as twice the forward); for MFU figures. */
double cf_model_flops(const struct cf_model_cfg *c);

/* Local. Look up a tensor this rank holds by name (NULL if absent or not held). */
const struct cf_tensor_info *cf_model_find(const struct cf_model *m, const char *name);

void cf_model_zero_grad(struct cf_model *m);

/* Local. The prompt token ids of sequences [b0, b0 + B) of the activation storage: ids (B, L),
 * each in [0, V), left-padded to L with cfg.prompt_pad by the caller. A forward (and its
 * backward) at b0 embeds the ids last set there (all pads until set); set them before every
 * forward. CF_EINVAL without a prompt (cfg.prompt_len 0), for a range
 * outside max_batch or an id outside the vocabulary. Only the first pipeline stage uses them
 * (other stages may call it too). */
cf_status cf_model_set_prompt(struct cf_model *m, int64_t b0, int64_t B, const int32_t *ids);

/* Attention diagnostics of one layer over the last training forward (cf_model_forward), averaged
 * over its sequences, heads and the query tokens at time points t >= 1. */
struct cf_attn_stats {
  double past;    /* probability mass on keys of earlier time points (the history) */
  double uniform; /* the same mass under uniform attention over the allowed keys */
  double entropy; /* attention entropy, nats */
  double q_norm;  /* Frobenius norm of the layer's q rows of attn.qkv.weight */
  double k_norm;  /* the same for the k rows */
};
/* Local. Fill st (layers) from the last cf_model_forward of B sequences. Needs the whole model
 * on this rank (no tensor, pipeline or context split: CF_EINVAL otherwise) and no prompt. */
cf_status cf_model_attn_stats(const struct cf_model *m, int64_t B, struct cf_attn_stats *st);

/* Local. Training forward for B <= max_batch sequences; keeps activations for backward.
 *   z     (B, J, D) input points, sequence order
 *   y     (B, J, D) targets; only rows j < (N-1)*P are used (the model predicts row j+P's
 *         target from tokens <= j); what y means (next point or velocity) is the caller's
 *   eps   (B, T, H) standard-normal latent noise for vae; NULL for gauss and gmm; fm and cvae:
 *         (B, J, cf_head_train_width) explicit head training noise, or NULL to draw it with
 *         cf_head_train_noise (see "Head training noise" above)
 *   dk    dropout key, or NULL for no dropout (eval / tests)
 *   n_pts global number of predicted points over all ranks (divisor of recon and nll);
 *         the KL divisor is n_pts * S
 *   beta  vae KL weight */
cf_status cf_model_forward(struct cf_model *m, int64_t B, const float *z, const float *y,
                           const float *eps, const struct cf_dropkey *dk, double n_pts, float beta,
                           struct cf_loss *out);

/* Local. Backward of the last cf_model_forward; adds into m->grads. It consumes what the
 * forward left (its output gradient shares a scratch with the backward's): a second backward
 * needs a second forward, else CF_EINVAL. */
cf_status cf_model_backward(struct cf_model *m);

/* ---- pipeline stages ----
 * The activation storage holds max_batch sequences; a call at b0 uses sequences
 * [b0, b0 + B) of it, so several micro-batches can be in flight (1F1B keeps up to pp - stage).
 * cf_model_forward / cf_model_backward are the calls at b0 = 0 on a whole model. */

/* Collective on the tensor and context groups. Forward of this rank's part for B sequences
 * stored at b0. First stage: from z. Other stages: the input hidden states must be in
 * cf_model_stage_in(m, b0, B) already. Last stage: computes the loss (z, y, eps as in
 * cf_model_forward); other stages leave *out zero and ignore y and eps. */
cf_status cf_model_forward_at(struct cf_model *m, int64_t b0, int64_t B, const float *z,
                              const float *y, const float *eps, const struct cf_dropkey *dk,
                              double n_pts, float beta, struct cf_loss *out);
/* Collective as cf_model_forward_at. Backward of the forward at b0 (same B). Last stage: from
 * the loss. Other stages: d loss / d (stage output) must be in cf_model_stage_grad(m, b0, B);
 * on return (stages after the first) it holds d loss / d (stage input). */
cf_status cf_model_backward_at(struct cf_model *m, int64_t b0, int64_t B);
/* Local. Buffers of the stage boundary, each (B * local tokens, H) for sequences at b0:
 * the input of the first layer held (receive here), the output of the last layer held
 * (send from here after forward), and the boundary gradient (see cf_model_backward_at). */
float *cf_model_stage_in(struct cf_model *m, int64_t b0, int64_t B);
const float *cf_model_stage_out(struct cf_model *m, int64_t b0, int64_t B);
float *cf_model_stage_grad(struct cf_model *m, int64_t b0, int64_t B);

/* ---- inference with a KV cache ---- */
struct cf_kvcache {
  int64_t B;       /* sequences */
  int64_t max_len; /* trajectory tokens per sequence the cache can hold (a prompt model's cache
                      holds the L prompt tokens besides) */
  int64_t max_new; /* tokens per sequence one extend call may add */
  int64_t len;     /* trajectory tokens cached so far (same for every sequence; the prompt
                      tokens of cf_model_prefill are not counted) */
  void *impl;
};

/* Local. Cache and workspace for B sequences of up to max_len tokens, adding at most
 * max_new tokens per call (max_new = P*S for KV-cached rollout, max_len for recompute).
 * A prompt model's cache also holds the L prompt tokens (cf_model_prefill; its workspace
 * takes max(max_new, L) tokens per call).
 * On a model part (cf_model_init_part) the cache holds this rank's layers, its heads (tensor
 * parallel) and the keys and values of its tokens (context parallel: the points of
 * cf_grid_cp_chunks, so max_len <= N*P*S; the prompt on context rank 0); sized exactly for
 * that. */
cf_status cf_kvcache_init(struct cf_kvcache *c, const struct cf_model *m, int64_t B,
                          int64_t max_len, int64_t max_new);
void cf_kvcache_release(struct cf_kvcache *c);
void cf_kvcache_reset(struct cf_kvcache *c); /* len = 0, and the prompt forgotten */

/* Put the prompt into an empty cache (after init or reset, before any extend): the L prompt
 * tokens of every sequence at positions 0 .. L-1, through this rank's part of the model.
 *   ids  first stage: (B, L) token ids in [0, V), left-padded as for training; else unused
 *   in   other stages: (B, L, H) the previous stage's out; first stage: unused (NULL)
 *   out  (B, L, H) the residual stream after this stage's layers, for the next stage; the
 *        last stage may pass NULL (the prompt's outputs are not used)
 * On a prompt model cf_model_extend refuses a cache that was not prefilled. Collective and
 * batch invariant as cf_model_extend. CF_EINVAL without a prompt, on a non-empty cache or
 * for an id outside the vocabulary. */
cf_status cf_model_prefill(const struct cf_model *m, struct cf_kvcache *c, const int32_t *ids,
                           const float *in, float *out);

/* Append np new points per sequence (np*S tokens at positions L+len .. L+len+np*S-1) through
 * this rank's part of the model. No dropout.
 *   in   first stage: z_new (B, np, D) the new points; other stages: (B, np*S, H) the
 *        previous stage's out
 *   out  last stage: (B, np*S, H) final hidden states (after lnf) of the new tokens; other
 *        stages: the residual stream after this stage's layers, for the next stage
 * Collective on the tensor and context groups of the model's grid (Local on a whole model).
 * Every rank of those groups gets the same out. Tensor parallel: partial projections are
 * summed in rank order after an all-gather; context parallel: every context rank computes
 * the new tokens, attends over the keys it caches and the partial softmaxes are merged in
 * rank order, so only the attention and the cache are split.
 * Batch invariant (as cf_head_sample): a sequence's outputs are bit-identical whatever the
 * other sequences of the cache are and whatever B is (at a fixed tensor, pipeline and context
 * layout; other layouts agree to float round-off); they match cf_model_forward to round-off
 * (sampling's linears are row-deterministic, training's use cblas_sgemm). */
cf_status cf_model_extend(const struct cf_model *m, struct cf_kvcache *c, const float *in,
                          int64_t np, float *out);

/* Local. Head noise floats per point: vae S*H normals (latent), gauss D normals, gmm D
 * normals and one uniform in [0, 1) that picks the component, fm D normals (the source point),
 * cvae dz + D normals ([eps_z | eps_y]). */
static inline int64_t cf_head_noise_width(const struct cf_model_cfg *c) {
  switch (c->head) {
  case CF_HEAD_VAE:
    return c->S * c->H;
  case CF_HEAD_GMM:
    return c->D + 1;
  case CF_HEAD_CVAE:
    return c->cvae_dz + c->D;
  default:
    return c->D;
  }
}
/* Local. One point's head noise from stream r: out (cf_head_noise_width). The normals are
 * elements 0, 1, .. of r; the gmm uniform is cf_rng_uniform1's element 2^40 (a Philox block of
 * its own, independent of the normals). */
void cf_head_noise(const struct cf_model_cfg *c, const struct cf_rng *r, float *out);

/* Local, last pipeline stage only. Draw the head's prediction for np points per sequence
 * from hidden states.
 *   h   (B, np*S, H) final hidden states
 *   eps (B, np, cf_head_noise_width) from cf_head_noise: vae latent noise (B, np*S, H); gauss
 *       output noise; gmm output noise and the component uniform; fm the source point; cvae
 *       [eps_z | eps_y]. NULL (tau 0 only): no noise, and gmm takes its most probable component
 *   tau temperature: scales the latent std (vae), the output std (gauss, gmm), the source noise
 *       (fm), the prior's std and the output std (cvae)
 *   y   (B, np, D) out: decoded point (vae), mean + tau*std*eps (gauss), or the same for the
 *       component k whose softmax(a) interval holds the uniform (gmm), the Euler solution at
 *       s = 1 (fm), m + tau*std*eps_y decoded from z = mp + tau*exp(lp)*eps_z (cvae)
 * Uses the cache's workspace (no allocation). */
cf_status cf_head_sample(const struct cf_model *m, struct cf_kvcache *c, int64_t np, const float *h,
                         const float *eps, float tau, float *y);

#endif
