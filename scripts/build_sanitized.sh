#!/usr/bin/env bash
# Builds the native runtime libbhvit_runtime.so (the C API of runtime/) with AddressSanitizer and
# UndefinedBehaviorSanitizer: runtime/CMakeLists.txt (the flags of every build) with -DBHVIT_SANITIZE=ON, in
# its own folder, never over the regular builds:
#
#   scripts/build_sanitized.sh --runtime [OUT_DIR]   # default build/sanitized-runtime; prints the library's path
#
# The Python interpreter itself is not instrumented: preload the ASan runtime, and libstdc++ beside it
# (otherwise ASan's __cxa_throw interceptor finds no real __cxa_throw and aborts on the first C++ exception):
#   BHVIT_RUNTIME_LIB=$(scripts/build_sanitized.sh --runtime) \
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \
#   ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 python ...
# tests/runtime/test_sanitized_runtime.py (slow) runs the fuzz corpora of tests/fuzz this way. Needs cmake and
# g++ (or clang++).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--runtime" ]]; then
  echo "usage: scripts/build_sanitized.sh --runtime [OUT_DIR]" >&2
  exit 2
fi
shift
OUT=${1:-build/sanitized-runtime}
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi
if [ ! -f "$OUT/CMakeCache.txt" ]; then
  # Debug: no -DNDEBUG (assertions on); BHVIT_SANITIZE adds -O1 -g. An unversioned file name, no install.
  cmake -S runtime -B "$OUT" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Debug -DBHVIT_SANITIZE=ON \
    -DBHVIT_BUILD_TOOL=OFF -DBHVIT_INSTALL=OFF -DBHVIT_VERSIONED_SONAME=OFF >&2
fi
cmake --build "$OUT" --target bhvit_runtime -j "$(nproc)" >&2
echo "$(cd "$OUT" && pwd)/libbhvit_runtime.so"
