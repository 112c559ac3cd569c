/* Residual basic block on [c][B][h][w]:
 *   y = relu(body(x) + shortcut(x)),
 *   body = conv3x3(stride s, pad 1) - GN - relu - conv3x3(pad 1) - GN,
 *   shortcut = x, or conv1x1(stride s) - GN when channels or stride change.
 * The convs have no bias (the GN after each makes one redundant). The GN
 * layers take the block's spec.groups (0 = default). Sub-layers are ordinary
 * layers named "<name>.conv1", ".gn1", ".relu1", ".conv2", ".gn2", ".proj",
 * ".proj_gn"; their workspaces live in the block's scratch and the block's
 * aux holds three gradient temporaries of the output size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "layer_ops.h"

enum { R_CONV1, R_GN1, R_RELU1, R_CONV2, R_GN2, R_PROJ, R_PROJ_GN, R_MAX };
static const char *const sub_suffix[R_MAX] = {".conv1", ".gn1", ".relu1", ".conv2",
                                              ".gn2",   ".proj", ".proj_gn"};

static nn_layer_spec sub_spec(const nn_layer *L, int i) {
  nn_layer_spec s = {0};
  snprintf(s.name, NN_NAME_MAX, "%s%s", L->spec.name, sub_suffix[i]);
  switch (i) {
  case R_CONV1:
  case R_CONV2:
  case R_PROJ:
    s.op = NN_CONV2D;
    s.out = L->spec.out;
    s.k = i == R_PROJ ? 1 : 3;
    s.pad = i == R_PROJ ? 0 : 1;
    s.stride = i == R_CONV2 ? 1 : L->spec.stride;
    s.no_bias = 1;
    break;
  case R_RELU1:
    s.op = NN_RELU;
    break;
  default:
    s.op = NN_GROUPNORM;
    s.groups = L->spec.groups;
    break;
  }
  return s;
}

static int setup_subs(nn_layer *L) {
  nn_shape h = L->in;
  for (int i = 0; i < L->nsub; i++) {
    nn_layer_spec s = sub_spec(L, i);
    if (i == R_PROJ) h = L->in;
    CHECK_CALL(nn_layer_setup(&L->sub[i], &s, h, 1));
    h = L->sub[i].out;
  }
  for (int i = 0; i < L->nsub; i++) {
    const nn_layer *e = &L->sub[i];
    if (i != R_GN2 && i != R_PROJ_GN) continue;
    CHECK_RT(e->out.c == L->out.c && e->out.h == L->out.h && e->out.w == L->out.w,
             "layer '%s': internal shape mismatch at %s", L->spec.name, e->spec.name);
  }
  return 0;
}

int nn_residual_setup(nn_layer *L) {
  const char *nm = L->spec.name;
  CHECK_USER(strlen(nm) + strlen(".proj_gn") < NN_NAME_MAX,
             "layer '%s': residual name too long for its sub-layer names (at most %d characters, "
             "found %zu)",
             nm, NN_NAME_MAX - 1 - (int)strlen(".proj_gn"), strlen(nm));
  int proj = L->spec.out != L->in.c || L->spec.stride != 1;
  L->nbody = R_GN2 + 1;
  L->nsub = proj ? R_MAX : L->nbody;
  L->sub = calloc((size_t)L->nsub, sizeof *L->sub);
  CHECK_ALLOC(L->sub, (size_t)L->nsub * sizeof *L->sub);
  int rc = setup_subs(L);
  if (rc) {
    nn_layer_free(L);
    ferry_err_trace(__FILE__, __LINE__, __func__);
  }
  return rc;
}

size_t nn_residual_scratch_floats(const nn_layer *L, int B) {
  size_t n = 0;
  for (int i = 0; i < L->nsub; i++) n += nn_layer_ws_floats(&L->sub[i], B);
  return n;
}

void nn_residual_bind_scratch(nn_layer *L, int B) {
  size_t off = 0;
  for (int i = 0; i < L->nsub; i++) off += nn_layer_bind_ws(&L->sub[i], L->scratch + off, B);
}

void nn_residual_forward(nn_layer *L, const float *x, const nn_pass *p) {
  const float *h = x;
  for (int i = 0; i < L->nbody; i++) {
    nn_layer_forward(&L->sub[i], h, p);
    h = L->sub[i].y;
  }
  const float *sc = x;
  if (L->nsub > L->nbody) {
    nn_layer_forward(&L->sub[R_PROJ], x, p);
    nn_layer_forward(&L->sub[R_PROJ_GN], L->sub[R_PROJ].y, p);
    sc = L->sub[R_PROJ_GN].y;
  }
  const size_t n = (size_t)p->B * nn_shape_numel(L->out);
  float *restrict y = L->y;
  const float *restrict hb = h, *restrict sb = sc;
  for (size_t i = 0; i < n; i++) {
    float v = hb[i] + sb[i];
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

void nn_residual_backward(nn_layer *L, const float *x, const float *dy, float *dx,
                          const nn_pass *p) {
  if (L->frozen && !dx) return;
  for (int i = 0; i < L->nsub; i++) L->sub[i].frozen = L->frozen;
  nn_layer *s = L->sub;
  const size_t n = (size_t)p->B * nn_shape_numel(L->out), stride = L->aux_len / 3;
  float *dz = L->aux, *t1 = L->aux + stride, *t2 = L->aux + 2 * stride;
  {
    const float *restrict y = L->y, *restrict g = dy;
    float *restrict z = dz;
    for (size_t i = 0; i < n; i++) z[i] = y[i] > 0.0f ? g[i] : 0.0f;
  }
  nn_layer_backward(&s[R_GN2], s[R_CONV2].y, dz, t1, p);
  nn_layer_backward(&s[R_CONV2], s[R_RELU1].y, t1, t2, p);
  nn_layer_backward(&s[R_RELU1], s[R_GN1].y, t2, t1, p);
  nn_layer_backward(&s[R_GN1], s[R_CONV1].y, t1, t2, p);
  nn_conv_backward(&s[R_CONV1], x, t2, dx, p->B, 0);
  if (L->nsub > L->nbody) {
    nn_layer_backward(&s[R_PROJ_GN], s[R_PROJ].y, dz, t1, p);
    nn_conv_backward(&s[R_PROJ], x, t1, dx, p->B, 1);
  } else if (dx) {
    float *restrict d = dx;
    const float *restrict z = dz;
    for (size_t i = 0; i < n; i++) d[i] += z[i];
  }
}
