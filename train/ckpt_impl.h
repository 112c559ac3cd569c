/* Internals shared by the train/ckpt_*.c files (not a public interface):
 * the record framing constants, the in-memory form of an opened checkpoint,
 * and the list of tensors a model (or a model spec) has, in file order. */
#ifndef FERRY_TRAIN_CKPT_IMPL_H
#define FERRY_TRAIN_CKPT_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "train/ckpt.h"

/* Every multi-byte integer and float in the file is little-endian; tensors
 * are written straight from the parameter slab, so the host must be too. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "checkpoint I/O writes float slabs as-is: little-endian hosts only");

enum { CKPT_REC_HEADER = 1, CKPT_REC_CHUNK = 2, CKPT_REC_END = 3 };

#define CKPT_FILE_HEAD 12u                    /* magic[8] + u32 version */
#define CKPT_REC_HEAD 12u                     /* u32 kind + u64 payload length */
#define CKPT_REC_TAIL 4u                      /* u32 CRC-32 */
#define CKPT_CHUNK_HEAD 12u                   /* u32 tensor index + u64 element offset */
#define CKPT_END_PAYLOAD 16u                  /* u64 records + u64 total bytes */
#define CKPT_MAX_HEADER_BYTES ((uint64_t)256 << 20)
#define CKPT_MAX_DIMS 4
#define CKPT_NAME_MAX 192

typedef enum { CKPT_ROLE_PARAM, CKPT_ROLE_OPT_M, CKPT_ROLE_OPT_V } ckpt_role;

typedef struct {
  char name[CKPT_NAME_MAX];
  int ndims;
  uint64_t dims[CKPT_MAX_DIMS];
  uint64_t numel;
  ckpt_role role;
  int stack, layer;  /* stack -1 = trunk, else head index; top-level layer index */
  size_t slab_off;   /* model side: first element in the params (or m/v) slab */
  uint64_t nchunks;  /* file side: chunk records holding the data */
  size_t chunk_pos;  /* file side: byte offset of the first chunk record */
} ckpt_tensor;

typedef struct {
  ckpt_tensor *t;
  size_t n, cap;
} ckpt_tlist;

struct ckpt_file {
  char *name;             /* for messages */
  unsigned char *buf;     /* the whole file */
  size_t len;
  int mapped;             /* buf is an mmap of the file (else malloc'd) */
  ckpt_meta meta;
  char *experiment;       /* meta.experiment points here */
  nn_model_spec spec;
  ckpt_tlist tensors;     /* file order */
  const ckpt_tensor **by_name; /* into tensors.t, sorted by name */
};

void ckpt_tlist_free(ckpt_tlist *l);
/* Tensors of a built model (slab offsets filled): parameters in layer order,
 * then "optim.m.*" when with_m, then "optim.v.*" when with_v. */
int ckpt_model_tensors(const nn_model *m, int with_m, int with_v, ckpt_tlist *out);
/* The same list from a spec alone (shapes via nn_layer_setup, nothing big is
 * allocated). FERRY_EUSER when the spec does not build; the message says so. */
int ckpt_spec_tensors(const nn_model_spec *spec, int with_m, int with_v, ckpt_tlist *out);
/* Index of the tensor named name in f, or -1. */
long ckpt_find_tensor(const ckpt_file *f, const char *name);
/* Fills f->by_name (after f->tensors is final). */
int ckpt_sort_by_name(ckpt_file *f);
/* Copies tensor i's elements out of f's chunk records into dst (numel floats). */
void ckpt_tensor_read(const ckpt_file *f, size_t i, float *dst);
/* Sum of squares (double) of tensor i's elements. */
double ckpt_tensor_sumsq(const ckpt_file *f, size_t i);
/* "[256, 784]" */
const char *ckpt_dims_str(char *buf, size_t n, const ckpt_tensor *t);
/* Parses and verifies buf (ownership of buf, mapped or malloc'd, passes to
 * *out, also on failure, when it is released). */
int ckpt_parse_owned(ckpt_file **out, unsigned char *buf, size_t len, int mapped, const char *name);
/* The bytes of a whole regular file: mapped read-only (no copy; *mapped = 1)
 * or, where mmap is refused, read into a malloc'd buffer. FERRY_ERUNTIME
 * naming the path and errno text. Release with ckpt_buf_release. */
int ckpt_read_file(const char *path, unsigned char **buf, size_t *len, int *mapped);
void ckpt_buf_release(unsigned char *buf, size_t len, int mapped);

static inline uint32_t ckpt_get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ckpt_get_u64(const unsigned char *p) {
  return (uint64_t)ckpt_get_u32(p) | (uint64_t)ckpt_get_u32(p + 4) << 32;
}
static inline void ckpt_put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void ckpt_put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

#endif
