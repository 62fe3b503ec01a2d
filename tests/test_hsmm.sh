#!/usr/bin/env bash
# test_hsmm.sh: the single-cell hold-out experiment (analysis/hsmm.py, configs/hsmm.json) end to
# end at its CI size on the real HSMM data: `calmflow data` on a copy of the .h5ad without the
# 48 h cells (genes and PCA from the training cells), CaLMFlow with a text prompt and the
# conditional CFM trained on it, 48 h samples, `calmflow eval -eval_pca`
# (whose R^2 the script checks against numpy). Checks the pipeline, not the numbers: exit 0,
# one row per method with finite W2, MMD, Frechet and R^2 values, the R^2 of the deterministic
# midpoint baseline the same as numpy computes it from the data file, the table naming all
# methods, the plots, and --results filling the hsmm block of a results file (and nothing else).
# Skipped (exit 77) when the data file is not there.
set -u
CF=${CF_BINARY:?set by ctest}
src="${CF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
H5AD=/work/shared/data/hsmm/hsmm.h5ad
[ -f "$H5AD" ] || { echo "SKIP: $H5AD not found"; exit 77; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export MPLCONFIGDIR="$T/mpl"
fail() { echo "FAIL $*"; exit 1; }
printf 'before\n<!-- results:begin -->\nkeep\n<!-- results:end -->\n<!-- hsmm:begin -->\nold\n<!-- hsmm:end -->\nafter\n' \
  >"$T/results.md"
/usr/bin/python3 "$src/analysis/hsmm.py" --size ci --binary "$CF" --out "$T/x" \
  --results "$T/results.md" >"$T/out" 2>"$T/log" || { tail -20 "$T/log"; fail "hsmm.py failed"; }
/usr/bin/python3 - "$T" <<'PYEOF' || fail "hsmm results"
import sys, json, math, os
import h5py, numpy as np
t = sys.argv[1]
rows = [json.loads(l) for l in open(f"{t}/x/rows.jsonl")]
keys = ("w2", "mmd2_rbf_multi", "frechet", "r2_mean_expr", "r2_mean_expr_top")
for m in ("calmflow", "cfm", "midpoint", "pooled", "real24", "real72", "train"):
    rs = [r for r in rows if r["method"] == m and r["cond"] == "48"]
    assert rs, f"no 48 h row for {m}"
    for r in rs:
        for k in keys:
            assert r.get(k) is not None and math.isfinite(r[k]), (m, k, r.get(k))
        assert r["n_b"] == 79 and r["r2_genes"] == 2000 and r["r2_top"] == 50, r
for m in ("calmflow", "cfm"):
    assert [r for r in rows if r["method"] == m and r["cond"] == "24"], f"{m}: no 24 h check"
    r = [r for r in rows if r["method"] == m and r["cond"] == "48"][0]
    assert r["n_a"] == 100 and os.path.getsize(r["samples"]) > 0, r
# the PCA file holds the training cells only (no 48 h cell), Hours keeps its 48 category
with h5py.File(f"{t}/x/data/hsmm_pca.h5") as f:
    z, V, mu = f["x"][...].astype(float), f["pca/components"][...].astype(float), f["pca/mean"][...]
    h = f["obs/Hours"].asstr()[...]
    assert len(z) == 192 and "48" not in set(h), (len(z), set(h))
    assert b"48" in list(f["obs/Hours"].attrs["categories"]), f["obs/Hours"].attrs["categories"]
with h5py.File(f"{t}/x/data/real48.h5") as f:
    z48 = f["x"][...].astype(float)
assert z48.shape == (79, 50), z48.shape
# the midpoint baseline's R^2 from first principles: its mean is the average of the 24 h and
# 72 h means, mapped to gene space with the data file's basis and mean
pred = mu + (z[h == "24"].mean(0) + z[h == "72"].mean(0)) / 2 @ V
real = mu + z48.mean(0) @ V
want = 1 - ((pred - real) ** 2).sum() / ((real - real.mean()) ** 2).sum()
got = [r for r in rows if r["method"] == "midpoint"][0]["r2_mean_expr"]
assert abs(got - want) < 1e-5, (got, want)
table = open(f"{t}/x/table.md").read()
for label in ("CaLMFlow", "CFM (OT)", "interpolation: midpoints", "interpolation: pooled"):
    assert f"| {label} |" in table, label
for p in ("hsmm_scatter.png", "hsmm_r2.png"):
    assert os.path.getsize(f"{t}/x/{p}") > 2000, p
res = open(f"{t}/results.md").read()
assert res.startswith("before\n<!-- results:begin -->\nkeep\n<!-- results:end -->\n<!-- hsmm:begin -->")
assert res.endswith("<!-- hsmm:end -->\nafter\n") and "old" not in res and "| CaLMFlow |" in res
print(f"{len(rows)} rows; midpoint R^2 {got:.4f} = numpy {want:.4f}")
PYEOF
# -eval_pca bad input: one error line each
expect() {
  local want=$1; shift
  "$CF" eval "$@" >"$T/eo" 2>"$T/ee" && fail "eval $* succeeded"
  grep -q "^calmflow: error: .*$want" "$T/ee" || { cat "$T/ee"; fail "eval $*: no '$want'"; }
}
D="$T/x/data"
expect "has no dataset '/pca/components'" -eval_a "$D/real48.h5" -eval_b "$D/real48.h5" -eval_pca "$D/real48.h5"
expect "option -eval_r2_top 5000: the -eval_pca file has 2000 genes" -eval_a "$D/real48.h5" \
  -eval_b "$D/real24.h5" -eval_pca "$D/hsmm_pca.h5" -eval_r2_top 5000
/usr/bin/python3 -c "
import h5py, sys
with h5py.File(sys.argv[1], 'r') as f, h5py.File(sys.argv[2], 'w') as g:
    g['x'] = f['x'][...]
    g['pca/components'] = f['pca/components'][...]" "$D/hsmm_pca.h5" "$T/nomean.h5" || fail "nomean"
expect "'.*nomean.h5' has no dataset '/pca/mean' (expected a 1-D float array)" -eval_a "$D/real48.h5" \
  -eval_b "$D/real24.h5" -eval_pca "$T/nomean.h5"
echo "test_hsmm: ok"
