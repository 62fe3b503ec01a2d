/* dist.c: source and target distributions — the synthetic sets of the paper's experiments
 * (calmflow-method.md 7.1) and empirical sets from data files, all drawn from counter RNG
 * streams so a point depends only on its key. */
#include <math.h>
#include <string.h>

#include "calmflow/flow.h"

static const struct {
  const char *name;
  enum cf_dist_kind kind;
  int64_t fixed_dim; /* 0: any dimension */
  int64_t min_dim;
} g_names[] = {
    {"normal", CF_DIST_NORMAL, 0, 1},
    {"gaussian", CF_DIST_GAUSSIAN, 0, 1},
    {"8gaussians", CF_DIST_8GAUSSIANS, 2, 2},
    {"moons", CF_DIST_MOONS, 2, 2},
    {"checkerboard", CF_DIST_CHECKERBOARD, 2, 2},
    {"4blobs", CF_DIST_4BLOBS, 0, 1},
    {"2gaussians", CF_DIST_2GAUSSIANS, 0, 1},
    {"2to4gaussians", CF_DIST_2TO4, 0, 2},
    {"checkerboardnd", CF_DIST_CHECKER_ND, 0, 2},
};

const char *cf_dist_names(void) {
  return "normal, gaussian, 8gaussians, moons, checkerboard, checkerboardnd, 4blobs, 2gaussians, "
         "2to4gaussians";
}

cf_status cf_dist_by_name(struct cf_dist *d, const char *name, int64_t dim, const char *option) {
  memset(d, 0, sizeof *d);
  for (size_t i = 0; i < sizeof g_names / sizeof g_names[0]; i++) {
    if (strcmp(name, g_names[i].name) != 0) continue;
    CF_CHECK(g_names[i].fixed_dim == 0 || dim == g_names[i].fixed_dim, CF_EINVAL,
             "option %s: '%s' is %lld-dimensional, but -data_dim is %lld", option, name,
             (long long)g_names[i].fixed_dim, (long long)dim);
    CF_CHECK(dim >= g_names[i].min_dim, CF_EINVAL,
             "option %s: '%s' needs -data_dim >= %lld, got %lld", option, name,
             (long long)g_names[i].min_dim, (long long)dim);
    d->kind = g_names[i].kind;
    d->dim = dim;
    return CF_OK;
  }
  return cf_err(CF_EINVAL,
                "option %s: unknown distribution '%s' (expected one of: %s, or a .h5 file)", option,
                name, cf_dist_names());
}

void cf_dist_points(struct cf_dist *d, const float *x, int64_t n, int64_t dim) {
  memset(d, 0, sizeof *d);
  d->kind = CF_DIST_POINTS;
  d->x = x;
  d->n = n;
  d->dim = dim;
}

static const double PI = 3.14159265358979323846;

int64_t cf_dist_row(const struct cf_dist *d, const struct cf_rng *r) {
  if (d->kind != CF_DIST_POINTS) return -1;
  int64_t i = (int64_t)(cf_rng_uniform1(r, 0) * (double)d->n);
  return i >= d->n ? d->n - 1 : i;
}

void cf_dist_draw(const struct cf_dist *d, const struct cf_rng *r, float *out) {
  int64_t D = d->dim;
  switch (d->kind) {
  case CF_DIST_NORMAL:
  case CF_DIST_GAUSSIAN:
    cf_rng_normal(r, 0, out, (size_t)D);
    return;
  case CF_DIST_8GAUSSIANS: {
    int c = (int)(cf_rng_uniform1(r, 0) * 8.0);
    double a = 2.0 * PI * c / 8.0, s = sqrt(0.1);
    out[0] = (float)(5.0 * cos(a) + s * cf_rng_normal1(r, 4));
    out[1] = (float)(5.0 * sin(a) + s * cf_rng_normal1(r, 5));
    return;
  }
  case CF_DIST_MOONS: {
    int upper = cf_rng_uniform1(r, 0) < 0.5;
    double a = PI * cf_rng_uniform1(r, 1), px, py;
    if (upper) {
      px = cos(a);
      py = sin(a);
    } else {
      px = 1.0 - cos(a);
      py = 1.0 - sin(a) - 0.5;
    }
    px += 0.2 * cf_rng_normal1(r, 4);
    py += 0.2 * cf_rng_normal1(r, 5);
    out[0] = (float)(3.0 * px - 1.0);
    out[1] = (float)(3.0 * py - 1.0);
    return;
  }
  case CF_DIST_CHECKERBOARD: {
    /* 8 dark cells of side 2 on [-4, 4]^2: column from x1, row offset keeps the parity */
    double x1 = cf_rng_uniform1(r, 0) * 4.0 - 2.0;
    double x2 = cf_rng_uniform1(r, 1) - 2.0 * floor(cf_rng_uniform1(r, 2) * 2.0);
    x2 += fmod(floor(x1) + 4.0, 2.0);
    out[0] = (float)(2.0 * x1);
    out[1] = (float)(2.0 * x2);
    return;
  }
  case CF_DIST_CHECKER_ND: {
    /* uniform on [-4, 4]^D; an odd cell-index sum moves coordinate 0 to the neighbouring cell
     * of its pair (0 <-> 1, 2 <-> 3), which keeps it uniform and makes the sum even */
    int odd = 0;
    for (int64_t k = 0; k < D; k++) {
      double u = cf_rng_uniform1(r, (uint64_t)k) * 8.0 - 4.0;
      int c = (int)floor((u + 4.0) / 2.0);
      c = c < 0 ? 0 : (c > 3 ? 3 : c);
      odd ^= c & 1;
      out[k] = (float)u;
    }
    if (odd) {
      int c0 = (int)floor(((double)out[0] + 4.0) / 2.0);
      c0 = c0 < 0 ? 0 : (c0 > 3 ? 3 : c0);
      out[0] = (float)((double)out[0] + ((c0 & 1) ? -2.0 : 2.0));
    }
    return;
  }
  case CF_DIST_4BLOBS: {
    int c = (int)(cf_rng_uniform1(r, 0) * 4.0);
    cf_rng_normal(r, 4, out, (size_t)D);
    out[0] += (float)(-15.0 + 10.0 * c);
    return;
  }
  case CF_DIST_2GAUSSIANS: {
    int c = (int)(cf_rng_uniform1(r, 0) * 2.0);
    cf_rng_normal(r, 4, out, (size_t)D);
    out[0] += c ? 5.0f : -5.0f;
    return;
  }
  case CF_DIST_2TO4: {
    int c = (int)(cf_rng_uniform1(r, 0) * 4.0);
    cf_rng_normal(r, 4, out, (size_t)D);
    out[0] += (c & 1) ? 5.0f : -5.0f;
    out[1] += (c & 2) ? 5.0f : -5.0f;
    return;
  }
  case CF_DIST_POINTS: {
    int64_t i = cf_dist_row(d, r);
    memcpy(out, d->x + i * D, (size_t)D * sizeof(float));
    return;
  }
  }
}
