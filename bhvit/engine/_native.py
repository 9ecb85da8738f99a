"""Loads the compiled extension ``bhvit.engine._C`` on first use, for the training kernel it holds
(``rprelu_backward``, used by :mod:`bhvit.layers`; the packed model runs in ``libbhvit_runtime``).

Importing :mod:`bhvit` never needs the extension; calling the kernel does. When it is missing, the error says
why and how to build it (and :mod:`bhvit.layers` falls back to torch's ops).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_BUILD_HINT = (
    "The native extension bhvit.engine._C is not built. Build it by reinstalling the package from the "
    "repository root with `pip install -e .` (needs a C++17 compiler such as g++ or clang++; OpenMP is used "
    "when available). Import error: {err}"
)


class EngineUnavailableError(ImportError):
    """The native extension is not available."""


_module: ModuleType | None = None


def native() -> ModuleType:
    """The extension module; raises :class:`EngineUnavailableError` with build instructions."""
    global _module
    if _module is None:
        try:
            _module = importlib.import_module("bhvit.engine._C")
        except ImportError as err:
            raise EngineUnavailableError(_BUILD_HINT.format(err=err)) from err
    return _module


def is_available() -> bool:
    """True when the native extension can be imported."""
    try:
        native()
    except EngineUnavailableError:
        return False
    return True
