"""``python -m tests.fuzz``: run the corpora and print what they found (exit status 1 on a finding); also the
entry point of the workers (hidden options, see :mod:`tests.fuzz.driver`)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tests.fuzz import capi, program
from tests.fuzz.driver import MEMORY_LIMIT, build_seeds


def _worker(args: argparse.Namespace, start: list[str]) -> bool:
    """Runs the worker a driver asked for; False when this is not a worker."""
    if args.program_worker:
        case_dir, limit = args.program_worker
        program.program_worker(Path(case_dir), int(start[0]), int(limit))
    elif args.capi_worker:
        seed_dir, seed, count, limit = args.capi_worker
        capi.capi_worker(Path(seed_dir), int(seed), int(start[0]), int(count), int(limit))
    else:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.fuzz",
        description="Fuzz packed files and the C API of libbhvit_runtime, each case in a worker process that names "
        "it if it dies; exit status 1 on a finding.",
    )
    p.add_argument("--program-cases", type=int, default=2000, help="mutated packed files (0: skip)")
    p.add_argument("--capi-cases", type=int, default=1000, help="C API calls (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory-limit", action="store_true", help="no RLIMIT_AS in the workers (for ASan)")
    p.add_argument("--program-worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--capi-worker", nargs=4, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if _worker(args, rest):
        return 0
    env, limit = dict(os.environ), 0 if args.no_memory_limit else MEMORY_LIMIT
    with tempfile.TemporaryDirectory() as tmp:
        seeds = build_seeds(Path(tmp))
        reports = {
            "program files": program.run_program(seeds, args.program_cases, args.seed, env=env, memory_limit=limit),
            "C API": capi.run_capi(Path(tmp), args.capi_cases, args.seed, env=env, memory_limit=limit),
        }
    for name, r in reports.items():
        print(f"{name}: {r.outcomes} in {r.seconds:.1f} s; {len(r.findings)} finding(s)")
        for cid, what in sorted(r.findings.items()):
            print(f"  {cid}: {what}")
    return 1 if any(r.findings for r in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
