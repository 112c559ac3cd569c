/* The closed-form linear probe of dist/linalg.h: G = [X 1]ᵀ[X 1] and
 * B = [X 1]ᵀY accumulated panel by panel with pdsyrk/pdgemm, solved with
 * pdposv for each λ, λ chosen by validation accuracy. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist/linalg_impl.h"
#include "nn/err.h"

struct dist_ridge {
  dist_linalg *la;
  int d, nc;
  int64_t rows; /* over all ranks */
  la_mat g;     /* (d+1)×(d+1); the lower triangle is kept (uplo 'L') */
  la_mat b;     /* (d+1)×nc */
  la_mat gw;    /* solve work copies: pdposv overwrites both */
  la_mat bw;
};

static const int I1 = 1;
static const double ONE = 1.0;

void dist_ridge_free(dist_ridge **pr) {
  if (!pr || !*pr) return;
  dist_ridge *r = *pr;
  la_mat_free(&r->g);
  la_mat_free(&r->b);
  la_mat_free(&r->gw);
  la_mat_free(&r->bw);
  free(r);
  *pr = NULL;
}

static int ridge_alloc(dist_ridge *r) {
  int n1 = r->d + 1;
  CHECK_CALL(la_mat_init(&r->g, r->la, n1, n1, LA_NB, LA_NB));
  CHECK_CALL(la_mat_init(&r->gw, r->la, n1, n1, LA_NB, LA_NB));
  CHECK_CALL(la_mat_init(&r->b, r->la, n1, r->nc, LA_NB, LA_NB));
  CHECK_CALL(la_mat_init(&r->bw, r->la, n1, r->nc, LA_NB, LA_NB));
  return 0;
}

int dist_ridge_new(dist_ridge **out, dist_linalg *la, int d, int nclasses) {
  *out = NULL;
  CHECK_USER(d >= 1 && d < 1000000 && nclasses >= 1 && nclasses < 1000000,
             "linear probe: expected 1 <= d < 1e6 features and 1 <= classes < 1e6, found "
             "d=%d classes=%d",
             d, nclasses);
  dist_ridge *r = calloc(1, sizeof *r);
  int rc = r ? 0 : ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                                 "out of memory allocating the linear probe");
  if (r) {
    r->la = la;
    r->d = d;
    r->nc = nclasses;
    rc = ridge_alloc(r);
  }
  rc = la_agree(la, rc, "creating the linear probe");
  if (rc != 0) {
    dist_ridge_free(&r);
    return rc;
  }
  *out = r;
  return 0;
}

int64_t dist_ridge_rows(const dist_ridge *r) { return r->rows; }

/* Local validation of rows handed to add/select. Not collective. */
static int check_rows(const char *what, int d, int nc, const float *x, const int32_t *y,
                      int64_t n) {
  CHECK_USER(n >= 0, "%s: expected a row count >= 0, found %lld", what, (long long)n);
  if (n == 0) return 0;
  CHECK_USER(x != NULL && y != NULL, "%s: %lld rows but no %s buffer", what, (long long)n,
             x ? "label" : "feature");
  for (int64_t i = 0; i < n; i++)
    CHECK_USER(y[i] >= 0 && y[i] < nc,
               "%s: local row %lld has label %d, expected a class in [0, %d)", what,
               (long long)i, (int)y[i], nc);
  int64_t bad = la_find_nonfinite(x, n, d);
  CHECK_USER(bad < 0, "%s: local row %lld, feature %lld is %g, expected a finite value",
             what, (long long)(bad / d), (long long)(bad % d), (double)x[bad]);
  return 0;
}

/* One-hot panel: column-major ld×nc, rows nr..ld-1 zero. */
static void pack_onehot(double *dst, int ld, int nc, const int32_t *y, int64_t r0, int nr) {
  memset(dst, 0, (size_t)ld * (size_t)nc * sizeof(double));
  for (int i = 0; i < nr; i++) dst[(size_t)y[r0 + i] * (size_t)ld + (size_t)i] = 1.0;
}

int dist_ridge_add(dist_ridge *r, const float *x, const int32_t *y, int64_t n_local) {
  dist_linalg *la = r->la;
  int rc = check_rows("linear probe rows", r->d, r->nc, x, y, n_local);
  CHECK_CALL(la_agree(la, rc, "linear probe: adding rows"));
  la_panels p;
  CHECK_CALL(la_panels_plan(la, n_local, r->d + 1, &p));
  if (p.npanels == 0) return 0;

  la_mat X = {0}, Y = {0};
  int M = la->nprow * p.ch, n1 = r->d + 1;
  rc = la_mat_init(&X, la, M, n1, p.ch, LA_NB);
  if (rc == 0) rc = la_mat_init(&Y, la, M, r->nc, p.ch, LA_NB);
  rc = la_agree(la, rc, "linear probe: allocating a row panel");
  for (int k = 0; rc == 0 && k < p.npanels; k++) {
    int64_t r0 = (int64_t)k * p.ch;
    int64_t left = n_local - r0;
    int nr = left <= 0 ? 0 : left < p.ch ? (int)left : p.ch;
    la_pack_rows(X.a, X.lld, x, r->d, r0, nr, NULL, 1);
    pack_onehot(Y.a, Y.lld, r->nc, y, r0, nr);
    pdsyrk_("L", "T", &n1, &M, &ONE, X.a, &I1, &I1, X.desc, &ONE, r->g.a, &I1, &I1,
            r->g.desc);
    pdgemm_("T", "N", &n1, &r->nc, &M, &ONE, X.a, &I1, &I1, X.desc, Y.a, &I1, &I1, Y.desc,
            &ONE, r->b.a, &I1, &I1, r->b.desc);
  }
  la_mat_free(&X);
  la_mat_free(&Y);
  if (rc != 0) return rc;
  int64_t added = n_local;
  CHECK_CALL(dist_allreduce_i64(&la->comm, &added, 1));
  r->rows += added;
  return 0;
}

int dist_ridge_diag_mean(dist_ridge *r, double *out) {
  const la_mat *G = &r->g;
  double s = 0.0;
  for (int il = 0; il < G->nloc; il++) {
    int g = la_row_global(r->la, G, il);
    if (g < r->d) s += G->a[(size_t)g * (size_t)G->lld + (size_t)il];
  }
  CHECK_CALL(dist_allreduce_f64(&r->la->comm, &s, 1));
  *out = s / r->d;
  return 0;
}

/* Factor and solve with the current G, B. *minor > 0 (the same on every
 * rank) when G + λI' is not positive definite: w is then untouched. */
static int ridge_solve_info(dist_ridge *r, double lambda, double *w, int *minor) {
  dist_linalg *la = r->la;
  int n1 = r->d + 1, info = 0;
  memcpy(r->gw.a, r->g.a, (size_t)r->g.lld * (size_t)n1 * sizeof(double));
  memcpy(r->bw.a, r->b.a, (size_t)r->b.lld * (size_t)r->nc * sizeof(double));
  la_mat_add_diag(la, &r->gw, r->d, lambda); /* not the bias (index d) */
  pdposv_("L", &n1, &r->nc, r->gw.a, &I1, &I1, r->gw.desc, r->bw.a, &I1, &I1, r->bw.desc,
          &info, 1);
  /* INFO is documented as global; agreeing costs one tiny allreduce and
   * guarantees no rank goes on to gather while another stops. */
  int64_t all = info;
  CHECK_CALL(la_agree_info(la, &all, "pdposv"));
  *minor = (int)all;
  if (*minor > 0) return 0;
  CHECK_CALL(la_mat_gather(la, &r->bw, w));
  return 0;
}

static int check_solve_args(const dist_ridge *r, double lambda) {
  CHECK_USER(isfinite(lambda) && lambda >= 0.0,
             "linear probe: expected a finite ridge λ >= 0, found %g", lambda);
  CHECK_USER(r->rows > 0, "linear probe: no rows were added before the solve");
  return 0;
}

int dist_ridge_solve(dist_ridge *r, double lambda, double *w) {
  CHECK_CALL(check_solve_args(r, lambda));
  int minor = 0;
  CHECK_CALL(ridge_solve_info(r, lambda, w, &minor));
  CHECK_USER(minor == 0,
             "linear probe: G + λI is not positive definite at λ=%g (leading minor %d of "
             "%d): the %d features plus bias are linearly dependent over the %lld rows; "
             "%s",
             lambda, minor, r->d + 1, r->d, (long long)r->rows,
             lambda > 0.0 ? "use a larger λ" : "use λ > 0");
  return 0;
}

void dist_ridge_predict(const double *w, int d, int nclasses, const float *x, int64_t n,
                        int32_t *pred) {
  /* Scores for up to CB classes at a time, so the inner loop runs along a
   * row of w (contiguous) and nothing is allocated. */
  enum { CB = 64 };
  double s[CB];
  const double *bias = w + (size_t)d * (size_t)nclasses;
  for (int64_t i = 0; i < n; i++) {
    const float *row = x + (size_t)i * (size_t)d;
    int best = 0;
    double best_s = -INFINITY;
    for (int c0 = 0; c0 < nclasses; c0 += CB) {
      int nb = nclasses - c0 < CB ? nclasses - c0 : CB;
      for (int c = 0; c < nb; c++) s[c] = bias[c0 + c];
      for (int j = 0; j < d; j++) {
        double v = (double)row[j];
        const double *wj = w + (size_t)j * (size_t)nclasses + (size_t)c0;
        for (int c = 0; c < nb; c++) s[c] += v * wj[c];
      }
      for (int c = 0; c < nb; c++)
        if (s[c] > best_s) {
          best_s = s[c];
          best = c0 + c;
        }
    }
    pred[i] = best;
  }
}

/* Correct predictions among n local rows. Not collective. */
static int64_t count_correct(const double *w, int d, int nc, const float *x,
                             const int32_t *y, int64_t n, int32_t *pred) {
  dist_ridge_predict(w, d, nc, x, n, pred);
  int64_t ok = 0;
  for (int64_t i = 0; i < n; i++) ok += pred[i] == y[i];
  return ok;
}

int dist_ridge_select(dist_ridge *r, const double *lambdas, int nl, const float *xv,
                      const int32_t *yv, int64_t nv_local, double *best_lambda,
                      double *w_best, double *acc) {
  dist_linalg *la = r->la;
  CHECK_USER(nl >= 1 && lambdas != NULL, "linear probe: expected at least one λ, found %d",
             nl);
  for (int i = 0; i < nl; i++) CHECK_CALL(check_solve_args(r, lambdas[i]));
  size_t wn = (size_t)(r->d + 1) * (size_t)r->nc;
  double *w = malloc(wn * sizeof *w);
  int32_t *pred = malloc((size_t)(nv_local > 0 ? nv_local : 1) * sizeof *pred);
  /* counts[i]: correct rows for λ_i; counts[nl]: validation rows. */
  int64_t *counts = calloc((size_t)nl + 1, sizeof *counts);
  int *minor = calloc((size_t)nl, sizeof *minor);
  int rc = check_rows("linear probe validation rows", r->d, r->nc, xv, yv, nv_local);
  if (rc == 0 && !(w && pred && counts && minor))
    rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                       "out of memory for λ selection (%lld validation rows)",
                       (long long)nv_local);
  rc = la_agree(la, rc, "linear probe: λ selection");
  for (int i = 0; rc == 0 && i < nl; i++) {
    rc = ridge_solve_info(r, lambdas[i], w, &minor[i]);
    if (rc == 0 && minor[i] == 0)
      counts[i] = count_correct(w, r->d, r->nc, xv, yv, nv_local, pred);
  }
  if (rc == 0) counts[nl] = nv_local;
  if (rc == 0) rc = dist_allreduce_i64(&la->comm, counts, (size_t)nl + 1);
  int best = -1;
  for (int i = 0; rc == 0 && i < nl; i++) {
    if (acc) acc[i] = minor[i] ? NAN : counts[nl] ? (double)counts[i] / counts[nl] : 0.0;
    if (minor[i]) continue;
    if (best < 0 || counts[i] > counts[best] ||
        (counts[i] == counts[best] && lambdas[i] > lambdas[best]))
      best = i;
  }
  int64_t nval = rc == 0 ? counts[nl] : 0;
  free(pred);
  free(counts);
  free(minor);
  free(w);
  if (rc != 0) return rc;
  CHECK_USER(nval > 0, "linear probe: λ selection needs validation rows, found none on "
                       "any rank");
  double lmax = lambdas[0];
  for (int i = 1; i < nl; i++) lmax = lambdas[i] > lmax ? lambdas[i] : lmax;
  CHECK_USER(best >= 0,
             "linear probe: no λ of the %d tried gave a positive definite system (largest "
             "λ %g); try larger values",
             nl, lmax);
  *best_lambda = lambdas[best];
  if (w_best) CHECK_CALL(dist_ridge_solve(r, lambdas[best], w_best));
  return 0;
}
