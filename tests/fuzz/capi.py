"""The C API corpus: direct ctypes calls of libbhvit_runtime (runtime/include/bhvit_runtime.h) on the seed files.

NULL pointers, NULL and short error buffers (bytes past errlen must stay untouched), bad batches, ISA names,
label indices, metadata keys, profile sizes, thread counts; valid calls must give the seeds' logits. A call that
breaks its contract is a :class:`CapiError` (outcome WRONG); any other exception (ERROR) or a crash is a finding.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.driver import MEMORY_LIMIT, Report, emit, limit_memory, run_workers, worker_argv
from tests.fuzz.program import file_parts

KNOWN_ISAS = ("avx512vpopcnt", "avx512bw", "avx2", "popcnt", "neon", "wasm_simd128", "generic")
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

    header, _, program = file_parts(path.read_bytes())
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


def _refused(lib, handle: int | None, err, errlen: int, call: str) -> str:  # noqa: ANN001
    """A load that must have failed: no model, and a message within errlen."""
    if handle:
        lib.bhvit_free(handle)
        raise CapiError(f"{call} loaded a model")
    _check_err(err, errlen, True)
    return "REFUSED"


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
    return _refused(lib, lib.bhvit_load(path, err, errlen), err, errlen, f"bhvit_load({path!r:.60})")


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
    return _refused(lib, handle, err, errlen, f"bhvit_load_memory of {size} hostile bytes")


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
    if rng.random() < 0.2:  # a non-finite pixel: refused with a message, no logits written
        images.flat[rng.randrange(images.size)] = rng.choice([np.nan, np.inf, -np.inf])
        _expect(_run(lib, m, images) is None, "bhvit_run accepted a non-finite pixel")
        return "REFUSED"
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


MAX_PIXELS = 2**25  # bhvit_run_rgb8's limit on width x height
IMAGE_SIDES = [-(2**31), -1, 0, 1, 2, 3, 7, 31, 32, 33, 100, 257, 2**13, 2**15, 2**25, 2**31 - 1]


def capi_images(lib, rng: random.Random, models: list[Loaded], tmp: Path) -> str:  # noqa: ANN001
    """bhvit_run_rgb8/grey8 and bhvit_preprocess_rgb8/grey8 on images of hostile sizes and strides (the buffer
    always holds what the sizes promise, or is refused before it could be read): an image within the limits
    runs, its finite logits equal bhvit_run of bhvit_preprocess's input, and nothing is written past the
    outputs; any other is refused with a message and writes nothing."""
    import ctypes

    import numpy as np

    m = rng.choice(models)
    channels = rng.choice([1, 3])
    entry = "rgb8" if channels == 3 else "grey8"
    width, height = rng.choice(IMAGE_SIDES), rng.choice(IMAGE_SIDES)
    if rng.random() < 0.5:  # mostly small valid images
        width, height = rng.randint(1, 300), rng.randint(1, 300)
    if width >= 1 and height >= 1 and width * height <= MAX_PIXELS and channels * width * height > 64 << 20:
        width, height = min(width, 2**12), min(height, 2**12)  # valid but not worth allocating here
    row = channels * width
    # honest strides (a row, or padded), or ones the runtime must refuse before reading (shorter than a row)
    stride = row + rng.choice([0, 0, 1, 64]) if rng.random() < 0.85 or row < 1 else rng.choice([0, row - 1])
    valid = width >= 1 and height >= 1 and width * height <= MAX_PIXELS and stride >= row
    need = stride * (height - 1) + row if valid else rng.choice([0, 16])
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, max(need, 1), dtype=np.uint8)
    u8p = ctypes.POINTER(ctypes.c_uint8)
    buf = None if rng.random() < 0.05 else pixels.ctypes.data_as(u8p)
    valid = valid and buf is not None
    c, h, w = m.shape
    image = np.full(c * h * w + 8, np.float32(-1234.5), np.float32)
    logits = np.full(m.classes + 4, np.float32(-1234.5), np.float32)
    f32p = ctypes.POINTER(ctypes.c_float)
    err, errlen = _errlen(rng)
    args = (width, height, stride)
    status = getattr(lib, f"bhvit_preprocess_{entry}")(m.handle, buf, *args, image.ctypes.data_as(f32p), err, errlen)
    _check_err(err, errlen, status != 0)
    _expect(bool((image[c * h * w :] == np.float32(-1234.5)).all()), "preprocess wrote past the model input")
    status2 = getattr(lib, f"bhvit_run_{entry}")(m.handle, buf, *args, logits.ctypes.data_as(f32p), None, 0)
    _expect(bool((logits[m.classes :] == np.float32(-1234.5)).all()), "run_rgb8 wrote past the logits")
    if m.shape[0] not in (1, 3):
        valid = False
    _expect(
        (status == 0) == valid == (status2 == 0),
        f"{entry} {width}x{height} stride {stride}: status {status}, {status2}",
    )
    if not valid:
        _expect(bool((image == np.float32(-1234.5)).all()), "a refused image wrote the model input")
        return "REFUSED"
    _expect(bool(np.isfinite(image[: c * h * w]).all()), "non-finite model input from 8-bit pixels")
    want = _run(lib, m, image[: c * h * w].reshape(1, c, h, w))
    _expect(want is not None and np.array_equal(want[0], logits[: m.classes]), "run_rgb8 != run(preprocess_rgb8)")
    return "RETURNED"


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
    capi_images,
    capi_images,
]


def capi_worker(seed_dir: Path, seed: int, start: int, count: int, memory_limit: int) -> None:
    """Runs C API cases ``start..count`` (case i uses Random(f"{seed}-{i}")) on the seeds of seed_dir."""
    import bhvit.runtime as rt

    limit_memory(memory_limit)
    lib = rt._library()
    models = [_load_seed(lib, p) for p in sorted(seed_dir.glob("seed*.bhvp"))]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(start, count):
            rng = random.Random(f"{seed}-{i}")
            case = rng.choice(CAPI_CASES)
            emit(f"START {i:05d} {case.__name__}")
            try:
                emit(f"END {i:05d} {case(lib, rng, models, Path(tmp))} {case.__name__}")
            except CapiError as err:
                emit(f"END {i:05d} WRONG {case.__name__}: {err}")
            except Exception as err:  # noqa: BLE001 (any other type is a finding)
                emit(f"END {i:05d} ERROR {case.__name__}: {type(err).__name__}: {err}")


def run_capi(
    seed_dir: Path,
    count: int,
    seed: int = 0,
    timeout: float = 120.0,
    env: dict | None = None,
    memory_limit: int = MEMORY_LIMIT,
) -> Report:
    """Runs ``count`` C API cases on the seeds in seed_dir (``seed*.bhvp`` of :func:`.driver.build_seeds`)."""
    t0 = time.perf_counter()

    def judge(cid: str, outcome: str, line: str) -> str | None:
        return None if outcome in ("RETURNED", "REFUSED") else line

    argv = worker_argv("capi", seed_dir, seed, count, memory_limit)
    outcomes, findings = run_workers(argv, count, timeout, env, judge)
    return Report(outcomes, findings, time.perf_counter() - t0)
