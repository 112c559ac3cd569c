/* One layer set up on its own for a test: parameters initialised, then
 * jittered so biases and norm gains are not trivial, plus a workspace for a
 * batch bound; and two spec helpers. Shared by the unit tests. */
#ifndef FERRY_TEST_LAYER_FIXTURE_H
#define FERRY_TEST_LAYER_FIXTURE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nn/layer.h"
#include "nn/rng.h"

typedef struct {
  nn_layer L;
  float *params, *grads, *ws;
  size_t np;
} fixture;

/* Sets up spec on input shape in, binds parameters (nn_layer_init with
 * init_seed, then each moved by a uniform draw in [-jitter, jitter) from rng)
 * and a workspace for max_batch rows. Returns 0, or the setup status with the
 * error left recorded. */
int fx_make(fixture *f, const nn_layer_spec *spec, nn_shape in, int spatial, int max_batch,
            uint64_t init_seed, nn_rng *rng, float jitter);
void fx_free(fixture *f);

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
