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
/* Local. Error for any option in the global database that no subcommand declares. */
cf_status cf_opts_check_unknown(const char *cmd);
/* Local. Print the options of `cmds` with defaults and help. */
void cf_opts_help(const char *cmd, unsigned cmds);
/* Local. The options of `cmds` as flat YAML ("name: \"value\"" lines) into buf. */
cf_status cf_opts_yaml(const struct cf_opts *o, unsigned cmds, char *buf, size_t cap);

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
 * moments. CF_EINVAL when the checkpoint holds another method. */
cf_status cf_load_cfm(MPI_Comm comm, const char *path, struct cf_opts *to, struct cf_cfm *m,
                      struct cf_ckpt_meta *meta, int with_optim, int64_t max_batch);

/* Local. Write text to path atomically (temporary file, fsync, rename); on failure the old
 * file, if any, is untouched and no temporary is left. */
cf_status cf_write_text_atomic(const char *path, const char *text);

/* Local. mkdir -p. */
cf_status cf_mkdirs(const char *path);

#endif
