"""Training beside another CPU-bound process: torch's thread settings, old against new.

Times a few hundred training steps of the quick demo's fp model (``bhvit_test`` with widths
32-64-128-256, 32 px, batch 128, AdamW; synthetic 3-channel images instead of Fashion-MNIST's 1-channel
ones, an extra 2 input channels in the stem) in a fresh process per measurement, because OpenMP reads
its settings when torch is loaded:

* ``old``: what ``bhvit train`` did before (torch's defaults: libgomp's spin-then-sleep waits, as many
  threads as the affinity mask has CPUs);
* ``new``: what ``bhvit train`` does now (:mod:`bhvit.train.threads`: ``OMP_WAIT_POLICY=PASSIVE``
  unless the user set a policy, threads from the affinity mask and the cgroup quota);
* ``1 thread``: the reference a loaded machine should not fall far behind.

each on an idle machine and beside ``python -c "while True: pass"`` (``--busy`` such processes),
alternating the variants round by round so that the machine's own noise hits them alike. Prints a
table and writes JSON (default benchmarks/results/train_load.json).

    python benchmarks/bench_train_load.py                  # 200 steps, 1 busy process, 2 rounds
    python benchmarks/bench_train_load.py --steps 100 --rounds 1 --busy 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bhvit.train.threads import WAIT_POLICY_VARS, prefer_passive_waits, usable_cpus

VARIANTS = ("old", "new", "1 thread")
BUSY = "while True: pass"


def variant_env(variant: str) -> dict[str, str]:
    """The environment a worker of ``variant`` starts with (OpenMP reads it when torch loads)."""
    env = {k: v for k, v in os.environ.items() if k not in (*WAIT_POLICY_VARS, "OMP_NUM_THREADS")}
    if variant == "new":
        prefer_passive_waits(env)
    return env


def worker(variant: str, steps: int, budget: float) -> dict[str, float]:
    """Train up to ``steps`` steps in this process, in chunks of 10, stopping early once ``budget``
    seconds are spent (a collapsed run still gives its time per step); returns the seconds the
    training steps took (evaluation excluded) and how many ran."""
    import torch

    from bhvit.train.checkpoint import TrainState
    from bhvit.train.demo import PRESETS, stage_config
    from bhvit.train.logs import JsonlLogger
    from bhvit.train.loop import build, make_loaders, run_epoch

    threads = {"old": torch.get_num_threads(), "new": None, "1 thread": 1}[variant]
    quick = stage_config(PRESETS["quick"], "fp", None)
    with tempfile.TemporaryDirectory() as out:
        cfg = quick.replace(
            data={"name": "synthetic", "synthetic_size": (steps + 1) * quick.data.batch_size},
            run={"max_steps": steps, "threads": threads, "progress": False, "plots": False, "out_dir": out},
        )
        c = build(cfg)
        loader, sampler, _ = make_loaders(c)
        state = TrainState()
        while state.step < steps and state.train_time < budget:
            c.cfg = cfg.replace(run={"stop_after_steps": state.step + 10})  # run_epoch resumes mid-epoch
            run_epoch(c, state, loader, sampler, JsonlLogger(None))
    return {"seconds": state.train_time, "steps": state.step, "threads": torch.get_num_threads()}


def measure(variant: str, steps: int, busy: int, budget: float) -> dict[str, float]:
    """One worker run of ``variant``, beside ``busy`` CPU-bound processes."""
    neighbours = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)  # let the neighbours reach full speed
        out = subprocess.run(
            [sys.executable, __file__, "--worker", variant, "--steps", str(steps), "--budget", str(budget)],
            env=variant_env(variant),
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for p in neighbours:
            p.kill()
            p.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict[str, list[float]]]) -> str:
    """Median ms per step per variant and load, with the ratios the issue asks for."""
    med = {v: {load: statistics.median(xs) * 1000 for load, xs in r.items()} for v, r in results.items()}
    lines = [
        f"{'variant':<10} {'idle ms/step':>13} {'busy ms/step':>13} {'busy/idle':>10} {'busy/1-thread idle':>19}",
    ]
    ref = med["1 thread"]["idle"]
    for v, m in med.items():
        lines.append(
            f"{v:<10} {m['idle']:>13.1f} {m['busy']:>13.1f} {m['busy'] / m['idle']:>10.2f} {m['busy'] / ref:>19.2f}"
        )
    idle, busy = (med["new"][load] / med["old"][load] for load in ("idle", "busy"))
    lines.append(f"new/old: idle {idle:.2f}, busy {busy:.2f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps per measurement (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="measurements per variant and load (default 2)")
    p.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside the loaded runs (default 1)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_load.json"))
    p.add_argument("--budget", type=float, default=150.0, help="seconds after which a run stops early (default 150)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.budget)))
        return 0
    load_before = os.getloadavg()
    results: dict[str, dict[str, list[float]]] = {v: {"idle": [], "busy": []} for v in VARIANTS}
    runs = []
    for r in range(args.rounds):
        for load, busy in (("idle", 0), ("busy", args.busy)):
            for v in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
                run = measure(v, args.steps, busy, args.budget)
                results[v][load].append(run["seconds"] / run["steps"])
                runs.append({"round": r, "variant": v, "load": load, "loadavg": os.getloadavg()[0], **run})
                print(
                    f"round {r} {load:<4} {v:<8} {run['steps']:4d} steps {run['seconds']:7.1f} s "
                    f"({run['threads']} threads, load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    text = table(results)
    print(text)
    record = {
        "machine": {"cpu": _cpu_name(), "usable_cpus": usable_cpus(), "cpu_count": os.cpu_count()},
        "python": platform.python_version(),
        "steps": args.steps,
        "busy_processes": args.busy,
        "load_before": load_before,
        "runs": runs,
        "table": text,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


if __name__ == "__main__":
    raise SystemExit(main())
