#!/usr/bin/python3
"""experiments.py: the comparison of calmflow 5 (docs/results.md), end to end.

Usage: analysis/experiments.py [--size ci|small|medium|full] [--groups toy2d,highdim,budget,budgethd,trajtok]
                               [--methods m1,m2] [--pairs SRC:TGT,...] [--seeds K] [--ranks R] [--merge DIR1,DIR2] [--binary build/calmflow] [--out DIR]
                               [--results docs/results.md] [--config configs/experiments.json]

For every group, pair of distributions (source -> target), dimension, method and seed of the
config (configs/experiments.json), it trains a model with `calmflow train`, samples it with
`calmflow sample`, and scores the samples with `calmflow eval` against a fresh target set (a
second fresh set gives the W2 noise floor: W2 between two samples of the target). CFM
baselines ("match") get an MLP width that gives the parameter count of the CaLMFlow model
they match and as many steps as give its training FLOPs (summary.json's flops_per_step).
Methods whose head is not built yet are recorded as unavailable, not failed.

Writes to OUT (default runs/experiments-SIZE): runs/ (one run directory per model), data/,
rows.jsonl (one row per sample set: metrics, parameters, seconds, NFE), table.md (mean +- std
over seeds), and plots (plot_*.png). With --results, the block between the markers
<!-- results:begin --> and <!-- results:end --> in that file is replaced by table.md.
Sizes: ci takes a few minutes on 2 cores (the CI smoke run), small about an hour, full many
hours (a Slurm job: jobs/README.md). Exit status 1 when a run fails for another reason than
a head that is not built.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np


def log(msg):
    print(f"experiments: {msg}", file=sys.stderr, flush=True)


class Runner:
    def __init__(self, binary, ranks, out):
        self.binary, self.ranks, self.out = binary, ranks, out
        self.env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                        OMPI_MCA_rmaps_base_oversubscribe="1")

    def calmflow(self, args, ranks=None, allow=()):
        """Run calmflow; returns (ok, stderr text). A failure whose message holds one of
        `allow` returns ok False; any other failure raises."""
        n = ranks or self.ranks
        cmd = (["mpiexec", "-n", str(n)] if n > 1 else []) + [self.binary] + [str(a) for a in args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if p.returncode == 0:
            return True, p.stderr
        for a in allow:
            if a in p.stderr:
                return False, p.stderr
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")


def data_file(R, name, dim, seed, n):
    """The synthetic set `name` (n points of dimension dim, drawn with seed) as an .h5 file under
    R.out/data, made by `calmflow data` on first use and reused after."""
    p = os.path.join(R.out, "data", f"{name}-d{dim}-s{seed}-n{n}.h5")
    if not os.path.exists(p):
        R.calmflow(["data", "-data_name", name, "-data_dim", dim, "-data_n", n, "-seed", seed,
                    "-data_out", p], ranks=1)
    return p


def opts_list(d):
    out = []
    for k, v in d.items():
        out += [f"-{k}", v]
    return out


def param_count(ckpt):
    import h5py
    with h5py.File(ckpt, "r") as f:
        return int(sum(f["params"][k].size for k in f["params"]))


def latest_ckpt(run_dir):
    with open(os.path.join(run_dir, "ckpt", "LATEST")) as f:
        return os.path.join(run_dir, "ckpt", f.read().strip())


def cfm_params(D, width, layers, freqs=8):
    i = D + 1 + 2 * freqs
    return width * i + width + (layers - 1) * (width * width + width) + D * width + D


def cfm_width_for(target, D, layers):
    best, bw = None, 1
    for w in range(1, 20000):
        p = cfm_params(D, w, layers)
        if best is None or abs(p - target) < best:
            best, bw = abs(p - target), w
        if p > target:
            break
    return bw


def fmt(mean, std, digits=3):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="ci")
    ap.add_argument("--groups", default="",
                    help="comma-separated (default: every group of the config)")
    ap.add_argument("--methods", default="", help="only these methods (comma-separated)")
    ap.add_argument("--pairs", default="",
                    help="only these pairs of the groups, SOURCE:TARGET (comma-separated), to "
                         "split a group over processes (joined with --merge)")
    ap.add_argument("--seeds", type=int, default=0,
                    help="run seeds 0 .. K-1 instead of the size's count (a pilot; the table "
                         "says how many)")
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--binary", default="build/calmflow")
    ap.add_argument("--out")
    ap.add_argument("--results")
    ap.add_argument("--block", default="results",
                    help="with --results: the marked block to replace, <!-- BLOCK:begin --> ... "
                         "<!-- BLOCK:end --> (default results)")
    ap.add_argument("--merge", default="",
                    help="no runs: table and plots from these output dirs' rows.jsonl "
                         "(comma-separated; a later dir's row replaces an earlier one's for the "
                         "same method, seed, data and temperature, in its place)")
    ap.add_argument("--resume", action="store_true",
                    help="keep what OUT already holds: a run directory whose summary.json shows "
                         "the requested steps is not trained again, a sample set with its "
                         "files is not sampled or scored again (an interrupted or requeued run "
                         "continues where it stopped)")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                     "experiments.json"))
    a = ap.parse_args()
    try:
        cfg = json.load(open(a.config))
    except (OSError, ValueError) as e:
        print(f"experiments: error: cannot read the config '{a.config}': {e}", file=sys.stderr)
        return 1
    if a.size not in cfg["sizes"]:
        print(f"experiments: error: --size {a.size}: expected one of {', '.join(cfg['sizes'])}",
              file=sys.stderr)
        return 1
    if not os.access(a.binary, os.X_OK):
        print(f"experiments: error: --binary '{a.binary}' is not an executable calmflow",
              file=sys.stderr)
        return 1
    size = cfg["sizes"][a.size]
    if a.seeds < 0:
        print(f"experiments: error: --seeds {a.seeds}: expected >= 1", file=sys.stderr)
        return 1
    if a.seeds:
        size = dict(size, seeds=a.seeds)
    groups = [g for g in a.groups.split(",") if g] or list(cfg["groups"])
    for g in groups:
        if g not in cfg["groups"]:
            print(f"experiments: error: --groups: unknown group '{g}'", file=sys.stderr)
            return 1
    pairs = [tuple(x.split(":")) for x in a.pairs.split(",") if x]
    known = {tuple(pr) for g in groups for pr in cfg["groups"][g]["pairs"]}
    for pr in pairs:
        if pr not in known:
            print(f"experiments: error: --pairs: '{':'.join(pr)}' is not a SOURCE:TARGET pair of "
                  f"the groups run ({', '.join(sorted(':'.join(k) for k in known))})",
                  file=sys.stderr)
            return 1
    out = a.out or f"runs/experiments-{a.size}"
    if a.merge:
        merged = {}
        for d in [x for x in a.merge.split(",") if x]:
            try:
                for line in open(os.path.join(d, "rows.jsonl")):
                    r = json.loads(line)
                    k = (r["group"], r["source"], r["target"], r["dim"], r["method"], r["seed"],
                         json.dumps(r["sweep"]), r.get("tau"))
                    merged[k] = r  # a replaced row keeps its place
            except (OSError, ValueError, KeyError) as e:
                print(f"experiments: error: --merge '{d}': {e}", file=sys.stderr)
                return 1
        rows = list(merged.values())
        os.makedirs(out, exist_ok=True)
        table = make_table(rows, size, a)
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(table)
        make_plots(rows, out)
        if a.results:
            put_results(a.results, table, a.block)
        log(f"merged {len(rows)} rows into {out}")
        return 0
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    R = Runner(os.path.abspath(a.binary), a.ranks, out)
    rows = []
    rows_path = os.path.join(out, "rows.jsonl")
    kept = {"runs": 0, "sets": 0}  # --resume: what was found finished
    rows_f = open(rows_path, "w")

    def finished(run_dir, steps):
        """--resume: run_dir holds a finished training run of `steps` steps."""
        try:
            return (a.resume and json.load(open(os.path.join(run_dir, "summary.json")))["steps"]
                    == steps and latest_ckpt(run_dir) is not None)
        except (OSError, ValueError, KeyError):
            return False

    def train(o, run_dir):
        if finished(run_dir, o["train_steps"]):
            kept["runs"] += 1
            return True, ""
        return R.calmflow(["train"] + opts_list(dict(o, run_dir=run_dir)),
                          allow=("not implemented yet",))
    failed = 0
    t_start = time.time()

    def resolve(v):
        return size[v] if isinstance(v, str) and v in size else v

    def emit(row):
        rows.append(row)
        rows_f.write(json.dumps(row) + "\n")
        rows_f.flush()

    def evaluate(samples, target, dim, seed, n):
        ref = data_file(R, target, dim, 900000 + seed, n)
        ref2 = data_file(R, target, dim, 800000 + seed, n)
        mj = samples + ".metrics.json"
        if a.resume and os.path.exists(mj):
            return json.load(open(mj))
        R.calmflow(["eval", "-eval_a", samples, "-eval_b", ref, "-eval_ref", ref2,
                    "-eval_sinkhorn_max", 0,
                    "-eval_out", mj], ranks=1)
        return json.load(open(mj))

    for gname in groups:
        g = cfg["groups"][gname]
        dims = resolve(g["dims"])
        sweep = g.get("sweep", {})
        sweep_points = [{}]
        for opt, key in sweep.items():  # one option varied at a time, the others at default
            sweep_points += [{opt: v} for v in size[key]]
        for src, tgt in g["pairs"]:
            if pairs and (src, tgt) not in pairs:
                continue
            for dim in dims:
                for sp in sweep_points:
                    trained = {}  # method -> (run_dir, summary, params) for seed-matched CFM
                    only = [x for x in a.methods.split(",") if x]
                    for method in g["methods"]:
                        if only and method not in only and not any(
                                cfg["methods"][o].get("match") == method for o in only):
                            continue
                        m = dict(cfg["methods"][method])
                        match = m.pop("match", None)
                        for seed in range(size["seeds"]):
                            tag = f"{gname}-{src}-{tgt}-d{dim}-{method}-s{seed}" + "".join(
                                f"-{k.split('_')[-1]}{v}" for k, v in sp.items())
                            run_dir = os.path.join(out, "runs", tag)
                            o = {k: resolve(v) for k, v in cfg["common"].items()}
                            o.update({"data_name": tgt, "data_source": src, "data_dim": dim,
                                      "seed": seed, "train_quiet": 1, "run_overwrite": 1})
                            if m["model"] == "calmflow":
                                o.update(size["net"])
                            o.update(m)
                            o.update(sp)
                            if "train_selffeed_steps" in o:  # at most N - 2 own steps (ci: N 6)
                                o["train_selffeed_steps"] = min(o["train_selffeed_steps"],
                                                                o["flow_time_points"] - 2)
                            if "flow_trajectories" in o and o["train_batch"] % o["flow_trajectories"]:
                                o["train_batch"] -= o["train_batch"] % o["flow_trajectories"]
                            row = {"group": gname, "source": src, "target": tgt, "dim": dim,
                                   "method": method, "seed": seed, "sweep": sp,
                                   "model": m["model"], "status": "ok"}
                            if m["model"] == "cfm":
                                base = trained.get((match, seed))
                                if base is None:
                                    raise RuntimeError(f"{method}: matched method '{match}' "
                                                       "must come first in the group")
                                layers = size["cfm_layers"]
                                width = cfm_width_for(base["params"], dim, layers)
                                o.update({"net_hidden": width, "net_layers": layers})
                                # probe one step for the FLOPs per step, then match the total
                                probe = run_dir + "-probe"
                                train(dict(o, train_steps=1), probe)
                                fps = json.load(open(os.path.join(probe, "summary.json")))[
                                    "flops_per_step"]
                                total = base["flops_per_step"] * base["steps"]
                                steps = int(min(max(round(total / fps), 10),
                                                size["max_cfm_steps"]))
                                o["train_steps"] = steps
                                o["train_warmup"] = min(o["train_warmup"], max(1, steps // 10))
                                row["matched_flops"] = total
                            t0 = time.time()
                            ok, err = train(o, run_dir)
                            if not ok:
                                row["status"] = "unavailable"
                                row["note"] = err.strip().splitlines()[-1][:200] if err else ""
                                emit(row)
                                log(f"{tag}: unavailable ({row['note']})")
                                break
                            summ = json.load(open(os.path.join(run_dir, "summary.json")))
                            params = param_count(latest_ckpt(run_dir))
                            row.update({"params": params, "train_seconds": summ["seconds"],
                                        "train_steps": summ["steps"],
                                        "flops_per_step": summ["flops_per_step"],
                                        "final_loss": summ["final_loss"]})
                            dg = summ.get("diag")
                            if dg:  # per-step loss and attention (CaLMFlow, whole model)
                                sl, at = dg["step_loss"], dg["attn"]
                                row.update({"loss_first": sl[0],
                                            "loss_rest": float(np.mean(sl[1:])) if len(sl) > 1
                                            else None,
                                            "attn_past": float(np.mean([x["past"] for x in at])),
                                            "attn_uniform": float(np.mean([x["uniform"]
                                                                           for x in at])),
                                            "qk_norm": float(np.mean([x["q_norm"] * x["k_norm"]
                                                                      for x in at]))})
                            if m["model"] == "calmflow":
                                trained[(method, seed)] = {"params": params,
                                                           "flops_per_step": summ["flops_per_step"],
                                                           "steps": summ["steps"]}
                            taus = [None]
                            if method in g.get("tau_sweep", []):
                                taus = size["tau"]
                            for tau in taus:
                                smp = os.path.join(run_dir, f"samples-tau{tau}.h5" if tau else
                                                   "samples.h5")
                                sargs = ["sample", "-run_dir", run_dir, "-sample_n",
                                         size["samples"], "-seed", 1000 + seed, "-sample_out", smp,
                                         "-sample_quiet", 1, "-sample_traj", 1]
                                if m["model"] == "cfm":
                                    sargs += ["-sample_batch", min(size["samples"], 500)]
                                if tau is not None:
                                    sargs += ["-sample_temperature", tau]
                                if a.resume and os.path.exists(smp + ".json"):
                                    kept["sets"] += 1
                                else:
                                    R.calmflow(sargs)
                                sj = json.load(open(smp + ".json"))
                                mt = evaluate(smp, tgt, dim, seed, size["samples"])
                                r2 = dict(row, tau=tau, sample_seconds=sj["seconds"],
                                          nfe_per_solve=sj.get("nfe_per_solve") or None,
                                          w2=mt["w2"], w2_floor=mt.get("w2_floor"),
                                          w2_ratio=mt.get("w2_ratio"), mmd2_rbf=mt["mmd2_rbf"],
                                          mmd2_rbf_multi=mt.get("mmd2_rbf_multi"),
                                          frechet=mt.get("frechet"), samples=smp)
                                emit(r2)
                            log(f"{tag}: {time.time() - t0:.1f} s, W2 ratio "
                                f"{rows[-1].get('w2_ratio', float('nan')):.2f}")
    rows_f.close()
    if a.resume:
        log(f"resumed: kept {kept['runs']} finished runs and {kept['sets']} sample sets")
    table = make_table(rows, size, a)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    make_plots(rows, out)
    if a.results:
        put_results(a.results, table, a.block)
    log(f"done in {time.time() - t_start:.0f} s: {len(rows)} rows in {rows_path}")
    return 1 if failed else 0


def agg(rs, key):
    v = [r[key] for r in rs if r.get(key) is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def make_table(rows, size, a):
    ns = size["seeds"]
    lines = [f"Size `{a.size}`: {ns} seed{'s' if ns != 1 else ''}, {size['steps']} CaLMFlow steps of "
             f"{size['batch']} paths, {size['samples']} samples per set, "
             f"{a.ranks} rank(s). Mean ± std over seeds (sample std). W2: exact, samples vs a "
             "fresh target set; floor: W2 between two fresh target sets; ratio = W2 / floor "
             "(1 is perfect). MMD: RBF, gamma 2 (saturates in high D); MMD multi: the mean over "
             "bandwidths 0.01-100. Train s and sample s: wall seconds; NFE: "
             "velocity evaluations per ODE solve (CFM). Loss t1 / t>=2: the per-point training "
             "loss (NLL for the likelihood heads) on a batch of fresh paths, of the first "
             "predicted time point and the mean of the later ones. Attn past / unif.: attention "
             "mass on earlier time points, mean over layers, against what uniform attention "
             "gives (equal: the history is not read selectively; 0: no history).", ""]
    keys = []
    for r in rows:
        k = (r["group"], r["source"], r["target"], r["dim"], json.dumps(r["sweep"]))
        if k not in keys:
            keys.append(k)
    for k in keys:
        g, s, t, d, sw = k
        sweep = json.loads(sw)
        title = f"### {g}: {s} -> {t}, D = {d}" + "".join(f", {o} = {v}" for o, v in sweep.items())
        sel = [r for r in rows if (r["group"], r["source"], r["target"], r["dim"],
                                   json.dumps(r["sweep"])) == k]
        nk = len({r["seed"] for r in sel})
        if nk != ns:  # a pilot, or runs joined with --merge
            title += f" ({nk} seed{'s' if nk != 1 else ''})"
        lines += [title, "",
                  "| method | tau | W2 | W2 / floor | MMD | MMD multi | params | train s | sample s "
                  "| NFE | loss t1 | loss t>=2 | attn past / unif. |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        seen = []
        for r in sel:
            mk = (r["method"], r.get("tau"))
            if mk in seen:
                continue
            seen.append(mk)
            rs = [x for x in sel if (x["method"], x.get("tau")) == mk]
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | | not available: {r.get('note', '')} "
                             "| | | | | | | | | | |")
                continue
            w2, w2s = agg(rs, "w2")
            ra, ras = agg(rs, "w2_ratio")
            mm, mms = agg(rs, "mmd2_rbf")
            mu, mus = agg(rs, "mmd2_rbf_multi")
            pa, _ = agg(rs, "params")
            ts, tss = agg(rs, "train_seconds")
            ss, sss = agg(rs, "sample_seconds")
            nf, _ = agg(rs, "nfe_per_solve")
            l1, l1s = agg(rs, "loss_first")
            lr_, lrs = agg(rs, "loss_rest")
            ap, _ = agg(rs, "attn_past")
            au, _ = agg(rs, "attn_uniform")
            attn = f"{ap:.2f} / {au:.2f}" if ap is not None else ""
            tau = r.get("tau")
            lines.append(f"| {r['method']} | {tau if tau is not None else 'auto'} | {fmt(w2, w2s)} "
                         f"| {fmt(ra, ras, 2)} | {fmt(mm, mms, 4)} | {fmt(mu, mus, 4)} "
                         f"| {int(pa) if pa else 'n/a'} "
                         f"| {fmt(ts, tss, 1)} | {fmt(ss, sss, 2)} "
                         f"| {f'{nf:.0f}' if nf else ''} "
                         f"| {fmt(l1, l1s, 2) if l1 is not None else ''} "
                         f"| {fmt(lr_, lrs, 2) if lr_ is not None else ''} | {attn} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def make_plots(rows, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import h5py
    except ImportError:
        log("matplotlib or h5py missing: no plots")
        return
    ok = [r for r in rows if r["status"] == "ok"]
    # W2 / floor per method, one panel per (group, pair, dim) without a sweep
    panels = []
    for r in ok:
        k = (r["group"], r["source"], r["target"], r["dim"])
        if not r["sweep"] and k not in panels:
            panels.append(k)
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, k in zip(axes[0], panels):
            sel = [r for r in ok if (r["group"], r["source"], r["target"], r["dim"]) == k
                   and not r["sweep"] and r.get("tau") in (None, 1.0)]
            methods = []
            for r in sel:
                if r["method"] not in methods:
                    methods.append(r["method"])
            means = [agg([r for r in sel if r["method"] == m], "w2_ratio") for m in methods]
            ax.bar(range(len(methods)), [m for m, _ in means],
                   yerr=[s or 0 for _, s in means], color="tab:blue", alpha=0.8)
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{k[1]} -> {k[2]}, D={k[3]}", fontsize=9)
            ax.set_ylabel("W2 / noise floor")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "plot_w2.png"), dpi=110)
        plt.close(fig)
    # temperature sweeps
    sw = [r for r in ok if r.get("tau") is not None]
    if sw:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for m in sorted({r["method"] for r in sw}):
            taus = sorted({r["tau"] for r in sw if r["method"] == m})
            ys = [agg([r for r in sw if r["method"] == m and r["tau"] == t], "w2_ratio")[0]
                  for t in taus]
            ax.plot(taus, ys, "o-", label=m)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("temperature tau")
        ax.set_ylabel("W2 / noise floor")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "plot_temperature.png"), dpi=110)
        plt.close(fig)
    # P and S sweeps
    ps = [r for r in ok if r["sweep"]]
    if ps:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for opt, lab in (("flow_trajectories", "P"), ("flow_spatial_tokens", "S")):
            vals = sorted({r["sweep"][opt] for r in ps if opt in r["sweep"]})
            ys = [agg([r for r in ps if r["sweep"].get(opt) == v], "w2_ratio")[0] for v in vals]
            if vals:
                ax.plot(vals, ys, "o-", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("P (trajectories) or S (spatial tokens)")
        ax.set_ylabel("W2 / noise floor")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "plot_trajectories_tokens.png"), dpi=110)
        plt.close(fig)
    # trajectories of the 2-D toy, seed 0, one panel per method
    toy = [r for r in ok if r["group"] == "toy2d" and r["seed"] == 0 and r.get("tau") in (None, 1.0)]
    if toy:
        fig, axes = plt.subplots(1, len(toy), figsize=(3.0 * len(toy), 3.0), squeeze=False)
        for ax, r in zip(axes[0], toy):
            with h5py.File(r["samples"], "r") as f:
                tr = f["traj"][:64] if "traj" in f else None
                x = f["x"][...]
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            if tr is not None:
                for t in tr:
                    ax.plot(t[:, 0], t[:, 1], lw=0.4, alpha=0.5, color="tab:orange")
            ax.set_title(f"{r['method']}\nW2/floor {r['w2_ratio']:.2f}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(os.path.join(out, "plot_toy2d_trajectories.png"), dpi=110)
        plt.close(fig)


def put_results(path, table, name="results"):
    """Replace the block between <!-- NAME:begin --> and <!-- NAME:end --> of the file at path
    with table (analysis/hsmm.py uses its own NAME)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    try:
        text = open(path).read()
    except OSError as e:
        log(f"error: --results '{path}': {e}")
        return
    if begin not in text or end not in text:
        log(f"error: --results '{path}' has no {begin} ... {end} block")
        return
    i, j = text.index(begin) + len(begin), text.index(end)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text[:i] + "\n" + table + text[j:])
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"experiments: error: {e}", file=sys.stderr)
        sys.exit(1)
