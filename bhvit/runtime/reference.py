"""A numpy interpreter of the version-2 packed program (docs/packed-format.md §3–§6), op by op: the one Python
description of the format's maths (the float model in bhvit/ and the native runtime are the other two).

The executable form of the specification, for tests and for reading: slow, plain numpy, float32, no bit tricks
(binary operands are unpacked to ±1 floats; their integer dot products are exact in float32 up to 2²⁴). Where
the spec fixes the float operations and their order (the output transform of the binary layers, sign packing,
``pack``'s means, ``avg_pool``, ``shift_add``, the LSQ levels) this interpreter performs the same ones, so the
native runtime (``libbhvit_runtime``) must agree with it bit for bit; elsewhere (GEMM and reduction orders,
``erf``, ``exp``) to float rounding. It dispatches by the op table :mod:`bhvit.runtime.ops`.

    logits = reference.run("model.bhvp", images)                  # (B, C, H, W) float32 -> (B, classes)
    logits, trace = reference.run("model.bhvp", images, trace=True)  # trace: op index -> its output(s)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bhvit.runtime import ops
from bhvit.runtime.errors import PackedFormatError, version_1_refusal

F32 = np.float32
Op = dict[str, Any]
Regs = dict[str, np.ndarray]
Tensors = dict[str, np.ndarray]


def load(path: str | os.PathLike) -> tuple[dict[str, Any], Tensors, dict[str, str]]:
    """(program, tensors, metadata) of a version-2 file; :class:`PackedFormatError` for a file that is not
    one (the safetensors reader refuses overlapping or out-of-range tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except SafetensorError as exc:
        raise PackedFormatError(f"{path}: not a packed model file ({exc})") from None
    version = meta.get("format_version")
    if version == "1":
        raise PackedFormatError(version_1_refusal(path))
    if version != "2":
        raise PackedFormatError(f"{path}: not a version-2 packed file (format_version {version!r})")
    try:
        return json.loads(meta["program"]), tensors, meta
    except (KeyError, ValueError) as exc:
        raise PackedFormatError(f"{path}: metadata 'program' is missing or not JSON ({exc})") from None


# ---- bits (§3): uint64 words along K, element k at bit k % 64 of word k // 64, set bit = −1, padding 0 ----
def pack(negative: np.ndarray) -> np.ndarray:
    """(..., K) bool (True: −1) -> (..., ceil(K/64)) uint64 words, padding bits 0."""
    k = negative.shape[-1]
    padded = np.zeros((*negative.shape[:-1], -(-k // 64) * 64), dtype=bool)
    padded[..., :k] = negative
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def unpack(bits: np.ndarray, k: int) -> np.ndarray:
    """(..., ceil(k/64)) uint64 rows -> (..., k) ±1 float32 (set bit = −1)."""
    b = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)
    flat = np.unpackbits(b.reshape(*bits.shape[:-1], -1), axis=-1, bitorder="little")[..., :k]
    return (1.0 - 2.0 * flat).astype(F32)


def signs(x: np.ndarray) -> np.ndarray:
    """The ±1 values a sign packing of x stores: −1 where x < 0; +1 for 0, −0 and NaN (§8)."""
    return np.where(x < 0, F32(-1), F32(1))


def conv_rows(weight: np.ndarray) -> np.ndarray:
    """A conv weight (Cout, Cin/groups, kh, kw) as the rows a ``bconv`` weight packs (§3): (Cout, kh·kw·Cin/groups),
    element k = tap ``k div (Cin/groups)`` (``tap = ky·kw + kx``), channel ``k mod (Cin/groups)``."""
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1))


# ---- the ops' maths --------------------------------------------------------------------------------------
def rprelu(z: np.ndarray, f: dict[str, str], t: Tensors) -> np.ndarray:
    """``(z − b1 > 0 ? z − b1 : slope·(z − b1)) + b2`` per channel (§4)."""
    y = z - t[f["b1"]]
    return (np.where(y > 0, y, y * t[f["slope"]]) + t[f["b2"]]).astype(F32)


def transform(dot: np.ndarray, op: Op, t: Tensors, regs: Regs) -> np.ndarray:
    """The binary layers' output transform (§4): scale·dot + bias, + residual (tiled), RPReLU, post."""
    z = dot * t[op["scale"]]
    if op.get("bias"):
        z = z + t[op["bias"]]
    if op.get("residual"):
        res = regs[op["residual"]]
        z = z + np.concatenate([res] * (z.shape[-1] // res.shape[-1]), axis=-1)
    if op.get("rprelu"):
        z = rprelu(z, op["rprelu"], t)
    if op.get("post"):
        z = z * t[op["post"]["scale"]] + t[op["post"]["bias"]]
    return z.astype(F32)


def patch_conv(op: Op, regs: Regs, t: Tensors) -> None:
    """``y[oh,ow,o] = bias[o] + Σ_{c,ky,kx} weight[o,c,ky,kx]·x[c, oh·k+ky, ow·k+kx]``; ``input`` is NCHW."""
    x, w, k = regs[op["in"]], t[op["weight"]], int(op["kernel"])  # weight (Cout, C, k, k)
    x = x.transpose(0, 2, 3, 1) if op["in"] == "input" else x  # -> (B, H, W, C)
    b, h, wd, c = x.shape
    oh, ow = h // k, wd // k
    patches = x[:, : oh * k, : ow * k].reshape(b, oh, k, ow, k, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, oh, ow, -1)
    y = patches @ w.reshape(w.shape[0], -1).T
    regs[op["out"]] = (y + t[op["bias"]] if op.get("bias") else y).astype(F32)


def gelu(x: np.ndarray) -> np.ndarray:
    """``x·(1 + erf(x/√2))/2``."""
    return (x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))) / 2.0).astype(F32)


def bconv(x: np.ndarray, op: Op, t: Tensors) -> np.ndarray:
    """Grouped binary conv of ±1 inputs (B, H, W, Cin): exact integer dots (B, OH, OW, Cout); taps in the zero
    padding add 0; weight rows as :func:`conv_rows` orders them."""
    cin, cout, g = int(op["in_channels"]), int(op["out_channels"]), int(op["groups"])
    (kh, kw), s, p, d = op["kernel"], int(op["stride"]), int(op["padding"]), int(op["dilation"])
    cg = cin // g
    w = unpack(t[op["weight"]], kh * kw * cg).reshape(cout, kh * kw, cg)
    b, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (wd + 2 * p - d * (kw - 1) - 1) // s + 1
    out = np.zeros((b, oh, ow, cout), F32)
    per = cout // g
    for ky in range(kh):
        for kx in range(kw):
            # the input under tap (ky, kx) of every output pixel: (B, OH, OW, C)
            tap = xp[:, ky * d : ky * d + s * (oh - 1) + 1 : s, kx * d : kx * d + s * (ow - 1) + 1 : s]
            for gi in range(g):
                wt = w[gi * per : (gi + 1) * per, ky * kw + kx]  # (per, cg)
                out[..., gi * per : (gi + 1) * per] += tap[..., gi * cg : (gi + 1) * cg] @ wt.T
    return out


def shift_add(op: Op, regs: Regs, t: Tensors) -> None:
    """``out += LS(S_h,k(x)); out += LS(S_w,k(x)); out += LS(S_c,k(x))`` per kernel k, in this order (§5)."""
    out, x, scales = regs[op["out"]], regs[op["in"]], t[op["scales"]]
    i = 0
    for k in op["kernels"]:
        for axis in (1, 2):
            s = x
            for j in range(1, k // 2 + 1):
                s = s + np.roll(x, j, axis=axis) + np.roll(x, -j, axis=axis)
            out = out + ((s / F32(k)) * scales[i, 0] + scales[i, 1])
            i += 1
        q, sh = x.shape[-1] // 4, k // 2
        parts = [
            np.roll(x[..., :q], sh, 1),
            np.roll(x[..., q : 2 * q], -sh, 1),
            np.roll(x[..., 2 * q : 3 * q], sh, 2),
            np.roll(x[..., 3 * q :], -sh, 2),
        ]
        out = out + (np.concatenate(parts, axis=-1) * scales[i, 0] + scales[i, 1])
        i += 1
    regs[op["out"]] = out.astype(F32)


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


def attn_masks(a: np.ndarray, quant: dict[str, Any], t: Tensors, numel: int) -> np.ndarray:
    """Â = Σ_r w_r T_r for A (..., heads, L, L) (§6): LSQ levels ``[l ≥ r]`` with weight a_j, or GSB's thresholds."""
    heads = a.shape[-3]
    if quant["kind"] == "lsq":
        step, zero = t[quant["step"]].astype(F32), t[quant["zero"]].astype(F32)
        if quant.get("grad_scale"):
            g = F32(heads / math.sqrt(3 * numel))
            step, zero = step - step * g + step * g, zero - zero * g + zero * g
        st, zt = step[:, None, None], zero[:, None, None]
        levels = np.clip(np.round(F32(3) * a / st + zt), 0, 3)
        return ((levels >= 1).astype(F32) + (levels >= 2) + (levels >= 3)) * st
    alpha, w = t[quant["alpha"]].astype(F32)[0], t[quant["weights"]].astype(F32)
    th = [F32(v) for v in quant["thresholds"]]
    q = a / alpha
    rowmax = q.max(axis=-1, keepdims=True)
    return (w[0] * (q > th[0]) + w[1] * (q > th[1] * rowmax) + w[2] * (q > th[2] * rowmax)).astype(F32)


def window_attention(op: Op, regs: Regs, t: Tensors) -> None:
    """§6, steps 1–6."""
    x = regs[op["in"]]
    b, h, wd, c = x.shape
    w, heads, p = int(op["window"]), int(op["heads"]), int(op["pool_padding"])
    nh, nw = h // w, wd // w
    nwin, d = nh * nw, c // heads
    # 1. global tokens
    xp_max = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-np.inf)
    xp_avg = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    blocks = lambda z: z[:, : nh * w, : nw * w].reshape(b, nh, w, nw, w, c)  # noqa: E731
    mx = blocks(xp_max).max(axis=(2, 4)).reshape(b, nwin, c)
    av = (blocks(xp_avg).sum(axis=(2, 4)) / F32(w * w)).reshape(b, nwin, c)
    alpha = t[op["pool_alpha"]]
    glob = alpha * mx + (F32(1) - alpha) * av  # (B, nW, C)
    # 2. window tokens + global tokens, LayerNorm
    win = x.reshape(b, nh, w, nw, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, nwin, w * w, c)
    tok = np.concatenate([win, np.broadcast_to(glob[:, None], (b, nwin, nwin, c))], axis=2)  # (B, nW, L, C)
    tn = op["token_norm"]
    mean = tok.mean(-1, keepdims=True)
    var = ((tok - mean) ** 2).mean(-1, keepdims=True)
    hs = ((tok - mean) / np.sqrt(var + F32(tn["eps"])) * t[tn["weight"]] + t[tn["bias"]]).astype(F32)
    # 3. q, k, v
    mixed, sgn = {}, {}
    for n in "qkv":
        br = op[n]
        dot = signs(hs + t[br["move"]]) @ unpack(t[br["weight"]], c).T
        mixed[n] = transform(dot, {**br, "residual": "hs"}, t, {"hs": hs})
        sgn[n] = signs(mixed[n] + t[br["move2"]])
    length = w * w + nwin
    split = lambda z: z.reshape(b, nwin, length, heads, d).transpose(0, 1, 3, 2, 4)  # noqa: E731
    q, k, v = split(sgn["q"]), split(sgn["k"]), split(sgn["v"])  # (B, nW, heads, L, d)
    a = softmax((q @ k.swapaxes(-1, -2)) / F32(op["score_divisor"]))
    ctx = attn_masks(a, op["quant"], t, b * nwin * heads * length * length) @ v
    ctx = ctx.transpose(0, 1, 3, 2, 4).reshape(b, nwin, length, c)
    cf = op["ctx"]
    y = rprelu(ctx * t[cf["scale"]] + t[cf["bias"]] + mixed["q"] + mixed["k"] + mixed["v"], cf["rprelu"], t)
    # 6. merge
    local = y[:, :, : w * w].reshape(b, nh, nw, w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
    g = y[:, :, w * w :].mean(axis=1).reshape(b, nh, 1, nw, 1, c)
    g = np.broadcast_to(g, (b, nh, w, nw, w, c)).reshape(b, h, wd, c)
    mix = t[op["mix"]]
    regs[op["out"]] = (local * mix + g * (F32(1) - mix)).astype(F32)


def affine(op: Op, regs: Regs, t: Tensors) -> None:
    """``y = act(x·scale + bias) + add``."""
    x = regs[op["in"]]
    y = x * t[op["scale"]] if op.get("scale") else x
    y = y + t[op["bias"]] if op.get("bias") else y
    y = gelu(y) if op.get("act") == "gelu" else y
    regs[op["out"]] = (y + t[op["add"]] if op.get("add") else y).astype(F32)


def sign_pack(op: Op, regs: Regs, t: Tensors) -> None:
    x = regs[op["in"]]
    regs[op["out"]] = signs(x + t[op["move"]] if op.get("move") else x)


def avg_pool(op: Op, regs: Regs, t: Tensors) -> None:
    """The k×k block summed in row-major order, divided by k²."""
    x, k = regs[op["in"]], int(op["kernel"])
    b, h, w, c = x.shape
    blocks = x[:, : h // k * k, : w // k * k].reshape(b, h // k, k, w // k, k, c)
    s = blocks[:, :, 0, :, 0]
    for i in range(1, k * k):
        s = s + blocks[:, :, i // k, :, i % k]
    regs[op["out"]] = (s / F32(k * k)).astype(F32)


def binary_layer(op: Op, regs: Regs, t: Tensors) -> None:
    """``bconv`` / ``blinear``: exact ±1 dots, the output transform, then ``out`` (or ``+= out``), or with
    ``pack`` the bits of ``z + pack.move`` and the group means of z (summed left to right, divided by r)."""
    x = regs[op["in"]]
    dot = bconv(x, op, t) if op["op"] == ops.BCONV.name else x @ unpack(t[op["weight"]], int(op["in_features"])).T
    z = transform(dot, {**op, "post": None if op.get("pack") else op.get("post")}, t, regs)
    pk = op.get("pack")
    if pk:
        regs[pk["out"]] = signs(z + t[pk["move"]] if pk.get("move") else z)
        r = int(pk["mean_r"])
        s = z[..., 0::r]
        for i in range(1, r):
            s = s + z[..., i::r]
        regs[pk["means"]] = (s / F32(r)).astype(F32)
    else:
        regs[op["out"]] = regs[op["out"]] + z if op.get("accumulate") else z


def mean_tokens(op: Op, regs: Regs, t: Tensors) -> None:
    regs[op["out"]] = regs[op["in"]].mean(axis=(1, 2), keepdims=True).astype(F32)


def linear(op: Op, regs: Regs, t: Tensors) -> None:
    y = regs[op["in"]] @ t[op["weight"]].T
    regs[op["out"]] = (y + t[op["bias"]] if op.get("bias") else y).astype(F32)


# op kind (bhvit.runtime.ops) -> its step; tests check that it covers ops.OPS
STEPS: dict[str, Callable[[Op, Regs, Tensors], None]] = {
    ops.PATCH_CONV.name: patch_conv,
    ops.AFFINE.name: affine,
    ops.SIGN_PACK.name: sign_pack,
    ops.AVG_POOL.name: avg_pool,
    ops.BCONV.name: binary_layer,
    ops.BLINEAR.name: binary_layer,
    ops.SHIFT_ADD.name: shift_add,
    ops.WINDOW_ATTENTION.name: window_attention,
    ops.MEAN_TOKENS.name: mean_tokens,
    ops.LINEAR.name: linear,
}


def step(op: Op, regs: Regs, t: Tensors) -> None:
    """Runs one op on the registers (float maps (B, H, W, C); bits held as ±1 floats)."""
    if op["op"] not in STEPS:
        raise ValueError(f"unknown op {op['op']!r}")
    STEPS[op["op"]](op, regs, t)


def run(path: str | Path, images: np.ndarray, trace: bool = False) -> Any:
    """Logits (B, num_classes) of the file's program on images (B, C, H, W); with ``trace``, also every op's
    output register(s) by op index."""
    program, tensors, _ = load(path)
    regs = {"input": np.ascontiguousarray(images, dtype=F32)}
    record: dict[int, dict[str, np.ndarray]] = {}
    for i, op in enumerate(program["ops"]):
        step(op, regs, tensors)
        if trace:
            outs = [op["pack"]["out"], op["pack"]["means"]] if op.get("pack") else [op["out"]]
            record[i] = {n: regs[n].copy() for n in outs}
    out = regs[program["output"]].reshape(images.shape[0], -1)
    return (out, record) if trace else out
