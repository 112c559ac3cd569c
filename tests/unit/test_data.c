/* Tests for nn/data.h: IDX and CSV readers (good and broken files), the real
 * Fashion-MNIST files when installed, seeded subsets, the digest, and batch
 * assembly with every transform (values, layout, keyed determinism). */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "nn/data.h"
#include "nn/err.h"

static char tmpdir[64];

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Path of a scratch file; the returned buffer is one of a small ring. */
static const char *tpath(const char *name) {
  static char ring[64][sizeof tmpdir + 264];
  static int k;
  char *p = ring[k++ & 63];
  snprintf(p, sizeof ring[0], "%s/%s", tmpdir, name);
  return p;
}

static void write_file(const char *path, int gz, const void *data, size_t n) {
  if (gz) {
    gzFile f = gzopen(path, "wb6");
    if (!f || (n && gzwrite(f, data, (unsigned)n) != (int)n) || gzclose(f) != Z_OK) {
      fprintf(stderr, "cannot write %s\n", path);
      exit(1);
    }
  } else {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
      fprintf(stderr, "cannot write %s\n", path);
      exit(1);
    }
  }
}

static size_t read_file(const char *path, unsigned char **out) {
  FILE *f = fopen(path, "rb");
  if (!f) exit(1);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *out = malloc((size_t)n);
  if (!*out || fread(*out, 1, (size_t)n, f) != (size_t)n) exit(1);
  fclose(f);
  return (size_t)n;
}

static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* Writes an IDX file: magic, ndim sizes, then payload bytes. */
static void write_idx(const char *path, int gz, uint32_t magic, const uint32_t *dims, int ndim,
                      const uint8_t *payload, size_t n) {
  size_t hl = 4 + 4 * (size_t)ndim;
  unsigned char *buf = malloc(hl + n + 1);
  put_be32(buf, magic);
  for (int i = 0; i < ndim; i++) put_be32(buf + 4 + 4 * i, dims[i]);
  if (n) memcpy(buf + hl, payload, n);
  write_file(path, gz, buf, hl + n);
  free(buf);
}

static uint8_t pix(int64_t i, int64_t j) { return (uint8_t)((i * 31 + j * 7 + (i * j) % 13) & 255); }

/* n images of r x c with pix(i, j) and labels i % ncl. */
static void write_pair(const char *img, const char *lab, int gz, uint32_t n, uint32_t r,
                       uint32_t c, int ncl) {
  size_t numel = (size_t)r * c;
  uint8_t *p = malloc(n * numel + 1), *l = malloc(n + 1);
  for (uint32_t i = 0; i < n; i++) {
    for (size_t j = 0; j < numel; j++) p[i * numel + j] = pix(i, (int64_t)j);
    l[i] = (uint8_t)(i % (uint32_t)ncl);
  }
  uint32_t d3[3] = {n, r, c}, d1[1] = {n};
  write_idx(img, gz, 0x803, d3, 3, p, n * numel);
  write_idx(lab, gz, 0x801, d1, 1, l, n);
  free(p);
  free(l);
}

/* Runs a reader expected to fail: code and message mentioning `needle`. */
#define EXPECT_FAIL(call, code, needle)                                                  \
  do {                                                                                 \
    ferry_err_clear();                                                                 \
    nn_dataset bad_;                                                                   \
    int rc_ = (call);                                                                  \
    CHECK_MSG(rc_ == (code), "rc %d, expected %d (%s)", rc_, (code), ferry_err_msg()); \
    CHECK_MSG(strstr(ferry_err_msg(), (needle)) != NULL, "message '%s' lacks '%s'",     \
              ferry_err_msg(), (needle));                                              \
    CHECK(bad_.n == 0 && bad_.u8 == NULL && bad_.labels == NULL);                      \
    (void)bad_;                                                                        \
    ferry_err_clear();                                                                 \
  } while (0)

/* ------------------------------------------------------------------ IDX -- */

static void check_pair(const nn_dataset *ds, int64_t n, int r, int c, int ncl) {
  CHECK(ds->n == n);
  CHECK(ds->shape.c == 1 && ds->shape.h == r && ds->shape.w == c);
  CHECK(ds->spatial == 1 && ds->u8 && !ds->f32);
  CHECK(ds->nclasses == (n < ncl ? n : ncl));
  int bad = 0;
  for (int64_t i = 0; i < n; i++) {
    bad += ds->labels[i] != i % ncl || ds->ids[i] != i;
    for (int64_t j = 0; j < (int64_t)r * c; j++) bad += ds->u8[i * r * c + j] != pix(i, j);
  }
  CHECK_MSG(bad == 0, "%d mismatches", bad);
}

static void test_idx_roundtrip(void) {
  for (int gz = 0; gz < 2; gz++) {
    const char *img = tpath(gz ? "rt-img.gz" : "rt-img"), *lab = tpath(gz ? "rt-lab.gz" : "rt-lab");
    write_pair(img, lab, gz, 7, 5, 3, 4);
    nn_dataset ds;
    int rc = nn_data_read_idx(&ds, img, lab, 0);
    CHECK_MSG(rc == 0, "%s", ferry_err_msg());
    check_pair(&ds, 7, 5, 3, 4);
    CHECK(strstr(ds.source, img) && strstr(ds.source, lab));
    nn_data_free(&ds);
    CHECK(ds.n == 0 && ds.u8 == NULL && ds.labels == NULL && ds.ids == NULL);

    rc = nn_data_read_idx(&ds, img, lab, 3); /* first 3 only */
    CHECK_MSG(rc == 0, "%s", ferry_err_msg());
    check_pair(&ds, 3, 5, 3, 4);
    nn_data_free(&ds);
    rc = nn_data_read_idx(&ds, img, lab, 100); /* more than there are: all */
    CHECK(rc == 0 && ds.n == 7);
    nn_data_free(&ds);
    rc = nn_data_read_idx(&ds, img, NULL, 0); /* no labels: unlabelled */
    CHECK(rc == 0 && ds.n == 7 && ds.labels[0] == -1 && ds.labels[6] == -1 && ds.nclasses == 0);
    nn_data_free(&ds);
  }
  /* gzip images with plain labels. */
  nn_dataset ds;
  CHECK(nn_data_read_idx(&ds, tpath("rt-img.gz"), tpath("rt-lab"), 0) == 0);
  check_pair(&ds, 7, 5, 3, 4);
  nn_data_free(&ds);
}

/* Views (nn_data_read_idx_labels + nn_data_fill_idx) give exactly the rows,
 * pixels and digests that reading the whole file and subsetting gives, in any
 * row order, across read blocks, with a row limit; a bad file leaves the
 * views pending. */
static void test_idx_views(void) {
  char img[256], lab[256];
  snprintf(img, sizeof img, "%s", tpath("v-img.gz"));
  snprintf(lab, sizeof lab, "%s", tpath("v-lab.gz"));
  /* 3000 images of 40x40: 1600 bytes each, more than one read block. */
  const uint32_t n = 3000, r = 40, c = 40;
  write_pair(img, lab, 1, n, r, c, 6);
  for (int limit = 0; limit <= 1000; limit += 1000) {
    nn_dataset whole, view;
    CHECK(nn_data_read_idx(&whole, img, lab, limit) == 0);
    CHECK_MSG(nn_data_read_idx_labels(&view, img, lab, limit) == 0, "%s", ferry_err_msg());
    CHECK(view.pending && view.u8 == NULL && view.n == whole.n && view.nclasses == whole.nclasses);
    CHECK(view.shape.h == (int)r && view.shape.w == (int)c && view.spatial == 1);
    CHECK(memcmp(view.labels, whole.labels, (size_t)whole.n * sizeof *whole.labels) == 0);
    /* The same subsets of both: classes, split, K per class, then a
     * scattered gather (the rows one rank keeps). */
    const int cls[3] = {4, 1, 2};
    nn_dataset w[5], v[5];
    memset(w, 0, sizeof w);
    memset(v, 0, sizeof v);
    CHECK(nn_data_subset_classes(&w[0], &whole, cls, 3) == 0);
    CHECK(nn_data_subset_classes(&v[0], &view, cls, 3) == 0 && v[0].pending);
    CHECK(nn_data_split(&w[1], &w[2], &w[0], 0.1, 7) == 0);
    CHECK(nn_data_split(&v[1], &v[2], &v[0], 0.1, 7) == 0);
    CHECK(nn_data_k_per_class(&w[3], &w[1], 20, 9) == 0);
    CHECK(nn_data_k_per_class(&v[3], &v[1], 20, 9) == 0);
    int64_t pick[40];
    for (int i = 0; i < 40; i++) pick[i] = (int64_t)((i * 37) % 60);
    CHECK(nn_data_gather(&w[4], &w[3], pick, 40) == 0);
    CHECK(nn_data_gather(&v[4], &v[3], pick, 40) == 0);
    nn_dataset *fill[3] = {&v[4], &v[2], &v[1]};
    uint64_t *hash = NULL;
    int64_t nrows = 0;
    CHECK_MSG(nn_data_fill_idx(fill, 3, img, limit, &hash, &nrows) == 0, "%s", ferry_err_msg());
    CHECK(hash && nrows == whole.n);
    for (int k = 1; k < 5; k++) {
      if (k == 3) continue; /* not filled: still a view */
      const size_t numel = (size_t)r * c;
      CHECK(!v[k].pending && v[k].n == w[k].n);
      CHECK(memcmp(v[k].ids, w[k].ids, (size_t)w[k].n * sizeof *w[k].ids) == 0);
      CHECK(memcmp(v[k].labels, w[k].labels, (size_t)w[k].n * sizeof *w[k].labels) == 0);
      CHECK_MSG(memcmp(v[k].u8, w[k].u8, (size_t)w[k].n * numel) == 0, "view %d pixels", k);
      CHECK(nn_data_digest(&v[k]) == nn_data_digest(&w[k]));
    }
    CHECK(v[3].pending && v[3].u8 == NULL);
    /* The digest of a selection nobody filled, from the row hashes. */
    CHECK(nn_data_digest_view(&v[3], hash, nrows) == nn_data_digest(&w[3]));
    CHECK(nn_data_digest_view(&v[0], hash, nrows) == nn_data_digest(&w[0]));
    CHECK(nn_data_digest_view(&view, hash, nrows) == nn_data_digest(&whole));
    CHECK(nn_data_digest_view(&v[3], hash, nrows) != nn_data_digest(&w[1]));
    free(hash);
    /* Views of the dataset held whole (the transfer jobs' cache). */
    nn_dataset mv, m0, m1;
    CHECK(nn_data_view_of(&mv, &whole) == 0 && mv.pending == NN_PENDING_U8 && !mv.u8);
    CHECK(nn_data_subset_classes(&m0, &mv, cls, 3) == 0);
    CHECK(nn_data_gather(&m1, &m0, pick, 40) == 0);
    nn_dataset *mf = &m1;
    CHECK_MSG(nn_data_fill_from(&mf, 1, &whole) == 0, "%s", ferry_err_msg());
    CHECK(!m1.pending && m1.u8);
    nn_dataset w1;
    CHECK(nn_data_gather(&w1, &w[0], pick, 40) == 0);
    CHECK(memcmp(m1.u8, w1.u8, 40 * (size_t)r * c) == 0 && nn_data_digest(&m1) == nn_data_digest(&w1));
    CHECK(nn_data_digest_view_in(&m0, &whole) == nn_data_digest(&w[0]));
    CHECK(nn_data_fill_from(&mf, 1, &whole) == FERRY_ERUNTIME); /* not pending any more */
    ferry_err_clear();
    nn_data_free(&mv), nn_data_free(&m0), nn_data_free(&m1), nn_data_free(&w1);
    for (int k = 0; k < 5; k++) nn_data_free(&w[k]), nn_data_free(&v[k]);
    nn_data_free(&whole);
    nn_data_free(&view);
  }
  /* Bad files at fill time: the views stay pending, nothing is held. */
  nn_dataset view, dup;
  CHECK(nn_data_read_idx_labels(&view, img, lab, 0) == 0);
  int64_t twice[2] = {5, 5};
  CHECK(nn_data_gather(&dup, &view, twice, 2) == 0);
  nn_dataset *one = &dup;
  ferry_err_clear();
  CHECK(nn_data_fill_idx(&one, 1, img, 0, NULL, NULL) == FERRY_ERUNTIME);
  CHECK(strstr(ferry_err_msg(), "twice") != NULL && dup.pending && dup.u8 == NULL);
  unsigned char *bytes;
  size_t len = read_file(img, &bytes);
  const char *cut = tpath("v-cut.gz");
  write_file(cut, 0, bytes, len / 2);
  one = &view;
  ferry_err_clear();
  CHECK(nn_data_fill_idx(&one, 1, cut, 0, NULL, NULL) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), "truncated: expected 4800000 image bytes") != NULL, "%s",
            ferry_err_msg());
  CHECK(view.pending && view.u8 == NULL);
  bytes[len - 6] ^= 0x55; /* the gzip trailer: needs reading to the end */
  write_file(cut, 0, bytes, len);
  ferry_err_clear();
  CHECK(nn_data_fill_idx(&one, 1, cut, 0, NULL, NULL) == FERRY_EUSER && view.pending);
  free(bytes);
  /* The file changed between the labels and the pixels. */
  const char *other = tpath("v-other.gz"), *olab = tpath("v-olab.gz");
  write_pair(other, olab, 1, n, r, c + 1, 6);
  ferry_err_clear();
  CHECK(nn_data_fill_idx(&one, 1, other, 0, NULL, NULL) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), "did the file change") != NULL, "%s", ferry_err_msg());
  write_pair(other, olab, 1, 100, r, c, 6);
  ferry_err_clear();
  CHECK(nn_data_fill_idx(&one, 1, other, 0, NULL, NULL) == FERRY_EUSER && view.pending);
  CHECK_MSG(strstr(ferry_err_msg(), "did it change") != NULL, "%s", ferry_err_msg());
  ferry_err_clear();
  nn_data_free(&dup);
  nn_data_free(&view);
}

static void test_idx_errors(void) {
  char img[256], lab[256]; /* tpath() reuses its buffers: keep copies */
  snprintf(img, sizeof img, "%s", tpath("e-img.gz"));
  snprintf(lab, sizeof lab, "%s", tpath("e-lab.gz"));
  write_pair(img, lab, 1, 10, 4, 4, 3);
  uint8_t px[160] = {0}, lb[10] = {0};
  uint32_t d3[3] = {10, 4, 4}, d2[2] = {10, 16}, d1[1] = {10};

  const char *p = tpath("magic.gz");
  write_idx(p, 1, 0x12345678, d3, 3, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, p);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "magic 0x12345678");

  p = tpath("type.gz"); /* element type 0x0D (float) */
  write_idx(p, 1, 0x0D03, d3, 3, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "unsigned byte");

  p = tpath("dims.gz"); /* 2 dimensions */
  write_idx(p, 1, 0x0802, d2, 2, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "2 dimensions, expected 3");
  /* Files swapped: the labels file where the images go and vice versa. */
  EXPECT_FAIL(nn_data_read_idx(&bad_, lab, img, 0), FERRY_EUSER, "labels file?");
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, img, 0), FERRY_EUSER, "3 dimensions, expected 1");

  p = tpath("zero.gz");
  uint32_t dz[3] = {10, 0, 4};
  write_idx(p, 1, 0x803, dz, 3, px, 0);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "rows = 0");

  /* Absurd sizes are refused from the header, before any allocation. */
  p = tpath("huge.gz");
  uint32_t dh[3] = {2000000000u, 60000, 60000};
  write_idx(p, 1, 0x803, dh, 3, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "at most");

  /* Header promises more than a gzip file holds. */
  p = tpath("short.gz");
  uint32_t ds1[3] = {1000, 4, 4};
  write_idx(p, 1, 0x803, ds1, 3, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "truncated: expected 16000 image bytes, got 160");
  /* ... and a plain file, caught from its size. */
  p = tpath("short.idx");
  write_idx(p, 0, 0x803, ds1, 3, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "truncated");
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, p);
  /* More data than the header says. */
  p = tpath("long.gz");
  uint32_t dl[3] = {9, 4, 4};
  write_idx(p, 1, 0x803, dl, 3, px, 160);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "more data than its header");
  /* Truncated header. */
  p = tpath("hdr.gz");
  write_file(p, 1, "\0\0\x08\x03\0\0", 6);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "truncated header");
  p = tpath("empty");
  write_file(p, 0, "", 0);
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, "truncated header");

  /* A gzip file cut in the middle (incompressible pixels, so the cut lands
   * inside the deflate stream). */
  {
    const char *full = tpath("big.gz"), *cut = tpath("cut.gz"), *blab = tpath("big-lab.gz");
    uint32_t n = 300, dd[3] = {n, 28, 28}, dn[1] = {n};
    uint8_t *big = malloc((size_t)n * 784), *bl = calloc(n, 1);
    uint64_t s = 88172645463325252ULL;
    for (size_t i = 0; i < (size_t)n * 784; i++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      big[i] = (uint8_t)(s >> 32);
    }
    write_idx(full, 1, 0x803, dd, 3, big, (size_t)n * 784);
    write_idx(blab, 1, 0x801, dn, 1, bl, n);
    nn_dataset ok;
    CHECK(nn_data_read_idx(&ok, full, blab, 0) == 0 && ok.n == n && memcmp(ok.u8, big, 784) == 0);
    nn_data_free(&ok);
    unsigned char *bytes;
    size_t len = read_file(full, &bytes);
    write_file(cut, 0, bytes, len / 2);
    EXPECT_FAIL(nn_data_read_idx(&bad_, cut, blab, 0), FERRY_EUSER, cut);
    EXPECT_FAIL(nn_data_read_idx(&bad_, cut, blab, 0), FERRY_EUSER, "truncated: expected 235200 image bytes");
    /* Corrupt the last bytes (the CRC trailer): caught only by reading to the end. */
    bytes[len - 6] ^= 0x55;
    const char *crc = tpath("crc.gz");
    write_file(crc, 0, bytes, len);
    EXPECT_FAIL(nn_data_read_idx(&bad_, crc, blab, 0), FERRY_EUSER, "corrupt gzip");
    /* Garbage in the middle of the deflate stream. */
    memset(bytes + len / 2, 0xff, 64);
    write_file(crc, 0, bytes, len);
    EXPECT_FAIL(nn_data_read_idx(&bad_, crc, blab, 0), FERRY_EUSER, crc);
    free(bytes);
    free(big);
    free(bl);
  }

  /* Counts disagree. */
  p = tpath("lab9.gz");
  write_idx(p, 1, 0x801, (uint32_t[]){9}, 1, lb, 9);
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, "has 9 labels");
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, "has 10 images");
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, p);
  /* Label 255 is reserved. */
  p = tpath("lab255.gz");
  uint8_t lb2[10] = {0, 1, 2, 255, 0, 0, 0, 0, 0, 0};
  write_idx(p, 1, 0x801, d1, 1, lb2, 10);
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, "index 3 is 255");
  /* Truncated labels. */
  p = tpath("labshort.gz");
  write_idx(p, 1, 0x801, d1, 1, lb, 4);
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, "expected 10 label bytes, got 4");

  /* Missing files and directories. */
  p = tpath("no-such-file.gz");
  EXPECT_FAIL(nn_data_read_idx(&bad_, p, lab, 0), FERRY_EUSER, p);
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, p);
  EXPECT_FAIL(nn_data_read_idx(&bad_, img, p, 0), FERRY_EUSER, "labels file");
  EXPECT_FAIL(nn_data_read_idx(&bad_, tmpdir, lab, 0), FERRY_EUSER, "directory");
}

static void test_fashion_mnist(void) {
  const char *dir = "/usr/share/datasets/fashion-mnist";
  char ti[256], tl[256], vi[256], vl[256];
  snprintf(ti, sizeof ti, "%s/train-images-idx3-ubyte.gz", dir);
  snprintf(tl, sizeof tl, "%s/train-labels-idx1-ubyte.gz", dir);
  snprintf(vi, sizeof vi, "%s/t10k-images-idx3-ubyte.gz", dir);
  snprintf(vl, sizeof vl, "%s/t10k-labels-idx1-ubyte.gz", dir);
  if (access(ti, R_OK) != 0 || access(vi, R_OK) != 0) {
    printf("note: %s not found, Fashion-MNIST test skipped\n", dir);
    return;
  }
  nn_dataset tr, te;
  double t0 = now();
  int rc = nn_data_read_idx(&tr, ti, tl, 0);
  double t1 = now();
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  if (rc) return;
  printf("Fashion-MNIST train (gz) read in %.3f s\n", t1 - t0);
  CHECK_MSG(t1 - t0 < 2.0, "reading took %.3f s", t1 - t0);
  CHECK(nn_data_read_idx(&te, vi, vl, 0) == 0);
  CHECK(tr.n == 60000 && te.n == 10000);
  CHECK(tr.shape.c == 1 && tr.shape.h == 28 && tr.shape.w == 28 && tr.spatial);
  CHECK(tr.nclasses == 10 && te.nclasses == 10);
  CHECK(tr.labels[0] == 9 && tr.labels[1] == 0);
  CHECK(te.labels[0] == 9 && te.labels[1] == 2);
  int64_t cnt[10] = {0};
  for (int64_t i = 0; i < tr.n; i++) cnt[tr.labels[i]]++;
  int all6000 = 1;
  for (int c = 0; c < 10; c++) all6000 &= cnt[c] == 6000;
  CHECK(all6000);
  /* Pixels are not all zero and use the full range. */
  int mx = 0;
  for (int j = 0; j < 784; j++) mx = tr.u8[j] > mx ? tr.u8[j] : mx;
  CHECK(mx == 255);
  CHECK(nn_data_digest(&tr) != nn_data_digest(&te));

  /* max_n on the real file. */
  nn_dataset head;
  CHECK(nn_data_read_idx(&head, ti, tl, 1000) == 0 && head.n == 1000 &&
        memcmp(head.u8, tr.u8, 1000 * 784) == 0 && head.labels[0] == 9);
  nn_data_free(&head);

  /* Batch speed: 128 rows, plain and with a typical augmentation. */
  enum { B = 128 };
  static float x[B * 784], scratch[2 * 784];
  int32_t y[B];
  int64_t idx[B];
  for (int b = 0; b < B; b++) idx[b] = (int64_t)b * 467 % tr.n;
  const int reps = 500;
  t0 = now();
  for (int r = 0; r < reps; r++) nn_data_batch(&tr, idx, B, NULL, 0, (uint64_t)r, x, y, scratch);
  t1 = now();
  printf("batch of 128 (no transforms): %.1f us\n", 1e6 * (t1 - t0) / reps);
  CHECK(y[0] == tr.labels[0] && x[1 * 784 + 300] == tr.u8[(size_t)idx[1] * 784 + 300] / 255.0f);
  nn_transform aug[3] = {{.kind = NN_TF_CROP, .a = {2}},
                         {.kind = NN_TF_HFLIP, .a = {0.5f}},
                         {.kind = NN_TF_NORMALIZE, .a = {0.286f}, .b = {0.353f}}};
  t0 = now();
  for (int r = 0; r < reps; r++) nn_data_batch(&tr, idx, B, aug, 3, (uint64_t)r, x, y, scratch);
  t1 = now();
  printf("batch of 128 (crop+hflip+normalize): %.1f us\n", 1e6 * (t1 - t0) / reps);
  nn_transform rot = {.kind = NN_TF_ROTATE, .a = {0, 15}}, noise = {.kind = NN_TF_NOISE, .a = {0.1f}};
  t0 = now();
  for (int r = 0; r < 50; r++) nn_data_batch(&tr, idx, B, &rot, 1, (uint64_t)r, x, y, scratch);
  t1 = now();
  printf("batch of 128 (random rotate): %.1f us\n", 1e6 * (t1 - t0) / 50);
  t0 = now();
  for (int r = 0; r < 50; r++) nn_data_batch(&tr, idx, B, &noise, 1, (uint64_t)r, x, y, scratch);
  t1 = now();
  printf("batch of 128 (noise): %.1f us\n", 1e6 * (t1 - t0) / 50);
  t0 = now();
  uint64_t dg = nn_data_digest(&tr);
  t1 = now();
  printf("digest of train: %.1f ms (%016llx)\n", 1e3 * (t1 - t0), (unsigned long long)dg);
  nn_data_free(&tr);
  nn_data_free(&te);
}

/* ------------------------------------------------------------------ CSV -- */

static void test_csv(void) {
  const char *p = tpath("good.csv");
  const char *txt = "label,x1,x2,x3\r\n"
                    "2, 1.5,-2,3e2\r\n"
                    "\r\n"
                    ",0.25,0,1\n"
                    "0,7,8,9\n"
                    "  ,1,1,1\n";
  write_file(p, 0, txt, strlen(txt));
  nn_dataset ds;
  int rc = nn_data_read_csv(&ds, p, 0, 0);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  CHECK(ds.n == 4 && ds.shape.c == 3 && ds.shape.h == 1 && ds.shape.w == 1 && !ds.spatial);
  CHECK(ds.f32 && !ds.u8);
  CHECK(ds.labels[0] == 2 && ds.labels[1] == -1 && ds.labels[2] == 0 && ds.labels[3] == -1);
  CHECK(ds.nclasses == 3);
  CHECK(ds.ids[0] == 0 && ds.ids[3] == 3);
  CHECK(ds.f32[0] == 1.5f && ds.f32[1] == -2.0f && ds.f32[2] == 300.0f && ds.f32[3] == 0.25f &&
        ds.f32[8] == 9.0f);
  CHECK(strcmp(ds.source, p) == 0);
  /* Flat layout [B][d], values as-is. */
  float x[3 * 3], scratch[6];
  int32_t y[3];
  int64_t idx[3] = {2, 0, 1};
  nn_data_batch(&ds, idx, 3, NULL, 0, 0, x, y, scratch);
  CHECK(x[0] == 7 && x[1] == 8 && x[2] == 9 && x[3] == 1.5f && x[6] == 0.25f);
  CHECK(y[0] == 0 && y[1] == 2 && y[2] == -1);
  nn_data_free(&ds);

  /* No header, gzip. */
  p = tpath("nohdr.csv.gz");
  txt = "1,0.5\n0,1.5\n";
  write_file(p, 1, txt, strlen(txt));
  rc = nn_data_read_csv(&ds, p, 0, 0);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  CHECK(ds.n == 2 && ds.shape.c == 1 && ds.labels[0] == 1 && ds.f32[1] == 1.5f && ds.nclasses == 2);
  nn_data_free(&ds);

  /* Image-shaped: 2x3 features become a 1-channel image, values as-is. */
  p = tpath("img.csv");
  txt = "y,a,b,c,d,e,f\n1,0,10,20,30,40,200\n0,1,2,3,4,5,6\n";
  write_file(p, 0, txt, strlen(txt));
  rc = nn_data_read_csv(&ds, p, 2, 3);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  CHECK(ds.n == 2 && ds.spatial == 1 && ds.shape.c == 1 && ds.shape.h == 2 && ds.shape.w == 3);
  CHECK(ds.f32[5] == 200.0f);
  float xi[2 * 6], si[12];
  nn_data_batch(&ds, (int64_t[]){0, 1}, 2, NULL, 0, 0, xi, NULL, si);
  CHECK(xi[5] == 200.0f && xi[6] == 1.0f);
  /* A geometric transform works on it (hflip p=1 mirrors rows). */
  nn_transform hf = {.kind = NN_TF_HFLIP, .a = {1}};
  nn_data_batch(&ds, (int64_t[]){0}, 1, &hf, 1, 0, xi, NULL, si);
  CHECK(xi[0] == 20 && xi[2] == 0 && xi[3] == 200 && xi[5] == 30);
  nn_data_free(&ds);
  /* Same file, image size not matching d: flat. */
  rc = nn_data_read_csv(&ds, p, 3, 3);
  CHECK(rc == 0 && ds.spatial == 0 && ds.shape.c == 6);
  nn_data_free(&ds);

  /* Errors. */
  p = tpath("ragged.csv");
  txt = "label,a,b\n1,2,3\n0,1,2\n1,2\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "line 4: found 2 fields, expected 3");
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, p);
  p = tpath("ragged2.csv");
  txt = "1,2,3\n0,1,2,5,6\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "line 2: found 5 fields, expected 3");
  p = tpath("nonnum.csv");
  txt = "label,a,b\n1,2,3\n0,1,abc\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "line 3, column 5 (field 3)");
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "'abc'");
  p = tpath("empty-field.csv");
  txt = "1,2,,4\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "line 1, column 5 (field 3)");
  p = tpath("nan.csv");
  txt = "1,2,nan\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "expected a number");
  p = tpath("badlabel.csv");
  txt = "1,2\n1.5,3\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "line 2, column 1 (field 1, the label)");
  p = tpath("neglabel.csv");
  txt = "-1,2\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "the label");
  p = tpath("onlyhdr.csv");
  txt = "label,a,b\n\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "no data rows");
  p = tpath("onecol.csv");
  txt = "1\n2\n";
  write_file(p, 0, txt, strlen(txt));
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, "at least one feature");
  p = tpath("missing.csv");
  EXPECT_FAIL(nn_data_read_csv(&bad_, p, 0, 0), FERRY_EUSER, p);
}

/* CSV read line by line: rows straddling read blocks, a line longer than the
 * first buffer, and views giving what the whole read gives. */
static void test_csv_views(void) {
  /* 30000 rows of "label,a,b,c" (with a header, a blank line, CRLF on some
   * rows), about 0.6 MB per 10,000 rows, so lines cross the 1 MiB blocks. */
  const int n = 30000;
  size_t cap = (size_t)n * 40 + 64, len = 0;
  char *txt = malloc(cap);
  len += (size_t)snprintf(txt + len, cap - len, "label,a,b,c\n\n");
  for (int i = 0; i < n; i++)
    len += (size_t)snprintf(txt + len, cap - len, "%d,%d,%d.5,-%d%s", i % 7, i, i % 100, i % 3,
                            i % 5 ? "\n" : "\r\n");
  for (int gz = 0; gz < 2; gz++) {
    const char *p = tpath(gz ? "v.csv.gz" : "v.csv");
    write_file(p, gz, txt, len);
    nn_dataset whole, view;
    CHECK_MSG(nn_data_read_csv(&whole, p, 0, 0) == 0, "%s", ferry_err_msg());
    CHECK(whole.n == n && whole.shape.c == 3 && whole.nclasses == 7);
    int bad = 0;
    for (int i = 0; i < n; i++)
      bad += whole.labels[i] != i % 7 || whole.f32[3 * i] != (float)i ||
             whole.f32[3 * i + 1] != (float)(i % 100) + 0.5f || whole.f32[3 * i + 2] != -(float)(i % 3);
    CHECK_MSG(bad == 0, "%d rows differ", bad);
    CHECK_MSG(nn_data_read_csv_labels(&view, p, 0, 0) == 0, "%s", ferry_err_msg());
    CHECK(view.pending == NN_PENDING_F32 && !view.f32 && !view.u8 && view.n == n);
    CHECK(memcmp(view.labels, whole.labels, (size_t)n * sizeof *view.labels) == 0);
    const int cls[2] = {3, 5};
    nn_dataset w[3], v[3];
    CHECK(nn_data_subset_classes(&w[0], &whole, cls, 2) == 0);
    CHECK(nn_data_subset_classes(&v[0], &view, cls, 2) == 0);
    CHECK(nn_data_split(&w[1], &w[2], &w[0], 0.2, 3) == 0);
    CHECK(nn_data_split(&v[1], &v[2], &v[0], 0.2, 3) == 0);
    nn_dataset *fill[2] = {&v[1], &v[2]};
    uint64_t *hash = NULL;
    int64_t nrows = 0;
    CHECK_MSG(nn_data_fill_csv(fill, 2, p, &hash, &nrows) == 0, "%s", ferry_err_msg());
    CHECK(nrows == n);
    for (int k = 1; k < 3; k++) {
      CHECK(!v[k].pending && v[k].n == w[k].n && v[k].f32);
      CHECK(memcmp(v[k].ids, w[k].ids, (size_t)w[k].n * sizeof *w[k].ids) == 0);
      CHECK(memcmp(v[k].f32, w[k].f32, (size_t)w[k].n * 3 * sizeof(float)) == 0);
      CHECK(nn_data_digest(&v[k]) == nn_data_digest(&w[k]));
    }
    CHECK(nn_data_digest_view(&v[0], hash, nrows) == nn_data_digest(&w[0]));
    CHECK(nn_data_digest_view(&view, hash, nrows) == nn_data_digest(&whole));
    CHECK(nn_data_digest_view_in(&v[0], &whole) == nn_data_digest(&w[0]));
    free(hash);
    /* The file lost rows between the two reads: named, views stay pending. */
    if (!gz) {
      nn_dataset last;
      int64_t r = n - 1;
      CHECK(nn_data_gather(&last, &view, &r, 1) == 0);
      write_file(p, 0, txt, len / 2);
      nn_dataset *one = &last;
      ferry_err_clear();
      CHECK(nn_data_fill_csv(&one, 1, p, NULL, NULL) == FERRY_EUSER && last.pending && !last.f32);
      CHECK_MSG(strstr(ferry_err_msg(), "did it change") != NULL, "%s", ferry_err_msg());
      write_file(p, 0, "1,2\n", 4);
      ferry_err_clear();
      CHECK(nn_data_fill_csv(&one, 1, p, NULL, NULL) == FERRY_EUSER && last.pending);
      CHECK_MSG(strstr(ferry_err_msg(), "did the file change") != NULL, "%s", ferry_err_msg());
      ferry_err_clear();
      nn_data_free(&last);
    }
    for (int k = 0; k < 3; k++) nn_data_free(&w[k]), nn_data_free(&v[k]);
    nn_data_free(&whole);
    nn_data_free(&view);
  }
  free(txt);
  /* One row of 700,000 features (1.4 MB): longer than the first buffer. */
  const int d = 700000;
  char *big = malloc(2 * ((size_t)d * 2 + 8));
  size_t bl = 0;
  for (int r = 0; r < 2; r++) {
    big[bl++] = (char)('0' + r);
    for (int j = 0; j < d; j++) big[bl++] = ',', big[bl++] = (char)('0' + (j + r) % 10);
    big[bl++] = '\n';
  }
  const char *p = tpath("wide.csv.gz");
  write_file(p, 1, big, bl);
  free(big);
  nn_dataset ds;
  CHECK_MSG(nn_data_read_csv(&ds, p, 0, 0) == 0, "%s", ferry_err_msg());
  CHECK(ds.n == 2 && ds.shape.c == d && ds.labels[1] == 1);
  CHECK(ds.f32 && ds.f32[d - 1] == (float)((d - 1) % 10) && ds.f32[d + 5] == 6.0f);
  nn_data_free(&ds);
  /* A gzip file cut short is an error, not a shorter file. */
  unsigned char *bytes;
  size_t blen = read_file(p, &bytes);
  const char *cut = tpath("wide-cut.csv.gz");
  write_file(cut, 0, bytes, blen - 12);
  free(bytes);
  EXPECT_FAIL(nn_data_read_csv(&bad_, cut, 0, 0), FERRY_EUSER, cut);
  EXPECT_FAIL(nn_data_read_csv_labels(&bad_, cut, 0, 0), FERRY_EUSER, cut);
}

/* -------------------------------------------------------------- subsets -- */

/* n samples of shape (1,2,2); class sizes 30, 25, 20, 15, 10 for labels 0..4
 * (assigned in an interleaved order), then 5 unlabelled rows; pixel 0 holds
 * the row index. */
static void make_synth(nn_dataset *ds) {
  static const int sizes[5] = {30, 25, 20, 15, 10};
  int64_t n = 100 + 5;
  memset(ds, 0, sizeof *ds);
  ds->n = n;
  ds->shape = (nn_shape){1, 2, 2};
  ds->spatial = 1;
  ds->u8 = malloc((size_t)n * 4);
  ds->labels = malloc((size_t)n * sizeof *ds->labels);
  ds->ids = malloc((size_t)n * sizeof *ds->ids);
  int left[5];
  memcpy(left, sizes, sizeof left);
  int c = 0;
  for (int64_t i = 0; i < n; i++) {
    if (i >= 100) {
      ds->labels[i] = -1;
    } else {
      while (left[c] == 0) c = (c + 1) % 5;
      ds->labels[i] = c;
      left[c]--;
      c = (c + 1) % 5;
    }
    ds->ids[i] = 1000 + i;
    for (int j = 0; j < 4; j++) ds->u8[i * 4 + j] = (uint8_t)(i + j);
  }
  ds->nclasses = 5;
  snprintf(ds->source, sizeof ds->source, "synthetic");
}

static int count_label(const nn_dataset *ds, int l) {
  int k = 0;
  for (int64_t i = 0; i < ds->n; i++) k += ds->labels[i] == l;
  return k;
}

/* Every row of sub is the row of src with the same id (pixels too). */
static int rows_consistent(const nn_dataset *sub, const nn_dataset *src) {
  int bad = 0;
  for (int64_t i = 0; i < sub->n; i++) {
    int64_t r = sub->ids[i] - 1000;
    bad += r < 0 || r >= src->n || memcmp(sub->u8 + i * 4, src->u8 + r * 4, 4) != 0;
    bad += i > 0 && sub->ids[i] <= sub->ids[i - 1]; /* stable, file order */
  }
  return bad == 0;
}

static void test_subsets(void) {
  nn_dataset src, a, b, c;
  make_synth(&src);

  /* gather */
  CHECK(nn_data_gather(&a, &src, (int64_t[]){4, 0, 4}, 3) == 0);
  CHECK(a.n == 3 && a.ids[0] == 1004 && a.ids[1] == 1000 && a.u8[4] == 0 && a.u8[8] == 4 &&
        a.nclasses == 5 && a.labels[0] == src.labels[4]);
  nn_data_free(&a);
  ferry_err_clear();
  CHECK(nn_data_gather(&a, &src, (int64_t[]){200}, 1) == FERRY_ERUNTIME && a.n == 0);
  ferry_err_clear();

  /* class subset + remap */
  int rc = nn_data_subset_classes(&a, &src, (int[]){3, 1}, 2);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  CHECK(a.n == 15 + 25 && a.nclasses == 2);
  CHECK(count_label(&a, 0) == 15 && count_label(&a, 1) == 25);
  int remap_ok = 1;
  for (int64_t i = 0; i < a.n; i++) {
    int32_t orig = src.labels[a.ids[i] - 1000];
    remap_ok &= (orig == 3 && a.labels[i] == 0) || (orig == 1 && a.labels[i] == 1);
  }
  CHECK(remap_ok);
  CHECK(rows_consistent(&a, &src));
  nn_data_free(&a);
  EXPECT_FAIL(nn_data_subset_classes(&bad_, &src, (int[]){1, 7}, 2), FERRY_EUSER, "class 7 has no samples");
  EXPECT_FAIL(nn_data_subset_classes(&bad_, &src, (int[]){2, 1, 2}, 3), FERRY_EUSER, "class 2 listed twice");
  EXPECT_FAIL(nn_data_subset_classes(&bad_, &src, (int[]){-1}, 1), FERRY_EUSER, "no samples");

  /* k per class */
  CHECK(nn_data_k_per_class(&a, &src, 7, 42) == 0);
  CHECK(nn_data_k_per_class(&b, &src, 7, 42) == 0);
  CHECK(nn_data_k_per_class(&c, &src, 7, 43) == 0);
  CHECK(a.n == 35 && a.nclasses == 5);
  int exact = 1;
  for (int l = 0; l < 5; l++) exact &= count_label(&a, l) == 7;
  CHECK(exact && count_label(&a, -1) == 0);
  CHECK(a.n == b.n && memcmp(a.ids, b.ids, (size_t)a.n * sizeof *a.ids) == 0);
  CHECK(a.n == c.n && memcmp(a.ids, c.ids, (size_t)a.n * sizeof *a.ids) != 0);
  CHECK(nn_data_digest(&a) == nn_data_digest(&b) && nn_data_digest(&a) != nn_data_digest(&c));
  CHECK(rows_consistent(&a, &src) && rows_consistent(&c, &src));
  nn_data_free(&a);
  nn_data_free(&b);
  nn_data_free(&c);
  /* k = class size takes the whole class. */
  CHECK(nn_data_k_per_class(&a, &src, 10, 1) == 0 && count_label(&a, 4) == 10);
  nn_data_free(&a);
  EXPECT_FAIL(nn_data_k_per_class(&bad_, &src, 11, 1), FERRY_EUSER, "class 4 has 10 samples, expected at least k = 11");
  EXPECT_FAIL(nn_data_k_per_class(&bad_, &src, 0, 1), FERRY_EUSER, "at least 1");

  /* split */
  nn_dataset tr, va;
  rc = nn_data_split(&tr, &va, &src, 0.2, 7);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  CHECK(tr.n + va.n == src.n);
  static const int sizes[5] = {30, 25, 20, 15, 10};
  int strat = 1;
  for (int l = 0; l < 5; l++) {
    int want = (int)lround(0.2 * sizes[l]);
    strat &= count_label(&va, l) == want && count_label(&tr, l) == sizes[l] - want;
  }
  CHECK(strat);
  CHECK(count_label(&va, -1) == 1 && count_label(&tr, -1) == 4);
  /* Disjoint, union = all. */
  int seen[105] = {0};
  for (int64_t i = 0; i < tr.n; i++) seen[tr.ids[i] - 1000]++;
  for (int64_t i = 0; i < va.n; i++) seen[va.ids[i] - 1000]++;
  int once = 1;
  for (int i = 0; i < 105; i++) once &= seen[i] == 1;
  CHECK(once);
  CHECK(rows_consistent(&tr, &src) && rows_consistent(&va, &src));
  CHECK(tr.nclasses == 5 && va.nclasses == 5);
  /* Same seed, same split; another seed, another split. */
  nn_dataset tr2, va2;
  CHECK(nn_data_split(&tr2, &va2, &src, 0.2, 7) == 0);
  CHECK(va2.n == va.n && memcmp(va2.ids, va.ids, (size_t)va.n * sizeof *va.ids) == 0);
  nn_data_free(&tr2);
  nn_data_free(&va2);
  CHECK(nn_data_split(&tr2, &va2, &src, 0.2, 8) == 0);
  CHECK(va2.n == va.n && memcmp(va2.ids, va.ids, (size_t)va.n * sizeof *va.ids) != 0);
  nn_data_free(&tr2);
  nn_data_free(&va2);
  nn_data_free(&tr);
  nn_data_free(&va);
  /* Tiny fraction: still one per class in val. */
  CHECK(nn_data_split(&tr, &va, &src, 0.001, 3) == 0);
  int one = 1;
  for (int l = 0; l < 5; l++) one &= count_label(&va, l) == 1;
  CHECK(one && va.n == 6);
  nn_data_free(&tr);
  nn_data_free(&va);
  /* frac 0: everything trains. */
  CHECK(nn_data_split(&tr, &va, &src, 0.0, 3) == 0 && tr.n == src.n && va.n == 0);
  CHECK(nn_data_digest(&tr) == nn_data_digest(&src));
  nn_data_free(&tr);
  nn_data_free(&va);
  ferry_err_clear();
  CHECK(nn_data_split(&tr, &va, &src, 1.0, 3) == FERRY_EUSER && strstr(ferry_err_msg(), "[0, 1)"));
  ferry_err_clear();
  CHECK(nn_data_split(&tr, &va, &src, NAN, 3) == FERRY_EUSER);
  ferry_err_clear();

  /* digest sensitivity */
  uint64_t d0 = nn_data_digest(&src);
  src.labels[50] ^= 1;
  uint64_t d1 = nn_data_digest(&src);
  src.labels[50] ^= 1;
  src.u8[77] ^= 0x80;
  uint64_t d2 = nn_data_digest(&src);
  src.u8[77] ^= 0x80;
  CHECK(d0 != d1 && d0 != d2 && d1 != d2 && nn_data_digest(&src) == d0);
  nn_data_free(&src);
}

/* ----------------------------------------------------------- transforms -- */

/* A hand-built u8 dataset of n images (c, h, w) with varied pixels. */
static void make_images(nn_dataset *ds, int n, int c, int h, int w) {
  size_t numel = (size_t)c * h * w;
  memset(ds, 0, sizeof *ds);
  ds->n = n;
  ds->shape = (nn_shape){c, h, w};
  ds->spatial = 1;
  ds->u8 = malloc((size_t)n * numel);
  ds->labels = malloc((size_t)n * sizeof *ds->labels);
  ds->ids = malloc((size_t)n * sizeof *ds->ids);
  for (int i = 0; i < n; i++) {
    for (size_t j = 0; j < numel; j++) ds->u8[i * numel + j] = pix(i + 3, (int64_t)j);
    ds->labels[i] = i % 3;
    ds->ids[i] = 500 + 7 * i;
  }
  ds->nclasses = 3;
}

static float maxdiff(const float *a, const float *b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
  return m;
}

static void test_tf_names(void) {
  int ok = 1;
  for (int k = 0; k < NN_TF_COUNT; k++) ok &= nn_tf_names[k] && nn_tf_from_name(nn_tf_names[k]) == k;
  CHECK(ok);
  CHECK(strcmp(nn_tf_names[NN_TF_ROTATE], "rotate") == 0 && strcmp(nn_tf_names[NN_TF_HFLIP], "hflip") == 0);
  CHECK(nn_tf_from_name("blur") == -1 && nn_tf_from_name(NULL) == -1);

  nn_dataset im, flat;
  make_images(&im, 2, 2, 4, 4);
  flat = im;
  flat.spatial = 0;
  flat.shape = (nn_shape){32, 1, 1};
  nn_transform good[4] = {{.kind = NN_TF_NORMALIZE, .a = {0.5f, 0.4f}, .b = {0.2f, 0.3f}},
                          {.kind = NN_TF_ROTATE, .a = {0, 10}},
                          {.kind = NN_TF_CROP, .a = {2}},
                          {.kind = NN_TF_HFLIP, .a = {0.5f}}};
  ferry_err_clear();
  CHECK(nn_tf_check(good, 4, &im) == 0);
  CHECK(nn_tf_check(good, 1, &flat) == 0); /* c > NN_TF_MAXC uses a[0]/b[0] */
  nn_transform t = {.kind = NN_TF_NORMALIZE, .a = {0.5f, 0.5f}, .b = {0.2f, 0}};
  CHECK(nn_tf_check(&t, 1, &im) == FERRY_EUSER && strstr(ferry_err_msg(), "std[1] = 0"));
  ferry_err_clear();
  CHECK(nn_tf_check(good + 2, 1, &flat) == FERRY_EUSER && strstr(ferry_err_msg(), "crop"));
  ferry_err_clear();
  t = (nn_transform){.kind = NN_TF_HFLIP, .a = {1.5f}};
  CHECK(nn_tf_check(&t, 1, &im) == FERRY_EUSER);
  ferry_err_clear();
  t = (nn_transform){.kind = NN_TF_CROP, .a = {1.5f}};
  CHECK(nn_tf_check(&t, 1, &im) == FERRY_EUSER);
  ferry_err_clear();
  t = (nn_transform){.kind = NN_TF_ROTATE, .a = {90, 10}};
  CHECK(nn_tf_check(&t, 1, &im) == FERRY_EUSER);
  ferry_err_clear();
  t = (nn_transform){.kind = NN_TF_NOISE, .a = {-1}};
  CHECK(nn_tf_check(&t, 1, &im) == FERRY_EUSER);
  ferry_err_clear();
  nn_data_free(&im);
}

/* Runs one batch of rows idx with transforms and returns x (static). */
static float *run(const nn_dataset *ds, const int64_t *idx, int B, const nn_transform *tf, int ntf,
                  uint64_t key) {
  static float x[8][64 * 64 * 8], scratch[2 * 64 * 64 * 2];
  static int k;
  float *o = x[k++ & 7];
  memset(o, 0xff, sizeof x[0]); /* NaN: unwritten output shows */
  nn_data_batch(ds, idx, B, tf, ntf, key, o, NULL, scratch);
  return o;
}

static void test_tf_values(void) {
  nn_dataset ds;
  make_images(&ds, 6, 1, 5, 5);
  const int64_t one[1] = {2};
  const size_t N = 25;
  const uint8_t *src = ds.u8 + 2 * N;

  float *x = run(&ds, one, 1, NULL, 0, 1);
  int ok = 1;
  for (size_t j = 0; j < N; j++) ok &= x[j] == src[j] / 255.0f;
  CHECK(ok);

  nn_transform nz = {.kind = NN_TF_NORMALIZE, .a = {0.5f}, .b = {0.25f}};
  x = run(&ds, one, 1, &nz, 1, 1);
  ok = 1;
  for (size_t j = 0; j < N; j++) ok &= fabsf(x[j] - (src[j] / 255.0f - 0.5f) / 0.25f) < 1e-6f;
  CHECK(ok);

  nn_transform inv[2] = {{.kind = NN_TF_INVERT}, {.kind = NN_TF_NORMALIZE, .a = {0.5f}, .b = {2}}};
  x = run(&ds, one, 1, inv, 2, 1);
  ok = 1;
  for (size_t j = 0; j < N; j++) ok &= fabsf(x[j] - (1 - src[j] / 255.0f - 0.5f) / 2) < 1e-6f;
  CHECK(ok);

  /* rotate: numpy rot90 convention (counter-clockwise). */
  nn_dataset sq;
  make_images(&sq, 1, 1, 2, 2);
  sq.u8[0] = 1, sq.u8[1] = 2, sq.u8[2] = 3, sq.u8[3] = 4; /* [[1,2],[3,4]] */
  nn_transform r90 = {.kind = NN_TF_ROTATE, .a = {90}};
  x = run(&sq, (int64_t[]){0}, 1, &r90, 1, 0);
  CHECK(x[0] * 255 == 2 && x[1] * 255 == 4 && x[2] * 255 == 1 && x[3] * 255 == 3);
  nn_transform rm90 = {.kind = NN_TF_ROTATE, .a = {-90}}; /* = 270 = clockwise */
  x = run(&sq, (int64_t[]){0}, 1, &rm90, 1, 0);
  CHECK(x[0] * 255 == 3 && x[1] * 255 == 1 && x[2] * 255 == 4 && x[3] * 255 == 2);
  nn_data_free(&sq);

  float id0[25]; /* run() reuses its buffers: keep a copy */
  memcpy(id0, run(&ds, one, 1, NULL, 0, 0), sizeof id0);
  nn_transform four[4] = {r90, r90, r90, r90};
  x = run(&ds, one, 1, four, 4, 0);
  CHECK(memcmp(x, id0, N * sizeof *x) == 0);
  nn_transform r180 = {.kind = NN_TF_ROTATE, .a = {180}};
  float *a = run(&ds, one, 1, &r180, 1, 0), *b = run(&ds, one, 1, four, 2, 0);
  CHECK(memcmp(a, b, N * sizeof *a) == 0 && memcmp(a, id0, N * sizeof *a) != 0);
  /* 180 is a point reflection: out[i][j] = in[4-i][4-j]. */
  CHECK(a[0] == id0[24] && a[7] == id0[17]);
  nn_transform r0 = {.kind = NN_TF_ROTATE, .a = {0}}, r360 = {.kind = NN_TF_ROTATE, .a = {360}};
  x = run(&ds, one, 1, &r0, 1, 0);
  CHECK(maxdiff(x, id0, N) < 1e-6f);
  x = run(&ds, one, 1, &r360, 1, 0);
  CHECK(maxdiff(x, id0, N) < 1e-6f);
  /* The bilinear path agrees with the exact quarter turn near 90 degrees. */
  nn_transform r90b = {.kind = NN_TF_ROTATE, .a = {90.0001f}};
  a = run(&ds, one, 1, &r90, 1, 0);
  b = run(&ds, one, 1, &r90b, 1, 0);
  CHECK_MSG(maxdiff(a, b, N) < 1e-3f, "%g", maxdiff(a, b, N));
  /* 45 degrees: the centre pixel stays; corner (0,0) samples the input at
   * (row 2 - 2*sqrt(2), col 2), between row -1 (outside, 0) and row 0. */
  nn_transform r45 = {.kind = NN_TF_ROTATE, .a = {45}};
  x = run(&ds, one, 1, &r45, 1, 0);
  const float fy = (float)(2.0 - 2.0 * sqrt(2.0) + 1.0);
  CHECK(fabsf(x[12] - id0[12]) < 1e-6f);
  CHECK_NEAR(x[0], fy * id0[2], 1e-5);
  /* Corner (0,4) samples at (row 2, col 2 + 2*sqrt(2)): col 4 and 5 (outside). */
  CHECK_NEAR(x[4], (1.0f - (float)(2.0 * sqrt(2.0) - 2.0)) * id0[14], 1e-5);
  /* Corner (4,4) at (row 2 + 2*sqrt(2), col 2): row 4 and 5 (outside). */
  CHECK_NEAR(x[24], (1.0f - (float)(2.0 * sqrt(2.0) - 2.0)) * id0[22], 1e-5);
  {
    /* On 7x7 the corners land more than a pixel outside: zero fill. */
    nn_dataset d7;
    make_images(&d7, 1, 1, 7, 7);
    float *y7 = run(&d7, (int64_t[]){0}, 1, &r45, 1, 0);
    CHECK(y7[0] == 0 && y7[6] == 0 && y7[42] == 0 && y7[48] == 0);
    CHECK(y7[24] == d7.u8[24] / 255.0f);
    nn_data_free(&d7);
  }
  /* Random rotation with a tiny range is nearly the identity ... */
  nn_transform rr = {.kind = NN_TF_ROTATE, .a = {0, 1e-3f}};
  x = run(&ds, one, 1, &rr, 1, 5);
  CHECK(maxdiff(x, id0, N) < 1e-3f);
  /* ... and a wide range differs per sample id and per key. */
  rr.a[1] = 30;
  a = run(&ds, one, 1, &rr, 1, 5);
  b = run(&ds, one, 1, &rr, 1, 6);
  CHECK(maxdiff(a, b, N) > 1e-3f);

  /* hflip */
  nn_transform hf = {.kind = NN_TF_HFLIP, .a = {1}}, hf2[2] = {hf, hf};
  x = run(&ds, one, 1, &hf, 1, 0);
  CHECK(x[0] == id0[4] && x[4] == id0[0] && x[6] == id0[8]);
  x = run(&ds, one, 1, hf2, 2, 0);
  CHECK(memcmp(x, id0, N * sizeof *x) == 0);
  hf.a[0] = 0;
  x = run(&ds, one, 1, &hf, 1, 0);
  CHECK(memcmp(x, id0, N * sizeof *x) == 0);

  /* crop: pad 0 is the identity; pad 2 is a shift by (dy, dx) in [-2, 2]
   * with zero fill, and the shift varies with the sample id. */
  nn_transform cr = {.kind = NN_TF_CROP, .a = {0}};
  x = run(&ds, one, 1, &cr, 1, 9);
  CHECK(memcmp(x, id0, N * sizeof *x) == 0);
  cr.a[0] = 2;
  int shifts_ok = 1, distinct = 0, prev = -100;
  for (int key = 0; key < 20; key++) {
    x = run(&ds, one, 1, &cr, 1, (uint64_t)key);
    int found = -1;
    for (int dy = -2; dy <= 2 && found < 0; dy++)
      for (int dx = -2; dx <= 2 && found < 0; dx++) {
        int match = 1;
        for (int r = 0; r < 5; r++)
          for (int c = 0; c < 5; c++) {
            int sr = r + dy, sc = c + dx;
            float want = sr >= 0 && sr < 5 && sc >= 0 && sc < 5 ? id0[sr * 5 + sc] : 0.0f;
            match &= x[r * 5 + c] == want;
          }
        if (match) found = (dy + 2) * 5 + dx + 2;
      }
    shifts_ok &= found >= 0;
    distinct += found != prev;
    prev = found;
  }
  CHECK(shifts_ok);
  CHECK(distinct > 5);
  nn_data_free(&ds);
}

static void test_tf_noise(void) {
  nn_dataset ds;
  make_images(&ds, 8, 1, 64, 64);
  memset(ds.u8, 0, 8 * 4096);
  int64_t idx[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  const size_t N = 8 * 4096;
  nn_transform nz = {.kind = NN_TF_NOISE, .a = {0.5f}};
  float *x = run(&ds, idx, 8, &nz, 1, 11);
  double s = 0, s2 = 0;
  for (size_t i = 0; i < N; i++) s += x[i], s2 += (double)x[i] * x[i];
  double mean = s / N, sd = sqrt(s2 / N - mean * mean);
  CHECK_NEAR(mean, 0.0, 0.015);
  CHECK_NEAR(sd, 0.5, 0.01);
  /* Two noise transforms draw from distinct sub-keys: variances add
   * (std sqrt(2)*0.5), where a shared key would double the std. */
  nn_transform two[2] = {nz, nz};
  x = run(&ds, idx, 8, two, 2, 11);
  s = s2 = 0;
  for (size_t i = 0; i < N; i++) s += x[i], s2 += (double)x[i] * x[i];
  mean = s / N, sd = sqrt(s2 / N - mean * mean);
  CHECK_NEAR(sd, 0.5 * sqrt(2.0), 0.015);
  /* Neighbouring pixels and samples are uncorrelated. */
  x = run(&ds, idx, 8, &nz, 1, 11);
  double c01 = 0, cs = 0;
  for (size_t i = 0; i + 1 < N; i++) c01 += (double)x[i] * x[i + 1];
  for (size_t i = 0; i < 4096; i++) cs += (double)x[i] * x[4096 + i];
  CHECK_NEAR(c01 / (N - 1) / 0.25, 0.0, 0.03);
  CHECK_NEAR(cs / 4096 / 0.25, 0.0, 0.06);
  nn_data_free(&ds);
}

/* The same (key, id) gives the same pixels wherever the row sits. */
static void test_tf_keyed(void) {
  nn_dataset ds;
  make_images(&ds, 8, 2, 6, 6);
  nn_transform tf[5] = {{.kind = NN_TF_ROTATE, .a = {0, 25}},
                        {.kind = NN_TF_CROP, .a = {2}},
                        {.kind = NN_TF_HFLIP, .a = {0.5f}},
                        {.kind = NN_TF_NOISE, .a = {0.1f}},
                        {.kind = NN_TF_NORMALIZE, .a = {0.5f, 0.3f}, .b = {0.2f, 0.4f}}};
  const int B = 4;
  const size_t plane = 36;
  int64_t i1[4] = {5, 1, 2, 3}, i2[4] = {0, 6, 7, 5};
  float *a = run(&ds, i1, B, tf, 5, 77), *b = run(&ds, i2, B, tf, 5, 77);
  float *c = run(&ds, i1, B, tf, 5, 78);
  int same = 1;
  for (int ch = 0; ch < 2; ch++)
    same &= memcmp(a + (ch * B + 0) * plane, b + (ch * B + 3) * plane, plane * sizeof *a) == 0;
  CHECK(same);
  CHECK(maxdiff(a, c, 2 * B * plane) > 1e-3f); /* another key, other draws */
  int finite = 1;
  for (size_t i = 0; i < 2 * B * plane; i++) finite &= isfinite(a[i]);
  CHECK(finite);
  /* hflip with p = 0.5 flips some ids and not others. */
  nn_transform hf = {.kind = NN_TF_HFLIP, .a = {0.5f}};
  int64_t all[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  float plain0[8 * 36];
  memcpy(plain0, run(&ds, all, 8, NULL, 0, 0), sizeof plain0);
  int flipped = 0, kept = 0;
  for (int key = 0; key < 4; key++) {
    float *f = run(&ds, all, 8, &hf, 1, (uint64_t)key);
    for (int r = 0; r < 8; r++) {
      int eq = memcmp(f + r * plane, plain0 + r * plane, plane * sizeof *f) == 0;
      flipped += !eq, kept += eq;
    }
  }
  CHECK(flipped > 5 && kept > 5);
  nn_data_free(&ds);
}

/* [c][B][h][w] layout with 2 channels and per-channel normalize. */
static void test_tf_layout(void) {
  nn_dataset ds;
  make_images(&ds, 5, 2, 2, 3);
  const int B = 3;
  const size_t plane = 6, numel = 12;
  int64_t idx[3] = {4, 0, 2};
  float x[2 * 3 * 6], scratch[2 * 12];
  int32_t y[3];
  nn_transform nz = {.kind = NN_TF_NORMALIZE, .a = {0.25f, 0.75f}, .b = {0.5f, 0.125f}};
  nn_data_batch(&ds, idx, B, &nz, 1, 3, x, y, scratch);
  int ok = 1;
  for (int ch = 0; ch < 2; ch++)
    for (int b = 0; b < B; b++)
      for (size_t p = 0; p < plane; p++) {
        float v = ds.u8[idx[b] * numel + ch * plane + p] / 255.0f;
        float want = (v - nz.a[ch]) / nz.b[ch];
        ok &= fabsf(x[(ch * B + b) * plane + p] - want) < 1e-5f;
      }
  CHECK(ok);
  CHECK(y[0] == ds.labels[4] && y[1] == ds.labels[0] && y[2] == ds.labels[2]);
  /* hflip mirrors both channels of the same sample alike. */
  nn_transform hf = {.kind = NN_TF_HFLIP, .a = {1}};
  nn_data_batch(&ds, idx, B, &hf, 1, 3, x, NULL, scratch);
  ok = 1;
  for (int ch = 0; ch < 2; ch++)
    for (int b = 0; b < B; b++)
      for (int r = 0; r < 2; r++)
        for (int c = 0; c < 3; c++)
          ok &= x[(ch * B + b) * plane + r * 3 + c] ==
                ds.u8[idx[b] * numel + ch * plane + r * 3 + (2 - c)] / 255.0f;
  CHECK(ok);
  /* More channels than NN_TF_MAXC: a[0]/b[0] for all. */
  nn_dataset wide;
  make_images(&wide, 2, 6, 1, 2);
  float xw[2 * 12], sw[24];
  nn_transform n6 = {.kind = NN_TF_NORMALIZE, .a = {0.5f, 9, 9, 9}, .b = {0.5f, 9, 9, 9}};
  nn_data_batch(&wide, (int64_t[]){1, 0}, 2, &n6, 1, 0, xw, NULL, sw);
  ok = 1;
  for (int ch = 0; ch < 6; ch++)
    for (int b = 0; b < 2; b++)
      for (int p = 0; p < 2; p++)
        ok &= fabsf(xw[(ch * 2 + b) * 2 + p] - (wide.u8[(1 - b) * 12 + ch * 2 + p] / 255.0f - 0.5f) / 0.5f) < 1e-5f;
  CHECK(ok);
  nn_data_free(&wide);
  nn_data_free(&ds);
}

static void cleanup(void) {
  DIR *d = opendir(tmpdir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    unlink(tpath(e->d_name));
  }
  closedir(d);
  rmdir(tmpdir);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-test-data-XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_idx_roundtrip();
  test_idx_errors();
  test_idx_views();
  test_fashion_mnist();
  test_csv();
  test_csv_views();
  test_subsets();
  test_tf_names();
  test_tf_values();
  test_tf_noise();
  test_tf_keyed();
  test_tf_layout();
  cleanup();
  return check_report();
}
