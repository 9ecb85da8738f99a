"""The command line: profile numbers, predict with good and bad images, convert."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bhvit
import bhvit.runtime
from bhvit.checkpoint import load_model, save_model
from bhvit.cli import main
from bhvit.profile import OPS_RULE, profile_model


def test_profile_numbers_match_the_authors_param_counts(capsys):
    assert main(["profile", "bhvit_tiny", "--precision", "some_fp", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["params_total"] == 13_779_960
    assert prof["params_binary"] + prof["params_fp"] == prof["params_total"]
    assert prof["ops"] == pytest.approx(prof["bops"] / 64 + prof["flops"])
    assert main(["profile", "bhvit_tiny", "--precision", "binary", "--attn-quant", "gsb"]) == 0
    table = capsys.readouterr().out
    assert "13,783,040" in table and OPS_RULE in table
    assert main(["profile", "bhvit_small", "--precision", "fp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_total"] == 22_642_792


def test_profile_counts_by_hand_on_the_test_variant():
    """Recompute BOPs/FLOPs of bhvit_test from the architecture, layer by layer."""
    model = bhvit.create_model("bhvit_test", precision="binary", num_classes=10)
    cfg = model.config
    prof = profile_model(model, "bhvit_test")
    (h0, w0), *_ = cfg.stage_sizes
    flops = h0 * w0 * 3 * 16 * 4 * 4 + 128 * 10  # stem conv + head
    bops = 0
    for i, (dim, (h, w)) in enumerate(zip(cfg.widths, cfg.stage_sizes)):
        n = h * w
        if i:
            bops += n * dim * cfg.widths[i - 1] * 4  # 2x2 stride-2 binary conv
        mlp = 2 * n * dim * dim * cfg.mlp_ratios[i]
        if i < 2:
            bops += 3 * n * dim * (dim // 4) * 9 + mlp  # three grouped 3x3 convs
        else:
            win = cfg.window_size
            n_win = (h // win) * (w // win)
            tokens = win * win + n_win
            rows = n_win
            bops += 3 * rows * tokens * dim * dim + n * dim * dim + mlp  # q, k, v; output proj
            bops += 4 * rows * tokens * tokens * dim  # q·kᵀ plus three binary slices of Â·v
    assert prof.flops == flops
    assert prof.bops == bops
    fp_model = bhvit.create_model("bhvit_test", precision="fp")
    assert profile_model(fp_model).bops == 0


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    labels = [f"class_{i}" for i in range(10)]
    path = save_model(
        model,
        tmp_path / "m.safetensors",
        labels=labels,
        preprocess={"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36},
    )
    return path


def _images(tmp_path):
    rng = np.random.default_rng(0)
    png = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(png)
    jpg = tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(jpg)  # grayscale
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(png.read_bytes()[:60])
    text = tmp_path / "d.txt"
    text.write_text("not an image")
    return png, jpg, corrupt, text, tmp_path / "missing.png"


def test_predict_top5_and_bad_files_do_not_stop_the_rest(tmp_path, checkpoint, capsys):
    png, jpg, corrupt, text, missing = _images(tmp_path)
    code = main(
        [
            "predict",
            str(png),
            str(corrupt),
            str(jpg),
            str(text),
            str(missing),
            "--checkpoint",
            str(checkpoint),
            "--json",
        ]
    )
    assert code == 1  # some inputs failed
    results = json.loads(capsys.readouterr().out)
    good = [r for r in results if "top" in r]
    assert [r["path"] for r in good] == [str(png), str(jpg)]
    assert all(len(r["top"]) == 5 and r["top"][0]["label"].startswith("class_") for r in good)
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    assert "corrupt or truncated" in errors[str(corrupt)]
    assert "not an image file" in errors[str(text)]
    assert "no such file" in errors[str(missing)]
    # the printed form too
    assert main(["predict", str(png), "--checkpoint", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert out.count("%") == 5


def test_predict_matches_direct_model_call(tmp_path, checkpoint):
    from bhvit.predict import Preprocess, load_image, predict_images

    model, meta = load_model(checkpoint)
    png = _images(tmp_path)[0]
    prep = Preprocess.for_model(model.config.img_size, 3, meta["preprocess"])
    x = prep(load_image(png))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    with torch.no_grad():
        probs = model(torch.from_numpy(x[None])).softmax(-1)[0]

    def run(images: np.ndarray) -> np.ndarray:  # predict_images takes numpy callables
        with torch.no_grad():
            return model(torch.from_numpy(images)).numpy()

    top = predict_images(run, [png], prep, labels=meta["labels"])[0]["top"]
    assert top[0]["class"] == int(probs.argmax()) and top[0]["prob"] == pytest.approx(float(probs.max()))


def test_predict_with_a_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    png = _images(tmp_path)[0]
    assert main(["predict", str(png), "--checkpoint", str(tmp_path / "none.safetensors")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "profile" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


def test_version_is_the_headers(capsys):
    """`bhvit --version` (the installed command) and bhvit.__version__ give runtime/include/bhvit_runtime.h's
    BHVIT_VERSION_MAJOR.MINOR.PATCH, the one source of the version number (pyproject.toml reads it)."""
    header = (Path(__file__).resolve().parents[1] / "runtime" / "include" / "bhvit_runtime.h").read_text()
    parts = [re.search(rf"^#define BHVIT_VERSION_{p} (\d+)$", header, re.M) for p in ("MAJOR", "MINOR", "PATCH")]
    want = ".".join(m.group(1) for m in parts)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"bhvit {want}\n"
    assert bhvit.__version__ == want
    run = subprocess.run([Path(sys.executable).parent / "bhvit", "--version"], capture_output=True, text=True)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"bhvit {want}\n", "")


def test_predict_from_a_training_checkpoint(tmp_path, capsys):
    torch.manual_seed(1)
    model = bhvit.create_model("bhvit_test", precision="some_fp", in_chans=1).eval()
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "format": "bhvit-train-v1",
            "model_config": model.config.to_dict(),
            "model": model.state_dict(),
            "step": 3,
            "preprocess": {"mean": [0.286], "std": [0.353], "resize": 32},
        },
        path,
    )
    loaded, meta = load_model(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    png = _images(tmp_path)[0]
    assert main(["predict", str(png), "--checkpoint", str(path), "--topk", "3"]) == 0
    assert capsys.readouterr().out.count("%") == 3


def test_pack_then_predict_packed_agrees_with_the_float_model(tmp_path, checkpoint, capsys):
    if not bhvit.runtime.available():
        pytest.skip("the native runtime library is not built")
    out = tmp_path / "m.bhvp"
    assert main(["pack", str(checkpoint), "-o", str(out), "--check", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check_top1_identical"]
    png, jpg = _images(tmp_path)[:2]
    assert main(["predict", str(png), str(jpg), "--checkpoint", str(checkpoint), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main(["predict", str(png), str(jpg), "--packed", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for w, g in zip(want, got):  # labels and preprocessing travel in the packed file
        assert g["top"][0]["label"] == w["top"][0]["label"]
        assert g["top"][0]["prob"] == pytest.approx(w["top"][0]["prob"], abs=1e-4)


@pytest.mark.parametrize(
    ("precision", "attn_quant"), [("fp", "lsq"), ("some_fp", "lsq"), ("binary", "lsq"), ("binary", "gsb")]
)
def test_export_onnx_matches_pytorch(tmp_path, precision, attn_quant, capsys):
    """Exported with a batch of 2, checked by onnxruntime on a batch of 3 (the batch axis is dynamic)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    model = bhvit.create_model("bhvit_test", precision=precision, attn_quant=attn_quant).eval()
    ckpt = save_model(model, tmp_path / "m.safetensors")
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1_identical"] and report["max_abs_diff"] < 1e-4


def test_pack_stores_the_models_preprocessing(tmp_path, capsys):
    """Without preprocess metadata in the checkpoint, the packed file carries the model's pretrained_cfg
    (mean, std, crop ratio), and predict --checkpoint uses the same."""
    from safetensors import safe_open

    from bhvit.predict import Preprocess

    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision="binary", img_size=64, window_size=2).eval()
    ckpt = save_model(model, tmp_path / "m.safetensors")  # no preprocess metadata
    assert main(["pack", str(ckpt), "-o", str(tmp_path / "m.bhvp"), "--check", "0"]) == 0
    capsys.readouterr()
    with safe_open(str(tmp_path / "m.bhvp"), framework="np") as f:
        stored = json.loads(f.metadata()["preprocess"])
    cfg = model.pretrained_cfg
    assert stored == {"mean": list(cfg["mean"]), "std": list(cfg["std"]), "resize": int(64 / cfg["crop_pct"])}
    assert Preprocess.for_model((64, 64), 3, None, cfg).to_meta() == stored
    custom = {**cfg, "mean": (0.1, 0.2, 0.3), "crop_pct": 0.5}
    assert Preprocess.for_model((64, 64), 3, {"std": [0.5]}, custom).to_meta() == {
        "mean": [0.1, 0.2, 0.3],
        "std": [0.5],
        "resize": 128,
    }
