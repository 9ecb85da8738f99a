#!/usr/bin/env bash
# Builds the native runtime libbhvit_runtime.so (the C API of runtime/) with AddressSanitizer and
# UndefinedBehaviorSanitizer, with setup.py's per-file ISA flags, never over the regular builds:
#
#   scripts/build_sanitized.sh --runtime [OUT_DIR]   # default build/sanitized-runtime; prints the library's path
#
# The Python interpreter itself is not instrumented: preload the ASan runtime, and libstdc++ beside it
# (otherwise ASan's __cxa_throw interceptor finds no real __cxa_throw and aborts on the first C++ exception):
#   BHVIT_RUNTIME_LIB=$(scripts/build_sanitized.sh --runtime) \
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" \
#   ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 python ...
# tests/runtime/test_sanitized_runtime.py (slow) runs the fuzz corpora of tests/fuzz this way.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
if [[ "${1:-}" != "--runtime" ]]; then
  echo "usage: scripts/build_sanitized.sh --runtime [OUT_DIR]" >&2
  exit 2
fi
shift
OUT=${1:-build/sanitized-runtime}
mkdir -p "$OUT/obj"
SANITIZE=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1)
FLAGS=(-std=c++17 -fPIC -pthread -ffp-contract=off -fvisibility=hidden "${SANITIZE[@]}" -Iruntime/kernels)
ENGINE=(runtime/kernels/drivers.cpp runtime/kernels/float_drivers.cpp runtime/kernels/parallel.cpp runtime/kernels/isa_generic.cpp runtime/kernels/isa_neon.cpp runtime/kernels/isa_popcnt.cpp runtime/kernels/isa_avx2.cpp
        runtime/kernels/isa_avx512bw.cpp runtime/kernels/isa_avx512vpopcnt.cpp)
FLAGS+=(-Iruntime/include -Iruntime/src)
SOURCES=("${ENGINE[@]}" runtime/src/*.cpp)
TARGET="$OUT/libbhvit_runtime.so"
isa_flags() {
  case "$(uname -m)-$(basename "$1")" in
    x86_64-isa_popcnt.cpp) echo "-mpopcnt" ;;
    x86_64-isa_avx2.cpp) echo "-mavx2 -mpopcnt" ;;
    x86_64-isa_avx512bw.cpp) echo "-mavx512f -mavx512bw -mpopcnt" ;;
    x86_64-isa_avx512vpopcnt.cpp) echo "-mavx512f -mavx512bw -mavx512vpopcntdq -mpopcnt" ;;
    *) echo "" ;;
  esac
}
OBJS=()
PIDS=()
for src in "${SOURCES[@]}"; do
  obj="$OUT/obj/$(basename "$(dirname "$src")")_$(basename "${src%.cpp}").o"
  # shellcheck disable=SC2046
  "$CXX" "${FLAGS[@]}" $(isa_flags "$src") -c "$src" -o "$obj" &
  OBJS+=("$obj")
  PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid"; done  # set -e: a failed compile stops the script
"$CXX" -shared "${SANITIZE[@]}" -pthread "${OBJS[@]}" -o "$TARGET"
echo "$(cd "$(dirname "$TARGET")" && pwd)/$(basename "$TARGET")"
