"""``bhvit`` command line: a thin table of subcommands over library functions.

One module per command group: :mod:`bhvit.cli.model` (profile, predict, convert, export),
:mod:`bhvit.cli.train` (train, eval, demo) and :mod:`bhvit.cli.engine` (pack, bench). A command is
``fn(argv) -> exit status``; argparse lives only in this package, never in the library.

Every failure is one line on stderr and a non-zero status, never a traceback: ``bhvit --debug
COMMAND ...`` or ``BHVIT_DEBUG=1`` prints the traceback too.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from bhvit.cli.errors import DEBUG_ENV, error_line
from bhvit.text import printable

# name -> (help, module of bhvit.cli, function): a command's module is imported when it runs, so that
# `bhvit predict --packed` starts without importing torch
COMMANDS: dict[str, tuple[str, str, str]] = {
    "profile": ("parameters, BOPs, FLOPs and OPs of a model, a checkpoint or a packed file", "model", "cmd_profile"),
    "predict": ("top-5 classes of images", "model", "cmd_predict"),
    "convert": ("convert an authors' checkpoint to bhvit's safetensors format", "model", "cmd_convert"),
    "export": ("export a checkpoint's float-simulated model as ONNX", "model", "cmd_export"),
    "train": ("train a model (see docs/training.md)", "train", "cmd_train"),
    "eval": ("evaluate a checkpoint, or a packed file through the runtime, on a dataset", "train", "cmd_eval"),
    "demo": ("Fashion-MNIST: teacher, students, the packed binary model judged, report", "train", "cmd_demo"),
    "pack": ("write a packed 1-bit model file (docs/packed-format.md)", "engine", "cmd_pack"),
    "bench": ("latency: a packed file vs its fp32 model, or the runtime vs PyTorch fp32 / int8", "engine", "cmd_bench"),
}


def command(name: str) -> Callable[[list[str]], int]:
    """The function of command ``name`` (imports its module)."""
    _, module, fn = COMMANDS[name]
    return getattr(importlib.import_module(f"bhvit.cli.{module}"), fn)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout is not a file (captured, closed)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """``bhvit [--debug] COMMAND [options]`` or ``bhvit --version``. A failure is one line on stderr and
    status 1 (130 when interrupted, 141 quietly when the reader of stdout went away); ``--debug`` or
    ``BHVIT_DEBUG=1`` also prints the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if argv and argv[0] == "--version":
        import bhvit

        print(f"bhvit {bhvit.__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, (text, _, _) in sorted(COMMANDS.items())]
        print(
            "usage: bhvit [--debug] COMMAND [options]\n       bhvit --version\n\ncommands:\n"
            + "\n".join(lines)
            + f"\n\n--debug (or {DEBUG_ENV}=1): print the traceback of a failure"
        )
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bhvit: unknown command {printable(name)!r}; run 'bhvit --help'", file=sys.stderr)
        return 2
    try:
        return command(name)(rest)
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
