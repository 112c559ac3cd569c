/* bench_ckpt: checkpoint I/O against copying the same bytes. Builds a dense
 * stack of about 100 MB of parameters (optionally with AdamW state), then,
 * interleaved over several repetitions, times
 *   ckpt_write (temp file, CRC-32 per record, fsync, rename, dir fsync),
 *   write(2) of the bytes with and without fsync, and write + fsync of a new
 *   file renamed over the previous one (the same crash-safe pattern),
 *   cp of the checkpoint file, and cp followed by `sync FILE` (fsync),
 *   ckpt_open + ckpt_load_model (read, verify every CRC, copy into the slab),
 *   read(2) of the file into a buffer,
 * and prints one JSON document with medians and the ratios.
 * usage: bench_ckpt [--dir DIR] [--reps N] [--mb MB] [--adamw] */
#define _XOPEN_SOURCE 700 /* sync(2) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "nn/err.h"
#include "train/ckpt.h"

enum { MAX_REPS = 64, WIDTH = 2048 };

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  double t[MAX_REPS];
  memcpy(t, v, (size_t)n * sizeof *v);
  qsort(t, (size_t)n, sizeof *t, cmp_d);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static int die(const char *what) {
  fprintf(stderr, "bench_ckpt: %s: %s\n", what, ferry_err_msg()[0] ? ferry_err_msg() : strerror(errno));
  exit(1);
}

/* write(2) of n bytes in 64 MiB pieces (what a plain dump of the slab costs). */
static double raw_write(const char *path, const void *p, size_t n, int do_fsync) {
  double t0 = now_s();
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("open");
  for (size_t off = 0; off < n;) {
    size_t k = n - off < ((size_t)64 << 20) ? n - off : (size_t)64 << 20;
    ssize_t w = write(fd, (const char *)p + off, k);
    if (w <= 0) die("write");
    off += (size_t)w;
  }
  if (do_fsync && fsync(fd) != 0) die("fsync");
  close(fd);
  return now_s() - t0;
}

/* The crash-safe version of raw_write: a new file, fsync, rename over the
 * old one (what ckpt_write does, minus framing and CRCs). */
static double atomic_write(const char *path, const void *p, size_t n) {
  char tmp[1100];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  double t0 = now_s();
  raw_write(tmp, p, n, 1);
  if (rename(tmp, path) != 0) die("rename");
  return now_s() - t0;
}

static double raw_read(const char *path, void *buf, size_t n) {
  double t0 = now_s();
  int fd = open(path, O_RDONLY);
  if (fd < 0) die("open");
  for (size_t off = 0; off < n;) {
    ssize_t r = read(fd, (char *)buf + off, n - off);
    if (r <= 0) die("read");
    off += (size_t)r;
  }
  close(fd);
  return now_s() - t0;
}

static double shell(const char *cmd) {
  double t0 = now_s();
  if (system(cmd) != 0) die(cmd);
  return now_s() - t0;
}

int main(int argc, char **argv) {
  const char *dir = "/tmp";
  int reps = 5, adamw = 0;
  double mb = 100.0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
    else if (!strcmp(argv[i], "--adamw")) adamw = 1;
    else {
      fprintf(stderr, "usage: bench_ckpt [--dir DIR] [--reps N] [--mb MB] [--adamw]\n");
      return 2;
    }
  }
  if (reps < 1 || reps > MAX_REPS) reps = 5;
  /* Dense layers of WIDTH x WIDTH (16 MiB each) until about mb megabytes. */
  int layers = (int)(mb * 1e6 / (4.0 * WIDTH * (WIDTH + 1)) + 0.5);
  if (layers < 1) layers = 1;
  if (layers > NN_MAX_LAYERS) layers = NN_MAX_LAYERS;
  nn_model_spec sp;
  memset(&sp, 0, sizeof sp);
  sp.in = (nn_shape){WIDTH, 1, 1};
  for (int i = 0; i < layers; i++) {
    sp.trunk.layers[i].op = NN_DENSE;
    sp.trunk.layers[i].out = WIDTH;
  }
  sp.trunk.nlayers = layers;
  sp.nheads = 1;
  strcpy(sp.heads[0].name, "main");
  sp.heads[0].nlayers = 1;
  sp.heads[0].layers[0].op = NN_DENSE;
  sp.heads[0].layers[0].out = 10;
  nn_model *m = NULL, *m2 = NULL;
  if (nn_model_new(&m, &sp, 1) || nn_model_new(&m2, &sp, 1)) die("nn_model_new");
  nn_model_init_params(m, 1);
  nn_optim o = {0}, o2 = {0};
  nn_opt_cfg cfg = {.kind = NN_OPT_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  if (adamw && (nn_optim_init(&o, &cfg, m->nparams) || nn_optim_init(&o2, &cfg, m->nparams))) die("optim");
  char ck[1024], raw[1024], cpy[1024], cmd[4096];
  snprintf(ck, sizeof ck, "%s/bench-ckpt-%ld.ferry", dir, (long)getpid());
  snprintf(raw, sizeof raw, "%s/bench-raw-%ld.bin", dir, (long)getpid());
  snprintf(cpy, sizeof cpy, "%s/bench-cp-%ld.ferry", dir, (long)getpid());
  /* Raw baselines write the same number of bytes as the checkpoint file. */
  if (ckpt_write(ck, m, adamw ? &o : NULL, NULL, 0)) die("ckpt_write");
  struct stat st;
  stat(ck, &st);
  size_t bytes = (size_t)st.st_size;
  char *buf = malloc(bytes);
  if (!buf) die("malloc");
  memset(buf, 1, bytes);
  double t_atomic[MAX_REPS], t_ck_w[MAX_REPS], t_w_sync[MAX_REPS], t_w[MAX_REPS], t_cp[MAX_REPS], t_cp_sync[MAX_REPS],
      t_ck_r[MAX_REPS], t_r[MAX_REPS], t_crc[MAX_REPS];
  /* sync() before every timed step: each starts with no dirty pages left by
   * the previous one (the kernel throttles writers above its dirty limits). */
  for (int r = 0; r < reps; r++) {
    sync();
    double t0 = now_s();
    if (ckpt_write(ck, m, adamw ? &o : NULL, NULL, 0)) die("ckpt_write");
    t_ck_w[r] = now_s() - t0;
    sync();
    t_w_sync[r] = raw_write(raw, buf, bytes, 1);
    sync();
    t_atomic[r] = atomic_write(raw, buf, bytes);
    sync();
    t_w[r] = raw_write(raw, buf, bytes, 0);
    sync();
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", ck, cpy);
    t_cp[r] = shell(cmd);
    sync();
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && sync '%s'", ck, cpy, cpy);
    t_cp_sync[r] = shell(cmd);
    sync();
    t0 = now_s();
    ckpt_file *f = NULL;
    if (ckpt_open(&f, ck) || ckpt_load_model(f, m2, adamw ? &o2 : NULL)) die("ckpt_open/load");
    ckpt_close(&f);
    t_ck_r[r] = now_s() - t0;
    t_r[r] = raw_read(ck, buf, bytes);
    t0 = now_s();
    volatile uLong crc = crc32_z(0, (const Bytef *)buf, bytes);
    (void)crc;
    t_crc[r] = now_s() - t0;
  }
  if (memcmp(m->params, m2->params, m->nparams * sizeof(float))) die("round trip differs");
  unlink(ck);
  unlink(raw);
  unlink(cpy);
  double aw = median(t_atomic, reps), cw = median(t_ck_w, reps), ws = median(t_w_sync, reps), w = median(t_w, reps),
         cp = median(t_cp, reps), cps = median(t_cp_sync, reps), cr = median(t_ck_r, reps),
         rd = median(t_r, reps), crc = median(t_crc, reps);
  printf("{\"bench\": \"ckpt\", \"dir\": \"%s\", \"bytes\": %zu, \"params\": %zu, \"adamw\": %s, \"reps\": %d,\n"
         " \"median_s\": {\"ckpt_write\": %.4f, \"write_fsync_rename\": %.4f, \"write_fsync\": %.4f, \"write\": %.4f, \"cp\": %.4f, "
         "\"cp_sync\": %.4f,\n               \"ckpt_open_load\": %.4f, \"read\": %.4f, \"crc32\": %.4f},\n"
         " \"ratio\": {\"ckpt_write/write_fsync_rename\": %.2f, \"ckpt_write/write_fsync\": %.2f, \"ckpt_write/cp_sync\": %.2f, \"ckpt_write/cp\": %.2f,\n"
         "           \"ckpt_open_load/read\": %.2f, \"ckpt_open_load/cp\": %.2f},\n"
         " \"GB_per_s\": {\"ckpt_write\": %.2f, \"ckpt_open_load\": %.2f, \"crc32\": %.2f}}\n",
         dir, bytes, m->nparams, adamw ? "true" : "false", reps, cw, aw, ws, w, cp, cps, cr, rd, crc, cw / aw, cw / ws,
         cw / cps, cw / cp, cr / rd, cr / cp, bytes / cw / 1e9, bytes / cr / 1e9, bytes / crc / 1e9);
  free(buf);
  nn_optim_free(&o);
  nn_optim_free(&o2);
  nn_model_free(&m);
  nn_model_free(&m2);
  return 0;
}
