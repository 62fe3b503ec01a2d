#!/usr/bin/env bash
# test_h5_limits.sh: HDF5 files that claim huge extents are refused before anything is
# allocated, with one error line naming the file and the dataset (io/h5util.h:
# cf_io_check_dset, cf_io_check_alloc). Crafted with h5py, each a few kilobytes:
#  - a point set /x of 2^40 x 2 floats, contiguous and never written (more than the file holds),
#    read by `calmflow eval`, `calmflow train -data_train` and at 2 ranks;
#  - /x of 2^62 x 8 values (the element count overflows 64 bits);
#  - /x of 2^30 x 4 floats, gzip-compressed with no chunk written;
#  - AnnData files whose /X (2^31 x 2^20 floats) or obs/_index (2^40 strings) make the same
#    claims, read by `calmflow data -data_h5ad`.
# Each must exit 1 within seconds without a memory blow-up (ulimit -v 4 GiB catches an attempt
# to allocate what the file claims; not under AddressSanitizer) and leave no output file.
set -u
CF=${CF_BINARY:?set by ctest}
SRC=${CF_SOURCE_DIR:?set by ctest}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
fails=0
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

$PY - "$T" "$SRC/tests/data/h5ad/dense_f32.h5ad" <<'PYEOF' || { echo "FAIL crafting the files"; exit 1; }
import shutil, sys, h5py, numpy as np
t, fixture = sys.argv[1:3]
with h5py.File(f"{t}/contig.h5", "w") as f:
    f.create_dataset("x", shape=(2**40, 2), dtype="f4")  # contiguous, never written
with h5py.File(f"{t}/overflow.h5", "w") as f:
    f.create_dataset("x", shape=(2**62, 8), dtype="f4", chunks=(1, 8), compression="gzip")
with h5py.File(f"{t}/gzip.h5", "w") as f:
    f.create_dataset("x", shape=(2**30, 4), dtype="f4", chunks=(1024, 4), compression="gzip")
with h5py.File(f"{t}/ok.h5", "w") as f:
    f.create_dataset("x", data=np.random.default_rng(0).normal(size=(50, 2)).astype("f4"))
for name, path, shape, dt in (("x_huge", "X", (2**31, 2**20), "f4"),
                              ("obs_huge", "obs/_index", (2**40,), "S8")):
    shutil.copy(fixture, f"{t}/{name}.h5ad")
    with h5py.File(f"{t}/{name}.h5ad", "r+") as f:
        attrs = dict(f[path].attrs)
        del f[path]
        d = f.create_dataset(path, shape=shape, dtype=dt)
        for k, v in attrs.items():
            d.attrs[k] = v
PYEOF

# an AddressSanitizer build reserves terabytes of shadow memory: no address-space limit there
# (its allocator aborts on a huge allocation instead, which fails the test as well)
VLIMIT=4194304
if grep -q __asan_init "$CF" 2>/dev/null; then VLIMIT=unlimited; fi

# refused NAME WANT -- command...: exit 1, one "calmflow: error:" line containing WANT
refused() {
  local name=$1 want=$2; shift 3
  local start rc took
  start=$(date +%s)
  (ulimit -v $VLIMIT; "$@") >"$T/out" 2>"$T/err"
  rc=$?
  took=$(($(date +%s) - start))
  if [ $rc -ne 1 ] || [ "$(grep -c '^calmflow' "$T/err")" -ne 1 ] ||
     ! grep -q "^calmflow: error: .*$want" "$T/err" || [ $took -gt 60 ]; then
    echo "exit $rc after ${took}s"; cat "$T/err"; bad "$name: expected one error line with '$want'"
  else
    echo "ok   $name: $(cat "$T/err")"
  fi
}

refused contig-eval "'$T/contig.h5' /x claims .* more than the file holds" -- \
  "$CF" eval -eval_a "$T/contig.h5" -eval_b "$T/ok.h5" -eval_out "$T/m.json"
refused contig-train "'$T/contig.h5' /x claims .* more than the file holds" -- \
  "$CF" train -data_train "$T/contig.h5" -train_steps 1 -run_dir "$T/run" -train_quiet 1
refused contig-eval-np2 "'$T/contig.h5' /x claims .* more than the file holds" -- \
  mpiexec --quiet -n 2 "$CF" eval -eval_a "$T/ok.h5" -eval_b "$T/contig.h5" -eval_out "$T/m.json"
refused overflow "'$T/overflow.h5' /x claims 4611686018427387904 x 8 values: the count overflows" -- \
  "$CF" eval -eval_a "$T/overflow.h5" -eval_b "$T/ok.h5" -eval_out "$T/m.json"
refused gzip "'$T/gzip.h5' /x is compressed but not all of its chunks are written" -- \
  "$CF" eval -eval_a "$T/gzip.h5" -eval_b "$T/ok.h5" -eval_out "$T/m.json"
refused h5ad-x "'$T/x_huge.h5ad' /X claims .* more than the file holds" -- \
  "$CF" data -data_h5ad "$T/x_huge.h5ad" -data_out "$T/o1.h5"
refused h5ad-obs "'$T/obs_huge.h5ad' /obs/_index claims .* more than the file holds" -- \
  "$CF" data -data_h5ad "$T/obs_huge.h5ad" -data_out "$T/o2.h5"
for f in m.json o1.h5 o2.h5 run/ckpt/LATEST; do
  [ ! -e "$T/$f" ] || bad "a refused command left $f"
done

if [ $fails -ne 0 ]; then echo "test_h5_limits: $fails failures"; exit 1; fi
echo "test_h5_limits: ok"
