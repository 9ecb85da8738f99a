"""The packed model file (normative spec: docs/packed-format.md).

A packed file is a safetensors file. Its ``__metadata__`` holds ``format = "bhvit-packed"``,
``format_version``, the model ``config`` (JSON) and the binary ``layers`` (JSON: name -> kind and
geometry); its tensors are the float parameters under their state-dict names and, per binary layer,
``<layer>.weight_bits`` (uint64, (N, ceil(K/64)), bit set = -1, padding 0) and ``<layer>.weight_alpha``
(float32, (N,)). Reading it needs numpy, safetensors and this package's engine, not the model or
training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bhvit.checkpoint import atomic_write
from bhvit.engine.packer import BinaryLayer, PackedParts

FORMAT = "bhvit-packed"
FORMAT_VERSION = 1
BITS_SUFFIX = ".weight_bits"
ALPHA_SUFFIX = ".weight_alpha"
OPTIONAL_KEYS = ("preprocess", "labels")  # JSON, for `bhvit predict --packed`
BIT_CONVENTION = "uint64 little-endian words along K, element k at bit k%64 of word k//64, set bit = -1, padding 0"


class PackedFormatError(ValueError):
    """The file is not a packed BHViT model this version can read."""


def write_parts(parts: PackedParts, path: str | Path) -> Path:
    """Writes packed parts to ``path`` (safetensors container, see the module docstring)."""
    tensors: dict[str, np.ndarray] = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in parts.floats.items()}
    for name, layer in parts.binary.items():
        for key in (name + BITS_SUFFIX, name + ALPHA_SUFFIX):
            if key in tensors:
                raise PackedFormatError(f"tensor name clash: {key}")
        tensors[name + BITS_SUFFIX] = np.ascontiguousarray(layer.bits, dtype=np.uint64)
        tensors[name + ALPHA_SUFFIX] = np.ascontiguousarray(layer.alpha, dtype=np.float32)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "bit_convention": BIT_CONVENTION,
        "config": json.dumps(parts.config, sort_keys=True),
        "layers": json.dumps({n: layer.meta for n, layer in parts.binary.items()}, sort_keys=True),
    }
    metadata.update({k: json.dumps(parts.meta[k]) for k in OPTIONAL_KEYS if parts.meta.get(k) is not None})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _check_metadata(meta: dict[str, str] | None, path: Path) -> dict[str, str]:
    if not meta or meta.get("format") != FORMAT:
        raise PackedFormatError(f"{path} is not a packed BHViT file (metadata format != {FORMAT!r})")
    version = int(meta.get("format_version", "0"))
    if version != FORMAT_VERSION:
        raise PackedFormatError(f"{path} has format_version {version}; this reader supports {FORMAT_VERSION}")
    return meta


def read_parts(path: str | Path) -> PackedParts:
    """Reads and validates a packed file into :class:`PackedParts`."""
    path = Path(path)
    with safe_open(str(path), framework="np") as f:
        meta = _check_metadata(f.metadata(), path)
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    layers: dict[str, dict] = json.loads(meta["layers"])
    binary: dict[str, BinaryLayer] = {}
    for name, lmeta in layers.items():
        bits, alpha = tensors.pop(name + BITS_SUFFIX, None), tensors.pop(name + ALPHA_SUFFIX, None)
        if bits is None or alpha is None:
            raise PackedFormatError(f"binary layer {name} lacks {BITS_SUFFIX} or {ALPHA_SUFFIX}")
        _check_layer(name, lmeta, bits, alpha)
        binary[name] = BinaryLayer(bits, alpha, lmeta)
    stray = [k for k in tensors if k.endswith((BITS_SUFFIX, ALPHA_SUFFIX))]
    if stray:
        raise PackedFormatError(f"bit tensors without a layer entry: {stray[:3]}")
    extra = {k: json.loads(meta[k]) for k in OPTIONAL_KEYS if k in meta}
    return PackedParts(json.loads(meta["config"]), tensors, binary, meta=extra)


def _check_layer(name: str, meta: dict, bits: np.ndarray, alpha: np.ndarray) -> None:
    k = meta["in"] if meta["kind"] == "linear" else meta["kernel"][0] * meta["kernel"][1] * meta["in"] // meta["groups"]
    want = (meta["out"], (k + 63) // 64)
    if bits.dtype != np.uint64 or tuple(bits.shape) != want:
        raise PackedFormatError(f"{name}{BITS_SUFFIX}: expected uint64 {want}, got {bits.dtype} {bits.shape}")
    if alpha.dtype != np.float32 or tuple(alpha.shape) != (meta["out"],):
        raise PackedFormatError(f"{name}{ALPHA_SUFFIX}: expected float32 ({meta['out']},)")
    if k % 64 and np.any(bits[:, -1] >> np.uint64(k % 64)):
        raise PackedFormatError(f"{name}{BITS_SUFFIX}: padding bits must be 0")
