"""Fuzzing (issue 10): a few hundred hostile version-1 packed files and direct native calls, each case in a
worker subprocess that names the case it was running if it dies (scripts/fuzz_packed.py). Every file must be
read by the version-1 reader (``fileformat.read_parts``) and run by the legacy forward (``LegacyPackedModel``)
when the mutation kept it valid, or raise PackedFormatError; every native call must return or raise
ValueError. Never a signal, a hang, another exception type or a wrong-sized answer. The version-2 format and
the runtime's C API: tests/runtime/test_fuzz_runtime.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import load_script

fuzz = load_script("fuzz_packed")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return fuzz.build_seeds(tmp_path_factory.mktemp("seeds"))


def test_format_fuzz(seeds: list[Path]) -> None:
    report = fuzz.run_format(seeds, 600, seed=10, timeout=120)
    assert not report.findings, "\n".join(f"{k}: {v}" for k, v in sorted(report.findings.items()))
    # both kinds of ending occur: the corpus is neither all-valid nor all-refused
    assert report.outcomes.get("REJECTED", 0) > 300 and report.outcomes.get("LOADED", 0) > 30, report.outcomes


def test_native_fuzz() -> None:
    report = fuzz.run_native(1500, seed=10, timeout=120)
    assert not report.findings, "\n".join(f"{k}: {v}" for k, v in sorted(report.findings.items()))
    assert report.outcomes.get("REJECTED", 0) > 500 and report.outcomes.get("RETURNED", 0) > 300, report.outcomes


def test_a_crash_is_caught_and_named(tmp_path: Path) -> None:
    """The driver's crash detection itself: a worker killed by a signal mid-case blames that case and the
    next worker resumes after it."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, sys\n"
        "for i in range(int(sys.argv[1]), 5):\n"
        "    print(f'START {i:05d} case', flush=True)\n"
        "    if i == 2:\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    print(f'END {i:05d} RETURNED case', flush=True)\n"
    )
    outcomes, findings = fuzz._run_workers([sys.executable, str(script)], 5, 30, None, lambda *a: None)
    assert outcomes == {"RETURNED": 4, "CRASH": 1}
    assert list(findings) == ["00002"] and "CRASH" in findings["00002"]
