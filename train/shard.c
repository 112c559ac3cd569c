/* Fixed logical shards and their per-epoch order (train/shard.h). */
#include "train/shard.h"

#include <stdlib.h>
#include <string.h>

#include "nn/err.h"
#include "nn/rng.h"

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

int train_shards_init(train_shards *s, int64_t n, int M, int B, uint64_t seed) {
  memset(s, 0, sizeof *s);
  CHECK_USER(M >= 1, "train.shards must be at least 1, found %d", M);
  CHECK_USER(B >= M,
             "train.batch (%d) must be at least train.shards (%d): every global batch takes "
             "rows from every shard; lower train.shards",
             B, M);
  CHECK_USER(n >= M, "data.train: %lld samples cannot fill %d shards; lower train.shards",
             (long long)n, M);
  s->M = M;
  s->B = B;
  s->n = n;
  s->start = malloc((size_t)(M + 1) * sizeof *s->start);
  s->members = malloc((size_t)n * sizeof *s->members);
  s->order = malloc((size_t)n * sizeof *s->order);
  s->take = malloc((size_t)M * sizeof *s->take);
  if (!s->start || !s->members || !s->order || !s->take) {
    train_shards_free(s);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory for the shard tables of %lld samples", (long long)n);
  }
  for (int64_t i = 0; i < n; i++) s->members[i] = (int32_t)i;
  nn_rng r;
  nn_rng_seed(&r, nn_key(seed, 0x5a4dULL));
  nn_rng_shuffle(&r, s->members, n);
  s->steps_per_epoch = INT64_MAX;
  for (int m = 0; m <= M; m++) s->start[m] = n * m / M;
  for (int m = 0; m < M; m++) {
    /* A shard's content is what the seed decides; its order is what the
     * epoch decides, so members are kept in file order. */
    int64_t cnt = s->start[m + 1] - s->start[m];
    qsort(s->members + s->start[m], (size_t)cnt, sizeof(int32_t), cmp_i32);
    s->take[m] = (int)((int64_t)B * (m + 1) / M - (int64_t)B * m / M);
    int64_t spe = cnt / s->take[m];
    if (spe < s->steps_per_epoch) s->steps_per_epoch = spe;
  }
  if (s->steps_per_epoch < 1) {
    train_shards_free(s);
    FERRY_FAIL(FERRY_EUSER, "data.train: %lld samples are fewer than one global batch of %d",
               (long long)n, B);
  }
  memcpy(s->order, s->members, (size_t)n * sizeof *s->order);
  return 0;
}

void train_shards_free(train_shards *s) {
  free(s->start);
  free(s->members);
  free(s->order);
  free(s->take);
  memset(s, 0, sizeof *s);
}

void train_shards_epoch(train_shards *s, uint64_t seed, int epoch) {
  memcpy(s->order, s->members, (size_t)s->n * sizeof *s->order);
  for (int m = 0; m < s->M; m++) {
    nn_rng r;
    nn_rng_seed(&r, nn_hash64(nn_key(seed, (uint64_t)epoch), (uint64_t)m));
    nn_rng_shuffle(&r, s->order + s->start[m], s->start[m + 1] - s->start[m]);
  }
}
