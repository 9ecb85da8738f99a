"""8-bit images through a packed file's own preprocessing (issue 20, item 4).

The native entries (bhvit_preprocess_rgb8 / _grey8, bhvit_run_rgb8 / _grey8) equal Pillow's bicubic resize,
centre crop and normalisation to the pixel, for images up and down, tiny, huge and of extreme aspect ratios;
bhvit_run_rgb8 gives the logits of Model.run on the same pixels preprocessed by Pillow and numpy; hostile
arguments end in one clear error line. Model.predict takes paths, PIL images, uint8 arrays and lists of them
(RGB and grey models), agrees with `bhvit predict --packed`, is a context manager and runs in threads.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_build import LABELS, PROGRESSIVE_REFUSAL, jpeg_header, pillow_input, small_model

import bhvit
import bhvit.runtime as rt
from bhvit.engine.program import write_program_file
from bhvit.predict import MAX_JPEG_COEFFICIENT_BYTES, Preprocess, jpeg_coefficient_bytes, predict_images

pytestmark = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")

ROOT = Path(__file__).resolve().parents[2]
SIZES = [  # (width, height): tiny, up, around the crop, down (both pass orders), extreme aspect ratios
    (1, 1), (1, 2), (2, 1), (3, 5), (7, 9), (20, 27), (31, 33), (32, 32), (35, 36), (36, 36), (37, 36),
    (45, 162), (162, 45), (100, 300), (300, 100), (64, 60), (60, 64), (640, 480), (480, 640), (1000, 37),
    (37, 1000), (1, 500), (500, 1), (2, 3000), (3000, 2), (97, 211), (211, 97), (255, 254),
]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def models(folder: Path) -> dict[str, Path]:
    """RGB and grey 32 x 32 models (resize 36), an RGB 32 x 64 one (resize 41: the crop is wider than the
    resized height's image is, so sides are clamped) and one without labels."""
    return {
        "rgb": small_model(folder / "rgb.bhvp", 3, resize=36),
        "grey": small_model(folder / "grey.bhvp", 1, resize=36, seed=1),
        "wide": small_model(folder / "wide.bhvp", 3, resize=41, seed=2, img_size=(32, 64)),
        "unlabelled": small_model(folder / "plain.bhvp", 3, resize=32, seed=3, labels=None),
    }


def _expected(m: rt.Model, image: Image.Image | np.ndarray) -> np.ndarray:
    c, h, w = m.input_shape
    return pillow_input(image, c, m.preprocess, (h, w))


# ---- the native preprocessing against Pillow ------------------------------------------------------------


@pytest.mark.parametrize("name", ["rgb", "grey", "wide"])
def test_preprocessing_equals_pillow_to_the_pixel(name: str, models: dict[str, Path]) -> None:
    """Float equality of (v / 255 - mean) / std is equality of the 8-bit pixels v (the map is one to one)."""
    rng = np.random.default_rng(len(name))
    sizes = SIZES + [tuple(int(v) for v in rng.integers(1, 400, 2)) for _ in range(20)]
    with rt.load(models[name]) as m:
        for w, h in sizes:
            for shape in ((h, w, 3), (h, w)):  # RGB and grey sources
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                got = m.prepare(pixels)[0]
                np.testing.assert_array_equal(got, _expected(m, pixels), err_msg=f"{w}x{h} {shape}")


def test_large_and_strided_images_equal_pillow(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(9)
    big = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)  # 12 MP: downscaled about 83 times
    tall = rng.integers(0, 256, (20000, 1), dtype=np.uint8)  # upscaled to 36 x 720,000
    with rt.load(models["rgb"]) as m:
        np.testing.assert_array_equal(m.prepare(big)[0], _expected(m, big))
        np.testing.assert_array_equal(m.prepare(tall)[0], _expected(m, tall))
        for view in (big[100:900:3, 50:1250], big[::-1, ::-2], big[:400, :600, ::-1]):  # strided, flipped: any layout
            np.testing.assert_array_equal(m.prepare(view)[0], _expected(m, np.ascontiguousarray(view)))


def test_a_huge_resize_costs_only_the_crop(models: dict[str, Path]) -> None:
    """A 1 x 2^25 image resized to a shorter side of 36 would be 1.2 billion pixels tall: only the crop is
    computed (Pillow cannot resize to that size at all)."""
    pixels = np.full((2**25, 1), 200, dtype=np.uint8)
    with rt.load(models["grey"]) as m:
        start = time.perf_counter()
        x = m.prepare(pixels)[0]
        seconds = time.perf_counter() - start
        mean, std = m.preprocess["mean"][0], m.preprocess["std"][0]
    assert seconds < 2.0, f"{seconds:.2f} s for a 1 x 2^25 image"
    np.testing.assert_array_equal(x, np.full((1, 32, 32), (np.float32(200) / 255 - np.float32(mean)) / np.float32(std)))


def test_grey_model_takes_pillows_luma_of_every_colour(folder: Path) -> None:
    """All 2^24 colours through the native RGB -> "L" conversion (a 1-channel model whose resize and crop are
    the identity for 256 x 256 images) against Pillow's convert("L")."""
    path = small_model(folder / "grey256.bhvp", 1, resize=256, img_size=(256, 256))
    rgb = np.ascontiguousarray(np.arange(2**24, dtype=">u4").view(np.uint8).reshape(-1, 4)[:, 1:])  # (R, G, B)
    want = np.asarray(Image.fromarray(rgb.reshape(4096, 4096, 3)).convert("L")).reshape(-1, 256, 256)
    with rt.load(path) as m:
        mean, std = np.float32(m.preprocess["mean"][0]), np.float32(m.preprocess["std"][0])
        lut = (np.arange(256, dtype=np.float32) / np.float32(255) - mean) / std
        got = np.concatenate([m.prepare(block)[:, 0] for block in rgb.reshape(-1, 256, 256, 3)])
    np.testing.assert_array_equal(got, lut[want])


# ---- bhvit_run_rgb8 against Model.run ------------------------------------------------------------------


def _native(
    model: rt.Model, name: str, pixels: np.ndarray, out: np.ndarray, override: dict | None = None
) -> tuple[int, str]:
    """Calls bhvit_<name>(m, pixels, width, height, stride, out, err, errlen) with ``override`` replacing
    arguments; (status, message)."""
    lib = rt._library()
    err = ctypes.create_string_buffer(512)
    args = {
        "m": model._handle,
        "pixels": pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        "stride": pixels.strides[0],
        "out": out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        "err": err,
        "errlen": 512,
    }
    args.update(override or {})
    status = getattr(lib, f"bhvit_{name}")(*args.values())
    return status, err.value.decode()


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_run_rgb8_gives_the_logits_of_run_on_numpy_preprocessing(name: str, models: dict[str, Path]) -> None:
    rng = np.random.default_rng(4)
    with rt.load(models[name]) as m:
        for w, h in [(32, 32), (45, 162), (300, 200), (17, 5)]:
            for shape, entry in (((h, w, 3), "run_rgb8"), ((h, w), "run_grey8")):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                logits = np.empty(m.num_classes, np.float32)
                status, message = _native(m, entry, pixels, logits)
                assert status == 0, message
                np.testing.assert_array_equal(logits, m.run(_expected(m, pixels))[0], err_msg=f"{entry} {w}x{h}")


def test_hostile_arguments_are_one_clear_error(models: dict[str, Path], folder: Path) -> None:
    pixels = np.zeros((8, 8, 3), np.uint8)
    null_u8, null_f32 = ctypes.POINTER(ctypes.c_uint8)(), ctypes.POINTER(ctypes.c_float)()
    cases = {  # (entry, overrides): the message
        ("run_rgb8", "m"): ({"m": None}, "model is NULL"),
        ("run_rgb8", "pixels"): ({"pixels": null_u8}, "pixels is NULL"),
        ("run_rgb8", "logits"): ({"out": null_f32}, "logits must not be NULL"),
        ("preprocess_rgb8", "image"): ({"out": null_f32}, "image must not be NULL"),
        ("run_rgb8", "width 0"): ({"width": 0}, "width and height must be >= 1"),
        ("run_grey8", "height -3"): ({"height": -3}, "width and height must be >= 1"),
        ("run_rgb8", "2^25 + 1"): ({"width": 2**25 + 1, "height": 1}, "over the limit of 33554432 pixels"),
        ("run_rgb8", "40000^2"): ({"width": 40000, "height": 40000}, "over the limit of 33554432 pixels"),
        ("run_rgb8", "stride < 3w"): ({"stride": 23}, "stride 23 is less than a row of 8x8 pixels (24 bytes)"),
        ("run_grey8", "stride < w"): ({"stride": 7}, "stride 7 is less than a row of 8x8 pixels (8 bytes)"),
        ("run_rgb8", "stride overflow"): ({"stride": 2**63}, "reaches past the end of memory"),
    }
    with rt.load(models["rgb"]) as m:
        for (entry, what), (override, reason) in cases.items():
            out = np.full(max(m.num_classes, 3 * 32 * 32), -7.0, np.float32)
            status, message = _native(m, entry, pixels, out, override)
            assert status == -1 and reason in message and message.startswith(f"bhvit_{entry}: "), (what, message)
            assert "\n" not in message and (out == -7.0).all(), what  # nothing written
        assert _native(m, "run_rgb8", pixels, out, {"width": 0, "err": None, "errlen": 0})[0] == -1  # no message buffer
    two = bhvit.create_model("bhvit_test", precision="binary", in_chans=2).eval()
    with rt.load(write_program_file(two, folder / "two.bhvp", preprocess={"resize": 32})) as m:
        status, message = _native(m, "run_rgb8", pixels, np.empty(10, np.float32))
        assert status == -1 and "takes 2-channel images" in message and "bhvit_run" in message


# ---- Model.predict -------------------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like RGB image (smooth, so JPEG keeps it close)."""
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def test_predict_takes_paths_pil_images_arrays_and_lists(models: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = _smooth(rng, 71, 130)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    with rt.load(models["rgb"]) as m:
        top = m.predict(pixels)
        assert len(top) == 5 and all(isinstance(label, str) and 0 < p <= 1 for label, p in top)
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and {lb for lb, _ in top} <= set(LABELS)
        assert m.predict(tmp_path / "x.png") == top == m.predict(str(tmp_path / "x.png"))
        assert m.predict(Image.fromarray(pixels)) == top
        batch = m.predict([pixels, Image.fromarray(pixels[:, :, 0]), tmp_path / "x.png"], top_k=3)
        assert len(batch) == 3 and batch[0] == top[:3] and batch[2] == top[:3]
        assert batch[1] == m.predict(np.repeat(pixels[:, :, :1], 3, axis=2), top_k=3)  # grey: the channel repeated
        assert m.predict((pixels,)) == [top] and m.predict([]) == []
        everything = m.predict(pixels, top_k=50)  # beyond the classes: all of them
        assert sorted(lb for lb, _ in everything) == sorted(LABELS) and abs(sum(p for _, p in everything) - 1) < 1e-9
        probs = rt.top_k_classes(m.run(m.prepare(pixels)), 5, m.labels)[0]
        assert [(lb, p) for _, lb, p in probs] == top  # predict ranks run(prepare(x))
    with rt.load(models["unlabelled"]) as m:
        assert {lb for lb, _ in m.predict(pixels, top_k=10)} == {str(i) for i in range(10)}  # no labels: indices


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_predict_on_odd_sizes_and_modes(name: str, models: dict[str, Path]) -> None:
    rng = np.random.default_rng(2)
    rgba = np.concatenate([_smooth(rng, 50, 40), rng.integers(0, 256, (50, 40, 1), dtype=np.uint8)], axis=2)
    wide16 = (rng.integers(0, 65536, (30, 90))).astype(np.uint16)
    with rt.load(models[name]) as m:
        for w, h in [(1, 1), (3, 500), (500, 3), (33, 31)]:
            assert len(m.predict(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))) == 5
        # modes as training reads them (bhvit.data.images.to_rgb8): alpha over black, 16-bit scaled to 8 bits
        premultiplied = ((rgba[:, :, :3].astype(np.uint16) * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
        assert m.predict(Image.fromarray(rgba)) == m.predict(premultiplied)
        scaled = np.clip(np.rint(wide16 * (255 / 65535)), 0, 255).astype(np.uint8)
        assert m.predict(Image.fromarray(wide16)) == m.predict(scaled)
        palette = Image.fromarray(rgba[:, :, :3]).convert("P")
        assert m.predict(palette) == m.predict(np.asarray(palette.convert("RGB")))


@pytest.mark.parametrize("name", ["rgb", "grey"])
def test_predict_agrees_with_bhvit_predict_packed(name: str, models: dict[str, Path], tmp_path: Path) -> None:
    """`bhvit predict --packed` (Pillow's resize, numpy's normalisation, Model.run) and Model.predict (the
    native entry) give the same classes and probabilities for 8-bit RGB and grey files of any size."""
    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate([(130, 71), (20, 27), (300, 41), (41, 300)]):
        pixels = _smooth(rng, h, w)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels if i % 2 else pixels[:, :, 1]).save(paths[-1])
    Image.fromarray(_smooth(rng, 900, 700)).save(tmp_path / "photo.jpg", quality=90)  # decoded at 1/8 by both
    paths.append(tmp_path / "photo.jpg")
    with rt.load(models[name]) as m:
        c, h, w = m.input_shape
        prep = Preprocess.for_model((h, w), c, m.preprocess)
        cli = predict_images(m.run, paths, prep, 5, m.labels)
        for path, result in zip(paths, cli):
            want = [(t["label"], t["prob"]) for t in result["top"]]
            got = m.predict(path)
            assert [lb for lb, _ in got] == [lb for lb, _ in want], path
            np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-12, err_msg=str(path))


def test_predict_refuses_bad_images_in_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "p.jpg").write_bytes(jpeg_header(13000, 13000, progressive=True))  # 0.5 GB of coefficients
    huge = np.broadcast_to(np.zeros(3, np.uint8), (8000, 8000, 3))  # 192 MB as an array, 24 bytes in memory
    cases = [
        (np.zeros((8, 8, 3), np.float32), ValueError, "expected uint8 pixels"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, r"expected an image of shape \(H, W, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, r"expected an image of shape"),
        (huge, ValueError, "8000x8000 image is over the limit of 33554432 pixels"),
        (tmp_path / "missing.png", ValueError, "missing.png: no such file"),
        (tmp_path / "notes.txt", ValueError, "notes.txt: not an image file"),
        (tmp_path / "p.jpg", ValueError, f"p.jpg: {PROGRESSIVE_REFUSAL}; save it as a baseline JPEG"),
        (tmp_path, ValueError, "is a directory"),
        (42, TypeError, "expected an image path, a PIL image or a uint8 numpy array"),
    ]
    with rt.load(models["rgb"]) as m:
        for image, error, reason in cases:
            with pytest.raises(error, match=reason) as info:
                m.predict(image)
            assert "\n" not in str(info.value)
        for bad in (0, -1, True, 2.5):
            with pytest.raises(ValueError, match="top_k"):
                m.predict(np.zeros((8, 8, 3), np.uint8), top_k=bad)


def test_jpeg_coefficient_bytes_is_libjpegs_buffer() -> None:
    """The progressive JPEG's buffer that bhvit-run and load_image bound, against numbers worked by hand: 8K
    UHD at 4:4:4 (960 x 540 blocks x 3) fits; 4:2:0 rounds each plane to whole MCUs (13 x 13 -> 7 x 7 MCUs of
    2 x 2 luma blocks)."""
    assert jpeg_coefficient_bytes(7680, 4320, [(1, 1)] * 3) == 960 * 540 * 3 * 128 < MAX_JPEG_COEFFICIENT_BYTES
    assert jpeg_coefficient_bytes(100, 100, [(2, 2), (1, 1), (1, 1)]) == (14 * 14 + 2 * 7 * 7) * 128
    assert jpeg_coefficient_bytes(13000, 13000, [(2, 2), (1, 1), (1, 1)]) >> 20 == 484  # PROGRESSIVE_REFUSAL
    assert jpeg_coefficient_bytes(8, 8, [(1, 1)]) == 128


def test_model_is_a_context_manager_and_a_missing_file_is_file_not_found(
    models: dict[str, Path], tmp_path: Path
) -> None:
    with rt.load(models["rgb"]) as m:
        assert len(m.predict(np.zeros((9, 9, 3), np.uint8))) == 5
    with pytest.raises(ValueError, match="the model is closed"):
        m.predict(np.zeros((9, 9, 3), np.uint8))
    with rt.Model(models["rgb"]) as m:
        assert m.predict(np.zeros((9, 9, 3), np.uint8)) == rt.load(models["rgb"]).predict(np.zeros((9, 9, 3), np.uint8))
    for open_model in (rt.load, rt.Model):
        with pytest.raises(FileNotFoundError, match="no such file"), open_model(tmp_path / "missing.bhvp"):
            pass
    (tmp_path / "empty.bhvp").write_bytes(b"")
    with pytest.raises(rt.PackedFormatError):
        rt.Model(tmp_path / "empty.bhvp")


def test_predict_from_threads_gives_the_serial_answers(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(6)
    images = [_smooth(rng, int(rng.integers(20, 200)), int(rng.integers(20, 200))) for _ in range(8)]
    with rt.load(models["rgb"]) as m:
        serial = m.predict(images)
        results: dict[int, object] = {}
        threads = [threading.Thread(target=lambda i=i: results.update({i: m.predict(images[i])})) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(8)] == serial


def test_predict_imports_no_torch(models: dict[str, Path], tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    code = (
        "import sys\nfrom PIL import Image\nimport bhvit.runtime as rt\n"
        f"with rt.load({str(models['rgb'])!r}) as m:\n"
        f"    top = m.predict([{str(tmp_path / 'x.png')!r}, Image.open({str(tmp_path / 'x.png')!r})])\n"
        "assert top[0] == top[1] and len(top[0]) == 5, top\n"
        "bad = [k for k in sys.modules if k == 'torch' or k.startswith('torch.')]\n"
        "sys.exit(f'torch imported: {bad[:3]}' if bad else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
