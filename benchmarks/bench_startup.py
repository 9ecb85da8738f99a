"""Start-up of `bhvit predict`: process start to printed top-5, the packed runtime vs the float checkpoint.

Each measurement is a fresh process (`subprocess.run`, wall clock), the two commands interleaved round by
round so that background load hits both alike; the median per command counts.

* ``runtime``: ``bhvit predict --packed tiny.bhvp image.jpg`` (format version 2; the CLI imports neither torch
  nor the training code, and the forward runs in ``libbhvit_runtime``);
* ``float``: ``bhvit predict --checkpoint tiny.safetensors image.jpg``, the same model in PyTorch.

    python benchmarks/bench_startup.py                       # bhvit_tiny binary, 224 px, 1000 classes
    python benchmarks/bench_startup.py --rounds 7 --json out/bench_startup.json

(`benchmarks/results/bench_startup.json` records the comparison with the version-1 packed path, retired since:
0.14 s against 1.31 s.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_models(folder: Path, arch: str) -> tuple[Path, Path, Path]:
    """A random eval-mode binary model as a checkpoint and as a packed file, and a 500x375 JPEG."""
    import numpy as np
    from PIL import Image

    import bhvit
    from bhvit.engine import pack, save_packed

    model = bhvit.create_model(arch, precision="binary").eval()
    labels = [f"class {i}" for i in range(model.num_classes)]
    checkpoint = bhvit.save_model(model, folder / "model.safetensors", labels=labels)
    packed = save_packed(pack(model), folder / "model.bhvp", labels=labels)
    image = folder / "image.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(image, quality=90)
    return checkpoint, packed, image


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if run.returncode != 0 or "1." not in run.stdout:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({run.returncode}): {run.stderr.strip()[-400:]}")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="bhvit_tiny")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="threads of both forwards (OMP/torch)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    bhvit_cli = str(Path(sys.executable).with_name("bhvit"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, packed, image = write_models(Path(tmp), args.arch)
        commands = {
            "runtime": [bhvit_cli, "predict", "--packed", str(packed), str(image)],
            "float": [bhvit_cli, "predict", "--checkpoint", str(checkpoint), str(image)],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for cmd in commands.values():  # warm the file cache once
            timed(cmd, env)
        for _ in range(args.rounds):
            for k, cmd in commands.items():
                times[k].append(timed(cmd, env))
    med = {k: statistics.median(v) for k, v in times.items()}
    from bhvit.engine.bench import machine_info

    record = {
        "machine": machine_info(),
        "arch": args.arch,
        "threads": args.threads,
        "rounds": args.rounds,
        "seconds": times,
        "median_s": med,
        "speedup": med["float"] / med["runtime"],
    }
    print(f"{'path':<8} {'median s':>9}  all rounds (s)")
    for k in commands:
        print(f"{k:<8} {med[k]:9.3f}  " + " ".join(f"{t:.3f}" for t in times[k]))
    print(f"start-up speed-up (float / runtime): {record['speedup']:.1f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
