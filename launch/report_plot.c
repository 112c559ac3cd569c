/* Plots of the transfer report, drawn by gnuplot: ferry writes
 * RUN_DIR/plots/report.gp and one .dat file per figure, then runs gnuplot
 * on it with posix_spawn (no shell; no path is ever pasted into a command
 * line or into the script). Figures: test accuracy vs K per target
 * (one line per strategy, error bars = std over seeds) and validation
 * accuracy vs step per target x K (mean over seeds). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch/report.h"
#include "launch/report_io.h"
#include "nn/err.h"

typedef struct {
  double step, val;
} curve_pt;

typedef struct {
  report_figure *f;
  int n;
} figure_list;

/* The first executable "gnuplot" on PATH into out; 0 when there is none. */
static int find_gnuplot(char *out, size_t n) {
  const char *path = getenv("PATH");
  if (!path || !*path) return 0;
  while (*path) {
    size_t len = strcspn(path, ":");
    struct stat st;
    if (len > 0 && (size_t)snprintf(out, n, "%.*s/gnuplot", (int)len, path) < n &&
        stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
      return 1;
    path += len;
    if (*path == ':') path++;
  }
  return 0;
}

/* A gnuplot single-quoted string: no escapes inside except '' for a quote;
 * control characters (which would end the command) become spaces. */
static void gp_quote(FILE *f, const char *s) {
  fputc('\'', f);
  for (; *s; s++) {
    if (*s == '\'')
      fputs("''", f);
    else
      fputc((unsigned char)*s < 0x20 ? ' ' : *s, f);
  }
  fputc('\'', f);
}

/* A file-name-safe form of a target name: [A-Za-z0-9._-], at most 60 bytes,
 * never starting with a dot. */
static void safe_name(char *out, size_t n, const char *s) {
  size_t w = 0;
  for (; *s && w + 1 < n && w < 60; s++) {
    char c = *s;
    int okc = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_' || (c == '.' && w > 0);
    out[w++] = okc ? c : '_';
  }
  out[w] = '\0';
}

static int add_pending(figure_list *l, const char *file, const char *caption, const char *target) {
  report_figure *g = realloc(l->f, (size_t)(l->n + 1) * sizeof *g);
  CHECK_ALLOC(g, (size_t)(l->n + 1) * sizeof *g);
  l->f = g;
  report_figure *fig = &l->f[l->n];
  size_t pn = strlen(file) + 8;
  fig->path = malloc(pn);
  fig->caption = malloc(strlen(caption) + 1);
  fig->target = target;
  if (!fig->path || !fig->caption) {
    free(fig->path);
    free(fig->caption);
    CHECK_ALLOC(NULL, pn);
  }
  snprintf(fig->path, pn, "plots/%s", file);
  memcpy(fig->caption, caption, strlen(caption) + 1);
  l->n++;
  return 0;
}

static void free_pending(figure_list *l) {
  for (int i = 0; i < l->n; i++) {
    free(l->f[i].path);
    free(l->f[i].caption);
  }
  free(l->f);
  l->f = NULL;
  l->n = 0;
}

static FILE *open_in(const char *dir, const char *name, char *path, size_t n) {
  snprintf(path, n, "%s/%s", dir, name);
  return fopen(path, "w");
}

static int close_checked(FILE *f, const char *path) {
  int bad = ferror(f);
  bad |= fclose(f);
  CHECK_RT(!bad, "cannot write %s: %s", path, strerror(errno));
  return 0;
}

/* The common head of report.gp: PNG terminal (cairo when this gnuplot has
 * it), UTF-8, grid. */
static void gp_head(FILE *gp) {
  fputs("# Written by `ferry report`; redraw with `gnuplot -c report.gp .` (ARG1: this directory).\n"
        "cd ARG1\n"
        "set encoding utf8\n"
        "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
        "  set terminal pngcairo size 960,600 font 'sans,11' linewidth 1.5\n"
        "} else {\n"
        "  set terminal png size 960,600\n"
        "}\n"
        "set grid\n"
        "set key outside right top box\n",
        gp);
}

static int cmp_strategy(const char *a, const char *b) {
  int sa = !strcmp(a, "scratch"), sb = !strcmp(b, "scratch");
  if (sa != sb) return sa ? -1 : 1;
  return strcmp(a, b);
}

/* A strategy's line style, the same in every figure: scratch (the
 * baseline) black and dashed, the others gnuplot line types 1, 2, ... in
 * name order over the whole report. */
static void line_style(const report *r, const char *strategy, char *buf, size_t n) {
  if (!strcmp(strategy, "scratch")) {
    snprintf(buf, n, "linecolor rgb 'black' dashtype 2");
    return;
  }
  int idx = 1;
  for (int i = 0; i < r->nrows; i++) {
    const char *s = r->rows[i].strategy;
    if (!strcmp(s, "scratch") || strcmp(s, strategy) >= 0) continue;
    int first = 1; /* count each name once: its first row */
    for (int j = 0; j < i && first; j++) first = strcmp(r->rows[j].strategy, s) != 0;
    idx += first;
  }
  snprintf(buf, n, "linetype %d", idx);
}

/* The distinct strategies of rows [first, end), scratch first, into names. */
static int strategies_of(const report *r, int first, int end, const char **names) {
  int n = 0;
  for (int i = first; i < end; i++) {
    int seen = 0;
    for (int s = 0; s < n; s++) seen |= !strcmp(names[s], r->rows[i].strategy);
    if (seen) continue;
    int at = n++;
    while (at > 0 && cmp_strategy(names[at - 1], r->rows[i].strategy) > 0) {
      names[at] = names[at - 1];
      at--;
    }
    names[at] = r->rows[i].strategy;
  }
  return n;
}

/* Figure 1 of a target: test accuracy vs K, one line per strategy. */
static int plot_acc_vs_k(const report *r, int first, int end, const char *dir, const char *tname,
                         FILE *gp, figure_list *pending) {
  const char *target = r->rows[first].target;
  int any = 0;
  for (int i = first; i < end; i++) any |= r->rows[i].n_ok > 0;
  if (!any) return 0; /* every job of this target failed: nothing to draw */
  const char **strat = calloc((size_t)(end - first), sizeof *strat);
  int *ks = calloc((size_t)(end - first), sizeof *ks);
  if (!strat || !ks) {
    free(strat);
    free(ks);
    CHECK_ALLOC(NULL, (size_t)(end - first) * sizeof *ks);
  }
  int ns = strategies_of(r, first, end, strat), nk = 0;
  for (int i = first; i < end; i++)
    if (!nk || ks[nk - 1] != r->rows[i].k) ks[nk++] = r->rows[i].k;
  char dat[128], png[128], path[4096];
  snprintf(dat, sizeof dat, "acc_vs_k-%s.dat", tname);
  snprintf(png, sizeof png, "acc_vs_k-%s.png", tname);
  FILE *f = open_in(dir, dat, path, sizeof path);
  if (!f) {
    free(strat);
    free(ks);
    FERRY_FAIL(FERRY_ERUNTIME, "cannot create %s: %s", path, strerror(errno));
  }
  /* One block per strategy (gnuplot "index"), shifted a little sideways so
   * error bars of different strategies at the same K do not overlap. */
  int nblocks = 0;
  fprintf(gp, "\nset output '%s'\nset title ", png);
  gp_quote(gp, target);
  fputs(" . ': test accuracy vs K (mean ± std over seeds)' noenhanced\n"
        "set xlabel 'K, labelled samples per class'\nset ylabel 'test accuracy (%)'\n"
        "set xtics (",
        gp);
  for (int k = 0; k < nk; k++) {
    char lab[16];
    if (ks[k])
      snprintf(lab, sizeof lab, "%d", ks[k]);
    else
      snprintf(lab, sizeof lab, "all");
    fprintf(gp, "%s'%s' %d", k ? ", " : "", lab, k);
  }
  fprintf(gp, ")\nset xrange [-0.5:%g]\nset autoscale y\nplot", nk - 0.5);
  for (int s = 0; s < ns; s++) {
    int npts = 0;
    double shift = ns > 1 ? (s - (ns - 1) / 2.0) * 0.08 : 0;
    for (int i = first; i < end; i++) {
      const report_row *w = &r->rows[i];
      if (strcmp(w->strategy, strat[s]) || !w->n_ok) continue;
      if (!npts++) fprintf(f, "# strategy %s: x, mean %%, std %%, K\n", strat[s]);
      int xi = 0;
      while (ks[xi] != w->k) xi++;
      fprintf(f, "%.4f %.6g %.6g %d\n", xi + shift, 100 * w->acc_mean,
              isnan(w->acc_std) ? 0.0 : 100 * w->acc_std, w->k);
    }
    if (!npts) continue; /* every seed failed: nothing to draw */
    fputs("\n\n", f);
    char style[64];
    line_style(r, strat[s], style, sizeof style);
    fprintf(gp, "%s '%s' index %d using 1:2:3 with yerrorlines %s pointtype 7 title ",
            nblocks ? ", \\\n    " : "", dat, nblocks, style);
    gp_quote(gp, strat[s]);
    fputs(" noenhanced", gp);
    nblocks++;
  }
  fputc('\n', gp);
  free(strat);
  free(ks);
  CHECK_CALL(close_checked(f, path));
  char cap[512];
  snprintf(cap, sizeof cap, "%s: test accuracy vs K per strategy", target);
  return add_pending(pending, png, cap, target);
}

static int cmp_pt(const void *a, const void *b) {
  const curve_pt *x = a, *y = b;
  return (x->step > y->step) - (x->step < y->step);
}

/* Appends the (step, val_acc) points of one job's curve file to *pts. A
 * missing or malformed curve is a note, not an error: the table stands. */
static int read_curve(report *r, const report_job *j, curve_pt **pts, int *n, int *cap) {
  char path[4096];
  if (j->curve[0] == '/')
    snprintf(path, sizeof path, "%s", j->curve);
  else
    snprintf(path, sizeof path, "%s/%s", r->run_dir, j->curve);
  FILE *f = fopen(path, "r");
  if (!f) return report_add_note(r, "curve of job %s: cannot open %s: %s", j->job, path, strerror(errno));
  char *buf = NULL;
  size_t bcap = 0;
  ssize_t len;
  int lineno = 0, rc = 0, n0 = *n;
  while ((len = getline(&buf, &bcap, f)) >= 0) {
    lineno++;
    report_jobj o;
    if (report_json_parse(&o, buf, (size_t)len, path, lineno)) {
      report_jobj_free(&o);
      rc = report_add_note(r, "curve of job %s skipped: %s", j->job, ferry_err_msg());
      ferry_err_clear();
      *n = n0;
      break;
    }
    const report_jfield *st = report_jobj_get(&o, "step"), *va = report_jobj_get(&o, "val_acc");
    if (st && st->type == REPORT_JNUM && va && va->type == REPORT_JNUM) {
      if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 256;
        curve_pt *g = realloc(*pts, (size_t)nc * sizeof *g);
        if (!g) {
          report_jobj_free(&o);
          rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "out of memory reading %s", path);
          break;
        }
        *pts = g;
        *cap = nc;
      }
      (*pts)[(*n)++] = (curve_pt){st->num, 100 * va->num};
    }
    report_jobj_free(&o);
  }
  free(buf);
  fclose(f);
  return rc;
}

/* Figure 2 of a target x K: validation accuracy vs step, one line per
 * strategy, the mean over the seeds that logged each step. */
static int plot_curves(report *r, int first, int end, const char *dir, const char *tname, FILE *gp,
                       figure_list *pending) {
  const report_row *w0 = &r->rows[first];
  char dat[160], png[160], path[4096], klab[16];
  if (w0->k)
    snprintf(klab, sizeof klab, "%d", w0->k);
  else
    snprintf(klab, sizeof klab, "all");
  snprintf(dat, sizeof dat, "curves-%s-k%s.dat", tname, klab);
  snprintf(png, sizeof png, "curves-%s-k%s.png", tname, klab);
  FILE *f = open_in(dir, dat, path, sizeof path);
  CHECK_RT(f, "cannot create %s: %s", path, strerror(errno));
  /* The plot command grows in memory: it is written only if a line has data. */
  char *plotcmd = NULL;
  size_t plotlen = 0;
  FILE *pc = open_memstream(&plotcmd, &plotlen);
  if (!pc) {
    fclose(f);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory building the plot command of %s", path);
  }
  curve_pt *pts = NULL;
  int cap = 0, nblocks = 0, rc = 0;
  for (int i = first; i < end && !rc; i++) {
    const report_row *w = &r->rows[i];
    int n = 0, nseeds = 0;
    for (int j = 0; j < r->njobs && !rc; j++) {
      const report_job *jb = &r->jobs[j];
      if (!jb->ok || !jb->curve || jb->k != w->k || strcmp(jb->target, w->target) ||
          strcmp(jb->strategy, w->strategy))
        continue;
      int before = n;
      rc = read_curve(r, jb, &pts, &n, &cap);
      nseeds += n > before;
    }
    if (rc || !n) continue;
    qsort(pts, (size_t)n, sizeof *pts, cmp_pt);
    fprintf(f, "# strategy %s (%d seed(s)): step, mean val_acc %%, seeds at this step\n", w->strategy,
            nseeds);
    for (int a = 0; a < n;) {
      int b = a;
      double s = 0;
      while (b < n && pts[b].step == pts[a].step) s += pts[b++].val;
      fprintf(f, "%.10g %.6g %d\n", pts[a].step, s / (b - a), b - a);
      a = b;
    }
    fputs("\n\n", f);
    char style[64], title[512];
    line_style(r, w->strategy, style, sizeof style);
    snprintf(title, sizeof title, "%s (%d seed%s)", w->strategy, nseeds, nseeds == 1 ? "" : "s");
    fprintf(pc, "%s '%s' index %d using 1:2 with lines %s title ", nblocks ? ", \\\n    " : "", dat,
            nblocks, style);
    gp_quote(pc, title);
    fputs(" noenhanced", pc);
    nblocks++;
  }
  free(pts);
  int pcbad = fclose(pc) != 0;
  int frc = close_checked(f, path);
  if (rc || frc || pcbad || !nblocks) {
    free(plotcmd);
    CHECK_CALL(rc);
    CHECK_CALL(frc);
    CHECK_RT(!pcbad, "out of memory building the plot command of %s", path);
    unlink(path); /* no curve data for this target and K */
    return 0;
  }
  fprintf(gp, "\nset output '%s'\nset title ", png);
  gp_quote(gp, w0->target);
  fprintf(gp, " . ', K = %s: validation accuracy during training (mean over seeds)' noenhanced\n"
          "set xlabel 'step'\nset ylabel 'validation accuracy (%%)'\nset xtics autofreq\n"
          "set autoscale x\nset autoscale y\nplot%s\n", klab, plotcmd);
  free(plotcmd);
  char caption[512];
  snprintf(caption, sizeof caption, "%s, K = %s: validation accuracy vs step", w0->target, klab);
  return add_pending(pending, png, caption, w0->target);
}

/* Writes report.gp and the data files for every target. */
static int write_script(report *r, const char *dir, figure_list *pending) {
  char gppath[4096];
  FILE *gp = open_in(dir, "report.gp", gppath, sizeof gppath);
  CHECK_RT(gp, "cannot create %s: %s", gppath, strerror(errno));
  gp_head(gp);
  char (*names)[64] = calloc((size_t)r->nrows + 1, sizeof *names);
  int rc = names ? 0 : ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "out of memory");
  int nt = 0;
  for (int i = 0; i < r->nrows && !rc;) {
    int e = i + 1;
    while (e < r->nrows && !strcmp(r->rows[e].target, r->rows[i].target)) e++;
    char tname[64];
    safe_name(tname, sizeof tname - 8, r->rows[i].target);
    for (int t = 0; t < nt; t++)
      if (!strcmp(names[t], tname)) { /* two targets that only differ in unsafe characters */
        size_t l = strlen(tname);
        snprintf(tname + l, sizeof tname - l, "-%d", nt);
        break;
      }
    snprintf(names[nt++], sizeof names[0], "%s", tname);
    rc = plot_acc_vs_k(r, i, e, dir, tname, gp, pending);
    for (int a = i; a < e && !rc;) {
      int b = a + 1;
      while (b < e && r->rows[b].k == r->rows[a].k) b++;
      rc = plot_curves(r, a, b, dir, tname, gp, pending);
      a = b;
    }
    i = e;
  }
  free(names);
  int crc = close_checked(gp, gppath);
  CHECK_CALL(rc);
  CHECK_CALL(crc);
  return 0;
}

/* Runs `gnuplot -c DIR/report.gp DIR` (the script starts with `cd ARG1`, so
 * the path reaches gnuplot as a string value, never as code), with stdin
 * from /dev/null and both outputs into DIR/gnuplot.log. posix_spawn, not
 * fork: under MPI a fork of the rank-0 process can upset the interconnect.
 * Returns the exit status, or -1 with *err set when it could not start. */
static int run_gnuplot(const char *gnuplot, const char *dir, int *err) {
  size_t n = strlen(dir) + 16;
  char *script = malloc(n), *log = malloc(n);
  posix_spawn_file_actions_t fa;
  int rc = script && log ? posix_spawn_file_actions_init(&fa) : ENOMEM;
  if (rc) {
    free(script);
    free(log);
    *err = rc;
    return -1;
  }
  snprintf(script, n, "%s/report.gp", dir);
  snprintf(log, n, "%s/gnuplot.log", dir);
  rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (!rc) rc = posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (!rc) rc = posix_spawn_file_actions_adddup2(&fa, 1, 2);
  char *const argv[] = {(char *)"gnuplot", (char *)"-c", script, (char *)dir, NULL};
  extern char **environ;
  pid_t pid;
  if (!rc) rc = posix_spawn(&pid, gnuplot, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  free(script);
  free(log);
  if (rc) {
    *err = rc;
    return -1;
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) {
      *err = errno;
      return -1;
    }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

int report_plot(report *r) {
  char gnuplot[4096];
  if (!find_gnuplot(gnuplot, sizeof gnuplot)) {
    r->plots_state = REPORT_PLOTS_NO_GNUPLOT;
    return report_add_note(r, "no plots: gnuplot is not on PATH (Debian: apt-get install gnuplot-nox)");
  }
  if (!r->nrows) {
    r->plots_state = REPORT_PLOTS_DONE;
    return 0;
  }
  size_t dn = strlen(r->run_dir) + 8;
  char *dir = malloc(dn);
  CHECK_ALLOC(dir, dn);
  snprintf(dir, dn, "%s/plots", r->run_dir);
  figure_list pending = {NULL, 0};
  int rc = io_mkdirs(dir);
  if (!rc) rc = write_script(r, dir, &pending);
  if (rc) {
    free(dir);
    free_pending(&pending);
    CHECK_CALL(rc);
  }
  int err = 0, st = run_gnuplot(gnuplot, dir, &err);
  free(dir);
  if (st != 0) {
    free_pending(&pending);
    r->plots_state = REPORT_PLOTS_FAILED;
    if (st < 0) return report_add_note(r, "no plots: cannot run %s: %s", gnuplot, strerror(err));
    return report_add_note(r, "no plots: gnuplot exited with status %d; its messages are in "
                           "plots/gnuplot.log", st);
  }
  /* Keep the figures gnuplot actually wrote. */
  for (int i = 0; i < pending.n; i++) {
    char *full = malloc(strlen(r->run_dir) + strlen(pending.f[i].path) + 2);
    struct stat sb;
    int there = full && (sprintf(full, "%s/%s", r->run_dir, pending.f[i].path), 1) &&
                stat(full, &sb) == 0 && sb.st_size > 0;
    free(full);
    if (!there) {
      rc = report_add_note(r, "gnuplot wrote no %s", pending.f[i].path);
      free(pending.f[i].path);
      free(pending.f[i].caption);
      pending.f[i].path = pending.f[i].caption = NULL;
      if (rc) break;
      continue;
    }
    report_figure *g = realloc(r->plots, (size_t)(r->nplots + 1) * sizeof *g);
    if (!g) {
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__, "out of memory");
      break;
    }
    r->plots = g;
    r->plots[r->nplots++] = pending.f[i];
    pending.f[i].path = pending.f[i].caption = NULL;
  }
  free_pending(&pending);
  r->plots_state = REPORT_PLOTS_DONE;
  CHECK_CALL(rc);
  return 0;
}
