/* The single-layer test fixture (layer_fixture.h). */
#include "layer_fixture.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"

int fx_make(fixture *f, const nn_layer_spec *spec, nn_shape in, int spatial, int max_batch,
            uint64_t init_seed, nn_rng *rng, float jitter) {
  memset(f, 0, sizeof *f);
  int rc = nn_layer_setup(&f->L, spec, in, spatial);
  if (rc) return rc;
  f->np = nn_layer_nparams(&f->L);
  f->params = calloc(f->np + 1, sizeof(float));
  f->grads = calloc(f->np + 1, sizeof(float));
  CHECK(f->params && f->grads);
  CHECK(nn_layer_bind_params(&f->L, f->params, f->grads, 0) == f->np);
  nn_layer_init(&f->L, init_seed, 1);
  for (size_t i = 0; i < f->np; i++)
    f->params[i] += -jitter + 2.0f * jitter * (float)nn_rng_uniform(rng);
  size_t nws = nn_layer_ws_floats(&f->L, max_batch);
  f->ws = malloc((nws + 1) * sizeof(float));
  CHECK(f->ws != NULL);
  CHECK(nn_layer_bind_ws(&f->L, f->ws, max_batch) == nws);
  return 0;
}

void fx_free(fixture *f) {
  nn_layer_free(&f->L);
  free(f->params);
  free(f->grads);
  free(f->ws);
}
