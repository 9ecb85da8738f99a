import numpy as np
import pytest
import torch

from bhvit.train.config import LossConfig
from bhvit.train.losses import combine, kd_loss, loss_weights, reg_loss


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kd_matches_formula_and_ignores_teacher_grad():
    s = torch.randn(5, 7, requires_grad=True)
    t = torch.randn(5, 7, requires_grad=True)
    got = kd_loss(s, t)
    p = np.exp(_np_log_softmax(t.detach().numpy()))
    ref = -(p * _np_log_softmax(s.detach().numpy())).sum(-1).mean()
    assert got.item() == pytest.approx(ref, rel=1e-6)
    got.backward()
    assert t.grad is None and s.grad is not None
    # minimum over students is at student == teacher (up to a constant): the gradient vanishes there
    s2 = t.detach().clone().requires_grad_(True)
    kd_loss(s2, t).backward()
    assert s2.grad.abs().max() < 1e-6


def test_reg_loss_forms():
    w1 = torch.tensor([[0.5, -1.5], [1.0, 0.0]])  # | |w| - 1 | = 0.5, 0.5, 0, 1 → sum 2, n 4
    w2 = torch.tensor([2.0, -1.0])  # → 1, 0 → sum 1, n 2
    assert reg_loss([w1, w2], "paper").item() == pytest.approx(3 / 6)
    assert reg_loss([w1, w2], "authors").item() == pytest.approx((2 / 4 + 1 / 2) / 2)
    w = torch.tensor([0.3, -2.0], requires_grad=True)
    reg_loss([w]).backward()
    assert w.grad.tolist() == pytest.approx([-0.5, -0.5])  # d/dw |(|w|-1)| / n


def test_paper_schedule_turns_on_regularization_in_last_tenth():
    cfg = LossConfig(mode="paper", teacher="t.pt")
    early, late = loss_weights(cfg, 89, 100), loss_weights(cfg, 90, 100)
    assert (early.ce, early.kd, early.reg) == pytest.approx((0.2, 0.8, 0.0))
    assert (late.ce, late.kd, late.reg) == pytest.approx((0.1, 0.8, 0.1))
    kd = loss_weights(LossConfig(mode="kd", teacher="t"), 0, 10)
    assert (kd.ce, kd.kd, kd.reg) == (0.0, 1.0, 0.0)
    kr = loss_weights(LossConfig(mode="kd_reg", teacher="t"), 0, 10)
    assert (kr.ce, kr.kd, kr.reg) == pytest.approx((0.0, 0.9, 0.1))


def test_combine_named_losses():
    cfg = LossConfig(mode="paper", teacher="t.pt", label_smoothing=0.0)
    logits, teacher = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 1])
    w = torch.full((3, 3), 0.5, requires_grad=True)
    out = combine(loss_weights(cfg, 99, 100), logits, target, teacher, [w], cfg)
    assert set(out) == {"loss", "task_loss", "kd_loss", "reg_loss"}
    expect = 0.1 * out["task_loss"] + 0.8 * out["kd_loss"] + 0.1 * out["reg_loss"]
    assert out["loss"].item() == pytest.approx(expect.item())
    out["loss"].backward()
    assert w.grad is not None
    # before the last tenth L_re is reported but carries no gradient
    w.grad = None
    out = combine(loss_weights(cfg, 0, 100), logits, target, teacher, [w], cfg)
    assert out["reg_loss"].item() == pytest.approx(0.5) and not out["reg_loss"].requires_grad


def test_loss_config_validation():
    with pytest.raises(ValueError, match="needs a teacher"):
        LossConfig(mode="paper")
    with pytest.raises(ValueError, match="λ \\+ β"):
        LossConfig(mode="paper", teacher="t", kd_weight=0.95, reg_weight=0.1)
