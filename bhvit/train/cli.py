"""Command-line front ends: ``bhvit train`` and ``bhvit eval`` (argparse only; logic is in the library).

``bhvit train`` starts from a recipe (``--recipe recipes/….toml``) or the defaults, and every flag
given on the command line overrides the matching recipe value. Run it with ``torchrun
--nproc_per_node N -m bhvit train …`` (or the ``bhvit`` script) for N processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bhvit.cli import error_line
from bhvit.train.config import TrainConfig, load_recipe
from bhvit.upstream import CheckpointError

# flag → (table, key). Flags left at None do not override the recipe.
_FLAGS: dict[str, tuple[str, str]] = {
    "data": ("data", "name"), "data_root": ("data", "root"), "img_size": ("data", "img_size"),
    "augment": ("data", "augment"), "batch_size": ("data", "batch_size"), "workers": ("data", "num_workers"),
    "download": ("data", "download"), "train_subset": ("data", "train_subset"),
    "arch": ("model", "arch"), "precision": ("model", "precision"), "attn_quant": ("model", "attn_quant"),
    "window_size": ("model", "window_size"), "norm": ("model", "norm"), "drop_path": ("model", "drop_path_rate"),
    "recu": ("model", "recu"), "init_from": ("model", "init_from"),
    "loss": ("loss", "mode"), "teacher": ("loss", "teacher"), "kd_weight": ("loss", "kd_weight"),
    "reg_weight": ("loss", "reg_weight"), "reg_form": ("loss", "reg_form"),
    "label_smoothing": ("loss", "label_smoothing"),
    "lr": ("optim", "lr"), "no_scale_lr": ("optim", "scale_lr"), "weight_decay": ("optim", "weight_decay"),
    "warmup_epochs": ("optim", "warmup_epochs"), "clip_grad": ("optim", "clip_grad"),
    "epochs": ("run", "epochs"), "out": ("run", "out_dir"), "seed": ("run", "seed"), "device": ("run", "device"),
    "amp": ("run", "amp"), "ema": ("run", "ema_decay"), "resume": ("run", "resume"), "max_steps": ("run", "max_steps"),
    "ckpt_every": ("run", "ckpt_every"), "threads": ("run", "threads"), "no_progress": ("run", "progress"),
    "no_plots": ("run", "plots"), "grad_checkpointing": ("run", "grad_checkpointing"), "compile": ("run", "compile"),
    "log_every": ("run", "log_every"), "flip_every": ("run", "flip_every"),
}
_NEGATED = {"no_scale_lr", "no_progress", "no_plots"}


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bhvit train", description="Train a BHViT model (SPEC §4).")
    a = p.add_argument
    a("--recipe", help="TOML recipe; flags override its values (see recipes/)")
    a("--data", help="fashion_mnist (default), cifar10, synthetic, or a directory (image folder with "
                     "train/ and val/, or the IDX / pickle files)")
    a("--data-root", help="where to look first for a named dataset")
    a("--download", action="store_true", default=None, help="fetch the dataset if it is not found")
    a("--img-size", type=int, help="training image size, a multiple of 32 (default 32)")
    a("--augment", choices=["auto", "imagenet", "small", "none"])
    a("--batch-size", type=int, help="global batch size (split over processes)")
    a("--workers", type=int, help="data-loader worker processes")
    a("--train-subset", type=int, help="train on the first N images only")
    a("--arch", help="bhvit_tiny, bhvit_small, bhvit_test")
    a("--precision", choices=["binary", "some_fp", "fp"])
    a("--attn-quant", choices=["lsq", "gsb"])
    a("--window-size", type=int, help="attention window (default: the largest ≤ 7 that tiles img/32)")
    a("--norm", choices=["bn", "ln"])
    a("--drop-path", type=float)
    a("--recu", action="store_true", default=None)
    a("--override", action="append", default=[], metavar="KEY=JSON",
      help="a BHViTConfig field, e.g. --override depths=[1,1,2,1] (repeatable)")
    a("--init-from", help="initialise matching tensors from this checkpoint (e.g. the fp teacher)")
    a("--teacher", help="KD teacher: a checkpoint path or timm:<name>")
    a("--loss", choices=["paper", "kd", "kd_reg", "ce"], help="loss mix (default: paper with a teacher, else ce)")
    a("--kd-weight", type=float, help="λ (paper mode, default 0.8)")
    a("--reg-weight", type=float, help="β of L_re (default 0.1)")
    a("--reg-form", choices=["paper", "authors"])
    a("--label-smoothing", type=float)
    a("--lr", type=float, help="base lr (per 512 images unless --no-scale-lr)")
    a("--no-scale-lr", action="store_false", default=None, help="use --lr as given")
    a("--weight-decay", type=float)
    a("--warmup-epochs", type=float)
    a("--clip-grad", type=float)
    a("--epochs", type=int)
    a("--out", help="run directory (default runs/default)")
    a("--seed", type=int)
    a("--device", help="auto, cpu, cuda")
    a("--amp", choices=["auto", "off", "bf16", "fp16"])
    a("--ema", type=float, metavar="DECAY")
    a("--resume", help="checkpoint to resume from")
    a("--max-steps", type=int)
    a("--ckpt-every", type=int, help="also checkpoint every N steps")
    a("--log-every", type=int)
    a("--flip-every", type=int)
    a("--grad-checkpointing", action="store_true", default=None, help="recompute activations in backward")
    a("--compile", action="store_true", default=None, help="torch.compile the student (static shapes)")
    a("--threads", type=int)
    a("--no-progress", action="store_false", default=None)
    a("--no-plots", action="store_false", default=None)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe (or defaults) ← flags. Returns a validated :class:`TrainConfig`."""
    base = load_recipe(args.recipe).to_dict() if args.recipe else TrainConfig().to_dict()
    given = {k: v for k, v in vars(args).items() if k in _FLAGS and v is not None}
    for flag, value in given.items():
        table, key = _FLAGS[flag]
        base[table][key] = value
    for item in args.override:
        key, _, raw = item.partition("=")
        base["model"]["overrides"][key] = json.loads(raw)
    if "teacher" in given and "loss" not in given and base["loss"]["mode"] == "ce":
        base["loss"]["mode"] = "paper"
    return TrainConfig.from_dict(base)


def cli_train(argv: list[str] | None = None) -> int:
    from bhvit.train.loop import NonFiniteLossError, train
    from bhvit.train.teacher import TeacherUnavailableError

    args = train_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = train(cfg)
    except (ValueError, FileNotFoundError, NonFiniteLossError, TeacherUnavailableError) as e:
        print(error_line("train", e), file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bhvit eval", description="Evaluate a checkpoint on a test split.")
    p.add_argument("checkpoint", nargs="?", help="a bhvit training checkpoint (or give it as --checkpoint)")
    p.add_argument("--checkpoint", dest="checkpoint_flag", metavar="CHECKPOINT", help="the same, as a flag")
    p.add_argument("--data", default="fashion_mnist", help="fashion-mnist (default), cifar10, synthetic or a directory")
    p.add_argument("--data-root")
    p.add_argument("--img-size", type=int, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--ema", action="store_true", help="score the EMA weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="also write the metrics to this file")
    return p


def eval_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``bhvit eval`` arguments; the checkpoint may be positional or ``--checkpoint``, not both."""
    p = eval_parser()
    args = p.parse_args(argv)
    given = [c for c in (args.checkpoint, args.checkpoint_flag) if c is not None]
    if not given:
        p.error("give the checkpoint to evaluate: bhvit eval CHECKPOINT (or --checkpoint CHECKPOINT)")
    if len(given) == 2 and given[0] != given[1]:
        p.error(f"two checkpoints given ({given[0]} and --checkpoint {given[1]}); give one")
    args.checkpoint = given[0]
    return args


def cli_eval(argv: list[str] | None = None) -> int:
    from bhvit.data import DataConfig
    from bhvit.train import checkpoint as ckpt_io
    from bhvit.train.loop import evaluate_checkpoint

    args = eval_args(argv)
    try:
        img = args.img_size or _checkpoint_img_size(ckpt_io.load(args.checkpoint), args.checkpoint)
        data = DataConfig(name=args.data, root=args.data_root, img_size=img, eval_batch_size=args.batch_size)
        metrics = evaluate_checkpoint(args.checkpoint, data, args.device, args.ema, args.threads)
    except (ValueError, FileNotFoundError) as e:
        print(error_line("eval", e), file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


def _checkpoint_img_size(ck: dict[str, Any], path: str) -> int:
    size = ck["model_config"].get("img_size")
    side = size[0] if isinstance(size, list | tuple) and size else size
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise CheckpointError(f"{path}: model_config img_size={size!r} is not an image size; pass --img-size")
    return side
