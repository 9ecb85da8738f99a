"""Tiny synthetic datasets on disk in the three formats the loaders read."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """IDX: 0x0000, dtype code 0x08 (uint8), ndim, big-endian dims, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Fake Fashion-MNIST: class k is a bright square at a class-dependent spot, so it is learnable."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(labels):
            r, c = 2 + 2 * (k // 5) * 5, 2 + (k % 5) * 5
            images[i, r : r + 6, c : c + 5] = 250
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def fake_fashion_mnist():
    """:func:`make_fashion_mnist`, for tests that write the files where they need them."""
    return make_fashion_mnist


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    return make_fashion_mnist(tmp_path / "fmnist")


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cifar" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    return d.parent


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    """train/ and val/ with two classes of images of assorted sizes and modes."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    sizes = [(17, 23), (40, 40), (64, 31)]
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                im = Image.fromarray(arr).convert("L" if i == 1 else "RGB")
                im.save(root / split / cls / f"{i}.png")
    return root


def make_image_folder(root: Path, side: int = 20) -> Path:
    """An image folder of 2 classes × 6 training and × 3 validation ``side``-px RGB PNGs, the class in the
    brightness (learnable): 3 steps per epoch at batch 4."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 120, (side, side, 3), dtype=np.uint8) + 120 * k
                Image.fromarray(arr.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder():
    """:func:`make_image_folder`, for tests that write folders of their own."""
    return make_image_folder


TEACHER_MEAN, TEACHER_STD, TEACHER_SIDE = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), 48


class FakeTimmNet(nn.Module):
    """A timm-like classifier: 3-channel 48-px input, ``num_classes`` and ``pretrained_cfg``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {"input_size": (3, TEACHER_SIDE, TEACHER_SIDE), "mean": TEACHER_MEAN, "std": TEACHER_STD}
        self.head = nn.Linear(3, num_classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.head(x.mean((2, 3)))


@pytest.fixture
def fake_timm(monkeypatch):
    """``import timm`` gives a stand-in whose create_model knows one model, 'fakenet' (FakeTimmNet)."""
    calls = []

    def create_model(name, pretrained=False, num_classes=1000, **kw):
        calls.append({"name": name, "pretrained": pretrained, "num_classes": num_classes})
        if name != "fakenet":
            raise RuntimeError(f"Unknown model ({name})")
        torch.manual_seed(123 if pretrained else 7)
        return FakeTimmNet(num_classes)

    module = types.SimpleNamespace(
        create_model=create_model, calls=calls, Net=FakeTimmNet, MEAN=TEACHER_MEAN, STD=TEACHER_STD, SIDE=TEACHER_SIDE
    )
    monkeypatch.setitem(sys.modules, "timm", module)
    return module
