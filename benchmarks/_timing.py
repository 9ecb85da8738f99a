"""Shared timing helpers of the benchmark scripts (median wall time of repeated calls)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def time_call(fn: Callable[[], Any], *, min_time: float = 0.2, warmup: int = 2, max_reps: int = 200) -> float:
    """Median seconds per call of ``fn``: ``warmup`` untimed calls, then at least 5 timed calls and
    at least ``min_time`` seconds in total (capped at ``max_reps`` calls)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 5, min_round: float = 0.05) -> dict[str, float]:
    """Best per-call wall seconds of each function over ``rounds`` interleaved rounds (after one warm-up
    call each). Interleaving exposes all methods to the same background load; the best round is the
    least disturbed one. ``<name>_cpu`` entries give the process CPU seconds per call of that round,
    which, on one thread, does not count time spent waiting for a core on a shared machine."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    cpu = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            n, start, cpu0 = 0, time.perf_counter(), time.process_time()
            while n == 0 or time.perf_counter() - start < min_round:
                fn()
                n += 1
            wall = (time.perf_counter() - start) / n
            if wall < best[k]:
                best[k] = wall
            cpu[k] = min(cpu[k], (time.process_time() - cpu0) / n)
    return {**best, **{f"{k}_cpu": v for k, v in cpu.items()}}


def machine_info() -> dict[str, Any]:
    """CPU model, core count and Python/torch versions, for the JSON record."""
    import os

    import torch

    from bhvit.engine import kernels

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "engine_isa": kernels.current_isa(),
        "engine_isas": kernels.available_isas(),
    }


def write_json(path: str | Path, record: dict[str, Any]) -> None:
    """Writes ``record`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Prints rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[format(r[k], f) if f else str(r[k]) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
