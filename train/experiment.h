/* The typed experiment: what launch/ parses from YAML (+ --set overrides) and
 * train/ runs. No YAML or argv here; every field has a default set by
 * exp_defaults(). Paths are plain strings, validated when opened. */
#ifndef FERRY_TRAIN_EXPERIMENT_H
#define FERRY_TRAIN_EXPERIMENT_H

#include <stdint.h>

#include "nn/data.h"
#include "nn/loss.h"
#include "nn/model.h"
#include "nn/optim.h"

#define EXP_PATH_MAX 512
#define EXP_MAX_TF 16
#define EXP_MAX_CLASSES 256

typedef enum { EXP_SRC_IDX, EXP_SRC_CSV } exp_src_format;
enum { EXP_NAN_STOP = 0, EXP_NAN_SKIP = 1 };

/* One data file set: IDX images+labels, or one CSV file. */
typedef struct {
  exp_src_format format;
  char images[EXP_PATH_MAX]; /* idx */
  char labels[EXP_PATH_MAX]; /* idx */
  char path[EXP_PATH_MAX];   /* csv */
  int img_h, img_w;          /* csv rows that are images, else 0 */
  int64_t limit;             /* keep the first `limit` samples; 0 = all */
} exp_source;

typedef struct {
  char name[64];             /* e.g. "fashion-mnist", for reports */
  exp_source train, test;
  int nclasses_keep;         /* 0 = keep all classes */
  int classes[EXP_MAX_CLASSES]; /* kept classes, relabelled 0..n-1 in this order */
  int k_per_class;           /* 0 = all labelled training samples */
  double val_frac;           /* fraction of train held out for validation */
  uint64_t seed;             /* subset/split seed (defaults to the experiment seed) */
  int ntf;                   /* applied to every split (train, val, test), in order */
  nn_transform tf[EXP_MAX_TF];
  int naug;                  /* applied to training batches only, after tf */
  nn_transform aug[EXP_MAX_TF];
} exp_data;

#define EXP_MAX_TARGETS 8
#define EXP_MAX_GRID 16
/* Seeds are the one grid axis users grow for statistics (the spread of a
 * K-shot draw needs tens of seeds to pin a mean to a few tenths). */
#define EXP_MAX_SEEDS 64

/* Transfer strategies of a job. */
typedef enum {
  EXP_STRAT_NONE,           /* plain training (the pre-training stage) */
  EXP_STRAT_SCRATCH,        /* same architecture, random init: the baseline */
  EXP_STRAT_FEATURE,        /* trunk frozen (features cached), new head trained */
  EXP_STRAT_FINETUNE,       /* trunk loaded and trained too, new head */
  EXP_STRAT_PROBE,          /* trunk frozen, head solved in closed form (ridge, ScaLAPACK) */
  EXP_STRAT_COUNT
} exp_strategy;
extern const char *const exp_strategy_names[EXP_STRAT_COUNT];

/* How one training run starts and what it may change (set by train/transfer.c
 * for transfer jobs; all zero for a plain run). */
typedef struct {
  exp_strategy strategy;
  char init_ckpt[EXP_PATH_MAX]; /* load the trunk of this checkpoint ("" = fresh) */
  float trunk_lr_mult;       /* finetune: trunk learning-rate multiplier (0 = 1) */
  int unfreeze_last;         /* finetune: train only the last k trunk blocks (0 = all) */
  int reinit_last;           /* finetune: re-initialise the last k trunk blocks instead of
                                loading them (0 = none) */
  int gradual_every;         /* finetune: unfreeze one more block every N steps, from the
                                head down (0 = off) */
  float l2sp;                /* finetune: alpha of (alpha/2)||w - w_pretrained||^2 on the trunk */
  int eval_every;            /* evaluate on validation every N steps (0 = per epoch) */
  int patience;              /* early stopping: evaluations without improvement (0 = off);
                                the best parameters are restored at the end */
  int ckpt_final;            /* write one checkpoint at the end only */
  int nlambdas;              /* linear-probe: ridge penalties tried on validation */
  double lambdas[EXP_MAX_GRID];
} exp_job;


typedef struct {
  char name[64];
  exp_data data;
} exp_target;

/* The transfer stage: every target x strategy x K x seed is one job trained
 * from the pre-training stage's final checkpoint. */
typedef struct {
  int enabled;               /* the experiment has a transfer section */
  int ntargets;
  exp_target targets[EXP_MAX_TARGETS];
  int nstrategies;
  int strategies[EXP_MAX_GRID];
  int nk;
  int k[EXP_MAX_GRID];       /* labelled samples per class; 0 = all */
  int nseeds;
  int64_t seeds[EXP_MAX_SEEDS];
  nn_stack_spec head;        /* the new head; no layers = dense(number of classes) */
  int64_t steps;             /* optimizer steps per job */
  int batch;
  nn_opt_cfg opt;
  nn_sched_cfg sched;
  int shards;                /* logical shards of a job's data (small data: few) */
  exp_job finetune;          /* finetune options (strategy and init set per job) */
  int nlrs;                  /* learning-rate grid (0 = the optimizer's lr only) */
  float lrs[EXP_MAX_GRID];
  int nlambdas;              /* linear-probe ridge penalties, chosen on validation */
  double lambdas[EXP_MAX_GRID];
  /* Fan-out: world rank 0 coordinates; ranks form groups of group_size
   * (0 = one group of all ranks), each training one job at a time. */
  int group_size;
  int retries;               /* re-runs of a job that failed at run time (NaN, divergence) */
  float retry_lr_scale;      /* each retry multiplies the learning rate by this */
  int pretrain_per_seed;     /* one pre-training per seed (seed + seeds[i]), not one shared */
} exp_transfer;

/* Multi-task joint training: tasks share the trunk, each has a head, and
 * either labels derived from the experiment's dataset or its own dataset. */
typedef enum {
  EXP_LABEL_CLASS,    /* the dataset's labels */
  EXP_LABEL_COARSE,   /* classes grouped: group_of[class] */
  EXP_LABEL_ROTATION, /* self-supervised: the input rotated by r*90 degrees, label r (0..3) */
  EXP_LABEL_COUNT
} exp_label_kind;
extern const char *const exp_label_names[EXP_LABEL_COUNT];

#define EXP_MAX_TASKS 8
typedef struct {
  char name[NN_NAME_MAX];
  int kind;                  /* exp_label_kind */
  float weight;              /* w_t of the joint loss sum_t w_t L_t (static weighting) */
  int ngroups;               /* coarse: number of groups */
  int group_of[EXP_MAX_CLASSES]; /* coarse: group of each class, -1 = none */
  nn_stack_spec head;        /* no layers = dense(outputs of the task) */
  int has_data;              /* the task has its own dataset (else the experiment's) */
  exp_data data;
} exp_task;

typedef struct {
  char name[128];
  char text_path[EXP_PATH_MAX]; /* the experiment file, for provenance */
  const char *text;          /* its text (+ overrides), stored in checkpoints;
                                not owned, may be NULL */
  uint64_t text_hash;        /* hash of the file text and --set overrides */
  uint64_t seed;
  exp_data data;
  nn_model_spec model;       /* trunk + heads (a preset expands into it) */
  char preset[16];           /* "" when layers were given */
  /* training */
  int epochs;                /* passes over the training set */
  int64_t max_steps;         /* > 0: stop after this many optimizer steps */
  int batch;                 /* global batch */
  int eval_batch;
  nn_opt_cfg opt;
  nn_sched_cfg sched;        /* total_steps filled in by the trainer when 0 */
  float clip_norm;           /* <= 0: off */
  float label_smoothing;
  int threads;               /* BLAS threads per rank; 0 = leave as is */
  char out_dir[EXP_PATH_MAX];
  int progress;              /* -1 auto (tty), 0 plain lines, 1 live bar */
  /* data-parallel */
  int shards;                /* M fixed logical data shards (the sample order
                                depends on M, never on the rank count) */
  int deterministic;         /* bitwise-identical results for any rank count */
  int det_leaves;            /* deterministic: gradient leaves per step (power of 2) */
  int bucket_kb;             /* gradient allreduce bucket size */
  int check_every;           /* compare parameter checksums every K steps (0 = never) */
  int nan_policy;            /* EXP_NAN_STOP or EXP_NAN_SKIP */
  int log_every;             /* steps.jsonl: one line every K steps (0 = off) */
  /* checkpoints */
  int ckpt_every_steps;      /* write every K optimizer steps (0 = off) */
  int ckpt_every_epoch;      /* write at the end of every epoch */
  int ckpt_keep;             /* keep the newest K checkpoints */
  char resume[EXP_PATH_MAX]; /* "" = fresh start, "latest" = newest valid in
                                out_dir, else a checkpoint file */
  exp_job job;               /* how this run starts (transfer jobs) */
  int ntasks;                /* 0 = single task (one head, the dataset's labels) */
  exp_task tasks[EXP_MAX_TASKS];
  int uncertainty;           /* learned uncertainty weighting (Kendall et al., 2018) */
  exp_transfer transfer;
  /* Fault injection for tests (launch fills it from FERRY_FAULT): "R:KIND"
   * or "R:KIND@STEP" with KIND data | alloc | nan | diverge. Empty = off. */
  char fault[64];
  int bench_no_sync;         /* bench only: skip gradient communication */
} exp_experiment;

void exp_defaults(exp_experiment *e);

#endif
