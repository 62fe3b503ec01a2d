#!/usr/bin/env bash
# test_slurm_experiments.sh: jobs/experiments.sbatch on a real (throw-away, one-node) Slurm
# cluster: the CI-size trajectory / token sweep runs as one job to the end (rows, table, plots),
# and the same job submitted again keeps every finished run and sample set (--resume): it trains
# and samples nothing and
# rewrites the same table.
. "$CF_SOURCE_DIR/tests/slurm/common.sh"
JOBS=$SRC/jobs
ARGS=(--size ci --groups trajtok)
out=runs/experiments-ci

j=$(sbatch --parsable -n 1 -t 10 -J cf-test-exp "$JOBS/experiments.sbatch" "${ARGS[@]}") ||
  fail "sbatch experiments.sbatch"
st=$(wait_job "$j" 240 "calmflow-experiments-$j.out")
[ "$st" = "COMPLETED 0:0 0" ] || { dump_job "$j" "calmflow-experiments-$j.out"; fail "job ended '$st'"; }
for f in rows.jsonl table.md; do
  [ -s "$out/$f" ] || { dump_job "$j" "calmflow-experiments-$j.out"; fail "no $out/$f"; }
done
n1=$(wc -l <"$out/rows.jsonl")
[ "$n1" -eq 10 ] || fail "expected 10 rows (2 seeds x (default + P 1, 2 + S 1, 2)), got $n1"
cp "$out/table.md" "$T/table1.md"
stamp=$(stat -c %Y.%s "$out"/runs/*/summary.json | md5sum)
echo "job $j: $n1 rows ($(elapsed) s)"

j2=$(sbatch --parsable -n 1 -t 10 -J cf-test-exp2 "$JOBS/experiments.sbatch" "${ARGS[@]}") ||
  fail "sbatch experiments.sbatch again"
st=$(wait_job "$j2" 120 "calmflow-experiments-$j2.out")
[ "$st" = "COMPLETED 0:0 0" ] || { dump_job "$j2" "calmflow-experiments-$j2.out"; fail "second job ended '$st'"; }
grep -q "resumed: kept 10 finished runs and 10 sample sets" "calmflow-experiments-$j2.out" ||
  { cat "calmflow-experiments-$j2.out"; fail "the second job did not resume"; }
[ "$(stat -c %Y.%s "$out"/runs/*/summary.json | md5sum)" = "$stamp" ] ||
  fail "the second job retrained finished runs"
[ "$(wc -l <"$out/rows.jsonl")" -eq 10 ] || fail "the second job changed the number of rows"
cmp -s "$out/table.md" "$T/table1.md" || fail "the resumed table differs"
echo "test_slurm_experiments: ok ($(elapsed) s)"
