#!/usr/bin/python3
"""perf_report.py: the plan, the collected results and the report of bench/perf.sh.

  plan     one tab-separated line per configuration of the grid: kind (train / rollout), id,
           layers, H, heads, D, S, P, batch (paths per step; sequences per rollout batch) and
           the variants to run, each with its steps (train) or samples (rollout)
  collect  reads perf.sh's run index and run files and writes the raw results (every run, its
           per-step times, and the medians per configuration and variant) as JSON and CSV
  report   renders docs/performance.md from one or more collected JSON files

The model FLOPs and the analytic memory are written out here (flops_fwd, analytic_floats) and
in the report. flops_fwd is the formula of cf_model_flops (src/model/model.c) for the gauss
head; `collect` checks it against every calmflow run's flops_per_step.
"""
import argparse
import csv
import datetime
import json
import math
import os
import statistics
import sys

med = statistics.median


def dims(L, H, NH, D, S, P, N, ffn=0):
    ffn = ffn or 4 * H
    J = N * P
    T = J * S
    SH = S * H
    I = max(SH, D)
    return dict(L=L, H=H, NH=NH, D=D, S=S, P=P, N=N, ffn=ffn, J=J, T=T, SH=SH, I=I, Dout=2 * D)


def flops_fwd(d):
    """Forward FLOPs of one sequence (multiply-add = 2), gauss head:
    encoder 2J(D SH + SH^2); per layer T(8H^2 + 4H ffn) (qkv, out, fc1, fc2) + 2T^2 H (causal
    q k^T and p v, half of the full T x T); decoder 2J(SH I + I^2 + I Dout)."""
    J, T, H, D, SH, I = d["J"], d["T"], d["H"], d["D"], d["SH"], d["I"]
    f = 2.0 * J * (D * SH + SH * SH)
    f += d["L"] * (T * (8.0 * H * H + 4.0 * H * d["ffn"]) + 2.0 * T * T * H)
    f += 2.0 * J * (SH * I + I * I + I * d["Dout"])
    return f


def flops_step(d, B):
    """Training step: forward + backward (twice the forward) over B sequences."""
    return 3.0 * flops_fwd(d) * B


def n_params(d):
    """Parameters of the gauss-head network (model.h's tensor list)."""
    H, SH, I, D, ffn = d["H"], d["SH"], d["I"], d["D"], d["ffn"]
    p = SH * D + SH + SH * SH + SH  # encoder
    p += d["L"] * (4 * H + 3 * H * H + 3 * H + H * H + H + ffn * H + ffn + H * ffn + H)
    p += 2 * H  # lnf
    p += I * SH + I + I * I + I + d["Dout"] * I + d["Dout"]  # decoder
    return p


def analytic_floats(d, B):
    """(state, activations) in floats for B sequences on one rank, float32 training:
    state = 4 x params (parameters, gradients, AdamW m and v);
    activations kept for backward, per sequence:
      inputs      2 J D (z, y)
      encoder     J (2 SH + 1): fc1's normalized output, ReLU output (fc2's input), 1/std
      per layer   T (7H + 2 ffn + heads T + 1): the normalized block input (shared by ln1
                  and ln2) and 1/std, ln1 and ln2 outputs, qkv (3H), attention output (out's
                  input), fc1 output (GELU's input), GELU output (fc2's input), attention
                  probabilities (heads x T per token)
      final LN    T (2H + 1)
      decoder     J (4I + 2 + Dout): fc1 and fc2 normalized outputs and ReLU outputs, output
    plus the backward's working set, once per sequence: the larger of the blocks' T (H +
    max(ffn, 3H)) (the residual gradient and the widest intermediate's gradient) and the
    decoder's J (max(Dout, I) + I) (a layer's output gradient and its input gradient: dout,
    then the hidden layers'), plus T^2 (one head's score gradient)."""
    J, T, H, D, SH, I, ffn = d["J"], d["T"], d["H"], d["D"], d["SH"], d["I"], d["ffn"]
    per = 2 * J * D + J * (2 * SH + 1)
    per += d["L"] * T * (7 * H + 2 * ffn + d["NH"] * T + 1)
    per += T * (2 * H + 1) + J * (4 * I + 2 + d["Dout"])
    per += max(T * (H + max(ffn, 3 * H)), J * (max(d["Dout"], I) + I)) + T * T
    return 4.0 * n_params(d), float(per) * B


# ---------------------------------------------------------------- plan


def cmd_plan(a):
    ds = [int(x) for x in a.ds.split()]
    t2 = {int(x) for x in a.threads2_ds.split()}
    roll = {int(x) for x in a.roll_ds.split()}
    peak = a.peak * 1e9
    kinds = a.kinds.split()
    for sz in a.sizes.split():
        f = [int(x) for x in sz.split(":")]
        L, H, NH = f[:3]
        paths = f[3] if len(f) > 3 else a.batch
        for D in ds:
            for S in [int(x) for x in a.ss.split()]:
                for P in [int(x) for x in a.ps.split()]:
                    if paths % P:
                        sys.exit(f"perf_report.py: {paths} paths per step are not whole sequences "
                                 f"of P {P}")
                    d = dims(L, H, NH, D, S, P, a.n)
                    cid = f"L{L}H{H}-D{D}-S{S}-P{P}"
                    est = flops_step(d, paths // P) / (0.4 * peak) + 0.005 * L
                    steps = max(4, min(a.steps, math.ceil(a.step_budget / est)))
                    v = [f"cf1={steps}", f"torch1={steps}"]
                    if D in t2 and len(f) == 3:
                        v += [f"cfdp2={steps}", f"cfblas2={steps}", f"torch2={steps}"]
                    row = ["train", cid, L, H, NH, D, S, P, paths, ",".join(v)]
                    if "train" in kinds:
                        print("\t".join(map(str, row)))
                    if D in roll and "rollout" in kinds:
                        # torch recomputes prefixes of 1 .. N-1 points: seconds per sequence
                        # (FLOPs at 30% of the peak) and per batch (+ 2 ms per layer and step);
                        # the batch is 64 sequences, fewer (a power of 2, at least
                        # roll_min_batch) where one batch would not fit the budget, and as many
                        # batches as fit
                        fl = sum(flops_fwd(dims(L, H, NH, D, S, P, t)) for t in range(1, a.n))
                        per_seq = fl / (0.3 * peak)
                        b = max(a.roll_min_batch, min(64, int(a.roll_budget / per_seq)))
                        b = 2 ** int(math.log2(b))  # a power of 2
                        est = per_seq * b + (a.n - 1) * L * 0.002
                        nb = max(1, min(32, round(a.roll_budget / est)))
                        ns = nb * b * P
                        v = [f"cfkv={8 * ns}", f"cfrc={ns}", f"torch={ns}"]
                        row = ["rollout", cid, L, H, NH, D, S, P, b, ",".join(v)]
                        print("\t".join(map(str, row)))
    return 0


# ---------------------------------------------------------------- collect

IDX = ("kind", "id", "variant", "rep", "attempt", "L", "H", "NH", "D", "S", "P", "batch", "x",
       "rc", "wall", "busy_before", "others_during")


def cmd_collect(a):
    rows = []
    for line in open(os.path.join(a.dir, "index.tsv")):
        f = line.rstrip("\n").split("\t")
        r = dict(zip(IDX, f))
        for k in ("rep", "attempt", "L", "H", "NH", "D", "S", "P", "batch", "x", "rc"):
            r[k] = int(r[k])
        for k in ("wall", "busy_before", "others_during"):
            r[k] = float(r[k])
        path = os.path.join(a.dir, "runs", f"{r['id']}.{r['variant']}.{r['rep']}.{r['attempt']}")
        r["result"] = None
        if r["rc"] == 0:
            try:
                r["result"] = json.load(open(path + ".json"))
            except (OSError, ValueError) as e:
                r["rc"], r["error"] = -1, f"no result: {e}"
        else:
            try:
                r["error"] = open(path + ".out").read().strip().splitlines()[-1][:300]
            except (OSError, IndexError):
                r["error"] = "failed"
        rows.append(r)
    sg = []
    for line in open(os.path.join(a.dir, "sgemm.txt")):
        tag, busy, js = line.split(" ", 2)
        sg.append(dict(json.loads(js), tag=tag, busy_before=float(busy)))
    counts = [json.loads(l) for l in open(os.path.join(a.dir, "count.jsonl"))]
    baseline = json.load(open(os.path.join(a.dir, "baseline.json")))
    memory = json.load(open(a.memory)) if a.memory else None
    peak = max(s["gflops"] for s in sg)
    build = json.load(open(os.path.join(a.dir, "build.json")))
    profiles = []
    for line in open(os.path.join(a.dir, "profiles.txt")):
        name, what, busy, base = line.split()
        profiles.append(dict(read_profile(base), size=name, what=what, busy_before=float(busy)))

    # per (kind, id, variant): each run's median step time (after the warm-up steps)
    groups = {}
    for r in rows:
        groups.setdefault((r["kind"], r["id"], r["variant"]), []).append(r)
    out = []
    for (kind, cid, var), rs in groups.items():
        r0 = rs[0]
        d = dims(r0["L"], r0["H"], r0["NH"], r0["D"], r0["S"], r0["P"], a.n)
        g = {"kind": kind, "id": cid, "variant": var,
             **{k: r0[k] for k in ("L", "H", "NH", "D", "S", "P", "batch")}, "T": d["T"]}
        ok = [r for r in rs if r["rc"] == 0]
        quiet = [r for r in ok if r["others_during"] <= a.disturbed]
        use = quiet or ok
        g["runs"], g["runs_ok"], g["runs_quiet"] = len(rs), len(ok), len(quiet)
        g["others_during_max"] = max((r["others_during"] for r in use), default=None)
        if not ok:
            g["error"] = rs[-1].get("error", "failed")
            out.append(g)
            continue
        if kind == "train":
            B = r0["batch"] // r0["P"]
            ranks = 2 if var == "cfdp2" else 1
            per = []
            for r in use:
                st = r["result"]["step_seconds"]
                r["median_step_s"] = med(st[a.warm:] if len(st) > a.warm else st)
                per.append(r["median_step_s"])
            g["step_s"] = med(per)
            g["step_s_runs"] = per
            g["tokens_per_step"] = B * d["T"]
            g["tokens_per_s"] = g["tokens_per_step"] / g["step_s"]
            g["flops_per_step"] = flops_step(d, B)
            cores = 2 if var in ("cfdp2", "cfblas2", "torch2") else 1
            g["cores"] = cores
            g["mfu"] = g["flops_per_step"] / g["step_s"] / (peak * 1e9 * cores)
            g["peak_rss"] = max(r["result"]["peak_rss"] for r in use)
            st_f, act_f = analytic_floats(d, B // ranks)
            g["analytic_state_bytes"] = 4.0 * st_f
            g["analytic_act_bytes"] = 4.0 * act_f
            g["params_analytic"] = n_params(d)
            if var.startswith("cf"):
                cf_fl = ok[0]["result"].get("flops_per_step")
                g["calmflow_flops_per_step"] = cf_fl
                if cf_fl and abs(cf_fl - g["flops_per_step"]) > 1e-5 * cf_fl:
                    print(f"perf_report.py: warning: {cid}: calmflow counts {cf_fl:.6g} FLOPs per "
                          f"step, the formula {g['flops_per_step']:.6g}", file=sys.stderr)
                g["state_bytes_max"] = ok[0]["result"].get("state_bytes_max")
                g["heap_peak"] = max(r["result"].get("heap_peak", 0) for r in use) or None
                base = baseline["calmflow_dp2" if var == "cfdp2" else "calmflow"]
            else:
                base = baseline["torch"]
                g["params_torch"] = ok[0]["result"]["params"]
            g["baseline_rss"] = base
        else:
            sps = [r["result"]["samples_per_s"] for r in use]
            g["samples_per_s"] = med(sps)
            g["samples_per_s_runs"] = sps
            g["samples"] = r0["x"]
            g["peak_rss"] = max(r["result"].get("peak_rss", 0) for r in use) or None
        out.append(g)

    res = {"date": str(datetime.date.today()), "commit": build["commit"], "build": build,
           "profiles": profiles, "mode": a.mode,
           "n": a.n, "warm": a.warm, "disturbed": a.disturbed, "sgemm": sg, "peak_gflops": peak,
           "cpu": cpu_name(), "cores": os.cpu_count(), "counts": counts, "baseline": baseline,
           "memory_sh": memory, "results": out, "runs": rows,
           "loadavg_after": open("/proc/loadavg").read().split()[:3]}
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    cols = ["kind", "id", "variant", "L", "H", "NH", "D", "S", "P", "batch", "T", "runs_ok",
            "runs_quiet", "step_s", "tokens_per_s", "flops_per_step", "mfu", "samples_per_s",
            "peak_rss", "baseline_rss", "analytic_state_bytes", "analytic_act_bytes", "error"]
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for g in out:
            w.writerow(g)
    return 0


def read_profile(base):
    """perf report's flat profile (BASE.perf) and -log_view's calmflow events (BASE.out)."""
    syms = []
    for line in open(base + ".perf"):
        f = line.split()
        if len(f) >= 4 and f[0].endswith("%") and f[2] in ("[.]", "[k]"):
            syms.append({"pct": float(f[0][:-1]), "dso": f[1], "symbol": f[3]})
    events, total = {}, None
    for line in open(base + ".out"):
        f = line.split()
        if line.startswith("Time (sec):"):
            total = float(f[2])
        elif f and f[0].startswith("cf") and len(f) > 3:
            events[f[0]] = {"count": int(f[1]), "seconds": float(f[3])}
    return {"symbols": syms, "events": events, "seconds": total}


def group(sym):
    """A profile symbol's share, by what it does."""
    s, d = sym["symbol"], sym["dso"]
    if "openblas" in d:
        return "OpenBLAS sgemm (kernels and packing)"
    if "gelu" in s or "erff" in s or s.startswith("cf_mul"):
        return "exact GELU (gelu_* copies, cf_mul: the output again in backward; erff before)"
    if "expf" in s:
        return "expf (softmax, GELU derivative)"
    if "softmax" in s or "exp_sum" in s:
        return "softmax (cf_span_softmax_row, softmax_* copies)"
    if "rd_linear" in s or "linear_rows" in s:
        return "row-deterministic linear (sampling)"
    if "layernorm" in s or "lnrelu" in s or s in ("row_dot", "row_sqdev"):
        return "LayerNorm (+ ReLU)"
    if "optim" in s or "sqnorm" in s or "clip" in s:
        return "optimizer, gradient norm"
    if "mem" in s and "libc" in d:
        return "memset / memmove"
    if d.startswith("[kernel") or sym.get("kind") == "[k]":
        return "kernel"
    if "ld-linux" in d:
        return "start-up (dynamic linking)"
    return "other"


def cpu_name():
    """The model name, with the family and model numbers when the name alone does not tell the
    generation (AMD EPYC, family 25: Zen 3 and 4; 26: Zen 5) and whether AVX-512 is there."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    if "model name" not in info:
        return "unknown"
    avx = "AVX-512" if "avx512f" in info.get("flags", "").split() else "no AVX-512"
    return (f"{info['model name']} (family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}, {avx})")


# ---------------------------------------------------------------- report


def num(x):
    """A rate with three significant digits or more (thousands separated)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_ms(s):
    return f"{1000 * s:.1f}" if s < 10 else f"{s:.1f} s"


def blas_core(sg):
    """The OpenBLAS kernel set the sgemm peak ran (calmflow and torch load the same library in the
    same environment), and whether OPENBLAS_CORETYPE chose it; empty for runs that did not record
    it."""
    core = sg[0].get("core") if sg else None
    if not core:
        return ""
    env = sg[0].get("coretype_env")
    return (f", OpenBLAS {core} kernels" +
            (f" (OPENBLAS_CORETYPE={env} in the environment, for calmflow and torch alike)"
             if env else " (detected)"))


def cmd_report(a):
    R = [json.load(open(p)) for p in a.results]
    res = {}
    for r in R:
        for g in r["results"]:
            res[(g["kind"], g["id"], g["variant"])] = g
    get = lambda kind, cid, var: res.get((kind, cid, var))
    order = lambda g: (g["L"], g["H"], g["D"], g["S"], g["P"])  # the tables' row order
    ids = sorted({g["id"]: order(g) for g in res.values() if g["kind"] == "train"}.items(),
                 key=lambda kv: kv[1])
    ids = [k for k, _ in ids]
    rids = sorted({g["id"]: order(g) for g in res.values() if g["kind"] == "rollout"}.items(),
                  key=lambda kv: kv[1])
    rids = [k for k, _ in rids]
    mib = 2.0 ** 20
    first = next((r for r in R if r["mode"] == "full"), R[-1])  # baseline, N, disturbed
    L = ["# Performance: calmflow against the same network in PyTorch", ""]
    how = lambda m: "--" + m.split("-")[0] + (f" TAG={m.split('-', 1)[1]}" if "-" in m else "")
    modes = [r["mode"] for r in R]
    cmd = ("`bench/perf.sh --all` (--full, then --big)" if modes == ["full", "big"] else
           f"`bench/perf.sh` ({', '.join(how(m) for m in modes)})")
    L += [f"Measured by {cmd} on "
          f"{first['cpu']}, {first['cores']} cores, shared with other jobs; "
          + "; ".join(f"{r['mode']}: {r['date']}, commit {r['commit']}, sgemm peak "
                      f"{r['peak_gflops']:.1f} GFLOP/s (1 thread, best of "
                      + " / ".join(f"{s['gflops']:.1f}" for s in r["sgemm"]) + ")"
                      + blas_core(r["sgemm"]) + f", load average after {r['loadavg_after'][0]}"
                      for r in R) + " (commit: the one checked out when the run started).",
          "Raw results (every run, every step time): `docs/bench/perf/<mode>.json` and `.csv`. "
          "Binary: " + "; ".join(dict.fromkeys(binary(r["build"]) for r in R)) + ".", ""]
    L += ["calmflow: `calmflow train` built Release (-O2, OpenBLAS 0.3.21 pthread), "
          "`-net_dropout 0`, defaults otherwise (gauss head, AdamW lr 1e-3, clip 1, bridge "
          "paths, `-data_name gaussian -data_dim D`). PyTorch: Debian python3-torch "
          f"{torch_version(R)} on the same OpenBLAS, `bench/torch_model.py`, which runs "
          "the modules of `tests/reference/make_reference.py` (the independent PyTorch build of "
          "the network that the reference tests check calmflow against) in float32, with "
          "AdamW (foreach), `clip_grad_norm_(1.0)` and a fresh batch every step. "
          "N 16 time points; batch = paths per step (sequences = paths / P); T = N P S tokens "
          "per sequence; tokens per step = paths x N x S.", ""]
    for r in R:
        od = [x["others_during"] for x in r["runs"]]
        nd = sum(1 for x in od if x > r["disturbed"])
        L += [f"Load ({r['mode']}): other processes used a median {med(od):.2f} cores (max "
              f"{max(od):.2f}) of the {r['cores']} during the {len(od)} runs; {nd} runs were "
              f"disturbed (> {r['disturbed']} cores; each repeated once while a budget of 10 "
              "retries lasted). Every configuration's variants ran side by side, in turn, so "
              "the ratios are fairer than the absolute times; the two-thread variants suffer "
              "most from other load.", ""]
    cnt, seen = [], set()
    for r in R:
        for c in r["counts"]:
            if c["size"] in seen:
                continue
            seen.add(c["size"])
            k = c["count"]
            cnt.append(f"{c['size']} (layers:H:heads{':paths' if c['size'].count(':') > 2 else ''})"
                       f" at D 100, S 1: torch {k['params']:,}, calmflow {k['calmflow_params']:,}"
                       f" ({'every tensor name and shape equal' if k['ok'] else 'DIFFER'})")
    L += ["Parameter counts (checked once per size, calmflow's checkpoint against the torch "
          "model): " + "; ".join(cnt) + ".", ""]

    # ---- training
    L += ["## Training step, one thread", "",
          "Median step time (forward, backward, clipping, AdamW; the first "
          + (str(first["warm"]) if len({r["warm"] for r in R}) == 1
             else " / ".join(f"{r['warm']} ({r['mode']})" for r in R))
          + " steps of every run left out; the median over the runs' medians), "
          "tokens/s, MFU = model FLOPs per step / step time / sgemm peak. speed-up = torch step "
          "time / calmflow step time (throughput ratio).", "",
          "| size | D | S | P | paths | T | calmflow ms | torch ms | speed-up | calmflow tok/s | "
          "torch tok/s | calmflow MFU | torch MFU | GFLOP/step | runs (quiet) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cid in ids:
        c, t = get("train", cid, "cf1"), get("train", cid, "torch1")
        if c is None:
            continue
        if "error" in c or t is None or "error" in t:
            L.append(f"| {cid} | failed: {(c.get('error') or (t or {}).get('error'))} |")
            continue
        L.append(f"| L{c['L']} H{c['H']} h{c['NH']} | {c['D']} | {c['S']} | {c['P']} | "
                 f"{c['batch']} | {c['T']} | {fmt_ms(c['step_s'])} | {fmt_ms(t['step_s'])} | "
                 f"{t['step_s'] / c['step_s']:.2f}x | {num(c['tokens_per_s'])} | "
                 f"{num(t['tokens_per_s'])} | {100 * c['mfu']:.0f}% | {100 * t['mfu']:.0f}% | "
                 f"{c['flops_per_step'] / 1e9:.2f} | {c['runs_ok']} ({c['runs_quiet']}) / "
                 f"{t['runs_ok']} ({t['runs_quiet']}) |")
    L += ["", "runs (quiet): runs that finished, and of those the ones during which other "
          f"processes used at most {first['disturbed']} cores (the medians use the quiet runs "
          "where a row has any).", ""]

    t2 = [cid for cid in ids if get("train", cid, "cfdp2")]
    if t2:
        od = [x["others_during"] for r in R for x in r["runs"]
              if x["variant"] in ("cfdp2", "cfblas2", "torch2")]
        busy = (f"Other processes used a median {med(od):.2f} cores during these runs: with "
                "less than a second core free, this table shows how each runtime copes with "
                "contention, not how it scales. " if od and med(od) > 0.5 else "")
        L += ["## Training step, two threads", "", busy +
              "cfdp2: 2 MPI ranks, data parallel, 1 OpenBLAS thread each (gradient all-reduce "
              "included); cfblas2: 1 rank, 2 OpenBLAS threads; torch2: torch.set_num_threads(2) "
              "and OPENBLAS_NUM_THREADS=2 (torch's OpenMP pool and OpenBLAS's pthread pool are "
              "separate; both may spin). MFU against 2 x the one-thread sgemm peak; scaling = "
              "one-thread step time / two-thread step time.", "",
              "| size | D | S | P | cf1 ms | cfdp2 ms | cfblas2 ms | torch1 ms | torch2 ms | "
              "cfdp2 scaling | cfblas2 scaling | torch2 scaling | best cf / torch2 | "
              "cfdp2 MFU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for cid in t2:
            v = {k: get("train", cid, k) for k in ("cf1", "cfdp2", "cfblas2", "torch1", "torch2")}
            if any(x is None or "error" in x for x in v.values()):
                L.append(f"| {cid} | failed or missing: "
                         + ", ".join(k for k, x in v.items() if x is None or "error" in x) + " |")
                continue
            c = v["cf1"]
            best = min(v["cfdp2"]["step_s"], v["cfblas2"]["step_s"])
            L.append(f"| L{c['L']} H{c['H']} | {c['D']} | {c['S']} | {c['P']} | "
                     + " | ".join(fmt_ms(v[k]["step_s"]) for k in
                                  ("cf1", "cfdp2", "cfblas2", "torch1", "torch2"))
                     + f" | {c['step_s'] / v['cfdp2']['step_s']:.2f}x | "
                     f"{c['step_s'] / v['cfblas2']['step_s']:.2f}x | "
                     f"{v['torch1']['step_s'] / v['torch2']['step_s']:.2f}x | "
                     f"{v['torch2']['step_s'] / best:.2f}x | {100 * v['cfdp2']['mfu']:.0f}% |")
        L.append("")

    # ---- rollout
    if rids:
        L += ["## Rollout (sampling), one thread", "",
              "samples/s = trajectories finished (N points each) per second of the rollout "
              "(model loading and start-up left out). calmflow KV: `calmflow sample` "
              "(-sample_kvcache 1: each step feeds only the newest point's P S tokens); "
              "calmflow recompute: -sample_kvcache 0; torch: `torch_model.py rollout`, which "
              "feeds the whole prefix every step (the reference has no KV cache), in "
              "torch.inference_mode. Same batch (sequences per model call) on both sides. "
              f"At N {first['n']} a rollout with the KV cache feeds {first['n'] - 1} points per "
              f"trajectory, recomputing feeds 1 + 2 + ... + {first['n'] - 1} = "
              f"{first['n'] * (first['n'] - 1) // 2}: "
              f"{first['n'] // 2}x the work in the linear layers (attention, quadratic in the "
              f"prefix: about {(2 * first['n'] - 1) / 3:.0f}x). So, where the linear layers "
              f"dominate, KV / torch is at most about {first['n'] // 2} x (calmflow recompute "
              "/ torch), and a 10x target needs calmflow's recompute to beat torch's by "
              f"{10 / (first['n'] // 2):.2f}x or more.", "",
              "| size | D | S | P | batch | calmflow KV | calmflow recompute | torch recompute | "
              "KV / torch | KV / calmflow recompute | calmflow recompute / torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for cid in rids:
            k, rc, t = (get("rollout", cid, v) for v in ("cfkv", "cfrc", "torch"))
            if any(x is None or "error" in x for x in (k, rc, t)):
                L.append(f"| {cid} | failed: "
                         + "; ".join(str(x.get("error")) for x in (k, rc, t) if x and "error" in x)
                         + " |")
                continue
            L.append(f"| L{k['L']} H{k['H']} | {k['D']} | {k['S']} | {k['P']} | {k['batch']} | "
                     f"{num(k['samples_per_s'])} | {num(rc['samples_per_s'])} | "
                     f"{num(t['samples_per_s'])} | {k['samples_per_s'] / t['samples_per_s']:.1f}x"
                     f" | {k['samples_per_s'] / rc['samples_per_s']:.1f}x"
                     f" | {rc['samples_per_s'] / t['samples_per_s']:.2f}x |")
        L.append("")

    # ---- profiles
    prof = [p for r in R for p in r.get("profiles", [])]
    if prof:
        L += ["## Where calmflow's time goes", "",
              "`perf record -F 999` of one `calmflow train` run per size (D 2, S 1, P 8, "
              f"{first['results'][0]['batch'] if first['results'] else 64} paths per step) and "
              "of one `calmflow sample` run from it (KV cache, batch 64; perf.sh says how many "
              "samples); the whole "
              "process, start-up and the final checkpoint included; flat profile by symbol (the "
              "top 60), grouped; and the share of the run in PETSc's -log_view events.", ""]
        for p in prof:
            ev, tot = p["events"], p["seconds"] or 1.0
            ph = ", ".join(f"{k[2:]} {100 * v['seconds'] / tot:.0f}%" for k, v in ev.items()
                           if v["seconds"] / tot >= 0.005)
            n = next(iter(ev.values()))["count"] if ev else 0
            what = (f"`calmflow train`, {n} steps" if p.get("what", "train") == "train"
                    else "`calmflow sample`")
            L += [f"**{p['size']}**, {what} ({tot:.1f} s; other processes used "
                  f"{p['busy_before']} cores before it)" + (f": {ph}." if ph else "."), ""]
            grp = {}
            for x in p["symbols"]:
                grp[group(x)] = grp.get(group(x), 0.0) + x["pct"]
            L += ["| group | share | top symbols |", "|---|---|---|"]
            for g, v in sorted(grp.items(), key=lambda kv: -kv[1]):
                top = [f"{x['symbol']} {x['pct']:.1f}%" for x in p["symbols"] if group(x) == g][:4]
                L.append(f"| {g} | {v:.1f}% | {', '.join(top)} |")
            L.append("")

    # ---- memory
    L += ["## Peak memory per rank", "",
          "Peak RSS (getrusage, the largest rank) of the one-thread runs and of cfdp2, against "
          "the analytic size: state = 16 bytes per parameter (float32 parameters, gradients, "
          "AdamW m and v) plus the activations a backward pass needs (formula below) for the "
          "rank's sequences. model RSS = peak RSS - the baseline RSS of a tiny model run the "
          "same way (calmflow: MPI, PETSc, HDF5, OpenBLAS; torch: the interpreter and torch): "
          + ", ".join(f"{k} {v / mib:.0f} MiB" for k, v in first["baseline"].items()) + ". "
          "calmflow heap = the most bytes calmflow's own allocations held at once (summary.json "
          "heap_peak; blank for runs of binaries that did not report it): the model RSS less "
          "what the libraries touch (OpenBLAS's packing buffers, malloc's arenas) and less the "
          "run-to-run noise of RSS, about 1 MiB.", "",
          "| size | D | S | P | paths (1 rank) | state MiB | activations MiB | analytic MiB | "
          "calmflow RSS | calmflow model RSS / analytic | calmflow heap / analytic | dp2 RSS per "
          "rank | dp2 model RSS / analytic | torch RSS | torch model RSS / analytic |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cid in ids:
        c, t, p = (get("train", cid, v) for v in ("cf1", "torch1", "cfdp2"))
        if c is None or "error" in c or "peak_rss" not in c:
            continue
        an = c["analytic_state_bytes"] + c["analytic_act_bytes"]
        cells = [f"L{c['L']} H{c['H']}", c["D"], c["S"], c["P"], c["batch"],
                 f"{c['analytic_state_bytes'] / mib:.1f}", f"{c['analytic_act_bytes'] / mib:.1f}",
                 f"{an / mib:.1f}", f"{c['peak_rss'] / mib:.0f}",
                 f"{(c['peak_rss'] - c['baseline_rss']) / an:.2f}",
                 f"{c['heap_peak'] / an:.2f}" if c.get("heap_peak") else ""]
        if p and "error" not in p and "peak_rss" in p:
            anp = p["analytic_state_bytes"] + p["analytic_act_bytes"]
            cells += [f"{p['peak_rss'] / mib:.0f}",
                      f"{(p['peak_rss'] - p['baseline_rss']) / anp:.2f}"]
        else:
            cells += ["", ""]
        if t and "error" not in t:
            cells += [f"{t['peak_rss'] / mib:.0f}",
                      f"{(t['peak_rss'] - t['baseline_rss']) / an:.2f}"]
        else:
            cells += ["", ""]
        L.append("| " + " | ".join(map(str, cells)) + " |")
    L.append("")
    ms = next((r["memory_sh"] for r in R if r.get("memory_sh")), None)
    if ms:
        L += ["Parameter-dominated model from `bench/memory.sh` (H 1024, 4 layers, 8 heads, 8 "
              f"tokens per sequence, 8 paths per step; {ms['date']}, commit {ms['commit']}), "
              "where the state is nearly all of the analytic size: peak RSS against calmflow's "
              "state bytes (parameters + gradients + AdamW moments of the largest rank) and "
              "against state + baseline RSS.", "",
              "| layout | ranks | peak RSS MiB | state MiB | RSS / state | RSS / (state + "
              "baseline) |", "|---|---|---|---|---|---|"]
        b = first["baseline"]["calmflow"]
        for name, r in ms["runs"].items():
            L.append(f"| {name} | {r['ranks']} | {r['peak_rss'] / mib:.0f} | "
                     f"{r['state_bytes_max'] / mib:.0f} | "
                     f"{r['peak_rss'] / r['state_bytes_max']:.2f}"
                     f" | {r['peak_rss'] / (r['state_bytes_max'] + b):.2f} |")
        L.append("")

    # ---- targets
    L += ["## Against the targets", ""]
    L += targets(ids, rids, get, first, R)
    L += ["", "Beside this page: docs/bench/gemm-floor.md (the sgemm floor of a training step on "
          "its exact shapes) and docs/bench/rowdet-rate.md (the sampling linear layer against "
          "sgemm)."]
    L += [""] + coverage(R)
    L += ["", "## Formulas", "",
          "Per sequence, with J = N P points, T = J S tokens, SH = S H, I = max(SH, D), "
          "Dout = 2D (gauss head), ffn = 4H, L layers:", "",
          "- forward FLOPs F = 2J(D SH + SH^2) (encoder) + L [T (8H^2 + 4H ffn) + 2T^2 H] "
          "(qkv, out, fc1, fc2; causal attention q k^T and p v, half of T x T) + 2J(SH I + I^2 "
          "+ I Dout) (decoder); a training step is 3F per sequence (backward = 2F). This is "
          "`cf_model_flops` (src/model/model.c) for the gauss head; the benchmark checks the "
          "two agree. LayerNorms, softmax, GELU, the loss and the optimizer are not counted.",
          "- MFU = 3F x sequences / step time / (sgemm peak x cores): the sgemm peak is "
          "`bench/sgemm_peak.c` (cblas_sgemm 512^3, best round), measured at the start and the "
          "end of the run; the larger is used.",
          "- analytic memory = 16 x parameters + 4 bytes x sequences per rank x [2JD (z, y) + "
          "J(2SH + 1) (encoder) + L T (7H + 2ffn + heads T + 1) (per layer: normalized input "
          "and 1/std, ln1 and ln2 outputs, qkv, attention output, fc1 and GELU outputs, "
          "attention probabilities) + T(2H + 1) (final LN) + J(4I + 2 + Dout) (decoder) + "
          "max(T(H + "
          "max(ffn, 3H)), J(max(Dout, I) + I)) + T^2 (the backward's working set: the larger of "
          "the blocks' residual gradient and widest intermediate gradient and the decoder's "
          "output gradient and hidden gradient; the decoder term, missing before 2026-11-30, "
          "decides at D = 1000)]. calmflow keeps the minimal 15H + heads T + 1 floats per token "
          "and layer plus the stage's input (model.c act_layout: ln1 and ln2 share the "
          "normalized input, fc1's output and Phi are kept and the GELU output recomputed in "
          "backward, the later blocks' inputs live in backward scratch), and its backward "
          "scratch is three buffers shared by gradients never live at once. Binaries before "
          "2026-11-30 kept 16H + heads T + 1 per layer and a separate buffer per gradient; "
          "earlier ones 21H + heads T + 2.", ""]
    return write(a.md, L)


def coverage(R):
    """What of the issue's grid (3 sizes, D 2 / 100 / 1000, S 1 / 4, P 1 / 8) these results
    hold, and what they leave out."""
    have = {}
    for r in R:
        for g in r["results"]:
            if g["kind"] == "train" and g["variant"] == "cf1" and "step_s" in g:
                have.setdefault((g["L"], g["H"]), set()).add((g["D"], g["S"], g["P"], g["batch"]))
    out = ["## Coverage", ""]
    for (Lr, H, NH) in ((2, 64, 2), (2, 256, 8), (12, 768, 12)):
        h = have.get((Lr, H))
        if not h:
            out.append(f"- L{Lr} H{H} ({NH} heads): not measured here (`bench/perf.sh "
                       f"{'--big' if Lr == 12 else '--full'}`).")
            continue
        ds = sorted({x[0] for x in h})
        miss = [D for D in (2, 100, 1000) if D not in ds]
        paths = sorted({x[3] for x in h})
        out.append(f"- L{Lr} H{H} ({NH} heads): D {', '.join(map(str, ds))}, "
                   f"{len(h)} (D, S, P) configurations of the {4 * len(ds)} at these D, "
                   f"{'/'.join(map(str, paths))} paths per step"
                   + (f"; D {', '.join(map(str, miss))} not measured" if miss else "") + ".")
    return out


def binary(b):
    """The calmflow binary measured: path, build time, and whether the tree had moved on."""
    t = f"{b['binary']} built {b['binary_mtime']}"
    n = b.get("newer_sources")
    if n:
        t += f" ({n} source files changed after the build: an earlier state of the tree)"
    return t


def torch_version(R):
    for r in R:
        for g in r["runs"]:
            v = (g.get("result") or {}).get("torch")
            if v:
                return v
    return "?"


def targets(ids, rids, get, first, R):
    out = []
    m = [get("train", c, "cf1") for c in ids]
    m = [g for g in m if g and "mfu" in g and g["H"] >= 256]
    if m:
        best = max(m, key=lambda g: g["mfu"])
        worst = min(m, key=lambda g: g["mfu"])
        ok = all(g["mfu"] >= 0.8 for g in m)
        out.append(f"- MFU >= 80% of the sgemm peak at H >= 256, one thread: "
                   f"{'met' if ok else 'NOT met'}; calmflow {100 * worst['mfu']:.0f}% "
                   f"({worst['id']}) to {100 * best['mfu']:.0f}% ({best['id']}).")
    sp = []
    for c in ids:
        a, b = get("train", c, "cf1"), get("train", c, "torch1")
        if a and b and "step_s" in a and "step_s" in b and a["H"] == 64:
            sp.append((b["step_s"] / a["step_s"], c))
    if sp:
        ok = all(x >= 2.5 for x, _ in sp)
        out.append(f"- training throughput >= 2.5x torch at H 64, one thread: "
                   f"{'met' if ok else 'NOT met'}; {min(sp)[0]:.2f}x ({min(sp)[1]}) to "
                   f"{max(sp)[0]:.2f}x ({max(sp)[1]}).")
    ro = []
    for c in rids:
        k, t = get("rollout", c, "cfkv"), get("rollout", c, "torch")
        if k and t and "samples_per_s" in k and "samples_per_s" in t:
            ro.append((k["samples_per_s"] / t["samples_per_s"], c))
    if ro:
        ok = all(x >= 10 for x, _ in ro)
        out.append(f"- rollout >= 10x the torch recompute rollout at N 16: "
                   f"{'met' if ok else 'NOT met'}; {min(ro)[0]:.1f}x ({min(ro)[1]}) to "
                   f"{max(ro)[0]:.1f}x ({max(ro)[1]}).")
    def mem(variant):  # (model RSS / analytic, configuration, heap / analytic or None)
        out = []
        for c in ids:
            g = get("train", c, variant)
            if g and "peak_rss" in g:
                an = g["analytic_state_bytes"] + g["analytic_act_bytes"]
                out.append(((g["peak_rss"] - g["baseline_rss"]) / an, c,
                            g["heap_peak"] / an if g.get("heap_peak") else None))
        return out

    mm, dp = mem("cf1"), mem("cfdp2")
    if mm:
        ok = all(x <= 1.2 for x, _, _ in mm)
        out.append(f"- memory within 1.2x of the analytic size (peak RSS less the baseline), "
                   f"one rank: {'met' if ok else 'NOT met'}; {min(mm)[0]:.2f}x ({min(mm)[1]}) "
                   f"to {max(mm)[0]:.2f}x ({max(mm)[1]}).")
        hh = [(h, c) for _, c, h in mm if h is not None]
        if hh:
            out.append(f"- calmflow's own heap against the analytic size: {min(hh)[0]:.2f}x "
                       f"({min(hh)[1]}) to {max(hh)[0]:.2f}x ({max(hh)[1]}).")
    if dp:
        ok = all(x <= 1.2 for x, _, _ in dp)
        hp = [h for _, _, h in dp if h is not None]
        out.append(f"- the same per rank with 2 ranks data parallel (cfdp2): "
                   f"{'met' if ok else 'NOT met'}; {min(dp)[0]:.2f}x ({min(dp)[1]}) to "
                   f"{max(dp)[0]:.2f}x ({max(dp)[1]})"
                   + (f"; calmflow's heap {min(hp):.2f}x to {max(hp):.2f}x, the rest is "
                      "MPI's (its shared-memory segments, and the non-blocking gradient "
                      "all-reduce's temporaries: at most 4 buckets of -par_bucket_mb in flight "
                      "since 2026-11-30, the whole gradient before)" if hp else "")
                   + ".")
    ms = next((r["memory_sh"] for r in R if r.get("memory_sh")), None)
    if ms:
        b = first["baseline"]["calmflow"]
        x = [r["peak_rss"] / (r["state_bytes_max"] + b) for r in ms["runs"].values()]
        out.append(f"- where the parameters dominate (bench/memory.sh, every layout): peak RSS "
                   f"{min(x):.2f}x to {max(x):.2f}x of calmflow's state + the baseline RSS.")
    return out


def write(path, L):
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("plan")
    for k in ("sizes", "ds", "ss", "ps", "threads2-ds", "roll-ds"):
        q.add_argument("--" + k, default="")
    q.add_argument("--kinds", default="train rollout")
    for k, d in (("n", 16), ("batch", 64), ("steps", 12), ("roll-min-batch", 8)):
        q.add_argument("--" + k, type=int, default=d)
    for k, d in (("peak", 100.0), ("roll-budget", 4.0), ("step-budget", 40.0)):
        q.add_argument("--" + k, type=float, default=d)
    q = sub.add_parser("collect")
    q.add_argument("--dir", required=True)
    q.add_argument("--mode", required=True)
    q.add_argument("--warm", type=int, default=2)
    q.add_argument("--n", type=int, default=16)
    q.add_argument("--disturbed", type=float, default=0.2)
    q.add_argument("--memory", default="")
    q.add_argument("--json", required=True)
    q.add_argument("--csv", required=True)
    q = sub.add_parser("report")
    q.add_argument("--results", nargs="+", required=True)
    q.add_argument("--md", required=True)
    a = p.parse_args()
    return {"plan": cmd_plan, "collect": cmd_collect, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
