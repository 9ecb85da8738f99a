"""Bit packing: conventions, round trips, padding bits, zeros, every code path against the NumPy twin."""

from __future__ import annotations

import numpy as np
import pytest

from bhvit.engine import kernels as K
from bhvit.engine import reference as R

AWKWARD_K = [1, 3, 31, 33, 63, 64, 65, 127, 128, 129, 255, 1984, 1985, 2048]


@pytest.mark.parametrize("k", AWKWARD_K)
@pytest.mark.parametrize("m", [1, 3, 17])
def test_pack_rows_matches_reference(isa: str, k: int, m: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    for b in (None, bias):
        got = K.pack_rows(x, b)
        assert got.dtype == np.uint64 and got.shape == (m, K.words_for(k))
        np.testing.assert_array_equal(got, R.pack_rows_ref(x, b))


@pytest.mark.parametrize("k", AWKWARD_K)
def test_padding_bits_are_zero(isa: str, k: int) -> None:
    x = -np.ones((5, k), dtype=np.float32)  # every real bit set
    words = K.pack_rows(x)
    total = int(sum(bin(int(w)).count("1") for w in words.ravel()))
    assert total == 5 * k
    if k % 64:
        assert np.all(words[:, -1] >> np.uint64(k % 64) == 0)


def test_bit_order_is_lsb_first(isa: str) -> None:
    x = np.ones((1, 130), dtype=np.float32)
    x[0, [0, 5, 63, 64, 129]] = -1.0
    words = K.pack_rows(x)[0]
    assert int(words[0]) == (1 << 0) | (1 << 5) | (1 << 63)
    assert int(words[1]) == 1 << 0
    assert int(words[2]) == 1 << 1


@pytest.mark.parametrize("k", AWKWARD_K)
def test_round_trip(k: int, rng: np.random.Generator) -> None:
    bits = rng.random((4, k)) < 0.5
    np.testing.assert_array_equal(R.unpack_bits_ref(R.pack_bits_ref(bits), k), bits)
    signs = np.where(bits, -1.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(R.unpack_bits_ref(K.pack_rows(signs), k), bits)


def test_zeros_map_to_plus_one(isa: str) -> None:
    """Documented decision: x + bias == 0 (also -0.0, NaN) packs as +1 (bit 0)."""
    x = np.array([[0.0, -0.0, np.nan, -1e-30, 1e-30, 2.0, -2.0]], dtype=np.float32)
    bits = R.unpack_bits_ref(K.pack_rows(x), 7)[0]
    np.testing.assert_array_equal(bits, [False, False, False, True, False, False, True])
    # bias is added in float32 first: 1.5 + (-1.5) is exactly 0 -> +1
    b = np.full(7, -1.5, dtype=np.float32)
    y = np.full((1, 7), 1.5, dtype=np.float32)
    assert not R.unpack_bits_ref(K.pack_rows(y, b), 7).any()


@pytest.mark.parametrize("n", [1, 7, 8, 9, 17])
@pytest.mark.parametrize("k", [1, 64, 65, 200])
def test_to_panels(n: int, k: int, rng: np.random.Generator) -> None:
    rows = R.pack_bits_ref(rng.random((n, k)) < 0.5)
    panels = K.to_panels(rows)
    np.testing.assert_array_equal(panels, R.to_panels_ref(rows))
    np.testing.assert_array_equal(R.from_panels_ref(panels, n), rows)
    assert not panels.reshape(-1, K.words_for(k), 8).transpose(0, 2, 1).reshape(-1, K.words_for(k))[n:].any()


@pytest.mark.parametrize("s", [1, 3, 50, 53, 64, 65, 130])
@pytest.mark.parametrize("d", [1, 8, 13, 64])
def test_pack_cols_panels(isa: str, s: int, d: int, rng: np.random.Generator) -> None:
    g = 3
    x = rng.standard_normal((g, s, d)).astype(np.float32)
    bias = rng.standard_normal(d).astype(np.float32)
    got = K.pack_cols_panels(x, bias)
    for i in range(g):
        rows = R.pack_rows_ref(np.ascontiguousarray(x[i].T), bias[:, None])
        np.testing.assert_array_equal(got[i], R.to_panels_ref(rows))
    plain = K.pack_cols_panels(x)  # no bias
    for i in range(g):
        np.testing.assert_array_equal(plain[i], R.to_panels_ref(R.pack_rows_ref(np.ascontiguousarray(x[i].T))))


@pytest.mark.parametrize("k", [1, 53, 64, 65, 128])
def test_pack_nonzero(isa: str, k: int, rng: np.random.Generator) -> None:
    m = rng.random((2, 5, k)) < 0.3
    np.testing.assert_array_equal(K.pack_nonzero(m), R.pack_bits_ref(m))
    np.testing.assert_array_equal(K.pack_nonzero(m.astype(np.uint8) * 7), R.pack_bits_ref(m))
