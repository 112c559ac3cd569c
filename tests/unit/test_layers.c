/* Layer behaviour beyond gradients: op names, shape rules and their error
 * messages, accumulate/frozen/dx==NULL semantics, dropout keyed by sample id,
 * convolution against a direct reference (several batch chunks, batch below
 * the bound size), layouts of flatten/GAP/maxpool/groupnorm, seeded init. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layer_fixture.h"
#include "nn/err.h"
#include "nn/layer.h"
#include "nn/rng.h"

static nn_rng rng;

static float urand(float lo, float hi) { return lo + (hi - lo) * (float)nn_rng_uniform(&rng); }
static void fill(float *v, size_t n) {
  for (size_t i = 0; i < n; i++) v[i] = urand(-1.0f, 1.0f);
}



static nn_layer_spec mk(nn_op op, const char *name) {
  nn_layer_spec s = {.op = op};
  snprintf(s.name, sizeof s.name, "%s", name);
  return s;
}


static int same_shape(nn_shape a, nn_shape b) { return a.c == b.c && a.h == b.h && a.w == b.w; }

static double max_rel(const float *a, const float *b, size_t n) {
  double err = 0.0, scale = 1e-30;
  for (size_t i = 0; i < n; i++) {
    err = fmax(err, fabs((double)a[i] - b[i]));
    scale = fmax(scale, fabs((double)b[i]));
  }
  return err / scale;
}

static void test_names(void) {
  static const char *const want[] = {"dense",   "conv",    "maxpool",   "avgpool",  "gap",
                                     "relu",    "gelu",    "tanh",      "sigmoid",  "dropout",
                                     "flatten", "groupnorm", "residual", "grl"};
  CHECK(sizeof want / sizeof want[0] == NN_OP_COUNT);
  for (int i = 0; i < NN_OP_COUNT; i++) {
    CHECK_MSG(strcmp(nn_op_names[i], want[i]) == 0, "op %d is '%s'", i, nn_op_names[i]);
    CHECK(nn_op_from_name(want[i]) == i);
  }
  CHECK(nn_op_from_name("conv2d") == -1);
  CHECK(nn_op_from_name("") == -1);
  CHECK(nn_op_from_name(NULL) == -1);
}

static void test_shapes(void) {
  /* the "cnn" preset chain */
  nn_layer L;
  nn_layer_spec s = mk(NN_CONV2D, "conv1");
  s.out = 16, s.k = 5, s.pad = 2;
  CHECK(nn_layer_setup(&L, &s, sh(1, 28, 28), 1) == 0);
  CHECK(same_shape(L.out, sh(16, 28, 28)) && L.out_spatial && L.spec.stride == 1);
  CHECK(nn_layer_nparams(&L) == 16 * 25 + 16);
  s = mk(NN_MAXPOOL2D, "pool1");
  s.k = 2;
  CHECK(nn_layer_setup(&L, &s, sh(16, 28, 28), 1) == 0);
  CHECK(same_shape(L.out, sh(16, 14, 14)) && L.spec.stride == 2 && nn_layer_nparams(&L) == 0);
  s = mk(NN_FLATTEN, "flat");
  CHECK(nn_layer_setup(&L, &s, sh(32, 7, 7), 1) == 0);
  CHECK(same_shape(L.out, sh(1568, 1, 1)) && !L.out_spatial);
  s = mk(NN_DENSE, "fc");
  s.out = 128;
  CHECK(nn_layer_setup(&L, &s, sh(1568, 1, 1), 0) == 0);
  CHECK(same_shape(L.out, sh(128, 1, 1)) && nn_layer_nparams(&L) == 1568 * 128 + 128);
  s.no_bias = 1;
  CHECK(nn_layer_setup(&L, &s, sh(1568, 1, 1), 0) == 0 && nn_layer_nparams(&L) == 1568 * 128);

  s = mk(NN_CONV2D, "c");
  s.out = 4, s.k = 3, s.stride = 2, s.pad = 1;
  CHECK(nn_layer_setup(&L, &s, sh(2, 5, 6), 1) == 0 && same_shape(L.out, sh(4, 3, 3)));
  s = mk(NN_AVGPOOL2D, "p");
  s.k = 3;
  CHECK(nn_layer_setup(&L, &s, sh(2, 7, 8), 1) == 0 && same_shape(L.out, sh(2, 2, 2)));
  s = mk(NN_GAP, "gap");
  CHECK(nn_layer_setup(&L, &s, sh(5, 3, 3), 1) == 0 && same_shape(L.out, sh(5, 1, 1)) &&
        !L.out_spatial);
  s = mk(NN_RELU, "");
  CHECK(nn_layer_setup(&L, &s, sh(5, 3, 3), 1) == 0 && L.out_spatial && strcmp(L.spec.name, "relu") == 0);

  /* groupnorm default groups: largest divisor of c up to 8 */
  const int cs[] = {16, 12, 3, 7, 1, 64, 10}, gs[] = {8, 6, 3, 7, 1, 8, 5};
  for (int i = 0; i < 7; i++) {
    s = mk(NN_GROUPNORM, "gn");
    CHECK(nn_layer_setup(&L, &s, sh(cs[i], 2, 2), 1) == 0);
    CHECK_MSG(L.spec.groups == gs[i], "c=%d: groups %d", cs[i], L.spec.groups);
    CHECK(nn_layer_nparams(&L) == 2 * (size_t)cs[i]);
  }

  /* residual: sub-layers, names, projection only when shape changes */
  s = mk(NN_RESIDUAL, "blk");
  s.out = 8, s.stride = 2;
  CHECK(nn_layer_setup(&L, &s, sh(4, 5, 5), 1) == 0);
  CHECK(same_shape(L.out, sh(8, 3, 3)) && L.nsub == 7 && L.nbody == 5);
  static const char *const names[] = {"blk.conv1", "blk.gn1",  "blk.relu1", "blk.conv2",
                                      "blk.gn2",   "blk.proj", "blk.proj_gn"};
  for (int i = 0; i < L.nsub; i++) CHECK(strcmp(L.sub[i].spec.name, names[i]) == 0);
  size_t np = 8 * 4 * 9 + 16 + 8 * 8 * 9 + 16 + 8 * 4 + 16;
  size_t padded = 0; /* each sub-layer starts 16-aligned in the block */
  for (int i = 0; i < L.nsub; i++) padded = ((padded + 15) & ~(size_t)15) + nn_layer_nparams(&L.sub[i]);
  CHECK(nn_layer_nparams(&L) == padded && padded >= np);
  float *p = calloc(padded + 32, sizeof(float));
  CHECK(nn_layer_bind_params(&L, p, NULL, 16) == padded);
  for (int i = 0; i < L.nsub; i++)
    if (L.sub[i].w_len) CHECK(L.sub[i].p_off % 16 == 0 && L.sub[i].W == p + L.sub[i].p_off);
  CHECK(L.W == p + 16 && L.w_len == padded && !L.b && !L.dW);
  free(p);
  nn_layer_free(&L);
  CHECK(L.sub == NULL && L.nsub == 0);
  s.out = 0, s.stride = 0;
  CHECK(nn_layer_setup(&L, &s, sh(4, 5, 5), 1) == 0);
  CHECK(same_shape(L.out, sh(4, 5, 5)) && L.nsub == 5);
  nn_layer_free(&L);
}

/* The setup fails with FERRY_EUSER and a message holding each of the words. */
static void expect_user_error(const nn_layer_spec *s, nn_shape in, int spatial, const char *w1,
                              const char *w2, const char *w3) {
  nn_layer L;
  ferry_err_clear();
  int rc = nn_layer_setup(&L, s, in, spatial);
  const char *msg = ferry_err_msg();
  CHECK_MSG(rc == FERRY_EUSER && ferry_err_code() == FERRY_EUSER, "'%s': rc %d", s->name, rc);
  const char *w[3] = {w1, w2, w3};
  for (int i = 0; i < 3; i++)
    if (w[i]) CHECK_MSG(strstr(msg, w[i]) != NULL, "message \"%s\" lacks \"%s\"", msg, w[i]);
  ferry_err_clear();
  nn_layer_free(&L);
}

static void test_errors(void) {
  nn_layer_spec s = mk(NN_DENSE, "dense1");
  s.out = 10;
  expect_user_error(&s, sh(16, 14, 14), 1, "'dense1'", "spatial 16x14x14", "flatten");
  s.out = 0;
  expect_user_error(&s, sh(16, 1, 1), 0, "'dense1'", "out", "found 0");
  s = mk(NN_CONV2D, "c1");
  s.out = 4, s.k = 3;
  expect_user_error(&s, sh(784, 1, 1), 0, "'c1'", "spatial", "flat 784");
  s.k = 7;
  expect_user_error(&s, sh(1, 3, 3), 1, "'c1'", "kernel 7", "1x3x3");
  s.k = 3, s.stride = -1;
  expect_user_error(&s, sh(1, 8, 8), 1, "'c1'", "stride", NULL);
  s = mk(NN_MAXPOOL2D, "mp");
  s.k = 3;
  expect_user_error(&s, sh(2, 2, 2), 1, "'mp'", "kernel 3", "2x2x2");
  s.k = 2, s.pad = 1;
  expect_user_error(&s, sh(2, 4, 4), 1, "'mp'", "padding", "pad 1");
  s = mk(NN_GAP, "g");
  expect_user_error(&s, sh(10, 1, 1), 0, "'g'", "spatial", "flat 10");
  s = mk(NN_GROUPNORM, "norm");
  s.groups = 3;
  expect_user_error(&s, sh(8, 2, 2), 1, "'norm'", "3 groups", "8 channels");
  s = mk(NN_DROPOUT, "drop");
  s.p = 1.0f;
  expect_user_error(&s, sh(8, 1, 1), 0, "'drop'", "[0, 1)", "found 1");
  s.p = -0.1f;
  expect_user_error(&s, sh(8, 1, 1), 0, "'drop'", "[0, 1)", NULL);
  s = mk(NN_RESIDUAL, "res");
  s.out = 8;
  expect_user_error(&s, sh(8, 1, 1), 0, "'res'", "spatial", "flat 8");
  s.groups = 3; /* reported by the block's groupnorm */
  expect_user_error(&s, sh(8, 4, 4), 1, "'res.gn1'", "3 groups", "8 channels");
  s = mk(NN_RESIDUAL, "res");
  s.k = 5;
  expect_user_error(&s, sh(8, 4, 4), 1, "'res'", "3x3", "k 5");
  s = mk(NN_RESIDUAL, "a_residual_block_name_that_is_far_too_long_x");
  expect_user_error(&s, sh(8, 4, 4), 1, "too long", NULL, NULL);
  s = mk(NN_RELU, "r");
  s.op = NN_OP_COUNT;
  expect_user_error(&s, sh(8, 1, 1), 0, "'r'", "unknown op", NULL);
  s = mk(NN_RELU, "r");
  expect_user_error(&s, sh(0, 1, 1), 0, "'r'", "positive", NULL);
}

/* Backward accumulates, frozen layers keep their gradients, dx is the same
 * whether frozen or not. */
static void test_accumulate_frozen(const char *label, const nn_layer_spec *s, nn_shape in,
                                   int spatial) {
  fixture f;
  CHECK(fx_make(&f, s, in, spatial, 4, 77, &rng, 0.2f) == 0);
  const int B = 3;
  nn_pass p = {.B = B};
  size_t nin = B * nn_shape_numel(f.L.in), nout = B * nn_shape_numel(f.L.out);
  float *x = malloc(nin * 4), *dy = malloc(nout * 4), *dx1 = malloc(nin * 4), *dx2 = malloc(nin * 4);
  float *g1 = malloc(f.np * 4);
  fill(x, nin);
  fill(dy, nout);
  nn_layer_forward(&f.L, x, &p);
  memset(f.grads, 0, f.np * 4);
  nn_layer_backward(&f.L, x, dy, dx1, &p);
  memcpy(g1, f.grads, f.np * 4);
  nn_layer_backward(&f.L, x, dy, dx2, &p);
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < f.np; i++) {
    err = fmax(err, fabs(f.grads[i] - 2.0 * g1[i]));
    scale = fmax(scale, fabs(g1[i]));
  }
  CHECK_MSG(scale > 0 && err <= 1e-5 * scale, "%s: second backward did not add (err %g)", label, err);
  CHECK_MSG(memcmp(dx1, dx2, nin * 4) == 0, "%s: dx changed on a second backward", label);

  f.L.frozen = 1;
  for (size_t i = 0; i < f.np; i++) f.grads[i] = 7.0f;
  nn_layer_backward(&f.L, x, dy, dx2, &p);
  int untouched = 1;
  for (size_t i = 0; i < f.np; i++) untouched &= f.grads[i] == 7.0f;
  CHECK_MSG(untouched, "%s: frozen layer wrote its gradients", label);
  CHECK_MSG(max_rel(dx2, dx1, nin) <= 1e-6, "%s: frozen layer's dx differs", label);
  nn_layer_backward(&f.L, x, dy, NULL, &p);
  for (size_t i = 0; i < f.np; i++) untouched &= f.grads[i] == 7.0f;
  CHECK_MSG(untouched, "%s: frozen layer wrote its gradients (dx NULL)", label);
  free(x), free(dy), free(dx1), free(dx2), free(g1);
  fx_free(&f);
}

static void test_accumulate(void) {
  nn_layer_spec s = mk(NN_DENSE, "d");
  s.out = 6;
  test_accumulate_frozen("dense", &s, sh(9, 1, 1), 0);
  s = mk(NN_CONV2D, "c");
  s.out = 4, s.k = 3, s.pad = 1, s.stride = 2;
  test_accumulate_frozen("conv", &s, sh(3, 6, 7), 1);
  s.k = 1, s.pad = 0, s.stride = 1;
  test_accumulate_frozen("conv 1x1", &s, sh(3, 4, 4), 1);
  s = mk(NN_GROUPNORM, "gn");
  s.groups = 2;
  test_accumulate_frozen("groupnorm", &s, sh(4, 3, 3), 1);
  s = mk(NN_RESIDUAL, "res");
  s.out = 6, s.stride = 2;
  test_accumulate_frozen("residual proj", &s, sh(3, 5, 5), 1);
  s.out = 3, s.stride = 1;
  test_accumulate_frozen("residual identity", &s, sh(3, 5, 5), 1);
}

static void test_dropout(void) {
  const int B = 4;
  const int64_t ids[4] = {5, 9, 2, 7};
  const int perm[4] = {2, 0, 3, 1};
  nn_layer_spec s = mk(NN_DROPOUT, "drop");
  s.p = 0.3f;
  for (int spatial = 0; spatial < 2; spatial++) {
    nn_shape in = spatial ? sh(3, 2, 4) : sh(24, 1, 1);
    fixture f;
    CHECK(fx_make(&f, &s, in, spatial, B, 77, &rng, 0.2f) == 0);
    const size_t per = 24, n = B * per;
    /* element (c, b, j) of sample b, in the layout */
    const size_t hw = spatial ? 8 : 1;
#define AT(b, j) (spatial ? (((j) / hw) * B + (b)) * hw + (j) % hw : (size_t)(b) * per + (j))
    float *x = malloc(n * 4), *xp = malloc(n * 4), *y1 = malloc(n * 4), *dx = malloc(n * 4);
    fill(x, n);
    for (int b = 0; b < B; b++)
      for (size_t j = 0; j < per; j++) xp[AT(b, j)] = x[AT(perm[b], j)];
    int64_t idp[4];
    for (int b = 0; b < B; b++) idp[b] = ids[perm[b]];

    nn_pass p = {.B = B, .training = 0, .key = 11, .ids = ids};
    nn_layer_forward(&f.L, x, &p);
    CHECK_MSG(memcmp(f.L.y, x, n * 4) == 0, "dropout eval is not the identity");
    nn_layer_backward(&f.L, x, x, dx, &p);
    CHECK_MSG(memcmp(dx, x, n * 4) == 0, "dropout eval backward is not the identity");

    p.training = 1;
    nn_layer_forward(&f.L, x, &p);
    memcpy(y1, f.L.y, n * 4);
    int kept = 0, scaled = 1;
    for (size_t i = 0; i < n; i++) {
      if (y1[i] != 0.0f) {
        kept++;
        scaled &= fabsf(y1[i] - x[i] / 0.7f) <= 1e-6f;
      }
    }
    CHECK(kept > 0 && kept < (int)n && scaled);
    nn_pass pp = {.B = B, .training = 1, .key = 11, .ids = idp};
    nn_layer_forward(&f.L, xp, &pp);
    int same = 1;
    for (int b = 0; b < B; b++)
      for (size_t j = 0; j < per; j++) same &= f.L.y[AT(b, j)] == y1[AT(perm[b], j)];
    CHECK_MSG(same, "dropout mask follows the row, not the sample id (spatial=%d)", spatial);
    pp.ids = NULL; /* row ids 0..3: other masks */
    nn_layer_forward(&f.L, x, &pp);
    CHECK(memcmp(f.L.y, y1, n * 4) != 0);
    p.key = 12;
    nn_layer_forward(&f.L, x, &p);
    CHECK(memcmp(f.L.y, y1, n * 4) != 0);
#undef AT
    free(x), free(xp), free(y1), free(dx);
    fx_free(&f);
  }

  /* the drop rate, and the same mask for a sample whether spatial or flat */
  nn_layer sp, fl;
  float *ws1, *ws2;
  const int B2 = 64;
  CHECK(nn_layer_setup(&sp, &s, sh(4, 8, 8), 1) == 0 && nn_layer_setup(&fl, &s, sh(256, 1, 1), 0) == 0);
  ws1 = malloc(nn_layer_ws_floats(&sp, B2) * 4);
  ws2 = malloc(nn_layer_ws_floats(&fl, B2) * 4);
  nn_layer_bind_ws(&sp, ws1, B2);
  nn_layer_bind_ws(&fl, ws2, B2);
  size_t n = (size_t)B2 * 256;
  float *ones = malloc(n * 4);
  for (size_t i = 0; i < n; i++) ones[i] = 1.0f;
  nn_pass p = {.B = B2, .training = 1, .key = 3};
  nn_layer_forward(&sp, ones, &p);
  nn_layer_forward(&fl, ones, &p);
  size_t dropped = 0;
  int match = 1;
  for (int b = 0; b < B2; b++)
    for (int c = 0; c < 4; c++)
      for (int j = 0; j < 64; j++) {
        float a = sp.y[((size_t)c * B2 + b) * 64 + j], f2 = fl.y[(size_t)b * 256 + c * 64 + j];
        match &= a == f2;
        dropped += a == 0.0f;
      }
  CHECK_MSG(match, "a sample's dropout mask differs between layouts");
  double rate = (double)dropped / (double)n;
  CHECK_MSG(fabs(rate - 0.3) < 0.02, "drop rate %g for p = 0.3", rate);
  free(ws1), free(ws2), free(ones);
}

/* Direct convolution on [c][B][h][w]: y, and from dy: dW, db, dx. */
static void conv_ref(const nn_layer *L, int B, const float *x, const float *dy, float *y, double *dW,
                     double *db, double *dx) {
  int C = L->in.c, H = L->in.h, W = L->in.w, O = L->out.c, OH = L->out.h, OW = L->out.w;
  int k = L->spec.k, s = L->spec.stride, pad = L->spec.pad;
  memset(dW, 0, L->w_len * sizeof *dW);
  memset(db, 0, (size_t)O * sizeof *db);
  memset(dx, 0, (size_t)C * B * H * W * sizeof *dx);
  for (int o = 0; o < O; o++)
    for (int b = 0; b < B; b++)
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          size_t yi = (((size_t)o * B + b) * OH + oy) * OW + ox;
          double acc = L->b ? L->b[o] : 0.0;
          double g = dy[yi];
          db[o] += g;
          for (int c = 0; c < C; c++)
            for (int kh = 0; kh < k; kh++)
              for (int kw = 0; kw < k; kw++) {
                int iy = oy * s - pad + kh, ix = ox * s - pad + kw;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                size_t xi = (((size_t)c * B + b) * H + iy) * W + ix;
                size_t wi = (((size_t)o * C + c) * k + kh) * k + kw;
                acc += (double)L->W[wi] * x[xi];
                dW[wi] += g * x[xi];
                dx[xi] += g * L->W[wi];
              }
          y[yi] = (float)acc;
        }
}

static double max_rel_d(const float *a, const double *b, size_t n) {
  double err = 0.0, scale = 1e-30;
  for (size_t i = 0; i < n; i++) {
    err = fmax(err, fabs(a[i] - b[i]));
    scale = fmax(scale, fabs(b[i]));
  }
  return err / scale;
}

static void conv_vs_ref(const char *label, nn_layer_spec s, nn_shape in, int max_batch, int B) {
  fixture f;
  CHECK(fx_make(&f, &s, in, 1, max_batch, 77, &rng, 0.2f) == 0);
  size_t nin = (size_t)B * nn_shape_numel(f.L.in), nout = (size_t)B * nn_shape_numel(f.L.out);
  float *x = malloc(nin * 4), *dy = malloc(nout * 4), *dx = malloc(nin * 4), *y = malloc(nout * 4);
  double *rdW = malloc(f.L.w_len * 8), *rdb = malloc((size_t)f.L.out.c * 8), *rdx = malloc(nin * 8);
  fill(x, nin);
  fill(dy, nout);
  nn_pass p = {.B = B};
  nn_layer_forward(&f.L, x, &p);
  conv_ref(&f.L, B, x, dy, y, rdW, rdb, rdx);
  CHECK_MSG(max_rel(f.L.y, y, nout) <= 1e-5, "%s: forward differs from the reference (%g)", label,
            max_rel(f.L.y, y, nout));
  memset(f.grads, 0, f.np * 4);
  nn_layer_backward(&f.L, x, dy, dx, &p);
  CHECK_MSG(max_rel_d(f.L.dW, rdW, f.L.w_len) <= 1e-5, "%s: dW differs (%g)", label,
            max_rel_d(f.L.dW, rdW, f.L.w_len));
  if (f.L.db) CHECK_MSG(max_rel_d(f.L.db, rdb, (size_t)f.L.out.c) <= 1e-5, "%s: db differs", label);
  CHECK_MSG(max_rel_d(dx, rdx, nin) <= 1e-5, "%s: dx differs (%g)", label, max_rel_d(dx, rdx, nin));
  free(x), free(dy), free(dx), free(y), free(rdW), free(rdb), free(rdx);
  fx_free(&f);
}

static void test_conv_reference(void) {
  nn_layer_spec s = mk(NN_CONV2D, "conv");
  s.out = 5, s.k = 3, s.pad = 1;
  /* 72 x 256 floats of col per sample: chunks of 3 samples, a short last one */
  conv_vs_ref("conv k3 p1 16x16 B16 (6 chunks)", s, sh(8, 16, 16), 16, 16);
  conv_vs_ref("conv k3 p1 16x16 B5 of 16", s, sh(8, 16, 16), 16, 5);
  /* rows of 12 (not a multiple of 8) with many samples per chunk */
  conv_vs_ref("conv k3 p1 12x12 B30 (2 chunks)", s, sh(2, 12, 12), 30, 30);
  s.k = 5, s.stride = 2, s.pad = 2, s.no_bias = 1;
  conv_vs_ref("conv k5 s2 p2 11x9", s, sh(3, 11, 9), 6, 6);
  s.k = 4, s.stride = 3, s.pad = 1, s.no_bias = 0;
  conv_vs_ref("conv k4 s3 p1 13x10", s, sh(2, 13, 10), 4, 3);
  s.k = 1, s.stride = 1, s.pad = 0;
  conv_vs_ref("conv 1x1", s, sh(6, 5, 7), 8, 7);
  s.k = 5, s.stride = 1, s.pad = 2, s.out = 32;
  conv_vs_ref("cnn conv2 shape, 2 samples", s, sh(16, 14, 14), 4, 2);
}

static void test_layouts(void) {
  const int B = 2;
  /* flatten: x[c][b][s] -> y[b][c*hw + s]; gap: y[b][c] = mean of the plane */
  nn_layer_spec s = mk(NN_FLATTEN, "flat");
  fixture f, g;
  CHECK(fx_make(&f, &s, sh(3, 2, 2), 1, B, 77, &rng, 0.2f) == 0);
  s = mk(NN_GAP, "gap");
  CHECK(fx_make(&g, &s, sh(3, 2, 2), 1, B, 77, &rng, 0.2f) == 0);
  float x[24];
  for (int i = 0; i < 24; i++) x[i] = (float)i; /* x[c][b][s] = 8c + 4b + s */
  nn_pass p = {.B = B};
  nn_layer_forward(&f.L, x, &p);
  nn_layer_forward(&g.L, x, &p);
  int ok = 1;
  for (int b = 0; b < B; b++)
    for (int c = 0; c < 3; c++) {
      for (int j = 0; j < 4; j++) ok &= f.L.y[b * 12 + c * 4 + j] == (float)(8 * c + 4 * b + j);
      ok &= g.L.y[b * 3 + c] == (float)(8 * c + 4 * b) + 1.5f;
    }
  CHECK_MSG(ok, "flatten/gap layout");
  fx_free(&f);
  fx_free(&g);

  /* maxpool 2x2 on [1][B][4][4]: picks window maxima per sample */
  s = mk(NN_MAXPOOL2D, "mp");
  s.k = 2;
  CHECK(fx_make(&f, &s, sh(1, 4, 4), 1, B, 77, &rng, 0.2f) == 0);
  float xm[32];
  for (int i = 0; i < 32; i++) xm[i] = (float)((i * 7) % 32);
  nn_layer_forward(&f.L, xm, &p);
  ok = 1;
  for (int b = 0; b < B; b++)
    for (int oy = 0; oy < 2; oy++)
      for (int ox = 0; ox < 2; ox++) {
        float m = -1.0f;
        for (int k = 0; k < 4; k++) m = fmaxf(m, xm[b * 16 + (2 * oy + k / 2) * 4 + 2 * ox + k % 2]);
        ok &= f.L.y[b * 4 + oy * 2 + ox] == m;
      }
  CHECK_MSG(ok, "maxpool values");
  fx_free(&f);

  /* groupnorm with gamma 1, beta 0: per (sample, group) zero mean and
   * variance var/(var + eps), eps = 1e-5 */
  s = mk(NN_GROUPNORM, "gn");
  s.groups = 2;
  const int B4 = 4;
  CHECK(fx_make(&f, &s, sh(4, 3, 3), 1, B4, 77, &rng, 0.2f) == 0);
  nn_layer_init(&f.L, 1, 0);
  float xg[4 * 4 * 9];
  for (int i = 0; i < 144; i++) xg[i] = 0.05f * urand(-2.0f, 3.0f) + (float)(i % 7) * 0.01f;
  nn_pass p4 = {.B = B4};
  nn_layer_forward(&f.L, xg, &p4);
  ok = 1;
  for (int b = 0; b < B4; b++)
    for (int grp = 0; grp < 2; grp++) {
      double m = 0, v = 0, mx = 0, vx = 0;
      for (int c = 2 * grp; c < 2 * grp + 2; c++)
        for (int j = 0; j < 9; j++) {
          m += f.L.y[((size_t)c * B4 + b) * 9 + j];
          mx += xg[((size_t)c * B4 + b) * 9 + j];
        }
      m /= 18, mx /= 18;
      for (int c = 2 * grp; c < 2 * grp + 2; c++)
        for (int j = 0; j < 9; j++) {
          v += pow(f.L.y[((size_t)c * B4 + b) * 9 + j] - m, 2);
          vx += pow(xg[((size_t)c * B4 + b) * 9 + j] - mx, 2);
        }
      v /= 18, vx /= 18;
      ok &= fabs(m) < 1e-5 && fabs(v - vx / (vx + 1e-5)) < 1e-5 && vx < 0.05;
    }
  CHECK_MSG(ok, "groupnorm statistics per sample and group");
  fx_free(&f);
}

static void test_init(void) {
  nn_layer_spec s = mk(NN_DENSE, "fc");
  s.out = 256;
  nn_layer a, b;
  CHECK(nn_layer_setup(&a, &s, sh(784, 1, 1), 0) == 0);
  size_t n = nn_layer_nparams(&a);
  float *pa = malloc(n * 4), *pb = malloc(n * 4);
  nn_layer_bind_params(&a, pa, NULL, 0);
  nn_layer_init(&a, 5, 1);
  double m2 = 0;
  for (size_t i = 0; i < a.w_len; i++) m2 += (double)a.W[i] * a.W[i];
  double sd = sqrt(m2 / a.w_len);
  CHECK_MSG(fabs(sd / sqrt(2.0 / 784) - 1.0) < 0.02, "He std %g", sd);
  int zero = 1;
  for (size_t i = 0; i < a.b_len; i++) zero &= a.b[i] == 0.0f;
  CHECK(zero);
  CHECK(nn_layer_setup(&b, &s, sh(784, 1, 1), 0) == 0);
  nn_layer_bind_params(&b, pb, NULL, 0);
  nn_layer_init(&b, 5, 1);
  CHECK(memcmp(pa, pb, n * 4) == 0);
  nn_layer_init(&b, 6, 1);
  CHECK(memcmp(pa, pb, n * 4) != 0);
  snprintf(s.name, sizeof s.name, "fc2");
  CHECK(nn_layer_setup(&b, &s, sh(784, 1, 1), 0) == 0);
  nn_layer_bind_params(&b, pb, NULL, 0);
  nn_layer_init(&b, 5, 1);
  CHECK(memcmp(pa, pb, n * 4) != 0);
  nn_layer_init(&b, 5, 0); /* Xavier-uniform */
  double lim = sqrt(6.0 / (784 + 256)), mx = 0;
  m2 = 0;
  for (size_t i = 0; i < b.w_len; i++) {
    mx = fmax(mx, fabs(b.W[i]));
    m2 += (double)b.W[i] * b.W[i];
  }
  CHECK(mx <= lim && mx > 0.99 * lim);
  CHECK_MSG(fabs(sqrt(m2 / b.w_len) / (lim / sqrt(3.0)) - 1.0) < 0.02, "Xavier std");
  free(pa), free(pb);

  s = mk(NN_RESIDUAL, "blk");
  s.out = 8, s.stride = 2;
  CHECK(nn_layer_setup(&a, &s, sh(4, 6, 6), 1) == 0);
  n = nn_layer_nparams(&a);
  pa = calloc(n, 4);
  nn_layer_bind_params(&a, pa, NULL, 0);
  nn_layer_init(&a, 5, 0);
  int ok = 1;
  for (int i = 0; i < a.nsub; i++) {
    const nn_layer *l = &a.sub[i];
    if (l->spec.op == NN_GROUPNORM)
      for (size_t j = 0; j < l->w_len; j++) ok &= l->W[j] == 1.0f && l->b[j] == 0.0f;
    if (l->spec.op == NN_CONV2D) {
      double q = 0;
      for (size_t j = 0; j < l->w_len; j++) q += (double)l->W[j] * l->W[j];
      double fan_in = (double)l->in.c * l->spec.k * l->spec.k;
      ok &= fabs(sqrt(q / l->w_len) / sqrt(2.0 / fan_in) - 1.0) < 0.25 && l->b == NULL;
    }
  }
  CHECK_MSG(ok, "residual init: He convs without bias, GN gamma 1 beta 0");
  free(pa);
  nn_layer_free(&a);
}

static void test_workspace(void) {
  nn_layer_spec s = mk(NN_RESIDUAL, "blk");
  s.out = 8, s.stride = 2;
  nn_layer L;
  CHECK(nn_layer_setup(&L, &s, sh(4, 9, 9), 1) == 0);
  size_t prev = 0;
  for (int B = 1; B <= 9; B++) {
    size_t n = nn_layer_ws_floats(&L, B);
    CHECK(n > prev && n % 16 == 0);
    prev = n;
  }
  float *ws = malloc(prev * 4);
  CHECK(nn_layer_bind_ws(&L, ws, 9) == prev);
  CHECK(L.y == ws && L.aux && L.scratch);
  for (int i = 0; i < L.nsub; i++) CHECK(L.sub[i].y >= L.scratch && L.sub[i].y < ws + prev);
  free(ws);
  nn_layer_free(&L);
}

int main(void) {
  nn_rng_seed(&rng, 4242);
  test_names();
  test_shapes();
  test_errors();
  test_accumulate();
  test_dropout();
  test_conv_reference();
  test_layouts();
  test_init();
  test_workspace();
  return check_report();
}
