/* selffeed.h: training on the model's own predictions (scheduled sampling), against the
 * rollout's exposure bias: teacher forcing shows the model only true histories, the rollout
 * only its own.
 *
 * Before a micro-batch's training forward, `steps` forward-only passes (the sampling path:
 * KV cache, no dropout, head draws at temperature 1) replace the inputs: pass r feeds the
 * inputs of pass r - 1 and puts at every point t >= 1 the point the model draws from the
 * history before it (pass 0 feeds the true paths). After m passes the input at t is the
 * model's own rollout of min(t, m) steps from the true point t - m, so every point holds the
 * history the rollout would give it for m steps (parallel scheduled sampling).
 *
 * Each point t in 1 .. N-2 then takes its own-rollout input u with probability `prob` (uniform
 * of stream {seed, CF_RNG_SELFFEED, step, path} at element 2^40 + t), and its target is what
 * the paths' law gives next from there. On a bridge path x_t = (1 - t) x0 + t x1 + sigma B_t,
 * given x0 and x_t the rest of the history tells nothing more about x1, so the target draws an
 * endpoint x1 from p(x1 | x0, u) (self-normalized importance sampling over `cands` candidates
 * drawn from the target distribution for the path, as cf_flow_batch draws x1 independently of
 * x0: weights
 * exp(-|u - (1 - t) x0 - t c|^2 / (2 sigma^2 t (1 - t)))) and takes the bridge's next point from
 * (t, u) to x1: u + (x1 - u) / r + sigma sqrt((r - 1) / (r (N - 1))) xi, r = N - 1 - t steps
 * left (xi: the stream's normals at elements t*D + d). On a straight path x1 is the line's
 * through x0 and u. The target thus never uses the path's own x1, which the model's draws do
 * not follow (taking it would teach the model to read x1 from the older history, a dependence
 * the paths do not have; docs/results.md measured it worse). In high dimension the
 * weights concentrate on the nearest candidate (few candidates lie near u), so the endpoint's
 * law is then only roughly the posterior; -train_selffeed_cands trades cost for it.
 *
 * Random draws: the head noise of point t in pass r of path g is stream
 * {seed, CF_RNG_SELFFEED_HEAD, step, (g*N + t)*N + r} (cf_head_noise), candidate i of path g
 * stream {seed, CF_RNG_SELFFEED_X1, step, g*cands + i} (cf_dist_draw), the pick the uniform of
 * {seed, CF_RNG_SELFFEED, step, g} at element 2^40 + 2^30 + t; so as everything else the batch
 * does not depend on the rank layout. */
#ifndef CALMFLOW_SELFFEED_H
#define CALMFLOW_SELFFEED_H

#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/flow.h"
#include "calmflow/mem.h"
#include "calmflow/model.h"

struct cf_selffeed {
  int64_t steps; /* m, own-rollout passes (0: teacher forcing, nothing allocated) */
  double prob;   /* share of points t in 1 .. N-2 that take their own-rollout input */
  int64_t cands; /* candidate endpoints per path (bridge paths) */
  int64_t B;     /* sequences per call at most */
  struct cf_kvcache kv;
  struct cf_arena ar;
  float *in, *nxt; /* (B, J, D) a pass's inputs and the next pass's */
  float *h;        /* (B, T, H) final hidden states */
  float *eps;      /* (B, J, cf_head_noise_width) */
  float *yh;       /* (B, J, D) head draws */
  float *x1;       /* (D) a target's endpoint */
  float *cand;     /* (cands, D) a path's candidate endpoints */
  double *logw;    /* (cands) their weights */
  int32_t *ids;    /* (B, prompt_len) the prompt ids, padding sequences repeating sequence 0's */
};

/* Local. Check the options against the flow: 0 <= steps <= N - 2, 0 <= prob <= 1,
 * 1 <= cands <= 2^20, and steps > 0 only on bridge and straight paths (whose continuation from
 * any point is a bridge). CF_EINVAL naming -train_selffeed_steps, _prob or _cands. */
cf_status cf_selffeed_check(const struct cf_flow_cfg *f, int64_t steps, double prob, int64_t cands);

/* Local (the KV cache follows the model's layout). Buffers for calls of up to B sequences on
 * the whole-pipeline model m (first and last stage on this rank); steps 0 allocates nothing. */
cf_status cf_selffeed_init(struct cf_selffeed *s, const struct cf_model *m, int64_t B,
                           int64_t steps, double prob, int64_t cands);
void cf_selffeed_release(struct cf_selffeed *s); /* idempotent; *s all-zero after */

/* Collective on the model's tensor and context groups. Rewrite a teacher-forced batch of
 * b <= B sequences [seq0, seq0 + b) of step `step` as described above:
 *   z   (b, J, D) in: cf_flow_batch's inputs; out: the mixed inputs
 *   y   (b, J, D) in: its targets; out: the targets of the points that changed
 *   tgt (b) each sequence's target distribution (the candidates' source)
 *   ids (b, prompt_len) the sequences' prompt ids on a prompt model, else NULL
 * Nothing is allocated; steps 0 returns at once. */
cf_status cf_selffeed_apply(struct cf_selffeed *s, const struct cf_model *m,
                            const struct cf_flow_cfg *f, uint64_t seed, uint32_t step,
                            const struct cf_dist *tgt, uint64_t seq0, int64_t b, const int32_t *ids,
                            float *z, float *y);

#endif
