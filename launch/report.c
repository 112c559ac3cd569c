/* The transfer report: reads RUN_DIR/results.jsonl (schema checked line by
 * line), aggregates jobs into target x K x strategy rows over seeds, compares
 * each transfer strategy with scratch, and writes report.md / report.json
 * atomically. Plots are in report_plot.c; the line reader in report_json.c. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launch/report.h"
#include "launch/report_io.h"
#include "nn/err.h"

const char report_rule_text[] =
    "A transfer strategy is flagged NEGATIVE TRANSFER when its mean test accuracy is below the "
    "scratch baseline of the same target and K by more than two standard errors of the "
    "difference: gain < -2 SE, where gain = mean(strategy) - mean(scratch) in accuracy points "
    "and SE = sqrt(s1^2/n1 + s2^2/n2) (s: sample standard deviation over finished seeds, n: "
    "number of finished seeds). When either side has a single finished seed there is no "
    "standard deviation and the margin is 1 point: gain < -1.";

static const char SCRATCH[] = "scratch";

/* ---- small helpers ------------------------------------------------------- */

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* "a/b" in a fresh buffer (the caller frees), or NULL when out of memory. */
static char *path_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", a, b);
  return p;
}

int report_add_note(report *r, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  char **g = realloc(r->notes, (size_t)(r->nnotes + 1) * sizeof *g);
  CHECK_ALLOC(g, (size_t)(r->nnotes + 1) * sizeof *g);
  r->notes = g;
  CHECK_ALLOC(r->notes[r->nnotes] = xstrdup(buf), strlen(buf) + 1);
  r->nnotes++;
  return 0;
}

/* ---- one job line: the schema -------------------------------------------- */

/* The value as a user wrote it, for "found ...". */
static const char *describe(const report_jfield *f, char *buf, size_t n) {
  switch (f->type) {
    case REPORT_JNULL: return "null";
    case REPORT_JBOOL: return f->boolean ? "true" : "false";
    case REPORT_JNUM: snprintf(buf, n, "%.10g", f->num); return buf;
    case REPORT_JSTR: snprintf(buf, n, "\"%.40s%s\"", f->str, strlen(f->str) > 40 ? "..." : ""); return buf;
    default: return "an object";
  }
}

#define FIELD_FAIL(file, line, f, what)                                                        \
  do {                                                                                         \
    char d_[64];                                                                               \
    FERRY_FAIL(FERRY_EUSER, "%s:%d:%d: \"%s\": expected %s, found %s", file, line, (f)->col, \
               (f)->key, what, describe(f, d_, sizeof d_));                                     \
  } while (0)

static int req_field(const report_jobj *o, const char *key, const char *file, int line,
                     const report_jfield **out) {
  *out = report_jobj_get(o, key);
  CHECK_USER(*out, "%s:%d: missing field \"%s\" (every job line has job, target, strategy, k, "
             "seed and status; see docs/report.md)", file, line, key);
  return 0;
}

static int get_name(const report_jobj *o, const char *key, const char *file, int line, char **out) {
  const report_jfield *f;
  CHECK_CALL(req_field(o, key, file, line, &f));
  if (f->type != REPORT_JSTR || !f->str[0]) FIELD_FAIL(file, line, f, "a non-empty string");
  CHECK_ALLOC(*out = xstrdup(f->str), strlen(f->str) + 1);
  return 0;
}

static int get_count(const report_jobj *o, const char *key, const char *file, int line, int *out) {
  const report_jfield *f;
  CHECK_CALL(req_field(o, key, file, line, &f));
  if (f->type != REPORT_JNUM || f->num < 0 || f->num > 2147483647.0 || f->num != floor(f->num))
    FIELD_FAIL(file, line, f, "a non-negative integer");
  *out = (int)f->num;
  return 0;
}

/* An optional number (absent or null gives NAN); lo..hi is its valid range. */
static int get_num(const report_jobj *o, const char *key, double lo, double hi, const char *what,
                   const char *file, int line, double *out) {
  const report_jfield *f = report_jobj_get(o, key);
  *out = NAN;
  if (!f || f->type == REPORT_JNULL) return 0;
  if (f->type != REPORT_JNUM || f->num < lo || f->num > hi) FIELD_FAIL(file, line, f, what);
  *out = f->num;
  return 0;
}

static int get_opt_str(const report_jobj *o, const char *key, const char *file, int line, char **out) {
  const report_jfield *f = report_jobj_get(o, key);
  *out = NULL;
  if (!f || f->type == REPORT_JNULL) return 0;
  if (f->type != REPORT_JSTR) FIELD_FAIL(file, line, f, "a string or null");
  CHECK_ALLOC(*out = xstrdup(f->str), strlen(f->str) + 1);
  return 0;
}

static int get_extra(report_job *j, const report_jobj *o, const char *file, int line) {
  const report_jfield *f = report_jobj_get(o, "extra");
  if (!f || f->type == REPORT_JNULL) return 0;
  if (f->type != REPORT_JOBJ) FIELD_FAIL(file, line, f, "an object of measurements or null");
  j->extra = calloc((size_t)f->nsub + 1, sizeof *j->extra);
  CHECK_ALLOC(j->extra, ((size_t)f->nsub + 1) * sizeof *j->extra);
  for (int i = 0; i < f->nsub; i++) {
    if (f->sub[i].type != REPORT_JNUM) continue; /* strings and flags are kept out of means */
    report_extra *e = &j->extra[j->nextra];
    CHECK_ALLOC(e->key = xstrdup(f->sub[i].key), strlen(f->sub[i].key) + 1);
    e->value = f->sub[i].num;
    j->nextra++;
  }
  return 0;
}

int report_job_from_json(report_job *j, const report_jobj *o, const char *file, int line) {
  memset(j, 0, sizeof *j);
  j->line = line;
  j->test_acc = j->test_loss = j->val_acc = j->wall_s = j->train_s = j->steps = NAN;
  CHECK_CALL(get_name(o, "job", file, line, &j->job));
  CHECK_CALL(get_name(o, "target", file, line, &j->target));
  CHECK_CALL(get_name(o, "strategy", file, line, &j->strategy));
  CHECK_CALL(get_count(o, "k", file, line, &j->k));
  CHECK_CALL(get_count(o, "seed", file, line, &j->seed));
  const report_jfield *st;
  CHECK_CALL(req_field(o, "status", file, line, &st));
  if (st->type != REPORT_JSTR || (strcmp(st->str, "ok") && strcmp(st->str, "failed")))
    FIELD_FAIL(file, line, st, "\"ok\" or \"failed\"");
  j->ok = !strcmp(st->str, "ok");
  const char *frac = "a fraction in [0, 1] or null";
  const char *nonneg = "a non-negative number or null";
  CHECK_CALL(get_num(o, "test_acc", 0, 1, frac, file, line, &j->test_acc));
  CHECK_CALL(get_num(o, "val_acc", 0, 1, frac, file, line, &j->val_acc));
  CHECK_CALL(get_num(o, "test_loss", -HUGE_VAL, HUGE_VAL, "a number or null", file, line, &j->test_loss));
  CHECK_CALL(get_num(o, "wall_s", 0, HUGE_VAL, nonneg, file, line, &j->wall_s));
  CHECK_CALL(get_num(o, "train_s", 0, HUGE_VAL, nonneg, file, line, &j->train_s));
  CHECK_CALL(get_num(o, "steps", 0, HUGE_VAL, nonneg, file, line, &j->steps));
  CHECK_CALL(get_opt_str(o, "reason", file, line, &j->reason));
  CHECK_CALL(get_opt_str(o, "curve", file, line, &j->curve));
  CHECK_CALL(get_opt_str(o, "pretrained", file, line, &j->pretrained));
  CHECK_CALL(get_opt_str(o, "options", file, line, &j->options));
  CHECK_CALL(get_extra(j, o, file, line));
  CHECK_USER(!j->ok || !isnan(j->test_acc),
             "%s:%d: job \"%s\" has status \"ok\" but no test_acc (a number in [0, 1])", file, line, j->job);
  CHECK_USER(j->ok || j->reason,
             "%s:%d: job \"%s\" has status \"failed\" but no \"reason\" string", file, line, j->job);
  return 0;
}

void report_job_clear(report_job *j) {
  free(j->job);
  free(j->target);
  free(j->strategy);
  free(j->reason);
  free(j->curve);
  free(j->pretrained);
  free(j->options);
  for (int i = 0; i < j->nextra; i++) free(j->extra[i].key);
  free(j->extra);
  memset(j, 0, sizeof *j);
}

/* ---- reading results.jsonl --------------------------------------------- */

static int blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
  return 1;
}

/* Parses one line into r->jobs (growing it). */
static int read_line(report *r, int *cap, char *buf, size_t len, int lineno, int last_unterminated) {
  report_jobj o;
  int rc = report_json_parse(&o, buf, len, r->results_path, lineno);
  if (r->njobs == *cap) {
    int nc = *cap ? 2 * *cap : 64;
    report_job *g = realloc(r->jobs, (size_t)nc * sizeof *g);
    if (!g) {
      report_jobj_free(&o);
      CHECK_ALLOC(g, (size_t)nc * sizeof *g);
    }
    r->jobs = g;
    *cap = nc;
  }
  report_job *j = &r->jobs[r->njobs];
  memset(j, 0, sizeof *j);
  if (!rc) rc = report_job_from_json(j, &o, r->results_path, lineno);
  report_jobj_free(&o);
  if (rc) {
    report_job_clear(j);
    if (last_unterminated) {
      /* The first message stands; say why the line may be broken. */
      char msg[1200];
      snprintf(msg, sizeof msg, "%s (the last line has no newline: the file may have been cut short "
               "while a job was being written)", ferry_err_msg());
      ferry_err_clear();
      FERRY_FAIL(FERRY_EUSER, "%s", msg);
    }
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  r->njobs++;
  return 0;
}

static int read_results(report *r) {
  FILE *f = fopen(r->results_path, "r");
  if (!f) {
    int e = errno;
    if (e == ENOENT)
      FERRY_FAIL(FERRY_EUSER, "%s: no such file (is %s the directory of a transfer run? "
                 "the transfer stage appends one line per job there)", r->results_path, r->run_dir);
    FERRY_FAIL(FERRY_EUSER, "%s: cannot open: %s", r->results_path, strerror(e));
  }
  char *buf = NULL;
  size_t bcap = 0;
  int cap = 0, lineno = 0, rc = 0;
  ssize_t n;
  errno = 0;
  while ((n = getline(&buf, &bcap, f)) >= 0) {
    lineno++;
    size_t len = (size_t)n;
    int unterminated = len == 0 || buf[len - 1] != '\n';
    if (strlen(buf) != len) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s:%d:%zu: NUL byte in a line (not a text file?)", r->results_path,
                         lineno, strlen(buf) + 1);
      break;
    }
    if (!unterminated) buf[--len] = '\0'; /* so a string left open reads as such */
    if (blank(buf, len)) continue;
    if ((rc = read_line(r, &cap, buf, len, lineno, unterminated))) break;
  }
  int rerr = !rc && ferror(f) ? (errno ? errno : EIO) : 0;
  free(buf);
  fclose(f);
  CHECK_CALL(rc);
  CHECK_RT(!rerr, "%s: read error: %s", r->results_path, strerror(rerr));
  return 0;
}

/* ---- aggregation -------------------------------------------------------- */

/* K ascending with 0 (all labels) last. */
static int cmp_k(int a, int b) {
  if (a == b) return 0;
  if (a == 0) return 1;
  if (b == 0) return -1;
  return a < b ? -1 : 1;
}

static int cmp_strategy(const char *a, const char *b) {
  int sa = !strcmp(a, SCRATCH), sb = !strcmp(b, SCRATCH);
  if (sa != sb) return sa ? -1 : 1;
  return strcmp(a, b);
}

/* Row order: target, K, strategy. */
static int cmp_group(const report_job *a, const report_job *b) {
  int c = strcmp(a->target, b->target);
  if (!c) c = cmp_k(a->k, b->k);
  if (!c) c = cmp_strategy(a->strategy, b->strategy);
  return c;
}

static int cmp_job(const void *pa, const void *pb) {
  const report_job *a = pa, *b = pb;
  int c = cmp_group(a, b);
  if (!c) c = (a->seed > b->seed) - (a->seed < b->seed);
  if (!c) c = (a->line > b->line) - (a->line < b->line);
  return c;
}

/* After sorting, a job written again later (a retry, a resumed run) replaces
 * the earlier line for the same target, strategy, K and seed. */
static void drop_superseded(report *r) {
  int w = 0;
  for (int i = 0; i < r->njobs; i++) {
    report_job *a = &r->jobs[i];
    if (i + 1 < r->njobs && !cmp_group(a, &r->jobs[i + 1]) && a->seed == r->jobs[i + 1].seed) {
      report_job_clear(a);
      r->nsuperseded++;
      continue;
    }
    r->jobs[w++] = *a;
  }
  r->njobs = w;
}

/* Mean of the finite values of one field over the finished jobs. */
static double mean_of(const report_job *j, int n, size_t off) {
  double s = 0;
  int c = 0;
  for (int i = 0; i < n; i++) {
    double v = *(const double *)((const char *)&j[i] + off);
    if (j[i].ok && isfinite(v)) s += v, c++;
  }
  return c ? s / c : NAN;
}

static int row_extras(report_row *row, const report_job *j, int n) {
  int cap = 0;
  for (int i = 0; i < n; i++) cap += j[i].ok ? j[i].nextra : 0;
  if (!cap) return 0;
  row->extra = calloc((size_t)cap, sizeof *row->extra);
  CHECK_ALLOC(row->extra, (size_t)cap * sizeof *row->extra);
  for (int i = 0; i < n; i++) {
    if (!j[i].ok) continue;
    for (int e = 0; e < j[i].nextra; e++) {
      const char *key = j[i].extra[e].key;
      int seen = 0;
      for (int x = 0; x < row->nextra; x++) seen |= !strcmp(row->extra[x].key, key);
      if (seen) continue;
      double s = 0;
      int c = 0;
      for (int a = 0; a < n; a++)
        for (int b = 0; j[a].ok && b < j[a].nextra; b++)
          if (!strcmp(j[a].extra[b].key, key)) s += j[a].extra[b].value, c++;
      /* Borrowed key: the job outlives the row. */
      row->extra[row->nextra].key = j[i].extra[e].key;
      row->extra[row->nextra++].value = s / c;
    }
  }
  return 0;
}

static int fill_row(report_row *row, const report_job *j, int n) {
  row->target = j[0].target;
  row->strategy = j[0].strategy;
  row->k = j[0].k;
  row->seeds = calloc((size_t)n, sizeof *row->seeds);
  CHECK_ALLOC(row->seeds, (size_t)n * sizeof *row->seeds);
  double sum = 0;
  for (int i = 0; i < n; i++) {
    if (!j[i].ok) {
      row->n_failed++;
      continue;
    }
    row->seeds[row->n_ok++] = j[i].seed;
    sum += j[i].test_acc;
  }
  row->acc_mean = row->n_ok ? sum / row->n_ok : NAN;
  row->acc_std = NAN;
  if (row->n_ok >= 2) {
    double ss = 0;
    for (int i = 0; i < n; i++)
      if (j[i].ok) ss += (j[i].test_acc - row->acc_mean) * (j[i].test_acc - row->acc_mean);
    row->acc_std = sqrt(ss / (row->n_ok - 1));
  }
  row->val_acc_mean = mean_of(j, n, offsetof(report_job, val_acc));
  row->test_loss_mean = mean_of(j, n, offsetof(report_job, test_loss));
  row->wall_mean = mean_of(j, n, offsetof(report_job, wall_s));
  row->train_mean = mean_of(j, n, offsetof(report_job, train_s));
  return row_extras(row, j, n);
}

report_cmp report_compare(double m1, double s1, int n1, double m2, double s2, int n2) {
  report_cmp c;
  c.gain_pts = 100.0 * (m1 - m2);
  c.se_pts = n1 >= 2 && n2 >= 2 ? 100.0 * sqrt(s1 * s1 / n1 + s2 * s2 / n2) : NAN;
  c.margin_pts = isnan(c.se_pts) ? 1.0 : 2.0 * c.se_pts;
  c.negative = c.gain_pts < -c.margin_pts;
  return c;
}

static void compare_rows(report *r) {
  for (int i = 0; i < r->nrows; i++) {
    report_row *t = &r->rows[i];
    if (!strcmp(t->strategy, SCRATCH) || !t->n_ok) continue;
    for (int s = 0; s < r->nrows; s++) {
      const report_row *b = &r->rows[s];
      if (b->k != t->k || strcmp(b->strategy, SCRATCH) || strcmp(b->target, t->target) || !b->n_ok)
        continue;
      t->has_cmp = 1;
      t->cmp = report_compare(t->acc_mean, t->acc_std, t->n_ok, b->acc_mean, b->acc_std, b->n_ok);
    }
  }
}

static int cmp_str_ptr(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* How many pre-trained models the finished transfer jobs started from: with
 * one, the spread over seeds leaves out the pre-training's own variance,
 * and the reader should know that before trusting a small gain or loss. */
static int note_pretrained(report *r) {
  const char **from = malloc((size_t)(r->njobs + 1) * sizeof *from);
  CHECK_ALLOC(from, (size_t)(r->njobs + 1) * sizeof *from);
  int jobs = 0, distinct = 0;
  for (int i = 0; i < r->njobs; i++)
    if (r->jobs[i].ok && r->jobs[i].pretrained) from[jobs++] = r->jobs[i].pretrained;
  qsort(from, (size_t)jobs, sizeof *from, cmp_str_ptr);
  for (int i = 0; i < jobs; i++) distinct += !i || strcmp(from[i], from[i - 1]);
  int rc = 0;
  if (distinct == 1)
    rc = report_add_note(r, "the %d transfer job(s) all started from one pre-trained model (%s): "
                         "the spread over seeds leaves out the pre-training's own variance "
                         "(transfer.pretrain_per_seed pre-trains once per seed)",
                         jobs, from[0]);
  else if (distinct > 1)
    rc = report_add_note(r, "the %d transfer job(s) started from %d pre-trained models (one per "
                         "seed): the spread over seeds includes the pre-training's own variance",
                         jobs, distinct);
  free(from);
  return rc;
}

/* The options a strategy's finished jobs ran with (results.jsonl "options",
 * e.g. "reinit_last 1"): a row says only "finetune", and the reader must know
 * which fine-tuning it was. One note per distinct (strategy, options). */
static int note_options(report *r) {
  int rc = 0;
  for (int i = 0; i < r->njobs && !rc; i++) {
    const report_job *a = &r->jobs[i];
    if (!a->ok || !a->options) continue;
    int first = 1, n = 0;
    for (int k = 0; k < r->njobs; k++) {
      const report_job *b = &r->jobs[k];
      if (!b->ok || !b->options || strcmp(a->strategy, b->strategy) || strcmp(a->options, b->options))
        continue;
      if (k < i) first = 0;
      n++;
    }
    if (first) rc = report_add_note(r, "%d %s job(s) ran with %s", n, a->strategy, a->options);
  }
  return rc;
}

static int aggregate(report *r) {
  if (r->njobs) qsort(r->jobs, (size_t)r->njobs, sizeof *r->jobs, cmp_job);
  drop_superseded(r);
  r->rows = calloc((size_t)r->njobs + 1, sizeof *r->rows);
  CHECK_ALLOC(r->rows, ((size_t)r->njobs + 1) * sizeof *r->rows);
  r->failed = calloc((size_t)r->njobs + 1, sizeof *r->failed);
  CHECK_ALLOC(r->failed, ((size_t)r->njobs + 1) * sizeof *r->failed);
  for (int i = 0; i < r->njobs;) {
    int e = i + 1;
    while (e < r->njobs && !cmp_group(&r->jobs[i], &r->jobs[e])) e++;
    CHECK_CALL(fill_row(&r->rows[r->nrows++], &r->jobs[i], e - i));
    for (int x = i; x < e; x++)
      if (!r->jobs[x].ok) r->failed[r->nfailed++] = &r->jobs[x];
    i = e;
  }
  compare_rows(r);
  CHECK_CALL(note_pretrained(r));
  CHECK_CALL(note_options(r));
  if (r->nsuperseded)
    CHECK_CALL(report_add_note(r, "%d line(s) of results.jsonl were replaced by a later line for the "
                               "same target, strategy, K and seed (a retried or resumed job); only "
                               "the last one counts", r->nsuperseded));
  if (!r->njobs) CHECK_CALL(report_add_note(r, "results.jsonl holds no jobs yet"));
  return 0;
}

int report_load(report **out, const char *run_dir) {
  *out = NULL;
  report *r = calloc(1, sizeof *r);
  CHECK_ALLOC(r, sizeof *r);
  *out = r;
  CHECK_ALLOC(r->run_dir = xstrdup(run_dir), strlen(run_dir) + 1);
  CHECK_ALLOC(r->results_path = path_join(run_dir, "results.jsonl"), strlen(run_dir) + 15);
  CHECK_CALL(read_results(r));
  CHECK_CALL(aggregate(r));
  return 0;
}

void report_free(report **pr) {
  report *r = *pr;
  if (!r) return;
  for (int i = 0; i < r->njobs; i++) report_job_clear(&r->jobs[i]);
  free(r->jobs);
  for (int i = 0; i < r->nrows; i++) {
    free(r->rows[i].extra);
    free(r->rows[i].seeds);
  }
  free(r->rows);
  free(r->failed);
  for (int i = 0; i < r->nnotes; i++) free(r->notes[i]);
  free(r->notes);
  for (int i = 0; i < r->nplots; i++) {
    free(r->plots[i].path);
    free(r->plots[i].caption);
  }
  free(r->plots);
  free(r->run_dir);
  free(r->results_path);
  free(r);
  *pr = NULL;
}

/* ---- output ------------------------------------------------------------- */

static void fmt_k(char *buf, size_t n, int k) {
  if (k == 0)
    snprintf(buf, n, "all");
  else
    snprintf(buf, n, "%d", k);
}

/* "87.10 ± 0.52" (percent), "87.10" for one seed, "—" for none. */
static void fmt_acc(char *buf, size_t n, const report_row *w) {
  if (!w->n_ok)
    snprintf(buf, n, "-");
  else if (isnan(w->acc_std))
    snprintf(buf, n, "%.2f", 100 * w->acc_mean);
  else
    snprintf(buf, n, "%.2f ± %.2f", 100 * w->acc_mean, 100 * w->acc_std);
}

static void fmt_gain(char *buf, size_t n, const report_row *w) {
  if (!strcmp(w->strategy, SCRATCH))
    snprintf(buf, n, "(baseline)");
  else if (!w->has_cmp)
    snprintf(buf, n, "-");
  else if (isnan(w->cmp.se_pts))
    snprintf(buf, n, "%+.2f", w->cmp.gain_pts);
  else
    snprintf(buf, n, "%+.2f ± %.2f", w->cmp.gain_pts, w->cmp.se_pts);
}

static void fmt_secs(char *buf, size_t n, double s) {
  if (isnan(s))
    snprintf(buf, n, "-");
  else
    snprintf(buf, n, "%.1f", s);
}

/* Text in a Markdown table cell: no line breaks, no cell separators, no
 * HTML or emphasis from job names or failure reasons. */
static void md_text(FILE *f, const char *s) {
  for (; *s; s++) {
    char ch = *s;
    if (ch == '\n' || ch == '\r' || ch == '\t')
      fputc(' ', f);
    else if (ch == '<')
      fputs("&lt;", f);
    else if (ch == '>')
      fputs("&gt;", f);
    else if (ch == '&')
      fputs("&amp;", f);
    else if (strchr("|\\`*_[]#", ch))
      fprintf(f, "\\%c", ch);
    else
      fputc(ch, f);
  }
}

static int count_flagged(const report *r) {
  int n = 0;
  for (int i = 0; i < r->nrows; i++) n += r->rows[i].has_cmp && r->rows[i].cmp.negative;
  return n;
}

static void md_target_table(const report *r, FILE *f, int first, int end) {
  fputs("| K | strategy | seeds ok | failed | test acc % (mean ± std) | wall s (mean) | gain vs "
        "scratch, points (± SE) | flag |\n|---:|---|---:|---:|---:|---:|---:|---|\n", f);
  for (int i = first; i < end; i++) {
    const report_row *w = &r->rows[i];
    char k[16], acc[64], gain[64], wall[32];
    fmt_k(k, sizeof k, w->k);
    fmt_acc(acc, sizeof acc, w);
    fmt_gain(gain, sizeof gain, w);
    fmt_secs(wall, sizeof wall, w->wall_mean);
    fprintf(f, "| %s | ", k);
    md_text(f, w->strategy);
    fprintf(f, " | %d | %d | %s | %s | %s | %s |\n", w->n_ok, w->n_failed, acc, wall, gain,
            w->has_cmp && w->cmp.negative ? "**NEGATIVE TRANSFER**" : "");
  }
}

static void md_extras(const report *r, FILE *f, int first, int end) {
  int any = 0;
  for (int i = first; i < end; i++) any |= r->rows[i].nextra > 0;
  if (!any) return;
  fputs("\nOther measurements (\"extra\", mean over finished seeds):\n\n| K | strategy | measurement | "
        "mean |\n|---:|---|---|---:|\n", f);
  for (int i = first; i < end; i++) {
    const report_row *w = &r->rows[i];
    char k[16];
    fmt_k(k, sizeof k, w->k);
    for (int e = 0; e < w->nextra; e++) {
      fprintf(f, "| %s | ", k);
      md_text(f, w->strategy);
      fputs(" | ", f);
      md_text(f, w->extra[e].key);
      fprintf(f, " | %.4g |\n", w->extra[e].value);
    }
  }
}

/* The PNGs of one target, as images. */
static void md_plots(const report *r, FILE *f, const char *target) {
  for (int i = 0; i < r->nplots; i++) {
    if (strcmp(r->plots[i].target, target)) continue;
    fputs("\n![", f);
    md_text(f, r->plots[i].caption);
    fprintf(f, "](%s)\n", r->plots[i].path);
  }
}

static void write_md(const report *r, FILE *f) {
  int nok = 0;
  for (int i = 0; i < r->njobs; i++) nok += r->jobs[i].ok;
  fputs("# Transfer report\n\nRun directory: ", f);
  md_text(f, r->run_dir);
  fprintf(f, ". %d job(s) in results.jsonl: %d finished, %d failed; %d row(s), %d flagged "
          "NEGATIVE TRANSFER.\n\n", r->njobs, nok, r->nfailed, r->nrows, count_flagged(r));
  fputs("Accuracy is test accuracy in percent, mean ± sample standard deviation over the seeds "
        "that finished. Gain is the difference of means to the scratch row of the same target "
        "and K, in accuracy points, ± its standard error. K is labelled samples per class "
        "(\"all\" = every label).\n\n**Rule.** ", f);
  fputs(report_rule_text, f);
  fputs("\n", f);
  for (int i = 0; i < r->nrows;) {
    int e = i + 1;
    while (e < r->nrows && !strcmp(r->rows[e].target, r->rows[i].target)) e++;
    fputs("\n## ", f);
    md_text(f, r->rows[i].target);
    fputs("\n\n", f);
    md_target_table(r, f, i, e);
    md_extras(r, f, i, e);
    md_plots(r, f, r->rows[i].target);
    i = e;
  }
  if (r->nfailed) {
    fputs("\n## Failed jobs\n\n| job | seed | results.jsonl line | reason |\n|---|---:|---:|---|\n", f);
    for (int i = 0; i < r->nfailed; i++) {
      const report_job *j = r->failed[i];
      fputs("| ", f);
      md_text(f, j->job);
      fprintf(f, " | %d | %d | ", j->seed, j->line);
      md_text(f, j->reason);
      fputs(" |\n", f);
    }
  }
  static const char *plot_state[] = {
      "not requested (--no-plots)", "skipped: gnuplot is not installed (Debian: apt-get install gnuplot-nox)",
      "written to plots/", "gnuplot failed (see plots/gnuplot.log)"};
  fprintf(f, "\n## Plots\n\n%s.\n", plot_state[r->plots_state]);
  if (r->nnotes) {
    fputs("\n## Notes\n\n", f);
    for (int i = 0; i < r->nnotes; i++) {
      fputs("- ", f);
      md_text(f, r->notes[i]);
      fputc('\n', f);
    }
  }
}

/* Columns on a terminal: UTF-8 continuation bytes take no column. */
static int text_width(const char *s) {
  int w = 0;
  for (; *s; s++) w += ((unsigned char)*s & 0xc0) != 0x80;
  return w;
}

/* s padded with spaces to width columns, on the right (left != 0) or left. */
static void put_cell(FILE *f, const char *s, int width, int left) {
  int pad = width - text_width(s);
  if (!left)
    for (; pad > 0; pad--) fputc(' ', f);
  fputs(s, f);
  if (left)
    for (; pad > 0; pad--) fputc(' ', f);
}

void report_print_table(const report *r, FILE *f) {
  int tw = 6, sw = 8;
  for (int i = 0; i < r->nrows; i++) {
    int a = text_width(r->rows[i].target), b = text_width(r->rows[i].strategy);
    tw = a > tw ? a : tw;
    sw = b > sw ? b : sw;
  }
  put_cell(f, "target", tw, 1);
  fprintf(f, "  %5s  ", "K");
  put_cell(f, "strategy", sw, 1);
  fprintf(f, "  %4s  %4s  %15s  %8s  ", "ok", "fail", "test acc %", "wall s");
  put_cell(f, "gain pts ± SE", 16, 0);
  fputc('\n', f);
  for (int i = 0; i < r->nrows; i++) {
    const report_row *w = &r->rows[i];
    char k[16], acc[64], gain[64], wall[32];
    fmt_k(k, sizeof k, w->k);
    fmt_acc(acc, sizeof acc, w);
    fmt_gain(gain, sizeof gain, w);
    fmt_secs(wall, sizeof wall, w->wall_mean);
    put_cell(f, w->target, tw, 1);
    fprintf(f, "  %5s  ", k);
    put_cell(f, w->strategy, sw, 1);
    fprintf(f, "  %4d  %4d  ", w->n_ok, w->n_failed);
    put_cell(f, acc, 15, 0);
    fprintf(f, "  %8s  ", wall);
    put_cell(f, gain, 16, 0);
    fputs(w->has_cmp && w->cmp.negative ? "  NEGATIVE TRANSFER\n" : "\n", f);
  }
  if (r->nfailed) {
    fprintf(f, "\nfailed jobs:\n");
    for (int i = 0; i < r->nfailed; i++)
      fprintf(f, "  %s (line %d): %s\n", r->failed[i]->job, r->failed[i]->line, r->failed[i]->reason);
  }
  fprintf(f, "\nrule: %s\n", report_rule_text);
}

static void json_key_num(FILE *f, const char *key, double v) {
  fprintf(f, ", \"%s\": ", key);
  json_num(f, v);
}

static void json_row(const report_row *w, FILE *f) {
  fputs("    {\"target\": ", f);
  json_str(f, w->target);
  fputs(", \"strategy\": ", f);
  json_str(f, w->strategy);
  fprintf(f, ", \"k\": %d, \"n_ok\": %d, \"n_failed\": %d, \"seeds\": [", w->k, w->n_ok, w->n_failed);
  for (int s = 0; s < w->n_ok; s++) fprintf(f, "%s%d", s ? ", " : "", w->seeds[s]);
  fputc(']', f);
  json_key_num(f, "test_acc_mean", w->acc_mean);
  json_key_num(f, "test_acc_std", w->acc_std);
  json_key_num(f, "val_acc_mean", w->val_acc_mean);
  json_key_num(f, "test_loss_mean", w->test_loss_mean);
  json_key_num(f, "wall_s_mean", w->wall_mean);
  json_key_num(f, "train_s_mean", w->train_mean);
  json_key_num(f, "gain_pts", w->has_cmp ? w->cmp.gain_pts : NAN);
  json_key_num(f, "gain_se_pts", w->has_cmp ? w->cmp.se_pts : NAN);
  json_key_num(f, "margin_pts", w->has_cmp ? w->cmp.margin_pts : NAN);
  fprintf(f, ", \"baseline\": %s, \"negative_transfer\": %s, \"extra\": {",
          strcmp(w->strategy, SCRATCH) ? "false" : "true", w->has_cmp && w->cmp.negative ? "true" : "false");
  for (int e = 0; e < w->nextra; e++) {
    if (e) fputs(", ", f);
    json_str(f, w->extra[e].key);
    fputs(": ", f);
    json_num(f, w->extra[e].value);
  }
  fputs("}}", f);
}

void report_print_json(const report *r, FILE *f) {
  static const char *plot_state[] = {"off", "no-gnuplot", "done", "failed"};
  fputs("{\n  \"run_dir\": ", f);
  json_str(f, r->run_dir);
  fprintf(f, ",\n  \"ferry_version\": \"%s\",\n  \"jobs\": %d,\n  \"superseded\": %d,\n  \"rule\": ",
          FERRY_VERSION, r->njobs, r->nsuperseded);
  json_str(f, report_rule_text);
  fputs(",\n  \"rows\": [", f);
  for (int i = 0; i < r->nrows; i++) {
    fputs(i ? ",\n" : "\n", f);
    json_row(&r->rows[i], f);
  }
  fputs(r->nrows ? "\n  ],\n  \"failed\": [" : "],\n  \"failed\": [", f);
  for (int i = 0; i < r->nfailed; i++) {
    const report_job *j = r->failed[i];
    fputs(i ? ",\n    {\"job\": " : "\n    {\"job\": ", f);
    json_str(f, j->job);
    fputs(", \"target\": ", f);
    json_str(f, j->target);
    fputs(", \"strategy\": ", f);
    json_str(f, j->strategy);
    fprintf(f, ", \"k\": %d, \"seed\": %d, \"line\": %d, \"reason\": ", j->k, j->seed, j->line);
    json_str(f, j->reason);
    fputc('}', f);
  }
  fprintf(f, "%s],\n  \"plots_state\": \"%s\",\n  \"plots\": [", r->nfailed ? "\n  " : "",
          plot_state[r->plots_state]);
  for (int i = 0; i < r->nplots; i++) {
    if (i) fputs(", ", f);
    json_str(f, r->plots[i].path);
  }
  fputs("],\n  \"notes\": [", f);
  for (int i = 0; i < r->nnotes; i++) {
    if (i) fputs(", ", f);
    json_str(f, r->notes[i]);
  }
  fputs("]\n}\n", f);
}

/* Writes run_dir/name through a temporary file, fsync and rename: a reader
 * sees the old file or the new one, never half of one. */
static int write_atomic(const report *r, const char *name, void (*body)(const report *, FILE *)) {
  char *path = path_join(r->run_dir, name);
  CHECK_ALLOC(path, strlen(r->run_dir) + strlen(name) + 2);
  size_t tn = strlen(path) + 32;
  char *tmp = malloc(tn);
  if (!tmp) free(path);
  CHECK_ALLOC(tmp, tn);
  snprintf(tmp, tn, "%s.tmp.%ld", path, (long)getpid());
  int err = 0;
  FILE *f = fopen(tmp, "w");
  if (!f) {
    err = errno;
  } else {
    body(r, f);
    if (fflush(f) != 0 || ferror(f)) err = errno ? errno : EIO;
    if (!err && fsync(fileno(f)) != 0) err = errno;
    if (fclose(f) != 0 && !err) err = errno ? errno : EIO;
    if (!err && rename(tmp, path) != 0) err = errno;
    if (err) unlink(tmp);
  }
  if (err) {
    int rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "cannot write %s: %s", path,
                           strerror(err));
    free(path);
    free(tmp);
    return rc;
  }
  free(path);
  free(tmp);
  return 0;
}

int report_write_files(report *r, int plots) {
  r->plots_state = REPORT_PLOTS_OFF;
  if (plots) CHECK_CALL(report_plot(r));
  CHECK_CALL(write_atomic(r, "report.json", report_print_json));
  CHECK_CALL(write_atomic(r, "report.md", write_md));
  return 0;
}

int report_write(const char *run_dir, int plots) {
  report *r = NULL;
  int rc = report_load(&r, run_dir);
  if (!rc) rc = report_write_files(r, plots);
  report_free(&r);
  CHECK_CALL(rc);
  return 0;
}
