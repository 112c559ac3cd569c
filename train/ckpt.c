/* Checkpoint tensors: which tensors a model has (names, natural shapes, slab
 * offsets), derived either from a built model or from a spec alone, and the
 * accessors of an opened checkpoint. The file format is in ckpt_write.c /
 * ckpt_read.c and docs/checkpoint-format.md.
 *
 * A tensor is one parameter array of one layer: "<stack>.<layer>.W" and
 * ".b" (for groupnorm W = gamma, b = beta); a residual block contributes its
 * sub-layers' arrays ("trunk.res1.conv1.W", ...). Shapes are the natural
 * ones (dense W [out, in], conv W [out, in_c, k, k]), so a layer that changed
 * shape is caught even when its element count did not. Optimizer state is
 * one tensor per parameter tensor, "optim.m.<name>" / "optim.v.<name>", so it
 * does not depend on the slab's alignment padding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"
#include "train/ckpt_impl.h"

void ckpt_tlist_free(ckpt_tlist *l) {
  free(l->t);
  memset(l, 0, sizeof *l);
}

static int tlist_push(ckpt_tlist *l, const ckpt_tensor *t) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 32;
    ckpt_tensor *p = realloc(l->t, cap * sizeof *p);
    CHECK_ALLOC(p, cap * sizeof *p);
    l->t = p;
    l->cap = cap;
  }
  l->t[l->n++] = *t;
  return 0;
}

static int add_array(ckpt_tlist *l, const char *prefix, const char *suffix, int ndims,
                     const uint64_t *dims, size_t slab_off, int stack, int layer) {
  ckpt_tensor t;
  memset(&t, 0, sizeof t);
  int w = snprintf(t.name, sizeof t.name, "%s.%s", prefix, suffix);
  CHECK_USER(w > 0 && (size_t)w < sizeof t.name, "tensor name '%s.%s' is longer than %d characters",
             prefix, suffix, CKPT_NAME_MAX - 1);
  t.ndims = ndims;
  t.numel = 1;
  for (int i = 0; i < ndims; i++) {
    t.dims[i] = dims[i];
    t.numel *= dims[i];
  }
  t.role = CKPT_ROLE_PARAM;
  t.stack = stack;
  t.layer = layer;
  t.slab_off = slab_off;
  return tlist_push(l, &t);
}

/* Offset of p in the slab starting at base (0 when either is absent, as for
 * a layer set up from a spec alone). */
static size_t slab_off(const float *p, const float *base) { return p && base ? (size_t)(p - base) : 0; }

/* Appends the parameter arrays of L (natural shapes). stack_pfx is "trunk"
 * or "head.<name>"; residual sub-layer names already carry the block name. */
static int layer_tensors(ckpt_tlist *l, const nn_layer *L, const char *stack_pfx, int stack,
                         int layer, const float *base) {
  if (L->spec.op == NN_RESIDUAL) {
    for (int i = 0; i < L->nsub; i++)
      CHECK_CALL(layer_tensors(l, &L->sub[i], stack_pfx, stack, layer, base));
    return 0;
  }
  char pfx[CKPT_NAME_MAX];
  int w = snprintf(pfx, sizeof pfx, "%s.%s", stack_pfx, L->spec.name);
  CHECK_USER(w > 0 && (size_t)w < sizeof pfx, "layer name '%s.%s' is too long", stack_pfx,
             L->spec.name);
  uint64_t d[CKPT_MAX_DIMS];
  int nd;
  switch (L->spec.op) {
  case NN_DENSE:
    d[0] = (uint64_t)L->spec.out, d[1] = (uint64_t)L->in.c, nd = 2;
    break;
  case NN_CONV2D:
    d[0] = (uint64_t)L->spec.out, d[1] = (uint64_t)L->in.c;
    d[2] = d[3] = (uint64_t)L->spec.k, nd = 4;
    break;
  default: /* groupnorm gamma [c]; any other parametrised op: flat */
    d[0] = L->w_len, nd = 1;
    break;
  }
  if (L->w_len) CHECK_CALL(add_array(l, pfx, "W", nd, d, slab_off(L->W, base), stack, layer));
  if (L->b_len) {
    d[0] = L->b_len;
    CHECK_CALL(add_array(l, pfx, "b", 1, d, slab_off(L->b, base), stack, layer));
  }
  return 0;
}

/* Appends "optim.m.*" (and "optim.v.*") copies of the n parameter tensors. */
static int add_optim(ckpt_tlist *l, size_t n, int with_m, int with_v) {
  for (int r = 0; r < 2; r++) {
    if (r == 0 ? !with_m : !with_v) continue;
    for (size_t i = 0; i < n; i++) {
      ckpt_tensor t = l->t[i];
      int w = snprintf(t.name, sizeof t.name, "optim.%c.%s", r == 0 ? 'm' : 'v', l->t[i].name);
      CHECK_USER(w > 0 && (size_t)w < sizeof t.name, "tensor name 'optim.%c.%s' is too long",
                 r == 0 ? 'm' : 'v', l->t[i].name);
      t.role = r == 0 ? CKPT_ROLE_OPT_M : CKPT_ROLE_OPT_V;
      CHECK_CALL(tlist_push(l, &t));
    }
  }
  return 0;
}

static int model_tensors(const nn_model *m, int with_m, int with_v, ckpt_tlist *out) {
  for (int i = 0; i < m->trunk.nlayers; i++)
    CHECK_CALL(layer_tensors(out, &m->trunk.layers[i], "trunk", -1, i, m->params));
  for (int h = 0; h < m->nheads; h++) {
    char pfx[NN_NAME_MAX + 8];
    snprintf(pfx, sizeof pfx, "head.%s", m->heads[h].name);
    for (int i = 0; i < m->heads[h].nlayers; i++)
      CHECK_CALL(layer_tensors(out, &m->heads[h].layers[i], pfx, h, i, m->params));
  }
  return add_optim(out, out->n, with_m, with_v);
}

int ckpt_model_tensors(const nn_model *m, int with_m, int with_v, ckpt_tlist *out) {
  memset(out, 0, sizeof *out);
  int rc = model_tensors(m, with_m, with_v, out);
  if (rc) ckpt_tlist_free(out);
  return rc;
}

/* Sets up each layer of one stack in turn (shapes only) and lists its
 * tensors; *in / *spatial carry the shape from layer to layer. */
static int spec_stack(ckpt_tlist *out, const nn_stack_spec *ss, const char *pfx, int stack,
                      nn_shape *in, int *spatial) {
  for (int i = 0; i < ss->nlayers; i++) {
    nn_layer L;
    int rc = nn_layer_setup(&L, &ss->layers[i], *in, *spatial);
    if (rc == 0) rc = layer_tensors(out, &L, pfx, stack, i, NULL);
    *in = L.out;
    *spatial = L.out_spatial;
    nn_layer_free(&L);
    CHECK_CALL(rc);
  }
  return 0;
}

static int spec_tensors(const nn_model_spec *sp, int with_m, int with_v, ckpt_tlist *out) {
  nn_shape feat = sp->in;
  int spatial = sp->in_spatial;
  CHECK_CALL(spec_stack(out, &sp->trunk, "trunk", -1, &feat, &spatial));
  CHECK_USER(!spatial, "heads need flat features, but the trunk ends with a spatial %dx%dx%d output",
             feat.c, feat.h, feat.w);
  for (int h = 0; h < sp->nheads; h++) {
    char pfx[NN_NAME_MAX + 8];
    snprintf(pfx, sizeof pfx, "head.%s", sp->heads[h].name);
    nn_shape in = feat;
    int hs = 0;
    CHECK_CALL(spec_stack(out, &sp->heads[h], pfx, h, &in, &hs));
  }
  return add_optim(out, out->n, with_m, with_v);
}

int ckpt_spec_tensors(const nn_model_spec *spec, int with_m, int with_v, ckpt_tlist *out) {
  memset(out, 0, sizeof *out);
  int rc = spec_tensors(spec, with_m, with_v, out);
  if (rc) ckpt_tlist_free(out);
  return rc;
}

static int by_name_cmp(const void *a, const void *b) {
  const ckpt_tensor *const *x = a, *const *y = b;
  return strcmp((*x)->name, (*y)->name);
}

long ckpt_find_tensor(const ckpt_file *f, const char *name) {
  ckpt_tensor key;
  snprintf(key.name, sizeof key.name, "%s", name);
  const ckpt_tensor *kp = &key;
  const ckpt_tensor **hit =
      bsearch(&kp, f->by_name, f->tensors.n, sizeof *f->by_name, by_name_cmp);
  return hit ? (long)(*hit - f->tensors.t) : -1;
}

/* Chunk records of a tensor are consecutive and were verified by the parser:
 * [kind][len][crc-covered: tensor][offset][floats][crc]. */
void ckpt_tensor_read(const ckpt_file *f, size_t i, float *dst) {
  const ckpt_tensor *t = &f->tensors.t[i];
  size_t pos = t->chunk_pos;
  for (uint64_t c = 0; c < t->nchunks; c++) {
    const unsigned char *r = f->buf + pos;
    uint64_t plen = ckpt_get_u64(r + 4);
    uint64_t off = ckpt_get_u64(r + CKPT_REC_HEAD + 4);
    memcpy(dst + off, r + CKPT_REC_HEAD + CKPT_CHUNK_HEAD, plen - CKPT_CHUNK_HEAD);
    pos += CKPT_REC_HEAD + plen + CKPT_REC_TAIL;
  }
}

double ckpt_tensor_sumsq(const ckpt_file *f, size_t i) {
  const ckpt_tensor *t = &f->tensors.t[i];
  size_t pos = t->chunk_pos;
  double s = 0.0;
  float tmp[1024];
  for (uint64_t c = 0; c < t->nchunks; c++) {
    const unsigned char *r = f->buf + pos;
    uint64_t plen = ckpt_get_u64(r + 4);
    const unsigned char *p = r + CKPT_REC_HEAD + CKPT_CHUNK_HEAD;
    size_t n = (size_t)(plen - CKPT_CHUNK_HEAD) / sizeof(float);
    for (size_t k = 0; k < n; k += 1024) {
      size_t b = n - k < 1024 ? n - k : 1024;
      memcpy(tmp, p + k * sizeof(float), b * sizeof(float)); /* the data is not float-aligned */
      for (size_t j = 0; j < b; j++) s += (double)tmp[j] * tmp[j];
    }
    pos += CKPT_REC_HEAD + plen + CKPT_REC_TAIL;
  }
  return s;
}

const char *ckpt_dims_str(char *buf, size_t n, const ckpt_tensor *t) {
  size_t k = 0;
  buf[0] = '\0';
  k += (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->ndims && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%llu", i ? ", " : "", (unsigned long long)t->dims[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

void ckpt_close(ckpt_file **pf) {
  ckpt_file *f = *pf;
  if (!f) return;
  free(f->name);
  ckpt_buf_release(f->buf, f->len, f->mapped);
  free(f->experiment);
  free(f->by_name);
  ckpt_tlist_free(&f->tensors);
  free(f);
  *pf = NULL;
}

const ckpt_meta *ckpt_meta_of(const ckpt_file *f) { return &f->meta; }
const nn_model_spec *ckpt_spec(const ckpt_file *f) { return &f->spec; }
size_t ckpt_file_bytes(const ckpt_file *f) { return f->len; }
int ckpt_ntensors(const ckpt_file *f) { return (int)f->tensors.n; }

/* Kept here (not in the parser) so that every module sorts the same way. */
int ckpt_sort_by_name(ckpt_file *f) {
  f->by_name = malloc((f->tensors.n ? f->tensors.n : 1) * sizeof *f->by_name);
  CHECK_ALLOC(f->by_name, f->tensors.n * sizeof *f->by_name);
  for (size_t i = 0; i < f->tensors.n; i++) f->by_name[i] = &f->tensors.t[i];
  qsort(f->by_name, f->tensors.n, sizeof *f->by_name, by_name_cmp);
  return 0;
}
