"""Training BHViT: losses (CE, KD, L_re), the loop, checkpoints, distributed runs and the demo.

Library entry points: :func:`train` runs a :class:`TrainConfig`; :func:`evaluate_checkpoint` scores a
checkpoint; :func:`bhvit.train.demo.demo` runs the demo. The command line (``bhvit train``, ``eval``,
``demo``) is :mod:`bhvit.cli.train`; nothing here imports it.
"""

from bhvit.train.config import (
    LossConfig,
    ModelSpec,
    OptimConfig,
    RunConfig,
    TrainConfig,
    choose_window_size,
    load_recipe,
)
from bhvit.train.loop import NonFiniteLossError, evaluate_checkpoint, train

__all__ = [
    "LossConfig",
    "ModelSpec",
    "NonFiniteLossError",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "choose_window_size",
    "evaluate_checkpoint",
    "load_recipe",
    "train",
]
