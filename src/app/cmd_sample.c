/* cmd_sample.c: `calmflow sample` — rebuild the model from a checkpoint's stored options,
 * load its parameters, roll out -sample_n trajectories under the coordinator (rollout.h) and
 * stream /x (and /traj) into the samples file as they finish (samples.h); -sample_resume 1
 * continues an unfinished file. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "calmflow/cfpetsc.h"
#include "calmflow/ckpt.h"
#include "calmflow/conds.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/rollout.h"
#include "calmflow/samples.h"
#include "calmflow/watchdog.h"

/* Local. The options a checkpoint stores, in the form cf_opts_yaml writes them ('#' comment
 * lines, then one `name: "value"` line per option; no quote, backslash or control character in
 * a value), into db. Read here rather than by PETSc's YAML reader, which follows a damaged
 * file's aliases into endless recursion (a stack overflow in PETSc 3.18: `&a {<<: *a}`) and its
 * `!include` tags to other files. */
static cf_status ckpt_options_parse(const char *text, PetscOptions db, const char *path) {
  int line = 0;
  for (const char *p = text; *p != '\0';) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) : strlen(p);
    line++;
    if (n > 0 && p[0] != '#') {
      const char *colon = memchr(p, ':', n);
      size_t k = colon ? (size_t)(colon - p) : 0; /* name p[0..k), value p[k+3..n-1) */
      int ok = colon != NULL && k > 0 && k < 200 && n >= k + 4 && colon[1] == ' ' &&
               colon[2] == '"' && p[n - 1] == '"' && n - k - 4 < CF_OPT_LEN;
      for (size_t i = 0; ok && i < k; i++)
        ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_';
      for (size_t i = k + 3; ok && i < n - 1; i++)
        ok = p[i] != '"' && p[i] != '\\' && (unsigned char)p[i] >= 0x20 && p[i] != 0x7f;
      CF_CHECK(ok, CF_ECORRUPT,
               "checkpoint '%s': line %d of its stored options is not 'name: \"value\"' (the "
               "form calmflow writes)",
               path, line);
      char name[256], value[CF_OPT_LEN];
      snprintf(name, sizeof name, "-%.*s", (int)k, p);
      snprintf(value, sizeof value, "%.*s", (int)(n - k - 4), colon + 3);
      CF_PETSC(PetscOptionsSetValue(db, name, value));
    }
    p += n + (nl != NULL);
  }
  return CF_OK;
}

cf_status cf_app_ckpt_options(MPI_Comm comm, const char *path, struct cf_opts *to,
                              struct cf_ckpt_meta *meta) {
  char *yaml = NULL;
  CF_TRY(cf_ckpt_read_meta(comm, path, meta, &yaml));
  PetscOptions db;
  CF_PETSC(PetscOptionsCreate(&db));
  cf_status st = ckpt_options_parse(yaml, db, path);
  cf_free((void **)&yaml);
  meta->options_yaml = NULL; /* it pointed into the freed buffer */
  if (st == CF_OK) st = cf_opts_load(to, db, CMD_TRAIN);
  PetscOptionsDestroy(&db); /* on both paths (train's resume skips bad checkpoints in a loop) */
  return st;
}

cf_status cf_load_model(MPI_Comm comm, const char *path, struct cf_opts *to, struct cf_model *m,
                        struct cf_flow_cfg *fc, struct cf_ckpt_meta *meta, int with_optim,
                        const struct cf_grid *g) {
  struct cf_model_cfg mc;
  CF_TRY(cf_app_ckpt_options(comm, path, to, meta));
  CF_TRY(cf_app_model_cfg(to, &mc, fc));
  CF_TRY(cf_model_init_part(m, &mc, 1, g));
  float *moments = NULL; /* (2, n_params) scratch: read to verify, then dropped */
  if (with_optim)
    CF_TRY(cf_alloc((void **)&moments, 2 * m->n_params * sizeof(float), "optimizer state"));
  struct cf_ckpt_table ct;
  CF_TRY(cf_ckpt_table_init(&ct, m, g, moments, moments ? moments + m->n_params : NULL));
  cf_status st = cf_ckpt_read_tensors(comm, path, ct.t, ct.nt);
  cf_ckpt_table_release(&ct);
  cf_free((void **)&moments);
  return st;
}

cf_status cf_load_cfm(MPI_Comm comm, const char *path, struct cf_opts *to, struct cf_cfm *m,
                      struct cf_ckpt_meta *meta, int with_optim, int64_t max_batch,
                      struct cf_conds *conds) {
  struct cf_cfm_cfg cc;
  struct cf_train_cfm_opts copt;
  if (conds != NULL) memset(conds, 0, sizeof *conds);
  CF_TRY(cf_app_ckpt_options(comm, path, to, meta));
  CF_CHECK(strcmp(cf_opt_str(to, "model"), "cfm") == 0, CF_EINVAL,
           "checkpoint '%s' holds a %s model, not the CFM baseline", path, cf_opt_str(to, "model"));
  CF_TRY(cf_app_cfm_cfg(to, &cc, &copt));
  /* a conditional model: its columns and categories are in the checkpoint, not the data file */
  struct cf_conds cd;
  memset(&cd, 0, sizeof cd);
  const char *spec = cf_opt_str(to, "cfm_cond");
  CF_CHECK(spec[0] == '\0' || meta->conditions != NULL, CF_ECORRUPT,
           "checkpoint '%s' was trained with -cfm_cond %s but holds no conditions attribute", path,
           spec);
  if (spec[0] != '\0') {
    char what[4300];
    snprintf(what, sizeof what, "checkpoint '%s' attribute conditions", path);
    CF_TRY(cf_conds_from_text(meta->conditions, what, &cd));
    cc.cond_dim = cd.C;
  }
  cf_status sc = cf_cfm_init(m, &cc, max_batch);
  if (sc == CF_OK && conds != NULL)
    *conds = cd;
  else
    cf_conds_release(&cd);
  CF_TRY(sc);
  float *moments = NULL; /* (2, n_params) scratch: read to verify, then dropped */
  if (with_optim)
    CF_TRY(cf_alloc((void **)&moments, 2 * m->n_params * sizeof(float), "optimizer state"));
  struct cf_ckpt_table ct;
  cf_status st = cf_ckpt_table_init_tensors(&ct, m->tensors, m->n_tensors, m->params, NULL, moments,
                                            moments ? moments + m->n_params : NULL);
  if (st == CF_OK) st = cf_ckpt_read_tensors(comm, path, ct.t, ct.nt);
  cf_ckpt_table_release(&ct);
  cf_free((void **)&moments);
  return st;
}

/* Rank 0: the rollout's finished samples, in order, gathered into appends of about a second's
 * worth (each append flushes and fsyncs the file, too costly per small batch). A kill loses at
 * most the samples of the last second. */
struct sink {
  struct cf_samples *f;
  int64_t D, N, traj;
  int64_t cap, count; /* samples the buffer holds / holds now */
  float *x, *t;       /* (cap, D), (cap, N, D) */
  double last;        /* time of the last append */
};

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static cf_status sink_flush(struct sink *k) {
  cf_status st = cf_samples_append(k->f, k->count, k->x, k->traj ? k->t : NULL);
  k->count = 0;
  k->last = wall_s();
  return st;
}

static cf_status sink_append(void *ctx, int64_t i0, int64_t count, const float *x,
                             const float *traj) {
  struct sink *k = ctx;
  CF_CHECK(i0 == k->f->n_done + k->count, CF_EINVAL,
           "samples file: samples from %lld arrive but %lld are written (internal error)",
           (long long)i0, (long long)(k->f->n_done + k->count));
  while (count > 0) {
    int64_t take = count < k->cap - k->count ? count : k->cap - k->count;
    memcpy(k->x + k->count * k->D, x, (size_t)(take * k->D) * sizeof(float));
    if (k->traj)
      memcpy(k->t + k->count * k->N * k->D, traj, (size_t)(take * k->N * k->D) * sizeof(float));
    k->count += take;
    x += take * k->D;
    if (traj) traj += take * k->N * k->D;
    count -= take;
    if (k->count == k->cap) CF_TRY(sink_flush(k));
  }
  if (k->count > 0 && wall_s() - k->last >= 1.0) CF_TRY(sink_flush(k));
  return CF_OK;
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

  /* the method and its layout: the checkpoint's model decides which splits fit */
  struct cf_model m;
  struct cf_cfm cm;
  struct cf_conds conds;
  memset(&m, 0, sizeof m);
  memset(&cm, 0, sizeof cm);
  memset(&conds, 0, sizeof conds);
  struct cf_model_cfg mc0;
  struct cf_flow_cfg fc;
  struct cf_ckpt_meta meta;
  CF_TRY(cf_app_ckpt_options(comm, ck, to, &meta));
  const int cfm = strcmp(cf_opt_str(to, "model"), "cfm") == 0;
  int par[3] = {1, 1, 1};
  struct cf_grid g;
  int64_t D, N;
  const char *tau_s = cf_opt_str(o, "sample_temperature");
  if (cfm) {
    struct cf_cfm_cfg cc;
    struct cf_train_cfm_opts copt;
    CF_TRY(cf_app_cfm_cfg(to, &cc, &copt));
    CF_TRY(cf_app_layout_data_only(o, "the CFM baseline samples data parallel only"));
    CF_CHECK(strcmp(tau_s, "auto") == 0, CF_EINVAL,
             "option -sample_temperature: the CFM baseline ('%s') integrates an ODE and has no "
             "temperature (leave it at auto)",
             ck);
    CF_TRY(cf_opt_int(to, "flow_time_points", 2, 1 << 20, &N));
    CF_TRY(cf_grid_init(&g, comm, 1, 1, 1));
    CF_TRY(cf_load_cfm(comm, ck, to, &cm, &meta, 0, sc.batch, &conds));
    D = cc.D;
  } else {
    CF_TRY(cf_app_model_cfg(to, &mc0, &fc));
    CF_TRY(cf_app_layout(o, world, &mc0, 0, par));
    CF_TRY(cf_grid_init(&g, comm, par[0], par[1], par[2]));
    CF_TRY(cf_load_model(comm, ck, to, &m, &fc, &meta, 0, &g));
    if (strcmp(tau_s, "auto") == 0)
      sc.tau = m.cfg.head == CF_HEAD_VAE ? 0.5 : 1.0;
    else
      CF_TRY(cf_opt_real(o, "sample_temperature", 0, 1e3, &sc.tau));
    D = m.cfg.D;
    N = m.cfg.N;
  }
  /* -sample_cond: the condition of a conditional CFM, one category of each of its columns */
  float *cond = NULL;
  char cond_desc[2048] = "";
  const char *cond_spec = cf_opt_str(o, "sample_cond");
  if (conds.ncol > 0) {
    int32_t codes[CF_CONDS_MAX];
    CF_TRY(cf_conds_select(&conds, cond_spec, "-sample_cond", codes));
    CF_TRY(cf_alloc((void **)&cond, (size_t)conds.C * sizeof(float), "sample condition"));
    cf_conds_onehot(&conds, codes, cond);
    cf_conds_describe(&conds, codes, cond_desc, sizeof cond_desc);
  } else if (m.cfg.prompt_len == 0) { /* a prompt model takes -sample_cond for its template */
    CF_CHECK(cond_spec[0] == '\0', CF_EINVAL,
             "option -sample_cond: checkpoint '%s' holds a model without conditions (trained "
             "without -cfm_cond or -data_prompt)",
             ck);
  }
  /* -sample_prompt / -sample_cond of a model trained with text prompts (prompt.c) */
  int32_t *prompt_ids = NULL;
  char prompt_text[4096] = "";
  if (!cfm) {
    CF_TRY(cf_alloc((void **)&prompt_ids, (size_t)(m.cfg.prompt_len + 1) * sizeof(int32_t),
                    "prompt ids"));
    CF_TRY(
        cf_app_prompt_sample(comm, o, to, &m.cfg, ck, prompt_ids, prompt_text, sizeof prompt_text));
    sc.prompt = m.cfg.prompt_len > 0 ? prompt_ids : NULL;
  } else {
    CF_CHECK(cf_opt_str(o, "sample_prompt")[0] == '\0', CF_EINVAL,
             "option -sample_prompt: checkpoint '%s' holds the CFM baseline, which takes no text "
             "prompt (-sample_cond for -cfm_cond models)",
             ck);
  }
  double timeout;
  CF_TRY(cf_opt_real(o, "par_timeout", 0, 1e9, &timeout));
  CF_TRY(cf_watchdog_start(timeout, rank));
  char layout[128];
  cf_grid_describe(&g, layout, sizeof layout);
  struct cf_dist src;
  float *src_pts = NULL;
  CF_TRY(cf_app_dist(comm, cf_opt_str(to, "data_source"), D, "-data_source", &src, &src_pts));
  struct cf_ode_opts ode_opts;
  cf_ode_opts_default(&ode_opts);

  int64_t resume;
  CF_TRY(cf_opt_int(o, "sample_resume", 0, 1, &resume));
  sc.traj = (int)traj;
  /* what made the file: resuming requires the same, so the finished file is the one an
   * uninterrupted run writes */
  char config[8192];
  snprintf(config, sizeof config,
           "producer: calmflow sample\ncheckpoint: %s\nckpt_step: %lld\nseed: %lld\n"
           "temperature: %.17g\nkvcache: %d\nsample_n: %lld\ntraj: %d\ndata_source: %s\n"
           "tensor_parallel: %d\ncontext_parallel: %d\n",
           ck, (long long)meta.step, (long long)seed, sc.tau, sc.kvcache, (long long)sc.n,
           (int)traj, cf_opt_str(to, "data_source"), par[0], par[2]);
  if (cfm) { /* the integration: a chunk's samples share their adaptive steps */
    size_t len = strlen(config);
    snprintf(config + len, sizeof config - len,
             "model: cfm\nsample_batch: %lld\node: PETSc TS, default rk 5dp, atol %g rtol %g, "
             "-cfm_ts_* options apply\n",
             (long long)sc.batch, ode_opts.atol, ode_opts.rtol);
    len = strlen(config);
    if (cond != NULL) snprintf(config + len, sizeof config - len, "condition: %s\n", cond_desc);
  }
  if (sc.prompt != NULL) { /* the prompt as text and as the left-padded ids the model saw */
    size_t len = strlen(config);
    snprintf(config + len, sizeof config - len, "prompt: %s\nprompt_ids:", prompt_text);
    for (int64_t i = 0; i < m.cfg.prompt_len; i++) {
      len = strlen(config);
      snprintf(config + len, sizeof config - len, " %d", (int)sc.prompt[i]);
    }
    len = strlen(config);
    snprintf(config + len, sizeof config - len, "\n");
  }
  struct cf_samples_spec spec = {.n = sc.n, .D = D, .N = N, .traj = (int)traj, .config = config};
  struct cf_samples file;
  memset(&file, 0, sizeof file);
  int64_t done = 0;
  cf_status st = CF_OK;
  if (rank == 0) {
    st = resume ? cf_samples_resume(&file, out, &spec) : cf_samples_create(&file, out, &spec);
    if (st == CF_OK) done = file.n_done;
  }
  int ok = st == CF_OK;
  CF_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, comm));
  CF_MPI(MPI_Bcast(&done, 1, MPI_INT64_T, 0, comm));
  if (!ok) return st != CF_OK ? st : cf_err(CF_EREMOTE, "rank 0 could not open '%s'", out);
  if (rank == 0 && !sc.quiet && resume)
    printf("resuming %s: %lld of %lld samples are there\n", out, (long long)done, (long long)sc.n);
  /* an unfinished file ends at a whole sequence unless it is complete */
  sc.first = done;
  struct sink k = {.f = &file, .D = D, .N = N, .traj = traj, .last = wall_s()};
  if (rank == 0) { /* up to 4 MiB of samples between appends, at least one batch */
    int64_t per = traj ? N * D : D, b = sc.batch * m.cfg.P;
    k.cap = ((int64_t)1 << 20) / per > b ? ((int64_t)1 << 20) / per : b;
    st = cf_alloc((void **)&k.x, (size_t)(k.cap * D) * sizeof(float), "samples buffer");
    if (st == CF_OK && traj)
      st = cf_alloc((void **)&k.t, (size_t)(k.cap * N * D) * sizeof(float), "samples buffer");
  }
  ok = st == CF_OK;
  CF_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, comm));
  if (!ok) return st != CF_OK ? st : cf_err(CF_EREMOTE, "rank 0 could not allocate");
  struct cf_rollout_stats rs;
  struct cf_rollout_ode ode;
  memset(&ode, 0, sizeof ode);
  if (cfm)
    st = cf_rollout_cfm_run(comm, &cm, &src, cond, &sc, N, &ode_opts, sink_append, &k, &rs, &ode);
  else
    st = cf_rollout_run(comm, &g, &m, &fc, &src, &sc, sink_append, &k, &rs);
  if (rank == 0) {
    /* what arrived in order is committed, also after a failure elsewhere */
    cf_status sf = k.count > 0 ? sink_flush(&k) : CF_OK;
    if (st == CF_OK) st = sf;
    if (st == CF_OK)
      st = cf_samples_finish(&file);
    else
      cf_samples_close(&file);
    cf_free((void **)&k.x);
    cf_free((void **)&k.t);
  }
  int fin = st == CF_OK;
  CF_MPI(MPI_Bcast(&fin, 1, MPI_INT, 0, comm));
  if (!fin) return st != CF_OK ? st : cf_err(CF_EREMOTE, "rank 0 could not finish '%s'", out);
  if (rank == 0 && !sc.quiet && cfm)
    printf("wrote %lld samples to %s (%.2f s, %.0f samples/s, CFM ODE with PETSc TS %s: %lld "
           "solves, %.1f function evaluations and %.1f steps per solve, %lld rejected; %d "
           "rank%s)\n",
           (long long)sc.n, out, rs.seconds, (double)(sc.n - done) / rs.seconds, ode.type,
           (long long)ode.solves, ode.solves ? (double)ode.nfe / (double)ode.solves : 0.0,
           ode.solves ? (double)ode.steps / (double)ode.solves : 0.0, (long long)ode.rejected,
           world, world > 1 ? "s" : "");
  else if (rank == 0 && !sc.quiet)
    printf("wrote %lld samples to %s (%.2f s, %.0f samples/s, %s, tau %g, %s; busy "
           "%.0f-%.0f%% of the time per rank, coordinator %.1f%%)\n",
           (long long)sc.n, out, rs.seconds, (double)(sc.n - done) / rs.seconds,
           sc.kvcache ? "KV cache" : "recompute", sc.tau, layout, 100.0 * rs.busy_min,
           100.0 * rs.busy_max, rs.seconds > 0 ? 100.0 * rs.coord_seconds / rs.seconds : 0.0);
  if (rank == 0) {
    /* machine-readable figures for benchmarks */
    char p[4200], text[1024];
    snprintf(p, sizeof p, "%s.json", out);
    snprintf(text, sizeof text,
             "{\"ranks\": %d, \"tp\": %d, \"pp\": %d, \"cp\": %d, \"samples\": %lld, \"seconds\": "
             "%.6g, \"samples_per_s\": %.6g, "
             "\"kvcache\": %d, \"busy_min\": %.4f, \"busy_max\": %.4f, \"coord_seconds\": %.6g, "
             "\"batches\": %lld, \"model\": \"%s\", \"ode_solves\": %lld, \"nfe\": %lld, "
             "\"nfe_per_solve\": %.6g, \"ode_steps\": %lld, \"ode_rejected\": %lld}\n",
             world, par[0], par[1], par[2], (long long)(sc.n - done), rs.seconds,
             (double)(sc.n - done) / rs.seconds, sc.kvcache, rs.busy_min, rs.busy_max,
             rs.coord_seconds, (long long)rs.batches, cfm ? "cfm" : "calmflow",
             (long long)ode.solves, (long long)ode.nfe,
             ode.solves ? (double)ode.nfe / (double)ode.solves : 0.0, (long long)ode.steps,
             (long long)ode.rejected);
    (void)cf_write_text_atomic(p, text);
  }
  cf_free((void **)&src_pts);
  cf_free((void **)&prompt_ids);
  cf_free((void **)&cond);
  cf_conds_release(&conds);
  cf_model_release(&m);
  cf_cfm_release(&cm);
  cf_grid_release(&g);
  cf_free((void **)&o);
  cf_free((void **)&to);
  return CF_OK;
}
