"""Plain NumPy twins of the native kernels: slow and obviously correct.

They unpack bits to +-1 integers and use integer matrix products, so the integer parts are exact; the
float output transform uses the same float32 operations in the same order as the native code, so the
tests can require bit-for-bit equality.
"""

from __future__ import annotations

import numpy as np

from bhvit.engine.kernels import PANEL, RPReLU, panels_for, words_for


def pack_bits_ref(bits: np.ndarray) -> np.ndarray:
    """(..., K) bool -> (..., ceil(K/64)) uint64: element k in word k // 64, bit k % 64; padding 0."""
    k = bits.shape[-1]
    padded = np.zeros((*bits.shape[:-1], words_for(k) * 64), dtype=bool)
    padded[..., :k] = bits
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def unpack_bits_ref(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits_ref`: (..., KW) uint64 -> (..., k) bool."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :k].astype(bool)


def signs_ref(words: np.ndarray, k: int) -> np.ndarray:
    """Packed rows -> +-1 int64 values (bit set -> -1)."""
    return 1 - 2 * unpack_bits_ref(words, k).astype(np.int64)


def pack_rows_ref(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """bit = (x + bias < 0) along the last axis (float32 addition, like the native code)."""
    x = np.asarray(x, dtype=np.float32)
    v = x + np.asarray(bias, dtype=np.float32) if bias is not None else x
    return pack_bits_ref(v < 0)


def to_panels_ref(rows: np.ndarray) -> np.ndarray:
    """(N, KW) -> (NP, KW, 8): panel[p, k, j] = rows[8p + j, k], zero rows past N."""
    n, kw = rows.shape
    padded = np.zeros((panels_for(n) * PANEL, kw), dtype=np.uint64)
    padded[:n] = rows
    return np.ascontiguousarray(padded.reshape(-1, PANEL, kw).transpose(0, 2, 1))


def from_panels_ref(panels: np.ndarray, n: int) -> np.ndarray:
    """(NP, KW, 8) -> (n, KW)."""
    return np.ascontiguousarray(panels.transpose(0, 2, 1)).reshape(-1, panels.shape[1])[:n]


def to_nibbles_ref(panels: np.ndarray) -> np.ndarray:
    """(NP, KW, 8) panels -> (ceil(NP/4), KW, 16, 32) bytes: nib[q, k, c, j] = row (32q + j), word k, bits 4c..4c+3."""
    np_, kw, _ = panels.shape
    rows = np.zeros((-(-np_ // 4) * 32, kw), dtype=np.uint64)
    rows[: np_ * PANEL] = panels.transpose(0, 2, 1).reshape(-1, kw)
    shifts = (4 * np.arange(16, dtype=np.uint64))[None, None, :]
    fields = (rows[:, :, None] >> shifts) & np.uint64(15)  # (rows, KW, 16)
    return np.ascontiguousarray(fields.reshape(-1, 32, kw, 16).transpose(0, 2, 3, 1).astype(np.uint8))


def epilogue_ref(
    dot: np.ndarray,
    scale: np.ndarray | float | None = None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    rprelu: RPReLU | None = None,
    out: np.ndarray | None = None,
    post: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Output transform on integer dots (..., M, N), float32 operations in the native order."""
    s = np.float32(1.0) if scale is None else np.asarray(scale, dtype=np.float32)
    z = dot.astype(np.float32) * s
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float32)
    if residual is not None:
        reps = dot.shape[-1] // residual.shape[-1]
        z = z + np.tile(np.asarray(residual, dtype=np.float32), reps)
    if rprelu is not None:
        slope, b1, b2 = (np.asarray(t, dtype=np.float32) for t in rprelu)
        z = z - b1
        z = np.where(z > 0, z, slope * z).astype(np.float32)
        z = z + b2
    if post is not None:
        z = z * np.asarray(post[0], dtype=np.float32) + np.asarray(post[1], dtype=np.float32)
    return z if out is None else (out + z).astype(np.float32)


def bgemm_dot_ref(a: np.ndarray, b_rows: np.ndarray, k: int) -> np.ndarray:
    """Integer dots of packed +-1 rows: (..., M, KW) x (N, KW) or (..., N, KW) -> (..., M, N) int64."""
    sa, sb = signs_ref(a, k), signs_ref(b_rows, k)
    return sa @ np.swapaxes(sb, -1, -2)


def conv_dot_ref(x_signs: np.ndarray, w_signs: np.ndarray, groups: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """Grouped conv of +-1 inputs with zero padding (the padded taps contribute 0), integer result.

    x_signs: (B, H, W, C) in {-1, +1}; w_signs: (Cout, C/groups, KH, KW) in {-1, +1}.
    Returns (B, OH*OW, Cout) int64.
    """
    b, h, w, c = x_signs.shape
    cout, cg, kh, kw = w_signs.shape
    xp = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=np.int64)
    xp[:, pad : pad + h, pad : pad + w] = x_signs
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((b, oh, ow, cout), dtype=np.int64)
    ng = cout // groups
    for ky in range(kh):
        for kx in range(kw):
            ys, xs = ky * dil, kx * dil
            patch = xp[:, ys : ys + stride * (oh - 1) + 1 : stride, xs : xs + stride * (ow - 1) + 1 : stride]
            for g in range(groups):
                wg = w_signs[g * ng : (g + 1) * ng, :, ky, kx].astype(np.int64)  # (Ng, Cg)
                out[..., g * ng : (g + 1) * ng] += patch[..., g * cg : (g + 1) * cg] @ wg.T
    return out.reshape(b, oh * ow, cout)


def masked_av_ref(masks: np.ndarray, v_signs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """masks (G, R, S, S) {0,1}, v_signs (G, S, D) +-1, w (G, R) -> (G, S, D) float32.

    out = sum_r w[g, r] * (T_r v), accumulated in float32 in r order like the native code.
    """
    g, r, s, _ = masks.shape
    out = np.zeros((g, s, v_signs.shape[-1]), dtype=np.float32)
    for i in range(r):
        prod = (masks[:, i].astype(np.int64) @ v_signs.astype(np.int64)).astype(np.float32)
        out = out + w[:, i, None, None].astype(np.float32) * prod
    return out


def group_mean_ref(x: np.ndarray, r: int) -> np.ndarray:
    """(..., r*C) -> (..., C): left-to-right float32 sums of r neighbours times 1/r."""
    g = np.asarray(x, dtype=np.float32).reshape(*x.shape[:-1], -1, r)
    s = g[..., 0].copy()
    for i in range(1, r):
        s = s + g[..., i]
    return s * np.float32(1.0 / r)


def shift_add_ref(out: np.ndarray, x: np.ndarray, kernels: list[int], ls: np.ndarray) -> np.ndarray:
    """NumPy transcription of the shift branches (np.roll has torch.roll's direction)."""
    out = out.astype(np.float32).copy()
    q = x.shape[-1] // 4
    for t, k in enumerate(kernels):
        (ah, bh), (aw, bw), (ac, bc) = ls[3 * t], ls[3 * t + 1], ls[3 * t + 2]
        for axis, a, b in ((1, ah, bh), (2, aw, bw)):
            s = x.copy()
            for d in range(1, k // 2 + 1):
                s = s + np.roll(x, d, axis) + np.roll(x, -d, axis)
            out = out + ((s / np.float32(k)) * a + b)
        d = k // 2
        mixed = np.concatenate(
            [
                np.roll(x[..., :q], d, 1),
                np.roll(x[..., q : 2 * q], -d, 1),
                np.roll(x[..., 2 * q : 3 * q], d, 2),
                np.roll(x[..., 3 * q :], -d, 2),
            ],
            axis=-1,
        )
        out = out + (mixed * ac + bc)
    return out
