"""Training checkpoints: what one holds, written atomically, loaded with ``torch.load(weights_only=True)``.

A training checkpoint is a dict of tensors and plain Python values, built by :func:`checkpoint_dict`
(the only place that writes one) and read back by :func:`restore`; its keys, in order:

- ``format``: :data:`FORMAT`.
- ``model_config``: ``BHViTConfig.to_dict()`` (rebuilds the model with ``bhvit.build_model``).
- ``model``: the student's state dict.
- ``optimizer``: AdamW's state dict.
- ``scheduler``: the learning-rate schedule's state dict.
- ``scaler``: the fp16 GradScaler's state dict, None without one.
- ``ema``: the EMA weights (a state dict), None without EMA.
- ``rng``: the torch CPU (and CUDA) and Python ``random`` states.
- ``step``: optimizer steps done.
- ``epoch``: epochs trained.
- ``step_in_epoch``: steps done inside the next epoch (where a resumed run continues).
- ``train_time``: seconds spent in training steps (evaluation excluded).
- ``history``: JSON list of the per-epoch records (train and test metrics).
- ``train_config``: JSON of ``TrainConfig.to_dict()``.
- ``metrics``: JSON of the last evaluation.
- ``pending_eval``: JSON of the train metrics of an epoch trained but not yet evaluated (``null``
  otherwise); a resume evaluates it first.
- ``labels``: the class names, in the order of the logits.
- ``preprocess``: ``{"mean", "std", "resize"}``, exactly what the evaluation did to an image: resize
  the shorter side to ``resize``, centre-crop the model's input size, normalise; ``bhvit pack`` stores
  it in the packed file.
- ``data_split``: for a folder without a validation split, the hold-out the run drew
  (:func:`bhvit.data.folder.split_flat`: seed, fraction, image counts); None otherwise.

Atomic: the dict is written to a temporary file in the same directory, flushed and fsynced, then
``os.replace``d over ``path``; a crash mid-write leaves the previous checkpoint intact, and a full disk
is one :class:`bhvit.checkpoint.NoSpaceError` naming the path.

The model a checkpoint holds loads like any other with :func:`bhvit.load_model` (with its ``labels``
and ``preprocess``); :func:`load` gives the whole dict for resuming.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bhvit.checkpoint import atomic_write
from bhvit.data import DataBundle
from bhvit.models.bhvit import BHViT
from bhvit.train.ema import ModelEMA
from bhvit.upstream import CheckpointError, safe_torch_load

FORMAT = "bhvit-train-v1"


@dataclass
class TrainState:
    """Where the run is: optimizer steps done, current epoch, steps done inside it."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0  # seconds spent in training steps (evaluation excluded)
    pending: dict[str, float] | None = None  # train metrics of epoch ``epoch``, trained but not yet evaluated


def checkpoint_dict(
    *,
    model: BHViT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ema: ModelEMA | None,
    state: TrainState,
    train_config: dict[str, Any],
    data: DataBundle,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a run at ``state``: the keys the module docstring lists, in its order."""
    return {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
        "step": state.step,
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "train_time": state.train_time,
        "history": json.dumps(state.history),
        "train_config": json.dumps(train_config),
        "metrics": json.dumps(metrics or {}),
        "pending_eval": json.dumps(state.pending),
        "labels": list(data.classes),
        "preprocess": dict(data.preprocess),
        "data_split": dict(data.split) if data.split is not None else None,
    }


def restore(
    ck: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ema: ModelEMA | None,
) -> TrainState:
    """Load checkpoint ``ck`` (from :func:`load`) into the run's parts and the RNGs; returns where to
    continue. A checkpoint without scaler or EMA state leaves those as they are."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    if ema is not None and ck.get("ema"):
        ema.load_state_dict(ck["ema"])
    set_rng_state({k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in ck["rng"].items()})
    history = json.loads(ck.get("history", "[]"))
    pending = json.loads(ck.get("pending_eval", "null"))
    return TrainState(ck["step"], ck["epoch"], ck["step_in_epoch"], history, float(ck.get("train_time", 0.0)), pending)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    torch writes through a Python file object here: given a path, its C++ writer reports a full disk
    as "enforce fail at inline_container.cc"; through a file, the ``OSError`` (ENOSPC) itself reaches
    :func:`bhvit.checkpoint.atomic_write`, which names the path.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


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
