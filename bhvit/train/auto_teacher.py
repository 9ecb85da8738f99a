"""The automatic fp stage (``loss.auto_teacher``): a binary model in one command.

A binary or some-fp run given neither a teacher nor ``--init-from`` first trains an fp model of the same
architecture (the *fp stage*, in ``out_dir/fp_teacher``), then trains the student initialised from it
and distilled by it (:func:`train_with_auto_teacher`). Both stages are ordinary :func:`bhvit.train.loop.train`
runs; this module only splits the epochs, builds the two configs and resumes the stage a killed run
was in.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bhvit.checkpoint import atomic_write
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.config import TrainConfig
from bhvit.train.loop import train

AUTO_TEACHER_DIR = "fp_teacher"  # the fp stage's run directory, inside the run's ``out_dir``


def wants_auto_teacher(cfg: TrainConfig) -> bool:
    """True for a binary or some-fp run with ``auto_teacher`` on and neither a teacher nor an init."""
    return (
        cfg.loss.auto_teacher
        and cfg.model.precision != "fp"
        and cfg.loss.teacher is None
        and cfg.model.init_from is None
    )


def auto_teacher_split(epochs: int, fp_epochs: int | None) -> tuple[int, int]:
    """(fp stage epochs, student epochs) out of the run's ``epochs``: by default a third for the fp stage
    (``round(epochs/3)``, at least 1) and the rest, at least 1, for the student (so ``epochs = 1`` runs
    1 + 1). docs/training.md measures 1 + 2 for ``epochs = 3``; other splits were not compared."""
    fp = fp_epochs if fp_epochs is not None else max(1, round(epochs / 3))
    return fp, max(1, epochs - fp)


def auto_teacher_stages(cfg: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """The fp stage and the student stage of ``cfg``.

    fp stage: the run's data, model (at fp), optimiser and schedule, CE with the run's label smoothing,
    in ``out_dir/fp_teacher``. Student: the run as given, initialised from and distilled by the fp
    stage's checkpoint (a ``ce`` loss becomes the paper's mix), in ``out_dir``. Neither resumes here.
    """
    fp_epochs, student_epochs = auto_teacher_split(cfg.run.epochs, cfg.loss.auto_teacher_epochs)
    fp_dir = Path(cfg.run.out_dir) / AUTO_TEACHER_DIR
    fp = cfg.replace(
        model={"precision": "fp"},
        loss={"mode": "ce", "reg_weight": 0.0, "auto_teacher": False},
        run={"epochs": fp_epochs, "out_dir": str(fp_dir), "resume": None, "stop_after_steps": None},
    )
    teacher = str(fp_dir / "checkpoint.pt")
    mode = "paper" if cfg.loss.mode == "ce" else cfg.loss.mode
    student = cfg.replace(
        model={"init_from": teacher},
        loss={"mode": mode, "teacher": teacher, "auto_teacher": False},
        run={"epochs": student_epochs, "resume": None, "stop_after_steps": None},
    )
    return fp, student


def _resume_points(cfg: TrainConfig) -> tuple[str | None, str | None, bool]:
    """Where each stage resumes from under ``--resume``: (fp checkpoint or None, student checkpoint or
    None, fp stage already finished). ``--resume`` must name the run's ``checkpoint.pt`` or the fp
    stage's; a killed run resumes in the stage it was in."""
    out = Path(cfg.run.out_dir)
    fp_ckpt, student_ckpt = out / AUTO_TEACHER_DIR / "checkpoint.pt", out / "checkpoint.pt"
    given = Path(str(cfg.run.resume)).resolve()
    if given not in (fp_ckpt.resolve(), student_ckpt.resolve()):
        ckpt_io.load(given)  # an unreadable or unsafe file is reported as such first
        raise ValueError(
            f"--resume {cfg.run.resume}: a run with an automatic fp stage resumes from its own "
            f"{student_ckpt} (or {fp_ckpt}); pass one of those, or the --out of the run to resume"
        )
    if not fp_ckpt.is_file():
        raise FileNotFoundError(f"--resume: {fp_ckpt} does not exist: the run never checkpointed; start it afresh")
    if not (out / AUTO_TEACHER_DIR / "summary.json").is_file():  # killed in the fp stage
        return str(fp_ckpt), None, False
    return None, (str(student_ckpt) if student_ckpt.is_file() else None), True


def _say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"bhvit train: {message}", file=sys.stderr, flush=True)


def train_with_auto_teacher(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg``; a run :func:`wants_auto_teacher` gets its fp stage first (the demo's pipeline,
    :mod:`bhvit.train.demo`, in one command).

    ``run.stop_after_steps`` counts the steps of both stages; ``run.max_steps`` caps each. The student's
    summary gains ``auto_teacher``: the fp stage's checkpoint, epochs, steps and top-1.
    """
    if not wants_auto_teacher(cfg):
        return train(cfg)
    fp_cfg, student_cfg = auto_teacher_stages(cfg)
    fp_resume, student_resume, fp_done = _resume_points(cfg) if cfg.run.resume else (None, None, False)
    stop = cfg.run.stop_after_steps
    if fp_done:
        fp = json.loads((Path(fp_cfg.run.out_dir) / "summary.json").read_text())
        _say(f"fp stage already done ({fp['test_acc1']:.2f}% top-1): resuming the {cfg.model.precision} stage")
    else:
        _say(
            f"no --teacher: training an fp {cfg.model.arch} first ({fp_cfg.run.epochs} of {cfg.run.epochs} "
            f"epochs, in {fp_cfg.run.out_dir}) to start the {cfg.model.precision} model from and distil it from "
            "(--no-auto-teacher to skip)"
        )
        fp = train(fp_cfg.replace(run={"resume": fp_resume, "stop_after_steps": stop}))
        if fp.get("interrupted"):
            return {**fp, "stage": "fp_teacher"}
    if stop is not None and stop <= fp["steps"]:
        return {"interrupted": True, "step": fp["steps"], "checkpoint": fp["checkpoint"], "stage": "fp_teacher"}
    _say(
        f"fp stage: {fp['test_acc1']:.2f}% top-1 after {fp['epochs']} epoch(s) ({fp['checkpoint']}); the "
        f"{cfg.model.precision} model starts from it and distils from it for {student_cfg.run.epochs} epoch(s)"
    )
    rest = None if stop is None else stop - fp["steps"]  # the student's step counter starts at 0
    summary = train(student_cfg.replace(run={"resume": student_resume, "stop_after_steps": rest}))
    if summary.get("interrupted"):
        return {**summary, "stage": cfg.model.precision}
    summary["auto_teacher"] = {
        k: fp[k] for k in ("checkpoint", "epochs", "steps", "test_acc1", "test_acc5", "train_time_s")
    }
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps({k: v for k, v in summary.items() if k != "plots"}, indent=2) + "\n"
        atomic_write(Path(cfg.run.out_dir) / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return summary
