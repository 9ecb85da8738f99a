"""The fuzz corpus of scripts/fuzz_packed.py against the extension built with AddressSanitizer and
UndefinedBehaviorSanitizer (scripts/build_sanitized.sh): every case must run clean (issue 10). Slow: the
sanitized build takes a few minutes on 2 cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, load_script, sanitized_build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sanitized_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    module, env = sanitized_build(tmp_path_factory.mktemp("sanitized"), [], "BHVIT_NATIVE_EXT")
    # the workers really use the sanitized module, with the ASan runtime loaded
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes; from bhvit.engine._native import native; "
            "ctypes.CDLL(None).__asan_init; print(native().__file__)",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == module, probe.stderr[-2000:]
    return env


def test_fuzz_corpus_is_clean_under_asan_and_ubsan(sanitized_env: dict[str, str], tmp_path: Path) -> None:
    fuzz = load_script("fuzz_packed")
    seeds = fuzz.build_seeds(tmp_path)
    for report in (
        fuzz.run_format(seeds, 600, seed=20, timeout=300, env=sanitized_env),
        fuzz.run_native(3000, seed=20, timeout=300, env=sanitized_env),
    ):
        assert not report.findings, "\n".join(f"{k}: {v}" for k, v in sorted(report.findings.items()))
        assert sum(report.outcomes.values()) > 500, report.outcomes
