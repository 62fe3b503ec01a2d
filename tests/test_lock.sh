#!/usr/bin/env bash
# test_lock.sh: one `calmflow train` per run directory. While a run holds <run_dir>/.lock, a
# second train on the same directory (2 ranks or 1) exits 1 with one error line naming the
# directory and the holder (pid and host from the lock file) and changes nothing; once the
# first run is killed with SIGKILL the kernel has dropped its lock and a third run takes the
# directory and resumes from its last checkpoint. A lock file with no holder (or one left in a
# new directory) does not count as a run.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
apid=
cleanup() {
  [ -n "$apid" ] && kill -KILL $(pgrep -P "$apid") "$apid" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL $*"; exit 1; }
TR=(train -train_batch 8 -flow_trajectories 4 -flow_time_points 4 -net_hidden 8 -net_layers 1
    -train_log_every 1 -train_ckpt_every 10 -train_ckpt_keep 2 -train_quiet 1 -seed 3)
R=$T/run

# the first run: far more steps than it will get to do
mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 100000 -run_dir "$R" >"$T/a.out" 2>&1 &
apid=$!
for _ in $(seq 1 300); do
  [ -f "$R/ckpt/LATEST" ] && [ -s "$R/.lock" ] && break
  kill -0 $apid 2>/dev/null || { cat "$T/a.out"; fail "the first run ended early"; }
  sleep 0.05
done
[ -f "$R/ckpt/LATEST" ] || fail "the first run wrote no checkpoint"
read -r hpid hhost hstart <"$R/.lock" || fail "lock file: $(cat "$R/.lock")"
[ "$(ps -o ppid= -p "$hpid" | tr -d ' ')" = "$apid" ] ||
  fail "the lock names pid $hpid, not a rank of the first run (mpiexec $apid)"
[ "$hhost" = "$(hostname)" ] || fail "the lock names host '$hhost', expected $(hostname)"
echo "ok   lock held by pid $hpid on $hhost since $hstart"
sum0=$(md5sum "$R/config.yaml")

# a second run on the same directory, with a free option changed (it would otherwise resume
# and rewrite config.yaml): refused on every rank, exit 1, one error line
second() { # NP
  local rc
  if [ "$1" = 1 ]; then
    "$CF" "${TR[@]}" -train_steps 100000 -train_log_every 2 -run_dir "$R" >"$T/b.out" 2>"$T/b.err"
  else
    mpiexec --quiet -n "$1" "$CF" "${TR[@]}" -train_steps 100000 -train_log_every 2 -run_dir "$R" \
      >"$T/b.out" 2>"$T/b.err"
  fi
  rc=$?
  [ $rc -eq 1 ] || { cat "$T/b.out" "$T/b.err"; fail "second run at $1 rank(s): exit $rc, expected 1"; }
  [ "$(grep -c '^calmflow:' "$T/b.err")" -eq 1 ] || { cat "$T/b.err"; fail "expected one error line"; }
  grep -q "^calmflow: error: run directory '$R' is in use by another calmflow train (pid $hpid on host $hhost, started $hstart" "$T/b.err" ||
    { cat "$T/b.err"; fail "the error line does not name the directory and the holder"; }
  [ ! -s "$T/b.out" ] || { cat "$T/b.out"; fail "the refused run printed to stdout"; }
  kill -0 $apid 2>/dev/null || fail "the first run died while the second was refused"
  echo "ok   second run at $1 rank(s) refused: $(cat "$T/b.err")"
}
second 2
second 1
[ "$(md5sum "$R/config.yaml")" = "$sum0" ] || fail "the refused run changed config.yaml"

# SIGKILL the first run's rank 0 (mpiexec ends the other rank): no cleanup runs, yet the lock
# goes with the process
kill -KILL "$hpid"
wait $apid
rc=$?
apid=
[ $rc -ne 0 ] || fail "the killed run exited 0"
latest=$(cat "$R/ckpt/LATEST")
k=$((10#$(echo "$latest" | sed 's/step-\([0-9]*\)\.h5/\1/')))
[ "$k" -ge 10 ] || fail "LATEST is '$latest'"

# a third run takes the directory and resumes from the last checkpoint, to 5 steps further
mpiexec -n 2 "$CF" "${TR[@]}" -train_steps $((k + 5)) -train_quiet 0 -run_dir "$R" >"$T/c.out" 2>&1 ||
  { cat "$T/c.out"; fail "the third run could not take the directory"; }
grep -q "^resuming from $R/ckpt/$latest (step $k)" "$T/c.out" || { cat "$T/c.out"; fail "did not resume from $latest"; }
[ "$(tail -n 1 "$R/log.jsonl" | sed 's/{"step": \([0-9]*\),.*/\1/')" = $((k + 5)) ] ||
  fail "log.jsonl does not end at step $((k + 5))"
[ "$(grep -c '' "$R/log.jsonl")" = $((k + 5)) ] || fail "log.jsonl has $(grep -c '' "$R/log.jsonl") lines, expected $((k + 5))"
read -r cpid _ <"$R/.lock"
[ "$cpid" != "$hpid" ] || fail "the lock file still names the killed run"
echo "ok   after SIGKILL a third run resumed from $latest (step $k) and ran to step $((k + 5))"

# a lock file nobody holds, in a new directory: not a run, not a lock
mkdir -p "$T/fresh" && echo "1 elsewhere 2000-01-01T00:00:00+0000" >"$T/fresh/.lock"
"$CF" "${TR[@]}" -train_steps 3 -run_dir "$T/fresh" >"$T/d.out" 2>&1 ||
  { cat "$T/d.out"; fail "a stale lock file blocked a new run"; }
# a run refused after the lock was taken (a -train_resume file that does not exist) leaves the
# new directory holding only .lock, which the next run starts in without -run_overwrite
"$CF" "${TR[@]}" -train_steps 3 -run_dir "$T/new" -train_resume "$T/none.h5" >"$T/e.out" 2>&1 &&
  fail "a missing -train_resume file was accepted"
[ "$(ls -A "$T/new" 2>/dev/null)" = ".lock" ] || fail "the refused run left '$(ls -A "$T/new")'"
"$CF" "${TR[@]}" -train_steps 3 -run_dir "$T/new" >"$T/e.out" 2>&1 ||
  { cat "$T/e.out"; fail "a directory holding only .lock was taken for a run"; }
echo "ok   a lock file alone is neither a lock nor a run"
echo "test_lock: ok"
