/* One model, many callers: THREADS threads each make RUNS calls of bhvit_run on the same loaded model with
 * batch sizes 1..4 drawn at random, and every result must equal, bit for bit, the same batch run alone
 * before the threads start. Prints "ok <runs>" or the first mismatch; exit status 0 only when all agree.
 *
 *   threads_check model.bhvp THREADS RUNS
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bhvit_runtime.h"

#define MAX_BATCH 4

static bhvit_model *model;
static float *images, *expected[MAX_BATCH + 1];
static int runs, classes, failed;
static pthread_mutex_t report = PTHREAD_MUTEX_INITIALIZER;

static void *client(void *arg) {
  unsigned seed = (unsigned)(size_t)arg * 2654435761u + 1u;
  float *logits = malloc(sizeof(float) * (size_t)(MAX_BATCH * classes));
  char err[256];
  for (int i = 0; i < runs && logits; ++i) {
    seed = seed * 1103515245u + 12345u;
    const int batch = 1 + (int)((seed >> 16) % MAX_BATCH);
    if (bhvit_run(model, images, batch, logits, err, sizeof err) != 0 ||
        memcmp(logits, expected[batch], sizeof(float) * (size_t)(batch * classes)) != 0) {
      pthread_mutex_lock(&report);
      if (!failed++) fprintf(stderr, "thread %zu run %d batch %d: %s\n", (size_t)arg, i, batch, err[0] ? err : "different logits");
      pthread_mutex_unlock(&report);
      break;
    }
    err[0] = '\0';
  }
  free(logits);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s model.bhvp THREADS RUNS\n", argv[0]);
    return 2;
  }
  char err[256];
  model = bhvit_load(argv[1], err, sizeof err);
  if (!model) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  const int threads = atoi(argv[2]);
  runs = atoi(argv[3]);
  classes = bhvit_num_classes(model);
  int c, h, w;
  bhvit_input_dims(model, &c, &h, &w);
  const size_t per_image = (size_t)c * (size_t)h * (size_t)w;
  images = malloc(sizeof(float) * per_image * MAX_BATCH);
  for (size_t i = 0; i < per_image * MAX_BATCH; ++i) images[i] = (float)((i * 7919u) % 1000u) / 250.0f - 2.0f;
  for (int b = 1; b <= MAX_BATCH; ++b) {
    expected[b] = malloc(sizeof(float) * (size_t)(b * classes));
    if (bhvit_run(model, images, b, expected[b], err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
  }
  pthread_t *tids = malloc(sizeof(pthread_t) * (size_t)threads);
  for (int t = 0; t < threads; ++t) pthread_create(&tids[t], NULL, client, (void *)(size_t)t);
  for (int t = 0; t < threads; ++t) pthread_join(tids[t], NULL);
  bhvit_free(model);
  if (failed) return 1;
  printf("ok %d\n", threads * runs);
  return 0;
}
