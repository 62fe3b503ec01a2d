#!/usr/bin/env bash
# test_slurm_scaling.sh: jobs/scaling.sbatch at 1 and 2 ranks on a real (throw-away, one-node)
# Slurm cluster, strong and weak, layouts data parallel and TP2. Each run appends one row to
# the results table: 2 rows from the 1-rank job (TP2 needs 2 ranks: skipped), 4 from the
# 2-rank job, with layout, ranks, batch, tokens/s, communication share and checkpoint seconds;
# MFU only where CF_PEAK_GFLOPS was given. analysis/plot_scaling_study.py then draws the
# efficiencies, and refuses a missing table with one error line.
. "$CF_SOURCE_DIR/tests/slurm/common.sh"
JOBS=$SRC/jobs
MODEL=(-flow_trajectories 4 -flow_time_points 6 -net_hidden 16 -net_heads 2 -net_layers 1 -seed 4)
export CF_SCALING_LAYOUTS="1:1:1 2:1:1" CF_SCALING_STEPS=20 CF_SCALING_BATCH=32
TABLE=$T/work/results/scaling.jsonl
export CF_SCALING_TABLE=$TABLE

j1=$(sbatch --parsable -n 1 -t 10 -J cf-test-scaling1 "$JOBS/scaling.sbatch" "${MODEL[@]}") ||
  fail "sbatch -n 1 scaling.sbatch"
j2=$(CF_PEAK_GFLOPS=50 CF_SCALING_STUDY=np2 sbatch --parsable -n 2 -c 1 -t 10 -J cf-test-scaling2 \
  "$JOBS/scaling.sbatch" "${MODEL[@]}") || fail "sbatch -n 2 scaling.sbatch"
for j in "$j1" "$j2"; do
  st=$(wait_job "$j" 120 "calmflow-scaling-$j.out")
  [ "$st" = "COMPLETED 0:0 0" ] || { dump_job "$j" "calmflow-scaling-$j.out"; fail "scaling job $j ended '$st'"; }
done
grep -q 'skip layout 2:1:1 at 1 ranks' "calmflow-scaling-$j1.out" || { cat "calmflow-scaling-$j1.out"; fail "no skip line"; }
echo "scaling jobs $j1 (1 rank) and $j2 (2 ranks) completed ($(elapsed) s)"
$PY - "$TABLE" "$j1" "$j2" <<'PYEOF' || { cat "$TABLE"; fail "the results table"; }
import json, sys
table, j1, j2 = sys.argv[1:4]
rows = [json.loads(l) for l in open(table)]
got = sorted((r["job"], r["mode"], r["layout"], r["ranks"], r["batch"]) for r in rows)
want = sorted([(j1, "strong", "dp1.tp1.pp1.cp1", 1, 32), (j1, "weak", "dp1.tp1.pp1.cp1", 1, 32),
               (j2, "strong", "dp2.tp1.pp1.cp1", 2, 32), (j2, "strong", "dp1.tp2.pp1.cp1", 2, 32),
               (j2, "weak", "dp2.tp1.pp1.cp1", 2, 64), (j2, "weak", "dp1.tp2.pp1.cp1", 2, 64)])
assert got == want, got
for r in rows:
    assert r["exit_code"] == 0 and r["steps"] == 20, r
    assert r["tokens_per_s"] > 0 and 0 < r["step_seconds"] < 10, r
    assert r["ckpt_seconds"] is not None and 0 <= r["ckpt_seconds"] < r["seconds"], r
    assert r["comm_share"] is not None and 0 <= r["comm_share"] <= 1.5, r
    if r["ranks"] == 2:
        assert r["comm_share"] > 0 and r["comm_seconds_per_step"] > 0, r
        assert r["study"] == "np2" and r["mfu"] is not None and 0 < r["mfu"] < 1, r
    else:
        assert r["study"] == "scaling" and r["mfu"] is None and r["comm_share"] == 0, r
print(f"{len(rows)} rows: layouts, ranks, batches as expected; tokens/s, comm share, "
      f"checkpoint seconds present; MFU only with CF_PEAK_GFLOPS")
PYEOF
# the two studies in one plot: relabel so the efficiencies share the 1-rank baseline
sed 's/"study": "np2"/"study": "scaling"/' "$TABLE" >"$T/one.jsonl"
$PY "$SRC/analysis/plot_scaling_study.py" "$T/one.jsonl" -o "$T/scaling.png" >"$T/plot.out" 2>&1 ||
  { cat "$T/plot.out"; fail "plot_scaling_study.py"; }
grep -q '^scaling strong tp1.pp1.cp1 ranks 1: .* efficiency 1.000' "$T/plot.out" &&
  grep -q '^scaling weak tp1.pp1.cp1 ranks 2: .* efficiency ' "$T/plot.out" &&
  grep -q '^scaling strong tp2.pp1.cp1 ranks 2: .* efficiency ' "$T/plot.out" ||
  { cat "$T/plot.out"; fail "plot output lines"; }
[ -s "$T/scaling.png" ] && [ "$(head -c 4 "$T/scaling.png" | od -An -c | tr -d ' ')" = '211PNG' ] ||
  fail "no PNG written"
cat "$T/plot.out"
if $PY "$SRC/analysis/plot_scaling_study.py" "$T/missing.jsonl" -o "$T/x.png" >"$T/err" 2>&1; then
  fail "a missing table was accepted"
fi
[ "$(grep -c '' "$T/err")" -eq 1 ] && grep -q '^plot_scaling_study: error: results table not found' "$T/err" ||
  { cat "$T/err"; fail "missing table: expected one error line"; }
echo "test_slurm_scaling: ok ($(elapsed) s)"
