#!/usr/bin/env bash
# test_neox_load.sh PROGRAM: pretrained GPT-NeoX backbones (docs/pretrained.md).
# tests/test_neox_load.py writes a small Hugging Face model directory and defective copies;
# PROGRAM (tests/test_neox_load.c) loads it at 1 rank, at tp2 and at pp2 and compares the
# backbone with the PyTorch forward and the defects with their messages. Then the binary:
# `calmflow train -model_init_hf` at 1 rank, tp2 and pp2 (one step at lr 1e-12) leaves the
# file's weights in every block of the checkpoint; a conflicting -net_ option, -model cfm and a
# bad directory are refused with one line; the checkpoint samples (its options record the
# backbone's shape and rotary base).
set -u
PROG=${1:?usage: test_neox_load.sh PROGRAM}
SRC=${CF_SOURCE_DIR:?set by ctest}
CF=${CF_BINARY:?set by ctest}
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL $*"; exit 1; }

$PY "$SRC/tests/test_neox_load.py" "$T/fx" || fail "writing the fixtures"
"$PROG" "$T/fx" 1 1 || fail "loading at 1 rank"
mpiexec -n 2 "$PROG" "$T/fx" 2 1 || fail "loading at tp2"
mpiexec -n 2 "$PROG" "$T/fx" 1 2 || fail "loading at pp2"

HF=$T/fx/good
COMMON=(-train_batch 8 -flow_trajectories 2 -flow_time_points 4 -data_source 8gaussians
        -train_warmup 1 -seed 5 -train_quiet 1 -model_init_hf "$HF")
for l in "one:1:" "tp2:2:-par_tp 2" "pp2:2:-par_pp 2 -train_microbatches 2"; do
  IFS=: read -r name np opts <<<"$l"
  # shellcheck disable=SC2086
  mpiexec -n "$np" "$CF" train "${COMMON[@]}" -train_steps 1 -train_lr 1e-12 -train_lr_min 0 \
    $opts -run_dir "$T/$name" >"$T/$name.log" 2>&1 || { cat "$T/$name.log"; fail "train $name"; }
done
$PY - "$HF" "$T"/one/ckpt/step-0000001.h5 "$T"/tp2/ckpt/step-0000001.h5 \
  "$T"/pp2/ckpt/step-0000001.h5 <<'PYEOF' || fail "checkpoint blocks are not the file's weights"
import json, struct, sys
import h5py, numpy as np, torch
fx, runs = sys.argv[1], sys.argv[2:]
blob = open(fx + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
hdr = json.loads(blob[8:8 + n])
def st(name):
    e = hdr[name]
    b, en = e["data_offsets"]
    raw = bytearray(blob[8 + n + b:8 + n + en])
    if e["dtype"] == "BF16":
        return torch.frombuffer(raw, dtype=torch.bfloat16).float().numpy().reshape(e["shape"])
    a = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2"}[e["dtype"]]).astype(np.float32)
    return a.reshape(e["shape"])
names = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm",
         "attn.qkv": "attention.query_key_value", "attn.out": "attention.dense",
         "mlp.fc1": "mlp.dense_h_to_4h", "mlp.fc2": "mlp.dense_4h_to_h"}
pairs = [(f"layers.{l}.{c}.{w}", f"gpt_neox.layers.{l}.{h}.{w}")
         for l in range(4) for c, h in names.items() for w in ("weight", "bias")]
pairs += [(f"lnf.{w}", f"gpt_neox.final_layer_norm.{w}") for w in ("weight", "bias")]
bad = 0
for r in runs:
    with h5py.File(r, "r") as f:
        for ours, theirs in pairs:
            a, b = f["params/" + ours][...], st(theirs)
            d = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30) if a.shape == b.shape else 1.0
            if d > 1e-6:
                print(f"{r}: {ours} differs from {theirs} by {d:.3g}")
                bad += 1
sys.exit(1 if bad else 0)
PYEOF
grep -q '^net_rotary_base: "1000"' "$T/one/config.yaml" || fail "config.yaml lacks the rotary base"
"$CF" sample -run_dir "$T/one" -sample_n 8 -sample_quiet 1 >"$T/s.log" 2>&1 ||
  { cat "$T/s.log"; fail "sampling the pretrained model's checkpoint"; }

refused() { # expected-fragment calmflow-train-options...
  local want=$1
  shift
  "$CF" train "$@" -run_dir "$T/refused" >"$T/r.log" 2>&1 && fail "accepted: $*"
  grep -q -- "$want" "$T/r.log" || { cat "$T/r.log"; fail "no '$want' in the error"; }
  [ "$(grep -c 'error' "$T/r.log")" = 1 ] || { cat "$T/r.log"; fail "not one error line: $*"; }
}
refused "option -net_hidden 64 conflicts with -model_init_hf" "${COMMON[@]}" -net_hidden 64
refused "is for -model calmflow" "${COMMON[@]}" -model cfm
refused "use_parallel_residual is false" "${COMMON[@]}" -model_init_hf "$T/fx/bad_serial"
refused "has dtype F64" "${COMMON[@]}" -model_init_hf "$T/fx/bad_dtype"
echo "test_neox_load.sh: ok"
