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
#define CONV_CHUNK_FLOATS ((size_t)1 << 17)

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

size_t nn_conv_aux_floats(const nn_layer *L, int B) {
  if (is_pointwise(L)) return 0;
  conv_dims d = dims_of(L);
  return (size_t)d.K * (size_t)chunk_samples(&d, B) * d.ohw;
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

/* col[K][nb*ohw] for samples b0 .. b0+nb of x [C][B][H][W]. */
static void im2col(const conv_dims *d, const float *restrict x, int B, int b0, int nb,
                   float *restrict col) {
  const int OW = d->OW, s = d->s;
  const size_t nc = (size_t)nb * d->ohw;
  for (int ci = 0; ci < d->C; ci++) {
    for (int kh = 0; kh < d->k; kh++) {
      int oy0, oy1;
      valid_range(d->H, d->OH, s, d->pad, kh, &oy0, &oy1);
      for (int kw = 0; kw < d->k; kw++) {
        int ox0, ox1;
        valid_range(d->W, OW, s, d->pad, kw, &ox0, &ox1);
        const int len = ox1 - ox0, ix0 = ox0 * s - d->pad + kw;
        float *row = col + ((size_t)(ci * d->k + kh) * d->k + kw) * nc;
        for (int bi = 0; bi < nb; bi++) {
          const float *xp = x + ((size_t)ci * B + b0 + bi) * d->hw;
          float *r = row + (size_t)bi * d->ohw;
          memset(r, 0, (size_t)oy0 * OW * sizeof *r);
          for (int oy = oy0; oy < oy1; oy++) {
            const float *restrict xs = xp + (size_t)(oy * s - d->pad + kh) * d->W + ix0;
            float *restrict rr = r + (size_t)oy * OW;
            for (int ox = 0; ox < ox0; ox++) rr[ox] = 0.0f;
            if (s == 1)
              for (int j = 0; j < len; j++) rr[ox0 + j] = xs[j];
            else
              for (int j = 0; j < len; j++) rr[ox0 + j] = xs[j * s];
            for (int ox = ox1; ox < OW; ox++) rr[ox] = 0.0f;
          }
          memset(r + (size_t)oy1 * OW, 0, (size_t)(d->OH - oy1) * OW * sizeof *r);
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
    im2col(&d, x, B, b0, n, L->aux);
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
      im2col(&d, x, B, b0, n, L->aux);
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
