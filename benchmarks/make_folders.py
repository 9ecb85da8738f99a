"""Image folders the project has never seen, for measuring ``bhvit train``'s defaults (docs/training.md).

Each set is written as ``DIR/train/<class>/<i>.png`` and ``DIR/val/<class>/<i>.png``, the layout a user
brings:

* ``digits``: 10 classes of 28-px grey digits rendered with the DejaVu fonts (22 faces here), random size,
  rotation (±15°), shift, stroke blur and noise: an easy MNIST-like task, 400 + 100 per class;
* ``fmnist``: Fashion-MNIST, 4,000 training images from its train split and 1,000 from its test split
  (stratified, the first of each class), 28-px grey PNGs;
* ``shapes``: 6 classes of 64-px RGB shapes (disc, square, triangle, cross, ring, bar) of random colour,
  size and place on a random-colour noisy background, 300 + 100 per class.

    python benchmarks/make_folders.py OUT_DIR [--sets digits fmnist shapes]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def _save(img: Image.Image, root: Path, split: str, cls: str, i: int) -> None:
    d = root / split / cls
    d.mkdir(parents=True, exist_ok=True)
    img.save(d / f"{i:05d}.png")


def digit_image(digit: int, fonts: list[Path], rng: random.Random) -> Image.Image:
    """One 28×28 grey digit: a random face at 16–24 px, rotated ±15°, shifted ±3 px, blurred, noisy."""
    canvas = Image.new("L", (56, 56), 0)
    font = ImageFont.truetype(str(rng.choice(fonts)), rng.randint(32, 48))
    ImageDraw.Draw(canvas).text((28, 28), str(digit), fill=255, font=font, anchor="mm")
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    img = canvas.resize((28, 28), Image.BILINEAR)
    dx, dy = rng.randint(-3, 3), rng.randint(-3, 3)
    img = img.transform(img.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (28, 28))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def make_digits(root: Path, per_class: tuple[int, int] = (400, 100), seed: int = 0) -> None:
    fonts = sorted(FONT_DIR.glob("DejaVu*.ttf"))
    if not fonts:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR} (apt-get install fonts-dejavu-core)")
    rng = random.Random(seed)
    for split, n in zip(("train", "val"), per_class):
        for digit in range(10):
            for i in range(n):
                _save(digit_image(digit, fonts, rng), root, split, str(digit), i)


def make_fmnist(root: Path, per_class: tuple[int, int] = (400, 100)) -> None:
    from bhvit.data import fashion_mnist

    arrays = fashion_mnist.load(None, False)
    for split, key, n in (("train", "train", per_class[0]), ("val", "test", per_class[1])):
        images, labels = arrays[f"{key}_images"].numpy(), arrays[f"{key}_labels"].numpy()
        for k, name in enumerate(fashion_mnist.CLASSES):
            cls = name.replace("/", "-")
            for i, idx in enumerate(np.flatnonzero(labels == k)[:n]):
                _save(Image.fromarray(images[idx]), root, split, cls, i)


SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def shape_image(kind: str, rng: random.Random, side: int = 64) -> Image.Image:
    """One RGB shape of random colour, radius 10–24 px and centre on a random-colour noisy background."""
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    fg = tuple((c + rng.randint(80, 175)) % 256 for c in bg)  # far enough from the background
    img = Image.new("RGB", (side, side), bg)
    d = ImageDraw.Draw(img)
    r = rng.randint(10, 24)
    cx, cy = rng.randint(r, side - r), rng.randint(r, side - r)
    a = rng.uniform(0, math.pi)
    if kind == "disc":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif kind == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=max(2, r // 4))
    elif kind == "square":
        d.polygon(
            [(cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2)) for k in range(4)],
            fill=fg,
        )
    elif kind == "triangle":
        d.polygon(
            [
                (cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
                for k in range(3)
            ],
            fill=fg,
        )
    elif kind == "cross":
        for t in (a, a + math.pi / 2):
            d.line(
                (cx - r * math.cos(t), cy - r * math.sin(t), cx + r * math.cos(t), cy + r * math.sin(t)),
                fill=fg,
                width=max(3, r // 3),
            )
    else:  # bar
        d.line(
            (cx - r * math.cos(a), cy - r * math.sin(a), cx + r * math.cos(a), cy + r * math.sin(a)),
            fill=fg,
            width=max(3, r // 3),
        )
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 20, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def make_shapes(root: Path, per_class: tuple[int, int] = (300, 100), seed: int = 0) -> None:
    rng = random.Random(seed)
    for split, n in zip(("train", "val"), per_class):
        for kind in SHAPES:
            for i in range(n):
                _save(shape_image(kind, rng), root, split, kind, i)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--sets", nargs="+", default=["digits", "fmnist", "shapes"], choices=["digits", "fmnist", "shapes"])
    args = p.parse_args()
    makers = {"digits": make_digits, "fmnist": make_fmnist, "shapes": make_shapes}
    for name in args.sets:
        makers[name](args.out / name)
        print(f"{args.out / name}: {sum(1 for _ in (args.out / name).rglob('*.png'))} images")


if __name__ == "__main__":
    main()
