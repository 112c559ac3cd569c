/* bench_probe: wall time of the ScaLAPACK linear probe and CORAL fit
 * (dist/linalg.h) at the current rank count, on synthetic features split
 * evenly over the ranks: add (pdsyrk + pdgemm over all rows), one solve
 * (pdposv), λ selection over 8 values on a validation split, CORAL fit
 * (2 covariances, 2 pdsyevd, 3 pdgemm). Median of --reps repetitions, the
 * slowest rank each time. Also, on rank 0, the serial ceiling of the
 * dominant step: cblas_dsyrk of the whole [n][d+1] double matrix.
 * Prints one JSON document from rank 0.
 * usage: mpirun -np P bench_probe [--n 30000] [--d 128] [--classes 10] [--reps 5] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <mpi.h>

#include "dist/comm.h"
#include "dist/linalg.h"
#include "nn/err.h"
#include "nn/rng.h"

enum { MAX_REPS = 64, NL = 8 };

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Rows [lo, hi) of n on this rank, even split. */
static void split(const dist_comm *c, int64_t n, int64_t *lo, int64_t *hi) {
  *lo = n * c->rank / c->size;
  *hi = n * (c->rank + 1) / c->size;
}

static void fill(float *x, int32_t *y, int64_t lo, int64_t hi, int d, int nc, uint64_t key) {
  for (int64_t i = lo; i < hi; i++) {
    float *row = x + (size_t)(i - lo) * (size_t)d;
    for (int j = 0; j < d; j++) row[j] = nn_normal_at(key, (uint64_t)i * (uint64_t)d + (uint64_t)j);
    if (y) y[i - lo] = (int32_t)((row[0] > 0) + 2 * (row[1] > 0) + 4 * (row[2] > 0)) % nc;
  }
}

/* Slowest rank's time of the section that started at t0. Collective. */
static double lap(const dist_comm *c, double t0) {
  double t = MPI_Wtime() - t0, mx = t;
  MPI_Allreduce(&t, &mx, 1, MPI_DOUBLE, MPI_MAX, c->comm);
  return mx;
}

static int run(const dist_comm *c, int64_t n, int d, int nc, int reps) {
  int64_t lo, hi, vlo, vhi, nv = n / 6;
  split(c, n, &lo, &hi);
  split(c, nv, &vlo, &vhi);
  float *x = malloc((size_t)(hi - lo) * (size_t)d * sizeof *x + 1);
  float *xv = malloc((size_t)(vhi - vlo) * (size_t)d * sizeof *xv + 1);
  int32_t *y = malloc((size_t)(hi - lo) * sizeof *y + 1);
  int32_t *yv = malloc((size_t)(vhi - vlo) * sizeof *yv + 1);
  double *w = malloc((size_t)(d + 1) * (size_t)nc * sizeof *w);
  if (!x || !xv || !y || !yv || !w) {
    fprintf(stderr, "[%d] out of memory\n", c->rank);
    return 1;
  }
  fill(x, y, lo, hi, d, nc, 1);
  fill(xv, yv, vlo, vhi, d, nc, 2);
  const double lambdas[NL] = {1e-2, 1e-1, 1, 10, 100, 1e3, 1e4, 1e5};
  double t_new[MAX_REPS], t_add[MAX_REPS], t_solve[MAX_REPS], t_sel[MAX_REPS],
      t_coral[MAX_REPS];
  double best = 0.0, acc[NL];
  dist_linalg *la = NULL;
  if (dist_linalg_new(&la, c) != 0) goto fail;
  for (int r = 0; r < reps; r++) {
    dist_ridge *rg = NULL;
    dist_coral *cr = NULL;
    MPI_Barrier(c->comm);
    double t0 = MPI_Wtime();
    if (dist_ridge_new(&rg, la, d, nc) != 0) goto fail;
    t_new[r] = lap(c, t0);
    t0 = MPI_Wtime();
    if (dist_ridge_add(rg, x, y, hi - lo) != 0) goto fail;
    t_add[r] = lap(c, t0);
    t0 = MPI_Wtime();
    if (dist_ridge_solve(rg, 1.0, w) != 0) goto fail;
    t_solve[r] = lap(c, t0);
    t0 = MPI_Wtime();
    if (dist_ridge_select(rg, lambdas, NL, xv, yv, vhi - vlo, &best, w, acc) != 0) goto fail;
    t_sel[r] = lap(c, t0);
    dist_ridge_free(&rg);
    /* Source: the training rows; target: the validation rows. */
    t0 = MPI_Wtime();
    if (dist_coral_fit(&cr, la, d, x, hi - lo, xv, vhi - vlo, 1.0) != 0) goto fail;
    t_coral[r] = lap(c, t0);
    dist_coral_free(&cr);
  }
  dist_linalg_free(&la);

  double t_serial = NAN;
  if (c->rank == 0 && (size_t)n * (size_t)(d + 1) * sizeof(double) < ((size_t)1 << 31)) {
    double *xd = malloc((size_t)n * (size_t)(d + 1) * sizeof *xd);
    double *g = calloc((size_t)(d + 1) * (size_t)(d + 1), sizeof *g);
    float *row = malloc((size_t)d * sizeof *row);
    if (xd && g && row) {
      for (int64_t i = 0; i < n; i++) {
        fill(row, NULL, i, i + 1, d, nc, 1);
        for (int j = 0; j < d; j++) xd[(size_t)i * (size_t)(d + 1) + (size_t)j] = row[j];
        xd[(size_t)i * (size_t)(d + 1) + (size_t)d] = 1.0;
      }
      double ts[MAX_REPS];
      for (int r = 0; r < reps; r++) {
        double t0 = MPI_Wtime();
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, d + 1, (int)n, 1.0, xd, d + 1, 0.0,
                    g, d + 1);
        ts[r] = MPI_Wtime() - t0;
      }
      t_serial = median(ts, reps);
    }
    free(xd);
    free(g);
    free(row);
  }
  if (c->rank == 0) {
    printf("{\"bench\": \"probe\", \"ranks\": %d, \"n\": %lld, \"n_val\": %lld, \"d\": %d, "
           "\"classes\": %d, \"reps\": %d,\n",
           c->size, (long long)n, (long long)nv, d, nc, reps);
    printf(" \"median_s\": {\"ridge_new\": %.6f, \"ridge_add\": %.6f, \"ridge_solve\": %.6f, "
           "\"ridge_select_8\": %.6f, \"coral_fit\": %.6f},\n",
           median(t_new, reps), median(t_add, reps), median(t_solve, reps),
           median(t_sel, reps), median(t_coral, reps));
    printf(" \"serial_dsyrk_rank0_s\": %.6f, \"best_lambda\": %g}\n", t_serial, best);
  }
  free(x);
  free(xv);
  free(y);
  free(yv);
  free(w);
  return 0;
fail:
  fprintf(stderr, "[%d] bench_probe: %s\n", c->rank, ferry_err_msg());
  return 1;
}

int main(int argc, char **argv) {
  dist_comm c;
  if (dist_init(&argc, &argv, &c) != 0) return 1;
  int64_t n = 30000;
  int d = 128, nc = 10, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--n")) n = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "--d")) d = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--classes")) nc = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
  }
  if (reps < 1) reps = 1;
  if (reps > MAX_REPS) reps = MAX_REPS;
  int rc = run(&c, n, d, nc, reps);
  if (rc != 0) dist_abort(&c, 1);
  dist_finalize();
  return 0;
}
