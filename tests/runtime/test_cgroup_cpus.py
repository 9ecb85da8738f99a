"""The runtime's default thread count under a cgroup CPU quota (issue 19): runtime/kernels/parallel.cpp reads
the quota along the process's cgroup path and its parents, as bhvit/train/threads.py does for torch's
threads. Both readers run on the same fake /sys/fs/cgroup and /proc/self trees and must agree."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

from bhvit.train import threads

ROOT = Path(__file__).resolve().parents[2]
CXX = shutil.which("g++") or shutil.which("clang++")

DRIVER = r"""
#include <cstdio>
#include "parallel.h"
int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) std::printf("%d\n", bhv::detail::cgroup_cpus(argv[i], argv[i + 1]));
}
"""


@pytest.fixture(scope="module")
def cgroup_cpus(tmp_path_factory: pytest.TempPathFactory):
    """cgroup_cpus(root, proc) of parallel.cpp, through a small program built from it."""
    if CXX is None:
        pytest.skip("needs a C++ compiler")
    folder = tmp_path_factory.mktemp("cgroup")
    (folder / "driver.cpp").write_text(DRIVER)
    kernels = ROOT / "runtime" / "kernels"
    exe = folder / "driver"
    cmd = [CXX, "-std=c++17", "-O1", f"-I{kernels}", str(folder / "driver.cpp"), str(kernels / "parallel.cpp")]
    build = subprocess.run([*cmd, "-pthread", "-o", str(exe)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr

    def run(root: Path, proc: Path) -> int:
        out = subprocess.run([str(exe), str(root), str(proc)], capture_output=True, text=True, check=True)
        return int(out.stdout)

    return run


def python_cpus(root: Path, proc: Path) -> int:
    quota = threads.cgroup_cpu_quota(root, proc)
    return 0 if quota is None else max(1, math.ceil(quota))


def test_both_readers_take_the_smallest_quota_along_the_cgroup_path(tmp_path: Path, cgroup_cpus) -> None:
    def agree(root: Path, proc: Path, want: int) -> None:
        assert cgroup_cpus(root, proc) == want == python_cpus(root, proc)

    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/job/step\n")
    agree(cg, proc, 0)  # no cpu.max anywhere
    (cg / "job" / "step").mkdir(parents=True)
    (cg / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (cg / "job" / "cpu.max").write_text("250000 100000\n")  # the parent's 2.5 CPUs bind the child
    agree(cg, proc, 3)
    (cg / "job" / "step" / "cpu.max").write_text("150000 100000\n")  # the child's own, smaller
    agree(cg, proc, 2)
    (cg / "cpu.max").write_text("50000 100000\n")  # the root's half CPU: one thread
    agree(cg, proc, 1)
    (cg / "cpu.max").unlink()
    (proc / "cgroup").write_text("0::/../../job\n")  # a cgroup outside the namespace: never leave the mount
    agree(cg, proc, 3)

    v1, proc_v1 = tmp_path / "v1", tmp_path / "proc_v1"
    (v1 / "cpu,cpuacct" / "ci").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "ci" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu,cpuacct" / "ci" / "cpu.cfs_period_us").write_text("100000\n")
    proc_v1.mkdir()
    (proc_v1 / "cgroup").write_text("5:memory:/ci\n4:cpu,cpuacct:/ci\n")
    agree(v1, proc_v1, 3)
    (v1 / "cpu,cpuacct" / "ci" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    agree(v1, proc_v1, 0)
    agree(tmp_path / "none", tmp_path / "none", 0)
