"""The training-path autograd Functions (issue 12: a cheaper step) against the plain autograd formulation.

Each fused Function must give the same forward values, bit for bit, as the formula it replaces written
with ordinary torch ops (which autograd differentiates), and the same gradients up to float rounding
(sums taken in another order). Sizes include maps smaller than the shifts (1×1, 2×3) and odd ones.
"""

from __future__ import annotations

import copy

import pytest
import torch

import bhvit
from bhvit.layers import fused_training, prelu_grads, rprelu, shift_branches, shift_branches_reference


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _grads(out: torch.Tensor, leaves: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, leaves, g))


@pytest.mark.parametrize("kernels", [(3,), (5,), (3, 5)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (5, 9)])
def test_shift_branches_match_rolls(kernels: tuple[int, ...], hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    c = 12
    branches = tuple((axis, k) for k in kernels for axis in ("h", "w", "c"))
    x, out0 = torch.randn(2, *hw, c), torch.randn(2, *hw, c)
    params = [torch.randn(c) for _ in range(2 * len(branches))]
    ref = _leaves(out0, x, *params)
    new = _leaves(out0, x, *params)

    def pairs(p):
        return list(zip(p[0::2], p[1::2]))

    want = shift_branches_reference(ref[0], ref[1], branches, pairs(ref[2:]))
    got = shift_branches(new[0], new[1], branches, pairs(new[2:]))
    assert torch.equal(got, want)  # forward: bit-identical
    g = torch.randn_like(want)
    for a, b in zip(_grads(got, new, g), _grads(want, ref, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _rprelu_reference(x: torch.Tensor, b1: torch.Tensor, a: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """RPReLU as three autograd ops (how the model wrote it before the fused Function)."""
    y = torch.nn.functional.prelu((x - b1).reshape(-1, x.shape[-1]), a)
    return y.reshape(x.shape) + b2


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 4, 16), (1, 1, 1)])
def test_rprelu_matches_three_ops(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    c = shape[-1]
    x = torch.randn(shape)
    x.view(-1)[:3] = torch.tensor([0.0, 0.25, -0.5])[: x.numel()]  # exact zeros and values at t = 0 below
    b1, a, b2 = torch.randn(c), torch.randn(c), torch.randn(c)
    b1[0] = 0.25  # t = x − b1 is exactly 0 at x = 0.25 in channel 0 (x[..., 1] is 0.25 only if c > 1)
    ref, new = _leaves(x, b1, a, b2), _leaves(x, b1, a, b2)
    want, got = _rprelu_reference(*ref), rprelu(*new)
    assert torch.equal(got, want)
    g = torch.randn_like(want)
    for name, p, q in zip(("x", "b1", "a", "b2"), _grads(got, new, g), _grads(want, ref, g)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_rprelu_on_a_channels_last_view() -> None:
    """The MSGDC feeds a permuted conv output; the Function's reshapes must keep the gradient's layout right."""
    torch.manual_seed(2)
    x = torch.randn(2, 8, 5, 6).permute(0, 2, 3, 1)  # (B, H, W, C) view of an NCHW tensor: not contiguous
    b1, a, b2 = torch.randn(8), torch.rand(8), torch.randn(8)
    ref, new = _leaves(x, b1, a, b2), _leaves(x, b1, a, b2)
    assert torch.equal(rprelu(*new), _rprelu_reference(*ref))
    g = torch.randn(2, 5, 6, 8)
    for p, q in zip(_grads(rprelu(*new), new, g), _grads(_rprelu_reference(*ref), ref, g)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(300, 13), (64, 8), (1, 1), (130, 1024)])
def test_prelu_grads_native_pass(shape: tuple[int, int]) -> None:
    """The training extension's one-pass PReLU backward: ∂t bit for bit as torch's kernel (t = 0 included), the
    three column sums within rounding of torch's, in place too, and the same bits on 1 and 2 threads (the
    extension follows torch's thread count)."""
    from bhvit.layers import _native_prelu_backward

    if _native_prelu_backward() is None:
        pytest.skip("the native extension bhvit._C is not built")
    torch.manual_seed(4)
    g, t, a = torch.randn(shape), torch.randn(shape), torch.randn(shape[1])
    t.view(-1)[::7] = 0.0
    want_dt, want_ga = torch.ops.aten._prelu_kernel_backward(g, t, a)
    want = (want_ga.sum(0), want_dt.sum(0), g.sum(0))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = prelu_grads(g, t, a)
        torch.set_num_threads(2)
        two = prelu_grads(g, t, a)
        inplace = prelu_grads(g.clone(), t, a, in_place=True)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], want_dt) and torch.equal(inplace[0], want_dt)
    for x, y, z, w in zip(one[1:], two[1:], inplace[1:], want):
        assert torch.equal(x, y) and torch.equal(x, z)
        torch.testing.assert_close(x, w, rtol=1e-5, atol=1e-5 * float(w.abs().max()) + 1e-6)


def _model_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fused: bool):
    with fused_training(fused):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attn_quant", ["gsb", "lsq"])
def test_model_step_fused_equals_plain(attn_quant: str, checkpointing: bool) -> None:
    """A whole binary model: the fused training path gives the same loss bit for bit, the same running
    statistics, and every parameter's gradient within float rounding of the op-by-op path."""
    torch.manual_seed(3)
    model = bhvit.create_model(
        "bhvit_test", precision="binary", attn_quant=attn_quant, img_size=64, window_size=2
    ).train()
    model.set_grad_checkpointing(checkpointing)
    with torch.no_grad():  # move every zero / constant initialisation (biases, shift LayerScales, slopes) off
        for name, p in model.named_parameters():
            if ".attn_quant." not in name:
                p.add_(torch.randn_like(p) * 0.1)
    state = copy.deepcopy(model.state_dict())
    x, y = torch.randn(3, 3, 64, 64), torch.randint(0, 10, (3,))
    loss_f, grads_f, bufs_f = _model_step(model, x, y, fused=True)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    loss_p, grads_p, bufs_p = _model_step(model, x, y, fused=False)
    assert torch.equal(loss_f, loss_p)
    assert grads_f.keys() == grads_p.keys() and len(grads_f) == len(list(model.parameters()))
    # Biases that feed a batch norm additively have a gradient of exactly 0 in exact arithmetic, so their
    # float gradients are pure rounding noise: the tolerance is scaled by the largest gradient of the model.
    # Measured: differences ≤ 1.4e-6 with a largest gradient of 1.5; a 1 % error in one term fails.
    atol = 1e-5 * max(g.abs().max().item() for g in grads_p.values())
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=atol, msg=name)
    for name in bufs_p:
        assert torch.equal(bufs_f[name], bufs_p[name]), name


def test_prelu_grads_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed without native code (BHVIT_NO_NATIVE), prelu_grads runs torch's ops: the same ∂t."""
    import bhvit.layers

    torch.manual_seed(5)
    g, t, a = torch.randn(70, 9), torch.randn(70, 9), torch.randn(9)
    native = prelu_grads(g, t, a)
    monkeypatch.setattr(bhvit.layers, "_native_prelu_backward", lambda: None)
    fallback = prelu_grads(g, t, a)
    assert torch.equal(native[0], fallback[0])
    for x, y in zip(native[1:], fallback[1:]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
