/* options.c: every calmflow option, declared once (name, default, help, subcommands), read
 * from PETSc's options database, validated, listed by -help and written back as YAML. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "calmflow/bpe.h"
#include "calmflow/cfpetsc.h"

#define TR CMD_TRAIN
#define SA CMD_SAMPLE

static const struct optdef {
  const char *name; /* without the dash */
  const char *def;
  unsigned cmds;
  const char *help;
} g_opts[] = {
    {"run_dir", "runs/default", TR | SA, "run directory (train writes it, sample reads it)"},
    {"run_overwrite", "0", TR,
     "1: start afresh in a run directory that already holds a run (its checkpoints, log and "
     "summary are deleted first); 0: resume it, or refuse one that belongs to another run"},
    {"seed", "0", CMD_DATA | TR | SA, "the one seed; every random draw derives from it"},
    {"data_name", "moons", CMD_DATA | TR,
     "synthetic target: normal, gaussian, 8gaussians, moons, checkerboard, 4blobs, 2gaussians, "
     "2to4gaussians"},
    {"data_dim", "2", CMD_DATA | TR, "data dimension D"},
    {"data_n", "2000", CMD_DATA, "points to generate"},
    {"data_out", "data.h5", CMD_DATA,
     "output file of `calmflow data` (dataset /x; with -data_h5ad the layout of "
     "docs/data-format.md)"},
    {"data_h5ad", "", CMD_DATA,
     "single-cell input: an AnnData .h5ad file (cells x genes), preprocessed (cell and gene "
     "filters, normalization, log1p, highly variable genes, PCA) into -data_out instead of a "
     "synthetic set"},
    {"data_min_genes", "0", CMD_DATA,
     "h5ad: drop the cells with fewer than this many expressed (nonzero) genes"},
    {"data_min_cells", "0", CMD_DATA,
     "h5ad: drop the genes expressed (nonzero) in fewer than this many of the kept cells"},
    {"data_normalize", "1e4", CMD_DATA,
     "h5ad: library-size normalization target, x * target / (the cell's sum over all the "
     "file's genes); 0: off"},
    {"data_log1p", "1", CMD_DATA, "h5ad: 1: log1p of the normalized values; 0: off"},
    {"data_hvg", "2000", CMD_DATA,
     "h5ad: highly variable genes kept: the largest sample variance of the normalized log1p "
     "values over the kept cells (plain variance, not Seurat's binned dispersion); 0: every "
     "gene left after -data_min_cells"},
    {"data_pca", "50", CMD_DATA,
     "h5ad: K principal components: /x holds the cells' PCA coordinates (n x K), /pca the "
     "components, mean and variances; 0: no PCA, /x holds the kept genes"},
    {"data_obs", "", CMD_DATA,
     "h5ad: comma-separated obs columns copied as strings to /obs/<name> (conditions); empty: "
     "every categorical and string column; none: no column"},
    {"data_train", "", TR, "target samples x1 from FILE.h5 (/x, n x D) instead of -data_name"},
    {"data_source", "normal", TR, "source x0: normal, a synthetic name, or FILE.h5"},
    {"data_prompt", "", TR,
     "calmflow: condition on a text prompt per row of the -data_train file, this template with "
     "{COL} replaced by the row's /obs/COL string (e.g. \"a myoblast at {Hours} hours\"; {{ "
     "and }} for braces); its tokens (-tok_*) go in front of every sequence, whose P "
     "trajectories share one prompt"},
    {"tok_file", "", TR | SA,
     "text prompts: the tokenizer, a Hugging Face tokenizer.json (byte-level BPE: GPT-2, "
     "GPT-NeoX, Pythia); sample: default the checkpoint's"},
    {"tok_encoder", "", TR | SA,
     "text prompts: GPT-2's encoder.json (with -tok_vocab) instead of -tok_file"},
    {"tok_vocab", "", TR | SA, "text prompts: GPT-2's vocab.bpe (with -tok_encoder)"},
    {"net_prompt_len", "auto", TR,
     "text prompts: prompt length L in tokens (shorter prompts are left-padded); auto = the "
     "longest prompt of the data; more leaves room for longer prompts at sampling"},
    {"net_prompt_vocab", "auto", TR,
     "text prompts: rows V of prompt.wte; auto = the tokenizer's vocabulary size"},
    {"net_prompt_pad", "auto", TR,
     "text prompts: the left-pad token id; auto = the tokenizer's <|endoftext|>"},
    {"data_exclude", "", TR,
     "leave rows of the -data_train file out of training: COL=VALUE[,VALUE...] (clauses for "
     "several columns separated by ';'), matched against the file's /obs/COL strings"},
    {"model", "calmflow", TR,
     "the method: calmflow, or cfm (the flow-matching ODE baseline: an MLP velocity field of "
     "-net_layers hidden layers of width -net_hidden, sampled with PETSc TS)"},
    {"model_init_hf", "", TR,
     "calmflow: start the transformer from a pretrained GPT-NeoX / Pythia Hugging Face directory "
     "(config.json + model.safetensors, docs/pretrained.md); its config.json sets -net_layers, "
     "-net_hidden, -net_heads, -net_ffn, -net_rotary_pct and -net_rotary_base; the encoder and "
     "head start afresh"},
    {"cfm_coupling", "ot", TR,
     "cfm: ot (exact OT over the global batch, OT-CFM) or independent (I-CFM)"},
    {"cfm_sigma", "0", TR, "cfm: path noise sigma, x_t = (1-t) x0 + t x1 + sigma eps"},
    {"cfm_time_freqs", "8", TR, "cfm: sinusoidal time features K (inputs t, sin/cos(pi k t))"},
    {"cfm_cond", "", TR,
     "cfm: condition on these categorical obs columns of the -data_train file (COL[,COL...], "
     "docs/data-format.md): the velocity MLP also takes the one-hot vectors of a point's "
     "categories, OT couples within each condition; sample with -sample_cond"},
    {"flow_time_points", "16", TR, "N, time points per trajectory"},
    {"flow_spatial_tokens", "1", TR, "S, spatial tokens per point"},
    {"flow_trajectories", "8", TR, "P, trajectories per sequence"},
    {"flow_kl_weight", "0.1", TR, "beta, KL weight of the vae and cvae heads"},
    {"flow_path", "bridge", TR, "conditional paths: straight (paper), bridge, noisy, ve"},
    {"flow_sigma", "auto", TR,
     "noise scale of bridge / noisy paths; sigma_max of ve paths; auto = min(1, 2 sqrt(2 / D)) "
     "for bridge paths (1 up to D = 8, 0.28 at D = 100: docs/results.md), 1 for the others"},
    {"flow_sigma_min", "1e-4", TR, "noisy: noise at t = 1; ve: sigma_min"},
    {"flow_context_noise", "0", TR,
     "training: N(0, s^2) added to the model's inputs at t > 0 (the history), velocity targets "
     "from the noisy point to the clean next one; against the rollout's exposure bias"},
    {"flow_head", "gauss", TR,
     "output head: gauss (default), gmm (Gaussian mixture), fm (flow-matching velocity MLP), "
     "cvae (conditional VAE) or vae (the authors')"},
    {"flow_gmm_k", "16", TR, "gmm head: mixture components"},
    {"flow_fm_width", "128", TR, "fm head: width of the velocity MLP (3 hidden layers)"},
    {"flow_fm_draws", "2", TR, "fm head: draws of (flow time, source noise) per point in training"},
    {"flow_fm_steps", "20", TR, "fm head: Euler steps per sampled point"},
    {"flow_cvae_dz", "8", TR, "cvae head: latent size"},
    {"flow_predict", "auto", TR,
     "next (absolute next point) or velocity; auto = next for vae, velocity otherwise"},
    {"flow_history", "1", TR,
     "1: each point attends to the whole causal prefix (CaLMFlow); 0: ODE-style ablation, a "
     "point attends only to its own tokens (needs -par_cp 1)"},
    {"net_time_input", "auto", TR,
     "1: the encoder also sees the point's time t in [0, 1]; auto = 1 with -flow_history 0, "
     "else 0"},
    {"net_layers", "2", TR, "transformer blocks"},
    {"net_hidden", "64", TR, "hidden size H"},
    {"net_heads", "2", TR, "attention heads"},
    {"net_ffn", "0", TR, "MLP width (0: 4 H)"},
    {"net_rotary_pct", "0.25", TR, "fraction of each head's dimensions with rotary embedding"},
    {"net_rotary_base", "10000", TR, "rotary base: dimension pair i turns by pos * base^(-2i/rot)"},
    {"net_dropout", "0", TR,
     "dropout in the encoder, head and decoder MLPs (the paper's recipe: 0.1, which samples "
     "worse)"},
    {"net_logstd_min", "-7", TR, "gauss head: lower clamp of the log-std"},
    {"net_logstd_max", "5", TR, "gauss head: upper clamp of the log-std"},
    {"train_steps", "2000", TR, "optimizer steps"},
    {"train_batch", "256", TR, "paths per step over all ranks (a multiple of P)"},
    {"train_microbatches", "1", TR, "micro-batches per rank and step (gradient accumulation)"},
    {"train_lr", "1e-3", TR, "peak learning rate"},
    {"train_lr_min", "1e-4", TR, "learning rate at the end of the decay"},
    {"train_warmup", "100", TR, "linear warm-up steps"},
    {"train_decay", "cosine", TR, "decay after warm-up: cosine, linear, constant"},
    {"train_optimizer", "adamw", TR,
     "adamw (decoupled weight decay) or adam_l2 (the authors' coupled L2)"},
    {"train_weight_decay", "0", TR, "weight decay"},
    {"train_beta1", "0.9", TR, "Adam beta1"},
    {"train_beta2", "0.999", TR, "Adam beta2"},
    {"train_eps", "1e-8", TR, "Adam epsilon"},
    {"train_clip", "1", TR, "gradient clipping: maximum global 2-norm (0: off)"},
    {"train_nan_policy", "stop", TR,
     "a step whose loss or gradient is NaN or Inf changes nothing and then: stop (end the run, "
     "exit code 4, no checkpoint of it) or skip (warn and go on with the next step)"},
    {"train_nan_max_skips", "10", TR,
     "skip: the most consecutive steps skipped; one more ends the run as stop does"},
    {"train_selffeed_steps", "0", TR,
     "scheduled sampling against the rollout's exposure bias: m forward passes put the model's "
     "own m-step rollout into the history it trains on (0: teacher forcing; bridge or straight "
     "paths, -par_pp 1; docs/results.md)"},
    {"train_selffeed_prob", "0.5", TR,
     "with -train_selffeed_steps: the share of points whose input is the model's own; their "
     "targets continue the paths' law from there (bridge to an endpoint drawn given x0 and "
     "the point)"},
    {"train_selffeed_cands", "256", TR,
     "with -train_selffeed_steps on bridge paths: candidate endpoints per path, drawn from the "
     "target distribution and weighted by the bridge's likelihood of the point"},
    {"train_log_every", "10", TR, "log.jsonl line every k steps"},
    {"train_ckpt_every", "0", TR, "checkpoint every k steps (0: only at the end)"},
    {"train_ckpt_keep", "3", TR, "checkpoints kept in run_dir/ckpt"},
    {"train_quiet", "0", TR, "1: no progress lines"},
    {"train_resume", "", TR,
     "continue from this checkpoint (default: run_dir/ckpt/LATEST when it exists)"},
    {"par_tp", "1", TR | SA, "tensor-parallel degree: heads and MLP split Megatron-style"},
    {"par_pp", "1", TR | SA,
     "pipeline-parallel degree: layer ranges per stage (training: 1F1B schedule; sampling: pp "
     "micro-batches in flight)"},
    {"par_cp", "1", TR | SA,
     "context-parallel degree: sequence split (training: ring attention; sampling: KV cache and "
     "attention split)"},
    {"par_timeout", "0", TR | SA,
     "watchdog: abort (exit code 3) when a rank waits longer than this many seconds in one "
     "communication (0: off)"},
    {"par_zero", "0", TR,
     "1: ZeRO-1, shard the AdamW moments over the data-parallel ranks (memory / ranks)"},
    {"par_bucket_mb", "4", TR,
     "gradient all-reduce bucket size in MiB (started in backward, 4 in flight)"},
    {"sample_n", "2000", SA, "samples to generate"},
    {"sample_batch", "64", SA, "sequences per model call"},
    {"sample_temperature", "auto", SA,
     "tau, scales the predictive std (vae: latent std); auto = 1 for gauss and gmm, 0.5 for vae"},
    {"sample_out", "", SA, "output file (default run_dir/samples.h5)"},
    {"sample_kvcache", "1", SA, "1: KV cache; 0: recompute the prefix every step"},
    {"sample_traj", "0", SA, "1: also write /traj (n x N x D), every time point"},
    {"sample_ckpt", "", SA, "checkpoint to sample from (default run_dir/ckpt/LATEST)"},
    {"sample_quiet", "0", SA, "1: no progress lines"},
    {"sample_cond", "", SA,
     "cfm trained with -cfm_cond: generate for this condition, COL=VALUE[,COL=VALUE...] for "
     "every condition column (any category of the training file, held-out ones included); "
     "calmflow trained with -data_prompt: the prompt is the checkpoint's template with these "
     "values (every {COL} of it once; any text, unseen values included)"},
    {"sample_prompt", "", SA,
     "calmflow trained with -data_prompt: generate for this prompt text (tokenized with the "
     "-tok_* files, default the checkpoint's; at most the model's prompt length)"},
    {"sample_resume", "0", SA,
     "1: continue an unfinished -sample_out made with the same options (0: start it afresh)"},
    {"eval_a", "", CMD_EVAL, "first point set, FILE.h5 (/x), e.g. the samples"},
    {"eval_b", "", CMD_EVAL, "second point set, FILE.h5 (/x), e.g. fresh data"},
    {"eval_ref", "", CMD_EVAL,
     "optional: a second independent data sample; reports w2_floor = W2(ref, b) and w2_ratio"},
    {"eval_out", "", CMD_EVAL, "output JSON file (default: standard output)"},
    {"eval_max_exact", "5000", CMD_EVAL, "points per set used for exact W1/W2"},
    {"eval_frechet", "1", CMD_EVAL,
     "1: Frechet distance of the fitted Gaussians (all points, ScaLAPACK on all ranks)"},
    {"eval_sinkhorn_max", "5000", CMD_EVAL,
     "points per set used for Sinkhorn (sinkhorn_w2, sinkhorn_div), split over the ranks; 0: "
     "skip"},
    {"eval_sinkhorn_eps", "0.05", CMD_EVAL,
     "Sinkhorn eps relative to E||y - y'||^2 over the -eval_b points"},
    {"eval_sinkhorn_eps_abs", "0", CMD_EVAL,
     "Sinkhorn eps in squared-distance units (> 0: overrides -eval_sinkhorn_eps)"},
    {"eval_sinkhorn_iters", "1000", CMD_EVAL, "Sinkhorn iteration cap per transport problem"},
    {"eval_sinkhorn_tol", "1e-6", CMD_EVAL, "Sinkhorn stop: L1 marginal violation <= this"},
    {"eval_sinkhorn_debias", "1", CMD_EVAL,
     "1: also OT(a, a) and OT(b, b) for the debiased divergence sinkhorn_div"},
    {"eval_sinkhorn_mem", "256", CMD_EVAL,
     "MiB per rank for keeping the Sinkhorn cost rows (beyond: recomputed each iteration)"},
    {"eval_pca", "", CMD_EVAL,
     "single-cell: a `calmflow data` file (/pca) whose PCA space both point sets are in; also "
     "report the R^2 of mean expression in its gene space (mean + z components), a against b"},
    {"eval_r2_top", "50", CMD_EVAL,
     "with -eval_pca: also the R^2 over this many genes of largest variance over the file's "
     "cells (its /x in gene space); 0: all genes only"},
};
#define NOPT ((int)(sizeof g_opts / sizeof g_opts[0]))

/* PETSc's own flags that may appear in the database without being calmflow's. */
static const char *g_petsc_flags[] = {"options_left",
                                      "options_view",
                                      "options_monitor",
                                      "log_view",
                                      "log_summary",
                                      "malloc_debug",
                                      "malloc_dump",
                                      "malloc_test",
                                      "info",
                                      "version",
                                      "no_signal_handler",
                                      "on_error_abort",
                                      "log_trace",
                                      "memory_view",
                                      "check_pointer_intensity",
                                      "options_file_yaml",
                                      "help"};

static int find(const char *name) {
  if (name[0] == '-') name++;
  for (int i = 0; i < NOPT; i++)
    if (strcmp(g_opts[i].name, name) == 0) return i;
  return -1;
}

cf_status cf_opts_load(struct cf_opts *o, PetscOptions db, unsigned cmds) {
  memset(o, 0, sizeof *o);
  o->cmds = cmds;
  for (int i = 0; i < NOPT; i++) {
    if (!(g_opts[i].cmds & cmds)) continue;
    char key[256];
    snprintf(key, sizeof key, "-%s", g_opts[i].name);
    PetscBool set = PETSC_FALSE;
    const char *v = NULL; /* PETSc's GetString would cut a longer value without a word */
    CF_PETSC(PetscOptionsFindPair(db, NULL, key, &v, &set));
    if (set && v != NULL) {
      size_t len = strlen(v);
      CF_CHECK(len < CF_OPT_LEN, CF_EINVAL,
               "option %s: its value is %zu bytes, expected at most %d", key, len, CF_OPT_LEN - 1);
      size_t bad = cf_utf8_check((const unsigned char *)v, len);
      CF_CHECK(bad == len, CF_EINVAL, "option %s: its value is not valid UTF-8 text (byte %zu)",
               key, bad + 1);
    }
    CF_PETSC(PetscOptionsGetString(db, NULL, key, o->val[i], CF_OPT_LEN, &set));
    o->set[i] = set == PETSC_TRUE;
    if (!set) snprintf(o->val[i], CF_OPT_LEN, "%s", g_opts[i].def);
  }
  return CF_OK;
}

static const char *raw(const struct cf_opts *o, const char *name, int *idx) {
  int i = find(name);
  *idx = i;
  return i >= 0 ? o->val[i] : "";
}

const char *cf_opt_str(const struct cf_opts *o, const char *name) {
  int i;
  return raw(o, name, &i);
}

int cf_opt_given(const struct cf_opts *o, const char *name) {
  int i = find(name);
  return i >= 0 && o->set[i];
}

cf_status cf_opt_int(const struct cf_opts *o, const char *name, int64_t lo, int64_t hi,
                     int64_t *v) {
  int i;
  const char *s = raw(o, name, &i);
  char *end = NULL;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  CF_CHECK(s[0] != '\0' && end && *end == '\0' && errno == 0, CF_EINVAL,
           "option -%s: expected an integer, got '%s'", name, s);
  CF_CHECK(x >= lo && x <= hi, CF_EINVAL,
           "option -%s: expected an integer in [%lld, %lld], got %lld", name, (long long)lo,
           (long long)hi, x);
  *v = x;
  return CF_OK;
}

cf_status cf_opt_real(const struct cf_opts *o, const char *name, double lo, double hi, double *v) {
  int i;
  const char *s = raw(o, name, &i);
  char *end = NULL;
  errno = 0;
  double x = strtod(s, &end);
  CF_CHECK(s[0] != '\0' && end && *end == '\0' && errno == 0 && isfinite(x), CF_EINVAL,
           "option -%s: expected a finite number, got '%s'", name, s);
  CF_CHECK(x >= lo && x <= hi, CF_EINVAL, "option -%s: expected a value in [%g, %g], got %g", name,
           lo, hi, x);
  *v = x;
  return CF_OK;
}

cf_status cf_opt_bool(const struct cf_opts *o, const char *name, int *v) {
  int64_t x;
  int i;
  const char *s = raw(o, name, &i);
  if (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0) {
    *v = 1;
    return CF_OK;
  }
  if (strcmp(s, "false") == 0 || strcmp(s, "no") == 0) {
    *v = 0;
    return CF_OK;
  }
  CF_TRY(cf_opt_int(o, name, 0, 1, &x));
  *v = (int)x;
  return CF_OK;
}

static int is_petsc_flag(const char *name) {
  for (size_t i = 0; i < sizeof g_petsc_flags / sizeof g_petsc_flags[0]; i++)
    if (strcmp(name, g_petsc_flags[i]) == 0) return 1;
  return 0;
}

cf_status cf_opts_check_unknown(const char *cmd) {
  PetscInt n = 0;
  char **names = NULL, **values = NULL;
  CF_PETSC(PetscOptionsLeftGet(NULL, &n, &names, &values));
  char bad[256] = "";
  for (PetscInt i = 0; i < n; i++) {
    const char *nm = names[i][0] == '-' ? names[i] + 1 : names[i];
    if (find(nm) >= 0 || is_petsc_flag(nm)) continue;
    if (strncmp(nm, "cfm_ts_", 7) == 0) continue; /* PETSc TS options of CFM sampling */
    if (bad[0] == '\0') snprintf(bad, sizeof bad, "%s", nm);
  }
  CF_PETSC(PetscOptionsLeftRestore(NULL, &n, &names, &values));
  CF_CHECK(bad[0] == '\0', CF_EINVAL, "unknown option -%s (run 'calmflow %s -help' for the list)",
           bad, cmd);
  return CF_OK;
}

cf_status cf_opts_check_cmdline(const char *cmd, unsigned cmds, int argc, char **argv) {
  static const char *const names[5] = {"data", "train", "sample", "eval", "ckpt"};
  for (int a = 1; a < argc; a++) {
    int i = argv[a][0] == '-' ? find(argv[a]) : -1; /* values and numbers find nothing */
    if (i < 0 || (g_opts[i].cmds & cmds)) continue;
    char owners[64] = ""; /* "train", "train and sample", "data, train and sample" */
    size_t len = 0;
    int left = 0;
    for (int k = 0; k < 5; k++)
      left += (g_opts[i].cmds >> k) & 1u;
    for (int k = 0; k < 5; k++) {
      if (!(g_opts[i].cmds & (1u << k))) continue;
      left--;
      int w = snprintf(owners + len, sizeof owners - len, "%s%s", names[k],
                       left > 1    ? ", "
                       : left == 1 ? " and "
                                   : "");
      if (w > 0 && (size_t)w < sizeof owners - len) len += (size_t)w;
    }
    return cf_err(CF_EINVAL,
                  "option -%s belongs to calmflow %s, not to calmflow %s, which would ignore it "
                  "(run 'calmflow %s -help' for its options)",
                  g_opts[i].name, owners, cmd, cmd);
  }
  return CF_OK;
}

void cf_opts_help(const char *cmd, unsigned cmds) {
  printf("options of calmflow %s (default in brackets; YAML configs via -options_file_yaml FILE,\n"
         "nested keys joined with '_'; the command line overrides the file):\n",
         cmd);
  for (int i = 0; i < NOPT; i++) {
    if (!(g_opts[i].cmds & cmds)) continue;
    char left[128];
    snprintf(left, sizeof left, "-%s <%s>", g_opts[i].name, g_opts[i].def);
    printf("  %-34s %s\n", left, g_opts[i].help);
  }
  printf("  %-34s %s\n", "-log_view", "PETSc profile of the calmflow events at exit");
}

cf_status cf_opts_yaml(const struct cf_opts *o, unsigned cmds, char *buf, size_t cap) {
  size_t len = 0;
  int n = snprintf(buf, cap, "# calmflow resolved options (load with -options_file_yaml)\n");
  CF_CHECK(n > 0 && (size_t)n < cap, CF_EINVAL, "resolved options do not fit");
  len = (size_t)n;
  for (int i = 0; i < NOPT; i++) {
    /* an empty value is written too when the default is not: else it would read back as that */
    if (!(g_opts[i].cmds & cmds & o->cmds) || (o->val[i][0] == '\0' && g_opts[i].def[0] == '\0'))
      continue;
    const char *v = o->val[i];
    /* written raw in double quotes: a control character would not read back (a CR folds to a
     * space, others make the YAML of config.yaml and the checkpoints unreadable) */
    for (const char *c = v; *c; c++)
      CF_CHECK(*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20 && *c != 0x7f, CF_EINVAL,
               "option -%s: value contains a quote, backslash or control character (newline, "
               "tab, ...)",
               g_opts[i].name);
    n = snprintf(buf + len, cap - len, "%s: \"%s\"\n", g_opts[i].name, v);
    CF_CHECK(n > 0 && (size_t)n < cap - len, CF_EINVAL, "resolved options do not fit");
    len += (size_t)n;
  }
  return CF_OK;
}

cf_status cf_app_model_cfg(const struct cf_opts *o, struct cf_model_cfg *mc,
                           struct cf_flow_cfg *fc) {
  memset(mc, 0, sizeof *mc);
  memset(fc, 0, sizeof *fc);
  const int64_t big = (int64_t)1 << 40;
  CF_TRY(cf_opt_int(o, "data_dim", 1, big, &mc->D));
  CF_TRY(cf_opt_int(o, "flow_time_points", 2, 1 << 20, &mc->N));
  CF_TRY(cf_opt_int(o, "flow_spatial_tokens", 1, 1 << 20, &mc->S));
  CF_TRY(cf_opt_int(o, "flow_trajectories", 1, 1 << 20, &mc->P));
  CF_TRY(cf_opt_int(o, "net_layers", 1, 4096, &mc->layers));
  CF_TRY(cf_opt_int(o, "net_hidden", 1, 1 << 20, &mc->H));
  CF_TRY(cf_opt_int(o, "net_heads", 1, 1 << 20, &mc->heads));
  CF_TRY(cf_opt_int(o, "net_ffn", 0, 1 << 24, &mc->ffn));
  if (mc->ffn == 0) mc->ffn = 4 * mc->H;
  CF_TRY(cf_opt_real(o, "net_rotary_pct", 0, 1, &mc->rotary_pct));
  CF_TRY(cf_opt_real(o, "net_rotary_base", 1e-6, 1e12, &mc->rotary_base));
  double x;
  CF_TRY(cf_opt_real(o, "net_dropout", 0, 0.99, &x));
  mc->dropout = (float)x;
  CF_TRY(cf_opt_real(o, "net_logstd_min", -30, 30, &x));
  mc->logstd_min = (float)x;
  CF_TRY(cf_opt_real(o, "net_logstd_max", -30, 30, &x));
  mc->logstd_max = (float)x;
  CF_CHECK(mc->logstd_min < mc->logstd_max, CF_EINVAL,
           "option -net_logstd_min: expected < -net_logstd_max (%g), got %g",
           (double)mc->logstd_max, (double)mc->logstd_min);
  const char *head = cf_opt_str(o, "flow_head");
  if (strcmp(head, "gauss") == 0)
    mc->head = CF_HEAD_GAUSS;
  else if (strcmp(head, "vae") == 0)
    mc->head = CF_HEAD_VAE;
  else if (strcmp(head, "gmm") == 0)
    mc->head = CF_HEAD_GMM;
  else if (strcmp(head, "fm") == 0)
    mc->head = CF_HEAD_FM;
  else if (strcmp(head, "cvae") == 0)
    mc->head = CF_HEAD_CVAE;
  else
    return cf_err(CF_EINVAL,
                  "option -flow_head: unknown head '%s' (expected gauss, gmm, fm, cvae or vae)",
                  head);
  CF_TRY(cf_opt_int(o, "flow_gmm_k", 1, 4096, &mc->gmm_k));
  CF_TRY(cf_opt_int(o, "flow_fm_width", 1, 65536, &mc->fm_width));
  CF_TRY(cf_opt_int(o, "flow_fm_draws", 1, 64, &mc->fm_draws));
  CF_TRY(cf_opt_int(o, "flow_fm_steps", 1, 100000, &mc->fm_steps));
  CF_TRY(cf_opt_int(o, "flow_cvae_dz", 1, 65536, &mc->cvae_dz));
  int64_t hist;
  CF_TRY(cf_opt_int(o, "flow_history", 0, 1, &hist));
  mc->no_history = hist == 0;
  if (strcmp(cf_opt_str(o, "net_time_input"), "auto") == 0) {
    mc->time_input = mc->no_history;
  } else {
    int64_t ti;
    CF_TRY(cf_opt_int(o, "net_time_input", 0, 1, &ti));
    mc->time_input = (int)ti;
  }
  const char *pl = cf_opt_str(o, "net_prompt_len"), *pv = cf_opt_str(o, "net_prompt_vocab");
  const char *pp = cf_opt_str(o, "net_prompt_pad"); /* "auto" until train resolves them */
  if (strcmp(pl, "auto") != 0) CF_TRY(cf_opt_int(o, "net_prompt_len", 0, 65536, &mc->prompt_len));
  if (strcmp(pv, "auto") != 0) CF_TRY(cf_opt_int(o, "net_prompt_vocab", 0, 1 << 24, &mc->vocab));
  if (strcmp(pp, "auto") != 0)
    CF_TRY(cf_opt_int(o, "net_prompt_pad", 0, (1 << 24) - 1, &mc->prompt_pad));
  CF_TRY(cf_model_cfg_check(mc));

  fc->D = mc->D;
  fc->N = mc->N;
  fc->P = mc->P;
  fc->S = mc->S;
  CF_TRY(cf_path_parse(cf_opt_str(o, "flow_path"), &fc->path));
  if (strcmp(cf_opt_str(o, "flow_sigma"), "auto") == 0) /* bridge noise shrinks with D */
    fc->sigma = fc->path == CF_PATH_BRIDGE ? fmin(1.0, 2.0 * sqrt(2.0 / (double)fc->D)) : 1.0;
  else
    CF_TRY(cf_opt_real(o, "flow_sigma", 0, 1e6, &fc->sigma));
  CF_TRY(cf_opt_real(o, "flow_sigma_min", 0, 1e6, &fc->sigma_min));
  CF_TRY(cf_opt_real(o, "flow_context_noise", 0, 1e6, &fc->context_noise));
  const char *pred = cf_opt_str(o, "flow_predict");
  if (strcmp(pred, "auto") == 0)
    fc->predict = mc->head == CF_HEAD_VAE ? CF_PREDICT_NEXT : CF_PREDICT_VELOCITY;
  else
    CF_TRY(cf_predict_parse(pred, &fc->predict));
  CF_TRY(cf_flow_cfg_check(fc));
  return CF_OK;
}

cf_status cf_app_cfm_cfg(const struct cf_opts *o, struct cf_cfm_cfg *cc,
                         struct cf_train_cfm_opts *opt) {
  memset(cc, 0, sizeof *cc);
  memset(opt, 0, sizeof *opt);
  CF_TRY(cf_opt_int(o, "data_dim", 1, (int64_t)1 << 40, &cc->D));
  CF_TRY(cf_opt_int(o, "net_hidden", 1, 1 << 20, &cc->width));
  CF_TRY(cf_opt_int(o, "net_layers", 1, 4096, &cc->layers));
  CF_TRY(cf_opt_int(o, "cfm_time_freqs", 0, 64, &cc->time_freqs));
  CF_TRY(cf_opt_real(o, "cfm_sigma", 0, 1e6, &opt->sigma));
  const char *cpl = cf_opt_str(o, "cfm_coupling");
  if (strcmp(cpl, "ot") == 0)
    opt->ot = 1;
  else
    CF_CHECK(strcmp(cpl, "independent") == 0, CF_EINVAL,
             "option -cfm_coupling: unknown coupling '%s' (expected ot or independent)", cpl);
  return cf_cfm_cfg_check(cc);
}

cf_status cf_opt_set(struct cf_opts *o, const char *name, const char *value) {
  int i = find(name);
  CF_CHECK(i >= 0 && strlen(value) < CF_OPT_LEN, CF_EINVAL,
           "option -%s: cannot set it to '%.64s' (internal error)", name, value);
  snprintf(o->val[i], CF_OPT_LEN, "%s", value);
  o->set[i] = 1;
  return CF_OK;
}

const char *cf_opts_first_difference(const struct cf_opts *a, const struct cf_opts *b,
                                     unsigned cmds, const char *const *skip) {
  for (int i = 0; i < NOPT; i++) {
    if (!(g_opts[i].cmds & cmds)) continue;
    int skipped = 0;
    for (const char *const *k = skip; k && *k && !skipped; k++)
      skipped = strcmp(*k, g_opts[i].name) == 0;
    if (!skipped && strcmp(a->val[i], b->val[i]) != 0) return g_opts[i].name;
  }
  return NULL;
}
