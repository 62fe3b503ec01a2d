#!/usr/bin/python3
"""plot_scaling_study.py: strong and weak scaling efficiency against ranks, from the results
table of jobs/scaling.sbatch.

Usage: analysis/plot_scaling_study.py RESULTS.jsonl [MORE.jsonl ...] [-o OUT.png] [--study NAME]

Reads the rows (one JSON object per line; see jobs/scaling_row.py) and keeps those that ran
(exit_code 0, tokens_per_s known), of one study when --study is given. Rows with the same
study, mode, layout and ranks are repeats: their median tokens/s is used. A curve is a study,
a mode and a model-parallel layout (TP, PP, CP fixed, data parallel growing with the ranks).
The baseline of a study and mode is its run at the fewest ranks (the TP1 PP1 CP1 layout when
there are several), and

    efficiency(r) = (tokens/s at r ranks / r) / (baseline tokens/s / baseline ranks)

which is the speed-up over ideal for strong scaling (fixed global batch) and the per-rank
throughput kept for weak scaling (batch growing with the ranks): 1 is perfect for both.
Writes OUT.png (default: next to the first table, scaling_study.png) with a strong and a weak
panel (a panel with no rows says so), and prints one line per point. A missing or unusable
table prints one error line on stderr and exits with status 1.
"""
import argparse
import json
import os
import statistics
import sys

try:
    import matplotlib
except ImportError as e:  # scripts/install-deps.sh installs it
    print("plot_scaling_study: error: %s (install python3-matplotlib)" % e, file=sys.stderr)
    sys.exit(1)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = ("strong", "weak")


class PlotError(Exception):
    """A problem with the input: reported as one line, exit status 1."""


def read_rows(paths, study):
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise PlotError("results table not found: %s (run jobs/scaling.sbatch)" % path)
        except OSError as e:
            raise PlotError("cannot read %s: %s" % (path, e))
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:
                raise PlotError("%s:%d is not a JSON object" % (path, i))
            if not isinstance(r, dict) or r.get("mode") not in MODES:
                raise PlotError("%s:%d lacks a mode (strong or weak)" % (path, i))
            if r.get("exit_code", 0) != 0 or not r.get("tokens_per_s") or not r.get("ranks"):
                continue
            if study is not None and r.get("study") != study:
                continue
            rows.append(r)
    if not rows:
        raise PlotError("no finished runs in %s%s" % (", ".join(paths),
                                                      " of study %s" % study if study else ""))
    return rows


def par_key(r):
    return (int(r.get("tp") or 1), int(r.get("pp") or 1), int(r.get("cp") or 1))


def efficiencies(rows):
    """{(study, mode): {(tp, pp, cp): [(ranks, tokens/s, efficiency, comm_share)]}}"""
    med = {}
    for r in rows:
        k = (r.get("study") or "", r["mode"], par_key(r), int(r["ranks"]))
        med.setdefault(k, []).append(r)
    points = {}
    for (study, mode, par, ranks), rs in med.items():
        tps = statistics.median(float(x["tokens_per_s"]) for x in rs)
        shares = [float(x["comm_share"]) for x in rs if x.get("comm_share") is not None]
        share = statistics.median(shares) if shares else None
        points.setdefault((study, mode), {}).setdefault(par, []).append([ranks, tps, None, share])
    for curves in points.values():
        rmin = min(p[0] for pts in curves.values() for p in pts)
        at_min = {par: p for par, pts in curves.items() for p in pts if p[0] == rmin}
        base = at_min.get((1, 1, 1)) or at_min[min(at_min)]
        for pts in curves.values():
            pts.sort()
            for p in pts:
                p[2] = (p[1] / p[0]) / (base[1] / base[0])
    return points


def label(study, par, many_studies):
    s = "TP%d PP%d CP%d (DP = rest)" % par if par != (1, 1, 1) else "data parallel"
    return "%s: %s" % (study, s) if many_studies else s


def plot(points, out):
    studies = sorted({s for s, _ in points})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, mode in zip(axes, MODES):
        keys = [k for k in points if k[1] == mode]
        all_ranks = sorted({p[0] for k in keys for pts in points[k].values() for p in pts})
        for k in sorted(keys):
            for par, pts in sorted(points[k].items()):
                xs, ys = [p[0] for p in pts], [p[2] for p in pts]
                ax.plot(xs, ys, marker="o", label=label(k[0], par, len(studies) > 1))
                for p in pts:
                    note = "%.2f" % p[2]
                    if p[3] is not None:
                        note += "\ncomm %.0f%%" % (100 * p[3])
                    ax.annotate(note, (p[0], p[2]), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="ideal")
        ax.set_title("%s scaling (%s)" % (mode, "global batch fixed" if mode == "strong"
                                           else "batch per rank fixed"))
        ax.set_xlabel("ranks")
        ax.set_ylabel("efficiency")
        if all_ranks:
            ax.set_xscale("log", base=2)
            ax.set_xticks(all_ranks)
            ax.set_xticklabels([str(r) for r in all_ranks])
            ax.set_xlim(all_ranks[0] / 1.5, all_ranks[-1] * 1.5)
            top = max(p[2] for k in keys for pts in points[k].values() for p in pts)
            ax.set_ylim(0, max(1.2, top * 1.15))
            ax.legend(fontsize=8, loc="lower left")
        else:
            ax.text(0.5, 0.5, "no %s-scaling rows" % mode, ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_ylim(0, 1.2)
        ax.grid(alpha=0.3)
    fig.suptitle("calmflow scaling study: tokens/s per rank over the baseline's")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tables", nargs="+", help="results JSONL of jobs/scaling.sbatch")
    p.add_argument("-o", "--out", help="output PNG (default: scaling_study.png next to the first table)")
    p.add_argument("--study", help="only rows of this study")
    a = p.parse_args()
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.tables[0])), "scaling_study.png")
    try:
        points = efficiencies(read_rows(a.tables, a.study))
    except PlotError as e:
        print("plot_scaling_study: error: %s" % e, file=sys.stderr)
        return 1
    for (study, mode), curves in sorted(points.items()):
        for par, pts in sorted(curves.items()):
            for ranks, tps, eff, share in pts:
                print("%s %s tp%d.pp%d.cp%d ranks %d: %.0f tokens/s, efficiency %.3f%s" % (
                    study, mode, par[0], par[1], par[2], ranks, tps, eff,
                    "" if share is None else ", comm share %.3f" % share))
    try:
        plot(points, out)
    except OSError as e:
        print("plot_scaling_study: error: cannot write %s: %s" % (out, e), file=sys.stderr)
        return 1
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
