#!/usr/bin/python3
"""plot_samples.py: one PNG that summarises a calmflow run directory.

Usage: analysis/plot_samples.py RUN_DIR [-o OUT.png] [--data FILE.h5]

Reads from RUN_DIR:
  samples.h5    (required) /x (n, D): generated points at t = 1; optional
                /traj (n, N, D): every time point of each trajectory; scalar
                attributes on /x or the root are shown under the title.
  data.h5       target points /x (n, D) (or the file given by --data).
  log.jsonl     one JSON object per line: step, loss, recon, kl, lr, ...
  metrics.json  w2, w1, mmd2_rbf, energy, n_a, n_b, dim, optional w2_floor.
Writes OUT.png (default RUN_DIR/samples.png) with three panels: data vs samples
(first two dimensions), up to 64 trajectories across time, and the loss curve.
Missing optional inputs leave their panel saying "not available". A missing or
unreadable samples.h5 prints one error line on stderr and exits with status 1.
"""
import argparse
import json
import math
import os
import sys
import textwrap

import numpy as np

try:
    import h5py
    import matplotlib
except ImportError as e:  # scripts/install-deps.sh installs both
    print("plot_samples: error: %s (install python3-h5py and python3-matplotlib)" % e,
          file=sys.stderr)
    sys.exit(1)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAX_SCATTER = 5000  # points per set drawn in the scatter panel
N_TRAJ = 64         # trajectories drawn


class RunError(Exception):
    """A problem with a required input: reported as one line, exit status 1."""


def read_h5_points(path, what, required):
    """(x, traj, attrs) from an HDF5 file with /x (n, D) and optional /traj (n, N, D).
    A malformed /traj is dropped with a warning; attrs["_traj_note"] then says why."""
    if not os.path.isfile(path):
        if required:
            raise RunError("%s not found: %s" % (what, path))
        return None, None, {}
    try:
        with h5py.File(path, "r") as f:
            if "x" not in f:
                raise RunError("%s has no dataset /x: %s" % (what, path))
            x = np.asarray(f["x"][()], dtype=np.float64)
            traj = None
            if "traj" in f:
                traj = np.asarray(f["traj"][()], dtype=np.float64)
            attrs = {}
            for src in (f.attrs, f["x"].attrs):
                for k, v in src.items():
                    attrs[k] = v
    except RunError:
        raise
    except Exception as e:  # h5py raises OSError / KeyError / ValueError on bad files
        raise RunError("cannot read %s %s: %s" % (what, path, e))
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise RunError("%s /x has shape %s; expected (n, D) with n >= 1" % (what, x.shape))
    if traj is not None and (traj.ndim != 3 or traj.shape[0] == 0 or traj.shape[2] != x.shape[1]):
        note = "/traj has shape %s, expected (n, N, %d)" % (traj.shape, x.shape[1])
        print("plot_samples: ignoring %s %s" % (what, note), file=sys.stderr)
        attrs["_traj_note"] = note
        traj = None
    return x, traj, attrs


def read_optional_data(path):
    try:
        x, _, _ = read_h5_points(path, "target data", required=False)
        return x, None
    except RunError as e:
        return None, str(e).replace(os.path.dirname(path) + os.sep, "")


def read_log(path):
    """(steps, {key: values}) from log.jsonl; malformed lines are skipped."""
    if not os.path.isfile(path):
        return None
    steps, cols = [], {"loss": [], "recon": [], "kl": []}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                step = float(rec["step"])
                loss = float(rec["loss"])
            except (ValueError, KeyError, TypeError):
                continue
            steps.append(step)
            for k in cols:
                v = rec.get(k, loss if k == "loss" else None)
                try:
                    cols[k].append(float(v) if v is not None else math.nan)
                except (TypeError, ValueError):
                    cols[k].append(math.nan)
    if not steps:
        return None
    return np.asarray(steps), {k: np.asarray(v) for k, v in cols.items()}


def read_metrics(path):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (ValueError, OSError):
        return None


def finite_rows(x):
    return x[np.all(np.isfinite(x), axis=1)]


def subsample(x, k, seed=0):
    if x.shape[0] <= k:
        return x
    idx = np.random.default_rng(seed).choice(x.shape[0], size=k, replace=False)
    return x[np.sort(idx)]


def not_available(ax, title, why):
    ax.set_title(title)
    ax.text(0.5, 0.5, "not available\n(%s)" % why, ha="center", va="center",
            transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def panel_scatter(ax, samples, data, data_note):
    dim = samples.shape[1]
    s = subsample(finite_rows(samples), MAX_SCATTER, 1)
    d = subsample(finite_rows(data), MAX_SCATTER, 2) if data is not None else None
    title = "data vs samples" if d is not None else "samples (data not available)"
    if dim > 2:
        title += " (dims 0, 1 of %d)" % dim
    size = 4 if max(len(s), 0 if d is None else len(d)) < 2000 else 2
    if dim == 1:
        bins = 60
        allv = s[:, 0] if d is None else np.concatenate([s[:, 0], d[:, 0]])
        edges = np.linspace(allv.min(), allv.max() + 1e-12, bins + 1) if allv.size else bins
        if d is not None:
            ax.hist(d[:, 0], bins=edges, density=True, alpha=0.5, color="tab:blue",
                    label="data (%d)" % data.shape[0])
        ax.hist(s[:, 0], bins=edges, density=True, alpha=0.5, color="tab:orange",
                label="samples (%d)" % samples.shape[0])
        ax.set_xlabel("x[0]")
        ax.set_ylabel("density")
    else:
        if d is not None:
            ax.scatter(d[:, 0], d[:, 1], s=size, alpha=0.4, color="tab:blue", linewidths=0,
                       label="data (%d)" % data.shape[0])
        ax.scatter(s[:, 0], s[:, 1], s=size, alpha=0.4, color="tab:orange", linewidths=0,
                   label="samples (%d)" % samples.shape[0])
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_aspect("equal", adjustable="datalim")
    if data_note:
        title += "\n" + "\n".join(textwrap.wrap(data_note, 60)[:3])
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8, markerscale=4)


def panel_traj(ax, traj, note=None):
    if traj is None:
        not_available(ax, "trajectories", note or "samples.h5 has no /traj")
        return
    n, steps, dim = traj.shape
    k = min(N_TRAJ, n)
    idx = np.linspace(0, n - 1, k).round().astype(int)
    tr = traj[idx]
    tr = tr[np.all(np.isfinite(tr), axis=(1, 2))]
    if tr.shape[0] == 0:
        not_available(ax, "trajectories", "no finite trajectory")
        return
    if dim == 1:
        t = np.linspace(0.0, 1.0, steps)
        for p in tr:
            ax.plot(t, p[:, 0], lw=0.7, alpha=0.6, color="tab:gray")
        ax.scatter(np.zeros(len(tr)), tr[:, 0, 0], s=10, color="tab:green", zorder=3,
                   label="start (t = 0)")
        ax.scatter(np.ones(len(tr)), tr[:, -1, 0], s=14, marker="x", color="tab:red", zorder=3,
                   label="end (t = 1)")
        ax.set_xlabel("t")
        ax.set_ylabel("x[0]")
    else:
        cmap = plt.get_cmap("viridis")
        for j, p in enumerate(tr):
            ax.plot(p[:, 0], p[:, 1], lw=0.7, alpha=0.6, color=cmap(j / max(1, len(tr) - 1)))
        ax.scatter(tr[:, 0, 0], tr[:, 0, 1], s=10, color="tab:green", zorder=3,
                   label="start (t = 0)")
        ax.scatter(tr[:, -1, 0], tr[:, -1, 1], s=14, marker="x", color="tab:red", zorder=3,
                   label="end (t = 1)")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("%d of %d trajectories, %d time points" % (len(tr), n, steps), fontsize=10)
    ax.legend(loc="best", fontsize=8)


def panel_loss(ax, log):
    if log is None:
        not_available(ax, "training loss", "no usable log.jsonl")
        return
    steps, cols = log
    loss = cols["loss"]
    ok = np.isfinite(loss)
    ax.plot(steps[ok], loss[ok], lw=1.0, color="tab:blue", marker="." if ok.sum() < 30 else None,
            label="loss")
    for k, style, color in (("recon", "--", "tab:green"), ("kl", ":", "tab:orange")):
        v = cols[k]
        if np.any(np.isfinite(v)) and not np.allclose(v[np.isfinite(v)], loss[np.isfinite(v)]):
            ax.plot(steps, v, style, lw=0.9, color=color, label=k)
    shown = np.concatenate([c[np.isfinite(c)] for c in cols.values()])
    if shown.size and np.all(shown > 0) and shown.max() > 20 * shown.min():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    last = loss[ok][-1] if np.any(ok) else math.nan
    ax.set_title("training loss (last %.4g at step %d)" % (last, int(steps[-1])), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def fmt_num(v):
    try:
        return "%.4g" % float(v)
    except (TypeError, ValueError):
        return str(v)


def title_text(run_dir, metrics, attrs):
    parts = [os.path.basename(os.path.normpath(run_dir)) or run_dir]
    if metrics:
        w2 = metrics.get("w2")
        if w2 is not None:
            s = "W2 = %s" % fmt_num(w2)
            floor = metrics.get("w2_floor")
            try:
                if floor is not None and float(floor) > 0:
                    s += " (floor %s, W2/floor = %.2f)" % (fmt_num(floor), float(w2) / float(floor))
            except (TypeError, ValueError):
                pass
            parts.append(s)
        extra = ["%s = %s" % (k, fmt_num(metrics[k])) for k in ("w1", "mmd2_rbf", "energy")
                 if k in metrics]
        if extra:
            parts.append(", ".join(extra))
        if "n_a" in metrics and "n_b" in metrics:
            parts.append("n = %s vs %s" % (metrics["n_a"], metrics["n_b"]))
    else:
        parts.append("metrics.json not available")
    line2 = []
    for k, v in sorted(attrs.items()):
        v = np.asarray(v)
        if v.size == 1 and v.dtype.kind in "biufSUO":
            val = v.item()
            if isinstance(val, bytes):
                val = val.decode(errors="replace")
            text = fmt_num(val) if not isinstance(val, str) else val
            if len(text) <= 24:
                line2.append("%s=%s" % (k, text))
    text = "   ".join(parts)
    if line2:
        text += "\n" + "  ".join(line2[:8])
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description="plot a calmflow run directory into one PNG")
    ap.add_argument("run_dir", help="run directory holding samples.h5 (and optionally "
                                    "data.h5, log.jsonl, metrics.json)")
    ap.add_argument("-o", "--out", help="output PNG (default RUN_DIR/samples.png)")
    ap.add_argument("--data", help="target data HDF5 with /x (default RUN_DIR/data.h5)")
    args = ap.parse_args(argv)

    run = args.run_dir
    try:
        if not os.path.isdir(run):
            raise RunError("run directory not found: %s" % run)
        samples, traj, attrs = read_h5_points(os.path.join(run, "samples.h5"), "samples.h5",
                                              required=True)
        data_path = args.data or os.path.join(run, "data.h5")
        data, data_err = read_optional_data(data_path)
        if args.data and data is None and data_err is None:
            data_err = "--data file not found: %s" % args.data
        if data is not None and data.shape[1] != samples.shape[1]:
            data_err = "data has D = %d, samples D = %d" % (data.shape[1], samples.shape[1])
            data = None
        if finite_rows(samples).shape[0] == 0:
            raise RunError("samples.h5 /x has no finite row")
        log = read_log(os.path.join(run, "log.jsonl"))
        metrics = read_metrics(os.path.join(run, "metrics.json"))

        fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
        panel_scatter(axes[0], samples, data, data_err)
        panel_traj(axes[1], traj, attrs.pop("_traj_note", None))
        panel_loss(axes[2], log)
        fig.suptitle(title_text(run, metrics, attrs), fontsize=11)
        fig.tight_layout()
        out = args.out or os.path.join(run, "samples.png")
        try:
            fig.savefig(out, dpi=110)
        except OSError as e:
            raise RunError("cannot write %s: %s" % (out, e))
        plt.close(fig)
    except RunError as e:
        print("plot_samples: error: %s" % e, file=sys.stderr)
        return 1
    print("plot_samples: wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
