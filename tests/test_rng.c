/* test_rng.c: Philox known-answer vector, element independence from batching, moments. */
#include <math.h>
#include <stdio.h>

#include "calmflow/rng.h"
#include "cf_test.h"

int main(void) {
  /* Known-answer tests from the Random123 distribution (kat_vectors, philox4x32 10 rounds). */
  uint32_t c0[4] = {0, 0, 0, 0}, k0[2] = {0, 0}, o[4];
  cf_philox4x32(c0, k0, o);
  EXPECT(o[0] == 0x6627e8d5u && o[1] == 0xe169c58du && o[2] == 0xbc57ac4cu && o[3] == 0x9b00dbd8u,
         "philox zero vector: %08x %08x %08x %08x", o[0], o[1], o[2], o[3]);
  uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
           k1[2] = {0xffffffffu, 0xffffffffu};
  cf_philox4x32(c1, k1, o);
  EXPECT(o[0] == 0x408f276du && o[1] == 0x41c83b0eu && o[2] == 0xa20bc7c6u && o[3] == 0x6d5451fdu,
         "philox ones vector: %08x %08x %08x %08x", o[0], o[1], o[2], o[3]);
  uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
           k2[2] = {0xa4093822u, 0x299f31d0u};
  cf_philox4x32(c2, k2, o);
  EXPECT(o[0] == 0xd16cfe09u && o[1] == 0x94fdccebu && o[2] == 0x5001e420u && o[3] == 0x24126ea1u,
         "philox pi vector: %08x %08x %08x %08x", o[0], o[1], o[2], o[3]);

  /* An element's value does not depend on how the range was requested. */
  struct cf_rng r = {.seed = 42, .domain = CF_RNG_X0, .step = 3, .index = 17};
  float a[37], b[37];
  cf_rng_normal(&r, 0, a, 37);
  for (int i = 0; i < 37; i++)
    b[i] = cf_rng_normal1(&r, (uint64_t)i);
  cf_rng_normal(&r, 5, b + 5, 11);
  for (int i = 0; i < 37; i++)
    EXPECT(a[i] == b[i], "normal element %d differs", i);
  cf_rng_uniform(&r, 0, a, 37);
  cf_rng_uniform(&r, 3, b + 3, 20);
  for (int i = 3; i < 23; i++)
    EXPECT(a[i] == b[i], "uniform element %d differs", i);

  /* Different index / step / domain give different streams. */
  struct cf_rng r2 = r;
  r2.index = 18;
  EXPECT(cf_rng_normal1(&r, 0) != cf_rng_normal1(&r2, 0), "index does not change the stream");
  r2 = r;
  r2.step = 4;
  EXPECT(cf_rng_normal1(&r, 0) != cf_rng_normal1(&r2, 0), "step does not change the stream");

  /* Moments of 200k normals and uniforms. */
  double s = 0, s2 = 0, su = 0;
  for (uint64_t e = 0; e < 200000; e++) {
    double x = cf_rng_normal1(&r, e);
    s += x;
    s2 += x * x;
    su += cf_rng_uniform1(&r, e);
  }
  s /= 200000;
  s2 /= 200000;
  su /= 200000;
  EXPECT(fabs(s) < 0.01, "normal mean %g", s);
  EXPECT(fabs(s2 - 1) < 0.015, "normal variance %g", s2);
  EXPECT(fabs(su - 0.5) < 0.005, "uniform mean %g", su);
  return cf_test_done("test_rng");
}
