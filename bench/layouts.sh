#!/usr/bin/env bash
# layouts.sh: throughput, communication and memory of `calmflow train` for every process-grid
# layout of 1, 2 and 4 ranks (4 is oversubscribed on a 2-core machine and marked so).
#
# Layouts (world = DP x PP x CP x TP; "dp" is what the other degrees leave):
#   1;  dp2, tp2, pp2, cp2;  dp4, tp2*pp2, pp2*cp2, dp2*tp2, tp2*cp2, pp4, cp4
# Configs:
#   tokens   activation-heavy: N 8, P 4, S 4 (128 tokens per sequence), H 64, 4 layers, 4 heads,
#            64 paths (16 sequences) per data-parallel replica and step, so every DP row has the
#            same per-rank batch as the 1-rank run and the other rows the same global batch;
#   params   parameter-dominated: N 8, P 1, S 1 (8 tokens), H 256, 4 layers, 8 heads, 8 paths
#            per replica (N 8 rather than 3 so that cp4 has the 8 points it needs);
#   baseline the params shapes at H 8: what MPI, PETSc and HDF5 cost in RSS per rank, so the
#            params rows can also show the RSS the model adds (REPS_BASELINE runs each).
# Pipeline layouts run 2 x pp micro-batches (1F1B), the others 1. Each (config, layout) runs
# REPS times; the report takes medians. Tokens/s is steady_tokens_per_s of summary.json (the
# steps after the first, checkpoint left out); MFU divides the model FLOPs by the single-core
# sgemm peak (bench/sgemm_peak.c, compiled here, same run) times min(ranks, cores).
# Writes OUT/layouts.json (every run + the medians) and OUT/layouts.md (printed too); a failed
# run is kept with its error line and its row says "failed: ...".
# Usage: bench/layouts.sh [build/calmflow]
#   env: STEPS=60 REPS=3 REPS_BASELINE=1 CONFIGS="tokens params baseline" LAYOUTS="1 dp2 ..."
#        OUT=docs/bench RUN_TIMEOUT=180 (seconds per run)
# The machine is shared: before a run the script waits up to QUIET_WAIT=10 s (QUIET_TOTAL=60 s
# in all) for other processes to use under DISTURBED=0.2 cores, and measures what they used
# during the run (/proc/stat minus the run's own CPU time); a run they used more of is repeated,
# at most RETRIES=2 times per run and RETRY_TOTAL=12 times in all, and the report takes a row's
# median over its undisturbed runs where it has any (every run stays in the JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
CF=${1:-build/calmflow}
[ -x "$CF" ] || { echo "layouts.sh: error: '$CF' is not an executable calmflow" >&2; exit 2; }
STEPS=${STEPS:-60}
REPS=${REPS:-3}
REPS_BASELINE=${REPS_BASELINE:-1}
CONFIGS=${CONFIGS:-"tokens params baseline"}
LAYOUTS=${LAYOUTS:-"1 dp2 tp2 pp2 cp2 dp4 tp2*pp2 pp2*cp2 dp2*tp2 tp2*cp2 pp4 cp4"}
OUT=${OUT:-docs/bench}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
CORES=$(getconf _NPROCESSORS_ONLN)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$OUT"

# name: calmflow options, paths per data-parallel replica and step
declare -A ARGS PATHS
ARGS[tokens]="-flow_time_points 8 -flow_trajectories 4 -flow_spatial_tokens 4 -net_hidden 64 -net_layers 4 -net_heads 4"
PATHS[tokens]=64
ARGS[params]="-flow_time_points 8 -flow_trajectories 1 -flow_spatial_tokens 1 -net_hidden 256 -net_layers 4 -net_heads 8"
PATHS[params]=8
ARGS[baseline]="-flow_time_points 8 -flow_trajectories 1 -flow_spatial_tokens 1 -net_hidden 8 -net_layers 4 -net_heads 2"
PATHS[baseline]=8

# Cores kept busy by other processes over half a second (/proc/stat; none of ours runs then).
busy_cores() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  awk -v a="$a" -v b="$b" -v n="$CORES" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.2f", (y[2] > x[2] ? n * (y[1] - x[1]) / (y[2] - x[2]) : 0) }'
}
# The machine is shared: before each run wait (at most QUIET_WAIT s per run, QUIET_TOTAL s in
# all) until other processes use under DISTURBED cores; BUSY is what they used at the start.
QUIET_WAIT=${QUIET_WAIT:-10}
QUIET_TOTAL=${QUIET_TOTAL:-60}
waited=0
wait_quiet() {
  local t=0
  BUSY=$(busy_cores)
  while awk -v b="$BUSY" -v d="$DISTURBED" 'BEGIN { exit !(b > d) }' && [ "$t" -lt "$QUIET_WAIT" ] &&
    [ "$waited" -lt "$QUIET_TOTAL" ]; do
    sleep 1
    t=$((t + 1)) waited=$((waited + 1))
    BUSY=$(busy_cores)
  done
}

# cpu_mark FILE: the machine's busy and total CPU seconds (/proc/stat, all cores) and the CPU
# seconds of this shell's finished children (`times`: every rank mpiexec waited for).
cpu_mark() {
  local t
  times >"$1.times" # in this shell: a subshell would not see our children
  t=$(tail -1 "$1.times")
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" -v now="$(date +%s.%N)" '/^cpu / {
    split(t, c, /[ms ]+/)
    printf "%s %.4f %.4f %.4f\n", now, ($2 + $3 + $4 + $7 + $8) / hz,
      ($2 + $3 + $4 + $5 + $6 + $7 + $8) / hz, 60 * c[1] + c[2] + 60 * c[3] + c[4] }' \
    /proc/stat >"$1"
}
# others_during MARK0 MARK1: wall seconds, and cores that processes other than the run used
others_during() {
  awk 'NR == FNR { a = $1; b = $2; c = $4; next } {
    w = $1 - a; o = w > 0 ? (($2 - b) - ($4 - c)) / w : 0
    printf "%.2f %.2f\n", w, o < 0 ? 0 : o }' "$1" "$2"
}
DISTURBED=${DISTURBED:-0.2}
RETRIES=${RETRIES:-2}
RETRY_TOTAL=${RETRY_TOTAL:-12}
retried=0

# the per-core sgemm peak, measured now (the same machine state as the runs)
BUILD=$(dirname "$CF")
PK=$(pkg-config --cflags --libs openblas 2>/dev/null || echo "-lopenblas")
# shellcheck disable=SC2086
cc -O2 -std=c11 bench/sgemm_peak.c -o "$BUILD/sgemm_peak" $PK
wait_quiet
SGEMM_BUSY=$BUSY
OPENBLAS_NUM_THREADS=1 "$BUILD/sgemm_peak" 512 7 >"$T/sgemm.json"
echo "sgemm peak (1 thread, 512^3): $(cat "$T/sgemm.json")" >&2

# one line per run: config layout rep ranks dp tp pp cp batch microbatches rc wall run_dir
# busy_before others_during attempt
: >"$T/index.tsv"
for rep in $(seq 1 "$REPS"); do
  for cfg in $CONFIGS; do
    [ "$cfg" = baseline ] && [ "$rep" -gt "$REPS_BASELINE" ] && continue
    for lay in $LAYOUTS; do
      tp=1 pp=1 cp=1 dp=1
      if [ "$lay" != 1 ]; then
        for part in ${lay//\*/ }; do
          n=${part:2}
          case ${part:0:2} in
            dp) dp=$n ;; tp) tp=$n ;; pp) pp=$n ;; cp) cp=$n ;;
            *) echo "layouts.sh: error: layout '$lay': expected parts dpK, tpK, ppK, cpK" >&2; exit 2 ;;
          esac
        done
      fi
      w=$((dp * tp * pp * cp))
      mb=1
      [ "$pp" -gt 1 ] && mb=$((2 * pp))
      batch=$((PATHS[$cfg] * dp))
      tag=""
      if [ "$w" -gt "$CORES" ]; then tag=" (oversubscribed)"; fi
      attempt=0
      while :; do
        attempt=$((attempt + 1))
        d="$T/$cfg-${lay//\*/x}-$rep-$attempt"
        wait_quiet
        cpu_mark "$T/c0"
        rc=0
        # shellcheck disable=SC2086
        timeout -k 5 "$RUN_TIMEOUT" mpiexec -n "$w" "$CF" train -run_dir "$d" ${ARGS[$cfg]} \
          -train_batch "$batch" -train_microbatches "$mb" -train_steps "$STEPS" \
          -train_log_every "$STEPS" -train_warmup 1 -train_quiet 1 -par_timeout 60 \
          -par_tp "$tp" -par_pp "$pp" -par_cp "$cp" >"$d.out" 2>&1 || rc=$?
        cpu_mark "$T/c1"
        read -r wall others < <(others_during "$T/c0" "$T/c1")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cfg" "$lay" \
          "$rep" "$w" "$dp" "$tp" "$pp" "$cp" "$batch" "$mb" "$rc" "$wall" "$d" "$BUSY" "$others" \
          "$attempt" >>"$T/index.tsv"
        echo "run $rep/$REPS $cfg $lay: $w ranks$tag, rc $rc, ${wall}s (other processes:" \
          "$BUSY cores before, $others during)" >&2
        # a run that other work slowed down is repeated (bounded); the report leaves it out
        if [ "$rc" -eq 0 ] && awk -v o="$others" -v d="$DISTURBED" 'BEGIN { exit !(o > d) }' &&
          [ "$attempt" -le "$RETRIES" ] && [ "$retried" -lt "$RETRY_TOTAL" ]; then
          retried=$((retried + 1))
          continue
        fi
        break
      done
    done
  done
done

{
  for cfg in tokens params baseline; do
    printf '%s\t%s\t%s\n' "$cfg" "${PATHS[$cfg]}" "${ARGS[$cfg]}"
  done
} >"$T/configs.tsv"
/usr/bin/python3 bench/layouts_report.py --index "$T/index.tsv" --configs "$T/configs.tsv" \
  --sgemm "$T/sgemm.json" --cores "$CORES" --steps "$STEPS" --reps "$REPS" --sgemm-busy "$SGEMM_BUSY" \
  --disturbed "$DISTURBED" \
  --json "$OUT/layouts.json" --md "$OUT/layouts.md"
cat "$OUT/layouts.md"
