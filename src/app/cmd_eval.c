/* cmd_eval.c: `calmflow eval` — distances between two point sets (HDF5 /x) as JSON:
 * exact W2 and W1, RBF MMD (gamma 2 and multi-bandwidth), energy distance and optionally the
 * noise floor W2(ref, b) of a second independent data sample, computed on rank 0; and the
 * collective metrics, computed by all ranks together: the Frechet distance of the fitted
 * Gaussians (ScaLAPACK, the points split over the ranks) and entropic OT (Sinkhorn,
 * the cost rows split over the ranks). Every rank reads all points. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/metrics.h"

/* Append ",\n  \"key\": value" with 17 significant digits (null when not finite). */
static int put_num(char *js, size_t cap, int n, const char *key, double v) {
  if (n < 0 || (size_t)n >= cap) return n;
  if (isfinite(v)) return n + snprintf(js + n, cap - (size_t)n, ",\n  \"%s\": %.17g", key, v);
  return n + snprintf(js + n, cap - (size_t)n, ",\n  \"%s\": null", key);
}

/* Local. The Sinkhorn options of `calmflow eval`. */
static cf_status sinkhorn_opts(const struct cf_opts *o, struct cf_sinkhorn_opts *so) {
  cf_sinkhorn_defaults(so);
  double eps_abs, mib;
  int64_t iters;
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_eps", 1e-6, 1e6, &so->eps));
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_eps_abs", 0, 1e300, &eps_abs));
  if (eps_abs > 0) {
    so->eps = eps_abs;
    so->eps_absolute = 1;
  }
  CF_TRY(cf_opt_int(o, "eval_sinkhorn_iters", 1, 100000000, &iters));
  so->max_iter = iters;
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_tol", 0, 1, &so->tol));
  CF_TRY(cf_opt_bool(o, "eval_sinkhorn_debias", &so->debias));
  CF_TRY(cf_opt_real(o, "eval_sinkhorn_mem", 0, 1048576, &mib));
  so->cache_bytes = (size_t)(mib * 1048576.0);
  return CF_OK;
}

/* Collective on comm. The collective metrics into fr (when do_frechet) and sk (when
 * sk_max > 0). a, b are identical on every rank. */
static cf_status collective_metrics(MPI_Comm comm, const struct cf_sinkhorn_opts *so,
                                    const float *a, int64_t na, const float *b, int64_t nb,
                                    int64_t d, int do_frechet, int64_t sk_max,
                                    struct cf_frechet *fr, struct cf_sinkhorn *sk) {
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  if (do_frechet) {
    int64_t alo = na * rank / size, ahi = na * (rank + 1) / size;
    int64_t blo = nb * rank / size, bhi = nb * (rank + 1) / size;
    CF_TRY(cf_frechet(comm, a + alo * d, ahi - alo, b + blo * d, bhi - blo, d, NULL, fr));
  }
  if (sk_max > 0) {
    CF_TRY(
        cf_sinkhorn(comm, a, na < sk_max ? na : sk_max, b, nb < sk_max ? nb : sk_max, d, so, sk));
    if (rank == 0 && !sk->converged)
      fprintf(stderr,
              "calmflow: warning: Sinkhorn stopped at the iteration cap (%lld) with marginal "
              "error %.3g > -eval_sinkhorn_tol %g (sinkhorn_converged = 0 in the JSON)\n",
              (long long)so->max_iter, sk->err, so->tol);
  }
  return CF_OK;
}

cf_status cf_cmd_eval(MPI_Comm comm) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  struct cf_opts *o = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  CF_TRY(cf_opts_load(o, NULL, CMD_EVAL));
  CF_TRY(cf_opts_check_unknown("eval"));
  const char *fa = cf_opt_str(o, "eval_a"), *fb = cf_opt_str(o, "eval_b");
  const char *fr = cf_opt_str(o, "eval_ref"), *out = cf_opt_str(o, "eval_out");
  CF_CHECK(fa[0] != '\0', CF_EINVAL, "option -eval_a: required (an HDF5 file with /x, n x D)");
  CF_CHECK(fb[0] != '\0', CF_EINVAL, "option -eval_b: required (an HDF5 file with /x, n x D)");
  int64_t max_exact, sk_max;
  int do_frechet;
  CF_TRY(cf_opt_int(o, "eval_max_exact", 1, 100000, &max_exact));
  CF_TRY(cf_opt_bool(o, "eval_frechet", &do_frechet));
  CF_TRY(cf_opt_int(o, "eval_sinkhorn_max", 0, 1000000000, &sk_max));
  struct cf_sinkhorn_opts so;
  CF_TRY(sinkhorn_opts(o, &so));
  float *a = NULL, *b = NULL, *r = NULL;
  int64_t na, nb, nr = 0, da, db, dr;
  CF_TRY(cf_h5_read_points(comm, fa, "/x", 0, &a, &na, &da));
  CF_TRY(cf_h5_read_points(comm, fb, "/x", da, &b, &nb, &db));
  if (fr[0] != '\0') CF_TRY(cf_h5_read_points(comm, fr, "/x", da, &r, &nr, &dr));

  /* The collective metrics first (every rank), then rank 0's exact ones. */
  struct cf_frechet fm;
  struct cf_sinkhorn sk;
  memset(&fm, 0, sizeof fm);
  memset(&sk, 0, sizeof sk);
  CF_TRY(collective_metrics(comm, &so, a, na, b, nb, da, do_frechet, sk_max, &fm, &sk));

  struct cf_metrics m;
  double floor_w2 = NAN, res[8];
  cf_status st = CF_OK;
  if (rank == 0) {
    st = cf_metrics_compute(a, na, b, nb, da, max_exact, &m);
    if (st == CF_OK && r) {
      int64_t n = nr < nb ? nr : nb;
      if (n > max_exact) n = max_exact;
      st = cf_wasserstein_exact(r, b, n, da, 2, &floor_w2);
    }
    res[0] = m.w2, res[1] = m.w1, res[2] = m.mmd2_rbf, res[3] = m.mmd2_rbf_multi;
    res[4] = m.energy, res[5] = (double)m.n_ot, res[6] = floor_w2, res[7] = st;
  }
  CF_MPI(MPI_Bcast(res, 8, MPI_DOUBLE, 0, comm));
  if (rank != 0 && res[7] != 0) return cf_err(CF_EREMOTE, "evaluation failed on rank 0");
  CF_TRY(st);
  if (rank == 0) {
    char js[4096];
    int n = snprintf(js, sizeof js,
                     "{\n  \"w2\": %.9g,\n  \"w1\": %.9g,\n  \"mmd2_rbf\": %.9g,\n"
                     "  \"mmd2_rbf_multi\": %.9g,\n  \"energy\": %.9g,\n  \"n_a\": %lld,\n"
                     "  \"n_b\": %lld,\n  \"n_ot\": %lld,\n  \"dim\": %lld",
                     m.w2, m.w1, m.mmd2_rbf, m.mmd2_rbf_multi, m.energy, (long long)na,
                     (long long)nb, (long long)m.n_ot, (long long)da);
    if (r)
      n += snprintf(js + n, sizeof js - (size_t)n, ",\n  \"w2_floor\": %.9g,\n  \"w2_ratio\": %.9g",
                    floor_w2, m.w2 / floor_w2);
    /* The collective metrics: 17 significant digits, so runs at different rank counts can be
     * compared to the last bits. */
    if (do_frechet) n = put_num(js, sizeof js, n, "frechet", fm.value);
    if (sk_max > 0) {
      n = put_num(js, sizeof js, n, "sinkhorn_w2", sk.w2);
      n = put_num(js, sizeof js, n, "sinkhorn_div", sk.divergence); /* null without debias */
      n = put_num(js, sizeof js, n, "sinkhorn_eps", sk.eps);
      if (n >= 0 && (size_t)n < sizeof js)
        n += snprintf(js + n, sizeof js - (size_t)n,
                      ",\n  \"sinkhorn_iters\": %lld,\n  \"sinkhorn_converged\": %d,\n"
                      "  \"n_sinkhorn_a\": %lld,\n  \"n_sinkhorn_b\": %lld",
                      (long long)sk.iters, sk.converged, (long long)(na < sk_max ? na : sk_max),
                      (long long)(nb < sk_max ? nb : sk_max));
    }
    if (n >= 0 && (size_t)n < sizeof js) snprintf(js + n, sizeof js - (size_t)n, "\n}\n");
    if (out[0] == '\0') {
      fputs(js, stdout);
      fflush(stdout);
    } else {
      st = cf_write_text_atomic(out, js);
    }
  }
  int bad = st != CF_OK;
  CF_MPI(MPI_Bcast(&bad, 1, MPI_INT, 0, comm));
  if (bad && rank != 0) return cf_err(CF_EREMOTE, "rank 0 could not write the result");
  CF_TRY(st);
  cf_free((void **)&a);
  cf_free((void **)&b);
  cf_free((void **)&r);
  cf_free((void **)&o);
  return CF_OK;
}
