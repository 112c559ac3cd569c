/* Opening a checkpoint: the whole file is read into memory and verified
 * before anything is handed out (magic, version, every record's CRC-32, the
 * header against its own model spec, chunk coverage, the END record). Sizes
 * declared in the file are checked against the bytes actually present before
 * they are used, so a corrupt or hostile file cannot make us allocate or read
 * more than its own length. Nothing in a checkpoint is ever executed. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "ferry.pb-c.h"
#include "nn/err.h"
#include "train/ckpt_impl.h"

static const char *const kind_names[] = {"?", "header", "tensor chunk", "end"};

static const char *kind_name(uint32_t k) { return k <= CKPT_REC_END ? kind_names[k] : "unknown"; }

/* Formats "checkpoint NAME is corrupt at byte OFF: REASON" as a user error. */
static int corrupt_at(const ckpt_file *f, int line, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int corrupt_at(const ckpt_file *f, int line, size_t off, const char *fmt, ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return ferry_err_set(FERRY_EUSER, __FILE__, line, "ckpt_parse",
                       "checkpoint %s is corrupt or truncated at byte %zu: %s", f->name, off, why);
}
#define CORRUPT(off, ...) return corrupt_at(f, __LINE__, (off), __VA_ARGS__)
#define CORRUPT_IF(cond, off, ...) \
  do {                             \
    if (cond) CORRUPT(off, __VA_ARGS__); \
  } while (0)

typedef struct {
  uint32_t kind;
  uint64_t plen;
  size_t pos;                    /* of the record's first byte */
  const unsigned char *payload;
} record;

/* Frames and CRC-checks the record at *pos; advances *pos past it. */
static int next_record(const ckpt_file *f, size_t *pos, uint64_t index, record *r) {
  size_t p = *pos, rem = f->len - p;
  CORRUPT_IF(rem == 0, p, "the file ends after %llu records without an END record (truncated)",
             (unsigned long long)index);
  CORRUPT_IF(rem < CKPT_REC_HEAD + CKPT_REC_TAIL, p,
             "record %llu: only %zu bytes left, a record takes at least %u (truncated)",
             (unsigned long long)index, rem, CKPT_REC_HEAD + CKPT_REC_TAIL);
  const unsigned char *b = f->buf + p;
  r->kind = ckpt_get_u32(b);
  r->plen = ckpt_get_u64(b + 4);
  r->pos = p;
  uint64_t room = rem - CKPT_REC_HEAD - CKPT_REC_TAIL;
  CORRUPT_IF(r->plen > room, p,
             "record %llu (%s) declares a %llu-byte payload but only %llu bytes remain",
             (unsigned long long)index, kind_name(r->kind), (unsigned long long)r->plen,
             (unsigned long long)room);
  r->payload = b + CKPT_REC_HEAD;
  uLong crc = crc32_z(0L, b, CKPT_REC_HEAD + (size_t)r->plen);
  uint32_t stored = ckpt_get_u32(b + CKPT_REC_HEAD + r->plen);
  CORRUPT_IF((uint32_t)crc != stored, p,
             "record %llu (%s, %llu bytes): CRC-32 mismatch (stored 0x%08x, computed 0x%08x)",
             (unsigned long long)index, kind_name(r->kind), (unsigned long long)r->plen, stored,
             (unsigned)crc);
  CORRUPT_IF(r->kind < CKPT_REC_HEADER || r->kind > CKPT_REC_END, p,
             "record %llu has unknown kind %u", (unsigned long long)index, r->kind);
  *pos = p + CKPT_REC_HEAD + (size_t)r->plen + CKPT_REC_TAIL;
  return 0;
}

/* A string field of the header copied into a fixed buffer. */
static int copy_str(const ckpt_file *f, size_t at, char *dst, size_t n, const char *src,
                    const char *what) {
  if (!src) src = "";
  CORRUPT_IF(strlen(src) >= n, at, "header: %s is %zu characters, at most %zu allowed", what,
             strlen(src), n - 1);
  memcpy(dst, src, strlen(src) + 1);
  return 0;
}

/* Range checks keep nn_layer_setup's int arithmetic far from overflow. */
static int check_range(const ckpt_file *f, size_t at, const char *what, const char *layer,
                       long long v, long long lo, long long hi) {
  CORRUPT_IF(v < lo || v > hi, at, "model spec: layer '%s': %s = %lld is outside [%lld, %lld]",
             layer, what, v, lo, hi);
  return 0;
}

static int layer_from_pb(const ckpt_file *f, size_t at, nn_layer_spec *l,
                         const Ferry__LayerSpec *pl) {
  memset(l, 0, sizeof *l);
  CHECK_CALL(copy_str(f, at, l->name, sizeof l->name, pl->name, "a layer name"));
  CORRUPT_IF(!l->name[0], at, "model spec: a layer has no name");
  int op = nn_op_from_name(pl->op);
  CORRUPT_IF(op < 0, at, "model spec: layer '%s' has unknown op '%.40s'", l->name,
             pl->op ? pl->op : "");
  l->op = (nn_op)op;
  CHECK_CALL(check_range(f, at, "out", l->name, pl->out, 0, 1 << 24));
  CHECK_CALL(check_range(f, at, "k", l->name, pl->k, 0, 1 << 16));
  CHECK_CALL(check_range(f, at, "stride", l->name, pl->stride, 0, 1 << 16));
  CHECK_CALL(check_range(f, at, "pad", l->name, pl->pad, 0, 1 << 16));
  CHECK_CALL(check_range(f, at, "groups", l->name, pl->groups, 0, 1 << 24));
  CORRUPT_IF(!isfinite(pl->p) || !isfinite(pl->lambda), at,
             "model spec: layer '%s': p or lambda is not finite", l->name);
  l->out = pl->out;
  l->k = pl->k;
  l->stride = pl->stride;
  l->pad = pl->pad;
  l->groups = pl->groups;
  l->no_bias = pl->no_bias;
  l->p = pl->p;
  l->lambda = pl->lambda;
  return 0;
}

static int stack_from_pb(const ckpt_file *f, size_t at, nn_stack_spec *s, const Ferry__StackSpec *ps,
                         const char *what) {
  CORRUPT_IF(!ps, at, "model spec: the %s is missing", what);
  CHECK_CALL(copy_str(f, at, s->name, sizeof s->name, ps->name, "a stack name"));
  CORRUPT_IF(ps->n_layers > NN_MAX_LAYERS, at, "model spec: the %s has %zu layers, at most %d allowed",
             what, ps->n_layers, NN_MAX_LAYERS);
  s->nlayers = (int)ps->n_layers;
  for (int i = 0; i < s->nlayers; i++) {
    CHECK_CALL(layer_from_pb(f, at, &s->layers[i], ps->layers[i]));
    for (int j = 0; j < i; j++)
      CORRUPT_IF(!strcmp(s->layers[i].name, s->layers[j].name), at,
                 "model spec: the %s has two layers named '%s'", what, s->layers[i].name);
  }
  return 0;
}

static int spec_from_pb(const ckpt_file *f, size_t at, nn_model_spec *sp, const Ferry__ModelSpec *ms) {
  memset(sp, 0, sizeof *sp);
  CORRUPT_IF(!ms, at, "header: the model spec is missing");
  CORRUPT_IF(ms->in_c < 1 || ms->in_h < 1 || ms->in_w < 1 || ms->in_c > (1 << 24) ||
                 ms->in_h > (1 << 24) || ms->in_w > (1 << 24),
             at, "model spec: input shape %dx%dx%d is out of range", ms->in_c, ms->in_h, ms->in_w);
  sp->in = (nn_shape){ms->in_c, ms->in_h, ms->in_w};
  sp->in_spatial = ms->in_spatial;
  sp->init = -1;
  for (int i = 0; i < NN_INIT_COUNT; i++)
    if (ms->init && !strcmp(ms->init, nn_init_names[i])) sp->init = i;
  CORRUPT_IF(sp->init < 0, at, "model spec: unknown init scheme '%.40s'", ms->init ? ms->init : "");
  CHECK_CALL(stack_from_pb(f, at, &sp->trunk, ms->trunk, "trunk"));
  CORRUPT_IF(ms->n_heads < 1 || ms->n_heads > NN_MAX_HEADS, at,
             "model spec: %zu heads, expected 1 to %d", ms->n_heads, NN_MAX_HEADS);
  sp->nheads = (int)ms->n_heads;
  for (int h = 0; h < sp->nheads; h++) {
    CHECK_CALL(stack_from_pb(f, at, &sp->heads[h], ms->heads[h], "head"));
    CORRUPT_IF(!sp->heads[h].name[0] || sp->heads[h].nlayers < 1, at,
               "model spec: head %d has no name or no layers", h);
    for (int j = 0; j < h; j++)
      CORRUPT_IF(!strcmp(sp->heads[h].name, sp->heads[j].name), at,
                 "model spec: two heads are named '%s'", sp->heads[h].name);
  }
  return 0;
}

static int meta_from_pb(ckpt_file *f, size_t at, const Ferry__CheckpointHeader *h) {
  ckpt_meta *m = &f->meta;
  CORRUPT_IF(h->step < 0 || h->epoch < 0 || h->batch < 0, at,
             "header: negative step %lld, epoch %lld or batch %lld", (long long)h->step,
             (long long)h->epoch, (long long)h->batch);
  m->step = h->step;
  m->epoch = h->epoch;
  m->batch = h->batch;
  m->seed = h->seed;
  m->experiment_hash = h->experiment_hash;
  f->experiment = strdup(h->experiment ? h->experiment : "");
  CHECK_ALLOC(f->experiment, strlen(h->experiment ? h->experiment : ""));
  m->experiment = f->experiment;
  const Ferry__OptimizerState *o = h->optimizer;
  if (o && o->kind && o->kind[0]) {
    int kind = -1;
    for (int i = 0; i < NN_OPT_COUNT; i++)
      if (!strcmp(o->kind, nn_opt_names[i])) kind = i;
    CORRUPT_IF(kind < 0, at, "header: unknown optimizer '%.40s'", o->kind);
    CORRUPT_IF(o->t < 0, at, "header: negative optimizer step count %lld", (long long)o->t);
    m->has_optim = 1;
    m->opt = (nn_opt_cfg){.kind = (nn_opt_kind)kind, .lr = o->lr, .momentum = o->momentum,
                          .nesterov = o->nesterov, .weight_decay = o->weight_decay,
                          .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps};
    m->opt_t = o->t;
  }
  const Ferry__Provenance *p = h->provenance;
  if (p) {
    CORRUPT_IF(p->n_datasets > CKPT_MAX_DATASETS, at, "header: %zu datasets, at most %d allowed",
               p->n_datasets, CKPT_MAX_DATASETS);
    m->ndatasets = (int)p->n_datasets;
    for (int i = 0; i < m->ndatasets; i++) {
      CHECK_CALL(copy_str(f, at, m->datasets[i].name, sizeof m->datasets[i].name,
                          p->datasets[i]->name, "a dataset name"));
      m->datasets[i].digest = p->datasets[i]->digest;
    }
    CHECK_CALL(copy_str(f, at, m->ferry_version, sizeof m->ferry_version, p->ferry_version,
                        "the ferry version"));
    CHECK_CALL(copy_str(f, at, m->saved_utc, sizeof m->saved_utc, p->saved_utc, "the save time"));
    CORRUPT_IF(p->world_size < 0, at, "header: negative world size %d", p->world_size);
    m->world_size = p->world_size;
  }
  CORRUPT_IF(h->n_task_log_var > CKPT_MAX_TASKS, at, "header: %zu task weights, at most %d allowed",
             h->n_task_log_var, CKPT_MAX_TASKS);
  m->ntask_log_var = (int)h->n_task_log_var;
  for (int i = 0; i < m->ntask_log_var; i++) {
    CORRUPT_IF(!isfinite(h->task_log_var[i]), at, "header: task weight %d is not finite", i);
    m->task_log_var[i] = h->task_log_var[i];
  }
  return 0;
}

/* The index must list exactly the tensors the spec implies, in order. The
 * derived list becomes f->tensors (with nchunks from the file). */
static int index_from_pb(ckpt_file *f, size_t at, const Ferry__CheckpointHeader *h) {
  ckpt_tlist want;
  int rc = ckpt_spec_tensors(&f->spec, f->meta.has_optim, f->meta.has_optim && f->meta.opt.kind == NN_OPT_ADAMW,
                             &want);
  if (rc) {
    char why[512];
    snprintf(why, sizeof why, "%s", ferry_err_msg());
    ferry_err_clear();
    CORRUPT(at, "the model spec in the header does not build: %s", why);
  }
  f->tensors = want;
  CORRUPT_IF(h->n_tensors != want.n, at,
             "header: the tensor index lists %zu tensors, the model spec has %zu", h->n_tensors,
             want.n);
  for (size_t i = 0; i < want.n; i++) {
    ckpt_tensor *t = &want.t[i];
    const Ferry__TensorInfo *ti = h->tensors[i];
    CORRUPT_IF(!ti->name || strcmp(ti->name, t->name), at,
               "header: tensor %zu is named '%.80s', the model spec implies '%s'", i,
               ti->name ? ti->name : "", t->name);
    CORRUPT_IF(ti->dtype != FERRY__DTYPE__DTYPE_FLOAT32, at,
               "header: tensor '%s' has dtype %d, only float32 (1) is supported", t->name,
               (int)ti->dtype);
    int same = ti->n_dims == (size_t)t->ndims;
    for (int d = 0; same && d < t->ndims; d++) same = ti->dims[d] == t->dims[d];
    CORRUPT_IF(!same || ti->numel != t->numel, at,
               "header: tensor '%s' is declared with %zu dims and %llu elements, the model spec "
               "implies %s (%llu elements)",
               t->name, ti->n_dims, (unsigned long long)ti->numel,
               ckpt_dims_str((char[96]){0}, 96, t), (unsigned long long)t->numel);
    CORRUPT_IF(t->numel == 0 ? ti->nchunks != 0 : ti->nchunks < 1 || ti->nchunks > t->numel, at,
               "header: tensor '%s' (%llu elements) declares %llu chunks", t->name,
               (unsigned long long)t->numel, (unsigned long long)ti->nchunks);
    t->nchunks = ti->nchunks;
  }
  return 0;
}

/* What the index declares must fit in the bytes after the header. */
static int check_declared_size(const ckpt_file *f, size_t pos) {
  const uint64_t per_chunk = CKPT_REC_HEAD + CKPT_CHUNK_HEAD + CKPT_REC_TAIL;
  uint64_t need = CKPT_REC_HEAD + CKPT_END_PAYLOAD + CKPT_REC_TAIL, have = f->len - pos;
  for (size_t i = 0; i < f->tensors.n && need <= have; i++) {
    const ckpt_tensor *t = &f->tensors.t[i];
    /* numel and nchunks are each <= have here or the sum already exceeds it */
    if (t->numel > have || t->nchunks > have) need = have + 1;
    else need += t->numel * sizeof(float) + t->nchunks * per_chunk;
  }
  CORRUPT_IF(need > have, pos,
             "the tensor index declares more data than the %llu bytes that follow the header "
             "(truncated file or corrupt index)",
             (unsigned long long)have);
  return 0;
}

static int parse_header(ckpt_file *f, size_t *pos, uint64_t *nrec) {
  record r;
  CHECK_CALL(next_record(f, pos, (*nrec)++, &r));
  CORRUPT_IF(r.kind != CKPT_REC_HEADER, r.pos, "the first record is a %s record, expected the header",
             kind_name(r.kind));
  CORRUPT_IF(r.plen > CKPT_MAX_HEADER_BYTES, r.pos, "header of %llu bytes exceeds the %llu-byte limit",
             (unsigned long long)r.plen, (unsigned long long)CKPT_MAX_HEADER_BYTES);
  Ferry__CheckpointHeader *h = ferry__checkpoint_header__unpack(NULL, (size_t)r.plen, r.payload);
  CORRUPT_IF(!h, r.pos, "the header record does not decode as a CheckpointHeader message");
  int rc = 0;
  if (h->format_version != CKPT_FORMAT_VERSION)
    rc = corrupt_at(f, __LINE__, r.pos, "header says format version %u, the file header says %u",
                    h->format_version, CKPT_FORMAT_VERSION);
  if (!rc) rc = spec_from_pb(f, r.pos, &f->spec, h->model);
  if (!rc) rc = meta_from_pb(f, r.pos, h);
  if (!rc) rc = index_from_pb(f, r.pos, h);
  ferry__checkpoint_header__free_unpacked(h, NULL);
  CHECK_CALL(rc);
  return check_declared_size(f, *pos);
}

/* Chunk records, tensor by tensor, each covering the next elements. */
static int parse_chunks(ckpt_file *f, size_t *pos, uint64_t *nrec) {
  for (size_t i = 0; i < f->tensors.n; i++) {
    ckpt_tensor *t = &f->tensors.t[i];
    t->chunk_pos = *pos;
    uint64_t covered = 0;
    for (uint64_t c = 0; c < t->nchunks; c++) {
      record r;
      CHECK_CALL(next_record(f, pos, (*nrec)++, &r));
      CORRUPT_IF(r.kind != CKPT_REC_CHUNK, r.pos,
                 "expected chunk %llu of %llu of tensor '%s', found a %s record",
                 (unsigned long long)c + 1, (unsigned long long)t->nchunks, t->name,
                 kind_name(r.kind));
      CORRUPT_IF(r.plen < CKPT_CHUNK_HEAD + sizeof(float) || (r.plen - CKPT_CHUNK_HEAD) % sizeof(float),
                 r.pos, "chunk of tensor '%s' has a payload of %llu bytes (not 12 + 4n, n >= 1)",
                 t->name, (unsigned long long)r.plen);
      uint32_t ti = ckpt_get_u32(r.payload);
      uint64_t off = ckpt_get_u64(r.payload + 4), n = (r.plen - CKPT_CHUNK_HEAD) / sizeof(float);
      CORRUPT_IF(ti != i || off != covered, r.pos,
                 "chunk for tensor %u at element %llu, expected tensor %zu ('%s') at element %llu", ti,
                 (unsigned long long)off, i, t->name, (unsigned long long)covered);
      CORRUPT_IF(n > t->numel - covered, r.pos,
                 "chunk of tensor '%s' holds %llu elements past element %llu of %llu", t->name,
                 (unsigned long long)n, (unsigned long long)covered, (unsigned long long)t->numel);
      covered += n;
    }
    CORRUPT_IF(covered != t->numel, *pos, "tensor '%s': %llu chunks hold %llu of its %llu elements",
               t->name, (unsigned long long)t->nchunks, (unsigned long long)covered,
               (unsigned long long)t->numel);
  }
  return 0;
}

static int parse_end(ckpt_file *f, size_t *pos, uint64_t *nrec) {
  record r;
  CHECK_CALL(next_record(f, pos, (*nrec)++, &r));
  CORRUPT_IF(r.kind != CKPT_REC_END, r.pos, "expected the END record, found a %s record",
             kind_name(r.kind));
  CORRUPT_IF(r.plen != CKPT_END_PAYLOAD, r.pos, "END record payload is %llu bytes, expected %u",
             (unsigned long long)r.plen, CKPT_END_PAYLOAD);
  uint64_t recs = ckpt_get_u64(r.payload), bytes = ckpt_get_u64(r.payload + 8);
  CORRUPT_IF(recs != *nrec || bytes != f->len, r.pos,
             "END record says %llu records and %llu bytes, the file has %llu and %zu",
             (unsigned long long)recs, (unsigned long long)bytes, (unsigned long long)*nrec, f->len);
  CORRUPT_IF(*pos != f->len, *pos, "%zu bytes follow the END record", f->len - *pos);
  return 0;
}

static int parse(ckpt_file *f) {
  CORRUPT_IF(f->len < CKPT_FILE_HEAD, 0, "the file has %zu bytes, fewer than the %u-byte file header",
             f->len, CKPT_FILE_HEAD);
  CORRUPT_IF(memcmp(f->buf, CKPT_MAGIC, 8) != 0, 0,
             "not a ferry checkpoint (the file does not start with \"" CKPT_MAGIC "\")");
  uint32_t version = ckpt_get_u32(f->buf + 8);
  CORRUPT_IF(version != CKPT_FORMAT_VERSION, 8,
             "format version %u is not supported (this ferry %s reads version %u)", version,
             FERRY_VERSION, CKPT_FORMAT_VERSION);
  size_t pos = CKPT_FILE_HEAD;
  uint64_t nrec = 0;
  CHECK_CALL(parse_header(f, &pos, &nrec));
  CHECK_CALL(parse_chunks(f, &pos, &nrec));
  CHECK_CALL(parse_end(f, &pos, &nrec));
  CHECK_CALL(ckpt_sort_by_name(f));
  for (size_t i = 1; i < f->tensors.n; i++)
    CORRUPT_IF(!strcmp(f->by_name[i - 1]->name, f->by_name[i]->name), CKPT_FILE_HEAD,
               "two tensors are named '%s'", f->by_name[i]->name);
  return 0;
}

int ckpt_parse_owned(ckpt_file **out, unsigned char *buf, size_t len, int mapped, const char *name) {
  *out = NULL;
  ckpt_file *f = calloc(1, sizeof *f);
  char *nm = strdup(name ? name : "(memory)");
  if (!f || !nm) {
    free(f);
    free(nm);
    ckpt_buf_release(buf, len, mapped);
    FERRY_FAIL(FERRY_ERUNTIME, "out of memory opening checkpoint %s", name ? name : "");
  }
  f->name = nm;
  f->buf = buf;
  f->len = len;
  f->mapped = mapped;
  int rc = parse(f);
  if (rc) {
    ckpt_close(&f);
    CHECK_CALL(rc);
  }
  *out = f;
  return 0;
}

void ckpt_buf_release(unsigned char *buf, size_t len, int mapped) {
  if (mapped)
    munmap(buf, len);
  else
    free(buf);
}

static int read_all(int fd, const char *path, unsigned char *b, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t k = read(fd, b + got, n - got > ((size_t)1 << 30) ? (size_t)1 << 30 : n - got);
    if (k < 0 && errno == EINTR) continue;
    CHECK_RT(k >= 0, "checkpoint %s: read failed at byte %zu: %s", path, got, strerror(errno));
    CHECK_RT(k > 0, "checkpoint %s: the file shrank while being read (%zu of %zu bytes)", path, got, n);
    got += (size_t)k;
  }
  return 0;
}

/* A checkpoint file is never modified in place (writers rename a new file
 * over it), so mapping it is safe and saves copying every byte once. The
 * mapping is private and writable only so that MPI may register it as a
 * broadcast source; nothing writes to it. */
static int read_fd(int fd, const char *path, unsigned char **buf, size_t *len, int *mapped) {
  struct stat st;
  CHECK_RT(fstat(fd, &st) == 0, "checkpoint %s: cannot stat: %s", path, strerror(errno));
  CHECK_RT(S_ISREG(st.st_mode), "checkpoint %s: not a regular file", path);
  size_t n = (size_t)st.st_size;
  if (n > 0) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      posix_madvise(p, n, POSIX_MADV_SEQUENTIAL);
      *buf = p;
      *len = n;
      *mapped = 1;
      return 0;
    }
  }
  unsigned char *b = malloc(n ? n : 1);
  CHECK_RT(b != NULL, "checkpoint %s: out of memory reading %zu bytes", path, n);
  int rc = read_all(fd, path, b, n);
  if (rc) {
    free(b);
    CHECK_CALL(rc);
  }
  *buf = b;
  *len = n;
  return 0;
}

int ckpt_read_file(const char *path, unsigned char **buf, size_t *len, int *mapped) {
  *buf = NULL;
  *len = 0;
  *mapped = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  CHECK_RT(fd >= 0, "checkpoint %s: cannot open: %s", path, strerror(errno));
  int rc = read_fd(fd, path, buf, len, mapped);
  close(fd);
  CHECK_CALL(rc);
  return 0;
}

int ckpt_open(ckpt_file **out, const char *path) {
  *out = NULL;
  unsigned char *buf;
  size_t len;
  int mapped;
  CHECK_CALL(ckpt_read_file(path, &buf, &len, &mapped));
  CHECK_CALL(ckpt_parse_owned(out, buf, len, mapped, path));
  return 0;
}

int ckpt_open_mem(ckpt_file **out, const void *bytes, size_t n, const char *name) {
  *out = NULL;
  unsigned char *buf = malloc(n ? n : 1);
  CHECK_ALLOC(buf, n);
  if (n) memcpy(buf, bytes, n);
  CHECK_CALL(ckpt_parse_owned(out, buf, n, 0, name));
  return 0;
}
