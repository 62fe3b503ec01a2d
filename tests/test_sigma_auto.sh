#!/usr/bin/env bash
# test_sigma_auto.sh: the default bridge noise -flow_sigma auto = min(1, 2 sqrt(2 / D)) (1 up to
# D = 8, 0.28 at D = 100; docs/results.md, "Larger budget"), 1 for the other noisy paths, a
# number given explicitly kept as it is; config.yaml keeps "auto" (resolved again from the run's
# D wherever the run is read), and sampling from such a run works.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
TR=(train -train_steps 1 -train_batch 8 -net_hidden 8 -net_heads 2 -net_layers 1
    -data_name gaussian -run_overwrite 1)

# want D WANT [options]: the train banner says sigma=WANT
want() {
  local D=$1 w=$2; shift 2
  "$CF" "${TR[@]}" -run_dir "$T/r$D" -data_dim "$D" "$@" >"$T/out" 2>&1 || {
    cat "$T/out"; bad "train D $D $*"; return; }
  grep -q " sigma=$w," "$T/out" || { head -1 "$T/out"; bad "D $D $*: expected sigma=$w"; }
}
want 1 1
want 2 1
want 8 1
want 100 0.282843
want 1000 0.0894427
want 100 0.5 -flow_sigma 0.5
want 100 1 -flow_path noisy
grep -q '^flow_sigma: "auto"' "$T/r1000/config.yaml" || bad "config.yaml does not keep auto"

# sampling reads the run's config with "auto" in it
"$CF" "${TR[@]}" -run_dir "$T/s" -data_dim 100 >/dev/null 2>&1 || bad "train D 100 for sample"
"$CF" sample -run_dir "$T/s" -sample_n 8 -sample_out "$T/s.h5" -sample_quiet 1 >"$T/sout" 2>&1 ||
  { cat "$T/sout"; bad "sample"; }
[ -s "$T/s.h5" ] || bad "no samples"

[ $fails -eq 0 ] || exit 1
echo "test_sigma_auto: ok"
