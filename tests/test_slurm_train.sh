#!/usr/bin/env bash
# test_slurm_train.sh: jobs/train.sbatch, sample.sbatch and eval.sbatch on a real (throw-away,
# one-node) Slurm cluster.
#  1. train.sbatch on 2 ranks gets USR1 mid-run through `scancel --signal=USR1 --batch` (what
#     --signal=B:USR1@<s> does before the time limit); the script passes it to the ranks,
#     calmflow checkpoints and exits 75, the script requeues the job, the second run resumes
#     from ckpt/LATEST and finishes; the log holds both runs (appended); the losses, parameters
#     and AdamW moments equal an uninterrupted run's bit for bit.
#  2. The requeue cap: with CF_MAX_REQUEUES=0 the signalled job ends with exit code 75 and is
#     not requeued; a new job on the same -run_dir resumes it.
#  3. sample.sbatch signalled mid-run is requeued and continues the samples file, which then
#     equals an uninterrupted sampling run's; eval.sbatch (after it, --dependency=afterok)
#     makes the data files and writes metrics.json.
. "$CF_SOURCE_DIR/tests/slurm/common.sh"
JOBS=$SRC/jobs
TR=(-train_steps 120 -train_batch 32 -flow_trajectories 4 -flow_time_points 6 -net_hidden 16
  -net_layers 1 -train_log_every 1 -train_quiet 1 -seed 11)
# every step sleeps 30 ms (only the timing changes), so a signal lands mid-run
SLOW='grad_allreduce:*:*:delay=0.03'

lines() { [ -f "$1" ] && [ "$(grep -c '' "$1")" -ge "$2" ]; }

# the uninterrupted reference, outside Slurm, at the same layout (2 ranks, data parallel)
mpiexec -n 2 "$CF" train "${TR[@]}" -run_dir "$T/ref" >"$T/ref.out" 2>&1 ||
  { cat "$T/ref.out"; fail "reference run"; }

# ---- 1. USR1, checkpoint, exit 75, requeue, resume ----
j=$(CF_FAULT=$SLOW sbatch --parsable -n 2 -t 10 -J cf-test-train "$JOBS/train.sbatch" "${TR[@]}" \
  -run_dir "$T/work/run") || fail "sbatch train.sbatch"
out=calmflow-train-$j.out
wait_for 60 "20 logged steps of job $j" lines run/log.jsonl 20
scancel --signal=USR1 --batch "$j" || fail "scancel --signal=USR1 --batch $j"
echo "job $j: USR1 sent at $(elapsed) s"
st=$(wait_job "$j" 120 "$out")
echo "job $j: $st at $(elapsed) s"
[ "$st" = "COMPLETED 0:0 1" ] || { dump_job "$j" "$out"; fail "job $j ended '$st', expected COMPLETED 0:0 after 1 restart"; }
grep -q 'calmflow train: stopped by SIGUSR1 after step' "$out" || { cat "$out"; fail "no 'stopped by SIGUSR1' line"; }
grep -q 'stopped with its state saved; requeueing job' "$out" || { cat "$out"; fail "no requeue line"; }
[ "$(grep -c '== calmflow train: job .* start, restart' "$out")" -eq 2 ] || { cat "$out"; fail "expected two start lines (log appended across the requeue)"; }
grep -q "start, restart 1 " "$out" || { cat "$out"; fail "the second run does not see SLURM_RESTART_COUNT=1"; }
stop=$(sed -n 's/.*stopped by SIGUSR1 after step \([0-9]*\);.*/\1/p' "$out")
[ -n "$stop" ] && [ "$stop" -lt 120 ] || fail "stopped at step '$stop', expected before 120"
grep -q "resuming $T/work/run from $(printf 'step-%07d.h5' "$stop")" "$out" || { cat "$out"; fail "no resume from step $stop"; }
grep -q 'ends with exit code 0' "$out" || { cat "$out"; fail "no clean end"; }
$PY - "$T/ref" run <<'PYEOF' || fail "the requeued run differs from the uninterrupted one"
import json, sys, h5py, numpy as np
ref, run = sys.argv[1:3]
L = lambda r: [(j["step"], j["loss"]) for j in map(json.loads, open(f"{r}/log.jsonl"))]
a, b = L(ref), L(run)
assert [s for s, _ in a] == list(range(1, 121)), "reference log"
assert b == a, "losses not bit-identical"
fa, fb = (h5py.File(f"{r}/ckpt/step-0000120.h5", "r") for r in (ref, run))
n = 0
for g in ("params", "adam_m", "adam_v"):
    for k in fa[g]:
        assert np.array_equal(fa[g][k][...], fb[g][k][...]), f"{g}/{k}"
        n += 1
print(f"requeued run: 120 losses and {n} tensors bit-identical to the uninterrupted run")
PYEOF
echo "ok   1. USR1 at step $stop -> exit 75 -> requeued -> resumed -> equal ($(elapsed) s)"

# ---- 2. the requeue cap, then a new job on the same run directory ----
j=$(CF_FAULT=$SLOW CF_MAX_REQUEUES=0 sbatch --parsable -n 1 -t 10 -J cf-test-cap "$JOBS/train.sbatch" \
  "${TR[@]}" -run_dir "$T/work/cap") || fail "sbatch (cap)"
out=calmflow-train-$j.out
wait_for 60 "20 logged steps of job $j" lines cap/log.jsonl 20
scancel --signal=USR1 --batch "$j" || fail "scancel (cap)"
st=$(wait_job "$j" 60 "$out")
[ "$st" = "FAILED 75:0 0" ] || { dump_job "$j" "$out"; fail "capped job ended '$st', expected FAILED 75:0, 0 restarts"; }
grep -q 'not requeueing' "$out" || { cat "$out"; fail "no cap message"; }
j=$(sbatch --parsable -n 1 -t 10 -J cf-test-cap2 "$JOBS/train.sbatch" "${TR[@]}" -run_dir "$T/work/cap") ||
  fail "sbatch (after the cap)"
st=$(wait_job "$j" 60 "calmflow-train-$j.out")
[ "$st" = "COMPLETED 0:0 0" ] && grep -q "resuming $T/work/cap from step-" "calmflow-train-$j.out" &&
  [ -f cap/ckpt/step-0000120.h5 ] || { dump_job "$j" "calmflow-train-$j.out"; fail "new job after the cap: '$st'"; }
echo "ok   2. CF_MAX_REQUEUES=0: exit 75, not requeued; a new job resumed it ($(elapsed) s)"

# ---- 3. sample (signalled, requeued, continued) and eval ----
S=(-sample_n 192 -sample_batch 1 -sample_quiet 1 -seed 3)
mpiexec -n 2 "$CF" sample -run_dir run "${S[@]}" -sample_out "$T/ref_samples.h5" >"$T/s.out" 2>&1 ||
  { cat "$T/s.out"; fail "reference sampling"; }
# each model call (1 sequence of 4 trajectories) sleeps 0.2 s: 48 calls over 2 ranks, ~4.8 s
j=$(CF_FAULT='sample_batch:*:*:delay=0.2' sbatch --parsable -n 2 -t 10 -J cf-test-sample \
  "$JOBS/sample.sbatch" -run_dir run "${S[@]}") || fail "sbatch sample.sbatch"
e=$(sbatch --parsable -t 10 -J cf-test-eval --dependency=afterok:"$j" "$JOBS/eval.sbatch" -run_dir run \
  -eval_max_exact 192) || fail "sbatch eval.sbatch"
out=calmflow-sample-$j.out
wait_for 60 "job $j to start sampling" test -e run/samples.h5
sleep 1
scancel --signal=USR1 --batch "$j" || fail "scancel (sample)"
st=$(wait_job "$j" 120 "$out")
[ "$st" = "COMPLETED 0:0 1" ] || { dump_job "$j" "$out"; fail "sample job ended '$st', expected COMPLETED after 1 restart"; }
grep -q 'stopped by SIGUSR1' "$out" && grep -q "continuing run/samples.h5" "$out" ||
  { cat "$out"; fail "the sample job was not stopped and continued"; }
st=$(wait_job "$e" 60 "calmflow-eval-$e.out")
[ "$st" = "COMPLETED 0:0 0" ] || { dump_job "$e" "calmflow-eval-$e.out"; fail "eval job ended '$st'"; }
$PY - "$T/ref_samples.h5" run <<'PYEOF' || fail "sample/eval results"
import json, sys, h5py, numpy as np
ref, run = sys.argv[1:3]
with h5py.File(ref, "r") as a, h5py.File(f"{run}/samples.h5", "r") as b:
    assert b.attrs["resumes"] >= 1, "the samples file was not resumed"
    assert np.array_equal(a["x"][...], b["x"][...]), "resumed samples differ from the uninterrupted run"
m = json.load(open(f"{run}/metrics.json"))
assert m["n_a"] == 192 and m["w2"] > 0 and "w2_floor" in m, m
print(f"resumed samples equal the uninterrupted run's; eval w2 {m['w2']:.3f}")
PYEOF
echo "ok   3. sample: USR1 -> requeued -> continued -> equal; eval after it ($(elapsed) s)"
echo "test_slurm_train: ok ($(elapsed) s)"
