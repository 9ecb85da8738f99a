"""The packed runtime where it is deployed: latency beside other work on the cores, and many callers on one model.

Latency (``--mode latency``): batch-1 forwards of bhvit_tiny and bhvit_small binary (random weights, 224 px)
on 1 thread and on the default thread setting, on an idle machine and with ``--busy`` CPU-bound processes
(``python -c "while True: pass"``) beside it. Each cell runs in a fresh worker process that imports only
``bhvit.runtime`` (numpy, no torch) and reports the median of its timed calls; ``--lib NAME=PATH`` runs the
same cells on other builds of libbhvit_runtime, or on a revision tree that ``bench_vs_revision.py`` prepared
(``~/.cache/bhvit/revisions/rev-*``: that revision's own binding and library), interleaved cell by cell, so
their ratios are side by side in one run.

Throughput (``--mode throughput``): C client threads each calling ``Model.run`` at batch 1 on ONE loaded model
for a fixed time, for C in ``--clients``; images per second against one client.

    python benchmarks/bench_load.py --mode latency --busy 1 --json benchmarks/results/bench_load.json
    python benchmarks/bench_load.py --mode throughput --clients 1 2 4 8
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
WORKER = r"""
import json, sys, threading, time
import numpy as np
import bhvit.runtime as rt
path, (threads, calls, clients), seconds = sys.argv[1], map(int, sys.argv[2:5]), float(sys.argv[5])
if threads > 0:
    rt.set_num_threads(threads)
model = rt.load(path)
x = np.random.default_rng(0).standard_normal((1, *model.input_shape), dtype=np.float32)
for _ in range(3):
    model.run(x)
if clients == 0:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter(); model.run(x); times.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": 1e3 * float(np.median(times)), "threads": rt.get_num_threads(), "isa": rt.isa()}))
else:
    counts = [0] * clients
    stop = time.perf_counter() + seconds
    def client(i):
        while time.perf_counter() < stop:
            model.run(x); counts[i] += 1
    ts = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in ts: t.start()
    for t in ts: t.join()
    print(json.dumps({"images_per_s": sum(counts) / (time.perf_counter() - t0), "threads": rt.get_num_threads()}))
"""


def write_models(names: list[str], out: Path) -> dict[str, Path]:
    """Packed binary models with seeded random weights (torch is needed here only)."""
    import torch

    import bhvit

    paths = {}
    for name in names:
        path = out / f"{name}.bhvp"
        if not path.exists():
            torch.manual_seed(0)
            model = bhvit.create_model(name, precision="binary", attn_quant="gsb", num_classes=1000).eval()
            bhvit.save_packed(bhvit.pack(model), path)
        paths[name] = path
    return paths


def run_worker(lib: str, model: Path, threads: int, calls: int, clients: int = 0, seconds: float = 0.0) -> dict:
    """One cell in a fresh process. ``lib``: "" (this tree's runtime), a libbhvit_runtime file (through this
    tree's binding), or a revision tree of bench_vs_revision.py (its own binding and library)."""
    python, env, cwd = [sys.executable], dict(os.environ), ROOT
    if lib and Path(lib).is_dir():
        from bench_vs_revision import revision_python

        (python, env), cwd = revision_python(Path(lib)), Path(lib)  # cwd leads sys.path under -c
    elif lib:
        env["BHVIT_RUNTIME_LIB"] = lib
    cmd = [*python, "-c", WORKER, str(model), str(threads), str(calls), str(clients), str(seconds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


class Busy:
    """``n`` CPU-bound processes for the duration of a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> Busy:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def latency(args: argparse.Namespace, models: dict[str, Path], libs: dict[str, str]) -> list[dict]:
    rows = []
    for load in ("idle", "busy"):
        with Busy(args.busy if load == "busy" else 0):
            for name, path in models.items():
                for lib_name, lib in libs.items():
                    for threads in (1, 0):
                        r = run_worker(lib, path, threads, args.calls)
                        rows.append(
                            {
                                "model": name,
                                "lib": lib_name,
                                "load": load,
                                "threads": threads or "default",
                                "n_threads": r["threads"],
                                "isa": r["isa"],
                                "median_ms": r["median_ms"],
                            }
                        )
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per model and lib: default loaded / 1-thread idle and default loaded / 1-thread loaded, idle scaling."""
    out = []
    keys = sorted({(r["model"], r["lib"]) for r in rows})
    for model, lib in keys:
        cell = {(r["load"], str(r["threads"])): r["median_ms"] for r in rows if r["model"] == model and r["lib"] == lib}
        out.append(
            {
                "model": model,
                "lib": lib,
                "idle_1t_ms": cell[("idle", "1")],
                "idle_default_ms": cell[("idle", "default")],
                "busy_1t_ms": cell[("busy", "1")],
                "busy_default_ms": cell[("busy", "default")],
                "busy_default_over_idle_1t": cell[("busy", "default")] / cell[("idle", "1")],
                "busy_default_over_busy_1t": cell[("busy", "default")] / cell[("busy", "1")],
                "idle_scaling": cell[("idle", "1")] / cell[("idle", "default")],
            }
        )
    return out


def throughput(args: argparse.Namespace, models: dict[str, Path], libs: dict[str, str]) -> list[dict]:
    rows = []
    for name, path in models.items():
        for lib_name, lib in libs.items():
            base = None
            for c in args.clients:
                r = run_worker(lib, path, args.threads, 0, clients=c, seconds=args.seconds)
                base = base or r["images_per_s"]
                rows.append(
                    {
                        "model": name,
                        "lib": lib_name,
                        "clients": c,
                        "threads": r["threads"],
                        "images_per_s": r["images_per_s"],
                        "vs_one_client": r["images_per_s"] / base,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(fmt(r[c]).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["latency", "throughput"], default="latency")
    ap.add_argument("--models", nargs="+", default=["bhvit_tiny", "bhvit_small"])
    ap.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside the runtime (latency mode)")
    ap.add_argument("--calls", type=int, default=60, help="timed calls per cell (latency mode)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4], help="client threads (throughput mode)")
    ap.add_argument("--threads", type=int, default=0, help="runtime threads in throughput mode (0: default)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput cell")
    ap.add_argument(
        "--lib",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also run another build of libbhvit_runtime, or a revision tree prepared by bench_vs_revision.py "
        "(its own binding; repeatable); 'this' is the installed one",
    )
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bhvit_bench_models"))
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    libs = {"this": ""} | dict(item.split("=", 1) for item in args.lib)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models = write_models(args.models, cache)
    if args.mode == "latency":
        rows = latency(args, models, libs)
        result = {"rows": rows, "summary": summary(rows)}
        print(table(result["summary"]))
    else:
        rows = throughput(args, models, libs)
        result = {"rows": rows}
        print(table(rows))
    result["machine"] = {
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        ),
        "cpus": os.cpu_count(),
        "busy_processes": args.busy,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
