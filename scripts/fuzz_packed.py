"""Fuzzing of the packed model format and of the native engine's bindings (issue 10).

Two corpora, each run case by case in worker subprocesses so that a crash is caught and named:

* **format**: packed files made from small valid ones (``bhvit_test``, 32 px, binary and some_fp, LSQ and
  GSB, BatchNorm and LayerNorm) by truncations, byte flips, hostile header and metadata fields (huge,
  negative or mistyped sizes, strides, paddings, dilations, groups, depths, image sizes), missing and
  extra tensors, wrong dtypes and shapes, non-finite values. Each case must end in a successful load and
  forward (logits of shape (B, num_classes)) when the mutation kept the file valid, or a
  ``PackedFormatError``; never another exception, a signal or a hang.
* **native**: direct calls of every binding of ``bhvit.engine._C`` with small arrays and random or
  hostile sizes and geometry arguments; each call must return or raise ValueError.

A worker prints ``START <id>`` before a case and ``END <id> <outcome> <detail>`` after it, flushing both,
so a worker killed by a signal or a timeout names the case it was running; the driver then starts a new
worker at the next case.

    python scripts/fuzz_packed.py --format-cases 2000 --native-cases 5000   # a longer campaign

Under the sanitizer build (scripts/build_sanitized.sh), the driver passes the environment through:
see tests/engine/test_sanitized.py.
"""

from __future__ import annotations

import argparse
import json
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
HOSTILE_INTS = [0, -1, -7, 1, 2, 3, 5, 17, 64, 65, 1000, 4097, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62,
                2**63 - 1, -(2**63)]
OPTIONAL_CONFIG = ("drop_path_rate", "recu")
HOSTILE_VALUES = [*HOSTILE_INTS, 1.5, -0.0, float("inf"), "3", None, True, False, [], [3], {}, "x" * 50]


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


def build_seeds(out: Path) -> list[Path]:
    """Small valid packed files, one per variant of SEED_VARIANTS (with preprocess and labels)."""
    import torch

    import bhvit
    from bhvit import engine

    paths = []
    for i, variant in enumerate(SEED_VARIANTS):
        torch.manual_seed(i)
        model = bhvit.create_model("bhvit_test", **variant).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() <= 1:
                    p.add_(torch.randn_like(p) * 0.1)
        classes = model.config.num_classes
        labels = [f"class {c}" for c in range(classes)] if classes else None
        paths.append(engine.save_packed(engine.pack(model), out / f"seed{i}.bhvp",
                                        preprocess={"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36},
                                        labels=labels))
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
    codes = {np.float32: "F32", np.float64: "F64", np.float16: "F16", np.int32: "I32", np.int64: "I64",
             np.uint64: "U64", np.bool_: "BOOL", np.uint8: "U8"}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.tobytes()
        header[name] = {"dtype": codes[arr.dtype.type], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
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
        return Case(f"config {key} deleted", _meta_json(data, "config", lambda c: {k: v for k, v in c.items()
                                                                                   if k != key}),
                    key in OPTIONAL_CONFIG or key not in config)
    # a plausible value may describe another valid model whose tensors the file happens to hold (GSB heads,
    # window size, pooling): then it must load and run
    return Case(f"config {key}={value!r}", _meta_json(data, "config", lambda c: _set(c, key, value)),
                _plausible(old, value))


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
        meta[key] = rng.choice(["{", "[1,", "nul", "", "\"x\"", "1e999", "[" * 5000 + "]" * 5000, "{\"a\": NaN}"])
        name = f"metadata {key} malformed"
    elif kind == 1:
        key = rng.choice(["config", "layers", "format", "format_version"])
        del meta[key]
        name = f"metadata {key} missing"
    elif kind == 2:
        meta["format_version"] = rng.choice(["2", "0", "1.0", " 1", "x", "99999999999999999999"])
        name = f"format_version {meta['format_version']!r}"
    elif kind == 3:
        meta["preprocess"] = json.dumps(rng.choice([
            {"mean": [0.5] * 2}, {"std": [0.0] * 3}, {"std": [-1, 1, 1]}, {"resize": 100000}, {"resize": 0},
            {"resize": 1.5}, {"mean": "0.5"}, {"mean": [None] * 3}, {"crop": 3}, [1, 2], "x", {"mean": [1e999] * 3}]))
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
        extra = rng.choice(["extra.weight", name + ".copy", "stages.9.blocks.0.mlp.fc1.weight_bits",
                            "stages.0.blocks.0.mixer.convs.0.weight"])
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
        shape = rng.choice([(arr.size,), (1, *arr.shape), arr.shape[:-1] or (0,), (*arr.shape[:-1], arr.shape[-1] + 1)
                            if arr.ndim else (2,), (0,)])
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
    """Runs cases ``start..`` of case_dir (files NNNNN.bhvp), in order."""
    import torch

    from bhvit.engine import load_packed
    from bhvit.engine.fileformat import PackedFormatError

    files = sorted(case_dir.glob("*.bhvp"))[start:]
    for path in files:
        cid = path.stem
        _emit(f"START {cid}")
        try:
            model = load_packed(path)
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
        kwargs = {"scale": opt(nn), "bias": opt(nn), "residual": rng.choice([None, f32(m, 1), f32(m, nn), f32(1),
                                                                              f32(2, m, nn)])}
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
        args = (u64(b, h, w, cw), c, u64(max(min(groups, 8), 0), npg, kwc, 8),
                np.zeros((max(min(cout, 64), 0), taps), np.int32), cout, groups, kh, kwd, *geo)
        return "bconv", lambda: C.bconv(*args, residual=rng.choice([None, f32(1, 4)]))
    if which == 4:
        g, r, s, d = tiny(), tiny(), size(), size()
        ss = max(min(s, 70), 0)
        args = (u64(g, r, ss, (ss + 63) // 64), u64(g, rng.choice([1, (max(min(d, 64), 0) + 7) // 8]),
                                                      (ss + 63) // 64, 8), f32(g, r), s, d)
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
        fn = rng.choice([lambda: C.pack_rows(x, rng.choice([None, f32(x.shape[-1]), f32(3)])),
                         lambda: C.pack_cols_panels(f32(small(), small(), small())),
                         lambda: C.pack_nonzero((x > 0).astype(np.uint8))])
        return "pack", fn
    value = size()
    return "config", rng.choice([lambda: C.set_num_threads(value), lambda: C.set_buffer_cache_mb(value),
                                 lambda: C.nibbles_pay(value, value)])


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
        geo = [rng.choice([1, 2, 3, 7, size()]), rng.choice([0, 1, 2, 5, 40, size()]),
               rng.choice([1, 2, 3, 5, 9, size()])]
        out = rng.choice([None, "right", "wrong"])
        kwargs: dict = {}
        if out is not None:
            oh = [(side + 2 * geo[1] - geo[2] * (k - 1) - 1) // geo[0] + 1 if geo[0] > 0 else 1
                  for side, k in ((h, kh), (w, kw))]
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
    return "bgemm consistent", lambda: C.bgemm(a, bp, n_arg, k_arg, nibbles=nib if g is None else None,
                                               residual=rng.choice([None, gen.standard_normal((m, 1), np.float32)]))


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


# ---- the driver ----------------------------------------------------------------------------------------
@dataclass
class Report:
    """Outcome counts and findings (case id -> what went wrong) of one campaign."""

    outcomes: dict[str, int]
    findings: dict[str, str]
    seconds: float


def _run_workers(argv: list[str], count: int, timeout: float, env: dict | None, judge,  # noqa: ANN001
                 describe=lambda cid: "") -> tuple[dict[str, int], dict[str, str]]:  # noqa: ANN001
    """Runs ``argv + [start]`` until every case of 0..count-1 has ended or has been blamed for a crash."""
    outcomes: dict[str, int] = {}
    findings: dict[str, str] = {}
    start = 0
    while start < count:
        try:
            proc = subprocess.run([*argv, str(start)], capture_output=True, text=True, timeout=timeout, env=env,
                                  cwd=ROOT, check=False)
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
            headline = next((line for line in err.splitlines()
                             if "runtime error:" in line or "ERROR: AddressSanitizer" in line), "")
            findings[cid] = f"CRASH {describe(cid)} {running}: {why}: {headline}\n{err[-1500:]}"
            outcomes["CRASH"] = outcomes.get("CRASH", 0) + 1
            start += 1
    return outcomes, findings


def run_format(seeds: list[Path], count: int, seed: int = 0, timeout: float = 120.0,
               env: dict | None = None, batch: int = 1000) -> Report:
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
            o, f = _run_workers([sys.executable, str(Path(__file__).resolve()), "--format-worker", str(sub)],
                                len(list(sub.glob("*.bhvp"))), timeout, env, judge, lambda cid: names[cid].name)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format-cases", type=int, default=2000)
    p.add_argument("--native-cases", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format-worker", help=argparse.SUPPRESS)
    p.add_argument("--native-worker", nargs=2, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.format_worker:
        format_worker(Path(args.format_worker), int(rest[0]))
        return 0
    if args.native_worker:
        native_worker(int(args.native_worker[0]), int(rest[0]), int(args.native_worker[1]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        seeds = build_seeds(Path(tmp))
        reports = {"format": run_format(seeds, args.format_cases, args.seed, env=dict(os.environ)),
                   "native": run_native(args.native_cases, args.seed, env=dict(os.environ))}
    for name, r in reports.items():
        print(f"{name}: {r.outcomes} in {r.seconds:.1f} s; {len(r.findings)} finding(s)")
        for cid, what in sorted(r.findings.items()):
            print(f"  {cid}: {what}")
    return 1 if any(r.findings for r in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
