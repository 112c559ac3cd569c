/* Sums the harness counters of tests/unit/check.c over the ranks. */
#include "mpi_report.h"

#include <stdio.h>

#include "../unit/check.h"

int mpi_check_report(MPI_Comm comm) {
  int local[2] = {check_pass, check_fail}, total[2] = {0, 0}, rank = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Allreduce(local, total, 2, MPI_INT, MPI_SUM, comm);
  if (rank == 0) {
    printf("%d passed, %d failed\n", total[0], total[1]);
    fflush(stdout);
  }
  return total[1] ? 1 : 0;
}
