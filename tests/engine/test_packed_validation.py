"""The version-1 packed reader (``fileformat.read_parts``, which ``load_packed`` uses to convert version-1
files) refuses non-conforming files with a PackedFormatError naming the problem (issue 10, items 1-2), the
tensor table of bhvit.engine.schema is exactly what the packer writes, the native bindings validate sizes
themselves, and the packed model checks its input like the float model."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load, save

import bhvit
from bhvit import engine
from bhvit.engine import kernels as K
from bhvit.engine import schema
from bhvit.engine.fileformat import PackedFormatError, read_parts, write_parts
from bhvit.engine.packer import extract
from bhvit.models.bhvit import ATTN_QUANTS, BINARY_PRECISIONS, NORMS


def _model(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return bhvit.create_model("bhvit_test", **kw).eval()


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version-1 file (the version-1 writer), with preprocess and labels."""
    parts = extract(_model())
    parts.meta = {"preprocess": {"mean": [0.5] * 3, "std": [0.2] * 3}, "labels": [f"c{i}" for i in range(10)]}
    return write_parts(parts, tmp_path_factory.mktemp("packed") / "m.bhvp")


def _rewrite(src: Path, dst: Path, edit_tensors=None, edit_meta=None) -> Path:  # noqa: ANN001
    """A copy of src with its tensors and/or metadata edited (a well-formed safetensors file)."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    tensors = load(data)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    dst.write_bytes(save(tensors, metadata=meta))
    return dst


def _refused(path: Path, *words: str) -> None:
    """The version-1 reader refuses the file with all of ``words`` in its message."""
    with pytest.raises(PackedFormatError) as err:
        read_parts(path)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_version_1_files_are_converted_on_load(packed_file: Path) -> None:
    """``load_packed`` reads a version-1 file through the version-1 reader and runs it in the runtime: the
    legacy forward's logits, the file's labels and preprocessing."""
    packed = engine.load_packed(packed_file)
    legacy = engine.LegacyPackedModel(read_parts(packed_file))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(packed(x), legacy(x), rtol=0, atol=1e-4)
    assert packed.meta["labels"] == [f"c{i}" for i in range(10)]
    assert packed.meta["preprocess"]["mean"] == pytest.approx([0.5] * 3)


def test_hostile_version_1_file_is_refused_by_load_packed(packed_file: Path, tmp_path: Path) -> None:
    def edit(meta: dict) -> None:
        layers = json.loads(meta["layers"])
        layers["stages.0.blocks.0.mixer.convs.0"]["stride"] = 2**62
        meta["layers"] = json.dumps(layers)

    with pytest.raises(PackedFormatError, match="stages.0.blocks.0.mixer.convs.0"):
        engine.load_packed(_rewrite(packed_file, tmp_path / "x.bhvp", edit_meta=edit))


# ---- the contract: the table derived from the config is what the packer extracts ---------------------
@pytest.mark.parametrize("precision,attn_quant,norm", list(itertools.product(BINARY_PRECISIONS, ATTN_QUANTS, NORMS)))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"shift3": False, "layerscale": False, "num_classes": 0},
        {"shift5": False, "aligned_pool": True, "recu": True, "depths": (1, 2, 2, 1)},
    ],
)
def test_layout_is_what_the_packer_writes(precision: str, attn_quant: str, norm: str, options: dict) -> None:
    parts = extract(_model(precision=precision, attn_quant=attn_quant, norm=norm, **options))
    expected = schema.layout(schema.check_config(parts.config))
    assert {k: tuple(v.shape) for k, v in parts.floats.items()} == expected.floats
    assert {k: layer.meta for k, layer in parts.binary.items()} == expected.binary


# ---- issue 10 item 1: hostile conv geometry in the layer records --------------------------------------
@pytest.mark.parametrize(
    "key,value",
    [
        ("stride", 2**62),
        ("padding", 2**62),
        ("dilation", 2**61),
        ("stride", 0),
        ("padding", -1),
        ("groups", 3),
        ("kernel", [3, 2**32]),
        ("in", 17),
        ("stride", True),
        ("dilation", 3.0),
        ("kind", "linear"),
    ],
)
def test_hostile_conv_record_is_refused(packed_file: Path, tmp_path: Path, key: str, value: object) -> None:
    name = "stages.0.blocks.0.mixer.convs.0"

    def edit(meta: dict) -> None:
        layers = json.loads(meta["layers"])
        layers[name][key] = value
        meta["layers"] = json.dumps(layers)

    _refused(_rewrite(packed_file, tmp_path / "x.bhvp", edit_meta=edit), name)


# ---- issue 10 item 2: incomplete or non-conforming files --------------------------------------------
@pytest.mark.parametrize(
    "missing",
    [
        "head.weight",
        "norm.running_mean",
        "stages.1.blocks.0.mlp.fc1.weight_bits",
        "stages.2.blocks.0.attn.attn_quant.alpha",
    ],
)
def test_missing_tensor_is_named(packed_file: Path, tmp_path: Path, missing: str) -> None:
    _refused(_rewrite(packed_file, tmp_path / "x.bhvp", edit_tensors=lambda t: t.pop(missing)), "missing", missing)


def test_extra_tensor_is_named(packed_file: Path, tmp_path: Path) -> None:
    def add(t: dict) -> None:
        t["stages.0.blocks.0.mixer.convs.0.weight"] = np.zeros((16, 4, 3, 3), np.float32)

    _refused(
        _rewrite(packed_file, tmp_path / "x.bhvp", edit_tensors=add),
        "unexpected",
        "stages.0.blocks.0.mixer.convs.0.weight",
    )


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.bool_, np.float16])
def test_float_tensors_must_be_f32(packed_file: Path, tmp_path: Path, dtype: type) -> None:
    def cast(t: dict) -> None:
        t["stem.proj.bias"] = t["stem.proj.bias"].astype(dtype)

    _refused(_rewrite(packed_file, tmp_path / "x.bhvp", edit_tensors=cast), "stem.proj.bias", "F32")


def test_wrong_shape_and_values_are_named(packed_file: Path, tmp_path: Path) -> None:
    def reshape(t: dict) -> None:
        t["head.weight"] = t["head.weight"][:5]

    _refused(_rewrite(packed_file, tmp_path / "a.bhvp", edit_tensors=reshape), "head.weight", "shape")

    def nan(t: dict) -> None:
        t["norm.weight"] = t["norm.weight"].copy()
        t["norm.weight"][0] = np.nan

    _refused(_rewrite(packed_file, tmp_path / "b.bhvp", edit_tensors=nan), "norm.weight", "non-finite")

    def padding(t: dict) -> None:  # fc2 of stage 1 has K = 32: bits 32..63 are padding
        bits = t["stages.0.blocks.0.mlp.fc2.weight_bits"].copy()
        bits[0, -1] |= np.uint64(1) << np.uint64(40)
        t["stages.0.blocks.0.mlp.fc2.weight_bits"] = bits

    _refused(_rewrite(packed_file, tmp_path / "c.bhvp", edit_tensors=padding), "padding")


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("depths", [0, 0, 0, 0], ["depths"]),
        ("depths", [1, 1, 1], ["depths"]),
        ("img_size", [100000, 100000], ["img_size"]),
        ("img_size", [48, 48], ["img_size", "multiple"]),
        ("img_size", "64", ["img_size"]),
        ("window_size", 2**40, ["window_size"]),
        ("widths", [16, 32, 64, -128], ["widths"]),
        ("num_heads", [3, 4], ["num_heads"]),
        ("precision", "fp", ["precision"]),
        ("norm_eps", -1.0, ["norm_eps"]),
        ("num_classes", -5, ["num_classes"]),
        ("in_chans", 2**63 - 1, ["in_chans"]),
        ("shift3", 1, ["shift3"]),
        ("surprise", 1, ["unknown"]),
    ],
)
def test_hostile_config_is_named(packed_file: Path, tmp_path: Path, key: str, value: object, words: list[str]) -> None:
    def edit(meta: dict) -> None:
        config = json.loads(meta["config"])
        config[key] = value
        meta["config"] = json.dumps(config)

    _refused(_rewrite(packed_file, tmp_path / "x.bhvp", edit_meta=edit), *words)


@pytest.mark.parametrize(
    "key,text,words",
    [
        ("config", "{", ["config", "JSON"]),
        ("layers", "[1,", ["layers", "JSON"]),
        ("config", "[]", ["config"]),
        ("format_version", "2", ["format_version"]),
        ("format_version", "x", ["format_version"]),
        ("preprocess", '{"std": [0, 1, 1]}', ["preprocess.std"]),
        ("preprocess", '{"resize": 100000}', ["resize"]),
        ("preprocess", '{"mean": [0.5, 0.5]}', ["preprocess.mean"]),
        ("labels", '["a", "b"]', ["labels"]),
        ("labels", "[1, 2]", ["labels"]),
    ],
)
def test_bad_metadata_is_named(packed_file: Path, tmp_path: Path, key: str, text: str, words: list[str]) -> None:
    _refused(_rewrite(packed_file, tmp_path / "x.bhvp", edit_meta=lambda m: m.update({key: text})), *words)


def test_container_errors_are_format_errors(packed_file: Path, tmp_path: Path) -> None:
    data = packed_file.read_bytes()
    for i, bad in enumerate(
        [
            b"",
            data[:5],
            struct.pack("<Q", 2**63) + data[8:],
            data[:-3],
            data[:100],
            struct.pack("<Q", 2) + b"{}" + data[10:],
        ]
    ):
        path = tmp_path / f"{i}.bhvp"
        path.write_bytes(bad)
        with pytest.raises(PackedFormatError):
            read_parts(path)
    with pytest.raises(FileNotFoundError):
        read_parts(tmp_path / "absent.bhvp")


def test_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    packed = engine.pack(_model())
    with pytest.raises(PackedFormatError, match="labels"):
        engine.save_packed(packed, tmp_path / "x.bhvp", labels=["only one"])
    assert not (tmp_path / "x.bhvp").exists()


# ---- the packed model's input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(1, 1, 32, 32),
        torch.zeros(1, 3, 64, 64),
        torch.zeros(3, 32, 32),
        torch.zeros(0, 3, 32, 32),
        torch.zeros(1, 3, 32, 32, dtype=torch.int64),
        np.zeros((1, 3, 32, 32), np.float32),
    ],
)
def test_wrong_input_is_a_clear_value_error(images: object) -> None:
    packed = engine.pack(_model())
    with pytest.raises(ValueError, match="expected"):
        packed(images)


def test_gsb_heads_follow_the_stage_not_the_width(tmp_path: Path) -> None:
    """Stages 3 and 4 of equal width but different heads: each stage uses its own heads."""
    model = _model(attn_quant="gsb", widths=(16, 32, 64, 64), num_heads=(2, 4))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(engine.pack(model)(x), model(x), rtol=0, atol=1e-4)


# ---- the native bindings, called directly ----------------------------------------------------------
def test_bindings_refuse_hostile_conv_geometry() -> None:
    """The arithmetic of issue 10 item 1: a huge stride, padding or dilation is refused by the binding."""
    xp = np.zeros((1, 4, 4, 1), np.uint64)
    wp, wpop = np.zeros((4, 1, 1, 8), np.uint64), np.zeros((16, 9), np.int32)
    for geo, word in [
        ((2**62, 1, 1), "stride"),
        ((1, 2**62, 1), "pad"),
        ((1, 1, 2**61), "dil"),
        ((1, 2**31 - 1, 1), "too large"),
        ((2**31 - 1, 0, 2**31 - 1), "empty"),
    ]:
        with pytest.raises(ValueError, match=word):
            K.bconv(xp, 16, wp, wpop, 16, groups=4, kernel=(3, 3), stride=geo[0], pad=geo[1], dil=geo[2])
    with pytest.raises(ValueError, match="kh is"):  # kh * kw = 2**64 would wrap to 0 taps
        K.bconv(xp, 16, wp, wpop, 16, groups=4, kernel=(2**32, 2**32))
    with pytest.raises(ValueError, match="taps"):
        K.bconv(xp, 16, wp, wpop, 16, groups=4, kernel=(5, 5))


def test_bindings_refuse_hostile_sizes() -> None:
    a, bp = np.zeros((3, 1), np.uint64), np.zeros((1, 1, 8), np.uint64)
    for n, k in [(-1, 64), (2**62, 64), (8, 0), (8, -5), (8, 2**40)]:
        with pytest.raises(ValueError, match="n is|k is|KW|dim"):
            K.bgemm(a, bp, n, k)
    with pytest.raises(ValueError, match="s is"):
        K.masked_av(np.zeros((1, 1, 1, 1), np.uint64), np.zeros((1, 1, 1, 8), np.uint64), np.zeros((1, 1)), -1, 8)
    with pytest.raises(ValueError, match="kernels"):
        K.shift_add(np.zeros((1, 2, 2, 4), np.float32), np.zeros((1, 2, 2, 4)), [7], np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="num_threads"):
        K.set_num_threads(2**40)
    # a zero-size array may carry a huge extent: the output is empty and nothing loops over it
    assert K.to_nibbles(np.zeros((2**31 - 1, 0, 8), np.uint64)).size == 0
    with pytest.raises(ValueError, match="at most"):
        K.to_nibbles(np.zeros((2**40, 0, 8), np.uint64))
    assert K.to_panels(np.zeros((2**30, 2**20, 0), np.uint64)).size == 0
