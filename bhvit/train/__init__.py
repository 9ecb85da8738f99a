"""Training BHViT: losses (CE, KD, L_re), the loop, checkpoints, distributed runs and the demo.

Library entry points: :func:`train` runs a :class:`TrainConfig`; :func:`evaluate_checkpoint` scores a
checkpoint. ``cli_train`` / ``cli_eval`` / ``run_demo`` are the command-line front ends (argparse
lives in :mod:`bhvit.train.cli`, imported lazily so the library never depends on it).
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
from bhvit.train.loop import NonFiniteLossError, train


def cli_train(argv: list[str] | None = None) -> int:
    """``bhvit train``: see ``bhvit train --help``."""
    from bhvit.train.cli import cli_train as run

    return run(argv)


def cli_eval(argv: list[str] | None = None) -> int:
    """``bhvit eval``: see ``bhvit eval --help``."""
    from bhvit.train.cli import cli_eval as run

    return run(argv)


def run_demo(argv: list[str] | None = None) -> int:
    """``bhvit demo``: fp teacher → some-fp and binary students on Fashion-MNIST, with a report."""
    from bhvit.train.demo import run_demo as run

    return run(argv)


__all__ = [
    "LossConfig", "ModelSpec", "NonFiniteLossError", "OptimConfig", "RunConfig", "TrainConfig",
    "choose_window_size", "cli_eval", "cli_train", "load_recipe", "run_demo", "train",
]
