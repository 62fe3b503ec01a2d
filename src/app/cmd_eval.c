/* cmd_eval.c: `calmflow eval` — distances between two point sets (HDF5 /x) as JSON:
 * exact W2 and W1, RBF MMD (gamma 2 and multi-bandwidth), energy distance, and optionally the
 * noise floor W2(ref, b) of a second independent data sample. Computed on rank 0. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/metrics.h"

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
  int64_t max_exact;
  CF_TRY(cf_opt_int(o, "eval_max_exact", 1, 100000, &max_exact));
  float *a = NULL, *b = NULL, *r = NULL;
  int64_t na, nb, nr = 0, da, db, dr;
  CF_TRY(cf_h5_read_points(comm, fa, "/x", 0, &a, &na, &da));
  CF_TRY(cf_h5_read_points(comm, fb, "/x", da, &b, &nb, &db));
  if (fr[0] != '\0') CF_TRY(cf_h5_read_points(comm, fr, "/x", da, &r, &nr, &dr));

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
    char js[2048];
    int n = snprintf(js, sizeof js,
                     "{\n  \"w2\": %.9g,\n  \"w1\": %.9g,\n  \"mmd2_rbf\": %.9g,\n"
                     "  \"mmd2_rbf_multi\": %.9g,\n  \"energy\": %.9g,\n  \"n_a\": %lld,\n"
                     "  \"n_b\": %lld,\n  \"n_ot\": %lld,\n  \"dim\": %lld",
                     m.w2, m.w1, m.mmd2_rbf, m.mmd2_rbf_multi, m.energy, (long long)na,
                     (long long)nb, (long long)m.n_ot, (long long)da);
    if (r)
      n += snprintf(js + n, sizeof js - (size_t)n, ",\n  \"w2_floor\": %.9g,\n  \"w2_ratio\": %.9g",
                    floor_w2, m.w2 / floor_w2);
    snprintf(js + n, sizeof js - (size_t)n, "\n}\n");
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
