#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtual environment in .venv with the CPU build of PyTorch
# and bhvit installed in editable mode. Safe to run again: it only installs what is missing.
#
# Re-running costs about a second when nothing changed: after a successful install it records a stamp
# (a hash of pyproject.toml, setup.py, csrc/ and the runtime's sources in runtime/) in .venv; the editable
# install (which recompiles the native extension and libbhvit_runtime, minutes on 2 cores) runs again only
# when that hash changes, the package, its extension or a listed tool no longer imports, or the runtime
# library is missing. BHVIT_REINSTALL=1 forces it.
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
  # runtime/: what the pip build reads (not a CMake build folder someone put there)
  cat pyproject.toml setup.py $(find csrc runtime/kernels -type f | LC_ALL=C sort) \
    $(find runtime -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.inc' -o -name '*.map' \) \
      -not -path '*/CMakeFiles/*' | LC_ALL=C sort) | sha256sum | cut -d' ' -f1
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
HASH=$(inputs_hash)
if [ "${BHVIT_REINSTALL:-0}" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ] || ! installed; then
  "$VPY" -m pip install -q -e ".[dev,plots,onnx,hub]"
  echo "$HASH" > "$STAMP"
fi
