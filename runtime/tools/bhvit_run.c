/* bhvit-run: classify images with a packed BHViT model (docs/packed-format.md) through the C API of
 * libbhvit_runtime alone (C99, libc and libm; libpng and libjpeg when built with them; no Python).
 *
 *   bhvit-run [--threads N] [--top K] [--isa NAME] model.bhvp image [image2 ...]
 *
 * Per image: decode it to 8-bit pixels as Python decodes it (Pillow, then bhvit.data.images.to_rgb8: the
 * pixels `bhvit predict` and bhvit.runtime.Model.predict classify), classify them with bhvit_run_rgb8 or
 * bhvit_run_grey8 (the file's own resize, centre crop and normalisation: the code Model.predict runs), print
 * the top K of softmax(logits). The format is told by the file's first bytes, not its name:
 *   - binary PPM (P6) / PGM (P5), maxval 1..65535, always: samples scaled to 0..255 as Pillow does,
 *     min(255, round(v / maxval x 255)); 16-bit grey through Pillow's 16-bit range first,
 *     round(round(v / maxval x 65535) x 255 / 65535);
 *   - PNG through libpng (built with BHVIT_WITH_PNG): grey of 1 to 16 bits, grey + alpha, RGB, RGBA,
 *     palette; 16-bit samples keep their high byte, as Pillow reads them, except 16-bit grey, scaled
 *     round(v x 255 / 65535); alpha and tRNS transparency composited over black, round(c x alpha / 255);
 *   - JPEG through libjpeg(-turbo) (built with BHVIT_WITH_JPEG): grey, YCbCr and RGB; CMYK and YCCK read as
 *     Pillow reads them (Adobe's inverted CMYK: R = round(C x K / 255)). As Pillow's draft mode in
 *     `bhvit predict`, a JPEG at least 2, 4 or 8 times larger than the resized size on both sides is decoded
 *     at 1/2, 1/4 or 1/8 scale by the decoder's DCT scaling (faster, and a large photo fits the pixel limit).
 * libpng and libjpeg-turbo are the reference decoders of their formats, maintained, fuzzed (OSS-Fuzz) and
 * patched by every Linux distribution, and the ones Pillow itself is built on, so both sides decode a file to
 * the same pixels (a hand-written decoder in a classifier would be new attack surface; a single-header
 * decoder such as stb_image rounds 16-bit samples and upsamples chroma its own way).
 *
 * Bounded: at most 2^25 decoded pixels per image (as `bhvit predict`; a JPEG source may have up to
 * 178,956,970 pixels, Pillow's decompression-bomb limit, when DCT scaling brings it under); a progressive
 * JPEG at most 1000 scans and a coefficient buffer (the whole image at full size, 2 bytes per coefficient,
 * whatever the scale) of at most 256 MiB, refused before decoding as `bhvit predict` refuses it (8K UHD at
 * 4:4:4 needs 199 MB; a 300-byte header announcing 13000 x 13000 would cost 0.5 GB). Errors are one line on stderr naming the problem and the fix. Exit status: 0 when
 * every image was classified, 1 when the model or any image failed (the other images are still classified),
 * 2 for a usage error.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef BHVIT_WITH_PNG
#include <png.h>
#endif
#ifdef BHVIT_WITH_JPEG
#include <jerror.h>
#include <jpeglib.h>
#endif

#include "bhvit_runtime.h"

#define MAX_PIXELS (1L << 25)          /* decoded pixels per image, as bhvit predict (8K UHD fits) */
#define MAX_JPEG_SOURCE 178956970L     /* Pillow's decompression-bomb error: 2 x 89,478,485 pixels */
#define MAX_JPEG_SCANS 1000            /* a progressive JPEG with more is hostile (each scan re-reads the image) */
#define MAX_JPEG_COEFFICIENTS (1L << 28) /* bytes of a progressive JPEG's coefficient buffer (as bhvit predict) */
#define ERRLEN 512
#define EXIT_USAGE 2

#ifdef BHVIT_WITH_PNG
#define PNG_NAME " PNG,"
#else
#define PNG_NAME ""
#endif
#ifdef BHVIT_WITH_JPEG
#define JPEG_NAME " JPEG,"
#else
#define JPEG_NAME ""
#endif
#define FORMATS "PPM (P6), PGM (P5)," PNG_NAME JPEG_NAME /* the formats of this build */

static const char USAGE[] = "usage: bhvit-run [--threads N] [--top K] [--isa NAME] model.bhvp image [image2 ...]\n";

static const char HELP[] =
    "Classify images with a packed BHViT model (.bhvp) and print the top K classes of each:\n"
    "`rank label (index) probability`.\n"
    "\n"
    "  --threads N   threads used by the runtime (default: one per core)\n"
    "  --top K       classes printed per image (default 5)\n"
    "  --isa NAME    kernel path: avx512vpopcnt, avx512bw, avx2, popcnt, neon or generic (default: the\n"
    "                best one of this CPU; the BHVIT_ISA environment variable also sets it)\n"
    "  -h, --help    this text\n"
    "\n"
    "Formats of this build: " FORMATS " told by the file's first bytes"
#if !defined(BHVIT_WITH_PNG) || !defined(BHVIT_WITH_JPEG)
    " (rebuild with libpng and libjpeg\n"
    "installed for PNG and JPEG, e.g. apt-get install libpng-dev libjpeg-dev)"
#endif
    ".\n"
    "Images are decoded to the 8-bit pixels Python's Pillow gives and preprocessed by the code\n"
    "bhvit.runtime.Model.predict runs (bhvit_run_rgb8): the shorter side resized to the model file's\n"
    "`resize` with Pillow's bicubic filter, centre-cropped to the model's input and normalised with the\n"
    "file's mean and std; both print the same classes and probabilities. At most 2^25 decoded pixels\n"
    "per image.\n";

/* Writes a formatted message to err and returns -1 (the C API's convention). */
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(err, errlen, fmt, args);
  va_end(args);
  return -1;
}

/* Python's round() of a double: to the nearest integer, halves to even. */
static double round_half_even(double x) {
  double r = floor(x), d = x - r;
  if (d > 0.5 || (d == 0.5 && fmod(r, 2.0) != 0.0)) r += 1.0;
  return r;
}

/* What bhvit-run needs of the model: its input (channels 1 or 3, height, width) and `resize`. */
typedef struct {
  int channels, height, width, resize;
} model_input;

/* 8-bit pixels: height rows of width x channels bytes (1: grey, 3: RGB). */
typedef struct {
  long width, height;
  int channels;
  unsigned char *data;
} image8;

/* Allocates im->data for width x height pixels of `channels` bytes (at most MAX_PIXELS pixels). */
static int image_alloc(image8 *im, long width, long height, int channels, char *err, size_t errlen) {
  if (width > MAX_PIXELS / height)
    return fail(err, errlen, "%ldx%ld image is over the limit of %ld pixels; downscale it first", width, height,
                MAX_PIXELS);
  im->width = width;
  im->height = height;
  im->channels = channels;
  im->data = malloc((size_t)width * (size_t)height * (size_t)channels); /* <= 2^25 x 3 bytes */
  return im->data ? 0 : fail(err, errlen, "not enough memory for its %ldx%ld pixels", width, height);
}

#if defined(BHVIT_WITH_PNG) || defined(BHVIT_WITH_JPEG)
/* c x alpha / 255, rounded: a sample composited over black (bhvit.data.images.to_rgb8). */
static unsigned char premultiply(unsigned c, unsigned alpha) { return (unsigned char)((c * alpha + 127) / 255); }
#endif

/* A 16-bit grey sample in 0..65535 as 8 bits: round(v x 255 / 65535) (to_rgb8's rule for Pillow's I;16). */
static unsigned char grey16_to_8(unsigned v) { return (unsigned char)round_half_even((double)v * (255.0 / 65535.0)); }

/* ---- PPM / PGM ------------------------------------------------------------------------------------ */

/* Skips whitespace and '#' comments (to the end of the line); returns the next character. */
static int pnm_skip(FILE *f) {
  int c = getc(f);
  for (;;) {
    if (c == '#') {
      while (c != '\n' && c != '\r' && c != EOF) c = getc(f);
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
      c = getc(f);
    } else {
      return c;
    }
  }
}

/* Reads one decimal header field in 1..max into *value. */
static int pnm_field(FILE *f, const char *what, long max, long *value, char *err, size_t errlen) {
  int c = pnm_skip(f);
  long v = 0;
  if (c < '0' || c > '9')
    return fail(err, errlen, "bad PPM/PGM header: expected the %s as a decimal number", what);
  for (; c >= '0' && c <= '9'; c = getc(f)) {
    v = v * 10 + (c - '0');
    if (v > max) return fail(err, errlen, "%s in the PPM/PGM header exceeds %ld", what, max);
  }
  if (v < 1) return fail(err, errlen, "%s in the PPM/PGM header is 0; it must be at least 1", what);
  if (c != EOF) ungetc(c, f);
  *value = v;
  return 0;
}

/* The table of Pillow's 8-bit value of each raw sample 0..65535 of a PPM/PGM with this maxval: the one
 * rounding of round(v / maxval x 255), or for 16-bit grey (P5, maxval > 255) the two of Pillow's I mode. */
static void pnm_table(unsigned char *table, long maxval, int channels) {
  for (long v = 0; v < 65536; ++v) {
    if (channels == 1 && maxval > 255) {
      double v16 = maxval == 65535 ? (double)v : round_half_even((double)v / (double)maxval * 65535.0);
      table[v] = grey16_to_8(v16 > 65535.0 ? 65535u : (unsigned)v16);
    } else {
      double v8 = round_half_even((double)v / (double)maxval * 255.0);
      table[v] = (unsigned char)(v8 > 255.0 ? 255.0 : v8);
    }
  }
}

/* A binary PPM/PGM (the magic already checked) into 8-bit pixels, one row at a time. */
static int pnm_read(FILE *f, int channels, image8 *im, char *err, size_t errlen) {
  long width, height, maxval;
  getc(f), getc(f); /* the magic number */
  if (pnm_field(f, "width", MAX_PIXELS, &width, err, errlen) ||
      pnm_field(f, "height", MAX_PIXELS, &height, err, errlen) ||
      pnm_field(f, "maxval", 65535, &maxval, err, errlen))
    return -1;
  int c = getc(f); /* exactly one whitespace character before the samples */
  if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f')
    return fail(err, errlen, "bad PPM/PGM header: no whitespace after the maxval");
  if (image_alloc(im, width, height, channels, err, errlen)) return -1;
  const size_t bytes = maxval < 256 ? 1 : 2, samples = (size_t)width * (size_t)channels;
  unsigned char *row = malloc(samples * bytes), *table = malloc(65536);
  int status = 0;
  if (!row || !table) status = fail(err, errlen, "not enough memory to read it");
  if (!status) pnm_table(table, maxval, channels);
  for (long y = 0; y < height && !status; ++y) {
    size_t got = fread(row, 1, samples * bytes, f);
    if (got < samples * bytes) {
      size_t total = samples * bytes * (size_t)height, have = samples * bytes * (size_t)y + got;
      status = ferror(f) ? fail(err, errlen, "cannot read it (%s)", strerror(errno))
                         : fail(err, errlen, "truncated: %zu of the %zu bytes of pixels its header announces "
                                             "(%ldx%ld, maxval %ld); re-export the image", have, total, width,
                                height, maxval);
      break;
    }
    unsigned char *out = im->data + (size_t)y * samples;
    for (size_t i = 0; i < samples; ++i)
      out[i] = table[bytes == 1 ? row[i] : ((unsigned)row[2 * i] << 8 | row[2 * i + 1])];
  }
  free(row);
  free(table);
  return status;
}

/* ---- PNG (libpng) --------------------------------------------------------------------------------- */

#ifdef BHVIT_WITH_PNG
typedef struct {
  char *err;
  size_t errlen;
} png_context;

static void png_failed(png_structp png, png_const_charp message) {
  png_context *ctx = png_get_error_ptr(png);
  fail(ctx->err, ctx->errlen, "corrupt or truncated PNG (libpng: %s); re-export the image", message);
  png_longjmp(png, 1);
}

static void png_warned(png_structp png, png_const_charp message) { (void)png, (void)message; } /* as Pillow */

/* Decoded rows (channels of `depth` bits after the transforms below) -> 8-bit grey or RGB. */
static void png_to_8bit(unsigned char *const *rows, int in_channels, int depth, image8 *im) {
  for (long y = 0; y < im->height; ++y) {
    const unsigned char *p = rows[y];
    unsigned char *out = im->data + (size_t)y * (size_t)im->width * (size_t)im->channels;
    for (long x = 0; x < im->width; ++x, p += in_channels * (depth / 8)) {
      if (depth == 16) { /* grey only: the other 16-bit kinds are stripped to their high byte */
        *out++ = grey16_to_8((unsigned)p[0] << 8 | p[1]);
      } else if (in_channels == 2) {
        *out++ = premultiply(p[0], p[1]);
      } else if (in_channels == 4) {
        for (int c = 0; c < 3; ++c) *out++ = premultiply(p[c], p[3]);
      } else {
        for (int c = 0; c < in_channels; ++c) *out++ = p[c];
      }
    }
  }
}

static int png_read(FILE *f, image8 *im, char *err, size_t errlen) {
  png_context ctx = {err, errlen};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_failed, png_warned);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  unsigned char **volatile rows = NULL;
  unsigned char *volatile pixels = NULL;
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return fail(err, errlen, "not enough memory to read it");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(pixels);
    free(im->data);
    im->data = NULL;
    return -1;
  }
  png_init_io(png, f);
  png_set_user_limits(png, 0x7fffffffU, 0x7fffffffU); /* each side as the format allows; image_alloc bounds both */
  png_set_chunk_malloc_max(png, 8000000); /* ancillary chunks (iCCP, text): at most 8 MB each */
  png_read_info(png, info);
  png_uint_32 width, height;
  int depth, type;
  png_get_IHDR(png, info, &width, &height, &depth, &type, NULL, NULL, NULL);
  const int grey16 = type == PNG_COLOR_TYPE_GRAY && depth == 16; /* Pillow's I;16, which ignores tRNS */
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS) && !grey16) png_set_tRNS_to_alpha(png);
  if (depth == 16 && !grey16) png_set_strip_16(png); /* the high byte, as Pillow's ";16B" raw modes */
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int in_channels = png_get_channels(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  const int out_channels = in_channels <= 2 ? 1 : 3;
  if (image_alloc(im, (long)width, (long)height, out_channels, err, errlen)) {
    png_destroy_read_struct(&png, &info, NULL);
    return -1;
  }
  rows = malloc(sizeof(unsigned char *) * height);
  pixels = malloc(rowbytes * height); /* <= 2^25 pixels x 4 bytes, or x 2 for 16-bit grey */
  if (!rows || !pixels) {
    fail(err, errlen, "not enough memory to decode its %lux%lu pixels", (unsigned long)width, (unsigned long)height);
    png_longjmp(png, 1);
  }
  for (png_uint_32 y = 0; y < height; ++y) rows[y] = pixels + (size_t)y * rowbytes;
  png_read_image(png, rows);
  png_to_8bit(rows, in_channels, grey16 ? 16 : 8, im);
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  free(pixels);
  return 0;
}
#endif

/* ---- JPEG (libjpeg) ------------------------------------------------------------------------------- */

#ifdef BHVIT_WITH_JPEG
typedef struct {
  struct jpeg_error_mgr pub;
  struct jpeg_progress_mgr progress;
  jmp_buf jump;
  int truncated; /* the data ended early (libjpeg inserts an end marker and warns) */
  char message[JMSG_LENGTH_MAX];
} jpeg_context;

static void jpeg_failed(j_common_ptr cinfo) {
  jpeg_context *ctx = (jpeg_context *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, ctx->message);
  longjmp(ctx->jump, 1);
}

/* Warnings are ignored (as Pillow does), except the end of the data before the image was complete. */
static void jpeg_warned(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) ((jpeg_context *)cinfo->err)->truncated = 1;
}

static void jpeg_progress(j_common_ptr cinfo) {
  j_decompress_ptr d = (j_decompress_ptr)cinfo;
  if (d->input_scan_number > MAX_JPEG_SCANS) {
    jpeg_context *ctx = (jpeg_context *)cinfo->err;
    snprintf(ctx->message, sizeof ctx->message, "more than %d progressive scans (a hostile file?)", MAX_JPEG_SCANS);
    longjmp(ctx->jump, 1);
  }
}

/* Pillow's draft scale in `bhvit predict` (JpegImagePlugin.draft with bhvit/predict.py's resized size): the
 * largest of 8, 4, 2, 1 that the shorter of w // W' and h // H' reaches, where (W', H') is the w x h image
 * with its shorter side resized to `resize`, each side at least the model's. */
static int jpeg_scale(const model_input *mi, long w, long h) {
  double s = (double)mi->resize / (double)(w < h ? w : h);
  double rw = round_half_even((double)w * s), rh = round_half_even((double)h * s);
  if (rw < mi->width) rw = mi->width;
  if (rh < mi->height) rh = mi->height;
  double fx = floor((double)w / rw), fy = floor((double)h / rh), f = fx < fy ? fx : fy;
  return f >= 8 ? 8 : f >= 4 ? 4 : f >= 2 ? 2 : 1;
}

/* The bytes of the whole-image coefficient buffer a progressive JPEG is decoded through (libjpeg's
 * jdcoefct.c): per component its blocks across and down (after jpeg_read_header), each rounded up to a
 * multiple of its sampling factor, times 64 coefficients of 2 bytes. */
static double jpeg_coefficient_bytes(const struct jpeg_decompress_struct *cinfo) {
  double total = 0.0;
  for (int c = 0; c < cinfo->num_components; ++c) {
    const jpeg_component_info *comp = &cinfo->comp_info[c];
    double hs = comp->h_samp_factor, vs = comp->v_samp_factor;
    total += ceil((double)comp->width_in_blocks / hs) * hs * ceil((double)comp->height_in_blocks / vs) * vs * 128.0;
  }
  return total;
}

static int jpeg_read(FILE *f, const model_input *mi, image8 *im, char *err, size_t errlen) {
  struct jpeg_decompress_struct cinfo;
  jpeg_context ctx;
  unsigned char *volatile row = NULL;
  memset(&ctx, 0, sizeof ctx);
  cinfo.err = jpeg_std_error(&ctx.pub);
  ctx.pub.error_exit = jpeg_failed;
  ctx.pub.emit_message = jpeg_warned;
  if (setjmp(ctx.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free(row);
    free(im->data);
    im->data = NULL;
    return fail(err, errlen, "corrupt JPEG (libjpeg: %s); re-export the image", ctx.message);
  }
  jpeg_create_decompress(&cinfo);
  ctx.progress.progress_monitor = jpeg_progress;
  cinfo.progress = &ctx.progress;
  jpeg_stdio_src(&cinfo, f);
  jpeg_read_header(&cinfo, TRUE);
  const long w = (long)cinfo.image_width, h = (long)cinfo.image_height;
  int status = 0;
  if (w < 1 || h < 1 || w > MAX_JPEG_SOURCE / h)
    status = fail(err, errlen, "%ldx%ld JPEG is over the decoding limit of %ld pixels (a decompression bomb?); "
                  "downscale it first", w, h, MAX_JPEG_SOURCE);
  else if (cinfo.num_components == 1)
    cinfo.out_color_space = JCS_GRAYSCALE;
  else if (cinfo.num_components == 3)
    cinfo.out_color_space = JCS_RGB;
  else if (cinfo.num_components == 4)
    cinfo.out_color_space = JCS_CMYK;
  else
    status = fail(err, errlen, "a JPEG of %d colour components; save it as grey, RGB or CMYK", cinfo.num_components);
  if (!status && cinfo.progressive_mode) {
    double need = jpeg_coefficient_bytes(&cinfo);
    if (need > (double)MAX_JPEG_COEFFICIENTS)
      status = fail(err, errlen, "a progressive %ldx%ld JPEG needs %.0f MiB of coefficients to decode, over the "
                    "limit of %ld MiB; save it as a baseline JPEG or downscale it first", w, h, need / 1048576.0,
                    MAX_JPEG_COEFFICIENTS >> 20);
  }
  if (status) {
    jpeg_destroy_decompress(&cinfo);
    return status;
  }
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned)jpeg_scale(mi, w, h);
  jpeg_start_decompress(&cinfo);
  const int components = cinfo.output_components;
  if (image_alloc(im, (long)cinfo.output_width, (long)cinfo.output_height, components == 1 ? 1 : 3, err, errlen) ||
      !(row = malloc((size_t)cinfo.output_width * (size_t)components))) {
    if (im->data) fail(err, errlen, "not enough memory to decode it");
    jpeg_destroy_decompress(&cinfo);
    free(im->data);
    im->data = NULL;
    return -1;
  }
  while (cinfo.output_scanline < cinfo.output_height && !ctx.truncated) {
    unsigned char *out = im->data + (size_t)cinfo.output_scanline * (size_t)im->width * (size_t)im->channels;
    JSAMPROW rows[1] = {components == 4 ? row : out};
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (components == 4) /* Pillow's CMYK;I then CMYK -> RGB: round(C x K / 255) of the stored samples */
      for (long x = 0; x < im->width; ++x)
        for (int c = 0; c < 3; ++c) out[3 * x + c] = premultiply(row[4 * x + c], row[4 * x + 3]);
  }
  if (ctx.truncated) status = fail(err, errlen, "truncated JPEG (the data ends before the image); re-export it");
  jpeg_destroy_decompress(&cinfo); /* what follows the image is not read (as Pillow) */
  free(row);
  if (status) {
    free(im->data);
    im->data = NULL;
  }
  return status;
}
#endif

/* ---- any format ----------------------------------------------------------------------------------- */

/* Decodes the image at `path` into im (im->data is malloc'ed; free it). */
static int read_image(const char *path, const model_input *mi, image8 *im, char *err, size_t errlen) {
  unsigned char magic[8] = {0};
  (void)mi; /* read by the JPEG decoder only */
  memset(im, 0, sizeof *im);
  FILE *f = fopen(path, "rb");
  if (!f) return fail(err, errlen, "cannot open it (%s)", strerror(errno));
  size_t n = fread(magic, 1, sizeof magic, f);
  int status;
  if (ferror(f)) {
    status = fail(err, errlen, "cannot read it (%s)", strerror(errno));
  } else if (n == 0) {
    status = fail(err, errlen, "an empty file, not an image");
  } else if (magic[0] == 'P' && (magic[1] == '5' || magic[1] == '6')) {
    rewind(f);
    status = pnm_read(f, magic[1] == '6' ? 3 : 1, im, err, errlen);
  } else if (magic[0] == 'P' && magic[1] >= '1' && magic[1] <= '4') {
    status = fail(err, errlen, "a %s (P%c) PNM file; save it as binary PPM (P6) or PGM (P5)",
                  magic[1] == '4' ? "1-bit" : "plain-text", magic[1]);
  } else if (n == 8 && !memcmp(magic, "\x89PNG\r\n\x1a\n", 8)) {
#ifdef BHVIT_WITH_PNG
    rewind(f);
    status = png_read(f, im, err, errlen);
#else
    status = fail(err, errlen, "a PNG image, but this bhvit-run was built without libpng; rebuild it with libpng "
                               "installed (apt-get install libpng-dev) or convert the image to PPM");
#endif
  } else if (n >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) {
#ifdef BHVIT_WITH_JPEG
    rewind(f);
    status = jpeg_read(f, mi, im, err, errlen);
#else
    status = fail(err, errlen, "a JPEG image, but this bhvit-run was built without libjpeg; rebuild it with libjpeg "
                               "installed (apt-get install libjpeg-dev) or convert the image to PPM");
#endif
  } else {
    status = fail(err, errlen, "not an image this bhvit-run reads (" FORMATS " see --help); convert it first");
  }
  fclose(f);
  if (status) {
    free(im->data);
    im->data = NULL;
  }
  return status;
}

/* ---- output -------------------------------------------------------------------------------------- */

/* Prints s with control characters escaped (\xNN), so a label cannot rewrite the terminal. */
static void print_escaped(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; ++p) {
    if (*p < 0x20 || *p == 0x7f)
      printf("\\x%02x", *p);
    else
      putchar(*p);
  }
}

/* softmax(logits) in double (max subtracted), then the K largest, highest first (lower index on ties). */
static void print_top(const bhvit_model *m, const float *logits, int n, int k, double *prob) {
  double top = logits[0], sum = 0.0;
  for (int i = 1; i < n; ++i) top = logits[i] > top ? logits[i] : top;
  for (int i = 0; i < n; ++i) sum += prob[i] = exp((double)logits[i] - top);
  for (int i = 0; i < n; ++i) prob[i] /= sum;
  for (int rank = 1; rank <= k && rank <= n; ++rank) {
    int best = -1;
    for (int i = 0; i < n; ++i)
      if (prob[i] >= 0.0 && (best < 0 || prob[i] > prob[best])) best = i;
    if (best < 0) break; /* non-finite logits: nothing left to rank */
    const char *label = bhvit_label(m, best);
    printf("  %d ", rank);
    if (label)
      print_escaped(label);
    else
      printf("%d", best);
    printf(" (%d) %.6f\n", best, prob[best]);
    prob[best] = -1.0; /* taken */
  }
}

/* ---- command line -------------------------------------------------------------------------------- */

typedef struct {
  int threads, top;
  const char *isa;
  int npaths; /* paths[0]: the model, then the images */
  char **paths;
} options;

/* One line on stderr for a bad command line; returns the usage exit status. */
static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "bhvit-run: error: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, " (usage: bhvit-run [--threads N] [--top K] [--isa NAME] model.bhvp image ...; see --help)\n");
  return EXIT_USAGE;
}

/* A whole number in [lo, hi] from an option's argument. */
static int parse_int(const char *s, int lo, int hi, int *value) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *value = (int)v;
  return 0;
}

/* The value of option `name` given as "--name=V" or "--name V"; NULL when absent. */
static const char *option_value(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0) return NULL;
  if (argv[*i][n] == '=') return argv[*i] + n + 1;
  if (argv[*i][n] != '\0') return NULL;
  if (*i + 1 >= argc) return "";
  return argv[++*i];
}

/* Parses argv; returns -1 to go on, else an exit status (0 after --help). */
static int parse_args(int argc, char **argv, options *o, char **positional) {
  int np = 0, dashdash = 0;
  o->threads = 0;
  o->top = 5;
  o->isa = NULL;
  for (int i = 1; i < argc; ++i) {
    const char *v;
    if (dashdash || argv[i][0] != '-' || argv[i][1] == '\0') {
      positional[np++] = argv[i];
    } else if (!strcmp(argv[i], "--")) {
      dashdash = 1;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("%s\n%s", USAGE, HELP);
      return 0;
    } else if ((v = option_value(argc, argv, &i, "--threads"))) {
      if (parse_int(v, 1, 4096, &o->threads)) return usage_error("--threads wants a whole number 1..4096, got '%s'", v);
    } else if ((v = option_value(argc, argv, &i, "--top"))) {
      if (parse_int(v, 1, INT_MAX, &o->top)) return usage_error("--top wants a whole number >= 1, got '%s'", v);
    } else if ((v = option_value(argc, argv, &i, "--isa"))) {
      if (!*v) return usage_error("--isa wants a kernel path name%s", "");
      o->isa = v;
    } else {
      return usage_error("unknown option '%s' (see --help)", argv[i]);
    }
  }
  if (np < 2) return usage_error("%s", np ? "no image given" : "no model file and no image given");
  o->paths = positional;
  o->npaths = np;
  return -1;
}

/* Reads the model's input shape and resize, checking that 8-bit images can feed it. */
static int model_input_of(const bhvit_model *m, model_input *mi, char *err, size_t errlen) {
  if (bhvit_input_dims(m, &mi->channels, &mi->height, &mi->width))
    return fail(err, errlen, "cannot read the model's input shape");
  if (mi->channels != 1 && mi->channels != 3)
    return fail(err, errlen, "the model takes %d-channel images; bhvit-run feeds grey (1) or RGB (3) ones: "
                             "call bhvit_run from your own program with your preprocessing", mi->channels);
  return bhvit_preprocess(m, NULL, NULL, &mi->resize, err, errlen);
}

/* Classifies one image; 0 on success, else prints one error line and returns 1. */
static int classify(bhvit_model *m, const model_input *mi, const char *path, int top, float *logits, double *prob) {
  char err[ERRLEN];
  image8 im;
  int status = read_image(path, mi, &im, err, sizeof err);
  if (!status) {
    const size_t stride = (size_t)im.width * (size_t)im.channels;
    status = im.channels == 3 ? bhvit_run_rgb8(m, im.data, (int)im.width, (int)im.height, stride, logits, err, sizeof err)
                              : bhvit_run_grey8(m, im.data, (int)im.width, (int)im.height, stride, logits, err,
                                                sizeof err);
  }
  free(im.data);
  if (status) {
    fprintf(stderr, "bhvit-run: error: %s: %s\n", path, err);
    return 1;
  }
  printf("%s\n", path);
  print_top(m, logits, bhvit_num_classes(m), top, prob);
  fflush(stdout);
  return 0;
}

/* Loads the model, applies the options and classifies every image. */
static int run(const options *o) {
  char err[ERRLEN];
  model_input mi;
  if (o->threads) bhvit_set_num_threads(o->threads);
  if (o->isa && bhvit_set_isa(o->isa, err, sizeof err)) return usage_error("--isa: %s", err);
  bhvit_model *m = bhvit_load(o->paths[0], err, sizeof err);
  if (!m || model_input_of(m, &mi, err, sizeof err)) {
    fprintf(stderr, "bhvit-run: error: %s: %s\n", o->paths[0], err);
    if (m) bhvit_free(m);
    return 1;
  }
  int n = bhvit_num_classes(m), status = 0;
  float *logits = malloc(sizeof(float) * (size_t)n);
  double *prob = malloc(sizeof(double) * (size_t)n);
  if (!logits || !prob) {
    fprintf(stderr, "bhvit-run: error: not enough memory for the model's output; free some memory\n");
    status = 1;
  }
  for (int i = 1; i < o->npaths && logits && prob; ++i) status |= classify(m, &mi, o->paths[i], o->top, logits, prob);
  free(logits);
  free(prob);
  bhvit_free(m);
  return status;
}

int main(int argc, char **argv) {
  options o;
  char **positional = malloc(sizeof(char *) * (size_t)(argc > 0 ? argc : 1));
  if (!positional) {
    fprintf(stderr, "bhvit-run: error: out of memory\n");
    return 1;
  }
  int status = parse_args(argc, argv, &o, positional);
  if (status < 0) status = run(&o);
  free(positional);
  return status;
}
