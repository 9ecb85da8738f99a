"""Image transforms on uint8 ``(C, H, W)`` tensors, written in plain torch (no torchvision).

Every random transform takes an explicit ``random.Random`` (Python's generator: a draw costs ~1 µs
against ~8 µs for a torch op, which matters at 60,000 small images per epoch). The training datasets
seed one generator per (seed, epoch, sample index), so a sample's augmentation does not depend on the number of workers,
the number of processes or on where a run was resumed; that is what makes resumed and distributed runs
reproduce an uninterrupted single-process run.

Two families of defaults:

* ``imagenet`` (SPEC §4, the released models): RandomResizedCrop(scale 0.08–1, ratio 3/4–4/3) +
  horizontal flip for training; the shorter side resized to ``⌊img/0.875⌋`` + CenterCrop(img) for
  evaluation.
* ``small`` (28–32 px data such as Fashion-MNIST and CIFAR-10): the shorter side resized to the model
  size and centre-cropped, zero-pad by img/8 and random-crop back, horizontal flip; evaluation only
  resizes and centre-crops.

Evaluation is always "resize the shorter side to :func:`eval_resize`, centre-crop ``img``", the one
geometry a model file's ``preprocess`` can state (``resize``; the crop is the model's input size), and
:func:`resize` is Pillow's bicubic filter, which ``bhvit predict`` uses: the preprocessing stored with
a trained model is the one its evaluation applied, to the pixel (tests/train/test_user_data.py).

The horizontal flip is part of both families as the recipes and the paper use them (``hflip=None``);
``hflip=False`` drops it (a flipped digit or letter is another symbol: ``bhvit train`` without a recipe
does not flip unless asked, docs/training.md) and ``hflip=True`` adds it to any family, ``none`` included.

Transforms keep images uint8; normalisation ``(x/255 − mean)/std`` is applied to whole batches on the
training device (:func:`normalize_batch`), which is one op per batch instead of several per image.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bhvit.rules import CROP_PCT

Rng = random.Random
Transform = Callable[[torch.Tensor, Rng | None], torch.Tensor]


def _rng(g: Rng | None) -> Rng:
    return g if g is not None else random._inst  # the module-level generator


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic (antialiased) resize of a ``(C, H, W)`` or ``(N, C, H, W)`` tensor to ``size = (H', W')``;
    keeps the dtype.

    uint8 images are resized as Pillow's ``Image.resize(..., BICUBIC)`` does (``bhvit predict``, so a
    trained model is served the pixels it was evaluated on): the width first, then the height, each pass
    rounded and clamped to 0..255. Measured against Pillow on noise images of 20–300 px: equal but for
    a few pixels 1 apart (Pillow's fixed-point weights); one pass without the 8-bit step in between
    differed by up to 15.
    """
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    batch = img if img.ndim == 4 else img[None]
    out = batch.float()
    if img.dtype == torch.uint8:
        for step in ((out.shape[-2], size[1]), tuple(size)):  # (H, W'), then (H', W')
            if tuple(out.shape[-2:]) != step:
                out = F.interpolate(out, size=step, mode="bicubic", align_corners=False, antialias=True)
                out = out.round_().clamp_(0, 255)
        out = out.to(torch.uint8)
    else:
        out = F.interpolate(out, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out if img.ndim == 4 else out[0]


def resize_shorter(img: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize so that the shorter side equals ``shorter``, keeping the aspect ratio."""
    h, w = img.shape[-2:]
    scale = shorter / min(h, w)
    return resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central ``size × size`` window (zero-pads first if the image is smaller)."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size]


def random_resized_crop_box(
    h: int,
    w: int,
    g: Rng | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Sample ``(top, left, height, width)`` with area ∈ scale·H·W and log-uniform aspect ∈ ratio.

    Ten attempts as in Inception training; the fallback is the largest centred crop whose aspect
    ratio lies in ``ratio``.
    """
    g = _rng(g)
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * g.uniform(*scale)
        aspect = math.exp(g.uniform(*log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return g.randint(0, h - ch), g.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random box (see :func:`random_resized_crop_box`) and resize it to ``size × size``."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, img: torch.Tensor, g: Rng | None = None) -> torch.Tensor:
        top, left, ch, cw = random_resized_crop_box(img.shape[-2], img.shape[-1], g, self.scale, self.ratio)
        return resize(img[..., top : top + ch, left : left + cw], (self.size, self.size))


@dataclass(frozen=True)
class RandomHorizontalFlip:
    p: float = 0.5

    def __call__(self, img: torch.Tensor, g: Rng | None = None) -> torch.Tensor:
        return img.flip(-1) if _rng(g).random() < self.p else img


@dataclass(frozen=True)
class PadRandomCrop:
    """Zero-pad by ``padding`` on every side and take a random ``size × size`` crop (CIFAR-style)."""

    size: int
    padding: int

    def __call__(self, img: torch.Tensor, g: Rng | None = None) -> torch.Tensor:
        # Equivalent to F.pad + crop, written as one copy into a zero canvas (crop offsets in the
        # padded frame are top, left ∈ [0, H + 2p − size]).
        g, p, s = _rng(g), self.padding, self.size
        h, w = img.shape[-2:]
        top, left = g.randint(0, h + 2 * p - s) - p, g.randint(0, w + 2 * p - s) - p
        out = img.new_zeros(*img.shape[:-2], s, s)
        y0, y1, x0, x1 = max(0, top), min(h, top + s), max(0, left), min(w, left + s)
        if y0 < y1 and x0 < x1:
            out[..., y0 - top : y1 - top, x0 - left : x1 - left] = img[..., y0:y1, x0:x1]
        return out


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Resize the shorter side to ``resize``, then centre-crop ``size × size`` (a model file's
    ``preprocess``: ``resize`` with the crop at the input size)."""

    size: int
    resize: int

    def __call__(self, img: torch.Tensor, g: Rng | None = None) -> torch.Tensor:
        return center_crop(resize_shorter(img, self.resize), self.size)


@dataclass(frozen=True)
class ToChannels:
    """Repeat a 1-channel image to ``channels`` (or keep it); drops an alpha channel."""

    channels: int

    def __call__(self, img: torch.Tensor, g: Rng | None = None) -> torch.Tensor:
        if img.shape[0] == self.channels:
            return img
        if img.shape[0] == 1:
            return img.expand(self.channels, -1, -1)
        return img[: self.channels]


def normalize_batch(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → float ``(x/255 − mean)/std`` per channel, on ``x``'s device."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1) * 255.0
    return (x.float() - m) / s


@dataclass(frozen=True)
class Compose:
    transforms: Sequence[Transform]

    def __call__(self, img: torch.Tensor, g: Rng | None = None) -> torch.Tensor:
        for t in self.transforms:
            img = t(img, g)
        return img


def train_transform(kind: str, img_size: int, hflip: bool | None = None) -> Compose:
    """The training augmentation ``kind`` ∈ {imagenet, small, none} at ``img_size`` (uint8 out).

    ``hflip``: None flips as the family does (imagenet and small: p = 0.5; none: never), a bool forces it.
    """
    if kind == "imagenet":
        steps: list[Transform] = [RandomResizedCrop(img_size)]
    elif kind == "small":
        steps = [ResizeCenterCrop(img_size, img_size), PadRandomCrop(img_size, max(1, img_size // 8))]
    elif kind == "none":
        steps = [ResizeCenterCrop(img_size, img_size)]
    else:
        raise ValueError(f"unknown augmentation {kind!r}; expected imagenet, small or none")
    if hflip if hflip is not None else kind != "none":
        steps.append(RandomHorizontalFlip())
    return Compose(steps)


def eval_resize(kind: str, img_size: int) -> int:
    """The shorter side an image is resized to before the centre crop of ``img_size`` at evaluation:
    ``⌊img_size / CROP_PCT⌋`` for ``imagenet`` (224 -> 256, 32 -> 36; timm's and ``bhvit predict``'s
    rule), ``img_size`` for ``small`` and ``none`` (training saw the whole image)."""
    return math.floor(img_size / CROP_PCT) if kind == "imagenet" else img_size


def eval_transform(kind: str, img_size: int) -> Compose:
    """The evaluation transform matching the training ``kind`` (uint8 out): :class:`ResizeCenterCrop`
    at :func:`eval_resize`."""
    return Compose([ResizeCenterCrop(img_size, eval_resize(kind, img_size))])
