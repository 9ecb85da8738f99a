"""Image classification with a BHViT checkpoint: preprocessing and top-k predictions.

Preprocessing without torchvision: Pillow decodes, resizes (bicubic) the shorter side to
``resize``, centre-crops ``crop`` and normalises with ``mean``/``std``. Defaults follow the
authors' ImageNet evaluation (Resize 256 + CenterCrop 224, ImageNet mean/std) scaled to the
model's input size; a checkpoint may carry its own ``preprocess`` metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["Preprocess", "load_image", "predict_images", "ImageError"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An input that is not a readable image; the message names the file and the problem."""


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` (h, w), normalise."""

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False

    @classmethod
    def for_model(cls, img_size: tuple[int, int], in_chans: int, meta: dict[str, Any] | None = None) -> Preprocess:
        """The checkpoint's own preprocessing if it has one, else ImageNet's (crop ratio 0.875)."""
        meta = dict(meta or {})
        gray = in_chans == 1
        mean = tuple(meta.get("mean", (0.5,) if gray else IMAGENET_MEAN))
        std = tuple(meta.get("std", (0.5,) if gray else IMAGENET_STD))
        resize = int(meta.get("resize", math.floor(min(img_size) / 0.875)))
        return cls(resize=resize, crop=tuple(img_size), mean=mean, std=std, grayscale=gray)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised tensor (C, H, W)."""
        image = image.convert("L" if self.grayscale else "RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.crop[1], round(w * scale)), max(self.crop[0], round(h * scale))),
                             Image.BICUBIC)
        w, h = image.size
        left, top = (w - self.crop[1]) // 2, (h - self.crop[0]) // 2
        image = image.crop((left, top, left + self.crop[1], top + self.crop[0]))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        arr = (arr - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image; :class:`ImageError` says what is wrong with a bad file."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (Pillow cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None


@torch.no_grad()
def predict_images(model: torch.nn.Module, paths: list[str | Path], preprocess: Preprocess, topk: int = 5,
                   labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Top-k classes of each image. A bad file yields ``{"path", "error"}`` and the rest go on."""
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            x = preprocess(load_image(path)).unsqueeze(0)
        except ImageError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        probs = model(x).softmax(dim=-1)[0]
        values, indices = probs.topk(min(topk, probs.numel()))
        top = [{"class": int(i), "label": labels[int(i)] if labels else str(int(i)), "prob": float(v)}
               for v, i in zip(values, indices)]
        results.append({"path": str(path), "top": top})
    return results
