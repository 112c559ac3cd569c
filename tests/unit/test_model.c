/* Model wiring: presets, trunk + several heads (feature gradients add up),
 * freezing (no gradient, no wasted backward), lr multipliers, gradient-ready
 * callbacks in reverse layer order, shape errors, no allocation in a step. */
#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layer_fixture.h"
#include "nn/err.h"
#include "nn/loss.h"
#include "nn/model.h"
#include "nn/optim.h"
#include "nn/rng.h"

/* trunk: dense 6 - tanh ; heads a: dense 3 ; b: dense 4 - tanh - dense 2 */
static void two_head_spec(nn_model_spec *sp) {
  memset(sp, 0, sizeof *sp);
  sp->in = (nn_shape){5, 1, 1};
  sp->trunk.nlayers = 2;
  sp->trunk.layers[0] = ls(NN_DENSE, 6);
  sp->trunk.layers[1] = ls(NN_TANH, 0);
  sp->nheads = 2;
  strcpy(sp->heads[0].name, "a");
  sp->heads[0].nlayers = 1;
  sp->heads[0].layers[0] = ls(NN_DENSE, 3);
  strcpy(sp->heads[1].name, "b");
  sp->heads[1].nlayers = 3;
  sp->heads[1].layers[0] = ls(NN_DENSE, 4);
  sp->heads[1].layers[1] = ls(NN_TANH, 0);
  sp->heads[1].layers[2] = ls(NN_DENSE, 2);
}

/* Joint loss: mean xent(head a) + 0.5 * mean xent(head b) on the same batch. */
static double joint_loss(nn_model *m, const float *x, const int32_t *ya, const int32_t *yb, int B,
                         float *da, float *db, int backward) {
  nn_pass p = {.B = B};
  const float *f = nn_model_forward_trunk(m, x, &p);
  const float *la = nn_model_forward_head(m, 0, f, &p);
  double L = nn_loss_xent(la, ya, NULL, B, 3, 0, -1, B, da);
  if (backward) nn_model_backward_head(m, 0, f, da, &p, NULL, NULL);
  const float *lb = nn_model_forward_head(m, 1, f, &p);
  L += nn_loss_xent(lb, yb, NULL, B, 2, 0, -1, 2.0 * B, db); /* weight 0.5 via norm */
  if (backward) {
    nn_model_backward_head(m, 1, f, db, &p, NULL, NULL);
    nn_model_backward_trunk(m, &p, NULL, NULL);
  }
  return L;
}

static void test_multi_head_gradient(void) {
  nn_model_spec sp;
  two_head_spec(&sp);
  nn_model *m = NULL;
  CHECK(nn_model_new(&m, &sp, 4) == 0);
  if (!m) return;
  nn_model_init_params(m, 7);
  CHECK(nn_model_head(m, "b") == 1 && nn_model_head(m, "zz") == -1);
  CHECK(nn_model_head_out(m, 0) == 3 && nn_model_head_out(m, 1) == 2);
  CHECK(m->ngroups == 4);
  enum { B = 4 };
  float x[B * 5], da[B * 3], db[B * 2];
  int32_t ya[B] = {0, 2, 1, 2}, yb[B] = {1, 0, 0, 1};
  nn_rng r;
  nn_rng_seed(&r, 3);
  for (int i = 0; i < B * 5; i++) x[i] = (float)nn_rng_normal(&r);
  nn_model_zero_grad(m);
  joint_loss(m, x, ya, yb, B, da, db, 1);
  double worst = 0;
  for (size_t i = 0; i < m->nparams; i += 3) {
    float keep = m->params[i];
    m->params[i] = keep + 1e-2f;
    double lp = joint_loss(m, x, ya, yb, B, da, db, 0);
    m->params[i] = keep - 1e-2f;
    double lm = joint_loss(m, x, ya, yb, B, da, db, 0);
    m->params[i] = keep;
    double num = (lp - lm) / 2e-2, err = fabs(num - m->grads[i]);
    if (err > worst) worst = err;
  }
  CHECK_MSG(worst < 2e-3, "worst abs gradient error %g", worst);
  nn_model_free(&m);
  CHECK(m == NULL);
}

typedef struct {
  size_t off[16], len[16];
  int n, calls;
} ready_log;

static void on_ready(void *ctx, size_t off, size_t len) {
  ready_log *l = ctx;
  l->calls++;
  if (len && l->n < 16) {
    l->off[l->n] = off;
    l->len[l->n++] = len;
  }
}

static void test_freeze_and_callbacks(void) {
  nn_model_spec sp;
  two_head_spec(&sp);
  sp.nheads = 1;
  nn_model *m = NULL;
  CHECK(nn_model_new(&m, &sp, 4) == 0);
  if (!m) return;
  nn_model_init_params(m, 1);
  float x[20], dl[12];
  int32_t y[4] = {0, 1, 2, 0};
  for (int i = 0; i < 20; i++) x[i] = (float)i / 10.0f - 1.0f;
  nn_pass p = {.B = 4};
  /* Everything trains: callbacks come head first, then trunk, with the
   * groups' ranges. */
  ready_log log = {0};
  nn_model_zero_grad(m);
  const float *lg = nn_model_forward(m, 0, x, &p);
  nn_loss_xent(lg, y, NULL, 4, 3, 0, -1, 4, dl);
  nn_model_backward(m, 0, dl, &p, on_ready, &log);
  CHECK(log.n == 2);
  CHECK(log.off[0] == m->groups[1].off && log.len[0] == m->groups[1].len);
  CHECK(log.off[1] == m->groups[0].off && log.len[1] == m->groups[0].len);
  /* Frozen trunk: its gradient stays zero and no callback names it. */
  CHECK(nn_model_set_frozen(m, "trunk", 1) == 1);
  CHECK(nn_model_trainable(m) == m->groups[1].len);
  CHECK(m->heads[0].layers[0].need_dx == 0);
  memset(&log, 0, sizeof log);
  nn_model_zero_grad(m);
  lg = nn_model_forward(m, 0, x, &p);
  nn_loss_xent(lg, y, NULL, 4, 3, 0, -1, 4, dl);
  nn_model_backward(m, 0, dl, &p, on_ready, &log);
  CHECK(log.n == 1 && log.off[0] == m->groups[1].off);
  int zero = 1, nonzero = 0;
  for (size_t i = 0; i < m->groups[0].len; i++) zero &= m->grads[m->groups[0].off + i] == 0.0f;
  for (size_t i = 0; i < m->groups[1].len; i++) nonzero |= m->grads[m->groups[1].off + i] != 0.0f;
  CHECK(zero && nonzero);
  /* Prefixes match whole name components only. */
  CHECK(nn_model_set_lr_mult(m, "head.main", 0.1f) == 0);
  CHECK(nn_model_set_lr_mult(m, "head", 0.1f) == 1);
  CHECK(nn_model_set_lr_mult(m, "trunk.dense", 2.0f) == 0);
  CHECK(nn_model_set_lr_mult(m, "trunk.dense1", 2.0f) == 1);
  CHECK(m->groups[0].lr_mult == 2.0f && m->groups[1].lr_mult == 0.1f);
  CHECK(nn_model_set_frozen(m, "", 0) == 2 && m->heads[0].layers[0].need_dx == 1);
  nn_model_free(&m);
}

static void test_presets_and_errors(void) {
  nn_model_spec sp;
  memset(&sp, 0, sizeof sp);
  CHECK(nn_model_preset(&sp, "mlp", "main", 10) == 0);
  sp.in = (nn_shape){1, 28, 28};
  sp.in_spatial = 1;
  nn_model *m = NULL;
  CHECK(nn_model_new(&m, &sp, 8) == 0);
  if (m) {
    CHECK(nn_model_head_out(m, 0) == 10);
    CHECK(m->feat.c == 128);
    size_t want = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10, got = 0;
    for (int i = 0; i < m->ngroups; i++) got += m->groups[i].len;
    CHECK_MSG(got == want, "mlp has %zu parameters, want %zu", got, want);
    CHECK(strcmp(m->groups[0].name, "trunk.dense1") == 0);
    CHECK(strcmp(m->groups[2].name, "head.main.dense1") == 0);
    /* No allocation inside a training step. */
    float *x = calloc(8 * 784, sizeof(float)), dl[80];
    int32_t y[8] = {0};
    nn_pass p = {.B = 8, .training = 1};
    nn_model_init_params(m, 0);
    const float *lg = nn_model_forward(m, 0, x, &p); /* warm-up (BLAS buffers) */
    nn_loss_xent(lg, y, NULL, 8, 10, 0, -1, 8, dl);
    nn_model_backward(m, 0, dl, &p, NULL, NULL);
    struct mallinfo2 before = mallinfo2();
    lg = nn_model_forward(m, 0, x, &p);
    nn_loss_xent(lg, y, NULL, 8, 10, 0, -1, 8, dl);
    nn_model_backward(m, 0, dl, &p, NULL, NULL);
    struct mallinfo2 after = mallinfo2();
    CHECK_MSG(after.uordblks == before.uordblks, "heap in use changed %zu -> %zu",
              before.uordblks, after.uordblks);
    free(x);
    nn_model_free(&m);
  }
  memset(&sp, 0, sizeof sp);
  CHECK(nn_model_preset(&sp, "cnn", "main", 5) == 0);
  sp.in = (nn_shape){1, 28, 28};
  sp.in_spatial = 1;
  CHECK(nn_model_new(&m, &sp, 4) == 0);
  if (m) CHECK(m->feat.c == 128 && nn_model_head_out(m, 0) == 5);
  nn_model_free(&m);
  memset(&sp, 0, sizeof sp);
  CHECK(nn_model_preset(&sp, "resnet", "main", 10) == 0);
  sp.in = (nn_shape){1, 28, 28};
  sp.in_spatial = 1;
  CHECK(nn_model_new(&m, &sp, 2) == 0);
  if (m) CHECK(m->feat.c == 64);
  nn_model_free(&m);
  ferry_err_clear();
  CHECK(nn_model_preset(&sp, "vgg", "main", 10) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "vgg") != NULL);
  /* Dense directly on an image does not chain: the message names the layer. */
  ferry_err_clear();
  memset(&sp, 0, sizeof sp);
  sp.in = (nn_shape){1, 28, 28};
  sp.in_spatial = 1;
  sp.trunk.nlayers = 1;
  sp.trunk.layers[0] = ls(NN_DENSE, 10);
  sp.nheads = 1;
  strcpy(sp.heads[0].name, "main");
  sp.heads[0].nlayers = 1;
  sp.heads[0].layers[0] = ls(NN_DENSE, 10);
  CHECK(nn_model_new(&m, &sp, 2) == FERRY_EUSER && m == NULL);
  CHECK_MSG(strstr(ferry_err_msg(), "dense1") != NULL, "message: %s", ferry_err_msg());
  /* A trunk ending spatial cannot feed a head. */
  ferry_err_clear();
  sp.trunk.layers[0] = ls(NN_RELU, 0);
  CHECK(nn_model_new(&m, &sp, 2) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), "flatten") != NULL, "message: %s", ferry_err_msg());
  /* Duplicate layer names. */
  ferry_err_clear();
  sp.trunk.nlayers = 2;
  sp.trunk.layers[0] = ls(NN_FLATTEN, 0);
  sp.trunk.layers[1] = ls(NN_RELU, 0);
  strcpy(sp.trunk.layers[0].name, "x");
  strcpy(sp.trunk.layers[1].name, "x");
  CHECK(nn_model_new(&m, &sp, 2) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "'x'") != NULL);
}

/* L2-SP: the gradient added equals the central difference of the penalty,
 * only the trunk is pulled, frozen groups are left alone. */
static void test_l2sp(void) {
  nn_model_spec sp;
  two_head_spec(&sp);
  nn_model *m = NULL;
  CHECK(nn_model_new(&m, &sp, 2) == 0);
  if (!m) return;
  nn_model_init_params(m, 3);
  float *anchor = malloc(m->nparams * sizeof(float));
  nn_rng r;
  nn_rng_seed(&r, 9);
  for (size_t i = 0; i < m->nparams; i++) anchor[i] = m->params[i] + 0.1f * (float)nn_rng_normal(&r);
  const float alpha = 0.3f;
  nn_model_zero_grad(m);
  nn_l2sp_apply(m, anchor, "trunk", alpha);
  double worst = 0;
  for (size_t i = 0; i < m->nparams; i++) {
    float keep = m->params[i];
    float *g = calloc(m->nparams, sizeof(float)), *saved = m->grads;
    m->grads = g;
    m->params[i] = keep + 1e-2f;
    double lp = nn_l2sp_apply(m, anchor, "trunk", alpha);
    m->params[i] = keep - 1e-2f;
    double lm = nn_l2sp_apply(m, anchor, "trunk", alpha);
    m->params[i] = keep;
    m->grads = saved;
    free(g);
    double err = fabs((lp - lm) / 2e-2 - saved[i]);
    if (err > worst) worst = err;
  }
  CHECK_MSG(worst < 1e-3, "L2-SP worst gradient error %g", worst);
  int head_zero = 1;
  for (int gi = 0; gi < m->ngroups; gi++)
    if (m->groups[gi].stack >= 0)
      for (size_t i = 0; i < m->groups[gi].len; i++) head_zero &= m->grads[m->groups[gi].off + i] == 0;
  CHECK(head_zero);
  nn_model_zero_grad(m);
  nn_model_set_frozen(m, "trunk", 1);
  CHECK(nn_l2sp_apply(m, anchor, "trunk", alpha) == 0.0);
  free(anchor);
  nn_model_free(&m);
}

int main(void) {
  test_l2sp();
  test_multi_head_gradient();
  test_freeze_and_callbacks();
  test_presets_and_errors();
  return check_report();
}
