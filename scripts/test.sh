#!/usr/bin/env bash
# test.sh: the one test command (CI runs it through .ci/run). Installs missing Debian packages,
# builds with warnings as errors, runs the whole ctest suite, then builds with AddressSanitizer
# + UndefinedBehaviorSanitizer and runs the fast tests again under it.
#   CF_TEST_SKIP_ASAN=1  skip the sanitizer pass (quicker local runs)
#   extra arguments are passed to the first ctest (e.g. -L fast, -R model)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
. scripts/env.sh
jobs=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS=1 from env.sh

echo "== build (Release, -Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCF_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
echo "== ctest"
(cd build && ctest --output-on-failure -j "$jobs" "$@")

if [ "${CF_TEST_SKIP_ASAN:-0}" != 1 ]; then
  echo "== build (ASan + UBSan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCF_WERROR=ON -DCF_SANITIZE=ON >/dev/null
  cmake --build build-asan -j "$jobs"
  echo "== ctest -L fast under ASan + UBSan"
  (cd build-asan && ctest --output-on-failure -j "$jobs" -L fast)
fi

# libFuzzer targets of every reader of outside input (scripts/fuzz.sh, tests/fuzz/README.md):
# the committed corpora replayed, then a short pass from them with a fixed seed, so that the
# gate explores the same inputs on every run of a commit (long runs: scripts/fuzz.sh 600);
# CF_TEST_SKIP_FUZZ=1 skips it
if [ "${CF_TEST_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz (clang, libFuzzer + ASan + UBSan, 20 s per target, seed 1)"
  CF_FUZZ_ARGS="-seed=1 ${CF_FUZZ_ARGS:-}" ./scripts/fuzz.sh 20
fi
