/* 2-D convolution on [c][B][h][w] activations, by one of two paths:
 *
 * Direct (stride 1, pad < k: the common case). No col matrix and no sgemm:
 * a 6x16 register tile (DT_P x DT_V) of sums whose 16 columns are channels
 * and whose 6 rows are pixels or weight rows; one step of its sum loads 16
 * packed values and broadcasts one scalar per row straight from zero-padded
 * planes (at row_base[j] + idx[i], through offset tables), so no operand is
 * ever expanded im2col-style. Results come out channel-minor and are
 * transposed into CNHW per block of pixels.
 *   forward: rows = output pixels, sum over (ci,kh,kw) of x planes x W;
 *   dW, db:  rows = (ci,kh,kw) and a row of ones, sum over output pixels
 *            of x planes x dy (transposed per sample);
 *   dx:      rows = input pixels, sum over (o,kh,kw) of dy planes padded by
 *            k-1-pad x W flipped: the transposed convolution.
 * Work goes sample by sample, so aux holds only one sample's planes plus
 * the packed weights and tables, whatever the batch. On the cnn preset's
 * conv2 (B=128, one thread) this runs at ~100 GFLOP/s against sgemm's ~84
 * on im2col chunks, and drops the im2col/col2im passes.
 *
 * im2col (stride > 1 or pad >= k). col [(ci,kh,kw)][B*oh*ow], y [out]
 * [B*oh*ow] = W·col + b with cblas_sgemm, over chunks of whole samples whose
 * col block fits in L2 (CONV_CHUNK_FLOATS); backward recomputes the chunk's
 * col rather than keeping the whole matrix, and reuses it for dcol = Wᵀ·dy
 * before col2im. A 1x1 stride-1 unpadded conv needs no col at all: x is
 * already [c][B*h*w]. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "layer_ops.h"

typedef struct {
  int C, H, W, O, OH, OW, k, s, pad;
  int K;          /* C*k*k: weights per output channel */
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

/* Floats of one zero-padded input plane, (H+2pad) x (W+2pad). */
static size_t plane_floats(const conv_dims *d) {
  return (size_t)(d->H + 2 * d->pad) * (d->W + 2 * d->pad);
}

/* The direct path needs stride 1 and pad < k (so that dx is a convolution
 * of dy padded by k-1-pad >= 0), and its int32 offset tables must span one
 * sample's padded planes (x planes and the plane of ones; dy planes). */
static int use_direct(const nn_layer *L) {
  if (L->spec.stride != 1 || L->spec.pad >= L->spec.k || is_pointwise(L)) return 0;
  const conv_dims d = dims_of(L);
  const size_t q = (size_t)(d.k - 1 - d.pad);
  const size_t xin = (d.C + 1) * plane_floats(&d) + 16;
  const size_t dyp = (size_t)d.O * (d.OH + 2 * q) * (d.OW + 2 * q);
  return xin < INT32_MAX && dyp < INT32_MAX;
}

static size_t up_to(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* d[0..n) = s[0..n) for the planes' short rows (5 to 30 floats here), where
 * a libc memcpy call costs more than the copy: 8-float blocks, the last one
 * overlapping its predecessor. */
static inline void copy_floats(float *restrict d, const float *restrict s, size_t n) {
  if (n < 8) {
    memcpy(d, s, n * sizeof *d);
    return;
  }
  for (size_t i = 0; i + 8 < n; i += 8) memcpy(d + i, s + i, 8 * sizeof *d);
  memcpy(d + n - 8, s + n - 8, 8 * sizeof *d);
}

/* Copies the n planes src + i*sstride (H x W each) into the interiors, at
 * (pad, pad), of the zero-bordered planes dst + i*dplane of width Wd. */
static void fill_interiors(float *restrict dst, size_t dplane, int Wd, int pad,
                           const float *restrict src, size_t sstride, int n, int H, int W) {
  for (int i = 0; i < n; i++)
    for (int y = 0; y < H; y++)
      copy_floats(dst + i * dplane + (size_t)(y + pad) * Wd + pad,
                  src + i * sstride + (size_t)y * W, (size_t)W);
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

/* ---- The direct path ---------------------------------------------------- */

#define DT_P 6
#define DT_V 16
#define DT_BLOCK 48 /* pixels per transposed block; a multiple of DT_P */

/* c[j][0..DT_V) = c0[j*ld0 + 0..DT_V) + sum over i < n of a[j][idx[i]] *
 * v[i*ldv + 0..DT_V), for j < DT_P (c rows ldc apart): ld0 = 0 starts every
 * row from the one row c0, c0 = c and ld0 = ldc accumulate. Unrolled so that
 * GCC keeps the 6x16 sums in twelve vector registers (check the loop's
 * assembly after changing this: GCC spills them for small reasons); fmaf
 * becomes one vector FMA per 8 lanes. */
static void fma_tile(int n, const int32_t *restrict idx, const float *const a[DT_P],
                     const float *restrict v, size_t ldv, const float *c0, size_t ld0, float *c,
                     size_t ldc) {
  float acc[DT_P][DT_V];
#pragma GCC unroll 6
  for (int j = 0; j < DT_P; j++)
#pragma GCC unroll 16
    for (int l = 0; l < DT_V; l++) acc[j][l] = c0[j * ld0 + l];
  for (int i = 0; i < n; i++) {
    const float *restrict vi = v + (size_t)i * ldv;
    const int32_t o = idx[i];
#pragma GCC unroll 6
    for (int j = 0; j < DT_P; j++) {
      const float s = a[j][o];
#pragma GCC unroll 16
      for (int l = 0; l < DT_V; l++) acc[j][l] = fmaf(s, vi[l], acc[j][l]);
    }
  }
#pragma GCC unroll 6
  for (int j = 0; j < DT_P; j++)
#pragma GCC unroll 16
    for (int l = 0; l < DT_V; l++) c[j * ldc + l] = acc[j][l];
}

/* The direct path's sizes, and its buffers as float offsets into aux (the
 * int32 tables sit in float-sized slots). Channels are padded to whole
 * DT_V groups with zero weights, tiles to whole DT_P rows with dummy rows
 * (offset 0: they read valid memory and their sums are dropped). */
typedef struct {
  int Op, Cp;      /* O, C rounded up to DT_V */
  int Kp, Kx;      /* dW rows: K weights + 1 bias, rounded up to DT_P; dx rows, O*k*k */
  int q, Hq, Wq;   /* dy padding k-1-pad and the padded dy plane's extent */
  size_t pin, pdy; /* floats of a padded x plane, of a padded dy plane */
  size_t npo, npi; /* output / input pixels rounded up to DT_P */
  size_t wpk;      /* packed weights: forward [Op/DT_V][K][DT_V], dx [Cp/DT_V][Kx][DT_V] */
  size_t dwt;      /* dW and db sums [Kp][Op] */
  size_t xin;      /* one sample's padded x planes [C][pin] ... */
  size_t ones;     /* ... directly followed by a plane of ones (the bias row's input) */
  size_t dyp;      /* one sample's padded dy planes [O][pdy] */
  size_t dyt;      /* one sample's dy transposed, [ohw][Op] */
  size_t blk;      /* a block's results [DT_BLOCK][max(Op, Cp)] */
  size_t row;      /* the tiles' initial row: bias (forward) or zeros (dx) */
  size_t offf, pixf, offb, pixb; /* tables: forward/dW rows and pixels, dx rows and pixels */
  size_t total;
} direct_ws;

static direct_ws direct_layout(const conv_dims *d) {
  direct_ws w = {.Op = (int)up_to(d->O, DT_V), .Cp = (int)up_to(d->C, DT_V),
                 .Kp = (int)up_to(d->K + 1, DT_P), .Kx = d->O * d->k * d->k,
                 .q = d->k - 1 - d->pad};
  w.Hq = d->OH + 2 * w.q;
  w.Wq = d->OW + 2 * w.q;
  w.pin = plane_floats(d);
  w.pdy = (size_t)w.Hq * w.Wq;
  w.npo = up_to(d->ohw, DT_P);
  w.npi = up_to(d->hw, DT_P);
  size_t n = 0, wp = (size_t)w.Op * d->K, wb = (size_t)w.Cp * w.Kx;
  w.wpk = n, n += nn_al16(wp > wb ? wp : wb);
  w.dwt = n, n += nn_al16((size_t)w.Kp * w.Op);
  w.xin = n, n += nn_al16((size_t)d->C * w.pin);
  w.ones = n, n += nn_al16(w.pin);
  w.dyp = n, n += nn_al16((size_t)d->O * w.pdy);
  w.dyt = n, n += nn_al16(d->ohw * w.Op);
  w.blk = n, n += nn_al16((size_t)DT_BLOCK * (w.Op > w.Cp ? w.Op : w.Cp));
  w.row = n, n += nn_al16((size_t)(w.Op > w.Cp ? w.Op : w.Cp));
  w.offf = n, n += nn_al16((size_t)w.Kp);
  w.pixf = n, n += nn_al16(w.npo);
  w.offb = n, n += nn_al16((size_t)w.Kx);
  w.pixb = n, n += nn_al16(w.npi);
  w.total = n;
  return w;
}

static int32_t *ws_ints(const nn_layer *L, size_t off) { return (int32_t *)(L->aux + off); }

/* Offsets from xin: off[r] = ci*pin + kh*Wp + kw over the K rows
 * (ci,kh,kw), then the plane of ones (dW's row K sums dy: db); pix[p] =
 * oy*Wp + ox over the output pixels. */
static void fwd_tables(const conv_dims *d, const direct_ws *w, int32_t *off, int32_t *pix) {
  const int Wp = d->W + 2 * d->pad;
  int r = 0;
  for (int ci = 0; ci < d->C; ci++)
    for (int kh = 0; kh < d->k; kh++)
      for (int kw = 0; kw < d->k; kw++) off[r++] = (int32_t)(ci * w->pin + kh * Wp + kw);
  off[r++] = (int32_t)(w->ones - w->xin);
  for (; r < w->Kp; r++) off[r] = 0;
  size_t p = 0;
  for (int oy = 0; oy < d->OH; oy++)
    for (int ox = 0; ox < d->OW; ox++) pix[p++] = oy * Wp + ox;
  for (; p < w->npo; p++) pix[p] = 0;
}

/* The dx sum's tables: rows (o,kh,kw) of the padded dy planes, and the
 * input pixels. */
static void bwd_tables(const conv_dims *d, const direct_ws *w, int32_t *off, int32_t *pix) {
  int r = 0;
  for (int o = 0; o < d->O; o++)
    for (int kh = 0; kh < d->k; kh++)
      for (int kw = 0; kw < d->k; kw++) off[r++] = (int32_t)(o * w->pdy + kh * w->Wq + kw);
  size_t p = 0;
  for (int iy = 0; iy < d->H; iy++)
    for (int ix = 0; ix < d->W; ix++) pix[p++] = iy * w->Wq + ix;
  for (; p < w->npi; p++) pix[p] = 0;
}

/* wpk[h][r][i] = W[h*DT_V + i][r] (0 past O): per DT_V-channel group, K
 * rows of DT_V output channels. */
static void pack_w_fwd(const conv_dims *d, const direct_ws *w, const float *W, float *wpk) {
  for (int h = 0; h < w->Op / DT_V; h++)
    for (int r = 0; r < d->K; r++)
      for (int i = 0; i < DT_V; i++) {
        const int o = h * DT_V + i;
        wpk[((size_t)h * d->K + r) * DT_V + i] = o < d->O ? W[(size_t)o * d->K + r] : 0.0f;
      }
}

/* wpk[h][(o,kh,kw)][i] = W[o][h*DT_V + i][k-1-kh][k-1-kw] (0 past C). */
static void pack_w_bwd(const conv_dims *d, const direct_ws *w, const float *W, float *wpk) {
  const int k = d->k, kk = k * k;
  for (int h = 0; h < w->Cp / DT_V; h++)
    for (int o = 0; o < d->O; o++)
      for (int t = 0; t < kk; t++) {
        float *dst = wpk + ((size_t)h * w->Kx + (size_t)o * kk + t) * DT_V;
        for (int i = 0; i < DT_V; i++) {
          const int ci = h * DT_V + i;
          dst[i] = ci < d->C ? W[((size_t)o * d->C + ci) * kk + (kk - 1 - t)] : 0.0f;
        }
      }
}

/* 8 floats as one vector value: GCC/clang vector extensions, which compile
 * on any target (AVX here, SSE pairs or scalars elsewhere). v8f is a value,
 * v8u the type to load and store it through at any float address. Values
 * of these types never cross a function boundary (that would change the ABI
 * between AVX and non-AVX builds). */
typedef float v8f __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));

/* Transposes the 8x8 block at s (rows ls apart) into d (rows ld apart), or
 * adds its transpose: unpack, 2-float shuffle, then 4-float halves. The
 * unroll pragmas keep the 8 rows in registers. */
static void transpose8(float *restrict d, size_t ld, const float *restrict s, size_t ls, int acc) {
  v8f r[8], t[8], u[8], o[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) r[i] = *(const v8u *)(s + i * ls);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4)
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++) {
      u[i + j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + j + 2] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  /* u[0..3] hold columns (0,4) (2,6) (1,5) (3,7) of rows 0-3, u[4..7] of rows 4-7 */
  static const int col[4] = {0, 2, 1, 3};
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    o[col[i]] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    o[col[i] + 4] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    v8u *dr = (v8u *)(d + i * ld);
    if (acc) o[i] += *dr;
    *dr = o[i];
  }
}

/* d[c][r] (= or +=) s[r][c] for r < nr, c < nc; s rows ls apart, d rows ld
 * apart. Whole 8x8 blocks go through transpose8, the edges one by one. */
static void transpose_into(float *restrict d, size_t ld, const float *restrict s, size_t ls, int nr,
                           int nc, int acc) {
  const int r8 = nr & ~7, c8 = nc & ~7;
  for (int r = 0; r < r8; r += 8)
    for (int c = 0; c < c8; c += 8)
      transpose8(d + (size_t)c * ld + r, ld, s + (size_t)r * ls + c, ls, acc);
  for (int c = 0; c < nc; c++) {
    float *restrict dr = d + (size_t)c * ld;
    for (int r = c < c8 ? r8 : 0; r < nr; r++) {
      const float v = s[(size_t)r * ls + c];
      dr[r] = acc ? dr[r] + v : v;
    }
  }
}

/* The tiles of one block of np pixels (starting at table entry pix): blk
 * [np rounded up to DT_P][ld] = init + rows of planes (+ pix) summed against
 * wpk, per group of DT_V channels. */
static void block_tiles(const float *planes, const int32_t *pix, int np, int nrows,
                        const int32_t *off, const float *wpk, int groups, const float *init,
                        float *blk, int ld) {
  for (int t = 0; t < np; t += DT_P) {
    const float *a[DT_P];
    for (int j = 0; j < DT_P; j++) a[j] = planes + pix[t + j];
    for (int h = 0; h < groups; h++)
      fma_tile(nrows, off, a, wpk + (size_t)h * nrows * DT_V, DT_V, init + h * DT_V, 0,
               blk + (size_t)t * ld + h * DT_V, (size_t)ld);
  }
}

static size_t direct_aux_floats(const conv_dims *d) { return direct_layout(d).total; }

static void direct_forward(nn_layer *L, const conv_dims *d, const float *x, int B) {
  const direct_ws w = direct_layout(d);
  float *wpk = L->aux + w.wpk, *xin = L->aux + w.xin, *blk = L->aux + w.blk;
  float *brow = L->aux + w.row; /* the tiles' initial row: the bias */
  int32_t *off = ws_ints(L, w.offf), *pix = ws_ints(L, w.pixf);
  for (int o = 0; o < w.Op; o++) brow[o] = L->b && o < d->O ? L->b[o] : 0.0f;
  pack_w_fwd(d, &w, L->W, wpk);
  fwd_tables(d, &w, off, pix);
  memset(xin, 0, (size_t)d->C * w.pin * sizeof *xin);
  for (int b = 0; b < B; b++) {
    fill_interiors(xin, w.pin, d->W + 2 * d->pad, d->pad, x + (size_t)b * d->hw,
                   (size_t)B * d->hw, d->C, d->H, d->W);
    for (size_t p0 = 0; p0 < d->ohw; p0 += DT_BLOCK) {
      const int np = (int)(d->ohw - p0 < DT_BLOCK ? d->ohw - p0 : DT_BLOCK);
      block_tiles(xin, pix + p0, np, d->K, off, wpk, w.Op / DT_V, brow, blk, w.Op);
      transpose_into(L->y + (size_t)b * d->ohw + p0, (size_t)B * d->ohw, blk, w.Op, np, d->O, 0);
    }
  }
}

static void direct_dw_sample(nn_layer *L, const conv_dims *d, const direct_ws *w, const float *x,
                             const float *dy, int B, int b) {
  float *xin = L->aux + w->xin, *dyt = L->aux + w->dyt, *dwt = L->aux + w->dwt;
  const int32_t *off = ws_ints(L, w->offf), *pix = ws_ints(L, w->pixf);
  fill_interiors(xin, w->pin, d->W + 2 * d->pad, d->pad, x + (size_t)b * d->hw, (size_t)B * d->hw,
                 d->C, d->H, d->W);
  /* dyt[p][o] = dy of sample b; columns past O stay 0 from the initial clear */
  transpose_into(dyt, (size_t)w->Op, dy + (size_t)b * d->ohw, (size_t)B * d->ohw, d->O,
                 (int)d->ohw, 0);
  for (int r = 0; r < w->Kp; r += DT_P) {
    const float *a[DT_P];
    for (int j = 0; j < DT_P; j++) a[j] = xin + off[r + j];
    for (int h = 0; h < w->Op / DT_V; h++) {
      float *c = dwt + (size_t)r * w->Op + h * DT_V;
      fma_tile((int)d->ohw, pix, a, dyt + h * DT_V, (size_t)w->Op, c, (size_t)w->Op, c,
               (size_t)w->Op);
    }
  }
}

static void direct_dx_sample(nn_layer *L, const conv_dims *d, const direct_ws *w, const float *dy,
                             float *dx, int B, int b, int acc) {
  float *dyp = L->aux + w->dyp, *wpk = L->aux + w->wpk, *blk = L->aux + w->blk;
  const float *zero = L->aux + w->row;
  const int32_t *off = ws_ints(L, w->offb), *pix = ws_ints(L, w->pixb);
  fill_interiors(dyp, w->pdy, w->Wq, w->q, dy + (size_t)b * d->ohw, (size_t)B * d->ohw, d->O,
                 d->OH, d->OW);
  for (size_t p0 = 0; p0 < d->hw; p0 += DT_BLOCK) {
    const int np = (int)(d->hw - p0 < DT_BLOCK ? d->hw - p0 : DT_BLOCK);
    block_tiles(dyp, pix + p0, np, w->Kx, off, wpk, w->Cp / DT_V, zero, blk, w->Cp);
    transpose_into(dx + (size_t)b * d->hw + p0, (size_t)B * d->hw, blk, w->Cp, np, d->C, acc);
  }
}

static void direct_backward(nn_layer *L, const conv_dims *d, const float *x, const float *dy,
                            float *dx, int B, int acc_dx, int train) {
  const direct_ws w = direct_layout(d);
  if (train) {
    fwd_tables(d, &w, ws_ints(L, w.offf), ws_ints(L, w.pixf));
    memset(L->aux + w.dwt, 0, (size_t)w.Kp * w.Op * sizeof *L->aux);
    float *ones = L->aux + w.ones;
    memset(L->aux + w.xin, 0, (size_t)d->C * w.pin * sizeof *L->aux);
    for (size_t i = 0; i < w.pin; i++) ones[i] = 1.0f;
    memset(L->aux + w.dyt, 0, d->ohw * w.Op * sizeof *L->aux);
  }
  if (dx) {
    bwd_tables(d, &w, ws_ints(L, w.offb), ws_ints(L, w.pixb));
    pack_w_bwd(d, &w, L->W, L->aux + w.wpk);
    memset(L->aux + w.dyp, 0, (size_t)d->O * w.pdy * sizeof *L->aux);
    memset(L->aux + w.row, 0, (size_t)w.Cp * sizeof *L->aux);
  }
  for (int b = 0; b < B; b++) {
    if (train) direct_dw_sample(L, d, &w, x, dy, B, b);
    if (dx) direct_dx_sample(L, d, &w, dy, dx, B, b, acc_dx);
  }
  if (!train) return;
  const float *dwt = L->aux + w.dwt;
  for (int o = 0; o < d->O; o++)
    for (int r = 0; r < d->K; r++) L->dW[(size_t)o * d->K + r] += dwt[(size_t)r * w.Op + o];
  for (int o = 0; L->db && o < d->O; o++) L->db[o] += dwt[(size_t)d->K * w.Op + o];
}

/* ---- The im2col path ---------------------------------------------------- */

/* Target floats of one chunk's col block: 256 KiB, a quarter of a 1 MiB L2,
 * leaving room for sgemm's packed panels and the output block. Measured on
 * the cnn preset's conv2 when it took this path (B=128, one thread): 2^16
 * beat 2^17 by 5%, 2^20 was 20% slower and a whole-batch col ~70% slower. */
#define CONV_CHUNK_FLOATS ((size_t)1 << 16)

/* Samples per chunk at batch B (monotone in B, so a workspace bound at
 * max_batch serves any smaller batch). */
static int chunk_samples(const conv_dims *d, int B) {
  size_t per = (size_t)d->K * d->ohw;
  size_t nb = CONV_CHUNK_FLOATS / per;
  if (nb < 1) nb = 1;
  return nb < (size_t)B ? (int)nb : B;
}

/* aux = [col block of nb samples][nb zero-padded planes]; both grow with
 * nb, so aux bound at max_batch fits any call's chunk. */
static size_t col_floats(const conv_dims *d, int nb) {
  return nn_al16((size_t)d->K * (size_t)nb * d->ohw);
}

static size_t im2col_aux_floats(const conv_dims *d, int B) {
  const int nb = chunk_samples(d, B);
  return col_floats(d, nb) + nn_al16((size_t)nb * plane_floats(d));
}

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

/* col[K][nb*ohw] for samples b0 .. b0+nb of x [C][B][H][W]. The samples'
 * planes of one input channel are first copied into zero-padded planes, so
 * a col row is a plain strided copy with no bounds tests. */
static void im2col(const conv_dims *d, const float *x, int B, int b0, int nb,
                   float *restrict col, float *restrict P) {
  const int Wp = d->W + 2 * d->pad, OW = d->OW, OH = d->OH, s = d->s, k = d->k;
  const size_t nc = (size_t)nb * d->ohw, pl = plane_floats(d);
  memset(P, 0, (size_t)nb * pl * sizeof *P);
  for (int ci = 0; ci < d->C; ci++) {
    fill_interiors(P, pl, Wp, d->pad, x + ((size_t)ci * B + b0) * d->hw, d->hw, nb, d->H, d->W);
    for (int kh = 0; kh < k; kh++)
      for (int kw = 0; kw < k; kw++) {
        float *dst = col + ((size_t)(ci * k + kh) * k + kw) * nc;
        for (int bi = 0; bi < nb; bi++, dst += d->ohw) {
          const float *src = P + bi * pl + (size_t)kh * Wp + kw;
          for (int oy = 0; oy < OH; oy++) {
            const float *restrict sr = src + (size_t)oy * s * Wp;
            float *restrict dr = dst + (size_t)oy * OW;
            for (int ox = 0; ox < OW; ox++) dr[ox] = sr[ox * s];
          }
        }
      }
  }
}

/* dx[C][B][H][W] (samples b0 .. b0+nb) = or += the col2im of dcol: a
 * scatter-add straight into dx over each kernel offset's valid range. */
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
            for (int j = 0; j < len; j++) dr[j * s] += rr[j];
          }
        }
      }
    }
  }
}

static void im2col_forward(nn_layer *L, const conv_dims *d, const float *x, int B) {
  const size_t N = (size_t)B * d->ohw;
  const int nb = chunk_samples(d, B);
  float *P = pad_planes(L, d, nb);
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = nb < B - b0 ? nb : B - b0;
    const size_t nc = (size_t)n * d->ohw, c0 = (size_t)b0 * d->ohw;
    im2col(d, x, B, b0, n, L->aux, P);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->O, (int)nc, d->K, 1.0f, L->W, d->K,
                L->aux, (int)nc, 0.0f, L->y + c0, (int)N);
    if (L->b) add_bias(L->y, L->b, d->O, N, c0, nc);
  }
}

static void im2col_backward(nn_layer *L, const conv_dims *d, const float *x, const float *dy,
                            float *dx, int B, int acc_dx, int train) {
  const size_t N = (size_t)B * d->ohw;
  const int nb = chunk_samples(d, B);
  float *P = pad_planes(L, d, nb);
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int n = nb < B - b0 ? nb : B - b0;
    const size_t nc = (size_t)n * d->ohw, c0 = (size_t)b0 * d->ohw;
    if (train) {
      im2col(d, x, B, b0, n, L->aux, P);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d->O, d->K, (int)nc, 1.0f, dy + c0,
                  (int)N, L->aux, (int)nc, 1.0f, L->dW, d->K);
      if (L->db) add_bias_grad(L->db, dy, d->O, N, c0, nc);
    }
    if (dx) {
      /* dcol overwrites this chunk's col, which dW has already consumed. */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d->K, (int)nc, d->O, 1.0f, L->W, d->K,
                  dy + c0, (int)N, 0.0f, L->aux, (int)nc);
      col2im(d, L->aux, B, b0, n, dx, acc_dx);
    }
  }
}

/* ---- Entry points --------------------------------------------------------- */

size_t nn_conv_aux_floats(const nn_layer *L, int B) {
  if (is_pointwise(L)) return 0;
  conv_dims d = dims_of(L);
  return use_direct(L) ? direct_aux_floats(&d) : im2col_aux_floats(&d, B);
}

void nn_conv_forward(nn_layer *L, const float *x, int B) {
  conv_dims d = dims_of(L);
  const size_t N = (size_t)B * d.ohw;
  if (is_pointwise(L)) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d.O, (int)N, d.C, 1.0f, L->W, d.C, x,
                (int)N, 0.0f, L->y, (int)N);
    if (L->b) add_bias(L->y, L->b, d.O, N, 0, N);
  } else if (use_direct(L)) {
    direct_forward(L, &d, x, B);
  } else {
    im2col_forward(L, &d, x, B);
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
  } else if (use_direct(L)) {
    direct_backward(L, &d, x, dy, dx, B, acc_dx, train);
  } else {
    im2col_backward(L, &d, x, dy, dx, B, acc_dx, train);
  }
}
