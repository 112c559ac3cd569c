/* Transfer jobs (train/transfer.h): expansion of the grid, the coordinator's
 * queue policy (longest expected job first, retries) and the workers' loop.
 * Job specs and results travel as protobuf messages (proto/ferry.proto)
 * through the queue of dist/sched.h. */
#include "train/transfer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/sched.h"
#include "ferry.pb-c.h"
#include "train/ckpt.h"
#include "nn/err.h"

int transfer_njobs(const exp_transfer *x) {
  int nl = x->nlrs > 0 ? x->nlrs : 1;
  return x->ntargets * x->nstrategies * x->nk * x->nseeds * nl;
}

int transfer_safe_name(const char *name) {
  if (!name[0] || name[0] == '.') return 0;
  for (const char *p = name; *p; p++) {
    char ch = *p;
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '.' || ch == '_' || ch == '-';
    if (!ok) return 0;
  }
  return strstr(name, "..") == NULL;
}

int transfer_job(const exp_experiment *base, const char *run_dir, const transfer_pretrained *pre,
                 int i, exp_experiment *je, transfer_result *r) {
  const exp_transfer *x = &base->transfer;
  CHECK_RT(i >= 0 && i < transfer_njobs(x), "job %d of %d", i, transfer_njobs(x));
  /* Order: target, K, seed, lr, strategy: the strategies of one draw are adjacent. */
  int nl = x->nlrs > 0 ? x->nlrs : 1;
  int s = i % x->nstrategies, rest = i / x->nstrategies;
  int lr_i = rest % nl;
  rest /= nl;
  int seed_i = rest % x->nseeds;
  rest /= x->nseeds;
  int k_i = rest % x->nk, t_i = rest / x->nk;
  const exp_target *tg = &x->targets[t_i];
  CHECK_USER(transfer_safe_name(tg->name),
             "transfer.targets: the name \"%s\" cannot name a job directory (use letters, digits, "
             "'.', '_' and '-'; no leading '.', no \"..\")", tg->name);
  memset(r, 0, sizeof *r);
  r->index = i;
  snprintf(r->target, sizeof r->target, "%s", tg->name);
  r->strategy = (exp_strategy)x->strategies[s];
  r->k = x->k[k_i];
  r->seed = x->seeds[seed_i];
  r->lr = x->nlrs > 0 ? x->lrs[lr_i] : x->opt.lr;
  int n = snprintf(r->id, sizeof r->id, "%.63s.%s.k%d.s%lld", tg->name,
                   exp_strategy_names[r->strategy], r->k, (long long)r->seed);
  if (x->nlrs > 0 && n > 0 && (size_t)n < sizeof r->id)
    snprintf(r->id + n, sizeof r->id - (size_t)n, ".lr%g", (double)r->lr);
  snprintf(r->dir, sizeof r->dir, "%.340s/jobs/%.159s", run_dir, r->id);

  *je = *base;
  je->transfer.enabled = 0;
  je->ntasks = 0; /* a job trains one head on its target */
  je->uncertainty = 0;
  snprintf(je->name, sizeof je->name, "%.127s", r->id);
  je->seed = (uint64_t)r->seed;
  je->data = tg->data;
  je->data.k_per_class = r->k;
  je->data.seed = (uint64_t)r->seed;
  if (!je->data.name[0]) snprintf(je->data.name, sizeof je->data.name, "%s", tg->name);
  /* The pre-training trunk, and the transfer section's head (when given). */
  if (x->head.nlayers > 0) {
    if (base->preset[0]) CHECK_CALL(nn_model_preset(&je->model, base->preset, "main", 1));
    je->preset[0] = '\0';
    je->model.nheads = 1;
    je->model.heads[0] = x->head;
  } else if (!base->preset[0]) {
    /* Explicit trunk, default head: dense(number of target classes). */
    int nc = tg->data.nclasses_keep;
    CHECK_USER(nc > 0, "transfer.targets %s: give data.classes or transfer.head, so the new head's "
               "size is known", tg->name);
    je->model.nheads = 1;
    memset(&je->model.heads[0], 0, sizeof je->model.heads[0]);
    snprintf(je->model.heads[0].name, sizeof je->model.heads[0].name, "main");
    je->model.heads[0].nlayers = 1;
    je->model.heads[0].layers[0].op = NN_DENSE;
    je->model.heads[0].layers[0].out = nc;
  }
  je->max_steps = x->steps;
  je->epochs = 1000000;
  je->batch = x->batch;
  je->opt = x->opt;
  je->opt.lr = r->lr;
  je->sched = x->sched;
  je->shards = x->shards;
  je->eval_batch = base->eval_batch;
  je->job = x->finetune;
  je->job.strategy = r->strategy;
  je->job.ckpt_final = 1;
  je->job.nlambdas = x->nlambdas;
  memcpy(je->job.lambdas, x->lambdas, sizeof je->job.lambdas);
  if (r->strategy != EXP_STRAT_FINETUNE) {
    je->job.trunk_lr_mult = 1;
    je->job.unfreeze_last = 0;
    je->job.reinit_last = 0;
    je->job.gradual_every = 0;
    je->job.l2sp = 0;
  }
  je->job.init_ckpt[0] = '\0';
  if (r->strategy != EXP_STRAT_SCRATCH && pre) {
    CHECK_RT(pre->n == 1 || pre->n == x->nseeds, "%d pre-trained checkpoints for %d seeds", pre->n,
             x->nseeds);
    snprintf(je->job.init_ckpt, sizeof je->job.init_ckpt, "%s", pre->path[pre->n == 1 ? 0 : seed_i]);
  }
  snprintf(r->pretrained, sizeof r->pretrained, "%s", je->job.init_ckpt);
  je->ckpt_every_steps = 0;
  je->ckpt_every_epoch = 0;
  je->ckpt_keep = 1;
  je->resume[0] = '\0';
  je->log_every = 0;
  snprintf(je->out_dir, sizeof je->out_dir, "%s", r->dir);
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the coordinator's policy (world rank 0) ------------------------------ */

typedef struct {
  const exp_experiment *base;
  const char *run_dir;
  const transfer_pretrained *pre;
  const transfer_hooks *h;
  exp_experiment *je;      /* scratch for rebuilding a job */
  int *queue, qhead, nqueue; /* job indices queue[qhead .. qhead+nqueue), next first */
  int *attempt;            /* per job: the run being made (0 = first) */
  double *est;             /* per job: expected cost (relative) */
  int total, done, failed, running, retries;
  double t0, busy_s;       /* busy_s: summed wall time of finished runs */
  int ngroups;
} coord;

/* Expected cost of a job relative to the others: every job has the same
 * step budget and batch, so only the strategy tells them apart (a frozen
 * trunk trains on cached features; a probe takes no steps). */
static double job_cost(exp_strategy st) {
  return st == EXP_STRAT_FEATURE ? 0.1 : st == EXP_STRAT_PROBE ? 0.05 : 1.0;
}

static const double *sort_est; /* qsort has no context argument */
static int by_cost(const void *a, const void *b) {
  int i = *(const int *)a, j = *(const int *)b;
  if (sort_est[i] != sort_est[j]) return sort_est[i] > sort_est[j] ? -1 : 1;
  return (i > j) - (i < j); /* equal cost: grid order */
}

static int coord_init(coord *q, const exp_experiment *base, const char *run_dir,
                      const transfer_pretrained *pre, const unsigned char *skip,
                      const transfer_hooks *h, int ngroups) {
  memset(q, 0, sizeof *q);
  const exp_transfer *x = &base->transfer;
  int n = transfer_njobs(x);
  q->base = base;
  q->run_dir = run_dir;
  q->pre = pre;
  q->h = h;
  q->ngroups = ngroups;
  q->je = malloc(sizeof *q->je);
  q->queue = malloc((size_t)n * sizeof *q->queue);
  q->attempt = calloc((size_t)n, sizeof *q->attempt);
  q->est = malloc((size_t)n * sizeof *q->est);
  CHECK_ALLOC(q->je && q->queue && q->attempt && q->est ? q : NULL, (size_t)n * sizeof(double));
  for (int i = 0; i < n; i++) {
    /* The strategy is the innermost grid index (transfer_job). */
    q->est[i] = job_cost((exp_strategy)x->strategies[i % x->nstrategies]);
    if (!skip || !skip[i]) q->queue[q->nqueue++] = i;
  }
  sort_est = q->est;
  qsort(q->queue, (size_t)q->nqueue, sizeof *q->queue, by_cost);
  q->total = q->nqueue;
  q->t0 = now_s();
  return 0;
}

static void coord_free(coord *q) {
  free(q->je);
  free(q->queue);
  free(q->attempt);
  free(q->est);
}

static void coord_progress(const coord *q, transfer_progress *p) {
  p->total = q->total;
  p->done = q->done;
  p->failed = q->failed;
  p->running = q->running;
  p->queued = q->nqueue;
  p->retries = q->retries;
  p->elapsed_s = now_s() - q->t0;
  /* Remaining work at the mean run time so far, spread over the groups. */
  double mean = q->done > 0 ? q->busy_s / q->done : 0;
  int left = q->total - q->done;
  p->eta_s = mean * left / (q->ngroups > 0 ? q->ngroups : 1);
}

static int coord_next(void *ctx, int group, int *what, void **spec, size_t *len) {
  coord *q = ctx;
  (void)group;
  if (q->nqueue == 0) {
    /* A running job may still fail and come back as a retry. */
    *what = q->running > 0 && q->base->transfer.retries > 0 ? DIST_SCHED_WAIT : DIST_SCHED_DONE;
    return 0;
  }
  int i = q->queue[q->qhead++];
  q->nqueue--;
  transfer_result r;
  CHECK_CALL(transfer_job(q->base, q->run_dir, NULL, i, q->je, &r));
  Ferry__JobSpec js = FERRY__JOB_SPEC__INIT;
  js.index = (uint32_t)i;
  js.id = r.id;
  js.attempt = (uint32_t)q->attempt[i];
  js.lr_scale = powf(q->base->transfer.retry_lr_scale, (float)q->attempt[i]);
  size_t n = ferry__job_spec__get_packed_size(&js);
  void *buf = malloc(n ? n : 1);
  CHECK_ALLOC(buf, n);
  ferry__job_spec__pack(&js, buf);
  *spec = buf;
  *len = n;
  *what = DIST_SCHED_JOB;
  q->running++;
  return 0;
}

static int coord_result(void *ctx, int group, const void *res, size_t len) {
  coord *q = ctx;
  Ferry__JobResult *m = ferry__job_result__unpack(NULL, len, res);
  CHECK_RT(m, "group %d sent a job result that does not parse (%zu bytes)", group, len);
  int i = (int)m->index, rc = 0;
  transfer_result r;
  if (i < 0 || i >= transfer_njobs(&q->base->transfer)) {
    ferry__job_result__free_unpacked(m, NULL);
    FERRY_FAIL(FERRY_ERUNTIME, "group %d sent a result for job %d, which does not exist", group, i);
  }
  rc = transfer_job(q->base, q->run_dir, q->pre, i, q->je, &r);
  if (rc) {
    ferry__job_result__free_unpacked(m, NULL);
    return rc;
  }
  r.attempt = (int)m->attempt;
  r.lr *= powf(q->base->transfer.retry_lr_scale, (float)m->attempt);
  r.group = m->group;
  r.ranks = m->ranks;
  r.ok = m->ok;
  r.retryable = m->retryable;
  snprintf(r.reason, sizeof r.reason, "%s", m->reason ? m->reason : "");
  snprintf(r.checkpoint, sizeof r.checkpoint, "%s", m->checkpoint ? m->checkpoint : "");
  r.sum.test_acc = m->test_acc;
  r.sum.test_loss = m->test_loss;
  r.sum.val_acc = m->val_acc;
  r.sum.wall_s = m->wall_s;
  r.sum.train_s = m->train_s;
  r.sum.steps = m->steps;
  r.sum.feature_cache_speedup = m->feature_cache_speedup;
  r.sum.param_hash = m->param_hash;
  r.sum.probe_lambda = m->lambda;
  r.sum.probe_solve_s = m->solve_s;
  r.job_s = m->job_s;
  ferry__job_result__free_unpacked(m, NULL);
  q->running--;
  q->busy_s += r.job_s;
  transfer_progress p;
  if (!r.ok && r.retryable && r.attempt < q->base->transfer.retries) {
    /* Run it again first, at a lower learning rate. */
    q->attempt[i] = r.attempt + 1;
    /* A retry can only follow a job taken from the queue: qhead > 0. */
    q->queue[--q->qhead] = i;
    q->nqueue++;
    q->retries++;
    coord_progress(q, &p);
    if (q->h && q->h->on_retry) q->h->on_retry(q->h->ctx, &r, &p);
    return 0;
  }
  q->done++;
  q->failed += !r.ok;
  coord_progress(q, &p);
  if (q->h && q->h->on_result) q->h->on_result(q->h->ctx, &r, &p);
  return 0;
}

/* ---- the workers (every rank) --------------------------------------------- */

static int serve(void *ctx) { return dist_sched_serve(ctx); }

/* Runs the job a spec names on this rank's group; fills the packed result
 * on the group's leader. Returns non-zero only for failures that are not
 * the job's own (the caller ends the MPI job). */
static int run_one(const exp_experiment *base, const char *run_dir, const transfer_pretrained *pre,
                   dist_sched *s, const void *spec, size_t len, exp_experiment *je,
                   const transfer_hooks *h, void **res, size_t *res_len) {
  const dist_comm *g = dist_sched_group(s);
  Ferry__JobSpec *js = ferry__job_spec__unpack(NULL, len, spec);
  CHECK_RT(js, "a job spec from the coordinator does not parse (%zu bytes)", len);
  transfer_result r;
  int rc = transfer_job(base, run_dir, pre, (int)js->index, je, &r);
  if (!rc && strcmp(r.id, js->id ? js->id : ""))
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "job %u is \"%s\" on the coordinator but \"%s\" here: every rank must read "
                       "the same experiment file", js->index, js->id, r.id);
  r.attempt = (int)js->attempt;
  float scale = js->lr_scale > 0 ? js->lr_scale : 1.0f;
  double t0 = now_s();
  ferry__job_spec__free_unpacked(js, NULL);
  CHECK_CALL(rc);
  je->opt.lr *= scale;
  r.lr = je->opt.lr;
  r.group = dist_sched_group_id(s);
  r.ranks = g->size;
  if (h && h->on_job_start && g->rank == 0) h->on_job_start(h->ctx, &r, je);
  train_hooks jh = {0};
  if (h && h->job_hooks) jh = *h->job_hooks;
  jh.poll = serve;
  jh.poll_ctx = s;
  rc = train_run(je, g, &jh, &r.sum);
  if (rc && !r.sum.setup_failed) return rc; /* not agreed by the group: the caller ends the job */
  r.ok = rc == 0;
  if (!r.ok) {
    /* Every rank of the group knows the job failed; the failing rank knows why. */
    r.retryable = rc == FERRY_ERUNTIME;
    snprintf(r.reason, sizeof r.reason, "%s", ferry_err_msg());
    int from = r.sum.failed_rank >= 0 ? r.sum.failed_rank : 0;
    ferry_err_clear();
    CHECK_CALL(dist_bcast(g, r.reason, sizeof r.reason, from));
  }
  r.job_s = now_s() - t0;
  if (h && h->on_job_end && g->rank == 0) h->on_job_end(h->ctx, &r, je);
  if (g->rank != 0) return 0;
  Ferry__JobResult m = FERRY__JOB_RESULT__INIT;
  char ckpt[EXP_PATH_MAX + 64] = "";
  if (r.ok && ckpt_path_for_step(ckpt, sizeof ckpt, je->out_dir, r.sum.steps)) ferry_err_clear();
  m.index = (uint32_t)r.index;
  m.id = r.id;
  m.attempt = (uint32_t)r.attempt;
  m.group = r.group;
  m.ranks = r.ranks;
  m.ok = r.ok;
  m.reason = r.reason;
  m.retryable = r.retryable;
  m.test_acc = r.sum.test_acc;
  m.test_loss = r.sum.test_loss;
  m.val_acc = r.sum.val_acc;
  m.wall_s = r.sum.wall_s;
  m.train_s = r.sum.train_s;
  m.steps = r.sum.steps;
  m.feature_cache_speedup = r.sum.feature_cache_speedup;
  m.checkpoint = ckpt;
  m.param_hash = r.sum.param_hash;
  m.lambda = r.sum.probe_lambda;
  m.solve_s = r.sum.probe_solve_s;
  m.job_s = r.job_s;
  size_t n = ferry__job_result__get_packed_size(&m);
  void *buf = malloc(n ? n : 1);
  CHECK_ALLOC(buf, n);
  ferry__job_result__pack(&m, buf);
  *res = buf;
  *res_len = n;
  return 0;
}

int transfer_run(const exp_experiment *base, const char *run_dir, const transfer_pretrained *pre,
                 const unsigned char *skip, const dist_comm *world, const transfer_hooks *h) {
  const exp_transfer *x = &base->transfer;
  int gsize = x->group_size <= 0 || x->group_size > world->size ? world->size : x->group_size;
  int ngroups = (world->size + gsize - 1) / gsize;
  /* Every rank of a group needs one of the job's logical shards. */
  CHECK_USER(gsize <= x->shards,
             "worker groups of %d ranks but transfer.shards is %d: every rank of a group needs a "
             "shard of the job's data; set transfer.group_size <= %d (or raise transfer.shards)",
             gsize, x->shards, x->shards);
  coord q;
  int rc = 0, first = -1;
  memset(&q, 0, sizeof q);
  if (world->rank == 0) rc = coord_init(&q, base, run_dir, pre, skip, h, ngroups);
  if (dist_agree(world, rc, &first)) {
    coord_free(&q);
    return rc ? rc : FERRY_ERUNTIME;
  }
  dist_sched_ops ops = {.next = coord_next, .result = coord_result, .ctx = &q};
  dist_sched *s = NULL;
  rc = dist_sched_new(&s, world, gsize, world->rank == 0 ? &ops : NULL);
  if (rc) {
    coord_free(&q);
    return rc;
  }
  train_data_cache(1);
  exp_experiment *je = malloc(sizeof *je);
  void *res = NULL, *spec = NULL;
  size_t res_len = 0, len = 0;
  rc = je ? 0 : ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "out of memory");
  while (!rc) {
    rc = dist_sched_next(s, res, res_len, &spec, &len);
    free(res);
    res = NULL;
    res_len = 0;
    if (rc || !spec) break;
    rc = run_one(base, run_dir, pre, s, spec, len, je, h, &res, &res_len);
    free(spec);
    spec = NULL;
  }
  free(res);
  free(je);
  train_data_cache(0);
  /* A failure here is one rank's (the others may be inside a collective):
   * the caller ends the MPI job; the sweep resumes from results.jsonl. */
  if (!rc) dist_sched_free(&s);
  coord_free(&q);
  return rc;
}
