"""Judging the deployed model from the command line (issue 20, item 2): ``bhvit eval``, ``bench`` and ``profile``
of a packed file, the commands that need float weights refusing one in a line, and help for every flag."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

import bhvit
import bhvit.runtime as rt
from bhvit.checkpoint import load_model
from bhvit.cli import COMMANDS, command, main
from bhvit.cli.errors import CommandParser
from bhvit.engine.bench import cpu_name
from bhvit.files import file_kind
from bhvit.profile import profile_model, profile_packed

needs_runtime = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")
REFUSED = "is a packed model file, not a checkpoint"


def _flat_folder(root: Path, per_class: int = 10) -> Path:
    """``root/<class>/<i>.png``: two classes told apart by brightness, images of assorted sizes."""
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("dark", "light")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            h, w = ((24, 40), (50, 30), (33, 33))[i % 3]
            arr = rng.integers(0, 110, (h, w, 3)) + 120 * k
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch of bhvit_test (binary) on a flat folder (4 of its 20 images held out), and its packed file."""
    tmp = tmp_path_factory.mktemp("judge")
    data = _flat_folder(tmp / "shapes")
    run = tmp / "run"
    argv = ["train", "--data", str(data), "--arch", "bhvit_test", "--precision", "binary", "--img-size", "32"]
    argv += ["--batch-size", "4", "--epochs", "1", "--out", str(run), "--threads", "1", "--no-auto-teacher"]
    assert main([*argv, "--no-progress", "--no-plots"]) == 0
    packed = tmp / "model.bhvp"
    assert main(["pack", str(run / "checkpoint.pt"), "-o", str(packed), "--check", "0"]) == 0
    return {"data": data, "checkpoint": run / "checkpoint.pt", "packed": packed, "tmp": tmp}


def _out_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


@needs_runtime
def test_eval_of_a_packed_file_scores_what_training_scored(trained, capsys):
    """Through the runtime, on the held-out images prepared as the file says: the training evaluation's
    top-1, and with the checkpoint the float model's numbers and full agreement."""
    ckpt, packed = str(trained["checkpoint"]), str(trained["packed"])
    assert main(["eval", ckpt, "--threads", "1"]) == 0
    float_scores = _out_json(capsys)
    assert main(["eval", packed, "--checkpoint", ckpt, "--threads", "1"]) == 0  # the data: the checkpoint's
    both = _out_json(capsys)
    assert both["n"] == float_scores["n"] == 4 and both["packed"] == packed and both["checkpoint"] == ckpt
    assert both["acc1"] == pytest.approx(float_scores["acc1"]) and both["acc5"] == pytest.approx(float_scores["acc5"])
    assert both["float_acc1"] == pytest.approx(float_scores["acc1"])
    assert both["top1_agreement"] == 100.0 and both["top1_differs"] == 0
    assert both["split"] == float_scores["split"]
    # without the checkpoint: --data names the folder, split with the default seed and fraction as training did
    out = trained["tmp"] / "scores.json"
    assert main(["eval", "--checkpoint", packed, "--data", str(trained["data"]), "--json", str(out)]) == 0
    alone = _out_json(capsys)
    assert alone["acc1"] == both["acc1"] and alone["n"] == 4 and "top1_agreement" not in alone
    assert json.loads(out.read_text()) == alone


@needs_runtime
def test_eval_of_a_packed_file_refuses_in_one_line(trained, capsys):
    packed = str(trained["packed"])
    cases = {
        (packed,): "does not record the data it was trained on: pass --data",
        (packed, "--data", "synthetic"): "the packed model takes 3 channel(s) to 2 classes, data synthetic has 3 / 10",
        (packed, "--data", str(trained["data"]), "--img-size", "64"): "--img-size 64: the packed file",
        (packed, "--checkpoint", packed): None,  # the same file twice is one file: it needs --data
    }
    for argv, expected in cases.items():
        assert main(["eval", *argv]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert expected is None or expected in err, err
    with pytest.raises(SystemExit):  # a usage error: argparse's status 2
        main(["eval", packed, "--ema", "--data", "synthetic"])
    assert "--ema scores a training checkpoint's EMA weights" in capsys.readouterr().err
    other = trained["tmp"] / "other.safetensors"
    bhvit.save_model(bhvit.create_model("bhvit_test", num_classes=3), other)
    assert main(["eval", packed, "--checkpoint", str(other), "--data", str(trained["data"])]) != 0
    assert "give the checkpoint it was packed from" in capsys.readouterr().err


@needs_runtime
def test_bench_of_a_packed_file_against_its_checkpoint(trained, capsys):
    out = trained["tmp"] / "bench.json"
    argv = ["bench", str(trained["packed"]), "--checkpoint", str(trained["checkpoint"]), "--batch", "1", "3"]
    assert main([*argv, "--rounds", "1", "--json", str(out), "--profile"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"machine: {cpu_name()}, ") and "x fp32" in text and "ms per op kind" in text
    record = json.loads(out.read_text())
    default = rt.get_num_threads()
    rows = record["rows"]
    assert [(r["threads"], r["batch"]) for r in rows] == [(t, b) for t in dict.fromkeys([1, default]) for b in (1, 3)]
    assert rows[-1]["default_threads"] and record["machine"]["cpu"] == cpu_name()
    for r in rows:
        assert r["packed_ms"] > 0 and r["fp32_ms"] > 0
        assert r["speedup_vs_fp32"] == pytest.approx(r["fp32_ms"] / r["packed_ms"])
    with pytest.raises(SystemExit):
        main(["bench", str(trained["packed"]), "--models", "bhvit_test"])
    assert "options of the grid, not of a packed file" in capsys.readouterr().err


@needs_runtime
@pytest.mark.parametrize(("precision", "attn_quant"), [("binary", "lsq"), ("binary", "gsb"), ("some_fp", "lsq")])
def test_profile_of_a_packed_file_matches_the_models(tmp_path, precision, attn_quant):
    """BOPs, FLOPs and binary parameters counted from the program equal the float model's profile."""
    from support import randomized

    model = randomized(precision, attn_quant)
    path = bhvit.engine.save_packed(bhvit.engine.pack(model), tmp_path / "m.bhvp")
    got, want = profile_packed(path), profile_model(model)
    assert (got.bops, got.flops, got.binary_params) == (want.bops, want.flops, want.params_binary)
    assert got.input_shape == (3, 32, 32) and got.num_classes == 10
    tensors = load_file(str(path))
    assert got.binary_bytes == sum(t.nbytes for t in tensors.values() if t.dtype == np.uint64)
    assert got.float_values == sum(t.size for t in tensors.values() if t.dtype == np.float32)
    assert got.file_bytes == path.stat().st_size > got.binary_bytes + got.float_bytes
    kinds = got.by_kind()
    assert sum(k["count"] for k in kinds.values()) == len(got.layers) and kinds["linear"]["flops"] == 128 * 10


@needs_runtime
def test_profile_command_of_a_packed_file(trained, capsys):
    packed = str(trained["packed"])
    assert main(["profile", packed, "--json"]) == 0
    prof = _out_json(capsys)
    want = profile_model(load_model(trained["checkpoint"])[0])
    assert prof["bops"] == want.bops and prof["flops"] == want.flops and prof["ops"] == pytest.approx(want.ops)
    assert prof["labels"] and prof["preprocess"]["resize"] == 32
    assert main(["profile", packed, "--ops"]) == 0
    table = capsys.readouterr().out
    assert "binary params" in table and "window_attention" in table and "rule: OPs = BOPs/64 + FLOPs" in table
    assert len([ln for ln in table.splitlines() if re.match(r"\s+\d+\s+[a-z_]+\s", ln)]) == len(prof["layers"])
    assert main(["profile", str(trained["checkpoint"])]) == 0  # a checkpoint: the float model's profile
    assert f"{want.params_total:,}" in capsys.readouterr().out
    for argv, expected in (
        ([packed, "--precision", "fp"], "model options (--precision) build a variant by name"),
        (["missing.bhvp"], "missing.bhvp: no such file"),
        (["bhvit_test", "--ops"], "--ops lists the ops of a packed file"),
    ):
        try:
            assert main(["profile", *argv]) != 0
        except SystemExit as usage:  # argparse's usage errors
            assert usage.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err


def _packed_with_header_byte(src: Path, dst: Path, low: int) -> Path:
    """``src`` rewritten with padding metadata so that its header length's first byte is ``low`` (0x80 made
    the file look like a pickle to a check of the first byte)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="numpy") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(src))
    for pad in range(0, 4096):
        save_file(tensors, str(dst), metadata={**meta, "pad": "x" * pad})
        if dst.read_bytes()[0] == low:
            return dst
    raise AssertionError("no padding gives that header length")


@pytest.mark.parametrize("low", [0x80, ord("P")])
def test_commands_needing_float_weights_refuse_a_packed_file_in_one_line(trained, tmp_path, capsys, low):
    packed = str(_packed_with_header_byte(trained["packed"], tmp_path / "odd.bhvp", low))
    assert file_kind(packed) == "packed"
    data, out = str(trained["data"]), str(tmp_path / "out")
    train = ["train", "--data", data, "--arch", "bhvit_test", "--epochs", "1", "--out", out, "--no-progress"]
    image = str(next(trained["data"].rglob("*.png")))
    for argv in (
        ["export", packed, "--onnx", str(tmp_path / "m.onnx")],
        ["convert", packed, str(tmp_path / "m.safetensors")],
        ["pack", packed, "-o", str(tmp_path / "again.bhvp")],
        ["predict", image, "--checkpoint", packed],
        [*train, "--init-from", packed],
        [*train, "--teacher", packed, "--precision", "binary"],
        [*train, "--resume", packed],
    ):
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and REFUSED in err and "Traceback" not in err, (argv, err)
        assert "pickled" not in err and "unknown model" not in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "again.bhvp").exists()


class _Parsed(BaseException):
    """Raised by the patched parse_args, carrying the parser a command built (not an Exception: main's
    one-line handler must let it through)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def test_every_flag_of_every_command_has_help(monkeypatch):
    def capture(self: argparse.ArgumentParser, *_: object, **__: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(CommandParser, "parse_args", capture)
    missing = []
    for name in COMMANDS:
        with pytest.raises(_Parsed) as got:
            command(name)([])
        for action in got.value.parser._actions:
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"bhvit {name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
