"""What a packed model consists of, derived from its config alone (docs/packed-format.md §2, §4-§5, §8).

:func:`check_config` validates a packed file's ``config`` field by field; :func:`layout` derives from it
the complete table of a valid file: every float tensor's name and shape, and every binary layer's record
(kind and geometry). The reader (:mod:`bhvit.engine.fileformat`), the writer and
:class:`bhvit.engine.packed_model.PackedModel` compare what they are given against this one table, so a
missing, extra, mistyped or misshapen tensor and a layer record that disagrees with the model's structure
are all refused the same way, with a :class:`PackedFormatError` naming the field or tensor and what was
expected. ``tests/engine/test_packed_validation.py`` proves the table equals what
:func:`bhvit.engine.packer.extract` produces for every precision, attention quantizer, norm and option.

The bounds below are far above any honest model (the released ones have 224 px images, widths up to
512, 6 blocks per stage, 8 heads) and keep a hostile file from asking the forward for unbounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bhvit.models.bhvit import ATTN_QUANTS, BINARY_PRECISIONS, NORMS
from bhvit.runtime.errors import PackedFormatError

BITS_SUFFIX = ".weight_bits"
ALPHA_SUFFIX = ".weight_alpha"

STEM_STRIDE = 4
TOTAL_STRIDE = 32  # stem 4 x three 2x downsamplings
MSGDC_DILATIONS = (1, 3, 5)  # the three grouped 3x3 convolutions of a stage 1-2 token mixer
MSGDC_GROUPS = 4
SHIFT_KERNELS = (3, 5)

MAX_SIDE = 4096  # image side (pixels)
MAX_RESIZE = 2 * MAX_SIDE  # preprocess.resize, the shorter side before the centre crop
MAX_WIDTH = 8192
MAX_DEPTH = 256  # blocks per stage
MAX_MLP_RATIO = 64
MAX_WINDOW = 64
MAX_IN_CHANS = 64
MAX_CLASSES = 1_000_000
MAX_ATTENTION = 1 << 27  # attention-matrix elements per image and stage, windows x heads x L x L
# (a 1120 px model with window 7 needs 9e6; 2^27 floats are 512 MiB)

# config key -> kind; "optional" keys only matter for training and may be absent
CONFIG_FIELDS = {
    "depths": "ints4",
    "widths": "ints4",
    "mlp_ratios": "ints4",
    "num_heads": "ints2",
    "precision": "str",
    "attn_quant": "str",
    "norm": "str",
    "shift3": "bool",
    "shift5": "bool",
    "layerscale": "bool",
    "aligned_pool": "bool",
    "num_classes": "int",
    "in_chans": "int",
    "img_size": "ints2",
    "window_size": "int",
    "norm_eps": "float",
}
OPTIONAL_CONFIG_FIELDS = {"drop_path_rate": "float", "recu": "bool"}
CHOICES = {"precision": BINARY_PRECISIONS, "attn_quant": ATTN_QUANTS, "norm": NORMS}


@dataclass(frozen=True)
class Layout:
    """The content of a valid packed model: ``floats`` name -> shape (F32 tensors, §5) and ``binary``
    layer name -> record (§4; its tensors are ``<name>.weight_bits`` and ``<name>.weight_alpha``)."""

    floats: dict[str, tuple[int, ...]]
    binary: dict[str, dict[str, Any]]

    def tensors(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Every tensor of the file: name -> (safetensors dtype, shape)."""
        table = {name: ("F32", shape) for name, shape in self.floats.items()}
        for name, record in self.binary.items():
            table[name + BITS_SUFFIX] = ("U64", (record["out"], -(-record_k(record) // 64)))
            table[name + ALPHA_SUFFIX] = ("F32", (record["out"],))
        return table


def record_k(record: Mapping[str, Any]) -> int:
    """K, the reduction length of a binary layer: ``in`` (linear) or ``kh·kw·in/groups`` (conv)."""
    if record["kind"] == "linear":
        return int(record["in"])
    return int(record["kernel"][0] * record["kernel"][1] * record["in"] // record["groups"])


# ---- the config ---------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(config: Mapping[str, Any], key: str, kind: str) -> None:
    v = config[key]
    ok = {
        "ints4": lambda: isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_int(x) for x in v),
        "ints2": lambda: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) for x in v),
        "str": lambda: isinstance(v, str),
        "bool": lambda: isinstance(v, bool),
        "int": lambda: _is_int(v),
        "float": lambda: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    }[kind]()
    if not ok:
        want = {
            "ints4": "a list of 4 integers",
            "ints2": "a list of 2 integers",
            "str": "a string",
            "bool": "true or false",
            "int": "an integer",
            "float": "a finite number",
        }[kind]
        raise PackedFormatError(f"config.{key} = {v!r}: expected {want}")
    if key in CHOICES and v not in CHOICES[key]:
        raise PackedFormatError(f"config.{key} = {v!r}: expected one of {list(CHOICES[key])}")


def _bounded(name: str, values: list[int] | int, low: int, high: int) -> None:
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if not low <= v <= high:
            raise PackedFormatError(f"config.{name} = {values!r}: each value must be in {low}..{high}")


def check_config(config: Any) -> dict[str, Any]:
    """Validates a packed file's ``config`` (types, ranges, consistency); returns it."""
    if not isinstance(config, dict):
        raise PackedFormatError(f"config: expected a JSON object, got {type(config).__name__}")
    missing = [k for k in CONFIG_FIELDS if k not in config]
    if missing:
        raise PackedFormatError(f"config lacks {missing}")
    unknown = sorted(set(config) - set(CONFIG_FIELDS) - set(OPTIONAL_CONFIG_FIELDS))
    if unknown:
        raise PackedFormatError(f"config has unknown keys {unknown}")
    for key, kind in {**CONFIG_FIELDS, **OPTIONAL_CONFIG_FIELDS}.items():
        if key in config:
            _field(config, key, kind)
    _bounded("depths", config["depths"], 1, MAX_DEPTH)
    _bounded("widths", config["widths"], 4, MAX_WIDTH)
    _bounded("mlp_ratios", config["mlp_ratios"], 1, MAX_MLP_RATIO)
    _bounded("num_heads", config["num_heads"], 1, MAX_WIDTH)
    _bounded("num_classes", config["num_classes"], 0, MAX_CLASSES)
    _bounded("in_chans", config["in_chans"], 1, MAX_IN_CHANS)
    _bounded("window_size", config["window_size"], 1, MAX_WINDOW)
    _bounded("img_size", config["img_size"], 1, MAX_SIDE)
    if not 0 < config["norm_eps"] <= 1:
        raise PackedFormatError(f"config.norm_eps = {config['norm_eps']!r}: expected a number in (0, 1]")
    _check_structure(config)
    return config


def _check_structure(config: Mapping[str, Any]) -> None:
    """The relations between fields that the model's structure needs (as ``BHViTConfig`` checks them)."""
    widths, heads, w = config["widths"], config["num_heads"], config["window_size"]
    if any(c % MSGDC_GROUPS for c in widths):
        raise PackedFormatError(f"config.widths = {widths}: each must be a multiple of {MSGDC_GROUPS}")
    if config["precision"] == "binary" and any(b % a for a, b in zip(widths, widths[1:])):
        raise PackedFormatError(f"config.widths = {widths}: binary downsampling needs each to divide the next")
    for c, h in zip(widths[2:], heads):
        if c % h:
            raise PackedFormatError(f"config.num_heads = {heads}: {h} heads do not divide width {c}")
    unit = TOTAL_STRIDE * w
    for side in config["img_size"]:
        if side % unit:
            raise PackedFormatError(
                f"config.img_size = {config['img_size']}: each side must be a multiple of 32 * window_size = {unit}"
            )
    for stage, h in ((2, heads[0]), (3, heads[1])):
        rows, cols = (side // (STEM_STRIDE * 2**stage) for side in config["img_size"])
        windows = (rows // w) * (cols // w)
        length = w * w + windows  # window tokens and the pooled global tokens
        if windows * h * length * length > MAX_ATTENTION:
            raise PackedFormatError(
                f"config.img_size = {config['img_size']} with window_size {w}: stage {stage + 1} attention would "
                f"need {windows * h * length * length} elements per image (at most {MAX_ATTENTION})"
            )


# ---- the tensor table ----------------------------------------------------------------------------------
def layout(config: Mapping[str, Any]) -> Layout:
    """The tensors and binary layers of a packed model with this (validated) config (SPEC §2; §4-§5)."""
    t = _Table({}, {})
    widths, h, w = config["widths"], *config["img_size"]
    t.norm("stem.norm", widths[0], config)
    t.floats.update(
        {
            "stem.proj.weight": (widths[0], config["in_chans"], STEM_STRIDE, STEM_STRIDE),
            "stem.proj.bias": (widths[0],),
            "stem.pos_embed": (1, widths[0], h // STEM_STRIDE, w // STEM_STRIDE),
        }
    )
    for i, depth in enumerate(config["depths"]):
        size = (h // (STEM_STRIDE * 2**i), w // (STEM_STRIDE * 2**i))
        if i:
            t.downsample(f"stages.{i}.downsample", widths[i - 1], widths[i], size, config)
        for j in range(depth):
            t.block(f"stages.{i}.blocks.{j}", i, widths[i], config)
    t.norm("norm", widths[3], config)
    if config["num_classes"] > 0:
        t.floats.update({"head.weight": (config["num_classes"], widths[3]), "head.bias": (config["num_classes"],)})
    return Layout(t.floats, t.binary)


def linear_record(cin: int, cout: int) -> dict[str, Any]:
    return {"kind": "linear", "in": cin, "out": cout, "bias": False}


def conv_record(
    cin: int, cout: int, kernel: int, stride: int, padding: int, dilation: int, groups: int, bias: bool
) -> dict[str, Any]:
    return {
        "kind": "conv",
        "in": cin,
        "out": cout,
        "kernel": [kernel, kernel],
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": bias,
    }


@dataclass
class _Table:
    """The tables under construction; one method per building block of the model, in its order."""

    floats: dict[str, tuple[int, ...]]
    binary: dict[str, dict[str, Any]]

    def vec(self, dim: int, *names: str) -> None:
        self.floats.update({n: (dim,) for n in names})

    def norm(self, pre: str, dim: int, config: Mapping[str, Any], kind: str | None = None) -> None:
        stats = ("running_mean", "running_var") if (kind or config["norm"]) == "bn" else ()
        self.vec(dim, *(f"{pre}.{p}" for p in ("weight", "bias", *stats)))

    def rprelu(self, pre: str, dim: int) -> None:
        self.vec(dim, f"{pre}.move1", f"{pre}.prelu.weight", f"{pre}.move2")

    def layerscale(self, pre: str, dim: int) -> None:
        self.vec(dim, f"{pre}.alpha", f"{pre}.move")

    def downsample(self, pre: str, cin: int, cout: int, size: tuple[int, int], config: Mapping[str, Any]) -> None:
        self.norm(f"{pre}.norm_in", cin, config)
        if config["precision"] == "binary":
            self.binary[f"{pre}.conv"] = conv_record(cin, cout, 2, 2, 0, 1, 1, False)
            self.vec(cin, f"{pre}.move")
            self.rprelu(f"{pre}.act", cout)
        else:
            self.floats[f"{pre}.conv.weight"] = (cout, cin, 2, 2)
        self.norm(f"{pre}.norm", cout, config)
        self.floats[f"{pre}.pos_embed"] = (1, size[0] * size[1], cout)

    def block(self, pre: str, stage: int, dim: int, config: Mapping[str, Any]) -> None:
        self.norm(f"{pre}.norm1", dim, config)
        self.norm(f"{pre}.norm2", dim, config)
        if stage < 2:
            self.mixer(f"{pre}.mixer", dim, config)
        else:
            self.attention(f"{pre}.attn", dim, config["num_heads"][stage - 2], config)
        self.mlp(f"{pre}.mlp", dim, dim * config["mlp_ratios"][stage], config)
        for k in SHIFT_KERNELS:
            if config[f"shift{k}"]:
                for axis in "hwc":
                    self.layerscale(f"{pre}.shift.ls_{axis}{k}", dim)

    def mlp(self, pre: str, dim: int, hidden: int, config: Mapping[str, Any]) -> None:
        self.vec(dim, f"{pre}.move1")
        self.binary[f"{pre}.fc1"] = linear_record(dim, hidden)
        self.norm(f"{pre}.norm1", hidden, config)
        self.rprelu(f"{pre}.act1", hidden)
        self.vec(hidden, f"{pre}.move2")
        self.binary[f"{pre}.fc2"] = linear_record(hidden, dim)
        self.norm(f"{pre}.norm2", dim, config)
        self.rprelu(f"{pre}.act2", dim)
        if config["layerscale"]:
            self.layerscale(f"{pre}.ls", dim)

    def mixer(self, pre: str, dim: int, config: Mapping[str, Any]) -> None:
        self.vec(dim, f"{pre}.move")
        for n, d in enumerate(MSGDC_DILATIONS):
            self.binary[f"{pre}.convs.{n}"] = conv_record(dim, dim, 3, 1, d, d, MSGDC_GROUPS, True)
            self.vec(dim, f"{pre}.convs.{n}.bias")
            self.rprelu(f"{pre}.acts.{n}", dim)
        self.norm(f"{pre}.norm", dim, config)

    def attention(self, pre: str, dim: int, heads: int, config: Mapping[str, Any]) -> None:
        self.vec(dim, f"{pre}.pool.alpha")
        self.norm(f"{pre}.token_norm", dim, config, kind="ln")  # always a LayerNorm
        for n in "qkv":
            self.vec(dim, f"{pre}.move_{n}", f"{pre}.move_{n}2")
            self.binary[f"{pre}.{n}"] = linear_record(dim, dim)
            self.norm(f"{pre}.norm_{n}", dim, config)
            self.rprelu(f"{pre}.act_{n}", dim)
        quant = f"{pre}.attn_quant"
        if config["attn_quant"] == "lsq":
            self.vec(heads, f"{quant}.alpha", f"{quant}.zero_point")
            self.floats[f"{quant}.init_state"] = (1,)
        else:
            self.floats.update({f"{quant}.{p}": (1,) for p in ("alpha", "alpha2", "alpha3")})  # scalars as (1,)
        self.norm(f"{pre}.norm_ctx", dim, config)
        self.rprelu(f"{pre}.act_ctx", dim)
        self.vec(dim, f"{pre}.mix", f"{pre}.move_o")
        self.binary[f"{pre}.proj"] = linear_record(dim, dim)
        self.norm(f"{pre}.norm_o", dim, config)
        self.rprelu(f"{pre}.act_o", dim)
        if config["layerscale"]:
            self.layerscale(f"{pre}.ls", dim)


# ---- comparisons ---------------------------------------------------------------------------------------
def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_tensors(found: Mapping[str, tuple[str, tuple[int, ...]]], expected: Layout) -> None:
    """``found`` (name -> (dtype, shape)) must be exactly ``expected.tensors()``."""
    want = expected.tensors()
    missing = [n for n in want if n not in found]
    if missing:
        raise PackedFormatError(f"missing tensors the model needs: {_listing(missing)}")
    extra = sorted(n for n in found if n not in want)
    if extra:
        raise PackedFormatError(f"unexpected tensors (not part of this config's model): {_listing(extra)}")
    for name, (dtype, shape) in want.items():
        got_dtype, got_shape = found[name]
        if got_dtype != dtype:
            raise PackedFormatError(f"tensor {name}: dtype {got_dtype}, expected {dtype} (never cast)")
        if tuple(got_shape) != shape:
            raise PackedFormatError(f"tensor {name}: shape {list(got_shape)}, expected {list(shape)}")


def check_layers(layers: Any, expected: Layout) -> None:
    """The ``layers`` records must be exactly the config's binary layers (names, kinds and geometry)."""
    if not isinstance(layers, dict):
        raise PackedFormatError(f"layers: expected a JSON object, got {type(layers).__name__}")
    missing = [n for n in expected.binary if n not in layers]
    if missing:
        raise PackedFormatError(f"layers lacks records of binary layers: {_listing(missing)}")
    extra = sorted(n for n in layers if n not in expected.binary)
    if extra:
        raise PackedFormatError(f"layers has records of unknown layers: {_listing(extra)}")
    for name, want in expected.binary.items():
        got = layers[name]
        if not isinstance(got, dict) or set(got) != set(want):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise PackedFormatError(f"layers[{name!r}]: keys {keys}, expected {sorted(want)}")
        for key, value in want.items():
            if (
                got[key] != value
                or type(got[key]) is not type(value)
                or (isinstance(value, list) and any(type(x) is not type(y) for x, y in zip(got[key], value)))
            ):
                raise PackedFormatError(f"layers[{name!r}].{key} = {got[key]!r}, expected {value!r}")


_DTYPE_NAMES = {
    np.dtype(t): name
    for t, name in (
        (np.float32, "F32"),
        (np.float64, "F64"),
        (np.float16, "F16"),
        (np.uint64, "U64"),
        (np.int64, "I64"),
        (np.int32, "I32"),
        (np.uint32, "U32"),
        (np.int16, "I16"),
        (np.uint16, "U16"),
        (np.int8, "I8"),
        (np.uint8, "U8"),
        (np.bool_, "BOOL"),
    )
}


def dtype_name(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype (``F32``, ``U64``, ...)."""
    name = _DTYPE_NAMES.get(dtype)
    return name if name is not None else str(dtype)


# ---- optional metadata ---------------------------------------------------------------------------------
def check_preprocess(pre: Any, in_chans: int) -> None:
    """``preprocess``: an object with optional ``mean``, ``std`` (a number, or a list of 1 or in_chans finite
    numbers; std > 0) and ``resize`` (an integer in 1..MAX_RESIZE), nothing else."""
    if not isinstance(pre, dict):
        raise PackedFormatError(f"preprocess: expected a JSON object, got {type(pre).__name__}")
    unknown = sorted(set(pre) - {"mean", "std", "resize"})
    if unknown:
        raise PackedFormatError(f"preprocess has unknown keys {unknown} (known: mean, std, resize)")
    for key in ("mean", "std"):
        if key not in pre:
            continue
        values = pre[key] if isinstance(pre[key], list) else [pre[key]]
        ok = len(values) in (1, in_chans) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not ok:
            raise PackedFormatError(
                f"preprocess.{key} = {pre[key]!r}: expected 1 or in_chans = {in_chans} finite numbers"
            )
        if key == "std" and min(values) <= 0:
            raise PackedFormatError(f"preprocess.std = {pre[key]!r}: every value must be > 0")
    if "resize" in pre and not (_is_int(pre["resize"]) and 1 <= pre["resize"] <= MAX_RESIZE):
        raise PackedFormatError(f"preprocess.resize = {pre['resize']!r}: expected an integer in 1..{MAX_RESIZE}")


def check_labels(labels: Any, num_classes: int) -> None:
    """``labels``: a list of num_classes strings."""
    if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
        raise PackedFormatError("labels: expected a JSON list of strings")
    if len(labels) != num_classes:
        raise PackedFormatError(f"labels: {len(labels)} names for num_classes = {num_classes}")
