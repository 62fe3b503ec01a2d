#!/usr/bin/env bash
# test_faults.sh: injected faults through the real binary (CF_FAULT, include/calmflow/fault.h).
#  - a rank that hangs before the gradient all-reduce: the watchdog (-par_timeout) of the rank
#    waiting for it ends the job with exit code 3 and one "stuck" line naming the step;
#  - a pipeline stage that hangs before a send: the next stage's watchdog names the receive,
#    the peer, the step, its stage and the micro-batch;
#  - an injected I/O error at the all-reduce or in sampling: one error line, exit 1, no output;
#  - a malformed CF_FAULT: one error line naming the variable.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
TR=(train -train_steps 6 -train_batch 32 -net_hidden 16 -train_quiet 1 -train_log_every 1)

start=$(date +%s)
CF_FAULT=grad_allreduce:1:3:hang timeout 60 mpiexec --quiet -n 2 "$CF" "${TR[@]}" \
  -run_dir "$T/hang" -par_timeout 2 >"$T/out" 2>"$T/err"
rc=$?
took=$(( $(date +%s) - start ))
if [ $rc -ne 3 ] || ! grep -q "stuck .* in grad_allreduce (collective) at step 2" "$T/err" ||
   [ "$(grep -c stuck "$T/err")" -ne 1 ] || [ $took -gt 30 ]; then
  echo "FAIL hang: exit $rc after ${took}s (want 3 within 30 s):"; cat "$T/err"; fails=$((fails + 1))
else
  echo "ok   hang: exit 3 after ${took}s: $(grep stuck "$T/err")"
fi

# a pipeline stage that hangs before sending micro-batch 1's activations (2nd send, step 0):
# the next stage, waiting in its receive, names the operation, the peer, step, stage and
# micro-batch
start=$(date +%s)
CF_FAULT=pipeline_send:0:2:hang timeout 60 mpiexec --quiet -n 2 "$CF" "${TR[@]}" -par_pp 2 \
  -net_layers 2 -train_microbatches 2 -run_dir "$T/pphang" -par_timeout 2 >"$T/out" 2>"$T/err"
rc=$?
took=$(( $(date +%s) - start ))
want="stuck .* in pp_recv_activation (peer 0) at step 0, stage 1, micro-batch 1"
if [ $rc -ne 3 ] || ! grep -q "$want" "$T/err" || [ "$(grep -c stuck "$T/err")" -ne 1 ] ||
   [ $took -gt 30 ]; then
  echo "FAIL pipeline hang: exit $rc after ${took}s (want 3 and '$want'):"; cat "$T/err"
  fails=$((fails + 1))
else
  echo "ok   pipeline hang: exit 3 after ${took}s: $(grep stuck "$T/err")"
fi

check() { # NAME WANT_SUBSTRING -- command...: exit 1 and the error line
  local name=$1 want=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ $rc -ne 1 ] || ! grep -q "^calmflow: error: .*$want" "$T/err" ||
     [ "$(grep -c 'calmflow: error' "$T/err")" -ne 1 ]; then
    echo "FAIL $name: exit $rc:"; cat "$T/err"; fails=$((fails + 1))
  else
    echo "ok   $name: $(grep 'calmflow: error' "$T/err")"
  fi
}
CF_FAULT=grad_allreduce:1:2:eio check eio-allreduce "injected fault at grad_allreduce" \
  timeout 60 mpiexec --quiet -n 2 "$CF" "${TR[@]}" -run_dir "$T/eio" -par_timeout 20
CF_FAULT=nonsense check malformed "CF_FAULT" mpiexec --quiet -n 1 "$CF" "${TR[@]}" -run_dir "$T/bad"
mpiexec --quiet -n 1 "$CF" "${TR[@]}" -run_dir "$T/ok" >/dev/null 2>&1 || { echo "FAIL clean run"; fails=$((fails + 1)); }
# the samples file streams: a failed sampling leaves it unfinished (complete = 0), never
# marked complete
CF_FAULT=sample_batch:*:1:eio check eio-sample "injected fault at sample_batch" \
  mpiexec --quiet -n 2 "$CF" sample -run_dir "$T/ok" -sample_n 50 -sample_out "$T/s.h5"
if [ -e "$T/s.h5" ] && ! /usr/bin/python3 -c "import h5py, sys
sys.exit(int(h5py.File(sys.argv[1], 'r').attrs['complete']) != 0)" "$T/s.h5"; then
  echo "FAIL failed sampling left $T/s.h5 marked complete"; fails=$((fails + 1))
fi

if [ $fails -ne 0 ]; then echo "test_faults: $fails failures"; exit 1; fi
echo "test_faults: ok"
