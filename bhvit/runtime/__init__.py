"""Run packed BHViT files without PyTorch: numpy in, numpy out, through ``libbhvit_runtime`` (its C API).

>>> import numpy as np, bhvit.runtime as rt
>>> model = rt.load("tiny.bhvp")              # validates the whole file (docs/packed-format.md §7)
>>> model.input_shape, model.num_classes       # ((3, 224, 224), 1000)
>>> model.cost                                 # Cost(activation_bytes=..., weight_bytes=..., binary_macs=..., ...)
>>> logits = model.run(images)                 # (B, 3, 224, 224) float32, normalised -> (B, 1000)
>>> model.predict("photo.jpg", top_k=3)       # a path, PIL image or uint8 (H, W, 3) array of any size:
[('sneaker', 0.91), ('sandal', 0.05), ('bag', 0.02)]  # the file's preprocessing and labels
>>> with rt.Model("tiny.bhvp") as m: ...       # the same load; the native model is freed at the block's end
>>> rt.set_num_threads(2)
>>> big = rt.load("huge.bhvp", limits=rt.default_limits(binary_macs=10**12))  # a model beyond the defaults

A load refuses a file whose program needs more than its :class:`Limits` (header size, activation memory and
multiply-accumulates per image; docs/packed-format.md §7) with a :class:`PackedFormatError` naming the numbers
and the limit to raise. ``run`` refuses images holding NaN or Inf and raises ``ValueError`` when the logits are
not finite.

Importing this module and running a model import neither torch nor the rest of bhvit's training code
(``tests/runtime`` checks ``sys.modules``). ``BHVIT_RUNTIME_LIB=/path/libbhvit_runtime.so`` selects another
build of the library (e.g. one from ``cmake -S runtime -B build``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from bhvit.runtime.errors import PackedFormatError

__all__ = [
    "Cost",
    "Limits",
    "Model",
    "PackedFormatError",
    "available",
    "available_isas",
    "default_limits",
    "get_num_threads",
    "isa",
    "load",
    "load_bytes",
    "set_isa",
    "set_num_threads",
    "top_k_classes",
]

ERR_LEN = 1024
MAX_IMAGE_PIXELS = 2**25  # pixels of an image predict() and prepare() take (the native bhvit_run_rgb8's limit)
_lib_handle: ctypes.CDLL | None = None


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a load accepts (``bhvit_limits``): the JSON header's bytes and, per image, activation bytes and
    binary and float multiply-accumulates. :func:`default_limits` gives the defaults, which pass every
    BHViT at 224 and 448 px."""

    header_bytes: int
    activation_bytes: int
    binary_macs: int
    float_macs: int


@dataclasses.dataclass(frozen=True)
class Cost:
    """What a loaded model costs (``bhvit_cost``): activation bytes per image (a batch of B allocates B
    times this), bytes held for weights, and binary and float multiply-accumulates per image."""

    activation_bytes: int
    weight_bytes: int
    binary_macs: int
    float_macs: int


class _CLimits(ctypes.Structure):
    _fields_ = [(f.name, ctypes.c_uint64) for f in dataclasses.fields(Limits)]


class _CCost(ctypes.Structure):
    _fields_ = [(f.name, ctypes.c_uint64) for f in dataclasses.fields(Cost)]


def _library() -> ctypes.CDLL:
    """The loaded library with argument and result types declared (loaded once)."""
    global _lib_handle
    if _lib_handle is None:
        from bhvit.runtime.paths import find_library

        _lib_handle = _declare(ctypes.CDLL(str(find_library())))  # RuntimeLibraryError says how to build it
    return _lib_handle


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    c_char_p, c_int, c_size_t, c_void_p = ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
    f32p, intp = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
    pixels = [c_void_p, ctypes.POINTER(ctypes.c_uint8), c_int, c_int, c_size_t, f32p, c_char_p, c_size_t]
    sigs = {
        "bhvit_load": (c_void_p, [c_char_p, c_char_p, c_size_t]),
        "bhvit_load_memory": (c_void_p, [c_void_p, c_size_t, c_char_p, c_size_t]),
        "bhvit_default_limits": (_CLimits, []),
        "bhvit_load_ex": (c_void_p, [c_char_p, ctypes.POINTER(_CLimits), c_char_p, c_size_t]),
        "bhvit_load_memory_ex": (c_void_p, [c_void_p, c_size_t, ctypes.POINTER(_CLimits), c_char_p, c_size_t]),
        "bhvit_get_cost": (c_int, [c_void_p, ctypes.POINTER(_CCost)]),
        "bhvit_input_dims": (c_int, [c_void_p, intp, intp, intp]),
        "bhvit_num_classes": (c_int, [c_void_p]),
        "bhvit_run": (c_int, [c_void_p, f32p, c_int, f32p, c_char_p, c_size_t]),
        "bhvit_run_rgb8": (c_int, pixels),
        "bhvit_run_grey8": (c_int, pixels),
        "bhvit_preprocess_rgb8": (c_int, pixels),
        "bhvit_preprocess_grey8": (c_int, pixels),
        "bhvit_metadata": (c_char_p, [c_void_p, c_char_p]),
        "bhvit_preprocess": (c_int, [c_void_p, f32p, f32p, intp, c_char_p, c_size_t]),
        "bhvit_label": (c_char_p, [c_void_p, c_int]),
        "bhvit_set_num_threads": (None, [c_int]),
        "bhvit_get_num_threads": (c_int, []),
        "bhvit_isa": (c_char_p, []),
        "bhvit_isas": (c_char_p, []),
        "bhvit_set_isa": (c_int, [c_char_p, c_char_p, c_size_t]),
        "bhvit_profile_kinds": (c_int, [c_void_p, ctypes.POINTER(c_char_p), c_int]),
        "bhvit_run_profiled": (
            c_int,
            [c_void_p, f32p, c_int, f32p, ctypes.POINTER(ctypes.c_double), c_int, c_char_p, c_size_t],
        ),
        "bhvit_free": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def available() -> bool:
    """Whether the native runtime library loads."""
    try:
        _library()
    except OSError:
        return False
    return True


def _check(status: int, err: ctypes.Array, error: type[Exception] = ValueError) -> None:
    if status != 0:
        raise error(err.value.decode("utf-8", "replace") or "the runtime reported an error")


class Model:
    """A loaded packed model. ``run(images)``: (B, C, H, W) float32, already normalised -> (B, num_classes);
    ``ValueError`` for images holding NaN or Inf (naming image, channel, row and column) and for logits that
    are not finite. ``input_shape``, ``num_classes``, ``labels``, ``preprocess``; ``cost``: its :class:`Cost`.

    Thread-safe: any number of threads may call :meth:`run` on one model at once (the native calls run in
    parallel; each computes in buffers of its own and gives the bits of the same call made alone).
    :meth:`close` waits for the calls in progress, and calls after it raise ``ValueError``. A context manager:
    ``with Model("m.bhvp") as m:`` closes it at the end of the block."""

    def __init__(self, path: str | os.PathLike, limits: Limits | None = None) -> None:
        """Loads and validates a version-2 packed file (``bhvit pack`` writes them) within ``limits`` (None: the
        defaults). A missing path is ``FileNotFoundError``; a file that is not a packed model, or whose program
        needs more than the limits, is :class:`PackedFormatError` naming the problem."""
        raw = _native_path(path)
        c_limits = _c_limits(limits)
        err = ctypes.create_string_buffer(ERR_LEN)
        handle = _library().bhvit_load_ex(raw, c_limits, err, ERR_LEN)
        if not handle:
            raise PackedFormatError(err.value.decode("utf-8", "replace"))
        self._attach(handle, os.fsdecode(raw))

    @classmethod
    def _from_handle(cls, handle: int, source: str) -> Model:
        """A model around a native handle loaded elsewhere (:func:`load_bytes`)."""
        model = cls.__new__(cls)
        model._attach(handle, source)
        return model

    def _attach(self, handle: int, source: str) -> None:
        """Takes ownership of the native model ``handle`` (freed by :meth:`close`) and reads its shape, classes,
        labels, preprocessing and cost."""
        self._handle = ctypes.c_void_p(handle)
        self.source = source
        self._calls = 0  # native calls in progress (under _lock); close() waits for them
        self._lock = threading.Condition()
        lib = _library()
        c, h, w = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        err = ctypes.create_string_buffer(ERR_LEN)
        if lib.bhvit_input_dims(self._handle, ctypes.byref(c), ctypes.byref(h), ctypes.byref(w)) != 0:
            raise PackedFormatError(f"{source}: cannot read the input shape")
        self.input_shape: tuple[int, int, int] = (c.value, h.value, w.value)
        self.num_classes: int = lib.bhvit_num_classes(self._handle)
        mean, std = (ctypes.c_float * c.value)(), (ctypes.c_float * c.value)()
        resize = ctypes.c_int()
        status = lib.bhvit_preprocess(self._handle, mean, std, ctypes.byref(resize), err, ERR_LEN)
        _check(status, err, PackedFormatError)
        self.preprocess: dict[str, Any] = {"mean": list(mean), "std": list(std), "resize": resize.value}
        labels = [lib.bhvit_label(self._handle, i) for i in range(self.num_classes)]
        self.labels: list[str] | None = None if labels and labels[0] is None else [s.decode("utf-8") for s in labels]
        cost = _CCost()
        if lib.bhvit_get_cost(self._handle, ctypes.byref(cost)) != 0:
            raise PackedFormatError(f"{source}: cannot read the model's cost")
        self.cost = Cost(*(int(getattr(cost, f.name)) for f in dataclasses.fields(Cost)))

    @contextlib.contextmanager
    def _open_handle(self) -> Any:
        """The native handle for one call; the model cannot be freed until the call has returned."""
        with self._lock:
            if not self._handle:
                raise ValueError(f"{self.source}: the model is closed")
            self._calls += 1
        try:
            yield self._handle
        finally:
            with self._lock:
                self._calls -= 1
                if self._calls == 0:
                    self._lock.notify_all()

    def metadata(self, key: str) -> Any:
        """A metadata entry of the file as parsed JSON (``config``, ``preprocess``, ``labels``), None if absent;
        :class:`PackedFormatError` if the entry is not JSON."""
        with self._open_handle() as handle:
            raw = _library().bhvit_metadata(handle, key.encode())
        if raw is None:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
            raise PackedFormatError(f"{self.source}: metadata {key!r} is not valid JSON ({exc})") from None

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits (B, num_classes) for images (B, C, H, W) (a single (C, H, W) image is taken as B = 1)."""
        return self._run(images, None)

    __call__ = run

    def run_profiled(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """``run(images)`` and the seconds this call spent per operation kind, plus ``total``."""
        lib = _library()
        with self._open_handle() as handle:
            n = lib.bhvit_profile_kinds(handle, None, 0)
            kinds = (ctypes.c_char_p * n)()
            lib.bhvit_profile_kinds(handle, kinds, n)
        seconds = (ctypes.c_double * n)()
        logits = self._run(images, seconds)
        times = {k.decode(): float(v) for k, v in zip(kinds, seconds)}
        times["total"] = sum(times.values())
        return logits, times

    def _run(self, images: np.ndarray, seconds: ctypes.Array | None) -> np.ndarray:
        x = self._batch(images)
        out = np.empty((x.shape[0], self.num_classes), dtype=np.float32)
        err = ctypes.create_string_buffer(ERR_LEN)
        f32p = ctypes.POINTER(ctypes.c_float)
        lib = _library()
        with self._open_handle() as handle:
            args = (handle, x.ctypes.data_as(f32p), x.shape[0], out.ctypes.data_as(f32p))
            if seconds is None:
                status = lib.bhvit_run(*args, err, ERR_LEN)
            else:
                status = lib.bhvit_run_profiled(*args, seconds, len(seconds), err, ERR_LEN)
        _check(status, err)
        return out

    def _batch(self, images: np.ndarray) -> np.ndarray:
        """images as a contiguous float32 (B, C, H, W) array of this model's input shape."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            c, h, w = self.input_shape
            raise ValueError(
                f"expected images of shape (B, {c}, {h}, {w}) with B >= 1, got {tuple(np.shape(images))}; "
                f"resize the input to {h}x{w} (this packed model's input size)"
            )
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"expected real-valued images, got dtype {x.dtype}")
        if x.shape[0] > np.iinfo(np.int32).max:
            raise ValueError("batch too large: run at most 2**31 - 1 images per call")
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, images: Any, top_k: int = 5) -> list[Any]:
        """The ``top_k`` classes of images of any size, best first: ``[(label, probability), ...]`` for one
        image, one such list per image for a list (or tuple) of them. Labels are the file's, else the class
        index as a string; probabilities are the softmax of the logits (in float64).

        An image is a path (decoded by Pillow as ``bhvit predict`` decodes it: at most 2**25 decoded pixels, a
        large JPEG decoded at 1/2, 1/4 or 1/8 scale when that still covers the resized size), a PIL image of
        any mode, or a uint8 numpy array ``(H, W, 3)`` (RGB) or ``(H, W)`` (grey). PIL images are read as
        training reads its images (:func:`bhvit.data.images.to_rgb8`: alpha composited over black, 16-bit and
        float images scaled to 8 bits). The file's preprocessing (resize, centre crop, normalisation) is then
        the native ``bhvit_run_rgb8`` / ``bhvit_run_grey8``: the same code a C program calls, equal to the
        pixel to Pillow's bicubic resize. A bad image raises ``ValueError`` naming it (for a list: the first
        bad one); thread-safe as :meth:`run`."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r}: expected a whole number >= 1")
        batch = isinstance(images, (list, tuple))
        results = []
        for item in images if batch else [images]:
            logits = self._native_8bit(item, "run")
            results.append([(label, p) for _, label, p in top_k_classes(logits[None], top_k, self.labels)[0]])
        return results if batch else results[0]

    def prepare(self, images: Any) -> np.ndarray:
        """The model input ``(B, C, H, W)`` float32 of an image or a list of images (as :meth:`predict` takes
        them) through the file's preprocessing (``bhvit_preprocess_rgb8``); ``run(prepare(x))`` gives the
        logits :meth:`predict` ranks."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("no images given")
        return np.stack([self._native_8bit(item, "preprocess") for item in items])

    def _native_8bit(self, item: Any, entry: str) -> np.ndarray:
        """One image through ``bhvit_{entry}_rgb8`` or ``_grey8``: logits (num_classes,) or the model input
        (C, H, W)."""
        pixels, source = _pixels(item, self)
        channels = "grey8" if pixels.ndim == 2 else "rgb8"
        shape = (self.num_classes,) if entry == "run" else self.input_shape
        out = np.empty(shape, dtype=np.float32)
        err = ctypes.create_string_buffer(ERR_LEN)
        fn = getattr(_library(), f"bhvit_{entry}_{channels}")
        h, w = pixels.shape[:2]
        with self._open_handle() as handle:
            status = fn(
                handle,
                pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                w,
                h,
                pixels.strides[0],
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                err,
                ERR_LEN,
            )
        if status != 0:
            message = err.value.decode("utf-8", "replace") or "the runtime reported an error"
            raise ValueError(f"{source}: {message}" if source else message)
        return out

    def _decode_size(self) -> Any:
        """``bhvit predict``'s resized size (w, h) -> (W', H') of this model, for decoding a large JPEG at a
        reduced scale; None (decode at full size) for a model beyond what ``bhvit predict`` takes."""
        from bhvit.predict import Preprocess

        c, h, w = self.input_shape
        p = self.preprocess
        try:
            return Preprocess(p["resize"], (h, w), tuple(p["mean"]), tuple(p["std"]), grayscale=c == 1).resized_size
        except ValueError:
            return None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Frees the native model after the calls in progress have returned; later calls raise ValueError."""
        with self._lock:
            handle, self._handle = self._handle, ctypes.c_void_p(None)
            self._lock.wait_for(lambda: self._calls == 0)
        if handle:
            _library().bhvit_free(handle)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the library may be gone already
            self.close()


def default_limits(**changes: int) -> Limits:
    """The runtime's default :class:`Limits`, with ``changes`` (e.g. ``binary_macs=10**12``) applied."""
    c = _library().bhvit_default_limits()
    return dataclasses.replace(Limits(*(int(getattr(c, f.name)) for f in dataclasses.fields(Limits))), **changes)


def _c_limits(limits: Limits | None) -> Any:
    """A pointer to the C struct of ``limits`` (NULL for the defaults); each field a whole number >= 1."""
    if limits is None:
        return None
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a bhvit.runtime.Limits (see default_limits()), got {type(limits).__name__}")
    values = []
    for f in dataclasses.fields(Limits):
        v = getattr(limits, f.name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < 2**64:
            raise ValueError(f"limits.{f.name}={v!r}: expected a whole number in 1..2**64-1")
        values.append(v)
    return ctypes.byref(_CLimits(*values))


def _native_path(path: str | os.PathLike) -> bytes:
    """``path`` as bytes for the C API, refused in Python where the C string would mislead: a NUL byte (C
    would read a shorter path); checked to be an existing regular file, which is never opened otherwise (a
    FIFO or a terminal would block)."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError(f"{os.fsdecode(raw)!r}: a path cannot contain a NUL byte")
    try:
        mode = os.stat(raw).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file (check the path)", os.fsdecode(raw)) from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "a directory, not a packed model file", os.fsdecode(raw))
    if not stat.S_ISREG(mode):
        raise OSError(
            errno.EINVAL, "not a regular file (a FIFO, device or socket); pass a .bhvp file", os.fsdecode(raw)
        )
    return raw


def load(path: str | os.PathLike, limits: Limits | None = None) -> Model:
    """``Model(path, limits)``: loads and validates a packed file (see :class:`Model`)."""
    return Model(path, limits)


def load_bytes(data: bytes, source: str = "<memory>", limits: Limits | None = None) -> Model:
    """Like :func:`load`, from a file's bytes."""
    c_limits = _c_limits(limits)
    err = ctypes.create_string_buffer(ERR_LEN)
    handle = _library().bhvit_load_memory_ex(data, len(data), c_limits, err, ERR_LEN)
    if not handle:
        raise PackedFormatError(f"{source}: {err.value.decode('utf-8', 'replace')}")
    return Model._from_handle(handle, source)


def set_num_threads(n: int) -> None:
    """Threads of every later run (process-wide); n < 1: one per core."""
    _library().bhvit_set_num_threads(int(n))


def get_num_threads() -> int:
    return int(_library().bhvit_get_num_threads())


def isa() -> str:
    """The kernel path in use, e.g. ``avx2``."""
    return _library().bhvit_isa().decode()


def available_isas() -> list[str]:
    """The kernel paths this CPU and build offer, best first (ends with ``generic``)."""
    return _library().bhvit_isas().decode().split(",")


def set_isa(name: str) -> None:
    """Chooses a kernel path the CPU supports (``avx512vpopcnt``, ``avx512bw``, ``avx2``, ``popcnt``, ``neon``,
    ``generic``; ``wasm_simd128`` in the WebAssembly build)."""
    err = ctypes.create_string_buffer(ERR_LEN)
    _check(_library().bhvit_set_isa(name.encode(), err, ERR_LEN), err)


def top_k_classes(
    logits: np.ndarray, k: int, labels: Sequence[str] | None = None
) -> list[list[tuple[int, str, float]]]:
    """Per row of logits (B, classes): the k best (index, label, softmax probability in float64), best
    first (the lower index first on ties); a class without a label is named by its index."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [[(int(i), labels[i] if labels else str(i), float(row[i])) for i in idx] for row, idx in zip(p, order)]


def _pixels(item: Any, model: Model) -> tuple[np.ndarray, str]:
    """``item`` (a path, a PIL image or a uint8 array) as uint8 (H, W) grey or (H, W, 3) RGB whose rows are
    each contiguous (a view when the array already is), and a name for messages ("" for in-memory images)."""
    if isinstance(item, np.ndarray):
        return _uint8_rows(item), ""
    from PIL import Image

    if isinstance(item, Image.Image):
        _check_pixels(*item.size)
        return _pil_pixels(item), ""
    if isinstance(item, (str, os.PathLike)):
        from bhvit.predict import load_image

        image = load_image(item, model._decode_size())  # ImageError (a ValueError) names the file
        try:
            return _pil_pixels(image), os.fspath(item)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(item)}: {exc}") from None
    raise TypeError(
        f"expected an image path, a PIL image or a uint8 numpy array (H, W, 3) or (H, W), got {type(item).__name__}"
    )


def _pil_pixels(image: Any) -> np.ndarray:
    """A PIL image as training reads it (bhvit.data.images.to_rgb8), kept grey (H, W) when it is 8-bit grey."""
    if image.mode == "L" and "transparency" not in image.info:
        return np.asarray(image)
    from bhvit.data.images import to_rgb8

    return to_rgb8(image)


def _check_pixels(width: int, height: int) -> None:
    """Refuses an image of more than :data:`MAX_IMAGE_PIXELS`, as the native entries do."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{width}x{height} image is over the limit of {MAX_IMAGE_PIXELS} pixels (2^25); downscale it first"
        )


def _uint8_rows(x: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) or (H, W) array whose pixels are contiguous within each row (copied if not)."""
    if x.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 pixels (0..255), got dtype {x.dtype}; convert them (e.g. np.clip(x * 255, 0, 255)"
            ".round().astype(np.uint8)), or pass normalised float32 (B, C, H, W) input to run()"
        )
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 3)) or min(x.shape[:2], default=0) < 1:
        raise ValueError(f"expected an image of shape (H, W, 3) (RGB) or (H, W) (grey), got {x.shape}")
    _check_pixels(x.shape[1], x.shape[0])  # before a copy: a broadcast view can be far larger than its memory
    row = x.shape[1] * (x.shape[2] if x.ndim == 3 else 1)
    packed = x.strides[-1] == 1 and (x.ndim == 2 or x.strides[1] == 3)
    return x if packed and x.strides[0] >= row else np.ascontiguousarray(x)
