"""Small building blocks of BHViT (SPEC §2, "Small pieces").

Every tensor here is channels-last: ``(..., C)``, tokens or ``(B, H, W, C)`` maps.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NORMS",
    "Norm",
    "RPReLU",
    "rprelu",
    "LayerScale",
    "TokenBatchNorm",
    "make_norm",
    "convert_sync_batchnorm",
    "authors_bn_layout",
    "fused_training",
    "DropPath",
    "shift_mean",
    "shift_channel_mix",
    "shift_branches",
    "shift_branches_reference",
    "norm_residual_rprelu_sign_linear",
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
        return rprelu(x, self.move1, self.prelu.weight, self.move2)


@functools.cache
def _native_prelu_backward() -> Callable | None:
    """The one-pass PReLU backward of the training extension (``bhvit._C.rprelu_backward``, csrc/training.cpp),
    or None when the package was installed without its native code. Looked up once."""
    try:
        return importlib.import_module("bhvit._C").rprelu_backward
    except ImportError:
        return None


def prelu_grads(g: Tensor, t: Tensor, a: Tensor, in_place: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PReLU's backward for 2-D ``g`` and ``t`` (M, C), ``a`` (C,), with the column sums callers need:
    ``(∂t, ∂a, Σ_m ∂t, Σ_m g)`` where ``∂t = g·([t > 0] + a·[t ≤ 0])`` and ``∂a = Σ_m g·t·[t ≤ 0]``.

    On CPU float32 this is one native pass over the maps (``in_place`` writes ``∂t`` into ``g``): torch's
    ``_prelu_kernel_backward`` writes ``∂t`` and a per-element ``∂a`` map and three reductions read them
    again (measured on the (25088, 512) map of a batch-8 step at 224 px, 2 threads, torch on AVX2:
    70 ms against 20 ms). Elsewhere (other devices and dtypes, traced by torch.compile) or without the
    extension, torch's ops. Same element values either way; the sums run in a fixed block order (the same
    bits for any thread count), torch's in its own.
    """
    native = _native_prelu_backward() if g.device.type == "cpu" and not torch.compiler.is_compiling() else None
    if native is not None and g.dtype == t.dtype == a.dtype == torch.float32:
        g, t, a = (v.detach().contiguous() for v in (g, t, a))
        out = g.numpy() if in_place else None
        gx, ga, sgx, sg = native(g.numpy(), t.numpy(), a.numpy(), out, threads=torch.get_num_threads())
        dt = g if in_place else torch.from_numpy(gx)
        return dt, torch.from_numpy(ga), torch.from_numpy(sgx), torch.from_numpy(sg)
    gx, ga = torch.ops.aten._prelu_kernel_backward(g, t, a)  # (M, C) both
    return gx, ga.sum(0), gx.sum(0), g.sum(0)


class _RPReLU(torch.autograd.Function):
    """``y = PReLU_a(x − b1) + b2`` per channel of the last dim, one node instead of three.

    With ``t = x − b1``: ``∂x = g·([t > 0] + a·[t ≤ 0])``, ``∂b1 = −Σ ∂x``, ``∂a = Σ g·t·[t ≤ 0]``,
    ``∂b2 = Σ g`` (:func:`prelu_grads`, one pass). Saves ``t`` as autograd does, and ``+ b2`` is in place.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, b1: Tensor, a: Tensor, b2: Tensor) -> Tensor:
        t = x - b1
        # (..., C) -> (M, C): F.prelu's channel dim is 1, and its fused kernel beats torch.where
        y = F.prelu(t.reshape(-1, x.shape[-1]), a).reshape(x.shape).add_(b2)
        ctx.save_for_backward(t, a)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        t, a = ctx.saved_tensors
        c = t.shape[-1]
        gx, ga, sgx, sg = prelu_grads(g.reshape(-1, c), t.reshape(-1, c), a)
        need = ctx.needs_input_grad
        return gx.reshape(t.shape), -sgx if need[1] else None, ga if need[2] else None, sg if need[3] else None


def rprelu(x: Tensor, b1: Tensor, a: Tensor, b2: Tensor) -> Tensor:
    """``PReLU_a(x − b1) + b2`` over the last dim of ``x`` (b1, a, b2 of shape (C,)); see :class:`RPReLU`.

    Same values as the three-op formula; one autograd node (:class:`_RPReLU`). Mixed dtypes (autocast)
    take the plain formula.
    """
    if not fused() or b1.dtype != x.dtype or a.dtype != x.dtype or b2.dtype != x.dtype:
        y = F.prelu((x - b1).reshape(-1, x.shape[-1]), a)
        return y.reshape(x.shape) + b2
    return _RPReLU.apply(x, b1, a, b2)


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
        if self._synchronised():
            return self._synced(x)
        if self.training and _AUTHORS_LAYOUT[0]:
            # (B, N, C) -> (B, C, N) view: statistics reduced in the authors' order (see authors_bn_layout)
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])
            return self._batch_norm(x3.transpose(1, 2)).transpose(1, 2).reshape(x.shape)
        # (..., C) -> (M, C): BatchNorm1d's 2-D channels-last form, ~5x faster than the transposed view
        return self._batch_norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def _synchronised(self) -> bool:
        """Training-mode statistics are all-reduced across ranks (sync on, a process group of > 1 rank)."""
        return (
            self.training and self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        )

    def fusable(self) -> bool:
        """A fused training Function may normalise for this module: batch statistics of this process in the
        default layout, running statistics tracked, affine (see :func:`norm_residual_rprelu_sign_linear`)."""
        return (
            self.training
            and self.track_running_stats
            and self.affine
            and self.running_mean is not None
            and not self._synchronised()
            and not _AUTHORS_LAYOUT[0]
        )

    def step_momentum(self) -> float:
        """The momentum of this training step's running-statistics update, advancing the counter; 0 while a
        checkpoint recomputes (the statistics were already updated by the first pass)."""
        if _RECOMPUTING[0]:
            return 0.0
        return self._count_batch()

    def _count_batch(self) -> float:
        """Advance the batch counter; the momentum of this batch's running-statistics update: ``momentum``,
        or 1/n (the cumulative average) when it is None, as ``nn.BatchNorm1d`` does."""
        counter = self.num_batches_tracked  # None when the module tracks no running statistics
        if counter is not None:
            counter.add_(1)
        if self.momentum is not None:
            return self.momentum
        return 1.0 / float(counter) if counter is not None else 0.0

    def _batch_norm(self, x: Tensor) -> Tensor:
        """``nn.BatchNorm1d.forward``, except that a checkpoint recomputation leaves the running
        statistics alone (momentum 0, counter not advanced)."""
        momentum = self.momentum
        if self.training and self.track_running_stats:
            momentum = self.step_momentum()
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch,
            momentum or 0.0,
            self.eps,
        )

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
        running_mean, running_var = self.running_mean, self.running_var
        if running_mean is None or running_var is None:  # no running statistics to update
            return
        m = self._count_batch()
        running_mean.mul_(1 - m).add_(m * mean)
        running_var.mul_(1 - m).add_(m * var_unbiased)


_AUTHORS_LAYOUT = [False]
_RECOMPUTING = [False]
_FUSED = [True]


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


def fused_training(enabled: bool = True) -> AbstractContextManager[None]:
    """Within this context, ``enabled=False`` makes the training path use the op-by-op formulas that
    autograd differentiates instead of the fused Functions (:func:`rprelu`, :func:`shift_branches`,
    :func:`norm_residual_rprelu_sign_linear`): the reference they are tested and measured against."""
    return _flag(_FUSED, enabled)


def fused() -> bool:
    """Whether the fused training Functions apply here: on (see :func:`fused_training`), gradients
    recorded, and not inside an exporter's trace (ONNX/TorchScript cannot export a Python autograd
    Function; the plain formulas give the same values)."""
    return _FUSED[0] and torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()


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


# --------------------------------------------------------------------------------------------
# The shift branches as one autograd Function (training cost, issue 12)
# --------------------------------------------------------------------------------------------
def _slabs(n: int, r: int) -> tuple[tuple[int, int, int], ...]:
    """``roll(x, r)[i] = x[i − r]`` along a dim of size ``n`` as ``(dst, src, length)`` slabs: ``[r:] ← [:−r]``
    and ``[:r] ← [−r:]`` (``r`` taken modulo ``n``; one whole slab when that is 0)."""
    r %= n
    return ((0, 0, n),) if r == 0 else ((r, 0, n - r), (0, n - r, r))


def _add_rolled(acc: Tensor, x: Tensor, r: int, dim: int, scale: Tensor | None = None) -> Tensor:
    """``acc += roll(x, r, dim)`` (times ``scale`` per channel when given), in place, no rolled copy.

    Every element gets the same single add as ``acc + roll(x, r)``, so the values are bit-identical.
    """
    for dst, src, length in _slabs(x.shape[dim], r):
        a, b = acc.narrow(dim, dst, length), x.narrow(dim, src, length)
        a.add_(b) if scale is None else a.addcmul_(b, scale)
    return acc


def _roll_dot(g: Tensor, x: Tensor, r: int, dim: int) -> Tensor:
    """``Σ g ⊙ roll(x, r, dim)`` over every dim but the last: two (B, H, W, C) -> (C,)."""
    dims = tuple(range(g.dim() - 1))
    parts = [(g.narrow(dim, d, n) * x.narrow(dim, s, n)).sum(dims) for d, s, n in _slabs(x.shape[dim], r)]
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


ShiftBranch = tuple[str, int]  # (axis "h" / "w" / "c", kernel k)
_MIX_ROLLS = ((1, 1), (-1, 1), (1, 2), (-1, 2))  # (direction, dim) of the four channel chunks of S_c


def _shift_into(buf: Tensor, x: Tensor, axis: str, k: int) -> Tensor:
    """``buf ← S_axis,k(x)`` for ``(B, H, W, C)`` maps, with the float operations of :func:`shift_mean` and
    :func:`shift_channel_mix` (so bit-identical to them), but no rolled copies."""
    if axis == "c":
        for (direction, dim), dst, src in zip(_MIX_ROLLS, buf.chunk(4, dim=-1), x.chunk(4, dim=-1)):
            for d, s, n in _slabs(x.shape[dim], direction * (k // 2)):
                dst.narrow(dim, d, n).copy_(src.narrow(dim, s, n))
        return buf
    dim = 1 if axis == "h" else 2
    buf.copy_(x)
    for s in range(1, k // 2 + 1):
        _add_rolled(_add_rolled(buf, x, s, dim), x, -s, dim)
    return buf.div_(k)


def _roll_coefficients(branches: tuple[ShiftBranch, ...], alphas: list[Tensor]) -> dict[tuple[int, int], Tensor]:
    """Write ``Σ_j α_j ⊙ S_j(x)`` as ``Σ_(dim, r) c_(dim, r) ⊙ roll(x, r, dim)``: the per-channel ``c``.

    A mean ``S_k`` along ``dim`` puts ``α/k`` on every ``r`` in ``[−k//2, k//2]`` (``r = 0`` under the key
    ``(0, 0)``); ``S_c`` puts ``α`` on one roll per quarter of the channels.
    """
    coef: dict[tuple[int, int], Tensor] = {}

    def put(key: tuple[int, int], value: Tensor) -> None:
        coef[key] = coef[key] + value if key in coef else value

    for (axis, k), alpha in zip(branches, alphas):
        if axis == "c":
            for j, (direction, dim) in enumerate(_MIX_ROLLS):
                masked = torch.zeros_like(alpha)
                masked.chunk(4)[j].copy_(alpha.chunk(4)[j])
                put((dim, direction * (k // 2)), masked)
            continue
        dim, share = (1 if axis == "h" else 2), alpha / k
        put((0, 0), share)
        for s in range(1, k // 2 + 1):
            put((dim, s), share)
            put((dim, -s), share)
    return coef


class _ShiftBranches(torch.autograd.Function):
    """``y = out + Σ_j LS_j(S_j(x))``, the LayerScales ``LS_j(z) = z·α_j + b_j`` summed left to right.

    Backward, with ``S_j(x) = Σ_(dim, r) c ⊙ roll(x, r, dim)`` (:func:`_roll_coefficients`):
    ``∂out = g``; ``∂b_j = Σ g``; ``∂α_j = Σ g ⊙ S_j(x)``, from the per-channel dots
    ``P_(dim, r) = Σ g ⊙ roll(x, r, dim)``; ``∂x = Σ c ⊙ roll(g, −r, dim)``. Saves ``x`` only (autograd
    would keep each of the six shifted maps for the α gradients) and never materialises a roll.
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor, x: Tensor, branches: tuple[ShiftBranch, ...], *params: Tensor) -> Tensor:
        buf = torch.empty_like(x)  # one scratch map for every branch
        y = out
        for j, (axis, k) in enumerate(branches):
            _shift_into(buf, x, axis, k).mul_(params[2 * j]).add_(params[2 * j + 1])
            y = y + buf if j == 0 else y.add_(buf)
        ctx.save_for_backward(x, *params[0::2])
        ctx.branches = branches
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, *alphas = ctx.saved_tensors
        branches: tuple[ShiftBranch, ...] = ctx.branches
        need = ctx.needs_input_grad
        dims = tuple(range(g.dim() - 1))
        grads: list[Tensor | None] = [None] * (2 * len(branches))
        if any(need[4::2]):
            gb = g.sum(dims)
            grads[1::2] = [gb.clone() if n else None for n in need[4::2]]
        if any(need[3::2]):
            dots: dict[tuple[int, int], Tensor] = {}

            def dot(dim: int, r: int) -> Tensor:  # P_(dim, r), memoised; r = 0 is the same for both dims
                key = (dim, r) if r else (0, 0)
                if key not in dots:
                    dots[key] = _roll_dot(g, x, r, dim or 1)
                return dots[key]

            for j, ((axis, k), n) in enumerate(zip(branches, need[3::2])):
                if n:
                    grads[2 * j] = _alpha_grad(dot, axis, k)
        gx = None
        if need[1]:
            coef = _roll_coefficients(branches, alphas)
            gx = g * coef.pop((0, 0)) if (0, 0) in coef else torch.zeros_like(g)
            for (dim, r), c in coef.items():
                _add_rolled(gx, g, -r, dim, c)  # the transpose of roll by r is roll by −r
        return (g if need[0] else None), gx, None, *grads


def _alpha_grad(dot: Callable[[int, int], Tensor], axis: str, k: int) -> Tensor:
    """``Σ g ⊙ S_axis,k(x)`` per channel from the roll dots ``dot(dim, r) = Σ g ⊙ roll(x, r, dim)``."""
    if axis == "c":
        parts = [dot(dim, direction * (k // 2)).chunk(4)[j] for j, (direction, dim) in enumerate(_MIX_ROLLS)]
        return torch.cat(parts)
    dim = 1 if axis == "h" else 2
    first, *rest = (dot(dim, r) for r in range(-(k // 2), k // 2 + 1))
    return sum(rest, first) / k


def shift_branches(
    out: Tensor, x: Tensor, branches: tuple[ShiftBranch, ...], scales: list[tuple[Tensor, Tensor]]
) -> Tensor:
    """``out + Σ_j (S_j(x)·α_j + b_j)`` for ``(B, H, W, C)`` maps, summed left to right (SPEC §2 shifts).

    ``branches`` name each ``S_j`` (``("h", 3)`` is :func:`shift_mean` along H with k = 3, ``("c", 5)``
    :func:`shift_channel_mix` by 2) and ``scales`` give its LayerScale ``(α_j, b_j)``. The values are
    bit-identical to that formula written with ``torch.roll``; the backward saves only ``x``.
    """
    params = [t for pair in scales for t in pair]
    if not fused() or not branches or any(t.dtype != x.dtype for t in (out, *params)):  # mixed dtypes: promote
        return shift_branches_reference(out, x, branches, scales)
    return _ShiftBranches.apply(out, x, tuple(branches), *params)


def shift_branches_reference(
    out: Tensor, x: Tensor, branches: tuple[ShiftBranch, ...], scales: list[tuple[Tensor, Tensor]]
) -> Tensor:
    """:func:`shift_branches` written with ``torch.roll`` and autograd: the slow, obviously correct twin."""
    for (axis, k), (alpha, move) in zip(branches, scales):
        s = shift_channel_mix(x, k // 2) if axis == "c" else shift_mean(x, 1 if axis == "h" else 2, k)
        out = out + (s * alpha + move)
    return out


# --------------------------------------------------------------------------------------------
# The MLP's wide middle as one autograd Function (training cost, issue 12)
# --------------------------------------------------------------------------------------------
class _NormResidualRPReLUSignLinear(torch.autograd.Function):
    """From the first linear's output ``z`` (M, rC) and the block tokens ``x`` (M, C) of a BinaryMLP:

    ``t = BN(z) + concat([x]·r) − b1``, ``h = PReLU_a(t) + b2``, ``pooled = AvgPool1d_r(h)`` (M, C),
    ``y = sign(h + m2)·Wᵀ`` (M, C_out). Returns ``(y, pooled)``.

    Every rC-wide map is made in place in two buffers, and only ``z`` and ``t`` are saved (autograd keeps
    ``z``, ``t`` and ``h + m2``): ``u = h + m2`` is recomputed from ``t`` in the backward. Backward, with
    ``gu = (g_y W) ⊙ max(0, 2 − 2|u|)``: ``∂W = g_yᵀ sign(u)``, ``∂m2 = Σ gu``,
    ``∂h = gu + g_pooled/r`` (each of its r channels), ``∂b2 = Σ ∂h``, then PReLU's
    ``∂t = ∂h·([t > 0] + a·[t ≤ 0])``, ``∂a = Σ ∂h·t·[t ≤ 0]``, ``∂b1 = −Σ ∂t``, ``∂x = Σ_r ∂t``, and
    batch norm's own backward for ``z``, γ, β.
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        b1: Tensor,
        a: Tensor,
        b2: Tensor,
        m2: Tensor,
        w: Tensor,
        stats: tuple[Tensor, Tensor, float, float],
    ) -> tuple[Tensor, Tensor]:
        running_mean, running_var, momentum, eps = stats
        m, c = x.shape
        r = z.shape[1] // c
        t, mean, invstd = torch.native_batch_norm(z, gamma, beta, running_mean, running_var, True, momentum, eps)
        t.view(m, r, c).add_(x.unsqueeze(1))  # + concat([x]·r): channel j·C + c gets x[c]
        t.sub_(b1)
        u = F.prelu(t, a).add_(b2)  # h
        pooled = u.view(m, c, r).mean(dim=-1)  # AvgPool1d_r: channel c·r + j pools into c
        y = F.linear(u.add_(m2).sign_(), w)
        ctx.save_for_backward(z, t, mean, invstd, gamma, a, b2, m2, w)  # not the running stats: train-mode
        ctx.eps = eps  # backward ignores them, and a checkpoint recomputation bumps their version
        return y, pooled

    @staticmethod
    def backward(ctx: Any, gy: Tensor, gpooled: Tensor) -> tuple[Tensor | None, ...]:
        from .quant import _approx_sign_grad

        z, t, mean, invstd, gamma, a, b2, m2, w = ctx.saved_tensors
        m, rc = t.shape
        c = gpooled.shape[1]
        need = ctx.needs_input_grad
        u = F.prelu(t, a).add_(b2).add_(m2)  # recomputed h + m2, bit-identical to the forward's
        gu = gy.matmul(w).mul_(_approx_sign_grad(u))  # (M, C_out) @ (C_out, rC)
        gw = gy.t().matmul(u.sign_()) if need[8] else None
        gm2 = gu.sum(0) if need[7] else None
        gh = gu.view(m, c, rc // c).add_((gpooled / (rc // c)).unsqueeze(-1)).view(m, rc)
        gt, ga, sgt, gb2 = prelu_grads(gh, t, a, in_place=True)  # gh is ours: ∂t overwrites it
        gb1 = -sgt
        gx = gt.view(m, rc // c, c).sum(1) if need[1] else None
        gz, ggamma, gbeta = torch.ops.aten.native_batch_norm_backward(
            gt, z, gamma, None, None, mean, invstd, True, ctx.eps, [need[0], need[2], need[3]]
        )
        return (
            gz,
            gx,
            ggamma,
            gbeta,
            gb1 if need[4] else None,
            ga if need[5] else None,
            gb2 if need[6] else None,
            gm2,
            gw,
            None,
        )


def norm_residual_rprelu_sign_linear(
    z: Tensor, x: Tensor, norm: TokenBatchNorm, act: RPReLU, m2: Tensor, w: Tensor
) -> tuple[Tensor, Tensor]:
    """A BinaryMLP's middle, ``y = sign(RPReLU(BN(z) + concat([x]·r)) + m2)·Wᵀ`` and
    ``pooled = AvgPool1d_r(RPReLU(...))``, for 2-D ``z`` (M, rC) and ``x`` (M, C); see
    :class:`_NormResidualRPReLUSignLinear`. Call only when ``norm.fusable()``; same values as the op-by-op
    formula, running statistics updated the same way.
    """
    stats = (norm.running_mean, norm.running_var, norm.step_momentum(), norm.eps)
    return _NormResidualRPReLUSignLinear.apply(
        z, x, norm.weight, norm.bias, act.move1, act.prelu.weight, act.move2, m2, w, stats
    )
