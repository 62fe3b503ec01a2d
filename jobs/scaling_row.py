#!/usr/bin/env python3
"""scaling_row.py: one row of a scaling study, from a finished calmflow train run, appended to
a JSONL results table. jobs/scaling.sbatch calls it after every run; standard library only, so
any python3 on a compute node will do.

Usage: scaling_row.py TABLE RUN_DIR --mode strong|weak --exit-code RC [--study NAME]
                      [--batch B] [--job JOBID] [--peak-gflops G]

Row fields (null when unknown):
  study, mode, layout ("dp2.tp1.pp1.cp1"), ranks, dp, tp, pp, cp, batch, steps,
  tokens_per_s         steady tokens/s of summary.json (the first step and the checkpoints left out)
  step_seconds         seconds of one steady step (tokens per step / steady tokens/s)
  mfu                  model FLOPs per step / step_seconds / (ranks * peak); needs --peak-gflops
                       (peak GFLOP/s of one rank), else null
  comm_seconds_per_step  the sum over dp/tp/pp/cp of summary.json's comm_seconds_per_step (each
                       the largest over the ranks)
  comm_share           comm_seconds_per_step / step_seconds
  ckpt_seconds         summary.json's ckpt_seconds (rank 0's wall time writing checkpoints, all
                       of the run's); from an older summary without it: "seconds" (the whole
                       loop, final checkpoint included) minus the elapsed seconds log.jsonl
                       records at the last step, null when the log lacks that step.
  seconds, final_loss, peak_rss, exit_code, job, run_dir, time (UTC)
A run that failed (exit code not 0, or no summary.json) still gets a row, with the figures null.
"""
import argparse
import fcntl
import json
import os
import sys
import time


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def last_log_entry(path):
    """The last complete JSON line of log.jsonl, or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def build_row(args):
    s = read_json(os.path.join(args.run_dir, "summary.json"))
    row = {
        "study": args.study, "mode": args.mode, "layout": None, "ranks": None, "dp": None,
        "tp": None, "pp": None, "cp": None, "batch": args.batch, "steps": None,
        "tokens_per_s": None, "step_seconds": None, "mfu": None, "comm_seconds_per_step": None,
        "comm_share": None, "ckpt_seconds": None, "seconds": None, "final_loss": None,
        "peak_rss": None, "exit_code": args.exit_code, "job": args.job, "run_dir": args.run_dir,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.exit_code != 0 or not isinstance(s, dict):
        return row
    for k in ("ranks", "dp", "tp", "pp", "cp", "steps", "seconds", "final_loss", "peak_rss"):
        row[k] = s.get(k)
    if None not in (row["dp"], row["tp"], row["pp"], row["cp"]):
        row["layout"] = "dp%d.tp%d.pp%d.cp%d" % (row["dp"], row["tp"], row["pp"], row["cp"])
    steady, overall = s.get("steady_tokens_per_s"), s.get("tokens_per_s")
    seconds, steps = s.get("seconds"), s.get("steps")
    row["tokens_per_s"] = steady
    if steady and overall and seconds and steps:
        # a fresh run: tokens_per_s = tokens_per_step * steps / seconds
        tokens_per_step = overall * seconds / steps
        step_s = tokens_per_step / steady
        row["step_seconds"] = step_s
        comm = s.get("comm_seconds_per_step")
        if isinstance(comm, dict):
            row["comm_seconds_per_step"] = sum(float(v) for v in comm.values())
            row["comm_share"] = row["comm_seconds_per_step"] / step_s
        flops = s.get("flops_per_step")
        if args.peak_gflops and flops and row["ranks"]:
            row["mfu"] = flops / step_s / (row["ranks"] * args.peak_gflops * 1e9)
    last = last_log_entry(os.path.join(args.run_dir, "log.jsonl"))
    if s.get("ckpt_seconds") is not None:
        row["ckpt_seconds"] = float(s["ckpt_seconds"])
    elif seconds is not None and last and last.get("step") == steps and "seconds" in last:
        row["ckpt_seconds"] = max(0.0, seconds - float(last["seconds"]))
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table")
    p.add_argument("run_dir")
    p.add_argument("--mode", required=True, choices=("strong", "weak"))
    p.add_argument("--exit-code", type=int, required=True)
    p.add_argument("--study", default="scaling")
    p.add_argument("--batch", type=int)
    p.add_argument("--job")
    p.add_argument("--peak-gflops", type=float)
    args = p.parse_args()
    row = build_row(args)
    line = json.dumps(row) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
    with open(args.table, "a") as f:  # several jobs may append at once: one locked write each
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
    sys.stdout.write(line)


if __name__ == "__main__":
    main()
