/* main.c: `calmflow <data|train|sample|eval|ckpt> [options]`. Starts MPI and PETSc, loads
 * -options_file_yaml before the command line so the command line always wins, runs the
 * subcommand on a duplicate of MPI_COMM_WORLD, and turns a failure on any rank into one error
 * line and a non-zero exit status. */
#include <errno.h>
#include <mpi.h>
#include <petscsys.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app/app.h"
#include "calmflow/exitcodes.h"
#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/watchdog.h"

static void usage(FILE *f) {
  fprintf(f, "usage: calmflow <command> [-options_file_yaml FILE] [-option value ...]\n"
             "commands:\n"
             "  data    make a synthetic data set -> HDF5 (/x)\n"
             "  train   train a CaLMFlow model into -run_dir\n"
             "  sample  autoregressive rollout from a run's checkpoint -> samples HDF5\n"
             "  eval    distances between two point sets (W2, W1, MMD, energy) -> JSON\n"
             "  ckpt    info FILE | verify FILE\n"
             "`calmflow <command> -help` lists the command's options with their defaults.\n");
}

static int is_number(const char *s) {
  char *end = NULL;
  strtod(s, &end);
  return end != s && *end == '\0';
}

/* Re-apply the command line's -name [value] pairs so they override the YAML file. */
static cf_status reapply_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] != '-' || is_number(argv[i])) continue;
    const char *val = NULL;
    if (i + 1 < argc && (argv[i + 1][0] != '-' || is_number(argv[i + 1]))) val = argv[++i];
    if (PetscOptionsSetValue(NULL, argv[i - (val ? 1 : 0)], val) != 0)
      return cf_err(CF_EINVAL, "cannot set option %s", argv[i - (val ? 1 : 0)]);
  }
  return CF_OK;
}

/* Collective on comm. Rank 0 reads the file and checks it with libyaml (yamlcheck.c: PETSc's
 * own reader crashes on some texts and prints pages on others); then every rank inserts the
 * same text into PETSc's options. */
static cf_status load_yaml(MPI_Comm comm, const char *file) {
  enum { CAP = 1 << 24 };
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  char *text = NULL;
  long n = 0;
  cf_status st = CF_OK;
  if (rank == 0) {
    struct stat sb;
    if (stat(file, &sb) != 0)
      st = cf_err(CF_EIO, "cannot read options file '%s': %s", file,
                  errno == ENOENT ? "no such file" : strerror(errno));
    else if (!S_ISREG(sb.st_mode))
      st = cf_err(CF_EIO, "cannot read options file '%s': %s, expected a YAML file", file,
                  S_ISDIR(sb.st_mode) ? "it is a directory" : "not a regular file");
    else if (sb.st_size >= CAP)
      st = cf_err(CF_EINVAL,
                  "cannot load options file '%s': %lld bytes, expected a YAML options "
                  "file under 16 MiB",
                  file, (long long)sb.st_size);
    FILE *f = st == CF_OK ? fopen(file, "rb") : NULL;
    if (st == CF_OK && f == NULL)
      st = cf_err(CF_EIO, "cannot read options file '%s': %s", file, strerror(errno));
    if (st == CF_OK) st = cf_alloc((void **)&text, CAP, "options file");
    if (st == CF_OK) {
      n = (long)fread(text, 1, CAP - 1, f);
      if (ferror(f)) st = cf_err(CF_EIO, "cannot read options file '%s': read error", file);
      text[n] = '\0';
    }
    if (f) fclose(f);
    if (st == CF_OK) st = cf_opts_yaml_check(text, (size_t)n, file);
  }
  st = cf_agree(comm, st);
  if (st == CF_OK) {
    MPI_Bcast(&n, 1, MPI_LONG, 0, comm);
    if (rank != 0) st = cf_alloc((void **)&text, (size_t)n + 1, "options file");
    st = cf_agree(comm, st);
  }
  if (st == CF_OK) {
    MPI_Bcast(text, (int)n + 1, MPI_CHAR, 0, comm);
    PetscPushErrorHandler(PetscReturnErrorHandler, NULL);
    PetscErrorCode e = PetscOptionsInsertStringYAML(NULL, text);
    PetscPopErrorHandler();
    if (e != 0)
      st = cf_err(CF_EINVAL,
                  "cannot load options file '%s': PETSc refused it (expected a mapping of option "
                  "names to values, e.g. 'train: {lr: 1e-3}')",
                  file);
  }
  cf_free((void **)&text);
  return st;
}

int main(int argc, char **argv) {
  int provided = 0; /* the watchdog's monitor thread never calls MPI */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(comm, &rank);

  if (argc < 2 || argv[1][0] == '-') {
    int help = argc >= 2 && (strcmp(argv[1], "-help") == 0 || strcmp(argv[1], "-h") == 0 ||
                             strcmp(argv[1], "--help") == 0);
    if (rank == 0) usage(help ? stdout : stderr);
    MPI_Finalize();
    return help ? CF_EXIT_OK : CF_EXIT_USAGE;
  }
  const char *cmd = argv[1];
  unsigned mask = strcmp(cmd, "data") == 0     ? CMD_DATA
                  : strcmp(cmd, "train") == 0  ? CMD_TRAIN
                  : strcmp(cmd, "sample") == 0 ? CMD_SAMPLE
                  : strcmp(cmd, "eval") == 0   ? CMD_EVAL
                  : strcmp(cmd, "ckpt") == 0   ? CMD_CKPT
                                               : 0;
  if (mask == 0) {
    if (rank == 0)
      fprintf(
          stderr,
          "calmflow: error: unknown command '%s' (expected data, train, sample, eval or ckpt)\n",
          cmd);
    MPI_Finalize();
    return CF_EXIT_USAGE;
  }

  /* argv for PETSc: options only; positional words (ckpt info FILE) kept aside */
  char **pargv = calloc((size_t)argc + 1, sizeof *pargv);
  char **pos = calloc((size_t)argc + 1, sizeof *pos);
  if (!pargv || !pos) {
    fprintf(stderr, "calmflow: error: out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int pargc = 0, npos = 0, help = 0, yaml_missing = 0;
  const char *yaml = NULL;
  pargv[pargc++] = argv[0];
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-options_file_yaml") == 0) {
      if (i + 1 < argc && argv[i + 1][0] != '-')
        yaml = argv[++i];
      else
        yaml_missing = 1; /* PETSc would print a page about it */
    } else if (strcmp(argv[i], "-help") == 0 || strcmp(argv[i], "-h") == 0 ||
               strcmp(argv[i], "--help") == 0) {
      help = 1;
    } else if (argv[i][0] == '-' && !is_number(argv[i])) {
      pargv[pargc++] = argv[i];
      if (i + 1 < argc && (argv[i + 1][0] != '-' || is_number(argv[i + 1])))
        pargv[pargc++] = argv[++i];
    } else {
      pos[npos++] = argv[i];
    }
  }
  if (help) {
    if (rank == 0) {
      printf("calmflow %s\n", cmd);
      cf_opts_help(cmd, mask);
    }
    MPI_Finalize();
    return 0;
  }

  PETSC_COMM_WORLD = comm;
  int pargc0 = pargc;
  char **pargv0 = pargv;
  if (PetscInitialize(&pargc, &pargv, NULL, NULL) != 0) {
    if (rank == 0) fprintf(stderr, "calmflow: error: PETSc initialization failed\n");
    MPI_Finalize();
    return 1;
  }
  cf_status st = cf_fault_init(rank);
  if (st == CF_OK && yaml_missing)
    st = cf_err(CF_EINVAL, "option -options_file_yaml: expected a YAML file name after it");
  /* a stray word (an unquoted value with spaces) or another command's option would be ignored */
  if (st == CF_OK && mask != CMD_CKPT && npos > 0)
    st = cf_err(CF_EINVAL,
                "unexpected argument '%s': calmflow %s takes -option value pairs only (quote a "
                "value that holds spaces)",
                pos[0], cmd);
  if (st == CF_OK) st = cf_opts_check_cmdline(cmd, mask, pargc0, pargv0);
  if (st == CF_OK && yaml) {
    st = load_yaml(comm, yaml);
    if (st == CF_OK) st = reapply_args(pargc0, pargv0);
  }
  if (st == CF_OK) {
    switch (mask) {
    case CMD_DATA:
      st = cf_cmd_data(comm);
      break;
    case CMD_TRAIN:
      st = cf_cmd_train(comm);
      break;
    case CMD_SAMPLE:
      st = cf_cmd_sample(comm);
      break;
    case CMD_EVAL:
      st = cf_cmd_eval(comm);
      break;
    default:
      st = cf_cmd_ckpt(comm, npos, pos);
      break;
    }
  }

  /* a run stopped on a signal after its checkpoint: exit 75 on every rank, no error line */
  int stopped = st == CF_STOPPED, all_stopped = 0;
  MPI_Allreduce(&stopped, &all_stopped, 1, MPI_INT, MPI_LAND, comm);
  if (all_stopped) st = CF_OK;
  /* one error line: from the lowest rank with a failure of its own (not CF_EREMOTE, which
   * only echoes another rank's), else from the lowest rank that failed */
  const int none = 1 << 30;
  int own = st != CF_OK && st != CF_EREMOTE ? rank : none, any = st != CF_OK ? rank : none;
  int first_own = none, first_any = none;
  MPI_Allreduce(&own, &first_own, 1, MPI_INT, MPI_MIN, comm);
  MPI_Allreduce(&any, &first_any, 1, MPI_INT, MPI_MIN, comm);
  int first = first_own != none ? first_own : first_any;
  int code = CF_EXIT_ERROR; /* the reporting rank's status decides: CF_ENUM is exit code 4 */
  if (first != none) {
    int num = st == CF_ENUM;
    MPI_Bcast(&num, 1, MPI_INT, first, comm);
    if (num) code = CF_EXIT_NUMERIC;
  }
  if (first != none && rank == first) {
    if (cf_errmsg()[0])
      fprintf(stderr, "calmflow: error: %s\n", cf_errmsg());
    else
      fprintf(stderr, "calmflow: error: %s\n", cf_status_name(st));
    if (getenv("CALMFLOW_TRACE")) fprintf(stderr, "%s", cf_errtrace());
  }
  cf_watchdog_stop();
  free(pargv0);
  free(pos);
  PetscFinalize();
  MPI_Comm_free(&comm);
  MPI_Finalize();
  return first != none ? code : all_stopped ? CF_EXIT_REQUEUE : CF_EXIT_OK;
}
