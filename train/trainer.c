/* Supervised training loop (train/trainer.h). Each global batch of the seeded
 * epoch order is split across ranks by row ranges; the loss is normalised by
 * the global number of labelled rows, so summing the ranks' gradients gives
 * exactly the single-rank gradient (up to float summation order). */
#include "train/trainer.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn/err.h"
#include "nn/rng.h"

enum { KEY_ORDER = 1, KEY_AUG = 2, KEY_DROP = 3, KEY_INIT = 4 };

typedef struct {
  const exp_experiment *e;
  const dist_comm *c;
  const train_hooks *h;
  train_data d;
  nn_model *m;
  nn_optim opt;
  int K;            /* classes = logits of head 0 */
  int local_max;    /* rows a rank holds at most in one pass */
  float *x;         /* [local_max * numel] input batch */
  int32_t *y;
  int64_t *ids, *idx;
  float *dlogits;
  float *scratch;
  int32_t *pred;
  int32_t *order;   /* epoch permutation of training rows */
  nn_transform tf_train[2 * EXP_MAX_TF];
  int ntf_train;
} trainer;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rows [lo, hi) of a global batch of n rows that rank r of size holds. */
static void slice(int64_t n, int r, int size, int64_t *lo, int64_t *hi) {
  *lo = n * r / size;
  *hi = n * (r + 1) / size;
}

static uint64_t hash_params(const nn_model *m) {
  const unsigned char *p = (const unsigned char *)m->params;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < m->nparams * sizeof(float); i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

static int setup(trainer *t) {
  const exp_experiment *e = t->e;
  CHECK_CALL(train_data_load(&t->d, e));
  CHECK_CALL(nn_tf_check(e->data.tf, e->data.ntf, &t->d.train));
  CHECK_CALL(nn_tf_check(e->data.aug, e->data.naug, &t->d.train));
  nn_model_spec spec = e->model;
  if (e->preset[0]) CHECK_CALL(nn_model_preset(&spec, e->preset, "main", t->d.nclasses));
  spec.in = t->d.train.shape;
  spec.in_spatial = t->d.train.spatial;
  int local_train = (e->batch + t->c->size - 1) / t->c->size;
  int local_eval = e->eval_batch > 0 ? e->eval_batch : local_train;
  t->local_max = local_train > local_eval ? local_train : local_eval;
  CHECK_CALL(nn_model_new(&t->m, &spec, t->local_max));
  t->K = nn_model_head_out(t->m, 0);
  CHECK_USER(t->K >= t->d.nclasses,
             "model.heads.%s: the head has %d outputs but the data has %d classes",
             t->m->heads[0].name, t->K, t->d.nclasses);
  nn_model_init_params(t->m, nn_key(e->seed, KEY_INIT));
  CHECK_CALL(nn_optim_init(&t->opt, &e->opt, t->m->nparams));
  size_t numel = nn_shape_numel(spec.in);
  size_t L = (size_t)t->local_max;
  t->x = malloc(L * numel * sizeof(float));
  t->y = malloc(L * sizeof(int32_t));
  t->pred = malloc(L * sizeof(int32_t));
  t->ids = malloc(L * sizeof(int64_t));
  t->idx = malloc(L * sizeof(int64_t));
  t->dlogits = malloc(L * (size_t)t->K * sizeof(float));
  t->scratch = malloc(2 * numel * sizeof(float) + 64);
  t->order = malloc((size_t)t->d.train.n * sizeof(int32_t));
  CHECK_ALLOC(t->x && t->y && t->pred && t->ids && t->idx && t->dlogits && t->scratch && t->order
                  ? t : NULL,
              L * numel * sizeof(float));
  memcpy(t->tf_train, e->data.tf, (size_t)e->data.ntf * sizeof(nn_transform));
  memcpy(t->tf_train + e->data.ntf, e->data.aug, (size_t)e->data.naug * sizeof(nn_transform));
  t->ntf_train = e->data.ntf + e->data.naug;
  if (e->threads > 0) openblas_set_num_threads(e->threads);
  return 0;
}

static void teardown(trainer *t) {
  nn_model_free(&t->m);
  nn_optim_free(&t->opt);
  train_data_free(&t->d);
  free(t->x);
  free(t->y);
  free(t->pred);
  free(t->ids);
  free(t->idx);
  free(t->dlogits);
  free(t->scratch);
  free(t->order);
}

/* Loss and accuracy over a whole split, data-parallel: rank r evaluates a
 * contiguous range of rows; sums are reduced. Collective. */
static int evaluate(trainer *t, const nn_dataset *ds, double *loss, double *acc) {
  int64_t lo, hi;
  slice(ds->n, t->c->rank, t->c->size, &lo, &hi);
  double sums[3] = {0, 0, 0}; /* loss sum, correct, labelled */
  nn_pass p = {.training = 0};
  for (int64_t s = lo; s < hi; s += t->local_max) {
    int B = (int)((hi - s) < t->local_max ? (hi - s) : t->local_max);
    for (int i = 0; i < B; i++) t->idx[i] = s + i;
    nn_data_batch(ds, t->idx, B, t->e->data.tf, t->e->data.ntf, 0, t->x, t->y, t->scratch);
    p.B = B;
    const float *logits = nn_model_forward(t->m, 0, t->x, &p);
    sums[0] += nn_loss_xent(logits, t->y, NULL, B, t->K, 0.0f, -1, 1.0, NULL);
    nn_argmax(logits, B, t->K, t->pred);
    for (int i = 0; i < B; i++) {
      if (t->y[i] < 0) continue;
      sums[1] += t->pred[i] == t->y[i];
      sums[2] += 1;
    }
  }
  CHECK_CALL(dist_allreduce_f64(t->c, sums, 3));
  *loss = sums[2] > 0 ? sums[0] / sums[2] : NAN;
  *acc = sums[2] > 0 ? sums[1] / sums[2] : NAN;
  return 0;
}

/* One optimizer step on global batch rows order[start .. start+n). Adds the
 * local loss sum, correct count and labelled count to acc[0..3). */
static int train_step(trainer *t, int64_t start, int64_t n, int epoch, int64_t step, float lr,
                      double acc[3]) {
  const exp_experiment *e = t->e;
  const nn_dataset *ds = &t->d.train;
  int64_t lo, hi;
  slice(n, t->c->rank, t->c->size, &lo, &hi);
  int B = (int)(hi - lo);
  /* Labelled rows of the whole global batch: every rank holds all labels. */
  int64_t labelled = 0;
  for (int64_t i = 0; i < n; i++) labelled += ds->labels[t->order[start + i]] >= 0;
  nn_model_zero_grad(t->m);
  if (B > 0) {
    for (int i = 0; i < B; i++) {
      t->idx[i] = t->order[start + lo + i];
      t->ids[i] = ds->ids[t->idx[i]];
    }
    uint64_t aug_key = nn_hash64(nn_key(e->seed, KEY_AUG), (uint64_t)epoch);
    nn_data_batch(ds, t->idx, B, t->tf_train, t->ntf_train, aug_key, t->x, t->y, t->scratch);
    nn_pass p = {.B = B, .training = 1, .key = nn_hash64(nn_key(e->seed, KEY_DROP), (uint64_t)step),
                 .ids = t->ids};
    const float *logits = nn_model_forward(t->m, 0, t->x, &p);
    double loss = nn_loss_xent(logits, t->y, NULL, B, t->K, e->label_smoothing, -1,
                               labelled > 0 ? (double)labelled : 1.0, t->dlogits);
    if (!isfinite(loss))
      FERRY_FAIL(FERRY_ERUNTIME, "rank %d: loss is %g at step %lld (epoch %d); lower the learning rate",
                 t->c->rank, loss, (long long)step, epoch);
    nn_model_backward(t->m, 0, t->dlogits, &p, NULL, NULL);
    acc[0] += loss * (double)labelled;
    nn_argmax(logits, B, t->K, t->pred);
    for (int i = 0; i < B; i++) acc[1] += t->y[i] >= 0 && t->pred[i] == t->y[i];
  }
  if (t->c->rank == 0) acc[2] += (double)labelled;
  CHECK_CALL(dist_allreduce_f32(t->c, t->m->grads, t->m->nparams));
  if (e->clip_norm > 0) nn_clip_grad_norm(t->m, e->clip_norm);
  nn_optim_step(&t->opt, t->m, lr);
  return 0;
}

static int run(trainer *t, train_summary *out) {
  const exp_experiment *e = t->e;
  const dist_comm *c = t->c;
  const nn_dataset *ds = &t->d.train;
  int64_t per_epoch = (ds->n + e->batch - 1) / e->batch;
  int64_t total = per_epoch * e->epochs;
  if (e->max_steps > 0 && e->max_steps < total) total = e->max_steps;
  int epochs = (int)((total + per_epoch - 1) / per_epoch);
  nn_sched_cfg sched = e->sched;
  if (sched.total_steps <= 0) sched.total_steps = total;
  if (t->h && t->h->on_start && c->rank == 0) {
    char what[512];
    snprintf(what, sizeof what,
             "data %s: %lld train, %lld val, %lld test, %d classes, %dx%dx%d | model: %zu "
             "parameters | %lld steps (%d epoch%s of %lld), global batch %d on %d rank%s",
             e->data.name[0] ? e->data.name : "?", (long long)ds->n, (long long)t->d.val.n,
             (long long)t->d.test.n, t->d.nclasses, ds->shape.c, ds->shape.h, ds->shape.w,
             t->m->nparams, (long long)total, epochs, epochs == 1 ? "" : "s", (long long)per_epoch,
             e->batch, c->size,
             c->size == 1 ? "" : "s");
    t->h->on_start(t->h->ctx, what);
  }
  double t0 = now_s(), train_s = 0, val_acc = NAN;
  int64_t step = 0, samples = 0;
  for (int epoch = 1; epoch <= epochs && step < total; epoch++) {
    nn_rng r;
    nn_rng_seed(&r, nn_hash64(nn_key(e->seed, KEY_ORDER), (uint64_t)epoch));
    for (int64_t i = 0; i < ds->n; i++) t->order[i] = (int32_t)i;
    nn_rng_shuffle(&r, t->order, ds->n);
    double te = now_s(), acc[3] = {0, 0, 0};
    int64_t ep_samples = 0;
    float lr = 0;
    for (int64_t b = 0; b < per_epoch && step < total; b++, step++) {
      int64_t start = b * e->batch;
      int64_t n = ds->n - start < e->batch ? ds->n - start : e->batch;
      lr = nn_sched_lr(&sched, e->opt.lr, step);
      CHECK_CALL(train_step(t, start, n, epoch, step, lr, acc));
      ep_samples += n;
      if (t->h && t->h->on_step && c->rank == 0)
        t->h->on_step(t->h->ctx, epoch, step + 1, total,
                      acc[2] > 0 ? acc[0] * c->size / acc[2] : 0, now_s() - t0);
    }
    double ep_s = now_s() - te;
    train_s += ep_s;
    samples += ep_samples;
    CHECK_CALL(dist_allreduce_f64(c, acc, 3));
    train_epoch_stats s = {.epoch = epoch, .epochs = epochs, .step = step, .total_steps = total,
                           .train_loss = acc[2] > 0 ? acc[0] / acc[2] : NAN,
                           .train_acc = acc[2] > 0 ? acc[1] / acc[2] : NAN,
                           .val_loss = NAN, .val_acc = NAN,
                           .samples_per_s = ep_s > 0 ? (double)ep_samples / ep_s : 0,
                           .epoch_s = ep_s, .lr = lr};
    if (t->d.val.n > 0) CHECK_CALL(evaluate(t, &t->d.val, &s.val_loss, &s.val_acc));
    val_acc = s.val_acc;
    s.elapsed_s = now_s() - t0;
    s.eta_s = step > 0 ? s.elapsed_s / (double)step * (double)(total - step) : 0;
    if (t->h && t->h->on_epoch && c->rank == 0) t->h->on_epoch(t->h->ctx, &s);
  }
  memset(out, 0, sizeof *out);
  CHECK_CALL(evaluate(t, &t->d.test, &out->test_loss, &out->test_acc));
  out->val_acc = val_acc;
  out->train_s = train_s;
  out->train_samples_per_s = train_s > 0 ? (double)samples / train_s : 0;
  out->wall_s = now_s() - t0;
  out->steps = step;
  out->epochs = epochs;
  out->n_train = ds->n;
  out->n_val = t->d.val.n;
  out->n_test = t->d.test.n;
  out->nparams = t->m->nparams;
  out->world = c->size;
  out->param_hash = hash_params(t->m);
  return 0;
}

int train_run(const exp_experiment *e, const dist_comm *c, const train_hooks *h,
              train_summary *out) {
  trainer t;
  memset(&t, 0, sizeof t);
  memset(out, 0, sizeof *out);
  t.e = e;
  t.c = c;
  t.h = h;
  int rc = setup(&t);
  int first = -1;
  /* Set-up errors (bad files, shapes) are agreed on so that every rank
   * returns the same code instead of leaving others in a collective. */
  int agreed = dist_agree(c, rc, &first);
  if (agreed) {
    teardown(&t);
    out->setup_failed = 1;
    return agreed;
  }
  rc = run(&t, out);
  teardown(&t);
  return rc;
}
