#!/usr/bin/env bash
# test_sample.sh: coordinator-scheduled sampling (rollout.h, samples.h) through the binary.
#  1. determinism: /x is bit-identical at 1, 2, 3 and 4 ranks (4 oversubscribed) and for
#     -sample_batch 1, 3 and 64, KV cache and recompute each (gauss head), and at 1 vs 3 ranks
#     with uneven batches for the vae, gmm, fm and cvae heads; /traj's last time point is /x;
#  2. kill and resume: a sampling job killed with SIGKILL midway leaves a file whose committed
#     samples are exactly the first samples of an uninterrupted run; -sample_resume 1 finishes
#     it and the file's /x equals the uninterrupted one bit for bit; resuming with other
#     options is refused with one line;
#  3. the run records how it was made (attribute config) and its figures (<out>.json);
#  4. model-parallel sampling: pipeline stages (pp2, dp2 x pp2, KV cache and recompute) give
#     /x bit-identical to 1 rank; tensor and context parallel (tp2, cp2, cp3, tp2 x cp2,
#     pp2 x tp2, both heads) agree with it to round-off, and at tp2 /x is bit-identical for
#     1 or 2 replicas and -sample_batch 1 or 3; a layout that does not fit is one error line.
set -u
CF=${CF_BINARY:?set by ctest}
T=$(mktemp -d)
trap 'kill -9 $BG 2>/dev/null; rm -rf "$T"' EXIT
BG=
PY=/usr/bin/python3
fail() { echo "FAIL $*"; exit 1; }
run() { "$@" >"$T/log" 2>&1 || { cat "$T/log"; fail "command failed: $*"; }; }

TR=(train -train_steps 30 -train_batch 32 -flow_trajectories 4 -flow_time_points 6
    -flow_spatial_tokens 2 -net_hidden 16 -net_heads 2 -net_layers 2 -train_quiet 1
    -data_source 8gaussians -seed 3)
run mpiexec -n 1 "$CF" "${TR[@]}" -flow_head gauss -run_dir "$T/g"
run mpiexec -n 1 "$CF" "${TR[@]}" -flow_head vae -run_dir "$T/v"
run mpiexec -n 1 "$CF" "${TR[@]}" -flow_head gmm -flow_gmm_k 4 -run_dir "$T/m"
run mpiexec -n 1 "$CF" "${TR[@]}" -flow_head fm -flow_fm_width 16 -flow_fm_steps 5 -run_dir "$T/f"
run mpiexec -n 1 "$CF" "${TR[@]}" -flow_head cvae -flow_cvae_dz 3 -run_dir "$T/c"

S=(sample -sample_n 41 -sample_quiet 1)
for kv in 1 0; do
  for np in 1 2 3 4; do
    run mpiexec -n $np "$CF" "${S[@]}" -run_dir "$T/g" -sample_kvcache $kv -sample_out "$T/g-kv$kv-np$np.h5"
  done
  for b in 1 3; do
    run mpiexec -n 2 "$CF" "${S[@]}" -run_dir "$T/g" -sample_kvcache $kv -sample_batch $b \
      -sample_traj 1 -sample_out "$T/g-kv$kv-b$b.h5"
  done
done
run mpiexec -n 1 "$CF" "${S[@]}" -run_dir "$T/v" -sample_batch 5 -sample_out "$T/v-np1.h5"
run mpiexec -n 3 "$CF" "${S[@]}" -run_dir "$T/v" -sample_batch 2 -sample_out "$T/v-np3.h5"
run mpiexec -n 1 "$CF" "${S[@]}" -run_dir "$T/m" -sample_out "$T/m-np1.h5"
run mpiexec -n 3 "$CF" "${S[@]}" -run_dir "$T/m" -sample_batch 2 -sample_out "$T/m-np3.h5"
for h in f c; do
  run mpiexec -n 1 "$CF" "${S[@]}" -run_dir "$T/$h" -sample_out "$T/$h-np1.h5"
  run mpiexec -n 3 "$CF" "${S[@]}" -run_dir "$T/$h" -sample_batch 2 -sample_out "$T/$h-np3.h5"
done
$PY - "$T" <<'PYEOF' || fail "samples depend on the rank count or the batch size"
import sys, h5py, numpy as np
t = sys.argv[1]
def x(f, d="x"):
    with h5py.File(f"{t}/{f}", "r") as h:
        assert int(h.attrs["complete"]) == 1 and int(h.attrs["n_done"]) == 41, f
        return h[d][...]
for kv in (1, 0):
    ref = x(f"g-kv{kv}-np1.h5")
    assert ref.shape == (41, 2) and np.std(ref) > 0.05, ref.shape
    for other in [f"g-kv{kv}-np{n}.h5" for n in (2, 3, 4)] + [f"g-kv{kv}-b{b}.h5" for b in (1, 3)]:
        assert np.array_equal(ref, x(other)), f"{other} differs from 1 rank, batch 64"
    tr = x(f"g-kv{kv}-b3.h5", "traj")
    assert tr.shape == (41, 6, 2) and np.array_equal(tr[:, -1], ref)
    print(f"gauss, {'KV cache' if kv else 'recompute'}: /x identical at 1-4 ranks and batch 1, 3, 64")
kvx, rex = x("g-kv1-np1.h5"), x("g-kv0-np1.h5")
d = np.abs(kvx - rex).max() / np.abs(rex).max()
print(f"KV cache vs recompute: max relative difference {d:.1e}")
assert d < 1e-5
assert np.array_equal(x("v-np1.h5"), x("v-np3.h5")), "vae samples differ between 1 and 3 ranks"
print("vae: /x identical at 1 rank batch 5 and 3 ranks batch 2")
gm = x("m-np1.h5")
assert np.std(gm) > 0.05 and np.array_equal(gm, x("m-np3.h5")), "gmm samples differ"
print("gmm: /x identical at 1 rank batch 64 and 3 ranks batch 2")
for h, name in (("f", "fm"), ("c", "cvae")):
    a = x(f"{h}-np1.h5")
    assert np.all(np.isfinite(a)) and np.std(a) > 0.05, f"{name} samples degenerate"
    assert np.array_equal(a, x(f"{h}-np3.h5")), f"{name} samples differ between 1 and 3 ranks"
    print(f"{name}: /x identical at 1 rank batch 64 and 3 ranks batch 2")
PYEOF

# 4. model-parallel layouts (rank count, name, options)
LAYS=("2 pp2 -par_pp 2" "4 dp2pp2 -par_pp 2" "2 tp2 -par_tp 2" "4 dp2tp2 -par_tp 2 -sample_batch 1"
      "2 cp2 -par_cp 2" "3 cp3 -par_cp 3" "4 tp2cp2 -par_tp 2 -par_cp 2")
for lay in "${LAYS[@]}"; do
  read -r n name opts <<<"$lay"
  # shellcheck disable=SC2086
  run mpiexec -n "$n" "$CF" "${S[@]}" -run_dir "$T/g" -sample_batch 3 $opts -sample_out "$T/lay-$name.h5"
done
run mpiexec -n 2 "$CF" "${S[@]}" -run_dir "$T/g" -sample_kvcache 0 -par_pp 2 -sample_out "$T/lay-pp2-re.h5"
run mpiexec -n 4 "$CF" "${S[@]}" -run_dir "$T/v" -par_pp 2 -par_tp 2 -sample_out "$T/lay-v-pp2tp2.h5"
if mpiexec --quiet -n 3 "$CF" "${S[@]}" -run_dir "$T/g" -par_pp 3 -sample_out "$T/bad.h5" \
     >"$T/out" 2>"$T/err"; then
  fail "sampling with -par_pp 3 on a 2-layer model was accepted"
fi
[ "$(wc -l <"$T/err")" -eq 1 ] && grep -q -- "-par_pp" "$T/err" && [ ! -e "$T/bad.h5" ] ||
  { cat "$T/err"; fail "a layout that does not fit: expected one line naming -par_pp, no file"; }
$PY - "$T" <<'PYEOF' || fail "model-parallel samples differ"
import sys, h5py, numpy as np
t = sys.argv[1]
def x(f):
    with h5py.File(f"{t}/{f}", "r") as h:
        assert int(h.attrs["complete"]) == 1, f
        return h["x"][...]
ref, rre, vref = x("g-kv1-np1.h5"), x("g-kv0-np1.h5"), x("v-np1.h5")
for f in ("lay-pp2.h5", "lay-dp2pp2.h5"):
    assert np.array_equal(ref, x(f)), f"{f}: pipeline stages changed the samples"
assert np.array_equal(rre, x("lay-pp2-re.h5")), "pp2 recompute differs from 1 rank"
print("pp2, dp2 x pp2 (KV cache and recompute): /x identical to 1 rank")
assert np.array_equal(x("lay-tp2.h5"), x("lay-dp2tp2.h5")), "tp2 depends on replicas or batch"
print("tp2: /x identical at 1 and 2 replicas, batch 3 and 1")
for f, r in [("lay-tp2.h5", ref), ("lay-cp2.h5", ref), ("lay-cp3.h5", ref),
             ("lay-tp2cp2.h5", ref), ("lay-v-pp2tp2.h5", vref)]:
    d = np.abs(x(f) - r).max() / np.abs(r).max()
    print(f"{f[4:-3]}: max relative difference to 1 rank {d:.1e}")
    assert d < 1e-5, f
PYEOF

# 2. kill and resume. The reference: one uninterrupted run.
K=(sample -run_dir "$T/g" -sample_n 60000 -sample_batch 2 -sample_kvcache 0 -sample_quiet 1)
run mpiexec -n 2 "$CF" "${K[@]}" -sample_out "$T/ref.h5"
# slowed down (10 ms per batch, values unchanged) so the kill lands midway on any machine
CF_FAULT='sample_batch:*:*:delay=0.01' mpiexec -n 2 "$CF" "${K[@]}" -sample_out "$T/cut.h5" \
  >"$T/bg.log" 2>&1 &
BG=$!
$PY - "$T/cut.h5" <<'PYEOF' || fail "the sampling job never committed anything"
import sys, time, h5py
for _ in range(400):  # up to 40 s: wait until some samples are committed
    time.sleep(0.1)
    try:
        with h5py.File(sys.argv[1], "r", swmr=True) as f:
            if int(f.attrs["n_done"]) >= 400:
                sys.exit(0)
    except Exception:
        pass
sys.exit(1)
PYEOF
kill -9 $BG 2>/dev/null
pkill -9 -f "sample_out $T/cut.h5" 2>/dev/null
wait $BG 2>/dev/null
$PY - "$T" <<'PYEOF' || fail "the killed run's file is not a prefix of the uninterrupted run"
import sys, h5py, numpy as np
t = sys.argv[1]
with h5py.File(f"{t}/cut.h5", "r", swmr=True) as f:
    n, done = int(f.attrs["n_done"]), int(f.attrs["complete"])
    part = f["x"][:n]
ref = h5py.File(f"{t}/ref.h5", "r")["x"][...]
assert done == 0 and 0 < n < 60000, (n, done)
assert np.array_equal(part, ref[:n]), "committed samples differ from the uninterrupted run"
print(f"killed run: {n} of 60000 samples committed, equal to the uninterrupted run's")
PYEOF
# other options: refused, one line, the file untouched
if mpiexec --quiet -n 1 "$CF" "${K[@]}" -sample_out "$T/cut.h5" -sample_resume 1 -seed 99 \
     >"$T/out" 2>"$T/err"; then
  fail "resuming with another -seed was accepted"
fi
[ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "config" "$T/err" ||
  { cat "$T/err"; fail "resume with other options: expected one line naming the config"; }
run mpiexec -n 2 "$CF" "${K[@]}" -sample_out "$T/cut.h5" -sample_resume 1
$PY - "$T" <<'PYEOF' || fail "the resumed file differs from the uninterrupted one"
import sys, json, h5py, numpy as np
t = sys.argv[1]
a, b = h5py.File(f"{t}/cut.h5", "r"), h5py.File(f"{t}/ref.h5", "r")
assert int(a.attrs["complete"]) == 1 and np.array_equal(a["x"][...], b["x"][...])
assert b"checkpoint" in bytes(a.attrs["config"], "utf8") if isinstance(a.attrs["config"], str) \
    else b"checkpoint" in a.attrs["config"]
s = json.load(open(f"{t}/ref.h5.json"))
assert s["samples"] == 60000 and s["ranks"] == 2 and 0 < s["busy_min"] <= 1, s
print(f"resumed file equals the uninterrupted run; reference run {s['samples_per_s']:.0f} samples/s, "
      f"busy {s['busy_min']:.2f}-{s['busy_max']:.2f}, coordinator {s['coord_seconds']:.3f} s "
      f"of {s['seconds']:.2f} s")
PYEOF
echo "test_sample: ok"
