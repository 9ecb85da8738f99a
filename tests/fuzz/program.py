"""The program-file corpus: small valid packed files (``driver.build_seeds``) mutated, then loaded and run by the
native runtime (docs/packed-format.md, version 2).

Mutations: in the container (truncations, header lengths, bit flips, data_offsets out of range or overlapping,
shapes that overflow, dtypes, invalid UTF-8, deep nesting), in the program (every op field of §5/§6 given a
hostile, mistyped or other-tensor value chosen by its kind in the op table :mod:`bhvit.runtime.ops`; ops removed,
duplicated, moved, renamed; reads before writes; bits/float kind mismatches; input dims, num_classes, output, op
count) and in the metadata. Each case goes through ``bhvit.runtime.load`` or ``load_bytes`` and runs on batch 1
and 2: it must give logits (B, num_classes) where the mutation may have kept the file valid (bit for bit the
seed's logits where the file is equivalent to its seed), or be refused with PackedFormatError / ValueError.
"""

from __future__ import annotations

import json
import math
import random
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bhvit.runtime.ops import (
    AFFINE,
    BCONV,
    BLINEAR,
    BOOL,
    CHOICE,
    FLOAT,
    INT,
    INTS,
    NUMBER,
    NUMBERS,
    OBJECT,
    OPS,
    REGISTER,
    Field,
)
from tests.fuzz.driver import MEMORY_LIMIT, Report, emit, limit_memory, run_workers, worker_argv

HOSTILE_INTS = [0, -1, -7, 1, 2, 3, 5, 17, 64, 65, 1000, 4097, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1]
HOSTILE_INTS += [-(2**63)]
BAD_NAMES = ["", "X", "1a", "a" * 33, "in put", "é", "_x", "x-y"]  # not [a-z][a-z0-9_]{0,31}
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
MAX_OPS = 100_000


@dataclass(frozen=True)
class ProgramCase:
    """One fuzz case: the file's bytes and what must happen: ``expect`` "reject" (PackedFormatError /
    ValueError at load), "either" (a clean refusal, or a load and two runs with logits of the right shape) or
    "same" (a file equivalent to its seed: it must load and give the seed's logits bit for bit).
    ``nonfinite_ok``: the mutation may change float values, so a loaded file may give non-finite logits (a
    flipped exponent bit makes 1e38 weights)."""

    name: str
    data: bytes
    expect: str  # "reject" | "either" | "same"
    nonfinite_ok: bool = False


# ---- the program's register flow (what a reader must check before running), from the op table -----------
def _register_fields(op: dict) -> list[tuple[Field, object]]:
    """(field, value) of an op's register fields, those of its objects (``pack``) included; an optional one only
    where it is set."""
    kind = OPS[op["op"]]
    found = [(f, op.get(f.name)) for f in kind.fields if f.kind == REGISTER]
    for f in kind.fields:
        if f.kind == OBJECT and isinstance(op.get(f.name), dict):
            found += [(g, op[f.name].get(g.name)) for g in f.fields if g.kind == REGISTER]
    return [(f, v) for f, v in found if v is not None or not f.optional]


def _accumulates(op: dict) -> bool:
    return OPS[op["op"]].accumulates or op.get("accumulate") is True


def _reads(op: dict) -> list:
    """Registers an op reads: ``in``, ``residual``, and ``out`` where it accumulates."""
    reads = [v for f, v in _register_fields(op) if not f.writes]
    return [*reads, op.get("out")] if _accumulates(op) else reads


def _writes(op: dict) -> list[tuple[object, str]]:
    """(register, kind) an op defines: ``out``, or with blinear's ``pack`` its bits and means."""
    return [(v, f.holds) for f, v in _register_fields(op) if f.writes]


def flow_broken(program: dict) -> str | None:
    """Why the program's register flow is invalid (a read of an undefined register, a kind mismatch of ``in``,
    an output that is also an input), or None when it may be valid (shapes are left to the runtime)."""
    kinds: dict = {"input": FLOAT}
    for i, op in enumerate(program["ops"]):
        for reg in _reads(op):
            if not isinstance(reg, str) or reg not in kinds:
                return f"op {i} reads {reg!r} before it is written"
        if kinds[op["in"]] != OPS[op["op"]].field("in").holds:
            return f"op {i} reads {kinds[op['in']]} register {op['in']!r}"
        if _accumulates(op) and kinds[op.get("out")] != FLOAT:
            return f"op {i} accumulates into a bits register"
        outs = [reg for reg, _ in _writes(op)]
        if not OPS[op["op"]].in_place and set(outs) & {op.get("in"), op.get("residual")}:
            return f"op {i} writes one of its inputs"
        kinds.update({reg: kind for reg, kind in _writes(op) if isinstance(reg, str)})
    if kinds.get(program.get("output")) != FLOAT:
        return "output is not a float register"
    return None


def _registers(ops: list, upto: int) -> dict[str, str]:
    """Registers defined by ops[:upto] (and ``input``), with their kinds."""
    kinds = {"input": FLOAT}
    for op in ops[:upto]:
        kinds.update({reg: kind for reg, kind in _writes(op) if isinstance(reg, str)})
    return kinds


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


# ---- taking a packed file apart -------------------------------------------------------------------------
def file_parts(data: bytes) -> tuple[dict, bytes, dict]:
    """(safetensors header, data buffer, program) of a packed file."""
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


def _field(op: dict, path: tuple) -> Field:
    """The op table's field at ``path`` of op (for a list element, the list's field)."""
    found = OPS[op["op"]].field_of(op, path)
    assert found is not None, (op["op"], path)  # the packer writes only fields of the table
    return found


def _tensor_sig(header: dict, name: object) -> tuple | None:
    entry = header.get(name) if isinstance(name, str) and name != "__metadata__" else None
    return (entry["dtype"], tuple(entry["shape"])) if isinstance(entry, dict) else None


def _hostile_int(rng: random.Random, old: object) -> tuple[object, str]:
    value = rng.choice([*HOSTILE_INTS, 1.5, "3", None, True, [], {}, 2**64, -(2**64) - 1])
    if value == old and type(value) is type(old):
        value = -12345
    plausible = type(value) is int and 0 <= value <= 64
    return value, "either" if plausible else "reject"


def _hostile_number(rng: random.Random, positive: bool) -> tuple[object, str]:
    """A hostile value for a number that must be finite (a GSB threshold) or finite and > 0 (eps, a divisor)."""
    value = rng.choice([0, 0.0, -1.0, -0.0, 1e-30, 1e30, 3, "1", None, True, float("inf"), float("nan"), []])
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value, "either" if number and (value > 0 or not positive) else "reject"


def _hostile_register(rng: random.Random, f: Field, ops: list, index: int) -> tuple[object, str]:
    value = rng.choice([*BAD_NAMES, 5, None, [], "nowhere", *_registers(ops, index)])
    if value is None and f.optional:
        return value, "either"
    return value, "either" if isinstance(value, str) and value not in BAD_NAMES else "reject"


def _hostile_tensor(rng: random.Random, f: Field, header: dict, old: object) -> tuple[object, str]:
    names = [k for k in header if k != "__metadata__"]
    value = rng.choice([rng.choice(names), rng.choice(names), "missing.tensor", "", None, 7, [old], {"x": old}])
    if value is None:
        return value, "either" if f.optional else "reject"
    same = _tensor_sig(header, value) is not None and _tensor_sig(header, value) == _tensor_sig(header, old)
    return value, "either" if same else "reject"


def _hostile_choice(rng: random.Random, f: Field, old: object, selects: bool) -> tuple[object, str]:
    """Another string for a choice; where the choice selects an object's fields (``quant.kind``) only the old one
    may be valid (the other kind's fields are missing)."""
    value = rng.choice([*f.choices, "relu", "", 5, None, "GELU"])
    if selects:
        return value, "either" if value == old else "reject"
    return value, "either" if value in f.choices or (value is None and f.optional) else "reject"


def _hostile_bool(rng: random.Random, f: Field) -> tuple[object, str]:
    value = rng.choice([True, False, 0, 1, "true", None, []])
    if value is None:
        return value, "either" if f.optional else "reject"
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
    """A hostile value for one op field, by its kind in the op table, and what the reader must do with it."""
    f = _field(op, path)
    if isinstance(old, list):
        return _hostile_list(rng, old)
    if f.kind in (INT, INTS):  # an int, or an element of a list of ints
        return _hostile_int(rng, old)
    if f.kind in (NUMBER, NUMBERS):
        return _hostile_number(rng, positive=f.kind == NUMBER)
    if f.kind == REGISTER:
        return _hostile_register(rng, f, ops, index)
    if f.kind == CHOICE:
        return _hostile_choice(rng, f, old, selects=len(path) > 1 and bool(_field(op, path[:-1]).variants))
    if f.kind == BOOL:
        return _hostile_bool(rng, f)
    return _hostile_tensor(rng, f, header, old)


def mutate_field(rng: random.Random, data: bytes) -> ProgramCase:
    """A hostile value in (or the removal of) one field of one op, §5/§6."""
    header, body, program = file_parts(data)
    index = rng.randrange(len(program["ops"]))
    op = program["ops"][index]
    path, old = rng.choice(_leaves(op))
    if rng.random() < 0.15 and isinstance(path[-1], str):
        _put(op, path, None, delete=True)
        expect = "either" if _field(op, path).optional else "reject"
        name = f"op {index} ({op['op']}) {'.'.join(map(str, path))} removed"
    else:
        value, expect = _field_value(rng, op, path, old, header, program["ops"], index)
        _put(op, path, value)
        name = f"op {index} ({op['op']}) {'.'.join(map(str, path))}={value!r}"[:200]
    if expect == "either" and flow_broken(program):
        expect = "reject"
    return ProgramCase(name, with_program(header, body, program, raw=json.dumps(program)), expect)


def mutate_ops(rng: random.Random, data: bytes) -> ProgramCase:
    """An op removed, duplicated, moved or renamed; a read before the write; a bits/float kind mismatch."""
    header, body, program = file_parts(data)
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
        wrong = [r for r, k in _registers(ops, i).items() if k != OPS[ops[i]["op"]].field("in").holds and r != "input"]
        if wrong:
            ops[i]["in"] = rng.choice(sorted(wrong))
            return ProgramCase(
                f"op {i} ({ops[i]['op']}) reads the wrong kind {ops[i]['in']!r}",
                with_program(header, body, program),
                "reject",
            )
    return ProgramCase("no-op rebuild", with_program(header, body, program), "same")


def mutate_program(rng: random.Random, data: bytes) -> ProgramCase:
    """Hostile top-level program fields: input dims, num_classes, output, ops, nesting, op count."""
    header, body, program = file_parts(data)
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
        new = rng.choice([[], {}, None, "x", [None], [[]], [{"op": AFFINE.name}]])
        return ProgramCase(f"ops {new!r}", with_program(header, body, {**program, "ops": new}), "reject")
    if kind == 4:
        step = {"op": AFFINE.name, "in": program["output"], "out": program["output"], "act": "none"}
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
    if op.get("op") == BCONV.name:
        kh, kw = op["kernel"]
        return kh * kw * op["in_channels"] // op["groups"]
    return op["in_features"] if op.get("op") == BLINEAR.name else rows  # attention q/k/v: [C, ceil(C/64)]


def mutate_tensors(rng: random.Random, data: bytes) -> ProgramCase:
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


def mutate_header(rng: random.Random, data: bytes) -> ProgramCase:
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


def mutate_metadata(rng: random.Random, data: bytes) -> ProgramCase:
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


def mutate_text(rng: random.Random, data: bytes) -> ProgramCase:
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


def mutate_equivalent(rng: random.Random, data: bytes) -> ProgramCase:
    """A file that says the same thing differently: it must load and give the seed's logits exactly."""
    tensors, meta = load_arrays(data)
    header, body, program = file_parts(data)
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
        for op in (op for op in program["ops"] if op["op"] in (BCONV.name, BLINEAR.name)):
            op.update({key: None for key in ("residual", "post", "bias", "rprelu") if key not in op})
            op.setdefault("accumulate", False)
        return ProgramCase("optional fields explicit", with_program(header, body, program), "same")
    for key in rng.sample(["labels", "config", "bit_convention", "zzz"], 2):
        meta.pop(key, None) if key != "zzz" else meta.setdefault(key, "1")
    return ProgramCase(f"metadata {sorted(meta)}", rebuild(tensors, meta), "same")


def mutate_bytes(rng: random.Random, data: bytes) -> ProgramCase:
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


MUTATORS = [
    mutate_field,
    mutate_field,
    mutate_field,
    mutate_ops,
    mutate_ops,
    mutate_program,
    mutate_tensors,
    mutate_header,
    mutate_metadata,
    mutate_text,
    mutate_equivalent,
    mutate_bytes,
    mutate_bytes,
]


def program_cases(seeds: list[Path], count: int, seed: int) -> list[tuple[int, ProgramCase]]:
    """(seed index, case) for ``count`` mutations of the seeds, round robin."""
    rng = random.Random(seed)
    datas = [p.read_bytes() for p in seeds]
    cases = []
    for i in range(count):
        j = i % len(datas)
        case = rng.choice(MUTATORS)(rng, datas[j])
        cases.append((j, ProgramCase(f"#{i} seed{j} {case.name}", case.data, case.expect, case.nonfinite_ok)))
    return cases


# ---- the worker: load, run batch 1 and 2, judge ----------------------------------------------------------
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
    """Runs batch 1 and 2; the outcome: LOADED, NONFINITE (the run refused its non-finite logits), WRONG (shape,
    or non-finite logits returned as a result) or DIFFERENT (from the seed)."""
    import numpy as np

    for batch in (1, 2):
        try:
            logits = model.run(_images(model.input_shape, batch))
        except ValueError as err:
            if "are not finite" not in str(err):
                raise
            return "NONFINITE", f"batch {batch}: {err}"
        if logits.shape != (batch, model.num_classes) or logits.dtype != np.float32:
            return "WRONG", f"logits {logits.shape} {logits.dtype} for batch {batch}"
        if expect_same is not None and not np.array_equal(logits, expect_same[batch]):
            return "DIFFERENT", f"batch {batch}: max |diff| {np.nanmax(np.abs(logits - expect_same[batch]))}"
        if not np.isfinite(logits).all():
            return "WRONG", f"batch {batch}: non-finite logits returned instead of an error"
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
    """Runs cases ``start..`` of case_dir (manifest.json: id -> [seed file, expect]), in order."""
    import bhvit.runtime as rt

    limit_memory(memory_limit)
    manifest = json.loads((case_dir / "manifest.json").read_text())
    seeds: dict[str, dict] = {}
    for k, cid in enumerate(sorted(manifest)[start:]):
        seed, expect = manifest[cid]
        if expect == "same" and seed not in seeds:  # the seed's logits, for files equivalent to it
            model = rt.load(seed)
            seeds[seed] = {b: model.run(_images(model.input_shape, b)) for b in (1, 2)}
        rt.set_num_threads(1 + (start + k) % 2)
        emit(f"START {cid}")
        try:
            outcome, detail = _program_case(
                case_dir / f"{cid}.bhvp", (start + k) % 3 == 0, seeds.get(seed) if expect == "same" else None
            )
            emit(f"END {cid} {outcome} {detail}")
        except Exception as err:  # noqa: BLE001 (any other type is a finding, reported by the driver)
            emit(f"END {cid} ERROR {type(err).__name__}: {err}")


# ---- the campaign ------------------------------------------------------------------------------------------
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
    """Generates ``count`` cases from ``seeds`` and runs them in ``jobs`` parallel chains of workers (``batch``
    cases per chain); the runtime's library is ``bhvit.runtime``'s (BHVIT_RUNTIME_LIB in env)."""
    t0 = time.perf_counter()
    cases = program_cases(seeds, count, seed)
    names = {f"{i:05d}": c for i, c in enumerate(cases)}

    def judge(cid: str, outcome: str, line: str) -> str | None:
        case = names[cid][1]
        return None if _judge_program(case, outcome) else f"{case.name} [{case.expect}]: {line}"

    def chain(sub: Path) -> tuple[dict, dict]:
        return run_workers(
            worker_argv("program", sub, memory_limit),
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
