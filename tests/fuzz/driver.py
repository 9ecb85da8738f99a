"""What the corpora share: the seed files, the worker protocol and the campaign's report.

A worker (``python -m tests.fuzz --<corpus>-worker ... START``) runs cases ``START..`` in order and prints
``START <id>`` before a case and ``END <id> <outcome> <detail>`` after it, flushing both, so that a worker
killed by a signal or a timeout names the case it was running; :func:`run_workers` then blames that case and
starts a new worker at the next one. Workers run under an address-space limit (``RLIMIT_AS``, 2 GiB; none
under ASan, which reserves terabytes of address space), so an absurd allocation fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: the workers run `python -m tests.fuzz` there
MEMORY_LIMIT = 2 << 30  # bytes of address space per worker (0: none)
PREPROCESS = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36}
# the seed models (bhvit_test, 32 px) and whether their file carries labels
SEED_VARIANTS = [
    ({"precision": "binary", "attn_quant": "lsq"}, True),
    ({"precision": "some_fp", "attn_quant": "gsb"}, True),
    ({"precision": "binary", "attn_quant": "gsb", "shift5": False, "layerscale": False}, False),
    ({"precision": "some_fp", "attn_quant": "lsq", "num_classes": 0}, False),
]


@dataclass
class Report:
    """Outcome counts and findings (case id -> what went wrong) of one campaign."""

    outcomes: dict[str, int]
    findings: dict[str, str]
    seconds: float


def seed_model(index: int, variant: dict):  # noqa: ANN201 (a torch module; torch is imported lazily)
    """bhvit_test of ``variant`` with its 1-d parameters perturbed (seeded by ``index``), in eval mode."""
    import torch

    import bhvit

    torch.manual_seed(index)
    model = bhvit.create_model("bhvit_test", **variant).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def build_seeds(out: Path) -> list[Path]:
    """Small valid packed files (``write_program_file``), ``out/seed<i>.bhvp`` for each of SEED_VARIANTS."""
    from bhvit.engine.program import write_program_file

    paths = []
    for i, (variant, labelled) in enumerate(SEED_VARIANTS):
        model = seed_model(i, variant)
        classes = model.config.num_classes
        labels = [f"class {c}" for c in range(classes)] if labelled and classes else None
        paths.append(write_program_file(model, out / f"seed{i}.bhvp", preprocess=PREPROCESS, labels=labels))
    return paths


def worker_argv(corpus: str, *args: object) -> list[str]:
    """The command of a worker of ``corpus`` (``program`` or ``capi``); :func:`run_workers` appends START."""
    return [sys.executable, "-m", "tests.fuzz", f"--{corpus}-worker", *map(str, args)]


def emit(line: str) -> None:
    """A worker's protocol line, flushed at once (a crash right after it must not lose it)."""
    sys.stdout.write(line.replace("\n", " ")[:500] + "\n")
    sys.stdout.flush()


def limit_memory(limit: int) -> None:
    """Caps the worker's address space (``limit`` bytes; 0: no cap, as under ASan)."""
    import resource

    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_workers(
    argv: list[str],
    count: int,
    timeout: float,
    env: dict | None,
    judge: Callable[[str, str, str], str | None],
    describe: Callable[[str], str] = lambda cid: "",
) -> tuple[dict[str, int], dict[str, str]]:
    """Runs ``argv + [start]`` until every case of 0..count-1 has ended or has been blamed for a crash.
    ``judge(case id, outcome, line)`` returns a finding or None; ``describe(case id)`` names a crashed case."""
    outcomes: dict[str, int] = {}
    findings: dict[str, str] = {}
    start = 0
    while start < count:
        try:
            proc = subprocess.run(
                [*argv, str(start)], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
            )
            out, err, died = proc.stdout, proc.stderr, proc.returncode != 0
            why = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            died, why = True, f"timeout after {timeout} s"
        running, ended = None, 0
        for line in out.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "START":
                running = line[6:]
            elif parts[0] == "END" and len(parts) >= 3:
                running = None
                ended += 1
                outcomes[parts[2]] = outcomes.get(parts[2], 0) + 1
                bad = judge(parts[1], parts[2], line)
                if bad:
                    findings[parts[1]] = bad
        start += ended
        if died:
            if running is None:  # died outside a case (import, start-up): nothing to blame, stop
                findings[f"worker@{start}"] = f"{why}: {err[-2000:]}"
                break
            cid = running.split(" ")[0]
            headline = next(
                (line for line in err.splitlines() if "runtime error:" in line or "ERROR: AddressSanitizer" in line), ""
            )
            findings[cid] = f"CRASH {describe(cid)} {running}: {why}: {headline}\n{err[-1500:]}"
            outcomes["CRASH"] = outcomes.get("CRASH", 0) + 1
            start += 1
    return outcomes, findings
