/* MPI wrappers behind dist/comm.h. Large buffers are reduced in pieces of at
 * most INT_MAX elements (MPI counts are int). */
#include "comm.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn/err.h"

#if defined(__SANITIZE_ADDRESS__)
#define FERRY_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FERRY_LSAN 1
#endif
#endif
#ifdef FERRY_LSAN
#include <sanitizer/lsan_interface.h>
#endif

int dist_mpi_check(int rc, const char *what) {
  if (rc == MPI_SUCCESS) return 0;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  FERRY_FAIL(FERRY_ERUNTIME, "%s failed: %s", what, msg);
}

int dist_init(int *argc, char ***argv, dist_comm *world) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    CHECK_CALL(dist_mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided),
                         "MPI_Init_thread"));
  }
  dist_comm_wrap(world, MPI_COMM_WORLD);
  return 0;
}

void dist_finalize(void) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (!inited || finalized) return;
#ifdef FERRY_LSAN
  /* Open MPI leaves blocks behind at MPI_Finalize and unloads the components
   * that allocated them, so LeakSanitizer can neither ignore them by library
   * name nor tell them from ours at exit. Check now instead: what Open MPI
   * still holds is reachable from its globals, so only our own lost blocks
   * are reported (the process fails as at exit). The exit-time check is then
   * off, which loses only leaks made after this point. */
  __lsan_do_leak_check();
#endif
  MPI_Finalize();
}

void dist_comm_wrap(dist_comm *c, MPI_Comm comm) {
  c->comm = comm;
  MPI_Comm_rank(comm, &c->rank);
  MPI_Comm_size(comm, &c->size);
}

static int allreduce(const dist_comm *c, void *buf, size_t n, MPI_Datatype t, size_t esz) {
  if (c->size == 1) return 0;
  char *p = buf;
  while (n > 0) {
    int k = n > (size_t)INT_MAX ? INT_MAX : (int)n;
    CHECK_CALL(dist_mpi_check(MPI_Allreduce(MPI_IN_PLACE, p, k, t, MPI_SUM, c->comm),
                         "MPI_Allreduce"));
    p += (size_t)k * esz;
    n -= (size_t)k;
  }
  return 0;
}

int dist_allreduce_f32(const dist_comm *c, float *buf, size_t n) {
  return allreduce(c, buf, n, MPI_FLOAT, sizeof(float));
}
int dist_allreduce_f64(const dist_comm *c, double *buf, size_t n) {
  return allreduce(c, buf, n, MPI_DOUBLE, sizeof(double));
}
int dist_allreduce_i64(const dist_comm *c, int64_t *buf, size_t n) {
  return allreduce(c, buf, n, MPI_INT64_T, sizeof(int64_t));
}

int dist_bcast(const dist_comm *c, void *buf, size_t nbytes, int root) {
  if (c->size == 1) return 0;
  char *p = buf;
  while (nbytes > 0) {
    int k = nbytes > (size_t)INT_MAX ? INT_MAX : (int)nbytes;
    CHECK_CALL(dist_mpi_check(MPI_Bcast(p, k, MPI_BYTE, root, c->comm), "MPI_Bcast"));
    p += k;
    nbytes -= (size_t)k;
  }
  return 0;
}

int dist_agree(const dist_comm *c, int rc, int *first_rank) {
  int in[2] = {rc, rc ? -c->rank : INT_MIN}, out[2] = {rc, in[1]};
  if (c->size > 1) MPI_Allreduce(in, out, 2, MPI_INT, MPI_MAX, c->comm);
  *first_rank = out[1] == INT_MIN ? -1 : -out[1];
  return out[0];
}

void dist_abort(const dist_comm *c, int code) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (inited && c && c->size > 1) MPI_Abort(c->comm, code);
  exit(code);
}

int dist_same_u64(const dist_comm *c, uint64_t v, int *same) {
  uint64_t lo = v, hi = v;
  if (c->size > 1) {
    CHECK_CALL(dist_mpi_check(MPI_Allreduce(&v, &lo, 1, MPI_UINT64_T, MPI_MIN, c->comm), "MPI_Allreduce"));
    CHECK_CALL(dist_mpi_check(MPI_Allreduce(&v, &hi, 1, MPI_UINT64_T, MPI_MAX, c->comm), "MPI_Allreduce"));
  }
  *same = lo == hi;
  return 0;
}

int dist_allgather_f64(const dist_comm *c, double v, double *out) {
  if (c->size == 1) {
    out[0] = v;
    return 0;
  }
  CHECK_CALL(dist_mpi_check(MPI_Allgather(&v, 1, MPI_DOUBLE, out, 1, MPI_DOUBLE, c->comm),
                       "MPI_Allgather"));
  return 0;
}
