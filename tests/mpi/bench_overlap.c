/* Overlap of bucketed gradient sync with a simulated backward pass: K
 * "layers", each a fixed single-threaded sgemm (~2 ms at gemm_n 464 on an idle
 * core), then its gradient range is written and reported to
 * dist_grad_sync_ready; finish at the end. Modes run interleaved rep by rep;
 * JSON has medians over reps of the slowest rank's step time:
 *   compute_s   layers only
 *   disabled_s  layers + ready/finish with sync switched off
 *   sync_s      layers + bucketed sync (progress from the ready calls)
 *   sync_mpi_s  the same with DIST_SYNC_MPI (MPI_Iallreduce per bucket)
 *   blocking_s  layers, then one MPI_Allreduce of the whole slab
 *   sync_thread_s  sync_s plus a thread calling MPI_Iprobe every thread_us
 *               (only with FERRY_BENCH_THREAD=<us>: MPI_THREAD_MULTIPLE)
 *   ratio = sync_s / disabled_s (ratio_mpi, ratio_blocking alike);
 *   per step, mean over reps, slowest rank: wait_s = seconds blocked in
 *   finish, ready_s = seconds inside the ready calls (starting buckets and
 *   driving progress: the copies and sums of the exchange).
 * FERRY_BENCH_THP=1 puts the gradient slab in 2 MiB transparent huge pages
 * (nn's slabs use 4 KiB pages today).
 * Run:
 *   mpirun --allow-run-as-root -np 2 -x OMPI_MCA_mpi_yield_when_idle=1 \
 *     -x OPENBLAS_NUM_THREADS=1 build/tests/mpi/bench_overlap [K range_kib bucket_kib reps gemm_n]
 */
/* For MADV_HUGEPAGE (Linux). */
#define _DEFAULT_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <cblas.h>
#include <mpi.h>

#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "nn/err.h"

typedef enum {
  MODE_COMPUTE, MODE_DISABLED, MODE_SYNC, MODE_SYNC_MPI, MODE_BLOCKING, MODE_THREAD, MODE_COUNT
} mode;
static const char *const mode_names[MODE_COUNT] = {
    "compute_s", "disabled_s", "sync_s", "sync_mpi_s", "blocking_s", "sync_thread_s"};

typedef struct {
  int K, gemm_n, thread_us, thp;
  size_t range, gap;     /* floats per layer range, floats of padding between */
  float *a, *b, *c;      /* gemm operands */
  float *grads;
  dist_range *ranges;
  dist_grad_sync *sync;
  dist_comm comm;
  MPI_Comm probe_comm;   /* private communicator the progress thread polls */
  atomic_int pump_on;
  double wait_sync, wait_thread; /* seconds in finish, summed over reps */
  double ready_sync;              /* seconds inside ready calls (mode sync) */
} bench;

static void layer_compute(bench *B, int layer) {
  int n = B->gemm_n;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, B->a, n, B->b, n, 0.0f,
              B->c, n);
  /* The layer's gradient: written once, like a backward's accumulation. */
  float *g = B->grads + B->ranges[layer].off;
  size_t nn = (size_t)n * n;
  for (size_t i = 0; i < B->range; i++) g[i] = B->c[i % nn] * 1e-3f + (float)layer;
}

/* Any MPI call runs Open MPI's progress engine, which advances every
 * outstanding non-blocking collective. */
static void *pump(void *arg) {
  bench *B = arg;
  struct timespec ts = {0, (long)B->thread_us * 1000};
  while (atomic_load(&B->pump_on)) {
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, B->probe_comm, &flag, MPI_STATUS_IGNORE);
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static int step(bench *B, mode m) {
  int syncs = m == MODE_SYNC || m == MODE_SYNC_MPI || m == MODE_DISABLED || m == MODE_THREAD;
  pthread_t th;
  if (m == MODE_THREAD) {
    atomic_store(&B->pump_on, 1);
    CHECK_RT(pthread_create(&th, NULL, pump, B) == 0, "pthread_create failed");
  }
  for (int l = B->K - 1; l >= 0; l--) {
    layer_compute(B, l);
    if (!syncs) continue;
    double r0 = MPI_Wtime();
    dist_grad_sync_ready(B->sync, B->ranges[l].off, B->ranges[l].len);
    if (m == MODE_SYNC) B->ready_sync += MPI_Wtime() - r0;
  }
  int rc = 0;
  if (syncs) {
    double w0 = 0, w1 = 0;
    dist_grad_sync_stats(B->sync, &w0, NULL, NULL);
    rc = dist_grad_sync_finish(B->sync);
    dist_grad_sync_stats(B->sync, &w1, NULL, NULL);
    if (m == MODE_SYNC) B->wait_sync += w1 - w0;
    if (m == MODE_THREAD) B->wait_thread += w1 - w0;
  }
  if (m == MODE_THREAD) {
    atomic_store(&B->pump_on, 0);
    pthread_join(th, NULL);
  }
  CHECK_CALL(rc);
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
  /* As nn allocates slabs (64-byte aligned, 4 KiB pages), or with
   * FERRY_BENCH_THP=1 2 MiB-aligned and advised as transparent huge pages. */
  size_t slab_bytes = (size_t)B->K * (B->range + B->gap) * sizeof(float);
  const size_t huge = (size_t)2 << 20;
  if (B->thp) {
    slab_bytes = (slab_bytes + huge - 1) / huge * huge;
    B->grads = aligned_alloc(huge, slab_bytes);
    if (B->grads) madvise(B->grads, slab_bytes, MADV_HUGEPAGE);
  } else {
    B->grads = aligned_alloc(64, (slab_bytes + 63) / 64 * 64);
  }
  if (B->grads) memset(B->grads, 0, slab_bytes);
  B->ranges = malloc((size_t)B->K * sizeof *B->ranges);
  CHECK_RT(B->a && B->b && B->c && B->grads && B->ranges, "out of memory");
  for (size_t i = 0; i < nn; i++) B->a[i] = B->b[i] = (float)(i % 7) * 0.1f;
  for (int l = 0; l < B->K; l++)
    B->ranges[l] = (dist_range){(size_t)l * (B->range + B->gap), B->range};
  CHECK_CALL(dist_grad_sync_new(&B->sync, &B->comm, B->grads, B->ranges, B->K, bucket_bytes));
  MPI_Comm_dup(B->comm.comm, &B->probe_comm);
  return 0;
}

static void print_json(const bench *B, double *const t[MODE_COUNT], int reps, size_t bucket_bytes) {
  int nbuckets = 0;
  dist_grad_sync_stats(B->sync, NULL, NULL, &nbuckets);
  double w[3] = {B->wait_sync, B->wait_thread, B->ready_sync}, worst[3];
  MPI_Allreduce(w, worst, 3, MPI_DOUBLE, MPI_MAX, B->comm.comm);
  double med[MODE_COUNT];
  for (int m = 0; m < MODE_COUNT; m++) med[m] = median(t[m], reps);
  if (B->comm.rank != 0) return;
  printf("{\"ranks\": %d, \"layers\": %d, \"range_bytes\": %zu, \"bucket_bytes\": %zu, "
         "\"buckets\": %d, \"gemm_n\": %d, \"thp\": %d, \"reps\": %d",
         B->comm.size, B->K, B->range * sizeof(float), bucket_bytes, nbuckets, B->gemm_n, B->thp,
         reps);
  for (int m = 0; m < MODE_COUNT; m++)
    if (m != MODE_THREAD || B->thread_us) printf(", \"%s\": %.6f", mode_names[m], med[m]);
  printf(", \"ratio\": %.4f, \"ratio_mpi\": %.4f, \"ratio_blocking\": %.4f, \"wait_s\": %.6f, "
         "\"ready_s\": %.6f",
         med[MODE_SYNC] / med[MODE_DISABLED], med[MODE_SYNC_MPI] / med[MODE_DISABLED],
         med[MODE_BLOCKING] / med[MODE_DISABLED], worst[0] / reps, worst[2] / reps);
  if (B->thread_us)
    printf(", \"thread_us\": %d, \"ratio_thread\": %.4f, \"wait_thread_s\": %.6f", B->thread_us,
           med[MODE_THREAD] / med[MODE_DISABLED], worst[1] / reps);
  printf("}\n");
}

int main(int argc, char **argv) {
  bench B = {.K = 24, .gemm_n = 464, .range = 256 << 10, .gap = 16};
  const char *th = getenv("FERRY_BENCH_THREAD");
  B.thread_us = th ? atoi(th) : 0;
  B.thp = getenv("FERRY_BENCH_THP") && atoi(getenv("FERRY_BENCH_THP")) > 0;
  if (B.thread_us > 0) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (provided < MPI_THREAD_MULTIPLE) B.thread_us = 0;
  }
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
  for (int r = -1; rc == 0 && r < reps; r++) /* r == -1: warm-up */
    for (int m = 0; rc == 0 && m < MODE_COUNT; m++) {
      if (m == MODE_THREAD && !B.thread_us) continue;
      dist_grad_sync_set_enabled(B.sync, m != MODE_DISABLED);
      dist_grad_sync_set_alg(B.sync, m == MODE_SYNC_MPI ? DIST_SYNC_MPI : DIST_SYNC_AUTO);
      double dt = timed_step(&B, (mode)m, &rc);
      if (r >= 0) t[m][r] = dt;
      else B.wait_sync = B.wait_thread = B.ready_sync = 0;
    }
  if (rc != 0) {
    fprintf(stderr, "[%d] bench_overlap: %s\n", B.comm.rank, ferry_err_msg());
    dist_abort(&B.comm, 1);
  }
  print_json(&B, t, reps, bucket_kib * 1024);
  dist_grad_sync_free(&B.sync);
  MPI_Comm_free(&B.probe_comm);
  free(B.a);
  free(B.b);
  free(B.c);
  free(B.grads);
  free(B.ranges);
  for (int m = 0; m < MODE_COUNT; m++) free(t[m]);
  dist_finalize();
  return 0;
}
