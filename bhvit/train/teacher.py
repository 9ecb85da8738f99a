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

Without a teacher, :mod:`bhvit.train.auto_teacher` makes one (``loss.auto_teacher``).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bhvit.checkpoint import load_model
from bhvit.rules import IMAGENET_MEAN, IMAGENET_STD
from bhvit.upstream import CheckpointError, safe_torch_load

Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel


class TeacherUnavailableError(RuntimeError):
    """The teacher cannot be built here (timm missing, or its pretrained weights unreachable)."""


class FrozenTeacher(nn.Module):
    """Eval-mode, gradient-free wrapper that adapts normalisation, channels and input size if needed.

    ``data_stats`` / ``teacher_stats``: the (mean, std) the student's batches were normalised with and the
    ones the teacher expects; both or neither. ``in_chans`` / ``img_size``: what the teacher takes.
    """

    # buffers (1, C, 1, 1), present when renorm: the student's data statistics and the teacher's
    data_mean: Tensor
    data_std: Tensor
    teacher_mean: Tensor
    teacher_std: Tensor

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


def _import_timm() -> types.ModuleType:
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
