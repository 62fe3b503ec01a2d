/* rng.h: counter-based random numbers (Philox4x32-10).
 *
 * Every random draw in calmflow is a pure function of
 *   (seed, domain, step, index, element)
 * so results do not depend on batching, rank count or call order:
 *   seed    the run's -seed
 *   domain  what the draw is for (CF_RNG_* below; dropout sites add their site id)
 *   step    the training step (0 for data generation and sampling)
 *   index   the global sample / path / sequence index
 *   element the position of the value inside that sample (0, 1, 2, ...)
 */
#ifndef CALMFLOW_RNG_H
#define CALMFLOW_RNG_H

#include <stddef.h>
#include <stdint.h>

enum cf_rng_domain {
  CF_RNG_X0 = 1,             /* source points x0 */
  CF_RNG_X1 = 2,             /* target points x1 (synthetic) or data index */
  CF_RNG_PATH = 3,           /* path noise (bridge, noisy, ve) */
  CF_RNG_LATENT = 4,         /* vae latent noise during training */
  CF_RNG_SAMPLE = 5,         /* head noise during rollout */
  CF_RNG_INIT = 6,           /* weight initialization (index = tensor id) */
  CF_RNG_DATA = 7,           /* `calmflow data` generators */
  CF_RNG_EVAL = 8,           /* evaluation subsampling */
  CF_RNG_HEAD = 9,           /* fm / cvae head noise during training (cf_head_train_noise) */
  CF_RNG_CONTEXT = 10,       /* -flow_context_noise on the teacher-forced inputs */
  CF_RNG_SELFFEED = 11,      /* -train_selffeed: which points, the bridge continuation */
  CF_RNG_SELFFEED_HEAD = 12, /* -train_selffeed: head noise of the own-rollout passes */
  CF_RNG_SELFFEED_X1 = 13,   /* -train_selffeed: candidate endpoints of the targets */
  CF_RNG_DROPOUT = 64        /* + site id (< 4096) */
};

struct cf_rng {
  uint64_t seed;
  uint32_t domain;
  uint32_t step;
  uint64_t index;
};

/* Local. The raw Philox4x32-10 block for counter (c0..c3) and key (k0, k1). */
void cf_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Local. n uniforms in [0, 1) for elements [elem0, elem0 + n) of stream r. */
void cf_rng_uniform(const struct cf_rng *r, uint64_t elem0, float *out, size_t n);
/* Local. n standard normals (Box-Muller) for elements [elem0, elem0 + n) of stream r.
 * Element e's value depends only on (r, e), not on elem0 or n. */
void cf_rng_normal(const struct cf_rng *r, uint64_t elem0, float *out, size_t n);
/* Local. One uniform double in [0, 1) (53 bits) for element e. */
double cf_rng_uniform1(const struct cf_rng *r, uint64_t e);
/* Local. One standard normal for element e (same value cf_rng_normal gives). */
float cf_rng_normal1(const struct cf_rng *r, uint64_t e);

#endif
