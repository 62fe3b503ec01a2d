#!/usr/bin/env bash
# test_prompt.sh: text prompts of -model calmflow through the binary (docs/prompts.md).
#  0. data: 400 2-D points in the layout `calmflow data -data_h5ad` writes (/x, /obs/<col>
#     fixed-length strings with kind / categories attributes), written here with h5py: obs
#     column media "GM" around (3, 3), "DM" around (-3, -3); hours a second column;
#  1. training with -data_prompt "a myoblast in {media} medium" and GPT-2's tokenizer
#     (tests/data/bpe): two prompt groups, the resolved -net_prompt_len / _vocab / _pad in
#     config.yaml and the checkpoint, prompt.wte.weight (50257 x H) in `ckpt info`; training
#     at 2 ranks (-par_tp 2, -par_pp 2, -par_cp 2) gives the 1-rank losses of every step, and
#     so does self-feeding (-train_selffeed_steps 1) at -par_tp 2;
#  2. sampling: -sample_prompt "a myoblast in GM medium" lands around (3, 3) and -sample_cond
#     media=DM around (-3, -3), the samples file records the prompt and its ids; the same
#     samples at -par_pp 2 (bit for bit) and -par_tp 2 / -par_cp 2 (round-off), and with
#     -sample_kvcache 0;
#  3. bad input, one line each: an unknown column, unclosed or stray braces, no tokenizer,
#     -model cfm, -flow_history 0, a prompt longer than -net_prompt_len; sampling a prompt
#     model without a prompt, with both -sample_prompt and -sample_cond, a field the template
#     lacks, a prompt longer than the model's; -sample_prompt for a model without prompts.
set -u
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
BPE="-tok_encoder $SRC/tests/data/bpe/encoder.json -tok_vocab $SRC/tests/data/bpe/vocab.bpe"
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
run() { "$@" >"$T/log" 2>&1 || { cat "$T/log"; echo "FAIL command failed: $*"; exit 1; }; }

# 0. the data
$PY - "$T/d.h5" <<'PYEOF' || { echo "FAIL could not write the data file"; exit 1; }
import sys, h5py, numpy as np
rng = np.random.default_rng(5)
n = 400
code = np.arange(n) % 2  # GM, DM alternating
centre = np.array([[3.0, 3.0], [-3.0, -3.0]])
X = (centre[code] + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)
def fixed(v):  # H5T_C_S1, UTF-8, width = the longest + 1
    w = max(len(s.encode()) for s in v) + 1
    return np.array([s.encode() for s in v], dtype=h5py.string_dtype("utf-8", length=w))
def column(f, name, vals, kind, cats=None):
    ds = f.create_dataset("obs/" + name, data=fixed(vals))
    ds.attrs.create("kind", fixed([kind])[0])
    if cats is not None:
        ds.attrs.create("categories", fixed(cats))
with h5py.File(sys.argv[1], "w") as f:
    f.create_dataset("x", data=X)
    column(f, "_index", [f"cell{i}" for i in range(n)], "string")
    column(f, "media", [("GM", "DM")[c] for c in code], "categorical", ["DM", "GM"])
    column(f, "hours", [str(24 * (i % 3)) for i in range(n)], "categorical", ["0", "24", "48"])
PYEOF

NET="-model calmflow -data_train $T/d.h5 -data_dim 2 -net_hidden 16 -net_heads 2 -net_layers 2
     -net_dropout 0 -flow_time_points 4 -flow_trajectories 2 -train_batch 64 -train_lr 3e-3
     -train_warmup 20 -train_microbatches 2"
TMPL="a myoblast in {media} medium"

# 1. training
run "$CF" train $NET $BPE -data_prompt "$TMPL" -train_steps 300 -run_dir "$T/run"
grep -q "text prompts: 2 distinct over 400 rows" "$T/log" || fail "training did not find 2 prompts"
for kv in 'net_prompt_len: "7"' 'net_prompt_vocab: "50257"' 'net_prompt_pad: "50256"' \
  'data_prompt: "a myoblast in {media} medium"'; do
  grep -qF "$kv" "$T/run/config.yaml" || fail "config.yaml lacks $kv"
done
run "$CF" ckpt info "$T/run/ckpt/step-0000300.h5"
grep -Eq "prompt.wte.weight +50257 x 16" "$T/log" || { cat "$T/log"; fail "ckpt info: no prompt.wte"; }
# layouts: the losses of 4 steps at 1 rank and at 2 ranks split three ways
run "$CF" train $NET $BPE -data_prompt "$TMPL" -train_steps 4 -train_log_every 1 -run_dir "$T/l1"
for lay in "-par_tp 2" "-par_pp 2" "-par_cp 2"; do
  d="$T/l2${lay// /}"
  run mpiexec -n 2 "$CF" train $NET $BPE -data_prompt "$TMPL" -train_steps 4 -train_log_every 1 \
    -run_dir "$d" $lay
  $PY - "$T/l1/log.jsonl" "$d/log.jsonl" "$lay" <<'PYEOF' || fail "training $3 differs"
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
assert len(a) == len(b) == 4, (len(a), len(b))
err = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"training {sys.argv[3]}: 4 losses within {err:.1e} of 1 rank")
assert err < 1e-5, (a, b)
PYEOF
done

# self-feeding on a prompt model: the own-rollout passes prefill the prompt, the endpoints come
# from each sequence's group; the same losses at 1 rank and at 2 tensor-parallel ranks
SF="-train_selffeed_steps 1 -train_steps 4 -train_log_every 1"
run "$CF" train $NET $BPE -data_prompt "$TMPL" $SF -run_dir "$T/sf1"
run mpiexec -n 2 "$CF" train $NET $BPE -data_prompt "$TMPL" $SF -par_tp 2 -run_dir "$T/sf2"
$PY - "$T/sf1/log.jsonl" "$T/sf2/log.jsonl" "$T/l1/log.jsonl" <<'PYEOF' || fail "self-feeding"
import json, sys
a, b, tf = ([json.loads(l)["loss"] for l in open(f)] for f in sys.argv[1:4])
err = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"self-feeding on prompts, -par_tp 2: 4 losses within {err:.1e} of 1 rank")
assert len(a) == len(b) == 4 and err < 1e-5, (a, b)
assert a[1:] != tf[1:], "self-feeding changed nothing"
PYEOF

# 2. sampling
S="-run_dir $T/run -sample_n 200 -sample_batch 16 -sample_quiet 1"
run "$CF" sample $S -sample_prompt "a myoblast in GM medium" -sample_out "$T/gm.h5"
run "$CF" sample $S -sample_cond media=DM -sample_out "$T/dm.h5"
run "$CF" sample $S -sample_cond media=DM -sample_kvcache 0 -sample_out "$T/dm_re.h5"
run mpiexec -n 2 "$CF" sample $S -sample_cond media=DM -par_pp 2 -sample_out "$T/dm_pp.h5"
run mpiexec -n 2 "$CF" sample $S -sample_cond media=DM -par_tp 2 -sample_out "$T/dm_tp.h5"
run mpiexec -n 2 "$CF" sample $S -sample_cond media=DM -par_cp 2 -sample_out "$T/dm_cp.h5"
$PY - "$T" <<'PYEOF' || fail "sampling"
import sys, h5py, numpy as np
t = sys.argv[1]
def load(name):
    with h5py.File(f"{t}/{name}.h5", "r") as f:
        c = f.attrs["config"]
        return f["x"][...], (c.decode() if isinstance(c, bytes) else c)
gm, cg = load("gm")
dm, cd = load("dm")
print("GM prompt: mean", gm.mean(0), " DM prompt: mean", dm.mean(0))
assert np.abs(gm.mean(0) - 3).max() < 1.0, gm.mean(0)
assert np.abs(dm.mean(0) + 3).max() < 1.0, dm.mean(0)
assert "prompt: a myoblast in GM medium\n" in cg and "prompt_ids: " in cg, cg
assert "prompt: a myoblast in DM medium\n" in cd, cd
assert len(cd.split("prompt_ids: ")[1].split("\n")[0].split()) == 7, cd
assert np.array_equal(load("dm_pp")[0], dm), "pipeline-split samples differ"
for k in ("dm_re", "dm_tp", "dm_cp"):
    err = np.abs(load(k)[0] - dm).max()
    print(f"{k}: max |diff| {err:.1e}")
    assert err < 1e-4, (k, err)
PYEOF

# 3. bad input: exactly one error line
expect() {
  local name=$1 want=$2
  shift 2
  "$CF" "$@" >"$T/out" 2>"$T/err"
  local rc=$? nerr
  nerr=$(grep -c '' "$T/err")
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
    fail "$name: exit $rc"; cat "$T/err"; return
  fi
  if ! grep -q "^calmflow: error: .*$want" "$T/err" || [ "$nerr" -ne 1 ]; then
    fail "$name: expected one line with '$want':"; cat "$T/err"; return
  fi
  echo "ok   $name: $(cat "$T/err")"
}
B="train $NET -train_steps 2 -run_dir $T/bad -run_overwrite 1"
expect "unknown column" "no obs column 'medium'" $B $BPE -data_prompt "a {medium} cell"
expect "unclosed brace" "not closed" $B $BPE -data_prompt "a {media cell"
expect "stray brace" "closes no" $B $BPE -data_prompt "a media} cell"
expect "no tokenizer" "need a tokenizer" $B -data_prompt "$TMPL"
expect "half of GPT-2's files" "both files" $B -data_prompt "$TMPL" \
  -tok_encoder "$SRC/tests/data/bpe/encoder.json"
expect "cfm" "condition -model calmflow" $B $BPE -data_prompt "$TMPL" -model cfm
expect "no history" "flow_history" $B $BPE -data_prompt "$TMPL" -flow_history 0
expect "prompt too long" "more than 3" $B $BPE -data_prompt "$TMPL" -net_prompt_len 3
expect "no sample prompt" "give -sample_prompt" sample -run_dir "$T/run" -sample_out "$T/x.h5"
expect "prompt and cond" "not both" sample -run_dir "$T/run" -sample_out "$T/x.h5" \
  -sample_prompt "a myoblast" -sample_cond media=GM
expect "unknown field" "has no field {hours}" sample -run_dir "$T/run" -sample_out "$T/x.h5" \
  -sample_cond hours=24
expect "long sample prompt" "more than the model's prompt length 7" sample -run_dir "$T/run" \
  -sample_out "$T/x.h5" -sample_prompt "a myoblast in a very warm and rich growth medium"
run "$CF" train $NET -train_steps 2 -run_dir "$T/plain"
expect "model without prompts" "without text prompts" sample -run_dir "$T/plain" \
  -sample_out "$T/x.h5" -sample_prompt "a myoblast"
[ -e "$T/x.h5" ] && fail "a refused sample run left $T/x.h5"

if [ $fails -ne 0 ]; then
  echo "test_prompt: $fails failures"
  exit 1
fi
echo "test_prompt: ok"
