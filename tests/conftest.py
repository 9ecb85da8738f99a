"""Puts this folder on ``sys.path`` so that every test can ``import support`` (the shared helpers), and the
repository root, so that ``tests.fuzz`` imports as a package however pytest was started."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
