"""Command bodies for the CLI's packed-engine subcommands (the lead wires them into ``bhvit.cli``):

* ``bhvit pack CHECKPOINT -o OUT.bhvp``: :func:`pack_main`;
* ``bhvit bench ...``: :func:`bhvit.engine.bench.main`;
* ``bhvit predict --packed FILE``: :func:`load_predictor` gives a callable images -> logits.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bhvit.engine.api import load_packed, pack, save_packed, size_report, zero_audit


def pack_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bhvit pack", description="write a packed 1-bit model file")
    p.add_argument("checkpoint", help="a bhvit checkpoint or one of the authors' (.pth / .safetensors)")
    p.add_argument("-o", "--output", required=True, help="packed file to write (docs/packed-format.md)")
    p.add_argument("--check", type=int, default=4, metavar="N",
                   help="compare packed and float logits on N random images (0: skip)")
    return p


def pack_main(argv: Sequence[str] | None = None) -> int:
    """Packs a checkpoint, writes the file, prints its size next to the fp32 checkpoint and a check."""
    import bhvit

    args = pack_parser().parse_args(argv)
    model, meta = bhvit.load_model(args.checkpoint)
    model.eval()
    packed = pack(model)
    path = save_packed(packed, args.output, preprocess=meta.get("preprocess"), labels=meta.get("labels"))
    info = size_report(model, path)
    if args.check:
        cfg = model.config
        x = torch.randn(args.check, cfg.in_chans, *cfg.img_size)
        with torch.no_grad():
            want = model(x)
        got = packed(x)
        info["check_max_abs_logit_diff"] = float((want - got).abs().max())
        info["check_top1_identical"] = bool(torch.equal(want.argmax(1), got.argmax(1)))
        info["check_exact_zeros_before_sign"] = sum(zero_audit(model, x).values())
    print(json.dumps({"output": str(path), **info}, indent=2))
    return 0


def load_predictor(path: str | Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict, dict]:
    """``(predict, config, meta)`` for ``bhvit predict --packed FILE``: ``predict(images (B, C, H, W))
    -> logits``; ``config`` is the model config dict stored in the file (img_size, num_classes, ...),
    ``meta`` the optional ``preprocess`` / ``labels``."""
    packed = load_packed(path)
    return packed, packed.config, dict(packed.parts.meta)
