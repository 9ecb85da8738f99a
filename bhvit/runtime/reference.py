"""A numpy interpreter of the version-2 packed program (docs/packed-format.md §4–§6), op by op.

The executable form of the specification, for tests and for reading: slow, plain numpy, float32, no
bit tricks (binary operands are unpacked to ±1 floats; their integer dot products are exact in float32
up to 2²⁴). The native runtime (``libbhvit_runtime``) must agree with it to float rounding.

    logits = reference.run("model.bhvp", images)                  # (B, C, H, W) float32 -> (B, classes)
    logits, trace = reference.run("model.bhvp", images, trace=True)  # trace: op index -> its output(s)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

F32 = np.float32


def load(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(program, tensors, metadata) of a version-2 file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    if meta.get("format_version") != "2":
        raise ValueError(f"{path}: not a version-2 packed file (format_version {meta.get('format_version')!r})")
    return json.loads(meta["program"]), tensors, meta


def unpack(bits: np.ndarray, k: int) -> np.ndarray:
    """(..., ceil(k/64)) uint64 rows -> (..., k) ±1 float32 (set bit = −1)."""
    b = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)
    flat = np.unpackbits(b.reshape(*bits.shape[:-1], -1), axis=-1, bitorder="little")[..., :k]
    return (1.0 - 2.0 * flat).astype(F32)


def rprelu(z: np.ndarray, f: dict[str, str], t: dict[str, np.ndarray]) -> np.ndarray:
    y = z - t[f["b1"]]
    return (np.where(y > 0, y, y * t[f["slope"]]) + t[f["b2"]]).astype(F32)


def transform(dot: np.ndarray, op: dict[str, Any], t: dict[str, np.ndarray], regs: dict[str, np.ndarray]) -> np.ndarray:
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


def patch_conv(x: np.ndarray, op: dict[str, Any], t: dict[str, np.ndarray], nchw: bool) -> np.ndarray:
    w, k = t[op["weight"]], int(op["kernel"])  # (Cout, C, k, k)
    x = x.transpose(0, 2, 3, 1) if nchw else x  # -> (B, H, W, C)
    b, h, wd, c = x.shape
    oh, ow = h // k, wd // k
    patches = x[:, : oh * k, : ow * k].reshape(b, oh, k, ow, k, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, oh, ow, -1)
    y = patches @ w.reshape(w.shape[0], -1).T
    return (y + t[op["bias"]] if op.get("bias") else y).astype(F32)


def gelu(x: np.ndarray) -> np.ndarray:
    from math import erf

    return (x * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0))) / 2.0).astype(F32)


def bconv(x: np.ndarray, op: dict[str, Any], t: dict[str, np.ndarray]) -> np.ndarray:
    """Grouped binary conv: ±1 input with zero padding (padded taps add 0), weight rows (tap, channel)."""
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


def shift_add(out: np.ndarray, x: np.ndarray, op: dict[str, Any], t: dict[str, np.ndarray]) -> np.ndarray:
    scales = t[op["scales"]]
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
    return out.astype(F32)


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


def attn_masks(a: np.ndarray, quant: dict[str, Any], t: dict[str, np.ndarray], numel: int) -> np.ndarray:
    """Â = Σ_r w_r T_r for A (..., heads, L, L)."""
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


def window_attention(x: np.ndarray, op: dict[str, Any], t: dict[str, np.ndarray]) -> np.ndarray:
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
    mixed, signs = {}, {}
    for n in "qkv":
        br = op[n]
        xs = np.where(hs + t[br["move"]] < 0, F32(-1), F32(1))
        dot = xs @ unpack(t[br["weight"]], c).T
        mixed[n] = _branch(dot, hs, br, t)
        signs[n] = np.where(mixed[n] + t[br["move2"]] < 0, F32(-1), F32(1))
    length = w * w + nwin
    split = lambda z: z.reshape(b, nwin, length, heads, d).transpose(0, 1, 3, 2, 4)  # noqa: E731
    q, k, v = split(signs["q"]), split(signs["k"]), split(signs["v"])  # (B, nW, heads, L, d)
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
    return (local * mix + g * (F32(1) - mix)).astype(F32)


def _branch(dot: np.ndarray, hs: np.ndarray, br: dict[str, Any], t: dict[str, np.ndarray]) -> np.ndarray:
    z = dot * t[br["scale"]]
    if br.get("bias"):
        z = z + t[br["bias"]]
    return rprelu(z + hs, br["rprelu"], t)


def step(op: dict[str, Any], regs: dict[str, np.ndarray], t: dict[str, np.ndarray]) -> None:
    """Runs one op on the registers (float maps (B, H, W, C); bits held as ±1 floats)."""
    kind, src = op["op"], regs.get(op.get("in", ""))
    if kind == "patch_conv":
        regs[op["out"]] = patch_conv(src, op, t, nchw=op["in"] == "input")
    elif kind == "affine":
        y = src * t[op["scale"]] if op.get("scale") else src
        y = y + t[op["bias"]] if op.get("bias") else y
        y = gelu(y) if op.get("act") == "gelu" else y
        regs[op["out"]] = (y + t[op["add"]] if op.get("add") else y).astype(F32)
    elif kind == "sign_pack":
        y = src + t[op["move"]] if op.get("move") else src
        regs[op["out"]] = np.where(y < 0, F32(-1), F32(1))
    elif kind == "avg_pool":
        k = int(op["kernel"])
        b, h, wd, c = src.shape
        regs[op["out"]] = (
            src[:, : h // k * k, : wd // k * k].reshape(b, h // k, k, wd // k, k, c).sum(axis=(2, 4)) / F32(k * k)
        ).astype(F32)
    elif kind in ("bconv", "blinear"):
        dot = bconv(src, op, t) if kind == "bconv" else src @ unpack(t[op["weight"]], int(op["in_features"])).T
        z = transform(dot, {**op, "post": None if op.get("pack") else op.get("post")}, t, regs)
        if op.get("pack"):
            pk = op["pack"]
            zz = z + t[pk["move"]] if pk.get("move") else z
            regs[pk["out"]] = np.where(zz < 0, F32(-1), F32(1))
            r = int(pk["mean_r"])
            regs[pk["means"]] = (z.reshape(*z.shape[:-1], -1, r).sum(-1) / F32(r)).astype(F32)
        else:
            regs[op["out"]] = regs[op["out"]] + z if op.get("accumulate") else z
    elif kind == "shift_add":
        regs[op["out"]] = shift_add(regs[op["out"]], src, op, t)
    elif kind == "window_attention":
        regs[op["out"]] = window_attention(src, op, t)
    elif kind == "mean_tokens":
        regs[op["out"]] = src.mean(axis=(1, 2), keepdims=True).astype(F32)
    elif kind == "linear":
        y = src @ t[op["weight"]].T
        regs[op["out"]] = (y + t[op["bias"]] if op.get("bias") else y).astype(F32)
    else:
        raise ValueError(f"unknown op {kind!r}")


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
