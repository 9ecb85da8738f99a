"""Accuracy of a packed file, the deployed model, through the native runtime (behind ``bhvit eval model.bhvp``).

The test split is prepared as the file's ``preprocess`` says, which is what training's evaluation does to an
image (docs/training.md, "Data"): the shorter side resized to ``resize`` (Pillow's bicubic filter, as
:func:`bhvit.data.transforms.resize` does it), the centre crop of the model's input size, then
``(x/255 − mean)/std``. Each batch goes through the runtime (:meth:`bhvit.runtime.Model.run`) and, when the
float checkpoint is given, through the float model too: the report then has the top-1 agreement between the
two on the same inputs.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bhvit import runtime
from bhvit.data import DataConfig, build_datasets
from bhvit.data.datasets import Augmented
from bhvit.data.transforms import Compose, ResizeCenterCrop, normalize_batch


def _hits(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(top-1, top-5) hits of a batch of logits (B, N) against labels (B,)."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, : min(5, logits.shape[1])]
    found = top == labels[:, None]
    return int(found[:, 0].sum()), int(found.any(axis=1).sum())


def _float_model(checkpoint: str | Path, packed: runtime.Model) -> torch.nn.Module:
    """The float model of ``checkpoint``, checked to take the packed file's inputs and give its outputs."""
    from bhvit.checkpoint import load_model

    model, _ = load_model(checkpoint)
    cfg = model.config
    have = (cfg.in_chans, *cfg.img_size)
    if have != tuple(packed.input_shape) or cfg.num_classes != packed.num_classes:
        raise ValueError(
            f"{checkpoint} takes {'×'.join(map(str, have))} images to {cfg.num_classes} classes, the packed file "
            f"{packed.source} {'×'.join(map(str, packed.input_shape))} to {packed.num_classes}: give the checkpoint "
            "it was packed from"
        )
    return model.eval()


def evaluate_packed(
    path: str | Path, data: DataConfig, checkpoint: str | Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) of the packed file ``path`` on the test split of ``data`` (``data.img_size``
    is replaced by the file's input side), and with ``checkpoint`` the float model's accuracy and the top-1
    agreement (%) of the two on the same images. ``seed`` draws a flat folder's hold-out split (the training
    run's seed gives the images it held out)."""
    model = runtime.load(path)
    c, h, w = model.input_shape
    if h != w:
        raise ValueError(f"{path}: {h}×{w} input; bhvit's data pipeline evaluates square inputs only")
    float_model = _float_model(checkpoint, model) if checkpoint is not None else None
    # augment="imagenet" keeps the test images as stored (the other families resize them once when loaded);
    # the file's own resize and centre crop are applied below
    bundle = build_datasets(replace(data, img_size=h, augment="imagenet"), seed=seed)
    if bundle.num_classes != model.num_classes or bundle.in_chans != c:
        raise ValueError(
            f"{path}: the packed model takes {c} channel(s) to {model.num_classes} classes, data {bundle.name} has "
            f"{bundle.in_chans} / {bundle.num_classes}: evaluate on data of the model's classes"
        )
    if model.labels is not None and tuple(model.labels) != tuple(bundle.classes):
        warnings.warn(
            f"{path}: its labels differ from the class names of {bundle.name}; scoring by class index",
            stacklevel=2,
        )
    prep = model.preprocess
    test = Augmented(bundle.test.base, Compose([ResizeCenterCrop(h, int(prep["resize"]))]), None)
    loader = torch.utils.data.DataLoader(test, batch_size=data.eval_batch_size, num_workers=data.num_workers)
    counts = dict.fromkeys(("top1", "top5", "float_top1", "float_top5", "same", "n"), 0)
    start = time.time()
    for images, labels in loader:
        x = normalize_batch(images, tuple(prep["mean"]), tuple(prep["std"])).contiguous()
        y = labels.numpy()
        logits = model.run(x.numpy())
        top1, top5 = _hits(logits, y)
        counts["top1"] += top1
        counts["top5"] += top5
        counts["n"] += len(y)
        if float_model is not None:
            with torch.inference_mode():
                ref = float_model(x).numpy()
            f1, f5 = _hits(ref, y)
            counts["float_top1"] += f1
            counts["float_top5"] += f5
            counts["same"] += int((ref.argmax(1) == logits.argmax(1)).sum())
    n = counts["n"]
    if n == 0:
        raise ValueError(f"{bundle.name}: the evaluation split holds no images")
    out: dict[str, Any] = {"acc1": 100 * counts["top1"] / n, "acc5": 100 * counts["top5"] / n, "n": n}
    if float_model is not None:
        out.update(
            float_acc1=100 * counts["float_top1"] / n,
            float_acc5=100 * counts["float_top5"] / n,
            top1_agreement=100 * counts["same"] / n,
            top1_differs=n - counts["same"],
            checkpoint=str(checkpoint),
        )
    split = {"split": bundle.split} if bundle.split is not None else {}
    return out | {"packed": str(path), "dataset": bundle.name, **split, "eval_time_s": round(time.time() - start, 2)}
