// The preprocessing of a packed file (bhvit_preprocess: mean, std, resize) in JavaScript, the same maths as
// bhvit.predict.Preprocess (Pillow): resize the shorter side to `resize` with Pillow's 8-bit bicubic filter
// (two passes, horizontal then vertical, 22-bit fixed-point coefficients, each pass rounded and clipped to
// 8 bits, in Pillow 13's order), centre-crop, scale to [0, 1] and normalise, in float32 operation by operation:
// the same bits as Pillow 13 for the same decoded pixels (tests/web/test_preprocess_js.py). Translucent pixels
// are premultiplied by alpha as Pillow's RGBA -> RGBa conversion does.
//
//   const x = preprocess({ data, width, height }, { channels, height, width, mean, std, resize });
//
// data: RGBA bytes (an ImageData's), row-major. Plain ES module, no dependencies.

/** Decoded pixels per image, as bhvit.predict.MAX_PIXELS: larger images are refused. */
export const MAX_PIXELS = 2 ** 25;
/** Resized pixels up to which the whole image is resized (bhvit.predict.MAX_SIDE ** 2); beyond, only the crop. */
const MAX_RESIZED = 4096 * 4096;
const PRECISION_BITS = 32 - 8 - 2; // Pillow's Resample.c

/** Python's round(): to the nearest integer, halves to even. */
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Pillow's bicubic kernel (a = -0.5), support 2. */
function bicubic(x) {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/**
 * Pillow's precompute_coeffs + normalize_coeffs_8bpc: for each of outSize outputs sampling the source range
 * [in0, in1) of inSize pixels, the first source pixel, the tap count and the fixed-point weights.
 */
function coefficients(inSize, in0, in1, outSize) {
  const scale = Math.fround(in1 - in0) / outSize; // in0, in1: float32, subtracted in float32
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(2 * outSize);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

/** Pillow's clip8 of a fixed-point sum. */
function clip8(v) {
  if (v >= 1 << (8 + PRECISION_BITS)) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/** One horizontal pass: rows [r0, r0 + rows) of src (w wide, 4 channels) resampled to outW columns. */
function horizontalPass(src, w, r0, rows, outW, coeffs) {
  const out = new Uint8ClampedArray(outW * rows * 4);
  const { ksize, bounds, kk } = coeffs;
  for (let y = 0; y < rows; y++) {
    const row = (y + r0) * w * 4;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[2 * xx];
      const xmax = bounds[2 * xx + 1];
      const k = xx * ksize;
      for (let c = 0; c < 4; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += src[row + (x + xmin) * 4 + c] * kk[k + x];
        out[(y * outW + xx) * 4 + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** One vertical pass: src (w wide; its row 0 is source row rowOffset) resampled to outH rows. */
function verticalPass(src, w, rowOffset, outH, coeffs) {
  const out = new Uint8ClampedArray(w * outH * 4);
  const { ksize, bounds, kk } = coeffs;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[2 * yy] - rowOffset;
    const ymax = bounds[2 * yy + 1];
    const k = yy * ksize;
    for (let xx = 0; xx < w; xx++) {
      for (let c = 0; c < 4; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += src[((y + ymin) * w + xx) * 4 + c] * kk[k + y];
        out[(yy * w + xx) * 4 + c] = clip8(ss);
      }
    }
  }
  return out;
}

/**
 * Pillow's ImagingResample (bicubic, 8 bits per channel, 4 channels) of src (w x h) to (outW x outH), sampling
 * the source box [x0, x1) x [y0, y1) (float32, as Pillow's). Pillow 13's order of the passes: vertical first
 * when the height shrinks by more than twice the pixels the width does, else horizontal first (on the rows
 * the vertical pass reads); the 8-bit rounding between the passes makes the order visible.
 */
export function resampleBicubic(src, w, h, outW, outH, box = [0, 0, w, h]) {
  const [x0, y0, x1, y1] = box.map(Math.fround); // Pillow's box is float[4]
  const needH = outW !== w || x0 !== 0 || x1 !== outW;
  const needV = outH !== h || y0 !== 0 || y1 !== outH;
  const horizontalFirst = !(h - outH > 0 && h - outH > (w - outW) * 2);
  const vert = coefficients(h, y0, y1, outH);
  const horiz = coefficients(w, x0, x1, outW);
  if (!horizontalFirst) {
    const v = needV ? verticalPass(src, w, 0, outH, vert) : src;
    return needH ? horizontalPass(v, w, 0, outH, outW, horiz) : v;
  }
  if (!needH) return needV ? verticalPass(src, w, 0, outH, vert) : src;
  const first = vert.bounds[0];
  const last = vert.bounds[2 * outH - 2] + vert.bounds[2 * outH - 1];
  const hpass = horizontalPass(src, w, first, last - first, outW, horiz);
  return needV ? verticalPass(hpass, outW, first, outH, vert) : hpass;
}

/** Pillow's RGBA -> RGBa: colour times alpha / 255, rounded (MULDIV255). */
function premultiply(data) {
  const out = new Uint8ClampedArray(data.length);
  for (let i = 0; i < data.length; i += 4) {
    const a = data[i + 3];
    for (let c = 0; c < 3; c++) {
      const t = data[i + c] * a + 128;
      out[i + c] = ((t >> 8) + t) >> 8;
    }
    out[i + 3] = a;
  }
  return out;
}

/** Pillow's RGB -> L (L24 of R, G, B) in the R, G and B bytes of RGBA data; alpha kept. */
function toLuma(data) {
  const out = new Uint8ClampedArray(data.length);
  for (let i = 0; i < data.length; i += 4) {
    const l = (data[i] * 19595 + data[i + 1] * 38470 + data[i + 2] * 7471 + 0x8000) >> 16;
    out[i] = out[i + 1] = out[i + 2] = l;
    out[i + 3] = data[i + 3];
  }
  return out;
}

/**
 * The model input (Float32Array, channels x height x width) of an RGBA image, as bhvit.predict.Preprocess
 * computes it; throws an Error with a one-line reason for an image it refuses.
 * spec: {channels, height, width, mean, std, resize} (Model of bhvit.mjs has them all).
 */
export function preprocess(image, spec) {
  const { data, width: w, height: h } = image;
  if (!(w >= 1 && h >= 1)) throw new Error(`the image has no pixels (${w}x${h})`);
  if (w * h > MAX_PIXELS) {
    throw new Error(
      `the image is ${w}x${h} (${(w * h).toLocaleString("en")} pixels), over the limit of ` +
        `${MAX_PIXELS.toLocaleString("en")} pixels: downscale it first`,
    );
  }
  const { channels, height: ch, width: cw, mean, std, resize } = spec;
  if (channels !== 1 && channels !== 3) {
    throw new Error(`the model takes ${channels} channels; the page handles 1 or 3`);
  }
  const scale = resize / Math.min(w, h);
  const rw = Math.max(cw, roundHalfEven(w * scale));
  const rh = Math.max(ch, roundHalfEven(h * scale));
  const left = Math.floor((rw - cw) / 2);
  const top = Math.floor((rh - ch) / 2);
  // Pillow converts before it resizes: to L (L24 of R, G, B) for a one-channel model, then premultiplies
  const rgba = premultiply(channels === 1 ? toLuma(data) : data);
  let crop;
  if (rw * rh <= MAX_RESIZED) {
    const resized = resampleBicubic(rgba, w, h, rw, rh);
    crop = new Uint8ClampedArray(cw * ch * 4);
    for (let y = 0; y < ch; y++) {
      const from = ((y + top) * rw + left) * 4;
      crop.set(resized.subarray(from, from + cw * 4), y * cw * 4);
    }
  } else {
    // as bhvit.predict: only the source region under the crop is resampled, so an extreme aspect ratio
    // never allocates the whole resized image
    const sx = w / rw;
    const sy = h / rh;
    crop = resampleBicubic(rgba, w, h, cw, ch, [left * sx, top * sy, (left + cw) * sx, (top + ch) * sy]);
  }
  const f = Math.fround;
  const plane = ch * cw;
  const out = new Float32Array(channels * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < channels; c++) {
      const unit = f(crop[4 * i + c] / 255);
      out[c * plane + i] = f(f(unit - f(mean[c])) / f(std[c]));
    }
  }
  return out;
}
