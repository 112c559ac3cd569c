/* Dense (fully connected) layer on flat [B][in] activations, via cblas_sgemm:
 * y = x·Wᵀ + b, dW += dyᵀ·x, db += column sums of dy, dx = dy·W. */
#include <cblas.h>
#include <string.h>

#include "layer_ops.h"

void nn_dense_forward(nn_layer *L, const float *x, int B) {
  int in = L->in.c, out = L->out.c;
  float *y = L->y;
  float beta = 0.0f;
  if (L->b) {
    for (int r = 0; r < B; r++) memcpy(y + (size_t)r * out, L->b, (size_t)out * sizeof *y);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, out, in, 1.0f, x, in, L->W, in, beta, y,
              out);
}

void nn_dense_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B) {
  int in = L->in.c, out = L->out.c;
  if (!L->frozen) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, B, 1.0f, dy, out, x, in, 1.0f,
                L->dW, in);
    if (L->db) {
      float *restrict db = L->db;
      for (int r = 0; r < B; r++) {
        const float *restrict g = dy + (size_t)r * out;
        for (int o = 0; o < out; o++) db[o] += g[o];
      }
    }
  }
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, in, out, 1.0f, dy, out, L->W, in,
                0.0f, dx, in);
}
