/* app.h: the calmflow command line — one table of options (PETSc's options database is the
 * store), the subcommands, and the run directory. Private to src/app. */
#ifndef CALMFLOW_APP_H
#define CALMFLOW_APP_H

#include <mpi.h>
#include <petscsys.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/flow.h"
#include "calmflow/model.h"
#include "calmflow/train.h"

/* Subcommands an option belongs to (bit mask). */
enum { CMD_DATA = 1, CMD_TRAIN = 2, CMD_SAMPLE = 4, CMD_EVAL = 8, CMD_CKPT = 16 };

#define CF_OPT_LEN 4096

/* The resolved value of every option, read from one PETSc options database. */
struct cf_opts {
  unsigned cmds; /* which subcommands' options were read */
  char val[128][CF_OPT_LEN];
  int set[128]; /* given explicitly (file or command line) */
};

/* Collective on comm (PETSc options are global). Read the options of `cmds` from `db`
 * (NULL = the global database) into o, defaults for those not set. */
cf_status cf_opts_load(struct cf_opts *o, PetscOptions db, unsigned cmds);
/* Local. Typed access with range checks; errors name the option and what was expected. */
cf_status cf_opt_int(const struct cf_opts *o, const char *name, int64_t lo, int64_t hi, int64_t *v);
cf_status cf_opt_real(const struct cf_opts *o, const char *name, double lo, double hi, double *v);
cf_status cf_opt_bool(const struct cf_opts *o, const char *name, int *v);
const char *cf_opt_str(const struct cf_opts *o, const char *name);
int cf_opt_given(const struct cf_opts *o, const char *name);
/* Local (pretrained.c). With -model_init_hf DIR: CF_EINVAL unless -model is calmflow, then the
 * backbone options (-net_layers, -net_hidden, -net_heads, -net_ffn, -net_rotary_pct,
 * -net_rotary_base) set from DIR/config.json (neox.h); one given on the command line with
 * another value is an error naming both; with -data_prompt and no -tok_file / -tok_encoder,
 * -tok_file DIR/tokenizer.json when it exists. Nothing without -model_init_hf. */
cf_status cf_app_pretrained_options(struct cf_opts *o);
/* Local. Error for any option in the global database that no subcommand declares. */
cf_status cf_opts_check_unknown(const char *cmd);
/* Local. Error for an option on the command line (argv: PETSc's -name [value] list, argv[0]
 * the program) that only other subcommands than those of `cmds` declare: `cmd` would ignore
 * it. A -options_file_yaml file is not checked (one file may serve train and sample). */
cf_status cf_opts_check_cmdline(const char *cmd, unsigned cmds, int argc, char **argv);
/* Collective on comm (util.c). CF_EINVAL naming `option` when `path` is a calmflow samples file
 * (docs/samples-format.md) that is not complete (a sampling run failed or was killed); CF_OK
 * for any other file, also one that does not open (its reader reports that). */
cf_status cf_app_check_finished(MPI_Comm comm, const char *path, const char *option);
/* Local. Print the options of `cmds` with defaults and help. */
void cf_opts_help(const char *cmd, unsigned cmds);
/* Local (yamlcheck.c). CF_EINVAL, naming `file` and the line, unless the n bytes of text are
 * YAML that PETSc's options reader takes safely: mappings of option names to scalars,
 * sequences or mappings, "<<" merges of mappings, at most 20 levels deep. */
cf_status cf_opts_yaml_check(const char *text, size_t n, const char *file);
/* Local. The options of `cmds` as flat YAML ("name: \"value\"" lines) into buf. */
cf_status cf_opts_yaml(const struct cf_opts *o, unsigned cmds, char *buf, size_t cap);

/* Local. The optimizer and schedule options (train_*, seed, flow_kl_weight, par_bucket_mb,
 * par_zero) into *tc, each range-checked (tests/fuzz/fuzz_options.c reads them too). */
cf_status cf_app_train_cfg(const struct cf_opts *o, struct cf_train_cfg *tc);

/* Local. Model and flow configuration from the net_/flow_/data_dim options. */
cf_status cf_app_model_cfg(const struct cf_opts *o, struct cf_model_cfg *mc,
                           struct cf_flow_cfg *fc);

/* Collective on comm: the subcommands. argv holds the positional words after the
 * subcommand (ckpt: info|verify FILE). */
cf_status cf_cmd_data(MPI_Comm comm);
cf_status cf_cmd_train(MPI_Comm comm);
cf_status cf_cmd_sample(MPI_Comm comm);
cf_status cf_cmd_eval(MPI_Comm comm);
cf_status cf_cmd_ckpt(MPI_Comm comm, int argc, char **argv);

/* Collective on comm. Source / target distributions from -data_source / -data_train /
 * -data_name; points read from files stay owned by *owned (cf_free). */
cf_status cf_app_dist(MPI_Comm comm, const char *spec, int64_t dim, const char *option,
                      struct cf_dist *d, float **owned);

/* Local. The CFM baseline's network and training options (-data_dim, -net_hidden as the
 * width, -net_layers hidden layers, -cfm_time_freqs, -cfm_sigma, -cfm_coupling). */
cf_status cf_app_cfm_cfg(const struct cf_opts *o, struct cf_cfm_cfg *cc,
                         struct cf_train_cfm_opts *opt);

/* Collective on comm (datarows.c). The training rows: -data_exclude drops rows of the
 * -data_train file from *tgt (its points pts, owned by the caller, compacted in place); with
 * -model cfm and -cfm_cond, *conds receives each kept row's condition and cc->cond_dim its
 * one-hot width (*conds all-zero otherwise; the caller releases it). Progress lines on rank 0
 * unless quiet. */
struct cf_conds;
cf_status cf_app_train_rows(MPI_Comm comm, const struct cf_opts *o, int cfm, struct cf_dist *tgt,
                            float *pts, struct cf_conds *conds, struct cf_cfm_cfg *cc, int quiet);
/* Collective on comm. CF_EINVAL unless checkpoint `resume` stores the condition columns and
 * categories of conds (both none for an unconditional run). */
cf_status cf_app_resume_conds(MPI_Comm comm, const char *resume, const struct cf_conds *conds);

/* Local. -par_tp, -par_pp and -par_cp must all be 1 (a method split by data parallelism only);
 * CF_ETOPO naming the option and `why` otherwise. */
cf_status cf_app_layout_data_only(const struct cf_opts *o, const char *why);

/* Local. Read -par_tp/-par_pp/-par_cp into par[3] and check the layout against the world size
 * and the model (cf_grid_check, and -net_ffn divisible by -par_tp). microbatches: the
 * pipeline schedule's (training), or 0 when there is none to check (sampling). */
cf_status cf_app_layout(const struct cf_opts *o, int world, const struct cf_model_cfg *mc,
                        int64_t microbatches, int par[3]);

/* Collective on comm. The training options stored in checkpoint `path` (into *to) and its
 * metadata (meta->options_yaml is not kept). */
struct cf_ckpt_meta;
cf_status cf_app_ckpt_options(MPI_Comm comm, const char *path, struct cf_opts *to,
                              struct cf_ckpt_meta *meta);
/* Local. The first option of `cmds` whose value differs between a and b, skipping those named
 * in `skip` (NULL-terminated, names without the dash); NULL when all agree. */
const char *cf_opts_first_difference(const struct cf_opts *a, const struct cf_opts *b,
                                     unsigned cmds, const char *const *skip);

/* Collective on comm. Rebuild the model stored in checkpoint `path` (options into *to, flow
 * configuration into *fc) and load its parameters: the whole model (g NULL) or this rank's
 * part on grid g over comm; with_optim also reads (and checks) the optimizer moments. */
cf_status cf_load_model(MPI_Comm comm, const char *path, struct cf_opts *to, struct cf_model *m,
                        struct cf_flow_cfg *fc, struct cf_ckpt_meta *meta, int with_optim,
                        const struct cf_grid *g);

/* Collective on comm. The CFM baseline stored in checkpoint `path` (options into *to), with
 * room for max_batch points per evaluation; with_optim also reads (and checks) the optimizer
 * moments. A conditional model (-cfm_cond) takes its columns and categories from the
 * checkpoint's conditions attribute, returned in *conds (NULL: not wanted; ncol 0 for an
 * unconditional model; the caller releases it). CF_EINVAL when the checkpoint holds another
 * method. */
struct cf_conds;
cf_status cf_load_cfm(MPI_Comm comm, const char *path, struct cf_opts *to, struct cf_cfm *m,
                      struct cf_ckpt_meta *meta, int with_optim, int64_t max_batch,
                      struct cf_conds *conds);

/* Local. Write text to path atomically (temporary file, fsync, rename); on failure the old
 * file, if any, is untouched and no temporary is left. */
cf_status cf_write_text_atomic(const char *path, const char *text);

/* Local. mkdir -p. */
cf_status cf_mkdirs(const char *path);

/* Local. Set option `name` to `value` as if it had been given (values a command derives and
 * stores with the run, e.g. -net_prompt_len). */
cf_status cf_opt_set(struct cf_opts *o, const char *name, const char *value);

/* ---- text prompts of -model calmflow (prompt.c; model.h "text prompt") ---- */

/* Local. Check a -data_prompt template: text with {COL} fields ({{ and }} stand for braces).
 * The column names, in order of first use, go to names (up to CF_CONDS_MAX, each at most 255
 * bytes, pointers into `pool`, cap bytes), *n of them. CF_EINVAL naming -data_prompt for an
 * unclosed or stray brace, an empty or over-long name, or too many columns. */
cf_status cf_prompt_template(const char *tmpl, char *pool, size_t cap, const char **names, int *n);
/* Local. The template with field k replaced by values[k] (names as cf_prompt_template gives
 * them) into out (cap bytes); CF_EINVAL when it does not fit. */
cf_status cf_prompt_render(const char *tmpl, const char *const *names, const char *const *values,
                           int n, char *out, size_t cap);

/* Collective on comm. The training data of -data_prompt (nothing when it is empty): reads the
 * -data_train file's points and the template's /obs columns (the rows -data_exclude keeps),
 * renders every row's prompt, tokenizes it (-tok_*), groups the rows by prompt (the points
 * sorted by group into *pts, cf_alloc'd, tgt the empirical distribution over them), fills
 * *pd (release with cf_app_prompt_release), resolves -net_prompt_len / -net_prompt_vocab /
 * -net_prompt_pad in o, and prints the prompts on rank 0 unless quiet. *pd zeroed and *pts NULL
 * without -data_prompt. Errors name the option: -data_prompt without -data_train or with
 * -model cfm, a bad template, an unknown column, a prompt longer than -net_prompt_len. */
struct cf_prompt_data;
cf_status cf_app_prompt_train(MPI_Comm comm, struct cf_opts *o, int quiet, struct cf_dist *tgt,
                              float **pts, struct cf_prompt_data *pd);
void cf_app_prompt_release(struct cf_prompt_data *pd); /* Local; idempotent */

/* Collective on comm. The prompt to sample a prompt model (mc->prompt_len > 0) with, from
 * -sample_prompt TEXT or -sample_cond COL=VALUE,.. through the template the checkpoint `ck`
 * stores (to: its options), tokenized with sample's -tok_* files or else the checkpoint's:
 * ids (mc->prompt_len) left-padded with mc->prompt_pad, text (cap bytes) the prompt. For a
 * model without prompt: CF_EINVAL when -sample_prompt is given, else nothing (text ""). */
cf_status cf_app_prompt_sample(MPI_Comm comm, const struct cf_opts *o, const struct cf_opts *to,
                               const struct cf_model_cfg *mc, const char *ck, int32_t *ids,
                               char *text, size_t cap);

#endif
