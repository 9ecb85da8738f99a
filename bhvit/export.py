"""ONNX export of the float-simulated model (binarization expressed with Sign / MatMul / Round ops).

The exported graph computes exactly what ``model.eval()`` computes in PyTorch; it is the portable
reference for runtimes without a 1-bit engine (the packed engine, ``bhvit pack``, is the fast path).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .models.bhvit import BHViT

__all__ = ["export_onnx"]


def export_onnx(model: BHViT, path: str | Path, *, opset: int = 17, check: bool = True) -> dict:
    """Write ``model`` (eval mode, dynamic batch) as ONNX; with ``check`` and onnxruntime installed,
    run both on random images and report the largest logit difference.

    Returns ``{"path", "opset", "max_abs_diff" (or None), "top1_identical" (or None)}``.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise RuntimeError("ONNX export needs the 'onnx' package: pip install 'bhvit[onnx]'") from None
    model = model.eval()
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, *cfg.img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    report = {"path": str(path), "opset": opset, "max_abs_diff": None, "top1_identical": None}
    if check:
        report.update(_compare(model, path, torch.randn(3, cfg.in_chans, *cfg.img_size)))
    return report


def _compare(model: BHViT, path: Path, x: torch.Tensor) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    with torch.no_grad():
        want = model(x)
    got = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0])
    same_top1 = bool(torch.equal(got.argmax(1), want.argmax(1)))
    return {"max_abs_diff": float((got - want).abs().max()), "top1_identical": same_top1}
