/* xoshiro256** and helpers behind nn/rng.h. */
#include "rng.h"

#include <math.h>
#include <string.h>

uint64_t nn_hash_str(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return nn_mix64(h);
}

uint64_t nn_hash_bytes(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n, w;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    memcpy(&w, b + i, 8);
    h = (h ^ nn_mix64(w)) * 0xff51afd7ed558ccdULL;
  }
  w = 0;
  if (i < n) memcpy(&w, b + i, n - i);
  return nn_mix64(h ^ nn_mix64(w + n));
}

void nn_rng_seed(nn_rng *r, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) {
    x = nn_mix64(x + (uint64_t)i);
    r->s[i] = x;
  }
  if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3])) r->s[0] = 1;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t nn_rng_next(nn_rng *r) {
  uint64_t *s = r->s;
  uint64_t out = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

double nn_rng_uniform(nn_rng *r) { return (double)(nn_rng_next(r) >> 11) * 0x1.0p-53; }

double nn_rng_normal(nn_rng *r) {
  double u1 = nn_rng_uniform(r), u2 = nn_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint32_t nn_rng_below(nn_rng *r, uint32_t n) {
  uint64_t m = (uint64_t)(uint32_t)(nn_rng_next(r) >> 32) * n;
  uint32_t lo = (uint32_t)m;
  if (lo < n) {
    uint32_t thr = (uint32_t)(-n) % n;
    while (lo < thr) {
      m = (uint64_t)(uint32_t)(nn_rng_next(r) >> 32) * n;
      lo = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

void nn_rng_shuffle(nn_rng *r, int32_t *idx, int64_t n) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)nn_rng_below(r, (uint32_t)(i + 1));
    int32_t t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
}

float nn_normal_at(uint64_t key, uint64_t ctr) {
  uint64_t h1 = nn_hash64(key, 2 * ctr), h2 = nn_hash64(key, 2 * ctr + 1);
  double u1 = ((double)(h1 >> 11) + 1.0) * 0x1.0p-53;
  double u2 = (double)(h2 >> 11) * 0x1.0p-53;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
