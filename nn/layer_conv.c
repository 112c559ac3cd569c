/* 2-D convolution on [c][B][h][w] activations as im2col + cblas_sgemm over
 * the batch: col [(ci,kh,kw)][B*oh*ow], y [out][B*oh*ow] = W·col + b.
 *
 * The batch is processed in chunks of whole samples whose col block fits in
 * the L2 cache (CONV_CHUNK_FLOATS): im2col, sgemm and the bias add then run
 * on cached data, and no B-sized col matrix ever goes to memory. aux holds
 * one chunk's col block; backward recomputes it (cheap, cached) rather than
 * keeping the whole matrix, and reuses the same buffer for dcol = Wᵀ·dy
 * before col2im. A 1x1 stride-1 unpadded conv needs no col at all: x is
 * already [c][B*h*w]. */
#include <cblas.h>
#include <string.h>

#include "layer_ops.h"

/* Target floats of one chunk's col block (~512 KiB, half of a 1 MiB L2). */
#ifndef CONV_CHUNK_FLOATS
#define CONV_CHUNK_FLOATS ((size_t)1 << 17)
#endif

typedef struct {
  int C, H, W, O, OH, OW, k, s, pad;
  int K;          /* C*k*k: rows of col */
  size_t hw, ohw; /* plane sizes */
} conv_dims;

static conv_dims dims_of(const nn_layer *L) {
  conv_dims d = {.C = L->in.c, .H = L->in.h, .W = L->in.w, .O = L->out.c, .OH = L->out.h,
                 .OW = L->out.w, .k = L->spec.k, .s = L->spec.stride, .pad = L->spec.pad};
  d.K = d.C * d.k * d.k;
  d.hw = (size_t)d.H * d.W;
  d.ohw = (size_t)d.OH * d.OW;
  return d;
}

static int is_pointwise(const nn_layer *L) {
  return L->spec.k == 1 && L->spec.stride == 1 && L->spec.pad == 0;
}

/* Samples per chunk at batch B (monotone in B, so a workspace bound at
 * max_batch serves any smaller batch). */
static int chunk_samples(const conv_dims *d, int B) {
  size_t per = (size_t)d->K * d->ohw;
  size_t nb = CONV_CHUNK_FLOATS / per;
  if (nb < 1) nb = 1;
  return nb < (size_t)B ? (int)nb : B;
}

/* The zero-padded plane im2col reads from: (H+2pad) x (W+2pad), plus slack
 * for the 8-float block reads of the last rows. */
static size_t padded_floats(const conv_dims *d) {
  return nn_al16((size_t)(d->H + 2 * d->pad) * (d->W + 2 * d->pad) + 8);
}

size_t nn_conv_aux_floats(const nn_layer *L, int B) {
  if (is_pointwise(L)) return 0;
  conv_dims d = dims_of(L);
  return nn_al16((size_t)d.K * (size_t)chunk_samples(&d, B) * d.ohw) + padded_floats(&d);
}

/* The padded plane sits at the end of aux, after the col block sized for
 * the bound batch. */
static float *pad_plane(const nn_layer *L, const conv_dims *d) {
  return L->aux + L->aux_len - padded_floats(d);
}

/* Outputs o in [*lo, *hi) read input o*s - pad + kk inside [0, n). */
static void valid_range(int n, int nout, int s, int pad, int kk, int *lo, int *hi) {
  int a = pad - kk, b = n - 1 + pad - kk;
  int l = a > 0 ? (a + s - 1) / s : 0;
  int h = b < 0 ? 0 : b / s + 1;
  if (h > nout) h = nout;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

/* Copies 8*nblk floats; the caller tolerates the overshoot past its row. */
static inline void copy_blocks(float *dst, const float *src, int nblk) {
  for (int j = 0; j < nblk; j++) memcpy(dst + 8 * j, src + 8 * j, 8 * sizeof *dst);
}

/* col[K][nb*ohw] for samples b0 .. b0+nb of x [C][B][H][W]. Each input
 * plane is first copied into the zero-padded plane P, so a col row is a
 * plain (strided) copy with no bounds tests. With stride 1 and OW >= 8 each
 * output row is copied as whole 8-float blocks: the overshoot (< 8 floats)
 * lands in the next output row, which is written right after; the last row
 * of each plane is copied exactly. */
static void im2col(const conv_dims *d, const float *x, int B, int b0, int nb,
                   float *restrict col, float *restrict P) {
  const int Wp = d->W + 2 * d->pad, OW = d->OW, OH = d->OH, s = d->s, k = d->k;
  const size_t nc = (size_t)nb * d->ohw;
  const int nblk = s == 1 && OW >= 8 ? (OW + 7) / 8 : 0;
  memset(P, 0, padded_floats(d) * sizeof *P);
  for (int ci = 0; ci < d->C; ci++) {
    for (int bi = 0; bi < nb; bi++) {
      const float *xp = x + ((size_t)ci * B + b0 + bi) * d->hw;
      for (int iy = 0; iy < d->H; iy++)
        memcpy(P + (size_t)(iy + d->pad) * Wp + d->pad, xp + (size_t)iy * d->W,
               (size_t)d->W * sizeof *P);
      for (int kh = 0; kh < k; kh++)
        for (int kw = 0; kw < k; kw++) {
          const float *src = P + (size_t)kh * Wp + kw;
          float *dst = col + ((size_t)(ci * k + kh) * k + kw) * nc + (size_t)bi * d->ohw;
          int oy = 0;
          if (nblk)
            for (; oy < OH - 1; oy++) copy_blocks(dst + (size_t)oy * OW, src + (size_t)oy * Wp, nblk);
          for (; oy < OH; oy++) {
            const float *restrict sr = src + (size_t)oy * s * Wp;
            float *restrict dr = dst + (size_t)oy * OW;
            for (int ox = 0; ox < OW; ox++) dr[ox] = sr[ox * s];
          }
        }
    }
  }
}

/* dx[C][B][H][W] (samples b0 .. b0+nb) += or = the col2im of dcol. */
static void col2im(const conv_dims *d, const float *restrict dcol, int B, int b0, int nb,
                   float *restrict dx, int acc) {
  const int OW = d->OW, s = d->s;
  const size_t nc = (size_t)nb * d->ohw;
  for (int ci = 0; ci < d->C; ci++) {
    for (int bi = 0; bi < nb; bi++) {
      float *dp = dx + ((size_t)ci * B + b0 + bi) * d->hw;
      if (!acc) memset(dp, 0, d->hw * sizeof *dp);
      for (int kh = 0; kh < d->k; kh++) {
        int oy0, oy1;
        valid_range(d->H, d->OH, s, d->pad, kh, &oy0, &oy1);
        for (int kw = 0; kw < d->k; kw++) {
          int ox0, ox1;
          valid_range(d->W, OW, s, d->pad, kw, &ox0, &ox1);
          const int len = ox1 - ox0, ix0 = ox0 * s - d->pad + kw;
          const float *row = dcol + ((size_t)(ci * d->k + kh) * d->k + kw) * nc +
                             (size_t)bi * d->ohw + ox0;
          for (int oy = oy0; oy < oy1; oy++) {
            float *restrict dr = dp + (size_t)(oy * s - d->pad + kh) * d->W + ix0;
            const float *restrict rr = row + (size_t)oy * OW;
            if (s == 1)
              for (int j = 0; j < len; j++) dr[j] += rr[j];
            else
              for (int j = 0; j < len; j++) dr[j * s] += rr[j];
          }
        }
      }
    }
  }
}

/* y[o][j] += b[o] over columns [c0, c0+nc) of rows of length N. */
static void add_bias(float *y, const float *b, int O, size_t N, size_t c0, size_t nc) {
  for (int o = 0; o < O; o++) {
    float *restrict yo = y + (size_t)o * N + c0;
    const float bo = b[o];
    for (size_t j = 0; j < nc; j++) yo[j] += bo;
  }
}

/* Sum of a[0..n) with 16 independent partial sums (vectorisable). */
static float sum_f(const float *restrict a, size_t n) {
  float acc[16] = {0};
  size_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; l++) acc[l] += a[j + l];
  float t = 0.0f;
  for (; j < n; j++) t += a[j];
  for (int l = 0; l < 16; l++) t += acc[l];
  return t;
}

/* db[o] += sum over columns [c0, c0+nc) of dy row o. */
static void add_bias_grad(float *db, const float *dy, int O, size_t N, size_t c0, size_t nc) {
  for (int o = 0; o < O; o++) db[o] += sum_f(dy + (size_t)o * N + c0, nc);
}

void nn_conv_forward(nn_layer *L, const float *x, int B) {
  conv_dims d = dims_of(L);
  const size_t N = (size_t)B * d.ohw;
  if (is_pointwise(L)) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d.O, (int)N, d.C, 1.0f, L->W, d.C, x,
                (int)N, 0.0f, L->y, (int)N);
    if (L->b) add_bias(L->y, L->b, d.O, N, 0, N);
    return;
  }
  const int nb = chunk_samples(&d, B);
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = nb < B - b0 ? nb : B - b0;
    const size_t nc = (size_t)n * d.ohw, c0 = (size_t)b0 * d.ohw;
    im2col(&d, x, B, b0, n, L->aux, pad_plane(L, &d));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d.O, (int)nc, d.K, 1.0f, L->W, d.K,
                L->aux, (int)nc, 0.0f, L->y + c0, (int)N);
    if (L->b) add_bias(L->y, L->b, d.O, N, c0, nc);
  }
}

void nn_conv_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B, int acc_dx) {
  const int train = !L->frozen;
  if (!train && !dx) return;
  conv_dims d = dims_of(L);
  const size_t N = (size_t)B * d.ohw;
  if (is_pointwise(L)) {
    if (train) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d.O, d.C, (int)N, 1.0f, dy, (int)N, x,
                  (int)N, 1.0f, L->dW, d.C);
      if (L->db) add_bias_grad(L->db, dy, d.O, N, 0, N);
    }
    if (dx)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d.C, (int)N, d.O, 1.0f, L->W, d.C, dy,
                  (int)N, acc_dx ? 1.0f : 0.0f, dx, (int)N);
    return;
  }
  const int nb = chunk_samples(&d, B);
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = nb < B - b0 ? nb : B - b0;
    const size_t nc = (size_t)n * d.ohw, c0 = (size_t)b0 * d.ohw;
    if (train) {
      im2col(&d, x, B, b0, n, L->aux, pad_plane(L, &d));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d.O, d.K, (int)nc, 1.0f, dy + c0,
                  (int)N, L->aux, (int)nc, 1.0f, L->dW, d.K);
      if (L->db) add_bias_grad(L->db, dy, d.O, N, c0, nc);
    }
    if (dx) {
      /* dcol overwrites this chunk's col, which dW has already consumed. */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d.K, (int)nc, d.O, 1.0f, L->W, d.K,
                  dy + c0, (int)N, 0.0f, L->aux, (int)nc);
      col2im(&d, L->aux, B, b0, n, dx, acc_dx);
    }
  }
}
