"""``bhvit pack`` and ``bhvit bench``: the packed 1-bit engine (docs/engine.md, docs/packed-format.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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
    """Time a packed file against its float checkpoint, or run the latency grid of :mod:`bhvit.engine.bench`;
    print the report (with the machine) and write the JSON record."""
    p = CommandParser(
        prog="bhvit bench",
        description="Latency of a packed file (.bhvp) in the runtime against its float checkpoint in PyTorch fp32 "
        "(batch 1 and 32, 1 thread and the default), or without a file the grid: packed runtime vs PyTorch "
        "fp32 / int8 / ONNX Runtime for --models or --checkpoint.",
    )
    p.add_argument("packed", nargs="?", help="a packed file to time (bhvit pack); without it, the grid")
    p.add_argument("--models", nargs="+", help="grid: variants to build (default bhvit_tiny bhvit_small)")
    p.add_argument(
        "--checkpoint",
        help="with a packed file: its float checkpoint, timed in PyTorch fp32 beside it; without: benchmark "
        "this checkpoint (e.g. the demo model) instead of --models",
    )
    p.add_argument("--precision", nargs="+", choices=BINARY_PRECISIONS, help="grid: precisions (default binary)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        help="thread counts of the runtime and torch (default: 1 and the runtime's default for a packed file, "
        "1 2 for the grid)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts (default 3)")
    p.add_argument("--no-onnx", action="store_true", help="grid: skip onnxruntime even when installed")
    p.add_argument("--isa", default=None, help="the runtime's kernel path, e.g. avx2 (default: the best this CPU has)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print the runtime's time per op kind (and, for the grid, its share of the ideal binary time)",
    )
    p.add_argument(
        "--json", help="write the JSON record here (default: out/bench_e2e.json for the grid, none for a file)"
    )
    args = p.parse_args(argv)
    if args.isa:
        runtime.set_isa(args.isa)
    if args.packed:
        grid_only = [f"--{k.replace('_', '-')}" for k in ("models", "precision") if getattr(args, k)]
        if grid_only or args.no_onnx:
            p.error(f"{' '.join(grid_only + ['--no-onnx'] * args.no_onnx)}: options of the grid, not of a packed file")
        return _bench_packed_file(args)
    path = Path(args.json or "out/bench_e2e.json")
    rows = bench.bench_grid(
        args.models or ["bhvit_tiny", "bhvit_small"],
        args.precision or ["binary"],
        args.batch,
        args.threads or [1, 2],
        args.rounds,
        checkpoint=args.checkpoint,
        onnx=not args.no_onnx,
        workdir=path.parent,
    )
    print(bench.machine_line())
    print(bench.report(rows, profile=args.profile))
    _write_json(path, {"machine": bench.machine_info(), "rows": rows})
    return 0


def _bench_packed_file(args: Any) -> int:
    """``bhvit bench model.bhvp [--checkpoint CKPT]``: the table of :func:`bhvit.engine.bench.bench_packed`."""
    from bhvit.files import file_kind

    if file_kind(args.packed) != "packed":
        raise ValueError(f"{args.packed}: not a packed file (bhvit pack writes one); a checkpoint goes to --checkpoint")
    refs = {"fp32": args.checkpoint} if args.checkpoint else {}
    threads = args.threads or [1, None]
    rows = bench.bench_packed(args.packed, refs, args.batch, threads, args.rounds)
    print(bench.machine_line())
    print(f"{args.packed} in the runtime" + (f", {args.checkpoint} in PyTorch fp32 (fp32)" if refs else ""))
    print(bench.packed_report(rows, list(refs)))
    record: dict[str, Any] = {"machine": bench.machine_info(), "packed": args.packed, "rows": rows}
    if args.profile:
        model = runtime.load(args.packed)
        x = np.random.default_rng(0).standard_normal((1, *model.input_shape), dtype=np.float32)
        per_op = bench.op_seconds(model, x, 0.3)
        record["packed_layers_ms"] = {k: v * 1e3 for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}
        parts = ", ".join(f"{k} {v:.3f}" for k, v in record["packed_layers_ms"].items())
        print(f"runtime, batch 1, {runtime.get_num_threads()} threads, ms per op kind: {parts}")
    if args.json:
        _write_json(Path(args.json), record)
    return 0


def _write_json(path: Path, record: dict[str, Any]) -> None:
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
