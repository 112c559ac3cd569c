/* The transfer stage: every target x strategy x K x seed of the experiment's
 * transfer section is one job, trained from the pre-training stage's final
 * checkpoint with the ordinary training loop (data-parallel over all ranks,
 * one job after another). Results go to hooks; launch/ writes files. */
#ifndef FERRY_TRAIN_TRANSFER_H
#define FERRY_TRAIN_TRANSFER_H

#include "train/trainer.h"

typedef struct {
  char id[120];              /* "<target>.<strategy>.k<K>.s<seed>" */
  char target[64];
  exp_strategy strategy;
  int k;
  int64_t seed;
  int ok;
  char reason[512];          /* why it failed (every rank has it) */
  char dir[EXP_PATH_MAX];    /* its run directory */
  train_summary sum;
} transfer_result;

typedef struct {
  /* Before job i of n (rank 0): prepare its directory and per-job hooks. */
  void (*on_job_start)(void *ctx, int i, int n, const transfer_result *r, const exp_experiment *je);
  void (*on_job_done)(void *ctx, int i, int n, const transfer_result *r);
  const train_hooks *job_hooks; /* passed to each job's training loop */
  void *ctx;
} transfer_hooks;

/* Number of jobs the section expands to. Not collective. */
int transfer_njobs(const exp_transfer *x);
/* Builds job i's experiment from the base experiment (data = the target with
 * K and seed, the pre-training trunk + new head, the transfer section's
 * training settings, out_dir = run_dir/jobs/<id>). Not collective. */
int transfer_job(const exp_experiment *base, const char *run_dir, const char *pretrain_ckpt, int i,
                 exp_experiment *je, transfer_result *r);
/* Runs every job whose skip[i] is 0 (skip may be NULL). A job that fails on
 * every rank together (bad target data, divergence) is recorded as failed
 * and the others go on; any other failure is returned. Collective. */
int transfer_run(const exp_experiment *base, const char *run_dir, const char *pretrain_ckpt,
                 const unsigned char *skip, const dist_comm *c, const transfer_hooks *h);

#endif
