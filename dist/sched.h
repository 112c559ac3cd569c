/* The coordinator's job queue (DESIGN.md, "finetune fan-out").
 *
 * World rank 0 is the coordinator. The ranks are split into worker groups of
 * g consecutive ranks (MPI_Comm_split; the last group may be smaller); rank 0
 * of each group is its leader. A group asks for a job, trains it on its own
 * communicator, and sends the result back with its next request. Jobs are
 * opaque bytes here (the caller packs protobuf messages); which job goes next,
 * and whether a failed one is retried, is the caller's policy (next/result).
 *
 * Rank 0 is not only the coordinator: it also leads group 0 and trains jobs.
 * It answers the other leaders between its own training steps
 * (dist_sched_serve, a non-blocking probe), so a request waits at most one
 * step. Ranks that wait (for a reply, or for their leader) sleep-poll
 * instead of spinning, so an idle rank does not take a core from a busy one. */
#ifndef FERRY_DIST_SCHED_H
#define FERRY_DIST_SCHED_H

#include <stddef.h>

#include "dist/comm.h"

typedef struct dist_sched dist_sched;

enum { DIST_SCHED_JOB = 1, DIST_SCHED_WAIT = 0, DIST_SCHED_DONE = -1 };

/* The coordinator's policy (called on world rank 0 only). */
typedef struct {
  /* The next job for `group`: set *what to DIST_SCHED_JOB with a malloc'd
   * spec in *spec and *len (the queue frees it), DIST_SCHED_WAIT when nothing is
   * ready yet but jobs are still running (a retry may come: the group
   * waits), or DIST_SCHED_DONE when the sweep is over. Returns 0 or an error. */
  int (*next)(void *ctx, int group, int *what, void **spec, size_t *len);
  /* The result bytes a group sent for its last job. Returns 0 or an error. */
  int (*result)(void *ctx, int group, const void *res, size_t len);
  void *ctx;
} dist_sched_ops;

/* Splits world into groups of group_size ranks (0 or more than world->size:
 * one group of all ranks). ops is used on world rank 0 only (may be NULL
 * elsewhere). Collective over world. */
int dist_sched_new(dist_sched **s, const dist_comm *world, int group_size,
                   const dist_sched_ops *ops);
/* This rank's worker group, its index, and the number of groups. */
const dist_comm *dist_sched_group(const dist_sched *s);
int dist_sched_group_id(const dist_sched *s);
int dist_sched_ngroups(const dist_sched *s);

/* The next job of this rank's group. The leader sends its previous result
 * (prev/prev_len; NULL, 0 before the first job) and gets the next spec; the
 * group's ranks receive it from the leader. Sets *spec (malloc'd, caller
 * frees) and *len and returns 0; *spec == NULL means the sweep is over for
 * this group. On world rank 0 this also serves the other groups, and before
 * it reports the end it keeps serving until every group has stopped.
 * Collective over the group. */
int dist_sched_next(dist_sched *s, const void *prev, size_t prev_len, void **spec, size_t *len);

/* Coordinator: answer waiting requests without blocking (call it often, e.g.
 * after every training step). No-op on other ranks. */
int dist_sched_serve(dist_sched *s);

/* Frees the group communicator. Collective over world (after every rank's
 * last dist_sched_next). */
void dist_sched_free(dist_sched **s);

#endif
