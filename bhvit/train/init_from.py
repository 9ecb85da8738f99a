"""``--init-from``: start a model from the tensors of another checkpoint of the same architecture.

An fp teacher into a binary student (the two-step recipe of binary-network training), or a trained
model (ours or the authors' ``.pth``) into one fine-tuned on new data. Any file
:func:`bhvit.checkpoint.load_model` reads is a source; :func:`init_from_checkpoint` copies what fits
and :class:`InitReport` says what it copied, kept and left unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from bhvit.checkpoint import load_model
from bhvit.models.bhvit import BHViT, BHViTConfig
from bhvit.text import printable
from bhvit.upstream import resize_pos_embeds

# BHViTConfig fields an --init-from checkpoint may differ in: they change the quantizers (and the
# tensors only a quantizer has), regularisation, the classifier head, or no tensor at all.
INIT_FREE_FIELDS = (
    "precision",
    "attn_quant",
    "recu",
    "drop_path_rate",
    "norm_eps",
    "num_classes",
    "img_size",
    "window_size",
)
HEAD_PREFIX = "head."  # the classifier: BHViT.head


class InitMismatchError(ValueError):
    """An ``--init-from`` checkpoint of another architecture; the message says what differs."""


@dataclass(frozen=True)
class InitReport:
    """Which of the student's tensors ``init_from_checkpoint`` copied and which it left as initialised."""

    path: str
    copied: tuple[str, ...]
    head_skipped: tuple[str, ...]  # classifier tensors the checkpoint lacks or has in another shape
    fresh: tuple[str, ...]  # student tensors the checkpoint lacks (a quantizer its precision has not)
    unused: tuple[str, ...]  # checkpoint tensors the student lacks

    def summary(self) -> str:
        total = len(self.copied) + len(self.head_skipped) + len(self.fresh)
        parts = [f"init from {printable(self.path)}: copied {len(self.copied)} of {total} tensors"]
        if self.head_skipped:
            parts.append(f"classifier kept its initialisation (another class count): {', '.join(self.head_skipped)}")
        if self.fresh:
            parts.append(f"{len(self.fresh)} tensor(s) the checkpoint lacks kept theirs: {_first(self.fresh)}")
        if self.unused:
            parts.append(f"{len(self.unused)} checkpoint tensor(s) unused: {_first(self.unused)}")
        return "; ".join(parts)


def _first(names: tuple[str, ...] | list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f", … ({len(names) - n} more)" if len(names) > n else "")


def match_init(
    own: dict[str, Tensor], source: dict[str, Tensor], path: str, quantizers_differ: bool
) -> tuple[InitReport, list[str]]:
    """Sort the tensors of ``source`` for copying into a model whose state dict is ``own``.

    Returns the report and the differences that make ``source`` another architecture (empty when
    it may be copied). Rules: a tensor both have must have the same shape, except the classifier
    head (fine-tuning to another class count: the head keeps its initialisation); a tensor only one
    side has is allowed only when the models' precision or attention quantizer differ
    (``quantizers_differ``: it belongs to a quantizer one of them lacks).
    """
    copied = tuple(k for k in own if k in source and own[k].shape == source[k].shape)
    body = [k for k in own if not k.startswith(HEAD_PREFIX)]
    bad = [f"{k} {tuple(source[k].shape)} vs {tuple(own[k].shape)}" for k in body if k in source and k not in copied]
    fresh = tuple(k for k in body if k not in source)
    unused = tuple(k for k in source if k not in own and not k.startswith(HEAD_PREFIX))
    if not quantizers_differ:
        bad += [f"{k} only in the model" for k in fresh] + [f"{k} only in the checkpoint" for k in unused]
    head = tuple(k for k in own if k.startswith(HEAD_PREFIX) and k not in copied)
    return InitReport(str(path), copied, head, fresh, unused), bad


def _config_differences(source: dict[str, Any], own: dict[str, Any]) -> list[str]:
    """``field checkpoint-value vs model-value`` for every architecture field that differs."""
    return [f"{k} {source.get(k)} vs {v}" for k, v in own.items() if k not in INIT_FREE_FIELDS and source.get(k) != v]


def read_init_source(path: str, student: BHViTConfig) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Config (as a dict) and state dict of any checkpoint :func:`bhvit.checkpoint.load_model` reads: ours
    (safetensors or a training checkpoint) or the authors' ``.pth``, with the position embeddings
    resized (bicubic) to ``student``'s input size when the checkpoint was trained at another size."""
    source, _ = load_model(path)
    state = source.state_dict()
    if source.config.img_size != student.img_size:
        resize_pos_embeds(state, student)
    return source.config.to_dict(), state


def init_from_checkpoint(model: BHViT, path: str) -> InitReport:
    """Copy the tensors of the checkpoint at ``path`` into ``model``: an fp teacher into a binary
    student, or a pretrained model (ours or the authors') into one fine-tuned on new data.

    The checkpoint must describe the same architecture: its config may differ from the model's only in
    :data:`INIT_FREE_FIELDS` (a new input size resizes the position embeddings, a new class count keeps
    the fresh head), and its tensors must pass :func:`match_init`; otherwise
    :class:`InitMismatchError` names what differs and how many tensors match.
    """
    src_cfg, src_state = read_init_source(path, model.config)
    own_cfg = model.config.to_dict()
    differ = any(src_cfg.get(k) != own_cfg[k] for k in ("precision", "attn_quant"))
    own = model.state_dict()
    report, bad = match_init(own, src_state, path, differ)
    fields = _config_differences(src_cfg, own_cfg)
    if fields or bad:
        what = f" ({'; '.join(fields[:4])}; checkpoint vs model)" if fields else ""
        shapes = f"; {len(bad)} differ: {_first(bad, 3)}" if bad else ""
        raise InitMismatchError(
            f"--init-from {printable(path)}: another architecture{what}: {len(report.copied)} of the model's "
            f"{len(own)} tensors match the checkpoint's by name and shape{shapes}. Only precision, quantizers, "
            "the input size and the classifier head may differ"
        )
    model.load_state_dict({k: src_state[k] for k in report.copied}, strict=False)
    return report
