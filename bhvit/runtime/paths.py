"""Where the native runtime's header and shared library are (for C programs and the ctypes binding).

    include_dir()   the folder of bhvit_runtime.h: include/ in this package (installed there by the pip build,
                    the root CMakeLists.txt), else a checkout's runtime/include/ (the one hand-edited copy)
    library_path()  libbhvit_runtime.so in this package (built by ``pip install``), or the file named by
                    the environment variable BHVIT_RUNTIME_LIB (e.g. a CMake build: build/libbhvit_runtime.so)
    find_library()  library_path(), checked: RuntimeLibraryError says how to build it when it is missing
    compile_flags() / link_flags()   what a C compiler needs (``python -m bhvit.runtime --cflags --libs``)

"This package" is every folder of ``bhvit.runtime.__path__``: one for an installed package; for an editable
install (``pip install -e .``) the build's install tree in site-packages first, then the checkout's sources.

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
_CHECKOUT_INCLUDE = Path(__file__).resolve().parents[2] / "runtime" / "include"
_BUILD_HINT = (
    "install bhvit with its native code: `bash scripts/setup.sh` or `pip install -e .` in a checkout, or "
    "`pip install bhvit` without BHVIT_NO_NATIVE (needs CMake >= 3.18 and a C++17 compiler: g++ or clang++); "
    f"or build it with `cmake -S runtime -B build && cmake --build build` and set {LIBRARY_ENV}=build/{LIBRARY}"
)


class RuntimeLibraryError(FileNotFoundError):
    """The runtime's header or library is not where it should be; the message says how to get it."""


def _package_dirs() -> list[Path]:
    """The folders of the package bhvit.runtime (imported before this submodule), in import order."""
    return [Path(folder) for folder in sys.modules[__package__].__path__]


def include_dir() -> Path:
    """The folder holding bhvit_runtime.h (for ``-I``)."""
    for folder in [*(d / "include" for d in _package_dirs()), _CHECKOUT_INCLUDE]:
        if (folder / HEADER).is_file():
            return folder
    raise RuntimeLibraryError(f"{HEADER} is not installed with bhvit (looked in {_package_dirs()}); {_BUILD_HINT}")


def library_path() -> Path:
    """The shared library to load: $BHVIT_RUNTIME_LIB when set, else the one built into this package.
    Not checked (see :func:`find_library`)."""
    override = os.environ.get(LIBRARY_ENV, "")
    if override:
        return Path(override).expanduser().absolute()
    candidates = [folder / LIBRARY for folder in _package_dirs()]
    return next((path for path in candidates if path.is_file()), candidates[0])


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
