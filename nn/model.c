/* Model = trunk + named heads over one parameter slab, one gradient slab and
 * one activation workspace (nn/model.h). Forward is a flat walk of each stack;
 * backward walks it in reverse with two ping-pong gradient buffers and stops
 * as soon as nothing earlier trains. */
/* MADV_HUGEPAGE is Linux, beyond the POSIX set the build asks for. */
#define _DEFAULT_SOURCE
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "err.h"
#include "rng.h"

#define ALIGN_FLOATS 16

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Zeroed, 64-byte aligned. Slabs of 256 KiB or more are 2 MiB aligned and
 * advised as huge pages before first touch: the kernel then pins far fewer
 * pages when MPI copies gradients between processes (measured in
 * dist/grad_sync.c's overlap bench: sync overhead 1.11-1.16x -> 1.03-1.06x). */
static void *alloc_floats(size_t n) {
  size_t bytes = round_up((n ? n : 1) * sizeof(float), 64);
  size_t align = 64;
  if (bytes >= ((size_t)256 << 10)) {
    align = (size_t)2 << 20;
    bytes = round_up(bytes, align);
  }
  float *p = aligned_alloc(align, bytes);
#ifdef MADV_HUGEPAGE
  if (p && align > 64) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  if (p) memset(p, 0, bytes);
  return p;
}

/* Default names: op + running count of that op in its stack (conv1, relu2). */
static void name_layers(nn_stack_spec *s) {
  int count[NN_OP_COUNT] = {0};
  for (int i = 0; i < s->nlayers; i++) {
    nn_layer_spec *l = &s->layers[i];
    count[l->op]++;
    if (!l->name[0]) snprintf(l->name, sizeof l->name, "%s%d", nn_op_names[l->op], count[l->op]);
  }
}

static int build_stack(nn_stack *st, nn_stack_spec *ss, nn_shape in, int in_spatial,
                       const char *what, nn_shape *out, int *out_spatial) {
  snprintf(st->name, sizeof st->name, "%s", ss->name);
  st->nlayers = ss->nlayers;
  st->layers = calloc((size_t)(ss->nlayers ? ss->nlayers : 1), sizeof(nn_layer));
  CHECK_ALLOC(st->layers, sizeof(nn_layer) * (size_t)ss->nlayers);
  name_layers(ss);
  for (int i = 0; i < ss->nlayers; i++) {
    for (int j = 0; j < i; j++)
      CHECK_USER(strcmp(ss->layers[i].name, ss->layers[j].name) != 0,
                 "%s: two layers are named '%s'", what, ss->layers[i].name);
    int rc = nn_layer_setup(&st->layers[i], &ss->layers[i], in, in_spatial);
    if (rc) {
      ferry_err_trace(__FILE__, __LINE__, what);
      return rc;
    }
    in = st->layers[i].out;
    in_spatial = st->layers[i].out_spatial;
  }
  *out = in;
  *out_spatial = in_spatial;
  return 0;
}

static int is_relu_like(const nn_stack *st, int i) {
  for (int j = i + 1; j < st->nlayers; j++) {
    nn_op op = st->layers[j].spec.op;
    if (op == NN_RELU || op == NN_GELU) return 1;
    if (op != NN_GROUPNORM && op != NN_DROPOUT) return 0;
  }
  return 0;
}

static int stack_trainable(const nn_stack *st) {
  for (int i = 0; i < st->nlayers; i++)
    if (st->layers[i].group >= 0 && !st->layers[i].frozen) return 1;
  return 0;
}

static void set_layer_frozen(nn_layer *L, int frozen) {
  L->frozen = frozen;
  for (int i = 0; i < L->nsub; i++) set_layer_frozen(&L->sub[i], frozen);
}

/* need_dx of layer i: some earlier layer of the stack trains, or (for heads)
 * the trunk trains and so needs the feature gradient. */
static void update_need_dx(nn_model *m) {
  int trunk_trains = stack_trainable(&m->trunk);
  int upstream = 0;
  for (int i = 0; i < m->trunk.nlayers; i++) {
    nn_layer *L = &m->trunk.layers[i];
    L->need_dx = upstream;
    if (L->group >= 0 && !L->frozen) upstream = 1;
  }
  for (int h = 0; h < m->nheads; h++) {
    upstream = trunk_trains;
    for (int i = 0; i < m->heads[h].nlayers; i++) {
      nn_layer *L = &m->heads[h].layers[i];
      L->need_dx = upstream;
      if (L->group >= 0 && !L->frozen) upstream = 1;
    }
  }
}

static size_t stack_bind_params(nn_model *m, nn_stack *st, int stack_idx, size_t off,
                                int count_only) {
  for (int i = 0; i < st->nlayers; i++) {
    nn_layer *L = &st->layers[i];
    size_t n = nn_layer_nparams(L);
    L->group = -1;
    if (n == 0) continue;
    off = round_up(off, ALIGN_FLOATS);
    if (!count_only) {
      nn_layer_bind_params(L, m->params, m->grads, off);
      nn_param_group *g = &m->groups[m->ngroups];
      if (stack_idx < 0)
        snprintf(g->name, sizeof g->name, "trunk.%s", L->spec.name);
      else
        snprintf(g->name, sizeof g->name, "head.%s.%s", st->name, L->spec.name);
      g->off = off;
      g->len = n;
      g->lr_mult = 1.0f;
      g->frozen = 0;
      g->stack = stack_idx;
      g->layer = i;
      L->group = m->ngroups++;
    } else {
      m->ngroups++;
    }
    off += n;
  }
  return off;
}

static size_t stack_ws(const nn_stack *st, int B, size_t *max_act, int count_in) {
  size_t total = 0;
  for (int i = 0; i < st->nlayers; i++) {
    const nn_layer *L = &st->layers[i];
    total += round_up(nn_layer_ws_floats(L, B), ALIGN_FLOATS);
    size_t a = (size_t)B * nn_shape_numel(L->out);
    size_t b = (size_t)B * nn_shape_numel(L->in);
    if (a > *max_act) *max_act = a;
    if (count_in && b > *max_act) *max_act = b;
  }
  return total;
}

static float *stack_bind_ws(nn_stack *st, float *ws, int B) {
  for (int i = 0; i < st->nlayers; i++) {
    size_t used = nn_layer_bind_ws(&st->layers[i], ws, B);
    ws += round_up(used, ALIGN_FLOATS);
  }
  return ws;
}

int nn_model_new(nn_model **out, const nn_model_spec *spec, int max_batch) {
  *out = NULL;
  CHECK_USER(max_batch >= 1, "model: batch size must be at least 1, found %d", max_batch);
  CHECK_USER(spec->nheads >= 1 && spec->nheads <= NN_MAX_HEADS,
             "model: expected 1 to %d heads, found %d", NN_MAX_HEADS, spec->nheads);
  CHECK_USER(spec->in.c > 0 && spec->in.h > 0 && spec->in.w > 0,
             "model: input shape %dx%dx%d is not positive", spec->in.c, spec->in.h, spec->in.w);
  nn_model *m = calloc(1, sizeof *m);
  CHECK_ALLOC(m, sizeof *m);
  m->spec = *spec;
  m->max_batch = max_batch;
  int rc = 0, fs = 0;
  if (!m->spec.trunk.name[0]) snprintf(m->spec.trunk.name, sizeof m->spec.trunk.name, "trunk");
  rc = build_stack(&m->trunk, &m->spec.trunk, spec->in, spec->in_spatial, "model.trunk",
                   &m->feat, &fs);
  if (rc) goto fail;
  if (fs) {
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "model.trunk: heads need flat features, but the trunk ends with a "
                       "spatial %dx%dx%d output; end the trunk with flatten or gap",
                       m->feat.c, m->feat.h, m->feat.w);
    goto fail;
  }
  m->nheads = spec->nheads;
  for (int h = 0; h < m->nheads; h++) {
    char what[NN_NAME_MAX + 16];
    snprintf(what, sizeof what, "model.heads.%s", m->spec.heads[h].name);
    for (int j = 0; j < h; j++)
      if (strcmp(m->spec.heads[h].name, m->spec.heads[j].name) == 0) {
        rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                           "model.heads: two heads are named '%s'", m->spec.heads[h].name);
        goto fail;
      }
    if (m->spec.heads[h].nlayers < 1) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s: a head needs at least one layer", what);
      goto fail;
    }
    nn_shape ho;
    int hs = 0;
    rc = build_stack(&m->heads[h], &m->spec.heads[h], m->feat, 0, what, &ho, &hs);
    if (rc) goto fail;
    if (hs) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s: a head must end with a flat output, found spatial %dx%dx%d",
                         what, ho.c, ho.h, ho.w);
      goto fail;
    }
  }
  /* Parameters: count, allocate, bind. */
  m->ngroups = 0;
  size_t n = stack_bind_params(m, &m->trunk, -1, 0, 1);
  for (int h = 0; h < m->nheads; h++) n = stack_bind_params(m, &m->heads[h], h, n, 1);
  m->nparams = round_up(n, ALIGN_FLOATS);
  m->params = alloc_floats(m->nparams);
  m->grads = alloc_floats(m->nparams);
  m->groups = calloc((size_t)(m->ngroups ? m->ngroups : 1), sizeof(nn_param_group));
  if (!m->params || !m->grads || !m->groups) {
    rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                       "out of memory allocating %zu parameters", m->nparams);
    goto fail;
  }
  m->ngroups = 0;
  n = stack_bind_params(m, &m->trunk, -1, 0, 0);
  for (int h = 0; h < m->nheads; h++) n = stack_bind_params(m, &m->heads[h], h, n, 0);
  /* Workspace and gradient buffers. */
  size_t max_act = (size_t)max_batch * nn_shape_numel(spec->in);
  size_t ws = stack_ws(&m->trunk, max_batch, &max_act, 1);
  for (int h = 0; h < m->nheads; h++) ws += stack_ws(&m->heads[h], max_batch, &max_act, 1);
  m->ws_len = ws;
  m->ws = alloc_floats(ws);
  m->gbuf[0] = alloc_floats(max_act);
  m->gbuf[1] = alloc_floats(max_act);
  m->dfeat = alloc_floats((size_t)max_batch * m->feat.c);
  m->dfeat_tmp = alloc_floats((size_t)max_batch * m->feat.c);
  if (!m->ws || !m->gbuf[0] || !m->gbuf[1] || !m->dfeat || !m->dfeat_tmp) {
    rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                       "out of memory allocating a %zu-float workspace for batch %d", ws,
                       max_batch);
    goto fail;
  }
  float *w = stack_bind_ws(&m->trunk, m->ws, max_batch);
  for (int h = 0; h < m->nheads; h++) w = stack_bind_ws(&m->heads[h], w, max_batch);
  update_need_dx(m);
  *out = m;
  return 0;
fail:
  nn_model_free(&m);
  return rc;
}

static void free_stack(nn_stack *st) {
  if (!st->layers) return;
  for (int i = 0; i < st->nlayers; i++) nn_layer_free(&st->layers[i]);
  free(st->layers);
  st->layers = NULL;
}

void nn_model_free(nn_model **pm) {
  nn_model *m = *pm;
  if (!m) return;
  free_stack(&m->trunk);
  for (int h = 0; h < NN_MAX_HEADS; h++) free_stack(&m->heads[h]);
  free(m->params);
  free(m->grads);
  free(m->groups);
  free(m->ws);
  free(m->gbuf[0]);
  free(m->gbuf[1]);
  free(m->dfeat);
  free(m->dfeat_tmp);
  free(m);
  *pm = NULL;
}

void nn_model_init_params(nn_model *m, uint64_t seed) {
  for (int i = 0; i < m->trunk.nlayers; i++)
    nn_layer_init_scheme(&m->trunk.layers[i], seed, is_relu_like(&m->trunk, i),
                         (nn_init_scheme)m->spec.init);
  for (int h = 0; h < m->nheads; h++) {
    /* Head layers are keyed by head name too, so two heads differ. */
    uint64_t hseed = seed ^ nn_hash_str(m->heads[h].name);
    for (int i = 0; i < m->heads[h].nlayers; i++)
      nn_layer_init_scheme(&m->heads[h].layers[i], hseed, is_relu_like(&m->heads[h], i),
                           (nn_init_scheme)m->spec.init);
  }
}

int nn_model_head(const nn_model *m, const char *name) {
  for (int h = 0; h < m->nheads; h++)
    if (strcmp(m->heads[h].name, name) == 0) return h;
  return -1;
}

int nn_model_head_out(const nn_model *m, int h) {
  const nn_stack *st = &m->heads[h];
  return (int)nn_shape_numel(st->layers[st->nlayers - 1].out);
}

void nn_model_zero_grad(nn_model *m) { memset(m->grads, 0, m->nparams * sizeof(float)); }

static const float *stack_forward(nn_stack *st, const float *x, const nn_pass *p) {
  for (int i = 0; i < st->nlayers; i++) {
    nn_layer_forward(&st->layers[i], x, p);
    x = st->layers[i].y;
  }
  return x;
}

const float *nn_model_forward_trunk(nn_model *m, const float *x, const nn_pass *p) {
  m->trunk_in = x;
  return stack_forward(&m->trunk, x, p);
}

const float *nn_model_forward_head(nn_model *m, int h, const float *feat, const nn_pass *p) {
  return stack_forward(&m->heads[h], feat, p);
}

const float *nn_model_forward(nn_model *m, int h, const float *x, const nn_pass *p) {
  return nn_model_forward_head(m, h, nn_model_forward_trunk(m, x, p), p);
}

static void notify(const nn_layer *L, nn_grad_ready_fn cb, void *ctx) {
  if (!cb) return;
  if (L->group >= 0 && !L->frozen)
    cb(ctx, L->p_off, L->w_len + L->b_len);
  else
    cb(ctx, 0, 0);
}

/* Reverse walk of a stack from dy (gradient w.r.t. its output). in is the
 * stack's input; the gradient w.r.t. it is written to dx_out when non-NULL
 * and the first layer needs dx. Ping-pong buffers never alias dy. */
static void stack_backward(nn_model *m, nn_stack *st, const float *in, const float *dy,
                           float *dx_out, const nn_pass *p, nn_grad_ready_fn cb, void *ctx) {
  int cur = (dy == m->gbuf[0]) ? 1 : 0;
  for (int i = st->nlayers - 1; i >= 0; i--) {
    nn_layer *L = &st->layers[i];
    int trains = L->group >= 0 && !L->frozen;
    if (!trains && !L->need_dx) break; /* nothing earlier trains */
    const float *x = i ? st->layers[i - 1].y : in;
    float *dx = NULL;
    if (L->need_dx) dx = i ? m->gbuf[cur] : dx_out;
    nn_layer_backward(L, x, dy, dx, p);
    notify(L, cb, ctx);
    if (!dx) break;
    dy = dx;
    cur ^= 1;
  }
}

void nn_model_backward_head(nn_model *m, int h, const float *feat, const float *dlogits,
                            const nn_pass *p, nn_grad_ready_fn cb, void *ctx) {
  nn_stack *st = &m->heads[h];
  int want_dfeat = st->nlayers > 0 && st->layers[0].need_dx;
  size_t nf = (size_t)p->B * m->feat.c;
  if (!want_dfeat) {
    stack_backward(m, st, feat, dlogits, NULL, p, cb, ctx);
    return;
  }
  if (!m->dfeat_valid) {
    stack_backward(m, st, feat, dlogits, m->dfeat, p, cb, ctx);
    m->dfeat_valid = 1;
    return;
  }
  /* A second head adds its feature gradient: land it in its own buffer (the
   * ping-pong buffers are busy inside the head), then accumulate. */
  stack_backward(m, st, feat, dlogits, m->dfeat_tmp, p, cb, ctx);
  for (size_t i = 0; i < nf; i++) m->dfeat[i] += m->dfeat_tmp[i];
}

void nn_model_backward_trunk(nn_model *m, const nn_pass *p, nn_grad_ready_fn cb, void *ctx) {
  if (!m->dfeat_valid) return;
  stack_backward(m, &m->trunk, m->trunk_in, m->dfeat, NULL, p, cb, ctx);
  m->dfeat_valid = 0;
}

void nn_model_backward(nn_model *m, int h, const float *dlogits, const nn_pass *p,
                       nn_grad_ready_fn cb, void *ctx) {
  const float *feat = m->trunk.nlayers ? m->trunk.layers[m->trunk.nlayers - 1].y : m->trunk_in;
  nn_model_backward_head(m, h, feat, dlogits, p, cb, ctx);
  nn_model_backward_trunk(m, p, cb, ctx);
}

static int prefix_match(const char *name, const char *prefix) {
  size_t n = strlen(prefix);
  if (n == 0) return 1;
  return strncmp(name, prefix, n) == 0 && (name[n] == '\0' || name[n] == '.');
}

static nn_layer *group_layer(nn_model *m, const nn_param_group *g) {
  nn_stack *st = g->stack < 0 ? &m->trunk : &m->heads[g->stack];
  return &st->layers[g->layer];
}

int nn_model_set_frozen(nn_model *m, const char *prefix, int frozen) {
  int n = 0;
  for (int i = 0; i < m->ngroups; i++) {
    if (!prefix_match(m->groups[i].name, prefix)) continue;
    m->groups[i].frozen = frozen;
    set_layer_frozen(group_layer(m, &m->groups[i]), frozen);
    n++;
  }
  update_need_dx(m);
  return n;
}

int nn_model_set_lr_mult(nn_model *m, const char *prefix, float mult) {
  int n = 0;
  for (int i = 0; i < m->ngroups; i++)
    if (prefix_match(m->groups[i].name, prefix)) {
      m->groups[i].lr_mult = mult;
      n++;
    }
  return n;
}

static void stack_set_lambda(nn_stack *st, float lambda) {
  for (int i = 0; i < st->nlayers; i++)
    if (st->layers[i].spec.op == NN_GRL) st->layers[i].spec.lambda = lambda;
}

void nn_model_set_grl_lambda(nn_model *m, float lambda) {
  stack_set_lambda(&m->trunk, lambda);
  for (int h = 0; h < m->nheads; h++) stack_set_lambda(&m->heads[h], lambda);
}

size_t nn_model_trainable(const nn_model *m) {
  size_t n = 0;
  for (int i = 0; i < m->ngroups; i++)
    if (!m->groups[i].frozen) n += m->groups[i].len;
  return n;
}

/* --- presets ---------------------------------------------------------------- */

static nn_layer_spec L_(nn_op op, int out, int k, int stride, int pad) {
  nn_layer_spec s;
  memset(&s, 0, sizeof s);
  s.op = op;
  s.out = out;
  s.k = k;
  s.stride = stride;
  s.pad = pad;
  return s;
}

int nn_model_preset(nn_model_spec *spec, const char *preset, const char *head_name,
                    int nclasses) {
  CHECK_USER(nclasses >= 1, "model.preset: need at least 1 class, found %d", nclasses);
  nn_stack_spec *t = &spec->trunk;
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "trunk");
#define ADD(...) (t->layers[t->nlayers++] = L_(__VA_ARGS__))
  if (strcmp(preset, "mlp") == 0) {
    ADD(NN_FLATTEN, 0, 0, 0, 0);
    ADD(NN_DENSE, 256, 0, 0, 0);
    ADD(NN_RELU, 0, 0, 0, 0);
    ADD(NN_DENSE, 128, 0, 0, 0);
    ADD(NN_RELU, 0, 0, 0, 0);
  } else if (strcmp(preset, "cnn") == 0) {
    ADD(NN_CONV2D, 16, 5, 1, 2);
    ADD(NN_RELU, 0, 0, 0, 0);
    ADD(NN_MAXPOOL2D, 0, 2, 2, 0);
    ADD(NN_CONV2D, 32, 5, 1, 2);
    ADD(NN_RELU, 0, 0, 0, 0);
    ADD(NN_MAXPOOL2D, 0, 2, 2, 0);
    ADD(NN_FLATTEN, 0, 0, 0, 0);
    ADD(NN_DENSE, 128, 0, 0, 0);
    ADD(NN_RELU, 0, 0, 0, 0);
  } else if (strcmp(preset, "resnet") == 0) {
    ADD(NN_CONV2D, 16, 3, 1, 1);
    ADD(NN_GROUPNORM, 0, 0, 0, 0);
    t->layers[t->nlayers - 1].groups = 4;
    ADD(NN_RELU, 0, 0, 0, 0);
    ADD(NN_RESIDUAL, 16, 0, 1, 0);
    ADD(NN_RESIDUAL, 32, 0, 2, 0);
    ADD(NN_RESIDUAL, 64, 0, 2, 0);
    ADD(NN_GAP, 0, 0, 0, 0);
  } else {
    FERRY_FAIL(FERRY_EUSER, "model.preset: unknown preset \"%s\" (known: mlp, cnn, resnet)",
               preset);
  }
#undef ADD
  spec->nheads = 1;
  nn_stack_spec *h = &spec->heads[0];
  memset(h, 0, sizeof *h);
  snprintf(h->name, sizeof h->name, "%s", head_name);
  h->nlayers = 1;
  h->layers[0] = L_(NN_DENSE, nclasses, 0, 0, 0);
  return 0;
}
