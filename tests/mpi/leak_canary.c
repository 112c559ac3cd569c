/* Proves the MPI tests' leak check is live (sanitizer builds only): every rank
 * loses one block of a recognisable size, then dist_finalize must report it.
 * ctest passes this program only when LeakSanitizer names that block (see
 * tests/mpi/CMakeLists.txt); a check that had gone quiet would fail it. */
#include <stdio.h>
#include <stdlib.h>

#include "dist/comm.h"

enum { CANARY_BYTES = 4243 };

int main(int argc, char **argv) {
  dist_comm world;
  if (dist_init(&argc, &argv, &world) != 0) return 1;
  char *volatile lost = malloc(CANARY_BYTES);
  if (!lost) return 1;
  lost[0] = (char)world.rank;
  lost = NULL;
  dist_finalize();
  printf("rank %d: finalized without a leak report\n", world.rank);
  return 0;
}
