/* Placeholder translation unit for dist/ until its modules land. */
#include <mpi.h>
int dist_placeholder(void);
int dist_placeholder(void) { return MPI_VERSION; }
