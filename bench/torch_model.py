#!/usr/bin/python3
"""torch_model.py: the PyTorch side of the performance benchmark (bench/perf.sh).

The network is tests/reference/make_reference.py's CalmFlow (an independent PyTorch build of
include/calmflow/model.h); this file imports its modules and adds only what a benchmark needs:
a configuration with calmflow's defaults, a timed training loop and a recompute rollout. The
reference runs float64 for the test dumps; here the same modules run in float32 (nn.Linear's
default dtype), which is the "faster-path variant": nothing is copied or rewritten.

Subcommands (each prints one JSON object on stdout):
  count    the parameter count of the torch model; with --ckpt FILE also compares every tensor
           name and shape with a calmflow checkpoint's /params group (exit 1 on a mismatch)
  train    --steps training steps of --batch paths (= batch / P sequences): fresh batch,
           forward, backward, gradient clipping (global 2-norm 1, as -train_clip 1), AdamW
           (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, weight decay 0: calmflow's defaults);
           per-step wall times, peak RSS
  rollout  --samples trajectories' N points, --batch sequences (of P trajectories) at a time,
           every step recomputing the whole prefix (no KV cache), the gauss head's sampling
           y = m + tau exp(clamp(r)) eps; samples/s, peak RSS

Shared options: --D --S --P --N --H --layers --heads [--ffn 0: 4H] --threads (torch intra-op
threads; set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS to the same number in the environment:
torch's matrix products go through the system OpenBLAS, which keeps its own pool).
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import make_reference as ref  # noqa: E402  (the PyTorch reference of the network)


class Cfg(dict):
    """The reference's configuration dict; an optional key it does not set reads 0 (off), as
    make_reference.make() defaults them, so options added to the reference later stay off."""

    def __missing__(self, key):
        return 0


def config(a):
    """The reference's configuration dict with calmflow's defaults (src/app/options.c):
    gauss head, rotary_pct 0.25, rotary_base 1e4, logstd clamp [-7, 5], ffn 4H, history on,
    no time input, no prompt. Dropout is 0 (the reference has none; perf.sh runs calmflow with
    -net_dropout 0 to match)."""
    c = Cfg(D=a.D, S=a.S, P=a.P, N=a.N, H=a.H, layers=a.layers, heads=a.heads,
            ffn=a.ffn or 4 * a.H, rotary_pct=0.25, rotary_base=10000.0, dropout=0.0,
            logstd_min=-7.0, logstd_max=5.0, head="gauss", beta=0.1)
    dh = c["H"] // c["heads"]
    c["rot"] = 2 * int(math.floor(c["rotary_pct"] * dh / 2))  # as ref.make() derives it
    c["J"] = c["N"] * c["P"]
    c["T"] = c["J"] * c["S"]
    return c


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # bytes (Linux: KiB)


def setup(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    c = config(a)
    rss0 = peak_rss()
    model = ref.CalmFlow(c)  # float32, torch's default initialisation (speed only)
    n = sum(p.numel() for p in model.parameters())
    return c, model, n, rss0


def cmd_count(a):
    c, model, n, _ = setup(a)
    spec = ref.spec_tensors(c)
    names = [(k, tuple(p.shape)) for k, p in model.named_parameters()]
    ok = names == [(k, tuple(s)) for k, s in spec]
    out = {"params": n, "tensors": len(names), "matches_spec": ok}
    if a.ckpt:
        import h5py
        with h5py.File(a.ckpt, "r") as f:
            cf = {k: tuple(v.shape) for k, v in f["params"].items()}
        out["calmflow_params"] = int(sum(math.prod(s) for s in cf.values()))
        diff = sorted(set(cf.items()) ^ set(names))
        out["mismatched_tensors"] = [f"{k} {s}" for k, s in diff]
        ok = ok and not diff and out["calmflow_params"] == n
    out["ok"] = ok
    print(json.dumps(out))
    return 0 if ok else 1


def batch(c, B, gen):
    """A fresh batch as calmflow draws one (flow.h, bridge path): x0 ~ N(0, I) (the source),
    x1 ~ N(0, I) (stands in for the target data), the N points of each path at t_j = j/(N-1)
    with bridge noise, inputs z (B, J, D) point-major j = t*P + p, velocity targets y."""
    N, P, D = c["N"], c["P"], c["D"]
    x0 = torch.randn(B, 1, P, D, generator=gen)
    x1 = torch.randn(B, 1, P, D, generator=gen)
    t = torch.linspace(0, 1, N).view(1, N, 1, 1)
    z = (1 - t) * x0 + t * x1 + torch.sqrt(t * (1 - t)) * torch.randn(B, N, P, D, generator=gen)
    y = (x1 - x0).expand(B, N, P, D)
    return z.reshape(B, N * P, D), y.reshape(B, N * P, D)


def cmd_train(a):
    c, model, n, rss0 = setup(a)
    if a.batch % c["P"]:
        sys.exit(f"torch_model.py: --batch {a.batch} is not a multiple of P {c['P']}")
    B = a.batch // c["P"]
    n_pts = float(B * (c["N"] - 1) * c["P"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, foreach=a.foreach)
    gen = torch.Generator().manual_seed(a.seed)
    params = list(model.parameters())
    times, losses = [], []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        z, y = batch(c, B, gen)
        out = model.loss(z, y, None, n_pts, c["beta"])
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(out["loss"].item())
    print(json.dumps({"impl": "torch", "params": n, "batch": a.batch, "sequences": B,
                      "tokens_per_step": B * c["T"], "step_seconds": times,
                      "final_loss": losses[-1], "peak_rss": peak_rss(), "rss_before_model": rss0,
                      "threads": a.threads, "foreach": a.foreach, "torch": torch.__version__}))
    return 0


def cmd_rollout(a):
    c, model, n, rss0 = setup(a)
    N, P, S, D = c["N"], c["P"], c["S"], c["D"]
    gen = torch.Generator().manual_seed(a.seed)
    per = a.batch * P  # samples per batch
    nb = max(1, -(-a.samples // per))
    tau = 1.0
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(nb):
            seq = torch.empty(a.batch, N * P, D)
            seq[:, :P] = torch.randn(a.batch, P, D, generator=gen)  # point 0: source draws
            for t in range(1, N):
                h = model.hidden(seq[:, : t * P])  # the whole prefix, every step
                m, r = model.head_params(h[:, -P * S:])  # the newest point's P*S tokens
                ls = torch.clamp(r, c["logstd_min"], c["logstd_max"])
                v = m + tau * torch.exp(ls) * torch.randn(a.batch, P, D, generator=gen)
                seq[:, t * P:(t + 1) * P] = seq[:, (t - 1) * P:t * P] + v / (N - 1)
    el = time.perf_counter() - t0
    print(json.dumps({"impl": "torch", "mode": "recompute", "params": n, "samples": nb * per,
                      "batch": a.batch, "seconds": el, "samples_per_s": nb * per / el,
                      "peak_rss": peak_rss(), "threads": a.threads, "torch": torch.__version__}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cmd", choices=("count", "train", "rollout"))
    for k, d in (("D", 2), ("S", 1), ("P", 8), ("N", 16), ("H", 64), ("layers", 2), ("heads", 2),
                 ("ffn", 0), ("threads", 1), ("seed", 0), ("steps", 10), ("batch", 64),
                 ("samples", 512)):
        p.add_argument("--" + k, type=int, default=d)
    p.add_argument("--foreach", type=int, default=1, help="AdamW's multi-tensor path (1: on)")
    p.add_argument("--ckpt", default="", help="count: a calmflow checkpoint to compare with")
    a = p.parse_args()
    a.foreach = bool(a.foreach)
    if a.H % a.heads:
        sys.exit(f"torch_model.py: --H {a.H} is not a multiple of --heads {a.heads}")
    return {"count": cmd_count, "train": cmd_train, "rollout": cmd_rollout}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
