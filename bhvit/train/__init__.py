"""Training BHViT: losses (CE, KD, L_re), the loop, checkpoints, distributed runs and the demo.

Library entry points: :func:`train` runs a :class:`TrainConfig`; :func:`evaluate_checkpoint` scores a
checkpoint; :func:`bhvit.train.demo.demo` runs the demo. The command line (``bhvit train``, ``eval``,
``demo``) is :mod:`bhvit.cli.train`; nothing here imports it.

The names below load their module on first use, so that :mod:`bhvit.train.threads` can set up
OpenMP before anything imports torch.
"""

from __future__ import annotations

from bhvit.lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
