/* Recursive halving / doubling sum-allreduce, one round at a time
 * (dist/allreduce_hd.h). Round j < k of the reduce-scatter pairs rank r with
 * r ^ (1 << j); both hold the same segment (it depends on bits 0..j-1 only),
 * the rank with bit j clear keeps the lower half and adds the partner's copy
 * of it. The allgather replays the pairs in reverse and copies halves back. */
#include "allreduce_hd.h"

#include "dist/comm.h"
#include "nn/err.h"

size_t dist_hd_scratch(size_t n) { return (n + 1) / 2; }

/* The segment a rank owns after splitting [0, n) by its bits 0..levels-1. */
static void segment(size_t n, int rank, int levels, size_t *lo, size_t *hi) {
  size_t a = 0, b = n;
  for (int j = 0; j < levels; j++) {
    size_t mid = a + (b - a) / 2;
    if ((rank >> j) & 1) a = mid;
    else b = mid;
  }
  *lo = a;
  *hi = b;
}

static int post(dist_hd_op *op, float *recv, size_t nrecv, size_t send_at, size_t nsend,
                int partner) {
  MPI_Comm comm = op->c->comm;
  CHECK_CALL(dist_mpi_check(MPI_Irecv(recv, (int)nrecv, MPI_FLOAT, partner, op->tag, comm, &op->req[0]),
                       "MPI_Irecv (gradient allreduce)"));
  CHECK_CALL(dist_mpi_check(MPI_Isend(op->data + send_at, (int)nsend, MPI_FLOAT, partner, op->tag, comm,
                                 &op->req[1]),
                       "MPI_Isend (gradient allreduce)"));
  return 0;
}

static int post_round(dist_hd_op *op) {
  int k = op->nrounds / 2, rank = op->c->rank;
  size_t a, b, pa, pb;
  if (op->round < k) {
    int j = op->round, partner = rank ^ (1 << j);
    segment(op->n, rank, j, &a, &b);
    size_t mid = a + (b - a) / 2;
    int upper = (rank >> j) & 1;
    size_t keep_n = upper ? b - mid : mid - a;
    size_t give_at = upper ? a : mid, give_n = upper ? mid - a : b - mid;
    return post(op, op->scratch, keep_n, give_at, give_n, partner);
  }
  int j = op->nrounds - 1 - op->round, partner = rank ^ (1 << j);
  segment(op->n, rank, j + 1, &a, &b);
  segment(op->n, partner, j + 1, &pa, &pb);
  return post(op, op->data + pa, pb - pa, a, b - a, partner);
}

/* y += x. Blocks of 8 so that -O2 emits vector adds (its cheap cost model
 * does not vectorise loops that need a scalar epilogue). */
static void add_into(float *restrict y, const float *restrict x, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) y[i + j] += x[i + j];
  for (; i < n; i++) y[i] += x[i];
}

/* The round's messages have arrived: add (reduce-scatter) and go on. */
static int end_round(dist_hd_op *op) {
  int k = op->nrounds / 2, rank = op->c->rank;
  if (op->round < k) {
    size_t a, b;
    segment(op->n, rank, op->round + 1, &a, &b);
    add_into(op->data + a, op->scratch, b - a);
  }
  op->round++;
  if (op->round < op->nrounds) CHECK_CALL(post_round(op));
  return 0;
}

int dist_hd_start(dist_hd_op *op, const dist_comm *c, float *data, size_t n, float *scratch,
                  int tag) {
  int k = 0;
  while ((1 << k) < c->size) k++;
  *op = (dist_hd_op){.c = c, .data = data, .scratch = scratch, .n = n, .tag = tag,
                     .nrounds = 2 * k, .req = {MPI_REQUEST_NULL, MPI_REQUEST_NULL}};
  if (op->nrounds > 0) CHECK_CALL(post_round(op));
  return 0;
}

int dist_hd_test(dist_hd_op *op, int *done) {
  while (op->round < op->nrounds) {
    int flag = 0;
    CHECK_CALL(dist_mpi_check(MPI_Testall(2, op->req, &flag, MPI_STATUSES_IGNORE),
                         "MPI_Testall (gradient allreduce)"));
    if (!flag) break;
    CHECK_CALL(end_round(op));
  }
  *done = op->round == op->nrounds;
  return 0;
}

int dist_hd_wait(dist_hd_op *op) {
  while (op->round < op->nrounds) {
    CHECK_CALL(dist_mpi_check(MPI_Waitall(2, op->req, MPI_STATUSES_IGNORE),
                         "MPI_Waitall (gradient allreduce)"));
    CHECK_CALL(end_round(op));
  }
  return 0;
}
