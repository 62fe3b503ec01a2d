#!/usr/bin/env bash
# test_resume.sh: a run killed mid-training resumes from ckpt/LATEST and ends bit-identical to
# an uninterrupted run at the same layout (loss at every step, parameters and AdamW moments),
# and equal to round-off at another rank count; a damaged newest checkpoint is skipped with a
# warning; resuming with different options or with a layout that cannot split the model is
# refused and leaves the run untouched; checkpoints carry the layout and RNG attributes and
# load without them; a finished run has nothing to do.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fail() { echo "FAIL $*"; exit 1; }
run() { "$@" >"$T/log" 2>&1 || { cat "$T/log"; fail "command failed: $*"; }; }
TR=(train -train_steps 20 -train_batch 48 -flow_trajectories 4 -flow_time_points 6
    -flow_spatial_tokens 2 -net_hidden 16 -train_log_every 1 -train_ckpt_every 5
    -train_ckpt_keep 2 -train_quiet 1 -train_warmup 5 -seed 5)

run mpiexec -n 2 "$CF" "${TR[@]}" -run_dir "$T/a"
# killed (every rank exits) in the 13th step, after the checkpoint of step 10
CF_FAULT='grad_allreduce:*:13:exit' mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/b" >/dev/null 2>&1 &&
  fail "the injected crash did not stop the run"
[ "$(cat "$T/b/ckpt/LATEST")" = "step-0000010.h5" ] || fail "LATEST is $(cat "$T/b/ckpt/LATEST")"
run mpiexec -n 2 "$CF" "${TR[@]}" -run_dir "$T/b"
# the same crash, resumed on 1 rank, with ZeRO-1 on the way
CF_FAULT='grad_allreduce:*:13:exit' mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/c" >/dev/null 2>&1
run mpiexec -n 1 "$CF" "${TR[@]}" -run_dir "$T/c" -par_zero 1
# the newest checkpoint is damaged (a value changed behind its checksum): resume skips it with
# a warning and continues from the one before, ending the same as the uninterrupted run
CF_FAULT='grad_allreduce:*:13:exit' mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/d" >/dev/null 2>&1
$PY -c "
import h5py
with h5py.File('$T/d/ckpt/step-0000010.h5', 'r+') as f: f['params/enc.fc1.weight'][0, 0] += 1.0
"
mpiexec -n 2 "$CF" "${TR[@]}" -run_dir "$T/d" >"$T/out" 2>"$T/err" || { cat "$T/err"; fail "resume past a damaged checkpoint"; }
grep -q "warning: skipping checkpoint '.*step-0000010.h5'.*enc.fc1.weight" "$T/err" ||
  { cat "$T/err"; fail "no warning naming the damaged checkpoint and tensor"; }
$PY - "$T" <<'PYEOF' || fail "resumed runs differ"
import json, sys, h5py, numpy as np
t = sys.argv[1]
def losses(r): return [(j["step"], j["loss"]) for j in map(json.loads, open(f"{t}/{r}/log.jsonl"))]
a, b, c, d = losses("a"), losses("b"), losses("c"), losses("d")
assert d == a, "resumed from the older checkpoint: losses not bit-identical"
assert [s for s, _ in a] == list(range(1, 21)), a
assert b == a, "same layout: the loss sequence is not bit-identical"
worst = max(abs(x[1] - y[1]) / abs(y[1]) for x, y in zip(c, a))
assert [s for s, _ in c] == list(range(1, 21)) and worst <= 1e-5, worst
fa, fb, fc = (h5py.File(f"{t}/{r}/ckpt/step-0000020.h5", "r") for r in "abc")
n = 0
for g in ("params", "adam_m", "adam_v"):
    for k in fa[g]:
        x = fa[g][k][...]
        assert np.array_equal(x, fb[g][k][...]), f"{g}/{k} differs after resume (same layout)"
        assert np.allclose(x, fc[g][k][...], rtol=1e-3, atol=1e-6), f"{g}/{k} (other layout)"
        n += 1
print(f"resume: 20 losses and {n} tensors bit-identical at 2 ranks; 1-rank resume within {worst:.1e}")
PYEOF
# different options on resume are refused, naming the option; nothing is changed
mpiexec --quiet -n 1 "$CF" "${TR[@]}" -run_dir "$T/b" -train_steps 30 -flow_sigma 3 >"$T/out" 2>"$T/err" &&
  fail "resume with a different -flow_sigma was accepted"
grep -q "^calmflow: error: option -flow_sigma is '3' but checkpoint" "$T/err" || { cat "$T/err"; fail "message"; }
# the layout and RNG attributes: the writer's process grid and the step counter to continue from
info=$("$CF" ckpt info "$T/a/ckpt/step-0000020.h5") || fail "ckpt info"
echo "$info" | grep -q "^  layout dp2 x pp1 x cp1 x tp1 (2 ranks)$" || { echo "$info"; fail "ckpt info: layout"; }
echo "$info" | grep -q "^  rng philox4x32-10 keyed by (seed, domain, step, index), next step counter 20$" ||
  { echo "$info"; fail "ckpt info: rng"; }
# a run written at 1 rank, resumed with layouts that cannot split its model (2 layers over 3
# pipeline stages, 2 heads over 3 tensor ranks): one error line, and nothing in it changes
run "$CF" "${TR[@]}" -train_steps 10 -run_dir "$T/f"
$PY -c "
import h5py
with h5py.File('$T/f/ckpt/step-0000010.h5', 'r') as f:
    a = f.attrs
    assert a['layout'] == b'dp1 x pp1 x cp1 x tp1 (1 rank)' and a['rng_step'] == 10, dict(a)
    assert a['rng'].startswith(b'philox4x32-10') and a['format_version'] == 2, dict(a)
" || fail "root attributes of a 1-rank checkpoint"
sums() { (cd "$T/f" && find . -type f | sort | xargs md5sum); }
before=$(sums)
for bad in "-par_pp 3:-net_layers 2 is not divisible by -par_pp 3" "-par_tp 3:-net_heads 2 is not divisible by -par_tp 3"; do
  mpiexec --quiet -n 3 "$CF" "${TR[@]}" -run_dir "$T/f" ${bad%%:*} >"$T/out" 2>"$T/err" &&
    fail "resume with ${bad%%:*} at 3 ranks was accepted"
  [ "$(grep -c '^calmflow:' "$T/err")" -eq 1 ] && grep -q "^calmflow: error: ${bad#*:}" "$T/err" ||
    { cat "$T/out" "$T/err"; fail "resume with ${bad%%:*}: expected one error line"; }
  [ "$(sums)" = "$before" ] || { diff <(echo "$before") <(sums); fail "resume with ${bad%%:*} changed the run directory"; }
done
# a checkpoint without the layout and RNG attributes (as written before they were added) still
# loads: ckpt info says they are not recorded, and the run resumes from it at 2 ranks
$PY -c "
import h5py
with h5py.File('$T/f/ckpt/step-0000010.h5', 'r+') as f:
    for k in ('layout', 'rng', 'rng_step'): del f.attrs[k]
"
info=$("$CF" ckpt info "$T/f/ckpt/step-0000010.h5") || fail "ckpt info of a file without layout"
echo "$info" | grep -q "^  layout (not recorded)$" && echo "$info" | grep -q "^  rng (not recorded)$" ||
  { echo "$info"; fail "ckpt info of a file without the new attributes"; }
run mpiexec -n 2 "$CF" "${TR[@]}" -run_dir "$T/f"
$PY -c "
import h5py
with h5py.File('$T/f/ckpt/step-0000020.h5', 'r') as f:
    assert f.attrs['layout'] == b'dp2 x pp1 x cp1 x tp1 (2 ranks)' and f.attrs['rng_step'] == 20
" || fail "attributes after resuming from a file without them"
# a finished run: nothing to do, exit 0
run mpiexec -n 1 "$CF" "${TR[@]}" -run_dir "$T/a"
echo "test_resume: ok"
