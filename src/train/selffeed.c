/* selffeed.c: training inputs from the model's own rollout (selffeed.h): forward-only passes
 * through the KV-cached sampling path, then a random share of the history replaced, each
 * replaced point's target the bridge step to an endpoint drawn given x0 and that point
 * (cf_flow_endpoint). */
#include <math.h>
#include <string.h>

#include "calmflow/rng.h"
#include "calmflow/selffeed.h"

cf_status cf_selffeed_check(const struct cf_flow_cfg *f, int64_t steps, double prob,
                            int64_t cands) {
  CF_CHECK(steps >= 0 && steps <= f->N - 2, CF_EINVAL,
           "option -train_selffeed_steps: expected 0..%lld (time points - 2), got %lld",
           (long long)(f->N - 2), (long long)steps);
  CF_CHECK(prob >= 0 && prob <= 1, CF_EINVAL,
           "option -train_selffeed_prob: expected a share in [0, 1], got %g", prob);
  CF_CHECK(cands >= 1 && cands <= (1 << 20), CF_EINVAL,
           "option -train_selffeed_cands: expected 1..1048576 candidate endpoints, got %lld",
           (long long)cands);
  CF_CHECK(steps == 0 || f->path == CF_PATH_BRIDGE || f->path == CF_PATH_STRAIGHT, CF_EINVAL,
           "option -train_selffeed_steps: needs -flow_path bridge or straight (the path continued "
           "from the model's point is a bridge), got %s",
           cf_path_name(f->path));
  return CF_OK;
}

static void layout(struct cf_selffeed *s, const struct cf_model_cfg *mc) {
  const int64_t J = mc->N * mc->P, B = s->B;
  s->in = cf_arena_floats(&s->ar, (size_t)(B * J * mc->D));
  s->nxt = cf_arena_floats(&s->ar, (size_t)(B * J * mc->D));
  s->h = cf_arena_floats(&s->ar, (size_t)(B * J * mc->S * mc->H));
  s->eps = cf_arena_floats(&s->ar, (size_t)(B * J * cf_head_noise_width(mc)));
  s->yh = cf_arena_floats(&s->ar, (size_t)(B * J * mc->D));
  s->x1 = cf_arena_floats(&s->ar, (size_t)mc->D);
  s->cand = cf_arena_floats(&s->ar, (size_t)(s->cands * mc->D));
  s->logw = (double *)cf_arena_floats(&s->ar, (size_t)(2 * s->cands));
  /* a prompt model's padding sequences repeat sequence 0's ids: (B, L) int32 in floats */
  s->ids = (int32_t *)cf_arena_floats(&s->ar, (size_t)(B * mc->prompt_len + 1));
}

cf_status cf_selffeed_init(struct cf_selffeed *s, const struct cf_model *m, int64_t B,
                           int64_t steps, double prob, int64_t cands) {
  memset(s, 0, sizeof *s);
  s->steps = steps;
  s->prob = prob;
  s->cands = cands;
  s->B = B;
  if (steps == 0) return CF_OK;
  const struct cf_model_cfg *mc = &m->cfg;
  CF_CHECK(cf_model_first(m) && cf_model_last(m), CF_EINVAL,
           "option -train_selffeed_steps: needs the whole pipeline on every rank (-par_pp 1)");
  const int64_t T = mc->N * mc->P * mc->S;
  CF_TRY(cf_kvcache_init(&s->kv, m, B, T, T));
  cf_arena_plan(&s->ar);
  layout(s, mc);
  cf_status st = cf_arena_commit(&s->ar, 0, "self-feeding buffers");
  if (st != CF_OK) {
    cf_kvcache_release(&s->kv);
    return st;
  }
  layout(s, mc);
  return CF_OK;
}

void cf_selffeed_release(struct cf_selffeed *s) {
  if (s == NULL) return;
  cf_kvcache_release(&s->kv);
  cf_arena_release(&s->ar);
  memset(s, 0, sizeof *s);
}

/* Collective as cf_selffeed_apply. One pass: s->nxt = s->in with every point t >= 1 replaced
 * by the model's draw from the history of s->in before it (pass r of the B cached sequences,
 * the first b of them real). */
static cf_status one_pass(struct cf_selffeed *s, const struct cf_model *m,
                          const struct cf_flow_cfg *f, uint64_t seed, uint32_t step, uint64_t seq0,
                          int64_t b, int64_t r) {
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t N = mc->N, P = mc->P, D = mc->D, J = N * P, B = s->B;
  const int64_t W = cf_head_noise_width(mc);
  cf_kvcache_reset(&s->kv);
  if (mc->prompt_len > 0) CF_TRY(cf_model_prefill(m, &s->kv, s->ids, NULL, NULL));
  CF_TRY(cf_model_extend(m, &s->kv, s->in, J, s->h));
  for (int64_t k = 0; k < B; k++)
    for (int64_t j = 0; j + P < J; j++) {
      uint64_t g = (seq0 + (uint64_t)(k < b ? k : 0)) * (uint64_t)P + (uint64_t)(j % P);
      struct cf_rng q = {seed, CF_RNG_SELFFEED_HEAD, step,
                         (g * (uint64_t)N + (uint64_t)(j / P)) * (uint64_t)N + (uint64_t)r};
      cf_head_noise(mc, &q, s->eps + (k * J + j) * W);
    }
  CF_TRY(cf_head_sample(m, &s->kv, J, s->h, s->eps, 1.0f, s->yh));
  for (int64_t k = 0; k < B; k++) {
    const float *in = s->in + k * J * D;
    float *nx = s->nxt + k * J * D;
    memcpy(nx, in, (size_t)(P * D) * sizeof(float)); /* the source points stay */
    for (int64_t j = 0; j + P < J; j++)
      cf_flow_advance(f, in + j * D, s->yh + (k * J + j) * D, nx + (j + P) * D);
  }
  return CF_OK;
}

cf_status cf_selffeed_apply(struct cf_selffeed *s, const struct cf_model *m,
                            const struct cf_flow_cfg *f, uint64_t seed, uint32_t step,
                            const struct cf_dist *tgt, uint64_t seq0, int64_t b, const int32_t *ids,
                            float *z, float *y) {
  if (s->steps == 0) return CF_OK;
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t N = mc->N, P = mc->P, D = mc->D, J = N * P, B = s->B, L = mc->prompt_len;
  CF_CHECK(b >= 1 && b <= B, CF_EINVAL, "self-feeding: %lld sequences, the buffers hold %lld",
           (long long)b, (long long)B);
  for (int64_t k = 0; k < B; k++) /* sequences past b repeat sequence 0 */
    memcpy(s->in + k * J * D, z + (k < b ? k : 0) * J * D, (size_t)(J * D) * sizeof(float));
  if (L > 0)
    for (int64_t k = 0; k < B; k++)
      memcpy(s->ids + k * L, ids + (k < b ? k : 0) * L, (size_t)L * sizeof(int32_t));
  for (int64_t r = 0; r < s->steps; r++) {
    CF_TRY(one_pass(s, m, f, seed, step, seq0, b, r));
    float *t = s->in;
    s->in = s->nxt;
    s->nxt = t;
  }
  const double n1 = (double)(N - 1);
  for (int64_t k = 0; k < b; k++)
    for (int64_t p = 0; p < P; p++) {
      const uint64_t g = (seq0 + (uint64_t)k) * (uint64_t)P + (uint64_t)p;
      const struct cf_rng q = {seed, CF_RNG_SELFFEED, step, g};
      float *zk = z + k * J * D, *yk = y + k * J * D;
      int drawn = 0; /* the path's candidates, drawn when its first point changes */
      for (int64_t t = 1; t + 1 < N; t++) {
        if (cf_rng_uniform1(&q, ((uint64_t)1 << 40) + (uint64_t)t) >= s->prob) continue;
        if (!drawn && f->path == CF_PATH_BRIDGE && f->sigma > 0) {
          for (int64_t i = 0; i < s->cands; i++) {
            struct cf_rng r1 = {seed, CF_RNG_SELFFEED_X1, step,
                                g * (uint64_t)s->cands + (uint64_t)i};
            cf_dist_draw(&tgt[k], &r1, s->cand + i * D);
          }
          drawn = 1;
        }
        const int64_t j = t * P + p;
        float *u = zk + j * D;
        memcpy(u, s->in + (k * J + j) * D, (size_t)D * sizeof(float));
        cf_flow_endpoint(
            f, (double)t / n1, zk + p * D, u, s->cand, s->cands,
            cf_rng_uniform1(&q, ((uint64_t)1 << 40) + ((uint64_t)1 << 30) + (uint64_t)t), s->logw,
            s->x1);
        const double left = n1 - (double)t, sd = f->path == CF_PATH_BRIDGE
                                                     ? f->sigma * sqrt((left - 1.0) / (left * n1))
                                                     : 0.0;
        float *yt = yk + j * D;
        for (int64_t d = 0; d < D; d++) {
          double nxt = u[d] + (s->x1[d] - u[d]) / left;
          if (sd > 0) nxt += sd * cf_rng_normal1(&q, (uint64_t)(t * D + d));
          yt[d] = f->predict == CF_PREDICT_NEXT ? (float)nxt : (float)((nxt - u[d]) * n1);
        }
      }
    }
  return CF_OK;
}
