/* Supervised data-parallel training loop (train/trainer.h).
 *
 * Sample order: fixed logical shards (train/shard.h), so the order and every
 * global batch depend on (seed, epoch, shards) only, never on the number of
 * ranks; rank r keeps only its shards' samples. The loss is normalised by the
 * global number of labelled rows, so the ranks' gradients add up to the
 * single-rank gradient.
 *
 * Default mode: one forward/backward over the rank's rows; gradient buckets
 * are summed while backward runs (dist/grad_sync.h). Deterministic mode: the
 * global batch is cut into L fixed leaves (groups of shards); each leaf's
 * gradient is computed on its own and the leaves are summed in a fixed binary
 * tree, across ranks by a fixed-pairing butterfly, so the bits do not depend
 * on how many ranks share the work. */
#include "train/trainer.h"

#include <cblas.h>
#include <math.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "dist/grad_sync.h"
#include "dist/linalg.h"
#include "train/ckpt.h"
#include "nn/err.h"
#include "nn/rng.h"
#include "train/shard.h"

enum { KEY_ORDER = 1, KEY_AUG = 2, KEY_DROP = 3, KEY_INIT = 4, KEY_ROT = 5 };

typedef struct {
  int rank;        /* -1: none */
  char kind[16];
  int64_t step;
} fault_spec;

/* Multi-task: a task with its own dataset, sharded like the main one (same
 * shard count and global batch, its own order). */
typedef struct {
  train_data d;         /* train: this rank's shards; val/test: this rank's slices */
  int32_t *labels;      /* labels of every training sample (global row index) */
  int32_t *local_row;   /* global training row -> row of d.train, or -1 */
  train_shards sh;
  int epoch;            /* the epoch whose order sh holds (0 = none yet) */
  nn_transform tf[2 * EXP_MAX_TF];
  int ntf;              /* the task's transforms, then its augmentation */
} task_src;

typedef struct {
  const exp_experiment *e;
  const dist_comm *c;
  const train_hooks *h;
  train_data d;        /* train holds only this rank's shards; val/test its slices */
  int32_t *labels;     /* labels of every training sample (global row index) */
  int32_t *local_row;  /* global training row -> row of d.train, or -1 */
  int64_t n_train, n_val, n_test; /* global sizes */
  train_shards sh;
  int shard_lo, shard_hi;
  int leaves, leaf_lo, nleaf;   /* deterministic mode */
  float **leaf_buf;             /* [nleaf]; [0] is the model's grad slab */
  float *tree_tmp;
  dist_grad_sync *sync;
  nn_model *m;
  nn_optim opt;
  int K;
  int local_max;
  float *x, *dlogits, *scratch;
  int32_t *y, *pred;
  int64_t *ids, *idx;
  nn_transform tf_train[2 * EXP_MAX_TF];
  int ntf_train;
  fault_spec fault;
  int64_t skipped;
  int collective_fail; /* the last error is known to every rank at once */
  int64_t start_step, start_epoch, start_batch; /* cursor after a resume */
  int stop_agreed;      /* some rank got a stop signal this step */
  /* transfer jobs */
  float *anchor;        /* L2-SP: pre-trained parameters */
  float *feats;         /* feature-extract: cached trunk features of d.train rows */
  float *featbuf;       /* [local_max][D] gathered batch of cached features */
  int frozen_blocks;    /* gradual unfreezing: trunk blocks still frozen */
  int nblocks;          /* trunk layers with parameters */
  float *best;          /* early stopping: best parameters so far */
  double best_acc;
  int evals_since_best;
  double uncached_step_s, cached_step_s; /* feature cache speed-up */
  int64_t cached_steps;
  /* multi-task */
  int nt;               /* tasks (0 = single task) */
  int Kt[EXP_MAX_TASKS];/* outputs of each task's head */
  double log_var[EXP_MAX_TASKS]; /* uncertainty weighting: s_t = log sigma_t^2 */
  double task_loss[EXP_MAX_TASKS]; /* this step's local loss sums */
  int32_t *yt;          /* derived labels of one task */
  task_src *ts[EXP_MAX_TASKS]; /* tasks with their own data (NULL: the main data) */
  int64_t *idx2, *ids2; /* rotation: rows grouped by rotation */
  ckpt_dataset prov[2]; /* provenance: training and test data digests */
} trainer;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void parse_fault(fault_spec *f, const char *s) {
  f->rank = -1;
  if (!s || !s[0]) return;
  long long step = -1;
  int r = -1;
  char kind[16] = "";
  if (sscanf(s, "%d:%15[a-z]@%lld", &r, kind, &step) >= 2) {
    f->rank = r;
    snprintf(f->kind, sizeof f->kind, "%s", kind);
    f->step = step;
  }
}

static int fault_here(const trainer *t, const char *kind, int64_t step) {
  return t->fault.rank == t->c->rank && !strcmp(t->fault.kind, kind) &&
         (step < 0 || t->fault.step == step);
}

/* Keeps rows [lo, hi) of *ds. */
static int keep_slice(nn_dataset *ds, int64_t lo, int64_t hi) {
  int64_t n = hi - lo;
  int64_t *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
  CHECK_ALLOC(idx, (size_t)n * sizeof *idx);
  for (int64_t i = 0; i < n; i++) idx[i] = lo + i;
  nn_dataset part;
  memset(&part, 0, sizeof part);
  int rc = nn_data_gather(&part, ds, idx, n);
  free(idx);
  CHECK_CALL(rc);
  nn_data_free(ds);
  *ds = part;
  return 0;
}

/* Keeps this rank's shards [shard_lo, shard_hi) of d->train (sh already
 * made over it), noting every sample's label and its local row, and this
 * rank's contiguous slice of val and test. */
static int keep_shards(const trainer *t, train_data *d, const train_shards *sh, int32_t **labels,
                       int32_t **local_row) {
  const dist_comm *c = t->c;
  nn_dataset *tr = &d->train;
  *labels = malloc((size_t)tr->n * sizeof **labels);
  *local_row = malloc((size_t)tr->n * sizeof **local_row);
  CHECK_ALLOC(*labels && *local_row ? t : NULL, (size_t)tr->n * 8);
  memcpy(*labels, tr->labels, (size_t)tr->n * sizeof **labels);
  int64_t lo = sh->start[t->shard_lo], hi = sh->start[t->shard_hi];
  int64_t *idx = malloc((size_t)(hi - lo + 1) * sizeof *idx);
  CHECK_ALLOC(idx, (size_t)(hi - lo) * sizeof *idx);
  for (int64_t i = 0; i < tr->n; i++) (*local_row)[i] = -1;
  for (int64_t i = lo; i < hi; i++) {
    idx[i - lo] = sh->members[i];
    (*local_row)[sh->members[i]] = (int32_t)(i - lo);
  }
  nn_dataset mine;
  memset(&mine, 0, sizeof mine);
  int rc = nn_data_gather(&mine, tr, idx, hi - lo);
  free(idx);
  CHECK_CALL(rc);
  nn_data_free(tr);
  *tr = mine;
  /* Evaluation: rank r scores a contiguous slice of each split. */
  int64_t nv = d->val.n, nt = d->test.n;
  CHECK_CALL(keep_slice(&d->val, nv * c->rank / c->size, nv * (c->rank + 1) / c->size));
  CHECK_CALL(keep_slice(&d->test, nt * c->rank / c->size, nt * (c->rank + 1) / c->size));
  return 0;
}

/* Multi-task: the tasks that have their own data load and shard it (same
 * shard count and global batch as the main data; their own sample order). */
static int setup_task_data(trainer *t) {
  const exp_experiment *e = t->e;
  for (int k = 0; k < e->ntasks; k++) {
    const exp_task *task = &e->tasks[k];
    if (!task->has_data) continue;
    CHECK_USER(k > 0, "tasks.%s: the first task trains on the experiment's data (its head is the "
               "run's main head); give the tasks with their own data later in the list", task->name);
    task_src *s = calloc(1, sizeof *s);
    CHECK_ALLOC(s, sizeof *s);
    t->ts[k] = s;
    exp_data x = task->data;
    if (!x.seed) x.seed = e->data.seed ^ (0x7a5c0000ULL + (uint64_t)k);
    CHECK_CALL(train_data_load_from(&s->d, &x));
    nn_shape a = s->d.train.shape, b = t->d.train.shape;
    CHECK_USER(a.c == b.c && a.h == b.h && a.w == b.w && s->d.train.spatial == t->d.train.spatial,
               "tasks.%s.data: samples are %dx%dx%d but the shared trunk takes the experiment's "
               "%dx%dx%d", task->name, a.c, a.h, a.w, b.c, b.h, b.w);
    CHECK_CALL(nn_tf_check(x.tf, x.ntf, &s->d.train));
    CHECK_CALL(nn_tf_check(x.aug, x.naug, &s->d.train));
    memcpy(s->tf, x.tf, (size_t)x.ntf * sizeof *s->tf);
    memcpy(s->tf + x.ntf, x.aug, (size_t)x.naug * sizeof *s->tf);
    s->ntf = x.ntf + x.naug;
    CHECK_CALL(train_shards_init(&s->sh, s->d.train.n, e->shards, e->batch,
                                 e->seed ^ (0x7a5c0000ULL + (uint64_t)k)));
    CHECK_CALL(keep_shards(t, &s->d, &s->sh, &s->labels, &s->local_row));
    CHECK_CALL(train_data_fill(&s->d, &x, NULL, NULL, NULL, NULL));
  }
  return 0;
}

static void free_task_data(trainer *t) {
  for (int k = 0; k < EXP_MAX_TASKS; k++) {
    task_src *s = t->ts[k];
    if (!s) continue;
    train_data_free(&s->d);
    train_shards_free(&s->sh);
    free(s->labels);
    free(s->local_row);
    free(s);
    t->ts[k] = NULL;
  }
}

/* Shards, ownership, and dropping every sample this rank will not use. */
static int setup_data(trainer *t) {
  const exp_experiment *e = t->e;
  const dist_comm *c = t->c;
  nn_dataset *tr = &t->d.train;
  t->n_train = tr->n;
  t->n_val = t->d.val.n;
  t->n_test = t->d.test.n;
  CHECK_USER(c->size <= e->shards,
             "%d ranks but train.shards is %d: every rank needs at least one shard; raise "
             "train.shards (it changes the sample order) or use fewer ranks",
             c->size, e->shards);
  CHECK_CALL(train_shards_init(&t->sh, tr->n, e->shards, e->batch, e->seed));
  t->shard_lo = e->shards * c->rank / c->size;
  t->shard_hi = e->shards * (c->rank + 1) / c->size;
  if (e->deterministic) {
    int L = e->det_leaves;
    CHECK_USER(L >= 1 && (L & (L - 1)) == 0 && e->shards % L == 0,
               "train.det_leaves (%d) must be a power of two dividing train.shards (%d)", L,
               e->shards);
    CHECK_CALL(dist_tree_shards(c, L, &t->leaf_lo, &t->nleaf));
    t->leaves = L;
  }
  CHECK_CALL(keep_shards(t, &t->d, &t->sh, &t->labels, &t->local_row));
  return 0;
}

/* Provenance digests of the whole train and test splits, then this rank's
 * rows: the data was loaded as views where it could be (train_data_load), so
 * only the rows this rank keeps are read into memory, after its shards and
 * slices are chosen from the labels. */
static int setup_rows(trainer *t) {
  nn_dataset all[2];
  memset(all, 0, sizeof all);
  int rc = 0;
  if (t->d.train.pending)
    rc = nn_data_copy(&all[0], &t->d.train);
  else
    t->prov[0].digest = nn_data_digest(&t->d.train);
  if (rc == 0 && t->d.test.pending)
    rc = nn_data_copy(&all[1], &t->d.test);
  else if (rc == 0)
    t->prov[1].digest = nn_data_digest(&t->d.test);
  if (rc == 0) rc = setup_data(t);
  if (rc == 0)
    rc = train_data_fill(&t->d, &t->e->data, &all[0], &all[1], &t->prov[0].digest,
                         &t->prov[1].digest);
  nn_data_free(&all[0]);
  nn_data_free(&all[1]);
  return rc;
}

/* Rows this rank computes in one pass: all its shards (default mode) or one
 * leaf (deterministic). */
static int rows_of_shards(const trainer *t, int m0, int m1) {
  int n = 0;
  for (int m = m0; m < m1; m++) n += t->sh.take[m];
  return n;
}

/* Multi-task: one head per task (the preset's or trunk's heads replaced). */
static int task_heads(trainer *t, nn_model_spec *spec, int nclasses_main) {
  const exp_experiment *e = t->e;
  t->nt = e->ntasks;
  spec->nheads = e->ntasks;
  for (int k = 0; k < e->ntasks; k++) {
    const exp_task *task = &e->tasks[k];
    int nclasses = t->ts[k] ? t->ts[k]->d.nclasses : nclasses_main;
    int out = task->kind == EXP_LABEL_CLASS ? nclasses
              : task->kind == EXP_LABEL_COARSE ? task->ngroups : 4;
    if (task->kind == EXP_LABEL_ROTATION)
      CHECK_USER(spec->in.c == 1 && spec->in.h == spec->in.w && spec->in_spatial,
                 "tasks.%s: rotation needs square 1-channel images, the data is %dx%dx%d",
                 task->name, spec->in.c, spec->in.h, spec->in.w);
    if (task->kind == EXP_LABEL_COARSE)
      for (int c = 0; c < nclasses; c++)
        CHECK_USER(c >= EXP_MAX_CLASSES || task->group_of[c] >= 0,
                   "tasks.%s: class %d is in no group", task->name, c);
    nn_stack_spec *h = &spec->heads[k];
    if (task->head.nlayers > 0) {
      *h = task->head;
    } else {
      memset(h, 0, sizeof *h);
      h->nlayers = 1;
      h->layers[0].op = NN_DENSE;
      h->layers[0].out = out;
    }
    snprintf(h->name, sizeof h->name, "%s", task->name);
  }
  return 0;
}

/* Labels of task k for rows whose dataset labels are y. */
static void derive_labels(const exp_task *task, const int32_t *y, int B, int32_t *out) {
  for (int i = 0; i < B; i++)
    out[i] = y[i] < 0 ? -1
             : task->kind == EXP_LABEL_COARSE ? task->group_of[y[i] < EXP_MAX_CLASSES ? y[i] : 0]
                                              : y[i];
}

/* Rotation task: the rows rotated by r*90 degrees (r keyed by sample id and
 * `salt`), assembled grouped by r into t->x, labels r into t->yt. */
static int rotated_batch(trainer *t, const nn_dataset *ds, const int64_t *idx, const int64_t *ids,
                         int B, const nn_transform *tf, int ntf, uint64_t aug_key, uint64_t salt) {
  nn_transform tf2[2 * EXP_MAX_TF + 1];
  memcpy(tf2, tf, (size_t)ntf * sizeof *tf);
  size_t numel = nn_shape_numel(ds->shape);
  int at = 0;
  for (int r = 0; r < 4; r++) {
    int n = 0;
    for (int i = 0; i < B; i++)
      if (nn_hash64(nn_key(t->e->seed, KEY_ROT) ^ salt, (uint64_t)ids[i]) % 4 == (uint64_t)r) {
        t->idx2[at + n] = idx[i];
        t->ids2[at + n] = ids[i];
        n++;
      }
    if (!n) continue;
    int nt = ntf;
    if (r) {
      memset(&tf2[nt], 0, sizeof tf2[nt]);
      tf2[nt].kind = NN_TF_ROTATE;
      tf2[nt].a[0] = 90.0f * (float)r;
      nt++;
    }
    nn_data_batch(ds, t->idx2 + at, n, tf2, nt, aug_key, t->x + (size_t)at * numel, t->yt + at,
                  t->scratch);
    for (int i = 0; i < n; i++) t->yt[at + i] = ds->labels[t->idx2[at + i]] >= 0 ? r : -1;
    at += n;
  }
  return 0;
}

/* Effective weight of task k this step. */
static double task_weight(const trainer *t, int k) {
  return t->e->uncertainty ? exp(-t->log_var[k]) : (double)t->e->tasks[k].weight;
}

/* A K-shot run records which samples it drew: DIR/train_ids.txt, the
 * training rows' indices in the source file (after the validation split),
 * one per line, so the same images can be given to another program. */
static int write_train_ids(const char *dir, const nn_dataset *d) {
  char path[EXP_PATH_MAX + 32], tmp[EXP_PATH_MAX + 40];
  snprintf(path, sizeof path, "%s/train_ids.txt", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  CHECK_RT(f, "cannot write %s", tmp);
  fprintf(f, "# %lld training rows of %s: their indices in the source file, one per line\n",
          (long long)d->n, d->source);
  for (int64_t i = 0; i < d->n; i++) fprintf(f, "%lld\n", (long long)d->ids[i]);
  int bad = ferror(f);
  bad |= fclose(f);
  CHECK_RT(!bad && rename(tmp, path) == 0, "cannot write %s", path);
  return 0;
}

static int setup(trainer *t) {
  const exp_experiment *e = t->e;
  parse_fault(&t->fault, e->fault);
  if (fault_here(t, "data", -1)) {
    /* A data file this rank cannot see (as on a node without the mount). */
    static exp_experiment broken;
    broken = *e;
    snprintf(broken.data.train.images, sizeof broken.data.train.images,
             "/nonexistent/ferry-fault-injected/train-images.gz");
    snprintf(broken.data.train.path, sizeof broken.data.train.path,
             "/nonexistent/ferry-fault-injected/train.csv");
    CHECK_CALL(train_data_load(&t->d, &broken));
  } else {
    CHECK_CALL(train_data_load(&t->d, e));
  }
  if (e->data.k_per_class > 0 && t->c->rank == 0 && e->out_dir[0])
    CHECK_CALL(write_train_ids(e->out_dir, &t->d.train));
  CHECK_CALL(nn_tf_check(e->data.tf, e->data.ntf, &t->d.train));
  CHECK_CALL(nn_tf_check(e->data.aug, e->data.naug, &t->d.train));
  snprintf(t->prov[0].name, sizeof t->prov[0].name, "train:%.200s", t->d.train.source);
  snprintf(t->prov[1].name, sizeof t->prov[1].name, "test:%.200s", t->d.test.source);
  int nclasses = t->d.nclasses;
  nn_shape shape = t->d.train.shape;
  int spatial = t->d.train.spatial;
  CHECK_CALL(setup_rows(t));
  CHECK_CALL(setup_task_data(t));
  nn_model_spec spec = e->model;
  if (e->preset[0]) CHECK_CALL(nn_model_preset(&spec, e->preset, "main", nclasses));
  spec.in = shape;
  spec.in_spatial = spatial;
  if (e->ntasks > 0) CHECK_CALL(task_heads(t, &spec, nclasses));
  int pass_rows = e->deterministic
                      ? rows_of_shards(t, 0, e->shards / t->leaves) /* largest leaf is any */
                      : rows_of_shards(t, t->shard_lo, t->shard_hi);
  if (e->deterministic)
    for (int l = 0; l < t->leaves; l++) {
      int r = rows_of_shards(t, l * e->shards / t->leaves, (l + 1) * e->shards / t->leaves);
      if (r > pass_rows) pass_rows = r;
    }
  int eval_rows = e->eval_batch > 0 ? e->eval_batch : pass_rows;
  t->local_max = pass_rows > eval_rows ? pass_rows : eval_rows;
  if (fault_here(t, "alloc", -1)) t->local_max = 1 << 28; /* an allocation that fails */
  CHECK_CALL(nn_model_new(&t->m, &spec, t->local_max));
  t->K = nn_model_head_out(t->m, 0);
  int Kmax = t->K;
  for (int k = 0; k < t->nt; k++) {
    t->Kt[k] = nn_model_head_out(t->m, k);
    if (t->Kt[k] > Kmax) Kmax = t->Kt[k];
  }
  CHECK_USER(t->nt > 0 || t->K >= nclasses,
             "model.heads.%s: the head has %d outputs but the data has %d classes",
             t->m->heads[0].name, t->K, nclasses);
  nn_model_init_params(t->m, nn_key(e->seed, KEY_INIT));
  CHECK_CALL(nn_optim_init(&t->opt, &e->opt, t->m->nparams));
  size_t numel = nn_shape_numel(shape), L = (size_t)t->local_max;
  t->x = malloc(L * numel * sizeof(float));
  t->y = malloc(L * sizeof(int32_t));
  t->pred = malloc(L * sizeof(int32_t));
  t->ids = malloc(L * sizeof(int64_t));
  t->idx = malloc(L * sizeof(int64_t));
  t->dlogits = malloc(L * (size_t)Kmax * sizeof(float));
  t->yt = malloc(L * sizeof(int32_t));
  t->idx2 = malloc(L * sizeof(int64_t));
  t->ids2 = malloc(L * sizeof(int64_t));
  CHECK_ALLOC(t->yt && t->idx2 && t->ids2 ? t : NULL, L * sizeof(int64_t));
  t->scratch = malloc(2 * numel * sizeof(float) + 64);
  CHECK_ALLOC(t->x && t->y && t->pred && t->ids && t->idx && t->dlogits && t->scratch ? t : NULL,
              L * numel * sizeof(float));
  if (e->deterministic) {
    t->leaf_buf = calloc((size_t)t->nleaf, sizeof *t->leaf_buf);
    CHECK_ALLOC(t->leaf_buf, sizeof *t->leaf_buf);
    t->leaf_buf[0] = t->m->grads;
    for (int k = 1; k < t->nleaf; k++) {
      t->leaf_buf[k] = malloc(t->m->nparams * sizeof(float));
      CHECK_ALLOC(t->leaf_buf[k], t->m->nparams * sizeof(float));
    }
    if (t->c->size > 1) {
      t->tree_tmp = malloc(t->m->nparams * sizeof(float));
      CHECK_ALLOC(t->tree_tmp, t->m->nparams * sizeof(float));
    }
  }
  memcpy(t->tf_train, e->data.tf, (size_t)e->data.ntf * sizeof(nn_transform));
  memcpy(t->tf_train + e->data.ntf, e->data.aug, (size_t)e->data.naug * sizeof(nn_transform));
  t->ntf_train = e->data.ntf + e->data.naug;
  if (e->threads > 0) openblas_set_num_threads(e->threads);
  return 0;
}

static void note(const trainer *t, const char *msg);

/* Parameters of the trunk: its groups come first in the slab. */
static size_t trunk_len(const nn_model *m) {
  size_t end = 0;
  for (int g = 0; g < m->ngroups; g++)
    if (m->groups[g].stack < 0) end = m->groups[g].off + m->groups[g].len;
  return end;
}

/* (Re)builds the bucketed synchroniser over the unfrozen groups. Collective. */
static int build_sync(trainer *t) {
  dist_grad_sync_free(&t->sync);
  if (t->c->size == 1 || t->e->deterministic) return 0;
  dist_range *r = calloc((size_t)(t->m->ngroups ? t->m->ngroups : 1), sizeof *r);
  CHECK_ALLOC(r, sizeof *r);
  int n = 0;
  for (int g = 0; g < t->m->ngroups; g++)
    if (!t->m->groups[g].frozen) r[n++] = (dist_range){t->m->groups[g].off, t->m->groups[g].len};
  int rc = dist_grad_sync_new(&t->sync, t->c, t->m->grads, r, n, (size_t)t->e->bucket_kb * 1024);
  free(r);
  CHECK_CALL(rc);
  if (t->e->bench_no_sync) dist_grad_sync_set_enabled(t->sync, 0);
  return 0;
}

/* Index in m->groups of trunk block b (trunk groups in order). */
static int group_of_block(const nn_model *m, int b) {
  for (int g = 0; g < m->ngroups; g++)
    if (m->groups[g].stack < 0 && b-- == 0) return g;
  return -1;
}

/* Slab offset where trunk block b starts (trunk_len when b is past the last). */
static size_t fresh_from(const nn_model *m, int b) {
  int g = group_of_block(m, b);
  return g < 0 ? trunk_len(m) : m->groups[g].off;
}

/* Freezes the first `frozen` trunk blocks (trunk groups in order), thaws the rest. */
static void freeze_trunk_blocks(trainer *t, int frozen) {
  int b = 0;
  for (int g = 0; g < t->m->ngroups; g++) {
    if (t->m->groups[g].stack >= 0) continue;
    nn_model_set_frozen(t->m, t->m->groups[g].name, b < frozen);
    b++;
  }
  t->frozen_blocks = frozen;
}

/* Trunk features (eval mode) of every row of ds, this rank's part: out
 * [ds->n][D], and the rows' labels in y (may be NULL). */
static int trunk_features(trainer *t, const nn_dataset *ds, float *out, int32_t *y) {
  size_t D = (size_t)t->m->feat.c;
  nn_pass p = {.training = 0};
  for (int64_t s = 0; s < ds->n; s += t->local_max) {
    int B = (int)((ds->n - s) < t->local_max ? (ds->n - s) : t->local_max);
    for (int i = 0; i < B; i++) t->idx[i] = s + i;
    nn_data_batch(ds, t->idx, B, t->e->data.tf, t->e->data.ntf, 0, t->x, t->y, t->scratch);
    p.B = B;
    const float *f = nn_model_forward_trunk(t->m, t->x, &p);
    memcpy(out + (size_t)s * D, f, (size_t)B * D * sizeof(float));
    if (y) memcpy(y + s, t->y, (size_t)B * sizeof *y);
    if (t->h && t->h->poll) CHECK_CALL(t->h->poll(t->h->poll_ctx));
  }
  return 0;
}

/* Trunk features of every local training row, computed once (eval mode). */
static int cache_features(trainer *t) {
  const nn_dataset *ds = &t->d.train;
  size_t D = (size_t)t->m->feat.c;
  t->feats = malloc((size_t)(ds->n ? ds->n : 1) * D * sizeof(float));
  t->featbuf = malloc((size_t)t->local_max * D * sizeof(float));
  CHECK_ALLOC(t->feats && t->featbuf ? t : NULL, (size_t)ds->n * D * sizeof(float));
  return trunk_features(t, ds, t->feats, NULL);
}

/* Features and labels of a split's labelled rows (this rank's part). */
static int labelled_features(trainer *t, const nn_dataset *ds, float **x, int32_t **y, int64_t *n) {
  size_t D = (size_t)t->m->feat.c, rows = (size_t)(ds->n ? ds->n : 1);
  *x = malloc(rows * D * sizeof(float));
  *y = malloc(rows * sizeof(int32_t));
  CHECK_ALLOC(*x && *y ? t : NULL, rows * D * sizeof(float));
  CHECK_CALL(trunk_features(t, ds, *x, *y));
  int64_t k = 0;
  for (int64_t i = 0; i < ds->n; i++) {
    if ((*y)[i] < 0) continue;
    if (k != i) memmove(*x + (size_t)k * D, *x + (size_t)i * D, D * sizeof(float));
    (*y)[k++] = (*y)[i];
  }
  *n = k;
  return 0;
}

/* The linear probe: the head (one dense layer) solved in closed form by
 * ridge regression on one-hot targets over the frozen trunk's features,
 * distributed over the job's ranks with ScaLAPACK (dist/linalg.h); the
 * penalty is chosen on the validation split. transfer.lambdas are relative:
 * lambda = alpha * sum_i ||x_i||^2 / D, so one grid suits any feature scale
 * and row count. Collective. */
static int probe_fit(trainer *t, train_summary *out, double *val_acc) {
  const nn_stack *hd = &t->m->heads[0];
  CHECK_USER(hd->nlayers == 1 && hd->layers[0].spec.op == NN_DENSE,
             "linear-probe solves a head of exactly one dense layer; this head (transfer.head) "
             "has %d layers", hd->nlayers);
  nn_layer *L = &hd->layers[0];
  int D = L->in.c, K = L->out.c;
  const exp_job *j = &t->e->job;
  CHECK_USER(j->nlambdas > 0, "linear-probe: transfer.lambdas is empty");
  CHECK_USER(j->nlambdas == 1 || t->n_val > 0,
             "linear-probe picks its ridge penalty on the validation split: set the target's "
             "data.val_frac > 0, or give one transfer.lambdas value");
  float *xtr = NULL, *xv = NULL;
  int32_t *ytr = NULL, *yv = NULL;
  int64_t ntr = 0, nv = 0;
  double *w = malloc((size_t)(D + 1) * (size_t)K * sizeof(double));
  double lam[EXP_MAX_GRID], acc[EXP_MAX_GRID];
  dist_linalg *la = NULL;
  dist_ridge *r = NULL;
  double t0 = now_s();
  int rc = w ? 0 : ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "out of memory");
  if (!rc) rc = labelled_features(t, &t->d.train, &xtr, &ytr, &ntr);
  if (!rc && t->n_val > 0) rc = labelled_features(t, &t->d.val, &xv, &yv, &nv);
  /* Set-up failures are local (memory): every rank agrees before the
   * collective solve, so none enters it alone. */
  int first = -1, agreed = dist_agree(t->c, rc, &first);
  if (agreed && !rc)
    rc = ferry_err_set(agreed, __FILE__, __LINE__, __func__,
                       "rank %d could not compute the probe's features", first);
  double t1 = now_s();
  if (!rc) rc = dist_linalg_new(&la, t->c);
  if (!rc) rc = dist_ridge_new(&r, la, D, K);
  if (!rc) rc = dist_ridge_add(r, xtr, ytr, ntr);
  double scale = 0;
  if (!rc) rc = dist_ridge_diag_mean(r, &scale);
  if (!rc && !(scale > 0)) scale = 1;
  for (int i = 0; i < j->nlambdas; i++) lam[i] = j->lambdas[i] * scale;
  double best = lam[0];
  if (!rc && j->nlambdas > 1)
    rc = dist_ridge_select(r, lam, j->nlambdas, xv, yv, nv, &best, w, acc);
  else if (!rc)
    rc = dist_ridge_solve(r, best, w);
  if (!rc) {
    for (int o = 0; o < K; o++) {
      for (int i = 0; i < D; i++) L->W[(size_t)o * D + i] = (float)w[(size_t)i * K + o];
      if (L->b) L->b[o] = (float)w[(size_t)D * K + o];
    }
    out->probe_lambda = best / scale;
    out->probe_solve_s = now_s() - t1;
    *val_acc = NAN;
    for (int i = 0; i < j->nlambdas && j->nlambdas > 1; i++)
      if (lam[i] == best) *val_acc = acc[i];
    char msg[160];
    snprintf(msg, sizeof msg, "linear probe: %lld rows, lambda %g x %.4g, features %.2fs, solve %.2fs",
             (long long)ntr, out->probe_lambda, scale, t1 - t0, out->probe_solve_s);
    note(t, msg);
  }
  dist_ridge_free(&r);
  dist_linalg_free(&la);
  free(w);
  free(xtr);
  free(ytr);
  free(xv);
  free(yv);
  /* The solve's own errors are agreed by every rank (dist/linalg.h). */
  if (rc) t->collective_fail = 1;
  return rc;
}

/* How a transfer job starts: the pre-trained trunk, what trains, at which
 * rate. Collective (the checkpoint is read by rank 0 and broadcast). */
static int setup_job(trainer *t) {
  const exp_job *j = &t->e->job;
  for (int g = 0; g < t->m->ngroups; g++) t->nblocks += t->m->groups[g].stack < 0;
  CHECK_USER(j->reinit_last == 0 || j->reinit_last < t->nblocks,
             "transfer.finetune.reinit_last: %d would re-initialise all %d trunk blocks (layers "
             "with parameters), which is the scratch strategy; use at most %d",
             j->reinit_last, t->nblocks, t->nblocks - 1);
  if (j->init_ckpt[0]) {
    ckpt_file *f = NULL;
    float *fresh = NULL;
    CHECK_CALL(ckpt_open_bcast(&f, j->init_ckpt, t->c));
    ckpt_trunk_report rep;
    char text[4096];
    int rc = ckpt_load_trunk(f, t->m, &rep, text, sizeof text);
    if (!rc) {
      /* The new layers must not repeat the initial values of the model the
       * checkpoint came from. A transfer job of seed s would otherwise start
       * its new head exactly where the pre-training of seed s started its
       * head (same seed, same layer names), and that head is still close
       * to the trained source head (cosine about 0.8): fine-tuning then
       * starts from a source-class readout instead of a random one, and
       * measured 1.4 points worse at K = 10 than with an unrelated head. So
       * the key also takes the loaded trunk's hash: the same trunk and seed
       * give the same start on any rank count, and any other trunk another. */
      uint64_t h = nn_hash_bytes(t->m->params, trunk_len(t->m) * sizeof(float));
      nn_model_init_params(t->m, nn_key(nn_key(t->e->seed, KEY_INIT), h));
      /* reinit_last: the last k trunk blocks keep these fresh values. */
      size_t off = fresh_from(t->m, t->nblocks - j->reinit_last), len = trunk_len(t->m) - off;
      if (j->reinit_last > 0 && !(fresh = malloc(len * sizeof(float))))
        rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "out of memory (%zu bytes)",
                           len * sizeof(float));
      if (fresh) memcpy(fresh, t->m->params + off, len * sizeof(float));
      if (!rc) rc = ckpt_load_trunk(f, t->m, &rep, text, sizeof text);
      if (!rc && fresh) memcpy(t->m->params + off, fresh, len * sizeof(float));
    }
    ckpt_close(&f);
    free(fresh);
    CHECK_CALL(rc);
    CHECK_USER(rep.matched > 0, "%s: no trunk layer matched the model's trunk:\n%s", j->init_ckpt,
               text);
    char msg[4400];
    snprintf(msg, sizeof msg, "trunk from %s: %d matched, %d skipped, %d new", j->init_ckpt,
             rep.matched, rep.skipped, rep.fresh);
    note(t, msg);
    if (j->reinit_last > 0) {
      snprintf(msg, sizeof msg, "re-initialised the last %d trunk block(s), from %s on",
               j->reinit_last, t->m->groups[group_of_block(t->m, t->nblocks - j->reinit_last)].name);
      note(t, msg);
    }
  }
  if (j->strategy == EXP_STRAT_FEATURE) {
    nn_model_set_frozen(t->m, "trunk", 1);
    CHECK_CALL(cache_features(t));
  } else if (j->strategy == EXP_STRAT_PROBE) {
    nn_model_set_frozen(t->m, "trunk", 1); /* features are computed in probe_fit */
  } else if (j->strategy == EXP_STRAT_FINETUNE) {
    if (j->trunk_lr_mult > 0) nn_model_set_lr_mult(t->m, "trunk", j->trunk_lr_mult);
    if (j->unfreeze_last > 0 && j->unfreeze_last < t->nblocks)
      freeze_trunk_blocks(t, t->nblocks - j->unfreeze_last);
    if (j->gradual_every > 0) freeze_trunk_blocks(t, t->nblocks);
    if (j->l2sp > 0) {
      t->anchor = malloc(t->m->nparams * sizeof(float));
      CHECK_ALLOC(t->anchor, t->m->nparams * sizeof(float));
      memcpy(t->anchor, t->m->params, t->m->nparams * sizeof(float));
    }
  }
  if (j->patience > 0) {
    t->best = malloc(t->m->nparams * sizeof(float));
    CHECK_ALLOC(t->best, t->m->nparams * sizeof(float));
    t->best_acc = -1;
  }
  return 0;
}

/* Collective part of set-up: same initial parameters everywhere, and the
 * bucketed synchroniser over the trainable ranges. */
static int setup_collective(trainer *t) {
  CHECK_CALL(dist_bcast(t->c, t->m->params, t->m->nparams * sizeof(float), 0));
  CHECK_CALL(setup_job(t));
  CHECK_CALL(build_sync(t));
  return 0;
}

/* After a run: give the freed heap back to the system. A run frees all it
 * allocated, but glibc raises its mmap threshold after the first large free,
 * so later runs' big buffers come from the heap, which then stays
 * fragmented: without this a rank running transfer jobs one after another
 * grew from 186 to 350 MB over 12 small jobs (peak RSS per rank of the
 * README's demo: 415 -> 195 MB with it). */
static void release_heap(void) {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

static void teardown(trainer *t) {
  free_task_data(t);
  dist_grad_sync_free(&t->sync);
  free(t->anchor);
  free(t->feats);
  free(t->featbuf);
  free(t->best);
  if (t->leaf_buf)
    for (int k = 1; k < t->nleaf; k++) free(t->leaf_buf[k]);
  free(t->leaf_buf);
  free(t->tree_tmp);
  nn_model_free(&t->m);
  nn_optim_free(&t->opt);
  train_data_free(&t->d);
  train_shards_free(&t->sh);
  free(t->labels);
  free(t->local_row);
  free(t->x);
  free(t->y);
  free(t->pred);
  free(t->ids);
  free(t->idx);
  free(t->dlogits);
  free(t->scratch);
  free(t->yt);
  free(t->idx2);
  free(t->ids2);
  release_heap();
}

/* Loss and accuracy of task k (head k; k = 0 for single-task runs) over a
 * split whose slice this rank holds. Collective. */
static int evaluate_task(trainer *t, const nn_dataset *ds, int k, double *loss, double *acc) {
  double sums[3] = {0, 0, 0}; /* loss sum, correct, labelled */
  nn_pass p = {.training = 0};
  const exp_task *task = t->nt ? &t->e->tasks[k] : NULL;
  int K = t->nt ? t->Kt[k] : t->K;
  /* A task with its own data is scored with its own transforms. */
  const exp_data *xd = task && task->has_data ? &task->data : &t->e->data;
  for (int64_t s = 0; s < ds->n; s += t->local_max) {
    int B = (int)((ds->n - s) < t->local_max ? (ds->n - s) : t->local_max);
    for (int i = 0; i < B; i++) t->idx[i] = s + i;
    const int32_t *y = t->y;
    if (task && task->kind == EXP_LABEL_ROTATION) {
      for (int i = 0; i < B; i++) t->ids[i] = ds->ids[s + i];
      CHECK_CALL(rotated_batch(t, ds, t->idx, t->ids, B, xd->tf, xd->ntf, 0,
                               0xe7a1ULL));
      y = t->yt;
    } else {
      nn_data_batch(ds, t->idx, B, xd->tf, xd->ntf, 0, t->x, t->y, t->scratch);
      if (task) {
        derive_labels(task, t->y, B, t->yt);
        y = t->yt;
      }
    }
    p.B = B;
    const float *logits = nn_model_forward(t->m, k, t->x, &p);
    sums[0] += nn_loss_xent(logits, y, NULL, B, K, 0.0f, -1, 1.0, NULL);
    nn_argmax(logits, B, K, t->pred);
    for (int i = 0; i < B; i++) {
      if (y[i] < 0) continue;
      sums[1] += t->pred[i] == y[i];
      sums[2] += 1;
    }
  }
  CHECK_CALL(dist_allreduce_f64(t->c, sums, 3));
  *loss = sums[2] > 0 ? sums[0] / sums[2] : NAN;
  *acc = sums[2] > 0 ? sums[1] / sums[2] : NAN;
  return 0;
}

static int evaluate(trainer *t, const nn_dataset *ds, double *loss, double *acc) {
  return evaluate_task(t, ds, 0, loss, acc);
}

static void sync_ready(void *ctx, size_t off, size_t len) {
  dist_grad_sync_ready(ctx, off, len);
}

/* Task k's head on features feat of B rows labelled y: forward, the loss
 * w_k * (sum over the rows / norm_k, the task's labelled rows in the global
 * batch), backward into the head and m->dfeat. Adds to the step's loss sum
 * (normalised by norm) and to the task's loss (task_loss / norm is then the
 * task's mean loss, for uncertainty weighting). Returns the logits. */
static const float *task_head_pass(trainer *t, int k, const float *feat, const int32_t *y, int B,
                                   double norm_k, double norm, const nn_pass *p,
                                   nn_grad_ready_fn cb, void *ctx, double *loss_sum) {
  const float *lg = nn_model_forward_head(t->m, k, feat, p);
  double w = task_weight(t, k);
  double l = nn_loss_xent(lg, y, NULL, B, t->Kt[k], t->e->label_smoothing, -1,
                          w > 0 ? norm_k / w : norm_k * 1e30, t->dlogits);
  t->task_loss[k] += w > 0 ? l * norm_k / w * (norm / norm_k) : 0;
  *loss_sum += l * norm;
  nn_model_backward_head(t->m, k, feat, t->dlogits, p, cb, ctx);
  return lg;
}

/* Multi-task step on the B rows in t->idx (shards [m0, m1) of the batch):
 * tasks on the plain input share one trunk forward; each rotation task runs
 * the trunk on rotated copies; each task with its own data runs it on the
 * same shards of its own batch. The joint loss is sum_t w_t L_t; trunk
 * gradients are final (and reported to cb) only after the last trunk
 * backward. */
static int pass_tasks(trainer *t, int m0, int m1, int B, int epoch, int64_t step, double norm,
                      nn_pass *p, nn_grad_ready_fn cb, void *ctx, double *loss_sum,
                      double *correct) {
  const exp_experiment *e = t->e;
  const nn_dataset *ds = &t->d.train;
  uint64_t aug_key = nn_hash64(nn_key(e->seed, KEY_AUG), (uint64_t)epoch);
  int nrot = 0, nplain = 0, nown = 0;
  for (int k = 0; k < t->nt; k++) {
    if (t->ts[k])
      nown++;
    else if (e->tasks[k].kind == EXP_LABEL_ROTATION)
      nrot++;
    else
      nplain++;
  }
  int trunk_passes = (nplain > 0) + nrot + nown, done = 0;
  if (nplain) {
    nn_data_batch(ds, t->idx, B, t->tf_train, t->ntf_train, aug_key, t->x, t->y, t->scratch);
    const float *feat = nn_model_forward_trunk(t->m, t->x, p);
    for (int k = 0; k < t->nt; k++) {
      if (e->tasks[k].kind == EXP_LABEL_ROTATION || t->ts[k]) continue;
      derive_labels(&e->tasks[k], t->y, B, t->yt);
      const float *lg = task_head_pass(t, k, feat, t->yt, B, norm, norm, p, cb, ctx, loss_sum);
      if (k == 0) {
        nn_argmax(lg, B, t->Kt[k], t->pred);
        for (int i = 0; i < B; i++) *correct += t->yt[i] >= 0 && t->pred[i] == t->yt[i];
      }
    }
    nn_model_backward_trunk(t->m, p, ++done == trunk_passes ? cb : NULL, ctx);
  }
  for (int k = 0; k < t->nt; k++) {
    if (e->tasks[k].kind != EXP_LABEL_ROTATION || t->ts[k]) continue;
    CHECK_CALL(rotated_batch(t, ds, t->idx, t->ids, B, t->tf_train, t->ntf_train, aug_key,
                             (uint64_t)step * 0x9e3779b97f4a7c15ULL + (uint64_t)k));
    nn_pass pr = *p;
    pr.ids = t->ids2;
    const float *feat = nn_model_forward_trunk(t->m, t->x, &pr);
    task_head_pass(t, k, feat, t->yt, B, norm, norm, &pr, cb, ctx, loss_sum);
    nn_model_backward_trunk(t->m, &pr, ++done == trunk_passes ? cb : NULL, ctx);
  }
  /* Tasks with their own data (last: t->idx and t->ids are reused). Step s
   * takes the task's global batch s mod its batches per epoch; its loss is
   * normalised by its own labelled rows. */
  for (int k = 0; k < t->nt; k++) {
    task_src *s = t->ts[k];
    if (!s) continue;
    const exp_task *task = &e->tasks[k];
    int64_t spe = s->sh.steps_per_epoch;
    int ep = (int)(step / spe) + 1;
    int64_t bk = step % spe;
    if (s->epoch != ep) {
      train_shards_epoch(&s->sh, nn_key(e->seed, KEY_ORDER) ^ (0x7a5c0000ULL + (uint64_t)k), ep);
      s->epoch = ep;
    }
    int64_t lab = 0;
    for (int m = 0; m < s->sh.M; m++) {
      const int32_t *rows = train_shards_rows(&s->sh, m, bk);
      for (int j = 0; j < s->sh.take[m]; j++) lab += s->labels[rows[j]] >= 0;
    }
    double norm_k = lab > 0 ? (double)lab : 1.0;
    int Bk = 0;
    for (int m = m0; m < m1; m++) {
      const int32_t *rows = train_shards_rows(&s->sh, m, bk);
      for (int j = 0; j < s->sh.take[m]; j++) {
        int32_t r = s->local_row[rows[j]];
        t->idx[Bk] = r;
        t->ids[Bk] = s->d.train.ids[r];
        Bk++;
      }
    }
    uint64_t ak = nn_hash64(nn_key(e->seed, KEY_AUG) ^ (0x7a5c0000ULL + (uint64_t)k), (uint64_t)ep);
    nn_pass pk = *p;
    pk.B = Bk;
    pk.ids = t->ids;
    if (task->kind == EXP_LABEL_ROTATION) {
      CHECK_CALL(rotated_batch(t, &s->d.train, t->idx, t->ids, Bk, s->tf, s->ntf, ak,
                               (uint64_t)step * 0x9e3779b97f4a7c15ULL + (uint64_t)k));
      pk.ids = t->ids2;
    } else {
      nn_data_batch(&s->d.train, t->idx, Bk, s->tf, s->ntf, ak, t->x, t->y, t->scratch);
      derive_labels(task, t->y, Bk, t->yt);
    }
    const float *feat = nn_model_forward_trunk(t->m, t->x, &pk);
    task_head_pass(t, k, feat, t->yt, Bk, norm_k, norm, &pk, cb, ctx, loss_sum);
    nn_model_backward_trunk(t->m, &pk, ++done == trunk_passes ? cb : NULL, ctx);
  }
  return 0;
}

/* Forward/backward over the rows of shards [m0, m1) of global batch b,
 * accumulating into the gradient slab. Adds loss sum and correct count. */
static int pass(trainer *t, int m0, int m1, int64_t b, int epoch, int64_t step, double norm,
                nn_grad_ready_fn cb, void *ctx, double *loss_sum, double *correct) {
  const exp_experiment *e = t->e;
  const nn_dataset *ds = &t->d.train;
  int B = 0;
  for (int m = m0; m < m1; m++) {
    const int32_t *rows = train_shards_rows(&t->sh, m, b);
    for (int j = 0; j < t->sh.take[m]; j++) {
      int32_t lr = t->local_row[rows[j]];
      t->idx[B] = lr;
      t->ids[B] = ds->ids[lr];
      B++;
    }
  }
  nn_pass p = {.B = B, .training = 1,
               .key = nn_hash64(nn_key(e->seed, KEY_DROP), (uint64_t)step), .ids = t->ids};
  if (t->nt > 0)
    return pass_tasks(t, m0, m1, B, epoch, step, norm, &p, cb, ctx, loss_sum, correct);
  const float *logits;
  if (t->feats) {
    /* Frozen trunk: the head trains on features computed once. */
    size_t D = (size_t)t->m->feat.c;
    for (int i = 0; i < B; i++) {
      memcpy(t->featbuf + (size_t)i * D, t->feats + (size_t)t->idx[i] * D, D * sizeof(float));
      t->y[i] = ds->labels[t->idx[i]];
    }
    logits = nn_model_forward_head(t->m, 0, t->featbuf, &p);
  } else {
    uint64_t aug_key = nn_hash64(nn_key(e->seed, KEY_AUG), (uint64_t)epoch);
    nn_data_batch(ds, t->idx, B, t->tf_train, t->ntf_train, aug_key, t->x, t->y, t->scratch);
    logits = nn_model_forward(t->m, 0, t->x, &p);
  }
  double loss = nn_loss_xent(logits, t->y, NULL, B, t->K, e->label_smoothing, -1, norm, t->dlogits);
  if (t->feats)
    nn_model_backward_head(t->m, 0, t->featbuf, t->dlogits, &p, cb, ctx);
  else
    nn_model_backward(t->m, 0, t->dlogits, &p, cb, ctx);
  *loss_sum += loss * norm;
  nn_argmax(logits, B, t->K, t->pred);
  for (int i = 0; i < B; i++) *correct += t->y[i] >= 0 && t->pred[i] == t->y[i];
  return 0;
}

/* Gradient of global batch b on this rank's share, summed over ranks. */
static int compute_gradient(trainer *t, int64_t b, int epoch, int64_t step, double norm,
                            double *loss_sum, double *correct) {
  const exp_experiment *e = t->e;
  if (!e->deterministic) {
    nn_model_zero_grad(t->m);
    int comm = t->sync != NULL;
    CHECK_CALL(pass(t, t->shard_lo, t->shard_hi, b, epoch, step, norm, comm ? sync_ready : NULL,
                    t->sync, loss_sum, correct));
    if (fault_here(t, "nan", step)) t->m->grads[0] = NAN, *loss_sum = NAN;
    if (comm) CHECK_CALL(dist_grad_sync_finish(t->sync));
    return 0;
  }
  /* Leaves last to first, so that leaf 0 lands in the grad slab itself. */
  int per = e->shards / t->leaves;
  for (int k = t->nleaf - 1; k >= 0; k--) {
    int l = t->leaf_lo + k;
    nn_model_zero_grad(t->m);
    CHECK_CALL(pass(t, l * per, (l + 1) * per, b, epoch, step, norm, NULL, NULL, loss_sum, correct));
    if (k > 0) memcpy(t->leaf_buf[k], t->m->grads, t->m->nparams * sizeof(float));
  }
  if (fault_here(t, "nan", step)) t->m->grads[0] = NAN, *loss_sum = NAN;
  CHECK_CALL(dist_reduce_tree_local(t->leaf_buf, t->nleaf, t->m->grads, t->m->nparams));
  if (t->c->size > 1)
    CHECK_CALL(dist_allreduce_tree(t->c, t->m->grads, t->m->nparams, t->tree_tmp));
  return 0;
}

/* One optimizer step on global batch b. acc: loss sum, correct, labelled
 * (global, reduced every step). Returns FERRY_ERUNTIME on every rank
 * together when the step is non-finite under nan: stop. */
static int train_step(trainer *t, int64_t b, int epoch, int64_t step, float lr, double acc[3],
                      double *step_loss) {
  const exp_experiment *e = t->e;
  int64_t labelled = 0;
  for (int m = 0; m < t->sh.M; m++) {
    const int32_t *rows = train_shards_rows(&t->sh, m, b);
    for (int j = 0; j < t->sh.take[m]; j++) labelled += t->labels[rows[j]] >= 0;
  }
  double norm = labelled > 0 ? (double)labelled : 1.0;
  double loss_sum = 0, correct = 0;
  memset(t->task_loss, 0, sizeof t->task_loss);
  CHECK_CALL(compute_gradient(t, b, epoch, step, norm, &loss_sum, &correct));
  /* Every rank learns whether any rank's loss was non-finite, and which. */
  /* ... and whether any rank was asked to stop (SIGTERM/SIGUSR1). */
  int stop_here = t->h && t->h->stop && *t->h->stop;
  double st[4 + EXP_MAX_TASKS] = {isfinite(loss_sum) ? loss_sum : 0, correct,
                  isfinite(loss_sum) ? 0 : ldexp(1.0, t->c->rank < 52 ? t->c->rank : 52),
                  stop_here ? 1.0 : 0.0};
  for (int k = 0; k < t->nt; k++) st[4 + k] = t->task_loss[k];
  CHECK_CALL(dist_allreduce_f64(t->c, st, 4 + (size_t)t->nt));
  t->stop_agreed = st[3] > 0;
  double gnorm = nn_grad_norm(t->m);
  if (st[2] != 0 || !isfinite(gnorm)) {
    /* st[2] is an exact sum of distinct powers of two: its lowest set bit
     * names the first rank whose loss was not finite. */
    uint64_t mask = (uint64_t)st[2];
    if (e->nan_policy == EXP_NAN_SKIP) {
      t->skipped++;
      *step_loss = NAN;
      return 0;
    }
    t->collective_fail = 1;
    if (mask)
      FERRY_FAIL(FERRY_ERUNTIME,
                 "rank %d: the loss is not finite at step %lld (epoch %d); lower the learning "
                 "rate, clip gradients (train.clip_norm), or set train.nan: skip",
                 __builtin_ctzll(mask), (long long)step, epoch);
    FERRY_FAIL(FERRY_ERUNTIME,
               "the summed gradient is not finite at step %lld (epoch %d); lower the learning "
               "rate or clip gradients (train.clip_norm)",
               (long long)step, epoch);
  }
  if (t->anchor) /* over the loaded blocks; re-initialised ones have no pre-trained value */
    for (int blk = 0; blk < t->nblocks - e->job.reinit_last; blk++)
      nn_l2sp_apply(t->m, t->anchor, t->m->groups[group_of_block(t->m, blk)].name, e->job.l2sp);
  if (e->clip_norm > 0) nn_clip_grad_norm(t->m, e->clip_norm);
  nn_optim_step(&t->opt, t->m, lr);
  if (e->uncertainty)
    /* Kendall et al.: loss sum_t exp(-s_t) L_t + s_t / 2, s_t = log sigma_t^2,
     * one SGD step on s_t from the global task losses (the same on every rank). */
    for (int k = 0; k < t->nt; k++) {
      double Lt = st[4 + k] / norm;
      t->log_var[k] -= lr * (0.5 - exp(-t->log_var[k]) * Lt);
    }
  acc[0] += st[0];
  acc[1] += st[1];
  acc[2] += (double)labelled;
  *step_loss = st[0] / norm;
  return 0;
}

static int check_consistency(trainer *t, int64_t step) {
  if (t->e->bench_no_sync) return 0; /* ranks differ by design without gradient sync */
  if (fault_here(t, "diverge", step)) t->m->params[0] += 1.0f;
  int same = 1;
  CHECK_CALL(dist_same_u64(t->c, nn_hash_bytes(t->m->params, t->m->nparams * sizeof(float)), &same));
  t->collective_fail = !same;
  CHECK_RT(same,
           "parameters differ across ranks after step %lld (checksums disagree): the ranks "
           "diverged; this is a bug or a hardware fault, please report it",
           (long long)step);
  return 0;
}

static void note(const trainer *t, const char *msg) {
  if (t->c->rank == 0 && t->h && t->h->on_start) t->h->on_start(t->h->ctx, msg);
}

/* Writes a checkpoint of the state after `steps` steps, whose next batch is
 * (epoch, batch). Rank 0 writes; every rank learns the outcome. Collective. */
static int save(trainer *t, int64_t steps, int64_t epoch, int64_t batch) {
  const exp_experiment *e = t->e;
  char path[EXP_PATH_MAX + 64];
  int rc = 0;
  if (t->c->rank == 0) {
    ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    meta.step = steps;
    meta.epoch = epoch;
    meta.batch = batch;
    meta.seed = e->seed;
    meta.experiment = e->text;
    meta.experiment_hash = e->text_hash;
    meta.ndatasets = 2;
    memcpy(meta.datasets, t->prov, sizeof t->prov);
    meta.world_size = t->c->size;
    if (e->uncertainty) {
      meta.ntask_log_var = t->nt;
      for (int k = 0; k < t->nt; k++) meta.task_log_var[k] = t->log_var[k];
    }
    rc = ckpt_path_for_step(path, sizeof path, e->out_dir, steps);
    if (!rc) rc = ckpt_write(path, t->m, &t->opt, &meta, 0);
    if (!rc) rc = ckpt_prune(e->out_dir, e->ckpt_keep);
  }
  int first = -1;
  int agreed = dist_agree(t->c, rc, &first);
  if (agreed) {
    t->collective_fail = 1;
    if (t->c->rank == 0) return rc;
    FERRY_FAIL(agreed, "rank 0 could not write a checkpoint");
  }
  return 0;
}

/* checkpoint.resume: "latest" (newest valid file in the run directory) or a
 * file. Rank 0 finds and reads it; every rank gets the bytes. Collective. */
static int resume(trainer *t) {
  const exp_experiment *e = t->e;
  char path[EXP_PATH_MAX + 64] = "", skipped[2048] = "", msg[2400];
  int rc = 0;
  if (!strcmp(e->resume, "latest")) {
    if (t->c->rank == 0) rc = ckpt_find_latest(e->out_dir, path, sizeof path, skipped, sizeof skipped);
    int first = -1;
    if (dist_agree(t->c, rc, &first)) return rc ? rc : FERRY_ERUNTIME;
    CHECK_CALL(dist_bcast(t->c, path, sizeof path, 0));
    if (skipped[0]) note(t, skipped);
    if (!path[0]) {
      snprintf(msg, sizeof msg, "resume: no checkpoint in %s yet: starting from step 0", e->out_dir);
      note(t, msg);
      return 0;
    }
  } else {
    snprintf(path, sizeof path, "%s", e->resume);
  }
  ckpt_file *f = NULL;
  CHECK_CALL(ckpt_open_bcast(&f, path, t->c));
  rc = ckpt_load_model(f, t->m, &t->opt);
  const ckpt_meta *meta = ckpt_meta_of(f);
  if (!rc && meta->seed != e->seed)
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "%s was written with seed %llu, the experiment has seed %llu: resuming "
                       "would not be the same run",
                       path, (unsigned long long)meta->seed, (unsigned long long)e->seed);
  if (!rc && e->uncertainty && meta->ntask_log_var > 0) {
    /* The learned task weights go on from where they were. */
    if (meta->ntask_log_var != t->nt)
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s holds learned weights of %d tasks, the experiment has %d tasks",
                         path, meta->ntask_log_var, t->nt);
    for (int k = 0; !rc && k < t->nt; k++) t->log_var[k] = meta->task_log_var[k];
  }
  if (!rc) {
    t->start_step = meta->step;
    t->start_epoch = meta->epoch;
    t->start_batch = meta->batch;
    snprintf(msg, sizeof msg, "resume: %s (step %lld, epoch %lld batch %lld, saved on %d rank%s%s)",
             path, (long long)meta->step, (long long)meta->epoch, (long long)meta->batch,
             meta->world_size, meta->world_size == 1 ? "" : "s",
             meta->experiment_hash != e->text_hash ? "; the experiment file changed since" : "");
    note(t, msg);
  }
  ckpt_close(&f);
  return rc;
}

static int run(trainer *t, train_summary *out) {
  const exp_experiment *e = t->e;
  const dist_comm *c = t->c;
  int64_t per_epoch = t->sh.steps_per_epoch;
  int64_t total = per_epoch * e->epochs;
  if (e->max_steps > 0 && e->max_steps < total) total = e->max_steps;
  int epochs = (int)((total + per_epoch - 1) / per_epoch);
  nn_sched_cfg sched = e->sched;
  if (sched.total_steps <= 0) sched.total_steps = total;
  if (t->h && t->h->on_start && c->rank == 0) {
    char what[640];
    snprintf(what, sizeof what,
             "data %s: %lld train, %lld val, %lld test, %d classes, %dx%dx%d | model: %zu "
             "parameters | %lld steps (%d epoch%s of %lld), global batch %d on %d rank%s, "
             "%d shards%s",
             e->data.name[0] ? e->data.name : "?", (long long)t->n_train, (long long)t->n_val,
             (long long)t->n_test, t->d.nclasses, t->d.train.shape.c, t->d.train.shape.h,
             t->d.train.shape.w, t->m->nparams, (long long)total, epochs, epochs == 1 ? "" : "s",
             (long long)per_epoch, e->batch, c->size, c->size == 1 ? "" : "s", e->shards,
             e->deterministic ? ", deterministic" : "");
    t->h->on_start(t->h->ctx, what);
  }
  double t0 = now_s(), train_s = 0, val_acc = NAN;
  int64_t step = t->start_step, samples = 0;
  int saving = e->ckpt_every_steps > 0 || e->ckpt_every_epoch || e->job.ckpt_final;
  int64_t last_saved = -1;
  int stop_early = 0;
  const exp_job *j = &e->job;
  if (t->start_epoch < 1) t->start_epoch = 1;
  int probe = j->strategy == EXP_STRAT_PROBE;
  if (probe) {
    CHECK_CALL(probe_fit(t, out, &val_acc));
    total = 0; /* no optimizer steps */
  }
  /* Statistics of the window since the last report (an epoch, or eval_every steps). */
  double acc[3] = {0, 0, 0}, win_s = 0;
  int64_t win_samples = 0;
  for (int epoch = (int)t->start_epoch; epoch <= epochs && step < total && !stop_early; epoch++) {
    train_shards_epoch(&t->sh, nn_key(e->seed, KEY_ORDER), epoch);
    float lr = 0;
    int64_t b0 = epoch == t->start_epoch ? t->start_batch : 0;
    for (int64_t b = b0; b < per_epoch && step < total; b++, step++) {
      double ts = now_s();
      lr = nn_sched_lr(&sched, e->opt.lr, step);
      double step_loss = 0;
      CHECK_CALL(train_step(t, b, epoch, step, lr, acc, &step_loss));
      double dt = now_s() - ts;
      win_s += dt;
      train_s += dt;
      win_samples += e->batch;
      samples += e->batch;
      if (e->check_every > 0 && (step + 1) % e->check_every == 0)
        CHECK_CALL(check_consistency(t, step + 1));
      if (j->gradual_every > 0 && t->frozen_blocks > 0 && (step + 1) % j->gradual_every == 0) {
        /* Gradual unfreezing: the next block down starts training (all ranks
         * at the same step), so the synchroniser's ranges change too. */
        freeze_trunk_blocks(t, t->frozen_blocks - 1);
        CHECK_CALL(build_sync(t));
      }
      int end_of_epoch = b + 1 == per_epoch;
      if (t->stop_agreed || (e->ckpt_every_steps > 0 && (step + 1) % e->ckpt_every_steps == 0) ||
          (e->ckpt_every_epoch && end_of_epoch)) {
        CHECK_CALL(save(t, step + 1, end_of_epoch ? epoch + 1 : epoch, end_of_epoch ? 0 : b + 1));
        last_saved = step + 1;
      }
      if (t->stop_agreed) {
        t->collective_fail = 1;
        FERRY_FAIL(FERRY_ESTOPPED,
                   "stopped by a signal after step %lld; checkpoint written to %s; continue "
                   "with: ferry train ... --resume",
                   (long long)(step + 1), e->out_dir);
      }
      if (fault_here(t, "kill", step + 1)) raise(SIGKILL);
      if (t->h && t->h->poll) CHECK_CALL(t->h->poll(t->h->poll_ctx));
      if (c->rank == 0 && t->h) {
        if (t->h->on_log && e->log_every > 0 && ((step + 1) % e->log_every == 0 || step == 0))
          t->h->on_log(t->h->ctx, epoch, step + 1, step_loss, lr);
        if (t->h->on_step)
          t->h->on_step(t->h->ctx, epoch, step + 1, total, acc[2] > 0 ? acc[0] / acc[2] : 0,
                        now_s() - t0);
      }
      int last = step + 1 == total;
      int report_now = j->eval_every > 0 ? ((step + 1) % j->eval_every == 0 || last)
                                         : (end_of_epoch || last);
      if (!report_now) continue;
      train_epoch_stats s = {.epoch = epoch, .epochs = epochs, .step = step + 1,
                             .total_steps = total,
                             .train_loss = acc[2] > 0 ? acc[0] / acc[2] : NAN,
                             .train_acc = acc[2] > 0 ? acc[1] / acc[2] : NAN,
                             .val_loss = NAN, .val_acc = NAN,
                             .samples_per_s = win_s > 0 ? (double)win_samples / win_s : 0,
                             .epoch_s = win_s, .lr = lr};
      if (t->n_val > 0) CHECK_CALL(evaluate(t, &t->d.val, &s.val_loss, &s.val_acc));
      val_acc = s.val_acc;
      s.elapsed_s = now_s() - t0;
      s.eta_s = step + 1 > t->start_step
                    ? s.elapsed_s / (double)(step + 1 - t->start_step) * (double)(total - step - 1)
                    : 0;
      if (t->h && t->h->on_epoch && c->rank == 0) t->h->on_epoch(t->h->ctx, &s);
      memset(acc, 0, sizeof acc);
      win_s = 0;
      win_samples = 0;
      if (t->best && !isnan(s.val_acc)) {
        /* Early stopping: every rank sees the same validation accuracy. */
        if (s.val_acc > t->best_acc) {
          t->best_acc = s.val_acc;
          t->evals_since_best = 0;
          memcpy(t->best, t->m->params, t->m->nparams * sizeof(float));
        } else if (++t->evals_since_best >= j->patience) {
          stop_early = 1;
          step++;
          break;
        }
      }
    }
  }
  if (t->best && t->best_acc >= 0) memcpy(t->m->params, t->best, t->m->nparams * sizeof(float));
  if (t->feats && step > 0) {
    /* The feature-extraction speed-up: a step that runs the frozen trunk
     * (forward trunk + head, backward head) against the cached step. */
    int B = rows_of_shards(t, t->shard_lo, t->shard_hi);
    for (int i = 0; i < B; i++) t->idx[i] = i % t->d.train.n;
    nn_pass p = {.B = B, .training = 1};
    double t1 = now_s();
    for (int r = 0; r < 5; r++) {
      nn_data_batch(&t->d.train, t->idx, B, t->tf_train, t->ntf_train, 0, t->x, t->y, t->scratch);
      const float *lg = nn_model_forward(t->m, 0, t->x, &p);
      nn_loss_xent(lg, t->y, NULL, B, t->K, 0, -1, B, t->dlogits);
      nn_model_backward(t->m, 0, t->dlogits, &p, NULL, NULL);
    }
    nn_model_zero_grad(t->m);
    double uncached = (now_s() - t1) / 5, cached = train_s / (double)(step - t->start_step);
    out->feature_cache_speedup = cached > 0 ? uncached / cached : NAN;
  }
  if (e->check_every > 0) CHECK_CALL(check_consistency(t, step));
  /* The final state is always kept when checkpoints are on (transfer jobs
   * start from it). The cursor points past the last step. */
  if (saving && last_saved != step && (step > t->start_step || probe))
    CHECK_CALL(save(t, step, step / per_epoch + 1, step % per_epoch));
  CHECK_CALL(evaluate(t, &t->d.test, &out->test_loss, &out->test_acc));
  out->ntasks = t->nt;
  for (int k = 0; k < t->nt && k < EXP_MAX_TASKS; k++) {
    double l;
    snprintf(out->task_name[k], sizeof out->task_name[k], "%s", e->tasks[k].name);
    CHECK_CALL(evaluate_task(t, t->ts[k] ? &t->ts[k]->d.test : &t->d.test, k, &l,
                             &out->task_acc[k]));
    out->task_weight[k] = task_weight(t, k);
  }
  out->val_acc = t->best ? t->best_acc : val_acc;
  out->train_s = train_s;
  out->train_samples_per_s = train_s > 0 ? (double)samples / train_s : 0;
  out->wall_s = now_s() - t0;
  out->steps = step;
  out->epochs = epochs;
  out->n_train = t->n_train;
  out->n_val = t->n_val;
  out->n_test = t->n_test;
  out->nparams = t->m->nparams;
  out->world = c->size;
  out->param_hash = nn_hash_bytes(t->m->params, t->m->nparams * sizeof(float));
  out->trunk_hash = nn_hash_bytes(t->m->params, trunk_len(t->m) * sizeof(float));
  out->skipped_steps = t->skipped;
  if (t->sync) dist_grad_sync_stats(t->sync, &out->sync_wait_s, NULL, NULL);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double rss[64], all[1024];
  double mine = (double)ru.ru_maxrss / 1024.0;
  if (c->size <= 1024) {
    CHECK_CALL(dist_allgather_f64(c, mine, all));
    for (int r = 0; r < c->size && r < 64; r++) rss[r] = all[r];
    memcpy(out->rss_mb, rss, sizeof(double) * (size_t)(c->size < 64 ? c->size : 64));
  }
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
  /* Set-up errors (a file missing on one node, a shape error, no memory)
   * are agreed on, so that every rank returns instead of waiting in a
   * collective for the one that failed. */
  int agreed = dist_agree(c, rc, &first);
  if (!agreed) {
    rc = setup_collective(&t);
    agreed = dist_agree(c, rc, &first);
  }
  if (!agreed && e->resume[0]) {
    rc = resume(&t);
    agreed = dist_agree(c, rc, &first);
  }
  if (agreed) {
    teardown(&t);
    out->setup_failed = 1;
    out->failed_rank = first;
    return agreed;
  }
  rc = run(&t, out);
  teardown(&t);
  /* Non-finite steps and checksum mismatches are seen by every rank at once:
   * they fail together (the message is the same everywhere). */
  if (rc && t.collective_fail) out->setup_failed = 1, out->failed_rank = 0;
  return rc;
}
