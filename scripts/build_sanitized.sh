#!/usr/bin/env bash
# Builds the native code with AddressSanitizer and UndefinedBehaviorSanitizer: the repository's CMake build
# (CMakeLists.txt, runtime/CMakeLists.txt, their flags) with -DBHVIT_SANITIZE=ON, in its own folder, never
# over the regular builds:
#
#   scripts/build_sanitized.sh [OUT_DIR]             # the Python extension (default build/sanitized);
#                                                     # prints the path of the built module
#   scripts/build_sanitized.sh --runtime [OUT_DIR]   # libbhvit_runtime.so, the C API of runtime/ (default
#                                                     # build/sanitized); prints the library's path
#
# The Python interpreter itself is not instrumented: preload the ASan runtime, and libstdc++ beside it
# (otherwise ASan's __cxa_throw interceptor finds no real __cxa_throw and aborts on the first C++ exception):
#   BHVIT_NATIVE_EXT=$(scripts/build_sanitized.sh) \
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \
#   ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 python ...
# and for the runtime library BHVIT_RUNTIME_LIB=$(scripts/build_sanitized.sh --runtime) instead of
# BHVIT_NATIVE_EXT. tests/engine/test_sanitized.py and tests/runtime/test_sanitized_runtime.py (slow) run
# the fuzz corpora of scripts/fuzz_packed.py this way. Needs cmake, g++ and pybind11 (scripts/setup.sh
# installs pybind11 into .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WHAT=extension
if [[ "${1:-}" == "--runtime" ]]; then
  WHAT=runtime
  shift
fi
OUT=${1:-build/sanitized}
PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"  # a cmake or ninja that setup.sh put into the environment
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi
if [ ! -f "$OUT/CMakeCache.txt" ]; then
  cmake -S . -B "$OUT" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Debug -DBHVIT_SANITIZE=ON \
    -DPython_EXECUTABLE="$("$PYTHON" -c 'import sys; print(sys.executable)')" \
    -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" >&2
fi
TARGET=bhvit_extension
if [ "$WHAT" = runtime ]; then TARGET=bhvit_runtime; fi
cmake --build "$OUT" --target "$TARGET" -j "$(nproc)" >&2
sed -n "s/^$WHAT=//p" "$OUT/built-files.txt"
