#!/usr/bin/python3
"""test_neox_load.py OUT: the fixtures of tests/test_neox_load.c — a small GPT-NeoX model in
Hugging Face's layout, written without the transformers library:

  OUT/good/      config.json, model.safetensors (safetensors written by hand with struct +
                 json; embed_in in BF16, one MLP weight in F16, the rest F32, plus tensors
                 calmflow does not read: embed_out, a BOOL attention mask buffer, inv_freq),
                 ref.txt: "T H", the token ids, then the final hidden states (T x H, after
                 final_layer_norm) of an independent float64 GPT-NeoX forward below
  OUT/sharded/   the same weights in two shards with model.safetensors.index.json
  OUT/bad_*/     one defect each (see BAD below; the C test expects the message fragments)

The forward follows the Hugging Face GPT-NeoX semantics: fused query_key_value viewed as
(T, heads, 3*dh) so each head's q, k, v are consecutive, rotary (rotate-half, inv_freq =
base^(-arange(0, rot, 2)/rot)) on the first rot = int(rotary_pct*dh) dims of q and k, causal
softmax of q k^T / sqrt(dh), dense; parallel residual x + attn(ln1(x)) + mlp(ln2(x)) with the
exact erf GELU; final_layer_norm.
"""
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import torch

H, HEADS, LAYERS, FFN, VOCAB = 32, 4, 4, 48, 56  # a tokenizer of 50 ids, padded
ROT_PCT, BASE, EPS = 0.5, 1000.0, 1e-5
TOKENS = [3, 17, 42, 0, 49, 8, 8, 25, 31, 2, 11, 46]
PRE = "gpt_neox."

CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "hidden_size": H,
    "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS,
    "intermediate_size": FFN,
    "vocab_size": VOCAB,
    "rotary_pct": ROT_PCT,
    "rotary_emb_base": BASE,
    "layer_norm_eps": EPS,
    "use_parallel_residual": True,
    "hidden_act": "gelu",
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def make_weights():
    """name -> (numpy array as stored, dtype name); values drawn from a fixed generator."""
    g = np.random.default_rng(2024)
    w = {}

    def put(name, arr, dtype="F32"):
        w[name] = (arr, dtype)

    emb = g.normal(0.0, 1.0, (VOCAB, H)).astype(np.float32)
    bf = torch.from_numpy(emb).to(torch.bfloat16)
    put(PRE + "embed_in.weight", bf, "BF16")
    for l in range(LAYERS):
        p = f"{PRE}layers.{l}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            put(p + ln + ".weight", (1.0 + 0.2 * g.normal(size=H)).astype(np.float32))
            put(p + ln + ".bias", (0.1 * g.normal(size=H)).astype(np.float32))
        put(p + "attention.query_key_value.weight",
            (g.normal(size=(3 * H, H)) / math.sqrt(H)).astype(np.float32))
        put(p + "attention.query_key_value.bias", (0.1 * g.normal(size=3 * H)).astype(np.float32))
        put(p + "attention.dense.weight", (g.normal(size=(H, H)) / math.sqrt(H)).astype(np.float32))
        put(p + "attention.dense.bias", (0.1 * g.normal(size=H)).astype(np.float32))
        fc1 = (g.normal(size=(FFN, H)) / math.sqrt(H)).astype(np.float32)
        if l == 1:
            put(p + "mlp.dense_h_to_4h.weight", fc1.astype(np.float16), "F16")
        else:
            put(p + "mlp.dense_h_to_4h.weight", fc1)
        put(p + "mlp.dense_h_to_4h.bias", (0.1 * g.normal(size=FFN)).astype(np.float32))
        put(p + "mlp.dense_4h_to_h.weight",
            (g.normal(size=(H, FFN)) / math.sqrt(FFN)).astype(np.float32))
        put(p + "mlp.dense_4h_to_h.bias", (0.1 * g.normal(size=H)).astype(np.float32))
        # buffers old checkpoints carry, which calmflow does not read
        put(p + "attention.bias", np.tril(np.ones((1, 1, 4, 4), dtype=np.bool_)), "BOOL")
        rot = int(ROT_PCT * (H // HEADS))
        put(p + "attention.rotary_emb.inv_freq",
            (1.0 / BASE ** (np.arange(0, rot, 2) / rot)).astype(np.float32))
    put(PRE + "final_layer_norm.weight", (1.0 + 0.2 * g.normal(size=H)).astype(np.float32))
    put(PRE + "final_layer_norm.bias", (0.1 * g.normal(size=H)).astype(np.float32))
    put("embed_out.weight", g.normal(size=(VOCAB, H)).astype(np.float32))
    return w


def raw_bytes(arr, dtype):
    if dtype == "BF16":
        return arr.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    np_t = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BOOL": "|b1"}[dtype]
    return np.ascontiguousarray(arr).astype(np_t).tobytes()


def as_f64(arr):
    if isinstance(arr, torch.Tensor):
        return arr.to(torch.float64)
    return torch.from_numpy(np.asarray(arr, dtype=np.float64))


def write_safetensors(path, tensors, shapes=None, header_hook=None):
    """tensors: list of (name, array, dtype); shapes overrides the stored shape of a name."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr, dtype in tensors:
        b = raw_bytes(arr, dtype)
        shape = list(shapes[name]) if shapes and name in shapes else list(arr.shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if header_hook:
        header_hook(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + EPS) * w + b


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def neox_forward(w):
    W = {k: as_f64(v[0]) for k, v in w.items()}
    T, dh = len(TOKENS), H // HEADS
    rot = int(ROT_PCT * dh)
    x = W[PRE + "embed_in.weight"][torch.tensor(TOKENS)]
    inv_freq = 1.0 / (BASE ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # (T, 1, rot)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(LAYERS):
        p = f"{PRE}layers.{l}."
        h1 = layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"])
        qkv = h1 @ W[p + "attention.query_key_value.weight"].T + W[p + "attention.query_key_value.bias"]
        qkv = qkv.view(T, HEADS, 3 * dh)
        q, k, v = qkv[..., :dh], qkv[..., dh:2 * dh], qkv[..., 2 * dh:]

        def rope(t):
            r, rest = t[..., :rot], t[..., rot:]
            return torch.cat((r * cos + rotate_half(r) * sin, rest), dim=-1)

        q, k = rope(q), rope(k)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (heads, T, dh)
        s = q @ k.transpose(1, 2) / math.sqrt(dh)
        s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v  # (heads, T, dh)
        a = a.transpose(0, 1).reshape(T, H)
        attn = a @ W[p + "attention.dense.weight"].T + W[p + "attention.dense.bias"]
        h2 = layer_norm(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"])
        f = h2 @ W[p + "mlp.dense_h_to_4h.weight"].T + W[p + "mlp.dense_h_to_4h.bias"]
        f = 0.5 * f * (1.0 + torch.erf(f / math.sqrt(2.0)))
        mlp = f @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
        x = x + attn + mlp
    return layer_norm(x, W[PRE + "final_layer_norm.weight"], W[PRE + "final_layer_norm.bias"])


def write_dir(d, w, config=CONFIG, **kw):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(d, "model.safetensors"),
                      [(n, a, t) for n, (a, t) in w.items()], **kw)


def main():
    out = sys.argv[1]
    shutil.rmtree(out, ignore_errors=True)
    w = make_weights()
    good = os.path.join(out, "good")
    write_dir(good, w)
    h = neox_forward(w).numpy()
    with open(os.path.join(good, "ref.txt"), "w") as f:
        f.write(f"{len(TOKENS)} {H}\n")
        f.write(" ".join(str(t) for t in TOKENS) + "\n")
        for row in h:
            f.write(" ".join(f"{v:.12e}" for v in row) + "\n")

    # two shards and an index
    sh = os.path.join(out, "sharded")
    os.makedirs(sh)
    shutil.copy(os.path.join(good, "config.json"), sh)
    names = list(w)
    first = [n for n in names if n.startswith(PRE + "layers.0.") or n.startswith(PRE + "layers.1.")
             or n == PRE + "embed_in.weight"]
    parts = {"model-00001-of-00002.safetensors": first,
             "model-00002-of-00002.safetensors": [n for n in names if n not in first]}
    wm = {}
    for fname, ns in parts.items():
        write_safetensors(os.path.join(sh, fname), [(n, w[n][0], w[n][1]) for n in ns])
        wm.update({n: fname for n in ns})
    with open(os.path.join(sh, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f, indent=1)

    # defects, one per directory
    def bad(name, weights=None, config=None, **kw):
        write_dir(os.path.join(out, "bad_" + name), weights if weights is not None else w,
                  config if config is not None else CONFIG, **kw)

    def with_cfg(**kv):
        c = dict(CONFIG)
        c.update(kv)
        return c

    bad("type", config=with_cfg(model_type="gpt2"))
    bad("serial", config=with_cfg(use_parallel_residual=False))
    bad("act", config=with_cfg(hidden_act="gelu_new"))
    bad("eps", config=with_cfg(layer_norm_eps=1e-6))
    w2 = dict(w)
    del w2[PRE + "layers.2.attention.dense.bias"]
    bad("missing", weights=w2)
    w2 = dict(w)
    a, _ = w2[PRE + "layers.1.mlp.dense_h_to_4h.weight"]
    w2[PRE + "layers.1.mlp.dense_h_to_4h.weight"] = (a.astype(np.float64), "F64")
    bad("dtype", weights=w2)
    w2 = dict(w)
    a, t = w2[PRE + "layers.3.mlp.dense_4h_to_h.weight"]
    w2[PRE + "layers.3.mlp.dense_4h_to_h.weight"] = (np.ascontiguousarray(a.T), t)
    bad("shape", weights=w2)
    w2 = dict(w)
    a, t = w2[PRE + "layers.3.mlp.dense_h_to_4h.weight"]
    a = a.copy()
    a[5, 7] = np.nan
    w2[PRE + "layers.3.mlp.dense_h_to_4h.weight"] = (a, t)
    bad("nan", weights=w2)
    bad("size", shapes={PRE + "layers.0.attention.dense.weight": (H, H + 1)})

    def overlap(hd):
        hd[PRE + "layers.0.ln_dummy"] = {"dtype": "F32", "shape": [2],
                                         "data_offsets": [0, 8]}
    bad("overlap", header_hook=overlap)

    def unknown(hd):
        hd[PRE + "layers.0.attention.rotary_emb.inv_freq"]["dtype"] = "F7"
    bad("unknown_dtype", header_hook=unknown)

    src = os.path.join(good, "model.safetensors")
    blob = open(src, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]

    def raw(name, data):
        d = os.path.join(out, "bad_" + name)
        os.makedirs(d)
        shutil.copy(os.path.join(good, "config.json"), d)
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(data)

    raw("trunc", blob[: 8 + n + (len(blob) - 8 - n) // 2])
    raw("hdrlen", struct.pack("<Q", len(blob)) + blob[8:])
    raw("json", blob[:8] + b"{\"x\": [1, 2" + b" " * (n - 11) + blob[8 + n:])
    raw("short", blob[:5])
    os.makedirs(os.path.join(out, "bad_noweights"))
    shutil.copy(os.path.join(good, "config.json"), os.path.join(out, "bad_noweights"))


if __name__ == "__main__":
    main()
