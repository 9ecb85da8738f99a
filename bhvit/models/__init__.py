"""Model families. Importing this package registers every variant."""

from .bhvit import BHViT, BHViTConfig, build_model, choose_window_size, valid_img_sizes
from .features import FeatureGetter, FeatureInfo

__all__ = [
    "BHViT",
    "BHViTConfig",
    "FeatureGetter",
    "FeatureInfo",
    "build_model",
    "choose_window_size",
    "valid_img_sizes",
]
