/* Losses behind nn/loss.h: softmax cross-entropy (label smoothing, per-row
 * weights, ignored rows), binary cross-entropy with logits, squared error,
 * and argmax. Sums are accumulated in double; the result is divided by the
 * caller's norm so that per-rank partial losses add up to the global one. */
#include "loss.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* One list feeds both the table and the count check, so a name missing for a
 * new enum value fails the build instead of leaving a NULL in the table. */
#define LOSS_NAMES {"xent", "bce", "mse"}
const char *const nn_loss_names[NN_LOSS_COUNT] = LOSS_NAMES;
_Static_assert(sizeof((const char *const[])LOSS_NAMES) / sizeof(const char *) == NN_LOSS_COUNT,
               "nn_loss_names needs exactly one name per nn_loss_kind");

int nn_loss_from_name(const char *s) {
  if (!s) return -1;
  for (int i = 0; i < NN_LOSS_COUNT; i++)
    if (strcmp(s, nn_loss_names[i]) == 0) return i;
  return -1;
}

/* 1/norm, with norm <= 0 meaning "nothing to normalise over" (e.g. a global
 * batch without a labelled row): the loss and gradient are then 0 rather
 * than NaN, which would poison the allreduced gradient on every rank. */
static double inv_norm(double norm) { return norm > 0 ? 1.0 / norm : 0.0; }

static double row_weight(const float *weights, int i) { return weights ? (double)weights[i] : 1.0; }

/* Labels must be in [0,K) or equal ignore_index; the caller (dataset
 * loading) validates them against the head's class count. A label outside
 * that range is never used as an index: its row gets a zero gradient and
 * makes the returned loss NaN, so the non-finite-loss check of the training
 * loop reports it instead of it silently training on garbage. */
double nn_loss_xent(const float *logits, const int32_t *labels, const float *weights,
                    int B, int K, float smoothing, int ignore_index, double norm,
                    float *dlogits) {
  const double inv = inv_norm(norm);
  const double s = smoothing, off = s / K, on = 1.0 - s + off;
  double total = 0.0;
  for (int i = 0; i < B; i++) {
    const float *z = logits + (size_t)i * K;
    float *dz = dlogits ? dlogits + (size_t)i * K : NULL;
    const int32_t y = labels[i];
    if (y == ignore_index || y < 0 || y >= K) {
      if (dz) memset(dz, 0, sizeof(float) * (size_t)K);
      if (y != ignore_index) total = NAN;
      continue;
    }
    float zmax = z[0];
    for (int k = 1; k < K; k++) zmax = z[k] > zmax ? z[k] : zmax;
    double sumexp = 0.0, zsum = 0.0;
    for (int k = 0; k < K; k++) {
      sumexp += exp((double)z[k] - zmax);
      zsum += z[k];
    }
    const double lse = zmax + log(sumexp);
    /* sum_k t_k (lse - z_k) with t = off everywhere plus (on - off) at y,
     * and sum_k t_k = 1. */
    const double row = lse - off * zsum - (on - off) * (double)z[y];
    const double w = row_weight(weights, i);
    total += w * row;
    if (dz) {
      const double scale = w * inv;
      for (int k = 0; k < K; k++) {
        const double p = exp((double)z[k] - lse);
        dz[k] = (float)(scale * (p - (k == y ? on : off)));
      }
    }
  }
  return total * inv;
}

/* Stable log(1 + exp(z)) - z*t = max(z,0) - z*t + log1p(exp(-|z|)); its
 * derivative is sigmoid(z) - t, with sigmoid evaluated without overflow. */
double nn_loss_bce(const float *logits, const float *targets, const float *weights,
                   int B, int K, double norm, float *dlogits) {
  const double inv = inv_norm(norm);
  double total = 0.0;
  for (int i = 0; i < B; i++) {
    const float *z = logits + (size_t)i * K;
    const float *t = targets + (size_t)i * K;
    const double w = row_weight(weights, i);
    double row = 0.0;
    for (int k = 0; k < K; k++) {
      const double zk = z[k], e = exp(-fabs(zk));
      row += (zk > 0 ? zk : 0.0) - zk * t[k] + log1p(e);
      if (dlogits) {
        const double sig = zk >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        dlogits[(size_t)i * K + k] = (float)(w * inv * (sig - t[k]));
      }
    }
    total += w * row;
  }
  return total * inv;
}

double nn_loss_mse(const float *pred, const float *targets, const float *weights,
                   int B, int K, double norm, float *dlogits) {
  const double inv = inv_norm(norm);
  double total = 0.0;
  for (int i = 0; i < B; i++) {
    const float *y = pred + (size_t)i * K;
    const float *t = targets + (size_t)i * K;
    const double w = row_weight(weights, i);
    double row = 0.0;
    for (int k = 0; k < K; k++) {
      const double d = (double)y[k] - t[k];
      row += d * d;
      if (dlogits) dlogits[(size_t)i * K + k] = (float)(2.0 * w * inv * d);
    }
    total += w * row;
  }
  return total * inv;
}

/* Ties go to the lowest index. */
void nn_argmax(const float *logits, int B, int K, int32_t *out) {
  for (int i = 0; i < B; i++) {
    const float *z = logits + (size_t)i * K;
    int32_t best = 0;
    for (int k = 1; k < K; k++)
      if (z[k] > z[best]) best = k;
    out[i] = best;
  }
}
