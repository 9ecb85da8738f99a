"""Frozen teachers for knowledge distillation (SPEC §4: the paper's ImageNet teacher is DeiT-Small).

A teacher is one of

* our own checkpoint (any precision; usually the fp model), given by its path;
* ``timm:<name>``: a timm model with its pretrained weights (fetched by timm from its hub, so the
  machine must be online or have them cached); its classifier must already predict the data's classes
  (ImageNet-1K for the paper's DeiT teacher);
* ``timm:<name>=<weights file>``: a timm model built with ``num_classes`` of the data and loaded from a
  state dict (for example a DeiT fine-tuned on CIFAR-10), read with ``torch.load(weights_only=True)``.

Every torch file goes through :func:`bhvit.upstream.safe_torch_load`, which never unpickles code.

It is always in eval mode with ``requires_grad`` off, its forward runs under ``torch.no_grad()``, and it
is never wrapped in DistributedDataParallel. A teacher that expects other inputs than the student gets
them converted per batch: the student's normalised images ``x = (u − μ_d)/σ_d`` (u in [0, 1]) become
``(u − μ_t)/σ_t`` with the teacher's mean and std, grey images are repeated to its channel count, and
the side is resized (bilinear) to its input size.

Without a teacher, :func:`train_with_auto_teacher` makes one: a short fp stage of the same architecture
that the binary (or some-fp) model starts from and distils from (``loss.auto_teacher``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bhvit.checkpoint import atomic_write, load_model
from bhvit.models.bhvit import IMAGENET_MEAN, IMAGENET_STD
from bhvit.train.config import TrainConfig
from bhvit.upstream import CheckpointError, safe_torch_load

Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel


class TeacherUnavailableError(RuntimeError):
    """The teacher cannot be built here (timm missing, or its pretrained weights unreachable)."""


class FrozenTeacher(nn.Module):
    """Eval-mode, gradient-free wrapper that adapts normalisation, channels and input size if needed.

    ``data_stats`` / ``teacher_stats``: the (mean, std) the student's batches were normalised with and the
    ones the teacher expects; both or neither. ``in_chans`` / ``img_size``: what the teacher takes.
    """

    def __init__(
        self,
        model: nn.Module,
        in_chans: int | None = None,
        img_size: int | None = None,
        data_stats: Stats | None = None,
        teacher_stats: Stats | None = None,
    ) -> None:
        super().__init__()
        if (data_stats is None) != (teacher_stats is None):
            raise ValueError("give both data_stats and teacher_stats, or neither")
        self.model = model.eval().requires_grad_(False)
        self.in_chans, self.img_size = in_chans, img_size
        self.renorm = data_stats is not None
        if data_stats is not None and teacher_stats is not None:
            for name, (mean, std) in (("data", data_stats), ("teacher", teacher_stats)):
                self.register_buffer(f"{name}_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
                self.register_buffer(f"{name}_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> FrozenTeacher:  # stays in eval mode whatever the caller asks
        return super().train(False)

    def adapt(self, x: Tensor) -> Tensor:
        """The student's batch (B, C, H, W) as the teacher's input (B, C_t, S_t, S_t)."""
        if self.renorm:
            x = x * self.data_std + self.data_mean  # back to [0, 1] pixels
        if self.in_chans is not None and x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1) if x.shape[1] == 1 else x[:, : self.in_chans]
        if self.img_size is not None and tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        if self.renorm:
            x = (x - self.teacher_mean) / self.teacher_std
        return x

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        out = self.model(self.adapt(x))
        return out.logits if hasattr(out, "logits") else out


def load_teacher(
    spec: str, num_classes: int, device: torch.device | str = "cpu", data_stats: Stats | None = None
) -> FrozenTeacher:
    """Build the frozen teacher named by ``spec``: a checkpoint path, ``timm:<name>`` or
    ``timm:<name>=<weights>``. ``data_stats`` is the (mean, std) of the student's batches, used to
    re-normalise them for a timm teacher."""
    if spec.startswith("timm:"):
        return _timm_teacher(spec[len("timm:") :], num_classes, data_stats).to(device)
    model, _ = load_model(spec)
    classes = getattr(model.config, "num_classes", num_classes)
    if classes != num_classes:
        raise ValueError(f"teacher {spec} predicts {classes} classes, the data has {num_classes}")
    return FrozenTeacher(model).to(device)


def _import_timm():  # noqa: ANN202
    try:
        import timm
    except Exception as e:  # ImportError, or a timm that fails to import beside this torch
        raise TeacherUnavailableError(
            f"a timm teacher needs timm (pip install 'bhvit[timm]'), which failed to import: {e}. "
            "Use one of our fp checkpoints as the teacher instead (--teacher runs/…/checkpoint.pt)."
        ) from e
    return timm


def _state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a timm/torch weights file: safetensors, or a torch file read by
    :func:`bhvit.upstream.safe_torch_load` (a bare state dict, or one under 'model', 'state_dict' or
    'model_ema'); :class:`CheckpointError` when it cannot be read or holds no tensors."""
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
            raise CheckpointError(f"teacher weights {str(path)!r} could not be read as safetensors ({e})") from None
    obj = safe_torch_load(path)
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"teacher weights {str(path)!r} hold no state dict of tensors")
    return obj


def _timm_teacher(name: str, num_classes: int, data_stats: Stats | None) -> FrozenTeacher:
    timm = _import_timm()
    name, _, weights = name.partition("=")
    if weights:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        missing, unexpected = model.load_state_dict(_state_dict(Path(weights)), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"teacher weights {weights} do not fit timm model {name} with {num_classes} classes: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
    else:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as e:  # offline, unknown name, hub error
            raise TeacherUnavailableError(
                f"timm could not build the pretrained teacher {name!r}: {e}. Offline, pass the weights as "
                f"--teacher timm:{name}=PATH (a state dict), or use one of our fp checkpoints."
            ) from e
        classes = getattr(model, "num_classes", None)
        if classes is not None and classes != num_classes:
            raise ValueError(
                f"the pretrained timm teacher {name} predicts {classes} classes but the data has {num_classes}: "
                f"its classifier does not fit. Fine-tune it on this data first and pass "
                f"--teacher timm:{name}=WEIGHTS, or distil from one of our fp checkpoints."
            )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    stats = (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    return FrozenTeacher(
        model,
        in_chans=size[0],
        img_size=size[-1],
        data_stats=data_stats,
        teacher_stats=stats if data_stats is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# The automatic fp stage (``loss.auto_teacher``): a binary model in one command
# ---------------------------------------------------------------------------------------------
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
        from bhvit.train import checkpoint as ckpt_io

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
    from bhvit.train.loop import train

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
