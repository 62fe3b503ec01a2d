#!/usr/bin/python3
"""make_reference.py: an independent PyTorch reference of the calmflow network
(include/calmflow/model.h) and the HDF5 dumps that tests/test_reference.c compares the C
model against.

The network is written here from the specification in model.h and calmflow-method.md
(sections 3, 4, Appendix A) only, with plain torch modules (no HF transformers):
  encoder  TwoLayerMLP D -> S*H (fc1 -> LayerNorm no affine -> ReLU -> fc2), split into S tokens;
           with time_input fc1 sees [z, t_j], t_j = (j // P) / (N - 1)
  prompt   (prompt_len L > 0) an nn.Embedding (V, H) "prompt.wte" of the L token ids in front of
           the trajectory tokens: rotary positions 0..L-1 for the prompt, L + k for token k,
           plain causal attention over all L + T (no padding mask: the pads are attended), and
           only the T trajectory outputs go on to lnf and the head
  blocks   GPT-NeoX, parallel residual: x += attn(ln1(x)) + mlp(ln2(x)); causal attention,
           with no_history only within the token's own point (keys i - i % S .. i)
  lnf      final LayerNorm
  heads    vae (mu / log-variance MLPs, reparameterized latent, decoder, recon + beta*KL)
           gauss (decoder to [mean | logstd], clamped logstd, Gaussian NLL)
           gmm (decoder to [logits (K) | means (K, D) | logstds (K, D)], clamped logstds,
           mixture NLL; recon = squared error of the mixture mean)
           fm (a velocity MLP on [y_s, phi(s)] plus a projection of the point's hidden states,
           flow-matching loss on the given (s, y0) draws; sampling by Euler steps)
           cvae (posterior on [c, y], prior on c, decoder on [c, z] to [mean | logstd],
           Gaussian NLL + beta KL(q || p); sampling from the prior)

Weights and inputs are drawn in float32 (so C reads them exactly); the model then runs in
float64 and every output and gradient is dumped in float64, so the reference is far more
accurate than the C float32 code and the test tolerance only has to cover float32 round-off.
A float32 run of the same model is printed for comparison (what float32 round-off looks like).

Usage: make_reference.py [OUTDIR]   (default: the directory of this script)
"""
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5
VAR_FLOOR = 1e-4
HEAD_CODE = {"vae": 0, "gauss": 1, "gmm": 2, "fm": 3, "cvae": 4}  # enum cf_head
FM_FEATURES = 8


def f32(x):
    """The float32 value nearest to x, as a Python float (what a C `float` holds)."""
    return float(np.float32(x))


def ln_plain(x):
    """LayerNorm over the last dimension without gain or bias."""
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)


class TwoLayerMLP(nn.Module):
    """fc1 -> LayerNorm (no affine) -> ReLU -> dropout (0 here) -> fc2."""

    def __init__(self, n_in, n_mid, n_out):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_mid)
        self.fc2 = nn.Linear(n_mid, n_out)

    def forward(self, x):
        return self.fc2(F.relu(ln_plain(self.fc1(x))))


class Decoder(nn.Module):
    """fc1 (I x n_in) -> LN -> ReLU -> fc2 (I x I) -> LN -> ReLU -> fc3 (n_out x I)."""

    def __init__(self, n_in, n_out, inner):
        super().__init__()
        self.fc1 = nn.Linear(n_in, inner)
        self.fc2 = nn.Linear(inner, inner)
        self.fc3 = nn.Linear(inner, n_out)

    def forward(self, x):
        x = F.relu(ln_plain(self.fc1(x)))
        x = F.relu(ln_plain(self.fc2(x)))
        return self.fc3(x)


def fourier(s):
    """phi(s) (model.h): sin and cos of 2^i pi s, i = 0..3 -> (..., 8)."""
    out = []
    for i in range(4):
        a = math.pi * (2**i) * s
        out += [torch.sin(a), torch.cos(a)]
    return torch.stack(out, dim=-1)


class FlowHead(nn.Module):
    """The fm head's velocity MLP: a1 = fc1([y_s, phi(s)]) + cond(c), then three
    LayerNorm (no affine) + ReLU units around fc2, fc3, and the output layer."""

    def __init__(self, D, SH, F):
        super().__init__()
        self.cond = nn.Linear(SH, F)
        self.fc1 = nn.Linear(D + FM_FEATURES, F)
        self.fc2 = nn.Linear(F, F)
        self.fc3 = nn.Linear(F, F)
        self.out = nn.Linear(F, D)

    def forward(self, ys, s, cp):
        """ys (..., D), s (...), cp = cond(c) broadcastable to (..., F) -> v (..., D)."""
        a = F.relu(ln_plain(self.fc1(torch.cat([ys, fourier(s)], dim=-1)) + cp))
        a = F.relu(ln_plain(self.fc2(a)))
        a = F.relu(ln_plain(self.fc3(a)))
        return self.out(a)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    """GPT-NeoX self-attention: fused qkv with per-head [q | k | v] rows, rotary on the
    first `rot` dims of each head's q and k (rotate-half), causal softmax of q.k / sqrt(dh).
    With `point_tokens` = S (no_history) query i sees only keys i - i % S .. i."""

    def __init__(self, hidden, heads, rot, base, point_tokens=0):
        super().__init__()
        self.heads, self.dh, self.rot, self.base = heads, hidden // heads, rot, base
        self.point_tokens = point_tokens
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def rotary(self, x):  # x (B, heads, T, dh), position = row of [prompt | tokens]
        rot = self.rot
        if rot == 0:
            return x
        T = x.shape[2]
        inv = 1.0 / (self.base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, rot/2)
        cos = torch.cat([ang.cos(), ang.cos()], dim=-1).to(x.dtype)  # (T, rot)
        sin = torch.cat([ang.sin(), ang.sin()], dim=-1).to(x.dtype)
        xr = x[..., :rot]
        return torch.cat([xr * cos + rotate_half(xr) * sin, x[..., rot:]], dim=-1)

    def forward(self, x):  # (B, T, H)
        B, T, H = x.shape
        qkv = self.qkv(x).view(B, T, self.heads, 3 * self.dh).transpose(1, 2)
        q = self.rotary(qkv[..., : self.dh])
        k = self.rotary(qkv[..., self.dh : 2 * self.dh])
        v = qkv[..., 2 * self.dh :]
        s = q @ k.transpose(-1, -2) / math.sqrt(self.dh)  # (B, heads, T, T)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # True: key after the query
        if self.point_tokens:  # also hide keys of earlier points
            pt = torch.arange(T) // self.point_tokens
            mask = mask | (pt[None, :] != pt[:, None])
        s = s.masked_fill(mask, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v  # (B, heads, T, dh)
        return self.out(a.transpose(1, 2).reshape(B, T, H))


class MLP(nn.Module):
    def __init__(self, hidden, ffn):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln1 = nn.LayerNorm(c["H"], eps=LN_EPS)
        self.ln2 = nn.LayerNorm(c["H"], eps=LN_EPS)
        self.attn = Attention(c["H"], c["heads"], c["rot"], c["rotary_base"],
                              c["S"] if c["no_history"] else 0)
        self.mlp = MLP(c["H"], c["ffn"])

    def forward(self, x):
        return x + self.attn(self.ln1(x)) + self.mlp(self.ln2(x))


class CalmFlow(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        D, S, H = c["D"], c["S"], c["H"]
        self.enc = TwoLayerMLP(D + c["time_input"], S * H, S * H)
        if c["prompt_len"]:  # registered after enc, before the blocks: model.h's tensor order
            self.prompt = nn.ModuleDict({"wte": nn.Embedding(c["vocab"], H)})
        self.layers = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.lnf = nn.LayerNorm(H, eps=LN_EPS)
        inner = max(S * H, D)  # I of model.h
        if c["head"] == "vae":
            self.head = nn.ModuleDict({"mu": TwoLayerMLP(H, H, H), "lv": TwoLayerMLP(H, H, H)})
            self.dec = Decoder(S * H, D, inner)
        elif c["head"] == "fm":  # no decoder: the velocity MLP is the head
            self.head = nn.ModuleDict({"fm": FlowHead(D, S * H, c["fm_width"])})
        elif c["head"] == "cvae":
            dz = c["cvae_dz"]
            self.head = nn.ModuleDict({"cvae": nn.ModuleDict({
                "post": TwoLayerMLP(S * H + D, inner, 2 * dz),
                "prior": TwoLayerMLP(S * H, inner, 2 * dz)})})
            self.dec = Decoder(S * H + dz, 2 * D, inner)
        else:
            self.dec = Decoder(S * H, dout(c), inner)

    def hidden(self, z, ids=None):
        """z (B, J, D), prompt ids (B, L) -> final hidden states (B, T, H) after lnf of the
        trajectory tokens (the prompt rows' outputs dropped)."""
        B, J, _ = z.shape
        S, H = self.c["S"], self.c["H"]
        if self.c["time_input"]:  # the float32 time of each point, as C computes it
            t = [f32((j // self.c["P"]) / (self.c["N"] - 1)) for j in range(J)]
            t = torch.tensor(t, dtype=z.dtype).view(1, J, 1).expand(B, J, 1)
            z = torch.cat([z, t], dim=-1)  # (B, J, D + 1)
        x = self.enc(z).reshape(B, J * S, H)  # token k = j*S + s takes e_j[s*H:(s+1)*H]
        L = self.c["prompt_len"]
        if L:
            x = torch.cat([self.prompt["wte"](ids), x], dim=1)  # (B, L + T, H)
        for blk in self.layers:
            x = blk(x)
        return self.lnf(x[:, L:])

    def head_params(self, h):
        """vae: (mu, var) per token (B, T, H); gauss: (mean, raw logstd) per point (B, J, D);
        gmm: (logits (B, J, K), means (B, J, K, D), raw logstds (B, J, K, D))."""
        c = self.c
        B, T, H = h.shape
        if c["head"] == "vae":
            return self.head["mu"](h), torch.exp(self.head["lv"](h)) + VAR_FLOOR
        J, D = T // c["S"], c["D"]
        out = self.dec(h.reshape(B, J, c["S"] * H))
        if c["head"] == "gmm":
            K = c["gmm_k"]
            return (out[..., :K], out[..., K : K + K * D].reshape(B, J, K, D),
                    out[..., K + K * D :].reshape(B, J, K, D))
        return out[..., :D], out[..., D:]

    def cvae_parts(self, h, y, eps_z, tau=1.0, prior=False):
        """cvae: (mq, lq, mp, lp, z, m, ls) per point with the clamped log-stds; z from the
        posterior (training, tau 1) or, with prior, mp + tau exp(lp) eps_z."""
        c = self.c
        B, T, H = h.shape
        J, D, dz = T // c["S"], c["D"], c["cvae_dz"]
        lo, hi = c["logstd_min"], c["logstd_max"]
        cv = self.head["cvae"]
        ctx = h.reshape(B, J, c["S"] * H)
        p = cv["prior"](ctx)
        mp, lp = p[..., :dz], torch.clamp(p[..., dz:], lo, hi)
        if prior:
            mq = lq = None
            zz = mp + tau * torch.exp(lp) * eps_z
        else:
            q = cv["post"](torch.cat([ctx, y], dim=-1))
            mq, lq = q[..., :dz], torch.clamp(q[..., dz:], lo, hi)
            zz = mq + torch.exp(lq) * eps_z
        o = self.dec(torch.cat([ctx, zz], dim=-1))
        return mq, lq, mp, lp, zz, o[..., :D], torch.clamp(o[..., D:], lo, hi)

    def loss(self, z, y, eps, n_pts, beta, ids=None):
        c = self.c
        h = self.hidden(z, ids)
        B, T, H = h.shape
        Jp = (c["N"] - 1) * c["P"]  # predicted points per sequence
        yp = y[:, :Jp]
        if c["head"] == "fm":
            R, D = c["fm_draws"], c["D"]
            ctx = h.reshape(B, T // c["S"], c["S"] * H)[:, :Jp]
            nz = eps[:, :Jp].reshape(B, Jp, R, 1 + D)  # per draw [s, y0]
            s, y0 = nz[..., 0], nz[..., 1:]
            fmh = self.head["fm"]
            ys = (1 - s[..., None]) * y0 + s[..., None] * yp[:, :, None, :]
            v = fmh(ys, s, fmh.cond(ctx)[:, :, None, :])  # (B, Jp, R, D)
            recon = ((v - (yp[:, :, None, :] - y0)) ** 2).sum() / (n_pts * R)
            zero = torch.zeros((), dtype=h.dtype)
            return {"loss": recon, "recon": recon, "kl": zero, "nll": zero, "hidden": h}
        if c["head"] == "cvae":
            mq, lq, mp, lp, _, m, ls = (t[:, :Jp] for t in self.cvae_parts(h, y, eps))
            nll = (0.5 * ((yp - m) / torch.exp(ls)) ** 2 + ls + 0.5 * math.log(2 * math.pi)).sum()
            nll = nll / n_pts
            # KL(N(mq, sq^2) || N(mp, sp^2)) per latent dimension
            kl = (lp - lq + (torch.exp(2 * lq) + (mq - mp) ** 2) / (2 * torch.exp(2 * lp)) - 0.5)
            kl = kl.sum() / n_pts
            recon = ((m - yp) ** 2).sum() / n_pts
            return {"loss": nll + beta * kl, "recon": recon, "kl": kl, "nll": nll, "hidden": h}
        if c["head"] == "vae":
            mu, var = self.head_params(h)
            zeta = mu + torch.sqrt(var) * eps  # tau = 1 in training
            xhat = self.dec(zeta.reshape(B, T // c["S"], c["S"] * H))[:, :Jp]
            recon = ((xhat - yp) ** 2).sum() / n_pts
            mu_p, var_p = mu[:, : Jp * c["S"]], var[:, : Jp * c["S"]]
            kl = 0.5 * (mu_p**2 + var_p - 1 - torch.log(var_p)).sum() / (n_pts * c["S"])
            nll = torch.zeros((), dtype=h.dtype)
            loss = recon + beta * kl
        elif c["head"] == "gmm":
            a, m, r = (t[:, :Jp] for t in self.head_params(h))
            ls = torch.clamp(r, c["logstd_min"], c["logstd_max"])
            # log N(y; m_k, diag exp(2 ls_k)) per component (B, Jp, K)
            logn = (-0.5 * ((yp[:, :, None, :] - m) / torch.exp(ls)) ** 2 - ls
                    - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
            nll = -torch.logsumexp(torch.log_softmax(a, dim=-1) + logn, dim=-1).sum() / n_pts
            mean = (torch.softmax(a, dim=-1)[..., None] * m).sum(dim=-2)  # (B, Jp, D)
            recon = ((mean - yp) ** 2).sum() / n_pts
            kl = torch.zeros((), dtype=h.dtype)
            loss = nll
        else:
            m, r = self.head_params(h)
            m, r = m[:, :Jp], r[:, :Jp]
            ls = torch.clamp(r, c["logstd_min"], c["logstd_max"])
            nll = (0.5 * ((yp - m) / torch.exp(ls)) ** 2 + ls + 0.5 * math.log(2 * math.pi)).sum()
            nll = nll / n_pts
            recon = ((m - yp) ** 2).sum() / n_pts
            kl = torch.zeros((), dtype=h.dtype)
            loss = nll
        return {"loss": loss, "recon": recon, "kl": kl, "nll": nll, "hidden": h}

    def sample(self, h, eps, tau):
        """cf_head_sample on all points: h (B, np*S, H) -> y (B, np, D). gmm: eps (B, np, D+1)
        holds D normals and the uniform that picks the component whose interval of the
        cumulative softmax(a) holds it; eps None (tau 0): the most probable component."""
        c = self.c
        B, T, H = h.shape
        if c["head"] == "fm":  # Euler from tau*eps, s = float32(k/K), step 1/K
            K, D = c["fm_steps"], c["D"]
            fmh = self.head["fm"]
            cp = fmh.cond(h.reshape(B, T // c["S"], c["S"] * H))
            yy = tau * eps
            for k in range(K):
                s = torch.full(yy.shape[:-1], f32(k / K), dtype=yy.dtype)
                yy = yy + fmh(yy, s, cp) / K
            return yy
        if c["head"] == "cvae":  # eps = [eps_z (dz) | eps_y (D)]
            dz = c["cvae_dz"]
            _, _, _, _, _, m, ls = self.cvae_parts(h, None, eps[..., :dz], tau, prior=True)
            return m + tau * torch.exp(ls) * eps[..., dz:]
        if c["head"] == "vae":
            mu, var = self.head_params(h)
            zeta = mu + tau * torch.sqrt(var) * eps
            return self.dec(zeta.reshape(B, T // c["S"], c["S"] * H))
        if c["head"] == "gmm":
            a, m, r = self.head_params(h)
            D, K = c["D"], c["gmm_k"]
            if eps is None:
                k, e = a.argmax(dim=-1), torch.zeros(m.shape[:-2] + (D,), dtype=m.dtype)
            else:  # k = number of cumulative shares <= u (the last component if u is past all)
                cum = torch.cumsum(torch.softmax(a, dim=-1), dim=-1)
                k = (cum <= eps[..., D:]).sum(dim=-1).clamp(max=K - 1)
                e = eps[..., :D]
            idx = k[..., None, None].expand(m.shape[:-2] + (1, D))
            mk = m.gather(-2, idx).squeeze(-2)
            lk = torch.clamp(r.gather(-2, idx).squeeze(-2), c["logstd_min"], c["logstd_max"])
            return mk + tau * torch.exp(lk) * e
        m, r = self.head_params(h)
        return m + tau * torch.exp(torch.clamp(r, c["logstd_min"], c["logstd_max"])) * eps


def dout(c):
    """Decoder outputs per point: D (vae), 2D (gauss), K(1 + 2D) (gmm)."""
    D = c["D"]
    return {"vae": D, "gauss": 2 * D, "gmm": c["gmm_k"] * (1 + 2 * D), "cvae": 2 * D,
            "fm": D}[c["head"]]


def spec_tensors(c):
    """Every tensor model.h names, with its shape, written out from the header's list."""
    D, S, H, ffn = c["D"], c["S"], c["H"], c["ffn"]
    I = max(S * H, D)
    t = [("enc.fc1.weight", (S * H, D + c["time_input"])), ("enc.fc1.bias", (S * H,)),
         ("enc.fc2.weight", (S * H, S * H)), ("enc.fc2.bias", (S * H,))]
    if c["prompt_len"]:
        t += [("prompt.wte.weight", (c["vocab"], H))]
    for L in range(c["layers"]):
        p = f"layers.{L}."
        t += [(p + "ln1.weight", (H,)), (p + "ln1.bias", (H,)),
              (p + "ln2.weight", (H,)), (p + "ln2.bias", (H,)),
              (p + "attn.qkv.weight", (3 * H, H)), (p + "attn.qkv.bias", (3 * H,)),
              (p + "attn.out.weight", (H, H)), (p + "attn.out.bias", (H,)),
              (p + "mlp.fc1.weight", (ffn, H)), (p + "mlp.fc1.bias", (ffn,)),
              (p + "mlp.fc2.weight", (H, ffn)), (p + "mlp.fc2.bias", (H,))]
    t += [("lnf.weight", (H,)), ("lnf.bias", (H,))]
    if c["head"] == "vae":
        for n in ("mu", "lv"):
            t += [(f"head.{n}.fc1.weight", (H, H)), (f"head.{n}.fc1.bias", (H,)),
                  (f"head.{n}.fc2.weight", (H, H)), (f"head.{n}.fc2.bias", (H,))]
    if c["head"] == "fm":
        Fw = c["fm_width"]
        return t + [("head.fm.cond.weight", (Fw, S * H)), ("head.fm.cond.bias", (Fw,)),
                    ("head.fm.fc1.weight", (Fw, D + FM_FEATURES)), ("head.fm.fc1.bias", (Fw,)),
                    ("head.fm.fc2.weight", (Fw, Fw)), ("head.fm.fc2.bias", (Fw,)),
                    ("head.fm.fc3.weight", (Fw, Fw)), ("head.fm.fc3.bias", (Fw,)),
                    ("head.fm.out.weight", (D, Fw)), ("head.fm.out.bias", (D,))]
    din = S * H
    if c["head"] == "cvae":
        dz = c["cvae_dz"]
        for n, nin in (("post", S * H + D), ("prior", S * H)):
            t += [(f"head.cvae.{n}.fc1.weight", (I, nin)), (f"head.cvae.{n}.fc1.bias", (I,)),
                  (f"head.cvae.{n}.fc2.weight", (2 * dz, I)), (f"head.cvae.{n}.fc2.bias", (2 * dz,))]
        din += dz
    t += [("dec.fc1.weight", (I, din)), ("dec.fc1.bias", (I,)),
          ("dec.fc2.weight", (I, I)), ("dec.fc2.bias", (I,)),
          ("dec.fc3.weight", (dout(c), I)), ("dec.fc3.bias", (dout(c),))]
    return t


def init_weights(model, gen):
    """float32 draws: transformer linears N(0, 0.2) with N(0, 0.1) biases (so attention is
    far from uniform and bias paths matter), LayerNorm gain 1 + N(0, 0.1) and bias N(0, 0.1),
    the prompt embedding N(0, 1) (on the scale of the encoder's outputs), encoder / head /
    decoder linears U(-1/sqrt(in), 1/sqrt(in)) for weight and bias."""
    for name, p in model.named_parameters():
        shape = p.shape
        if name == "prompt.wte.weight":
            v = torch.randn(shape, generator=gen, dtype=torch.float32)
        elif name.startswith("layers.") and (".attn." in name or ".mlp." in name):
            std = 0.2 if name.endswith("weight") else 0.1
            v = torch.randn(shape, generator=gen, dtype=torch.float32) * std
        elif ".ln" in name or name.startswith("lnf."):
            v = torch.randn(shape, generator=gen, dtype=torch.float32) * 0.1
            if name.endswith("weight"):
                v = v + 1.0
        else:
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            bound = 1.0 / math.sqrt(mod.in_features)
            v = (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
        with torch.no_grad():
            p.copy_(v)


def build(c, seed):
    gen = torch.Generator().manual_seed(seed)
    model = CalmFlow(c)
    init_weights(model, gen)
    B, J, T, D, H = c["B"], c["J"], c["T"], c["D"], c["H"]
    z = torch.randn(B, J, D, generator=gen)
    y = torch.randn(B, J, D, generator=gen)
    eps = torch.randn(B, T, H, generator=gen) if c["head"] == "vae" else None
    s_eps = torch.randn(*((B, T, H) if c["head"] == "vae" else (B, J, D)), generator=gen)
    if c["head"] == "gmm":  # cf_head_noise: D normals, then the component uniform
        s_eps = torch.cat([s_eps, torch.rand(B, J, 1, generator=gen)], dim=-1)
    if c["head"] == "fm":  # training noise per draw [s, y0 (D)] (cf_head_train_noise's layout)
        R = c["fm_draws"]
        s = torch.rand(B, J, R, 1, generator=gen)
        eps = torch.cat([s, torch.randn(B, J, R, D, generator=gen)], dim=-1).reshape(B, J, -1)
    if c["head"] == "cvae":  # training eps_z; sampling noise [eps_z | eps_y]
        eps = torch.randn(B, J, c["cvae_dz"], generator=gen)
        s_eps = torch.cat([torch.randn(B, J, c["cvae_dz"], generator=gen), s_eps], dim=-1)
    ids = None
    if c["prompt_len"]:  # sequence b left-padded with b pads (at most L - 1), then other ids
        L, V, pad = c["prompt_len"], c["vocab"], c["prompt_pad"]
        ids = torch.randint(0, V - 1, (B, L), generator=gen)
        ids[ids >= pad] += 1  # no pad id among the words
        for b in range(B):
            ids[b, : min(b, L - 1)] = pad
    return model, z, y, eps, s_eps, ids


def gauss_shift_logstd(model, c, z, ids):
    """Spread and shift the raw logstd outputs so that, over the predicted points, some lie
    above logstd_max, some below logstd_min and some inside: the clamp and its zero gradient
    are exercised. Scale and shifts stay float32-representable."""
    D = c["D"]
    with torch.no_grad():
        model.dec.fc3.weight[D:] *= 8.0
        r = model.head_params(model.hidden(z, ids))[1].detach()  # (B, J, D)
        shift = torch.tensor([c["logstd_max"], c["logstd_min"], 0.0][:D], dtype=torch.float32)
        shift = shift - r.mean(dim=(0, 1))
        model.dec.fc3.bias[D:] += shift.float()


def gmm_spread(model, c, z):
    """Spread the gmm decoder outputs so that the test sees every case: logit rows scaled
    by 3 (mixture weights far from uniform but not one-hot); the raw logstd rows scaled by
    2 and shifted so that, over the predicted points, raw logstd (k, d) is centred on
    logstd_max, logstd_min or their midpoint as (k + d) % 3 goes 0, 1, 2. With the narrow
    clamp of the gmm dumps every component then has clamped and unclamped entries while the
    responsibilities stay mixed (clamped components still explain some points)."""
    D, K = c["D"], c["gmm_k"]
    lo, hi = c["logstd_min"], c["logstd_max"]
    with torch.no_grad():
        model.dec.fc3.weight[:K] *= 3.0
        model.dec.fc3.bias[:K] *= 3.0
        model.dec.fc3.weight[K + K * D :] *= 2.0
        Jp = (c["N"] - 1) * c["P"]
        r = model.head_params(model.hidden(z))[2].detach()[:, :Jp]  # (B, Jp, K, D)
        want = torch.tensor([[(hi, lo, 0.5 * (lo + hi))[(k + d) % 3] for d in range(D)]
                             for k in range(K)], dtype=torch.float32)
        model.dec.fc3.bias[K + K * D :] += (want - r.mean(dim=(0, 1))).reshape(K * D)


def cvae_spread(model, c, z, y, eps):
    """Spread the cvae head's raw log-stds (posterior, prior and decoder) so that, over the
    predicted points, raw log-std dimension i is centred on logstd_max, logstd_min or their
    midpoint as i % 3 goes 0, 1, 2 (scaled by 3 first): every clamp and its zero gradient
    is exercised. Posterior and prior first (the decoder sees z from the posterior)."""
    D, dz = c["D"], c["cvae_dz"]
    lo, hi = c["logstd_min"], c["logstd_max"]
    Jp = (c["N"] - 1) * c["P"]
    cv = model.head["cvae"]

    def want(n):
        return torch.tensor([(hi, lo, 0.5 * (lo + hi))[i % 3] for i in range(n)],
                            dtype=torch.float32)

    with torch.no_grad():
        h = model.hidden(z)
        B, T, H = h.shape
        ctx = h.reshape(B, T // c["S"], c["S"] * H)
        for name, x in (("post", torch.cat([ctx, y], dim=-1)), ("prior", ctx)):
            fc2 = cv[name].fc2
            fc2.weight[dz:] *= 3.0
            r = cv[name](x)[:, :Jp, dz:]
            fc2.bias[dz:] += want(dz) - r.mean(dim=(0, 1))
        model.dec.fc3.weight[D:] *= 3.0
        zz = model.cvae_parts(h, y, eps)[4]  # z from the spread posterior
        o = model.dec(torch.cat([ctx, zz], dim=-1))[:, :Jp, D:]  # raw decoder log-stds
        model.dec.fc3.bias[D:] += want(D) - o.mean(dim=(0, 1))


def run(model64, z, y, eps, c, ids):
    for p in model64.parameters():
        p.grad = None
    out = model64.loss(z, y, eps, c["n_pts"], c["beta"], ids)
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model64.named_parameters()}
    return out, grads


def make(c, seed, path):
    c = dict(c)
    for k in ("gmm_k", "no_history", "time_input", "fm_width", "fm_draws", "fm_steps", "cvae_dz",
              "prompt_len", "vocab", "prompt_pad"):
        c.setdefault(k, 0)
    dh = c["H"] // c["heads"]
    c["rot"] = 2 * int(math.floor(c["rotary_pct"] * dh / 2))
    c["J"] = c["N"] * c["P"]
    c["T"] = c["J"] * c["S"]
    c["n_pts"] = float(c["B"] * (c["N"] - 1) * c["P"])

    model, z, y, eps, s_eps, ids = build(c, seed)
    names = [n for n, _ in model.named_parameters()]
    spec = spec_tensors(c)
    assert names == [n for n, _ in spec], (names, spec)
    for (n, shp), (_, p) in zip(spec, model.named_parameters()):
        assert tuple(p.shape) == shp, (n, p.shape, shp)
    if c["head"] == "gauss":
        gauss_shift_logstd(model, c, z, ids)
    if c["head"] == "gmm":
        gmm_spread(model, c, z)
    if c["head"] == "cvae":
        cvae_spread(model, c, z, y, eps)
    with torch.no_grad():  # causal: moving the last point leaves earlier tokens unchanged
        z2 = z.clone()
        z2[:, -1] += 1.0
        h1, h2 = model.hidden(z, ids), model.hidden(z2, ids)
        assert torch.equal(h1[:, : -c["S"]], h2[:, : -c["S"]]), "reference is not causal"
        assert not torch.equal(h1[:, -c["S"] :], h2[:, -c["S"] :])
        if c["no_history"]:  # moving point 1 changes its own tokens only
            S = c["S"]
            z2 = z.clone()
            z2[:, 1] += 1.0
            h2 = model.hidden(z2)
            assert torch.equal(h1[:, :S], h2[:, :S]) and torch.equal(h1[:, 2 * S :], h2[:, 2 * S :])
            assert not torch.equal(h1[:, S : 2 * S], h2[:, S : 2 * S])
        if c["no_history"] and c["time_input"]:
            # rotary scores depend on relative positions only, so without the time input
            # point P (time 1, trajectory 0) holding point 0's z would repeat its hidden states
            S, P = c["S"], c["P"]
            z2 = z.clone()
            z2[:, P] = z[:, 0]
            diff = (model.hidden(z2)[:, P * S : (P + 1) * S] - h1[:, :S]).abs().max().item()
            assert diff > 1e-2, f"the time input changes hidden states by only {diff}"
        if c["prompt_len"]:  # every token sees the prompt, its words and its pads
            for i in (0, c["prompt_len"] - 1):
                ids2 = ids.clone()
                ids2[-1, i] = (ids2[-1, i] + 1) % c["vocab"]
                h2 = model.hidden(z, ids2)
                assert torch.equal(h1[:-1], h2[:-1]), "a prompt changed another sequence"
                assert (h1[-1] - h2[-1]).abs().max(dim=-1)[0].min() > 0, "a token ignores the prompt"

    # float64 model from the float32 weights
    m64 = CalmFlow(c).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    d = lambda t: None if t is None else t.double()
    out, grads = run(m64, d(z), d(y), d(eps), c, ids)

    # the same in float32, only to show the size of float32 round-off
    m32 = CalmFlow(c)
    m32.load_state_dict(model.state_dict())
    out32, grads32 = run(m32, z, y, eps, c, ids)
    print(f"{path}: head {c['head']} rot {c['rot']} T {c['T']}"
          + (f" K {c['gmm_k']}" if c["head"] == "gmm" else "")
          + (f" F {c['fm_width']} draws {c['fm_draws']} steps {c['fm_steps']}"
             if c["head"] == "fm" else "")
          + (f" dz {c['cvae_dz']}" if c["head"] == "cvae" else "")
          + (" no_history" if c["no_history"] else "") + (" time_input" if c["time_input"] else "")
          + (f" prompt L {c['prompt_len']} V {c['vocab']} pad {c['prompt_pad']}"
             if c["prompt_len"] else ""))
    for k in ("loss", "recon", "kl", "nll"):
        a, b = out[k].item(), out32[k].item()
        print(f"  {k:6s} {a: .10e}  float32 rel diff {abs(a - b) / max(abs(a), 1e-30):.2e}")
    worst = max(
        ((grads32[n].double() - g).abs().max().item() / max(1e-3, g.abs().max().item()), n)
        for n, g in grads.items())
    print(f"  float32 grads: worst {worst[1]} rel err {worst[0]:.2e}")

    # the gauss setup must exercise the clamp on both sides (and stay clear of the bounds)
    Jp = (c["N"] - 1) * c["P"]
    if c["head"] in ("gauss", "gmm"):
        r = m64.head_params(out["hidden"])[-1].detach()[:, :Jp]
        hi = int((r > c["logstd_max"]).sum())
        lo = int((r < c["logstd_min"]).sum())
        print(f"  raw logstd over predicted points: {hi} above max, {lo} below min, "
              f"{r.numel() - hi - lo} inside")
        assert hi > 0 and lo > 0 and hi + lo < r.numel()
        gap = min((r - c["logstd_max"]).abs().min().item(), (r - c["logstd_min"]).abs().min().item())
        assert gap > 1e-3, f"raw logstd within {gap} of a clamp bound: float32 may flip it"

    if c["head"] == "cvae":  # posterior, prior and decoder log-stds: clamped on both sides
        with torch.no_grad():
            dz, D = c["cvae_dz"], c["D"]
            h = out["hidden"]
            B, T, H = h.shape
            ctx = h.reshape(B, T // c["S"], c["S"] * H)
            cv = m64.head["cvae"]
            zz = m64.cvae_parts(h, d(y), d(eps))[4]
            raws = {"posterior": cv["post"](torch.cat([ctx, d(y)], dim=-1))[..., dz:],
                    "prior": cv["prior"](ctx)[..., dz:],
                    "decoder": m64.dec(torch.cat([ctx, zz], dim=-1))[..., D:]}
        for name, r in raws.items():
            r = r[:, :Jp]
            hi = int((r > c["logstd_max"]).sum())
            lo = int((r < c["logstd_min"]).sum())
            gap = min((r - c["logstd_max"]).abs().min().item(),
                      (r - c["logstd_min"]).abs().min().item())
            print(f"  {name} raw logstd over predicted points: {hi} above max, {lo} below min, "
                  f"{r.numel() - hi - lo} inside, nearest bound {gap:.2e}")
            assert hi > 0 and lo > 0 and hi + lo < r.numel()
            assert gap > 1e-3, f"{name} raw logstd within {gap} of a clamp bound"

    if c["head"] == "fm":
        s = eps.reshape(c["B"], c["J"], c["fm_draws"], 1 + c["D"])[..., 0]
        print(f"  flow times s in [{s.min():.3f}, {s.max():.3f}]")

    if c["head"] == "gmm":  # responsibilities: mixed, so every component's gradient matters
        with torch.no_grad():
            a, m, r = (t[:, :Jp] for t in m64.head_params(out["hidden"]))
            ls = torch.clamp(r, c["logstd_min"], c["logstd_max"])
            logn = (-0.5 * ((d(y)[:, :Jp, None, :] - m) / torch.exp(ls)) ** 2 - ls).sum(dim=-1)
            resp = torch.softmax(torch.log_softmax(a, dim=-1) + logn, dim=-1).max(dim=-1)[0]
            pim = torch.softmax(a, dim=-1).max(dim=-1)[0]
        print(f"  largest responsibility per point: min {resp.min():.3f} median "
              f"{resp.median():.3f}, {int((resp < 0.9).sum())} of {resp.numel()} below 0.9; "
              f"largest pi: min {pim.min():.3f} max {pim.max():.3f}")
        assert int((resp < 0.9).sum()) >= resp.numel() // 3

    # head sampling from the float32-rounded hidden states (what the C test feeds in)
    hs = out["hidden"].detach().float().double()
    with torch.no_grad():
        s_y = m64.sample(hs, s_eps.double(), c["tau"])
        if c["head"] == "gmm":  # tau 0 without noise: the most probable component's mean
            s_mode = m64.sample(hs, None, 0.0)
            a = m64.head_params(hs)[0]
            top = a.topk(2, dim=-1)[0]
            cum = torch.cumsum(torch.softmax(a, dim=-1), dim=-1)[..., :-1]
            u = s_eps.double()[..., -1:]
            ugap = (cum - u).abs().min().item()
            drawn = torch.bincount((cum <= u).sum(-1).flatten(), minlength=c["gmm_k"]).tolist()
            print(f"  sampling: top-2 logit gap >= {(top[..., 0] - top[..., 1]).min():.2e}, "
                  f"uniform to nearest share boundary >= {ugap:.2e}, components drawn {drawn}")
            assert (top[..., 0] - top[..., 1]).min() > 1e-4, "near-tie of the top logits"
            assert ugap > 1e-4, "a uniform lies within 1e-4 of a component boundary"

    def put(f, name, value):  # no object timestamps: regenerating gives identical files
        f.create_dataset(name, data=value, track_times=False)

    with h5py.File(path, "w") as f:
        for k in ("D", "S", "P", "N", "H", "layers", "heads", "ffn", "B"):
            f.attrs[k] = np.int64(c[k])
        f.attrs["head"] = np.int64(HEAD_CODE[c["head"]])  # enum cf_head
        if c["head"] == "gmm":
            f.attrs["gmm_k"] = np.int64(c["gmm_k"])
        if c["head"] == "fm":
            for k in ("fm_width", "fm_draws", "fm_steps"):
                f.attrs[k] = np.int64(c[k])
        if c["head"] == "cvae":
            f.attrs["cvae_dz"] = np.int64(c["cvae_dz"])
        for k in ("no_history", "time_input"):  # absent means 0 (keeps older dumps as they were)
            if c[k]:
                f.attrs[k] = np.int64(c[k])
        if c["prompt_len"]:
            for k in ("prompt_len", "vocab", "prompt_pad"):
                f.attrs[k] = np.int64(c[k])
        f.attrs["head_name"] = c["head"]
        for k in ("rotary_pct", "rotary_base", "dropout", "logstd_min", "logstd_max", "beta",
                  "n_pts"):
            f.attrs[k] = np.float64(c[k])
        f.attrs["seed"] = np.int64(seed)
        f.attrs["generator"] = "tests/reference/make_reference.py, torch " + torch.__version__
        put(f, "inputs/z", z.numpy())
        put(f, "inputs/y", y.numpy())
        if eps is not None:
            put(f, "inputs/eps", eps.numpy())
        if ids is not None:
            put(f, "inputs/prompt_ids", ids.numpy().astype(np.int32))
        for n, p in model.named_parameters():
            put(f, "params/" + n, p.detach().numpy().astype(np.float32))
            put(f, "grads/" + n, grads[n].numpy().astype(np.float64))
        for k in ("loss", "recon", "kl", "nll"):
            put(f, "out/" + k, np.float64(out[k].item()))
        put(f, "out/hidden", out["hidden"].detach().numpy())
        put(f, "sample/eps", s_eps.numpy())
        put(f, "sample/tau", np.float64(c["tau"]))
        put(f, "sample/y", s_y.numpy())
        if c["head"] == "gmm":
            put(f, "sample/y_mode", s_mode.numpy())


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.use_deterministic_algorithms(True)
    base = dict(D=3, S=2, P=2, N=4, H=16, layers=2, heads=2, ffn=64, rotary_pct=0.25,
                rotary_base=10000.0, dropout=0.0, logstd_min=-7.0, logstd_max=5.0, B=2,
                beta=f32(0.3), tau=f32(0.7))
    make(dict(base, head="vae"), 1234, os.path.join(outdir, "ref_vae.h5"))
    make(dict(base, head="gauss"), 2345, os.path.join(outdir, "ref_gauss.h5"))
    # rot = 4 of dh = 8: rotary on half of each head's dims
    make(dict(base, head="vae", rotary_pct=0.5), 3456, os.path.join(outdir, "ref_vae_rot4.h5"))
    # gmm head, K = 3, with a narrow logstd clamp [-1.5, 1] so clamped components still matter
    make(dict(base, head="gmm", gmm_k=3, logstd_min=-1.5, logstd_max=1.0), 4567,
         os.path.join(outdir, "ref_gmm.h5"))
    # the ODE-style ablation: attention within a point, the point's time as an encoder input
    make(dict(base, head="gauss", no_history=1, time_input=1), 5678,
         os.path.join(outdir, "ref_gauss_nohist.h5"))
    # flow-matching head: F 12, 2 draws of (s, y0) per point, 5 Euler steps for sampling
    make(dict(base, head="fm", fm_width=12, fm_draws=2, fm_steps=5), 6789,
         os.path.join(outdir, "ref_fm.h5"))
    # conditional VAE head, dz 3, with a narrow log-std clamp [-1.5, 1] on all three log-stds
    make(dict(base, head="cvae", cvae_dz=3, logstd_min=-1.5, logstd_max=1.0), 7890,
         os.path.join(outdir, "ref_cvae.h5"))
    # a text prompt of 5 tokens (vocabulary 13, pad id 12) in front of the trajectory tokens
    make(dict(base, head="gauss", prompt_len=5, vocab=13, prompt_pad=12), 8901,
         os.path.join(outdir, "ref_gauss_prompt.h5"))


if __name__ == "__main__":
    main()
