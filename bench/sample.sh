#!/usr/bin/env bash
# sample.sh: sampling throughput of `calmflow sample`, KV cache against recomputing the prefix,
# at 1, 2 and 4 ranks (4 is oversubscribed on a 2-core machine and marked so).
#
# Models: two throwaway models trained for TRAIN_STEPS steps (speed does not depend on their
# quality), identical apart from N: P 4, S 2, H 64, 4 layers, 4 heads, D 2 (moons), gauss head,
# N 16 (T = 128 tokens per sequence) and N 64 (T = 512).
# Cases (N, mode, -sample_batch, ranks, -sample_n), each run REPS times, medians reported:
#   N 16 and 64, KV cache, batch 64 (the default), 1 / 2 / 4 ranks;
#   N 16, recompute, batch 64, 1 / 2 / 4 ranks;
#   N 64, recompute, batch 2, 1 / 2 / 4 ranks: at about 9 samples/s one batch of 64 sequences
#        (256 samples) would take 30 s, so this case runs 8 batches of 2 sequences (recompute
#        throughput hardly depends on the batch: each step's GEMMs already have b t P S rows);
#   N 16 and 64, KV cache, batch 4 at 1 and 2 ranks: what the coordinator costs when the
#        batches are tiny (16 samples each).
# A case may name a layout as a 6th field: `calmflow sample` options joined with commas, e.g.
# 64:kv:64:2:1536:-par_pp,2 (one replica split into two pipeline stages); without one every
# rank is a data-parallel replica. The report names the layout (1, dp2, pp2, tp2, cp2,
# dp2 x pp2, ...; dp = ranks / (tp pp cp)).
# Layout cases (LAYOUT_CASES, run when LAYOUTS=1, the default; reported in their own table):
#   N 64, KV cache, batch 64, 1536 samples: 1 rank; 2 ranks as dp2, pp2, tp2 and cp2; 4 ranks
#   (oversubscribed) as dp2 x pp2 and pp4 (the bench model has 4 layers and 4 heads, so
#   -par_pp 4 and -par_tp 4 fit).
# Sample counts are multiples of batch x P, so no batch is padded; SAMPLES_SCALE multiplies
# them (e.g. 0.25 for a quick check; they are rounded to whole batches).
# Every run writes <out>.json (rollout.h statistics); the report (bench/sample_report.py) adds
# tokens/s, speed-ups, the KV / recompute ratio and the coordinator share.
# Writes OUT/NAME.json (every run + the medians) and OUT/NAME.md (printed too); NAME=sample,
# or sample-layouts when CASES is set but empty (only the layout cases: sample.md stays).
# Usage: bench/sample.sh [build/calmflow]
#   env: REPS=3 OUT=docs/bench NAME=... RUN_TIMEOUT=120 TRAIN_STEPS=3 SAMPLES_SCALE=1
#        CASES="..." (set but empty: none) LAYOUTS=1 LAYOUT_CASES="..."
#   e.g. only the layout cases: CASES="" bench/sample.sh build/calmflow
# The machine is shared: as bench/layouts.sh, before a run the script waits up to QUIET_WAIT=10 s
# (QUIET_TOTAL=60 s in all) for other processes to use under DISTURBED=0.2 cores, measures what
# they used during the run, repeats a disturbed run (at most RETRIES=2 times per run and
# RETRY_TOTAL=12 in all) and the report takes medians over the undisturbed runs where a row has
# any. About 5 minutes on an idle 2-core machine, plus about 3 for the layout cases.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
CF=${1:-build/calmflow}
[ -x "$CF" ] || { echo "sample.sh: error: '$CF' is not an executable calmflow" >&2; exit 2; }
REPS=${REPS:-3}
OUT=${OUT:-docs/bench}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
TRAIN_STEPS=${TRAIN_STEPS:-3}
SAMPLES_SCALE=${SAMPLES_SCALE:-1}
CORES=$(getconf _NPROCESSORS_ONLN)
P=4
MODEL="-flow_trajectories $P -flow_spatial_tokens 2 -net_hidden 64 -net_layers 4 -net_heads 4"
# N:mode:batch:ranks(,):samples[:layout]   mode kv = -sample_kvcache 1, rc = -sample_kvcache 0;
# layout: options joined with commas (applied at every rank count of the case)
CASES=${CASES-"16:kv:64:1,2,4:8192 16:rc:64:1,2,4:1536 64:kv:64:1,2,4:1536 64:rc:2:1,2,4:64
  16:kv:4:1,2:8192 64:kv:4:1,2:1536"}
LAYOUTS=${LAYOUTS:-1}
if [ -z "${NAME:-}" ]; then
  NAME=sample
  [ -n "${CASES//[[:space:]]/}" ] || NAME=sample-layouts
fi
LAYOUT_CASES=${LAYOUT_CASES-"64:kv:64:1:1536 64:kv:64:2:1536 64:kv:64:2:1536:-par_pp,2
  64:kv:64:2:1536:-par_tp,2 64:kv:64:2:1536:-par_cp,2 64:kv:64:4:1536:-par_pp,2
  64:kv:64:4:1536:-par_pp,4"}
# every case once, tagged with its set: cases (the table above) or layouts (their own table)
ALL=""
for c in $CASES; do ALL="$ALL cases=$c"; done
if [ "$LAYOUTS" = 1 ]; then
  for c in $LAYOUT_CASES; do ALL="$ALL layouts=$c"; done
fi
[ -n "$ALL" ] ||
  { echo "sample.sh: error: no cases to run (CASES empty and LAYOUTS=0)" >&2; exit 2; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$OUT"

# Cores kept busy by other processes over half a second (/proc/stat; none of ours runs then).
busy_cores() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  awk -v a="$a" -v b="$b" -v n="$CORES" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.2f", (y[2] > x[2] ? n * (y[1] - x[1]) / (y[2] - x[2]) : 0) }'
}
QUIET_WAIT=${QUIET_WAIT:-10}
QUIET_TOTAL=${QUIET_TOTAL:-60}
waited=0
# wait (bounded) until other processes use under DISTURBED cores; BUSY: what they used at start
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
# cpu_mark FILE: now, the machine's busy and total CPU seconds (/proc/stat, all cores) and the
# CPU seconds of this shell's finished children (`times`: every rank mpiexec waited for).
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

# the models (one per N), the same apart from N
NS=$(for c in $ALL; do c=${c#*=}; echo "${c%%:*}"; done | sort -un)
for n in $NS; do
  # shellcheck disable=SC2086
  "$CF" train -run_dir "$T/model-n$n" -flow_time_points "$n" $MODEL -seed 1 \
    -train_steps "$TRAIN_STEPS" -train_batch 32 -train_warmup 1 -train_log_every "$TRAIN_STEPS" \
    -train_quiet 1 >"$T/model-n$n.out" 2>&1 ||
    { cat "$T/model-n$n.out" >&2; echo "sample.sh: error: training the N $n model failed" >&2; exit 1; }
  cp "$T/model-n$n/summary.json" "$T/train-n$n.json"
  echo "trained the N $n model ($TRAIN_STEPS steps)" >&2
done

# one line per run: N mode batch ranks samples rep attempt rc wall json busy_before others
# set layout_options(, or -) tp pp cp
: >"$T/index.tsv"
for rep in $(seq 1 "$REPS"); do
  for sc in $ALL; do
    set_=${sc%%=*} c=${sc#*=}
    IFS=: read -r n mode batch rankl samples lopts <<<"$c"
    [ -n "$samples" ] || {
      echo "sample.sh: error: case '$c': expected N:mode:batch:ranks:samples[:layout]" >&2
      exit 2
    }
    # the layout's options, and its tensor / pipeline / context degrees for the report
    read -r -a lay <<<"${lopts//,/ }"
    [ $((${#lay[@]} % 2)) -eq 0 ] ||
      { echo "sample.sh: error: case '$c': layout '$lopts' is not option,value pairs" >&2; exit 2; }
    tp=1 pp=1 cp=1
    for ((i = 0; i < ${#lay[@]}; i += 2)); do
      case ${lay[i]} in
        -par_tp) tp=${lay[i + 1]} ;; -par_pp) pp=${lay[i + 1]} ;; -par_cp) cp=${lay[i + 1]} ;;
      esac
    done
    # whole batches of batch x P samples, at least one
    samples=$(awk -v s="$samples" -v f="$SAMPLES_SCALE" -v b="$((batch * P))" \
      'BEGIN { k = int(s * f / b + 0.5); if (k < 1) k = 1; print k * b }')
    kv=1
    [ "$mode" = rc ] && kv=0
    for w in ${rankl//,/ }; do
      tag=""
      [ "$w" -gt "$CORES" ] && tag=" (oversubscribed)"
      attempt=0
      while :; do
        attempt=$((attempt + 1))
        d="$T/run-$set_-n$n-$mode-b$batch-r$w-${lopts//[^a-z0-9]/}-$rep-$attempt"
        wait_quiet
        cpu_mark "$T/c0"
        rc=0
        timeout -k 5 "$RUN_TIMEOUT" mpiexec -n "$w" "$CF" sample -run_dir "$T/model-n$n" \
          -sample_n "$samples" -sample_batch "$batch" -sample_kvcache "$kv" \
          -sample_out "$d.h5" -sample_quiet 1 -par_timeout 60 "${lay[@]}" >"$d.out" 2>&1 || rc=$?
        cpu_mark "$T/c1"
        read -r wall others < <(others_during "$T/c0" "$T/c1")
        rm -f "$d.h5"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" \
          "$mode" "$batch" "$w" "$samples" "$rep" "$attempt" "$rc" "$wall" "$d" "$BUSY" "$others" \
          "$set_" "${lopts:--}" "$tp" "$pp" "$cp" >>"$T/index.tsv"
        sps=$(sed -n 's/.*"samples_per_s": \([0-9.e+-]*\).*/\1/p' "$d.h5.json" 2>/dev/null || true)
        echo "run $rep/$REPS N $n $mode batch $batch: $w rank(s)$tag${lopts:+ ${lopts//,/ }}," \
          "$samples samples, rc $rc," \
          "${wall}s, ${sps:-?} samples/s (other processes: $BUSY cores before, $others during)" >&2
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

# shellcheck disable=SC2086
/usr/bin/python3 bench/sample_report.py --index "$T/index.tsv" --train "$T"/train-n*.json \
  --model "$MODEL" --cores "$CORES" --reps "$REPS" --disturbed "$DISTURBED" \
  --json "$OUT/$NAME.json" --md "$OUT/$NAME.md"
cat "$OUT/$NAME.md"
