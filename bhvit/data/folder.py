"""ImageNet-style image folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

Classes are the sorted sub-folder names of ``train/``; ``val/`` must use the same names (a class
missing from ``val/`` is fine, an extra one is an error). Images of any size and mode are read with
Pillow and converted to RGB, so a folder of arbitrary images just works: the transforms resize them to
the model size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bhvit.data.download import DatasetNotFoundError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
VAL_NAMES = ("val", "validation", "test")


def is_image_folder(root: str | os.PathLike) -> bool:
    r = Path(root)
    return (r / "train").is_dir() and any((r / v).is_dir() for v in VAL_NAMES)


def scan(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """All image files under ``split_dir/<class>/`` (recursively), sorted, with their class index."""
    samples = []
    for cls in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
        if cls not in class_to_idx:
            raise ValueError(f"{split_dir}/{cls}: class not present in train/")
        files = sorted(f for f in (split_dir / cls).rglob("*") if f.suffix.lower() in EXTENSIONS)
        samples += [(f, class_to_idx[cls]) for f in files]
    return samples


def load_image(path: Path) -> torch.Tensor:
    """Read an image as a (3, H, W) uint8 tensor."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageFolder(torch.utils.data.Dataset):
    """Lazily decoded image-folder split; items are ``(uint8 (3, H, W), label)``."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str]) -> None:
        self.samples = samples
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return load_image(path), label


def load(root: str | os.PathLike) -> tuple[ImageFolder, ImageFolder]:
    """The train and val splits of an image folder."""
    r = Path(root)
    if not is_image_folder(r):
        raise DatasetNotFoundError(
            f"{r}: not an image folder; expected {r}/train/<class>/... and {r}/val/<class>/..."
        )
    classes = sorted(p.name for p in (r / "train").iterdir() if p.is_dir())
    class_to_idx = {c: i for i, c in enumerate(classes)}
    val_dir = next(r / v for v in VAL_NAMES if (r / v).is_dir())
    train, val = scan(r / "train", class_to_idx), scan(val_dir, class_to_idx)
    if not train:
        raise DatasetNotFoundError(f"{r}/train holds no images with extensions {EXTENSIONS}")
    return ImageFolder(train, classes), ImageFolder(val, classes)
