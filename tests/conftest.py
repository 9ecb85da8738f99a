"""Puts this folder on ``sys.path`` so that every test can ``import support`` (the shared helpers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
