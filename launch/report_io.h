/* Small output helpers for launch/: JSON strings and numbers, directories. */
#ifndef FERRY_LAUNCH_REPORT_IO_H
#define FERRY_LAUNCH_REPORT_IO_H

#include <stdio.h>

/* Writes s as a JSON string literal (quotes and escapes). */
void json_str(FILE *f, const char *s);
/* Writes a double as JSON: null for NaN/Inf, else %.6g (or %.17g when exact). */
void json_num(FILE *f, double v);
/* mkdir -p; returns FERRY_ERUNTIME with a message naming the path on failure. */
int io_mkdirs(const char *path);
/* Formats seconds as H:MM:SS or M:SS into buf. */
void io_fmt_duration(char *buf, size_t n, double s);

#endif
