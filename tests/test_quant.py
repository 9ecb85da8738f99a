"""Quantizers against a float64 NumPy transcription of SPEC §3, values and gradients element-wise.

Inputs include exact zeros and values at the clip points (±1, τ, level boundaries).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bhvit.quant import (
    GSBAttentionQuantizer,
    LSQAttentionQuantizer,
    QuantConv2d,
    QuantLinear,
    SignQuantizer,
    WeightBinarizer,
    binarize_weight,
    get_quantizer,
    gsb_attention,
    lsq_attention,
    sign_ste,
)

EDGES = [-2.0, -1.0, -0.75, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5]


def _grad(fn, *tensors, upstream=None):
    """Run fn on leaf copies and backprop ``upstream`` (random by default); return (out, grads)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    g = upstream if upstream is not None else torch.randn_like(out)
    out.backward(g)
    return out.detach(), [leaf.grad for leaf in leaves], g


# --- sign / ApproxSign -------------------------------------------------------------------------
def np_sign_grad(x: np.ndarray) -> np.ndarray:
    left = (x >= -1) & (x <= 0)
    right = (x > 0) & (x <= 1)
    return left * (2 + 2 * x) + right * (2 - 2 * x)


def test_sign_forward_backward_matches_formula():
    x = torch.tensor(EDGES + list(np.linspace(-1.3, 1.3, 27)), dtype=torch.float32)
    out, (gx,), g = _grad(sign_ste, x)
    xn = x.double().numpy()
    np.testing.assert_array_equal(out.numpy(), np.sign(xn))
    assert out[x == 0].eq(0).all()  # sign(0) = 0
    np.testing.assert_allclose(gx.double().numpy(), np_sign_grad(xn) * g.double().numpy(), rtol=1e-6, atol=1e-7)
    assert gx[x.abs() > 1].eq(0).all() and gx[x.abs() == 1].eq(0).all()
    assert SignQuantizer.precision == 1


# --- weights ----------------------------------------------------------------------------------
def np_binarize(w: np.ndarray, recu: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Forward value, centred/standardised weights, and τ, all float64."""
    axes = tuple(range(1, w.ndim))
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    wc = w - w.mean(axis=axes, keepdims=True)
    tau = 1.0
    if recu:
        wc = wc / (np.sqrt(wc.var(axis=axes, ddof=1, keepdims=True) + 1e-5) / 2 / math.sqrt(2))
        tau = float(-np.abs(wc).mean() * math.log(2 - 2 * 0.92))
    return alpha * np.sign(wc), wc, tau


def np_binarize_grad(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """d/dW of the plain binarizer: the STE mask, then the centring's projection."""
    axes = tuple(range(1, w.ndim))
    wc = w - w.mean(axis=axes, keepdims=True)
    m = g * (np.abs(wc) <= 1.0)
    return m - m.mean(axis=axes, keepdims=True)


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3, 3), (3, 8, 2, 2)])
def test_weight_binarizer_plain(shape):
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.8
    w.view(shape[0], -1)[0, 0] = 0.0  # an exact zero
    w.view(shape[0], -1)[1, :2] = torch.tensor([3.0, -3.0])  # far outside the clip
    out, (gw,), g = _grad(binarize_weight, w)
    ref, _, _ = np_binarize(w.double().numpy(), recu=False)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(
        gw.double().numpy(), np_binarize_grad(w.double().numpy(), g.double().numpy()), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3, 3)])
def test_weight_binarizer_recu_forward_and_clip(shape):
    torch.manual_seed(1)
    w = torch.randn(shape) * 0.05
    out, (gw,), g = _grad(lambda t: binarize_weight(t, recu=True), w)
    ref, wc, tau = np_binarize(w.double().numpy(), recu=True)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-6)
    # the gradient vanishes exactly on the rows' entries clipped by τ ... (checked through autograd in
    # float64 on the same formula, including the standardisation's own derivative)
    w64 = w.double().clone().requires_grad_(True)
    axes = tuple(range(1, w.dim()))
    c = w64 - w64.mean(dim=axes, keepdim=True)
    c = c / (torch.sqrt(c.var(dim=axes, keepdim=True) + 1e-5) / 2 / math.sqrt(2))
    clipped = c.clamp(-tau, tau)
    (clipped * g.double()).sum().backward()
    np.testing.assert_allclose(gw.double().numpy(), w64.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert (np.abs(wc) > tau).any(), "test data should exercise the ReCU clip"


def test_recu_applies_to_convolutions_too():
    conv = QuantConv2d(
        8, 8, 3, padding=1, groups=4, weight_quantizer=WeightBinarizer(recu=True), input_quantizer=SignQuantizer()
    )
    assert conv.weight_quantizer.recu
    x = torch.randn(2, 8, 5, 5)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


# --- LSQ ----------------------------------------------------------------------------------------
def np_lsq(x, alpha, z, g_up):
    """Forward and gradients (x, α, z) of Â = clamp(round(x/α + z), 0, 3)·α with LSQ's scale g."""
    heads = alpha.size
    g = heads / math.sqrt(x.size * 3)
    a = alpha.reshape(1, -1, 1, 1)
    zz = z.reshape(1, -1, 1, 1)
    y = x / a + zz
    r = np.round(y)  # NumPy rounds half to even, like torch
    inside = (r >= 0) & (r <= 3)
    out = np.clip(r, 0, 3) * a
    dx = g_up * inside
    dalpha = (g_up * (inside * (-x / a) + np.clip(r, 0, 3))).sum(axis=(0, 2, 3)) * g
    dz = (g_up * inside * a).sum(axis=(0, 2, 3)) * g
    return out, dx, dalpha, dz


def test_lsq_forward_backward_matches_formula():
    torch.manual_seed(2)
    heads = 3
    x = torch.rand(2, heads, 6, 6) * 3
    alpha = torch.tensor([1.0, 0.5, 0.8])
    z = torch.tensor([0.0, 0.25, -0.1])
    x[0, 0, 0, :4] = torch.tensor([0.0, 3.0, 4.5, 1.25])  # zero, top level, beyond the clip
    x[0, 1, 0, :2] = torch.tensor([1.375, -0.125])  # y = 3.0 exactly, y = 0 exactly
    out, (gx, ga, gz), g = _grad(lsq_attention, x, alpha, z)
    ref, dx, da, dz = np_lsq(x.double().numpy(), alpha.double().numpy(), z.double().numpy(), g.double().numpy())
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gx.double().numpy(), dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ga.double().numpy(), da, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gz.double().numpy(), dz, rtol=1e-4, atol=1e-6)


def test_lsq_unit_step_is_round_3a():
    a = torch.softmax(torch.randn(2, 4, 9, 9), dim=-1)
    q = LSQAttentionQuantizer(4).eval()
    torch.testing.assert_close(q(a), (3 * a).round().clamp(0, 3))


def test_lsq_first_batch_initialisation():
    torch.manual_seed(3)
    a = torch.softmax(torch.randn(3, 2, 5, 5) * 3, dim=-1)
    q = LSQAttentionQuantizer(2)
    with torch.no_grad():
        q.zero_point.fill_(0.2)
    q.train()(a)
    x = 3 * a.double().numpy()
    alpha = 2 * np.abs(x).mean(axis=(2, 3)).mean(axis=0) / math.sqrt(3)
    zp = 0.9 * 0.2 + 0.1 * x.min(axis=(0, 2, 3))
    np.testing.assert_allclose(q.alpha.detach().double().numpy(), alpha, rtol=1e-6)
    np.testing.assert_allclose(q.zero_point.detach().double().numpy(), zp, rtol=1e-6)
    assert q.init_state.item() == 1
    before = q.alpha.detach().clone()
    q(a * 0.5)  # initialised once only
    torch.testing.assert_close(q.alpha.detach(), before)


def test_lsq_does_not_initialise_in_eval():
    q = LSQAttentionQuantizer(2).eval()
    q(torch.softmax(torch.randn(1, 2, 4, 4), -1))
    assert q.init_state.item() == 0 and q.alpha.detach().eq(1).all()


# --- GSB ----------------------------------------------------------------------------------------
def np_gsb(a, alpha, alpha2, alpha3, g_up):
    q = a / alpha
    rowmax = q.max(axis=-1, keepdims=True)
    base = np.clip(np.round(q), 0, 1)
    t2 = (q > 0.9 * rowmax).astype(float)
    t1 = (q > 0.7 * rowmax).astype(float) - t2
    t0 = base - t1 - t2
    mix = t0 + alpha2 * t1 + alpha3 * t2
    out = alpha * mix
    middle = (q >= 0) & (q <= 1)
    d_a = alpha * mix * g_up
    d_alpha = (mix * (1 - q * middle) * g_up).sum()
    d_alpha2 = (alpha * t1 * g_up).sum()
    d_alpha3 = (alpha * t2 * g_up).sum()
    return out, d_a, d_alpha, d_alpha2, d_alpha3


def test_gsb_forward_backward_matches_formula():
    torch.manual_seed(4)
    a = torch.softmax(torch.randn(2, 2, 7, 7) * 2, dim=-1)
    a[0, 0, 0] = torch.tensor([0.0, 0.0, 0.3, 0.7, 0.0, 0.0, 0.0])  # exact zeros, q at 0.9·max
    alpha, alpha2, alpha3 = torch.tensor(0.2), torch.tensor(1.3), torch.tensor(1.7)
    out, (ga, gal, gal2, gal3), g = _grad(gsb_attention, a, alpha, alpha2, alpha3)
    ref = np_gsb(a.double().numpy(), 0.2, 1.3, 1.7, g.double().numpy())
    np.testing.assert_allclose(out.double().numpy(), ref[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ga.double().numpy(), ref[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gal.item(), ref[2], rtol=1e-4)
    np.testing.assert_allclose(gal2.item(), ref[3], rtol=1e-4)
    np.testing.assert_allclose(gal3.item(), ref[4], rtol=1e-4)


def test_gsb_module_defaults():
    q = GSBAttentionQuantizer()
    assert q.alpha.item() == pytest.approx(0.005) and q.alpha2.item() == 1 and q.alpha3.item() == 1


# --- layers and registry ----------------------------------------------------------------------
def test_quant_layers_without_quantizers_are_plain_layers():
    torch.manual_seed(5)
    lin = QuantLinear(6, 4, bias=True)
    ref = torch.nn.Linear(6, 4)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(lin(x), ref(x))
    conv = QuantConv2d(4, 8, 3, padding=2, dilation=2, groups=4)
    refc = torch.nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=4)
    refc.load_state_dict(conv.state_dict())
    xi = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(conv(xi), refc(xi))


def test_binary_conv_zero_padding_contributes_zero():
    """sign before padding: a border output sees only the valid taps."""
    conv = QuantConv2d(
        1, 1, 3, padding=1, bias=False, input_quantizer=SignQuantizer(), weight_quantizer=WeightBinarizer()
    )
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[0, 0, 1, 1] = 3.0  # centred weights: 8 taps −1/3·…, the centre positive
    x = torch.ones(1, 1, 4, 4)
    w = binarize_weight(conv.weight).detach()
    y = conv(x).detach()
    # corner: 4 valid taps (centre + 3 neighbours), interior: all 9
    assert y[0, 0, 0, 0].item() == pytest.approx(w[0, 0, 1:, 1:].sum().item())
    assert y[0, 0, 1, 1].item() == pytest.approx(w.sum().item())


def test_quantizer_registry():
    assert isinstance(get_quantizer("ste_sign"), SignQuantizer)
    assert get_quantizer("recu_weight").recu
    assert isinstance(get_quantizer("lsq", 4), LSQAttentionQuantizer)
    with pytest.raises(ValueError, match="unknown quantizer"):
        get_quantizer("nope")


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_stride2", "conv_same"])
def test_fused_sign_layers_equal_the_composed_form(kind):
    """QuantLinear/QuantConv2d fuse sign into the layer; values and gradients equal sign_ste + layer
    (a string padding such as "same" takes the composed path: its backward needs explicit sizes)."""
    torch.manual_seed(6)
    if kind == "linear":
        layer = QuantLinear(12, 5, input_quantizer=SignQuantizer(), weight_quantizer=WeightBinarizer())
        x = torch.randn(2, 7, 12)
        x[0, 0, :3] = torch.tensor([0.0, 1.0, -1.0])
        composed = lambda t: torch.nn.functional.linear(sign_ste(t), binarize_weight(layer.weight))  # noqa: E731
    else:
        stride, pad, dil = {"conv": (1, 3, 3), "conv_stride2": (2, 0, 1), "conv_same": (1, "same", 2)}[kind]
        k = 2 if kind == "conv_stride2" else 3
        layer = QuantConv2d(
            8,
            8,
            k,
            stride=stride,
            padding=pad,
            dilation=dil,
            groups=4 if k == 3 else 1,
            bias=True,
            input_quantizer=SignQuantizer(),
            weight_quantizer=WeightBinarizer(),
        )
        x = torch.randn(2, 8, 6, 6)
        x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, -1.0])
        composed = lambda t: layer._conv_forward(sign_ste(t), binarize_weight(layer.weight), layer.bias)  # noqa: E731
    out_a, (gx_a,), g = _grad(layer, x)
    gw_a = layer.weight.grad.clone()
    layer.weight.grad = None
    out_b, (gx_b,), _ = _grad(composed, x, upstream=g)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_a, layer.weight.grad, rtol=1e-5, atol=1e-6)
