/* ckpt_print: what `ferry ckpt inspect` shows, as text or as one JSON
 * document (schema in docs/checkpoint-format.md). 64-bit hashes and digests
 * are printed as hex strings so JSON readers with double-only numbers keep
 * every bit. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"
#include "train/ckpt_impl.h"

/* Length of the valid UTF-8 sequence at p (1-4), or 0 if it is not one. */
static int utf8_len(const unsigned char *p) {
  int n = p[0] >= 0xf0 && p[0] <= 0xf4 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 && p[0] < 0xe0 ? 2 : 0;
  if (p[0] >= 0xf5) n = 0;
  for (int i = 1; i < n; i++)
    if ((p[i] & 0xc0) != 0x80) return 0;
  return n;
}

/* A JSON string; bytes that are not UTF-8 (the experiment text is stored
 * as given) become U+FFFD so the document stays valid. */
static void json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\n': fputs("\\n", out); break;
    case '\r': fputs("\\r", out); break;
    case '\t': fputs("\\t", out); break;
    default:
      if (*p < 0x20) {
        fprintf(out, "\\u%04x", *p);
      } else if (*p < 0x80) {
        fputc(*p, out);
      } else {
        int n = utf8_len(p);
        if (n == 0) {
          fputs("\\ufffd", out);
        } else {
          fwrite(p, 1, (size_t)n, out);
          p += n - 1;
        }
      }
    }
  }
  fputc('"', out);
}

static void json_num(FILE *out, double v) {
  if (isfinite(v)) fprintf(out, "%.9g", v);
  else fputs("null", out);
}

/* A float hyper-parameter in the fewest digits that read back as the same
 * float (0.05, not 0.0500000007). */
static void json_f32(FILE *out, float v) {
  if (!isfinite(v)) {
    fputs("null", out);
    return;
  }
  char buf[32];
  for (int prec = 6; prec <= 9; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
    if (strtof(buf, NULL) == v) break;
  }
  fputs(buf, out);
}

static void json_layer(FILE *out, const nn_layer_spec *l) {
  fputs("{\"name\": ", out);
  json_str(out, l->name);
  fprintf(out, ", \"op\": \"%s\", \"out\": %d, \"k\": %d, \"stride\": %d, \"pad\": %d, "
               "\"groups\": %d, \"no_bias\": %s, \"p\": ",
          nn_op_names[l->op], l->out, l->k, l->stride, l->pad, l->groups,
          l->no_bias ? "true" : "false");
  json_f32(out, l->p);
  fputs(", \"lambda\": ", out);
  json_f32(out, l->lambda);
  fputc('}', out);
}

static void json_stack(FILE *out, const nn_stack_spec *s) {
  fputc('[', out);
  for (int i = 0; i < s->nlayers; i++) {
    fputs(i ? ", " : "", out);
    json_layer(out, &s->layers[i]);
  }
  fputc(']', out);
}

static void json_opt(FILE *out, const ckpt_meta *m) {
  if (!m->has_optim) {
    fputs("null", out);
    return;
  }
  const nn_opt_cfg *o = &m->opt;
  fprintf(out, "{\"kind\": \"%s\", \"t\": %" PRId64 ", \"lr\": ", nn_opt_names[o->kind], m->opt_t);
  json_f32(out, o->lr);
  fputs(", \"momentum\": ", out);
  json_f32(out, o->momentum);
  fprintf(out, ", \"nesterov\": %s, \"weight_decay\": ", o->nesterov ? "true" : "false");
  json_f32(out, o->weight_decay);
  fputs(", \"beta1\": ", out);
  json_f32(out, o->beta1);
  fputs(", \"beta2\": ", out);
  json_f32(out, o->beta2);
  fputs(", \"eps\": ", out);
  json_f32(out, o->eps);
  fputc('}', out);
}

static void print_json(const ckpt_file *f, FILE *out) {
  const ckpt_meta *m = &f->meta;
  const nn_model_spec *s = &f->spec;
  fputs("{\"file\": ", out);
  json_str(out, f->name);
  fprintf(out, ",\n \"bytes\": %zu, \"format_version\": %u, \"step\": %" PRId64 ", \"epoch\": %" PRId64
               ", \"batch\": %" PRId64 ", \"seed\": %" PRIu64 ",\n \"experiment_hash\": \"%016" PRIx64
               "\", \"experiment\": ",
          f->len, CKPT_FORMAT_VERSION, m->step, m->epoch, m->batch, m->seed, m->experiment_hash);
  json_str(out, m->experiment);
  fputs(",\n \"optimizer\": ", out);
  json_opt(out, m);
  fputs(",\n \"provenance\": {\"ferry_version\": ", out);
  json_str(out, m->ferry_version);
  fputs(", \"saved_utc\": ", out);
  json_str(out, m->saved_utc);
  fprintf(out, ", \"world_size\": %d, \"datasets\": [", m->world_size);
  for (int i = 0; i < m->ndatasets; i++) {
    fputs(i ? ", {\"name\": " : "{\"name\": ", out);
    json_str(out, m->datasets[i].name);
    fprintf(out, ", \"digest\": \"%016" PRIx64 "\"}", m->datasets[i].digest);
  }
  fputs("]},\n \"task_log_var\": [", out);
  for (int i = 0; i < m->ntask_log_var; i++) fprintf(out, "%s%.17g", i ? ", " : "", m->task_log_var[i]);
  fprintf(out, "],\n \"model\": {\"input\": {\"c\": %d, \"h\": %d, \"w\": %d, \"spatial\": %s}, "
               "\"init\": \"%s\",\n  \"trunk\": ",
          s->in.c, s->in.h, s->in.w, s->in_spatial ? "true" : "false", nn_init_names[s->init]);
  json_stack(out, &s->trunk);
  fputs(",\n  \"heads\": [", out);
  for (int h = 0; h < s->nheads; h++) {
    fputs(h ? ", {\"name\": " : "{\"name\": ", out);
    json_str(out, s->heads[h].name);
    fputs(", \"layers\": ", out);
    json_stack(out, &s->heads[h]);
    fputc('}', out);
  }
  fputs("]},\n \"tensors\": [", out);
  for (size_t i = 0; i < f->tensors.n; i++) {
    const ckpt_tensor *t = &f->tensors.t[i];
    fputs(i ? ",\n  {\"name\": " : "\n  {\"name\": ", out);
    json_str(out, t->name);
    fputs(", \"shape\": [", out);
    for (int d = 0; d < t->ndims; d++) fprintf(out, "%s%" PRIu64, d ? ", " : "", t->dims[d]);
    fprintf(out, "], \"dtype\": \"float32\", \"numel\": %" PRIu64 ", \"chunks\": %" PRIu64 ", \"l2\": ",
            t->numel, t->nchunks);
    json_num(out, sqrt(ckpt_tensor_sumsq(f, i)));
    fputc('}', out);
  }
  fputs("]}\n", out);
}

static void text_layer(FILE *out, const nn_layer_spec *l) {
  fprintf(out, "    %-16s %s", l->name, nn_op_names[l->op]);
  if (l->out) fprintf(out, " out %d", l->out);
  if (l->k) fprintf(out, " k %d", l->k);
  if (l->stride) fprintf(out, " stride %d", l->stride);
  if (l->pad) fprintf(out, " pad %d", l->pad);
  if (l->groups) fprintf(out, " groups %d", l->groups);
  if (l->no_bias) fputs(" no_bias", out);
  if (l->p != 0.0f) fprintf(out, " p %g", (double)l->p);
  if (l->lambda != 0.0f) fprintf(out, " lambda %g", (double)l->lambda);
  fputc('\n', out);
}

static void print_text(const ckpt_file *f, FILE *out) {
  const ckpt_meta *m = &f->meta;
  const nn_model_spec *s = &f->spec;
  fprintf(out, "checkpoint %s: %zu bytes, format version %u, every record verified\n", f->name, f->len,
          CKPT_FORMAT_VERSION);
  fprintf(out, "step %" PRId64 ", next batch %" PRId64 " of epoch %" PRId64 ", seed %" PRIu64 "\n",
          m->step, m->batch, m->epoch, m->seed);
  if (m->has_optim)
    fprintf(out, "optimizer: %s lr %g momentum %g%s weight_decay %g beta1 %g beta2 %g eps %g, t %" PRId64 "\n",
            nn_opt_names[m->opt.kind], (double)m->opt.lr, (double)m->opt.momentum,
            m->opt.nesterov ? " nesterov" : "", (double)m->opt.weight_decay, (double)m->opt.beta1,
            (double)m->opt.beta2, (double)m->opt.eps, m->opt_t);
  else
    fputs("optimizer: no state saved\n", out);
  fprintf(out, "experiment: %zu bytes, hash %016" PRIx64 "\n", strlen(m->experiment), m->experiment_hash);
  fprintf(out, "saved by ferry %s at %s from %d rank%s\n", m->ferry_version[0] ? m->ferry_version : "?",
          m->saved_utc[0] ? m->saved_utc : "?", m->world_size, m->world_size == 1 ? "" : "s");
  for (int i = 0; i < m->ndatasets; i++)
    fprintf(out, "dataset %s digest %016" PRIx64 "\n", m->datasets[i].name, m->datasets[i].digest);
  if (m->ntask_log_var > 0) {
    fputs("task uncertainty log(sigma^2):", out);
    for (int i = 0; i < m->ntask_log_var; i++) fprintf(out, " %.6g", m->task_log_var[i]);
    fputc('\n', out);
  }
  fprintf(out, "model: input %dx%dx%d (%s), init %s\n  trunk:\n", s->in.c, s->in.h, s->in.w,
          s->in_spatial ? "spatial" : "flat", nn_init_names[s->init]);
  for (int i = 0; i < s->trunk.nlayers; i++) text_layer(out, &s->trunk.layers[i]);
  for (int h = 0; h < s->nheads; h++) {
    fprintf(out, "  head %s:\n", s->heads[h].name);
    for (int i = 0; i < s->heads[h].nlayers; i++) text_layer(out, &s->heads[h].layers[i]);
  }
  uint64_t total = 0;
  for (size_t i = 0; i < f->tensors.n; i++) total += f->tensors.t[i].numel;
  fprintf(out, "tensors: %zu, %" PRIu64 " floats\n", f->tensors.n, total);
  for (size_t i = 0; i < f->tensors.n; i++) {
    char d[96];
    fprintf(out, "  %-40s %-20s l2 %.6g\n", f->tensors.t[i].name, ckpt_dims_str(d, sizeof d, &f->tensors.t[i]),
            sqrt(ckpt_tensor_sumsq(f, i)));
  }
}

int ckpt_print(const ckpt_file *f, FILE *out, int json) {
  if (json)
    print_json(f, out);
  else
    print_text(f, out);
  CHECK_RT(!ferror(out), "writing the description of checkpoint %s failed", f->name);
  return 0;
}

/* One tensor's elements as a raw little-endian float32 file. */
static int export_tensor(const ckpt_file *f, size_t i, const char *path, float *buf) {
  ckpt_tensor_read(f, i, buf);
  FILE *out = fopen(path, "wb");
  CHECK_RT(out, "cannot write %s", path);
  size_t n = (size_t)f->tensors.t[i].numel;
  int bad = fwrite(buf, sizeof(float), n, out) != n;
  bad |= fclose(out) != 0;
  CHECK_RT(!bad, "cannot write %s", path);
  return 0;
}

int ckpt_export(const ckpt_file *f, const char *dir) {
  uint64_t most = 1;
  for (size_t i = 0; i < f->tensors.n; i++)
    if (f->tensors.t[i].numel > most) most = f->tensors.t[i].numel;
  float *buf = malloc((size_t)most * sizeof *buf);
  CHECK_ALLOC(buf, (size_t)most * sizeof *buf);
  char path[4096];
  int rc = 0;
  for (size_t i = 0; !rc && i < f->tensors.n; i++) {
    const char *name = f->tensors.t[i].name;
    /* Names come from the file: one that could leave dir is refused. */
    if (!name[0] || name[0] == '.' || strchr(name, '/')) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s: tensor %zu is named \"%s\", which cannot be a file name in %s",
                         f->name, i, name, dir);
      break;
    }
    if (snprintf(path, sizeof path, "%s/%s.f32", dir, name) >= (int)sizeof path) {
      rc = ferry_err_set(FERRY_EUSER, __FILE__, __LINE__, __func__,
                         "%s/%s.f32: path longer than %zu bytes", dir, name, sizeof path - 1);
      break;
    }
    rc = export_tensor(f, i, path, buf);
  }
  free(buf);
  CHECK_CALL(rc);
  CHECK_USER(snprintf(path, sizeof path, "%s/manifest.json", dir) < (int)sizeof path,
             "%s/manifest.json: path longer than %zu bytes", dir, sizeof path - 1);
  FILE *out = fopen(path, "w");
  CHECK_RT(out, "cannot write %s", path);
  fputs("{\"checkpoint\": ", out);
  json_str(out, f->name);
  fprintf(out, ", \"step\": %lld, \"dtype\": \"float32\", \"byte_order\": \"little\", \"tensors\": [",
          (long long)f->meta.step);
  for (size_t i = 0; i < f->tensors.n; i++) {
    const ckpt_tensor *t = &f->tensors.t[i];
    fputs(i ? ",\n  {\"name\": " : "\n  {\"name\": ", out);
    json_str(out, t->name);
    fputs(", \"shape\": [", out);
    for (int d = 0; d < t->ndims; d++) fprintf(out, "%s%llu", d ? ", " : "", (unsigned long long)t->dims[d]);
    fprintf(out, "], \"role\": \"%s\", \"file\": ",
            t->role == CKPT_ROLE_PARAM ? "param" : t->role == CKPT_ROLE_OPT_M ? "optim.m" : "optim.v");
    char file[CKPT_NAME_MAX + 8];
    snprintf(file, sizeof file, "%s.f32", t->name);
    json_str(out, file);
    fputs("}", out);
  }
  fputs("\n]}\n", out);
  int bad = ferror(out);
  bad |= fclose(out) != 0;
  CHECK_RT(!bad, "cannot write %s", path);
  return 0;
}
