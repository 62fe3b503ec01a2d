/* fuzz_options.c: libFuzzer target for calmflow's YAML options: the input is the text of an
 * -options_file_yaml file (or of a checkpoint's stored options), inserted with
 * PetscOptionsInsertStringYAML into a fresh PETSc options database and read back through the
 * option table (src/app/options.c) and the validation of train and sample: model, flow, CFM,
 * optimizer and layout configuration, and sample's own options. Oracles besides ASan/UBSan:
 * the resolved options written as YAML (cf_opts_yaml, what config.yaml and every checkpoint
 * store) must load back to the same values. Texts PETSc would refuse are not passed to it
 * (yaml_loads below: PETSc leaks, or crashes, on them). */
#include <petscsys.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CF_FUZZ_YAML
#include <yaml.h>
#endif

#include "app/app.h"
#include "calmflow/mem.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  cf_fuzz_init(argc, argv);
  return 0;
}

#ifdef CF_FUZZ_YAML
/* Would PETSc 3.18's PetscParseLayerYAML take this node without an error (its rules: a mapping
 * of scalar keys; values scalars, sequences of scalars or one-pair mappings, or mappings; "<<"
 * merges mappings; "$$" keys are skipped)? Stricter where PETSc's own checks are uncertain: keys
 * start with a letter and are short, nesting is at most 20 deep (PETSc's prefix stack holds 25;
 * a merge cycle, `&a {<<: *a}`, recurses without end), "!include" is not followed. */
static int petsc_layer_ok(yaml_document_t *doc, yaml_node_t *node, int depth) {
  if (node == NULL || depth > 20) return 0;
  if (node->type == YAML_SCALAR_NODE && node->data.scalar.value[0] == '\0') return 1;
  if (node->type != YAML_MAPPING_NODE) return 0;
  for (yaml_node_pair_t *pr = node->data.mapping.pairs.start; pr < node->data.mapping.pairs.top;
       pr++) {
    yaml_node_t *k = yaml_document_get_node(doc, pr->key),
                *v = yaml_document_get_node(doc, pr->value);
    if (k == NULL || v == NULL || k->type != YAML_SCALAR_NODE) return 0;
    const char *key = (const char *)k->data.scalar.value;
    if (strcmp(key, "<<") == 0) {
      if (v->type == YAML_MAPPING_NODE) {
        if (!petsc_layer_ok(doc, v, depth + 1)) return 0;
      } else if (v->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
          yaml_node_t *m = yaml_document_get_node(doc, *it);
          if (m == NULL || m->type != YAML_MAPPING_NODE || !petsc_layer_ok(doc, m, depth + 1))
            return 0;
        }
      } else {
        return 0;
      }
      continue;
    }
    if (strncmp(key, "$$", 2) == 0) {
      if (v->tag && strstr((const char *)v->tag, "!include")) return 0;
      continue;
    }
    if (!((key[0] >= 'a' && key[0] <= 'z') || (key[0] >= 'A' && key[0] <= 'Z')) ||
        strlen(key) > 100)
      return 0;
    if (v->type == YAML_MAPPING_NODE) {
      if (!petsc_layer_ok(doc, v, depth + 1)) return 0;
    } else if (v->type == YAML_SEQUENCE_NODE) {
      for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
           it++) {
        yaml_node_t *m = yaml_document_get_node(doc, *it);
        if (m == NULL) return 0;
        if (m->type == YAML_SCALAR_NODE) continue;
        if (m->type != YAML_MAPPING_NODE) return 0;
        yaml_node_pair_t *p0 = m->data.mapping.pairs.start, *p1 = m->data.mapping.pairs.top;
        if (p1 - p0 > 1) return 0;
        if (p1 - p0 == 1) {
          yaml_node_t *mk = yaml_document_get_node(doc, p0->key);
          if (mk == NULL || mk->type != YAML_SCALAR_NODE ||
              strcmp((const char *)mk->data.scalar.value, "<<") == 0)
            return 0;
          if (strncmp((const char *)mk->data.scalar.value, "$$", 2) == 0) continue;
        }
        if (!petsc_layer_ok(doc, m, depth + 1)) return 0;
      }
    } else if (v->type != YAML_SCALAR_NODE) {
      return 0;
    }
  }
  return 1;
}
#endif

/* Would PETSc take the text without an error? PETSc 3.18's PetscOptionsInsertStringYAML leaks
 * libyaml's parser and document on every error (fuzz_common.c), which slows the target about
 * thirty times (a leak check after each such input) and grows its memory; and it overflows the
 * stack on a merge cycle. Those texts are not passed to PETSc: calmflow's own handling of
 * PETSc's refusal is one branch (main.c; checkpoints no longer go through PETSc's YAML). */
static int yaml_loads(const char *text) {
#ifdef CF_FUZZ_YAML
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return 0;
  yaml_parser_set_input_string(&p, (const unsigned char *)text, strlen(text));
  int ok = 1;
  for (int docs = 0; ok; docs++) { /* every document of the stream, as PETSc reads them */
    yaml_document_t doc;
    if (!yaml_parser_load(&p, &doc)) {
      ok = 0;
      break;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    ok = root == NULL || (docs < 16 && petsc_layer_ok(&doc, root, 0));
    yaml_document_delete(&doc);
    if (root == NULL) break;
  }
  yaml_parser_delete(&p);
  return ok;
#else
  (void)text;
  return 1;
#endif
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
