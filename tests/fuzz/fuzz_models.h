/* Model specs shared by the checkpoint fuzz target and its seed writer: the
 * seeds are checkpoints of these models, so inputs that survive the parser
 * also reach ckpt_load_model / ckpt_load_trunk. */
#ifndef FERRY_FUZZ_MODELS_H
#define FERRY_FUZZ_MODELS_H

#include <string.h>

#include "../unit/spec.h"
#include "nn/model.h"

/* flat 7 -> dense 6 - tanh - dense 5 | head "main": dense 3 */
static inline void fuzz_spec_small(nn_model_spec *sp) {
  memset(sp, 0, sizeof *sp);
  sp->in = (nn_shape){7, 1, 1};
  sp->trunk.layers[sp->trunk.nlayers++] = ls(NN_DENSE, 6);
  sp->trunk.layers[sp->trunk.nlayers++] = ls(NN_TANH, 0);
  sp->trunk.layers[sp->trunk.nlayers++] = ls(NN_DENSE, 5);
  sp->nheads = 1;
  strcpy(sp->heads[0].name, "main");
  sp->heads[0].nlayers = 1;
  sp->heads[0].layers[0] = ls(NN_DENSE, 3);
}

/* 3x8x8 -> conv 4 k3 p1 - GN 2 - relu - residual 6 s2 - gap - dense 5
 *   | head "a": dense 3 | head "b": dense 4 (no bias) - tanh - dense 2 */
static inline void fuzz_spec_rich(nn_model_spec *sp) {
  memset(sp, 0, sizeof *sp);
  sp->in = (nn_shape){3, 8, 8};
  sp->in_spatial = 1;
  nn_stack_spec *t = &sp->trunk;
  t->layers[t->nlayers] = ls(NN_CONV2D, 4);
  t->layers[t->nlayers].k = 3;
  t->layers[t->nlayers++].pad = 1;
  t->layers[t->nlayers] = ls(NN_GROUPNORM, 0);
  t->layers[t->nlayers++].groups = 2;
  t->layers[t->nlayers++] = ls(NN_RELU, 0);
  t->layers[t->nlayers] = ls(NN_RESIDUAL, 6);
  t->layers[t->nlayers++].stride = 2;
  t->layers[t->nlayers++] = ls(NN_GAP, 0);
  t->layers[t->nlayers++] = ls(NN_DENSE, 5);
  sp->nheads = 2;
  strcpy(sp->heads[0].name, "a");
  sp->heads[0].nlayers = 1;
  sp->heads[0].layers[0] = ls(NN_DENSE, 3);
  strcpy(sp->heads[1].name, "b");
  sp->heads[1].nlayers = 3;
  sp->heads[1].layers[0] = ls(NN_DENSE, 4);
  sp->heads[1].layers[0].no_bias = 1;
  sp->heads[1].layers[1] = ls(NN_TANH, 0);
  sp->heads[1].layers[2] = ls(NN_DENSE, 2);
}

#endif
