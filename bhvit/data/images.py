"""One image file → uint8 RGB, whatever its mode; :class:`DatasetError` names a file that cannot be used.

Pillow's ``convert("RGB")`` clips wider samples to 0–255, so a 16-bit PNG (mode ``I;16``) comes out
almost white. :func:`to_rgb8` maps each mode's range onto 0–255 instead:

* ``I;16*`` (16-bit grey): ``round(v·255/65535)``;
* ``I`` (32-bit int): the same when every value lies in 0..65535 (how Pillow stores some 16-bit
  PNG/TIFF data), else stretched linearly from the image's minimum (0) to its maximum (255);
* ``F`` (32-bit float): ``round(v·255)`` when every value lies in [0, 1], else stretched the same way;
  NaN or infinite pixels are an error;
* alpha (``RGBA``, ``LA``, ``PA``, a palette or grey image with a ``transparency`` key) is
  premultiplied, i.e. composited over black, so colours hidden under full transparency never count;
* every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, …) goes through Pillow's
  ``convert("RGB")``; grey gives three equal channels.

These are the rules :mod:`bhvit.predict` applies before its float resize, so a model sees the same
pixels in training and in ``bhvit predict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from bhvit.text import printable

# Longest side / shortest side. The evaluation transform resizes the shorter side to img/0.875 before
# cropping, so the resized image has aspect·(img/0.875)² pixels: at 64:1 and img 224 that is 4.2 M
# float pixels per channel (50 MB for RGB); a 1 × 2,000,000 image would need ~8 GB.
MAX_ASPECT = 64
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")


class DatasetError(ValueError):
    """A dataset file or folder that cannot be used; the one-line message names it and the problem.

    Raised inside a ``DataLoader`` worker, it reaches the main process rebuilt by torch as
    ``DatasetError("Caught DatasetError in DataLoader worker process 0.\\nOriginal Traceback …")``;
    the constructor keeps only the original message, so the error still names the file in one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_original_message(message))


def _original_message(message: str) -> str:
    """The message a worker raised, taken from the last line of torch's re-raise text."""
    if not (message.startswith("Caught DatasetError") and "\nOriginal Traceback" in message):
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    head, sep, rest = last.partition("DatasetError: ")
    return rest if sep else last


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` completely into a ``(H, W, 3)`` uint8 array, or raise :class:`DatasetError`."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not half-way through a transform
            _check_shape(im.size)
            return to_rgb8(im)
    except DatasetError as err:
        raise DatasetError(f"{printable(path)}: {err}; remove or replace the file") from None
    except Exception as exc:  # noqa: BLE001 (any decoder failure means this file is unusable)
        raise DatasetError(f"{printable(path)}: {_describe(exc)}; remove or replace the file") from exc


def _check_shape(size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) < 1:
        raise DatasetError(f"image is {w}×{h} px (empty)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise DatasetError(
            f"image is {w}×{h} px, an aspect ratio above {MAX_ASPECT}:1 (resizing it would need gigabytes)"
        )


def _describe(exc: Exception) -> str:
    """A short reason for a Pillow (or file system) failure."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (unknown or damaged format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels ({exc})"
    if isinstance(exc, FileNotFoundError):
        return "the file disappeared after the dataset was listed"
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "truncated" in text:
        return f"truncated image ({text})"
    return f"corrupt image ({type(exc).__name__}: {text})"


def to_rgb8(im: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a decoded image of any mode (see the module docstring)."""
    if im.mode in _GREY16 or im.mode in ("I", "F"):
        grey = _wide_to_uint8(np.asarray(im), im)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)  # (H, W, 4)
        # (H, W, 3): colour · alpha / 255, rounded
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy (torch.from_numpy warns otherwise)


def value_range(im: Image.Image) -> tuple[float, float]:
    """``(lo, hi)``: the sample values of ``im`` that map to 0 and 1 (the ranges the module docstring
    gives; 8-bit modes (0, 255)). :mod:`bhvit.predict` resamples with the same rule."""
    if im.mode in _GREY16:
        return 0.0, 65535.0
    if im.mode not in ("I", "F"):
        return 0.0, 255.0
    extrema = cast(tuple[float, float], im.getextrema())  # one band (modes I, F): (min, max)
    lo, hi = float(extrema[0]), float(extrema[1])
    full = 65535.0 if im.mode == "I" else 1.0
    if lo >= 0 and hi <= full:
        return 0.0, full
    return lo, hi if hi > lo else lo + 1.0


def _wide_to_uint8(arr: np.ndarray, im: Image.Image) -> np.ndarray:
    """(H, W) 16/32-bit samples of ``im`` → (H, W) uint8 over :func:`value_range`."""
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise DatasetError(f"{int((~np.isfinite(x)).sum())} NaN or infinite pixel(s) in a {im.mode} image")
    lo, top = value_range(im)
    return np.clip(np.rint((x - lo) * (255.0 / (top - lo))), 0, 255).astype(np.uint8)


def is_hidden(path: Path, root: Path) -> bool:
    """True when any part of ``path`` below ``root`` starts with a dot (``.ipynb_checkpoints``,
    macOS ``._name.jpg`` resource forks, editor back-ups): such files are not dataset images."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)
