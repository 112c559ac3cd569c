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
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++) {
        const float *restrict xp = x + base + (size_t)c * d.cs;
        float t = 0.0f;
        for (size_t j = 0; j < d.hw; j++) t += xp[j];
        s += t;
      }
      const float mean = (float)(s / n);
      double v = 0.0;
      for (int c = g * d.cg; c < (g + 1) * d.cg; c++) {
        const float *restrict xp = x + base + (size_t)c * d.cs;
        float t = 0.0f;
        for (size_t j = 0; j < d.hw; j++) t += (xp[j] - mean) * (xp[j] - mean);
        v += t;
      }
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
        const float *restrict xp = x + base + (size_t)c * d.cs;
        const float *restrict gp = dy + base + (size_t)c * d.cs;
        float sdy = 0.0f, sdyx = 0.0f;
        for (size_t j = 0; j < d.hw; j++) {
          sdy += gp[j];
          sdyx += gp[j] * (xp[j] - mean);
        }
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
