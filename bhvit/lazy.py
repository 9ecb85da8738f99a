"""Package attributes that import their module on first use (PEP 562), so that importing a package stays
cheap and imports nothing it does not need: ``import bhvit.runtime`` must not import torch.

>>> __getattr__, __dir__ = lazy_attributes(__name__, {"train": "loop", "engine": None})

``exports`` maps a public name to the submodule that defines it, or to None where the name is the submodule
itself. A submodule that fails to import for want of an optional package (its ImportError) is a missing
attribute whose message is that error's one line, so ``hasattr`` and ``inspect`` see it as absent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, exports: Mapping[str, str | None]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` serving ``exports``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        try:
            value = importlib.import_module(f"{package}.{name if module is None else module}")
        except ImportError as e:  # an optional part (bhvit.hub without huggingface_hub)
            raise AttributeError(str(e)) from None
        return value if module is None else getattr(value, name)

    def __dir__() -> list[str]:
        module = importlib.import_module(package)
        return sorted({*vars(module), *exports})

    return __getattr__, __dir__
