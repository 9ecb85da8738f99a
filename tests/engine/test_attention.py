"""Attention pieces: binary q.k^T scores and the mask decomposition of A_hat . v (LSQ and GSB)."""

from __future__ import annotations

import numpy as np
import pytest

from bhvit.engine import kernels as K
from bhvit.engine import reference as R


@pytest.mark.parametrize("s", [1, 5, 50, 53, 64, 65, 100])
@pytest.mark.parametrize("d", [1, 16, 64, 65])
@pytest.mark.parametrize("r", [1, 3])
def test_masked_av_exact(isa: str, threads: int, s: int, d: int, r: int, rng: np.random.Generator) -> None:
    g = 5
    masks = rng.random((g, r, s, s)) < 0.4
    v = rng.standard_normal((g, s, d)).astype(np.float32)
    v_bias = rng.standard_normal(d).astype(np.float32)
    w = rng.standard_normal((g, r)).astype(np.float32)
    got = K.masked_av(K.pack_nonzero(masks), K.pack_cols_panels(v, v_bias), w, s, d)
    v_signs = np.where(v + v_bias < 0, -1, 1)
    np.testing.assert_array_equal(got, R.masked_av_ref(masks, v_signs, w))


def test_lsq_levels_decompose_into_three_masks(rng: np.random.Generator) -> None:
    """clamp(round(.), 0, 3) = [q>=1] + [q>=2] + [q>=3] (SPEC 3.3), so A_hat v = alpha sum_r T_r v."""
    g, s, d = 4, 53, 64
    qlev = rng.integers(0, 4, size=(g, s, s))
    v = np.where(rng.random((g, s, d)) < 0.5, -1.0, 1.0).astype(np.float32)
    alpha = rng.random(g).astype(np.float32)
    masks = np.stack([qlev >= 1, qlev >= 2, qlev >= 3], 1)
    got = K.masked_av(K.pack_nonzero(masks), K.pack_cols_panels(v), np.repeat(alpha[:, None], 3, 1), s, d)
    want = alpha[:, None, None].astype(np.float64) * (qlev @ v.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_gsb_decomposition_handles_negative_t0(rng: np.random.Generator) -> None:
    """GSB: T0 = base - T1 - T2 can be -1 (q > 0.7 rowmax but round(q) = 0); the engine uses
    A_hat = alpha (B + (a2 - 1) U + (a3 - a2) T2) with B = base, U = T1 + T2, all {0,1}."""
    g, s, d = 3, 50, 64
    q = rng.random((g, s, s)).astype(np.float32) * 0.6  # rowmax < 0.6: round(q) = 0 where q > 0.7 rowmax
    base = np.clip(np.round(q), 0, 1)
    rowmax = q.max(-1, keepdims=True)
    t2 = (q > 0.9 * rowmax).astype(np.float32)
    t1 = (q > 0.7 * rowmax).astype(np.float32) - t2
    t0 = base - t1 - t2
    assert (t0 < 0).any()
    alpha, a2, a3 = np.float32(0.01), np.float32(1.3), np.float32(2.1)
    a_hat = alpha * (t0 + a2 * t1 + a3 * t2)
    v = np.where(rng.random((g, s, d)) < 0.5, -1.0, 1.0).astype(np.float32)
    masks = np.stack([base > 0, (t1 + t2) > 0, t2 > 0], 1)
    w = np.tile(np.array([alpha, alpha * (a2 - 1), alpha * (a3 - a2)], np.float32), (g, 1))
    got = K.masked_av(K.pack_nonzero(masks), K.pack_cols_panels(v), w, s, d)
    np.testing.assert_allclose(got, a_hat.astype(np.float64) @ v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s", [1, 7, 50, 53, 65, 130])
def test_lsq_masks_match_the_model_quantizer(isa: str, s: int, rng: np.random.Generator) -> None:
    """Levels from the native kernel equal the float model's LSQ quantizer, ties included."""
    import torch

    from bhvit.quant import lsq_attention

    g, heads = 6, 3
    logits = torch.from_numpy(rng.standard_normal((g // heads, heads, s, s)).astype(np.float32) * 3)
    attn = logits.softmax(-1)
    attn[0, 0, 0, : min(s, 4)] = torch.tensor([1 / 6, 0.5, 0.25, 0.0])[: min(s, 4)]  # exact .5 ties at a=1, z=0
    alpha = torch.tensor([1.0, 0.4, 0.13])
    zero = torch.tensor([0.0, 0.3, -0.2])
    want = lsq_attention(attn * 3, alpha, zero)  # (B', heads, s, s) = level * a_h
    gs = heads / np.sqrt(attn.numel() * 3)
    a = (alpha - alpha * gs + alpha * gs).numpy()
    z = (zero - zero * gs + zero * gs).numpy()
    masks = K.lsq_masks(attn.reshape(g, s, s).numpy(), np.tile(a, g // heads), np.tile(z, g // heads))
    levels = sum(R.unpack_bits_ref(masks[:, i], s).astype(np.int64) for i in range(3)).astype(np.float32)
    np.testing.assert_array_equal(
        levels * np.tile(a, g // heads)[:, None, None],  # float32 product, as torch
        want.reshape(g, s, s).numpy(),
    )
