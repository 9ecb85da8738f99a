"""Datasets for training BHViT: Fashion-MNIST (default), CIFAR-10, ImageNet-style folders, synthetic.

The names below load their module on first use: :mod:`bhvit.data.images` (image decoding, used by
``bhvit predict``) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASET_NAMES": "datasets",
    "DataBundle": "datasets",
    "DataConfig": "datasets",
    "build_datasets": "datasets",
    "DatasetNotFoundError": "download",
    "DatasetError": "images",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bhvit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
