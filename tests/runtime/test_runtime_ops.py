"""The native runtime (libbhvit_runtime, runtime/src) op by op and end to end.

* logits of random small models (some-fp and binary, LSQ and GSB attention) against the float model;
* every float register the program writes against the numpy reference interpreter of the spec
  (bhvit/runtime/reference.py), read back through a program cut after that op;
* determinism across ISAs, thread counts and batch sizes (integer kernels, fixed float order);
* malformed files refused at load with one line naming the field, and bad run arguments refused.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bhvit
import bhvit.runtime as rt
from bhvit.engine.program import write_program_file
from bhvit.runtime import ops, reference

pytestmark = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")

# Logits agree to float rounding: the runtime computes each binary dot product exactly as an integer and the
# float parts in the spec's order, the float model sums ±α terms in float GEMMs; the test variant shows
# ~5e-7 of the largest logit. A sign that flips near 0 would show as a larger error: none occurs here.
REL_TOL = 1e-4


def trained_like(precision: str, attn_quant: str, seed: int = 0) -> torch.nn.Module:
    """bhvit_test with LSQ initialised by a training forward and BN stats, RPReLUs, shifts, LayerScales and
    mixes moved away from their initial (often exactly 0 or 1) values."""
    torch.manual_seed(seed)
    model = bhvit.create_model("bhvit_test", precision=precision, attn_quant=attn_quant)
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=g))
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.2, generator=g)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0, generator=g)
            elif t.is_floating_point() and t.dim() <= 1:
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("runtime_ops")
    out = {}
    for precision in ("some_fp", "binary"):
        for quant in ("lsq", "gsb"):
            model = trained_like(precision, quant)
            out[precision, quant] = (write_program_file(model, root / f"{precision}_{quant}.bhvp"), model)
    return out


def images(n: int, seed: int = 1) -> np.ndarray:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.mark.parametrize("precision", ["some_fp", "binary"])
@pytest.mark.parametrize("quant", ["lsq", "gsb"])
def test_logits_match_the_float_model(files, precision: str, quant: str) -> None:
    path, model = files[precision, quant]
    x = images(6)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = rt.load(path).run(x)
    assert got.shape == want.shape
    off = np.abs(got - want).max(axis=1) > REL_TOL * np.abs(want).max()
    # a larger difference is allowed only for an image whose float forward put a sign input within rounding
    # of 0 (docs/packed-format.md §8): torch's own summation order differs between CPUs (AVX2 vs AVX-512)
    assert not (off & ~near_zero_signs(model, x)).any(), np.abs(got - want).max(axis=1)
    assert off.sum() <= 1 and (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("widths", [(24, 48, 96, 192), (40, 80, 160, 320)])
def test_widths_off_the_fast_paths(widths: tuple[int, ...], tmp_path: Path) -> None:
    """Stage widths whose group width (6, 10, ...) does not divide 64 and whose stem width is not a multiple of
    16 take the general im2col, the compacted conv dots and the stem's channel tail: same logits as the float
    model, and the same bits on every kernel path."""
    torch.manual_seed(0)
    model = bhvit.create_model("bhvit_test", precision="binary", attn_quant="gsb", widths=widths).eval()
    x = images(3)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    packed = rt.load(write_program_file(model, tmp_path / "odd.bhvp"))
    got = packed.run(x)
    off = np.abs(got - want).max(axis=1) > REL_TOL * np.abs(want).max()
    assert not (off & ~near_zero_signs(model, x)).any(), np.abs(got - want).max(axis=1)
    previous = rt.isa()
    try:
        for isa in rt.available_isas():
            rt.set_isa(isa)
            assert np.array_equal(packed.run(x), got), isa
    finally:
        rt.set_isa(previous)


def near_zero_signs(model: torch.nn.Module, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per image: whether some input of a binary layer or of the attention's q/k/v sign lies within ``eps``
    (relative to that tensor's largest magnitude) of 0 in the float model's forward."""
    hit = np.zeros(len(x), dtype=bool)

    def record(value: torch.Tensor) -> None:
        v = value.detach().reshape(len(x), -1).abs()  # windows of an image are consecutive rows (B·nW, L, C)
        hit[:] |= (v.amin(1) <= eps * v.amax(1).clamp(min=1e-30)).numpy()

    handles = []
    for module in model.modules():
        binary = all(getattr(module, q, None) is not None for q in ("weight_quantizer", "input_quantizer"))
        if binary:
            handles.append(module.register_forward_pre_hook(lambda m, a: record(a[0])))
        for branch in ("q", "k", "v"):
            act, move = getattr(module, f"act_{branch}", None), getattr(module, f"move_{branch}2", None)
            if act is not None and move is not None:
                handles.append(act.register_forward_hook(lambda m, a, out, mv=move: record(out + mv)))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return hit


# ---- per op, against the reference interpreter ---------------------------------------------------------
def _save(path: Path, program: dict, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={**meta, "program": json.dumps(program)})
    return path


def _readout(program: dict, k: int, reg: str, shape: tuple[int, int, int], tensors: dict) -> dict:
    """The program cut after op k with register reg (H = W = s <= 16) as its output: a patch_conv of kernel s
    whose weight is a permutation, so output (c·s + y)·s + x is exactly reg[y, x, c]."""
    s, _, c = shape
    eye = np.eye(c * s * s, dtype=np.float32).reshape(c * s * s, c, s, s)
    tensors["readout.weight"] = eye
    ops = [
        *program["ops"][: k + 1],
        {"op": "patch_conv", "in": reg, "out": "readout", "kernel": s, "weight": "readout.weight"},
    ]
    return {**program, "ops": ops, "output": "readout", "num_classes": c * s * s}


@pytest.mark.parametrize("quant", ["lsq", "gsb"])
def test_every_float_register_matches_the_reference(files, tmp_path: Path, quant: str) -> None:
    path = files["binary", quant][0]
    program, tensors, meta = reference.load(path)
    x = images(2)
    _, trace = reference.run(path, x, trace=True)
    checked = set()
    for k, op in enumerate(program["ops"]):
        for reg, want in trace[k].items():
            if op["op"] == "sign_pack" or (op.get("pack") and reg == op["pack"]["out"]):
                continue  # bits: read through the float ops that use them
            b, h, w, c = want.shape
            if h != w or h > 16:
                continue
            cut_tensors = dict(tensors)
            cut = _save(tmp_path / f"cut{k}.bhvp", _readout(program, k, reg, (h, w, c), cut_tensors), cut_tensors, meta)
            got = rt.load(cut).run(x).reshape(b, c, h, w).transpose(0, 2, 3, 1)
            scale = max(float(np.abs(want).max()), 1e-6)
            assert np.abs(got - want).max() <= 1e-5 * scale, (k, op["op"], reg)
            checked.add(op["op"])
    assert checked == set(ops.OPS) - {ops.SIGN_PACK.name}  # every op that writes floats


# ---- determinism -------------------------------------------------------------------------------------------
def test_isas_threads_and_batches_agree(files) -> None:
    """Same bits on every kernel path and thread count, and image i's logits do not depend on its batch (GSB:
    LSQ's gradient-scaled step depends on the batch size by design, §6)."""
    path = files["binary", "gsb"][0]
    model, x = rt.load(path), images(5)
    ref = model.run(x)
    previous_isa, previous_threads = rt.isa(), rt.get_num_threads()
    isas = rt.available_isas()
    try:
        for isa in isas:
            rt.set_isa(isa)
            for n in (1, 2):
                rt.set_num_threads(n)
                assert np.array_equal(model.run(x), ref), (isa, n)
    finally:
        rt.set_isa(previous_isa)
        rt.set_num_threads(previous_threads)
    assert np.array_equal(model.run(x[:1]), ref[:1])  # buffers of batch 5 reused
    assert np.array_equal(model.run(x[2:5]), ref[2:5])
    assert "generic" in isas


def test_profile_names_the_op_kinds(files) -> None:
    model = rt.load(files["binary", "lsq"][0])
    _, times = model.run_profiled(images(2))
    assert {
        "patch_conv",
        "affine",
        "sign_pack",
        "bconv",
        "blinear",
        "shift_add",
        "attention.core",
        "mean_tokens",
        "linear",
    } <= set(times)
    assert all(v >= 0 for v in times.values()) and times["total"] > 0


# ---- malformed files ---------------------------------------------------------------------------------------
def _variant(files, tmp_path: Path, edit) -> Path:  # noqa: ANN001
    program, tensors, meta = reference.load(files["binary", "lsq"][0])
    edit(program, tensors)
    return _save(tmp_path / "bad.bhvp", program, tensors, meta)


def _first(program: dict, kind: str) -> dict:
    return next(op for op in program["ops"] if op["op"] == kind)


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(ValueError) as info:
        rt.load(path)
    msg = str(info.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def _set(op: dict, **fields: object) -> None:
    op.update(fields)


def _affine_after_pack(program: dict) -> dict:
    i = next(i for i, op in enumerate(program["ops"]) if op["op"] == "sign_pack")
    return next(op for op in program["ops"][i:] if op["op"] == "affine")


def _plain_bconv(program: dict) -> dict:
    return next(op for op in program["ops"] if op["op"] == "bconv" and not op.get("accumulate"))


def _set_padding_bit(program: dict, tensors: dict) -> None:
    """Sets bit 63 of the first row of a blinear weight with K < 64 (bits K..63 must be 0, §3)."""
    op = next(o for o in program["ops"] if o["op"] == "blinear" and o["in_features"] % 64)
    bits = tensors[op["weight"]].copy()
    bits[0, -1] |= np.uint64(1 << 63)
    tensors["bad.bits"] = bits
    op["weight"] = "bad.bits"


BAD_PROGRAMS = {
    "wrong tensor shape": (
        lambda p, t: _set(_first(p, "blinear"), scale=_first(p, "patch_conv")["weight"]),
        ["(blinear) field 'scale'", "has shape"],
    ),
    "undefined register": (
        lambda p, t: _set(_first(p, "bconv"), **{"in": "nowhere"}),
        ["(bconv) field 'in'", "'nowhere' is not defined"],
    ),
    "field out of range": (lambda p, t: _set(_first(p, "bconv"), stride=0), ["field 'stride'", "1..16"]),
    "huge input": (lambda p, t: _set(p, input=[3, 100000, 32]), ["field 'input'", "1..8192"]),
    "bits where floats": (
        lambda p, t: _set(_affine_after_pack(p), **{"in": _first(p, "sign_pack")["out"]}),
        ["(affine) field 'in'", "holds bits"],
    ),
    "unknown op": (lambda p, t: p["ops"].insert(1, {"op": "conv9"}), ["unknown op 'conv9'"]),
    "unknown field": (lambda p, t: _set(_first(p, "blinear"), scael="x"), ["unknown field 'scael'"]),
    "missing tensor": (lambda p, t: _set(_first(p, "linear"), weight="no.such"), ["'no.such' is not in the file"]),
    "output shape": (lambda p, t: _set(p, num_classes=11), ["program output", "(1, 1, 11)"]),
    "output is input": (lambda p, t: _set(_plain_bconv(p), out=_plain_bconv(p)["in"]), ["also reads"]),
    "accumulate kind": (
        lambda p, t: _set(_first(p, "shift_add"), out=_first(p, "sign_pack")["out"]),
        ["accumulate", "holds bits"],
    ),
    "heads": (lambda p, t: _set(_first(p, "window_attention"), heads=3), ["field 'heads'"]),
    "quant kind": (lambda p, t: _set(_first(p, "window_attention")["quant"], kind="int8"), ["field 'kind'"]),
    "padding bits": (lambda p, t: _set_padding_bit(p, t), ["(blinear) field 'weight'", "padding bits"]),
    "empty tensor": (
        lambda p, t: t.update({_first(p, "blinear")["scale"]: np.zeros(0, np.float32)}),
        ["(blinear) field 'scale'", "has shape [0]"],
    ),
    "NaN tensor": (lambda p, t: t[_first(p, "linear")["weight"]].__setitem__((0, 0), np.nan), ["non-finite"]),
    "no ops": (lambda p, t: _set(p, ops=[]), ["field 'ops'"]),
}


@pytest.mark.parametrize("case", list(BAD_PROGRAMS))
def test_malformed_programs_are_refused(files, tmp_path: Path, case: str) -> None:
    edit, needles = BAD_PROGRAMS[case]
    msg = _refused(_variant(files, tmp_path, edit), *needles)
    assert "bhvit pack" in msg  # the fix


def _tiny(tmp_path: Path, program: dict, tensors: dict[str, np.ndarray]) -> Path:
    meta = {
        "format": "bhvit-packed",
        "format_version": "2",
        "preprocess": json.dumps(
            {"mean": [0.5] * program["input"][0], "std": [0.25] * program["input"][0], "resize": 32}
        ),
    }
    return _save(tmp_path / "tiny.bhvp", program, tensors, meta)


def test_register_size_limit(tmp_path: Path) -> None:
    """A register over 2^30 elements per image is refused at load, before any buffer exists (§7)."""
    ops = [
        {"op": "patch_conv", "in": "input", "out": "x", "kernel": 1, "weight": "w"},
        {"op": "mean_tokens", "in": "x", "out": "y"},
    ]
    tensors = {"w": np.ones((32, 1, 1, 1), np.float32)}
    _refused(
        _tiny(tmp_path, {"input": [1, 8192, 8192], "output": "y", "num_classes": 32, "ops": ops}, tensors),
        "op 0 (patch_conv) field 'out'",
        "exceeds 2^30",
    )
    # the same program on a small image loads and runs: mean of x = the image's mean times each weight
    path = _tiny(tmp_path, {"input": [1, 8, 8], "output": "y", "num_classes": 32, "ops": ops}, tensors)
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    np.testing.assert_allclose(rt.load(path).run(x), np.full((1, 32), 31.5, np.float32))


def _with_header(files, tmp_path: Path, edit) -> Path:  # noqa: ANN001
    raw = Path(files["binary", "lsq"][0]).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header_bytes, data = edit(header, raw[8 + n :])
    path = tmp_path / "bad_header.bhvp"
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


def _entry_edit(field: str, value: object):  # noqa: ANN202
    def edit(header: dict, data: bytes) -> tuple[bytes, bytes]:
        name = next(k for k in header if k != "__metadata__")
        header[name][field] = value
        return json.dumps(header).encode(), data

    return edit


BAD_HEADERS = {
    "huge dims": (_entry_edit("shape", [2**40, 2**40, 2**40]), ["size overflows"]),
    "offsets outside": (_entry_edit("data_offsets", [0, 2**40]), ["outside the data buffer"]),
    "dtype": (_entry_edit("dtype", "F16"), ["dtype must be"]),
    "rank": (_entry_edit("shape", [1, 1, 1, 1, 1]), ["at most 4 dims"]),
    "duplicate key": (lambda h, d: (b'{"a": 1, "a": 2}', d), ["duplicate key"]),
    "deep nesting": (lambda h, d: (b"[" * 100 + b"]" * 100, d), ["nesting deeper than 64"]),
    "bad utf-8": (lambda h, d: (b'{"\xff": 1}', d), ["invalid UTF-8"]),
    "truncated data": (lambda h, d: (json.dumps(h).encode(), d[: len(d) // 2]), ["outside the data buffer"]),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_malformed_containers_are_refused(files, tmp_path: Path, case: str) -> None:
    edit, needles = BAD_HEADERS[case]
    _refused(_with_header(files, tmp_path, edit), *needles)


def test_header_length_beyond_the_file(tmp_path: Path) -> None:
    path = tmp_path / "short.bhvp"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _refused(path, "header length")
    with pytest.raises(FileNotFoundError, match="no such file"):
        rt.load(tmp_path / "missing.bhvp")


def test_run_arguments_are_checked(files) -> None:
    """The C API itself refuses a bad batch or NULL buffers with a message (the Python binding checks first)."""
    from bhvit.runtime import _library

    lib, model = _library(), rt.load(files["binary", "gsb"][0])
    err = ctypes.create_string_buffer(256)
    x = np.zeros((1, 3, 32, 32), np.float32)
    out = np.zeros((1, 10), np.float32)
    f32p = ctypes.POINTER(ctypes.c_float)
    assert lib.bhvit_run(model._handle, x.ctypes.data_as(f32p), 0, out.ctypes.data_as(f32p), err, 256) == -1
    assert b"batch must be >= 1" in err.value
    assert lib.bhvit_run(model._handle, None, 1, out.ctypes.data_as(f32p), err, 256) == -1
    assert b"must not be NULL" in err.value
    assert lib.bhvit_run(None, x.ctypes.data_as(f32p), 1, out.ctypes.data_as(f32p), err, 256) == -1
    assert lib.bhvit_set_isa(b"sse9", err, 256) == -1 and b"use one of" in err.value


def test_bhvit_isa_sets_the_process_path(files) -> None:
    """``BHVIT_ISA``, the process's one kernel-path setting from the environment: applied at the first load, and
    a path this CPU lacks refuses the load with the paths it offers."""
    path = files["binary", "gsb"][0]
    probe = f"import bhvit.runtime as rt; rt.load({str(path)!r}); print(rt.isa(), rt.available_isas())"

    def run(isa: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "BHVIT_ISA": isa}
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)

    done = run("generic")
    assert done.returncode == 0 and done.stdout.startswith("generic "), done.stderr
    assert done.stdout.strip().endswith("'generic']") and rt.isa() in rt.available_isas()
    refused = run("sse9")
    assert refused.returncode != 0
    assert "BHVIT_ISA=sse9 is not available on this CPU/build; use one of: " in refused.stderr
