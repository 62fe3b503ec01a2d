#!/usr/bin/env bash
# test_slurm_sweep.sh: jobs/sweep.sbatch as a 2-element job array on a real (throw-away,
# one-node) Slurm cluster. The grid file has comments and blank lines; each element trains
# with the common options plus its line (its line wins), into SWEEP/001 and SWEEP/002, and
# appends one row to SWEEP/results.jsonl; element 2 equals the same training run directly;
# an array index beyond the grid fails with a message naming the right --array range. The
# elements launch with CF_LAUNCHER=mpirun (Open MPI's mpirun inside the allocation).
. "$CF_SOURCE_DIR/tests/slurm/common.sh"
JOBS=$SRC/jobs
COMMON=(-train_steps 30 -train_batch 32 -flow_trajectories 4 -flow_time_points 6 -net_hidden 16
  -net_layers 1 -train_log_every 1 -train_quiet 1 -train_lr 5e-4 -seed 1)
cat >grid.txt <<'GRID'
# learning-rate sweep: one line per element

-train_lr 1e-3
   -train_lr 3e-3 -seed 2
GRID

# the elements launch with mpirun inside the allocation (train and scaling use srun)
j=$(CF_LAUNCHER=mpirun sbatch --parsable --array=1-2 -n 1 -t 10 -J cf-test-sweep "$JOBS/sweep.sbatch" grid.txt \
  "${COMMON[@]}") || fail "sbatch --array=1-2 sweep.sbatch"
bad=$(sbatch --parsable --array=3 -n 1 -t 10 -J cf-test-sweep-bad "$JOBS/sweep.sbatch" grid.txt \
  "${COMMON[@]}") || fail "sbatch --array=3 sweep.sbatch"
mpiexec -n 1 "$CF" train "${COMMON[@]}" -train_lr 3e-3 -seed 2 -run_dir "$T/ref" >"$T/ref.out" 2>&1 ||
  { cat "$T/ref.out"; fail "reference run"; }
for k in 1 2; do
  st=$(wait_job "${j}_$k" 90 "calmflow-sweep-${j}_$k.out")
  [ "$st" = "COMPLETED 0:0 0" ] || { dump_job "${j}_$k" "calmflow-sweep-${j}_$k.out"; fail "element $k ended '$st'"; }
done
st=$(wait_job "${bad}_3" 60 "calmflow-sweep-${bad}_3.out")
[ "${st%% *}" = FAILED ] || fail "element 3 of a 2-line grid ended '$st', expected FAILED"
grep -q 'array index 3: grid.txt has 2 element(s); submit with --array=1-2' "calmflow-sweep-${bad}_3.out" ||
  { cat "calmflow-sweep-${bad}_3.out"; fail "no message naming the array range"; }
grep -q 'launcher mpirun' "calmflow-sweep-${j}_1.out" || fail "the elements did not use mpirun"
echo "array $j: both elements completed; index 3 refused ($(elapsed) s)"
$PY - "runs/sweep-$j" "$T/ref" <<'PYEOF' || fail "sweep results"
import json, sys
sweep, ref = sys.argv[1:3]
rows = sorted((json.loads(l) for l in open(f"{sweep}/results.jsonl")), key=lambda r: r["element"])
assert [r["element"] for r in rows] == [1, 2], rows
assert rows[0]["options"] == "-train_lr 1e-3" and rows[1]["options"].strip() == "-train_lr 3e-3 -seed 2", rows
for r, d in zip(rows, ("001", "002")):
    assert r["run_dir"] == f"{sweep}/{d}" and r["steps"] == 30 and r["ranks"] == 1, r
    assert isinstance(r["final_loss"], float) and r["tokens_per_s"] > 0, r
def cfg(d):
    return dict(l.split(": ", 1) for l in open(f"{d}/config.yaml").read().splitlines() if ": " in l)
c1, c2 = cfg(f"{sweep}/001"), cfg(f"{sweep}/002")
assert (c1["train_lr"], c1["seed"]) == ('"1e-3"', '"1"'), c1
assert (c2["train_lr"], c2["seed"]) == ('"3e-3"', '"2"'), c2
assert c1["train_steps"] == c2["train_steps"] == '"30"'
L = lambda d: [(j["step"], j["loss"]) for j in map(json.loads, open(f"{d}/log.jsonl"))]
assert L(f"{sweep}/002") == L(ref), "element 2 differs from the same options run directly"
assert L(f"{sweep}/001") != L(ref)
print("sweep: 2 rows; each element ran the common options overridden by its grid line")
PYEOF
echo "test_slurm_sweep: ok ($(elapsed) s)"
