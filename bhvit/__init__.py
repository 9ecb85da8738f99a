"""bhvit: BHViT, the Binarized Hybrid Vision Transformer (Gao et al., CVPR 2025).

>>> import bhvit
>>> model = bhvit.create_model("bhvit_tiny", precision="binary")
"""

from . import quant
from .models import BHViT, BHViTConfig, build_model, valid_img_sizes
from .registry import create_model, list_models, model_entry

__version__ = "0.1.0"

__all__ = [
    "BHViT",
    "BHViTConfig",
    "build_model",
    "create_model",
    "list_models",
    "model_entry",
    "quant",
    "valid_img_sizes",
]
