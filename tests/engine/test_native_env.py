"""Environment switches of the native engine, read once per process (bhvit/engine/_native.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("bhvit.engine._C", reason="native engine not built")

PROBE = "from bhvit.engine import kernels; print(kernels.current_isa())"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_bhvit_isa_starts_the_process_on_that_path() -> None:
    done = _run({"BHVIT_ISA": "generic"})
    assert done.returncode == 0 and done.stdout.strip() == "generic"


def test_an_unknown_bhvit_isa_is_a_clear_error() -> None:
    done = _run({"BHVIT_ISA": "sse9"})
    assert done.returncode != 0
    assert "BHVIT_ISA='sse9' is not a kernel path of this CPU and build; choose one of [" in done.stderr
