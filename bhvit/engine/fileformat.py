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
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bhvit.checkpoint import atomic_write
from bhvit.engine.packer import BinaryLayer, PackedParts
from bhvit.engine.schema import (
    ALPHA_SUFFIX,
    BITS_SUFFIX,
    Layout,
    PackedFormatError,
    check_config,
    check_labels,
    check_layers,
    check_preprocess,
    check_tensors,
    dtype_name,
    layout,
    record_k,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "PackedFormatError", "check_parts", "read_parts", "write_parts"]

FORMAT = "bhvit-packed"
FORMAT_VERSION = 1
OPTIONAL_KEYS = ("preprocess", "labels")  # JSON, for `bhvit predict --packed`
BIT_CONVENTION = "uint64 little-endian words along K, element k at bit k%64 of word k//64, set bit = -1, padding 0"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def write_parts(parts: PackedParts, path: str | Path) -> Path:
    """Writes packed parts to ``path`` (safetensors container, see the module docstring); refuses parts
    that a reader would refuse (:func:`check_parts`)."""
    check_parts(parts)
    tensors: dict[str, np.ndarray] = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in parts.floats.items()}
    for name, layer in parts.binary.items():
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


# ---- reading: the container, then the metadata, then the tensor table, then the values ----------------
def read_parts(path: str | Path) -> PackedParts:
    """Reads and validates a packed file into :class:`PackedParts`.

    Everything is checked before anything is built (docs/packed-format.md §8): the container, the
    metadata, the config, the layer records, the names, dtypes and shapes of all tensors against the
    table the config implies (:mod:`bhvit.engine.schema`), then the values. Any violation raises
    :class:`PackedFormatError` naming the field or tensor; a missing file raises FileNotFoundError.
    """
    path = Path(path)
    header = _read_header(path)
    meta = _check_metadata(header.pop("__metadata__", None), path)
    config = check_config(_json(meta, "config"))
    expected = layout(config)
    check_layers(_json(meta, "layers"), expected)
    check_tensors({name: _header_entry(name, entry) for name, entry in header.items()}, expected)
    extra = {k: _json(meta, k) for k in OPTIONAL_KEYS if k in meta}
    tensors = _load_tensors(path)
    binary = {
        name: BinaryLayer(tensors.pop(name + BITS_SUFFIX), tensors.pop(name + ALPHA_SUFFIX), record)
        for name, record in expected.binary.items()
    }
    parts = PackedParts(config, tensors, binary, meta=extra)
    check_parts(parts, expected)
    return parts


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header (JSON object), after checking its length against the file's size."""
    if not path.exists():
        raise FileNotFoundError(f"no such packed model file: {path}")
    if not path.is_file():
        raise PackedFormatError(f"{path} is not a regular file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PackedFormatError(
                f"{path}: truncated ({size} bytes); a packed file starts with an 8-byte header length"
            )
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise PackedFormatError(
                f"{path}: header length {n} exceeds the file ({size} bytes) or "
                f"{MAX_HEADER_BYTES} bytes: truncated or not a packed file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PackedFormatError(f"{path}: the safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise PackedFormatError(f"{path}: the safetensors header is not a JSON object")
    return header


def _header_entry(name: str, entry: Any) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of one header entry, checked for form only (safetensors checks the offsets)."""
    ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
    if not ok or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"]):
        raise PackedFormatError(f"tensor {name}: malformed header entry {str(entry)[:200]}")
    return entry["dtype"], tuple(entry["shape"])


def _check_metadata(meta: Any, path: Path) -> dict[str, str]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PackedFormatError(f"{path} is not a packed BHViT file (metadata format != {FORMAT!r})")
    if not all(isinstance(v, str) for v in meta.values()):
        raise PackedFormatError(f"{path}: metadata values must be strings")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise PackedFormatError(f"{path} has format_version {version!r}; this reader supports {FORMAT_VERSION}")
    for key in ("config", "layers"):
        if key not in meta:
            raise PackedFormatError(f"{path}: metadata lacks {key!r}")
    return meta


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as err:
        raise PackedFormatError(f"metadata {key!r} is not valid JSON ({err})") from None


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors; errors of the safetensors library (offsets, sizes, dtypes) become PackedFormatError."""
    try:
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # the library's own error types vary (SafetensorError, OSError, ValueError)
        raise PackedFormatError(f"{path}: unreadable safetensors data ({type(err).__name__}: {err})") from None


# ---- the parts themselves: names, dtypes, shapes and values ------------------------------------------
def check_parts(parts: PackedParts, expected: Layout | None = None) -> None:
    """Checks packed parts against the table their config implies (names, dtypes, shapes and records),
    their values (finite floats, non-negative BatchNorm variances, zero padding bits) and the optional
    ``preprocess`` and ``labels``; raises :class:`PackedFormatError`."""
    if expected is None:
        expected = layout(check_config(parts.config))
        check_layers({n: layer.meta for n, layer in parts.binary.items()}, expected)
    found = {k: (dtype_name(v.dtype), tuple(v.shape)) for k, v in parts.floats.items()}
    for name, layer in parts.binary.items():
        found[name + BITS_SUFFIX] = (dtype_name(layer.bits.dtype), tuple(layer.bits.shape))
        found[name + ALPHA_SUFFIX] = (dtype_name(layer.alpha.dtype), tuple(layer.alpha.shape))
    clash = [n for n in parts.floats if n.endswith((BITS_SUFFIX, ALPHA_SUFFIX))]
    if clash:
        raise PackedFormatError(f"float tensor names end in a reserved suffix: {clash[:3]}")
    check_tensors(found, expected)
    for name, value in parts.floats.items():
        _check_values(name, value)
    for name, layer in parts.binary.items():
        _check_values(name + ALPHA_SUFFIX, layer.alpha)
        _check_padding(name, layer.bits, record_k(layer.meta))
    if parts.meta.get("preprocess") is not None:
        check_preprocess(parts.meta["preprocess"], parts.config["in_chans"])
    if parts.meta.get("labels") is not None:
        check_labels(parts.meta["labels"], parts.config["num_classes"])


def _check_values(name: str, value: np.ndarray) -> None:
    if not np.isfinite(value).all():
        raise PackedFormatError(f"tensor {name}: has non-finite values (inf or NaN)")
    if name.endswith(".running_var") and (value < 0).any():
        raise PackedFormatError(f"tensor {name}: BatchNorm variances must be >= 0")


def _check_padding(name: str, bits: np.ndarray, k: int) -> None:
    if k % 64 and np.any(bits[:, -1] >> np.uint64(k % 64)):
        raise PackedFormatError(f"{name}{BITS_SUFFIX}: padding bits (k >= {k} in the last word) must be 0")
