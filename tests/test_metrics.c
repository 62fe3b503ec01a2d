/* test_metrics.c: W1/W2 (exact assignment), MMD and energy distance.
 *
 * 1. Reference values from tests/data/metrics_ref.txt (scipy linear_sum_assignment
 *    and numpy, see tests/reference/make_metrics_ref.py): relative error <= 1e-6.
 * 2. Properties: W(a, a) = 0, W(a, a + v) = |v| (W1 and W2), invariance under row
 *    permutations, 1-D sets against the sorted matching (n = 500).
 * 3. Optimality: the solver against brute force over all permutations (n <= 7),
 *    on Euclidean sets with ties and on integer cost matrices full of ties.
 * 4. Bad input: empty sets, d < 1, NaN / Inf naming the set and row, bad p, cap < 1.
 * 5. No workspace is leaked (cf_alloc_bytes back to 0), on success and on failure.
 *
 * Usage: test_metrics [REF.txt]        (default $CF_SOURCE_DIR/tests/data/metrics_ref.txt)
 *        test_metrics --bench N D      (CPU time of W2 and W1 for n = N points in D dims)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calmflow/mem.h"
#include "calmflow/metrics.h"
#include "calmflow/rng.h"
#include "cf_test.h"

static double rel_err(double got, double want) {
  double s = fabs(want) > 1e-300 ? fabs(want) : 1e-300;
  return fabs(got - want) / s;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Normal points (n, d) scaled by s and shifted by m, from the test's own stream. */
static void normals(float *x, int64_t n, int64_t d, uint64_t index, float s, float m) {
  struct cf_rng r = {.seed = 7, .domain = CF_RNG_EVAL, .step = 0, .index = index};
  cf_rng_normal(&r, 0, x, (size_t)(n * d));
  for (int64_t e = 0; e < n * d; e++)
    x[e] = s * x[e] + m;
}

/* ---- 1. reference file ---- */

/* Next whitespace token, skipping '#' comment lines; 0 at end of file. */
static int next_tok(FILE *f, char *buf, size_t cap) {
  for (;;) {
    if (fscanf(f, "%63s", buf) != 1) return 0;
    if (buf[0] != '#') return 1;
    int c;
    while ((c = fgetc(f)) != EOF && c != '\n')
      ;
  }
  (void)cap;
}

static int expect_tok(FILE *f, const char *want) {
  char t[64];
  int ok = next_tok(f, t, sizeof t) && strcmp(t, want) == 0;
  EXPECT(ok, "reference file: expected '%s'", want);
  return ok;
}

static int read_num(FILE *f, double *v) {
  char t[64], *end;
  if (!next_tok(f, t, sizeof t)) return 0;
  *v = strtod(t, &end);
  return *end == '\0';
}

static int read_f32(FILE *f, float *v) {
  char t[64], *end;
  if (!next_tok(f, t, sizeof t)) return 0;
  *v = strtof(t, &end);
  return *end == '\0';
}

static void check_reference(const char *path) {
  FILE *f = fopen(path, "r");
  EXPECT(f != NULL, "cannot open reference file '%s'", path);
  if (!f) return;
  double nc;
  if (!expect_tok(f, "ncases") || !read_num(f, &nc)) {
    fclose(f);
    return;
  }
  int ncases = (int)nc, done = 0;
  for (int c = 0; c < ncases; c++) {
    char name[64];
    double na_, nb_, d_, mx_;
    int hdr = expect_tok(f, "case") && next_tok(f, name, sizeof name) && read_num(f, &na_) &&
              read_num(f, &nb_) && read_num(f, &d_) && read_num(f, &mx_);
    EXPECT(hdr, "reference file: bad case header %d", c);
    if (!hdr) break;
    int64_t na = (int64_t)na_, nb = (int64_t)nb_, d = (int64_t)d_, mx = (int64_t)mx_;
    float *a = cf_test_floats((size_t)(na * d)), *b = cf_test_floats((size_t)(nb * d));
    int ok = 1;
    for (int64_t e = 0; e < na * d && ok; e++)
      ok = read_f32(f, &a[e]);
    for (int64_t e = 0; e < nb * d && ok; e++)
      ok = read_f32(f, &b[e]);
    const char *keys[6] = {"n_ot", "w2", "w1", "mmd2_rbf", "mmd2_rbf_multi", "energy"};
    double want[6];
    ok = ok && expect_tok(f, "expect");
    for (int k = 0; k < 6 && ok; k++)
      ok = expect_tok(f, keys[k]) && read_num(f, &want[k]);
    EXPECT(ok, "reference file: bad data in case %s", name);
    if (!ok) {
      free(a);
      free(b);
      break;
    }
    struct cf_metrics m;
    cf_status st = cf_metrics_compute(a, na, b, nb, d, mx, &m);
    EXPECT(st == CF_OK, "case %s: cf_metrics_compute failed: %s", name, cf_errmsg());
    if (st == CF_OK) {
      double got[6] = {(double)m.n_ot, m.w2, m.w1, m.mmd2_rbf, m.mmd2_rbf_multi, m.energy};
      for (int k = 0; k < 6; k++)
        EXPECT(rel_err(got[k], want[k]) <= 1e-6, "case %s: %s = %.17g, reference %.17g (rel %.2e)",
               name, keys[k], got[k], want[k], rel_err(got[k], want[k]));
      EXPECT(m.n_a == na && m.n_b == nb && m.dim == d, "case %s: sizes %lld %lld %lld", name,
             (long long)m.n_a, (long long)m.n_b, (long long)m.dim);
      /* The standalone functions agree with the combined pass. */
      double w2, w1;
      EXPECT(cf_wasserstein_exact(a, b, m.n_ot, d, 2, &w2) == CF_OK && w2 == m.w2,
             "case %s: standalone W2 differs", name);
      EXPECT(cf_wasserstein_exact(a, b, m.n_ot, d, 1, &w1) == CF_OK && w1 == m.w1,
             "case %s: standalone W1 differs", name);
      EXPECT(rel_err(cf_mmd2_rbf(a, na, b, nb, d, 2.0), want[3]) <= 1e-6,
             "case %s: cf_mmd2_rbf differs", name);
      EXPECT(rel_err(cf_mmd2_rbf_multi(a, na, b, nb, d), want[4]) <= 1e-6,
             "case %s: cf_mmd2_rbf_multi differs", name);
      EXPECT(rel_err(cf_energy_distance(a, na, b, nb, d), want[5]) <= 1e-6,
             "case %s: cf_energy_distance differs", name);
    }
    free(a);
    free(b);
    done++;
  }
  fclose(f);
  EXPECT(done == ncases && ncases >= 5, "reference file: checked %d of %d cases", done, ncases);
  printf("reference: %d cases checked\n", done);
}

/* ---- 2. properties ---- */

static void check_properties(void) {
  const int64_t n = 120, d = 3;
  float *a = cf_test_floats((size_t)(n * d)), *b = cf_test_floats((size_t)(n * d)),
        *c = cf_test_floats((size_t)(n * d));
  normals(a, n, d, 1, 1.0f, 0.0f);
  /* Duplicates: rows 10..19 repeat rows 0..9. */
  memcpy(a + 10 * d, a, (size_t)(10 * d) * sizeof(float));
  double w;
  for (int p = 1; p <= 2; p++) {
    EXPECT(cf_wasserstein_exact(a, a, n, d, p, &w) == CF_OK && w == 0.0, "W%d(a, a) = %g", p, w);
    EXPECT(cf_wasserstein_exact(a, a, 1, d, p, &w) == CF_OK && w == 0.0, "W%d n = 1 self", p);
  }
  struct cf_metrics m;
  EXPECT(cf_metrics_compute(a, n, a, n, d, n, &m) == CF_OK && m.w2 == 0 && m.w1 == 0 &&
             fabs(m.mmd2_rbf) < 1e-15 && fabs(m.mmd2_rbf_multi) < 1e-15 && fabs(m.energy) < 1e-13,
         "metrics(a, a) not zero: w2 %g w1 %g mmd %g multi %g energy %g", m.w2, m.w1, m.mmd2_rbf,
         m.mmd2_rbf_multi, m.energy);

  /* Translation by v: W1 = W2 = |v| (the identity matching is optimal). */
  const float v[3] = {0.75f, -1.5f, 0.25f};
  double nv = sqrt(0.75 * 0.75 + 1.5 * 1.5 + 0.25 * 0.25);
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < d; k++)
      b[i * d + k] = a[i * d + k] + v[k];
  for (int p = 1; p <= 2; p++) {
    EXPECT(cf_wasserstein_exact(a, b, n, d, p, &w) == CF_OK && rel_err(w, nv) < 1e-5,
           "W%d(a, a + v) = %.9g, |v| = %.9g", p, w, nv);
  }

  /* Permutation invariance of every metric (rows of a and of b shuffled). */
  normals(b, n, d, 2, 1.3f, 0.4f);
  struct cf_metrics m0, m1;
  EXPECT_OK(cf_metrics_compute(a, n, b, n, d, n, &m0), "metrics");
  float *pa = cf_test_floats((size_t)(n * d));
  for (int64_t i = 0; i < n; i++) {
    int64_t src = (i * 37 + 11) % n; /* 37 is coprime with 120 */
    memcpy(pa + i * d, a + src * d, (size_t)d * sizeof(float));
    memcpy(c + i * d, b + ((i * 53 + 5) % n) * d, (size_t)d * sizeof(float));
  }
  EXPECT_OK(cf_metrics_compute(pa, n, c, n, d, n, &m1), "metrics");
  EXPECT(rel_err(m1.w2, m0.w2) < 1e-12 && rel_err(m1.w1, m0.w1) < 1e-12,
         "W not permutation invariant: w2 %.17g vs %.17g, w1 %.17g vs %.17g", m1.w2, m0.w2, m1.w1,
         m0.w1);
  EXPECT(rel_err(m1.mmd2_rbf, m0.mmd2_rbf) < 1e-10 &&
             rel_err(m1.mmd2_rbf_multi, m0.mmd2_rbf_multi) < 1e-10 &&
             rel_err(m1.energy, m0.energy) < 1e-10,
         "MMD / energy not permutation invariant");
  /* Swapping the sets changes nothing either. */
  EXPECT(cf_metrics_compute(b, n, a, n, d, n, &m1) == CF_OK && rel_err(m1.w2, m0.w2) < 1e-12 &&
             rel_err(m1.energy, m0.energy) < 1e-10,
         "metrics not symmetric in (a, b)");
  free(pa);
  free(a);
  free(b);
  free(c);
}

static int cmp_float(const void *x, const void *y) {
  float p = *(const float *)x, q = *(const float *)y;
  return (p > q) - (p < q);
}

/* In one dimension the sorted matching is optimal for W1 and W2. */
static void check_1d(void) {
  const int64_t n = 500;
  float *a = cf_test_floats((size_t)n), *b = cf_test_floats((size_t)n),
        *sa = cf_test_floats((size_t)n), *sb = cf_test_floats((size_t)n);
  normals(a, n, 1, 3, 1.0f, 0.0f);
  struct cf_rng r = {.seed = 7, .domain = CF_RNG_EVAL, .step = 0, .index = 4};
  cf_rng_uniform(&r, 0, b, (size_t)n);
  for (int64_t i = 0; i < n; i++)
    b[i] = 4.0f * b[i] - 1.0f;
  for (int64_t i = 0; i < 50; i++)
    b[i + 50] = b[i]; /* ties */
  memcpy(sa, a, (size_t)n * sizeof(float));
  memcpy(sb, b, (size_t)n * sizeof(float));
  qsort(sa, (size_t)n, sizeof(float), cmp_float);
  qsort(sb, (size_t)n, sizeof(float), cmp_float);
  double s1 = 0, s2 = 0;
  for (int64_t i = 0; i < n; i++) {
    double t = (double)sa[i] - (double)sb[i];
    s1 += fabs(t);
    s2 += t * t;
  }
  double w1, w2;
  EXPECT(cf_wasserstein_exact(a, b, n, 1, 1, &w1) == CF_OK && rel_err(w1, s1 / n) < 1e-12,
         "1-D W1 %.17g, sorted matching %.17g", w1, s1 / n);
  EXPECT(cf_wasserstein_exact(a, b, n, 1, 2, &w2) == CF_OK && rel_err(w2, sqrt(s2 / n)) < 1e-12,
         "1-D W2 %.17g, sorted matching %.17g", w2, sqrt(s2 / n));
  free(a);
  free(b);
  free(sa);
  free(sb);
}

/* ---- 3. optimality against brute force ---- */

/* Minimum over all permutations of sum cost[i, perm[i]] (Heap's algorithm). */
static double brute_min(const double *cost, int n) {
  int perm[8], cnt[8] = {0};
  for (int i = 0; i < n; i++)
    perm[i] = i;
  double best = INFINITY;
  for (;;) {
    double s = 0;
    for (int i = 0; i < n; i++)
      s += cost[i * n + perm[i]];
    if (s < best) best = s;
    int i = 1;
    while (i < n && cnt[i] >= i)
      cnt[i++] = 0;
    if (i >= n) break;
    int j = (i % 2) ? cnt[i] : 0, t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
    cnt[i]++;
  }
  return best;
}

static void check_brute_force(void) {
  int checked = 0;
  /* Euclidean sets, n = 6, with and without grid ties. */
  for (int trial = 0; trial < 300; trial++) {
    const int n = 6, d = 2;
    float a[12], b[12];
    normals(a, n, d, 100 + (uint64_t)trial, 1.0f, 0.0f);
    normals(b, n, d, 1000 + (uint64_t)trial, 1.5f, 0.3f);
    if (trial % 3 == 1)
      for (int e = 0; e < n * d; e++) { /* small integer grid: ties and duplicates */
        a[e] = roundf(a[e]);
        b[e] = roundf(b[e]);
      }
    for (int p = 1; p <= 2; p++) {
      double cost[36];
      for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
          double q = 0;
          for (int k = 0; k < d; k++) {
            double t = (double)a[i * d + k] - (double)b[j * d + k];
            q += t * t;
          }
          cost[i * n + j] = p == 1 ? sqrt(q) : q;
        }
      double best = brute_min(cost, n) / n, w;
      best = p == 1 ? best : sqrt(best);
      EXPECT(cf_wasserstein_exact(a, b, n, d, p, &w) == CF_OK && fabs(w - best) <= 1e-12 * best,
             "trial %d: W%d = %.17g, brute force %.17g", trial, p, w, best);
      checked++;
    }
  }
  /* Integer cost matrices in {0..3} (heavy ties), n = 1..7, via cf_lsa_dense; and through
   * one reused workspace (cf_lsa_solve_dense), left dirty by problems of other sizes, which
   * must find the same assignment. */
  struct cf_rng r = {.seed = 7, .domain = CF_RNG_EVAL, .step = 1, .index = 0};
  struct cf_lsa ws;
  EXPECT_OK(cf_lsa_init(&ws, 7), "lsa workspace");
  for (int trial = 0; trial < 400; trial++) {
    int n = 1 + trial % 7;
    double cost[49];
    for (int e = 0; e < n * n; e++)
      cost[e] = floor(4.0 * cf_rng_uniform1(&r, (uint64_t)(trial * 64 + e)));
    if (trial % 5 == 0)
      for (int e = 0; e < n * n; e++)
        cost[e] = (double)((e / n) * (e % n)); /* rank-one structure */
    int64_t x[7];
    double total = -1;
    EXPECT_OK(cf_lsa_dense(cost, n, x, &total), "lsa_dense");
    int seen[7] = {0}, perm_ok = 1;
    double s = 0;
    for (int i = 0; i < n; i++) {
      if (x[i] < 0 || x[i] >= n || seen[x[i]]++)
        perm_ok = 0;
      else
        s += cost[i * n + x[i]];
    }
    double best = brute_min(cost, n);
    EXPECT(perm_ok && s == total && total == best,
           "lsa trial %d (n = %d): total %g, sum %g, brute force %g, permutation %d", trial, n,
           total, s, best, perm_ok);
    int64_t xw[7];
    double tw = -1, tn = -1;
    EXPECT_OK(cf_lsa_solve_dense(&ws, cost, n, xw, &tw), "lsa in a workspace");
    EXPECT(tw == total && memcmp(xw, x, (size_t)n * sizeof x[0]) == 0,
           "lsa trial %d (n = %d): the workspace's assignment differs (total %g vs %g)", trial, n,
           tw, total);
    EXPECT_OK(cf_lsa_solve_dense(&ws, cost, n, NULL, &tn), "lsa in a workspace, no result");
    EXPECT(tn == total, "lsa trial %d: total without a result array %g vs %g", trial, tn, total);
    checked++;
  }
  double big[64] = {0};
  EXPECT_FAIL_STATUS(cf_lsa_solve_dense(&ws, big, 8, NULL, NULL), CF_EINVAL, "holds up to 7",
                     "lsa problem above the workspace");
  cf_lsa_release(&ws);
  cf_lsa_release(&ws); /* idempotent */
  EXPECT(ws.block == NULL && ws.n_max == 0, "lsa workspace not cleared");
  printf("brute force: %d problems checked\n", checked);
}

/* ---- 4. bad input ---- */

static void check_bad_input(void) {
  float a[20], b[20];
  normals(a, 10, 2, 5, 1.0f, 0.0f);
  normals(b, 10, 2, 6, 1.0f, 0.0f);
  struct cf_metrics m;
  double w;
  cf_err_clear();
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 0, b, 10, 2, 100, &m), CF_EINVAL, "eval set a",
                     "na = 0");
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 10, b, 0, 2, 100, &m), CF_EINVAL, "eval set b",
                     "nb = 0");
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 10, b, 10, 0, 100, &m), CF_EINVAL, "dimension", "d = 0");
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 10, b, 10, 2, 0, &m), CF_EINVAL, "cap", "max_exact = 0");
  float keep = a[7];
  a[7] = NAN; /* row 3 */
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 10, b, 10, 2, 100, &m), CF_ECORRUPT,
                     "eval set a has NaN at row 3", "NaN in a");
  a[7] = keep;
  keep = b[18];
  b[18] = INFINITY; /* row 9 */
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 10, b, 10, 2, 100, &m), CF_ECORRUPT,
                     "eval set b has Inf at row 9", "Inf in b");
  b[18] = NAN;
  EXPECT_FAIL_STATUS(cf_metrics_compute(a, 10, b, 10, 2, 100, &m), CF_ECORRUPT,
                     "eval set b has NaN at row 9", "NaN in b");
  b[18] = keep;
  EXPECT_FAIL_STATUS(cf_wasserstein_exact(a, b, 0, 2, 2, &w), CF_EINVAL, "at least 1", "W n = 0");
  EXPECT_FAIL_STATUS(cf_wasserstein_exact(a, b, 10, 0, 2, &w), CF_EINVAL, "d >= 1", "W d = 0");
  EXPECT_FAIL_STATUS(cf_wasserstein_exact(a, b, 10, 2, 3, &w), CF_EINVAL, "expected 1 or 2",
                     "W p = 3");
  double c[4] = {0, 1, NAN, 2};
  EXPECT_FAIL_STATUS(cf_lsa_dense(c, 2, NULL, NULL), CF_EINVAL, "not finite", "lsa NaN cost");
  EXPECT(isnan(cf_mmd2_rbf(a, 0, b, 10, 2, 2.0)) && isnan(cf_energy_distance(a, 10, b, 10, 0)),
         "empty input does not give NaN");
  /* The cap: n_ot = min(na, nb, max_exact). */
  EXPECT(cf_metrics_compute(a, 10, b, 7, 2, 100, &m) == CF_OK && m.n_ot == 7, "n_ot %lld",
         (long long)m.n_ot);
  EXPECT(cf_metrics_compute(a, 10, b, 10, 2, 4, &m) == CF_OK && m.n_ot == 4, "n_ot %lld",
         (long long)m.n_ot);
}

static void bench(int64_t n, int64_t d) {
  float *a = cf_test_floats((size_t)(n * d)), *b = cf_test_floats((size_t)(n * d));
  normals(a, n, d, 11, 1.0f, 0.0f);
  normals(b, n, d, 12, 1.0f, 0.5f);
  double w2, w1, t0 = now();
  cf_status s2 = cf_wasserstein_exact(a, b, n, d, 2, &w2);
  double t1 = now();
  cf_status s1 = cf_wasserstein_exact(a, b, n, d, 1, &w1);
  double t2 = now();
  struct cf_metrics m;
  cf_status sm = cf_metrics_compute(a, n, b, n, d, n, &m);
  double t3 = now();
  EXPECT(s2 == CF_OK && s1 == CF_OK && sm == CF_OK, "bench failed: %s", cf_errmsg());
  printf("bench n=%lld d=%lld: W2 %.6f in %.3f s, W1 %.6f in %.3f s; all metrics %.3f s "
         "(mmd2 %.6g multi %.6g energy %.6g)\n",
         (long long)n, (long long)d, w2, t1 - t0, w1, t2 - t1, t3 - t2, m.mmd2_rbf,
         m.mmd2_rbf_multi, m.energy);
  free(a);
  free(b);
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--bench") == 0) {
    bench(atoll(argv[2]), atoll(argv[3]));
    return cf_test_done("test_metrics");
  }
  char path[4096];
  if (argc > 1) {
    snprintf(path, sizeof path, "%s", argv[1]);
  } else {
    const char *src = getenv("CF_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/data/metrics_ref.txt", src ? src : ".");
  }
  check_reference(path);
  EXPECT(cf_alloc_bytes() == 0, "reference: %zu bytes still held", cf_alloc_bytes());
  check_properties();
  check_1d();
  check_brute_force();
  EXPECT(cf_alloc_bytes() == 0, "properties: %zu bytes still held", cf_alloc_bytes());
  check_bad_input();
  EXPECT(cf_alloc_bytes() == 0, "bad input: %zu bytes still held", cf_alloc_bytes());
  return cf_test_done("test_metrics");
}
