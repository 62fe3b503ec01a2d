#!/usr/bin/env bash
# test_watchdog.sh: the -par_timeout watchdog ends a hung 2-rank job, and only then.
#   usage: test_watchdog.sh TEST_WATCHDOG_BINARY [MPIEXEC]
# Runs `test_watchdog loop` (2 ranks, one MPI_Allreduce per step inside
# cf_watchdog_enter/leave, watchdog timeout 2 s):
#   control   no CF_FAULT, 150 steps of 20 ms (3 s in all, longer than the timeout): exit 0,
#             no "stuck" line, well within 15 s
#   slow      CF_FAULT=grad_allreduce:1:3:delay=1: rank 0 waits 1 s in step 3's all-reduce,
#             under the timeout: exit 0, no "stuck" line
#   hang      CF_FAULT=grad_allreduce:1:3:hang: rank 1 stops outside communication before its
#             3rd all-reduce; rank 0 waits inside it. The job must end within 15 s with exit
#             status 3 (CF_EXIT_WATCHDOG, as mpiexec passes it on), and stderr must hold
#             exactly one "stuck" line, naming rank 0, grad_allreduce and step 3
#   malformed CF_FAULT=grad_allreduce:1:x:hang: exit 1 with an error naming CF_FAULT
set -u
BIN=${1:?usage: test_watchdog.sh TEST_WATCHDOG_BINARY [MPIEXEC]}
MPIEXEC=${2:-mpiexec}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
fail() {
  echo "FAIL $*"
  fails=$((fails + 1))
}

# run NAME FAULT ARGS...: run the loop under a 60 s guard; sets rc and secs, output in $T/NAME.*
run() {
  local name=$1 fault=$2
  shift 2
  local t0 t1
  t0=$(date +%s.%N)
  if [ -n "$fault" ]; then
    CF_FAULT=$fault timeout -k 5 60 "$MPIEXEC" -n 2 "$BIN" loop "$@" >"$T/$name.out" 2>"$T/$name.err"
  else
    env -u CF_FAULT timeout -k 5 60 "$MPIEXEC" -n 2 "$BIN" loop "$@" >"$T/$name.out" 2>"$T/$name.err"
  fi
  rc=$?
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "---- $name: exit $rc after $secs s"
  sed 's/^/  stdout: /' "$T/$name.out"
  sed 's/^/  stderr: /' "$T/$name.err"
}

under() { awk -v s="$1" -v lim="$2" 'BEGIN { exit !(s < lim) }'; }

run control "" 2 150 20
[ "$rc" -eq 0 ] || fail "control: exit $rc, want 0"
under "$secs" 15 || fail "control: took $secs s"
grep -q stuck "$T/control.err" && fail "control: a stuck line without a fault"
grep -q "test_watchdog loop: ok" "$T/control.out" || fail "control: no ok line"

run slow "grad_allreduce:1:3:delay=1" 2 5 0
[ "$rc" -eq 0 ] || fail "slow: exit $rc, want 0 (a 1 s wait is under the 2 s timeout)"
grep -q stuck "$T/slow.err" && fail "slow: a stuck line for a 1 s wait"

run hang "grad_allreduce:1:3:hang" 2 10 0
[ "$rc" -eq 3 ] || fail "hang: exit $rc, want 3 (CF_EXIT_WATCHDOG)"
under "$secs" 15 || fail "hang: took $secs s, want < 15 s"
nstuck=$(grep -c stuck "$T/hang.err")
[ "$nstuck" -eq 1 ] || fail "hang: $nstuck stuck lines, want exactly 1"
grep -Eq '^calmflow: error: rank 0 stuck [0-9]+\.[0-9] s in grad_allreduce \(collective\) at step 3, stage 0, micro-batch 0; -par_timeout 2 exceeded, aborting$' "$T/hang.err" ||
  fail "hang: no stuck line for rank 0 at step 3 in the expected form"
grep -q "calmflow: injected fault: rank 1 hangs at grad_allreduce (occurrence 3)" "$T/hang.err" ||
  fail "hang: the injected hang was not announced"
grep -q "test_watchdog loop: ok" "$T/hang.out" && fail "hang: the loop finished"

run malformed "grad_allreduce:1:x:hang" 2 3 0
[ "$rc" -eq 1 ] || fail "malformed: exit $rc, want 1"
grep -q "calmflow: error: CF_FAULT: .*occurrence 'x'" "$T/malformed.err" ||
  fail "malformed: no error naming CF_FAULT"

# No process of ours may outlive the job (the hung rank 1 must have been ended too).
if pgrep -f -- "$BIN loop" >/dev/null; then
  fail "a test_watchdog process is still running after its job ended"
  pgrep -af -- "$BIN loop"
fi

if [ "$fails" -eq 0 ]; then
  echo "test_watchdog.sh: ok"
else
  echo "test_watchdog.sh: $fails failures"
fi
[ "$fails" -eq 0 ]
