"""Datasets for training BHViT: Fashion-MNIST (default), CIFAR-10, ImageNet-style folders, synthetic."""

from bhvit.data.datasets import DATASET_NAMES, DataBundle, DataConfig, build_datasets
from bhvit.data.download import DatasetNotFoundError

__all__ = ["DATASET_NAMES", "DataBundle", "DataConfig", "DatasetNotFoundError", "build_datasets"]
