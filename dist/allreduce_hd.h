/* Non-blocking float sum-allreduce by recursive halving (reduce-scatter) then
 * recursive doubling (allgather), for a power-of-two number of ranks, advanced
 * by polling. Used by dist/grad_sync.c instead of MPI_Iallreduce because this
 * Open MPI's libnbc reduces everything on one rank (binomial tree for fewer than
 * 4 ranks or in-place buffers): measured here, 24 x 1 MiB took 12-14 ms against
 * 6 ms for halving-doubling, and that time is CPU taken from backward.
 * Every rank does 1/N of the additions and ends with identical bits (each
 * element is summed on exactly one rank, then copied). No allocation. */
#ifndef FERRY_DIST_ALLREDUCE_HD_H
#define FERRY_DIST_ALLREDUCE_HD_H

#include <stddef.h>

#include "dist/comm.h"

typedef struct {
  const dist_comm *c;
  float *data;       /* n floats, in/out */
  float *scratch;    /* dist_hd_scratch(n) floats, caller-owned */
  size_t n;
  int tag;           /* distinct per operation in flight on c */
  int round, nrounds; /* nrounds = 2 log2(size); round == nrounds: done */
  MPI_Request req[2];
} dist_hd_op;

/* Scratch floats an operation on n floats needs. Not collective. */
size_t dist_hd_scratch(size_t n);

/* Starts the sum over c of data[0..n) (c->size a power of two, n <= INT_MAX;
 * the caller checks). Posts the first round. Collective over c in the sense
 * that every rank must start the same operations with the same n and tag. */
int dist_hd_start(dist_hd_op *op, const dist_comm *c, float *data, size_t n, float *scratch,
                  int tag);

/* Advances as far as possible without blocking; *done set when complete.
 * Not collective. */
int dist_hd_test(dist_hd_op *op, int *done);

/* Blocks until complete. Collective (its partners must progress too). */
int dist_hd_wait(dist_hd_op *op);

#endif
