/* Pooling on [c][B][h][w] activations: max and average pooling (no padding)
 * and global average pooling to flat [B][c]. Every (channel, sample) plane
 * is contiguous, so all three work plane by plane. Maxpool keeps the argmax
 * (int32 plane index in aux) for backward; 2x2 stride-2 pooling, the common
 * case, has a vectorisable path that stores the window position instead. */
#include <stdint.h>
#include <string.h>

#include "layer_ops.h"

static int is_2x2(const nn_layer *L) { return L->spec.k == 2 && L->spec.stride == 2; }

/* 2x2 stride-2 maxpool, row by row. The window position (0..3, row-major;
 * ties go to the first) is kept as a float so that each row loop has one
 * element type and vectorises. Output rows are short (7 or 14), so a row is
 * run to a multiple of 8 whenever the tensor extends that far: the extra
 * lanes read the following rows and write into outputs of the following
 * rows, which are computed (overwritten) afterwards. Only the tensor's last
 * rows take the exact length. */
static void pool2_fw_row(const float *restrict r0, const float *restrict r1, float *restrict yr,
                         float *restrict ar, int n) {
  for (int ox = 0; ox < n; ox++) {
    float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
    float m01 = b > a ? b : a, m23 = d > c ? d : c;
    float i01 = b > a ? 1.0f : 0.0f, i23 = d > c ? 3.0f : 2.0f;
    yr[ox] = m23 > m01 ? m23 : m01;
    ar[ox] = m23 > m01 ? i23 : i01;
  }
}

/* One input row of the backward: d[2ox + j] = g[ox] where the window's
 * position is c0 + j. */
static void pool2_bw_row(float *restrict d, const float *restrict g, const float *restrict ar,
                         int n, float c0, float c1) {
  for (int ox = 0; ox < n; ox++) {
    d[2 * ox] = ar[ox] == c0 ? g[ox] : 0.0f;
    d[2 * ox + 1] = ar[ox] == c1 ? g[ox] : 0.0f;
  }
}

static void maxpool2x2_forward(nn_layer *L, const float *x, int B) {
  const int H = L->in.h, W = L->in.w, OH = L->out.h, OW = L->out.w, OWr = (OW + 7) & ~7;
  const size_t hw = (size_t)H * W, ohw = (size_t)OH * OW, planes = (size_t)L->in.c * B;
  const size_t nin = planes * hw, nout = planes * ohw;
  for (size_t pl = 0; pl < planes; pl++)
    for (int oy = 0; oy < OH; oy++) {
      const size_t i0 = pl * hw + (size_t)(2 * oy) * W, o = pl * ohw + (size_t)oy * OW;
      const int n = i0 + W + 2 * (size_t)OWr <= nin && o + OWr <= nout ? OWr : OW;
      pool2_fw_row(x + i0, x + i0 + W, L->y + o, L->aux + o, n);
    }
}

static void maxpool2x2_backward(nn_layer *L, const float *dy, float *dx, int B) {
  const int H = L->in.h, W = L->in.w, OH = L->out.h, OW = L->out.w, OWr = (OW + 7) & ~7;
  const size_t hw = (size_t)H * W, ohw = (size_t)OH * OW, planes = (size_t)L->in.c * B;
  const size_t nin = planes * hw, nout = planes * ohw;
  for (size_t pl = 0; pl < planes; pl++) {
    for (int oy = 0; oy < OH; oy++) {
      const size_t i0 = pl * hw + (size_t)(2 * oy) * W, o = pl * ohw + (size_t)oy * OW;
      const int n = i0 + W + 2 * (size_t)OWr <= nin && o + OWr <= nout ? OWr : OW;
      pool2_bw_row(dx + i0, dy + o, L->aux + o, n, 0.0f, 1.0f);
      pool2_bw_row(dx + i0 + W, dy + o, L->aux + o, n, 2.0f, 3.0f);
      if (W & 1) dx[i0 + W - 1] = dx[i0 + 2 * (size_t)W - 1] = 0.0f;
    }
    if (H & 1) memset(dx + pl * hw + (size_t)(H - 1) * W, 0, (size_t)W * sizeof *dx);
  }
}

void nn_maxpool_forward(nn_layer *L, const float *x, int B) {
  const int W = L->in.w, OH = L->out.h, OW = L->out.w, k = L->spec.k, s = L->spec.stride;
  const size_t hw = (size_t)L->in.h * W, ohw = (size_t)OH * OW;
  const size_t planes = (size_t)L->in.c * B;
  if (is_2x2(L)) {
    maxpool2x2_forward(L, x, B);
    return;
  }
  int32_t *arg = (int32_t *)L->aux;
  for (size_t pl = 0; pl < planes; pl++) {
    const float *xp = x + pl * hw;
    float *yp = L->y + pl * ohw;
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
  if (is_2x2(L)) {
    maxpool2x2_backward(L, dy, dx, B);
    return;
  }
  const int32_t *arg = (const int32_t *)L->aux;
  for (size_t pl = 0; pl < planes; pl++) {
    const float *gp = dy + pl * ohw;
    float *dp = dx + pl * hw;
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
