/* Group normalisation: per sample, each group of c/G channels is normalised
 * over (its channels x h x w) with eps 1e-5, then scaled and shifted per
 * channel by gamma/beta. Works on spatial [c][B][h][w] (a sample's channel
 * plane is contiguous, planes of one sample are B*h*w apart) and on flat
 * [B][c] (h = w = 1). aux keeps mean and rstd per (sample, group). */
#include <math.h>

#include "layer_ops.h"

#define GN_EPS 1e-5

typedef struct {
  int C, G, cg;
  size_t hw, cs, bs; /* element (c, b, s) is at c*cs + b*bs + s */
} gn_dims;

/* Plane reductions with 8 partial sums, so that they vectorise (a float sum
 * in one accumulator cannot be reordered by the compiler). */
static float plane_sum(const float *restrict a, size_t n) {
  float acc[8] = {0};
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) acc[l] += a[j + l];
  float t = 0.0f;
  for (; j < n; j++) t += a[j];
  for (int l = 0; l < 8; l++) t += acc[l];
  return t;
}

static float plane_sqdev(const float *restrict a, size_t n, float m) {
  float acc[8] = {0};
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) acc[l] += (a[j + l] - m) * (a[j + l] - m);
  float t = 0.0f;
  for (; j < n; j++) t += (a[j] - m) * (a[j] - m);
  for (int l = 0; l < 8; l++) t += acc[l];
  return t;
}

/* *sg = sum g, *sgx = sum g*(x - m) */
static void plane_sums2(const float *restrict g, const float *restrict x, size_t n, float m,
                        float *sg, float *sgx) {
  float a1[8] = {0}, a2[8] = {0};
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) {
      a1[l] += g[j + l];
      a2[l] += g[j + l] * (x[j + l] - m);
    }
  float t1 = 0.0f, t2 = 0.0f;
  for (; j < n; j++) {
    t1 += g[j];
    t2 += g[j] * (x[j] - m);
  }
  for (int l = 0; l < 8; l++) {
    t1 += a1[l];
    t2 += a2[l];
  }
  *sg = t1;
  *sgx = t2;
}

static gn_dims gn_dims_of(const nn_layer *L, int B) {
  gn_dims d = {.C = L->in.c, .G = L->spec.groups};
  d.cg = d.C / d.G;
  d.hw = (size_t)L->in.h * L->in.w;
  d.cs = L->in_spatial ? (size_t)B * d.hw : 1;
  d.bs = L->in_spatial ? d.hw : (size_t)d.C;
  return d;
}

void nn_groupnorm_forward(nn_layer *L, const float *x, int B) {
  gn_dims d = gn_dims_of(L, B);
  float *mean_s = L->aux, *rstd_s = L->aux + (size_t)B * d.G;
  const double n = (double)d.cg * (double)d.hw;
  for (int b = 0; b < B; b++)
    for (int g = 0; g < d.G; g++) {
      const size_t base = (size_t)b * d.bs;
      double s = 0.0;
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++) s += plane_sum(x + base + (size_t)c * d.cs, d.hw);
      const float mean = (float)(s / n);
      double v = 0.0;
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++)
        v += plane_sqdev(x + base + (size_t)c * d.cs, d.hw, mean);
      const float rstd = (float)(1.0 / sqrt(v / n + GN_EPS));
      mean_s[b * d.G + g] = mean;
      rstd_s[b * d.G + g] = rstd;
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++) {
        const float *restrict xp = x + base + (size_t)c * d.cs;
        float *restrict yp = L->y + base + (size_t)c * d.cs;
        const float a = L->W[c] * rstd, sh = L->b[c] - mean * a;
        for (size_t j = 0; j < d.hw; j++) yp[j] = xp[j] * a + sh;
      }
    }
}

/* With xh = (x - mean)*rstd and g = gamma*dy over one (sample, group):
 * dx = rstd * (g - mean(g) - xh * mean(g*xh)). */
void nn_groupnorm_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B) {
  const int train = !L->frozen;
  if (!train && !dx) return;
  gn_dims d = gn_dims_of(L, B);
  const float *mean_s = L->aux, *rstd_s = L->aux + (size_t)B * d.G;
  const double n = (double)d.cg * (double)d.hw;
  for (int b = 0; b < B; b++)
    for (int g = 0; g < d.G; g++) {
      const size_t base = (size_t)b * d.bs;
      const float mean = mean_s[b * d.G + g], rstd = rstd_s[b * d.G + g];
      double m1 = 0.0, m2 = 0.0;
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++) {
        float sdy, sdyx;
        plane_sums2(dy + base + (size_t)c * d.cs, x + base + (size_t)c * d.cs, d.hw, mean, &sdy,
                    &sdyx);
        sdyx *= rstd;
        if (train) {
          L->db[c] += sdy;
          L->dW[c] += sdyx;
        }
        m1 += (double)L->W[c] * sdy;
        m2 += (double)L->W[c] * sdyx;
      }
      if (!dx) continue;
      const float a1 = (float)(m1 / n), a2 = (float)(m2 / n);
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++) {
        const float *restrict xp = x + base + (size_t)c * d.cs;
        const float *restrict gp = dy + base + (size_t)c * d.cs;
        float *restrict dp = dx + base + (size_t)c * d.cs;
        const float gm = L->W[c];
        for (size_t j = 0; j < d.hw; j++) {
          float xh = (xp[j] - mean) * rstd;
          dp[j] = rstd * (gm * gp[j] - a1 - xh * a2);
        }
      }
    }
}
