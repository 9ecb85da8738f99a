"""BHViT: Binarized Hybrid Vision Transformer (Gao et al., CVPR 2025, arXiv 2503.02394).

A four-stage hybrid: stages 1–2 are multi-scale grouped dilated convolution blocks (MSGDC), stages
3–4 windowed multi-scale multi-head attention blocks (MSMHA) whose windows also attend to max/avg
pooled global tokens; every MLP carries parameter-free shift branches. Numerics follow the authors'
code (github.com/IMRL/BHViT, ``transformer/BHViT.py``), which trained the released checkpoints;
see ``docs/spec.md`` (cited as SPEC) §1–3.

Differences from the authors' code:

* any input size whose stages divide evenly (the authors hard-wire 224); position embeddings are
  sized from ``img_size``;
* tensors flow channels-last, ``(B, H, W, C)``, between blocks (the authors permute to and from
  ``(B, C, H, W)`` around every block); the arithmetic is unchanged;
* the intended weight initialisation (trunc-normal σ = 0.02 for linear layers) actually runs;
* BatchNorm works in a single process on CPU; cross-rank statistics only under distributed
  training (:func:`bhvit.layers.convert_sync_batchnorm`);
* the pooling-grid quirk of the global tokens (``padding = 3`` misaligns the 7×7 pooling with the
  windows and average pooling counts the zero padding) is reproduced by default;
  ``aligned_pool=True`` pools exactly the windows instead (not for the released checkpoints).

Use as a timm model: ``create_model(name, features_only=True)`` gives the four stage maps (NCHW) with
``feature_info``; models have ``reset_classifier``, ``forward_intermediates`` and ``pretrained_cfg``,
and the variants register with timm's registry when timm is installed (:mod:`bhvit.registry`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..layers import (
    NORMS,
    DropPath,
    LayerScale,
    Norm,
    RPReLU,
    TokenBatchNorm,
    fused,
    make_norm,
    norm_residual_rprelu_sign_linear,
    recomputing,
    shift_branches,
)
from ..quant import QuantConv2d, QuantLinear, SignQuantizer, WeightBinarizer, get_quantizer, sign_ste
from ..rules import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, STEM_STRIDE, TOKEN_NORM_EPS, TOTAL_STRIDE, pool_padding
from .features import feature_take_indices

__all__ = [
    "ATTN_QUANTS",
    "BINARY_PRECISIONS",
    "NORMS",
    "PRECISIONS",
    "AttnQuant",
    "BHViT",
    "BHViTConfig",
    "Norm",
    "Precision",
    "build_model",
    "choose_window_size",
    "downsample_convs",
    "pretrained_cfg",
    "to_img_size",
    "valid_img_sizes",
]

Precision = Literal["fp", "some_fp", "binary"]
AttnQuant = Literal["lsq", "gsb"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
ATTN_QUANTS: tuple[str, ...] = get_args(AttnQuant)
BINARY_PRECISIONS: tuple[str, ...] = tuple(p for p in PRECISIONS if p != "fp")  # with binary layers: packable
MAX_WINDOW = 7  # the authors' window; also the largest :func:`choose_window_size` picks

NormLayer = Callable[[int], nn.Module]  # width -> norm over the last dim


# =============================================================================================
# Configuration and variants
# =============================================================================================
@dataclass(frozen=True)
class BHViTConfig:
    """Everything that rebuilds a BHViT model. Validated on construction.

    ``precision``: ``"fp"`` (all full precision), ``"some_fp"`` (binary blocks, fp stem,
    downsampling and head: the paper's †) or ``"binary"`` (downsampling binary too).
    ``num_heads`` are the heads of stages 3 and 4. ``mlp_ratios`` give each stage's MLP hidden width
    as a multiple of its width. ``img_size`` is an int, a numeric string or ``(height, width)``.
    """

    depths: tuple[int, int, int, int] = (2, 2, 6, 2)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)
    num_heads: tuple[int, int] = (4, 8)
    precision: Precision = "binary"
    attn_quant: AttnQuant = "lsq"
    norm: Norm = "bn"
    shift3: bool = True
    shift5: bool = True
    layerscale: bool = True
    num_classes: int = 1000
    in_chans: int = 3
    img_size: tuple[int, int] = (224, 224)
    window_size: int = MAX_WINDOW
    aligned_pool: bool = False
    drop_path_rate: float = 0.0
    recu: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("depths", "widths", "mlp_ratios", "num_heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "img_size", to_img_size(self.img_size))
        self._validate()

    def _validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.attn_quant not in ATTN_QUANTS:
            raise ValueError(f"attn_quant must be one of {ATTN_QUANTS}, got {self.attn_quant!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if len(self.depths) != 4 or min(self.depths) < 1:
            raise ValueError(f"depths must be four positive ints, got {self.depths}")
        if len(self.widths) != 4 or any(w % 4 for w in self.widths):
            raise ValueError(f"widths must be four multiples of 4 (grouped convs, shifts), got {self.widths}")
        if self.precision == "binary" and any(b % a for a, b in zip(self.widths, self.widths[1:])):
            raise ValueError(f"binary downsampling needs each width to divide the next, got {self.widths}")
        for w, h in zip(self.widths[2:], self.num_heads):
            if w % h:
                raise ValueError(f"width {w} is not divisible by {h} heads")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {self.num_classes}")
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        check_img_size(self.img_size, self.window_size)

    @property
    def stage_sizes(self) -> list[tuple[int, int]]:
        """Feature-map size ``(H, W)`` of each stage."""
        h, w = self.img_size
        return [(h // (STEM_STRIDE * 2**i), w // (STEM_STRIDE * 2**i)) for i in range(4)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BHViTConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown BHViT config keys {unknown}")
        return cls(**d)


def to_img_size(value: Any) -> tuple[int, int]:
    """``(height, width)`` from an int, a numeric string (``"64"``, as JSON or a CLI gives it) or a pair.

    Anything else raises a ValueError naming the accepted forms; ``"64"`` is never read as ``(6, 4)``.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _side(value[0], value), _side(value[1], value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        side = _side(value, value)
        return side, side
    raise ValueError(f"img_size must be an int, a numeric string or (height, width), got {value!r}")


def _side(v: Any, whole: Any) -> int:
    """One side of an image size: an int, an integral float or a numeric string."""
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ValueError(f"img_size must be an int, a numeric string or (height, width), got {whole!r}")
    return int(v)


def window_fits(img_size: tuple[int, ...], window_size: int) -> bool:
    """The window rule: every side must be a multiple of 32·w.

    Stages 3 and 4 see ``side/16`` and ``side/32`` tokens per side (stem stride 4, three 2×
    downsamplings), and both must be multiples of the attention window ``w``; a multiple of 32·w
    satisfies both.
    """
    return all(s > 0 and s % (TOTAL_STRIDE * window_size) == 0 for s in img_size)


def choose_window_size(img_size: int | tuple[int, int], max_window: int = MAX_WINDOW) -> int:
    """The largest window ``w ≤ max_window`` that fits ``img_size`` (:func:`window_fits`).

    224 → 7, 64 → 2, 96 → 3, 32 → 1; a side that is not a multiple of 32 is a ValueError.
    """
    size = to_img_size(img_size)
    if not window_fits(size, 1):
        raise ValueError(f"img_size={img_size} is not a multiple of {TOTAL_STRIDE}")
    return max(w for w in range(1, max_window + 1) if window_fits(size, w))


def valid_img_sizes(window_size: int, limit: int = 4) -> list[int]:
    """The first ``limit`` square image sizes that work with ``window_size``: multiples of 32·w."""
    return [TOTAL_STRIDE * window_size * k for k in range(1, limit + 1)]


def check_img_size(img_size: tuple[int, int], window_size: int) -> None:
    """Raise a ValueError naming sizes that work unless :func:`window_fits` (side = 32·w·k)."""
    if window_fits(img_size, window_size):
        return
    side = next(s for s in img_size if not window_fits((s,), window_size))
    fits = [w for w in range(1, MAX_WINDOW + 1) if window_fits((side,), w)]
    hint = f"; or keep {side} px with window_size in {fits}" if fits else ""
    raise ValueError(
        f"image size {tuple(img_size)} does not fit window_size={window_size}: each side must be a multiple "
        f"of 32·window_size = {TOTAL_STRIDE * window_size} (sizes that work: {valid_img_sizes(window_size)}){hint}"
    )


def pretrained_cfg(config: BHViTConfig, architecture: str | None = None) -> dict[str, Any]:
    """Input metadata of a model (timm's ``pretrained_cfg`` fields): what preprocessing it expects.

    The input size is fixed (position embeddings are sized from ``img_size``); evaluation resizes the
    shorter side to ``size/crop_pct`` (bicubic) and centre-crops (SPEC §4: Resize 256, CenterCrop 224).
    Mean and std are ImageNet's for 3 channels, 0.5 otherwise. No hosted weights (``url`` empty):
    load the authors' checkpoints with :func:`bhvit.load_upstream`.
    """
    rgb = config.in_chans == 3
    return {
        "architecture": architecture,
        "url": "",
        "input_size": (config.in_chans, *config.img_size),
        "fixed_input_size": True,
        "interpolation": "bicubic",
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "mean": IMAGENET_MEAN if rgb else (0.5,) * config.in_chans,
        "std": IMAGENET_STD if rgb else (0.5,) * config.in_chans,
        "num_classes": config.num_classes,
        "pool_size": config.stage_sizes[-1],
        "first_conv": "stem.proj",
        "classifier": "head",
        "origin_url": "https://github.com/IMRL/BHViT",
        "paper_ids": "arXiv:2503.02394",
    }


# =============================================================================================
# Quantized layer factories
# =============================================================================================
def binary_linear(cin: int, cout: int, binary: bool, recu: bool) -> QuantLinear:
    """Linear without bias; sign on the input and binarized weights when ``binary``."""
    if not binary:
        return QuantLinear(cin, cout)
    return QuantLinear(cin, cout, input_quantizer=SignQuantizer(), weight_quantizer=WeightBinarizer(recu))


def binary_conv(cin: int, cout: int, binary: bool, recu: bool, **kwargs: Any) -> QuantConv2d:
    """Conv2d with sign on the input and binarized weights when ``binary``."""
    quant = {"input_quantizer": SignQuantizer(), "weight_quantizer": WeightBinarizer(recu)} if binary else {}
    return QuantConv2d(cin, cout, **quant, **kwargs)


def to_nchw(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) view (channels-last strides; convs take it as is)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C) view."""
    return x.permute(0, 2, 3, 1)


# =============================================================================================
# Blocks, bottom-up
# =============================================================================================
class ShiftBranches(nn.Module):
    """Parameter-free shift branches beside the MLP, each behind a LayerScale with α = 0 (SPEC §2).

    ``Shift(x) = Σ_{k∈ks} LS(S_h,k(x)) + LS(S_w,k(x)) + LS(S_c,k(x))``, added in the order h3, w3,
    c3, h5, w5, c5.
    """

    def __init__(self, dim: int, shift3: bool, shift5: bool) -> None:
        super().__init__()
        self.kernels = [k for k, on in ((3, shift3), (5, shift5)) if on]
        for k in self.kernels:
            for axis in ("h", "w", "c"):
                self.add_module(f"ls_{axis}{k}", LayerScale(dim, init=0.0))

    def add_to(self, out: Tensor, xn: Tensor) -> Tensor:
        """``out + Σ branches(xn)`` for maps ``(B, H, W, C)``, summed left to right.

        One autograd Function (:func:`bhvit.layers.shift_branches`): the same values as the six rolls
        and LayerScales, but the backward keeps ``xn`` instead of six shifted copies.
        """
        branches = tuple((axis, k) for k in self.kernels for axis in ("h", "w", "c"))
        scales = [(ls.alpha, ls.move) for ls in (getattr(self, f"ls_{axis}{k}") for axis, k in branches)]
        return shift_branches(out, xn, branches, scales)


class BinaryMLP(nn.Module):
    """The MLP with shortcut-preserving binary linears (SPEC §2), ``r = hidden / C``.

    ``H1 = RPReLU(norm(BLinear_1(x + m1)) + concat([x]·r))``;
    ``H2 = LS(RPReLU(norm(BLinear_2(H1 + m2)) + AvgPool1d_r(H1)))``, drop-path on ``H2``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        binary: bool,
        recu: bool,
        norm_layer: NormLayer,
        layerscale: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        if hidden % dim:
            raise ValueError(f"MLP hidden width {hidden} must be a multiple of {dim}")
        self.ratio = hidden // dim
        self.move1 = nn.Parameter(torch.zeros(dim))
        self.fc1 = binary_linear(dim, hidden, binary, recu)
        self.norm1 = norm_layer(hidden)
        self.act1 = RPReLU(hidden)
        self.move2 = nn.Parameter(torch.zeros(hidden))
        self.fc2 = binary_linear(hidden, dim, binary, recu)
        self.norm2 = norm_layer(dim)
        self.act2 = RPReLU(dim)
        self.ls = LayerScale(dim) if layerscale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C) -> (B, N, C)
        b, n, c = x.shape
        z = self.fc1(x + self.move1)  # (B, N, rC)
        if self._fused(z):
            w2 = self.fc2.weight_quantizer(self.fc2.weight)
            y, pooled = norm_residual_rprelu_sign_linear(
                z.view(b * n, -1), x.reshape(b * n, c), self.norm1, self.act1, self.move2, w2
            )
            out = self.norm2(y.view(b, n, c)) + pooled.view(b, n, c)
            return self.drop_path(self.ls(self.act2(out)))
        h = self.norm1(z)
        h = (h.view(b, n, self.ratio, c) + x.unsqueeze(2)).view(b, n, -1)  # + concat([x]·r), not materialised
        h = self.act1(h)
        pooled = h.view(b, n, c, self.ratio).mean(dim=-1)  # AvgPool1d_r: (B, N, rC) -> (B, N, C), saves no input
        out = self.norm2(self.fc2(h + self.move2)) + pooled
        return self.drop_path(self.ls(self.act2(out)))

    def _fused(self, z: Tensor) -> bool:
        """The wide middle runs as one Function (training with autograd, batch norm, binary fc2, one dtype):
        the same values, a third less saved memory and fewer passes over the rC-wide maps."""
        return (
            fused()
            and torch.is_grad_enabled()
            and self.training
            and isinstance(self.norm1, TokenBatchNorm)
            and self.norm1.fusable()
            and isinstance(self.fc2.input_quantizer, SignQuantizer)
            and self.fc2.weight_quantizer is not None
            and self.fc2.bias is None
            and z.is_contiguous()
            and all(p.dtype == z.dtype for p in (self.norm1.weight, self.act1.move1, self.move2))
        )


class MultiScaleConvMixer(nn.Module):
    """MSGDC token mixer (SPEC §2, stages 1–2).

    ``M = norm(Σ_{d∈{1,3,5}} RPReLU_d(BConv3x3_d(x + b)))`` with grouped (4) dilated 3×3 binary
    convolutions, 'same' zero padding after ``sign`` (padded taps contribute 0) and fp biases.
    """

    def __init__(
        self,
        dim: int,
        *,
        binary: bool,
        recu: bool,
        norm_layer: NormLayer,
        dilations: tuple[int, ...] = (1, 3, 5),
        groups: int = 4,
    ) -> None:
        super().__init__()
        self.move = nn.Parameter(torch.zeros(dim))
        self.convs = nn.ModuleList(
            binary_conv(dim, dim, binary, recu, kernel_size=3, padding=d, dilation=d, groups=groups, bias=True)
            for d in dilations
        )
        self.acts = nn.ModuleList(RPReLU(dim) for _ in dilations)
        self.norm = norm_layer(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H, W, C)
        u = to_nchw(x + self.move)
        out = None
        for conv, act in zip(self.convs, self.acts):
            branch = act(to_nhwc(conv(u)))
            out = branch if out is None else out + branch
        return self.norm(out)


class GlobalTokens(nn.Module):
    """Pooled global tokens for windowed attention (SPEC §2 MSMHA).

    ``G = a ⊙ MaxPool(w, stride w, pad p)(X) + (1 − a) ⊙ AvgPool(w, stride w, pad p)(X)``, ``a`` per
    channel (init 0.5), average pooling counting the zero padding. ``p = (w − 1)//2`` (3 at w = 7, as
    in the authors' code); ``aligned=True`` uses ``p = 0``.
    """

    def __init__(self, dim: int, window: int, aligned: bool) -> None:
        super().__init__()
        self.window = window
        self.padding = pool_padding(window, aligned)
        self.alpha = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, Hp·Wp, C)
        xc = to_nchw(x)
        mx = F.max_pool2d(xc, self.window, self.window, self.padding)
        av = F.avg_pool2d(xc, self.window, self.window, self.padding)
        mx, av = to_nhwc(mx).flatten(1, 2), to_nhwc(av).flatten(1, 2)
        return self.alpha * mx + (1.0 - self.alpha) * av


def window_split(x: Tensor, w: int) -> Tensor:
    """(B, H, W, C) -> (B·nW, w·w, C), windows in row-major order within each sample."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_merge(windows: Tensor, w: int, b: int, h: int, wd: int) -> Tensor:
    """(B·nW, w·w, C) -> (B, H, W, C); inverse of :func:`window_split`."""
    c = windows.shape[-1]
    x = windows.reshape(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


def upsample_nearest(g: Tensor, w: int) -> Tensor:
    """(B, h, wd, C) -> (B, h·w, wd·w, C): each token repeated over a w×w block (nearest neighbour).

    Equals ``F.interpolate(mode="nearest")`` by a factor w, channels-last and without a copy
    before the final reshape.
    """
    b, h, wd, c = g.shape
    return g[:, :, None, :, None, :].expand(b, h, w, wd, w, c).reshape(b, h * w, wd * w, c)


class BinaryAttention(nn.Module):
    """MSMHA: windowed binary attention over window tokens and pooled global tokens (SPEC §2, §3.3).

    ``Hs = LN([windows; G])``; ``Q̃ = RPReLU(norm(BLinear_q(Hs + mq)) + Hs)`` (likewise K̃, Ṽ);
    ``q, k, v = sign(Q̃ + mq2), …``; ``Â = AttnQuant(softmax(q kᵀ/√d))``;
    ``Ctx = RPReLU(norm(merge_heads(Â v)) + Q̃ + K̃ + Ṽ)``; window tokens go back to their places,
    global tokens are averaged over windows and upsampled (nearest);
    ``O = p ⊙ windows + (1 − p) ⊙ global``; ``out = LS(RPReLU(norm(BLinear_o(O + mo)) + O))``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        window: int,
        aligned_pool: bool,
        binary: bool,
        recu: bool,
        norm_layer: NormLayer,
        attn_quantizer: nn.Module | None,
        layerscale: bool,
    ) -> None:
        """``attn_quantizer`` quantizes the attention matrix (None: full precision, as in fp models)."""
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.binary = binary
        self.pool = GlobalTokens(dim, window, aligned_pool)
        self.token_norm = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)  # always LayerNorm, even in BatchNorm models
        for n in ("q", "k", "v"):
            self.register_parameter(f"move_{n}", nn.Parameter(torch.zeros(dim)))
            self.add_module(n, binary_linear(dim, dim, binary, recu))
            self.add_module(f"norm_{n}", norm_layer(dim))
            self.add_module(f"act_{n}", RPReLU(dim))
            self.register_parameter(f"move_{n}2", nn.Parameter(torch.zeros(dim)))
        self.attn_quant = attn_quantizer
        self.norm_ctx = norm_layer(dim)
        self.act_ctx = RPReLU(dim)
        self.mix = nn.Parameter(torch.full((dim,), 0.5))
        self.move_o = nn.Parameter(torch.zeros(dim))
        self.proj = binary_linear(dim, dim, binary, recu)
        self.norm_o = norm_layer(dim)
        self.act_o = RPReLU(dim)
        self.ls = LayerScale(dim) if layerscale else nn.Identity()

    def _branch(self, hs: Tensor, n: str) -> tuple[Tensor, Tensor]:
        """``(X̃, binarized X̃ + m2)`` for n in q, k, v; shapes (B', L, C)."""
        lin, norm, act = getattr(self, n), getattr(self, f"norm_{n}"), getattr(self, f"act_{n}")
        mixed = act(norm(lin(hs + getattr(self, f"move_{n}"))) + hs)
        pre = mixed + getattr(self, f"move_{n}2")
        return mixed, sign_ste(pre) if self.binary else pre

    def _heads(self, x: Tensor) -> Tensor:
        """(B', L, C) -> (B', heads, L, d)."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def attention_context(self, hs: Tensor) -> Tensor:
        """The attention core on normalised tokens ``hs`` (B', L, C) -> context (B', L, C)."""
        mq, q = self._branch(hs, "q")
        mk, k = self._branch(hs, "k")
        mv, v = self._branch(hs, "v")
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B', heads, L, L)
        attn = scores.softmax(dim=-1)
        if self.attn_quant is not None:
            attn = self.attn_quant(attn)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(hs.shape)  # (B', L, C)
        return self.act_ctx(self.norm_ctx(ctx) + mq + mk + mv)

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H, W, C)
        b, h, wd, c = x.shape
        w = self.window
        n_win = (h // w) * (wd // w)
        windows = window_split(x, w)  # (B·nW, w², C)
        glob = self.pool(x)  # (B, P, C), P = nW
        glob = glob.repeat_interleave(n_win, dim=0)  # (B·nW, P, C)
        hs = self.token_norm(torch.cat([windows, glob], dim=1))  # (B·nW, w² + P, C)
        ctx = self.attention_context(hs)
        local = window_merge(ctx[:, : w * w], w, b, h, wd)  # (B, H, W, C)
        g = ctx[:, w * w :].reshape(b, n_win, h // w, wd // w, c).mean(dim=1)  # (B, H/w, W/w, C)
        g = upsample_nearest(g, w)  # (B, H, W, C)
        o = local * self.mix + g * (1.0 - self.mix)
        out = self.act_o(self.norm_o(self.proj(o + self.move_o)) + o)
        return self.ls(out)


class HybridBlock(nn.Module):
    """A BHViT block around a token mixer (SPEC §2):
    ``X1 = mixer(norm1(X)) + X``; ``Y = MLP(norm2(X1)) + X1 + Shift(norm2(X1))``.

    ``binary``: binarized linears and convolutions (sign of the input, scaled sign of the weights).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: int,
        *,
        binary: bool,
        recu: bool,
        norm_layer: NormLayer,
        layerscale: bool,
        shift3: bool,
        shift5: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.norm2 = norm_layer(dim)
        self.mlp = BinaryMLP(
            dim,
            dim * mlp_ratio,
            binary=binary,
            recu=recu,
            norm_layer=norm_layer,
            layerscale=layerscale,
            drop_path=drop_path,
        )
        self.shift = ShiftBranches(dim, shift3, shift5)

    def token_mixer(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H, W, C)
        b, h, w, c = x.shape
        x1 = self.token_mixer(self.norm1(x)) + x
        xn = self.norm2(x1)
        out = self.mlp(xn.reshape(b, h * w, c)).reshape(b, h, w, c) + x1
        return self.shift.add_to(out, xn)


class ConvBlock(HybridBlock):
    """Stage 1–2 block: the token mixer is MSGDC."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: int,
        *,
        binary: bool,
        recu: bool,
        norm_layer: NormLayer,
        layerscale: bool,
        shift3: bool,
        shift5: bool,
        drop_path: float,
    ) -> None:
        super().__init__(
            dim,
            mlp_ratio,
            binary=binary,
            recu=recu,
            norm_layer=norm_layer,
            layerscale=layerscale,
            shift3=shift3,
            shift5=shift5,
            drop_path=drop_path,
        )
        self.mixer = MultiScaleConvMixer(dim, binary=binary, recu=recu, norm_layer=norm_layer)

    def token_mixer(self, x: Tensor) -> Tensor:
        return self.mixer(x)


class AttentionBlock(HybridBlock):
    """Stage 3–4 block: the token mixer is MSMHA over ``window``×``window`` windows.

    ``attn_quantizer`` quantizes the attention matrix (None: full precision).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: int,
        num_heads: int,
        *,
        window: int,
        aligned_pool: bool,
        attn_quantizer: nn.Module | None,
        binary: bool,
        recu: bool,
        norm_layer: NormLayer,
        layerscale: bool,
        shift3: bool,
        shift5: bool,
        drop_path: float,
    ) -> None:
        super().__init__(
            dim,
            mlp_ratio,
            binary=binary,
            recu=recu,
            norm_layer=norm_layer,
            layerscale=layerscale,
            shift3=shift3,
            shift5=shift5,
            drop_path=drop_path,
        )
        self.attn = BinaryAttention(
            dim,
            num_heads,
            window=window,
            aligned_pool=aligned_pool,
            binary=binary,
            recu=recu,
            norm_layer=norm_layer,
            attn_quantizer=attn_quantizer,
            layerscale=layerscale,
        )

    def token_mixer(self, x: Tensor) -> Tensor:
        return self.attn(x)


class Downsample(nn.Module):
    """2× downsampling between stages, (B, H, W, C) -> (B, H/2, W/2, C2) (SPEC §2).

    fp: ``y = norm(Conv2x2(norm_in(X))) + pos``. Binary: ``t = norm_in(X)``, ``r`` = 2×2 average of
    ``t`` tiled ``C2/C`` times along channels, ``y = RPReLU(norm(BConv2x2(t + move)) + r) + pos``.
    ``pos`` is a learnable ``(1, (H/2)(W/2), C2)`` embedding. The model finds these convolutions
    through :func:`downsample_convs` (the authors' ``L_re`` skips them).
    """

    def __init__(
        self, cin: int, cout: int, out_hw: tuple[int, int], *, binary: bool, recu: bool, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        self.binary = binary
        self.norm_in = norm_layer(cin)
        self.conv = binary_conv(cin, cout, binary, recu, kernel_size=2, stride=2, bias=False)
        self.norm = norm_layer(cout)
        if binary:
            self.move = nn.Parameter(torch.zeros(cin))
            self.act = RPReLU(cout)
        self.pos_embed = nn.Parameter(torch.zeros(1, out_hw[0] * out_hw[1], cout))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        t = self.norm_in(x)
        if not self.binary:
            y = self.norm(to_nhwc(self.conv(to_nchw(t))))
        else:
            r = to_nhwc(F.avg_pool2d(to_nchw(t), 2))  # (B, H/2, W/2, C)
            y = to_nhwc(self.conv(to_nchw(t + self.move)))  # (B, H/2, W/2, C2)
            y = self.act(self.norm(y) + torch.cat([r] * (y.shape[-1] // r.shape[-1]), dim=-1))
        return y + self.pos_embed.view(1, y.shape[1], y.shape[2], -1)


def downsample_convs(model: nn.Module) -> list[nn.Module]:
    """The convolutions of every :class:`Downsample` in ``model`` (wrappers such as DDP included)."""
    return [m.conv for m in model.modules() if isinstance(m, Downsample)]


class Stem(nn.Module):
    """``Conv4x4/4 → norm → GELU`` then a learnable ``(1, C, H/4, W/4)`` position embedding."""

    def __init__(self, in_chans: int, dim: int, out_hw: tuple[int, int], *, norm_layer: NormLayer) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=STEM_STRIDE, stride=STEM_STRIDE)
        self.norm = norm_layer(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *out_hw))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:  # (B, in, H, W) -> (B, H/4, W/4, C)
        x = F.gelu(self.norm(to_nhwc(self.proj(x))))
        return x + to_nhwc(self.pos_embed)


class Stage(nn.Module):
    """An optional downsampling followed by ``depth`` blocks."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


# =============================================================================================
# Model
# =============================================================================================
class BHViT(nn.Module):
    """BHViT image classifier; ``forward`` maps (B, in_chans, H, W) images to (B, classes) logits.

    Follows timm's model contract: :meth:`forward_features`, :meth:`forward_head`,
    :meth:`forward_intermediates` (the four stage maps, NCHW), :meth:`reset_classifier`,
    :meth:`get_classifier`, ``feature_info`` (channels and stride of each stage) and
    ``pretrained_cfg`` (input metadata, see :func:`pretrained_cfg`).
    """

    def __init__(self, config: BHViTConfig, *, architecture: str | None = None) -> None:
        super().__init__()
        self.config = config
        cfg = config
        sizes = cfg.stage_sizes
        norm_layer = partial(make_norm, cfg.norm, eps=cfg.norm_eps)
        self.stem = Stem(cfg.in_chans, cfg.widths[0], sizes[0], norm_layer=norm_layer)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        stages, start = [], 0
        for i, depth in enumerate(cfg.depths):
            down = self._downsample(cfg, i, norm_layer) if i else nn.Identity()
            blocks = [self._block(cfg, i, norm_layer, rates[start + j]) for j in range(depth)]
            stages.append(Stage(down, blocks))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.norm = norm_layer(cfg.widths[-1])
        self.head = nn.Linear(cfg.widths[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.feature_info = [
            {"num_chs": w, "reduction": STEM_STRIDE * 2**i, "module": f"stages.{i}"} for i, w in enumerate(cfg.widths)
        ]
        self.pretrained_cfg = pretrained_cfg(cfg, architecture)
        self.apply(_init_weights)

    @staticmethod
    def _downsample(cfg: BHViTConfig, stage: int, norm_layer: NormLayer) -> Downsample:
        """The downsampling into ``stage`` (1–3): binary only in ``binary`` models (SPEC §1)."""
        return Downsample(
            cfg.widths[stage - 1],
            cfg.widths[stage],
            cfg.stage_sizes[stage],
            binary=cfg.precision == "binary",
            recu=cfg.recu,
            norm_layer=norm_layer,
        )

    @staticmethod
    def _block(cfg: BHViTConfig, stage: int, norm_layer: NormLayer, drop_path: float) -> HybridBlock:
        """A block of ``stage`` (0–3): MSGDC in stages 0–1, MSMHA in 2–3; binary unless ``fp``."""
        binary = cfg.precision != "fp"
        common = {
            "binary": binary,
            "recu": cfg.recu,
            "norm_layer": norm_layer,
            "layerscale": cfg.layerscale,
            "shift3": cfg.shift3,
            "shift5": cfg.shift5,
            "drop_path": drop_path,
        }
        dim, ratio = cfg.widths[stage], cfg.mlp_ratios[stage]
        if stage < 2:
            return ConvBlock(dim, ratio, **common)
        heads = cfg.num_heads[stage - 2]
        quantizer = get_quantizer(cfg.attn_quant, heads) if binary else None
        return AttentionBlock(
            dim, ratio, heads, window=cfg.window_size, aligned_pool=cfg.aligned_pool, attn_quantizer=quantizer, **common
        )

    # -------------------------------------------------------------------- timm's contract
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_features(self) -> int:
        """Width of the pooled features the classifier sees."""
        return self.config.widths[-1]

    head_hidden_size = num_features

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a fresh ``Linear(C, num_classes)`` (``0``: no head, pooled features out).

        The config and ``pretrained_cfg`` follow, so a checkpoint saved afterwards rebuilds this
        model. BHViT pools by the mean of the tokens only: ``global_pool`` may be ``None`` or ``"avg"``.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(
                f"BHViT pools the mean of its tokens: global_pool must be 'avg' or None, got {global_pool!r}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        ref = self.stem.proj.weight  # new layers take the model's device and dtype
        self.config = replace(self.config, num_classes=num_classes)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}
        if num_classes == 0:
            self.head = nn.Identity()
            return
        self.head = nn.Linear(self.num_features, num_classes).to(device=ref.device, dtype=ref.dtype)
        _init_weights(self.head)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them.

        Trades roughly one extra forward pass for a large cut in training memory. Outputs and
        gradients are unchanged: BatchNorm does not update its running statistics twice (see
        :func:`bhvit.layers.recomputing`) and the RNG state is restored for drop-path.
        """
        self.grad_checkpointing = enable

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                block, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), recomputing())
            )
        return block(x)

    def _run_stage(self, i: int, x: Tensor, hidden: dict[str, Tensor] | None) -> Tensor:
        """Stage ``i``: its downsampling (stages 1–3) then its blocks, (B, H, W, C) -> (B, H', W', C')."""
        stage = self.stages[i]
        x = stage.downsample(x)
        if hidden is not None and i:
            hidden[f"stage{i}"] = to_nchw(x)
        for block in stage.blocks:
            x = self._run_block(block, x)
        return x

    def _check_input(self, x: Tensor) -> None:
        want = (self.config.in_chans, *self.config.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"expected images of shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}; "
                f"resize the input to {want[1]}×{want[2]} or build the model with img_size={tuple(x.shape[-2:])}"
            )

    def forward_features(self, x: Tensor, hidden: dict[str, Tensor] | None = None) -> Tensor:
        """Images (B, in, H, W) -> final normalised tokens (B, N, C).

        If ``hidden`` is a dict it receives intermediate maps in the authors' layout: ``embeddings``
        and ``stage1``..``stage3`` (after each downsampling) as (B, C, H, W), ``encoder_out`` as
        (B, C, H, W) and ``final_norm`` as (B, N, C).
        """
        self._check_input(x)
        x = self.stem(x)
        if hidden is not None:
            hidden["embeddings"] = to_nchw(x)
        for i in range(len(self.stages)):
            x = self._run_stage(i, x, hidden)
        if hidden is not None:
            hidden["encoder_out"] = to_nchw(x)
        x = self.norm(x.flatten(1, 2))
        if hidden is not None:
            hidden["final_norm"] = x
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Final tokens (B, N, C) -> logits: mean over tokens, then the linear classifier.

        ``pre_logits=True`` returns the pooled (B, C) features instead.
        """
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The output maps of the stages ``indices`` picks, and the final tokens (timm's contract).

        ``indices``: ``None`` all four stages, an int ``n`` the last ``n``, a sequence the stages it
        names (negative from the end). Stage ``i`` gives (B, widths[i], H/(4·2^i), W/(4·2^i)) in
        ``NCHW`` (or ``NHWC``). ``norm`` applies the final norm to the last stage's map (the only
        one of its width). ``stop_early`` skips the stages after the last one taken. Returns the list
        if ``intermediates_only``, else ``(forward_features(x), list)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        self._check_input(x)
        x = self.stem(x)
        last = len(self.stages) - 1
        intermediates = []
        for i in range(max_index + 1 if stop_early else len(self.stages)):
            x = self._run_stage(i, x, None)
            if i in take:
                y = self.norm(x) if norm and i == last else x  # (B, H, W, C)
                intermediates.append(to_nchw(y) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x.flatten(1, 2)), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (and the norm, head if asked): a backbone.

        Returns the stage indices taken, non-negative. The model then only serves
        :meth:`forward_intermediates` with those indices (``forward`` needs every stage).
        """
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay."""
        return {n for n, _ in self.named_parameters() if n.endswith("pos_embed")}


def _init_weights(module: nn.Module) -> None:
    """The intended init (timm ViT): trunc-normal σ=0.02 linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(config: BHViTConfig | dict[str, Any]) -> BHViT:
    """Build a model from a :class:`BHViTConfig` or its dict form."""
    if isinstance(config, dict):
        config = BHViTConfig.from_dict(config)
    return BHViT(config)
