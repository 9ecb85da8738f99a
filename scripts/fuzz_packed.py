"""Fuzzing of the packed model formats, the native engine's bindings and the native runtime's C API
(issues 10 and 11).

Four corpora, each run case by case in worker subprocesses so that a crash is caught and named:

* **format** (version 1): files written by the version-1 writer (``fileformat.write_parts``; ``bhvit_test``,
  32 px, binary and some_fp, LSQ and GSB, BatchNorm and LayerNorm) mutated by truncations, byte flips,
  hostile header and metadata fields (huge, negative or mistyped sizes, strides, paddings, dilations,
  groups, depths, image sizes), missing and extra tensors, wrong dtypes and shapes, non-finite values.
  Each case is read by the version-1 reader (``read_parts``) and run by ``LegacyPackedModel``: it must end
  in logits of shape (B, num_classes) when the mutation kept the file valid, or a ``PackedFormatError``.
* **native**: direct calls of every binding of ``bhvit.engine._C`` with small arrays and random or
  hostile sizes and geometry arguments; each call must return or raise ValueError.
* **program** (version 2, docs/packed-format.md): files written by ``write_program_file`` (binary and
  some_fp, LSQ and GSB, with and without labels, a model without classifier) mutated in the container
  (truncations, header lengths, bit flips, data_offsets out of range or overlapping, shapes that overflow,
  dtypes, invalid UTF-8, deep nesting), in the program (every op field of §5/§6 given hostile, mistyped or
  other-tensor values; ops removed, duplicated, moved, renamed; reads before writes; bits/float kind
  mismatches; input dims, num_classes, output, op count) and in the metadata. Each case goes through
  ``bhvit.runtime.load`` or ``load_bytes`` and runs on batch 1 and 2: it must give logits (B, num_classes)
  where the mutation may have kept the file valid (bit for bit the seed's logits where the file is
  equivalent to its seed), or be refused with PackedFormatError / ValueError.
* **C API**: ctypes calls of libbhvit_runtime with NULL pointers, NULL and short error buffers (bytes past
  errlen must stay untouched), bad batches, ISA names, label indices, metadata keys, profile sizes, thread
  counts; valid calls must give the reference logits.

The version-2 and C API workers run under an address-space limit (RLIMIT_AS, 2 GiB; none under ASan), so an
absurd allocation fails; a refusal that reports running out of memory is a finding too.

A worker prints ``START <id>`` before a case and ``END <id> <outcome> <detail>`` after it, flushing both,
so a worker killed by a signal or a timeout names the case it was running; the driver then starts a new
worker at the next case.

    python scripts/fuzz_packed.py --format-cases 2000 --native-cases 5000 --program-cases 2000 --capi-cases 1000

Under the sanitizer builds (scripts/build_sanitized.sh), the driver passes the environment through: see
tests/engine/test_sanitized.py and tests/runtime/test_sanitized_runtime.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORWARD_BATCH = 2
HOSTILE_INTS = [
    0,
    -1,
    -7,
    1,
    2,
    3,
    5,
    17,
    64,
    65,
    1000,
    4097,
    2**31 - 1,
    2**31,
    2**32 + 1,
    2**40,
    2**62,
    2**63 - 1,
    -(2**63),
]
OPTIONAL_CONFIG = ("drop_path_rate", "recu")
HOSTILE_VALUES = [*HOSTILE_INTS, 1.5, -0.0, float("inf"), "3", None, True, False, [], [3], {}, "x" * 50]
PREPROCESS = {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36}


@dataclass(frozen=True)
class Case:
    """One fuzz case: the file's bytes and whether a valid load is acceptable (``may_load``)."""

    name: str
    data: bytes
    may_load: bool


# ---- seeds -------------------------------------------------------------------------------------------
SEED_VARIANTS = [
    {"precision": "binary", "attn_quant": "lsq", "norm": "bn"},
    {"precision": "some_fp", "attn_quant": "gsb", "norm": "ln"},
    {"precision": "binary", "attn_quant": "gsb", "norm": "bn", "shift5": False, "layerscale": False},
    {"precision": "some_fp", "attn_quant": "lsq", "norm": "bn", "num_classes": 0},
]


def seed_model(index: int, variant: dict):  # noqa: ANN201 (a torch module; torch is imported lazily)
    """bhvit_test of ``variant`` with its 1-d parameters perturbed (seeded by ``index``), in eval mode."""
    import torch

    import bhvit

    torch.manual_seed(index)
    model = bhvit.create_model("bhvit_test", **variant).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def build_seeds(out: Path) -> list[Path]:
    """Small valid version-1 files, one per variant of SEED_VARIANTS (with preprocess and labels), written by
    the version-1 writer (``fileformat.write_parts``)."""
    from bhvit.engine.fileformat import write_parts
    from bhvit.engine.packer import extract

    paths = []
    for i, variant in enumerate(SEED_VARIANTS):
        model = seed_model(i, variant)
        classes = model.config.num_classes
        parts = extract(model)
        parts.meta = {"preprocess": PREPROCESS, "labels": [f"class {c}" for c in range(classes)] if classes else None}
        paths.append(write_parts(parts, out / f"seed{i}.bhvp"))
    return paths


# ---- the safetensors container, taken apart and put back together ------------------------------------
def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def rebuild(tensors: dict, metadata: dict) -> bytes:
    """A well-formed safetensors file from numpy arrays (any dtype and shape) and metadata."""
    import numpy as np

    header: dict = {"__metadata__": metadata}
    chunks, offset = [], 0
    codes = {
        np.float32: "F32",
        np.float64: "F64",
        np.float16: "F16",
        np.int32: "I32",
        np.int64: "I64",
        np.uint64: "U64",
        np.bool_: "BOOL",
        np.uint8: "U8",
    }
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.tobytes()
        header[name] = {
            "dtype": codes[arr.dtype.type],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    return join(header, b"".join(chunks))


def load_arrays(data: bytes) -> tuple[dict, dict]:
    from safetensors.numpy import load

    header, _ = split(data)
    return load(data), dict(header["__metadata__"])


# ---- mutations ---------------------------------------------------------------------------------------
def _meta_json(data: bytes, key: str, edit) -> bytes:  # noqa: ANN001
    header, body = split(data)
    value = json.loads(header["__metadata__"][key])
    header["__metadata__"][key] = json.dumps(edit(value))
    return join(header, body)


def _set(obj: dict, key: str, value: object) -> dict:
    obj[key] = value
    return obj


def mutate_layer(rng: random.Random, data: bytes) -> Case:
    """A hostile value in one field of one binary layer record."""
    header, _ = split(data)
    layers = json.loads(header["__metadata__"]["layers"])
    name = rng.choice(sorted(layers))
    key = rng.choice(["in", "out", "kernel", "stride", "padding", "dilation", "groups", "kind", "bias", "extra"])
    value = rng.choice(HOSTILE_VALUES + [[2**62, 2**62], [0, 3], [3, -3], "linear", "conv"])
    if layers[name].get(key) == value and type(layers[name].get(key)) is type(value):
        value = -12345

    def edit(records: dict) -> dict:
        records[name][key] = value
        return records

    return Case(f"layer {name}.{key}={value!r}", _meta_json(data, "layers", edit), False)


def mutate_config(rng: random.Random, data: bytes) -> Case:
    """A hostile value in one config field (sizes, depths, image sizes, windows, choices)."""
    from bhvit.models.bhvit import ATTN_QUANTS, NORMS, PRECISIONS

    header, _ = split(data)
    config = json.loads(header["__metadata__"]["config"])
    key = rng.choice(sorted(config) + ["unknown_key"])
    old = config.get(key)
    if isinstance(old, list):
        value = list(old)
        value[rng.randrange(len(value))] = rng.choice(HOSTILE_VALUES)
        value = rng.choice([value, [0] * len(old), [2**40] * len(old), old[:-1], "[1, 2]"])
    else:
        value = rng.choice([*HOSTILE_VALUES, *ATTN_QUANTS, *NORMS, *PRECISIONS])
    if value == old and type(value) is type(old):
        return Case(
            f"config {key} deleted",
            _meta_json(data, "config", lambda c: {k: v for k, v in c.items() if k != key}),
            key in OPTIONAL_CONFIG or key not in config,
        )
    # a plausible value may describe another valid model whose tensors the file happens to hold (GSB heads,
    # window size, pooling): then it must load and run
    return Case(
        f"config {key}={value!r}", _meta_json(data, "config", lambda c: _set(c, key, value)), _plausible(old, value)
    )


def _plausible(old: object, value: object) -> bool:
    """Whether a config value could be valid: same JSON type as the original, sizes in 1..4096."""
    if isinstance(old, list):
        return isinstance(value, list) and len(value) == len(old) and all(_plausible(o, v) for o, v in zip(old, value))
    if isinstance(old, (bool, str)):
        return type(value) is type(old)
    if isinstance(old, int):
        return type(value) is int and 0 <= value <= 4096
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mutate_metadata(rng: random.Random, data: bytes) -> Case:
    """Malformed JSON, wrong types, missing keys, versions, optional fields."""
    header, body = split(data)
    meta = header["__metadata__"]
    kind = rng.randrange(7)
    if kind == 0:
        key = rng.choice(["config", "layers", "preprocess", "labels"])
        meta[key] = rng.choice(["{", "[1,", "nul", "", '"x"', "1e999", "[" * 5000 + "]" * 5000, '{"a": NaN}'])
        name = f"metadata {key} malformed"
    elif kind == 1:
        key = rng.choice(["config", "layers", "format", "format_version"])
        del meta[key]
        name = f"metadata {key} missing"
    elif kind == 2:
        meta["format_version"] = rng.choice(["2", "0", "1.0", " 1", "x", "99999999999999999999"])
        name = f"format_version {meta['format_version']!r}"
    elif kind == 3:
        meta["preprocess"] = json.dumps(
            rng.choice(
                [
                    {"mean": [0.5] * 2},
                    {"std": [0.0] * 3},
                    {"std": [-1, 1, 1]},
                    {"resize": 100000},
                    {"resize": 0},
                    {"resize": 1.5},
                    {"mean": "0.5"},
                    {"mean": [None] * 3},
                    {"crop": 3},
                    [1, 2],
                    "x",
                    {"mean": [1e999] * 3},
                ]
            )
        )
        name = f"preprocess {meta['preprocess']}"
    elif kind == 4:
        meta["labels"] = json.dumps(rng.choice([["a"], [1] * 10, "abc", {"0": "a"}, [None] * 10, ["a"] * 11]))
        name = f"labels {meta['labels'][:40]}"
    elif kind == 5:
        header["__metadata__"] = rng.choice([None, [], "x", {"format": "bhvit-packed"}])
        name = f"__metadata__ {header['__metadata__']!r}"
    else:
        meta["config"] = json.dumps(rng.choice([[], "x", 3, None, {}]))
        name = f"config {meta['config']}"
    return Case(name, join(header, body), False)


def mutate_tensors(rng: random.Random, data: bytes) -> Case:
    """Missing or extra tensors, wrong dtypes, wrong shapes, non-finite values, padding bits, variances."""
    import numpy as np

    tensors, meta = load_arrays(data)
    name = rng.choice(sorted(tensors))
    kind = rng.randrange(7)
    if kind == 0:
        if rng.random() < 0.3:
            name = rng.choice([n for n in tensors if n.startswith(("head.", "norm.")) or "running" in n] or [name])
        del tensors[name]
        label = f"missing {name}"
    elif kind == 1:
        extra = rng.choice(
            [
                "extra.weight",
                name + ".copy",
                "stages.9.blocks.0.mlp.fc1.weight_bits",
                "stages.0.blocks.0.mixer.convs.0.weight",
            ]
        )
        tensors[extra] = np.zeros(rng.choice([(1,), (3, 2), (0,)]), np.float32)
        label = f"extra {extra}"
    elif kind == 2:
        dtype = rng.choice([np.float64, np.int32, np.int64, np.bool_, np.float16, np.uint8, np.uint64, np.float32])
        if tensors[name].dtype == dtype:
            dtype = np.float64
        with np.errstate(over="ignore", invalid="ignore"):  # float16 overflows are part of the case
            tensors[name] = tensors[name].astype(dtype)
        label = f"{name} as {np.dtype(dtype).name}"
    elif kind == 3:
        arr = tensors[name]
        shape = rng.choice(
            [
                (arr.size,),
                (1, *arr.shape),
                arr.shape[:-1] or (0,),
                (*arr.shape[:-1], arr.shape[-1] + 1) if arr.ndim else (2,),
                (0,),
            ]
        )
        if tuple(shape) == arr.shape:
            shape = (arr.size + 1,)
        tensors[name] = np.resize(arr, shape)
        label = f"{name} shape {shape}"
    elif kind == 4 and tensors[name].dtype == np.float32 and tensors[name].size:
        tensors[name] = tensors[name].copy()
        tensors[name].flat[rng.randrange(tensors[name].size)] = rng.choice([np.nan, np.inf, -np.inf])
        label = f"{name} non-finite"
    elif kind == 5:
        from bhvit.engine.schema import record_k

        layers = json.loads(meta["layers"])
        name = rng.choice(sorted(layers))
        arr = tensors[name + ".weight_bits"].copy()
        arr[rng.randrange(arr.shape[0]), -1] |= np.uint64(1) << np.uint64(63)
        tensors[name + ".weight_bits"] = arr
        # the top bit of the last word is a weight where K % 64 == 0, a padding bit otherwise
        return Case(f"{name}.weight_bits top bit set", rebuild(tensors, meta), record_k(layers[name]) % 64 == 0)
    else:
        var = [n for n in tensors if n.endswith("running_var")]
        if not var:
            return Case("no-op rebuild", rebuild(tensors, meta), True)
        name = rng.choice(var)
        tensors[name] = -np.abs(tensors[name]) - 1
        label = f"{name} negative"
    return Case(label, rebuild(tensors, meta), False)


def mutate_bytes(rng: random.Random, data: bytes) -> Case:
    """Truncations, flips of random bits anywhere, hostile header lengths."""
    kind = rng.randrange(5)
    (n,) = struct.unpack("<Q", data[:8])
    if kind == 0:
        cut = rng.choice([0, 1, 7, 8, 9, 8 + n // 2, 8 + n, 8 + n + 1, rng.randrange(len(data))])
        return Case(f"truncated at {cut}", data[:cut], False)
    if kind == 1:
        new = rng.choice([0, 1, n - 1, n + 1, len(data), 2**63, 2**64 - 1, 100_000_001])
        return Case(f"header length {new}", struct.pack("<Q", new) + data[8:], False)
    buf = bytearray(data)
    region = (8, 8 + n) if kind == 2 else (8 + n, len(data))
    flips = []
    for _ in range(rng.choice([1, 1, 2, 8])):
        pos = rng.randrange(*region)
        bit = rng.randrange(8)
        buf[pos] ^= 1 << bit
        flips.append((pos, bit))
    # a flip in the data may keep the file valid (a mantissa bit, a weight bit); in the header it may too
    return Case(f"bit flips {flips[:3]}", bytes(buf), True)


MUTATORS = [mutate_layer, mutate_config, mutate_metadata, mutate_tensors, mutate_bytes, mutate_bytes]


def format_cases(seeds: list[Path], count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    datas = [p.read_bytes() for p in seeds]
    cases = []
    for i in range(count):
        j = i % len(datas)
        case = rng.choice(MUTATORS)(rng, datas[j])
        cases.append(Case(f"#{i} seed{j} {case.name}", case.data, case.may_load))
    return cases


# ---- workers -----------------------------------------------------------------------------------------
def _emit(line: str) -> None:
    sys.stdout.write(line.replace("\n", " ")[:500] + "\n")
    sys.stdout.flush()


def format_worker(case_dir: Path, start: int) -> None:
    """Runs cases ``start..`` of case_dir (files NNNNN.bhvp), in order: the version-1 reader
    (``fileformat.read_parts``) and the version-1 forward (``LegacyPackedModel``)."""
    import torch

    from bhvit.engine import LegacyPackedModel
    from bhvit.engine.fileformat import PackedFormatError, read_parts

    files = sorted(case_dir.glob("*.bhvp"))[start:]
    for path in files:
        cid = path.stem
        _emit(f"START {cid}")
        try:
            model = LegacyPackedModel(read_parts(path))
            cfg = model.config
            x = torch.randn(FORWARD_BATCH, cfg["in_chans"], *cfg["img_size"])
            logits = model(x)
            classes = cfg["num_classes"] or cfg["widths"][-1]
            ok = tuple(logits.shape) == (FORWARD_BATCH, classes) and logits.dtype == torch.float32
            _emit(f"END {cid} {'LOADED' if ok else 'WRONG'} shape {tuple(logits.shape)} classes {classes}")
        except PackedFormatError as err:
            _emit(f"END {cid} REJECTED {err}")
        except Exception as err:  # noqa: BLE001 (any other type is a finding, reported by the driver)
            _emit(f"END {cid} ERROR {type(err).__name__}: {err}")


def native_call(rng: random.Random) -> tuple[str, object]:
    """A random call of one binding with small arrays and random or hostile integer arguments."""
    import numpy as np

    from bhvit.engine._native import native

    C = native()

    def size() -> int:
        return rng.choice(HOSTILE_INTS[:13] if rng.random() < 0.6 else HOSTILE_INTS)

    def small() -> int:
        return rng.choice([0, 1, 2, 3, 4, 5, 8, 9, 64, 65])

    gen = np.random.default_rng(rng.randrange(2**32))

    def tiny() -> int:
        return rng.choice([0, 1, 2, 3, 5, 8])

    def u64(*shape: int) -> np.ndarray:
        return gen.integers(0, 2**64, size=shape, dtype=np.uint64)

    def f32(*shape: int) -> np.ndarray:
        return gen.standard_normal(shape, dtype=np.float32)

    def opt(n: int) -> np.ndarray | None:
        return rng.choice([None, f32(n), f32(max(n - 1, 0)), f32(n + 1)])

    which = rng.randrange(14)
    if which >= 12:  # consistent arrays, hostile geometry: the calls reach the size arithmetic and the kernels
        return consistent_call(rng, C, gen, size, which == 12)
    if which == 0:
        g, m, kw, n = small(), small(), small(), size()
        np_ = rng.choice([max(n, 0) // 8 + 1, small()]) if n < 2**20 else small()
        args = (u64(g, m, kw), u64(g, np_, kw, 8), n, rng.random() < 0.5)
        return "popcount_gemm", lambda: C.popcount_gemm(*args)
    if which in (1, 2):
        m, n, k = small(), size(), size()
        kw = rng.choice([small(), (k + 63) // 64 if 0 < k < 2**16 else 1])
        np_ = rng.choice([(n + 7) // 8 if 0 <= n < 2**12 else 1, small()])
        a = u64(m, kw) if rng.random() < 0.7 else u64(small(), m, kw)
        bp = u64(np_, kw, 8) if rng.random() < 0.8 else u64(small(), np_, kw, 8)
        nn = max(min(n, 300), 0)
        kwargs = {
            "scale": opt(nn),
            "bias": opt(nn),
            "residual": rng.choice([None, f32(m, 1), f32(m, nn), f32(1), f32(2, m, nn)]),
        }
        if rng.random() < 0.3:
            kwargs.update(slope=f32(nn), b1=f32(nn), b2=opt(nn))
        if rng.random() < 0.3:
            kwargs["nibbles"] = np.zeros((rng.choice([1, 2, (nn + 31) // 32]), kw, 16, 32), np.uint8)
        if which == 1:
            if rng.random() < 0.3:
                kwargs.update(out=np.zeros((m, nn), np.float32), accumulate=rng.random() < 0.5)
            return "bgemm", lambda: C.bgemm(a, bp, n, k, **kwargs)
        kwargs["mean_r"] = rng.choice([0, 1, 2, 4, 8, 3, -1, 256, size()])
        return "bgemm_pack", lambda: C.bgemm_pack(a, bp, n, k, **kwargs)
    if which == 3:
        b, h, w = tiny(), tiny(), tiny()
        c = rng.choice([small(), size(), 4, 8])
        groups = rng.choice([1, 4, size()])
        cout = rng.choice([c, 4, 8, size()])
        kh, kwd = rng.choice([(3, 3), (2, 2), (1, 16), (17, 1), (0, 3), (2**32, 2**32), (size(), size())])
        cw = (c + 63) // 64 if 0 < c < 2**16 else small()
        taps = kh * kwd if 0 < kh * kwd <= 16 else 9
        cg = c // groups if groups > 0 and 0 < c < 2**16 else 1
        kwc = (taps * cg + 63) // 64
        npg = ((cout // groups if groups > 0 and 0 < cout < 2**16 else 1) + 7) // 8
        geo = [rng.choice([1, 2, size()]), rng.choice([0, 1, 3, size()]), rng.choice([1, 3, 5, size()])]
        args = (
            u64(b, h, w, cw),
            c,
            u64(max(min(groups, 8), 0), npg, kwc, 8),
            np.zeros((max(min(cout, 64), 0), taps), np.int32),
            cout,
            groups,
            kh,
            kwd,
            *geo,
        )
        return "bconv", lambda: C.bconv(*args, residual=rng.choice([None, f32(1, 4)]))
    if which == 4:
        g, r, s, d = tiny(), tiny(), size(), size()
        ss = max(min(s, 70), 0)
        args = (
            u64(g, r, ss, (ss + 63) // 64),
            u64(g, rng.choice([1, (max(min(d, 64), 0) + 7) // 8]), (ss + 63) // 64, 8),
            f32(g, r),
            s,
            d,
        )
        return "masked_av", lambda: C.masked_av(*args)
    if which == 5:
        g, ll = tiny(), small()
        args = (f32(g, ll, ll), f32(rng.choice([g, g + 1])), f32(g))
        return "lsq_masks", lambda: C.lsq_masks(*args)
    if which == 6:
        shape = (tiny(), tiny(), tiny(), rng.choice([0, 4, 8, 3]))
        ks = rng.choice([[3], [5], [3, 5], [1], [7], [0], [-3], [2**40], [3, 3, 3]])
        args = (np.zeros(shape, np.float32), f32(*shape), ks, f32(3 * len(ks), 2, shape[3]))
        return "shift_add", lambda: C.shift_add(*args)
    if which == 7:
        args = (f32(small(), rng.choice([0, 4, 6, 8])), size())
        return "group_mean", lambda: C.group_mean(*args)
    if which == 8:
        arr = u64(small(), small(), rng.choice([8, 7, 0]))
        return "to_nibbles", lambda: C.to_nibbles(arr)
    if which == 9:
        arr = u64(small(), small(), small())
        return "to_panels", lambda: C.to_panels(arr)
    if which == 10:
        x = f32(*[small() for _ in range(rng.choice([1, 2, 3]))])
        fn = rng.choice(
            [
                lambda: C.pack_rows(x, rng.choice([None, f32(x.shape[-1]), f32(3)])),
                lambda: C.pack_cols_panels(f32(small(), small(), small())),
                lambda: C.pack_nonzero((x > 0).astype(np.uint8)),
            ]
        )
        return "pack", fn
    value = size()
    return "config", rng.choice(
        [lambda: C.set_num_threads(value), lambda: C.set_buffer_cache_mb(value), lambda: C.nibbles_pay(value, value)]
    )


def consistent_call(rng: random.Random, C, gen, size, conv: bool) -> tuple[str, object]:  # noqa: ANN001
    """bconv or bgemm with arrays that agree with their sizes, and random or hostile geometry."""
    import numpy as np

    if conv:
        groups = rng.choice([1, 2, 4])
        c, cout = groups * rng.choice([1, 3, 16, 17]), groups * rng.choice([1, 4, 9])
        kh, kw = rng.choice([(1, 1), (2, 2), (3, 3), (1, 16), (4, 4), (5, 3)])
        b, h, w = rng.choice([0, 1, 2]), rng.choice([0, 1, 3, 7]), rng.choice([1, 2, 6])
        kwc = (kh * kw * (c // groups) + 63) // 64
        xp = gen.integers(0, 2**64, size=(b, h, w, (c + 63) // 64), dtype=np.uint64)
        wp = gen.integers(0, 2**64, size=(groups, (cout // groups + 7) // 8, kwc, 8), dtype=np.uint64)
        wpop = gen.integers(0, kh * kw, size=(cout, kh * kw), dtype=np.int32)
        geo = [
            rng.choice([1, 2, 3, 7, size()]),
            rng.choice([0, 1, 2, 5, 40, size()]),
            rng.choice([1, 2, 3, 5, 9, size()]),
        ]
        out = rng.choice([None, "right", "wrong"])
        kwargs: dict = {}
        if out is not None:
            oh = [
                (side + 2 * geo[1] - geo[2] * (k - 1) - 1) // geo[0] + 1 if geo[0] > 0 else 1
                for side, k in ((h, kh), (w, kw))
            ]
            rows = oh[0] * oh[1] if 0 < oh[0] * oh[1] < 10**6 else 1
            kwargs = {"out": np.zeros((b, rows + (out == "wrong"), cout), np.float32), "accumulate": True}
        return "bconv consistent", lambda: C.bconv(xp, c, wp, wpop, cout, groups, kh, kw, *geo, **kwargs)
    m, n, k = rng.choice([0, 1, 5, 70]), rng.choice([0, 1, 8, 65, 300]), rng.choice([1, 63, 64, 65, 200])
    g = rng.choice([None, 1, 3])
    kw = (k + 63) // 64
    a = gen.integers(0, 2**64, size=(m, kw) if g is None else (g, m, kw), dtype=np.uint64)
    bp = gen.integers(0, 2**64, size=((n + 7) // 8, kw, 8), dtype=np.uint64)
    nib = C.to_nibbles(bp) if rng.random() < 0.5 else None
    n_arg, k_arg = rng.choice([(n, k), (n, size()), (size(), k), (n + 1, k), (n, k + 64)])
    return "bgemm consistent", lambda: C.bgemm(
        a,
        bp,
        n_arg,
        k_arg,
        nibbles=nib if g is None else None,
        residual=rng.choice([None, gen.standard_normal((m, 1), np.float32)]),
    )


def native_worker(seed: int, start: int, count: int) -> None:
    """Runs native cases ``start..count`` (case i uses Random((seed, i)))."""
    from bhvit.engine._native import native

    threads, cache = native().get_num_threads(), native().buffer_cache_mb()
    for i in range(start, count):
        rng = random.Random(f"{seed}-{i}")
        name, call = native_call(rng)
        _emit(f"START {i:05d} {name}")
        try:
            call()
            _emit(f"END {i:05d} RETURNED {name}")
        except ValueError as err:
            _emit(f"END {i:05d} REJECTED {name}: {err}")
        except Exception as err:  # noqa: BLE001 (any other type is a finding)
            _emit(f"END {i:05d} ERROR {name}: {type(err).__name__}: {err}")
        finally:
            native().set_num_threads(threads)
            native().set_buffer_cache_mb(cache)


# ==== version 2 (issue 11): the program format, read by the native runtime ==================================
# A case's ``expect``: "reject" (PackedFormatError / ValueError at load), "either" (a clean refusal, or a load
# and two runs with logits of the right shape) or "same" (a file equivalent to its seed: it must load and give
# the seed's logits bit for bit). ``nonfinite_ok``: the mutation may change float values, so a loaded file may
# give non-finite logits (a flipped exponent bit makes 1e38 weights).
V2_SEED_VARIANTS = [
    ({"precision": "binary", "attn_quant": "lsq"}, True),
    ({"precision": "some_fp", "attn_quant": "gsb"}, True),
    ({"precision": "binary", "attn_quant": "gsb", "shift5": False, "layerscale": False}, False),
    ({"precision": "some_fp", "attn_quant": "lsq", "num_classes": 0}, False),
]
OPS = (
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
)
INT_KEYS = {
    "kernel",
    "stride",
    "padding",
    "dilation",
    "groups",
    "in_channels",
    "out_channels",
    "in_features",
    "out_features",
    "window",
    "heads",
    "pool_padding",
    "mean_r",
    "kernels",
}
BAD_NAMES = ["", "X", "1a", "a" * 33, "in put", "é", "_x", "x-y"]  # not [a-z][a-z0-9_]{0,31}
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
MAX_OPS = 100_000


@dataclass(frozen=True)
class ProgramCase:
    """One version-2 fuzz case: the file's bytes, what must happen, and the seed it came from."""

    name: str
    data: bytes
    expect: str  # "reject" | "either" | "same"
    nonfinite_ok: bool = False


def build_v2_seeds(out: Path) -> list[Path]:
    """Small valid version-2 files (``write_program_file``), one per variant of V2_SEED_VARIANTS."""
    from bhvit.engine.program import write_program_file

    paths = []
    for i, (variant, labelled) in enumerate(V2_SEED_VARIANTS):
        model = seed_model(i, variant)
        classes = model.config.num_classes
        labels = [f"class {c}" for c in range(classes)] if labelled and classes else None
        paths.append(write_program_file(model, out / f"v2seed{i}.bhvp", preprocess=PREPROCESS, labels=labels))
    return paths


# ---- the program's register flow (what a reader must check before running) ------------------------------
def _reads(op: dict) -> list:
    """Registers an op reads: ``in``, ``residual``, and ``out`` where it accumulates (shift_add always does)."""
    reads = [op.get("in")]
    if op.get("residual") is not None:
        reads.append(op["residual"])
    if op.get("accumulate") is True or op.get("op") == "shift_add":
        reads.append(op.get("out"))
    return reads


def _writes(op: dict) -> list[tuple[object, str]]:
    """(register, kind) an op defines: ``out``, or with blinear's ``pack`` its bits and means."""
    pack = op.get("pack")
    if isinstance(pack, dict):
        return [(pack.get("out"), "bits"), (pack.get("means"), "float")]
    return [(op.get("out"), "bits" if op.get("op") == "sign_pack" else "float")]


def _in_kind(op: dict) -> str:
    return "bits" if op.get("op") in ("bconv", "blinear") else "float"


def flow_broken(program: dict) -> str | None:
    """Why the program's register flow is invalid (a read of an undefined register, a kind mismatch of ``in``,
    an output that is also an input), or None when it may be valid (shapes are left to the runtime)."""
    kinds: dict = {"input": "float"}
    for i, op in enumerate(program["ops"]):
        for reg in _reads(op):
            if not isinstance(reg, str) or reg not in kinds:
                return f"op {i} reads {reg!r} before it is written"
        if kinds[op["in"]] != _in_kind(op):
            return f"op {i} reads {kinds[op['in']]} register {op['in']!r}"
        if (op.get("accumulate") is True or op.get("op") == "shift_add") and kinds[op.get("out")] != "float":
            return f"op {i} accumulates into a bits register"
        outs = [reg for reg, _ in _writes(op)]
        if op.get("op") != "affine" and set(outs) & {op.get("in"), op.get("residual")}:
            return f"op {i} writes one of its inputs"
        kinds.update({reg: kind for reg, kind in _writes(op) if isinstance(reg, str)})
    if kinds.get(program.get("output")) != "float":
        return "output is not a float register"
    return None


def _registers(ops: list, upto: int) -> dict[str, str]:
    """Registers defined by ops[:upto] (and ``input``), with their kinds."""
    kinds = {"input": "float"}
    for op in ops[:upto]:
        kinds.update({reg: kind for reg, kind in _writes(op) if isinstance(reg, str)})
    return kinds


# ---- taking a version-2 file apart -----------------------------------------------------------------------
def v2_parts(data: bytes) -> tuple[dict, bytes, dict]:
    """(safetensors header, data buffer, program) of a version-2 file."""
    header, body = split(data)
    return header, body, json.loads(header["__metadata__"]["program"])


def with_program(header: dict, body: bytes, program: object, *, raw: str | None = None) -> bytes:
    """The file with its program replaced (``raw``: the program's JSON text as given)."""
    header = {**header, "__metadata__": {**header["__metadata__"]}}
    header["__metadata__"]["program"] = raw if raw is not None else json.dumps(program)
    return join(header, body)


def _leaves(obj: object, path: tuple = ()) -> list[tuple[tuple, object]]:
    """(path, value) of every scalar or list-of-ints field of an op (``op`` itself excluded)."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() if k != "op" for leaf in _leaves(v, (*path, k))]
    if isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj):
        return [(path, obj)] + [((*path, i), v) for i, v in enumerate(obj)]
    return [(path, obj)]


def _get(obj: dict, path: tuple) -> object:
    for key in path:
        obj = obj[key]
    return obj


def _put(obj: dict, path: tuple, value: object, delete: bool = False) -> None:
    parent = _get(obj, path[:-1])
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def _optional(op: dict, path: tuple) -> bool:
    """Whether the field at ``path`` may be null or absent (docs/packed-format.md §5, §6: the ``?`` fields)."""
    key, top = path[-1], len(path) == 1
    if key in ("residual", "post", "accumulate", "pack", "add", "act"):
        return top
    if key == "bias":
        return path[0] not in ("post", "token_norm", "ctx")
    if key == "move":
        return (top and op["op"] == "sign_pack") or path[0] == "pack"
    if key == "scale":
        return top and op["op"] == "affine"
    if key == "rprelu":
        return top
    return False


def _tensor_sig(header: dict, name: object) -> tuple | None:
    entry = header.get(name) if isinstance(name, str) and name != "__metadata__" else None
    return (entry["dtype"], tuple(entry["shape"])) if isinstance(entry, dict) else None


def _hostile_int(rng: random.Random, old: object) -> tuple[object, str]:
    value = rng.choice([*HOSTILE_INTS, 1.5, "3", None, True, [], {}, 2**64, -(2**64) - 1])
    if value == old and type(value) is type(old):
        value = -12345
    plausible = type(value) is int and 0 <= value <= 64
    return value, "either" if plausible else "reject"


def _hostile_float(rng: random.Random, key: object) -> tuple[object, str]:
    value = rng.choice([0, 0.0, -1.0, -0.0, 1e-30, 1e30, 3, "1", None, True, float("inf"), float("nan"), []])
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if key == "thresholds" or isinstance(key, int):  # a GSB threshold: any finite number
        return value, "either" if number else "reject"
    return value, "either" if number and value > 0 else "reject"


def _hostile_register(rng: random.Random, op: dict, path: tuple, ops: list, index: int) -> tuple[object, str]:
    value = rng.choice([*BAD_NAMES, 5, None, [], "nowhere", *_registers(ops, index)])
    if value is None and _optional(op, path):
        return value, "either"
    return value, "either" if isinstance(value, str) and value not in BAD_NAMES else "reject"


def _hostile_tensor(rng: random.Random, op: dict, path: tuple, header: dict, old: object) -> tuple[object, str]:
    names = [k for k in header if k != "__metadata__"]
    value = rng.choice([rng.choice(names), rng.choice(names), "missing.tensor", "", None, 7, [old], {"x": old}])
    if value is None:
        return value, "either" if _optional(op, path) else "reject"
    same = _tensor_sig(header, value) is not None and _tensor_sig(header, value) == _tensor_sig(header, old)
    return value, "either" if same else "reject"


def _hostile_enum(rng: random.Random, key: str, old: object) -> tuple[object, str]:
    value = rng.choice(["none", "gelu", "relu", "", 5, None, "lsq", "gsb", "GELU"])
    if key == "act":
        return value, "either" if value in ("none", "gelu") or value is None else "reject"
    return value, "either" if value == old else "reject"  # quant.kind: the other kind's fields are missing


def _hostile_bool(rng: random.Random, op: dict, path: tuple, old: object) -> tuple[object, str]:
    value = rng.choice([True, False, 0, 1, "true", None, []])
    if value is None:
        return value, "either" if _optional(op, path) else "reject"
    return value, "either" if isinstance(value, bool) else "reject"


def _hostile_list(rng: random.Random, old: list) -> tuple[object, str]:
    """A hostile list for ``kernel [kh, kw]`` or ``kernels``: one of the same length with small ints may be valid."""
    value = rng.choice([[], [3], [3, 3, 3], [0, 0], [5, 3], [3, 5], [-1, 3], "x", 3, None, [2**63, 2**63], [[3], [3]]])
    plausible = (
        isinstance(value, list) and len(value) == len(old) and all(type(v) is int and 0 <= v <= 16 for v in value)
    )
    return value, "either" if plausible else "reject"


def _field_value(
    rng: random.Random, op: dict, path: tuple, old: object, header: dict, ops: list, index: int
) -> tuple[object, str]:
    """A hostile value for one op field and what the reader must do with it."""
    key = path[-1] if isinstance(path[-1], str) else path[-2]
    if isinstance(old, list):
        return _hostile_list(rng, old)
    if key in INT_KEYS:
        return _hostile_int(rng, old)
    if key in ("eps", "score_divisor", "thresholds"):
        return _hostile_float(rng, path[-1])
    if key in ("in", "out", "residual", "means") or path == ("pack", "out"):
        return _hostile_register(rng, op, path, ops, index)
    if key in ("act", "kind"):
        return _hostile_enum(rng, key, old)
    if key in ("accumulate", "grad_scale"):
        return _hostile_bool(rng, op, path, old)
    return _hostile_tensor(rng, op, path, header, old)


def mutate_v2_field(rng: random.Random, data: bytes) -> ProgramCase:
    """A hostile value in (or the removal of) one field of one op, §5/§6."""
    header, body, program = v2_parts(data)
    index = rng.randrange(len(program["ops"]))
    op = program["ops"][index]
    path, old = rng.choice(_leaves(op))
    if rng.random() < 0.15 and isinstance(path[-1], str):
        _put(op, path, None, delete=True)
        expect = "either" if _optional(op, path) else "reject"
        name = f"op {index} ({op['op']}) {'.'.join(map(str, path))} removed"
    else:
        value, expect = _field_value(rng, op, path, old, header, program["ops"], index)
        _put(op, path, value)
        name = f"op {index} ({op['op']}) {'.'.join(map(str, path))}={value!r}"[:200]
    if expect == "either" and flow_broken(program):
        expect = "reject"
    return ProgramCase(name, with_program(header, body, program, raw=json.dumps(program)), expect)


def mutate_v2_ops(rng: random.Random, data: bytes) -> ProgramCase:
    """An op removed, duplicated, moved or renamed; a read before the write; a bits/float kind mismatch."""
    header, body, program = v2_parts(data)
    ops = program["ops"]
    i, j = rng.randrange(len(ops)), rng.randrange(len(ops))
    kind = rng.randrange(6)
    if kind == 0:
        name = f"op {i} ({ops.pop(i)['op']}) removed"
    elif kind == 1:
        ops.insert(i, json.loads(json.dumps(ops[i])))
        name = f"op {i} ({ops[i]['op']}) duplicated"
    elif kind == 2:
        ops.insert(j, ops.pop(i))
        name = f"op {i} moved to {j}"
    elif kind == 3:
        new = rng.choice([*OPS, "relu", "", 3, None, "AFFINE"])
        name, ops[i]["op"] = f"op {i} ({ops[i]['op']}) renamed {new!r}", new
        expect = "reject" if new not in OPS or flow_broken(program) else "either"
        return ProgramCase(name, with_program(header, body, program), expect)
    elif kind == 4:
        return _read_before_write(header, body, program, rng)
    else:
        return _kind_mismatch(header, body, program, rng)
    return ProgramCase(name, with_program(header, body, program), "reject" if flow_broken(program) else "either")


def _read_before_write(header: dict, body: bytes, program: dict, rng: random.Random) -> ProgramCase:
    """An op's ``in`` set to a register that only a later op defines."""
    ops = program["ops"]
    for i in rng.sample(range(len(ops)), len(ops)):
        later = {reg for op in ops[i:] for reg, _ in _writes(op)} - set(_registers(ops, i))
        if later:
            ops[i]["in"] = rng.choice(sorted(later))
            return ProgramCase(
                f"op {i} reads {ops[i]['in']!r} before it is written", with_program(header, body, program), "reject"
            )
    return ProgramCase("no-op rebuild", with_program(header, body, program), "same")


def _kind_mismatch(header: dict, body: bytes, program: dict, rng: random.Random) -> ProgramCase:
    """An op's ``in`` set to a defined register of the other kind (bits where floats are read, or back)."""
    ops = program["ops"]
    for i in rng.sample(range(len(ops)), len(ops)):
        wrong = [r for r, k in _registers(ops, i).items() if k != _in_kind(ops[i]) and r != "input"]
        if wrong:
            ops[i]["in"] = rng.choice(sorted(wrong))
            return ProgramCase(
                f"op {i} ({ops[i]['op']}) reads the wrong kind {ops[i]['in']!r}",
                with_program(header, body, program),
                "reject",
            )
    return ProgramCase("no-op rebuild", with_program(header, body, program), "same")


def mutate_v2_program(rng: random.Random, data: bytes) -> ProgramCase:
    """Hostile top-level program fields: input dims, num_classes, output, ops, nesting, op count."""
    header, body, program = v2_parts(data)
    kind = rng.randrange(8)
    if kind == 0:
        dims = list(program["input"])
        dims[rng.randrange(3)] = rng.choice([0, -1, 65, 8193, 2**31, 2**40, 2**63, 1.5, "3", None])
        new = rng.choice([dims, dims, dims[:2], [*dims, 1], [], "x", [2**30, 2**30, 2**30]])
        return ProgramCase(f"input {new!r}", with_program(header, body, {**program, "input": new}), "reject")
    if kind == 1:
        new = rng.choice([0, -1, 1, program["num_classes"] + 1, 2**31, 2**63, "10", None, 10.5])
        return ProgramCase(
            f"num_classes {new!r}", with_program(header, body, {**program, "num_classes": new}), "reject"
        )
    if kind == 2:
        new = rng.choice([*BAD_NAMES, "nowhere", "input", None, 3, *_registers(program["ops"], len(program["ops"]))])
        expect = "reject" if flow_broken({**program, "output": new}) or new == "input" else "either"
        return ProgramCase(f"output {new!r}", with_program(header, body, {**program, "output": new}), expect)
    if kind == 3:
        new = rng.choice([[], {}, None, "x", [None], [[]], [{"op": "affine"}]])
        return ProgramCase(f"ops {new!r}", with_program(header, body, {**program, "ops": new}), "reject")
    if kind == 4:
        step = {"op": "affine", "in": program["output"], "out": program["output"], "act": "none"}
        many = {**program, "ops": program["ops"] + [step] * (MAX_OPS + 1 - len(program["ops"]))}
        return ProgramCase(f"{MAX_OPS + 1} ops", with_program(header, body, many), "reject")
    if kind == 5:
        depth = rng.choice([30, 65, 100_000, 1_000_000])
        raw = json.dumps(program)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        return ProgramCase(
            f"program nested {depth} deep",
            with_program(header, body, None, raw=raw),
            "either" if depth < 60 else "reject",
        )
    if kind == 6:
        text = json.dumps(program)
        raw = rng.choice(
            [
                "",
                "{",
                "[]",
                "null",
                "3",
                '"x"',
                text[:-3],
                text + "x",
                text.replace(":", ": 0", 1),
                text.replace('"eps": ', '"eps": NaN, "e": ', 1),
                text.replace('"eps": ', '"eps": 1e999, "e": ', 1),
            ]
        )
        return ProgramCase(f"program text {raw[:40]!r}", with_program(header, body, None, raw=raw), "reject")
    key = rng.choice(["input", "output", "num_classes", "ops"])
    return ProgramCase(
        f"program {key} missing", with_program(header, body, {k: v for k, v in program.items() if k != key}), "reject"
    )


def _op_of_tensor(program: dict, name: str) -> dict | None:
    for op in program["ops"]:
        if any(value == name for _, value in _leaves(op)):
            return op
    return None


def _bits_k(program: dict, name: str, rows: int) -> int:
    """K of the binary weight ``name`` (its number of valid bits per row)."""
    op = _op_of_tensor(program, name) or {}
    if op.get("op") == "bconv":
        kh, kw = op["kernel"]
        return kh * kw * op["in_channels"] // op["groups"]
    return op["in_features"] if op.get("op") == "blinear" else rows  # attention q/k/v: [C, ceil(C/64)]


def mutate_v2_tensors(rng: random.Random, data: bytes) -> ProgramCase:
    """Wrong dtypes and shapes, non-finite values, padding bits, missing, extra and swapped tensors."""
    import numpy as np

    tensors, meta = load_arrays(data)
    program = json.loads(meta["program"])
    name = rng.choice(sorted(tensors))
    arr, kind = tensors[name], rng.randrange(7)
    if kind == 0:
        dtype = rng.choice(
            [
                np.float64,
                np.float16,
                np.int32,
                np.int64,
                np.uint8,
                np.bool_,
                np.uint64 if arr.dtype == np.float32 else np.float32,
            ]
        )
        with np.errstate(over="ignore", invalid="ignore"):
            tensors[name] = arr.astype(dtype)
        return ProgramCase(f"{name} as {np.dtype(dtype).name}", rebuild(tensors, meta), "reject")
    if kind == 1:
        shape = rng.choice(
            [
                (arr.size,),
                (1, *arr.shape),
                arr.shape[:-1] or (0,),
                (*arr.shape[:-1], arr.shape[-1] + 1),
                (1, 1, 1, 1, arr.size),
                (0,),
            ]
        )
        if tuple(shape) == arr.shape:
            shape = (arr.size + 1,)
        tensors[name] = np.resize(arr, shape)
        return ProgramCase(f"{name} shape {shape}", rebuild(tensors, meta), "reject")
    if kind == 2 and arr.dtype == np.float32 and arr.size:
        tensors[name] = arr.copy()
        tensors[name].flat[rng.randrange(arr.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return ProgramCase(f"{name} non-finite", rebuild(tensors, meta), "reject")
    if kind == 3 and arr.dtype == np.uint64 and arr.size:
        tensors[name] = arr.copy()
        tensors[name][rng.randrange(arr.shape[0]), -1] |= np.uint64(1) << np.uint64(63)
        padding = _bits_k(program, name, arr.shape[0]) % 64 != 0  # else the top bit is a weight
        return ProgramCase(f"{name} top bit set", rebuild(tensors, meta), "reject" if padding else "either")
    if kind == 4:
        del tensors[name]
        return ProgramCase(f"{name} missing", rebuild(tensors, meta), "reject")
    if kind == 5:
        extra = rng.choice(["extra", "", "é" * 3, "x" * 5000, "__metadata__x"])
        tensors[extra] = rng.choice([np.zeros(3, np.float32), np.zeros((0,), np.uint64), np.ones((2, 2), np.float32)])
        return ProgramCase(f"extra tensor {extra[:20]!r}", rebuild(tensors, meta), "either")
    same = [n for n in tensors if n != name and tensors[n].shape == arr.shape and tensors[n].dtype == arr.dtype]
    if not same:
        return ProgramCase("no-op rebuild", rebuild(tensors, meta), "same")
    other = rng.choice(same)
    tensors[name], tensors[other] = tensors[other], arr
    padding_risk = arr.dtype == np.uint64
    return ProgramCase(f"{name} <-> {other} swapped", rebuild(tensors, meta), "either", nonfinite_ok=not padding_risk)


def mutate_v2_header(rng: random.Random, data: bytes) -> ProgramCase:
    """Hostile safetensors entries: data_offsets out of range or overlapping, shapes, dtypes, entry types."""
    header, body = split(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    entry, size = header[name], len(body)
    begin, end = entry["data_offsets"]
    kind = rng.randrange(6)
    if kind == 0:
        if end + 1 <= size and rng.random() < 0.2:  # unaligned, overlapping the next tensor: allowed
            entry["data_offsets"] = [begin + 1, end + 1]
            return ProgramCase(f"{name} data_offsets +1", join(header, body), "either", nonfinite_ok=True)
        new = rng.choice(
            [
                [begin, size + 8],
                [end, begin] if end > begin else [1, 0],
                [-8, end - begin - 8],
                [2**64 - 1, 2**64 - 1],
                [2**63, 2**63 + end - begin],
                ["0", end],
                [begin],
                [begin, end, end],
                None,
                [1.5, end],
                [size + 8, size + 8 + end - begin],
            ]
        )
        entry["data_offsets"] = new
        return ProgramCase(f"{name} data_offsets {new}", join(header, body), "reject")
    if kind == 1:
        same = [
            n for n in names if n != name and header[n]["data_offsets"][1] - header[n]["data_offsets"][0] == end - begin
        ]
        if not same:
            return ProgramCase("no-op rejoin", join(header, body), "same")
        entry["data_offsets"] = list(header[rng.choice(same)]["data_offsets"])  # overlaps another tensor
        return ProgramCase(f"{name} overlaps another tensor", join(header, body), "either", nonfinite_ok=True)
    if kind == 2:
        n = (end - begin) // (8 if entry["dtype"] == "U64" else 4)
        new = rng.choice(
            [
                [1, 1, 1, 1, n],
                [-1, -n],
                [2**62, 4],
                [2**32, 2**32, 2**32, 2**32],
                [2**63],
                [n, 0],
                ["3"],
                [1.5],
                None,
                5,
                [2**64 + n],
            ]
        )
        entry["shape"] = new
        return ProgramCase(f"{name} shape {new}", join(header, body), "reject")
    if kind == 3:
        entry["dtype"] = rng.choice(["F64", "F16", "BF16", "I64", "U8", "BOOL", "f32", "", None, 5])
        return ProgramCase(f"{name} dtype {entry['dtype']!r}", join(header, body), "reject")
    if kind == 4:
        header[name] = rng.choice([None, 3, "x", [], {}, {"dtype": "F32"}, {"shape": entry["shape"]}])
        return ProgramCase(f"{name} entry {header[name]!r}", join(header, body), "reject")
    depth = rng.choice([100_000, 1_000_000])
    raw = json.dumps(header)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    raw += " " * (-len(raw) % 8)
    return ProgramCase(f"header nested {depth} deep", struct.pack("<Q", len(raw)) + raw.encode() + body, "reject")


def mutate_v2_metadata(rng: random.Random, data: bytes) -> ProgramCase:
    """Missing or wrong format keys, preprocess, labels; the informative config and bit_convention."""
    header, body = split(data)
    meta = header["__metadata__"]
    kind = rng.randrange(6)
    if kind == 0:
        key = rng.choice(["format", "format_version", "program", "preprocess"])
        del meta[key]
        return ProgramCase(f"metadata {key} missing", join(header, body), "reject")
    if kind == 1:
        key, value = rng.choice(
            [
                ("format", "bhvit-packed2"),
                ("format", ""),
                ("format_version", "1"),
                ("format_version", "3"),
                ("format_version", "02"),
                ("format_version", " 2"),
                ("format_version", 2),
                ("program", {"ops": []}),
                ("preprocess", 3),
            ]
        )
        meta[key] = value
        return ProgramCase(f"metadata {key}={value!r}", join(header, body), "reject")
    if kind == 2:
        meta["preprocess"] = json.dumps(
            rng.choice(
                [
                    {"mean": [0.5] * 2, "std": [1] * 3, "resize": 36},
                    {"mean": [0] * 3, "std": [0.0] * 3, "resize": 36},
                    {"mean": [0] * 3, "std": [-1, 1, 1], "resize": 36},
                    {"mean": [0] * 3, "std": [1] * 3, "resize": 16385},
                    {"mean": [0] * 3, "std": [1] * 3, "resize": 0},
                    {"mean": [0] * 3, "std": [1] * 3, "resize": 1.5},
                    {"mean": "0.5"},
                    {"mean": [None] * 3},
                    [1, 2],
                    "x",
                    {"mean": [1e999] * 3, "std": [1] * 3, "resize": 3},
                ]
            )
        )
        return ProgramCase(f"preprocess {meta['preprocess'][:60]}", join(header, body), "reject")
    if kind == 3:
        width = json.loads(meta["program"])["num_classes"]
        meta["labels"] = rng.choice(
            [
                json.dumps(["a"] * (width + 1)),
                json.dumps(["a"] * (width - 1)),
                json.dumps([1] * width),
                json.dumps({"0": "a"}),
                "[",
                json.dumps("abc"),
                json.dumps([None] * width),
                json.dumps([["a"]] * width),
            ]
        )
        return ProgramCase(f"labels {meta['labels'][:40]}", join(header, body), "reject")
    if kind == 4:
        header["__metadata__"] = rng.choice([None, [], "x", {"format": "bhvit-packed"}, {**meta, "extra": 3}])
        return ProgramCase(f"__metadata__ {str(header['__metadata__'])[:40]}", join(header, body), "reject")
    key = rng.choice(["config", "bit_convention"])
    value = rng.choice([None, "{", "x", json.dumps({"img_size": [2**40, 2**40]})])
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    # informative entries: a runtime must not need them (it may still refuse text that is not JSON)
    return ProgramCase(f"informative {key}={value!r}", join(header, body), "either" if value in ("{", "x") else "same")


def _raw_header(header: dict, body: bytes, marker: str, raw: bytes) -> bytes:
    """The file with ``marker`` in the header's JSON text replaced by raw bytes (invalid UTF-8, escapes)."""
    text = json.dumps(header, ensure_ascii=False).encode().replace(marker.encode(), raw)
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def mutate_v2_text(rng: random.Random, data: bytes) -> ProgramCase:
    """Invalid UTF-8, unusual but valid text, duplicate keys, trailing junk in the header."""
    header, body = split(data)
    meta = header["__metadata__"]
    kind = rng.randrange(5)
    if kind == 0:
        bad = rng.choice(BAD_UTF8)
        meta[rng.choice(["format", "extra", "labels", "program"])] = "@@MARK@@"
        return ProgramCase(f"invalid UTF-8 {bad!r}", _raw_header(header, body, "@@MARK@@", bad), "reject")
    if kind == 1:
        meta["extra"] = rng.choice(["é€😀", "\u2028", "\x00", "\\u0000", "a" * 100_000])
        return ProgramCase(f"extra metadata {meta['extra'][:10]!r}", join(header, body), "same")
    if kind == 2 and "labels" in meta:
        width = len(json.loads(meta["labels"]))
        label = rng.choice(["\x1b[2J", "", "é", "\u2028", "\ud800", "a" * 10_000, "\x00x"])
        meta["labels"] = json.dumps([label] * width)
        return ProgramCase(f"labels {label[:10]!r}", join(header, body), "either" if label == "\ud800" else "same")
    if kind == 3:
        name = rng.choice(sorted(k for k in header if k != "__metadata__"))
        dup = json.dumps({name: {**header[name], "data_offsets": [0, 0], "shape": [0]}})[1:-1]
        raw = json.dumps(header)[:-1] + ", " + dup + "}"
        raw += " " * (-len(raw) % 8)
        return ProgramCase(f"duplicate entry {name}", struct.pack("<Q", len(raw)) + raw.encode() + body, "either")
    suffix = rng.choice(["x", "}", "\x00", "\t\n", " " * 17])
    raw = json.dumps(header) + suffix
    padded = raw + " " * (-len(raw) % 8)
    valid = suffix.isspace()
    return ProgramCase(
        f"header ends {raw[-3:]!r}",
        struct.pack("<Q", len(padded)) + padded.encode() + body,
        "same" if valid else "reject",
    )


def mutate_v2_equivalent(rng: random.Random, data: bytes) -> ProgramCase:
    """A file that says the same thing differently: it must load and give the seed's logits exactly."""
    tensors, meta = load_arrays(data)
    header, body, program = v2_parts(data)
    kind = rng.randrange(4)
    if kind == 0:
        raw = rng.choice(
            [
                json.dumps(program, indent=2),
                json.dumps(program, sort_keys=True),
                json.dumps({k: program[k] for k in reversed(list(program))}),
            ]
        )
        return ProgramCase("program reformatted", with_program(header, body, None, raw=raw), "same")
    if kind == 1:
        names = list(tensors)
        rng.shuffle(names)
        return ProgramCase("tensors relaid", rebuild({n: tensors[n] for n in names}, meta), "same")
    if kind == 2:
        for op in (op for op in program["ops"] if op["op"] in ("bconv", "blinear")):
            op.update({key: None for key in ("residual", "post", "bias", "rprelu") if key not in op})
            op.setdefault("accumulate", False)
        return ProgramCase("optional fields explicit", with_program(header, body, program), "same")
    for key in rng.sample(["labels", "config", "bit_convention", "zzz"], 2):
        meta.pop(key, None) if key != "zzz" else meta.setdefault(key, "1")
    return ProgramCase(f"metadata {sorted(meta)}", rebuild(tensors, meta), "same")


def mutate_v2_bytes(rng: random.Random, data: bytes) -> ProgramCase:
    """Truncations, hostile header lengths, flips of random bits in the header or the data."""
    kind = rng.randrange(4)
    (n,) = struct.unpack("<Q", data[:8])
    if kind == 0:
        cut = rng.choice([0, 1, 7, 8, 9, 8 + n // 2, 8 + n, 8 + n + 1, len(data) - 1, rng.randrange(len(data))])
        return ProgramCase(f"truncated at {cut}", data[:cut], "reject")
    if kind == 1:
        new = rng.choice([0, 1, n - 1, n + 1, n + 8, len(data), 2**63, 2**64 - 1, 100_000_001, 2**32 + n])
        return ProgramCase(f"header length {new}", struct.pack("<Q", new) + data[8:], "reject")
    buf = bytearray(data)
    region = (8, 8 + n) if kind == 2 else (8 + n, len(data))
    flips = [(rng.randrange(*region), rng.randrange(8)) for _ in range(rng.choice([1, 1, 2, 8]))]
    for pos, bit in flips:
        buf[pos] ^= 1 << bit
    return ProgramCase(f"bit flips {flips[:3]}", bytes(buf), "either", nonfinite_ok=True)


V2_MUTATORS = [
    mutate_v2_field,
    mutate_v2_field,
    mutate_v2_field,
    mutate_v2_ops,
    mutate_v2_ops,
    mutate_v2_program,
    mutate_v2_tensors,
    mutate_v2_header,
    mutate_v2_metadata,
    mutate_v2_text,
    mutate_v2_equivalent,
    mutate_v2_bytes,
    mutate_v2_bytes,
]


def program_cases(seeds: list[Path], count: int, seed: int) -> list[tuple[int, ProgramCase]]:
    """(seed index, case) for ``count`` mutations of the seeds, round robin."""
    rng = random.Random(seed)
    datas = [p.read_bytes() for p in seeds]
    cases = []
    for i in range(count):
        j = i % len(datas)
        case = rng.choice(V2_MUTATORS)(rng, datas[j])
        cases.append((j, ProgramCase(f"#{i} v2seed{j} {case.name}", case.data, case.expect, case.nonfinite_ok)))
    return cases


# ---- the version-2 worker: load, run batch 1 and 2, judge ---------------------------------------------------
def _limit_memory(limit: int) -> None:
    """Caps the worker's address space so that an absurd allocation fails (never under ASan, which reserves
    terabytes of address space)."""
    import resource

    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _images(shape: tuple[int, ...], batch: int):  # noqa: ANN202 (numpy array)
    import numpy as np

    return np.random.default_rng(7).standard_normal((batch, *shape), dtype=np.float32)


def _declared(data: bytes) -> tuple[list, int] | None:
    """(input, num_classes) as the file's program states them, read by Python's own JSON parser (None when
    it cannot: then the runtime must not have loaded the file either)."""
    try:
        program = json.loads(split(data)[0]["__metadata__"]["program"])
        return list(program["input"]), int(program["num_classes"])
    except Exception:  # noqa: BLE001 (any failure to parse means "not readable")
        return None


def _run_twice(model, expect_same) -> tuple[str, str]:  # noqa: ANN001
    """Runs batch 1 and 2; the outcome: LOADED, NONFINITE, WRONG (shape) or DIFFERENT (from the seed)."""
    import numpy as np

    for batch in (1, 2):
        logits = model.run(_images(model.input_shape, batch))
        if logits.shape != (batch, model.num_classes) or logits.dtype != np.float32:
            return "WRONG", f"logits {logits.shape} {logits.dtype} for batch {batch}"
        if expect_same is not None and not np.array_equal(logits, expect_same[batch]):
            return "DIFFERENT", f"batch {batch}: max |diff| {np.nanmax(np.abs(logits - expect_same[batch]))}"
        if not np.isfinite(logits).all():
            return "NONFINITE", f"batch {batch}"
    return "LOADED", f"{model.input_shape} -> {model.num_classes}"


def _message_ok(err: Exception) -> bool:
    """A refusal names its problem: a message, and not a memory failure (which means an absurd allocation:
    no 32-pixel test model needs more than a few MB)."""
    text = str(err).split(": ", 1)[-1].strip()
    return bool(text) and "out of memory" not in text and "unknown error" not in text


def _program_case(path: Path, via_file: bool, same: dict | None) -> tuple[str, str]:
    """Loads one case (from the file or its bytes), runs it and returns (outcome, detail)."""
    import bhvit.runtime as rt

    data = path.read_bytes()
    try:
        model = rt.load(path) if via_file else rt.load_bytes(data, path.name)
    except ValueError as err:  # PackedFormatError is a ValueError
        return ("REJECTED" if _message_ok(err) else "BADMESSAGE"), f"{type(err).__name__}: {err}"
    declared = _declared(data)
    if declared is None or declared != (list(model.input_shape), model.num_classes):
        return (
            "WRONG",
            f"loaded, but the program declares {declared} and the runtime says "
            f"{model.input_shape} -> {model.num_classes}",
        )
    try:
        return _run_twice(model, same)
    except ValueError as err:
        return "RUNFAIL", f"the file loaded but a run failed: {err}"
    finally:
        model.close()


def program_worker(case_dir: Path, start: int, memory_limit: int) -> None:
    """Runs version-2 cases ``start..`` of case_dir (manifest.json: id -> [seed file, expect]), in order."""
    import bhvit.runtime as rt

    _limit_memory(memory_limit)
    manifest = json.loads((case_dir / "manifest.json").read_text())
    seeds: dict[str, dict] = {}
    for k, cid in enumerate(sorted(manifest)[start:]):
        seed, expect = manifest[cid]
        if expect == "same" and seed not in seeds:  # the seed's logits, for files equivalent to it
            model = rt.load(seed)
            seeds[seed] = {b: model.run(_images(model.input_shape, b)) for b in (1, 2)}
        rt.set_num_threads(1 + (start + k) % 2)
        _emit(f"START {cid}")
        try:
            outcome, detail = _program_case(
                case_dir / f"{cid}.bhvp", (start + k) % 3 == 0, seeds.get(seed) if expect == "same" else None
            )
            _emit(f"END {cid} {outcome} {detail}")
        except Exception as err:  # noqa: BLE001 (any other type is a finding, reported by the driver)
            _emit(f"END {cid} ERROR {type(err).__name__}: {err}")


# ---- the C API corpus: direct ctypes calls of libbhvit_runtime ----------------------------------------------
KNOWN_ISAS = ("avx512vpopcnt", "avx512bw", "avx2", "popcnt", "neon", "generic")
SENTINEL = 0xA5
ERRLENS = [None, 0, 1, 2, 7, 64, 1024]  # None: err is NULL (with errlen 0, or a lying 100 below)
BAD_BATCHES = [0, -1, -(2**31), 2**31 - 1, 2**30, 2**28, 2**25]  # the last four: far beyond any memory


class CapiError(AssertionError):
    """A C API call broke its contract (the message says how); a finding."""


def _err_buffer(errlen: int | None):  # noqa: ANN202 (ctypes array or None)
    import ctypes

    return None if errlen is None else ctypes.create_string_buffer(bytes([SENTINEL]) * (errlen + 32), errlen + 32)


def _check_err(buf, errlen: int | None, failed: bool) -> None:  # noqa: ANN001
    """Nothing written at or past errlen; after a failure, a NUL-terminated, non-empty message within it."""
    if buf is None:
        return
    raw = bytes(buf.raw)
    if any(b != SENTINEL for b in raw[errlen:]):
        raise CapiError(f"wrote past errlen={errlen}: {raw[errlen : errlen + 8]!r}")
    if not failed:  # a success may leave err as it was
        return
    if errlen and b"\0" not in raw[:errlen]:
        raise CapiError(f"no NUL within errlen={errlen}: {raw[:errlen]!r:.80}")
    if errlen and errlen >= 16 and not raw[: raw.index(b"\0")].strip():
        raise CapiError("failed with an empty message")


def _errlen(rng: random.Random) -> tuple[object, int]:
    errlen = rng.choice(ERRLENS)
    return _err_buffer(errlen), (errlen if errlen is not None else rng.choice([0, 0, 100]))


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise CapiError(what)


@dataclass
class Loaded:
    """A model loaded once per worker, with what the seed file says and its reference logits."""

    handle: int
    path: Path
    shape: tuple[int, int, int]
    classes: int
    labels: list[str] | None
    preprocess: dict
    gsb: bool
    images: object  # (2, C, H, W) float32
    logits: object  # (2, classes) float32


def _load_seed(lib, path: Path) -> Loaded:  # noqa: ANN001
    import numpy as np

    header, _, program = v2_parts(path.read_bytes())
    meta = header["__metadata__"]
    handle = lib.bhvit_load(str(path).encode(), None, 0)
    if not handle:
        raise CapiError(f"the seed {path} does not load")
    shape, classes = tuple(program["input"]), program["num_classes"]
    images = np.random.default_rng(3).standard_normal((2, *shape), dtype=np.float32)
    loaded = Loaded(
        handle,
        path,
        shape,
        classes,
        json.loads(meta["labels"]) if "labels" in meta else None,
        json.loads(meta["preprocess"]),
        '"gsb"' in meta["program"],
        images,
        None,
    )
    loaded.logits = _run(lib, loaded, images)
    return loaded


def _run(lib, m: Loaded, images, batch: int | None = None, errlen: int | None = 256):  # noqa: ANN001, ANN202
    """bhvit_run with a logits buffer one row longer than needed, whose last row must stay untouched."""
    import ctypes

    import numpy as np

    batch = len(images) if batch is None else batch
    rows = max(min(batch, 64), 0) + 1
    out = np.full((rows, max(m.classes, 1)), np.float32(-1234.5), np.float32)
    err = _err_buffer(errlen)
    f32p = ctypes.POINTER(ctypes.c_float)
    status = lib.bhvit_run(m.handle, images.ctypes.data_as(f32p), batch, out.ctypes.data_as(f32p), err, errlen or 0)
    _check_err(err, errlen, status != 0)
    used = batch if status == 0 else 0
    _expect(status in (0, -1), f"bhvit_run returned {status}")
    _expect(bool((out[used:] == np.float32(-1234.5)).all()), f"bhvit_run wrote past {used} rows of logits")
    return out[:batch] if status == 0 else None


def capi_load_path(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_load of paths that are not packed files."""
    garbage = tmp / "garbage.bhvp"
    garbage.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([0, 7, 8, 64, 4096]))))
    cut = tmp / "cut.bhvp"
    data = models[0].path.read_bytes()
    cut.write_bytes(data[: rng.randrange(len(data))])
    path = rng.choice(
        [
            None,
            b"",
            b"/nonexistent/x.bhvp",
            str(tmp).encode(),
            b"/dev/null",
            b"/dev/zero",
            str(garbage).encode(),
            str(cut).encode(),
            b"x" * 5000,
            b"/tmp/\xff\xfe.bhvp",
            b"/proc/self/mem",
        ]
    )
    err, errlen = _errlen(rng)
    handle = lib.bhvit_load(path, err, errlen)
    if handle:
        lib.bhvit_free(handle)
        raise CapiError(f"bhvit_load({path!r:.60}) loaded a model")
    _check_err(err, errlen, True)
    return "REFUSED"


def capi_load_memory(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_load_memory of NULL, empty, short, truncated or random bytes (sizes always honest)."""
    import ctypes

    data = rng.choice(models).path.read_bytes()
    kind = rng.randrange(4)
    if kind == 0:
        buf, size = None, 0
    elif kind == 1:
        cut = rng.choice([0, 1, 7, 8, 9, 16, rng.randrange(len(data))])
        buf, size = data[:cut], cut
    elif kind == 2:
        buf = bytes(rng.randrange(256) for _ in range(rng.choice([8, 24, 100])))
        size = len(buf)
    else:
        buf, size = ctypes.create_string_buffer(b"", 1), 0  # a real pointer with size 0
    err, errlen = _errlen(rng)
    handle = lib.bhvit_load_memory(buf, size, err, errlen)
    if handle:
        lib.bhvit_free(handle)
        raise CapiError(f"bhvit_load_memory of {size} hostile bytes loaded a model")
    _check_err(err, errlen, True)
    return "REFUSED"


def capi_load_valid(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """A valid file loaded (from a path or memory, any err buffer), run, freed; the same logits as the seed's."""
    import numpy as np

    m = rng.choice(models)
    err, errlen = _errlen(rng)
    if rng.random() < 0.5:
        handle = lib.bhvit_load(str(m.path).encode(), err, errlen)
    else:
        data = m.path.read_bytes()
        handle = lib.bhvit_load_memory(data, len(data), err, errlen)
    _expect(bool(handle), f"a valid file did not load: {err.value if err else b''!r}")
    _check_err(err, errlen, False)
    try:
        got = _run(lib, Loaded(**{**m.__dict__, "handle": handle}), m.images)
        _expect(got is not None and np.array_equal(got, m.logits), "a second load gives other logits")
    finally:
        lib.bhvit_free(handle)
    return "RETURNED"


def capi_run_bad(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_run with a batch < 1 or far beyond memory, or NULL pointers: -1, no logits written."""
    import ctypes

    m = rng.choice(models)
    kind = rng.randrange(4)
    if kind == 0:
        batch = rng.choice(BAD_BATCHES)
        _expect(
            _run(lib, m, m.images[:1], batch=batch, errlen=rng.choice([None, 0, 1, 256])) is None,
            f"bhvit_run accepted batch {batch}",
        )
        return "REFUSED"
    err, errlen = _errlen(rng)
    f32p = ctypes.POINTER(ctypes.c_float)
    out = (ctypes.c_float * max(m.classes, 1))()
    images = m.images[:1].ctypes.data_as(f32p)
    args = [(None, images, out), (m.handle, None, out), (m.handle, images, None)][kind - 1]
    status = lib.bhvit_run(args[0], args[1], 1, args[2], err, errlen)
    _expect(status == -1, f"bhvit_run with NULL argument {kind} returned {status}")
    _check_err(err, errlen, True)
    return "REFUSED"


def capi_run_batches(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """Runs of batch 1…5 (twice: identical); with GSB attention each row is the single image's logits."""
    import numpy as np

    m = rng.choice(models)
    batch = rng.choice([1, 2, 3, 5])
    images = np.random.default_rng(rng.randrange(2**32)).standard_normal((batch, *m.shape), dtype=np.float32)
    if rng.random() < 0.2:  # non-finite pixels: any logits, but a clean return
        images.flat[rng.randrange(images.size)] = rng.choice([np.nan, np.inf, -np.inf])
        _run(lib, m, images)
        return "RETURNED"
    first, second = _run(lib, m, images), _run(lib, m, images)
    _expect(first is not None and np.array_equal(first, second), "two runs of the same batch differ")
    _expect(bool(np.isfinite(first).all()), "non-finite logits from finite images")
    if m.gsb:  # LSQ's grad_scale depends on the batch size; GSB's masks do not
        for i in rng.sample(range(batch), min(batch, 2)):
            _expect(np.array_equal(_run(lib, m, images[i : i + 1])[0], first[i]), f"row {i} depends on the batch")
    return "RETURNED"


def capi_threads(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_set_num_threads(n) then a run: the same logits for every thread count."""
    import numpy as np

    m, before = rng.choice(models), lib.bhvit_get_num_threads()
    n = rng.choice([-3, 0, 1, 2, 3, 7, 16])
    try:
        lib.bhvit_set_num_threads(n)
        got = lib.bhvit_get_num_threads()
        _expect(got >= 1 and (n < 1 or got == n), f"bhvit_set_num_threads({n}) gave {got} threads")
        _expect(np.array_equal(_run(lib, m, m.images), m.logits), f"{n} threads give other logits")
    finally:
        lib.bhvit_set_num_threads(before)
    return "RETURNED"


def capi_isa(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_set_isa with unknown, malformed and valid names: refused names change nothing; accepted ones run
    with the same logits."""
    import numpy as np

    before = lib.bhvit_isa()
    name = rng.choice(
        [
            None,
            b"",
            b"AVX2",
            b"avx2 ",
            b" avx2",
            b"x" * 5000,
            b"\xff\xfe",
            b"sse",
            b"avx512",
            *[n.encode() for n in KNOWN_ISAS],
        ]
    )
    err, errlen = _errlen(rng)
    status = lib.bhvit_set_isa(name, err, errlen)
    try:
        if status != 0:
            _expect(status == -1 and lib.bhvit_isa() == before, f"refused ISA {name!r:.30} changed the ISA")
            _check_err(err, errlen, True)
            return "REFUSED"
        _expect(
            name is not None and name.decode() in KNOWN_ISAS and lib.bhvit_isa() == name,
            f"bhvit_set_isa({name!r:.30}) accepted, isa now {lib.bhvit_isa()!r}",
        )
        m = rng.choice(models)
        _expect(np.array_equal(_run(lib, m, m.images), m.logits), f"ISA {name!r} gives other logits")
        return "RETURNED"
    finally:
        lib.bhvit_set_isa(before, None, 0)


def capi_labels(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_label in and out of range, bhvit_num_classes, bhvit_input_dims."""
    import ctypes

    m = rng.choice(models)
    i = rng.choice([-1, -(2**31), m.classes, m.classes + 1, 2**31 - 1, 0, m.classes - 1])
    label = lib.bhvit_label(rng.choice([m.handle, m.handle, None]) if 0 <= i < m.classes else m.handle, i)
    if not 0 <= i < m.classes:
        _expect(label is None, f"bhvit_label({i}) of {m.classes} classes gave {label!r}")
        return "REFUSED"
    _expect(lib.bhvit_num_classes(None) == -1 and lib.bhvit_num_classes(m.handle) == m.classes, "num_classes")
    dims = [ctypes.c_int(-7) for _ in range(3)]
    _expect(lib.bhvit_input_dims(None, *map(ctypes.byref, dims)) == -1, "bhvit_input_dims(NULL) did not fail")
    _expect(
        lib.bhvit_input_dims(m.handle, *map(ctypes.byref, dims)) == 0 and tuple(d.value for d in dims) == m.shape,
        f"input dims {[d.value for d in dims]}",
    )
    want = None if m.labels is None else m.labels[i].encode()
    _expect(label in (None, want), f"bhvit_label({i}) = {label!r}, the file says {want!r}")
    return "RETURNED"


def capi_null_outputs(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_input_dims and bhvit_preprocess with NULL output pointers: an error or nothing written, no crash."""
    import ctypes

    m = rng.choice(models)
    c = m.shape[0]
    mean, std, resize = (ctypes.c_float * c)(), (ctypes.c_float * c)(), ctypes.c_int()
    slots = [ctypes.byref(ctypes.c_int()) for _ in range(3)]
    slots[rng.randrange(3)] = None
    _expect(lib.bhvit_input_dims(m.handle, *slots) in (0, -1), "bhvit_input_dims returned another value")
    args = [mean, std, ctypes.byref(resize)]
    args[rng.randrange(3)] = None
    err, errlen = _errlen(rng)
    status = lib.bhvit_preprocess(rng.choice([m.handle, None]) if rng.random() < 0.3 else m.handle, *args, err, errlen)
    _expect(status in (0, -1), f"bhvit_preprocess returned {status}")
    _check_err(err, errlen, status != 0)
    return "REFUSED" if status else "RETURNED"


def capi_preprocess(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_preprocess gives the file's values; bhvit_metadata of known, unknown, NULL keys and models."""
    import ctypes

    m = rng.choice(models)
    c = m.shape[0]
    mean, std, resize = (ctypes.c_float * c)(), (ctypes.c_float * c)(), ctypes.c_int()
    _expect(lib.bhvit_preprocess(m.handle, mean, std, ctypes.byref(resize), None, 0) == 0, "bhvit_preprocess failed")
    got = {"mean": list(mean), "std": list(std), "resize": resize.value}
    want = {k: ([float(_f32(v)) for v in m.preprocess[k]] if k != "resize" else m.preprocess[k]) for k in got}
    _expect(got == want, f"preprocess {got} != {want}")
    key = rng.choice([None, b"", b"nope", b"config", b"preprocess", b"labels", b"program", b"x" * 1000])
    value = lib.bhvit_metadata(rng.choice([None, m.handle]) if key in (b"config",) else m.handle, key)
    if key in (b"config", b"preprocess") and value is not None:
        json.loads(value)
    _expect(
        key not in (None, b"", b"nope", b"x" * 1000) or value is None, f"bhvit_metadata({key!r:.20}) = {value!r:.40}"
    )
    _expect(lib.bhvit_metadata(None, b"config") is None, "bhvit_metadata(NULL, ...) gave a value")
    return "RETURNED" if value is not None else "REFUSED"


def _f32(v: float) -> float:
    import numpy as np

    return float(np.float32(v))


def capi_profile(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_profile_kinds / bhvit_run_profiled with NULL models and arrays, n below, at and above the count."""
    import ctypes

    m = rng.choice(models)
    _expect(lib.bhvit_profile_kinds(None, None, 3) == -1, "NULL model")
    count = lib.bhvit_profile_kinds(m.handle, None, 0)
    _expect(count >= 1, f"{count} profiled kinds")
    n = rng.choice([-1, 0, 1, count - 1, count, count + 3])
    size = max(n, 0) + 4
    kinds, secs = (ctypes.c_char_p * size)(*([b"-"] * size)), (ctypes.c_double * size)(*([-7.0] * size))
    _expect(lib.bhvit_profile_kinds(m.handle, kinds, n) == count, "bhvit_profile_kinds count changed")
    x = m.images[:1]
    f32p = ctypes.POINTER(ctypes.c_float)
    out = (ctypes.c_float * m.classes)()
    err = ctypes.create_string_buffer(256)
    _expect(
        lib.bhvit_run_profiled(m.handle, x.ctypes.data_as(f32p), 1, out, None, 2, err, 256) == -1,
        "NULL seconds with n > 0 accepted",
    )
    _expect(
        lib.bhvit_run_profiled(m.handle, x.ctypes.data_as(f32p), 1, out, secs, n, err, 256) == 0,
        f"bhvit_run_profiled failed: {err.value!r}",
    )
    written = min(max(n, 0), count)
    for name, arr, fill in (("kinds", kinds, b"-"), ("seconds", secs, -7.0)):
        _expect(all(v == fill for v in arr[written:]), f"{name} written past n={n} (count {count})")
    _expect(
        all(k not in (None, b"-") for k in kinds[:written]) and all(s >= 0 for s in secs[:written]),
        f"profile entries {list(zip(kinds[:written], secs[:written]))}",
    )
    lib.bhvit_free(None)
    return "RETURNED"


CAPI_CASES = [
    capi_load_path,
    capi_load_memory,
    capi_load_valid,
    capi_run_bad,
    capi_run_bad,
    capi_run_batches,
    capi_threads,
    capi_isa,
    capi_isa,
    capi_labels,
    capi_null_outputs,
    capi_preprocess,
    capi_profile,
]


def capi_worker(seed_dir: Path, seed: int, start: int, count: int, memory_limit: int) -> None:
    """Runs C API cases ``start..count`` (case i uses Random(f"{seed}-{i}")) on the seeds of seed_dir."""
    import bhvit.runtime as rt

    _limit_memory(memory_limit)
    lib = rt._library()
    models = [_load_seed(lib, p) for p in sorted(seed_dir.glob("v2seed*.bhvp"))]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(start, count):
            rng = random.Random(f"{seed}-{i}")
            case = rng.choice(CAPI_CASES)
            _emit(f"START {i:05d} {case.__name__}")
            try:
                _emit(f"END {i:05d} {case(lib, rng, models, Path(tmp))} {case.__name__}")
            except CapiError as err:
                _emit(f"END {i:05d} WRONG {case.__name__}: {err}")
            except Exception as err:  # noqa: BLE001 (any other type is a finding)
                _emit(f"END {i:05d} ERROR {case.__name__}: {type(err).__name__}: {err}")


# ---- the driver ----------------------------------------------------------------------------------------
@dataclass
class Report:
    """Outcome counts and findings (case id -> what went wrong) of one campaign."""

    outcomes: dict[str, int]
    findings: dict[str, str]
    seconds: float


def _run_workers(
    argv: list[str],
    count: int,
    timeout: float,
    env: dict | None,
    judge,  # noqa: ANN001
    describe=lambda cid: "",
) -> tuple[dict[str, int], dict[str, str]]:  # noqa: ANN001
    """Runs ``argv + [start]`` until every case of 0..count-1 has ended or has been blamed for a crash."""
    outcomes: dict[str, int] = {}
    findings: dict[str, str] = {}
    start = 0
    while start < count:
        try:
            proc = subprocess.run(
                [*argv, str(start)], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
            )
            out, err, died = proc.stdout, proc.stderr, proc.returncode != 0
            why = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            died, why = True, f"timeout after {timeout} s"
        running, ended = None, 0
        for line in out.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "START":
                running = line[6:]
            elif parts[0] == "END" and len(parts) >= 3:
                running = None
                ended += 1
                outcomes[parts[2]] = outcomes.get(parts[2], 0) + 1
                bad = judge(parts[1], parts[2], line)
                if bad:
                    findings[parts[1]] = bad
        start += ended
        if died:
            if running is None:  # died outside a case (import, start-up): nothing to blame, stop
                findings[f"worker@{start}"] = f"{why}: {err[-2000:]}"
                break
            cid = running.split(" ")[0]
            headline = next(
                (line for line in err.splitlines() if "runtime error:" in line or "ERROR: AddressSanitizer" in line), ""
            )
            findings[cid] = f"CRASH {describe(cid)} {running}: {why}: {headline}\n{err[-1500:]}"
            outcomes["CRASH"] = outcomes.get("CRASH", 0) + 1
            start += 1
    return outcomes, findings


def run_format(
    seeds: list[Path], count: int, seed: int = 0, timeout: float = 120.0, env: dict | None = None, batch: int = 1000
) -> Report:
    """Generates ``count`` format cases from ``seeds`` and runs them in workers (``batch`` per worker)."""
    t0 = time.perf_counter()
    cases = format_cases(seeds, count, seed)
    names = {f"{i:05d}": c for i, c in enumerate(cases)}

    def judge(cid: str, outcome: str, line: str) -> str | None:
        case = names[cid]
        if outcome == "REJECTED" or (outcome == "LOADED" and case.may_load):
            return None
        return f"{case.name}: {line}"

    outcomes: dict[str, int] = {}
    findings: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b0 in range(0, count, batch):
            sub = Path(tmp) / f"batch{b0}"
            sub.mkdir()
            for cid in list(names)[b0 : b0 + batch]:
                (sub / f"{cid}.bhvp").write_bytes(names[cid].data)
            o, f = _run_workers(
                [sys.executable, str(Path(__file__).resolve()), "--format-worker", str(sub)],
                len(list(sub.glob("*.bhvp"))),
                timeout,
                env,
                judge,
                lambda cid: names[cid].name,
            )
            for k, v in o.items():
                outcomes[k] = outcomes.get(k, 0) + v
            findings.update(f)
    return Report(outcomes, findings, time.perf_counter() - t0)


def run_native(count: int, seed: int = 0, timeout: float = 120.0, env: dict | None = None) -> Report:
    """Runs ``count`` native binding cases in workers."""
    t0 = time.perf_counter()

    def judge(cid: str, outcome: str, line: str) -> str | None:
        return None if outcome in ("RETURNED", "REJECTED") else line

    argv = [sys.executable, str(Path(__file__).resolve()), "--native-worker", str(seed), str(count)]
    outcomes, findings = _run_workers(argv, count, timeout, env, judge)
    return Report(outcomes, findings, time.perf_counter() - t0)


MEMORY_LIMIT = 2 << 30  # bytes of address space per version-2 worker (0 under ASan)


def _merge(into: tuple[dict, dict], part: tuple[dict, dict]) -> None:
    for k, v in part[0].items():
        into[0][k] = into[0].get(k, 0) + v
    into[1].update(part[1])


def _judge_program(case: ProgramCase, outcome: str) -> bool:
    """Whether an outcome is allowed for a case (see ProgramCase)."""
    if case.expect == "same":
        return outcome == "LOADED"
    if outcome == "REJECTED":
        return True
    return case.expect == "either" and (outcome == "LOADED" or (outcome == "NONFINITE" and case.nonfinite_ok))


def run_program(
    seeds: list[Path],
    count: int,
    seed: int = 0,
    timeout: float = 120.0,
    env: dict | None = None,
    memory_limit: int = MEMORY_LIMIT,
    jobs: int = 2,
    batch: int = 250,
) -> Report:
    """Generates ``count`` version-2 cases from ``seeds`` and runs them in ``jobs`` parallel chains of workers
    (``batch`` cases per chain); the runtime's library is ``bhvit.runtime``'s (BHVIT_RUNTIME_LIB in env)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    cases = program_cases(seeds, count, seed)
    names = {f"{i:05d}": c for i, c in enumerate(cases)}

    def judge(cid: str, outcome: str, line: str) -> str | None:
        case = names[cid][1]
        return None if _judge_program(case, outcome) else f"{case.name} [{case.expect}]: {line}"

    def chain(sub: Path) -> tuple[dict, dict]:
        argv = [sys.executable, str(Path(__file__).resolve()), "--program-worker", str(sub), str(memory_limit)]
        return _run_workers(
            argv,
            len(json.loads((sub / "manifest.json").read_text())),
            timeout,
            env,
            judge,
            lambda cid: names[cid][1].name,
        )

    total: tuple[dict, dict] = ({}, {})
    with tempfile.TemporaryDirectory() as tmp:
        subs = [
            _write_batch(Path(tmp) / f"batch{b0}", list(names.items())[b0 : b0 + batch], seeds)
            for b0 in range(0, count, batch)
        ]
        with ThreadPoolExecutor(max(jobs, 1)) as pool:
            for part in pool.map(chain, subs):
                _merge(total, part)
    return Report(total[0], total[1], time.perf_counter() - t0)


def _write_batch(sub: Path, items: list, seeds: list[Path]) -> Path:
    sub.mkdir()
    manifest = {}
    for cid, (j, case) in items:
        (sub / f"{cid}.bhvp").write_bytes(case.data)
        manifest[cid] = [str(seeds[j]), case.expect]
    (sub / "manifest.json").write_text(json.dumps(manifest))
    return sub


def run_capi(
    seed_dir: Path,
    count: int,
    seed: int = 0,
    timeout: float = 120.0,
    env: dict | None = None,
    memory_limit: int = MEMORY_LIMIT,
) -> Report:
    """Runs ``count`` C API cases on the version-2 seeds in seed_dir (``v2seed*.bhvp``)."""
    t0 = time.perf_counter()

    def judge(cid: str, outcome: str, line: str) -> str | None:
        return None if outcome in ("RETURNED", "REFUSED") else line

    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--capi-worker",
        str(seed_dir),
        str(seed),
        str(count),
        str(memory_limit),
    ]
    outcomes, findings = _run_workers(argv, count, timeout, env, judge)
    return Report(outcomes, findings, time.perf_counter() - t0)


def _workers(args: argparse.Namespace, rest: list[str]) -> bool:
    """Runs the worker a driver asked for (hidden options); False when this is not a worker."""
    if args.format_worker:
        format_worker(Path(args.format_worker), int(rest[0]))
    elif args.native_worker:
        native_worker(int(args.native_worker[0]), int(rest[0]), int(args.native_worker[1]))
    elif args.program_worker:
        program_worker(Path(args.program_worker[0]), int(rest[0]), int(args.program_worker[1]))
    elif args.capi_worker:
        d, seed, count, limit = args.capi_worker
        capi_worker(Path(d), int(seed), int(rest[0]), int(count), int(limit))
    else:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format-cases", type=int, default=2000, help="version-1 files (0: skip)")
    p.add_argument("--native-cases", type=int, default=5000, help="calls of bhvit.engine._C (0: skip)")
    p.add_argument("--program-cases", type=int, default=2000, help="version-2 files (0: skip)")
    p.add_argument("--capi-cases", type=int, default=1000, help="C API calls (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory-limit", action="store_true", help="no RLIMIT_AS in the workers (for ASan)")
    p.add_argument("--format-worker", help=argparse.SUPPRESS)
    p.add_argument("--native-worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--program-worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--capi-worker", nargs=4, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if str(ROOT) not in sys.path:  # the checkout's bhvit, installed or not (workers run this file as a script)
        sys.path.insert(0, str(ROOT))
    if _workers(args, rest):
        return 0
    env, limit = dict(os.environ), 0 if args.no_memory_limit else MEMORY_LIMIT
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.format_cases:
            reports["format v1"] = run_format(build_seeds(Path(tmp)), args.format_cases, args.seed, env=env)
        if args.native_cases:
            reports["native v1"] = run_native(args.native_cases, args.seed, env=env)
        if args.program_cases or args.capi_cases:
            seeds = build_v2_seeds(Path(tmp))
            reports["program v2"] = run_program(seeds, args.program_cases, args.seed, env=env, memory_limit=limit)
            reports["C API"] = run_capi(Path(tmp), args.capi_cases, args.seed, env=env, memory_limit=limit)
    for name, r in reports.items():
        print(f"{name}: {r.outcomes} in {r.seconds:.1f} s; {len(r.findings)} finding(s)")
        for cid, what in sorted(r.findings.items()):
            print(f"  {cid}: {what}")
    return 1 if any(r.findings for r in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
