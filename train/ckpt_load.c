/* Restoring from an opened checkpoint: the whole model (resume) or the trunk
 * by layer name (fine-tuning a model with other heads). Every check is made
 * before the first value is written, so a refused load leaves the model as
 * it was. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nn/err.h"
#include "train/ckpt_impl.h"

static float *tensor_dst(const ckpt_tensor *t, nn_model *m, nn_optim *o) {
  float *base = t->role == CKPT_ROLE_PARAM ? m->params : t->role == CKPT_ROLE_OPT_M ? o->m : o->v;
  return base + t->slab_off;
}

static int same_shape(const ckpt_tensor *a, const ckpt_tensor *b) {
  if (a->ndims != b->ndims) return 0;
  for (int d = 0; d < a->ndims; d++)
    if (a->dims[d] != b->dims[d]) return 0;
  return 1;
}

/* Every tensor of want must be in f with the same shape, and f must hold no
 * tensor of the same roles that want lacks. */
static int check_match(const ckpt_file *f, const ckpt_tlist *want, int with_m, int with_v) {
  char a[96], b[96];
  for (size_t i = 0; i < want->n; i++) {
    const ckpt_tensor *t = &want->t[i];
    long k = ckpt_find_tensor(f, t->name);
    CHECK_USER(k >= 0, "checkpoint %s: tensor '%s' of the model is not in the checkpoint (the "
               "checkpoint was saved from a different model)", f->name, t->name);
    CHECK_USER(same_shape(t, &f->tensors.t[k]),
               "checkpoint %s: tensor '%s': the model expects shape %s, the checkpoint has %s",
               f->name, t->name, ckpt_dims_str(a, sizeof a, t),
               ckpt_dims_str(b, sizeof b, &f->tensors.t[k]));
  }
  size_t n = 0;
  for (size_t i = 0; i < f->tensors.n; i++) {
    const ckpt_tensor *t = &f->tensors.t[i];
    if (t->role == CKPT_ROLE_PARAM || (t->role == CKPT_ROLE_OPT_M && with_m) ||
        (t->role == CKPT_ROLE_OPT_V && with_v))
      n++;
  }
  if (n == want->n) return 0;
  for (size_t i = 0; i < f->tensors.n; i++) {
    const ckpt_tensor *t = &f->tensors.t[i];
    int found = 0;
    for (size_t j = 0; j < want->n && !found; j++) found = !strcmp(want->t[j].name, t->name);
    CHECK_USER(found || (t->role == CKPT_ROLE_OPT_M && !with_m) || (t->role == CKPT_ROLE_OPT_V && !with_v),
               "checkpoint %s: tensor '%s' %s has no counterpart in the model (the checkpoint was "
               "saved from a different model)",
               f->name, t->name, ckpt_dims_str(a, sizeof a, t));
  }
  return 0;
}

static int load_model(const ckpt_file *f, nn_model *m, nn_optim *o, ckpt_tlist *want) {
  int with_m = o != NULL, with_v = o && o->cfg.kind == NN_OPT_ADAMW;
  CHECK_CALL(ckpt_model_tensors(m, with_m, with_v, want));
  CHECK_CALL(check_match(f, want, with_m, with_v));
  for (size_t i = 0; i < want->n; i++)
    ckpt_tensor_read(f, (size_t)ckpt_find_tensor(f, want->t[i].name), tensor_dst(&want->t[i], m, o));
  if (o) o->t = f->meta.opt_t;
  return 0;
}

int ckpt_load_model(const ckpt_file *f, nn_model *m, nn_optim *o) {
  if (o) {
    CHECK_USER(f->meta.has_optim, "checkpoint %s holds no optimizer state (saved without one)",
               f->name);
    CHECK_USER(o->cfg.kind == f->meta.opt.kind,
               "checkpoint %s: optimizer kind differs: the run uses %s, the checkpoint has %s state",
               f->name, nn_opt_names[o->cfg.kind], nn_opt_names[f->meta.opt.kind]);
    CHECK_USER(o->n == m->nparams && o->m && (o->cfg.kind != NN_OPT_ADAMW || o->v),
               "checkpoint %s: optimizer state holds %zu floats, the model has %zu parameters",
               f->name, o->n, m->nparams);
  }
  ckpt_tlist want;
  memset(&want, 0, sizeof want);
  int rc = load_model(f, m, o, &want);
  ckpt_tlist_free(&want);
  CHECK_CALL(rc);
  return 0;
}

/* Appends a formatted line to the report text (truncating safely). */
static void say(char *text, size_t len, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void say(char *text, size_t len, size_t *used, const char *fmt, ...) {
  if (!text || *used + 1 >= len) return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(text + *used, len - *used, fmt, ap);
  va_end(ap);
  if (w > 0) *used = *used + (size_t)w < len ? *used + (size_t)w : len - 1;
}

/* Tensors [lo, hi) of list l that belong to trunk layer `layer`. */
static void layer_span(const ckpt_tensor *t, size_t n, int layer, size_t *lo, size_t *hi) {
  *lo = *hi = n;
  for (size_t i = 0; i < n; i++) {
    if (t[i].role != CKPT_ROLE_PARAM || t[i].stack != -1 || t[i].layer != layer) continue;
    if (*lo == n) *lo = i;
    *hi = i + 1;
  }
}

static int model_layer(const nn_model *m, const char *name) {
  for (int j = 0; j < m->trunk.nlayers; j++)
    if (!strcmp(m->trunk.layers[j].spec.name, name)) return j;
  return -1;
}

/* Why checkpoint layer span [clo, chi) cannot load into model span
 * [mlo, mhi); "" when it can. */
static void mismatch(const ckpt_tensor *c, size_t clo, size_t chi, const ckpt_tensor *mt, size_t mlo,
                     size_t mhi, char *why, size_t n) {
  char a[96], b[96];
  why[0] = '\0';
  for (size_t i = clo; i < chi; i++) {
    size_t j = mlo;
    while (j < mhi && strcmp(mt[j].name, c[i].name)) j++;
    if (j == mhi) {
      snprintf(why, n, "tensor %s %s has no counterpart in the model", c[i].name,
               ckpt_dims_str(a, sizeof a, &c[i]));
      return;
    }
    if (!same_shape(&c[i], &mt[j])) {
      snprintf(why, n, "shape differs: %s is %s in the checkpoint, %s in the model", c[i].name,
               ckpt_dims_str(a, sizeof a, &c[i]), ckpt_dims_str(b, sizeof b, &mt[j]));
      return;
    }
  }
  if (chi - clo != mhi - mlo)
    snprintf(why, n, "the model's layer has %zu parameter tensors, the checkpoint's %zu", mhi - mlo,
             chi - clo);
}

static int load_trunk(const ckpt_file *f, nn_model *m, ckpt_trunk_report *rep, char *text,
                      size_t text_len, const ckpt_tlist *mt) {
  size_t used = 0;
  const nn_stack_spec *cs = &f->spec.trunk;
  int loaded[NN_MAX_LAYERS] = {0}; /* model trunk layers taken from the checkpoint */
  int named[NN_MAX_LAYERS] = {0};  /* model trunk layers the checkpoint has a layer for */
  char a[96], why[384];
  for (int li = 0; li < cs->nlayers; li++) {
    size_t clo, chi, mlo, mhi;
    layer_span(f->tensors.t, f->tensors.n, li, &clo, &chi);
    if (clo == chi) continue; /* no parameters */
    const char *name = cs->layers[li].name;
    int j = model_layer(m, name);
    if (j < 0) {
      rep->skipped++;
      say(text, text_len, &used, "skipped trunk.%s: not in the model\n", name);
      continue;
    }
    named[j] = 1;
    if (m->trunk.layers[j].spec.op != cs->layers[li].op) {
      rep->skipped++;
      say(text, text_len, &used, "skipped trunk.%s: op differs (checkpoint %s, model %s)\n", name,
          nn_op_names[cs->layers[li].op], nn_op_names[m->trunk.layers[j].spec.op]);
      continue;
    }
    layer_span(mt->t, mt->n, j, &mlo, &mhi);
    mismatch(f->tensors.t, clo, chi, mt->t, mlo, mhi, why, sizeof why);
    if (why[0]) {
      rep->skipped++;
      say(text, text_len, &used, "skipped trunk.%s: %s\n", name, why);
      continue;
    }
    rep->matched++;
    loaded[j] = 1;
    say(text, text_len, &used, "matched trunk.%s:", name);
    for (size_t i = mlo; i < mhi; i++)
      say(text, text_len, &used, " %s %s", strrchr(mt->t[i].name, '.') + 1,
          ckpt_dims_str(a, sizeof a, &mt->t[i]));
    say(text, text_len, &used, "\n");
  }
  for (int j = 0; j < m->trunk.nlayers; j++) {
    if (m->trunk.layers[j].group < 0 || named[j]) continue;
    rep->fresh++;
    say(text, text_len, &used, "fresh trunk.%s: not in the checkpoint, keeps its initialisation\n",
        m->trunk.layers[j].spec.name);
  }
  /* All decisions are made; now copy the matched layers. */
  for (size_t i = 0; i < mt->n; i++) {
    const ckpt_tensor *t = &mt->t[i];
    if (t->stack != -1 || !loaded[t->layer]) continue;
    ckpt_tensor_read(f, (size_t)ckpt_find_tensor(f, t->name), m->params + t->slab_off);
  }
  return 0;
}

int ckpt_load_trunk(const ckpt_file *f, nn_model *m, ckpt_trunk_report *rep, char *text,
                    size_t text_len) {
  ckpt_trunk_report local;
  if (!rep) rep = &local;
  memset(rep, 0, sizeof *rep);
  if (text && text_len) text[0] = '\0';
  ckpt_tlist mt;
  CHECK_CALL(ckpt_model_tensors(m, 0, 0, &mt));
  int rc = load_trunk(f, m, rep, text, text_len, &mt);
  ckpt_tlist_free(&mt);
  CHECK_CALL(rc);
  return 0;
}
