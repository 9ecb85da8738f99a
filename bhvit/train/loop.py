"""The training loop, top to bottom: build → (resume) → for each epoch: steps, evaluate, checkpoint.

One function, :func:`train`, runs a whole :class:`TrainConfig` on one CPU/GPU or under ``torchrun``.
:func:`train_step` is one optimizer step and returns the named losses (``loss``, ``task_loss``,
``kd_loss``, ``reg_loss``). :func:`evaluate` gives top-1/top-5 reduced over all ranks.

Reproducibility contract: a run stopped after step k (``run.stop_after_steps`` or a crash after a
checkpoint) and resumed from its checkpoint ends with the same weights as an uninterrupted run. This
holds because (1) the sampler's order is a function of (seed, epoch) and it can start mid-epoch, (2)
each sample's augmentation is seeded by (seed, epoch, index), and (3) the checkpoint carries the
optimizer, scheduler, scaler, EMA and RNG states (the RNG feeds drop-path).

Nothing trained is lost to a crash: an epoch's checkpoint is written *before* its evaluation (marked
``pending_eval``; a resume evaluates it first, and evaluation touches no training state, so resuming
stays exact), and an unreadable training image stops the run with the file named after the state
reached is saved. A restarted run removes its directory's stale temporaries, and a resumed one first
drops the ``log.jsonl`` records written after its checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bhvit.checkpoint import atomic_write, load_model
from bhvit.data import DataBundle, DatasetError, build_datasets
from bhvit.data.folder import describe_split
from bhvit.data.transforms import normalize_batch
from bhvit.models.bhvit import BHViT
from bhvit.text import printable
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.checkpoint import TrainState
from bhvit.train.config import (
    TrainConfig,
    choose_window_size,
    few_steps_advice,
    fitted_batch,
    scaled_lr,
    steps_per_epoch,
)
from bhvit.train.distributed import (
    DistInfo,
    EvalSampler,
    TrainSampler,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    cleanup_distributed,
    init_distributed,
)
from bhvit.train.ema import ModelEMA
from bhvit.train.flips import FlipTracker
from bhvit.train.init_from import InitReport, init_from_checkpoint
from bhvit.train.logs import JsonlLogger, Progress, trim_log
from bhvit.train.losses import LossWeights, combine, loss_weights, reg_weights
from bhvit.train.schedule import build_scheduler
from bhvit.train.teacher import FrozenTeacher, load_teacher
from bhvit.train.threads import torch_threads


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without touching its last checkpoint."""


@dataclass
class Components:
    """Everything :func:`train` builds before the first step."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    data: DataBundle
    model: BHViT  # the bare student
    wrapped: Callable[[Tensor], Tensor]  # the student's forward: DDP(student) when distributed, compiled if asked
    teacher: FrozenTeacher | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    ema: ModelEMA | None
    total_steps: int
    steps_per_epoch: int
    init: InitReport | None = None  # what ``model.init_from`` copied
    warnings: tuple[str, ...] = ()  # what the run changed or doubts about its setup (printed and logged)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def build_student(cfg: TrainConfig, data: DataBundle) -> BHViT:
    """``bhvit.create_model`` with the data's classes/channels and a window that fits the image size."""
    from bhvit.registry import create_classifier

    spec = cfg.model
    window = spec.window_size or choose_window_size(cfg.data.img_size)
    return create_classifier(
        spec.arch,
        precision=spec.precision,
        attn_quant=spec.attn_quant,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=cfg.data.img_size,
        window_size=window,
        norm=spec.norm,
        drop_path_rate=spec.drop_path_rate,
        recu=spec.recu,
        **spec.overrides,
    )


def amp_setup(mode: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``auto``: fp16 + GradScaler on CUDA, off on CPU; ``bf16``: bf16 autocast (no scaler)."""
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return None, None
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("amp='fp16' needs CUDA; use amp='bf16' or 'off' on CPU")
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, scales and position embeddings (1-D or ``pos_embed``)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith("pos_embed") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build(cfg: TrainConfig) -> Components:
    info = init_distributed("cuda" if cfg.run.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    device = resolve_device(cfg.run.device, info)
    torch.set_num_threads(torch_threads(cfg.run.threads))
    if cfg.data.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.data.batch_size} (global) is not divisible by {info.world_size} ranks")
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    data = build_datasets(cfg.data, seed=cfg.run.seed)
    cfg, warnings = fit_to_data(cfg, len(data.train), info.world_size)
    model = build_student(cfg, data)
    init = init_from_checkpoint(model, cfg.model.init_from) if cfg.model.init_from else None
    if cfg.run.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if info.enabled:
        from bhvit.layers import convert_sync_batchnorm

        convert_sync_batchnorm(model)
    model.to(device)
    wrapped: Callable[[Tensor], Tensor] = model
    if info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    if cfg.run.compile:  # static shapes: dynamic ones recompile per stage and hit inductor bugs (torch 2.13)
        wrapped = torch.compile(wrapped, dynamic=False)
    teacher = (
        load_teacher(cfg.loss.teacher, data.num_classes, device, data_stats=(data.mean, data.std))
        if cfg.loss.teacher
        else None
    )
    lr = scaled_lr(cfg.optim, cfg.data.batch_size)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=lr, betas=cfg.optim.betas, eps=cfg.optim.eps
    )
    per_epoch = steps_per_epoch(len(data.train), cfg.data.batch_size)
    total = cfg.run.epochs * per_epoch
    if cfg.run.max_steps is not None:
        total = min(total, cfg.run.max_steps)
    scheduler = build_scheduler(optimizer, total, round(cfg.optim.warmup_epochs * per_epoch), lr, cfg.optim.min_lr)
    amp_dtype, scaler = amp_setup(cfg.run.amp, device)
    ema = ModelEMA(model, cfg.run.ema_decay) if cfg.run.ema_decay else None
    return Components(
        cfg,
        info,
        device,
        data,
        model,
        wrapped,
        teacher,
        optimizer,
        scheduler,
        scaler,
        amp_dtype,
        ema,
        total,
        per_epoch,
        init,
        warnings,
    )


def fit_to_data(cfg: TrainConfig, num_train: int, world_size: int) -> tuple[TrainConfig, tuple[str, ...]]:
    """``cfg`` with its batch clamped to the training set (:func:`fitted_batch`), and the warnings to give:
    the clamp, and an epoch of too few steps (:func:`few_steps_advice`)."""
    warnings = []
    batch = fitted_batch(cfg.data.batch_size, num_train, world_size)
    if batch != cfg.data.batch_size:
        warnings.append(
            f"--batch-size {cfg.data.batch_size} is larger than the {num_train} training images: using {batch}"
        )
        cfg = cfg.replace(data={"batch_size": batch})
    if advice := few_steps_advice(num_train, batch, cfg.run.epochs):
        warnings.append(advice)
    return cfg, tuple(warnings)


# ---------------------------------------------------------------------------------------------
# One step, one evaluation
# ---------------------------------------------------------------------------------------------
def train_step(c: Components, images: Tensor, labels: Tensor, weights: LossWeights) -> dict[str, Tensor]:
    """Forward (student, and teacher without grad), backward, clip, optimizer and scheduler step.

    Returns the named losses as detached scalars plus ``correct`` (top-1 hits in the batch). A
    non-finite loss raises *before* the optimizer touches the weights.
    """
    cfg = c.cfg
    autocast = torch.autocast(c.device.type, dtype=c.amp_dtype, enabled=c.amp_dtype is not None)
    with autocast:
        logits = c.wrapped(images)
        teacher_logits = c.teacher(images) if c.teacher is not None and weights.kd > 0 else None
        latent = reg_weights(c.model, cfg.loss.reg_form) if cfg.loss.reg_weight > 0 else []
        losses = combine(weights, logits, labels, teacher_logits, latent, cfg.loss)
    loss = losses["loss"]
    # Every rank must agree before backward: one rank skipping it would leave DDP's all-reduce hanging.
    if broadcast_flag(not bool(torch.isfinite(loss)), c.info, c.device):
        nan = torch.full((), float("nan"))
        return {k: v.detach() for k, v in losses.items()} | {"loss": nan, "correct": torch.zeros(())}
    c.optimizer.zero_grad(set_to_none=True)
    if c.scaler is not None:
        c.scaler.scale(loss).backward()
        c.scaler.unscale_(c.optimizer)
    else:
        loss.backward()
    if cfg.optim.clip_grad is not None:
        losses["grad_norm"] = nn.utils.clip_grad_norm_(c.model.parameters(), cfg.optim.clip_grad)
    if c.scaler is not None:
        c.scaler.step(c.optimizer)
        c.scaler.update()
    else:
        c.optimizer.step()
    c.scheduler.step()
    if c.ema is not None:
        c.ema.update(c.model)
    correct = (logits.detach().argmax(-1) == labels).sum().float()
    return {k: v.detach() for k, v in losses.items()} | {"correct": correct}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    data: DataBundle,
    device: torch.device,
    info: DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean CE over the whole split, summed over ranks.

    An unreadable image raises :class:`DatasetError` naming it; a split without images is an error
    too (never a 0 % score).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, CE sum, count
    for images, labels in loader:
        images = normalize_batch(images.to(device, non_blocking=True), data.mean, data.std)
        labels = labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == labels[:, None]
        ce = nn.functional.cross_entropy(logits, labels, reduction="sum")
        sums += torch.stack([hits[:, 0].sum(), hits.any(-1).sum(), ce, torch.tensor(len(labels))]).double().cpu()
    model.train(was_training)
    s = all_reduce_sum(sums.to(device), info or DistInfo()).cpu()
    if s[3] == 0:
        raise DatasetError(f"{data.name}: the evaluation split holds no images")
    n = float(s[3])
    return {"acc1": 100 * float(s[0]) / n, "acc5": 100 * float(s[1]) / n, "loss": float(s[2]) / n, "n": int(s[3])}


def evaluate_checkpoint(
    path: str,
    data_cfg: Any,
    device: str = "auto",
    use_ema: bool = False,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Load a checkpoint with :func:`bhvit.load_model` and score it on the test split of ``data_cfg``
    (``use_ema``: the EMA weights a training checkpoint carries).

    ``data_cfg`` is a :class:`bhvit.data.DataConfig`; its ``img_size`` should be the checkpoint's.
    ``seed`` draws a flat folder's hold-out split: the training run's seed gives the images it held out.
    """
    torch.set_num_threads(torch_threads(threads))
    dev = resolve_device(device, DistInfo())
    model, _ = load_model(path)
    if use_ema:
        ema = ckpt_io.load(path).get("ema")  # only a training checkpoint carries EMA weights
        if not ema:
            raise ValueError(f"{path} holds no EMA weights")
        model.load_state_dict(ema)
    data = build_datasets(data_cfg, seed=seed)
    if data.num_classes != model.config.num_classes or data.in_chans != model.config.in_chans:
        raise ValueError(
            f"{path}: model has {model.config.num_classes} classes / {model.config.in_chans} channels, "
            f"data {data.name} has {data.num_classes} / {data.in_chans}: evaluate on data of the model's "
            "classes (bhvit eval without --data uses the data it was trained on)"
        )
    loader = torch.utils.data.DataLoader(
        data.test, batch_size=data_cfg.eval_batch_size, num_workers=data_cfg.num_workers
    )
    start = time.time()
    metrics = evaluate(model.to(dev), loader, data, dev)
    seconds = round(time.time() - start, 2)
    split = {"split": data.split} if data.split is not None else {}
    return metrics | {"checkpoint": str(path), "dataset": data.name, **split, "eval_time_s": seconds}


def make_loaders(c: Components) -> tuple[torch.utils.data.DataLoader, TrainSampler, torch.utils.data.DataLoader]:
    dc, info = c.cfg.data, c.info
    per_rank = dc.batch_size // info.world_size
    sampler = TrainSampler(len(c.data.train), per_rank, info, c.cfg.run.seed)
    pin = c.device.type == "cuda"
    # A private generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
    # which would shift the drop-path stream between a resumed and an uninterrupted run.
    common = {
        "num_workers": dc.num_workers,
        "pin_memory": pin,
        "persistent_workers": False,
        "generator": torch.Generator().manual_seed(c.cfg.run.seed),
    }
    train = torch.utils.data.DataLoader(c.data.train, batch_size=per_rank, sampler=sampler, drop_last=True, **common)
    test = torch.utils.data.DataLoader(
        c.data.test, batch_size=dc.eval_batch_size, sampler=EvalSampler(len(c.data.test), info), **common
    )
    return train, sampler, test


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.run.out_dir) / "checkpoint.pt"


def save_checkpoint(c: Components, state: TrainState, metrics: dict[str, Any] | None = None) -> Path | None:
    """Rank 0 writes the run's checkpoint (:func:`bhvit.train.checkpoint.checkpoint_dict`) atomically;
    other ranks only wait."""
    path = checkpoint_path(c.cfg)
    if c.info.is_main:
        ck = ckpt_io.checkpoint_dict(
            model=c.model,
            optimizer=c.optimizer,
            scheduler=c.scheduler,
            scaler=c.scaler,
            ema=c.ema,
            state=state,
            train_config=c.cfg.to_dict(),
            data=c.data,
            metrics=metrics,
        )
        ckpt_io.atomic_save(ck, path)
    barrier(c.info)
    return path


def restore(c: Components, path: str) -> TrainState:
    """Load a training checkpoint into the components; returns where to continue."""
    ck = ckpt_io.load(path, map_location=c.device)
    return ckpt_io.restore(ck, model=c.model, optimizer=c.optimizer, scheduler=c.scheduler, scaler=c.scaler, ema=c.ema)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _reduce_losses(out: dict[str, Tensor], c: Components) -> dict[str, float]:
    """Mean of each named loss over ranks (and the summed correct count)."""
    keys = sorted(out)
    vec = all_reduce_sum(torch.stack([out[k].float().reshape(()) for k in keys]).to(c.device), c.info).cpu()
    return {k: float(v) / (1 if k == "correct" else c.info.world_size) for k, v in zip(keys, vec)}


def _nan_message(state: TrainState, values: dict[str, float], c: Components) -> str:
    path = checkpoint_path(c.cfg)
    last = f"the last good checkpoint is {path}" if path.is_file() else "no checkpoint was written yet"
    terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "correct")
    return (
        f"non-finite loss at step {state.step + 1} (epoch {state.epoch}): {terms}. Training stopped "
        f"before the update; {last} (untouched). Try a lower lr, --clip-grad, or amp off."
    )


def run_epoch(
    c: Components, state: TrainState, loader: torch.utils.data.DataLoader, sampler: TrainSampler, logger: JsonlLogger
) -> tuple[dict[str, float], str]:
    """Train from ``state`` to the end of the epoch or a stop condition.

    Returns the epoch's mean train metrics and why it returned: ``"epoch"`` (end of the epoch),
    ``"max_steps"`` (the run's step budget is spent) or ``"interrupted"`` (``stop_after_steps``).
    """
    cfg, flips = c.cfg, FlipTracker()
    sampler.set_epoch(state.epoch)
    c.data.train.set_epoch(state.epoch)
    sampler.skip_batches(state.step_in_epoch)
    sums: dict[str, float] = {}
    seen = done = 0
    reason = "epoch"
    bar = Progress(c.steps_per_epoch, f"epoch {state.epoch + 1}/{cfg.run.epochs}", cfg.run.progress and c.info.is_main)
    start = time.time()
    try:  # an unreadable image (DatasetError) ends the loop between two steps
        for images, labels in loader:
            images = normalize_batch(images.to(c.device, non_blocking=True), c.data.mean, c.data.std)
            labels = labels.to(c.device, non_blocking=True)
            measure_flips = cfg.run.flip_every and (state.step + 1) % cfg.run.flip_every == 0
            if measure_flips:
                flips.snapshot(c.model)
            out = _reduce_losses(train_step(c, images, labels, loss_weights(cfg.loss, state.step, c.total_steps)), c)
            if not math.isfinite(out["loss"]):
                raise NonFiniteLossError(_nan_message(state, out, c))
            state.step += 1
            state.step_in_epoch += 1
            done += 1
            seen += len(labels) * c.info.world_size
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            if measure_flips and (ratio := flips.ratio(c.model)) is not None:
                out["flip_ratio"] = ratio
            if state.step % cfg.run.log_every == 0 or "flip_ratio" in out:
                lr = c.optimizer.param_groups[0]["lr"]
                logger.log(
                    "step",
                    step=state.step,
                    epoch=state.epoch,
                    lr=lr,
                    **{k: v for k, v in out.items() if k != "correct"},
                )
            bar.update(state.step_in_epoch, loss=out["loss"])
            if cfg.run.ckpt_every and state.step % cfg.run.ckpt_every == 0:
                state.train_time += time.time() - start
                start = time.time()
                save_checkpoint(c, state)
            if state.step >= c.total_steps:
                reason = "max_steps"
                break
            if cfg.run.stop_after_steps and state.step >= cfg.run.stop_after_steps:
                reason = "interrupted"
                break
    finally:
        bar.close()
        state.train_time += time.time() - start
    means = {f"train_{k}": v / max(1, done) for k, v in sums.items() if k != "correct"}
    means["train_acc1"] = 100.0 * sums.get("correct", 0.0) / max(1, seen)
    return means, reason


def write_summary(c: Components, state: TrainState, metrics: dict[str, float], extra: dict[str, Any]) -> dict:
    """``summary.json``: the final test accuracy and what produced it (rank 0 writes)."""
    cfg = c.cfg
    summary = {
        "test_acc1": metrics.get("acc1"),
        "test_acc5": metrics.get("acc5"),
        "test_loss": metrics.get("loss"),
        "test_images": metrics.get("n"),
        "epochs": state.epoch,
        "steps": state.step,
        "arch": cfg.model.arch,
        "precision": cfg.model.precision,
        "dataset": c.data.name,
        "img_size": cfg.data.img_size,
        "window_size": c.model.config.window_size,
        "params": sum(p.numel() for p in c.model.parameters()),
        "checkpoint": str(checkpoint_path(cfg).resolve()),
        "train_time_s": round(state.train_time, 2),
        "world_size": c.info.world_size,
        "teacher": cfg.loss.teacher,
        "loss_mode": cfg.loss.mode,
        **extra,
    }
    if c.info.is_main:
        _write_json(Path(cfg.run.out_dir) / "summary.json", summary)
    return summary


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _note(c: Components, message: str) -> None:
    """One line on stderr from rank 0: what the run did on its own (cleaned up, skipped, trimmed)."""
    if c.info.is_main:
        print(f"bhvit train: {message}", file=sys.stderr, flush=True)


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporaries of atomic writes cut short by a killed run (``bhvit.checkpoint.atomic_write``
    names them ``.<name>.<random>.tmp``; ``.checkpoint.pt.*.tmp`` can be as large as a checkpoint). Other
    files are left alone. Returns what was removed."""
    if not out_dir.is_dir():
        return []
    stale = sorted(p for p in out_dir.glob(".*.tmp") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def trim_resumed_log(path: Path, state: TrainState) -> int:
    """Drop the records ``path`` got after the checkpoint ``state`` was restored from.

    Step records past ``state.step`` and epoch records of epochs the checkpoint has not evaluated
    (its ``history``) were written by the killed run after that checkpoint; the resumed run writes
    them again. Returns how many records were dropped.
    """
    evaluated = state.history[-1]["epoch"] if state.history else 0

    def keep(record: dict[str, Any]) -> bool:
        if record.get("step", 0) > state.step:
            return False
        return not (record.get("kind") == "epoch" and record.get("epoch", 0) > evaluated)

    return trim_log(path, keep)


def open_run_dir(c: Components, state: TrainState) -> JsonlLogger:
    """Rank 0 prepares ``run.out_dir``: stale temporaries removed, the log trimmed (resume) or started
    afresh, ``config.json`` written. Returns the logger (a silent one on other ranks)."""
    cfg = c.cfg
    if not c.info.is_main:
        return JsonlLogger(None)
    out_dir = Path(cfg.run.out_dir)
    if stale := remove_stale_temporaries(out_dir):
        _note(
            c,
            f"removed {len(stale)} temporary file(s) left by an interrupted run: "
            f"{', '.join(printable(p.name) for p in stale)}",
        )
    if cfg.run.resume and (dropped := trim_resumed_log(out_dir / "log.jsonl", state)):
        _note(c, f"dropped {dropped} log.jsonl record(s) written after the checkpoint's step {state.step}")
    logger = JsonlLogger(out_dir / "log.jsonl", append=bool(cfg.run.resume))
    _write_json(out_dir / "config.json", cfg.to_dict())
    if c.data.split is not None:
        _note(c, describe_split(c.data.name, c.data.split))
    for warning in c.warnings:
        _note(c, f"warning: {warning}")
    if not cfg.run.resume:
        if c.data.split is not None:
            logger.log("split", step=0, **c.data.split)
        for warning in c.warnings:
            logger.log("warning", step=0, message=warning)
    if c.init is not None and not cfg.run.resume:
        _note(c, c.init.summary())
        logger.log(
            "init",
            step=0,
            path=c.init.path,
            copied=len(c.init.copied),
            head_skipped=list(c.init.head_skipped),
            fresh=list(c.init.fresh),
            unused=list(c.init.unused),
        )
    return logger


def finish_epoch(
    c: Components, state: TrainState, loader: torch.utils.data.DataLoader, logger: JsonlLogger
) -> dict[str, float]:
    """Evaluate the epoch just trained (its train metrics are ``state.pending``), record it, checkpoint.

    The checkpoint written before this call already holds the epoch's training, so a failing
    evaluation loses nothing: resuming from it evaluates again, then goes on.
    """
    try:
        metrics = evaluate(c.model, loader, c.data, c.device, c.info, c.amp_dtype)
        ema = evaluate(c.ema.module, loader, c.data, c.device, c.info, c.amp_dtype) if c.ema is not None else None
    except DatasetError as err:
        path = checkpoint_path(c.cfg)
        raise DatasetError(
            f"{err}. Epoch {state.epoch}'s training is saved in {printable(path)}: once the "
            f"validation set is fixed, --resume {printable(path)} evaluates it and goes on"
        ) from err
    record = {"epoch": state.epoch, "step": state.step, "test": metrics, **(state.pending or {})}
    if ema is not None:
        record["test_ema"] = ema
    state.history.append(record)
    logger.log(
        "epoch",
        epoch=state.epoch,
        step=state.step,
        test_acc1=metrics["acc1"],
        test_acc5=metrics["acc5"],
        test_loss=metrics["loss"],
        train_time_s=state.train_time,
        **(state.pending or {}),
        **{f"ema_{k}": v for k, v in (ema or {}).items()},
    )
    if c.info.is_main and c.cfg.run.progress:
        print(
            f"epoch {state.epoch}: test top-1 {metrics['acc1']:.2f}% top-5 {metrics['acc5']:.2f}% "
            f"train loss {record.get('train_loss', float('nan')):.4f}",
            flush=True,
        )
    state.pending = None
    save_checkpoint(c, state, metrics)
    return metrics


def train_epoch(
    c: Components,
    state: TrainState,
    loader: torch.utils.data.DataLoader,
    sampler: TrainSampler,
    logger: JsonlLogger,
    metrics: dict[str, float],
) -> tuple[dict[str, float], str]:
    """:func:`run_epoch`; an unreadable training image stops the run with the file named, after the
    state reached is checkpointed (one process: all steps before the bad batch are complete)."""
    try:
        return run_epoch(c, state, loader, sampler, logger)
    except DatasetError as err:
        path = checkpoint_path(c.cfg)
        if c.info.enabled:  # another rank may be inside a collective: no checkpoint write now
            last = f"the last checkpoint is {printable(path)}" if path.is_file() else "no checkpoint was written"
            raise DatasetError(f"{err}. Training stopped at step {state.step}; {last}") from err
        save_checkpoint(c, state, metrics)
        raise DatasetError(
            f"{err}. Training stopped at step {state.step}, saved in {printable(path)}: fix the "
            f"file, then --resume {printable(path)} continues exactly"
        ) from err


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the summary (also in summary.json).

    If the run is interrupted on purpose (``run.stop_after_steps``) the summary has
    ``"interrupted": True`` and the checkpoint holds the state to resume from.
    """
    c = build(cfg)
    try:
        state = restore(c, cfg.run.resume) if cfg.run.resume else TrainState()
        train_loader, sampler, test_loader = make_loaders(c)
        logger = open_run_dir(c, state)
        metrics: dict[str, float] = state.history[-1]["test"] if state.history else {}
        if state.pending is not None:  # checkpointed before its evaluation, which did not finish
            metrics = finish_epoch(c, state, test_loader, logger)
        while state.epoch < cfg.run.epochs and state.step < c.total_steps:
            train_metrics, reason = train_epoch(c, state, train_loader, sampler, logger, metrics)
            if reason == "interrupted":
                save_checkpoint(c, state, metrics)
                return {"interrupted": True, "step": state.step, "checkpoint": str(checkpoint_path(cfg))}
            state.epoch += 1
            state.step_in_epoch = 0
            state.pending = train_metrics
            save_checkpoint(c, state, metrics)  # the epoch's training is safe before its evaluation
            metrics = finish_epoch(c, state, test_loader, logger)
        logger.close()
        extra = {"ema_test_acc1": state.history[-1]["test_ema"]["acc1"]} if c.ema is not None else {}
        summary = write_summary(c, state, metrics, extra)
        if c.info.is_main and cfg.run.plots:
            from bhvit.train.plots import plot_run

            summary["plots"] = [str(p) for p in plot_run(Path(cfg.run.out_dir))]
        return summary
    finally:
        cleanup_distributed()
