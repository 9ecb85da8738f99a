"""Model families: the architecture (:mod:`.bhvit`), its backbone wrapper (:mod:`.features`) and the built-in
variants (:mod:`.variants`, served by name by :mod:`bhvit.registry`)."""

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
