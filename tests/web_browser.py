"""The demo page in headless Chromium, for the browser test (tests/web/test_browser.py) and
benchmarks/bench_web.py: builds and stages the site (scripts/web.sh --no-serve), serves it on 127.0.0.1 and drives
the page through window.bhvit with Playwright (the system's Chromium, no browser download)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
INSTALL = (
    "apt-get install -y --no-install-recommends emscripten chromium fonts-liberation cmake nodejs && "
    "pip install playwright"
)


def missing() -> str | None:
    """What the browser test lacks (with the install command), or None."""
    for tool in ("emcmake", "cmake", "node"):
        if shutil.which(tool) is None:
            return f"needs {tool}: {INSTALL}"
    if not Path(CHROMIUM).exists():
        return f"needs {CHROMIUM}: {INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"needs Playwright: {INSTALL}"
    return None


def stage(model: Path | None = None) -> Path:
    """Builds the WebAssembly runtime and stages the page (with model.bhvp when given); the site's folder."""
    args = ["bash", str(ROOT / "scripts" / "web.sh"), "--no-serve"] + ([str(model)] if model else [])
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"scripts/web.sh failed:\n{run.stderr[-3000:]}")
    return Path(run.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serves site on 127.0.0.1 (a free port) while open, with scripts/web.sh's headers; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def end_headers(self) -> None:  # cross-origin isolated, as scripts/web.sh serves: a microsecond clock
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def page(url: str) -> Iterator[object]:
    """A headless Chromium page at url, once the page's window.bhvit is ready (runtime and default model)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1100, "height": 760})
            pg.goto(url)
            pg.wait_for_function("window.bhvit && window.bhvit.ready", timeout=120_000)
            yield pg
        finally:
            browser.close()


# In the page: load a model by URL (optional), classify an image by URL; the model input, logits and times.
CLASSIFY = """async ([modelUrl, imageUrl]) => {
  if (modelUrl) {
    const bytes = new Uint8Array(await (await fetch(modelUrl)).arrayBuffer());
    window.bhvit.loadModel(bytes, modelUrl);
  }
  const blob = await (await fetch(imageUrl)).blob();
  const r = await window.bhvit.classify(blob);
  return { input: Array.from(r.input), logits: Array.from(r.logits), ms: r.ms, seconds: r.seconds,
           isa: window.bhvit.runtime.isa() };
}"""

# In the page: the loaded model's latency over n runs of one input after one warm-up (median ms) and the
# mean seconds per op kind.
TIME_RUNS = """async ([imageUrl, n]) => {
  const blob = await (await fetch(imageUrl)).blob();
  const input = (await window.bhvit.classify(blob)).input;
  const model = window.bhvit.model;
  model.run(input);
  const ms = [], kinds = {};
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const { seconds } = model.run(input);
    ms.push(performance.now() - t0);
    for (const [k, s] of Object.entries(seconds)) kinds[k] = (kinds[k] ?? 0) + s / n;
  }
  ms.sort((a, b) => a - b);
  return { median_ms: ms[n >> 1], min_ms: ms[0], kinds };
}"""
