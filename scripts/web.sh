#!/usr/bin/env bash
# Builds the WebAssembly runtime and the demo page, and serves it on 127.0.0.1.
#
#   scripts/web.sh [--port N] [--no-serve] [MODEL.bhvp]
#
# Needs emscripten (emcmake, em++), cmake and python3: apt-get install -y --no-install-recommends emscripten
# cmake. The runtime is built in build-wasm/ from runtime/CMakeLists.txt (the one build description; emscripten's
# toolchain through emcmake), the page is staged in build-wasm/site/ (web/*, bhvit_runtime.mjs and .wasm, and
# MODEL.bhvp as model.bhvp, which the page loads at start; without it the page asks for a file). --no-serve
# stops after staging and prints the site's folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=8000
SERVE=1
MODEL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --no-serve) SERVE=0; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    -*) echo "scripts/web.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) MODEL="$1"; shift ;;
  esac
done
for tool in emcmake cmake python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "scripts/web.sh: $tool not found: apt-get install -y --no-install-recommends emscripten cmake python3" >&2
    exit 1
  fi
done
if [ -n "$MODEL" ] && [ ! -f "$MODEL" ]; then
  echo "scripts/web.sh: $MODEL: no such file (a packed model: bhvit pack CHECKPOINT -o MODEL.bhvp)" >&2
  exit 1
fi
# Node from NodeSource (not Debian's) finds emscripten's JavaScript dependencies (acorn) only here
export NODE_PATH="${NODE_PATH:-/usr/share/nodejs}"
BUILD="$ROOT/build-wasm"
mkdir -p "$BUILD"
if ! { emcmake cmake -S "$ROOT/runtime" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$BUILD" --target bhvit_web -j "$(nproc)"; } >"$BUILD/web-build.log" 2>&1; then
  tail -n 30 "$BUILD/web-build.log" >&2
  echo "scripts/web.sh: the WebAssembly build failed (log: $BUILD/web-build.log)" >&2
  exit 1
fi
SITE="$BUILD/site"
rm -rf "$SITE.tmp" && mkdir -p "$SITE.tmp"
cp "$ROOT"/web/*.html "$ROOT"/web/*.mjs "$BUILD/bhvit_runtime.mjs" "$BUILD/bhvit_runtime.wasm" "$SITE.tmp/"
if [ -n "$MODEL" ]; then cp "$MODEL" "$SITE.tmp/model.bhvp"; fi
rm -rf "$SITE" && mv "$SITE.tmp" "$SITE"
if [ "$SERVE" = 0 ]; then
  echo "$SITE"
  exit 0
fi
echo "serving $SITE on http://127.0.0.1:$PORT/ (Ctrl-C stops)"
# cross-origin isolated (COOP + COEP): the page's clock then has microsecond steps instead of 100 us
exec python3 - "$SITE" "$PORT" <<'PY'
import functools, http.server, sys

class Isolated(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

handler = functools.partial(Isolated, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
PY
