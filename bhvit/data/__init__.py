"""Datasets for training BHViT: Fashion-MNIST (default), CIFAR-10, ImageNet-style folders, synthetic.

The names below load their module on first use: :mod:`bhvit.data.images` (image decoding, used by
``bhvit predict``) needs no torch.
"""

from __future__ import annotations

from bhvit.lazy import lazy_attributes

_EXPORTS = {
    "DATASET_NAMES": "datasets",
    "DataBundle": "datasets",
    "DataConfig": "datasets",
    "build_datasets": "datasets",
    "DatasetNotFoundError": "download",
    "DatasetError": "images",
}


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
