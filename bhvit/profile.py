"""Precision-aware profile: parameters by bit width, MACs by precision, OPs (SPEC §5).

Rule (BNN literature): ``OPs = BOPs/64 + FLOPs``. BOPs are the multiply-accumulates of layers
whose two operands are both 1-bit (binary linears and convolutions, the binary ``q·kᵀ``, and
``Â·v`` counted once per binary slice of ``Â``: 3 for LSQ's four levels, 3 masks for GSB). FLOPs are
the multiply-accumulates of everything else with weights or matrix products (stem, fp
downsampling, classifier, fp layers). Element-wise work (norms, activations, softmax, pooling,
shifts) is not counted, as is customary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .models.bhvit import BHViT, BinaryAttention
from .quant import QuantConv2d, QuantLinear

__all__ = ["Profile", "profile_model", "OPS_RULE"]

OPS_RULE = (
    "OPs = BOPs/64 + FLOPs; BOPs: MACs with both operands 1-bit (binary linear/conv, q·kᵀ, "
    "Â·v per binary slice); FLOPs: other MACs; element-wise ops not counted"
)


@dataclass
class Profile:
    """Counts for one forward pass of one image."""

    arch: str
    precision: str
    img_size: tuple[int, int]
    params_total: int = 0
    params_binary: int = 0
    params_fp: int = 0
    bops: int = 0
    flops: int = 0
    layers: list[dict] = field(default_factory=list)

    @property
    def ops(self) -> float:
        """``BOPs/64 + FLOPs``."""
        return self.bops / 64 + self.flops

    @property
    def size_fp32_bytes(self) -> int:
        """Every parameter stored as float32."""
        return 4 * self.params_total

    @property
    def size_1bit_bytes(self) -> int:
        """Binary weights at 1 bit (packed per output row to whole bytes), the rest float32."""
        binary_bytes = sum(row["packed_bytes"] for row in self.layers if row.get("packed_bytes"))
        return binary_bytes + 4 * self.params_fp

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            ops=self.ops, size_fp32_bytes=self.size_fp32_bytes, size_1bit_bytes=self.size_1bit_bytes, rule=OPS_RULE
        )
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A human-readable summary table with the OPs rule."""
        rows = [
            ("architecture", f"{self.arch} ({self.precision}, {self.img_size[0]}×{self.img_size[1]})"),
            ("parameters", f"{self.params_total:,}"),
            ("  binary (1-bit)", f"{self.params_binary:,}"),
            ("  full precision", f"{self.params_fp:,}"),
            ("BOPs", f"{self.bops / 1e9:.3f} G"),
            ("FLOPs", f"{self.flops / 1e9:.3f} G"),
            ("OPs", f"{self.ops / 1e9:.3f} G"),
            ("size, fp32", f"{self.size_fp32_bytes / 2**20:.2f} MiB"),
            ("size, 1-bit weights", f"{self.size_1bit_bytes / 2**20:.2f} MiB"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        return "\n".join(lines + [f"rule: {OPS_RULE}"])


def _is_binary(layer: nn.Module) -> bool:
    return getattr(layer, "weight_quantizer", None) is not None and getattr(layer, "input_quantizer", None) is not None


def _layer_macs(layer: nn.Module, out: torch.Tensor) -> int:
    """MACs of a linear or convolution producing ``out``."""
    if isinstance(layer, nn.Linear):
        return out.numel() * layer.in_features
    kh, kw = layer.kernel_size
    return out.numel() * (layer.in_channels // layer.groups) * kh * kw


def _attention_macs(attn: BinaryAttention, tokens: int, rows: int) -> tuple[int, int]:
    """``(BOPs, FLOPs)`` of ``q·kᵀ`` and ``Â·v`` for ``rows`` windows of ``tokens`` tokens."""
    per = rows * attn.num_heads * tokens * tokens * attn.head_dim
    if not attn.binary:
        return 0, 2 * per
    slices = 3  # LSQ: clamp(round(·), 0, 3) = sum of three binary matrices; GSB: T0, T1, T2
    return per + slices * per, 0


def profile_model(model: BHViT, arch: str = "") -> Profile:
    """Count parameters and MACs of ``model`` with one forward pass on a zero image."""
    cfg = model.config
    prof = Profile(arch=arch or "bhvit", precision=cfg.precision, img_size=cfg.img_size)
    binary_weights = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quantizer is not None
    }
    for p in model.parameters():
        prof.params_total += p.numel()
        if id(p) in binary_weights:
            prof.params_binary += p.numel()
    prof.params_fp = prof.params_total - prof.params_binary

    def on_layer(name: str):
        def hook(layer: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            macs = _layer_macs(layer, out)
            binary = _is_binary(layer)
            row = {"name": name, "type": type(layer).__name__, "macs": macs, "binary": binary}
            if getattr(layer, "weight_quantizer", None) is not None:
                rows_out = layer.weight.shape[0]
                row["packed_bytes"] = rows_out * ((layer.weight[0].numel() + 7) // 8)
            prof.layers.append(row)
            if binary:
                prof.bops += macs
            else:
                prof.flops += macs

        return hook

    def on_attention(name: str):
        def hook(attn: BinaryAttention, inp: tuple, _out: torch.Tensor) -> None:
            b, h, w, _ = inp[0].shape  # (B, H, W, C): B·nW windows of w² window + nW global tokens
            n_win = (h // attn.window) * (w // attn.window)
            bops, flops = _attention_macs(attn, attn.window**2 + n_win, b * n_win)
            prof.layers.append(
                {"name": name + ".matmuls", "type": "attention", "macs": bops + flops, "binary": attn.binary}
            )
            prof.bops += bops
            prof.flops += flops

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(on_layer(name)))
        elif isinstance(module, BinaryAttention):
            handles.append(module.register_forward_hook(on_attention(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, cfg.in_chans, *cfg.img_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return prof
