/* Where a job's ranks run, for the start-up log: hosts and ranks per host,
 * cores per host, BLAS threads per rank, and the MPI transport requested or
 * inferred. Oversubscription (more ranks, or ranks x BLAS threads, than a
 * host's cores) becomes a warning. dist/ formats; launch/ prints. */
#ifndef FERRY_DIST_TOPOLOGY_H
#define FERRY_DIST_TOPOLOGY_H

#include "dist/comm.h"

typedef struct {
  int nhosts;          /* distinct processor names */
  int max_per_host;    /* the most ranks on one host */
  char line[1024];     /* "4 ranks on 2 hosts (a: 2, b: 2), 1 BLAS thread per rank, transport ..." */
  char warn[1024];     /* "" or "ferry: warning: ..." lines, one per oversubscribed host */
} dist_topology;

/* Gathers every rank's processor name (MPI_Get_processor_name), online core
 * count and blas_threads (the BLAS threads that rank uses) on rank 0, which
 * fills *out; nhosts and max_per_host are filled on every rank, the strings
 * only on rank 0 (empty elsewhere). Collective over c. */
int dist_topology_describe(const dist_comm *c, int blas_threads, dist_topology *out);

#endif
