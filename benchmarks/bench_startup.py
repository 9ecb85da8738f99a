"""Start-up of `bhvit predict --packed`: process start to printed top-5, the native runtime vs the version-1 path.

Each measurement is a fresh process (`subprocess.run`, wall clock), the two commands interleaved round by
round so that background load hits both alike; the median per command counts.

* ``runtime``: ``bhvit predict --packed tiny.bhvp image.jpg`` as shipped (format version 2; the CLI imports
  neither torch nor the training code, and the forward runs in ``libbhvit_runtime``);
* ``v1``: the path before the runtime, rebuilt from the kept pieces: the CLI then imported every command
  module (torch, models, training) at start, read the version-1 file (:func:`bhvit.engine.fileformat.read_parts`)
  and ran :class:`bhvit.engine.packed_model.LegacyPackedModel` (binary kernels native, float parts in torch).

    python benchmarks/bench_startup.py                       # bhvit_tiny binary, 224 px, 1000 classes
    python benchmarks/bench_startup.py --rounds 7 --json benchmarks/results/bench_startup.json
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

V1_PREDICT = """
import sys
import bhvit, bhvit.checkpoint, bhvit.engine, bhvit.profile, bhvit.upstream  # the old eager `import bhvit`
import bhvit.cli.engine, bhvit.cli.model, bhvit.cli.train  # the old CLI imported every command module
import torch
from bhvit.engine.fileformat import read_parts
from bhvit.engine.packed_model import LegacyPackedModel
from bhvit.predict import Preprocess, predict_images
parts = read_parts(sys.argv[1])
model = LegacyPackedModel(parts)
prep = Preprocess.for_model(parts.config["img_size"], parts.config["in_chans"], parts.meta.get("preprocess"))
def run(x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()
for r in predict_images(run, sys.argv[2:], prep, 5, parts.meta.get("labels")):
    print(r["path"])
    for rank, t in enumerate(r["top"], 1):
        print(f"  {rank}. {t['label']:<24} {100 * t['prob']:6.2f}%")
"""


def write_models(folder: Path, arch: str) -> tuple[Path, Path, Path]:
    """A random eval-mode binary model packed in both formats, and a 500x375 JPEG."""
    import numpy as np
    from PIL import Image

    import bhvit
    from bhvit.engine import save_packed
    from bhvit.engine.api import pack
    from bhvit.engine.fileformat import write_parts
    from bhvit.engine.packer import extract

    model = bhvit.create_model(arch, precision="binary").eval()
    labels = [f"class {i}" for i in range(model.num_classes)]
    v2 = save_packed(pack(model), folder / "model_v2.bhvp", labels=labels)
    parts = extract(model)
    parts.meta.update({"labels": labels, "preprocess": json.loads(pack(model).program.metadata["preprocess"])})
    v1 = write_parts(parts, folder / "model_v1.bhvp")
    image = folder / "image.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(image, quality=90)
    return v1, v2, image


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
        v1, v2, image = write_models(Path(tmp), args.arch)
        commands = {
            "runtime": [bhvit_cli, "predict", "--packed", str(v2), str(image)],
            "v1": [sys.executable, "-c", V1_PREDICT, str(v1), str(image)],
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
        "speedup": med["v1"] / med["runtime"],
    }
    print(f"{'path':<8} {'median s':>9}  all rounds (s)")
    for k in commands:
        print(f"{k:<8} {med[k]:9.3f}  " + " ".join(f"{t:.3f}" for t in times[k]))
    print(f"start-up speed-up (v1 / runtime): {record['speedup']:.1f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
