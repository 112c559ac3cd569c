/* The transfer report (launch/report.c, report_json.c): aggregation over
 * seeds (mean, sample std, gain over scratch and its SE) on hand-made
 * results with known numbers, the negative-transfer rule on constructed
 * cases, failed and superseded jobs, row order, one precise FERRY_EUSER
 * (file:line:col) per malformed line, the strict line reader, atomic output
 * files and the no-gnuplot path. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "launch/report.h"
#include "nn/err.h"

static char tmpdir[128];
static int ncase;

/* A fresh run directory holding results.jsonl = text (written as is). */
static void make_run(char *dir, size_t n, const char *text, size_t len) {
  snprintf(dir, n, "%s/run%d", tmpdir, ncase++);
  mkdir(dir, 0755);
  char path[512];
  snprintf(path, sizeof path, "%s/results.jsonl", dir);
  FILE *f = fopen(path, "wb");
  fwrite(text, 1, len, f);
  fclose(f);
}

/* Loads text as a run's results.jsonl; *rc gets the status. */
static report *load_text_rc(const char *text, int *rc) {
  char dir[256];
  make_run(dir, sizeof dir, text, strlen(text));
  report *r = NULL;
  ferry_err_clear();
  *rc = report_load(&r, dir);
  if (*rc) report_free(&r);
  return r;
}

static report *load_text(const char *text) {
  int rc;
  report *r = load_text_rc(text, &rc);
  CHECK_MSG(rc == 0, "report_load: %s", ferry_err_msg());
  return r;
}

static const report_row *find_row(const report *r, const char *target, const char *strategy, int k) {
  for (int i = 0; i < r->nrows; i++)
    if (!strcmp(r->rows[i].target, target) && !strcmp(r->rows[i].strategy, strategy) && r->rows[i].k == k)
      return &r->rows[i];
  return NULL;
}

/* One ok job line. */
static void ok_line(char *buf, size_t n, const char *target, const char *strat, int k, int seed,
                    double acc, double wall) {
  snprintf(buf, n,
           "{\"job\": \"%s.%s.k%d.s%d\", \"target\": \"%s\", \"strategy\": \"%s\", \"k\": %d, "
           "\"seed\": %d, \"status\": \"ok\", \"test_acc\": %.17g, \"test_loss\": 0.5, \"val_acc\": %.17g, "
           "\"wall_s\": %g, \"train_s\": 1.5, \"steps\": 100, \"curve\": \"jobs/x/metrics.jsonl\"}\n",
           target, strat, k, seed, target, strat, k, seed, acc, acc - 0.01, wall);
}

static void append(char *text, size_t cap, const char *line) {
  size_t l = strlen(text);
  snprintf(text + l, cap - l, "%s", line);
}

/* scratch 0.70/0.72/0.74, finetune 0.80/0.82/0.84 + one failure, linear-probe
 * 0.60/0.61/0.62 (clearly below), feature-extract 0.71/0.72 (within noise),
 * at K = 10 of target "b"; K = 0 and K = 1 rows of "b" and a target "a" with
 * no scratch row, written out of order. */
static void test_aggregation(void) {
  static char text[16384];
  char l[1024];
  text[0] = '\0';
  const double scratch[] = {0.70, 0.72, 0.74}, ft[] = {0.80, 0.82, 0.84}, lp[] = {0.60, 0.61, 0.62};
  for (int s = 0; s < 3; s++) {
    ok_line(l, sizeof l, "b", "linear-probe", 10, s, lp[s], 2);
    append(text, sizeof text, l);
    ok_line(l, sizeof l, "b", "finetune", 10, s, ft[s], 10 + s);
    append(text, sizeof text, l);
    ok_line(l, sizeof l, "b", "scratch", 10, s, scratch[s], 4);
    append(text, sizeof text, l);
  }
  ok_line(l, sizeof l, "b", "feature-extract", 10, 0, 0.71, 3);
  append(text, sizeof text, l);
  ok_line(l, sizeof l, "b", "feature-extract", 10, 1, 0.72, 3);
  append(text, sizeof text, l);
  append(text, sizeof text,
         "{\"job\": \"b.finetune.k10.s3\", \"target\": \"b\", \"strategy\": \"finetune\", \"k\": 10, "
         "\"seed\": 3, \"status\": \"failed\", \"reason\": \"loss is NaN at step 7\", \"wall_s\": 99}\n");
  ok_line(l, sizeof l, "b", "scratch", 0, 0, 0.9, 1);
  append(text, sizeof text, l);
  ok_line(l, sizeof l, "b", "scratch", 1, 0, 0.5, 1);
  append(text, sizeof text, l);
  ok_line(l, sizeof l, "a", "finetune", 5, 0, 0.5, 1);
  append(text, sizeof text, l);
  append(text, sizeof text, "\n   \n"); /* blank lines are skipped */
  report *r = load_text(text);
  if (!r) return;
  CHECK(r->njobs == 15);
  CHECK(r->nrows == 7);
  /* Order: target a, then b with K 1, 10, all; scratch first, then by name. */
  static const char *order[][2] = {{"a", "finetune"}, {"b", "scratch"}, {"b", "scratch"},
                                   {"b", "feature-extract"}, {"b", "finetune"}, {"b", "linear-probe"},
                                   {"b", "scratch"}};
  static const int korder[] = {5, 1, 10, 10, 10, 10, 0};
  for (int i = 0; i < r->nrows && i < 7; i++)
    CHECK_MSG(!strcmp(r->rows[i].target, order[i][0]) && !strcmp(r->rows[i].strategy, order[i][1]) &&
                  r->rows[i].k == korder[i],
              "row %d is %s/%s/k%d", i, r->rows[i].target, r->rows[i].strategy, r->rows[i].k);

  const report_row *sc = find_row(r, "b", "scratch", 10), *fn = find_row(r, "b", "finetune", 10);
  const report_row *lpr = find_row(r, "b", "linear-probe", 10), *fe = find_row(r, "b", "feature-extract", 10);
  CHECK(sc && fn && lpr && fe);
  if (!sc || !fn || !lpr || !fe) {
    report_free(&r);
    return;
  }
  CHECK(sc->n_ok == 3 && sc->n_failed == 0);
  CHECK_NEAR(sc->acc_mean, 0.72, 1e-12);
  CHECK_NEAR(sc->acc_std, 0.02, 1e-12);
  CHECK(!sc->has_cmp);
  CHECK(fn->n_ok == 3 && fn->n_failed == 1);
  CHECK_NEAR(fn->acc_mean, 0.82, 1e-12);
  CHECK_NEAR(fn->acc_std, 0.02, 1e-12);
  CHECK_NEAR(fn->wall_mean, 11.0, 1e-12); /* the failed job's 99 s does not count */
  CHECK_NEAR(fn->val_acc_mean, 0.81, 1e-12);
  CHECK_NEAR(fn->test_loss_mean, 0.5, 1e-12);
  CHECK_NEAR(fn->train_mean, 1.5, 1e-12);
  CHECK(fn->seeds[0] == 0 && fn->seeds[1] == 1 && fn->seeds[2] == 2);
  CHECK(fn->has_cmp);
  CHECK_NEAR(fn->cmp.gain_pts, 10.0, 1e-9);
  CHECK_NEAR(fn->cmp.se_pts, 100 * sqrt(0.0004 / 3 + 0.0004 / 3), 1e-9); /* 1.633 */
  CHECK(!fn->cmp.negative);
  /* linear-probe: -11 points, SE = 100 sqrt(0.0001/3 + 0.0004/3) = 1.29. */
  CHECK_NEAR(lpr->cmp.gain_pts, -11.0, 1e-9);
  CHECK_NEAR(lpr->cmp.se_pts, 100 * sqrt(0.0001 / 3 + 0.0004 / 3), 1e-9);
  CHECK(lpr->cmp.negative);
  /* feature-extract: -0.5 points against 2 SE = 2 x 100 sqrt(0.00005/2 + 0.0004/3) = 2.5. */
  CHECK_NEAR(fe->acc_mean, 0.715, 1e-12);
  CHECK_NEAR(fe->cmp.gain_pts, -0.5, 1e-9);
  CHECK_NEAR(fe->cmp.margin_pts, 200 * sqrt(0.00005 / 2 + 0.0004 / 3), 1e-9);
  CHECK(!fe->cmp.negative && fe->n_ok == 2);
  /* No scratch row for target a: nothing to compare. */
  const report_row *a = find_row(r, "a", "finetune", 5);
  CHECK(a && !a->has_cmp && isnan(a->acc_std) && a->n_ok == 1);
  CHECK(r->nfailed == 1 && r->failed[0]->seed == 3 && !strcmp(r->failed[0]->reason, "loss is NaN at step 7"));
  CHECK(r->failed[0]->line == 12);
  report_free(&r);
  CHECK(r == NULL);
}

static void test_rule(void) {
  /* Clearly below: -10 points, SE 0.82. */
  report_cmp c = report_compare(0.60, 0.01, 3, 0.70, 0.01, 3);
  CHECK_NEAR(c.gain_pts, -10, 1e-9);
  CHECK_NEAR(c.se_pts, 100 * sqrt(0.0001 / 3 * 2), 1e-9);
  CHECK_NEAR(c.margin_pts, 2 * c.se_pts, 1e-12);
  CHECK(c.negative);
  /* Within noise: -1 point against a margin of 3.27. */
  c = report_compare(0.69, 0.02, 3, 0.70, 0.02, 3);
  CHECK(!c.negative);
  CHECK_NEAR(c.margin_pts, 200 * sqrt(0.0004 / 3 * 2), 1e-9);
  /* Above scratch, even by a lot and with zero spread. */
  c = report_compare(0.80, 0.0, 5, 0.70, 0.0, 5);
  CHECK(!c.negative && c.gain_pts > 9.99);
  /* Either side of the 2 SE boundary: SE = 3 points exactly (s = 0.03, n = 2). */
  c = report_compare(0.641, 0.03, 2, 0.70, 0.03, 2);
  CHECK_NEAR(c.se_pts, 3.0, 1e-9);
  CHECK(!c.negative); /* -5.9 > -6 */
  c = report_compare(0.639, 0.03, 2, 0.70, 0.03, 2);
  CHECK(c.negative); /* -6.1 < -6 */
  /* Zero spread on both sides: any drop is beyond 2 SE = 0. */
  c = report_compare(0.699, 0.0, 3, 0.70, 0.0, 3);
  CHECK(c.negative && c.se_pts == 0);
  /* One seed (either side): no SE, 1-point margin. */
  c = report_compare(0.685, NAN, 1, 0.70, NAN, 1);
  CHECK(isnan(c.se_pts) && c.margin_pts == 1.0 && c.negative);
  c = report_compare(0.695, NAN, 1, 0.70, NAN, 1);
  CHECK(!c.negative);
  c = report_compare(0.695, 0.05, 4, 0.71, NAN, 1);
  CHECK(isnan(c.se_pts) && c.negative);
  c = report_compare(0.70, NAN, 1, 0.709, 0.05, 4);
  CHECK(!c.negative);
  CHECK(strstr(report_rule_text, "2 SE") && strstr(report_rule_text, "1 point"));
}

/* The single-seed margin end to end: scratch 1 seed, strategies 1.5 below
 * (flagged) and 0.5 below (not). */
static void test_single_seed_rows(void) {
  static char text[4096];
  char l[1024];
  text[0] = '\0';
  ok_line(l, sizeof l, "t", "scratch", 3, 0, 0.800, 1);
  append(text, sizeof text, l);
  ok_line(l, sizeof l, "t", "finetune", 3, 0, 0.785, 1);
  append(text, sizeof text, l);
  ok_line(l, sizeof l, "t", "linear-probe", 3, 0, 0.795, 1);
  append(text, sizeof text, l);
  report *r = load_text(text);
  if (!r) return;
  const report_row *f = find_row(r, "t", "finetune", 3), *p = find_row(r, "t", "linear-probe", 3);
  CHECK(f && f->has_cmp && f->cmp.negative && f->cmp.margin_pts == 1.0);
  CHECK(p && p->has_cmp && !p->cmp.negative);
  report_free(&r);
}

/* A failed job then the same job ok (a retry): the later line counts. All
 * seeds failed: a row with no accuracy and no comparison. */
static void test_failed_and_superseded(void) {
  static char text[4096];
  char l[1024];
  text[0] = '\0';
  append(text, sizeof text,
         "{\"job\": \"t.finetune.k3.s0\", \"target\": \"t\", \"strategy\": \"finetune\", \"k\": 3, "
         "\"seed\": 0, \"status\": \"failed\", \"reason\": \"rank 1 out of memory\", \"test_acc\": null}\n");
  ok_line(l, sizeof l, "t", "scratch", 3, 0, 0.8, 1);
  append(text, sizeof text, l);
  ok_line(l, sizeof l, "t", "finetune", 3, 0, 0.9, 1);
  append(text, sizeof text, l);
  append(text, sizeof text,
         "{\"job\": \"t.dann.k3.s0\", \"target\": \"t\", \"strategy\": \"dann\", \"k\": 3, "
         "\"seed\": 0, \"status\": \"failed\", \"reason\": \"diverged\"}\n"
         "{\"job\": \"t.dann.k3.s1\", \"target\": \"t\", \"strategy\": \"dann\", \"k\": 3, "
         "\"seed\": 1, \"status\": \"failed\", \"reason\": \"diverged again\"}\n");
  report *r = load_text(text);
  if (!r) return;
  CHECK(r->nsuperseded == 1);
  CHECK(r->njobs == 4);
  const report_row *f = find_row(r, "t", "finetune", 3), *d = find_row(r, "t", "dann", 3);
  CHECK(f && f->n_ok == 1 && f->n_failed == 0 && f->has_cmp);
  CHECK(d && d->n_ok == 0 && d->n_failed == 2 && isnan(d->acc_mean) && !d->has_cmp);
  CHECK(r->nfailed == 2 && !strcmp(r->failed[0]->reason, "diverged") && r->failed[1]->seed == 1);
  CHECK(r->nnotes == 1 && strstr(r->notes[0], "replaced by a later line"));
  report_free(&r);
}

/* Line 1 is valid, line 2 is `bad` (bytes as given); the load fails with
 * FERRY_EUSER and a message holding every substring. */
static void expect_bad_at(int srcline, const char *bad, size_t badlen, const char *const *subs) {
  static char text[8192];
  char l[1024];
  ok_line(l, sizeof l, "t", "scratch", 1, 0, 0.5, 1);
  size_t n = strlen(l);
  memcpy(text, l, n);
  memcpy(text + n, bad, badlen);
  char dir[256];
  make_run(dir, sizeof dir, text, n + badlen);
  report *r = NULL;
  ferry_err_clear();
  int rc = report_load(&r, dir);
  report_free(&r);
  const char *msg = ferry_err_msg();
  if (rc != FERRY_EUSER) {
    check_fail++;
    fprintf(stderr, "%s:%d: expected FERRY_EUSER, got %d (%s)\n", __FILE__, srcline, rc, msg);
    return;
  }
  char where[300];
  snprintf(where, sizeof where, "%s/results.jsonl:2", dir);
  if (!strstr(msg, where)) {
    check_fail++;
    fprintf(stderr, "%s:%d: message lacks \"%s\":\n    %s\n", __FILE__, srcline, where, msg);
  }
  for (; *subs; subs++) {
    if (strstr(msg, *subs)) {
      check_pass++;
    } else {
      check_fail++;
      fprintf(stderr, "%s:%d: message lacks \"%s\":\n    %s\n", __FILE__, srcline, *subs, msg);
    }
  }
  if (getenv("TEST_REPORT_VERBOSE")) printf("ok: %s\n", msg);
}

#define EXPECT_BAD(line, ...) \
  expect_bad_at(__LINE__, (line), sizeof(line) - 1, (const char *const[]){__VA_ARGS__, NULL})

#define JOB_HEAD "{\"job\": \"j\", \"target\": \"t\", \"strategy\": \"s\", "

static void test_malformed(void) {
  /* JSON syntax. */
  EXPECT_BAD("{\"job\": \"j\",}\n", ":2:13:", "expected a key in double quotes, found '}'");
  EXPECT_BAD("{\"job\" \"j\"}\n", ":2:8:", "expected ':' after key \"job\"");
  EXPECT_BAD("{\"job\": \"j\" \"k\": 1}\n", ":2:13:", "expected ',' or '}' after the value of \"job\"");
  EXPECT_BAD("not json\n", ":2:1:", "expected a JSON object");
  EXPECT_BAD("{\"job\": \"j\"} x\n", ":2:14:", "after the end of the object");
  EXPECT_BAD("{\"job\": \"j\", \"job\": \"k\"}\n", ":2:14:", "duplicate key \"job\"");
  EXPECT_BAD("{\"job\": \"j\n", ":2:9:", "no closing quote");
  EXPECT_BAD("{\"job\": \"a\\xb\"}\n", ":2:11:", "invalid escape");
  EXPECT_BAD("{\"job\": \"a\tb\"}\n", ":2:11:", "control character 0x09");
  EXPECT_BAD("{\"job\": \"a\xff\"}\n", ":2:11:", "invalid UTF-8 byte 0xff");
  EXPECT_BAD("{\"job\": \"a\xc0\xaf\"}\n", "invalid UTF-8"); /* overlong '/' */
  EXPECT_BAD("{\"job\": \"\\ud800x\"}\n", "high surrogate");
  EXPECT_BAD("{\"job\": \"\\u0000\"}\n", "NUL character");
  EXPECT_BAD("{\"k\": 01}\n", ":2:7:", "leading zero");
  EXPECT_BAD("{\"k\": 1.}\n", "digit after the decimal point");
  EXPECT_BAD("{\"k\": -}\n", "expected a digit");
  EXPECT_BAD("{\"k\": 1e999}\n", "out of the range");
  EXPECT_BAD("{\"k\": NaN}\n", ":2:7:", "expected a value", "found 'N'");
  EXPECT_BAD("{\"k\": tru}\n", "expected a value");
  EXPECT_BAD("{\"extra\": [1, 2]}\n", ":2:11:", "arrays are not part of this format");
  EXPECT_BAD("{\"extra\": {\"a\": {\"b\": 1}}}\n", ":2:17:", "nest at most one level");
  EXPECT_BAD("{\"job\": \"j\"", "no newline", "cut short"); /* truncated last line */
  EXPECT_BAD("{\"job\": \"j\0\"}\n", "NUL byte");
  /* The job schema. */
  EXPECT_BAD(JOB_HEAD "\"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5}\n", "missing field \"k\"");
  EXPECT_BAD("{\"target\": \"t\"}\n", "missing field \"job\"");
  EXPECT_BAD(JOB_HEAD "\"k\": \"ten\", \"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5}\n", ":2:51:",
             "\"k\": expected a non-negative integer, found \"ten\"");
  EXPECT_BAD(JOB_HEAD "\"k\": 1.5, \"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5}\n",
             "\"k\": expected a non-negative integer, found 1.5");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": -1, \"status\": \"ok\", \"test_acc\": 0.5}\n",
             "\"seed\": expected a non-negative integer, found -1");
  EXPECT_BAD("{\"job\": \"\", \"target\": \"t\"}\n", "\"job\": expected a non-empty string, found \"\"");
  EXPECT_BAD("{\"job\": \"j\", \"target\": 7}\n", "\"target\": expected a non-empty string, found 7");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"done\", \"test_acc\": 0.5}\n",
             "\"status\": expected \"ok\" or \"failed\", found \"done\"");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": true}\n", "found true");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": 87.5}\n",
             "\"test_acc\": expected a fraction in [0, 1] or null, found 87.5");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": \"0.5\"}\n",
             "\"test_acc\": expected a fraction", "found \"0.5\"");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\"}\n", "status \"ok\" but no test_acc");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": null}\n", "no test_acc");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"failed\"}\n", "\"failed\" but no \"reason\"");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5, \"wall_s\": -3}\n",
             "\"wall_s\": expected a non-negative number or null, found -3");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5, \"curve\": 3}\n",
             "\"curve\": expected a string or null, found 3");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5, \"extra\": \"fast\"}\n",
             "\"extra\": expected an object of measurements or null");
  EXPECT_BAD(JOB_HEAD "\"k\": 1, \"seed\": 0, \"status\": \"ok\", \"test_acc\": 0.5, \"val_acc\": {}}\n",
             "\"val_acc\": expected a fraction", "found an object");
}

static void test_missing_file(void) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/no-such-run", tmpdir);
  report *r = NULL;
  ferry_err_clear();
  CHECK(report_load(&r, dir) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "no-such-run/results.jsonl: no such file"));
  report_free(&r);
  ferry_err_clear();
  CHECK(report_write(dir, 0) == FERRY_EUSER);
}

/* The reader alone: escapes decode to UTF-8, values keep their types and
 * columns, unknown keys and whitespace are fine, an empty object parses. */
static void test_reader(void) {
  const char *line = " { \"s\" : \"a\\\"b\\\\c\\/\\n\\u00e9\\ud83d\\ude00\" , \"n\": -1.5e2,\"t\":true,"
                     "\"f\":false,\"z\":null, \"o\": {\"x\": 1, \"y\": \"w\"}, \"e\": {} }\r\n";
  report_jobj o;
  ferry_err_clear();
  CHECK_MSG(report_json_parse(&o, line, strlen(line), "x.jsonl", 1) == 0, "%s", ferry_err_msg());
  const report_jfield *s = report_jobj_get(&o, "s"), *n = report_jobj_get(&o, "n");
  CHECK(o.n == 7);
  CHECK(s && s->type == REPORT_JSTR && !strcmp(s->str, "a\"b\\c/\n\xc3\xa9\xf0\x9f\x98\x80") && s->col == 10);
  CHECK(n && n->type == REPORT_JNUM && n->num == -150.0);
  CHECK(report_jobj_get(&o, "t")->boolean == 1 && report_jobj_get(&o, "f")->type == REPORT_JBOOL);
  CHECK(report_jobj_get(&o, "z")->type == REPORT_JNULL);
  const report_jfield *ob = report_jobj_get(&o, "o");
  CHECK(ob && ob->type == REPORT_JOBJ && ob->nsub == 2 && ob->sub[1].type == REPORT_JSTR);
  CHECK(report_jobj_get(&o, "e")->nsub == 0);
  CHECK(report_jobj_get(&o, "missing") == NULL);
  report_jobj_free(&o);
  ferry_err_clear();
  CHECK(report_json_parse(&o, "{}", 2, "x", 1) == 0 && o.n == 0);
  report_jobj_free(&o);
  ferry_err_clear();
  CHECK(report_json_parse(&o, "", 0, "x.jsonl", 9) == FERRY_EUSER);
  CHECK(strstr(ferry_err_msg(), "x.jsonl:9:1: expected a JSON object"));
  report_jobj_free(&o);
  ferry_err_clear();
}

/* Unknown keys are ignored (later versions may add fields); extra values
 * that are not numbers stay out of the means. */
static void test_unknown_and_extra(void) {
  int rc;
  report *r = load_text_rc(
      "{\"job\": \"j0\", \"target\": \"t\", \"strategy\": \"feature-extract\", \"k\": 0, \"seed\": 0, "
      "\"status\": \"ok\", \"test_acc\": 1, \"new_field\": [\"ignored?\"]}\n", &rc);
  /* Arrays are refused even in unknown keys: the format is flat. */
  CHECK(r == NULL && rc == FERRY_EUSER && strstr(ferry_err_msg(), "arrays"));
  ferry_err_clear();
  r = load_text(
      "{\"job\": \"j0\", \"target\": \"t\", \"strategy\": \"feature-extract\", \"k\": 0, \"seed\": 0, "
      "\"status\": \"ok\", \"test_acc\": 1, \"new_field\": \"x\", "
      "\"extra\": {\"speedup\": 4, \"note\": \"n\", "
      "\"cached\": true}}\n"
      "{\"job\": \"j1\", \"target\": \"t\", \"strategy\": \"feature-extract\", \"k\": 0, \"seed\": 1, "
      "\"status\": \"ok\", \"test_acc\": 0, \"extra\": {\"speedup\": 6}}\n");
  if (!r) return;
  CHECK(r->nrows == 1 && r->rows[0].nextra == 1);
  CHECK(!strcmp(r->rows[0].extra[0].key, "speedup"));
  CHECK_NEAR(r->rows[0].extra[0].value, 5.0, 1e-12);
  CHECK_NEAR(r->rows[0].acc_std, sqrt(0.5), 1e-12);
  report_free(&r);
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static int count_tmp(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *de;
  int n = 0;
  while (d && (de = readdir(d))) n += strstr(de->d_name, ".tmp.") != NULL;
  if (d) closedir(d);
  return n;
}

/* report.md / report.json: flagged row, failed list, rule, no temp files;
 * with plots requested and no gnuplot on PATH the report says so. A
 * directory in the way of report.json is an I/O error. */
static void test_write_files(void) {
  static char text[4096];
  char l[1024], dir[256], path[512];
  text[0] = '\0';
  for (int s = 0; s < 2; s++) {
    ok_line(l, sizeof l, "fm|nist", "scratch", 10, s, 0.80 + 0.01 * s, 1);
    append(text, sizeof text, l);
    ok_line(l, sizeof l, "fm|nist", "linear-probe", 10, s, 0.60 + 0.01 * s, 1);
    append(text, sizeof text, l);
  }
  append(text, sizeof text,
         "{\"job\": \"fm.finetune.k10.s0\", \"target\": \"fm|nist\", \"strategy\": \"finetune\", \"k\": 10, "
         "\"seed\": 0, \"status\": \"failed\", \"reason\": \"rank 2: <oom> | retry\"}\n");
  make_run(dir, sizeof dir, text, strlen(text));
  const char *old_path = getenv("PATH");
  char *saved = old_path ? strdup(old_path) : NULL;
  setenv("PATH", "/nonexistent-dir", 1);
  ferry_err_clear();
  int rc = report_write(dir, 1);
  if (saved) setenv("PATH", saved, 1);
  free(saved);
  CHECK_MSG(rc == 0, "report_write: %s", ferry_err_msg());
  snprintf(path, sizeof path, "%s/report.md", dir);
  const char *md = slurp(path);
  CHECK(md && strstr(md, "| 10 | linear-probe | 2 | 0 | 60.50 ± 0.71 |"));
  CHECK(md && strstr(md, "| -20.00 ± 0.71 | **NEGATIVE TRANSFER** |"));
  CHECK(md && strstr(md, "## fm\\|nist"));
  CHECK(md && strstr(md, "rank 2: &lt;oom&gt; \\| retry"));
  CHECK(md && strstr(md, "**Rule.** A transfer strategy is flagged NEGATIVE TRANSFER"));
  CHECK(md && strstr(md, "gnuplot is not installed"));
  snprintf(path, sizeof path, "%s/report.json", dir);
  const char *js = slurp(path);
  CHECK(js && strstr(js, "\"strategy\": \"linear-probe\", \"k\": 10, \"n_ok\": 2"));
  CHECK(js && strstr(js, "\"negative_transfer\": true"));
  CHECK(js && strstr(js, "\"reason\": \"rank 2: <oom> | retry\""));
  CHECK(js && strstr(js, "\"plots_state\": \"no-gnuplot\""));
  CHECK(js && strstr(js, "\"rule\": \"A transfer strategy"));
  CHECK(count_tmp(dir) == 0);
  /* report.json cannot replace a directory: ERUNTIME, no temp file left. */
  unlink(path);
  CHECK(mkdir(path, 0755) == 0);
  ferry_err_clear();
  CHECK(report_write(dir, 0) == FERRY_ERUNTIME);
  CHECK(strstr(ferry_err_msg(), "cannot write") && strstr(ferry_err_msg(), "report.json"));
  CHECK(count_tmp(dir) == 0);
  ferry_err_clear();
}

/* An empty results.jsonl is a report with no rows, not an error. */
static void test_empty(void) {
  report *r = load_text("");
  CHECK(r && r->nrows == 0 && r->nnotes == 1);
  report_free(&r);
}

/* The report says how many pre-trained models the transfer jobs started
 * from: one shared model (its spread leaves out pre-training's variance), or
 * one per seed. Scratch jobs name none and do not count. */
static void test_pretrained_note(void) {
  static char text[4096];
  const char *fmt =
      "{\"job\": \"t.%s.k5.s%d\", \"target\": \"t\", \"strategy\": \"%s\", \"k\": 5, "
      "\"seed\": %d, \"status\": \"ok\", \"test_acc\": 0.5%s%s%s}\n";
  for (int per_seed = 0; per_seed < 2; per_seed++) {
    text[0] = '\0';
    char l[512], pre[64];
    for (int s = 0; s < 3; s++) {
      snprintf(l, sizeof l, fmt, "scratch", s, "scratch", s, "", "", "");
      append(text, sizeof text, l);
      snprintf(pre, sizeof pre, "r/pretrain%s%d/ckpt-9.ferry", per_seed ? ".s" : "", per_seed ? s : 0);
      snprintf(l, sizeof l, fmt, "finetune", s, "finetune", s, ", \"pretrained\": \"", pre, "\"");
      append(text, sizeof text, l);
    }
    report *r = load_text(text);
    if (!r) return;
    int found = 0;
    for (int i = 0; i < r->nnotes; i++)
      found += per_seed ? strstr(r->notes[i], "3 transfer job(s) started from 3 pre-trained models") != NULL
                        : strstr(r->notes[i], "3 transfer job(s) all started from one pre-trained "
                                              "model (r/pretrain0/ckpt-9.ferry)") != NULL;
    CHECK_MSG(found == 1, "per_seed %d: %d notes, first \"%s\"", per_seed, r->nnotes,
              r->nnotes ? r->notes[0] : "");
    report_free(&r);
  }
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-test-report.XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_reader();
  test_aggregation();
  test_rule();
  test_single_seed_rows();
  test_failed_and_superseded();
  test_malformed();
  test_missing_file();
  test_unknown_and_extra();
  test_write_files();
  test_empty();
  test_pretrained_note();
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return check_report();
}
