/* A strict reader for one line of results.jsonl or of a curve file: a flat
 * JSON object whose values are strings, numbers, booleans, null or (one level
 * deep) flat objects. Written here because the project has no JSON library;
 * it accepts exactly that subset of RFC 8259 and names file:line:col on
 * anything else. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "launch/report.h"
#include "nn/err.h"

typedef struct {
  const char *s;
  size_t n, i;
  const char *file;
  int line;
} jcur;

/* Describes the byte at the cursor for "found ..." (end of line, a char). */
static const char *found(const jcur *c, char *buf, size_t nbuf) {
  if (c->i >= c->n) return "the end of the line";
  unsigned char ch = (unsigned char)c->s[c->i];
  if (ch >= 0x20 && ch < 0x7f)
    snprintf(buf, nbuf, "'%c'", ch);
  else
    snprintf(buf, nbuf, "byte 0x%02x", ch);
  return buf;
}

#define JFAIL(c, col, ...)                                                             \
  do {                                                                                 \
    char msg_[512];                                                                    \
    snprintf(msg_, sizeof msg_, __VA_ARGS__);                                          \
    FERRY_FAIL(FERRY_EUSER, "%s:%d:%d: %s", (c)->file, (c)->line, (int)(col), msg_);  \
  } while (0)

static void skip_ws(jcur *c) {
  while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\r' ||
                         c->s[c->i] == '\n'))
    c->i++;
}

static int hex4(const jcur *c, size_t at, unsigned *out) {
  if (at + 4 > c->n) return -1;
  unsigned v = 0;
  for (size_t k = at; k < at + 4; k++) {
    char h = c->s[k];
    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
            : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + (unsigned)d;
  }
  *out = v;
  return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xc0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xe0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (char)(0xf0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  o[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629: no overlongs,
 * no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned char b = s[0];
  size_t len;
  unsigned cp, min;
  if (b < 0x80) return 1;
  if ((b & 0xe0) == 0xc0) len = 2, cp = b & 0x1f, min = 0x80;
  else if ((b & 0xf0) == 0xe0) len = 3, cp = b & 0x0f, min = 0x800;
  else if ((b & 0xf8) == 0xf0) len = 4, cp = b & 0x07, min = 0x10000;
  else return 0;
  if (len > n) return 0;
  for (size_t k = 1; k < len; k++) {
    if ((s[k] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[k] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

/* A string at the opening quote; *out is malloc'd, NUL-terminated. */
static int parse_string(jcur *c, char **out) {
  size_t start = c->i++;
  /* Decoded text is never longer than the source. */
  char *o = malloc(c->n - start + 1);
  CHECK_ALLOC(o, c->n - start + 1);
  size_t w = 0;
  for (;;) {
    if (c->i >= c->n) {
      free(o);
      JFAIL(c, start + 1, "string starting here has no closing quote");
    }
    unsigned char ch = (unsigned char)c->s[c->i];
    if (ch == '"') break;
    if (ch < 0x20) {
      free(o);
      JFAIL(c, c->i + 1, "control character 0x%02x inside a string (write it as \\u%04x)", ch, ch);
    }
    if (ch != '\\') {
      size_t l = utf8_len((const unsigned char *)c->s + c->i, c->n - c->i);
      if (!l) {
        free(o);
        JFAIL(c, c->i + 1, "invalid UTF-8 byte 0x%02x inside a string", ch);
      }
      memcpy(o + w, c->s + c->i, l);
      w += l;
      c->i += l;
      continue;
    }
    size_t esc = c->i;
    char e = c->i + 1 < c->n ? c->s[c->i + 1] : '\0';
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e && simple) {
      static const char to[] = "\"\\/\b\f\n\r\t";
      o[w++] = to[simple - "\"\\/bfnrt"];
      c->i += 2;
      continue;
    }
    unsigned cp = 0, lo = 0;
    if (e != 'u' || hex4(c, esc + 2, &cp)) {
      free(o);
      JFAIL(c, esc + 1, "invalid escape in a string (expected \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX)");
    }
    c->i = esc + 6;
    if (cp >= 0xd800 && cp <= 0xdbff) {
      if (c->i + 1 < c->n && c->s[c->i] == '\\' && c->s[c->i + 1] == 'u' && !hex4(c, c->i + 2, &lo) &&
          lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        c->i += 6;
      } else {
        free(o);
        JFAIL(c, esc + 1, "\\u%04x is a high surrogate without a low surrogate after it", cp);
      }
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
      free(o);
      JFAIL(c, esc + 1, "\\u%04x is a lone low surrogate", cp);
    }
    if (cp == 0) {
      free(o);
      JFAIL(c, esc + 1, "\\u0000 (a NUL character) is not allowed in a string");
    }
    w += put_utf8(o + w, cp);
  }
  c->i++;
  o[w] = '\0';
  *out = o;
  return 0;
}

/* RFC 8259 number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int parse_number(jcur *c, double *out) {
  size_t st = c->i, i = c->i;
  const char *s = c->s;
#define DIGIT(k) ((k) < c->n && s[k] >= '0' && s[k] <= '9')
  if (i < c->n && s[i] == '-') i++;
  if (!DIGIT(i)) JFAIL(c, st + 1, "expected a digit in a number");
  if (s[i] == '0') {
    i++;
    if (DIGIT(i)) JFAIL(c, st + 1, "a number may not have a leading zero");
  } else {
    while (DIGIT(i)) i++;
  }
  if (i < c->n && s[i] == '.') {
    i++;
    if (!DIGIT(i)) JFAIL(c, i + 1, "expected a digit after the decimal point");
    while (DIGIT(i)) i++;
  }
  if (i < c->n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < c->n && (s[i] == '+' || s[i] == '-')) i++;
    if (!DIGIT(i)) JFAIL(c, i + 1, "expected a digit in the exponent");
    while (DIGIT(i)) i++;
  }
#undef DIGIT
  char buf[64];
  if (i - st >= sizeof buf) JFAIL(c, st + 1, "number longer than %zu characters", sizeof buf - 1);
  memcpy(buf, s + st, i - st);
  buf[i - st] = '\0';
  double v = strtod(buf, NULL);
  if (v > 1.7976931348623157e308 || v < -1.7976931348623157e308)
    JFAIL(c, st + 1, "number %s is out of the range of a double", buf);
  c->i = i;
  *out = v;
  return 0;
}

static int parse_object(jcur *c, report_jobj *o, int depth);

static int parse_value(jcur *c, report_jfield *f, int depth) {
  char fb[32];
  f->col = (int)c->i + 1;
  if (c->i >= c->n) JFAIL(c, c->i + 1, "expected a value, found the end of the line");
  char ch = c->s[c->i];
  if (ch == '"') {
    f->type = REPORT_JSTR;
    return parse_string(c, &f->str);
  }
  if (ch == '-' || (ch >= '0' && ch <= '9')) {
    f->type = REPORT_JNUM;
    return parse_number(c, &f->num);
  }
  if (ch == '{') {
    if (depth >= 1) JFAIL(c, c->i + 1, "objects nest at most one level deep here (like \"extra\")");
    f->type = REPORT_JOBJ;
    report_jobj sub = {NULL, 0};
    int rc = parse_object(c, &sub, depth + 1);
    f->sub = sub.f;
    f->nsub = sub.n;
    return rc;
  }
  if (ch == '[') JFAIL(c, c->i + 1, "arrays are not part of this format (only flat objects)");
  static const struct {
    const char *word;
    int type, b;
  } lits[] = {{"null", REPORT_JNULL, 0}, {"true", REPORT_JBOOL, 1}, {"false", REPORT_JBOOL, 0}};
  for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
    size_t l = strlen(lits[k].word);
    if (c->n - c->i >= l && !memcmp(c->s + c->i, lits[k].word, l)) {
      f->type = lits[k].type;
      f->boolean = lits[k].b;
      c->i += l;
      return 0;
    }
  }
  JFAIL(c, c->i + 1,
        "expected a value (string, number, true, false, null or object), found %s",
        found(c, fb, sizeof fb));
}

/* An object at '{'; the fields go to o (freed by the caller on failure). */
static int parse_object(jcur *c, report_jobj *o, int depth) {
  char fb[32];
  int cap = 0;
  c->i++;
  skip_ws(c);
  if (c->i < c->n && c->s[c->i] == '}') {
    c->i++;
    return 0;
  }
  for (;;) {
    skip_ws(c);
    if (c->i >= c->n || c->s[c->i] != '"')
      JFAIL(c, c->i + 1, "expected a key in double quotes, found %s", found(c, fb, sizeof fb));
    if (o->n == cap) {
      int nc = cap ? 2 * cap : 16;
      report_jfield *g = realloc(o->f, (size_t)nc * sizeof *g);
      CHECK_ALLOC(g, (size_t)nc * sizeof *g);
      o->f = g;
      cap = nc;
    }
    report_jfield *f = &o->f[o->n++];
    memset(f, 0, sizeof *f);
    size_t kcol = c->i + 1;
    CHECK_CALL(parse_string(c, &f->key));
    for (int k = 0; k < o->n - 1; k++)
      if (!strcmp(o->f[k].key, f->key)) JFAIL(c, kcol, "duplicate key \"%s\"", f->key);
    skip_ws(c);
    if (c->i >= c->n || c->s[c->i] != ':')
      JFAIL(c, c->i + 1, "expected ':' after key \"%s\", found %s", f->key, found(c, fb, sizeof fb));
    c->i++;
    skip_ws(c);
    CHECK_CALL(parse_value(c, f, depth));
    skip_ws(c);
    if (c->i < c->n && c->s[c->i] == ',') {
      c->i++;
      continue;
    }
    if (c->i < c->n && c->s[c->i] == '}') {
      c->i++;
      return 0;
    }
    JFAIL(c, c->i + 1, "expected ',' or '}' after the value of \"%s\", found %s", f->key,
          found(c, fb, sizeof fb));
  }
}

int report_json_parse(report_jobj *o, const char *text, size_t len, const char *file, int line) {
  char fb[32];
  jcur c = {text, len, 0, file, line};
  o->f = NULL;
  o->n = 0;
  skip_ws(&c);
  if (c.i >= c.n || c.s[c.i] != '{')
    JFAIL(&c, c.i + 1, "expected a JSON object starting with '{', found %s", found(&c, fb, sizeof fb));
  CHECK_CALL(parse_object(&c, o, 0));
  skip_ws(&c);
  if (c.i < c.n) JFAIL(&c, c.i + 1, "unexpected %s after the end of the object", found(&c, fb, sizeof fb));
  return 0;
}

static void free_fields(report_jfield *f, int n) {
  for (int i = 0; i < n; i++) {
    free(f[i].key);
    free(f[i].str);
    free_fields(f[i].sub, f[i].nsub);
  }
  free(f);
}

void report_jobj_free(report_jobj *o) {
  free_fields(o->f, o->n);
  o->f = NULL;
  o->n = 0;
}

const report_jfield *report_jobj_get(const report_jobj *o, const char *key) {
  for (int i = 0; i < o->n; i++)
    if (!strcmp(o->f[i].key, key)) return &o->f[i];
  return NULL;
}
