/* Checkpoints: one self-describing file per save (docs/checkpoint-format.md).
 * A file is a magic + version, then CRC-32-checked records: a protobuf header
 * (model spec, step, data cursor, seed, optimizer, experiment, provenance,
 * tensor index), raw little-endian float32 tensor chunks, and an END record.
 * Writing is atomic (temp file, fsync, rename, fsync of the directory);
 * opening verifies every byte before any tensor is handed out. Loading a
 * checkpoint is pure data: it never runs code. */
#ifndef FERRY_TRAIN_CKPT_H
#define FERRY_TRAIN_CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dist/comm.h"
#include "nn/model.h"
#include "nn/optim.h"

#define CKPT_FORMAT_VERSION 1u
#define CKPT_MAGIC "FERRYCKP"
#define CKPT_DEFAULT_CHUNK_BYTES ((size_t)64 << 20)
#define CKPT_MAX_DATASETS 16
#define CKPT_DATASET_NAME_MAX 256
#define CKPT_MAX_TASKS 16

typedef struct {
  char name[CKPT_DATASET_NAME_MAX];
  uint64_t digest;
} ckpt_dataset;

/* Everything in a checkpoint besides the model spec and the tensors. */
typedef struct {
  int64_t step;             /* optimizer steps taken */
  int64_t epoch, batch;     /* data cursor: next is batch `batch` (0-based) of `epoch` */
  uint64_t seed;
  const char *experiment;   /* experiment text; may be NULL on write. On read it
                               points into the ckpt_file ("" when absent). */
  uint64_t experiment_hash;
  int ndatasets;
  ckpt_dataset datasets[CKPT_MAX_DATASETS];
  int world_size;           /* ranks of the job that saved */
  int ntask_log_var;        /* multi-task uncertainty weighting: learned */
  double task_log_var[CKPT_MAX_TASKS]; /* s_t = log sigma_t^2 per task (0 = none) */
  /* Filled by ckpt_write (caller's values ignored), read back by ckpt_open: */
  char ferry_version[32];   /* FERRY_VERSION of the writer */
  char saved_utc[32];       /* "YYYY-MM-DDTHH:MM:SSZ" */
  int has_optim;            /* optimizer state tensors present */
  nn_opt_cfg opt;           /* kind and hyper-parameters at save */
  int64_t opt_t;            /* optimizer steps (nn_optim.t) */
} ckpt_meta;

/* Writes model parameters (and optimizer state when o != NULL; o->n must be
 * m->nparams) with meta to path, atomically: path.tmp.<pid> is written,
 * flushed, fsynced, closed, renamed over path, and the directory is fsynced.
 * On any failure (ENOSPC, EFBIG, EACCES, ...) the temp file is removed, an
 * existing file at path is untouched, and FERRY_ERUNTIME is returned with a
 * message naming the path and the errno text. chunk_bytes: most tensor bytes
 * per chunk record (0 = CKPT_DEFAULT_CHUNK_BYTES). meta may be NULL (all
 * zero). Not collective: one rank writes. */
int ckpt_write(const char *path, const nn_model *m, const nn_optim *o, const ckpt_meta *meta,
               size_t chunk_bytes);

/* A parsed, fully verified checkpoint held in memory (the whole file). */
typedef struct ckpt_file ckpt_file;

/* Reads path and verifies magic, version, every record's CRC, record order,
 * the tensor index against the model spec, chunk coverage and the END record.
 * FERRY_EUSER on a corrupt or truncated file (message: path, byte offset,
 * reason); FERRY_ERUNTIME on I/O or memory errors. *out owned by the caller:
 * free with ckpt_close. Not collective. */
int ckpt_open(ckpt_file **out, const char *path);
/* Same on n bytes in memory (copied; the caller keeps bytes). name is used in
 * messages. Not collective. */
int ckpt_open_mem(ckpt_file **out, const void *bytes, size_t n, const char *name);
/* Rank 0 of c reads path; the bytes are broadcast (length first, then pieces)
 * and every rank parses and verifies them, so ranks that cannot see the file
 * get it too (path is only used on rank 0). Every rank returns the same
 * status; a rank whose own step did not fail gets a message naming the rank
 * that did. Collective over c. */
int ckpt_open_bcast(ckpt_file **out, const char *path, const dist_comm *c);
void ckpt_close(ckpt_file **f);

/* Views owned by f (valid until ckpt_close). Not collective. */
const ckpt_meta *ckpt_meta_of(const ckpt_file *f);
const nn_model_spec *ckpt_spec(const ckpt_file *f);
size_t ckpt_file_bytes(const ckpt_file *f);
int ckpt_ntensors(const ckpt_file *f);

/* Restores every parameter of m (and, when o != NULL, the optimizer state
 * and o->t; o->cfg is left as the caller set it, but its kind must match the
 * checkpoint's). The model's tensors (names and shapes) must equal the
 * checkpoint's exactly; every check is done before any value is written.
 * FERRY_EUSER naming the tensor, expected vs found. Not collective. */
int ckpt_load_model(const ckpt_file *f, nn_model *m, nn_optim *o);

/* Fine-tuning start: loads trunk layers of the checkpoint into m by layer
 * name when the op and every tensor shape match ("matched"). Checkpoint trunk
 * layers absent from m's trunk or different in op/shape are "skipped" (the
 * model keeps its own values there); trunk layers of m with parameters that
 * the checkpoint lacks are "fresh" (keep their initialisation). Heads are
 * never loaded. One human-readable line per layer goes into text (may be
 * NULL; truncated to text_len). Not collective. */
typedef struct {
  int matched, skipped, fresh;
} ckpt_trunk_report;
int ckpt_load_trunk(const ckpt_file *f, nn_model *m, ckpt_trunk_report *rep, char *text,
                    size_t text_len);

/* Newest file named ckpt-<step>.ferry in dir that verifies (ckpt_open) goes
 * into path_out ("" when none, or when dir does not exist); newer files that
 * fail verification are skipped and named with the reason in skipped_msg
 * (may be NULL). FERRY_ERUNTIME when dir cannot be read. Not collective. */
int ckpt_find_latest(const char *dir, char *path_out, size_t n, char *skipped_msg, size_t m);

/* Keeps the keep (>= 1) newest files named ckpt-<step>.ferry in dir (by
 * step) and deletes the older ones. Call it after a successful write, so the
 * newest file is known good. Not collective. */
int ckpt_prune(const char *dir, int keep);

/* The canonical file name of a step in dir: "<dir>/ckpt-<step>.ferry".
 * FERRY_EUSER if it does not fit in n. */
int ckpt_path_for_step(char *out, size_t n, const char *dir, int64_t step);

/* Human-readable (json = 0) or JSON (json = 1) description: format version,
 * step and cursor, seed, optimizer, provenance, model spec, and every tensor
 * with its shape and L2 norm. Not collective. */
int ckpt_print(const ckpt_file *f, FILE *out, int json);
/* Writes every tensor of f to dir (which must exist) as <name>.f32, raw
 * little-endian float32 in row-major order, and dir/manifest.json naming
 * each file with its shape and role (param, optim.m, optim.v): the weights
 * for NumPy or PyTorch. Not collective. */
int ckpt_export(const ckpt_file *f, const char *dir);

#endif
