/* The supervised training loop: one model, one head, data-parallel over a
 * communicator (each rank computes its slice of every global batch; gradients
 * are summed so every rank applies the same update). Reports progress through
 * hooks (rank 0 only) and leaves presentation (printing, files) to launch/. */
#ifndef FERRY_TRAIN_TRAINER_H
#define FERRY_TRAIN_TRAINER_H

#include <signal.h>
#include <stdint.h>

#include "dist/comm.h"
#include "train/experiment.h"

typedef struct {
  int epoch, epochs;         /* 1-based epoch just finished */
  int64_t step, total_steps; /* optimizer steps so far / planned */
  double train_loss;         /* mean over the epoch's samples */
  double train_acc;
  double val_loss, val_acc;  /* NAN when there is no validation split */
  double samples_per_s;      /* global training samples per second this epoch */
  double epoch_s, elapsed_s, eta_s;
  double lr;                 /* at the end of the epoch */
} train_epoch_stats;

typedef struct {
  /* Every few steps: progress within the run. */
  void (*on_step)(void *ctx, int epoch, int64_t step, int64_t total_steps, double loss,
                  double elapsed_s);
  void (*on_epoch)(void *ctx, const train_epoch_stats *s);
  /* Every log_every steps: the global mean training loss of that step. */
  void (*on_log)(void *ctx, int epoch, int64_t step, double loss, double lr);
  /* Set (by a signal handler) when the job should stop: all ranks agree on
   * the step, write a checkpoint and return FERRY_ESTOPPED. May be NULL. */
  const volatile sig_atomic_t *stop;
  /* Once, before training: a line of facts about data and model. */
  void (*on_start)(void *ctx, const char *what);
  void *ctx;
  /* After every step, on every rank that sets it: the coordinator serves
   * its job queue here (dist/sched.h). A non-zero return ends the run. */
  int (*poll)(void *poll_ctx);
  void *poll_ctx;
} train_hooks;

typedef struct {
  double test_acc, test_loss;
  double val_acc;            /* last epoch's, NAN if none */
  double train_samples_per_s;
  double train_s, wall_s;
  int64_t steps;
  int epochs;
  int64_t n_train, n_val, n_test;
  size_t nparams;
  int world;
  uint64_t param_hash;       /* nn_hash_bytes over the final parameter slab */
  double rss_mb[64];         /* peak RSS of each rank (first 64 ranks) */
  double sync_wait_s;        /* time blocked waiting for gradient sync */
  int64_t skipped_steps;     /* steps skipped by the nan: skip policy */
  int ntasks;                /* multi-task: test accuracy of each task's head */
  char task_name[EXP_MAX_TASKS][NN_NAME_MAX];
  double task_acc[EXP_MAX_TASKS];
  double task_weight[EXP_MAX_TASKS]; /* final effective weights */
  uint64_t trunk_hash;       /* nn_hash_bytes over the trunk's parameter bytes */
  double feature_cache_speedup; /* feature-extract: step time with the trunk / cached */
  double probe_lambda;       /* linear-probe: ridge penalty chosen on validation */
  double probe_solve_s;      /* linear-probe: time of the distributed solve(s) */
  int setup_failed;          /* the failure is known to every rank (set-up, a
                                non-finite step, a checksum mismatch): all ranks
                                return together, no abort needed */
  int failed_rank;           /* the rank that holds the message */
} train_summary;

/* Loads the data the experiment names, builds and trains the model, evaluates
 * on the test split. Collective over c. Returns FERRY_EUSER/FERRY_ERUNTIME
 * with a message on failure; a failure after set-up on one rank only aborts
 * the job (no rank is left waiting). */
int train_run(const exp_experiment *e, const dist_comm *c, const train_hooks *h,
              train_summary *out);

/* The data splits an experiment describes (train, val, test), after class
 * subset, K per class and split. val may be empty (n = 0). Not collective.
 * The splits are views (nn/data.h): labels and sizes only, so the caller can
 * drop the rows it will not use before any sample is held; train_data_fill
 * then reads the samples of the rows left. */
typedef struct {
  nn_dataset train, val, test;
  int nclasses;
} train_data;
int train_data_load(train_data *d, const exp_experiment *e);
/* While on, decoded data files are kept in memory (a few, whole) and later
 * loads of the same file are views of them: for transfer jobs, which read
 * the same target job after job. Off frees them. Not collective; not
 * thread-safe. */
void train_data_cache(int on);
/* The same for one data section (a multi-task task's own data). */
int train_data_load_from(train_data *d, const exp_data *x);
/* Gives d's pending views their samples: from the cached file while the
 * cache holds it, else from x's files (one pass per file).
 * all_train / all_test (views of the whole train / test selection, or NULL):
 * *train_digest / *test_digest receive their nn_data_digest, as if they had
 * been loaded whole; left alone when that split was not pending. */
int train_data_fill(train_data *d, const exp_data *x, const nn_dataset *all_train,
                    const nn_dataset *all_test, uint64_t *train_digest, uint64_t *test_digest);
void train_data_free(train_data *d);

#endif
