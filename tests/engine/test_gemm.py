"""Binary GEMM: raw popcounts and the fused output transform, bit for bit against the NumPy twin."""

from __future__ import annotations

import numpy as np
import pytest

from bhvit.engine import kernels as K
from bhvit.engine import reference as R

AWKWARD_K = [1, 3, 31, 33, 63, 64, 65, 127, 128, 1984, 1985, 2048]
ROWS = [1, 3, 5, 8, 9, 65, 130]


def _rand_signs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("k", AWKWARD_K)
@pytest.mark.parametrize("m,n", [(1, 1), (3, 7), (9, 8), (65, 17), (130, 129)])
def test_bgemm_dot_exact(isa: str, threads: int, k: int, m: int, n: int, rng: np.random.Generator) -> None:
    a = K.pack_rows(_rand_signs(rng, m, k))
    w_rows = K.pack_rows(_rand_signs(rng, n, k))
    got = K.bgemm(a, K.to_panels(w_rows), n, k)
    dot = R.bgemm_dot_ref(a, w_rows, k)
    np.testing.assert_array_equal(got, dot.astype(np.float32))
    assert np.all(np.abs(dot) <= k) and np.all((dot - k) % 2 == 0)


def test_dot_identity_extremes(isa: str) -> None:
    """a.a = K and a.(-a) = -K: the popcount identity and the padding bits in one check."""
    for k in (1, 63, 65, 2048):
        x = _rand_signs(np.random.default_rng(k), 4, k)
        a, na = K.pack_rows(x), K.pack_rows(-x)
        np.testing.assert_array_equal(np.diag(K.bgemm(a, K.to_panels(a), 4, k)), np.full(4, k, np.float32))
        np.testing.assert_array_equal(np.diag(K.bgemm(a, K.to_panels(na), 4, k)), np.full(4, -k, np.float32))


@pytest.mark.parametrize("op_and", [False, True])
@pytest.mark.parametrize("k", [1, 53, 64, 65, 1985])
def test_popcount_gemm(isa: str, op_and: bool, k: int, rng: np.random.Generator) -> None:
    g, m, n = 2, 11, 13
    a_bits, b_bits = rng.random((g, m, k)) < 0.5, rng.random((g, n, k)) < 0.5
    a, b = R.pack_bits_ref(a_bits), R.pack_bits_ref(b_bits)
    got = K.popcount_gemm(a, np.stack([R.to_panels_ref(b[i]) for i in range(g)]), n, op_and)
    both = a_bits[:, :, None, :] & b_bits[:, None] if op_and else a_bits[:, :, None, :] ^ b_bits[:, None]
    np.testing.assert_array_equal(got, both.sum(-1))


@pytest.mark.parametrize("k", [3, 64, 130])
@pytest.mark.parametrize("res_cols", [None, "n", "tile"])
@pytest.mark.parametrize("with_rprelu", [False, True])
def test_fused_output_transform(
    isa: str, threads: int, k: int, res_cols: str | None, with_rprelu: bool, rng: np.random.Generator
) -> None:
    m, n = 70, 24
    a = K.pack_rows(rng.standard_normal((m, k)).astype(np.float32))
    w = K.pack_rows(rng.standard_normal((n, k)).astype(np.float32))
    scale = rng.random(n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    residual = None if res_cols is None else rng.standard_normal((m, n if res_cols == "n" else 8)).astype(np.float32)
    rprelu = None
    if with_rprelu:
        rprelu = tuple(rng.standard_normal(n).astype(np.float32) for _ in range(3))
    got = K.bgemm(a, K.to_panels(w), n, k, scale=scale, bias=bias, residual=residual, rprelu=rprelu)
    want = R.epilogue_ref(R.bgemm_dot_ref(a, w, k), scale, bias, residual, rprelu)
    np.testing.assert_array_equal(got, want)
    out = rng.standard_normal((m, n)).astype(np.float32)
    before = out.copy()
    K.bgemm(a, K.to_panels(w), n, k, scale=scale, bias=bias, residual=residual, rprelu=rprelu, out=out, accumulate=True)
    np.testing.assert_array_equal(
        out, R.epilogue_ref(R.bgemm_dot_ref(a, w, k), scale, bias, residual, rprelu, out=before)
    )


def test_batched_bgemm_with_scalar_scale(isa: str, rng: np.random.Generator) -> None:
    """The attention score form: per-(window, head) operands, one scalar scale (1/sqrt(64))."""
    g, s, d = 6, 53, 64
    q = K.pack_rows(_rand_signs(rng, g, s, d))
    k_rows = K.pack_rows(_rand_signs(rng, g, s, d))
    got = K.bgemm(q, K.to_panels(k_rows), s, d, scale=0.125)
    want = np.stack([R.bgemm_dot_ref(q[i], k_rows[i], d) for i in range(g)]).astype(np.float32) * np.float32(0.125)
    np.testing.assert_array_equal(got, want)


def test_bad_shapes_raise() -> None:
    a = np.zeros((3, 2), dtype=np.uint64)
    with pytest.raises(ValueError):
        K.bgemm(a, np.zeros((1, 2, 8), np.uint64), 8, 64)  # K=64 needs 1 word, a has 2
    with pytest.raises(ValueError):
        K.bgemm(a, np.zeros((1, 2, 8), np.uint64), 8, 128, out=np.zeros((3, 8), np.float64))
