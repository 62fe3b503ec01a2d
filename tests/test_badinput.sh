#!/usr/bin/env bash
# test_badinput.sh: bad input gets one clear error line naming the file or option, a non-zero
# exit, no crash and no half-written output. Runs the real binary ($CF_BINARY) on 1 rank
# (and the data reader on 2 ranks, where every rank must agree on the failure).
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
PY=/usr/bin/python3

# expect NAME "substring" [np] -- command args: must fail with exactly one error line
expect() {
  local name=$1 want=$2 np=$3
  shift 3
  local out err rc
  mpiexec --quiet -n "$np" "$CF" "$@" >"$T/out" 2>"$T/err"
  rc=$?
  local nerr
  nerr=$(grep -c '' "$T/err")
  if [ $rc -eq 0 ]; then
    echo "FAIL $name: exit 0"; fails=$((fails + 1)); return
  fi
  if [ $rc -ge 128 ]; then
    echo "FAIL $name: crashed (exit $rc)"; cat "$T/err"; fails=$((fails + 1)); return
  fi
  if ! grep -q "^calmflow: error: .*$want" "$T/err"; then
    echo "FAIL $name: stderr lacks '$want':"; cat "$T/err"; fails=$((fails + 1)); return
  fi
  if [ "$nerr" -ne 1 ]; then
    echo "FAIL $name: $nerr lines on stderr, expected 1:"; cat "$T/err"; fails=$((fails + 1)); return
  fi
  echo "ok   $name: $(cat "$T/err")"
}

$PY - "$T" <<'PYEOF'
import sys, numpy as np, h5py
t = sys.argv[1]
rng = np.random.default_rng(0)
with h5py.File(f"{t}/good.h5", "w") as f: f["x"] = rng.normal(size=(64, 2)).astype(np.float32)
with h5py.File(f"{t}/cols3.h5", "w") as f: f["x"] = rng.normal(size=(64, 3)).astype(np.float32)
with h5py.File(f"{t}/rank1.h5", "w") as f: f["x"] = rng.normal(size=(64,)).astype(np.float32)
with h5py.File(f"{t}/ints.h5", "w") as f: f["x"] = np.ones((64, 2), dtype=np.int32)
with h5py.File(f"{t}/nox.h5", "w") as f: f["y"] = rng.normal(size=(64, 2)).astype(np.float32)
a = rng.normal(size=(64, 2)); a[17, 1] = np.nan
with h5py.File(f"{t}/nan.h5", "w") as f: f["x"] = a
a = rng.normal(size=(64, 2)).astype(np.float32); a[3, 0] = np.inf
with h5py.File(f"{t}/inf.h5", "w") as f: f["x"] = a
open(f"{t}/garbage.h5", "wb").write(bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
raw = open(f"{t}/good.h5", "rb").read()
open(f"{t}/trunc.h5", "wb").write(raw[: len(raw) // 2])
open(f"{t}/bad.yaml", "w").write("train: {lr: [1e-3\nflow: : :\n")
open(f"{t}/badval.yaml", "w").write("train:\n  lr: fast\n")
PYEOF

R="$T/run"
TR=(train -train_steps 2 -train_batch 16 -run_dir "$R" -train_quiet 1)
expect missing-data "cannot open '$T/none.h5'" 1 "${TR[@]}" -data_train "$T/none.h5"
expect garbage-data "not an HDF5 file" 1 "${TR[@]}" -data_train "$T/garbage.h5"
expect truncated-data "$T/trunc.h5" 1 "${TR[@]}" -data_train "$T/trunc.h5"
expect wrong-columns "3 columns, expected 2" 1 "${TR[@]}" -data_train "$T/cols3.h5"
expect wrong-rank "$T/rank1.h5" 1 "${TR[@]}" -data_train "$T/rank1.h5"
expect int-type "$T/ints.h5" 1 "${TR[@]}" -data_train "$T/ints.h5"
expect no-dataset "has no dataset '/x'" 1 "${TR[@]}" -data_train "$T/nox.h5"
expect nan-data "row 17 column 1 is NaN" 2 "${TR[@]}" -data_train "$T/nan.h5"
expect inf-data "row 3 column 0 is" 2 "${TR[@]}" -data_source "$T/inf.h5"
[ -e "$R" ] && { echo "FAIL bad data created the run directory"; fails=$((fails + 1)); }
expect invalid-yaml "'$T/bad.yaml'" 1 train -options_file_yaml "$T/bad.yaml" -run_dir "$R"
expect missing-yaml "no such file" 1 train -options_file_yaml "$T/none.yaml" -run_dir "$R"
expect yaml-value "option -train_lr" 1 train -options_file_yaml "$T/badval.yaml" -run_dir "$R"
expect bad-number "option -train_lr" 1 "${TR[@]}" -train_lr abc
expect out-of-range "option -train_steps" 1 "${TR[@]}" -train_steps 0
expect unknown-option "unknown option -train_stpes" 1 "${TR[@]}" -train_stpes 5
expect batch-not-multiple "option -train_batch" 1 "${TR[@]}" -train_batch 12
expect bad-head "option -flow_head" 1 "${TR[@]}" -flow_head nope
expect bad-path "option -flow_path" 1 "${TR[@]}" -flow_path wiggly
expect heads-divide "-net_heads" 1 "${TR[@]}" -net_heads 3
expect bad-dist "option -data_name" 1 "${TR[@]}" -data_name spiral9
expect dim-mismatch "option -data_source" 1 "${TR[@]}" -data_dim 3 -data_name gaussian -data_source moons
expect par-world "not divisible by -par_tp x -par_pp x -par_cp" 1 "${TR[@]}" -par_tp 2
expect par-layers "-net_layers 3 is not divisible by -par_pp 2" 2 "${TR[@]}" -par_pp 2 -net_layers 3 -train_microbatches 2
expect par-heads "-net_heads 2 is not divisible by -par_tp 4" 4 "${TR[@]}" -par_tp 4
expect par-micro "-train_microbatches 1 is less than -par_pp 2" 2 "${TR[@]}" -par_pp 2
expect par-cp-short "-par_cp" 2 "${TR[@]}" -par_cp 2 -flow_time_points 2 -flow_trajectories 1 -train_batch 4
expect par-ffn "-net_ffn 31 is not divisible by -par_tp 2" 2 "${TR[@]}" -par_tp 2 -net_ffn 31
expect par-nohist "-flow_history 0 with -par_cp 2" 2 "${TR[@]}" -par_cp 2 -flow_history 0
expect bad-history "option -flow_history" 1 "${TR[@]}" -flow_history 2
expect selffeed-steps "option -train_selffeed_steps: expected 0..14" 1 "${TR[@]}" -train_selffeed_steps 15
expect selffeed-prob "option -train_selffeed_prob" 1 "${TR[@]}" -train_selffeed_prob 1.5
expect selffeed-cands "option -train_selffeed_cands" 1 "${TR[@]}" -train_selffeed_cands 0
expect selffeed-path "needs -flow_path bridge or straight" 1 "${TR[@]}" -train_selffeed_steps 2 -flow_path noisy
expect selffeed-pp "expected -par_pp 1, got 2" 2 "${TR[@]}" -train_selffeed_steps 2 -par_pp 2 -train_microbatches 2
expect selffeed-cfm "-model cfm has no history to feed" 1 "${TR[@]}" -train_selffeed_steps 2 -model cfm
[ -e "$R" ] && { echo "FAIL bad options created the run directory"; fails=$((fails + 1)); }
expect no-ckpt "no checkpoint" 1 sample -run_dir "$T/empty" -sample_out "$T/s.h5"
expect eval-missing "option -eval_a" 1 eval -eval_b "$T/good.h5"
expect eval-dims "$T/cols3.h5" 1 eval -eval_a "$T/good.h5" -eval_b "$T/cols3.h5" -eval_out "$T/m.json"
[ -e "$T/m.json" ] && { echo "FAIL failed eval wrote its output"; fails=$((fails + 1)); }
expect unknown-command "unknown command" 1 frobnicate
expect ckpt-garbage "$T/garbage.h5" 1 ckpt verify "$T/garbage.h5"

# -help lists every option of the command with its default, and exits 0
if "$CF" train -help >"$T/help" 2>&1 && grep -q -- '-train_lr <1e-3>' "$T/help" &&
   grep -q -- '-flow_head <gauss>' "$T/help" && grep -q -- '-run_dir <runs/default>' "$T/help" &&
   ! grep -q -- '-eval_a' "$T/help"; then
  echo "ok   help: $(grep -c '^  -' "$T/help") options listed"
else
  echo "FAIL help:"; cat "$T/help"; fails=$((fails + 1))
fi

if [ $fails -ne 0 ]; then echo "test_badinput: $fails failures"; exit 1; fi
echo "test_badinput: ok"
