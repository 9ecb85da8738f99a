"""Torch's CPU threads in training: how many, and how they wait for work. Imports neither torch nor numpy.

**How many.** :func:`torch_threads`: ``--threads`` when given, else ``BHVIT_NUM_THREADS`` when set,
else :func:`usable_cpus`: the CPUs this process may run on (its affinity mask) and, under a cgroup CPU
quota (a container given "1.5 CPUs"), no more than the quota rounded up. The packed runtime
(``bhvit_set_num_threads``) has the same default, so torch and the runtime agree in one process.
``os.cpu_count()`` (``nproc`` on most systems) counts the machine's CPUs: a container limited to 2
CPUs on a 64-core host would start 64 threads that the kernel throttles in turn.

**How they wait.** Torch's intra-op pool is OpenMP (GNU libgomp in the CPU wheels). Between two
parallel regions (several per layer, hundreds per training step) an idle thread by default spins
for a while before it sleeps. On an idle machine that saves a wake-up per region; beside another
CPU-bound process it burns the time slices that the thread still working, or the other process,
needed, and a step can take many times longer. :func:`prefer_passive_waits` makes idle threads sleep
at once (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy. libgomp reads the variable once,
when it is loaded, so this must run before torch is first imported; ``bhvit train``, ``eval`` and
``demo`` call it before they import torch (:mod:`bhvit.cli.train`). Measured in
``benchmarks/bench_train_load.py``; the numbers are in docs/training.md ("Threads").
"""

from __future__ import annotations

import math
import os
from pathlib import Path

WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # the user's own choice, left alone if set
THREADS_ENV = "BHVIT_NUM_THREADS"  # the process's thread count when no --threads is given (the runtime's too)


def prefer_passive_waits(environ: dict[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) unless the user set
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``. Returns whether it set it. Has an effect only before
    torch (and so libgomp) is loaded into this process; children inherit it either way."""
    env = os.environ if environ is None else environ
    if any(name in env for name in WAIT_POLICY_VARS):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota rounded up (1.5
    CPUs: 2 threads, as the runtime, Go and the JVM count), at least 1. ``cgroup_root`` and
    ``proc_self`` are where the kernel shows them (tests pass others)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_self)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), the smallest along its path up
    to the root, or None when there is none or it cannot be read.

    cgroup v2: ``cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"``; cgroup v1: the ``cpu``
    controller's ``cpu.cfs_quota_us`` (−1: none) and ``cpu.cfs_period_us``. The process's cgroup path
    is in ``/proc/self/cgroup`` (``0::/path`` for v2, ``N:cpu,cpuacct:/path`` for v1).
    """
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            limits += [_v2_limit(d) for d in _ancestors(cgroup_root, path)]
        elif "cpu" in controllers.split(","):
            for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                limits += [_v1_limit(d) for d in _ancestors(mount, path)]
    found = [q for q in limits if q is not None]
    return min(found) if found else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and its parents up to ``mount`` (a quota set higher up limits this cgroup too)."""
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]  # "/../..": a cgroup outside this namespace
    return [mount.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    fields = text.split() if text else []
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def torch_threads(requested: int | None, environ: dict[str, str] | None = None) -> int:
    """The intra-op thread count to give torch: ``requested`` (``--threads``) when set, else
    ``BHVIT_NUM_THREADS`` from ``environ`` (default ``os.environ``) when it is a whole number ≥ 1, else
    :func:`usable_cpus`."""
    if requested:
        return requested
    text = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else usable_cpus()
