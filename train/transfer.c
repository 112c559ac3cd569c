/* Transfer jobs (train/transfer.h): expansion of the grid and the job loop. */
#include "train/transfer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"

int transfer_njobs(const exp_transfer *x) {
  return x->ntargets * x->nstrategies * x->nk * x->nseeds;
}

int transfer_job(const exp_experiment *base, const char *run_dir, const char *pretrain_ckpt, int i,
                 exp_experiment *je, transfer_result *r) {
  const exp_transfer *x = &base->transfer;
  CHECK_RT(i >= 0 && i < transfer_njobs(x), "job %d of %d", i, transfer_njobs(x));
  /* Order: target, K, seed, strategy: the strategies of one draw are adjacent. */
  int s = i % x->nstrategies, rest = i / x->nstrategies;
  int seed_i = rest % x->nseeds;
  rest /= x->nseeds;
  int k_i = rest % x->nk, t_i = rest / x->nk;
  const exp_target *tg = &x->targets[t_i];
  memset(r, 0, sizeof *r);
  snprintf(r->target, sizeof r->target, "%s", tg->name);
  r->strategy = (exp_strategy)x->strategies[s];
  r->k = x->k[k_i];
  r->seed = x->seeds[seed_i];
  snprintf(r->id, sizeof r->id, "%.63s.%s.k%d.s%lld", tg->name, exp_strategy_names[r->strategy], r->k,
           (long long)r->seed);
  snprintf(r->dir, sizeof r->dir, "%.380s/jobs/%s", run_dir, r->id);

  *je = *base;
  je->transfer.enabled = 0;
  je->ntasks = 0; /* a job trains one head on its target */
  je->uncertainty = 0;
  snprintf(je->name, sizeof je->name, "%s", r->id);
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
    /* Explicit trunk, default head: dense(number of target classes), filled
     * in below once the class count is known from the data section. */
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
  je->sched = x->sched;
  je->shards = x->shards;
  je->eval_batch = base->eval_batch;
  je->job = x->finetune;
  je->job.strategy = r->strategy;
  je->job.ckpt_final = 1;
  if (r->strategy != EXP_STRAT_FINETUNE) {
    je->job.trunk_lr_mult = 1;
    je->job.unfreeze_last = 0;
    je->job.gradual_every = 0;
    je->job.l2sp = 0;
  }
  if (r->strategy == EXP_STRAT_SCRATCH)
    je->job.init_ckpt[0] = '\0';
  else
    snprintf(je->job.init_ckpt, sizeof je->job.init_ckpt, "%s", pretrain_ckpt);
  je->ckpt_every_steps = 0;
  je->ckpt_every_epoch = 0;
  je->ckpt_keep = 1;
  je->resume[0] = '\0';
  je->log_every = 0;
  snprintf(je->out_dir, sizeof je->out_dir, "%s", r->dir);
  return 0;
}

int transfer_run(const exp_experiment *base, const char *run_dir, const char *pretrain_ckpt,
                 const unsigned char *skip, const dist_comm *c, const transfer_hooks *h) {
  int n = transfer_njobs(&base->transfer);
  exp_experiment *je = malloc(sizeof *je);
  CHECK_ALLOC(je, sizeof *je);
  for (int i = 0; i < n; i++) {
    if (skip && skip[i]) continue;
    transfer_result r;
    int rc = transfer_job(base, run_dir, pretrain_ckpt, i, je, &r);
    if (rc) {
      free(je);
      return rc;
    }
    if (h && h->on_job_start && c->rank == 0) h->on_job_start(h->ctx, i, n, &r, je);
    rc = train_run(je, c, h ? h->job_hooks : NULL, &r.sum);
    if (rc && !r.sum.setup_failed) {
      free(je);
      return rc; /* not agreed by every rank: the caller ends the job */
    }
    r.ok = rc == 0;
    if (!r.ok) {
      /* Every rank knows the job failed; the failing rank knows why. */
      snprintf(r.reason, sizeof r.reason, "%s", ferry_err_msg());
      int from = r.sum.failed_rank >= 0 ? r.sum.failed_rank : 0;
      rc = dist_bcast(c, r.reason, sizeof r.reason, from);
      ferry_err_clear();
      if (rc) {
        free(je);
        return rc;
      }
    }
    if (h && h->on_job_done && c->rank == 0) h->on_job_done(h->ctx, i, n, &r);
  }
  free(je);
  return 0;
}
