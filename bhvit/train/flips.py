"""Weight flip ratio: the fraction of binary weights whose sign changed in one optimizer step.

The sign that matters is the one the forward pass uses, ``sign(W − mean(W_c))`` per output channel c
(SPEC §3.2). Oscillating signs are what ``L_re`` is meant to damp; a healthy run shows the ratio fall
as the learning rate decays.
"""

from __future__ import annotations

import torch
from torch import nn


def binary_signs(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: bool tensor of sign(W_c − mean W_c) > 0}`` for every binary layer."""
    from bhvit.quant import binary_weight_layers

    out = {}
    for name, layer in binary_weight_layers(model):
        w = layer.weight.detach()
        dims = tuple(range(1, w.dim()))
        out[name] = (w - w.mean(dim=dims, keepdim=True)) > 0
    return out


class FlipTracker:
    """Per-step flip ratio at sampled steps: ``snapshot`` before the optimizer step, ``ratio`` after."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def snapshot(self, model: nn.Module) -> None:
        self.before = binary_signs(model)

    @torch.no_grad()
    def ratio(self, model: nn.Module) -> float | None:
        """Fraction of binary weights whose sign differs from the snapshot (None without one)."""
        if not self.before:
            self.before = None
            return None
        after = binary_signs(model)
        changed = sum(int((after[k] != self.before[k]).sum()) for k in after)
        total = sum(s.numel() for s in after.values())
        self.before = None
        return changed / total
