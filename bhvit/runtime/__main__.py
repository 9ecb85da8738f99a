"""``python -m bhvit.runtime``: where the native runtime is, for C builds (like pkg-config).

    python -m bhvit.runtime --include-dir      # the folder of bhvit_runtime.h
    python -m bhvit.runtime --library          # the path of libbhvit_runtime.so
    cc prog.c $(python -m bhvit.runtime --cflags --libs)

Paths with spaces are printed as they are (as pkg-config does): quote them yourself in that case.
Errors are one line on stderr (exit status 1; 2 for a usage error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from bhvit.runtime.paths import RuntimeLibraryError, compile_flags, find_library, include_dir, link_flags


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        print(f"python -m bhvit.runtime: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bhvit.runtime", description="Paths and flags of the native BHViT runtime.")
    p.add_argument("--include-dir", action="store_true", help="print the folder of bhvit_runtime.h")
    p.add_argument("--library", action="store_true", help="print the path of the shared library")
    p.add_argument("--cflags", action="store_true", help="print the C compiler flags (-I)")
    p.add_argument("--libs", action="store_true", help="print the linker flags (-L, rpath, -l)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (args.include_dir or args.library or args.cflags or args.libs):
        _parser().error("choose at least one of --include-dir, --library, --cflags, --libs")
    try:
        lines = [str(include_dir())] if args.include_dir else []
        lines += [str(find_library())] if args.library else []
        flags = (compile_flags() if args.cflags else []) + (link_flags() if args.libs else [])
        lines += [" ".join(flags)] if flags else []
    except RuntimeLibraryError as exc:
        print(f"python -m bhvit.runtime: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
