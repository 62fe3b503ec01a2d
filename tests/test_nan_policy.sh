#!/usr/bin/env bash
# test_nan_policy.sh: the numerical guard of `calmflow train` (-train_nan_policy,
# -train_nan_max_skips) driven by the value fault sites nan_grad / nan_loss (fault.h), at 1 rank,
# dp2, tp2 and pp2, and for the CFM baseline at dp2. The fault hits ONE rank, so every other
# rank only learns of it through the collective decision. Poisoned: the gradient (nan_grad) at
# 1 rank, dp2, tp2 and pp2, the loss (nan_loss) at 1 rank and in the CFM run.
#  - skip, the last step poisoned: the run finishes, one warning line names the step, log.jsonl
#    and summary.json record it, and the final parameters and AdamW moments are bit-identical
#    to a clean run one step shorter (the dropped update left no trace; -train_decay constant
#    and no warm-up keep the learning rate independent of -train_steps);
#  - skip, a middle step poisoned: finishes with a checkpoint that `calmflow ckpt verify` passes;
#  - stop: exit code 4, one error line, ckpt/LATEST still names the last good checkpoint and
#    nothing newer exists; the same command without the fault resumes and ends bit-identical
#    to an uninterrupted run;
#  - more than -train_nan_max_skips consecutive skips end the run like stop.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fails=0
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
TR=(train -train_batch 32 -net_hidden 16 -net_layers 2 -train_quiet 1 -train_log_every 1
    -train_warmup 0 -train_decay constant -train_lr 1e-3 -seed 3)

# run NP OUTPREFIX args...: calmflow under mpiexec (NP ranks), stdout/stderr to OUTPREFIX.{out,err}
run() {
  local np=$1 o=$2; shift 2
  mpiexec --quiet -n "$np" "$CF" "$@" >"$o.out" 2>"$o.err"
}

# same_state A B: params, adam_m and adam_v of checkpoints A and B are bit-identical
same_state() {
  $PY - "$1" "$2" <<'PYEOF'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
n = 0
for g in ("params", "adam_m", "adam_v"):
    assert set(a[g]) == set(b[g]), g
    for k in a[g]:
        x, y = a[g][k][...], b[g][k][...]
        assert np.isfinite(x).all(), f"{g}/{k} is not finite"
        assert np.array_equal(x, y), f"{g}/{k} differs: max |diff| {np.abs(x - y).max()}"
        n += 1
print(f"{n} tensors bit-identical")
PYEOF
}

# skip_last NAME NP FAULT args...: the last of 6 steps poisoned under skip equals 5 clean steps
skip_last() {
  local name=$1 np=$2 fault=$3; shift 3
  local d="$T/$name"
  run "$np" "$d-ref" "${TR[@]}" "$@" -train_steps 5 -run_dir "$d-ref" || { cat "$d-ref.err"; bad "$name: clean run"; return; }
  CF_FAULT=$fault run "$np" "$d" "${TR[@]}" "$@" -train_steps 6 -run_dir "$d" -train_nan_policy skip ||
    { cat "$d.err"; bad "$name: skip run failed"; return; }
  local w
  w=$(grep -c "^calmflow: warning: step 6: the .* is not finite (NaN or Inf); update skipped" "$d.err")
  [ "$w" -eq 1 ] && [ "$(grep -c '^calmflow' "$d.err")" -eq 1 ] ||
    { cat "$d.err"; bad "$name: expected exactly one warning line for step 6"; return; }
  $PY - "$d" <<'PYEOF' || { bad "$name: log.jsonl / summary.json"; return; }
import json, sys
d = sys.argv[1]
log = [json.loads(l) for l in open(f"{d}/log.jsonl")]
assert [j["step"] for j in log] == [1, 2, 3, 4, 5, 6], log
assert "skipped" in log[5] and all("skipped" not in j for j in log[:5]), log
s = json.load(open(f"{d}/summary.json"))
assert s["nan_skips"] == 1 and s["nan_skipped_steps"] == [6], s
PYEOF
  local msg
  msg=$(same_state "$d-ref/ckpt/step-0000005.h5" "$d/ckpt/step-0000006.h5") ||
    { bad "$name: the skipped step changed the state"; return; }
  echo "ok   $name: $(grep warning "$d.err" | cut -c1-80)...; $msg with 5 clean steps"
}

# stop_resume NAME NP FAULT args...: stop at step 5 of 8 (checkpoints every 2), then resume
stop_resume() {
  local name=$1 np=$2 fault=$3; shift 3
  local d="$T/$name" A=(-train_steps 8 -train_ckpt_every 2)
  run "$np" "$d-ref" "${TR[@]}" "$@" "${A[@]}" -run_dir "$d-ref" || { cat "$d-ref.err"; bad "$name: clean run"; return; }
  CF_FAULT=$fault run "$np" "$d" "${TR[@]}" "$@" "${A[@]}" -run_dir "$d"
  local rc=$?
  [ $rc -eq 4 ] || { cat "$d.err"; bad "$name: stop exited $rc, expected 4"; return; }
  [ "$(grep -c '^calmflow' "$d.err")" -eq 1 ] &&
    grep -q "^calmflow: error: step 5: the .* is not finite (NaN or Inf); -train_nan_policy stop" "$d.err" ||
    { cat "$d.err"; bad "$name: expected one error line naming step 5"; return; }
  [ "$(cat "$d/ckpt/LATEST")" = "step-0000004.h5" ] || { bad "$name: LATEST is $(cat "$d/ckpt/LATEST")"; return; }
  local newer
  newer=$(ls "$d/ckpt" | grep -v -e '^LATEST$' -e '^step-000000[0-4]\.h5$')
  [ -z "$newer" ] || { bad "$name: files newer than the last good checkpoint: $newer"; return; }
  "$CF" ckpt verify "$d/ckpt/step-0000004.h5" >/dev/null 2>&1 || { bad "$name: last good checkpoint does not verify"; return; }
  run "$np" "$d-resume" "${TR[@]}" "$@" "${A[@]}" -run_dir "$d" || { cat "$d-resume.err"; bad "$name: resume failed"; return; }
  local msg
  msg=$(same_state "$d-ref/ckpt/step-0000008.h5" "$d/ckpt/step-0000008.h5") ||
    { bad "$name: the resumed run differs from an uninterrupted one"; return; }
  echo "ok   $name: exit 4, LATEST step-0000004.h5, resumed: $msg with an uninterrupted run"
}

# ---- 1 rank ----
skip_last np1-skip-grad 1 nan_grad:0:6:nan
stop_resume np1-stop 1 nan_grad:0:5:inf

# a middle step under skip: the run goes on and ends with a checkpoint that verifies
d="$T/np1-mid"
if CF_FAULT=nan_loss:0:3:nan run 1 "$d" "${TR[@]}" -train_steps 6 -run_dir "$d" -train_nan_policy skip &&
   [ "$(grep -c '^calmflow: warning: step 3: the loss is not finite' "$d.err")" -eq 1 ] &&
   "$CF" ckpt verify "$d/ckpt/step-0000006.h5" >/dev/null 2>&1 &&
   $PY -c "import json,sys; s=json.load(open('$d/summary.json')); sys.exit(s['nan_skipped_steps'] != [3])"; then
  echo "ok   np1-mid: step 3 skipped, the final checkpoint verifies"
else
  cat "$d.err"; bad "np1-mid"
fi

# every step poisoned with -train_nan_max_skips 2: steps 1 and 2 skipped, step 3 stops
d="$T/np1-max"
CF_FAULT='nan_grad:0:*:nan' run 1 "$d" "${TR[@]}" -train_steps 6 -run_dir "$d" -train_nan_policy skip \
  -train_nan_max_skips 2
rc=$?
if [ $rc -eq 4 ] && [ "$(grep -c '^calmflow: warning: step [12]: ' "$d.err")" -eq 2 ] &&
   [ "$(grep -c '^calmflow: error: ' "$d.err")" -eq 1 ] &&
   grep -q "^calmflow: error: step 3: the gradient is not finite (NaN or Inf) in 3 consecutive steps, more than -train_nan_max_skips 2" "$d.err" &&
   [ ! -e "$d/ckpt/LATEST" ] && [ -z "$(ls "$d/ckpt")" ]; then
  echo "ok   np1-max: two skips, then exit 4 at step 3 with no checkpoint"
else
  echo "exit $rc"; cat "$d.err"; ls "$d/ckpt"; bad "np1-max"
fi

# ---- 2 ranks: the fault on rank 1 only ----
skip_last dp2-skip 2 nan_grad:1:6:nan
skip_last tp2-skip 2 nan_grad:1:6:nan -par_tp 2
stop_resume dp2-stop 2 nan_grad:1:5:nan
stop_resume pp2-stop 2 nan_grad:1:5:inf -par_pp 2 -train_microbatches 2
# the CFM baseline shares the loop: its learner no longer fails on a non-finite loss itself
skip_last cfm-dp2-skip 2 nan_loss:1:6:nan -model cfm -train_batch 64

if [ $fails -ne 0 ]; then echo "test_nan_policy: $fails failures"; exit 1; fi
echo "test_nan_policy: ok"
