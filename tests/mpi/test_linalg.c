/* ScaLAPACK linear probe and CORAL (dist/linalg.h) against serial LAPACK on
 * the same global data: the features are a function of (seed, global row), so
 * the system is the same whatever the rank count, and the rows are spread
 * unevenly (weights 3:1:0:2, so at 3 and 4 ranks one rank holds none).
 * Also: λ selection, the d > rows case, a singular system and bad input
 * (an error on every rank, no crash, no hang), and two sub-communicators
 * solving different problems at the same time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "dist/comm.h"
#include "dist/linalg.h"
#include "mpi_report.h"
#include "nn/err.h"
#include "nn/rng.h"
#include "../unit/check.h"

/* Serial LAPACK (Fortran; hidden lengths of the character arguments last). */
void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda,
            double *b, const int *ldb, int *info, size_t uplo_len);
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork,
             int *info, size_t jobz_len, size_t uplo_len);

static const double RIDGE_TOL = 1e-4; /* the acceptance bound */
static const double CORAL_TOL = 1e-8;

/* Largest relative errors seen on this rank, reported at the end. */
static double err_ridge, err_coral_a, err_coral_cov, err_coral_apply;

static void note(double *worst, double e) {
  if (!(e <= *worst)) *worst = e; /* NaN sticks */
}

/* ---- global data, the same on every rank ------------------------------- */

typedef struct {
  int n, d, nc;
  float *x;   /* [n][d] */
  int32_t *y; /* [n] */
} gdata;

/* Correlated columns with offsets, labels from a planted linear model plus
 * noise (noise 0: labels are exactly the model's argmax). */
static void make_data(gdata *g, int n, int d, int nc, uint64_t seed, double noise) {
  g->n = n;
  g->d = d;
  g->nc = nc;
  g->x = malloc((size_t)n * (size_t)d * sizeof *g->x + 1);
  g->y = malloc((size_t)n * sizeof *g->y + 1);
  uint64_t kx = nn_key(seed, 1), kw = nn_key(seed, 2), kn = nn_key(seed, 3);
  for (int i = 0; i < n; i++) {
    float *row = g->x + (size_t)i * (size_t)d;
    float common = nn_normal_at(kx, (uint64_t)i * 1000003u);
    for (int j = 0; j < d; j++)
      row[j] = (0.5f + (float)(j % 5)) * nn_normal_at(kx, (uint64_t)i * (uint64_t)d + j + 1) +
               0.7f * common + (float)(j % 3) - 1.0f;
    int best = 0;
    double bs = -INFINITY;
    for (int c = 0; c < nc; c++) {
      double s = noise * nn_normal_at(kn, (uint64_t)i * (uint64_t)nc + c);
      for (int j = 0; j < d; j++) s += row[j] * nn_normal_at(kw, (uint64_t)j * nc + c);
      if (s > bs) {
        bs = s;
        best = c;
      }
    }
    g->y[i] = best;
  }
}

static void free_data(gdata *g) {
  free(g->x);
  free(g->y);
}

/* This rank's rows [lo, hi): weights 3,1,0,2 repeating over ranks. */
static void my_rows(const dist_comm *c, int n, int *lo, int *hi) {
  static const int wt[4] = {3, 1, 0, 2};
  long tot = 0, before = 0;
  for (int r = 0; r < c->size; r++) {
    if (r == c->rank) before = tot;
    tot += wt[r % 4];
  }
  *lo = (int)((long)n * before / tot);
  *hi = (int)((long)n * (before + wt[c->rank % 4]) / tot);
}

/* ---- serial references --------------------------------------------------- */

/* Column-major (d+1)×(d+1) G and (d+1)×nc B of [X 1]. */
static void serial_gram(const gdata *g, double *G, double *B) {
  int n1 = g->d + 1;
  memset(G, 0, (size_t)n1 * n1 * sizeof *G);
  memset(B, 0, (size_t)n1 * g->nc * sizeof *B);
  double *z = malloc((size_t)n1 * sizeof *z);
  for (int i = 0; i < g->n; i++) {
    for (int j = 0; j < g->d; j++) z[j] = g->x[(size_t)i * g->d + j];
    z[g->d] = 1.0;
    for (int k = 0; k < n1; k++) {
      for (int j = 0; j < n1; j++) G[(size_t)k * n1 + j] += z[j] * z[k];
      B[(size_t)g->y[i] * n1 + k] += z[k];
    }
  }
  free(z);
}

/* w row-major [(d+1)][nc]; returns dposv's info. */
static int serial_solve(const gdata *g, const double *G, const double *B, double lambda,
                        double *w) {
  int n1 = g->d + 1, info = 0;
  double *A = malloc((size_t)n1 * n1 * sizeof *A), *X = malloc((size_t)n1 * g->nc * sizeof *X);
  memcpy(A, G, (size_t)n1 * n1 * sizeof *A);
  memcpy(X, B, (size_t)n1 * g->nc * sizeof *X);
  for (int j = 0; j < g->d; j++) A[(size_t)j * n1 + j] += lambda;
  dposv_("L", &n1, &g->nc, A, &n1, X, &n1, &info, 1);
  for (int j = 0; j < n1; j++)
    for (int c = 0; c < g->nc; c++) w[(size_t)j * g->nc + c] = X[(size_t)c * n1 + j];
  free(A);
  free(X);
  return info;
}

static double rel_err(const double *a, const double *ref, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return sqrt(num) / (den > 0.0 ? sqrt(den) : 1.0);
}

/* Correct argmax predictions of rows [lo, hi) under w (written here, not
 * dist_ridge_predict, so a bug there cannot hide). */
static int count_correct(const gdata *g, const double *w, int lo, int hi) {
  int ok = 0;
  for (int i = lo; i < hi; i++) {
    int best = 0;
    double bs = -INFINITY;
    for (int c = 0; c < g->nc; c++) {
      double s = w[(size_t)g->d * g->nc + c];
      for (int j = 0; j < g->d; j++) s += g->x[(size_t)i * g->d + j] * w[(size_t)j * g->nc + c];
      if (s > bs) {
        bs = s;
        best = c;
      }
    }
    ok += best == g->y[i];
  }
  return ok;
}

/* ---- ridge ------------------------------------------------------------------ */

/* Solves at each λ and compares with serial dposv on group rank 0. */
static void check_ridge_vs_serial(const dist_comm *c, dist_ridge *r, const gdata *g,
                                  const double *lambdas, int nl, const char *what) {
  int n1 = g->d + 1;
  size_t wn = (size_t)n1 * g->nc;
  double *w = malloc(wn * sizeof *w), *wref = malloc(wn * sizeof *wref);
  double *G = malloc((size_t)n1 * n1 * sizeof *G), *B = malloc(wn * sizeof *B);
  if (c->rank == 0) serial_gram(g, G, B);
  for (int i = 0; i < nl; i++) {
    int rc = dist_ridge_solve(r, lambdas[i], w);
    CHECK_MSG(rc == 0, "%s λ=%g: %s", what, lambdas[i], ferry_err_msg());
    if (rc != 0) {
      ferry_err_clear();
      continue;
    }
    /* Replicated: every rank holds the same bits. */
    uint64_t h = nn_hash_bytes(w, wn * sizeof *w);
    int same = 0;
    CHECK(dist_same_u64(c, h, &same) == 0 && same);
    if (c->rank == 0) {
      CHECK(serial_solve(g, G, B, lambdas[i], wref) == 0);
      double e = rel_err(w, wref, wn);
      note(&err_ridge, e);
      CHECK_MSG(e <= RIDGE_TOL, "%s λ=%g: relative error %.3g vs serial dposv", what,
                lambdas[i], e);
    }
  }
  free(w);
  free(wref);
  free(G);
  free(B);
}

static void test_ridge_basic(const dist_comm *c, dist_linalg *la, uint64_t seed) {
  gdata g;
  make_data(&g, 5000, 40, 6, seed, 1.0); /* 5000 rows: two panels on one rank */
  int lo, hi;
  my_rows(c, g.n, &lo, &hi);
  const float *x = g.x + (size_t)lo * g.d;
  const int32_t *y = g.y + lo;

  dist_ridge *r = NULL;
  CHECK(dist_ridge_new(&r, la, g.d, g.nc) == 0);
  CHECK(dist_ridge_add(r, x, y, hi - lo) == 0);
  CHECK(dist_ridge_rows(r) == g.n);
  const double lambdas[] = {0.0, 1e-3, 1.0, 100.0, 1e5};
  check_ridge_vs_serial(c, r, &g, lambdas, 5, "one add");

  /* The same rows in three calls of different sizes (one empty on every
   * rank): the same system. */
  dist_ridge *r2 = NULL;
  CHECK(dist_ridge_new(&r2, la, g.d, g.nc) == 0);
  int mid = (hi - lo) / 3;
  CHECK(dist_ridge_add(r2, x, y, mid) == 0);
  CHECK(dist_ridge_add(r2, NULL, NULL, 0) == 0);
  CHECK(dist_ridge_add(r2, x + (size_t)mid * g.d, y + mid, hi - lo - mid) == 0);
  CHECK(dist_ridge_rows(r2) == g.n);
  check_ridge_vs_serial(c, r2, &g, lambdas + 2, 1, "three adds");

  double dm = 0.0;
  CHECK(dist_ridge_diag_mean(r, &dm) == 0);
  if (c->rank == 0) {
    double s = 0.0;
    for (size_t i = 0; i < (size_t)g.n * g.d; i++) s += (double)g.x[i] * g.x[i];
    CHECK_NEAR(dm, s / g.d, 1e-9 * s / g.d);
  }
  dist_ridge_free(&r2);
  dist_ridge_free(&r);
  CHECK(r == NULL);
  free_data(&g);
}

/* More features than rows: solvable with λ > 0 only. */
static void test_ridge_wide(const dist_comm *c, dist_linalg *la) {
  gdata g;
  make_data(&g, 30, 50, 3, 77, 0.5);
  int lo, hi;
  my_rows(c, g.n, &lo, &hi);
  dist_ridge *r = NULL;
  CHECK(dist_ridge_new(&r, la, g.d, g.nc) == 0);
  CHECK(dist_ridge_add(r, g.x + (size_t)lo * g.d, g.y + lo, hi - lo) == 0);
  const double lambdas[] = {0.5, 10.0};
  check_ridge_vs_serial(c, r, &g, lambdas, 2, "d > rows");
  dist_ridge_free(&r);
  free_data(&g);
}

/* A zero feature column makes G singular exactly; λ = 0 must fail on every
 * rank with a clear message, and the probe stays usable. Bad input on one
 * rank fails every rank, adding nothing. */
static void test_ridge_errors(const dist_comm *c, dist_linalg *la) {
  gdata g;
  make_data(&g, 200, 10, 4, 5, 0.5);
  for (int i = 0; i < g.n; i++) g.x[(size_t)i * g.d + 3] = 0.0f;
  int lo, hi;
  my_rows(c, g.n, &lo, &hi);
  dist_ridge *r = NULL;
  CHECK(dist_ridge_new(&r, la, g.d, g.nc) == 0);
  CHECK(dist_ridge_add(r, g.x + (size_t)lo * g.d, g.y + lo, hi - lo) == 0);
  double *w = calloc((size_t)(g.d + 1) * g.nc, sizeof *w);

  CHECK(dist_ridge_solve(r, 0.0, w) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), "not positive definite") != NULL, "%s", ferry_err_msg());
  CHECK_MSG(strstr(ferry_err_msg(), "minor 4 of 11") != NULL, "%s", ferry_err_msg());
  ferry_err_clear();
  CHECK(dist_ridge_solve(r, -1.0, w) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "λ >= 0") != NULL);
  ferry_err_clear();
  CHECK(dist_ridge_solve(r, NAN, w) == FERRY_EUSER);
  ferry_err_clear();
  const double lambdas[] = {1.0};
  check_ridge_vs_serial(c, r, &g, lambdas, 1, "zero column, λ=1");

  /* Selection skips the singular λ. */
  double best = -1.0, acc[3];
  const double grid[] = {0.0, 1.0, 10.0};
  CHECK(dist_ridge_select(r, grid, 3, g.x + (size_t)lo * g.d, g.y + lo, hi - lo, &best, w,
                          acc) == 0);
  CHECK(isnan(acc[0]) && acc[1] > 0.2 && acc[2] > 0.2);
  CHECK(best == 1.0 || best == 10.0);
  CHECK(dist_ridge_select(r, grid, 1, g.x + (size_t)lo * g.d, g.y + lo, hi - lo, &best, w,
                          acc) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "no λ") != NULL);
  ferry_err_clear();

  /* A label out of range on rank 0, a NaN feature on rank 0: every rank fails, nothing
   * is added. */
  int64_t rows = dist_ridge_rows(r);
  /* Rank 0 always holds rows (weight 3); rank 2 of 3 holds none, so only
   * rank 0 touches its first row. */
  int32_t saved = g.y[0];
  if (c->rank == 0) g.y[0] = g.nc;
  CHECK(dist_ridge_add(r, g.x + (size_t)lo * g.d, g.y + lo, hi - lo) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), c->rank == 0 ? "has label 4" : "rank 0") != NULL, "%s",
            ferry_err_msg());
  ferry_err_clear();
  g.y[0] = saved;
  if (c->rank == 0) g.x[2] = NAN;
  CHECK(dist_ridge_add(r, g.x + (size_t)lo * g.d, g.y + lo, hi - lo) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), c->rank == 0 ? "finite" : "rank 0") != NULL, "%s",
            ferry_err_msg());
  ferry_err_clear();
  CHECK(dist_ridge_rows(r) == rows);
  dist_ridge_free(&r);

  dist_ridge *r0 = NULL;
  CHECK(dist_ridge_new(&r0, la, 0, 3) == FERRY_EUSER);
  ferry_err_clear();
  CHECK(r0 == NULL);
  CHECK(dist_ridge_new(&r0, la, 5, 3) == 0);
  CHECK(dist_ridge_solve(r0, 1.0, w) == FERRY_EUSER); /* no rows yet */
  CHECK(strstr(ferry_err_msg(), "no rows") != NULL);
  ferry_err_clear();
  dist_ridge_free(&r0);
  free(w);
  free_data(&g);
}

/* λ selection against the same rule computed serially on rank 0. */
static void check_select(const dist_comm *c, dist_linalg *la, int ntr, int nva, int d, int nc,
                         double noise, uint64_t seed) {
  gdata g;
  make_data(&g, ntr + nva, d, nc, seed, noise);
  gdata tr = g, va = g;
  tr.n = ntr;
  va.x = g.x + (size_t)ntr * d;
  va.y = g.y + ntr;
  va.n = nva;
  int lo, hi, vlo, vhi;
  my_rows(c, ntr, &lo, &hi);
  my_rows(c, nva, &vlo, &vhi);
  dist_ridge *r = NULL;
  CHECK(dist_ridge_new(&r, la, d, nc) == 0);
  CHECK(dist_ridge_add(r, tr.x + (size_t)lo * d, tr.y + lo, hi - lo) == 0);
  enum { NL = 9 };
  const double lambdas[NL] = {1e-6, 1e-5, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8};
  double best = -1.0, acc[NL];
  size_t wn = (size_t)(d + 1) * nc;
  double *w = malloc(wn * sizeof *w), *wref = malloc(wn * sizeof *wref);
  int rc = dist_ridge_select(r, lambdas, NL, va.x + (size_t)vlo * d, va.y + vlo, vhi - vlo,
                             &best, w, acc);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  if (c->rank == 0 && rc == 0) {
    int n1 = d + 1;
    double *G = malloc((size_t)n1 * n1 * sizeof *G), *B = malloc(wn * sizeof *B);
    serial_gram(&tr, G, B);
    int bi = -1, bc = -1, ties = 0;
    for (int i = 0; i < NL; i++) {
      CHECK(serial_solve(&tr, G, B, lambdas[i], wref) == 0);
      int ok = count_correct(&va, wref, 0, nva);
      CHECK_MSG(acc[i] == (double)ok / nva, "λ=%g: accuracy %.6f, serial %.6f", lambdas[i],
                acc[i], (double)ok / nva);
      if (ok == bc) ties++;
      if (ok >= bc) { /* ascending λ: ties go to the larger */
        if (ok > bc) ties = 0;
        bc = ok;
        bi = i;
      }
    }
    CHECK_MSG(best == lambdas[bi], "picked λ=%g, serial picks %g", best, lambdas[bi]);
    CHECK(serial_solve(&tr, G, B, lambdas[bi], wref) == 0);
    note(&err_ridge, rel_err(w, wref, wn));
    CHECK(rel_err(w, wref, wn) <= RIDGE_TOL);
    if (noise == 0.0) CHECK_MSG(ties > 0, "expected tied accuracies in the noiseless case");
    free(G);
    free(B);
  }
  double b0 = best;
  CHECK(dist_bcast(c, &b0, sizeof b0, 0) == 0 && b0 == best);
  free(w);
  free(wref);
  dist_ridge_free(&r);
  free_data(&g);
}

/* ---- CORAL ------------------------------------------------------------------- */

/* x = z M + mu with z standard normal: a full, non-diagonal covariance. */
static float *make_domain(int n, int d, uint64_t seed, float scale) {
  float *x = malloc((size_t)n * d * sizeof *x + 1);
  double *m = malloc((size_t)d * d * sizeof *m), *z = malloc((size_t)d * sizeof *z);
  uint64_t km = nn_key(seed, 10), kz = nn_key(seed, 11);
  for (int j = 0; j < d; j++)
    for (int k = 0; k < d; k++)
      m[(size_t)j * d + k] = (j == k ? 1.0 : 0.0) + 0.3 * nn_normal_at(km, (uint64_t)j * d + k);
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < d; j++) z[j] = nn_normal_at(kz, (uint64_t)i * d + j);
    for (int k = 0; k < d; k++) {
      double s = scale * (1.0 + 0.1 * (k % 7)); /* the mean */
      for (int j = 0; j < d; j++) s += scale * z[j] * m[(size_t)j * d + k];
      x[(size_t)i * d + k] = (float)s;
    }
  }
  free(m);
  free(z);
  return x;
}

/* Mean [d] and covariance (divisor n−1, row-major [d][d]) in double. */
static void serial_moments(const double *x, int n, int d, double *mu, double *cov) {
  for (int j = 0; j < d; j++) {
    mu[j] = 0.0;
    for (int i = 0; i < n; i++) mu[j] += x[(size_t)i * d + j];
    mu[j] /= n;
  }
  for (int j = 0; j < d; j++)
    for (int k = 0; k < d; k++) {
      double s = 0.0;
      for (int i = 0; i < n; i++)
        s += (x[(size_t)i * d + j] - mu[j]) * (x[(size_t)i * d + k] - mu[k]);
      cov[(size_t)j * d + k] = s / (n - 1);
    }
}

/* out = V diag(f(λ)) Vᵀ of the symmetric s (row-major), serially. */
static void serial_spectral(const double *s, int d, int inv_sqrt, double *out) {
  double *a = malloc((size_t)d * d * sizeof *a), *w = malloc((size_t)d * sizeof *w);
  memcpy(a, s, (size_t)d * d * sizeof *a);
  int lwork = -1, liwork = -1, info = 0, iq = 0;
  double wq = 0.0;
  dsyevd_("V", "L", &d, a, &d, w, &wq, &lwork, &iq, &liwork, &info, 1, 1);
  lwork = (int)wq;
  liwork = iq;
  double *work = malloc((size_t)lwork * sizeof *work);
  int *iwork = malloc((size_t)liwork * sizeof *iwork);
  dsyevd_("V", "L", &d, a, &d, w, work, &lwork, iwork, &liwork, &info, 1, 1);
  CHECK(info == 0);
  /* Column-major eigenvectors: a[k*d + j] = V_jk; symmetric input, so
   * row/column order of s does not matter. */
  for (int i = 0; i < d; i++)
    for (int j = 0; j < d; j++) {
      double t = 0.0;
      for (int k = 0; k < d; k++) {
        double f = inv_sqrt ? 1.0 / sqrt(w[k]) : sqrt(w[k] > 0 ? w[k] : 0);
        t += a[(size_t)k * d + i] * f * a[(size_t)k * d + j];
      }
      out[(size_t)i * d + j] = t;
    }
  free(a);
  free(w);
  free(work);
  free(iwork);
}

static void matmul(const double *a, const double *b, int d, double *out) {
  for (int i = 0; i < d; i++)
    for (int j = 0; j < d; j++) {
      double s = 0.0;
      for (int k = 0; k < d; k++) s += a[(size_t)i * d + k] * b[(size_t)k * d + j];
      out[(size_t)i * d + j] = s;
    }
}

static void check_coral(const dist_comm *c, dist_linalg *la, int ns, int nt, int d, double eps,
                        uint64_t seed) {
  float *xs = make_domain(ns, d, seed, 1.0f), *xt = make_domain(nt, d, seed + 1, 2.5f);
  int slo, shi, tlo, thi;
  my_rows(c, ns, &slo, &shi);
  my_rows(c, nt, &tlo, &thi);
  dist_coral *cr = NULL;
  int rc = dist_coral_fit(&cr, la, d, xs + (size_t)slo * d, shi - slo, xt + (size_t)tlo * d,
                          thi - tlo, eps);
  CHECK_MSG(rc == 0, "CORAL d=%d eps=%g: %s", d, eps, ferry_err_msg());
  if (rc != 0) {
    ferry_err_clear();
    free(xs);
    free(xt);
    return;
  }
  size_t dd = (size_t)d * d;
  int same = 0;
  CHECK(dist_same_u64(c, nn_hash_bytes(cr->a, dd * sizeof(double)), &same) == 0 && same);

  /* The float apply on local rows agrees with the double formula. */
  float *ys = malloc((size_t)(shi - slo) * d * sizeof *ys + 1);
  CHECK(dist_coral_apply(cr, xs + (size_t)slo * d, shi - slo, ys) == 0);
  for (int i = slo; i < shi; i++)
    for (int k = 0; k < d; k++) {
      double s = cr->mu_t[k];
      for (int j = 0; j < d; j++)
        s += ((double)xs[(size_t)i * d + j] - cr->mu_s[j]) * cr->a[(size_t)j * d + k];
      double e = fabs(ys[(size_t)(i - slo) * d + k] - s) / (fabs(s) + 1.0);
      note(&err_coral_apply, e);
      if (e > 1e-5) {
        CHECK_MSG(e <= 1e-5, "apply row %d col %d: %g vs %g", i, k, ys[(size_t)(i - slo) * d + k], s);
        i = shi;
        break;
      }
    }
  free(ys);

  if (c->rank == 0) {
    double *ds = malloc((size_t)ns * d * sizeof *ds), *dt = malloc((size_t)nt * d * sizeof *dt);
    for (size_t i = 0; i < (size_t)ns * d; i++) ds[i] = xs[i];
    for (size_t i = 0; i < (size_t)nt * d; i++) dt[i] = xt[i];
    double *mus = malloc((size_t)d * sizeof *mus), *mut = malloc((size_t)d * sizeof *mut);
    double *cs = malloc(dd * sizeof *cs), *ct = malloc(dd * sizeof *ct);
    double *p = malloc(dd * sizeof *p), *q = malloc(dd * sizeof *q), *aref = malloc(dd * sizeof *aref);
    serial_moments(ds, ns, d, mus, cs);
    serial_moments(dt, nt, d, mut, ct);
    CHECK(rel_err(cr->mu_s, mus, (size_t)d) <= 1e-12);
    CHECK(rel_err(cr->mu_t, mut, (size_t)d) <= 1e-12);
    for (int j = 0; j < d; j++) {
      cs[(size_t)j * d + j] += eps;
      ct[(size_t)j * d + j] += eps;
    }
    /* A against a serial eigen-based computation. */
    serial_spectral(cs, d, 1, p);
    serial_spectral(ct, d, 0, q);
    matmul(p, q, d, aref);
    double ea = rel_err(cr->a, aref, dd);
    note(&err_coral_a, ea);
    CHECK_MSG(ea <= CORAL_TOL, "CORAL d=%d eps=%g: A relative error %.3g vs serial", d, eps, ea);

    /* Aligned source in double: its mean is mu_t and
     * cov + eps·AᵀA = cov(X_t) + eps·I (= C_t), i.e. equal covariances at eps = 0. */
    for (int i = 0; i < ns; i++) {
      double *row = ds + (size_t)i * d;
      for (int k = 0; k < d; k++) {
        double s = cr->mu_t[k];
        for (int j = 0; j < d; j++) s += ((double)xs[(size_t)i * d + j] - cr->mu_s[j]) * cr->a[(size_t)j * d + k];
        row[k] = s;
      }
    }
    double *mua = malloc((size_t)d * sizeof *mua), *ca = malloc(dd * sizeof *ca);
    serial_moments(ds, ns, d, mua, ca);
    CHECK(rel_err(mua, mut, (size_t)d) <= 1e-10);
    for (int j = 0; j < d; j++)
      for (int k = 0; k < d; k++) {
        double s = 0.0;
        for (int i = 0; i < d; i++) s += cr->a[(size_t)i * d + j] * cr->a[(size_t)i * d + k];
        ca[(size_t)j * d + k] += eps * s;
      }
    double ec = rel_err(ca, ct, dd);
    note(&err_coral_cov, ec);
    CHECK_MSG(ec <= CORAL_TOL, "CORAL d=%d eps=%g: aligned covariance relative error %.3g", d,
              eps, ec);
    free(ds);
    free(dt);
    free(mus);
    free(mut);
    free(cs);
    free(ct);
    free(p);
    free(q);
    free(aref);
    free(mua);
    free(ca);
  }
  dist_coral_free(&cr);
  CHECK(cr == NULL);
  free(xs);
  free(xt);
}

static void test_coral_errors(const dist_comm *c, dist_linalg *la) {
  int d = 20, ns = 10, nt = 50;
  float *xs = make_domain(ns, d, 3, 1.0f), *xt = make_domain(nt, d, 4, 1.0f);
  int slo, shi, tlo, thi;
  my_rows(c, ns, &slo, &shi);
  my_rows(c, nt, &tlo, &thi);
  dist_coral *cr = NULL;
  /* 10 source rows in 20 dimensions: singular without regularisation. */
  CHECK(dist_coral_fit(&cr, la, d, xs + (size_t)slo * d, shi - slo, xt + (size_t)tlo * d,
                       thi - tlo, 0.0) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), "singular") != NULL, "%s", ferry_err_msg());
  ferry_err_clear();
  CHECK(cr == NULL);
  CHECK(dist_coral_fit(&cr, la, d, xs + (size_t)slo * d, shi - slo, xt + (size_t)tlo * d,
                       thi - tlo, 1.0) == 0);
  dist_coral_free(&cr);
  /* One source row in total. */
  CHECK(dist_coral_fit(&cr, la, d, xs, c->rank == 0 ? 1 : 0, xt + (size_t)tlo * d, thi - tlo,
                       1.0) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "at least 2 rows") != NULL);
  ferry_err_clear();
  /* An infinite feature on the last rank. */
  if (c->rank == c->size - 1) xt[0] = INFINITY;
  CHECK(dist_coral_fit(&cr, la, d, xs + (size_t)slo * d, shi - slo, xt,
                       c->rank == c->size - 1 ? 1 : thi - tlo, 1.0) == FERRY_EUSER);
  ferry_err_clear();
  CHECK(dist_coral_fit(&cr, la, d, xs, 0, xt, 0, -1.0) == FERRY_EUSER);
  ferry_err_clear();
  CHECK(cr == NULL);
  free(xs);
  free(xt);
}

/* ---- groups ------------------------------------------------------------------ */

static void run_all(const dist_comm *c, uint64_t seed) {
  dist_linalg *la = NULL;
  int rc = dist_linalg_new(&la, c);
  CHECK_MSG(rc == 0, "%s", ferry_err_msg());
  if (rc != 0) return;
  test_ridge_basic(c, la, seed);
  test_ridge_wide(c, la);
  test_ridge_errors(c, la);
  check_select(c, la, 3000, 1000, 30, 5, 3.0, seed + 7);
  check_select(c, la, 2000, 800, 8, 3, 0.0, seed + 8); /* ties */
  check_select(c, la, 1500, 500, 12, 70, 1.0, seed + 9); /* > 64 classes */
  check_coral(c, la, 700, 500, 20, 0.0, seed + 20);   /* d <= block size */
  check_coral(c, la, 700, 500, 45, 0.0, seed + 21);   /* d > block size */
  check_coral(c, la, 900, 600, 100, 1.0, seed + 22);
  test_coral_errors(c, la);
  dist_linalg_free(&la);
  CHECK(la == NULL);
}

/* Two groups of MPI_Comm_split solve different problems concurrently, each
 * checked against its own serial solve, while a world grid also exists. */
static void test_subgroups(const dist_comm *world) {
  if (world->size < 2) return;
  dist_linalg *wla = NULL;
  CHECK(dist_linalg_new(&wla, world) == 0);
  MPI_Comm sub;
  MPI_Comm_split(world->comm, world->rank % 2, world->rank, &sub);
  dist_comm g;
  dist_comm_wrap(&g, sub);
  dist_linalg *la = NULL;
  CHECK(dist_linalg_new(&la, &g) == 0);
  uint64_t seed = 1000 + (uint64_t)(world->rank % 2);
  test_ridge_basic(&g, la, seed);
  check_coral(&g, la, 600, 400, 45, 0.5, seed + 30);
  dist_linalg_free(&la);
  MPI_Comm_free(&sub);
  /* The world grid still works after the group's grid is gone. */
  test_ridge_wide(world, wla);
  dist_linalg_free(&wla);
}

int main(int argc, char **argv) {
  dist_comm c;
  if (dist_init(&argc, &argv, &c) != 0) return 1;
  run_all(&c, 42);
  test_subgroups(&c);
  double mine[4] = {err_ridge, err_coral_a, err_coral_cov, err_coral_apply}, all[4];
  MPI_Reduce(mine, all, 4, MPI_DOUBLE, MPI_MAX, 0, c.comm);
  if (c.rank == 0)
    printf("np=%d max relative error: ridge %.3g (tol %g), CORAL A %.3g, aligned covariance "
           "%.3g (tol %g), float apply %.3g\n",
           c.size, all[0], RIDGE_TOL, all[1], all[2], CORAL_TOL, all[3]);
  int rc = mpi_check_report(c.comm);
  dist_finalize();
  return rc;
}
