#!/usr/bin/env bash
# test_preempt.sh: SIGUSR1 (what Slurm's --signal sends before the time limit; mpiexec forwards
# it to every rank) stops training at the next step boundary with a checkpoint and exit code 75
# ("requeue me"); the same command then resumes, and the run ends bit-identical to an
# uninterrupted one (losses, parameters, AdamW moments). SIGTERM does the same on one rank.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fail() { echo "FAIL $*"; exit 1; }
run() { "$@" >"$T/log" 2>&1 || { cat "$T/log"; fail "command failed: $*"; }; }
TR=(train -train_steps 400 -train_batch 32 -flow_trajectories 4 -flow_time_points 6
    -net_hidden 16 -net_layers 1 -train_log_every 1 -train_quiet 1 -seed 11)

run mpiexec -n 2 "$CF" "${TR[@]}" -run_dir "$T/a"

# preempt: wait for some steps, signal mpiexec, expect exit 75 and a checkpoint at that step
preempt() { # DIR NP SIGNAL TARGET(mpiexec|rank)
  local dir=$1 np=$2 sig=$3
  mpiexec -n "$np" "$CF" "${TR[@]}" -run_dir "$dir" >"$T/out" 2>"$T/err" &
  local pid=$!
  for _ in $(seq 1 600); do
    [ -f "$dir/log.jsonl" ] && [ "$(grep -c '' "$dir/log.jsonl")" -ge 20 ] && break
    sleep 0.05
  done
  if [ "$4" = rank ]; then # one rank only (the ranks are mpiexec's children)
    kill "-$sig" "$(pgrep -P $pid | head -n 1)"
  else
    kill "-$sig" $pid
  fi
  wait $pid
  local rc=$?
  [ $rc -eq 75 ] || { cat "$T/out" "$T/err"; fail "$sig: exit $rc, expected 75"; }
  grep -q "stopped by SIG$sig after step" "$T/out" || { cat "$T/out"; fail "$sig: no stop line"; }
  local last; last=$(tail -n 1 "$dir/log.jsonl" | sed 's/{"step": \([0-9]*\),.*/\1/')
  [ "$(cat "$dir/ckpt/LATEST")" = "$(printf 'step-%07d.h5' "$last")" ] ||
    fail "$sig: LATEST $(cat "$dir/ckpt/LATEST") is not the last logged step $last"
  [ "$last" -lt 400 ] || fail "$sig: the run finished before the signal arrived"
  echo "ok   $sig: stopped after step $last with exit 75"
}
preempt "$T/b" 2 USR1 mpiexec
run mpiexec -n 2 "$CF" "${TR[@]}" -run_dir "$T/b"
preempt "$T/c" 1 TERM rank
run mpiexec -n 1 "$CF" "${TR[@]}" -run_dir "$T/c"
$PY - "$T" <<'PYEOF' || fail "the resumed run differs"
import json, sys, h5py, numpy as np
t = sys.argv[1]
L = lambda r: [(j["step"], j["loss"]) for j in map(json.loads, open(f"{t}/{r}/log.jsonl"))]
a, b, c = L("a"), L("b"), L("c")
assert [s for s, _ in a] == list(range(1, 401))
assert b == a, "2 ranks, USR1 + resume: losses not bit-identical"
worst = max(abs(x[1] - y[1]) / abs(y[1]) for x, y in zip(c, a))
assert [s for s, _ in c] == list(range(1, 401)) and worst <= 1e-5, worst
fa, fb = (h5py.File(f"{t}/{r}/ckpt/step-0000400.h5", "r") for r in "ab")
for g in ("params", "adam_m", "adam_v"):
    for k in fa[g]:
        assert np.array_equal(fa[g][k][...], fb[g][k][...]), f"{g}/{k}"
print(f"preempted and resumed runs: bit-identical at 2 ranks; 1 rank within {worst:.1e}")
PYEOF
echo "test_preempt: ok"
