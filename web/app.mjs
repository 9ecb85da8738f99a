// The demo page (index.html): loads the WebAssembly runtime and a packed model (model.bhvp beside the page, the
// ?model= URL, or a file the user picks), preprocesses a picked or dropped image as the file says (the runtime's
// bhvit_preprocess_rgb8, the same bits as `bhvit predict` on the same decoded pixels), and shows the
// top-5 classes, the latency, the model's size and the time per op kind. Errors are shown as one line.
// window.bhvit exposes {runtime, model, classify} to the browser test (tests/web/test_browser.py).
import createBhvitRuntime from "./bhvit_runtime.mjs";
import { Runtime, topK } from "./bhvit.mjs";

const $ = (id) => document.getElementById(id);
const MAX_FILE_BYTES = 256 << 20; // images larger than this are refused before decoding
const RUNS = 3; // runs per image: the latency and times shown are the median run's
const state = { runtime: null, model: null };

function showError(message) {
  $("error").textContent = message ? `Error: ${message}` : "";
}

function status(text) {
  $("status").textContent = text;
}

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Loads a model from its bytes; the runtime's own message on a bad file. */
function loadModel(bytes, name) {
  const model = state.runtime.load(bytes);
  if (state.model) state.model.free();
  state.model = model;
  // one run on a blank image: the engine compiles the kernels' optimised code on first use (about 200 ms for
  // bhvit_small in Chromium 156), which the latency shown for the user's image should not include
  model.run(new Float32Array(model.channels * model.height * model.width));
  const c = model.cost;
  $("model-info").textContent =
    `${name}: ${model.channels}x${model.height}x${model.width} input, ${model.numClasses} classes, ` +
    `file ${mib(model.fileBytes)}, weights in memory ${mib(c.weightBytes)}, ` +
    `${(c.binaryMacs / 1e9).toFixed(2)} G binary + ${(c.floatMacs / 1e9).toFixed(2)} G float MACs`;
  status("Model loaded: pick or drop an image.");
  window.bhvit.model = model;
  return model;
}

/** Decodes an image file (Blob) to RGBA pixels exactly as stored (no colour management, no premultiplication). */
async function decode(blob) {
  if (blob.size > MAX_FILE_BYTES) {
    throw new Error(`the file is ${mib(blob.size)}, over the page's ${mib(MAX_FILE_BYTES)}`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  } catch {
    throw new Error(`${blob.name || "the file"} is not an image this browser can decode (PNG, JPEG, GIF, WebP, BMP)`);
  }
  const { width, height } = bitmap;
  if (width * height > 2 ** 25) {
    bitmap.close();
    const pixels = (width * height).toLocaleString("en");
    throw new Error(
      `the image is ${width}x${height} (${pixels} pixels), over the limit of 33,554,432 pixels: downscale it first`,
    );
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, width, height, { colorSpace: "srgb" });
}

/**
 * RGB bytes of RGBA pixels, colour multiplied by alpha as Pillow's RGBA -> RGBa conversion rounds it (what
 * `bhvit predict` resamples for a translucent image; an opaque pixel is unchanged).
 */
function toRgb(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    const a = rgba[i + 3];
    for (let c = 0; c < 3; c++) {
      const t = rgba[i + c] * a + 128;
      rgb[j + c] = ((t >> 8) + t) >> 8;
    }
  }
  return rgb;
}

/** Draws the model input (normalised C x H x W) back as an image. */
function drawInput(x, model) {
  const { channels, height, width, preprocess: p } = model;
  const canvas = $("input");
  canvas.width = width;
  canvas.height = height;
  const img = new ImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) {
      const k = channels === 1 ? 0 : c;
      img.data[4 * i + c] = (x[k * width * height + i] * p.std[k] + p.mean[k]) * 255;
    }
    img.data[4 * i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(img, 0, 0);
}

function showResult(model, logits, seconds, ms) {
  const rows = topK(logits, model.labels, 5).map(
    (t) =>
      `<tr><td>${escapeHtml(t.label)}</td><td class="num">${(100 * t.prob).toFixed(1)} %</td>` +
      `<td><span class="bar" style="width:${Math.round(100 * t.prob)}px"></span></td></tr>`,
  );
  $("top5").tBodies[0].innerHTML = rows.join("");
  const total = Object.values(seconds).reduce((a, b) => a + b, 0);
  $("latency").textContent =
    `Latency: ${ms.toFixed(1)} ms, median of ${RUNS} runs (kernels: ${state.runtime.isa()}, one thread)`;
  $("kinds").tBodies[0].innerHTML = Object.entries(seconds)
    .filter(([, s]) => s > 0)
    .sort((a, b) => b[1] - a[1])
    .map(
      ([k, s]) =>
        `<tr><td>${k}</td><td class="num">${(1000 * s).toFixed(2)} ms</td>` +
        `<td class="num">${((100 * s) / total).toFixed(0)} %</td></tr>`,
    )
    .join("");
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Classifies an image Blob with the loaded model: {input, logits, seconds, ms}; shows it on the page. */
async function classify(blob) {
  showError("");
  const model = state.model;
  if (!model) throw new Error("load a model (.bhvp) first");
  const image = await decode(blob);
  const input = model.preprocessRgb8(toRgb(image.data), image.width, image.height);
  // the median of RUNS runs (one run is at the mercy of whatever else the machine does)
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    const out = model.run(input);
    runs.push({ ...out, ms: performance.now() - t0 });
  }
  runs.sort((a, b) => a.ms - b.ms);
  const { logits, seconds, ms } = runs[RUNS >> 1];
  drawInput(input, model);
  showResult(model, logits, seconds, ms);
  status(`Classified ${blob.name || "the image"} (${image.width}x${image.height}).`);
  return { input, logits, seconds, ms };
}

async function guarded(f) {
  try {
    return await f();
  } catch (e) {
    showError(e.message);
    status("");
    return null;
  }
}

function wire() {
  $("model-file").addEventListener("change", (ev) =>
    guarded(async () => {
      const file = ev.target.files[0];
      if (file) loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
    }),
  );
  $("image-file").addEventListener("change", (ev) => guarded(() => ev.target.files[0] && classify(ev.target.files[0])));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = ev.dataTransfer.files[0];
    if (file) guarded(() => classify(file));
  });
}

async function main() {
  window.bhvit = { runtime: null, model: null, classify, loadModel, ready: false };
  wire();
  state.runtime = await Runtime.create(createBhvitRuntime);
  window.bhvit.runtime = state.runtime;
  status(`Runtime ready (kernels: ${state.runtime.isa()}). Pick a model file.`);
  const url = new URLSearchParams(location.search).get("model") ?? "model.bhvp";
  const response = await fetch(url).catch(() => null);
  if (response && response.ok) loadModel(new Uint8Array(await response.arrayBuffer()), url);
}

main()
  .catch((e) => showError(e.message))
  .finally(() => {
    window.bhvit.ready = true;
  });
