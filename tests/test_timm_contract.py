"""timm's model contract on every registered variant and precision, and registration with timm.

The sweep builds the large variants at 32 px (window 1) so that it stays fast; what is checked
(shapes, feature_info, the head, intermediates against the forward's own maps, the input metadata)
does not depend on the size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import bhvit
from bhvit.models.bhvit import PRECISIONS
from bhvit.models.features import feature_take_indices
from bhvit.models.variants import default_cfgs

SMALL = {"img_size": 32, "window_size": 1}
# the fields of timm's PretrainedCfg dataclass (timm/models/_pretrained.py): timm builds one from our dicts
TIMM_CFG_FIELDS = {
    "url",
    "file",
    "state_dict",
    "hf_hub_id",
    "hf_hub_filename",
    "source",
    "architecture",
    "tag",
    "custom_load",
    "input_size",
    "test_input_size",
    "min_input_size",
    "fixed_input_size",
    "interpolation",
    "crop_pct",
    "test_crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "label_offset",
    "label_names",
    "label_descriptions",
    "pool_size",
    "test_pool_size",
    "first_conv",
    "classifier",
    "license",
    "description",
    "origin_url",
    "paper_name",
    "paper_ids",
    "notes",
}


def _forward_with_maps(model: bhvit.BHViT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``model(x)``, and what that forward itself computed: the final tokens and each stage's
    output (NCHW), caught by hooks on the final norm and on each stage's last block."""
    maps: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    hooks = [
        stage.blocks[-1].register_forward_hook(lambda _m, _i, out: maps.append(out.permute(0, 3, 1, 2)))
        for stage in model.stages
    ]
    hooks.append(model.norm.register_forward_hook(lambda _m, _i, out: tokens.append(out)))
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, tokens[0], maps


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", bhvit.list_models())
def test_contract_sweep(name, precision):
    torch.manual_seed(0)
    model = bhvit.create_model(name, precision=precision, num_classes=7, **SMALL).eval()
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, *cfg.img_size)
    with torch.no_grad():
        logits, tokens, maps = _forward_with_maps(model, x)
        final, inter = model.forward_intermediates(x)
    pooled = model.forward_head(tokens, pre_logits=True)

    # shapes and the head
    assert logits.shape == (2, 7) and tokens.shape == (2, 1, cfg.widths[-1]) and pooled.shape == (2, cfg.widths[-1])
    torch.testing.assert_close(model.get_classifier()(pooled), logits, rtol=0, atol=0)
    assert model.num_features == cfg.widths[-1] and model.num_classes == 7

    # feature_info describes the maps; intermediates are the forward's own stage outputs
    assert [f["num_chs"] for f in model.feature_info] == list(cfg.widths)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["module"] for f in model.feature_info] == [f"stages.{i}" for i in range(4)]
    for info, got, ref in zip(model.feature_info, inter, maps):
        assert got.shape == (2, info["num_chs"], 32 // info["reduction"], 32 // info["reduction"])
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(final, tokens, rtol=0, atol=0)

    # input metadata
    pc = model.pretrained_cfg
    assert set(pc) <= TIMM_CFG_FIELDS
    assert pc["architecture"] == name and pc["input_size"] == (3, 32, 32) and pc["num_classes"] == 7
    assert len(pc["mean"]) == len(pc["std"]) == 3 and 0 < pc["crop_pct"] <= 1 and pc["interpolation"] == "bicubic"
    assert pc["pool_size"] == (1, 1) and pc["first_conv"] == "stem.proj" and pc["classifier"] == "head"

    # a new head: the config and the metadata follow, the features do not change
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.config.num_classes == 3
    assert model.pretrained_cfg["num_classes"] == 3
    assert model.forward_head(tokens).shape == (2, 3)
    model.reset_classifier(0)
    torch.testing.assert_close(model.forward_head(tokens), pooled, rtol=0, atol=0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


def test_variant_metadata_is_recomputed_from_the_config():
    for name in bhvit.list_models():
        entry = bhvit.model_entry(name)
        cfg = entry.config
        assert entry.pretrained_cfg == default_cfgs[name]
        assert entry.pretrained_cfg["input_size"] == (cfg.in_chans, *cfg.img_size)
        assert entry.pretrained_cfg["num_classes"] == cfg.num_classes
        assert entry.pretrained_cfg["pool_size"] == (cfg.img_size[0] // 32, cfg.img_size[1] // 32)
    assert default_cfgs["bhvit_tiny"]["input_size"] == (3, 224, 224)
    assert default_cfgs["bhvit_tiny"]["mean"] == (0.485, 0.456, 0.406)
    gray = bhvit.create_model("bhvit_test", in_chans=1, pretrained_cfg_overlay={"crop_pct": 1.0})
    assert gray.pretrained_cfg["mean"] == (0.5,) and gray.pretrained_cfg["input_size"] == (1, 32, 32)
    assert gray.pretrained_cfg["crop_pct"] == 1.0


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 3), (-1,), 2])
def test_features_only_backbone(out_indices):
    torch.manual_seed(0)
    full = bhvit.create_model("bhvit_test", precision="binary").eval()
    backbone = bhvit.create_model("bhvit_test", precision="binary", features_only=True, out_indices=out_indices).eval()
    missing, unexpected = backbone.model.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith(("norm.", "head.", "stages.")) for k in unexpected)
    take, _ = feature_take_indices(4, out_indices)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = backbone(x)
        _, _, maps = _forward_with_maps(full, x)
    assert backbone.feature_info.channels() == [full.config.widths[i] for i in take]
    assert backbone.feature_info.reduction() == [4 * 2**i for i in take]
    assert backbone.feature_info.module_name() == [f"stages.{i}" for i in take]
    assert len(feats) == len(take)
    for got, i in zip(feats, take):
        torch.testing.assert_close(got, maps[i], rtol=0, atol=0)
    assert len(backbone.model.stages) == max(take) + 1  # stages past the last one taken are gone
    assert not any(n.startswith(("model.head", "model.norm.")) for n, _ in backbone.named_parameters())


def test_forward_intermediates_options():
    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[0, -3], stop_early=True, intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=[1], output_fmt="NHWC", intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        tokens = model.forward_features(x)
    assert [t.shape[1] for t in every] == [16, 32, 64, 128]
    for got, ref in zip(last_two + early, every[2:] + every[:2]):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(nhwc[0], every[1].permute(0, 2, 3, 1), rtol=0, atol=0)
    torch.testing.assert_close(normed.flatten(2).transpose(1, 2), tokens, rtol=0, atol=0)  # the final norm, as a map
    for bad in (5, [4], [-5], [], 0, [1.5]):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_bad_options_are_clear_errors():
    model = bhvit.create_model("bhvit_test")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
            model.reset_classifier(bad)
    with pytest.raises(ValueError, match="global_pool must be 'avg' or None"):
        model.reset_classifier(5, global_pool="max")
    with pytest.raises(ValueError, match="no downloadable weights; load the authors' checkpoint"):
        bhvit.create_model("bhvit_test", pretrained=True)
    with pytest.raises(ValueError, match="unknown option"):
        bhvit.create_model("bhvit_test", features_onyl=True)
    with pytest.raises(ValueError, match="no pretrained weights tagged 'in1k'"):
        bhvit.create_model("bhvit_test", pretrained_cfg="in1k")


def _stand_in_timm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A small stand-in of timm's registry (``timm/models/_registry.py``, ``_factory.py``): entrypoints
    keyed by ``fn.__name__``, the per-variant cfg read from the entrypoint module's ``default_cfgs``,
    and ``create_model`` dropping None keywords and passing the pretrained-cfg keywords through."""
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    entrypoints: dict = {}
    cfgs: dict = {}

    def register_model(fn):
        entrypoints[fn.__name__] = fn
        module_cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
        if fn.__name__ in module_cfgs:
            assert set(module_cfgs[fn.__name__]) <= TIMM_CFG_FIELDS  # timm: PretrainedCfg(**cfg)
            cfgs[fn.__name__] = dict(module_cfgs[fn.__name__])
        return fn

    def create_model(
        model_name,
        pretrained=False,
        pretrained_cfg=None,
        pretrained_cfg_overlay=None,
        checkpoint_path=None,
        cache_dir=None,
        scriptable=None,
        exportable=None,
        no_jit=None,
        **kwargs,
    ):  # timm 1.0.31's signature; what it passes to the entrypoint, cache_dir included
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if model_name not in entrypoints:
            raise RuntimeError(f"Unknown model ({model_name})")
        return entrypoints[model_name](
            pretrained=pretrained,
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            cache_dir=cache_dir,
            **kwargs,
        )

    models.register_model = register_model
    models.is_model = entrypoints.__contains__
    models.get_pretrained_cfg = cfgs.get
    timm.models = models
    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.models", models)
    return timm


def test_registration_with_a_stand_in_of_timms_registry(monkeypatch):
    timm = _stand_in_timm(monkeypatch)
    assert bhvit.register_with_timm() == bhvit.list_models()
    assert bhvit.register_with_timm() == []  # idempotent
    model = timm.create_model("bhvit_tiny", precision="binary", num_classes=10, drop_path_rate=None)
    assert isinstance(model, bhvit.BHViT) and model.config.precision == "binary" and model.num_classes == 10
    assert model.config.depths == (2, 2, 6, 2) and model.pretrained_cfg["architecture"] == "bhvit_tiny"
    assert model.get_classifier().out_features == 10
    assert timm.models.get_pretrained_cfg("bhvit_tiny")["input_size"] == (3, 224, 224)
    backbone = timm.create_model("bhvit_test", features_only=True, out_indices=(2, 3)).eval()
    assert backbone.feature_info.channels() == [64, 128]
    assert [t.shape[1:] for t in backbone(torch.randn(1, 3, 32, 32))] == [(64, 2, 2), (128, 1, 1)]


def test_a_broken_timm_leaves_bhvit_working(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))  # not a package: timm.models fails
    assert bhvit.register_with_timm() == []
    monkeypatch.delitem(sys.modules, "timm")
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    code = "import bhvit\ntry:\n    import timm\nexcept RuntimeError:\n    pass\nprint(bhvit.list_models())"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "bhvit_tiny" in run.stdout


def test_registration_with_real_timm():
    timm = pytest.importorskip("timm")
    model = timm.create_model("bhvit_test", precision="binary", num_classes=10)
    assert isinstance(model, bhvit.BHViT) and model.num_classes == 10
    assert tuple(timm.models.get_pretrained_cfg("bhvit_test").input_size) == (3, 32, 32)
    assert "bhvit_tiny" in timm.list_models("bhvit*")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


STAND_IN_TIMM = {
    "timm/__init__.py": "import torch  # noqa: F401  (the real timm imports torch first)\n"
    "from timm.models import create_model, is_model, list_models  # noqa: F401\n",
    "timm/models/__init__.py": """import sys

_entrypoints = {}


def register_model(fn):
    _entrypoints[fn.__name__] = fn
    return fn


def is_model(name):
    return name in _entrypoints


def list_models(pattern="*"):
    import fnmatch

    return sorted(n for n in _entrypoints if fnmatch.fnmatch(n, pattern))


def create_model(model_name, pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                 checkpoint_path=None, cache_dir=None, scriptable=None, exportable=None, no_jit=None, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model_name not in _entrypoints:
        raise RuntimeError("Unknown model (%s)" % model_name)
    return _entrypoints[model_name](pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                                    pretrained_cfg_overlay=pretrained_cfg_overlay, cache_dir=cache_dir, **kwargs)
""",
}


def _run_with_stand_in_timm(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """``python -c code`` with an installed stand-in of timm (a package on PYTHONPATH that imports torch and
    has timm 1.0.31's registry calls) next to bhvit."""
    for name, text in STAND_IN_TIMM.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_with_timm_installed_import_bhvit_runtime_imports_neither_torch_nor_timm(tmp_path):
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('timm') is not None\n"
        "import bhvit, bhvit.runtime\n"
        "bhvit.runtime.available()\n"
        "assert bhvit.runtime.load is not None\n"
        "print(sorted(m for m in ('torch', 'timm', 'bhvit.models', 'bhvit.engine') if m in sys.modules))\n"
    )
    run = _run_with_stand_in_timm(tmp_path, code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("order", ["bhvit first", "timm first"])
def test_timm_create_model_works_whichever_is_imported_first(tmp_path, order):
    imports = "import bhvit\nimport timm\n" if order == "bhvit first" else "import timm\nimport bhvit\n"
    code = imports + (
        "m = timm.create_model('bhvit_test', precision='binary', num_classes=10, cache_dir='/nonexistent')\n"
        "assert isinstance(m, bhvit.BHViT) and m.num_classes == 10 and m.config.precision == 'binary'\n"
        "print(timm.list_models('bhvit*'))\n"
    )
    run = _run_with_stand_in_timm(tmp_path, code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(bhvit.list_models())


def test_bhvit_engine_and_runtime_are_attributes_of_the_package():
    code = (
        "import sys, bhvit\n"
        "rt = bhvit.runtime\n"
        "assert 'torch' not in sys.modules, 'bhvit.runtime imported torch'\n"
        "packed = bhvit.engine.pack(bhvit.create_model('bhvit_test', precision='binary').eval())\n"
        "print(type(packed).__name__, rt.__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["PackedModel", "bhvit.runtime"]
