"""Model registry: names map to builder functions plus metadata that tests recompute."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "model_entry"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its builder, default config and published numbers.

    ``paper_top1``: ImageNet-1K top-1 of the released checkpoints by precision (authors' README).
    ``params_1000``: parameter counts of the authors' model with 1000 classes by precision.
    """

    name: str
    builder: Callable[..., nn.Module]
    config: Any
    paper_top1: dict[str, float] = field(default_factory=dict)
    params_1000: dict[str, int] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, config: Any, paper_top1: dict[str, float] | None = None,
                   params_1000: dict[str, int] | None = None) -> Callable:
    """Decorator registering ``fn(**overrides) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, fn, config, dict(paper_top1 or {}), dict(params_1000 or {}))
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
    num_classes, in_chans, img_size, window_size, drop_path_rate, recu, ...).
    """
    entry = model_entry(name)
    fields = getattr(type(entry.config), "__dataclass_fields__", {})
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {name}; valid options: {sorted(fields)}")
    return entry.builder(**options)
