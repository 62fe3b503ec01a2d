/* cmd_sample.c: `calmflow sample` — rebuild the model from a checkpoint's stored options,
 * load its parameters, roll out -sample_n trajectories and write /x (and /traj) to HDF5. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "calmflow/cfpetsc.h"
#include "calmflow/ckpt.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/rollout.h"
#include "calmflow/watchdog.h"

cf_status cf_app_ckpt_options(MPI_Comm comm, const char *path, struct cf_opts *to,
                              struct cf_ckpt_meta *meta) {
  char *yaml = NULL;
  CF_TRY(cf_ckpt_read_meta(comm, path, meta, &yaml));
  PetscOptions db;
  CF_PETSC(PetscOptionsCreate(&db));
  PetscPushErrorHandler(PetscReturnErrorHandler, NULL);
  PetscErrorCode e = PetscOptionsInsertStringYAML(db, yaml);
  PetscPopErrorHandler();
  cf_free((void **)&yaml);
  meta->options_yaml = NULL; /* it pointed into the freed buffer */
  CF_CHECK(e == 0, CF_ECORRUPT, "checkpoint '%s': its stored options are not valid YAML", path);
  cf_status st = cf_opts_load(to, db, CMD_TRAIN);
  PetscOptionsDestroy(&db);
  return st;
}

cf_status cf_load_model(MPI_Comm comm, const char *path, struct cf_opts *to, struct cf_model *m,
                        struct cf_flow_cfg *fc, struct cf_ckpt_meta *meta, int with_optim) {
  struct cf_model_cfg mc;
  CF_TRY(cf_app_ckpt_options(comm, path, to, meta));
  CF_TRY(cf_app_model_cfg(to, &mc, fc));
  CF_TRY(cf_model_init(m, &mc, 1));
  float *moments = NULL; /* (2, n_params) scratch: read to verify, then dropped */
  if (with_optim)
    CF_TRY(cf_alloc((void **)&moments, 2 * m->n_params * sizeof(float), "optimizer state"));
  struct cf_ckpt_table ct;
  CF_TRY(cf_ckpt_table_init(&ct, m, NULL, moments, moments ? moments + m->n_params : NULL));
  cf_status st = cf_ckpt_read_tensors(comm, path, ct.t, ct.nt);
  cf_ckpt_table_release(&ct);
  cf_free((void **)&moments);
  return st;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

cf_status cf_cmd_sample(MPI_Comm comm) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  struct cf_opts *o = NULL, *to = NULL;
  CF_TRY(cf_alloc((void **)&o, sizeof *o, "options"));
  CF_TRY(cf_alloc((void **)&to, sizeof *to, "options"));
  CF_TRY(cf_opts_load(o, NULL, CMD_SAMPLE));
  CF_TRY(cf_opts_check_unknown("sample"));
  struct cf_sample_cfg sc;
  memset(&sc, 0, sizeof sc);
  int64_t seed, kv, traj;
  CF_TRY(cf_opt_int(o, "sample_n", 1, (int64_t)1 << 40, &sc.n));
  CF_TRY(cf_opt_int(o, "sample_batch", 1, 1 << 20, &sc.batch));
  CF_TRY(cf_opt_int(o, "seed", 0, INT64_MAX, &seed));
  CF_TRY(cf_opt_int(o, "sample_kvcache", 0, 1, &kv));
  CF_TRY(cf_opt_int(o, "sample_traj", 0, 1, &traj));
  CF_TRY(cf_opt_bool(o, "sample_quiet", &sc.quiet));
  sc.seed = (uint64_t)seed;
  sc.kvcache = (int)kv;
  const char *run_dir = cf_opt_str(o, "run_dir");
  char ck[4096], out[4096];
  if (cf_opt_str(o, "sample_ckpt")[0] != '\0') {
    snprintf(ck, sizeof ck, "%s", cf_opt_str(o, "sample_ckpt"));
  } else {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/ckpt", run_dir);
    CF_TRY(cf_ckpt_latest_read(dir, ck, sizeof ck));
  }
  if (cf_opt_str(o, "sample_out")[0] != '\0')
    snprintf(out, sizeof out, "%s", cf_opt_str(o, "sample_out"));
  else
    snprintf(out, sizeof out, "%s/samples.h5", run_dir);

  struct cf_model m;
  struct cf_flow_cfg fc;
  struct cf_ckpt_meta meta;
  CF_TRY(cf_load_model(comm, ck, to, &m, &fc, &meta, 0));
  double timeout;
  CF_TRY(cf_opt_real(o, "par_timeout", 0, 1e9, &timeout));
  CF_TRY(cf_watchdog_start(timeout, rank));
  int par[3];
  CF_TRY(cf_app_layout(o, world, &m.cfg, 1, 1, par));
  const char *tau_s = cf_opt_str(o, "sample_temperature");
  if (strcmp(tau_s, "auto") == 0)
    sc.tau = m.cfg.head == CF_HEAD_VAE ? 0.5 : 1.0;
  else
    CF_TRY(cf_opt_real(o, "sample_temperature", 0, 1e3, &sc.tau));
  struct cf_dist src;
  float *src_pts = NULL;
  CF_TRY(cf_app_dist(comm, cf_opt_str(to, "data_source"), m.cfg.D, "-data_source", &src, &src_pts));

  const int64_t D = m.cfg.D, N = m.cfg.N;
  float *x = NULL, *tr = NULL;
  size_t bx, bt;
  CF_TRY(cf_mul_size(&bx, (size_t)sc.n, (size_t)D * sizeof(float), "-sample_n x D"));
  CF_TRY(cf_mul_size(&bt, bx, (size_t)N, "-sample_n x N x D"));
  CF_TRY(cf_alloc((void **)&x, bx, "samples"));
  if (traj) CF_TRY(cf_alloc((void **)&tr, bt, "trajectories"));
  double t0 = now_s();
  CF_TRY(cf_rollout_run(comm, &m, &fc, &src, &sc, x, tr));
  double secs = now_s() - t0;

  struct cf_h5_writer w;
  char s_tau[32], s_seed[32], s_kv[8], s_step[32];
  snprintf(s_tau, sizeof s_tau, "%g", sc.tau);
  snprintf(s_seed, sizeof s_seed, "%lld", (long long)seed);
  snprintf(s_kv, sizeof s_kv, "%d", sc.kvcache);
  snprintf(s_step, sizeof s_step, "%lld", (long long)meta.step);
  CF_TRY(cf_h5_writer_open(&w, comm, out));
  int64_t shx[2] = {sc.n, D}, sht[3] = {sc.n, N, D};
  cf_status st = cf_h5_writer_put(&w, "/x", x, 2, shx);
  if (st == CF_OK && traj) st = cf_h5_writer_put(&w, "/traj", tr, 3, sht);
  const char *kvs[] = {"producer",    "calmflow sample",
                       "checkpoint",  ck,
                       "ckpt_step",   s_step,
                       "temperature", s_tau,
                       "seed",        s_seed,
                       "kvcache",     s_kv};
  for (int i = 0; i < 6 && st == CF_OK; i++)
    st = cf_h5_writer_attr(&w, kvs[2 * i], kvs[2 * i + 1]);
  if (st == CF_OK)
    st = cf_h5_writer_commit(&w);
  else
    cf_h5_writer_abort(&w);
  CF_TRY(st);
  if (rank == 0 && !sc.quiet)
    printf("wrote %lld samples to %s (%.2f s, %.0f samples/s, %s, tau %g, %d rank%s)\n",
           (long long)sc.n, out, secs, (double)sc.n / secs, sc.kvcache ? "KV cache" : "recompute",
           sc.tau, world, world > 1 ? "s" : "");
  cf_free((void **)&x);
  cf_free((void **)&tr);
  cf_free((void **)&src_pts);
  cf_model_release(&m);
  cf_free((void **)&o);
  cf_free((void **)&to);
  return CF_OK;
}
