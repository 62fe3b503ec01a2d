#!/usr/bin/env bash
# test_errors.sh: the rows of docs/errors.md that no other test covers. Each case runs one
# failing command in a workspace of fixtures and earlier outputs and asserts: the documented
# exit status, exactly one line on stderr that names the file or option and says what was
# expected (the text is checked), and that the workspace is unchanged afterwards: no new or
# partial file, every file that was there still there with the same md5 (the few documented
# exceptions are listed per case). Input paths: options (command line, YAML file, commands),
# training data files, `calmflow data` outputs, checkpoints and run directories (sample, train
# resume, ckpt), samples files (eval, sample -sample_resume), tokenizer files, pretrained model
# directories, and the job scripts' environment (jobs/*.sbatch outside Slurm, bad settings).
# A full disk is a file-size limit (`ulimit -f`) on the writing rank, or an injected ENOSPC
# (CF_FAULT, include/calmflow/fault.h).
set -u
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
W=$T/w # the workspace every case must leave as it found it
mkdir -p "$W"
fails=0
PY=/usr/bin/python3
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# snap: every directory and every file's md5 under the workspace
snap() { (cd "$W" && find . -type d | sort && find . -type f -exec md5sum {} + | sort -k2); }

# changes ALLOW: the workspace's differences from $T/before, less lines matching ALLOW
changes() {
  snap >"$T/after"
  diff "$T/before" "$T/after" | grep '^[<>]' | { if [ -n "$1" ]; then grep -v -E "$1"; else cat; fi; }
}

# ck NAME CODE WANT NP [ALLOW] -- ARGS...: `calmflow ARGS` (NP 1: directly; else under mpiexec)
# exits CODE with one line "calmflow: error: ...WANT..." on stderr (WANT a grep -E pattern) and
# leaves the workspace unchanged but for lines matching ALLOW
ck() {
  local name=$1 code=$2 want=$3 np=$4 allow=""
  shift 4
  if [ "$1" != "--" ]; then allow=$1; shift; fi
  shift
  snap >"$T/before"
  if [ "$np" = 1 ]; then
    "$CF" "$@" >"$T/out" 2>"$T/err"
  else
    mpiexec --quiet -n "$np" "$CF" "$@" >"$T/out" 2>"$T/err"
  fi
  verdict "$name" $? "$code" "^calmflow: error: .*$want" "$allow"
}

# verdict NAME RC CODE LINE_PATTERN ALLOW: the checks of ck on a finished command
verdict() {
  local name=$1 rc=$2 code=$3 pat=$4 allow=$5 n ch
  n=$(grep -c '' "$T/err")
  ch=$(changes "$allow")
  if [ "$rc" -ne "$code" ]; then
    fail "$name: exit $rc, expected $code"; cat "$T/err"
  elif [ "$n" -ne 1 ]; then
    fail "$name: $n lines on stderr, expected 1:"; cat "$T/err"
  elif ! grep -q -E "$pat" "$T/err"; then
    fail "$name: stderr lacks /$pat/:"; cat "$T/err"
  elif [ -n "$ch" ]; then
    fail "$name: the workspace changed:"; echo "$ch"
  else
    echo "ok   $name: $(cut -c1-160 "$T/err")"
  fi
}

# ---- fixtures ----
$PY - "$W" <<'PYEOF' || { echo "FAIL could not write the fixtures"; exit 1; }
import sys, os, h5py, numpy as np
w = sys.argv[1]
rng = np.random.default_rng(3)
with h5py.File(f"{w}/good.h5", "w") as f: f["x"] = rng.normal(size=(64, 2)).astype(np.float32)
with h5py.File(f"{w}/zero.h5", "w") as f: f["x"] = np.zeros((0, 2), np.float32)
with h5py.File(f"{w}/latest.h5", "w", libver="latest") as f:  # superblock version 3
    f["x"] = rng.normal(size=(64, 2)).astype(np.float32)
def fixed(v):  # the /obs string layout of `calmflow data -data_h5ad` (docs/data-format.md)
    n = max(len(s.encode()) for s in v) + 1
    return np.array([s.encode() for s in v], dtype=h5py.string_dtype("utf-8", length=n))
with h5py.File(f"{w}/obs.h5", "w") as f:
    f["x"] = rng.normal(size=(40, 2)).astype(np.float32)
    d = f.create_dataset("obs/media", data=fixed([("GM", "DM")[i % 2] for i in range(40)]))
    d.attrs.create("kind", fixed(["categorical"])[0])
    d.attrs.create("categories", fixed(["DM", "GM"]))
os.makedirs(f"{w}/adir")
open(f"{w}/bad.json", "w").write('{"model": {"type": "BPE", ')
os.makedirs(f"{w}/hfbad")
open(f"{w}/hfbad/config.json", "w").write('{"model_type": "gpt_neox",')
open(f"{w}/unknown.yaml", "w").write("train:\n  stpes: 5\n")
open(f"{w}/cycle.yaml", "w").write("train: &t\n  steps: 5\n  <<: *t\n")  # PETSc recursed forever
open(f"{w}/list.yaml", "w").write("- train_steps\n- 5\n")
open(f"{w}/badkey.yaml", "w").write("train:\n  steps: 5\n9lives: 1\n")
# a prefix PETSc reads as a number ("-nan" then ' '): refused before PETSc sees it
open(f"{w}/numkey.yaml", "w").write("defaults: &d\n  steps: 5\nnan x: *d\n")
# GPT-NeoX model directories (docs/pretrained.md) with sound config.json: weights not a
# safetensors file, and one NaN among otherwise good weights
import json, struct
hf = {"model_type": "gpt_neox", "hidden_size": 16, "num_attention_heads": 2,
      "num_hidden_layers": 1, "intermediate_size": 32, "vocab_size": 50, "rotary_pct": 0.5,
      "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
      "hidden_act": "gelu"}
shapes = {"final_layer_norm.weight": [16], "final_layer_norm.bias": [16]}
for a, b in [("input_layernorm", [16]), ("post_attention_layernorm", [16])]:
    shapes[f"layers.0.{a}.weight"] = shapes[f"layers.0.{a}.bias"] = b
for a, o, i in [("attention.query_key_value", 48, 16), ("attention.dense", 16, 16),
                ("mlp.dense_h_to_4h", 32, 16), ("mlp.dense_4h_to_h", 16, 32)]:
    shapes[f"layers.0.{a}.weight"], shapes[f"layers.0.{a}.bias"] = [o, i], [o]
header, blobs, at = {}, [], 0
for name, shape in sorted(shapes.items()):
    v = (0.02 * rng.normal(size=shape)).astype("<f4")
    if name == "layers.0.mlp.dense_4h_to_h.weight": v.flat[37] = np.nan
    header["gpt_neox." + name] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + v.nbytes]}
    blobs.append(v.tobytes())
    at += v.nbytes
hj = json.dumps(header).encode()
for d, weights in [("hfshort", b"\x00" * 5),
                   ("hfnan", struct.pack("<Q", len(hj)) + hj + b"".join(blobs))]:
    os.makedirs(f"{w}/{d}")
    json.dump(hf, open(f"{w}/{d}/config.json", "w"))
    open(f"{w}/{d}/model.safetensors", "wb").write(weights)
open(f"{w}/m_old.json", "w").write('{"w2": 1}\n')
PYEOF
cp "$W/good.h5" "$W/old.h5" # an earlier output a failed command must not touch
NET=(-train_batch 16 -net_hidden 16 -flow_time_points 4 -flow_trajectories 2 -train_quiet 1)
"$CF" train -train_steps 2 "${NET[@]}" -run_dir "$W/run" >"$T/log" 2>&1 ||
  { cat "$T/log"; echo "FAIL the fixture run"; exit 1; }
CK=$W/run/ckpt/$(cat "$W/run/ckpt/LATEST")
# a run whose only checkpoint is truncated
cp -r "$W/run" "$W/trunc"
f=$W/trunc/ckpt/$(cat "$W/trunc/ckpt/LATEST")
head -c 50000 "$f" >"$T/half" && cat "$T/half" >"$f"
# LATEST naming a missing file, and an empty one
mkdir -p "$W/lost/ckpt" "$W/empty/ckpt"
echo step-0000009.h5 >"$W/lost/ckpt/LATEST"
: >"$W/empty/ckpt/LATEST"
# an unfinished samples file: sampling failed at its 3rd batch (complete = 0)
CF_FAULT=sample_batch:*:3:eio "$CF" sample -run_dir "$W/run" -sample_n 500 -sample_batch 4 \
  -sample_out "$W/unf.h5" -sample_quiet 1 >"$T/log" 2>&1 &&
  { echo "FAIL the unfinished samples fixture finished"; exit 1; }
[ -f "$W/unf.h5" ] || { cat "$T/log"; echo "FAIL no unfinished samples fixture"; exit 1; }

TR=(train -train_steps 2 "${NET[@]}" -run_dir "$W/new")

# ---- options ----
ck stray-word 1 "unexpected argument 'extra': calmflow train takes -option value pairs only" 1 \
  -- "${TR[@]}" extra
ck yaml-no-name 1 "option -options_file_yaml: expected a YAML file name" 1 \
  -- "${TR[@]}" -options_file_yaml
ck yaml-directory 1 "cannot read options file '$W/adir': it is a directory, expected a YAML file" 1 \
  -- "${TR[@]}" -options_file_yaml "$W/adir"
ck yaml-unknown 1 "unknown option -train_stpes \(run 'calmflow train -help' for the list\)" 1 \
  -- "${TR[@]}" -options_file_yaml "$W/unknown.yaml"
ck yaml-merge-cycle 1 "cannot load options file '$W/cycle.yaml': line [0-9]+: options nested deeper than 20 levels \(or a merge cycle\)" 2 \
  -- "${TR[@]}" -options_file_yaml "$W/cycle.yaml"
ck yaml-not-mapping 1 "cannot load options file '$W/list.yaml': line 1: not a mapping \(expected a mapping of option names" 1 \
  -- "${TR[@]}" -options_file_yaml "$W/list.yaml"
ck yaml-bad-key 1 "cannot load options file '$W/badkey.yaml': line 3: key '9lives' is not an option name" 1 \
  -- "${TR[@]}" -options_file_yaml "$W/badkey.yaml"
ck yaml-number-key 1 "cannot load options file '$W/numkey.yaml': line 3: key 'nan x' is not an option name" 1 \
  -- "${TR[@]}" -options_file_yaml "$W/numkey.yaml"
ck no-value 1 "option -train_lr: expected a finite number, got ''" 1 -- "${TR[@]}" -train_lr
ck value-not-utf8 1 "option -data_name: its value is not valid UTF-8 text \(byte 4\)" 1 \
  -- data -data_out "$W/x.h5" -data_name $'moo\xffns'
ck value-too-long 1 "option -data_out: its value is 5[0-9]{3} bytes, expected at most 4095" 1 \
  -- data -data_out "$W/$(printf 'a%.0s' $(seq 5000)).h5"
ck other-command-data 1 "option -data_train belongs to calmflow train, not to calmflow data" 1 \
  -- data -data_out "$W/old.h5" -data_train "$W/good.h5"
ck other-command-sample 1 "option -flow_time_points belongs to calmflow train, not to calmflow sample" 1 \
  -- sample -run_dir "$W/run" -sample_out "$W/s.h5" -flow_time_points 8
ck other-command-eval 1 "option -train_lr belongs to calmflow train, not to calmflow eval" 2 \
  -- eval -eval_a "$W/good.h5" -eval_b "$W/good.h5" -eval_out "$W/m.json" -train_lr 1e-3
ck other-command-ckpt 1 "option -seed belongs to calmflow data, train and sample, not to calmflow ckpt" 1 \
  -- ckpt info "$CK" -seed 1
ck unknown-sample-option 1 "unknown option -sample_nn \(run 'calmflow sample -help'" 1 \
  -- sample -run_dir "$W/run" -sample_out "$W/s.h5" -sample_nn 5
ck sample-range 1 "option -sample_n: expected an integer in \[1, " 1 \
  -- sample -run_dir "$W/run" -sample_out "$W/s.h5" -sample_n 0
ck unknown-command 2 "unknown command 'frobnicate' \(expected data, train, sample, eval or ckpt\)" 1 \
  -- frobnicate -train_steps 2
# no command at all: the usage text, exit 2
snap >"$T/before"
"$CF" >"$T/out" 2>"$T/err"
rc=$?
if [ $rc -ne 2 ] || ! grep -q '^usage: calmflow <command>' "$T/err" || [ -n "$(changes "")" ]; then
  fail "no-command: exit $rc, expected 2 with the usage on stderr"; cat "$T/err"
else
  echo "ok   no-command: exit 2, usage on stderr"
fi

# ---- training data files (-data_train, -data_source) ----
ck data-directory 1 "'$W/adir' is a directory, expected an HDF5 file" 1 \
  -- "${TR[@]}" -data_train "$W/adir"
ck data-newer-format 1 "cannot read '$W/latest.h5': it is in a newer HDF5 file format \(superblock version 3.*calmflow reads the 1.8 format" 2 \
  -- "${TR[@]}" -data_train "$W/latest.h5"
ck data-no-rows 1 "'$W/zero.h5' /x is empty \(0 x 2\), expected an n x D float array" 1 \
  -- "${TR[@]}" -data_train "$W/zero.h5"
ck data-unfinished 1 "option -data_train: '$W/unf.h5' is an unfinished samples file \([0-9]+ of 500 samples" 2 \
  -- "${TR[@]}" -data_train "$W/unf.h5"
ck source-name 1 "option -data_source: unknown distribution 'bogus' \(expected one of: normal" 1 \
  -- "${TR[@]}" -data_source bogus

# ---- calmflow data (synthetic) outputs ----
ck data-name-old-kept 1 "option -data_name: unknown distribution 'bogus'" 1 \
  -- data -data_name bogus -data_out "$W/old.h5"
ck data-out-no-dir 1 "cannot write '$W/nodir/x.h5': directory '$W/nodir' does not exist" 1 \
  -- data -data_out "$W/nodir/x.h5"
ck data-out-directory 1 "cannot write '$W/adir': it is a directory" 1 -- data -data_out "$W/adir"

# ---- checkpoints and run directories ----
ck latest-missing 1 "'$W/lost/ckpt/LATEST' names 'step-0000009.h5', which does not exist" 1 \
  -- sample -run_dir "$W/lost" -sample_out "$W/old.h5"
ck latest-empty 1 "'$W/empty/ckpt/LATEST' does not hold a checkpoint file name" 1 \
  -- sample -run_dir "$W/empty" -sample_out "$W/old.h5"
ck sample-ckpt-not-ckpt 1 "'$W/good.h5' is not a calmflow checkpoint \(no 'format' attribute\)" 2 \
  -- sample -run_dir "$W/run" -sample_ckpt "$W/good.h5" -sample_out "$W/old.h5"
# -train_resume is read after the run directory is locked: a new directory keeps the lock file
# (test_lock.sh: a directory holding only .lock is not a run)
ck resume-not-ckpt 1 "'$W/good.h5' is not a calmflow checkpoint \(no 'format' attribute\)" 1 \
  '^> (\./new|[0-9a-f]+  \./new/\.lock)$' -- "${TR[@]}" -train_resume "$W/good.h5"
rm -rf "$W/new"
# (the lock file records the holder of every run that locked the directory, this one too)
ck no-valid-ckpt 1 "no valid checkpoint to resume from in '$W/trunc/ckpt' \(the newest failed: .*step-0000002.h5.*\); pass -run_overwrite 1" 2 \
  '^[<>] [0-9a-f]+  \./trunc/\.lock$' -- train -train_steps 4 "${NET[@]}" -run_dir "$W/trunc"
ck ckpt-usage 1 "usage: calmflow ckpt info FILE \| calmflow ckpt verify FILE" 1 -- ckpt info
ck ckpt-missing 1 "cannot open '$W/none.h5': no such file" 1 -- ckpt verify "$W/none.h5"
ck ckpt-directory 1 "'$W/run' is a directory, expected an HDF5 file" 1 -- ckpt info "$W/run"
ck sample-resume-none 1 "cannot resume '$W/none.h5': no such file" 1 \
  -- sample -run_dir "$W/run" -sample_out "$W/none.h5" -sample_resume 1
ck sample-resume-not-samples 1 "'$W/old.h5' is not a calmflow samples file \(no 'format' attribute\), expected one written by calmflow sample" 1 \
  -- sample -run_dir "$W/run" -sample_out "$W/old.h5" -sample_resume 1
ck sample-out-no-dir 1 "cannot write '$W/nodir/s.h5': directory '$W/nodir': does not exist" 1 \
  -- sample -run_dir "$W/run" -sample_out "$W/nodir/s.h5"

# ---- samples files for eval ----
ck eval-missing 1 "cannot open '$W/none.h5': no such file" 1 \
  -- eval -eval_a "$W/none.h5" -eval_b "$W/good.h5" -eval_out "$W/m_old.json"
ck eval-unfinished 1 "option -eval_a: '$W/unf.h5' is an unfinished samples file \([0-9]+ of 500 samples, complete = 0\), expected a finished one" 2 \
  -- eval -eval_a "$W/unf.h5" -eval_b "$W/good.h5" -eval_out "$W/m_old.json"
ck eval-ref-unfinished 1 "option -eval_ref: '$W/unf.h5' is an unfinished samples file" 1 \
  -- eval -eval_a "$W/good.h5" -eval_b "$W/good.h5" -eval_ref "$W/unf.h5"
ck eval-out-no-dir 1 "cannot write '$W/nodir/m.json': No such file or directory" 1 \
  -- eval -eval_a "$W/good.h5" -eval_b "$W/good.h5" -eval_out "$W/nodir/m.json" -eval_sinkhorn_max 0

# ---- tokenizer files (text prompts) ----
PR=("${TR[@]}" -data_train "$W/obs.h5" -data_prompt "a {media} cell")
ck tok-missing 1 "$W/none.json: cannot open" 1 -- "${PR[@]}" -tok_file "$W/none.json"
ck tok-bad-json 1 "$W/bad.json: not valid JSON" 1 -- "${PR[@]}" -tok_file "$W/bad.json"
ck tok-directory 1 "$W/adir: it is a directory, expected a tokenizer.json file" 1 \
  -- "${PR[@]}" -tok_file "$W/adir"
ck tok-encoder-directory 1 "$W/adir: it is a directory, expected GPT-2's encoder.json file" 1 \
  -- "${PR[@]}" -tok_encoder "$W/adir" -tok_vocab "$SRC/tests/data/bpe/vocab.bpe"
ck tok-vocab-directory 1 "$W/adir: it is a directory, expected GPT-2's vocab.bpe file" 1 \
  -- "${PR[@]}" -tok_encoder "$SRC/tests/data/bpe/encoder.json" -tok_vocab "$W/adir"
ck tok-not-tokenizer 1 "encoder.json: no \"model\" object" 1 \
  -- "${PR[@]}" -tok_file "$SRC/tests/data/bpe/encoder.json"
ck tok-both 1 "option -tok_file: give either -tok_file or -tok_encoder with -tok_vocab, not both" 1 \
  -- "${PR[@]}" -tok_file "$W/bad.json" -tok_encoder "$SRC/tests/data/bpe/encoder.json" \
  -tok_vocab "$SRC/tests/data/bpe/vocab.bpe"

# ---- pretrained model directories ----
ck hf-missing 1 "cannot open '$W/nohf/config.json': No such file or directory \(a Hugging Face model directory needs it\)" 1 \
  -- "${TR[@]}" -model_init_hf "$W/nohf"
ck hf-bad-config 1 "'$W/hfbad/config.json' is not valid JSON" 1 -- "${TR[@]}" -model_init_hf "$W/hfbad"
# bad weights are refused before the run directory is made (no run directory, no lock), so
# another directory can be tried with the same -run_dir at once
ck hf-short-weights 1 "safetensors '$W/hfshort/model.safetensors': 5 bytes, too short" 1 \
  -- "${TR[@]}" -model_init_hf "$W/hfshort"
ck hf-nan-weights 1 "safetensors '$W/hfnan/model.safetensors': tensor 'gpt_neox.layers.0.mlp.dense_4h_to_h.weight' holds a NaN or infinity at element 37" 2 \
  -- "${TR[@]}" -model_init_hf "$W/hfnan"

# ---- the job scripts' environment (they stop before launching anything) ----
# jobN NAME WANT ENV... -- SCRIPT ARGS: exit 1, one line matching WANT, workspace unchanged
jobck() {
  local name=$1 want=$2
  shift 2
  local env=()
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  snap >"$T/before"
  (cd "$W" && env -u SLURM_JOB_ID CF_HOME="$SRC" "${env[@]}" bash "$SRC/jobs/$1" "${@:2}") \
    >"$T/out" 2>"$T/err"
  verdict "$name" $? 1 "$want" ""
}
for s in train sample eval sweep scaling; do
  jobck "job-no-slurm-$s" "SLURM_JOB_ID: jobs/$s.sbatch runs under sbatch \(SLURM_JOB_ID is not set\)" \
    -- "$s.sbatch"
done
J=(SLURM_JOB_ID=4242 CF_LAUNCHER=mpirun CF_BINARY="$CF")
jobck job-launcher "^calmflow job: error: CF_LAUNCHER 'bogus': expected srun or mpirun" \
  "${J[@]}" CF_LAUNCHER=bogus -- train.sbatch
jobck job-binary "^calmflow job: error: CF_BINARY '$W/none' is not an executable file" \
  "${J[@]}" CF_BINARY="$W/none" -- train.sbatch
jobck job-requeues "^calmflow job: error: CF_MAX_REQUEUES 'x': expected a whole number" \
  "${J[@]}" CF_MAX_REQUEUES=x -- train.sbatch
jobck job-sample-no-run "^calmflow job: error: give the trained run: -run_dir RUN" "${J[@]}" -- sample.sbatch
jobck job-eval-no-run "^calmflow job: error: run directory '$W/none' does not exist" \
  "${J[@]}" -- eval.sbatch -run_dir "$W/none"
jobck job-sweep-no-grid "^calmflow job: error: grid file '$W/none.txt' cannot be read" \
  "${J[@]}" SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=1 -- sweep.sbatch "$W/none.txt"

# CF_HOME not a checkout: the script's own line only (it tests lib.sh before sourcing it)
for s in train sample eval sweep scaling experiments; do
  jobck "job-no-lib-$s" "^calmflow job: error: cannot source '$W/none/jobs/lib.sh' \(set CF_HOME to the calmflow checkout\)" \
    SLURM_JOB_ID=4242 CF_HOME="$W/none" -- "$s.sbatch"
done

# ---- a full disk while writing: a file-size limit on the rank (SIGXFSZ ignored, so writes
# fail with EFBIG; shared-memory transport off: its segment files would not fit), or an
# injected ENOSPC. The writers reserve the room they need (posix_fallocate) before HDF5 writes:
# one error line, exit 1, no temporary file, earlier outputs unchanged ----
limited() { # KIB ARGS...
  local kib=$1
  shift
  OMPI_MCA_btl=self,tcp mpiexec --quiet -n 1 bash -c 'trap "" XFSZ; ulimit -f '"$kib"'; exec "$0" "$@"' \
    "$CF" "$@" >"$T/out" 2>"$T/err"
}
snap >"$T/before"
limited 4 data -data_n 4000 -data_out "$W/old.h5"
verdict disk-full-data $? 1 "^calmflow: error: cannot write '$W/old.h5': no room on disk for its first [0-9.]+ MiB \(File too large\)$" ""
snap >"$T/before"
limited 200 data -data_n 40000 -data_out "$W/old.h5" # room for the metadata, not for /x
verdict disk-full-data-x $? 1 "^calmflow: error: cannot write '$W/old.h5': no room on disk for its first [0-9.]+ MiB \(File too large\)$" ""
CF_FAULT=h5_write:1:1:enospc ck data-enospc 1 "injected fault at h5_write \(enospc\)" 2 \
  -- data -data_n 4000 -data_out "$W/old.h5"

# samples: the file is appended in place; an append reserves its chunks first, so a full disk
# stops sampling with every committed sample readable (an ordinary HDF5 open, complete = 0),
# and -sample_resume 1 finishes it with the samples an uninterrupted run makes. Sizes: N x D =
# 4 x 2, so an append holds at most 131072 samples (4 MiB of /traj) and reserves at most 5.2
# MiB (1 chunk of /x, 4 of /traj, margins): the first one fits in 6.5 MiB, the whole file (7.7
# MiB of samples) does not
SA=(sample -run_dir "$W/run" -sample_n 200000 -sample_traj 1 -sample_quiet 1)
snap >"$T/before"
limited 6656 "${SA[@]}" -sample_out "$W/full.h5"
verdict disk-full-sample $? 1 "^calmflow: error: cannot write samples to '$W/full.h5': no room on disk for its first [0-9.]+ MiB \(File too large\)$" '^> ([0-9a-f]+  )?\./full\.h5$'
$PY -c "import h5py, sys
with h5py.File(sys.argv[1], 'r') as f:
    a = f.attrs
    ok = a['complete'] == 0 and 0 < a['n_done'] < 200000 and f['x'].shape[0] >= a['n_done']
    print(f\"     {a['n_done']} of 200000 samples committed, complete = {a['complete']}\")
sys.exit(0 if ok else 1)" "$W/full.h5" || fail "disk-full-sample: '$W/full.h5' is not an unfinished samples file with samples in it"
"$CF" "${SA[@]}" -sample_out "$W/full.h5" -sample_resume 1 >"$T/out" 2>&1 ||
  { cat "$T/out"; fail "disk-full-sample: -sample_resume 1 did not finish it"; }
"$CF" "${SA[@]}" -sample_out "$T/whole.h5" >"$T/out" 2>&1 || { cat "$T/out"; fail "disk-full-sample: the uninterrupted run"; }
$PY -c "import h5py, sys, numpy as np
a, b = h5py.File(sys.argv[1], 'r'), h5py.File(sys.argv[2], 'r')
ok = a.attrs['complete'] == 1 and all(np.array_equal(a[k][...], b[k][...]) for k in ('x', 'traj'))
sys.exit(0 if ok else 1)" "$W/full.h5" "$T/whole.h5" &&
  echo "ok   disk-full-sample: resumed, equal to an uninterrupted run" ||
  fail "disk-full-sample: the resumed file differs from an uninterrupted run"
rm -f "$W/full.h5" "$W/full.h5.json"
# (the samples file cannot even be created: nothing left)
snap >"$T/before"
limited 8 "${SA[@]}" -sample_out "$W/full.h5"
verdict disk-full-sample-create $? 1 "^calmflow: error: cannot write '$W/full.h5': no room on disk for its first [0-9.]+ MiB \(File too large\)$" ""

if [ $fails -ne 0 ]; then echo "test_errors: $fails failures"; exit 1; fi
echo "test_errors: ok"
