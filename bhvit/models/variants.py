"""The built-in BHViT variants: their configs, input metadata and timm-style entrypoints.

An entrypoint is ``fn(pretrained=False, **options) -> nn.Module`` (timm's contract); :data:`BUILTIN` lists
them with the numbers the tests recompute, and :mod:`bhvit.registry` serves them by name (and hands them to
timm). This module knows the architecture (:mod:`bhvit.models.bhvit`) and nothing above it: the registry
imports the variants, never the reverse.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .bhvit import BHViT, BHViTConfig, pretrained_cfg
from .features import FeatureGetter

__all__ = ["BUILTIN", "FEATURE_INDICES", "ModelEntry", "SHARED_WEIGHTS", "VARIANTS", "default_cfgs"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its builder, default config, input metadata and published numbers.

    ``pretrained_cfg``: timm's input metadata of the variant (input size, mean, std, crop, ...).
    ``paper_top1``: ImageNet-1K top-1 of the released checkpoints by precision (authors' README).
    ``params_1000``: parameter counts of the authors' model with 1000 classes by precision.
    """

    name: str
    builder: Callable[..., nn.Module]
    config: Any
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    paper_top1: dict[str, float] = field(default_factory=dict)
    params_1000: dict[str, int] = field(default_factory=dict)


TINY = BHViTConfig(depths=(2, 2, 6, 2))
SMALL = BHViTConfig(depths=(3, 4, 8, 4))
TEST = BHViTConfig(
    depths=(1, 1, 1, 1),
    widths=(16, 32, 64, 128),
    mlp_ratios=(2, 2, 2, 2),
    num_heads=(2, 4),
    num_classes=10,
    img_size=(32, 32),
    window_size=1,
)
VARIANTS = {"bhvit_tiny": TINY, "bhvit_small": SMALL, "bhvit_test": TEST}

# timm's name for the per-variant input metadata; timm's registry reads it from this module
default_cfgs = {name: pretrained_cfg(cfg, name) for name, cfg in VARIANTS.items()}

FEATURE_INDICES = (0, 1, 2, 3)
# The keywords timm's create_model passes to every entrypoint besides the model's own options (timm 1.0.31,
# timm/models/_factory.py): pretrained_cfg, pretrained_cfg_overlay and cache_dir always (None when not
# given), pretrained_model_args for a model read from a config.json (``local-dir:`` / ``hf-hub:``);
# features_only and out_indices are timm's backbone options.
_BUILD_OPTIONS = (
    "features_only",
    "out_indices",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
    "pretrained_model_args",
)


def _create(name: str, pretrained: bool, options: dict[str, Any]) -> nn.Module:
    """Build variant ``name`` with config overrides; the keywords of timm's ``create_model`` too.

    ``features_only=True`` returns a :class:`~bhvit.models.features.FeatureGetter` giving the stage
    maps ``out_indices`` (default all four) as NCHW tensors, with ``feature_info``.
    ``pretrained_cfg_overlay`` (or a ``pretrained_cfg`` dict) replaces fields of the input metadata.
    ``pretrained=True`` loads the weights of a model shared by :func:`bhvit.hub.save_pretrained`, which timm
    finds as ``create_model("local-dir:DIR")`` or ``create_model("hf-hub:user/name")`` and describes in the
    ``pretrained_cfg`` it passes (:func:`_shared_weights`; ``cache_dir``: where the Hub's file is cached);
    the variants themselves have no hosted weights. ``pretrained_model_args`` (the options the saved
    config recorded, which timm also passes as options) changes nothing.
    """
    weights = _shared_weights(name, options.get("pretrained_cfg"), options.get("cache_dir")) if pretrained else None
    base = VARIANTS[name]
    fields = set(base.__dataclass_fields__)
    unknown = sorted(set(options) - fields - set(_BUILD_OPTIONS))
    if unknown:
        valid = sorted(fields | set(_BUILD_OPTIONS))
        raise ValueError(f"unknown option(s) {unknown} for {name}; valid options: {valid}")
    model = BHViT(replace(base, **{k: v for k, v in options.items() if k in fields}), architecture=name)
    model.pretrained_cfg.update(_cfg_overlay(options.get("pretrained_cfg"), options.get("pretrained_cfg_overlay")))
    if weights is not None:
        _load_shared(model, weights)
    if options.get("features_only"):
        return FeatureGetter(model, options.get("out_indices", FEATURE_INDICES))
    return model


SHARED_WEIGHTS = "model.safetensors"  # bhvit.hub's weights file


def _shared_weights(name: str, cfg: Any, cache_dir: Any) -> str:
    """The weights file of a shared model that timm's ``pretrained_cfg`` points at: ``local-dir`` (its
    ``file`` is the folder) or ``hf-hub`` (``hf_hub_id``, downloaded by huggingface_hub into ``cache_dir``)."""
    source = cfg.get("source") if isinstance(cfg, dict) else None
    if source == "local-dir" and cfg.get("file"):
        path = os.path.join(str(cfg["file"]), SHARED_WEIGHTS)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file (bhvit's save_pretrained writes one)")
        return path
    if source == "hf-hub" and cfg.get("hf_hub_id"):
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=str(cfg["hf_hub_id"]), filename=SHARED_WEIGHTS, cache_dir=cache_dir)
    raise ValueError(
        f"{name} has no downloadable weights; load the authors' checkpoint with bhvit.load_upstream(path), one of "
        "ours with bhvit.load_model(path), or a shared model with timm.create_model('local-dir:DIR' or "
        "'hf-hub:user/name', pretrained=True)"
    )


def _load_shared(model: BHViT, path: str) -> None:
    """The weights of ``path`` into ``model``; with another class count the classifier keeps its fresh
    weights (timm's rule for a new head). A ValueError names what does not fit."""
    from safetensors.torch import load_file

    state = load_file(path)
    head = {k for k in state if k.startswith("head.")}
    if "head.weight" in state and state["head.weight"].shape[0] != model.config.num_classes:
        state = {k: v for k, v in state.items() if k not in head}
    arch = model.pretrained_cfg.get("architecture")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes: another architecture or size
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ValueError(f"{path} does not fit {arch} built with these options: {first}") from None
    wrong = unexpected + [k for k in missing if k not in head]
    if wrong:
        raise ValueError(f"{path} does not fit {arch}: {', '.join(wrong[:4])}{' …' if len(wrong) > 4 else ''}")


def _cfg_overlay(cfg: Any, overlay: dict[str, Any] | None) -> dict[str, Any]:
    """Fields replacing the built-in input metadata: a ``pretrained_cfg`` dict and an overlay.

    timm passes a weight tag as ``pretrained_cfg`` (a string); BHViT has no tagged weights.
    """
    if isinstance(cfg, str) and cfg:
        raise ValueError(f"no pretrained weights tagged {cfg!r}: BHViT variants have no hosted weights")
    fields = dict(cfg) if isinstance(cfg, dict) else {}
    return {**fields, **(overlay or {})}


def bhvit_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """BHViT-Tiny: depths (2, 2, 6, 2), widths 64–512; README top-1 66.0 (some-fp), 64.0 (binary)."""
    return _create("bhvit_tiny", pretrained, kwargs)


def bhvit_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """BHViT-Small: depths (3, 4, 8, 4), widths 64–512; README top-1 70.1 (some-fp), 68.4 (binary)."""
    return _create("bhvit_small", pretrained, kwargs)


def bhvit_test(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A tiny variant for fast tests: one block per stage, widths 16–128, 32 px, window 1."""
    return _create("bhvit_test", pretrained, kwargs)


BUILTIN: tuple[ModelEntry, ...] = (
    ModelEntry(
        "bhvit_tiny",
        bhvit_tiny,
        TINY,
        default_cfgs["bhvit_tiny"],
        paper_top1={"some_fp": 66.0, "binary": 64.0},
        params_1000={"some_fp": 13_779_960, "binary": 13_783_040},
    ),
    ModelEntry(
        "bhvit_small",
        bhvit_small,
        SMALL,
        default_cfgs["bhvit_small"],
        paper_top1={"some_fp": 70.1, "binary": 68.4},
        params_1000={"fp": 22_642_792},
    ),
    ModelEntry("bhvit_test", bhvit_test, TEST, default_cfgs["bhvit_test"]),
)
