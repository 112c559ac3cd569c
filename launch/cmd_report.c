/* `ferry report RUN_DIR [--no-plots] [--json]`: the transfer report of a run
 * directory (launch/report.h), without MPI. Writes RUN_DIR/report.md,
 * RUN_DIR/report.json and RUN_DIR/plots/, prints the table (or the JSON). */
#include <stdio.h>
#include <string.h>

#include "launch/commands.h"
#include "launch/report.h"
#include "nn/err.h"

void cmd_report_help(void) {
  printf(
      "usage: ferry report RUN_DIR [--no-plots] [--json]\n"
      "\n"
      "Summarises a transfer run: reads RUN_DIR/results.jsonl (one line per finished\n"
      "or failed job) and writes RUN_DIR/report.md, RUN_DIR/report.json and, when\n"
      "gnuplot is installed, PNG plots in RUN_DIR/plots/ (test accuracy vs K per\n"
      "target; validation accuracy vs step per target and K). One row per target x\n"
      "K x strategy: finished and failed seeds, test accuracy mean ± std over seeds,\n"
      "mean wall time, gain over scratch (points ± standard error) and a NEGATIVE\n"
      "TRANSFER flag. Rule: a strategy is flagged when its mean is below scratch's\n"
      "by more than 2 SE of the difference, SE = sqrt(s1^2/n1 + s2^2/n2); with a\n"
      "single finished seed on either side the margin is 1 point.\n"
      "\n"
      "options:\n"
      "  --no-plots   do not run gnuplot\n"
      "  --json       print report.json instead of the table\n"
      "  --help       this text\n"
      "\n"
      "exit codes: 0 ok, 1 I/O error, 2 usage error or a missing or malformed\n"
      "            results.jsonl (the message names the file, line and column).\n"
      "format and rule: docs/report.md\n");
}

static int usage_error(const char *why) {
  fprintf(stderr, "ferry report: %s\n\nusage: ferry report RUN_DIR [--no-plots] [--json]\n"
                  "       ferry report --help\n", why);
  return 2;
}

int cmd_report(int argc, char **argv) {
  const char *dir = NULL;
  int plots = 1, json = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      cmd_report_help();
      return 0;
    }
  }
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--no-plots")) {
      plots = 0;
    } else if (!strcmp(argv[i], "--json")) {
      json = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      char msg[128];
      snprintf(msg, sizeof msg, "unknown option \"%.60s\"", argv[i]);
      return usage_error(msg);
    } else if (dir) {
      return usage_error("expected exactly one RUN_DIR");
    } else {
      dir = argv[i];
    }
  }
  if (!dir) return usage_error("missing RUN_DIR");
  report *r = NULL;
  int rc = report_load(&r, dir);
  if (!rc) rc = report_write_files(r, plots);
  if (!rc) {
    if (json)
      report_print_json(r, stdout);
    else
      report_print_table(r, stdout);
    for (int i = 0; i < r->nnotes; i++) fprintf(stderr, "ferry report: note: %s\n", r->notes[i]);
    if (!json) printf("\nwrote %s/report.md and %s/report.json%s\n", dir, dir,
                      r->nplots ? " and plots/*.png" : "");
  }
  report_free(&r);
  if (rc) launch_print_error(0);
  return rc ? (rc == FERRY_EUSER ? 2 : 1) : 0;
}
