"""Every command's failure is one line and a non-zero status (the traceback only on request); a
booby-trapped checkpoint is refused by every command without running anything; files get the
umask's mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from support import QUIET

import bhvit
import bhvit.cli as cli
from bhvit import runtime
from bhvit.checkpoint import atomic_write, save_model
from bhvit.cli import main
from bhvit.train.checkpoint import atomic_save


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture()
def trap(tmp_path):
    """(booby-trapped training checkpoint, marker): a real model beside a pickled payload."""
    model = bhvit.create_model("bhvit_test", precision="binary")
    marker = tmp_path / "PWNED"
    path = tmp_path / "trap.pt"
    torch.save(
        {
            "format": "bhvit-train-v1",
            "model_config": model.config.to_dict(),
            "model": model.state_dict(),
            "payload": Payload(marker),
        },
        path,
    )
    return path, marker


def _train(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        "synthetic",
        "--arch",
        "bhvit_test",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "run"),
        *QUIET,
        *extra,
    ]


def _commands(tmp_path: Path, ckpt: str) -> dict[str, list[str]]:
    img = tmp_path / "img.png"
    return {
        "predict": ["predict", str(img), "--checkpoint", ckpt],
        "convert": ["convert", ckpt, str(tmp_path / "out.safetensors")],
        "export": ["export", ckpt, "--onnx", str(tmp_path / "m.onnx")],
        "pack": ["pack", ckpt, "-o", str(tmp_path / "m.bhvp")],
        "eval": ["eval", ckpt, "--data", "synthetic"],
        "eval --checkpoint": ["eval", "--checkpoint", ckpt, "--data", "synthetic"],
        "train --resume": _train(tmp_path, "--resume", ckpt),
        "train --init-from": _train(tmp_path, "--init-from", ckpt),
        "train --teacher": _train(tmp_path, "--teacher", ckpt),
    }


@pytest.mark.parametrize(
    "command",
    [
        "predict",
        "convert",
        "export",
        "pack",
        "eval",
        "eval --checkpoint",
        "train --resume",
        "train --init-from",
        "train --teacher",
    ],
)
def test_booby_trapped_checkpoint_is_one_line_in_every_command(tmp_path, trap, capsys, command):
    if command == "pack" and not runtime.available():
        pytest.skip("the native runtime library is not built")
    if command == "export":
        pytest.importorskip("onnx")
    path, marker = trap
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "img.png")
    argv = _commands(tmp_path, str(path))[command]
    assert main(argv) != 0
    out, err = capsys.readouterr()
    assert not marker.exists()  # nothing was unpickled
    assert err.count("\n") == 1, err
    assert "bhvit never unpickles code" in err and "disallowed pickled objects (io.open)" in err
    assert "weights_only=False" not in err and "Traceback" not in err


def test_timm_teacher_weights_go_through_the_safe_loader(trap):
    from bhvit.train.teacher import _state_dict
    from bhvit.upstream import CheckpointError

    path, marker = trap
    with pytest.raises(CheckpointError, match="never unpickles code"):
        _state_dict(path)
    assert not marker.exists()


def test_not_a_checkpoint_and_missing_files_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02garbage\x1b[2J")
    assert main(["eval", str(junk)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a bhvit or authors' checkpoint" in err and "\x1b" not in err
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "o.safetensors")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):  # argparse: usage and one error line
        main(["eval"])
    assert "give the checkpoint" in capsys.readouterr().err


def _boom(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Makes ``bhvit profile`` raise ``exc`` (COMMANDS names a module and a function, imported on use)."""
    import bhvit.cli.model as model_cli

    def run(argv: list[str]) -> int:
        raise exc

    monkeypatch.setattr(model_cli, "cmd_profile", run)


def test_unexpected_errors_are_one_line_with_a_hint(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    _boom(monkeypatch, RuntimeError("kaboom\n  second line"))
    assert main(["profile"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unexpected error: RuntimeError: kaboom second line" in err and "--debug" in err
    _boom(monkeypatch, ValueError("bad value"))
    assert main(["profile"]) == 1
    assert capsys.readouterr().err == "bhvit profile: error: bad value\n"


def test_debug_flag_and_environment_print_the_traceback(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    _boom(monkeypatch, KeyError("deep"))
    assert main(["--debug", "profile"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("for the traceback)")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert main(["profile"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert main(["profile"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_interrupt_is_one_line_and_status_130(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    _boom(monkeypatch, KeyboardInterrupt())
    assert main(["profile"]) == 130
    assert capsys.readouterr().err == "bhvit profile: interrupted\n"


def test_eval_accepts_the_readme_form(tmp_path, capsys, monkeypatch):
    """``bhvit eval --checkpoint CK --data NAME`` and the positional form give the same metrics;
    dataset names accept '-' and '_' and any case."""
    from bhvit.data import DataConfig

    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision="binary", num_classes=10)
    path = tmp_path / "checkpoint.pt"
    atomic_save({"format": "bhvit-train-v1", "model_config": model.config.to_dict(), "model": model.state_dict()}, path)
    assert main(["eval", "--checkpoint", str(path), "--data", "Synthetic", "--threads", "1"]) == 0
    flag = capsys.readouterr().out
    assert main(["eval", str(path), "--data", "synthetic", "--threads", "1"]) == 0
    positional = capsys.readouterr().out
    assert '"dataset": "synthetic"' in flag and flag.split('"eval_time_s"')[0] == positional.split('"eval_time_s"')[0]
    assert DataConfig(name="fashion-mnist").name == "fashion_mnist"
    assert DataConfig(name="CIFAR-10").name == "cifar10"
    assert DataConfig(name="fashion_mnist").name == "fashion_mnist"
    (tmp_path / "fashion-mnist").mkdir()
    monkeypatch.chdir(tmp_path)  # an existing directory of that name stays a directory
    assert DataConfig(name="fashion-mnist").name == "fashion-mnist"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        model = bhvit.create_model("bhvit_test", precision="binary").eval()
        files = [
            save_model(model, tmp_path / "m.safetensors"),
            atomic_save({"x": torch.ones(2)}, tmp_path / "c.pt"),
            atomic_write(tmp_path / "t.txt", lambda tmp: Path(tmp).write_text("hi")),
        ]
        try:
            from bhvit.engine.api import pack, save_packed

            files.append(save_packed(pack(model), tmp_path / "m.bhvp"))
        except ImportError:  # native engine not built
            pass
        Path(tmp_path / "plain.txt").write_text("plain")
        want = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
        assert want == 0o666 & ~umask
        for f in files:
            assert stat.S_IMODE(os.stat(f).st_mode) == want, f
        assert not list(tmp_path.glob(".*.tmp"))
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "command", ["profile", "predict", "convert", "export", "train", "eval", "demo", "pack", "bench"]
)
def test_usage_errors_are_one_line(command, capsys):
    """argparse's own errors (an unknown flag) are one line naming the command and where help is."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--no-such-flag"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"bhvit {command}: error:") and "--help" in err
