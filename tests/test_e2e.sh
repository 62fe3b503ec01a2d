#!/usr/bin/env bash
# test_e2e.sh NP: the default experiment (configs/demo.yaml, 8 Gaussians -> moons) trains on NP
# ranks and its samples reach W2 <= 2.5x the noise floor W2(fresh data, fresh data).
#   CF_E2E_STEPS overrides the training length (default: the config's).
set -u
NP=${1:-1}
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
R="$T/run"
extra=()
[ -n "${CF_E2E_STEPS:-}" ] && extra+=(-train_steps "$CF_E2E_STEPS")
set -e
mpiexec -n "$NP" "$CF" train -options_file_yaml "$SRC/configs/demo.yaml" -run_dir "$R" \
  -train_quiet 1 "${extra[@]}"
mpiexec -n "$NP" "$CF" data -data_name moons -data_n 2000 -seed 101 -data_out "$T/data.h5"
mpiexec -n "$NP" "$CF" data -data_name moons -data_n 2000 -seed 202 -data_out "$T/ref.h5"
mpiexec -n "$NP" "$CF" sample -run_dir "$R" -sample_n 2000 -seed 7 -sample_quiet 1
mpiexec -n "$NP" "$CF" eval -eval_a "$R/samples.h5" -eval_b "$T/data.h5" -eval_ref "$T/ref.h5" \
  -eval_out "$T/metrics.json"
set +e
/usr/bin/python3 - "$T/metrics.json" "$NP" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"np {sys.argv[2]}: W2 {m['w2']:.4f}, noise floor {m['w2_floor']:.4f}, ratio {m['w2_ratio']:.3f} (target <= 2.5)")
sys.exit(0 if m["w2_ratio"] <= 2.5 else 1)
PYEOF
