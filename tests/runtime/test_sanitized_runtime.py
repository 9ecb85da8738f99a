"""The fuzz corpora of tests/fuzz (packed files, C API) and the hostile files of hostile_files.py (issue 19)
against libbhvit_runtime built with AddressSanitizer and UndefinedBehaviorSanitizer
(``scripts/build_sanitized.sh --runtime``): every case must run clean (issue 11, item 5). The workers get no
address-space limit (ASan reserves terabytes of it); an absurd allocation is caught by ASan itself
("requested allocation size exceeds maximum supported size"). Slow: the sanitized build takes a few minutes
on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hostile_files
import pytest
from support import ROOT, sanitized_build

from tests.fuzz import capi, driver, program

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sanitized_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    library, env = sanitized_build(tmp_path_factory.mktemp("sanitized-runtime"), ["--runtime"], "BHVIT_RUNTIME_LIB")
    # the workers really load the sanitized library, with the ASan runtime loaded
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes; from bhvit.runtime import paths, available; "
            "ctypes.CDLL(None).__asan_init; assert available(); print(paths.library_path())",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == library, probe.stderr[-2000:]
    return env


def test_runtime_fuzz_corpora_are_clean_under_asan_and_ubsan(sanitized_env: dict[str, str], tmp_path: Path) -> None:
    seeds = driver.build_seeds(tmp_path)
    reports = {
        "program": program.run_program(seeds, 800, seed=21, timeout=600, env=sanitized_env, memory_limit=0),
        "C API": capi.run_capi(tmp_path, 600, seed=21, timeout=600, env=sanitized_env, memory_limit=0),
    }
    for name, report in reports.items():
        assert not report.findings, name + ":\n" + "\n".join(f"{k}: {v}" for k, v in sorted(report.findings.items()))
        assert sum(report.outcomes.values()) > 500, (name, report.outcomes)


def test_hostile_files_are_clean_under_asan_and_ubsan(sanitized_env: dict[str, str], tmp_path: Path) -> None:
    """Each hostile file ends as it must (refused, loaded, or its run refused) with no sanitizer report; a
    run with a NaN pixel is refused too."""
    endings = {"refuse": "refused", "load": "loaded", "run": "run refused"}
    for name, make in hostile_files.GENERATORS.items():
        case = make()
        path = tmp_path / f"{name}.bhvp"
        path.write_bytes(case.data)
        run_input = case.run_input if case.expect == "run" else float("nan") if case.expect == "load" else None
        run = subprocess.run(
            [sys.executable, hostile_files.__file__, str(path), "{}", json.dumps(run_input)],
            capture_output=True,
            text=True,
            env=sanitized_env,
            cwd=ROOT,
            timeout=600,
        )
        assert run.returncode == 0, f"{name}: {run.stderr[-3000:]}"
        out = json.loads(run.stdout)
        want = "run refused" if case.expect == "load" else endings[case.expect]  # loads, then NaN pixels refused
        assert out["ending"] == want and case.needle in out["error"], (name, out)
        path.unlink()
