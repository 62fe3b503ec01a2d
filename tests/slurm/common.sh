# common.sh: sourced by tests/test_slurm_*.sh. Makes a temporary directory, installs Slurm and
# munge from Debian when they are missing (as root; otherwise the test is skipped, exit 77),
# starts a throw-away cluster (tests/slurm/cluster.sh) with all its state in the temporary
# directory, and stops its daemons by PID when the test exits, pass or fail. Helpers for
# submitting jobs and waiting for them.
set -u
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
PY=/usr/bin/python3
T=$(mktemp -d -t cf-slurm.XXXXXX)
CLUSTER=$SRC/tests/slurm/cluster.sh
t_start=$(date +%s.%N)

fail() {
  echo "FAIL $*"
  exit 1
}
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# Slurm's input variables from a surrounding job (CI inside Slurm) would change what sbatch does
for v in $(compgen -e | grep -E '^(SLURM_|SBATCH_|SALLOC_|SRUN_|SQUEUE_|SCANCEL_)' || true); do
  unset "$v"
done

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: Slurm is not installed and this is not root (scripts/install-deps.sh installs it)"
    exit 77
  fi
  echo "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd \
      slurm-client munge >/dev/null; } || fail "could not install Slurm"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: the throw-away Slurm cluster runs its daemons as root"
  exit 77
fi

cleanup() {
  local rc=$?
  bash "$CLUSTER" stop "$T/cluster" || true
  if [ "$rc" -ne 0 ] && [ "${CF_SLURM_KEEP:-0}" = 1 ]; then
    echo "kept $T (CF_SLURM_KEEP=1)"
  else
    rm -rf "$T"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

start=$(bash "$CLUSTER" start "$T/cluster") || fail "the Slurm cluster did not start"
eval "$start"
export SLURM_CONF
echo "cluster up in $(elapsed) s ($T/cluster)"

# what the job scripts need, passed through sbatch's default --export=ALL
export CF_HOME=$SRC CF_BINARY=$CF CF_PYTHON=$PY
export OPENBLAS_NUM_THREADS=1
mkdir -p "$T/work"
cd "$T/work" || fail "cd $T/work"

# job_state JOBID: "STATE EXITCODE RESTARTS" from scontrol (empty when the job is unknown)
job_state() {
  scontrol -o show job "$1" 2>/dev/null | head -n 1 |
    sed -n 's/.*JobState=\([A-Z_]*\).*Restarts=\([0-9]*\).*ExitCode=\([0-9:]*\).*/\1 \3 \2/p'
}

# dump_job JOBID OUTFILE: what a failing test shows
dump_job() {
  echo "---- scontrol show job $1"
  scontrol show job "$1" 2>&1 | head -n 40
  [ -n "${2:-}" ] && { echo "---- $2"; tail -n 60 "$2" 2>&1; }
  echo "---- slurmctld.log (tail)"
  tail -n 15 "$T/cluster/log/slurmctld.log"
  echo "---- slurmd.log (tail)"
  tail -n 15 "$T/cluster/log/slurmd.log"
}

# wait_job JOBID SECONDS [OUTFILE]: until the job is COMPLETED, FAILED, CANCELLED, TIMEOUT...;
# prints the final "STATE EXITCODE RESTARTS"
wait_job() {
  local j=$1 limit=$2 s="" _
  for _ in $(seq 1 $((limit * 5))); do
    s=$(job_state "$j")
    case "$s" in
    COMPLETED* | FAILED* | CANCELLED* | TIMEOUT* | NODE_FAIL* | OUT_OF_MEMORY* | BOOT_FAIL* | DEADLINE* | PREEMPTED*)
      echo "$s"
      return 0
      ;;
    esac
    sleep 0.2
  done
  dump_job "$j" "${3:-}" >&2
  fail "job $j did not end within $limit s (state: $s)"
}

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
wait_for() {
  local limit=$1 what=$2 _
  shift 2
  for _ in $(seq 1 $((limit * 10))); do
    "$@" && return 0
    sleep 0.1
  done
  fail "timed out after $limit s waiting for $what"
}
