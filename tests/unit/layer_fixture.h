/* One layer set up on its own for a test: parameters initialised, then
 * jittered so biases and norm gains are not trivial, plus a workspace for a
 * batch bound. Shared by the unit tests (with the spec helpers of spec.h). */
#ifndef FERRY_TEST_LAYER_FIXTURE_H
#define FERRY_TEST_LAYER_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "nn/layer.h"
#include "nn/rng.h"
#include "spec.h"

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

#endif
