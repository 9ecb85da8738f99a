"""bhvit with the real timm (issue 20, item 5), installed as the README says so that the CPU torch stays:
``pip install --no-deps timm torchvision`` (+ pyyaml), here into a cached folder put on ``PYTHONPATH``.

The PyPI torchvision is a CUDA build whose operator library does not load beside the CPU torch; its import then
fails on ``operator torchvision::nms does not exist`` unless the schemas of ``torchvision::nms`` and
``torchvision::qnms`` are defined first (the README's lines, :data:`TORCHVISION_SCHEMAS`). Slow: the first run
downloads about 40 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMM, TORCHVISION = "1.0.31", "0.28.0"  # the timm release of issue 20; the torchvision of torch 2.13
TORCHVISION_SCHEMAS = """
import torch
_tv = torch.library.Library("torchvision", "FRAGMENT")
_tv.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_tv.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
"""


@pytest.fixture(scope="module")
def timm_path() -> Path:
    """A folder holding timm, torchvision and pyyaml (installed without dependencies: the CPU torch stays),
    kept between runs under the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bhvit" / "test-envs"
    target = cache / f"timm-{TIMM}-torchvision-{TORCHVISION}"
    if not (target / "timm" / "__init__.py").is_file():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        run = subprocess.run([*pip, f"timm=={TIMM}", f"torchvision=={TORCHVISION}", "pyyaml"], capture_output=True)
        if run.returncode != 0:
            pytest.skip(f"cannot install timm from the package index: {run.stderr.decode()[-300:]}")
    return target


def _python(timm_path: Path, code: str) -> str:
    """Run ``code`` in a fresh interpreter that has timm installed; its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(timm_path), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_import_bhvit_runtime_imports_neither_torch_nor_timm(timm_path):
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('timm') is not None\n"
        "import bhvit.runtime, bhvit\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))\n"
    )
    assert _python(timm_path, code).strip() == "[]"


@pytest.mark.parametrize("first", ["bhvit", "timm"])
def test_the_readme_lines_with_timm(timm_path, first):
    imports = "import bhvit\n" + TORCHVISION_SCHEMAS + "import timm\n"
    if first == "timm":
        imports = TORCHVISION_SCHEMAS + "import timm\nimport bhvit\n"
    code = imports + (
        "import torch\n"
        "assert timm.__version__ == " + repr(TIMM) + "\n"
        "model = timm.create_model('bhvit_tiny', precision='binary', num_classes=10)\n"
        "assert isinstance(model, bhvit.BHViT) and model.config.precision == 'binary'\n"
        "with torch.no_grad():\n"
        "    print(tuple(model.eval()(torch.randn(1, 3, 224, 224)).shape))\n"
        "print(timm.list_models('bhvit*'))\n"
        "cfg = timm.data.resolve_data_config({}, model=model)\n"
        "print(cfg['input_size'], cfg['interpolation'], cfg['crop_pct'])\n"
        "backbone = timm.create_model('bhvit_test', features_only=True, out_indices=(2, 3), cache_dir='/tmp/x')\n"
        "print(backbone.feature_info.channels())\n"
        "small = timm.create_model('bhvit_test', pretrained_cfg_overlay={'crop_pct': 1.0}, drop_path_rate=None)\n"
        "print(small.pretrained_cfg['crop_pct'], timm.models.get_pretrained_cfg('bhvit_test').input_size)\n"
        "try:\n"
        "    timm.create_model('bhvit_test', pretrained=True)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    )
    lines = _python(timm_path, code).splitlines()
    assert lines[0] == "(1, 10)"
    assert lines[1] == "['bhvit_small', 'bhvit_test', 'bhvit_tiny']"
    assert lines[2] == "(3, 224, 224) bicubic 0.875"
    assert lines[3] == "[64, 128]"
    assert lines[4] == "1.0 (3, 32, 32)"
    assert lines[5].startswith("refused: bhvit_test has no downloadable weights")


def test_timm_loads_a_shared_folder(timm_path, tmp_path):
    """A folder written by save_pretrained is a timm model source: ``local-dir:DIR`` with its weights."""
    hub = pytest.importorskip("bhvit.hub", reason="huggingface_hub is not installed (pip install 'bhvit[hub]')")
    sys.path.insert(0, str(ROOT / "tests"))
    from support import randomized

    hub.save_pretrained(randomized("binary"), tmp_path / "shared")
    code = TORCHVISION_SCHEMAS + (
        "import bhvit, timm, torch\n"
        f"folder = {str(tmp_path / 'shared')!r}\n"
        "want = bhvit.hub.from_pretrained(folder).model\n"
        "got = timm.create_model('local-dir:' + folder, pretrained=True)\n"
        "print(got.config == want.config, all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), "
        "want.state_dict().values())))\n"
        "print(timm.create_model('local-dir:' + folder, pretrained=True, num_classes=3).num_classes)\n"
    )
    assert _python(timm_path, code).split() == ["True", "True", "3"]
