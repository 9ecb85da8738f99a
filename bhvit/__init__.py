"""bhvit: BHViT, the Binarized Hybrid Vision Transformer (Gao et al., CVPR 2025).

>>> import bhvit
>>> model = bhvit.create_model("bhvit_tiny", precision="binary")
>>> model = bhvit.load_upstream("BHViT_tiny_binary.pth")  # the authors' checkpoint, eval mode
>>> backbone = bhvit.create_model("bhvit_tiny", features_only=True)  # four NCHW stage maps

The names below load their module on first use, so that ``import bhvit.runtime`` (the packed runtime,
numpy only) does not import torch. Importing bhvit registers its models with timm when timm is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

_EXPORTS = {  # public name -> module that defines it
    "quant": None,
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "load_packed": "engine",
    "pack": "engine",
    "save_packed": "engine",
    "BHViT": "models",
    "BHViTConfig": "models",
    "build_model": "models",
    "valid_img_sizes": "models",
    "profile_model": "profile",
    "create_model": "registry",
    "list_models": "registry",
    "model_entry": "registry",
    "register_with_timm": "registry",
    "CheckpointError": "upstream",
    "load_upstream": "upstream",
}


def _version() -> str:
    """The installed distribution's version: runtime/include/bhvit_runtime.h's BHVIT_VERSION_* at build time
    (pyproject.toml reads it there; the one source of the version number)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(__name__)
    except PackageNotFoundError:  # imported from a checkout that pip never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: importing bhvit stays cheap
        return _version()
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bhvit' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = importlib.import_module(f".{name}" if module is None else f".{module}", __name__)
    return value if module is None else getattr(value, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def _timm_present() -> bool:
    if "timm" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("timm") is not None
    except (ImportError, ValueError):
        return False


if _timm_present():  # timm.create_model("bhvit_tiny", ...); without timm nothing (and no torch) is imported
    importlib.import_module(".registry", __name__).register_with_timm()

__all__ = sorted(_EXPORTS)
