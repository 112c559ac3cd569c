/* Checkpoint directories: files are named ckpt-<step>.ferry (the step in
 * decimal); the newest is the one with the largest step. Temp files of a
 * writer (ckpt-<step>.ferry.tmp.<pid>) never match the pattern. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn/err.h"
#include "train/ckpt_impl.h"

typedef struct {
  uint64_t step;
  char name[64];
} entry;

/* Step of a file named ckpt-<digits>.ferry; 0 on any other name. */
static int parse_name(const char *s, uint64_t *step) {
  if (strncmp(s, "ckpt-", 5) != 0) return 0;
  const char *p = s + 5;
  uint64_t v = 0;
  int nd = 0;
  for (; *p >= '0' && *p <= '9'; p++, nd++) {
    if (nd >= 19) return 0; /* stays below 2^63 */
    v = v * 10 + (uint64_t)(*p - '0');
  }
  if (nd == 0 || strcmp(p, ".ferry") != 0) return 0;
  *step = v;
  return 1;
}

/* Newest first; equal steps (ckpt-7 and ckpt-007) by name for a stable order. */
static int newest_first(const void *a, const void *b) {
  const entry *x = a, *y = b;
  if (x->step != y->step) return x->step < y->step ? 1 : -1;
  return strcmp(x->name, y->name);
}

/* Lists checkpoint files of dir, newest first. A missing dir is an empty
 * list. *out owned by the caller (free). */
static int list_dir(const char *dir, entry **out, size_t *n) {
  *out = NULL;
  *n = 0;
  DIR *d = opendir(dir);
  if (!d && errno == ENOENT) return 0;
  CHECK_RT(d != NULL, "checkpoint directory %s: cannot open: %s", dir, strerror(errno));
  size_t cap = 0;
  entry *v = NULL;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    uint64_t step;
    size_t len = strlen(de->d_name);
    if (len >= sizeof v->name || !parse_name(de->d_name, &step)) continue;
    if (*n == cap) {
      cap = cap ? 2 * cap : 16;
      entry *p = realloc(v, cap * sizeof *v);
      if (!p) {
        free(v);
        closedir(d);
        FERRY_FAIL(FERRY_ERUNTIME, "out of memory listing %s", dir);
      }
      v = p;
    }
    v[*n].step = step;
    memcpy(v[*n].name, de->d_name, len + 1);
    (*n)++;
  }
  closedir(d);
  if (*n) qsort(v, *n, sizeof *v, newest_first);
  *out = v;
  return 0;
}

static int join(char *out, size_t n, const char *dir, const char *name) {
  int w = snprintf(out, n, "%s/%s", dir, name);
  CHECK_USER(w > 0 && (size_t)w < n, "path %s/%s is longer than %zu characters", dir, name, n - 1);
  return 0;
}

int ckpt_path_for_step(char *out, size_t n, const char *dir, int64_t step) {
  CHECK_USER(step >= 0, "checkpoint step must be >= 0, found %" PRId64, step);
  char name[64];
  snprintf(name, sizeof name, "ckpt-%" PRId64 ".ferry", step);
  CHECK_CALL(join(out, n, dir, name));
  return 0;
}

static void append(char *buf, size_t n, const char *fmt, const char *a, const char *b) {
  if (!buf || n == 0) return;
  size_t k = strlen(buf);
  if (k + 1 < n) snprintf(buf + k, n - k, fmt, a, b);
}

int ckpt_find_latest(const char *dir, char *path_out, size_t n, char *skipped_msg, size_t m) {
  if (n) path_out[0] = '\0';
  if (skipped_msg && m) skipped_msg[0] = '\0';
  entry *v;
  size_t cnt;
  CHECK_CALL(list_dir(dir, &v, &cnt));
  int rc = 0;
  for (size_t i = 0; i < cnt && rc == 0; i++) {
    char path[4096];
    rc = join(path, sizeof path, dir, v[i].name);
    if (rc) break;
    ckpt_file *f = NULL;
    if (ckpt_open(&f, path) == 0) {
      ckpt_close(&f);
      if (strlen(path) >= n) {
        rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                           "checkpoint path %s does not fit in %zu characters", path, n);
        break;
      }
      memcpy(path_out, path, strlen(path) + 1);
      break;
    }
    append(skipped_msg, m, "skipped %s: %s\n", v[i].name, ferry_err_msg());
    ferry_err_clear();
  }
  free(v);
  CHECK_CALL(rc);
  return 0;
}

int ckpt_prune(const char *dir, int keep) {
  CHECK_USER(keep >= 1, "checkpoint keep count must be >= 1, found %d", keep);
  entry *v;
  size_t cnt;
  CHECK_CALL(list_dir(dir, &v, &cnt));
  int rc = 0;
  for (size_t i = (size_t)keep; i < cnt && rc == 0; i++) {
    char path[4096];
    rc = join(path, sizeof path, dir, v[i].name);
    if (!rc && unlink(path) != 0 && errno != ENOENT)
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "cannot delete old checkpoint %s: %s", path, strerror(errno));
  }
  free(v);
  CHECK_CALL(rc);
  return 0;
}
