"""Loads the compiled extension ``bhvit.engine._C`` on first use.

Importing :mod:`bhvit` never needs the extension; calling the engine does. When it is missing, the
error says why and how to build it.

``BHVIT_NATIVE_EXT=/path/to/_C.<suffix>.so`` loads that build of the extension instead of the installed
one: the sanitizer build of ``scripts/build_sanitized.sh`` (run under ASan/UBSan by
``tests/engine/test_sanitized.py``). ``BHVIT_ISA=avx2`` (or any name of ``available_isas()``) makes the
process start on that kernel path instead of the best one, e.g. to run what an AVX2-only CPU runs on an
AVX-512 machine. Both are read once, on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

_BUILD_HINT = (
    "The packed engine's native extension bhvit.engine._C is not built. Install bhvit with its native code: "
    "`bash scripts/setup.sh` or `pip install -e .` in a checkout, or `pip install bhvit` without "
    "BHVIT_NO_NATIVE (needs CMake >= 3.18 and a C++17 compiler such as g++ or clang++; OpenMP is used when "
    "available). Import error: {err}"
)


class EngineUnavailableError(ImportError):
    """The native extension of the packed engine is not available."""


_module: ModuleType | None = None
ENV_VAR = "BHVIT_NATIVE_EXT"
ISA_ENV_VAR = "BHVIT_ISA"


def _load_from(path: str) -> ModuleType:
    """The extension module compiled at ``path`` (its init function is ``PyInit__C``)."""
    spec = importlib.util.spec_from_file_location("bhvit.engine._C", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ImportError(f"{ENV_VAR}={path!r} is not an extension module file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def native() -> ModuleType:
    """The extension module; raises :class:`EngineUnavailableError` with build instructions."""
    global _module
    if _module is None:
        try:
            path = os.environ.get(ENV_VAR)
            module = _load_from(path) if path else importlib.import_module("bhvit.engine._C")
        except ImportError as err:
            raise EngineUnavailableError(_BUILD_HINT.format(err=err)) from err
        _start_isa(module, os.environ.get(ISA_ENV_VAR, ""))
        _module = module
    return _module


def _start_isa(module: ModuleType, name: str) -> None:
    """Selects the kernel path ``name`` (from ``BHVIT_ISA``) when it is set."""
    if not name:
        return
    offered = list(module.available_isas())
    if name not in offered:
        raise EngineUnavailableError(
            f"{ISA_ENV_VAR}={name!r} is not a kernel path of this CPU and build; choose one of {offered} or unset it"
        )
    module.set_isa(name)


def is_available() -> bool:
    """True when the native extension can be imported."""
    try:
        native()
    except EngineUnavailableError:
        return False
    return True
