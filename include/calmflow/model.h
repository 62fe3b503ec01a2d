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
 *            token k = j*S + s takes e_j[s*H : (s+1)*H]
 *   blocks   x += attn(ln1(x)) + mlp(ln2(x))       (parallel residual, pre-LN)
 *            attn: fused qkv (3H x H), per head the 3*dh rows are [q | k | v] (GPT-NeoX),
 *                  rotary (rotate-half, base rotary_base) on the first rot =
 * 2*floor(rotary_pct*dh/2) dims of q and k, position = token index k, scores / sqrt(dh), causal
 * softmax, out projection (H x H) mlp:  fc2(gelu(fc1(x))), fc1 (ffn x H), exact erf GELU final    h
 * = lnf(x) head vae (authors):  mu = mlp_mu(h_k), v = mlp_lv(h_k) (TwoLayerMLP H->H each: fc1 -> LN
 * no affine -> ReLU -> dropout -> fc2), var = exp(v) + 1e-4, zeta_k = mu + tau*sqrt(var)*eps_k (tau
 * = 1 in training), xhat_j = dec([zeta_{jS} .. zeta_{jS+S-1}])   (S*H -> D) loss: recon = sum_d
 * (xhat - y)^2, kl = 0.5*sum_h (mu^2 + var - 1 - log var) head gauss (default): [m, r] =
 * dec([h_{jS} .. h_{jS+S-1}]) (S*H -> 2D), logstd = clamp(r, logstd_min, logstd_max) (zero gradient
 * outside), nll = sum_d 0.5*((y - m)/exp(logstd))^2 + logstd + 0.5*log(2*pi) decoder dec (both
 * heads), I = max(S*H, D): fc1 (I x S*H) -> LN no affine -> ReLU -> dropout
 *                  -> fc2 (I x I) -> LN no affine -> ReLU -> dropout -> fc3 (Dout x I)
 *   All LayerNorms use eps 1e-5. Weights are stored PyTorch-style (out, in), row-major;
 *   y = x W^T + b through cblas_sgemm.
 *
 * Parameters and gradients each live in one contiguous float arena (one MPI_Allreduce for
 * the gradients, one loop for the optimizer); cf_model_tensor() names every tensor with its
 * global shape (checkpoint dataset names). Tensor names:
 *   enc.fc1.weight (S*H, D)  enc.fc1.bias (S*H)  enc.fc2.weight (S*H, S*H)  enc.fc2.bias (S*H)
 *   layers.L.ln1.weight (H) .ln1.bias .ln2.weight .ln2.bias
 *   layers.L.attn.qkv.weight (3H, H) .attn.qkv.bias (3H) .attn.out.weight (H, H) .attn.out.bias (H)
 *   layers.L.mlp.fc1.weight (ffn, H) .mlp.fc1.bias (ffn) .mlp.fc2.weight (H, ffn) .mlp.fc2.bias (H)
 *   lnf.weight (H) lnf.bias (H)
 *   vae only: head.mu.fc1.weight (H, H) head.mu.fc1.bias head.mu.fc2.weight head.mu.fc2.bias
 *             head.lv.fc1.weight ... head.lv.fc2.bias
 *   dec.fc1.weight (I, S*H) dec.fc1.bias (I) dec.fc2.weight (I, I) dec.fc2.bias (I)
 *   dec.fc3.weight (Dout, I) dec.fc3.bias (Dout)        Dout = D (vae) or 2D (gauss: [mean |
 * logstd])
 *
 * Dropout (training only, when cfg.dropout > 0 and a key is given): element e of site `site`
 * for global sequence g is dropped iff the float draw
 *   u = cf_rng_uniform({seed, CF_RNG_DROPOUT + site, step, g}, e) < dropout,
 * kept elements scaled by 1/(1-dropout). Sites: 0 encoder, 1 mu mlp, 2 lv mlp, 3 dec after fc1,
 * 4 dec after fc2; e = row-within-sequence * width + column. The transformer has no dropout.
 *
 * Nothing here knows about MPI: the caller splits sequences across ranks and sums gradients.
 * No function allocates after cf_model_init / cf_kvcache_init.
 */
#ifndef CALMFLOW_MODEL_H
#define CALMFLOW_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

enum cf_head { CF_HEAD_VAE = 0, CF_HEAD_GAUSS = 1 };

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
};

/* Dropout key: sequence b of a call is global sequence seq0 + b. */
struct cf_dropkey {
  uint64_t seed;
  uint32_t step;
  uint64_t seq0;
};

struct cf_tensor_info {
  const char *name;
  int ndim; /* 1 or 2 */
  int64_t shape[2];
  size_t offset; /* in floats, into params / grads */
  size_t numel;
};

/* Per-call loss contributions: sums over this call's positions divided by the given
 * global counts, so summing across ranks gives the global mean. */
struct cf_loss {
  double loss;  /* recon + beta*kl (vae) or nll (gauss) */
  double recon; /* vae: mean squared error summed over D; gauss: mean squared error of m */
  double kl;    /* vae: mean KL per token summed over H; gauss: 0 */
  double nll;   /* gauss: mean NLL per point; vae: 0 */
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
};

/* Local. Check cfg (every field; CF_EINVAL naming the option -net_..., -flow_... that is wrong). */
cf_status cf_model_cfg_check(const struct cf_model_cfg *cfg);

/* Local. Allocate parameters, gradients and training activations for up to max_batch
 * sequences. Weights are zero until cf_model_init_weights. */
cf_status cf_model_init(struct cf_model *m, const struct cf_model_cfg *cfg, int64_t max_batch);
void cf_model_release(struct cf_model *m); /* idempotent; *m all-zero after */

/* Local. Deterministic initialization from seed: transformer linears N(0, 0.02), biases 0,
 * LayerNorm weight 1 bias 0; encoder / head / decoder linears PyTorch default
 * U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. Uses CF_RNG_INIT with index = tensor id. */
void cf_model_init_weights(struct cf_model *m, uint64_t seed);

/* Local. Look up a tensor by name (NULL if absent). */
const struct cf_tensor_info *cf_model_find(const struct cf_model *m, const char *name);

void cf_model_zero_grad(struct cf_model *m);

/* Local. Training forward for B <= max_batch sequences; keeps activations for backward.
 *   z     (B, J, D) input points, sequence order
 *   y     (B, J, D) targets; only rows j < (N-1)*P are used (the model predicts row j+P's
 *         target from tokens <= j); what y means (next point or velocity) is the caller's
 *   eps   (B, T, H) standard-normal latent noise for vae, NULL for gauss
 *   dk    dropout key, or NULL for no dropout (eval / tests)
 *   n_pts global number of predicted points over all ranks (divisor of recon and nll);
 *         the KL divisor is n_pts * S
 *   beta  vae KL weight */
cf_status cf_model_forward(struct cf_model *m, int64_t B, const float *z, const float *y,
                           const float *eps, const struct cf_dropkey *dk, double n_pts, float beta,
                           struct cf_loss *out);

/* Local. Backward of the last cf_model_forward; adds into m->grads. */
cf_status cf_model_backward(struct cf_model *m);

/* ---- inference with a KV cache ---- */
struct cf_kvcache {
  int64_t B;       /* sequences */
  int64_t max_len; /* tokens per sequence the cache can hold */
  int64_t max_new; /* tokens per sequence one extend call may add */
  int64_t len;     /* tokens cached so far (same for every sequence) */
  void *impl;
};

/* Local. Cache and workspace for B sequences of up to max_len tokens, adding at most
 * max_new tokens per call (max_new = P*S for KV-cached rollout, max_len for recompute). */
cf_status cf_kvcache_init(struct cf_kvcache *c, const struct cf_model *m, int64_t B,
                          int64_t max_len, int64_t max_new);
void cf_kvcache_release(struct cf_kvcache *c);
void cf_kvcache_reset(struct cf_kvcache *c); /* len = 0 */

/* Local. Append np new points per sequence (np*S tokens at positions len .. len+np*S-1)
 * and return the final hidden states (after lnf) of the new tokens. No dropout.
 *   z_new (B, np, D)   h_out (B, np*S, H) */
cf_status cf_model_extend(const struct cf_model *m, struct cf_kvcache *c, const float *z_new,
                          int64_t np, float *h_out);

/* Local. Draw the head's prediction for np points per sequence from hidden states.
 *   h   (B, np*S, H) final hidden states
 *   eps vae: (B, np*S, H) latent noise; gauss: (B, np, D) output noise
 *   tau temperature: scales the latent std (vae) or the output std (gauss)
 *   y   (B, np, D) out: decoded point (vae) or mean + tau*std*eps (gauss)
 * Uses the cache's workspace (no allocation). */
cf_status cf_head_sample(const struct cf_model *m, struct cf_kvcache *c, int64_t np, const float *h,
                         const float *eps, float tau, float *y);

#endif
