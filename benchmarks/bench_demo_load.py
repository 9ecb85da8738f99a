"""The quick demo beside another CPU-bound process (issue 19): its wall time idle and busy, in one run.

Runs ``bhvit demo`` (the quick preset, Fashion-MNIST) in a fresh process into a temporary folder, once on
the idle machine and once beside ``--busy`` processes running ``while True: pass``, and prints the ratio
of the two wall times with the machine named; writes JSON (default benchmarks/results/demo_load.json).
The demo's own thread setting is used (bhvit.train.threads: passive OpenMP waits, threads from the
affinity mask and the cgroup quota), as a user gets it.

    python benchmarks/bench_demo_load.py                 # about 5 min idle + 10 min busy on 2 cores
    python benchmarks/bench_demo_load.py --busy 2 --order busy-first
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_demo(extra: list[str]) -> dict[str, float | str]:
    """One quick demo in a fresh process: its wall and CPU seconds and its report.md (the accuracies, the packed
    model's size, top-1 through the runtime and latency)."""
    with tempfile.TemporaryDirectory(prefix="bhvit-demo-load-") as out:
        cmd = [sys.executable, "-m", "bhvit", "demo", "--preset", "quick", "--out", out, *extra]
        start, cpu0 = time.perf_counter(), os.times()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall, cpu1 = time.perf_counter() - start, os.times()
        if done.returncode != 0:
            sys.exit(f"bench_demo_load: the demo failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        report = (Path(out) / "report.md").read_text()
    child_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    return {"wall_s": wall, "cpu_s": child_cpu, "report": report}


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside the busy run (default 1)")
    p.add_argument("--order", choices=["idle-first", "busy-first"], default="idle-first")
    p.add_argument("--demo-args", nargs=argparse.REMAINDER, default=[], help="passed on to bhvit demo")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "demo_load.json")
    args = p.parse_args()

    rows: dict[str, dict] = {}
    for load in ("idle", "busy") if args.order == "idle-first" else ("busy", "idle"):
        load_before = os.getloadavg()[0]
        hogs = busy_processes(args.busy) if load == "busy" else []
        try:
            rows[load] = {**run_demo(args.demo_args), "loadavg_before": load_before}
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        print(f"{load:5s} {rows[load]['wall_s']:8.1f} s wall {rows[load]['cpu_s']:8.1f} s CPU", flush=True)
    ratio = rows["busy"]["wall_s"] / rows["idle"]["wall_s"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"busy / idle: {ratio:.2f}x  ({cpu_name()}, {cpus} CPUs, {args.busy} busy process(es))")
    result = {
        "machine": {"cpu": cpu_name(), "usable_cpus": cpus},
        "busy_processes": args.busy,
        "runs": rows,
        "busy_over_idle": ratio,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
