#!/usr/bin/env bash
# test_cfm_cond.sh: the conditional CFM baseline (-model cfm -cfm_cond) through the binary.
#  0. data: a tiny .h5ad (2-D points: condition A around (3, 3), B around (-3, -3), C around
#     (3, -3); obs columns cond and hours categorical, score numeric, library strings) through
#     `calmflow data` without any transform: /x is X, each /obs column records its kind and a
#     categorical one its categories;
#  1. training on cond with C held out (-data_exclude cond=C): 1 and 2 ranks give the same loss
#     every step to 1e-5 and the same parameters to 1e-4 (OT within each condition over the
#     global batch); the checkpoint stores the columns and categories (attribute conditions);
#     a run stopped at step 3 and resumed to 6 equals the uninterrupted one bit for bit;
#  2. sampling: -sample_cond cond=A lands around (3, 3), cond=B around (-3, -3), the same at 1
#     and 2 ranks; the held-out cond=C samples too; the samples file records the condition;
#     two columns (cond,hours) give C = 5 features and `ckpt info` lists them;
#  3. bad input, one line each: unknown column, non-categorical column, unknown value, a
#     condition missing or naming another column, -sample_cond for an unconditional model,
#     -data_exclude of an unknown value, -cfm_cond without a data file or with -model calmflow.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fail() { echo "FAIL $*"; exit 1; }
run() { "$@" >"$T/log" 2>&1 || { cat "$T/log"; fail "command failed: $*"; }; }

# 0. the data
$PY - "$T/cells.h5ad" <<'PYEOF' || fail "could not write the .h5ad fixture"
import sys, h5py, numpy as np
rng = np.random.default_rng(11)
n = 440
code = np.array([0, 1] * 200 + [2] * 40, np.int8)  # A, B alternating, then 40 of C
centre = np.array([[3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])
X = (centre[code] + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)
S = h5py.string_dtype()
def enc(o, t, v="0.2.0"):
    o.attrs["encoding-type"] = t
    o.attrs["encoding-version"] = v
def strings(g, name, vals):
    enc(g.create_dataset(name, data=np.array(vals, dtype=object), dtype=S), "string-array")
def categorical(g, name, codes, cats):
    c = g.create_group(name)
    enc(c, "categorical")
    c.attrs["ordered"] = False
    enc(c.create_dataset("codes", data=codes), "array")
    strings(c, "categories", cats)
with h5py.File(sys.argv[1], "w") as f:
    enc(f, "anndata", "0.1.0")
    enc(f.create_dataset("X", data=X), "array")
    obs = f.create_group("obs")
    enc(obs, "dataframe")
    obs.attrs["_index"] = "_index"
    obs.attrs["column-order"] = np.array(["cond", "hours", "score", "library"], dtype=object)
    strings(obs, "_index", [f"cell{i}" for i in range(n)])
    categorical(obs, "cond", code, ["A", "B", "C"])
    categorical(obs, "hours", (np.arange(n) % 3 == 0).astype(np.int8), ["0", "24"])
    enc(obs.create_dataset("score", data=rng.standard_normal(n)), "array")
    strings(obs, "library", [f"lib{i % 5}" for i in range(n)])
    var = f.create_group("var")
    enc(var, "dataframe")
    var.attrs["_index"] = "_index"
    var.attrs["column-order"] = np.array([], dtype=np.float64)
    strings(var, "_index", ["g0", "g1"])
np.save(sys.argv[1] + ".npy", X)
PYEOF
run mpiexec -n 2 "$CF" data -data_h5ad "$T/cells.h5ad" -data_pca 0 -data_normalize 0 \
  -data_log1p 0 -data_hvg 0 -data_obs cond,hours,score,library -data_out "$T/d.h5"
$PY - "$T" <<'PYEOF' || fail "the data file"
import sys, h5py, numpy as np
t = sys.argv[1]
X = np.load(f"{t}/cells.h5ad.npy")
with h5py.File(f"{t}/d.h5", "r") as f:
    assert np.array_equal(f["x"][...], X), "/x is not X"
    def attr(ds, k):
        v = ds.attrs[k]
        return v.decode() if isinstance(v, bytes) else v
    c = f["obs/cond"]
    assert attr(c, "kind") == "categorical", attr(c, "kind")
    assert [v.decode() for v in c.attrs["categories"]] == ["A", "B", "C"], c.attrs["categories"]
    assert [attr(f[f"obs/{k}"], "kind") for k in ("hours", "score", "library")] == \
        ["categorical", "numeric", "string"]
    assert "categories" not in f["obs/score"].attrs and "categories" not in f["obs/library"].attrs
print("data file: /x is X; kinds and categories recorded")
PYEOF

# 1. training
TR=(train -model cfm -data_train "$T/d.h5" -data_source normal -cfm_cond cond -data_exclude cond=C
    -net_hidden 32 -net_layers 2 -train_batch 128 -train_warmup 10 -train_log_every 1
    -train_quiet 1 -seed 3)
run mpiexec -n 1 "$CF" "${TR[@]}" -train_steps 300 -run_dir "$T/a1"
run mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 300 -run_dir "$T/a2"
run mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 6 -run_dir "$T/full"
run mpiexec -n 2 "$CF" "${TR[@]}" -train_steps 6 -train_ckpt_every 3 -run_dir "$T/cut"
$PY - "$T/cut" <<'PYEOF' || fail "could not cut the run back to step 3"
import os, sys
d = sys.argv[1]
os.remove(f"{d}/ckpt/step-0000006.h5")
open(f"{d}/ckpt/LATEST", "w").write("step-0000003.h5\n")
lines = open(f"{d}/log.jsonl").read().splitlines()[:3]
open(f"{d}/log.jsonl", "w").write("\n".join(lines) + "\n")
PYEOF
mpiexec -n 2 "$CF" train -model cfm -data_train "$T/d.h5" -data_source normal -cfm_cond cond \
  -data_exclude cond=C -net_hidden 32 -net_layers 2 -train_batch 128 -train_warmup 10 \
  -train_log_every 1 -seed 3 -train_steps 6 -train_ckpt_every 3 -run_dir "$T/cut" >"$T/resume.log" \
  2>&1 || { cat "$T/resume.log"; fail "resume"; }
grep -q "40 of the 440 rows of .* left out of training (-data_exclude cond=C)" "$T/resume.log" ||
  { cat "$T/resume.log"; fail "no line about the rows left out"; }
grep -q "conditions: 3 one-hot features from cond (3)" "$T/resume.log" ||
  { cat "$T/resume.log"; fail "no line about the conditions"; }
$PY - "$T" <<'PYEOF' || fail "conditional training"
import sys, json, h5py, numpy as np
t = sys.argv[1]
def losses(r):
    return np.array([json.loads(l)["loss"] for l in open(f"{t}/{r}/log.jsonl")])
a1, a2 = losses("a1"), losses("a2")
d = np.abs(a1 - a2).max() / np.abs(a1).max()
print(f"conditional OT-CFM 1 vs 2 ranks: loss per step within {d:.1e}; "
      f"loss {a1[:20].mean():.3f} -> {a1[-50:].mean():.3f}")
assert len(a1) == 300 and d < 1e-5, d
assert a1[-50:].mean() < 0.5 * a1[:20].mean(), "conditional CFM did not learn"
def params(r, step):
    with h5py.File(f"{t}/{r}/ckpt/step-{step:07d}.h5", "r") as f:
        c = f.attrs["conditions"]
        assert (c.decode() if isinstance(c, bytes) else c) == "cond\tA\tB\tC\n", c
        return {k: f["params"][k][...] for k in f["params"]}
p1, p2 = params("a1", 300), params("a2", 300)
assert p1["cfm.fc1.weight"].shape == (32, 2 + 1 + 16 + 3), p1["cfm.fc1.weight"].shape
dp = max(np.abs(p1[k] - p2[k]).max() / max(np.abs(p1[k]).max(), 1e-6) for k in p1)
print(f"parameters after 300 steps, 1 vs 2 ranks: within {dp:.1e}")
assert dp < 1e-4, dp
pf, pc = params("full", 6), params("cut", 6)
assert all(np.array_equal(pf[k], pc[k]) for k in pf), "the resumed run differs"
assert np.array_equal(losses("full"), losses("cut")), "the resumed losses differ"
print("stopped at 3 and resumed to 6: parameters and losses bit-identical")
PYEOF

# 2. sampling
S=(sample -run_dir "$T/a1" -sample_n 500 -sample_batch 100 -sample_quiet 1)
run mpiexec -n 1 "$CF" "${S[@]}" -sample_cond cond=A -sample_out "$T/A1.h5"
run mpiexec -n 2 "$CF" "${S[@]}" -sample_cond "cond=A" -sample_out "$T/A2.h5"
run mpiexec -n 2 "$CF" "${S[@]}" -sample_cond cond=B -sample_out "$T/B.h5"
run mpiexec -n 2 "$CF" "${S[@]}" -sample_cond cond=C -sample_out "$T/C.h5"
run mpiexec -n 1 "$CF" train -model cfm -data_train "$T/d.h5" -cfm_cond cond,hours -net_hidden 16 \
  -train_batch 64 -train_steps 20 -train_quiet 1 -run_dir "$T/two"
run mpiexec -n 1 "$CF" sample -run_dir "$T/two" -sample_n 50 -sample_cond "hours=24,cond=B" \
  -sample_quiet 1 -sample_out "$T/two.h5"
run mpiexec -n 1 "$CF" ckpt info "$T/two/ckpt/step-0000020.h5"
grep -q "condition column cond: 3 categories (A, B, C)" "$T/log" &&
  grep -q "condition column hours: 2 categories (0, 24)" "$T/log" ||
  { cat "$T/log"; fail "ckpt info does not list the condition columns"; }
$PY - "$T" <<'PYEOF' || fail "conditional sampling"
import sys, h5py, numpy as np
t = sys.argv[1]
def load(name):
    with h5py.File(f"{t}/{name}.h5", "r") as f:
        c = f.attrs["config"]
        return f["x"][...], (c.decode() if isinstance(c, bytes) else c)
a1, ca = load("A1")
a2, _ = load("A2")
b, cb = load("B")
c, cc = load("C")
assert a1.shape == (500, 2) and np.isfinite(a1).all() and np.isfinite(c).all()
assert np.array_equal(a1, a2), "conditional samples depend on the ranks"
ma, mb = a1.mean(0), b.mean(0)
print(f"cond=A: mean ({ma[0]:.2f}, {ma[1]:.2f}); cond=B: mean ({mb[0]:.2f}, {mb[1]:.2f}); "
      f"held-out cond=C: mean ({c.mean(0)[0]:.2f}, {c.mean(0)[1]:.2f})")
assert (np.abs(ma - 3) < 0.5).all(), ma
assert (np.abs(mb + 3) < 0.5).all(), mb
assert (a1[:, 0] > 0).mean() > 0.95 and (b[:, 0] < 0).mean() > 0.95
assert "condition: cond=A\n" in ca and "condition: cond=B\n" in cb and "condition: cond=C\n" in cc
x2, c2 = load("two")
assert x2.shape == (50, 2) and "condition: cond=B,hours=24\n" in c2, c2
with h5py.File(f"{t}/two/ckpt/step-0000020.h5", "r") as f:
    assert f["params/cfm.fc1.weight"].shape == (16, 2 + 1 + 16 + 5)
print("samples recorded their conditions; cond,hours gives 5 condition features")
PYEOF

# 3. bad input: one line, non-zero exit
expect() { # name, text the line must hold, command...
  local name=$1 want=$2
  shift 2
  if mpiexec --quiet -n 1 "$CF" "$@" >"$T/out" 2>"$T/err"; then fail "$name: accepted"; fi
  [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "$want" "$T/err" ||
    { cat "$T/err"; fail "$name: expected one line with '$want'"; }
}
B=(train -model cfm -data_train "$T/d.h5" -train_steps 2 -train_quiet 1)
expect column "has no obs column 'nope' (its columns: cond, hours, library, score)" "${B[@]}" \
  -cfm_cond nope -run_dir "$T/bad1"
expect numeric "column 'score' of '$T/d.h5' is numeric, not categorical" "${B[@]}" \
  -cfm_cond cond,score -run_dir "$T/bad2"
expect exclude "no row of '$T/d.h5' has cond = 'Z' (values: A, B, C)" "${B[@]}" -cfm_cond cond \
  -data_exclude cond=Z -run_dir "$T/bad3"
expect exclude_col "option -data_exclude: '$T/d.h5' has no obs column 'nope'" "${B[@]}" \
  -data_exclude nope=1 -run_dir "$T/bad4"
expect nofile "option -cfm_cond: the conditions are /obs columns of a -data_train file" \
  train -model cfm -data_name moons -cfm_cond cond -train_steps 2 -run_dir "$T/bad5"
expect calmflow "conditions are an option of the CFM baseline" train -data_train "$T/d.h5" \
  -cfm_cond cond -train_steps 2 -run_dir "$T/bad6"
for d in bad1 bad2 bad3 bad4 bad5 bad6; do
  [ -e "$T/$d" ] && fail "bad options created run directory $d"
done
expect value "'Z' is not a category of column 'cond' (categories: A, B, C)" "${S[@]}" \
  -sample_cond cond=Z -sample_out "$T/bad.h5"
expect missing "the model is conditioned on cond; give COL=VALUE for each" "${S[@]}" \
  -sample_out "$T/bad.h5"
expect other "the model is conditioned on cond, not on 'hours'" "${S[@]}" -sample_cond hours=0 \
  -sample_out "$T/bad.h5"
expect twocols "no value for column 'hours'" sample -run_dir "$T/two" -sample_cond cond=A \
  -sample_out "$T/bad.h5"
[ -e "$T/bad.h5" ] && fail "a bad -sample_cond wrote a samples file"
run mpiexec -n 1 "$CF" "${B[@]}" -run_dir "$T/uncond"
expect uncond "option -sample_cond: checkpoint .* holds a model without conditions" sample \
  -run_dir "$T/uncond" -sample_cond cond=A -sample_out "$T/bad.h5"
echo "test_cfm_cond: ok"
