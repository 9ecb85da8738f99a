"""Fused float helpers of the packed forward, against NumPy transcriptions and the model's torch maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bhvit.engine import kernels as K
from bhvit.engine import reference as R


@pytest.mark.parametrize("r", [1, 2, 3, 4, 8])  # 4 and 8 have their own vectorised loops
def test_group_mean(threads: int, r: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 70, 16 * r)).astype(np.float32)
    got = K.group_mean(x, r)
    np.testing.assert_array_equal(got, R.group_mean_ref(x, r))
    np.testing.assert_allclose(
        got, torch.nn.functional.avg_pool1d(torch.from_numpy(x), r).numpy(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("kernels", [[3], [5], [3, 5]])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (6, 9)])
def test_shift_add(isa: str, threads: int, kernels: list[int], hw: tuple[int, int], rng: np.random.Generator) -> None:
    c = 12
    x = rng.standard_normal((2, *hw, c)).astype(np.float32)
    out0 = rng.standard_normal(x.shape).astype(np.float32)
    ls = rng.standard_normal((3 * len(kernels), 2, c)).astype(np.float32)
    out = out0.copy()
    K.shift_add(out, x, kernels, ls)
    np.testing.assert_array_equal(out, R.shift_add_ref(out0, x, kernels, ls))


def test_shift_matches_model_layers(rng: np.random.Generator) -> None:
    """Same values as the model's ShiftBranches (bhvit.layers) on random LayerScales."""
    from bhvit.layers import shift_channel_mix, shift_mean

    x = torch.from_numpy(rng.standard_normal((2, 5, 6, 8)).astype(np.float32))
    ls = torch.from_numpy(rng.standard_normal((6, 2, 8)).astype(np.float32))
    want = torch.zeros_like(x)
    for t, k in enumerate((3, 5)):
        for j, y in enumerate((shift_mean(x, 1, k), shift_mean(x, 2, k), shift_channel_mix(x, k // 2))):
            want = want + (y * ls[3 * t + j, 0] + ls[3 * t + j, 1])
    out = np.zeros(x.shape, np.float32)
    K.shift_add(out, x.numpy(), [3, 5], ls.numpy())
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-6, atol=1e-6)


def test_post_affine(isa: str, rng: np.random.Generator) -> None:
    m, n, k = 9, 16, 70
    a = K.pack_rows(rng.standard_normal((m, k)).astype(np.float32))
    w = K.pack_rows(rng.standard_normal((n, k)).astype(np.float32))
    post = (rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))
    rp = tuple(rng.standard_normal(n).astype(np.float32) for _ in range(3))
    got = K.bgemm(a, K.to_panels(w), n, k, scale=0.5, rprelu=rp, post=post)
    np.testing.assert_array_equal(got, R.epilogue_ref(R.bgemm_dot_ref(a, w, k), 0.5, None, None, rp, post=post))
