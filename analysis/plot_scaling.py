#!/usr/bin/python3
"""plot_scaling.py: the layout benchmark (bench/layouts.sh) as one PNG.

Usage: analysis/plot_scaling.py [LAYOUTS.json] [-o OUT.png]

Reads LAYOUTS.json (default docs/bench/layouts.json): "rows", one per (config, layout), with
layout, ranks, oversubscribed, tokens_per_s, speedup, peak_rss, state_bytes_max and
optionally model_rss (peak RSS over the library baseline) and errors; "meta" (date, cpu,
cores) for the title. Writes OUT.png (default docs/scaling.png) with two panels per config
("tokens" and "params", others are skipped): tokens/s by layout (bars coloured by the number
of ranks, hatched when oversubscribed, the speed-up over 1 rank written on each bar) and the
per-rank memory by layout (state = parameters + gradients + AdamW moments, peak RSS, and RSS
over the baseline when present; a dashed line at 0.6x the 1-rank value). A failed row is drawn
as an empty slot marked "failed". A missing or malformed file prints one error line on stderr
and exits with status 1.
"""
import argparse
import json
import os
import sys

try:
    import matplotlib
except ImportError as e:  # scripts/install-deps.sh installs it
    print("plot_scaling: error: %s (install python3-matplotlib)" % e, file=sys.stderr)
    sys.exit(1)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MiB = 1048576.0
CONFIGS = ("tokens", "params")
RANK_COLOURS = {1: "#4c72b0", 2: "#55a868", 4: "#dd8452"}


class PlotError(Exception):
    """A problem with the input: reported as one line, exit status 1."""


def read_rows(path):
    """(rows, meta) of a layouts.json; PlotError when it cannot be used."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise PlotError("layouts file not found: %s (run bench/layouts.sh)" % path)
    except (OSError, ValueError) as e:
        raise PlotError("cannot read %s: %s" % (path, e))
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise PlotError("%s has no \"rows\" list" % path)
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "config" not in r or "layout" not in r or "ranks" not in r:
            raise PlotError("%s: row %d lacks config, layout or ranks" % (path, i))
    if not any(r["config"] in CONFIGS for r in rows):
        raise PlotError("%s has no rows of config %s" % (path, " or ".join(CONFIGS)))
    return rows, doc.get("meta", {})


def ok(r):
    return isinstance(r.get("tokens_per_s"), (int, float)) and r["tokens_per_s"] > 0


def mark_failed(ax, xs, rows):
    for x, r in zip(xs, rows):
        if not ok(r):
            ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8,
                    color="#c44e52")


def panel_speed(ax, cfg, rows):
    xs = list(range(len(rows)))
    for x, r in zip(xs, rows):
        if not ok(r):
            continue
        ax.bar(x, r["tokens_per_s"], color=RANK_COLOURS.get(r["ranks"], "#8172b3"),
               hatch="//" if r.get("oversubscribed") else None, edgecolor="white")
        if r.get("speedup"):
            ax.text(x, r["tokens_per_s"], "%.2fx" % r["speedup"], ha="center", va="bottom",
                    fontsize=7)
    mark_failed(ax, xs, rows)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["layout"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("tokens/s (median)")
    ax.set_title("%s: throughput by layout" % cfg, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in RANK_COLOURS.values()]
    labels = ["%d rank%s" % (k, "s" if k > 1 else "") for k in RANK_COLOURS]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#dddddd", hatch="//",
                                 edgecolor="white"))
    labels.append("oversubscribed")
    top = max([r["tokens_per_s"] for r in rows if ok(r)] or [1.0])
    ax.set_ylim(0, 1.3 * top)
    ax.legend(handles, labels, fontsize=7, loc="upper right", ncol=2)


def panel_memory(ax, cfg, rows):
    xs = list(range(len(rows)))
    series = [("state_bytes_max", "state (params, grads, AdamW)", "#4c72b0"),
              ("peak_rss", "peak RSS", "#bbbbbb"),
              ("model_rss", "RSS over baseline", "#55a868")]
    series = [s for s in series if any(ok(r) and isinstance(r.get(s[0]), (int, float))
                                       for r in rows)]
    w = 0.8 / max(len(series), 1)
    one = next((r for r in rows if r["layout"] == "1" and ok(r)), None)
    for k, (key, label, colour) in enumerate(series):
        px = [x - 0.4 + w * (k + 0.5) for x, r in zip(xs, rows)
              if ok(r) and isinstance(r.get(key), (int, float))]
        py = [r[key] / MiB for r in rows if ok(r) and isinstance(r.get(key), (int, float))]
        ax.bar(px, py, width=w, color=colour, label=label)
        if one is not None and key == "state_bytes_max" and one.get(key):
            ax.axhline(0.6 * one[key] / MiB, color=colour, ls="--", lw=0.8,
                       label="0.6x 1-rank state")
    mark_failed(ax, xs, rows)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["layout"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("MiB per rank (max over ranks)")
    ax.set_title("%s: per-rank memory by layout" % cfg, fontsize=10)
    top = max([r[s[0]] / MiB for r in rows for s in series
               if ok(r) and isinstance(r.get(s[0]), (int, float))] or [1.0])
    ax.set_ylim(0, 1.35 * top)
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def main(argv=None):
    ap = argparse.ArgumentParser(description="plot bench/layouts.sh results into one PNG")
    ap.add_argument("layouts", nargs="?", default="docs/bench/layouts.json",
                    help="layouts.json written by bench/layouts.sh (default %(default)s)")
    ap.add_argument("-o", "--out", default="docs/scaling.png",
                    help="output PNG (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        rows, meta = read_rows(args.layouts)
        cfgs = [c for c in CONFIGS if any(r["config"] == c for r in rows)]
        fig, axes = plt.subplots(2, len(cfgs), figsize=(6.5 * len(cfgs), 9), squeeze=False)
        for j, cfg in enumerate(cfgs):
            crow = [r for r in rows if r["config"] == cfg]
            panel_speed(axes[0][j], cfg, crow)
            panel_memory(axes[1][j], cfg, crow)
        fig.suptitle("calmflow layouts (bench/layouts.sh) %s, %s, %s cores" % (
            meta.get("date", "?"), meta.get("cpu", "?"), meta.get("cores", "?")), fontsize=11)
        fig.tight_layout()
        try:
            fig.savefig(args.out, dpi=110)
        except OSError as e:
            raise PlotError("cannot write %s: %s" % (args.out, e))
        plt.close(fig)
    except PlotError as e:
        print("plot_scaling: error: %s" % e, file=sys.stderr)
        return 1
    print("plot_scaling: wrote %s" % os.path.normpath(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
