/* `ferry train EXPERIMENT.yaml`: parse (every rank), train data-parallel,
 * print progress and write DIR/metrics.jsonl and DIR/summary.json (rank 0).
 * summary.json is written only when the run finished: a failed run never
 * looks complete. */
#include <cblas.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dist/comm.h"
#include "dist/topology.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/report_io.h"
#include "nn/err.h"
#include "launch/report.h"
#include "train/ckpt.h"
#include "train/transfer.h"
#include "train/trainer.h"

#define MAX_SETS 64

/* SIGTERM / SIGUSR1 (what Slurm sends before a time limit or preemption):
 * the first asks the trainer to checkpoint and stop at the next step on all
 * ranks; a second one ends the process at once. */
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
  if (stop_requested) _exit(128 + sig);
  stop_requested = 1;
}

static void install_stop_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

void launch_print_error(int rank) {
  const char *msg = ferry_err_msg();
  const char *what = ferry_err_code() == FERRY_ESTOPPED ? "stopped" : "error";
  fprintf(stderr, "[rank %d] ferry: %s: %s\n", rank, what, msg[0] ? msg : "unknown error");
  if (getenv("FERRY_DEBUG")) fprintf(stderr, "[rank %d]   at %s\n", rank, ferry_err_where());
}

void cmd_train_help(void) {
  printf(
      "usage: ferry train EXPERIMENT.yaml [--out DIR] [--set KEY=VALUE]... [--progress MODE]\n"
      "       mpirun -np N ferry train EXPERIMENT.yaml ...\n"
      "\n"
      "Trains the experiment's model on its training split, evaluates on the validation\n"
      "split after every epoch and on the test split at the end. With N ranks every\n"
      "global batch (train.batch) is split across the ranks and gradients are summed,\n"
      "so N changes the speed, not the result.\n"
      "\n"
      "options:\n"
      "  --out DIR          run directory (default: the file's `out`, else runs/NAME)\n"
      "  --set KEY=VALUE    override any key of the file, e.g. --set train.epochs=3,\n"
      "                     --set data.classes=[0,1,2], --set train.optimizer.lr=0.1;\n"
      "                     VALUE is YAML; repeat for several keys\n"
      "  --progress MODE    auto (live bar on a terminal, lines otherwise), bar, plain\n"
      "  --resume           continue from the newest valid checkpoint in the run\n"
      "                     directory (checkpoint.resume=latest); same run, same bits\n"
      "  --help             this text and the experiment file reference\n"
      "\n"
      "writes: DIR/metrics.jsonl  one JSON object per epoch: epoch, step, train_loss,\n"
      "                           train_acc, val_loss, val_acc, samples_per_s, epoch_s, lr\n"
      "        DIR/steps.jsonl    the global training loss every train.log_every steps\n"
      "        DIR/ckpt-STEP.ferry  checkpoints (see the checkpoint keys below)\n"
      "        DIR/summary.json   at the end: test_acc, test_loss, val_acc,\n"
      "                           train_samples_per_s, wall_s, steps, world_size,\n"
      "                           param_hash, ... (absent if the run failed)\n"
      "\n"
      "with a transfer section (a pipeline): the training above is the pre-training,\n"
      "        in DIR/pretrain; then one job per target x strategy x K x seed (x lr)\n"
      "        in DIR/jobs/<id> (log.txt says what a job loaded), DIR/results.jsonl\n"
      "        (a line per job, as results arrive) and DIR/report.md. Rank 0\n"
      "        coordinates and trains; the ranks form worker groups of\n"
      "        transfer.group_size, each training one job at a time. --resume skips\n"
      "        the jobs already finished.\n"
      "\n"
      "signals: SIGTERM or SIGUSR1 (Slurm's warning before a time limit or preemption)\n"
      "        on any rank: all ranks finish the current step, write a checkpoint and\n"
      "        exit with code 3; a second signal exits at once (128 + signal).\n"
      "\n"
      "exit codes: 0 finished, 1 runtime error, 2 usage error (arguments, experiment\n"
      "file, data files), 3 stopped by a signal after writing a checkpoint.\n"
      "\n"
      "experiment file keys (YAML; see docs/experiment-format.md for examples):\n");
  cfg_print_reference(stdout);
}

typedef struct {
  FILE *metrics;
  FILE *steps;
  FILE *log;      /* a transfer job's set-up notes (jobs/<id>/log.txt) */
  int quiet;      /* files only, no console lines (transfer jobs) */
  int bar;        /* live progress bar on stdout */
  double last_bar;
  int bar_shown;
} presenter;

static void on_start(void *ctx, const char *what) {
  presenter *pr = ctx;
  if (pr->quiet) { /* a transfer job: its own file, not the pipeline's console */
    if (pr->log) fprintf(pr->log, "%s\n", what);
    return;
  }
  printf("%s\n", what);
  fflush(stdout);
}

static void on_step(void *ctx, int epoch, int64_t step, int64_t total, double loss,
                    double elapsed) {
  presenter *pr = ctx;
  if (!pr->bar) return;
  if (elapsed - pr->last_bar < 0.1 && step != total) return;
  pr->last_bar = elapsed;
  int width = 30, done = total > 0 ? (int)(width * step / total) : width;
  char bar[64], eta[32], el[32];
  for (int i = 0; i < width; i++) bar[i] = i < done ? '=' : (i == done ? '>' : ' ');
  bar[width] = '\0';
  io_fmt_duration(el, sizeof el, elapsed);
  io_fmt_duration(eta, sizeof eta, step > 0 ? elapsed / (double)step * (double)(total - step) : 0);
  printf("\r[%s] epoch %d step %lld/%lld loss %.4f  %s ETA %s ", bar, epoch, (long long)step,
         (long long)total, loss, el, eta);
  fflush(stdout);
  pr->bar_shown = 1;
}

static void on_log(void *ctx, int epoch, int64_t step, double loss, double lr) {
  presenter *pr = ctx;
  if (!pr->steps) return;
  fprintf(pr->steps, "{\"epoch\": %d, \"step\": %lld, \"loss\": ", epoch, (long long)step);
  if (isfinite(loss))
    fprintf(pr->steps, "%.9g", loss);
  else
    fputs("null", pr->steps);
  fprintf(pr->steps, ", \"lr\": %.9g}\n", lr);
}

static void on_epoch(void *ctx, const train_epoch_stats *s) {
  presenter *pr = ctx;
  char eta[32];
  io_fmt_duration(eta, sizeof eta, s->eta_s);
  if (!pr->quiet) {
    if (pr->bar_shown) printf("\r\033[K");
    pr->bar_shown = 0;
    printf("epoch %d/%d  loss %.4f  acc %.4f", s->epoch, s->epochs, s->train_loss, s->train_acc);
    if (!isnan(s->val_acc)) printf("  val_loss %.4f  val_acc %.4f", s->val_loss, s->val_acc);
    printf("  %.0f samples/s  %.1fs  ETA %s\n", s->samples_per_s, s->epoch_s, eta);
    fflush(stdout);
  }
  if (pr->metrics) {
    FILE *f = pr->metrics;
    fprintf(f, "{\"epoch\": %d, \"step\": %lld, \"train_loss\": ", s->epoch, (long long)s->step);
    json_num(f, s->train_loss);
    fputs(", \"train_acc\": ", f);
    json_num(f, s->train_acc);
    fputs(", \"val_loss\": ", f);
    json_num(f, s->val_loss);
    fputs(", \"val_acc\": ", f);
    json_num(f, s->val_acc);
    fputs(", \"samples_per_s\": ", f);
    json_num(f, s->samples_per_s);
    fputs(", \"epoch_s\": ", f);
    json_num(f, s->epoch_s);
    fputs(", \"lr\": ", f);
    json_num(f, s->lr);
    fputs("}\n", f);
    fflush(f);
  }
}

static int write_summary(const char *dir, const exp_experiment *e, const train_summary *s) {
  char path[EXP_PATH_MAX + 32], tmp[EXP_PATH_MAX + 40];
  snprintf(path, sizeof path, "%s/summary.json", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  CHECK_RT(f, "cannot write %s", tmp);
  fputs("{\n  \"name\": ", f);
  json_str(f, e->name);
  fputs(",\n  \"status\": \"finished\",\n  \"test_acc\": ", f);
  json_num(f, s->test_acc);
  fputs(",\n  \"test_loss\": ", f);
  json_num(f, s->test_loss);
  fputs(",\n  \"val_acc\": ", f);
  json_num(f, s->val_acc);
  fputs(",\n  \"train_samples_per_s\": ", f);
  json_num(f, s->train_samples_per_s);
  fputs(",\n  \"train_s\": ", f);
  json_num(f, s->train_s);
  fputs(",\n  \"wall_s\": ", f);
  json_num(f, s->wall_s);
  fputs(",\n  \"sync_wait_s\": ", f);
  json_num(f, s->sync_wait_s);
  fputs(",\n  \"rss_mb_per_rank\": [", f);
  for (int r = 0; r < s->world && r < 64; r++) {
    if (r) fputs(", ", f);
    json_num(f, s->rss_mb[r]);
  }
  fputs("],\n  \"tasks\": {", f);
  for (int k = 0; k < s->ntasks; k++) {
    fputs(k ? ", " : "", f);
    json_str(f, s->task_name[k]);
    fputs(": {\"test_acc\": ", f);
    json_num(f, s->task_acc[k]);
    fputs(", \"weight\": ", f);
    json_num(f, s->task_weight[k]);
    fputs("}", f);
  }
  fprintf(f, "},\n  \"deterministic\": %s,\n  \"shards\": %d,\n  \"skipped_steps\": %lld",
          e->deterministic ? "true" : "false", e->shards, (long long)s->skipped_steps);
  fprintf(f,
          ",\n  \"steps\": %lld,\n  \"epochs\": %d,\n  \"n_train\": %lld,\n  \"n_val\": %lld,\n"
          "  \"n_test\": %lld,\n  \"nparams\": %zu,\n  \"world_size\": %d,\n"
          "  \"param_hash\": \"%016llx\",\n  \"trunk_hash\": \"%016llx\",\n"
          "  \"experiment_hash\": \"%016llx\",\n"
          "  \"ferry_version\": \"%s\"\n}\n",
          (long long)s->steps, s->epochs, (long long)s->n_train, (long long)s->n_val,
          (long long)s->n_test, s->nparams, s->world, (unsigned long long)s->param_hash,
          (unsigned long long)s->trunk_hash, (unsigned long long)e->text_hash, FERRY_VERSION);
  int bad = ferror(f);
  bad |= fclose(f);
  CHECK_RT(!bad && rename(tmp, path) == 0, "cannot write %s", path);
  return 0;
}

/* Rank 0 prepares the run directory; the result is agreed by all ranks. */
/* The experiment text a checkpoint stores: the file, then the overrides as
 * comment lines. *out owned by the caller. */
static int read_experiment_text(const char *path, const char *const *sets, int nsets, char **out) {
  FILE *f = fopen(path, "rb");
  CHECK_USER(f, "%s: cannot open", path);
  size_t cap = 1 << 12, n = 0;
  char *buf = malloc(cap);
  size_t k;
  while (buf && (k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
    n += k;
    if (n + 1 == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  fclose(f);
  CHECK_ALLOC(buf, cap);
  buf[n] = '\0';
  for (int i = 0; i < nsets; i++) {
    size_t add = strlen(sets[i]) + 16;
    char *nb = realloc(buf, n + add + 1);
    if (!nb) free(buf);
    CHECK_ALLOC(nb, n + add + 1);
    buf = nb;
    n += (size_t)snprintf(buf + n, add + 1, "\n# --set %s", sets[i]);
  }
  *out = buf;
  return 0;
}

static int prepare_out(const char *dir, int append, presenter *pr) {
  CHECK_CALL(io_mkdirs(dir));
  char path[EXP_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/summary.json", dir);
  unlink(path); /* a stale summary must not describe this run */
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  pr->metrics = fopen(path, append ? "a" : "w");
  CHECK_RT(pr->metrics, "cannot write %s (is the directory writable?)", path);
  snprintf(path, sizeof path, "%s/steps.jsonl", dir);
  pr->steps = fopen(path, append ? "a" : "w");
  CHECK_RT(pr->steps, "cannot write %s (is the directory writable?)", path);
  return 0;
}

/* ---- the transfer stage's presentation (rank 0) ---------------------------- */

typedef struct {
  presenter job;       /* the running job's files (no console lines) */
  const exp_experiment *je; /* the running job */
  const exp_experiment *e;  /* the pipeline's experiment */
  FILE *results;       /* RUN_DIR/results.jsonl */
  const char *root;    /* RUN_DIR (the report is rewritten as results arrive) */
  double t0;
  int done, failed;
} pipeline;

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Leader of the group that runs a job: its metrics file. */
static void on_job_start(void *ctx, const transfer_result *r, const exp_experiment *je) {
  pipeline *pl = ctx;
  pl->je = je;
  memset(&pl->job, 0, sizeof pl->job);
  pl->job.quiet = 1;
  char path[EXP_PATH_MAX + 32];
  if (io_mkdirs(r->dir) == 0) {
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    pl->job.metrics = fopen(path, "w");
    snprintf(path, sizeof path, "%s/log.txt", r->dir);
    pl->job.log = fopen(path, "w");
  }
}

static void on_job_end(void *ctx, const transfer_result *r, const exp_experiment *je) {
  pipeline *pl = ctx;
  if (pl->job.metrics) fclose(pl->job.metrics);
  if (pl->job.log) fclose(pl->job.log);
  pl->job.metrics = pl->job.log = NULL;
  if (r->ok && write_summary(r->dir, je, &r->sum)) ferry_err_clear();
}

static void progress_prefix(const transfer_progress *p, char *buf, size_t n) {
  char etab[32];
  io_fmt_duration(etab, sizeof etab, p->eta_s);
  snprintf(buf, n, "[%d/%d done, %d failed, %d running, ETA %s]", p->done, p->total, p->failed,
           p->running, etab);
}

/* Coordinator: a failed run that goes back into the queue. */
static void on_retry(void *ctx, const transfer_result *r, const transfer_progress *p) {
  (void)ctx;
  char pre[128];
  progress_prefix(p, pre, sizeof pre);
  printf("%s %s failed (attempt %d, lr %g, group %d): %s; retrying at a lower learning rate\n",
         pre, r->id, r->attempt + 1, (double)r->lr, r->group, r->reason);
  fflush(stdout);
}

/* Appends ", " (unless first) and a formatted item to buf[0..n), at *len. */
static void add_item(char *buf, size_t n, size_t *len, const char *fmt, ...) {
  va_list ap;
  if (*len + 1 >= n) return;
  if (*len) *len += (size_t)snprintf(buf + *len, n - *len, ", ");
  if (*len + 1 >= n) return;
  va_start(ap, fmt);
  int w = vsnprintf(buf + *len, n - *len, fmt, ap);
  va_end(ap);
  if (w > 0) *len += (size_t)w < n - *len ? (size_t)w : n - *len - 1;
}

/* The finetune options that differ from the defaults, as "key value, ...";
 * returns 0 when there are none. The report names them next to its rows. */
static int finetune_options(const exp_job *j, char *buf, size_t n) {
  size_t len = 0;
  buf[0] = '\0';
  if (j->trunk_lr_mult > 0 && j->trunk_lr_mult != 1)
    add_item(buf, n, &len, "trunk_lr_mult %g", (double)j->trunk_lr_mult);
  if (j->unfreeze_last > 0) add_item(buf, n, &len, "unfreeze_last %d", j->unfreeze_last);
  if (j->reinit_last > 0) add_item(buf, n, &len, "reinit_last %d", j->reinit_last);
  if (j->gradual_every > 0) add_item(buf, n, &len, "gradual_every %d", j->gradual_every);
  if (j->l2sp > 0) add_item(buf, n, &len, "l2sp %g", (double)j->l2sp);
  if (j->patience > 0) add_item(buf, n, &len, "patience %d", j->patience);
  return len > 0;
}

/* Coordinator: a job's final result goes to the console and results.jsonl,
 * and the report is rewritten, as results arrive. */
static void on_result(void *ctx, const transfer_result *r, const transfer_progress *p) {
  pipeline *pl = ctx;
  pl->done++;
  pl->failed += !r->ok;
  char pre[128];
  progress_prefix(p, pre, sizeof pre);
  if (r->ok)
    printf("%s %s test_acc %.4f  %.1fs  (group %d, %d rank%s)\n", pre, r->id, r->sum.test_acc,
           r->sum.wall_s, r->group, r->ranks, r->ranks == 1 ? "" : "s");
  else
    printf("%s %s FAILED (group %d): %s\n", pre, r->id, r->group, r->reason);
  fflush(stdout);
  FILE *f = pl->results;
  if (!f) return;
  fputs("{\"job\": ", f);
  json_str(f, r->id);
  fputs(", \"target\": ", f);
  json_str(f, r->target);
  fputs(", \"strategy\": ", f);
  json_str(f, exp_strategy_names[r->strategy]);
  fprintf(f, ", \"k\": %d, \"seed\": %lld, \"status\": \"%s\"", r->k, (long long)r->seed,
          r->ok ? "ok" : "failed");
  fprintf(f, ", \"lr\": %.6g", (double)r->lr);
  fprintf(f, ", \"attempt\": %d, \"group\": %d, \"ranks\": %d", r->attempt, r->group, r->ranks);
  if (!r->ok) {
    fputs(", \"reason\": ", f);
    json_str(f, r->reason);
  } else {
    fputs(", \"test_acc\": ", f);
    json_num(f, r->sum.test_acc);
    fputs(", \"test_loss\": ", f);
    json_num(f, r->sum.test_loss);
    fputs(", \"val_acc\": ", f);
    json_num(f, r->sum.val_acc);
    fputs(", \"wall_s\": ", f);
    json_num(f, r->sum.wall_s);
    fputs(", \"train_s\": ", f);
    json_num(f, r->sum.train_s);
    fputs(", \"job_s\": ", f);
    json_num(f, r->job_s);
    if (r->checkpoint[0]) {
      fputs(", \"checkpoint\": ", f);
      json_str(f, r->checkpoint);
    }
    char opts[256];
    if (r->strategy == EXP_STRAT_FINETUNE && finetune_options(&pl->e->transfer.finetune, opts, sizeof opts)) {
      fputs(", \"options\": ", f);
      json_str(f, opts);
    }
    if (r->pretrained[0]) {
      fputs(", \"pretrained\": ", f);
      json_str(f, r->pretrained);
    }
    fprintf(f, ", \"steps\": %lld, \"param_hash\": \"%016llx\", \"curve\": \"jobs/%s/metrics.jsonl\"",
            (long long)r->sum.steps, (unsigned long long)r->sum.param_hash, r->id);
    if (r->strategy == EXP_STRAT_FEATURE) {
      fputs(", \"extra\": {\"feature_cache_speedup\": ", f);
      json_num(f, r->sum.feature_cache_speedup);
      fputs("}", f);
    } else if (r->strategy == EXP_STRAT_PROBE) {
      fputs(", \"extra\": {\"lambda\": ", f);
      json_num(f, r->sum.probe_lambda);
      fputs(", \"solve_s\": ", f);
      json_num(f, r->sum.probe_solve_s);
      fputs("}", f);
    }
  }
  fputs("}\n", f);
  fflush(f);
  if (pl->root && report_write(pl->root, 0)) ferry_err_clear();
}

/* Jobs already finished in RUN_DIR/results.jsonl (a rerun skips them). */
static void finished_jobs(const exp_experiment *e, const char *root, unsigned char *skip, int n) {
  char path[EXP_PATH_MAX + 32], line[8192];
  snprintf(path, sizeof path, "%s/results.jsonl", root);
  FILE *f = fopen(path, "r");
  if (!f) return;
  exp_experiment *je = malloc(sizeof *je);
  char(*want)[200] = calloc((size_t)n, sizeof *want);
  transfer_result r;
  for (int i = 0; je && want && i < n; i++)
    if (!transfer_job(e, root, NULL, i, je, &r)) snprintf(want[i], sizeof want[i], "{\"job\": \"%s\"", r.id);
  ferry_err_clear();
  while (je && want && fgets(line, sizeof line, f)) {
    if (!strstr(line, "\"status\": \"ok\"")) continue;
    for (int i = 0; i < n; i++)
      if (want[i][0] && !strncmp(line, want[i], strlen(want[i]))) skip[i] = 1;
  }
  free(want);
  free(je);
  fclose(f);
}

/* After pre-training: the transfer jobs, then the report. Collective. */
static int run_transfer(exp_experiment *e, const char *root, const transfer_pretrained *pre,
                        const dist_comm *world) {
  int n = transfer_njobs(&e->transfer);
  unsigned char *skip = calloc((size_t)n, 1);
  CHECK_ALLOC(skip, (size_t)n);
  pipeline pl;
  memset(&pl, 0, sizeof pl);
  pl.t0 = wall_now();
  int rc = 0;
  if (world->rank == 0) {
    if (e->resume[0]) finished_jobs(e, root, skip, n);
    char path[EXP_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/results.jsonl", root);
    pl.results = fopen(path, e->resume[0] ? "a" : "w");
    if (!pl.results) rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "cannot write %s", path);
    int skipped = 0;
    for (int i = 0; i < n; i++) skipped += skip[i];
    int g = e->transfer.group_size <= 0 || e->transfer.group_size > world->size
                ? world->size
                : e->transfer.group_size;
    int lrs = e->transfer.nlrs > 0 ? e->transfer.nlrs : 1;
    printf("transfer: %d jobs (%d targets x %d strategies x %d K x %d seeds x %d lr) from %s%s\n",
           n, e->transfer.ntargets, e->transfer.nstrategies, e->transfer.nk, e->transfer.nseeds,
           lrs, pre->path[0], pre->n > 1 ? " (the first seed's; one pre-trained model per seed)" : "");
    printf("transfer: %d worker group%s of %d rank%s; rank 0 coordinates and trains in group 0\n",
           (world->size + g - 1) / g, (world->size + g - 1) / g == 1 ? "" : "s", g, g == 1 ? "" : "s");
    if (skipped) printf("transfer: %d jobs already finished in %s/results.jsonl: skipped\n", skipped, root);
    fflush(stdout);
  }
  int first;
  if (!rc) rc = dist_bcast(world, skip, (size_t)n, 0);
  if (dist_agree(world, rc, &first)) {
    free(skip);
    if (pl.results) fclose(pl.results);
    return rc ? rc : FERRY_ERUNTIME;
  }
  train_hooks jh = {.on_epoch = on_epoch, .on_start = on_start, .ctx = &pl.job};
  pl.job.quiet = 1;
  pl.root = world->rank == 0 ? root : NULL;
  pl.e = e;
  transfer_hooks th = {.on_job_start = on_job_start, .on_job_end = on_job_end,
                       .on_result = on_result, .on_retry = on_retry, .job_hooks = &jh, .ctx = &pl};
  rc = transfer_run(e, root, pre, skip, world, &th);
  free(skip);
  if (pl.results) fclose(pl.results);
  if (rc) return rc;
  if (world->rank == 0) {
    printf("transfer: %d jobs run, %d failed, %.1fs\n", pl.done, pl.failed, wall_now() - pl.t0);
    rc = report_write(root, 1);
    if (!rc) printf("report: %s/report.md, %s/report.json\n", root, root);
    fflush(stdout);
  }
  return rc;
}

/* One training run in e->out_dir (a plain run, or a pipeline's pre-training):
 * rank 0 prepares the directory and writes summary.json at the end; every
 * rank trains. Collective. A failure all ranks know of comes back with
 * sum->setup_failed set and sum->failed_rank the rank that can say why. */
static int train_in_dir(exp_experiment *e, const dist_comm *world, train_summary *sum) {
  presenter pr = {0};
  int rc = 0;
  memset(sum, 0, sizeof *sum);
  sum->failed_rank = -1;
  if (world->rank == 0) rc = prepare_out(e->out_dir, e->resume[0] != 0, &pr);
  int first = -1, agreed = dist_agree(world, rc, &first);
  if (agreed) {
    if (pr.metrics) fclose(pr.metrics);
    if (pr.steps) fclose(pr.steps);
    sum->setup_failed = 1;
    sum->failed_rank = first;
    return agreed;
  }
  pr.bar = e->progress == 1 || (e->progress == -1 && isatty(STDOUT_FILENO));
  train_hooks hooks = {.on_step = on_step, .on_epoch = on_epoch, .on_start = on_start,
                       .on_log = on_log, .stop = &stop_requested, .ctx = &pr};
  rc = train_run(e, world, &hooks, sum);
  if (!rc && world->rank == 0) {
    rc = write_summary(e->out_dir, e, sum);
    if (!rc)
      printf("test_acc %.4f  test_loss %.4f  %.0f train samples/s  wall %.1fs  -> %s/summary.json\n",
             sum->test_acc, sum->test_loss, sum->train_samples_per_s, sum->wall_s, e->out_dir);
    for (int k = 0; !rc && k < sum->ntasks; k++)
      printf("  task %-12s test_acc %.4f  weight %.3f\n", sum->task_name[k], sum->task_acc[k],
             sum->task_weight[k]);
  }
  if (pr.metrics) fclose(pr.metrics);
  if (pr.steps) fclose(pr.steps);
  return rc;
}

int cmd_train(int argc, char **argv) {
  const char *file = NULL, *out = NULL, *progress = NULL;
  int resume = 0;
  const char *sets[MAX_SETS];
  int nsets = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      cmd_train_help();
      return 0;
    } else if ((!strcmp(a, "--out") || !strcmp(a, "--set") || !strcmp(a, "--progress")) &&
               i + 1 >= argc) {
      fprintf(stderr, "ferry train: %s needs a value\n", a);
      return 2;
    } else if (!strcmp(a, "--resume")) {
      resume = 1;
    } else if (!strcmp(a, "--out")) {
      out = argv[++i];
    } else if (!strcmp(a, "--progress")) {
      progress = argv[++i];
    } else if (!strcmp(a, "--set")) {
      if (nsets == MAX_SETS) {
        fprintf(stderr, "ferry train: at most %d --set options\n", MAX_SETS);
        return 2;
      }
      sets[nsets++] = argv[++i];
    } else if (!strncmp(a, "--set=", 6) && nsets < MAX_SETS) {
      sets[nsets++] = a + 6;
    } else if (a[0] == '-') {
      fprintf(stderr, "ferry train: unknown option %s (see ferry train --help)\n", a);
      return 2;
    } else if (!file) {
      file = a;
    } else {
      fprintf(stderr, "ferry train: more than one experiment file (%s, %s)\n", file, a);
      return 2;
    }
  }
  if (!file) {
    fprintf(stderr, "usage: ferry train EXPERIMENT.yaml [--out DIR] [--set KEY=VALUE]...\n");
    return 2;
  }
  if (progress && strcmp(progress, "auto") && strcmp(progress, "bar") && strcmp(progress, "plain")) {
    fprintf(stderr, "ferry train: --progress expects auto, bar or plain, found \"%s\"\n", progress);
    return 2;
  }
  dist_comm world;
  if (dist_init(&argc, &argv, &world)) {
    launch_print_error(0);
    return 1;
  }
  static exp_experiment e;
  int rc = cfg_load(&e, file, sets, nsets);
  if (!rc && out) snprintf(e.out_dir, sizeof e.out_dir, "%s", out);
  if (!rc && resume) snprintf(e.resume, sizeof e.resume, "latest");
  if (!rc && e.transfer.enabled) {
    /* Checked before pre-training, not after it: each rank of a worker
     * group needs one of a job's logical shards. */
    int g = e.transfer.group_size <= 0 || e.transfer.group_size > world.size ? world.size
                                                                             : e.transfer.group_size;
    if (g > e.transfer.shards)
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "worker groups of %d ranks but transfer.shards is %d: every rank of a "
                         "group needs a shard of the job's data; set transfer.group_size <= %d "
                         "(or raise transfer.shards)", g, e.transfer.shards, e.transfer.shards);
  }
  if (!rc && e.transfer.enabled && e.transfer.pretrain_per_seed && e.resume[0] &&
      strcmp(e.resume, "latest"))
    rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                       "checkpoint.resume names one pre-trained model (%s) but "
                       "transfer.pretrain_per_seed wants one per seed: drop one of the two",
                       e.resume);
  char root[EXP_PATH_MAX];
  snprintf(root, sizeof root, "%s", e.out_dir);
  if (!rc && e.transfer.enabled) e.ckpt_every_epoch = e.ckpt_every_epoch || e.ckpt_every_steps == 0;
  char *text = NULL;
  if (!rc) rc = read_experiment_text(file, sets, nsets, &text);
  e.text = text;
  if (progress) e.progress = !strcmp(progress, "bar") ? 1 : !strcmp(progress, "plain") ? 0 : -1;
  /* Test and bench hooks, documented in tests/ and bench/: never set them in
   * production runs. */
  const char *fault = getenv("FERRY_FAULT");
  if (fault) snprintf(e.fault, sizeof e.fault, "%s", fault);
  e.bench_no_sync = getenv("FERRY_BENCH_NO_SYNC") != NULL;
  int first = -1, agreed = dist_agree(&world, rc, &first);
  if (agreed) {
    /* Every rank read the same file: one message, from the first failing rank. */
    if (rc && world.rank == first) launch_print_error(world.rank);
    free(text);
    dist_finalize();
    return agreed;
  }
  /* The layout, once: hosts, ranks per host, BLAS threads, MPI transport. */
  dist_topology topo;
  if (dist_topology_describe(&world, e.threads > 0 ? e.threads : openblas_get_num_threads(), &topo)) {
    launch_print_error(world.rank);
    dist_abort(&world, 1);
  }
  if (world.rank == 0) {
    printf("ferry %s: %s; run directory %s\n", FERRY_VERSION, topo.line, root);
    if (topo.warn[0]) fprintf(stderr, "%s\n", topo.warn);
    fflush(stdout);
  }
  install_stop_handlers();
  /* A pipeline pre-trains in RUN_DIR/pretrain (or once per transfer seed s,
   * with seed + s, in RUN_DIR/pretrain.s<s>), then runs the jobs in
   * RUN_DIR/jobs. */
  static transfer_pretrained pre;
  int nruns = e.transfer.enabled && e.transfer.pretrain_per_seed ? e.transfer.nseeds : 1;
  uint64_t seed0 = e.seed;
  train_summary sum;
  memset(&sum, 0, sizeof sum);
  sum.failed_rank = -1;
  for (int i = 0; !rc && i < nruns; i++) {
    if (e.transfer.enabled && nruns > 1) {
      e.seed = seed0 + (uint64_t)e.transfer.seeds[i];
      snprintf(e.out_dir, sizeof e.out_dir, "%.*s/pretrain.s%lld", (int)sizeof e.out_dir - 32, root,
               (long long)e.transfer.seeds[i]);
      if (world.rank == 0) {
        printf("pre-training %d/%d: seed %llu (for the jobs of transfer seed %lld) in %s\n", i + 1,
               nruns, (unsigned long long)e.seed, (long long)e.transfer.seeds[i], e.out_dir);
        fflush(stdout);
      }
    } else if (e.transfer.enabled) {
      snprintf(e.out_dir, sizeof e.out_dir, "%.*s/pretrain", (int)sizeof e.out_dir - 10, root);
    }
    rc = train_in_dir(&e, &world, &sum);
    if (!rc && e.transfer.enabled) {
      /* The pre-training's final checkpoint; or, resumed from a checkpoint
       * file elsewhere with no steps left to train, that file (rank 0
       * looks; its path goes to every rank, only rank 0 reads checkpoints). */
      rc = ckpt_path_for_step(pre.path[i], sizeof pre.path[i], e.out_dir, sum.steps);
      if (!rc && world.rank == 0 && access(pre.path[i], R_OK) != 0 && e.resume[0] &&
          strcmp(e.resume, "latest"))
        snprintf(pre.path[i], sizeof pre.path[i], "%s", e.resume);
      if (!rc) rc = dist_bcast(&world, pre.path[i], sizeof pre.path[i], 0);
      pre.n = i + 1;
    }
  }
  e.seed = seed0;
  if (!rc && e.transfer.enabled) {
    int who = -1;
    rc = dist_agree(&world, rc, &who);
    if (!rc) rc = run_transfer(&e, root, &pre, &world);
  }
  free(text);
  if (rc && sum.setup_failed) {
    /* Every rank knows; the rank that holds the cause says it, once. */
    if (world.rank == sum.failed_rank) launch_print_error(world.rank);
    dist_finalize();
    return rc;
  }
  if (rc) {
    launch_print_error(world.rank);
    /* Others may be inside a collective: end the whole job now. */
    dist_abort(&world, rc);
  }
  dist_finalize();
  return 0;
}
