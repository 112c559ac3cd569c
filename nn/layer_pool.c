/* Pooling on [c][B][h][w] activations: max and average pooling (no padding)
 * and global average pooling to flat [B][c]. Every (channel, sample) plane
 * is contiguous, so all three work plane by plane. Maxpool keeps the argmax
 * (int32 plane index in aux) for backward; 2x2 stride-2 pooling, the common
 * case, has a vectorisable path that stores the window position instead. */
#include <stdint.h>
#include <string.h>

#include "layer_ops.h"

static int is_2x2(const nn_layer *L) { return L->spec.k == 2 && L->spec.stride == 2; }

/* The window position (0..3, row-major) is kept as a float so that the loop
 * has one element type and vectorises; ties go to the first position. */
static void maxpool2x2_forward(const float *restrict xp, float *restrict yp, float *restrict ap,
                               int W, int OH, int OW) {
  for (int oy = 0; oy < OH; oy++) {
    const float *restrict r0 = xp + (size_t)(2 * oy) * W, *restrict r1 = r0 + W;
    float *restrict yr = yp + (size_t)oy * OW, *restrict ar = ap + (size_t)oy * OW;
    for (int ox = 0; ox < OW; ox++) {
      float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
      float m01 = b > a ? b : a, m23 = d > c ? d : c;
      float i01 = b > a ? 1.0f : 0.0f, i23 = d > c ? 3.0f : 2.0f;
      yr[ox] = m23 > m01 ? m23 : m01;
      ar[ox] = m23 > m01 ? i23 : i01;
    }
  }
}

static void maxpool2x2_backward(const float *restrict gp, const float *restrict ap,
                                float *restrict dp, int H, int W, int OH, int OW) {
  for (int oy = 0; oy < OH; oy++) {
    float *restrict d0 = dp + (size_t)(2 * oy) * W, *restrict d1 = d0 + W;
    const float *restrict gr = gp + (size_t)oy * OW, *restrict ar = ap + (size_t)oy * OW;
    for (int ox = 0; ox < OW; ox++) {
      float g = gr[ox], i = ar[ox];
      d0[2 * ox] = i == 0.0f ? g : 0.0f;
      d0[2 * ox + 1] = i == 1.0f ? g : 0.0f;
      d1[2 * ox] = i == 2.0f ? g : 0.0f;
      d1[2 * ox + 1] = i == 3.0f ? g : 0.0f;
    }
    if (W & 1) d0[W - 1] = d1[W - 1] = 0.0f;
  }
  if (H & 1) memset(dp + (size_t)(H - 1) * W, 0, (size_t)W * sizeof *dp);
}

void nn_maxpool_forward(nn_layer *L, const float *x, int B) {
  const int W = L->in.w, OH = L->out.h, OW = L->out.w, k = L->spec.k, s = L->spec.stride;
  const size_t hw = (size_t)L->in.h * W, ohw = (size_t)OH * OW;
  const size_t planes = (size_t)L->in.c * B;
  int32_t *arg = (int32_t *)L->aux;
  for (size_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * hw;
    float *yp = L->y + pl * ohw;
    if (is_2x2(L)) {
      maxpool2x2_forward(xp, yp, L->aux + pl * ohw, W, OH, OW);
      continue;
    }
    int32_t *ap = arg + pl * ohw;
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        int bi = oy * s * W + ox * s;
        float best = xp[bi];
        for (int kh = 0; kh < k; kh++)
          for (int kw = 0; kw < k; kw++) {
            int i = (oy * s + kh) * W + ox * s + kw;
            if (xp[i] > best) {
              best = xp[i];
              bi = i;
            }
          }
        yp[oy * OW + ox] = best;
        ap[oy * OW + ox] = bi;
      }
  }
}

void nn_maxpool_backward(nn_layer *L, const float *dy, float *dx, int B) {
  const int H = L->in.h, W = L->in.w, OH = L->out.h, OW = L->out.w;
  const size_t hw = (size_t)H * W, ohw = (size_t)OH * OW;
  const size_t planes = (size_t)L->in.c * B;
  const int32_t *arg = (const int32_t *)L->aux;
  for (size_t pl = 0; pl < planes; pl++) {
    const float *gp = dy + pl * ohw;
    float *dp = dx + pl * hw;
    if (is_2x2(L)) {
      maxpool2x2_backward(gp, L->aux + pl * ohw, dp, H, W, OH, OW);
      continue;
    }
    const int32_t *ap = arg + pl * ohw;
    memset(dp, 0, hw * sizeof *dp);
    for (size_t j = 0; j < ohw; j++) dp[ap[j]] += gp[j];
  }
}

void nn_avgpool_forward(nn_layer *L, const float *x, int B) {
  const int W = L->in.w, OH = L->out.h, OW = L->out.w, k = L->spec.k, s = L->spec.stride;
  const size_t hw = (size_t)L->in.h * W, ohw = (size_t)OH * OW;
  const size_t planes = (size_t)L->in.c * B;
  const float scale = 1.0f / (float)(k * k);
  for (size_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * hw;
    float *yp = L->y + pl * ohw;
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        float t = 0.0f;
        for (int kh = 0; kh < k; kh++) {
          const float *xr = xp + (size_t)(oy * s + kh) * W + ox * s;
          for (int kw = 0; kw < k; kw++) t += xr[kw];
        }
        yp[oy * OW + ox] = t * scale;
      }
  }
}

void nn_avgpool_backward(nn_layer *L, const float *dy, float *dx, int B) {
  const int W = L->in.w, OH = L->out.h, OW = L->out.w, k = L->spec.k, s = L->spec.stride;
  const size_t hw = (size_t)L->in.h * W, ohw = (size_t)OH * OW;
  const size_t planes = (size_t)L->in.c * B;
  const float scale = 1.0f / (float)(k * k);
  for (size_t pl = 0; pl < planes; pl++) {
    const float *gp = dy + pl * ohw;
    float *dp = dx + pl * hw;
    memset(dp, 0, hw * sizeof *dp);
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        float g = gp[oy * OW + ox] * scale;
        for (int kh = 0; kh < k; kh++) {
          float *dr = dp + (size_t)(oy * s + kh) * W + ox * s;
          for (int kw = 0; kw < k; kw++) dr[kw] += g;
        }
      }
  }
}

/* y[b][c] = mean of plane (c, b). */
void nn_gap_forward(nn_layer *L, const float *x, int B) {
  const int C = L->in.c;
  const size_t hw = (size_t)L->in.h * L->in.w;
  const float scale = 1.0f / (float)hw;
  for (int c = 0; c < C; c++)
    for (int b = 0; b < B; b++) {
      const float *restrict xp = x + ((size_t)c * B + b) * hw;
      float acc[8] = {0};
      size_t j = 0;
      for (; j + 8 <= hw; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += xp[j + l];
      float t = 0.0f;
      for (; j < hw; j++) t += xp[j];
      for (int l = 0; l < 8; l++) t += acc[l];
      L->y[(size_t)b * C + c] = t * scale;
    }
}

void nn_gap_backward(nn_layer *L, const float *dy, float *dx, int B) {
  const int C = L->in.c;
  const size_t hw = (size_t)L->in.h * L->in.w;
  const float scale = 1.0f / (float)hw;
  for (int c = 0; c < C; c++)
    for (int b = 0; b < B; b++) {
      float *restrict dp = dx + ((size_t)c * B + b) * hw;
      const float g = dy[(size_t)b * C + c] * scale;
      for (size_t j = 0; j < hw; j++) dp[j] = g;
    }
}
