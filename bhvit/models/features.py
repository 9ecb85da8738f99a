"""Multi-scale features of a classifier, as timm's ``features_only`` models give them.

A model that offers ``forward_intermediates`` and a ``feature_info`` list (one dict per stage:
``num_chs``, ``reduction`` = stride against the input, ``module``) becomes a backbone returning a
list of stage maps; :class:`FeatureInfo` answers ``channels()`` and ``reduction()`` for the maps taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from .bhvit import BHViT  # which imports this module

__all__ = ["FeatureGetter", "FeatureInfo", "feature_take_indices"]


def feature_take_indices(num_stages: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Normalise stage ``indices``: ``None`` all, an int ``n`` the last ``n``, a sequence as named
    (negative counts from the end). Returns the sorted non-negative indices and the largest.
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices}: take between 1 and {num_stages} last stages")
        take = list(range(num_stages - indices, num_stages))
    else:
        picked = [indices] if isinstance(indices, bool) else list(indices)  # a bool is refused below
        bad = [i for i in picked if isinstance(i, bool) or not isinstance(i, int) or not -num_stages <= i < num_stages]
        if bad or not picked:
            raise ValueError(f"indices={indices!r}: stage indices must be ints in [{-num_stages}, {num_stages})")
        take = sorted({i % num_stages for i in picked})
    return take, max(take)


class FeatureInfo:
    """Channels, stride and module name of the feature maps a backbone returns (``out_indices``)."""

    def __init__(self, info: list[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = [dict(d, index=i) for i, d in enumerate(info)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of each output map (``idx=None``), of stage ``idx`` or of each stage in ``idx``."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        """The info dict of each output map."""
        return [dict(self.info[i]) for i in self.out_indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)


class FeatureGetter(nn.Module):
    """A backbone: ``forward(x)`` is the list of stage maps ``out_indices`` (NCHW).

    The model is pruned to the stages it needs (no final norm, no head; see the model's
    ``prune_intermediate_layers``) and kept as ``self.model``, so its parameters keep their names
    under the ``model.`` prefix.
    """

    def __init__(self, model: BHViT, out_indices: int | Sequence[int] = (0, 1, 2, 3), output_fmt: str = "NCHW") -> None:
        super().__init__()
        info = list(model.feature_info)
        take = model.prune_intermediate_layers(out_indices, prune_norm=True, prune_head=True)
        self.model = model
        self.out_indices = take
        self.output_fmt = output_fmt
        self.feature_info = FeatureInfo(info, take)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(
            x, indices=self.out_indices, output_fmt=self.output_fmt, intermediates_only=True
        )
