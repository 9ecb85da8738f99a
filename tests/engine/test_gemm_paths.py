"""The GEMM's alternative code paths give the same floats as the plain one: the nibble-table kernels
(small K, convention 8 of csrc/bitpack.h), streamed stores of large outputs, and reused output buffers."""

from __future__ import annotations

import numpy as np
import pytest

from bhvit.engine import kernels as K
from bhvit.engine import reference as R

NIBBLE_K = [1, 3, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256]


def _rand_signs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("n", [1, 9, 64, 77, 96, 129, 260])
def test_to_nibbles_layout(n: int, rng: np.random.Generator) -> None:
    for k in (1, 64, 65, 256):
        panels = K.to_panels(K.pack_rows(_rand_signs(rng, n, k)))
        got = K.to_nibbles(panels)
        np.testing.assert_array_equal(got, R.to_nibbles_ref(panels))
        assert got.shape == (-(-n // 32), -(-k // 64), 16, 32)


@pytest.mark.parametrize("k", NIBBLE_K)
@pytest.mark.parametrize("m,n", [(1, 64), (5, 65), (17, 100), (33, 128), (70, 200)])
def test_bgemm_with_nibbles_exact(isa: str, threads: int, k: int, m: int, n: int, rng: np.random.Generator) -> None:
    """Same integers with and without the nibble layout, on every code path (only AVX2 uses it)."""
    a = K.pack_rows(_rand_signs(rng, m, k))
    w_rows = K.pack_rows(_rand_signs(rng, n, k))
    panels = K.to_panels(w_rows)
    got = K.bgemm(a, panels, n, k, nibbles=K.to_nibbles(panels))
    np.testing.assert_array_equal(got, R.bgemm_dot_ref(a, w_rows, k).astype(np.float32))


@pytest.mark.parametrize("k", [1, 64, 129, 256])
@pytest.mark.parametrize("m,n", [(70, 1024), (13, 1100), (131, 2050)])
def test_bgemm_with_nibbles_wide(isa: str, threads: int, k: int, m: int, n: int, rng: np.random.Generator) -> None:
    """Outputs wider than one table task (1024 columns), a partial last quad, row counts that are no
    multiple of the rows transformed at once."""
    a = K.pack_rows(_rand_signs(rng, m, k))
    w_rows = K.pack_rows(_rand_signs(rng, n, k))
    panels = K.to_panels(w_rows)
    scale = rng.random(n).astype(np.float32)
    got = K.bgemm(a, panels, n, k, scale=scale, nibbles=K.to_nibbles(panels))
    want = R.epilogue_ref(R.bgemm_dot_ref(a, w_rows, k), scale, None, None, None)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [64, 130, 256])
def test_nibbles_with_full_output_transform(isa: str, k: int, rng: np.random.Generator) -> None:
    m, n = 37, 96
    a = K.pack_rows(rng.standard_normal((m, k)).astype(np.float32))
    w = K.pack_rows(rng.standard_normal((n, k)).astype(np.float32))
    panels = K.to_panels(w)
    scale, bias = rng.random(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, 32)).astype(np.float32)
    rprelu = tuple(rng.standard_normal(n).astype(np.float32) for _ in range(3))
    kw = {"scale": scale, "bias": bias, "residual": residual, "rprelu": rprelu}
    want = R.epilogue_ref(R.bgemm_dot_ref(a, w, k), scale, bias, residual, rprelu)
    np.testing.assert_array_equal(K.bgemm(a, panels, n, k, nibbles=K.to_nibbles(panels), **kw), want)


def test_nibbles_rejected_for_wrong_weight(rng: np.random.Generator) -> None:
    a = K.pack_rows(_rand_signs(rng, 4, 64))
    panels = K.to_panels(K.pack_rows(_rand_signs(rng, 64, 64)))
    other = K.to_nibbles(K.to_panels(K.pack_rows(_rand_signs(rng, 64, 128))))
    with pytest.raises(ValueError, match="nibbles"):
        K.bgemm(a, panels, 64, 64, nibbles=other)


def test_nibbles_for_chooses_small_k() -> None:
    panels = np.zeros((16, 4, 8), np.uint64)
    assert K.nibbles_for(panels, 256) is not None
    assert K.nibbles_for(np.zeros((16, 5, 8), np.uint64), 257) is None
    assert K.nibbles_for(np.zeros((4, 4, 8), np.uint64), 256) is None  # n <= 32: one partial quad


def test_large_output_streamed_exact(isa: str, threads: int, rng: np.random.Generator) -> None:
    """An output over the 16 MiB streaming threshold equals the same rows computed in small pieces."""
    m, k, n = 8300, 65, 512  # 17 MB of float32
    a = K.pack_rows(rng.standard_normal((m, k)).astype(np.float32))
    panels = K.to_panels(K.pack_rows(rng.standard_normal((n, k)).astype(np.float32)))
    scale, bias = rng.random(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    rprelu = tuple(rng.standard_normal(n).astype(np.float32) for _ in range(3))
    residual = rng.standard_normal((m, 64)).astype(np.float32)
    big = K.bgemm(a, panels, n, k, scale=scale, bias=bias, residual=residual, rprelu=rprelu)
    assert big.ctypes.data % 64 == 0
    for lo in range(0, m, 2000):
        part = K.bgemm(
            a[lo : lo + 2000], panels, n, k, scale=scale, bias=bias, residual=residual[lo : lo + 2000], rprelu=rprelu
        )
        np.testing.assert_array_equal(big[lo : lo + 2000], part)


def test_outputs_are_64_byte_aligned(rng: np.random.Generator) -> None:
    for m in (1, 3, 100, 3000):
        a = K.pack_rows(_rand_signs(rng, m, 64))
        y = K.bgemm(a, K.to_panels(K.pack_rows(_rand_signs(rng, 24, 64))), 24, 64)
        assert y.ctypes.data % 64 == 0 and y.shape == (m, 24)
        assert K.pack_rows(rng.standard_normal((m, 70)).astype(np.float32)).ctypes.data % 64 == 0


def test_buffer_cache_reuses_only_freed_buffers(rng: np.random.Generator) -> None:
    m, k, n = 4096, 64, 512  # 8 MiB outputs: from the cache
    a1, a2 = K.pack_rows(_rand_signs(rng, m, k)), K.pack_rows(_rand_signs(rng, m, k))
    panels = K.to_panels(K.pack_rows(_rand_signs(rng, n, k)))
    limit = K.buffer_cache_mb()
    try:
        K.set_buffer_cache_mb(64)
        y1 = K.bgemm(a1, panels, n, k)
        first = y1.copy()
        y2 = K.bgemm(a2, panels, n, k)  # y1 is alive: must get its own memory
        assert y2.ctypes.data != y1.ctypes.data
        np.testing.assert_array_equal(y1, first)
        address = y1.ctypes.data
        del y1
        y3 = K.bgemm(a1, panels, n, k)  # the freed buffer comes back, fully overwritten
        assert y3.ctypes.data == address
        np.testing.assert_array_equal(y3, first)
        K.set_buffer_cache_mb(0)
        assert K.buffer_cache_mb() == 0
        np.testing.assert_array_equal(K.bgemm(a1, panels, n, k), first)
        with pytest.raises(ValueError, match=">= 0"):
            K.set_buffer_cache_mb(-1)
    finally:
        K.set_buffer_cache_mb(limit)


@pytest.mark.parametrize("k", [1, 64, 130, 256, 512])
@pytest.mark.parametrize("m,n,r", [(1, 8, 8), (37, 96, 4), (70, 1100, 4), (9, 2056, 8), (130, 512, 8)])
def test_bgemm_pack_equals_separate_calls(
    isa: str, threads: int, k: int, m: int, n: int, r: int, rng: np.random.Generator
) -> None:
    """Packed mode (the MLP's fc1 handing fc2 its bits and pooled residual) gives the bits of
    pack_rows(z + bias) and the floats of group_mean(z) of the plain GEMM's output z."""
    a = K.pack_rows(rng.standard_normal((m, k)).astype(np.float32))
    panels = K.to_panels(K.pack_rows(rng.standard_normal((n, k)).astype(np.float32)))
    kw = {
        "scale": rng.random(n).astype(np.float32),
        "bias": rng.standard_normal(n).astype(np.float32),
        "residual": rng.standard_normal((m, n // r)).astype(np.float32),
        "rprelu": tuple(rng.standard_normal(n).astype(np.float32) for _ in range(3)),
        "nibbles": K.nibbles_for(panels, k),
    }
    move = rng.standard_normal(n).astype(np.float32)
    z = K.bgemm(a, panels, n, k, **kw)
    bits, means = K.bgemm_pack(a, panels, n, k, pack_bias=move, mean_r=r, **kw)
    np.testing.assert_array_equal(bits, K.pack_rows(z, move))
    np.testing.assert_array_equal(means, K.group_mean(z, r))
    bits0, none = K.bgemm_pack(a, panels, n, k, **kw)  # no bias, no means
    np.testing.assert_array_equal(bits0, K.pack_rows(z))
    assert none is None


def test_bgemm_pack_rejects_group_sizes(rng: np.random.Generator) -> None:
    a = K.pack_rows(rng.standard_normal((4, 64)).astype(np.float32))
    panels = K.to_panels(K.pack_rows(rng.standard_normal((96, 64)).astype(np.float32)))
    with pytest.raises(ValueError, match="mean_r"):
        K.bgemm_pack(a, panels, 96, 64, mean_r=3)  # does not divide 128
    with pytest.raises(ValueError, match="mean_r"):
        K.bgemm_pack(a, panels, 96, 64, mean_r=64)  # does not divide n
