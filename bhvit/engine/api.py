"""User-facing entry points of the packed engine: pack, save, load, size and zero audits.

:class:`PackedModel` is the torch-facing handle of a packed model: the whole forward runs in the native
runtime (``libbhvit_runtime``, :mod:`bhvit.runtime`) from the version-2 program that
:mod:`bhvit.engine.program` builds; tensors in, tensors out.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bhvit import runtime
from bhvit.engine.program import Program, build_program, model_preprocess, write_program

if TYPE_CHECKING:
    from bhvit.models.bhvit import BHViT


class PackedModel:
    """A packed BHViT run by the native runtime: ``PackedModel(program)(images) -> logits`` (torch tensors).

    ``config`` is the float model's config (as stored in the file); ``program`` the version-2 program;
    ``runtime`` the :class:`bhvit.runtime.Model` that runs it (numpy in, numpy out)."""

    def __init__(self, program: Program | Path, loaded: runtime.Model | None = None) -> None:
        """``program``: the program, or (with ``loaded``, the runtime's model of it) the file it was read from,
        whose tensors are then read only if :attr:`program` is asked for (``save_packed``)."""
        from safetensors.numpy import save

        self._program = program
        if loaded is None:
            if not isinstance(program, Program):
                raise TypeError("PackedModel(path) needs the runtime's model of that file: use load_packed(path)")
            loaded = runtime.load_bytes(save(program.tensors, metadata=program.file_metadata()), "packed model")
        self.runtime = loaded
        self.config: dict[str, Any] = loaded.metadata("config") or {}
        self._times: dict[str, float] | None = None

    @property
    def program(self) -> Program:
        """The version-2 program (read from the file on first use when the model was loaded from one)."""
        if isinstance(self._program, Path):
            self._program = _read_program(self._program)
        return self._program

    @property
    def meta(self) -> dict[str, Any]:
        """``preprocess`` and (if stored) ``labels``, as ``bhvit predict`` reads them."""
        out: dict[str, Any] = {"preprocess": self.runtime.preprocess}
        if self.runtime.labels is not None:
            out["labels"] = self.runtime.labels
        return out

    def check_input(self, images: Any) -> None:
        """Raises a ValueError naming the problem unless images is a real CPU tensor (B, C, H, W) of the model's
        input shape with B >= 1 (the float model's own check, worded the same)."""
        c, h, w = self.runtime.input_shape
        if not isinstance(images, torch.Tensor):
            raise ValueError(
                f"expected images as a torch.Tensor of shape (B, {c}, {h}, {w}), got {type(images).__name__}"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, h, w) or images.shape[0] < 1:
            raise ValueError(
                f"expected images of shape (B, {c}, {h}, {w}) with B >= 1, got {tuple(images.shape)}; "
                f"resize the input to {h}×{w} (this packed model's img_size)"
            )
        if not images.dtype.is_floating_point or images.is_complex():
            raise ValueError(f"expected floating-point images, got dtype {images.dtype}; convert with .float()")
        if images.device.type != "cpu":
            raise ValueError(f"the packed engine runs on the CPU; got images on {images.device}, use .cpu()")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, classes) (pooled features when the model has no classifier)."""
        self.check_input(images)
        x = images.detach().float().contiguous().numpy()
        if self._times is None:
            return torch.from_numpy(self.runtime.run(x))
        logits, times = self.runtime.run_profiled(x)
        for kind, seconds in times.items():
            self._times[kind] = self._times.get(kind, 0.0) + seconds
        return torch.from_numpy(logits)

    __call__ = forward

    @contextmanager
    def profile(self) -> Iterator[dict[str, float]]:
        """``with packed.profile() as t: packed(x)`` fills t with seconds per op kind and ``total``."""
        self._times = {}
        try:
            yield self._times
        finally:
            self._times = None


def pack(model: BHViT) -> PackedModel:
    """Packs an eval-mode ``some_fp`` or ``binary`` BHViT (BatchNorm):
    ``bhvit.engine.pack(model)(images) -> logits``."""
    from bhvit.engine.packer import extract

    return PackedModel(build_program(extract(model), model_preprocess(model)))


def save_packed(
    packed: PackedModel, path: str | Path, *, preprocess: dict | None = None, labels: list[str] | None = None
) -> Path:
    """Writes a version-2 packed file (docs/packed-format.md), atomically; ``preprocess`` (``{mean, std,
    resize}``, completed from the model's) and ``labels`` are stored for ``bhvit predict --packed``."""
    from bhvit.engine.program import check_labels, check_preprocess, full_preprocess

    program = packed.program
    meta = dict(program.metadata)
    if preprocess is not None:
        check_preprocess(preprocess, int(packed.runtime.input_shape[0]))
        stored = json.loads(meta["preprocess"])
        meta["preprocess"] = json.dumps(full_preprocess({**stored, **preprocess}, packed.config))
    if labels is not None:
        check_labels(labels, packed.runtime.num_classes)
        meta["labels"] = json.dumps(list(labels))
    return write_program(Program(program.program, program.tensors, meta), path)


def load_packed(path: str | Path) -> PackedModel:
    """Loads a version-2 packed model file; the runtime validates the whole file (a version-1 file is refused
    with the command that re-packs it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return PackedModel(path, runtime.load(path))


def _read_program(path: Path) -> Program:
    """The program, tensors and metadata of a version-2 file (after the runtime validated it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "bit_convention", "program")}
    return Program(json.loads(meta["program"]), tensors, keep)


def fp32_checkpoint_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in fp32, the reference for the packed file's size."""
    buf = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buf)
    return buf.getbuffer().nbytes


def size_report(model: nn.Module, packed_path: str | Path) -> dict[str, Any]:
    """Sizes of the fp32 checkpoint and the packed file, and what the packed bytes are made of."""
    tensors = _read_program(Path(packed_path)).tensors
    bits = sum(v.nbytes for v in tensors.values() if v.dtype.kind == "u")
    floats = sum(v.nbytes for v in tensors.values() if v.dtype.kind == "f")
    fp32, packed = fp32_checkpoint_bytes(model), Path(packed_path).stat().st_size
    return {
        "fp32_checkpoint_bytes": fp32,
        "packed_bytes": packed,
        "ratio": fp32 / packed,
        "binary_weight_bytes": bits,
        "float_bytes": floats,
        "header_bytes": packed - bits - floats,
    }


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
                handles.append(
                    act.register_forward_hook(lambda m, a, out, n=f"{name}.sign_{branch}", mv=move: count(n, out + mv))
                )
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
    model expects): the fraction of identical top-1 predictions, the number of images whose top-1 differs,
    the largest logit difference, and the largest per image relative to that image's largest logit."""
    model.eval()
    same, max_diff, max_rel, n = 0, 0.0, 0.0, images.shape[0]
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size]
        want, got = model(x), packed(x)
        same += int((want.argmax(1) == got.argmax(1)).sum())
        diff = (want - got).abs().amax(1)
        max_diff = max(max_diff, float(diff.max()))
        max_rel = max(max_rel, float((diff / want.abs().amax(1).clamp(min=1e-30)).max()))
    return {
        "images": n,
        "top1_identical": same / max(n, 1),
        "top1_differs": n - same,
        "max_abs_logit_diff": max_diff,
        "max_rel_logit_diff": max_rel,
    }
