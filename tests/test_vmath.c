/* test_vmath.c: the vectorized exp, erf and normal CDF behind GELU and softmax (layers.c):
 * accuracy against erff / double references on dense grids and at the special values
 * (+-0, subnormals, huge, +-inf, NaN), GELU forward and backward and the softmax row against
 * double references, and bit-identical results from every run-time copy (portable, AVX2, AVX-512)
 * and wherever an element sits in its buffer. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_test.h"
#include "model/layers.h"

static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static double phi_ref(double x) {
  return 0.5 * erfc(-x / sqrt(2.0));
}

/* Grid: every 29th float with magnitude in [2^-40, 16], both signs, plus a uniform grid on
 * [-8, 8] with step 2^-14 and the specials. */
static size_t make_grid(float *g) {
  size_t n = 0;
  for (uint32_t u = 0x2b800000u; u <= 0x41800000u; u += 29) {
    g[n++] = from_bits(u);
    g[n++] = -from_bits(u);
  }
  for (int i = -8 * 16384; i <= 8 * 16384; i++)
    g[n++] = (float)i / 16384.0f;
  const float sp[] = {0.0f,     -0.0f,     FLT_MIN, -FLT_MIN, 1e-45f, -1e-45f, 20.0f,
                      -20.0f,   1e10f,     -1e10f,  1e30f,    -1e30f, FLT_MAX, -FLT_MAX,
                      INFINITY, -INFINITY, 3.9192f, -3.9192f, 88.72f, -103.9f};
  for (size_t k = 0; k < sizeof sp / sizeof sp[0]; k++)
    g[n++] = sp[k];
  return n;
}

#define GRID_MAX (2 * ((0x41800000u - 0x2b800000u) / 29 + 1) + 16 * 16384 + 64)

int main(void) {
  float *g = malloc(GRID_MAX * sizeof(float)), *y = malloc(GRID_MAX * sizeof(float));
  float *y1 = malloc(GRID_MAX * sizeof(float));
  if (g == NULL || y == NULL || y1 == NULL) return 2;
  size_t n = make_grid(g);
  int best = cf_vmath_path(-2);
  printf("vector math copies: portable%s%s\n", best >= 1 ? ", AVX2" : "",
         best >= 2 ? ", AVX-512" : "");
  for (int path = 0; path <= best; path++) {
    EXPECT(cf_vmath_path(path) == path, "cannot force copy %d", path);
    /* erf against erff: absolute error */
    cf_vmath_map(g, y, n, 1);
    double emax = 0;
    float at = 0;
    for (size_t i = 0; i < n; i++) {
      if (isnan(g[i])) continue;
      double e = fabs((double)y[i] - (double)erff(g[i]));
      if (!(e <= emax)) emax = e, at = g[i];
    }
    printf("copy %d: erf max |error| vs erff %.3g at %.9g\n", path, emax, at);
    EXPECT(emax <= 2e-7, "copy %d: erf error %g at %.9g", path, emax, at);
    /* Phi against double: absolute error, and relative in the lower tail */
    cf_vmath_map(g, y, n, 2);
    double pabs = 0, prel = 0;
    for (size_t i = 0; i < n; i++) {
      double r = phi_ref(g[i]), e = fabs((double)y[i] - r);
      if (!(e <= pabs)) pabs = e, at = g[i];
      if (r > 1e-30 && g[i] < 0 && e / r > prel) prel = e / r;
    }
    /* the formula this replaced, 0.5 (1 + erff(x / sqrt 2)) in float, for comparison */
    double oabs = 0, orel = 0;
    for (size_t i = 0; i < n; i++) {
      double r = phi_ref(g[i]), o = 0.5f * (1.0f + erff(g[i] * 0.70710678118654752440f));
      double e = fabs(o - r);
      oabs = e > oabs ? e : oabs;
      if (r > 1e-30 && g[i] < 0 && e / r > orel) orel = e / r;
    }
    printf("copy %d: Phi max |error| %.3g (at %.9g), max relative error below 0 %.3g "
           "(erff formula: %.3g, %.3g)\n",
           path, pabs, at, prel, oabs, orel);
    /* near 1 a float ulp is 6e-8; in the lower tail rounding x / sqrt 2 and its square to float
     * dominates (about 1.2e-7 a^2 relative) */
    EXPECT(pabs <= 1.5e-7, "copy %d: Phi error %g at %.9g", path, pabs, at);
    EXPECT(prel <= 3e-5, "copy %d: Phi relative error %g in the lower tail", path, prel);
    /* exp against double: relative error where the result is a normal float */
    cf_vmath_map(g, y, n, 0);
    double xrel = 0;
    for (size_t i = 0; i < n; i++) {
      double r = exp((double)g[i]);
      if (r < FLT_MIN || r > FLT_MAX) continue;
      double e = fabs((double)y[i] - r) / r;
      if (e > xrel) xrel = e, at = g[i];
    }
    printf("copy %d: exp max relative error %.3g at %.9g\n", path, xrel, at);
    EXPECT(xrel <= 3e-7, "copy %d: exp relative error %g at %.9g", path, xrel, at);
    /* specials */
    const float sx[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 1e30f, -1e30f, 89.0f, -104.0f};
    float se[9], sr[9], sp[9];
    cf_vmath_map(sx, se, 9, 0);
    cf_vmath_map(sx, sr, 9, 1);
    cf_vmath_map(sx, sp, 9, 2);
    EXPECT(se[0] == INFINITY && se[1] == 0.0f && isnan(se[2]) && se[3] == 1.0f && se[4] == 1.0f &&
               se[5] == INFINITY && se[6] == 0.0f && se[7] == INFINITY && se[8] == 0.0f,
           "copy %d: exp specials %g %g %g %g %g %g %g %g %g", path, se[0], se[1], se[2], se[3],
           se[4], se[5], se[6], se[7], se[8]);
    EXPECT(sr[0] == 1.0f && sr[1] == -1.0f && isnan(sr[2]) && sr[3] == 0.0f && sr[4] == 0.0f &&
               sr[5] == 1.0f && sr[6] == -1.0f,
           "copy %d: erf specials %g %g %g %g %g %g %g", path, sr[0], sr[1], sr[2], sr[3], sr[4],
           sr[5], sr[6]);
    EXPECT(sp[0] == 1.0f && sp[1] == 0.0f && isnan(sp[2]) && sp[3] == 0.5f && sp[4] == 0.5f &&
               sp[5] == 1.0f && sp[6] == 0.0f,
           "copy %d: Phi specials %g %g %g %g %g %g %g", path, sp[0], sp[1], sp[2], sp[3], sp[4],
           sp[5], sp[6]);
  }

  /* GELU forward / backward against double on [-8, 8], every copy the same bits. */
  const size_t m = 16 * 16384 + 1;
  const float *gx = g + (n - 20 - m);
  float *yc = malloc(4 * m * sizeof(float)), *ref = malloc(4 * m * sizeof(float));
  float *dy = malloc(m * sizeof(float));
  if (yc == NULL || ref == NULL || dy == NULL) return 2;
  for (size_t i = 0; i < m; i++)
    dy[i] = 1.0f - 0.37f * (float)(i % 7);
  for (int path = 0; path <= best; path++) {
    cf_vmath_path(path);
    float *yo = yc, *cd = yc + m, *dx = yc + 2 * m, *dx2 = yc + 3 * m;
    cf_gelu_fwd(gx, yo, cd, m);
    cf_gelu_bwd(gx, cd, dy, dx, m);
    cf_gelu_bwd(gx, NULL, dy, dx2, m);
    double ef = 0, eb = 0;
    for (size_t i = 0; i < m; i++) {
      double x = gx[i], p = phi_ref(x), d = exp(-0.5 * x * x) / 2.5066282746310002;
      double e1 = fabs(yo[i] - x * p) / fmax(1.0, fabs(x));
      double e2 = fabs(dx[i] - dy[i] * (p + x * d));
      ef = e1 > ef ? e1 : ef;
      eb = e2 > eb ? e2 : eb;
      if (dx[i] != dx2[i]) {
        EXPECT(0, "copy %d: gelu_bwd with and without cdf differ at x %g", path, x);
        break;
      }
    }
    printf("copy %d: GELU forward max error %.3g, backward %.3g\n", path, ef, eb);
    EXPECT(ef <= 2e-7, "copy %d: GELU forward error %g", path, ef);
    EXPECT(eb <= 5e-7, "copy %d: GELU backward error %g", path, eb);
    if (path == 0)
      memcpy(ref, yc, 4 * m * sizeof(float));
    else
      EXPECT(memcmp(ref, yc, 4 * m * sizeof(float)) == 0, "copy %d: GELU bits differ from portable",
             path);
    /* an element's bits do not depend on where it sits or on n */
    for (size_t off = 1; off < 9; off++) {
      float a[40], c[40];
      cf_gelu_fwd(gx + 1000 + off, a, c, 23);
      for (size_t i = 0; i < 23; i++) {
        float one, onec;
        cf_gelu_fwd(gx + 1000 + off + i, &one, &onec, 1);
        EXPECT(one == a[i] && onec == c[i], "copy %d: gelu of element %zu at offset %zu differs",
               path, i, off);
      }
    }
  }

  /* softmax rows against double, and the same bits from every copy */
  const int64_t T = 203;
  float row[203], row0[203], srow[203];
  for (int64_t first = 0; first < 20; first += 7) {
    for (int64_t last = first; last < T; last += 13) {
      for (int64_t j = 0; j < T; j++)
        srow[j] = (float)(sin(0.7 * (double)j) * 9.0 - 0.01 * (double)j);
      if (last > first + 3) srow[first + 3] = -INFINITY; /* a masked score */
      for (int path = 0; path <= best; path++) {
        cf_vmath_path(path);
        memcpy(row, srow, sizeof row);
        cf_span_softmax_row(row, first, last, T);
        double mx = -INFINITY, s = 0;
        for (int64_t j = first; j <= last; j++)
          mx = srow[j] > mx ? srow[j] : mx;
        for (int64_t j = first; j <= last; j++)
          s += exp((double)(srow[j] - (float)mx));
        double e = 0;
        for (int64_t j = 0; j < T; j++) {
          double r = j < first || j > last ? 0.0 : exp((double)(srow[j] - (float)mx)) / s;
          double d = fabs(row[j] - r) / fmax(r, 1e-30);
          if (r == 0.0) d = row[j] == 0.0f ? 0.0 : 1.0;
          e = d > e ? d : e;
        }
        EXPECT(e <= 1e-6, "copy %d: softmax [%lld, %lld] relative error %g", path, (long long)first,
               (long long)last, e);
        if (path == 0)
          memcpy(row0, row, sizeof row);
        else
          EXPECT(memcmp(row0, row, sizeof row) == 0, "copy %d: softmax bits differ", path);
        /* a row that ends at its last column (padded tail) gives the same bits as one with
         * room for whole vectors */
        float tight[203];
        memcpy(tight, srow, sizeof tight);
        cf_span_softmax_row(tight, first, last, last + 1);
        EXPECT(memcmp(tight + first, row + first, (size_t)(last - first + 1) * sizeof(float)) == 0,
               "copy %d: softmax [%lld, %lld] bits depend on the row length", path,
               (long long)first, (long long)last);
      }
    }
  }
  cf_vmath_path(-1);
  free(g), free(y), free(y1), free(yc), free(ref), free(dy);
  return cf_test_done("test_vmath");
}
