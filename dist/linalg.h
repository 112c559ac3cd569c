/* Distributed dense linear algebra over a group's ranks (ScaLAPACK): the
 * closed-form linear probe (ridge regression on one-hot targets, λ picked on a
 * validation split) and CORAL feature alignment. Features stay where they are:
 * every rank passes only its own rows; only small (d+1)×C and d×d results are
 * replicated. Knows nothing about layers: it sees float rows [n][d] and int
 * labels.
 *
 * Threading: BLACS keeps process-global tables, so call these only from the
 * thread that makes MPI calls, and never concurrently. */
#ifndef FERRY_DIST_LINALG_H
#define FERRY_DIST_LINALG_H

#include <stdint.h>

#include "dist/comm.h"

/* ------------------------------------------------------------------------ */
/* Process grid                                                             */
/* ------------------------------------------------------------------------ */

/* A BLACS process grid (size×1) over one communicator. Opaque. */
typedef struct dist_linalg dist_linalg;

/* Creates the grid on c, which may be any communicator (a worker group made
 * by MPI_Comm_split works; MPI_COMM_WORLD is not touched). Duplicates c, so
 * ScaLAPACK's traffic never mixes with the caller's; c itself need not outlive
 * the grid. MPI must be initialised; BLACS never finalises it.
 * *out is owned by the caller: free with dist_linalg_free. Collective over c. */
int dist_linalg_new(dist_linalg **out, const dist_comm *c);

/* Frees *la (grid, BLACS handle, duplicate communicator) and sets it to NULL;
 * NULL-safe. Objects made from it (dist_ridge) must be freed first.
 * Collective over the grid's communicator. */
void dist_linalg_free(dist_linalg **la);

/* ------------------------------------------------------------------------ */
/* Linear probe: ridge regression on one-hot targets                        */
/* ------------------------------------------------------------------------ */

/* Accumulates G = [X 1]ᵀ[X 1] ((d+1)×(d+1)) and B = [X 1]ᵀY ((d+1)×C), with Y
 * the plain 0/1 one-hot matrix of the labels, as block-cyclic distributed
 * double matrices; rows can be added in as many calls as the caller likes.
 * A solve minimises   Σ_rows ||y_i − x_i W − b||² + λ ||W||²_F
 * (a sum over rows, not a mean: a λ grid should scale with the row count, see
 * dist_ridge_diag_mean). The bias b is not regularised, which makes this the
 * same as ridge on centred features with centred targets; with an
 * unregularised bias, centring or ±1-coding Y would change only b and the
 * decision rule not at all, so Y is left as 0/1. Opaque. */
typedef struct dist_ridge dist_ridge;

/* A probe for d features and nclasses classes on la's grid (la must outlive
 * it). d >= 1, nclasses >= 1, the same on every rank. Free with
 * dist_ridge_free. Collective. */
int dist_ridge_new(dist_ridge **out, dist_linalg *la, int d, int nclasses);
/* Frees *r and sets it to NULL; NULL-safe. Not collective. */
void dist_ridge_free(dist_ridge **r);

/* Adds this rank's n_local rows: x row-major float [n_local][d], y int32
 * [n_local] with every label in [0, nclasses). n_local may differ between
 * ranks and may be 0 (x, y may then be NULL). The rows are never sent to
 * another rank as rows: each rank's rows, converted to double and padded with
 * zero rows, are its own row block of a distributed matrix, and pdsyrk/pdgemm
 * add their contribution to G and B (memory: at most a few thousand rows are
 * converted at a time). FERRY_EUSER on any rank (bad label, non-finite
 * feature, n_local < 0) fails the call on every rank, before any rows are
 * added, with the bad rank's message there and a pointer to it elsewhere.
 * Collective: every rank must make the same number of calls. */
int dist_ridge_add(dist_ridge *r, const float *x, const int32_t *y, int64_t n_local);

/* Total rows added so far (over all ranks). Not collective. */
int64_t dist_ridge_rows(const dist_ridge *r);

/* Mean of the first d diagonal entries of G, i.e. Σ_i ||x_i||² / d: the
 * natural scale for λ (λ = α · this for a dimensionless α). Collective. */
int dist_ridge_diag_mean(dist_ridge *r, double *out);

/* Solves (G + λ I')W = B with pdposv, I' = identity except 0 for the bias, and
 * writes w: row-major double [(d+1)][nclasses], replicated on every rank; rows
 * 0..d-1 are the feature weights, row d is the bias, so the scores of a row x
 * are s_c = Σ_j x_j w[j][c] + w[d][c]. G and B are kept: solve again with
 * another λ, or add more rows. λ must be finite, >= 0 and the same on every
 * rank. When G + λI' is not positive definite (collinear features, or λ = 0
 * with fewer than d+1 independent rows) every rank returns FERRY_EUSER naming
 * λ and the failing minor; no rows added yet is FERRY_EUSER too. Collective. */
int dist_ridge_solve(dist_ridge *r, double lambda, double *w);

/* Predicted class (argmax of the scores, lowest index on ties) of n rows x
 * [n][d] under w from dist_ridge_solve. Not collective. */
void dist_ridge_predict(const double *w, int d, int nclasses, const float *x, int64_t n,
                        int32_t *pred);

/* Picks λ from lambdas[0..nl) by accuracy on a validation split given as this
 * rank's rows xv [nv_local][d], yv [nv_local] (labels in [0, nclasses);
 * nv_local may be 0 on some ranks, not on all). For each λ: a solve, local
 * predictions, then one sum of correct counts over ranks. The best accuracy
 * wins; ties go to the larger λ (the simpler model). A λ whose system is not
 * positive definite is skipped (its acc is NAN); FERRY_EUSER if every λ is.
 * Writes *best_lambda and, if w_best is not NULL, its solution as
 * dist_ridge_solve would (row-major [(d+1)][nclasses]); acc (may be NULL) gets
 * the validation accuracy of each λ. Everything is identical on every rank.
 * Collective; lambdas must be the same on every rank. */
int dist_ridge_select(dist_ridge *r, const double *lambdas, int nl, const float *xv,
                      const int32_t *yv, int64_t nv_local, double *best_lambda,
                      double *w_best, double *acc);

/* ------------------------------------------------------------------------ */
/* CORAL alignment (Sun, Feng, Saenko 2016)                                 */
/* ------------------------------------------------------------------------ */

/* x' = (x − mu_s) A + mu_t with A = C_s^{-1/2} C_t^{1/2}, where
 * C_s = cov(X_s) + eps·I and C_t = cov(X_t) + eps·I (unbiased covariances,
 * divisor N−1). Then cov(X_s') = Aᵀ cov(X_s) A = C_t − eps·AᵀA, which is
 * cov(X_t) exactly when eps = 0. The paper applies A to the raw source
 * features and leaves the means alone; here the source mean is removed first
 * and the target mean added back, so the first two moments both match (the
 * common variant; a linear head trained on target-like features then sees
 * target-like offsets too). Fields are replicated on every rank. */
typedef struct {
  int d;
  double eps;
  double *a;    /* [d][d] row-major: a[j*d + k] = A_jk */
  double *mu_s; /* [d] source mean */
  double *mu_t; /* [d] target mean */
} dist_coral;

/* Fits the alignment from this rank's source rows xs [ns_local][d] and target
 * rows xt [nt_local][d] (float row-major; counts may differ between ranks and
 * be 0 on some). Means are summed over ranks; each covariance is a
 * distributed pdsyrk of the centred rows (rows never leave their rank as
 * rows), eigendecomposed with pdsyevd; A is formed with pdgemm and
 * replicated. eps >= 0 (the paper uses 1); with eps = 0 the source covariance
 * must be non-singular (more than d rows in general position), else
 * FERRY_EUSER. Each domain needs at least 2 rows in total. Bad input on any
 * rank fails the call on every rank. *out is owned by the caller: free with
 * dist_coral_free. Collective; d and eps must be the same on every rank. */
int dist_coral_fit(dist_coral **out, dist_linalg *la, int d, const float *xs,
                   int64_t ns_local, const float *xt, int64_t nt_local, double eps);

/* out[i] = (x[i] − mu_s) A + mu_t for n rows [n][d] (computed in double);
 * out may equal x (in place). FERRY_ERUNTIME only if a d-double scratch row
 * cannot be allocated. Not collective. */
int dist_coral_apply(const dist_coral *cr, const float *x, int64_t n, float *out);

/* Frees *cr and its arrays and sets it to NULL; NULL-safe. Not collective. */
void dist_coral_free(dist_coral **cr);

#endif
