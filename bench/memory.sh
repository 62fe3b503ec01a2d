#!/usr/bin/env bash
# bench/memory.sh: per-rank memory of a parameter-dominated model under tensor and pipeline
# parallelism (the calmflow 2 target: tp2 or pp2 <= 0.6x the 1-rank memory).
#
# Model: H 1024, 4 layers, 8 heads, N 8, P 1, S 1 (8 tokens per sequence, 8 paths per step):
# about 51M parameters, so parameters, gradients and AdamW moments (~820 MB) dwarf what MPI,
# PETSc and HDF5 take (~45 MB per rank) and the activations. Each layout trains 5 steps once;
# peak RSS is the largest over the ranks (getrusage), state bytes the largest rank's
# parameters + gradients + moments (summary.json). 4 ranks are oversubscribed on 2 cores,
# which does not matter for memory.
#
#   usage: bench/memory.sh [path/to/calmflow]   (default build/calmflow)
#   writes docs/bench/memory.json and docs/bench/memory.md
set -eu
cd "$(dirname "$0")/.."
CF=${1:-build/calmflow}
export OPENBLAS_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
MODEL=(-flow_time_points 8 -flow_trajectories 1 -flow_spatial_tokens 1 -net_hidden 1024
       -net_layers 4 -net_heads 8 -train_batch 8 -train_steps 5 -train_microbatches 4
       -train_quiet 1)
LAYOUTS="1:1: tp2:2:-par_tp,2 pp2:2:-par_pp,2 tp2pp2:4:-par_tp,2,-par_pp,2 pp4:4:-par_pp,4
         tp4:4:-par_tp,4"
names=()
for l in $LAYOUTS; do
  IFS=: read -r name np opts <<<"$l"
  # shellcheck disable=SC2086
  mpiexec -n "$np" "$CF" train "${MODEL[@]}" ${opts//,/ } -run_dir "$T/$name" >"$T/$name.log" 2>&1 ||
    { cat "$T/$name.log"; echo "bench/memory.sh: layout $name failed" >&2; exit 1; }
  names+=("$name")
done
mkdir -p docs/bench
/usr/bin/python3 - "$T" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "${names[@]}" <<'PYEOF'
import json, sys, datetime
t, commit, names = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {n: json.load(open(f"{t}/{n}/summary.json")) for n in names}
base = rows["1"]
mib = 2.0 ** 20
out = {"date": str(datetime.date.today()), "commit": commit, "runs": rows}
json.dump(out, open("docs/bench/memory.json", "w"), indent=1)
lines = [f"Per-rank memory, parameter-dominated model (`bench/memory.sh`), {out['date']}, "
         f"commit {commit}: H 1024, 4 layers, 8 heads, 8 tokens per sequence, 8 paths per step.",
         "", "| layout | ranks | peak RSS MiB (max rank) | vs 1 rank | state MiB (max rank) | vs 1 rank |",
         "|---|---|---|---|---|---|"]
for n in names:
    r = rows[n]
    over = " (oversubscribed)" if r["ranks"] > 2 else ""
    lines.append(f"| {n} | {r['ranks']}{over} | {r['peak_rss'] / mib:.0f} | "
                 f"{r['peak_rss'] / base['peak_rss']:.2f}x | {r['state_bytes_max'] / mib:.0f} | "
                 f"{r['state_bytes_max'] / base['state_bytes_max']:.2f}x |")
for n in ("tp2", "pp2"):
    ratio = rows[n]["peak_rss"] / base["peak_rss"]
    lines.append("")
    lines.append(f"- {n}: peak RSS {ratio:.2f}x the 1-rank run (target <= 0.6x: "
                 f"{'met' if ratio <= 0.6 else 'NOT met'}).")
open("docs/bench/memory.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
