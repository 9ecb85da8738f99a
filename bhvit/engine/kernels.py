"""Typed wrappers over the native kernels (numpy in, numpy out).

Bit conventions (csrc/bitpack.h, docs/packed-format.md): uint64 words, packed along the reduction axis K,
element k in word k // 64 at bit k % 64, a set bit means -1, padding bits are 0. For +-1 rows
``a . b = K - 2 popcount(a XOR b)``; for a {0,1} mask m and a +-1 row v, ``m . v = popcount(m) -
2 popcount(m AND v)``. Weight-like right operands are stored as panels of 8 rows,
``panel[p, k, j] = row 8p + j, word k``.

Output transform of the fused kernels, per output channel n (in this order)::

    z = scale[n] * dot + bias[n]
    z = z + residual[m, n % residual.shape[-1]]
    z = PReLU_n(z - b1[n]) + b2[n]             # RPReLU, when rprelu=(slope, b1, b2)
    out[m, n] = z   (or out[m, n] += z when accumulate=True)

Every function has a NumPy twin in :mod:`bhvit.engine.reference`; the tests compare them bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from bhvit.engine._native import native

WORD_BITS = 64
PANEL = 8

RPReLU = tuple[np.ndarray, np.ndarray, np.ndarray]


def words_for(k: int) -> int:
    """Number of uint64 words holding k bits: ceil(k / 64)."""
    return (k + WORD_BITS - 1) // WORD_BITS


def panels_for(n: int) -> int:
    """Number of 8-row panels holding n rows: ceil(n / 8)."""
    return (n + PANEL - 1) // PANEL


# ---- run-time configuration -----------------------------------------------------------------------


def available_isas() -> list[str]:
    """Kernel code paths this CPU and build support, best first (always ends with 'generic')."""
    return list(native().available_isas())


def current_isa() -> str:
    """The code path in use (the best available unless :func:`set_isa` chose another)."""
    return str(native().current_isa())


def set_isa(name: str) -> None:
    """Selects a code path by name (for tests and benchmarks)."""
    native().set_isa(name)


@contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Context manager: run the enclosed calls on code path ``name``."""
    previous = current_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def get_num_threads() -> int:
    """Threads the native kernels use (default: the number of CPUs)."""
    return int(native().get_num_threads())


def set_num_threads(n: int) -> None:
    """Sets the number of threads of the native kernels (n >= 1)."""
    native().set_num_threads(int(n))


def set_buffer_cache_mb(mb: int) -> None:
    """Caps the cache of freed large output buffers (>= 4 MiB) that the kernels reuse (default 512 MB).

    A fresh large array costs a page fault and zeroing per page on first touch, as long as the GEMM itself
    for a batch-32 stage-1 layer; the cache skips that for repeated sizes. 0 disables it and frees it.
    """
    native().set_buffer_cache_mb(int(mb))


def buffer_cache_mb() -> int:
    """The current cap of the output buffer cache in MB."""
    return int(native().buffer_cache_mb())


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Context manager: run the enclosed calls on ``n`` threads."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


# ---- packing --------------------------------------------------------------------------------------


def _f32(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.ascontiguousarray(x, dtype=np.float32)


def _u64(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.uint64)


def pack_rows(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Packs the last axis by sign: (..., K) float -> (..., ceil(K/64)) uint64, bit = (x + bias < 0).

    Exact zeros (and -0.0, NaN) become +1 (bit 0); see docs/packed-format.md, "Zeros".
    """
    return native().pack_rows(_f32(x), _f32(bias))


def to_panels(rows: np.ndarray) -> np.ndarray:
    """Row-packed (N, KW) or (G, N, KW) -> panels (NP, KW, 8) or (G, NP, KW, 8), rows >= N zero."""
    rows = _u64(rows)
    if rows.ndim == 2:
        return native().to_panels(rows[None])[0]
    return native().to_panels(rows)


def pack_cols_panels(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Transposed packing into panels: (G, S, D) float -> (G, ceil(D/8), ceil(S/64), 8).

    Column d of x becomes panel row d, packed along S: bit = (x[g, s, d] + bias[d] < 0).
    """
    return native().pack_cols_panels(_f32(x), _f32(bias))


def pack_nonzero(mask: np.ndarray) -> np.ndarray:
    """Packs a {0,1} mask along its last axis: (..., K) -> (..., ceil(K/64)), bit = (mask != 0)."""
    return native().pack_nonzero(
        np.ascontiguousarray(mask).view(np.uint8)
        if mask.dtype == np.bool_
        else np.ascontiguousarray(mask, dtype=np.uint8)
    )


# ---- binary products ------------------------------------------------------------------------------


def popcount_gemm(a: np.ndarray, bp: np.ndarray, n: int, op_and: bool = False) -> np.ndarray:
    """Raw popcounts: (G, M, KW) x panels (G, NP, KW, 8) -> int32 (G, M, n),
    ``P[g, m, j] = sum_k popcount(a[g, m, k] OP b[g, j, k])`` with OP = XOR (or AND)."""
    return native().popcount_gemm(_u64(a), _u64(bp), int(n), bool(op_and))


def _epilogue_kwargs(scale, bias, residual, rprelu, out, accumulate, post=None) -> dict:  # noqa: ANN001
    """Keyword arguments of the native output transform; only those that are set (each keyword costs
    the binding a conversion, a noticeable share of a call on the small shapes of stages 3-4)."""
    kw: dict = {}
    if bias is not None:
        kw["bias"] = _f32(bias)
    if residual is not None:
        kw["residual"] = _f32(residual)
    if accumulate:
        kw["accumulate"] = True
    if post is not None:
        kw["post_scale"], kw["post_bias"] = _f32(post[0]), _f32(post[1])
    if np.ndim(scale) == 0:
        if scale is not None:
            kw["scale_all"] = float(scale)
    else:
        kw["scale"] = _f32(scale)
    if rprelu is not None:
        kw["slope"], kw["b1"], kw["b2"] = (_f32(t) for t in rprelu)
    if out is not None:
        if out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous float32 array")
        kw["out"] = out
    return kw


def bgemm(
    a: np.ndarray,
    bp: np.ndarray,
    n: int,
    k: int,
    *,
    scale: np.ndarray | float | None = None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    rprelu: RPReLU | None = None,
    post: tuple[np.ndarray, np.ndarray] | None = None,
    out: np.ndarray | None = None,
    accumulate: bool = False,
    nibbles: np.ndarray | None = None,
) -> np.ndarray:
    """Binary GEMM with fused output transform.

    a: (M, KW) or (G, M, KW) packed activations; bp: (NP, KW, 8) shared or (G, NP, KW, 8) panels.
    ``dot[m, j] = k - 2 popcount(a[m] XOR b[j])`` then the module-level output transform.
    nibbles: optionally ``to_nibbles(bp)`` of a shared weight, which lets the table-lookup kernels run
    (AVX2, k <= 256); the result is identical with or without it.
    Returns float32 (M, n) or (G, M, n).
    """
    kw = _epilogue_kwargs(scale, bias, residual, rprelu, out, accumulate, post)
    if nibbles is not None:
        kw["nibbles"] = np.ascontiguousarray(nibbles, dtype=np.uint8)
    return native().bgemm(_u64(a), _u64(bp), int(n), int(k), **kw)


def bgemm_pack(
    a: np.ndarray,
    bp: np.ndarray,
    n: int,
    k: int,
    *,
    pack_bias: np.ndarray | None = None,
    mean_r: int = 0,
    scale: np.ndarray | float | None = None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    rprelu: RPReLU | None = None,
    post: tuple[np.ndarray, np.ndarray] | None = None,
    nibbles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`bgemm` whose output feeds the next binary layer directly: for ``z`` the transformed (M, n)
    output, returns ``(pack_rows(z, pack_bias), group_mean(z, mean_r) or None)`` without writing ``z``.

    The MLP's ``fc1`` this way hands ``fc2`` its packed input and its pooled residual (SPEC §2) and
    saves storing and re-reading the r·C-wide float map. a: (M, KW) against one shared weight;
    ``mean_r`` must divide 128 and n. Bit for bit the same as the three separate calls.
    """
    kw = _epilogue_kwargs(scale, bias, residual, rprelu, None, False, post)
    if nibbles is not None:
        kw["nibbles"] = np.ascontiguousarray(nibbles, dtype=np.uint8)
    if pack_bias is not None:
        kw["pack_bias"] = _f32(pack_bias)
    return native().bgemm_pack(_u64(a), _u64(bp), int(n), int(k), mean_r=int(mean_r), **kw)


def to_nibbles(bp: np.ndarray) -> np.ndarray:
    """Panels (NP, KW, 8) -> the nibble layout (ceil(NP/4), KW, 16, 32) uint8 (csrc/bitpack.h, convention 8).

    ``nib[q, k, c, j] = (word k of weight row 32q + j) >> 4c & 15``: an in-memory companion of the panels
    for small k (2 bits per weight bit), never stored in packed files.
    """
    return native().to_nibbles(_u64(bp))


def nibbles_for(bp: np.ndarray, k: int) -> np.ndarray | None:
    """``to_nibbles(bp)`` where the table kernels can use it (the engine's rule: k <= 256 and two whole
    quads of rows, judged on the 8 rows per panel; bgemm checks again with the true n), else None."""
    if bp.ndim != 3 or not native().nibbles_pay(int(bp.shape[0]) * 8, -(-int(k) // 64)):
        return None
    return to_nibbles(bp)


def bconv(
    xp: np.ndarray,
    c: int,
    wp: np.ndarray,
    wpop: np.ndarray,
    cout: int,
    *,
    groups: int = 1,
    kernel: tuple[int, int] = (3, 3),
    stride: int = 1,
    pad: int = 0,
    dil: int = 1,
    scale: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    rprelu: RPReLU | None = None,
    post: tuple[np.ndarray, np.ndarray] | None = None,
    out: np.ndarray | None = None,
    accumulate: bool = False,
) -> np.ndarray:
    """Binary grouped convolution on channel-packed pixels with exact zero padding.

    xp: (B, H, W, ceil(c/64)) packed channels; wp/wpop from :func:`pack_conv_weight`.
    For output pixel m and channel j of group g, over the valid taps V(m) only (taps that see the zero
    padding contribute exactly 0, SPEC section 6)::

        dot[m, j] = |V(m)| * Cg - 2 * sum_{t in V(m)} popcount(x[m, t, group g] XOR w[j, t])

    then the output transform. Returns float32 (B, OH*OW, cout).
    """
    kw = _epilogue_kwargs(scale, bias, residual, rprelu, out, accumulate, post)
    kw.pop("scale_all", None)
    return native().bconv(
        _u64(xp),
        int(c),
        _u64(wp),
        np.ascontiguousarray(wpop, dtype=np.int32),
        int(cout),
        int(groups),
        int(kernel[0]),
        int(kernel[1]),
        int(stride),
        int(pad),
        int(dil),
        **kw,
    )


def masked_av(masks: np.ndarray, vp: np.ndarray, w: np.ndarray, s: int, d: int) -> np.ndarray:
    """Attention context from weighted binary masks.

    masks: (G, R, S, SW) packed {0,1} rows over keys; vp: (G, ceil(D/8), SW, 8) from
    :func:`pack_cols_panels` (v transposed, bit set = -1); w: (G, R) float.
    ``out[g, s, d] = sum_r w[g, r] * (popcount(T_r[s]) - 2 popcount(T_r[s] AND v_d))``, float32 (G, S, D).
    """
    return native().masked_av(_u64(masks), _u64(vp), _f32(w), int(s), int(d))


def lsq_masks(attn: np.ndarray, a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """LSQ attention levels as packed masks (SPEC §3.3): attn (G, L, L), per-g step a and offset z ->
    (G, 3, L, ceil(L/64)) with ``T_s = [clamp(round(3·attn / a + z), 0, 3) >= s]``, s = 1, 2, 3.

    Float operations in the model's order (``x = attn·3``, ``x / a + z``, round half to even), so the
    levels equal the float model's exactly.
    """
    return native().lsq_masks(_f32(attn), _f32(a), _f32(z))


# ---- fused float helpers --------------------------------------------------------------------------


def group_mean(x: np.ndarray, r: int) -> np.ndarray:
    """AvgPool1d(r) over the last axis: (..., r*C) -> (..., C), ``out[c] = (x[rc] + ... + x[rc+r-1]) / r``
    (summed left to right, then multiplied by 1/r)."""
    return native().group_mean(_f32(x), int(r))


def shift_add(out: np.ndarray, x: np.ndarray, kernels: list[int], ls: np.ndarray) -> None:
    """Adds the MLP's shift branches in place (SPEC §2), maps (B, H, W, C)::

        for k in kernels:  out += LS_h,k(S_h,k(x)); out += LS_w,k(S_w,k(x)); out += LS_c,k(S_c,k(x))

    ``S_h,k(x)[i] = (x[i] + x[i-1] + x[i+1] + ... + x[i-k//2] + x[i+k//2]) / k`` along H with wrap-around
    (likewise W); ``S_c,k`` takes channel quarter q from the pixel shifted by -s, +s along H, then -s,
    +s along W, s = k // 2 (``torch.roll``'s direction). ``LS(y) = y * alpha + bias``; ``ls`` is
    (3 * len(kernels), 2, C): alpha and bias of the branches h, w, c of each kernel in order.
    """
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array")
    native().shift_add(out, _f32(x), [int(k) for k in kernels], _f32(ls))


# ---- weight preparation ---------------------------------------------------------------------------


def pack_linear_weight(signs: np.ndarray) -> np.ndarray:
    """(N, K) array whose sign gives the binary weight (negative -> -1, else +1) -> panels (NP, KW, 8)."""
    return to_panels(pack_rows(signs))


def conv_weight_rows(signs: np.ndarray) -> np.ndarray:
    """(Cout, Cg, KH, KW) -> (Cout, KH*KW*Cg) float rows ordered (tap = ky*KW + kx, channel)."""
    cout = signs.shape[0]
    return np.ascontiguousarray(np.transpose(signs, (0, 2, 3, 1)).reshape(cout, -1), dtype=np.float32)


def pack_conv_weight(signs: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (Cout, Cin/groups, KH, KW) -> (panels (groups, NPg, KWc, 8), wpop (Cout, KH*KW)).

    ``wpop[o, t]`` is the number of -1 weights of output o at tap t, used to discount taps that see
    the zero padding.
    """
    cout, cg, kh, kw = signs.shape
    rows = conv_weight_rows(signs)  # (Cout, T*Cg)
    packed = pack_rows(rows).reshape(groups, cout // groups, -1)
    wpop = (rows.reshape(cout, kh * kw, cg) < 0).sum(-1).astype(np.int32)
    return to_panels(packed), wpop
