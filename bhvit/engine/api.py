"""User-facing entry points of the packed engine: pack, save, load, size and zero audits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bhvit.engine.fileformat import read_parts, write_parts
from bhvit.engine.packed_model import PackedModel
from bhvit.engine.packer import extract


def pack(model: nn.Module, float_threads: int | None = None) -> PackedModel:
    """Packs an eval-mode ``some_fp`` or ``binary`` BHViT: ``bhvit.engine.pack(model)(images) -> logits``.

    ``float_threads``: torch threads for the float parts (see :class:`PackedModel`)."""
    return PackedModel(extract(model), float_threads)


def save_packed(packed: PackedModel, path: str | Path, *, preprocess: dict | None = None,
                labels: list[str] | None = None) -> Path:
    """Writes a packed model file (docs/packed-format.md), atomically; ``preprocess`` and ``labels``
    (optional) are stored for ``bhvit predict --packed``."""
    packed.parts.meta.update({k: v for k, v in (("preprocess", preprocess), ("labels", labels)) if v is not None})
    return write_parts(packed.parts, path)


def load_packed(path: str | Path) -> PackedModel:
    """Loads a packed model file; needs neither the model classes nor the training code."""
    return PackedModel(read_parts(path))


def fp32_checkpoint_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in fp32, the reference for the packed file's size."""
    buf = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buf)
    return buf.getbuffer().nbytes


def size_report(model: nn.Module, packed_path: str | Path) -> dict[str, Any]:
    """Sizes of the fp32 checkpoint and the packed file, and what the packed bytes are made of."""
    parts = read_parts(packed_path)
    bits = sum(layer.bits.nbytes for layer in parts.binary.values())
    alphas = sum(layer.alpha.nbytes for layer in parts.binary.values())
    floats = sum(v.nbytes for v in parts.floats.values())
    fp32, packed = fp32_checkpoint_bytes(model), Path(packed_path).stat().st_size
    return {"fp32_checkpoint_bytes": fp32, "packed_bytes": packed, "ratio": fp32 / packed,
            "binary_weight_bytes": bits, "alpha_bytes": alphas, "float_bytes": floats,
            "header_bytes": packed - bits - alphas - floats}


@torch.no_grad()
def zero_audit(model: nn.Module, images: torch.Tensor) -> dict[str, int]:
    """Counts exact zeros at every ``sign`` input of the float model on ``images`` (SPEC §6).

    The float model has ``sign(0) = 0``; the packed engine packs 0 as +1. Where this returns only zeros,
    the two agree bit for bit on those inputs. Keys: binary layer, or ``<attn>.sign_q|k|v`` -> count.
    """
    counts: dict[str, int] = {}
    handles = []

    def count(name: str, value: torch.Tensor) -> None:
        counts[name] = counts.get(name, 0) + int((value == 0).sum())

    for name, module in model.named_modules():
        binary = getattr(module, "weight_quantizer", None) is not None
        if binary and getattr(module, "input_quantizer", None) is not None:
            # the layer's own input is what its sign sees (its quantizer may be fused into the layer)
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: count(n, a[0])))
        for branch in ("q", "k", "v"):
            act, move = getattr(module, f"act_{branch}", None), getattr(module, f"move_{branch}2", None)
            if act is not None and move is not None:
                handles.append(act.register_forward_hook(
                    lambda m, a, out, n=f"{name}.sign_{branch}", mv=move: count(n, out + mv)))
    try:
        was_training = model.training
        model.eval()
        model(images)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return counts


@torch.no_grad()
def agreement(model: nn.Module, packed: PackedModel, images: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Packed vs float model on a set of images (e.g. a whole test split, already transformed as the
    model expects): the fraction of identical top-1 predictions, the largest logit difference, and the
    number of images whose top-1 differs."""
    model.eval()
    same, max_diff, n = 0, 0.0, images.shape[0]
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size]
        want, got = model(x), packed(x)
        same += int((want.argmax(1) == got.argmax(1)).sum())
        max_diff = max(max_diff, float((want - got).abs().max()))
    return {"images": n, "top1_identical": same / max(n, 1), "top1_differs": n - same, "max_abs_logit_diff": max_diff}
