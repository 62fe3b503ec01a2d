#!/usr/bin/env bash
# test_eval.sh: `calmflow eval` end to end at 1 and 2 ranks, for the collective metrics.
#   - 2-D moons (400 vs 500 points) and 100-D sets (4blobs vs normal, 300 vs 260 points: the
#     dgemm cost path, and a 100 x 100 covariance in two 64-blocks over the ranks);
#   - the JSON keeps its old keys (same strings at 1 and 2 ranks) and adds frechet,
#     sinkhorn_w2, sinkhorn_div, sinkhorn_eps, sinkhorn_iters, sinkhorn_converged, n_sinkhorn_*;
#   - frechet and the Sinkhorn values agree between 1 and 2 ranks (relative 1e-10, against
#     the size of the terms) and with numpy (tests/reference/gen_metrics.py: eigh Frechet,
#     Sinkhorn + Newton) to 1e-8 and 1e-6;
#   - -eval_frechet 0 / -eval_sinkhorn_max 0 drop the keys; a bad Sinkhorn option is one
#     error line naming the option.
set -u
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

set -e
"$CF" data -data_name moons -data_n 400 -seed 11 -data_out "$T/m_a.h5" >/dev/null
"$CF" data -data_name moons -data_n 500 -seed 12 -data_out "$T/m_b.h5" >/dev/null
"$CF" data -data_name 4blobs -data_dim 100 -data_n 300 -seed 13 -data_out "$T/h_a.h5" >/dev/null
"$CF" data -data_name normal -data_dim 100 -data_n 260 -seed 14 -data_out "$T/h_b.h5" >/dev/null
set +e

for set in m h; do
  for np in 1 2; do
    if ! mpiexec -n "$np" "$CF" eval -eval_a "$T/${set}_a.h5" -eval_b "$T/${set}_b.h5" \
      -eval_sinkhorn_tol 1e-10 -eval_sinkhorn_iters 20000 -eval_out "$T/${set}_np$np.json" \
      2>"$T/err"; then
      fail "eval $set at $np ranks:"; cat "$T/err"
    fi
  done
done

/usr/bin/python3 - "$T" "$SRC" <<'PYEOF' || fails=$((fails + 1))
import json, sys
import h5py, numpy as np
t, src = sys.argv[1], sys.argv[2]
sys.path.insert(0, src + "/tests/reference")
from gen_metrics import frechet_eigh, sinkhorn_ref

bad = 0
def check(ok, msg):
    global bad
    if not ok:
        bad += 1
        print("FAIL", msg)

old = ["w2", "w1", "mmd2_rbf", "mmd2_rbf_multi", "energy", "n_a", "n_b", "n_ot", "dim"]
new = ["frechet", "sinkhorn_w2", "sinkhorn_div", "sinkhorn_eps", "sinkhorn_iters",
       "sinkhorn_converged", "n_sinkhorn_a", "n_sinkhorn_b"]
for s in ("m", "h"):
    raw = {}
    try:
        for np_ in (1, 2):
            raw[np_] = open(f"{t}/{s}_np{np_}.json").read()
        j1, j2 = json.loads(raw[1]), json.loads(raw[2])
    except Exception as e:
        check(False, f"set {s}: no JSON ({e})")
        continue
    check(list(j1) == old + new, f"set {s}: keys {list(j1)}")
    # the old keys: the same text at 1 and 2 ranks (computed on rank 0 either way)
    for k in old:
        check(k in j1 and j1[k] == j2.get(k), f"set {s}: {k} {j1.get(k)} vs {j2.get(k)}")
    a = h5py.File(f"{t}/{s}_a.h5", "r")["x"][...]
    b = h5py.File(f"{t}/{s}_b.h5", "r")["x"][...]
    scale = np.trace(np.atleast_2d(np.cov(a.T))) + np.trace(np.atleast_2d(np.cov(b.T)))
    fr, _ = frechet_eigh(a, b)
    d12 = abs(j1["frechet"] - j2["frechet"]) / scale
    check(d12 <= 1e-10, f"set {s}: frechet {j1['frechet']!r} vs {j2['frechet']!r} at 2 ranks")
    check(abs(j1["frechet"] - fr) <= 1e-8 * scale,
          f"set {s}: frechet {j1['frechet']!r}, numpy {fr!r}")
    ref = sinkhorn_ref(a, b, 0.05, warm=300)
    check(ref["err"] < 1e-11, f"set {s}: the numpy reference did not converge ({ref['err']})")
    check(j1["sinkhorn_converged"] == 1 and j2["sinkhorn_converged"] == 1
          and j1["sinkhorn_iters"] == j2["sinkhorn_iters"],
          f"set {s}: converged {j1['sinkhorn_converged']} {j2['sinkhorn_converged']}, "
          f"iterations {j1['sinkhorn_iters']} {j2['sinkhorn_iters']}")
    check(abs(j1["sinkhorn_eps"] - ref["eps"]) <= 1e-12 * ref["eps"],
          f"set {s}: eps {j1['sinkhorn_eps']!r}, numpy {ref['eps']!r}")
    for k, r in (("sinkhorn_w2", ref["w2"]), ("sinkhorn_div", ref["div"])):
        top = ref["w2"] ** 2 if k == "sinkhorn_div" else ref["w2"]
        check(abs(j1[k] - j2[k]) <= 1e-10 * top, f"set {s}: {k} {j1[k]!r} vs {j2[k]!r}")
        check(abs(j1[k] - r) <= 1e-6 * top, f"set {s}: {k} {j1[k]!r}, numpy {r!r}")
    print(f"set {s}: frechet {j1['frechet']:.9g} (numpy {fr:.9g}, 1 vs 2 ranks {d12:.1e}), "
          f"sinkhorn_w2 {j1['sinkhorn_w2']:.9g} (numpy {ref['w2']:.9g}), sinkhorn_div "
          f"{j1['sinkhorn_div']:.9g} (numpy {ref['div']:.9g}), {j1['sinkhorn_iters']} iterations; "
          f"exact w2 {j1['w2']}")
sys.exit(1 if bad else 0)
PYEOF

# Switched off: the keys are absent.
if mpiexec -n 2 "$CF" eval -eval_a "$T/m_a.h5" -eval_b "$T/m_b.h5" -eval_frechet 0 \
  -eval_sinkhorn_max 0 -eval_out "$T/off.json" 2>"$T/err"; then
  grep -q -e frechet -e sinkhorn "$T/off.json" && fail "switched-off metrics still in the JSON"
else
  fail "eval with the collective metrics off:"; cat "$T/err"
fi
# Capped: the first 100 points of each set.
if mpiexec -n 2 "$CF" eval -eval_a "$T/m_a.h5" -eval_b "$T/m_b.h5" -eval_sinkhorn_max 100 \
  -eval_out "$T/cap.json" 2>"$T/err"; then
  grep -q '"n_sinkhorn_a": 100' "$T/cap.json" && grep -q '"n_sinkhorn_b": 100' "$T/cap.json" ||
    fail "cap: $(grep n_sinkhorn "$T/cap.json" | tr -d '\n')"
else
  fail "eval with -eval_sinkhorn_max 100:"; cat "$T/err"
fi
# A bad option: one error line naming it, no output file.
mpiexec --quiet -n 2 "$CF" eval -eval_a "$T/m_a.h5" -eval_b "$T/m_b.h5" -eval_sinkhorn_eps 0 \
  -eval_out "$T/bad.json" >/dev/null 2>"$T/err"
rc=$?
if [ $rc -eq 0 ] || [ "$(grep -c '' "$T/err")" -ne 1 ] ||
   ! grep -q "^calmflow: error: option -eval_sinkhorn_eps" "$T/err" || [ -e "$T/bad.json" ]; then
  fail "bad -eval_sinkhorn_eps: exit $rc:"; cat "$T/err"
fi

if [ $fails -eq 0 ]; then echo "test_eval: ok"; else echo "test_eval: $fails failures"; fi
[ $fails -eq 0 ]
