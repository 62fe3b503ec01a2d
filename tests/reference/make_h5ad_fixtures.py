#!/usr/bin/python3
"""make_h5ad_fixtures.py: the small .h5ad files under tests/data/h5ad/ and expected.txt,
the values tests/test_h5ad.c checks the C reader (src/io/h5ad.c) against.

Needs Debian's python3-anndata (apt-get install -y --no-install-recommends python3-anndata)
with numpy, pandas, scipy and h5py; only to regenerate the committed files, not in CI.

    /usr/bin/python3 tests/reference/make_h5ad_fixtures.py [OUTDIR]   (default tests/data/h5ad)

Files written by anndata (what real files look like): CSR with int32 and with int64
indptr/indices, float32 and float64 X, CSC with integer counts, dense float32 and float64, and
obs / var columns of every supported kind. Files made by hand with h5py: the anndata < 0.7
layout (h5sparse X, dataframe 0.1.0 with __categories, fixed-length strings), and the bad
files whose error messages the test checks (unsupported encodings and versions, malformed
data).

expected.txt is tab-separated, one record per line ("#" starts a comment):
    file NAME                     a fixture; the lines up to "end" describe it
    meta N_OBS N_VAR ENC DTYPE INDEX_DTYPE NNZ   (INDEX_DTYPE "-" for dense)
    row I V...                    X row I, every column, exact float32 values
    index FRAME S...              the frame's index
    columns FRAME NAME...         column-order
    kind FRAME NAME KIND          numeric, boolean, string or categorical
    strings FRAME NAME S...       cf_h5ad_read_strings
    numbers FRAME NAME V...       cf_h5ad_read_numbers (nan = missing)
    codes FRAME NAME C...         cf_h5ad_read_categorical codes
    categories FRAME NAME S...    its categories
    error OP A B SUBSTRING        OP on this file fails with SUBSTRING in the message:
                                  open - -, x LO HI, strings / numbers / categorical / kind
                                  FRAME NAME
    end
"""
import os
import sys
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

warnings.filterwarnings("ignore")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "data", "h5ad")
lines = ["# expected values of the h5ad fixtures (written by tests/reference/make_h5ad_fixtures.py)"]


def rec(*fields):
    text = [str(f) for f in fields]
    for t in text:
        assert "\t" not in t and "\n" not in t, t
    lines.append("\t".join(text))


def fnum(x, kind):
    """The C reader's text for a number: shortest %g that reads back (see fmt_num)."""
    if kind == "bool":
        return "True" if x else "False"
    x = float(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    if kind == "int":
        return "%.0f" % x
    for p in range(1, 18):
        s = "%.*g" % (p, x)
        if kind == "f32" and np.float32(float(s)) == np.float32(x):
            return s
        if kind == "f64" and float(s) == x:
            return s
    raise AssertionError(x)


def kind_of(dtype):
    name = str(dtype)
    if name in ("bool", "boolean"):
        return "bool"
    if name in ("Int64", "Int32") or np.issubdtype(dtype, np.integer):
        return "int"
    return "f32" if name == "float32" else "f64"


def rnum(x):
    return "nan" if np.isnan(x) else repr(float(x))


def describe_column(frame, name, s):
    """Expected records of pandas column s."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        rec("kind", frame, name, "categorical")
        cats = s.cat.categories
        ck = None if cats.dtype == object else kind_of(cats.dtype)
        ctext = [c if ck is None else fnum(c, ck) for c in cats]
        codes = s.cat.codes.to_numpy()
        rec("codes", frame, name, *[int(c) for c in codes])
        rec("categories", frame, name, *ctext)
        rec("strings", frame, name, *["" if c < 0 else ctext[c] for c in codes])
        try:
            cv = [float(c) for c in cats]
            rec("numbers", frame, name, *["nan" if c < 0 else rnum(cv[c]) for c in codes])
        except ValueError:
            bad = next(c for c in cats if not _isnum(c))
            rec("error", "numbers", frame, name, "category '%s'" % bad)
    elif s.dtype == object:
        rec("kind", frame, name, "string")
        rec("strings", frame, name, *list(s))
        rec("error", "categorical", frame, name, "is a string column, not categorical")
        if not all(_isnum(v) for v in s):
            bad = next(v for v in s if not _isnum(v))
            rec("error", "numbers", frame, name, "value '%s'" % bad)
    else:
        k = kind_of(s.dtype)
        rec("kind", frame, name, "boolean" if k == "bool" else "numeric")
        vals = list(s)
        missing = [v is pd.NA for v in vals]
        rec("strings", frame, name, *["" if m else fnum(v, k) for v, m in zip(vals, missing)])
        rec("numbers", frame, name,
            *["nan" if m else rnum(float(v)) for v, m in zip(vals, missing)])


def _isnum(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def describe(name, a, enc, index_dtype, extra=()):
    """Records of AnnData a as written to name (X as float32, every obs / var column)."""
    path = os.path.join(OUT, name)
    rec("file", name)
    X = a.X
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    dense = dense.astype(np.float64).astype(np.float32)
    with h5py.File(path, "r") as f:  # stored values as written (duplicates kept)
        nnz = len(f["X/data"]) if sp.issparse(X) else X.size
    dt = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
          np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}[X.dtype]
    rec("meta", a.n_obs, a.n_vars, enc, dt, index_dtype, nnz)
    for i in range(a.n_obs):
        rec("row", i, *[repr(float(v)) for v in dense[i]])
    for frame, df in (("obs", a.obs), ("var", a.var)):
        rec("index", frame, *list(df.index))
        rec("columns", frame, *list(df.columns))
        for col in df.columns:
            describe_column(frame, col, df[col])
    for e in extra:
        rec(*e)
    rec("end")
    with h5py.File(path, "r") as f:  # what anndata actually wrote
        assert f["X"].attrs["encoding-type"] == enc, (name, dict(f["X"].attrs))
        if enc != "array":
            assert str(f["X/indptr"].dtype) == index_dtype, (name, f["X/indptr"].dtype)


def write(name, a):
    a.write_h5ad(os.path.join(OUT, name))


def obs_frame(n):
    rng = np.random.default_rng(7)
    cats = ["B cell", "T cell", "Zellé β"]
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical([cats[i % 3] if i != 2 else None for i in range(n)],
                                        categories=cats),
            "hours": pd.Categorical([["0", "24", "48"][(i // 2) % 3] for i in range(n)],
                                    categories=["0", "24", "48"]),
            "batch": pd.Categorical([1 + i % 2 for i in range(n)]),
            "library": ["lib-%d%s" % (i, "ü" if i == 1 else "") for i in range(n)],
            "n_counts": np.arange(100, 100 + 7 * n, 7, dtype=np.int32)[:n],
            "score": np.array([0.1 * i if i != 4 else np.nan for i in range(n)], np.float64),
            "frac": (rng.random(n) * 3).astype(np.float32),
            "is_doublet": np.array([i % 3 == 1 for i in range(n)]),
            "umis": pd.array([i * 10 if i != 5 else None for i in range(n)], dtype="Int64"),
            "passed": pd.array([i % 2 == 0 if i != 0 else None for i in range(n)],
                               dtype="boolean"),
        },
        index=["cell_%02d" % i for i in range(n)])


def var_frame(m):
    return pd.DataFrame(
        {
            "gene_name": ["G%d" % j for j in range(m)],
            "highly_variable": np.array([j % 4 == 0 for j in range(m)]),
            "means": np.linspace(0.0, 2.5, m).astype(np.float64),
            "biotype": pd.Categorical(["protein_coding" if j % 3 else "lincRNA" for j in range(m)]),
        },
        index=["ENSG%05d.%d" % (j, j % 3 + 1) for j in range(m)])


def csr_i32_f32():
    n, m = 7, 11
    rng = np.random.default_rng(1)
    d = np.zeros((n, m), np.float32)
    for i in range(n):
        if i == 3:
            continue  # an empty row
        for j in rng.choice(m, size=2 + i % 4, replace=False):
            d[i, j] = np.float32(rng.integers(1, 2000) / 16.0 + 0.1)
    d[6, 10] = np.float32(12345.678)
    d[0, 0] = np.float32(1e-3)
    X = sp.csr_matrix(d)
    a = ad.AnnData(X, obs=obs_frame(n), var=var_frame(m), dtype=np.float32)
    write("csr_i32_f32.h5ad", a)
    describe("csr_i32_f32.h5ad", a, "csr_matrix", "int32", extra=[
        ("error", "kind", "obs", "no_such_column", "has no column /obs/no_such_column"),
        ("error", "strings", "obsm", "cell_type", "frame 'obsm' is not obs or var"),
        ("error", "strings", "obs", "no/such", "is not a plain name"),
    ])


def csr_i64_f64():
    # float64 values that round to float32, duplicate and unsorted entries within a row
    data = np.array([0.1, 2.0, 0.5, 0.25, 1e-7, 3.0, 1.5, 7.25, 1e30], np.float64)
    indices = np.array([4, 1, 2, 2, 0, 5, 3, 3, 0], np.int64)
    indptr = np.array([0, 2, 4, 4, 6, 9], np.int64)
    X = sp.csr_matrix((data, indices, indptr), shape=(5, 6))
    X.indices = X.indices.astype(np.int64)
    X.indptr = X.indptr.astype(np.int64)
    obs = pd.DataFrame({"group": pd.Categorical(list("aabba"))},
                       index=["c%d" % i for i in range(5)])
    a = ad.AnnData(X, obs=obs, dtype=np.float64)
    a.X.indices = a.X.indices.astype(np.int64)
    a.X.indptr = a.X.indptr.astype(np.int64)
    write("csr_i64_f64.h5ad", a)
    describe("csr_i64_f64.h5ad", a, "csr_matrix", "int64")


def csc_i32_int():
    rng = np.random.default_rng(3)
    d = rng.poisson(0.8, size=(6, 5)).astype(np.int32)
    d[:, 2] = 0  # an empty column
    X = sp.csc_matrix(d)
    obs = pd.DataFrame({"depth": np.array([1.5, 2.5, 3.5, 4.5, 5.5, 6.5], np.float32)},
                       index=["s%d" % i for i in range(6)])
    a = ad.AnnData(X, obs=obs, dtype=np.int32)
    write("csc_i32_int.h5ad", a)
    describe("csc_i32_int.h5ad", a, "csc_matrix", "int32")


def dense_f32():
    d = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5) / 3
    a = ad.AnnData(d, obs=pd.DataFrame(index=["a", "b", "c", "d"]),
                   var=pd.DataFrame(index=["x", "y", "z"]), dtype=np.float32)
    write("dense_f32.h5ad", a)
    describe("dense_f32.h5ad", a, "array", "-")


def dense_f64():
    d = np.array([[0.1, -2.0, 1e-40, 5.0], [np.pi, 0.0, -1e20, 2.5], [1.0, 1.0 / 3, 0.0, 7.0]])
    a = ad.AnnData(d, obs=pd.DataFrame({"t": [0, 24, 48]}, index=["p", "q", "r"]),
                   var=pd.DataFrame(index=["g0", "g1", "g2", "g3"]), dtype=np.float64)
    write("dense_f64.h5ad", a)
    describe("dense_f64.h5ad", a, "array", "-")


# ---- hand-made files ----

def vstr(f, path, values, enc=True):
    ds = f.create_dataset(path, data=np.array(values, dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
    if enc:
        ds.attrs["encoding-type"] = "string-array"
        ds.attrs["encoding-version"] = "0.2.0"
    return ds


def enc(obj, t, v):
    obj.attrs["encoding-type"] = t
    obj.attrs["encoding-version"] = v


def small_frames(f, n_obs, n_var):
    for frame, n in (("obs", n_obs), ("var", n_var)):
        g = f.create_group(frame)
        enc(g, "dataframe", "0.2.0")
        g.attrs["_index"] = "_index"
        g.attrs["column-order"] = np.array([], dtype=np.float64)
        vstr(f, frame + "/_index", ["%s%d" % (frame, i) for i in range(n)])


def small_csr(f, data, indices, indptr, shape, version="0.1.0"):
    g = f.create_group("X")
    enc(g, "csr_matrix", version)
    g.attrs["shape"] = np.array(shape, np.int64)
    g.create_dataset("data", data=data)
    g.create_dataset("indices", data=indices)
    g.create_dataset("indptr", data=indptr)


def legacy():
    """anndata < 0.7 style: h5sparse X, dataframe 0.1.0 with __categories, fixed-length index."""
    name = "legacy.h5ad"
    data = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    indices = np.array([0, 2, 1, 2], np.int32)
    indptr = np.array([0, 2, 2, 4], np.int32)
    with h5py.File(os.path.join(OUT, name), "w") as f:
        g = f.create_group("X")
        g.attrs["h5sparse_format"] = "csr"
        g.attrs["h5sparse_shape"] = np.array([3, 3], np.int64)
        g.create_dataset("data", data=data)
        g.create_dataset("indices", data=indices)
        g.create_dataset("indptr", data=indptr)
        obs = f.create_group("obs")
        enc(obs, "dataframe", "0.1.0")
        obs.attrs["_index"] = "_index"
        obs.attrs["column-order"] = np.array(["kind", "size"], dtype=h5py.string_dtype())
        obs.create_dataset("_index", data=np.array([b"r0", b"r1", b"r22"], dtype="S3"))
        cats = obs.create_group("__categories")
        cd = vstr(f, "obs/__categories/kind", ["x", "y"], enc=False)
        codes = obs.create_dataset("kind", data=np.array([1, 0, -1], np.int8))
        codes.attrs["categories"] = cd.ref
        obs.create_dataset("size", data=np.array([1.25, 2.5, 3.75], np.float32))
        del cats
        var = f.create_group("var")
        enc(var, "dataframe", "0.1.0")
        var.attrs["_index"] = "_index"
        var.attrs["column-order"] = np.array([], dtype=np.float64)
        var.create_dataset("_index", data=np.array([b"ga", b"gb", b"gc"], dtype="S2"))
    rec("file", name)
    rec("meta", 3, 3, "csr_matrix", "float32", "int32", 4)
    rec("row", 0, "1.0", "0.0", "2.0")
    rec("row", 1, "0.0", "0.0", "0.0")
    rec("row", 2, "0.0", "3.0", "4.0")
    rec("index", "obs", "r0", "r1", "r22")
    rec("index", "var", "ga", "gb", "gc")
    rec("columns", "obs", "kind", "size")
    rec("kind", "obs", "kind", "categorical")
    rec("codes", "obs", "kind", 1, 0, -1)
    rec("categories", "obs", "kind", "x", "y")
    rec("strings", "obs", "kind", "y", "x", "")
    rec("strings", "obs", "size", "1.25", "2.5", "3.75")
    rec("kind", "obs", "size", "numeric")
    rec("end")


def bad_files():
    # X with an encoding the reader does not know
    with h5py.File(os.path.join(OUT, "bad_x_awkward.h5ad"), "w") as f:
        enc(f, "anndata", "0.1.0")
        g = f.create_group("X")
        enc(g, "awkward-array", "0.1.0")
        g.attrs["length"] = 2
        small_frames(f, 2, 2)
    rec("file", "bad_x_awkward.h5ad")
    rec("error", "open", "-", "-",
        "/X: encoding-type 'awkward-array' not supported (expected csr_matrix, csc_matrix or "
        "array)")
    rec("end")

    # a csr_matrix of a future encoding version
    with h5py.File(os.path.join(OUT, "bad_x_version.h5ad"), "w") as f:
        enc(f, "anndata", "0.1.0")
        small_csr(f, np.ones(1, np.float32), np.zeros(1, np.int32), np.array([0, 1, 1], np.int32),
                  (2, 2), version="0.9.0")
        small_frames(f, 2, 2)
    rec("file", "bad_x_version.h5ad")
    rec("error", "open", "-", "-",
        "/X: csr_matrix encoding-version '0.9.0' not supported (expected 0.1.0)")
    rec("end")

    # malformed data: row 0 has a float64 outside the float32 range, row 1 a column index
    # outside the matrix, rows 2..3 are fine
    with h5py.File(os.path.join(OUT, "bad_x_data.h5ad"), "w") as f:
        enc(f, "anndata", "0.1.0")
        small_csr(f, np.array([1e300, 1.0, 2.0, 3.0], np.float64),
                  np.array([0, 9, 1, 3], np.int32), np.array([0, 1, 2, 3, 4], np.int32), (4, 4))
        small_frames(f, 4, 4)
    rec("file", "bad_x_data.h5ad")
    rec("error", "x", 0, 1, "/X/data[0] = 1e+300 is outside the float32 range")
    rec("error", "x", 1, 2, "/X/indices[1] = 9 (row 1) is outside 0..3")
    rec("error", "x", 0, 5, "rows 0..5 of")
    rec("end")

    # obs columns the reader refuses, X fine
    with h5py.File(os.path.join(OUT, "bad_columns.h5ad"), "w") as f:
        enc(f, "anndata", "0.1.0")
        small_csr(f, np.ones(3, np.float32), np.array([0, 1, 0], np.int32),
                  np.array([0, 1, 2, 3], np.int32), (3, 2))
        small_frames(f, 3, 2)
        obs = f["obs"]
        g = obs.create_group("awk")
        enc(g, "awkward-array", "0.1.0")
        g = obs.create_group("catver")
        enc(g, "categorical", "0.3.0")
        g = obs.create_group("badcode")
        enc(g, "categorical", "0.2.0")
        g.attrs["ordered"] = False
        g.create_dataset("codes", data=np.array([0, 5, -1], np.int8))
        vstr(f, "obs/badcode/categories", ["u", "v"])
        ds = obs.create_dataset("short", data=np.array([1, 2], np.int32))
        enc(ds, "array", "0.2.0")
        ds = obs.create_dataset("comp", data=np.zeros(3, dtype=[("a", "i4"), ("b", "f4")]))
        enc(ds, "array", "0.2.0")
        ds = obs.create_dataset("dictds", data=np.zeros(3, np.int32))
        enc(ds, "dict", "0.1.0")
        obs.attrs["column-order"] = np.array(["awk", "catver", "badcode", "short", "comp",
                                              "dictds"], dtype=h5py.string_dtype())
    rec("file", "bad_columns.h5ad")
    rec("meta", 3, 2, "csr_matrix", "float32", "int32", 3)
    rec("row", 0, "1.0", "0.0")
    rec("row", 1, "0.0", "1.0")
    rec("row", 2, "1.0", "0.0")
    rec("columns", "obs", "awk", "catver", "badcode", "short", "comp", "dictds")
    rec("error", "strings", "obs", "awk",
        "/obs/awk: encoding-type 'awkward-array' not supported (expected categorical, "
        "nullable-integer or nullable-boolean for a group column)")
    rec("error", "kind", "obs", "catver",
        "/obs/catver: categorical encoding-version '0.3.0' not supported (expected 0.2.0)")
    rec("error", "categorical", "obs", "badcode",
        "/obs/badcode/codes: code 5 of row 1 is outside -1..1")
    rec("error", "numbers", "obs", "short", "/obs/short has 2 entries, expected 3 (n_obs)")
    rec("error", "strings", "obs", "comp",
        "/obs/comp holds a compound type, expected numbers, booleans or strings")
    rec("error", "numbers", "obs", "dictds", "/obs/dictds: encoding-type 'dict' not supported")
    rec("end")


def scprep_60x200():
    """scprep_60x200.h5ad: counts for `calmflow data -data_h5ad` (tests/test_data_h5ad.sh, which
    checks it against its own numpy pipeline; no records in expected.txt). 60 cells of three
    conditions, each with its own program of up-regulated genes, 200 genes, CSR float32:
    cell 7 is empty, cells 11, 23 and 42 express few genes, genes 190..199 are zero everywhere
    and genes 180..189 are expressed in one or two cells."""
    n, m = 60, 200
    rng = np.random.default_rng(60200)
    cond = np.array([i % 3 for i in range(n)])
    base = rng.gamma(0.6, 2.0, size=m)
    prog = np.ones((3, m))
    for c in range(3):
        prog[c, rng.choice(170, size=25, replace=False)] *= rng.uniform(3, 12, size=25)
    depth = rng.uniform(0.5, 2.0, size=n)
    mu = depth[:, None] * base[None, :] * prog[cond]
    X = rng.poisson(mu).astype(np.float32)
    X[:, 180:] = 0
    for j in range(180, 190):
        for i in rng.choice(n, size=1 + j % 2, replace=False):
            X[i, j] = np.float32(rng.integers(1, 9))
    X[7] = 0
    for i in (11, 23, 42):
        keep = rng.choice(180, size=8 + i % 5, replace=False)
        row = np.zeros(m, np.float32)
        row[keep] = X[i, keep] + 1
        X[i] = row
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(["ctrl", "drug A", "drug B"][c] for c in cond),
            "hours": pd.Categorical([["0", "24", "48"][i % 3 if i % 2 else (i // 2) % 3]
                                     for i in range(n)], categories=["0", "24", "48"]),
            "batch": pd.Categorical([1 + (i // 30) for i in range(n)]),
            "library": ["lib-%02d%s" % (i, "ü" if i == 5 else "") for i in range(n)],
            "depth": depth.astype(np.float64),
        },
        index=["cell_%02d" % i for i in range(n)])
    var = pd.DataFrame({"symbol": ["S%03d" % j for j in range(m)]},
                       index=["gene_%03d" % j for j in range(m)])
    a = ad.AnnData(sp.csr_matrix(X), obs=obs, var=var, dtype=np.float32)
    write("scprep_60x200.h5ad", a)


def main():
    os.makedirs(OUT, exist_ok=True)
    scprep_60x200()
    csr_i32_f32()
    csr_i64_f64()
    csc_i32_int()
    dense_f32()
    dense_f64()
    legacy()
    bad_files()
    with open(os.path.join(OUT, "expected.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for name in sorted(os.listdir(OUT)):
        print("%-24s %7d bytes" % (name, os.path.getsize(os.path.join(OUT, name))))


if __name__ == "__main__":
    main()
