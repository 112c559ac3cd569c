/* Defaults of the typed experiment (train/experiment.h). */
#include "experiment.h"

#include <string.h>

void exp_defaults(exp_experiment *e) {
  memset(e, 0, sizeof *e);
  strcpy(e->name, "experiment");
  e->seed = 0;
  e->data.val_frac = 0.0;
  e->epochs = 1;
  e->batch = 128;
  e->eval_batch = 1000;
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
  strcpy(e->out_dir, "runs/experiment");
}
