#!/usr/bin/env bash
# test_slurm_timelimit.sh: the real pre-timeout path, with no signal sent by hand. train.sbatch
# is submitted with a 1-minute limit and --signal=B:USR1@50 (the script's own @180 would fire
# at once); Slurm itself delivers USR1 to the batch shell some time before the limit (its
# check runs about every 30 s), the script forwards it, calmflow checkpoints and exits 75, and
# the job is requeued (then cancelled: resuming is slurm_train's business). A run that was
# stopped by the TERM at the limit instead would fail the test.
. "$CF_SOURCE_DIR/tests/slurm/common.sh"
# 3000 steps of >= 40 ms: far longer than the limit
TR=(-train_steps 3000 -train_batch 32 -flow_trajectories 4 -flow_time_points 6 -net_hidden 16
  -net_layers 1 -train_log_every 10 -train_quiet 1 -seed 11 -run_dir "$T/work/run")
j=$(CF_FAULT='grad_allreduce:*:*:delay=0.04' sbatch --parsable -n 1 -t 1 --signal=B:USR1@50 \
  -J cf-test-timelimit "$SRC/jobs/train.sbatch" "${TR[@]}") || fail "sbatch train.sbatch"
out=calmflow-train-$j.out
echo "job $j submitted with -t 1 --signal=B:USR1@50 ($(elapsed) s)"
# until the script asked for the requeue (the first run is over) or the job ended
requeued() { grep -q 'requeueing job' "$out" 2>/dev/null; }
wait_for 150 "job $j to be requeued" requeued
st=$(job_state "$j")
scancel "$j" || true
echo "job $j: requeue requested at $(elapsed) s; state then: $st"
grep -q 'got SIGUSR1; passing it to the running step' "$out" && grep -q 'calmflow train: stopped by SIGUSR1 after step' "$out" ||
  { cat "$out"; fail "the run was not stopped by Slurm's USR1"; }
grep -q 'step exited with 75' "$out" || { cat "$out"; fail "no exit code 75"; }
stop=$(sed -n 's/.*stopped by SIGUSR1 after step \([0-9]*\);.*/\1/p' "$out")
[ "$(cat run/ckpt/LATEST)" = "$(printf 'step-%07d.h5' "$stop")" ] || fail "LATEST is not the step the run stopped at ($stop)"
t_run=$(sed -n 's/^\[\([0-9: -]*\)\] == calmflow train: job .* start, restart 0.*/\1/p' "$out")
t_sig=$(sed -n 's/^\[\([0-9: -]*\)\] got SIGUSR1.*/\1/p' "$out" | head -n 1)
echo "ok   Slurm's USR1 arrived $(($(date -d "$t_sig" +%s) - $(date -d "$t_run" +%s))) s after the start" \
  "(the limit is 60 s, the lead 50 s), stopped after step $stop, exit 75, requeued ($(elapsed) s)"
echo "test_slurm_timelimit: ok ($(elapsed) s)"
