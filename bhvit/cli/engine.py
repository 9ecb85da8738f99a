"""``bhvit pack`` and ``bhvit bench``: the packed 1-bit engine (docs/engine.md, docs/packed-format.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bhvit import runtime
from bhvit.checkpoint import atomic_write, load_model
from bhvit.cli.errors import CommandParser
from bhvit.engine import bench
from bhvit.engine.api import agreement, pack, save_packed, size_report, zero_audit
from bhvit.models.bhvit import BINARY_PRECISIONS
from bhvit.predict import Preprocess


def cmd_pack(argv: list[str] | None = None) -> int:
    """Pack a checkpoint, write the file, print its size next to the fp32 checkpoint and a check of the
    packed logits against the float model's on random images."""
    p = CommandParser(prog="bhvit pack", description="write a packed 1-bit model file (format version 2)")
    p.add_argument("checkpoint", help="a bhvit checkpoint or one of the authors' (.pth / .safetensors)")
    p.add_argument("-o", "--output", required=True, help="packed file to write (docs/packed-format.md)")
    p.add_argument(
        "--check", type=int, default=4, metavar="N", help="compare packed and float logits on N random images (0: skip)"
    )
    args = p.parse_args(argv)
    model, meta = load_model(args.checkpoint)
    packed = pack(model)
    path = save_packed(
        packed, args.output, preprocess=_preprocess(model, meta.get("preprocess")), labels=meta.get("labels")
    )
    info = size_report(model, path)
    if args.check:
        x = torch.randn(args.check, model.config.in_chans, *model.config.img_size)
        same = agreement(model, packed, x)
        info["check_max_abs_logit_diff"] = same["max_abs_logit_diff"]
        info["check_top1_identical"] = same["top1_differs"] == 0
        info["check_exact_zeros_before_sign"] = sum(zero_audit(model, x).values())
    print(json.dumps({"output": str(path), **info}, indent=2))
    return 0


def _preprocess(model: torch.nn.Module, stored: Any) -> dict[str, Any] | None:
    """What the packed file says about preprocessing: the checkpoint's, completed from the model's
    ``pretrained_cfg`` (for images predict reads: grey or RGB), so ``predict --packed`` needs no model."""
    cfg = model.config
    if cfg.in_chans not in (1, 3):
        return stored
    return Preprocess.for_model(cfg.img_size, cfg.in_chans, stored, model.pretrained_cfg).to_meta()


def cmd_bench(argv: list[str] | None = None) -> int:
    """Run the latency grid of :mod:`bhvit.engine.bench`, print the report, write the JSON record."""
    p = CommandParser(prog="bhvit bench", description="packed engine vs fp32 and int8 PyTorch")
    p.add_argument("--models", nargs="+", default=["bhvit_tiny", "bhvit_small"])
    p.add_argument("--checkpoint", help="benchmark this checkpoint (e.g. the demo model) instead of --models")
    p.add_argument("--precision", nargs="+", default=["binary"], choices=BINARY_PRECISIONS)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime even when installed")
    p.add_argument("--isa", default=None, help="the runtime's kernel path, e.g. avx2 (default: the best this CPU has)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print the runtime's time per op kind and its share of the ideal binary time",
    )
    p.add_argument("--json", default="out/bench_e2e.json")
    args = p.parse_args(argv)
    if args.isa:
        runtime.set_isa(args.isa)
    path = Path(args.json)
    rows = bench.bench_grid(
        args.models,
        args.precision,
        args.batch,
        args.threads,
        args.rounds,
        checkpoint=args.checkpoint,
        onnx=not args.no_onnx,
        workdir=path.parent,
    )
    print(f"isa={runtime.isa()} load={os.getloadavg()[0]:.2f}")
    print(bench.report(rows, profile=args.profile))
    text = json.dumps({"machine": bench.machine_info(), "rows": rows}, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return 0
