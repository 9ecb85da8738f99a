"""Sharing models (issue 20, item 6): save_pretrained / from_pretrained through huggingface_hub's ModelHubMixin, on
local folders only (the Hub cannot be reached from the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bhvit
import bhvit.runtime as rt
from bhvit.cli import main
from bhvit.profile import profile_model, profile_packed

hub = pytest.importorskip("bhvit.hub", reason="huggingface_hub is not installed (pip install 'bhvit[hub]')")
ROOT = Path(__file__).resolve().parents[1]
needs_runtime = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")
LABELS = [f"class {i}" for i in range(10)]
PREP = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "resize": 36}
ACC = {"acc1": 87.25, "acc5": 99.5, "n": 10000, "dataset": "fashion_mnist", "eval_time_s": 1.0}


@needs_runtime
def test_a_shared_binary_model_round_trips_with_its_packed_file_and_card(tmp_path):
    from support import randomized

    model = randomized("binary")
    out = tmp_path / "shared"
    assert hub.save_pretrained(model, out, labels=LABELS, preprocess=PREP, accuracy=ACC) is None
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.bhvp", "model.safetensors"]

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "bhvit_test" and config["num_classes"] == 10 and config["label_names"] == LABELS
    assert config["model_args"] == model.config.to_dict()
    assert config["pretrained_cfg"]["mean"] == PREP["mean"] and config["pretrained_cfg"]["crop_pct"] == 32 / 36
    assert config["bhvit"] == {"preprocess": PREP, "accuracy": {k: ACC[k] for k in ("acc1", "acc5", "n", "dataset")}}

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: bhvit" in card and "pipeline_tag: image-classification" in card
    assert "Top-1 **87.25 %** (top-5 99.50 %) on fashion_mnist (10,000 images)" in card
    assert profile_model(model, "bhvit_test").table() in card
    packed_profile = profile_packed(out / "model.bhvp")
    packed_profile.path = "model.bhvp"
    assert packed_profile.table() in card and str(tmp_path) not in card

    shared = hub.from_pretrained(out)
    assert shared.labels == LABELS and shared.preprocess == PREP and shared.packed == str(out / "model.bhvp")
    assert shared.accuracy == config["bhvit"]["accuracy"]
    for (k, v), (k2, v2) in zip(model.state_dict().items(), shared.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not shared.model.training

    packed = rt.load(out / "model.bhvp")
    assert packed.labels == LABELS and packed.preprocess["resize"] == 36
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x).argmax(1).numpy()
    assert np.array_equal(packed.run(x.numpy()).argmax(1), want)


def test_an_fp_model_has_no_packed_file_and_a_resave_replaces_everything(tmp_path):
    out = tmp_path / "shared"
    hub.save_pretrained(bhvit.create_model("bhvit_test", precision="binary").eval(), out)
    assert (out / "model.bhvp").is_file()
    fp = bhvit.create_model("bhvit_test", precision="fp", num_classes=3).eval()
    hub.save_pretrained(fp, out)  # the same folder: the stale packed file and card go
    assert not (out / "model.bhvp").exists()
    card = (out / "README.md").read_text()
    assert "(fp, 32×32, 3 classes)" in card and "model.bhvp" not in card and "Not measured here" in card
    again = hub.from_pretrained(out).model
    assert again.config == fp.config and hub.from_pretrained(out).packed is None


def test_a_training_checkpoint_brings_its_names_preprocessing_and_accuracy(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", "synthetic", "--arch", "bhvit_test", "--precision", "binary", "--epochs", "1"]
    assert main([*argv, "--out", str(run), "--threads", "1", "--no-progress", "--no-plots"]) == 0
    summary = json.loads(capsys.readouterr().out)
    hub.save_pretrained(run / "checkpoint.pt", tmp_path / "shared")
    shared = hub.from_pretrained(tmp_path / "shared")
    assert shared.accuracy == {
        "acc1": summary["test_acc1"],
        "acc5": summary["test_acc5"],
        "n": summary["test_images"],
        "dataset": "synthetic",
    }
    assert shared.labels == [str(i) for i in range(10)] and shared.preprocess["resize"] == 32
    assert f"Top-1 **{summary['test_acc1']:.2f} %**" in (tmp_path / "shared" / "README.md").read_text()


def test_bad_inputs_are_one_clear_error(tmp_path):
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    with pytest.raises(ValueError, match="labels: expected 10 non-empty class names"):
        hub.save_pretrained(model, tmp_path / "a", labels=["x"])
    with pytest.raises(ValueError, match="expected bhvit eval's metrics, a dict with acc1"):
        hub.save_pretrained(model, tmp_path / "a", accuracy={"top1": 3})
    for missing in (tmp_path / "nothere", "./nothere", "a/b/c"):  # never sent to the Hub
        with pytest.raises(FileNotFoundError, match="no such folder"):
            hub.from_pretrained(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors; save_pretrained writes one"):
        hub.from_pretrained(tmp_path / "empty")


def test_without_huggingface_hub_one_line_says_how_to_get_it():
    code = (
        "import sys\n"
        "sys.modules['huggingface_hub'] = None  # as if not installed\n"
        "import bhvit\n"
        "assert not hasattr(bhvit, 'hub')\n"
        "try:\n"
        "    import bhvit.hub\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout == (
        "sharing models needs huggingface_hub: pip install 'bhvit[hub]' (or pip install huggingface_hub)\n"
    )


def test_pretrained_true_loads_a_shared_folder_as_timm_passes_it(tmp_path):
    """timm.create_model('local-dir:DIR', pretrained=True) calls the entrypoint with the folder in its
    pretrained_cfg and config.json's model_args as options (tests/test_timm_real.py does it with timm)."""
    from support import randomized

    model = randomized("binary")
    hub.save_pretrained(model, tmp_path / "shared")
    config = json.loads((tmp_path / "shared" / "config.json").read_text())
    source = {"source": "local-dir", "file": str(tmp_path / "shared")}
    args = {**config["model_args"], "pretrained_cfg": source, "cache_dir": None}
    loaded = bhvit.create_model(config["architecture"], pretrained=True, **args).eval()
    for (k, v), v2 in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, v2), k
    new_head = bhvit.create_model(config["architecture"], pretrained=True, **{**args, "num_classes": 3})
    assert new_head.num_classes == 3 and torch.equal(new_head.stem.proj.weight, model.stem.proj.weight)
    with pytest.raises(FileNotFoundError, match="model.safetensors: no such file"):
        bhvit.create_model("bhvit_test", pretrained=True, pretrained_cfg={**source, "file": "/nonexistent"})
    with pytest.raises(ValueError, match="does not fit bhvit_tiny"):
        bhvit.create_model("bhvit_tiny", pretrained=True, pretrained_cfg=source, img_size=32, window_size=1)
