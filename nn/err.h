/* Error reporting shared by every layer of ferry.
 * A fallible function returns an int status: 0 ok, FERRY_EUSER (2) for bad
 * input a user can fix, FERRY_ERUNTIME (1) for everything else. The first
 * failure formats one message (what was expected, what was found); callers
 * propagate the status with CHECK_CALL, which appends file:line:function to a
 * trace that debug output can show. Not thread-safe by design: one error
 * buffer per thread (thread-local), read once at the top of the program. */
#ifndef FERRY_ERR_H
#define FERRY_ERR_H

#include <stddef.h>

/* Exit codes of the ferry program are these statuses: 0 ok, 1 runtime error,
 * 2 usage error, 3 stopped by a signal after writing a checkpoint. */
enum { FERRY_OK = 0, FERRY_ERUNTIME = 1, FERRY_EUSER = 2, FERRY_ESTOPPED = 3 };

/* Formats the message and returns code. Later calls before ferry_err_clear()
 * keep the first message (the root cause) and only add to the trace. */
int ferry_err_set(int code, const char *file, int line, const char *func,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void ferry_err_trace(const char *file, int line, const char *func);
const char *ferry_err_msg(void);   /* "" when no error is recorded */
const char *ferry_err_where(void); /* the trace, innermost first */
int ferry_err_code(void);
void ferry_err_clear(void);

#define FERRY_FAIL(code, ...) \
  return ferry_err_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

/* Propagate a failing status upward, recording where it passed. */
#define CHECK_CALL(expr)                                  \
  do {                                                    \
    int ferry_rc_ = (expr);                               \
    if (ferry_rc_ != 0) {                                 \
      ferry_err_trace(__FILE__, __LINE__, __func__);      \
      return ferry_rc_;                                   \
    }                                                     \
  } while (0)

/* A check on user input: always on, formats a message, returns FERRY_EUSER. */
#define CHECK_USER(cond, ...)                             \
  do {                                                    \
    if (!(cond)) FERRY_FAIL(FERRY_EUSER, __VA_ARGS__);    \
  } while (0)

/* A runtime check (I/O, resources): returns FERRY_ERUNTIME. */
#define CHECK_RT(cond, ...)                               \
  do {                                                    \
    if (!(cond)) FERRY_FAIL(FERRY_ERUNTIME, __VA_ARGS__); \
  } while (0)

#define CHECK_ALLOC(p, nbytes)                                              \
  CHECK_RT((p) != NULL, "out of memory allocating %zu bytes for %s",        \
           (size_t)(nbytes), #p)

#endif
