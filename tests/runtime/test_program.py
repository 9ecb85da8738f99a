"""The version-2 program (bhvit/engine/program.py) against the float model, through the numpy reference
interpreter of the spec (bhvit/runtime/reference.py); version-1 conversion; packing refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bhvit
from bhvit.engine.fileformat import write_parts
from bhvit.engine.packer import extract
from bhvit.engine.program import build_program, write_program, write_program_file
from bhvit.engine.schema import PackedFormatError
from bhvit.runtime import reference

OP_KINDS = {
    "patch_conv",
    "affine",
    "sign_pack",
    "avg_pool",
    "bconv",
    "blinear",
    "shift_add",
    "window_attention",
    "mean_tokens",
    "linear",
}


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Initialises LSQ with one training-mode forward, then gives BatchNorm statistics, RPReLUs, shifts and
    mixes values away from their initial ones (a fresh model has many exact zeros and ones)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, model.config.in_chans, *model.config.img_size, generator=g))
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.2, generator=g)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=g)
            elif t.is_floating_point() and any(k in name for k in ("move", "prelu", "mix", "ls_", ".ls.", "pool.")):
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("attn_quant", ["lsq", "gsb"])
@pytest.mark.parametrize("precision", ["binary", "some_fp"])
def test_reference_matches_the_float_model(tmp_path, precision, attn_quant):
    model = trained_like(bhvit.create_model("bhvit_test", precision=precision, attn_quant=attn_quant, num_classes=7))
    path = write_program_file(model, tmp_path / "m.bhvp", labels=[f"c{i}" for i in range(7)])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = model(x).detach().numpy()
    got, trace = reference.run(path, x.numpy(), trace=True)
    assert rel_err(got, want) < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    program, tensors, meta = reference.load(path)
    kinds = {op["op"] for op in program["ops"]}
    assert kinds == OP_KINDS - ({"avg_pool"} if precision == "some_fp" else set())
    assert program["input"] == [3, 32, 32] and program["num_classes"] == 7 and len(trace) == len(program["ops"])
    assert json.loads(meta["labels"]) == [f"c{i}" for i in range(7)]
    assert {v.dtype for v in tensors.values()} <= {np.dtype(np.float32), np.dtype(np.uint64)}


def test_windows_with_padding_non_square_and_no_classifier(tmp_path):
    """Window 2 with pooling padding (stage maps 8x16 -> 2x4 windows), a rectangular image, no head."""
    model = trained_like(
        bhvit.create_model("bhvit_test", precision="binary", img_size=(64, 128), window_size=2, num_classes=0)
    )
    path = write_program_file(model, tmp_path / "m.bhvp")
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    want = model(x).detach().numpy()
    got = reference.run(path, x.numpy())
    assert got.shape == want.shape == (2, model.num_features)
    assert rel_err(got, want) < 1e-4


def test_the_packer_refuses_layernorm_models():
    model = bhvit.create_model("bhvit_test", precision="binary", norm="ln").eval()
    with pytest.raises(PackedFormatError, match="LayerNorm.*norm='bn'"):
        build_program(extract(model))


def test_preprocess_is_always_complete(tmp_path):
    model = bhvit.create_model("bhvit_test", precision="binary", in_chans=1).eval()
    program = build_program(extract(model), {"mean": 0.25})
    pre = json.loads(program.metadata["preprocess"])
    assert pre["mean"] == [0.25] and len(pre["std"]) == 1 and pre["resize"] == 36  # 32 / 0.875


def test_a_version1_file_gives_the_same_program(tmp_path):
    """Version-1 files hold the model's named parts, so converting one builds the very same program."""
    model = trained_like(bhvit.create_model("bhvit_test", precision="binary", attn_quant="gsb"))
    parts = extract(model)
    from bhvit.engine.fileformat import read_parts

    v1 = read_parts(write_parts(parts, tmp_path / "v1.bhvp"))
    a, b = build_program(parts), build_program(v1)
    assert a.program == b.program and a.tensors.keys() == b.tensors.keys()
    assert all(np.array_equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    path = write_program(b, tmp_path / "v2.bhvp")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert rel_err(reference.run(path, x), model(torch.from_numpy(x)).detach().numpy()) < 1e-4


def test_packed_files_are_no_larger_than_version1(tmp_path):
    model = bhvit.create_model("bhvit_tiny", precision="binary").eval()
    parts = extract(model)
    v1 = write_parts(parts, tmp_path / "v1.bhvp").stat().st_size
    v2 = write_program(build_program(parts), tmp_path / "v2.bhvp").stat().st_size
    assert v2 <= v1, (v1, v2)
