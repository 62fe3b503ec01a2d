# lib.sh: shared part of the calmflow Slurm batch scripts (jobs/*.sbatch source it). It finds the
# binary, sets one BLAS/OpenMP thread per rank, launches job steps (srun with PMIx, or mpirun),
# forwards the pre-timeout signal to the running step, and turns calmflow's exit code 75
# ("checkpoint written, requeue me") into a capped `scontrol requeue` of the job itself.
# Nothing site-specific lives here: every setting is an environment variable with a default.
#
# Settings (export before sbatch, or pass with sbatch --export=ALL,NAME=value):
#   CF_HOME          calmflow checkout or install prefix (default: the directory sbatch was run in)
#   CF_BINARY        the calmflow program (default: $CF_HOME/build/calmflow)
#   CF_LAUNCHER      srun (default) or mpirun
#   CF_SRUN_MPI      srun --mpi plugin (default pmix; see `srun --mpi=list` on the site)
#   CF_SRUN_FLAGS    extra srun flags, e.g. "--cpu-bind=cores" (word-split)
#   CF_MPIRUN_FLAGS  extra mpirun flags (word-split)
#   CF_MAX_REQUEUES  most requeues of one job (default 10); at the cap the job ends with 75
#   CF_OUT           where run directories go (default: runs, relative to the job's directory)
#   CF_PYTHON        a python3 with the standard library (default python3), for result rows
#   OPENBLAS_NUM_THREADS, OMP_NUM_THREADS: default SLURM_CPUS_PER_TASK, else 1

# cf_log MESSAGE...: one line in the job's output, prefixed with the time.
cf_log() {
  printf '[%s] %s\n' "$(date '+%F %T')" "$*"
}

# cf_die MESSAGE...: an error line on stderr, exit 1 (not requeued).
cf_die() {
  printf 'calmflow job: error: %s\n' "$*" >&2
  exit 1
}

# cf_init NAME: settings, thread counts, the binary; prints the start banner.
cf_init() {
  CF_JOB_NAME=$1
  : "${SLURM_JOB_ID:?jobs/$CF_JOB_NAME.sbatch runs under sbatch (SLURM_JOB_ID is not set)}"
  CF_HOME=${CF_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
  CF_BINARY=${CF_BINARY:-$CF_HOME/build/calmflow}
  CF_LAUNCHER=${CF_LAUNCHER:-srun}
  CF_MAX_REQUEUES=${CF_MAX_REQUEUES:-10}
  CF_OUT=${CF_OUT:-runs}
  CF_PYTHON=${CF_PYTHON:-python3}
  CF_RESTART=${SLURM_RESTART_COUNT:-0}
  CF_SIGNALLED=""
  [ -x "$CF_BINARY" ] || cf_die "CF_BINARY '$CF_BINARY' is not an executable file (set CF_HOME or CF_BINARY)"
  case "$CF_LAUNCHER" in srun | mpirun) ;; *) cf_die "CF_LAUNCHER '$CF_LAUNCHER': expected srun or mpirun" ;; esac
  case "$CF_MAX_REQUEUES" in '' | *[!0-9]*) cf_die "CF_MAX_REQUEUES '$CF_MAX_REQUEUES': expected a whole number" ;; esac
  # one BLAS thread per rank unless the job asked for more CPUs per task (toolchain: OpenBLAS
  # otherwise starts one thread per CPU it can see, in every rank)
  export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  if [ "$CF_LAUNCHER" = mpirun ] && [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  local task=""
  [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && task=" (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})"
  cf_log "== calmflow $CF_JOB_NAME: job ${SLURM_JOB_ID}${task} start, restart $CF_RESTART" \
    "(cap $CF_MAX_REQUEUES), ${SLURM_NTASKS:-1} task(s) on ${SLURM_JOB_NODELIST:-?}," \
    "launcher $CF_LAUNCHER, ${OPENBLAS_NUM_THREADS} BLAS thread(s) per rank"
  trap 'cf_on_signal USR1' USR1
  trap 'cf_on_signal TERM' TERM
}

# cf_opt NAME ARGS...: prints the value given to -NAME in ARGS (the last one), or nothing.
cf_opt() {
  local name=$1 v="" prev="" a
  shift
  for a in "$@"; do
    [ "$prev" = "-$name" ] && v=$a
    prev=$a
  done
  printf '%s' "$v"
}

# Signals reach the batch shell (sbatch --signal=B:USR1@..., scancel --batch, the TERM at the
# time limit). The shell is waiting in `wait`, so the trap runs at once; it passes the signal
# to the running step: srun forwards it to every task, mpirun to every rank.
cf_on_signal() {
  # shellcheck disable=SC2034 # read by the job scripts
  CF_SIGNALLED=$1
  cf_log "got SIG$1; passing it to the running step (pid ${CF_STEP_PID:-none})"
  if [ -n "${CF_STEP_PID:-}" ]; then
    kill "-$1" "$CF_STEP_PID" 2>/dev/null || true
  fi
}

# cf_run NTASKS CMD ARGS...: one job step of NTASKS ranks (0: the whole allocation) running
# CMD ARGS; sets CF_RC to its exit status. Runs in the background so a signal is handled while
# it runs.
cf_run() {
  local n=$1
  shift
  local -a launch
  # shellcheck disable=SC2206
  if [ "$CF_LAUNCHER" = srun ]; then
    launch=(srun "--mpi=${CF_SRUN_MPI:-pmix}" --kill-on-bad-exit=1 ${CF_SRUN_FLAGS:-})
    [ "$n" -gt 0 ] && launch+=(--ntasks="$n")
    # since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task
    [ -n "${SLURM_CPUS_PER_TASK:-}" ] && launch+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  else
    launch=(mpirun ${CF_MPIRUN_FLAGS:-})
    [ "$n" -gt 0 ] && launch+=(-n "$n")
  fi
  cf_log "step: ${launch[*]} $*"
  "${launch[@]}" "$@" &
  CF_STEP_PID=$!
  while :; do
    wait "$CF_STEP_PID"
    CF_RC=$?
    kill -0 "$CF_STEP_PID" 2>/dev/null || break # wait was cut short by a trapped signal
  done
  CF_STEP_PID=""
  cf_log "step exited with $CF_RC"
}

# cf_requeue_or_exit RC: the end of a job whose step exited RC. 75 (calmflow's "requeue me")
# requeues this job unless it has been requeued CF_MAX_REQUEUES times; the next run starts
# the script again and resumes from the run directory's newest checkpoint. Any other code
# ends the job with that code.
cf_requeue_or_exit() {
  local rc=$1
  if [ "$rc" -ne 75 ]; then
    cf_log "== calmflow $CF_JOB_NAME: job $SLURM_JOB_ID ends with exit code $rc"
    exit "$rc"
  fi
  if [ "$CF_RESTART" -ge "$CF_MAX_REQUEUES" ]; then
    cf_log "== calmflow $CF_JOB_NAME: stopped with its state saved, but the job was requeued" \
      "$CF_RESTART times (CF_MAX_REQUEUES=$CF_MAX_REQUEUES): not requeueing; submit the same" \
      "command again to resume"
    exit 75
  fi
  cf_log "== calmflow $CF_JOB_NAME: stopped with its state saved; requeueing job $SLURM_JOB_ID" \
    "(restart $((CF_RESTART + 1)) of at most $CF_MAX_REQUEUES)"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    cf_log "scontrol requeue failed (is requeueing allowed here? sbatch --requeue); submit" \
      "the same command again to resume"
    exit 75
  fi
  exit 0
}
