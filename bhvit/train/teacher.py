"""Frozen teachers for knowledge distillation (SPEC §4: the paper's ImageNet teacher is DeiT-Small).

A teacher is either one of our own checkpoints (any precision; usually the fp model) or
``timm:<model name>`` when timm is installed. It is always in eval mode with ``requires_grad`` off,
its forward runs under ``torch.no_grad()``, and it is never wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bhvit.train.checkpoint import load_model


class FrozenTeacher(nn.Module):
    """Eval-mode, gradient-free wrapper; adapts channels (grey → RGB) and input size if needed."""

    def __init__(self, model: nn.Module, in_chans: int | None = None, img_size: int | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.in_chans, self.img_size = in_chans, img_size

    def train(self, mode: bool = True) -> FrozenTeacher:  # stays in eval mode whatever the caller asks
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if self.in_chans is not None and x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1) if x.shape[1] == 1 else x[:, : self.in_chans]
        if self.img_size is not None and x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out


def load_teacher(spec: str, num_classes: int, device: torch.device | str = "cpu") -> FrozenTeacher:
    """Build the frozen teacher named by ``spec``: a checkpoint path or ``timm:<name>``."""
    if spec.startswith("timm:"):
        return _timm_teacher(spec[len("timm:") :], num_classes).to(device)
    model, _ = load_model(spec, map_location="cpu")
    classes = getattr(model.config, "num_classes", num_classes)
    if classes != num_classes:
        raise ValueError(f"teacher {spec} predicts {classes} classes, the data has {num_classes}")
    return FrozenTeacher(model).to(device)


def _timm_teacher(name: str, num_classes: int) -> FrozenTeacher:
    try:
        import timm
    except Exception as e:  # ImportError, or a timm that fails to import beside this torch
        raise RuntimeError(
            f"teacher 'timm:{name}' needs timm (pip install 'bhvit[timm]'), which failed to import: {e}. "
            "Use one of our fp checkpoints as the teacher instead (--teacher runs/…/checkpoint.pt)."
        ) from e
    model = timm.create_model(name, pretrained=True, num_classes=num_classes)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return FrozenTeacher(model, in_chans=size[0], img_size=size[-1])
