/* The transfer stage: every target x strategy x K x seed of the experiment's
 * transfer section is one job, trained from the pre-training stage's final
 * checkpoint with the ordinary training loop (data-parallel over all ranks,
 * one job after another). Results go to hooks; launch/ writes files. */
#ifndef FERRY_TRAIN_TRANSFER_H
#define FERRY_TRAIN_TRANSFER_H

#include "train/trainer.h"

typedef struct {
  char id[160];              /* "<target>.<strategy>.k<K>.s<seed>[.lr<lr>]" */
  int index;                 /* position in the expanded grid */
  char target[64];
  exp_strategy strategy;
  int k;
  int64_t seed;
  float lr;                  /* the job's learning rate (after retry scaling) */
  int attempt;               /* 0 = first run */
  int group, ranks;          /* the worker group that ran it, and its size */
  int ok;
  int retryable;             /* failed at run time (non-finite loss, divergence) */
  char reason[512];          /* why it failed */
  char dir[EXP_PATH_MAX];    /* its run directory */
  char checkpoint[EXP_PATH_MAX + 64]; /* its final checkpoint ("" if it failed) */
  char pretrained[EXP_PATH_MAX]; /* the pre-trained checkpoint it starts from ("" for scratch) */
  double job_s;              /* the whole job on its group (data, set-up, training, test) */
  train_summary sum;         /* on the coordinator: the fields a JobResult carries */
} transfer_result;

/* The coordinator's view of the sweep when a result arrives. */
typedef struct {
  int total;                 /* jobs of this run (without those skipped) */
  int done, failed, running, queued, retries;
  double elapsed_s, eta_s;
} transfer_progress;

typedef struct {
  /* The leader of the group that runs a job (group rank 0): before and after
   * it, for the job's own files. */
  void (*on_job_start)(void *ctx, const transfer_result *r, const exp_experiment *je);
  void (*on_job_end)(void *ctx, const transfer_result *r, const exp_experiment *je);
  /* The coordinator (world rank 0): a job's final result (after any
   * retries), and a failed run that will be retried. */
  void (*on_result)(void *ctx, const transfer_result *r, const transfer_progress *p);
  void (*on_retry)(void *ctx, const transfer_result *r, const transfer_progress *p);
  const train_hooks *job_hooks; /* passed to each job's training loop */
  void *ctx;
} transfer_hooks;

/* The pre-trained checkpoints jobs start from: n = 1, one shared by every
 * job; or (transfer.pretrain_per_seed) n = transfer.nseeds, path[i] for the
 * jobs of transfer.seeds[i]. */
typedef struct {
  int n;
  char path[EXP_MAX_SEEDS][EXP_PATH_MAX];
} transfer_pretrained;

/* Number of jobs the section expands to. Not collective. */
int transfer_njobs(const exp_transfer *x);
/* Whether a name can be part of a path under the run directory: letters,
 * digits, '.', '_', '-', not starting with '.' (so no "..", no '/'). */
int transfer_safe_name(const char *name);
/* Builds job i's experiment from the base experiment (data = the target with
 * K and seed, the trunk of its seed's pre-trained checkpoint, also named in
 * r->pretrained (pre may be NULL to name the job only) + new head, the
 * transfer section's
 * training settings, out_dir = run_dir/jobs/<id>). Not collective. */
int transfer_job(const exp_experiment *base, const char *run_dir, const transfer_pretrained *pre,
                 int i, exp_experiment *je, transfer_result *r);
/* Runs every job whose skip[i] is 0 (skip may be NULL): world rank 0
 * coordinates, worker groups of transfer.group_size ranks each train one job
 * at a time, longest expected job first. A job that fails on its group
 * (bad target data, divergence) is recorded as failed, or retried with a
 * lower learning rate when it failed at run time and retries are left; the
 * others go on. Any other failure is returned. Collective over world. */
int transfer_run(const exp_experiment *base, const char *run_dir, const transfer_pretrained *pre,
                 const unsigned char *skip, const dist_comm *world, const transfer_hooks *h);

#endif
