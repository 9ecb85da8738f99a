"""bhvit: BHViT, the Binarized Hybrid Vision Transformer (Gao et al., CVPR 2025).

>>> import bhvit
>>> model = bhvit.create_model("bhvit_tiny", precision="binary")
>>> model = bhvit.load_upstream("BHViT_tiny_binary.pth")  # the authors' checkpoint, eval mode
>>> backbone = bhvit.create_model("bhvit_tiny", features_only=True)  # four NCHW stage maps

The names below load their module on first use, so that ``import bhvit.runtime`` (the packed runtime,
numpy only) does not import torch; ``bhvit.engine`` (packing, torch) and ``bhvit.runtime`` are attributes
too, imported when first touched.

timm: after ``import bhvit``, ``timm.create_model("bhvit_tiny", ...)`` works. If timm is already imported,
the variants are registered at once (torch is loaded then anyway); otherwise an import hook registers them
right after timm itself is first imported (:class:`_RegisterWithTimm`), so that ``import bhvit`` and
``import bhvit.runtime`` never import timm or torch, whether or not timm is installed.
``bhvit.register_with_timm()`` registers them explicitly (e.g. where another import hook loads timm).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from typing import Any

from bhvit.lazy import lazy_attributes

_EXPORTS = {  # public name -> module that defines it (None: the name is a submodule)
    "engine": None,
    "hub": None,
    "quant": None,
    "runtime": None,
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "load_packed": "engine",
    "pack": "engine",
    "save_packed": "engine",
    "BHViT": "models",
    "BHViTConfig": "models",
    "build_model": "models",
    "valid_img_sizes": "models",
    "profile_model": "profile",
    "create_model": "registry",
    "list_models": "registry",
    "model_entry": "registry",
    "register_with_timm": "registry",
    "CheckpointError": "upstream",
    "load_upstream": "upstream",
}


def _version() -> str:
    """The installed distribution's version: runtime/include/bhvit_runtime.h's BHVIT_VERSION_* at build time
    (pyproject.toml reads it there; the one source of the version number)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(__name__)
    except PackageNotFoundError:  # imported from a checkout that pip never installed
        return "0+unknown"


_exported, __dir__ = lazy_attributes(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: importing bhvit stays cheap
        return _version()
    return _exported(name)


class _AfterExec:
    """A module's loader that calls ``then()`` once the module has executed without error."""

    def __init__(self, loader: Any, then: Any) -> None:
        self._loader, self._then = loader, then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._then()

    def __getattr__(self, name: str) -> Any:  # resource readers, get_filename, ... of the real loader
        if name == "_loader":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)


class _RegisterWithTimm:
    """An import hook (first in ``sys.meta_path``) that lets the other finders find ``timm`` and wraps its
    loader so that bhvit's variants are registered right after ``import timm`` completes; then it removes
    itself. It touches no other import (one string comparison each)."""

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "timm" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)  # the finders after this one
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterExec(spec.loader, self._register)
        return spec

    def _register(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            importlib.import_module(".registry", __name__).register_with_timm()
        except Exception as exc:  # bhvit's failure must not become timm's: the user's import goes on
            import warnings

            warnings.warn(f"bhvit could not register its models with timm: {exc}", stacklevel=2)


if "timm" in sys.modules:
    importlib.import_module(".registry", __name__).register_with_timm()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):  # a reload of bhvit adds no second hook
    sys.meta_path.insert(0, _RegisterWithTimm())

__all__ = sorted(_EXPORTS)
