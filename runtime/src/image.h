// 8-bit images to a model's input: the file's preprocessing (resize the shorter side to `resize` with
// Pillow's bicubic filter, centre crop, normalise), so that C programs feed a model exactly what training's
// evaluation and `bhvit predict` feed it (bhvit_run_rgb8, bhvit_preprocess_rgb8 and their grey variants).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace bhr {

struct Model;

// Decoded pixels accepted per image (as `bhvit predict`: 8K UHD, 7680 x 4320, fits).
constexpr int64_t kMaxImagePixels = int64_t(1) << 25;

// 8-bit pixels: height rows of `stride` bytes, each starting with width pixels of `channels` samples
// (1: grey; 3: R, G, B).
struct Image8 {
  const uint8_t* data = nullptr;
  int64_t width = 0, height = 0;
  size_t stride = 0;
  int channels = 0;
};

// Why `im` cannot be read (NULL data, a size outside 1..kMaxImagePixels, a stride shorter than a row or
// reaching past the address space), or "" when it can. The message names the problem and the fix.
std::string image_problem(const Image8& im);

// The model's input (in_c, in_h, in_w) float32 of a valid image (image_problem(im) empty): Pillow's
// convert("L") when a 1-channel model is given RGB, the bicubic resize of the shorter side to m.resize (each
// side at least the crop's), the centre crop and (x / 255 - mean[c]) / std[c]. Throws Error when the model
// does not take 1 or 3 channels or memory runs out.
void preprocess_image(const Model& m, const Image8& im, float* out);

}  // namespace bhr
