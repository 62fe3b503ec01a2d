/* fuzz_ckpt.c: libFuzzer target for the checkpoint reader (src/io/ckpt.c) as `calmflow sample`
 * and resuming use it: the metadata and stored options (cf_app_ckpt_options: root attributes,
 * then the stored `name: "value"` options into a fresh PETSc database and the option table,
 * then the model and CFM configuration checks), then the tensors of a fixed small model
 * (presence, type, shape, data, checksums of format versions 1 and 2). The input is operations
 * for the structured HDF5 builder (fuzz_common.h), whose "checksum" types store the correct
 * checksum of a dataset so the fuzzer gets past verification. Oracle besides ASan/UBSan and the
 * leak checks: accepted metadata has its strings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/app.h"
#include "calmflow/ckpt.h"
#include "calmflow/mem.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

static const char *const g_paths[] = {"params", "params/w", "params/b",   "optim",     "optim/m",
                                      "w",      "b",        "params/w/x", "params/b/", "params/."};
static const char *const g_attrs[] = {
    "format",  "format_version", "complete", "step", "seed",     "world",     "data_cursor",
    "options", "model_kind",     "layout",   "rng",  "rng_step", "n_tensors", "checksum_algorithm",
    "checksum"};
static const char *const g_strs[] = {"calmflow-ckpt",
                                     "calmflow",
                                     "cfm",
                                     "mix64sum-f32",
                                     "fnv1a64-f32le",
                                     "dp1 x pp1 x cp1 x tp1 (1 rank)",
                                     "philox4x32-10",
                                     "",
                                     "model: \"cfm\"\n",
                                     "data_dim: \"3\"\nnet_hidden: \"8\"\n",
                                     "net_heads: \"3\"\nnet_hidden: \"64\"\n",
                                     "flow_head: \"gmm\"\nflow_gmm_k: \"0\"\n",
                                     "train: {lr: 1e-3}\n",
                                     "a: [1, 2\n",
                                     "&a x: *a\n"};
static const struct cf_fuzz_dict g_dict = {g_paths, 10, g_attrs, 15, g_strs, 15};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  cf_fuzz_init(argc, argv);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  MPI_Comm comm = cf_fuzz_comm();
  const char *path = cf_fuzz_path("ckpt.h5");
  cf_fuzz_h5_input(path, &g_dict, data, n);

  struct cf_opts *to = NULL;
  if (cf_alloc((void **)&to, sizeof *to, "options") != CF_OK) abort();
  struct cf_ckpt_meta meta;
  if (cf_fuzz_note("cf_app_ckpt_options", cf_app_ckpt_options(comm, path, to, &meta)) == CF_OK) {
    if (meta.model_kind == NULL || meta.options_yaml != NULL) abort();
    (void)strlen(meta.model_kind);
    if (meta.layout) (void)strlen(meta.layout);
    if (meta.rng) (void)strlen(meta.rng);
    struct cf_model_cfg mc;
    struct cf_flow_cfg fc;
    struct cf_cfm_cfg cc;
    struct cf_train_cfm_opts copt;
    (void)cf_app_model_cfg(to, &mc, &fc);
    (void)cf_app_cfm_cfg(to, &cc, &copt);
  }
  cf_free((void **)&to);
  cf_err_clear();

  float w[12], b[5];
  struct cf_ckpt_tensor t[2];
  memset(t, 0, sizeof t);
  t[0].name = "params/w";
  t[0].ndim = 2;
  t[0].shape[0] = 3;
  t[0].shape[1] = 4;
  t[0].data = w;
  t[1].name = "params/b";
  t[1].ndim = 1;
  t[1].shape[0] = 5;
  t[1].data = b;
  if (cf_fuzz_note("cf_ckpt_read_tensors", cf_ckpt_read_tensors(comm, path, t, 2)) == CF_OK) {
    /* the data passed verification: no uninitialised value may remain (MSan would say more;
     * touching every value lets UBSan / ASan see a bad buffer) */
    volatile float s = 0;
    for (int i = 0; i < 12; i++)
      s += w[i];
    for (int i = 0; i < 5; i++)
      s += b[i];
    (void)s;
  }
  cf_fuzz_after("ckpt");
  return 0;
}
