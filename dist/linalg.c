/* The BLACS grid behind dist/linalg.h and the helpers shared by the probe
 * (linalg_ridge.c) and CORAL (linalg_coral.c): descriptors, row panels,
 * gathering a small distributed result onto every rank. */
#include "dist/linalg_impl.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"

/* Rows per panel: bounded so a panel of doubles stays near 32 MiB, and at
 * least 64 rows so the PBLAS calls stay matrix-sized. */
enum { LA_PANEL_MAX_ROWS = 4096, LA_PANEL_MIN_ROWS = 64 };
#define LA_PANEL_DOUBLES ((size_t)1 << 22)

int dist_linalg_new(dist_linalg **out, const dist_comm *c) {
  *out = NULL;
  dist_linalg *la = calloc(1, sizeof *la);
  int rc = la ? 0 : FERRY_ERUNTIME;
  /* Every rank must reach the same point before the collective dup. */
  int first = -1;
  if (dist_agree(c, rc, &first) != 0) {
    free(la);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory creating the ScaLAPACK grid (rank %d)", first);
  }
  MPI_Comm dup = MPI_COMM_NULL;
  rc = dist_mpi_check(MPI_Comm_dup(c->comm, &dup), "MPI_Comm_dup");
  if (rc != 0) {
    free(la);
    CHECK_CALL(rc);
  }
  dist_comm_wrap(&la->comm, dup);
  la->sys = Csys2blacs_handle(dup);
  la->ctxt = la->sys; /* gridinit reads the system handle, writes the context */
  Cblacs_gridinit(&la->ctxt, "Row", la->comm.size, 1);
  int nprow = -1, npcol = -1, mycol = -1;
  Cblacs_gridinfo(la->ctxt, &nprow, &npcol, &la->myrow, &mycol);
  la->nprow = nprow;
  /* The panel layout relies on grid row == rank in the communicator. */
  int ok = nprow == la->comm.size && npcol == 1 && la->myrow == la->comm.rank && mycol == 0;
  int first_bad = -1;
  if (dist_agree(&la->comm, ok ? 0 : FERRY_ERUNTIME, &first_bad) != 0) {
    int row = la->myrow, size = la->comm.size, rank = la->comm.rank;
    if (nprow > 0) Cblacs_gridexit(la->ctxt);
    Cfree_blacs_system_handle(la->sys);
    MPI_Comm_free(&dup);
    free(la);
    if (ok)
      FERRY_FAIL(FERRY_ERUNTIME, "BLACS grid: rank %d found an unexpected grid layout",
                 first_bad);
    FERRY_FAIL(FERRY_ERUNTIME,
               "BLACS grid on rank %d of %d: expected a %dx1 grid with this rank in row %d, "
               "found %dx%d with row %d",
               rank, size, size, rank, nprow, npcol, row);
  }
  *out = la;
  return 0;
}

void dist_linalg_free(dist_linalg **pla) {
  if (!pla || !*pla) return;
  dist_linalg *la = *pla;
  Cblacs_gridexit(la->ctxt);
  Cfree_blacs_system_handle(la->sys);
  MPI_Comm_free(&la->comm.comm);
  free(la);
  *pla = NULL;
}

int la_mat_init(la_mat *M, const dist_linalg *la, int m, int n, int mb, int nb) {
  memset(M, 0, sizeof *M);
  const int zero = 0;
  M->m = m;
  M->n = n;
  M->mb = mb;
  M->nloc = numroc_(&m, &mb, &la->myrow, &zero, &la->nprow);
  M->lld = M->nloc > 1 ? M->nloc : 1;
  int info = 0;
  descinit_(M->desc, &m, &n, &mb, &nb, &zero, &zero, &la->ctxt, &M->lld, &info);
  CHECK_RT(info == 0, "descinit rejected a %dx%d matrix (blocks %dx%d): argument %d", m, n,
           mb, nb, -info);
  size_t cnt = (size_t)M->lld * (size_t)(n > 0 ? n : 1);
  M->a = calloc(cnt, sizeof(double));
  CHECK_ALLOC(M->a, cnt * sizeof(double));
  return 0;
}

void la_mat_free(la_mat *M) {
  free(M->a);
  M->a = NULL;
}

int la_row_global(const dist_linalg *la, const la_mat *M, int il) {
  return ((il / M->mb) * la->nprow + la->myrow) * M->mb + il % M->mb;
}

int la_mat_gather(const dist_linalg *la, const la_mat *M, double *full) {
  memset(full, 0, (size_t)M->m * (size_t)M->n * sizeof(double));
  for (int il = 0; il < M->nloc; il++) {
    double *row = full + (size_t)la_row_global(la, M, il) * (size_t)M->n;
    for (int j = 0; j < M->n; j++) row[j] = M->a[(size_t)j * (size_t)M->lld + (size_t)il];
  }
  CHECK_CALL(dist_allreduce_f64(&la->comm, full, (size_t)M->m * (size_t)M->n));
  return 0;
}

void la_mat_add_diag(const dist_linalg *la, la_mat *M, int count, double v) {
  for (int il = 0; il < M->nloc; il++) {
    int g = la_row_global(la, M, il);
    if (g < count) M->a[(size_t)g * (size_t)M->lld + (size_t)il] += v;
  }
}

int la_agree(const dist_linalg *la, int rc, const char *what) {
  int first = -1;
  int all = dist_agree(&la->comm, rc, &first);
  if (all != 0 && rc == 0)
    FERRY_FAIL(all, "%s failed on rank %d of the group (see that rank's message)", what,
               first);
  if (all != 0 && rc != 0) {
    ferry_err_trace(__FILE__, __LINE__, __func__);
    return rc;
  }
  return 0;
}

int la_agree_info(const dist_linalg *la, int64_t *info, const char *routine) {
  int64_t mm[2] = {*info, -*info};
  if (la->comm.size > 1)
    CHECK_CALL(dist_mpi_check(
        MPI_Allreduce(MPI_IN_PLACE, mm, 2, MPI_INT64_T, MPI_MAX, la->comm.comm), "MPI_Allreduce"));
  CHECK_RT(mm[1] <= 0, "%s rejected argument %lld (a bug in dist/linalg*.c)", routine,
           (long long)mm[1]);
  *info = mm[0];
  return 0;
}

int la_panels_plan(const dist_linalg *la, int64_t n_local, int ncols, la_panels *p) {
  int64_t maxn = n_local;
  if (la->comm.size > 1)
    CHECK_CALL(dist_mpi_check(
        MPI_Allreduce(&n_local, &maxn, 1, MPI_INT64_T, MPI_MAX, la->comm.comm),
        "MPI_Allreduce"));
  size_t cap = LA_PANEL_DOUBLES / (size_t)(ncols > 0 ? ncols : 1);
  if (cap > LA_PANEL_MAX_ROWS) cap = LA_PANEL_MAX_ROWS;
  if (cap < LA_PANEL_MIN_ROWS) cap = LA_PANEL_MIN_ROWS;
  /* The panel's global row count P·ch must fit a Fortran int. */
  if (cap > (size_t)(INT_MAX / la->comm.size)) cap = (size_t)(INT_MAX / la->comm.size);
  p->ch = maxn < (int64_t)cap ? (int)(maxn > 0 ? maxn : 1) : (int)cap;
  p->npanels = (int)((maxn + p->ch - 1) / p->ch);
  return 0;
}

void la_pack_rows(double *dst, int ld, const float *x, int d, int64_t r0, int nr,
                  const double *mu, int bias) {
  /* A transpose: tiles of TILE source rows stay in L1 while each destination
   * column is written contiguously. */
  enum { TILE = 32 };
  for (int i0 = 0; i0 < nr; i0 += TILE) {
    int i1 = i0 + TILE < nr ? i0 + TILE : nr;
    const float *src = x + (size_t)(r0 + i0) * (size_t)d;
    for (int j = 0; j < d; j++) {
      double m = mu ? mu[j] : 0.0;
      double *col = dst + (size_t)j * (size_t)ld;
      for (int i = i0; i < i1; i++) col[i] = (double)src[(size_t)(i - i0) * (size_t)d + j] - m;
    }
  }
  int ncols = d + (bias ? 1 : 0);
  if (nr < ld)
    for (int j = 0; j < ncols; j++)
      memset(dst + (size_t)j * (size_t)ld + (size_t)nr, 0, (size_t)(ld - nr) * sizeof(double));
  if (bias)
    for (int i = 0; i < nr; i++) dst[(size_t)d * (size_t)ld + (size_t)i] = 1.0;
}

void la_col_sums(const float *x, int64_t n, int d, double *sum) {
  for (int j = 0; j < d; j++) sum[j] = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const float *row = x + (size_t)i * (size_t)d;
    for (int j = 0; j < d; j++) sum[j] += (double)row[j];
  }
}

int64_t la_find_nonfinite(const float *x, int64_t n, int d) {
  size_t cnt = (size_t)n * (size_t)d;
  for (size_t i = 0; i < cnt; i++)
    if (!isfinite(x[i])) return (int64_t)i;
  return -1;
}
