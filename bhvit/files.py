"""What kind of model file a path holds, read from its first bytes (no torch, no numpy).

bhvit reads three kinds of file: torch files (``torch.save``: a zip archive, or a legacy pickle), safetensors
files (bhvit's own model files, bare state dicts) and packed 1-bit models (``.bhvp``, docs/packed-format.md),
which are safetensors files whose metadata says ``format = "bhvit-packed"``. A packed file starts with the
length of its JSON header, a little-endian u64, whose low byte may be 0x80 or ``P``: the first bytes alone
cannot tell it from a torch file, so :func:`file_kind` reads the header.

:func:`packed_file_message` is the one line every command that needs float weights (``export``, ``convert``,
``pack``, ``train --init-from/--teacher/--resume``, ``predict --checkpoint``) gives for a packed file.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Literal

from bhvit.runtime.errors import version_1_refusal

__all__ = ["FileKind", "file_kind", "packed_file_message", "safetensors_metadata", "MAX_HEADER"]

FileKind = Literal["missing", "packed", "safetensors", "torch", "other"]
MAX_HEADER = 100_000_000  # bytes of a safetensors JSON header (the runtime's limit, docs/packed-format.md §7)


def safetensors_metadata(path: str | os.PathLike) -> dict[str, object] | None:
    """The ``__metadata__`` of a safetensors file (``{}`` when it has none), or None when ``path`` is not one:
    a u64 header length N with 2 ≤ N ≤ min(file size − 8, :data:`MAX_HEADER`), then N bytes of a JSON
    object. Reads at most N + 8 bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= min(size - 8, MAX_HEADER):
            return None
        first = f.read(1)
        if first != b"{":
            return None
        try:
            header = json.loads(first + f.read(n - 1))
        except (UnicodeDecodeError, ValueError):
            return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def file_kind(path: str | os.PathLike) -> FileKind:
    """``packed`` (a ``.bhvp`` of any format version), ``safetensors``, ``torch`` (zip or pickle), ``missing``
    (no such file, or a directory) or ``other``."""
    if not os.path.isfile(path):
        return "missing"
    meta = safetensors_metadata(path)
    if meta is not None:
        return "packed" if meta.get("format") == "bhvit-packed" else "safetensors"
    with open(path, "rb") as f:
        head = f.read(2)
    return "torch" if head == b"PK" or head[:1] == b"\x80" else "other"


def packed_file_message(path: str | os.PathLike) -> str:
    """The line refusing the packed file ``path`` where float weights are needed (a version-1 file: the line
    every reader gives it, which says how to re-pack it)."""
    if (safetensors_metadata(path) or {}).get("format_version") == "1":
        return version_1_refusal(path)
    return (
        f"{path} is a packed model file, not a checkpoint: its 1-bit program holds no float weights; give the "
        "checkpoint it was packed from (.pt or .safetensors). A packed file is run and judged by bhvit "
        "predict --packed, eval, bench and profile"
    )
