"""The error of a packed file that cannot be read (shared by the runtime and the torch-side engine)."""

from __future__ import annotations


class PackedFormatError(ValueError):
    """The file is not a packed BHViT model this version can read; the message names the field and the fix."""
