import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bhvit.data import DataConfig, DatasetNotFoundError, build_datasets, cifar10, fashion_mnist, folder
from bhvit.data.transforms import (
    PadRandomCrop,
    RandomResizedCrop,
    ResizeCenterCrop,
    normalize_batch,
    random_resized_crop_box,
)


def test_read_idx_roundtrip_and_multibyte(tmp_path):
    import struct

    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i4")  # big-endian, as IDX stores it
    raw = struct.pack(">HBB", 0, 0x0C, 3) + struct.pack(">3i", 2, 3, 4) + arr.tobytes()
    (tmp_path / "x-idx").write_bytes(raw)
    out = fashion_mnist.read_idx(tmp_path / "x-idx")
    assert out.dtype == torch.int32 and out.tolist() == arr.astype(np.int32).tolist()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        fashion_mnist.read_idx(tmp_path / "bad")


def test_fashion_mnist_from_user_dir(fmnist_dir):
    d = fashion_mnist.load(fmnist_dir)
    assert d["train_images"].shape == (64, 28, 28) and d["train_images"].dtype == torch.uint8
    assert d["test_labels"].shape == (32,) and d["test_labels"].dtype == torch.int64
    assert fashion_mnist.candidate_dirs(fmnist_dir)[0] == fmnist_dir


def test_search_order_documented():
    dirs = fashion_mnist.candidate_dirs("/some/where")
    assert str(dirs[0]) == "/some/where"
    assert dirs.index(fashion_mnist.DEBIAN_DIR) < dirs.index(fashion_mnist.cache_dir("fashion-mnist"))


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BHVIT_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="apt-get download dataset-fashion-mnist"):
        fashion_mnist.locate(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        cifar10.locate(tmp_path / "empty")


def test_cifar_pickles(cifar_dir):
    d = cifar10.load(cifar_dir)
    assert d["train_images"].shape == (20, 3, 32, 32) and d["test_images"].shape == (4, 3, 32, 32)
    bundle = build_datasets(DataConfig(name=str(cifar_dir), img_size=32))
    assert bundle.name == "cifar10" and bundle.in_chans == 3 and bundle.num_classes == 10


def test_image_folder_any_size(folder_dir):
    bundle = build_datasets(DataConfig(name=str(folder_dir), img_size=64))
    assert bundle.classes == ("cat", "dog") and len(bundle.train) == 6 and len(bundle.test) == 6
    for ds in (bundle.train, bundle.test):
        img, label = ds[1]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and label == 0
    assert not folder.is_image_folder(folder_dir / "train")


def test_fashion_mnist_bundle_is_presized_and_normalizable(fmnist_dir):
    bundle = build_datasets(DataConfig(name=str(fmnist_dir), img_size=32))
    x = torch.stack([bundle.test[i][0] for i in range(4)])
    assert x.shape == (4, 1, 32, 32)
    z = normalize_batch(x, bundle.mean, bundle.std)
    ref = (x.float() / 255 - bundle.mean[0]) / bundle.std[0]
    torch.testing.assert_close(z, ref)


def test_augmentation_seeded_per_sample_and_epoch(fmnist_dir):
    train = build_datasets(DataConfig(name=str(fmnist_dir), img_size=32), seed=3).train
    a = [train[i][0] for i in range(16)]
    assert all(torch.equal(x, train[i][0]) for i, x in enumerate(a))  # same (seed, epoch, i)
    train.set_epoch(1)
    assert any(not torch.equal(x, train[i][0]) for i, x in enumerate(a))


def test_pad_random_crop_matches_pad_then_slice():
    img = torch.randint(0, 255, (2, 9, 11), dtype=torch.uint8)
    t = PadRandomCrop(size=9, padding=3)
    for seed in range(30):
        out = t(img, random.Random(seed))
        g = random.Random(seed)
        top, left = g.randint(0, 9 + 6 - 9), g.randint(0, 11 + 6 - 9)
        ref = F.pad(img, (3, 3, 3, 3))[..., top : top + 9, left : left + 9]
        assert torch.equal(out, ref)


def test_random_resized_crop_box_in_bounds():
    g = random.Random(0)
    for h, w in [(10, 10), (7, 300), (300, 7), (224, 224)]:
        for _ in range(50):
            top, left, ch, cw = random_resized_crop_box(h, w, g)
            assert top >= 0 and left >= 0 and top + ch <= h and left + cw <= w and ch > 0 and cw > 0
    out = RandomResizedCrop(32)(torch.zeros(3, 50, 70, dtype=torch.uint8), g)
    assert out.shape == (3, 32, 32)
    assert ResizeCenterCrop(32, 36)(torch.zeros(3, 50, 70, dtype=torch.uint8)).shape == (3, 32, 32)


def test_data_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        DataConfig(img_size=28)
    with pytest.raises(DatasetNotFoundError, match="neither"):
        build_datasets(DataConfig(name="no_such_dataset"))


@pytest.mark.slow
def test_real_fashion_mnist_if_installed():
    try:
        d = fashion_mnist.load()
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST not installed (python -m bhvit.data.fashion_mnist --download-debian)")
    assert d["train_images"].shape == (60000, 28, 28) and d["test_images"].shape == (10000, 28, 28)
    assert torch.bincount(d["train_labels"]).tolist() == [6000] * 10
    assert torch.bincount(d["test_labels"]).tolist() == [1000] * 10


def test_resize_is_pillows_bicubic():
    """uint8 resizes give Pillow's pixels (bhvit predict serves a model what its evaluation saw): all but a
    few equal, none more than 1 apart, up and down, odd sizes and aspect ratios."""
    from PIL import Image

    from bhvit.data.transforms import resize

    rng = np.random.default_rng(0)
    for (h, w), (H, W) in [((28, 28), (32, 32)), ((24, 40), (32, 53)), ((300, 200), (48, 32)), ((7, 5), (33, 65))]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(arr).resize((W, H), Image.BICUBIC)).astype(int)
        got = resize(torch.from_numpy(arr).permute(2, 0, 1), (H, W)).permute(1, 2, 0).numpy().astype(int)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1
        assert (got != want).mean() < 0.01
