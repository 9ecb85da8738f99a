"""Hostile packed files and images (issue 19): small inputs that buy a large cost, and bad values.

Each generator returns a :class:`Hostile`: the bytes of a version-2 file written without torch (a program
by hand, numpy tensors) and what a reader must do with it: ``refuse`` it at load with a message holding
``needle``, ``load`` it (within the memory bound of docs/packed-format.md §7), or load it and refuse the
``run`` with ``needle``. :func:`corpus` lists them all, sized as the issue measured them, for a fuzz harness;
the tests in test_hostile_files.py load each in a subprocess and check the ending, its time and its memory.

    many ops on one tensor   800 blinear ops sharing one 1 MiB weight (827 MB at load before sharing); 99,996
                             of them (about 100 GB before), over the binary multiply-accumulate limit
    huge header              a legal file padded to a 99 MB header with empty tensors: over the default
                             header limit; with the limit raised, within the memory bound
    side^6 attention         64 x 64 input, window-1 attention: nW L^2 C grows as side^6 (> 60 s, 1.27 GB)
    many live registers      49,999 registers live at once (the slot planner was quadratic)
    tiny ops                 99,999 ops of 50 header bytes each: the most per-op memory per header byte
    many geometries          one binary weight read as bconv with 29 group counts (29 converted layouts)
    huge weights             3e38 weights: the logits overflow to Inf
    overlapping tensors      two tensors on the same bytes
    non-finite images        NaN, +Inf, -Inf pixels at known positions (:func:`nonfinite_images`)
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

PREPROCESS = {"resize": 1}
MIB = 1 << 20


def load_memory_bound(file_bytes: int, header_bytes: int) -> int:
    """The bound of docs/packed-format.md §7 on the memory a load adds: the file, 8 x its JSON header,
    16 x its data buffer (the converted weights' limit) and 16 MiB."""
    data_bytes = file_bytes - 8 - header_bytes
    return file_bytes + 8 * header_bytes + 16 * data_bytes + 16 * MIB


@dataclass(frozen=True)
class Hostile:
    """A hostile file and the ending a reader owes it: ``refuse`` (at load), ``load`` or ``run`` (loads; the
    run is refused). ``needle``: a substring of the error; ``run_input``: the pixel value of the images a run
    uses (all pixels equal)."""

    name: str
    data: bytes
    expect: str
    needle: str = ""
    run_input: float = 1.0


def container(
    program: dict,
    tensors: dict[str, np.ndarray],
    *,
    offsets: dict[str, tuple[int, int]] | None = None,
    extra_entries: int = 0,
    header_bytes: int = 0,
) -> bytes:
    """A version-2 file: ``| u64 N | N bytes of JSON header | data |`` with the program, ``tensors`` laid out
    back to back (U64 first, so every tensor is aligned), ``offsets`` overriding a tensor's data_offsets,
    ``extra_entries`` empty F32 tensors ``pad0000000..`` and the header padded with spaces to at least
    ``header_bytes`` (and to a multiple of 8)."""
    meta = {
        "format": "bhvit-packed",
        "format_version": "2",
        "program": json.dumps(program, separators=(",", ":")),
        "preprocess": json.dumps(
            {"mean": [0.0] * program["input"][0], "std": [1.0] * program["input"][0], **PREPROCESS}
        ),
    }
    header: dict = {"__metadata__": meta}
    body = bytearray()
    for name in sorted(tensors, key=lambda n: tensors[n].dtype != np.uint64):
        arr = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.uint64): "U64"}[arr.dtype]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [len(body), len(body) + arr.nbytes]}
        body += arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    for name, span in (offsets or {}).items():
        header[name]["data_offsets"] = list(span)
    text = json.dumps(header, separators=(",", ":"))
    if extra_entries:
        entry = '"pad%07d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
        text = text[:-1] + "," + ",".join(entry % i for i in range(extra_entries)) + "}"
    raw = text.encode()
    raw += b" " * (max(header_bytes - len(raw), 0) + (-max(header_bytes, len(raw)) % 8))
    return struct.pack("<Q", len(raw)) + raw + bytes(body)


def _f32(*shape: int, value: float = 1.0) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def _zero_bits(rows: int, k: int) -> np.ndarray:
    return np.zeros((rows, (k + 63) // 64), dtype=np.uint64)


def shared_weight(n_ops: int, k: int = 8192, n: int = 1024) -> Hostile:
    """``n_ops`` blinear ops on one (1, 1, k) map, all naming one [n, k/64] weight (1 MiB at the defaults),
    accumulating into one register: each op costs n k binary multiply-accumulates."""
    ops = [
        {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw"},
        {"op": "sign_pack", "in": "x", "out": "xb"},
    ]
    lin = {"op": "blinear", "in": "xb", "out": "y", "in_features": k, "out_features": n, "weight": "w", "scale": "s"}
    ops += [lin] + [{**lin, "accumulate": True}] * (n_ops - 1)
    ops.append({"op": "mean_tokens", "in": "y", "out": "p"})
    program = {"input": [1, 1, 1], "output": "p", "num_classes": n, "ops": ops}
    tensors = {"pw": _f32(k, 1, 1, 1, value=0.5), "w": _zero_bits(n, k), "s": _f32(n, value=1e-3)}
    macs = n_ops * n * k
    over = macs > 200_000_000_000
    return Hostile(
        f"{n_ops} blinear ops share one {n * k // 8} byte weight",
        container(program, tensors),
        "refuse" if over else "load",
        "binary multiply-accumulates" if over else "",
    )


def huge_header(header_bytes: int = 99_000_000) -> Hostile:
    """A legal two-op file whose header is filled to ``header_bytes`` with empty tensors (62 bytes of JSON
    each: the entries that cost a reader the most memory per header byte)."""
    program = {
        "input": [1, 1, 1],
        "output": "p",
        "num_classes": 2,
        "ops": [
            {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw"},
            {"op": "mean_tokens", "in": "x", "out": "p"},
        ],
    }
    base = len(container(program, {"pw": _f32(2, 1, 1, 1)})) - 8 - 8  # its header, less the 8 data bytes
    entries = max((header_bytes - base) // len(',"pad0000000":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'), 0)
    data = container(program, {"pw": _f32(2, 1, 1, 1)}, extra_entries=entries, header_bytes=header_bytes)
    over = header_bytes > 16 * MIB  # the default limit
    return Hostile(
        f"a {header_bytes} byte header of {entries} empty tensors",
        data,
        "refuse" if over else "load",
        "header_bytes" if over else "",
    )


def attention(side: int = 64, window: int = 1, channels: int = 4) -> Hostile:
    """A side x side map through one window attention: nW = (side/window)² windows of L = window² + nW tokens
    cost nW L² C binary and nW L² float multiply-accumulates: side⁶ for window 1 (64: 1.1e12 and 6.9e10)."""
    c = channels
    branch = lambda n: {  # noqa: E731
        "move": f"{n}.move",
        "weight": f"{n}.w",
        "scale": "one",
        "rprelu": {"slope": "one", "b1": "zero", "b2": "zero"},
        "move2": "zero",
    }
    op = {
        "op": "window_attention",
        "in": "x",
        "out": "y",
        "window": window,
        "heads": 1,
        "pool_padding": 0,
        "pool_alpha": "half",
        "token_norm": {"weight": "one", "bias": "zero", "eps": 1e-5},
        "q": branch("q"),
        "k": branch("k"),
        "v": branch("v"),
        "score_divisor": 2.0,
        "quant": {"kind": "gsb", "alpha": "alpha", "weights": "gw", "thresholds": [0.5, 0.7, 0.9]},
        "ctx": {"scale": "one", "bias": "zero", "rprelu": {"slope": "one", "b1": "zero", "b2": "zero"}},
        "mix": "half",
    }
    program = {
        "input": [c, side, side],
        "output": "p",
        "num_classes": c,
        "ops": [
            {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw"},
            op,
            {"op": "mean_tokens", "in": "y", "out": "p"},
        ],
    }
    tensors = {
        "pw": np.eye(c, dtype=np.float32).reshape(c, c, 1, 1),
        "one": _f32(c),
        "zero": _f32(c, value=0.0),
        "half": _f32(c, value=0.5),
        "alpha": _f32(1),
        "gw": _f32(3, value=0.25),
    }
    for n in "qkv":
        tensors[f"{n}.move"] = _f32(c, value=0.0)
        tensors[f"{n}.w"] = np.array([[0b0101]] * c, dtype=np.uint64)
    n_w = (side // window) ** 2
    length = window * window + n_w
    over = 4 * n_w * length * length * c + 3 * n_w * length * c * c > 200_000_000_000
    return Hostile(
        f"{side}x{side} map, window {window} attention",
        container(program, tensors),
        "refuse" if over else "load",
        "binary multiply-accumulates" if over else "",
    )


def many_live_registers(n: int = 49_999) -> Hostile:
    """n registers defined one after another and all read at the end (n slots live at once)."""
    ops = [{"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw"}]
    ops += [{"op": "affine", "in": "x", "out": f"r{i}", "bias": "b"} for i in range(n)]
    ops += [{"op": "affine", "in": f"r{i}", "out": f"r{i}", "bias": "b"} for i in range(n)]
    ops += [{"op": "mean_tokens", "in": f"r{n - 1}", "out": "p"}]
    program = {"input": [1, 1, 1], "output": "p", "num_classes": 1, "ops": ops}
    return Hostile(f"{n} registers live at once", container(program, {"pw": _f32(1, 1, 1, 1), "b": _f32(1)}), "load")


def tiny_ops(n: int = 99_999) -> Hostile:
    """The most ops a program may have, each as short as an op can be (mean_tokens, 50 bytes of header)."""
    ops = [{"op": "patch_conv", "in": "input", "out": "a", "kernel": 1, "weight": "pw"}]
    ops += [{"op": "mean_tokens", "in": "ab"[i % 2], "out": "ba"[i % 2]} for i in range(n)]
    program = {"input": [1, 1, 1], "output": "ba"[(n - 1) % 2], "num_classes": 1, "ops": ops}
    return Hostile(f"{n} tiny ops", container(program, {"pw": _f32(1, 1, 1, 1)}), "load")


def many_geometries(channels: int = 5040) -> Hostile:
    """One [channels, 1] binary weight read by 1x1 bconv ops with every group count that keeps a group's
    channels within one word (29 for 5040): each is one more converted layout of the same bytes."""
    groups = [g for g in range(1, channels + 1) if channels % g == 0 and channels // g <= 64]
    ops = [
        {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw"},
        {"op": "sign_pack", "in": "x", "out": "xb"},
    ]
    conv = {"op": "bconv", "in": "xb", "in_channels": channels, "out_channels": channels, "kernel": [1, 1]}
    conv.update({"stride": 1, "padding": 0, "dilation": 1, "weight": "w", "scale": "s"})
    ops += [{**conv, "out": "y", "groups": g, "accumulate": i > 0} for i, g in enumerate(groups)]
    ops.append({"op": "mean_tokens", "in": "y", "out": "p"})
    program = {"input": [1, 1, 1], "output": "p", "num_classes": channels, "ops": ops}
    tensors = {"pw": _f32(channels, 1, 1, 1), "w": _zero_bits(channels, 64), "s": _f32(channels)}
    return Hostile(
        f"one weight in {len(groups)} bconv geometries", container(program, tensors), "refuse", "different shapes"
    )


def huge_weights(value: float = 3e38) -> Hostile:
    """patch_conv and linear weights of ``value``: finite in the file, the logits overflow to Inf."""
    program = {
        "input": [1, 2, 2],
        "output": "logits",
        "num_classes": 3,
        "ops": [
            {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw"},
            {"op": "mean_tokens", "in": "x", "out": "p"},
            {"op": "linear", "in": "p", "out": "logits", "weight": "lw"},
        ],
    }
    tensors = {"pw": _f32(4, 1, 1, 1, value=value), "lw": _f32(3, 4, value=value)}
    return Hostile(f"weights of {value:g}", container(program, tensors), "run", "not finite")


def overlapping_tensors() -> Hostile:
    """A patch_conv whose bias lies on the same bytes as its weight."""
    program = {
        "input": [1, 1, 1],
        "output": "p",
        "num_classes": 4,
        "ops": [
            {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "pw", "bias": "pb"},
            {"op": "mean_tokens", "in": "x", "out": "p"},
        ],
    }
    data = container(program, {"pw": _f32(4, 1, 1, 1), "pb": _f32(4)}, offsets={"pb": (0, 16)})
    return Hostile("bias on the weight's bytes", data, "refuse", "overlap")


GENERATORS: dict[str, Callable[[], Hostile]] = {
    "shared_weight_800": lambda: shared_weight(800),
    "shared_weight_99996": lambda: shared_weight(99_996),
    "huge_header": huge_header,
    "attention_side6": attention,
    "many_live_registers": many_live_registers,
    "tiny_ops": tiny_ops,
    "many_geometries": many_geometries,
    "huge_weights": huge_weights,
    "overlapping_tensors": overlapping_tensors,
}


def corpus() -> Iterator[Hostile]:
    """Every hostile file at the sizes of issue 19 (made one at a time: the huge header is 99 MB)."""
    for make in GENERATORS.values():
        yield make()


def nonfinite_images(shape: tuple[int, int, int], batch: int = 3) -> Iterator[tuple[str, np.ndarray, tuple]]:
    """(name, finite images but for one value, its (image, channel, y, x)) for NaN, +Inf and -Inf."""
    c, h, w = shape
    for i, value in enumerate((np.nan, np.inf, -np.inf)):
        x = np.random.default_rng(i).standard_normal((batch, c, h, w), dtype=np.float32)
        at = (batch - 1 - i % batch, c - 1, h // 2, w - 1)
        x[at] = value
        yield f"{value}", x, at


# ---- the probe: one file in a fresh process -----------------------------------------------------------------
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def probe(path: str, limits: dict[str, int], run_input: float | None) -> dict:
    """Loads ``path`` (and runs one image of ``run_input`` pixels when given) in this process; returns the
    ending (``refused``, ``loaded``, ``run refused``, ``ran``), the error, the load's CPU and wall seconds and
    the memory the load added at its peak (VmHWM, reset before the load where the kernel allows, less the RSS
    before it)."""
    import bhvit.runtime as rt

    assert rt.available()
    lims = rt.default_limits(**limits) if limits else None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    before, cpu, wall = _status("VmRSS"), time.process_time(), time.perf_counter()
    out: dict = {"ending": "loaded", "error": ""}
    try:
        model = rt.load(path, limits=lims)
    except rt.PackedFormatError as exc:
        out.update(ending="refused", error=str(exc))
    out.update(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall, peak=_status("VmHWM") - before)
    if out["ending"] == "loaded" and run_input is not None:
        try:
            model.run(np.full((1, *model.input_shape), run_input, np.float32))
            out["ending"] = "ran"
        except ValueError as exc:
            out.update(ending="run refused", error=str(exc))
    return out


if __name__ == "__main__":  # python hostile_files.py FILE LIMITS_JSON RUN_INPUT_JSON: one JSON line
    print(json.dumps(probe(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))))
