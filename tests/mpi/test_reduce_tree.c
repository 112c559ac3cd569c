/* Deterministic tree reduction (dist/grad_sync.h): on N ranks, local subtree
 * sums plus the butterfly must give the same bits as the full tree computed on
 * one rank, and that tree must differ from a plain sequential sum (else this
 * test could not tell the two apart). Also the rank-count checks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "mpi_report.h"
#include "nn/err.h"
#include "nn/rng.h"
#include "../unit/check.h"

enum { MAX_SHARDS = 16 };

/* Identical on every rank: wide magnitudes and both signs, so that the order
 * of additions changes the rounding. */
static float **make_shards(int m, size_t n, uint64_t seed) {
  nn_rng r;
  nn_rng_seed(&r, seed);
  float **sh = malloc((size_t)m * sizeof *sh);
  for (int j = 0; j < m; j++) {
    sh[j] = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
      sh[j][i] = (float)(nn_rng_normal(&r) * pow(10.0, 6.0 * nn_rng_uniform(&r) - 3.0));
  }
  return sh;
}

static void free_shards(float **sh, int m) {
  for (int j = 0; j < m; j++) free(sh[j]);
  free(sh);
}

/* The tree written out by hand, to pin its shape independently of the code. */
static float tree_by_hand(float *const *g, int m, size_t i) {
  if (m == 4) return (g[0][i] + g[1][i]) + (g[2][i] + g[3][i]);
  if (m == 8)
    return ((g[0][i] + g[1][i]) + (g[2][i] + g[3][i])) +
           ((g[4][i] + g[5][i]) + (g[6][i] + g[7][i]));
  return NAN;
}

static void test_local_tree(void) {
  size_t n = 1000;
  for (int m = 4; m <= 8; m *= 2) {
    float **sh = make_shards(m, n, 11 + (uint64_t)m);
    float *out = malloc(n * sizeof *out);
    CHECK(dist_reduce_tree_local(sh, m, out, n) == 0);
    int same = 1;
    for (size_t i = 0; i < n; i++) {
      float h = tree_by_hand(sh, m, i);
      same &= memcmp(&h, &out[i], sizeof h) == 0;
    }
    CHECK_MSG(same, "M=%d: local tree differs from the hand-written tree", m);
    /* In place into shards[0]. */
    CHECK(dist_reduce_tree_local(sh, m, sh[0], n) == 0);
    CHECK(memcmp(sh[0], out, n * sizeof *out) == 0);
    free(out);
    free_shards(sh, m);
  }
  float **sh = make_shards(3, 10, 5);
  float out[10];
  CHECK(dist_reduce_tree_local(sh, 1, out, 10) == 0);
  CHECK(memcmp(out, sh[0], sizeof out) == 0);
  CHECK(dist_reduce_tree_local(sh, 1, sh[0], 10) == 0);
  CHECK(dist_reduce_tree_local(sh, 3, out, 10) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "power of two") != NULL);
  ferry_err_clear();
  CHECK(dist_reduce_tree_local(sh, 0, out, 10) == FERRY_EUSER);
  ferry_err_clear();
  free_shards(sh, 3);
}

/* M shards; this rank sums its M/N, the butterfly finishes: bitwise equal to
 * the full local tree. */
static void check_ranks_vs_one(const dist_comm *c, int m, size_t n, uint64_t seed) {
  float **sh = make_shards(m, n, seed);
  float *ref = malloc((n ? n : 1) * sizeof *ref), *tmp = malloc((n ? n : 1) * sizeof *tmp);
  CHECK(dist_reduce_tree_local(sh, m, ref, n) == 0);
  int first = -1, count = 0;
  int rc = dist_tree_shards(c, m, &first, &count);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  if (rc == 0) {
    CHECK(count * c->size == m && first == c->rank * count);
    /* Sum in place into this rank's first shard, as a trainer would. */
    float *buf = sh[first];
    CHECK(dist_reduce_tree_local(sh + first, count, buf, n) == 0);
    rc = dist_allreduce_tree(c, buf, n, tmp);
    CHECK_MSG(rc == 0, "%s", ferry_err_msg());
    CHECK_MSG(memcmp(buf, ref, n * sizeof *buf) == 0,
              "rank %d of %d, M=%d, n=%zu: butterfly result differs from the 1-rank tree",
              c->rank, c->size, m, n);
  }
  free(ref);
  free(tmp);
  free_shards(sh, m);
}

/* The tree is not the sequential sum: otherwise the bitwise test above could
 * pass with a reduction that ignores the prescribed order. */
static void test_tree_is_not_sequential(void) {
  int m = 4;
  size_t n = 10007;
  float **sh = make_shards(m, n, 99);
  float *tree = malloc(n * sizeof *tree);
  CHECK(dist_reduce_tree_local(sh, m, tree, n) == 0);
  size_t differ = 0;
  for (size_t i = 0; i < n; i++) {
    float seq = ((sh[0][i] + sh[1][i]) + sh[2][i]) + sh[3][i];
    differ += memcmp(&seq, &tree[i], sizeof seq) != 0;
  }
  CHECK_MSG(differ > 0, "tree sum equals the sequential sum on all %zu elements", n);
  free(tree);
  free_shards(sh, m);
}

static void test_bad_rank_counts(const dist_comm *c) {
  float buf[4] = {1, 2, 3, 4}, tmp[4];
  int first, count;
  /* A 3-rank description: rejected before any communication. */
  dist_comm three = {MPI_COMM_SELF, 0, 3};
  CHECK(dist_allreduce_tree(&three, buf, 4, tmp) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "power-of-two") != NULL);
  ferry_err_clear();
  CHECK(dist_tree_shards(&three, 4, &first, &count) == FERRY_EUSER);
  ferry_err_clear();
  CHECK(dist_tree_shards(c, 6, &first, &count) == FERRY_EUSER);
  ferry_err_clear();
  if (c->size > 1) {
    CHECK(dist_tree_shards(c, c->size / 2, &first, &count) == FERRY_EUSER); /* N > M */
    ferry_err_clear();
  }
  /* Run on 3 ranks: the world itself is refused on every rank. */
  if (c->size & (c->size - 1)) {
    CHECK(dist_allreduce_tree(c, buf, 4, tmp) == FERRY_EUSER);
    ferry_err_clear();
    CHECK(dist_tree_shards(c, 4, &first, &count) == FERRY_EUSER);
    ferry_err_clear();
  }
  /* A real 3-rank communicator: every member gets FERRY_EUSER, nobody hangs. */
  if (c->size >= 3) {
    MPI_Comm sub;
    MPI_Comm_split(c->comm, c->rank < 3 ? 0 : MPI_UNDEFINED, c->rank, &sub);
    if (sub != MPI_COMM_NULL) {
      dist_comm s3;
      dist_comm_wrap(&s3, sub);
      CHECK(s3.size == 3);
      CHECK(dist_allreduce_tree(&s3, buf, 4, tmp) == FERRY_EUSER);
      ferry_err_clear();
      CHECK(dist_tree_shards(&s3, 4, &first, &count) == FERRY_EUSER);
      ferry_err_clear();
      MPI_Comm_free(&sub);
    }
  }
}

int main(int argc, char **argv) {
  dist_comm c;
  if (dist_init(&argc, &argv, &c) != 0) return 1;
  test_local_tree();
  test_tree_is_not_sequential();
  if ((c.size & (c.size - 1)) == 0) {
    for (int m = c.size > 4 ? c.size : 4; m <= MAX_SHARDS; m *= 2) {
      check_ranks_vs_one(&c, m, 10007, 1000 + (uint64_t)m); /* not a multiple of the block */
      check_ranks_vs_one(&c, m, 1, 2000 + (uint64_t)m);
      check_ranks_vs_one(&c, m, 0, 3000);
    }
  }
  test_bad_rank_counts(&c);
  int rc = mpi_check_report(c.comm);
  dist_finalize();
  return rc;
}
