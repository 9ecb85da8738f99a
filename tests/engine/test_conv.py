"""Binary convolutions on channel-packed pixels: grouped dilated 3x3 'same' and 2x2 stride 2."""

from __future__ import annotations

import numpy as np
import pytest

from bhvit.engine import kernels as K
from bhvit.engine import reference as R


def _signs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def _run(rng, b, h, w, c, cout, groups, kernel, stride, pad, dil, **kw):  # noqa: ANN001, ANN003
    x = _signs(rng, b, h, w, c)
    wt = _signs(rng, cout, c // groups, *kernel)
    wp, wpop = K.pack_conv_weight(wt, groups)
    got = K.bconv(
        K.pack_rows(x), c, wp, wpop, cout, groups=groups, kernel=kernel, stride=stride, pad=pad, dil=dil, **kw
    )
    dot = R.conv_dot_ref(x, wt, groups, stride, pad, dil)
    return got, dot


@pytest.mark.parametrize("dil", [1, 3, 5])
@pytest.mark.parametrize("c,groups", [(4, 4), (12, 4), (64, 4), (100, 4), (128, 4), (20, 1)])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (11, 6)])
def test_dilated_same_conv_exact(
    isa: str, dil: int, c: int, groups: int, hw: tuple[int, int], rng: np.random.Generator
) -> None:
    got, dot = _run(rng, 2, *hw, c, c, groups, (3, 3), 1, dil, dil)
    np.testing.assert_array_equal(got, dot.astype(np.float32))


def test_border_taps_contribute_zero(isa: str) -> None:
    """All-(-1) input and weights: each output equals Cg times its number of valid taps."""
    c, h, w, dil = 8, 5, 4, 3
    x = -np.ones((1, h, w, c), np.float32)
    wt = -np.ones((c, c // 4, 3, 3), np.float32)
    wp, wpop = K.pack_conv_weight(wt, 4)
    got = K.bconv(K.pack_rows(x), c, wp, wpop, c, groups=4, kernel=(3, 3), pad=dil, dil=dil)
    rows = np.array([sum(0 <= i + d * dil < h for d in (-1, 0, 1)) for i in range(h)])
    cols = np.array([sum(0 <= j + d * dil < w for d in (-1, 0, 1)) for j in range(w)])
    want = (rows[:, None] * cols[None, :] * (c // 4)).reshape(-1)
    np.testing.assert_array_equal(got[0], np.repeat(want[:, None], c, 1).astype(np.float32))


@pytest.mark.parametrize("c,cout", [(3, 6), (64, 128), (65, 130), (128, 256)])
@pytest.mark.parametrize("hw", [(2, 2), (4, 6), (8, 8)])
def test_downsample_2x2_stride2(
    isa: str, threads: int, c: int, cout: int, hw: tuple[int, int], rng: np.random.Generator
) -> None:
    got, dot = _run(rng, 3, *hw, c, cout, 1, (2, 2), 2, 0, 1)
    np.testing.assert_array_equal(got, dot.astype(np.float32))


def test_conv_fused_transform_and_accumulate(isa: str, threads: int, rng: np.random.Generator) -> None:
    """Three dilation branches summed in place, each with its own RPReLU (the MSGDC pattern)."""
    b, h, w, c = 2, 9, 9, 32
    x = _signs(rng, b, h, w, c)
    xp = K.pack_rows(x)
    out = np.zeros((b, h * w, c), np.float32)
    want = np.zeros_like(out)
    for dil in (1, 3, 5):
        wt = _signs(rng, c, c // 4, 3, 3)
        wp, wpop = K.pack_conv_weight(wt, 4)
        scale, bias = rng.random(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        rp = tuple(rng.standard_normal(c).astype(np.float32) for _ in range(3))
        K.bconv(
            xp,
            c,
            wp,
            wpop,
            c,
            groups=4,
            kernel=(3, 3),
            pad=dil,
            dil=dil,
            scale=scale,
            bias=bias,
            rprelu=rp,
            out=out,
            accumulate=True,
        )
        want = R.epilogue_ref(R.conv_dot_ref(x, wt, 4, 1, dil, dil), scale, bias, None, rp, out=want)
    np.testing.assert_array_equal(out, want)


def test_residual_tiled_along_channels(isa: str, rng: np.random.Generator) -> None:
    """Binary downsampling adds AvgPool(x) tiled twice along channels: residual index n % C."""
    got_plain, dot = _run(rng, 1, 4, 4, 16, 32, 1, (2, 2), 2, 0, 1)
    rng2 = np.random.default_rng(5)
    res = rng2.standard_normal((1, 4, 16)).astype(np.float32)
    got, dot2 = _run(np.random.default_rng(1234), 1, 4, 4, 16, 32, 1, (2, 2), 2, 0, 1, residual=res[0])
    np.testing.assert_array_equal(got, R.epilogue_ref(dot2, None, None, res[0]))
