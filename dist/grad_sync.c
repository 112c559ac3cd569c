/* Bucketed gradient allreduce that overlaps backward (dist/grad_sync.h).
 * Open MPI here makes no asynchronous progress, so every ready report calls
 * MPI_Testsome: the reports come between layers, which is often enough to keep
 * the non-blocking allreduces moving while the next layer computes. */
#include "grad_sync.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"

typedef struct {
  int lo, n;        /* ranges [lo, lo+n) of s->ranges */
  size_t nfloats;   /* sum of their lengths */
  float *pack;      /* packing area, NULL when the ranges are adjacent */
  float *data;      /* what is reduced: pack, or grads + first offset */
  int pending;      /* ranges not yet reported this step */
  int started;
  int req0, nreq;   /* its requests in s->reqs (more than one above INT_MAX floats) */
} gs_bucket;

struct dist_grad_sync {
  dist_comm c;
  float *grads;
  int nranges;
  dist_range *ranges;     /* ascending */
  int *range_bucket;      /* bucket of each range */
  unsigned char *done;    /* reported this step */
  int nbuckets;
  gs_bucket *buckets;     /* 0 holds the last ranges */
  float *packbuf;         /* one area for every packed bucket */
  int nreqs, nactive;
  MPI_Request *reqs;
  int *idx;               /* MPI_Testsome output */
  int enabled;
  int err;                /* first error; sticky: every later finish fails */
  double wait_s;
  size_t bytes;
};

static int mpi_check(int rc, const char *what) {
  if (rc == MPI_SUCCESS) return 0;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  FERRY_FAIL(FERRY_ERUNTIME, "%s failed: %s", what, msg);
}

/* Groups ranges from the last to the first into buckets of at most
 * bucket_bytes (a larger range alone). With out == NULL only counts. */
static int form_buckets(const dist_range *r, int nr, size_t bucket_bytes, gs_bucket *out) {
  int nb = 0;
  int i = nr - 1;
  while (i >= 0) {
    int hi = i;
    size_t bytes = r[i].len * sizeof(float);
    i--;
    while (i >= 0 && bytes + r[i].len * sizeof(float) <= bucket_bytes) {
      bytes += r[i].len * sizeof(float);
      i--;
    }
    if (out) {
      out[nb].lo = i + 1;
      out[nb].n = hi - i;
    }
    nb++;
  }
  return nb;
}

static int bucket_adjacent(const dist_range *r, const gs_bucket *b) {
  for (int k = b->lo; k + 1 < b->lo + b->n; k++)
    if (r[k].off + r[k].len != r[k + 1].off) return 0;
  return 1;
}

/* Copies the user's ranges without the empty ones and checks the order. */
static int copy_ranges(dist_grad_sync *s, const dist_range *ranges, int nranges) {
  s->ranges = malloc((size_t)(nranges ? nranges : 1) * sizeof *s->ranges);
  CHECK_ALLOC(s->ranges, (size_t)nranges * sizeof *s->ranges);
  for (int i = 0; i < nranges; i++) {
    if (ranges[i].len == 0) continue;
    if (s->nranges > 0) {
      const dist_range *p = &s->ranges[s->nranges - 1];
      CHECK_USER(ranges[i].off >= p->off + p->len,
                 "gradient ranges must be ascending and disjoint: range %d [%zu, %zu) "
                 "starts before the end of the previous one (%zu)",
                 i, ranges[i].off, ranges[i].off + ranges[i].len, p->off + p->len);
    }
    s->ranges[s->nranges++] = ranges[i];
  }
  return 0;
}

static int alloc_buckets(dist_grad_sync *s, size_t bucket_bytes) {
  int nr = s->nranges;
  s->nbuckets = form_buckets(s->ranges, nr, bucket_bytes, NULL);
  size_t nb = (size_t)(s->nbuckets ? s->nbuckets : 1);
  s->buckets = calloc(nb, sizeof *s->buckets);
  s->range_bucket = calloc((size_t)(nr ? nr : 1), sizeof *s->range_bucket);
  s->done = calloc((size_t)(nr ? nr : 1), 1);
  CHECK_ALLOC(s->buckets, nb * sizeof *s->buckets);
  CHECK_ALLOC(s->range_bucket, (size_t)nr * sizeof *s->range_bucket);
  CHECK_ALLOC(s->done, (size_t)nr);
  form_buckets(s->ranges, nr, bucket_bytes, s->buckets);

  size_t pack_floats = 0;
  for (int b = 0; b < s->nbuckets; b++) {
    gs_bucket *bk = &s->buckets[b];
    for (int k = bk->lo; k < bk->lo + bk->n; k++) {
      bk->nfloats += s->ranges[k].len;
      s->range_bucket[k] = b;
    }
    if (!bucket_adjacent(s->ranges, bk)) pack_floats += bk->nfloats;
    bk->req0 = s->nreqs;
    bk->nreq = (int)((bk->nfloats + (size_t)INT_MAX - 1) / (size_t)INT_MAX);
    s->nreqs += bk->nreq;
  }
  if (pack_floats) {
    s->packbuf = aligned_alloc(64, (pack_floats * sizeof(float) + 63) / 64 * 64);
    CHECK_ALLOC(s->packbuf, pack_floats * sizeof(float));
  }
  size_t at = 0;
  for (int b = 0; b < s->nbuckets; b++) {
    gs_bucket *bk = &s->buckets[b];
    if (bucket_adjacent(s->ranges, bk)) {
      bk->data = s->grads + s->ranges[bk->lo].off;
    } else {
      bk->pack = s->packbuf + at;
      bk->data = bk->pack;
      at += bk->nfloats;
    }
    bk->pending = bk->n;
  }
  size_t nq = (size_t)(s->nreqs ? s->nreqs : 1);
  s->reqs = malloc(nq * sizeof *s->reqs);
  s->idx = malloc(nq * sizeof *s->idx);
  CHECK_ALLOC(s->reqs, nq * sizeof *s->reqs);
  CHECK_ALLOC(s->idx, nq * sizeof *s->idx);
  for (int q = 0; q < s->nreqs; q++) s->reqs[q] = MPI_REQUEST_NULL;
  return 0;
}

int dist_grad_sync_new(dist_grad_sync **out, const dist_comm *c, float *grads,
                       const dist_range *ranges, int nranges, size_t bucket_bytes) {
  *out = NULL;
  CHECK_USER(bucket_bytes > 0, "gradient bucket size must be positive, got 0 bytes");
  CHECK_USER(nranges >= 0, "number of gradient ranges must be >= 0, got %d", nranges);
  dist_grad_sync *s = calloc(1, sizeof *s);
  CHECK_ALLOC(s, sizeof *s);
  s->c = *c;
  s->grads = grads;
  s->enabled = 1;
  int rc = copy_ranges(s, ranges, nranges);
  if (rc == 0) rc = alloc_buckets(s, bucket_bytes);
  if (rc != 0) {
    dist_grad_sync_free(&s);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  *out = s;
  return 0;
}

void dist_grad_sync_free(dist_grad_sync **s) {
  if (!s || !*s) return;
  dist_grad_sync *p = *s;
  free(p->ranges);
  free(p->range_bucket);
  free(p->done);
  free(p->buckets);
  free(p->packbuf);
  free(p->reqs);
  free(p->idx);
  free(p);
  *s = NULL;
}

static int communicates(const dist_grad_sync *s) {
  return s->enabled && s->c.size > 1 && s->err == 0;
}

static void record(dist_grad_sync *s, int rc) {
  if (rc != 0 && s->err == 0) s->err = rc;
}

static int bucket_start(dist_grad_sync *s, gs_bucket *b) {
  b->started = 1;
  if (b->pack) {
    float *p = b->pack;
    for (int k = b->lo; k < b->lo + b->n; k++) {
      memcpy(p, s->grads + s->ranges[k].off, s->ranges[k].len * sizeof(float));
      p += s->ranges[k].len;
    }
  }
  float *d = b->data;
  size_t left = b->nfloats;
  for (int q = 0; q < b->nreq; q++) {
    int k = left > (size_t)INT_MAX ? INT_MAX : (int)left;
    CHECK_CALL(mpi_check(MPI_Iallreduce(MPI_IN_PLACE, d, k, MPI_FLOAT, MPI_SUM, s->c.comm,
                                        &s->reqs[b->req0 + q]),
                         "MPI_Iallreduce (gradient bucket)"));
    s->nactive++;
    d += k;
    left -= (size_t)k;
  }
  s->bytes += b->nfloats * sizeof(float);
  return 0;
}

/* One progress poll: lets Open MPI advance every outstanding allreduce. */
static int progress(dist_grad_sync *s) {
  if (s->nactive == 0) return 0;
  int outcount = 0;
  CHECK_CALL(mpi_check(MPI_Testsome(s->nreqs, s->reqs, &outcount, s->idx, MPI_STATUSES_IGNORE),
                       "MPI_Testsome (gradient sync)"));
  if (outcount != MPI_UNDEFINED) s->nactive -= outcount;
  return 0;
}

/* First range whose offset is >= off (ranges are ascending). */
static int lower_bound(const dist_grad_sync *s, size_t off) {
  int lo = 0, hi = s->nranges;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (s->ranges[mid].off < off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

void dist_grad_sync_ready(dist_grad_sync *s, size_t off, size_t len) {
  if (!communicates(s)) return;
  if (len > 0) {
    for (int k = lower_bound(s, off);
         k < s->nranges && s->ranges[k].off + s->ranges[k].len <= off + len; k++) {
      if (s->done[k]) continue;
      s->done[k] = 1;
      gs_bucket *b = &s->buckets[s->range_bucket[k]];
      if (--b->pending == 0 && !b->started) record(s, bucket_start(s, b));
    }
  }
  record(s, progress(s));
}

static void reset_step(dist_grad_sync *s) {
  memset(s->done, 0, (size_t)s->nranges);
  for (int b = 0; b < s->nbuckets; b++) {
    s->buckets[b].pending = s->buckets[b].n;
    s->buckets[b].started = 0;
  }
}

static void unpack(dist_grad_sync *s, const gs_bucket *b) {
  const float *p = b->pack;
  for (int k = b->lo; k < b->lo + b->n; k++) {
    memcpy(s->grads + s->ranges[k].off, p, s->ranges[k].len * sizeof(float));
    p += s->ranges[k].len;
  }
}

static int finish(dist_grad_sync *s) {
  CHECK_CALL(s->err);
  for (int b = 0; b < s->nbuckets; b++)
    if (!s->buckets[b].started) CHECK_CALL(bucket_start(s, &s->buckets[b]));
  double t0 = MPI_Wtime();
  int rc = mpi_check(MPI_Waitall(s->nreqs, s->reqs, MPI_STATUSES_IGNORE),
                     "MPI_Waitall (gradient sync)");
  s->wait_s += MPI_Wtime() - t0;
  CHECK_CALL(rc);
  s->nactive = 0;
  for (int b = 0; b < s->nbuckets; b++)
    if (s->buckets[b].pack) unpack(s, &s->buckets[b]);
  return 0;
}

int dist_grad_sync_finish(dist_grad_sync *s) {
  int rc = communicates(s) || s->err ? finish(s) : 0;
  record(s, rc);
  reset_step(s);
  CHECK_CALL(rc);
  return 0;
}

void dist_grad_sync_stats(const dist_grad_sync *s, double *wait_s, size_t *bytes, int *nbuckets) {
  if (wait_s) *wait_s = s->wait_s;
  if (bytes) *bytes = s->bytes;
  if (nbuckets) *nbuckets = s->nbuckets;
}

void dist_grad_sync_set_enabled(dist_grad_sync *s, int on) { s->enabled = on != 0; }
