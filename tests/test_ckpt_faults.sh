#!/usr/bin/env bash
# test_ckpt_faults.sh: the checkpoint fault catalogue (reliability.md G1/G3/G4, §3) through the
# real binary at 2 ranks with a tiny model, checkpoints every 2 of 6 steps, 2 kept:
#  1. a rank killed in the middle of the 2nd checkpoint's tensors (CF_FAULT ckpt_write kill);
#  2. rank 0 killed after the write, before the rename (CF_FAULT ckpt_rename kill);
#  3. the newest checkpoint truncated to half (LATEST still names it): resume warns, naming it,
#     and uses the previous one;
#  4. one flipped byte anywhere in a committed checkpoint, 40 seeded trials: `ckpt verify`
#     either fails with one error line or passes on data equal bit for bit to the original;
#  5. no space: writes fail with EFBIG under a file-size limit (`ulimit -f`, SIGXFSZ ignored),
#     and an injected ENOSPC at ckpt_write: one error line, exit 1, nothing half-written;
#  6. the whole job killed with SIGKILL while a checkpoint is being written (CF_FAULT delay).
# After each fault the invariant "no committed checkpoint is lost and resume picks the newest
# valid one" is checked explicitly: what LATEST named before the fault still exists and
# verifies; the resumed run starts at the step after it, finishes, and its final checkpoint
# verifies; log.jsonl holds every step once; ckpt/ holds nothing but LATEST and step-*.h5,
# apart from the temporary file of a writer that was killed (reported, not an error: nothing
# ever reads it). Cases 1, 2, 5 (ENOSPC) and 6 need the ckpt_write and ckpt_rename sites of
# include/calmflow/fault.h to be reached by the checkpoint writer.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
STEPS=6
TR=(train -train_steps "$STEPS" -train_batch 16 -flow_trajectories 4 -flow_time_points 6
    -flow_spatial_tokens 2 -net_hidden 16 -net_layers 1 -train_log_every 1 -train_ckpt_every 2
    -train_ckpt_keep 2 -train_quiet 1 -seed 3)
ms() { date +%s%3N; }
T0=$(ms)
: >"$T/stale"

# verify FILE: `calmflow ckpt verify` at 2 ranks; returns its status, output in $T/vout
verify() { mpiexec --quiet -n 2 "$CF" ckpt verify "$1" >"$T/vout" 2>&1; }

# train DIR [options]: a run expected to succeed (output in $T/tout)
train() {
  local dir=$1
  shift
  mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$dir" "$@" >"$T/tout" 2>&1 ||
    { cat "$T/tout"; fail "training in $dir failed"; return 1; }
}

# committed DIR NAME: NAME is LATEST's content, the file exists, verifies, and no
# step-*.h5 file newer than it exists under its final name (the fault left nothing there)
committed() {
  local dir=$1 want=$2
  local got; got=$(cat "$dir/ckpt/LATEST" 2>/dev/null)
  [ "$got" = "$want" ] || { fail "$dir: LATEST names '$got', expected '$want'"; return 1; }
  verify "$dir/ckpt/$want" || { cat "$T/vout"; fail "$dir: committed $want does not verify"; return 1; }
  local f newest=${want#step-}
  newest=$((10#${newest%.h5}))
  for f in "$dir"/ckpt/step-*.h5; do
    local s=${f##*/step-}
    s=$((10#${s%.h5}))
    [ "$s" -le "$newest" ] || fail "$dir: ${f##*/} appeared under its final name after the fault"
  done
}

# resumed DIR NAME CASE [expect_warning_about]: resume after the fault from NAME (the newest
# valid checkpoint): first step logged is NAME's + 1, the run finishes, the final checkpoint
# verifies, every step is logged once, and ckpt/ holds only LATEST and step-*.h5, except that
# the temporary file of a writer that was killed (listed in $T/stale) is tolerated with a note:
# its name is not step-*.h5, so resume, prune and LATEST never look at it, and the next writer
# uses another name (its own pid); it only takes disk space (see "left" in the output).
resumed() {
  local dir=$1 name=$2 case=$3 warn=${4:-} f0=$fails
  cp "$T/stale" "$T/allowed" && : >"$T/stale"
  local s=${name#step-}
  s=$((10#${s%.h5}))
  mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$dir" -train_quiet 0 >"$T/rout" 2>"$T/rerr" ||
    { cat "$T/rout" "$T/rerr"; fail "$case: the resumed run failed"; return 1; }
  grep -q "^resuming from $dir/ckpt/$name (step $s)$" "$T/rout" ||
    { cat "$T/rout"; fail "$case: did not resume from $name"; return 1; }
  local first; first=$(grep -m 1 '^step ' "$T/rout" | sed 's|^step *\([0-9]*\)/.*|\1|')
  [ "$first" = "$((s + 1))" ] || fail "$case: the resumed run's first step is '$first', expected $((s + 1))"
  if [ -n "$warn" ]; then
    grep -q "^calmflow: warning: skipping checkpoint '$dir/ckpt/$warn': " "$T/rerr" ||
      { cat "$T/rerr"; fail "$case: no warning naming the skipped $warn"; }
    [ "$(grep -c '' "$T/rerr")" -eq 1 ] || { cat "$T/rerr"; fail "$case: stderr: more than the warning"; }
  elif [ -s "$T/rerr" ]; then
    cat "$T/rerr"; fail "$case: the resumed run wrote to stderr"
  fi
  local fin; fin=$(printf 'step-%07d.h5' $STEPS)
  [ "$(cat "$dir/ckpt/LATEST")" = "$fin" ] || fail "$case: LATEST after resume is $(cat "$dir/ckpt/LATEST")"
  verify "$dir/ckpt/$fin" || { cat "$T/vout"; fail "$case: final checkpoint does not verify"; }
  local steps; steps=$(sed 's/^{"step": \([0-9]*\),.*/\1/' "$dir/log.jsonl" | tr '\n' ' ')
  [ "$steps" = "$(seq -s ' ' 1 $STEPS) " ] || fail "$case: log.jsonl steps are '$steps'"
  local f left=""
  for f in $(ls "$dir/ckpt" | grep -v -x -e LATEST -e 'step-[0-9]*\.h5'); do
    if grep -q -x -F "$f" "$T/allowed"; then left="$left $f"; else fail "$case: $f left in ckpt/"; fi
  done
  [ $fails -eq $f0 ] || return 1
  echo "ok   $case: resumed from $name at step $first; final $fin verifies; ckpt/: $(ls "$dir/ckpt" | tr '\n' ' ')"
  [ -z "$left" ] || echo "     left after the resume: the killed write's temporary$left (stale, harmless, not removed)"
}

# stale DIR: note the temporary files a killed writer left in DIR/ckpt
stale() { ls "$1/ckpt" | grep -F '.tmp.' >"$T/stale"; }

# killed_job CASE RC WANT_LINE: the last run was stopped by the injected fault
killed_job() {
  local case=$1 rc=$2 want=$3
  if [ "$rc" -eq 0 ] || ! grep -q "$want" "$T/ferr"; then
    cat "$T/ferr"
    fail "$case: exit $rc and no '$want' (is the CF_FAULT site wired into the checkpoint writer?)"
    return 1
  fi
}

# ---- a clean run: the source of the truncation and bit-flip cases ----
t=$(ms)
train "$T/ref" || exit 1
NT=$($PY -c "
import h5py
n = []
h5py.File('$T/ref/ckpt/step-0000006.h5', 'r').visititems(
    lambda k, v: n.append(k) if isinstance(v, h5py.Dataset) else None)
print(len(n))")
SIZE=$(stat -c %s "$T/ref/ckpt/step-0000006.h5")
K=$((NT + NT / 2)) # the ckpt_write arrival in the middle of the 2nd checkpoint's tensors
echo "ok   clean run: $NT tensors, $SIZE bytes per checkpoint ($(( $(ms) - t )) ms)"
cp "$T/ref/ckpt/step-0000006.h5" "$T/orig.h5"

# ---- 1. rank 1 killed in the middle of the 2nd checkpoint's tensors ----
t=$(ms)
CF_FAULT=ckpt_write:1:$K:kill mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/c1" >/dev/null 2>"$T/ferr"
rc=$?
if killed_job "kill mid-write" $rc "injected fault: rank 1 kills itself .* at ckpt_write (occurrence $K)"; then
  echo "ok   kill mid-write: exit $rc, left: $(cd "$T/c1/ckpt" && ls -l step-0000004* 2>/dev/null | awk '{print $NF, $5, "bytes"}')"
  stale "$T/c1"
  committed "$T/c1" step-0000002.h5 && resumed "$T/c1" step-0000002.h5 "kill mid-write"
fi
echo "     case 1: $(( $(ms) - t )) ms"

# ---- 2. rank 0 killed after the write, before the rename ----
t=$(ms)
CF_FAULT=ckpt_rename:0:2:kill mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/c2" >/dev/null 2>"$T/ferr"
rc=$?
if killed_job "kill before rename" $rc "injected fault: rank 0 kills itself .* at ckpt_rename (occurrence 2)"; then
  echo "ok   kill before rename: exit $rc, left: $(cd "$T/c2/ckpt" && ls -l step-0000004* 2>/dev/null | awk '{print $NF, $5, "bytes"}')"
  stale "$T/c2"
  committed "$T/c2" step-0000002.h5 && resumed "$T/c2" step-0000002.h5 "kill before rename"
fi
echo "     case 2: $(( $(ms) - t )) ms"

# ---- 3. the newest checkpoint truncated to half; LATEST still names it ----
t=$(ms)
truncate -s $((SIZE / 2)) "$T/ref/ckpt/step-0000006.h5"
if verify "$T/ref/ckpt/step-0000006.h5"; then
  fail "truncated: verify passed"
elif [ "$(grep -c '' "$T/vout")" -ne 1 ] || ! grep -q "^calmflow: error: .*step-0000006.h5" "$T/vout"; then
  cat "$T/vout"; fail "truncated: verify did not answer with one error line naming the file"
else
  echo "ok   truncated: $(cat "$T/vout")"
fi
verify "$T/ref/ckpt/step-0000004.h5" || { cat "$T/vout"; fail "truncated: the previous checkpoint does not verify"; }
resumed "$T/ref" step-0000004.h5 "truncated newest" step-0000006.h5
echo "     case 3: $(( $(ms) - t )) ms"

# ---- 4. one flipped byte, 40 seeded trials ----
t=$(ms)
$PY - "$CF" "$T/orig.h5" "$T/flip" 40 <<'PYEOF' || fail "flipped bytes (see above)"
import os, random, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
import h5py, numpy as np
cf, orig, tdir, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.makedirs(tdir)
data = open(orig, "rb").read()
rng = random.Random(20261129)
trials = [(i, rng.randrange(len(data)), rng.randrange(1, 256)) for i in range(n)]

def contents(path):
    """Every dataset's bytes and every attribute (root and per dataset), by name."""
    out = {}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            out["@" + k] = np.asarray(v).tobytes()
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj.dtype.str + str(obj.shape) + ":" + obj[...].tobytes().hex()
                for k, v in obj.attrs.items():
                    out[name + "@" + k] = np.asarray(v).tobytes()
        f.visititems(visit)
    return out

ref = contents(orig)

def trial(spec):
    i, pos, x = spec
    b = bytearray(data)
    b[pos] ^= x
    p = f"{tdir}/flip{i:02d}.h5"
    open(p, "wb").write(b)
    try:
        r = subprocess.run([cf, "ckpt", "verify", p], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return i, pos, "fail", "hung (no answer in 60 s)"
    err = [l for l in r.stderr.splitlines() if l.strip()]
    if r.returncode < 0 or r.returncode >= 128:
        return i, pos, "fail", f"crashed (status {r.returncode}): " + " | ".join(err[:4])
    if any("Sanitizer" in l or "runtime error" in l for l in err):
        return i, pos, "fail", "sanitizer report: " + " | ".join(err[:4])
    if r.returncode != 0:
        if len(err) != 1 or not err[0].startswith("calmflow: error: "):
            return i, pos, "fail", f"exit {r.returncode} with {len(err)} stderr lines: " + " | ".join(err[:4])
        return i, pos, "rejected", err[0]
    if err:
        return i, pos, "fail", "passed but wrote to stderr: " + " | ".join(err[:4])
    try:
        got = contents(p)
    except Exception as e:
        return i, pos, "fail", f"verify passed but h5py cannot read the file: {e}"
    if got != ref:
        diff = sorted(k for k in set(got) | set(ref) if got.get(k) != ref.get(k))
        return i, pos, "fail", "verify passed on changed contents: " + ", ".join(diff[:5])
    return i, pos, "same", "passed, contents equal bit for bit"

with ThreadPoolExecutor(4) as ex:
    res = list(ex.map(trial, trials))
bad = [r for r in res if r[2] == "fail"]
for i, pos, kind, what in res:
    if kind != "rejected":
        print(f"     flip {i:2d} at byte {pos:6d}/{len(data)}: {kind}: {what}")
nrej = sum(r[2] == "rejected" for r in res)
nsame = sum(r[2] == "same" for r in res)
kinds = {}
for r in res:
    if r[2] == "rejected":
        key = "tensor checksum" if "fails its checksum" in r[3] else "metadata"
        kinds[key] = kinds.get(key, 0) + 1
print(f"{'FAIL' if bad else 'ok  '} flipped bytes: {n} trials: {nrej} rejected with one error line "
      f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), {nsame} passed with "
      f"contents equal bit for bit, {len(bad)} failures")
sys.exit(1 if bad else 0)
PYEOF
echo "     case 4: $(( $(ms) - t )) ms"

# ---- 5. no space: EFBIG under a file-size limit, then an injected ENOSPC ----
# All checkpoints of a run have the same size, so the first one is committed by a run without
# the limit (-train_steps 2); the limited run resumes from it and fails at the next one. Only
# the ranks get the limit (mpiexec's own files would not fit), and shared-memory transport is
# off for them (its segment files would not fit either).
nospace() { # CASE DIR EXPECTED_ERROR_SUBSTRING RC: the failed run; nothing half-written is left
  local case=$1 dir=$2 want=$3 rc=$4
  if [ "$rc" -ne 1 ]; then
    cat "$T/ferr"; fail "$case: exit $rc, expected 1 (an error, not a crash)"
  elif [ "$(grep -c '^calmflow: error: ' "$T/ferr")" -ne 1 ] || ! grep -q "^calmflow: error: .*$want" "$T/ferr"; then
    cat "$T/ferr"; fail "$case: expected one error line with '$want'"
  else
    echo "ok   $case: exit 1: $(grep '^calmflow: error: ' "$T/ferr")"
    local other; other=$(grep -v '^calmflow: error: ' "$T/ferr" | sort | uniq -c | sed 's/^ */     (MPI library: /;s/$/)/')
    [ -z "$other" ] || echo "$other"
  fi
  [ -e "$dir/ckpt/step-0000004.h5" ] && fail "$case: a step-0000004.h5 exists after the failed write"
  local extra; extra=$(ls "$dir/ckpt" | grep -v -x -e LATEST -e 'step-[0-9]*\.h5' | tr '\n' ' ')
  [ -z "$extra" ] || fail "$case: the failed write left $extra"
}
t=$(ms)
train "$T/c5" -train_steps 2
LIMIT=$((SIZE / 2 / 1024)) # KiB: the 113 kB checkpoint does not fit, log and LATEST do
OMPI_MCA_btl=self,tcp mpiexec --quiet -n 2 bash -c 'trap "" XFSZ; ulimit -f '$LIMIT'; exec "$0" "$@"' \
  "$CF" "${TR[@]}" -run_dir "$T/c5" >/dev/null 2>"$T/ferr"
rc=$?
nospace "file size limit" "$T/c5" "step-0000004.h5" $rc
committed "$T/c5" step-0000002.h5 && resumed "$T/c5" step-0000002.h5 "file size limit"
echo "     case 5a: $(( $(ms) - t )) ms"
t=$(ms)
CF_FAULT=ckpt_write:1:$K:enospc mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/c5b" >/dev/null 2>"$T/ferr"
rc=$?
if [ $rc -eq 0 ]; then
  fail "injected enospc: exit 0, the fault never fired (is the CF_FAULT site wired into the checkpoint writer?)"
else
  nospace "injected enospc" "$T/c5b" "injected fault at ckpt_write (enospc)" $rc
  [ "$(grep -c '' "$T/ferr")" -eq 1 ] || { cat "$T/ferr"; fail "injected enospc: more than one line on stderr"; }
  committed "$T/c5b" step-0000002.h5 && resumed "$T/c5b" step-0000002.h5 "injected enospc"
fi
echo "     case 5b: $(( $(ms) - t )) ms"

# ---- 6. kill -9 of the whole job while a checkpoint is being written ----
# Every rank pauses in the middle of the 2nd checkpoint's tensors (CF_FAULT delay); once its
# temporary file exists, the ranks and mpiexec get SIGKILL (a node lost, a hard time limit).
t=$(ms)
CF_FAULT="ckpt_write:*:$K:delay=60" mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/c6" >/dev/null 2>"$T/ferr" &
pid=$!
seen=0
for _ in $(seq 1 300); do
  if compgen -G "$T/c6/ckpt/step-0000004.h5.tmp.*" >/dev/null; then seen=1; break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
sleep 0.3 # well inside the 60 s pause
if [ $seen -eq 1 ] && kill -0 $pid 2>/dev/null; then
  kill -9 $(pgrep -P $pid) $pid 2>/dev/null
  wait $pid 2>/dev/null
  echo "ok   kill -9 during a checkpoint: left $(cd "$T/c6/ckpt" && ls step-0000004* 2>/dev/null | tr '\n' ' ')"
  stale "$T/c6"
  committed "$T/c6" step-0000002.h5 && resumed "$T/c6" step-0000002.h5 "kill -9 of the job"
else
  kill -9 $(pgrep -P $pid) $pid 2>/dev/null
  wait $pid 2>/dev/null
  fail "kill -9 of the job: the job did not pause inside the 2nd checkpoint (CF_FAULT ckpt_write delay)"
fi
echo "     case 6: $(( $(ms) - t )) ms"

echo "test_ckpt_faults: $(( ($(ms) - T0) / 1000 )) s in all"
if [ $fails -ne 0 ]; then echo "test_ckpt_faults: $fails failures"; exit 1; fi
echo "test_ckpt_faults: ok"
