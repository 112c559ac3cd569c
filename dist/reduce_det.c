/* Deterministic gradient reduction (dist/grad_sync.h): a balanced binary tree
 * over micro-shards, summed partly on each rank and finished by a fixed-pairing
 * butterfly across ranks, so the bits do not depend on the number of ranks.
 * Every addition is written out explicitly (left operand first); the build
 * uses ISO C mode without -ffast-math, so the compiler may not reassociate. */
#include "grad_sync.h"

#include <limits.h>
#include <string.h>

#include "dist/comm.h"
#include "nn/err.h"

enum {
  TREE_BLOCK = 256,     /* floats per block of the local tree (fits in L1) */
  TREE_MAX_LEVELS = 30, /* nshards up to 2^30 */
  TREE_TAG = 0x7fe1     /* point-to-point tag of the butterfly */
};

static int is_pow2(long x) { return x > 0 && (x & (x - 1)) == 0; }

/* out[i] = x[i] + y[i]; out may alias x or y. Blocks of 8 are loaded before
 * they are stored, so -O2 emits vector adds without alias checks; every
 * element is still one IEEE addition with x as the left operand. */
static void add_vec(float *out, const float *x, const float *y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float t[8];
    for (int j = 0; j < 8; j++) t[j] = x[i + j] + y[i + j];
    for (int j = 0; j < 8; j++) out[i + j] = t[j];
  }
  for (; i < n; i++) out[i] = x[i] + y[i];
}

int dist_tree_shards(const dist_comm *c, int nshards_total, int *first, int *count) {
  CHECK_USER(is_pow2(nshards_total),
             "deterministic reduction: the number of micro-shards must be a power of two, got %d",
             nshards_total);
  CHECK_USER(is_pow2(c->size) && c->size <= nshards_total,
             "deterministic reduction: the number of ranks must be a power of two that divides "
             "the %d micro-shards, got %d ranks",
             nshards_total, c->size);
  *count = nshards_total / c->size;
  *first = c->rank * *count;
  return 0;
}

/* One block: leaves are summed in pairs, then merged up like a binary
 * counter; st[l] holds the pending left subtree at level l. */
static void tree_block(float *const *shards, int nshards, size_t i0, size_t m, float *out,
                       float st[][TREE_BLOCK]) {
  float v[TREE_BLOCK];
  for (int j = 0; j < nshards; j += 2) {
    add_vec(v, shards[j] + i0, shards[j + 1] + i0, m);
    int lvl = 1;
    for (int p = j >> 1; p & 1; p >>= 1, lvl++) add_vec(v, st[lvl], v, m);
    memcpy(st[lvl], v, m * sizeof(float));
  }
  /* The root is the last merge; out may alias shards[0], which is no longer read. */
  memcpy(out + i0, v, m * sizeof(float));
}

int dist_reduce_tree_local(float *const *shards, int nshards, float *out, size_t n) {
  CHECK_USER(is_pow2(nshards) && nshards <= (1 << TREE_MAX_LEVELS),
             "tree reduction: the number of shards must be a power of two, got %d", nshards);
  if (nshards == 1) {
    if (out != shards[0]) memmove(out, shards[0], n * sizeof(float));
    return 0;
  }
  float st[TREE_MAX_LEVELS + 1][TREE_BLOCK];
  for (size_t i0 = 0; i0 < n; i0 += TREE_BLOCK) {
    size_t m = n - i0 < TREE_BLOCK ? n - i0 : TREE_BLOCK;
    tree_block(shards, nshards, i0, m, out, st);
  }
  return 0;
}

/* Exchanges buf with partner into tmp, in pieces of at most INT_MAX floats. */
static int exchange(const dist_comm *c, int partner, const float *buf, float *tmp, size_t n) {
  for (size_t at = 0; at < n;) {
    int k = n - at > (size_t)INT_MAX ? INT_MAX : (int)(n - at);
    CHECK_CALL(dist_mpi_check(MPI_Sendrecv(buf + at, k, MPI_FLOAT, partner, TREE_TAG, tmp + at, k,
                                      MPI_FLOAT, partner, TREE_TAG, c->comm, MPI_STATUS_IGNORE),
                         "MPI_Sendrecv (deterministic reduction)"));
    at += (size_t)k;
  }
  return 0;
}

int dist_allreduce_tree(const dist_comm *c, float *buf, size_t n, float *tmp) {
  CHECK_USER(is_pow2(c->size),
             "deterministic reduction needs a power-of-two number of ranks (1, 2, 4, ...), "
             "got %d",
             c->size);
  for (int bit = 1; bit < c->size; bit <<= 1) {
    int partner = c->rank ^ bit;
    CHECK_CALL(exchange(c, partner, buf, tmp, n));
    /* Both partners compute lower + higher: identical operands, identical bits. */
    if (c->rank < partner)
      add_vec(buf, buf, tmp, n);
    else
      add_vec(buf, tmp, buf, n);
  }
  return 0;
}
