"""Run ``bhvit train`` variants one after another and collect their top-1 into a JSON file.

Each variant is a name and the flags it adds to the common ones; every run gets its own ``--out`` under
``--runs`` and ``--threads 1`` (the 2-core machine is shared: one run at a time, one thread each). The
result file maps variant name -> {argv, test_acc1, train_time_s, stages}; it is rewritten atomically
after every run, so an interrupted sweep keeps what finished, and a rerun skips variants already there.

    python benchmarks/sweep_defaults.py --out benchmarks/results/sweep_digits.json --runs /tmp/sweep \\
        --common "--data /tmp/data/digits --arch bhvit_tiny --img-size 32 --epochs 3" \\
        --variant "fp=--precision fp" --variant "binary=--precision binary"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bhvit.checkpoint import atomic_write


def run_variant(name: str, argv: list[str], runs: Path, cwd: Path | None = None) -> dict:
    """``bhvit train ARGV --out RUNS/NAME --threads 1 --no-progress --no-plots`` in a fresh process, in
    ``cwd`` (``python -m`` imports the ``bhvit`` found there first: a snapshot of the code to compare)."""
    out = runs / name
    cmd = [
        sys.executable,
        "-m",
        "bhvit",
        "train",
        *argv,
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
        "--no-plots",
    ]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        return {"argv": argv, "error": proc.stderr.strip().splitlines()[-1:]}
    summary = json.loads((out / "summary.json").read_text())
    stages = {k: summary[k]["test_acc1"] for k in ("fp_stage",) if isinstance(summary.get(k), dict)}
    notes = [line for line in proc.stderr.splitlines() if line.startswith("bhvit train:")]
    return {
        "argv": argv,
        "test_acc1": summary["test_acc1"],
        "train_time_s": summary["train_time_s"],
        "wall_s": round(time.time() - start, 1),
        "stages": stages,
        "notes": notes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results file (updated after each run)")
    p.add_argument("--runs", type=Path, required=True, help="directory for the run directories")
    p.add_argument("--common", default="", help="flags every variant gets")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS")
    p.add_argument(
        "--code",
        type=Path,
        help="run in this directory: its bhvit/ (e.g. a copy of an older "
        "version) is the one imported; default: this checkout",
    )
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for item in args.variant:
        name, _, flags = item.partition("=")
        if name in results and "error" not in results[name]:
            continue
        results[name] = run_variant(name, shlex.split(args.common) + shlex.split(flags), args.runs.resolve(), args.code)
        print(name, json.dumps(results[name]), flush=True)
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(args.out, lambda tmp, text=text: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
