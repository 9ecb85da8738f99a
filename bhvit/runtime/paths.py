"""Where the native runtime's header and shared library are (for C programs and the ctypes binding).

    include_dir()   the folder of bhvit_runtime.h: the package's copy (bhvit/runtime/include/, put there by
                    setup.py at build time), else a checkout's runtime/include/ (the one hand-edited copy)
    library_path()  libbhvit_runtime.so in this package (built by ``pip install``), or the file named by
                    the environment variable BHVIT_RUNTIME_LIB (e.g. a CMake build: build/libbhvit_runtime.so)
    find_library()  library_path(), checked: RuntimeLibraryError says how to build it when it is missing
    compile_flags() / link_flags()   what a C compiler needs (``python -m bhvit.runtime --cflags --libs``)

Imports neither torch nor numpy: the C side of the project must not need them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "LIBRARY_ENV",
    "RuntimeLibraryError",
    "compile_flags",
    "find_library",
    "include_dir",
    "library_path",
    "link_flags",
]

LIBRARY_ENV = "BHVIT_RUNTIME_LIB"
HEADER = "bhvit_runtime.h"
LIBRARY = "libbhvit_runtime.dylib" if sys.platform == "darwin" else "libbhvit_runtime.so"
_PACKAGE = Path(__file__).resolve().parent
_BUILD_HINT = (
    "run `pip install -e .` from the repository root (needs a C++17 compiler), or build it with "
    f"`cmake -S runtime -B build && cmake --build build` and set {LIBRARY_ENV}=build/{LIBRARY}"
)


class RuntimeLibraryError(FileNotFoundError):
    """The runtime's header or library is not where it should be; the message says how to get it."""


def include_dir() -> Path:
    """The folder holding bhvit_runtime.h (for ``-I``)."""
    for folder in (_PACKAGE / "include", _PACKAGE.parents[1] / "runtime" / "include"):
        if (folder / HEADER).is_file():
            return folder
    raise RuntimeLibraryError(
        f"{HEADER} is not installed with bhvit (looked in {_PACKAGE / 'include'}); "
        "reinstall bhvit with `pip install .` or use a checkout's runtime/include"
    )


def library_path() -> Path:
    """The shared library to load: $BHVIT_RUNTIME_LIB when set, else the one built into this package.
    Not checked (see :func:`find_library`)."""
    override = os.environ.get(LIBRARY_ENV, "")
    return Path(override).expanduser().absolute() if override else _PACKAGE / LIBRARY


def find_library() -> Path:
    """:func:`library_path`, which must be a file; :class:`RuntimeLibraryError` says how to build it."""
    path = library_path()
    if path.is_file():
        return path
    if os.environ.get(LIBRARY_ENV):
        raise RuntimeLibraryError(
            f"{LIBRARY_ENV}={os.environ[LIBRARY_ENV]!r} is not a file; point it at a built {LIBRARY} or unset it"
        )
    raise RuntimeLibraryError(f"the native runtime {LIBRARY} is not built (no {path}); {_BUILD_HINT}")


def compile_flags() -> list[str]:
    """C compiler flags for ``#include <bhvit_runtime.h>``."""
    return [f"-I{include_dir()}"]


def link_flags() -> list[str]:
    """Linker flags for the library, with an rpath so the program finds it without LD_LIBRARY_PATH."""
    path = find_library()
    rpath = f"-Wl,-rpath,{path.parent}"
    if path.name == LIBRARY:
        return [f"-L{path.parent}", rpath, "-l" + LIBRARY[3:].split(".")[0]]
    return [str(path), rpath]  # an override with another file name: link the file itself
