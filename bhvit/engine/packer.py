"""Packing a float-simulated BHViT into its packed form (SPEC §6), first half: the model's tensors and bits.

:func:`extract` reads an eval-mode model and returns its :class:`PackedParts`: the config, every float tensor
(keyed as in the model's state dict) and, for every binary layer, its sign bits (row-packed, bit set = −1,
docs/packed-format.md §3) and per-output-channel scale α, plus layer metadata. :mod:`bhvit.engine.program`
turns them into the version-2 program; nothing else of the model is needed afterwards.

The binary weight is taken from the model's own weight quantizer, ``Wq = α_c·sign(Wc)``, so packing agrees
with whatever the quantizer computes (centring, ReCU): bits = ``Wq < 0``, ``α_c = max|Wq_c|``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from bhvit.quant import QuantConv2d, QuantLinear, is_binary_layer
from bhvit.runtime.reference import conv_rows, pack

if TYPE_CHECKING:
    from bhvit.models.bhvit import BHViT


@dataclass
class BinaryLayer:
    """One binary layer: ``bits`` (N, ceil(K/64)) uint64 rows over K (conv rows ordered (tap, channel)),
    ``alpha`` (N,) float32 and ``meta`` (kind, sizes, conv geometry)."""

    bits: np.ndarray
    alpha: np.ndarray
    meta: dict[str, Any]


@dataclass
class PackedParts:
    """Everything a packed model is made of: the config, the float tensors, the binary layers."""

    config: dict[str, Any]
    floats: dict[str, np.ndarray]
    binary: dict[str, BinaryLayer]


def _layer_meta(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, nn.Conv2d):
        return {
            "kind": "conv",
            "in": module.in_channels,
            "out": module.out_channels,
            "kernel": list(module.kernel_size),
            "stride": module.stride[0],
            "padding": module.padding[0],
            "dilation": module.dilation[0],
            "groups": module.groups,
        }
    return {"kind": "linear", "in": module.in_features, "out": module.out_features}


@torch.no_grad()
def binarize_layer(module: QuantLinear | QuantConv2d) -> tuple[BinaryLayer, int]:
    """Bits and α of one binary layer, and the number of exactly-zero quantized weights."""
    if module.weight_quantizer is None:
        raise ValueError(f"{type(module).__name__} has no weight quantizer: it is not a binary layer")
    wq = module.weight_quantizer(module.weight).detach().float()  # α_c·sign(Wc), dim 0 = output
    alpha = wq.abs().flatten(1).amax(1).numpy().astype(np.float32)
    zeros = int((wq == 0).sum())
    signs = wq.numpy()
    rows = conv_rows(signs) if signs.ndim == 4 else signs  # (N, K)
    return BinaryLayer(pack(rows < 0), alpha, _layer_meta(module)), zeros


def extract(model: BHViT) -> PackedParts:
    """The packed parts of an eval-mode BHViT (precision ``some_fp`` or ``binary``)."""
    if model.training:
        raise ValueError("pack an eval-mode model: call model.eval() first (BatchNorm folds running stats)")
    config = model.config.to_dict()
    if config.get("precision") == "fp":
        raise ValueError("a full-precision model has no binary layers to pack; use precision some_fp or binary")
    binary: dict[str, BinaryLayer] = {}
    zeros = 0
    for name, module in model.named_modules():
        if is_binary_layer(module):
            binary[name], z = binarize_layer(module)
            zeros += z
    if zeros:
        warnings.warn(f"{zeros} binary weights are exactly 0 (sign(0) = 0); the engine packs them as +1", stacklevel=2)
    skip = {f"{name}.weight" for name in binary}
    # 0-d parameters (the GSB quantizer's scalars) are stored with shape (1,)
    floats = {
        k: v.detach().float().reshape(v.shape or (1,)).contiguous().numpy().copy()
        for k, v in model.state_dict().items()
        if k not in skip and v.is_floating_point()
    }
    return PackedParts(config, floats, binary)
