#!/usr/bin/python3
"""layouts_report.py: the report of bench/layouts.sh (run by it; not meant to be run alone).

Reads the index of runs the script wrote (config, layout, rep, degrees, batch, exit status,
run directory), each run's summary.json, the configs and the sgemm peak, and writes
  --json  every run plus one median row per (config, layout) with the predicted
          communication bytes per step (the formulas of docs/scaling.md), MFU, and the two
          targets (2-rank data-parallel speed-up, per-rank memory of tp2 / pp2);
  --md    the tables (one per config) and the target lines.
Communication figures are payload bytes per rank and step (max over ranks), as
src/parallel/commstat.c counts them: the buffer a rank sends or all-reduces, not wire bytes.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

DIMS = ("dp", "tp", "pp", "cp")
DISTURBED = 0.2  # cores other processes used during a run above which it is left out
MiB = 1048576.0


def parse_args_string(s):
    """Model shapes from the calmflow options of a config (defaults as in options.c)."""
    tok = s.split()
    opt = {tok[i].lstrip("-"): tok[i + 1] for i in range(0, len(tok) - 1, 2)}
    c = {"D": int(opt.get("data_dim", 2)), "N": int(opt.get("flow_time_points", 16)),
         "P": int(opt.get("flow_trajectories", 8)), "S": int(opt.get("flow_spatial_tokens", 1)),
         "H": int(opt.get("net_hidden", 64)), "L": int(opt.get("net_layers", 2)),
         "heads": int(opt.get("net_heads", 2)), "ffn": int(opt.get("net_ffn", 0)),
         "head": opt.get("flow_head", "gauss")}
    if c["ffn"] == 0:
        c["ffn"] = 4 * c["H"]
    return c


def stage_layers(L, pp, s):
    """Layers of pipeline stage s (cf_grid_stage_layers: earlier stages take the extra)."""
    return L // pp + (1 if s < L % pp else 0)


def params_per_rank(c, tp, pp, stage):
    """Parameters held by a rank of pipeline stage `stage` and any tensor rank (model.h)."""
    D, S, H, ffn = c["D"], c["S"], c["H"], c["ffn"]
    SH, I = S * H, max(S * H, D)
    Dout = 2 * D if c["head"] == "gauss" else D
    n = 0
    if stage == 0:  # encoder, replicated over tp
        n += SH * D + SH + SH * SH + SH
    per_layer = (4 * H                              # ln1, ln2
                 + (3 * H * H + 3 * H) // tp        # qkv rows of this rank's heads
                 + H * H // tp + H                  # out columns, replicated bias
                 + (ffn * H + ffn) // tp            # fc1 rows
                 + H * ffn // tp + H)               # fc2 columns, replicated bias
    n += stage_layers(c["L"], pp, stage) * per_layer
    if stage == pp - 1:  # lnf, head, decoder, replicated over tp
        n += 2 * H
        if c["head"] == "vae":
            n += 2 * (2 * H * H + 2 * H)
        n += I * SH + I + I * I + I + Dout * I + Dout
    return n


def predict(c, B, dp, tp, pp, cp):
    """Payload bytes per rank and step, max over ranks (docs/scaling.md):
    B sequences per step, b = B/dp per replica, Tl = T/cp tokens per context rank,
    Ll = L/pp layers per stage, Hl = H/tp."""
    T = c["N"] * c["P"] * c["S"]
    b, Tl, Hl = B / dp, T / cp, c["H"] / tp
    Ll = max(stage_layers(c["L"], pp, s) for s in range(pp))
    act = b * Tl * c["H"]  # one (b, Tl, H) activation
    nloc = max(params_per_rank(c, tp, pp, s) for s in range(pp))
    out = {
        "dp": 4.0 * nloc if dp * cp > 1 else 0.0,
        "tp": 4.0 * 3 * act * Ll if tp > 1 else 0.0,
        "pp": 4.0 * (2 if pp > 2 else 1) * act if pp > 1 else 0.0,
        "cp": 4.0 * (6 * cp - 4) * b * Tl * Hl * Ll if cp > 1 else 0.0,
    }
    return out, nloc


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


def fmt_mib(x):
    return "-" if not x else ("%.3f" % (x / MiB))


def fmt_s(x):
    return "-" if not x else ("%.4f" % x)


def main():
    ap = argparse.ArgumentParser()
    for a in ("--index", "--configs", "--sgemm", "--json", "--md"):
        ap.add_argument(a, required=True)
    ap.add_argument("--cores", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--reps", type=int, required=True)
    ap.add_argument("--sgemm-busy", type=float, default=0.0,
                    help="cores other processes used when the sgemm peak was measured")
    ap.add_argument("--disturbed", type=float, default=DISTURBED,
                    help="cores other processes may use during a run before it is left out")
    o = ap.parse_args()

    configs = {}
    for line in open(o.configs):
        name, paths, args = line.rstrip("\n").split("\t")
        configs[name] = {"args": args, "paths_per_replica": int(paths), **parse_args_string(args)}
    sgemm = json.load(open(o.sgemm))
    peak = sgemm["gflops"] * 1e9

    runs = []
    for line in open(o.index):
        f = line.rstrip("\n").split("\t")
        r = {"config": f[0], "layout": f[1], "rep": int(f[2]), "ranks": int(f[3]),
             "dp": int(f[4]), "tp": int(f[5]), "pp": int(f[6]), "cp": int(f[7]),
             "batch": int(f[8]), "microbatches": int(f[9]), "rc": int(f[10]),
             "wall_s": float(f[11]), "busy_cores_before": float(f[13]),
             "others_cores_during": float(f[14]), "attempt": int(f[15]), "error": None,
             "summary": None}
        r["disturbed"] = r["others_cores_during"] > o.disturbed
        sp = os.path.join(f[12], "summary.json")
        if r["rc"] == 0 and os.path.isfile(sp):
            r["summary"] = json.load(open(sp))
        else:
            r["error"] = ("exit %d: " % r["rc"]) + error_line(f[12] + ".out")
            if r["rc"] == 124:
                r["error"] = "timed out: " + error_line(f[12] + ".out")
        runs.append(r)

    # median rows in the order the layouts ran
    keys = []
    for r in runs:
        if (r["config"], r["layout"]) not in keys:
            keys.append((r["config"], r["layout"]))
    rows = []
    for cfg, lay in keys:
        rs = [r for r in runs if r["config"] == cfg and r["layout"] == lay]
        good = [r for r in rs if r["summary"] is not None]
        quiet = [r for r in good if not r["disturbed"]]
        ok = [r["summary"] for r in (quiet or good)]
        r0 = rs[0]
        c = configs[cfg]
        T = c["N"] * c["P"] * c["S"]
        B = r0["batch"] // c["P"]
        row = {k: r0[k] for k in ("config", "layout", "ranks", "dp", "tp", "pp", "cp", "batch",
                                  "microbatches")}
        row.update({"sequences_per_step": B, "tokens_per_step": B * T,
                    "oversubscribed": r0["ranks"] > o.cores,
                    "cores_used": min(r0["ranks"], o.cores), "reps_ok": len(good),
                    "runs_used": len(ok), "runs_disturbed": sum(r["disturbed"] for r in good),
                    "all_disturbed": bool(good) and not quiet,
                    "reps": len({r["rep"] for r in rs}), "runs": len(rs),
                    "errors": [r["error"] for r in rs if r["error"]]})
        pred, nloc = predict(c, B, r0["dp"], r0["tp"], r0["pp"], r0["cp"])
        row["predicted_bytes_per_step"] = pred
        row["predicted_params_per_rank"] = nloc
        if ok:
            med = lambda f: statistics.median(f(s) for s in ok)  # noqa: E731
            row["tokens_per_s"] = med(lambda s: s["steady_tokens_per_s"])
            row["tokens_per_s_runs"] = [s["steady_tokens_per_s"] for s in ok]
            row["tokens_per_s_best"] = max(row["tokens_per_s_runs"])
            row["others_cores_during_runs"] = [r["others_cores_during"] for r in rs]
            row["flops_per_step"] = ok[0]["flops_per_step"]
            steps_per_s = row["tokens_per_s"] / (B * T)
            row["mfu"] = row["flops_per_step"] * steps_per_s / (row["cores_used"] * peak)
            row["peak_rss"] = med(lambda s: s["peak_rss"])
            row["state_bytes_max"] = med(lambda s: s["state_bytes_max"])
            row["final_loss"] = med(lambda s: s["final_loss"])
            row["comm_bytes_per_step"] = {k: med(lambda s: s["comm_bytes_per_step"][k])
                                          for k in DIMS}
            row["comm_seconds_per_step"] = {k: med(lambda s: s["comm_seconds_per_step"][k])
                                            for k in DIMS}
        rows.append(row)

    def find(cfg, lay):
        for row in rows:
            if row["config"] == cfg and row["layout"] == lay and row.get("tokens_per_s"):
                return row
        return None

    # speed-up over 1 rank; loss against the pure data-parallel run of the same global batch;
    # RSS above the library baseline of the same layout
    for row in rows:
        if not row.get("tokens_per_s"):
            continue
        one = find(row["config"], "1")
        row["speedup"] = row["tokens_per_s"] / one["tokens_per_s"] if one else None
        ref = find(row["config"], "1" if row["dp"] == 1 else "dp%d" % row["dp"])
        if ref and ref is not row and ref.get("final_loss"):
            row["loss_reference"] = ref["layout"]
            row["loss_rel_diff"] = abs(row["final_loss"] - ref["final_loss"]) / abs(
                ref["final_loss"])
        base = find("baseline", row["layout"])
        if base and row["config"] != "baseline":
            row["baseline_rss"] = base["peak_rss"]
            row["model_rss"] = row["peak_rss"] - base["peak_rss"]

    targets = {}
    one, dp2 = find("tokens", "1"), find("tokens", "dp2")
    if one and dp2:
        s = dp2["tokens_per_s"] / one["tokens_per_s"]
        sb = dp2["tokens_per_s_best"] / one["tokens_per_s_best"]
        targets["dp2_speedup"] = {"value": s, "best_of_runs": sb, "target": ">= 1.8",
                                  "met": s >= 1.8, "met_best_of_runs": sb >= 1.8}
    one = find("params", "1")
    for lay in ("tp2", "pp2"):
        r = find("params", lay)
        if not (one and r):
            continue
        t = {"state_ratio": r["state_bytes_max"] / one["state_bytes_max"],
             "rss_ratio": r["peak_rss"] / one["peak_rss"]}
        if r.get("model_rss") and one.get("model_rss"):
            t["model_rss_ratio"] = r["model_rss"] / one["model_rss"]
        t["met_by"] = [k for k in ("state_ratio", "rss_ratio", "model_rss_ratio")
                       if k in t and t[k] <= 0.6]
        targets["%s_memory" % lay] = t

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
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu or platform.processor(),
            "sgemm_busy_cores": o.sgemm_busy,
            "others_cores_during_runs": {"median": statistics.median(busy) if busy else 0,
                                         "max": busy[-1] if busy else 0,
                                         "disturbed": sum(b > o.disturbed for b in busy),
                                         "threshold": o.disturbed},
            "cores": o.cores, "steps": o.steps, "reps": o.reps, "git": commit,
            "git_dirty": dirty, "sgemm": sgemm, "configs": configs,
            "units": "bytes and seconds per rank and step (max over ranks); tokens/s = "
                     "median of steady_tokens_per_s; MFU = flops_per_step * steps/s / "
                     "(min(ranks, cores) * sgemm peak)"}
    with open(o.json, "w") as f:
        json.dump({"meta": meta, "rows": rows, "targets": targets, "runs": runs}, f, indent=1)
        f.write("\n")

    md = []
    md.append("Layout benchmark (`bench/layouts.sh`), %s, %s, %d cores, %d steps x %d runs per "
              "row (medians), commit %s%s. Single-core sgemm peak %.1f GFLOP/s (%dx%dx%d, "
              "OpenBLAS, 1 thread). The machine is shared: other processes used a median %.2f "
              "(max %.2f) cores during a run; %d of %d runs were disturbed (> %.2f cores): "
              "repeated while the retry budget lasted and left out of a row's median when it "
              "has an undisturbed run." % (
                  meta["date"], meta["cpu"], o.cores, o.steps, o.reps, commit,
                  " + local changes" if dirty else "", sgemm["gflops"], sgemm["n"], sgemm["n"],
                  sgemm["n"], meta["others_cores_during_runs"]["median"],
                  meta["others_cores_during_runs"]["max"],
                  meta["others_cores_during_runs"]["disturbed"], len(runs), o.disturbed))
    for cfg in configs:
        crow = [r for r in rows if r["config"] == cfg]
        if not crow or cfg == "baseline":
            continue
        c = configs[cfg]
        md.append("")
        md.append("### %s: N %d, P %d, S %d (T = %d), H %d, %d layers, %d heads, %d paths "
                  "per replica" % (cfg, c["N"], c["P"], c["S"], c["N"] * c["P"] * c["S"], c["H"],
                                   c["L"], c["heads"], c["paths_per_replica"]))
        md.append("")
        md.append("| layout | ranks | paths/step | tokens/s | best | speed-up | MFU | comm s/step "
                  "dp / tp / pp / cp | comm MiB/step measured dp / tp / pp / cp | predicted "
                  "| peak RSS MiB/rank | RSS over baseline | state MiB/rank | loss vs ref |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in crow:
            ranks = "%d (oversubscribed)" % r["ranks"] if r["oversubscribed"] else str(r["ranks"])
            if not r.get("tokens_per_s"):
                md.append("| %s | %s | %d | failed: %s | | | | | | | | | | |" % (
                    r["layout"], ranks, r["batch"], r["errors"][0].replace("|", "/")))
                continue
            meas = r["comm_bytes_per_step"]
            cells = []
            for k in DIMS:
                if k == "cp" and r["cp"] > 1 and not meas["cp"]:
                    cells.append("n/i")
                else:
                    cells.append(fmt_mib(meas[k]))
            pred = " / ".join(fmt_mib(r["predicted_bytes_per_step"][k]) for k in DIMS)
            secs = " / ".join(fmt_s(r["comm_seconds_per_step"][k]) for k in DIMS)
            loss = "ref" if "loss_rel_diff" not in r else "%.1e%s" % (
                r["loss_rel_diff"], " (!)" if r["loss_rel_diff"] > 1e-3 else "")
            if r["layout"] == "1" or (r["tp"] == r["pp"] == r["cp"] == 1):
                loss = "ref"
            mrss = "%.1f" % (r["model_rss"] / MiB) if "model_rss" in r else ""
            note = "" if r["reps_ok"] == r["runs"] else " (%d of %d runs failed)" % (
                r["runs"] - r["reps_ok"], r["runs"])
            if r["all_disturbed"]:
                note += " (every run disturbed)"
            elif r["runs_used"] < r["reps"]:
                note += " (%d undisturbed)" % r["runs_used"]
            md.append("| %s | %s | %d | %.0f%s | %.0f | %.2fx | %.1f%% | %s | %s | %s | %.1f | %s "
                      "| %.2f | %s |" % (
                          r["layout"], ranks, r["batch"], r["tokens_per_s"], note,
                          r["tokens_per_s_best"],
                          r["speedup"] or 0, 100 * r["mfu"], secs, " / ".join(cells), pred,
                          r["peak_rss"] / MiB, mrss, r["state_bytes_max"] / MiB, loss))
    md.append("")
    ni = any(r.get("comm_bytes_per_step") and r["cp"] > 1 and not r["comm_bytes_per_step"]["cp"]
             for r in rows)
    md.append("Tokens/s: median of the undisturbed runs' steady_tokens_per_s (speed-up and "
              "MFU use it); \"best\": the fastest of them.")
    md.append("Comm columns: payload per rank and step, max over ranks (commstat.c: the buffer "
              "sent or all-reduced, not wire bytes)%s. MFU uses min(ranks, %d cores) x the "
              "sgemm peak, so the oversubscribed rows are charged for %d cores. \"RSS over "
              "baseline\": peak RSS minus that of the same layout at H 8 (libraries). \"loss "
              "vs ref\": relative difference of the final loss to the pure data-parallel run of "
              "the same global batch." % (
                  "; \"n/i\": context-parallel traffic not instrumented in this build" if ni
                  else "", o.cores, o.cores))
    md.append("")
    t = targets.get("dp2_speedup")
    if t:
        md.append("- Data parallel, 2 ranks, equal per-rank batch (tokens): %.2fx on the medians, "
                  "%.2fx on the best runs (target >= 1.8x: %s on the medians, %s on the best "
                  "runs)." % (t["value"], t["best_of_runs"], "met" if t["met"] else "NOT met",
                              "met" if t["met_best_of_runs"] else "NOT met"))
    for lay in ("tp2", "pp2"):
        t = targets.get("%s_memory" % lay)
        if not t:
            continue
        extra = (", RSS over baseline %.2fx" % t["model_rss_ratio"]
                 if "model_rss_ratio" in t else "")
        md.append("- %s per-rank memory vs 1 rank (params): state %.2fx, peak RSS %.2fx%s "
                  "(target <= 0.6x met by: %s)." % (
                      lay, t["state_ratio"], t["rss_ratio"], extra,
                      ", ".join(t["met_by"]) if t["met_by"] else "none"))
    fails = [r for r in rows if not r.get("tokens_per_s")]
    for r in fails:
        md.append("- %s %s failed: %s" % (r["config"], r["layout"], r["errors"][0]))
    with open(o.md, "w") as f:
        f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
