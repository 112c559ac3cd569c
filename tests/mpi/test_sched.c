/* The coordinator's job queue (dist/sched.h) without any training: at every
 * rank count and group size 1, 2, 3 and "all", every job is handed out and
 * its result comes back exactly once; each job runs on every rank of the
 * group that took it; with retries, jobs that fail once go back into the
 * queue (groups that find it empty wait while jobs still run, then get the
 * retry); without, a group that finds the queue empty stops while others
 * still run, and the coordinator keeps serving them; the sweep ends on every
 * rank without a hang. Jobs take 0-2 ms and the worker
 * serves the queue between "steps", as the trainer does. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "dist/comm.h"
#include "dist/sched.h"
#include "mpi_report.h"
#include "nn/err.h"
#include "../unit/check.h"

enum { NJOBS = 23 };

typedef struct {
  int queue[2 * NJOBS], head, tail; /* pending job indices */
  int attempt[NJOBS];
  int results[NJOBS];               /* final results received per job */
  int failures[NJOBS];              /* failed runs received per job */
  int running;
  int retry;                        /* requeue failed runs (else they are final) */
  int bad;                          /* malformed messages */
} policy;

typedef struct {
  int32_t job, attempt;
} spec_msg;

typedef struct {
  int32_t job, attempt, group, ranks, ran_on, ok;
} result_msg;

/* A job fails on its first run when job % 5 == 3: it is retried once. */
static int fails(int job, int attempt) { return job % 5 == 3 && attempt == 0; }

static int next(void *ctx, int group, int *what, void **spec, size_t *len) {
  policy *p = ctx;
  (void)group;
  if (p->head == p->tail) {
    /* Without retries nothing can come back: a free group stops at once,
     * while other groups still run (the coordinator must serve them on). */
    *what = p->retry && p->running > 0 ? DIST_SCHED_WAIT : DIST_SCHED_DONE;
    return 0;
  }
  spec_msg *m = malloc(sizeof *m);
  CHECK_ALLOC(m, sizeof *m);
  m->job = p->queue[p->head++];
  m->attempt = p->attempt[m->job];
  *spec = m;
  *len = sizeof *m;
  *what = DIST_SCHED_JOB;
  p->running++;
  return 0;
}

static int result(void *ctx, int group, const void *res, size_t len) {
  policy *p = ctx;
  if (len != sizeof(result_msg)) {
    p->bad++;
    return 0;
  }
  result_msg r;
  memcpy(&r, res, sizeof r);
  p->running--;
  if (r.job < 0 || r.job >= NJOBS || r.group != group || r.ran_on != r.ranks) {
    p->bad++;
    return 0;
  }
  if (!r.ok && !p->retry) {
    p->failures[r.job]++;
    return 0;
  }
  if (!r.ok) {
    p->failures[r.job]++;
    p->attempt[r.job] = r.attempt + 1;
    p->queue[p->tail++] = r.job;
    return 0;
  }
  p->results[r.job]++;
  return 0;
}

static void sleep_ms(int ms) {
  struct timespec ts = {0, (long)ms * 1000000L};
  nanosleep(&ts, NULL);
}

static void run_sweep(const dist_comm *world, int group_size, int retry) {
  policy p;
  memset(&p, 0, sizeof p);
  p.retry = retry;
  for (int j = 0; j < NJOBS; j++) p.queue[p.tail++] = j;
  dist_sched_ops ops = {.next = next, .result = result, .ctx = &p};
  dist_sched *s = NULL;
  CHECK(dist_sched_new(&s, world, group_size, world->rank == 0 ? &ops : NULL) == 0);
  if (!s) return;
  const dist_comm *g = dist_sched_group(s);
  int gs = group_size <= 0 || group_size > world->size ? world->size : group_size;
  int gid = dist_sched_group_id(s);
  CHECK(gid == world->rank / gs);
  CHECK(dist_sched_ngroups(s) == (world->size + gs - 1) / gs);
  int want_size = world->size - gid * gs < gs ? world->size - gid * gs : gs;
  CHECK_MSG(g->size == want_size, "group %d has %d ranks, want %d", gid, g->size, want_size);
  result_msg last;
  const void *prev = NULL;
  size_t prev_len = 0;
  int ran = 0;
  for (;;) {
    void *spec = NULL;
    size_t len = 0;
    if (dist_sched_next(s, prev, prev_len, &spec, &len) != 0) {
      CHECK_MSG(0, "dist_sched_next failed: %s", ferry_err_msg());
      break;
    }
    if (!spec) break;
    CHECK(len == sizeof(spec_msg));
    spec_msg m;
    memcpy(&m, spec, sizeof m);
    free(spec);
    /* "Training": a few steps, serving the queue between them. */
    for (int step = 0; step < 3; step++) {
      sleep_ms(m.job % 3);
      CHECK(dist_sched_serve(s) == 0);
    }
    int one = 1;
    MPI_Allreduce(MPI_IN_PLACE, &one, 1, MPI_INT, MPI_SUM, g->comm);
    last = (result_msg){.job = m.job, .attempt = m.attempt, .group = gid, .ranks = g->size,
                        .ran_on = one, .ok = !fails(m.job, m.attempt)};
    prev = &last;
    prev_len = g->rank == 0 ? sizeof last : 0;
    ran++;
  }
  int leader = g->rank == 0; /* g belongs to s */
  dist_sched_free(&s);
  CHECK(s == NULL);
  if (world->rank == 0) {
    int once = 1, retried = 1;
    for (int j = 0; j < NJOBS; j++) {
      once &= p.results[j] + (retry ? 0 : p.failures[j]) == 1;
      retried &= p.failures[j] == (j % 5 == 3);
    }
    CHECK_MSG(once, "group size %d: a job's result did not arrive exactly once", group_size);
    CHECK_MSG(retried, "group size %d: failed runs were not retried exactly once", group_size);
    CHECK(p.bad == 0);
    CHECK(p.running == 0);
  }
  /* Every job ran on some group, and work was counted on every group's ranks. */
  int total = leader ? ran : 0;
  MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT, MPI_SUM, world->comm);
  int want = NJOBS + (retry ? NJOBS / 5 + (NJOBS % 5 > 3) : 0);
  CHECK_MSG(total == want, "group size %d: %d runs, want %d", group_size, total, want);
}

int main(int argc, char **argv) {
  dist_comm c;
  if (dist_init(&argc, &argv, &c) != 0) return 1;
  int sizes[] = {1, 2, 3, 0};
  for (int retry = 0; retry <= 1; retry++)
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) run_sweep(&c, sizes[i], retry);
  int rc = mpi_check_report(c.comm);
  dist_finalize();
  return rc;
}
