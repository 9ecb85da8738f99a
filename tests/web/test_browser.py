"""The demo page in headless Chromium (slow: builds the WebAssembly runtime): it classifies PNG images with a
bhvit_test model and with bhvit_small (random weights), and its logits are bit-identical to the native runtime's
on the same file and model input; a bad model file shows the runtime's message and a non-image a clear line.
A missing toolchain, browser or Playwright skips with the install command."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import support
import torch
import web_browser  # tests/web_browser.py
from PIL import Image

import bhvit
import bhvit.runtime as rt
from bhvit.engine.api import pack, save_packed
from bhvit.predict import Preprocess

pytestmark = pytest.mark.slow


def packed(model: torch.nn.Module, path: Path, labels: list[str] | None = None) -> Path:
    save_packed(pack(model.eval()), path, labels=labels)
    return path


def image(path: Path, w: int, h: int, seed: int) -> Path:
    """A smooth random RGB picture (PNG: decoded exactly by both Pillow and the browser)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path)
    return path


def check_same_logits(result: dict, model_path: Path, png: Path) -> None:
    """The page's logits are the native runtime's on its input, and its input (the runtime's bhvit_preprocess_rgb8
    in the page) is bhvit.predict's (Pillow's) bit for bit: the browser decodes a PNG exactly."""
    native = rt.load(model_path)
    x = np.asarray(result["input"], dtype=np.float32).reshape(1, *native.input_shape)
    got = np.asarray(result["logits"], dtype=np.float32)
    want = native.run(x).ravel()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), np.abs(got - want).max()
    mean, std, resize = (native.preprocess[k] for k in ("mean", "std", "resize"))
    c, h, w = native.input_shape
    pillow = Preprocess(resize=resize, crop=(h, w), mean=tuple(mean), std=tuple(std), grayscale=c == 1)(Image.open(png))
    assert np.array_equal(x[0].view(np.uint32), pillow.view(np.uint32)), np.abs(x[0] - pillow).max()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = web_browser.missing()
    if problem:
        pytest.skip(problem)
    tmp = tmp_path_factory.mktemp("web")
    test_model = support.randomized()
    labels = [f"class {i}" for i in range(test_model.num_classes)]
    site = web_browser.stage(packed(test_model, tmp / "test.bhvp", labels))
    torch.manual_seed(1)
    packed(bhvit.create_model("bhvit_small", precision="binary"), site / "small.bhvp")
    image(site / "a.png", 97, 61, 0)
    image(site / "b.png", 300, 260, 1)
    rgba = np.asarray(Image.open(site / "a.png").convert("RGBA")).copy()
    rgba[..., 3] = np.random.default_rng(2).integers(0, 256, rgba.shape[:2], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(site / "translucent.png")
    (site / "bad.bhvp").write_bytes((site / "model.bhvp").read_bytes()[:1000])
    (site / "notes.png").write_text("not an image")
    return site


def test_page_matches_native_runtime(site: Path) -> None:
    with web_browser.serve(site) as url, web_browser.page(url) as page:
        assert page.evaluate("window.bhvit.runtime.isa()") == "wasm_simd128"
        assert page.text_content("#error") == ""
        result = page.evaluate(web_browser.CLASSIFY, [None, "a.png"])
        check_same_logits(result, site / "model.bhvp", site / "a.png")
        assert "class " in page.text_content("#top5") and "blinear" in page.text_content("#kinds")
        assert "Latency:" in page.text_content("#latency")
        result = page.evaluate(web_browser.CLASSIFY, [None, "translucent.png"])  # colour times alpha, as Pillow
        check_same_logits(result, site / "model.bhvp", site / "translucent.png")

        result = page.evaluate(web_browser.CLASSIFY, ["small.bhvp", "b.png"])
        check_same_logits(result, site / "small.bhvp", site / "b.png")

        # a truncated model: the runtime's message on the page, and the page keeps working
        page.evaluate(
            "async () => { const b = new Uint8Array(await (await fetch('bad.bhvp')).arrayBuffer());"
            "try { window.bhvit.loadModel(b, 'bad.bhvp'); } catch (e) { document.getElementById('error')"
            ".textContent = 'Error: ' + e.message; } }"
        )
        assert "bhvit_load_memory" in page.text_content("#error")
        # a file that is not an image, picked through the page's input
        page.set_input_files("#image-file", str(site / "notes.png"))
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "is not an image this browser can decode" in page.text_content("#error")
        result = page.evaluate(web_browser.CLASSIFY, [None, "b.png"])  # still the bhvit_small model
        check_same_logits(result, site / "small.bhvp", site / "b.png")


def test_screenshot_is_current(site: Path, tmp_path: Path) -> None:
    """The page renders its result table (the README's screenshot is made the same way: docs/web.png)."""
    with web_browser.serve(site) as url, web_browser.page(url + "?model=small.bhvp") as page:
        page.set_input_files("#image-file", str(site / "b.png"))
        page.wait_for_function("document.querySelectorAll('#top5 tr').length === 5")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path, ignore_errors=True)
