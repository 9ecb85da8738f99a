"""Image folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, or flat ``root/<class>/*.jpg``.

Classes are the sorted sub-folder names of ``train/``; ``val/`` (or ``validation/``, ``test/``) must
use the same names (a class missing from ``val/`` is fine, an extra one is an error). A flat folder
(class folders directly under ``root``, no ``train/``) is split by :func:`split_flat`: a seeded,
stratified hold-out of :data:`DEFAULT_VAL_FRACTION` of each class for validation. Images of any
size and mode are read with Pillow and converted to RGB (:func:`bhvit.data.images.to_rgb8`: 16-bit and
float images are scaled, not clipped), so a folder of arbitrary images just works: the transforms
resize them to the model size.

Checked when the folder is listed (each a :class:`DatasetError`): a missing or empty validation split,
a class folder of ``train/`` without images, a ``val/`` class unknown to ``train/``, fewer than two
classes, a flat folder's class with fewer than two images (one for each split). Files with other
extensions and hidden files or folders (names starting with ``.``) are ignored. A file that cannot be
decoded is found only when it is read: the :class:`DatasetError` then names it and the reason.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from bhvit.data.download import DatasetNotFoundError
from bhvit.data.images import DatasetError, is_hidden, read_rgb
from bhvit.text import printable

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
VAL_NAMES = ("val", "validation", "test")
DEFAULT_VAL_FRACTION = 0.2  # of each class of a flat folder, held out for validation


def is_image_folder(root: str | os.PathLike) -> bool:
    """A directory with ``train/`` is read as an image folder (:func:`load` then requires a val split)."""
    return (Path(root) / "train").is_dir()


def class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of a split."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """All image files under ``split_dir/<class>/`` (recursively), sorted, with their class index."""
    samples = []
    for cls in class_dirs(split_dir):
        if cls not in class_to_idx:
            raise DatasetError(
                f"{printable(split_dir / cls)}: class not present in train/ (a validation class "
                "must also be a training class)"
            )
        samples += [(f, class_to_idx[cls]) for f in _images(split_dir / cls)]
    return samples


def _images(class_dir: Path) -> list[Path]:
    return sorted(
        f
        for f in class_dir.rglob("*")
        if f.suffix.lower() in EXTENSIONS and f.is_file() and not is_hidden(f, class_dir)
    )


def _no_images(split_dir: Path) -> str:
    """Why ``split_dir`` yields no samples: what it holds instead and what is expected."""
    others = [f for f in split_dir.rglob("*") if f.is_file() and not is_hidden(f, split_dir)]
    found = (
        f" (found {len(others)} other file(s), e.g. {printable(others[0].relative_to(split_dir))})" if others else ""
    )
    return (
        f"{printable(split_dir)} holds no images in class folders{found}; expected "
        f"{split_dir.name}/<class>/<image> with an extension among {' '.join(EXTENSIONS)}"
    )


def load_image(path: Path) -> torch.Tensor:
    """Read an image as a (3, H, W) uint8 tensor; :class:`DatasetError` names a file that fails."""
    return torch.from_numpy(read_rgb(path)).permute(2, 0, 1).contiguous()


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


def typical_side(split: ImageFolder, probes: int = 9) -> int:
    """The median longer side (px) of ``probes`` images spread evenly over ``split`` (headers only).

    Decides ``augment = "auto"`` for a folder (small images get pad-and-crop, large ones
    RandomResizedCrop). A file Pillow cannot open is skipped here (reading it names it later); 0 when
    none opens.
    """
    from PIL import Image

    n = len(split.samples)
    sides = []
    for i in sorted({k * (n - 1) // max(1, probes - 1) for k in range(probes)} if n else set()):
        try:
            with Image.open(split.samples[i][0]) as im:
                sides.append(max(im.size))
        except Exception:  # noqa: BLE001 - any decoder error: the read in training reports it with the file
            continue
    return sorted(sides)[len(sides) // 2] if sides else 0


def _checked_classes(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes of ``split_dir/<class>/`` and their samples; every class must hold images, and there
    must be two classes at least (one class trains to a meaningless 100 %)."""
    classes = class_dirs(split_dir)
    if not classes:
        raise DatasetError(_no_images(split_dir))
    samples = scan(split_dir, {c: i for i, c in enumerate(classes)})
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        raise DatasetError(
            f"{printable(split_dir)}: {len(empty)} class folder(s) hold no images "
            f"({', '.join(map(printable, empty[:5]))}{', …' if len(empty) > 5 else ''}); every "
            "class needs training images: add some or remove the folder"
        )
    if len(classes) < 2:
        raise DatasetError(
            f"{printable(split_dir)}: one class ({printable(classes[0])}); a classifier needs at least 2 "
            "class folders: add a folder of images for each other class"
        )
    return classes, samples


def load(root: str | os.PathLike) -> tuple[ImageFolder, ImageFolder]:
    """The train and val splits of an image folder, checked as the module docstring says."""
    r = Path(root)
    if not is_image_folder(r):
        raise DatasetNotFoundError(
            f"{printable(r)}: not an image folder; expected {r}/train/<class>/... and {r}/val/<class>/..."
        )
    val_dir = next((r / v for v in VAL_NAMES if (r / v).is_dir()), None)
    if val_dir is None:
        raise DatasetError(
            f"{printable(r)}: has train/ but no validation split; add one of "
            f"{'/, '.join(VAL_NAMES)}/ with the same class folders, or move the class folders up to "
            f"{printable(r)}/<class>/ for a held-out split"
        )
    classes, train = _checked_classes(r / "train")
    val = scan(val_dir, {c: i for i, c in enumerate(classes)})
    if not val:
        raise DatasetError(_no_images(val_dir))
    return ImageFolder(train, classes), ImageFolder(val, classes)


def split_flat(
    samples: list[tuple[Path, int]], classes: list[str], val_fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], dict[str, Any]]:
    """A seeded, stratified hold-out: (train samples, val samples, the record of the split).

    Each class's files (sorted) are shuffled by one ``random.Random(seed)`` drawn class by class in
    sorted order, and ``v_c = min(n_c − 1, max(1, round(val_fraction · n_c)))`` of its ``n_c`` images
    go to validation: every class is in both splits. The same files, seed and fraction give the same
    split on any machine. The record (``seed``, ``val_fraction``, ``train_images``, ``val_images``,
    ``val_per_class``) goes into the run's log and checkpoint.
    """
    rng = random.Random(seed)
    train: list[tuple[Path, int]] = []
    val: list[tuple[Path, int]] = []
    per_class = {}
    for k, name in enumerate(classes):
        mine = [s for s in samples if s[1] == k]
        if len(mine) < 2:
            raise DatasetError(
                f"class {printable(name)} has {len(mine)} image: a held-out split needs at least 2 per class "
                "(one to train on, one to validate); add images or give the folder train/ and val/"
            )
        rng.shuffle(mine)
        v = min(len(mine) - 1, max(1, round(val_fraction * len(mine))))
        val += mine[:v]
        train += mine[v:]
        per_class[name] = v
    record = {
        "seed": seed,
        "val_fraction": val_fraction,
        "train_images": len(train),
        "val_images": len(val),
        "val_per_class": per_class,
    }
    return sorted(train), sorted(val), record


def load_flat(
    root: str | os.PathLike, val_fraction: float, seed: int
) -> tuple[ImageFolder, ImageFolder, dict[str, Any]]:
    """The train and val splits of a flat folder ``root/<class>/*`` (:func:`split_flat`) and the
    split's record."""
    r = Path(root)
    classes, samples = _checked_classes(r)
    train, val, record = split_flat(samples, classes, val_fraction, seed)
    return ImageFolder(train, classes), ImageFolder(val, classes), record


def describe_split(root: str | os.PathLike, record: dict[str, Any]) -> str:
    """One line saying how a flat folder was split."""
    return (
        f"{printable(root)} has no train/ and val/: held out {record['val_fraction']:.0%} of each class for "
        f"validation (seed {record['seed']}): {record['train_images']} training, {record['val_images']} "
        "validation images (--val-fraction sets the share, --seed the draw)"
    )
