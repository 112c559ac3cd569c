/* 2-D convolution on [c][B][h][w] activations as im2col + cblas_sgemm over
 * the batch: col [(ci,kh,kw)][B*oh*ow], y [out][B*oh*ow] = W·col + b.
 *
 * The batch is processed in chunks of whole samples whose col block fits in
 * the L2 cache (CONV_CHUNK_FLOATS): im2col, sgemm and the bias add then run
 * on cached data, and no B-sized col matrix ever goes to memory. aux holds
 * one chunk's col block and zero-padded copies of its input planes; backward
 * recomputes the col block (cheap, cached) rather than keeping the whole
 * matrix, and reuses the same buffer for dcol = Wᵀ·dy before col2im. A 1x1
 * stride-1 unpadded conv needs no col at all: x is already [c][B*h*w]. */
#include <cblas.h>
#include <string.h>

#include "layer_ops.h"

/* Target floats of one chunk's col block: 256 KiB, a quarter of a 1 MiB L2,
 * leaving room for sgemm's packed panels and the output block. Measured on
 * the cnn preset at B=128 (single-thread OpenBLAS): 2^16 beats 2^17 by 5%,
 * 2^20 is 20% slower and a whole-batch col ~70% slower. */
#define CONV_CHUNK_FLOATS ((size_t)1 << 16)

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

/* Floats of one zero-padded input plane, (H+2pad) x (W+2pad). */
static size_t plane_floats(const conv_dims *d) {
  return (size_t)(d->H + 2 * d->pad) * (d->W + 2 * d->pad);
}

/* aux = [col block of nb samples + 8 slack][nb padded planes + 8 slack]. The
 * slack absorbs the 8-float block copies' overshoot past the last row. */
static size_t col_floats(const conv_dims *d, int nb) {
  return nn_al16((size_t)d->K * (size_t)nb * d->ohw + 8);
}

static size_t planes_floats(const conv_dims *d, int nb) {
  return nn_al16((size_t)nb * plane_floats(d) + 8);
}

size_t nn_conv_aux_floats(const nn_layer *L, int B) {
  if (is_pointwise(L)) return 0;
  conv_dims d = dims_of(L);
  int nb = chunk_samples(&d, B);
  return col_floats(&d, nb) + planes_floats(&d, nb);
}

/* The padded planes follow the col block of a call's chunk size nb; both
 * grow with nb, so they fit in aux bound for any batch up to max_batch. */
static float *pad_planes(const nn_layer *L, const conv_dims *d, int nb) {
  return L->aux + col_floats(d, nb);
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

/* Copies 8*nblk floats: the caller lets the overshoot past its n floats
 * land where it writes next (or in slack). */
static inline void copy_blocks(float *dst, const float *src, int nblk) {
  for (int j = 0; j < nblk; j++) memcpy(dst + 8 * j, src + 8 * j, 8 * sizeof *dst);
}

/* Copies the H x W plane xp into the interior of the zero-padded plane pp.
 * Rows go as 8-float blocks when W >= 8; their overshoot into the padding is
 * zeroed again afterwards. The last row is copied exactly, so nothing is
 * read past the plane. */
static void fill_padded(const conv_dims *d, float *restrict pp, const float *restrict xp) {
  const int W = d->W, H = d->H, pad = d->pad, Wp = W + 2 * pad;
  const int nblk = W >= 8 ? (W + 7) / 8 : 0;
  for (int iy = 0; iy < H; iy++) {
    float *dst = pp + (size_t)(iy + pad) * Wp + pad;
    if (nblk && iy < H - 1)
      copy_blocks(dst, xp + (size_t)iy * W, nblk);
    else
      memcpy(dst, xp + (size_t)iy * W, (size_t)W * sizeof *dst);
  }
  if (!nblk || !pad) return;
  for (int iy = pad; iy < pad + H; iy++) {
    float *row = pp + (size_t)iy * Wp;
    for (int j = 0; j < pad; j++) row[j] = row[pad + W + j] = 0.0f;
  }
}

/* col[K][nb*ohw] for samples b0 .. b0+nb of x [C][B][H][W]. The samples'
 * planes of one input channel are first copied into zero-padded planes, so
 * a col row is a plain (strided) copy with no bounds tests. Col is written
 * in increasing address order, so with stride 1 and OW >= 8 each output row
 * goes as whole 8-float blocks: the overshoot (< 8 floats) lands in what is
 * written next, or in the col block's slack. */
static void im2col(const conv_dims *d, const float *x, int B, int b0, int nb,
                   float *restrict col, float *restrict P) {
  const int Wp = d->W + 2 * d->pad, OW = d->OW, OH = d->OH, s = d->s, k = d->k;
  const size_t nc = (size_t)nb * d->ohw, pl = plane_floats(d);
  const int nblk = s == 1 && OW >= 8 ? (OW + 7) / 8 : 0;
  memset(P, 0, ((size_t)nb * pl + 8) * sizeof *P);
  for (int ci = 0; ci < d->C; ci++) {
    for (int bi = 0; bi < nb; bi++)
      fill_padded(d, P + bi * pl, x + ((size_t)ci * B + b0 + bi) * d->hw);
    for (int kh = 0; kh < k; kh++)
      for (int kw = 0; kw < k; kw++) {
        float *dst = col + ((size_t)(ci * k + kh) * k + kw) * nc;
        for (int bi = 0; bi < nb; bi++, dst += d->ohw) {
          const float *src = P + bi * pl + (size_t)kh * Wp + kw;
          if (nblk) {
            for (int oy = 0; oy < OH; oy++)
              copy_blocks(dst + (size_t)oy * OW, src + (size_t)oy * Wp, nblk);
            continue;
          }
          for (int oy = 0; oy < OH; oy++) {
            const float *restrict sr = src + (size_t)oy * s * Wp;
            float *restrict dr = dst + (size_t)oy * OW;
            for (int ox = 0; ox < OW; ox++) dr[ox] = sr[ox * s];
          }
        }
      }
  }
}

/* dst[0..n) += src[0..n) in 8-float blocks; the last block is masked, so it
 * reads (never uses) up to 7 floats past src's end and rewrites up to 7
 * floats past dst's end with their own values. */
static inline void add_seg(float *restrict dst, const float *restrict src, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) dst[j + l] += src[j + l];
  if (j < n) {
    const int r = n - j;
    for (int l = 0; l < 8; l++) {
      float v = src[j + l];
      dst[j + l] += l < r ? v : 0.0f;
    }
  }
}

/* Strided case of col2im: scatter-add straight into dx with valid ranges. */
static void col2im_strided(const conv_dims *d, const float *restrict dcol, int B, int b0, int nb,
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
            for (int j = 0; j < len; j++) dr[j * s] += rr[j];
          }
        }
      }
    }
  }
}

/* dx[C][B][H][W] (samples b0 .. b0+nb) += or = the col2im of dcol. With
 * stride 1 each plane is accumulated in the zero-padded plane P, where every
 * col row segment is a whole output row (no bounds tests), then its interior
 * is moved to dx. dcol must be followed by >= 7 readable floats (slack). */
static void col2im(const conv_dims *d, const float *restrict dcol, int B, int b0, int nb,
                   float *restrict dx, int acc, float *restrict P) {
  if (d->s != 1) {
    col2im_strided(d, dcol, B, b0, nb, dx, acc);
    return;
  }
  const int Wp = d->W + 2 * d->pad, Hp = d->H + 2 * d->pad, OW = d->OW, k = d->k;
  const int nblkw = d->W >= 8 ? (d->W + 7) / 8 : 0;
  const size_t nc = (size_t)nb * d->ohw;
  for (int ci = 0; ci < d->C; ci++) {
    for (int bi = 0; bi < nb; bi++) {
      memset(P, 0, (size_t)Hp * Wp * sizeof *P);
      for (int kh = 0; kh < k; kh++)
        for (int kw = 0; kw < k; kw++) {
          const float *row = dcol + ((size_t)(ci * k + kh) * k + kw) * nc + (size_t)bi * d->ohw;
          float *base = P + (size_t)kh * Wp + kw;
          for (int oy = 0; oy < d->OH; oy++)
            add_seg(base + (size_t)oy * Wp, row + (size_t)oy * OW, OW);
        }
      float *dp = dx + ((size_t)ci * B + b0 + bi) * d->hw;
      for (int iy = 0; iy < d->H; iy++) {
        float *restrict dr = dp + (size_t)iy * d->W;
        const float *restrict pr = P + (size_t)(iy + d->pad) * Wp + d->pad;
        if (acc)
          for (int ix = 0; ix < d->W; ix++) dr[ix] += pr[ix];
        else if (nblkw && iy < d->H - 1) /* overshoot: into the next row */
          copy_blocks(dr, pr, nblkw);
        else
          memcpy(dr, pr, (size_t)d->W * sizeof *dr);
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
  float *P = pad_planes(L, &d, nb);
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = nb < B - b0 ? nb : B - b0;
    const size_t nc = (size_t)n * d.ohw, c0 = (size_t)b0 * d.ohw;
    im2col(&d, x, B, b0, n, L->aux, P);
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
  float *P = pad_planes(L, &d, nb);
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = nb < B - b0 ? nb : B - b0;
    const size_t nc = (size_t)n * d.ohw, c0 = (size_t)b0 * d.ohw;
    if (train) {
      im2col(&d, x, B, b0, n, L->aux, P);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d.O, d.K, (int)nc, 1.0f, dy + c0,
                  (int)N, L->aux, (int)nc, 1.0f, L->dW, d.K);
      if (L->db) add_bias_grad(L->db, dy, d.O, N, c0, nc);
    }
    if (dx) {
      /* dcol overwrites this chunk's col, which dW has already consumed. */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d.K, (int)nc, d.O, 1.0f, L->W, d.K,
                  dy + c0, (int)N, 0.0f, L->aux, (int)nc);
      col2im(&d, L->aux, B, b0, n, dx, acc_dx, P);
    }
  }
}
