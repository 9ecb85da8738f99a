"""torch.compile against eager: one training step (forward, cross-entropy, backward, AdamW) and one eval
forward of a BHViT, side by side in one process, per precision.

Eager and compiled models start from the same weights; after the compile (timed separately, it includes
LSQ's first-batch set-up step) the two are timed in alternating rounds, so machine noise hits both alike.
Prints a table and writes JSON.

    python benchmarks/bench_compile.py                              # bhvit_tiny at 64 px, batch 32, 2 threads
    python benchmarks/bench_compile.py --img-size 224 --batch 8 --precision binary --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import bhvit
from bhvit.models.bhvit import PRECISIONS, choose_window_size


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(arch: str, precision: str, img: int, batch: int, rounds: int) -> dict:
    """Median seconds of a train step and an eval forward, eager vs compiled, and the compile times."""
    torch.manual_seed(0)
    eager = bhvit.create_model(
        arch, precision=precision, img_size=img, window_size=choose_window_size(img), num_classes=10
    ).train()
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
    _train_step(eager, torch.optim.AdamW(eager.parameters(), 1e-4))(x, y)  # LSQ set-up, optimizer state
    compiled_model = copy.deepcopy(eager)
    steps = {
        "eager": _train_step(eager, torch.optim.AdamW(eager.parameters(), 1e-4)),
        "compiled": _train_step(
            torch.compile(compiled_model, dynamic=False), torch.optim.AdamW(compiled_model.parameters(), 1e-4)
        ),
    }
    result: dict = {"arch": arch, "precision": precision, "img_size": img, "batch": batch}
    result["compile_train_s"] = _seconds(lambda: steps["compiled"](x, y))
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(_seconds(lambda s=step: s(x, y)))
    result.update({f"train_{k}_s": statistics.median(v) for k, v in times.items()})
    eager.eval()
    evals = {"eager": eager, "compiled": torch.compile(copy.deepcopy(eager), dynamic=False)}
    with torch.no_grad():
        result["compile_eval_s"] = _seconds(lambda: evals["compiled"](x))
        times = {k: [] for k in evals}
        for _ in range(rounds):
            for name, model in evals.items():
                times[name].append(_seconds(lambda m=model: m(x)))
    result.update({f"eval_{k}_s": statistics.median(v) for k, v in times.items()})
    result["train_speedup"] = result["train_eager_s"] / result["train_compiled_s"]
    result["eval_speedup"] = result["eval_eager_s"] / result["eval_compiled_s"]
    return result


def table(rows: list[dict]) -> str:
    head = "| precision | train eager | train compiled | × | eval eager | eval compiled | × | compile (train + eval) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {1e3 * r['train_eager_s']:.0f} ms | {1e3 * r['train_compiled_s']:.0f} ms | "
            f"{r['train_speedup']:.2f} | {1e3 * r['eval_eager_s']:.0f} ms | {1e3 * r['eval_compiled_s']:.0f} ms | "
            f"{r['eval_speedup']:.2f} | {r['compile_train_s']:.0f} s + {r['compile_eval_s']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bhvit_tiny")
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(args.arch, prec, args.img_size, args.batch, args.rounds) for prec in args.precision]
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(
        f"{args.arch} at {args.img_size} px, batch {args.batch}, {args.threads} threads, "
        f"median of {args.rounds} alternating rounds ({machine['cpu_capability']})"
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
