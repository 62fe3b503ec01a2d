/* cmd_ckpt.c: `calmflow ckpt info FILE` (a readable summary) and `calmflow ckpt verify FILE`
 * (rebuild the model from the stored options, read every tensor, check shapes and checksums). */
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "calmflow/ckpt.h"
#include "calmflow/conds.h"
#include "calmflow/mem.h"

cf_status cf_cmd_ckpt(MPI_Comm comm, int argc, char **argv) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_TRY(cf_opts_check_unknown("ckpt"));
  CF_CHECK(argc == 2 && (strcmp(argv[0], "info") == 0 || strcmp(argv[0], "verify") == 0), CF_EINVAL,
           "usage: calmflow ckpt info FILE | calmflow ckpt verify FILE");
  const char *path = argv[1];
  struct cf_opts *to = NULL;
  CF_TRY(cf_alloc((void **)&to, sizeof *to, "options"));
  struct cf_model m;
  struct cf_cfm cm;
  struct cf_conds conds;
  memset(&m, 0, sizeof m);
  memset(&cm, 0, sizeof cm);
  memset(&conds, 0, sizeof conds);
  struct cf_flow_cfg fc;
  struct cf_ckpt_meta meta;
  int verify = strcmp(argv[0], "verify") == 0;
  CF_TRY(cf_app_ckpt_options(comm, path, to, &meta));
  const int cfm = strcmp(cf_opt_str(to, "model"), "cfm") == 0;
  if (cfm)
    CF_TRY(cf_load_cfm(comm, path, to, &cm, &meta, verify, 1, &conds));
  else
    CF_TRY(cf_load_model(comm, path, to, &m, &fc, &meta, verify, NULL));
  const int nt = cfm ? cm.n_tensors : m.n_tensors;
  const struct cf_tensor_info *tensors = cfm ? cm.tensors : m.tensors;
  if (rank == 0) {
    if (verify) {
      printf("ok: %s: %d tensors (parameters and AdamW moments) match their shapes and checksums\n",
             path, 3 * nt);
    } else {
      printf("checkpoint %s\n  model %s, step %lld, seed %llu, written by %lld rank%s\n", path,
             meta.model_kind ? meta.model_kind : "?", (long long)meta.step,
             (unsigned long long)meta.seed, (long long)meta.world, meta.world > 1 ? "s" : "");
      /* optional attributes: files written before they were added lack them */
      printf("  layout %s\n", meta.layout ? meta.layout : "(not recorded)");
      if (meta.rng)
        printf("  rng %s, next step counter %lld\n", meta.rng, (long long)meta.rng_step);
      else
        printf("  rng (not recorded)\n");
      if (cfm)
        printf("  CFM velocity MLP: D=%lld, %lld hidden layers of width %lld, %lld time "
               "frequencies, %zu parameters in %d tensors\n",
               (long long)cm.cfg.D, (long long)cm.cfg.layers, (long long)cm.cfg.width,
               (long long)cm.cfg.time_freqs, cm.n_params, cm.n_tensors);
      else
        printf("  D=%lld N=%lld P=%lld S=%lld H=%lld layers=%lld heads=%lld head=%s, %zu "
               "parameters in %d tensors\n",
               (long long)m.cfg.D, (long long)m.cfg.N, (long long)m.cfg.P, (long long)m.cfg.S,
               (long long)m.cfg.H, (long long)m.cfg.layers, (long long)m.cfg.heads,
               cf_head_name(m.cfg.head), m.n_params, m.n_tensors);
      for (int k = 0; cfm && k < conds.ncol; k++) { /* -cfm_cond: columns, categories */
        char cats[256] = "";
        size_t len = 0;
        int cut = 0;
        for (int64_t j = 0; j < conds.ncat[k] && !cut; j++) {
          int w = snprintf(cats + len, sizeof cats - len, "%s%s", j ? ", " : "", conds.cats[k][j]);
          cut = w < 0 || (size_t)w >= sizeof cats - len;
          if (!cut) len += (size_t)w;
        }
        printf("  condition column %s: %lld categories (%s%s)\n", conds.names[k],
               (long long)conds.ncat[k], cats, cut ? "..." : "");
      }
      for (int i = 0; i < nt; i++) {
        const struct cf_tensor_info *t = &tensors[i];
        if (t->ndim == 2)
          printf("    %-28s %lld x %lld\n", t->name, (long long)t->shape[0],
                 (long long)t->shape[1]);
        else
          printf("    %-28s %lld\n", t->name, (long long)t->shape[0]);
      }
    }
  }
  cf_model_release(&m);
  cf_cfm_release(&cm);
  cf_conds_release(&conds);
  cf_free((void **)&to);
  return CF_OK;
}
