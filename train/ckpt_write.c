/* ckpt_write: serialises a model (+ optimizer) into the record format of
 * docs/checkpoint-format.md and publishes it atomically (temp file, fsync,
 * rename, fsync of the directory). Tensor bytes go from the slabs straight
 * to stdio (no staging copy); each record's CRC-32 is computed on the way. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "ferry.pb-c.h"
#include "nn/err.h"
#include "train/ckpt_impl.h"

/* The header message and the storage its pointers refer to. */
typedef struct {
  Ferry__CheckpointHeader h;
  Ferry__ModelSpec spec;
  Ferry__StackSpec trunk, heads[NN_MAX_HEADS], *head_ptrs[NN_MAX_HEADS];
  Ferry__LayerSpec *layers;      /* all layers of all stacks */
  Ferry__LayerSpec **layer_ptrs;
  Ferry__OptimizerState opt;
  Ferry__Provenance prov;
  Ferry__DatasetDigest ds[CKPT_MAX_DATASETS], *ds_ptrs[CKPT_MAX_DATASETS];
  Ferry__TensorInfo *ti, **ti_ptrs;
  uint64_t *dims;
  char version[32], utc[32];
} header_msg;

static void header_free(header_msg *hm) {
  free(hm->layers);
  free(hm->layer_ptrs);
  free(hm->ti);
  free(hm->ti_ptrs);
  free(hm->dims);
}

static void stack_to_pb(Ferry__StackSpec *ps, const nn_stack_spec *ss, Ferry__LayerSpec *ls,
                        Ferry__LayerSpec **lp) {
  ferry__stack_spec__init(ps);
  ps->name = (char *)ss->name;
  ps->n_layers = (size_t)ss->nlayers;
  ps->layers = lp;
  for (int i = 0; i < ss->nlayers; i++) {
    const nn_layer_spec *l = &ss->layers[i];
    ferry__layer_spec__init(&ls[i]);
    ls[i].op = (char *)nn_op_names[l->op];
    ls[i].name = (char *)l->name;
    ls[i].out = l->out;
    ls[i].k = l->k;
    ls[i].stride = l->stride;
    ls[i].pad = l->pad;
    ls[i].groups = l->groups;
    ls[i].no_bias = l->no_bias != 0;
    ls[i].p = l->p;
    ls[i].lambda = l->lambda;
    lp[i] = &ls[i];
  }
}

static int spec_to_pb(header_msg *hm, const nn_model_spec *sp) {
  size_t total = (size_t)sp->trunk.nlayers;
  for (int h = 0; h < sp->nheads; h++) total += (size_t)sp->heads[h].nlayers;
  hm->layers = calloc(total ? total : 1, sizeof *hm->layers);
  hm->layer_ptrs = calloc(total ? total : 1, sizeof *hm->layer_ptrs);
  CHECK_ALLOC(hm->layers && hm->layer_ptrs ? hm->layers : NULL, total * sizeof *hm->layers);
  Ferry__ModelSpec *ms = &hm->spec;
  ferry__model_spec__init(ms);
  ms->in_c = sp->in.c;
  ms->in_h = sp->in.h;
  ms->in_w = sp->in.w;
  ms->in_spatial = sp->in_spatial != 0;
  ms->init = (char *)nn_init_names[sp->init];
  size_t k = 0;
  stack_to_pb(&hm->trunk, &sp->trunk, hm->layers, hm->layer_ptrs);
  k += (size_t)sp->trunk.nlayers;
  ms->trunk = &hm->trunk;
  for (int h = 0; h < sp->nheads; h++) {
    stack_to_pb(&hm->heads[h], &sp->heads[h], hm->layers + k, hm->layer_ptrs + k);
    k += (size_t)sp->heads[h].nlayers;
    hm->head_ptrs[h] = &hm->heads[h];
  }
  ms->n_heads = (size_t)sp->nheads;
  ms->heads = hm->head_ptrs;
  return 0;
}

static void meta_to_pb(header_msg *hm, const ckpt_meta *meta, const nn_optim *o) {
  Ferry__CheckpointHeader *h = &hm->h;
  h->step = meta->step;
  h->epoch = meta->epoch;
  h->batch = meta->batch;
  h->seed = meta->seed;
  h->experiment = (char *)(meta->experiment ? meta->experiment : "");
  h->experiment_hash = meta->experiment_hash;
  ferry__optimizer_state__init(&hm->opt);
  if (o) {
    hm->opt.kind = (char *)nn_opt_names[o->cfg.kind];
    hm->opt.lr = o->cfg.lr;
    hm->opt.momentum = o->cfg.momentum;
    hm->opt.nesterov = o->cfg.nesterov != 0;
    hm->opt.weight_decay = o->cfg.weight_decay;
    hm->opt.beta1 = o->cfg.beta1;
    hm->opt.beta2 = o->cfg.beta2;
    hm->opt.eps = o->cfg.eps;
    hm->opt.t = o->t;
  }
  h->optimizer = &hm->opt;
  ferry__provenance__init(&hm->prov);
  int nd = meta->ndatasets;
  for (int i = 0; i < nd; i++) {
    ferry__dataset_digest__init(&hm->ds[i]);
    hm->ds[i].name = (char *)meta->datasets[i].name;
    hm->ds[i].digest = meta->datasets[i].digest;
    hm->ds_ptrs[i] = &hm->ds[i];
  }
  hm->prov.n_datasets = (size_t)nd;
  hm->prov.datasets = hm->ds_ptrs;
  snprintf(hm->version, sizeof hm->version, "%s", FERRY_VERSION);
  time_t now = time(NULL);
  struct tm tmv;
  if (gmtime_r(&now, &tmv))
    strftime(hm->utc, sizeof hm->utc, "%Y-%m-%dT%H:%M:%SZ", &tmv);
  hm->prov.ferry_version = hm->version;
  hm->prov.saved_utc = hm->utc;
  hm->prov.world_size = meta->world_size;
  h->provenance = &hm->prov;
  h->n_task_log_var = (size_t)meta->ntask_log_var;
  h->task_log_var = (double *)meta->task_log_var;
}

static int index_to_pb(header_msg *hm, const ckpt_tlist *tl, uint64_t chunk_elems) {
  size_t n = tl->n;
  hm->ti = calloc(n ? n : 1, sizeof *hm->ti);
  hm->ti_ptrs = calloc(n ? n : 1, sizeof *hm->ti_ptrs);
  hm->dims = calloc(n ? n * CKPT_MAX_DIMS : 1, sizeof *hm->dims);
  CHECK_ALLOC(hm->ti && hm->ti_ptrs && hm->dims ? hm->ti : NULL, n * sizeof *hm->ti);
  for (size_t i = 0; i < n; i++) {
    const ckpt_tensor *t = &tl->t[i];
    Ferry__TensorInfo *ti = &hm->ti[i];
    ferry__tensor_info__init(ti);
    ti->name = (char *)t->name;
    memcpy(hm->dims + i * CKPT_MAX_DIMS, t->dims, (size_t)t->ndims * sizeof *t->dims);
    ti->dims = hm->dims + i * CKPT_MAX_DIMS;
    ti->n_dims = (size_t)t->ndims;
    ti->dtype = FERRY__DTYPE__DTYPE_FLOAT32;
    ti->numel = t->numel;
    ti->nchunks = (t->numel + chunk_elems - 1) / chunk_elems;
    hm->ti_ptrs[i] = ti;
  }
  hm->h.n_tensors = n;
  hm->h.tensors = hm->ti_ptrs;
  hm->h.chunk_elems = chunk_elems;
  return 0;
}

/* Buffered output that remembers the first failure's errno. */
typedef struct {
  FILE *fp;
  int err;
  uint64_t bytes, records;
} sink;

static void put(sink *s, const void *p, size_t n) {
  if (s->err || n == 0) return;
  errno = 0;
  if (fwrite(p, 1, n, s->fp) != n) s->err = errno ? errno : EIO;
  s->bytes += n;
}

/* One record: [u32 kind][u64 len][prefix][body][u32 crc of all before it].
 * The body goes out in cache-sized pieces, each checksummed just before it
 * is written, so every byte is read from memory once, not twice. */
#define IO_PIECE ((size_t)1 << 20)

static void put_record(sink *s, uint32_t kind, const void *prefix, size_t np, const void *body,
                       size_t nb) {
  unsigned char head[CKPT_REC_HEAD], tail[CKPT_REC_TAIL];
  ckpt_put_u32(head, kind);
  ckpt_put_u64(head + 4, (uint64_t)(np + nb));
  uLong crc = crc32_z(0L, head, sizeof head);
  if (np) crc = crc32_z(crc, prefix, np);
  put(s, head, sizeof head);
  put(s, prefix, np);
  const unsigned char *b = body;
  for (size_t off = 0; off < nb; off += IO_PIECE) {
    size_t k = nb - off < IO_PIECE ? nb - off : IO_PIECE;
    crc = crc32_z(crc, b + off, k);
    put(s, b + off, k);
  }
  ckpt_put_u32(tail, (uint32_t)crc);
  put(s, tail, sizeof tail);
  s->records++;
}

static const float *tensor_src(const ckpt_tensor *t, const nn_model *m, const nn_optim *o) {
  const float *base = t->role == CKPT_ROLE_PARAM ? m->params : t->role == CKPT_ROLE_OPT_M ? o->m : o->v;
  return base + t->slab_off;
}

static void put_tensors(sink *s, const ckpt_tlist *tl, const nn_model *m, const nn_optim *o,
                        uint64_t chunk_elems) {
  for (size_t i = 0; i < tl->n && !s->err; i++) {
    const ckpt_tensor *t = &tl->t[i];
    const float *src = tensor_src(t, m, o);
    for (uint64_t off = 0; off < t->numel && !s->err; off += chunk_elems) {
      uint64_t n = t->numel - off < chunk_elems ? t->numel - off : chunk_elems;
      unsigned char pre[CKPT_CHUNK_HEAD];
      ckpt_put_u32(pre, (uint32_t)i);
      ckpt_put_u64(pre + 4, off);
      put_record(s, CKPT_REC_CHUNK, pre, sizeof pre, src + off, (size_t)n * sizeof(float));
    }
  }
}

static void put_end(sink *s) {
  unsigned char p[CKPT_END_PAYLOAD];
  ckpt_put_u64(p, s->records + 1);
  ckpt_put_u64(p + 8, s->bytes + CKPT_REC_HEAD + CKPT_END_PAYLOAD + CKPT_REC_TAIL);
  put_record(s, CKPT_REC_END, p, sizeof p, NULL, 0);
}

/* Writes the whole file to fp; returns 0 or an errno value. */
static int write_all(FILE *fp, const void *hdr, size_t hdr_len, const ckpt_tlist *tl,
                     const nn_model *m, const nn_optim *o, uint64_t chunk_elems) {
  sink s = {.fp = fp};
  unsigned char fh[CKPT_FILE_HEAD];
  memcpy(fh, CKPT_MAGIC, 8);
  ckpt_put_u32(fh + 8, CKPT_FORMAT_VERSION);
  put(&s, fh, sizeof fh);
  put_record(&s, CKPT_REC_HEADER, NULL, 0, hdr, hdr_len);
  put_tensors(&s, tl, m, o, chunk_elems);
  put_end(&s);
  errno = 0;
  if (!s.err && fflush(fp) != 0) s.err = errno ? errno : EIO;
  if (!s.err && fsync(fileno(fp)) != 0) s.err = errno;
  return s.err;
}

/* fsync of the directory holding path, so the rename itself is durable.
 * Some file systems cannot fsync a directory (EINVAL): nothing to do there. */
static int sync_dir(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else if (slash == path)
    snprintf(dir, sizeof dir, "/");
  else
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = fsync(fd) != 0 && errno != EINVAL ? errno : 0;
  close(fd);
  return err;
}

static int publish(const char *path, const char *tmp, const void *hdr, size_t hdr_len,
                   const ckpt_tlist *tl, const nn_model *m, const nn_optim *o,
                   uint64_t chunk_elems) {
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    FERRY_FAIL(FERRY_ERUNTIME, "checkpoint %s: cannot create %s: %s", path, tmp, strerror(errno));
  FILE *fp = fdopen(fd, "wb");
  if (!fp) {
    int e = errno;
    close(fd);
    unlink(tmp);
    FERRY_FAIL(FERRY_ERUNTIME, "checkpoint %s: cannot open %s: %s", path, tmp, strerror(e));
  }
  int err = write_all(fp, hdr, hdr_len, tl, m, o, chunk_elems);
  errno = 0;
  if (fclose(fp) != 0 && !err) err = errno ? errno : EIO;
  if (!err && rename(tmp, path) != 0) err = errno;
  if (err) {
    unlink(tmp);
    FERRY_FAIL(FERRY_ERUNTIME, "checkpoint %s: writing failed (%s); the previous file, if any, is unchanged",
               path, strerror(err));
  }
  err = sync_dir(path);
  CHECK_RT(err == 0, "checkpoint %s: written, but syncing its directory failed: %s", path,
           strerror(err));
  return 0;
}

int ckpt_write(const char *path, const nn_model *m, const nn_optim *o, const ckpt_meta *meta,
               size_t chunk_bytes) {
  static const ckpt_meta zero_meta;
  if (!meta) meta = &zero_meta;
  if (o) {
    CHECK_USER(o->n == m->nparams && o->m, "checkpoint %s: optimizer state holds %zu floats, the model has %zu parameters",
               path, o->n, m->nparams);
    CHECK_USER(o->cfg.kind != NN_OPT_ADAMW || o->v, "checkpoint %s: adamw optimizer without second-moment state", path);
  }
  CHECK_USER(meta->ntask_log_var >= 0 && meta->ntask_log_var <= CKPT_MAX_TASKS,
             "checkpoint %s: %d task weights, expected 0 to %d", path, meta->ntask_log_var,
             CKPT_MAX_TASKS);
  CHECK_USER(meta->ndatasets >= 0 && meta->ndatasets <= CKPT_MAX_DATASETS,
             "checkpoint %s: %d datasets in the provenance, expected 0 to %d", path, meta->ndatasets,
             CKPT_MAX_DATASETS);
  for (int i = 0; i < meta->ndatasets; i++)
    CHECK_USER(memchr(meta->datasets[i].name, 0, sizeof meta->datasets[i].name) != NULL,
               "checkpoint %s: dataset name %d is not terminated within %d bytes", path, i,
               CKPT_DATASET_NAME_MAX);
  CHECK_USER(m->spec.init >= 0 && m->spec.init < NN_INIT_COUNT,
             "checkpoint %s: model init scheme %d is unknown", path, m->spec.init);
  uint64_t chunk_elems = (chunk_bytes ? chunk_bytes : CKPT_DEFAULT_CHUNK_BYTES) / sizeof(float);
  if (chunk_elems == 0) chunk_elems = 1;
  char tmp[4096];
  int w = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  CHECK_USER(w > 0 && (size_t)w < sizeof tmp, "checkpoint path '%s' is too long", path);

  ckpt_tlist tl;
  CHECK_CALL(ckpt_model_tensors(m, o != NULL, o && o->cfg.kind == NN_OPT_ADAMW, &tl));
  header_msg hm;
  memset(&hm, 0, sizeof hm);
  ferry__checkpoint_header__init(&hm.h);
  hm.h.format_version = CKPT_FORMAT_VERSION;
  int rc = spec_to_pb(&hm, &m->spec);
  if (!rc) rc = index_to_pb(&hm, &tl, chunk_elems);
  unsigned char *hdr = NULL;
  size_t hdr_len = 0;
  if (!rc) {
    hm.h.model = &hm.spec;
    meta_to_pb(&hm, meta, o);
    hdr_len = ferry__checkpoint_header__get_packed_size(&hm.h);
    if (hdr_len > CKPT_MAX_HEADER_BYTES)
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "checkpoint %s: the header (experiment text and spec) is %zu bytes, more than "
                         "the %llu the format allows", path, hdr_len,
                         (unsigned long long)CKPT_MAX_HEADER_BYTES);
  }
  if (!rc) {
    hdr = malloc(hdr_len ? hdr_len : 1);
    if (!hdr)
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "out of memory packing a %zu-byte checkpoint header", hdr_len);
    else
      ferry__checkpoint_header__pack(&hm.h, hdr);
  }
  if (!rc) rc = publish(path, tmp, hdr, hdr_len, &tl, m, o, chunk_elems);
  free(hdr);
  header_free(&hm);
  ckpt_tlist_free(&tl);
  CHECK_CALL(rc);
  return 0;
}
