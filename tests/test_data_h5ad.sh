#!/usr/bin/env bash
# test_data_h5ad.sh: `calmflow data -data_h5ad` (single-cell preprocessing to a PCA point set,
# src/io/scprep.c, docs/data-format.md) at 1 and 2 ranks on tests/data/h5ad/scprep_60x200.h5ad:
#   - against an independent numpy implementation of the same pipeline (cell and gene filters,
#     library-size normalization over all genes, log1p, top genes by variance, PCA by SVD):
#     the same genes, /x to 1e-4 of its largest value, components up to sign, mean, variances;
#     with -data_pca 0 /x is the gene-space matrix itself; with K = rank the documented map
#     mean + z components gives the gene space back;
#   - 1 and 2 ranks agree to 1e-6; obs columns, the obs index and every option's attribute;
#   - bad options and files: one error line, no output file (an old one untouched), no
#     temporary left;
#   - the real hsmm.h5ad when present (CF_SOURCE_DIR/../shared/data/hsmm): K 50 of 2000 genes
#     at 1 and 2 ranks, against numpy too, with the times and the explained variance printed.
set -u
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
FIX=$SRC/tests/data/h5ad/scprep_60x200.h5ad
HSMM=$SRC/../shared/data/hsmm/hsmm.h5ad
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# the runs: NAME then the options (the numpy side reads them back from the file's attributes)
CONFIGS=(
  "a|-data_hvg 50 -data_pca 10"
  "b|-data_min_genes 20 -data_min_cells 3 -data_hvg 0 -data_pca 8 -data_obs hours,depth"
  "c|-data_normalize 0 -data_log1p 0 -data_hvg 30 -data_pca 0 -data_obs none"
  "d|-data_normalize 100 -data_min_genes 1 -data_hvg 40 -data_pca 40 -data_obs condition"
  "e|-data_hvg 100 -data_pca 40 -data_obs library"
)
for cfg in "${CONFIGS[@]}"; do
  name=${cfg%%|*}
  read -r -a opts <<<"${cfg#*|}"
  for np in 1 2; do
    if ! mpiexec -n "$np" "$CF" data -data_h5ad "$FIX" "${opts[@]}" \
      -data_out "$T/${name}_np$np.h5" >"$T/${name}_np$np.log" 2>"$T/err"; then
      fail "config $name at $np ranks:"; cat "$T/err"
    fi
  done
done
ls "$T" | grep -q '\.tmp\.' && fail "a temporary file was left: $(ls "$T")"

$PY - "$T" "$FIX" <<'PYEOF' || fails=$((fails + 1))
import sys
import h5py
import numpy as np

t, fix = sys.argv[1], sys.argv[2]
bad = 0


def check(ok, msg):
    global bad
    if not ok:
        bad += 1
        print("FAIL", msg)


def sget(ds):
    return [v.decode() for v in ds[...]]


def attr(f, k):
    v = f.attrs[k]
    return v.decode() if isinstance(v, bytes) else v


def read_h5ad(path):
    """X dense float32, obs index and obs columns as the C reader's strings, var index."""
    with h5py.File(path, "r") as f:
        g = f["X"]
        n, m = g.attrs["shape"]
        X = np.zeros((n, m), np.float32)
        ip, ix, d = g["indptr"][...], g["indices"][...], g["data"][...].astype(np.float32)
        for i in range(n):
            X[i, ix[ip[i]:ip[i + 1]]] += d[ip[i]:ip[i + 1]]
        obs = {}
        for c in f["obs"].attrs["column-order"]:
            o = f["obs"][c]
            if isinstance(o, h5py.Group):  # categorical
                cats = [x.decode() if isinstance(x, bytes) else "%g" % x
                        for x in o["categories"][...]]
                obs[c] = [cats[k] if k >= 0 else "" for k in o["codes"][...]]
            elif o.dtype.kind in "SO":
                obs[c] = sget(o)
            else:  # numbers: compared by value
                obs[c] = list(o[...])
        return X, sget(f["obs/_index"]), obs, sget(f["var/_index"])


def pipeline(X, min_genes, min_cells, target, log1p, hvg):
    """The reference: the same steps in numpy (the rule of include/calmflow/scprep.h)."""
    X64 = X.astype(np.float64)
    total = X64.sum(1)
    keep = (X != 0).sum(1) >= min_genes
    Xk, tk = X64[keep], total[keep]
    scale = np.ones_like(tk) if target == 0 else np.where(tk > 0, target / np.where(tk > 0, tk, 1), 0)
    V = Xk * scale[:, None]
    if log1p:
        V = np.log1p(V)
    V = V.astype(np.float32)
    left = np.where((Xk != 0).sum(0) >= min_cells)[0]
    var = V.astype(np.float64).var(0, ddof=1)
    k = len(left) if hvg == 0 or hvg >= len(left) else hvg
    order = sorted(left, key=lambda j: (-var[j], j))
    genes = np.sort(np.array(order[:k], dtype=np.int64))
    return keep, genes, V[:, genes].astype(np.float64)


def pca_ref(Y, K):
    mu = Y.mean(0)
    U, S, Vt = np.linalg.svd(Y - mu, full_matrices=False)
    return mu, Vt[:K], S[:K] ** 2 / (len(Y) - 1), Y.var(0, ddof=1).sum()


X, cells, obs, genes_all = read_h5ad(fix)
configs = {"a": None, "b": None, "c": None, "d": None, "e": None}
for name in configs:
    try:
        f1 = h5py.File(f"{t}/{name}_np1.h5", "r")
        f2 = h5py.File(f"{t}/{name}_np2.h5", "r")
    except OSError as e:
        check(False, f"config {name}: no output ({e})")
        continue
    opt = {k: attr(f1, k) for k in ("data_min_genes", "data_min_cells", "data_normalize",
                                    "data_log1p", "data_hvg", "data_pca", "data_obs")}
    check(attr(f1, "source") == fix and attr(f1, "data_h5ad") == fix,
          f"{name}: source {attr(f1, 'source')}")
    check(attr(f1, "format") == "calmflow-scdata" and int(attr(f1, "version")) == 1,
          f"{name}: format / version")
    keep, genes, Y = pipeline(X, int(opt["data_min_genes"]), int(opt["data_min_cells"]),
                              float(opt["data_normalize"]), int(opt["data_log1p"]),
                              int(opt["data_hvg"]))
    K = int(opt["data_pca"])
    n, G = Y.shape
    x1, x2 = f1["x"][...].astype(np.float64), f2["x"][...].astype(np.float64)
    check(int(attr(f1, "n_cells")) == n and int(attr(f1, "n_genes")) == G
          and int(attr(f1, "pca_k")) == K, f"{name}: sizes {n} {G} {K}")
    check(sget(f1["genes"]) == [genes_all[j] for j in genes],
          f"{name}: /genes differ from numpy's choice")
    check(sget(f1["obs/_index"]) == [c for c, k in zip(cells, keep) if k], f"{name}: obs index")
    # the copied columns
    spec = opt["data_obs"]
    want = (["condition", "hours", "batch", "library"] if spec == "" else
            [] if spec == "none" else spec.split(","))
    check(attr(f1, "obs_columns") == ",".join(want), f"{name}: obs_columns {attr(f1, 'obs_columns')}")
    check(sorted(f1["obs"]) == sorted(want + ["_index"]), f"{name}: /obs holds {list(f1['obs'])}")
    for c in want:
        if c not in f1["obs"]:
            continue
        got = sget(f1["obs"][c])
        exp = [v for v, k in zip(obs[c], keep) if k]
        if isinstance(exp[0], str):
            check(got == exp, f"{name}: /obs/{c} {got[:4]} vs {exp[:4]}")
        else:
            check(np.array_equal(np.array(got, float), np.array(exp, float)), f"{name}: /obs/{c}")
    # 1 vs 2 ranks
    for f in (f1, f2):
        check(f["x"].shape == (n, K if K else G), f"{name}: /x shape {f['x'].shape}")
    if x1.shape == x2.shape:
        d12 = np.abs(x1 - x2).max() / np.abs(x1).max()
        check(d12 <= 1e-6, f"{name}: /x at 1 and 2 ranks differ by {d12:.2e} (relative)")
    check(sget(f1["genes"]) == sget(f2["genes"]), f"{name}: /genes at 1 and 2 ranks")
    for c in want + ["_index"]:
        check(sget(f1["obs"][c]) == sget(f2["obs"][c]), f"{name}: /obs/{c} at 1 and 2 ranks")
    if K == 0:
        check("pca" not in f1, f"{name}: /pca present without PCA")
        err = np.abs(x1 - Y).max() / np.abs(Y).max()
        check(err <= 1e-6, f"{name}: /x vs the numpy gene space {err:.2e}")
        print(f"ok   config {name}: {n} cells x {G} genes (no PCA), numpy {err:.1e}")
        continue
    mu, V, var, tot = pca_ref(Y, K)
    C = f1["pca/components"][...].astype(np.float64)
    check(C.shape == (K, G), f"{name}: components {C.shape}")
    sign = np.sign(np.sum(C * V, axis=1))
    dc = np.abs(C - sign[:, None] * V).max()
    check(dc <= 1e-4, f"{name}: components vs numpy (up to sign) {dc:.2e}")
    z = (Y - mu) @ V.T * sign
    dz = np.abs(x1 - z).max() / np.abs(z).max()
    check(dz <= 1e-4, f"{name}: coordinates vs numpy {dz:.2e} (relative)")
    dm = np.abs(f1["pca/mean"][...] - mu).max() / np.abs(mu).max()
    check(dm <= 1e-6, f"{name}: mean vs numpy {dm:.2e}")
    dv = np.abs(f1["pca/variance"][...] - var).max() / var.max()
    check(dv <= 1e-5, f"{name}: variances vs numpy {dv:.2e}")
    dt = abs(float(f1.attrs["pca_total_variance"]) - tot) / tot
    check(dt <= 1e-9, f"{name}: total variance {float(f1.attrs['pca_total_variance'])} vs {tot}")
    dc2 = np.abs(C - f2["pca/components"][...]).max()
    check(dc2 <= 1e-6, f"{name}: components at 1 and 2 ranks differ by {dc2:.2e}")
    # back to gene space: exact when K is the rank of the centred data
    if K == min(n - 1, G):
        back = f1["pca/mean"][...] + x1 @ C
        db = np.abs(back - Y).max() / np.abs(Y).max()
        check(db <= 1e-5, f"{name}: mean + z components vs the gene space {db:.2e}")
    print(f"ok   config {name}: {n} cells x {G} genes, K {K} ({attr(f1, 'pca_method')}): "
          f"numpy components {dc:.1e}, coordinates {dz:.1e}; 1 vs 2 ranks {d12:.1e}")
sys.exit(1 if bad else 0)
PYEOF

# ---- the same matrix stored as csc_matrix and as a dense array gives the same file; values
# the transform cannot take are refused, naming the cell and gene ----
$PY - "$T" "$FIX" <<'PYEOF' || fails=$((fails + 1))
import shutil, sys
import h5py
import numpy as np
t, fix = sys.argv[1], sys.argv[2]
with h5py.File(fix, "r") as f:
    n, m = f["X"].attrs["shape"]
    ip, ix, d = f["X/indptr"][...], f["X/indices"][...], f["X/data"][...]
X = np.zeros((n, m), np.float32)
for i in range(n):
    X[i, ix[ip[i]:ip[i + 1]]] = d[ip[i]:ip[i + 1]]
def rewrite(name, enc, ver, fill):
    shutil.copy(fix, f"{t}/{name}.h5ad")
    with h5py.File(f"{t}/{name}.h5ad", "r+") as f:
        del f["X"]
        fill(f)
        f["X"].attrs["encoding-type"] = enc
        f["X"].attrs["encoding-version"] = ver
def csc(f):
    g = f.create_group("X")
    g.attrs["shape"] = np.array([n, m], np.int64)
    cols = [np.nonzero(X[:, j])[0] for j in range(m)]
    g["indptr"] = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int64)
    g["indices"] = np.concatenate(cols).astype(np.int64)
    g["data"] = np.concatenate([X[c, j] for j, c in enumerate(cols)]).astype(np.float64)
rewrite("csc", "csc_matrix", "0.1.0", csc)
rewrite("dense", "array", "0.2.0", lambda f: f.create_dataset("X", data=X))
Xn = X.copy(); Xn[3, 17] = -2.5
rewrite("negative", "array", "0.2.0", lambda f: f.create_dataset("X", data=Xn))
Xn = X.copy(); Xn[41, 5] = np.nan
rewrite("nan", "array", "0.2.0", lambda f: f.create_dataset("X", data=Xn))
PYEOF
for enc in csc dense; do
  for np in 1 2; do
    mpiexec -n "$np" "$CF" data -data_h5ad "$T/$enc.h5ad" -data_hvg 50 -data_pca 10 \
      -data_out "$T/${enc}_np$np.h5" >/dev/null 2>"$T/err" || { fail "$enc at $np ranks:"; cat "$T/err"; }
  done
done
$PY - "$T" <<'PYEOF' || fails=$((fails + 1))
import sys
import h5py
import numpy as np
t = sys.argv[1]
ref = h5py.File(f"{t}/a_np1.h5", "r")
bad = 0
for enc in ("csc", "dense"):
    for np_ in (1, 2):
        try:
            f = h5py.File(f"{t}/{enc}_np{np_}.h5", "r")
        except OSError as e:
            print(f"FAIL {enc} at {np_} ranks: {e}"); bad += 1; continue
        same = all(np.array_equal(f[k][...], ref[k][...])
                   for k in ("x", "genes", "pca/components", "pca/mean", "obs/_index", "obs/hours"))
        if not same:
            print(f"FAIL {enc} at {np_} ranks: not the csr_matrix file's contents"); bad += 1
if not bad:
    print("ok   csc_matrix and dense X at 1 and 2 ranks: the same /x, /pca, /genes, /obs as csr")
sys.exit(1 if bad else 0)
PYEOF

# ---- bad options and files: one error line, no output ----
expect() {
  local name=$1 want=$2 np=$3
  shift 3
  rm -f "$T/bad.h5"
  if [ "$np" -eq 1 ]; then # singleton MPI: mpiexec spends seconds on a failed rank's exit
    "$CF" data "$@" >"$T/out" 2>"$T/err"
  else
    mpiexec --quiet -n "$np" "$CF" data "$@" >"$T/out" 2>"$T/err"
  fi
  local rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exit 0"; return; fi
  if [ $rc -ge 128 ]; then fail "$name: crashed (exit $rc)"; cat "$T/err"; return; fi
  if ! grep -q "^calmflow: error: .*$want" "$T/err" || [ "$(grep -c '' "$T/err")" -ne 1 ]; then
    fail "$name: expected one error line with '$want':"; cat "$T/err"; return
  fi
  if [ -e "$T/bad.h5" ] || ls "$T" | grep -q '\.tmp\.'; then fail "$name: output left behind"; return; fi
  echo "ok   $name: $(cat "$T/err")"
}
H=(-data_h5ad "$FIX" -data_out "$T/bad.h5")
expect missing-file "cannot open '$T/none.h5ad': no such file" 1 -data_h5ad "$T/none.h5ad" -data_out "$T/bad.h5"
expect unsupported-x "encoding-type 'awkward-array' not supported" 2 \
  -data_h5ad "$SRC/tests/data/h5ad/bad_x_awkward.h5ad" -data_out "$T/bad.h5"
expect not-hdf5 "not an HDF5 file" 1 -data_h5ad "$SRC/tests/test_data_h5ad.sh" -data_out "$T/bad.h5"
expect pca-too-large "option -data_pca: 61 components, expected at most" 2 "${H[@]}" -data_pca 61
expect pca-after-hvg "option -data_pca: 11 components.*after the filters" 2 "${H[@]}" -data_hvg 10 -data_pca 11
expect hvg-negative "option -data_hvg: expected an integer in" 1 "${H[@]}" -data_hvg -1
expect normalize-negative "option -data_normalize: expected a value in" 1 "${H[@]}" -data_normalize -1
expect normalize-nan "option -data_normalize: expected a finite number" 1 "${H[@]}" -data_normalize nan
expect log1p-two "option -data_log1p: expected an integer in \[0, 1\]" 1 "${H[@]}" -data_log1p 2
expect pca-word "option -data_pca: expected an integer, got 'ten'" 1 "${H[@]}" -data_pca ten
expect min-genes-all "option -data_min_genes 1000 leaves 0 of the 60 cells" 2 "${H[@]}" -data_min_genes 1000
expect min-cells-all "option -data_min_cells 100 leaves none of the 200 genes" 2 "${H[@]}" -data_min_cells 100
expect obs-unknown "option -data_obs: '$FIX' has no obs column 'nosuch'" 2 "${H[@]}" -data_obs hours,nosuch
expect obs-twice "option -data_obs: obs column 'hours' is listed twice" 1 "${H[@]}" -data_obs hours,hours
expect synthetic-opt "option -data_n: not used with -data_h5ad" 1 "${H[@]}" -data_n 10
expect h5ad-opt-alone "option -data_hvg: only used with -data_h5ad FILE" 1 -data_hvg 10 -data_out "$T/bad.h5"
expect negative "'$T/negative.h5ad' /X row 3 gene 17 is -2.5, expected a finite value >= 0" 2 \
  -data_h5ad "$T/negative.h5ad" -data_out "$T/bad.h5"
expect nan "'$T/nan.h5ad' /X row 41 gene 5 is nan, expected a finite value" 2 \
  -data_h5ad "$T/nan.h5ad" -data_out "$T/bad.h5"
if "$CF" data -data_h5ad "$T/negative.h5ad" -data_normalize 0 -data_log1p 0 -data_out "$T/neg.h5" \
  >/dev/null 2>"$T/err"; then
  echo "ok   negative values pass with -data_normalize 0 -data_log1p 0"
else
  fail "negative values without normalization or log1p:"; cat "$T/err"
fi
expect no-dir "directory '$T/nodir' does not exist" 2 "${H[@]}" -data_out "$T/nodir/x.h5"
cp "$FIX" "$T/in.h5ad"
expect out-is-input "option -data_out: '$T/in.h5ad' is the input file" 1 -data_h5ad "$T/in.h5ad" -data_out "$T/in.h5ad"
cmp -s "$FIX" "$T/in.h5ad" || fail "out-is-input: the input was changed"
# an old output survives a failed run untouched
echo "old contents" >"$T/keep.h5"
mpiexec --quiet -n 2 "$CF" data "${H[@]}" -data_out "$T/keep.h5" -data_pca 61 >/dev/null 2>&1 &&
  fail "keep: exit 0"
[ "$(cat "$T/keep.h5")" = "old contents" ] || fail "keep: the old output was changed"

# ---- the real data set ----
if [ -r "$HSMM" ]; then
  for np in 1 2; do
    t0=$(date +%s.%N)
    if mpiexec -n "$np" "$CF" data -data_h5ad "$HSMM" -data_pca 50 -data_hvg 2000 \
      -data_out "$T/hsmm_np$np.h5" >"$T/hsmm_np$np.log" 2>"$T/err"; then
      t1=$(date +%s.%N)
      echo "hsmm at $np rank(s): $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") s wall (mpiexec included)"
      sed 's/^/    /' "$T/hsmm_np$np.log"
    else
      fail "hsmm at $np ranks:"; cat "$T/err"
    fi
  done
  $PY - "$T" "$HSMM" <<'PYEOF' || fails=$((fails + 1))
import sys
import h5py
import numpy as np
t, path = sys.argv[1], sys.argv[2]
bad = 0
def check(ok, msg):
    global bad
    if not ok:
        bad += 1
        print("FAIL", msg)
try:
    f1, f2 = h5py.File(f"{t}/hsmm_np1.h5", "r"), h5py.File(f"{t}/hsmm_np2.h5", "r")
except OSError as e:
    print("FAIL hsmm: no output", e)
    sys.exit(1)
with h5py.File(path, "r") as f:
    n, m = f["X"].attrs["shape"]
    ip, ix, d = f["X/indptr"][...], f["X/indices"][...], f["X/data"][...]
    X = np.zeros((n, m), np.float32)
    for i in range(n):
        X[i, ix[ip[i]:ip[i + 1]]] = d[ip[i]:ip[i + 1]]
    names = [v.decode() for v in f["var/_index"][...]]
tot = X.astype(np.float64).sum(1)
V = np.log1p(X.astype(np.float64) * (1e4 / tot)[:, None]).astype(np.float32)
var = V.astype(np.float64).var(0, ddof=1)
genes = np.sort(np.lexsort((np.arange(m), -var))[:2000])
got = [v.decode() for v in f1["genes"][...]]
check(got == [names[j] for j in genes], "hsmm: /genes differ from numpy's top 2000 by variance")
Y = V[:, genes].astype(np.float64)
mu = Y.mean(0)
U, S, Vt = np.linalg.svd(Y - mu, full_matrices=False)
C = f1["pca/components"][...].astype(np.float64)
sign = np.sign(np.sum(C * Vt[:50], axis=1))
z = (Y - mu) @ Vt[:50].T * sign
x1, x2 = f1["x"][...].astype(np.float64), f2["x"][...].astype(np.float64)
dz = np.abs(x1 - z).max() / np.abs(z).max()
d12 = np.abs(x1 - x2).max() / np.abs(x1).max()
check(x1.shape == (271, 50) and C.shape == (50, 2000), f"hsmm: shapes {x1.shape} {C.shape}")
check(dz <= 1e-4, f"hsmm: coordinates vs numpy {dz:.2e}")
check(d12 <= 1e-6, f"hsmm: 1 vs 2 ranks {d12:.2e}")
var_c = f1["pca/variance"][...].astype(np.float64)
ratio = var_c / float(f1.attrs["pca_total_variance"])
print("ok   hsmm: 271 cells, top 2000 genes agree with numpy, coordinates %.1e, 1 vs 2 ranks %.1e"
      % (dz, d12))
print("     explained variance ratio PC1..PC5: %s; first 10: %.3f, all 50: %.3f"
      % (" ".join("%.4f" % r for r in ratio[:5]), ratio[:10].sum(), ratio.sum()))
sys.exit(1 if bad else 0)
PYEOF
else
  echo "skip: $HSMM not found"
fi

if [ $fails -ne 0 ]; then
  echo "test_data_h5ad: $fails failure(s)"
  exit 1
fi
echo "test_data_h5ad: ok"
