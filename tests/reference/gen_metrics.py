#!/usr/bin/python3
"""gen_metrics.py: reference values for the collective metrics (tests/test_metrics_ot.c).

An implementation independent of src/metrics/sinkhorn.c and frechet.c:
  * Sinkhorn: plain numpy, the whole cost matrix at once, log-domain alternating updates
    (no annealing, no symmetric averaging) as a warm start, then Newton steps on the dual
    until the marginal violation (rows and columns) is below 1e-13; the reported values
    are computed from the primal plan P:
      sinkhorn_w2 = sqrt(<P, C>), OT_eps = <P, C> + eps KL(P | a x b),
      divergence = OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2,
    with eps = eps_rel * 2 * mean |y - mean(y)|^2 over b (or absolute).
  * Frechet: np.cov (ddof 1) and scipy.linalg.sqrtm, the classic FID formula
      |mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)),
    checked against tr sqrtm(sqrtm(S_a) S_b sqrtm(S_a)).

Writes tests/reference/metrics_ot_ref.txt:

    ncases K
    sinkhorn NAME na nb d eps absolute      (eps relative unless absolute == 1)
    <na*d values of a> <nb*d values of b>   (float32, short decimals)
    expect w2 V ot_ab V ot_aa V ot_bb V div V
    frechet NAME na nb d
    <a> <b>
    expect frechet V trace_sqrt V

Lines starting with '#' are comments. Inputs are rounded to 3 decimals and stored as
float32 (strtof gives back the same float); expected values are doubles, 17 digits.

Usage: /usr/bin/python3 tests/reference/gen_metrics.py [OUT]
The helper functions (sinkhorn_ref, frechet_eigh) are also imported by tests/test_eval.sh;
they need numpy only (scipy is imported by main()).
"""
import os
import sys

import numpy as np


def sqdist(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=-1)


def lse(m, axis):
    """log sum exp along axis, shifted by the maximum."""
    mx = m.max(axis=axis, keepdims=True)
    return (mx + np.log(np.exp(m - mx).sum(axis=axis, keepdims=True))).squeeze(axis)


def ot_eps(x, y, eps, tol=1e-13, warm=2000, newton=100):
    """Entropic OT between uniform x and y: returns (<P, C>, OT_eps, marginal error).

    A few thousand plain Sinkhorn iterations (log domain) as a warm start, then Newton's
    method on the dual D(f, g) = <a, f> + <b, g> - eps <a x b, exp((f + g - C) / eps) - 1>,
    whose gradient is the marginal violation and whose Hessian is -(1/eps) [[diag(P 1), P],
    [P^T, diag(P^T 1)]] (singular along (1, -1): the step is a least-squares solve)."""
    c = sqdist(x, y)
    n, m = c.shape
    la, lb = np.full(n, -np.log(n)), np.full(m, -np.log(m))
    f, g = np.zeros(n), np.zeros(m)

    def plan(f, g):
        return np.exp(la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - c) / eps)

    def violation(p):
        return np.abs(p.sum(axis=1) - 1.0 / n).sum() + np.abs(p.sum(axis=0) - 1.0 / m).sum()

    for _ in range(warm):
        f = -eps * lse(lb[None, :] + (g[None, :] - c) / eps, axis=1)
        g = -eps * lse(la[:, None] + (f[:, None] - c) / eps, axis=0)
    p = plan(f, g)
    err = violation(p)
    for _ in range(newton):
        if err < tol:
            break
        grad = np.concatenate([1.0 / n - p.sum(axis=1), 1.0 / m - p.sum(axis=0)])
        h = np.zeros((n + m, n + m))
        h[:n, :n] = np.diag(p.sum(axis=1))
        h[n:, n:] = np.diag(p.sum(axis=0))
        h[:n, n:] = p
        h[n:, :n] = p.T
        step = np.linalg.lstsq(h / eps, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-6:
            pn = plan(f + t * step[:n], g + t * step[n:])
            en = violation(pn)
            if en < err:
                break
            t *= 0.5
        f, g, p, err = f + t * step[:n], g + t * step[n:], pn, en
    logp = np.log(p)
    cost = (p * c).sum()
    kl = (p * (logp - la[:, None] - lb[None, :])).sum() - p.sum() + 1.0
    return cost, cost + eps * kl, err


def sinkhorn_ref(a, b, eps, absolute=False, warm=2000):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = 2.0 * ((b - b.mean(axis=0)) ** 2).sum(axis=1).mean()
    e = eps if absolute else eps * scale
    cost, ab, err0 = ot_eps(a, b, e, warm=warm)
    _, aa, err1 = ot_eps(a, a, e, warm=warm)
    _, bb, err2 = ot_eps(b, b, e, warm=warm)
    return {"w2": np.sqrt(cost), "ot_ab": ab, "ot_aa": aa, "ot_bb": bb,
            "div": ab - 0.5 * (aa + bb), "err": max(err0, err1, err2), "eps": e}


def frechet_eigh(a, b):
    """Frechet distance with numpy only (eigh), for tests/test_eval.sh."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    la, v = np.linalg.eigh(sa)
    w = v * np.sqrt(np.clip(la, 0, None))[None, :]
    mu = np.linalg.eigvalsh(w.T @ sb @ w)
    ts = np.sqrt(np.clip(mu, 0, None)).sum()
    dm = a.mean(axis=0) - b.mean(axis=0)
    return float(dm @ dm + np.trace(sa) + np.trace(sb) - 2.0 * ts), float(ts)


def frechet_scipy(a, b):
    from scipy.linalg import sqrtm
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    ts = np.trace(sqrtm(sa @ sb)).real
    r = sqrtm(sa).real
    ts2 = np.trace(sqrtm(r @ sb @ r)).real
    dm = a.mean(axis=0) - b.mean(axis=0)
    return float(dm @ dm + np.trace(sa) + np.trace(sb) - 2.0 * ts), float(ts), float(ts2)


def f32(x):
    return np.round(np.asarray(x, dtype=np.float64), 3).astype(np.float32)


def fmt_f32(v):
    return np.format_float_positional(np.float32(v), unique=True, trim="-")


def cases():
    rng = np.random.default_rng(20250603)
    sk, fr = [], []
    sk.append(("gauss2d", f32(rng.normal(size=(40, 2))),
               f32(rng.normal(0.5, 1.3, size=(50, 2))), 0.05, 0))
    sk.append(("eps002_d3", f32(rng.normal(size=(30, 3))),
               f32(rng.uniform(-1.5, 1.5, size=(30, 3))), 0.02, 0))
    sk.append(("gemm_d12", f32(rng.normal(size=(20, 12))),
               f32(rng.normal(0.3, 0.8, size=(25, 12))), 0.1, 0))
    sk.append(("abs_eps", f32(rng.normal(size=(15, 2))),
               f32(rng.normal(2.0, 0.5, size=(20, 2))), 0.5, 1))
    sk.append(("n1v7", f32(rng.normal(size=(1, 2))), f32(rng.normal(size=(7, 2))), 0.02, 0))
    # One far point in b: its column's plan sum underflows the -50 eps cut, which sends the
    # C code through its exact column update (the test checks that it did).
    far = rng.normal(size=(30, 2))
    far[0] = (40.0, 0.0)
    sk.append(("outlier", f32(rng.normal(size=(30, 2))), f32(far), 0.033, 0))
    fr.append(("d3", f32(rng.normal(size=(30, 3))),
               f32(rng.normal(0.4, 1.5, size=(40, 3))), ))
    mix = rng.normal(size=(16, 16)) / 4.0
    fr.append(("d16_corr", f32(rng.normal(size=(40, 16)) @ mix + 0.2),
               f32(rng.normal(size=(30, 16)) @ mix.T), ))
    fr.append(("d1", f32(rng.normal(size=(20, 1))), f32(rng.exponential(size=(25, 1))), ))
    fr.append(("singular_d12", f32(rng.normal(size=(10, 12))),
               f32(rng.normal(size=(20, 12)) * 1.3), ))
    return sk, fr


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "metrics_ot_ref.txt")
    sk, fr = cases()
    lines = ["# metrics_ot_ref.txt: inputs and expected values for tests/test_metrics_ot.c.",
             "# Written by tests/reference/gen_metrics.py (numpy + scipy); do not edit.",
             "ncases %d" % (len(sk) + len(fr))]

    def rows(x):
        for row in x:
            lines.append(" ".join(fmt_f32(v) for v in row))

    for name, a, b, eps, absolute in sk:
        r = sinkhorn_ref(a, b, eps, bool(absolute))
        assert r["err"] < 1e-12, (name, r["err"])
        lines.append("sinkhorn %s %d %d %d %r %d" % (name, a.shape[0], b.shape[0], a.shape[1],
                                                   eps, absolute))
        rows(a)
        rows(b)
        lines.append("expect w2 %r ot_ab %r ot_aa %r ot_bb %r div %r" % (
            float(r["w2"]), float(r["ot_ab"]), float(r["ot_aa"]), float(r["ot_bb"]),
            float(r["div"])))
        print("sinkhorn %-10s eps %.4g: w2 %.9f div %.9g (marginal err %.1e)"
              % (name, r["eps"], r["w2"], r["div"], r["err"]))
    for name, a, b in fr:
        v, ts, ts2 = frechet_scipy(a, b)
        ve, tse = frechet_eigh(a, b)
        print("frechet  %-12s d %2d: %.12f (sqrtm(SaSb) vs symmetric form %.1e, eigh %.1e)"
              % (name, a.shape[1], v, abs(ts - ts2) / ts, abs(ve - v) / abs(v)))
        assert abs(ts - ts2) <= 1e-7 * ts and abs(ve - v) <= 1e-7 * abs(v), name
        lines.append("frechet %s %d %d %d" % (name, a.shape[0], b.shape[0], a.shape[1]))
        rows(a)
        rows(b)
        lines.append("expect frechet %r trace_sqrt %r" % (v, ts))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
