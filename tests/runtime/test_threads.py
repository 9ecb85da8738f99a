"""The runtime's threads: one model run from many threads at once gives the bits of serial runs (from Python and
from C), the default thread count follows the CPUs this process may use, and a forked child can still run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from runtime_build import CC, compile_c, runtime_flags, small_model

import bhvit.runtime as rt

THREADS_CHECK_C = Path(__file__).resolve().parent / "threads_check.c"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_model(tmp_path_factory.mktemp("threads") / "m.bhvp")


def test_many_python_threads_on_one_model_match_serial_runs(model_file: Path) -> None:
    """4 threads x 300 calls with batches 1-4 on one loaded model, 2 pool threads: every result equals the
    same batch run alone, bit for bit."""
    model = rt.load(model_file)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, *model.input_shape), dtype=np.float32) for b in (1, 2, 3, 4, 1, 2)]
    expected = [model.run(x) for x in inputs]
    bad: list[tuple[int, int]] = []

    def client(seed: int) -> None:
        r = np.random.default_rng(seed)
        for _ in range(300):
            j = int(r.integers(len(inputs)))
            if not np.array_equal(model.run(inputs[j]), expected[j]):
                bad.append((seed, j))

    before = rt.get_num_threads()
    rt.set_num_threads(2)
    try:
        clients = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
    finally:
        rt.set_num_threads(before)
    assert bad == []


@pytest.mark.skipif(CC is None, reason="needs a C compiler to build threads_check.c")
def test_many_c_threads_on_one_model_match_serial_runs(model_file: Path, tmp_path: Path) -> None:
    exe = compile_c([THREADS_CHECK_C], tmp_path / "threads_check", [*runtime_flags(), "-pthread"])
    run = subprocess.run(
        [str(exe), str(model_file), "4", "300"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BHVIT_NUM_THREADS": "2"},
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok 1200", run.stderr


def _threads_in_child(prefix: list[str], env: dict[str, str]) -> int:
    code = "import bhvit.runtime as rt; print(rt.get_num_threads())"
    run = subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return int(run.stdout)


@pytest.mark.skipif(
    shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset and 2 CPUs"
)
def test_default_threads_follow_the_affinity_mask() -> None:
    env = {"BHVIT_NUM_THREADS": ""}
    assert _threads_in_child([], env) == len(os.sched_getaffinity(0))
    assert _threads_in_child(["taskset", "-c", "0"], env) == 1


def test_bhvit_num_threads_sets_the_default_and_set_num_threads_restores_it() -> None:
    assert _threads_in_child([], {"BHVIT_NUM_THREADS": "3"}) == 3
    default = _threads_in_child([], {})  # this environment's default, whatever earlier tests set here
    before = rt.get_num_threads()
    try:
        rt.set_num_threads(5)
        assert rt.get_num_threads() == 5
        rt.set_num_threads(0)  # < 1: the default again
        assert rt.get_num_threads() == default
    finally:
        rt.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_after_the_parent_used_the_pool(model_file: Path) -> None:
    model = rt.load(model_file)
    x = np.random.default_rng(1).standard_normal((2, *model.input_shape), dtype=np.float32)
    rt.set_num_threads(2)
    expected = model.run(x)  # the pool's workers exist now
    code = f"""
import os, sys, numpy as np, bhvit.runtime as rt
rt.set_num_threads(2)
m = rt.load({str(model_file)!r})
x = np.load({str(model_file) + ".x.npy"!r})
m.run(x)
pid = os.fork()
if pid == 0:
    out = m.run(x)
    os._exit(0 if np.array_equal(out, np.load({str(model_file) + ".y.npy"!r})) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    np.save(str(model_file) + ".x.npy", x)
    np.save(str(model_file) + ".y.npy", expected)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
@pytest.mark.skipif(CC is None or shutil.which("cmake") is None, reason="needs cmake and a C compiler")
def test_many_c_threads_on_one_model_are_race_free_under_threadsanitizer(model_file: Path, tmp_path: Path) -> None:
    """The runtime built with -DBHVIT_SANITIZE=thread (its thread pool, per-call workspaces and shared weights)
    and threads_check.c built with -fsanitize=thread: 4 callers x 40 runs on 2 pool threads, no report."""
    root = Path(__file__).resolve().parents[2]
    build = root / "build" / "tsan-runtime"
    configure = [
        *("cmake", "-S", str(root / "runtime"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug"),
        *("-DBHVIT_SANITIZE=thread", "-DBHVIT_BUILD_TOOL=OFF", "-DBHVIT_INSTALL=OFF", "-DBHVIT_VERSIONED_SONAME=OFF"),
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "--target", "bhvit_runtime", "-j", str(os.cpu_count())]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    include = root / "runtime" / "include"
    flags = [
        f"-I{include}",
        "-pthread",
        "-fsanitize=thread",
        "-g",
        f"-L{build}",
        f"-Wl,-rpath,{build}",
        "-lbhvit_runtime",
    ]
    exe = compile_c([THREADS_CHECK_C], tmp_path / "threads_check_tsan", flags)
    run = subprocess.run(
        [str(exe), str(model_file), "4", "40"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "BHVIT_NUM_THREADS": "2", "TSAN_OPTIONS": "halt_on_error=1:exitcode=66"},
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok 160", run.stderr[-4000:]
