"""Version-1 packed files (written before the runtime) are no longer read: every loader, and the commands that
take a packed file or a checkpoint, refuse one with the same single line, which names the call that re-packs it
(issue 18; issue 19: the message used to advise the very call that raised it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import bhvit.engine
import bhvit.runtime as rt
from bhvit.cli import main
from bhvit.runtime import reference
from bhvit.runtime.errors import VERSION_1, PackedFormatError

pytestmark = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A file with version 1's metadata (the runtime refuses it on its version alone)."""
    path = tmp_path / "old.bhvp"
    meta = {"format": "bhvit-packed", "format_version": "1", "config": "{}", "layers": "{}"}
    save_file({"head.weight": np.zeros((2, 4), np.float32)}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "load", [rt.load, bhvit.engine.load_packed, reference.load], ids=["runtime", "engine", "oracle"]
)
def test_loaders_refuse_version_1(old: Path, load) -> None:  # noqa: ANN001
    with pytest.raises(PackedFormatError) as err:
        load(old)
    assert VERSION_1 in str(err.value) and str(old) in str(err.value) and "\n" not in str(err.value)
    assert "bhvit pack CHECKPOINT -o NEW.bhvp" in VERSION_1


@pytest.mark.parametrize("command", ["pack", "predict --packed"])
def test_commands_refuse_version_1(old: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    argv = {
        "pack": ["pack", str(old), "-o", str(tmp_path / "new.bhvp")],
        "predict --packed": ["predict", "--packed", str(old), str(tmp_path / "img.png")],
    }[command]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and VERSION_1 in err and "Traceback" not in err, err
    assert not (tmp_path / "new.bhvp").exists()


def test_a_version_2_file_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support import randomized

    path = bhvit.engine.save_packed(bhvit.engine.pack(randomized()), tmp_path / "m.bhvp")
    assert main(["pack", str(path), "-o", str(tmp_path / "again.bhvp")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a packed model file, not a checkpoint" in err, err
