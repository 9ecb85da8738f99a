/* bhvit-run: classify images with a packed BHViT model (docs/packed-format.md) through the C API of
 * libbhvit_runtime alone (C99, libc and libm; no Python).
 *
 *   bhvit-run [--threads N] [--top K] [--isa NAME] model.bhvp image.ppm [image2.pgm ...]
 *
 * Per image: read a binary PPM (P6) or PGM (P5), maxval 1..65535 (two bytes per sample, big-endian, above
 * 255); samples v -> v / maxval in [0, 1]; convert to the model's channels (grey -> RGB by repeating, RGB
 * -> grey as ITU-R 601 luma, Pillow's "L": L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 on 8-bit
 * samples, 0.299 R + 0.587 G + 0.114 B otherwise); resize the shorter side to the file's `resize`
 * (bilinear, antialiased when downscaling: see resample_axis) and centre-crop the model's H x W, both
 * as bhvit/predict.py's Preprocess (sizes rounded half to even, each resized side at least the crop's,
 * crop offset floor((resized - crop) / 2)); normalise (x - mean[c]) / std[c]; run; print the top K of
 * softmax(logits). Only the source pixels under the crop are resampled, so memory stays bounded by the
 * image and the model input whatever the aspect ratio.
 *
 * Errors are one line on stderr naming the problem and the fix. Exit status: 0 when every image was
 * classified, 1 when the model or any image failed (the other images are still classified), 2 for a
 * usage error.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bhvit_runtime.h"

#define MAX_PIXELS (1L << 25) /* decoded pixels per image, as bhvit predict (8K UHD fits) */
#define ERRLEN 512
#define EXIT_USAGE 2

static const char USAGE[] =
    "usage: bhvit-run [--threads N] [--top K] [--isa NAME] model.bhvp image.ppm [image2.ppm ...]\n";

static const char HELP[] =
    "Classify binary PPM (P6) / PGM (P5) images with a packed BHViT model (.bhvp) and print the top K\n"
    "classes of each: `rank label (index) probability`.\n"
    "\n"
    "  --threads N   threads used by the runtime (default: one per core)\n"
    "  --top K       classes printed per image (default 5)\n"
    "  --isa NAME    kernel path: avx512vpopcnt, avx512bw, avx2, popcnt, neon or generic (default: the\n"
    "                best one of this CPU; the BHVIT_ISA environment variable also sets it)\n"
    "  -h, --help    this text\n"
    "\n"
    "Images are resized (shorter side to the model file's `resize`, bilinear, antialiased when\n"
    "downscaling), centre-cropped to the model's input and normalised with the file's mean and std.\n"
    "Python's `bhvit predict --packed` resizes with Pillow's bicubic filter instead, so the probabilities\n"
    "can differ slightly between the two. Convert other formats first, e.g. `convert photo.jpg photo.ppm`\n"
    "(ImageMagick) or `python -c \"from PIL import Image; Image.open('photo.jpg').convert('RGB')"
    ".save('photo.ppm')\"`.\n";

/* Writes a formatted message to err and returns -1 (the C API's convention). */
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(err, errlen, fmt, args);
  va_end(args);
  return -1;
}

/* ---- PPM / PGM reading ------------------------------------------------------------------------ */

typedef struct {
  long width, height;
  int channels;        /* 1 (P5) or 3 (P6) */
  int maxval;          /* 1..65535 */
  int bytes;           /* per sample: 1 when maxval < 256, else 2 (big-endian) */
  unsigned char *data; /* height x width x channels samples, row-major */
} pnm_image;

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

/* The magic number: "P6" -> 3 channels, "P5" -> 1. */
static int pnm_magic(FILE *f, int *channels, char *err, size_t errlen) {
  int p = getc(f), n = getc(f);
  if (p == EOF && ferror(f)) return fail(err, errlen, "cannot read it (%s)", strerror(errno));
  if (p == EOF) return fail(err, errlen, "an empty file, not a PPM/PGM image");
  if (p == 'P' && (n == '2' || n == '3'))
    return fail(err, errlen, "a plain-text (P%c) PNM file; save it as binary PPM (P6) or PGM (P5)", n);
  if (p != 'P' || (n != '5' && n != '6'))
    return fail(err, errlen, "not a binary PPM (P6) or PGM (P5) image; convert it first, e.g. "
                             "`convert image.png image.ppm`");
  *channels = n == '6' ? 3 : 1;
  return 0;
}

/* Reads the header: width, height (at most MAX_PIXELS pixels together) and maxval. */
static int pnm_header(FILE *f, pnm_image *im, char *err, size_t errlen) {
  long maxval = 0;
  if (pnm_magic(f, &im->channels, err, errlen) || pnm_field(f, "width", MAX_PIXELS, &im->width, err, errlen) ||
      pnm_field(f, "height", MAX_PIXELS, &im->height, err, errlen) ||
      pnm_field(f, "maxval", 65535, &maxval, err, errlen))
    return -1;
  if (im->width > MAX_PIXELS / im->height)
    return fail(err, errlen, "%ldx%ld image is over the limit of %ld pixels; downscale it first", im->width,
                im->height, MAX_PIXELS);
  int c = getc(f); /* exactly one whitespace character before the samples */
  if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f')
    return fail(err, errlen, "bad PPM/PGM header: no whitespace after the maxval");
  im->maxval = (int)maxval;
  im->bytes = maxval < 256 ? 1 : 2;
  return 0;
}

/* Reads a whole binary PPM/PGM file into *im (im->data is malloc'ed; free it). */
static int pnm_read(const char *path, pnm_image *im, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  memset(im, 0, sizeof *im);
  if (!f) return fail(err, errlen, "cannot open it (%s)", strerror(errno));
  int status = pnm_header(f, im, err, errlen);
  if (status == 0) {
    /* at most 2^25 pixels x 3 channels x 2 bytes = 192 MiB: no overflow in size_t */
    size_t size = (size_t)im->width * (size_t)im->height * (size_t)im->channels * (size_t)im->bytes;
    im->data = malloc(size);
    if (!im->data) {
      status = fail(err, errlen, "not enough memory for its %zu bytes of pixels", size);
    } else {
      size_t got = fread(im->data, 1, size, f);
      if (got < size)
        status = ferror(f) ? fail(err, errlen, "cannot read it (%s)", strerror(errno))
                           : fail(err, errlen, "truncated: %zu of the %zu bytes of pixels its header announces "
                                               "(%ldx%ld, maxval %d); re-export the image", got, size, im->width,
                                  im->height, im->maxval);
    }
  }
  fclose(f);
  if (status) {
    free(im->data);
    im->data = NULL;
  }
  return status;
}

/* Sample c of pixel p as a raw integer. */
static unsigned pnm_raw(const pnm_image *im, size_t p, int c) {
  size_t i = p * (size_t)im->channels + (size_t)c;
  return im->bytes == 1 ? im->data[i] : ((unsigned)im->data[2 * i] << 8 | im->data[2 * i + 1]);
}

/* Channel c (of `channels` = 1 or 3 wanted) of pixel p in [0, 1]: repeated grey, or the luma of RGB. */
static float pnm_value(const pnm_image *im, size_t p, int c, int channels) {
  if (im->channels == channels) return (float)pnm_raw(im, p, c) / (float)im->maxval;
  if (im->channels == 1) return (float)pnm_raw(im, p, 0) / (float)im->maxval;
  unsigned r = pnm_raw(im, p, 0), g = pnm_raw(im, p, 1), b = pnm_raw(im, p, 2);
  if (im->maxval == 255) /* Pillow's "L": ITU-R 601 weights in 16-bit fixed point, rounded */
    return (float)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16) / 255.0f;
  return (0.299f * (float)r + 0.587f * (float)g + 0.114f * (float)b) / (float)im->maxval;
}

/* ---- resize + centre crop ----------------------------------------------------------------------- */

/* The taps of one axis: output j (of `count`) = sum over t < taps[j] of weight[j * stride + t] times
 * input first[j] + t. */
typedef struct {
  long count, stride;
  long *first, *taps;
  float *weight;
} axis_filter;

static void axis_free(axis_filter *a) {
  free(a->first);
  free(a->taps);
  free(a->weight);
}

/* Filter of one axis: `in` source pixels resized to `out` (in double: sides up to 2^25 x 16384),
 * outputs offset..offset+count-1 of the resized axis. Output j samples the source at
 * centre = (offset + j + 1/2) * in/out; with s = max(in/out, 1) (s > 1: downscaling, the filter widens
 * to average every source pixel it covers: antialiasing, as Pillow's resize does), input pixel k weighs
 * tri((k + 1/2 - centre) / s), tri(t) = max(0, 1 - |t|), normalised to sum 1 over 0 <= k < in.
 * At most ceil(2s) + 2 taps per output. */
static int resample_axis(long in, double out, double offset, long count, axis_filter *a, char *err, size_t errlen) {
  double scale = (double)in / out, s = scale > 1.0 ? scale : 1.0;
  memset(a, 0, sizeof *a);
  a->count = count;
  a->stride = (long)ceil(2.0 * s) + 2;
  a->first = malloc(sizeof(long) * (size_t)count);
  a->taps = malloc(sizeof(long) * (size_t)count);
  a->weight = malloc(sizeof(float) * (size_t)count * (size_t)a->stride);
  if (!a->first || !a->taps || !a->weight) {
    axis_free(a);
    return fail(err, errlen, "not enough memory to resize it");
  }
  for (long j = 0; j < count; ++j) {
    double centre = (offset + (double)j + 0.5) * scale;
    long lo = (long)floor(centre - s - 0.5), hi = (long)ceil(centre + s - 0.5); /* taps lo..hi */
    if (lo < 0) lo = 0;
    if (hi > in - 1) hi = in - 1;
    if (hi - lo + 1 > a->stride) hi = lo + a->stride - 1; /* never: hi - lo <= ceil(2s) + 1 */
    double sum = 0.0;
    float *wj = a->weight + (size_t)j * (size_t)a->stride;
    for (long k = lo; k <= hi; ++k) {
      double t = fabs(((double)k + 0.5 - centre) / s), v = t < 1.0 ? 1.0 - t : 0.0;
      wj[k - lo] = (float)v;
      sum += v;
    }
    for (long k = lo; k <= hi; ++k) /* sum > 0: the source pixel nearest the centre is within s */
      wj[k - lo] = (float)((double)wj[k - lo] / sum);
    a->first[j] = lo;
    a->taps[j] = hi - lo + 1;
  }
  return 0;
}

/* The source rows [*lo, *hi) that an axis filter reads. */
static void axis_span(const axis_filter *a, long *lo, long *hi) {
  *lo = a->first[0];
  *hi = a->first[0] + a->taps[0];
  for (long j = 1; j < a->count; ++j) {
    if (a->first[j] < *lo) *lo = a->first[j];
    if (a->first[j] + a->taps[j] > *hi) *hi = a->first[j] + a->taps[j];
  }
}

/* Rounds half to even, as Python's round() (the resized size in bhvit/predict.py). */
static double round_half_even(double x) {
  double r = floor(x), d = x - r;
  if (d > 0.5 || (d == 0.5 && fmod(r, 2.0) != 0.0)) r += 1.0;
  return r;
}

typedef struct {
  int channels, height, width, resize;
  float mean[64], std[64];
} preprocess;

/* Horizontal pass over the source rows [row0, row1): tmp (row1 - row0, W, C). */
static void resample_rows(const pnm_image *im, const preprocess *pp, const axis_filter *fx, long row0, long row1,
                          float *tmp) {
  int C = pp->channels;
  for (long y = row0; y < row1; ++y) {
    for (long j = 0; j < fx->count; ++j) {
      const float *w = fx->weight + (size_t)j * (size_t)fx->stride;
      float *dst = tmp + ((size_t)(y - row0) * (size_t)fx->count + (size_t)j) * (size_t)C;
      for (int c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (long t = 0; t < fx->taps[j]; ++t)
          acc += w[t] * pnm_value(im, (size_t)y * (size_t)im->width + (size_t)(fx->first[j] + t), c, C);
        dst[c] = acc;
      }
    }
  }
}

/* Vertical pass and normalisation: tmp (rows from row0, W, C) -> out (C, H, W). */
static void resample_cols(const float *tmp, const preprocess *pp, const axis_filter *fy, long row0, long width,
                          float *out) {
  int C = pp->channels;
  for (long i = 0; i < fy->count; ++i) {
    const float *w = fy->weight + (size_t)i * (size_t)fy->stride;
    for (long j = 0; j < width; ++j)
      for (int c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (long t = 0; t < fy->taps[i]; ++t)
          acc += w[t] * tmp[((size_t)(fy->first[i] + t - row0) * (size_t)width + (size_t)j) * (size_t)C + (size_t)c];
        out[((size_t)c * (size_t)fy->count + (size_t)i) * (size_t)width + (size_t)j] = (acc - pp->mean[c]) / pp->std[c];
      }
  }
}

/* Resize (shorter side to pp->resize), centre crop (pp->height x pp->width) and normalise: out (C, H, W). */
static int preprocess_image(const pnm_image *im, const preprocess *pp, float *out, char *err, size_t errlen) {
  double scale = (double)pp->resize / (double)(im->width < im->height ? im->width : im->height);
  double rw = round_half_even((double)im->width * scale), rh = round_half_even((double)im->height * scale);
  if (rw < pp->width) rw = pp->width; /* each resized side at least the crop's */
  if (rh < pp->height) rh = pp->height;
  double left = floor((rw - pp->width) / 2.0), top = floor((rh - pp->height) / 2.0); /* up to 2^25 x 16384 */
  axis_filter fx, fy;
  if (resample_axis(im->width, rw, left, pp->width, &fx, err, errlen)) return -1;
  if (resample_axis(im->height, rh, top, pp->height, &fy, err, errlen)) {
    axis_free(&fx);
    return -1;
  }
  long row0, row1;
  axis_span(&fy, &row0, &row1);
  /* (rows the crop reads) x W x C floats: about the crop's share of the source, or of the crop itself */
  float *tmp = malloc(sizeof(float) * (size_t)(row1 - row0) * (size_t)pp->width * (size_t)pp->channels);
  int status = 0;
  if (!tmp) {
    status = fail(err, errlen, "not enough memory to resize it");
  } else {
    resample_rows(im, pp, &fx, row0, row1, tmp);
    resample_cols(tmp, pp, &fy, row0, pp->width, out);
  }
  free(tmp);
  axis_free(&fx);
  axis_free(&fy);
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
  int first_path, npaths; /* argv[first_path ..]: the model then the images */
  char **paths;
} options;

/* One line on stderr for a bad command line; returns the usage exit status. */
static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "bhvit-run: error: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, " (usage: bhvit-run [--threads N] [--top K] [--isa NAME] model.bhvp image.ppm ...; see --help)\n");
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

/* Reads the model's input shape and preprocessing, checking that bhvit-run can feed it. */
static int model_preprocess(const bhvit_model *m, preprocess *pp, char *err, size_t errlen) {
  if (bhvit_input_dims(m, &pp->channels, &pp->height, &pp->width))
    return fail(err, errlen, "cannot read the model's input shape");
  if (pp->height < 1 || pp->width < 1) return fail(err, errlen, "the model's input size is not valid");
  if (pp->channels != 1 && pp->channels != 3)
    return fail(err, errlen, "the model takes %d-channel images; bhvit-run feeds grey (1) or RGB (3) ones: "
                             "call bhvit_run from your own program with your preprocessing", pp->channels);
  if (bhvit_preprocess(m, pp->mean, pp->std, &pp->resize, err, errlen)) return -1;
  if (pp->resize < 1) return fail(err, errlen, "the model file's preprocess resize %d is not valid", pp->resize);
  return 0;
}

/* Classifies one image; 0 on success, else prints one error line and returns 1. */
static int classify(bhvit_model *m, const preprocess *pp, const char *path, int top, float *input, float *logits,
                    double *prob) {
  char err[ERRLEN];
  pnm_image im;
  int n = bhvit_num_classes(m);
  if (pnm_read(path, &im, err, sizeof err) || preprocess_image(&im, pp, input, err, sizeof err) ||
      bhvit_run(m, input, 1, logits, err, sizeof err)) {
    free(im.data);
    fprintf(stderr, "bhvit-run: error: %s: %s\n", path, err);
    return 1;
  }
  free(im.data);
  printf("%s\n", path);
  print_top(m, logits, n, top, prob);
  fflush(stdout);
  return 0;
}

/* Loads the model, applies the options and classifies every image. */
static int run(const options *o) {
  char err[ERRLEN];
  preprocess pp;
  if (o->threads) bhvit_set_num_threads(o->threads);
  if (o->isa && bhvit_set_isa(o->isa, err, sizeof err)) return usage_error("--isa: %s", err);
  bhvit_model *m = bhvit_load(o->paths[0], err, sizeof err);
  if (!m || model_preprocess(m, &pp, err, sizeof err)) {
    fprintf(stderr, "bhvit-run: error: %s: %s\n", o->paths[0], err);
    if (m) bhvit_free(m);
    return 1;
  }
  int n = bhvit_num_classes(m);
  float *input = malloc(sizeof(float) * (size_t)pp.channels * (size_t)pp.height * (size_t)pp.width);
  float *logits = malloc(sizeof(float) * (size_t)n);
  double *prob = malloc(sizeof(double) * (size_t)n);
  int status = 0;
  if (!input || !logits || !prob) {
    fprintf(stderr, "bhvit-run: error: not enough memory for the model's input and output; free some memory\n");
    status = 1;
  }
  for (int i = 1; i < o->npaths && !(input == NULL || logits == NULL || prob == NULL); ++i)
    status |= classify(m, &pp, o->paths[i], o->top, input, logits, prob);
  free(input);
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
