"""bhvit: BHViT, the Binarized Hybrid Vision Transformer (Gao et al., CVPR 2025).

>>> import bhvit
>>> model = bhvit.create_model("bhvit_tiny", precision="binary")
>>> model = bhvit.load_upstream("BHViT_tiny_binary.pth")  # the authors' checkpoint, eval mode
>>> backbone = bhvit.create_model("bhvit_tiny", features_only=True)  # four NCHW stage maps
"""

from . import quant
from .checkpoint import load_model, save_model
from .engine import load_packed, pack, save_packed
from .models import BHViT, BHViTConfig, build_model, valid_img_sizes
from .profile import profile_model
from .registry import create_model, list_models, model_entry, register_with_timm
from .upstream import CheckpointError, load_upstream

__version__ = "0.1.0"

register_with_timm()  # timm.create_model("bhvit_tiny", ...) when timm is installed; a no-op otherwise

__all__ = [
    "BHViT",
    "BHViTConfig",
    "CheckpointError",
    "build_model",
    "create_model",
    "list_models",
    "load_model",
    "load_packed",
    "load_upstream",
    "model_entry",
    "pack",
    "profile_model",
    "quant",
    "register_with_timm",
    "save_model",
    "save_packed",
    "valid_img_sizes",
]
