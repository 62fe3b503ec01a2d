/* metrics.c: MMD (RBF, one and five bandwidths), energy distance, and the
 * cf_metrics_compute driver that also runs the exact W1/W2 of assign.c.
 *
 * Kernel sums use expm1: K - 1 = expm1(-gamma d^2), and because
 * mean(1) + mean(1) - 2 mean(1) = 0 the constant parts cancel exactly, so
 *   MMD^2 = S_aa / na^2 + S_bb / nb^2 - 2 S_ab / (na nb),  S = sum of expm1 terms.
 * This keeps the wide bandwidths (sigma = 100, gamma = 5e-5) free of the
 * cancellation that 1 - 1e-9 style kernel values would cause. Diagonal terms are
 * zero in both the kernel (expm1(0)) and the distance sums, so the self sums are
 * 2 * sum over i < j. Each row's terms are summed first, then added to the total.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/metrics.h"

const double cf_mmd_sigmas[CF_MMD_NSIGMA] = {0.01, 0.1, 1.0, 10.0, 100.0};

#define CF_MAX_GAMMAS 8

/* Sums over pairs (i, j) of x (nx, d) and y (ny, d) of expm1(-gam[g] d2) into sk[g]
 * and, if sd != NULL, of sqrt(d2) into *sd. same != 0: x == y, pairs i != j. */
static void pair_sums(const float *x, int64_t nx, const float *y, int64_t ny, int64_t d, int same,
                      const double *gam, int ng, double *sk, double *sd) {
  double tk[CF_MAX_GAMMAS] = {0}, td = 0;
  for (int64_t i = 0; i < nx; i++) {
    const float *xi = x + i * d;
    double rk[CF_MAX_GAMMAS] = {0}, rd = 0;
    for (int64_t j = same ? i + 1 : 0; j < ny; j++) {
      const float *yj = y + j * d;
      double d2 = 0;
      for (int64_t k = 0; k < d; k++) {
        double t = (double)xi[k] - (double)yj[k];
        d2 += t * t;
      }
      for (int g = 0; g < ng; g++) {
        double z = gam[g] * d2; /* expm1(-z) rounds to exactly -1 once z > 38 */
        rk[g] += z > 40.0 ? -1.0 : expm1(-z);
      }
      if (sd) rd += sqrt(d2);
    }
    for (int g = 0; g < ng; g++)
      tk[g] += rk[g];
    td += rd;
  }
  double f = same ? 2.0 : 1.0;
  for (int g = 0; g < ng; g++)
    sk[g] = f * tk[g];
  if (sd) *sd = f * td;
}

/* The three pair sums and the combined statistics for ng gammas and (optionally) energy. */
static void two_sample(const float *a, int64_t na, const float *b, int64_t nb, int64_t d,
                       const double *gam, int ng, double *mmd2, double *energy) {
  double saa[CF_MAX_GAMMAS], sbb[CF_MAX_GAMMAS], sab[CF_MAX_GAMMAS], daa = 0, dbb = 0, dab = 0;
  double *pd_aa = energy ? &daa : NULL, *pd_bb = energy ? &dbb : NULL,
         *pd_ab = energy ? &dab : NULL;
  pair_sums(a, na, a, na, d, 1, gam, ng, saa, pd_aa);
  pair_sums(b, nb, b, nb, d, 1, gam, ng, sbb, pd_bb);
  pair_sums(a, na, b, nb, d, 0, gam, ng, sab, pd_ab);
  double fa = (double)na, fb = (double)nb;
  for (int g = 0; g < ng; g++)
    mmd2[g] = saa[g] / (fa * fa) + sbb[g] / (fb * fb) - 2.0 * sab[g] / (fa * fb);
  if (energy) *energy = 2.0 * dab / (fa * fb) - daa / (fa * fa) - dbb / (fb * fb);
}

static void multi_gammas(double *gam) {
  for (int s = 0; s < CF_MMD_NSIGMA; s++)
    gam[s] = 1.0 / (2.0 * cf_mmd_sigmas[s] * cf_mmd_sigmas[s]);
}

double cf_mmd2_rbf(const float *a, int64_t na, const float *b, int64_t nb, int64_t d,
                   double gamma) {
  if (na < 1 || nb < 1 || d < 1) return NAN;
  double m;
  two_sample(a, na, b, nb, d, &gamma, 1, &m, NULL);
  return m;
}

double cf_mmd2_rbf_multi(const float *a, int64_t na, const float *b, int64_t nb, int64_t d) {
  if (na < 1 || nb < 1 || d < 1) return NAN;
  double gam[CF_MMD_NSIGMA], m[CF_MMD_NSIGMA], s = 0;
  multi_gammas(gam);
  two_sample(a, na, b, nb, d, gam, CF_MMD_NSIGMA, m, NULL);
  for (int g = 0; g < CF_MMD_NSIGMA; g++)
    s += m[g];
  return s / CF_MMD_NSIGMA;
}

double cf_energy_distance(const float *a, int64_t na, const float *b, int64_t nb, int64_t d) {
  if (na < 1 || nb < 1 || d < 1) return NAN;
  double e;
  two_sample(a, na, b, nb, d, NULL, 0, NULL, &e);
  return e;
}

static cf_status check_set(const float *x, int64_t n, int64_t d, const char *name) {
  CF_CHECK(x != NULL, CF_EINVAL, "eval set %s is NULL", name);
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < d; k++) {
      float v = x[i * d + k];
      CF_CHECK(isfinite(v), CF_ECORRUPT, "eval set %s has %s at row %lld (column %lld)", name,
               isnan(v) ? "NaN" : "Inf", (long long)i, (long long)k);
    }
  return CF_OK;
}

cf_status cf_metrics_compute(const float *a, int64_t na, const float *b, int64_t nb, int64_t d,
                             int64_t max_exact, struct cf_metrics *out) {
  CF_CHECK(out != NULL, CF_EINVAL, "metrics: NULL output");
  CF_CHECK(na >= 1, CF_EINVAL, "eval set a has %lld points; expected at least 1", (long long)na);
  CF_CHECK(nb >= 1, CF_EINVAL, "eval set b has %lld points; expected at least 1", (long long)nb);
  CF_CHECK(d >= 1, CF_EINVAL, "eval sets have dimension %lld; expected d >= 1", (long long)d);
  CF_CHECK(max_exact >= 1, CF_EINVAL,
           "exact-OT point cap is %lld; expected at least 1 (points used by W1/W2)",
           (long long)max_exact);
  CF_TRY(check_set(a, na, d, "a"));
  CF_TRY(check_set(b, nb, d, "b"));
  struct cf_metrics m = {0};
  m.n_a = na;
  m.n_b = nb;
  m.dim = d;
  m.n_ot = na < nb ? na : nb;
  if (max_exact < m.n_ot) m.n_ot = max_exact;
  CF_TRY(cf_wasserstein_exact(a, b, m.n_ot, d, 2, &m.w2));
  CF_TRY(cf_wasserstein_exact(a, b, m.n_ot, d, 1, &m.w1));
  /* One pass for gamma = 2, the five bandwidths and the distances. */
  double gam[1 + CF_MMD_NSIGMA], mmd[1 + CF_MMD_NSIGMA];
  gam[0] = CF_MMD_GAMMA;
  multi_gammas(gam + 1);
  two_sample(a, na, b, nb, d, gam, 1 + CF_MMD_NSIGMA, mmd, &m.energy);
  m.mmd2_rbf = mmd[0];
  double s = 0;
  for (int g = 1; g <= CF_MMD_NSIGMA; g++)
    s += mmd[g];
  m.mmd2_rbf_multi = s / CF_MMD_NSIGMA;
  *out = m;
  return CF_OK;
}

cf_status cf_r2_mean_expression(const double *pred, const double *real, int64_t d,
                                const int64_t *genes, int64_t n_genes, double *r2) {
  CF_CHECK(pred != NULL && real != NULL && r2 != NULL, CF_EINVAL, "r2: NULL argument");
  CF_CHECK(d >= 1, CF_EINVAL, "r2: %lld genes; expected at least 1", (long long)d);
  int64_t m = genes ? n_genes : d;
  CF_CHECK(m >= 2, CF_EINVAL, "r2: %lld genes selected; R^2 needs at least 2", (long long)m);
  for (int64_t i = 0; i < m; i++) {
    int64_t g = genes ? genes[i] : i;
    CF_CHECK(g >= 0 && g < d, CF_EINVAL, "r2: gene index %lld (entry %lld); expected 0 to %lld",
             (long long)g, (long long)i, (long long)(d - 1));
    CF_CHECK(isfinite(pred[g]) && isfinite(real[g]), CF_ECORRUPT,
             "r2: the %s mean expression of gene %lld is not finite",
             isfinite(pred[g]) ? "real" : "generated", (long long)g);
  }
  double mean = 0;
  for (int64_t i = 0; i < m; i++)
    mean += real[genes ? genes[i] : i];
  mean /= (double)m;
  double res = 0, tot = 0;
  for (int64_t i = 0; i < m; i++) {
    int64_t g = genes ? genes[i] : i;
    double e = pred[g] - real[g], t = real[g] - mean;
    res += e * e;
    tot += t * t;
  }
  CF_CHECK(tot > 0, CF_EINVAL,
           "r2: the real mean expression is the same for all %lld selected genes; R^2 is "
           "undefined",
           (long long)m);
  *r2 = 1.0 - res / tot;
  return CF_OK;
}
