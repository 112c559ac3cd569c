/* Counters and the closing line of the minimal test harness. */
#include "check.h"

int check_pass, check_fail;

int check_report(void) {
  printf("%d passed, %d failed\n", check_pass, check_fail);
  return check_fail ? 1 : 0;
}
