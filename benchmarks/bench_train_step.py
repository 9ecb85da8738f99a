"""One training step of binary BHViT-Tiny at 224 px, batch 32, on N CPU threads: time and peak memory.

Issue 3, item 0: the authors' code takes 37 s and 12.4 GB (peak RSS) for this step on the 2-core
reference machine; the goal is ≤ 2/3 of the time and ≤ 1/2 of the memory. Each measurement runs in a
fresh subprocess so that its peak resident set size (``ru_maxrss``) is its own.

A step is: forward, cross-entropy, backward, AdamW update (zero_grad + step), on random images.
The first step (which also initialises LSQ and allocates optimizer state) and the median of the
following steps are reported.

    python benchmarks/bench_train_step.py                 # ours, 2 threads, 3 steps
    python benchmarks/bench_train_step.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

AUTHORS_REFERENCE = {"step_s": 37.0, "peak_rss_gb": 12.4, "source": "issue 3 (measured on the reference machine)"}


def measure(arch: str, precision: str, img: int, batch: int, threads: int, steps: int) -> dict:
    """Run in this process: build, then time ``steps`` optimizer steps. Returns times and peak RSS."""
    import torch

    import bhvit

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = bhvit.create_model(arch, precision=precision, img_size=img)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.randn(batch, 3, img, img)
    y = torch.randint(0, model.config.num_classes, (batch,))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    rest = sorted(times[1:]) or times
    return {
        "arch": arch, "precision": precision, "img_size": img, "batch": batch, "threads": threads,
        "first_step_s": round(times[0], 3), "median_step_s": round(rest[len(rest) // 2], 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "rss_after_build_gb": round(rss_before, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bhvit_tiny")
    p.add_argument("--precision", default="binary")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        print(json.dumps(measure(args.arch, args.precision, args.img_size, args.batch, args.threads, args.steps)))
        return 0
    cmd = [sys.executable, __file__, "--inner", "--arch", args.arch, "--precision", args.precision,
           "--img-size", str(args.img_size), "--batch", str(args.batch), "--threads", str(args.threads),
           "--steps", str(args.steps)]
    ours = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    ref = AUTHORS_REFERENCE
    result = {
        "ours": ours, "authors": ref,
        "time_ratio_first": round(ours["first_step_s"] / ref["step_s"], 3),
        "time_ratio_median": round(ours["median_step_s"] / ref["step_s"], 3),
        "memory_ratio": round(ours["peak_rss_gb"] / ref["peak_rss_gb"], 3),
        "targets": {"time_ratio": 2 / 3, "memory_ratio": 0.5},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
