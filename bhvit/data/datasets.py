"""Dataset selection and the augmentation wrapper used for training and evaluation.

``DataConfig.name`` is a dataset name (``fashion_mnist``, ``cifar10``, ``synthetic``) or a directory,
and a directory is only ever read itself (never a fallback to a named dataset), as the first of:

1. ``DIR/train/<class>/…`` with ``DIR/val/<class>/…``: an image folder with its own validation split;
2. the Fashion-MNIST IDX files or the CIFAR-10 pickles in ``DIR`` (or its ``fashion-mnist`` /
   ``cifar-10-batches-py`` subfolder);
3. ``DIR/<class>/…``: a flat image folder, split by :func:`bhvit.data.folder.split_flat` (a seeded,
   stratified hold-out of ``val_fraction`` of each class).

Anything else is a :class:`DatasetNotFoundError` that names the layouts expected.
"""

from __future__ import annotations

import random
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch

from bhvit.data import cifar10, fashion_mnist, folder
from bhvit.data.download import DatasetNotFoundError
from bhvit.data.transforms import Compose, center_crop, eval_resize, eval_transform, resize_shorter, train_transform
from bhvit.rules import IMAGENET_MEAN, IMAGENET_STD
from bhvit.text import printable

DATASET_NAMES = ("fashion_mnist", "cifar10", "synthetic")
Augment = Literal["auto", "imagenet", "small", "none"]  # the command line reads its choices from this
AUGMENTATIONS: tuple[str, ...] = get_args(Augment)


def dataset_name(name: str) -> str:
    """A registered name as people type it (``fashion-mnist``, ``Fashion_MNIST``, ``cifar-10``) -> its
    spelling in :data:`DATASET_NAMES`; an existing directory or any other name is returned unchanged."""

    def key(text: str) -> str:
        return text.strip().lower().replace("-", "").replace("_", "")

    found = [n for n in DATASET_NAMES if key(n) == key(name)] if isinstance(name, str) else []
    return found[0] if found and not Path(name).is_dir() else name


@dataclass(frozen=True)
class DataConfig:
    """Which data, at which size, with which augmentation.

    ``name``: a name of :data:`DATASET_NAMES` or a directory (only that directory is read); ``root``:
    where to look first for a named dataset; ``img_size``: the model's input side in pixels, a multiple
    of 32; ``batch_size``: images per optimizer step over all processes (clamped to the training set);
    ``eval_batch_size``: images per evaluation batch; ``num_workers``: data-loading processes (0: in the
    training process); ``download``: fetch a named dataset from its public source when it is not found
    on disk (needs the network); ``synthetic_size``: images of the ``synthetic`` random data (tests,
    benchmarks); ``synthetic_classes``: its classes; ``augment``: ``auto`` picks ``small`` for images
    of at most 64 px on disk (an image folder: the median longer side of a few of its training images)
    and ``imagenet`` otherwise (SPEC §4);
    ``hflip``: random horizontal flips (None: as the augmentation family does, both ``imagenet`` and
    ``small`` flip; false: never, for digits, letters and other data whose label a mirror changes; true:
    always, also with ``none``); ``train_subset``: use only the first n training images (quick experiments);
    ``val_fraction``: for a folder without ``train/`` and ``val/``, the share of each class held out for
    validation (None: 0.2; a split is drawn with the run's seed).
    """

    name: str = "fashion_mnist"
    root: str | None = None
    img_size: int = 32
    augment: Augment = "auto"
    hflip: bool | None = None
    batch_size: int = 128
    eval_batch_size: int = 500
    num_workers: int = 0
    download: bool = False
    train_subset: int | None = None
    synthetic_size: int = 256
    synthetic_classes: int = 10
    val_fraction: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", dataset_name(self.name))  # the one place names are resolved
        if self.img_size <= 0 or self.img_size % 32:
            raise ValueError(
                f"img_size={self.img_size}: must be a positive multiple of 32 (the stem divides by 4 "
                "and three downsamplings by 2 more)"
            )
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment={self.augment!r}; expected one of {AUGMENTATIONS}")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.num_workers < 0:
            raise ValueError("batch sizes must be ≥ 1 and num_workers ≥ 0")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError("train_subset must be ≥ 1 or None")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction}: must lie in (0, 1), e.g. 0.2")
        if self.synthetic_classes < 2:
            raise ValueError(f"synthetic_classes={self.synthetic_classes}: a classifier needs at least 2 classes")
        if not self.name:
            raise ValueError(f"data name is empty; expected one of {DATASET_NAMES} or a directory")


@dataclass
class DataBundle:
    """Train and test datasets plus what the model needs to know about them.

    ``preprocess``: ``{"mean", "std", "resize"}``, what the evaluation does to an image (resize the
    shorter side, centre-crop the input size, normalise), stored with the trained model; ``split``: the
    hold-out record of a flat folder (:func:`bhvit.data.folder.split_flat`), else None.
    """

    name: str
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    num_classes: int
    in_chans: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: dict[str, Any]
    split: dict[str, Any] | None = None


class TensorImages(torch.utils.data.Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim == 3:  # (N, H, W) grey
            images = images[:, None]
        self.images, self.labels = images, labels
        self._labels = labels.tolist()  # python ints: indexing a tensor per item costs ~5 µs

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self._labels[i]


class Augmented(torch.utils.data.Dataset):
    """Apply ``transform`` to every item; random transforms draw from a generator seeded per item.

    The seed of item ``i`` in epoch ``e`` is a fixed arithmetic mix of (seed, e, i), so a
    sample gets the same augmentation whichever process or worker loads it and whenever the run was
    resumed. Call :meth:`set_epoch` before iterating an epoch.
    """

    def __init__(self, base: torch.utils.data.Dataset, transform: Compose, seed: int | None) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(cast(Sized, self.base))  # torch's Dataset declares no __len__; every base here has one

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[i]
        g = None
        if self.seed is not None:
            g = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        return self.transform(img, g), label


def presize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize the shorter side of a whole uint8 ``(N, C, H, W)`` array to ``size`` and centre-crop it, once
    (the first step of the ``small`` and ``none`` transforms, cheaper than per item every epoch)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return torch.cat(
        [center_crop(resize_shorter(images[i : i + chunk], size), size) for i in range(0, len(images), chunk)]
    )


def _synthetic(cfg: DataConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n, s = cfg.synthetic_size, cfg.img_size
    imgs = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, cfg.synthetic_classes, (n,), generator=g)
    return {"train_images": imgs, "train_labels": labels, "test_images": imgs, "test_labels": labels}


def _named_arrays(cfg: DataConfig) -> tuple[str, dict[str, torch.Tensor], tuple, tuple, tuple]:
    """(name, arrays, classes, mean, std) of a named dataset (found where its module searches)."""
    if cfg.name == "fashion_mnist":
        arrays = fashion_mnist.load(cfg.root, cfg.download)
        return cfg.name, arrays, fashion_mnist.CLASSES, fashion_mnist.MEAN, fashion_mnist.STD
    if cfg.name == "cifar10":
        return cfg.name, cifar10.load(cfg.root, cfg.download), cifar10.CLASSES, cifar10.MEAN, cifar10.STD
    classes = tuple(str(i) for i in range(cfg.synthetic_classes))
    return cfg.name, _synthetic(cfg), classes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _directory_arrays(path: Path) -> tuple[str, dict[str, torch.Tensor], tuple, tuple, tuple] | None:
    """(name, arrays, classes, mean, std) when ``path`` itself holds Fashion-MNIST or CIFAR-10, else None."""
    if (d := fashion_mnist.local_dir(path)) is not None:
        return "fashion_mnist", fashion_mnist.read_dir(d), fashion_mnist.CLASSES, fashion_mnist.MEAN, fashion_mnist.STD
    if (d := cifar10.local_dir(path)) is not None:
        return "cifar10", cifar10.read_dir(d), cifar10.CLASSES, cifar10.MEAN, cifar10.STD
    return None


def _augment_kind(cfg: DataConfig, disk_size: int) -> str:
    if cfg.augment != "auto":
        return cfg.augment
    return "small" if disk_size <= 64 else "imagenet"


def _preprocess(kind: str, cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """What :func:`eval_transform` (and the normalisation) does, as a model file's ``preprocess``."""
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "resize": eval_resize(kind, cfg.img_size)}


def build_datasets(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Load the data named by ``cfg`` (the module docstring says how a directory is read) and wrap both
    splits with their transforms. ``seed`` seeds the augmentation and a flat folder's hold-out split."""
    path = Path(cfg.name)
    if not path.is_dir():
        if cfg.name not in DATASET_NAMES:
            raise DatasetNotFoundError(
                f"data {cfg.name!r} is neither one of {DATASET_NAMES} nor an existing directory ({LAYOUTS})"
            )
        _no_val_fraction(cfg, f"{cfg.name} has its own test split")
        return _arrays_bundle(cfg, seed, *_named_arrays(cfg))
    if folder.is_image_folder(path):
        _no_val_fraction(cfg, f"{cfg.name} has its own validation split (train/ and val/)")
        train, val = folder.load(path)
        return _folder_bundle(cfg, seed, train, val, None)
    if (found := _directory_arrays(path)) is not None:
        _no_val_fraction(cfg, f"{cfg.name} holds {found[0]}, which has its own test split")
        return _arrays_bundle(cfg, seed, *found)
    if not folder.class_dirs(path):
        raise DatasetNotFoundError(f"{printable(path)}: no data found; expected {LAYOUTS}")
    fraction = cfg.val_fraction if cfg.val_fraction is not None else folder.DEFAULT_VAL_FRACTION
    train, val, split = folder.load_flat(path, fraction, seed)
    return _folder_bundle(cfg, seed, train, val, split)


LAYOUTS = (
    "an image folder DIR/<class>/<image> (split for validation), DIR/train/<class>/… with DIR/val/<class>/…, "
    "or a directory holding the Fashion-MNIST IDX or CIFAR-10 files"
)


def _no_val_fraction(cfg: DataConfig, why: str) -> None:
    if cfg.val_fraction is not None:
        raise ValueError(
            f"val_fraction={cfg.val_fraction} splits a folder without train/ and val/, but {why}: drop --val-fraction"
        )


def _folder_bundle(
    cfg: DataConfig,
    seed: int,
    train: folder.ImageFolder,
    val: folder.ImageFolder,
    split: dict[str, Any] | None,
) -> DataBundle:
    kind = _augment_kind(cfg, disk_size=folder.typical_side(train) if cfg.augment == "auto" else 0)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    return DataBundle(
        str(cfg.name),
        _subset(Augmented(train, train_transform(kind, cfg.img_size, cfg.hflip), seed), cfg),
        Augmented(val, eval_transform(kind, cfg.img_size), None),
        len(train.classes),
        3,
        tuple(train.classes),
        mean,
        std,
        _preprocess(kind, cfg, mean, std),
        split,
    )


def _arrays_bundle(
    cfg: DataConfig,
    seed: int,
    name: str,
    arrays: dict[str, torch.Tensor],
    classes: tuple,
    mean: tuple,
    std: tuple,
) -> DataBundle:
    kind = _augment_kind(cfg, arrays["train_images"].shape[-1])
    train_imgs, test_imgs = arrays["train_images"], arrays["test_images"]
    if cfg.train_subset is not None:
        train_imgs, arrays["train_labels"] = train_imgs[: cfg.train_subset], arrays["train_labels"][: cfg.train_subset]
    train_imgs, test_imgs = (x[:, None] if x.ndim == 3 else x for x in (train_imgs, test_imgs))
    if kind != "imagenet":  # these transforms start with a plain resize: do it once
        train_imgs, test_imgs = presize(train_imgs, cfg.img_size), presize(test_imgs, cfg.img_size)
    train = TensorImages(train_imgs, arrays["train_labels"])
    test = TensorImages(test_imgs, arrays["test_labels"])
    return DataBundle(
        name,
        Augmented(train, train_transform(kind, cfg.img_size, cfg.hflip), seed),
        Augmented(test, eval_transform(kind, cfg.img_size), None),
        len(classes),
        train_imgs.shape[1],
        tuple(classes),
        mean,
        std,
        _preprocess(kind, cfg, mean, std),
    )


def _subset(ds: Augmented, cfg: DataConfig) -> Augmented:
    if cfg.train_subset is not None and cfg.train_subset < len(ds):
        ds.base = torch.utils.data.Subset(ds.base, range(cfg.train_subset))
    return ds
