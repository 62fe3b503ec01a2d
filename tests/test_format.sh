#!/usr/bin/env bash
# test_format.sh: every C source and header is clang-formatted (.clang-format at the top).
set -u
SRC=${CF_SOURCE_DIR:?set by ctest}
cd "$SRC" || exit 1
command -v clang-format >/dev/null || { echo "clang-format not installed (scripts/install-deps.sh)"; exit 1; }
files=$(git ls-files 'src/*.c' 'src/*.h' 'include/*.h' 'tests/*.c' 'tests/*.h' 2>/dev/null)
[ -n "$files" ] || files=$(find src include tests -name '*.[ch]')
if ! clang-format --dry-run -Werror $files; then
  echo "run: clang-format -i \$(git ls-files 'src/*.[ch]' 'include/*.h' 'tests/*.c')"
  exit 1
fi
echo "test_format: $(echo "$files" | wc -w) files formatted"
