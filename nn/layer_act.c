/* Elementwise layers (relu, gelu, tanh, sigmoid, gradient reversal), inverted
 * dropout with a mask keyed by global sample id, and flatten. Elementwise ops
 * do not care about the layout and keep it; dropout and flatten do. */
#include <math.h>
#include <string.h>

#include "layer_ops.h"
#include "rng.h"

#define GELU_S 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

void nn_act_forward(nn_layer *L, const float *restrict x, int B) {
  const size_t n = (size_t)B * nn_shape_numel(L->in);
  float *restrict y = L->y;
  switch (L->spec.op) {
  case NN_RELU:
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    break;
  case NN_GELU:
    for (size_t i = 0; i < n; i++) {
      float v = x[i];
      y[i] = 0.5f * v * (1.0f + tanhf(GELU_S * (v + GELU_A * v * v * v)));
    }
    break;
  case NN_TANH:
    for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
    break;
  case NN_SIGMOID:
    for (size_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
    break;
  case NN_GRL:
    memcpy(y, x, n * sizeof *y);
    break;
  default:
    break;
  }
}

/* ReLU, tanh and sigmoid differentiate through y; GELU recomputes from x. */
void nn_act_backward(nn_layer *L, const float *restrict x, const float *restrict dy,
                     float *restrict dx, int B) {
  const size_t n = (size_t)B * nn_shape_numel(L->in);
  const float *restrict y = L->y;
  switch (L->spec.op) {
  case NN_RELU:
    for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    break;
  case NN_GELU:
    for (size_t i = 0; i < n; i++) {
      float v = x[i], t = tanhf(GELU_S * (v + GELU_A * v * v * v));
      float du = GELU_S * (1.0f + 3.0f * GELU_A * v * v);
      dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
    break;
  case NN_TANH:
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
    break;
  case NN_SIGMOID:
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
    break;
  case NN_GRL: {
    const float s = -L->spec.lambda;
    for (size_t i = 0; i < n; i++) dx[i] = s * dy[i];
    break;
  }
  default:
    break;
  }
}

/* Mask element j (index in the sample's (c, h, w) order) of the sample with
 * global id is kept iff nn_urand(key, id*numel + j) >= p, so a sample's mask
 * depends on (step key, layer name, id) only, never on its row or rank. */
void nn_dropout_forward(nn_layer *L, const float *x, const nn_pass *p) {
  const int B = p->B;
  const size_t numel = nn_shape_numel(L->in);
  const float prob = L->spec.p;
  if (!p->training || prob == 0.0f) {
    memcpy(L->y, x, (size_t)B * numel * sizeof *x);
    return;
  }
  const uint64_t key = nn_key(p->key, nn_hash_str(L->spec.name));
  const float scale = 1.0f / (1.0f - prob);
  /* element (c, b, s) lives at c*cs + b*bs + s in either layout */
  const int C = L->in.c;
  const size_t hw = (size_t)L->in.h * L->in.w;
  const size_t cs = L->in_spatial ? (size_t)B * hw : 1, bs = L->in_spatial ? hw : (size_t)C;
  for (int b = 0; b < B; b++) {
    const uint64_t id = (uint64_t)(p->ids ? p->ids[b] : b);
    for (int c = 0; c < C; c++) {
      const size_t o = (size_t)c * cs + (size_t)b * bs;
      const uint64_t ctr = id * numel + (uint64_t)c * hw;
      for (size_t s = 0; s < hw; s++) {
        float m = nn_urand(key, ctr + s) >= prob ? scale : 0.0f;
        L->aux[o + s] = m;
        L->y[o + s] = x[o + s] * m;
      }
    }
  }
}

void nn_dropout_backward(nn_layer *L, const float *restrict dy, float *restrict dx,
                         const nn_pass *p) {
  const size_t n = (size_t)p->B * nn_shape_numel(L->in);
  if (!p->training || L->spec.p == 0.0f) {
    memcpy(dx, dy, n * sizeof *dx);
    return;
  }
  const float *restrict m = L->aux;
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * m[i];
}

/* [c][B][h][w] -> [B][c*h*w]; a flat input is copied as is. */
void nn_flatten_forward(nn_layer *L, const float *x, int B) {
  const int C = L->in.c;
  const size_t hw = (size_t)L->in.h * L->in.w, n = (size_t)C * hw;
  if (!L->in_spatial || C == 1) {
    memcpy(L->y, x, (size_t)B * n * sizeof *x);
    return;
  }
  for (int c = 0; c < C; c++)
    for (int b = 0; b < B; b++)
      memcpy(L->y + (size_t)b * n + (size_t)c * hw, x + ((size_t)c * B + b) * hw, hw * sizeof *x);
}

void nn_flatten_backward(nn_layer *L, const float *dy, float *dx, int B) {
  const int C = L->in.c;
  const size_t hw = (size_t)L->in.h * L->in.w, n = (size_t)C * hw;
  if (!L->in_spatial || C == 1) {
    memcpy(dx, dy, (size_t)B * n * sizeof *dx);
    return;
  }
  for (int c = 0; c < C; c++)
    for (int b = 0; b < B; b++)
      memcpy(dx + ((size_t)c * B + b) * hw, dy + (size_t)b * n + (size_t)c * hw, hw * sizeof *dx);
}
