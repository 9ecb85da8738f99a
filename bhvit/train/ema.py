"""Exponential moving average of a model's weights: ``θ_ema ← d·θ_ema + (1−d)·θ`` after each step.

Float parameters and buffers are averaged; integer buffers (e.g. BatchNorm's batch counter, LSQ's
init flag) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema_state[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                ema_state[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
