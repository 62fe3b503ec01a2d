/* datarows.c: which rows of the training file a run learns from (-data_exclude, for every
 * method) and their conditions (-cfm_cond, the conditional CFM baseline), read from the data
 * file's /obs columns (conds.h), and the check that a resumed run keeps its conditions. */
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "calmflow/ckpt.h"
#include "calmflow/conds.h"
#include "calmflow/mem.h"

cf_status cf_app_train_rows(MPI_Comm comm, const struct cf_opts *o, int cfm, struct cf_dist *tgt,
                            float *pts, struct cf_conds *conds, struct cf_cfm_cfg *cc, int quiet) {
  memset(conds, 0, sizeof *conds);
  const char *file = cf_opt_str(o, "data_train"), *excl = cf_opt_str(o, "data_exclude");
  const char *cond = cf_opt_str(o, "cfm_cond");
  CF_CHECK(cond[0] == '\0' || cfm, CF_EINVAL,
           "option -cfm_cond: conditions are an option of the CFM baseline (-model cfm)");
  CF_CHECK(excl[0] == '\0' || (file[0] != '\0' && pts != NULL), CF_EINVAL,
           "option -data_exclude: rows are left out of a -data_train file (by its /obs columns); "
           "there is none");
  CF_CHECK(cond[0] == '\0' || (file[0] != '\0' && pts != NULL), CF_EINVAL,
           "option -cfm_cond: the conditions are /obs columns of a -data_train file; there is "
           "none");
  if (excl[0] == '\0' && cond[0] == '\0') return CF_OK;
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  const int64_t n = tgt->n, D = tgt->dim;
  int64_t *rows = NULL, nkeep = n;
  if (excl[0] != '\0') {
    CF_TRY(cf_data_exclude(comm, file, excl, "-data_exclude", n, &rows, &nkeep));
    for (int64_t i = 0; i < nkeep; i++) /* rows ascend: compacting in place is safe */
      if (rows[i] != i) memmove(pts + i * D, pts + rows[i] * D, (size_t)D * sizeof(float));
    cf_dist_points(tgt, pts, nkeep, D);
    if (rank == 0 && !quiet)
      printf("data: %lld of the %lld rows of '%s' left out of training (-data_exclude %s)\n",
             (long long)(n - nkeep), (long long)n, file, excl);
  }
  cf_status st = CF_OK;
  if (cond[0] != '\0') {
    st = cf_conds_read(comm, file, cond, "-cfm_cond", n, rows, rows ? nkeep : n, conds);
    if (st == CF_OK) cc->cond_dim = conds->C;
    if (st == CF_OK) st = cf_cfm_cfg_check(cc);
    if (st == CF_OK && rank == 0 && !quiet) {
      printf("conditions: %lld one-hot features from", (long long)conds->C);
      for (int k = 0; k < conds->ncol; k++)
        printf("%s %s (%lld)", k ? "," : "", conds->names[k], (long long)conds->ncat[k]);
      printf("\n");
    }
  }
  cf_free((void **)&rows);
  if (st != CF_OK) cf_conds_release(conds);
  return st;
}

cf_status cf_app_resume_conds(MPI_Comm comm, const char *resume, const struct cf_conds *conds) {
  struct cf_ckpt_meta meta;
  char *yaml = NULL;
  CF_TRY(cf_ckpt_read_meta(comm, resume, &meta, &yaml));
  cf_free((void **)&yaml);
  const char *have = meta.conditions ? meta.conditions : "", *want = conds->text ? conds->text : "";
  CF_CHECK(strcmp(have, want) == 0, CF_EINVAL,
           "option -cfm_cond: checkpoint '%s' was trained on other condition columns or "
           "categories than the -data_train file now gives; resume with the same data, or start "
           "afresh with -run_overwrite 1 or a new -run_dir",
           resume);
  return CF_OK;
}
