/* test_metrics_ot.c: the collective metrics, Sinkhorn (entropic OT) and the Frechet distance
 * (ScaLAPACK), at any rank count (registered at 1, 2 and 3 ranks).
 *
 * 1. Reference values from tests/reference/metrics_ot_ref.txt (numpy Sinkhorn + Newton,
 *    scipy.linalg.sqrtm; tests/reference/gen_metrics.py): relative error <= 1e-6 (Sinkhorn,
 *    run to tol 1e-11) and <= 1e-9 (Frechet; 1e-6 for the rank-deficient case).
 * 2. Frechet layout invariance at D = 300: the whole communicator with 32 x 32 blocks
 *    (several blocks per rank), grids 1 x R and R x 1, uneven row splits with empty ranks,
 *    against the same sets on MPI_COMM_SELF with 64 x 64 blocks: relative <= 1e-10.
 * 3. Frechet closed form: block-diagonal covariances of 150 non-commuting 2 x 2 blocks
 *    (D = 300), built from +-u point pairs so the sample means and covariances are exact:
 *    tr sqrt(A^1/2 B A^1/2) = sqrt(tr AB + 2 sqrt(det A det B)) per block. Relative <= 1e-10,
 *    and the variants a broken implementation would give (no factor 2, tr S_a S_b without
 *    the root, no mean term) are far outside that tolerance. Frechet(a, a + v) = |v|^2.
 * 4. Sinkhorn layout invariance: communicator vs MPI_COMM_SELF, cost rows cached or
 *    recomputed, direct (d = 2) and dgemm (d = 20) costs: relative <= 1e-12, same iterations.
 * 5. Sinkhorn properties: the divergence between a and a + v is |v|^2; n = 1 sets give
 *    |a - b|; sqrt(<P, C>) >= exact W2, falling to it as eps -> 0; the iteration cap.
 * 6. Bad input: every rank fails (the one that found it with the message, the others with
 *    CF_EREMOTE); no workspace is leaked.
 *
 * Usage: test_metrics_ot [REF.txt]     (default $CF_SOURCE_DIR/tests/reference/metrics_ot_ref.txt)
 *        test_metrics_ot --bench N D   (wall time of Frechet and Sinkhorn, n = N points per set)
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/metrics.h"
#include "calmflow/rng.h"
#include "cf_test.h"

static MPI_Comm g_comm;
static int g_rank, g_size;

static double rel_err(double got, double want) {
  double s = fabs(want) > 1e-300 ? fabs(want) : 1e-300;
  return fabs(got - want) / s;
}

/* Normal points (n, d) scaled by s and shifted by m, the same on every rank. */
static void normals(float *x, int64_t n, int64_t d, uint64_t index, float s, float m) {
  struct cf_rng r = {.seed = 11, .domain = CF_RNG_EVAL, .step = 0, .index = index};
  cf_rng_normal(&r, 0, x, (size_t)(n * d));
  for (int64_t e = 0; e < n * d; e++)
    x[e] = s * x[e] + m;
}

/* This rank's rows [lo, hi) of n when rank r gets a share proportional to w(r) = r + skew
 * (skew 1: uneven, rank 0 smallest; skew 0: rank 0 gets none). */
static void share(int64_t n, int skew, int64_t *lo, int64_t *hi) {
  int64_t tot = 0, before = 0;
  for (int r = 0; r < g_size; r++) {
    tot += r + skew;
    if (r < g_rank) before += r + skew;
  }
  if (tot == 0) { /* one rank, skew 0 */
    *lo = 0;
    *hi = n;
    return;
  }
  *lo = n * before / tot;
  *hi = n * (before + g_rank + skew) / tot;
}

static struct cf_frechet frechet_split(const float *a, int64_t na, const float *b, int64_t nb,
                                       int64_t d, int skew, int64_t block, int grid_rows,
                                       MPI_Comm comm, cf_status *st) {
  struct cf_frechet f = {0};
  int64_t alo = 0, ahi = na, blo = 0, bhi = nb;
  if (comm != MPI_COMM_SELF) {
    share(na, skew, &alo, &ahi);
    share(nb, skew + 1, &blo, &bhi);
  }
  struct cf_frechet_opts o = {.block = block, .grid_rows = grid_rows};
  *st = cf_frechet(comm, a + alo * d, ahi - alo, b + blo * d, bhi - blo, d, &o, &f);
  return f;
}

/* ---- 1. reference file ---- */

static int next_tok(FILE *f, char *buf) {
  for (;;) {
    if (fscanf(f, "%63s", buf) != 1) return 0;
    if (buf[0] != '#') return 1;
    int c;
    while ((c = fgetc(f)) != EOF && c != '\n')
      ;
  }
}

static int read_num(FILE *f, double *v) {
  char t[64], *end;
  if (!next_tok(f, t)) return 0;
  *v = strtod(t, &end);
  return *end == '\0';
}

static int read_key(FILE *f, const char *key, double *v) {
  char t[64];
  return next_tok(f, t) && strcmp(t, key) == 0 && read_num(f, v);
}

static int read_points(FILE *f, float *x, int64_t n) {
  char t[64], *end;
  for (int64_t e = 0; e < n; e++) {
    if (!next_tok(f, t)) return 0;
    x[e] = strtof(t, &end);
    if (*end != '\0') return 0;
  }
  return 1;
}

static void check_reference(const char *path) {
  FILE *f = fopen(path, "r");
  EXPECT(f != NULL, "cannot open reference file '%s'", path);
  if (!f) return;
  double nc;
  int ok = read_key(f, "ncases", &nc), done = 0, nsk = 0, nfr = 0;
  EXPECT(ok, "reference file: no ncases line");
  for (int c = 0; ok && c < (int)nc; c++) {
    char kind[64], name[64];
    double na_, nb_, d_, eps = 0, absolute = 0;
    ok = next_tok(f, kind) && next_tok(f, name) && read_num(f, &na_) && read_num(f, &nb_) &&
         read_num(f, &d_);
    int sk = ok && strcmp(kind, "sinkhorn") == 0;
    if (sk) ok = read_num(f, &eps) && read_num(f, &absolute);
    EXPECT(ok && (sk || strcmp(kind, "frechet") == 0), "reference file: bad header of case %d", c);
    if (!ok) break;
    int64_t na = (int64_t)na_, nb = (int64_t)nb_, d = (int64_t)d_;
    float *a = cf_test_floats((size_t)(na * d)), *b = cf_test_floats((size_t)(nb * d));
    ok = read_points(f, a, na * d) && read_points(f, b, nb * d);
    char t[64];
    ok = ok && next_tok(f, t) && strcmp(t, "expect") == 0;
    if (sk) {
      const char *keys[5] = {"w2", "ot_ab", "ot_aa", "ot_bb", "div"};
      double want[5];
      for (int k = 0; k < 5 && ok; k++)
        ok = read_key(f, keys[k], &want[k]);
      EXPECT(ok, "reference file: bad data in case %s", name);
      if (ok) {
        struct cf_sinkhorn_opts o;
        cf_sinkhorn_defaults(&o);
        o.eps = eps;
        o.eps_absolute = (int)absolute;
        o.tol = 1e-11;
        o.max_iter = 200000;
        struct cf_sinkhorn r;
        cf_status st = cf_sinkhorn(g_comm, a, na, b, nb, d, &o, &r);
        EXPECT(st == CF_OK, "case %s: cf_sinkhorn failed: %s", name, cf_errmsg());
        cf_err_clear();
        if (st == CF_OK) {
          double got[5] = {r.w2, r.ot_ab, r.ot_aa, r.ot_bb, r.divergence};
          for (int k = 0; k < 5; k++)
            EXPECT(rel_err(got[k], want[k]) <= 1e-6,
                   "sinkhorn case %s: %s = %.17g, reference %.17g (rel %.2e)", name, keys[k],
                   got[k], want[k], rel_err(got[k], want[k]));
          EXPECT(r.converged && r.err <= 1e-11, "sinkhorn case %s: converged %d err %g", name,
                 r.converged, r.err);
          /* The far point's column goes through the exact (two-pass) update. */
          EXPECT(strcmp(name, "outlier") != 0 || r.rescued > 0,
                 "sinkhorn case outlier: the exact column update was not used");
        }
        nsk++;
      }
    } else {
      double want[2];
      ok = ok && read_key(f, "frechet", &want[0]) && read_key(f, "trace_sqrt", &want[1]);
      EXPECT(ok, "reference file: bad data in case %s", name);
      if (ok) {
        cf_status st;
        struct cf_frechet r = frechet_split(a, na, b, nb, d, 0, 0, 0, g_comm, &st);
        EXPECT(st == CF_OK, "case %s: cf_frechet failed: %s", name, cf_errmsg());
        cf_err_clear();
        double tol = strstr(name, "singular") ? 1e-6 : 1e-9;
        EXPECT(st == CF_OK && rel_err(r.value, want[0]) <= tol &&
                   rel_err(r.trace_sqrt, want[1]) <= tol,
               "frechet case %s: %.17g (trace sqrt %.17g), reference %.17g (%.17g), rel %.2e", name,
               r.value, r.trace_sqrt, want[0], want[1], rel_err(r.value, want[0]));
        nfr++;
      }
    }
    free(a);
    free(b);
    if (!ok) break;
    done++;
  }
  fclose(f);
  EXPECT(done == (int)nc && nsk >= 4 && nfr >= 3, "reference file: checked %d of %d cases", done,
         (int)nc);
  if (g_rank == 0) printf("reference: %d Sinkhorn and %d Frechet cases checked\n", nsk, nfr);
}

/* ---- 2. Frechet layout invariance ---- */

static void check_frechet_layout(void) {
  const int64_t d = 300, na = 700, nb = 520;
  float *a = cf_test_floats((size_t)(na * d)), *b = cf_test_floats((size_t)(nb * d));
  normals(a, na, d, 21, 1.0f, 0.0f);
  normals(b, nb, d, 22, 0.7f, 0.2f);
  /* Correlate b's coordinates: b_k += 0.5 b_{k-1}, so S_b is not diagonal. */
  for (int64_t i = 0; i < nb; i++)
    for (int64_t k = 1; k < d; k++)
      b[i * d + k] += 0.5f * b[i * d + k - 1];
  cf_status st;
  struct cf_frechet ref = frechet_split(a, na, b, nb, d, 0, 64, 1, MPI_COMM_SELF, &st);
  EXPECT(st == CF_OK, "frechet on one rank failed: %s", cf_errmsg());
  cf_err_clear();
  struct {
    int skew, grid_rows;
    int64_t block;
  } lay[4] = {{1, 0, 32}, {0, 0, 32}, {1, g_size, 32}, {0, 1, 7}};
  double worst = 0;
  for (int l = 0; l < 4; l++) {
    struct cf_frechet r =
        frechet_split(a, na, b, nb, d, lay[l].skew, lay[l].block, lay[l].grid_rows, g_comm, &st);
    EXPECT(st == CF_OK, "frechet layout %d failed: %s", l, cf_errmsg());
    cf_err_clear();
    double e = rel_err(r.value, ref.value);
    worst = e > worst ? e : worst;
    EXPECT(e <= 1e-10 && rel_err(r.trace_sqrt, ref.trace_sqrt) <= 1e-10,
           "frechet layout %d (grid %d x %d, block %lld): %.17g vs one rank %.17g (rel %.2e)", l,
           r.grid_rows, r.grid_cols, (long long)lay[l].block, r.value, ref.value, e);
    EXPECT(r.grid_rows * r.grid_cols == g_size && r.n_a == na && r.n_b == nb && r.dim == d,
           "frechet layout %d: grid %d x %d, n %lld %lld", l, r.grid_rows, r.grid_cols,
           (long long)r.n_a, (long long)r.n_b);
    /* Identical on every rank. */
    double mx = r.value, mn = r.value;
    MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_DOUBLE, MPI_MAX, g_comm);
    MPI_Allreduce(MPI_IN_PLACE, &mn, 1, MPI_DOUBLE, MPI_MIN, g_comm);
    EXPECT(mx == mn, "frechet layout %d: ranks disagree (%.17g vs %.17g)", l, mn, mx);
  }
  if (g_rank == 0)
    printf("frechet layout (D = %lld, %d ranks): %.12f, worst relative difference %.1e\n",
           (long long)d, g_size, ref.value, worst);
  free(a);
  free(b);
}

/* ---- 3. Frechet closed form ---- */

static void check_frechet_closed_form(void) {
  const int64_t d = 300, K = d / 2, n = 4 * K; /* 4 points per 2 x 2 block */
  float *a = cf_test_floats((size_t)(n * d)), *b = cf_test_floats((size_t)(n * d));
  double mt = 0, ta = 0, tb = 0, ts = 0, tab = 0;
  const double c = 2.0 / (double)(n - 1);
  for (int64_t k = 0; k < d; k++) {
    float ma = (float)(k % 5 - 2) * 0.25f, mb = (float)(k % 3) * 0.5f;
    for (int64_t i = 0; i < n; i++) {
      a[i * d + k] = ma;
      b[i * d + k] = mb;
    }
    mt += ((double)ma - mb) * ((double)ma - mb);
  }
  for (int64_t k = 0; k < K; k++) {
    /* a: +-(p, 0), +-(q, r); b: +-(s, t), +-(0, w) in coordinates (2k, 2k+1). */
    double p = 1 + k % 3, q = 1 + k % 4, r = 2 + k % 2, s = 1 + k % 5, t = (double)(k % 3) - 1,
           w = 1 + k % 2;
    double ua[2][2] = {{p, 0}, {q, r}}, ub[2][2] = {{s, t}, {0, w}};
    for (int v = 0; v < 2; v++)
      for (int sg = 0; sg < 2; sg++) {
        int64_t i = 4 * k + 2 * v + sg;
        float f = sg ? -1.0f : 1.0f;
        a[i * d + 2 * k] += f * (float)ua[v][0];
        a[i * d + 2 * k + 1] += f * (float)ua[v][1];
        b[i * d + 2 * k] += f * (float)ub[v][0];
        b[i * d + 2 * k + 1] += f * (float)ub[v][1];
      }
    /* A = c (u1 u1^T + u2 u2^T), B likewise. */
    double A[3] = {c * (p * p + q * q), c * q * r, c * r * r};
    double B[3] = {c * s * s, c * s * t, c * (t * t + w * w)};
    double trAB = A[0] * B[0] + 2 * A[1] * B[1] + A[2] * B[2];
    double det = (A[0] * A[2] - A[1] * A[1]) * (B[0] * B[2] - B[1] * B[1]);
    ta += A[0] + A[2];
    tb += B[0] + B[2];
    ts += sqrt(trAB + 2 * sqrt(det));
    tab += trAB;
  }
  double want = mt + ta + tb - 2 * ts;
  /* What broken variants would report: each is far outside the tolerance below. */
  double broken[3] = {mt + ta + tb - ts, mt + ta + tb - 2 * sqrt(tab), ta + tb - 2 * ts};
  for (int v = 0; v < 3; v++)
    EXPECT(rel_err(broken[v], want) > 1e-3, "closed form: variant %d is not distinguishable", v);
  cf_status st;
  struct cf_frechet r = frechet_split(a, n, b, n, d, 1, 32, 0, g_comm, &st);
  EXPECT(st == CF_OK, "frechet closed form failed: %s", cf_errmsg());
  cf_err_clear();
  EXPECT(rel_err(r.value, want) <= 1e-10, "closed form: frechet %.17g, exact %.17g (rel %.2e)",
         r.value, want, rel_err(r.value, want));
  EXPECT(rel_err(r.trace_sqrt, ts) <= 1e-10 && rel_err(r.trace_a, ta) <= 1e-13 &&
             rel_err(r.trace_b, tb) <= 1e-13 && rel_err(r.mean_term, mt) <= 1e-15,
         "closed form parts: tr sqrt %.17g (%.17g), tr a %.17g (%.17g), tr b %.17g (%.17g), "
         "mean %.17g (%.17g)",
         r.trace_sqrt, ts, r.trace_a, ta, r.trace_b, tb, r.mean_term, mt);
  if (g_rank == 0)
    printf("frechet closed form (D = %lld, 2 x 2 blocks): %.15f, exact %.15f (rel %.1e)\n",
           (long long)d, r.value, want, rel_err(r.value, want));

  /* A shift: same covariance, Frechet = |v|^2; and Frechet(a, a) = 0. */
  float *c2 = cf_test_floats((size_t)(n * d));
  double v2 = 0;
  for (int64_t k = 0; k < d; k++) {
    float v = (float)((k % 7) - 3) * 0.125f;
    v2 += (double)v * v;
    for (int64_t i = 0; i < n; i++)
      c2[i * d + k] = a[i * d + k] + v;
  }
  r = frechet_split(a, n, c2, n, d, 0, 32, 0, g_comm, &st);
  EXPECT(st == CF_OK && rel_err(r.value, v2) <= 1e-10, "frechet(a, a + v) = %.17g, |v|^2 = %.17g",
         r.value, v2);
  cf_err_clear();
  r = frechet_split(a, n, a, n, d, 1, 32, 0, g_comm, &st);
  EXPECT(st == CF_OK && fabs(r.value) <= 1e-11 * ta, "frechet(a, a) = %.3g", r.value);
  cf_err_clear();
  free(a);
  free(b);
  free(c2);
}

/* ---- 4. Sinkhorn layout invariance ---- */

static void check_sinkhorn_layout(void) {
  struct {
    int64_t na, nb, d;
    size_t cache;
  } cs[4] = {{157, 211, 2, (size_t)64 << 20},
             {157, 211, 2, 0},
             {90, 70, 20, (size_t)64 << 20},
             {90, 70, 20, 0}};
  double worst = 0;
  for (int c = 0; c < 4; c++) {
    float *a = cf_test_floats((size_t)(cs[c].na * cs[c].d)),
          *b = cf_test_floats((size_t)(cs[c].nb * cs[c].d));
    normals(a, cs[c].na, cs[c].d, 31 + (uint64_t)c, 1.0f, 0.0f);
    normals(b, cs[c].nb, cs[c].d, 41 + (uint64_t)c, 1.4f, 0.3f);
    struct cf_sinkhorn_opts o;
    cf_sinkhorn_defaults(&o);
    o.cache_bytes = cs[c].cache;
    o.tol = 1e-9;
    struct cf_sinkhorn r1, rp;
    EXPECT_OK(cf_sinkhorn(MPI_COMM_SELF, a, cs[c].na, b, cs[c].nb, cs[c].d, &o, &r1),
              "sinkhorn on one rank");
    EXPECT_OK(cf_sinkhorn(g_comm, a, cs[c].na, b, cs[c].nb, cs[c].d, &o, &rp),
              "sinkhorn on the communicator");
    double e[3] = {rel_err(rp.w2, r1.w2), rel_err(rp.divergence, r1.divergence),
                   rel_err(rp.ot_ab, r1.ot_ab)};
    for (int k = 0; k < 3; k++)
      worst = e[k] > worst ? e[k] : worst;
    EXPECT(e[0] <= 1e-12 && e[1] <= 1e-12 && e[2] <= 1e-12 && rp.iters == r1.iters &&
               rp.iters_aa == r1.iters_aa && rp.iters_bb == r1.iters_bb,
           "sinkhorn layout case %d: w2 %.17g vs %.17g, div %.17g vs %.17g, iters %lld vs %lld", c,
           rp.w2, r1.w2, rp.divergence, r1.divergence, (long long)rp.iters, (long long)r1.iters);
    EXPECT(rp.converged && rp.cached == (cs[c].cache > 0),
           "sinkhorn case %d: converged %d cached %d", c, rp.converged, rp.cached);
    double mx = rp.w2, mn = rp.w2;
    MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_DOUBLE, MPI_MAX, g_comm);
    MPI_Allreduce(MPI_IN_PLACE, &mn, 1, MPI_DOUBLE, MPI_MIN, g_comm);
    EXPECT(mx == mn, "sinkhorn case %d: ranks disagree", c);
    if (g_rank == 0 && c % 2 == 0)
      printf("sinkhorn layout (n %lld/%lld, d %lld): w2 %.12f div %.12f, %lld + %lld + %lld "
             "iterations\n",
             (long long)cs[c].na, (long long)cs[c].nb, (long long)cs[c].d, rp.w2, rp.divergence,
             (long long)rp.iters, (long long)rp.iters_aa, (long long)rp.iters_bb);
    free(a);
    free(b);
  }
  if (g_rank == 0)
    printf("sinkhorn layout: worst relative difference to one rank %.1e (%d ranks)\n", worst,
           g_size);
}

/* ---- 5. Sinkhorn properties ---- */

static void check_sinkhorn_properties(void) {
  const int64_t n = 80, d = 2;
  float *a = cf_test_floats((size_t)(n * d)), *b = cf_test_floats((size_t)(n * d));
  normals(a, n, d, 51, 1.0f, 0.0f);
  /* Multiples of 1/1024 so that a + v is exact in float. */
  for (int64_t e = 0; e < n * d; e++)
    a[e] = roundf(a[e] * 1024.0f) / 1024.0f;
  const float v[2] = {0.75f, -0.5f};
  for (int64_t i = 0; i < n; i++)
    for (int k = 0; k < 2; k++)
      b[i * d + k] = a[i * d + k] + v[k];
  struct cf_sinkhorn_opts o;
  cf_sinkhorn_defaults(&o);
  o.tol = 1e-11;
  o.max_iter = 100000;
  struct cf_sinkhorn r;
  EXPECT_OK(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), "sinkhorn shift");
  EXPECT(rel_err(r.divergence, 0.8125) <= 1e-8 && rel_err(r.ot_ab - r.ot_aa, 0.8125) <= 1e-8,
         "divergence(a, a + v) = %.17g, ot_ab - ot_aa = %.17g, |v|^2 = 0.8125", r.divergence,
         r.ot_ab - r.ot_aa);
  EXPECT(fabs(r.ot_aa - r.ot_bb) <= 1e-9 * r.ot_aa, "ot(a, a) %.17g vs ot(a + v, a + v) %.17g",
         r.ot_aa, r.ot_bb);
  EXPECT_OK(cf_sinkhorn(g_comm, a, n, a, n, d, &o, &r), "sinkhorn self");
  EXPECT(fabs(r.divergence) <= 1e-9 * r.ot_aa, "divergence(a, a) = %.3g", r.divergence);

  /* One point each: the plan is the single pair. */
  EXPECT_OK(cf_sinkhorn(g_comm, a, 1, b + 7 * d, 1, d, &o, &r), "sinkhorn n = 1");
  double dx = (double)a[0] - b[7 * d], dy = (double)a[1] - b[7 * d + 1];
  EXPECT(rel_err(r.w2, sqrt(dx * dx + dy * dy)) <= 1e-14, "n = 1: w2 %.17g, |a - b| %.17g", r.w2,
         sqrt(dx * dx + dy * dy));

  /* Against exact W2: the entropic plan's cost is never below the optimum (up to the
   * column-marginal violation) and falls towards it as eps -> 0. At small eps plain Sinkhorn
   * slows down to a sublinear rate (numpy needs as many iterations): a loose tol and a cap
   * keep this quick; the values are then accurate to about 1e-4. */
  normals(b, n, d, 52, 1.3f, 0.4f);
  double w2;
  EXPECT_OK(cf_wasserstein_exact(a, b, n, d, 2, &w2), "exact W2");
  o.tol = 1e-5;
  o.max_iter = 4000;
  o.debias = 0;
  double gap0 = 0, prev = INFINITY;
  const double epss[3] = {0.1, 0.02, 0.005};
  for (int e = 0; e < 3; e++) {
    o.eps = epss[e];
    EXPECT_OK(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), "sinkhorn vs exact");
    EXPECT(r.w2 >= w2 * (1 - 1e-4) && r.w2 < prev && r.err < 1e-3 && (e > 0 || r.converged),
           "eps %g: sinkhorn_w2 %.9f, exact W2 %.9f, previous %.9f (converged %d, %lld "
           "iterations, err %g)",
           epss[e], r.w2, w2, prev, r.converged, (long long)r.iters, r.err);
    if (e == 0) gap0 = r.w2 - w2;
    prev = r.w2;
  }
  EXPECT(r.w2 - w2 <= 0.05 * gap0,
         "eps 0.005: sinkhorn_w2 %.9f is not much closer to exact W2 %.9f than at eps 0.1 (gap "
         "%.3g)",
         r.w2, w2, gap0);
  if (g_rank == 0)
    printf("sinkhorn eps 0.1 -> 0.005: w2 %.9f -> %.9f (%lld iterations, err %.1e), exact W2 "
           "%.9f\n",
           w2 + gap0, r.w2, (long long)r.iters, r.err, w2);

  /* The iteration cap is reported, not an error. */
  o.eps = 0.01;
  o.max_iter = 3;
  o.debias = 1;
  EXPECT_OK(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), "sinkhorn capped");
  EXPECT(!r.converged && r.iters == 3 && isfinite(r.w2), "capped: converged %d iters %lld",
         r.converged, (long long)r.iters);
  o.debias = 0;
  o.max_iter = 1000;
  EXPECT_OK(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), "sinkhorn without debias");
  EXPECT(isnan(r.divergence) && isnan(r.ot_aa) && r.iters_aa == 0 && r.w2 > 0,
         "no debias: divergence %g", r.divergence);
  free(a);
  free(b);
}

/* ---- 6. bad input ---- */

/* On rank `who` the call failed with `want` and `sub`; elsewhere with CF_EREMOTE. */
#define EXPECT_FAIL_AT(st, who, want, sub, what)                                                   \
  do {                                                                                             \
    cf_status st_ = (st);                                                                          \
    if (g_rank == (who) || (who) < 0)                                                              \
      EXPECT_FAIL_STATUS(st_, want, sub, what);                                                    \
    else                                                                                           \
      EXPECT_FAIL_STATUS(st_, CF_EREMOTE, "another rank", what);                                   \
  } while (0)

static void check_bad_input(void) {
  const int64_t n = 12, d = 3;
  float a[36], b[36];
  normals(a, n, d, 61, 1.0f, 0.0f);
  normals(b, n, d, 62, 1.0f, 0.0f);
  struct cf_sinkhorn_opts o;
  cf_sinkhorn_defaults(&o);
  struct cf_sinkhorn r;
  cf_err_clear();
  EXPECT_FAIL_STATUS(cf_sinkhorn(g_comm, a, 0, b, n, d, &o, &r), CF_EINVAL, "eval set a",
                     "sinkhorn na = 0");
  EXPECT_FAIL_STATUS(cf_sinkhorn(g_comm, a, n, b, n, 0, &o, &r), CF_EINVAL, "dimension",
                     "sinkhorn d = 0");
  o.eps = 0;
  EXPECT_FAIL_STATUS(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), CF_EINVAL, "eps",
                     "sinkhorn eps = 0");
  o.eps = 0.05;
  o.tol = -1;
  EXPECT_FAIL_STATUS(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), CF_EINVAL, "tolerance",
                     "sinkhorn tol < 0");
  o.tol = 1e-6;
  o.max_iter = 0;
  EXPECT_FAIL_STATUS(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), CF_EINVAL, "iteration cap",
                     "sinkhorn max_iter = 0");
  o.max_iter = 100;
  float keep = b[3 * 5 + 1];
  b[3 * 5 + 1] = NAN;
  EXPECT_FAIL_STATUS(cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r), CF_ECORRUPT,
                     "eval set b has NaN at row 5", "sinkhorn NaN");
  b[3 * 5 + 1] = keep;

  struct cf_frechet f;
  struct cf_frechet_opts fo = {0, 0};
  /* NaN in the last rank's rows: the message names the global row. */
  int last = g_size - 1;
  keep = a[(n - 1) * d];
  a[(n - 1) * d] = INFINITY;
  char msg[64];
  snprintf(msg, sizeof msg, "eval set a has Inf at row %lld", (long long)(n - 1));
  int64_t mlo = n * g_rank / g_size, mhi = n * (g_rank + 1) / g_size;
  EXPECT_FAIL_AT(cf_frechet(g_comm, a + mlo * d, mhi - mlo, b + mlo * d, mhi - mlo, d, &fo, &f),
                 last, CF_ECORRUPT, msg, "frechet Inf");
  a[(n - 1) * d] = keep;
  /* One point in b over all ranks. */
  EXPECT_FAIL_STATUS(cf_frechet(g_comm, a + mlo * d, mhi - mlo, b, g_rank == 0 ? 1 : 0, d, &fo, &f),
                     CF_EINVAL, "needs at least 2", "frechet one point");
  EXPECT_FAIL_STATUS(cf_frechet(g_comm, a + mlo * d, mhi - mlo, b + mlo * d, mhi - mlo, 0, &fo, &f),
                     CF_EINVAL, "dimension", "frechet d = 0");
  fo.grid_rows = g_size + 1;
  EXPECT_FAIL_STATUS(cf_frechet(g_comm, a + mlo * d, mhi - mlo, b + mlo * d, mhi - mlo, d, &fo, &f),
                     CF_ETOPO, "grid rows", "frechet bad grid");
  fo.grid_rows = 0;
  fo.block = -2;
  EXPECT_FAIL_STATUS(cf_frechet(g_comm, a + mlo * d, mhi - mlo, b + mlo * d, mhi - mlo, d, &fo, &f),
                     CF_EINVAL, "block size", "frechet bad block");
  fo.block = 0;
  if (g_size > 1) {
    /* The last rank thinks the sets have one more column. */
    int64_t dl = g_rank == last ? d - 1 : d;
    EXPECT_FAIL_STATUS(cf_frechet(g_comm, a, 2, b, 2, dl, &fo, &f), CF_EINVAL,
                       "different dimensions", "frechet d differs");
  }
  /* After all that, a good call still works (no rank left inside a collective). */
  EXPECT_OK(cf_frechet(g_comm, a + mlo * d, mhi - mlo, b + mlo * d, mhi - mlo, d, &fo, &f),
            "frechet after failures");
}

/* ---- benchmark ---- */

static void bench(int64_t n, int64_t d) {
  float *a = cf_test_floats((size_t)(n * d)), *b = cf_test_floats((size_t)(n * d));
  normals(a, n, d, 71, 1.0f, 0.0f);
  normals(b, n, d, 72, 1.2f, 0.1f);
  int64_t lo = n * g_rank / g_size, hi = n * (g_rank + 1) / g_size;
  struct cf_frechet f;
  MPI_Barrier(g_comm);
  double t0 = MPI_Wtime();
  cf_status s1 = cf_frechet(g_comm, a + lo * d, hi - lo, b + lo * d, hi - lo, d, NULL, &f);
  MPI_Barrier(g_comm);
  double t1 = MPI_Wtime();
  struct cf_sinkhorn_opts o;
  cf_sinkhorn_defaults(&o);
  struct cf_sinkhorn r;
  cf_status s2 = cf_sinkhorn(g_comm, a, n, b, n, d, &o, &r);
  MPI_Barrier(g_comm);
  double t2 = MPI_Wtime();
  EXPECT(s1 == CF_OK && s2 == CF_OK, "bench failed: %s", cf_errmsg());
  if (g_rank == 0)
    printf("bench n=%lld d=%lld ranks=%d: frechet %.6f in %.3f s (grid %d x %d); sinkhorn w2 "
           "%.6f div %.6f in %.3f s (%lld + %lld + %lld iterations, cached %d, converged %d)\n",
           (long long)n, (long long)d, g_size, f.value, t1 - t0, f.grid_rows, f.grid_cols, r.w2,
           r.divergence, t2 - t1, (long long)r.iters, (long long)r.iters_aa, (long long)r.iters_bb,
           r.cached, r.converged);
  free(a);
  free(b);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_dup(MPI_COMM_WORLD, &g_comm);
  MPI_Comm_rank(g_comm, &g_rank);
  MPI_Comm_size(g_comm, &g_size);
  cf_test_rank = g_rank;
  if (argc == 4 && strcmp(argv[1], "--bench") == 0) {
    bench(atoll(argv[2]), atoll(argv[3]));
  } else {
    char path[4096];
    if (argc > 1) {
      snprintf(path, sizeof path, "%s", argv[1]);
    } else {
      const char *src = getenv("CF_SOURCE_DIR");
      snprintf(path, sizeof path, "%s/tests/reference/metrics_ot_ref.txt", src ? src : ".");
    }
    check_reference(path);
    check_frechet_layout();
    check_frechet_closed_form();
    check_sinkhorn_layout();
    check_sinkhorn_properties();
    EXPECT(cf_alloc_bytes() == 0, "%zu bytes still held after the checks", cf_alloc_bytes());
    check_bad_input();
    EXPECT(cf_alloc_bytes() == 0, "%zu bytes still held after bad input", cf_alloc_bytes());
  }
  int total = 0;
  MPI_Allreduce(&cf_test_fails, &total, 1, MPI_INT, MPI_SUM, g_comm);
  cf_test_fails = total;
  char label[64];
  snprintf(label, sizeof label, "test_metrics_ot (%d ranks)", g_size);
  MPI_Comm_free(&g_comm);
  MPI_Finalize();
  return cf_test_done(label);
}
