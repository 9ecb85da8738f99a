/* bhvit_runtime.h: the C API of the BHViT packed runtime (libbhvit_runtime).
 *
 * Runs a packed BHViT file (docs/packed-format.md, version 2) on the CPU with 1-bit kernels, without
 * Python or PyTorch. Every function validates its arguments; a file from a stranger gives an error
 * message, never a crash. Functions returning int give 0 on success and -1 on error, with a
 * NUL-terminated message of one line in err (control bytes in it, such as a NUL or a newline in a name
 * from the file, are written as \xNN; truncated to errlen bytes; err may be NULL when errlen is 0).
 *
 * Bounded cost: a load reads the file once and keeps its bytes (tensors are used in place); each tensor is
 * converted at most once per layout the kernels read. Its memory stays under the bound of
 * docs/packed-format.md §7.1 (the file, 8 times its JSON header, 16 times its tensor data and 16 MiB), and a file
 * whose program needs more than the limits (bhvit_limits: header size, activation memory and
 * multiply-accumulates per image) is refused in milliseconds, at the first op that goes over a limit.
 * Runs refuse images holding NaN or Inf (naming the image, channel, row and column) and report logits
 * that are not finite as an error.
 *
 * Images: bhvit_run takes normalised float32 input; bhvit_run_rgb8 and bhvit_run_grey8 take 8-bit pixels of
 * any size and apply the file's own preprocessing (resize, crop, normalise) first, exactly as training's
 * evaluation and `bhvit predict` do.
 *
 * Example, a complete program: classify a binary PPM image ("P6 <width> <height> 255", then RGB rows) of any
 * size and print its best class (tests/runtime/test_header_example.py compiles and runs it; bhvit-run,
 * runtime/tools/bhvit_run.c, also reads PNG and JPEG and prints the top K):
 *
 * --- example.c ---
 *   #include <stdio.h>
 *   #include <stdlib.h>
 *
 *   #include "bhvit_runtime.h"
 *
 *   // The pixels of a binary PPM without comments, or NULL when the file is not one.
 *   static unsigned char *read_ppm(const char *path, int *width, int *height) {
 *     FILE *f = fopen(path, "rb");
 *     unsigned char *pixels = NULL;
 *     int maxval = 0;
 *     if (f && fscanf(f, "P6 %d %d %d", width, height, &maxval) == 3 && maxval == 255 && fgetc(f) != EOF &&
 *         *width > 0 && *height > 0 && *width <= (1 << 25) / *height &&
 *         (pixels = malloc(3 * (size_t)*width * (size_t)*height)) != NULL &&
 *         fread(pixels, 3 * (size_t)*width, (size_t)*height, f) != (size_t)*height) {
 *       free(pixels); // truncated
 *       pixels = NULL;
 *     }
 *     if (f) fclose(f);
 *     return pixels;
 *   }
 *
 *   int main(int argc, char **argv) {
 *     char err[512];
 *     int width = 0, height = 0, status = 1;
 *     if (argc != 3) {
 *       fprintf(stderr, "usage: %s model.bhvp image.ppm\n", argv[0]);
 *       return 2;
 *     }
 *     bhvit_model *m = bhvit_load(argv[1], err, sizeof err);
 *     if (!m) {
 *       fprintf(stderr, "%s\n", err);
 *       return 1;
 *     }
 *     int n = bhvit_num_classes(m);
 *     float *logits = malloc(sizeof(float) * (size_t)n);
 *     unsigned char *pixels = read_ppm(argv[2], &width, &height);
 *     if (!logits) {
 *       fprintf(stderr, "out of memory\n");
 *     } else if (!pixels) {
 *       fprintf(stderr, "%s: not a binary 8-bit PPM image (or out of memory)\n", argv[2]);
 *     } else if (bhvit_run_rgb8(m, pixels, width, height, 3 * (size_t)width, logits, err, sizeof err) != 0) {
 *       fprintf(stderr, "%s: %s\n", argv[2], err);
 *     } else {
 *       int best = 0;
 *       for (int i = 1; i < n; ++i)
 *         if (logits[i] > logits[best]) best = i;
 *       const char *label = bhvit_label(m, best); // NULL when the file has no labels
 *       printf("%s: class %d (%s)\n", argv[2], best, label ? label : "unnamed");
 *       status = 0;
 *     }
 *     free(pixels);
 *     free(logits);
 *     bhvit_free(m);
 *     return status;
 *   }
 * --- end of example.c ---
 *
 * Threads: bhvit_run may be called on one model from any number of threads at once, with any batch sizes;
 * each call computes in activation buffers of its own (kept by the model for later calls) while the
 * weights are shared read-only, and gives the same bits as the same call made alone. Every other function
 * taking a model is safe to call concurrently with runs too, except bhvit_free, which must come after the
 * last call on that model has returned. Inside one call, the work runs on a process-wide pool of threads
 * (bhvit_set_num_threads) that the calls share.
 */
#ifndef BHVIT_RUNTIME_H
#define BHVIT_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

/* The version of this header and of the library built with it: the one version number of bhvit (the
 * Python package, the CMake project and the shared library's SOVERSION read it from these three lines).
 * BHVIT_VERSION compares as a number: #if BHVIT_VERSION >= 100 (0.1.0). */
#define BHVIT_VERSION_MAJOR 0
#define BHVIT_VERSION_MINOR 1
#define BHVIT_VERSION_PATCH 0
#define BHVIT_VERSION (BHVIT_VERSION_MAJOR * 10000 + BHVIT_VERSION_MINOR * 100 + BHVIT_VERSION_PATCH)
#define BHVIT_STRINGIFY_(x) #x
#define BHVIT_VERSION_TEXT_(a, b, c) BHVIT_STRINGIFY_(a) "." BHVIT_STRINGIFY_(b) "." BHVIT_STRINGIFY_(c)
/* "0.1.0" */
#define BHVIT_VERSION_STRING BHVIT_VERSION_TEXT_(BHVIT_VERSION_MAJOR, BHVIT_VERSION_MINOR, BHVIT_VERSION_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BHVIT_API __declspec(dllexport)
#else
#define BHVIT_API __attribute__((visibility("default")))
#endif

typedef struct bhvit_model bhvit_model;

/* What a load accepts. Start from bhvit_default_limits() and raise a field to load a model that needs
 * more (the error message of a refused file names the field and the numbers); every field must be >= 1.
 * The defaults pass every BHViT (tiny and small, binary and some_fp, LSQ and GSB) at 224 and 448 px with
 * a margin (docs/packed-format.md §7.1). */
typedef struct bhvit_limits {
  uint64_t header_bytes;     /* the file's JSON header: default 16 MiB, at most 100000000 (the format's) */
  uint64_t activation_bytes; /* activation buffers per image: default 1 GiB */
  uint64_t binary_macs;      /* 1-bit multiply-accumulates per image: default 2e11 */
  uint64_t float_macs;       /* float multiply-accumulates (and element-wise operations) per image: 1e10 */
} bhvit_limits;
BHVIT_API bhvit_limits bhvit_default_limits(void);

/* Loads and fully validates a packed file within the default limits; NULL on error (message in err). */
BHVIT_API bhvit_model *bhvit_load(const char *path, char *err, size_t errlen);
/* The same from a file's bytes in memory (copied; data may be freed after the call). */
BHVIT_API bhvit_model *bhvit_load_memory(const void *data, size_t size, char *err, size_t errlen);
/* bhvit_load and bhvit_load_memory within the caller's limits (NULL: the defaults). */
BHVIT_API bhvit_model *bhvit_load_ex(const char *path, const bhvit_limits *limits, char *err, size_t errlen);
BHVIT_API bhvit_model *bhvit_load_memory_ex(const void *data, size_t size, const bhvit_limits *limits, char *err,
                                            size_t errlen);

/* What a loaded model costs: activation buffers per image (a run of batch B allocates B times this), the
 * bytes it holds for weights (the file's tensor data plus the layouts the kernels read), and the
 * multiply-accumulates of one image (binary: the 1-bit products of bconv, blinear and attention; float: the
 * rest, counting element-wise work as one per element). */
typedef struct bhvit_cost {
  uint64_t activation_bytes;
  uint64_t weight_bytes;
  uint64_t binary_macs;
  uint64_t float_macs;
} bhvit_cost;
/* Writes the model's cost; -1 if m or cost is NULL. */
BHVIT_API int bhvit_get_cost(const bhvit_model *m, bhvit_cost *cost);
/* The input image shape: channels, height, width (a NULL output pointer is skipped). */
BHVIT_API int bhvit_input_dims(const bhvit_model *m, int *channels, int *height, int *width);
/* Width of the output: the number of classes (-1 if m is NULL). */
BHVIT_API int bhvit_num_classes(const bhvit_model *m);
/* images: batch x C x H x W float32, already normalised; logits: batch x num_classes. An image holding
 * NaN or Inf is refused before any work (the message names image, channel, row and column); logits that
 * are not finite (the model overflowed float32) give -1 naming the image and class (logits then hold
 * what was computed). */
BHVIT_API int bhvit_run(bhvit_model *m, const float *images, int batch, float *logits, char *err, size_t errlen);
/* Classifies one 8-bit RGB image of any size with the file's own preprocessing, the one of training's
 * evaluation and `bhvit predict`, to the pixel:
 *   1. a 1-channel model takes the image's Pillow "L" conversion, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16
 *      (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, rounded); a model of other than 1 or 3 channels is refused;
 *   2. the shorter side is resized to the file's `resize` and the other by the same factor (sizes rounded half
 *      to even, each side at least the model's), with Pillow's Image.BICUBIC filter: antialiased (widened by
 *      the downscale factor), two passes on 8-bit samples, width then height, each rounded and clamped;
 *   3. the centre crop of the model's H x W (offsets floor((resized - crop) / 2));
 *   4. (x / 255 - mean[c]) / std[c] in float32, in that order.
 * pixels: `height` rows, `stride` bytes apart (stride >= 3 x width), each starting with `width` pixels of
 * R, G, B bytes; width x height at most 2^25 (33.5 M pixels, 8K UHD fits; larger images are refused: downscale
 * them first). logits: num_classes floats. Only the part of the resized image under the crop is computed, so
 * memory (the model input plus the crop's width times the rows of one vertical filter, 4 x downscale + 3)
 * and time (about 4 x downscale multiply-adds per crop pixel and pass) stay bounded by the image and the
 * model input whatever the aspect ratio. Thread-safe as bhvit_run. */
BHVIT_API int bhvit_run_rgb8(bhvit_model *m, const uint8_t *pixels, int width, int height, size_t stride,
                             float *logits, char *err, size_t errlen);
/* The same for an 8-bit grey image (one byte per pixel, stride >= width); an RGB model gets the grey
 * value in each channel (as Pillow's convert("RGB")). */
BHVIT_API int bhvit_run_grey8(bhvit_model *m, const uint8_t *pixels, int width, int height, size_t stride,
                              float *logits, char *err, size_t errlen);
/* The preprocessing of bhvit_run_rgb8 / bhvit_run_grey8 alone: writes the model input, channels x H x W
 * float32 (bhvit_input_dims), to image, e.g. to fill a batch for bhvit_run. */
BHVIT_API int bhvit_preprocess_rgb8(const bhvit_model *m, const uint8_t *pixels, int width, int height,
                                    size_t stride, float *image, char *err, size_t errlen);
BHVIT_API int bhvit_preprocess_grey8(const bhvit_model *m, const uint8_t *pixels, int width, int height,
                                     size_t stride, float *image, char *err, size_t errlen);
/* A metadata string of the file (e.g. "preprocess", "labels", "config": JSON text), or NULL if absent.
 * The pointer stays valid until bhvit_free(m). */
BHVIT_API const char *bhvit_metadata(const bhvit_model *m, const char *key);
/* The stored preprocessing (version-2 files always carry it): per-channel mean and std (arrays of
 * `channels` floats) and the shorter side an image is resized to before the centre crop; a NULL output
 * pointer is skipped. */
BHVIT_API int bhvit_preprocess(const bhvit_model *m, float *mean, float *std, int *resize, char *err, size_t errlen);
/* The name of class i, or NULL when the file has no labels or i is out of range. */
BHVIT_API const char *bhvit_label(const bhvit_model *m, int i);
/* Threads a bhvit_run may use, the calling thread included (process-wide, shared by concurrent calls).
 * The default is the number of CPUs this process may run on (its affinity mask, capped by a cgroup CPU
 * quota), or BHVIT_NUM_THREADS when set; n < 1 restores that default. Idle pool threads wait passively
 * after a short spin, and a thread descheduled by the OS has its work taken over by the others, so other
 * processes on the same cores do not make a run wait for them. */
BHVIT_API void bhvit_set_num_threads(int n);
BHVIT_API int bhvit_get_num_threads(void);
/* The kernel path in use ("avx512vpopcnt", "avx512bw", "avx2", "popcnt", "neon", "wasm_simd128", "generic") and a
 * way to choose another one the CPU supports (also read from the BHVIT_ISA environment variable at load). */
BHVIT_API const char *bhvit_isa(void);
/* The kernel paths this CPU and build offer, best first and comma-separated, e.g. "avx2,popcnt,generic". */
BHVIT_API const char *bhvit_isas(void);
BHVIT_API int bhvit_set_isa(const char *name, char *err, size_t errlen);
/* The kinds of operation a profiled run of this model times ("blinear", "attention.core", ...): writes up to n
 * names (static strings) to kinds and returns how many there are (-1 if m is NULL). */
BHVIT_API int bhvit_profile_kinds(const bhvit_model *m, const char **kinds, int n);
/* bhvit_run, also writing the seconds this call spent in each kind of bhvit_profile_kinds to seconds[0..n). */
BHVIT_API int bhvit_run_profiled(bhvit_model *m, const float *images, int batch, float *logits, double *seconds,
                                 int n, char *err, size_t errlen);
BHVIT_API void bhvit_free(bhvit_model *m);

#ifdef __cplusplus
}
#endif
#endif /* BHVIT_RUNTIME_H */
