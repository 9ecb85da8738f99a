"""Typed, validated hyperparameters of a training run, and recipe files (TOML) that fill them.

A recipe has one table per dataclass: ``[data]`` (:class:`bhvit.data.DataConfig`), ``[model]``,
``[loss]``, ``[optim]`` and ``[run]``. Unknown keys are errors, so a typo in a recipe fails loudly.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from bhvit.data import DataConfig
from bhvit.models.bhvit import ATTN_QUANTS, NORMS, PRECISIONS, AttnQuant, Norm, Precision, choose_window_size

# Choices are Literal annotations (the command line reads its choices from them) and tuples for checks.
LossMode = Literal["paper", "kd", "kd_reg", "ce"]
RegForm = Literal["paper", "authors"]
AmpMode = Literal["auto", "off", "bf16", "fp16"]
LOSS_MODES: tuple[str, ...] = get_args(LossMode)
REG_FORMS: tuple[str, ...] = get_args(RegForm)
AMP_MODES: tuple[str, ...] = get_args(AmpMode)


@dataclass(frozen=True)
class ModelSpec:
    """The student: arguments of ``bhvit.create_model`` (``img_size``/classes/channels come from data).

    ``arch``: a registered model name (``bhvit_tiny``, ``bhvit_small``, …; ``bhvit profile`` lists
    their sizes). ``precision``: ``fp`` (all full precision), ``some_fp`` (binary blocks, fp stem,
    downsampling and head: the paper's †) or ``binary`` (downsampling binary too). ``attn_quant``:
    how attention's activations are quantized (``lsq``: learned step size, ``gsb``: the paper's
    group-wise binarisation). ``window_size``: the attention window in tokens (None picks
    :func:`choose_window_size` for the input size). ``norm``: ``bn`` (token BatchNorm, the released
    models) or ``ln`` (LayerNorm). ``drop_path_rate``: stochastic depth at the last block (0 = off).
    ``recu``: binarize weights with ReCU's rescaled, clipped straight-through estimator instead of the
    plain one. ``overrides`` are extra fields of ``BHViTConfig`` (e.g. ``{"depths": [1, 1, 2, 1]}``)
    for small experimental variants. ``init_from``: a checkpoint whose tensors of matching name and
    shape initialise the student (e.g. the fp teacher for a binary student, the two-step recipe of
    binary-network training).
    """

    arch: str = "bhvit_tiny"
    precision: Precision = "binary"
    attn_quant: AttnQuant = "lsq"
    window_size: int | None = None
    norm: Norm = "bn"
    drop_path_rate: float = 0.0
    recu: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS, f"precision={self.precision!r}; expected {PRECISIONS}")
        _check(self.attn_quant in ATTN_QUANTS, f"attn_quant={self.attn_quant!r}; expected {ATTN_QUANTS}")
        _check(self.norm in NORMS, f"norm={self.norm!r}; expected {NORMS}")
        _check(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate must lie in [0, 1)")
        _check(self.window_size is None or self.window_size >= 1, "window_size must be ≥ 1")


@dataclass(frozen=True)
class LossConfig:
    """The loss mix (SPEC §4).

    ``mode``: ``paper`` is ``(1−λ−β)·CE + λ·KD + β·L_re`` with β switched on for the last
    ``reg_fraction`` of the steps (0 before), ``kd`` pure KD (the authors' default script), ``kd_reg``
    ``(1−β)·KD + β·L_re`` throughout (the authors' ``--regularization_loss``, β = 0.1), ``ce``
    ``(1−β_t)·CE + β_t·L_re`` with β_t as in ``paper`` (no teacher; set ``reg_weight = 0`` for plain
    CE). ``kd_weight``: λ, the weight of the distillation term. ``reg_weight``: β, the weight of the
    regularization loss L_re that pulls latent weights away from 0. ``reg_fraction``: the share of
    the steps, at the end, during which β is on. ``label_smoothing``: of the CE term. ``teacher`` is a
    path to one of our checkpoints or ``timm:<name>``; KD modes require one. ``reg_form``: ``paper``
    averages over all weights, ``authors`` averages per-tensor means and skips the downsampling convs.
    ``auto_teacher``: a binary or some-fp run given neither a teacher nor ``init_from`` first trains an
    fp model of the same architecture for ``auto_teacher_epochs`` of the run's epochs (None: a third,
    at least 1), then starts the student from it and distils from it with the ``paper`` loss for the
    remaining epochs (:func:`bhvit.train.auto_teacher.train_with_auto_teacher`; on by default for
    ``bhvit train`` without a recipe). ``auto_teacher_epochs``: the fp stage's share of ``epochs``
    (None: a third, at least 1).
    """

    mode: LossMode = "paper"
    kd_weight: float = 0.8
    reg_weight: float = 0.1
    reg_fraction: float = 0.1
    label_smoothing: float = 0.1
    reg_form: RegForm = "paper"
    teacher: str | None = None
    auto_teacher: bool = False
    auto_teacher_epochs: int | None = None

    def __post_init__(self) -> None:
        _check(self.mode in LOSS_MODES, f"loss mode {self.mode!r}; expected {LOSS_MODES}")
        _check(self.reg_form in REG_FORMS, f"reg_form={self.reg_form!r}; expected {REG_FORMS}")
        _check(0 <= self.kd_weight <= 1 and 0 <= self.reg_weight <= 1, "loss weights must lie in [0, 1]")
        _check(self.mode != "paper" or self.kd_weight + self.reg_weight <= 1, "λ + β must be ≤ 1")
        _check(0 <= self.reg_fraction <= 1, "reg_fraction must lie in [0, 1]")
        _check(0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)")
        _check(self.mode == "ce" or self.teacher is not None, f"loss mode {self.mode!r} needs a teacher")
        _check(self.auto_teacher_epochs is None or self.auto_teacher_epochs >= 1, "auto_teacher_epochs must be ≥ 1")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and a per-step cosine schedule with linear warm-up.

    ``lr`` is the base rate for a global batch of 512 (scaled linearly, as the authors do) when
    ``scale_lr`` is true, else used as given. ``scale_lr``: scale ``lr`` by batch/512.
    ``weight_decay``: AdamW's decoupled decay (biases, norms, scales and position embeddings get none).
    ``betas``: AdamW's two moment decays. ``eps``: AdamW's denominator term. ``warmup_epochs``: the
    linear warm-up from 0, in epochs (fractions allowed). ``min_lr``: where the cosine ends.
    ``clip_grad``: max global grad norm (None = off).
    """

    lr: float = 5e-4
    scale_lr: bool = True
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    clip_grad: float | None = None

    def __post_init__(self) -> None:
        _check(self.lr > 0 and self.min_lr >= 0 and self.weight_decay >= 0, "lr > 0, min_lr, weight_decay ≥ 0")
        _check(all(0 <= b < 1 for b in self.betas) and self.eps > 0, "betas must lie in [0, 1), eps > 0")
        _check(self.warmup_epochs >= 0, "warmup_epochs must be ≥ 0")
        _check(self.clip_grad is None or self.clip_grad > 0, "clip_grad must be > 0 or None")


@dataclass(frozen=True)
class RunConfig:
    """Length, bookkeeping and hardware of a run.

    ``epochs``: passes over the training set. ``out_dir``: where the checkpoint, ``log.jsonl``,
    ``summary.json`` and plots go. ``seed``: initial weights, data order, augmentation and a flat
    folder's hold-out split. ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    ``amp``: mixed precision (``auto``: fp16 on CUDA, off on CPU). ``ema_decay``: keep an exponential
    moving average of the weights with this decay, scored too (None = off). ``log_every``: a
    ``log.jsonl`` record every n steps. ``resume``: a checkpoint of this run to continue from exactly
    (``out_dir/checkpoint.pt``). ``threads``: torch's CPU threads (None: ``$BHVIT_NUM_THREADS``, else
    the CPUs this process may use, from its CPU affinity and cgroup quota, not the machine's core
    count). ``progress``: the progress bar and per-epoch lines. ``plots``: PNG plots of the run at its
    end.
    ``grad_checkpointing`` recomputes each block's activations in the backward pass (about one
    extra forward for a large cut in memory; results unchanged). ``compile``: run the student's forward
    (and so its backward) through ``torch.compile`` with static shapes (the first step, which also sets
    up LSQ, compiles; see benchmarks/bench_compile.py for when it pays). ``max_steps`` stops early (tests,
    benchmarks); ``stop_after_steps`` simulates an interruption (the run ends without finishing, as a
    killed job would, and can be resumed). ``ckpt_every``: save
    a checkpoint every n steps (0: only at the end of each epoch). ``flip_every``: measure the weight
    flip ratio every n steps (0: never).
    """

    epochs: int = 10
    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    amp: AmpMode = "auto"
    ema_decay: float | None = None
    grad_checkpointing: bool = False
    compile: bool = False
    log_every: int = 20
    ckpt_every: int = 0
    flip_every: int = 10
    max_steps: int | None = None
    stop_after_steps: int | None = None
    resume: str | None = None
    threads: int | None = None
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs must be ≥ 1")
        _check(self.amp in AMP_MODES, f"amp={self.amp!r}; expected {AMP_MODES}")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must lie in (0, 1)")
        _check(min(self.log_every, 1) >= 1 and self.ckpt_every >= 0 and self.flip_every >= 0, "bad intervals")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps must be ≥ 1")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    loss: LossConfig = field(default_factory=lambda: LossConfig(mode="ce"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from nested tables; unknown tables or keys raise ``ValueError``."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        classes = {"data": DataConfig, "model": ModelSpec, "loss": LossConfig, "optim": OptimConfig, "run": RunConfig}
        unknown = set(d) - set(types)
        _check(not unknown, f"unknown recipe tables {sorted(unknown)}; expected {sorted(types)}")
        return cls(**{k: _build(classes[k], v) for k, v in d.items()})

    def replace(self, **tables: dict[str, Any]) -> TrainConfig:
        """A copy with some fields of some tables replaced: ``cfg.replace(run={"epochs": 2})``."""
        return TrainConfig(
            **{
                f.name: dataclasses.replace(getattr(self, f.name), **tables.get(f.name, {}))
                for f in dataclasses.fields(self)
            }
        )


def _build(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    _check(not unknown, f"unknown keys {sorted(unknown)} for {cls.__name__}; expected {sorted(names)}")
    if "betas" in values:
        values = {**values, "betas": tuple(values["betas"])}
    return cls(**values)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def load_recipe(path: str | Path) -> TrainConfig:
    """Parse a TOML recipe into a validated :class:`TrainConfig`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return TrainConfig.from_dict(tomllib.load(f))


LONG_RUN_EPOCHS = 20  # bhvit train without a recipe augments runs of at least this many epochs
SHORT_BINARY_EPOCHS = 10  # and trains binary models of fewer epochs at twice the lr


def no_recipe_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """Values of ``bhvit train`` without ``--recipe``, as ``{"table.field": value}``, for every field the
    dataclass defaults do not serve there; ``given`` are the flags the user gave (they win).

    The dataclass defaults stay those of the recipes and the paper (lr 5e-4 per 512 images, no warm-up,
    flips); these are measured for a first run on new data, short or long (docs/training.md, "Defaults
    for your own data"):

    * ``optim.lr`` as given, whatever the batch (``scale_lr`` false): 2e-3, and 4e-3 for a binary or
      some-fp run of fewer than 10 epochs (digits, 3 epochs: binary 96.7 % at 4e-3, 92.4 % at 2e-3; the
      demo's 1-epoch students agree, its 10-epoch ones were best at 2e-3); 5e-4 with ``--init-from``
      and no ``--teacher`` (fine-tuning a trained model: its binary weights keep their signs in the
      first steps; a student initialised from its teacher is not fine-tuning). At batch
      128 the paper's scaled 1.25e-4 leaves a short run far from converged;
    * ``data.batch_size`` 32: steps, not images, are what a short run on a small set lacks (4,000
      images are 31 steps an epoch at 128; one fp epoch reached 55 % top-1 on a digits set at batch 128,
      89 % at 64 and 94 % at 32) for about 1.3× the time per image of batch 128 on a CPU;
    * ``optim.warmup_epochs`` 5 % of the epochs, within [0.2, 5];
    * ``optim.weight_decay`` 0.05 for fp, 0 for binary and some-fp models (decay pulls latent weights
      towards 0, where their signs flip);
    * ``data.augment`` ``none`` for runs under 20 epochs, else ``auto``: a short run learns more from the
      images as they are (one fp epoch on digits: 97.6 % plain, 93.9 % padded and cropped; the demo's
      10-epoch augmented teacher stayed below a 4-epoch plain one), a long one needs augmentation (the
      20-epoch augmented Fashion-MNIST teacher is the best fp model measured here);
    * ``data.hflip`` false for a directory (the user's own data: a mirrored digit or letter is another
      symbol); the named datasets keep their family's flips;
    * ``loss.auto_teacher`` true: a binary or some-fp model without ``--teacher`` and ``--init-from``
      gets an fp stage first.
    """
    epochs = given.get("run.epochs", RunConfig.epochs)
    precision = given.get("model.precision", ModelSpec.precision)
    name = given.get("data.name", DataConfig.name)
    fine_tuning = bool(given.get("model.init_from") and not given.get("loss.teacher"))
    rules = {
        "data.batch_size": 32,
        "data.augment": "none" if epochs < LONG_RUN_EPOCHS else "auto",
        "optim.lr": _no_recipe_lr(epochs, precision, fine_tuning),
        "optim.scale_lr": False,
        "optim.warmup_epochs": min(5.0, max(0.2, 0.05 * epochs)),
        "optim.weight_decay": 0.05 if precision == "fp" else 0.0,
        "loss.auto_teacher": True,
    }
    if Path(str(name)).is_dir():
        rules["data.hflip"] = False
    return {k: v for k, v in rules.items() if k not in given}


def _no_recipe_lr(epochs: int, precision: str, fine_tuning: bool) -> float:
    if fine_tuning:
        return 5e-4
    return 4e-3 if precision != "fp" and epochs < SHORT_BINARY_EPOCHS else 2e-3


def steps_per_epoch(num_train: int, global_batch: int) -> int:
    """Optimizer steps per epoch: incomplete last batches are dropped (≥ 1 step)."""
    return max(1, num_train // global_batch) if num_train >= global_batch else 1


FEW_STEPS = 30  # an epoch of fewer optimizer steps than this gets a warning (a few dozen)


def fitted_batch(batch: int, num_train: int, world_size: int = 1) -> int:
    """The global batch a run can use: ``batch``, or, when the training set is smaller, the largest
    multiple of ``world_size`` that fits it (at least ``world_size``): a larger batch would only repeat
    images, at a memory cost that grows with the batch asked for."""
    if batch <= num_train:
        return batch
    return max(world_size, num_train - num_train % world_size)


def few_steps_advice(num_train: int, global_batch: int, epochs: int) -> str | None:
    """None, or when an epoch is fewer than :data:`FEW_STEPS` optimizer steps, what it is and what to
    change (short runs on a small folder end at chance otherwise: 40 images at batch 32 is one step)."""
    per = steps_per_epoch(num_train, global_batch)
    if per >= FEW_STEPS:
        return None
    smaller = max(4, num_train // FEW_STEPS)  # batches under 4 make BatchNorm statistics noisy
    fix = (
        f"a smaller --batch-size ({smaller} gives {steps_per_epoch(num_train, smaller)} steps per epoch), "
        if smaller < global_batch
        else ""
    )
    return (
        f"an epoch is only {per} optimizer step(s) ({num_train} training images at batch {global_batch}), "
        f"{per * epochs} in all: too few to learn much; use {fix}more --epochs, or more images"
    )


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """``lr · batch / 512`` when ``scale_lr`` (the authors' linear scaling), else ``lr``."""
    return optim.lr * global_batch / 512 if optim.scale_lr else optim.lr


__all__ = [
    "LossConfig",
    "ModelSpec",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "choose_window_size",
    "few_steps_advice",
    "fitted_batch",
    "load_recipe",
    "no_recipe_defaults",
    "scaled_lr",
    "steps_per_epoch",
]
