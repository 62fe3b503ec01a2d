#!/usr/bin/env bash
# test_experiments.sh: the calmflow 5 comparison (analysis/experiments.py) end to end at its CI
# size: every group (2-D toy with the temperature sweep, high-dimensional pairs, trajectories
# and spatial tokens), every method of configs/experiments.json, 2 seeds. Checks that it exits
# 0, that every available method has a row per seed with finite W2 and a W2 floor, that the
# CFM baselines were sized to their CaLMFlow model (parameters within 2%) and report function
# evaluations, that heads not built yet are marked unavailable, that the table and the plots
# exist, that --results fills the marked block of a results file, that --merge rebuilds
# the same table from the rows without running anything, and that analysis/path_w2.py scores
# the rollouts' time points against the right marginals.
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
    base = [b for b in rows if b["method"] == cfg["methods"][r["method"]]["match"]
            and b["seed"] == r["seed"]
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

# analysis/path_w2.py: every time point scored against the training paths' marginal. Scored:
# the tail group's rollout (at t = 0 it holds source draws: W2 / floor near 1); a set built
# here from independent draws of the same paths (near 1 at every time point); and that set
# reversed in time (far from 1 at the ends: a marginal built at the wrong end of the path, or
# with the wrong noise, fails one of the two).
run=$(ls -d "$T"/x/runs/tail-*-calmflow-gmm-s0) || fail "no tail run"
for s in 1 2; do
  "$CF" data -data_name "$([ $s = 1 ] && echo 8gaussians || echo moons)" -data_n 256 \
    -seed 4242$s -data_out "$T/d$s.h5" >/dev/null 2>&1 || fail "calmflow data"
done
/usr/bin/python3 - "$run" "$T" <<'PYEOF' || fail "the path sets"
import sys, os, shutil, h5py, numpy as np
run, t = sys.argv[1:]
cfg = dict(l.split(": ", 1) for l in open(f"{run}/config.yaml") if ": " in l)
N, sigma = int(cfg["flow_time_points"].strip().strip('"')), float(cfg["flow_sigma"].strip().strip('"'))
x0, x1 = h5py.File(f"{t}/d1.h5", "r")["x"][...], h5py.File(f"{t}/d2.h5", "r")["x"][...]
rng = np.random.default_rng(7)
tr = np.stack([(1 - k / (N - 1)) * x0 + k / (N - 1) * x1 + sigma * np.sqrt(k / (N - 1) *
               (1 - k / (N - 1))) * rng.standard_normal(x0.shape) for k in range(N)], axis=1)
for name, traj in (("true", tr), ("rev", tr[:, ::-1, :])):
    os.makedirs(f"{t}/{name}")
    shutil.copy(f"{run}/config.yaml", f"{t}/{name}")
    with h5py.File(f"{t}/{name}/samples.h5", "w") as g:
        g["x"] = traj[:, -1, :].astype(np.float32)
        g["traj"] = traj.astype(np.float32)
PYEOF
/usr/bin/python3 "$src/analysis/path_w2.py" --binary "$CF" --out "$T/pw" "$run/samples.h5" \
  "$T/true/samples.h5" "$T/rev/samples.h5" >"$T/pw.log" 2>&1 ||
  { cat "$T/pw.log"; fail "path_w2.py failed"; }
/usr/bin/python3 - "$T/pw/path_w2.jsonl" <<'PYEOF' || { cat "$T/pw.log"; fail "path_w2 rows"; }
import sys, json, math
roll, true, rev = [json.loads(l) for l in open(sys.argv[1])]
for r in (roll, true, rev):
    assert len(r["w2_ratio"]) == r["N"] and all(math.isfinite(v) and v > 0 for v in r["w2_ratio"]), r
assert 0.6 < roll["w2_ratio"][0] < 1.6, roll["w2_ratio"]
assert all(0.5 < v < 1.8 for v in true["w2_ratio"]), true["w2_ratio"]
assert min(rev["w2_ratio"][0], rev["w2_ratio"][-1]) > 2.2, rev["w2_ratio"]
PYEOF
/usr/bin/python3 "$src/analysis/path_w2.py" --binary "$CF" --out "$T/pw2" "$T/x/data/"*.h5 \
  >"$T/pw2.log" 2>&1 && fail "path_w2.py took a data set without /traj or config"
[ "$(wc -l <"$T/pw2.log")" = 1 ] && grep -q '^path_w2: error: ' "$T/pw2.log" ||
  { cat "$T/pw2.log"; fail "path_w2.py: no one-line error for a set it cannot score"; }
/usr/bin/python3 "$src/analysis/path_w2.py" --binary /bin/false --out "$T/pw3" \
  "$T/true/samples.h5" >"$T/pw3.log" 2>&1 && fail "path_w2.py went on after calmflow failed"
[ "$(wc -l <"$T/pw3.log")" = 1 ] && grep -q '^path_w2: error: calmflow data failed' "$T/pw3.log" ||
  { cat "$T/pw3.log"; fail "path_w2.py: no one-line error for a failed calmflow"; }
/usr/bin/python3 "$src/analysis/experiments.py" --size ci --seeds -1 --binary "$CF" \
  --out "$T/s" >"$T/s.log" 2>&1 && fail "experiments.py took --seeds -1"
[ "$(wc -l <"$T/s.log")" = 1 ] && grep -q '^experiments: error: --seeds' "$T/s.log" ||
  { cat "$T/s.log"; fail "experiments.py: no one-line error for --seeds -1"; }
/usr/bin/python3 "$src/analysis/experiments.py" --size ci --groups d1000 --pairs normal:moons \
  --binary "$CF" --out "$T/s" >"$T/s.log" 2>&1 && fail "experiments.py took a pair not in the group"
[ "$(wc -l <"$T/s.log")" = 1 ] && grep -q '^experiments: error: --pairs' "$T/s.log" ||
  { cat "$T/s.log"; fail "experiments.py: no one-line error for --pairs normal:moons"; }
echo "test_experiments: ok"
