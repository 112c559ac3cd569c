/* Writes the seed corpus of fuzz_ckpt into DIR: valid checkpoints of the
 * fuzz models with and without optimizer state and with small chunk sizes
 * (so the seeds hold many chunk records). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "fuzz_models.h"
#include "nn/err.h"
#include "train/ckpt.h"

static int seed(const char *dir, const char *name, void (*spec)(nn_model_spec *), int opt, size_t chunk) {
  nn_model_spec sp;
  spec(&sp);
  nn_model *m = NULL;
  nn_optim o = {0};
  nn_opt_cfg cfg = {.kind = opt == 2 ? NN_OPT_ADAMW : NN_OPT_SGD, .lr = 0.1f, .momentum = 0.9f};
  CHECK_CALL(nn_model_new(&m, &sp, 1));
  nn_model_init_params(m, 7);
  int rc = opt ? nn_optim_init(&o, &cfg, m->nparams) : 0;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  ckpt_meta meta = {.step = 42, .epoch = 1, .batch = 3, .seed = 5, .experiment = "name: fuzz\n",
                    .experiment_hash = 99, .ndatasets = 1, .datasets = {{"data", 1234}}, .world_size = 2};
  if (!rc) rc = ckpt_write(path, m, opt ? &o : NULL, &meta, chunk);
  nn_optim_free(&o);
  nn_model_free(&m);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fuzz_ckpt_seed DIR\n");
    return 2;
  }
  if (mkdir(argv[1], 0755) != 0 && errno != EEXIST) {
    perror(argv[1]);
    return 1;
  }
  int rc = seed(argv[1], "small-plain", fuzz_spec_small, 0, 0);
  if (!rc) rc = seed(argv[1], "small-sgd-chunk64", fuzz_spec_small, 1, 64);
  if (!rc) rc = seed(argv[1], "small-adamw-chunk100", fuzz_spec_small, 2, 100);
  if (!rc) rc = seed(argv[1], "rich-adamw", fuzz_spec_rich, 2, 0);
  if (!rc) rc = seed(argv[1], "rich-sgd-chunk512", fuzz_spec_rich, 1, 512);
  if (rc) fprintf(stderr, "fuzz_ckpt_seed: %s\n", ferry_err_msg());
  return rc ? 1 : 0;
}
