#!/usr/bin/env bash
# test_cfm_cli.sh: the CFM baseline through the binary (-model cfm).
#  1. training: OT-CFM at 1 and 2 ranks gives the same loss every step (the exact OT coupling
#     is over the global batch, so both see the same pairs) to 1e-5 and the same parameters to
#     1e-4; a run stopped at step 3 and resumed to 6 equals the uninterrupted one bit for bit;
#     the checkpoint says model_kind cfm; I-CFM ends with a higher loss than OT-CFM; no step
#     after the first allocates (the coupling solves in its own workspace);
#  2. sampling: /x is bit-identical at 1, 2 and 3 ranks (chunks of -sample_batch), the
#     figures record the function evaluations, -cfm_ts_* options reach PETSc TS (fixed-step
#     Euler: the evaluations it must take), -sample_traj gives every time point and its last
#     one is /x; the samples land near the target (W2 well below the source's);
#  3. bad input: -par_tp 2, -cfm_coupling bogus, a temperature for the ODE: one line each.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fail() { echo "FAIL $*"; exit 1; }
run() { "$@" >"$T/log" 2>&1 || { cat "$T/log"; fail "command failed: $*"; }; }

TR=(train -model cfm -data_source 8gaussians -data_name moons -net_hidden 32 -net_layers 2
    -train_batch 128 -train_warmup 10 -train_log_every 1 -train_quiet 1 -seed 4)
run mpiexec -n 1 "$CF" "${TR[@]}" -train_steps 300 -run_dir "$T/a1"
run mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 300 -run_dir "$T/a2"
run mpiexec -n 1 "$CF" "${TR[@]}" -train_steps 300 -cfm_coupling independent -run_dir "$T/ind"
run mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 6 -run_dir "$T/full"
CF_FAULT= mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 6 -train_ckpt_every 3 -run_dir "$T/cut" \
  >"$T/log" 2>&1 || { cat "$T/log"; fail "train to 6 with checkpoints"; }
# resume from step 3: drop the final checkpoint and the log lines after step 3
$PY - "$T/cut" <<'PYEOF' || fail "could not cut the run back to step 3"
import os, sys
d = sys.argv[1]
os.remove(f"{d}/ckpt/step-0000006.h5")
open(f"{d}/ckpt/LATEST", "w").write("step-0000003.h5\n")
lines = open(f"{d}/log.jsonl").read().splitlines()[:3]
open(f"{d}/log.jsonl", "w").write("\n".join(lines) + "\n")
PYEOF
run mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 6 -train_ckpt_every 3 -run_dir "$T/cut"
$PY - "$T" <<'PYEOF' || fail "CFM training"
import sys, json, h5py, numpy as np
t = sys.argv[1]
def losses(r):
    return np.array([json.loads(l)["loss"] for l in open(f"{t}/{r}/log.jsonl")])
a1, a2 = losses("a1"), losses("a2")
d = np.abs(a1 - a2).max() / np.abs(a1).max()
print(f"OT-CFM 1 vs 2 ranks: loss per step within {d:.1e}; loss {a1[:20].mean():.3f} -> {a1[-50:].mean():.3f}")
assert len(a1) == 300 and d < 1e-5, d
assert a1[-50:].mean() < 0.5 * a1[:20].mean(), "OT-CFM did not learn"
# the exact OT coupling solves in its own workspace: no allocation inside a step
for r in ("a1", "a2", "ind"):
    allocs = [json.loads(l)["step_allocs"] for l in open(f"{t}/{r}/log.jsonl")]
    assert max(allocs) == 0, (r, max(allocs))
def params(r, step):
    with h5py.File(f"{t}/{r}/ckpt/step-{step:07d}.h5", "r") as f:
        assert f.attrs["model_kind"] in (b"cfm", "cfm"), f.attrs["model_kind"]
        return {k: f["params"][k][...] for k in f["params"]}
p1, p2 = params("a1", 300), params("a2", 300)
dp = max(np.abs(p1[k] - p2[k]).max() / max(np.abs(p1[k]).max(), 1e-6) for k in p1)
print(f"parameters after 300 steps, 1 vs 2 ranks: within {dp:.1e}")
assert dp < 1e-4, dp
pf, pc = params("full", 6), params("cut", 6)
assert all(np.array_equal(pf[k], pc[k]) for k in pf), "the resumed run differs"
assert np.array_equal(losses("full"), losses("cut")), "the resumed losses differ"
print("stopped at 3 and resumed to 6: parameters and losses bit-identical")
ind = losses("ind")
print(f"I-CFM final loss {ind[-50:].mean():.3f} vs OT-CFM {a1[-50:].mean():.3f}")
assert ind[-50:].mean() > a1[-50:].mean(), "OT coupling did not lower the loss"
PYEOF

# 2. sampling
S=(sample -run_dir "$T/a1" -sample_n 1000 -sample_batch 64 -sample_quiet 1)
for n in 1 2 3; do run mpiexec -n $n "$CF" "${S[@]}" -sample_out "$T/s$n.h5"; done
run mpiexec -n 2 "$CF" "${S[@]}" -sample_out "$T/e.h5" -cfm_ts_type euler -cfm_ts_adapt_type none \
  -cfm_ts_dt 0.05
run mpiexec -n 2 "$CF" "${S[@]}" -sample_n 200 -sample_traj 1 -sample_out "$T/tr.h5"
run mpiexec -n 1 "$CF" data -data_name moons -data_n 1000 -seed 77 -data_out "$T/moons.h5"
run mpiexec -n 1 "$CF" data -data_name 8gaussians -data_n 1000 -seed 78 -data_out "$T/src.h5"
run mpiexec -n 1 "$CF" eval -eval_a "$T/s1.h5" -eval_b "$T/moons.h5" -eval_out "$T/m.json"
run mpiexec -n 1 "$CF" eval -eval_a "$T/src.h5" -eval_b "$T/moons.h5" -eval_out "$T/m0.json"
$PY - "$T" <<'PYEOF' || fail "CFM sampling"
import sys, json, h5py, numpy as np
t = sys.argv[1]
x = [h5py.File(f"{t}/s{n}.h5", "r")["x"][...] for n in (1, 2, 3)]
assert x[0].shape == (1000, 2) and np.isfinite(x[0]).all()
assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2]), "samples depend on the ranks"
print("/x identical at 1, 2 and 3 ranks")
s = json.load(open(f"{t}/s2.h5.json"))
assert s["model"] == "cfm" and s["ode_solves"] == 16 and s["nfe_per_solve"] >= 7, s
print(f"dopri5: {s['nfe_per_solve']:.1f} evaluations per solve, {s['ode_steps']} steps in all")
e = json.load(open(f"{t}/e.h5.json"))
assert e["nfe_per_solve"] == 20 and e["ode_steps"] == 16 * 20, e  # Euler, dt 0.05: 20 steps
ex = h5py.File(f"{t}/e.h5", "r")["x"][...]
d = np.abs(ex - x[0]).max()
print(f"Euler dt 0.05 (-cfm_ts_*): 20 evaluations per solve; differs from dopri5 by {d:.2e}")
assert 1e-6 < d < 1.0, d
with h5py.File(f"{t}/tr.h5", "r") as f:
    tr, tx = f["traj"][...], f["x"][...]
assert tr.shape == (200, 16, 2) and np.array_equal(tr[:, -1], tx)
assert np.abs(tx - x[0][:200]).max() < 0.05, "traj stops moved the samples too far"
w, w0 = json.load(open(f"{t}/m.json"))["w2"], json.load(open(f"{t}/m0.json"))["w2"]
print(f"W2 to moons: samples {w:.3f}, source {w0:.3f}")
assert w < 0.5 * w0, (w, w0)
PYEOF

# 3. bad input: one line, non-zero exit
expect() { # name, text the line must hold, command...
  local name=$1 want=$2
  shift 2
  if mpiexec --quiet -n 1 "$CF" "$@" >"$T/out" 2>"$T/err"; then fail "$name: accepted"; fi
  [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "$want" "$T/err" ||
    { cat "$T/err"; fail "$name: expected one line with '$want'"; }
}
expect par "-model cfm is split by data parallelism only" "${TR[@]}" -train_steps 2 -par_tp 2 \
  -run_dir "$T/bad1"
expect coupling "option -cfm_coupling" "${TR[@]}" -train_steps 2 -cfm_coupling bogus -run_dir "$T/bad2"
[ -e "$T/bad1" ] || [ -e "$T/bad2" ] && fail "bad options created a run directory"
expect temperature "no temperature" sample -run_dir "$T/a1" -sample_temperature 0.5 \
  -sample_out "$T/bad.h5"
echo "test_cfm_cli: ok"
