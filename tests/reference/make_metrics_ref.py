#!/usr/bin/python3
"""make_metrics_ref.py: reference values for tests/test_metrics.c.

Draws a few seeded point sets (float32), computes W1/W2 with
scipy.optimize.linear_sum_assignment and MMD / energy distance with plain numpy
(an implementation independent of src/metrics/), and writes inputs and expected
values to tests/data/metrics_ref.txt:

    ncases K
    case NAME na nb d max_exact
    <na*d values of a, row-major>  <nb*d values of b, row-major>
    expect n_ot N w2 V w1 V mmd2_rbf V mmd2_rbf_multi V energy V

Input values are float32 written as their shortest round-trip decimal (strtof
gives back the same float); expected values are doubles with 17 digits. Lines
starting with '#' are comments.

Usage: tests/reference/make_metrics_ref.py [OUT]   (default: tests/data/metrics_ref.txt)
"""
import os
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

SIGMAS = (0.01, 0.1, 1.0, 10.0, 100.0)


def sqdist(x, y):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=-1)


def wasserstein(a, b, p):
    c = sqdist(a, b)
    if p == 1:
        c = np.sqrt(c)
    r, k = linear_sum_assignment(c)
    m = c[r, k].mean()
    return m if p == 1 else np.sqrt(m)


def mmd2(a, b, gamma):
    kaa = np.exp(-gamma * sqdist(a, a)).mean()
    kbb = np.exp(-gamma * sqdist(b, b)).mean()
    kab = np.exp(-gamma * sqdist(a, b)).mean()
    return kaa + kbb - 2.0 * kab


def energy(a, b):
    dab = np.sqrt(sqdist(a, b)).mean()
    daa = np.sqrt(sqdist(a, a)).mean()
    dbb = np.sqrt(sqdist(b, b)).mean()
    return 2.0 * dab - daa - dbb


def f32(x, decimals=5):
    """Round to a few decimals (short file) and store as float32."""
    return np.round(np.asarray(x, dtype=np.float64), decimals).astype(np.float32)


def moons(rng, n):
    t = rng.uniform(0.0, np.pi, n)
    upper = rng.uniform(size=n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.stack([x, y], axis=1) + 0.05 * rng.normal(size=(n, 2))


def cases():
    rng = np.random.default_rng(20240611)
    out = []
    out.append(("n50_d2", f32(rng.normal(size=(50, 2))),
                f32(rng.normal(0.5, 1.2, size=(50, 2))), 1000))
    out.append(("n40v60_d5", f32(rng.normal(size=(40, 5))),
                f32(rng.uniform(-2, 2, size=(60, 5))), 1000))
    mix = np.where(rng.uniform(size=(200, 1)) < 0.5, -1.5, 1.5) + 0.4 * rng.normal(size=(200, 3))
    out.append(("n200_d3", f32(rng.normal(size=(200, 3))), f32(mix), 1000))
    # Integer grid: many equal costs and duplicate points in both sets.
    out.append(("grid_ties", f32(rng.integers(0, 4, size=(36, 2))),
                f32(rng.integers(0, 4, size=(36, 2))), 1000))
    base = rng.normal(size=(10, 2))
    dup = np.repeat(base, 3, axis=0)[rng.permutation(30)]
    out.append(("dups", f32(dup), f32(rng.normal(size=(30, 2))), 1000))
    out.append(("cap25", f32(rng.normal(size=(80, 2))), f32(rng.normal(1, 1, size=(70, 2))), 25))
    out.append(("n1", f32(rng.normal(size=(1, 3))), f32(rng.normal(size=(1, 3))), 1000))
    out.append(("n1v5", f32(rng.normal(size=(1, 2))), f32(rng.normal(size=(5, 2))), 1000))
    out.append(("d1", f32(rng.normal(size=(30, 1))), f32(rng.exponential(size=(30, 1))), 1000))
    out.append(("moons400", f32(moons(rng, 400)), f32(rng.normal(size=(400, 2))), 1000))
    out.append(("scale1e3", f32(1e3 * rng.normal(size=(20, 2)), 2),
                f32(1e3 * rng.normal(size=(20, 2)), 2), 1000))
    return out


def fmt_f32(v):
    return np.format_float_positional(np.float32(v), unique=True, trim="-")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data",
                                                               "metrics_ref.txt")
    cs = cases()
    lines = ["# metrics_ref.txt: inputs and expected values for tests/test_metrics.c.",
             "# Written by tests/reference/make_metrics_ref.py (numpy + scipy); do not edit.",
             "ncases %d" % len(cs)]
    for name, a, b, max_exact in cs:
        na, d = a.shape
        nb = b.shape[0]
        n_ot = min(na, nb, max_exact)
        w2 = wasserstein(a[:n_ot], b[:n_ot], 2)
        w1 = wasserstein(a[:n_ot], b[:n_ot], 1)
        m1 = mmd2(a, b, 2.0)
        mm = np.mean([mmd2(a, b, 1.0 / (2.0 * s * s)) for s in SIGMAS])
        en = energy(a, b)
        lines.append("case %s %d %d %d %d" % (name, na, nb, d, max_exact))
        for x in (a, b):
            for row in x:
                lines.append(" ".join(fmt_f32(v) for v in row))
        lines.append("expect n_ot %d w2 %r w1 %r mmd2_rbf %r mmd2_rbf_multi %r energy %r"
                     % (n_ot, float(w2), float(w1), float(m1), float(mm), float(en)))
        print("%-10s na=%3d nb=%3d d=%d n_ot=%3d w2=%.6f w1=%.6f mmd2=%.6g multi=%.6g energy=%.6g"
              % (name, na, nb, d, n_ot, w2, w1, m1, mm, en))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
