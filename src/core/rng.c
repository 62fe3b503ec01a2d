/* rng.c: Philox4x32-10 (Salmon et al., SC'11) and the keyed draws of rng.h. */
#include "calmflow/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void cf_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

static void block(const struct cf_rng *r, uint64_t blk, uint32_t out[4]) {
  uint32_t ctr[4] = {(uint32_t)blk, (uint32_t)r->index, r->step,
                     (r->domain << 16) ^ (uint32_t)((r->index >> 32) & 0xFFFFu) ^
                         ((uint32_t)(blk >> 32) << 24)};
  uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
  cf_philox4x32(ctr, key, out);
}

static float u24(uint32_t x) {
  return (float)(x >> 8) * (1.0f / 16777216.0f);
}

void cf_rng_uniform(const struct cf_rng *r, uint64_t elem0, float *out, size_t n) {
  uint32_t b[4];
  uint64_t cur = UINT64_MAX;
  for (size_t i = 0; i < n; i++) {
    uint64_t e = elem0 + i;
    if (e / 4 != cur) {
      cur = e / 4;
      block(r, cur, b);
    }
    out[i] = u24(b[e % 4]);
  }
}

double cf_rng_uniform1(const struct cf_rng *r, uint64_t e) {
  uint32_t b[4];
  block(r, e / 2, b);
  unsigned lane = (unsigned)(e % 2) * 2;
  uint64_t bits = ((uint64_t)b[lane] << 21) ^ (uint64_t)(b[lane + 1] >> 11);
  return (double)(bits & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* Box-Muller on lanes (0,1) and (2,3): element 4k+{0,1} from the first pair, +{2,3} the second.
 * The polar radius and angle of the pair starting at lane `pair`. */
static void polar_of(const uint32_t b[4], unsigned pair, double *rad, double *ang) {
  double u1 = ((double)(b[pair] >> 8) + 1.0) * (1.0 / 16777216.0); /* (0, 1] */
  double u2 = (double)(b[pair + 1] >> 8) * (1.0 / 16777216.0);
  *rad = sqrt(-2.0 * log(u1));
  *ang = 6.283185307179586 * u2;
}

static float normal_of(const uint32_t b[4], unsigned lane) {
  double rad, ang;
  polar_of(b, lane / 2 * 2, &rad, &ang);
  return (float)(lane % 2 == 0 ? rad * cos(ang) : rad * sin(ang));
}

/* The four normals of a block, as normal_of gives them, each pair's radius computed once. */
static void normals_of(const uint32_t b[4], float out[4]) {
  for (unsigned pair = 0; pair < 4; pair += 2) {
    double rad, ang;
    polar_of(b, pair, &rad, &ang);
    out[pair] = (float)(rad * cos(ang));
    out[pair + 1] = (float)(rad * sin(ang));
  }
}

void cf_rng_normal(const struct cf_rng *r, uint64_t elem0, float *out, size_t n) {
  uint32_t b[4];
  float v[4];
  uint64_t cur = UINT64_MAX;
  for (size_t i = 0; i < n; i++) {
    uint64_t e = elem0 + i;
    if (e / 4 != cur) {
      cur = e / 4;
      block(r, cur, b);
      normals_of(b, v);
    }
    out[i] = v[e % 4];
  }
}

float cf_rng_normal1(const struct cf_rng *r, uint64_t e) {
  uint32_t b[4];
  block(r, e / 4, b);
  return normal_of(b, (unsigned)(e % 4));
}
