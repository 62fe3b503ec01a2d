#!/usr/bin/python3
"""make_seeds.py: write the generated seed inputs of the fuzz targets into OUTDIR/<target>/.

HDF5 targets get "recipes" for the structured builder of tests/fuzz/fuzz_h5build.c (byte format
in fuzz_common.h; names by index into each target's dictionary, read here from its C source):
hand-written valid files, and the small .h5ad fixtures of tests/data/h5ad converted to recipes
(obs / var columns renamed to the dictionary's c0..c5 / v0..v3). The options target gets YAML
files, the tokenizer targets the fixtures of tests/data/bpe (GPT-2's files cut down to 300
merges). `scripts/fuzz.sh --merge` folds them into tests/fuzz/corpus/ with libFuzzer's
-merge=1, which keeps only inputs that add coverage. Run with Debian's python3 (h5py, numpy):

    /usr/bin/python3 tests/fuzz/make_seeds.py OUTDIR
"""
import json
import os
import re
import struct
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "seeds")

# ---- the builder's byte format (fuzz_h5build.c) ----
(T_I8, T_U8, T_I16, T_U16, T_I32, T_U32, T_I64, T_U64, T_F32, T_F64, T_I32BE, T_F64BE, T_BOOL,
 T_ENUM, T_VSTR_UTF8, T_VSTR_ASCII, T_FSTR, T_REF, T_COMPOUND, T_ARRAY, T_CKSUM2,
 T_CKSUM1) = range(22)
PACK = {T_I8: "<b", T_U8: "<B", T_I16: "<h", T_U16: "<H", T_I32: "<i", T_U32: "<I", T_I64: "<q",
        T_U64: "<Q", T_F32: "<f", T_F64: "<d", T_I32BE: ">i", T_F64BE: ">d", T_BOOL: "<b",
        T_ENUM: "<h"}


def c_dict(target):
    """(paths, attrs, strs) of tests/fuzz/fuzz_<target>.c: the string literals of its g_paths,
    g_attrs and g_strs arrays, COLUMN(f, c) expanded as fuzz_h5ad.c defines it."""
    src = open(os.path.join(HERE, "fuzz_%s.c" % target), encoding="utf-8").read()

    def literal(x):  # C escapes -> bytes -> UTF-8 text
        return x.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8")

    def array(name):
        body = re.search(r"g_%s\[\] = \{(.*?)\};" % name, src, re.S).group(1)
        out = []
        for m in re.finditer(r'COLUMN\("([^"]*)", "([^"]*)"\)|"((?:[^"\\]|\\.)*)"', body):
            if m.group(1) is not None:
                f, c = m.group(1), m.group(2)
                out += [f + "/" + c, f + "/" + c + "/codes", f + "/" + c + "/categories",
                        f + "/" + c + "/values", f + "/" + c + "/mask", f + "/__categories/" + c]
            else:
                out.append(literal(m.group(3)))
        return out

    return array("paths"), array("attrs"), array("strs")


class Recipe:
    """Operations for cf_fuzz_h5_build, names by index into a target's dictionary."""

    def __init__(self, target, latest=False):
        self.paths, self.attrs, self.strs = c_dict(target)
        self.b = bytearray([1 if latest else 0])

    def _obj(self, p):
        return len(self.paths) if p == "/" else self.paths.index(p)

    def _values(self, t, values, width):
        out = bytearray()
        for v in values:
            if t in (T_VSTR_UTF8, T_VSTR_ASCII):  # a dictionary entry, else 0xf0, length, bytes
                if v in self.strs:
                    out.append(self.strs.index(v))
                else:
                    raw = v.encode("utf-8")[:63]
                    out += bytes([0xf0, len(raw)]) + raw
            elif t == T_FSTR:  # a dictionary entry, else 0x80 and the width's bytes
                if v in self.strs:
                    out.append(self.strs.index(v))
                else:
                    out += bytes([0x80]) + v.encode("utf-8")[:width].ljust(width, b"\0")
            elif t == T_REF:
                out.append(self._obj(v))
            elif t in (T_COMPOUND, T_ARRAY):
                out += bytes(12 if t == T_COMPOUND else 8)
            else:
                out += struct.pack(PACK[t], v)
        return bytes(out)

    def group(self, p):
        self.b += bytes([0, self.paths.index(p)])
        return self

    def dataset(self, p, t, dims, values, chunked=False, width=16):
        assert all(d < 240 for d in dims)
        self.b += bytes([1, self.paths.index(p), t, len(dims)] + list(dims) + [int(chunked)])
        if t == T_FSTR:
            self.b.append(width - 1)  # NULLTERM, ASCII
        self.b += self._values(t, values, width)
        return self

    def attr(self, obj, name, t, values, dims=None, width=16):
        if dims is None:
            dims = [] if len(values) == 1 else [len(values)]
        nd = len(dims)
        d0, d1 = (dims + [0, 0])[:2]
        shape = next(s for s in range(256) if s % 3 == nd and (nd == 0 or (s >> 2) % 9 == d0)
                     and (nd < 2 or (s >> 6) % 4 == d1) and not s & 0x20)
        self.b += bytes([2, self._obj(obj), self.attrs.index(name), t, shape])
        if t == T_FSTR:
            self.b.append(width - 1)
        if t not in (T_CKSUM1, T_CKSUM2):
            self.b += self._values(t, values, width)
        return self

    def str_attr(self, obj, name, value, t=T_VSTR_UTF8):
        return self.attr(obj, name, t, [value], dims=[])

    def link(self, frm, to, soft=True):
        self.b += bytes([3, int(soft), self.paths.index(frm), self.paths.index(to)])
        return self


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ---- an HDF5 file as a recipe ----
def dtype_code(dt, is_attr=False):
    """(builder type, width) of a numpy / h5py dtype, or None."""
    if h5py.check_string_dtype(dt) is not None and dt.kind == "O":
        return T_VSTR_UTF8, 0
    if dt.kind == "S":
        return T_FSTR, dt.itemsize
    if h5py.check_ref_dtype(dt) is not None:
        return T_REF, 0
    if dt.kind == "b":
        return T_BOOL, 0
    if dt.names:
        return T_COMPOUND, 0
    table = {"i1": T_I8, "u1": T_U8, "i2": T_I16, "u2": T_U16, "i4": T_I32, "u4": T_U32,
             "i8": T_I64, "u8": T_U64, "f4": T_F32, "f8": T_F64}
    return (table[dt.str[1:]], 0) if dt.str[1:] in table else None


def recipe_from_h5(target, path, rename):
    """The objects of `path` whose (renamed) names are in the target's dictionary, with their
    attributes; values of strings, numbers and references as stored."""
    r = Recipe(target)
    h = h5py.File(path, "r")

    def name_of(n):
        parts = n.split("/")
        return "/".join(rename.get(p, p) for p in parts)

    def text(v):
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    def values(obj, t, arr):
        flat = np.asarray(arr).ravel()
        if t in (T_VSTR_UTF8, T_FSTR):
            return [rename.get(text(v), text(v)) for v in flat]
        if t == T_REF:
            return [name_of(h[v].name[1:]) if v else "/" for v in flat]
        if t in (T_COMPOUND,):
            return [0] * len(flat)
        return [v.item() if t != T_BOOL else int(v) for v in flat]

    def attrs_of(n, obj):
        for k in obj.attrs:
            if k not in r.attrs:
                continue
            a = obj.attrs.get_id(k)
            code = dtype_code(a.dtype)
            if code is None or a.shape is not None and len(a.shape) > 1:
                continue
            v = obj.attrs[k]
            dims = list(a.shape) if a.shape else []
            if dims and dims[0] > 8:
                continue
            r.attr(n, k, code[0], values(obj, code[0], v), dims=dims, width=max(code[1], 1))

    attrs_of("/", h)

    def visit(n, obj):
        nn = name_of(n)
        if nn not in r.paths:
            return
        if isinstance(obj, h5py.Group):
            r.group(nn)
        else:
            code = dtype_code(obj.dtype)
            if code is None or any(d >= 240 for d in obj.shape) or obj.ndim > 3:
                return
            r.dataset(nn, code[0], list(obj.shape), values(obj, code[0], obj[()]),
                      width=max(code[1], 1))
        attrs_of(nn, obj)

    h.visititems(visit)
    return bytes(r.b)


# ---- h5io: the point-set reader ----
def h5io_seeds():
    r = lambda: Recipe("h5io")
    put("h5io", "f32", r().dataset("x", T_F32, [3, 2], [0.5, -1, 2, 3, 4, 5]).b)
    put("h5io", "f64_latest", Recipe("h5io", latest=True).dataset("x", T_F64, [2, 3],
                                                                  [1, 2, 3, 4, 5, 6]).b)
    put("h5io", "f64be_range", r().dataset("x", T_F64BE, [2, 2], [1e300, 0, 1, 2]).b)
    put("h5io", "chunked", r().dataset("x", T_F32, [4, 2], list(range(8)), chunked=True).b)
    put("h5io", "int", r().dataset("x", T_I32, [2, 2], [1, 2, 3, 4]).b)
    put("h5io", "nan", r().dataset("x", T_F32, [2, 2], [1, float("nan"), 3, 4]).b)
    put("h5io", "group_link", r().group("g").dataset("g/x", T_F32, [1, 2], [1, 2])
        .link("x", "g/x").b)


# ---- h5ad: AnnData ----
def h5ad_frames(r, legacy=False):
    """obs of 3 cells (c0 categorical, c1 nullable-integer, c2 string) and var of 4 genes
    (v0 categorical with numeric categories, v1 nullable-boolean)."""
    def enc(obj, t, v):
        r.str_attr(obj, "encoding-type", t).str_attr(obj, "encoding-version", v)

    r.group("obs").group("var")
    enc("obs", "dataframe", "0.1.0" if legacy else "0.2.0")
    enc("var", "dataframe", "0.1.0" if legacy else "0.2.0")
    r.str_attr("obs", "_index", "_index").str_attr("var", "_index", "_index")
    r.attr("obs", "column-order", T_VSTR_UTF8, ["c0", "c1", "c2"])
    r.attr("var", "column-order", T_VSTR_UTF8, ["v0", "v1"])
    r.dataset("obs/_index", T_VSTR_UTF8, [3], ["cell-1", "x y", "\u00e9"])
    r.dataset("var/_index", T_VSTR_UTF8, [4], ["g1", "g2", "g3", "g4"])
    if legacy:  # dataframe 0.1.0: codes with a reference to __categories/<name>
        r.dataset("obs/__categories/c0", T_VSTR_UTF8, [2], ["1", "2.5"])
        r.dataset("obs/c0", T_I8, [3], [0, 1, -1])
        r.attr("obs/c0", "categories", T_REF, ["obs/__categories/c0"], dims=[])
    else:
        r.group("obs/c0")
        enc("obs/c0", "categorical", "0.2.0")
        r.dataset("obs/c0/codes", T_I8, [3], [0, 1, -1])
        r.dataset("obs/c0/categories", T_VSTR_UTF8, [2], ["1", "2.5"])
    r.group("obs/c1")
    enc("obs/c1", "nullable-integer", "0.1.0")
    r.dataset("obs/c1/values", T_I32, [3], [7, -2, 5]).dataset("obs/c1/mask", T_BOOL, [3],
                                                              [0, 1, 0])
    r.dataset("obs/c2", T_VSTR_UTF8, [3], ["-3e2", "nan", ""])
    enc("obs/c2", "string-array", "0.2.0")
    r.group("var/v0")
    enc("var/v0", "categorical", "0.2.0")
    r.dataset("var/v0/codes", T_I16, [4], [1, 0, 0, 2])
    r.dataset("var/v0/categories", T_F64, [3], [0.5, 24, -1])
    r.group("var/v1")
    enc("var/v1", "nullable-boolean", "0.1.0")
    r.dataset("var/v1/values", T_BOOL, [4], [1, 0, 1, 1]).dataset("var/v1/mask", T_BOOL, [4],
                                                                  [0, 0, 1, 0])


def h5ad_seeds():
    # X (3 x 4): [[1 0 2 0] [0 0 0 3] [4 5 0 0]]
    for kind in ("csr", "csc", "dense", "legacy"):
        r = Recipe("h5ad")
        r.str_attr("/", "encoding-type", "anndata").str_attr("/", "encoding-version", "0.1.0")
        if kind == "dense":
            r.dataset("X", T_F64, [3, 4], [1, 0, 2, 0, 0, 0, 0, 3, 4, 5, 0, 0])
            r.str_attr("X", "encoding-type", "array").str_attr("X", "encoding-version", "0.2.0")
        else:
            r.group("X")
            if kind == "legacy":
                r.str_attr("X", "h5sparse_format", "csr")
                r.attr("X", "h5sparse_shape", T_I64, [3, 4])
            else:
                r.str_attr("X", "encoding-type", kind + "_matrix")
                r.str_attr("X", "encoding-version", "0.1.0")
                r.attr("X", "shape", T_I64, [3, 4])
            if kind == "csc":
                data, ind, ptr = [1, 4, 5, 2, 3], [0, 2, 2, 0, 1], [0, 2, 3, 4, 5]
            else:
                data, ind, ptr = [1, 2, 3, 4, 5], [0, 2, 3, 0, 1], [0, 2, 3, 5]
            r.dataset("X/data", T_F32, [5], data)
            r.dataset("X/indices", T_I32, [5], ind)
            r.dataset("X/indptr", T_I64 if kind == "csc" else T_I32, [len(ptr)], ptr)
        h5ad_frames(r, legacy=kind == "legacy")
        put("h5ad", "recipe_" + kind, r.b)
    # the fixtures, columns renamed in column-order order
    fixtures = os.path.join(ROOT, "tests", "data", "h5ad")
    for f in sorted(os.listdir(fixtures)):
        p = os.path.join(fixtures, f)
        if not f.endswith(".h5ad") or os.path.getsize(p) > 50000:
            continue
        rename = {}
        with h5py.File(p, "r") as h:
            for frame, prefix, most in (("obs", "c", 6), ("var", "v", 4)):
                if frame in h and "column-order" in h[frame].attrs:
                    order = [c.decode() if isinstance(c, bytes) else str(c)
                             for c in np.asarray(h[frame].attrs["column-order"]).ravel()]
                    for i, c in enumerate(order[:most]):
                        rename[c] = "%s%d" % (prefix, i)
        put("h5ad", "fixture_" + f[:-5], recipe_from_h5("h5ad", p, rename))


# ---- ckpt: checkpoints ----
M64 = (1 << 64) - 1


def ckpt_seeds():
    w = [i / 7 for i in range(12)]
    b = [1, -2, 3.5, 0, 1e-3]
    for version in (2, 1):
        r = Recipe("ckpt")
        a = T_VSTR_ASCII  # what cf_ckpt_write stores
        r.attr("/", "format", T_FSTR, ["calmflow-ckpt"], dims=[], width=16)
        r.attr("/", "format_version", T_I64, [version], dims=[])
        for k, v in (("step", 3), ("world", 1), ("data_cursor", 0), ("n_tensors", 2)):
            r.attr("/", k, T_I64, [v], dims=[])
        r.attr("/", "seed", T_U64, [1], dims=[])
        r.str_attr("/", "model_kind", "cfm" if version == 1 else "calmflow", a)
        opt = "data_dim: \"3\"\nnet_hidden: \"8\"\n" if version == 2 else "model: \"cfm\"\n"
        r.str_attr("/", "options", opt, a)
        if version == 2:
            r.str_attr("/", "layout", "dp1 x pp1 x cp1 x tp1 (1 rank)", a)
            r.str_attr("/", "rng", "philox4x32-10", a).attr("/", "rng_step", T_I64, [3], dims=[])
            r.str_attr("/", "checksum_algorithm", "mix64sum-f32", a)
        r.dataset("params/w", T_F32, [3, 4], w)
        r.attr("params/w", "checksum", T_CKSUM2 if version == 2 else T_CKSUM1, [0])
        r.dataset("params/b", T_F32, [5], b)
        r.attr("params/b", "checksum", T_CKSUM2 if version == 2 else T_CKSUM1, [0])
        r.attr("/", "complete", T_I64, [1], dims=[])
        put("ckpt", "v%d" % version, r.b)


# ---- options: YAML ----
def options_seeds():
    for f in ("demo.yaml", "paper-2d.yaml"):
        put("options", f, file_bytes(os.path.join(ROOT, "configs", f)))
    put("options", "flat.yaml", b"model: cfm\ncfm_coupling: independent\ndata_dim: 3\n"
        b"net_hidden: 16\nnet_layers: 2\ntrain_batch: 64\n")
    put("options", "nested.yaml", b"flow:\n  head: gmm\n  gmm_k: 4\n  path: ve\n"
        b"net: {layers: 1, hidden: 8, heads: 2, ffn: 16}\npar: {tp: 2, pp: 1, cp: 1}\n"
        b"train: {batch: 16, microbatches: 2, lr: 1e-3, decay: linear}\n")
    put("options", "sample.yaml", b"sample:\n  n: 100\n  batch: 8\n  temperature: 0.7\n"
        b"  kvcache: true\nseed: 12\nrun_dir: runs/x\n")
    put("options", "anchors.yaml", b"defaults: &d\n  layers: 2\nnet:\n  <<: *d\n  hidden: 32\n"
        b"list: [1, 2, 3]\nquoted: \"a: b # c\"\n")


# ---- tokenizers ----
SEP = b"\n----\n"


def bpe_seeds():
    d = os.path.join(ROOT, "tests", "data", "bpe")
    for f in ("tiny_neox.json", "tiny_opts.json"):
        put("bpe_json", f, file_bytes(os.path.join(d, f)) + SEP + "Hello  world, caf\u00e9!"
            .encode())
    # a tiny GPT-2 pair: the 256 byte symbols, <|endoftext|>, and the first 300 merges of
    # vocab.bpe whose parts are already in (the merged tokens added as they come)
    enc = json.load(open(os.path.join(d, "encoder.json"), encoding="utf-8"))
    vocab = {k: v for k, v in sorted(enc.items(), key=lambda kv: kv[1])[:256]}
    merges = []
    for line in open(os.path.join(d, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:]:
        if len(merges) == 300 or not line:
            break
        a, b = line.split(" ")
        if a in vocab and b in vocab and a + b in enc:
            vocab[a + b] = enc[a + b]
            merges.append(line)
    vocab["<|endoftext|>"] = enc["<|endoftext|>"]
    ej = json.dumps(vocab, ensure_ascii=False).encode()
    vb = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode()
    put("bpe_gpt2", "tiny_gpt2", ej + SEP + vb + SEP + b"The theory<|endoftext|> at   the end ")


if __name__ == "__main__":
    h5io_seeds()
    h5ad_seeds()
    ckpt_seeds()
    options_seeds()
    bpe_seeds()
    print("seeds written to", OUT)
