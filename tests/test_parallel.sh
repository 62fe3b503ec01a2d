#!/usr/bin/env bash
# test_parallel.sh: the central guarantee of the process grid: for the same seed, global batch
# and config, the loss at every step and the parameters after 5 steps at any layout equal the
# 1-rank run to round-off (relative 1e-5). Layouts (4 ranks are oversubscribed on 2 cores):
# dp2, tp2, pp2, cp2, tp2*pp2, pp2*cp2, dp2*tp2, tp2*cp2, pp4, cp4, and dp2*tp2 with ZeRO-1, with
# S = 2 spatial tokens, P = 2 trajectories, dropout on, for the gauss head; a subset for the vae
# head (latent noise and KL split by context ranks). Also: no allocation inside a step; a
# checkpoint written at one layout resumes at another (3 steps at tp2*pp2, then 2 more at cp2
# or 1 rank equal 5 steps at 1 rank); its model samples on one rank like the 1-rank model. The
# parameters are compared tensor by tensor as ||a - b|| / ||b||, except the attention key
# biases, whose exact gradient is zero (see rel() below).
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fail() { echo "FAIL $*"; exit 1; }

COMMON=(-train_steps 5 -train_batch 16 -flow_trajectories 2 -flow_time_points 5
        -flow_spatial_tokens 2 -net_hidden 16 -net_heads 4 -net_layers 4 -train_log_every 1
        -train_quiet 1 -data_source 8gaussians -train_warmup 2 -seed 5 -train_microbatches 4
        -par_bucket_mb 0.002 -train_ckpt_every 0 -net_dropout 0.1)
run() { # name ranks options...
  local name=$1 np=$2
  shift 2
  mpiexec -n "$np" "$CF" train "${COMMON[@]}" "$@" -run_dir "$T/$name" >"$T/$name.log" 2>&1 ||
    { cat "$T/$name.log"; fail "layout $name: command failed"; }
}
GAUSS="base:1: dp2:2: tp2:2:-par_tp,2 pp2:2:-par_pp,2 cp2:2:-par_cp,2
       tp2pp2:4:-par_tp,2,-par_pp,2 pp2cp2:4:-par_pp,2,-par_cp,2 dp2tp2:4:-par_tp,2
       tp2cp2:4:-par_tp,2,-par_cp,2 pp4:4:-par_pp,4 cp4:4:-par_cp,4
       dp2tp2z:4:-par_tp,2,-par_zero,1"
VAE="base:1: tp2pp2:4:-par_tp,2,-par_pp,2 pp2cp2:4:-par_pp,2,-par_cp,2 cp4:4:-par_cp,4
     dp2tp2z:4:-par_tp,2,-par_zero,1"
for head in gauss vae; do
  list=$GAUSS
  [ $head = vae ] && list=$VAE
  names=()
  for l in $list; do
    IFS=: read -r name np opts <<<"$l"
    # shellcheck disable=SC2086
    run "$head-$name" "$np" -flow_head $head ${opts//,/ }
    names+=("$name")
  done
  $PY - "$T" $head "${names[@]}" <<'PYEOF' || fail "layout changed the numbers ($head head)"
import json, sys
import h5py, numpy as np
t, head, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def log(n):
    return [json.loads(l) for l in open(f"{t}/{head}-{n}/log.jsonl")]
def params(n):
    with h5py.File(f"{t}/{head}-{n}/ckpt/step-0000005.h5", "r") as f:
        return {k: f["params"][k][...].astype(np.float64) for k in f["params"]}
H, heads = 16, 4
dh = H // heads
def rel(name, a, b):
    # The key bias has no gradient in exact arithmetic (softmax ignores a constant added to
    # every score), so what Adam makes of its round-off noise is noise of size ~1e-8: it is
    # held to an absolute bound and left out of the relative comparison.
    if name.endswith("attn.qkv.bias"):
        k = np.zeros(a.shape, bool)
        for h in range(heads):
            k[h * 3 * dh + dh:h * 3 * dh + 2 * dh] = True
        assert np.abs(a[k]).max() < 1e-6 and np.abs(b[k]).max() < 1e-6, (name, a[k], b[k])
        a, b = a[~k], b[~k]
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
base, pbase = log("base"), params("base")
assert len(base) == 5 and base[-1]["loss"] < base[0]["loss"], "the 1-rank run did not train"
ok = True
for n in names[1:]:
    lg = log(n)
    assert len(lg) == 5, (n, len(lg))
    lw = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(lg, base))
    p = params(n)
    assert sorted(p) == sorted(pbase), f"{n}: checkpoint tensors differ"
    pw, pk = max((rel(k, p[k], pbase[k]), k) for k in pbase)
    allocs = max(l["step_allocs"] for l in lg)
    good = lw <= 1e-5 and pw <= 1e-5 and allocs == 0
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} {head} {n:8s} loss rel {lw:.1e}  params rel {pw:.1e} "
          f"(worst {pk})  step_allocs {allocs}")
sys.exit(0 if ok else 1)
PYEOF
done
# Resharding: 3 steps at tp2*pp2, resumed to 5 at cp2 and at 1 rank, equal the 5-step 1-rank run.
for to in cp2:2:-par_cp,2 one:1:; do
  IFS=: read -r name np opts <<<"$to"
  run "gauss-rs-$name" 4 -flow_head gauss -par_tp 2 -par_pp 2 -train_steps 3
  # shellcheck disable=SC2086
  run "gauss-rs-$name" "$np" -flow_head gauss ${opts//,/ }
done
$PY - "$T" <<'PYEOF' || fail "a run resumed at another layout differs from the uninterrupted one"
import json, sys
import h5py, numpy as np
t = sys.argv[1]
def params(run):
    with h5py.File(f"{t}/{run}/ckpt/step-0000005.h5", "r") as f:
        return {k: f["params"][k][...].astype(np.float64) for k in f["params"]}
base = params("gauss-base")
for name in ("cp2", "one"):
    p = params(f"gauss-rs-{name}")
    worst = max(np.linalg.norm(p[k] - base[k]) / max(np.linalg.norm(base[k]), 1e-30)
                for k in base if not k.endswith("attn.qkv.bias"))
    lg = [json.loads(l)["loss"] for l in open(f"{t}/gauss-rs-{name}/log.jsonl")]
    lb = [json.loads(l)["loss"] for l in open(f"{t}/gauss-base/log.jsonl")]
    lw = max(abs(a - b) / abs(b) for a, b in zip(lg, lb))
    print(f"tp2*pp2 -> {name}: 5-step loss rel {lw:.1e}, params rel {worst:.1e} ({len(lg)} log lines)")
    assert len(lg) == 5 and lw <= 1e-5 and worst <= 1e-5
PYEOF
# A model trained split four ways samples on one rank like the one trained on one rank.
for r in base tp2pp2; do
  mpiexec -n 1 "$CF" sample -run_dir "$T/gauss-$r" -sample_n 64 -sample_out "$T/s-$r.h5" \
    >"$T/s.log" 2>&1 || { cat "$T/s.log"; fail "sampling the $r run failed"; }
done
$PY - "$T" <<'PYEOF' || fail "samples from the tp2*pp2 model differ from the 1-rank model's"
import sys
import h5py, numpy as np
t = sys.argv[1]
a = h5py.File(f"{t}/s-base.h5", "r")["x"][...]
b = h5py.File(f"{t}/s-tp2pp2.h5", "r")["x"][...]
d = np.abs(a - b).max() / np.abs(a).max()
print(f"samples of the tp2*pp2 and 1-rank models: max relative difference {d:.1e}")
assert a.shape == b.shape and d < 1e-3, d
PYEOF
echo "all layouts agree with the 1-rank run"
