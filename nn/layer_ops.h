/* Private to nn/layer*.c: the per-op kernels that nn/layer.c dispatches to.
 * Each kernel takes the layer (shapes, parameters, buffers) and the actual
 * batch size B; layouts are those of nn/layer.h. Nothing here allocates. */
#ifndef FERRY_NN_LAYER_OPS_H
#define FERRY_NN_LAYER_OPS_H

#include "layer.h"

/* gcc 12 at -O2 uses the "very cheap" vectoriser cost model, which leaves
 * scalar every loop whose trip count is not a known multiple of the vector
 * width, i.e. all of the kernels' elementwise loops. The dynamic model lets
 * them vectorise (with a scalar epilogue). Only nn/layer*.c include this. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

/* Rounds a float count up to a multiple of 16 (64-byte blocks). */
static inline size_t nn_al16(size_t n) { return (n + 15) & ~(size_t)15; }

/* dense: flat [B][in] -> [B][out] */
void nn_dense_forward(nn_layer *L, const float *x, int B);
void nn_dense_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B);

/* conv: spatial [c][B][h][w]. acc_dx: add into dx instead of overwriting it
 * (the residual block sums its two paths this way). */
size_t nn_conv_aux_floats(const nn_layer *L, int B);
void nn_conv_forward(nn_layer *L, const float *x, int B);
void nn_conv_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B, int acc_dx);

/* pooling: spatial in; maxpool/avgpool spatial out, gap flat out */
void nn_maxpool_forward(nn_layer *L, const float *x, int B);
void nn_maxpool_backward(nn_layer *L, const float *dy, float *dx, int B);
void nn_avgpool_forward(nn_layer *L, const float *x, int B);
void nn_avgpool_backward(nn_layer *L, const float *dy, float *dx, int B);
void nn_gap_forward(nn_layer *L, const float *x, int B);
void nn_gap_backward(nn_layer *L, const float *dy, float *dx, int B);

/* elementwise and reshaping ops (either layout unless stated) */
void nn_act_forward(nn_layer *L, const float *x, int B);
void nn_act_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B);
void nn_dropout_forward(nn_layer *L, const float *x, const nn_pass *p);
void nn_dropout_backward(nn_layer *L, const float *dy, float *dx, const nn_pass *p);
void nn_flatten_forward(nn_layer *L, const float *x, int B);
void nn_flatten_backward(nn_layer *L, const float *dy, float *dx, int B);

/* groupnorm: spatial or flat; aux holds mean and rstd per (sample, group) */
int nn_groupnorm_default_groups(int c);
void nn_groupnorm_forward(nn_layer *L, const float *x, int B);
void nn_groupnorm_backward(nn_layer *L, const float *x, const float *dy, float *dx, int B);

/* residual basic block: sub-layers built in setup; scratch holds their
 * workspaces, aux three gradient temporaries of the output size. */
int nn_residual_setup(nn_layer *L);
size_t nn_residual_scratch_floats(const nn_layer *L, int B);
void nn_residual_bind_scratch(nn_layer *L, int B);
void nn_residual_forward(nn_layer *L, const float *x, const nn_pass *p);
void nn_residual_backward(nn_layer *L, const float *x, const float *dy, float *dx,
                          const nn_pass *p);

#endif
