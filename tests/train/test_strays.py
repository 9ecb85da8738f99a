"""Training strays: a batch larger than the data, one class, a full disk, flags without help, warnings
with source lines, and torch's threads (count and wait policy)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import QUIET

from bhvit.checkpoint import NoSpaceError, atomic_write
from bhvit.cli import main
from bhvit.cli.train import demo_parser, eval_parser, train_parser
from bhvit.train import checkpoint as ckpt_io
from bhvit.train import threads
from bhvit.train.config import fitted_batch
from bhvit.train.logs import JsonlLogger

ROOT = Path(__file__).resolve().parents[2]


def _flat(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 100, (20, 20, 3)) + 120 * k
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{i}.png")
    return root


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--arch",
        "bhvit_test",
        "--precision",
        "fp",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--out",
        str(out),
        *QUIET,
        *extra,
    ]


def test_batch_larger_than_the_data_is_clamped():
    assert fitted_batch(100_000_000, 8) == 8 and fitted_batch(16, 8) == 8 and fitted_batch(4, 8) == 4
    assert fitted_batch(100, 9, world_size=2) == 8 and fitted_batch(100, 1, world_size=2) == 2


def test_huge_batch_trains_in_bounded_memory(tmp_path):
    """``--batch-size 100000000`` on 8 images: clamped to 8 with a warning, and the process stays small
    (it used to build a 10⁸-index epoch: gigabytes)."""
    data = _flat(tmp_path / "data", per_class=5)  # 8 training images after the 20 % hold-out
    argv = _train_argv(data, tmp_path / "run", "--batch-size", "100000000")
    probe = (
        "import resource, subprocess, sys; "
        f"r = subprocess.run([sys.executable, '-m', 'bhvit', *{argv!r}], capture_output=True, text=True); "
        "print(r.returncode); print(r.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "0", out.stdout + out.stderr
    assert "warning: --batch-size 100000000 is larger than the 8 training images: using 8" in out.stdout
    peak_mib = int(lines[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mib < 1500, f"peak RSS {peak_mib:.0f} MiB"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["batch_size"] == 8


def test_one_class_is_refused_in_one_line(tmp_path, capsys):
    data = _flat(tmp_path / "one", classes=("only",))
    assert main(_train_argv(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one class (only); a classifier needs at least 2 class folders" in err
    assert not (tmp_path / "run").exists()


def _full(path: str | Path) -> None:
    """Write into /dev/full, which answers every write with ENOSPC (a full disk, no root needed)."""
    with open("/dev/full", "wb") as f:
        f.write(b"x" * (1 << 16))
        f.flush()


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@needs_dev_full
def test_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    """torch's own writer on a full disk: "no space left" naming the checkpoint, not "enforce fail at
    inline_container.cc"; nothing left behind."""
    real_save = torch.save

    def save_to_full_disk(obj, f, *args, **kwargs):
        with open("/dev/full", "wb") as full:  # the bytes torch writes hit ENOSPC as on a full disk
            real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(ckpt_io.torch, "save", save_to_full_disk)
    data = _flat(tmp_path / "data")
    assert main(_train_argv(data, tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert err == (
        f"bhvit train: error: no space left on device while writing {ckpt} (any previous version of it is "
        "intact): free some space or write elsewhere"
    )
    assert not list((tmp_path / "run").glob(".*.tmp")) and not ckpt.exists()


@needs_dev_full
def test_full_disk_in_the_log_and_any_atomic_write_names_the_file(tmp_path):
    log = JsonlLogger(tmp_path / "log.jsonl")
    log.file.close()
    log.file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 - the logger owns it
    with pytest.raises(NoSpaceError, match=re.escape(f"writing {tmp_path / 'log.jsonl'}")) as err:
        log.log("step", step=1, loss=0.5)
    assert err.value.errno == errno.ENOSPC and "Errno" not in str(err.value)
    with pytest.raises(NoSpaceError, match=r"no space left on device while writing .*summary\.json"):
        atomic_write(tmp_path / "summary.json", _full)
    assert list(tmp_path.iterdir()) == [tmp_path / "log.jsonl"]  # the temporary file is gone
    with pytest.raises(PermissionError):  # other errors stay what they are

        def deny(tmp: Path) -> None:
            raise PermissionError(errno.EACCES, "denied")

        atomic_write(tmp_path / "x.json", deny)


def _flags_without_help(parser) -> list[str]:
    """Options whose help says nothing beyond the generated ``(table.field, default …)`` suffix."""
    bare = []
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] in ("-h", "--help"):
            continue
        text = re.sub(r"\((?:[a-z_]+\.[a-z_]+, )?default .*\)$", "", action.help or "").strip()
        if len(text) < 8:
            bare.append(action.option_strings[0])
    return bare


def test_every_train_eval_demo_flag_has_help():
    for parser in (train_parser(), eval_parser(), demo_parser()):
        assert _flags_without_help(parser) == [], parser.prog
    helps = {a.option_strings[0]: a.help for a in train_parser()._actions if a.option_strings}
    assert "public source" in helps["--download"] and "affinity" in helps["--threads"]
    assert "continue from" in helps["--resume"] and "held out" in helps["--val-fraction"]


def test_a_warning_is_one_line_without_its_source(tmp_path, capsys, monkeypatch):
    """matplotlib missing: the plots are skipped with one line, not Python's file:line plus source."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    data = _flat(tmp_path / "data")
    argv = [a for a in _train_argv(data, tmp_path / "run") if a != "--no-plots"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert "bhvit train: warning: matplotlib unavailable" in "\n".join(err)
    assert all(line.startswith(("bhvit train: ", "epoch ")) for line in err), err


def test_usable_cpus_reads_affinity_and_cgroup_quotas(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    (proc / "cgroup").write_text("0::/job/step\n")
    assert threads.usable_cpus(cg, proc) == 6  # no cpu.max anywhere
    (cg / "job" / "step").mkdir(parents=True)
    (cg / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (cg / "job" / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs for the parent: binds the child
    assert threads.cgroup_cpu_quota(cg, proc) == 2.5 and threads.usable_cpus(cg, proc) == 3  # rounded up
    (cg / "cpu.max").write_text("50000 100000\n")  # half a CPU: one thread
    assert threads.usable_cpus(cg, proc) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "ci").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "ci" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu,cpuacct" / "ci" / "cpu.cfs_period_us").write_text("100000\n")
    (proc / "cgroup").write_text("5:memory:/ci\n4:cpu,cpuacct:/ci\n")
    assert threads.usable_cpus(v1, proc) == 3
    (v1 / "cpu,cpuacct" / "ci" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert threads.cgroup_cpu_quota(v1, proc) is None and threads.usable_cpus(v1, proc) == 6
    assert threads.cgroup_cpu_quota(tmp_path / "none", tmp_path / "none") is None
    assert threads.torch_threads(3, {"BHVIT_NUM_THREADS": "5"}) == 3  # --threads first
    assert threads.torch_threads(None, {"BHVIT_NUM_THREADS": "5"}) == 5
    for unset in ({}, {"BHVIT_NUM_THREADS": "0"}, {"BHVIT_NUM_THREADS": "many"}):
        assert threads.torch_threads(None, unset) == threads.usable_cpus()


def test_passive_waits_unless_the_user_chose(monkeypatch):
    env: dict[str, str] = {}
    assert threads.prefer_passive_waits(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ({"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(chosen)
        assert not threads.prefer_passive_waits(env) and env == chosen


def test_bhvit_train_sets_the_wait_policy_before_torch_loads():
    """In a fresh process, as ``bhvit train`` starts: the policy is in the environment before torch is
    imported (libgomp reads it once, when torch loads it), and a user's own setting stays."""
    probe = (
        "import os, sys; import bhvit.cli; assert 'torch' not in sys.modules; "
        "import bhvit.cli.train, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_POLICY_VARS}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == "PASSIVE", run.stderr
    run = subprocess.run(
        [sys.executable, "-c", probe], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True
    )
    assert run.stdout.strip() == "ACTIVE", run.stderr


def test_torch_threads_default_to_the_usable_cpus(tmp_path, monkeypatch):
    from bhvit.train.config import TrainConfig
    from bhvit.train.loop import build

    monkeypatch.setattr("bhvit.train.threads.usable_cpus", lambda *a: 1)
    monkeypatch.delenv("BHVIT_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        cfg = TrainConfig.from_dict(
            {
                "data": {"name": "synthetic", "synthetic_size": 64},
                "model": {"arch": "bhvit_test", "precision": "fp"},
                "run": {"out_dir": str(tmp_path), "progress": False, "plots": False},
            }
        )
        build(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_checkpoint_keys_are_the_documented_ones(tmp_path):
    """train/checkpoint.py's docstring lists the keys a checkpoint holds, in order: no drift."""
    data = _flat(tmp_path / "data")
    assert main(_train_argv(data, tmp_path / "run")) == 0
    ck = ckpt_io.load(tmp_path / "run" / "checkpoint.pt")
    documented = re.findall(r"^- ``(\w+)``:", ckpt_io.__doc__, re.M)
    assert documented == list(ck)
