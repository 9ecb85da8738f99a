"""Datasets for training BHViT: Fashion-MNIST (default), CIFAR-10, ImageNet-style folders, synthetic."""

from bhvit.data.datasets import DATASET_NAMES, DataBundle, DataConfig, build_datasets
from bhvit.data.download import DatasetNotFoundError
from bhvit.data.images import DatasetError

__all__ = ["DATASET_NAMES", "DataBundle", "DataConfig", "DatasetError", "DatasetNotFoundError", "build_datasets"]
