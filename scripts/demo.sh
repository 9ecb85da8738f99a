#!/usr/bin/env bash
# The main job on a fresh machine: setup, Fashion-MNIST, then `bhvit demo` (fp teacher, binary
# student with distillation and the regularization loss, full test-set evaluation, a report).
# Extra arguments go to `bhvit demo` (see `.venv/bin/bhvit demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VPY=.venv/bin/python
if ! "$VPY" -m bhvit.data.fashion_mnist --locate >/dev/null 2>&1; then
  echo "Fashion-MNIST not found; fetching it (Debian package, else its public source)..."
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq >/dev/null 2>&1 || true)
    "$VPY" -m bhvit.data.fashion_mnist --download-debian || true
  fi
fi
exec .venv/bin/bhvit demo "$@"
