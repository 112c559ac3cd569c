/* The transfer report (`ferry report RUN_DIR`): reads the job results a
 * transfer run appends to RUN_DIR/results.jsonl, aggregates them per
 * target x strategy x K over seeds, compares every transfer strategy with the
 * scratch baseline (gain and the negative-transfer rule), and writes
 * RUN_DIR/report.md, RUN_DIR/report.json and gnuplot PNGs in RUN_DIR/plots/.
 * Nothing here uses MPI: rank 0 (or a user afterwards) calls it. Format and
 * rule: docs/report.md. */
#ifndef FERRY_LAUNCH_REPORT_H
#define FERRY_LAUNCH_REPORT_H

#include <stddef.h>
#include <stdio.h>

/* ---- the line reader ------------------------------------------------------
 * results.jsonl and the curve files hold one flat JSON object per line:
 * string, number, true/false and null values, and (one level deep only)
 * objects of such values, like "extra". Arrays and deeper nesting are
 * refused. The reader is strict RFC 8259 for everything it accepts: no
 * trailing commas, no NaN/Infinity, no control characters or invalid UTF-8
 * in strings, no duplicate keys, nothing after the closing brace. */
enum { REPORT_JNULL, REPORT_JBOOL, REPORT_JNUM, REPORT_JSTR, REPORT_JOBJ };

typedef struct report_jfield {
  char *key;
  int type;                   /* REPORT_J* */
  int col;                    /* 1-based byte column of the value, for messages */
  int boolean;                /* REPORT_JBOOL */
  double num;                 /* REPORT_JNUM (always finite) */
  char *str;                  /* REPORT_JSTR: UTF-8 without NUL bytes */
  struct report_jfield *sub;  /* REPORT_JOBJ: its fields (never objects) */
  int nsub;
} report_jfield;

typedef struct {
  report_jfield *f;
  int n;
} report_jobj;

/* Parses text[0..len) as one object into *o (which the caller frees with
 * report_jobj_free, also after a failure). Errors are FERRY_EUSER with the
 * message "FILE:LINE:COL: what was expected, found what". Not collective. */
int report_json_parse(report_jobj *o, const char *text, size_t len, const char *file, int line);
void report_jobj_free(report_jobj *o);
/* The field named key, or NULL. */
const report_jfield *report_jobj_get(const report_jobj *o, const char *key);

/* ---- jobs, rows and the rule ------------------------------------------- */
typedef struct {
  char *key;
  double value;
} report_extra;

/* One line of results.jsonl. Numbers absent or null are NAN. */
typedef struct {
  char *job, *target, *strategy, *reason, *curve; /* reason, curve may be NULL */
  char *pretrained;                               /* checkpoint it started from, or NULL */
  char *options;                                  /* non-default strategy options, or NULL */
  int k;                                          /* labelled samples per class; 0 = all */
  int seed;
  int ok;                                         /* status "ok" (1) or "failed" (0) */
  int line;                                       /* line number in results.jsonl */
  double test_acc, test_loss, val_acc, wall_s, train_s, steps;
  report_extra *extra;                            /* the numeric values of "extra" */
  int nextra;
} report_job;

/* Checks one parsed line against the job schema (docs/report.md) and fills
 * *j, which owns copies of the strings (free with report_job_clear, also
 * after a failure). FERRY_EUSER naming file:line:col and the field. */
int report_job_from_json(report_job *j, const report_jobj *o, const char *file, int line);
void report_job_clear(report_job *j);

/* The comparison of a transfer row (mean m1, sample std s1 over n1 seeds)
 * with scratch (m2, s2, n2). Accuracies are fractions; results in points. */
typedef struct {
  double gain_pts;   /* 100 (m1 - m2) */
  double se_pts;     /* 100 sqrt(s1^2/n1 + s2^2/n2); NAN when n1 or n2 is 1 */
  double margin_pts; /* 2 se, or 1 point when se is NAN */
  int negative;      /* gain_pts < -margin_pts */
} report_cmp;

/* The rule in one sentence, as written into report.md and report.json. */
extern const char report_rule_text[];
/* n1, n2 >= 1. Pure function. */
report_cmp report_compare(double m1, double s1, int n1, double m2, double s2, int n2);

/* One row of the report: target x strategy x K over seeds. Numbers that
 * cannot be computed (no finished seed, std of one seed, no scratch row to
 * compare with) are NAN. */
typedef struct {
  const char *target, *strategy; /* borrowed from the report's jobs */
  int k;
  int n_ok, n_failed;
  double acc_mean, acc_std;      /* test accuracy, fraction */
  double val_acc_mean, test_loss_mean, wall_mean, train_mean;
  int has_cmp;                   /* compared with a scratch row */
  report_cmp cmp;
  report_extra *extra;           /* mean of each numeric "extra" over finished seeds */
  int nextra;
  int *seeds;                    /* seeds finished ok, ascending */
} report_row;

enum { REPORT_PLOTS_OFF, REPORT_PLOTS_NO_GNUPLOT, REPORT_PLOTS_DONE, REPORT_PLOTS_FAILED };

/* One PNG written by report_plot. */
typedef struct {
  char *path;          /* relative to run_dir, e.g. "plots/acc_vs_k-fmnist-5to9.png" */
  char *caption;
  const char *target;  /* borrowed from the report's jobs */
} report_figure;

typedef struct report {
  char *run_dir, *results_path;
  report_job *jobs;     /* every valid line, sorted by target, K, strategy, seed */
  int njobs;
  int nsuperseded;      /* lines replaced by a later line for the same job */
  report_row *rows;     /* sorted by target, K (0 = all last), strategy (scratch first) */
  int nrows;
  report_job **failed;  /* jobs with status "failed", in row order */
  int nfailed;
  char **notes;         /* warnings for the reader (missing curves, plot trouble) */
  int nnotes;
  report_figure *plots; /* PNGs that gnuplot wrote */
  int nplots;
  int plots_state;      /* REPORT_PLOTS_* */
} report;

/* Reads RUN_DIR/results.jsonl and aggregates it into *out (free with
 * report_free). FERRY_EUSER when the file is missing or a line is
 * malformed (message "RUN_DIR/results.jsonl:LINE:COL: ..."),
 * FERRY_ERUNTIME for I/O. Not collective. */
int report_load(report **out, const char *run_dir);
void report_free(report **r);

/* When plots != 0: RUN_DIR/plots/ gets one .gp script and .dat files per
 * figure and gnuplot (found on PATH, run without a shell) renders the PNGs;
 * no gnuplot is a note, not an error. Then report.md and report.json are
 * written atomically (temp file, fsync, rename). FERRY_ERUNTIME for I/O. */
int report_write_files(report *r, int plots);
/* Renders the plots only (called by report_write_files). */
int report_plot(report *r);
/* The table as aligned plain text, and report.json's document. */
void report_print_table(const report *r, FILE *f);
void report_print_json(const report *r, FILE *f);

/* Appends a note (printf format) shown in report.md, report.json and on
 * stderr by `ferry report`. */
int report_add_note(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* report_load + report_write_files + report_free. */
int report_write(const char *run_dir, int plots);

#endif
