"""The demo: an fp teacher, then some-fp and binary students distilled from it, and a report.

On Fashion-MNIST (the full 60,000/10,000 split) it trains

1. the fp teacher with cross-entropy;
2. the some-fp student (binary blocks, fp stem/downsampling/head) and
3. the binary student (binary downsampling too),

initialised from the teacher's matching tensors (or, with ``init_epochs`` > 0, from a separate short
fp run without augmentation: a long, augmented teacher is a good teacher but a poor starting point for
a binary student; with ``binary_from_some_fp``, the quick preset's choice, the binary student starts
from the some-fp student, whose binary blocks are already trained) and trained with the paper's loss
``(1−λ−β)·CE + λ·KD + β·L_re`` (λ = 0.8, β = 0.1 in the last 10 % of the steps), evaluates each on
all 10,000 test images, then **deploys the binary student** (:func:`deploy`): packs it to
``binary.bhvp``, scores the packed file through the native runtime on the whole test set (with its
top-1 agreement with the float model), and times it at batch 1 against the fp32 models in PyTorch on
this machine. ``report.md`` holds all of it, with PNG plots comparing accuracy, parameters, OPs and
training time.

Presets: ``quick`` (one epoch per model, ≤ 15 min on 2 cores) and ``long`` (a 1-epoch fp init, a
20-epoch augmented fp teacher, 10-epoch students); measured numbers in docs/training.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bhvit.checkpoint import atomic_write
from bhvit.data import DataConfig
from bhvit.models.bhvit import BINARY_PRECISIONS
from bhvit.train.config import LossConfig, ModelSpec, OptimConfig, RunConfig, TrainConfig
from bhvit.train.loop import train
from bhvit.train.report import write_report


@dataclass(frozen=True)
class DemoConfig:
    """A demo preset. ``overrides`` are BHViTConfig fields shared by the three models."""

    name: str = "quick"
    arch: str = "bhvit_test"
    overrides: dict[str, Any] = field(default_factory=lambda: {"widths": [32, 64, 128, 256]})
    img_size: int = 32
    batch_size: int = 128
    augment: str = "none"
    teacher_augment: str | None = None  # None: the same as ``augment``
    init_epochs: int = 0  # > 0: students start from a separate fp run of this many epochs
    teacher_epochs: int = 1
    student_epochs: int = 1
    teacher_lr: float = 2e-3
    student_lr: float = 2e-3
    warmup_epochs: float = 0.2
    data: str = "fashion_mnist"
    data_root: str | None = None
    out_dir: str = "runs/demo"
    threads: int | None = None
    seed: int = 0
    precisions: tuple[str, ...] = BINARY_PRECISIONS  # the students; the teacher is fp
    binary_from_some_fp: bool = False  # the binary student starts from the some-fp student (when it ran)

    def __post_init__(self) -> None:
        if self.teacher_epochs < 1 or self.student_epochs < 1 or self.init_epochs < 0:
            raise ValueError("teacher and student epochs must be ≥ 1, init epochs ≥ 0")
        if not set(self.precisions) <= set(BINARY_PRECISIONS):
            raise ValueError(f"student precisions must be some of {BINARY_PRECISIONS}, got {self.precisions}")


PRESETS = {
    # one student epoch: 4e-3 beat 2e-3 (binary 86.29 vs 85.23 %, docs/training.md); the binary student
    # from the some-fp student instead of the teacher: 86.60 vs 86.00 % (torch on AVX2, 1 thread), at no
    # extra time. The long preset's 10 student epochs were measured best at 2e-3, from the fp init
    "quick": DemoConfig(student_lr=4e-3, binary_from_some_fp=True),
    "long": DemoConfig(name="long", init_epochs=1, teacher_epochs=20, teacher_augment="small", student_epochs=10),
}


def stage_config(
    demo: DemoConfig, precision: str, teacher: str | None, init: str | None = None, stage: str | None = None
) -> TrainConfig:
    """The TrainConfig of one demo stage: a student of ``teacher`` initialised from ``init`` (default: the
    teacher), or with ``teacher`` None an fp stage: the teacher, or the students' init when ``stage`` is
    ``"fp_init"``."""
    student = teacher is not None
    is_init = stage == "fp_init"
    augment = demo.augment if student or is_init else (demo.teacher_augment or demo.augment)
    epochs = demo.student_epochs if student else (demo.init_epochs if is_init else demo.teacher_epochs)
    return TrainConfig(
        data=DataConfig(
            name=demo.data, root=demo.data_root, img_size=demo.img_size, batch_size=demo.batch_size, augment=augment
        ),
        model=ModelSpec(
            arch=demo.arch,
            precision=precision,
            overrides=dict(demo.overrides),
            init_from=(init or teacher) if student else None,
        ),
        loss=LossConfig(mode="paper", teacher=teacher) if student else LossConfig(mode="ce", reg_weight=0.0),
        optim=OptimConfig(
            lr=demo.student_lr if student else demo.teacher_lr,
            scale_lr=False,
            weight_decay=0.0 if student else 0.05,
            warmup_epochs=demo.warmup_epochs,
        ),
        run=RunConfig(
            epochs=epochs,
            out_dir=str(Path(demo.out_dir) / (stage or precision)),
            seed=demo.seed,
            threads=demo.threads,
            log_every=50,
            flip_every=25,
        ),
    )


def demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the three stages and write the report; returns ``{precision: summary}`` plus timings."""
    start = time.time()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "demo_config.json", json.dumps(cfg.__dict__, indent=2, default=list) + "\n")
    init = train(stage_config(cfg, "fp", None, stage="fp_init")) if cfg.init_epochs else None
    summaries = {"fp": train(stage_config(cfg, "fp", None))}
    teacher = summaries["fp"]["checkpoint"]
    for precision in cfg.precisions:
        source = init["checkpoint"] if init else None
        if precision == "binary" and cfg.binary_from_some_fp and "some_fp" in summaries:
            source = summaries["some_fp"]["checkpoint"]
        summaries[precision] = train(stage_config(cfg, precision, teacher, source))
    deployed = deploy(cfg, summaries["binary"]["checkpoint"], teacher) if "binary" in summaries else None
    wall = time.time() - start
    report = write_report(out, summaries, cfg.name, wall, init, deployed)
    result = {
        "summaries": summaries,
        "init": init,
        "deployed": deployed,
        "wall_time_s": round(wall, 1),
        "report": str(report),
    }
    write_text(out / "demo_summary.json", json.dumps(result, indent=2) + "\n")
    return result


def deploy(cfg: DemoConfig, checkpoint: str, teacher: str) -> dict[str, Any]:
    """Pack the binary student ``checkpoint`` to ``<out_dir>/binary.bhvp`` (with its preprocessing and class
    names) and judge the file: its size against the fp32 checkpoint (``fp32_checkpoint_bytes``), top-1 /
    top-5 on the whole test split through the runtime with the float model's top-1 and the agreement of the
    two (:func:`bhvit.engine.evaluate.evaluate_packed`), and batch-1 latency in the runtime against the
    student's float model and the fp teacher in PyTorch fp32, on 1 thread and the runtime's default
    (:func:`bhvit.engine.bench.bench_packed`), with the machine they ran on."""
    from bhvit.checkpoint import load_model
    from bhvit.engine import pack, save_packed, size_report
    from bhvit.engine.bench import bench_packed, machine_line
    from bhvit.engine.evaluate import evaluate_packed

    model, meta = load_model(checkpoint)
    path = save_packed(
        pack(model), Path(cfg.out_dir) / "binary.bhvp", preprocess=meta.get("preprocess"), labels=meta.get("labels")
    )
    data = DataConfig(name=cfg.data, root=cfg.data_root, img_size=cfg.img_size)
    scores = evaluate_packed(path, data, checkpoint, seed=cfg.seed)
    refs = {"student_fp32": checkpoint, "teacher_fp32": teacher}
    # rounds of 0.1 s: hundreds of runtime calls and tens of PyTorch calls each at this size (the quick preset)
    latency = bench_packed(path, refs, batches=(1,), threads=(1, None), rounds=3, min_round=0.1)
    return {"packed": str(path), **size_report(model, path), **scores, "latency": latency, "machine": machine_line()}


def write_text(path: Path, text: str) -> Path:
    """``text`` at ``path``, atomically (a full disk names the file)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
