"""Precision-aware profile: parameters by bit width, MACs by precision, OPs (SPEC §5), of a model or of a
packed file.

Rule (BNN literature): ``OPs = BOPs/64 + FLOPs``. BOPs are the multiply-accumulates of layers
whose two operands are both 1-bit (binary linears and convolutions, the binary ``q·kᵀ``, and
``Â·v`` counted once per binary slice of ``Â``: 3 for LSQ's four levels, 3 masks for GSB). FLOPs are
the multiply-accumulates of everything else with weights or matrix products (stem, fp
downsampling, classifier, fp layers). Element-wise work (norms, activations, softmax, pooling,
shifts) is not counted, as is customary.

:func:`profile_model` counts a torch model with one forward pass; :func:`profile_packed` counts a packed
file (``.bhvp``) from its program alone, op by op, by the same rule (numpy and the op table
:mod:`bhvit.runtime.ops`; no torch), so the two agree on a model and its packed file. Importing this module
imports no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .models.bhvit import BHViT, BinaryAttention

__all__ = ["Profile", "PackedProfile", "profile_model", "profile_packed", "OPS_RULE"]

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
    from torch import nn

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
    import torch
    from torch import nn

    from .models.bhvit import BinaryAttention
    from .quant import QuantConv2d, QuantLinear

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


# ---- packed files --------------------------------------------------------------------------------------
@dataclass
class PackedProfile:
    """Counts of one packed file's program for one image, op by op (:func:`profile_packed`).

    ``layers``: one row per op: ``index``, ``op``, ``out`` (the register it writes), ``shape`` (H, W, C of
    that register), ``bops``, ``flops``, ``binary_params`` (1-bit weights it holds) and ``float_values``
    (the float32 values of the tensors it names). Sizes in bytes: ``file_bytes`` = ``binary_bytes`` (uint64
    words of 1-bit weights, rows padded to 64) + ``float_bytes`` + ``header_bytes`` (the JSON header: program,
    config, preprocessing, labels).
    """

    path: str
    input_shape: tuple[int, int, int]
    num_classes: int
    preprocess: dict[str, Any]
    labels: bool
    file_bytes: int
    binary_bytes: int
    float_bytes: int
    bops: int = 0
    flops: int = 0
    binary_params: int = 0
    float_values: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ops(self) -> float:
        """``BOPs/64 + FLOPs``."""
        return self.bops / 64 + self.flops

    @property
    def header_bytes(self) -> int:
        return self.file_bytes - self.binary_bytes - self.float_bytes

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Per op kind, in order of first use: ``count``, ``bops``, ``flops``, ``binary_params``,
        ``float_values``."""
        kinds: dict[str, dict[str, int]] = {}
        for row in self.layers:
            k = kinds.setdefault(row["op"], dict.fromkeys(("count", *_SUMMED), 0))
            k["count"] += 1
            for key in _SUMMED:
                k[key] += row[key]
        return kinds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ops=self.ops, header_bytes=self.header_bytes, by_kind=self.by_kind(), rule=OPS_RULE)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, every_op: bool = False) -> str:
        """The summary, a table per op kind and (``every_op``) one line per op, with the OPs rule."""
        c, h, w = self.input_shape
        mib = 2**20
        prep = self.preprocess
        rows = [
            ("packed file", f"{self.path} ({self.file_bytes / mib:.2f} MiB)"),
            ("input", f"{c}×{h}×{w}, shorter side resized to {prep['resize']}, centre crop {h}×{w}"),
            ("normalise", f"mean {_numbers(prep['mean'])}, std {_numbers(prep['std'])}"),
            ("classes", f"{self.num_classes} ({'with' if self.labels else 'no'} labels)"),
            ("ops", f"{len(self.layers)}"),
            ("binary params", f"{self.binary_params:,} (1-bit: {self.binary_bytes / mib:.2f} MiB in 64-bit words)"),
            ("float values", f"{self.float_values:,} ({self.float_bytes / mib:.2f} MiB)"),
            ("header", f"{self.header_bytes / 1024:.1f} KiB (program, config, preprocessing, labels)"),
            ("BOPs", _count(self.bops)),
            ("FLOPs", _count(self.flops)),
            ("OPs", _count(self.ops)),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        kinds = [{"op": k, **v} for k, v in self.by_kind().items()]
        lines += ["", _text_table(kinds, ["op", "count", *_SUMMED])]
        if every_op:
            cells = [{**r, "shape": "×".join(map(str, r["shape"]))} for r in self.layers]
            lines += ["", _text_table(cells, ["index", "op", "out", "shape", *_SUMMED])]
        return "\n".join(lines + [f"rule: {OPS_RULE}"])


_SUMMED = ("bops", "flops", "binary_params", "float_values")


def _count(n: float) -> str:
    """``n`` in G or M to three decimals (e.g. ``2.579 G``, ``0.986 M``)."""
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.3f} M"


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _text_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """Rows as an aligned table (numbers right-aligned with thousands separators)."""
    cells = [[f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys] for r in rows]
    widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
    lines = ["  ".join(k.replace("_", " ").rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(c, widths)) for c in cells]
    return "\n".join(lines)


def _tensor_names(op: Mapping[str, Any]) -> Iterator[str]:
    """The tensor names an op refers to, its objects' included (by the op table's field kinds)."""
    from .runtime import ops

    def walk(given: Mapping[str, Any], fields: tuple[ops.Field, ...]) -> Iterator[str]:
        for f in fields:
            value = given.get(f.name)
            if value is None:
                continue
            if f.kind == ops.TENSOR:
                yield value
            elif f.kind == ops.OBJECT:
                yield from walk(value, f.variants.get(value.get("kind"), ()) if f.variants else f.fields)

    yield from walk(op, ops.OPS[op["op"]].fields)


def _op_counts(op: Mapping[str, Any], x: tuple[int, int, int], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """For one op reading a register of shape ``x`` = (H, W, C): the shapes of the registers it writes
    (``writes``), its BOPs, FLOPs and binary parameters (docs/packed-format.md §5, §6)."""
    h, w, c = x
    kind = op["op"]
    if kind == "patch_conv":
        cout, cin, k, _ = shapes[op["weight"]]
        out = (h // k, w // k, cout)
        return {"writes": {op["out"]: out}, "flops": out[0] * out[1] * cout * cin * k * k}
    if kind == "avg_pool":
        k = int(op["kernel"])
        return {"writes": {op["out"]: (h // k, w // k, c)}}
    if kind == "bconv":
        (kh, kw), s, p, d = op["kernel"], int(op["stride"]), int(op["padding"]), int(op["dilation"])
        oh, ow = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (w + 2 * p - d * (kw - 1) - 1) // s + 1
        cout, weights = int(op["out_channels"]), int(op["out_channels"]) * kh * kw * c // int(op["groups"])
        return {"writes": {op["out"]: (oh, ow, cout)}, "bops": oh * ow * weights, "binary_params": weights}
    if kind == "blinear":
        n, k = int(op["out_features"]), int(op["in_features"])
        pk = op.get("pack")
        writes = {pk["out"]: (h, w, n), pk["means"]: (h, w, n // int(pk["mean_r"]))} if pk else {op["out"]: (h, w, n)}
        return {"writes": writes, "bops": h * w * n * k, "binary_params": n * k}
    if kind == "window_attention":
        win = int(op["window"])
        windows = (h // win) * (w // win)
        tokens = win * win + windows  # per window: its pixels, then every window's global token
        qkv = 3 * windows * tokens * c * c
        per = windows * tokens * tokens * c  # q·kᵀ over all heads; Â·v likewise, once per binary slice of Â
        return {"writes": {op["out"]: x}, "bops": qkv + per + 3 * per, "binary_params": 3 * c * c}
    if kind == "mean_tokens":
        return {"writes": {op["out"]: (1, 1, c)}}
    if kind == "linear":
        n, k = shapes[op["weight"]]
        return {"writes": {op["out"]: (1, 1, n)}, "flops": n * k}
    return {"writes": {op["out"]: x}}  # affine, sign_pack, shift_add: element-wise, same shape


def profile_packed(path: str | os.PathLike) -> PackedProfile:
    """Counts of the packed file ``path`` (docs/packed-format.md) for one image, from its program and the
    shapes of its tensors: the file is validated whole by the native runtime when it is built (else read by
    the numpy reader, :func:`bhvit.runtime.reference.load`, which checks its version). A
    :class:`~bhvit.runtime.PackedFormatError` names what is wrong with a bad file."""
    from safetensors import safe_open

    from . import runtime
    from .runtime import reference

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if runtime.available():
        runtime.load(path).close()  # the runtime's checks of every field, size and register
    program, tensors, meta = reference.load(path)
    shapes = {name: tuple(int(d) for d in t.shape) for name, t in tensors.items()}
    with safe_open(str(path), framework="numpy") as f:
        labels = "labels" in (f.metadata() or {})
    c, h, w = (int(v) for v in program["input"])
    prof = PackedProfile(
        path=str(path),
        input_shape=(c, h, w),
        num_classes=int(program["num_classes"]),
        preprocess=json.loads(meta["preprocess"]),
        labels=labels,
        file_bytes=os.path.getsize(path),
        binary_bytes=sum(t.nbytes for t in tensors.values() if t.dtype.kind == "u"),
        float_bytes=sum(t.nbytes for t in tensors.values() if t.dtype.kind == "f"),
        float_values=sum(t.size for t in tensors.values() if t.dtype.kind == "f"),
    )
    registers: dict[str, tuple[int, ...]] = {"input": (h, w, c)}
    for index, op in enumerate(program["ops"]):
        counts = _op_counts(op, registers[op["in"]], shapes)
        registers.update(counts["writes"])
        out, shape = next(iter(counts["writes"].items()))
        floats = sum(tensors[n].size for n in set(_tensor_names(op)) if tensors[n].dtype.kind == "f")
        row = {"index": index, "op": op["op"], "out": out, "shape": shape, "float_values": floats}
        row.update({k: counts.get(k, 0) for k in ("bops", "flops", "binary_params")})
        prof.layers.append(row)
        prof.bops += row["bops"]
        prof.flops += row["flops"]
        prof.binary_params += row["binary_params"]
    return prof
