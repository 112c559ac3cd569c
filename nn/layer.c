/* Layer registry and plumbing: the op name table, shape rules and validation
 * (nn_layer_setup), parameter and workspace sizing/binding, seeded
 * initialisation, and the forward/backward switch over the per-op kernels in
 * nn/layer_*.c. */
#include "layer.h"

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "layer_ops.h"
#include "rng.h"

const char *const nn_op_names[NN_OP_COUNT] = {
    [NN_DENSE] = "dense",         [NN_CONV2D] = "conv",     [NN_MAXPOOL2D] = "maxpool",
    [NN_AVGPOOL2D] = "avgpool",   [NN_GAP] = "gap",         [NN_RELU] = "relu",
    [NN_GELU] = "gelu",           [NN_TANH] = "tanh",       [NN_SIGMOID] = "sigmoid",
    [NN_DROPOUT] = "dropout",     [NN_FLATTEN] = "flatten", [NN_GROUPNORM] = "groupnorm",
    [NN_RESIDUAL] = "residual",   [NN_GRL] = "grl",
};
static_assert(sizeof nn_op_names / sizeof nn_op_names[0] == NN_OP_COUNT,
              "nn_op_names needs one name per nn_op");
static_assert(NN_OP_COUNT == 14, "a new op needs a name, a shape rule, kernels and a gradient check");

int nn_op_from_name(const char *s) {
  if (!s) return -1;
  for (int i = 0; i < NN_OP_COUNT; i++)
    if (nn_op_names[i] && strcmp(s, nn_op_names[i]) == 0) return i;
  return -1;
}

/* "spatial 16x14x14" or "flat 784", for messages. */
static const char *shape_str(char *buf, size_t n, nn_shape s, int spatial) {
  if (spatial)
    snprintf(buf, n, "spatial %dx%dx%d", s.c, s.h, s.w);
  else
    snprintf(buf, n, "flat %d", s.c);
  return buf;
}

/* Output extent of a window sweep; < 1 when the window does not fit. */
static int sweep_out(int n, int k, int stride, int pad) { return (n + 2 * pad - k) / stride + 1; }

static int setup_conv(nn_layer *L, const char *nm, const char *ins) {
  nn_layer_spec *s = &L->spec;
  CHECK_USER(L->in_spatial, "layer '%s': conv needs a spatial input (c x h x w), found %s", nm, ins);
  CHECK_USER(s->out > 0, "layer '%s': conv needs out > 0 channels, found %d", nm, s->out);
  CHECK_USER(s->k > 0, "layer '%s': conv needs a kernel size k > 0, found %d", nm, s->k);
  CHECK_USER(s->stride >= 0, "layer '%s': conv stride must be >= 1, found %d", nm, s->stride);
  CHECK_USER(s->pad >= 0, "layer '%s': conv pad must be >= 0, found %d", nm, s->pad);
  if (s->stride == 0) s->stride = 1;
  CHECK_USER(L->in.h + 2 * s->pad >= s->k && L->in.w + 2 * s->pad >= s->k,
             "layer '%s': conv kernel %d with pad %d needs an input of at least %dx%d, found %s",
             nm, s->k, s->pad, s->k - 2 * s->pad, s->k - 2 * s->pad, ins);
  L->out = (nn_shape){s->out, sweep_out(L->in.h, s->k, s->stride, s->pad),
                      sweep_out(L->in.w, s->k, s->stride, s->pad)};
  L->out_spatial = 1;
  L->w_len = (size_t)s->out * L->in.c * s->k * s->k;
  L->b_len = s->no_bias ? 0 : (size_t)s->out;
  return 0;
}

static int setup_pool(nn_layer *L, const char *nm, const char *ins) {
  nn_layer_spec *s = &L->spec;
  const char *op = nn_op_names[s->op];
  CHECK_USER(L->in_spatial, "layer '%s': %s needs a spatial input (c x h x w), found %s", nm, op, ins);
  CHECK_USER(s->k > 0, "layer '%s': %s needs a kernel size k > 0, found %d", nm, op, s->k);
  CHECK_USER(s->stride >= 0, "layer '%s': %s stride must be >= 1, found %d", nm, op, s->stride);
  CHECK_USER(s->pad == 0, "layer '%s': %s takes no padding, found pad %d", nm, op, s->pad);
  if (s->stride == 0) s->stride = s->k;
  CHECK_USER(L->in.h >= s->k && L->in.w >= s->k,
             "layer '%s': %s kernel %d needs an input of at least %dx%d, found %s", nm, op, s->k,
             s->k, s->k, ins);
  L->out = (nn_shape){L->in.c, sweep_out(L->in.h, s->k, s->stride, 0),
                      sweep_out(L->in.w, s->k, s->stride, 0)};
  L->out_spatial = 1;
  return 0;
}

/* Default groups: the largest divisor of c not above 8 (16 -> 8, 12 -> 6,
 * 3 -> 3), so small trunks get a few channels per group. */
int nn_groupnorm_default_groups(int c) {
  int g = c < 8 ? c : 8;
  while (c % g) g--;
  return g;
}

static int setup_op(nn_layer *L, const char *nm, const char *ins) {
  nn_layer_spec *s = &L->spec;
  switch (s->op) {
  case NN_DENSE:
    CHECK_USER(!L->in_spatial, "layer '%s': dense needs a flat input, found %s; add a flatten",
               nm, ins);
    CHECK_USER(s->out > 0, "layer '%s': dense needs out > 0 units, found %d", nm, s->out);
    L->out = (nn_shape){s->out, 1, 1};
    L->w_len = (size_t)s->out * L->in.c;
    L->b_len = s->no_bias ? 0 : (size_t)s->out;
    return 0;
  case NN_CONV2D:
    return setup_conv(L, nm, ins);
  case NN_MAXPOOL2D:
  case NN_AVGPOOL2D:
    return setup_pool(L, nm, ins);
  case NN_GAP:
    CHECK_USER(L->in_spatial, "layer '%s': gap needs a spatial input (c x h x w), found %s", nm, ins);
    L->out = (nn_shape){L->in.c, 1, 1};
    L->out_spatial = 0;
    return 0;
  case NN_FLATTEN:
    L->out = (nn_shape){(int)nn_shape_numel(L->in), 1, 1};
    L->out_spatial = 0;
    return 0;
  case NN_DROPOUT:
    CHECK_USER(s->p >= 0.0f && s->p < 1.0f,
               "layer '%s': dropout probability p must be in [0, 1), found %g", nm, (double)s->p);
    return 0;
  case NN_GROUPNORM:
    CHECK_USER(s->groups >= 0, "layer '%s': groupnorm groups must be >= 1 (0 = default), found %d",
               nm, s->groups);
    if (s->groups == 0) s->groups = nn_groupnorm_default_groups(L->in.c);
    CHECK_USER(L->in.c % s->groups == 0,
               "layer '%s': groupnorm groups must divide the channels: %d groups, found %d channels (%s)",
               nm, s->groups, L->in.c, ins);
    L->w_len = (size_t)L->in.c; /* gamma */
    L->b_len = (size_t)L->in.c; /* beta */
    return 0;
  case NN_RESIDUAL:
    CHECK_USER(L->in_spatial, "layer '%s': residual needs a spatial input (c x h x w), found %s",
               nm, ins);
    CHECK_USER(s->out >= 0, "layer '%s': residual out channels must be >= 1 (0 = same as input), found %d",
               nm, s->out);
    CHECK_USER(s->stride >= 0, "layer '%s': residual stride must be >= 1, found %d", nm, s->stride);
    CHECK_USER(s->k == 0 || s->k == 3,
               "layer '%s': a residual block uses 3x3 convs (k 3 or unset), found k %d", nm, s->k);
    if (s->out == 0) s->out = L->in.c;
    if (s->stride == 0) s->stride = 1;
    L->out = (nn_shape){s->out, sweep_out(L->in.h, 3, s->stride, 1),
                        sweep_out(L->in.w, 3, s->stride, 1)};
    L->out_spatial = 1;
    CHECK_CALL(nn_residual_setup(L));
    L->w_len = nn_layer_nparams(L);
    return 0;
  case NN_RELU:
  case NN_GELU:
  case NN_TANH:
  case NN_SIGMOID:
  case NN_GRL:
    return 0;
  case NN_OP_COUNT:
    break;
  }
  FERRY_FAIL(FERRY_EUSER, "layer '%s': unknown op %d", nm, (int)s->op);
}

/* L is overwritten (it must not hold sub-layers from an earlier setup). */
int nn_layer_setup(nn_layer *L, const nn_layer_spec *spec, nn_shape in, int in_spatial) {
  memset(L, 0, sizeof *L);
  L->spec = *spec;
  L->spec.name[NN_NAME_MAX - 1] = '\0';
  L->group = -1;
  CHECK_USER(spec->op >= 0 && spec->op < NN_OP_COUNT, "layer '%s': unknown op %d", L->spec.name,
             (int)spec->op);
  if (!L->spec.name[0]) snprintf(L->spec.name, NN_NAME_MAX, "%s", nn_op_names[spec->op]);
  const char *nm = L->spec.name;
  char ins[64];
  shape_str(ins, sizeof ins, in, in_spatial);
  CHECK_USER(in.c > 0 && in.h > 0 && in.w > 0, "layer '%s': %s input must have positive sizes, found %s",
             nm, nn_op_names[spec->op], ins);
  CHECK_USER(in_spatial || (in.h == 1 && in.w == 1),
             "layer '%s': a flat input has h = w = 1, found %dx%dx%d", nm, in.c, in.h, in.w);
  CHECK_USER(nn_shape_numel(in) <= INT_MAX / 4, "layer '%s': input %s is too large", nm, ins);
  L->in = in;
  L->in_spatial = in_spatial;
  L->out = in;
  L->out_spatial = in_spatial;
  CHECK_CALL(setup_op(L, nm, ins));
  char outs[64];
  CHECK_USER(L->out.c > 0 && L->out.h > 0 && L->out.w > 0 && nn_shape_numel(L->out) <= INT_MAX / 4,
             "layer '%s': %s on %s gives an invalid output %s", nm, nn_op_names[spec->op], ins,
             shape_str(outs, sizeof outs, L->out, L->out_spatial));
  return 0;
}

static size_t aux_floats(const nn_layer *L, int B) {
  switch (L->spec.op) {
  case NN_CONV2D:
    return nn_conv_aux_floats(L, B);
  case NN_MAXPOOL2D:
    return (size_t)B * nn_shape_numel(L->out); /* argmax per output, see layer_pool.c */
  case NN_GROUPNORM:
    return 2 * (size_t)B * L->spec.groups; /* mean, rstd */
  case NN_DROPOUT:
    return (size_t)B * nn_shape_numel(L->in); /* mask: 0 or 1/(1-p) */
  case NN_RESIDUAL:
    return 3 * nn_al16((size_t)B * nn_shape_numel(L->out)); /* gradient temporaries */
  default:
    return 0;
  }
}

size_t nn_layer_ws_floats(const nn_layer *L, int B) {
  size_t n = nn_al16((size_t)B * nn_shape_numel(L->out)) + nn_al16(aux_floats(L, B));
  if (L->spec.op == NN_RESIDUAL) n += nn_residual_scratch_floats(L, B);
  return n;
}

size_t nn_layer_bind_ws(nn_layer *L, float *ws, int B) {
  size_t off = 0;
  L->y = ws;
  off += nn_al16((size_t)B * nn_shape_numel(L->out));
  L->aux_len = aux_floats(L, B);
  L->aux = L->aux_len ? ws + off : NULL;
  off += nn_al16(L->aux_len);
  L->scratch = NULL;
  if (L->spec.op == NN_RESIDUAL) {
    L->scratch = ws + off;
    off += nn_residual_scratch_floats(L, B);
    nn_residual_bind_scratch(L, B);
  }
  return off;
}

/* A residual's sub-layers are laid out one after another, each starting at a
 * 16-float boundary relative to the block start. */
size_t nn_layer_nparams(const nn_layer *L) {
  if (L->spec.op != NN_RESIDUAL) return L->w_len + L->b_len;
  size_t n = 0;
  for (int i = 0; i < L->nsub; i++) n = nn_al16(n) + nn_layer_nparams(&L->sub[i]);
  return n;
}

/* For a residual, W/dW span the parameters of all its sub-layers (w_len
 * floats, including inner padding) and b/db are NULL, so a caller that
 * treats a layer as one parameter range sees the whole block. */
size_t nn_layer_bind_params(nn_layer *L, float *params, float *grads, size_t off) {
  L->p_off = off;
  if (L->spec.op == NN_RESIDUAL) {
    size_t n = 0;
    for (int i = 0; i < L->nsub; i++) {
      n = nn_al16(n);
      n += nn_layer_bind_params(&L->sub[i], params, grads, off + n);
    }
    L->w_len = n;
    L->b_len = 0;
    L->W = n ? params + off : NULL;
    L->dW = n && grads ? grads + off : NULL;
    L->b = L->db = NULL;
    return n;
  }
  L->W = L->w_len ? params + off : NULL;
  L->dW = L->w_len && grads ? grads + off : NULL;
  L->b = L->b_len ? params + off + L->w_len : NULL;
  L->db = L->b_len && grads ? grads + off + L->w_len : NULL;
  return L->w_len + L->b_len;
}

const char *const nn_init_names[NN_INIT_COUNT] = {"torch", "he", "xavier"};

static void init_weights(nn_layer *L, nn_rng *r, int fan_in, int fan_out, int relu_next,
                         nn_init_scheme scheme) {
  if (scheme == NN_INIT_TORCH) {
    double a = 1.0 / sqrt((double)fan_in);
    for (size_t i = 0; i < L->w_len; i++) L->W[i] = (float)(a * (2.0 * nn_rng_uniform(r) - 1.0));
    for (size_t i = 0; L->b && i < L->b_len; i++)
      L->b[i] = (float)(a * (2.0 * nn_rng_uniform(r) - 1.0));
    return;
  }
  if (relu_next && scheme == NN_INIT_HE) {
    double sd = sqrt(2.0 / fan_in);
    for (size_t i = 0; i < L->w_len; i++) L->W[i] = (float)(sd * nn_rng_normal(r));
  } else {
    double a = sqrt(6.0 / (fan_in + fan_out));
    for (size_t i = 0; i < L->w_len; i++) L->W[i] = (float)(a * (2.0 * nn_rng_uniform(r) - 1.0));
  }
  if (L->b) memset(L->b, 0, L->b_len * sizeof *L->b);
}

void nn_layer_init_scheme(nn_layer *L, uint64_t seed, int relu_next, nn_init_scheme scheme) {
  nn_rng r;
  nn_rng_seed(&r, nn_key(seed, nn_hash_str(L->spec.name)));
  const nn_layer_spec *s = &L->spec;
  switch (s->op) {
  case NN_DENSE:
    init_weights(L, &r, L->in.c, L->out.c, relu_next, scheme);
    break;
  case NN_CONV2D:
    init_weights(L, &r, L->in.c * s->k * s->k, s->out * s->k * s->k, relu_next, scheme);
    break;
  case NN_GROUPNORM:
    for (size_t i = 0; i < L->w_len; i++) L->W[i] = 1.0f;
    memset(L->b, 0, L->b_len * sizeof *L->b);
    break;
  case NN_RESIDUAL:
    /* Every conv in the block feeds (through a GN) a ReLU. */
    for (int i = 0; i < L->nsub; i++) nn_layer_init_scheme(&L->sub[i], seed, 1, scheme);
    break;
  default:
    break;
  }
}

void nn_layer_init(nn_layer *L, uint64_t seed, int relu_next) {
  nn_layer_init_scheme(L, seed, relu_next, NN_INIT_HE);
}

void nn_layer_forward(nn_layer *L, const float *x, const nn_pass *p) {
  int B = p->B;
  switch (L->spec.op) {
  case NN_DENSE: nn_dense_forward(L, x, B); break;
  case NN_CONV2D: nn_conv_forward(L, x, B); break;
  case NN_MAXPOOL2D: nn_maxpool_forward(L, x, B); break;
  case NN_AVGPOOL2D: nn_avgpool_forward(L, x, B); break;
  case NN_GAP: nn_gap_forward(L, x, B); break;
  case NN_RELU:
  case NN_GELU:
  case NN_TANH:
  case NN_SIGMOID:
  case NN_GRL: nn_act_forward(L, x, B); break;
  case NN_DROPOUT: nn_dropout_forward(L, x, p); break;
  case NN_FLATTEN: nn_flatten_forward(L, x, B); break;
  case NN_GROUPNORM: nn_groupnorm_forward(L, x, B); break;
  case NN_RESIDUAL: nn_residual_forward(L, x, p); break;
  case NN_OP_COUNT: break;
  }
}

void nn_layer_backward(nn_layer *L, const float *x, const float *dy, float *dx, const nn_pass *p) {
  int B = p->B;
  switch (L->spec.op) {
  case NN_DENSE: nn_dense_backward(L, x, dy, dx, B); break;
  case NN_CONV2D: nn_conv_backward(L, x, dy, dx, B, 0); break;
  case NN_MAXPOOL2D: if (dx) nn_maxpool_backward(L, dy, dx, B); break;
  case NN_AVGPOOL2D: if (dx) nn_avgpool_backward(L, dy, dx, B); break;
  case NN_GAP: if (dx) nn_gap_backward(L, dy, dx, B); break;
  case NN_RELU:
  case NN_GELU:
  case NN_TANH:
  case NN_SIGMOID:
  case NN_GRL: if (dx) nn_act_backward(L, x, dy, dx, B); break;
  case NN_DROPOUT: if (dx) nn_dropout_backward(L, dy, dx, p); break;
  case NN_FLATTEN: if (dx) nn_flatten_backward(L, dy, dx, B); break;
  case NN_GROUPNORM: nn_groupnorm_backward(L, x, dy, dx, B); break;
  case NN_RESIDUAL: nn_residual_backward(L, x, dy, dx, p); break;
  case NN_OP_COUNT: break;
  }
}

void nn_layer_free(nn_layer *L) {
  if (!L || !L->sub) return;
  for (int i = 0; i < L->nsub; i++) nn_layer_free(&L->sub[i]);
  free(L->sub);
  L->sub = NULL;
  L->nsub = L->nbody = 0;
}
