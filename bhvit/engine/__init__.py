"""Real 1-bit inference on CPU: bit-packed kernels, model packing, the packed file format.

>>> packed = bhvit.engine.pack(model.eval())        # every binary op on packed bits, native code
>>> logits = packed(images)
>>> bhvit.engine.save_packed(packed, "model.bhvp")  # docs/packed-format.md
>>> packed = bhvit.engine.load_packed("model.bhvp")  # no model or training code needed

Importing this package never needs the native extension; calling a kernel does (see
:class:`EngineUnavailableError`, which says how to build it).
"""

from bhvit.engine._native import EngineUnavailableError, is_available
from bhvit.engine.api import (
    PackedModel,
    agreement,
    fp32_checkpoint_bytes,
    load_packed,
    pack,
    save_packed,
    size_report,
    zero_audit,
)
from bhvit.engine.kernels import (
    available_isas,
    buffer_cache_mb,
    current_isa,
    get_num_threads,
    num_threads,
    set_buffer_cache_mb,
    set_isa,
    set_num_threads,
    use_isa,
)
from bhvit.engine.packed_model import LegacyPackedModel
from bhvit.runtime.errors import PackedFormatError

__all__ = [
    "EngineUnavailableError",
    "PackedFormatError",
    "LegacyPackedModel",
    "PackedModel",
    "agreement",
    "available_isas",
    "buffer_cache_mb",
    "current_isa",
    "fp32_checkpoint_bytes",
    "get_num_threads",
    "is_available",
    "load_packed",
    "num_threads",
    "pack",
    "save_packed",
    "set_buffer_cache_mb",
    "set_isa",
    "set_num_threads",
    "size_report",
    "use_isa",
    "zero_audit",
]
