/* Seeded random numbers. Two kinds:
 *  - a counter-based hash (nn_hash64, nn_urand) for anything that must not
 *    depend on how work is split: dropout masks and augmentations are keyed by
 *    (seed, step, global sample id, element), so 1, 2 or 4 ranks draw the same;
 *  - a small sequential generator (nn_rng, xoshiro256**) for set-up work done
 *    identically on every rank (initialisation, shuffles of index lists).
 * Both are pure functions of their inputs: no hidden global state. */
#ifndef FERRY_NN_RNG_H
#define FERRY_NN_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } nn_rng;

/* splitmix64-style finaliser of a 64-bit word. */
static inline uint64_t nn_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Hash of a key and a counter, used as a stateless random stream. */
static inline uint64_t nn_hash64(uint64_t key, uint64_t ctr) {
  return nn_mix64(key ^ nn_mix64(ctr + 0x632be59bd9b4e019ULL));
}

/* Uniform float in [0, 1) from 24 high bits. */
static inline float nn_u01(uint64_t h) { return (float)(h >> 40) * (1.0f / 16777216.0f); }
static inline float nn_urand(uint64_t key, uint64_t ctr) { return nn_u01(nn_hash64(key, ctr)); }

/* Derive a sub-key from a key and a tag (e.g. a layer index or purpose). */
static inline uint64_t nn_key(uint64_t key, uint64_t tag) { return nn_hash64(key, tag ^ 0xa5a5a5a5a5a5a5a5ULL); }
/* 64-bit hash of n bytes (8 bytes per round, then mixed): fast enough to
 * checksum every parameter often. Equal bytes give equal hashes on every
 * machine of the same endianness. */
uint64_t nn_hash_bytes(const void *p, size_t n);
/* Hash of a string, for keys derived from names (FNV-1a then mixed). */
uint64_t nn_hash_str(const char *s);

void nn_rng_seed(nn_rng *r, uint64_t seed);
uint64_t nn_rng_next(nn_rng *r);
/* Uniform in [0, 1), double precision (53 bits). */
double nn_rng_uniform(nn_rng *r);
/* Standard normal by Box-Muller (one value per call, no cached state). */
double nn_rng_normal(nn_rng *r);
/* Uniform integer in [0, n), unbiased (Lemire). n > 0. */
uint32_t nn_rng_below(nn_rng *r, uint32_t n);
/* Fisher-Yates shuffle of idx[0..n). */
void nn_rng_shuffle(nn_rng *r, int32_t *idx, int64_t n);
/* Standard normal from a stateless key/counter (Box-Muller on two hashes). */
float nn_normal_at(uint64_t key, uint64_t ctr);

#endif
