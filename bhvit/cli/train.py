"""``bhvit train``, ``bhvit eval`` and ``bhvit demo``.

``bhvit train`` starts from a recipe (``--recipe recipes/….toml``) or the defaults, and every flag
given on the command line overrides the matching recipe value; flags not given leave it alone. Without
a recipe the defaults are the dataclasses' except those of :func:`bhvit.train.config.no_recipe_defaults`
(measured for a first run on new data: lr, warm-up, weight decay, no flips for a folder, an automatic fp
teacher stage for binary models); a recipe sees the dataclass defaults only. The flags are generated
from the dataclasses of :class:`bhvit.train.TrainConfig` (one per field, its type
and choices from the annotation), so a new field is a new flag. Run it with ``torchrun
--nproc_per_node N -m bhvit train …`` for N processes.

Importing this module sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose a policy) before it
imports torch (:func:`bhvit.train.threads.prefer_passive_waits`: idle OpenMP threads sleep instead of
spinning, which keeps training usable beside other CPU-bound work). While a command runs, every Python
warning is one line, ``bhvit train: warning: …`` (:func:`one_line_warnings`).
"""

# ruff: noqa: E402  (the OpenMP setting below must precede the imports that load torch)
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from bhvit.train import threads

threads.prefer_passive_waits()  # libgomp reads its wait policy once, when the imports below load torch

from bhvit.checkpoint import atomic_write
from bhvit.cli.errors import CommandParser, error_line
from bhvit.data import DataConfig, DatasetNotFoundError
from bhvit.files import file_kind
from bhvit.text import printable
from bhvit.train import checkpoint as ckpt_io
from bhvit.train import demo as demo_lib
from bhvit.train.auto_teacher import train_with_auto_teacher
from bhvit.train.config import TrainConfig, load_recipe, no_recipe_defaults
from bhvit.train.loop import NonFiniteLossError, evaluate_checkpoint
from bhvit.train.teacher import TeacherUnavailableError
from bhvit.upstream import CheckpointError

# Flags spelled other than their field (``--FIELD-NAME``): the short names bhvit train has always
# had, which the README, docs/training.md, the recipes' comments and scripts use.
FLAG_ALIASES = {
    "data.name": "data",
    "data.root": "data-root",
    "data.num_workers": "workers",
    "model.drop_path_rate": "drop-path",
    "loss.mode": "loss",
    "run.out_dir": "out",
    "run.ema_decay": "ema",
}
# ``model.overrides`` (a dict) is filled by the repeatable ``--override KEY=JSON`` instead.
NO_FLAG = {"model.overrides"}
THREADS_HELP = (
    "torch's CPU threads (default: $BHVIT_NUM_THREADS, else the CPUs this process may use, from its CPU "
    "affinity and cgroup quota, not the machine's core count)"
)


def _field_help(doc: str, name: str) -> str:
    """What a config class's docstring says of field ``name``: the clause that opens with ````name````, up
    to the ``;`` or full stop outside parentheses, as plain text ('' when no clause opens with it)."""
    text = " ".join(doc.split())
    found = re.search(rf"(?:^|(?<=[.;:] ))``{name}``:? ", text)
    if not found:
        return ""
    depth, end = 0, len(text)
    for i in range(found.end(), len(text)):
        depth += (text[i] == "(") - (text[i] == ")")
        stop = text[i] == ";" or (text[i] == "." and text[i + 1 : i + 2] in (" ", "") and text[i - 3 : i] != "e.g")
        if depth == 0 and stop:
            end = i
            break
    clause = re.sub(r":\w+:`([^`]*)`", r"\1", text[found.end() : end]).replace("``", "")
    return clause.replace("%", "%%")  # argparse %-formats help


def _flag_type(hint: Any, default: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field annotated ``hint``: bool -> a switch away from the default,
    Literal -> choices, ``tuple[float, float]`` -> two values, ``X | None`` -> X."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        return {"action": "store_false" if default else "store_true"}
    if get_origin(hint) is Literal:
        return {"choices": get_args(hint)}
    if get_origin(hint) is tuple:
        return {"type": get_args(hint)[0], "nargs": len(get_args(hint))}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no command-line flag for a field of type {hint}")


# How help shows a default that depends on other flags (no_recipe_defaults' rules).
RULE_HELP = {
    "data.hflip": "False for a directory (your own data)",
    "data.augment": "'none' under 20 epochs, 'auto' from 20",
    "optim.lr": ("0.002; 0.004 for binary and some-fp under 10 epochs; 0.0005 with --init-from and no --teacher"),
    "optim.warmup_epochs": "5%% of --epochs within [0.2, 5]",
    "optim.weight_decay": "0.05 for fp, 0 for binary and some-fp",
}


def _default_text(dest: str, default: Any, no_recipe: dict[str, Any]) -> str:
    """``default X`` or, where bhvit train without a recipe uses another value, both."""
    if dest not in no_recipe and dest not in RULE_HELP:
        return f"default {default!r}"
    ours = RULE_HELP.get(dest, repr(no_recipe.get(dest)))
    return f"default {ours} without --recipe, {default!r} with one"


def _add_table_flags(p: argparse.ArgumentParser, table: str, defaults: Any, no_recipe: dict[str, Any]) -> None:
    """One flag per field of the dataclass instance ``defaults`` (a table of the default TrainConfig);
    its value lands in ``args["table.field"]`` only when given. A boolean whose default differs without a
    recipe (``no_recipe``), or may be None, gets both ``--name`` and ``--no-name``."""
    doc = type(defaults).__doc__ or ""
    group = p.add_argument_group(f"[{table}]", doc.strip().split("\n\n")[0].replace("%", "%%"))
    hints = get_type_hints(type(defaults))
    for f in dataclasses.fields(defaults):
        dest = f"{table}.{f.name}"
        if dest in NO_FLAG:
            continue
        default = getattr(defaults, f.name)
        kw = _flag_type(hints[f.name], default)
        name = FLAG_ALIASES.get(dest, f.name.replace("_", "-"))
        if "action" in kw and (dest in no_recipe or default is None):
            kw["action"] = argparse.BooleanOptionalAction
        elif kw.get("action") == "store_false":
            name = f"no-{name}"
        if "type" in kw:
            kw["metavar"] = f.name.upper()
        text = _field_help(doc, f.name)
        group.add_argument(
            f"--{name}",
            dest=dest,
            default=argparse.SUPPRESS,
            help=f"{text + ' ' if text else ''}({dest}, {_default_text(dest, default, no_recipe)})",
            **kw,
        )


def train_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="bhvit train", description="Train a BHViT model (SPEC §4).")
    p.add_argument("--recipe", help="TOML recipe; flags override its values (see recipes/)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a BHViTConfig field, e.g. --override depths=[1,1,2,1] (repeatable)",
    )
    defaults = TrainConfig()
    no_recipe = no_recipe_defaults({"data.name": ""})  # the rules' values for a folder, shown in help
    for f in dataclasses.fields(defaults):
        _add_table_flags(p, f.name, getattr(defaults, f.name), no_recipe)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe (or the defaults, with :func:`no_recipe_defaults`) ← flags given. Returns a validated
    :class:`TrainConfig`."""
    base = load_recipe(args.recipe).to_dict() if args.recipe else TrainConfig().to_dict()
    given = {dest: value for dest, value in vars(args).items() if "." in dest}
    if not args.recipe:
        given = {**no_recipe_defaults(given), **given}
    for dest, value in given.items():
        table, key = dest.split(".")
        base[table][key] = value
    for item in args.override:
        key, _, raw = item.partition("=")
        base["model"]["overrides"][key] = json.loads(raw)
    if "loss.teacher" in given and "loss.mode" not in given and base["loss"]["mode"] == "ce":
        base["loss"]["mode"] = "paper"  # a teacher without a loss means distillation
    return TrainConfig.from_dict(base)


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Inside the block every Python warning (ours, torch's, matplotlib's) is one line on stderr,
    ``bhvit COMMAND: warning: <message>``, never the source line Python's default display adds; each
    message once."""
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        text = printable(" ".join(str(message).split()))
        if text not in seen:
            seen.add(text)
            print(f"bhvit {command}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def cmd_train(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    try:
        with one_line_warnings("train"):
            summary = train_with_auto_teacher(config_from_args(args))
    except (ValueError, FileNotFoundError, NonFiniteLossError, TeacherUnavailableError) as e:
        print(error_line("train", e), file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="bhvit eval",
        description="Evaluate a checkpoint, or a packed file (.bhvp) through the native runtime, on a test split. "
        "A packed file's images are prepared as its stored preprocessing says (what training's evaluation did); "
        "with its float checkpoint also given (--checkpoint), the top-1 agreement of the two is reported.",
    )
    p.add_argument(
        "checkpoint", nargs="?", help="a bhvit training checkpoint or a packed file (or give it as --checkpoint)"
    )
    p.add_argument(
        "--checkpoint",
        dest="checkpoint_flag",
        metavar="CHECKPOINT",
        help="the same, as a flag; with a packed file, its float checkpoint (top-1 agreement, and the data it "
        "was trained on)",
    )
    p.add_argument(
        "--data",
        help="fashion-mnist, cifar10, synthetic or a directory (default: the data the checkpoint was trained "
        "on; a folder without train/ and val/ is split as its training run split it)",
    )
    p.add_argument("--data-root", help="where to look first for a named dataset (default: the checkpoint's)")
    p.add_argument("--img-size", type=int, help="input side in pixels (default: the checkpoint's; a packed file's own)")
    p.add_argument("--batch-size", type=int, default=500, help="images per evaluation batch (default 500)")
    p.add_argument("--ema", action="store_true", help="score the EMA weights of a training checkpoint")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available), cpu or cuda (default auto); a packed file runs on the CPU",
    )
    p.add_argument("--threads", type=int, help=THREADS_HELP + "; a packed file: the runtime's too")
    p.add_argument("--json", help="also write the metrics to this file")
    return p


def eval_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``bhvit eval`` arguments. The model may be positional or ``--checkpoint``; a packed file given
    either way is what is scored (``args.packed``), and the other path, if any, its float checkpoint."""
    p = eval_parser()
    args = p.parse_args(argv)
    given = [c for c in (args.checkpoint, args.checkpoint_flag) if c is not None]
    if not given:
        p.error("give the checkpoint to evaluate: bhvit eval CHECKPOINT (or --checkpoint CHECKPOINT)")
    packed = [c for c in given if file_kind(c) == "packed"]
    if len(packed) == 2 and packed[0] != packed[1]:
        p.error(f"two packed files given ({packed[0]} and {packed[1]}); give one, and its float checkpoint")
    args.packed = packed[0] if packed else None
    rest = [c for c in given if c not in packed]
    if len(rest) == 2 and rest[0] != rest[1]:
        p.error(f"two checkpoints given ({rest[0]} and --checkpoint {rest[1]}); give one")
    args.checkpoint = rest[0] if rest else None
    if args.packed and args.ema:
        p.error("--ema scores a training checkpoint's EMA weights; a packed file holds the weights it was packed from")
    return args


def eval_data(args: argparse.Namespace) -> tuple[DataConfig, int]:
    """The data ``bhvit eval`` scores on and the seed of a flat folder's split: the flags given, the rest
    from the training checkpoint (its data, input size, hold-out fraction and seed). A model file that is
    not a training checkpoint needs ``--data`` and ``--img-size``."""
    try:
        ck = ckpt_io.load(args.checkpoint)
    except CheckpointError as e:
        if args.data is None or args.img_size is None:
            raise CheckpointError(f"{e}; a model file is evaluated with --data and --img-size given") from None
        ck = None
    trained = json.loads(ck.get("train_config", "{}")) if ck is not None else {}
    data = trained.get("data", {})
    if args.data is None and not data:
        raise ValueError(f"{args.checkpoint} does not say what it was trained on: pass --data")
    same = args.data is None or (bool(data) and DataConfig(name=args.data).name == data["name"])
    split = ((ck or {}).get("data_split") or {}) if same else {}
    cfg = DataConfig(
        name=args.data or data["name"],
        root=args.data_root if args.data else data.get("root"),
        img_size=args.img_size or _checkpoint_img_size(ck, args.checkpoint),
        eval_batch_size=args.batch_size,
        val_fraction=split.get("val_fraction"),
    )
    return cfg, int(split.get("seed", trained.get("run", {}).get("seed", 0)))


def packed_eval_data(args: argparse.Namespace) -> tuple[DataConfig, int]:
    """:func:`eval_data` for a packed file, whose input side is the image size: the data named by ``--data``,
    else the one its float checkpoint (``--checkpoint``, a training checkpoint) was trained on."""
    from bhvit import runtime

    side = runtime.load(args.packed).input_shape[1]
    if args.img_size is not None and args.img_size != side:
        raise ValueError(f"--img-size {args.img_size}: the packed file {args.packed} takes {side}-pixel images")
    if args.checkpoint is not None:
        return eval_data(argparse.Namespace(**{**vars(args), "img_size": side}))
    if args.data is None:
        raise ValueError(
            f"{args.packed}: a packed file does not record the data it was trained on: pass --data NAME|DIR, or "
            "--checkpoint with the training checkpoint it was packed from"
        )
    return DataConfig(name=args.data, root=args.data_root, img_size=side, eval_batch_size=args.batch_size), 0


def cmd_eval(argv: list[str] | None = None) -> int:
    args = eval_args(argv)
    try:
        with one_line_warnings("eval"):
            if args.packed:
                from bhvit import runtime
                from bhvit.engine.evaluate import evaluate_packed

                data, seed = packed_eval_data(args)
                import torch

                torch.set_num_threads(threads.torch_threads(args.threads))
                if args.threads is not None:
                    runtime.set_num_threads(args.threads)
                metrics = evaluate_packed(args.packed, data, args.checkpoint, seed=seed)
            else:
                data, seed = eval_data(args)
                metrics = evaluate_checkpoint(args.checkpoint, data, args.device, args.ema, args.threads, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        print(error_line("eval", e), file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


def _checkpoint_img_size(ck: dict[str, Any], path: str) -> int:
    size = ck["model_config"].get("img_size")
    side = size[0] if isinstance(size, list | tuple) and size else size
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise CheckpointError(f"{path}: model_config img_size={size!r} is not an image size; pass --img-size")
    return side


def demo_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="bhvit demo", description=demo_lib.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=sorted(demo_lib.PRESETS),
        default="quick",
        help="quick: one epoch per model, under 15 min on 2 cores; long: about an hour (default quick)",
    )
    p.add_argument("--out", help="output directory (default runs/demo)")
    p.add_argument("--data", help="dataset name or directory (default fashion_mnist)")
    p.add_argument("--data-root", help="where to look first for Fashion-MNIST")
    p.add_argument("--init-epochs", type=int, help="> 0: students start from a separate fp run of this many epochs")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the fp teacher (default: the preset's)")
    p.add_argument("--student-epochs", type=int, help="epochs of each student (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per optimizer step (default: the preset's, 128)")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--seed", type=int, help="initial weights, data order and augmentation (default 0)")
    p.add_argument("--only-binary", action="store_true", help="skip the some-fp student")
    return p


def cmd_demo(argv: list[str] | None = None) -> int:
    args = demo_parser().parse_args(argv)
    flags = {
        "out_dir": args.out,
        "data": args.data,
        "data_root": args.data_root,
        "threads": args.threads,
        "init_epochs": args.init_epochs,
        "teacher_epochs": args.teacher_epochs,
        "student_epochs": args.student_epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    cfg = dataclasses.replace(demo_lib.PRESETS[args.preset], **{k: v for k, v in flags.items() if v is not None})
    if args.only_binary:
        cfg = dataclasses.replace(cfg, precisions=("binary",))
    try:
        with one_line_warnings("demo"):
            result = demo_lib.demo(cfg)
    except (DatasetNotFoundError, ValueError) as e:
        print(error_line("demo", e), file=sys.stderr)
        return 2
    for prec, s in result["summaries"].items():
        print(f"{prec:>8}: top-1 {s['test_acc1']:.2f}%  top-5 {s['test_acc5']:.2f}%  train {s['train_time_s']:.0f} s")
    d = result["deployed"]
    if d is not None:
        b1 = next(r for r in d["latency"] if r["default_threads"])
        mib = 2**20
        print(
            f"  packed: {d['packed']} {d['packed_bytes'] / mib:.2f} MiB (fp32 {d['fp32_checkpoint_bytes'] / mib:.2f} "
            f"MiB), top-1 {d['acc1']:.2f}% through the runtime (agreement with the float model "
            f"{d['top1_agreement']:.2f}%), batch 1 {b1['packed_ms']:.2f} ms vs {b1['student_fp32_ms']:.2f} ms fp32"
        )
    print(f"total {result['wall_time_s']:.0f} s; report: {result['report']}")
    return 0
