#!/usr/bin/env bash
# test_experiments.sh: the calmflow 5 comparison (analysis/experiments.py) end to end at its CI
# size: every group (2-D toy with the temperature sweep, high-dimensional pairs, trajectories
# and spatial tokens), every method of configs/experiments.json, 2 seeds. Checks that it exits
# 0, that every available method has a row per seed with finite W2 and a W2 floor, that the
# CFM baselines were sized to their CaLMFlow model (parameters within 2%) and report function
# evaluations, that heads not built yet are marked unavailable, that the table and the plots
# exist, that --results fills the marked block of a results file, and that --merge rebuilds
# the same table from the rows without running anything.
set -u
CF=${CF_BINARY:?set by ctest}
src="${CF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export MPLCONFIGDIR="$T/mpl"
fail() { echo "FAIL $*"; exit 1; }
printf 'before\n<!-- results:begin -->\nold\n<!-- results:end -->\nafter\n' >"$T/results.md"
/usr/bin/python3 "$src/analysis/experiments.py" --size ci --binary "$CF" --out "$T/x" \
  --results "$T/results.md" 2>"$T/log" || { tail -20 "$T/log"; fail "experiments.py failed"; }
/usr/bin/python3 - "$T" "$src/configs/experiments.json" <<'PYEOF' || fail "experiment results"
import sys, json, math, os
t, cfgp = sys.argv[1], sys.argv[2]
cfg = json.load(open(cfgp))
rows = [json.loads(l) for l in open(f"{t}/x/rows.jsonl")]
seeds = cfg["sizes"]["ci"]["seeds"]
for gname, g in cfg["groups"].items():
    for m in g["methods"]:
        rs = [r for r in rows if r["group"] == gname and r["method"] == m]
        assert rs, f"{gname}/{m}: no rows"
        if rs[0]["status"] == "unavailable":
            assert "not implemented" in rs[0]["note"], rs[0]
            continue
        assert {r["seed"] for r in rs} == set(range(seeds)), f"{gname}/{m}: seeds"
        for r in rs:
            assert r["status"] == "ok" and math.isfinite(r["w2"]) and r["w2_floor"] > 0, r
bycfm = [r for r in rows if r["model"] == "cfm" and r["status"] == "ok"]
assert bycfm, "no CFM rows"
for r in bycfm:
    base = [b for b in rows if b["method"] == "calmflow-gauss" and b["seed"] == r["seed"]
            and b["group"] == r["group"] and b["source"] == r["source"] and b["dim"] == r["dim"]
            and b["status"] == "ok"][0]
    assert abs(r["params"] - base["params"]) <= 0.02 * base["params"], (r["params"], base["params"])
    assert r["nfe_per_solve"] and r["nfe_per_solve"] >= 7, r
taus = {r["tau"] for r in rows if r["group"] == "toy2d" and r["method"] == "calmflow-gauss"}
assert taus == set(cfg["sizes"]["ci"]["tau"]), taus
sweeps = {json.dumps(r["sweep"]) for r in rows if r["group"] == "trajtok"}
assert len(sweeps) == 1 + len(cfg["sizes"]["ci"]["P"]) + len(cfg["sizes"]["ci"]["S"]), sweeps
for p in ("table.md", "plot_w2.png", "plot_temperature.png", "plot_trajectories_tokens.png",
          "plot_toy2d_trajectories.png"):
    assert os.path.getsize(f"{t}/x/{p}") > 500, p
res = open(f"{t}/results.md").read()
assert res.startswith("before\n<!-- results:begin -->") and res.endswith("<!-- results:end -->\nafter\n")
assert "old" not in res and "### toy2d" in res and "cfm-ot" in res
print(f"{len(rows)} rows, CFM sized within 2% of CaLMFlow, plots and results block written")
PYEOF
/usr/bin/python3 "$src/analysis/experiments.py" --size ci --binary "$CF" --merge "$T/x" \
  --out "$T/m" 2>"$T/log2" || { cat "$T/log2"; fail "--merge failed"; }
cmp -s "$T/x/table.md" "$T/m/table.md" || fail "--merge gave another table"
echo "test_experiments: ok"
