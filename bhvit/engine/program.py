"""The packer's second half: a BHViT's packed parts as a version-2 program (docs/packed-format.md §4–§6).

:func:`build_program` turns :class:`~bhvit.engine.packer.PackedParts` (the float model's tensors under their
state-dict names, and the binary layers' bits) into a typed list of operations over activation registers,
each checked against the op table :mod:`bhvit.runtime.ops`. It is the only code that knows BHViT's module
names; the runtime (``libbhvit_runtime``, :mod:`bhvit.runtime.reference`) knows only the operations.

Register names used here (any name would do): ``x`` the block stream, ``xn`` a normalised copy, ``xb`` /
``hb`` / ``ob`` packed signs, ``h`` / ``o`` / ``t`` / ``r`` / ``y`` float temporaries, ``pooled``, ``logits``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bhvit.rules import GSB_BASE, GSB_EPS, GSB_T2, GSB_U, TOKEN_NORM_EPS, pool_padding, pooled_side
from bhvit.runtime import ops
from bhvit.runtime.errors import PackedFormatError

FORMAT = "bhvit-packed"
FORMAT_VERSION = 2
BIT_CONVENTION = "uint64 little-endian words along K, element k at bit k%64 of word k//64, set bit = -1, padding 0"

Op = dict[str, Any]


@dataclass
class Program:
    """A version-2 packed model: the program (§4), its tensors (F32 / U64 arrays) and metadata strings."""

    program: dict[str, Any]
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str] = field(default_factory=dict)

    def file_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "bit_convention": BIT_CONVENTION,
            "program": json.dumps(self.program, separators=(",", ":")),
            **self.metadata,
        }


class _Builder:
    """Collects ops and tensors while walking the parts in forward order."""

    def __init__(self, parts: Any) -> None:
        self.f: dict[str, np.ndarray] = parts.floats
        self.binary = parts.binary
        self.config = parts.config
        self.eps = np.float32(self.config["norm_eps"])
        self.ops: list[Op] = []
        self.tensors: dict[str, np.ndarray] = {}

    # ---- tensors ------------------------------------------------------------------------------
    def t(self, name: str, value: np.ndarray | None = None) -> str:
        """Registers tensor ``name`` (a float of the model unless ``value`` is given); returns its name."""
        if value is None:
            if name not in self.f:
                raise PackedFormatError(f"the model has no tensor {name!r}, which the packed program needs")
            value = self.f[name]
        dtype = np.uint64 if value.dtype == np.uint64 else np.float32
        self.tensors[name] = np.ascontiguousarray(value, dtype=dtype)
        return name

    def fold(self, norm: str) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode BatchNorm ``norm`` as ``y = a·x + b``: ``a = w/√(var + eps)``, ``b = bias − mean·a`` (float32)."""
        if f"{norm}.running_mean" not in self.f:
            raise PackedFormatError(
                f"{norm} is a LayerNorm: the packed runtime folds BatchNorm only; train with norm='bn' to pack"
            )
        a = self.f[f"{norm}.weight"] / np.sqrt(self.f[f"{norm}.running_var"] + self.eps)
        return a.astype(np.float32), (self.f[f"{norm}.bias"] - self.f[f"{norm}.running_mean"] * a).astype(np.float32)

    def affine_fields(self, norm: str) -> dict[str, str]:
        a, b = self.fold(norm)
        return {"scale": self.t(f"{norm}.fold_scale", a), "bias": self.t(f"{norm}.fold_bias", b)}

    def rprelu(self, act: str) -> dict[str, str]:
        return {"slope": self.t(f"{act}.prelu.weight"), "b1": self.t(f"{act}.move1"), "b2": self.t(f"{act}.move2")}

    def layerscale(self, ls: str) -> dict[str, str] | None:
        if f"{ls}.alpha" not in self.f:
            return None
        return {"scale": self.t(f"{ls}.alpha"), "bias": self.t(f"{ls}.move")}

    def binary_fields(self, layer: str, norm: str | None) -> dict[str, Any]:
        """Weight bits and the folded transform ``scale·dot + bias``: ``scale = α·a``, ``bias = cb·a + b`` with the
        norm's fold (a, b) and the layer's own bias cb; without a norm ``scale = α``, ``bias = cb``."""
        lay = self.binary[layer]
        conv_bias = self.f.get(f"{layer}.bias")
        scale, bias = lay.alpha, conv_bias
        if norm is not None:
            a, b = self.fold(norm)
            scale = (lay.alpha * a).astype(np.float32)
            bias = b if conv_bias is None else (conv_bias * a + b).astype(np.float32)
        fields = {"weight": self.t(f"{layer}.weight_bits", lay.bits), "scale": self.t(f"{layer}.scale", scale)}
        if bias is not None:
            fields["bias"] = self.t(f"{layer}.fold_bias", bias)
        return fields

    # ---- ops ----------------------------------------------------------------------------------
    def op(self, kind: ops.OpKind, **fields: Any) -> None:
        op = {"op": kind.name, **{k: v for k, v in fields.items() if v is not None}}
        ops.check(op)
        self.ops.append(op)

    def sign_pack(self, src: str, dst: str, move: str | None) -> None:
        self.op(ops.SIGN_PACK, **{"in": src, "out": dst, "move": None if move is None else self.t(move)})

    def blinear(self, layer: str, norm: str, src: str, **fields: Any) -> None:
        meta = self.binary[layer].meta
        self.op(
            ops.BLINEAR,
            **{
                "in": src,
                "in_features": meta["in"],
                "out_features": meta["out"],
                **self.binary_fields(layer, norm),
                **fields,
            },
        )

    def bconv(self, layer: str, norm: str | None, src: str, dst: str, **fields: Any) -> None:
        m = self.binary[layer].meta
        self.op(
            ops.BCONV,
            **{
                "in": src,
                "out": dst,
                "in_channels": m["in"],
                "out_channels": m["out"],
                "kernel": list(m["kernel"]),
                "stride": m["stride"],
                "padding": m["padding"],
                "dilation": m["dilation"],
                "groups": m["groups"],
                **self.binary_fields(layer, norm),
                **fields,
            },
        )

    # ---- model parts --------------------------------------------------------------------------
    def stem(self) -> None:
        w = self.f["stem.proj.weight"]  # (C, in, k, k), kernel = stride
        self.op(
            ops.PATCH_CONV,
            **{
                "in": "input",
                "out": "x",
                "kernel": int(w.shape[-1]),
                "weight": self.t("stem.proj.weight"),
                "bias": self.t("stem.proj.bias") if "stem.proj.bias" in self.f else None,
            },
        )
        pos = self.f["stem.pos_embed"][0].transpose(1, 2, 0)  # (1, C, H, W) -> (H, W, C)
        self.op(
            ops.AFFINE,
            **{
                "in": "x",
                "out": "x",
                **self.affine_fields("stem.norm"),
                "act": "gelu",
                "add": self.t("stem.pos_embed.hwc", pos),
            },
        )

    def downsample(self, pre: str, hw: tuple[int, int]) -> None:
        """fp: ``norm(Conv2x2(norm_in(x))) + pos``;
        binary: ``RPReLU(norm(BConv2x2(t + move)) + tile(avg2(t))) + pos``."""
        self.op(ops.AFFINE, **{"in": "x", "out": "t", **self.affine_fields(f"{pre}.norm_in")})
        pos_name = f"{pre}.pos_embed"
        pos = self.f[pos_name].reshape(hw[0], hw[1], -1)  # (1, H·W, C2) -> (H, W, C2)
        if f"{pre}.conv" not in self.binary:
            self.op(
                ops.PATCH_CONV,
                **{
                    "in": "t",
                    "out": "y",
                    "kernel": int(self.f[f"{pre}.conv.weight"].shape[-1]),
                    "weight": self.t(f"{pre}.conv.weight"),
                    "bias": self.t(f"{pre}.conv.bias") if f"{pre}.conv.bias" in self.f else None,
                },
            )
            self.op(
                ops.AFFINE,
                **{
                    "in": "y",
                    "out": "x",
                    **self.affine_fields(f"{pre}.norm"),
                    "act": "none",
                    "add": self.t(f"{pos_name}.hwc", pos),
                },
            )
            return
        self.op(ops.AVG_POOL, **{"in": "t", "out": "r", "kernel": 2})
        self.sign_pack("t", "tb", f"{pre}.move")
        self.bconv(
            f"{pre}.conv", f"{pre}.norm", "tb", "y", residual="r", rprelu=self.rprelu(f"{pre}.act"), accumulate=False
        )
        self.op(ops.AFFINE, **{"in": "y", "out": "x", "act": "none", "add": self.t(f"{pos_name}.hwc", pos)})

    def conv_mixer(self, pre: str) -> None:
        """``x += norm(Σ_d RPReLU_d(BConv_d(xn + move)))``, the norm ``a·s + b`` applied per branch (``b`` once)."""
        mix = f"{pre}.mixer"
        self.op(ops.AFFINE, **{"in": "x", "out": "xn", **self.affine_fields(f"{pre}.norm1"), "act": "none"})
        self.sign_pack("xn", "xb", f"{mix}.move")
        a, b = self.fold(f"{mix}.norm")
        scale = self.t(f"{mix}.norm.fold_scale", a)
        i = 0
        while f"{mix}.convs.{i}" in self.binary:
            shift = self.t(f"{mix}.norm.fold_bias" if i == 0 else f"{mix}.norm.zero", b if i == 0 else np.zeros_like(b))
            self.bconv(
                f"{mix}.convs.{i}",
                None,
                "xb",
                "x",
                rprelu=self.rprelu(f"{mix}.acts.{i}"),
                post={"scale": scale, "bias": shift},
                accumulate=True,
            )
            i += 1

    def mlp_and_shift(self, pre: str) -> None:
        """``x += LS(MLP(norm2(x))) + Shift(norm2(x))`` with fc1 writing fc2's packed input and pooled residual."""
        mlp = f"{pre}.mlp"
        self.op(ops.AFFINE, **{"in": "x", "out": "xn", **self.affine_fields(f"{pre}.norm2"), "act": "none"})
        self.sign_pack("xn", "xb", f"{mlp}.move1")
        c, n1 = self.binary[f"{mlp}.fc1"].meta["in"], self.binary[f"{mlp}.fc1"].meta["out"]
        self.blinear(
            f"{mlp}.fc1",
            f"{mlp}.norm1",
            "xb",
            residual="xn",
            rprelu=self.rprelu(f"{mlp}.act1"),
            accumulate=False,
            pack={"out": "hb", "move": self.t(f"{mlp}.move2"), "mean_r": n1 // c, "means": "h"},
        )
        self.blinear(
            f"{mlp}.fc2",
            f"{mlp}.norm2",
            "hb",
            out="x",
            residual="h",
            rprelu=self.rprelu(f"{mlp}.act2"),
            post=self.layerscale(f"{mlp}.ls"),
            accumulate=True,
        )
        kernels = [k for k in (3, 5) if f"{pre}.shift.ls_h{k}.alpha" in self.f]
        if kernels:
            ls = [
                np.stack([self.f[f"{pre}.shift.ls_{a}{k}.alpha"], self.f[f"{pre}.shift.ls_{a}{k}.move"]])
                for k in kernels
                for a in "hwc"
            ]
            self.op(
                ops.SHIFT_ADD,
                **{"in": "xn", "out": "x", "kernels": kernels, "scales": self.t(f"{pre}.shift.scales", np.stack(ls))},
            )

    def attention(self, pre: str, stage: int, side: tuple[int, int]) -> None:
        """MSMHA (one ``window_attention`` op) then ``x += LS(RPReLU(norm_o(BLinear_o(o + mo)) + o))``."""
        attn = f"{pre}.attn"
        cfg = self.config
        window = int(cfg["window_size"])
        pad = pool_padding(window, bool(cfg.get("aligned_pool")))
        if any(pooled_side(s, window, pad) != s // window for s in side):
            raise PackedFormatError(
                f"{attn}: the global-token pooling of a {side[0]}x{side[1]} map with window "
                f"{window} and padding {pad} does not give one token per window"
            )
        dim = self.binary[f"{attn}.q"].meta["in"]
        heads = self.heads(attn, stage)
        branches = {}
        for n in "qkv":
            branches[n] = {
                "move": self.t(f"{attn}.move_{n}"),
                **self.binary_fields(f"{attn}.{n}", f"{attn}.norm_{n}"),
                "rprelu": self.rprelu(f"{attn}.act_{n}"),
                "move2": self.t(f"{attn}.move_{n}2"),
            }
        self.op(ops.AFFINE, **{"in": "x", "out": "xn", **self.affine_fields(f"{pre}.norm1"), "act": "none"})
        self.op(
            ops.WINDOW_ATTENTION,
            **{
                "in": "xn",
                "out": "o",
                "window": window,
                "heads": heads,
                "pool_padding": pad,
                "pool_alpha": self.t(f"{attn}.pool.alpha"),
                "token_norm": {
                    "weight": self.t(f"{attn}.token_norm.weight"),
                    "bias": self.t(f"{attn}.token_norm.bias"),
                    "eps": TOKEN_NORM_EPS,
                },
                **branches,
                "score_divisor": float(np.float32(math.sqrt(dim // heads))),
                "quant": self.attn_quant(attn, heads),
                "ctx": {**self.affine_fields(f"{attn}.norm_ctx"), "rprelu": self.rprelu(f"{attn}.act_ctx")},
                "mix": self.t(f"{attn}.mix"),
            },
        )
        self.sign_pack("o", "ob", f"{attn}.move_o")
        self.blinear(
            f"{attn}.proj",
            f"{attn}.norm_o",
            "ob",
            out="x",
            residual="o",
            rprelu=self.rprelu(f"{attn}.act_o"),
            post=self.layerscale(f"{attn}.ls"),
            accumulate=True,
        )

    def heads(self, attn: str, stage: int) -> int:
        if self.config["attn_quant"] == "lsq":
            return int(self.f[f"{attn}.attn_quant.alpha"].size)
        return int(self.config["num_heads"][stage - 2])

    def attn_quant(self, attn: str, heads: int) -> dict[str, Any]:
        q = f"{attn}.attn_quant"
        if self.config["attn_quant"] == "lsq":
            return {"kind": "lsq", "step": self.t(f"{q}.alpha"), "zero": self.t(f"{q}.zero_point"), "grad_scale": True}
        alpha, a2, a3 = (
            np.maximum(self.f[f"{q}.{n}"].reshape(1), np.float32(GSB_EPS)) for n in ("alpha", "alpha2", "alpha3")
        )
        weights = np.concatenate([alpha, alpha * (a2 - np.float32(1)), alpha * (a3 - a2)]).astype(np.float32)
        return {
            "kind": "gsb",
            "alpha": self.t(f"{q}.alpha_clamped", alpha.astype(np.float32)),
            "weights": self.t(f"{q}.weights", weights),
            "thresholds": [GSB_BASE, GSB_U, GSB_T2],
        }

    def head(self) -> str:
        self.op(ops.AFFINE, **{"in": "x", "out": "x", **self.affine_fields("norm"), "act": "none"})
        self.op(ops.MEAN_TOKENS, **{"in": "x", "out": "pooled"})
        if "head.weight" not in self.f:
            return "pooled"
        self.op(
            ops.LINEAR,
            **{
                "in": "pooled",
                "out": "logits",
                "weight": self.t("head.weight"),
                "bias": self.t("head.bias") if "head.bias" in self.f else None,
            },
        )
        return "logits"


def build_program(parts: Any, preprocess: dict[str, Any] | None = None, labels: list[str] | None = None) -> Program:
    """The version-2 program of a some-fp or binary BHViT with BatchNorm, from its packed parts.

    ``preprocess`` (``{mean, std, resize}``, completed to one value per channel) and ``labels`` go to the
    metadata; the config is stored for information. Raises :class:`PackedFormatError` for a LayerNorm model.
    """
    cfg = parts.config
    b = _Builder(parts)
    h, w = (int(s) for s in cfg["img_size"])
    b.stem()
    side = (h // 4, w // 4)
    for i, depth in enumerate(cfg["depths"]):
        if i:
            side = (side[0] // 2, side[1] // 2)
            b.downsample(f"stages.{i}.downsample", side)
        for j in range(depth):
            pre = f"stages.{i}.blocks.{j}"
            if i < 2:
                b.conv_mixer(pre)
            else:
                b.attention(pre, i, side)
            b.mlp_and_shift(pre)
    output = b.head()
    width = int(cfg["num_classes"]) or int(cfg["widths"][-1])
    program = {"input": [int(cfg["in_chans"]), h, w], "output": output, "num_classes": width, "ops": b.ops}
    meta = {"config": json.dumps(cfg, sort_keys=True), "preprocess": json.dumps(full_preprocess(preprocess, cfg))}
    if labels is not None:
        meta["labels"] = json.dumps(list(labels))
    return Program(program, b.tensors, meta)


def full_preprocess(pre: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
    """``{mean, std, resize}`` with one mean and std per channel; ImageNet's defaults where missing."""
    from bhvit.rules import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD  # one source for the defaults

    c, side = int(config["in_chans"]), min(int(s) for s in config["img_size"])
    pre = dict(pre or {})

    def per_channel(value: Any, default: tuple[float, ...]) -> list[float]:
        values = value if isinstance(value, (list, tuple)) else [value] if value is not None else None
        if values is None:
            values = list(default) if c == len(default) else [sum(default) / len(default)]
        return [float(v) for v in (values * c if len(values) == 1 else values)]

    return {
        "mean": per_channel(pre.get("mean"), IMAGENET_MEAN),
        "std": per_channel(pre.get("std"), IMAGENET_STD),
        "resize": int(pre.get("resize") or math.floor(side / CROP_PCT)),
    }


def check_preprocess(pre: Any, in_chans: int) -> None:
    """``preprocess`` as given to :func:`bhvit.engine.save_packed`: an object with optional ``mean``, ``std`` (a
    number, or a list of 1 or in_chans finite numbers; std > 0) and ``resize`` (an integer in the range
    ``bhvit predict`` accepts), nothing else; raises :class:`PackedFormatError` naming the field."""
    from bhvit.predict import MAX_SIDE  # predict's own limit: a resize it would refuse is refused here

    if not isinstance(pre, dict):
        raise PackedFormatError(f"preprocess: expected a JSON object, got {type(pre).__name__}")
    unknown = sorted(set(pre) - {"mean", "std", "resize"})
    if unknown:
        raise PackedFormatError(f"preprocess has unknown keys {unknown} (known: mean, std, resize)")
    for key in ("mean", "std"):
        if key not in pre:
            continue
        values = pre[key] if isinstance(pre[key], list) else [pre[key]]
        ok = len(values) in (1, in_chans) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not ok:
            raise PackedFormatError(
                f"preprocess.{key} = {pre[key]!r}: expected 1 or in_chans = {in_chans} finite numbers"
            )
        if key == "std" and min(values) <= 0:
            raise PackedFormatError(f"preprocess.std = {pre[key]!r}: every value must be > 0")
    resize = pre.get("resize", 1)
    if isinstance(resize, bool) or not isinstance(resize, int) or not 1 <= resize <= 2 * MAX_SIDE:
        raise PackedFormatError(f"preprocess.resize = {resize!r}: expected an integer in 1..{2 * MAX_SIDE}")


def check_labels(labels: Any, num_classes: int) -> None:
    """``labels``: a list of num_classes strings; raises :class:`PackedFormatError`."""
    if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
        raise PackedFormatError("labels: expected a JSON list of strings")
    if len(labels) != num_classes:
        raise PackedFormatError(f"labels: {len(labels)} names for num_classes = {num_classes}")


def write_program(program: Program, path: str | Path) -> Path:
    """Writes a version-2 file atomically."""
    from safetensors.numpy import save_file

    from bhvit.checkpoint import atomic_write

    return atomic_write(Path(path), lambda tmp: save_file(program.tensors, str(tmp), metadata=program.file_metadata()))


def write_program_file(
    model: Any, path: str | Path, *, preprocess: dict[str, Any] | None = None, labels: list[str] | None = None
) -> Path:
    """Packs an eval-mode some-fp or binary BHViT (BatchNorm) and writes its version-2 file."""
    from bhvit.engine.packer import extract

    return write_program(build_program(extract(model), preprocess or model_preprocess(model), labels), path)


def model_preprocess(model: Any) -> dict[str, Any] | None:
    """The normalisation a float model declares in its ``pretrained_cfg`` (``mean``, ``std``), or None."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {"mean": list(cfg["mean"]), "std": list(cfg["std"])} if "mean" in cfg and "std" in cfg else None
