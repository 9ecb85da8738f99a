"""web/preprocess.mjs (the page's preprocessing, run by Node) gives the model input of bhvit.predict.Preprocess
(Pillow 13) bit for bit: down- and upscaling, odd sizes, either order of Pillow's two passes, the crop-only
resample of extreme aspect ratios, one and three channels, translucent pixels. Skipped without Node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from bhvit.predict import Preprocess

ROOT = Path(__file__).resolve().parents[2]
# Pillow 13 runs the vertical pass first when the height shrinks by more than twice the pixels the width does;
# older Pillow always starts with the horizontal one (the page follows Pillow 13)
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
NODE = shutil.which("node") or shutil.which("nodejs")

# (source width, height, resize, crop side, channels, translucent)
CASES = [
    (97, 61, 36, 32, 3, False),  # downscale, odd sizes
    (20, 13, 36, 32, 3, False),  # upscale
    (32, 32, 32, 32, 3, False),  # no resize at all
    (64, 50, 40, 28, 1, False),  # luma
    (50, 70, 36, 32, 3, True),  # premultiplied alpha
    (61, 200, 36, 32, 3, False),  # the height shrinks most: Pillow 13 runs the vertical pass first
    (3, 2000, 256, 224, 3, False),  # 256 x 170667 resized pixels: only the crop is resampled
]

DRIVER = """
import { readFileSync, writeFileSync } from "node:fs";
import { preprocess } from "%s";
const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const c of cases) {
  const data = new Uint8ClampedArray(readFileSync(c.pixels));
  const x = preprocess({ data, width: c.w, height: c.h }, c.spec);
  writeFileSync(c.out, Buffer.from(x.buffer));
}
"""


@pytest.mark.skipif(NODE is None, reason="needs Node.js: apt-get install -y nodejs")
def test_preprocess_matches_pillow(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cases, expected = [], []
    for n, (w, h, resize, side, channels, translucent) in enumerate(CASES):
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        if not translucent:
            rgba[..., 3] = 255
        image = Image.fromarray(rgba, "RGBA") if translucent else Image.fromarray(rgba[..., :3].copy(), "RGB")
        pre = Preprocess(
            resize=resize, crop=(side, side), mean=mean[:channels], std=std[:channels], grayscale=channels == 1
        )
        expected.append(pre(image))
        (tmp_path / f"{n}.rgba").write_bytes(rgba.tobytes())
        spec = {"channels": channels, "height": side, "width": side, "resize": resize}
        spec |= {"mean": [float(np.float32(v)) for v in mean[:channels]]}
        spec |= {"std": [float(np.float32(v)) for v in std[:channels]]}
        cases.append(
            {"pixels": str(tmp_path / f"{n}.rgba"), "w": w, "h": h, "spec": spec, "out": str(tmp_path / f"{n}.f32")}
        )
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "driver.mjs").write_text(DRIVER % (ROOT / "web" / "preprocess.mjs").as_uri())
    run = subprocess.run(
        [NODE, str(tmp_path / "driver.mjs"), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for n, want in enumerate(expected):
        if CASES[n][1] > 2 * CASES[n][0] and not PILLOW_13:
            continue  # the tall cases are the vertical-first ones
        got = np.fromfile(tmp_path / f"{n}.f32", dtype=np.float32).reshape(want.shape)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (CASES[n], np.abs(got - want).max())


@pytest.mark.skipif(NODE is None, reason="needs Node.js: apt-get install -y nodejs")
def test_preprocess_refuses_oversized_images(tmp_path: Path) -> None:
    driver = tmp_path / "big.mjs"
    driver.write_text(
        f'import {{ preprocess }} from "{(ROOT / "web" / "preprocess.mjs").as_uri()}";\n'
        "try { preprocess({ data: new Uint8ClampedArray(4), width: 8193, height: 4096 }, "
        "{ channels: 3, height: 4, width: 4, mean: [0, 0, 0], std: [1, 1, 1], resize: 4 }); }\n"
        "catch (e) { console.log(e.message); }\n"
    )
    run = subprocess.run([NODE, str(driver)], capture_output=True, text=True, timeout=60)
    assert "8193x4096" in run.stdout and "over the limit of 33,554,432 pixels" in run.stdout, run.stdout + run.stderr
