#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtual environment in .venv with the CPU build of PyTorch
# and bhvit installed in editable mode. Safe to run again: it only installs what is missing.
#
# Re-running costs about a second when nothing changed: after a successful install it records a stamp
# (a hash of pyproject.toml, setup.py and csrc/) in .venv; the editable install (which recompiles the
# native extension, minutes on 2 cores) runs again only when that hash changes or the package, its
# extension or a listed tool no longer imports. BHVIT_REINSTALL=1 forces it.
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
  cat pyproject.toml setup.py $(find csrc -type f | LC_ALL=C sort) | sha256sum | cut -d' ' -f1
}
installed() {
  # the editable install of this checkout, its extension and the dev/plots/onnx extras all import
  "$VPY" - "$PWD" >/dev/null 2>&1 <<'EOF'
import pathlib, sys
import bhvit, bhvit.engine._C, pytest, ruff, matplotlib, onnx, onnxruntime  # noqa: F401, E401
sys.exit(pathlib.Path(bhvit.__file__).resolve().parent != pathlib.Path(sys.argv[1]).resolve() / "bhvit")
EOF
}
HASH=$(inputs_hash)
if [ "${BHVIT_REINSTALL:-0}" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ] || ! installed; then
  "$VPY" -m pip install -q -e ".[dev,plots,onnx]"
  echo "$HASH" > "$STAMP"
fi
