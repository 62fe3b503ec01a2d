/* test_ring.c: exact causal ring attention (ring.h) against a naive double-precision attention
 * of the whole sequence, with cp = the world size (1-4 ranks).
 *
 * Every rank builds the full-sequence inputs from the same counter-based generator, computes
 * the reference forward (probabilities, output) and backward (dq, dk, dv for a random dout) in
 * double, and checks its own rows of the ring's results: relative error < 1e-5 on out, dq, dk,
 * dv and on the probability rows, probability rows summing to 1 with masked entries exactly 0
 * (every output buffer is filled with garbage first), bitwise the same results on a second
 * run, and no allocation inside forward or backward. Layouts: the balanced causal split
 * (cf_grid_cp_chunks) at several T and head sizes, a call with fewer sequences than planned,
 * one-token chunks, uneven chunks with an empty first range, striped ranges, one contiguous
 * range per rank in reverse rank order, and a rank without tokens. The reference backward
 * itself is checked by central finite differences of sum(dout * out). Bad plans: each argument
 * error is named, and a rank with bad or differing arguments fails every rank. With
 * CF_TEST_VERBOSE set, every rank prints its relative errors. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/grid.h"
#include "calmflow/mem.h"
#include "calmflow/ring.h"
#include "calmflow/rng.h"
#include "cf_test.h"

#define MAXCP 16
#define TOL 1e-5

/* ---- naive reference over the whole sequence, in double ---- */

/* qkv (B*T, 3*Hl) -> P (B, nh, T, T) (0 above the diagonal), out (B*T, Hl). */
static void ref_fwd(const double *qkv, int64_t B, int64_t T, int64_t nh, int64_t dh, double *P,
                    double *out) {
  int64_t Hl = nh * dh, ld = 3 * Hl;
  double sc = 1.0 / sqrt((double)dh);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++)
      for (int64_t i = 0; i < T; i++) {
        const double *q = qkv + (b * T + i) * ld + h * 3 * dh;
        double *p = P + ((b * nh + h) * T + i) * T, mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < T; j++) {
          p[j] = 0;
          if (j > i) continue;
          const double *k = qkv + (b * T + j) * ld + h * 3 * dh + dh;
          for (int64_t d = 0; d < dh; d++)
            p[j] += q[d] * k[d];
          p[j] *= sc;
          if (p[j] > mx) mx = p[j];
        }
        for (int64_t j = 0; j <= i; j++) {
          p[j] = exp(p[j] - mx);
          sum += p[j];
        }
        for (int64_t j = 0; j <= i; j++)
          p[j] /= sum;
        for (int64_t d = 0; d < dh; d++) {
          double o = 0;
          for (int64_t j = 0; j <= i; j++)
            o += p[j] * qkv[(b * T + j) * ld + h * 3 * dh + 2 * dh + d];
          out[(b * T + i) * Hl + h * dh + d] = o;
        }
      }
}

/* dqkv (B*T, 3*Hl) from P and dout (B*T, Hl): dP = dO V^T, D = rowsum(P dP), dS = P (dP - D),
 * dq = dS K / sqrt(dh), dk = dS^T Q / sqrt(dh), dv = P^T dO. */
static void ref_bwd(const double *qkv, const double *P, const double *dout, int64_t B, int64_t T,
                    int64_t nh, int64_t dh, double *dqkv, double *dp /* (T) scratch */) {
  int64_t Hl = nh * dh, ld = 3 * Hl;
  double sc = 1.0 / sqrt((double)dh);
  memset(dqkv, 0, (size_t)(B * T * ld) * sizeof(double));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++)
      for (int64_t i = 0; i < T; i++) {
        const double *p = P + ((b * nh + h) * T + i) * T, *g = dout + (b * T + i) * Hl + h * dh;
        const double *q = qkv + (b * T + i) * ld + h * 3 * dh;
        double D = 0;
        for (int64_t j = 0; j <= i; j++) {
          const double *v = qkv + (b * T + j) * ld + h * 3 * dh + 2 * dh;
          dp[j] = 0;
          for (int64_t d = 0; d < dh; d++)
            dp[j] += g[d] * v[d];
          D += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= i; j++) {
          const double *k = qkv + (b * T + j) * ld + h * 3 * dh + dh;
          double ds = p[j] * (dp[j] - D);
          double *dq = dqkv + (b * T + i) * ld + h * 3 * dh;
          double *dk = dqkv + (b * T + j) * ld + h * 3 * dh + dh, *dv = dk + dh;
          for (int64_t d = 0; d < dh; d++) {
            dq[d] += sc * ds * k[d];
            dk[d] += sc * ds * q[d];
            dv[d] += p[j] * g[d];
          }
        }
      }
}

/* sum(dout * out) of the reference forward at qkv. */
static double ref_loss(const double *qkv, const double *dout, int64_t B, int64_t T, int64_t nh,
                       int64_t dh, double *P, double *out) {
  ref_fwd(qkv, B, T, nh, dh, P, out);
  double s = 0;
  for (int64_t e = 0; e < B * T * nh * dh; e++)
    s += dout[e] * out[e];
  return s;
}

/* ---- layouts: lo, hi (cp, 2) ---- */

/* Rank c owns chunks c and 2cp-1-c of 2cp chunks with the given sizes. */
static int64_t from_chunks(int cp, const int64_t *size, int striped, int64_t *lo, int64_t *hi) {
  int64_t start[2 * MAXCP + 1];
  start[0] = 0;
  for (int x = 0; x < 2 * cp; x++)
    start[x + 1] = start[x] + size[x];
  for (int c = 0; c < cp; c++) {
    int a = c, b = striped ? c + cp : 2 * cp - 1 - c;
    lo[2 * c] = start[a];
    hi[2 * c] = start[a + 1];
    lo[2 * c + 1] = start[b];
    hi[2 * c + 1] = start[b + 1];
  }
  return start[2 * cp];
}

/* One contiguous block per rank, blocks in reverse rank order (rank cp-1 first), sizes uneven;
 * even ranks hold it as their first range, odd ranks as their second. Rank `none` gets an
 * empty block (-1: nobody). */
static int64_t reversed_blocks(int cp, int none, int64_t *lo, int64_t *hi) {
  int64_t t = 0;
  for (int c = cp - 1; c >= 0; c--) {
    int64_t n = c == none ? 0 : 5 + 3 * c + (cp == 1 ? 20 : 0);
    int k = c % 2;
    lo[2 * c + k] = t;
    hi[2 * c + k] = t + n;
    lo[2 * c + 1 - k] = hi[2 * c + 1 - k] = k ? 0 : t + n;
    t += n;
  }
  return t;
}

/* ---- one case ---- */

static double max_abs(double m, double x) {
  return fabs(x) > m ? fabs(x) : m;
}

static void run_case(MPI_Comm comm, const char *name, int64_t T, const int64_t *lo,
                     const int64_t *hi, int64_t B, int64_t maxB, int64_t nh, int64_t dh,
                     uint64_t seed) {
  int cp, rank;
  MPI_Comm_size(comm, &cp);
  MPI_Comm_rank(comm, &rank);
  int64_t Hl = nh * dh, ld = 3 * Hl;

  /* full-sequence inputs: q, k with a larger spread so the softmax is peaked */
  struct cf_rng g = {.seed = seed, .domain = CF_RNG_DATA, .step = 1, .index = 0};
  struct cf_rng gd = {.seed = seed, .domain = CF_RNG_DATA, .step = 2, .index = 0};
  float *qkv_f = cf_test_floats((size_t)(B * T * ld)),
        *dout_f = cf_test_floats((size_t)(B * T * Hl));
  double *qkv = calloc((size_t)(B * T * ld), sizeof(double));
  double *dout = calloc((size_t)(B * T * Hl), sizeof(double));
  double *P = calloc((size_t)(B * nh * T * T), sizeof(double));
  double *P2 = calloc((size_t)(B * nh * T * T), sizeof(double));
  double *out = calloc((size_t)(B * T * Hl), sizeof(double));
  double *out2 = calloc((size_t)(B * T * Hl), sizeof(double));
  double *dqkv = calloc((size_t)(B * T * ld), sizeof(double));
  double *dp = calloc((size_t)T, sizeof(double));
  if (!qkv || !dout || !P || !P2 || !out || !out2 || !dqkv || !dp) {
    printf("FAIL: out of memory in the test\n");
    exit(2);
  }
  for (int64_t e = 0; e < B * T * ld; e++) {
    int64_t col = e % ld, part = (col % (3 * dh)) / dh; /* 0 q, 1 k, 2 v */
    qkv_f[e] = (part < 2 ? 1.6f : 1.0f) * cf_rng_normal1(&g, (uint64_t)e);
    qkv[e] = qkv_f[e];
  }
  for (int64_t e = 0; e < B * T * Hl; e++) {
    dout_f[e] = cf_rng_normal1(&gd, (uint64_t)e);
    dout[e] = dout_f[e];
  }
  ref_fwd(qkv, B, T, nh, dh, P, out);
  ref_bwd(qkv, P, dout, B, T, nh, dh, dqkv, dp);

  /* the reference backward against central differences of sum(dout * out) */
  if (rank == 0) {
    double gmax = 0;
    for (int64_t e = 0; e < B * T * ld; e++)
      gmax = max_abs(gmax, dqkv[e]);
    int64_t picks[][3] = {{0, 0, 0},     {0, T - 1, 1}, {B - 1, T / 2, 2},
                          {B - 1, 1, 4}, {0, 2, 3},     {B - 1, T - 2, 5},
                          {0, T - 1, 7}, {0, 0, 5},     {B - 1, T / 3, 8}};
    for (size_t n = 0; n < sizeof picks / sizeof picks[0]; n++) {
      int64_t col = picks[n][2] % 3 * dh + picks[n][2] / 3 % dh + (nh - 1) * 3 * dh;
      int64_t e = (picks[n][0] * T + picks[n][1]) * ld + col;
      double keep = qkv[e], eps = 1e-5;
      qkv[e] = keep + eps;
      double lp = ref_loss(qkv, dout, B, T, nh, dh, P2, out2);
      qkv[e] = keep - eps;
      double lm = ref_loss(qkv, dout, B, T, nh, dh, P2, out2);
      qkv[e] = keep;
      double fd = (lp - lm) / (2 * eps);
      EXPECT(fabs(fd - dqkv[e]) <= 1e-6 * gmax,
             "%s: reference dqkv[%lld] = %.9g, finite "
             "difference %.9g",
             name, (long long)e, dqkv[e], fd);
    }
  }

  struct cf_ring r;
  size_t held = cf_alloc_bytes();
  EXPECT_OK(cf_ring_init(&r, comm, T, lo, hi, maxB, nh, dh), name);
  int64_t Tl = cf_ring_local_tokens(&r);
  int64_t want_tl = hi[2 * rank] - lo[2 * rank] + hi[2 * rank + 1] - lo[2 * rank + 1];
  EXPECT(Tl == want_tl, "%s: %lld local tokens, expected %lld", name, (long long)Tl,
         (long long)want_tl);
  if (Tl > 256) {
    printf("FAIL: %s: the test handles at most 256 local tokens\n", name);
    exit(2);
  }
  int64_t pos[256];
  int64_t n = 0;
  for (int k = 0; k < 2; k++)
    for (int64_t t = lo[2 * rank + k]; t < hi[2 * rank + k] && n < 256; t++)
      pos[n++] = t;

  size_t nqkv = (size_t)(B * Tl * ld), nout = (size_t)(B * Tl * Hl), np = (size_t)(B * nh * Tl * T);
  float *lq = cf_test_floats(nqkv), *ldo = cf_test_floats(nout);
  float *lp = cf_test_floats(np), *lo_ = cf_test_floats(nout), *ldq = cf_test_floats(nqkv);
  float *lp2 = cf_test_floats(np), *lo2 = cf_test_floats(nout), *ldq2 = cf_test_floats(nqkv);
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < Tl; i++) {
      memcpy(lq + (b * Tl + i) * ld, qkv_f + (b * T + pos[i]) * ld, (size_t)ld * sizeof(float));
      memcpy(ldo + (b * Tl + i) * Hl, dout_f + (b * T + pos[i]) * Hl, (size_t)Hl * sizeof(float));
    }
  for (size_t e = 0; e < np; e++)
    lp[e] = lp2[e] = 12345.0f; /* garbage the forward must overwrite everywhere */
  for (size_t e = 0; e < nout; e++)
    lo_[e] = lo2[e] = -777.0f;
  for (size_t e = 0; e < nqkv; e++)
    ldq[e] = ldq2[e] = 999.0f;

  uint64_t a0 = cf_alloc_count();
  EXPECT_OK(cf_ring_attn_fwd(&r, B, lq, lp, lo_), name);
  EXPECT_OK(cf_ring_attn_bwd(&r, B, lq, lp, lo_, ldo, ldq), name);
  EXPECT(cf_alloc_count() == a0, "%s: forward/backward allocated %llu blocks", name,
         (unsigned long long)(cf_alloc_count() - a0));

  /* out and dq, dk, dv: relative to the largest reference entry of this rank's rows */
  double e_out = 0, m_out = 0, e_d[3] = {0, 0, 0}, m_d[3] = {0, 0, 0}, e_p = 0, e_sum = 0;
  int64_t masked_bad = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < Tl; i++) {
      int64_t t = pos[i];
      for (int64_t c = 0; c < Hl; c++) {
        double ref = out[(b * T + t) * Hl + c];
        m_out = max_abs(m_out, ref);
        e_out = max_abs(e_out, lo_[(b * Tl + i) * Hl + c] - ref);
      }
      for (int64_t c = 0; c < ld; c++) {
        int part = (int)((c % (3 * dh)) / dh);
        double ref = dqkv[(b * T + t) * ld + c];
        m_d[part] = max_abs(m_d[part], ref);
        e_d[part] = max_abs(e_d[part], ldq[(b * Tl + i) * ld + c] - ref);
      }
      for (int64_t h = 0; h < nh; h++) {
        const float *pr = lp + ((b * nh + h) * Tl + i) * T;
        const double *rr = P + ((b * nh + h) * T + t) * T;
        double s = 0;
        for (int64_t j = 0; j < T; j++) {
          s += pr[j];
          e_p = max_abs(e_p, pr[j] - rr[j]);
          if (j > t && pr[j] != 0.0f) masked_bad++;
        }
        e_sum = max_abs(e_sum, s - 1.0);
      }
    }
  if (getenv("CF_TEST_VERBOSE") && Tl > 0)
    printf("[rank %d] %s: relative error out %.2g dq %.2g dk %.2g dv %.2g; P %.2g, row sum %.2g\n",
           rank, name, e_out / m_out, e_d[0] / m_d[0], e_d[1] / m_d[1], e_d[2] / m_d[2], e_p,
           e_sum);
  if (Tl > 0) {
    EXPECT(e_out <= TOL * m_out, "%s: out max error %.3g, relative %.3g", name, e_out,
           e_out / m_out);
    const char *pn[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; part++)
      EXPECT(e_d[part] <= TOL * m_d[part], "%s: %s max error %.3g, relative %.3g", name, pn[part],
             e_d[part], e_d[part] / m_d[part]);
    EXPECT(e_p <= TOL, "%s: probabilities max error %.3g", name, e_p);
    EXPECT(e_sum <= TOL, "%s: a probability row sums to 1 %+.3g", name, e_sum);
    EXPECT(masked_bad == 0, "%s: %lld masked probabilities are not 0", name, (long long)masked_bad);
  }

  /* a second run gives bitwise the same results */
  EXPECT_OK(cf_ring_attn_fwd(&r, B, lq, lp2, lo2), name);
  EXPECT_OK(cf_ring_attn_bwd(&r, B, lq, lp2, lo2, ldo, ldq2), name);
  EXPECT(memcmp(lp, lp2, np * sizeof(float)) == 0 && memcmp(lo_, lo2, nout * sizeof(float)) == 0 &&
             memcmp(ldq, ldq2, nqkv * sizeof(float)) == 0,
         "%s: a second run differs", name);

  cf_ring_release(&r);
  EXPECT(r.lo == NULL && r.blk[0] == NULL, "%s: release left buffers", name);
  cf_ring_release(&r); /* idempotent */
  EXPECT(cf_alloc_bytes() == held, "%s: release left %zu bytes", name, cf_alloc_bytes() - held);
  free(qkv_f);
  free(dout_f);
  free(qkv);
  free(dout);
  free(P);
  free(P2);
  free(out);
  free(out2);
  free(dqkv);
  free(dp);
  free(lq);
  free(ldo);
  free(lp);
  free(lo_);
  free(ldq);
  free(lp2);
  free(lo2);
  free(ldq2);
}

/* ---- bad plans ---- */

static void bad_plans(MPI_Comm comm) {
  int cp, rank;
  MPI_Comm_size(comm, &cp);
  MPI_Comm_rank(comm, &rank);
  int64_t lo[2 * MAXCP], hi[2 * MAXCP], T = 20;
  struct cf_ring r;
  for (int c = 0; c < cp; c++)
    cf_grid_cp_chunks(cp, c, T, lo + 2 * c, hi + 2 * c);

  EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, lo, hi, 2, 2, 0), CF_EINVAL, "must be >= 1",
                     "dh = 0");
  EXPECT(r.lo == NULL && r.comm == MPI_COMM_NULL, "failed init left a plan");
  hi[1] = T + 1; /* rank 0's second range (the last chunk) ends past T */
  EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, lo, hi, 2, 2, 4), CF_EINVAL, "0 <= lo <= hi <= T",
                     "range past T");
  hi[1] = T;
  lo[0] = 1; /* token 0 owned by nobody */
  EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, lo, hi, 2, 2, 4), CF_EINVAL, "exactly once",
                     "uncovered token");
  lo[0] = 0;
  hi[0]++; /* rank 0's first range runs into the next chunk (or, at cp 1, its second range) */
  EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, lo, hi, 2, 2, 4), CF_EINVAL,
                     cp == 1 ? "does not come before" : "overlap", "overlapping ranges");
  for (int c = 0; c < cp; c++)
    cf_grid_cp_chunks(cp, c, T, lo + 2 * c, hi + 2 * c);
  int64_t l2[2 * MAXCP], h2[2 * MAXCP];
  memcpy(l2, lo, sizeof lo);
  memcpy(h2, hi, sizeof hi);
  l2[0] = lo[1], h2[0] = hi[1], l2[1] = lo[0], h2[1] = hi[0]; /* rank 0's ranges swapped */
  EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, l2, h2, 2, 2, 4), CF_EINVAL, "does not come before",
                     "ranges in the wrong order");

  if (cp > 1) {
    /* one rank bad: it names its error, the others that another rank failed */
    EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, lo, hi, 2, 2, rank == 1 ? 0 : 4), CF_EINVAL,
                       rank == 1 ? "must be >= 1" : "another rank", "one rank with dh = 0");
    /* every rank fine on its own, but they disagree */
    EXPECT_FAIL_STATUS(cf_ring_init(&r, comm, T, lo, hi, 2, 2, rank == cp - 1 ? 8 : 4), CF_EINVAL,
                       "differ across", "ranks with different dh");
  }

  /* more sequences than planned */
  EXPECT_OK(cf_ring_init(&r, comm, T, lo, hi, 1, 1, 4), "plan for B = 1");
  float x[1] = {0};
  EXPECT_FAIL_STATUS(cf_ring_attn_fwd(&r, 2, x, x, x), CF_EINVAL, "the plan allows 1..1",
                     "forward with B = 2");
  EXPECT_FAIL_STATUS(cf_ring_attn_bwd(&r, 0, x, x, x, x, x), CF_EINVAL, "the plan allows 1..1",
                     "backward with B = 0");
  cf_ring_release(&r);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int cp, rank;
  MPI_Comm_size(MPI_COMM_WORLD, &cp);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  cf_test_rank = rank;
  if (cp > MAXCP) {
    if (rank == 0) printf("test_ring: at most %d ranks\n", MAXCP);
    MPI_Finalize();
    return 1;
  }
  int64_t lo[2 * MAXCP], hi[2 * MAXCP], size[2 * MAXCP];

  /* balanced causal split at several T and head sizes; one call with B < max_B */
  const int64_t Ts[] = {21, 40, 29};
  const int64_t dhs[] = {4, 8, 8};
  const int64_t Bs[] = {2, 2, 1};
  for (int n = 0; n < 3; n++) {
    char name[64];
    for (int c = 0; c < cp; c++)
      cf_grid_cp_chunks(cp, c, Ts[n], lo + 2 * c, hi + 2 * c);
    snprintf(name, sizeof name, "balanced T=%lld dh=%lld B=%lld", (long long)Ts[n],
             (long long)dhs[n], (long long)Bs[n]);
    run_case(MPI_COMM_WORLD, name, Ts[n], lo, hi, Bs[n], 2, 2, dhs[n], 100 + (uint64_t)n);
  }

  /* tiny: T = 2cp + 1, so most ranges hold one token (a range is its own diagonal block) */
  for (int c = 0; c < cp; c++)
    cf_grid_cp_chunks(cp, c, 2 * cp + 1, lo + 2 * c, hi + 2 * c);
  run_case(MPI_COMM_WORLD, "one-token chunks", 2 * cp + 1, lo, hi, 2, 2, 2, 4, 6);

  /* uneven chunks, chunk 0 empty: rank 0's first range is empty */
  int64_t q = 32 / (2 * cp - 1);
  size[0] = 0;
  for (int x = 1; x < 2 * cp; x++)
    size[x] = q + (x * 5) % 3 - 1;
  int64_t T = from_chunks(cp, size, 0, lo, hi);
  run_case(MPI_COMM_WORLD, "uneven chunks, empty first range", T, lo, hi, 2, 2, 2, 8, 7);

  /* striped: rank c owns chunks c and c + cp of uneven chunks */
  for (int x = 0; x < 2 * cp; x++)
    size[x] = 2 + (x * 7) % 5 + (cp == 1 ? 12 : 0);
  T = from_chunks(cp, size, 1, lo, hi);
  run_case(MPI_COMM_WORLD, "striped chunks", T, lo, hi, 2, 2, 2, 4, 8);

  /* one contiguous block per rank, in reverse rank order */
  T = reversed_blocks(cp, -1, lo, hi);
  run_case(MPI_COMM_WORLD, "reversed contiguous blocks", T, lo, hi, 2, 2, 2, 8, 9);

  /* a rank without tokens */
  if (cp > 1) {
    T = reversed_blocks(cp, 1, lo, hi);
    run_case(MPI_COMM_WORLD, "rank 1 without tokens", T, lo, hi, 2, 2, 2, 4, 10);
  }

  bad_plans(MPI_COMM_WORLD);

  MPI_Allreduce(MPI_IN_PLACE, &cf_test_fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  int rc = cf_test_done("test_ring");
  MPI_Finalize();
  return rc;
}
