/* Closing line of an MPI test: failures are summed over ranks so that any
 * rank's failure fails the test on every rank (and so the mpirun exit code). */
#ifndef FERRY_TEST_MPI_REPORT_H
#define FERRY_TEST_MPI_REPORT_H

#include <mpi.h>

/* Prints "N passed, N failed" (totals over ranks) from rank 0; returns 0 when
 * no rank failed, 1 otherwise. Collective over comm. */
int mpi_check_report(MPI_Comm comm);

#endif
