"""Model families. Importing this package registers every variant."""

from .bhvit import BHViT, BHViTConfig, build_model, valid_img_sizes

__all__ = ["BHViT", "BHViTConfig", "build_model", "valid_img_sizes"]
