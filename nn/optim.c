/* Optimizers behind nn/optim.h: SGD (momentum, Nesterov, L2 weight decay) and
 * AdamW, both matching torch.optim, applied per parameter group; learning
 * rate schedules with linear warm-up; global gradient norm and clipping. */
#include "optim.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* M_PI is POSIX/XSI, not ISO C. */
static const double kPi = 3.14159265358979323846;

#define OPT_NAMES {"sgd", "adamw"}
const char *const nn_opt_names[NN_OPT_COUNT] = OPT_NAMES;
_Static_assert(sizeof((const char *const[])OPT_NAMES) / sizeof(const char *) == NN_OPT_COUNT,
               "nn_opt_names needs exactly one name per nn_opt_kind");

#define SCHED_NAMES {"constant", "step", "cosine"}
const char *const nn_sched_names[NN_SCHED_COUNT] = SCHED_NAMES;
_Static_assert(sizeof((const char *const[])SCHED_NAMES) / sizeof(const char *) == NN_SCHED_COUNT,
               "nn_sched_names needs exactly one name per nn_sched_kind");

/* Cache-line aligned, zeroed slab of n floats (at least one line, so n = 0
 * still yields a pointer that nn_optim_free can release). */
static float *state_alloc(size_t n) {
  const size_t align = 64;
  if (n > (SIZE_MAX - align) / sizeof(float)) return NULL;
  size_t bytes = (n * sizeof(float) + align - 1) / align * align;
  if (bytes == 0) bytes = align;
  float *p = aligned_alloc(align, bytes);
  if (p) memset(p, 0, bytes);
  return p;
}

int nn_optim_init(nn_optim *o, const nn_opt_cfg *cfg, size_t n) {
  memset(o, 0, sizeof *o);
  CHECK_USER(cfg->kind >= 0 && cfg->kind < NN_OPT_COUNT,
             "optimizer kind: expected 0..%d, found %d", NN_OPT_COUNT - 1, (int)cfg->kind);
  o->cfg = *cfg;
  o->n = n;
  o->m = state_alloc(n);
  CHECK_ALLOC(o->m, n * sizeof(float));
  if (cfg->kind == NN_OPT_ADAMW) {
    o->v = state_alloc(n);
    if (!o->v) {
      nn_optim_free(o);
      CHECK_ALLOC(o->v, n * sizeof(float));
    }
  }
  return FERRY_OK;
}

/* Safe on a zeroed or already freed optimizer. */
void nn_optim_free(nn_optim *o) {
  free(o->m);
  free(o->v);
  o->m = o->v = NULL;
  o->n = 0;
}

/* Warm-up goes linearly lr/W, 2lr/W, ..., lr over t = 0..W-1; the schedule
 * proper then runs on t' = t - W (step and cosine alike), so it starts at the
 * full base lr right after warm-up and cosine reaches min_lr at total_steps.
 * Not collective. */
float nn_sched_lr(const nn_sched_cfg *s, float base_lr, int64_t t) {
  const double lr = base_lr;
  const int64_t warm = s->warmup_steps > 0 ? s->warmup_steps : 0;
  if (t < 0) t = 0;
  if (t < warm) return (float)(lr * (double)(t + 1) / (double)warm);
  const int64_t tp = t - warm;
  switch (s->kind) {
  case NN_SCHED_STEP:
    if (s->step_size <= 0) return base_lr; /* rejected by config validation */
    return (float)(lr * pow((double)s->gamma, (double)(tp / s->step_size)));
  case NN_SCHED_COSINE: {
    const int64_t span = s->total_steps - warm;
    if (tp >= span) return s->min_lr;
    const double lo = s->min_lr;
    return (float)(lo + (lr - lo) * 0.5 * (1.0 + cos(kPi * (double)tp / (double)span)));
  }
  case NN_SCHED_CONSTANT:
  case NN_SCHED_COUNT:
    break;
  }
  return base_lr;
}

/* The kernels below walk the slab in spans of SPAN floats: GCC 12 at the
 * project's -O2 (the "very cheap" vectoriser cost model) vectorises a loop
 * only when its trip count is known, so each *_span body is inlined once with
 * len = SPAN (vectorised) and once for the tail. */
enum { SPAN = 32 };

/* torch.optim.SGD with dampening 0. A zero momentum buffer makes the first
 * step's buf = momentum*0 + g = g, torch's first-step initialisation. The
 * plain, heavy-ball and Nesterov cases are separate loops so each vectorises. */
static inline void sgd_span(float *restrict p, const float *restrict g, float *restrict buf,
                            size_t len, float lr, float wd, float mom, int nesterov) {
  if (mom == 0.0f) {
    for (size_t i = 0; i < len; i++) p[i] -= lr * (g[i] + wd * p[i]);
  } else if (nesterov) {
    for (size_t i = 0; i < len; i++) {
      const float d = g[i] + wd * p[i];
      const float b = mom * buf[i] + d;
      buf[i] = b;
      p[i] -= lr * (d + mom * b);
    }
  } else {
    for (size_t i = 0; i < len; i++) {
      const float b = mom * buf[i] + (g[i] + wd * p[i]);
      buf[i] = b;
      p[i] -= lr * b;
    }
  }
}

static void sgd_update(float *p, const float *g, float *buf, size_t n, float lr, float wd,
                       float mom, int nesterov) {
  size_t i = 0;
  for (; i + SPAN <= n; i += SPAN) sgd_span(p + i, g + i, buf + i, SPAN, lr, wd, mom, nesterov);
  sgd_span(p + i, g + i, buf + i, n - i, lr, wd, mom, nesterov);
}

typedef struct {
  float decay;     /* 1 - lr*wd: decoupled weight decay */
  float b1, b2;
  float step_size; /* lr / (1 - beta1^t) */
  float bc2_sqrt;  /* sqrt(1 - beta2^t) */
  float eps;
} adamw_k;

/* torch.optim.AdamW (amsgrad off): decoupled decay, then the bias-corrected
 * Adam step p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps). sqrtf has its own
 * loop: without -fno-math-errno it can set errno and never vectorises, and it
 * would keep the loop around it scalar too. len <= SPAN. */
static inline void adamw_span(float *restrict p, const float *restrict g, float *restrict m,
                              float *restrict v, size_t len, const adamw_k *k) {
  float root[SPAN];
  const float c1 = 1.0f - k->b1, c2 = 1.0f - k->b2;
  for (size_t i = 0; i < len; i++) {
    m[i] = k->b1 * m[i] + c1 * g[i];
    v[i] = k->b2 * v[i] + c2 * g[i] * g[i];
  }
  for (size_t i = 0; i < len; i++) root[i] = sqrtf(v[i]);
  for (size_t i = 0; i < len; i++)
    p[i] = p[i] * k->decay - k->step_size * m[i] / (root[i] / k->bc2_sqrt + k->eps);
}

static void adamw_update(float *p, const float *g, float *m, float *v, size_t n,
                         const adamw_k *k) {
  size_t i = 0;
  for (; i + SPAN <= n; i += SPAN) adamw_span(p + i, g + i, m + i, v + i, SPAN, k);
  adamw_span(p + i, g + i, m + i, v + i, n - i, k);
}

/* Not collective: every rank calls it with the same reduced gradients and
 * gets the same parameters. Groups must lie inside [0, o->n). */
void nn_optim_step(nn_optim *o, nn_model *m, float lr) {
  const nn_opt_cfg *c = &o->cfg;
#ifndef NDEBUG
  /* Invariant, checked in debug builds only: state sized for this model. */
  if (o->n != m->nparams) {
    fprintf(stderr, "nn_optim_step: optimizer state holds %zu parameters, model has %zu\n",
            o->n, m->nparams);
    abort();
  }
#endif
  o->t++;
  const double bc1 = 1.0 - pow((double)c->beta1, (double)o->t);
  const double bc2 = 1.0 - pow((double)c->beta2, (double)o->t);
  for (int gi = 0; gi < m->ngroups; gi++) {
    const nn_param_group *grp = &m->groups[gi];
    if (grp->frozen || grp->len == 0) continue;
    const float glr = lr * grp->lr_mult;
    float *p = m->params + grp->off;
    const float *g = m->grads + grp->off;
    float *ms = o->m + grp->off;
    if (c->kind == NN_OPT_ADAMW) {
      const adamw_k k = {1.0f - glr * c->weight_decay, c->beta1, c->beta2,
                         (float)(glr / bc1), (float)sqrt(bc2), c->eps};
      adamw_update(p, g, ms, o->v + grp->off, grp->len, &k);
    } else {
      sgd_update(p, g, ms, grp->len, glr, c->weight_decay, c->momentum, c->nesterov);
    }
  }
}

/* Sum of squares of g[0..n) in double. SPAN independent accumulators make
 * the loop elementwise (vectorisable without reassociating a reduction);
 * the summation order depends only on n, so every rank gets the same bits. */
static double sumsq(const float *restrict g, size_t n) {
  double acc[SPAN] = {0};
  size_t i = 0;
  for (; i + SPAN <= n; i += SPAN)
    for (size_t j = 0; j < SPAN; j++) acc[j] += (double)g[i + j] * g[i + j];
  for (size_t j = 0; i + j < n; j++) acc[j] += (double)g[i + j] * g[i + j];
  double s = 0.0;
  for (size_t j = 0; j < SPAN; j++) s += acc[j];
  return s;
}

static inline void scale_span(float *restrict g, size_t len, float s) {
  for (size_t i = 0; i < len; i++) g[i] *= s;
}

double nn_grad_norm(const nn_model *m) {
  double ss = 0.0;
  for (int gi = 0; gi < m->ngroups; gi++) {
    const nn_param_group *grp = &m->groups[gi];
    if (!grp->frozen) ss += sumsq(m->grads + grp->off, grp->len);
  }
  return sqrt(ss);
}

/* As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when
 * that is below 1. A non-finite norm leaves the gradients as they are: the
 * caller sees it in the return value and skips the step. */
double nn_clip_grad_norm(nn_model *m, double max_norm) {
  const double norm = nn_grad_norm(m);
  if (max_norm <= 0 || !isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return norm;
  const float s = (float)coef;
  for (int gi = 0; gi < m->ngroups; gi++) {
    const nn_param_group *grp = &m->groups[gi];
    if (grp->frozen) continue;
    float *g = m->grads + grp->off;
    size_t i = 0;
    for (; i + SPAN <= grp->len; i += SPAN) scale_span(g + i, SPAN, s);
    scale_span(g + i, grp->len - i, s);
  }
  return norm;
}

double nn_l2sp_apply(nn_model *m, const float *anchor, const char *prefix, float alpha) {
  size_t n = strlen(prefix);
  double pen = 0;
  for (int g = 0; g < m->ngroups; g++) {
    const nn_param_group *G = &m->groups[g];
    if (G->frozen || strncmp(G->name, prefix, n) != 0 || (G->name[n] != '.' && G->name[n] != 0))
      continue;
    float *w = m->params + G->off, *d = m->grads + G->off;
    const float *a = anchor + G->off;
    for (size_t i = 0; i < G->len; i++) {
      float diff = w[i] - a[i];
      d[i] += alpha * diff;
      pen += (double)diff * diff;
    }
  }
  return 0.5 * alpha * pen;
}
