"""The error of a packed file that cannot be read (shared by the runtime and the torch-side engine)."""

from __future__ import annotations

import os

# The native runtime refuses a version-1 file with this same sentence (runtime/src/loader.cpp; a test compares).
VERSION_1 = (
    "is a version-1 packed file, which this bhvit no longer reads; re-pack it from its checkpoint with "
    "`bhvit pack CHECKPOINT -o NEW.bhvp`"
)


class PackedFormatError(ValueError):
    """The file is not a packed BHViT model this version can read; the message names the field and the fix."""


def version_1_refusal(path: str | os.PathLike) -> str:
    """The one line that refuses the version-1 file ``path``."""
    return f"{path} {VERSION_1}"
