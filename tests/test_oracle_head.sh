#!/usr/bin/env bash
# test_oracle_head.sh: analysis/oracle_head.py, the ideal per-step Gaussian head of the bridge
# paths. Its conditional moments must be the paths' own: on fresh true paths the standardized
# next point z = (x_{k+1} - mean) / sqrt(var) has mean 0 and mean square 1 at every step, given
# (x0, x_t) and given x_t alone (a wrong mean or a missing variance term moves the mean square
# by far more than the 4-sigma band), and knowing x0 lowers the NLL. The script then runs end to
# end at a small size: the exact sampler lands near the floor, and a set it cannot write as a
# mixture, or a failing calmflow, gets one error line.
set -u
CF=${CF_BINARY:?set by ctest}
src="${CF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL $*"; exit 1; }
/usr/bin/python3 - "$src/analysis" <<'PYEOF' || fail "the ideal head's moments"
import sys, math
sys.path.insert(0, sys.argv[1])
import numpy as np
import oracle_head as oh
rng = np.random.default_rng(3)
n, N = 4000, 6
for src, tgt, sigma in (("8gaussians", "moons", 2.0), ("2gaussians", "2to4gaussians", 1.0)):
    br = oh.Bridge(src, tgt, sigma)
    def draw(name, n):
        c, v = oh.mixture(name)
        return c[rng.integers(0, len(c), n)] + math.sqrt(v) * rng.standard_normal((n, 2))
    X = oh.paths(br, draw(src, n), draw(tgt, n), N, rng)
    ts = np.linspace(0, 1, N)
    for hist in (1, 0):
        for k in range(N - 1):
            mean, var = br.moments(X[:, 0], X[:, k], ts[k], ts[k + 1] - ts[k], hist)
            z = (X[:, k + 1] - mean) / np.sqrt(var)
            m1, m2 = z.mean(0), (z * z).mean(0)
            assert np.all(np.abs(m1) < 4 / math.sqrt(n)), (src, hist, k, m1)
            assert np.all(np.abs(m2 - 1) < 4 * math.sqrt(2 / n)), (src, hist, k, m2)
    h, m = oh.step_nll(br, X, 1), oh.step_nll(br, X, 0)
    assert abs(h[0] - m[0]) < 1e-9, (h[0], m[0])  # the first step: x_t is x0
    assert np.mean(h[1:]) < np.mean(m[1:]), (src, h, m)
PYEOF
/usr/bin/python3 "$src/analysis/oracle_head.py" --binary "$CF" --out "$T/o" --N 6 \
  --samples 600 --seeds 1 >"$T/o.log" 2>&1 || { cat "$T/o.log"; fail "oracle_head.py failed"; }
/usr/bin/python3 - "$T/o/oracle.jsonl" <<'PYEOF' || { cat "$T/o.log"; fail "oracle rows"; }
import sys, json, math
rows = [json.loads(l) for l in open(sys.argv[1])]
kinds = {r["kind"]: r for r in rows if "kind" in r}
assert sorted(kinds) == ["history exact", "history gauss", "markov exact", "markov gauss"], kinds
for r in kinds.values():
    assert len(r["w2_ratio"]) == 1 and all(math.isfinite(v) and v > 0 for v in r["w2_ratio"]), r
for k in ("history exact", "markov exact"):
    assert kinds[k]["w2_ratio"][0] < 1.6, kinds[k]
assert len(rows[-1]["step_nll"]["ideal gauss, history"]) == 5, rows[-1]
PYEOF
grep -q '^| history gauss | ' "$T/o/oracle.md" || fail "oracle.md has no table"
/usr/bin/python3 "$src/analysis/oracle_head.py" --binary "$CF" --out "$T/b" --target checkerboard \
  >"$T/b.log" 2>&1 && fail "oracle_head.py took a set it cannot write as a mixture"
[ "$(wc -l <"$T/b.log")" = 1 ] && grep -q '^oracle_head: error: set .checkerboard.' "$T/b.log" ||
  { cat "$T/b.log"; fail "oracle_head.py: no one-line error for --target checkerboard"; }
/usr/bin/python3 "$src/analysis/oracle_head.py" --binary /bin/false --out "$T/f" --N 4 \
  --samples 50 --seeds 1 >"$T/f.log" 2>&1 && fail "oracle_head.py went on after calmflow failed"
[ "$(wc -l <"$T/f.log")" = 1 ] && grep -q '^oracle_head: error: calmflow data failed' "$T/f.log" ||
  { cat "$T/f.log"; fail "oracle_head.py: no one-line error for a failed calmflow"; }
echo "test_oracle_head: ok"
