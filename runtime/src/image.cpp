// Resize, centre crop and normalisation of 8-bit images (image.h), equal to the pixel to Pillow's
//   image.convert("RGB" or "L").resize((W', H'), Image.BICUBIC).crop(centre H x W)
// followed by (x / 255 - mean) / std in float32, which is what bhvit/predict.py (`bhvit predict`) and the
// evaluation transform of training (bhvit/data/transforms.py) apply.
//
// The resampling (written from its definition; Pillow's documented behaviour is the reference):
//   * Two separable passes on 8-bit samples, first along the width, then along the height; each pass rounds
//     its output to 8 bits and clamps it to 0..255 before the next.
//   * Output sample j of a pass from `in` to `out` samples sits at centre c = (j + 1/2) * in / out in input
//     coordinates. With s = max(in / out, 1) (antialiasing: a downscale widens the filter by its factor),
//     input sample x weighs K((x + 1/2 - c) / s) for the x in [floor(c - 2s + 1/2), floor(c + 2s + 1/2))
//     clipped to the image, where K is Keys' cubic convolution kernel with a = -1/2 (support 2). The weights
//     are divided by their sum (in double), then turned into 22-bit fixed point, rounded half away from 0.
//   * A sample is 2^21 + sum(weight * input) in 32-bit integers, shifted right by 22 and clamped to 0..255.
// Only the outputs under the crop are computed: the horizontal pass runs on the source rows the crop's
// vertical taps read, one row at a time into a ring of as many rows as the widest vertical filter, so memory
// and time grow with the image and the crop, never with the virtual resized image (an image of 1 x 2^25
// pixels resized to a shorter side of 16384 would be 2^39 pixels wide).
#include "image.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "error.h"
#include "model.h"

namespace bhr {
namespace {

constexpr int kPrecisionBits = 22;  // fixed-point weights: 2^22 = 1.0 (32-bit sums of 255 x weights fit)

// Keys' cubic convolution kernel with a = -1/2, evaluated in this order (a different association changes the
// last bit of some weights, which can move a rounded pixel by one).
double cubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Python's round() of a double: to the nearest integer, halves to even (predict.py's resized size).
double round_half_even(double x) {
  double r = std::floor(x);
  const double d = x - r;  // exact
  if (d > 0.5 || (d == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
  return r;
}

// The filter of outputs first .. first + count - 1 of a resize of `in` samples to `out`: output j reads
// taps[j] inputs from start[j] with the fixed-point weights coeff[j * ksize ..]. start and start + taps are
// non-decreasing in j.
struct Axis {
  int64_t ksize = 0;
  std::vector<int64_t> start;
  std::vector<int32_t> taps;
  std::vector<int32_t> coeff;
};

Axis make_axis(int64_t in, int64_t out, int64_t first, int64_t count) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  const double inv = 1.0 / filter_scale;
  Axis a;
  // count x ksize <= 4 x in + 3 x count, since count <= out (the crop lies inside the resized image)
  a.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  a.start.resize(static_cast<size_t>(count));
  a.taps.resize(static_cast<size_t>(count));
  a.coeff.assign(static_cast<size_t>(count * a.ksize), 0);
  std::vector<double> w(static_cast<size_t>(a.ksize));
  for (int64_t j = 0; j < count; ++j) {
    const double centre = (static_cast<double>(first + j) + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(centre - support + 0.5)));
    const int64_t hi = std::min<int64_t>(in, static_cast<int64_t>(std::floor(centre + support + 0.5)));
    const int64_t n = hi - lo;  // >= 1: centre < in, and the window is at least 3 samples wide
    double sum = 0.0;
    for (int64_t t = 0; t < n; ++t) {
      w[static_cast<size_t>(t)] = cubic((static_cast<double>(lo + t) - centre + 0.5) * inv);
      sum += w[static_cast<size_t>(t)];
    }
    int32_t* k = &a.coeff[static_cast<size_t>(j * a.ksize)];
    for (int64_t t = 0; t < n; ++t) {
      const double v = (sum != 0.0 ? w[static_cast<size_t>(t)] / sum : w[static_cast<size_t>(t)]) *
                       static_cast<double>(1 << kPrecisionBits);
      k[t] = static_cast<int32_t>(v < 0.0 ? v - 0.5 : v + 0.5);  // truncation: half away from zero
    }
    a.start[static_cast<size_t>(j)] = lo;
    a.taps[static_cast<size_t>(j)] = static_cast<int32_t>(n);
  }
  return a;
}

// A 32-bit sum of 2^21 + weights x samples as an 8-bit sample: shifted down, clamped to 0..255.
inline uint8_t clip8(int32_t v) {
  if (v < 0) return 0;
  const int32_t x = v >> kPrecisionBits;
  return static_cast<uint8_t>(x > 255 ? 255 : x);
}

// Horizontal pass of one row of `ch` (1 or 3) interleaved channels: src holds the input samples from x0 on;
// dst gets ax's outputs (count x ch).
void resample_row(const uint8_t* src, int64_t x0, int ch, const Axis& ax, uint8_t* dst) {
  const int64_t count = static_cast<int64_t>(ax.start.size());
  for (int64_t j = 0; j < count; ++j) {
    const int32_t* k = &ax.coeff[static_cast<size_t>(j * ax.ksize)];
    const uint8_t* p = src + (ax.start[static_cast<size_t>(j)] - x0) * ch;
    const int32_t n = ax.taps[static_cast<size_t>(j)];
    if (ch == 3) {
      int32_t r = 1 << (kPrecisionBits - 1), g = r, b = r;
      for (int32_t t = 0; t < n; ++t, p += 3) {
        r += p[0] * k[t];
        g += p[1] * k[t];
        b += p[2] * k[t];
      }
      dst[3 * j] = clip8(r), dst[3 * j + 1] = clip8(g), dst[3 * j + 2] = clip8(b);
    } else {
      int32_t v = 1 << (kPrecisionBits - 1);
      for (int32_t t = 0; t < n; ++t) v += p[t] * k[t];
      dst[j] = clip8(v);
    }
  }
}

// Pillow's convert("L") of 8-bit RGB: ITU-R 601 luma in 16-bit fixed point, rounded,
// L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (the weights 0.299, 0.587, 0.114 times 2^16).
void luma_row(const uint8_t* rgb, int64_t n, uint8_t* out) {
  for (int64_t x = 0; x < n; ++x, rgb += 3)
    out[x] = static_cast<uint8_t>((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

}  // namespace

std::string image_problem(const Image8& im) {
  const std::string size = std::to_string(im.width) + "x" + std::to_string(im.height);
  if (!im.data) return "pixels is NULL; pass the image's first row";
  if (im.width < 1 || im.height < 1) return "image size " + size + ": width and height must be >= 1";
  if (im.width > kMaxImagePixels / im.height)
    return size + " image is over the limit of " + std::to_string(kMaxImagePixels) +
           " pixels (2^25); downscale it first";
  const size_t row = static_cast<size_t>(im.width) * static_cast<size_t>(im.channels);
  if (im.stride < row)
    return "stride " + std::to_string(im.stride) + " is less than a row of " + size + " pixels (" +
           std::to_string(row) + " bytes); pass the distance in bytes between the starts of two rows";
  size_t end = 0;
  if (__builtin_mul_overflow(im.stride, static_cast<size_t>(im.height - 1), &end) ||
      __builtin_add_overflow(end, row, &end) ||
      reinterpret_cast<uintptr_t>(im.data) + end < reinterpret_cast<uintptr_t>(im.data))
    return "stride " + std::to_string(im.stride) + " x " + std::to_string(im.height) +
           " rows reaches past the end of memory; pass the distance in bytes between the starts of two rows";
  return "";
}

namespace {

// The crop of the resized image, computed one row at a time and written normalised into the model input.
struct CropJob {
  const Model& m;
  const Image8& im;
  int ch;          // channels resampled: 1 (grey, or a 1-channel model's "L") or 3
  Axis ax, ay;     // the crop's columns and rows
  int64_t x0, x1;  // the source columns ax reads
  float lut[3][256];  // (v / 255 - mean[c]) / std[c] in float32, in that order

  CropJob(const Model& model, const Image8& image, int64_t rw, int64_t rh)
      : m(model),
        im(image),
        ch(model.in_c == 1 ? 1 : image.channels),
        ax(make_axis(image.width, rw, (rw - model.in_w) / 2, model.in_w)),
        ay(make_axis(image.height, rh, (rh - model.in_h) / 2, model.in_h)),
        x0(ax.start.front()),
        x1(ax.start.back() + ax.taps.back()) {
    for (int64_t c = 0; c < m.in_c; ++c)
      for (int v = 0; v < 256; ++v)
        lut[c][v] = (static_cast<float>(v) / 255.0f - m.mean[static_cast<size_t>(c)]) / m.std[static_cast<size_t>(c)];
  }

  // Source row y, columns x0 .. x1 - 1, in the resampled channels (Pillow's "L" of RGB for a grey model);
  // grey is the buffer for that conversion.
  const uint8_t* source_row(int64_t y, std::vector<uint8_t>& grey) const {
    const uint8_t* src = im.data + static_cast<size_t>(y) * im.stride + static_cast<size_t>(x0 * im.channels);
    if (im.channels == ch) return src;
    grey.resize(static_cast<size_t>(x1 - x0));
    luma_row(src, x1 - x0, grey.data());
    return grey.data();
  }

  // Crop row i (cw x ch samples) normalised into out (C, H, W); a grey crop feeds each channel of an RGB model.
  void write_row(int64_t i, const uint8_t* row, float* out) const {
    const size_t plane = static_cast<size_t>(m.in_h * m.in_w);
    for (int64_t c = 0; c < m.in_c; ++c) {
      float* dst = out + static_cast<size_t>(c) * plane + static_cast<size_t>(i * m.in_w);
      const float* l = lut[c];
      const int64_t src_c = ch == 1 ? 0 : c;
      for (int64_t x = 0; x < m.in_w; ++x) dst[x] = l[row[static_cast<size_t>(x * ch + src_c)]];
    }
  }

  // Vertical pass of crop row i over `rows(y)` (the n samples of each of ay's source rows), into dst.
  template <class Rows>
  void vertical(int64_t i, size_t n, Rows rows, std::vector<int32_t>& acc, uint8_t* dst) const {
    acc.assign(n, 1 << (kPrecisionBits - 1));
    const int32_t* k = &ay.coeff[static_cast<size_t>(i * ay.ksize)];
    const int64_t lo = ay.start[static_cast<size_t>(i)];
    for (int64_t t = 0; t < ay.taps[static_cast<size_t>(i)]; ++t) {
      const uint8_t* r = rows(lo + t);
      const int32_t kt = k[t];
      for (size_t e = 0; e < n; ++e) acc[e] += r[e] * kt;
    }
    for (size_t e = 0; e < n; ++e) dst[e] = clip8(acc[e]);
  }

  // Width first: each source row the crop's vertical taps read is resampled once into a ring of as many rows
  // as the widest vertical filter (rows are read in increasing order), then each crop row from the ring.
  void horizontal_first(float* out) const {
    const size_t row_bytes = static_cast<size_t>(m.in_w * ch);
    int64_t ring = 1;
    for (const int32_t n : ay.taps) ring = std::max<int64_t>(ring, n);
    std::vector<uint8_t> rows(static_cast<size_t>(ring) * row_bytes), grey, crop_row(row_bytes);
    std::vector<int32_t> acc;
    int64_t next = 0;  // the next source row to resample
    for (int64_t i = 0; i < m.in_h; ++i) {
      const int64_t lo = ay.start[static_cast<size_t>(i)], hi = lo + ay.taps[static_cast<size_t>(i)];
      for (int64_t y = std::max(next, lo); y < hi; ++y)
        resample_row(source_row(y, grey), x0, ch, ax, &rows[static_cast<size_t>(y % ring) * row_bytes]);
      next = std::max(next, hi);
      vertical(i, row_bytes, [&](int64_t y) { return &rows[static_cast<size_t>(y % ring) * row_bytes]; }, acc,
               crop_row.data());
      write_row(i, crop_row.data(), out);
    }
  }

  // Height first: each crop row is the vertical pass over the source columns the crop reads, then the
  // horizontal pass of that one row.
  void vertical_first(float* out) const {
    const size_t span = static_cast<size_t>((x1 - x0) * ch);
    std::vector<uint8_t> column_row(span), grey, crop_row(static_cast<size_t>(m.in_w * ch));
    std::vector<int32_t> acc;
    for (int64_t i = 0; i < m.in_h; ++i) {
      vertical(i, span, [&](int64_t y) { return source_row(y, grey); }, acc, column_row.data());
      resample_row(column_row.data(), x0, ch, ax, crop_row.data());
      write_row(i, crop_row.data(), out);
    }
  }
};

}  // namespace

void preprocess_image(const Model& m, const Image8& im, float* out) {
  if (m.in_c != 1 && m.in_c != 3)
    fail("the model takes " + std::to_string(m.in_c) +
         "-channel images; 8-bit images feed grey (1) or RGB (3) models: call bhvit_run with your own "
         "preprocessing");
  const int64_t w = im.width, h = im.height;
  // predict.py's geometry: the shorter side to `resize`, sides rounded half to even and at least the crop's
  const double scale = static_cast<double>(m.resize) / static_cast<double>(std::min(w, h));
  const int64_t rw = std::max<int64_t>(m.in_w, static_cast<int64_t>(round_half_even(static_cast<double>(w) * scale)));
  const int64_t rh = std::max<int64_t>(m.in_h, static_cast<int64_t>(round_half_even(static_cast<double>(h) * scale)));
  try {
    const CropJob job(m, im, rw, rh);
    // Pillow's order of the passes (since Pillow 13): the height first when it loses more than twice as many
    // pixels as the width (a different order rounds the intermediate differently)
    if (h - rh > 0 && h - rh > 2 * (w - rw))
      job.vertical_first(out);
    else
      job.horizontal_first(out);
  } catch (const std::bad_alloc&) {
    fail("not enough memory to resize the " + std::to_string(w) + "x" + std::to_string(h) + " image to " +
         std::to_string(rw) + "x" + std::to_string(rh) + "; free some memory or downscale the image first");
  }
}

}  // namespace bhr
