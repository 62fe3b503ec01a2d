#!/usr/bin/env python3
"""What an ideal per-step Gaussian head would score: CaLMFlow's sampler with exact conditionals.

A trained CaLMFlow model with the Gaussian head samples the next time point from a diagonal
Gaussian whose mean and variance it predicts from the history (full CaLMFlow) or from the current
point only (the ODE-style ablation, -flow_history 0). Trained by maximum likelihood, the best
such head has the exact conditional's mean and per-coordinate variance. This script computes
that head in closed form for the Brownian-bridge paths of `calmflow train` (-flow_path bridge:
x_t = (1 - t) x0 + t x1 + sigma B_t, x0 and x1 drawn independently, t_k = k / (N - 1)) and rolls
it out, so a learned model's W2 can be set beside the W2 its head family allows:

  history   the next point given (x0, x_t): on a bridge the earlier points say nothing more
  markov    the next point given x_t alone (what -flow_history 0 can know)

For each, `gauss` samples the moment-matched diagonal Gaussian (the ideal learned head) and
`exact` samples the exact conditional, a Gaussian mixture (a check of the algebra: it must reach
the floor, W2 / floor ~ 1). The source and target are written as isotropic Gaussian mixtures:
8gaussians, 2gaussians, 2to4gaussians, normal exactly, moons as 2 x 600 components along its
arcs (its noise, std 0.6, is 40 times their spacing). It also prints the ideal head's per-point
training NLL at each predicted point, in the units of summary.json's diag.step_loss (velocity
targets (x_{k+1} - x_k) (N - 1), summed over coordinates), on fresh true paths, beside the step
losses of trained runs given by --runs.

  /usr/bin/python3 analysis/oracle_head.py --binary build/calmflow --out runs/oracle \\
      --source 8gaussians --target moons --sigma 2 --N 16 --samples 2000 --seeds 3 \\
      --runs runs/budget/runs/*moons*-calmflow-gauss-s*     # -> runs/oracle/oracle.{md,jsonl}

W2 and its floor are `calmflow eval`'s exact W2 (samples against a fresh target set, and a
second fresh set against the same one), the source draws and the target sets come from
`calmflow data`: the same sets and metric as analysis/experiments.py's tables.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import numpy as np
    import experiments
    import path_w2  # its one-line-error Runner
except ImportError as e:
    print(f"oracle_head: error: needs numpy and h5py ({e})", file=sys.stderr)
    sys.exit(1)

path_w2.PROG = "oracle_head"
MOON_ARC = 600  # components per moon


def fail(msg):
    print(f"oracle_head: error: {msg}", file=sys.stderr)
    sys.exit(1)


def mixture(name):
    """(means (K, 2), variance of every component, isotropic) of calmflow's 2-D set `name`
    (src/flow/dist.c); equal weights."""
    if name in ("normal", "gaussian"):
        return np.zeros((1, 2)), 1.0
    if name == "8gaussians":
        a = 2 * math.pi * np.arange(8) / 8
        return np.stack([5 * np.cos(a), 5 * np.sin(a)], 1), 0.1
    if name == "2gaussians":
        return np.array([[-5.0, 0.0], [5.0, 0.0]]), 1.0
    if name == "2to4gaussians":
        return np.array([[-5.0, -5.0], [5.0, -5.0], [-5.0, 5.0], [5.0, 5.0]]), 1.0
    if name == "moons":
        a = (np.arange(MOON_ARC) + 0.5) / MOON_ARC * math.pi
        up = np.stack([np.cos(a), np.sin(a)], 1)
        lo = np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1)
        return 3 * np.concatenate([up, lo]) - 1, 0.6 ** 2
    fail(f"set '{name}': expected normal, 8gaussians, 2gaussians, 2to4gaussians or moons "
         "(2-D sets written as Gaussian mixtures)")


class Bridge:
    """The exact next-point conditional of the bridge paths between two Gaussian mixtures."""

    def __init__(self, source, target, sigma):
        self.c, self.s0 = mixture(source)
        self.a, self.s1 = mixture(target)
        self.sigma = sigma

    def conditional(self, x0, xt, t, h, history):
        """The law of x_{t+h} given (x0, x_t) (history) or x_t (markov), a mixture over the
        target's components (and the source's, markov): weights (n, K), means (n, K, 2) and one
        isotropic variance. Given x_t and x1, the bridge's next point does not depend on x0:
        mean x_t (1 - t - h) / (1 - t) + x1 h / (1 - t), variance sigma^2 h (1 - t - h) / (1 - t);
        x1 given the conditioning is Gaussian within each component."""
        sig2, a, s1 = self.sigma ** 2, self.a, self.s1
        al, be = (1 - t - h) / (1 - t), h / (1 - t)
        step_var = sig2 * h * (1 - t - h) / (1 - t)
        if history and t == 0:  # x_t = x0: the prior
            logw = np.zeros((xt.shape[0], a.shape[0]))
            mu, post = np.broadcast_to(a[None], (xt.shape[0],) + a.shape), s1
        else:
            if history:  # x_t = (1 - t) x0 + t x1 + sigma B_t, B_t ~ N(0, t (1 - t))
                r = sig2 * t * (1 - t)
                base = (xt - (1 - t) * x0)[:, None, :]  # (n, 1, 2)
            else:  # x0 from the source component: r adds its spread
                r = (1 - t) ** 2 * self.s0 + sig2 * t * (1 - t)
                base = xt[:, None, :] - (1 - t) * self.c[None]  # (n, M, 2)
            d = base[:, :, None, :] - t * a[None, None]  # (n, M, K, 2)
            logw = (-(d ** 2).sum(-1) / (2 * (t * t * s1 + r))).reshape(xt.shape[0], -1)
            post = 1 / (1 / s1 + t * t / r)
            mu = ((a[None, None] / s1 + t * base[:, :, None, :] / r) * post)
            mu = mu.reshape(xt.shape[0], -1, 2)
        w = np.exp(logw - logw.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return w, al * xt[:, None, :] + be * mu, be * be * post + step_var

    def moments(self, x0, xt, t, h, history):
        """Mean and per-coordinate variance (n, 2) of the next point: the ideal diagonal
        Gaussian head. Computed in chunks of rows (markov: n x 8 x 1200 components)."""
        mean, var = np.empty_like(xt), np.empty_like(xt)
        for i in range(0, xt.shape[0], 200):
            s = slice(i, i + 200)
            w, m, v = self.conditional(x0[s], xt[s], t, h, history)
            mean[s] = (w[:, :, None] * m).sum(1)
            var[s] = (w[:, :, None] * m * m).sum(1) - mean[s] ** 2 + v
        return mean, np.maximum(var, 0)

    def draw(self, x0, xt, t, h, history, exact, rng):
        if not exact:
            mean, var = self.moments(x0, xt, t, h, history)
            return mean + np.sqrt(var) * rng.standard_normal(xt.shape)
        out = np.empty_like(xt)
        for i in range(0, xt.shape[0], 200):
            s = slice(i, i + 200)
            w, m, v = self.conditional(x0[s], xt[s], t, h, history)
            u = rng.random(w.shape[0])[:, None]
            k = np.minimum((np.cumsum(w, 1) < u).sum(1), w.shape[1] - 1)
            out[s] = m[np.arange(w.shape[0]), k] + math.sqrt(v) * rng.standard_normal(
                (w.shape[0], 2))
        return out


def paths(br, x0, x1, N, rng):
    """True bridge paths (n, N, 2) through the grid t_k = k / (N - 1)."""
    ts = np.linspace(0, 1, N)
    B = np.zeros((x0.shape[0], N, 2))
    for k in range(1, N - 1):
        t, h = ts[k - 1], ts[k] - ts[k - 1]
        B[:, k] = B[:, k - 1] * (1 - t - h) / (1 - t) + math.sqrt(h * (1 - t - h) / (1 - t)) * \
            rng.standard_normal((x0.shape[0], 2))
    return (1 - ts)[None, :, None] * x0[:, None] + ts[None, :, None] * x1[:, None] + br.sigma * B


def step_nll(br, X, history):
    """The ideal Gaussian head's NLL at each predicted point, mean over the paths X (n, N, 2),
    in the units of summary.json diag.step_loss."""
    N = X.shape[1]
    ts = np.linspace(0, 1, N)
    out = []
    for k in range(N - 1):
        mean, var = br.moments(X[:, 0], X[:, k], ts[k], ts[k + 1] - ts[k], history)
        s = np.sqrt(var) * (N - 1)
        z = ((X[:, k + 1] - mean) * (N - 1)) / s
        out.append(float((0.5 * z * z + np.log(s) + 0.5 * math.log(2 * math.pi)).sum(1).mean()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="build/calmflow")
    ap.add_argument("--out", default="runs/oracle")
    ap.add_argument("--source", default="8gaussians")
    ap.add_argument("--target", default="moons")
    ap.add_argument("--sigma", type=float, default=2.0, help="bridge noise (-flow_sigma)")
    ap.add_argument("--N", type=int, default=16, help="time points (-flow_time_points)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", nargs="*", default=[],
                    help="run directories of trained models, whose diag.step_loss to print")
    a = ap.parse_args()
    if a.N < 2 or a.samples < 2 or a.seeds < 1 or not a.sigma > 0:
        fail("--N >= 2, --samples >= 2, --seeds >= 1 and --sigma > 0 expected")
    if not os.access(a.binary, os.X_OK):
        fail(f"--binary '{a.binary}' is not an executable calmflow")
    br = Bridge(a.source, a.target, a.sigma)
    for d in ("data", "sets"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    R = path_w2.Runner(a.binary, a.out)
    n, N, ts = a.samples, a.N, np.linspace(0, 1, a.N)
    rows = []
    for history in (1, 0):
        for exact in (0, 1):
            kind = ("history" if history else "markov") + (" exact" if exact else " gauss")
            row = {"kind": kind, "N": N, "sigma": a.sigma, "n": n, "w2": [], "w2_floor": [],
                   "w2_ratio": []}
            for seed in range(a.seeds):
                rng = np.random.default_rng(1000 * seed + 2 * history + exact)
                x0 = R.data(a.source, 2, n, 800000 + seed).astype(np.float64)
                x = x0.copy()
                for k in range(N - 1):
                    x = br.draw(x0, x, ts[k], ts[k + 1] - ts[k], history, exact, rng)
                tag = f"{kind.replace(' ', '-')}-s{seed}"
                fa = R.put(f"gen-{tag}", x.astype(np.float32))
                fb = experiments.data_file(R, a.target, 2, 810000 + seed, n)
                fr = experiments.data_file(R, a.target, 2, 820000 + seed, n)
                m = R.w2(fa, fb, fr, tag)
                for key in ("w2", "w2_floor", "w2_ratio"):
                    row[key].append(m[key])
            rows.append(row)
            print(f"{kind}: W2 / floor " + ", ".join(f"{v:.2f}" for v in row["w2_ratio"]),
                  flush=True)
    rng = np.random.default_rng(7)
    X = paths(br, R.data(a.source, 2, n, 830000).astype(np.float64),
              R.data(a.target, 2, n, 830001).astype(np.float64), N, rng)
    nll = {"ideal gauss, history": step_nll(br, X, 1), "ideal gauss, markov": step_nll(br, X, 0)}
    for run in a.runs:
        try:
            nll[os.path.basename(run.rstrip("/"))] = json.load(
                open(os.path.join(run, "summary.json")))["diag"]["step_loss"]
        except (OSError, KeyError, ValueError) as e:
            fail(f"--runs '{run}': no summary.json with diag.step_loss ({e})")
    lines = [f"{a.source} -> {a.target}, bridge sigma {a.sigma}, N = {N}, {n} samples, "
             f"{a.seeds} seed(s): W2 / floor of the final samples", "",
             "| sampler | W2 / floor (per seed) | mean |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | " + ", ".join(f"{v:.2f}" for v in r["w2_ratio"]) +
                     f" | {np.mean(r['w2_ratio']):.2f} |")
    lines += ["", "Per-point NLL at predicted point k (diag.step_loss units), and the mean "
              "from k = 2:", "",
              "| head | " + " | ".join(f"k {k}" for k in range(1, N)) + " | mean k >= 2 |",
              "|---|" + "---|" * N]
    for name, L in nll.items():
        if len(L) != N - 1:
            fail(f"'{name}': {len(L)} step losses, expected N - 1 = {N - 1}")
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in L) +
                     f" | {np.mean(L[1:]):.3f} |")
    with open(os.path.join(a.out, "oracle.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(json.dumps({"step_nll": nll}) + "\n")
    open(os.path.join(a.out, "oracle.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
