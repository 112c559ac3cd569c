/* Builds the train/val/test splits an experiment describes: read the files,
 * keep and relabel classes, draw K labelled samples per class, hold out a
 * validation split. Every step is seeded by the experiment's data seed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"
#include "train/trainer.h"

/* Transfer jobs read the same files job after job: while on, decoded
 * sources are kept (a few, whole) and later reads copy them instead of
 * decompressing and parsing the file again. */
enum { CACHE_MAX = 4 };
static struct {
  int used;
  exp_source src;
  nn_dataset ds;
} cache[CACHE_MAX];
static int cache_on;

void train_data_cache(int on) {
  for (int i = 0; i < CACHE_MAX && !on; i++) {
    if (cache[i].used) nn_data_free(&cache[i].ds);
    cache[i].used = 0;
  }
  cache_on = on;
}

static int same_source(const exp_source *a, const exp_source *b) {
  return a->format == b->format && a->img_h == b->img_h && a->img_w == b->img_w &&
         a->limit == b->limit && !strcmp(a->images, b->images) &&
         !strcmp(a->labels, b->labels) && !strcmp(a->path, b->path);
}

static int read_file(nn_dataset *ds, const exp_source *s, const char *what);

/* The cached whole dataset of source s, or NULL. */
static const nn_dataset *cached(const exp_source *s) {
  for (int i = 0; cache_on && i < CACHE_MAX; i++)
    if (cache[i].used && same_source(&cache[i].src, s)) return &cache[i].ds;
  return NULL;
}

/* Every source is read as a view: labels and sizes now, the samples of the
 * rows kept at train_data_fill. While the cache is on, the view is of the
 * cached whole file (read into the cache the first time, if a slot is free),
 * so later jobs neither decode the file again nor copy it whole. */
static int read_source(nn_dataset *ds, const exp_source *s, const char *what) {
  const nn_dataset *whole = cached(s);
  for (int i = 0; !whole && cache_on && i < CACHE_MAX; i++)
    if (!cache[i].used) {
      CHECK_CALL(read_file(&cache[i].ds, s, what));
      cache[i].src = *s;
      cache[i].used = 1;
      whole = &cache[i].ds;
    }
  if (whole) return nn_data_view_of(ds, whole);
  int rc = s->format == EXP_SRC_IDX ? nn_data_read_idx_labels(ds, s->images, s->labels, s->limit)
                                    : nn_data_read_csv_labels(ds, s->path, s->img_h, s->img_w);
  if (rc) {
    ferry_err_trace(__FILE__, __LINE__, what);
    return rc;
  }
  if (s->format == EXP_SRC_CSV && s->limit > 0 && ds->n > s->limit) ds->n = s->limit;
  return 0;
}

static int read_file(nn_dataset *ds, const exp_source *s, const char *what) {
  int rc;
  if (s->format == EXP_SRC_IDX)
    rc = nn_data_read_idx(ds, s->images, s->labels, s->limit);
  else
    rc = nn_data_read_csv(ds, s->path, s->img_h, s->img_w);
  if (rc) {
    ferry_err_trace(__FILE__, __LINE__, what);
    return rc;
  }
  if (s->format == EXP_SRC_CSV && s->limit > 0 && ds->n > s->limit) ds->n = s->limit;
  return 0;
}

/* Replaces *ds by f(*ds) when f succeeds. */
static int replace(nn_dataset *ds, nn_dataset *next) {
  nn_data_free(ds);
  *ds = *next;
  memset(next, 0, sizeof *next);
  return 0;
}

int train_data_load(train_data *d, const exp_experiment *e) {
  return train_data_load_from(d, &e->data);
}

int train_data_load_from(train_data *d, const exp_data *x) {
  memset(d, 0, sizeof *d);
  nn_dataset tmp;
  memset(&tmp, 0, sizeof tmp);
  int rc = read_source(&d->train, &x->train, "data.train");
  if (!rc) rc = read_source(&d->test, &x->test, "data.test");
  if (rc) goto fail;
  if (d->train.shape.c != d->test.shape.c || d->train.shape.h != d->test.shape.h ||
      d->train.shape.w != d->test.shape.w) {
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "data.test: samples are %dx%dx%d but data.train has %dx%dx%d",
                       d->test.shape.c, d->test.shape.h, d->test.shape.w, d->train.shape.c,
                       d->train.shape.h, d->train.shape.w);
    goto fail;
  }
  d->nclasses = d->train.nclasses > d->test.nclasses ? d->train.nclasses : d->test.nclasses;
  if (x->nclasses_keep > 0) {
    if ((rc = nn_data_subset_classes(&tmp, &d->train, x->classes, x->nclasses_keep))) goto fail;
    replace(&d->train, &tmp);
    if ((rc = nn_data_subset_classes(&tmp, &d->test, x->classes, x->nclasses_keep))) goto fail;
    replace(&d->test, &tmp);
    d->nclasses = x->nclasses_keep;
  }
  if (x->val_frac > 0) {
    nn_dataset tr;
    memset(&tr, 0, sizeof tr);
    if ((rc = nn_data_split(&tr, &d->val, &d->train, x->val_frac, x->seed ^ 0x5eedULL)))
      goto fail;
    replace(&d->train, &tr);
  }
  /* K per class is drawn after the validation split so validation never
   * borrows from the K labelled samples. */
  if (x->k_per_class > 0) {
    if ((rc = nn_data_k_per_class(&tmp, &d->train, x->k_per_class, x->seed))) goto fail;
    replace(&d->train, &tmp);
  }
  if (d->train.n == 0) {
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "data.train: no training samples left after subsetting");
    goto fail;
  }
  return 0;
fail:
  nn_data_free(&tmp);
  train_data_free(d);
  return rc;
}

/* Fills the views v[0..nv) of source src in one pass; *digest (if wanted)
 * of the view `all` of the same file. */
static int fill_source(nn_dataset *const *v, int nv, const exp_source *src, const char *what,
                       const nn_dataset *all, uint64_t *digest) {
  const int want = all && digest;
  const nn_dataset *whole = cached(src);
  if (whole) {
    int rc = nn_data_fill_from(v, nv, whole);
    if (rc) {
      ferry_err_trace(__FILE__, __LINE__, what);
      return rc;
    }
    if (want) *digest = nn_data_digest_view_in(all, whole);
    return 0;
  }
  uint64_t *hash = NULL;
  int64_t nrows = 0;
  int rc = src->format == EXP_SRC_IDX
               ? nn_data_fill_idx(v, nv, src->images, src->limit, want ? &hash : NULL, &nrows)
               : nn_data_fill_csv(v, nv, src->path, want ? &hash : NULL, &nrows);
  if (rc) {
    ferry_err_trace(__FILE__, __LINE__, what);
    return rc;
  }
  if (want) *digest = nn_data_digest_view(all, hash, nrows);
  free(hash);
  return 0;
}

int train_data_fill(train_data *d, const exp_data *x, const nn_dataset *all_train,
                    const nn_dataset *all_test, uint64_t *train_digest, uint64_t *test_digest) {
  nn_dataset *v[2];
  int nv = 0;
  if (d->train.pending) v[nv++] = &d->train;
  if (d->val.pending) v[nv++] = &d->val;
  if (nv) CHECK_CALL(fill_source(v, nv, &x->train, "data.train", all_train, train_digest));
  nn_dataset *t = &d->test;
  if (t->pending) CHECK_CALL(fill_source(&t, 1, &x->test, "data.test", all_test, test_digest));
  return 0;
}

void train_data_free(train_data *d) {
  nn_data_free(&d->train);
  nn_data_free(&d->val);
  nn_data_free(&d->test);
}
