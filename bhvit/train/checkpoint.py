"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A training checkpoint is a dict of tensors and plain Python values:

``format``: :data:`FORMAT`; ``model_config``: ``BHViTConfig.to_dict()`` (rebuilds the model with
``bhvit.build_model``); ``model``: state dict; ``optimizer``, ``scheduler``, ``scaler``, ``ema``:
their state dicts (or None); ``rng``: torch CPU/CUDA and Python ``random`` states; ``step`` (optimizer
steps done), ``epoch`` and ``step_in_epoch`` (where to continue); ``train_config``:
``TrainConfig.to_dict()``; ``metrics``: the last evaluation.

Atomic: the dict is written to a temporary file in the same directory, flushed and fsynced, then
``os.replace``d over ``path``; a crash mid-write leaves the previous checkpoint intact.

The model a checkpoint holds loads like any other with :func:`bhvit.load_model`; :func:`load` gives the
whole dict (optimizer, EMA, RNG states) for resuming.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from bhvit.checkpoint import atomic_write
from bhvit.upstream import CheckpointError, safe_torch_load

FORMAT = "bhvit-train-v1"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint through :func:`bhvit.upstream.safe_torch_load` (``weights_only``:
    no code from pickles); :class:`CheckpointError` when it cannot be read or is not one."""
    ckpt = safe_torch_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("model_config"), dict):
        raise CheckpointError(
            f"{path}: not a bhvit training checkpoint (needs 'model' and 'model_config'); "
            "a model file (.safetensors, the authors' .pth) works with bhvit predict / pack"
        )
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from (the data pipeline seeds its own per sample)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """``random.setstate`` wants nested tuples; a round trip may give lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
