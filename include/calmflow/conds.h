/* conds.h: the condition columns of a calmflow data file (docs/data-format.md): what a model
 * is conditioned on (-cfm_cond), which rows a run leaves out of training (-data_exclude), and
 * which condition a sample is generated for (-sample_cond).
 *
 * A data file written by `calmflow data -data_h5ad` holds one string per row (point of /x) in
 * each /obs/<column>, with the dataset attributes kind (the .h5ad column's kind: categorical,
 * string, numeric or boolean) and, for a categorical column, categories (the .h5ad's categories
 * in code order, used or not). A column without a kind attribute (a file written before kinds
 * were recorded, or by hand) counts as categorical, its categories the distinct non-empty
 * values sorted bytewise. An empty string is a missing value.
 *
 * A condition is one category of each named column. Its one-hot form is the concatenation of
 * the columns' one-hot vectors, in the order the columns were named: C = the sum of the
 * category counts, column k's block at [off[k], off[k] + ncat[k]). The columns and categories
 * travel with a trained model as text (cf_conds.text, stored in the checkpoint): one line per
 * column, its name and then each category, separated by tabs, each line ending in a newline;
 * a name or category holding a tab or newline is refused.
 *
 * Functions taking a communicator are collective on it and return the same status on every
 * rank (rank 0 reads the file and broadcasts); every rank gets the same result. Arrays are
 * cf_alloc'd.
 */
#ifndef CALMFLOW_CONDS_H
#define CALMFLOW_CONDS_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

#define CF_CONDS_MAX 16             /* condition columns */
#define CF_CONDS_TEXT_MAX (1 << 16) /* bytes of the text form, NUL included */

/* One /obs/<column> of a data file. */
struct cf_obs_column {
  char kind[16];   /* the kind attribute, "" when the dataset has none */
  int categorical; /* kind "categorical", or no kind attribute */
  int64_t n;       /* rows */
  char **values;   /* (n) one string per row */
  int64_t ncat;    /* categorical: categories */
  char **cats;     /* (ncat) categorical: the categories; NULL otherwise */
};

/* Collective on comm. Read column `name` of data file `path`, which must have n_rows rows (the
 * rows of its /x). Errors name `option` and the file: no /obs group, no such column (listing
 * the file's columns), a dataset that is not 1-D strings, a row count other than n_rows, a
 * non-empty value that is not one of the stored categories. */
cf_status cf_obs_column_read(MPI_Comm comm, const char *path, const char *name, const char *option,
                             int64_t n_rows, struct cf_obs_column *c);
void cf_obs_column_release(struct cf_obs_column *c); /* Local; idempotent */

/* The condition columns a model uses, with their categories and (optionally) each row's
 * condition. */
struct cf_conds {
  int ncol; /* columns, 1 .. CF_CONDS_MAX */
  const char *names[CF_CONDS_MAX];
  int64_t ncat[CF_CONDS_MAX]; /* categories per column (>= 1) */
  int64_t off[CF_CONDS_MAX];  /* start of the column's block in the one-hot vector */
  char **cats[CF_CONDS_MAX];  /* (ncat[k]) the categories, in one-hot order */
  int64_t C;                  /* one-hot width: the sum of ncat */
  int64_t n;                  /* rows coded (0 when read from text) */
  int32_t *codes;             /* (n, ncol) each row's category index per column */
  char *text;                 /* the text form (above), NUL-terminated */
  char *pool_;                /* private: the strings names and cats point into */
};

/* Collective on comm. The columns `spec` ("COL[,COL...]", spaces around names ignored, no
 * repeats) of data file `path` with n_rows rows, and the codes of the rows rows[0..nrows-1]
 * (rows NULL: all n_rows rows, in order). Errors name `option`: an unknown column, a column
 * that is not categorical ("column 'score' of 'f.h5' is numeric, not categorical"), a column
 * without categories, a kept row with a missing value, more than CF_CONDS_MAX columns, a text
 * form longer than CF_CONDS_TEXT_MAX. */
cf_status cf_conds_read(MPI_Comm comm, const char *path, const char *spec, const char *option,
                        int64_t n_rows, const int64_t *rows, int64_t nrows, struct cf_conds *c);
/* Local. Columns and categories from the text form (no codes); `what` names the source in
 * errors (CF_ECORRUPT), e.g. "checkpoint 'ck.h5' attribute conditions". */
cf_status cf_conds_from_text(const char *text, const char *what, struct cf_conds *c);
void cf_conds_release(struct cf_conds *c); /* Local; idempotent, *c all-zero after */

/* Local. One category per column from spec "COL=VALUE[,COL=VALUE...]", every column of c
 * exactly once, into codes (ncol). Errors name `option`: an unknown column, a value that is not
 * one of the column's categories (listing them), a column left out or given twice. */
cf_status cf_conds_select(const struct cf_conds *c, const char *spec, const char *option,
                          int32_t *codes);
/* Local. out (C) = the one-hot form of codes (ncol). */
void cf_conds_onehot(const struct cf_conds *c, const int32_t *codes, float *out);
/* Local. A number that is equal for two rows exactly when their conditions are (mixed radix
 * over the columns; cf_conds_read checks that it fits). */
int64_t cf_conds_group(const struct cf_conds *c, const int32_t *codes);
/* Local. "COL=VALUE,COL=VALUE" of codes (ncol) into buf (cap bytes, truncated). */
void cf_conds_describe(const struct cf_conds *c, const int32_t *codes, char *buf, size_t cap);

/* Collective on comm. The rows of data file `path` (n_rows rows) that -data_exclude `spec`
 * keeps: spec is "COL=VALUE[,VALUE...]" or several such clauses separated by ';' (a row is left
 * out when any clause matches its value; any column kind, compared as the stored strings, ""
 * matching missing values). *rows (cf_alloc'd, ascending, *nkeep of them). Errors name
 * `option`: an unknown column, a value no row holds, a malformed clause, nothing left. */
cf_status cf_data_exclude(MPI_Comm comm, const char *path, const char *spec, const char *option,
                          int64_t n_rows, int64_t **rows, int64_t *nkeep);

#endif
