#!/usr/bin/env bash
# Builds the packed engine's extension with AddressSanitizer and UndefinedBehaviorSanitizer into
# build/sanitized/ (never over the in-place build), with setup.py's per-file ISA flags.
#
#   scripts/build_sanitized.sh [OUT_DIR]      # prints the path of the built module
#
# Use it through BHVIT_NATIVE_EXT (bhvit/engine/_native.py), with the ASan runtime preloaded since the
# Python interpreter itself is not instrumented, and libstdc++ preloaded beside it (otherwise ASan's
# __cxa_throw interceptor finds no real __cxa_throw and aborts on the first C++ exception):
#   BHVIT_NATIVE_EXT=$(scripts/build_sanitized.sh) \
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \
#   ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 python ...
# tests/engine/test_sanitized.py (slow) runs the fuzz corpus of scripts/fuzz_packed.py this way.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CXX=${CXX:-g++}
OUT=${1:-build/sanitized}
mkdir -p "$OUT/obj"
SUFFIX=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
PYINC=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
# pybind11's headers: the pybind11 package (the build requirement), else the copy torch ships
PBINC=$("$PYTHON" -c "import pybind11; print(pybind11.get_include())" 2>/dev/null ||
        "$PYTHON" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
FLAGS=(-std=c++17 -fPIC -fopenmp -ffp-contract=off -fvisibility=hidden
       -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1
       -Icsrc "-I$PBINC" "-I$PYINC")
isa_flags() {
  case "$(uname -m)-$1" in
    x86_64-isa_popcnt.cpp) echo "-mpopcnt" ;;
    x86_64-isa_avx2.cpp) echo "-mavx2 -mpopcnt" ;;
    x86_64-isa_avx512bw.cpp) echo "-mavx512f -mavx512bw -mpopcnt" ;;
    x86_64-isa_avx512vpopcnt.cpp) echo "-mavx512f -mavx512bw -mavx512vpopcntdq -mpopcnt" ;;
    *) echo "" ;;
  esac
}
OBJS=()
PIDS=()
for src in engine.cpp bindings.cpp isa_generic.cpp isa_neon.cpp isa_popcnt.cpp isa_avx2.cpp isa_avx512bw.cpp \
           isa_avx512vpopcnt.cpp; do
  obj="$OUT/obj/${src%.cpp}.o"
  # shellcheck disable=SC2046
  "$CXX" "${FLAGS[@]}" $(isa_flags "$src") -c "csrc/$src" -o "$obj" &
  OBJS+=("$obj")
  PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid"; done  # set -e: a failed compile stops the script
"$CXX" -shared -fsanitize=address,undefined -fopenmp "${OBJS[@]}" -o "$OUT/_C$SUFFIX"
echo "$(cd "$OUT" && pwd)/_C$SUFFIX"
