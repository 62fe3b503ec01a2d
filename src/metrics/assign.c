/* assign.c: exact linear sum assignment (dense, shortest augmenting paths) and
 * the exact W1/W2 distances built on it.
 *
 * The solver follows the Jonker-Volgenant plan: column reduction, reduction
 * transfer, two passes of augmenting row reduction (capped: on Euclidean costs it
 * turns into a long price war), then one Dijkstra shortest augmenting path per
 * remaining free row, with column potentials v. Row potentials are implicit:
 * u_i = c(i, x_i) - v(x_i) for an assigned row, and every step keeps
 * c(i, j) - v(j) >= u_i for all j and all assigned rows i (dual feasibility), so
 * the final assignment is optimal. All arithmetic is double.
 *
 * Layout: the solver works on column *positions*. Every per-column array (v, the
 * path labels, the owner row, and the provider's copy of the b points) is kept
 * in one common order, and Dijkstra swaps a column into the "done" prefix when it
 * settles it, so the unsettled columns are always the contiguous tail [lo, n).
 * The hot loop (compute a cost row on the tail, relax, take the minimum) is then
 * unit-stride and vectorizes. Costs are produced on demand by a provider, which
 * lets W1/W2 compute ||a_i - b_j||^p on the fly in O(n d) memory.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "calmflow/mem.h"
#include "calmflow/metrics.h"

/* Two-lane double / int64 vectors (GCC and Clang vector extensions; plain SSE2 on
 * x86-64). The relax loop is written with them because GCC otherwise compiles the
 * conditional updates into unpredictable branches. */
typedef double cf_v2d __attribute__((vector_size(16)));
typedef int64_t cf_v2i __attribute__((vector_size(16)));

static inline cf_v2d cf_ld2(const double *p) {
  cf_v2d r;
  memcpy(&r, p, sizeof r);
  return r;
}
static inline cf_v2i cf_ld2i(const int64_t *p) {
  cf_v2i r;
  memcpy(&r, p, sizeof r);
  return r;
}
static inline void cf_st2(double *p, cf_v2d a) {
  memcpy(p, &a, sizeof a);
}
static inline void cf_st2i(int64_t *p, cf_v2i a) {
  memcpy(p, &a, sizeof a);
}
/* m ? a : b lane by lane (m lanes all ones or all zeros). */
static inline cf_v2d cf_sel(cf_v2i m, cf_v2d a, cf_v2d b) {
  return (cf_v2d)((m & (cf_v2i)a) | (~m & (cf_v2i)b));
}
static inline cf_v2i cf_seli(cf_v2i m, cf_v2i a, cf_v2i b) {
  return (m & a) | (~m & b);
}

/* Lane-wise square root of non-negative values. */
static inline cf_v2d cf_sqrt2(cf_v2d q) {
#if defined(__SSE2__)
  return (cf_v2d)_mm_sqrt_pd((__m128d)q);
#elif defined(__aarch64__)
  return (cf_v2d)vsqrtq_f64((float64x2_t)q);
#else
  cf_v2d r = {sqrt(q[0]), sqrt(q[1])};
  return r;
#endif
}

/* out[p] = sqrt(out[p]) on [lo, hi) for non-negative values, two lanes at a time
 * where the target has a vector square root (GCC keeps libm sqrt scalar for errno). */
static void cf_sqrt_range(double *out, int64_t lo, int64_t hi) {
  int64_t p = lo;
#if defined(__SSE2__)
  for (; p + 2 <= hi; p += 2)
    _mm_storeu_pd(out + p, _mm_sqrt_pd(_mm_loadu_pd(out + p)));
#elif defined(__aarch64__)
  for (; p + 2 <= hi; p += 2)
    vst1q_f64(out + p, vsqrtq_f64(vld1q_f64(out + p)));
#endif
  for (; p < hi; p++)
    out[p] = sqrt(out[p]);
}

/* Cost provider.
 *   range: out[p] = c(i, column at position p) for p in [lo, hi); colid maps
 *          positions to original columns.
 *   swap:  (may be NULL) mirror a swap of positions p and q.
 *   relax: (may be NULL) the fused form of range + lsa_relax below on [lo, n). */
struct lsa_cost {
  void *ctx;
  void (*range)(void *ctx, int64_t i, const int64_t *colid, int64_t lo, int64_t hi, double *out);
  void (*swap)(void *ctx, int64_t p, int64_t q);
  int64_t (*relax)(void *ctx, int64_t i, int64_t lo, const double *v, double h, double *dist,
                   int64_t *pred, double *mn);
};

struct lsa_work {
  int64_t n;
  const struct lsa_cost *c;
  double *v;      /* (n) column potentials, by position */
  double *dist;   /* (n) shortest-path labels, by position */
  double *row;    /* (n) current cost row, by position */
  int64_t *colid; /* (n) original column at each position */
  int64_t *y;     /* (n) row owning the column at each position, -1 free */
  int64_t *pred;  /* (n) predecessor row of each position on the path tree */
  int64_t *x;     /* (n) position of the column of each row, -1 free */
  int64_t *free;  /* (n) free rows */
  void *block;
};

/* Bytes of one workspace array for problems up to size n, rounded to a cache line. */
static cf_status lsa_array_bytes(int64_t n, size_t *per) {
  CF_TRY(cf_mul_size(per, (size_t)n, sizeof(double), "assignment workspace"));
  *per = (*per + 63) & ~(size_t)63;
  return CF_OK;
}

/* Lay the solver's eight arrays for a problem of size n over block (arrays of per bytes). */
static void lsa_work_bind(struct lsa_work *w, int64_t n, const struct lsa_cost *c, void *block,
                          size_t per) {
  memset(w, 0, sizeof *w);
  char *p = block;
  w->n = n;
  w->c = c;
  w->v = (double *)p;
  w->dist = (double *)(p + per);
  w->row = (double *)(p + 2 * per);
  w->colid = (int64_t *)(p + 3 * per);
  w->y = (int64_t *)(p + 4 * per);
  w->pred = (int64_t *)(p + 5 * per);
  w->x = (int64_t *)(p + 6 * per);
  w->free = (int64_t *)(p + 7 * per);
  for (int64_t j = 0; j < n; j++)
    w->colid[j] = j;
}

static cf_status lsa_work_init(struct lsa_work *w, int64_t n, const struct lsa_cost *c) {
  size_t per, bytes;
  void *block = NULL;
  CF_TRY(lsa_array_bytes(n, &per));
  CF_TRY(cf_mul_size(&bytes, per, 8, "assignment workspace"));
  CF_TRY(cf_alloc(&block, bytes, "assignment solver workspace"));
  lsa_work_bind(w, n, c, block, per);
  w->block = block;
  return CF_OK;
}

static void lsa_work_release(struct lsa_work *w) {
  cf_free(&w->block);
  memset(w, 0, sizeof *w);
}

static void lsa_row(struct lsa_work *w, int64_t i, int64_t lo) {
  w->c->range(w->c->ctx, i, w->colid, lo, w->n, w->row);
}

/* Exchange the columns at positions p and q in every per-position array. */
static void lsa_swap(struct lsa_work *w, int64_t p, int64_t q) {
  if (p == q) return;
#define CF_SWAP_(T, a)                                                                             \
  do {                                                                                             \
    T t_ = (a)[p];                                                                                 \
    (a)[p] = (a)[q];                                                                               \
    (a)[q] = t_;                                                                                   \
  } while (0)
  CF_SWAP_(double, w->v);
  CF_SWAP_(double, w->dist);
  CF_SWAP_(int64_t, w->colid);
  CF_SWAP_(int64_t, w->y);
  CF_SWAP_(int64_t, w->pred);
#undef CF_SWAP_
  if (w->y[p] >= 0) w->x[w->y[p]] = p;
  if (w->y[q] >= 0) w->x[w->y[q]] = q;
  if (w->c->swap) w->c->swap(w->c->ctx, p, q);
}

/* Column reduction and reduction transfer; returns the number of free rows, listed in w->free. */
static int64_t lsa_init_duals(struct lsa_work *w) {
  int64_t n = w->n;
  double *v = w->v, *row = w->row;
  int64_t *x = w->x, *y = w->y, *multi = w->pred;
  for (int64_t j = 0; j < n; j++) {
    v[j] = INFINITY;
    y[j] = -1;
  }
  /* v_j = min_i c(i, j); y_j = the first row attaining it. */
  for (int64_t i = 0; i < n; i++) {
    lsa_row(w, i, 0);
    for (int64_t j = 0; j < n; j++)
      if (row[j] < v[j]) {
        v[j] = row[j];
        y[j] = i;
      }
  }
  for (int64_t i = 0; i < n; i++) {
    x[i] = -1;
    multi[i] = 0;
  }
  /* A row that is the minimum of several columns keeps one of them. */
  for (int64_t j = n - 1; j >= 0; j--) {
    int64_t i = y[j];
    if (x[i] < 0) {
      x[i] = j;
    } else {
      y[j] = -1;
      multi[i] = 1;
    }
  }
  /* Reduction transfer: lower v at a singly assigned row's column until the row
   * has a tie, which leaves room for augmenting row reduction. */
  int64_t nfree = 0;
  for (int64_t i = 0; i < n; i++) {
    if (x[i] < 0) {
      w->free[nfree++] = i;
      continue;
    }
    if (multi[i] || n == 1) continue;
    lsa_row(w, i, 0);
    int64_t j1 = x[i];
    double mu = INFINITY;
    for (int64_t j = 0; j < n; j++)
      if (j != j1 && row[j] - v[j] < mu) mu = row[j] - v[j];
    v[j1] -= mu;
  }
  return nfree;
}

/* Augmenting row reduction: each free row takes its cheapest column (lowering that
 * column's potential to its second-cheapest reduced cost) and displaces the owner. */
static int64_t lsa_row_reduction(struct lsa_work *w, int64_t nfree) {
  int64_t n = w->n;
  double *v = w->v, *row = w->row;
  int64_t *x = w->x, *y = w->y, *fr = w->free;
  for (int pass = 0; pass < 2 && nfree > 0; pass++) {
    int64_t k = 0, prv = nfree, iters = 0, cap = 4 * n + 16;
    nfree = 0;
    while (k < prv) {
      if (iters++ >= cap) { /* stop here; the remaining rows stay free */
        while (k < prv)
          fr[nfree++] = fr[k++];
        break;
      }
      int64_t i = fr[k++];
      lsa_row(w, i, 0);
      double u1 = row[0] - v[0], u2 = INFINITY;
      int64_t j1 = 0, j2 = -1;
      for (int64_t j = 1; j < n; j++) {
        double h = row[j] - v[j];
        if (h < u2) {
          if (h >= u1) {
            u2 = h;
            j2 = j;
          } else {
            u2 = u1;
            j2 = j1;
            u1 = h;
            j1 = j;
          }
        }
      }
      int64_t i0 = y[j1];
      int strict = u1 < u2;
      if (strict)
        v[j1] -= u2 - u1;
      else if (i0 >= 0) {
        j1 = j2;
        i0 = y[j2];
      }
      x[i] = j1;
      y[j1] = i;
      if (i0 >= 0) {
        x[i0] = -1;
        if (strict)
          fr[--k] = i0; /* retry the displaced row at once */
        else
          fr[nfree++] = i0;
      }
    }
  }
  return nfree;
}

/* Ties between smallest labels go to the highest position: free columns are kept at
 * the end of the position order (lsa_free_last), so a free column that ties for the
 * minimum ends the search at once. Fold two lanes (m, k) into (best, at). */
static inline void lsa_pick(cf_v2d m, cf_v2i k, double *best, int64_t *at) {
  for (int l = 0; l < 2; l++)
    if (m[l] < *best || (m[l] == *best && k[l] > *at)) {
      *best = m[l];
      *at = k[l];
    }
}

/* Move the free columns to the end of the position order. */
static void lsa_free_last(struct lsa_work *w) {
  int64_t p = 0, q = w->n - 1;
  for (;;) {
    while (p < q && w->y[p] >= 0)
      p++;
    while (p < q && w->y[q] < 0)
      q--;
    if (p >= q) break;
    lsa_swap(w, p, q);
  }
}

/* Relax the unsettled tail [lo, n) through row i (h = its offset): where
 * row[p] - v[p] - h < dist[p], lower dist[p] and set pred[p] = i. Returns the
 * position of a smallest label on the tail (the highest among ties) and that label in *mn. */
static int64_t lsa_relax(int64_t lo, int64_t n, const double *row, const double *v, double h,
                         int64_t i, double *dist, int64_t *pred, double *mn) {
  const cf_v2d hv = {h, h}, inf = {INFINITY, INFINITY};
  const cf_v2i iv = {i, i}, four = {4, 4};
  cf_v2d m0 = inf, m1 = inf;
  cf_v2i k0 = {lo, lo}, k1 = {lo, lo}, pos0 = {lo, lo + 1}, pos1 = {lo + 2, lo + 3};
  int64_t p = lo;
  for (; p + 4 <= n; p += 4) {
    cf_v2d c0 = cf_ld2(row + p) - cf_ld2(v + p) - hv, d0 = cf_ld2(dist + p);
    cf_v2d c1 = cf_ld2(row + p + 2) - cf_ld2(v + p + 2) - hv, d1 = cf_ld2(dist + p + 2);
    cf_v2i b0 = c0 < d0, b1 = c1 < d1;
    d0 = cf_sel(b0, c0, d0);
    d1 = cf_sel(b1, c1, d1);
    cf_st2(dist + p, d0);
    cf_st2(dist + p + 2, d1);
    cf_st2i(pred + p, cf_seli(b0, iv, cf_ld2i(pred + p)));
    cf_st2i(pred + p + 2, cf_seli(b1, iv, cf_ld2i(pred + p + 2)));
    cf_v2i l0 = d0 <= m0, l1 = d1 <= m1;
    m0 = cf_sel(l0, d0, m0);
    m1 = cf_sel(l1, d1, m1);
    k0 = cf_seli(l0, pos0, k0);
    k1 = cf_seli(l1, pos1, k1);
    pos0 += four;
    pos1 += four;
  }
  double best = INFINITY;
  int64_t at = lo;
  lsa_pick(m0, k0, &best, &at);
  lsa_pick(m1, k1, &best, &at);
  for (; p < n; p++) {
    double c = row[p] - v[p] - h;
    if (c < dist[p]) {
      dist[p] = c;
      pred[p] = i;
    }
    if (dist[p] <= best) best = dist[p], at = p;
  }
  *mn = best;
  return at;
}

/* Relax [lo, n) through row i with offset h, fused when the provider can. */
static int64_t lsa_scan(struct lsa_work *w, int64_t i, int64_t lo, double h, double *mn) {
  const struct lsa_cost *c = w->c;
  if (c->relax) return c->relax(c->ctx, i, lo, w->v, h, w->dist, w->pred, mn);
  lsa_row(w, i, lo);
  return lsa_relax(lo, w->n, w->row, w->v, h, i, w->dist, w->pred, mn);
}

/* One shortest augmenting path from free row f (Dijkstra on reduced costs, one
 * column settled per step), then the potential update and the flip along the path. */
static cf_status lsa_augment(struct lsa_work *w, int64_t f) {
  int64_t n = w->n;
  double *v = w->v, *dist = w->dist, *row = w->row;
  int64_t *x = w->x, *y = w->y, *pred = w->pred;
  for (int64_t p = 0; p < n; p++)
    dist[p] = INFINITY;
  double mn;
  int64_t pm = lsa_scan(w, f, 0, 0.0, &mn), lo = 0, end;
  /* Positions [0, lo) are settled; pm holds the smallest label mn on [lo, n). */
  for (;;) {
    /* Unreachable with finite costs (a free column always remains); a guard, not a check. */
    CF_CHECK(pm < n && isfinite(mn), CF_ENUM,
             "assignment solver: no augmenting path from row %lld (non-finite costs?)",
             (long long)f);
    lsa_swap(w, pm, lo);
    int64_t p1 = lo++, i = y[p1];
    if (i < 0) {
      end = p1;
      break;
    }
    w->c->range(w->c->ctx, i, w->colid, p1, p1 + 1, row);
    double h = row[p1] - v[p1] - mn;
    pm = lsa_scan(w, i, lo, h, &mn);
  }
  mn = dist[end];
  for (int64_t p = 0; p < lo; p++)
    v[p] += dist[p] - mn;
  int64_t p = end, i, steps = 0;
  do {
    CF_CHECK(steps++ < n, CF_ENUM, "assignment solver: augmenting path from row %lld does not end",
             (long long)f);
    i = pred[p];
    y[p] = i;
    int64_t t = x[i];
    x[i] = p;
    p = t;
  } while (i != f);
  return CF_OK;
}

/* Run the solver on a bound workspace; col_of_row (n) receives the assignment. */
static cf_status lsa_run(struct lsa_work *w, int64_t *col_of_row) {
  int64_t nfree = lsa_init_duals(w);
  nfree = lsa_row_reduction(w, nfree);
  for (int64_t k = 0; k < nfree; k++) {
    lsa_free_last(w);
    CF_TRY(lsa_augment(w, w->free[k]));
  }
  for (int64_t i = 0; i < w->n; i++)
    col_of_row[i] = w->colid[w->x[i]];
  return CF_OK;
}

/* Solve with costs from c in a workspace of its own; col_of_row (n) receives the assignment. */
static cf_status lsa_solve(int64_t n, const struct lsa_cost *c, int64_t *col_of_row) {
  struct lsa_work w;
  CF_TRY(lsa_work_init(&w, n, c));
  cf_status st = lsa_run(&w, col_of_row);
  lsa_work_release(&w);
  CF_TRY(st);
  return CF_OK;
}

cf_status cf_lsa_init(struct cf_lsa *lsa, int64_t n_max) {
  memset(lsa, 0, sizeof *lsa);
  CF_CHECK(n_max >= 1, CF_EINVAL, "assignment workspace for size %lld; expected at least 1",
           (long long)n_max);
  size_t per, bytes;
  CF_TRY(lsa_array_bytes(n_max, &per));
  CF_TRY(cf_mul_size(&bytes, per, 9, "assignment workspace")); /* 8 solver arrays + result */
  CF_TRY(cf_alloc(&lsa->block, bytes, "assignment solver workspace"));
  lsa->n_max = n_max;
  lsa->per = per;
  return CF_OK;
}

void cf_lsa_release(struct cf_lsa *lsa) {
  cf_free(&lsa->block);
  memset(lsa, 0, sizeof *lsa);
}

/* Stored matrix provider. */
struct dense_ctx {
  const double *c; /* (n, n) */
  int64_t n;
};

static void dense_range(void *ctx, int64_t i, const int64_t *colid, int64_t lo, int64_t hi,
                        double *out) {
  const struct dense_ctx *dc = ctx;
  const double *ci = dc->c + i * dc->n;
  for (int64_t p = lo; p < hi; p++)
    out[p] = ci[colid[p]];
}

cf_status cf_lsa_solve_dense(struct cf_lsa *lsa, const double *cost, int64_t n, int64_t *col_of_row,
                             double *total) {
  CF_CHECK(n >= 1, CF_EINVAL, "assignment problem has size %lld; expected at least 1",
           (long long)n);
  CF_CHECK(cost != NULL, CF_EINVAL, "assignment cost matrix is NULL");
  CF_CHECK(lsa == NULL || n <= lsa->n_max, CF_EINVAL,
           "assignment problem has size %lld; the workspace holds up to %lld", (long long)n,
           (long long)(lsa ? lsa->n_max : 0));
  size_t nn;
  CF_TRY(cf_mul_size(&nn, (size_t)n, (size_t)n, "assignment cost matrix"));
  for (size_t e = 0; e < nn; e++)
    CF_CHECK(isfinite(cost[e]), CF_EINVAL, "assignment cost (%lld, %lld) is not finite",
             (long long)(e / (size_t)n), (long long)(e % (size_t)n));
  struct dense_ctx dc = {cost, n};
  struct lsa_cost c = {&dc, dense_range, NULL, NULL};
  int64_t *x = col_of_row;
  void *own = NULL;
  cf_status st;
  if (lsa != NULL) {
    struct lsa_work w;
    lsa_work_bind(&w, n, &c, lsa->block, lsa->per);
    if (x == NULL) x = (int64_t *)((char *)lsa->block + 8 * lsa->per);
    st = lsa_run(&w, x);
  } else {
    if (x == NULL) {
      CF_TRY(cf_alloc(&own, (size_t)n * sizeof(int64_t), "assignment result"));
      x = own;
    }
    st = lsa_solve(n, &c, x);
  }
  if (st == CF_OK && total != NULL) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
      s += cost[i * n + x[i]];
    *total = s;
  }
  cf_free(&own);
  return st;
}

cf_status cf_lsa_dense(const double *cost, int64_t n, int64_t *col_of_row, double *total) {
  return cf_lsa_solve_dense(NULL, cost, n, col_of_row, total);
}

/* Euclidean provider: ||a_i - b_j||^p with a as (n, d) and b transposed to (d, n),
 * the columns of bt kept in the solver's position order. */
struct euclid_ctx {
  const double *a; /* (n, d) */
  double *bt;      /* (d, n), by position */
  int64_t n, d;
  int p;
};

static void euclid_range(void *ctx, int64_t i, const int64_t *colid, int64_t lo, int64_t hi,
                         double *out) {
  const struct euclid_ctx *e = ctx;
  int64_t n = e->n, d = e->d;
  const double *ai = e->a + i * d;
  const double *restrict b0 = e->bt;
  const double a0 = ai[0];
  for (int64_t p = lo; p < hi; p++) {
    double t = a0 - b0[p];
    out[p] = t * t;
  }
  for (int64_t k = 1; k < d; k++) {
    const double aik = ai[k], *restrict bk = e->bt + k * n;
    for (int64_t p = lo; p < hi; p++) {
      double t = aik - bk[p];
      out[p] += t * t;
    }
  }
  if (e->p == 1) cf_sqrt_range(out, lo, hi);
}

/* One pair of positions (p, p + 1) with squared distances q: relax and update the
 * running minimum (m, k). For W1 (sq == 0) the square root is taken only when some
 * lane can improve: sqrt(q) - v - h < dist needs q < (dist + v + h)^2 (with a
 * relative margin far above rounding), and most lanes fail that test. */
static inline __attribute__((always_inline)) void euclid_pair(int sq, cf_v2d q, int64_t p,
                                                              const double *v, cf_v2d hv, cf_v2i iv,
                                                              double *dist, int64_t *pred,
                                                              cf_v2d *m, cf_v2i *k, cf_v2i pos) {
  cf_v2d dd = cf_ld2(dist + p), vv = cf_ld2(v + p), c;
  int any = 1;
  if (sq) {
    c = q - vv - hv;
  } else {
    const cf_v2d zero = {0.0, 0.0}, slack = {1.0 + 1e-9, 1.0 + 1e-9};
    cf_v2d thr = dd + vv + hv;
    cf_v2i can = (thr > zero) & (q < thr * thr * slack);
    any = (can[0] | can[1]) != 0;
    if (any) c = cf_sqrt2(q) - vv - hv;
  }
  if (any) {
    cf_v2i b = c < dd;
    dd = cf_sel(b, c, dd);
    cf_st2(dist + p, dd);
    cf_st2i(pred + p, cf_seli(b, iv, cf_ld2i(pred + p)));
  }
  cf_v2i l = dd <= *m;
  *m = cf_sel(l, dd, *m);
  *k = cf_seli(l, pos, *k);
}

/* Fused cost + relax on [lo, n) for W_p (sq: p = 2); instantiated with constant sq, and
 * with constant d = 2. */
static inline __attribute__((always_inline)) int64_t
euclid_relax_d(const struct euclid_ctx *e, int64_t d, int sq, int64_t i, int64_t lo,
               const double *v, double h, double *dist, int64_t *pred, double *mn) {
  const int64_t n = e->n;
  const double *ai = e->a + i * d;
  const cf_v2d hv = {h, h}, inf = {INFINITY, INFINITY};
  const cf_v2i iv = {i, i}, four = {4, 4};
  cf_v2d m0 = inf, m1 = inf;
  cf_v2i k0 = {lo, lo}, k1 = {lo, lo}, pos0 = {lo, lo + 1}, pos1 = {lo + 2, lo + 3};
  int64_t p = lo;
  for (; p + 4 <= n; p += 4) {
    cf_v2d q0 = {0.0, 0.0}, q1 = {0.0, 0.0};
    for (int64_t k = 0; k < d; k++) {
      const double *bk = e->bt + k * n + p;
      cf_v2d ak = {ai[k], ai[k]}, t0 = ak - cf_ld2(bk), t1 = ak - cf_ld2(bk + 2);
      q0 += t0 * t0;
      q1 += t1 * t1;
    }
    euclid_pair(sq, q0, p, v, hv, iv, dist, pred, &m0, &k0, pos0);
    euclid_pair(sq, q1, p + 2, v, hv, iv, dist, pred, &m1, &k1, pos1);
    pos0 += four;
    pos1 += four;
  }
  double best = INFINITY;
  int64_t at = lo;
  lsa_pick(m0, k0, &best, &at);
  lsa_pick(m1, k1, &best, &at);
  for (; p < n; p++) {
    double q = 0;
    for (int64_t k = 0; k < d; k++) {
      double t = ai[k] - e->bt[k * n + p];
      q += t * t;
    }
    double c = (sq ? q : sqrt(q)) - v[p] - h;
    if (c < dist[p]) {
      dist[p] = c;
      pred[p] = i;
    }
    if (dist[p] <= best) best = dist[p], at = p;
  }
  *mn = best;
  return at;
}

static int64_t euclid_relax(void *ctx, int64_t i, int64_t lo, const double *v, double h,
                            double *dist, int64_t *pred, double *mn) {
  const struct euclid_ctx *e = ctx;
  if (e->d == 2 && e->p == 2) return euclid_relax_d(e, 2, 1, i, lo, v, h, dist, pred, mn);
  if (e->d == 2) return euclid_relax_d(e, 2, 0, i, lo, v, h, dist, pred, mn);
  if (e->p == 2) return euclid_relax_d(e, e->d, 1, i, lo, v, h, dist, pred, mn);
  return euclid_relax_d(e, e->d, 0, i, lo, v, h, dist, pred, mn);
}

static void euclid_swap(void *ctx, int64_t p, int64_t q) {
  struct euclid_ctx *e = ctx;
  for (int64_t k = 0; k < e->d; k++) {
    double *bk = e->bt + k * e->n, t = bk[p];
    bk[p] = bk[q];
    bk[q] = t;
  }
}

cf_status cf_wasserstein_exact(const float *a, const float *b, int64_t n, int64_t d, int p,
                               double *w) {
  CF_CHECK(n >= 1, CF_EINVAL, "wasserstein: set size %lld; expected at least 1 point",
           (long long)n);
  CF_CHECK(d >= 1, CF_EINVAL, "wasserstein: dimension %lld; expected d >= 1", (long long)d);
  CF_CHECK(p == 1 || p == 2, CF_EINVAL, "wasserstein: order p = %d; expected 1 or 2", p);
  CF_CHECK(a != NULL && b != NULL && w != NULL, CF_EINVAL, "wasserstein: NULL argument");
  size_t nd, bytes;
  CF_TRY(cf_mul_size(&nd, (size_t)n, (size_t)d, "wasserstein point set"));
  CF_TRY(cf_mul_size(&bytes, nd, 2 * sizeof(double), "wasserstein point set"));
  void *block = NULL, *xb = NULL;
  CF_TRY(cf_alloc(&block, bytes, "wasserstein point copies"));
  cf_status st = cf_alloc(&xb, (size_t)n * sizeof(int64_t), "wasserstein assignment");
  if (st != CF_OK) {
    cf_free(&block);
    CF_TRY(st);
  }
  double *ad = block, *bt = ad + nd; /* (n, d), (d, n) */
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < d; k++) {
      ad[i * d + k] = a[i * d + k];
      bt[k * n + i] = b[i * d + k];
    }
  struct euclid_ctx ec = {ad, bt, n, d, p};
  struct lsa_cost c = {&ec, euclid_range, euclid_swap, euclid_relax};
  int64_t *x = xb;
  st = lsa_solve(n, &c, x);
  if (st == CF_OK) {
    /* The total from the matched pairs alone, summed in double from the inputs. */
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
      double q = 0;
      for (int64_t k = 0; k < d; k++) {
        double t = (double)a[i * d + k] - (double)b[x[i] * d + k];
        q += t * t;
      }
      s += p == 1 ? sqrt(q) : q;
    }
    s /= (double)n;
    *w = p == 1 ? s : sqrt(s);
  }
  cf_free(&xb);
  cf_free(&block);
  return st;
}
