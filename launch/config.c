/* Experiment files: YAML text plus --set overrides -> a validated exp_experiment.
 * libyaml's event parser builds a small node tree in which every node keeps its
 * origin (file:line:col, or the --set argument); overrides edit the tree; one
 * table of keys (cfg_key, below) then drives conversion, validation and the
 * printed reference. Layers and transforms are items `- op`, `- op: VALUE` or
 * `- op: {key: value}` described by the same kind of table. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "nn/err.h"

#define CFG_DATASETS "/usr/share/datasets" /* root of the dataset shortcuts */

enum {
  CFG_MAX_TEXT = 16 << 20,  /* bytes of one experiment file */
  CFG_MAX_NODES = 100000,   /* bounds alias expansion ("billion laughs") */
  CFG_MAX_DEPTH = 64,       /* nesting; keeps the recursive reader's stack small */
  CFG_PATH = 256,           /* a key path in messages, e.g. model.heads.main[0].dense */
  CFG_MSG = 640,
};

/* ------------------------------------------------------------------------ */
/* Arena: every node and string of one load, freed at once.                  */

typedef struct cfg_block {
  struct cfg_block *next;
  size_t used, cap;
  max_align_t mem[];
} cfg_block;

typedef struct {
  cfg_block *head;
} cfg_arena;

/* Zeroed memory from the arena, or NULL when out of memory. */
static void *arena_alloc(cfg_arena *a, size_t n) {
  const size_t al = sizeof(max_align_t);
  n = n ? (n + al - 1) / al * al : al;
  if (!a->head || a->head->cap - a->head->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    cfg_block *b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->next = a->head;
    b->used = 0;
    b->cap = cap;
    a->head = b;
  }
  void *p = (char *)a->head->mem + a->head->used;
  a->head->used += n;
  memset(p, 0, n);
  return p;
}

static void arena_free(cfg_arena *a) {
  while (a->head) {
    cfg_block *next = a->head->next;
    free(a->head);
    a->head = next;
  }
}

/* ------------------------------------------------------------------------ */
/* Node tree.                                                                */

typedef enum { N_SCALAR, N_SEQ, N_MAP } node_kind;

/* Where text came from: the experiment file, or one --set argument. */
typedef struct {
  const char *name;
  int is_set;
} cfg_origin;

typedef struct cfg_node {
  node_kind kind;
  int line, col;          /* 1-based; unused for --set origins */
  const cfg_origin *org;
  const char *str;        /* scalar text ("" for an empty scalar) */
  int quoted;             /* quoted, block or !!str: always a string */
  int n, cap;
  struct cfg_node **val;  /* sequence items, or mapping values */
  struct cfg_node **key;  /* mapping keys (scalars), parallel to val */
} cfg_node;

typedef struct {
  cfg_arena ar;
  int nnodes;
} cfg_ctx;

/* ------------------------------------------------------------------------ */
/* Messages: "LOCATION: KEY.PATH: what was expected, what was found".        */

static int cfg_vfail(const char *file, int line, const char *func, const cfg_origin *org,
                     int l, int col, const char *path, const char *fmt, va_list ap) {
  char msg[CFG_MSG], loc[CFG_MSG];
  vsnprintf(msg, sizeof msg, fmt, ap);
  if (!org)
    loc[0] = '\0';
  else if (org->is_set)
    snprintf(loc, sizeof loc, "--set %s: ", org->name);
  else
    snprintf(loc, sizeof loc, "%s:%d:%d: ", org->name, l, col);
  return ferry_err_set(FERRY_EUSER, file, line, func, "%s%s%s%s", loc, path,
                       path[0] ? ": " : "", msg);
}

__attribute__((format(printf, 8, 9))) static int cfg_fail_at(const char *file, int line,
                                                             const char *func,
                                                             const cfg_origin *org, int l,
                                                             int col, const char *path,
                                                             const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = cfg_vfail(file, line, func, org, l, col, path, fmt, ap);
  va_end(ap);
  return rc;
}

__attribute__((format(printf, 6, 7))) static int cfg_fail(const char *file, int line,
                                                          const char *func, const cfg_node *n,
                                                          const char *path, const char *fmt,
                                                          ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = cfg_vfail(file, line, func, n ? n->org : NULL, n ? n->line : 0, n ? n->col : 0,
                     path, fmt, ap);
  va_end(ap);
  return rc;
}

/* Fail at node n (its file:line:col or its --set argument) for key path. */
#define FAIL(n, path, ...) return cfg_fail(__FILE__, __LINE__, __func__, (n), (path), __VA_ARGS__)
#define FAIL_AT(org, l, col, path, ...) \
  return cfg_fail_at(__FILE__, __LINE__, __func__, (org), (l), (col), (path), __VA_ARGS__)

/* out = path.key (out has CFG_PATH bytes; long paths are cut, not overrun). */
static void path_key(char *out, const char *path, const char *key) {
  size_t o = 0;
  for (const char *s = path; *s && o < CFG_PATH - 1; s++) out[o++] = *s;
  if (path[0] && o < CFG_PATH - 1) out[o++] = '.';
  for (const char *s = key; *s && o < CFG_PATH - 1; s++) out[o++] = *s;
  out[o] = '\0';
}

/* out = path[i]. */
static void path_idx(char *out, const char *path, int i) {
  size_t o = 0;
  for (const char *s = path; *s && o < CFG_PATH - 16; s++) out[o++] = *s;
  snprintf(out + o, CFG_PATH - o, "[%d]", i);
}

/* ------------------------------------------------------------------------ */
/* Scalars.                                                                  */

static int is_null(const cfg_node *n) {
  if (n->kind != N_SCALAR || n->quoted) return 0;
  const char *s = n->str;
  return !s[0] || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
         !strcmp(s, "NULL");
}

static int str_is_int(const char *s) {
  if (*s == '+' || *s == '-') s++;
  if (!isdigit((unsigned char)*s)) return 0;
  while (isdigit((unsigned char)*s)) s++;
  return *s == '\0';
}

/* Decimal number: [+-] (d+ [. d*] | . d+) [(e|E) [+-] d+]. No hex, inf, nan. */
static int str_is_num(const char *s) {
  int digits = 0;
  if (*s == '+' || *s == '-') s++;
  while (isdigit((unsigned char)*s)) s++, digits++;
  if (*s == '.') {
    s++;
    while (isdigit((unsigned char)*s)) s++, digits++;
  }
  if (!digits) return 0;
  if (*s == 'e' || *s == 'E') {
    s++;
    if (*s == '+' || *s == '-') s++;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
  }
  return *s == '\0';
}

/* "a mapping", "a sequence", "nothing", 1.5, or "text" (quoted, shortened). */
static const char *found(const cfg_node *n, char *buf, size_t len) {
  if (n->kind == N_MAP) return "a mapping";
  if (n->kind == N_SEQ) return n->n ? "a sequence" : "an empty sequence";
  if (is_null(n)) return "nothing";
  if (!n->quoted && str_is_num(n->str)) {
    snprintf(buf, len, "%.40s", n->str);
    return buf;
  }
  size_t o = 0, i = 0;
  buf[o++] = '"';
  for (; n->str[i] && o + 6 < len && i < 40; i++) {
    unsigned char ch = (unsigned char)n->str[i];
    if (ch < 0x20 || ch == '"' || ch == '\\')
      o += (size_t)snprintf(buf + o, len - o, "\\x%02x", ch);
    else
      buf[o++] = (char)ch;
  }
  if (n->str[i]) {
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o++] = '"';
  buf[o] = '\0';
  return buf;
}

/* Case-insensitive optimal-string-alignment distance (a swap costs 1). */
static int edit_distance(const char *a, const char *b) {
  enum { M = 64 };
  size_t la = strlen(a), lb = strlen(b);
  if (la >= M || lb >= M) return INT_MAX;
  int d[M][M];
  for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    for (size_t j = 1; j <= lb; j++) {
      int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
      int v = d[i - 1][j - 1] + (ca != cb);
      if (d[i - 1][j] + 1 < v) v = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
      if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
          tolower((unsigned char)a[i - 2]) == cb && d[i - 2][j - 2] + 1 < v)
        v = d[i - 2][j - 2] + 1;
      d[i][j] = v;
    }
  }
  return d[la][lb];
}

/* The closest of names[0..n) to s, or NULL when none is close. */
static const char *suggest(const char *s, const char *const *names, int n) {
  size_t len = strlen(s);
  int limit = len <= 3 ? 1 : len <= 8 ? 2 : 3, best = INT_MAX;
  const char *pick = NULL;
  for (int i = 0; i < n; i++) {
    int dist = edit_distance(s, names[i]);
    if (dist < best) best = dist, pick = names[i];
  }
  return best <= limit && (size_t)best < len ? pick : NULL;
}

/* names joined by sep into buf, e.g. "a, b, c". */
static const char *join_sep(char *buf, size_t len, const char *const *names, int n,
                            const char *sep) {
  size_t o = 0;
  buf[0] = '\0';
  for (int i = 0; i < n && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? sep : "", names[i]);
  return buf;
}

static const char *join(char *buf, size_t len, const char *const *names, int n) {
  return join_sep(buf, len, names, n, ", ");
}

/* ------------------------------------------------------------------------ */
/* Building the tree.                                                        */

static int node_new(cfg_ctx *c, node_kind kind, const cfg_origin *org, int line, int col,
                    cfg_node **out) {
  if (c->nnodes >= CFG_MAX_NODES)
    FAIL_AT(org, line, col, "", "more than %d YAML nodes (are aliases expanding without end?)",
            CFG_MAX_NODES);
  cfg_node *n = arena_alloc(&c->ar, sizeof *n);
  CHECK_ALLOC(n, sizeof *n);
  c->nnodes++;
  n->kind = kind;
  n->org = org;
  n->line = line;
  n->col = col;
  n->str = "";
  *out = n;
  return 0;
}

static int node_scalar(cfg_ctx *c, const char *s, size_t len, const cfg_origin *org, int line,
                       int col, cfg_node **out) {
  CHECK_CALL(node_new(c, N_SCALAR, org, line, col, out));
  char *str = arena_alloc(&c->ar, len + 1);
  CHECK_ALLOC(str, len + 1);
  memcpy(str, s, len);
  (*out)->str = str;
  return 0;
}

/* Appends an item (key NULL) to a sequence, or key: val to a mapping. */
static int node_push(cfg_ctx *c, cfg_node *n, cfg_node *key, cfg_node *val) {
  if (n->n == n->cap) {
    int cap = n->cap ? 2 * n->cap : 4;
    cfg_node **v = arena_alloc(&c->ar, (size_t)cap * sizeof *v);
    cfg_node **k = arena_alloc(&c->ar, (size_t)cap * sizeof *k);
    CHECK_ALLOC(v, (size_t)cap * sizeof *v);
    CHECK_ALLOC(k, (size_t)cap * sizeof *k);
    if (n->n) {
      memcpy(v, n->val, (size_t)n->n * sizeof *v);
      memcpy(k, n->key, (size_t)n->n * sizeof *k);
    }
    n->val = v;
    n->key = k;
    n->cap = cap;
  }
  n->key[n->n] = key;
  n->val[n->n++] = val;
  return 0;
}

static int map_find(const cfg_node *m, const char *key) {
  if (!m || m->kind != N_MAP) return -1;
  for (int i = 0; i < m->n; i++)
    if (!strcmp(m->key[i]->str, key)) return i;
  return -1;
}

static const cfg_node *map_get(const cfg_node *m, const char *key) {
  int i = map_find(m, key);
  return i < 0 ? NULL : m->val[i];
}

static int node_copy(cfg_ctx *c, const cfg_node *src, cfg_node **out) {
  CHECK_CALL(node_new(c, src->kind, src->org, src->line, src->col, out));
  (*out)->str = src->str;
  (*out)->quoted = src->quoted;
  for (int i = 0; i < src->n; i++) {
    cfg_node *v;
    CHECK_CALL(node_copy(c, src->val[i], &v));
    CHECK_CALL(node_push(c, *out, src->key[i], v));
  }
  return 0;
}

typedef struct {
  const char *name;
  cfg_node *node;
} cfg_anchor;

typedef struct {
  cfg_ctx *c;
  yaml_parser_t p;
  const cfg_origin *org;
  cfg_anchor *anchors;
  int nanchors, capanchors;
} cfg_reader;

static int rd_error(cfg_reader *r) {
  const yaml_parser_t *p = &r->p;
  CHECK_RT(p->error != YAML_MEMORY_ERROR, "out of memory while parsing YAML");
  char ctx[160] = "";
  if (p->context && r->org->is_set) /* a one-line value: lines say nothing */
    snprintf(ctx, sizeof ctx, " (%s)", p->context);
  else if (p->context)
    snprintf(ctx, sizeof ctx, " (%s at line %d)", p->context, (int)p->context_mark.line + 1);
  FAIL_AT(r->org, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1, "",
          "malformed YAML: %s%s", p->problem ? p->problem : "unknown error", ctx);
}

static int rd_next(cfg_reader *r, yaml_event_t *ev) {
  if (!yaml_parser_parse(&r->p, ev)) return rd_error(r);
  return 0;
}

static int rd_anchor(cfg_reader *r, const yaml_char_t *anchor, cfg_node *n) {
  if (!anchor) return 0;
  if (r->nanchors == r->capanchors) {
    int cap = r->capanchors ? 2 * r->capanchors : 8;
    cfg_anchor *a = arena_alloc(&r->c->ar, (size_t)cap * sizeof *a);
    CHECK_ALLOC(a, (size_t)cap * sizeof *a);
    if (r->nanchors) memcpy(a, r->anchors, (size_t)r->nanchors * sizeof *a);
    r->anchors = a;
    r->capanchors = cap;
  }
  size_t len = strlen((const char *)anchor);
  char *name = arena_alloc(&r->c->ar, len + 1);
  CHECK_ALLOC(name, len + 1);
  memcpy(name, anchor, len);
  r->anchors[r->nanchors].name = name;
  r->anchors[r->nanchors++].node = n;
  return 0;
}

static int rd_node(cfg_reader *r, const yaml_event_t *ev, const char *path, int depth,
                   cfg_node **out);

static int rd_seq(cfg_reader *r, cfg_node *n, const char *path, int depth) {
  char sub[CFG_PATH];
  for (;;) {
    yaml_event_t ev;
    CHECK_CALL(rd_next(r, &ev));
    if (ev.type == YAML_SEQUENCE_END_EVENT) {
      yaml_event_delete(&ev);
      return 0;
    }
    cfg_node *item = NULL;
    path_idx(sub, path, n->n);
    int rc = rd_node(r, &ev, sub, depth + 1, &item);
    yaml_event_delete(&ev);
    CHECK_CALL(rc);
    CHECK_CALL(node_push(r->c, n, NULL, item));
  }
}

static int rd_map(cfg_reader *r, cfg_node *n, const char *path, int depth) {
  char sub[CFG_PATH];
  for (;;) {
    yaml_event_t ev;
    CHECK_CALL(rd_next(r, &ev));
    if (ev.type == YAML_MAPPING_END_EVENT) {
      yaml_event_delete(&ev);
      return 0;
    }
    int line = (int)ev.start_mark.line + 1, col = (int)ev.start_mark.column + 1;
    if (ev.type != YAML_SCALAR_EVENT) {
      int alias = ev.type == YAML_ALIAS_EVENT;
      yaml_event_delete(&ev);
      FAIL_AT(r->org, line, col, path, "a key must be a plain name, found %s",
              alias ? "an alias" : "a mapping or sequence");
    }
    cfg_node *key = NULL;
    int rc = node_scalar(r->c, (const char *)ev.data.scalar.value, ev.data.scalar.length,
                         r->org, line, col, &key);
    yaml_event_delete(&ev);
    CHECK_CALL(rc);
    int prev = map_find(n, key->str);
    if (prev >= 0)
      FAIL(key, path, "duplicate key \"%s\" (first at line %d)", key->str, n->key[prev]->line);
    path_key(sub, path, key->str);
    CHECK_CALL(rd_next(r, &ev));
    cfg_node *val = NULL;
    rc = rd_node(r, &ev, sub, depth + 1, &val);
    yaml_event_delete(&ev);
    CHECK_CALL(rc);
    CHECK_CALL(node_push(r->c, n, key, val));
  }
}

/* Builds the node that starts with event ev (which the caller deletes). */
static int rd_node(cfg_reader *r, const yaml_event_t *ev, const char *path, int depth,
                   cfg_node **out) {
  int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
  if (depth > CFG_MAX_DEPTH)
    FAIL_AT(r->org, line, col, path, "nested deeper than %d levels", CFG_MAX_DEPTH);
  switch (ev->type) {
    case YAML_ALIAS_EVENT: {
      const char *name = (const char *)ev->data.alias.anchor;
      for (int i = r->nanchors - 1; i >= 0; i--)
        if (!strcmp(r->anchors[i].name, name)) return node_copy(r->c, r->anchors[i].node, out);
      FAIL_AT(r->org, line, col, path, "unknown alias *%s (no &%s before it)", name, name);
    }
    case YAML_SCALAR_EVENT: {
      const char *tag = (const char *)ev->data.scalar.tag;
      if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length))
        FAIL_AT(r->org, line, col, path, "a value contains a NUL character");
      CHECK_CALL(node_scalar(r->c, (const char *)ev->data.scalar.value, ev->data.scalar.length,
                             r->org, line, col, out));
      (*out)->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
                       (tag && !strcmp(tag, YAML_STR_TAG));
      return rd_anchor(r, ev->data.scalar.anchor, *out);
    }
    case YAML_SEQUENCE_START_EVENT:
      CHECK_CALL(node_new(r->c, N_SEQ, r->org, line, col, out));
      CHECK_CALL(rd_seq(r, *out, path, depth));
      return rd_anchor(r, ev->data.sequence_start.anchor, *out);
    case YAML_MAPPING_START_EVENT:
      CHECK_CALL(node_new(r->c, N_MAP, r->org, line, col, out));
      CHECK_CALL(rd_map(r, *out, path, depth));
      return rd_anchor(r, ev->data.mapping_start.anchor, *out);
    default:
      FAIL_AT(r->org, line, col, path, "unexpected YAML structure (event %d)", (int)ev->type);
  }
}

static int rd_stream(cfg_reader *r, cfg_node **root) {
  yaml_event_t ev;
  *root = NULL;
  CHECK_CALL(rd_next(r, &ev)); /* stream start */
  yaml_event_delete(&ev);
  CHECK_CALL(rd_next(r, &ev));
  if (ev.type == YAML_STREAM_END_EVENT) {
    yaml_event_delete(&ev);
    return 0;
  }
  yaml_event_delete(&ev); /* document start */
  CHECK_CALL(rd_next(r, &ev));
  int rc = rd_node(r, &ev, "", 0, root);
  yaml_event_delete(&ev);
  CHECK_CALL(rc);
  CHECK_CALL(rd_next(r, &ev)); /* document end */
  yaml_event_delete(&ev);
  CHECK_CALL(rd_next(r, &ev));
  int line = (int)ev.start_mark.line + 1, col = (int)ev.start_mark.column + 1;
  int more = ev.type != YAML_STREAM_END_EVENT;
  yaml_event_delete(&ev);
  if (more) FAIL_AT(r->org, line, col, "", "expected one YAML document, found a second one");
  return 0;
}

/* Parses text into *root (NULL when the text holds no document). */
static int read_yaml(cfg_ctx *c, const char *text, size_t len, const cfg_origin *org,
                     cfg_node **root) {
  cfg_reader r = {.c = c, .org = org};
  CHECK_RT(yaml_parser_initialize(&r.p), "out of memory initialising the YAML parser");
  yaml_parser_set_input_string(&r.p, (const unsigned char *)text, len);
  int rc = rd_stream(&r, root);
  yaml_parser_delete(&r.p);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* --set overrides.                                                          */

static char *arena_strdup(cfg_ctx *c, const char *s, size_t len) {
  char *d = arena_alloc(&c->ar, len + 1);
  if (d) memcpy(d, s, len);
  return d;
}

/* Puts val at the dotted path key below root, creating missing mappings. */
static int set_path(cfg_ctx *c, cfg_node *root, char *key, cfg_node *val,
                    const cfg_origin *org) {
  char here[CFG_PATH] = "", fb[64];
  cfg_node *cur = root;
  for (char *seg = key;;) {
    char *dot = strchr(seg, '.');
    if (dot) *dot = '\0';
    if (!seg[0]) FAIL_AT(org, 0, 0, "", "empty name in the key path");
    if (cur->kind == N_SCALAR && is_null(cur)) cur->kind = N_MAP; /* `key:` left empty */
    if (cur->kind == N_MAP) {
      int i = map_find(cur, seg);
      if (i < 0) {
        cfg_node *k, *v = val;
        CHECK_CALL(node_scalar(c, seg, strlen(seg), org, 0, 0, &k));
        if (dot) CHECK_CALL(node_new(c, N_MAP, org, 0, 0, &v));
        CHECK_CALL(node_push(c, cur, k, v));
        i = cur->n - 1;
      } else if (!dot) {
        cur->val[i] = val;
      }
      cur = cur->val[i];
    } else if (cur->kind == N_SEQ) {
      long long idx = -1;
      if (str_is_int(seg) && seg[0] != '-' && seg[0] != '+' && strlen(seg) < 10)
        idx = strtoll(seg, NULL, 10);
      if (idx < 0 || idx > cur->n || (dot && idx == cur->n))
        FAIL_AT(org, 0, 0, here, "is a sequence of %d items; expected an index 0..%d, found \"%s\"",
                cur->n, dot ? cur->n - 1 : cur->n, seg);
      if (idx == cur->n)
        CHECK_CALL(node_push(c, cur, NULL, val)); /* one past the end appends */
      else if (!dot)
        cur->val[idx] = val;
      cur = cur->val[idx];
    } else {
      FAIL_AT(org, 0, 0, here, "is %s, not a mapping: cannot set \"%s\" inside it",
              found(cur, fb, sizeof fb), seg);
    }
    size_t o = strlen(here);
    snprintf(here + o, sizeof here - o, "%s%s", o ? "." : "", seg);
    if (!dot) return 0;
    seg = dot + 1;
  }
}

static int apply_set(cfg_ctx *c, cfg_node *root, const char *set) {
  cfg_origin *org = arena_alloc(&c->ar, sizeof *org);
  CHECK_ALLOC(org, sizeof *org);
  org->name = set;
  org->is_set = 1;
  const char *eq = strchr(set, '=');
  if (!eq || eq == set) FAIL_AT(org, 0, 0, "", "expected KEY=VALUE, like train.optimizer.lr=0.1");
  char *key = arena_strdup(c, set, (size_t)(eq - set));
  CHECK_ALLOC(key, (size_t)(eq - set) + 1);
  cfg_node *val = NULL;
  CHECK_CALL(read_yaml(c, eq + 1, strlen(eq + 1), org, &val));
  if (!val) CHECK_CALL(node_scalar(c, "", 0, org, 0, 0, &val));
  return set_path(c, root, key, val, org);
}

/* ------------------------------------------------------------------------ */
/* The key table.                                                            */

typedef enum { K_STR, K_U64, K_INT, K_I64, K_F32, K_F64, K_BOOL, K_ENUM, K_SECT, K_FUNC } cfg_kind;

enum {
  F_REQ = 1,       /* must be present (when its variant applies) */
  F_VARIANT = 2,   /* this enum key selects which other keys apply (see cfg_key.only) */
  F_NONEMPTY = 4,  /* string must not be "" */
  F_WHOLE = 8,     /* number must be a whole number (stored as float) */
  F_IDENT = 16,    /* string of letters, digits, '_' and '-' */
  F_BARE = 32,     /* section may be written as just its variant name */
};

typedef struct {
  double lo, hi;
  unsigned char lo_set, lo_open, hi_set, hi_open;
} cfg_range;

#define R_GE(x) {.lo = (x), .lo_set = 1}
#define R_GT(x) {.lo = (x), .lo_set = 1, .lo_open = 1}
#define R_CO(a, b) {.lo = (a), .hi = (b), .lo_set = 1, .hi_set = 1, .hi_open = 1}
#define R_CC(a, b) {.lo = (a), .hi = (b), .lo_set = 1, .hi_set = 1}
#define R_OC(a, b) {.lo = (a), .hi = (b), .lo_set = 1, .hi_set = 1, .lo_open = 1}

typedef struct cfg_key cfg_key;
/* Converts node n into base (the parent's base plus key->off). For K_SECT the
 * same signature is a check run after the section was converted. */
typedef int (*cfg_fn)(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base);

struct cfg_key {
  const char *name;
  cfg_kind kind;
  size_t off, size;          /* field in the base struct */
  unsigned flags;
  unsigned only;             /* bit v set: applies when the variant key is v; 0 = always */
  cfg_range r;
  const char *const *names;  /* K_ENUM names (and K_STR allowed values) */
  const int *values;         /* K_ENUM stored values (NULL: the name's index) */
  int nnames;
  const cfg_key *sub;        /* K_SECT keys; K_FUNC keys shown in the reference */
  cfg_fn fn;                 /* K_FUNC converter; K_SECT check */
  void (*show)(const void *base, char *buf, size_t len); /* K_FUNC default */
  const char *type;          /* reference type of K_SECT / K_FUNC */
  const char *def;           /* reference default when not the field's value */
  const char *doc;
};

#define KF(T, field) .off = offsetof(T, field), .size = sizeof(((T *)0)->field)
#define NAMES(arr) .names = (arr), .nnames = (int)(sizeof(arr) / sizeof((arr)[0]))

static const cfg_key *tab_find(const cfg_key *tab, const char *name) {
  for (; tab->name; tab++)
    if (!strcmp(tab->name, name)) return tab;
  return NULL;
}

static const cfg_key *tab_variant(const cfg_key *tab) {
  for (; tab->name; tab++)
    if (tab->flags & F_VARIANT) return tab;
  return NULL;
}

static int tab_names(const cfg_key *tab, const char **names, int max) {
  int n = 0;
  for (; tab->name && n < max; tab++) names[n++] = tab->name;
  return n;
}

static int get_int(const void *p) {
  int v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Current value of the variant key vk in base, as a name index. */
static int variant_of(const void *base, const cfg_key *vk) {
  int v = get_int((const char *)base + vk->off);
  for (int i = 0; i < vk->nnames; i++)
    if ((vk->values ? vk->values[i] : i) == v) return i;
  return 0;
}

static int applies(const cfg_key *k, const cfg_key *vk, const void *base) {
  return !vk || !k->only || (k->only & (1u << variant_of(base, vk)));
}

/* ------------------------------------------------------------------------ */
/* Converting one value.                                                     */

static const char *range_text(const cfg_range *r, int whole, char *buf, size_t len) {
  const char *fmt = whole ? "%.0f" : "%g";
  char lo[24], hi[24];
  snprintf(lo, sizeof lo, fmt, r->lo);
  snprintf(hi, sizeof hi, fmt, r->hi);
  if (r->lo_set && r->hi_set)
    snprintf(buf, len, " in %c%s, %s%c", r->lo_open ? '(' : '[', lo, hi, r->hi_open ? ')' : ']');
  else if (r->lo_set)
    snprintf(buf, len, " %s %s", r->lo_open ? ">" : ">=", lo);
  else if (r->hi_set)
    snprintf(buf, len, " %s %s", r->hi_open ? "<" : "<=", hi);
  else
    buf[0] = '\0';
  return buf;
}

static int in_range(const cfg_range *r, double v) {
  if (r->lo_set && (r->lo_open ? !(v > r->lo) : !(v >= r->lo))) return 0;
  if (r->hi_set && (r->hi_open ? !(v < r->hi) : !(v <= r->hi))) return 0;
  return 1;
}

static int conv_i64(const cfg_node *n, const char *path, const cfg_range *r, int64_t tmin,
                    int64_t tmax, int64_t *out) {
  *out = 0;
  char fb[64], rb[64];
  if (n->kind != N_SCALAR || n->quoted || !str_is_int(n->str))
    FAIL(n, path, "expected an integer, found %s", found(n, fb, sizeof fb));
  errno = 0;
  long long v = strtoll(n->str, NULL, 10);
  if (errno != ERANGE && !in_range(r, (double)v))
    FAIL(n, path, "expected an integer%s, found %s", range_text(r, 1, rb, sizeof rb),
         found(n, fb, sizeof fb));
  if (errno == ERANGE || v < tmin || v > tmax) {
    double lo = (double)tmin;
    if (r->lo_set) lo = fmax(lo, r->lo_open ? floor(r->lo) + 1 : ceil(r->lo));
    FAIL(n, path, "expected an integer in [%.0f, %lld], found %s", lo, (long long)tmax,
         found(n, fb, sizeof fb));
  }
  *out = v;
  return 0;
}

static int conv_u64(const cfg_node *n, const char *path, uint64_t *out) {
  *out = 0;
  char fb[64];
  if (n->kind != N_SCALAR || n->quoted || !str_is_int(n->str) || n->str[0] == '-')
    FAIL(n, path, "expected a non-negative integer, found %s", found(n, fb, sizeof fb));
  errno = 0;
  unsigned long long v = strtoull(n->str, NULL, 10);
  if (errno == ERANGE) FAIL(n, path, "expected an integer below 2^64, found %s", n->str);
  *out = v;
  return 0;
}

static int conv_num(const cfg_node *n, const char *path, const cfg_range *r, unsigned flags,
                    int f32, double *out) {
  *out = 0;
  char fb[64], rb[64];
  int whole = (flags & F_WHOLE) != 0;
  const char *what = whole ? "an integer" : "a number";
  if (n->kind != N_SCALAR || n->quoted || !str_is_num(n->str))
    FAIL(n, path, "expected %s, found %s", what, found(n, fb, sizeof fb));
  double v = strtod(n->str, NULL);
  if (!isfinite(v) || (f32 && fabs(v) > FLT_MAX))
    FAIL(n, path, "expected %s within float range, found %s", what, found(n, fb, sizeof fb));
  if (whole && v != floor(v)) FAIL(n, path, "expected %s, found %s", what, found(n, fb, sizeof fb));
  if (!in_range(r, v))
    FAIL(n, path, "expected %s%s, found %s", what, range_text(r, whole, rb, sizeof rb),
         found(n, fb, sizeof fb));
  *out = v;
  return 0;
}

static int conv_bool(const cfg_node *n, const char *path, int *out) {
  *out = 0;
  static const char *const t[] = {"true", "True", "TRUE"}, *const f[] = {"false", "False", "FALSE"};
  char fb[64];
  if (n->kind == N_SCALAR && !n->quoted) {
    for (int i = 0; i < 3; i++) {
      if (!strcmp(n->str, t[i])) return *out = 1, 0;
      if (!strcmp(n->str, f[i])) return *out = 0, 0;
    }
  }
  FAIL(n, path, "expected true or false, found %s", found(n, fb, sizeof fb));
}

/* A non-null scalar's text. */
static int conv_text(const cfg_node *n, const char *path, const char **out) {
  *out = "";
  char fb[64];
  if (n->kind != N_SCALAR || is_null(n))
    FAIL(n, path, "expected a string, found %s", found(n, fb, sizeof fb));
  *out = n->str;
  return 0;
}

/* Index of s in names (with a did-you-mean message when absent). */
static int conv_choice(const cfg_node *n, const char *path, const char *what,
                       const char *const *names, int nnames, int *out) {
  *out = 0;
  char fb[64], list[256];
  const char *s;
  CHECK_CALL(conv_text(n, path, &s));
  for (int i = 0; i < nnames; i++)
    if (!strcmp(s, names[i])) return *out = i, 0;
  const char *near = suggest(s, names, nnames);
  join(list, sizeof list, names, nnames);
  if (!what && near)
    FAIL(n, path, "expected one of %s, found %s (did you mean \"%s\"?)", list,
         found(n, fb, sizeof fb), near);
  if (!what) FAIL(n, path, "expected one of %s, found %s", list, found(n, fb, sizeof fb));
  if (near)
    FAIL(n, path, "unknown %s %s (did you mean \"%s\"? known: %s)", what, found(n, fb, sizeof fb),
         near, list);
  FAIL(n, path, "unknown %s %s (known: %s)", what, found(n, fb, sizeof fb), list);
}

static int store(const cfg_key *k, void *p, const void *v, size_t size) {
  CHECK_RT(k->size == size, "internal: key \"%s\" stores %zu bytes into a field of %zu", k->name,
           size, k->size);
  memcpy(p, v, size);
  return 0;
}

static int conv_str(const cfg_node *n, const char *path, const cfg_key *k, char *p) {
  const char *s;
  CHECK_CALL(conv_text(n, path, &s));
  if (k->names) {
    int i;
    CHECK_CALL(conv_choice(n, path, k->name, k->names, k->nnames, &i));
  }
  size_t len = strlen(s);
  if ((k->flags & F_NONEMPTY) && !len) FAIL(n, path, "expected a non-empty string, found \"\"");
  if (len >= k->size)
    FAIL(n, path, "expected at most %zu characters, found %zu", k->size - 1, len);
  if (k->flags & F_IDENT) {
    for (size_t i = 0; i < len; i++)
      if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
        FAIL(n, path, "expected a name of letters, digits, '_' and '-', found \"%s\"", s);
  }
  memcpy(p, s, len + 1);
  return 0;
}

static int conv_map(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *tab,
                    void *base);
static int check_required(const cfg_node *at, const cfg_node *map, const char *path,
                          const cfg_key *tab, const void *base, const char *skip);

static int conv_sect(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                     void *base) {
  const cfg_key *vk = tab_variant(k->sub);
  if ((k->flags & F_BARE) && vk && n->kind == N_SCALAR && !is_null(n)) {
    int i;
    CHECK_CALL(conv_choice(n, path, NULL, vk->names, vk->nnames, &i));
    int v = vk->values ? vk->values[i] : i;
    CHECK_CALL(store(vk, (char *)base + vk->off, &v, sizeof v));
    CHECK_CALL(check_required(n, NULL, path, k->sub, base, NULL));
  } else {
    CHECK_CALL(conv_map(c, n, path, k->sub, base));
  }
  return k->fn ? k->fn(c, n, path, k, base) : 0;
}

/* Converts node n as key k into base (the struct holding the parent's fields). */
static int conv_key(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                    void *base) {
  char *p = (char *)base + k->off;
  switch (k->kind) {
    case K_STR:
      return conv_str(n, path, k, p);
    case K_U64: {
      uint64_t v = 0;
      CHECK_CALL(conv_u64(n, path, &v));
      return store(k, p, &v, sizeof v);
    }
    case K_INT: {
      int64_t v = 0;
      CHECK_CALL(conv_i64(n, path, &k->r, INT_MIN, INT_MAX, &v));
      int x = (int)v;
      return store(k, p, &x, sizeof x);
    }
    case K_I64: {
      int64_t v = 0;
      CHECK_CALL(conv_i64(n, path, &k->r, INT64_MIN, INT64_MAX, &v));
      return store(k, p, &v, sizeof v);
    }
    case K_F32: {
      double v = 0;
      CHECK_CALL(conv_num(n, path, &k->r, k->flags, 1, &v));
      float x = (float)v;
      return store(k, p, &x, sizeof x);
    }
    case K_F64: {
      double v = 0;
      CHECK_CALL(conv_num(n, path, &k->r, k->flags, 0, &v));
      return store(k, p, &v, sizeof v);
    }
    case K_BOOL: {
      int v = 0;
      CHECK_CALL(conv_bool(n, path, &v));
      return store(k, p, &v, sizeof v);
    }
    case K_ENUM: {
      int i = 0;
      CHECK_CALL(conv_choice(n, path, NULL, k->names, k->nnames, &i));
      int v = k->values ? k->values[i] : i;
      return store(k, p, &v, sizeof v);
    }
    case K_SECT:
      return conv_sect(c, n, path, k, p);
    case K_FUNC:
      return k->fn(c, n, path, k, p);
  }
  CHECK_RT(0, "internal: key \"%s\" has kind %d", k->name, (int)k->kind);
}

static int fail_unknown_key(const cfg_node *key, const char *path, const cfg_key *tab) {
  const char *names[48];
  char list[512];
  int n = tab_names(tab, names, 48);
  if (!n) FAIL(key, path, "unknown key \"%s\" (this takes no keys)", key->str);
  const char *near = suggest(key->str, names, n);
  if (near) FAIL(key, path, "unknown key \"%s\" (did you mean \"%s\"?)", key->str, near);
  FAIL(key, path, "unknown key \"%s\" (known: %s)", key->str, join(list, sizeof list, names, n));
}

/* Every F_REQ key of tab that applies and is absent from map (NULL: all absent),
 * other than skip, fails at node at. */
static int check_required(const cfg_node *at, const cfg_node *map, const char *path,
                          const cfg_key *tab, const void *base, const char *skip) {
  char sub[CFG_PATH];
  const cfg_key *vk = tab_variant(tab);
  for (const cfg_key *k = tab; k->name; k++) {
    if (!(k->flags & F_REQ) || !applies(k, vk, base) || map_find(map, k->name) >= 0) continue;
    if (skip && !strcmp(skip, k->name)) continue;
    path_key(sub, path, k->name);
    FAIL(at, sub, "required");
  }
  return 0;
}

/* Converts mapping n with the keys of tab into base. The variant key (if
 * any) is read first, since it decides which other keys apply. */
static int conv_map(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *tab,
                    void *base) {
  char fb[64], sub[CFG_PATH], list[128];
  if (n->kind != N_MAP) FAIL(n, path, "expected a mapping, found %s", found(n, fb, sizeof fb));
  const cfg_key *vk = tab_variant(tab);
  int iv = vk ? map_find(n, vk->name) : -1;
  if (iv >= 0) {
    path_key(sub, path, vk->name);
    CHECK_CALL(conv_key(c, n->val[iv], sub, vk, base));
  }
  for (int i = 0; i < n->n; i++) {
    const cfg_key *k = tab_find(tab, n->key[i]->str);
    if (!k) return fail_unknown_key(n->key[i], path, tab);
    if (i == iv) continue;
    path_key(sub, path, k->name);
    if (!applies(k, vk, base)) {
      const char *used[16];
      int nu = 0;
      for (int b = 0; b < vk->nnames && nu < 16; b++)
        if (k->only & (1u << b)) used[nu++] = vk->names[b];
      FAIL(n->key[i], sub, "not used when %s is %s (only with %s)", vk->name,
           vk->names[variant_of(base, vk)], join(list, sizeof list, used, nu));
    }
    CHECK_CALL(conv_key(c, n->val[i], sub, k, base));
  }
  return check_required(n, n, path, tab, base, NULL);
}

/* ------------------------------------------------------------------------ */
/* Items of a list: `- op`, `- op: VALUE`, `- op: {key: value, ...}`.       */

typedef struct {
  const char *name;
  int value;               /* nn_op or nn_tf_kind */
  const cfg_key *params;   /* keys of the {...} form, relative to the item struct */
  const char *shorthand;   /* key that `op: VALUE` sets; NULL: none */
  /* Runs after conversion; arg is the value after the op name (NULL if bare). */
  int (*check)(const cfg_node *item, const cfg_node *arg, const char *path, const void *base);
  const char *doc;
} cfg_item_kind;

/* Splits item into its kind and argument (NULL when bare or null). */
static int item_split(const cfg_node *item, const char *path, const cfg_item_kind *kinds,
                      int nkinds, const char *what, const char *example,
                      const cfg_item_kind **kd, const cfg_node **arg) {
  char fb[64];
  const cfg_node *name;
  *arg = NULL;
  if (item->kind == N_SCALAR && !is_null(item)) {
    name = item;
  } else if (item->kind == N_MAP && item->n == 1) {
    name = item->key[0];
    if (!is_null(item->val[0])) *arg = item->val[0];
  } else if (item->kind == N_MAP && item->n > 1) {
    FAIL(item, path,
         "expected one %s per item, found a mapping with %d keys (\"%s\", \"%s\"%s); indent the "
         "parameters under the %s's name, e.g. `- %s`",
         what, item->n, item->key[0]->str, item->key[1]->str, item->n > 2 ? ", ..." : "", what,
         example);
  } else {
    FAIL(item, path, "expected a %s, like `- %s`, found %s", what, example,
         found(item, fb, sizeof fb));
  }
  const char *names[32];
  int n = 0;
  for (; n < nkinds && n < 32; n++) names[n] = kinds[n].name;
  int i;
  CHECK_CALL(conv_choice(name, path, what, names, n, &i));
  *kd = &kinds[i];
  return 0;
}

static int item_convert(cfg_ctx *c, const cfg_item_kind *kd, const cfg_node *item,
                        const cfg_node *arg, const char *path, void *base) {
  char fb[64], list[128];
  if (!arg) {
    for (const cfg_key *k = kd->params; k->name; k++) {
      if (!(k->flags & F_REQ)) continue;
      if (kd->shorthand && !strcmp(kd->shorthand, k->name))
        FAIL(item, path, "missing %s (write `- %s: VALUE` or `- %s: {%s: VALUE}`)", k->name,
             kd->name, kd->name, k->name);
      FAIL(item, path, "missing %s (write `- %s: {%s: VALUE, ...}`)", k->name, kd->name, k->name);
    }
  } else if (arg->kind == N_MAP) {
    CHECK_CALL(conv_map(c, arg, path, kd->params, base));
  } else if (arg->kind == N_SCALAR && kd->shorthand) {
    CHECK_CALL(conv_key(c, arg, path, tab_find(kd->params, kd->shorthand), base));
    CHECK_CALL(check_required(arg, NULL, path, kd->params, base, kd->shorthand));
  } else {
    const char *names[16];
    int n = tab_names(kd->params, names, 16);
    if (!n) FAIL(arg, path, "takes no value, found %s", found(arg, fb, sizeof fb));
    FAIL(arg, path, "expected a mapping with keys %s, found %s", join(list, sizeof list, names, n),
         found(arg, fb, sizeof fb));
  }
  return kd->check ? kd->check(item, arg, path, base) : 0;
}

/* ------------------------------------------------------------------------ */
/* Layers.                                                                   */

#define LP_NAME                                                                            \
  {.name = "name", .kind = K_STR, KF(nn_layer_spec, name), .flags = F_NONEMPTY | F_IDENT,  \
   .def = "<op><n>", .doc = "unique in its stack; default: op + running count (conv1, conv2)"}
#define LP_STRIDE(d) {.name = "stride", .kind = K_INT, KF(nn_layer_spec, stride), .r = R_GE(1), \
                      .def = (d), .doc = "step between windows"}

static int conv_bias(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                     void *base) {
  (void)c, (void)k;
  int v;
  CHECK_CALL(conv_bool(n, path, &v));
  ((nn_layer_spec *)base)->no_bias = !v;
  return 0;
}

#define LP_BIAS {.name = "bias", .kind = K_FUNC, .fn = conv_bias, .type = "bool", .def = "true", \
                 .doc = "add a bias vector"}

static const cfg_key lp_dense[] = {
    {.name = "out", .kind = K_INT, KF(nn_layer_spec, out), .flags = F_REQ, .r = R_GE(1),
     .doc = "output units"},
    LP_BIAS, LP_NAME, {.name = NULL}};
static const cfg_key lp_conv[] = {
    {.name = "out", .kind = K_INT, KF(nn_layer_spec, out), .flags = F_REQ, .r = R_GE(1),
     .doc = "output channels"},
    {.name = "k", .kind = K_INT, KF(nn_layer_spec, k), .flags = F_REQ, .r = R_GE(1),
     .doc = "kernel size (k x k)"},
    LP_STRIDE("1"),
    {.name = "pad", .kind = K_INT, KF(nn_layer_spec, pad), .r = R_GE(0),
     .doc = "zero padding on each side"},
    LP_BIAS, LP_NAME, {.name = NULL}};
static const cfg_key lp_pool[] = {
    {.name = "k", .kind = K_INT, KF(nn_layer_spec, k), .flags = F_REQ, .r = R_GE(1),
     .doc = "window size (k x k)"},
    LP_STRIDE("k"), LP_NAME, {.name = NULL}};
static const cfg_key lp_plain[] = {LP_NAME, {.name = NULL}};
static const cfg_key lp_dropout[] = {
    {.name = "p", .kind = K_F32, KF(nn_layer_spec, p), .flags = F_REQ, .r = R_CO(0, 1),
     .doc = "drop probability"},
    LP_NAME, {.name = NULL}};
static const cfg_key lp_groupnorm[] = {
    {.name = "groups", .kind = K_INT, KF(nn_layer_spec, groups), .r = R_GE(1),
     .def = "auto", .doc = "channel groups; must divide the channels (1 = LayerNorm)"},
    LP_NAME, {.name = NULL}};
static const cfg_key lp_residual[] = {
    {.name = "out", .kind = K_INT, KF(nn_layer_spec, out), .flags = F_REQ, .r = R_GE(1),
     .doc = "output channels"},
    LP_STRIDE("1"), LP_NAME, {.name = NULL}};
static const cfg_key lp_grl[] = {
    {.name = "lambda", .kind = K_F32, KF(nn_layer_spec, lambda), .r = R_GE(0),
     .doc = "gradient scale: dx = -lambda * dy"},
    LP_NAME, {.name = NULL}};

static const cfg_item_kind layer_kinds[] = {
    {"dense", NN_DENSE, lp_dense, "out", NULL, "fully connected, on flat input"},
    {"conv", NN_CONV2D, lp_conv, NULL, NULL, "2-D convolution"},
    {"maxpool", NN_MAXPOOL2D, lp_pool, "k", NULL, "max pooling"},
    {"avgpool", NN_AVGPOOL2D, lp_pool, "k", NULL, "average pooling (no padding)"},
    {"gap", NN_GAP, lp_plain, NULL, NULL, "global average pool: spatial -> flat"},
    {"relu", NN_RELU, lp_plain, NULL, NULL, "ReLU"},
    {"gelu", NN_GELU, lp_plain, NULL, NULL, "GELU (tanh approximation)"},
    {"tanh", NN_TANH, lp_plain, NULL, NULL, "tanh"},
    {"sigmoid", NN_SIGMOID, lp_plain, NULL, NULL, "logistic sigmoid"},
    {"dropout", NN_DROPOUT, lp_dropout, "p", NULL, "inverted dropout (training only)"},
    {"flatten", NN_FLATTEN, lp_plain, NULL, NULL, "spatial -> flat"},
    {"groupnorm", NN_GROUPNORM, lp_groupnorm, "groups", NULL, "group normalisation"},
    {"residual", NN_RESIDUAL, lp_residual, "out", NULL,
     "basic residual block: conv3x3-GN-ReLU-conv3x3-GN + shortcut, ReLU"},
    {"grl", NN_GRL, lp_grl, "lambda", NULL, "gradient reversal (identity forward)"},
};
_Static_assert(sizeof layer_kinds / sizeof layer_kinds[0] == NN_OP_COUNT,
               "every nn_op needs an entry in layer_kinds");
#define NLAYER_KINDS ((int)(sizeof layer_kinds / sizeof layer_kinds[0]))

/* A layer before its keys are read: the defaults the reference shows. */
static void layer_init(nn_layer_spec *L, int op) {
  memset(L, 0, sizeof *L);
  L->op = (nn_op)op;
  if (op == NN_GRL) L->lambda = 1.0f;
}

static int conv_stack(cfg_ctx *c, const cfg_node *n, const char *path, nn_stack_spec *st,
                      const char *name) {
  char fb[64], ip[CFG_PATH], kp[CFG_PATH];
  if (n->kind != N_SEQ || n->n == 0)
    FAIL(n, path, "expected a non-empty sequence of layers, found %s", found(n, fb, sizeof fb));
  if (n->n > NN_MAX_LAYERS)
    FAIL(n->val[NN_MAX_LAYERS], path, "at most %d layers, found %d", NN_MAX_LAYERS, n->n);
  snprintf(st->name, sizeof st->name, "%s", name);
  int count[NN_OP_COUNT] = {0};
  for (int i = 0; i < n->n; i++) {
    const cfg_item_kind *kd;
    const cfg_node *arg, *item = n->val[i];
    nn_layer_spec *L = &st->layers[i];
    path_idx(ip, path, i);
    CHECK_CALL(item_split(item, ip, layer_kinds, NLAYER_KINDS, "layer", "conv: {out: 16, k: 3}",
                          &kd, &arg));
    layer_init(L, kd->value);
    path_key(kp, ip, kd->name);
    CHECK_CALL(item_convert(c, kd, item, arg, kp, L));
    count[kd->value]++;
    if (!L->name[0]) snprintf(L->name, sizeof L->name, "%.32s%d", kd->name, count[kd->value]);
    for (int j = 0; j < i; j++)
      if (!strcmp(st->layers[j].name, L->name))
        FAIL(item, ip, "duplicate layer name \"%s\" (also %s[%d]; names are unique in a stack)",
             L->name, path, j);
  }
  st->nlayers = n->n;
  return 0;
}

static int conv_trunk(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)k;
  return conv_stack(c, n, path, &((exp_experiment *)base)->model.trunk, "trunk");
}

static int conv_heads(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)k;
  char fb[64], hp[CFG_PATH];
  nn_model_spec *m = &((exp_experiment *)base)->model;
  if (n->kind != N_MAP || n->n == 0)
    FAIL(n, path, "expected a mapping of head name to layers, like `main: [{dense: 10}]`, found %s",
         found(n, fb, sizeof fb));
  if (n->n > NN_MAX_HEADS)
    FAIL(n->key[NN_MAX_HEADS], path, "at most %d heads, found %d", NN_MAX_HEADS, n->n);
  static const cfg_key head_name = {.name = "head name", .kind = K_STR,
                                    KF(nn_stack_spec, name), .flags = F_NONEMPTY | F_IDENT};
  for (int i = 0; i < n->n; i++) {
    CHECK_CALL(conv_str(n->key[i], path, &head_name, m->heads[i].name));
    path_key(hp, path, n->key[i]->str);
    CHECK_CALL(conv_stack(c, n->val[i], hp, &m->heads[i], n->key[i]->str));
  }
  m->nheads = n->n;
  return 0;
}

/* Either a preset, or a trunk with heads. */
static int check_model(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                       void *base) {
  (void)c, (void)k, (void)base;
  char sub[CFG_PATH];
  int ip = map_find(n, "preset"), it = map_find(n, "trunk"), ih = map_find(n, "heads");
  if (ip >= 0 && (it >= 0 || ih >= 0)) {
    int other = it >= 0 ? it : ih;
    path_key(sub, path, n->key[other]->str);
    FAIL(n->key[other], sub, "not allowed with model.preset (the preset defines the layers; "
         "give either preset or trunk + heads)");
  }
  if (ip < 0 && it < 0) {
    path_key(sub, path, ih >= 0 ? "trunk" : "preset");
    FAIL(n, sub, "required (give preset: mlp | cnn | resnet, or trunk + heads)");
  }
  if (it >= 0 && ih < 0) {
    path_key(sub, path, "heads");
    FAIL(n, sub, "at least one head");
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Transforms.                                                               */

/* Per-channel values: a number (copied to all NN_TF_MAXC slots) or a list of
 * 1..NN_TF_MAXC numbers (slot i = channel i). */
static int conv_channels(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                         void *base) {
  (void)c;
  char fb[64], sub[CFG_PATH];
  float *dst = base;
  double v;
  if (n->kind == N_SEQ) {
    if (n->n < 1 || n->n > NN_TF_MAXC)
      FAIL(n, path, "expected 1 to %d values (one per channel), found %d", NN_TF_MAXC, n->n);
    for (int i = 0; i < n->n; i++) {
      path_idx(sub, path, i);
      CHECK_CALL(conv_num(n->val[i], sub, &k->r, 0, 1, &v));
      dst[i] = (float)v;
    }
    return 0;
  }
  if (n->kind != N_SCALAR || is_null(n))
    FAIL(n, path, "expected a number or a list of up to %d numbers, found %s", NN_TF_MAXC,
         found(n, fb, sizeof fb));
  CHECK_CALL(conv_num(n, path, &k->r, 0, 1, &v));
  for (int i = 0; i < NN_TF_MAXC; i++) dst[i] = (float)v;
  return 0;
}

static const cfg_key tp_normalize[] = {
    {.name = "mean", .kind = K_FUNC, .off = offsetof(nn_transform, a), .flags = F_REQ,
     .fn = conv_channels, .type = "number or [c1, ..]", .doc = "subtracted, per channel (max 4)"},
    {.name = "std", .kind = K_FUNC, .off = offsetof(nn_transform, b), .flags = F_REQ,
     .r = R_GT(0), .fn = conv_channels, .type = "number > 0 or [c1, ..]",
     .doc = "divided by, per channel (max 4)"},
    {.name = NULL}};
static const cfg_key tp_none[] = {{.name = NULL}};
static const cfg_key tp_rotate[] = {
    {.name = "degrees", .kind = K_F32, KF(nn_transform, a[0]),
     .doc = "fixed angle (90/180/270 are exact)"},
    {.name = "max_degrees", .kind = K_F32, KF(nn_transform, a[1]), .r = R_GT(0),
     .doc = "random angle in [-max, max] per sample"},
    {.name = NULL}};
static const cfg_key tp_noise[] = {
    {.name = "std", .kind = K_F32, KF(nn_transform, a[0]), .flags = F_REQ, .r = R_GE(0),
     .doc = "Gaussian noise std (pixels on the [0,1] scale)"},
    {.name = NULL}};
static const cfg_key tp_crop[] = {
    {.name = "pad", .kind = K_F32, KF(nn_transform, a[0]), .flags = F_REQ | F_WHOLE,
     .r = R_GE(0), .doc = "zero padding in pixels before the random crop"},
    {.name = NULL}};
static const cfg_key tp_hflip[] = {
    {.name = "p", .kind = K_F32, KF(nn_transform, a[0]), .r = R_CC(0, 1),
     .doc = "flip probability"},
    {.name = NULL}};

static int check_rotate(const cfg_node *item, const cfg_node *arg, const char *path,
                        const void *base) {
  (void)base;
  int d = map_find(arg, "degrees") >= 0, m = map_find(arg, "max_degrees") >= 0;
  if (!arg)
    FAIL(item, path, "missing angle (write `- rotate: 90`, `- rotate: {degrees: 90}` or "
         "`- rotate: {max_degrees: 15}`)");
  if (arg->kind == N_MAP && d && m) FAIL(arg, path, "give degrees or max_degrees, not both");
  if (arg->kind == N_MAP && !d && !m) FAIL(arg, path, "needs degrees or max_degrees");
  return 0;
}

static int check_normalize(const cfg_node *item, const cfg_node *arg, const char *path,
                           const void *base) {
  (void)item, (void)base;
  const cfg_node *m = map_get(arg, "mean"), *s = map_get(arg, "std");
  if (m && s && m->kind == N_SEQ && s->kind == N_SEQ && m->n != s->n)
    FAIL(s, path, "mean has %d values but std has %d", m->n, s->n);
  return 0;
}

static const cfg_item_kind tf_kinds[] = {
    {"normalize", NN_TF_NORMALIZE, tp_normalize, NULL, check_normalize,
     "x = (x - mean) / std per channel"},
    {"invert", NN_TF_INVERT, tp_none, NULL, NULL, "x = 1 - x (on the [0,1] scale)"},
    {"rotate", NN_TF_ROTATE, tp_rotate, "degrees", check_rotate,
     "rotation, bilinear, zero fill"},
    {"noise", NN_TF_NOISE, tp_noise, "std", NULL, "additive Gaussian noise"},
    {"crop", NN_TF_CROP, tp_crop, "pad", NULL, "random crop after zero padding"},
    {"hflip", NN_TF_HFLIP, tp_hflip, "p", NULL, "random horizontal flip (bare `hflip`: p 0.5)"},
};
_Static_assert(sizeof tf_kinds / sizeof tf_kinds[0] == NN_TF_COUNT,
               "every nn_tf_kind needs an entry in tf_kinds");
#define NTF_KINDS ((int)(sizeof tf_kinds / sizeof tf_kinds[0]))

static void tf_init(nn_transform *t, int kind) {
  memset(t, 0, sizeof *t);
  t->kind = (nn_tf_kind)kind;
  for (int i = 0; i < NN_TF_MAXC; i++) t->b[i] = 1.0f; /* normalize: unused channels std 1 */
  if (kind == NN_TF_HFLIP) t->a[0] = 0.5f;
}

static int conv_tf_list(cfg_ctx *c, const cfg_node *n, const char *path, nn_transform *tf,
                        int *ntf) {
  char fb[64], ip[CFG_PATH], kp[CFG_PATH];
  *ntf = 0;
  if (is_null(n)) return 0;
  if (n->kind != N_SEQ)
    FAIL(n, path, "expected a sequence of transforms, like `[invert, {rotate: 90}]`, found %s",
         found(n, fb, sizeof fb));
  if (n->n > EXP_MAX_TF)
    FAIL(n->val[EXP_MAX_TF], path, "at most %d transforms, found %d", EXP_MAX_TF, n->n);
  for (int i = 0; i < n->n; i++) {
    const cfg_item_kind *kd;
    const cfg_node *arg;
    path_idx(ip, path, i);
    CHECK_CALL(item_split(n->val[i], ip, tf_kinds, NTF_KINDS, "transform", "rotate: 90", &kd,
                          &arg));
    tf_init(&tf[i], kd->value);
    path_key(kp, ip, kd->name);
    CHECK_CALL(item_convert(c, kd, n->val[i], arg, kp, &tf[i]));
  }
  *ntf = n->n;
  return 0;
}

static int conv_tf(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                   void *base) {
  (void)k;
  exp_data *d = base;
  return conv_tf_list(c, n, path, d->tf, &d->ntf);
}

static int conv_aug(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                    void *base) {
  (void)k;
  exp_data *d = base;
  return conv_tf_list(c, n, path, d->aug, &d->naug);
}

/* ------------------------------------------------------------------------ */
/* Data.                                                                     */

static const char *const src_formats[] = {"idx", "csv"};
static const char *const shortcuts[] = {"mnist:train", "mnist:test", "fashion-mnist:train",
                                        "fashion-mnist:test"};
_Static_assert(EXP_SRC_IDX == 0 && EXP_SRC_CSV == 1, "src_formats follows exp_src_format");

static int conv_image(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)c;
  char fb[64], sub[CFG_PATH];
  exp_source *s = base;
  int64_t v[2];
  if (n->kind != N_SEQ || n->n != 2)
    FAIL(n, path, "expected [height, width], found %s", found(n, fb, sizeof fb));
  for (int i = 0; i < 2; i++) {
    path_idx(sub, path, i);
    CHECK_CALL(conv_i64(n->val[i], sub, &k->r, 1, 1 << 16, &v[i]));
  }
  s->img_h = (int)v[0];
  s->img_w = (int)v[1];
  return 0;
}

static const cfg_key k_source[] = {
    {.name = "format", .kind = K_ENUM, KF(exp_source, format), .flags = F_VARIANT,
     NAMES(src_formats), .def = "auto",
     .doc = "file format (default: csv if path is given, else idx)"},
    {.name = "images", .kind = K_STR, KF(exp_source, images), .flags = F_REQ | F_NONEMPTY,
     .only = 1u << EXP_SRC_IDX, .doc = "IDX image file (gzip or plain)"},
    {.name = "labels", .kind = K_STR, KF(exp_source, labels), .flags = F_REQ | F_NONEMPTY,
     .only = 1u << EXP_SRC_IDX, .doc = "IDX label file (gzip or plain)"},
    {.name = "path", .kind = K_STR, KF(exp_source, path), .flags = F_REQ | F_NONEMPTY,
     .only = 1u << EXP_SRC_CSV, .doc = "CSV file, rows label,f1,..,fd (gzip allowed)"},
    {.name = "image", .kind = K_FUNC, .r = R_GE(1), .only = 1u << EXP_SRC_CSV, .fn = conv_image,
     .type = "[h, w] ints >= 1", .def = "none",
     .doc = "treat each row's h*w features as a 1-channel image"},
    {.name = "limit", .kind = K_I64, KF(exp_source, limit), .r = R_GE(0),
     .doc = "keep the first N samples (0 = all)"},
    {.name = NULL}};

/* A shortcut "dataset:split" or a mapping of k_source keys. */
static int conv_source(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                       void *base) {
  exp_source *s = base;
  char fb[64];
  memset(s, 0, sizeof *s);
  if (n->kind == N_MAP) {
    s->format = map_find(n, "path") >= 0 ? EXP_SRC_CSV : EXP_SRC_IDX;
    return conv_map(c, n, path, k->sub, s);
  }
  if (n->kind != N_SCALAR || is_null(n))
    FAIL(n, path, "expected a dataset shortcut (mnist:train, fashion-mnist:test, ...) or a "
         "mapping {format, images, labels, ...}, found %s", found(n, fb, sizeof fb));
  int i;
  CHECK_CALL(conv_choice(n, path, "dataset shortcut", shortcuts, 4, &i));
  const char *colon = strchr(shortcuts[i], ':');
  int dlen = (int)(colon - shortcuts[i]);
  const char *prefix = strcmp(colon + 1, "test") ? "train" : "t10k";
  s->format = EXP_SRC_IDX;
  snprintf(s->images, sizeof s->images, "%s/%.*s/%s-images-idx3-ubyte.gz", CFG_DATASETS, dlen,
           shortcuts[i], prefix);
  snprintf(s->labels, sizeof s->labels, "%s/%.*s/%s-labels-idx1-ubyte.gz", CFG_DATASETS, dlen,
           shortcuts[i], prefix);
  return 0;
}

static int conv_classes(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                        void *base) {
  (void)c;
  char fb[64], sub[CFG_PATH];
  exp_data *d = base;
  d->nclasses_keep = 0;
  if (is_null(n)) return 0;
  if (n->kind != N_SEQ)
    FAIL(n, path, "expected a list of class labels, like [5, 6, 7], found %s",
         found(n, fb, sizeof fb));
  if (n->n > EXP_MAX_CLASSES)
    FAIL(n->val[EXP_MAX_CLASSES], path, "at most %d classes, found %d", EXP_MAX_CLASSES, n->n);
  for (int i = 0; i < n->n; i++) {
    int64_t v;
    path_idx(sub, path, i);
    CHECK_CALL(conv_i64(n->val[i], sub, &k->r, 0, INT_MAX, &v));
    for (int j = 0; j < i; j++)
      if (d->classes[j] == v)
        FAIL(n->val[i], sub, "duplicate class %d (also %s[%d])", (int)v, path, j);
    d->classes[i] = (int)v;
  }
  d->nclasses_keep = n->n;
  return 0;
}

static const cfg_key k_data[] = {
    {.name = "name", .kind = K_STR, KF(exp_data, name),
     .def = "from train",
     .doc = "dataset label for reports (default: the train shortcut's dataset)"},
    {.name = "train", .kind = K_FUNC, .off = offsetof(exp_data, train), .flags = F_REQ,
     .sub = k_source, .fn = conv_source, .type = "shortcut or mapping",
     .doc = "training data: mnist:train | mnist:test | fashion-mnist:train | fashion-mnist:test, "
            "or {format, images, labels | path, image, limit}"},
    {.name = "test", .kind = K_FUNC, .off = offsetof(exp_data, test), .flags = F_REQ,
     .sub = k_source, .fn = conv_source, .type = "shortcut or mapping",
     .doc = "test data, written like train"},
    {.name = "classes", .kind = K_FUNC, .r = R_GE(0), .fn = conv_classes,
     .type = "list of ints >= 0", .def = "all",
     .doc = "keep these classes, relabelled 0..n-1 in this order (max 256)"},
    {.name = "k_per_class", .kind = K_INT, KF(exp_data, k_per_class), .r = R_GE(0),
     .doc = "labelled training samples per class (0 = all)"},
    {.name = "val_frac", .kind = K_F64, KF(exp_data, val_frac), .r = R_CO(0, 1),
     .doc = "fraction of train held out for validation (stratified)"},
    {.name = "seed", .kind = K_U64, KF(exp_data, seed), .def = "= seed",
     .doc = "seed of the class subset, K-per-class draw and validation split"},
    {.name = "transforms", .kind = K_FUNC, .fn = conv_tf, .type = "list of transforms",
     .def = "[]", .doc = "applied to every split (train, val, test), in order"},
    {.name = "augment", .kind = K_FUNC, .fn = conv_aug, .type = "list of transforms",
     .def = "[]", .doc = "applied to training batches only, after transforms"},
    {.name = NULL}};

/* ------------------------------------------------------------------------ */
/* Model, training, top level.                                               */

static const char *const presets[] = {"mlp", "cnn", "resnet"};

static const cfg_key k_model[] = {
    {.name = "preset", .kind = K_STR, KF(exp_experiment, preset), NAMES(presets), .def = "none",
     .doc = "built-in model: mlp | cnn | resnet, with one head sized by the data"},
    {.name = "trunk", .kind = K_FUNC, .fn = conv_trunk, .type = "list of layers",
     .doc = "the shared layer stack (see layers below)"},
    {.name = "heads", .kind = K_FUNC, .fn = conv_heads, .type = "mapping name -> layers",
     .doc = "named heads on the trunk's output, in order (max 16)"},
    {.name = "init", .kind = K_ENUM, KF(exp_experiment, model.init), NAMES(nn_init_names),
     .doc = "weight init: torch (Kaiming-uniform a=sqrt(5), PyTorch's default) | he | xavier"},
    {.name = NULL}};

static const char *const opt_names[] = {"sgd", "adamw"};
static const char *const sched_names[] = {"constant", "step", "cosine"};
_Static_assert(sizeof opt_names / sizeof opt_names[0] == NN_OPT_COUNT, "one name per nn_opt_kind");
_Static_assert(sizeof sched_names / sizeof sched_names[0] == NN_SCHED_COUNT,
               "one name per nn_sched_kind");
_Static_assert(NN_OPT_SGD == 0 && NN_SCHED_CONSTANT == 0 && NN_SCHED_COSINE == 2,
               "opt_names/sched_names follow the enums");
_Static_assert(sizeof(nn_opt_kind) == sizeof(int) && sizeof(nn_sched_kind) == sizeof(int) &&
                   sizeof(exp_src_format) == sizeof(int),
               "enum keys are stored as int");

static int conv_betas(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)c;
  char fb[64], sub[CFG_PATH];
  nn_opt_cfg *o = base;
  double v[2];
  if (n->kind != N_SEQ || n->n != 2)
    FAIL(n, path, "expected [beta1, beta2], found %s", found(n, fb, sizeof fb));
  for (int i = 0; i < 2; i++) {
    path_idx(sub, path, i);
    CHECK_CALL(conv_num(n->val[i], sub, &k->r, 0, 1, &v[i]));
  }
  o->beta1 = (float)v[0];
  o->beta2 = (float)v[1];
  return 0;
}

static void show_betas(const void *base, char *buf, size_t len) {
  const nn_opt_cfg *o = base;
  snprintf(buf, len, "[%g, %g]", o->beta1, o->beta2);
}

static int check_opt(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                     void *base) {
  (void)c, (void)k;
  char sub[CFG_PATH];
  const nn_opt_cfg *o = base;
  if (o->kind == NN_OPT_SGD && o->nesterov && o->momentum <= 0) {
    const cfg_node *at = map_get(n, "nesterov");
    path_key(sub, path, "nesterov");
    FAIL(at ? at : n, sub, "needs momentum > 0");
  }
  return 0;
}

static const cfg_key k_opt[] = {
    {.name = "name", .kind = K_ENUM, KF(nn_opt_cfg, kind), .flags = F_VARIANT, NAMES(opt_names),
     .doc = "optimizer: sgd | adamw"},
    {.name = "lr", .kind = K_F32, KF(nn_opt_cfg, lr), .r = R_GT(0),
     .doc = "base learning rate (the schedule scales it)"},
    {.name = "momentum", .kind = K_F32, KF(nn_opt_cfg, momentum), .only = 1u << NN_OPT_SGD,
     .r = R_CO(0, 1), .doc = "heavy-ball momentum"},
    {.name = "nesterov", .kind = K_BOOL, KF(nn_opt_cfg, nesterov), .only = 1u << NN_OPT_SGD,
     .doc = "Nesterov momentum (needs momentum > 0)"},
    {.name = "weight_decay", .kind = K_F32, KF(nn_opt_cfg, weight_decay), .r = R_GE(0),
     .doc = "sgd: L2 added to the gradient; adamw: decoupled decay"},
    {.name = "betas", .kind = K_FUNC, .only = 1u << NN_OPT_ADAMW, .r = R_CO(0, 1),
     .fn = conv_betas, .show = show_betas, .type = "[b1, b2] in [0, 1)",
     .doc = "Adam moment decay rates"},
    {.name = "eps", .kind = K_F32, KF(nn_opt_cfg, eps), .only = 1u << NN_OPT_ADAMW, .r = R_GT(0),
     .doc = "Adam denominator epsilon"},
    {.name = NULL}};

static const cfg_key k_sched[] = {
    {.name = "name", .kind = K_ENUM, KF(nn_sched_cfg, kind), .flags = F_VARIANT,
     NAMES(sched_names), .doc = "learning-rate schedule: constant | step | cosine"},
    {.name = "warmup_steps", .kind = K_I64, KF(nn_sched_cfg, warmup_steps), .r = R_GE(0),
     .doc = "linear warm-up from 0 over the first steps"},
    {.name = "step_size", .kind = K_I64, KF(nn_sched_cfg, step_size), .flags = F_REQ,
     .only = 1u << NN_SCHED_STEP, .r = R_GE(1), .doc = "lr *= gamma every step_size steps"},
    {.name = "gamma", .kind = K_F32, KF(nn_sched_cfg, gamma), .only = 1u << NN_SCHED_STEP,
     .r = R_GT(0), .doc = "step decay factor"},
    {.name = "min_lr", .kind = K_F32, KF(nn_sched_cfg, min_lr), .only = 1u << NN_SCHED_COSINE,
     .r = R_GE(0), .doc = "cosine floor"},
    {.name = "total_steps", .kind = K_I64, KF(nn_sched_cfg, total_steps),
     .only = 1u << NN_SCHED_COSINE, .r = R_GE(0),
     .doc = "cosine length in steps (0 = the run's total steps)"},
    {.name = NULL}};

static const char *const progress_names[] = {"auto", "bar", "plain"};
static const int progress_values[] = {-1, 1, 0};
static const char *const nan_names[] = {"stop", "skip"};
static const char *const weighting_names[] = {"static", "uncertainty"};
static const int nan_values[] = {EXP_NAN_STOP, EXP_NAN_SKIP};

static const cfg_key k_train[] = {
    {.name = "epochs", .kind = K_INT, KF(exp_experiment, epochs), .r = R_GE(1),
     .doc = "passes over the training set"},
    {.name = "steps", .kind = K_I64, KF(exp_experiment, max_steps), .r = R_GE(0),
     .doc = "stop after this many optimizer steps (0 = epochs decide)"},
    {.name = "batch", .kind = K_INT, KF(exp_experiment, batch), .r = R_GE(1),
     .doc = "global batch, split across ranks"},
    {.name = "eval_batch", .kind = K_INT, KF(exp_experiment, eval_batch), .r = R_GE(1),
     .doc = "batch for validation and test passes"},
    {.name = "optimizer", .kind = K_SECT, .off = offsetof(exp_experiment, opt), .flags = F_BARE,
     .sub = k_opt, .fn = check_opt, .type = "mapping or name", .doc = "optimizer settings"},
    {.name = "schedule", .kind = K_SECT, .off = offsetof(exp_experiment, sched), .flags = F_BARE,
     .sub = k_sched, .type = "mapping or name", .doc = "learning-rate schedule"},
    {.name = "clip_norm", .kind = K_F32, KF(exp_experiment, clip_norm), .r = R_GE(0),
     .doc = "clip the global gradient norm to this (0 = off)"},
    {.name = "label_smoothing", .kind = K_F32, KF(exp_experiment, label_smoothing),
     .r = R_CO(0, 1), .doc = "cross-entropy label smoothing"},
    {.name = "threads", .kind = K_INT, KF(exp_experiment, threads), .r = R_GE(0),
     .doc = "BLAS threads per rank (0 = leave OpenBLAS's default)"},
    {.name = "progress", .kind = K_ENUM, KF(exp_experiment, progress), NAMES(progress_names),
     .values = progress_values, .doc = "auto (bar on a terminal) | bar | plain lines"},
    {.name = "shards", .kind = K_INT, KF(exp_experiment, shards), .r = R_CC(1, 4096),
     .doc = "fixed logical data shards; the sample order depends on it, not on the rank count"},
    {.name = "deterministic", .kind = K_BOOL, KF(exp_experiment, deterministic),
     .doc = "bitwise-identical parameters for 1, 2, 4... ranks (slower)"},
    {.name = "det_leaves", .kind = K_INT, KF(exp_experiment, det_leaves), .r = R_CC(1, 1024),
     .doc = "deterministic: gradient leaves per step (power of 2, divides shards; ranks must divide it)"},
    {.name = "bucket_kb", .kind = K_INT, KF(exp_experiment, bucket_kb), .r = R_GE(1),
     .doc = "gradient allreduce bucket size in KiB"},
    {.name = "check_every", .kind = K_INT, KF(exp_experiment, check_every), .r = R_GE(0),
     .doc = "compare parameter checksums across ranks every K steps (0 = never)"},
    {.name = "nan", .kind = K_ENUM, KF(exp_experiment, nan_policy), NAMES(nan_names),
     .values = nan_values, .doc = "non-finite loss or gradient: stop (error) | skip the step on all ranks"},
    {.name = "task_weighting", .kind = K_ENUM, KF(exp_experiment, uncertainty),
     NAMES(weighting_names), .doc = "multi-task: static (the tasks' weights) | uncertainty (learned, "
     "Kendall et al. 2018)"},
    {.name = "log_every", .kind = K_INT, KF(exp_experiment, log_every), .r = R_GE(0),
     .doc = "write the global loss to steps.jsonl every K steps (0 = off)"},
    {.name = NULL}};

/* ---- transfer stage ------------------------------------------------------ */

static const cfg_key k_target[] = {
    {.name = "name", .kind = K_STR, KF(exp_target, name), .flags = F_REQ | F_NONEMPTY | F_IDENT,
     .doc = "target domain name (job ids and reports use it)"},
    {.name = "data", .kind = K_SECT, .off = offsetof(exp_target, data), .flags = F_REQ,
     .sub = k_data, .type = "mapping", .doc = "the target data, like the top-level data section"},
    {.name = NULL}};

static int conv_targets(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                        void *base) {
  (void)k;
  char fb[64], sub[CFG_PATH];
  exp_transfer *x = base;
  if (n->kind != N_SEQ || n->n == 0)
    FAIL(n, path, "expected a non-empty list of targets, like [{name: t, data: {...}}], found %s",
         found(n, fb, sizeof fb));
  if (n->n > EXP_MAX_TARGETS)
    FAIL(n->val[EXP_MAX_TARGETS], path, "at most %d targets, found %d", EXP_MAX_TARGETS, n->n);
  for (int i = 0; i < n->n; i++) {
    path_idx(sub, path, i);
    exp_target *t = &x->targets[i];
    memset(t, 0, sizeof *t);
    t->data.val_frac = 0;
    CHECK_CALL(conv_map(c, n->val[i], sub, k_target, t));
    for (int j = 0; j < i; j++)
      if (!strcmp(x->targets[j].name, t->name))
        FAIL(n->val[i], sub, "duplicate target name \"%s\" (also %s[%d])", t->name, path, j);
  }
  x->ntargets = n->n;
  return 0;
}

static int conv_strategies(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                           void *base) {
  (void)c, (void)k;
  char fb[64], sub[CFG_PATH];
  exp_transfer *x = base;
  if (n->kind != N_SEQ || n->n == 0 || n->n > EXP_MAX_GRID)
    FAIL(n, path, "expected a list of 1 to %d strategies (scratch, feature-extract, finetune, "
         "linear-probe), "
         "found %s", EXP_MAX_GRID, found(n, fb, sizeof fb));
  for (int i = 0; i < n->n; i++) {
    int v;
    path_idx(sub, path, i);
    CHECK_CALL(conv_choice(n->val[i], sub, "strategy", exp_strategy_names + 1,
                           EXP_STRAT_COUNT - 1, &v));
    x->strategies[i] = v + 1;
  }
  x->nstrategies = n->n;
  return 0;
}

/* A list of integers (or one integer) in [lo, hi] into out[0..*count). */
static int conv_int_list(const cfg_node *n, const char *path, int64_t lo, int64_t hi, int max,
                         int64_t *out, int *count) {
  char fb[64], sub[CFG_PATH];
  cfg_range r = {.lo = (double)lo, .hi = (double)hi, .lo_set = 1, .hi_set = 1};
  if (n->kind == N_SCALAR) {
    *count = 1;
    return conv_i64(n, path, &r, lo, hi, &out[0]);
  }
  if (n->kind != N_SEQ || n->n == 0 || n->n > max)
    FAIL(n, path, "expected an integer or a list of 1 to %d integers, found %s", max,
         found(n, fb, sizeof fb));
  for (int i = 0; i < n->n; i++) {
    path_idx(sub, path, i);
    CHECK_CALL(conv_i64(n->val[i], sub, &r, lo, hi, &out[i]));
  }
  *count = n->n;
  return 0;
}

static int conv_kgrid(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)c, (void)k;
  exp_transfer *x = base;
  int64_t v[EXP_MAX_GRID];
  CHECK_CALL(conv_int_list(n, path, 0, 1000000, EXP_MAX_GRID, v, &x->nk));
  for (int i = 0; i < x->nk; i++) x->k[i] = (int)v[i];
  return 0;
}

static int conv_seeds(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)c, (void)k;
  exp_transfer *x = base;
  return conv_int_list(n, path, 0, INT64_MAX, EXP_MAX_SEEDS, x->seeds, &x->nseeds);
}

static int conv_thead(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)k;
  exp_transfer *x = base;
  memset(&x->head, 0, sizeof x->head);
  snprintf(x->head.name, sizeof x->head.name, "main");
  return conv_stack(c, n, path, &x->head, "main");
}

/* A positive number or a list of them (learning rates, ridge penalties). */
static int conv_num_list(const cfg_node *n, const char *path, double *out, int *count) {
  char fb[64], sub[CFG_PATH];
  cfg_range r = {.lo = 0, .lo_set = 1, .lo_open = 1};
  if (n->kind == N_SCALAR) {
    *count = 1;
    return conv_num(n, path, &r, 0, 0, &out[0]);
  }
  if (n->kind != N_SEQ || n->n == 0 || n->n > EXP_MAX_GRID)
    FAIL(n, path, "expected a positive number or a list of 1 to %d of them, found %s", EXP_MAX_GRID,
         found(n, fb, sizeof fb));
  for (int i = 0; i < n->n; i++) {
    path_idx(sub, path, i);
    CHECK_CALL(conv_num(n->val[i], sub, &r, 0, 0, &out[i]));
  }
  *count = n->n;
  return 0;
}

static int conv_lrs(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k, void *base) {
  (void)c, (void)k;
  exp_transfer *x = base;
  double v[EXP_MAX_GRID];
  CHECK_CALL(conv_num_list(n, path, v, &x->nlrs));
  for (int i = 0; i < x->nlrs; i++) x->lrs[i] = (float)v[i];
  return 0;
}

static int conv_lambdas(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                        void *base) {
  (void)c, (void)k;
  exp_transfer *x = base;
  return conv_num_list(n, path, x->lambdas, &x->nlambdas);
}

static const cfg_key k_finetune[] = {
    {.name = "trunk_lr_mult", .kind = K_F32, KF(exp_job, trunk_lr_mult), .r = R_GE(0),
     .doc = "learning-rate multiplier of the trunk (the head keeps 1)"},
    {.name = "unfreeze_last", .kind = K_INT, KF(exp_job, unfreeze_last), .r = R_GE(0),
     .doc = "train only the last k trunk blocks (layers with parameters); 0 = all"},
    {.name = "reinit_last", .kind = K_INT, KF(exp_job, reinit_last), .r = R_GE(0),
     .doc = "re-initialise the last k trunk blocks instead of loading them (0 = none)"},
    {.name = "gradual_every", .kind = K_INT, KF(exp_job, gradual_every), .r = R_GE(0),
     .doc = "gradual unfreezing: head first, one more trunk block every N steps (0 = off)"},
    {.name = "l2sp", .kind = K_F32, KF(exp_job, l2sp), .r = R_GE(0),
     .doc = "L2-SP: add (alpha/2)*||w - w_pretrained||^2 over the trunk (0 = off)"},
    {.name = "eval_every", .kind = K_INT, KF(exp_job, eval_every), .r = R_GE(0),
     .doc = "evaluate on the target's validation split every N steps (0 = every epoch)"},
    {.name = "patience", .kind = K_INT, KF(exp_job, patience), .r = R_GE(0),
     .doc = "early stopping: stop after N evaluations without a better validation accuracy "
            "and keep the best parameters (0 = off; needs data.val_frac > 0)"},
    {.name = NULL}};

static const cfg_key k_transfer[] = {
    {.name = "targets", .kind = K_FUNC, .fn = conv_targets, .flags = F_REQ, .sub = k_target,
     .type = "list of {name, data}", .doc = "target domains"},
    {.name = "strategies", .kind = K_FUNC, .fn = conv_strategies,
     .type = "list of scratch | feature-extract | finetune | linear-probe", .def = "[scratch, feature-extract, finetune]",
     .doc = "strategies to compare (scratch is the baseline)"},
    {.name = "k", .kind = K_FUNC, .fn = conv_kgrid, .type = "int or list of ints", .def = "0",
     .doc = "labelled training samples per class, drawn per seed (0 = all)"},
    {.name = "seeds", .kind = K_FUNC, .fn = conv_seeds, .type = "int or list of ints", .def = "0",
     .doc = "seeds: each draws its own K-shot sample, head init and order"},
    {.name = "head", .kind = K_FUNC, .fn = conv_thead, .type = "list of layers",
     .def = "[{dense: classes}]", .doc = "the new head put on the pre-trained trunk"},
    {.name = "steps", .kind = K_I64, KF(exp_transfer, steps), .r = R_GE(1),
     .doc = "optimizer steps per job"},
    {.name = "batch", .kind = K_INT, KF(exp_transfer, batch), .r = R_GE(1),
     .doc = "global batch of a job"},
    {.name = "shards", .kind = K_INT, KF(exp_transfer, shards), .r = R_CC(1, 4096),
     .doc = "logical data shards of a job (see train.shards; small target sets want few)"},
    {.name = "optimizer", .kind = K_SECT, .off = offsetof(exp_transfer, opt), .flags = F_BARE,
     .sub = k_opt, .fn = check_opt, .type = "mapping or name", .doc = "optimizer of the jobs"},
    {.name = "schedule", .kind = K_SECT, .off = offsetof(exp_transfer, sched), .flags = F_BARE,
     .sub = k_sched, .type = "mapping or name", .doc = "learning-rate schedule of the jobs"},
    {.name = "finetune", .kind = K_SECT, .off = offsetof(exp_transfer, finetune), .sub = k_finetune,
     .type = "mapping", .doc = "options of the finetune strategy"},
    {.name = "lrs", .kind = K_FUNC, .fn = conv_lrs, .type = "number or list of numbers",
     .def = "the optimizer's lr", .doc = "learning-rate grid: one job per value (job ids get .lr<value>)"},
    {.name = "lambdas", .kind = K_FUNC, .fn = conv_lambdas, .type = "number or list of numbers",
     .def = "[1e-4, 1e-3, 1e-2, 0.1, 1, 10]",
     .doc = "linear-probe: ridge penalties tried; the best on the validation split is kept"},
    {.name = "group_size", .kind = K_INT, KF(exp_transfer, group_size), .r = R_GE(0),
     .doc = "ranks per worker group (each group trains one job at a time, data-parallel); "
            "0 = one group of all ranks"},
    {.name = "retries", .kind = K_INT, KF(exp_transfer, retries), .r = R_CC(0, 10),
     .doc = "re-runs of a job that failed at run time (non-finite loss, divergence); bad input "
            "is never retried"},
    {.name = "retry_lr_scale", .kind = K_F32, KF(exp_transfer, retry_lr_scale), .r = R_OC(0, 1),
     .doc = "each retry multiplies the job's learning rate by this"},
    {.name = "pretrain_per_seed", .kind = K_BOOL, KF(exp_transfer, pretrain_per_seed),
     .doc = "pre-train once per transfer seed s (with seed + s, in DIR/pretrain.s<s>) and start "
            "seed s's jobs from that model, so the spread over seeds includes the pre-training's "
            "own; false = one pre-training (DIR/pretrain) shared by every job"},
    {.name = NULL}};

/* Runs only when the section is present: the transfer stage is on. */
static int check_transfer(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                          void *base) {
  (void)c, (void)n, (void)path, (void)k;
  ((exp_transfer *)base)->enabled = 1;
  return 0;
}

/* ---- multi-task --------------------------------------------------------- */

static int conv_groups(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                       void *base) {
  (void)c, (void)k;
  char fb[64], sub[CFG_PATH], sub2[CFG_PATH];
  exp_task *t = base;
  for (int i = 0; i < EXP_MAX_CLASSES; i++) t->group_of[i] = -1;
  if (n->kind != N_SEQ || n->n == 0 || n->n > EXP_MAX_CLASSES)
    FAIL(n, path, "expected a list of class groups, like [[0, 2], [1, 3]], found %s",
         found(n, fb, sizeof fb));
  cfg_range r = {.lo = 0, .hi = EXP_MAX_CLASSES - 1, .lo_set = 1, .hi_set = 1};
  for (int g = 0; g < n->n; g++) {
    path_idx(sub, path, g);
    const cfg_node *grp = n->val[g];
    if (grp->kind != N_SEQ || grp->n == 0)
      FAIL(grp, sub, "expected a non-empty list of classes, found %s", found(grp, fb, sizeof fb));
    for (int i = 0; i < grp->n; i++) {
      int64_t v;
      path_idx(sub2, sub, i);
      CHECK_CALL(conv_i64(grp->val[i], sub2, &r, 0, EXP_MAX_CLASSES - 1, &v));
      if (t->group_of[v] >= 0)
        FAIL(grp->val[i], sub2, "class %d is already in group %d", (int)v, t->group_of[v]);
      t->group_of[v] = g;
    }
  }
  t->ngroups = n->n;
  return 0;
}

static int conv_task_head(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                          void *base) {
  (void)k;
  exp_task *t = base;
  return conv_stack(c, n, path, &t->head, t->name);
}

/* Runs only when a task has a data section: it trains on its own data. */
static int check_task_data(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                           void *base) {
  (void)c, (void)n, (void)path, (void)k;
  exp_task *t = (exp_task *)((char *)base - offsetof(exp_task, data));
  t->has_data = 1;
  return 0;
}

static const cfg_key k_task[] = {
    {.name = "name", .kind = K_STR, KF(exp_task, name), .flags = F_REQ | F_NONEMPTY | F_IDENT,
     .doc = "task name (its head is named after it)"},
    {.name = "labels", .kind = K_ENUM, KF(exp_task, kind), NAMES(exp_label_names),
     .doc = "class (the data's labels) | coarse (classes grouped by `groups`) | rotation "
            "(self-supervised: input rotated by 0/90/180/270 degrees, predict which)"},
    {.name = "groups", .kind = K_FUNC, .fn = conv_groups, .type = "list of class lists",
     .doc = "coarse: the classes of each group"},
    {.name = "weight", .kind = K_F32, KF(exp_task, weight), .r = R_GE(0),
     .doc = "w_t in the joint loss sum_t w_t L_t (static weighting)"},
    {.name = "head", .kind = K_FUNC, .fn = conv_task_head, .type = "list of layers",
     .def = "[{dense: outputs}]", .doc = "the task's head on the shared trunk"},
    {.name = "data", .kind = K_SECT, .off = offsetof(exp_task, data), .sub = k_data,
     .fn = check_task_data, .type = "mapping",
     .doc = "the task's own dataset, like the top-level data section (default: the experiment's)"},
    {.name = NULL}};

static int conv_tasks(cfg_ctx *c, const cfg_node *n, const char *path, const cfg_key *k,
                      void *base) {
  (void)k;
  char fb[64], sub[CFG_PATH];
  exp_experiment *e = base;
  if (n->kind != N_SEQ || n->n == 0)
    FAIL(n, path, "expected a non-empty list of tasks, found %s", found(n, fb, sizeof fb));
  if (n->n > EXP_MAX_TASKS)
    FAIL(n->val[EXP_MAX_TASKS], path, "at most %d tasks, found %d", EXP_MAX_TASKS, n->n);
  for (int i = 0; i < n->n; i++) {
    exp_task *t = &e->tasks[i];
    memset(t, 0, sizeof *t);
    t->weight = 1.0f;
    for (int j = 0; j < EXP_MAX_CLASSES; j++) t->group_of[j] = -1;
    path_idx(sub, path, i);
    /* The name first: the head's layers are named inside it. */
    int in = map_find(n->val[i], "name");
    if (in >= 0) {
      char np[CFG_PATH];
      path_key(np, sub, "name");
      CHECK_CALL(conv_str(n->val[i]->val[in], np, &k_task[0], t->name));
    }
    CHECK_CALL(conv_map(c, n->val[i], sub, k_task, t));
    if (t->kind == EXP_LABEL_COARSE && t->ngroups == 0)
      FAIL(n->val[i], sub, "labels: coarse needs groups, like groups: [[0, 2], [1, 3]]");
    for (int j = 0; j < i; j++)
      if (!strcmp(e->tasks[j].name, t->name))
        FAIL(n->val[i], sub, "duplicate task name \"%s\"", t->name);
  }
  e->ntasks = n->n;
  return 0;
}

static const cfg_key k_ckpt[] = {
    {.name = "every_steps", .kind = K_INT, KF(exp_experiment, ckpt_every_steps), .r = R_GE(0),
     .doc = "write a checkpoint every K optimizer steps (0 = off)"},
    {.name = "every_epoch", .kind = K_BOOL, KF(exp_experiment, ckpt_every_epoch),
     .doc = "write a checkpoint at the end of every epoch"},
    {.name = "keep", .kind = K_INT, KF(exp_experiment, ckpt_keep), .r = R_GE(1),
     .doc = "keep the newest K checkpoints in the run directory"},
    {.name = "resume", .kind = K_STR, KF(exp_experiment, resume),
     .doc = "\"\" (fresh start) | latest (newest valid checkpoint in the run directory) | a file"},
    {.name = NULL}};

static const cfg_key k_top[] = {
    {.name = "name", .kind = K_STR, KF(exp_experiment, name), .flags = F_NONEMPTY,
     .doc = "experiment name, used in reports"},
    {.name = "seed", .kind = K_U64, KF(exp_experiment, seed),
     .doc = "seed of initialisation, sample order and data subsets"},
    {.name = "out", .kind = K_STR, KF(exp_experiment, out_dir), .flags = F_NONEMPTY,
     .def = "runs/<name>", .doc = "run directory (the CLI's --out overrides)"},
    {.name = "data", .kind = K_SECT, .off = offsetof(exp_experiment, data), .flags = F_REQ,
     .sub = k_data, .type = "mapping", .doc = "datasets, class subset, transforms"},
    {.name = "model", .kind = K_SECT, .flags = F_REQ, .sub = k_model, .fn = check_model,
     .type = "mapping", .doc = "a preset, or a trunk and named heads"},
    {.name = "train", .kind = K_SECT, .sub = k_train, .type = "mapping",
     .doc = "training loop settings"},
    {.name = "checkpoint", .kind = K_SECT, .sub = k_ckpt, .type = "mapping",
     .doc = "when to write checkpoints, how many to keep, whether to resume"},
    {.name = "tasks", .kind = K_FUNC, .fn = conv_tasks, .sub = k_task, .type = "list of tasks",
     .doc = "multi-task joint training: tasks sharing the trunk, one head each"},
    {.name = "transfer", .kind = K_SECT, .off = offsetof(exp_experiment, transfer),
     .sub = k_transfer, .fn = check_transfer, .type = "mapping",
     .doc = "transfer jobs run after training, from its final checkpoint"},
    {.name = NULL}};

/* ------------------------------------------------------------------------ */
/* Loading.                                                                  */

/* Defaults that depend on other keys. */
static int finish(const cfg_node *root, exp_experiment *e) {
  const cfg_node *data = map_get(root, "data");
  if (!map_get(data, "seed")) e->data.seed = e->seed;
  if (!map_get(root, "out")) {
    const cfg_node *name = map_get(root, "name");
    if ((size_t)snprintf(e->out_dir, sizeof e->out_dir, "runs/%s", e->name) >= sizeof e->out_dir)
      FAIL(name, "name", "too long to make the default out directory runs/<name>");
  }
  const cfg_node *train = map_get(data, "train");
  if (!map_get(data, "name") && train && train->kind == N_SCALAR) {
    const char *colon = strchr(train->str, ':');
    snprintf(e->data.name, sizeof e->data.name, "%.*s", (int)(colon - train->str), train->str);
  }
  return 0;
}

static int load(cfg_ctx *c, exp_experiment *e, const char *text, size_t len, const char *name,
                const char *const *sets, int nsets) {
  char fb[64];
  cfg_origin file = {.name = name, .is_set = 0};
  if (strlen(name) >= sizeof e->text_path)
    FAIL_AT(NULL, 0, 0, "", "experiment file path longer than %d characters: %.60s...",
            (int)sizeof e->text_path - 1, name);
  snprintf(e->text_path, sizeof e->text_path, "%s", name);
  cfg_node *root = NULL;
  CHECK_CALL(read_yaml(c, text, len, &file, &root));
  if (!root || is_null(root))
    FAIL_AT(&file, 1, 1, "", "the file is empty; expected a mapping with at least data.train, "
            "data.test and model");
  if (root->kind != N_MAP)
    FAIL(root, "", "expected a mapping of keys (name, data, model, train, ...) at the top, "
         "found %s", found(root, fb, sizeof fb));
  for (int i = 0; i < nsets; i++) CHECK_CALL(apply_set(c, root, sets[i]));
  CHECK_CALL(conv_map(c, root, "", k_top, e));
  return finish(root, e);
}

int cfg_load_string(exp_experiment *e, const char *yaml_text, const char *name,
                    const char *const *sets, int nsets) {
  exp_defaults(e);
  cfg_ctx c = {{0}, 0};
  int rc = load(&c, e, yaml_text, strlen(yaml_text), name ? name : "<string>", sets, nsets);
  if (!rc) e->text_hash = cfg_text_hash(yaml_text, strlen(yaml_text), sets, nsets);
  arena_free(&c.ar);
  return rc;
}

/* Reads the whole file into *out (NUL-terminated; the caller frees). */
static int read_file(const char *path, char **out, size_t *len) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  CHECK_USER(f, "cannot open experiment file \"%s\": %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  int err = 0;
  while (buf) {
    n += fread(buf + n, 1, cap - 1 - n, f);
    if (n < cap - 1) break;
    if (cap > CFG_MAX_TEXT) break;
    char *grown = realloc(buf, 2 * cap);
    if (!grown) free(buf);
    buf = grown;
    cap *= 2;
  }
  err = ferror(f) ? errno : 0;
  fclose(f);
  CHECK_ALLOC(buf, cap);
  if (err || n >= CFG_MAX_TEXT) {
    free(buf);
    CHECK_USER(!err, "cannot read experiment file \"%s\": %s", path, strerror(err));
    CHECK_USER(0, "experiment file \"%s\" is larger than %d MiB", path, CFG_MAX_TEXT >> 20);
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

int cfg_load(exp_experiment *e, const char *path, const char *const *sets, int nsets) {
  exp_defaults(e);
  char *text;
  size_t len;
  CHECK_CALL(read_file(path, &text, &len));
  cfg_ctx c = {{0}, 0};
  int rc = load(&c, e, text, len, path, sets, nsets);
  if (!rc) e->text_hash = cfg_text_hash(text, len, sets, nsets);
  arena_free(&c.ar);
  free(text);
  return rc;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

uint64_t cfg_text_hash(const char *text, size_t len, const char *const *sets, int nsets) {
  uint64_t h = 0xcbf29ce484222325ULL, n = len;
  h = fnv(fnv(h, &n, sizeof n), text, len);
  for (int i = 0; i < nsets; i++) {
    /* Where to resume from is not part of what the run computes. */
    if (!strncmp(sets[i], "checkpoint.resume=", 18)) continue;
    n = strlen(sets[i]);
    h = fnv(fnv(h, &n, sizeof n), sets[i], n);
  }
  return h;
}

int cfg_file_hash(uint64_t *hash, const char *path, const char *const *sets, int nsets) {
  char *text;
  size_t len;
  CHECK_CALL(read_file(path, &text, &len));
  *hash = cfg_text_hash(text, len, sets, nsets);
  free(text);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The reference, from the same tables.                                      */

static const char *type_text(const cfg_key *k, char *buf, size_t len) {
  char rb[64];
  switch (k->kind) {
    case K_STR:
      return k->names ? join_sep(buf, len, k->names, k->nnames, " | ") : "string";
    case K_U64:
      return "int >= 0";
    case K_INT:
    case K_I64:
      snprintf(buf, len, "int%s", range_text(&k->r, 1, rb, sizeof rb));
      return buf;
    case K_F32:
    case K_F64:
      snprintf(buf, len, "%s%s", k->flags & F_WHOLE ? "int" : "number",
               range_text(&k->r, k->flags & F_WHOLE, rb, sizeof rb));
      return buf;
    case K_BOOL:
      return "bool";
    case K_ENUM:
      return join_sep(buf, len, k->names, k->nnames, " | ");
    case K_SECT:
    case K_FUNC:
      return k->type ? k->type : "mapping";
  }
  return "?";
}

/* The default of key k in base (NULL: no struct to read it from). */
static const char *def_text(const cfg_key *k, const void *base, char *buf, size_t len) {
  if (k->flags & F_REQ) return "required";
  if (k->def) return k->def;
  if (!base) return "";
  const char *p = (const char *)base + k->off;
  int iv;
  int64_t lv;
  uint64_t uv;
  float fv;
  double dv;
  switch (k->kind) {
    case K_STR:
      snprintf(buf, len, "%s", p[0] ? p : "\"\"");
      return buf;
    case K_U64:
      memcpy(&uv, p, sizeof uv);
      snprintf(buf, len, "%llu", (unsigned long long)uv);
      return buf;
    case K_INT:
      memcpy(&iv, p, sizeof iv);
      snprintf(buf, len, "%d", iv);
      return buf;
    case K_I64:
      memcpy(&lv, p, sizeof lv);
      snprintf(buf, len, "%lld", (long long)lv);
      return buf;
    case K_F32:
      memcpy(&fv, p, sizeof fv);
      snprintf(buf, len, "%g", fv);
      return buf;
    case K_F64:
      memcpy(&dv, p, sizeof dv);
      snprintf(buf, len, "%g", dv);
      return buf;
    case K_BOOL:
      return get_int(p) ? "true" : "false";
    case K_ENUM:
      iv = get_int(p);
      for (int i = 0; i < k->nnames; i++)
        if ((k->values ? k->values[i] : i) == iv) return k->names[i];
      return "?";
    case K_SECT:
      return "";
    case K_FUNC:
      if (k->show) {
        k->show(p, buf, len);
        return buf;
      }
      return "";
  }
  return "";
}

static void print_line(FILE *f, int indent, const char *key, const char *type, const char *def,
                       const char *doc, const char *only) {
  int w = 34 - indent;
  fprintf(f, "%*s%-*s %-24s %-16s %s%s\n", indent, "", w < 1 ? 1 : w, key, type, def, doc, only);
}

/* Key lines of tab below prefix; base holds the defaults (or NULL). */
static void print_keys(FILE *f, const cfg_key *tab, const char *prefix, const void *base,
                       int indent) {
  char path[CFG_PATH], tb[160], db[64], only[96];
  const cfg_key *vk = tab_variant(tab);
  for (const cfg_key *k = tab; k->name; k++) {
    const void *kb = base ? (const char *)base + k->off : NULL;
    only[0] = '\0';
    if (vk && k->only) {
      size_t o = (size_t)snprintf(only, sizeof only, " [%s ", vk->name);
      for (int b = 0, first = 1; b < vk->nnames; b++)
        if (k->only & (1u << b))
          o += (size_t)snprintf(only + o, sizeof only - o, "%s%s", first ? "" : "|", vk->names[b]),
              first = 0;
      snprintf(only + o, sizeof only - o, " only]");
    }
    path_key(path, prefix, k->name);
    print_line(f, indent, indent ? k->name : path, type_text(k, tb, sizeof tb),
               def_text(k, base, db, sizeof db), k->doc ? k->doc : "", only);
    if (k->sub && k->kind == K_SECT) print_keys(f, k->sub, path, kb, indent);
    if (k->sub && k->kind == K_FUNC) print_keys(f, k->sub, path, kb, indent);
  }
}

static void print_items(FILE *f, const cfg_item_kind *kinds, int n, int is_layer) {
  char tb[160], db[64];
  for (int i = 0; i < n; i++) {
    union {
      nn_layer_spec l;
      nn_transform t;
    } d;
    if (is_layer)
      layer_init(&d.l, kinds[i].value);
    else
      tf_init(&d.t, kinds[i].value);
    fprintf(f, "  %-12s %s%s%s%s\n", kinds[i].name, kinds[i].doc,
            kinds[i].shorthand ? "; `" : "", kinds[i].shorthand ? kinds[i].name : "",
            kinds[i].shorthand ? ": VALUE` sets *" : "");
    for (const cfg_key *k = kinds[i].params; k->name; k++) {
      char key[64];
      snprintf(key, sizeof key, "%s%s", k->name,
               kinds[i].shorthand && !strcmp(kinds[i].shorthand, k->name) ? " *" : "");
      print_line(f, 4, key, type_text(k, tb, sizeof tb), def_text(k, &d, db, sizeof db),
                 k->doc ? k->doc : "", "");
    }
  }
}

void cfg_print_reference(FILE *f) {
  exp_experiment *d = malloc(sizeof *d);
  if (!d) {
    fprintf(f, "# (out of memory printing the reference)\n");
    return;
  }
  exp_defaults(d);
  fprintf(f, "# %-32s %-24s %-16s %s\n", "KEY", "TYPE", "DEFAULT", "MEANING");
  print_keys(f, k_top, "", d, 0);
  fprintf(f, "#\n# Layers: items of model.trunk and model.heads.NAME, written `- op`,\n"
             "# `- op: VALUE` (sets the key marked *) or `- op: {key: value, ...}`.\n");
  print_items(f, layer_kinds, NLAYER_KINDS, 1);
  fprintf(f, "#\n# Transforms: items of data.transforms and data.augment, written like layers.\n");
  print_items(f, tf_kinds, NTF_KINDS, 0);
  fprintf(f, "#\n# --set KEY=VALUE overrides any key (VALUE is YAML: 0.1, [5, 6], {name: adamw});\n"
             "# missing mappings are created; list items are addressed by index\n"
             "# (model.trunk.3.dense=64).\n");
  free(d);
}
