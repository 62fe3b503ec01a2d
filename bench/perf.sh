#!/usr/bin/env bash
# bench/perf.sh: calmflow against the same network in PyTorch (bench/torch_model.py, which runs
# tests/reference/make_reference.py's modules in float32): training step time, tokens/s and
# MFU, rollout samples/s (KV cache against a recompute rollout), peak memory against the
# analytic size. Writes the raw results under RESULTS and renders docs/performance.md
# (bench/perf_report.py).
#
# Per (size, D, S, P) at N 16, the grid of the mode (below):
#   train    calmflow (`calmflow train`, -net_dropout 0 as the reference, gauss head, AdamW,
#            clip 1, -data_name gaussian) and torch (torch_model.py train), BATCH paths per step
#            (64; fewer for big sizes, see SIZES), STEPS steps each; per-step times from
#            calmflow's log.jsonl (-train_log_every 1) and torch's own timer; the first WARM
#            steps of every run are left out. Variants: cf1 / torch1 (one thread: one rank,
#            OPENBLAS_NUM_THREADS=1; torch.set_num_threads(1)); where D is in THREADS2_DS also
#            cfdp2 (2 ranks, data parallel, one thread each), cfblas2 (1 rank, 2 OpenBLAS
#            threads) and torch2 (2 intra-op threads, OPENBLAS_NUM_THREADS=2).
#   rollout  where D is in ROLL_DS: `calmflow sample` with the KV cache (cfkv) and recomputing
#            the prefix (cfrc, -sample_kvcache 0) against torch_model.py rollout (recomputes
#            the prefix every step), one thread each, from a calmflow model trained 1 step;
#            batch: 64 sequences, fewer (a power of 2, at least ROLL_MIN_BATCH) where torch
#            would take longer than ROLL_BUDGET s for one batch.
#   profile  for the PROFILE sizes (full: both): `perf record` of PROFILE_STEPS calmflow training
#            steps at D 2, S 1, P 8 and PETSc's -log_view phases (skipped without perf).
#   memory   peak RSS of every cf1 / torch1 / cfdp2 run against the analytic size (the report),
#            a baseline RSS (calmflow H 8, 1 layer; torch with a tiny model), and with
#            MEMORY=1 bench/memory.sh (the tensor / pipeline layouts) in the same run.
# The machine may be shared: runs of one configuration are interleaved (calmflow, torch, ...,
# the order turned each rep) and every run records the cores other processes used before and
# during it (bench/lib.sh); REPS reps, medians. The sgemm peak (bench/sgemm_peak.c, one
# thread, 512^3) is measured at the start and the end.
#
# Usage: bench/perf.sh [--quick | --full | --big | --all] [build dir (default build-perf)]
#   --quick  2 layers H 64 and H 256, D 2, S 1, P 8, 2 reps of 8 steps (about 2 minutes);
#            writes docs/bench/perf/quick.{json,csv,md}, leaves docs/performance.md alone
#   --all    --full, then --big: the whole grid and docs/performance.md from the two (about an
#            hour on a quiet 2-core machine)
#   --full   (default) 2 layers H 64 (2 heads: calmflow's default) and H 256 (8 heads),
#            D 2, 100 and 1000, S 1 and 4, P 1 and 8, 3 reps of 12 steps, 2-thread variants
#            at D 100, rollout at D 2; docs/bench/perf/full.*, then docs/performance.md
#   --big    12 layers H 768 (12 heads), 8 paths per step, D 2, 100 and 1000, S 1 and 4, P 1
#            and 8, 2 reps of 4 steps, no 2-thread variants, rollout at D 100;
#            docs/bench/perf/big.*, then docs/performance.md (from full and big, whichever exist)
#   env: any of SIZES ("layers:H:heads[:paths]" ...), DS, SS, PS, N, BATCH, REPS, STEPS, WARM,
#        THREADS2_DS, ROLL_DS, ROLL_BUDGET (s per torch rollout run), ROLL_MIN_BATCH (8
#        sequences per rollout batch at least), KINDS ("train rollout"), MEMORY (0/1), PROFILE
#        (sizes, "" for none), PROFILE_STEPS (auto: 100 below H 256, else 30),
#        RESULTS (docs/bench/perf), TAG (results go to RESULTS/<mode>-TAG.* instead of
#        <mode>.*, e.g. TAG=d1000 DS=1000; the report reads every full*.json and big*.json),
#        DOC, RUN_TIMEOUT (s per run, 900), DISTURBED, QUIET_WAIT,
#        QUIET_TOTAL (bench/lib.sh)
set -euo pipefail

# The whole script is one function, read before it runs: editing the file during a long run
# cannot change what the run does.
main() {
cd "$(dirname "$0")/.."
. scripts/env.sh
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
MODE=full
case ${1:-} in
  --quick | --full | --big) MODE=${1#--}; shift ;;
  --all) shift; bash "$0" --full "$@" && bash "$0" --big "$@"; return ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  -*) echo "perf.sh: error: unknown option '$1' (expected --quick, --full, --big or --all)" >&2; exit 2 ;;
esac
BUILD=${1:-build-perf}
CF=$BUILD/calmflow
die() { # print the error (after the file $2's lines, if given) and stop
  [ -n "${2:-}" ] && cat "$2" >&2
  echo "perf.sh: error: $1" >&2
  exit 1
}
tsv() { # the arguments as one tab-separated line
  local IFS=$'\t'
  echo "$*"
}
[ -x "$CF" ] || die "'$CF' is not an executable calmflow (build it first)"
PY=/usr/bin/python3
case $MODE in
  quick) d_sizes="2:64:2 2:256:8" d_ds=2 d_ss=1 d_ps=8 d_reps=2 d_steps=8 d_t2=2 d_roll=2 d_mem=0
    d_prof="" ;;
  full) d_sizes="2:64:2 2:256:8" d_ds="2 100 1000" d_ss="1 4" d_ps="1 8" d_reps=3 d_steps=12 d_t2=100
    d_roll=2 d_mem=1 d_prof="2:64:2 2:256:8" ;;
  big) d_sizes="12:768:12:8" d_ds="2 100 1000" d_ss="1 4" d_ps="1 8" d_reps=2 d_steps=4 d_t2="" d_roll=100
    d_mem=0 d_prof="" ;;
esac
SIZES=${SIZES:-$d_sizes}
DS=${DS:-$d_ds}
SS=${SS:-$d_ss}
PS=${PS:-$d_ps}
N=${N:-16}
BATCH=${BATCH:-64}
REPS=${REPS:-$d_reps}
STEPS=${STEPS:-$d_steps}
WARM=${WARM:-2}
[ "$MODE" = big ] && WARM=${WARM_BIG:-1}
THREADS2_DS=${THREADS2_DS-$d_t2}
ROLL_DS=${ROLL_DS-$d_roll}
ROLL_BUDGET=${ROLL_BUDGET:-4}
ROLL_MIN_BATCH=${ROLL_MIN_BATCH:-8}
KINDS=${KINDS:-"train rollout"}
MEMORY=${MEMORY:-$d_mem}
PROFILE=${PROFILE-$d_prof}
PROFILE_STEPS=${PROFILE_STEPS:-auto}
RESULTS=${RESULTS:-docs/bench/perf}
NAME=$MODE${TAG:+-$TAG}
if [ "$MODE" = quick ]; then DOC=${DOC:-$RESULTS/quick.md}; else DOC=${DOC:-docs/performance.md}; fi
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
. bench/lib.sh
DISTURBED=${DISTURBED:-0.2}
RETRIES=${RETRIES:-1}
T=$(mktemp -d "${TMPDIR:-/tmp}/perf.XXXXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p "$RESULTS"

# what is measured: the binary, its build time, the commit checked out now and how many source
# files changed after the build (then the binary is from an earlier state of the tree)
printf '{"binary": "%s", "binary_mtime": "%s", "commit": "%s", "newer_sources": %s}\n' \
  "$CF" "$(date -r "$CF" -Iseconds)" "$(git describe --always --dirty 2>/dev/null || echo '?')" \
  "$(find src include CMakeLists.txt -newer "$CF" -type f | wc -l)" >"$T/build.json"

# the one-thread sgemm peak, now and again at the end
# shellcheck disable=SC2046 # the flags are words
cc -O2 -std=c11 bench/sgemm_peak.c -o "$T/sgemm_peak" \
  $(pkg-config --cflags --libs openblas 2>/dev/null || echo "-lopenblas")
sgemm() { # $1: tag
  wait_quiet
  echo "$1 $BUSY $("$T/sgemm_peak" 512 7)" >>"$T/sgemm.txt"
}
sgemm start
PEAK=$(awk '{ print $0 }' "$T/sgemm.txt" | sed 's/.*"gflops": \([0-9.]*\).*/\1/' | tail -1)
echo "perf.sh: mode $MODE, sgemm peak $PEAK GFLOP/s (1 thread)," \
  "load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# the plan: one line per configuration (bench/perf_report.py plan)
$PY bench/perf_report.py plan --sizes "$SIZES" --ds "$DS" --ss "$SS" --ps "$PS" --n "$N" \
  --batch "$BATCH" --steps "$STEPS" --threads2-ds "$THREADS2_DS" --roll-ds "$ROLL_DS" \
  --roll-budget "$ROLL_BUDGET" --roll-min-batch "$ROLL_MIN_BATCH" --kinds "$KINDS" \
  --peak "$PEAK" >"$T/plan.tsv"
echo "perf.sh: $(wc -l <"$T/plan.tsv") configurations x $REPS reps" >&2

# parameter counts: calmflow's checkpoint against the torch model, once per size (at D 2, S 1,
# P 1: every tensor name and shape must match)
: >"$T/count.jsonl"
for sz in $SIZES; do
  IFS=: read -r L H NH _ <<<"$sz"
  d="$T/count-L$L-H$H"
  "$CF" train -run_dir "$d" -data_name gaussian -data_dim 100 -flow_time_points "$N" \
    -flow_spatial_tokens 1 -flow_trajectories 1 -net_layers "$L" -net_hidden "$H" \
    -net_heads "$NH" -net_dropout 0 -train_batch 1 -train_steps 1 -train_quiet 1 >"$d.out" 2>&1 ||
    die "calmflow train (parameter count, L $L H $H) failed" "$d.out"
  $PY bench/torch_model.py count --D 100 --S 1 --P 1 --N "$N" --H "$H" --layers "$L" \
    --heads "$NH" --ckpt "$(find "$d/ckpt" -name 'step-*.h5' | sort | tail -1)" >"$d.json" ||
    die "the torch model and calmflow differ (L $L H $H)" "$d.json"
  echo "{\"size\": \"$sz\", \"count\": $(cat "$d.json")}" >>"$T/count.jsonl"
  echo "perf.sh: L $L H $H heads $NH (D 100): $(cat "$d.json")" >&2
  rm -rf "$d"
done

# baseline RSS: calmflow with a tiny model (MPI, PETSc, HDF5, OpenBLAS), torch with a tiny one
"$CF" train -run_dir "$T/base" -data_name gaussian -data_dim 2 -flow_time_points 2 \
  -flow_trajectories 1 -net_layers 1 -net_hidden 8 -net_heads 2 -train_batch 1 -train_steps 2 \
  -train_quiet 1 >"$T/base.out" 2>&1 || die "the baseline run failed" "$T/base.out"
mpiexec -n 2 "$CF" train -run_dir "$T/base2" -data_name gaussian -data_dim 2 -flow_time_points 2 \
  -flow_trajectories 1 -net_layers 1 -net_hidden 8 -net_heads 2 -train_batch 2 -train_steps 2 \
  -train_quiet 1 >"$T/base2.out" 2>&1 || die "the 2-rank baseline run failed" "$T/base2.out"
$PY bench/torch_model.py train --D 2 --S 1 --P 1 --N 2 --H 8 --layers 1 --heads 2 --batch 1 \
  --steps 2 >"$T/base-torch.json"
printf '{"calmflow": %s, "calmflow_dp2": %s, "torch": %s}\n' \
  "$(sed -n 's/.*"peak_rss": \([0-9.e+]*\).*/\1/p' "$T/base/summary.json")" \
  "$(sed -n 's/.*"peak_rss": \([0-9.e+]*\).*/\1/p' "$T/base2/summary.json")" \
  "$(sed -n 's/.*"peak_rss": \([0-9.e+]*\).*/\1/p' "$T/base-torch.json")" >"$T/baseline.json"
rm -rf "$T/base" "$T/base2"

# one run: $1 kind, $2 id, $3 variant, $4 rep, $5 attempt, the configuration in L H NH D S P B X
# (X: steps for train, samples for rollout); writes $T/runs/<id>.<variant>.<rep>.<attempt>.json
mkdir -p "$T/runs"
run_one() {
  local kind=$1 id=$2 var=$3 rep=$4 att=$5 L=$6 H=$7 NH=$8 D=$9 S=${10} P=${11} B=${12} X=${13}
  local out="$T/runs/$id.$var.$rep.$att" rc=0
  local model=(-data_name gaussian -data_dim "$D" -flow_time_points "$N" -flow_spatial_tokens "$S"
    -flow_trajectories "$P" -net_layers "$L" -net_hidden "$H" -net_heads "$NH" -net_dropout 0)
  local targs=(--D "$D" --S "$S" --P "$P" --N "$N" --H "$H" --layers "$L" --heads "$NH")
  case $kind:$var in
    train:cf1 | train:cfblas2 | train:cfdp2)
      local np=1 blas=1
      [ "$var" = cfdp2 ] && np=2
      [ "$var" = cfblas2 ] && blas=2
      local pre=()
      [ "$np" -gt 1 ] && pre=(mpiexec -n "$np")
      OPENBLAS_NUM_THREADS=$blas timeout -k 5 "$RUN_TIMEOUT" "${pre[@]}" "$CF" train \
        -run_dir "$out.d" "${model[@]}" -train_batch "$B" -train_steps "$X" -train_log_every 1 \
        -train_warmup 1 -train_quiet 1 -par_timeout 300 >"$out.out" 2>&1 || rc=$?
      if [ "$rc" = 0 ]; then
        $PY - "$out.d" >"$out.json" <<'PYEOF' || rc=$?
import json, sys
d = sys.argv[1]
s = json.load(open(f"{d}/summary.json"))
log = [json.loads(l) for l in open(f"{d}/log.jsonl")]
tps = s["tokens_per_s"] * s["seconds"] / s["steps"]  # tokens per step
s["tokens_per_step"] = tps
s["step_seconds"] = [tps / r["tokens_per_s"] for r in log]
s["final_loss"] = log[-1]["loss"]
print(json.dumps(s))
PYEOF
      fi
      rm -rf "$out.d"
      ;;
    train:torch1 | train:torch2)
      local th=1
      [ "$var" = torch2 ] && th=2
      OPENBLAS_NUM_THREADS=$th OMP_NUM_THREADS=$th timeout -k 5 "$RUN_TIMEOUT" \
        $PY bench/torch_model.py train "${targs[@]}" --threads "$th" --batch "$B" --steps "$X" \
        >"$out.json" 2>"$out.out" || rc=$?
      ;;
    rollout:cfkv | rollout:cfrc)
      local kv=1
      [ "$var" = cfrc ] && kv=0
      timeout -k 5 "$RUN_TIMEOUT" "$CF" sample -run_dir "$T/model-$id" -sample_n "$X" \
        -sample_batch "$B" -sample_kvcache "$kv" -sample_out "$out.h5" -sample_quiet 1 \
        >"$out.out" 2>&1 || rc=$?
      [ "$rc" = 0 ] && mv "$out.h5.json" "$out.json"
      rm -f "$out.h5"
      ;;
    rollout:torch)
      timeout -k 5 "$RUN_TIMEOUT" $PY bench/torch_model.py rollout "${targs[@]}" --threads 1 \
        --batch "$B" --samples "$X" >"$out.json" 2>"$out.out" || rc=$?
      ;;
    *) echo "perf.sh: error: unknown run $kind:$var" >&2; exit 2 ;;
  esac
  RC=$rc OUTF=$out
}

# every configuration REPS times, its variants interleaved (the order turned each rep)
: >"$T/index.tsv"
retried=0
for rep in $(seq 1 "$REPS"); do
  while IFS=$'\t' read -r -u 3 kind id L H NH D S P B variants; do
    if [ "$kind" = rollout ] && [ ! -d "$T/model-$id" ]; then
      "$CF" train -run_dir "$T/model-$id" -data_name gaussian -data_dim "$D" \
        -flow_time_points "$N" -flow_spatial_tokens "$S" -flow_trajectories "$P" \
        -net_layers "$L" -net_hidden "$H" -net_heads "$NH" -net_dropout 0 -train_batch "$P" \
        -train_steps 1 -train_quiet 1 >"$T/model-$id.out" 2>&1 ||
        die "training the $id model failed" "$T/model-$id.out"
    fi
    read -r -a vs <<<"${variants//,/ }"
    n=${#vs[@]}
    for ((k = 0; k < n; k++)); do
      v=${vs[$(((k + rep - 1) % n))]}
      var=${v%%=*} X=${v#*=}
      att=0
      while :; do
        att=$((att + 1))
        wait_quiet
        cpu_mark "$T/c0"
        run_one "$kind" "$id" "$var" "$rep" "$att" "$L" "$H" "$NH" "$D" "$S" "$P" "$B" "$X" \
          </dev/null
        cpu_mark "$T/c1"
        read -r wall others < <(others_during "$T/c0" "$T/c1")
        tsv "$kind" "$id" "$var" "$rep" "$att" "$L" "$H" "$NH" "$D" "$S" "$P" "$B" "$X" "$RC" \
          "$wall" "$BUSY" "$others" >>"$T/index.tsv"
        echo "perf.sh: rep $rep/$REPS $kind $id $var: rc $RC, ${wall}s (others: $BUSY cores" \
          "before, $others during)" >&2
        [ "$RC" = 0 ] || { tail -5 "$OUTF.out" >&2 || true; }
        if [ "$RC" = 0 ] && awk -v o="$others" -v d="$DISTURBED" 'BEGIN { exit !(o > d) }' &&
          [ "$att" -le "$RETRIES" ] && [ "$retried" -lt "${RETRY_TOTAL:-10}" ]; then
          retried=$((retried + 1))
          continue
        fi
        break
      done
    done
  done 3<"$T/plan.tsv"
done
sgemm end

# where calmflow's time goes: perf record of PROFILE_STEPS training steps per PROFILE size (D 2,
# S 1, P 8, BATCH paths) with PETSc's -log_view phases (forward, backward, optimizer), then of
# a KV-cache rollout (`calmflow sample`, batch 64, 16384 samples below H 256, else 2048) from
# the trained model
: >"$T/profiles.txt"
profile() { # $1 name, $2 size, $3 what, then the command
  local name=$1 sz=$2 what=$3
  shift 3
  wait_quiet
  if perf record -F 999 -o "$T/$name.data" -- "$@" </dev/null >"$T/$name.out" 2>&1; then
    perf report -i "$T/$name.data" --stdio --sort dso,symbol 2>/dev/null | grep -v '^#' |
      grep . | head -60 >"$T/$name.perf" || true # the top 60 symbols
    echo "$sz $what $BUSY $T/$name" >>"$T/profiles.txt"
    echo "perf.sh: profiled $what at $sz (others: $BUSY cores before)" >&2
  else
    echo "perf.sh: warning: perf record of $what at $sz failed; no profile:" >&2
    tail -3 "$T/$name.out" >&2 || true
  fi
  rm -f "$T/$name.data"
}
if [ -n "$PROFILE" ] && command -v perf >/dev/null 2>&1; then
  for sz in $PROFILE; do
    IFS=: read -r L H NH _ <<<"$sz"
    d="$T/prof-L$L-H$H"
    ps=$PROFILE_STEPS
    [ "$ps" = auto ] && { if [ "$H" -lt 256 ]; then ps=100; else ps=30; fi; }
    profile "prof-L$L-H$H-train" "L$L-H$H" train "$CF" train -run_dir "$d" \
      -data_name gaussian -data_dim 2 -flow_time_points "$N" -flow_spatial_tokens 1 \
      -flow_trajectories 8 -net_layers "$L" -net_hidden "$H" -net_heads "$NH" -net_dropout 0 \
      -train_batch "$BATCH" -train_steps "$ps" -train_quiet 1 -log_view
    [ -d "$d/ckpt" ] && profile "prof-L$L-H$H-sample" "L$L-H$H" sample "$CF" sample \
      -run_dir "$d" -sample_n "$((H < 256 ? 16384 : 2048))" -sample_batch 64 \
      -sample_out "$d/s.h5" -sample_quiet 1 \
      -log_view
    rm -rf "$d"
  done
fi

MEMJSON=""
if [ "$MEMORY" = 1 ]; then
  bench/memory.sh "$CF" >"$T/memory.out" 2>&1 || die "bench/memory.sh failed" "$T/memory.out"
  MEMJSON=docs/bench/memory.json
fi

$PY bench/perf_report.py collect --dir "$T" --mode "$NAME" --warm "$WARM" --n "$N" \
  --disturbed "$DISTURBED" \
  --memory "$MEMJSON" --json "$RESULTS/$NAME.json" --csv "$RESULTS/$NAME.csv"
if [ "$MODE" = quick ]; then
  $PY bench/perf_report.py report --results "$RESULTS/$NAME.json" --md "$DOC"
else
  files=()
  # oldest first: a later file's result for the same configuration and variant wins
  while read -r f; do files+=("$f"); done < <(ls -tr "$RESULTS"/full*.json "$RESULTS"/big*.json \
    2>/dev/null)
  $PY bench/perf_report.py report --results "${files[@]}" --md "$DOC"
fi
echo "perf.sh: wrote $RESULTS/$NAME.json, $RESULTS/$NAME.csv and $DOC" >&2
}

main "$@"; exit $? # one line: parsed before main runs
