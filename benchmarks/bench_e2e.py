"""End-to-end latency: packed engine vs the float-simulated PyTorch model vs torch int8 dynamic quantization
(and ONNX Runtime fp32 when installed), bhvit_tiny and bhvit_small at 224, batch 1 and 32.

The benchmark lives in :mod:`bhvit.engine.bench`; this script is ``bhvit bench`` (:mod:`bhvit.cli.engine`).

    python benchmarks/bench_e2e.py --threads 1 2 --batch 1 32 --json out/bench_e2e.json
    python benchmarks/bench_e2e.py --checkpoint runs/demo/binary.pt --batch 1 32   # e.g. the demo model
"""

from __future__ import annotations

import sys

from bhvit.cli.engine import cmd_bench

if __name__ == "__main__":
    sys.exit(cmd_bench(sys.argv[1:]))
