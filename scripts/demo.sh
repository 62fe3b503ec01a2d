#!/usr/bin/env bash
# demo.sh: the default experiment end to end on 2 MPI ranks — 8 Gaussians -> two moons in 2-D
# with the Gaussian velocity head on Brownian-bridge paths (configs/demo.yaml): train, sample,
# evaluate against fresh data and its noise floor, plot. Writes runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh
NP=${NP:-2}
CONFIG=${CONFIG:-configs/demo.yaml}
R=${RUN_DIR:-runs/demo}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(getconf _NPROCESSORS_ONLN)" --target calmflow >/dev/null
CF="mpiexec -n $NP build/calmflow"
start=$(date +%s)
mkdir -p "$R"
$CF train -options_file_yaml "$CONFIG" -run_dir "$R" -run_overwrite 1
$CF data -data_name moons -data_dim 2 -data_n 2000 -seed 101 -data_out "$R/data.h5"
$CF data -data_name moons -data_dim 2 -data_n 2000 -seed 202 -data_out "$R/data_ref.h5"
$CF sample -run_dir "$R" -sample_n 2000 -sample_traj 1 -seed 7
$CF eval -eval_a "$R/samples.h5" -eval_b "$R/data.h5" -eval_ref "$R/data_ref.h5" \
  -eval_out "$R/metrics.json"
/usr/bin/python3 analysis/plot_samples.py "$R" -o "$R/samples.png"
cat "$R/metrics.json"
echo "demo finished in $(( $(date +%s) - start )) s: $R/samples.png"
