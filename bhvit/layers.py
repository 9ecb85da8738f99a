"""Small building blocks of BHViT (SPEC §2, "Small pieces").

Every tensor here is channels-last: ``(..., C)``, tokens or ``(B, H, W, C)`` maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NORMS",
    "Norm",
    "RPReLU",
    "LayerScale",
    "TokenBatchNorm",
    "make_norm",
    "convert_sync_batchnorm",
    "authors_bn_layout",
    "DropPath",
    "shift_mean",
    "shift_channel_mix",
]


Norm = Literal["bn", "ln"]  # TokenBatchNorm (the released models) or LayerNorm
NORMS: tuple[str, ...] = get_args(Norm)


class RPReLU(nn.Module):
    """``RPReLU(x) = PReLU_C(x − b1) + b2`` over the last dim (ReActNet); PReLU slope init 0.25.

    Parameter names follow the authors' code: ``move1`` (b1), ``prelu.weight``, ``move2`` (b2).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.move1 = nn.Parameter(torch.zeros(dim))
        self.prelu = nn.PReLU(dim)
        self.move2 = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        # (..., C) -> (M, C): F.prelu's channel dim is 1, and its fused kernel beats torch.where
        y = F.prelu((x - self.move1).reshape(-1, x.shape[-1]), self.prelu.weight)
        return y.reshape(x.shape) + self.move2


class LayerScale(nn.Module):
    """``LayerScale(x) = x·α + b`` per channel; α = ``init`` (0.1 on main branches, 0 on shifts)."""

    def __init__(self, dim: int, init: float = 0.1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), float(init)))
        self.move = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.alpha + self.move


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of channels-last tensors ``(..., C)``.

    Statistics are taken over every position of every sample, as the authors' ``BatchNormT`` does on
    ``(B, N, C)`` tokens. With ``sync = True`` (see :func:`convert_sync_batchnorm`) and an initialised
    process group of more than one rank, training-mode statistics are all-reduced across ranks with
    a differentiable all-reduce, so the same module works on CPU (gloo) and GPU (nccl).
    """

    sync: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return self._synced(x)
        if self.training and _AUTHORS_LAYOUT[0]:
            # (B, N, C) -> (B, C, N) view: statistics reduced in the authors' order (see authors_bn_layout)
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])
            return self._batch_norm(x3.transpose(1, 2)).transpose(1, 2).reshape(x.shape)
        # (..., C) -> (M, C): BatchNorm1d's 2-D channels-last form, ~5x faster than the transposed view
        return self._batch_norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def _batch_norm(self, x: Tensor) -> Tensor:
        """``nn.BatchNorm1d.forward``, except that a checkpoint recomputation leaves the running
        statistics alone (momentum 0, counter not advanced)."""
        momentum = self.momentum
        if self.training and self.track_running_stats:
            if _RECOMPUTING[0]:
                momentum = 0.0
            else:
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch, momentum or 0.0, self.eps)

    def _synced(self, x: Tensor) -> Tensor:
        """Training-mode batch norm with statistics over all ranks: two differentiable all-reduces."""
        from torch.distributed.nn.functional import all_reduce

        flat = x.reshape(-1, x.shape[-1])  # (M, C)
        count = torch.tensor([float(flat.shape[0])], device=x.device, dtype=x.dtype)
        total = all_reduce(torch.cat([flat.sum(0), count]))
        n = total[-1]
        mean = total[:-1] / n
        var = all_reduce(((flat - mean) ** 2).sum(0)) / n  # biased, as batch norm normalises
        if self.track_running_stats and not _RECOMPUTING[0]:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        y = (flat - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.reshape(x.shape)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var_unbiased: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - m).add_(m * mean)
        self.running_var.mul_(1 - m).add_(m * var_unbiased)


_AUTHORS_LAYOUT = [False]
_RECOMPUTING = [False]


@contextmanager
def _flag(cell: list[bool], value: bool) -> Iterator[None]:
    """Set a module-level mode flag for the duration of a ``with`` block."""
    previous = cell[0]
    cell[0] = value
    try:
        yield
    finally:
        cell[0] = previous


def recomputing() -> AbstractContextManager[None]:
    """Marks the recomputation pass of activation checkpointing: BatchNorm then normalises with the
    batch statistics as before but does not update its running statistics a second time."""
    return _flag(_RECOMPUTING, True)


def authors_bn_layout(enabled: bool = True) -> AbstractContextManager[None]:
    """Within this context, training-mode :class:`TokenBatchNorm` reduces its batch statistics over a
    ``(B, C, N)`` view, in the same float order as the authors' ``BatchNormT``.

    Binary networks amplify 1-ulp differences (a value near 0 changes sign), so reproducing the
    authors' train-mode outputs bit for bit needs this; it is ~5x slower than the default layout and
    gives statistically identical training.
    """
    return _flag(_AUTHORS_LAYOUT, enabled)


def make_norm(kind: Norm, dim: int, eps: float = 1e-5) -> nn.Module:
    """Norm over the last dim: ``"bn"`` (:class:`TokenBatchNorm`, the released models) or ``"ln"``."""
    if kind == "bn":
        return TokenBatchNorm(dim, eps=eps)
    if kind == "ln":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def convert_sync_batchnorm(model: nn.Module, enable: bool = True) -> nn.Module:
    """Make every :class:`TokenBatchNorm` of ``model`` synchronise its statistics across ranks.

    Only takes effect in training mode under an initialised process group of world size > 1; a
    single process is unaffected. Returns ``model`` (modified in place).
    """
    for module in model.modules():
        if isinstance(module, TokenBatchNorm):
            module.sync = enable
    return model


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p``, rescale the rest."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def shift_mean(x: Tensor, dim: int, k: int) -> Tensor:
    """Mean of ``x`` and its circular shifts by ±1..±(k//2) along ``dim`` (SPEC §2 ``S_h,k``/``S_w,k``).

    ``S_3(x) = (x + roll(x, 1) + roll(x, −1))/3``; ``S_5`` adds the ±2 rolls and divides by 5.
    """
    out = x
    for s in range(1, k // 2 + 1):
        out = out + torch.roll(x, s, dims=dim) + torch.roll(x, -s, dims=dim)
    return out / k


def shift_channel_mix(x: Tensor, s: int) -> Tensor:
    """Split ``(B, H, W, C)`` in 4 channel chunks rolled by +s, −s along H and +s, −s along W."""
    c1, c2, c3, c4 = x.chunk(4, dim=-1)
    return torch.cat(
        [torch.roll(c1, s, dims=1), torch.roll(c2, -s, dims=1), torch.roll(c3, s, dims=2), torch.roll(c4, -s, dims=2)],
        dim=-1,
    )

