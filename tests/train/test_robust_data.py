"""Image folders as users fill them: odd image modes, corrupt files (also inside loader workers),
empty or missing splits, stray files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bhvit.data import DataConfig, DatasetError, build_datasets, folder
from bhvit.data.images import MAX_ASPECT, read_rgb
from bhvit.train.distributed import DistInfo
from bhvit.train.loop import evaluate


def _png(path: Path, side: int = 12, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, per_class: int = 2) -> Path:
    for split in ("train", "val"):
        for k, cls in enumerate(("cat", "dog")):
            for i in range(per_class):
                _png(root / split / cls / f"{i}.png", seed=10 * k + i)
    return root


def test_wide_and_odd_modes_keep_their_contrast(tmp_path):
    ramp16 = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(ramp16).save(tmp_path / "g16.png")  # 16-bit grey PNG: Pillow mode I;16
    out = read_rgb(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.rint(ramp16 / 257.0).astype(np.uint8))  # not clipped at 255
    assert (out[..., 0] == out[..., 2]).all()

    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(floats).save(tmp_path / "f.tiff")  # mode F in [0, 1]
    np.testing.assert_array_equal(read_rgb(tmp_path / "f.tiff")[..., 1], np.rint(floats * 255).astype(np.uint8))

    wide = (np.arange(64, dtype=np.int32).reshape(8, 8) - 32) * 100_000  # mode I beyond 0..65535
    Image.fromarray(wide).save(tmp_path / "i.tiff")
    stretched = read_rgb(tmp_path / "i.tiff")[..., 0]
    assert stretched.min() == 0 and stretched.max() == 255 and len(np.unique(stretched)) == 64
    Image.fromarray(ramp16.astype(np.int32)).save(tmp_path / "i16.tiff")  # mode I holding 16-bit data
    np.testing.assert_array_equal(read_rgb(tmp_path / "i16.tiff")[..., 0], out[..., 0])

    floats[0, 0] = np.nan
    Image.fromarray(floats).save(tmp_path / "nan.tiff")
    with pytest.raises(DatasetError, match=r"nan\.tiff: 1 NaN or infinite pixel\(s\) in a F image"):
        read_rgb(tmp_path / "nan.tiff")


def test_palette_cmyk_grey_and_alpha_give_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert read_rgb(tmp_path / "c.jpg").shape == (10, 14, 3)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    grey = read_rgb(tmp_path / "l.png")
    assert all((grey[..., c] == rgb[..., 0]).all() for c in range(3))
    # alpha is premultiplied (composited over black), as bhvit predict does
    alpha = np.tile(np.array([0, 128, 255], dtype=np.uint8), (10, 5))[:, :14]
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(
        read_rgb(tmp_path / "a.png"), np.rint(rgb * (alpha[..., None] / 255.0) - 1e-9).astype(np.uint8)
    )
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png", transparency=0)  # palette entry 0 is transparent
    index = np.asarray(pal)
    expect = np.asarray(pal.convert("RGB")) * (index != 0)[..., None]
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), expect)
    assert (index == 0).any() and (index != 0).any()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_image_is_named_in_one_line(tmp_path, damage):
    root = _folder(tmp_path / "d")
    bad = root / "train" / "dog" / "1.png"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a png" * 10, "empty": b""}[damage])
    train, _ = folder.load(root)
    with pytest.raises(DatasetError) as err:
        train[3]
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg and "remove or replace" in msg
    assert ("truncated" in msg) if damage == "truncated" else ("not an image" in msg)
    assert train[0][0].shape == (3, 12, 12)  # the good files still read


def test_worker_process_error_still_names_the_file(tmp_path):
    root = _folder(tmp_path / "d")
    bad = root / "val" / "cat" / "0.png"
    bad.write_bytes(bad.read_bytes()[:40])
    bundle = build_datasets(DataConfig(name=str(root), img_size=32, eval_batch_size=2, num_workers=1))
    loader = torch.utils.data.DataLoader(bundle.test, batch_size=2, num_workers=1)
    with pytest.raises(DatasetError) as err:
        list(loader)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "\n" not in msg and "Traceback" not in msg


def test_extreme_aspect_ratio_is_refused(tmp_path):
    Image.new("RGB", (MAX_ASPECT * 3 + 1, 3)).save(tmp_path / "strip.png")
    with pytest.raises(DatasetError, match=r"strip\.png: image is 193×3 px, an aspect ratio above 64:1"):
        read_rgb(tmp_path / "strip.png")
    Image.new("RGB", (MAX_ASPECT * 3, 3)).save(tmp_path / "ok.png")
    assert read_rgb(tmp_path / "ok.png").shape == (3, MAX_ASPECT * 3, 3)


def test_empty_validation_split_is_an_error(tmp_path):
    root = _folder(tmp_path / "d")
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    (root / "val" / "cat" / "notes.txt").write_text("to do")
    with pytest.raises(
        DatasetError,
        match=r"val holds no images in class folders \(found 1 other file\(s\), "
        r"e\.g\. cat/notes\.txt\)",
    ):
        build_datasets(DataConfig(name=str(root), img_size=32))


def test_missing_split_and_empty_class_are_errors(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "train" / "bird").mkdir()
    with pytest.raises(DatasetError, match=r"1 class folder\(s\) hold no images \(bird\)"):
        folder.load(root)
    (root / "train" / "bird").rmdir()
    (root / "val").rename(root / "holdout")
    with pytest.raises(DatasetError, match="has train/ but no validation split"):
        build_datasets(DataConfig(name=str(root), img_size=32))
    (root / "holdout").rename(root / "validation")
    _png(root / "validation" / "fox" / "0.png")
    with pytest.raises(DatasetError, match="fox: class not present in train/"):
        folder.load(root)


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # Jupyter leaves these in every folder it opens
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    _png(root / "train" / "cat" / ".cache" / "x.png")
    train, val = folder.load(root)
    assert train.classes == ["cat", "dog"] and len(train) == 4 and len(val) == 4
    assert all(not p.name.startswith(".") and ".cache" not in p.parts for p, _ in train.samples)


def test_evaluation_of_nothing_is_an_error_not_zero_percent():
    import bhvit
    from bhvit.data.datasets import DataBundle, TensorImages

    empty = TensorImages(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 32}
    data = DataBundle("none", empty, empty, 10, 3, tuple("abcdefghij"), (0.5,) * 3, (0.25,) * 3, pre)
    model = bhvit.create_model("bhvit_test")
    with pytest.raises(DatasetError, match="the evaluation split holds no images"):
        evaluate(model, torch.utils.data.DataLoader(empty, batch_size=4), data, torch.device("cpu"), DistInfo())
