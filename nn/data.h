/* Datasets, subsets and per-batch transforms (single process).
 * Samples stay compact: images as uint8 [n][c*h*w], CSV features as float
 * [n][d]; a batch is converted to float (and transformed) when assembled.
 * Every random choice is seeded: subsets by an explicit seed, per-batch
 * transforms by (key, global sample id), so a sample looks the same whichever
 * rank assembles it. */
#ifndef FERRY_NN_DATA_H
#define FERRY_NN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "layer.h"

typedef struct {
  int64_t n;            /* samples */
  nn_shape shape;       /* per sample */
  int spatial;          /* images: 1 (batches are [c][B][h][w]); CSV: 0 ([B][d]) */
  uint8_t *u8;          /* [n][numel] pixels in 0..255, or NULL */
  float *f32;           /* [n][numel] features, or NULL */
  int32_t *labels;      /* [n]; -1 = unlabelled */
  int64_t *ids;         /* [n] stable sample ids (index in the source file) */
  int nclasses;         /* 1 + largest label */
  int pending;          /* a view whose samples are not read yet (u8 and f32
                           NULL): NN_PENDING_U8 (IDX, nn_data_fill_idx reads
                           them) or NN_PENDING_F32 (CSV, nn_data_fill_csv) */
  char source[256];     /* file(s) it came from, for messages */
} nn_dataset;

enum { NN_PENDING_U8 = 1, NN_PENDING_F32 = 2 };

/* Reads an IDX image file (magic 0x00000803, uint8, n x rows x cols; gzip or
 * plain, detected by zlib) and its label file (0x00000801). Validates magic,
 * dimensions, sizes and that counts agree; a bad file gives FERRY_EUSER with a
 * message naming the file, the field, expected vs found. max_n > 0 keeps only
 * the first max_n samples. labels may be NULL: every sample unlabelled (-1).
 * Not collective. */
int nn_data_read_idx(nn_dataset *ds, const char *images, const char *labels, int64_t max_n);
/* The same dataset as a view: the images file's header and the labels are
 * read, the pixels are not (pending = 1, u8 = NULL). Gather and the subsets
 * below work on views as on whole datasets, so the rows a process needs can
 * be chosen from the labels before any pixel is held; nn_data_fill_idx then
 * reads just those. */
int nn_data_read_idx_labels(nn_dataset *ds, const char *images, const char *labels,
                            int64_t max_n);
/* Reads the images file once, front to back, and gives each pending view in
 * dst[0..nd) (views of that file, any rows in any order, by ids) its pixels;
 * memory is the views' rows plus one read block. Checks the file exactly as
 * nn_data_read_idx does (header, truncation, gzip trailer, trailing data).
 * row_hash, if not NULL, receives a malloc'd array of a hash of every row read
 * (*nrows of them, the caller frees) for nn_data_digest_view. On failure the
 * views stay pending. */
int nn_data_fill_idx(nn_dataset *const *dst, int nd, const char *images, int64_t max_n,
                     uint64_t **row_hash, int64_t *nrows);
/* Reads CSV rows "label,f1,...,fd" (optional header line detected when its
 * first field is not a number; gzip allowed). Every row must have the same d;
 * errors name the file and line. Empty label field = unlabelled (-1). If
 * img_h * img_w == d (both > 0) the samples are treated as 1-channel images. */
int nn_data_read_csv(nn_dataset *ds, const char *path, int img_h, int img_w);
/* The same as a view (labels, sizes; the features are not kept): the file
 * is read and checked whole, line by line, and nn_data_fill_csv reads it
 * again for the rows the views kept. Neither holds the file's text. */
int nn_data_read_csv_labels(nn_dataset *ds, const char *path, int img_h, int img_w);
/* nn_data_fill_idx for CSV views (their features, by ids). row_hash: one
 * hash per data row of the file, for nn_data_digest_view. */
int nn_data_fill_csv(nn_dataset *const *dst, int nd, const char *path, uint64_t **row_hash,
                     int64_t *nrows);
void nn_data_free(nn_dataset *ds);

/* New dataset of the rows idx[0..n) of src (copies samples). */
int nn_data_gather(nn_dataset *dst, const nn_dataset *src, const int64_t *idx, int64_t n);
/* A whole copy of src (a view copies as a view). */
int nn_data_copy(nn_dataset *dst, const nn_dataset *src);
/* A view (labels, ids, sizes; no samples) of a dataset held whole in memory
 * as read from its file (row i = file row i), and the samples of such views'
 * rows copied from it: the in-memory counterparts of nn_data_read_*_labels
 * and nn_data_fill_*. */
int nn_data_view_of(nn_dataset *dst, const nn_dataset *whole);
int nn_data_fill_from(nn_dataset *const *dst, int nd, const nn_dataset *whole);
/* Keeps rows whose label is in classes[0..nc) and relabels class classes[i]
 * to i. FERRY_EUSER if a class does not occur. */
int nn_data_subset_classes(nn_dataset *dst, const nn_dataset *src, const int *classes, int nc);
/* Keeps k rows per class, chosen by seed (the same seed gives the same rows);
 * FERRY_EUSER if a class has fewer than k. */
int nn_data_k_per_class(nn_dataset *dst, const nn_dataset *src, int k, uint64_t seed);
/* Splits src by a seeded permutation into train (1-frac) and val (frac),
 * stratified per class. */
int nn_data_split(nn_dataset *train, nn_dataset *val, const nn_dataset *src, double frac,
                  uint64_t seed);
/* Digest (64-bit FNV/mix) of the samples and labels, for provenance. */
uint64_t nn_data_digest(const nn_dataset *ds);
/* nn_data_digest of what a view holds once filled, from its file's row
 * hashes (nn_data_fill_idx, nn_data_fill_csv), without its samples. */
uint64_t nn_data_digest_view(const nn_dataset *view, const uint64_t *row_hash, int64_t nrows);
/* The same for a view of a dataset held whole (nn_data_view_of). */
uint64_t nn_data_digest_view_in(const nn_dataset *view, const nn_dataset *whole);

typedef enum {
  NN_TF_NORMALIZE, /* x = (x - mean) / std  (per channel: a[0..c) means, b[0..c) stds) */
  NN_TF_INVERT,    /* x = 1 - x (on the [0,1] scale, before normalize) */
  NN_TF_ROTATE,    /* fixed angle a[0] degrees (90/180/270 exact), or random in
                      [-a[1], a[1]] when a[1] > 0; bilinear, zero fill */
  NN_TF_NOISE,     /* x += N(0, a[0]^2) */
  NN_TF_CROP,      /* random crop after zero padding by a[0] pixels */
  NN_TF_HFLIP,     /* horizontal flip with probability a[0] */
  NN_TF_COUNT
} nn_tf_kind;
extern const char *const nn_tf_names[NN_TF_COUNT];

#define NN_TF_MAXC 4
typedef struct {
  nn_tf_kind kind;
  float a[NN_TF_MAXC], b[NN_TF_MAXC];
} nn_transform;

/* Returns the kind whose name (nn_tf_names) is s, or -1. */
int nn_tf_from_name(const char *s);
/* Checks transform parameters against a dataset before training, since
 * nn_data_batch cannot fail: normalize stds > 0 for each channel (a[0]/b[0]
 * when c > NN_TF_MAXC), rotate a[1] >= 0 and not both a[0] and a[1], noise
 * a[0] >= 0, crop a[0] a whole number of pixels in 0..max(h, w), hflip a[0]
 * in [0, 1], and rotate/crop/hflip only on spatial data (on flat data
 * nn_data_batch skips them). FERRY_EUSER naming the transform (index and
 * name), the field, expected vs found. Not collective. */
int nn_tf_check(const nn_transform *tf, int ntf, const nn_dataset *ds);

/* Assembles a batch: rows idx[0..B) of ds, scaled to [0,1] (u8/255; float
 * features as-is), transformed in order, written to x in the model's input
 * layout ([c][B][h][w] when spatial, else [B][d]); labels to y (may be NULL).
 * Random transforms draw from (key, ds->ids[row]). scratch holds at least
 * 2 * numel floats. Does not allocate. Not collective. */
void nn_data_batch(const nn_dataset *ds, const int64_t *idx, int B, const nn_transform *tf,
                   int ntf, uint64_t key, float *x, int32_t *y, float *scratch);

#endif
