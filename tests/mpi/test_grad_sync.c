/* Bucketed gradient sync (dist/grad_sync.h) against MPI_Allreduce of the whole
 * slab: random ranges with some left out as frozen (those must keep this rank's
 * own bits), several bucket sizes, several reporting patterns, disabled sync.
 * Values are multiples of 1/16 below 2^10 so every summation order is exact
 * and results can be compared bitwise. */
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "mpi_report.h"
#include "nn/err.h"
#include "nn/rng.h"
#include "../unit/check.h"

enum { MAX_RANGES = 64 };

typedef struct {
  size_t slab;                 /* floats in the slab */
  int n;                       /* all ranges, trainable or not */
  dist_range all[MAX_RANGES];
  int frozen[MAX_RANGES];
  int ntrain;
  dist_range train[MAX_RANGES];
  size_t min_len, max_len, train_floats;
} layout;

/* The same layout on every rank: random lengths, gaps of 0..15 floats (0 gives
 * adjacent ranges, reduced in place), about a third frozen. */
static void make_layout(layout *L, uint64_t seed, int n) {
  nn_rng r;
  nn_rng_seed(&r, seed);
  memset(L, 0, sizeof *L);
  L->n = n;
  L->min_len = (size_t)-1;
  size_t off = nn_rng_below(&r, 4);
  for (int i = 0; i < n; i++) {
    size_t len = 1 + nn_rng_below(&r, i % 5 == 0 ? 6000 : 700);
    L->all[i] = (dist_range){off, len};
    L->frozen[i] = nn_rng_below(&r, 3) == 0;
    if (!L->frozen[i]) {
      L->train[L->ntrain++] = L->all[i];
      L->train_floats += len;
      if (len < L->min_len) L->min_len = len;
      if (len > L->max_len) L->max_len = len;
    }
    off += len + (nn_rng_below(&r, 2) ? 0 : nn_rng_below(&r, 16));
  }
  L->slab = off + 5;
}

static void fill(float *g, size_t n, uint64_t seed, int rank, int step) {
  nn_rng r;
  nn_rng_seed(&r, seed * 1000003u + (uint64_t)rank * 7919u + (uint64_t)step);
  for (size_t i = 0; i < n; i++) g[i] = ((float)nn_rng_below(&r, 2049) - 1024.0f) / 16.0f;
}

/* What the slab must hold after a sync: the sum over ranks on trainable
 * ranges, this rank's own values everywhere else. */
static void expected(const layout *L, const float *own, float *want, MPI_Comm comm) {
  float *sum = malloc(L->slab * sizeof *sum);
  MPI_Allreduce(own, sum, (int)L->slab, MPI_FLOAT, MPI_SUM, comm);
  memcpy(want, own, L->slab * sizeof *want);
  for (int i = 0; i < L->ntrain; i++)
    memcpy(want + L->train[i].off, sum + L->train[i].off, L->train[i].len * sizeof *want);
  free(sum);
}

typedef enum {
  REPORT_REVERSE,  /* last range first, len==0 calls interleaved, frozen as (0,0) */
  REPORT_FROZEN,   /* reverse, and frozen ranges reported by their own extent */
  REPORT_HALF,     /* only the last half: finish starts the rest */
  REPORT_NONE,     /* finish alone */
  REPORT_SPAN,     /* one report covering the whole slab */
  REPORT_FORWARD,  /* first range first: buckets start out of order */
  REPORT_TWICE,    /* every range twice */
  REPORT_PARTIAL,  /* each report one float short: nothing starts before finish */
  REPORT_COUNT
} report_mode;

static const char *const report_names[REPORT_COUNT] = {
    "reverse", "frozen", "half", "none", "span", "forward", "twice", "partial"};

static void report_one(dist_grad_sync *s, const layout *L, int i, report_mode mode, nn_rng *r) {
  if (nn_rng_below(r, 2)) dist_grad_sync_ready(s, 0, 0);
  const dist_range *a = &L->all[i];
  if (L->frozen[i] && mode != REPORT_FROZEN)
    dist_grad_sync_ready(s, 0, 0);
  else if (mode == REPORT_PARTIAL)
    dist_grad_sync_ready(s, a->off, a->len - 1);
  else
    dist_grad_sync_ready(s, a->off, a->len);
  if (mode == REPORT_TWICE) dist_grad_sync_ready(s, a->off, a->len);
}

/* One backward-like pass of reports; the random interleaving is seeded
 * identically on every rank, as all ranks must report in the same order. */
static void report(dist_grad_sync *s, const layout *L, report_mode mode, uint64_t seed) {
  nn_rng r;
  nn_rng_seed(&r, seed);
  switch (mode) {
  case REPORT_NONE: break;
  case REPORT_SPAN: dist_grad_sync_ready(s, 0, L->slab); break;
  case REPORT_FORWARD:
    for (int i = 0; i < L->n; i++) report_one(s, L, i, mode, &r);
    break;
  case REPORT_HALF:
    for (int i = L->n - 1; i >= L->n / 2; i--) report_one(s, L, i, mode, &r);
    break;
  default:
    for (int i = L->n - 1; i >= 0; i--) report_one(s, L, i, mode, &r);
  }
  for (int k = 0; k < 3; k++) dist_grad_sync_ready(s, 0, 0);
}

/* Buckets must start during the reports, not only in finish (that is the
 * overlap): the byte counter grows when a bucket starts. */
static void check_started(const dist_comm *c, const layout *L, report_mode mode, size_t bytes) {
  size_t all = c->size > 1 ? L->train_floats * sizeof(float) : 0;
  switch (mode) {
  case REPORT_NONE:
  case REPORT_PARTIAL:
    CHECK_MSG(bytes == 0, "mode %s started %zu bytes", report_names[mode], bytes);
    break;
  case REPORT_HALF: CHECK_MSG(bytes < all || all == 0, "half started everything"); break;
  default:
    CHECK_MSG(bytes == all, "mode %s started %zu of %zu bytes before finish", report_names[mode],
              bytes, all);
  }
}

/* Runs steps with every reporting mode on one synchroniser; checks bits. */
static void check_bucket_size(const dist_comm *c, const layout *L, size_t bucket_bytes,
                              int want_buckets, dist_sync_alg alg) {
  float *g = malloc(L->slab * sizeof *g), *own = malloc(L->slab * sizeof *own);
  float *want = malloc(L->slab * sizeof *want);
  dist_grad_sync *s = NULL;
  int rc = dist_grad_sync_new(&s, c, g, L->train, L->ntrain, bucket_bytes);
  CHECK_MSG(rc == 0, "new: %s", ferry_err_msg());
  if (rc) goto out;
  dist_grad_sync_set_alg(s, alg);
  int nb = 0;
  dist_grad_sync_stats(s, NULL, NULL, &nb);
  if (want_buckets > 0)
    CHECK_MSG(nb == want_buckets, "bucket %zu B: %d buckets, want %d", bucket_bytes, nb,
              want_buckets);
  for (int step = 0; step < 2 * REPORT_COUNT; step++) {
    report_mode mode = (report_mode)(step % REPORT_COUNT);
    fill(own, L->slab, bucket_bytes, c->rank, step);
    memcpy(g, own, L->slab * sizeof *g);
    expected(L, own, want, c->comm);
    size_t before = 0, started = 0;
    dist_grad_sync_stats(s, NULL, &before, NULL);
    report(s, L, mode, (uint64_t)step);
    dist_grad_sync_stats(s, NULL, &started, NULL);
    check_started(c, L, mode, started - before);
    rc = dist_grad_sync_finish(s);
    CHECK_MSG(rc == 0, "finish: %s", ferry_err_msg());
    CHECK_MSG(memcmp(g, want, L->slab * sizeof *g) == 0,
              "rank %d, bucket %zu B, alg %d, mode %s: slab differs from the expected sum",
              c->rank, bucket_bytes, (int)alg, report_names[mode]);
    int frozen_ok = 1;
    for (int i = 0; i < L->n; i++)
      if (L->frozen[i])
        frozen_ok &= memcmp(g + L->all[i].off, own + L->all[i].off,
                            L->all[i].len * sizeof *g) == 0;
    CHECK_MSG(frozen_ok, "rank %d, mode %s: a frozen range was touched", c->rank,
              report_names[mode]);
  }
  size_t bytes = 0;
  dist_grad_sync_stats(s, NULL, &bytes, NULL);
  size_t want_bytes = c->size > 1 ? 2 * REPORT_COUNT * L->train_floats * sizeof(float) : 0;
  CHECK_MSG(bytes == want_bytes, "bytes %zu, want %zu", bytes, want_bytes);
out:
  dist_grad_sync_free(&s);
  CHECK(s == NULL);
  free(g);
  free(own);
  free(want);
}

static void test_bucket_sizes(const dist_comm *c) {
  layout L;
  make_layout(&L, 42, 40);
  CHECK(L.ntrain > 4 && L.ntrain < L.n);
  for (int a = 0; a < 2; a++) {
    dist_sync_alg alg = a ? DIST_SYNC_MPI : DIST_SYNC_AUTO;
    check_bucket_size(c, &L, 4, L.ntrain, alg); /* smaller than every range */
    check_bucket_size(c, &L, L.min_len * sizeof(float), 0, alg);
    check_bucket_size(c, &L, L.max_len * sizeof(float), 0, alg);
    check_bucket_size(c, &L, 16 << 10, 0, alg);
    check_bucket_size(c, &L, (size_t)1 << 40, 1, alg); /* larger than everything */
    check_bucket_size(c, &L, L.train_floats * sizeof(float), 1, alg);
    check_bucket_size(c, &L, L.train_floats * sizeof(float) - 1, 2, alg);
  }
}

/* All ranges adjacent (no frozen, no gaps): one bucket reduced in place. */
static void test_adjacent(const dist_comm *c) {
  layout L;
  memset(&L, 0, sizeof L);
  size_t off = 0;
  for (int i = 0; i < 10; i++) {
    L.all[i] = L.train[i] = (dist_range){off, 100 + 37 * (size_t)i};
    off += L.all[i].len;
    L.train_floats += L.all[i].len;
  }
  L.n = L.ntrain = 10;
  L.slab = off;
  L.min_len = 100;
  L.max_len = 433;
  check_bucket_size(c, &L, (size_t)1 << 30, 1, DIST_SYNC_AUTO);
  check_bucket_size(c, &L, 2000, 0, DIST_SYNC_AUTO);
  check_bucket_size(c, &L, 2000, 0, DIST_SYNC_MPI);
}

/* Packing and exchange areas above 2 MiB take the huge-page allocation path. */
static void test_large(const dist_comm *c) {
  layout L;
  memset(&L, 0, sizeof L);
  size_t off = 3;
  for (int i = 0; i < 3; i++) {
    L.all[i] = L.train[i] = (dist_range){off, 400000 + 1001 * (size_t)i};
    off += L.all[i].len + 7;
    L.train_floats += L.all[i].len;
  }
  L.n = L.ntrain = 3;
  L.slab = off;
  L.min_len = L.all[0].len;
  L.max_len = L.all[2].len;
  check_bucket_size(c, &L, (size_t)1 << 30, 1, DIST_SYNC_AUTO);
  check_bucket_size(c, &L, (size_t)1 << 30, 1, DIST_SYNC_MPI);
}

static void test_disabled(const dist_comm *c) {
  layout L;
  make_layout(&L, 7, 20);
  float *g = malloc(L.slab * sizeof *g), *own = malloc(L.slab * sizeof *own);
  float *want = malloc(L.slab * sizeof *want);
  dist_grad_sync *s = NULL;
  CHECK(dist_grad_sync_new(&s, c, g, L.train, L.ntrain, 8 << 10) == 0);
  dist_grad_sync_set_enabled(s, 0);
  fill(own, L.slab, 7, c->rank, 0);
  memcpy(g, own, L.slab * sizeof *g);
  report(s, &L, REPORT_REVERSE, 1);
  CHECK(dist_grad_sync_finish(s) == 0);
  CHECK_MSG(memcmp(g, own, L.slab * sizeof *g) == 0, "rank %d: disabled sync changed grads",
            c->rank);
  size_t bytes = 1;
  double wait = 1;
  dist_grad_sync_stats(s, &wait, &bytes, NULL);
  CHECK(bytes == 0 && wait == 0);
  /* Enabled again, the next step syncs. */
  dist_grad_sync_set_enabled(s, 1);
  expected(&L, own, want, c->comm);
  report(s, &L, REPORT_REVERSE, 2);
  CHECK(dist_grad_sync_finish(s) == 0);
  CHECK_MSG(memcmp(g, want, L.slab * sizeof *g) == 0, "rank %d: re-enabled sync wrong", c->rank);
  dist_grad_sync_free(&s);
  free(g);
  free(own);
  free(want);
}

static void test_user_errors(const dist_comm *c) {
  float g[64];
  dist_grad_sync *s = (dist_grad_sync *)1;
  dist_range overlap[2] = {{0, 10}, {9, 5}};
  CHECK(dist_grad_sync_new(&s, c, g, overlap, 2, 1024) == FERRY_EUSER);
  CHECK(s == NULL);
  CHECK(strstr(ferry_err_msg(), "ascending") != NULL);
  ferry_err_clear();
  dist_range backwards[2] = {{20, 10}, {0, 5}};
  CHECK(dist_grad_sync_new(&s, c, g, backwards, 2, 1024) == FERRY_EUSER);
  ferry_err_clear();
  dist_range ok[1] = {{0, 10}};
  CHECK(dist_grad_sync_new(&s, c, g, ok, 1, 0) == FERRY_EUSER);
  ferry_err_clear();
  /* No ranges at all: a valid no-op. */
  CHECK(dist_grad_sync_new(&s, c, g, NULL, 0, 1024) == 0);
  dist_grad_sync_ready(s, 0, 64);
  CHECK(dist_grad_sync_finish(s) == 0);
  dist_grad_sync_free(&s);
  dist_grad_sync_free(&s); /* NULL-safe */
}

int main(int argc, char **argv) {
  dist_comm c;
  if (dist_init(&argc, &argv, &c) != 0) return 1;
  test_user_errors(&c);
  test_bucket_sizes(&c);
  test_adjacent(&c);
  test_large(&c);
  test_disabled(&c);
  int rc = mpi_check_report(c.comm);
  dist_finalize();
  return rc;
}
