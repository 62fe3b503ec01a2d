/* sinkhorn.c: entropic optimal transport (log-domain stabilized Sinkhorn) between two point
 * sets with squared-Euclidean cost, uniform weights, split by rows over the ranks of a
 * communicator: sinkhorn_w2 = sqrt(<P, C>) and the debiased Sinkhorn divergence.
 *
 * One iteration of the (x, y) problem is one sweep over the rank's rows i of C (nx, ny):
 *   row update   f_i = eps log ny - M_i - eps log s_i,  s_i = sum_j e_ij,
 *                e_ij = exp((g_j - C_ij - M_i) / eps),  M_i = max_j (g_j - C_ij);
 *                local, and the same arithmetic at any rank count;
 *   plan sums    the plan P(f, g) = e_ij / (nx s_i) has exact row marginals 1/nx; the rank
 *                adds its rows to the column sums q_j, to the transport cost
 *                sum_i (1/nx) sum_j e_ij C_ij / s_i and to sum_i f_i / nx;
 * then q is reduced on rank 0 and broadcast (identical bits everywhere), the stopping test
 * is sum_j |q_j - 1/ny| <= tol, and the exact column update is g_j -= eps log(ny q_j).
 * So both half-steps cost one exp per entry of C. Terms more than 50 eps below their row
 * maximum (relative weight < 2e-22) are skipped; a column with ny q_j < 1e-6, whose sum could
 * rest on skipped terms, is updated exactly instead (max over all rows by MPI_MAX, then the
 * shifted sum). The symmetric problems OT(a, a), OT(b, b) use f <- (f + T(f)) / 2 where
 * T(f)_i is a row log-sum-exp (C is symmetric), assembled with MPI_Allgatherv.
 *
 * The cost rows come in blocks of CF_SK_ROWS rows, from the cache (the rank's rows of C kept
 * in memory when they fit in cache_bytes) or computed again each iteration.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/metrics.h"
#include "calmflow/mpichunk.h"
#include "collective.h"

#define CF_SK_ROWS 64   /* rows per cost block */
#define CF_SK_GEMM_D 8  /* d from which the cost comes from dgemm */
#define CF_SK_SKIP 50.0 /* terms below max - 50 eps are dropped */

void cf_sinkhorn_defaults(struct cf_sinkhorn_opts *o) {
  o->eps = 0.05;
  o->eps_absolute = 0;
  o->max_iter = 1000;
  o->tol = 1e-6;
  o->debias = 1;
  o->cache_bytes = (size_t)256 << 20;
}

/* One transport problem: the rank's rows [lo, hi) of x (nx, d) against all of y (ny, d). */
struct sk_prob {
  const double *x, *xn; /* centred rows (nx, d) and their squared norms (nx) */
  const double *y, *yn; /* (ny, d), (ny) */
  int64_t nx, ny, d, lo, hi;
  double *cache; /* (hi - lo, ny) or NULL */
  double *blk;   /* (CF_SK_ROWS, ny) when not cached */
};

/* C (r1 - r0, ny) for rows [r0, r1) of x into out. */
static void cost_rows(const struct sk_prob *p, int64_t r0, int64_t r1, double *out) {
  const int64_t m = p->ny, d = p->d, r = r1 - r0;
  if (r <= 0) return;
  const double *x = p->x + r0 * d;
  if (d >= CF_SK_GEMM_D) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, (int)m, (int)d, -2.0, x, (int)d,
                p->y, (int)d, 0.0, out, (int)m);
    for (int64_t i = 0; i < r; i++) {
      double *o = out + i * m, xi = p->xn[r0 + i];
      for (int64_t j = 0; j < m; j++) {
        double v = o[j] + xi + p->yn[j];
        o[j] = v > 0 ? v : 0;
      }
    }
    return;
  }
  for (int64_t i = 0; i < r; i++) {
    const double *xi = x + i * d;
    double *o = out + i * m;
    for (int64_t j = 0; j < m; j++) {
      const double *yj = p->y + j * d;
      double s = 0;
      for (int64_t k = 0; k < d; k++) {
        double t = xi[k] - yj[k];
        s += t * t;
      }
      o[j] = s;
    }
  }
}

/* The cost rows [r0, r1) (r1 - r0 <= CF_SK_ROWS) of the rank's range. */
static const double *get_rows(struct sk_prob *p, int64_t r0, int64_t r1) {
  if (p->cache) return p->cache + (r0 - p->lo) * p->ny;
  cost_rows(p, r0, r1, p->blk);
  return p->blk;
}

/* One (x, y) sweep at eps over the rank's rows: the row update f (hi - lo) = T(g), the plan's
 * column sums q_j += sum_i e_ij / (nx s_i) (q has ny entries), acc[0] += the rows' transport
 * cost sum_i (1/nx) sum_j e_ij C_ij / s_i and acc[1] += sum_i f_i / nx. e: ny scratch. */
static void sweep_ab(struct sk_prob *p, double eps, const double *g, double *f, double *q,
                     double *e, double *acc) {
  const int64_t m = p->ny;
  const double ie = 1.0 / eps, lm = eps * log((double)m), an = 1.0 / (double)p->nx;
  for (int64_t r0 = p->lo; r0 < p->hi; r0 += CF_SK_ROWS) {
    int64_t r1 = r0 + CF_SK_ROWS < p->hi ? r0 + CF_SK_ROWS : p->hi;
    const double *blk = get_rows(p, r0, r1);
    for (int64_t i = r0; i < r1; i++) {
      const double *c = blk + (i - r0) * m;
      double mx = -INFINITY;
      for (int64_t j = 0; j < m; j++) {
        double z = g[j] - c[j];
        mx = z > mx ? z : mx;
      }
      double s = 0, t = 0;
      for (int64_t j = 0; j < m; j++) {
        double z = (g[j] - c[j] - mx) * ie, v = 0;
        if (z > -CF_SK_SKIP) {
          v = exp(z);
          s += v;
          t += v * c[j];
        }
        e[j] = v;
      }
      double fi = lm - mx - eps * log(s), w = an / s;
      f[i - p->lo] = fi;
      acc[0] += an * (t / s);
      acc[1] += an * fi;
      for (int64_t j = 0; j < m; j++)
        q[j] += w * e[j];
    }
  }
}

/* One symmetric sweep at eps: T(f)_i = eps log n - M_i - eps log sum_j exp((f_j - C_ij - M_i)
 * / eps) for the rank's rows i (C is symmetric, so the column update is a row update), into
 * t (hi - lo). f has all n entries. */
static void sweep_sym(struct sk_prob *p, double eps, const double *f, double *t) {
  const int64_t m = p->ny;
  const double ie = 1.0 / eps, ln = eps * log((double)m);
  for (int64_t r0 = p->lo; r0 < p->hi; r0 += CF_SK_ROWS) {
    int64_t r1 = r0 + CF_SK_ROWS < p->hi ? r0 + CF_SK_ROWS : p->hi;
    const double *blk = get_rows(p, r0, r1);
    for (int64_t i = r0; i < r1; i++) {
      const double *c = blk + (i - r0) * m;
      double mx = -INFINITY, s = 0;
      for (int64_t j = 0; j < m; j++) {
        double z = f[j] - c[j];
        mx = z > mx ? z : mx;
      }
      for (int64_t j = 0; j < m; j++) {
        double z = (f[j] - c[j] - mx) * ie;
        if (z > -CF_SK_SKIP) s += exp(z);
      }
      t[i - p->lo] = ln - mx - eps * log(s);
    }
  }
}

/* Collective. The exact column update g_j = eps log nx - M_j - eps log sum_i exp((f_i - C_ij
 * - M_j) / eps), M_j the maximum over all rows (MPI_MAX), for the k columns idx only: the
 * rescue when a column's plan sum q_j came out too small to trust (see solve_ab). f: the
 * rank's rows. cm, cs: k scratch each. */
static cf_status exact_columns(MPI_Comm comm, struct sk_prob *p, double eps, const double *f,
                               const int64_t *idx, int64_t k, double *cm, double *cs, double *g) {
  const int64_t m = p->ny;
  const double ie = 1.0 / eps;
  for (int64_t u = 0; u < k; u++) {
    cm[u] = -INFINITY;
    cs[u] = 0;
  }
  for (int pass = 0; pass < 2; pass++) {
    for (int64_t r0 = p->lo; r0 < p->hi; r0 += CF_SK_ROWS) {
      int64_t r1 = r0 + CF_SK_ROWS < p->hi ? r0 + CF_SK_ROWS : p->hi;
      const double *blk = get_rows(p, r0, r1);
      for (int64_t i = r0; i < r1; i++) {
        const double *c = blk + (i - r0) * m;
        double fi = f[i - p->lo];
        for (int64_t u = 0; u < k; u++) {
          double z = fi - c[idx[u]];
          if (pass == 0)
            cm[u] = z > cm[u] ? z : cm[u];
          else if ((z - cm[u]) * ie > -CF_SK_SKIP)
            cs[u] += exp((z - cm[u]) * ie);
        }
      }
    }
    if (pass == 0)
      CF_MPI(cf_mpi_allreduce(MPI_IN_PLACE, cm, (size_t)k, MPI_DOUBLE, MPI_MAX, comm));
    else
      CF_TRY(cf_metrics_sum(comm, cs, k));
  }
  const double ln = eps * log((double)p->nx);
  for (int64_t u = 0; u < k; u++)
    g[idx[u]] = ln - cm[u] - eps * log(cs[u]);
  return CF_OK;
}

struct sk_run {
  double value; /* OT(x, y) dual value */
  double cost;  /* <P, C> (asymmetric problem only) */
  double err;   /* marginal violation at the stop (Inf if never measured at eps) */
  int64_t iters;
  int64_t rescued; /* column updates that needed exact_columns */
  int converged;
};

/* Collective. Set up the cost cache (when the rank's rows fit) or the streaming block. */
static cf_status prob_buffers(MPI_Comm comm, struct sk_prob *p, size_t cache_bytes) {
  cf_status st = CF_OK;
  size_t rows = (size_t)(p->hi - p->lo), bytes;
  p->cache = p->blk = NULL;
  st = cf_mul_size(&bytes, rows * (size_t)p->ny, sizeof(double), "sinkhorn cost cache");
  if (st == CF_OK && rows > 0 && bytes <= cache_bytes) {
    st = cf_alloc((void **)&p->cache, bytes, "sinkhorn cost cache");
    for (int64_t r0 = p->lo; st == CF_OK && r0 < p->hi; r0 += CF_SK_ROWS)
      cost_rows(p, r0, r0 + CF_SK_ROWS < p->hi ? r0 + CF_SK_ROWS : p->hi,
                p->cache + (r0 - p->lo) * p->ny);
  } else if (st == CF_OK) {
    st = cf_alloc((void **)&p->blk, (size_t)CF_SK_ROWS * (size_t)p->ny * sizeof(double),
                  "sinkhorn cost block");
  }
  st = cf_metrics_agree(comm, st, "sinkhorn");
  if (st != CF_OK) {
    cf_free((void **)&p->cache);
    cf_free((void **)&p->blk);
  }
  return st;
}

static void prob_release(struct sk_prob *p) {
  cf_free((void **)&p->cache);
  cf_free((void **)&p->blk);
}

/* Collective. The (x, y) problem: alternating updates, eps annealed from eps0. After a sweep
 * the plan P(f, g) has exact row marginals and column sums q_j, so the new column potential
 * is g_j - eps log(ny q_j) (the exact update, one exp per entry for both half-steps), and
 * sum_j |q_j - 1/ny| is the stopping test. A column whose ny q_j is below 1e-6 (its mass
 * would rest on terms the -50 eps cut dropped) is updated by exact_columns instead. */
static cf_status solve_ab(MPI_Comm comm, struct sk_prob *p, const struct cf_sinkhorn_opts *o,
                          double eps, double eps0, struct sk_run *run) {
  const int64_t m = p->ny, nl = p->hi - p->lo;
  double *buf = NULL;
  int64_t *idx = NULL;
  size_t len = (size_t)(5 * m + 2 + (nl > 0 ? nl : 1));
  cf_status st = cf_alloc((void **)&buf, len * sizeof(double), "sinkhorn potentials");
  if (st == CF_OK) st = cf_alloc((void **)&idx, (size_t)m * sizeof(int64_t), "sinkhorn columns");
  st = cf_metrics_agree(comm, st, "sinkhorn");
  if (st != CF_OK) {
    cf_free((void **)&buf);
    cf_free((void **)&idx);
    return st;
  }
  double *g = buf, *e = g + m, *cm = e + m, *cs = cm + m, *q = cs + m, *f = q + m + 2;
  run->err = INFINITY;
  run->converged = 0;
  run->rescued = 0;
  run->value = run->cost = NAN;
  double ek = eps0 > eps ? eps0 : eps;
  for (int64_t it = 1; it <= o->max_iter; it++) {
    double acc[2] = {0, 0};
    memset(q, 0, (size_t)m * sizeof(double));
    sweep_ab(p, ek, g, f, q, e, acc);
    q[m] = acc[0];
    q[m + 1] = acc[1];
    st = cf_metrics_sum(comm, q, m + 2);
    if (st != CF_OK) break;
    double mg = 0, err = 0;
    int64_t k = 0;
    for (int64_t j = 0; j < m; j++) {
      mg += g[j];
      double r = (double)m * q[j];
      err += fabs(r - 1.0);
      if (!(r >= 1e-6)) idx[k++] = j;
    }
    run->iters = it;
    run->cost = q[m];
    run->value = q[m + 1] + mg / (double)m;
    if (ek == eps) {
      run->err = err / (double)m;
      if (run->err <= o->tol) {
        run->converged = 1;
        break;
      }
    }
    for (int64_t j = 0; j < m; j++)
      if (q[j] > 0) g[j] -= ek * log((double)m * q[j]);
    if (k > 0) {
      run->rescued += k;
      st = exact_columns(comm, p, ek, f, idx, k, cm, cs, g);
      if (st != CF_OK) break;
    }
    ek = ek * 0.5 > eps ? ek * 0.5 : eps;
  }
  cf_free((void **)&buf);
  cf_free((void **)&idx);
  return st;
}

/* Collective. The symmetric (x, x) problem: f <- (f + T(f)) / 2, eps annealed from eps0;
 * each rank computes T(f) on its rows and MPI_Allgatherv assembles it (no arithmetic, so
 * every rank holds the same f). */
static cf_status solve_sym(MPI_Comm comm, struct sk_prob *p, const struct cf_sinkhorn_opts *o,
                           double eps, double eps0, struct sk_run *run) {
  const int64_t n = p->ny;
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  double *buf = NULL;
  int *cnt = NULL;
  cf_status st =
      cf_alloc((void **)&buf, (size_t)(2 * n + 1) * sizeof(double), "sinkhorn potentials");
  if (st == CF_OK) st = cf_alloc((void **)&cnt, (size_t)(2 * size) * sizeof(int), "sinkhorn");
  st = cf_metrics_agree(comm, st, "sinkhorn");
  if (st != CF_OK) {
    cf_free((void **)&buf);
    cf_free((void **)&cnt);
    return st;
  }
  double *f = buf, *t = f + n;
  int *dsp = cnt + size;
  for (int r = 0; r < size; r++) {
    dsp[r] = (int)(n * r / size);
    cnt[r] = (int)(n * (r + 1) / size) - dsp[r];
  }
  run->err = INFINITY;
  run->converged = 0;
  run->rescued = 0;
  run->value = NAN;
  run->cost = NAN;
  double ek = eps0 > eps ? eps0 : eps;
  for (int64_t it = 1; it <= o->max_iter; it++) {
    sweep_sym(p, ek, f, t + p->lo);
    int e = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, t, cnt, dsp, MPI_DOUBLE, comm);
    if (e != MPI_SUCCESS) {
      st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Allgatherv");
      break;
    }
    double s = 0, err = 0;
    for (int64_t j = 0; j < n; j++) {
      s += f[j] + t[j];
      if (ek == eps) err += fabs(1.0 - exp((f[j] - t[j]) / eps));
    }
    run->iters = it;
    run->value = s / (double)n;
    if (ek == eps) {
      run->err = err / (double)n;
      if (run->err <= o->tol) {
        run->converged = 1;
        break;
      }
    }
    for (int64_t j = 0; j < n; j++)
      f[j] = 0.5 * (f[j] + t[j]);
    ek = ek * 0.5 > eps ? ek * 0.5 : eps;
  }
  cf_free((void **)&buf);
  cf_free((void **)&cnt);
  return st;
}

/* Centred double copy of x (n, d) (minus c) and the squared row norms. */
static void centre(const float *x, int64_t n, int64_t d, const double *c, double *xc, double *xn) {
  for (int64_t i = 0; i < n; i++) {
    double s = 0;
    for (int64_t k = 0; k < d; k++) {
      double v = (double)x[i * d + k] - c[k];
      xc[i * d + k] = v;
      s += v * v;
    }
    xn[i] = s;
  }
}

static void split(int64_t n, int rank, int size, int64_t *lo, int64_t *hi) {
  *lo = n * rank / size;
  *hi = n * (rank + 1) / size;
}

/* Collective. One problem from its sets, with its buffers; symmetric when x == y. */
static cf_status run_problem(MPI_Comm comm, const double *x, const double *xn, int64_t nx,
                             const double *y, const double *yn, int64_t ny, int64_t d,
                             const struct cf_sinkhorn_opts *o, double eps, double eps0, int *cached,
                             struct sk_run *run) {
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  struct sk_prob p = {.x = x, .xn = xn, .y = y, .yn = yn, .nx = nx, .ny = ny, .d = d};
  split(nx, rank, size, &p.lo, &p.hi);
  CF_TRY(prob_buffers(comm, &p, o->cache_bytes));
  if (cached) *cached = p.cache != NULL;
  cf_status st =
      x == y ? solve_sym(comm, &p, o, eps, eps0, run) : solve_ab(comm, &p, o, eps, eps0, run);
  prob_release(&p);
  return st;
}

cf_status cf_sinkhorn(MPI_Comm comm, const float *a, int64_t na, const float *b, int64_t nb,
                      int64_t d, const struct cf_sinkhorn_opts *opt, struct cf_sinkhorn *out) {
  CF_CHECK(out != NULL && opt != NULL, CF_EINVAL, "sinkhorn: NULL options or output");
  CF_CHECK(na >= 1, CF_EINVAL, "eval set a has %lld points; expected at least 1", (long long)na);
  CF_CHECK(nb >= 1, CF_EINVAL, "eval set b has %lld points; expected at least 1", (long long)nb);
  CF_CHECK(d >= 1, CF_EINVAL, "eval sets have dimension %lld; expected d >= 1", (long long)d);
  CF_CHECK(na <= INT_MAX && nb <= INT_MAX && d <= INT_MAX, CF_EINVAL,
           "sinkhorn: sets of %lld and %lld points in %lld dimensions exceed the 32-bit limit",
           (long long)na, (long long)nb, (long long)d);
  CF_CHECK(isfinite(opt->eps) && opt->eps > 0, CF_EINVAL,
           "sinkhorn: eps is %g; expected a finite value > 0", opt->eps);
  CF_CHECK(opt->max_iter >= 1, CF_EINVAL, "sinkhorn: iteration cap is %lld; expected at least 1",
           (long long)opt->max_iter);
  CF_CHECK(isfinite(opt->tol) && opt->tol >= 0, CF_EINVAL,
           "sinkhorn: tolerance is %g; expected a finite value >= 0", opt->tol);
  CF_CHECK(a != NULL && b != NULL, CF_EINVAL, "sinkhorn: NULL point set");
  CF_TRY(cf_metrics_check_finite(comm, a, na, d, 0, "a"));
  CF_TRY(cf_metrics_check_finite(comm, b, nb, d, 0, "b"));

  struct cf_sinkhorn r;
  memset(&r, 0, sizeof r);
  r.ot_aa = r.ot_bb = r.divergence = NAN;
  double *buf = NULL;
  size_t len;
  cf_status st = cf_mul_size(&len, (size_t)(na + nb), (size_t)(d + 1), "sinkhorn copies");
  if (st == CF_OK) st = cf_mul_size(&len, len + 3 * (size_t)d, sizeof(double), "sinkhorn copies");
  if (st == CF_OK) st = cf_alloc((void **)&buf, len, "sinkhorn copies");
  CF_TRY(cf_metrics_agree(comm, st, "sinkhorn"));
  double *c = buf, *ma = c + d, *mb = ma + d, *xa = mb + d, *xb = xa + na * d, *na2 = xb + nb * d,
         *nb2 = na2 + na;
  /* Centre both sets on b's mean (costs are shift-invariant; dgemm costs lose less). */
  for (int64_t j = 0; j < nb; j++)
    for (int64_t k = 0; k < d; k++)
      c[k] += (double)b[j * d + k];
  for (int64_t k = 0; k < d; k++)
    c[k] /= (double)nb;
  centre(a, na, d, c, xa, na2);
  centre(b, nb, d, c, xb, nb2);
  /* s = E||y - y'||^2 = 2 mean |y - mu_b|^2, and the mean cross cost
   * mean |x|^2 + mean |y|^2 - 2 mean(x) . mean(y) (all centred). */
  double sa = 0, sb = 0, dot = 0;
  for (int64_t i = 0; i < na; i++) {
    sa += na2[i];
    for (int64_t k = 0; k < d; k++)
      ma[k] += xa[i * d + k];
  }
  for (int64_t j = 0; j < nb; j++) {
    sb += nb2[j];
    for (int64_t k = 0; k < d; k++)
      mb[k] += xb[j * d + k];
  }
  for (int64_t k = 0; k < d; k++)
    dot += (ma[k] / (double)na) * (mb[k] / (double)nb);
  double mean_cost = sa / (double)na + sb / (double)nb - 2.0 * dot;
  if (mean_cost < 0) mean_cost = 0;
  r.scale = 2.0 * sb / (double)nb;
  if (r.scale <= 0 && mean_cost <= 0) {
    /* Every point of a and b is the same point: all costs are zero. */
    r.eps = opt->eps_absolute ? opt->eps : 0;
    r.w2 = r.cost = r.ot_ab = 0;
    if (opt->debias) r.ot_aa = r.ot_bb = r.divergence = 0;
    r.converged = 1;
    cf_free((void **)&buf);
    *out = r;
    return CF_OK;
  }
  /* Relative eps: times s, or times the mean cross cost when b is a single repeated point. */
  r.eps = opt->eps_absolute ? opt->eps : opt->eps * (r.scale > 0 ? r.scale : mean_cost);
  double eps0 = mean_cost > r.eps ? mean_cost : r.eps;

  struct sk_run ab, aa, bb;
  st = run_problem(comm, xa, na2, na, xb, nb2, nb, d, opt, r.eps, eps0, &r.cached, &ab);
  if (st == CF_OK) {
    r.cost = ab.cost > 0 ? ab.cost : 0;
    r.w2 = sqrt(r.cost);
    r.ot_ab = ab.value;
    r.err = ab.err;
    r.iters = ab.iters;
    r.rescued = ab.rescued;
    r.converged = ab.converged;
  }
  if (st == CF_OK && opt->debias) {
    st = run_problem(comm, xa, na2, na, xa, na2, na, d, opt, r.eps, eps0, NULL, &aa);
    if (st == CF_OK)
      st = run_problem(comm, xb, nb2, nb, xb, nb2, nb, d, opt, r.eps, eps0, NULL, &bb);
    if (st == CF_OK) {
      r.ot_aa = aa.value;
      r.ot_bb = bb.value;
      r.divergence = r.ot_ab - 0.5 * (r.ot_aa + r.ot_bb);
      r.iters_aa = aa.iters;
      r.iters_bb = bb.iters;
      r.err = fmax(r.err, fmax(aa.err, bb.err));
      r.converged = r.converged && aa.converged && bb.converged;
    }
  }
  cf_free((void **)&buf);
  CF_TRY(st);
  *out = r;
  return CF_OK;
}
