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
  ds->pending = header_only;
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

/* Where each view wants file row r: pos[k][r] = its row, or -1. */
static int fill_plan(nn_dataset *const *dst, int nd, const int64_t d[3], int64_t keep,
                     const char *path, int64_t **pos) {
  const size_t numel = (size_t)(d[1] * d[2]);
  for (int k = 0; k < nd; k++) {
    nn_dataset *v = dst[k];
    CHECK_RT(v->pending && !v->u8 && !v->f32, "nn_data_fill_idx: '%s' is not a pending view",
             v->source);
    CHECK_USER(v->shape.c == 1 && v->shape.h == d[1] && v->shape.w == d[2],
               "images file '%s': images are now %lldx%lld, were %dx%d when its labels were read "
               "(did the file change?)",
               path, (long long)d[1], (long long)d[2], v->shape.h, v->shape.w);
    pos[k] = malloc((size_t)(keep ? keep : 1) * sizeof **pos);
    v->u8 = xmalloc((size_t)v->n * numel);
    CHECK_ALLOC(pos[k] && v->u8 ? v : NULL, (size_t)v->n * numel);
    for (int64_t r = 0; r < keep; r++) pos[k][r] = -1;
    for (int64_t i = 0; i < v->n; i++) {
      const int64_t r = v->ids[i];
      CHECK_USER(r >= 0 && r < keep,
                 "images file '%s': sample %lld wanted, the file now has %lld (did it change?)",
                 path, (long long)r, (long long)keep);
      CHECK_RT(pos[k][r] < 0, "nn_data_fill_idx: row %lld of '%s' twice in one view",
               (long long)r, path);
      pos[k][r] = i;
    }
  }
  return 0;
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
  if (rc == 0) rc = fill_plan(dst, nd, d, keep, images, pos);
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
    for (int k = 0; k < nd; k++)
      if (dst[k]->pending) {
        free(dst[k]->u8);
        dst[k]->u8 = NULL;
      }
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

/* Inflates (or reads) a whole text file into a NUL-terminated buffer. */
static int slurp(const char *path, const char *role, char **out, size_t *len) {
  gzFile gz;
  *out = NULL;
  CHECK_CALL(open_gz(&gz, path, role));
  size_t cap = (size_t)1 << 20, got = 0;
  char *buf = NULL;
  int rc = 0;
  for (;;) {
    char *nb = realloc(buf, cap + 1);
    if (!nb) {
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "%s '%s': out of memory reading %zu bytes", role, path, cap);
      break;
    }
    buf = nb;
    size_t r = 0;
    rc = read_gz(gz, buf + got, cap - got, &r, role, path);
    if (rc) break;
    got += r;
    if (got < cap) {
      int zerr = Z_OK;
      const char *m = gzerror(gz, &zerr);
      if (zerr != Z_OK)
        rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                           "%s '%s': truncated or corrupt after %zu bytes: %s", role, path, got, m);
      break;
    }
    cap *= 2;
  }
  gzclose(gz);
  if (rc) {
    free(buf);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  buf[got] = '\0';
  *out = buf;
  *len = got;
  return 0;
}

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

/* Splits a text into lines in place: each '\n' (and a '\r' before it)
 * becomes '\0'. Returns the next line start, or NULL at the end. */
static char *next_line(char *p, const char *end, char **line_end) {
  if (p >= end) return NULL;
  char *nl = memchr(p, '\n', (size_t)(end - p));
  char *e = nl ? nl : (char *)end;
  *e = '\0';
  if (e > p && e[-1] == '\r') e[-1] = '\0', e--;
  *line_end = e;
  return nl ? nl + 1 : (char *)end;
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

/* Parses the text of a CSV file (modified in place) into ds. */
static int csv_parse(nn_dataset *ds, const char *path, char *text, size_t len, int img_h,
                     int img_w) {
  const char *end = text + len;
  int64_t nlines = 1;
  for (const char *p = text; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) nlines++;

  int64_t nf = 0, cap = 0, n = 0; /* fields per row, row capacity, rows */
  long line = 0, nf_line = 0;     /* current line; line that fixed nf */
  int header = 0;
  char *p = text, *le;
  for (char *ln; (ln = p, p = next_line(p, end, &le)) != NULL;) {
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
      CHECK_USER(k >= 2,
                 "CSV file '%s', line %ld: found %lld field, expected a label and at least one "
                 "feature (label,f1,...,fd)",
                 path, line, (long long)k);
      nf = k;
      nf_line = line;
      /* A data row of nf fields is at least nf bytes long with its newline. */
      cap = nlines < (int64_t)(len / (size_t)nf) + 1 ? nlines : (int64_t)(len / (size_t)nf) + 1;
      ds->f32 = xmalloc((size_t)cap * (size_t)(nf - 1) * sizeof(float));
      ds->labels = xmalloc((size_t)cap * sizeof(int32_t));
      CHECK_ALLOC(ds->f32, (size_t)cap * (size_t)(nf - 1) * sizeof(float));
      CHECK_ALLOC(ds->labels, (size_t)cap * sizeof(int32_t));
      if (header) continue;
    }
    CHECK_USER(k == nf, "CSV file '%s', line %ld: found %lld fields, expected %lld (as on line %ld%s)",
               path, line, (long long)k, (long long)nf, nf_line, header ? ", the header" : "");
    CHECK_RT(n < cap, "CSV file '%s': more rows than lines (internal)", path);
    CHECK_CALL(csv_row(path, line, ln, le, nf, &ds->labels[n], ds->f32 + (size_t)n * (size_t)(nf - 1)));
    n++;
  }
  CHECK_USER(n > 0, "CSV file '%s': no data rows, expected lines of label,f1,...,fd", path);

  const int64_t d = nf - 1;
  ds->n = n;
  if (img_h > 0 && img_w > 0 && (int64_t)img_h * img_w == d) {
    ds->shape = (nn_shape){1, img_h, img_w};
    ds->spatial = 1;
  } else {
    CHECK_USER(d <= INT_MAX, "CSV file '%s': %lld features, expected at most %d", path,
               (long long)d, INT_MAX);
    ds->shape = (nn_shape){(int)d, 1, 1};
    ds->spatial = 0;
  }
  ds->ids = xmalloc((size_t)n * sizeof *ds->ids);
  CHECK_ALLOC(ds->ids, (size_t)n * sizeof *ds->ids);
  int32_t maxl = -1;
  for (int64_t i = 0; i < n; i++) {
    ds->ids[i] = i;
    if (ds->labels[i] > maxl) maxl = ds->labels[i];
  }
  ds->nclasses = maxl + 1;
  /* Give back the rows reserved for blank lines and the header. */
  float *f = realloc(ds->f32, (size_t)n * (size_t)d * sizeof(float));
  if (f) ds->f32 = f;
  int32_t *l = realloc(ds->labels, (size_t)n * sizeof(int32_t));
  if (l) ds->labels = l;
  return 0;
}

int nn_data_read_csv(nn_dataset *ds, const char *path, int img_h, int img_w) {
  memset(ds, 0, sizeof *ds);
  char *text = NULL;
  size_t len = 0;
  CHECK_CALL(slurp(path, "CSV file", &text, &len));
  int rc = csv_parse(ds, path, text, len, img_h, img_w);
  free(text);
  if (rc) {
    nn_data_free(ds);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  snprintf(ds->source, sizeof ds->source, "%s", path);
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

uint64_t nn_data_digest_view(const nn_dataset *view, const uint64_t *row_hash, int64_t nrows) {
  uint64_t h = digest_head(view->n, view->shape, 1u);
  for (int64_t i = 0; i < view->n; i++) {
    const int64_t r = view->ids[i];
    h = dig_step(h, r >= 0 && r < nrows ? row_hash[r] : 0);
  }
  return digest_labels(h, view);
}
