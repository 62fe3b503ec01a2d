#!/usr/bin/python3
"""sample_report.py: the report of bench/sample.sh (run by it; not meant to be run alone).

Reads the index of runs the script wrote (N, mode, batch, ranks, samples, rep, attempt, exit
status, wall time, run prefix, other processes' load, the case's set and layout options with
their tp / pp / cp degrees), each run's <out>.json (rollout.h statistics: seconds,
samples_per_s, busy_min, busy_max, coord_seconds, batches) and the training summaries, and writes
  --json  every run plus one median row per (set, N, mode, batch, ranks, layout) and the two
          targets over the ordinary cases (KV / recompute >= 5x at N 64; coordinator
          share < 5%);
  --md    the table of the ordinary cases and the target lines, then the table of the layout
          cases (set "layouts"), each row's speed-up against the 1-rank row of its N, mode and
          batch.
Layout names: the degrees above 1 among dp, tp, pp, cp joined with " x " (dp = ranks /
(tp pp cp)), "1" for one rank: a case without layout options at 2 ranks is dp2.
Tokens, per sample (one trajectory of N points, S spatial tokens each):
  useful tokens/s    = samples * N * S / seconds: the tokens of the finished trajectories;
  processed tokens/s = tokens the model is fed per second: with the KV cache each rollout step
                       t = 0 .. N-2 feeds only the P*S tokens of the newest point, (N-1) P S per
                       sequence; recomputing feeds the whole prefix, (t+1) P S at step t,
                       N (N-1) / 2 P S per sequence. Counted over batches x B sequences, so a
                       padded last batch would count (the script avoids one).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

DISTURBED = 0.2


def opts(s):
    tok = s.split()
    return {tok[i].lstrip("-"): tok[i + 1] for i in range(0, len(tok) - 1, 2)}


def error_line(path):
    """The most telling line of a failed run's output."""
    try:
        lines = [x.strip() for x in open(path, errors="replace") if x.strip()]
    except OSError:
        return "no output"
    for x in reversed(lines):
        if "error" in x.lower():
            return x[:300]
    return lines[-1][:300] if lines else "no output"


def layout_name(ranks, tp, pp, cp, opts):
    """dp2 x pp2 and the like; other (non-layout) options of the case are appended."""
    dp = ranks // (tp * pp * cp) if ranks % (tp * pp * cp) == 0 else 0
    parts = ["%s%s" % (a, d if d else "?") for a, d in
             (("dp", dp), ("tp", tp), ("pp", pp), ("cp", cp)) if d != 1]
    name = " x ".join(parts) or "1"
    tok = [] if opts == "-" else opts.split(",")
    extra = [" ".join(tok[i:i + 2]) for i in range(0, len(tok), 2)
             if tok[i] not in ("-par_tp", "-par_pp", "-par_cp")]
    return name + "".join(" " + e for e in extra)


def med(rs, key):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else None


def main():
    ap = argparse.ArgumentParser()
    for a in ("--index", "--model", "--json", "--md"):
        ap.add_argument(a, required=True)
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--cores", type=int, required=True)
    ap.add_argument("--reps", type=int, required=True)
    ap.add_argument("--disturbed", type=float, default=DISTURBED)
    o = ap.parse_args()

    mo = opts(o.model)
    P, S = int(mo["flow_trajectories"]), int(mo["flow_spatial_tokens"])
    H, L, heads = int(mo["net_hidden"]), int(mo["net_layers"]), int(mo["net_heads"])
    train = {}
    for path in o.train:
        n = int(os.path.basename(path).split("-n")[1].split(".")[0])
        train[n] = json.load(open(path))

    runs = []
    for line in open(o.index):
        f = line.rstrip("\n").split("\t")
        r = {"N": int(f[0]), "mode": f[1], "batch": int(f[2]), "ranks": int(f[3]),
             "samples": int(f[4]), "rep": int(f[5]), "attempt": int(f[6]), "rc": int(f[7]),
             "wall_s": float(f[8]), "busy_cores_before": float(f[10]),
             "others_cores_during": float(f[11]), "error": None, "stats": None,
             "set": "cases", "layout_options": "-", "tp": 1, "pp": 1, "cp": 1}
        if len(f) >= 17:
            r["set"], r["layout_options"] = f[12], f[13]
            r["tp"], r["pp"], r["cp"] = int(f[14]), int(f[15]), int(f[16])
        r["layout"] = layout_name(r["ranks"], r["tp"], r["pp"], r["cp"], r["layout_options"])
        r["disturbed"] = r["others_cores_during"] > o.disturbed
        jp = f[9] + ".h5.json"
        if r["rc"] == 0 and os.path.isfile(jp):
            st = json.load(open(jp))
            r["stats"] = st
            N, secs = r["N"], st["seconds"]
            Ns = -(-st["samples"] // P)
            B = min(r["batch"], Ns)
            per_seq = (N - 1) * P * S if r["mode"] == "kv" else N * (N - 1) // 2 * P * S
            r["samples_per_s"] = st["samples_per_s"]
            r["useful_tokens_per_s"] = st["samples"] * N * S / secs
            r["processed_tokens_per_s"] = st["batches"] * B * per_seq / secs
            r["coord_share"] = st["coord_seconds"] / secs if secs > 0 else 0.0
            r["busy_min"], r["busy_max"] = st["busy_min"], st["busy_max"]
            r["seconds"] = secs
        else:
            r["error"] = ("exit %d: " % r["rc"]) + error_line(f[9] + ".out")
            if r["rc"] in (124, 137):
                r["error"] = "timed out: " + error_line(f[9] + ".out")
        runs.append(r)

    def rkey(r):
        return (r["set"], r["N"], r["mode"], r["batch"], r["ranks"], r["layout_options"])

    keys = []
    for r in runs:
        if rkey(r) not in keys:
            keys.append(rkey(r))
    rows = []
    for k in keys:
        rs = [r for r in runs if rkey(r) == k]
        good = [r for r in rs if r["stats"] is not None]
        quiet = [r for r in good if not r["disturbed"]]
        use = quiet or good
        row = {"set": k[0], "N": k[1], "mode": k[2], "batch": k[3], "ranks": k[4],
               "layout": rs[0]["layout"], "layout_options": k[5], "tp": rs[0]["tp"],
               "pp": rs[0]["pp"], "cp": rs[0]["cp"],
               "oversubscribed": k[4] > o.cores, "samples": rs[0]["samples"], "runs": len(rs),
               "runs_ok": len(good), "runs_used": len(use), "runs_quiet": len(quiet),
               "all_disturbed": bool(good) and not quiet,
               "errors": [r["error"] for r in rs if r["error"]]}
        for key in ("seconds", "samples_per_s", "useful_tokens_per_s", "processed_tokens_per_s",
                    "busy_min", "busy_max", "coord_share"):
            row[key] = med(use, key)
        row["coord_share_max"] = max((r["coord_share"] for r in use), default=None)
        row["samples_per_s_best"] = max((r["samples_per_s"] for r in use), default=None)
        row["batches"] = use[0]["stats"]["batches"] if use else None
        rows.append(row)

    def find_one(r):
        """The 1-rank, no-layout row of r's N, mode and batch: of r's own set if it has one."""
        ones = [x for x in rows if (x["N"], x["mode"], x["batch"], x["ranks"]) ==
                (r["N"], r["mode"], r["batch"], 1) and x["layout_options"] == "-" and
                x["samples_per_s"]]
        ones.sort(key=lambda x: x["set"] != r["set"])
        return ones[0] if ones else None

    for r in rows:
        one = find_one(r)
        r["speedup"] = r["samples_per_s"] / one["samples_per_s"] if (
            one and r["samples_per_s"]) else None
        r["kv_over_recompute"] = None
        if r["mode"] == "kv" and r["batch"] == 64 and r["samples_per_s"]:
            rc = [x for x in rows if x["N"] == r["N"] and x["mode"] == "rc" and
                  x["ranks"] == r["ranks"] and x["set"] == r["set"] and
                  x["layout_options"] == r["layout_options"] and x["samples_per_s"]]
            if rc:
                r["kv_over_recompute"] = r["samples_per_s"] / rc[0]["samples_per_s"]
                r["recompute_batch"] = rc[0]["batch"]

    targets = {}
    # the targets are over the ordinary cases without layout options (as before layouts)
    plain = [r for r in rows if r["set"] == "cases" and r["layout_options"] == "-"]
    big = max((r["N"] for r in plain), default=0)
    ratios = {r["ranks"]: r["kv_over_recompute"] for r in plain
              if r["N"] == big and r["mode"] == "kv" and r["batch"] == 64 and
              r["kv_over_recompute"]}
    if ratios:
        fair = [v for w, v in ratios.items() if w <= o.cores]
        targets["kv_over_recompute_N%d" % big] = {
            "by_ranks": ratios, "target": ">= 5", "met": bool(fair) and min(fair) >= 5}
    default = [r for r in plain if r["batch"] == 64 and r["coord_share"] is not None]
    small = [r for r in plain if r["batch"] != 64 and r["mode"] == "kv" and
             r["coord_share"] is not None]
    if default:
        worst = max(default, key=lambda r: r["coord_share"])
        fair = [r for r in default if not r["oversubscribed"]]
        targets["coord_share_batch64"] = {
            "max": worst["coord_share"], "max_row": [worst["N"], worst["mode"], worst["ranks"]],
            "max_not_oversubscribed": max((r["coord_share"] for r in fair), default=None),
            "target": "< 0.05", "met": all(r["coord_share"] < 0.05 for r in default)}
    if small:
        worst = max(small, key=lambda r: r["coord_share"])
        targets["coord_share_small_batch"] = {
            "max": worst["coord_share"], "max_row": [worst["N"], worst["mode"], worst["batch"],
                                                     worst["ranks"]],
            "target": "< 0.05", "met": all(r["coord_share"] < 0.05 for r in small)}

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    busy = sorted(r["others_cores_during"] for r in runs)
    nparams = {n: int(round(t["state_bytes_max"] / 16)) for n, t in train.items()}
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu or platform.processor(),
            "cores": o.cores, "reps": o.reps, "git": commit, "git_dirty": dirty,
            "model": {"P": P, "S": S, "H": H, "layers": L, "heads": heads, "D": 2,
                      "head": "gauss", "N": sorted(train), "options": o.model,
                      "n_params": nparams, "train_steps": {n: t["steps"] for n, t in
                                                           train.items()}},
            "others_cores_during_runs": {"median": statistics.median(busy) if busy else 0,
                                         "max": busy[-1] if busy else 0,
                                         "disturbed": sum(b > o.disturbed for b in busy),
                                         "retried": sum(r["attempt"] > 1 for r in runs),
                                         "rows_all_disturbed": sum(r["all_disturbed"]
                                                                   for r in rows),
                                         "threshold": o.disturbed},
            "units": "seconds = the rollout's wall time on rank 0 (model loading and MPI start "
                     "left out); useful tokens/s = samples N S / s; processed tokens/s = "
                     "tokens fed to the model per second: (N-1) P S per sequence with the KV "
                     "cache, N (N-1) / 2 P S recomputing; coord share = coord_seconds / "
                     "seconds; medians over the undisturbed runs"}
    with open(o.json, "w") as f:
        json.dump({"meta": meta, "rows": rows, "targets": targets, "runs": runs}, f, indent=1)
        f.write("\n")

    md = []
    md.append("Sampling benchmark (`bench/sample.sh`), %s, %s, %d cores, %d runs per row "
              "(medians), commit %s%s. Models: P %d, S %d, H %d, %d layers, %d heads, D 2, gauss "
              "head, %s parameters, N %s (trained %s steps; speed does not depend on quality). "
              "Other processes used a median %.2f (max %.2f) cores during a run; %d of %d runs "
              "were disturbed (> %.2f cores): repeated while the retry budget lasted (%d "
              "repeats) and left out of a row's median when it has an undisturbed run." % (
                  meta["date"], meta["cpu"], o.cores, o.reps, commit,
                  " + local changes" if dirty else "", P, S, H, L, heads,
                  " / ".join("{:,}".format(nparams[n]) for n in sorted(nparams)),
                  " and ".join(str(n) for n in sorted(train)),
                  "/".join(str(t["steps"]) for _, t in sorted(train.items())),
                  meta["others_cores_during_runs"]["median"],
                  meta["others_cores_during_runs"]["max"],
                  meta["others_cores_during_runs"]["disturbed"], len(runs), o.disturbed,
                  meta["others_cores_during_runs"]["retried"]))
    cases = [r for r in rows if r["set"] == "cases"]
    lays = [r for r in rows if r["set"] == "layouts"]

    def ranks_cell(r):
        return "%d (oversubscribed)" % r["ranks"] if r["oversubscribed"] else str(r["ranks"])

    def mode_cell(r):
        return "KV cache" if r["mode"] == "kv" else "recompute"

    def note_cell(r):
        note = ""
        if r["runs_ok"] < r["runs"]:
            note += " (%d of %d runs failed)" % (r["runs"] - r["runs_ok"], r["runs"])
        if r["all_disturbed"]:
            note += " (every run disturbed)"
        return note

    if cases:
        md.append("")
        md.append("| N | mode | batch | ranks | layout | samples | s | samples/s | useful "
                  "tokens/s | processed tokens/s | speed-up vs 1 rank | KV / recompute | busy "
                  "min-max | coord share |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in cases:
        if not r["samples_per_s"]:
            md.append("| %d | %s | %d | %s | %s | %d | failed: %s | | | | | | | |" % (
                r["N"], mode_cell(r), r["batch"], ranks_cell(r), r["layout"], r["samples"],
                r["errors"][0].replace("|", "/") if r["errors"] else "?"))
            continue
        ratio = "%.1fx" % r["kv_over_recompute"] if r["kv_over_recompute"] else ""
        md.append("| %d | %s | %d | %s | %s | %d | %.2f | %.1f%s | %.0f | %.0f | %s | %s | "
                  "%.0f-%.0f%% | %.2f%% |" % (
                      r["N"], mode_cell(r), r["batch"], ranks_cell(r), r["layout"], r["samples"],
                      r["seconds"], r["samples_per_s"], note_cell(r), r["useful_tokens_per_s"],
                      r["processed_tokens_per_s"],
                      "%.2fx" % r["speedup"] if r["speedup"] else "", ratio,
                      100 * r["busy_min"], 100 * r["busy_max"], 100 * r["coord_share"]))
    if cases:
        md.append("")
        md.append("s: the rollout's wall time (rank 0; model loading and MPI start-up left "
                  "out). Layout: dpK = K data-parallel replicas (every rank a whole model), "
                  "tp / pp / cp = tensor / pipeline / context parallel ranks per replica. "
                  "Useful tokens/s = samples x N x S / s (the tokens of the finished "
                  "trajectories); processed tokens/s = the tokens fed to the model per second: "
                  "with the KV cache (N-1) P S per sequence (each step only the newest point's "
                  "P S tokens), recomputing N (N-1) / 2 x P S (the whole prefix every step). "
                  "KV / recompute: samples/s of the KV cache row (batch 64) over the recompute "
                  "row of the same N, ranks and layout. Busy: fraction of the rollout's wall "
                  "time the least / most busy rank spent computing. Coord share: rank 0's time "
                  "serving the queue, reordering and writing the samples file (coord_seconds) "
                  "over the wall time.")
        md.append("")
    for name, t in targets.items():
        if name.startswith("kv_over"):
            md.append("- KV cache over recompute at N %d: %s (target >= 5x: %s)." % (
                big, ", ".join("%.1fx at %d rank%s" % (v, w, "s" if w > 1 else "")
                               for w, v in sorted(t["by_ranks"].items())),
                "met" if t["met"] else "NOT met"))
        elif name == "coord_share_batch64":
            md.append("- Coordinator share at batch 64: at most %.2f%% (N %d, %s, %d ranks); "
                      "target < 5%%: %s." % (100 * t["max"], t["max_row"][0],
                                             "KV cache" if t["max_row"][1] == "kv"
                                             else "recompute", t["max_row"][2],
                                             "met" if t["met"] else "NOT met"))
        elif name == "coord_share_small_batch":
            md.append("- Coordinator share at batch %d (tiny batches): at most %.2f%% (N %d, "
                      "%d ranks); under 5%%: %s." % (t["max_row"][2], 100 * t["max"],
                                                     t["max_row"][0], t["max_row"][3],
                                                     "yes" if t["met"] else "NO"))
    for r in cases:
        if not r["samples_per_s"]:
            md.append("- N %d %s batch %d, %d ranks (%s) failed: %s" % (
                r["N"], r["mode"], r["batch"], r["ranks"], r["layout"],
                r["errors"][0] if r["errors"] else "?"))
    if lays:
        md.append("")
        md.append("Model-parallel layouts: one model replica split over tensor (tp), pipeline "
                  "(pp) or context (cp) parallel ranks, against data-parallel replicas (dp).")
        md.append("")
        md.append("| N | mode | batch | ranks | layout | samples | s | samples/s | speed-up vs 1 "
                  "rank | busy min-max | coord share | undisturbed runs |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in lays:
        if not r["samples_per_s"]:
            md.append("| %d | %s | %d | %s | %s | %d | failed: %s | | | | | %d of %d |" % (
                r["N"], mode_cell(r), r["batch"], ranks_cell(r), r["layout"], r["samples"],
                r["errors"][0].replace("|", "/") if r["errors"] else "?", r["runs_quiet"],
                r["runs"]))
            continue
        md.append("| %d | %s | %d | %s | %s | %d | %.2f | %.1f%s | %s | %.0f-%.0f%% | %.2f%% | "
                  "%d of %d |" % (
                      r["N"], mode_cell(r), r["batch"], ranks_cell(r), r["layout"], r["samples"],
                      r["seconds"], r["samples_per_s"], note_cell(r),
                      "%.2fx" % r["speedup"] if r["speedup"] else "",
                      100 * r["busy_min"], 100 * r["busy_max"], 100 * r["coord_share"],
                      r["runs_quiet"], r["runs"]))
    if lays:
        md.append("")
        md.append("s: the rollout's wall time (rank 0; model loading and MPI start-up left "
                  "out). Layout: dpK = K replicas each holding the whole model; tpK, ppK, cpK = "
                  "one replica split over K tensor / pipeline / context parallel ranks (pp "
                  "keeps pp micro-batches of a batch in flight); dp2 x pp2 = two replicas of "
                  "two pipeline stages each. Speed-up: samples/s over the 1-rank row. Busy: "
                  "fraction of the wall time the least / most busy rank spent computing. Coord "
                  "share: rank 0's time serving the queue, reordering and writing the samples "
                  "file over the wall time. Undisturbed runs: runs during which other processes "
                  "used at most %.2f cores (the medians are over these when there are any), "
                  "of all runs of the row, repeats of disturbed runs included." % o.disturbed)
        if any(not r["samples_per_s"] for r in lays):
            md.append("")
        for r in lays:
            if not r["samples_per_s"]:
                md.append("- N %d %s batch %d, %d ranks (%s) failed: %s" % (
                    r["N"], r["mode"], r["batch"], r["ranks"], r["layout"],
                    r["errors"][0] if r["errors"] else "?"))
    with open(o.md, "w") as f:
        f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
