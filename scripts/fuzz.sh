#!/usr/bin/env bash
# fuzz.sh: build the libFuzzer targets of tests/fuzz with clang (ASan + UBSan, -DCF_FUZZ=ON) and
# run each over its committed corpus for SECONDS (default 30) on one core: one worker, 2 GiB RSS
# limit, new inputs kept in a scratch corpus (the committed one is only read). Exits non-zero
# when any target crashes, leaks, hits UB or breaks an oracle, printing the reproducer's path
# and the command that replays it. See tests/fuzz/README.md.
#   scripts/fuzz.sh [SECONDS] [TARGET...]   targets: options h5io h5ad ckpt bpe_json bpe_gpt2
#   scripts/fuzz.sh --merge [TARGET...]     minimize the committed corpus (-merge=1) with the
#                                           generated seeds (make_seeds.py) and the inputs of
#                                           earlier runs up to 4 KiB (bpe_json: 12 KiB) folded in
# Environment: CF_FUZZ_BUILD (build directory, default build-fuzz), CF_FUZZ_WORK (scratch
# corpora and crash reproducers, default $CF_FUZZ_BUILD/fuzz-work), CF_FUZZ_ARGS (extra
# libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

all_targets=(options h5io h5ad ckpt bpe_json bpe_gpt2)
mode=run
seconds=30
if [ "${1:-}" = "--merge" ]; then
  mode=merge
  shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

build=${CF_FUZZ_BUILD:-build-fuzz}
work=${CF_FUZZ_WORK:-$build/fuzz-work}
if ! command -v clang >/dev/null; then
  echo "fuzz.sh: clang not found (scripts/install-deps.sh installs it)" >&2
  exit 2
fi
echo "== fuzz: configure $build (clang, -DCF_FUZZ=ON)"
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCF_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMPI_C_COMPILER="$(command -v mpicc)" >/dev/null
jobs=$(getconf _NPROCESSORS_ONLN)
cmake --build "$build" -j "$jobs" --target "${targets[@]/#/fuzz_}"

fail=0
mkdir -p "$work"
rm -f "$work/seeds/.made"
if [ "$mode" = run ]; then
  echo "== fuzz: replay the committed corpora and regression inputs (ctest -L fuzz)"
  if ! (cd "$build" && ctest -L fuzz --output-on-failure -R "$(IFS='|'; echo "${targets[*]}")") \
    >"$work/ctest.log" 2>&1; then
    echo "fuzz.sh: a committed input fails, see $work/ctest.log" >&2
    fail=1
  fi
fi
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz_$t
  corpus=tests/fuzz/corpus/$t
  regress=tests/fuzz/regress/$t # inputs that once failed, one per fixed bug: always replayed
  dict=tests/fuzz/dict/$t.dict
  scratch=$work/corpus/$t
  art=$work/artifacts/$t
  mkdir -p "$scratch" "$art" "$corpus" "$regress"
  flags=(-rss_limit_mb=2048 -timeout=60 -artifact_prefix="$art/" -print_final_stats=1)
  [ -f "$dict" ] && flags+=(-dict="$dict")
  # room to grow (libFuzzer's default is the largest seed); the tokenizer seeds are larger
  case $t in bpe_*) ;; *) flags+=(-max_len=4096) ;; esac
  # shellcheck disable=SC2206
  flags+=(${CF_FUZZ_ARGS:-})
  log=$work/$t.log
  if [ "$mode" = merge ]; then
    seeds=$work/seeds
    if [ ! -f "$seeds/.made" ]; then
      rm -rf "$seeds"
      /usr/bin/python3 tests/fuzz/make_seeds.py "$seeds" >/dev/null
      touch "$seeds/.made"
    fi
    merged=$work/merged/$t
    small=$work/merge-small/$t # what earlier runs found, up to a size that keeps the corpus small
    rm -rf "$merged" "$small"
    mkdir -p "$merged" "$seeds/$t" "$small"
    case $t in bpe_json) cap=12288 ;; *) cap=4096 ;; esac
    find "$scratch" -type f -size -$((cap + 1))c -exec cp {} "$small"/ \;
    echo "== fuzz: merge $t"
    "$bin" -merge=1 "${flags[@]}" "$merged" "$corpus" "$seeds/$t" "$small" >"$log" 2>&1 || {
      echo "fuzz.sh: merge of $t failed, see $log" >&2
      fail=1
      continue
    }
    rm -f "$corpus"/*
    cp "$merged"/* "$corpus"/
    echo "   $t: $(ls "$corpus" | wc -l) inputs, $(du -sk --apparent-size "$corpus" | cut -f1) KiB"
    continue
  fi
  echo "== fuzz: $t for ${seconds} s"
  rc=0
  "$bin" "${flags[@]}" -max_total_time="$seconds" "$scratch" "$corpus" "$regress" >"$log" 2>&1 &
  pid=$!
  wait $pid || rc=$?
  rm -f /dev/shm/cf-fuzz-"$pid"-* 2>/dev/null || true
  stats=$(grep -E "^#[0-9]+[[:space:]]+(DONE|INITED)" "$log" | tail -1 | awk '{print $1, $3, $4, $5, $6}' ||
    true)
  echo "   $t: ${stats:-no stats} (exit $rc; log $log)"
  if [ $rc -ne 0 ]; then
    fail=1
    repro=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //' ||
      true)
    grep -E "ERROR|SUMMARY|cf_fuzz [a-z_0-9]+:|runtime error" "$log" | head -5 >&2 || true
    echo "fuzz.sh: $t FAILED; reproducer: ${repro:-none written (see $log)}" >&2
    [ -n "$repro" ] && echo "fuzz.sh: replay with: $bin $repro" >&2
  fi
done
exit $fail
