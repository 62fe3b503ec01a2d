/* fuzz_options.c: libFuzzer target for calmflow's YAML options: the input is the text of an
 * -options_file_yaml file (or of a checkpoint's stored options), inserted with
 * PetscOptionsInsertStringYAML into a fresh PETSc options database and read back through the
 * option table (src/app/options.c) and the validation of train and sample: model, flow, CFM,
 * optimizer and layout configuration, and sample's own options. Oracles besides ASan/UBSan:
 * the resolved options written as YAML (cf_opts_yaml, what config.yaml and every checkpoint
 * store) must load back to the same values. Texts calmflow's own YAML check refuses are not
 * passed to PETSc (yaml_loads below), as in calmflow. */
#include <petscsys.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/app.h"
#include "calmflow/mem.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  cf_fuzz_init(argc, argv);
  return 0;
}

/* Texts PETSc would refuse, or crash on, are not passed to it: calmflow checks every options
 * text with cf_opts_yaml_check first (src/app/yamlcheck.c), and PETSc 3.18's
 * PetscOptionsInsertStringYAML leaks libyaml's parser and document on every error (a leak
 * report, and a thirty times slower target). */
static int yaml_loads(const char *text) {
  int ok = cf_opts_yaml_check(text, strlen(text), "fuzz") == CF_OK;
  cf_err_clear();
  return ok;
}

/* YAML text into a fresh database; 0 on success. */
static int insert_yaml(const char *text, PetscOptions *db) {
  *db = NULL;
  if (!yaml_loads(text)) return -1;
  if (PetscOptionsCreate(db) != 0) abort();
  PetscPushErrorHandler(PetscReturnErrorHandler, NULL);
  PetscErrorCode e = PetscOptionsInsertStringYAML(*db, text);
  PetscPopErrorHandler();
  return e == 0 ? 0 : -1;
}

/* What `calmflow train` validates before touching any file (cmd_train.c); 1 when a one-rank
 * run would get past it (a source or target read from a file counts as passing). */
static int train_checks(const struct cf_opts *o) {
  struct cf_model_cfg mc;
  struct cf_flow_cfg fc;
  struct cf_train_cfg tc;
  struct cf_cfm_cfg cc;
  struct cf_train_cfm_opts copt;
  struct cf_dist dist;
  double timeout;
  int par[3], overwrite, ok = 1;
  const char *model = cf_opt_str(o, "model");
  int cfm = strcmp(model, "cfm") == 0;
  ok = ok && (cfm || strcmp(model, "calmflow") == 0);
  ok = cf_app_train_cfg(o, &tc) == CF_OK && ok;
  ok = cf_opt_real(o, "par_timeout", 0, 1e9, &timeout) == CF_OK && ok;
  int cfm_ok = cf_app_cfm_cfg(o, &cc, &copt) == CF_OK &&
               cf_app_layout_data_only(o, "-model cfm is split by data parallelism only") == CF_OK;
  int model_ok = cf_app_model_cfg(o, &mc, &fc) == CF_OK;
  if (model_ok && ok) {
    for (int world = 1; world <= 8; world *= 2) {
      cf_status st = cf_app_layout(o, world, &mc, tc.microbatches, par);
      if (st == CF_OK) st = cf_train_cfg_check(&tc, &mc, world / (par[0] * par[1] * par[2]));
      if (world == 1 && !cfm) model_ok = st == CF_OK;
    }
  }
  ok = ok && (cfm ? cfm_ok : model_ok);
  ok = cf_opt_bool(o, "run_overwrite", &overwrite) == CF_OK && ok;
  ok = ok && cf_opt_str(o, "run_dir")[0] != '\0';
  int64_t D = cfm ? cc.D : mc.D;
  const char *names[2] = {cf_opt_str(o, "data_train")[0] ? "" : cf_opt_str(o, "data_name"),
                          cf_opt_str(o, "data_source")};
  for (int i = 0; i < 2 && ok; i++) {
    const char *s = names[i];
    size_t len = strlen(s);
    if (i == 0 && s[0] == '\0') continue; /* -data_train FILE */
    if (strchr(s, '/') || (len >= 3 && strcmp(s + len - 3, ".h5") == 0) ||
        (len >= 5 && strcmp(s + len - 5, ".hdf5") == 0))
      continue;
    ok = cf_dist_by_name(&dist, s, D, i ? "-data_source" : "-data_name") == CF_OK;
  }
  cf_err_clear();
  return ok;
}

/* What `calmflow sample` reads of its own options (cmd_sample.c). */
static void sample_checks(const struct cf_opts *o) {
  int64_t v;
  double x;
  int b;
  (void)cf_opt_int(o, "sample_n", 1, (int64_t)1 << 40, &v);
  (void)cf_opt_int(o, "sample_batch", 1, 1 << 20, &v);
  (void)cf_opt_int(o, "seed", 0, INT64_MAX, &v);
  (void)cf_opt_int(o, "sample_kvcache", 0, 1, &v);
  (void)cf_opt_int(o, "sample_traj", 0, 1, &v);
  (void)cf_opt_bool(o, "sample_quiet", &b);
  (void)cf_opt_real(o, "sample_temperature", 0, 1e3, &x);
  (void)cf_opt_int(o, "sample_resume", 0, 1, &v);
  (void)cf_app_layout_data_only(o, "the CFM baseline samples data parallel only");
  (void)cf_opt_given(o, "sample_ckpt");
  (void)cf_opt_str(o, "sample_out");
  cf_err_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  char *text = malloc(n + 1);
  if (text == NULL) return 0;
  memcpy(text, data, n);
  text[n] = '\0';
  /* reused across inputs (1 MiB: mapping it afresh each time would dominate the run time) */
  static struct cf_opts o_s, back_s;
  static char yaml[1 << 16];
  struct cf_opts *o = &o_s, *back = &back_s;
  PetscOptions db = NULL;
  if (cf_fuzz_note("yaml", insert_yaml(text, &db) == 0 ? CF_OK : CF_EINVAL) == CF_OK) {
    const unsigned all = CMD_DATA | CMD_TRAIN | CMD_SAMPLE | CMD_EVAL;
    if (cf_opts_load(o, db, all) != CF_OK) abort(); /* cannot fail on a valid database */
    int valid = train_checks(o);
    cf_fuzz_note(valid ? "train options valid" : "train options refused", CF_OK);
    sample_checks(o);
    /* config.yaml / the checkpoint's options: what train writes once the options pass, sample
     * must read back */
    if (valid && cf_opts_yaml(o, CMD_TRAIN, yaml, 1 << 16) == CF_OK) {
      PetscOptions db2 = NULL;
      if (insert_yaml(yaml, &db2) != 0) {
        fprintf(stderr, "cf_fuzz options: the resolved options do not load back as YAML:\n%s\n",
                yaml);
        abort();
      }
      if (cf_opts_load(back, db2, CMD_TRAIN) != CF_OK) abort();
      const char *diff = cf_opts_first_difference(o, back, CMD_TRAIN, NULL);
      if (diff != NULL) {
        fprintf(stderr,
                "cf_fuzz options: option -%s is '%s' but reads back from its YAML as '%s'\n", diff,
                cf_opt_str(o, diff), cf_opt_str(back, diff));
        abort();
      }
      PetscOptionsDestroy(&db2);
    }
  }
  if (db) PetscOptionsDestroy(&db);
  free(text);
  cf_fuzz_after("options");
  return 0;
}
