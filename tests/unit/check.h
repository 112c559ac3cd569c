/* Minimal test harness: CHECK(cond) counts failures and prints file:line;
 * a test's main returns check_report(), which prints "N passed, N failed". */
#ifndef FERRY_TEST_CHECK_H
#define FERRY_TEST_CHECK_H

#include <stdio.h>

extern int check_pass, check_fail;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      check_pass++;                                                          \
    } else {                                                                 \
      check_fail++;                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                        \
  } while (0)

#define CHECK_MSG(cond, ...)                                                 \
  do {                                                                       \
    if (cond) {                                                              \
      check_pass++;                                                          \
    } else {                                                                 \
      check_fail++;                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                          \
      fputc('\n', stderr);                                                   \
    }                                                                        \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                \
  CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", \
            (double)(a), (double)(b), (double)(tol))

int check_report(void);

#endif
