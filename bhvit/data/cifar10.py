"""CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test images, 32×32 RGB, 10 classes.

The python-pickle release: ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, each a pickled dict
with ``data`` (N, 3072) uint8 rows (R, G, B planes) and ``labels``. Searched, in order: the directory the
user names (or its ``cifar-10-batches-py`` subfolder), then ``$BHVIT_DATA_DIR/cifar10`` (default
``~/.cache/bhvit/datasets/cifar10``); when ``download`` is true the archive is fetched from :data:`URL`
into that cache. The pickles are loaded with :mod:`pickle`: only use files from a source you trust.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from bhvit.data.download import DatasetNotFoundError, cache_dir, download_file

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SUBDIR = "cifar-10-batches-py"


def _complete(d: Path) -> bool:
    return all((d / b).is_file() for b in TRAIN_BATCHES + TEST_BATCHES)


def candidate_dirs(root: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(root), Path(root) / SUBDIR] if root else []
    return [*dirs, cache_dir("cifar10") / SUBDIR]


def locate(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The first directory holding all six batch files; downloads and extracts into the cache if allowed."""
    tried = candidate_dirs(root)
    for d in tried:
        if _complete(d):
            return d
    error = "download disabled"
    if download:
        archive = cache_dir("cifar10") / "cifar-10-python.tar.gz"
        try:
            if not archive.is_file():
                download_file(URL, archive, timeout=120)
            with tarfile.open(archive) as tar:
                tar.extractall(archive.parent, filter="data")
            return cache_dir("cifar10") / SUBDIR
        except (OSError, tarfile.TarError) as e:
            error = f"download from {URL} failed: {e}"
    raise DatasetNotFoundError(
        "CIFAR-10 not found. Looked in: " + ", ".join(map(str, tried)) + f" ({error}).\n"
        f"To get it: download {URL}, extract it, and pass the `{SUBDIR}` directory with --data DIR "
        "(or pass --download on a machine that is online)."
    )


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickle batch → images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = d.get(b"labels", d.get(b"fine_labels"))
    return torch.from_numpy(data.copy()), torch.tensor(labels, dtype=torch.long)


def local_dir(directory: str | os.PathLike) -> Path | None:
    """``directory`` or its ``cifar-10-batches-py`` subfolder when it holds the six batches, else None
    (for ``--data DIR``: that directory only, never the cache)."""
    return next((d for d in (Path(directory), Path(directory) / SUBDIR) if _complete(d)), None)


def load(root: str | os.PathLike | None = None, download: bool = False) -> dict[str, torch.Tensor]:
    """The arrays from where :func:`locate` finds them (:func:`read_dir`)."""
    return read_dir(locate(root, download))


def read_dir(d: Path) -> dict[str, torch.Tensor]:
    """``train_images`` (50000, 3, 32, 32) uint8, ``train_labels``, ``test_images``, ``test_labels``
    from the batches in ``d``."""
    out: dict[str, torch.Tensor] = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [read_batch(d / n) for n in names]
        out[f"{split}_images"] = torch.cat([p[0] for p in parts])
        out[f"{split}_labels"] = torch.cat([p[1] for p in parts])
    return out
