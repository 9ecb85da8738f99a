"""Model registry: names map to builder functions plus metadata that tests recompute.

The built-in variants come from :mod:`bhvit.models.variants`; :func:`register_model` adds a user's own.

The builders are timm-style entrypoints (``fn(pretrained=False, **kwargs)``), so when timm is
installed :func:`register_with_timm` hands them to timm's registry and
``timm.create_model("bhvit_tiny", precision="binary", num_classes=10)`` works.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from .models.variants import BUILTIN, ModelEntry

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "model_entry", "register_with_timm"]


_REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in BUILTIN}  # and register_model's


def register_model(
    name: str,
    *,
    config: Any,
    pretrained_cfg: dict[str, Any] | None = None,
    paper_top1: dict[str, float] | None = None,
    params_1000: dict[str, int] | None = None,
) -> Callable:
    """Decorator registering ``fn(pretrained=False, **options) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name, fn, config, dict(pretrained_cfg or {}), dict(paper_top1 or {}), dict(params_1000 or {})
        )
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the registered variants, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; a ValueError lists the known names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **options: Any) -> nn.Module:
    """Build a registered variant, e.g. ``create_model("bhvit_tiny", precision="binary", img_size=224)``.

    Options are fields of :class:`bhvit.BHViTConfig` (precision, attn_quant, norm, shift3, shift5,
    num_classes, in_chans, img_size, window_size, drop_path_rate, recu, ...) and timm's
    ``features_only=True`` / ``out_indices`` (a backbone giving the stage maps, NCHW). An unknown
    option is a ValueError listing the valid ones.
    """
    return model_entry(name).builder(**options)


def register_with_timm() -> list[str]:
    """Register every variant with timm's model registry, if timm imports; returns the names added.

    Without timm (or with a timm that fails to import) nothing happens and nothing is raised:
    ``import bhvit`` must work, and stay fast, either way (without timm this costs one file-system
    lookup). A name timm already knows is left alone, so calling it again adds nothing.
    """
    try:
        if "timm" not in sys.modules and importlib.util.find_spec("timm") is None:
            return []
        timm_models = importlib.import_module("timm.models")
        register, is_model = timm_models.register_model, timm_models.is_model
    except Exception:  # a broken timm (e.g. its torchvision import failing) must not break bhvit
        return []
    added = [name for name in list_models() if not is_model(name)]
    for name in added:
        register(model_entry(name).builder)  # timm keys the entrypoint by fn.__name__, which is name
    return added
