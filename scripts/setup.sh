#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtual environment in .venv with the CPU build of PyTorch
# and bhvit installed in editable mode. Safe to run again: it only installs what is missing.
#
# The native code (libbhvit_runtime, the Python extension) is built by CMake through scikit-build-core
# (pyproject.toml, CMakeLists.txt, runtime/CMakeLists.txt) in the persistent folder build/editable-<tag>/, so
# a rebuild after an edit compiles only what changed. The build requirements are installed into .venv and
# the install runs without build isolation, so their paths stay the same from one rebuild to the next.
#
# Re-running costs about a second when nothing changed: after a successful install it records a stamp (a
# hash of pyproject.toml, the CMake files and the sources in csrc/ and runtime/) in .venv; the editable
# install runs again only when that hash changes, the package, its extension or a listed tool no longer
# imports, or the runtime library is missing. BHVIT_REINSTALL=1 forces it; `rm -rf build/editable-*`
# before it forces a build from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  # The CPU wheel: plain `pip install torch` would pull a multi-GB CUDA build on Linux.
  "$VPY" -m pip install -q "torch==2.13.0" \
    || "$VPY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi

STAMP=.venv/.bhvit-install-stamp
inputs_hash() {
  # what the pip build reads: the files git tracks or would track (not a CMake build folder put in runtime/)
  local files
  files=$(git ls-files -co --exclude-standard -- pyproject.toml CMakeLists.txt csrc runtime 2>/dev/null) \
    || files=$(find pyproject.toml CMakeLists.txt csrc runtime -type f -not -path '*/CMakeFiles/*')
  # shellcheck disable=SC2086
  cat $(echo "$files" | LC_ALL=C sort) | sha256sum | cut -d' ' -f1
}
installed() {
  # the editable install of this checkout, its extension and the dev/plots/onnx/hub extras all import
  "$VPY" - "$PWD" >/dev/null 2>&1 <<'EOF'
import pathlib, sys
import bhvit, bhvit._C, pytest, ruff, matplotlib, onnx, onnxruntime, huggingface_hub  # noqa: F401, E401
from bhvit.runtime.paths import find_library
find_library()  # libbhvit_runtime.so was built
sys.exit(pathlib.Path(bhvit.__file__).resolve().parent != pathlib.Path(sys.argv[1]).resolve() / "bhvit")
EOF
}
build_requirements() {
  # pyproject.toml's [build-system] requires, then what the backend adds (cmake, ninja: only when the
  # machine has no recent enough one)
  "$VPY" -c "import tomllib" 2>/dev/null || "$VPY" -m pip install -q "tomli>=2"
  # shellcheck disable=SC2046
  "$VPY" -m pip install -q $("$VPY" -c '
try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
  local extra
  extra=$("$VPY" -c 'from scikit_build_core.build import get_requires_for_build_editable as r; print(" ".join(r()))')
  # shellcheck disable=SC2086
  if [ -n "$extra" ]; then "$VPY" -m pip install -q $extra; fi
}
HASH=$(inputs_hash)
if [ "${BHVIT_REINSTALL:-0}" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ] || ! installed; then
  # products of the former setup.py build, written into the package folders
  rm -rf bhvit/engine/_C.*.so bhvit/runtime/libbhvit_runtime.so bhvit/runtime/include bhvit.egg-info
  build_requirements
  "$VPY" -m pip install -q --no-build-isolation -e ".[dev,plots,onnx,hub]"
  echo "$HASH" > "$STAMP"
fi
