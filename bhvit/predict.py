"""Image classification with a BHViT checkpoint: preprocessing and top-k predictions.

Preprocessing without torchvision: Pillow decodes, resizes (bicubic) the shorter side to
``resize``, centre-crops ``crop`` and normalises with ``mean``/``std``. Defaults follow the
authors' ImageNet evaluation (Resize 256 + CenterCrop 224, ImageNet mean/std) scaled to the
model's input size; a checkpoint may carry its own ``preprocess`` metadata, checked field by field
in :meth:`Preprocess.for_model` (``std`` 0, a non-finite or wrongly sized ``mean``/``std``, or a
``resize``/input size outside its limit is refused with one line naming the field).

Hostile and odd images are one bad input each, never the end of the call:

* **Memory is bounded.** An image is decoded only when it has at most :data:`MAX_PIXELS` (2²⁵ ≈
  33.5 M) pixels; a JPEG larger than needed is first scaled down by its decoder (``Image.draft``:
  1/2, 1/4 or 1/8 of each side, never below the resized size), and Pillow refuses files over
  2·89.5 M pixels before decoding. Up to MAX_SIDE² = 16.8 M resized pixels, resize and centre crop
  are torchvision's; beyond, they are one resample of the source region under the crop
  (``Image.resize(box=...)``), so the allocation never grows with the aspect ratio (a 1 × 2,000,000
  PNG costs its 2 M decoded pixels, not the 36 × 72 M of a plain resize). Peak memory per image:
  the decoded image plus at most two converted copies (≤ 9 bytes per decoded pixel, ≈ 300 MB at the
  limit) plus the resized image (≤ 4 bytes per pixel, 67 MB): under 400 MB whatever the file.
  A progressive JPEG is decoded through a buffer of all its DCT coefficients at full size (2 bytes
  per coefficient, whatever the draft scale), so one whose buffer would pass
  :data:`MAX_JPEG_COEFFICIENT_BYTES` (256 MiB; 8K UHD at 4:4:4 needs 199 MB) is refused before it
  (a 300-byte progressive header announcing 13000 × 13000 would otherwise cost 0.5 GB).
* **Every mode keeps its range.** 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``,
  ``LAB``, ``HSV``) go through Pillow's conversion to ``L``/``RGB`` and are divided by 255. Alpha
  (``RGBA``, ``LA``, ``PA``, a ``transparency`` key) is premultiplied, i.e. composited over black,
  so colours hidden under full transparency never reach the model. 16-bit ``I;16*`` is divided by
  65535; 32-bit ``I`` by 65535 when its values fit 0..65535 (how Pillow stores 16-bit PNG/TIFF
  data), else min–max scaled over the image; float ``F`` is taken as is when it lies in [0, 1], else
  min–max scaled; NaN or infinite pixels are refused. High-depth images are resampled as float, so
  nothing is clipped to 8 bits. Grey ↔ colour after resampling: ITU-R 601 luma
  ``0.299 R + 0.587 G + 0.114 B`` (Pillow's rule), or the grey channel repeated.
"""

from __future__ import annotations

import math
import numbers
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bhvit.data.images import value_range
from bhvit.rules import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Preprocess",
    "load_image",
    "predict_images",
    "class_labels",
    "file_problem",
    "ImageError",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MAX_JPEG_COEFFICIENT_BYTES",
    "jpeg_coefficient_bytes",
]

MAX_PIXELS = 2**25  # decoded pixels per image: 8K UHD (7680 x 4320 = 33.2 M) fits
MAX_SIDE = 4096  # model input side (the crop); resize may be up to 2 * MAX_SIDE
MAX_JPEG_COEFFICIENT_BYTES = 2**28  # a progressive JPEG's whole-image coefficient buffer (bhvit-run's too)
_LUMA = np.array([[0.299], [0.587], [0.114]], dtype=np.float32)  # (3, 1)
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")

SizeFn = Callable[[int, int], tuple[int, int]]


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``low..high`` (a bool, a string or a fraction is refused)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or not low <= int(value) <= high:
        raise ValueError(f"{name}={value!r}: expected a whole number in {low}..{high}")
    return int(value)


def _floats(name: str, value: Any) -> tuple[float, ...]:
    """A number or a list of numbers as a tuple of floats (finiteness is checked by Preprocess)."""
    items = [value] if isinstance(value, numbers.Real) else value
    if (
        not isinstance(items, Sequence)
        or isinstance(items, str)
        or not items
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items)
    ):
        raise ValueError(f"preprocess {name}={value!r}: expected a number or a list of numbers")
    return tuple(float(v) for v in items)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` (h, w), normalise ``(x − mean)/std``.

    Checked on construction: ``crop`` sides in 1..:data:`MAX_SIDE`, ``resize`` in 1..2·MAX_SIDE,
    ``mean``/``std`` of one value or one per channel, finite, ``std`` > 0.
    """

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False

    def __post_init__(self) -> None:
        _whole("preprocess resize", self.resize, 1, 2 * MAX_SIDE)
        if len(self.crop) != 2:
            raise ValueError(f"crop={self.crop!r}: expected (height, width)")
        for side in self.crop:
            _whole("model input size (img_size)", side, 1, MAX_SIDE)
        channels = 1 if self.grayscale else 3
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"preprocess {name}={list(values)}: expected 1 or {channels} finite numbers")
        if min(self.std) <= 0:
            raise ValueError(f"preprocess std={list(self.std)}: every value must be > 0 (images are divided by it)")

    @classmethod
    def for_model(
        cls,
        img_size: Any,
        in_chans: Any,
        meta: Mapping[str, Any] | None = None,
        pretrained_cfg: Mapping[str, Any] | None = None,
    ) -> Preprocess:
        """The model file's own preprocessing (``meta``) where it has one, else the model's
        ``pretrained_cfg`` (``mean``, ``std``, ``crop_pct``), else ImageNet's (crop ratio 0.875).

        The one place where a model file's input size, channels and ``preprocess`` metadata are
        checked, for ``--checkpoint`` and ``--packed`` alike; a bad field is a ``ValueError`` naming it.
        """
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise ValueError(f"preprocess metadata must be a JSON object, got {type(meta).__name__}")
        cfg = pretrained_cfg or {}
        chans = _whole("model in_chans", in_chans, 1, 3)
        if chans == 2:
            raise ValueError("model in_chans=2: predict reads images as grey (1 channel) or RGB (3)")
        sides = [img_size, img_size] if isinstance(img_size, numbers.Real) else img_size
        if not isinstance(sides, Sequence) or isinstance(sides, str) or len(sides) != 2:
            raise ValueError(f"model img_size={img_size!r}: expected (height, width)")
        crop = (_whole("model img_size", sides[0], 1, MAX_SIDE), _whole("model img_size", sides[1], 1, MAX_SIDE))
        gray = chans == 1
        mean = _floats("mean", meta.get("mean", cfg.get("mean", (0.5,) if gray else IMAGENET_MEAN)))
        std = _floats("std", meta.get("std", cfg.get("std", (0.5,) if gray else IMAGENET_STD)))
        default_resize = math.floor(min(crop) / float(cfg.get("crop_pct", CROP_PCT)))
        resize = _whole("preprocess resize", meta.get("resize", default_resize), 1, 2 * MAX_SIDE)
        return cls(resize=resize, crop=crop, mean=mean, std=std, grayscale=gray)

    def to_meta(self) -> dict[str, Any]:
        """The ``preprocess`` metadata a model file stores (read back by :meth:`for_model`)."""
        return {"mean": list(self.mean), "std": list(self.std), "resize": self.resize}

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(W', H') of a w × h image with its shorter side scaled to ``resize``, each side ≥ the crop's."""
        scale = self.resize / min(w, h)
        return max(self.crop[1], round(w * scale)), max(self.crop[0], round(h * scale))

    def resize_crop(self, image: Image.Image, max_resized: int = MAX_SIDE**2) -> Image.Image:
        """Resize (bicubic) then centre-crop; (crop h, crop w) out.

        Up to ``max_resized`` resized pixels this is torchvision's Resize + CenterCrop (the authors'
        evaluation). Beyond (an extreme aspect ratio, a tiny image scaled up) only the source region
        under the crop is resampled (``box``): output pixel (i, j) samples the source at
        ((left + j + ½)·w/W', (top + i + ½)·h/H'), the point the full resize would sample, so only
        the crop is allocated; the values agree up to the rounding of Pillow's 8-bit two-pass filter.
        """
        w, h = image.size
        rw, rh = self.resized_size(w, h)
        ch, cw = self.crop
        left, top = (rw - cw) // 2, (rh - ch) // 2
        if rw * rh <= max_resized:
            return image.resize((rw, rh), Image.BICUBIC).crop((left, top, left + cw, top + ch))
        sx, sy = w / rw, h / rh  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        return image.resize((cw, ch), Image.BICUBIC, box=box)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image (any mode) -> normalised float32 array (C, crop h, crop w), C = 1 or 3."""
        image, (lo, hi) = _working_mode(image, self.grayscale)
        arr = np.asarray(self.resize_crop(image), dtype=np.float32)
        if not (math.isfinite(lo) and math.isfinite(hi) and np.isfinite(arr).all()):
            raise ValueError("the image holds NaN or infinite pixel values")
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)  # source range -> [0, 1]
        arr = _channels(arr, self.grayscale)  # (H, W, C)
        arr = (arr - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def _working_mode(image: Image.Image, grayscale: bool) -> tuple[Image.Image, tuple[float, float]]:
    """``image`` in a mode the resampler keeps exact (L/RGB, premultiplied La/RGBa, or F) and the
    (lo, hi) of its values that map to 0 and 1 (see the module docstring)."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return image.convert("F"), value_range(image)
    if "transparency" in image.info and image.mode not in _ALPHA:
        image = image.convert("RGBA")
    if image.mode in _ALPHA:
        return image.convert("La" if image.mode in ("LA", "La") else "RGBa"), (0.0, 255.0)
    return image.convert("L" if grayscale else "RGB"), (0.0, 255.0)


def _channels(arr: np.ndarray, grayscale: bool) -> np.ndarray:
    """(H, W[, C]) in [0, 1] -> (H, W, 1) or (H, W, 3): premultiplied alpha dropped, luma or repeat."""
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.shape[2] in (2, 4):  # La / RGBa: colour already multiplied by alpha
        arr = arr[:, :, :-1]
    if grayscale and arr.shape[2] == 3:
        return arr @ _LUMA
    if not grayscale and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file, found without opening it (opening a FIFO, a terminal or
    ``/dev/stdin`` waits for a writer): no such file, a directory, or not a regular file; None when it is one."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, terminal, device or socket); pass the path of a file"
    return None


def jpeg_coefficient_bytes(width: int, height: int, sampling: Sequence[tuple[int, int]]) -> int:
    """The bytes of libjpeg's whole-image coefficient buffer, which a progressive JPEG needs: per component
    of sampling factors (h, v) (hmax, vmax the largest), ceil(width h / (8 hmax)) blocks across and
    ceil(height v / (8 vmax)) down, each rounded up to a multiple of h (of v), times 64 coefficients of 2
    bytes."""
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        across, down = -(-width * h // (8 * hmax)), -(-height * v // (8 * vmax))
        total += -(-across // h) * h * -(-down // v) * v * 128
    return total


def _progressive_jpeg_problem(image: Image.Image) -> str | None:
    """What is wrong with a progressive JPEG whose coefficient buffer would pass MAX_JPEG_COEFFICIENT_BYTES;
    None for any other image."""
    if image.format != "JPEG" or not image.info.get("progressive"):
        return None
    sampling = [(max(1, layer[1]), max(1, layer[2])) for layer in getattr(image, "layer", [])] or [(1, 1)]
    need = jpeg_coefficient_bytes(*image.size, sampling)
    if need <= MAX_JPEG_COEFFICIENT_BYTES:
        return None
    w, h = image.size
    return (
        f"a progressive {w}x{h} JPEG needs {need / 2**20:.0f} MiB of coefficients to decode, over the limit of "
        f"{MAX_JPEG_COEFFICIENT_BYTES >> 20} MiB; save it as a baseline JPEG or downscale it first"
    )


def load_image(path: str | Path, decode_size: SizeFn | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image of at most ``max_pixels`` pixels; :class:`ImageError` says what
    is wrong with a bad file (missing, not an image, corrupt, a decompression bomb, ...).

    ``decode_size(w, h) -> (W, H)``: the smallest size the caller needs; a JPEG at least twice as
    large is decoded at 1/2, 1/4 or 1/8 scale and the pixel limit applies to what is decoded.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise ImageError(f"{path}: {problem}" + (", not an image" if problem == "is a directory" else ""))
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            image = Image.open(f)
            if min(image.size) < 1:
                raise ImageError(f"{path}: the image has no pixels ({image.size[0]}x{image.size[1]})")
            problem = _progressive_jpeg_problem(image)
            if problem is not None:
                raise ImageError(f"{path}: {problem}")
            if decode_size is not None:
                image.draft(None, decode_size(*image.size))
            w, h = image.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{path}: {w}x{h} image ({w * h:,} pixels) is outside the decoding limit of "
                    f"{max_pixels:,} pixels (a decompression bomb?); downscale it first"
                )
            image.load()  # decoded: the image no longer needs the file
            return image
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (Pillow cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it") from None
    except Exception as exc:  # a malformed header can trip any decoder (struct.error, IndexError, ...)
        raise ImageError(f"{path}: cannot decode it ({type(exc).__name__}: {exc})") from None


def prepare(path: str | Path, preprocess: Preprocess) -> np.ndarray:
    """Decode ``path`` with bounded memory and preprocess it: (C, H, W); :class:`ImageError` if bad."""
    image = load_image(path, preprocess.resized_size)
    try:
        return preprocess(image)
    except (ValueError, OSError, MemoryError) as exc:
        raise ImageError(f"{path}: cannot convert its {image.mode} pixels ({exc})") from None


def class_labels(labels: Any) -> list[str]:
    """A model file's class names, checked: a list of strings (``[]`` when it has none)."""
    if labels is None:
        return []
    if not isinstance(labels, Sequence) or isinstance(labels, str | bytes):
        raise ValueError(f"the model file's labels must be a list of strings, got {type(labels).__name__}")
    bad = next((i for i, v in enumerate(labels) if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"the model file's labels must be strings; entry {bad} is {type(labels[bad]).__name__}")
    return list(labels)


def predict_images(
    model: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    topk: int = 5,
    labels: Any = None,
) -> list[dict[str, Any]]:
    """Top-k classes of each image. A bad file, or an image whose logits are not finite (the model raises
    ``ValueError``, as :mod:`bhvit.runtime` does, or returns NaN or Inf), yields ``{"path", "error"}`` and
    the rest go on.

    ``model``: images (1, C, H, W) float32 -> logits (1, classes), numpy (a packed model of
    :mod:`bhvit.runtime`, or a float model wrapped by the caller). ``labels``: class names; a class beyond
    the list is named by its index.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk={topk!r}: expected a whole number ≥ 1")
    names = class_labels(labels)
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            x = prepare(path, preprocess)[None]
        except ImageError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        try:
            logits = np.asarray(model(x), dtype=np.float64)[0]
            if not np.isfinite(logits).all():
                raise ValueError("the model's logits for this image are not finite (NaN or Inf)")
        except ValueError as exc:
            results.append({"path": str(path), "error": f"{path}: {exc}"})
            continue
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")[: min(topk, probs.size)]
        top = [
            {"class": int(i), "label": names[int(i)] if int(i) < len(names) else str(int(i)), "prob": float(probs[i])}
            for i in order
        ]
        results.append({"path": str(path), "top": top})
    return results
