/* Unit tests of nn/loss.c: hand-computed values, central-difference gradient
 * checks of xent/bce/mse (weights, smoothing, ignored rows, norm), stability
 * at extreme logits, and the data-parallel split (two halves with the global
 * norm sum to the whole batch). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "nn/loss.h"
#include "nn/rng.h"

enum { B = 6, K = 5 };

static void fill_uniform(float *x, int n, nn_rng *r, double lo, double hi) {
  for (int i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * nn_rng_uniform(r));
}

static void test_names(void) {
  CHECK(nn_loss_from_name("xent") == NN_LOSS_XENT);
  CHECK(nn_loss_from_name("bce") == NN_LOSS_BCE);
  CHECK(nn_loss_from_name("mse") == NN_LOSS_MSE);
  CHECK(nn_loss_from_name("Xent") == -1);
  CHECK(nn_loss_from_name("") == -1);
  CHECK(nn_loss_from_name(NULL) == -1);
  for (int i = 0; i < NN_LOSS_COUNT; i++) CHECK(nn_loss_from_name(nn_loss_names[i]) == i);
}

/* logits [0, ln 2]: softmax = [1/3, 2/3]. */
static void test_xent_by_hand(void) {
  const float z[2] = {0.0f, (float)log(2.0)};
  int32_t y = 1;
  float dz[2];
  double L = nn_loss_xent(z, &y, NULL, 1, 2, 0.0f, -1, 1.0, dz);
  CHECK_NEAR(L, log(1.5), 1e-7);
  CHECK_NEAR(dz[0], 1.0 / 3, 1e-7);
  CHECK_NEAR(dz[1], -1.0 / 3, 1e-7);

  /* norm 2 halves loss and gradient; weight 3 triples them. */
  float w = 3.0f;
  L = nn_loss_xent(z, &y, &w, 1, 2, 0.0f, -1, 2.0, dz);
  CHECK_NEAR(L, 1.5 * log(1.5), 1e-7);
  CHECK_NEAR(dz[0], 0.5, 1e-7);
  CHECK_NEAR(dz[1], -0.5, 1e-7);

  /* smoothing 0.2, K = 2: target [0.1, 0.9]. */
  L = nn_loss_xent(z, &y, NULL, 1, 2, 0.2f, -1, 1.0, dz);
  CHECK_NEAR(L, -(0.1 * log(1.0 / 3) + 0.9 * log(2.0 / 3)), 1e-7);
  CHECK_NEAR(dz[0], 1.0 / 3 - 0.1, 1e-7);
  CHECK_NEAR(dz[1], 2.0 / 3 - 0.9, 1e-7);

  /* label 0 instead: loss ln 3, gradient [1/3 - 1, 2/3]. */
  y = 0;
  L = nn_loss_xent(z, &y, NULL, 1, 2, 0.0f, -1, 1.0, dz);
  CHECK_NEAR(L, log(3.0), 1e-7);
  CHECK_NEAR(dz[0], -2.0 / 3, 1e-7);
  CHECK_NEAR(dz[1], 2.0 / 3, 1e-7);

  /* uniform logits over K = 4: loss ln 4 whatever the label or smoothing. */
  const float u[4] = {7, 7, 7, 7};
  y = 2;
  CHECK_NEAR(nn_loss_xent(u, &y, NULL, 1, 4, 0.3f, -1, 1.0, NULL), log(4.0), 1e-7);
}

/* Rows labelled ignore_index add nothing and get a zero gradient (even over
 * a dlogits buffer holding garbage); a label outside [0,K) makes the loss NaN
 * with a zero gradient row; norm 0 gives 0, not NaN. */
static void test_xent_ignore(void) {
  const float z[3][3] = {{1, 2, 3}, {50, -20, 4}, {0.5f, 0.5f, -1}};
  const int32_t y[3] = {2, -7, 0};
  const float w[3] = {1, 1, 2};
  float dz[3][3];
  for (int i = 0; i < 9; i++) (&dz[0][0])[i] = 123.0f;
  double L = nn_loss_xent(&z[0][0], y, w, 3, 3, 0.0f, -7, 4.0, &dz[0][0]);
  int32_t y0 = 2, y2 = 0;
  float d0[3], d2[3];
  const double L0 = nn_loss_xent(z[0], &y0, NULL, 1, 3, 0.0f, -7, 4.0, d0);
  const double L2 = nn_loss_xent(z[2], &y2, &w[2], 1, 3, 0.0f, -7, 4.0, d2);
  CHECK_NEAR(L, L0 + L2, 1e-12);
  for (int k = 0; k < 3; k++) {
    CHECK(dz[1][k] == 0.0f);
    CHECK(dz[0][k] == d0[k]);
    CHECK(dz[2][k] == d2[k]);
  }
  /* The ignored row alone: loss 0. */
  CHECK(nn_loss_xent(z[1], &y[1], NULL, 1, 3, 0.1f, -7, 1.0, NULL) == 0.0);

  /* Out-of-range label: NaN loss, zero gradient, no out-of-bounds read. */
  const int32_t bad[2] = {3, 1};
  float dbad[2][3];
  for (int i = 0; i < 6; i++) (&dbad[0][0])[i] = 9.0f;
  L = nn_loss_xent(&z[0][0], bad, NULL, 2, 3, 0.0f, -1, 1.0, &dbad[0][0]);
  CHECK(isnan(L));
  for (int k = 0; k < 3; k++) CHECK(dbad[0][k] == 0.0f);
  CHECK(dbad[1][0] != 9.0f && isfinite(dbad[1][0]));

  /* norm 0 (no labelled row in the global batch): 0 and zero gradient. */
  const int32_t none[1] = {-1};
  float dn[3] = {5, 5, 5};
  L = nn_loss_xent(z[0], none, NULL, 1, 3, 0.0f, -1, 0.0, dn);
  CHECK(L == 0.0);
  CHECK(dn[0] == 0.0f && dn[1] == 0.0f && dn[2] == 0.0f);
}

static void test_bce_mse_by_hand(void) {
  /* z = 0, t = 1: ln 2, grad sigmoid(0) - 1 = -1/2.
   * z = ln 3, t = 1/4: ln(1 + 3) - ln(3)/4, grad 3/4 - 1/4 = 1/2. */
  const float z[2] = {0.0f, (float)log(3.0)};
  const float t[2] = {1.0f, 0.25f};
  float dz[2];
  double L = nn_loss_bce(z, t, NULL, 1, 2, 1.0, dz);
  CHECK_NEAR(L, log(2.0) + log(4.0) - 0.25 * log(3.0), 1e-7);
  CHECK_NEAR(dz[0], -0.5, 1e-7);
  CHECK_NEAR(dz[1], 0.5, 1e-7);
  /* As two rows of one logit, weights [2, 1], norm 4. */
  const float w[2] = {2, 1};
  L = nn_loss_bce(z, t, w, 2, 1, 4.0, dz);
  CHECK_NEAR(L, (2 * log(2.0) + log(4.0) - 0.25 * log(3.0)) / 4, 1e-7);
  CHECK_NEAR(dz[0], -0.25, 1e-7);
  CHECK_NEAR(dz[1], 0.125, 1e-7);

  /* mse: y = [1, 2], t = [0, 4]: 1 + 4 = 5; gradient 2(y - t) = [2, -4]. */
  const float y[2] = {1, 2}, tt[2] = {0, 4};
  L = nn_loss_mse(y, tt, NULL, 1, 2, 1.0, dz);
  CHECK_NEAR(L, 5.0, 1e-12);
  CHECK_NEAR(dz[0], 2.0, 1e-7);
  CHECK_NEAR(dz[1], -4.0, 1e-7);
  L = nn_loss_mse(y, tt, w, 2, 1, 2.0, dz); /* (2*1 + 1*4) / 2 */
  CHECK_NEAR(L, 3.0, 1e-12);
  CHECK_NEAR(dz[0], 2.0, 1e-7);  /* 2 * 2 * 1 / 2 */
  CHECK_NEAR(dz[1], -2.0, 1e-7); /* 2 * 1 * (-2) / 2 */
}

/* Plain double references written from the textbook formulas (no max
 * subtraction, explicit target vector), usable at moderate logits. */
static double ref_xent(const float *z, const int32_t *y, const float *w, int b, int k,
                       double s, int ignore, double norm) {
  double total = 0;
  for (int i = 0; i < b; i++) {
    if (y[i] == ignore) continue;
    double sum = 0;
    for (int j = 0; j < k; j++) sum += exp((double)z[i * k + j]);
    double row = 0;
    for (int j = 0; j < k; j++) {
      const double tj = (j == y[i] ? 1 - s : 0) + s / k;
      row -= tj * log(exp((double)z[i * k + j]) / sum);
    }
    total += (w ? w[i] : 1.0) * row;
  }
  return total / norm;
}

static double ref_bce(const float *z, const float *t, const float *w, int b, int k,
                      double norm) {
  double total = 0;
  for (int i = 0; i < b; i++)
    for (int j = 0; j < k; j++) {
      const double sg = 1 / (1 + exp(-(double)z[i * k + j])), tj = t[i * k + j];
      total -= (w ? w[i] : 1.0) * (tj * log(sg) + (1 - tj) * log(1 - sg));
    }
  return total / norm;
}

typedef struct {
  const int32_t *y;
  const float *t, *w;
  float s;
  int ignore;
  double norm;
  nn_loss_kind kind;
} loss_ctx;

static double eval(const float *z, const loss_ctx *c, float *dz) {
  switch (c->kind) {
  case NN_LOSS_XENT: return nn_loss_xent(z, c->y, c->w, B, K, c->s, c->ignore, c->norm, dz);
  case NN_LOSS_BCE: return nn_loss_bce(z, c->t, c->w, B, K, c->norm, dz);
  case NN_LOSS_MSE: return nn_loss_mse(z, c->t, c->w, B, K, c->norm, dz);
  case NN_LOSS_COUNT: break;
  }
  return NAN;
}

/* Central differences on every logit. The step actually taken is measured
 * after rounding to float, and the loss is accumulated in double, so the
 * difference quotient is accurate to ~1e-7. Returns the worst error. */
static double gradcheck(float *z, const loss_ctx *c) {
  float dz[B * K];
  eval(z, c, dz);
  double worst = 0;
  for (int i = 0; i < B * K; i++) {
    const float z0 = z[i];
    z[i] = z0 + 1e-3f;
    const double hi = z[i];
    const double fp = eval(z, c, NULL);
    z[i] = z0 - 1e-3f;
    const double lo = z[i];
    const double fm = eval(z, c, NULL);
    z[i] = z0;
    const double num = (fp - fm) / (hi - lo);
    const double err = fabs(num - dz[i]) / (1e-3 + fabs(num));
    if (err > worst) worst = err;
  }
  return worst;
}

static void test_gradcheck(void) {
  nn_rng r;
  nn_rng_seed(&r, 42);
  float z[B * K], t[B * K], w[B];
  fill_uniform(z, B * K, &r, -3, 3);
  fill_uniform(t, B * K, &r, 0, 1);
  fill_uniform(w, B, &r, 0.25, 2);
  const int32_t y[B] = {0, 4, -1, 2, 3, 1};

  loss_ctx c = {y, t, w, 0.0f, -1, 3.5, NN_LOSS_XENT};
  double e = gradcheck(z, &c);
  CHECK_MSG(e < 1e-4, "xent worst rel err %g", e);
  CHECK_NEAR(eval(z, &c, NULL), ref_xent(z, y, w, B, K, 0.0, -1, 3.5), 1e-9);
  c.s = 0.15f;
  e = gradcheck(z, &c);
  CHECK_MSG(e < 1e-4, "xent smoothed worst rel err %g", e);
  CHECK_NEAR(eval(z, &c, NULL), ref_xent(z, y, w, B, K, 0.15f, -1, 3.5), 1e-9);
  c.w = NULL;
  e = gradcheck(z, &c);
  CHECK_MSG(e < 1e-4, "xent unweighted worst rel err %g", e);
  /* The ignored row (2) has exactly zero gradient. */
  float dz[B * K];
  eval(z, &c, dz);
  for (int k = 0; k < K; k++) CHECK(dz[2 * K + k] == 0.0f);
  /* Each kept row's gradient sums to zero (softmax minus a distribution). */
  double rs = 0;
  for (int k = 0; k < K; k++) rs += dz[3 * K + k];
  CHECK_NEAR(rs, 0.0, 1e-7);

  c = (loss_ctx){NULL, t, w, 0.0f, -1, 2.0, NN_LOSS_BCE};
  e = gradcheck(z, &c);
  CHECK_MSG(e < 1e-4, "bce worst rel err %g", e);
  CHECK_NEAR(eval(z, &c, NULL), ref_bce(z, t, w, B, K, 2.0), 1e-9);

  c.kind = NN_LOSS_MSE;
  c.norm = 7.0;
  e = gradcheck(z, &c);
  CHECK_MSG(e < 1e-4, "mse worst rel err %g", e);
}

static void test_stability(void) {
  const float z[2][3] = {{1000, -1000, 0}, {-1000, 1000, 999}};
  const int32_t y[2] = {1, 2};
  float dz[6];
  const double L = nn_loss_xent(&z[0][0], y, NULL, 2, 3, 0.1f, -1, 1.0, dz);
  CHECK(isfinite(L));
  /* loss of a row = lse - sum_k t_k z_k, t = off + (on - off) at the label.
   * Row 0's lse is 1000 (the other terms are below e^-1000); row 1's is
   * 1000 + log(1 + e^-1). */
  const double off = 0.1 / 3, on = 0.9 + off;
  const double row0 = 1000 - (off * 1000 + on * -1000 + off * 0);
  const double lse1 = 1000 + log1p(exp(-1.0));
  const double row1 = lse1 - (off * -1000 + off * 1000 + on * 999);
  CHECK_NEAR(L, row0 + row1, 1e-6 * (row0 + row1));
  for (int i = 0; i < 6; i++) CHECK(isfinite(dz[i]));
  CHECK_NEAR(dz[0], 1 - off, 1e-6);
  CHECK_NEAR(dz[1], -on, 1e-6);

  const float zb[4] = {1000, -1000, 1000, -1000};
  const float tb[4] = {0, 1, 1, 0};
  float db[4];
  const double Lb = nn_loss_bce(zb, tb, NULL, 1, 4, 1.0, db);
  CHECK_NEAR(Lb, 2000.0, 1e-9);
  CHECK_NEAR(db[0], 1.0, 1e-7);
  CHECK_NEAR(db[1], -1.0, 1e-7);
  CHECK_NEAR(db[2], 0.0, 1e-7);
  CHECK_NEAR(db[3], 0.0, 1e-7);
}

/* The data-parallel contract: rows [0,3) and [3,6) evaluated separately with
 * the global norm add up to the whole batch; per-row gradients are equal. */
static void test_split(void) {
  nn_rng r;
  nn_rng_seed(&r, 7);
  float z[B * K], t[B * K], w[B];
  fill_uniform(z, B * K, &r, -4, 4);
  fill_uniform(t, B * K, &r, 0, 1);
  fill_uniform(w, B, &r, 0.5, 1.5);
  const int32_t y[B] = {1, -1, 3, 0, 4, 2};
  const double norm = 5.0; /* labelled rows in the global batch */
  const int h = B / 2;
  float dfull[B * K], dsplit[B * K];

  double full = nn_loss_xent(z, y, w, B, K, 0.1f, -1, norm, dfull);
  double part = nn_loss_xent(z, y, w, h, K, 0.1f, -1, norm, dsplit) +
                nn_loss_xent(z + h * K, y + h, w + h, h, K, 0.1f, -1, norm, dsplit + h * K);
  CHECK_NEAR(part, full, 1e-12 * fabs(full));
  CHECK(memcmp(dfull, dsplit, sizeof dfull) == 0);

  full = nn_loss_bce(z, t, w, B, K, norm, dfull);
  part = nn_loss_bce(z, t, w, h, K, norm, dsplit) +
         nn_loss_bce(z + h * K, t + h * K, w + h, h, K, norm, dsplit + h * K);
  CHECK_NEAR(part, full, 1e-12 * fabs(full));
  CHECK(memcmp(dfull, dsplit, sizeof dfull) == 0);

  full = nn_loss_mse(z, t, w, B, K, norm, dfull);
  part = nn_loss_mse(z, t, w, h, K, norm, dsplit) +
         nn_loss_mse(z + h * K, t + h * K, w + h, h, K, norm, dsplit + h * K);
  CHECK_NEAR(part, full, 1e-12 * fabs(full));
  CHECK(memcmp(dfull, dsplit, sizeof dfull) == 0);
}

static void test_argmax(void) {
  const float z[3][4] = {{0, 3, -1, 2}, {5, 5, 1, 5}, {-3, -2, -9, -1}};
  int32_t out[3] = {-5, -5, -5};
  nn_argmax(&z[0][0], 3, 4, out);
  CHECK(out[0] == 1);
  CHECK(out[1] == 0); /* ties: lowest index */
  CHECK(out[2] == 3);
}

int main(void) {
  test_names();
  test_xent_by_hand();
  test_xent_ignore();
  test_bce_mse_by_hand();
  test_gradcheck();
  test_stability();
  test_split();
  test_argmax();
  return check_report();
}
