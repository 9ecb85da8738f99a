"""Parameter-free rules of BHViT's forward that the float model and the packer share (no torch here).

The packer (:mod:`bhvit.engine.program`) writes these values into the packed program, so the native
runtime reads them from the file instead of repeating them.
"""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875  # evaluation: Resize(size / CROP_PCT) + CenterCrop(size) (SPEC §4)
STEM_STRIDE = 4  # the stem's patch size and stride
TOTAL_STRIDE = 32  # stem 4 × three 2× downsamplings
TOKEN_NORM_EPS = 1e-5  # the attention's token LayerNorm (nn.LayerNorm's default), also in BatchNorm models
GSB_EPS = 1e-5  # lower bound of the GSB scales α, α2, α3
# GSB masks on q = A/α: base = clamp(round(q), 0, 1) = [q > 0.5] (round half to even), U = [q > 0.7·max_row q],
# T2 = [q > 0.9·max_row q]
GSB_BASE, GSB_U, GSB_T2 = 0.5, 0.7, 0.9
LSQ_LEVELS = 3  # LSQ attention levels 0..3


def pool_padding(window: int, aligned: bool) -> int:
    """Padding of the global-token pooling: ``(w − 1)//2`` as in the authors' code (3 at w = 7), 0 if aligned."""
    return 0 if aligned else (window - 1) // 2


def pooled_side(side: int, window: int, padding: int) -> int:
    """Output side of a w×w, stride-w pooling with padding p: ``⌊(side + 2p − w)/w⌋ + 1``."""
    return (side + 2 * padding - window) // window + 1
