/* cmd_train.c: `calmflow train` — resolve options, prepare the run directory (config.yaml,
 * log.jsonl, ckpt/), load or name the source and target, and run the training loop. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "calmflow/grid.h"
#include "calmflow/mem.h"
#include "calmflow/watchdog.h"

/* Rank 0: start afresh or refuse to clobber an existing run. */
static cf_status prepare_run_dir(const char *dir, int overwrite) {
  char p[4200];
  CF_TRY(cf_mkdirs(dir));
  snprintf(p, sizeof p, "%s/ckpt", dir);
  CF_TRY(cf_mkdirs(p));
  snprintf(p, sizeof p, "%s/ckpt/LATEST", dir);
  struct stat sb;
  int has_run = stat(p, &sb) == 0;
  snprintf(p, sizeof p, "%s/log.jsonl", dir);
  has_run = has_run || stat(p, &sb) == 0;
  CF_CHECK(!has_run || overwrite, CF_EINVAL,
           "run directory '%s' already holds a run (log.jsonl or ckpt/LATEST); pass "
           "-run_overwrite 1 to start afresh or choose a new -run_dir",
           dir);
  if (!has_run) return CF_OK;
  unlink(p);
  snprintf(p, sizeof p, "%s/ckpt", dir);
  DIR *d = opendir(p);
  CF_CHECK(d != NULL, CF_EIO, "cannot list '%s'", p);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "step-", 5) != 0 && strcmp(e->d_name, "LATEST") != 0) continue;
    char f[4600];
    snprintf(f, sizeof f, "%s/%s", p, e->d_name);
    unlink(f);
  }
  closedir(d);
  return CF_OK;
}

static cf_status train_cfg(const struct cf_opts *o, struct cf_train_cfg *tc) {
  memset(tc, 0, sizeof *tc);
  const int64_t big = (int64_t)1 << 40;
  int64_t seed;
  CF_TRY(cf_opt_int(o, "seed", 0, INT64_MAX, &seed));
  tc->seed = (uint64_t)seed;
  CF_TRY(cf_opt_int(o, "train_steps", 1, UINT32_MAX - 1, &tc->steps));
  CF_TRY(cf_opt_int(o, "train_batch", 1, big, &tc->batch));
  CF_TRY(cf_opt_int(o, "train_microbatches", 1, big, &tc->microbatches));
  CF_TRY(cf_opt_int(o, "train_warmup", 0, big, &tc->warmup));
  CF_TRY(cf_opt_int(o, "train_log_every", 1, big, &tc->log_every));
  CF_TRY(cf_opt_int(o, "train_ckpt_every", 0, big, &tc->ckpt_every));
  CF_TRY(cf_opt_int(o, "train_ckpt_keep", 1, 1000000, &tc->ckpt_keep));
  CF_TRY(cf_opt_real(o, "train_lr", 1e-12, 10, &tc->lr));
  CF_TRY(cf_opt_real(o, "train_lr_min", 0, 10, &tc->lr_min));
  CF_TRY(cf_decay_parse(cf_opt_str(o, "train_decay"), &tc->decay));
  CF_TRY(cf_optimizer_parse(cf_opt_str(o, "train_optimizer"), &tc->optimizer));
  CF_TRY(cf_opt_real(o, "train_weight_decay", 0, 10, &tc->weight_decay));
  CF_TRY(cf_opt_real(o, "train_beta1", 0, 0.999999, &tc->beta1));
  CF_TRY(cf_opt_real(o, "train_beta2", 0, 0.999999999, &tc->beta2));
  CF_TRY(cf_opt_real(o, "train_eps", 1e-30, 1, &tc->adam_eps));
  CF_TRY(cf_opt_real(o, "train_clip", 0, 1e12, &tc->clip));
  CF_TRY(cf_opt_real(o, "flow_kl_weight", 0, 1e6, &tc->kl_weight));
  CF_TRY(cf_opt_bool(o, "train_quiet", &tc->quiet));
  double mb;
  CF_TRY(cf_opt_real(o, "par_bucket_mb", 1e-6, 1e6, &mb));
  tc->bucket = (size_t)(mb * 1048576.0 / sizeof(float));
  CF_TRY(cf_opt_bool(o, "par_zero", &tc->zero));
  if (tc->bucket < 1) tc->bucket = 1;
  return CF_OK;
}

cf_status cf_app_layout(const struct cf_opts *o, int world, const struct cf_model_cfg *mc,
                        int64_t microbatches, int par[3]) {
  static const char *axes[3] = {"par_tp", "par_pp", "par_cp"};
  static const char *what[3] = {"tensor", "pipeline", "context"};
  for (int i = 0; i < 3; i++) {
    int64_t v;
    CF_TRY(cf_opt_int(o, axes[i], 1, 1 << 20, &v));
    par[i] = (int)v;
  }
  CF_TRY(cf_grid_check(world, par[0], par[1], par[2], mc->layers, mc->heads, mc->N * mc->P * mc->S,
                       microbatches));
  for (int i = 0; i < 3; i++)
    CF_CHECK(par[i] == 1, CF_EINVAL,
             "option -%s: %s parallelism is not implemented yet (it comes with calmflow 2); "
             "data parallelism over all ranks works now",
             axes[i], what[i]);
  return CF_OK;
}

cf_status cf_cmd_train(MPI_Comm comm) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  struct cf_opts *o = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  CF_TRY(cf_opts_load(o, NULL, CMD_TRAIN));
  CF_TRY(cf_opts_check_unknown("train"));
  const char *model = cf_opt_str(o, "model");
  CF_CHECK(strcmp(model, "cfm") != 0, CF_EINVAL,
           "option -model: 'cfm' (the ODE baseline) is not implemented yet (calmflow 5)");
  CF_CHECK(strcmp(model, "calmflow") == 0, CF_EINVAL,
           "option -model: unknown method '%s' (expected calmflow)", model);
  struct cf_model_cfg mc;
  struct cf_flow_cfg fc;
  struct cf_train_cfg tc;
  CF_TRY(cf_app_model_cfg(o, &mc, &fc));
  CF_TRY(train_cfg(o, &tc));
  double timeout;
  CF_TRY(cf_opt_real(o, "par_timeout", 0, 1e9, &timeout));
  CF_TRY(cf_watchdog_start(timeout, rank));
  int par[3];
  CF_TRY(cf_app_layout(o, world, &mc, tc.microbatches, par));
  CF_TRY(cf_train_cfg_check(&tc, &mc, world));
  int overwrite;
  CF_TRY(cf_opt_bool(o, "run_overwrite", &overwrite));
  const char *run_dir = cf_opt_str(o, "run_dir");
  CF_CHECK(run_dir[0] != '\0', CF_EINVAL, "option -run_dir: expected a directory");

  /* data before touching the run directory: a bad file leaves no half-made run */
  struct cf_dist src, tgt;
  float *src_pts = NULL, *tgt_pts = NULL;
  const char *train_file = cf_opt_str(o, "data_train");
  if (train_file[0] != '\0')
    CF_TRY(cf_app_dist(comm, train_file, mc.D, "-data_train", &tgt, &tgt_pts));
  else
    CF_TRY(cf_dist_by_name(&tgt, cf_opt_str(o, "data_name"), mc.D, "-data_name"));
  CF_TRY(cf_app_dist(comm, cf_opt_str(o, "data_source"), mc.D, "-data_source", &src, &src_pts));

  char *yaml = NULL;
  CF_TRY(cf_alloc((void **)&yaml, 1 << 16, "resolved options"));
  CF_TRY(cf_opts_yaml(o, CMD_TRAIN, yaml, 1 << 16));
  cf_status st = CF_OK;
  if (rank == 0) {
    st = prepare_run_dir(run_dir, overwrite);
    if (st == CF_OK) {
      char p[4200];
      snprintf(p, sizeof p, "%s/config.yaml", run_dir);
      st = cf_write_text_atomic(p, yaml);
    }
  }
  int bad = st != CF_OK;
  CF_MPI(MPI_Bcast(&bad, 1, MPI_INT, 0, comm));
  if (bad) return st != CF_OK ? st : cf_err(CF_EREMOTE, "rank 0 could not prepare '%s'", run_dir);

  if (rank == 0 && !tc.quiet) {
    printf("calmflow train: %s -> %s, D=%lld N=%lld P=%lld S=%lld, H=%lld layers=%lld heads=%lld, "
           "head=%s predict=%s path=%s sigma=%g, %s lr=%g, batch=%lld paths on %d rank%s\n",
           cf_opt_str(o, "data_source"), train_file[0] ? train_file : cf_opt_str(o, "data_name"),
           (long long)mc.D, (long long)mc.N, (long long)mc.P, (long long)mc.S, (long long)mc.H,
           (long long)mc.layers, (long long)mc.heads, mc.head == CF_HEAD_VAE ? "vae" : "gauss",
           cf_predict_name(fc.predict), cf_path_name(fc.path), fc.sigma,
           cf_optimizer_name(tc.optimizer), tc.lr, (long long)tc.batch, world,
           world > 1 ? "s" : "");
    fflush(stdout);
  }
  struct cf_grid grid;
  CF_TRY(cf_grid_init(&grid, comm, par[0], par[1], par[2]));
  if (rank == 0 && !tc.quiet) {
    char lay[128];
    cf_grid_describe(&grid, lay, sizeof lay);
    printf("layout: %s\n", lay);
  }
  struct cf_train_result res;
  cf_status st_run = cf_train_run(grid.dp, &tc, &mc, &fc, &src, &tgt, run_dir, yaml, &res);
  cf_grid_release(&grid);
  CF_TRY(st_run);
  if (rank == 0 && !tc.quiet)
    printf("trained %lld steps in %.1f s (%.0f tokens/s), final loss %.5f, checkpoint %s\n"
           "memory: peak RSS %.1f MiB on the largest rank; parameters + gradients + AdamW state "
           "%.2f MiB per rank; gradient all-reduce %.2f MiB per step and rank\n",
           (long long)tc.steps, res.seconds, res.tokens_per_s, res.final_loss, res.last_ckpt,
           res.peak_rss / 1048576.0, res.state_bytes / 1048576.0,
           res.grad_bytes_per_step / 1048576.0);
  cf_free((void **)&yaml);
  cf_free((void **)&src_pts);
  cf_free((void **)&tgt_pts);
  cf_free((void **)&o);
  return CF_OK;
}
