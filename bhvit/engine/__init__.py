"""Real 1-bit inference on CPU: bit-packed kernels, model packing, the packed file format.

Importing this package never needs the native extension; calling a kernel does (see
:class:`EngineUnavailableError`).
"""

from bhvit.engine._native import EngineUnavailableError, is_available
from bhvit.engine.kernels import (
    available_isas,
    current_isa,
    get_num_threads,
    num_threads,
    set_isa,
    set_num_threads,
    use_isa,
)

__all__ = [
    "EngineUnavailableError",
    "available_isas",
    "current_isa",
    "get_num_threads",
    "is_available",
    "num_threads",
    "set_isa",
    "set_num_threads",
    "use_isa",
]
