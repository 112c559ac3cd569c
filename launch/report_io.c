/* JSON and filesystem helpers behind launch/report_io.h. */
#include "report_io.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include "nn/err.h"

void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch == '\n')
      fputs("\\n", f);
    else if (ch == '\t')
      fputs("\\t", f);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

void json_num(FILE *f, double v) {
  if (!isfinite(v))
    fputs("null", f);
  else
    fprintf(f, "%.10g", v);
}

int io_mkdirs(const char *path) {
  char buf[1024];
  size_t n = strlen(path);
  CHECK_USER(n > 0 && n < sizeof buf, "output directory path is empty or too long");
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char saved = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
      FERRY_FAIL(FERRY_ERUNTIME, "cannot create directory %s: %s", buf, strerror(errno));
    buf[i] = saved;
  }
  struct stat st;
  CHECK_RT(stat(path, &st) == 0 && S_ISDIR(st.st_mode), "%s exists but is not a directory", path);
  return 0;
}

void io_fmt_duration(char *buf, size_t n, double s) {
  if (!isfinite(s) || s < 0) s = 0;
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}
