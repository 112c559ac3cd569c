/* The global sample order of data-parallel training, a function of (seed,
 * epoch, M) only. The training set is split once into M fixed logical shards
 * (a seeded assignment); every epoch each shard is reshuffled, and global
 * batch b takes rows [b*c_m, (b+1)*c_m) of every shard m's order, where
 * c_m = B*(m+1)/M - B*m/M. Rank r of N owns shards [r*M/N, (r+1)*M/N) and
 * keeps only their samples. Every rank knows every shard's order and labels
 * (8 bytes a sample), so the global batch's labelled count is local work. */
#ifndef FERRY_TRAIN_SHARD_H
#define FERRY_TRAIN_SHARD_H

#include <stdint.h>

typedef struct {
  int M, B;            /* shards, global batch */
  int64_t n;           /* training samples */
  int64_t *start;      /* [M+1]: shard m holds members[start[m] .. start[m+1]) */
  int32_t *members;    /* [n] training row indices, grouped by shard */
  int32_t *order;      /* [n] this epoch's order within each shard (same grouping) */
  int *take;           /* [M] rows shard m contributes to every global batch */
  int64_t steps_per_epoch;
} train_shards;

/* Assigns n rows to M shards with seed; B >= M (else FERRY_EUSER). */
int train_shards_init(train_shards *s, int64_t n, int M, int B, uint64_t seed);
void train_shards_free(train_shards *s);
/* Reshuffles every shard for epoch (1-based). Not collective: every rank
 * computes the same order. */
void train_shards_epoch(train_shards *s, uint64_t seed, int epoch);
/* Rows of shard m in global batch b: order + start[m] + b*take[m], take[m] rows. */
static inline const int32_t *train_shards_rows(const train_shards *s, int m, int64_t b) {
  return s->order + s->start[m] + b * s->take[m];
}

#endif
