"""A user's own folder, from ``bhvit train --data DIR`` to a packed file that prints its class names:
only DIR is read, a flat folder is split (seeded, stratified, recorded), class names and the evaluation's
preprocessing travel into the checkpoint and the packed file, and a tiny epoch is warned about."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bhvit.cli import main
from bhvit.data import DataConfig, DatasetError, DatasetNotFoundError, build_datasets, fashion_mnist, folder
from bhvit.data.transforms import normalize_batch
from bhvit.predict import Preprocess
from bhvit.train import checkpoint as ckpt_io
from bhvit.train.config import FEW_STEPS, few_steps_advice
from bhvit.train.logs import read_jsonl

SIZES = [(24, 40), (50, 30), (33, 33), (20, 64), (45, 45)]  # (h, w): non-square, so the geometry matters


def make_flat(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<i>.png`` with ``counts[class]`` images of assorted sizes, the class in the brightness."""
    rng = np.random.default_rng(0)
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            h, w = SIZES[i % len(SIZES)]
            arr = rng.integers(0, 110, (h, w, 3)) + 120 * k
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{i:02d}.png")
    return root


def test_flat_folder_split_is_seeded_stratified_and_overridable(tmp_path):
    root = make_flat(tmp_path / "flat", {"ants": 10, "bees": 5, "wasps": 2})
    bundle = build_datasets(DataConfig(name=str(root)), seed=0)
    assert bundle.classes == ("ants", "bees", "wasps") and bundle.num_classes == 3
    split = bundle.split
    # round(0.2 n) per class, at least 1 and at most n - 1: every class is in both splits
    assert split["val_per_class"] == {"ants": 2, "bees": 1, "wasps": 1}
    assert (split["seed"], split["val_fraction"], split["train_images"], split["val_images"]) == (0, 0.2, 13, 4)
    train = {p for p, _ in bundle.train.base.samples}
    val = {p for p, _ in bundle.test.base.samples}
    assert not train & val and len(train | val) == 17
    assert sorted({label for _, label in bundle.test.base.samples}) == [0, 1, 2]

    again = build_datasets(DataConfig(name=str(root)), seed=0)
    assert {p for p, _ in again.test.base.samples} == val  # the same seed draws the same split
    other = [{p for p, _ in build_datasets(DataConfig(name=str(root)), seed=s).test.base.samples} for s in (1, 2, 3)]
    assert any(v != val for v in other)  # another seed draws another one
    half = build_datasets(DataConfig(name=str(root), val_fraction=0.5), seed=0).split
    assert half["val_per_class"] == {"ants": 5, "bees": 2, "wasps": 1} and half["val_fraction"] == 0.5
    assert "held out 20% of each class" in folder.describe_split(root, split)


def test_flat_folder_refusals(tmp_path):
    with pytest.raises(DatasetError, match=r"class wasps has 1 image: a held-out split needs at least 2"):
        build_datasets(DataConfig(name=str(make_flat(tmp_path / "a", {"ants": 4, "wasps": 1}))))
    with pytest.raises(DatasetError, match=r"one class \(ants\); a classifier needs at least 2 class folders"):
        build_datasets(DataConfig(name=str(make_flat(tmp_path / "b", {"ants": 4}))))
    for split in ("train", "val"):  # one class with train/ and val/ too
        make_flat(tmp_path / "c" / split, {"ants": 2})
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        build_datasets(DataConfig(name=str(tmp_path / "c")))
    for split in ("train", "val"):
        make_flat(tmp_path / "d" / split, {"ants": 2, "bees": 2})
    with pytest.raises(ValueError, match=r"has its own validation split .*: drop --val-fraction"):
        build_datasets(DataConfig(name=str(tmp_path / "d"), val_fraction=0.3))
    with pytest.raises(ValueError, match=r"synthetic has its own test split: drop --val-fraction"):
        build_datasets(DataConfig(name="synthetic", val_fraction=0.3))
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="must lie in"):
            DataConfig(val_fraction=bad)
    with pytest.raises(ValueError, match="at least 2 classes"):
        DataConfig(name="synthetic", synthetic_classes=1)


def test_a_directory_is_only_ever_that_directory(tmp_path, monkeypatch, fake_fashion_mnist):
    """Fashion-MNIST in the cache and in the Debian place must not stand in for a --data DIR."""
    make_fashion_mnist = fake_fashion_mnist
    cache = tmp_path / "cache"
    make_fashion_mnist(cache / "fashion-mnist")
    monkeypatch.setenv("BHVIT_DATA_DIR", str(cache))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", cache / "fashion-mnist")
    assert build_datasets(DataConfig(name="fashion_mnist")).name == "fashion_mnist"  # the name searches
    for content in ({}, {"notes.txt": "hello"}, {"empty_class/.hidden.png": "x"}):
        d = tmp_path / f"d{len(content)}{'x' * len(str(content))}"
        d.mkdir()
        for rel, text in content.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        with pytest.raises((DatasetNotFoundError, DatasetError)) as err:
            build_datasets(DataConfig(name=str(d)))
        assert str(d) in str(err.value) and "class" in str(err.value)
    own = make_fashion_mnist(tmp_path / "own", n_train=16, n_test=8)  # IDX files in DIR are read from DIR
    assert len(build_datasets(DataConfig(name=str(own))).test) == 8


def test_few_steps_advice():
    assert few_steps_advice(60_000, 128, 1) is None
    text = few_steps_advice(40, 32, 3)
    assert "only 1 optimizer step(s) (40 training images at batch 32), 3 in all" in text
    assert "--batch-size 4 gives 10 steps per epoch" in text.replace("(", "").replace(")", "")
    assert few_steps_advice(FEW_STEPS * 8, 8, 1) is None and few_steps_advice(FEW_STEPS * 8 - 1, 8, 1)


def _train(root: Path, out: Path, *extra: str, precision: str = "binary") -> int:
    return main(
        [
            "train",
            "--data",
            str(root),
            "--arch",
            "bhvit_test",
            "--precision",
            precision,
            "--img-size",
            "32",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--threads",
            "1",
            "--no-auto-teacher",
            "--no-progress",
            "--no-plots",
            *extra,
        ]
    )


def test_labels_and_preprocessing_travel_from_folder_to_packed_file(tmp_path, capsys):
    """Train on a flat folder -> the checkpoint holds the names, the split and the eval preprocessing ->
    pack -> predict --packed prints the names; the packed file's preprocessing reproduces the evaluation's
    pixels (Pillow's bicubic against torch's, 1 of 255 apart at most)."""
    root = make_flat(tmp_path / "shapes", {"circles": 6, "squares": 6})
    assert _train(root, tmp_path / "run", "--val-fraction", "0.34") == 0
    err = capsys.readouterr().err
    assert "held out 34% of each class for validation (seed 0): 8 training, 4 validation images" in err
    assert "warning: an epoch is only 2 optimizer step(s)" in err
    ck = ckpt_io.load(tmp_path / "run" / "checkpoint.pt")
    assert ck["labels"] == ["circles", "squares"]
    assert ck["data_split"]["val_per_class"] == {"circles": 2, "squares": 2}
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["val_images"] for r in log if r["kind"] == "split"] == [4]
    assert any(r["kind"] == "warning" and "optimizer step" in r["message"] for r in log)

    # bhvit eval without --data scores the held-out images of the run, as the run did
    assert main(["eval", str(tmp_path / "run" / "checkpoint.pt"), "--threads", "1"]) == 0
    scored = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert scored["n"] == 4 and scored["acc1"] == pytest.approx(summary["test_acc1"])

    packed = tmp_path / "model.bhvp"
    assert main(["pack", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(packed), "--check", "0"]) == 0
    capsys.readouterr()
    image = root / "squares" / "03.png"
    assert main(["predict", str(image), "--packed", str(packed)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and {lines[1].split()[1], lines[2].split()[1]} == {"circles", "squares"}

    from bhvit import runtime

    model = runtime.load(str(packed))
    assert model.labels == ["circles", "squares"] and model.preprocess["resize"] == ck["preprocess"]["resize"]
    for key in ("mean", "std"):  # the runtime holds them as float32
        assert model.preprocess[key] == pytest.approx(ck["preprocess"][key], rel=1e-6)
    cfg = json.loads(ck["train_config"])["data"]
    bundle = build_datasets(DataConfig(**{**cfg, "val_fraction": 0.34}), seed=0)
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 32}
    assert bundle.preprocess == ck["preprocess"] == imagenet
    prep = Preprocess.for_model(32, 3, model.preprocess)
    shapes = set()
    for i, (path, _) in enumerate(bundle.test.base.samples):
        with Image.open(path) as im:
            shapes.add(im.size)
            served = prep(im)
        evaluated = normalize_batch(bundle.test[i][0][None], bundle.mean, bundle.std)[0].numpy()
        assert np.abs(served - evaluated).max() <= 1.0001 / 255 / min(bundle.std)
    assert any(w != h for w, h in shapes)  # the crop mattered


def test_imagenet_evaluation_stores_its_resize(tmp_path):
    """The imagenet family evaluates at ⌊side / 0.875⌋ then crops: the stored resize is that number."""
    root = make_flat(tmp_path / "big", {"a": 3, "b": 3})
    bundle = build_datasets(DataConfig(name=str(root), img_size=64, augment="imagenet"))
    assert bundle.preprocess["resize"] == 73
    step = bundle.test.transform.transforms[0]
    assert (step.size, step.resize) == (64, 73)


def test_pack_labels_file_overrides_and_checks_the_count(tmp_path, capsys):
    root = make_flat(tmp_path / "shapes", {"circles": 3, "squares": 3})
    assert _train(root, tmp_path / "run") == 0
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    from bhvit import runtime

    for name, text in (("names.txt", "round thing\n\n  square thing  \n"), ("names.json", '["round", "square"]')):
        (tmp_path / name).write_text(text)
        out = tmp_path / f"{name}.bhvp"
        assert main(["pack", ckpt, "-o", str(out), "--check", "0", "--labels", str(tmp_path / name)]) == 0
        want = ["round thing", "square thing"] if name.endswith("txt") else ["round", "square"]
        assert runtime.load(str(out)).labels == want
    capsys.readouterr()
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    assert main(["pack", ckpt, "-o", str(tmp_path / "x.bhvp"), "--labels", str(tmp_path / "three.txt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 name(s) for a model of 2 classes" in err and not (tmp_path / "x.bhvp").exists()
    (tmp_path / "bad.json").write_text('["a", 2]')
    assert main(["pack", ckpt, "-o", str(tmp_path / "x.bhvp"), "--labels", str(tmp_path / "bad.json")]) == 1
    assert "non-empty strings" in capsys.readouterr().err


def test_folder_with_train_and_val_keeps_its_names(tmp_path, image_folder):
    root = image_folder(tmp_path / "data")
    assert _train(root, tmp_path / "run") == 0
    ck = ckpt_io.load(tmp_path / "run" / "checkpoint.pt")
    assert ck["labels"] == ["cat", "dog"] and ck["data_split"] is None
    model, meta = __import__("bhvit").load_model(tmp_path / "run" / "checkpoint.pt")
    assert meta["labels"] == ["cat", "dog"] and meta["preprocess"]["resize"] == 32
    assert torch.is_tensor(next(iter(model.state_dict().values())))
