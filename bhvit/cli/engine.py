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
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="class names to store, one per line or a JSON list, in the order of the logits (default: the "
        "checkpoint's, which bhvit train records)",
    )
    args = p.parse_args(argv)
    model, meta = load_model(args.checkpoint)
    labels = read_labels(args.labels, model.config.num_classes) if args.labels else meta.get("labels")
    packed = pack(model)
    path = save_packed(packed, args.output, preprocess=_preprocess(model, meta.get("preprocess")), labels=labels)
    info = size_report(model, path)
    if args.check:
        x = torch.randn(args.check, model.config.in_chans, *model.config.img_size)
        same = agreement(model, packed, x)
        info["check_max_abs_logit_diff"] = same["max_abs_logit_diff"]
        info["check_top1_identical"] = same["top1_differs"] == 0
        info["check_exact_zeros_before_sign"] = sum(zero_audit(model, x).values())
    print(json.dumps({"output": str(path), **info}, indent=2))
    return 0


def read_labels(path: str, num_classes: int) -> list[str]:
    """Class names from ``path``: a JSON list of strings (the file starts with ``[``), or one name per
    line (surrounding blanks and blank lines skipped); a ``ValueError`` naming the file when they are not
    ``num_classes`` non-empty names."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--labels {path}: starts with '[' but is not a JSON list ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"--labels {path}: the JSON list must hold non-empty strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(
            f"--labels {path}: {len(names)} name(s) for a model of {num_classes} classes; give one name per "
            "class, one per line or as a JSON list, in the order of the logits"
        )
    return names


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
