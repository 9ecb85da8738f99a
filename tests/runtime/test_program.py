"""The version-2 program (bhvit/engine/program.py) against the float model, through the numpy reference
interpreter of the spec (bhvit/runtime/reference.py); packing refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bhvit
from bhvit.engine.packer import extract
from bhvit.engine.program import build_program, write_program_file
from bhvit.runtime import ops, reference
from bhvit.runtime.errors import PackedFormatError


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
    assert kinds == set(ops.OPS) - ({ops.AVG_POOL.name} if precision == "some_fp" else set())
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


# ---- the oracle's attention masks and shifts against the torch model's own functions -----------------------
def _attention(seed: int, shape: tuple[int, ...], scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).softmax(-1)


def test_oracle_lsq_levels_are_the_model_quantizers():
    """The LSQ levels ``clamp(round(3A/a + z), 0, 3)`` with the grad-scaled step and offset: the oracle's masks
    times their weight equal the float model's quantizer bit for bit, exact .5 ties included."""
    from bhvit.quant import lsq_attention

    attn = _attention(0, (2, 3, 53, 53))
    attn[0, 0, 0, :4] = torch.tensor([1 / 6, 0.5, 0.25, 0.0])  # 3A/a + z = .5, 1.5, .75, 0 at a = 1, z = 0
    alpha, zero = torch.tensor([1.0, 0.4, 0.13]), torch.tensor([0.0, 0.3, -0.2])
    want = lsq_attention(attn * 3, alpha, zero).detach().numpy()
    quant = {"kind": "lsq", "step": "a", "zero": "z", "grad_scale": True}
    got = reference.attn_masks(attn.numpy(), quant, {"a": alpha.numpy(), "z": zero.numpy()}, attn.numel())
    np.testing.assert_array_equal(got, want)


def test_oracle_gsb_masks_follow_the_model_quantizer():
    """GSB through the packer's weights (``α, α(α2−1), α(α3−α2)`` on masks ``[q > θ]``), against the float
    model's ``α(T0 + α2·T1 + α3·T2)``, also where T0 = −1 (q > 0.7·rowmax but round(q) = 0)."""
    model = trained_like(bhvit.create_model("bhvit_test", precision="binary", attn_quant="gsb"))
    quantizer = model.stages[2].blocks[0].attn.attn_quant
    with torch.no_grad():
        quantizer.alpha.fill_(0.01), quantizer.alpha2.fill_(1.3), quantizer.alpha3.fill_(2.1)
    program = build_program(extract(model))
    op = next(op for op in program.program["ops"] if op["op"] == ops.WINDOW_ATTENTION.name)
    attn = _attention(1, (2, 2, 50, 50)) * 0.006  # q = A/α < 0.6: round(q) = 0 where q > 0.7·rowmax
    want = quantizer(attn).detach().numpy()
    got = reference.attn_masks(attn.numpy(), op["quant"], program.tensors, attn.numel())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    q = attn.numpy() / 0.01
    assert ((q > 0.7 * q.max(-1, keepdims=True)) & (q < 0.5)).any()  # T0 = −1 occurs


def test_oracle_shift_add_is_the_models_shift_branches():
    """``shift_add`` (order h, w, c per kernel) against the model's ShiftBranches with random LayerScales."""
    from bhvit.models.bhvit import ShiftBranches

    torch.manual_seed(0)
    branches = ShiftBranches(8, shift3=True, shift5=True)
    with torch.no_grad():
        for p in branches.parameters():
            p.normal_()
    x, out = torch.randn(2, 5, 6, 8), torch.randn(2, 5, 6, 8)
    with torch.no_grad():
        want = branches.add_to(out.clone(), x).numpy()
    scales = np.stack(
        [
            np.stack([getattr(branches, f"ls_{a}{k}").alpha.detach(), getattr(branches, f"ls_{a}{k}").move.detach()])
            for k in (3, 5)
            for a in "hwc"
        ]
    ).astype(np.float32)
    regs = {"x": x.numpy(), "acc": out.numpy()}
    reference.shift_add({"in": "x", "out": "acc", "kernels": [3, 5], "scales": "s"}, regs, {"s": scales})
    np.testing.assert_allclose(regs["acc"], want, rtol=1e-6, atol=1e-6)
