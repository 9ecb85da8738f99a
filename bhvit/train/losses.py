"""Losses of BHViT training (SPEC §4) and the loss mix.

* ``CE``: cross-entropy with label smoothing ε: targets ``(1−ε)·onehot + ε/K``.
* ``KD = −(1/B) Σ_b Σ_k softmax(t_b)_k · log_softmax(s_b)_k`` at temperature 1 (the authors'
  ``DistributionLoss``); the teacher's logits carry no gradient.
* ``L_re``, the regularisation that pulls latent binary weights to ±1 and so reduces sign
  oscillation. ``paper``: ``(1/n) Σ_i | |w_i| − 1 |`` over all n latent weights of all binary layers.
  ``authors``: the mean over tensors of per-tensor means, skipping the downsampling convs.
* The mix, per step t of T: ``paper``: ``(1−λ−β_t)·CE + λ·KD + β_t·L_re`` with ``β_t = β`` when
  ``t ≥ (1 − reg_fraction)·T`` else 0; ``kd``: ``KD``; ``kd_reg``: ``(1−β)·KD + β·L_re``;
  ``ce``: ``(1−β_t)·CE + β_t·L_re`` (β_t as in ``paper``; no teacher needed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bhvit.train.config import LossConfig


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy with label smoothing (computed in float32)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``−mean_b Σ_k softmax(teacher)·log_softmax(student)`` at T = 1; the teacher is detached."""
    p = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(p * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


def reg_loss(weights: Iterable[Tensor], form: str = "paper") -> Tensor:
    """``L_re`` over latent binary weights: ``(1/n)Σ||w|−1|`` (paper) or the mean of per-tensor means."""
    weights = list(weights)
    if not weights:
        return torch.zeros(())
    sums = torch.stack([(w.abs() - 1).abs().sum() for w in weights])
    if form == "paper":
        return sums.sum() / sum(w.numel() for w in weights)
    if form == "authors":
        return (sums / torch.tensor([w.numel() for w in weights], device=sums.device)).mean()
    raise ValueError(f"unknown L_re form {form!r}")


def reg_weights(model: nn.Module, form: str = "paper") -> list[Tensor]:
    """The latent weights L_re acts on: all binary layers (paper) or all but downsampling (authors)."""
    from bhvit.models.bhvit import downsample_convs
    from bhvit.quant import binary_weight_layers

    skip = {id(m) for m in downsample_convs(model)} if form == "authors" else set()
    return [m.weight for _, m in binary_weight_layers(model) if id(m) not in skip]


@dataclass(frozen=True)
class LossWeights:
    """Coefficients of CE, KD and L_re at one step."""

    ce: float
    kd: float
    reg: float


def loss_weights(cfg: LossConfig, step: int, total_steps: int) -> LossWeights:
    """The mix at ``step`` (0-based) of ``total_steps`` (see the module docstring)."""
    lam, beta = cfg.kd_weight, cfg.reg_weight
    beta_t = beta if step >= (1.0 - cfg.reg_fraction) * total_steps else 0.0
    if cfg.mode == "paper":
        return LossWeights(1.0 - lam - beta_t, lam, beta_t)
    if cfg.mode == "kd":
        return LossWeights(0.0, 1.0, 0.0)
    if cfg.mode == "kd_reg":
        return LossWeights(0.0, 1.0 - beta, beta)
    return LossWeights(1.0 - beta_t, 0.0, beta_t)


def combine(
    weights: LossWeights,
    logits: Tensor,
    target: Tensor,
    teacher_logits: Tensor | None,
    latent: list[Tensor],
    cfg: LossConfig,
) -> dict[str, Tensor]:
    """Named losses: ``loss`` (what is minimised), ``task_loss`` (CE), ``kd_loss``, ``reg_loss``.

    Terms with weight 0 are still reported for the curves (CE always, KD when a teacher ran, L_re when
    the recipe uses it at some step), L_re then without autograd.
    """
    out = {"task_loss": cross_entropy(logits, target, cfg.label_smoothing)}
    loss = weights.ce * out["task_loss"]
    if teacher_logits is not None:
        out["kd_loss"] = kd_loss(logits, teacher_logits)
        loss = loss + weights.kd * out["kd_loss"]
    if latent and weights.reg > 0:
        out["reg_loss"] = reg_loss(latent, cfg.reg_form)
        loss = loss + weights.reg * out["reg_loss"]
    elif latent and cfg.reg_weight > 0:
        with torch.no_grad():
            out["reg_loss"] = reg_loss(latent, cfg.reg_form)
    out["loss"] = loss
    return out
