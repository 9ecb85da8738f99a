"""Fuzzing of the native runtime (issue 11): a few hundred hostile packed files and direct C API calls, each
case in a worker subprocess that names the case it was running if it dies (the package tests/fuzz).

Every file must load and run on batch 1 and 2 with logits (B, num_classes) (finite where the mutation kept the
values; bit for bit the seed's where the file is equivalent to it) or be refused with PackedFormatError /
ValueError; every C API call must keep its contract (NULL pointers, short error buffers, bad batches, ISA
names, labels, metadata keys, profile sizes). Never a signal, a hang, another exception type, an absurd
allocation (the workers run under a 2 GiB address-space limit) or a write past a buffer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bhvit.runtime as rt
from tests.fuzz import capi, driver, program

pytestmark = pytest.mark.skipif(not rt.available(), reason="needs the native runtime library (bash scripts/setup.sh)")


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seeds")
    driver.build_seeds(out)
    return out


def _findings(report) -> str:  # noqa: ANN001
    return "\n".join(f"{k}: {v}" for k, v in sorted(report.findings.items()))


def test_program_fuzz(seed_dir: Path) -> None:
    report = program.run_program(sorted(seed_dir.glob("seed*.bhvp")), 640, seed=11, timeout=120)
    assert not report.findings, _findings(report)
    # both endings occur in numbers: the corpus is neither all-valid nor all-refused
    assert report.outcomes.get("REJECTED", 0) > 300 and report.outcomes.get("LOADED", 0) > 120, report.outcomes


def test_c_api_fuzz(seed_dir: Path) -> None:
    report = capi.run_capi(seed_dir, 320, seed=11, timeout=120)
    assert not report.findings, _findings(report)
    assert report.outcomes.get("REFUSED", 0) > 100 and report.outcomes.get("RETURNED", 0) > 100, report.outcomes


def test_the_oracle_sees_a_wrong_outcome() -> None:
    """The judge itself: a refusal of an equivalent file, a load of a file that must be refused and non-finite
    logits where the values were kept are findings; the allowed endings are not."""
    case, judge = program.ProgramCase, program._judge_program
    assert not judge(case("x", b"", "same"), "REJECTED")
    assert not judge(case("x", b"", "reject"), "LOADED")
    assert not judge(case("x", b"", "either"), "NONFINITE")
    assert not judge(case("x", b"", "either"), "RUNFAIL")
    assert judge(case("x", b"", "either", nonfinite_ok=True), "NONFINITE")
    assert judge(case("x", b"", "reject"), "REJECTED")
    assert judge(case("x", b"", "same"), "LOADED")


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
    outcomes, findings = driver.run_workers([sys.executable, str(script)], 5, 30, None, lambda *a: None)
    assert outcomes == {"RETURNED": 4, "CRASH": 1}
    assert list(findings) == ["00002"] and "CRASH" in findings["00002"]


def test_register_flow_checker_finds_reads_before_writes() -> None:
    """flow_broken, which decides that a structural mutation must be refused, on hand-made programs."""
    ok = {
        "input": [3, 8, 8],
        "output": "p",
        "num_classes": 4,
        "ops": [
            {"op": "patch_conv", "in": "input", "out": "x", "kernel": 4},
            {"op": "sign_pack", "in": "x", "out": "xb"},
            {"op": "bconv", "in": "xb", "out": "x", "accumulate": True},
            {"op": "mean_tokens", "in": "x", "out": "p"},
        ],
    }
    assert program.flow_broken(ok) is None
    early = {**ok, "ops": [ok["ops"][1], ok["ops"][0], *ok["ops"][2:]]}
    assert "before it is written" in program.flow_broken(early)
    kind = {**ok, "ops": [ok["ops"][0], {**ok["ops"][2], "in": "x"}, ok["ops"][3]]}
    assert "float register" in program.flow_broken(kind)
    same = {**ok, "ops": [*ok["ops"][:3], {"op": "mean_tokens", "in": "x", "out": "x"}]}
    assert "writes one of its inputs" in program.flow_broken(same)
