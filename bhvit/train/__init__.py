"""Training BHViT: losses (CE, KD, L_re), the loop, checkpoints, distributed runs and the demo.

Library entry points: :func:`train` runs a :class:`TrainConfig`; :func:`evaluate_checkpoint` scores a
checkpoint; :func:`bhvit.train.demo.demo` runs the demo. The command line (``bhvit train``, ``eval``,
``demo``) is :mod:`bhvit.cli.train`; nothing here imports it.

The names below load their module on first use, so that :mod:`bhvit.train.threads` can set up
OpenMP before anything imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {  # public name -> module of bhvit.train that defines it
    "LossConfig": "config",
    "ModelSpec": "config",
    "OptimConfig": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "choose_window_size": "config",
    "load_recipe": "config",
    "NonFiniteLossError": "loop",
    "evaluate_checkpoint": "loop",
    "train": "loop",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bhvit.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
