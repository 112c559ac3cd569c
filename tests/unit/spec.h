/* Spec helpers for tests that build layers and models by hand (unit and
 * fuzz tests). */
#ifndef FERRY_TEST_SPEC_H
#define FERRY_TEST_SPEC_H

#include <string.h>

#include "nn/layer.h"

/* A layer spec of op with out outputs, every other field zero. */
static inline nn_layer_spec ls(nn_op op, int out) {
  nn_layer_spec s;
  memset(&s, 0, sizeof s);
  s.op = op;
  s.out = out;
  return s;
}

static inline nn_shape sh(int c, int h, int w) { return (nn_shape){c, h, w}; }

#endif
