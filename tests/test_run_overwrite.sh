#!/usr/bin/env bash
# test_run_overwrite.sh: `calmflow train` never overwrites a run directory that belongs to
# another run (a checkpoint trained with other options; with no checkpoint, a config.yaml that
# differs, or a log / summary with no config.yaml to compare with): one error line naming the
# directory and -run_overwrite / -train_resume, exit 1, every file unchanged. What is not
# another run goes ahead: the same command resumes from the newest checkpoint (also when
# ckpt/LATEST is lost), the same configuration with no checkpoint starts again, and
# -run_overwrite 1 starts afresh, deleting the old checkpoints, log and summary up front while
# leaving other files alone.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
TR=(train -train_steps 4 -train_batch 32 -net_hidden 16 -train_quiet 1 -train_log_every 1
    -train_ckpt_every 2 -seed 4)
sums() { (cd "$1" && find . -type f ! -name .lock | sort | xargs md5sum); }

# refused NAME NP DIR WANT args...: exit 1, one line "calmflow: error: ...WANT", DIR unchanged
refused() {
  local name=$1 np=$2 dir=$3 want=$4; shift 4
  local before rc
  before=$(sums "$dir")
  mpiexec --quiet -n "$np" "$CF" "${TR[@]}" -run_dir "$dir" "$@" >"$T/out" 2>"$T/err"
  rc=$?
  if [ $rc -ne 1 ] || [ "$(grep -c '^calmflow' "$T/err")" -ne 1 ] ||
     ! grep -q "^calmflow: error: .*$want" "$T/err" || ! grep -q "run directory '$dir'" "$T/err" ||
     ! grep -q -- "-run_overwrite 1" "$T/err"; then
    echo "exit $rc"; cat "$T/err"; bad "$name: expected exit 1 and one line with '$want'"
  elif [ "$(sums "$dir")" != "$before" ]; then
    diff <(echo "$before") <(sums "$dir"); bad "$name: the refused run changed '$dir'"
  else
    echo "ok   $name: $(cut -c1-150 "$T/err")..."
  fi
}
# ran NAME NP DIR args...: the command succeeds
ran() {
  local name=$1 np=$2 dir=$3; shift 3
  mpiexec --quiet -n "$np" "$CF" "${TR[@]}" -run_dir "$dir" "$@" >"$T/out" 2>"$T/err" ||
    { cat "$T/out" "$T/err"; bad "$name: failed"; return 1; }
}
last_step() { tail -n 1 "$1/log.jsonl" | sed 's/{"step": \([0-9]*\),.*/\1/'; }

# a finished run of 4 steps, with a samples file beside it
A="$T/a"
ran setup 2 "$A" || exit 1
echo "not a calmflow file" >"$A/samples.h5"

# another model configuration on it, at 1 and 2 ranks: refused, naming the option
refused ckpt-differs-np2 2 "$A" "option -net_hidden is '32' but checkpoint '.*step-0000004.h5' was trained with '16': run directory '$A' belongs to another run" -net_hidden 32
refused ckpt-differs-np1 1 "$A" "belongs to another run" -data_name 8gaussians -train_steps 6

# LATEST lost: still a run; another configuration is refused, the same one resumes from the
# newest step file
rm "$A/ckpt/LATEST"
refused no-latest-differs 2 "$A" "option -flow_sigma is '2' but checkpoint" -flow_sigma 2
ran no-latest-resume 2 "$A" -train_steps 6 -train_quiet 0 &&
  grep -q "^resuming from $A/ckpt/step-0000004.h5 (step 4)" "$T/out" && [ "$(last_step "$A")" = 6 ] &&
  echo "ok   no-latest-resume: resumed from step-0000004.h5 without LATEST" ||
  { cat "$T/out"; bad "no-latest-resume: did not resume from the newest step file"; }

# a run that never reached a checkpoint (config.yaml and a log only)
B="$T/b"
mkdir -p "$B/ckpt"
ran make-b 1 "$B" -train_steps 1 -train_ckpt_every 0 >/dev/null
rm -f "$B"/ckpt/*
echo '{"step": 1, "loss": 1.0}' >"$B/log.jsonl"
refused config-differs 2 "$B" "its config.yaml has -net_hidden '16', this invocation '24'" -net_hidden 24
ran config-same 2 "$B" && [ "$(cat "$B/ckpt/LATEST")" = step-0000004.h5 ] &&
  [ "$(grep -c '' "$B/log.jsonl")" = 4 ] && [ "$(head -c 11 "$B/log.jsonl")" = '{"step": 1,' ] &&
  echo "ok   config-same: the same configuration without a checkpoint started again" ||
  { cat "$B/log.jsonl"; bad "config-same"; }

# a log and a summary but no config.yaml and no checkpoint: whose run is unknown, refused
C="$T/c"
mkdir -p "$C"
echo '{"step": 1, "loss": 1.0}' >"$C/log.jsonl"
echo '{}' >"$C/summary.json"
refused no-config 2 "$C" "config.yaml cannot be read"

# -run_overwrite 1: starts afresh with the new configuration; the old checkpoints, log and
# summary are gone, samples.h5 stays
ran overwrite 2 "$A" -net_hidden 32 -run_overwrite 1 &&
  [ "$(ls "$A/ckpt" | tr '\n' ' ')" = "LATEST step-0000002.h5 step-0000004.h5 " ] &&
  [ "$(grep -c '' "$A/log.jsonl")" = 4 ] && [ -f "$A/samples.h5" ] &&
  grep -q 'net_hidden: "32"' "$A/config.yaml" &&
  "$CF" ckpt info "$A/ckpt/step-0000004.h5" | grep -q " H=32 " &&
  echo "ok   overwrite: a fresh 4-step run with -net_hidden 32; samples.h5 kept" ||
  { ls -la "$A" "$A/ckpt"; cat "$A/log.jsonl"; bad "overwrite"; }
# the overwritten directory is now that run's: the old configuration is refused there
refused after-overwrite 1 "$A" "option -net_hidden is '16' but checkpoint"

# a fresh directory, and one holding only the lock file, are not runs
ran fresh 1 "$T/d" -train_steps 2 && echo "ok   fresh directory"
mkdir -p "$T/e" && : >"$T/e/.lock"
ran lock-only 1 "$T/e" -train_steps 2 && echo "ok   a directory holding only .lock"

if [ $fails -ne 0 ]; then echo "test_run_overwrite: $fails failures"; exit 1; fi
echo "test_run_overwrite: ok"
