/* c_api_check: a C99 program using only bhvit_runtime.h, compiled and run by tests/runtime/test_c_api.py
 * (and cross-compiled for aarch64 by test_aarch64.py).
 *
 *   c_api_check model.bhvp images.f32 batch logits.f32
 *
 * Loads the model, prints its input dims, classes, preprocessing and first label, runs the batch read from
 * images.f32 (batch x C x H x W float32, native byte order) and writes the logits (batch x classes float32)
 * to logits.f32. It also checks that loading from memory, on 1 and 2 threads and with profiling on gives the
 * same logits bit for bit, and walks the API's error paths (missing file, NULL arguments, batch 0, bad ISA
 * name, ...): each must return the error value with a message and not crash. Prints "FAIL: ..." per failed
 * check and exits 1 if any failed, else prints "checks: N ok" and exits 0.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bhvit_runtime.h"

static int checks, failures;

static void check(int ok, const char *what) {
  ++checks;
  if (!ok) {
    ++failures;
    printf("FAIL: %s\n", what);
  }
}

/* Reads a whole file; NULL on error. */
static unsigned char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  unsigned char *data = NULL;
  long n;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
    data = malloc((size_t)n + 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
      free(data);
      data = NULL;
    }
    *size = (size_t)n;
  }
  fclose(f);
  return data;
}

static void print_info(const bhvit_model *m) {
  int c = 0, h = 0, w = 0, resize = 0;
  float mean[64], std[64];
  char err[256];
  check(bhvit_input_dims(m, &c, &h, &w) == 0 && c >= 1 && c <= 64, "bhvit_input_dims");
  printf("input %d %d %d classes %d\n", c, h, w, bhvit_num_classes(m));
  check(bhvit_preprocess(m, mean, std, &resize, err, sizeof err) == 0, "bhvit_preprocess");
  printf("preprocess resize %d mean %.6g std %.6g\n", resize, mean[0], std[0]);
  const char *label = bhvit_label(m, 0);
  printf("label0 %s\n", label ? label : "(none)");
  printf("isa %s threads %d\n", bhvit_isa(), bhvit_get_num_threads());
}

/* Error paths of loading: each returns NULL with a message. */
static void check_load_errors(void) {
  char err[256];
  static const char junk[] = "this is not a packed model";
  err[0] = 0;
  check(bhvit_load("/nonexistent/model.bhvp", err, sizeof err) == NULL && err[0], "load of a missing file");
  err[0] = 0;
  check(bhvit_load(NULL, err, sizeof err) == NULL && err[0], "load(NULL)");
  err[0] = 0;
  check(bhvit_load_memory(NULL, 10, err, sizeof err) == NULL && err[0], "load_memory(NULL)");
  err[0] = 0;
  check(bhvit_load_memory(junk, sizeof junk, err, sizeof err) == NULL && err[0], "load_memory(junk)");
  check(bhvit_load("/nonexistent/model.bhvp", NULL, 0) == NULL, "load with err NULL, errlen 0");
  memset(err, 'x', sizeof err);
  check(bhvit_load("/nonexistent/model.bhvp", err, 8) == NULL && memchr(err, 0, 8) != NULL,
        "a message truncated to errlen and NUL-terminated");
}

/* Error paths of running and of the accessors. */
static void check_run_errors(bhvit_model *m, const float *images, float *logits) {
  char err[256];
  int c, h, w, resize;
  float mean[64], std[64];
  char isa[64];
  snprintf(isa, sizeof isa, "%s", bhvit_isa());
  err[0] = 0;
  check(bhvit_run(NULL, images, 1, logits, err, sizeof err) == -1 && err[0], "run(NULL model)");
  err[0] = 0;
  check(bhvit_run(m, NULL, 1, logits, err, sizeof err) == -1 && err[0], "run(images NULL)");
  err[0] = 0;
  check(bhvit_run(m, images, 1, NULL, err, sizeof err) == -1 && err[0], "run(logits NULL)");
  err[0] = 0;
  check(bhvit_run(m, images, 0, logits, err, sizeof err) == -1 && err[0], "run(batch 0)");
  err[0] = 0;
  check(bhvit_run(m, images, -3, logits, err, sizeof err) == -1 && err[0], "run(batch -3)");
  check(bhvit_run(m, images, 0, logits, NULL, 0) == -1, "run(batch 0) with err NULL");
  err[0] = 0;
  check(bhvit_set_isa("no-such-isa", err, sizeof err) == -1 && err[0], "set_isa(bad name)");
  check(bhvit_set_isa(NULL, err, sizeof err) == -1, "set_isa(NULL)");
  check(strcmp(bhvit_isa(), isa) == 0, "a refused set_isa keeps the kernel path");
  /* the path in use is the best one (listed first) unless BHVIT_ISA chose another */
  const char *forced = getenv("BHVIT_ISA");
  check(forced && *forced ? strstr(bhvit_isas(), isa) != NULL : strncmp(bhvit_isas(), isa, strlen(isa)) == 0,
        "bhvit_isas lists the best path first (the path in use when BHVIT_ISA chose it)");
  check(strstr(bhvit_isas(), "generic") != NULL, "bhvit_isas lists generic");
  check(bhvit_num_classes(NULL) == -1, "num_classes(NULL)");
  check(bhvit_input_dims(NULL, &c, &h, &w) == -1, "input_dims(NULL model)");
  h = w = resize = -7; /* a NULL output is skipped (0, the others written) or refused (-1), never written */
  int rc = bhvit_input_dims(m, NULL, &h, &w);
  check(rc == 0 ? h >= 1 && w >= 1 : rc == -1, "input_dims(channels NULL)");
  check(bhvit_preprocess(NULL, mean, std, &resize, err, sizeof err) == -1, "preprocess(NULL model)");
  rc = bhvit_preprocess(m, NULL, NULL, &resize, err, sizeof err);
  check(rc == 0 ? resize >= 1 : rc == -1, "preprocess(mean and std NULL)");
  check(bhvit_label(m, -1) == NULL && bhvit_label(m, bhvit_num_classes(m)) == NULL, "label out of range");
  check(bhvit_label(NULL, 0) == NULL, "label(NULL)");
  check(bhvit_metadata(m, "no-such-key") == NULL && bhvit_metadata(NULL, "preprocess") == NULL,
        "metadata of a missing key / NULL model");
  check(bhvit_metadata(m, NULL) == NULL, "metadata(NULL key)");
  check(bhvit_metadata(m, "preprocess") != NULL && bhvit_metadata(m, "config") != NULL, "metadata present");
  bhvit_free(NULL);
}

/* The same logits from memory, on 1 and 2 threads, with profiling on. */
static void check_same_logits(bhvit_model *m, const unsigned char *file, size_t size, const float *images, int batch,
                              const float *want, float *got) {
  char err[256];
  size_t bytes = sizeof(float) * (size_t)batch * (size_t)bhvit_num_classes(m);
  bhvit_model *mem = bhvit_load_memory(file, size, err, sizeof err);
  check(mem != NULL, "load_memory of the file's bytes");
  if (mem) {
    check(bhvit_run(mem, images, batch, got, err, sizeof err) == 0 && memcmp(got, want, bytes) == 0,
          "load_memory gives the same logits");
    bhvit_free(mem);
  }
  for (int threads = 1; threads <= 2; ++threads) {
    bhvit_set_num_threads(threads);
    check(bhvit_get_num_threads() == threads, "set_num_threads");
    check(bhvit_run(m, images, batch, got, err, sizeof err) == 0 && memcmp(got, want, bytes) == 0,
          "the same logits on 1 and 2 threads");
  }
  const char *kinds[64];
  double seconds[64];
  const int n = bhvit_profile_kinds(m, kinds, 64);
  check(n >= 1 && n <= 64 && kinds[0] != NULL, "profile kinds");
  check(bhvit_run_profiled(m, images, batch, got, seconds, n, err, sizeof err) == 0 && memcmp(got, want, bytes) == 0,
        "the same logits when profiled");
  check(seconds[0] >= 0.0, "seconds of a profiled run");
}

/* The limits and the cost: a load within the defaults (NULL or given) or a raised limit; a limit below the
 * model's cost, or a zero field, refused with the field's name; non-finite pixels refused. */
static void check_limits(bhvit_model *m, const unsigned char *file, size_t size, const float *images, float *logits) {
  char err[512];
  bhvit_cost cost, again;
  bhvit_limits limits = bhvit_default_limits();
  check(limits.header_bytes == 16u << 20 && limits.binary_macs > 0 && limits.float_macs > 0 &&
            limits.activation_bytes > 0, "default limits");
  check(bhvit_get_cost(m, &cost) == 0 && cost.activation_bytes > 0 && cost.weight_bytes > 0 && cost.binary_macs > 0 &&
            cost.float_macs > 0, "get_cost");
  check(bhvit_get_cost(NULL, &cost) == -1 && bhvit_get_cost(m, NULL) == -1, "get_cost(NULL)");
  limits.binary_macs = cost.binary_macs;
  bhvit_model *at = bhvit_load_memory_ex(file, size, &limits, err, sizeof err);
  check(at != NULL && bhvit_get_cost(at, &again) == 0 && memcmp(&cost, &again, sizeof cost) == 0,
        "load_memory_ex at exactly the model's cost");
  bhvit_free(at);
  limits.binary_macs = cost.binary_macs - 1;
  check(bhvit_load_memory_ex(file, size, &limits, err, sizeof err) == NULL && strstr(err, "binary_macs") != NULL,
        "load_memory_ex one below the model's cost");
  limits = bhvit_default_limits();
  limits.activation_bytes = 0;
  check(bhvit_load_ex("/nonexistent/model.bhvp", &limits, err, sizeof err) == NULL &&
            strstr(err, "activation_bytes is 0") != NULL, "a zero limit");
  int c, h, w;
  bhvit_input_dims(m, &c, &h, &w);
  size_t n = (size_t)c * (size_t)h * (size_t)w;
  float *bad = malloc(sizeof(float) * n);
  if (bad) {
    memcpy(bad, images, sizeof(float) * n);
    bad[n - 1] = NAN;
    check(bhvit_run(m, bad, 1, logits, err, sizeof err) == -1 && strstr(err, "image 0 holds NaN") != NULL,
          "a NaN pixel is refused");
    free(bad);
  }
}

/* Reads batch x C x H x W floats from path; NULL (with a message) on error. */
static float *read_images(const bhvit_model *m, const char *path, int batch) {
  int c, h, w;
  size_t size = 0;
  bhvit_input_dims(m, &c, &h, &w);
  unsigned char *data = read_file(path, &size);
  if (!data || size != sizeof(float) * (size_t)batch * (size_t)c * (size_t)h * (size_t)w) {
    fprintf(stderr, "c_api_check: %s: expected %d x %d x %d x %d float32 values\n", path, batch, c, h, w);
    free(data);
    return NULL;
  }
  return (float *)data;
}

int main(int argc, char **argv) {
  char err[256];
  size_t size = 0;
  int batch = argc == 5 ? atoi(argv[3]) : 0;
  if (batch < 1) {
    fprintf(stderr, "usage: c_api_check model.bhvp images.f32 batch logits.f32\n");
    return 2;
  }
  check_load_errors();
  bhvit_model *m = bhvit_load(argv[1], err, sizeof err);
  unsigned char *file = read_file(argv[1], &size);
  if (!m || !file) {
    fprintf(stderr, "c_api_check: %s: %s\n", argv[1], m ? "cannot read it" : err);
    return 1;
  }
  print_info(m);
  float *images = read_images(m, argv[2], batch);
  size_t nlogits = (size_t)batch * (size_t)bhvit_num_classes(m);
  float *logits = malloc(sizeof(float) * nlogits), *again = malloc(sizeof(float) * nlogits);
  FILE *out = fopen(argv[4], "wb");
  if (!images || !logits || !again || !out || bhvit_run(m, images, batch, logits, err, sizeof err) ||
      fwrite(logits, sizeof(float), nlogits, out) != nlogits) {
    fprintf(stderr, "c_api_check: run failed: %s\n", images && logits && again && out ? err : "setup");
    return 1;
  }
  fclose(out);
  check_same_logits(m, file, size, images, batch, logits, again);
  check_run_errors(m, images, again);
  check_limits(m, file, size, images, again);
  bhvit_free(m);
  free(file);
  free(images);
  free(logits);
  free(again);
  if (failures) return 1;
  printf("checks: %d ok\n", checks);
  return 0;
}
