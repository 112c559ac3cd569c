/* Batch assembly and per-sample transforms behind nn/data.h: u8 -> [0,1]
 * floats, then normalize / invert / rotate / noise / crop / hflip in the
 * order given, then the model's input layout. Every random draw is keyed by
 * (batch key, transform index, global sample id), never by batch position. */
#include <math.h>
#include <string.h>

#include "data.h"
#include "err.h"
#include "rng.h"

const char *const nn_tf_names[] = {
    [NN_TF_NORMALIZE] = "normalize", [NN_TF_INVERT] = "invert", [NN_TF_ROTATE] = "rotate",
    [NN_TF_NOISE] = "noise",         [NN_TF_CROP] = "crop",     [NN_TF_HFLIP] = "hflip",
};
_Static_assert(sizeof nn_tf_names / sizeof nn_tf_names[0] == NN_TF_COUNT,
               "nn_tf_names must name every nn_tf_kind");

int nn_tf_from_name(const char *s) {
  for (int k = 0; k < NN_TF_COUNT; k++)
    if (s && strcmp(s, nn_tf_names[k]) == 0) return k;
  return -1;
}

static int tf_is_geometric(nn_tf_kind k) {
  return k == NN_TF_ROTATE || k == NN_TF_CROP || k == NN_TF_HFLIP;
}

int nn_tf_check(const nn_transform *tf, int ntf, const nn_dataset *ds) {
  const nn_shape s = ds->shape;
  const int side = s.h > s.w ? s.h : s.w;
  for (int t = 0; t < ntf; t++) {
    const nn_transform *T = &tf[t];
    CHECK_USER((int)T->kind >= 0 && T->kind < NN_TF_COUNT,
               "transform %d: kind %d, expected 0..%d", t, (int)T->kind, NN_TF_COUNT - 1);
    const char *nm = nn_tf_names[T->kind];
    CHECK_USER(!tf_is_geometric(T->kind) || ds->spatial,
               "transform %d (%s): needs image data, but '%s' holds flat features of shape "
               "(%d,%d,%d)",
               t, nm, ds->source, s.c, s.h, s.w);
    switch (T->kind) {
    case NN_TF_NORMALIZE: {
      const int nch = s.c > NN_TF_MAXC ? 1 : s.c;
      for (int ch = 0; ch < nch; ch++) {
        CHECK_USER(isfinite(T->a[ch]), "transform %d (%s): mean[%d] = %g, expected a finite number",
                   t, nm, ch, T->a[ch]);
        CHECK_USER(isfinite(T->b[ch]) && T->b[ch] > 0,
                   "transform %d (%s): std[%d] = %g, expected a finite number > 0", t, nm, ch,
                   T->b[ch]);
      }
      break;
    }
    case NN_TF_INVERT:
      break;
    case NN_TF_ROTATE:
      CHECK_USER(isfinite(T->a[0]), "transform %d (%s): angle = %g, expected a finite number", t,
                 nm, T->a[0]);
      CHECK_USER(isfinite(T->a[1]) && T->a[1] >= 0 && T->a[1] <= 360,
                 "transform %d (%s): random range = %g degrees, expected 0..360", t, nm, T->a[1]);
      CHECK_USER(!(T->a[1] > 0 && T->a[0] != 0),
                 "transform %d (%s): both a fixed angle (%g) and a random range (%g) given, "
                 "expected one of them",
                 t, nm, T->a[0], T->a[1]);
      break;
    case NN_TF_NOISE:
      CHECK_USER(isfinite(T->a[0]) && T->a[0] >= 0,
                 "transform %d (%s): std = %g, expected a finite number >= 0", t, nm, T->a[0]);
      break;
    case NN_TF_CROP:
      CHECK_USER(T->a[0] >= 0 && T->a[0] <= side && T->a[0] == floorf(T->a[0]),
                 "transform %d (%s): padding = %g, expected a whole number of pixels 0..%d", t,
                 nm, T->a[0], side);
      break;
    case NN_TF_HFLIP:
      CHECK_USER(T->a[0] >= 0 && T->a[0] <= 1,
                 "transform %d (%s): probability = %g, expected 0..1", t, nm, T->a[0]);
      break;
    case NN_TF_COUNT:
      break;
    }
  }
  return 0;
}

/* ----------------------------------------------------------- transforms -- */

/* One sample as [c][h][w] floats. */
typedef struct {
  int c, h, w;
} img_dims;

static void tf_normalize(const nn_transform *T, img_dims d, float *x) {
  const size_t plane = (size_t)d.h * d.w;
  for (int ch = 0; ch < d.c; ch++) {
    const int k = d.c > NN_TF_MAXC ? 0 : ch;
    const float mean = T->a[k], inv = 1.0f / T->b[k];
    float *p = x + (size_t)ch * plane;
    for (size_t i = 0; i < plane; i++) p[i] = (p[i] - mean) * inv;
  }
}

static void tf_invert(img_dims d, float *x) {
  const size_t n = (size_t)d.c * d.h * d.w;
  for (size_t i = 0; i < n; i++) x[i] = 1.0f - x[i];
}

/* Exact quarter turns counter-clockwise (numpy rot90 with k = q) of square
 * planes: out[i][j] = in[j][n-1-i] for one turn. */
static void rot_quarter(int q, img_dims d, const float *in, float *out) {
  const int n = d.h;
  for (int ch = 0; ch < d.c; ch++) {
    const float *s = in + (size_t)ch * n * n;
    float *o = out + (size_t)ch * n * n;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) {
        int si, sj;
        if (q == 1) si = j, sj = n - 1 - i;
        else if (q == 2) si = n - 1 - i, sj = n - 1 - j;
        else si = n - 1 - j, sj = i;
        o[(size_t)i * n + j] = s[(size_t)si * n + sj];
      }
  }
}

/* Bilinear sample of plane s (h x w) at (sy, sx) with zero outside. */
static float bilinear_edge(const float *s, int h, int w, float sy, float sx) {
  const float fx0 = floorf(sx), fy0 = floorf(sy);
  const int x0 = (int)fx0, y0 = (int)fy0;
  const float fx = sx - fx0, fy = sy - fy0;
  float v = 0.0f;
  for (int dy = 0; dy < 2; dy++) {
    const int y = y0 + dy;
    if (y < 0 || y >= h) continue;
    const float wy = dy ? fy : 1.0f - fy;
    if (x0 >= 0 && x0 < w) v += wy * (1.0f - fx) * s[(size_t)y * w + x0];
    if (x0 + 1 >= 0 && x0 + 1 < w) v += wy * fx * s[(size_t)y * w + x0 + 1];
  }
  return v;
}

/* Rotation by deg degrees counter-clockwise about the image centre, bilinear
 * with zero outside. Output pixel (r, c) samples the input at the inverse
 * rotation of its offset from the centre (rows grow downwards):
 *   sx = cx + (c-cx) cos - (r-cy) sin,  sy = cy + (c-cx) sin + (r-cy) cos. */
static void rot_bilinear(double deg, img_dims d, const float *in, float *out) {
  const double th = deg * (3.14159265358979323846 / 180.0);
  const float cs = (float)cos(th), sn = (float)sin(th);
  const float cx = 0.5f * (float)(d.w - 1), cy = 0.5f * (float)(d.h - 1);
  const size_t plane = (size_t)d.h * d.w;
  for (int r = 0; r < d.h; r++) {
    const float yr = (float)r - cy;
    for (int c = 0; c < d.w; c++) {
      const float xr = (float)c - cx;
      const float sx = cx + xr * cs - yr * sn, sy = cy + xr * sn + yr * cs;
      const size_t o = (size_t)r * d.w + c;
      const float fx0 = floorf(sx), fy0 = floorf(sy);
      const int x0 = (int)fx0, y0 = (int)fy0;
      if (x0 >= 0 && y0 >= 0 && x0 + 1 < d.w && y0 + 1 < d.h) {
        /* All four neighbours inside: the common case, no checks. */
        const float fx = sx - fx0, fy = sy - fy0;
        const float w00 = (1.0f - fy) * (1.0f - fx), w01 = (1.0f - fy) * fx;
        const float w10 = fy * (1.0f - fx), w11 = fy * fx;
        const size_t i00 = (size_t)y0 * d.w + x0;
        for (int ch = 0; ch < d.c; ch++) {
          const float *s = in + ch * plane + i00;
          out[ch * plane + o] = w00 * s[0] + w01 * s[1] + w10 * s[d.w] + w11 * s[d.w + 1];
        }
      } else {
        for (int ch = 0; ch < d.c; ch++)
          out[ch * plane + o] = bilinear_edge(in + ch * plane, d.h, d.w, sy, sx);
      }
    }
  }
}

/* Rotate: returns 1 when the result is in out (x unchanged). */
static int tf_rotate(const nn_transform *T, img_dims d, uint64_t k, uint64_t id, const float *x,
                     float *out) {
  double deg;
  if (T->a[1] > 0) {
    deg = (2.0 * nn_urand(k, id) - 1.0) * T->a[1];
  } else {
    deg = fmod((double)T->a[0], 360.0);
    if (deg < 0) deg += 360.0;
    const int q = deg == 90.0 ? 1 : deg == 180.0 ? 2 : deg == 270.0 ? 3 : 0;
    if (q && d.h == d.w) {
      rot_quarter(q, d, x, out);
      return 1;
    }
  }
  rot_bilinear(deg, d, x, out);
  return 1;
}

static void tf_noise(const nn_transform *T, img_dims d, uint64_t k, uint64_t id, float *x) {
  const size_t n = (size_t)d.c * d.h * d.w;
  const float sd = T->a[0];
  if (sd == 0.0f) return;
  for (size_t j = 0; j < n; j++) x[j] += sd * nn_normal_at(k, id * (uint64_t)n + j);
}

/* Zero-pads by p pixels and takes the crop of the original size at a keyed
 * offset (dy, dx) in [-p, p]: out[r][c] = in[r+dy][c+dx], 0 outside. */
static void tf_crop(const nn_transform *T, img_dims d, uint64_t k, uint64_t id, const float *x,
                    float *out) {
  const float pa = T->a[0];
  const int64_t p = pa > 0 ? (pa < 65536.0f ? (int64_t)pa : 65536) : 0;
  const uint64_t h = nn_hash64(k, id), span = 2 * (uint64_t)p + 1;
  const int64_t dy = (int64_t)((h & 0xffffffffu) % span) - p, dx = (int64_t)((h >> 32) % span) - p;
  const size_t plane = (size_t)d.h * d.w;
  /* Columns c with 0 <= c+dx < w. */
  const int64_t c0 = dx < 0 ? -dx : 0, c1 = dx > 0 ? d.w - dx : d.w;
  for (int ch = 0; ch < d.c; ch++)
    for (int r = 0; r < d.h; r++) {
      float *o = out + ch * plane + (size_t)r * d.w;
      const int64_t sr = r + dy;
      if (sr < 0 || sr >= d.h || c1 <= c0) {
        memset(o, 0, (size_t)d.w * sizeof *o);
        continue;
      }
      const float *s = x + ch * plane + (size_t)sr * d.w;
      for (int64_t c = 0; c < c0; c++) o[c] = 0.0f;
      memcpy(o + c0, s + c0 + dx, (size_t)(c1 - c0) * sizeof *o);
      for (int64_t c = c1; c < d.w; c++) o[c] = 0.0f;
    }
}

/* Mirrors every row with probability a[0]; returns 1 when flipped into out. */
static int tf_hflip(const nn_transform *T, img_dims d, uint64_t k, uint64_t id, const float *x,
                    float *out) {
  if (!(nn_urand(k, id) < T->a[0])) return 0;
  const size_t rows = (size_t)d.c * d.h;
  for (size_t r = 0; r < rows; r++) {
    const float *s = x + r * d.w;
    float *o = out + r * d.w;
    for (int c = 0; c < d.w; c++) o[c] = s[d.w - 1 - c];
  }
  return 1;
}

/* Applies T to the sample in x; returns 1 when the result was written to
 * spare instead (the caller swaps buffers). */
static int tf_apply(const nn_transform *T, img_dims d, int spatial, uint64_t k, uint64_t id,
                    float *x, float *spare) {
  if (tf_is_geometric(T->kind) && !spatial) return 0; /* see nn_tf_check */
  switch (T->kind) {
  case NN_TF_NORMALIZE:
    tf_normalize(T, d, x);
    return 0;
  case NN_TF_INVERT:
    tf_invert(d, x);
    return 0;
  case NN_TF_ROTATE:
    return tf_rotate(T, d, k, id, x, spare);
  case NN_TF_NOISE:
    tf_noise(T, d, k, id, x);
    return 0;
  case NN_TF_CROP:
    tf_crop(T, d, k, id, x, spare);
    return 1;
  case NN_TF_HFLIP:
    return tf_hflip(T, d, k, id, x, spare);
  case NN_TF_COUNT:
    break;
  }
  return 0;
}

/* ---------------------------------------------------------------- batch -- */

/* u8 / 255 for every byte value, folded at compile time: exact division
 * without a division per pixel. */
#define U8F1(i) (float)(i) / 255.0f
#define U8F4(i) U8F1(i), U8F1((i) + 1), U8F1((i) + 2), U8F1((i) + 3)
#define U8F16(i) U8F4(i), U8F4((i) + 4), U8F4((i) + 8), U8F4((i) + 12)
#define U8F64(i) U8F16(i), U8F16((i) + 16), U8F16((i) + 32), U8F16((i) + 48)
static const float u8_unit[256] = {U8F64(0), U8F64(64), U8F64(128), U8F64(192)};

void nn_data_batch(const nn_dataset *ds, const int64_t *idx, int B, const nn_transform *tf,
                   int ntf, uint64_t key, float *x, int32_t *y, float *scratch) {
  const img_dims d = {ds->shape.c, ds->shape.h, ds->shape.w};
  const size_t numel = nn_shape_numel(ds->shape), plane = (size_t)d.h * d.w;
  for (int b = 0; b < B; b++) {
    const int64_t row = idx[b];
    const uint64_t id = (uint64_t)(ds->ids ? ds->ids[row] : row);
    /* With one channel (or flat data) the sample is contiguous in x: work
     * there directly and copy only if the last transform left it in scratch. */
    float *dst = !ds->spatial || d.c == 1 ? x + (size_t)b * numel : NULL;
    float *cur = dst ? dst : scratch, *spare = scratch + numel;
    if (ds->u8) {
      const uint8_t *s = ds->u8 + (size_t)row * numel;
      for (size_t j = 0; j < numel; j++) cur[j] = u8_unit[s[j]];
    } else {
      memcpy(cur, ds->f32 + (size_t)row * numel, numel * sizeof *cur);
    }
    for (int t = 0; t < ntf; t++)
      if (tf_apply(&tf[t], d, ds->spatial, nn_key(key, (uint64_t)t), id, cur, spare)) {
        float *tmp = cur;
        cur = spare;
        spare = tmp;
      }
    if (dst) {
      if (cur != dst) memcpy(dst, cur, numel * sizeof *x);
    } else {
      for (int ch = 0; ch < d.c; ch++)
        memcpy(x + ((size_t)ch * B + b) * plane, cur + ch * plane, plane * sizeof *x);
    }
    if (y) y[b] = ds->labels[row];
  }
}
