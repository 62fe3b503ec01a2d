#!/usr/bin/env bash
# dp_scaling.sh: data-parallel scaling of `calmflow train` at equal per-rank batch.
# For world = 1, 2 and 4 (4 is oversubscribed on a 2-core machine and marked so) trains the
# demo model for STEPS steps with PER_RANK paths per rank and prints a markdown table:
# tokens/s (median over the logged steps after the first quarter), speed-up over 1 rank,
# efficiency, the share of wall time in the gradient all-reduce (PETSc -log_view event
# cfGradAllreduce, max over ranks), gradient bytes per step and rank, and peak RSS.
# Usage: bench/dp_scaling.sh [build/calmflow]   (env: STEPS=300 PER_RANK=128 WORLDS="1 2 4")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
CF=${1:-build/calmflow}
STEPS=${STEPS:-300}
PER_RANK=${PER_RANK:-128}
WORLDS=${WORLDS:-"1 2 4"}
CORES=$(getconf _NPROCESSORS_ONLN)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
echo "| ranks | paths/step | tokens/s (median) | speed-up | efficiency | all-reduce share | grad MiB/step/rank | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
base=""
for w in $WORLDS; do
  batch=$((PER_RANK * w))
  mpiexec -n "$w" "$CF" train -options_file_yaml configs/demo.yaml -run_dir "$T/w$w" \
    -train_steps "$STEPS" -train_batch "$batch" -train_log_every 1 -train_warmup 10 \
    -log_view >"$T/w$w.out" 2>&1
  /usr/bin/python3 - "$T/w$w" "$w" "$batch" "$CORES" "${base:-0}" >"$T/row" <<'PYEOF'
import json, re, statistics, sys
d, w, batch, cores, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rows = [json.loads(l) for l in open(f"{d}/log.jsonl")]
tps = statistics.median(r["tokens_per_s"] for r in rows[len(rows) // 4:])
out = open(f"{d}.out").read()
wall = float(re.search(r"Time \(sec\):\s+(\S+)", out).group(1))
ev = re.search(r"^cfGradAllreduce\s+\d+\s+\S+\s+(\S+)", out, re.M)
share = float(ev.group(1)) / wall if ev else float("nan")
mem = re.search(r"peak RSS (\S+) MiB.*all-reduce (\S+) MiB per step", out)
speed = tps / base if base > 0 else 1.0
tag = f"{w} (oversubscribed)" if w > cores else str(w)
print(f"| {tag} | {batch} | {tps:.0f} | {speed:.2f}x | {speed / w:.0%} | {share:.1%} | {mem.group(2)} | {mem.group(1)} |")
PYEOF
  cat "$T/row"
  [ -z "$base" ] && base=$(/usr/bin/python3 -c "import json,statistics;r=[json.loads(l) for l in open('$T/w$w/log.jsonl')];print(statistics.median(x['tokens_per_s'] for x in r[len(r)//4:]))")
done
