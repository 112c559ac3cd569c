/* The coordinator's job queue (dist/sched.h).
 *
 * Messages travel on a duplicate of the world communicator, so they never
 * match the groups' own traffic: a leader sends TAG_REQ (its last result,
 * or no bytes before its first job) to world rank 0, which answers TAG_JOB
 * with the next spec, or no bytes for "stop". A group's ranks get the spec
 * from their leader by broadcast on the group communicator. */
#include "dist/sched.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn/err.h"

enum { TAG_REQ = 701, TAG_JOB = 702 };

struct dist_sched {
  dist_comm world;
  MPI_Comm msg;            /* duplicate of world: requests and replies */
  dist_comm group;         /* this rank's worker group */
  int gid, ngroups, gsize;
  dist_sched_ops ops;
  /* coordinator (world rank 0) */
  unsigned char *waiting;  /* the group asked and waits for an answer */
  unsigned char *stopped;  /* the group was told the sweep is over */
  int nstopped;
};

/* A short sleep between polls: a waiting rank gives its core away. */
static void nap(void) {
  struct timespec ts = {0, 100000};
  nanosleep(&ts, NULL);
}

int dist_sched_new(dist_sched **out, const dist_comm *world, int group_size,
                   const dist_sched_ops *ops) {
  *out = NULL;
  dist_sched *s = calloc(1, sizeof *s);
  CHECK_ALLOC(s, sizeof *s);
  s->world = *world;
  int g = group_size <= 0 || group_size > world->size ? world->size : group_size;
  s->gsize = g;
  s->ngroups = (world->size + g - 1) / g;
  s->gid = world->rank / g;
  if (ops) s->ops = *ops;
  MPI_Comm gc;
  int rc = dist_mpi_check(MPI_Comm_dup(world->comm, &s->msg), "MPI_Comm_dup");
  if (!rc) rc = dist_mpi_check(MPI_Comm_split(world->comm, s->gid, world->rank, &gc), "MPI_Comm_split");
  if (rc) {
    free(s);
    return rc;
  }
  dist_comm_wrap(&s->group, gc);
  if (world->rank == 0) {
    s->waiting = calloc((size_t)s->ngroups, 1);
    s->stopped = calloc((size_t)s->ngroups, 1);
    if (!s->waiting || !s->stopped || !s->ops.next || !s->ops.result) {
      dist_sched_free(&s);
      CHECK_RT(0, "coordinator set-up failed (out of memory, or no queue policy given)");
    }
  }
  *out = s;
  return 0;
}

const dist_comm *dist_sched_group(const dist_sched *s) { return &s->group; }
int dist_sched_group_id(const dist_sched *s) { return s->gid; }
int dist_sched_ngroups(const dist_sched *s) { return s->ngroups; }

/* Coordinator: a job, a "wait", or a "stop" for group g (g > 0). */
static int answer(dist_sched *s, int g) {
  int what = DIST_SCHED_WAIT;
  void *spec = NULL;
  size_t len = 0;
  CHECK_CALL(s->ops.next(s->ops.ctx, g, &what, &spec, &len));
  if (what == DIST_SCHED_WAIT) return 0;
  int leader = g * s->gsize;
  if (what == DIST_SCHED_JOB) {
    CHECK_RT(len > 0 && len < (size_t)INT32_MAX, "job spec of %zu bytes", len);
    int rc = dist_mpi_check(MPI_Send(spec, (int)len, MPI_BYTE, leader, TAG_JOB, s->msg), "MPI_Send");
    free(spec);
    CHECK_CALL(rc);
  } else {
    CHECK_CALL(dist_mpi_check(MPI_Send(NULL, 0, MPI_BYTE, leader, TAG_JOB, s->msg), "MPI_Send"));
    s->stopped[g] = 1;
    s->nstopped++;
  }
  s->waiting[g] = 0;
  return 0;
}

int dist_sched_serve(dist_sched *s) {
  if (!s || s->world.rank != 0) return 0;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    CHECK_CALL(dist_mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, TAG_REQ, s->msg, &flag, &st), "MPI_Iprobe"));
    if (!flag) break;
    int n = 0;
    MPI_Get_count(&st, MPI_BYTE, &n);
    unsigned char *buf = malloc((size_t)(n > 0 ? n : 1));
    CHECK_ALLOC(buf, (size_t)n);
    int rc = dist_mpi_check(
        MPI_Recv(buf, n, MPI_BYTE, st.MPI_SOURCE, TAG_REQ, s->msg, MPI_STATUS_IGNORE), "MPI_Recv");
    int g = st.MPI_SOURCE / s->gsize;
    if (!rc && n > 0) rc = s->ops.result(s->ops.ctx, g, buf, (size_t)n);
    free(buf);
    CHECK_CALL(rc);
    s->waiting[g] = 1;
  }
  for (int g = 1; g < s->ngroups; g++)
    if (s->waiting[g]) CHECK_CALL(answer(s, g));
  return 0;
}

/* Waits for a non-blocking operation, napping between tests (and serving
 * the queue, on the coordinator). */
static int wait_req(dist_sched *s, MPI_Request *rq) {
  for (;;) {
    int done = 0;
    CHECK_CALL(dist_mpi_check(MPI_Test(rq, &done, MPI_STATUS_IGNORE), "MPI_Test"));
    if (done) return 0;
    CHECK_CALL(dist_sched_serve(s));
    nap();
  }
}

/* Leader of a group other than 0: send the last result, wait for the answer. */
static int ask(dist_sched *s, const void *prev, size_t prev_len, void **spec, size_t *len) {
  CHECK_RT(prev_len < (size_t)INT32_MAX, "job result of %zu bytes", prev_len);
  CHECK_CALL(dist_mpi_check(MPI_Send(prev, (int)prev_len, MPI_BYTE, 0, TAG_REQ, s->msg), "MPI_Send"));
  MPI_Status st;
  for (;;) {
    int flag = 0;
    CHECK_CALL(dist_mpi_check(MPI_Iprobe(0, TAG_JOB, s->msg, &flag, &st), "MPI_Iprobe"));
    if (flag) break;
    nap();
  }
  int n = 0;
  MPI_Get_count(&st, MPI_BYTE, &n);
  unsigned char *buf = malloc((size_t)(n > 0 ? n : 1));
  CHECK_ALLOC(buf, (size_t)n);
  int rc = dist_mpi_check(MPI_Recv(buf, n, MPI_BYTE, 0, TAG_JOB, s->msg, MPI_STATUS_IGNORE), "MPI_Recv");
  if (rc || n == 0) {
    free(buf);
    buf = NULL;
  }
  *spec = buf;
  *len = (size_t)n;
  return rc;
}

/* World rank 0 as leader of group 0: take the next job from the queue
 * itself; at the end, serve until every other group has stopped. */
static int take(dist_sched *s, const void *prev, size_t prev_len, void **spec, size_t *len) {
  if (prev && prev_len > 0) CHECK_CALL(s->ops.result(s->ops.ctx, 0, prev, prev_len));
  for (;;) {
    CHECK_CALL(dist_sched_serve(s));
    int what = DIST_SCHED_WAIT;
    CHECK_CALL(s->ops.next(s->ops.ctx, 0, &what, spec, len));
    if (what == DIST_SCHED_JOB) return 0;
    if (what == DIST_SCHED_DONE) break;
    nap();
  }
  *spec = NULL;
  *len = 0;
  while (s->nstopped < s->ngroups - 1) {
    CHECK_CALL(dist_sched_serve(s));
    nap();
  }
  return 0;
}

int dist_sched_next(dist_sched *s, const void *prev, size_t prev_len, void **spec, size_t *len) {
  *spec = NULL;
  *len = 0;
  uint64_t n = 0;
  void *buf = NULL;
  size_t blen = 0;
  if (s->group.rank == 0) {
    CHECK_CALL(s->world.rank == 0 ? take(s, prev, prev_len, &buf, &blen)
                                  : ask(s, prev, prev_len, &buf, &blen));
    n = buf ? (uint64_t)blen : 0;
  }
  if (s->group.size > 1) {
    MPI_Request rq;
    CHECK_CALL(dist_mpi_check(MPI_Ibcast(&n, 1, MPI_UINT64_T, 0, s->group.comm, &rq), "MPI_Ibcast"));
    CHECK_CALL(wait_req(s, &rq));
    if (n > 0 && s->group.rank != 0) {
      buf = malloc((size_t)n);
      CHECK_ALLOC(buf, (size_t)n);
    }
    if (n > 0) {
      CHECK_RT(n < (uint64_t)INT32_MAX, "job spec of %llu bytes", (unsigned long long)n);
      int rc = dist_mpi_check(MPI_Ibcast(buf, (int)n, MPI_BYTE, 0, s->group.comm, &rq), "MPI_Ibcast");
      if (!rc) rc = wait_req(s, &rq);
      if (rc) {
        free(buf);
        return rc;
      }
    }
  }
  *spec = n > 0 ? buf : NULL;
  *len = (size_t)n;
  if (n == 0) free(buf);
  return 0;
}

void dist_sched_free(dist_sched **ps) {
  dist_sched *s = *ps;
  if (!s) return;
  if (s->group.comm != MPI_COMM_NULL && s->group.comm != 0) MPI_Comm_free(&s->group.comm);
  MPI_Comm_free(&s->msg);
  free(s->waiting);
  free(s->stopped);
  free(s);
  *ps = NULL;
}
