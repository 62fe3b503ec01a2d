#!/usr/bin/env python3
"""W2 / floor at every time point of a CaLMFlow rollout, against the training paths' marginals.

`calmflow sample -sample_traj 1` writes every time point of every generated trajectory (/traj,
n x N x D). This script scores time point k of those trajectories against the marginal at
t_k = k / (N - 1) of the paths the model was trained on, read from the run's config.yaml:
x_t = (1 - t) x0 + t x1 + noise, with x0 from -data_source and x1 from -data_name drawn
independently (as `calmflow train` pairs them) and the noise of -flow_path:

  straight  none
  bridge    sigma sqrt(t (1 - t)) N(0, I)           (the Brownian bridge's marginal)
  noisy     (sigma + (sigma_min - sigma) t) N(0, I)
  ve        sigma_min (sigma / sigma_min)^(1 - t) N(0, I)

W2 is `calmflow eval`'s exact W2 against one set of the marginal, the floor W2 between two such
sets, both of the sample set's size; the ratio is 1 where the rollout is as close to the
marginal as a second sample of it. Where along the path a model leaves the marginal tells
whether its error builds up step by step or comes from a few steps (docs/results.md).

  /usr/bin/python3 analysis/path_w2.py --binary build/calmflow --out runs/pw2 \\
      runs/x/samples.h5 runs/y/samples-tau1.0.h5        # -> runs/pw2/path_w2.{md,jsonl}

The sample set's run directory (the folder holding it) must hold config.yaml, as
`calmflow train` writes it; the model must be a calmflow model on synthetic data.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import experiments  # its Runner and data sets
except ImportError as e:
    print(f"path_w2: error: needs numpy and h5py ({e})", file=sys.stderr)
    sys.exit(1)


PROG = "path_w2"  # the error lines' name (oracle_head.py uses this Runner too)


def fail(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_config(path):
    """The `key: "value"` lines of a run's config.yaml (calmflow writes one per option)."""
    cfg = {}
    try:
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            cfg[k.strip()] = v.strip().strip('"')
    except OSError as e:
        fail(f"cannot read the run's options '{path}': {e}")
    return cfg


def noise_std(cfg, t, D):
    """Standard deviation of the training path's noise at time t (each coordinate)."""
    path = cfg.get("flow_path", "bridge")
    s = cfg.get("flow_sigma", "auto")
    sigma = min(1.0, 2.0 * math.sqrt(2.0 / D)) if s == "auto" else float(s)
    smin = float(cfg.get("flow_sigma_min", "1e-4"))
    if path == "straight":
        return 0.0
    if path == "bridge":
        return sigma * math.sqrt(max(t * (1.0 - t), 0.0))
    if path == "noisy":
        return sigma + (smin - sigma) * t
    if path == "ve":
        return smin * (sigma / smin) ** (1.0 - t)
    fail(f"-flow_path '{path}': expected straight, bridge, noisy or ve")


class Runner(experiments.Runner):
    """experiments.py's runner on one rank, with a failure as path_w2's one error line."""

    def __init__(self, binary, out):
        super().__init__(binary, 1, out)

    def calmflow(self, args, ranks=None, allow=()):
        try:
            return super().calmflow(args, ranks, allow)
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            fail(f"calmflow {args[0]} failed: {lines[-1] if lines else e}")

    def data(self, name, D, n, seed):
        import h5py
        with h5py.File(experiments.data_file(self, name, D, seed, n), "r") as h:
            return h["x"][...]

    def w2(self, fa, fb, fr, tag):
        """`calmflow eval`'s exact W2 of set fa against fb and its floor (fr against fb): the
        metrics dict, also kept as sets/metrics-{tag}.json."""
        mj = os.path.join(self.out, "sets", f"metrics-{tag}.json")
        self.calmflow(["eval", "-eval_a", fa, "-eval_b", fb, "-eval_ref", fr,
                       "-eval_sinkhorn_max", 0, "-eval_out", mj])
        return json.load(open(mj))

    def put(self, name, x):
        import h5py
        f = os.path.join(self.out, "sets", name + ".h5")
        with h5py.File(f + ".part", "w") as h:
            h["x"] = x
        os.replace(f + ".part", f)
        return f


def marginals(R, cfg, N, D, n, seed):
    """The training paths' marginal at t_0 .. t_{N-1}: N arrays (n, D), one draw of x0, x1."""
    import numpy as np
    x0 = R.data(cfg.get("data_source", "normal"), D, n, seed).astype(np.float64)
    x1 = R.data(cfg["data_name"], D, n, seed + 1).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(N):
        t = k / (N - 1)
        out.append((1 - t) * x0 + t * x1 + noise_std(cfg, t, D) * rng.standard_normal(x0.shape))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("samples", nargs="+", help="sample sets with /traj (calmflow sample "
                                               "-sample_traj 1)")
    ap.add_argument("--binary", default="build/calmflow")
    ap.add_argument("--out", default="runs/path_w2")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the marginal sets (the same sets for every sample set of the "
                         "same paths and size, so their rows differ by the model, not by the "
                         "reference)")
    a = ap.parse_args()
    try:
        import h5py
        import numpy as np
    except ImportError as e:
        fail(f"needs numpy and h5py ({e})")
    if not os.access(a.binary, os.X_OK):
        fail(f"--binary '{a.binary}' is not an executable calmflow")
    for d in ("data", "sets"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    R = Runner(a.binary, a.out)
    rows, refs = [], {}
    for i, smp in enumerate(a.samples):
        run_dir = os.path.dirname(os.path.abspath(smp))
        cfg = read_config(os.path.join(run_dir, "config.yaml"))
        if cfg.get("model", "calmflow") != "calmflow":
            fail(f"'{smp}': model '{cfg.get('model')}' is not calmflow (no time points)")
        if cfg.get("data_train") or cfg.get("data_source", "normal").endswith(".h5"):
            fail(f"'{smp}': trained on a data file, not on synthetic sets")
        try:
            with h5py.File(smp, "r") as h:
                if "traj" not in h:
                    fail(f"'{smp}' has no /traj: sample with -sample_traj 1")
                traj = h["traj"][...]
        except OSError as e:
            fail(f"cannot read '{smp}': {e}")
        n, N, D = traj.shape
        if N != int(cfg["flow_time_points"]) or D != int(cfg["data_dim"]):
            fail(f"'{smp}': /traj is {n} x {N} x {D}, the run has N = "
                 f"{cfg['flow_time_points']}, D = {cfg['data_dim']}")
        key = json.dumps([cfg.get(k) for k in ("data_source", "data_name", "flow_path",
                                                 "flow_sigma", "flow_sigma_min")] + [N, D, n])
        if key not in refs:
            refs[key] = (len(refs), marginals(R, cfg, N, D, n, 700000 + a.seed),
                         marginals(R, cfg, N, D, n, 600000 + a.seed))
        j, ref, ref2 = refs[key]
        row = {"samples": smp, "run": os.path.basename(run_dir), "N": N, "D": D, "n": n,
               "path": cfg.get("flow_path"), "w2": [], "w2_floor": [], "w2_ratio": []}
        for k in range(N):
            tag = f"{i}-t{k}"
            fa = R.put(f"gen-{tag}", traj[:, k, :].astype(np.float32))
            fb = R.put(f"ref{j}-t{k}", ref[k].astype(np.float32))
            fr = R.put(f"ref2{j}-t{k}", ref2[k].astype(np.float32))
            m = R.w2(fa, fb, fr, tag)
            for key in ("w2", "w2_floor", "w2_ratio"):
                row[key].append(m[key])
        rows.append(row)
        print(f"{row['run']}: W2 / floor " + " ".join(f"{v:.2f}" for v in row["w2_ratio"]),
              flush=True)
    with open(os.path.join(a.out, "path_w2.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    Nmax = max(r["N"] for r in rows)
    lines = ["| run | sample set | " + " | ".join(f"t{k}" for k in range(Nmax)) + " |",
             "|---|---|" + "---|" * Nmax]
    for r in rows:
        cells = [f"{v:.2f}" for v in r["w2_ratio"]] + [""] * (Nmax - r["N"])
        lines.append(f"| {r['run']} | {os.path.basename(r['samples'])} | " + " | ".join(cells)
                     + " |")
    open(os.path.join(a.out, "path_w2.md"), "w").write("\n".join(lines) + "\n")
    print(f"path_w2: {len(rows)} sample set(s) -> {os.path.join(a.out, 'path_w2.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
