"""bhvit_small at 224, batch 1, in the browser (the demo page's WebAssembly SIMD runtime in headless Chromium,
one thread) against the native runtime on one thread, AVX2 and portable kernels, on the same machine, file and
model input; per op kind. Random weights (the speed does not depend on them); the logits of the page and the
native runtime are checked bit for bit. Browser and native runs alternate ``--rounds`` times and each side keeps
its best median (a shared machine).

    python benchmarks/bench_web.py --json benchmarks/results/bench_web.json --screenshot docs/web.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import bhvit
import bhvit.runtime as rt
from bhvit.engine.api import pack, save_packed
from bhvit.engine.bench import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import web_browser  # noqa: E402  (tests/web_browser.py: stage, serve and drive the page)


def native(model: rt.Model, x: np.ndarray, isa: str, runs: int) -> dict:
    """Median ms of runs on one thread with isa's kernels, and the mean ms per op kind."""
    rt.set_isa(isa)
    rt.set_num_threads(1)
    model.run(x)
    ms, kinds = [], {}
    for _ in range(runs):
        t0 = time.perf_counter()
        _, seconds = model.run_profiled(x)
        ms.append(1e3 * (time.perf_counter() - t0))
        for k, s in seconds.items():
            kinds[k] = kinds.get(k, 0.0) + 1e3 * s / runs
    return {"median_ms": statistics.median(ms), "kinds": kinds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--screenshot", type=Path, help="also save the page's screenshot (PNG): a classification after the timed runs"
    )
    args = ap.parse_args()
    problem = web_browser.missing()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(1)
        model_path = Path(tmp) / "bhvit_small.bhvp"
        labels = [f"class {i}" for i in range(1000)]
        save_packed(pack(bhvit.create_model("bhvit_small", precision="binary").eval()), model_path, labels=labels)
        site = web_browser.stage(model_path)
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 260), Image.BILINEAR).save(site / "photo.png")
        model = rt.load(model_path)
        best: dict[str, dict] = {}
        with web_browser.serve(site) as url, web_browser.page(url) as page:
            result = page.evaluate(web_browser.CLASSIFY, [None, "photo.png"])
            x = np.asarray(result["input"], dtype=np.float32).reshape(1, *model.input_shape)
            want = model.run(x).ravel()
            got = np.asarray(result["logits"], dtype=np.float32)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), "page and native logits differ"
            for _ in range(args.rounds):
                timed = page.evaluate(web_browser.TIME_RUNS, ["photo.png", args.runs])
                timed["kinds"] = {k: 1e3 * s for k, s in timed["kinds"].items()}
                runs = {"browser_wasm_simd128": timed}
                for isa in ("avx2", "generic"):
                    if isa in rt.available_isas():
                        runs[f"native_{isa}"] = native(model, x, isa, args.runs)
                for name, r in runs.items():
                    if name not in best or r["median_ms"] < best[name]["median_ms"]:
                        best[name] = r
            if args.screenshot:
                page.evaluate(web_browser.CLASSIFY, [None, "photo.png"])
                page.screenshot(path=str(args.screenshot), full_page=True)
            browser_version = page.context.browser.version
    record = {
        "model": "bhvit_small (binary, random weights), 224 px, batch 1, one thread",
        "machine": machine_info(),
        "browser": f"Chromium {browser_version} (headless)",
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after: a shared machine
        "logits_bit_identical": True,
        "ms": {name: round(r["median_ms"], 2) for name, r in best.items()},
        "ratio_browser_vs_native_avx2": round(
            best["browser_wasm_simd128"]["median_ms"] / best["native_avx2"]["median_ms"], 2
        )
        if "native_avx2" in best
        else None,
        "kinds_ms": {name: {k: round(v, 3) for k, v in r["kinds"].items()} for name, r in best.items()},
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        tmp_json = args.json.with_suffix(".tmp")
        tmp_json.write_text(text + "\n")
        tmp_json.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
