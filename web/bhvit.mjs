// The C API of runtime/include/bhvit_runtime.h in JavaScript, over the runtime's WebAssembly build
// (bhvit_runtime.mjs and bhvit_runtime.wasm: `emcmake cmake -S runtime -B build-wasm`, runtime/CMakeLists.txt).
// Plain ES module, no dependencies; the page (app.mjs) and the browser test use it.
//
//   import createBhvitRuntime from "./bhvit_runtime.mjs";
//   const rt = await Runtime.create(createBhvitRuntime);    // in Node: Runtime.create(f, {wasmBinary: bytes})
//   const model = rt.load(bytes);                           // a .bhvp file's bytes; throws BhvitError
//   const input = model.preprocessRgb8(rgb, width, height); // 8-bit RGB of any size -> the model input
//   const { logits, seconds } = model.run(input);           // input: Float32Array of C x H x W, normalised
//   model.free();
//
// Errors are the runtime's own one-line messages (BhvitError.message). Memory: the module's heap grows on
// demand up to 2 GiB, so every view of it is taken afresh after a call (a grown heap is a new buffer).

// Every C function this file calls, as the header declares it: tests/runtime/test_web_api.py checks each line
// against runtime/include/bhvit_runtime.h, so a change of the C API fails a test until this file follows.
export const C_API = {
  bhvit_load_memory: "bhvit_model *bhvit_load_memory(const void *data, size_t size, char *err, size_t errlen)",
  bhvit_free: "void bhvit_free(bhvit_model *m)",
  bhvit_input_dims: "int bhvit_input_dims(const bhvit_model *m, int *channels, int *height, int *width)",
  bhvit_num_classes: "int bhvit_num_classes(const bhvit_model *m)",
  bhvit_preprocess:
    "int bhvit_preprocess(const bhvit_model *m, float *mean, float *std, int *resize, char *err, size_t errlen)",
  bhvit_preprocess_rgb8:
    "int bhvit_preprocess_rgb8(const bhvit_model *m, const uint8_t *pixels, int width, int height, " +
    "size_t stride, float *image, char *err, size_t errlen)",
  bhvit_label: "const char *bhvit_label(const bhvit_model *m, int i)",
  bhvit_get_cost: "int bhvit_get_cost(const bhvit_model *m, bhvit_cost *cost)",
  bhvit_profile_kinds: "int bhvit_profile_kinds(const bhvit_model *m, const char **kinds, int n)",
  bhvit_run_profiled:
    "int bhvit_run_profiled(bhvit_model *m, const float *images, int batch, float *logits, double *seconds, " +
    "int n, char *err, size_t errlen)",
  bhvit_isa: "const char *bhvit_isa(void)",
  bhvit_isas: "const char *bhvit_isas(void)",
  bhvit_set_isa: "int bhvit_set_isa(const char *name, char *err, size_t errlen)",
};

const ERR_BYTES = 1024; // room for the runtime's longest messages (they name files, fields and limits)
const COST_FIELDS = ["activationBytes", "weightBytes", "binaryMacs", "floatMacs"]; // bhvit_cost, uint64_t each

/** An error of the runtime: its one-line message. */
export class BhvitError extends Error {
  constructor(message) {
    super(message);
    this.name = "BhvitError";
  }
}

/** The instantiated WebAssembly runtime: loads models, reports and chooses the kernel path. */
export class Runtime {
  /** createModule: bhvit_runtime.mjs's default export; options go to it (e.g. wasmBinary in Node). */
  static async create(createModule, options = {}) {
    return new Runtime(await createModule(options));
  }

  constructor(mod) {
    for (const name of Object.keys(C_API)) {
      if (typeof mod[`_${name}`] !== "function") {
        throw new BhvitError(`the WebAssembly runtime does not export ${name}: rebuild it (scripts/web.sh)`);
      }
    }
    this.mod = mod;
    this.err = mod._malloc(ERR_BYTES) >>> 0;
  }

  /** The runtime's message in the error buffer, as a BhvitError. */
  error() {
    return new BhvitError(this.mod.UTF8ToString(this.err) || "unknown error");
  }

  /** A NUL-terminated copy of a string in the heap (free it with mod._free). */
  cString(text) {
    const bytes = new TextEncoder().encode(text);
    const ptr = this.mod._malloc(bytes.length + 1) >>> 0;
    this.mod.HEAPU8.set(bytes, ptr);
    this.mod.HEAPU8[ptr + bytes.length] = 0;
    return ptr;
  }

  /** Loads a packed model from its bytes (Uint8Array), fully validated; BhvitError with the reason if not. */
  load(bytes) {
    const mod = this.mod;
    const data = mod._malloc(Math.max(1, bytes.length)) >>> 0;
    if (!data) throw new BhvitError(`no memory for a ${bytes.length}-byte model file in this page`);
    let handle = 0;
    try {
      mod.HEAPU8.set(bytes, data);
      handle = mod._bhvit_load_memory(data, bytes.length, this.err, ERR_BYTES) >>> 0;
    } finally {
      mod._free(data); // the runtime keeps its own copy
    }
    if (!handle) throw this.error();
    return new Model(this, handle, bytes.length);
  }

  /** The kernel path in use ("wasm_simd128" or "generic"). */
  isa() {
    return this.mod.UTF8ToString(this.mod._bhvit_isa() >>> 0);
  }

  /** The kernel paths this build offers, best first. */
  isas() {
    return this.mod.UTF8ToString(this.mod._bhvit_isas() >>> 0).split(",");
  }

  /** Chooses a kernel path of isas() for every model. */
  setIsa(name) {
    const ptr = this.cString(name);
    try {
      if (this.mod._bhvit_set_isa(ptr, this.err, ERR_BYTES) !== 0) throw this.error();
    } finally {
      this.mod._free(ptr);
    }
  }
}

/** A loaded model: its input, classes, preprocessing, cost, and runs with time per op kind. */
export class Model {
  constructor(runtime, handle, fileBytes) {
    this.rt = runtime;
    this.mod = runtime.mod;
    this.handle = handle;
    this.fileBytes = fileBytes;
    const mod = this.mod;
    const ints = mod._malloc(12) >>> 0;
    mod._bhvit_input_dims(handle, ints, ints + 4, ints + 8);
    [this.channels, this.height, this.width] = Array.from(mod.HEAP32.subarray(ints >>> 2, (ints >>> 2) + 3));
    mod._free(ints);
    this.numClasses = mod._bhvit_num_classes(handle);
    this.preprocess = this.readPreprocess();
    this.cost = this.readCost();
    this.kinds = this.readKinds();
    this.labels = Array.from({ length: this.numClasses }, (_, i) => {
      const ptr = mod._bhvit_label(handle, i) >>> 0;
      return ptr ? mod.UTF8ToString(ptr) : null;
    });
  }

  /** {mean, std, resize}: the file's preprocessing (resize the shorter side, centre-crop, normalise). */
  readPreprocess() {
    const mod = this.mod;
    const c = this.channels;
    const buf = mod._malloc(8 * c + 4) >>> 0;
    try {
      if (mod._bhvit_preprocess(this.handle, buf, buf + 4 * c, buf + 8 * c, this.rt.err, ERR_BYTES) !== 0) {
        throw this.rt.error();
      }
      const f = mod.HEAPF32.subarray(buf >>> 2, (buf >>> 2) + 2 * c);
      const resize = mod.HEAP32[(buf + 8 * c) >>> 2];
      return { mean: Array.from(f.subarray(0, c)), std: Array.from(f.subarray(c)), resize };
    } finally {
      mod._free(buf);
    }
  }

  /** bhvit_cost as numbers (exact below 2^53). */
  readCost() {
    const mod = this.mod;
    const buf = mod._malloc(8 * COST_FIELDS.length) >>> 0;
    mod._bhvit_get_cost(this.handle, buf);
    const words = new BigUint64Array(mod.HEAPU8.buffer, buf, COST_FIELDS.length);
    const cost = Object.fromEntries(COST_FIELDS.map((name, i) => [name, Number(words[i])]));
    mod._free(buf);
    return cost;
  }

  /** The op kinds a profiled run times, in the runtime's order. */
  readKinds() {
    const mod = this.mod;
    const n = mod._bhvit_profile_kinds(this.handle, 0, 0);
    const buf = mod._malloc(4 * Math.max(1, n)) >>> 0;
    mod._bhvit_profile_kinds(this.handle, buf, n);
    const kinds = Array.from(mod.HEAPU32.subarray(buf >>> 2, (buf >>> 2) + n), (p) => mod.UTF8ToString(p));
    mod._free(buf);
    return kinds;
  }

  /**
   * The model input (Float32Array, channels x height x width) of an 8-bit RGB image (Uint8Array of width x height
   * x 3 bytes), by the file's own preprocessing in the runtime (bhvit_preprocess_rgb8: Pillow's bicubic resize
   * of the shorter side, centre crop, normalisation; the same bits as `bhvit predict`); BhvitError if refused.
   */
  preprocessRgb8(rgb, width, height) {
    if (!(rgb instanceof Uint8Array) || rgb.length !== width * height * 3) {
      throw new BhvitError(`the image must be a Uint8Array of ${width}x${height}x3 bytes`);
    }
    const mod = this.mod;
    const size = this.channels * this.height * this.width;
    const pixels = mod._malloc(Math.max(1, rgb.length)) >>> 0;
    const image = mod._malloc(4 * size) >>> 0;
    try {
      if (!pixels || !image) throw new BhvitError(`no memory for a ${width}x${height} image in this page`);
      mod.HEAPU8.set(rgb, pixels);
      const err = this.rt.err;
      if (mod._bhvit_preprocess_rgb8(this.handle, pixels, width, height, 3 * width, image, err, ERR_BYTES) !== 0) {
        throw this.rt.error();
      }
      return mod.HEAPF32.slice(image >>> 2, (image >>> 2) + size);
    } finally {
      mod._free(pixels);
      mod._free(image);
    }
  }

  /** Runs one image (Float32Array of channels x height x width): {logits: Float32Array, seconds: {kind: s}}. */
  run(input) {
    const size = this.channels * this.height * this.width;
    if (!(input instanceof Float32Array) || input.length !== size) {
      throw new BhvitError(`the model input must be a Float32Array of ${this.channels}x${this.height}x${this.width}`);
    }
    const mod = this.mod;
    const n = this.kinds.length;
    const bytes = 4 * size + 4 * this.numClasses + 8 * n + 8; // + 8: room to align the doubles
    const buf = mod._malloc(bytes) >>> 0;
    if (!buf) throw new BhvitError("no memory for the model input in this page");
    try {
      const images = buf;
      const logits = images + 4 * size;
      const seconds = (logits + 4 * this.numClasses + 7) & ~7;
      mod.HEAPF32.set(input, images >>> 2);
      if (mod._bhvit_run_profiled(this.handle, images, 1, logits, seconds, n, this.rt.err, ERR_BYTES) !== 0) {
        throw this.rt.error();
      }
      const out = mod.HEAPF32.slice(logits >>> 2, (logits >>> 2) + this.numClasses);
      const times = mod.HEAPF64.subarray(seconds >>> 3, (seconds >>> 3) + n);
      return { logits: out, seconds: Object.fromEntries(this.kinds.map((k, i) => [k, times[i]])) };
    } finally {
      mod._free(buf);
    }
  }

  /** Releases the model's memory; the object is unusable afterwards. */
  free() {
    if (this.handle) this.mod._bhvit_free(this.handle);
    this.handle = 0;
  }
}

/** The k best classes of logits: [{index, label, prob}] by softmax probability, best first. */
export function topK(logits, labels, k) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const exp = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const order = exp.map((_, i) => i).sort((a, b) => exp[b] - exp[a] || a - b);
  return order.slice(0, k).map((i) => ({ index: i, label: labels[i] ?? String(i), prob: exp[i] / sum }));
}
