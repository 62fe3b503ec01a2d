#!/bin/bash
# test_plot.sh: analysis/plot_samples.py on fake run directories.
#   1. a full run dir (samples.h5 with /x and /traj, data.h5, log.jsonl, metrics.json
#      with w2_floor) -> a non-empty PNG at RUN_DIR/samples.png;
#   2. samples.h5 only (no /traj, no data, no log, no metrics), D = 3, and -o -> a PNG;
#   3. D = 1 with --data and a malformed log line -> a PNG;
#   4. no samples.h5 -> exit status 1 and exactly one line on stderr;
#   5. analysis/plot_scaling.py on the committed docs/bench/layouts.json -> a PNG.
# h5py and matplotlib come from scripts/install-deps.sh; without them this test fails.
set -u
src="${CF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
plot="$src/analysis/plot_samples.py"
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export MPLCONFIGDIR="$tmp/mpl"
fails=0
fail() {
  echo "FAIL: $*"
  fails=$((fails + 1))
}

if ! $py -c 'import h5py, matplotlib, numpy' 2>"$tmp/imp.err"; then
  echo "FAIL: h5py / matplotlib / numpy not importable by $py: $(tail -1 "$tmp/imp.err")"
  echo "      (scripts/install-deps.sh installs python3-h5py and python3-matplotlib)"
  exit 1
fi

# Fake run directories.
$py - "$tmp" <<'EOF' || { echo "FAIL: could not build the fake run directories"; exit 1; }
import json, os, sys
import h5py, numpy as np
tmp = sys.argv[1]
rng = np.random.default_rng(0)

def moons(n):
    t = rng.uniform(0, np.pi, n); up = rng.uniform(size=n) < 0.5
    x = np.where(up, np.cos(t), 1 - np.cos(t)); y = np.where(up, np.sin(t), 0.5 - np.sin(t))
    return (np.stack([x, y], 1) + 0.05 * rng.normal(size=(n, 2))).astype(np.float32)

# 1. full run: straight noisy paths from N(0, I) to the moons, 16 time points.
run = os.path.join(tmp, "full"); os.makedirs(run)
n, N = 500, 16
x0 = rng.normal(size=(n, 2)).astype(np.float32); x1 = moons(n)
t = np.linspace(0, 1, N)[None, :, None]
traj = ((1 - t) * x0[:, None] + t * x1[:, None]
        + 0.05 * np.sin(np.pi * t) * rng.normal(size=(n, N, 2))).astype(np.float32)
with h5py.File(os.path.join(run, "samples.h5"), "w") as f:
    f.create_dataset("x", data=traj[:, -1]); f.create_dataset("traj", data=traj)
    f.attrs["seed"] = 7; f.attrs["tau"] = 1.0; f["x"].attrs["steps"] = N
with h5py.File(os.path.join(run, "data.h5"), "w") as f:
    f.create_dataset("x", data=moons(800))
with open(os.path.join(run, "log.jsonl"), "w") as f:
    for s in range(0, 3000, 10):
        loss = 4.0 * np.exp(-s / 600) + 0.3 + 0.02 * rng.normal() ** 2
        f.write(json.dumps({"step": s, "loss": loss, "recon": 0.8 * loss, "kl": 0.2 * loss,
                            "lr": 1e-3, "tokens_per_s": 1e5, "seconds": s * 0.1}) + "\n")
with open(os.path.join(run, "metrics.json"), "w") as f:
    json.dump({"w2": 0.43, "w1": 0.37, "mmd2_rbf": 0.004, "mmd2_rbf_multi": 0.002,
               "energy": 0.01, "n_a": 500, "n_b": 800, "dim": 2, "w2_floor": 0.2174}, f)

# 2. samples only, D = 3.
run = os.path.join(tmp, "bare"); os.makedirs(run)
with h5py.File(os.path.join(run, "samples.h5"), "w") as f:
    f.create_dataset("x", data=rng.normal(size=(300, 3)).astype(np.float32))

# 3. D = 1, data elsewhere, a malformed log line, metrics without a floor.
run = os.path.join(tmp, "oned"); os.makedirs(run)
traj1 = np.cumsum(rng.normal(scale=0.2, size=(200, 10, 1)), axis=1).astype(np.float32)
with h5py.File(os.path.join(run, "samples.h5"), "w") as f:
    f.create_dataset("x", data=traj1[:, -1]); f.create_dataset("traj", data=traj1)
with h5py.File(os.path.join(tmp, "target1d.h5"), "w") as f:
    f.create_dataset("x", data=rng.normal(size=(400, 1)).astype(np.float32))
with open(os.path.join(run, "log.jsonl"), "w") as f:
    f.write('{"step": 0, "loss": 2.0}\nnot json\n{"step": 10, "loss": 1.5}\n{"step": 20, "loss": 1.1}\n')
with open(os.path.join(run, "metrics.json"), "w") as f:
    json.dump({"w2": 0.5, "n_a": 200, "n_b": 400, "dim": 1}, f)

os.makedirs(os.path.join(tmp, "empty"))
EOF

png_ok() { # FILE: exists, non-empty, PNG signature
  [ -s "$1" ] && [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]
}

# 1. full run, default output path
if $py "$plot" "$tmp/full" >"$tmp/1.out" 2>"$tmp/1.err"; then
  png_ok "$tmp/full/samples.png" || fail "full run: samples.png missing, empty or not a PNG"
else
  fail "full run: exit $?: $(cat "$tmp/1.err")"
fi

# 2. samples only, explicit -o
if $py "$plot" "$tmp/bare" -o "$tmp/bare.png" >"$tmp/2.out" 2>"$tmp/2.err"; then
  png_ok "$tmp/bare.png" || fail "samples-only run: bare.png missing, empty or not a PNG"
  [ -e "$tmp/bare/samples.png" ] && fail "samples-only run: -o ignored (wrote samples.png)"
else
  fail "samples-only run: exit $?: $(cat "$tmp/2.err")"
fi

# 3. D = 1 with --data
if $py "$plot" "$tmp/oned" --data "$tmp/target1d.h5" -o "$tmp/oned.png" >"$tmp/3.out" \
  2>"$tmp/3.err"; then
  png_ok "$tmp/oned.png" || fail "1-D run: oned.png missing, empty or not a PNG"
else
  fail "1-D run: exit $?: $(cat "$tmp/3.err")"
fi

# 4. no samples.h5: status 1, one stderr line, no PNG
$py "$plot" "$tmp/empty" >"$tmp/4.out" 2>"$tmp/4.err"
rc=$?
[ "$rc" -eq 1 ] || fail "missing samples.h5: exit status $rc, expected 1"
[ "$(wc -l <"$tmp/4.err")" -eq 1 ] || fail "missing samples.h5: stderr is not one line: $(cat "$tmp/4.err")"
grep -q "samples.h5" "$tmp/4.err" || fail "missing samples.h5: message does not name samples.h5"
[ -e "$tmp/empty/samples.png" ] && fail "missing samples.h5: a PNG was written anyway"

# 5. plot_scaling.py on the benchmark results in the tree
$py "$src/analysis/plot_scaling.py" "$src/docs/bench/layouts.json" -o "$tmp/scaling.png" \
  >/dev/null 2>"$tmp/5.err" && png_ok "$tmp/scaling.png" || fail "plot_scaling.py: $(cat "$tmp/5.err")"

if [ "$fails" -ne 0 ]; then
  echo "test_plot: $fails failures"
  exit 1
fi
echo "test_plot: ok"
