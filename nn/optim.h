/* Optimizers over the model's parameter slab, one step per call, honouring
 * parameter groups (lr multiplier, frozen). State (momentum, Adam moments)
 * lives in slabs of nparams floats owned by the optimizer: a checkpoint saves
 * them per parameter tensor, as "optim.m.<tensor>" / "optim.v.<tensor>". */
#ifndef FERRY_NN_OPTIM_H
#define FERRY_NN_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef enum { NN_OPT_SGD, NN_OPT_ADAMW, NN_OPT_COUNT } nn_opt_kind;
extern const char *const nn_opt_names[NN_OPT_COUNT];

typedef enum { NN_SCHED_CONSTANT, NN_SCHED_STEP, NN_SCHED_COSINE, NN_SCHED_COUNT } nn_sched_kind;
extern const char *const nn_sched_names[NN_SCHED_COUNT];

typedef struct {
  nn_opt_kind kind;
  float lr;
  float momentum;     /* sgd */
  int nesterov;       /* sgd */
  float weight_decay; /* sgd: L2 added to the gradient (PyTorch SGD); adamw: decoupled */
  float beta1, beta2, eps; /* adamw */
} nn_opt_cfg;

typedef struct {
  nn_sched_kind kind;
  int64_t total_steps;  /* cosine decays to min_lr over total_steps */
  int64_t step_size;    /* step: every step_size steps lr *= gamma */
  float gamma;
  float min_lr;         /* cosine floor */
  int64_t warmup_steps; /* linear warm-up from 0 over the first steps */
} nn_sched_cfg;

typedef struct {
  nn_opt_cfg cfg;
  size_t n;
  float *m, *v; /* state slabs (v only for adamw) */
  int64_t t;    /* steps taken */
} nn_optim;

/* Allocates state for n parameters (zeroed). Returns FERRY_ERUNTIME on OOM. */
int nn_optim_init(nn_optim *o, const nn_opt_cfg *cfg, size_t n);
void nn_optim_free(nn_optim *o);
/* Learning rate at step t (0-based) under the schedule, base lr. */
float nn_sched_lr(const nn_sched_cfg *s, float base_lr, int64_t t);
/* One update of m->params using m->grads, with lr (already scheduled) times
 * each group's multiplier; frozen groups untouched. */
void nn_optim_step(nn_optim *o, nn_model *m, float lr);
/* Global L2 norm of the gradients of unfrozen groups (double accumulation). */
double nn_grad_norm(const nn_model *m);
/* Scales unfrozen gradients so their global norm is at most max_norm;
 * returns the norm before clipping. max_norm <= 0: no clipping. */
double nn_clip_grad_norm(nn_model *m, double max_norm);

/* L2-SP (Li et al., 2018): adds alpha * (w - anchor) to the gradients of the
 * unfrozen groups whose name starts with prefix (e.g. "trunk") and returns the
 * penalty (alpha/2) * sum (w - anchor)^2 over them. anchor is a copy of the
 * whole parameter slab (the pre-trained weights). Not collective. */
double nn_l2sp_apply(nn_model *m, const float *anchor, const char *prefix, float alpha);

#endif
