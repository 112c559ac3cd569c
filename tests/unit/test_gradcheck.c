/* Central-difference gradient checks for every layer op (nn/layer.h): the
 * input gradient and each parameter tensor's gradient, on small random
 * shapes, against L = sum_i r_i * y_i with fixed random r. Also checks that a
 * backward without dx gives the same parameter gradients. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layer_fixture.h"
#include "nn/err.h"
#include "nn/layer.h"
#include "nn/rng.h"

typedef enum {
  X_SMOOTH,   /* uniform in (-1, 1) */
  X_AWAY,     /* |x| in [0.2, 1]: no relu kink within eps */
  X_DISTINCT, /* a shuffled grid: no near-ties for maxpool */
  X_WIDE,     /* uniform in (-3, 3): the curved part of gelu/tanh/sigmoid */
} xgen;

static nn_rng rng;

static float urand(float lo, float hi) { return lo + (hi - lo) * (float)nn_rng_uniform(&rng); }

static void fill_x(float *x, size_t n, xgen g) {
  if (g == X_DISTINCT) {
    int32_t *perm = malloc(n * sizeof *perm);
    for (size_t i = 0; i < n; i++) perm[i] = (int32_t)i;
    nn_rng_shuffle(&rng, perm, (int64_t)n);
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * ((float)perm[i] + 0.5f) / (float)n - 1.0f;
    free(perm);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (g == X_AWAY) {
      float m = urand(0.2f, 1.0f);
      x[i] = nn_rng_uniform(&rng) < 0.5 ? -m : m;
    } else {
      x[i] = g == X_WIDE ? urand(-3.0f, 3.0f) : urand(-1.0f, 1.0f);
    }
  }
}

static double objective(fixture *f, const float *x, const float *r, const nn_pass *p) {
  nn_layer_forward(&f->L, x, p);
  size_t n = (size_t)p->B * nn_shape_numel(f->L.out);
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)r[i] * f->L.y[i];
  return s;
}

typedef struct {
  int B;
  xgen gen;
  float eps;
  double tol;
  int training;
  float dx_scale; /* expected dx = dx_scale * numeric (grl: -lambda); 0 = 1 */
  int kinks;      /* the op has internal relus: see compare() */
} gc_opts;

/* Central, forward and backward differences of the objective. */
typedef struct {
  double *c, *fw, *bw;
} diffs;

static diffs diffs_new(size_t n) {
  return (diffs){malloc((n + 1) * sizeof(double)), malloc((n + 1) * sizeof(double)),
                 malloc((n + 1) * sizeof(double))};
}

static void diffs_free(diffs *d) {
  free(d->c);
  free(d->fw);
  free(d->bw);
}

/* Differences w.r.t. v[i] for i in [0, n), v being x or a parameter. */
static void numeric(fixture *f, float *v, size_t n, const float *x, const float *r,
                    const nn_pass *p, float eps, diffs *d) {
  double l0 = objective(f, x, r, p);
  for (size_t i = 0; i < n; i++) {
    float save = v[i], up = save + eps, dn = save - eps;
    v[i] = up;
    double lp = objective(f, x, r, p);
    v[i] = dn;
    double lm = objective(f, x, r, p);
    v[i] = save;
    d->c[i] = (lp - lm) / ((double)up - (double)dn);
    d->fw[i] = (lp - l0) / ((double)up - (double)save);
    d->bw[i] = (l0 - lm) / ((double)save - (double)dn);
  }
}

/* Max-norm scaled error: max|num - ana| <= tol * max(max|num|, max|ana|),
 * num the central difference. With kinks allowed (ops with internal relus
 * whose inputs the test cannot keep away from 0), an element whose one-sided
 * differences disagree straddles a kink; there the analytic value may match
 * either one-sided difference instead. At most an eighth of the elements
 * may be such, and every one is reported. */
static void compare(const char *what, const char *label, const diffs *d, const float *ana,
                    size_t n, double tol, int kinks) {
  double err = 0.0, scale = 0.0;
  size_t at = 0, nkink = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs(d->c[i]) > scale) scale = fabs(d->c[i]);
    if (fabs(ana[i]) > scale) scale = fabs(ana[i]);
  }
  for (size_t i = 0; i < n; i++) {
    double e = fabs(d->c[i] - ana[i]);
    if (kinks && e > tol * scale && fabs(d->fw[i] - d->bw[i]) > tol * scale) {
      double ef = fabs(d->fw[i] - ana[i]), eb = fabs(d->bw[i] - ana[i]);
      e = ef < eb ? ef : eb;
      nkink++;
    }
    if (e > err) {
      err = e;
      at = i;
    }
  }
  CHECK_MSG(scale > 0.0, "%s %s: gradient is identically zero", label, what);
  CHECK_MSG(err <= tol * scale, "%s %s: max err %.3g (scale %.3g) at %zu: num %.6g ana %.6g",
            label, what, err, scale, at, n ? d->c[at] : 0.0, n ? (double)ana[at] : 0.0);
  CHECK_MSG(nkink <= 2 || nkink <= n / 8, "%s %s: %zu of %zu elements straddle a kink", label,
            what, nkink, n);
  if (nkink) fprintf(stderr, "  note: %s %s: %zu element(s) straddle a kink\n", label, what, nkink);
}

/* Smallest |input| of the relus inside a residual block for input x. */
static double residual_margin(fixture *f, const float *x, const nn_pass *p) {
  nn_layer_forward(&f->L, x, p);
  const nn_layer *L = &f->L;
  size_t n = (size_t)p->B * nn_shape_numel(L->out);
  double m = INFINITY;
  for (int i = 1; i < L->nbody; i++)
    if (L->sub[i].spec.op == NN_RELU)
      for (size_t j = 0; j < n; j++) m = fmin(m, fabs(L->sub[i - 1].y[j]));
  const float *sc = L->nsub > L->nbody ? L->sub[L->nsub - 1].y : x;
  for (size_t j = 0; j < n; j++) m = fmin(m, fabs((double)L->sub[L->nbody - 1].y[j] + sc[j]));
  return m;
}

/* Every parameter tensor of a layer (a residual: of each sub-layer). */
static void check_params(fixture *f, const nn_layer *l, const float *x, const float *r,
                         const nn_pass *p, const gc_opts *o, const float *ana_g,
                         const char *label) {
  if (l->spec.op == NN_RESIDUAL) {
    for (int i = 0; i < l->nsub; i++) check_params(f, &l->sub[i], x, r, p, o, ana_g, label);
    return;
  }
  const size_t len[2] = {l->w_len, l->b_len};
  const size_t off[2] = {l->p_off, l->p_off + l->w_len};
  for (int t = 0; t < 2; t++) {
    if (!len[t]) continue;
    diffs d = diffs_new(len[t]);
    numeric(f, f->params + off[t], len[t], x, r, p, o->eps, &d);
    char what[96];
    snprintf(what, sizeof what, "d%s.%s", l->spec.name, t ? "b" : "W");
    compare(what, label, &d, ana_g + off[t], len[t], o->tol, o->kinks);
    diffs_free(&d);
  }
}

static void gradcheck(const char *label, nn_layer_spec spec, nn_shape in, int spatial, gc_opts o) {
  fixture f;
  if (fx_make(&f, &spec, in, spatial, o.B, 1234, &rng, 0.3f) != 0) {
    CHECK_MSG(0, "%s: setup of '%s' failed: %s", label, spec.name, ferry_err_msg());
    ferry_err_clear();
    return;
  }
  const int64_t ids[4] = {1000, 7, 123456789, 42};
  nn_pass p = {.B = o.B, .training = o.training, .key = 99, .ids = o.B <= 4 ? ids : NULL};
  size_t nin = (size_t)o.B * nn_shape_numel(f.L.in), nout = (size_t)o.B * nn_shape_numel(f.L.out);
  float *x = malloc(nin * sizeof *x), *r = malloc(nout * sizeof *r);
  float *dx = malloc(nin * sizeof *dx), *ana_g = malloc((f.np + 1) * sizeof *ana_g);
  diffs num = diffs_new(nin);
  fill_x(x, nin, o.gen);
  if (o.kinks) { /* keep the best of a few inputs: fewer relu inputs near 0 */
    float *cand = malloc(nin * sizeof *cand);
    double best = residual_margin(&f, x, &p);
    for (int t = 0; t < 30; t++) {
      fill_x(cand, nin, o.gen);
      double m = residual_margin(&f, cand, &p);
      if (m > best) {
        best = m;
        memcpy(x, cand, nin * sizeof *x);
      }
    }
    free(cand);
  }
  for (size_t i = 0; i < nout; i++) r[i] = urand(-1.0f, 1.0f);

  nn_layer_forward(&f.L, x, &p);
  memset(f.grads, 0, f.np * sizeof *f.grads);
  nn_layer_backward(&f.L, x, r, dx, &p);
  memcpy(ana_g, f.grads, f.np * sizeof *ana_g);

  /* dx == NULL: same parameter gradients, nothing else written */
  memset(f.grads, 0, f.np * sizeof *f.grads);
  nn_layer_backward(&f.L, x, r, NULL, &p);
  CHECK_MSG(f.np == 0 || memcmp(ana_g, f.grads, f.np * sizeof *ana_g) == 0,
            "%s: parameter gradients differ when dx is NULL", label);

  numeric(&f, x, nin, x, r, &p, o.eps, &num);
  if (o.dx_scale != 0.0f)
    for (size_t i = 0; i < nin; i++) {
      num.c[i] *= o.dx_scale;
      num.fw[i] *= o.dx_scale;
      num.bw[i] *= o.dx_scale;
    }
  compare("dx", label, &num, dx, nin, o.tol, o.kinks);
  check_params(&f, &f.L, x, r, &p, &o, ana_g, label);

  free(x);
  free(r);
  free(dx);
  free(ana_g);
  diffs_free(&num);
  fx_free(&f);
}

static nn_layer_spec mk(nn_op op, const char *name) {
  nn_layer_spec s = {.op = op};
  snprintf(s.name, sizeof s.name, "%s", name);
  return s;
}

static nn_layer_spec mk_conv(const char *name, int out, int k, int stride, int pad, int no_bias) {
  nn_layer_spec s = mk(NN_CONV2D, name);
  s.out = out;
  s.k = k;
  s.stride = stride;
  s.pad = pad;
  s.no_bias = no_bias;
  return s;
}

static nn_layer_spec mk_pool(nn_op op, const char *name, int k, int stride) {
  nn_layer_spec s = mk(op, name);
  s.k = k;
  s.stride = stride;
  return s;
}


int main(void) {
  nn_rng_seed(&rng, 20240611);
  /* Central differences in float with these eps are good to ~1e-4 of the
   * gradient's max-norm; the tolerance leaves a margin of ~10. */
  const gc_opts smooth = {.B = 3, .gen = X_SMOOTH, .eps = 1e-2f, .tol = 2e-3};
  const gc_opts wide = {.B = 3, .gen = X_WIDE, .eps = 1e-2f, .tol = 2e-3};
  const gc_opts away = {.B = 3, .gen = X_AWAY, .eps = 1e-2f, .tol = 2e-3};
  const gc_opts distinct = {.B = 3, .gen = X_DISTINCT, .eps = 1e-3f, .tol = 2e-3};

  nn_layer_spec s = mk(NN_DENSE, "dense");
  s.out = 5;
  gradcheck("dense 7->5", s, sh(7, 1, 1), 0, smooth);
  s.no_bias = 1;
  gradcheck("dense 7->4 no bias", s, sh(7, 1, 1), 0, smooth);

  gradcheck("conv k3 s1 p1", mk_conv("conv", 3, 3, 1, 1, 0), sh(2, 5, 5), 1, smooth);
  gradcheck("conv k3 p1 9x10 (rows > 8)", mk_conv("conv", 2, 3, 1, 1, 0), sh(2, 9, 10), 1, smooth);
  gradcheck("conv k3 s2 p1 5x6", mk_conv("conv", 3, 3, 2, 1, 0), sh(2, 5, 6), 1, smooth);
  gradcheck("conv k5 p2 6x5", mk_conv("conv", 2, 5, 0, 2, 0), sh(3, 6, 5), 1, smooth);
  gradcheck("conv k3 p0 4x6", mk_conv("conv", 2, 3, 1, 0, 0), sh(2, 4, 6), 1, smooth);
  gradcheck("conv k2 s2 no bias", mk_conv("conv", 3, 2, 2, 0, 1), sh(2, 5, 5), 1, smooth);
  gradcheck("conv k3 s3 p2", mk_conv("conv", 2, 3, 3, 2, 0), sh(2, 7, 5), 1, smooth);
  gradcheck("conv 1x1 (pointwise)", mk_conv("conv", 3, 1, 1, 0, 0), sh(2, 4, 3), 1, smooth);
  gradcheck("conv 1x1 s2", mk_conv("conv", 3, 1, 2, 0, 1), sh(2, 5, 4), 1, smooth);
  gradcheck("conv c1 k5 p2", mk_conv("conv", 2, 5, 1, 2, 0), sh(1, 6, 6), 1, smooth);

  gradcheck("maxpool k2 (odd 5x5)", mk_pool(NN_MAXPOOL2D, "mp", 2, 0), sh(2, 5, 5), 1, distinct);
  gradcheck("maxpool k2 6x4", mk_pool(NN_MAXPOOL2D, "mp", 2, 2), sh(2, 6, 4), 1, distinct);
  gradcheck("maxpool k3 s2 (overlap)", mk_pool(NN_MAXPOOL2D, "mp", 3, 2), sh(2, 5, 6), 1, distinct);
  gradcheck("maxpool k2 s1 (overlap)", mk_pool(NN_MAXPOOL2D, "mp", 2, 1), sh(2, 4, 5), 1, distinct);
  gradcheck("avgpool k2", mk_pool(NN_AVGPOOL2D, "ap", 2, 0), sh(2, 5, 5), 1, smooth);
  gradcheck("avgpool k3 s2 5x6", mk_pool(NN_AVGPOOL2D, "ap", 3, 2), sh(2, 5, 6), 1, smooth);
  gradcheck("gap", mk(NN_GAP, "gap"), sh(3, 4, 5), 1, smooth);

  gradcheck("relu spatial", mk(NN_RELU, "relu"), sh(2, 3, 4), 1, away);
  gradcheck("relu flat", mk(NN_RELU, "relu"), sh(9, 1, 1), 0, away);
  gradcheck("gelu", mk(NN_GELU, "gelu"), sh(2, 3, 4), 1, wide);
  gradcheck("tanh", mk(NN_TANH, "tanh"), sh(9, 1, 1), 0, wide);
  gradcheck("sigmoid", mk(NN_SIGMOID, "sigmoid"), sh(2, 3, 3), 1, wide);
  s = mk(NN_GRL, "grl");
  s.lambda = 0.7f;
  gc_opts grl = smooth;
  grl.dx_scale = -0.7f; /* the forward is the identity; backward reverses and scales */
  gradcheck("grl lambda 0.7", s, sh(2, 3, 3), 1, grl);

  s = mk(NN_DROPOUT, "drop");
  s.p = 0.3f;
  gc_opts train = smooth;
  train.training = 1;
  gradcheck("dropout flat (training)", s, sh(11, 1, 1), 0, train);
  gradcheck("dropout spatial (training)", s, sh(2, 3, 4), 1, train);
  gradcheck("dropout (eval)", s, sh(2, 3, 4), 1, smooth);

  gradcheck("flatten", mk(NN_FLATTEN, "flat"), sh(3, 4, 5), 1, smooth);
  gradcheck("flatten c1", mk(NN_FLATTEN, "flat"), sh(1, 4, 5), 1, smooth);
  gradcheck("flatten flat", mk(NN_FLATTEN, "flat"), sh(6, 1, 1), 0, smooth);

  /* normalisation is strongly curved over few elements: smaller eps */
  const gc_opts norm = {.B = 3, .gen = X_SMOOTH, .eps = 1e-3f, .tol = 2e-3};
  s = mk(NN_GROUPNORM, "gn");
  s.groups = 2;
  gradcheck("groupnorm spatial g2", s, sh(4, 3, 5), 1, norm);
  s.groups = 1;
  gradcheck("groupnorm spatial g1 (layernorm)", s, sh(3, 4, 3), 1, norm);
  s.groups = 3;
  gradcheck("groupnorm flat g3", s, sh(12, 1, 1), 0, norm);
  s.groups = 0;
  gradcheck("groupnorm flat default groups (8 of 3)", s, sh(24, 1, 1), 0, norm);
  gradcheck("groupnorm spatial default groups (12 -> 6)", s, sh(12, 2, 3), 1, norm);

  const gc_opts res = {.B = 3, .gen = X_SMOOTH, .eps = 1e-3f, .tol = 5e-3, .kinks = 1};
  s = mk(NN_RESIDUAL, "res");
  s.out = 4;
  gradcheck("residual identity shortcut", s, sh(4, 5, 5), 1, res);
  s.out = 4;
  s.stride = 2;
  gradcheck("residual projection c2->4 s2", s, sh(2, 5, 6), 1, res);
  s.out = 3;
  s.stride = 2;
  s.groups = 1;
  gradcheck("residual projection s2 (same c)", s, sh(3, 6, 5), 1, res);
  s.out = 6;
  s.stride = 1;
  s.groups = 3;
  gradcheck("residual projection c4->6 s1", s, sh(4, 4, 4), 1, res);

  return check_report();
}
