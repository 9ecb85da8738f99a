"""Cache directory and a small, atomic HTTP download helper shared by the dataset loaders."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says how to get it."""


def cache_dir(name: str) -> Path:
    """``$BHVIT_DATA_DIR/<name>``, default ``~/.cache/bhvit/datasets/<name>``."""
    base = os.environ.get("BHVIT_DATA_DIR") or Path.home() / ".cache" / "bhvit" / "datasets"
    return Path(base) / name


def download_file(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary file renamed into place (never a partial file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    os.replace(tmp, dest)
    return dest
