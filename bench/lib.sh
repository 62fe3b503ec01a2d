# bench/lib.sh: helpers for benchmarks on a shared machine (sourced, not run). The same
# quiet-machine checks bench/layouts.sh, bench/sample.sh and bench/ckpt.sh carry inline, in one
# place for new scripts (bench/perf.sh).
#
# Needs: CORES (online cores). Optional: DISTURBED (0.2), QUIET_WAIT (10), QUIET_TOTAL (60).
#   busy_cores          cores other processes kept busy over half a second (/proc/stat; call it
#                       while none of ours runs)
#   wait_quiet          wait (at most QUIET_WAIT s, QUIET_TOTAL s over the whole script) until
#                       other processes use under DISTURBED cores; sets BUSY to what they used
#                       when it gave up or succeeded
#   cpu_mark FILE       record now, the machine's busy and total CPU seconds and the CPU seconds
#                       of this shell's finished children (call it in the main shell, not a
#                       subshell: `times` sees only this shell's children)
#   others_during M0 M1 print "wall others": wall seconds between two marks and the cores that
#                       processes other than our children used meanwhile
# shellcheck shell=bash

CORES=${CORES:-$(getconf _NPROCESSORS_ONLN)}
DISTURBED=${DISTURBED:-0.2}
QUIET_WAIT=${QUIET_WAIT:-10}
QUIET_TOTAL=${QUIET_TOTAL:-60}
waited=0

busy_cores() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
  awk -v a="$a" -v b="$b" -v n="$CORES" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.2f", (y[2] > x[2] ? n * (y[1] - x[1]) / (y[2] - x[2]) : 0) }'
}

wait_quiet() {
  local t=0
  BUSY=$(busy_cores)
  while awk -v b="$BUSY" -v d="$DISTURBED" 'BEGIN { exit !(b > d) }' &&
    [ "$t" -lt "$QUIET_WAIT" ] && [ "$waited" -lt "$QUIET_TOTAL" ]; do
    sleep 1
    t=$((t + 1)) waited=$((waited + 1))
    BUSY=$(busy_cores)
  done
}

cpu_mark() {
  local t
  times >"$1.times"
  t=$(tail -1 "$1.times")
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" -v now="$(date +%s.%N)" '/^cpu / {
    split(t, c, /[ms ]+/)
    printf "%s %.4f %.4f %.4f\n", now, ($2 + $3 + $4 + $7 + $8) / hz,
      ($2 + $3 + $4 + $5 + $6 + $7 + $8) / hz, 60 * c[1] + c[2] + 60 * c[3] + c[4] }' \
    /proc/stat >"$1"
}

others_during() {
  awk 'NR == FNR { a = $1; b = $2; c = $4; next } {
    w = $1 - a; o = w > 0 ? (($2 - b) - ($4 - c)) / w : 0
    printf "%.2f %.2f\n", w, o < 0 ? 0 : o }' "$1" "$2"
}
