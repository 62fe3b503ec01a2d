#!/usr/bin/python3
"""hsmm.py: generating held-out single cells from a condition, on the HSMM myoblast time course.

Usage: analysis/hsmm.py [--size ci|small|full] [--seeds N] [--ranks R] [--binary build/calmflow]
                        [--out DIR] [--results docs/results.md] [--config configs/hsmm.json]
                        [--pca-cells train|all] [--replot]

One command for the whole experiment (docs/results.md, "Single-cell: hsmm, 48 h held out"):
  1. `calmflow data` turns the .h5ad (271 cells x 47,192 genes, FPKM) into PCA coordinates
     (normalized log1p, 2000 highly variable genes, 50 components; basis and mean saved).
     With "pca_cells": "train" (the default) it reads a copy of the .h5ad without the 48 h
     cells, so the genes, the PCA basis and its mean come from the training cells only, and
     the 48 h cells are projected onto that basis here, from their gene-space values (a
     second `calmflow data` run, -data_pca 0 -data_hvg 0); with "all" the PCA is fit on all
     cells and training leaves the 48 h cells out with -data_exclude;
  2. both models train on the PCA coordinates divided by one number ("scale": "rms", the RMS
     coordinate of the training cells; their samples are multiplied back before any metric);
     per seed: CaLMFlow with a text prompt ("a myoblast at {Hours} hours in {Media} medium")
     and the conditional CFM baseline (one-hot Hours and Media) are trained without any 48 h
     cell (the Hours category 48 stays in the file's categories), then sample the 48 h condition (and, as a check
     that the conditioning was learned, the 24 h training condition);
  3. the trivial baselines from the real cells: the midpoints (z24 + z72) / 2 of all pairs of
     a 24 h and a 72 h cell (their mean is the average of the 24 h and 72 h means) and the
     pooled 24 h + 72 h cells; for reference the real 24 h and the real 72 h cells alone and
     all training cells (0, 24 and 72 h: what an unconditional model would aim at);
  4. `calmflow eval -eval_pca` scores every set against the real 48 h cells: W2 (exact), MMD
     and Frechet in PCA space, and the R^2 of mean expression in gene space through the
     inverse PCA (all 2000 genes, and the 50 of largest variance); the R^2 is recomputed here
     with numpy as a cross-check (the script fails when they differ by more than 1e-5);
  5. writes OUT/rows.jsonl, OUT/table.md, OUT/hsmm_scatter.png (PC1/PC2 of real and generated
     48 h cells per method) and OUT/hsmm_r2.png; with --results the table replaces the block
     between <!-- hsmm:begin --> and <!-- hsmm:end --> of that file (hsmm-all with
     --pca-cells all). --replot rebuilds table and plots from an earlier --out.
Exit status 1 when a run fails or a check does not hold.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import Runner, opts_list, put_results  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
METHODS = [  # (key, label, conditioning)
    ("calmflow", "CaLMFlow", "text prompt"),
    ("cfm", "CFM (OT)", "one-hot Hours, Media"),
    ("midpoint", "interpolation: midpoints", "(z24 + z72) / 2, all pairs"),
    ("pooled", "interpolation: pooled", "24 h + 72 h cells"),
    ("real24", "real 24 h cells", "reference"),
    ("real72", "real 72 h cells", "reference"),
    ("train", "all training cells", "reference (0, 24, 72 h)"),
]


def log(msg):
    print(f"hsmm: {msg}", file=sys.stderr, flush=True)


def h5_points(path, x, attrs=None):
    import h5py
    with h5py.File(path, "w") as f:
        f["x"] = np.asarray(x, np.float32)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def read_points(path):
    import h5py
    with h5py.File(path, "r") as f:
        return f["x"][...]


def write_h5ad_without(src, dst, column, value):
    """Copy the AnnData file src to dst without the cells whose categorical obs column is
    value (X as CSR; obs subset row by row; var, uns and the rest copied as they are)."""
    import h5py
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        cg = f[f"obs/{column}"]
        cats = [c.decode() if isinstance(c, bytes) else c for c in cg["categories"][...]]
        keep = np.flatnonzero(cg["codes"][...] != cats.index(value))
        for name in f:
            if name not in ("X", "obs"):
                f.copy(f[name], g, name=name)
        X, gx = f["X"], g.create_group("X")
        for k, v in X.attrs.items():
            gx.attrs[k] = v
        ip, ind, dat = X["indptr"][...], X["indices"][...], X["data"][...]
        rows = [np.arange(ip[i], ip[i + 1]) for i in keep]
        idx = np.concatenate(rows)
        gx["data"], gx["indices"] = dat[idx], ind[idx]
        gx["indptr"] = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(ip.dtype)
        gx.attrs["shape"] = np.array([len(keep), X.attrs["shape"][1]], dtype=np.int64)
        for k in ("data", "indices", "indptr"):
            for a, v in X[k].attrs.items():
                gx[k].attrs[a] = v
        obs, go = f["obs"], g.create_group("obs")
        for k, v in obs.attrs.items():
            go.attrs[k] = v

        def subset(ds, grp, name):
            d = grp.create_dataset(name, data=ds[...][keep], dtype=ds.dtype)
            for a, v in ds.attrs.items():
                d.attrs[a] = v
        for name, item in obs.items():
            if isinstance(item, h5py.Group):  # categorical: codes subset, categories as they are
                sub = go.create_group(name)
                for a, v in item.attrs.items():
                    sub.attrs[a] = v
                for n2, it2 in item.items():
                    if n2 == "codes":
                        subset(it2, sub, n2)
                    else:
                        item.copy(it2, sub, name=n2)
            else:
                subset(item, go, name)
    return len(keep)


def spread(x, ref):
    """sqrt(tr Cov(x) / tr Cov(ref)): the size of a cloud relative to the reference's."""
    return float(np.sqrt(np.var(x.astype(np.float64), 0, ddof=1).sum() /
                         np.var(ref.astype(np.float64), 0, ddof=1).sum()))


def r2(pred, real, idx=None):
    """R^2 of mean expression, as cf_r2_mean_expression (real is the reference)."""
    if idx is not None:
        pred, real = pred[idx], real[idx]
    return 1.0 - np.sum((pred - real) ** 2) / np.sum((real - real.mean()) ** 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="ci")
    ap.add_argument("--seeds", type=int, default=0, help="override the size's seed count")
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--binary", default="build/calmflow")
    ap.add_argument("--out")
    ap.add_argument("--results")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "hsmm.json"))
    ap.add_argument("--pca-cells", choices=("train", "all"),
                    help="override the config's pca_cells: fit genes and PCA on the training "
                         "cells only, or on all cells")
    ap.add_argument("--replot", action="store_true",
                    help="run nothing: table, plots (and --results) again from an earlier run's "
                         "--out (rows.jsonl and data/)")
    a = ap.parse_args()
    try:
        cfg = json.load(open(a.config))
    except (OSError, ValueError) as e:
        log(f"error: cannot read the config '{a.config}': {e}")
        return 1
    if a.size not in cfg["sizes"]:
        log(f"error: --size {a.size}: expected one of {', '.join(cfg['sizes'])}")
        return 1
    if not a.replot and not os.access(a.binary, os.X_OK):
        log(f"error: --binary '{a.binary}' is not an executable calmflow")
        return 1
    if not os.path.isfile(cfg["h5ad"]):
        log(f"error: the data file '{cfg['h5ad']}' (config key h5ad) does not exist")
        return 1
    if a.pca_cells:
        cfg["pca_cells"] = a.pca_cells
    size = cfg["sizes"][a.size]
    seeds = a.seeds or size["seeds"]
    out = a.out or f"runs/hsmm-{a.size}"
    for d in ("data", "runs", "samples", "eval"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    run = Runner(a.binary, a.ranks, out)
    t_start = time.time()

    # 1. data
    data = os.path.join(out, "data", "hsmm_pca.h5")
    allgenes = os.path.join(out, "data", "hsmm_allgenes.h5")
    colname, held = cfg["holdout"]["column"], cfg["holdout"]["value"]
    n24, n72 = cfg["holdout"]["neighbours"]
    inductive = cfg.get("pca_cells", "train") == "train"
    src = cfg["h5ad"]
    if inductive and not a.replot:  # the held-out cells are not in the file the genes and PCA
        src = os.path.join(out, "data", "hsmm_train.h5ad")  # come from
        write_h5ad_without(cfg["h5ad"], src, colname, held)
    if not a.replot:
        run.calmflow(["data", "-data_h5ad", src, "-data_out", data] + opts_list(cfg["data"]))
    # every cell's gene-space values over all genes (per-cell normalization only), to project
    # the held-out cells and for the "R^2 true" column
    if not a.replot:
        run.calmflow(["data", "-data_h5ad", cfg["h5ad"], "-data_out", allgenes, "-data_pca", 0,
                  "-data_hvg", 0, "-data_obs", colname] +
                 opts_list({o: v for o, v in cfg["data"].items()
                            if o not in ("data_pca", "data_hvg", "data_obs")}))
    import h5py
    with h5py.File(data, "r") as f:
        z = f["x"][...]
        comp = f["pca/components"][...].astype(np.float64)
        mu = f["pca/mean"][...].astype(np.float64)
        col = f[f"obs/{colname}"].asstr()[...]
        gnames = list(f["genes"].asstr()[...])
        k = z.shape[1]
    with h5py.File(allgenes, "r") as f:
        pos = {g: j for j, g in enumerate(f["genes"].asstr()[...])}
        sel = np.array([pos[g] for g in gnames])
        v_all = f["x"][...][:, sel].astype(np.float64)
        col_all = f[f"obs/{colname}"].asstr()[...]
    v48 = v_all[col_all == held]
    if inductive:
        # the training cells' coordinates recomputed from their gene-space values must be
        # those calmflow data wrote: then the 48 h cells are projected the same way
        zt = (v_all[col_all != held] - mu) @ comp.T
        err = np.abs(zt - z).max()
        if err > 1e-3 * max(1.0, np.abs(z).max()):
            raise RuntimeError(f"projection of the training cells differs from /x by {err:.3g}")
        z48 = ((v48 - mu) @ comp.T).astype(np.float32)
    else:
        z48 = z[col == held]
    z24, z72, ztrain = z[col == n24], z[col == n72], z[col != held]
    log(f"data: {z.shape[0]} cells in the PCA file, K = {k}, {comp.shape[1]} genes, PCA fit on "
        f"{'the training cells only' if inductive else 'all cells'}; held out {held} h: "
        f"{len(z48)} cells ({n24} h: {len(z24)}, {n72} h: {len(z72)})")
    # the models train on the coordinates divided by one number (the RMS coordinate of the
    # training cells), so the data's scale is near the N(0, I) source's; samples are
    # multiplied back before every metric (an isotropic scale keeps the PCA geometry)
    scale = float(np.sqrt(np.mean(ztrain.astype(np.float64) ** 2))) \
        if cfg.get("scale") == "rms" else 1.0
    train_data = data
    if scale != 1.0:
        import shutil
        train_data = os.path.join(out, "data", "hsmm_pca_scaled.h5")
        shutil.copyfile(data, train_data)
        with h5py.File(train_data, "r+") as f:
            f["x"][...] = z / scale
            f.attrs["scaled_by"] = scale
    sets = {}  # name -> file in PCA space, scored against the real 48 h cells
    real48 = os.path.join(out, "data", f"real{held}.h5")
    h5_points(real48, z48)
    rng = np.random.default_rng(12345)
    pairs = np.array([(i, j) for i in range(len(z24)) for j in range(len(z72))])
    mid = (z24[pairs[:, 0]] + z72[pairs[:, 1]]) / 2
    sets["midpoint"] = os.path.join(out, "data", "midpoints.h5")
    h5_points(sets["midpoint"], mid[rng.permutation(len(mid))])  # W2 takes the first rows
    pool = np.concatenate([z24, z72])
    sets["pooled"] = os.path.join(out, "data", "pooled.h5")
    h5_points(sets["pooled"], pool[rng.permutation(len(pool))])
    sets["real24"] = os.path.join(out, "data", f"real{n24}.h5")
    h5_points(sets["real24"], z24)
    sets["real72"] = os.path.join(out, "data", f"real{n72}.h5")
    h5_points(sets["real72"], z72)
    sets["train"] = os.path.join(out, "data", "train_cells.h5")
    h5_points(sets["train"], ztrain[rng.permutation(len(ztrain))])

    # top genes as calmflow eval ranks them: variance of the file's cells through the components
    zc = z.astype(np.float64) - z.mean(0)
    top_n = 50
    top = np.argsort(-((zc @ comp) ** 2).sum(0), kind="stable")[:top_n]
    real_mean = mu + z48.astype(np.float64).mean(0) @ comp
    true48 = v48.mean(0)
    ceiling = (r2(real_mean, true48), r2(real_mean, true48, top))

    def evaluate(name, samples, seed, ref=real48):
        js = os.path.join(out, "eval", f"{name}.json")
        run.calmflow(["eval", "-eval_a", samples, "-eval_b", ref, "-eval_pca", data,
                      "-eval_r2_top", top_n, "-eval_out", js])
        m = json.load(open(js))
        x = read_points(samples).astype(np.float64)
        ref_mean = mu + read_points(ref).astype(np.float64).mean(0) @ comp
        pred = mu + x.mean(0) @ comp
        chk = (r2(pred, ref_mean), r2(pred, ref_mean, top))
        for key, val in zip(("r2_mean_expr", "r2_mean_expr_top"), chk):
            if m.get(key) is None or abs(m[key] - val) > 1e-5:
                raise RuntimeError(f"{name}: calmflow eval {key} = {m.get(key)}, numpy {val:.8f}")
        m["r2_true_genes"] = r2(pred, true48) if ref == real48 else None
        m["spread"] = spread(x, read_points(ref))
        return m

    rows = []
    if a.replot:
        rows = [json.loads(line) for line in open(os.path.join(out, "rows.jsonl"))]
        for r in rows:  # rows of runs before the spread column
            if "spread" not in r:
                ref = real48 if r["cond"] == held else sets["real24"]
                r["spread"] = spread(read_points(r.get("samples") or sets[r["method"]]),
                                     read_points(ref))
        seeds = 1 + max([r["seed"] for r in rows if r["seed"] is not None], default=-1)
        try:
            seconds = json.load(open(os.path.join(out, "meta.json")))["seconds"]
        except (OSError, ValueError, KeyError):
            seconds = None
        return finish(a, rows, cfg, seeds, size["samples"], k, z, col, z48, top_n, ceiling,
                      scale, seconds, out)

    def emit(row):
        rows.append(row)
        with open(os.path.join(out, "rows.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    open(os.path.join(out, "rows.jsonl"), "w").close()
    for name in ("midpoint", "pooled", "real24", "real72", "train"):
        m = evaluate(name, sets[name], None)
        emit({"method": name, "seed": None, "cond": "48", **m})

    # 2. the two models, per seed
    nsamp = size["samples"]
    for seed in range(seeds):
        for key in ("calmflow", "cfm"):
            mc = cfg[key]
            opts = dict(mc["options"])
            opts.update(size[key])
            for t in ("tok_encoder", "tok_vocab"):
                if t in opts and not os.path.isabs(opts[t]):
                    opts[t] = os.path.join(ROOT, opts[t])
            rd = os.path.join(out, "runs", f"{key}-s{seed}")
            args = ["train", "-data_train", train_data, "-data_dim", k, "-seed", seed, "-run_dir", rd,
                    "-run_overwrite", 1] + opts_list(opts)
            if not inductive:  # the 48 h cells are in the data file: leave them out here
                args += ["-data_exclude", f"{colname}={held}"]
            if key == "calmflow":
                args += ["-data_prompt", mc["prompt"]]
            else:
                args += ["-cfm_cond", mc["cond_columns"]]
            t0 = time.time()
            run.calmflow(args)
            train_s = time.time() - t0
            summ = json.load(open(os.path.join(rd, "summary.json")))
            for tag, cond, ref in (("48", mc["cond"], real48),
                                   ("24", mc["seen_cond"], sets["real24"])):
                s = os.path.join(out, "samples", f"{key}-s{seed}-h{tag}.h5")
                t0 = time.time()
                run.calmflow(["sample", "-run_dir", rd, "-seed", seed, "-sample_n", nsamp,
                              "-sample_cond", cond, "-sample_out", s])
                sample_s = time.time() - t0
                if scale != 1.0:  # back to PCA coordinates
                    raw = s
                    s = raw.replace(".h5", "-pca.h5")
                    h5_points(s, read_points(raw).astype(np.float64) * scale)
                m = evaluate(f"{key}-s{seed}-h{tag}", s, seed, ref)
                emit({"method": key, "seed": seed, "cond": tag, "samples": s,
                      "train_s": train_s, "sample_s": sample_s, "train_steps": summ["steps"],
                      "final_loss": summ["final_loss"], **m})
            log(f"{key} seed {seed}: trained {summ['steps']} steps in {train_s:.0f} s; 48 h: "
                f"R^2 {rows[-2]['r2_mean_expr']:.3f} / top {rows[-2]['r2_mean_expr_top']:.3f}, "
                f"W2 {rows[-2]['w2']:.2f}")

    seconds = time.time() - t_start
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"seconds": seconds, "size": a.size, "seeds": seeds}, f)
    return finish(a, rows, cfg, seeds, nsamp, k, z, col, z48, top_n, ceiling, scale, seconds,
                  out)


def finish(a, rows, cfg, seeds, nsamp, k, z, col, z48, top_n, ceiling, scale, seconds, out):
    table = make_table(rows, cfg, a.size, seeds, nsamp, k, len(z48), top_n, ceiling, scale,
                       seconds)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    make_plots(rows, out, z, col, cfg, z48)
    print(table)
    if a.results:
        # the main protocol's block, and a second one for the PCA on all cells
        put_results(a.results, table,
                    name="hsmm" if cfg.get("pca_cells", "train") == "train" else "hsmm-all")
    log(f"table and plots in {out}")
    return 0


def agg(rs, key):
    v = [r[key] for r in rs if r.get(key) is not None and math.isfinite(r[key])]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def fmt(rs, key, digits=3):
    m, s = agg(rs, key)
    if m is None:
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None else f"{m:.{digits}f}"


def make_table(rows, cfg, size, seeds, nsamp, k, n48, top_n, ceiling, scale, seconds):
    held = cfg["holdout"]["value"]
    inductive = cfg.get("pca_cells", "train") == "train"
    pca = ("genes and PCA (basis and mean) from the training cells only, the held-out cells "
           "projected onto it" if inductive else
           "genes and PCA from all cells (the held-out ones included), training without them")
    lines = [
        f"Size `{size}`: {seeds} seed(s), {nsamp} generated cells per model and seed, all "
        f"{n48} real {held} h cells as the reference; K = {k} PCA components of "
        f"{cfg['data']['data_hvg']} genes, {pca}; the models train on the coordinates / "
        f"{scale:.3g}. Mean ± sample std over seeds (the baselines "
        f"are deterministic). R^2: mean expression in gene space (normalized log1p, through the "
        f"inverse PCA) of each set against the real {held} h cells (mapped the same way), over "
        f"all {cfg['data']['data_hvg']} genes and over the {top_n} of largest variance over the "
        f"{'training cells' if inductive else 'cells of the PCA'}; R^2 true: all genes, against the real cells' gene-space values "
        f"before the PCA (ceiling for a perfect generator: {ceiling[0]:.3f}; the projection's "
        f"ceiling on the top {top_n}: {ceiling[1]:.3f}). W2: exact, between the first {n48} "
        f"cells of each set. MMD: RBF, mean over bandwidths 0.01-100 (gamma 2 saturates in "
        f"{k}-D). Frechet: squared units. Spread: sqrt(tr Cov) of the set over that of the "
        f"real cells (1: the right overall size)."
        + (f" Whole run {seconds / 60:.1f} min." if seconds else ""), "",
        f"| method | conditioning | R^2 all genes | R^2 top {top_n} | R^2 true | W2 | MMD multi "
        f"| Frechet | spread | train s |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for key, label, cond in METHODS:
        rs = [r for r in rows if r["method"] == key and r["cond"] == held]
        if not rs:
            continue
        lines.append(f"| {label} | {cond} | {fmt(rs, 'r2_mean_expr')} | "
                     f"{fmt(rs, 'r2_mean_expr_top')} | {fmt(rs, 'r2_true_genes')} | "
                     f"{fmt(rs, 'w2', 2)} | {fmt(rs, 'mmd2_rbf_multi', 4)} | "
                     f"{fmt(rs, 'frechet', 1)} | {fmt(rs, 'spread', 2)} | "
                     f"{fmt(rs, 'train_s', 0)} |")
    seen = [r for r in rows if r["cond"] != held]
    if seen:
        lines += ["", "Check that the conditioning was learned: the same models generating the "
                  "24 h training condition, against the real 24 h (training) cells (spread "
                  "relative to those).", "",
                  "| method | R^2 all genes | R^2 top 50 | W2 | MMD multi | spread |",
                  "|---|---|---|---|---|---|"]
        for key, label, _ in METHODS[:2]:
            rs = [r for r in seen if r["method"] == key]
            if rs:
                lines.append(f"| {label} | {fmt(rs, 'r2_mean_expr')} | "
                             f"{fmt(rs, 'r2_mean_expr_top')} | {fmt(rs, 'w2', 2)} | "
                             f"{fmt(rs, 'mmd2_rbf_multi', 4)} | {fmt(rs, 'spread', 2)} |")
    return "\n".join(lines) + "\n"


def make_plots(rows, out, z, col, cfg, z48):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    held = cfg["holdout"]["value"]
    first = {}
    for r in rows:
        if r["cond"] == held and r["method"] in ("calmflow", "cfm") and r["method"] not in first:
            first[r["method"]] = r["samples"]
    panels = [(k, lbl) for k, lbl, _ in METHODS[:4] if k in first or k in ("midpoint", "pooled")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), sharex=True,
                             sharey=True)
    for ax, (key, lbl) in zip(np.atleast_1d(axes), panels):
        shades = iter(("0.85", "#b8d8b8", "#d8b8d8", "#b8c8e8"))
        for t in sorted(set(col) - {held}, key=float):
            ax.scatter(z[col == t, 0], z[col == t, 1], s=5, color=next(shades, "0.7"),
                       label=f"real {t} h (training)")
        if key in first:
            g = read_points(first[key])
        else:
            g = read_points(os.path.join(out, "data", f"{'midpoints' if key == 'midpoint' else key}.h5"))
        ax.scatter(g[:300, 0], g[:300, 1], s=5, c="tab:orange", alpha=0.6, label="generated")
        ax.scatter(z48[:, 0], z48[:, 1], s=8, c="tab:blue", label=f"real {held} h")
        ax.set_title(lbl, fontsize=9)
        ax.set_xlabel("PC1")
    np.atleast_1d(axes)[0].set_ylabel("PC2")
    np.atleast_1d(axes)[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "hsmm_scatter.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    keys = [(k, lbl) for k, lbl, _ in METHODS if any(r["method"] == k for r in rows)]
    w = 0.8 / len(keys)
    for i, (key, lbl) in enumerate(keys):
        rs = [r for r in rows if r["method"] == key and r["cond"] == held]
        x = np.arange(2) + (i - (len(keys) - 1) / 2) * w
        ax.bar(x, [agg(rs, m)[0] for m in ("r2_mean_expr", "r2_mean_expr_top")], w, label=lbl)
        if len(rs) > 1:  # one dot per seed
            for j, m in enumerate(("r2_mean_expr", "r2_mean_expr_top")):
                ax.plot([x[j]] * len(rs), [r[m] for r in rs], "k.", ms=4)
    lo = min(v for r in rows for v in (r["r2_mean_expr"], r["r2_mean_expr_top"]))
    ax.set_ylim(max(-1.0, min(0.5, lo - 0.05)), 1.0)
    ax.set_xticks([0, 1], ["all genes", "top 50 genes"])
    ax.set_ylabel(f"R^2 of mean expression, {held} h")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "hsmm_r2.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"hsmm: error: {e}", file=sys.stderr)
        sys.exit(1)
