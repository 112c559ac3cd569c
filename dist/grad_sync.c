/* Bucketed gradient allreduce that overlaps backward (dist/grad_sync.h).
 * Open MPI here makes no asynchronous progress, so every ready report polls
 * the buckets in flight: the reports come between layers, often enough to
 * keep the exchanges moving while the next layer computes. On a power-of-two
 * number of ranks a bucket is reduced by recursive halving/doubling
 * (dist/allreduce_hd.c, half the CPU of this MPI's MPI_Iallreduce); otherwise
 * by MPI_Iallreduce. All traffic runs on a private duplicate communicator. */
/* For MADV_HUGEPAGE (Linux), beyond the POSIX set the build asks for. */
#define _DEFAULT_SOURCE
#include "grad_sync.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "allreduce_hd.h"
#include "dist/comm.h"
#include "nn/err.h"

typedef struct {
  int lo, n;        /* ranges [lo, lo+n) of s->ranges */
  size_t nfloats;   /* sum of their lengths */
  float *pack;      /* packing area, NULL when the ranges are adjacent */
  float *data;      /* what is reduced: pack, or grads + first offset */
  float *scratch;   /* halving/doubling scratch (hd mode) */
  int pending;      /* ranges not yet reported this step */
  int started, done;
  dist_hd_op hd;    /* hd mode */
  int req0, nreq;   /* MPI_Iallreduce mode: requests in s->reqs, <= INT_MAX floats each */
} gs_bucket;

struct dist_grad_sync {
  dist_comm c;            /* duplicate of the caller's communicator */
  int hd_ok;              /* halving/doubling possible here */
  int hd;                 /* in use (else MPI_Iallreduce) */
  float *grads;
  int nranges;
  dist_range *ranges;     /* ascending */
  int *range_bucket;      /* bucket of each range */
  unsigned char *seen;    /* reported this step */
  int nbuckets;
  gs_bucket *buckets;     /* 0 holds the last ranges */
  float *packbuf;         /* packing areas of all packed buckets */
  float *scratchbuf;      /* hd scratch of all buckets */
  int nreqs, nactive;     /* nactive: buckets started and not done */
  MPI_Request *reqs;
  int enabled;
  int err;                /* first error; sticky: every later finish fails */
  double wait_s;
  size_t bytes;
};

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

/* Halving/doubling needs a power-of-two size, int counts and a tag per
 * bucket; anything else goes to MPI_Iallreduce. */
static int choose_hd(const dist_grad_sync *s) {
  int size = s->c.size, *tag_ub = NULL, flag = 0;
  if (size < 2 || (size & (size - 1)) != 0) return 0;
  MPI_Comm_get_attr(s->c.comm, MPI_TAG_UB, &tag_ub, &flag);
  if (!flag || s->nbuckets > *tag_ub) return 0;
  for (int b = 0; b < s->nbuckets; b++)
    if (s->buckets[b].nfloats > (size_t)INT_MAX) return 0;
  return 1;
}

/* Buffers that MPI reads from another process: with shared-memory single-copy
 * (CMA) the kernel pins every 4 KiB page it copies. Measured here, 24 x 1 MiB
 * halving/doubling between 2 ranks took 6.7 ms in 4 KiB pages and 3.8 ms with
 * data and scratch in 2 MiB pages. Large areas are therefore 2 MiB-aligned and
 * advised as huge pages (a hint; without effect if THP is off). Buckets
 * reduced in place live in the caller's slab and get this benefit only if the
 * slab is allocated the same way. Freed with free(). */
static void *alloc_comm(size_t bytes) {
  const size_t huge = (size_t)2 << 20;
  if (bytes < huge) return malloc(bytes);
  size_t n = (bytes + huge - 1) / huge * huge;
  void *p = aligned_alloc(huge, n);
  if (p) (void)madvise(p, n, MADV_HUGEPAGE);
  return p;
}

static int alloc_areas(dist_grad_sync *s) {
  size_t pack_floats = 0, scratch_floats = 0;
  for (int b = 0; b < s->nbuckets; b++) {
    gs_bucket *bk = &s->buckets[b];
    if (!bucket_adjacent(s->ranges, bk)) pack_floats += bk->nfloats;
    if (s->hd_ok) scratch_floats += dist_hd_scratch(bk->nfloats);
  }
  if (pack_floats) {
    s->packbuf = alloc_comm(pack_floats * sizeof(float));
    CHECK_ALLOC(s->packbuf, pack_floats * sizeof(float));
  }
  if (scratch_floats) {
    s->scratchbuf = alloc_comm(scratch_floats * sizeof(float));
    CHECK_ALLOC(s->scratchbuf, scratch_floats * sizeof(float));
  }
  float *pack = s->packbuf, *scratch = s->scratchbuf;
  for (int b = 0; b < s->nbuckets; b++) {
    gs_bucket *bk = &s->buckets[b];
    if (bucket_adjacent(s->ranges, bk)) {
      bk->data = s->grads + s->ranges[bk->lo].off;
    } else {
      bk->data = bk->pack = pack;
      pack += bk->nfloats;
    }
    if (s->hd_ok) {
      bk->scratch = scratch;
      scratch += dist_hd_scratch(bk->nfloats);
    }
  }
  return 0;
}

static int alloc_buckets(dist_grad_sync *s, size_t bucket_bytes) {
  int nr = s->nranges;
  s->nbuckets = form_buckets(s->ranges, nr, bucket_bytes, NULL);
  size_t nb = (size_t)(s->nbuckets ? s->nbuckets : 1);
  s->buckets = calloc(nb, sizeof *s->buckets);
  s->range_bucket = calloc((size_t)(nr ? nr : 1), sizeof *s->range_bucket);
  s->seen = calloc((size_t)(nr ? nr : 1), 1);
  CHECK_ALLOC(s->buckets, nb * sizeof *s->buckets);
  CHECK_ALLOC(s->range_bucket, (size_t)nr * sizeof *s->range_bucket);
  CHECK_ALLOC(s->seen, (size_t)nr);
  form_buckets(s->ranges, nr, bucket_bytes, s->buckets);
  for (int b = 0; b < s->nbuckets; b++) {
    gs_bucket *bk = &s->buckets[b];
    for (int k = bk->lo; k < bk->lo + bk->n; k++) {
      bk->nfloats += s->ranges[k].len;
      s->range_bucket[k] = b;
    }
    bk->pending = bk->n;
  }
  s->hd_ok = s->hd = choose_hd(s);
  for (int b = 0; b < s->nbuckets; b++) {
    gs_bucket *bk = &s->buckets[b];
    bk->req0 = s->nreqs;
    bk->nreq = (int)((bk->nfloats + (size_t)INT_MAX - 1) / (size_t)INT_MAX);
    s->nreqs += bk->nreq;
  }
  size_t nq = (size_t)(s->nreqs ? s->nreqs : 1);
  s->reqs = malloc(nq * sizeof *s->reqs);
  CHECK_ALLOC(s->reqs, nq * sizeof *s->reqs);
  for (int q = 0; q < s->nreqs; q++) s->reqs[q] = MPI_REQUEST_NULL;
  return alloc_areas(s);
}

int dist_grad_sync_new(dist_grad_sync **out, const dist_comm *c, float *grads,
                       const dist_range *ranges, int nranges, size_t bucket_bytes) {
  *out = NULL;
  CHECK_USER(bucket_bytes > 0, "gradient bucket size must be positive, got 0 bytes");
  CHECK_USER(nranges >= 0, "number of gradient ranges must be >= 0, got %d", nranges);
  dist_grad_sync *s = calloc(1, sizeof *s);
  CHECK_ALLOC(s, sizeof *s);
  s->c.comm = MPI_COMM_NULL;
  s->grads = grads;
  s->enabled = 1;
  int rc = copy_ranges(s, ranges, nranges);
  if (rc == 0) {
    MPI_Comm dup = MPI_COMM_NULL;
    rc = dist_mpi_check(MPI_Comm_dup(c->comm, &dup), "MPI_Comm_dup (gradient sync)");
    if (rc == 0) dist_comm_wrap(&s->c, dup);
  }
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
  if (p->c.comm != MPI_COMM_NULL) MPI_Comm_free(&p->c.comm);
  free(p->ranges);
  free(p->range_bucket);
  free(p->seen);
  free(p->buckets);
  free(p->packbuf);
  free(p->scratchbuf);
  free(p->reqs);
  free(p);
  *s = NULL;
}

static int communicates(const dist_grad_sync *s) {
  return s->enabled && s->c.size > 1 && s->err == 0;
}

static void record(dist_grad_sync *s, int rc) {
  if (rc != 0 && s->err == 0) s->err = rc;
}

static int bucket_start(dist_grad_sync *s, int b) {
  gs_bucket *bk = &s->buckets[b];
  bk->started = 1;
  if (bk->pack) {
    float *p = bk->pack;
    for (int k = bk->lo; k < bk->lo + bk->n; k++) {
      memcpy(p, s->grads + s->ranges[k].off, s->ranges[k].len * sizeof(float));
      p += s->ranges[k].len;
    }
  }
  s->bytes += bk->nfloats * sizeof(float);
  s->nactive++;
  if (s->hd) return dist_hd_start(&bk->hd, &s->c, bk->data, bk->nfloats, bk->scratch, b);
  float *d = bk->data;
  size_t left = bk->nfloats;
  for (int q = 0; q < bk->nreq; q++) {
    int k = left > (size_t)INT_MAX ? INT_MAX : (int)left;
    CHECK_CALL(dist_mpi_check(MPI_Iallreduce(MPI_IN_PLACE, d, k, MPI_FLOAT, MPI_SUM, s->c.comm,
                                        &s->reqs[bk->req0 + q]),
                         "MPI_Iallreduce (gradient bucket)"));
    d += k;
    left -= (size_t)k;
  }
  return 0;
}

/* Non-blocking poll of one started bucket; marks it done when complete. */
static int bucket_test(dist_grad_sync *s, gs_bucket *bk) {
  int flag = 0;
  if (s->hd)
    CHECK_CALL(dist_hd_test(&bk->hd, &flag));
  else
    CHECK_CALL(dist_mpi_check(MPI_Testall(bk->nreq, s->reqs + bk->req0, &flag, MPI_STATUSES_IGNORE),
                         "MPI_Testall (gradient bucket)"));
  if (flag) {
    bk->done = 1;
    s->nactive--;
  }
  return 0;
}

static int bucket_wait(dist_grad_sync *s, gs_bucket *bk) {
  if (s->hd)
    CHECK_CALL(dist_hd_wait(&bk->hd));
  else
    CHECK_CALL(dist_mpi_check(MPI_Waitall(bk->nreq, s->reqs + bk->req0, MPI_STATUSES_IGNORE),
                         "MPI_Waitall (gradient bucket)"));
  bk->done = 1;
  s->nactive--;
  return 0;
}

/* One poll of every bucket in flight: lets MPI move their messages and
 * starts their next rounds. */
static int progress(dist_grad_sync *s) {
  for (int b = 0; b < s->nbuckets && s->nactive > 0; b++) {
    gs_bucket *bk = &s->buckets[b];
    if (bk->started && !bk->done) CHECK_CALL(bucket_test(s, bk));
  }
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
      if (s->seen[k]) continue;
      s->seen[k] = 1;
      int b = s->range_bucket[k];
      if (--s->buckets[b].pending == 0) record(s, bucket_start(s, b));
    }
  }
  if (s->err == 0) record(s, progress(s));
}

static void reset_step(dist_grad_sync *s) {
  memset(s->seen, 0, (size_t)s->nranges);
  for (int b = 0; b < s->nbuckets; b++) {
    s->buckets[b].pending = s->buckets[b].n;
    s->buckets[b].started = s->buckets[b].done = 0;
  }
}

static void unpack(dist_grad_sync *s, const gs_bucket *b) {
  const float *p = b->pack;
  for (int k = b->lo; k < b->lo + b->n; k++) {
    memcpy(s->grads + s->ranges[k].off, p, s->ranges[k].len * sizeof(float));
    p += s->ranges[k].len;
  }
}

/* Every rank starts the remaining buckets, then waits for them in index
 * order. A bucket's exchange depends only on its own messages and every rank
 * posts them while waiting for it, so the waits cannot deadlock. */
static int finish(dist_grad_sync *s) {
  CHECK_CALL(s->err);
  for (int b = 0; b < s->nbuckets; b++)
    if (!s->buckets[b].started) CHECK_CALL(bucket_start(s, b));
  double t0 = MPI_Wtime();
  int rc = 0;
  for (int b = 0; b < s->nbuckets && rc == 0; b++)
    if (!s->buckets[b].done) rc = bucket_wait(s, &s->buckets[b]);
  s->wait_s += MPI_Wtime() - t0;
  CHECK_CALL(rc);
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

void dist_grad_sync_set_alg(dist_grad_sync *s, dist_sync_alg alg) {
  s->hd = alg == DIST_SYNC_AUTO && s->hd_ok;
}
