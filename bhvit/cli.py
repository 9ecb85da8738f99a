"""``bhvit`` command line: a thin table of subcommands over library functions.

Every failure is one line on stderr and a non-zero status, never a traceback: ``bhvit --debug
COMMAND ...`` or ``BHVIT_DEBUG=1`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable

from .text import printable

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def command(name: str, help_text: str) -> Callable:
    def wrap(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = (help_text, fn)
        return fn

    return wrap


DEBUG_ENV = "BHVIT_DEBUG"


def error_line(name: str, exc: BaseException, limit: int = 600) -> str:
    """One line for a failed command. bhvit's own errors, ``ValueError`` and ``OSError`` carry a
    message written for the user; anything else is unexpected and names its type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = printable(text if len(text) <= limit else text[: limit - 1] + "…")
    own = type(exc).__module__.split(".")[0] == "bhvit" or isinstance(exc, ValueError | OSError)
    if own:
        return f"bhvit {name}: error: {text}"
    return (f"bhvit {name}: unexpected error: {type(exc).__name__}: {text} (rerun as 'bhvit --debug {name} ...' "
            f"or with {DEBUG_ENV}=1 for the traceback)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp", "some_fp", "binary"], default="binary")
    p.add_argument("--attn-quant", choices=["lsq", "gsb"], default="lsq")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the variant's)")
    p.add_argument("--window-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--norm", choices=["bn", "ln"], default=None)


def _options(args: argparse.Namespace) -> dict:
    opts = {"precision": args.precision, "attn_quant": args.attn_quant}
    for key in ("img_size", "window_size", "num_classes", "in_chans", "norm"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    return opts


@command("profile", "parameters, BOPs, FLOPs and OPs of a model")
def cmd_profile(argv: list[str]) -> int:
    from . import create_model
    from .profile import profile_model

    p = argparse.ArgumentParser(prog="bhvit profile", description="Precision-aware profile (SPEC §5).")
    p.add_argument("arch", help="bhvit_tiny, bhvit_small or bhvit_test")
    _model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    prof = profile_model(create_model(args.arch, **_options(args)), args.arch)
    print(prof.to_json() if args.json else prof.table())
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number ≥ 1")
    return value


@command("predict", "top-5 classes of images")
def cmd_predict(argv: list[str]) -> int:
    from .checkpoint import load_model
    from .predict import Preprocess, predict_images

    p = argparse.ArgumentParser(prog="bhvit predict", description="Classify images with a checkpoint.")
    p.add_argument("images", nargs="+")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="bhvit .safetensors, training checkpoint, or the authors' .pth")
    source.add_argument("--packed", help="a packed 1-bit model file (bhvit pack)")
    p.add_argument("--topk", type=_positive_int, default=5)
    p.add_argument("--window-size", type=int, default=None, help="for authors' checkpoints (default 7)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.packed:
        from .engine.cli import load_predictor

        model, config, meta = load_predictor(args.packed)
        img_size, in_chans = config.get("img_size"), config.get("in_chans")
    else:
        overrides = {"window_size": args.window_size} if args.window_size else {}
        model, meta = load_model(args.checkpoint, **overrides)
        img_size, in_chans = model.config.img_size, model.config.in_chans
    prep = Preprocess.for_model(img_size, in_chans, meta.get("preprocess"))  # checks the model file's metadata
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


@command("convert", "convert an authors' checkpoint to bhvit's safetensors format")
def cmd_convert(argv: list[str]) -> int:
    from .checkpoint import convert_checkpoint

    p = argparse.ArgumentParser(prog="bhvit convert", description="Authors' .pth -> bhvit .safetensors.")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--window-size", type=int, default=None)
    args = p.parse_args(argv)
    out = convert_checkpoint(args.src, args.dst, **({"window_size": args.window_size} if args.window_size else {}))
    print(f"wrote {out}")
    return 0


@command("export", "export a checkpoint's float-simulated model as ONNX")
def cmd_export(argv: list[str]) -> int:
    from .checkpoint import load_model
    from .export import export_onnx

    p = argparse.ArgumentParser(prog="bhvit export", description="Export the simulated model as ONNX.")
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, metavar="OUT", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = p.parse_args(argv)
    model, _ = load_model(args.checkpoint)
    print(json.dumps(export_onnx(model, args.onnx, opset=args.opset, check=not args.no_check), indent=2))
    return 0


def _delegate(module: str, func: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), func)(argv) or 0)

    return run


COMMANDS["train"] = ("train a model (see docs/training.md)", _delegate("bhvit.train", "cli_train"))
COMMANDS["eval"] = ("evaluate a checkpoint on a dataset", _delegate("bhvit.train", "cli_eval"))
COMMANDS["pack"] = ("write a packed 1-bit model file (docs/packed-format.md)",
                    _delegate("bhvit.engine.cli", "pack_main"))
COMMANDS["bench"] = ("latency: packed 1-bit engine vs PyTorch fp32 / int8", _delegate("bhvit.engine.bench", "main"))
COMMANDS["demo"] = ("Fashion-MNIST: teacher, binary student, report", _delegate("bhvit.train", "run_demo"))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout is not a file (captured, closed)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """``bhvit [--debug] COMMAND [options]``. A failure is one line on stderr and status 1 (130 when
    interrupted, 141 quietly when the reader of stdout went away); ``--debug`` or ``BHVIT_DEBUG=1``
    also prints the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, (text, _) in sorted(COMMANDS.items())]
        print("usage: bhvit [--debug] COMMAND [options]\n\ncommands:\n" + "\n".join(lines)
              + f"\n\n--debug (or {DEBUG_ENV}=1): print the traceback of a failure")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bhvit: unknown command {printable(name)!r}; run 'bhvit --help'", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][1](rest)
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, like a killed pipe stage
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"bhvit {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure becomes one line (the traceback on request)
        if debug:
            traceback.print_exc()
        print(error_line(name, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
