/* Dataset readers (IDX and CSV, gzip or plain through zlib), seeded subsets
 * (class subsets, k per class, stratified split) and the provenance digest.
 * Batch assembly and transforms live in nn/transform.c. */
#include "data.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "err.h"
#include "rng.h"

/* Largest image payload we agree to read (16 GiB): a header claiming more is
 * corrupt, and for gzip the real size is unknown until inflated. */
#define IDX_MAX_BYTES ((int64_t)1 << 34)
/* Largest single dimension of an IDX file we accept. */
#define IDX_MAX_DIM ((int64_t)INT_MAX)
/* CSV labels above this are almost surely a wrong column, and would make
 * nclasses (and every head sized by it) absurd. */
#define CSV_MAX_LABEL 65535
/* gzread takes an unsigned length and returns an int: read in blocks. */
#define READ_BLOCK ((size_t)1 << 26)

/* malloc that never returns NULL for a zero-byte request, so empty datasets
 * still have valid (freeable) arrays. */
static void *xmalloc(size_t n) { return malloc(n ? n : 1); }

/* ---------------------------------------------------------------- files -- */

/* Opens path for reading through zlib (gzip or plain). role names the file in
 * messages ("images file"). A missing path or a directory is the user's to
 * fix; other failures are runtime errors. */
static int open_gz(gzFile *out, const char *path, const char *role) {
  struct stat st;
  *out = NULL;
  CHECK_USER(path && path[0], "%s: no path given", role);
  if (stat(path, &st) != 0) {
    int e = errno;
    if (e == ENOENT || e == ENOTDIR || e == EACCES)
      FERRY_FAIL(FERRY_EUSER, "%s '%s': cannot open: %s", role, path, strerror(e));
    FERRY_FAIL(FERRY_ERUNTIME, "%s '%s': cannot stat: %s", role, path, strerror(e));
  }
  CHECK_USER(!S_ISDIR(st.st_mode), "%s '%s': is a directory, expected a file", role, path);
  errno = 0;
  gzFile gz = gzopen(path, "rb");
  if (!gz) {
    int e = errno;
    if (e == EACCES) FERRY_FAIL(FERRY_EUSER, "%s '%s': cannot open: %s", role, path, strerror(e));
    FERRY_FAIL(FERRY_ERUNTIME, "%s '%s': cannot open: %s", role, path,
               e ? strerror(e) : "zlib could not allocate its state");
  }
  gzbuffer(gz, 1u << 18); /* larger input buffer: fewer read() calls */
  *out = gz;
  return 0;
}

/* Reads up to n bytes into buf; *got receives the count. A stream error
 * (corrupt gzip, I/O error) fails here; a short read (end of file, including
 * a truncated gzip stream) is left to the caller, who knows what was
 * expected. */
static int read_gz(gzFile gz, void *buf, size_t n, size_t *got, const char *role,
                   const char *path) {
  unsigned char *p = buf;
  *got = 0;
  while (*got < n) {
    size_t want = n - *got < READ_BLOCK ? n - *got : READ_BLOCK;
    int r = gzread(gz, p + *got, (unsigned)want);
    if (r < 0) {
      int zerr = Z_OK;
      const char *zmsg = gzerror(gz, &zerr);
      if (zerr == Z_ERRNO)
        FERRY_FAIL(FERRY_ERUNTIME, "%s '%s': read error: %s", role, path, strerror(errno));
      FERRY_FAIL(FERRY_EUSER, "%s '%s': corrupt gzip data after %zu bytes: %s", role, path,
                 *got, zmsg);
    }
    if (r == 0) break;
    *got += (size_t)r;
  }
  return 0;
}

/* Why a read came up short, for messages: zlib's reason if it has one. */
static const char *short_reason(gzFile gz) {
  int zerr = Z_OK;
  const char *m = gzerror(gz, &zerr);
  return zerr != Z_OK && m && m[0] ? m : "end of file";
}

/* ------------------------------------------------------------------ IDX -- */

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads and checks an IDX header: magic 0x000008<ndim>, then ndim big-endian
 * sizes, each in 1..IDX_MAX_DIM. */
static int idx_header(gzFile gz, const char *role, const char *path, int ndim, int64_t *dims) {
  unsigned char h[16];
  size_t want = 4 + 4 * (size_t)ndim, got = 0;
  CHECK_CALL(read_gz(gz, h, 4, &got, role, path));
  CHECK_USER(got == 4, "%s '%s': truncated header: expected 4 magic bytes, got %zu (%s)", role,
             path, got, short_reason(gz));
  uint32_t magic = be32(h), expect = 0x00000800u | (uint32_t)ndim;
  CHECK_USER(h[0] == 0 && h[1] == 0,
             "%s '%s': bad magic 0x%08x, expected 0x%08x (not an IDX file)", role, path, magic,
             expect);
  CHECK_USER(h[2] == 0x08,
             "%s '%s': bad magic 0x%08x: element type 0x%02x, expected 0x08 (unsigned byte)",
             role, path, magic, h[2]);
  CHECK_USER(h[3] == ndim,
             "%s '%s': bad magic 0x%08x: %d dimensions, expected %d (%s); is this the %s?",
             role, path, magic, h[3], ndim, ndim == 3 ? "n, rows, cols" : "n",
             ndim == 3 ? "labels file" : "images file");
  CHECK_CALL(read_gz(gz, h + 4, want - 4, &got, role, path));
  CHECK_USER(got == want - 4, "%s '%s': truncated header: expected %zu bytes, got %zu (%s)",
             role, path, want, 4 + got, short_reason(gz));
  static const char *const names[3] = {"number of items", "rows", "cols"};
  for (int i = 0; i < ndim; i++) {
    dims[i] = be32(h + 4 + 4 * i);
    CHECK_USER(dims[i] > 0 && dims[i] <= IDX_MAX_DIM, "%s '%s': %s = %lld, expected 1..%lld",
               role, path, names[i], (long long)dims[i], (long long)IDX_MAX_DIM);
  }
  return 0;
}

/* Reads exactly n payload bytes into a buffer that grows as data arrives, so
 * a header that lies about a gzip file's size costs nothing before the lie
 * shows. *out is malloc'd (the caller frees) on success. For a plain file
 * the size is checked against the header before anything is read. */
static int idx_payload(gzFile gz, const char *role, const char *path, int64_t n,
                       const char *what, uint8_t **out) {
  *out = NULL;
  size_t need = (size_t)n, cap = need < READ_BLOCK ? need : READ_BLOCK, got = 0;
  uint8_t *buf = NULL;
  int rc = 0;
  for (;;) {
    uint8_t *nb = realloc(buf, cap ? cap : 1);
    if (!nb) {
      free(buf);
      FERRY_FAIL(FERRY_ERUNTIME, "%s '%s': out of memory reading %zu bytes", role, path, cap);
    }
    buf = nb;
    size_t r = 0;
    rc = read_gz(gz, buf + got, cap - got, &r, role, path);
    if (rc) break;
    got += r;
    if (got < cap) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s '%s': truncated: expected %lld %s bytes, got %zu (%s)", role, path,
                         (long long)n, what, got, short_reason(gz));
      break;
    }
    if (got == need) break;
    cap = need - cap < cap ? need : 2 * cap;
  }
  if (rc) {
    free(buf);
    return rc;
  }
  *out = buf;
  return 0;
}

/* After a whole payload: the stream must end here. Reading past the end also
 * makes zlib check the gzip trailer, so a corrupted member (CRC mismatch)
 * fails instead of passing as data. */
static int idx_expect_end(gzFile gz, const char *role, const char *path, const char *hdr) {
  unsigned char probe[16];
  size_t got = 0;
  CHECK_CALL(read_gz(gz, probe, sizeof probe, &got, role, path));
  CHECK_USER(got == 0, "%s '%s': more data than its header declares (%s), expected the file to end",
             role, path, hdr);
  return 0;
}

/* For a plain (not gzip) file, compares its size with what the header
 * promises before reading: a wrong header fails fast with both numbers. */
static int idx_plain_size(gzFile gz, const char *role, const char *path, int64_t hdr,
                          int64_t payload, const char *what) {
  struct stat st;
  if (!gzdirect(gz) || stat(path, &st) != 0) return 0;
  CHECK_USER(st.st_size >= hdr + payload,
             "%s '%s': truncated: expected %lld %s bytes, got %lld (file is %lld bytes)", role,
             path, (long long)payload, what, (long long)(st.st_size - hdr > 0 ? st.st_size - hdr : 0),
             (long long)st.st_size);
  return 0;
}

/* Header and sizes of an images file: d = {n, rows, cols}. */
static int idx_dims(gzFile gz, const char *role, const char *path, int64_t d[3]) {
  CHECK_CALL(idx_header(gz, role, path, 3, d));
  /* Each size is < 2^31, so rows*cols fits; n*rows*cols might not. */
  CHECK_USER(d[0] <= IDX_MAX_BYTES / (d[1] * d[2]),
             "%s '%s': %lld images of %lldx%lld pixels, expected at most %lld bytes in all", role,
             path, (long long)d[0], (long long)d[1], (long long)d[2], (long long)IDX_MAX_BYTES);
  CHECK_USER(d[1] <= INT_MAX / d[2], "%s '%s': image of %lldx%lld pixels, expected at most %d",
             role, path, (long long)d[1], (long long)d[2], INT_MAX);
  return idx_plain_size(gz, role, path, 16, d[0] * d[1] * d[2], "image");
}

static int idx_end_check(gzFile gz, const char *role, const char *path, const int64_t d[3]) {
  char hdr[96];
  snprintf(hdr, sizeof hdr, "%lld images of %lldx%lld", (long long)d[0], (long long)d[1],
           (long long)d[2]);
  return idx_expect_end(gz, role, path, hdr);
}

/* header_only: sizes checked, pixels left unread (u8 stays NULL). */
static int idx_images(nn_dataset *ds, const char *path, int64_t max_n, int64_t *n_file,
                      int header_only) {
  const char *role = "images file";
  gzFile gz;
  int64_t d[3] = {0, 0, 0};
  CHECK_CALL(open_gz(&gz, path, role));
  int rc = idx_dims(gz, role, path, d);
  int64_t keep = max_n > 0 && max_n < d[0] ? max_n : d[0];
  if (rc == 0 && !header_only) {
    rc = idx_payload(gz, role, path, keep * d[1] * d[2], "image", &ds->u8);
    if (rc == 0 && keep == d[0]) rc = idx_end_check(gz, role, path, d);
  }
  gzclose(gz);
  if (rc) {
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  ds->n = keep;
  ds->shape = (nn_shape){1, (int)d[1], (int)d[2]};
  ds->spatial = 1;
  *n_file = d[0];
  return 0;
}

static int idx_labels(nn_dataset *ds, const char *path, int64_t n_images, const char *images) {
  const char *role = "labels file";
  gzFile gz;
  int64_t n;
  uint8_t *raw = NULL;
  CHECK_CALL(open_gz(&gz, path, role));
  int rc = idx_header(gz, role, path, 1, &n);
  if (rc == 0 && n != n_images)
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "labels file '%s' has %lld labels, images file '%s' has %lld images",
                       path, (long long)n, images, (long long)n_images);
  if (rc == 0) rc = idx_plain_size(gz, role, path, 8, n, "label");
  if (rc == 0) rc = idx_payload(gz, role, path, ds->n, "label", &raw);
  if (rc == 0 && ds->n == n) {
    char hdr[48];
    snprintf(hdr, sizeof hdr, "%lld labels", (long long)n);
    rc = idx_expect_end(gz, role, path, hdr);
  }
  gzclose(gz);
  if (rc) {
    free(raw);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  int maxl = -1;
  for (int64_t i = 0; i < ds->n; i++) {
    if (raw[i] == 255) {
      free(raw);
      FERRY_FAIL(FERRY_EUSER, "labels file '%s': label at index %lld is 255, expected 0..254",
                 path, (long long)i);
    }
    ds->labels[i] = raw[i];
    if (raw[i] > maxl) maxl = raw[i];
  }
  free(raw);
  ds->nclasses = maxl + 1;
  return 0;
}

static int read_idx(nn_dataset *ds, const char *images, const char *labels, int64_t max_n,
                    int header_only) {
  memset(ds, 0, sizeof *ds);
  int64_t n_file = 0;
  int rc = idx_images(ds, images, max_n, &n_file, header_only);
  if (rc == 0) {
    ds->labels = xmalloc((size_t)ds->n * sizeof *ds->labels);
    ds->ids = xmalloc((size_t)ds->n * sizeof *ds->ids);
    if (!ds->labels || !ds->ids)
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "out of memory for %lld labels of '%s'", (long long)ds->n, images);
  }
  if (rc == 0) {
    for (int64_t i = 0; i < ds->n; i++) ds->ids[i] = i;
    if (labels && labels[0]) {
      rc = idx_labels(ds, labels, n_file, images);
    } else {
      for (int64_t i = 0; i < ds->n; i++) ds->labels[i] = -1;
    }
  }
  if (rc) {
    nn_data_free(ds);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  snprintf(ds->source, sizeof ds->source, "%s%s%s", images, labels && labels[0] ? "," : "",
           labels && labels[0] ? labels : "");
  ds->pending = header_only ? NN_PENDING_U8 : 0;
  return 0;
}

int nn_data_read_idx(nn_dataset *ds, const char *images, const char *labels, int64_t max_n) {
  return read_idx(ds, images, labels, max_n, 0);
}

int nn_data_read_idx_labels(nn_dataset *ds, const char *images, const char *labels,
                            int64_t max_n) {
  return read_idx(ds, images, labels, max_n, 1);
}

static uint64_t row_digest_u8(const uint8_t *p, size_t numel);
static uint64_t row_digest_f32(const float *p, size_t numel);

/* Where each view wants file row r: pos[k][r] = its row, or -1, for r <
 * nrows; allocates each view's pixels (u8 or f32, as it is pending). */
static int fill_plan(nn_dataset *const *dst, int nd, int64_t nrows, size_t numel, const char *path,
                     int64_t **pos) {
  for (int k = 0; k < nd; k++) {
    nn_dataset *v = dst[k];
    CHECK_RT(v->pending && !v->u8 && !v->f32, "filling '%s': not a pending view", v->source);
    pos[k] = malloc((size_t)(nrows ? nrows : 1) * sizeof **pos);
    if (v->pending == NN_PENDING_F32)
      v->f32 = xmalloc((size_t)v->n * numel * sizeof(float));
    else
      v->u8 = xmalloc((size_t)v->n * numel);
    CHECK_ALLOC(pos[k] && (v->u8 || v->f32) ? v : NULL, (size_t)v->n * numel);
    for (int64_t r = 0; r < nrows; r++) pos[k][r] = -1;
    for (int64_t i = 0; i < v->n; i++) {
      const int64_t r = v->ids[i];
      CHECK_USER(r >= 0 && r < nrows,
                 "data file '%s': sample %lld wanted, the file now has %lld (did it change?)",
                 path, (long long)r, (long long)nrows);
      CHECK_RT(pos[k][r] < 0, "filling from '%s': row %lld twice in one view", path,
               (long long)r);
      pos[k][r] = i;
    }
  }
  return 0;
}

/* After a failed fill: the views are pending again and hold nothing. */
static void fill_undo(nn_dataset *const *dst, int nd) {
  for (int k = 0; k < nd; k++)
    if (dst[k]->pending) {
      free(dst[k]->u8);
      free(dst[k]->f32);
      dst[k]->u8 = NULL;
      dst[k]->f32 = NULL;
    }
}

int nn_data_fill_idx(nn_dataset *const *dst, int nd, const char *images, int64_t max_n,
                     uint64_t **row_hash, int64_t *nrows) {
  const char *role = "images file";
  if (row_hash) *row_hash = NULL;
  if (nrows) *nrows = 0;
  int64_t **pos = calloc((size_t)(nd > 0 ? nd : 1), sizeof *pos);
  CHECK_ALLOC(pos, (size_t)nd * sizeof *pos);
  gzFile gz;
  int rc = open_gz(&gz, images, role);
  if (rc) {
    free(pos);
    return rc;
  }
  int64_t d[3] = {0, 0, 0};
  uint8_t *buf = NULL;
  uint64_t *hash = NULL;
  rc = idx_dims(gz, role, images, d);
  const int64_t keep = max_n > 0 && max_n < d[0] ? max_n : d[0];
  const size_t numel = (size_t)(d[1] * d[2]);
  const int64_t block = numel < READ_BLOCK / 16 ? (int64_t)(READ_BLOCK / 16 / numel) : 1;
  for (int k = 0; rc == 0 && k < nd; k++)
    if (dst[k]->shape.c != 1 || dst[k]->shape.h != d[1] || dst[k]->shape.w != d[2] ||
        dst[k]->pending != NN_PENDING_U8)
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "images file '%s': images are now %lldx%lld, were %dx%d when its labels "
                         "were read (did the file change?)",
                         images, (long long)d[1], (long long)d[2], dst[k]->shape.h,
                         dst[k]->shape.w);
  if (rc == 0) rc = fill_plan(dst, nd, keep, numel, images, pos);
  if (rc == 0) {
    buf = malloc((size_t)block * numel);
    if (row_hash) hash = malloc((size_t)(keep ? keep : 1) * sizeof *hash);
    if (!buf || (row_hash && !hash))
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "%s '%s': out of memory for a read block of %lld images", role, images,
                         (long long)block);
  }
  for (int64_t r0 = 0; rc == 0 && r0 < keep; r0 += block) {
    const int64_t c = keep - r0 < block ? keep - r0 : block;
    size_t got = 0;
    rc = read_gz(gz, buf, (size_t)c * numel, &got, role, images);
    if (rc == 0 && got < (size_t)c * numel)
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s '%s': truncated: expected %lld image bytes, got %lld (%s)", role,
                         images, (long long)(keep * (int64_t)numel),
                         (long long)(r0 * (int64_t)numel + (int64_t)got), short_reason(gz));
    for (int64_t r = 0; rc == 0 && r < c; r++) {
      const uint8_t *row = buf + (size_t)r * numel;
      if (hash) hash[r0 + r] = row_digest_u8(row, numel);
      for (int k = 0; k < nd; k++) {
        const int64_t p = pos[k][r0 + r];
        if (p >= 0) memcpy(dst[k]->u8 + (size_t)p * numel, row, numel);
      }
    }
  }
  if (rc == 0 && keep == d[0]) rc = idx_end_check(gz, role, images, d);
  gzclose(gz);
  for (int k = 0; k < nd; k++) free(pos[k]);
  free(pos);
  free(buf);
  if (rc) {
    free(hash);
    fill_undo(dst, nd);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  for (int k = 0; k < nd; k++) dst[k]->pending = 0;
  if (row_hash) {
    *row_hash = hash;
    *nrows = keep;
  }
  return 0;
}

/* ------------------------------------------------------------------ CSV -- */

static int is_blank(char ch) { return ch == ' ' || ch == '\t'; }

/* Field [b, e) with surrounding blanks trimmed. */
static void trim(const char **b, const char **e) {
  while (*b < *e && is_blank(**b)) (*b)++;
  while (*e > *b && is_blank((*e)[-1])) (*e)--;
}

/* Parses a float filling exactly [b, e); returns 0 on success. */
static int parse_float(const char *b, const char *e, float *v) {
  if (b == e) return -1;
  /* Fast path for short integers (pixel CSVs): exact in a float, and the
   * same value strtof would give. */
  if (e - b <= 7) {
    const char *p = b + (*b == '-');
    int32_t m = 0;
    while (p < e && *p >= '0' && *p <= '9') m = 10 * m + (*p++ - '0');
    if (p == e && e > b + (*b == '-')) {
      *v = *b == '-' ? -(float)m : (float)m;
      return 0;
    }
  }
  char *end;
  errno = 0;
  float x = strtof(b, &end);
  if (end != e || !isfinite(x)) return -1;
  *v = x;
  return 0;
}

/* Parses a label: empty = unlabelled (-1), else an integer 0..CSV_MAX_LABEL. */
static int parse_label(const char *b, const char *e, int32_t *v) {
  if (b == e) {
    *v = -1;
    return 0;
  }
  char *end;
  errno = 0;
  long x = strtol(b, &end, 10);
  if (end != e || errno || x < 0 || x > CSV_MAX_LABEL) return -1;
  *v = (int32_t)x;
  return 0;
}

static int64_t count_fields(const char *b, const char *e) {
  int64_t k = 1;
  for (const char *p = b; (p = memchr(p, ',', (size_t)(e - p))) != NULL; p++) k++;
  return k;
}

static int line_is_blank(const char *b, const char *e) {
  while (b < e && is_blank(*b)) b++;
  return b == e;
}

/* Parses one data row of nf fields into labels[row] and feat[0..nf-1). */
static int csv_row(const char *path, long line, const char *b, const char *e, int64_t nf,
                   int32_t *label, float *feat) {
  const char *f = b;
  for (int64_t k = 0; k < nf; k++) {
    const char *c = memchr(f, ',', (size_t)(e - f));
    const char *fe = c ? c : e, *tb = f, *te = fe;
    trim(&tb, &te);
    if (k == 0) {
      CHECK_USER(parse_label(tb, te, label) == 0,
                 "CSV file '%s', line %ld, column %ld (field 1, the label): expected an integer "
                 "0..%d or an empty field (unlabelled), found '%.*s'",
                 path, line, (long)(f - b) + 1, CSV_MAX_LABEL, (int)(te - tb < 40 ? te - tb : 40),
                 tb);
    } else {
      CHECK_USER(parse_float(tb, te, &feat[k - 1]) == 0,
                 "CSV file '%s', line %ld, column %ld (field %lld): expected a number, found "
                 "'%.*s'",
                 path, line, (long)(f - b) + 1, (long long)k + 1,
                 (int)(te - tb < 40 ? te - tb : 40), tb);
    }
    f = fe + 1;
  }
  return 0;
}

/* A gzip or plain text file, line by line through a buffer that grows to
 * the longest line: the whole text is never held. */
typedef struct {
  gzFile gz;
  const char *path;
  char *buf;
  size_t cap, beg, len; /* unread text: buf[beg, len); buf has cap + 1 bytes */
  size_t before;        /* bytes of the file before buf[0] */
  int eof;
} csv_in;

static void csv_close(csv_in *in) {
  if (in->gz) gzclose(in->gz);
  free(in->buf);
  memset(in, 0, sizeof *in);
}

static int csv_open(csv_in *in, const char *path) {
  memset(in, 0, sizeof *in);
  in->path = path;
  CHECK_CALL(open_gz(&in->gz, path, "CSV file"));
  in->cap = (size_t)1 << 20;
  in->buf = malloc(in->cap + 1);
  if (!in->buf) {
    csv_close(in);
    FERRY_FAIL(FERRY_ERUNTIME, "CSV file '%s': out of memory for a read buffer", path);
  }
  return 0;
}

/* The next line [*b, *e), its '\n' (and a '\r' before it) replaced by '\0';
 * *b = NULL after the last line. */
static int csv_line(csv_in *in, char **b, char **e) {
  for (;;) {
    char *p = in->buf + in->beg;
    char *nl = memchr(p, '\n', in->len - in->beg);
    if (nl || (in->eof && in->beg < in->len)) {
      char *end = nl ? nl : in->buf + in->len;
      *end = '\0';
      if (end > p && end[-1] == '\r') end[-1] = '\0', end--;
      *b = p;
      *e = end;
      in->beg = nl ? (size_t)(nl - in->buf) + 1 : in->len;
      return 0;
    }
    if (in->eof) {
      *b = *e = NULL;
      return 0;
    }
    if (in->beg > 0) {
      memmove(in->buf, p, in->len - in->beg);
      in->before += in->beg;
      in->len -= in->beg;
      in->beg = 0;
    }
    if (in->len == in->cap) {
      char *nb = realloc(in->buf, 2 * in->cap + 1);
      CHECK_RT(nb, "CSV file '%s': out of memory for a line of over %zu bytes", in->path, in->cap);
      in->buf = nb;
      in->cap *= 2;
    }
    size_t got = 0, want = in->cap - in->len;
    CHECK_CALL(read_gz(in->gz, in->buf + in->len, want, &got, "CSV file", in->path));
    in->len += got;
    if (got < want) {
      int zerr = Z_OK;
      const char *m = gzerror(in->gz, &zerr);
      CHECK_USER(zerr == Z_OK, "CSV file '%s': truncated or corrupt after %zu bytes: %s",
                 in->path, in->before + in->len, m);
      in->eof = 1;
    }
  }
}

/* Called for each data row (numbered from 0) with its label and d features. */
typedef int (*csv_row_fn)(void *ctx, int64_t row, int32_t label, const float *feat, int64_t d);

/* Reads a CSV file once, checking every row, and hands each data row to fn.
 * *d = features per row, *n = data rows. */
static int csv_scan(const char *path, csv_row_fn fn, void *ctx, int64_t *d, int64_t *n) {
  csv_in in;
  CHECK_CALL(csv_open(&in, path));
  int64_t nf = 0, rows = 0;   /* fields per row, data rows */
  long line = 0, nf_line = 0; /* current line; line that fixed nf */
  int header = 0, rc = 0;
  float *feat = NULL;
  char *ln = NULL, *le = NULL;
  while ((rc = csv_line(&in, &ln, &le)) == 0 && ln) {
    line++;
    if (line_is_blank(ln, le)) continue;
    int64_t k = count_fields(ln, le);
    if (nf == 0) {
      /* First non-blank line: a header when its first field is not a number. */
      const char *c = memchr(ln, ',', (size_t)(le - ln));
      const char *tb = ln, *te = c ? c : le;
      float dummy;
      trim(&tb, &te);
      header = tb < te && parse_float(tb, te, &dummy) != 0;
      if (k < 2) {
        rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                           "CSV file '%s', line %ld: found %lld field, expected a label and at "
                           "least one feature (label,f1,...,fd)",
                           path, line, (long long)k);
        break;
      }
      nf = k;
      nf_line = line;
      feat = malloc((size_t)(nf - 1) * sizeof *feat);
      if (!feat) {
        rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                           "CSV file '%s': out of memory for a row of %lld fields", path,
                           (long long)nf);
        break;
      }
      if (header) continue;
    }
    if (k != nf) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "CSV file '%s', line %ld: found %lld fields, expected %lld (as on line "
                         "%ld%s)",
                         path, line, (long long)k, (long long)nf, nf_line,
                         header ? ", the header" : "");
      break;
    }
    int32_t label = -1;
    if ((rc = csv_row(path, line, ln, le, nf, &label, feat))) break;
    if ((rc = fn(ctx, rows, label, feat, nf - 1))) break;
    rows++;
  }
  if (rc == 0 && rows == 0)
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "CSV file '%s': no data rows, expected lines of label,f1,...,fd", path);
  csv_close(&in);
  free(feat);
  if (rc) {
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  *d = nf - 1;
  *n = rows;
  return 0;
}

/* csv_scan's sink for a whole read (features kept) or a view (labels only). */
typedef struct {
  nn_dataset *ds;
  int64_t cap;
  int features;
} csv_keep;

static int csv_keep_row(void *ctx, int64_t row, int32_t label, const float *feat, int64_t d) {
  csv_keep *k = ctx;
  nn_dataset *ds = k->ds;
  if (row == k->cap) {
    int64_t cap = k->cap ? 2 * k->cap : 1024;
    int32_t *l = realloc(ds->labels, (size_t)cap * sizeof *l);
    if (l) ds->labels = l;
    float *f = k->features ? realloc(ds->f32, (size_t)cap * (size_t)d * sizeof *f) : NULL;
    if (f) ds->f32 = f;
    CHECK_RT(l && (f || !k->features), "CSV file: out of memory for %lld rows of %lld features",
             (long long)cap, (long long)d);
    k->cap = cap;
  }
  ds->labels[row] = label;
  if (k->features) memcpy(ds->f32 + (size_t)row * (size_t)d, feat, (size_t)d * sizeof *feat);
  return 0;
}

static int read_csv(nn_dataset *ds, const char *path, int img_h, int img_w, int features) {
  memset(ds, 0, sizeof *ds);
  csv_keep k = {.ds = ds, .features = features};
  int64_t d = 0, n = 0;
  int rc = csv_scan(path, csv_keep_row, &k, &d, &n);
  if (rc == 0 && !(img_h > 0 && img_w > 0 && (int64_t)img_h * img_w == d) && d > INT_MAX)
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "CSV file '%s': %lld features, expected at most %d", path, (long long)d,
                       INT_MAX);
  if (rc == 0) {
    ds->ids = xmalloc((size_t)n * sizeof *ds->ids);
    if (!ds->ids)
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "CSV file '%s': out of memory for %lld rows", path, (long long)n);
  }
  if (rc) {
    nn_data_free(ds);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  ds->n = n;
  if (img_h > 0 && img_w > 0 && (int64_t)img_h * img_w == d) {
    ds->shape = (nn_shape){1, img_h, img_w};
    ds->spatial = 1;
  } else {
    ds->shape = (nn_shape){(int)d, 1, 1};
    ds->spatial = 0;
  }
  int32_t maxl = -1;
  for (int64_t i = 0; i < n; i++) {
    ds->ids[i] = i;
    if (ds->labels[i] > maxl) maxl = ds->labels[i];
  }
  ds->nclasses = maxl + 1;
  /* Give back the rows reserved by the last doubling. */
  if (features) {
    float *f = realloc(ds->f32, (size_t)n * (size_t)d * sizeof(float));
    if (f) ds->f32 = f;
  }
  int32_t *l = realloc(ds->labels, (size_t)n * sizeof(int32_t));
  if (l) ds->labels = l;
  snprintf(ds->source, sizeof ds->source, "%s", path);
  ds->pending = features ? 0 : NN_PENDING_F32;
  return 0;
}

int nn_data_read_csv(nn_dataset *ds, const char *path, int img_h, int img_w) {
  return read_csv(ds, path, img_h, img_w, 1);
}

int nn_data_read_csv_labels(nn_dataset *ds, const char *path, int img_h, int img_w) {
  return read_csv(ds, path, img_h, img_w, 0);
}

/* csv_scan's sink for nn_data_fill_csv. */
typedef struct {
  nn_dataset *const *dst;
  int nd;
  int64_t **pos, npos; /* pos[k][row] for row < npos */
  size_t numel;
  uint64_t *hash;
  int64_t hcap;
  const char *path;
} csv_fill;

static int csv_fill_row(void *ctx, int64_t row, int32_t label, const float *feat, int64_t d) {
  csv_fill *f = ctx;
  (void)label;
  CHECK_USER((size_t)d == f->numel,
             "CSV file '%s': rows now have %lld features, had %zu when its labels were read (did "
             "the file change?)",
             f->path, (long long)d, f->numel);
  if (f->hcap >= 0) {
    if (row == f->hcap) {
      int64_t cap = f->hcap ? 2 * f->hcap : 1024;
      uint64_t *h = realloc(f->hash, (size_t)cap * sizeof *h);
      CHECK_ALLOC(h, (size_t)cap * sizeof *h);
      f->hash = h;
      f->hcap = cap;
    }
    f->hash[row] = row_digest_f32(feat, f->numel);
  }
  for (int k = 0; row < f->npos && k < f->nd; k++) {
    const int64_t p = f->pos[k][row];
    if (p >= 0) memcpy(f->dst[k]->f32 + (size_t)p * f->numel, feat, f->numel * sizeof *feat);
  }
  return 0;
}

int nn_data_fill_csv(nn_dataset *const *dst, int nd, const char *path, uint64_t **row_hash,
                     int64_t *nrows) {
  if (row_hash) *row_hash = NULL;
  if (nrows) *nrows = 0;
  csv_fill f = {.dst = dst, .nd = nd, .path = path, .hcap = row_hash ? 0 : -1};
  f.pos = calloc((size_t)(nd > 0 ? nd : 1), sizeof *f.pos);
  CHECK_ALLOC(f.pos, (size_t)nd * sizeof *f.pos);
  int rc = 0;
  for (int k = 0; k < nd; k++) {
    if (k > 0 && nn_shape_numel(dst[k]->shape) != nn_shape_numel(dst[0]->shape))
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "nn_data_fill_csv: views of '%s' with different shapes", path);
    if (dst[k]->pending != NN_PENDING_F32)
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "nn_data_fill_csv: '%s' is not a pending CSV view", dst[k]->source);
    for (int64_t i = 0; i < dst[k]->n; i++)
      if (dst[k]->ids[i] >= f.npos) f.npos = dst[k]->ids[i] + 1;
  }
  f.numel = nd > 0 ? nn_shape_numel(dst[0]->shape) : 0;
  if (rc == 0) rc = fill_plan(dst, nd, f.npos, f.numel, path, f.pos);
  int64_t d = 0, n = 0;
  if (rc == 0 && nd > 0) rc = csv_scan(path, csv_fill_row, &f, &d, &n);
  if (rc == 0 && f.npos > n)
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "CSV file '%s': sample %lld wanted, the file now has %lld rows (did it "
                       "change?)",
                       path, (long long)f.npos - 1, (long long)n);
  for (int k = 0; k < nd; k++) free(f.pos[k]);
  free(f.pos);
  if (rc) {
    free(f.hash);
    fill_undo(dst, nd);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  for (int k = 0; k < nd; k++) dst[k]->pending = 0;
  if (row_hash) {
    *row_hash = f.hash;
    *nrows = n;
  } else {
    free(f.hash);
  }
  return 0;
}

void nn_data_free(nn_dataset *ds) {
  if (!ds) return;
  free(ds->u8);
  free(ds->f32);
  free(ds->labels);
  free(ds->ids);
  memset(ds, 0, sizeof *ds);
}

/* -------------------------------------------------------------- subsets -- */

/* dst is an output: it is overwritten (not freed) and left empty on failure.
 * dst must not be src. */
int nn_data_gather(nn_dataset *dst, const nn_dataset *src, const int64_t *idx, int64_t n) {
  memset(dst, 0, sizeof *dst);
  CHECK_RT(src != dst, "nn_data_gather: dst must differ from src ('%s')", src->source);
  CHECK_RT(n >= 0, "nn_data_gather: %lld rows requested from '%s'", (long long)n, src->source);
  const size_t numel = nn_shape_numel(src->shape);
  nn_dataset d = {.n = n, .shape = src->shape, .spatial = src->spatial,
                  .nclasses = src->nclasses, .pending = src->pending};
  memcpy(d.source, src->source, sizeof d.source);
  d.labels = xmalloc((size_t)n * sizeof *d.labels);
  d.ids = xmalloc((size_t)n * sizeof *d.ids);
  if (src->u8) d.u8 = xmalloc((size_t)n * numel);
  if (src->f32) d.f32 = xmalloc((size_t)n * numel * sizeof(float));
  if (!d.labels || !d.ids || (src->u8 && !d.u8) || (src->f32 && !d.f32)) {
    nn_data_free(&d);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory gathering %lld rows of '%s'", (long long)n,
               src->source);
  }
  for (int64_t i = 0; i < n; i++) {
    const int64_t r = idx[i];
    if (r < 0 || r >= src->n) {
      nn_data_free(&d);
      FERRY_FAIL(FERRY_ERUNTIME, "nn_data_gather: row %lld out of range 0..%lld of '%s'",
                 (long long)r, (long long)src->n - 1, src->source);
    }
    d.labels[i] = src->labels[r];
    d.ids[i] = src->ids ? src->ids[r] : r;
    if (d.u8) memcpy(d.u8 + (size_t)i * numel, src->u8 + (size_t)r * numel, numel);
    if (d.f32)
      memcpy(d.f32 + (size_t)i * numel, src->f32 + (size_t)r * numel, numel * sizeof(float));
  }
  *dst = d;
  return 0;
}

int nn_data_copy(nn_dataset *dst, const nn_dataset *src) {
  memset(dst, 0, sizeof *dst);
  int64_t *idx = xmalloc((size_t)src->n * sizeof *idx);
  CHECK_ALLOC(idx, (size_t)src->n * sizeof *idx);
  for (int64_t i = 0; i < src->n; i++) idx[i] = i;
  int rc = nn_data_gather(dst, src, idx, src->n);
  free(idx);
  return rc;
}

int nn_data_view_of(nn_dataset *dst, const nn_dataset *whole) {
  nn_dataset v = *whole;
  v.u8 = NULL;
  v.f32 = NULL;
  v.pending = whole->f32 ? NN_PENDING_F32 : NN_PENDING_U8;
  return nn_data_copy(dst, &v);
}

int nn_data_fill_from(nn_dataset *const *dst, int nd, const nn_dataset *whole) {
  const int kind = whole->f32 ? NN_PENDING_F32 : NN_PENDING_U8;
  for (int k = 0; k < nd; k++)
    CHECK_RT(dst[k]->pending == kind && !dst[k]->u8 && !dst[k]->f32 &&
                 nn_shape_numel(dst[k]->shape) == nn_shape_numel(whole->shape),
             "nn_data_fill_from: '%s' is not a pending view of '%s'", dst[k]->source,
             whole->source);
  int rc = 0;
  for (int k = 0; rc == 0 && k < nd; k++) {
    /* A view's ids are rows of the file, and so of `whole` as read. */
    nn_dataset rows;
    rc = nn_data_gather(&rows, whole, dst[k]->ids, dst[k]->n);
    if (rc) break;
    dst[k]->u8 = rows.u8;
    dst[k]->f32 = rows.f32;
    rows.u8 = NULL;
    rows.f32 = NULL;
    nn_data_free(&rows);
  }
  if (rc) {
    fill_undo(dst, nd);
    return rc;
  }
  for (int k = 0; k < nd; k++) dst[k]->pending = 0;
  return 0;
}

int nn_data_subset_classes(nn_dataset *dst, const nn_dataset *src, const int *classes, int nc) {
  memset(dst, 0, sizeof *dst);
  CHECK_USER(nc >= 1, "'%s': class subset is empty, expected at least one class", src->source);
  for (int i = 0; i < nc; i++)
    for (int j = 0; j < i; j++)
      CHECK_USER(classes[i] != classes[j], "'%s': class %d listed twice in the subset (positions %d and %d)",
                 src->source, classes[i], j, i);
  /* Map old label -> new label (-1 = dropped); labels are < nclasses. */
  const int nold = src->nclasses > 0 ? src->nclasses : 0;
  int *map = xmalloc((size_t)nold * sizeof *map);
  int64_t *cnt = calloc((size_t)nc, sizeof *cnt);
  int64_t *idx = xmalloc((size_t)src->n * sizeof *idx);
  int rc = 0;
  if (!map || !cnt || !idx) {
    rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                       "out of memory subsetting '%s'", src->source);
    goto done;
  }
  for (int c = 0; c < nold; c++) map[c] = -1;
  for (int i = 0; i < nc; i++)
    if (classes[i] >= 0 && classes[i] < nold) map[classes[i]] = i;
  int64_t m = 0;
  for (int64_t r = 0; r < src->n; r++) {
    const int32_t l = src->labels[r];
    if (l >= 0 && l < nold && map[l] >= 0) {
      idx[m++] = r;
      cnt[map[l]]++;
    }
  }
  for (int i = 0; i < nc; i++)
    if (cnt[i] == 0) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "'%s': class %d has no samples (the dataset has classes 0..%d)",
                         src->source, classes[i], nold - 1);
      goto done;
    }
  rc = nn_data_gather(dst, src, idx, m);
  if (rc) goto done;
  for (int64_t i = 0; i < m; i++) dst->labels[i] = map[dst->labels[i]];
  dst->nclasses = nc;
done:
  free(map);
  free(cnt);
  free(idx);
  if (rc) ferry_err_trace(__FILE__, __LINE__, __func__);
  return rc;
}

/* Rows of src grouped by class: rows[start[c] .. start[c+1]) hold, in file
 * order, the rows labelled c; group nclasses holds the unlabelled rows. */
typedef struct {
  int64_t *rows, *start;
  int ngroups;
} class_index;

static void class_index_free(class_index *ci) {
  free(ci->rows);
  free(ci->start);
  memset(ci, 0, sizeof *ci);
}

static int class_index_build(class_index *ci, const nn_dataset *src) {
  const int nc = src->nclasses > 0 ? src->nclasses : 0;
  ci->ngroups = nc + 1;
  ci->rows = xmalloc((size_t)src->n * sizeof *ci->rows);
  ci->start = calloc((size_t)ci->ngroups + 1, sizeof *ci->start);
  if (!ci->rows || !ci->start) {
    class_index_free(ci);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory indexing the classes of '%s'", src->source);
  }
  for (int64_t r = 0; r < src->n; r++) {
    const int32_t l = src->labels[r];
    ci->start[(l >= 0 && l < nc ? l : nc) + 1]++;
  }
  for (int g = 0; g < ci->ngroups; g++) ci->start[g + 1] += ci->start[g];
  int64_t *fill = xmalloc((size_t)ci->ngroups * sizeof *fill);
  if (!fill) {
    class_index_free(ci);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory indexing the classes of '%s'", src->source);
  }
  memcpy(fill, ci->start, (size_t)ci->ngroups * sizeof *fill);
  for (int64_t r = 0; r < src->n; r++) {
    const int32_t l = src->labels[r];
    ci->rows[fill[l >= 0 && l < nc ? l : nc]++] = r;
  }
  free(fill);
  return 0;
}

/* Moves a seeded random choice of m of the n entries of a to its front
 * (partial Fisher-Yates). The generator is seeded per group so that one
 * class's choice does not depend on the others. */
static void choose_front(int64_t *a, int64_t n, int64_t m, uint64_t seed, uint64_t group) {
  nn_rng r;
  nn_rng_seed(&r, nn_hash64(seed, group));
  for (int64_t i = 0; i < m && i < n - 1; i++) {
    const int64_t j = i + (int64_t)nn_rng_below(&r, (uint32_t)(n - i));
    const int64_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int nn_data_k_per_class(nn_dataset *dst, const nn_dataset *src, int k, uint64_t seed) {
  memset(dst, 0, sizeof *dst);
  CHECK_USER(k >= 1, "'%s': k per class = %d, expected at least 1", src->source, k);
  CHECK_USER(src->nclasses >= 1, "'%s': k per class needs labelled samples, found none",
             src->source);
  CHECK_USER(src->n <= UINT32_MAX, "'%s': %lld rows, expected at most %u", src->source,
             (long long)src->n, UINT32_MAX);
  class_index ci = {0};
  CHECK_CALL(class_index_build(&ci, src));
  const int nc = src->nclasses;
  int64_t *sel = xmalloc((size_t)nc * (size_t)k * sizeof *sel), m = 0;
  int rc = 0;
  if (!sel)
    rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                       "out of memory choosing %d rows per class of '%s'", k, src->source);
  for (int c = 0; rc == 0 && c < nc; c++) {
    int64_t *g = ci.rows + ci.start[c], gn = ci.start[c + 1] - ci.start[c];
    if (gn < k) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "'%s': class %d has %lld samples, expected at least k = %d",
                         src->source, c, (long long)gn, k);
      break;
    }
    choose_front(g, gn, k, seed, (uint64_t)c);
    memcpy(sel + m, g, (size_t)k * sizeof *sel);
    m += k;
  }
  if (rc == 0) {
    /* Stable order (file order) whatever the shuffles did. */
    qsort(sel, (size_t)m, sizeof *sel, cmp_i64);
    rc = nn_data_gather(dst, src, sel, m);
  }
  free(sel);
  class_index_free(&ci);
  if (rc) ferry_err_trace(__FILE__, __LINE__, __func__);
  return rc;
}

int nn_data_split(nn_dataset *train, nn_dataset *val, const nn_dataset *src, double frac,
                  uint64_t seed) {
  memset(train, 0, sizeof *train);
  memset(val, 0, sizeof *val);
  CHECK_USER(frac >= 0.0 && frac < 1.0, "'%s': validation fraction %g, expected a value in [0, 1)",
             src->source, frac);
  CHECK_RT(train != val, "nn_data_split: train and val must differ");
  CHECK_USER(src->n <= UINT32_MAX, "'%s': %lld rows, expected at most %u", src->source,
             (long long)src->n, UINT32_MAX);
  class_index ci = {0};
  CHECK_CALL(class_index_build(&ci, src));
  int64_t *vr = xmalloc((size_t)src->n * sizeof *vr), *tr = xmalloc((size_t)src->n * sizeof *tr);
  int64_t nv = 0, nt = 0;
  int rc = 0;
  if (!vr || !tr) {
    rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                       "out of memory splitting '%s'", src->source);
    goto done;
  }
  /* Unlabelled rows (the last group) are split like one more class. */
  for (int g = 0; g < ci.ngroups; g++) {
    int64_t *rows = ci.rows + ci.start[g], m = ci.start[g + 1] - ci.start[g];
    int64_t v = (int64_t)llround(frac * (double)m);
    if (frac > 0 && m >= 2) v = v < 1 ? 1 : v > m - 1 ? m - 1 : v;
    if (m < 2) v = 0; /* a lone sample trains */
    choose_front(rows, m, v, seed, (uint64_t)g);
    memcpy(vr + nv, rows, (size_t)v * sizeof *vr);
    memcpy(tr + nt, rows + v, (size_t)(m - v) * sizeof *tr);
    nv += v;
    nt += m - v;
  }
  qsort(vr, (size_t)nv, sizeof *vr, cmp_i64);
  qsort(tr, (size_t)nt, sizeof *tr, cmp_i64);
  rc = nn_data_gather(train, src, tr, nt);
  if (rc == 0) rc = nn_data_gather(val, src, vr, nv);
  if (rc) nn_data_free(train);
done:
  free(vr);
  free(tr);
  class_index_free(&ci);
  if (rc) ferry_err_trace(__FILE__, __LINE__, __func__);
  return rc;
}

/* ---------------------------------------------------------------- digest -- */

/* Word-at-a-time FNV-style step; the rotation carries high bits down so every
 * input bit reaches the whole state. Bijective in h for a fixed word, so two
 * inputs differing in one word never collide before the final mix. */
static inline uint64_t dig_step(uint64_t h, uint64_t w) {
  h = (h ^ w) * 0x100000001b3ULL;
  return (h << 31) | (h >> 33);
}

/* Bytes in little-endian 64-bit words (the same digest on every host). */
static uint64_t dig_bytes(uint64_t h, const uint8_t *p, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = 0;
    for (int b = 0; b < 8; b++) w |= (uint64_t)p[i + b] << (8 * b);
    h = dig_step(h, w);
  }
  uint64_t w = 0;
  for (int b = 0; i + (size_t)b < n; b++) w |= (uint64_t)p[i + b] << (8 * b);
  return dig_step(h, w ^ ((uint64_t)(n & 7) << 56));
}

/* A sample's hash; the digest chains these, so it can also be formed from
 * hashes taken while a file streams past (nn_data_fill_idx). */
static uint64_t row_digest_u8(const uint8_t *p, size_t numel) {
  return nn_mix64(dig_bytes(0xcbf29ce484222325ULL, p, numel));
}

static uint64_t row_digest_f32(const float *p, size_t numel) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < numel; i++) {
    uint32_t b;
    memcpy(&b, &p[i], sizeof b);
    h = dig_step(h, b);
  }
  return nn_mix64(h);
}

static uint64_t digest_head(int64_t n, nn_shape s, unsigned kind) {
  uint64_t h = 0xcbf29ce484222325ULL;
  h = dig_step(h, (uint64_t)n);
  h = dig_step(h, (uint64_t)(uint32_t)s.c << 32 | (uint32_t)s.h);
  return dig_step(h, (uint64_t)(uint32_t)s.w << 32 | kind);
}

static uint64_t digest_labels(uint64_t h, const nn_dataset *ds) {
  for (int64_t i = 0; i < ds->n; i++) h = dig_step(h, (uint32_t)ds->labels[i]);
  return nn_mix64(h);
}

uint64_t nn_data_digest(const nn_dataset *ds) {
  const size_t numel = nn_shape_numel(ds->shape);
  /* (A pending view has no pixels here: nn_data_digest_view digests one.) */
  uint64_t h = digest_head(ds->n, ds->shape, (ds->u8 ? 1u : 0u) | (ds->f32 ? 2u : 0u));
  for (int64_t i = 0; ds->u8 && i < ds->n; i++)
    h = dig_step(h, row_digest_u8(ds->u8 + (size_t)i * numel, numel));
  for (int64_t i = 0; ds->f32 && i < ds->n; i++)
    h = dig_step(h, row_digest_f32(ds->f32 + (size_t)i * numel, numel));
  return digest_labels(h, ds);
}

uint64_t nn_data_digest_view_in(const nn_dataset *view, const nn_dataset *whole) {
  const size_t numel = nn_shape_numel(whole->shape);
  uint64_t h = digest_head(view->n, view->shape, whole->f32 ? 2u : 1u);
  for (int64_t i = 0; i < view->n; i++) {
    const int64_t r = view->ids[i];
    uint64_t rh = 0;
    if (r >= 0 && r < whole->n)
      rh = whole->f32 ? row_digest_f32(whole->f32 + (size_t)r * numel, numel)
                      : row_digest_u8(whole->u8 + (size_t)r * numel, numel);
    h = dig_step(h, rh);
  }
  return digest_labels(h, view);
}

uint64_t nn_data_digest_view(const nn_dataset *view, const uint64_t *row_hash, int64_t nrows) {
  uint64_t h = digest_head(view->n, view->shape, view->pending == NN_PENDING_F32 ? 2u : 1u);
  for (int64_t i = 0; i < view->n; i++) {
    const int64_t r = view->ids[i];
    h = dig_step(h, r >= 0 && r < nrows ? row_hash[r] : 0);
  }
  return digest_labels(h, view);
}
