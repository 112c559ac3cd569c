/* Error message and trace buffers behind nn/err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_msg[1024];
static _Thread_local char err_where[1024];
static _Thread_local int err_code;

int ferry_err_set(int code, const char *file, int line, const char *func,
                  const char *fmt, ...) {
  if (err_code == 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_code = code;
    err_where[0] = '\0';
  }
  ferry_err_trace(file, line, func);
  return code;
}

void ferry_err_trace(const char *file, int line, const char *func) {
  size_t n = strlen(err_where);
  if (n + 2 >= sizeof err_where) return;
  snprintf(err_where + n, sizeof err_where - n, "%s%s:%d:%s", n ? " <- " : "",
           file, line, func);
}

const char *ferry_err_msg(void) { return err_msg; }
const char *ferry_err_where(void) { return err_where; }
int ferry_err_code(void) { return err_code; }

void ferry_err_clear(void) {
  err_msg[0] = '\0';
  err_where[0] = '\0';
  err_code = 0;
}
