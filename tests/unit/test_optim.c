/* Unit tests of nn/optim.c: SGD (momentum, Nesterov, weight decay) and AdamW
 * against hand-computed steps, long slabs against a scalar reference, every
 * schedule at chosen steps, lr multipliers, frozen groups, gradient norm and
 * clipping. Models are built by hand (slabs + groups), not by nn_model_new. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nn/err.h"
#include "nn/optim.h"

/* A model with only what the optimizer reads: slabs and groups. groups[i]
 * covers [off[i], off[i] + len[i]). */
typedef struct {
  nn_model m;
  nn_param_group g[4];
  float *p, *gr;
} toy;

static toy *toy_new(size_t n, int ngroups, const size_t *off, const size_t *len) {
  toy *t = calloc(1, sizeof *t);
  t->p = calloc(n, sizeof(float));
  t->gr = calloc(n, sizeof(float));
  t->m.nparams = n;
  t->m.params = t->p;
  t->m.grads = t->gr;
  t->m.ngroups = ngroups;
  t->m.groups = t->g;
  for (int i = 0; i < ngroups; i++)
    t->g[i] = (nn_param_group){.off = off[i], .len = len[i], .lr_mult = 1.0f, .frozen = 0};
  return t;
}

static void toy_free(toy *t) {
  free(t->p);
  free(t->gr);
  free(t);
}

/* One group over one parameter. */
static toy *toy1(float p, float g) {
  const size_t off = 0, len = 1;
  toy *t = toy_new(1, 1, &off, &len);
  t->p[0] = p;
  t->gr[0] = g;
  return t;
}

static void test_names_init(void) {
  CHECK(strcmp(nn_opt_names[NN_OPT_SGD], "sgd") == 0);
  CHECK(strcmp(nn_opt_names[NN_OPT_ADAMW], "adamw") == 0);
  CHECK(strcmp(nn_sched_names[NN_SCHED_CONSTANT], "constant") == 0);
  CHECK(strcmp(nn_sched_names[NN_SCHED_STEP], "step") == 0);
  CHECK(strcmp(nn_sched_names[NN_SCHED_COSINE], "cosine") == 0);

  nn_optim o;
  nn_opt_cfg c = {.kind = NN_OPT_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  CHECK(nn_optim_init(&o, &c, 1000) == 0);
  CHECK(o.m && o.v && o.n == 1000 && o.t == 0);
  CHECK((uintptr_t)o.m % 64 == 0 && (uintptr_t)o.v % 64 == 0);
  int zero = 1;
  for (size_t i = 0; i < o.n; i++) zero &= o.m[i] == 0.0f && o.v[i] == 0.0f;
  CHECK(zero);
  nn_optim_free(&o);
  CHECK(o.m == NULL && o.v == NULL);
  nn_optim_free(&o); /* second free is harmless */

  c.kind = NN_OPT_SGD;
  CHECK(nn_optim_init(&o, &c, 3) == 0);
  CHECK(o.m != NULL && o.v == NULL);
  nn_optim_free(&o);

  c.kind = (nn_opt_kind)7;
  ferry_err_clear();
  CHECK(nn_optim_init(&o, &c, 3) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "found 7") != NULL);
  CHECK(o.m == NULL && o.v == NULL);
  ferry_err_clear();
}

/* lr 0.1, momentum 0.9, weight decay 0.01, p0 = 1, g = 0.5 every step:
 *   1: d = 0.5 + 0.01*1       = 0.51,       buf = 0.51,       p = 1 - 0.051       = 0.949
 *   2: d = 0.5 + 0.01*0.949   = 0.50949,    buf = 0.459 + d   = 0.96849,
 *      p = 0.949 - 0.096849   = 0.852151
 *   3: d = 0.5 + 0.00852151   = 0.50852151, buf = 0.871641 + d = 1.38016251,
 *      p = 0.852151 - 0.138016251 = 0.714134749 */
static void test_sgd_momentum(void) {
  toy *t = toy1(1.0f, 0.5f);
  nn_optim o;
  const nn_opt_cfg c = {.kind = NN_OPT_SGD, .lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
  CHECK(nn_optim_init(&o, &c, 1) == 0);
  const double want_p[3] = {0.949, 0.852151, 0.714134749};
  const double want_b[3] = {0.51, 0.96849, 1.38016251};
  for (int s = 0; s < 3; s++) {
    nn_optim_step(&o, &t->m, 0.1f);
    CHECK_NEAR(t->p[0], want_p[s], 2e-7);
    CHECK_NEAR(o.m[0], want_b[s], 2e-7);
    CHECK(o.t == s + 1);
  }
  CHECK(t->gr[0] == 0.5f); /* gradients are read, not changed */
  nn_optim_free(&o);
  toy_free(t);
}

/* Nesterov, lr 0.1, momentum 0.9, p0 = 0, g = 1: p -= 0.1 (g + 0.9 buf)
 *   1: buf = 1,    p = -0.19
 *   2: buf = 1.9,  p = -0.19 - 0.1*(1 + 1.71)  = -0.461
 *   3: buf = 2.71, p = -0.461 - 0.1*(1 + 2.439) = -0.8049 */
static void test_sgd_nesterov(void) {
  toy *t = toy1(0.0f, 1.0f);
  nn_optim o;
  const nn_opt_cfg c = {.kind = NN_OPT_SGD, .lr = 0.1f, .momentum = 0.9f, .nesterov = 1};
  CHECK(nn_optim_init(&o, &c, 1) == 0);
  const double want[3] = {-0.19, -0.461, -0.8049};
  for (int s = 0; s < 3; s++) {
    nn_optim_step(&o, &t->m, 0.1f);
    CHECK_NEAR(t->p[0], want[s], 2e-7);
  }
  CHECK_NEAR(o.m[0], 2.71, 2e-7);
  nn_optim_free(&o);
  toy_free(t);
}

/* Plain SGD (momentum 0) with decay 0.1, lr 0.1, p0 = 2, g = 0.5 then -1:
 *   1: p = 2 - 0.1*(0.5 + 0.2)      = 1.93
 *   2: p = 1.93 - 0.1*(-1 + 0.193)  = 2.0107
 * The momentum slab stays zero. The lr passed to the step is what counts
 * (the scheduler's), not cfg.lr. */
static void test_sgd_plain(void) {
  toy *t = toy1(2.0f, 0.5f);
  nn_optim o;
  const nn_opt_cfg c = {.kind = NN_OPT_SGD, .lr = 99.0f, .weight_decay = 0.1f};
  CHECK(nn_optim_init(&o, &c, 1) == 0);
  nn_optim_step(&o, &t->m, 0.1f);
  CHECK_NEAR(t->p[0], 1.93, 2e-7);
  t->gr[0] = -1.0f;
  nn_optim_step(&o, &t->m, 0.1f);
  CHECK_NEAR(t->p[0], 2.0107, 2e-7);
  CHECK(o.m[0] == 0.0f);
  nn_optim_free(&o);
  toy_free(t);
}

/* AdamW, lr 0.01, betas (0.9, 0.999), eps 1e-8, decay 0.1, p0 = 1,
 * g = 0.5 then -0.25:
 *   1: p = 0.999; m = 0.05; v = 0.00025; m^ = 0.5, v^ = 0.25
 *      p = 0.999 - 0.01*0.5/(0.5 + 1e-8) = 0.9890000002
 *   2: p = 0.9890000002*0.999 = 0.9880110001998; m = 0.045 - 0.025 = 0.02;
 *      v = 0.00024975 + 0.0000625 = 0.00031225;
 *      m^ = 0.02/0.19 = 0.1052631579, v^ = 0.00031225/0.001999 = 0.1562031016,
 *      sqrt(v^) = 0.3952253809; p -= 0.01*0.1052631579/0.3952253809
 *      p = 0.9880110002 - 0.0026633703 = 0.9853476299 */
static void test_adamw(void) {
  toy *t = toy1(1.0f, 0.5f);
  nn_optim o;
  const nn_opt_cfg c = {.kind = NN_OPT_ADAMW, .lr = 0.01f, .weight_decay = 0.1f,
                        .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  CHECK(nn_optim_init(&o, &c, 1) == 0);
  nn_optim_step(&o, &t->m, 0.01f);
  CHECK_NEAR(t->p[0], 0.9890000002, 2e-7);
  /* The moments use the float betas: 0.999f is 0.999 + 1.3e-8, so 1 - beta2
   * is 1.3e-5 (relative) off 0.001, and 1 - 0.9f is 0.1 + 2.4e-8. The bias
   * corrections use the same betas, so the steps above are unaffected. */
  const double c1 = 1.0 - (double)0.9f, c2 = 1.0 - (double)0.999f;
  CHECK_NEAR(o.m[0], c1 * 0.5, 5e-9);
  CHECK_NEAR(o.v[0], c2 * 0.25, 1e-11);
  t->gr[0] = -0.25f;
  nn_optim_step(&o, &t->m, 0.01f);
  CHECK_NEAR(t->p[0], 0.9853476299, 2e-7);
  CHECK_NEAR(o.m[0], (double)0.9f * c1 * 0.5 - c1 * 0.25, 5e-9);
  CHECK_NEAR(o.v[0], (double)0.999f * c2 * 0.25 + c2 * 0.0625, 1e-11);
  CHECK(o.t == 2);
  nn_optim_free(&o);
  toy_free(t);
}

/* Double-precision reference of both optimizers for one element. */
typedef struct {
  double p, m, v;
} ref_state;

static void ref_step(ref_state *s, double g, const nn_opt_cfg *c, double lr, int64_t t) {
  if (c->kind == NN_OPT_ADAMW) {
    s->p *= 1 - lr * c->weight_decay;
    s->m = c->beta1 * s->m + (1 - c->beta1) * g;
    s->v = c->beta2 * s->v + (1 - c->beta2) * g * g;
    const double mh = s->m / (1 - pow(c->beta1, (double)t));
    const double vh = s->v / (1 - pow(c->beta2, (double)t));
    s->p -= lr * mh / (sqrt(vh) + c->eps);
  } else {
    double d = g + c->weight_decay * s->p;
    s->m = c->momentum * s->m + d;
    if (c->momentum != 0) d = c->nesterov ? d + c->momentum * s->m : s->m;
    s->p -= lr * d;
  }
}

/* 75 parameters (two full 32-float spans plus a tail) with varied values:
 * every element, whichever code path updates it, follows the reference. */
static void test_long_slab(const nn_opt_cfg *c, const char *what) {
  enum { N = 75, STEPS = 4 };
  const size_t off = 0, len = N;
  toy *t = toy_new(N, 1, &off, &len);
  ref_state r[N];
  for (int i = 0; i < N; i++) {
    t->p[i] = (float)(0.1 * (i % 11) - 0.4);
    r[i] = (ref_state){t->p[i], 0, 0};
  }
  nn_optim o;
  CHECK(nn_optim_init(&o, c, N) == 0);
  double worst = 0;
  for (int s = 1; s <= STEPS; s++) {
    for (int i = 0; i < N; i++) t->gr[i] = (float)(0.05 * ((i * 7 + s * 3) % 13) - 0.3);
    nn_optim_step(&o, &t->m, c->lr);
    for (int i = 0; i < N; i++) {
      ref_step(&r[i], t->gr[i], c, c->lr, s);
      const double e = fabs(t->p[i] - r[i].p);
      if (e > worst) worst = e;
    }
  }
  CHECK_MSG(worst < 2e-6, "%s: worst |p - ref| = %g", what, worst);
  nn_optim_free(&o);
  toy_free(t);
}

static void test_long_slabs(void) {
  nn_opt_cfg c = {.kind = NN_OPT_SGD, .lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-2f};
  test_long_slab(&c, "sgd momentum");
  c.nesterov = 1;
  test_long_slab(&c, "sgd nesterov");
  c.momentum = 0;
  c.nesterov = 0;
  test_long_slab(&c, "sgd plain");
  c = (nn_opt_cfg){.kind = NN_OPT_ADAMW, .lr = 0.01f, .weight_decay = 0.05f,
                   .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f};
  test_long_slab(&c, "adamw");
}

static void test_schedules(void) {
  /* Tolerance 1e-8: results are floats (0.1f is 0.1 + 1.5e-9). */
  const float lr = 0.1f;
  nn_sched_cfg s = {.kind = NN_SCHED_CONSTANT};
  CHECK(nn_sched_lr(&s, lr, 0) == lr);
  CHECK(nn_sched_lr(&s, lr, 12345) == lr);

  /* step: every 10 steps times 0.5. */
  s = (nn_sched_cfg){.kind = NN_SCHED_STEP, .step_size = 10, .gamma = 0.5f};
  CHECK_NEAR(nn_sched_lr(&s, lr, 0), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 9), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 10), 0.05, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 19), 0.05, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 25), 0.025, 1e-8);

  /* cosine from 0.1 to 0.01 over 100 steps:
   * t = 25: 0.01 + 0.09 (1 + cos(pi/4))/2 = 0.01 + 0.09 * 0.8535533906 = 0.0868198052
   * t = 50: 0.01 + 0.09/2 = 0.055; t = 75: 0.01 + 0.09 * 0.1464466094 = 0.0231801948 */
  s = (nn_sched_cfg){.kind = NN_SCHED_COSINE, .total_steps = 100, .min_lr = 0.01f};
  CHECK_NEAR(nn_sched_lr(&s, lr, 0), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 25), 0.0868198052, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 50), 0.055, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 75), 0.0231801948, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 100), 0.01, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 500), 0.01, 1e-8);

  /* 10 warm-up steps, then cosine over the remaining 100 of 110:
   * t = 0: 0.01, t = 4: 0.05, t = 9: 0.1, t = 10: 0.1 (cosine t' = 0),
   * t = 60: 0.055 (t' = 50), t = 110: 0.01. */
  s.warmup_steps = 10;
  s.total_steps = 110;
  CHECK_NEAR(nn_sched_lr(&s, lr, 0), 0.01, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 4), 0.05, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 9), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 10), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 35), 0.0868198052, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 60), 0.055, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 110), 0.01, 1e-8);

  /* warm-up 5 in front of step(10, 0.1): the steps count after warm-up. */
  s = (nn_sched_cfg){.kind = NN_SCHED_STEP, .step_size = 10, .gamma = 0.1f, .warmup_steps = 5};
  CHECK_NEAR(nn_sched_lr(&s, lr, 2), 0.06, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 5), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 14), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 15), 0.01, 1e-8);

  /* warm-up with a constant schedule */
  s = (nn_sched_cfg){.kind = NN_SCHED_CONSTANT, .warmup_steps = 4};
  CHECK_NEAR(nn_sched_lr(&s, lr, 0), 0.025, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 3), 0.1, 1e-8);
  CHECK_NEAR(nn_sched_lr(&s, lr, 1000), 0.1, 1e-8);
}

/* Three groups: [0,4) lr_mult 1, [4,8) lr_mult 0.25, [16,20) frozen (its
 * optimizer state pre-set to a sentinel); [8,16) and [20,24) belong to no
 * group (alignment padding) and must stay untouched too. */
static void test_groups(nn_opt_kind kind) {
  const size_t off[3] = {0, 4, 16}, len[3] = {4, 4, 4};
  toy *t = toy_new(24, 3, off, len);
  t->g[1].lr_mult = 0.25f;
  t->g[2].frozen = 1;
  for (int i = 0; i < 24; i++) {
    t->p[i] = 1.0f + 0.125f * (float)(i % 4);
    t->gr[i] = 0.5f;
  }
  const nn_opt_cfg c = {.kind = kind, .lr = 0.1f, .momentum = 0.5f, .weight_decay = 0.0f,
                        .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  nn_optim o;
  CHECK(nn_optim_init(&o, &c, 24) == 0);
  for (int i = 0; i < 24; i++) {
    o.m[i] = 0.0f;
    if (o.v) o.v[i] = 0.0f;
  }
  for (int i = 16; i < 20; i++) {
    o.m[i] = 42.0f;
    if (o.v) o.v[i] = 43.0f;
  }
  float before[24];
  memcpy(before, t->p, sizeof before);
  nn_optim_step(&o, &t->m, 0.1f);
  nn_optim_step(&o, &t->m, 0.1f);

  /* Both optimizers here move a parameter by a step proportional to the
   * group's lr (weight decay 0): the 0.25 group moves a quarter as far. */
  for (int i = 0; i < 4; i++) {
    const double d1 = before[i] - t->p[i], d2 = before[4 + i] - t->p[4 + i];
    CHECK(d1 > 0);
    CHECK_NEAR(d2, 0.25 * d1, 1e-6 * d1);
  }
  /* SGD momentum 0.5, g = 0.5: buf 0.5 then 0.75, p moves 0.1*(0.5 + 0.75);
   * AdamW with a constant gradient moves lr * (1 - tiny eps term) per step. */
  CHECK_NEAR(before[0] - t->p[0], kind == NN_OPT_SGD ? 0.125 : 0.2, 1e-6);
  CHECK(memcmp(before + 16, t->p + 16, 4 * sizeof(float)) == 0);
  CHECK(memcmp(before + 8, t->p + 8, 8 * sizeof(float)) == 0);
  CHECK(memcmp(before + 20, t->p + 20, 4 * sizeof(float)) == 0);
  for (int i = 16; i < 20; i++) {
    CHECK(o.m[i] == 42.0f);
    if (o.v) CHECK(o.v[i] == 43.0f);
  }
  for (int i = 8; i < 16; i++) CHECK(o.m[i] == 0.0f);
  nn_optim_free(&o);
  toy_free(t);
}

/* AdamW's decoupled decay uses the group's lr: with g = 0 the Adam term is
 * 0/(0 + eps) = 0, leaving p *= 1 - lr*mult*wd: 2 * (1 - 0.1*0.5*0.1) = 1.99
 * for the 0.5 group and 2 * (1 - 0.01) = 1.98 for the other. */
static void test_adamw_decay_mult(void) {
  const size_t off[2] = {0, 1}, len[2] = {1, 1};
  toy *t = toy_new(2, 2, off, len);
  t->p[0] = t->p[1] = 2.0f;
  t->g[1].lr_mult = 0.5f;
  const nn_opt_cfg c = {.kind = NN_OPT_ADAMW, .lr = 0.1f, .weight_decay = 0.1f,
                        .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  nn_optim o;
  CHECK(nn_optim_init(&o, &c, 2) == 0);
  nn_optim_step(&o, &t->m, 0.1f);
  CHECK_NEAR(t->p[0], 1.98, 2e-7);
  CHECK_NEAR(t->p[1], 1.99, 2e-7);
  nn_optim_free(&o);
  toy_free(t);
}

/* grads [3, 4] in group 0, [12] in group 1: norm 13; with group 1 frozen 5. */
static void test_grad_norm(void) {
  const size_t off[2] = {0, 4}, len[2] = {2, 1};
  toy *t = toy_new(8, 2, off, len);
  t->gr[0] = 3;
  t->gr[1] = 4;
  t->gr[4] = 12;
  t->gr[2] = 100; /* outside every group: not counted */
  CHECK_NEAR(nn_grad_norm(&t->m), 13.0, 1e-12);
  t->g[1].frozen = 1;
  CHECK_NEAR(nn_grad_norm(&t->m), 5.0, 1e-12);

  /* Clip to 2.5 with group 1 frozen: unfrozen grads halve, frozen kept. */
  double n = nn_clip_grad_norm(&t->m, 2.5);
  CHECK_NEAR(n, 5.0, 1e-12);
  CHECK_NEAR(t->gr[0], 1.5, 1e-6);
  CHECK_NEAR(t->gr[1], 2.0, 1e-6);
  CHECK(t->gr[4] == 12.0f);
  CHECK(t->gr[2] == 100.0f);
  CHECK_NEAR(nn_grad_norm(&t->m), 2.5, 1e-5);

  /* Below the limit, or max_norm <= 0: unchanged, bit for bit. */
  t->g[1].frozen = 0;
  const float keep[3] = {t->gr[0], t->gr[1], t->gr[4]};
  n = nn_clip_grad_norm(&t->m, 100.0);
  CHECK_NEAR(n, sqrt(1.5 * 1.5 + 4 + 144), 1e-6);
  n = nn_clip_grad_norm(&t->m, 0.0);
  CHECK(t->gr[0] == keep[0] && t->gr[1] == keep[1] && t->gr[4] == keep[2]);

  /* Clip over both groups: grads (0, 0, 12.25) -> norm 12.25, clipped to 1. */
  t->gr[0] = 0;
  t->gr[1] = 0;
  t->gr[4] = 12.25f;
  n = nn_clip_grad_norm(&t->m, 1.0);
  CHECK_NEAR(n, 12.25, 1e-12);
  CHECK_NEAR(t->gr[4], 1.0, 1e-6);
  toy_free(t);

  /* A long group (spans + tail): 100 grads of 0.5 -> norm 5. */
  const size_t o2 = 0, l2 = 100;
  t = toy_new(100, 1, &o2, &l2);
  for (int i = 0; i < 100; i++) t->gr[i] = 0.5f;
  t->gr[99] = -0.5f;
  CHECK_NEAR(nn_grad_norm(&t->m), 5.0, 1e-12);
  n = nn_clip_grad_norm(&t->m, 1.0);
  CHECK_NEAR(n, 5.0, 1e-12);
  CHECK_NEAR(t->gr[0], 0.1, 1e-7);
  CHECK_NEAR(t->gr[99], -0.1, 1e-7);
  CHECK_NEAR(nn_grad_norm(&t->m), 1.0, 1e-6);

  /* A non-finite norm is reported and the gradients are left alone. */
  t->gr[50] = INFINITY;
  n = nn_clip_grad_norm(&t->m, 1.0);
  CHECK(!isfinite(n));
  CHECK_NEAR(t->gr[0], 0.1, 1e-7);
  toy_free(t);
}

int main(void) {
  test_names_init();
  test_sgd_momentum();
  test_sgd_nesterov();
  test_sgd_plain();
  test_adamw();
  test_long_slabs();
  test_schedules();
  test_groups(NN_OPT_SGD);
  test_groups(NN_OPT_ADAMW);
  test_adamw_decay_mult();
  test_grad_norm();
  return check_report();
}
