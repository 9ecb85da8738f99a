"""benchmarks/arm_instructions.py: instructions per forward on aarch64 under qemu-user, the packed runtime against
onnxruntime fp32 on the fp twin. The parsers are tested always; the counting plugin and the whole measurement
are slow tests that skip (with the install commands) when qemu-user, the cross compilers or the plugin's
header cannot be had, and never fail for that."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts are not a package
import arm_instructions as arm  # noqa: E402

# The regression guard: onnxruntime fp32 on the fp twin executes at least this many times the runtime's
# instructions per forward of bhvit_tiny at 224, batch 1, 1 thread (measured 5.14x: 245.2 M against 1,259.1 M
# on qemu 7.2's cortex-a76, counts repeat to 0.1 %; it was 3.15x; issue 21 asks for 6x).
MIN_RATIO = 5.0

DEPENDS = """python3.11-minimal:arm64
  PreDepends: libc6:arm64
  Depends: libpython3.11-minimal:arm64
 |Depends: libexpat1:arm64
  Depends: libexpat1-alt:arm64
  Depends: <mime-support:arm64>
  Recommends: python3.11:arm64
"""


def test_parse_depends_takes_first_alternatives_and_skips_virtual_packages() -> None:
    assert arm.parse_depends(DEPENDS) == ["libc6", "libpython3.11-minimal", "libexpat1"]


def test_parse_counts_gives_each_forward_between_markers() -> None:
    text = "mark 0 0 100 110\nmark 1 0 1100 1110\nmark 2 0 2102 2122\nexit 3000 2\n"
    counts = arm.parse_counts(text)
    assert counts["per_forward"] == [1000, 1012] and counts["instructions"] == 1006
    assert counts["spread"] == pytest.approx(12 / 1006)
    assert counts["other_threads_share"] == pytest.approx(10 / 2012)
    with pytest.raises(RuntimeError, match="no complete forward"):
        arm.parse_counts("mark 0 0 1 1\nexit 1 1\n")


def _prerequisites(cache: Path) -> Path:
    """The plugin built in cache, or a skip naming what to install."""
    try:
        arm.check_tools()
        return arm.build_plugin(cache, arm.plugin_header(cache, None))
    except arm.Missing as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_the_plugin_counts_a_known_loop_exactly(tmp_path: Path) -> None:
    arm.DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    plugin = _prerequisites(arm.DEFAULT_CACHE)
    source = tmp_path / "loop.s"  # 1000 iterations of 4 instructions between two markers
    source.write_text(
        ".global main\nmain:\n  stp x29, x30, [sp, #-16]!\n"
        "  mov x0, #172\n  movz x1, #0x7669\n  movk x1, #0x6268, lsl #16\n  mov x2, #0\n  bl syscall\n"
        "  mov x9, #1000\nloop:\n  add x10, x10, #1\n  add x11, x11, #2\n  sub x9, x9, #1\n  cbnz x9, loop\n"
        "  mov x0, #172\n  movz x1, #0x7669\n  movk x1, #0x6268, lsl #16\n  mov x2, #1\n  bl syscall\n"
        "  mov w0, #0\n  ldp x29, x30, [sp], #16\n  ret\n"
    )
    exe = tmp_path / "loop"
    subprocess.run(["aarch64-linux-gnu-gcc", str(source), "-o", str(exe)], check=True)
    out = tmp_path / "counts.txt"
    subprocess.run(
        ["qemu-aarch64", "-plugin", f"{plugin},out={out}", "-L", str(arm.SYSROOT), str(exe)], check=True, timeout=120
    )
    (forward,) = arm.parse_counts(out.read_text())["per_forward"]
    # the loop (4000), its counter (1), the second marker's arguments and call (5), and libc's syscall() around
    # the svc instructions (17 in all with Debian 12's libc)
    assert 4000 + 1 + 5 < forward <= 4000 + 1 + 5 + 30, forward


@pytest.mark.slow
def test_arm_instruction_counts_of_bhvit_tiny(tmp_path: Path) -> None:
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("needs qemu-user: apt-get install qemu-user g++-aarch64-linux-gnu cmake")
    out = tmp_path / "arm.json"
    cmd = [sys.executable, str(BENCH / "arm_instructions.py"), "--forwards", "2", "--json", str(out)]
    done = subprocess.run([*cmd, "--min-ratio", str(MIN_RATIO)], capture_output=True, text=True, timeout=3600)
    if done.returncode == arm.MISSING_STATUS:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert (result["model"], result["img_size"], result["batch"], result["threads"]) == ("bhvit_tiny", 224, 1, 1)
    for name in ("runtime", "onnxruntime"):
        counts = result[name]
        assert len(counts["per_forward"]) == 2 and counts["spread"] < 1e-3, counts  # reproducible to 0.1 %
        assert counts["other_threads_share"] < 1e-3, counts  # one thread did the forward
    assert 1e8 < result["runtime"]["instructions"] < 1e10
    assert result["ratio"] == pytest.approx(result["onnxruntime"]["instructions"] / result["runtime"]["instructions"])
    assert result["ratio"] >= MIN_RATIO
    assert "ratio onnxruntime / runtime" in done.stdout
