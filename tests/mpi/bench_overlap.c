/* Overlap of bucketed gradient sync with a simulated backward pass: K
 * "layers", each ~2 ms of single-threaded sgemm, then its gradient range
 * (range_kib) is written and reported to dist_grad_sync_ready; finish at the
 * end. Compares, interleaved rep by rep, compute only / sync disabled / sync
 * enabled / compute then one blocking MPI_Allreduce of the slab, and prints
 * JSON with medians over reps of the slowest rank's step time.
 *   mpirun --allow-run-as-root -np 2 -x OMPI_MCA_mpi_yield_when_idle=1 \
 *          -x OPENBLAS_NUM_THREADS=1 build/tests/mpi/bench_overlap [K range_kib bucket_kib reps gemm_n]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <mpi.h>

#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "nn/err.h"

typedef enum { MODE_COMPUTE, MODE_DISABLED, MODE_SYNC, MODE_BLOCKING, MODE_COUNT } mode;
static const char *const mode_names[MODE_COUNT] = {"compute_s", "disabled_s", "sync_s",
                                                   "blocking_s"};

typedef struct {
  int K, gemm_n;
  size_t range, gap;     /* floats per layer range, floats of padding between */
  float *a, *b, *c;      /* gemm operands */
  float *grads;
  dist_range *ranges;
  dist_grad_sync *sync;
  dist_comm comm;
} bench;

static void layer_compute(bench *B, int layer) {
  int n = B->gemm_n;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, B->a, n, B->b, n, 0.0f,
              B->c, n);
  /* The layer's gradient: written once, like a backward's accumulation. */
  float *g = B->grads + B->ranges[layer].off;
  for (size_t i = 0; i < B->range; i++) g[i] = B->c[i % ((size_t)n * n)] * 1e-3f + (float)layer;
}

static int step(bench *B, mode m) {
  for (int l = B->K - 1; l >= 0; l--) {
    layer_compute(B, l);
    if (m == MODE_SYNC || m == MODE_DISABLED)
      dist_grad_sync_ready(B->sync, B->ranges[l].off, B->ranges[l].len);
  }
  if (m == MODE_SYNC || m == MODE_DISABLED) CHECK_CALL(dist_grad_sync_finish(B->sync));
  if (m == MODE_BLOCKING)
    CHECK_CALL(dist_allreduce_f32(&B->comm, B->grads, (size_t)B->K * (B->range + B->gap)));
  return 0;
}

/* Wall time of one step on the slowest rank (ranks start together). */
static double timed_step(bench *B, mode m, int *rc) {
  MPI_Barrier(B->comm.comm);
  double t0 = MPI_Wtime();
  *rc = step(B, m);
  double dt = MPI_Wtime() - t0, worst = 0;
  MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, B->comm.comm);
  return worst;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int setup(bench *B, size_t bucket_bytes) {
  size_t nn = (size_t)B->gemm_n * B->gemm_n;
  B->a = malloc(nn * sizeof(float));
  B->b = malloc(nn * sizeof(float));
  B->c = malloc(nn * sizeof(float));
  size_t slab = (size_t)B->K * (B->range + B->gap);
  B->grads = calloc(slab, sizeof(float));
  B->ranges = malloc((size_t)B->K * sizeof *B->ranges);
  CHECK_RT(B->a && B->b && B->c && B->grads && B->ranges, "out of memory");
  for (size_t i = 0; i < nn; i++) B->a[i] = B->b[i] = (float)(i % 7) * 0.1f;
  for (int l = 0; l < B->K; l++) B->ranges[l] = (dist_range){(size_t)l * (B->range + B->gap), B->range};
  CHECK_CALL(dist_grad_sync_new(&B->sync, &B->comm, B->grads, B->ranges, B->K, bucket_bytes));
  return 0;
}

int main(int argc, char **argv) {
  bench B = {.K = 24, .gemm_n = 464, .range = 256 << 10, .gap = 16};
  size_t bucket_kib = 1024;
  int reps = 15;
  if (dist_init(&argc, &argv, &B.comm) != 0) return 1;
  if (argc > 1) B.K = atoi(argv[1]);
  if (argc > 2) B.range = (size_t)atol(argv[2]) * 1024 / sizeof(float);
  if (argc > 3) bucket_kib = (size_t)atol(argv[3]);
  if (argc > 4) reps = atoi(argv[4]);
  if (argc > 5) B.gemm_n = atoi(argv[5]);
  int rc = setup(&B, bucket_kib * 1024);
  double *t[MODE_COUNT];
  for (int m = 0; m < MODE_COUNT; m++) t[m] = calloc((size_t)reps, sizeof(double));
  for (int m = 0; rc == 0 && m < MODE_COUNT; m++) timed_step(&B, (mode)m, &rc); /* warm-up */
  for (int r = 0; rc == 0 && r < reps; r++)
    for (int m = 0; rc == 0 && m < MODE_COUNT; m++) {
      dist_grad_sync_set_enabled(B.sync, m != MODE_DISABLED);
      t[m][r] = timed_step(&B, (mode)m, &rc);
    }
  if (rc != 0) {
    fprintf(stderr, "[%d] bench_overlap: %s\n", B.comm.rank, ferry_err_msg());
    dist_abort(&B.comm, 1);
  }
  double wait_s = 0;
  size_t bytes = 0;
  int nbuckets = 0;
  dist_grad_sync_stats(B.sync, &wait_s, &bytes, &nbuckets);
  double worst_wait = 0;
  MPI_Allreduce(&wait_s, &worst_wait, 1, MPI_DOUBLE, MPI_MAX, B.comm.comm);
  double med[MODE_COUNT];
  for (int m = 0; m < MODE_COUNT; m++) med[m] = median(t[m], reps);
  if (B.comm.rank == 0) {
    printf("{\"ranks\": %d, \"layers\": %d, \"range_bytes\": %zu, \"bucket_bytes\": %zu, "
           "\"buckets\": %d, \"reps\": %d",
           B.comm.size, B.K, B.range * sizeof(float), bucket_kib * 1024, nbuckets, reps);
    for (int m = 0; m < MODE_COUNT; m++) printf(", \"%s\": %.6f", mode_names[m], med[m]);
    printf(", \"ratio\": %.4f, \"ratio_blocking\": %.4f, \"wait_s\": %.6f}\n",
           med[MODE_SYNC] / med[MODE_DISABLED], med[MODE_BLOCKING] / med[MODE_DISABLED],
           worst_wait / (reps + 1));
  }
  dist_grad_sync_free(&B.sync);
  free(B.a);
  free(B.b);
  free(B.c);
  free(B.grads);
  free(B.ranges);
  for (int m = 0; m < MODE_COUNT; m++) free(t[m]);
  dist_finalize();
  return 0;
}
