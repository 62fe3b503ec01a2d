#!/usr/bin/env bash
# test_mpichunk_cli.sh: every large MPI transfer of the binary goes through mpichunk.h, so
# lowering the limit to a few elements (CF_MPI_CHUNK) changes no bit of what it computes, at 2
# ranks: training at dp2 (gradient buckets), tp2 (activation sums), pp2 (stage sends), cp2
# (ring attention) and ZeRO-1 (parameter all-gathers) — the loss of every step and the final
# parameters and moments; sampling at dp2, tp2, pp2 and cp2 (coordinator messages, KV
# all-gathers, pipeline sends) and the CFM baseline (sample gather, OT batch all-gather); and
# calmflow eval (the point sets' row gathers, the Frechet and Sinkhorn all-reduces); `calmflow
# data -data_h5ad` (gene statistics, kept cells, PCA) and training with text prompts.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fails=0
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
TR=(train -train_steps 3 -train_batch 32 -net_hidden 16 -train_quiet 1 -train_log_every 1
    -flow_spatial_tokens 2 -flow_trajectories 4 -flow_time_points 6)
# twice NAME args...: calmflow at 2 ranks without and with CF_MPI_CHUNK=5 ({} in args: 1 / 2)
twice() {
  local name=$1; shift
  for k in 1 2; do
    local chunk=() a=("${@//\{\}/$k}")
    [ $k = 2 ] && chunk=(env CF_MPI_CHUNK=5)
    "${chunk[@]}" mpiexec --quiet -n 2 "$CF" "${a[@]}" >"$T/$name.$k.out" 2>&1 ||
      { cat "$T/$name.$k.out"; bad "$name (run $k) failed"; return 1; }
  done
}
same_h5() { # A B DATASETS...: bit-identical
  $PY - "$@" <<'PYEOF'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
names = []
for g in sys.argv[3:]:
    names += [f"{g}/{k}" for k in a[g]] if isinstance(a[g], h5py.Group) else [g]
for k in names:
    assert np.array_equal(a[k][...], b[k][...]), f"{k} differs"
PYEOF
}

for lay in dp2: tp2:-par_tp+2 pp2:-par_pp+2+-train_microbatches+2 cp2:-par_cp+2 zero:-par_zero+1; do
  name=${lay%%:*} opts=${lay#*:}
  twice "train-$name" "${TR[@]}" ${opts//+/ } -run_dir "$T/$name.{}" || continue
  if same_h5 "$T/$name.1/ckpt/step-0000003.h5" "$T/$name.2/ckpt/step-0000003.h5" params adam_m adam_v &&
     cmp -s <(sed 's/"tokens_per_s.*//' "$T/$name.1/log.jsonl") <(sed 's/"tokens_per_s.*//' "$T/$name.2/log.jsonl"); then
    echo "ok   train $name: losses and final state bit-identical with CF_MPI_CHUNK=5"
  else
    bad "train $name: CF_MPI_CHUNK=5 changed the result"
  fi
done

for lay in dp2: tp2:-par_tp+2 pp2:-par_pp+2 cp2:-par_cp+2; do
  name=${lay%%:*} opts=${lay#*:}
  twice "sample-$name" sample -run_dir "$T/dp2.1" -sample_n 40 -sample_batch 3 -sample_quiet 1 \
    -sample_traj 1 ${opts//+/ } -sample_out "$T/s-$name.{}.h5" || continue
  same_h5 "$T/s-$name.1.h5" "$T/s-$name.2.h5" x traj &&
    echo "ok   sample $name: /x and /traj bit-identical" || bad "sample $name differs"
done

twice cfm-train train -model cfm -train_steps 3 -train_batch 64 -net_hidden 16 -train_quiet 1 \
  -run_dir "$T/cfm.{}" &&
  same_h5 "$T/cfm.1/ckpt/step-0000003.h5" "$T/cfm.2/ckpt/step-0000003.h5" params adam_m adam_v &&
  twice cfm-sample sample -run_dir "$T/cfm.1" -sample_n 40 -sample_batch 7 -sample_quiet 1 \
    -sample_out "$T/c.{}.h5" &&
  same_h5 "$T/c.1.h5" "$T/c.2.h5" x && echo "ok   cfm: training and samples bit-identical" ||
  bad "cfm differs"

"$CF" data -data_name moons -data_n 500 -data_out "$T/d.h5" >/dev/null
twice eval eval -eval_a "$T/s-dp2.1.h5" -eval_b "$T/d.h5" -eval_out "$T/e.{}.json" &&
  cmp -s "$T/e.1.json" "$T/e.2.json" && echo "ok   eval: metrics.json identical" || bad "eval differs"

# single-cell data: the gene statistics' reduce and broadcasts, the kept-cell all-gather and
# the PCA's Gram panel all-gathers; then prompt training on it (the token broadcasts)
SRC=${CF_SOURCE_DIR:?set by ctest}
twice h5ad data -data_h5ad "$SRC/tests/data/h5ad/scprep_60x200.h5ad" -data_min_genes 20 \
  -data_hvg 50 -data_pca 6 -data_obs condition,hours -data_out "$T/h.{}.h5" &&
  same_h5 "$T/h.1.h5" "$T/h.2.h5" x pca obs && echo "ok   data -data_h5ad: /x, /pca, /obs bit-identical" ||
  bad "data -data_h5ad differs"
twice prompt train -train_steps 2 -train_batch 16 -net_hidden 16 -train_quiet 1 \
  -flow_time_points 4 -flow_trajectories 2 -data_train "$T/h.1.h5" -data_dim 6 \
  -data_prompt "a cell at {hours} hours, {condition}" \
  -tok_encoder "$SRC/tests/data/bpe/encoder.json" -tok_vocab "$SRC/tests/data/bpe/vocab.bpe" \
  -run_dir "$T/p.{}" &&
  same_h5 "$T/p.1/ckpt/step-0000002.h5" "$T/p.2/ckpt/step-0000002.h5" params adam_m adam_v &&
  echo "ok   prompt training: final state bit-identical" || bad "prompt training differs"

if [ $fails -ne 0 ]; then echo "test_mpichunk_cli: $fails failures"; exit 1; fi
echo "test_mpichunk_cli: ok"
