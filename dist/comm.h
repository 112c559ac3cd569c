/* Communicator handle and the few collectives the trainer uses. Library code
 * takes a dist_comm, never MPI_COMM_WORLD directly (a worker group is just
 * another dist_comm). Knows nothing about layers: it moves flat buffers. */
#ifndef FERRY_DIST_COMM_H
#define FERRY_DIST_COMM_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

typedef struct {
  MPI_Comm comm;
  int rank, size;
} dist_comm;

/* 0 when rc is MPI_SUCCESS, else FERRY_ERUNTIME with "<what> failed: <MPI's
 * error text>". Not collective. */
int dist_mpi_check(int rc, const char *what);

/* MPI_Init_thread (FUNNELED) unless already initialised; fills *world for
 * MPI_COMM_WORLD. Collective over the job. */
int dist_init(int *argc, char ***argv, dist_comm *world);
void dist_finalize(void);
/* Wraps an existing communicator (not duplicated; not freed by ferry). */
void dist_comm_wrap(dist_comm *c, MPI_Comm comm);

/* In-place sums over the communicator. Collective. */
int dist_allreduce_f32(const dist_comm *c, float *buf, size_t n);
int dist_allreduce_f64(const dist_comm *c, double *buf, size_t n);
int dist_allreduce_i64(const dist_comm *c, int64_t *buf, size_t n);
/* Broadcast bytes from root. Collective. */
int dist_bcast(const dist_comm *c, void *buf, size_t nbytes, int root);
/* All ranks agree on a status: returns the largest rc over ranks, and in
 * *first_rank the lowest rank that failed (-1 if none). Collective. */
int dist_agree(const dist_comm *c, int rc, int *first_rank);
/* Ends the whole job from one rank (no other rank is left in a collective). */
void dist_abort(const dist_comm *c, int code) __attribute__((noreturn));
/* Whether every rank holds the same v: *same = 1 if min == max over ranks.
 * Collective. */
int dist_same_u64(const dist_comm *c, uint64_t v, int *same);
/* out[r] = v of rank r, on every rank (out has c->size entries). Collective. */
int dist_allgather_f64(const dist_comm *c, double v, double *out);

#endif
