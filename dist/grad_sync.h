/* Gradient synchronisation across the ranks of a data-parallel group.
 * (1) Bucketed sum-allreduce that overlaps backward: ranges of the gradient
 *     slab are reported as they become final, full buckets are reduced with
 *     non-blocking exchanges, progress is driven by polling at each report.
 * (2) A deterministic tree reduction whose result is bitwise independent of the
 *     number of ranks.
 * dist/ sees flat float ranges only; it knows nothing about layers. */
#ifndef FERRY_DIST_GRAD_SYNC_H
#define FERRY_DIST_GRAD_SYNC_H

#include <stddef.h>

#include "dist/comm.h"

typedef struct {
  size_t off, len; /* [off, off+len) in floats of the gradient slab */
} dist_range;

typedef struct dist_grad_sync dist_grad_sync;

/* Creates a bucketed synchroniser over grads (not owned; must outlive *out).
 * ranges: the TRAINABLE ranges of the slab in forward (ascending, disjoint)
 * order; anything not listed (frozen parameters, alignment padding) is never
 * read or written. Zero-length ranges are ignored. Buckets are formed walking
 * ranges from the last to the first, each holding whole ranges up to
 * bucket_bytes; a range larger than bucket_bytes gets a bucket of its own
 * (ranges are never split). A bucket whose ranges are adjacent in the slab is
 * reduced in place; otherwise it is packed into a buffer allocated here, once
 * (with scratch for the exchange: all memory is allocated here, none per
 * step). On a power-of-two number of ranks buckets are reduced by recursive
 * halving/doubling (dist/allreduce_hd.h), otherwise by MPI_Iallreduce (see
 * dist_grad_sync_set_alg).
 * Duplicates c's communicator, so traffic never mixes with the caller's.
 * *out is owned by the caller: free with dist_grad_sync_free. FERRY_EUSER on
 * unsorted/overlapping ranges or bucket_bytes == 0. Collective over c (the
 * duplication); every rank must pass the same ranges and bucket_bytes. */
int dist_grad_sync_new(dist_grad_sync **out, const dist_comm *c, float *grads,
                       const dist_range *ranges, int nranges, size_t bucket_bytes);

/* Frees *s (and its duplicate communicator) and sets it to NULL; NULL-safe.
 * Must not be called while a step is in flight (between the first ready that
 * started a bucket and finish). Collective over c (MPI_Comm_free). */
void dist_grad_sync_free(dist_grad_sync **s);

/* Marks every registered range contained in [off, off+len) final (a report
 * that only partly covers a range is ignored: that range is then started by
 * finish). When the last range of a bucket is marked, the bucket is packed
 * and its float sum over ranks started. Every call, including len == 0,
 * polls every bucket in flight (MPI_Testall, posting its next exchange round
 * when one completes), because this Open MPI makes no asynchronous progress:
 * the more often ready is called, the more communication hides behind
 * compute. Does not block and does not allocate. Signature matches
 * nn_grad_ready_fn when wrapped (ctx = s). Reporting a range twice in a step
 * is harmless (the second report is ignored). The ranges of a started bucket
 * must not be written until finish returns.
 * Not collective by itself, but starts collectives: all ranks must report the
 * same ranges in the same order. An MPI error is recorded and returned by
 * dist_grad_sync_finish; no further buckets are started after it. */
void dist_grad_sync_ready(dist_grad_sync *s, size_t off, size_t len);

/* Starts every bucket not yet started (in bucket order: last layers first),
 * waits for all of them and unpacks packed buckets into grads, so that each
 * registered range holds the sum over ranks. Resets for the next step.
 * Collective over c. Returns 0, or FERRY_ERUNTIME (message with the MPI error
 * text). An error is sticky: the gradients are undefined, every later finish
 * fails, and the caller should end the job (dist_abort) since other ranks may
 * be blocked in the allreduce. */
int dist_grad_sync_finish(dist_grad_sync *s);

/* Cumulative since creation: seconds blocked inside finish, bytes of gradient
 * reduced (sum of started bucket sizes; the bytes on the wire depend on the
 * algorithm), and the (fixed) number of buckets. Any pointer may be NULL.
 * Not collective. */
void dist_grad_sync_stats(const dist_grad_sync *s, double *wait_s, size_t *bytes, int *nbuckets);

/* Benchmark switch (default on). Off: ready and finish do no communication
 * and leave grads untouched, so the cost of synchronisation can be measured.
 * Must be switched identically on every rank, between steps. Not collective. */
void dist_grad_sync_set_enabled(dist_grad_sync *s, int on);

typedef enum {
  DIST_SYNC_AUTO, /* halving/doubling on a power-of-two number of ranks, else
                     MPI_Iallreduce */
  DIST_SYNC_MPI   /* always MPI_Iallreduce (e.g. where an MPI offloads it) */
} dist_sync_alg;

/* Chooses how buckets are reduced (default DIST_SYNC_AUTO). Between steps,
 * identically on every rank. Not collective. */
void dist_grad_sync_set_alg(dist_grad_sync *s, dist_sync_alg alg);

/* ---- Deterministic reduction -------------------------------------------
 * The global gradient is defined as the balanced binary tree sum over M
 * logical micro-shards in index order (M a power of two; for M = 4,
 * (g0+g1)+(g2+g3)). Rank r of N (N a power of two dividing M) owns the
 * consecutive shards [r*M/N, (r+1)*M/N): it tree-sums them locally
 * (dist_reduce_tree_local), then the ranks combine subtrees with a
 * fixed-pairing recursive-doubling butterfly (dist_allreduce_tree). The result
 * is bitwise equal to dist_reduce_tree_local over all M shards on one rank. */

/* Validates (N, M) and gives this rank's shards: *first = rank*M/N, *count =
 * M/N. FERRY_EUSER (message naming N and M) unless N and M are powers of two
 * and N divides M. Not collective. */
int dist_tree_shards(const dist_comm *c, int nshards_total, int *first, int *count);

/* out[i] = balanced tree sum of shards[0..nshards)[i], left operand first.
 * nshards must be a power of two (1 copies); out may alias shards[0] (and only
 * shards[0]); shards are not modified otherwise. FERRY_EUSER on a bad count.
 * No allocation. Not collective. */
int dist_reduce_tree_local(float *const *shards, int nshards, float *out, size_t n);

/* Butterfly over the ranks of c: in round k each rank exchanges its whole
 * vector with rank ^ (1<<k) (MPI_Sendrecv) and stores (lower rank's value) +
 * (higher rank's value), so both partners hold identical bits. buf: n floats
 * in/out; tmp: caller-owned scratch of n floats (no allocation here).
 * FERRY_EUSER when c->size is not a power of two (checked before any
 * communication, identically on every rank), FERRY_ERUNTIME on MPI errors.
 * Collective over c. */
int dist_allreduce_tree(const dist_comm *c, float *buf, size_t n, float *tmp);

#endif
