/* Defaults of the typed experiment (train/experiment.h). */
#include "experiment.h"

#include <string.h>

const char *const exp_strategy_names[EXP_STRAT_COUNT] = {"none", "scratch", "feature-extract",
                                                         "finetune", "linear-probe"};

const char *const exp_label_names[EXP_LABEL_COUNT] = {"class", "coarse", "rotation"};

void exp_defaults(exp_experiment *e) {
  memset(e, 0, sizeof *e);
  strcpy(e->name, "experiment");
  e->seed = 0;
  e->data.val_frac = 0.0;
  e->epochs = 1;
  e->batch = 128;
  e->eval_batch = 256; /* bounds the activation workspace (CNN: ~250 MB more at 1000) */
  e->opt.kind = NN_OPT_SGD;
  e->opt.lr = 0.05f;
  e->opt.momentum = 0.9f;
  e->opt.beta1 = 0.9f;
  e->opt.beta2 = 0.999f;
  e->opt.eps = 1e-8f;
  e->sched.kind = NN_SCHED_CONSTANT;
  e->sched.gamma = 0.1f;
  e->progress = -1;
  e->shards = 16;
  e->det_leaves = 4;
  e->bucket_kb = 256;
  e->check_every = 100;
  e->nan_policy = EXP_NAN_STOP;
  e->log_every = 10;
  e->ckpt_every_epoch = 1;
  e->ckpt_keep = 3;
  exp_transfer *x = &e->transfer;
  x->nstrategies = 3;
  x->strategies[0] = EXP_STRAT_SCRATCH;
  x->strategies[1] = EXP_STRAT_FEATURE;
  x->strategies[2] = EXP_STRAT_FINETUNE;
  x->nk = 1;
  x->nseeds = 1;
  x->steps = 1000;
  x->batch = 32;
  x->opt = e->opt;
  x->opt.lr = 0.01f;
  x->sched.kind = NN_SCHED_CONSTANT;
  x->sched.gamma = 0.1f;
  x->shards = 4;
  x->finetune.trunk_lr_mult = 1.0f;
  static const double lambdas[] = {1e-4, 1e-3, 1e-2, 1e-1, 1, 10};
  x->nlambdas = (int)(sizeof lambdas / sizeof lambdas[0]);
  memcpy(x->lambdas, lambdas, sizeof lambdas);
  x->group_size = 1;
  x->retries = 1;
  x->retry_lr_scale = 0.5f;
  strcpy(e->out_dir, "runs/experiment");
}
