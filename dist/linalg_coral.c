/* CORAL alignment of dist/linalg.h: distributed covariances (pdsyrk on
 * centred row panels), their eigendecompositions (pdsyevd), and
 * A = C_s^{-1/2} C_t^{1/2} formed with pdgemm, then replicated. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist/linalg_impl.h"
#include "nn/err.h"

static const int I1 = 1;
static const double ONE = 1.0, ZERO = 0.0;

void dist_coral_free(dist_coral **pc) {
  if (!pc || !*pc) return;
  dist_coral *c = *pc;
  free(c->a);
  free(c->mu_s);
  free(c->mu_t);
  free(c);
  *pc = NULL;
}

static int check_domain(const char *name, int d, const float *x, int64_t n) {
  CHECK_USER(n >= 0, "CORAL %s rows: expected a row count >= 0, found %lld", name,
             (long long)n);
  if (n == 0) return 0;
  CHECK_USER(x != NULL, "CORAL %s rows: %lld rows but no feature buffer", name,
             (long long)n);
  int64_t bad = la_find_nonfinite(x, n, d);
  CHECK_USER(bad < 0, "CORAL %s rows: local row %lld, feature %lld is %g, expected a finite "
                      "value",
             name, (long long)(bad / d), (long long)(bad % d), (double)x[bad]);
  return 0;
}

/* C <- (X − mu)ᵀ(X − mu) / (N − 1) + eps·I over every rank's rows (lower
 * triangle). Collective. */
static int covariance(dist_linalg *la, la_mat *C, int d, const float *x, int64_t n,
                      const double *mu, int64_t ntotal, double eps) {
  la_panels p;
  CHECK_CALL(la_panels_plan(la, n, d, &p));
  memset(C->a, 0, (size_t)C->lld * (size_t)d * sizeof(double));
  la_mat X = {0};
  int M = la->nprow * p.ch;
  CHECK_CALL(la_agree(la, la_mat_init(&X, la, M, d, p.ch, LA_NB), "CORAL: allocating a panel"));
  double alpha = 1.0 / (double)(ntotal - 1);
  for (int k = 0; k < p.npanels; k++) {
    int64_t r0 = (int64_t)k * p.ch, left = n - r0;
    int nr = left <= 0 ? 0 : left < p.ch ? (int)left : p.ch;
    la_pack_rows(X.a, X.lld, x, d, r0, nr, mu, 0);
    pdsyrk_("L", "T", &d, &M, &alpha, X.a, &I1, &I1, X.desc, &ONE, C->a, &I1, &I1, C->desc);
  }
  la_mat_free(&X);
  la_mat_add_diag(la, C, d, eps);
  return 0;
}

/* Eigenvalues (ascending, into w[d], identical on every rank) and
 * eigenvectors (columns of Z) of the symmetric C, whose lower triangle is
 * destroyed. Collective. */
static int eig(dist_linalg *la, la_mat *C, la_mat *Z, int d, double *w, const char *name) {
  int lwork = -1, liwork = -1, info = 0;
  double wq = 0.0;
  int iq = 0;
  pdsyevd_("V", "L", &d, C->a, &I1, &I1, C->desc, w, Z->a, &I1, &I1, Z->desc, &wq, &lwork,
           &iq, &liwork, &info, 1, 1);
  CHECK_RT(info == 0, "pdsyevd workspace query failed (info %d)", info);
  /* The query under-reports: pdsyevd hands LWORK − 2d to PDORMTR, which
   * needs max(nb(nb−1)/2, (MpC0 + NqC0)·nb) + nb² with MpC0 <= d + nb and
   * NqC0 <= d here (npcol = 1); short of that PDORMTR only prints a
   * complaint and leaves Z wrong with INFO = 0. Take the larger, with
   * room for pdsytrd's 4d offset. */
  int ormtr = (2 * d + 2 * LA_NB) * LA_NB + LA_NB * LA_NB;
  lwork = ((int)wq > ormtr + 4 * d ? (int)wq : ormtr + 4 * d) + 64;
  liwork = (iq > 7 * d + 8 + 2 ? iq : 7 * d + 8 + 2) + 64;
  double *work = malloc((size_t)lwork * sizeof *work);
  int *iwork = malloc((size_t)liwork * sizeof *iwork);
  int rc = work && iwork ? 0
                         : ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                                         "out of memory for pdsyevd workspace (%d doubles)",
                                         lwork);
  rc = la_agree(la, rc, "CORAL: eigen workspace");
  if (rc == 0)
    pdsyevd_("V", "L", &d, C->a, &I1, &I1, C->desc, w, Z->a, &I1, &I1, Z->desc, work, &lwork,
             iwork, &liwork, &info, 1, 1);
  free(work);
  free(iwork);
  if (rc != 0) return rc;
  /* When d <= the block size the tridiagonal solve runs on grid row 0 only,
   * so its eigenvalues and INFO are authoritative there: agree on INFO and
   * take w from rank 0. */
  int64_t all = info;
  CHECK_CALL(la_agree_info(la, &all, "pdsyevd"));
  CHECK_RT(all == 0, "pdsyevd failed to converge on the %s covariance (info %lld)", name,
           (long long)all);
  CHECK_CALL(dist_bcast(&la->comm, w, (size_t)d * sizeof(double), 0));
  return 0;
}

/* L <- Z · diag(f), then M <- L Zᵀ = Z diag(f) Zᵀ. Collective. */
static void spectral_fn(la_mat *L, const la_mat *Z, la_mat *M, int d, const double *f) {
  for (int j = 0; j < d; j++)
    for (int il = 0; il < Z->nloc; il++) {
      size_t k = (size_t)j * (size_t)Z->lld + (size_t)il;
      L->a[k] = Z->a[k] * f[j];
    }
  pdgemm_("N", "T", &d, &d, &d, &ONE, L->a, &I1, &I1, L->desc, Z->a, &I1, &I1, Z->desc, &ZERO,
          M->a, &I1, &I1, M->desc);
}

typedef struct {
  la_mat c, z, l, m;
  double *w, *f;
} coral_work;

static void work_free(coral_work *wk) {
  la_mat_free(&wk->c);
  la_mat_free(&wk->z);
  la_mat_free(&wk->l);
  la_mat_free(&wk->m);
  free(wk->w);
  free(wk->f);
}

static int work_alloc(coral_work *wk, dist_linalg *la, int d) {
  CHECK_CALL(la_mat_init(&wk->c, la, d, d, LA_NB, LA_NB));
  CHECK_CALL(la_mat_init(&wk->z, la, d, d, LA_NB, LA_NB));
  CHECK_CALL(la_mat_init(&wk->l, la, d, d, LA_NB, LA_NB));
  CHECK_CALL(la_mat_init(&wk->m, la, d, d, LA_NB, LA_NB));
  wk->w = malloc((size_t)d * sizeof(double));
  wk->f = malloc((size_t)d * sizeof(double));
  CHECK_ALLOC(wk->w, (size_t)d * sizeof(double));
  CHECK_ALLOC(wk->f, (size_t)d * sizeof(double));
  return 0;
}

static int coral_alloc(dist_coral **out, int d, double eps) {
  dist_coral *c = calloc(1, sizeof *c);
  CHECK_ALLOC(c, sizeof *c);
  *out = c;
  c->d = d;
  c->eps = eps;
  c->a = malloc((size_t)d * (size_t)d * sizeof(double));
  c->mu_s = malloc((size_t)d * sizeof(double));
  c->mu_t = malloc((size_t)d * sizeof(double));
  CHECK_ALLOC(c->a, (size_t)d * (size_t)d * sizeof(double));
  CHECK_ALLOC(c->mu_s, (size_t)d * sizeof(double));
  CHECK_ALLOC(c->mu_t, (size_t)d * sizeof(double));
  return 0;
}

/* Means of both domains and their global row counts. Collective. */
static int means(dist_linalg *la, dist_coral *c, const float *xs, int64_t ns, const float *xt,
                 int64_t nt, int64_t cnt[2]) {
  int d = c->d;
  la_col_sums(xs, ns, d, c->mu_s);
  la_col_sums(xt, nt, d, c->mu_t);
  cnt[0] = ns;
  cnt[1] = nt;
  CHECK_CALL(dist_allreduce_f64(&la->comm, c->mu_s, (size_t)d));
  CHECK_CALL(dist_allreduce_f64(&la->comm, c->mu_t, (size_t)d));
  CHECK_CALL(dist_allreduce_i64(&la->comm, cnt, 2));
  CHECK_USER(cnt[0] >= 2 && cnt[1] >= 2,
             "CORAL: expected at least 2 rows per domain over the group, found %lld source "
             "and %lld target rows",
             (long long)cnt[0], (long long)cnt[1]);
  for (int j = 0; j < d; j++) {
    c->mu_s[j] /= (double)cnt[0];
    c->mu_t[j] /= (double)cnt[1];
  }
  return 0;
}

/* Everything after validation and allocation. Collective. */
static int coral_compute(dist_linalg *la, dist_coral *c, coral_work *wk, const float *xs,
                         int64_t ns, const float *xt, int64_t nt) {
  int d = c->d;
  int64_t cnt[2];
  CHECK_CALL(means(la, c, xs, ns, xt, nt, cnt));

  /* Source: M <- C_s^{-1/2}. */
  CHECK_CALL(covariance(la, &wk->c, d, xs, ns, c->mu_s, cnt[0], c->eps));
  CHECK_CALL(eig(la, &wk->c, &wk->z, d, wk->w, "source"));
  double wmax = wk->w[d - 1];
  CHECK_USER(wmax > 0.0 && wk->w[0] > wmax * (double)d * DBL_EPSILON,
             "CORAL: the source covariance + %g·I is singular (eigenvalues from %g to %g "
             "over %lld rows of %d features); use eps > 0",
             c->eps, wk->w[0], wmax, (long long)cnt[0], d);
  for (int j = 0; j < d; j++) wk->f[j] = 1.0 / sqrt(wk->w[j]);
  spectral_fn(&wk->l, &wk->z, &wk->m, d, wk->f);

  /* Target: C <- C_t^{1/2} (rounding can leave eigenvalues of a singular
   * covariance slightly negative: their square roots are 0). */
  CHECK_CALL(covariance(la, &wk->c, d, xt, nt, c->mu_t, cnt[1], c->eps));
  CHECK_CALL(eig(la, &wk->c, &wk->z, d, wk->w, "target"));
  for (int j = 0; j < d; j++) wk->f[j] = wk->w[j] > 0.0 ? sqrt(wk->w[j]) : 0.0;
  spectral_fn(&wk->l, &wk->z, &wk->c, d, wk->f);

  /* A = C_s^{-1/2} C_t^{1/2}, into L, then replicated row-major. */
  pdgemm_("N", "N", &d, &d, &d, &ONE, wk->m.a, &I1, &I1, wk->m.desc, wk->c.a, &I1, &I1,
          wk->c.desc, &ZERO, wk->l.a, &I1, &I1, wk->l.desc);
  CHECK_CALL(la_mat_gather(la, &wk->l, c->a));
  return 0;
}

int dist_coral_fit(dist_coral **out, dist_linalg *la, int d, const float *xs,
                   int64_t ns_local, const float *xt, int64_t nt_local, double eps) {
  *out = NULL;
  CHECK_USER(d >= 1 && d < 100000, "CORAL: expected 1 <= d < 100000 features, found %d", d);
  CHECK_USER(isfinite(eps) && eps >= 0.0, "CORAL: expected a finite eps >= 0, found %g", eps);
  int rc = check_domain("source", d, xs, ns_local);
  if (rc == 0) rc = check_domain("target", d, xt, nt_local);
  dist_coral *c = NULL;
  coral_work wk = {0};
  if (rc == 0) rc = coral_alloc(&c, d, eps);
  if (rc == 0) rc = work_alloc(&wk, la, d);
  rc = la_agree(la, rc, "CORAL fit");
  if (rc == 0) rc = coral_compute(la, c, &wk, xs, ns_local, xt, nt_local);
  work_free(&wk);
  if (rc != 0) {
    dist_coral_free(&c);
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  *out = c;
  return 0;
}

int dist_coral_apply(const dist_coral *c, const float *x, int64_t n, float *out) {
  int d = c->d;
  double *acc = malloc((size_t)d * sizeof *acc);
  CHECK_ALLOC(acc, (size_t)d * sizeof *acc);
  for (int64_t i = 0; i < n; i++) {
    const float *row = x + (size_t)i * (size_t)d;
    for (int k = 0; k < d; k++) acc[k] = c->mu_t[k];
    for (int j = 0; j < d; j++) {
      double v = (double)row[j] - c->mu_s[j];
      const double *arow = c->a + (size_t)j * (size_t)d;
      for (int k = 0; k < d; k++) acc[k] += v * arow[k];
    }
    float *o = out + (size_t)i * (size_t)d;
    for (int k = 0; k < d; k++) o[k] = (float)acc[k];
  }
  free(acc);
  return 0;
}
