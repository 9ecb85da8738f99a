/* forward_runtime: the packed runtime's forward between count_insns markers (benchmarks/arm_instructions.py).
 *
 *   forward_runtime model.bhvp images.f32 batch forwards threads
 *
 * Loads the model, reads batch images (batch x C x H x W float32, native byte order), sets the runtime's
 * threads, runs one warm-up forward (it sizes the activation buffers), then `forwards` forwards with a
 * marker (getpid with the magic first argument, tag k) before the first and after the k-th: the difference
 * of markers k-1 and k is the k-th forward's cost. Prints the kernel path, threads and the first logit.
 */
#define _DEFAULT_SOURCE /* syscall() */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bhvit_runtime.h"

#define MARKER_SYSCALL 172 /* getpid on aarch64 (count_insns.c) */
#define MARKER_MAGIC 0x62687669L

static void marker(long tag) { syscall(MARKER_SYSCALL, MARKER_MAGIC, tag); }

static int fail(const char *what, const char *detail) {
  fprintf(stderr, "forward_runtime: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  return 1;
}

int main(int argc, char **argv) {
  char err[512];
  if (argc != 6) return fail("usage: forward_runtime model.bhvp images.f32 batch forwards threads", NULL);
  int batch = atoi(argv[3]), forwards = atoi(argv[4]), threads = atoi(argv[5]);
  if (batch < 1 || batch > 4096 || forwards < 1 || forwards > 1000 || threads < 1 || threads > 1024)
    return fail("batch must be 1..4096, forwards 1..1000, threads 1..1024", NULL);
  bhvit_set_num_threads(threads);
  bhvit_model *m = bhvit_load(argv[1], err, sizeof err);
  if (!m) return fail("cannot load the model", err);
  int c = 0, h = 0, w = 0, classes = bhvit_num_classes(m);
  bhvit_input_dims(m, &c, &h, &w);
  size_t n = (size_t)batch * (size_t)c * (size_t)h * (size_t)w;
  float *images = malloc(n * sizeof(float)), *logits = malloc((size_t)batch * (size_t)classes * sizeof(float));
  FILE *f = fopen(argv[2], "rb");
  int ok = images && logits && f && fread(images, sizeof(float), n, f) == n;
  if (f) fclose(f);
  if (!ok) return fail("cannot read batch x C x H x W floats from", argv[2]);
  if (bhvit_run(m, images, batch, logits, err, sizeof err)) return fail("warm-up forward", err);
  marker(0);
  for (int k = 1; k <= forwards; ++k) {
    if (bhvit_run(m, images, batch, logits, err, sizeof err)) return fail("forward", err);
    marker(k);
  }
  printf("isa %s threads %d logit0 %.6g\n", bhvit_isa(), bhvit_get_num_threads(), logits[0]);
  bhvit_free(m);
  free(images);
  free(logits);
  return 0;
}
