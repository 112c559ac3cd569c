/* Private to dist/linalg*.c: the grid object, prototypes of the BLACS, PBLAS
 * and ScaLAPACK routines used (no C header ships with ScaLAPACK), and the
 * descriptor, row-panel and gather helpers shared by the probe and CORAL.
 *
 * Layout used throughout. The grid is P×1 (P = group size, grid row = rank).
 *  - Feature panels: a panel of up to `ch` rows per rank is a (P·ch)×ncols
 *    matrix with row block size MB = ch, so grid row p owns exactly global
 *    rows [p·ch, (p+1)·ch): its own rows, then zero rows up to ch. Zero rows
 *    add nothing to XᵀX or XᵀY, so padding is exact, and no row is moved
 *    between ranks (pdgemr2d redistribution would send feature rows across
 *    the group for no numerical gain).
 *  - Small square/result matrices (G, B, covariances, eigenvectors, A): block
 *    size LA_NB in both dimensions (pdposv and pdsyevd need MB = NB), rows
 *    cycled over the P grid rows, all columns local (npcol = 1). */
#ifndef FERRY_DIST_LINALG_IMPL_H
#define FERRY_DIST_LINALG_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "dist/comm.h"
#include "dist/linalg.h"

/* Block size of the small matrices. */
enum { LA_NB = 32 };
/* Descriptor length and the fields used. */
enum { LA_DLEN = 9, LA_CTXT = 1, LA_M = 2, LA_N = 3, LA_MB = 4, LA_NBF = 5, LA_LLD = 8 };

struct dist_linalg {
  dist_comm comm; /* our duplicate of the caller's communicator */
  int sys;        /* BLACS system handle of comm.comm */
  int ctxt;       /* BLACS context of the P×1 grid */
  int nprow, myrow;
};

/* ---- BLACS (C interface) ----------------------------------------------- */
int Csys2blacs_handle(MPI_Comm comm);
void Cfree_blacs_system_handle(int handle);
void Cblacs_gridinit(int *ctxt, const char *order, int nprow, int npcol);
void Cblacs_gridinfo(int ctxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int ctxt);

/* ---- ScaLAPACK tools (Fortran, no character arguments) ----------------- */
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc,
            const int *nprocs);
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb,
               const int *irsrc, const int *icsrc, const int *ictxt, const int *lld,
               int *info);

/* ---- PBLAS (written in C: character arguments are plain char *) -------- */
void pdgemm_(const char *transa, const char *transb, const int *m, const int *n,
             const int *k, const double *alpha, const double *a, const int *ia,
             const int *ja, const int *desca, const double *b, const int *ib,
             const int *jb, const int *descb, const double *beta, double *c,
             const int *ic, const int *jc, const int *descc);
void pdsyrk_(const char *uplo, const char *trans, const int *n, const int *k,
             const double *alpha, const double *a, const int *ia, const int *ja,
             const int *desca, const double *beta, double *c, const int *ic,
             const int *jc, const int *descc);

/* ---- ScaLAPACK drivers (Fortran: gfortran appends one hidden size_t length
 * per character argument; passing them keeps the call well-defined). ----- */
void pdposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *ia,
             const int *ja, const int *desca, double *b, const int *ib, const int *jb,
             const int *descb, int *info, size_t uplo_len);
void pdsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *ia,
              const int *ja, const int *desca, double *w, double *z, const int *iz,
              const int *jz, const int *descz, double *work, const int *lwork, int *iwork,
              const int *liwork, int *info, size_t jobz_len, size_t uplo_len);

/* ---- helpers (dist/linalg.c) -------------------------------------------- */

/* A distributed matrix on la's grid: m×n, row blocks of mb, column blocks of
 * nb; local array is lld × n column-major (all columns are local). */
typedef struct {
  int desc[LA_DLEN];
  int m, n, mb;
  int nloc; /* local rows */
  int lld;  /* max(1, nloc) */
  double *a;
} la_mat;

/* Fills desc (descinit) and allocates the zeroed local array. Not collective;
 * FERRY_ERUNTIME on allocation failure or a rejected descriptor. */
int la_mat_init(la_mat *M, const dist_linalg *la, int m, int n, int mb, int nb);
void la_mat_free(la_mat *M);
/* Global row of local row il. */
int la_row_global(const dist_linalg *la, const la_mat *M, int il);
/* Writes the whole matrix row-major [m][n] into full, on every rank (each
 * entry has one owner: zero-fill, copy own rows, sum over ranks).
 * Collective. */
int la_mat_gather(const dist_linalg *la, const la_mat *M, double *full);
/* Adds v to the diagonal entries (g, g) for g in [0, count). Not collective. */
void la_mat_add_diag(const dist_linalg *la, la_mat *M, int count, double v);

/* Status agreement before entering ScaLAPACK: returns the largest rc over the
 * grid's ranks. A rank that did not fail itself gets a message naming the
 * first rank that did (whose own message says what was wrong). Collective. */
int la_agree(const dist_linalg *la, int rc, const char *what);

/* A driver's INFO on every rank of the grid: *info gets the largest value
 * over ranks (a numerical failure, > 0), and the call fails with
 * FERRY_ERUNTIME naming `routine` if any rank saw an illegal argument
 * (INFO < 0: a bug in the caller). Collective. */
int la_agree_info(const dist_linalg *la, int64_t *info, const char *routine);

/* Row panels: all ranks walk the same number of panels of `ch` rows (ch from
 * the largest n_local over ranks), each rank filling its own rows and zero
 * padding. plan: collective (one allreduce). */
typedef struct {
  int ch;      /* rows per rank per panel (>= 1) */
  int npanels; /* 0 when no rank has rows */
} la_panels;
int la_panels_plan(const dist_linalg *la, int64_t n_local, int ncols, la_panels *p);

/* Copies rows [r0, r0+nr) of x [n][d] (float row-major) into the column-major
 * double panel dst (ld rows, ld >= nr): column j <- x[:, j] − (mu ? mu[j] :
 * 0); when bias, column d <- 1. Rows nr..ld-1 of every written column are
 * set to zero. Not collective. */
void la_pack_rows(double *dst, int ld, const float *x, int d, int64_t r0, int nr,
                  const double *mu, int bias);

/* Sums of a float row-major block over its rows (into sum[d], double).
 * Not collective. */
void la_col_sums(const float *x, int64_t n, int d, double *sum);

/* First non-finite entry of x [n][d] as a flat index, or -1. */
int64_t la_find_nonfinite(const float *x, int64_t n, int d);

#endif
