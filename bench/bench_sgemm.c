/* bench_sgemm: the compute ceiling a ferry training step is measured against.
 * Times cblas_sgemm on the MLP's shapes at a given batch (forward, weight
 * gradient, input gradient of 784-256-128-10) and on 1024^3, at 1 and N
 * OpenBLAS threads; prints one JSON document with median GFLOP/s per shape. */
#include <cblas.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MAX_THREAD_RUNS = 16, MAX_REPS = 1000 };

/* One sgemm problem, row-major: C[m,n] = op(A)[m,k] . op(B)[k,n]. */
typedef struct {
  const char *name;
  const char *what; /* which training-step product this is */
  int m, n, k;
  bool trans_a, trans_b;
} bench_shape;

typedef struct {
  double median, min, max; /* GFLOP/s over the repetitions */
  double median_s;         /* seconds per call at the median rate */
} bench_stat;

typedef struct {
  int threads_list[MAX_THREAD_RUNS];
  int n_threads;
  int reps;
  double min_rep_s; /* each repetition loops calls until it lasts this long */
  int batch;
} bench_opts;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The weight of layer l is stored [out, in] (PyTorch's nn.Linear layout):
 * forward  Y  = X . W^T          m=B   n=out k=in
 * wgrad    dW = dY^T . X         m=out n=in  k=B
 * igrad    dX = dY . W           m=B   n=in  k=out  (layers 2, 3 only: the
 *                                input image needs no gradient) */
static int mlp_shapes(bench_shape *out, int batch) {
  static const int dims[4] = {784, 256, 128, 10};
  static const char *fwd[3] = {"fwd1", "fwd2", "fwd3"};
  static const char *wg[3] = {"wgrad1", "wgrad2", "wgrad3"};
  static const char *ig[3] = {"igrad1", "igrad2", "igrad3"};
  int n = 0;
  for (int l = 0; l < 3; l++)
    out[n++] = (bench_shape){fwd[l], "forward X.W^T", batch, dims[l + 1], dims[l], false, true};
  for (int l = 0; l < 3; l++)
    out[n++] = (bench_shape){wg[l], "weight grad dY^T.X", dims[l + 1], dims[l], batch, true, false};
  for (int l = 1; l < 3; l++)
    out[n++] = (bench_shape){ig[l], "input grad dY.W", batch, dims[l], dims[l + 1], false, false};
  return n;
}

static void run_gemm(const bench_shape *s, const float *a, const float *b, float *c) {
  int lda = s->trans_a ? s->m : s->k;
  int ldb = s->trans_b ? s->k : s->n;
  cblas_sgemm(CblasRowMajor, s->trans_a ? CblasTrans : CblasNoTrans,
              s->trans_b ? CblasTrans : CblasNoTrans, s->m, s->n, s->k, 1.0f, a, lda, b,
              ldb, 0.0f, c, s->n);
}

/* Times `reps` repetitions of one shape; each repetition repeats the call
 * enough times to last opts->min_rep_s, so tiny shapes are not clock noise. */
static bench_stat time_shape(const bench_shape *s, const bench_opts *o, const float *a,
                             const float *b, float *c) {
  double flops = 2.0 * s->m * s->n * s->k;
  double rates[MAX_REPS];
  long calls = 1;
  run_gemm(s, a, b, c); /* warm-up: thread pool, caches, page faults */
  for (;;) {            /* calibrate calls per repetition */
    double t0 = now_s();
    for (long i = 0; i < calls; i++) run_gemm(s, a, b, c);
    double dt = now_s() - t0;
    if (dt >= o->min_rep_s || calls >= (1L << 30)) break;
    calls = dt > 0 ? (long)(calls * 1.2 * o->min_rep_s / dt) + 1 : calls * 10;
  }
  for (int r = 0; r < o->reps; r++) {
    double t0 = now_s();
    for (long i = 0; i < calls; i++) run_gemm(s, a, b, c);
    double dt = now_s() - t0;
    rates[r] = flops * (double)calls / dt * 1e-9;
  }
  qsort(rates, (size_t)o->reps, sizeof rates[0], cmp_double);
  bench_stat st = {rates[o->reps / 2], rates[0], rates[o->reps - 1], 0.0};
  if (o->reps % 2 == 0) st.median = 0.5 * (rates[o->reps / 2 - 1] + rates[o->reps / 2]);
  st.median_s = flops / (st.median * 1e9);
  return st;
}

static void print_json_string(const char *s) {
  putchar('"');
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

static void print_shape(const bench_shape *s, const bench_stat *st, bool last) {
  printf("      {\"name\": \"%s\", \"what\": \"%s\", \"m\": %d, \"n\": %d, \"k\": %d, "
         "\"trans_a\": %s, \"trans_b\": %s, \"gflops\": %.2f, \"gflops_min\": %.2f, "
         "\"gflops_max\": %.2f, \"us_per_call\": %.3f}%s\n",
         s->name, s->what, s->m, s->n, s->k, s->trans_a ? "true" : "false",
         s->trans_b ? "true" : "false", st->median, st->min, st->max, st->median_s * 1e6,
         last ? "" : ",");
}

/* One thread count: all MLP shapes then 1024^3. mlp_step_gflops is the rate
 * of the whole step's GEMMs (total FLOPs over summed median times), i.e. what
 * a training step could reach if it did nothing but these calls. */
static void run_threads(int threads, const bench_opts *o, const float *a, const float *b,
                        float *c, bool last) {
  bench_shape shapes[9];
  int n = mlp_shapes(shapes, o->batch);
  shapes[n++] = (bench_shape){"sq1024", "square 1024^3", 1024, 1024, 1024, false, false};
  openblas_set_num_threads(threads);
  int got = openblas_get_num_threads();
  double step_flops = 0, step_s = 0, peak = 0;
  bench_stat stats[9];
  for (int i = 0; i < n; i++) {
    stats[i] = time_shape(&shapes[i], o, a, b, c);
    if (i < n - 1) {
      step_flops += 2.0 * shapes[i].m * shapes[i].n * shapes[i].k;
      step_s += stats[i].median_s;
    }
    if (stats[i].median > peak) peak = stats[i].median;
  }
  printf("    {\"threads\": %d, \"openblas_threads\": %d,\n", threads, got);
  printf("     \"peak_gflops\": %.2f, \"sq1024_gflops\": %.2f, \"mlp_step_gflops\": %.2f,\n",
         peak, stats[n - 1].median, step_flops / step_s * 1e-9);
  printf("     \"shapes\": [\n");
  for (int i = 0; i < n; i++) print_shape(&shapes[i], &stats[i], i == n - 1);
  printf("    ]}%s\n", last ? "" : ",");
}

static int parse_threads(const char *arg, bench_opts *o) {
  o->n_threads = 0;
  const char *p = arg;
  while (*p) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || v < 1 || v > 1024 || o->n_threads == MAX_THREAD_RUNS ||
        (*end && *end != ',')) {
      fprintf(stderr, "bench_sgemm: --threads expects a comma list of counts 1..1024 "
                      "(at most %d), found '%s'\n", MAX_THREAD_RUNS, arg);
      return 1;
    }
    o->threads_list[o->n_threads++] = (int)v;
    p = *end ? end + 1 : end;
  }
  return o->n_threads ? 0 : 1;
}

static int parse_int(const char *flag, const char *arg, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (end == arg || *end || errno || v < lo || v > hi) {
    fprintf(stderr, "bench_sgemm: %s expects an integer %d..%d, found '%s'\n", flag, lo, hi,
            arg);
    return 1;
  }
  *out = (int)v;
  return 0;
}

/* Returns 0 to run, 1 on a bad argument, -1 after printing --help. */
static int parse_args(int argc, char **argv, bench_opts *o) {
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  o->threads_list[0] = 1;
  o->n_threads = 1;
  if (ncpu > 1) o->threads_list[o->n_threads++] = (int)(ncpu < 1024 ? ncpu : 1024);
  o->reps = 9;
  o->min_rep_s = 0.02;
  o->batch = 128;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "-h") || !strcmp(flag, "--help")) {
      printf("usage: bench_sgemm [--threads 1,2] [--reps 9] [--min-ms 20] [--batch 128]\n"
             "Prints JSON: median sgemm GFLOP/s per MLP shape and for 1024^3.\n");
      return -1;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "bench_sgemm: unknown or incomplete argument '%s' (see --help)\n", flag);
      return 1;
    }
    const char *val = argv[++i];
    int ms;
    if (!strcmp(flag, "--threads")) {
      if (parse_threads(val, o)) return 1;
    } else if (!strcmp(flag, "--reps")) {
      if (parse_int(flag, val, 1, MAX_REPS, &o->reps)) return 1;
    } else if (!strcmp(flag, "--min-ms")) {
      if (parse_int(flag, val, 1, 100000, &ms)) return 1;
      o->min_rep_s = ms * 1e-3;
    } else if (!strcmp(flag, "--batch")) {
      if (parse_int(flag, val, 1, 1 << 20, &o->batch)) return 1;
    } else {
      fprintf(stderr, "bench_sgemm: unknown argument '%s' (see --help)\n", flag);
      return 1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  bench_opts o;
  int rc = parse_args(argc, argv, &o);
  if (rc) return rc < 0 ? 0 : 2;
  /* Every operand fits in the larger of 1024^2 and batch*784 floats. */
  size_t elems = (size_t)o.batch * 784;
  if (elems < 1024 * 1024) elems = 1024 * 1024;
  float *a = malloc(elems * sizeof *a), *b = malloc(elems * sizeof *b);
  float *c = malloc(elems * sizeof *c);
  if (!a || !b || !c) {
    fprintf(stderr, "bench_sgemm: cannot allocate 3 x %zu floats\n", elems);
    free(a);
    free(b);
    free(c);
    return 1;
  }
  unsigned s = 12345u;
  for (size_t i = 0; i < elems; i++) {
    s = s * 1664525u + 1013904223u;
    a[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    b[i] = (float)(s >> 9) / 8388608.0f - 0.5f;
    c[i] = 0.0f;
  }
  printf("{\"bench\": \"sgemm\", \"openblas_config\": ");
  print_json_string(openblas_get_config());
  printf(", \"openblas_core\": ");
  print_json_string(openblas_get_corename());
  printf(", \"batch\": %d, \"reps\": %d, \"min_rep_ms\": %.0f,\n  \"runs\": [\n", o.batch,
         o.reps, o.min_rep_s * 1e3);
  for (int t = 0; t < o.n_threads; t++)
    run_threads(o.threads_list[t], &o, a, b, c, t == o.n_threads - 1);
  printf("  ]}\n");
  free(a);
  free(b);
  free(c);
  return 0;
}
