"""Packing a trained BHViT into its 1-bit form and running it in the native runtime, from torch.

>>> packed = bhvit.engine.pack(model.eval())        # the version-2 program, run by libbhvit_runtime
>>> logits = packed(images)
>>> bhvit.engine.save_packed(packed, "model.bhvp")  # docs/packed-format.md
>>> packed = bhvit.engine.load_packed("model.bhvp")  # no model or training code needed

Threads and the kernel path are the runtime's process-wide settings (:func:`bhvit.runtime.set_num_threads`,
:func:`bhvit.runtime.set_isa`, ``BHVIT_ISA``); running a packed model needs the runtime library
(:mod:`bhvit.runtime` says how to build it when it is missing).
"""

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
from bhvit.runtime.errors import PackedFormatError

__all__ = [
    "PackedFormatError",
    "PackedModel",
    "agreement",
    "fp32_checkpoint_bytes",
    "load_packed",
    "pack",
    "save_packed",
    "size_report",
    "zero_audit",
]
