"""``bhvit profile``, ``predict``, ``convert`` and ``export``: one model or checkpoint at a time."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bhvit.cli.errors import CommandParser
from bhvit.predict import Preprocess, file_problem, predict_images
from bhvit.text import printable

# Choices of the model options, spelled here as in bhvit.models.bhvit (PRECISIONS, ATTN_QUANTS, NORMS; a test
# checks they agree): importing that module would import torch, which `bhvit predict --packed` does without.
PRECISIONS = ("fp", "some_fp", "binary")
ATTN_QUANTS = ("lsq", "gsb")
NORMS = ("bn", "ln")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, help="fp, some_fp or binary (default binary)")
    p.add_argument("--attn-quant", choices=ATTN_QUANTS, help="attention quantizer, lsq or gsb (default lsq)")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the variant's)")
    p.add_argument("--window-size", type=int, default=None, help="attention window side (default: the variant's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the variant's)")
    p.add_argument("--in-chans", type=int, default=None, help="image channels (default: the variant's, 3)")
    p.add_argument("--norm", choices=NORMS, default=None, help="bn (BatchNorm) or ln (LayerNorm)")


MODEL_OPTIONS = ("precision", "attn_quant", "img_size", "window_size", "num_classes", "in_chans", "norm")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {"precision": args.precision or "binary", "attn_quant": args.attn_quant or "lsq"}
    for key in ("img_size", "window_size", "num_classes", "in_chans", "norm"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    return opts


def _window(args: argparse.Namespace) -> dict[str, int]:
    """``--window-size`` as a ``load_model`` override, or none (the checkpoint's own, else 7)."""
    return {"window_size": args.window_size} if args.window_size else {}


def cmd_profile(argv: list[str]) -> int:
    p = CommandParser(
        prog="bhvit profile",
        description="Parameters by bit width, BOPs, FLOPs and OPs (SPEC §5) of a model variant, a checkpoint, "
        "or a packed file (from its program: ops, tensor sizes, BOPs).",
    )
    p.add_argument(
        "model",
        help="a variant (bhvit_tiny, bhvit_small, bhvit_test; the options below build it), a packed file "
        "(.bhvp) or a checkpoint (.pt / .safetensors)",
    )
    _model_options(p)
    p.add_argument("--ops", action="store_true", help="packed file: also list every op of its program")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    from bhvit.files import file_kind

    kind = file_kind(args.model)
    given = [f"--{k.replace('_', '-')}" for k in MODEL_OPTIONS if getattr(args, k) is not None]
    if kind != "missing" and given:
        p.error(f"model options ({' '.join(given)}) build a variant by name; {args.model} is a file with its own model")
    if kind == "packed":
        from bhvit.profile import profile_packed

        packed = profile_packed(args.model)
        print(packed.to_json() if args.json else packed.table(every_op=args.ops))
        return 0
    if args.ops:
        p.error("--ops lists the ops of a packed file (.bhvp); pack the model first (bhvit pack)")
    from bhvit.profile import profile_model

    if kind == "missing":
        from bhvit.registry import create_model, list_models

        if args.model not in list_models() and ("/" in args.model or "." in args.model):
            raise FileNotFoundError(f"{args.model}: no such file (variants: {', '.join(list_models())})")
        model = create_model(args.model, **_options(args))
    else:
        from bhvit.checkpoint import load_model

        model = load_model(args.model)[0]
    prof = profile_model(model, args.model)
    print(prof.to_json() if args.json else prof.table())
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number ≥ 1")
    return value


def cmd_predict(argv: list[str]) -> int:
    p = CommandParser(prog="bhvit predict", description="Classify images with a checkpoint.")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="bhvit .safetensors, training checkpoint, or the authors' .pth")
    source.add_argument("--packed", help="a packed 1-bit model file (bhvit pack)")
    p.add_argument("--topk", type=_positive_int, default=5, help="classes printed per image (default 5)")
    p.add_argument("--window-size", type=int, default=None, help="for authors' checkpoints (default 7)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    model_path = args.packed or args.checkpoint
    problem = file_problem(model_path)
    if problem is not None:  # checked before anything opens it: a FIFO would block the open
        raise ValueError(f"{model_path}: {problem}")
    if args.packed:
        model, meta, img_size, in_chans, cfg = _packed_model(args.packed)
    else:
        model, meta, img_size, in_chans, cfg = _float_model(args)
    prep = Preprocess.for_model(img_size, in_chans, meta.get("preprocess"), cfg)  # checks the file's metadata
    results = predict_images(model, args.images, prep, args.topk, meta.get("labels"))
    if args.json:
        print(json.dumps(results, indent=2))  # JSON escapes control characters itself
    for r in results if not args.json else []:
        if "error" in r:
            print(f"error: {printable(r['error'])}", file=sys.stderr)
            continue
        print(printable(r["path"]))
        for rank, t in enumerate(r["top"], 1):
            print(f"  {rank}. {printable(t['label']):<24} {100 * t['prob']:6.2f}%")
    return 1 if any("error" in r for r in results) else 0


def _packed_model(path: str) -> tuple[Any, dict[str, Any], tuple[int, int], int, None]:
    """A packed file through the native runtime (no torch): (model, metadata, img_size, in_chans, None)."""
    from bhvit import runtime

    model = runtime.load(path)
    meta = {"preprocess": model.preprocess, "labels": model.labels}
    c, h, w = model.input_shape
    return model.run, meta, (h, w), c, None


def _float_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any, int, Any]:
    """A checkpoint's float model as a numpy callable, its metadata, img_size, in_chans and pretrained_cfg."""
    import torch

    from bhvit.checkpoint import load_model

    model, meta = load_model(args.checkpoint, **_window(args))

    def run(x: Any) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run, meta, model.config.img_size, model.config.in_chans, getattr(model, "pretrained_cfg", None)


def cmd_convert(argv: list[str]) -> int:
    p = CommandParser(prog="bhvit convert", description="Authors' .pth -> bhvit .safetensors.")
    p.add_argument("src", help="the authors' checkpoint (.pth), or any checkpoint bhvit reads")
    p.add_argument("dst", help="bhvit .safetensors file to write")
    p.add_argument("--window-size", type=int, default=None, help="attention window of the model (default 7)")
    args = p.parse_args(argv)
    from bhvit.checkpoint import convert_checkpoint

    print(f"wrote {convert_checkpoint(args.src, args.dst, **_window(args))}")
    return 0


def cmd_export(argv: list[str]) -> int:
    p = CommandParser(prog="bhvit export", description="Export the simulated model as ONNX.")
    p.add_argument("checkpoint", help="a bhvit checkpoint or one of the authors' (.pth / .safetensors)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = p.parse_args(argv)
    from bhvit.checkpoint import load_model
    from bhvit.export import export_onnx

    model, _ = load_model(args.checkpoint)
    print(json.dumps(export_onnx(model, args.onnx, opset=args.opset, check=not args.no_check), indent=2))
    return 0
