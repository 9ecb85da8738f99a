"""What every command prints when it fails, and its argument parser: one line, never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from bhvit.text import printable

DEBUG_ENV = "BHVIT_DEBUG"


def error_line(name: str, exc: BaseException, limit: int = 600) -> str:
    """One line for a failed command. bhvit's own errors, ``ValueError`` and ``OSError`` carry a
    message written for the user; anything else is unexpected and names its type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = printable(text if len(text) <= limit else text[: limit - 1] + "…")
    own = type(exc).__module__.split(".")[0] == "bhvit" or isinstance(exc, ValueError | OSError)
    if own:
        return f"bhvit {name}: error: {text}"
    return (
        f"bhvit {name}: unexpected error: {type(exc).__name__}: {text} (rerun as 'bhvit --debug {name} ...' "
        f"or with {DEBUG_ENV}=1 for the traceback)"
    )


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {printable(message)} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)
