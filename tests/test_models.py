"""Model construction, shapes, gradients and variant metadata, swept over the registry."""

from __future__ import annotations

import pytest
import torch

import bhvit
from bhvit.layers import TokenBatchNorm, convert_sync_batchnorm
from bhvit.models.bhvit import (
    ATTN_QUANTS,
    NORMS,
    PRECISIONS,
    GlobalTokens,
    choose_window_size,
    downsample_convs,
    to_img_size,
    upsample_nearest,
    window_merge,
    window_split,
)
from bhvit.quant import binary_weight_layers


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("attn_quant", ATTN_QUANTS)
def test_every_parameter_gets_a_gradient(precision, attn_quant):
    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision=precision, attn_quant=attn_quant).train()
    x = torch.randn(4, 3, 32, 32)
    model(x).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    # LayerScale α of the shift branches start at 0, yet receive a gradient
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("ls_h3.alpha"))


@pytest.mark.parametrize("name", bhvit.list_models())
@pytest.mark.parametrize("precision", PRECISIONS)
def test_registry_models_build_and_run(name, precision):
    small = {"img_size": 64, "window_size": 2} if name != "bhvit_test" else {}
    model = bhvit.create_model(name, precision=precision, num_classes=7, **small).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *model.config.img_size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "img_size, window",
    [((32, 32), 1), ((64, 64), 2), ((64, 64), 1), ((32, 64), 1), ((96, 96), 3), ((128, 128), 4)],
)
def test_input_sizes(img_size, window):
    model = bhvit.create_model("bhvit_test", img_size=img_size, window_size=window, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *img_size)).shape == (1, 10)


def test_tiny_at_224_shapes():
    model = bhvit.create_model("bhvit_tiny", precision="binary").eval()
    hidden: dict = {}
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(1, 3, 224, 224), hidden)
    assert tokens.shape == (1, 49, 512)
    assert hidden["embeddings"].shape == (1, 64, 56, 56)
    assert [hidden[f"stage{i}"].shape[1:] for i in (1, 2, 3)] == [(128, 28, 28), (256, 14, 14), (512, 7, 7)]


@pytest.mark.parametrize("img_size, window", [(100, 7), (224, 5), (48, 1)])
def test_invalid_sizes_name_sizes_that_work(img_size, window):
    with pytest.raises(ValueError, match=r"sizes that work: \[\d+"):
        bhvit.create_model("bhvit_tiny", img_size=img_size, window_size=window)


def test_wrong_input_image_size_is_a_clear_error():
    model = bhvit.create_model("bhvit_test").eval()
    with pytest.raises(ValueError, match=r"resize the input to 32×32"):
        model(torch.randn(1, 3, 48, 48))


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="available: bhvit_small"):
        bhvit.create_model("bhvit_huge")
    with pytest.raises(ValueError, match="unknown option"):
        bhvit.create_model("bhvit_tiny", colour="red")
    with pytest.raises(ValueError, match="precision must be one of"):
        bhvit.create_model("bhvit_tiny", precision="ternary")


@pytest.mark.parametrize("name", ["bhvit_tiny", "bhvit_small"])
def test_variant_metadata_param_counts(name):
    """Parameter counts recorded in the registry equal a fresh count of the built model."""
    entry = bhvit.model_entry(name)
    for precision, expected in entry.params_1000.items():
        attn = "gsb" if (name, precision) == ("bhvit_tiny", "binary") else "lsq"
        model = bhvit.create_model(name, precision=precision, attn_quant=attn)
        assert sum(p.numel() for p in model.parameters()) == expected


def test_config_roundtrip_rebuilds_identical_model():
    torch.manual_seed(1)
    model = bhvit.create_model("bhvit_test", precision="binary", attn_quant="gsb").eval()
    clone = bhvit.build_model(model.config.to_dict()).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), clone(x))


def test_layernorm_variant_and_options():
    model = bhvit.create_model("bhvit_test", norm="ln", shift3=False, shift5=False, layerscale=False)
    assert not any(isinstance(m, TokenBatchNorm) for m in model.modules())
    assert not any("ls_" in n for n, _ in model.named_parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_binary_layers_and_the_downsampling_convs_the_model_names():
    model = bhvit.create_model("bhvit_test", precision="binary")
    layers = dict(binary_weight_layers(model))
    downs = {id(m) for m in downsample_convs(model)}
    assert sorted(n for n, m in layers.items() if id(m) in downs) == [f"stages.{i}.downsample.conv" for i in (1, 2, 3)]
    some_model = bhvit.create_model("bhvit_test", precision="some_fp")
    some = dict(binary_weight_layers(some_model))
    assert len(downsample_convs(some_model)) == 3  # fp convolutions there, so not among the binary layers
    assert not {id(m) for m in downsample_convs(some_model)} & {id(m) for m in some.values()}
    assert len(some) == len(layers) - 3
    assert not list(binary_weight_layers(bhvit.create_model("bhvit_test", precision="fp")))
    assert not any(hasattr(m, "is_downsample") for m in layers.values())


def test_intended_initialisation_runs():
    model = bhvit.create_model("bhvit_tiny", precision="binary")
    w = model.stages[2].blocks[0].mlp.fc1.weight
    assert 0.019 < w.std().item() < 0.021  # trunc-normal σ = 0.02 (PyTorch's default would give ≈ 0.036)
    assert model.head.bias.abs().sum().item() == 0


def test_sync_batchnorm_is_inert_in_a_single_process():
    torch.manual_seed(2)
    model = bhvit.create_model("bhvit_test").train()
    x = torch.randn(3, 3, 32, 32)
    ref = model(x)
    convert_sync_batchnorm(model)
    assert all(m.sync for m in model.modules() if isinstance(m, TokenBatchNorm))
    torch.testing.assert_close(model(x), ref)


def test_window_split_merge_roundtrip_and_pool_alignment():
    x = torch.randn(2, 14, 21, 8)
    torch.testing.assert_close(window_merge(window_split(x, 7), 7, 2, 14, 21), x)
    pool = GlobalTokens(8, 7, aligned=False)
    assert pool(x).shape == (2, 6, 8)  # the quirky padding=3 grid still yields one token per window
    aligned = GlobalTokens(8, 7, aligned=True)
    with torch.no_grad():
        aligned.alpha.fill_(0.0)  # pure average pooling
    torch.testing.assert_close(aligned(x), window_split(x, 7).mean(1).reshape(2, 6, 8))


def test_nearest_upsampling_equals_interpolate():
    """The attention's upsampling of global tokens (the model's own function) equals
    F.interpolate(mode='nearest'), on square and non-square grids."""
    import torch.nn.functional as F

    for hp, wp, w in [(2, 2, 7), (4, 4, 7), (3, 3, 2), (1, 1, 5), (2, 3, 2)]:
        g = torch.randn(2, hp, wp, 4)
        ref = F.interpolate(g.permute(0, 3, 1, 2), scale_factor=w, mode="nearest").permute(0, 2, 3, 1)
        torch.testing.assert_close(upsample_nearest(g, w), ref)


@pytest.mark.parametrize(
    "value, expected",
    [
        (64, (64, 64)),
        ("64", (64, 64)),
        (" 96 ", (96, 96)),
        ([64, 32], (64, 32)),
        ((32, 64), (32, 64)),
        (64.0, (64, 64)),
        (["64", "32"], (64, 32)),
    ],
)
def test_img_size_forms_are_normalised(value, expected):
    assert to_img_size(value) == expected
    assert bhvit.BHViTConfig(img_size=value, window_size=1).img_size == expected


@pytest.mark.parametrize("value", ["6x4", "", [64], (64, 64, 3), 64.5, True, None, {"h": 64}, "-64"])
def test_bad_img_size_is_one_clear_error(value):
    with pytest.raises(ValueError, match=r"img_size must be an int, a numeric string or \(height, width\)"):
        bhvit.BHViTConfig(img_size=value, window_size=1)


def test_one_window_rule_for_config_and_training():
    from bhvit.train.config import choose_window_size as train_choice

    assert train_choice is choose_window_size
    assert [choose_window_size(s) for s in (32, 64, 96, 128, 224, 448, "224", (64, 96))] == [1, 2, 3, 4, 7, 7, 7, 1]
    for side in (32, 64, 96, 160, 224, 448):  # the chosen window always builds
        bhvit.BHViTConfig(img_size=side, window_size=choose_window_size(side))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        choose_window_size(100)


def test_config_validation_uses_the_model_choices():
    from bhvit.train.config import ModelSpec

    assert (PRECISIONS, ATTN_QUANTS, NORMS) == (("fp", "some_fp", "binary"), ("lsq", "gsb"), ("bn", "ln"))
    for field, good in (("precision", PRECISIONS), ("attn_quant", ATTN_QUANTS), ("norm", NORMS)):
        for value in good:
            ModelSpec(**{field: value})
            bhvit.BHViTConfig(**{field: value})
        with pytest.raises(ValueError, match=field):
            ModelSpec(**{field: "nope"})
        with pytest.raises(ValueError, match=field):
            bhvit.BHViTConfig(**{field: "nope"})


@pytest.mark.parametrize("precision", ["fp", "binary"])
def test_grad_checkpointing_gives_identical_outputs_gradients_and_buffers(precision):
    torch.manual_seed(3)
    ref = bhvit.create_model("bhvit_test", precision=precision, drop_path_rate=0.2).train()
    ckpt = bhvit.create_model("bhvit_test", precision=precision, drop_path_rate=0.2).train()
    ckpt.load_state_dict(ref.state_dict())
    ckpt.set_grad_checkpointing()
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for model in (ref, ckpt):
        torch.manual_seed(7)
        out = model(x)
        out.logsumexp(1).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    grads = dict(ckpt.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    buffers = dict(ckpt.named_buffers())
    for name, b in ref.named_buffers():
        torch.testing.assert_close(b, buffers[name], msg=name)  # running stats updated once only
