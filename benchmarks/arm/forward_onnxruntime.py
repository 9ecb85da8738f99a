"""onnxruntime's forward between count_insns markers (run by benchmarks/arm_instructions.py under qemu-aarch64,
with an aarch64 Python; needs only numpy and onnxruntime).

    python forward_onnxruntime.py model.onnx images.f32 batch forwards threads

One session on ``threads`` intra-op threads (1 inter-op thread, sequential execution, default graph
optimisations), one warm-up run, then ``forwards`` runs with a marker (getpid with the magic first argument,
tag k) before the first and after the k-th, as forward_runtime.c does. Prints the first logit.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import onnxruntime as ort

MARKER_SYSCALL = 172  # getpid on aarch64 (count_insns.c)
MARKER_MAGIC = 0x62687669


def main(argv: list[str]) -> int:
    model, images, batch, forwards, threads = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def marker(tag: int) -> None:
        libc.syscall(ctypes.c_long(MARKER_SYSCALL), ctypes.c_long(MARKER_MAGIC), ctypes.c_long(tag))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    x = np.fromfile(images, dtype=np.float32).reshape(batch, *shape[1:])
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    marker(0)
    for k in range(1, forwards + 1):
        logits = sess.run(None, feed)[0]
        marker(k)
    print(f"onnxruntime {ort.__version__} threads {threads} logit0 {logits.flat[0]:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
