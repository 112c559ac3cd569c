/* Experiment-file parser (launch/config.c): a file using every key parses into
 * the expected struct, defaults and presets, --set overrides, one precise
 * message (file:line:col, key path, expected vs found) per error, and a
 * reference that lists every key and matches docs/experiment-format.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "launch/config.h"
#include "nn/err.h"

static exp_experiment E; /* large: keep it off the stack */

static int load(const char *yaml, const char *const *sets, int nsets) {
  ferry_err_clear();
  return cfg_load_string(&E, yaml, "exp.yaml", sets, nsets);
}

/* The load fails with FERRY_EUSER and the message holds every substring. */
static void expect_err_at(int line, const char *yaml, const char *const *sets, int nsets,
                          const char *const *subs) {
  int rc = load(yaml, sets, nsets);
  const char *msg = ferry_err_msg();
  if (rc != FERRY_EUSER) {
    check_fail++;
    fprintf(stderr, "%s:%d: expected FERRY_EUSER, got %d (%s)\n", __FILE__, line, rc, msg);
    return;
  }
  for (; *subs; subs++) {
    if (strstr(msg, *subs)) {
      check_pass++;
    } else {
      check_fail++;
      fprintf(stderr, "%s:%d: message lacks \"%s\":\n    %s\n", __FILE__, line, *subs, msg);
    }
  }
  if (getenv("TEST_CONFIG_VERBOSE")) printf("ok: %s\n", msg);
}

#define EXPECT_ERR(yaml, ...) \
  expect_err_at(__LINE__, (yaml), NULL, 0, (const char *const[]){__VA_ARGS__, NULL})
#define EXPECT_SET_ERR(yaml, set, ...)                                            \
  expect_err_at(__LINE__, (yaml), (const char *const[]){set}, 1,                  \
                (const char *const[]){__VA_ARGS__, NULL})

#define CHECK_OK(rc) CHECK_MSG((rc) == 0, "load failed: %s", ferry_err_msg())
#define CHECK_STR(a, b) CHECK_MSG(!strcmp((a), (b)), "\"%s\" vs \"%s\"", (a), (b))

/* Every key of the format, on known lines. */
static const char *FULL =
    "name: cnn-fmnist\n"                                                         /* 1 */
    "seed: 7\n"                                                                  /* 2 */
    "out: runs/test-out\n"                                                       /* 3 */
    "data:\n"                                                                    /* 4 */
    "  name: fmnist\n"                                                           /* 5 */
    "  train: fashion-mnist:train\n"                                             /* 6 */
    "  test: {format: csv, path: /tmp/t.csv, image: [28, 28], limit: 500}\n"     /* 7 */
    "  classes: [5, 6, 7, 8, 9]\n"                                               /* 8 */
    "  k_per_class: 10\n"                                                        /* 9 */
    "  val_frac: 0.1\n"                                                          /* 10 */
    "  seed: 3\n"                                                                /* 11 */
    "  transforms:\n"                                                            /* 12 */
    "    - normalize: {mean: 0.2860, std: 0.3530}\n"                             /* 13 */
    "    - invert\n"                                                             /* 14 */
    "    - rotate: 90\n"                                                         /* 15 */
    "    - noise: 0.1\n"                                                         /* 16 */
    "    - normalize: {mean: [0.1, 0.2, 0.3], std: [1, 2, 4]}\n"                 /* 17 */
    "  augment:\n"                                                               /* 18 */
    "    - crop: 2\n"                                                            /* 19 */
    "    - hflip\n"                                                              /* 20 */
    "    - rotate: {max_degrees: 10}\n"                                          /* 21 */
    "    - noise: {std: 0.05}\n"                                                 /* 22 */
    "    - hflip: 0.25\n"                                                        /* 23 */
    "    - crop: {pad: 4}\n"                                                     /* 24 */
    "model:\n"                                                                   /* 25 */
    "  trunk:\n"                                                                 /* 26 */
    "    - conv: {out: 16, k: 5, pad: 2, stride: 1, bias: false, name: c1}\n"    /* 27 */
    "    - relu\n"                                                               /* 28 */
    "    - maxpool: 2\n"                                                         /* 29 */
    "    - avgpool: {k: 2, stride: 1}\n"                                         /* 30 */
    "    - groupnorm: {groups: 4}\n"                                             /* 31 */
    "    - groupnorm\n"                                                          /* 32 */
    "    - residual: {out: 32, stride: 2}\n"                                     /* 33 */
    "    - gap\n"                                                                /* 34 */
    "    - flatten\n"                                                            /* 35 */
    "    - dense: 128\n"                                                         /* 36 */
    "    - dropout: 0.5\n"                                                       /* 37 */
    "    - gelu\n"                                                               /* 38 */
    "    - tanh\n"                                                               /* 39 */
    "    - sigmoid\n"                                                            /* 40 */
    "    - conv: {out: 8, k: 3}\n"                                               /* 41 */
    "    - grl: 0.5\n"                                                           /* 42 */
    "    - grl\n"                                                                /* 43 */
    "    - relu: {name: last}\n"                                                 /* 44 */
    "  heads:\n"                                                                 /* 45 */
    "    main:\n"                                                                /* 46 */
    "      - dense: {out: 10, bias: false, name: fc}\n"                          /* 47 */
    "    aux:\n"                                                                 /* 48 */
    "      - relu\n"                                                             /* 49 */
    "      - dense: 2\n"                                                         /* 50 */
    "train:\n"                                                                   /* 51 */
    "  epochs: 3\n"                                                              /* 52 */
    "  steps: 1000\n"                                                            /* 53 */
    "  batch: 64\n"                                                              /* 54 */
    "  eval_batch: 500\n"                                                        /* 55 */
    "  optimizer: {name: adamw, lr: 0.001, betas: [0.8, 0.99], eps: 1e-7, weight_decay: 0.01}\n"
    "  schedule: {name: cosine, warmup_steps: 100, min_lr: 0.0001, total_steps: 5000}\n"
    "  clip_norm: 1.5\n"
    "  label_smoothing: 0.1\n"
    "  threads: 2\n"
    "  progress: plain\n";

/* Keys FULL uses (plus the SGD/step ones tested elsewhere): the reference
 * must list each. */
static const char *const ALL_KEYS[] = {
    "name", "seed", "out", "data", "data.name", "data.train", "data.train.format",
    "data.train.images", "data.train.labels", "data.train.path", "data.train.image",
    "data.train.limit", "data.test", "data.test.path", "data.classes", "data.k_per_class",
    "data.val_frac", "data.seed", "data.transforms", "data.augment", "model", "model.preset",
    "model.trunk", "model.heads", "train", "train.epochs", "train.steps", "train.batch",
    "train.eval_batch", "train.optimizer", "train.optimizer.name", "train.optimizer.lr",
    "train.optimizer.momentum", "train.optimizer.nesterov", "train.optimizer.weight_decay",
    "train.optimizer.betas", "train.optimizer.eps", "train.schedule", "train.schedule.name",
    "train.schedule.warmup_steps", "train.schedule.step_size", "train.schedule.gamma",
    "train.schedule.min_lr", "train.schedule.total_steps", "train.clip_norm",
    "train.label_smoothing", "train.threads", "train.progress"};

static void test_full(void) {
  CHECK_OK(load(FULL, NULL, 0));
  const exp_experiment *e = &E;
  CHECK_STR(e->name, "cnn-fmnist");
  CHECK_STR(e->text_path, "exp.yaml");
  CHECK(e->seed == 7);
  CHECK_STR(e->out_dir, "runs/test-out");
  /* data */
  CHECK_STR(e->data.name, "fmnist");
  CHECK(e->data.train.format == EXP_SRC_IDX);
  CHECK_STR(e->data.train.images, "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  CHECK_STR(e->data.train.labels, "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
  CHECK(e->data.test.format == EXP_SRC_CSV);
  CHECK_STR(e->data.test.path, "/tmp/t.csv");
  CHECK(e->data.test.img_h == 28 && e->data.test.img_w == 28);
  CHECK(e->data.test.limit == 500);
  CHECK(e->data.nclasses_keep == 5);
  for (int i = 0; i < 5; i++) CHECK(e->data.classes[i] == 5 + i);
  CHECK(e->data.k_per_class == 10);
  CHECK_NEAR(e->data.val_frac, 0.1, 1e-12);
  CHECK(e->data.seed == 3);
  CHECK(e->data.ntf == 5);
  const nn_transform *t = e->data.tf;
  CHECK(t[0].kind == NN_TF_NORMALIZE);
  for (int c = 0; c < NN_TF_MAXC; c++) {
    CHECK_NEAR(t[0].a[c], 0.2860, 1e-6);
    CHECK_NEAR(t[0].b[c], 0.3530, 1e-6);
  }
  CHECK(t[1].kind == NN_TF_INVERT);
  CHECK(t[2].kind == NN_TF_ROTATE && t[2].a[0] == 90.0f && t[2].a[1] == 0.0f);
  CHECK(t[3].kind == NN_TF_NOISE);
  CHECK_NEAR(t[3].a[0], 0.1, 1e-7);
  CHECK(t[4].kind == NN_TF_NORMALIZE);
  CHECK_NEAR(t[4].a[2], 0.3, 1e-7);
  CHECK(t[4].b[0] == 1.0f && t[4].b[1] == 2.0f && t[4].b[2] == 4.0f);
  CHECK(t[4].a[3] == 0.0f && t[4].b[3] == 1.0f); /* unused channel: identity */
  CHECK(e->data.naug == 6);
  const nn_transform *g = e->data.aug;
  CHECK(g[0].kind == NN_TF_CROP && g[0].a[0] == 2.0f);
  CHECK(g[1].kind == NN_TF_HFLIP && g[1].a[0] == 0.5f);
  CHECK(g[2].kind == NN_TF_ROTATE && g[2].a[0] == 0.0f && g[2].a[1] == 10.0f);
  CHECK(g[3].kind == NN_TF_NOISE);
  CHECK_NEAR(g[3].a[0], 0.05, 1e-7);
  CHECK(g[4].kind == NN_TF_HFLIP && g[4].a[0] == 0.25f);
  CHECK(g[5].kind == NN_TF_CROP && g[5].a[0] == 4.0f);
  /* model */
  CHECK_STR(e->preset, "");
  const nn_stack_spec *tr = &e->model.trunk;
  CHECK_STR(tr->name, "trunk");
  CHECK(tr->nlayers == 18);
  static const char *const names[] = {"c1", "relu1", "maxpool1", "avgpool1", "groupnorm1",
                                      "groupnorm2", "residual1", "gap1", "flatten1", "dense1",
                                      "dropout1", "gelu1", "tanh1", "sigmoid1", "conv2", "grl1",
                                      "grl2", "last"};
  static const nn_op ops[] = {NN_CONV2D, NN_RELU, NN_MAXPOOL2D, NN_AVGPOOL2D, NN_GROUPNORM,
                              NN_GROUPNORM, NN_RESIDUAL, NN_GAP, NN_FLATTEN, NN_DENSE,
                              NN_DROPOUT, NN_GELU, NN_TANH, NN_SIGMOID, NN_CONV2D, NN_GRL,
                              NN_GRL, NN_RELU};
  for (int i = 0; i < 18 && i < tr->nlayers; i++) {
    CHECK_STR(tr->layers[i].name, names[i]);
    CHECK_MSG(tr->layers[i].op == ops[i], "layer %d op %d vs %d", i, tr->layers[i].op, ops[i]);
  }
  const nn_layer_spec *L = tr->layers;
  CHECK(L[0].out == 16 && L[0].k == 5 && L[0].pad == 2 && L[0].stride == 1 && L[0].no_bias == 1);
  CHECK(L[2].k == 2 && L[2].stride == 0);
  CHECK(L[3].k == 2 && L[3].stride == 1);
  CHECK(L[4].groups == 4 && L[5].groups == 0);
  CHECK(L[6].out == 32 && L[6].stride == 2);
  CHECK(L[9].out == 128 && L[9].no_bias == 0);
  CHECK(L[10].p == 0.5f);
  CHECK(L[14].out == 8 && L[14].k == 3 && L[14].pad == 0 && L[14].no_bias == 0);
  CHECK(L[15].lambda == 0.5f && L[16].lambda == 1.0f);
  CHECK(e->model.nheads == 2);
  CHECK_STR(e->model.heads[0].name, "main");
  CHECK(e->model.heads[0].nlayers == 1);
  CHECK_STR(e->model.heads[0].layers[0].name, "fc");
  CHECK(e->model.heads[0].layers[0].op == NN_DENSE && e->model.heads[0].layers[0].out == 10 &&
        e->model.heads[0].layers[0].no_bias == 1);
  CHECK_STR(e->model.heads[1].name, "aux");
  CHECK(e->model.heads[1].nlayers == 2);
  CHECK_STR(e->model.heads[1].layers[0].name, "relu1");
  CHECK_STR(e->model.heads[1].layers[1].name, "dense1"); /* counts restart per stack */
  CHECK(e->model.heads[1].layers[1].out == 2);
  /* train */
  CHECK(e->epochs == 3 && e->max_steps == 1000 && e->batch == 64 && e->eval_batch == 500);
  CHECK(e->opt.kind == NN_OPT_ADAMW);
  CHECK_NEAR(e->opt.lr, 0.001, 1e-9);
  CHECK_NEAR(e->opt.beta1, 0.8, 1e-7);
  CHECK_NEAR(e->opt.beta2, 0.99, 1e-7);
  CHECK_NEAR(e->opt.eps, 1e-7, 1e-12);
  CHECK_NEAR(e->opt.weight_decay, 0.01, 1e-9);
  CHECK(e->sched.kind == NN_SCHED_COSINE && e->sched.warmup_steps == 100 &&
        e->sched.total_steps == 5000);
  CHECK_NEAR(e->sched.min_lr, 0.0001, 1e-10);
  CHECK_NEAR(e->clip_norm, 1.5, 1e-9);
  CHECK_NEAR(e->label_smoothing, 0.1, 1e-7);
  CHECK(e->threads == 2);
  CHECK(e->progress == 0);
}

static const char *BASE =
    "name: t\n"               /* 1 */
    "data:\n"                 /* 2 */
    "  train: mnist:train\n"  /* 3 */
    "  test: mnist:test\n"    /* 4 */
    "model:\n"                /* 5 */
    "  preset: cnn\n"         /* 6 */
    "train:\n"                /* 7 */
    "  epochs: 2\n";          /* 8 */

static void test_defaults_and_preset(void) {
  exp_experiment d;
  exp_defaults(&d);
  CHECK_OK(load(BASE, NULL, 0));
  const exp_experiment *e = &E;
  CHECK_STR(e->name, "t");
  CHECK_STR(e->preset, "cnn");
  CHECK(e->model.trunk.nlayers == 0 && e->model.nheads == 0);
  CHECK_STR(e->out_dir, "runs/t"); /* default: runs/<name> */
  CHECK_STR(e->data.name, "mnist"); /* default: the train shortcut's dataset */
  CHECK_STR(e->data.test.images, "/usr/share/datasets/mnist/t10k-images-idx3-ubyte.gz");
  CHECK_STR(e->data.test.labels, "/usr/share/datasets/mnist/t10k-labels-idx1-ubyte.gz");
  CHECK(e->epochs == 2);
  CHECK(e->seed == d.seed && e->data.seed == e->seed);
  CHECK(e->batch == d.batch && e->eval_batch == d.eval_batch && e->max_steps == 0);
  CHECK(e->opt.kind == d.opt.kind && e->opt.lr == d.opt.lr && e->opt.momentum == d.opt.momentum);
  CHECK(e->opt.beta1 == d.opt.beta1 && e->opt.beta2 == d.opt.beta2 && e->opt.eps == d.opt.eps);
  CHECK(e->sched.kind == d.sched.kind && e->sched.gamma == d.sched.gamma);
  CHECK(e->progress == -1 && e->threads == 0 && e->clip_norm == 0.0f);
  CHECK(e->data.nclasses_keep == 0 && e->data.ntf == 0 && e->data.naug == 0);
  CHECK(e->data.k_per_class == 0 && e->data.val_frac == 0.0);

  /* data.seed follows a non-zero top-level seed unless given */
  CHECK_OK(load("seed: 42\n"
                "data: {train: mnist:train, test: mnist:test}\n"
                "model: {preset: resnet}\n",
                NULL, 0));
  CHECK(E.seed == 42 && E.data.seed == 42);
  CHECK_STR(E.preset, "resnet");
  CHECK_STR(E.out_dir, "runs/experiment");

  /* sgd + step schedule + idx map with and without format */
  CHECK_OK(load("data:\n"
                "  train: {images: /d/a.gz, labels: /d/b.gz, limit: 1000}\n"
                "  test: {format: idx, images: /d/c, labels: /d/e}\n"
                "model: {preset: mlp}\n"
                "train:\n"
                "  optimizer: {name: sgd, lr: 0.1, momentum: 0.5, nesterov: true, weight_decay: 5e-4}\n"
                "  schedule: {name: step, step_size: 300, gamma: 0.5}\n"
                "  progress: bar\n",
                NULL, 0));
  CHECK(E.data.train.format == EXP_SRC_IDX && E.data.train.limit == 1000);
  CHECK_STR(E.data.train.images, "/d/a.gz");
  CHECK_STR(E.data.test.labels, "/d/e");
  CHECK_STR(E.data.name, "");
  CHECK(E.opt.kind == NN_OPT_SGD && E.opt.nesterov == 1);
  CHECK_NEAR(E.opt.momentum, 0.5, 1e-7);
  CHECK_NEAR(E.opt.weight_decay, 5e-4, 1e-10);
  CHECK(E.sched.kind == NN_SCHED_STEP && E.sched.step_size == 300 && E.sched.gamma == 0.5f);
  CHECK(E.progress == 1);

  /* bare names for optimizer and schedule; anchors and aliases */
  CHECK_OK(load("data: {train: mnist:train, test: mnist:test}\n"
                "model:\n"
                "  trunk: [flatten, {dense: 32}, relu]\n"
                "  heads:\n"
                "    a: &h [{dense: 10}]\n"
                "    b: *h\n"
                "train: {optimizer: adamw, schedule: cosine}\n",
                NULL, 0));
  CHECK(E.opt.kind == NN_OPT_ADAMW && E.sched.kind == NN_SCHED_COSINE);
  CHECK(E.model.nheads == 2 && E.model.heads[1].nlayers == 1 &&
        E.model.heads[1].layers[0].out == 10);
  CHECK_STR(E.model.heads[1].name, "b");
}

static void test_errors(void) {
  /* malformed YAML: libyaml's problem, with line and column */
  EXPECT_ERR("name: t\ndata:\n  train: mnist:train\n   test: x\n", "exp.yaml:4:", "malformed YAML");
  EXPECT_ERR("data: {train: [1, 2\n", "exp.yaml:", "malformed YAML");
  /* empty file, comments only, non-mapping top level */
  EXPECT_ERR("", "exp.yaml:1:1:", "empty");
  EXPECT_ERR("# just a comment\n\n", "exp.yaml:1:1:", "empty");
  EXPECT_ERR("- a\n- b\n", "exp.yaml:1:1:", "expected a mapping", "found a sequence");
  EXPECT_ERR("a: 1\n---\nb: 2\n", "exp.yaml:2:", "second");
  /* unknown keys, with and without a suggestion */
  EXPECT_ERR("name: t\ntrian:\n  epochs: 2\n",
             "exp.yaml:2:1: unknown key \"trian\" (did you mean \"train\"?)");
  EXPECT_ERR("name: t\nzzzzzz: 1\n", "exp.yaml:2:1: unknown key \"zzzzzz\" (known: name, seed");
  EXPECT_ERR("name: t\ndata:\n  train: mnist:train\n  test: mnist:test\nmodel: {preset: cnn}\n"
             "train:\n  bach: 3\n",
             "exp.yaml:7:3: train: unknown key \"bach\" (did you mean \"batch\"?)");
  EXPECT_ERR("data:\n  train: {images: a, labels: b, limitt: 3}\n",
             "exp.yaml:2:33: data.train: unknown key \"limitt\" (did you mean \"limit\"?)");
  /* unknown layer / transform */
  EXPECT_ERR("data: {train: mnist:train, test: mnist:test}\n"
             "model:\n"
             "  trunk:\n"
             "    - flatten\n"
             "    - convv: {out: 3, k: 3}\n"
             "  heads: {main: [{dense: 10}]}\n",
             "exp.yaml:5:7: model.trunk[1]: unknown layer \"convv\"", "did you mean \"conv\"?",
             "known: dense, conv, maxpool, avgpool, gap, relu");
  EXPECT_ERR("data:\n  train: mnist:train\n  transforms: [flip]\n",
             "exp.yaml:3:16: data.transforms[0]: unknown transform \"flip\"",
             "did you mean \"hflip\"?");
  /* type errors */
  EXPECT_ERR("train:\n  optimizer:\n    lr: fast\n",
             "exp.yaml:3:9: train.optimizer.lr: expected a number, found \"fast\"");
  EXPECT_ERR("train:\n  batch: 1.5\n", "exp.yaml:2:10: train.batch: expected an integer, found 1.5");
  EXPECT_ERR("train:\n  batch: abc\n", "train.batch: expected an integer, found \"abc\"");
  EXPECT_ERR("train:\n  batch: \"64\"\n", "train.batch: expected an integer, found \"64\"");
  EXPECT_ERR("train:\n  epochs: [1]\n", "train.epochs: expected an integer, found a sequence");
  EXPECT_ERR("train:\n  optimizer: {nesterov: yes}\n",
             "exp.yaml:2:25: train.optimizer.nesterov: expected true or false, found \"yes\"");
  EXPECT_ERR("seed: -1\n", "exp.yaml:1:7: seed: expected a non-negative integer, found -1");
  EXPECT_ERR("train:\n  optimizer: {lr: .inf}\n", "expected a number, found \".inf\"");
  EXPECT_ERR("data:\n  train: [1]\n", "exp.yaml:2:10: data.train: expected a dataset shortcut");
  EXPECT_ERR("data:\n  train: fashion-mnst:train\n",
             "data.train: unknown dataset shortcut \"fashion-mnst:train\"",
             "did you mean \"fashion-mnist:train\"?");
  EXPECT_ERR("model:\n  preset: cnnn\n", "exp.yaml:2:11: model.preset: unknown preset \"cnnn\"",
             "did you mean \"cnn\"?");
  EXPECT_ERR("train:\n  progress: fancy\n",
             "train.progress: expected one of auto, bar, plain, found \"fancy\"");
  EXPECT_ERR("train:\n  optimizer: adam\n",
             "train.optimizer: expected one of sgd, adamw, found \"adam\" (did you mean \"adamw\"?)");
  /* out of range */
  EXPECT_ERR("train:\n  batch: 0\n", "exp.yaml:2:10: train.batch: expected an integer >= 1, found 0");
  EXPECT_ERR("train:\n  optimizer: {lr: 0}\n", "train.optimizer.lr: expected a number > 0, found 0");
  EXPECT_ERR("train:\n  optimizer: {momentum: 1}\n",
             "train.optimizer.momentum: expected a number in [0, 1), found 1");
  EXPECT_ERR("data:\n  val_frac: 1.0\n", "data.val_frac: expected a number in [0, 1), found 1.0");
  EXPECT_ERR("train:\n  label_smoothing: -0.1\n", "train.label_smoothing: expected a number in [0, 1)");
  EXPECT_ERR("train:\n  epochs: 99999999999\n", "train.epochs: expected an integer in [");
  EXPECT_ERR("model:\n  trunk: [{dropout: 1.5}]\n",
             "exp.yaml:2:21: model.trunk[0].dropout: expected a number in [0, 1), found 1.5");
  EXPECT_ERR("model:\n  trunk: [{conv: {out: 0, k: 3}}]\n",
             "model.trunk[0].conv.out: expected an integer >= 1, found 0");
  EXPECT_ERR("data:\n  augment: [{crop: 1.5}]\n", "data.augment[0].crop: expected an integer, found 1.5");
  EXPECT_ERR("data:\n  transforms: [{normalize: {mean: 0.5, std: 0}}]\n",
             "data.transforms[0].normalize.std: expected a number > 0, found 0");
  EXPECT_ERR("data:\n  transforms: [{normalize: {mean: [1, 2], std: [1, 2, 3]}}]\n",
             "data.transforms[0].normalize: mean has 2 values but std has 3");
  EXPECT_ERR("data:\n  classes: [1, 2, -3]\n",
             "exp.yaml:2:19: data.classes[2]: expected an integer >= 0, found -3");
  EXPECT_ERR("data:\n  classes: [1, 2, 1]\n",
             "exp.yaml:2:19: data.classes[2]: duplicate class 1 (also data.classes[0])");
  /* layers: missing parameters, wrong shapes of items, duplicate names */
  EXPECT_ERR("model:\n  trunk:\n    - dropout\n", "exp.yaml:3:7: model.trunk[0].dropout: missing p");
  EXPECT_ERR("model:\n  trunk:\n    - conv: {out: 3}\n", "model.trunk[0].conv.k: required");
  EXPECT_ERR("model:\n  trunk:\n    - conv: 3\n",
             "model.trunk[0].conv: expected a mapping with keys out, k, stride, pad, bias, name");
  EXPECT_ERR("model:\n  trunk:\n    - relu: 3\n", "model.trunk[0].relu: expected a mapping with keys name");
  EXPECT_ERR("model:\n  trunk:\n    - conv:\n      out: 3\n",
             "exp.yaml:3:7: model.trunk[0]: expected one layer per item, found a mapping with 2 keys");
  EXPECT_ERR("model:\n  trunk: []\n", "model.trunk: expected a non-empty sequence of layers");
  EXPECT_ERR("model:\n  trunk:\n    - dense: {out: 3, name: fc}\n    - relu\n"
             "    - dense: {out: 3, name: fc}\n",
             "exp.yaml:5:7: model.trunk[2]: duplicate layer name \"fc\" (also model.trunk[0]");
  EXPECT_ERR("model:\n  trunk: [{conv: {out: 3, k: 3, name: conv2}}, {conv: {out: 3, k: 3}}]\n",
             "model.trunk[1]: duplicate layer name \"conv2\"");
  EXPECT_ERR("model:\n  trunk: [{dense: {out: 3, name: a.b}}]\n",
             "model.trunk[0].dense.name: expected a name of letters");
  EXPECT_ERR("data:\n  transforms: [rotate]\n", "data.transforms[0].rotate: missing angle");
  EXPECT_ERR("data:\n  transforms: [{rotate: {degrees: 3, max_degrees: 4}}]\n",
             "data.transforms[0].rotate: give degrees or max_degrees, not both");
  /* duplicate keys */
  EXPECT_ERR("train:\n  batch: 1\n  epochs: 2\n  batch: 2\n",
             "exp.yaml:4:3: train: duplicate key \"batch\" (first at line 2)");
  EXPECT_ERR("model:\n  heads:\n    a: [relu]\n    a: [relu]\n", "exp.yaml:4:5: model.heads: duplicate key \"a\"");
  /* required keys and model shape */
  EXPECT_ERR("name: t\ndata:\n  test: mnist:test\nmodel: {preset: cnn}\n", "exp.yaml:3:3: data.train: required");
  EXPECT_ERR("name: t\nmodel: {preset: cnn}\n", "data: required");
  EXPECT_ERR("data: {train: mnist:train, test: mnist:test}\n", "model: required");
  EXPECT_ERR("data: {train: mnist:train, test: mnist:test}\nmodel:\n  trunk: [relu]\n",
             "model.heads: at least one head");
  EXPECT_ERR("data: {train: mnist:train, test: mnist:test}\nmodel:\n  preset: cnn\n  trunk: [relu]\n",
             "exp.yaml:4:3: model.trunk: not allowed with model.preset");
  EXPECT_ERR("data: {train: mnist:train, test: mnist:test}\nmodel: {}\n", "model.preset: required");
  EXPECT_ERR("data:\n  train: {format: csv}\n", "data.train.path: required");
  EXPECT_ERR("data:\n  train: {images: a}\n", "data.train.labels: required");
  /* keys that belong to another variant */
  EXPECT_ERR("train:\n  optimizer: {name: adamw, momentum: 0.9}\n",
             "exp.yaml:2:28: train.optimizer.momentum: not used when name is adamw (only with sgd)");
  EXPECT_ERR("data:\n  train: {images: a, labels: b, image: [2, 2]}\n",
             "data.train.image: not used when format is idx (only with csv)");
  EXPECT_ERR("train:\n  schedule: step\n", "train.schedule.step_size: required");
  EXPECT_ERR("train:\n  schedule: {name: cosine, gamma: 0.1}\n",
             "train.schedule.gamma: not used when name is cosine (only with step)");
  EXPECT_ERR("train:\n  optimizer: {momentum: 0, nesterov: true}\n",
             "train.optimizer.nesterov: needs momentum > 0");
  /* resource limits */
  EXPECT_ERR("a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]"
             "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
             "nested deeper than 64 levels");
  EXPECT_ERR("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
             "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
             "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
             "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
             "more than 100000 YAML nodes");
  EXPECT_ERR("a: *nope\n", "exp.yaml:1:4:", "unknown alias *nope");
}

static void test_overrides(void) {
  const char *base = "name: t\n"
                     "data: {train: mnist:train, test: mnist:test}\n"
                     "model:\n"
                     "  trunk: [flatten, {dense: 128}, relu]\n"
                     "  heads: {main: [{dense: 10}]}\n"
                     "train:\n"
                     "  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n";
  /* scalar */
  CHECK_OK(load(base, (const char *const[]){"train.optimizer.lr=0.1"}, 1));
  CHECK_NEAR(E.opt.lr, 0.1, 1e-7);
  CHECK_NEAR(E.opt.momentum, 0.9, 1e-7);
  /* list */
  CHECK_OK(load(base, (const char *const[]){"data.classes=[5,6,7,8,9]"}, 1));
  CHECK(E.data.nclasses_keep == 5 && E.data.classes[0] == 5 && E.data.classes[4] == 9);
  /* a mapping replaces the whole mapping (momentum must not linger for adamw) */
  CHECK_OK(load(base, (const char *const[]){"train.optimizer={name: adamw, lr: 0.001}"}, 1));
  CHECK(E.opt.kind == NN_OPT_ADAMW);
  CHECK_NEAR(E.opt.lr, 0.001, 1e-9);
  /* keys and mappings that are missing are created */
  CHECK_OK(load(base, (const char *const[]){"train.schedule.name=cosine", "seed=5", "data.seed=9"},
                3));
  CHECK(E.sched.kind == NN_SCHED_COSINE && E.seed == 5 && E.data.seed == 9);
  CHECK_OK(load(BASE, (const char *const[]){"train.optimizer.lr=0.3", "data.transforms=[invert]"}, 2));
  CHECK_NEAR(E.opt.lr, 0.3, 1e-7);
  CHECK(E.data.ntf == 1 && E.data.tf[0].kind == NN_TF_INVERT);
  CHECK_OK(load("data: {train: mnist:train, test: mnist:test}\nmodel: {preset: cnn}\n",
                (const char *const[]){"train.batch=32"}, 1));
  CHECK(E.batch == 32);
  /* list items by index; one past the end appends; later overrides win */
  CHECK_OK(load(base,
                (const char *const[]){"model.trunk.1.dense=64", "model.trunk.2=gelu",
                                      "model.trunk.3={dropout: 0.25}", "train.batch=8",
                                      "train.batch=16"},
                5));
  CHECK(E.model.trunk.nlayers == 4 && E.model.trunk.layers[1].out == 64);
  CHECK(E.model.trunk.layers[2].op == NN_GELU && E.model.trunk.layers[3].op == NN_DROPOUT);
  CHECK(E.model.trunk.layers[3].p == 0.25f && E.batch == 16);
  /* switching to a preset by removing the layers is not possible: preset + trunk is an error */
  EXPECT_SET_ERR(base, "model.preset=mlp", "exp.yaml:4:3: model.trunk: not allowed with model.preset");
  CHECK_OK(load(BASE, (const char *const[]){"model.preset=mlp"}, 1));
  CHECK_STR(E.preset, "mlp");
  /* strings that look like other things stay what YAML says */
  CHECK_OK(load(BASE, (const char *const[]){"name=123", "out=/tmp/x y"}, 2));
  CHECK_STR(E.name, "123");
  CHECK_STR(E.out_dir, "/tmp/x y");
  /* errors name the override */
  EXPECT_SET_ERR(base, "train.bach=3",
                 "--set train.bach=3: train: unknown key \"bach\" (did you mean \"batch\"?)");
  EXPECT_SET_ERR(base, "trian.batch=3", "--set trian.batch=3: unknown key \"trian\"");
  EXPECT_SET_ERR(base, "train.batch=abc",
                 "--set train.batch=abc: train.batch: expected an integer, found \"abc\"");
  EXPECT_SET_ERR(base, "train.optimizer.momentum=2",
                 "--set train.optimizer.momentum=2: train.optimizer.momentum: expected a number in [0, 1)");
  EXPECT_SET_ERR(base, "data.classes=[1,2", "--set data.classes=[1,2: malformed YAML");
  EXPECT_SET_ERR(base, "train.batch", "--set train.batch: expected KEY=VALUE");
  EXPECT_SET_ERR(base, "=3", "--set =3: expected KEY=VALUE");
  EXPECT_SET_ERR(base, "train..batch=3", "--set train..batch=3: empty name");
  EXPECT_SET_ERR(base, "name.x=3", "--set name.x=3: name: is \"t\", not a mapping");
  EXPECT_SET_ERR(base, "model.trunk.7.dense=3", "--set model.trunk.7.dense=3: model.trunk: is a sequence of 3 items");
  EXPECT_SET_ERR(base, "train.batch=", "--set train.batch=: train.batch: expected an integer, found nothing");
  EXPECT_SET_ERR(base, "train.optimizer={name: adamw, momentum: 0.9}",
                 "train.optimizer.momentum: not used when name is adamw");
  /* transfer grids: up to 64 seeds (statistics over K-shot draws), 16 Ks */
  const char *tbase = "data: {train: mnist:train, test: mnist:test}\n"
                      "model: {preset: mlp}\n"
                      "transfer:\n"
                      "  targets: [{name: t, data: {train: mnist:train, test: mnist:test}}]\n";
  char seeds[512] = "transfer.seeds=[0", ks[128] = "transfer.k=[1";
  for (int i = 1; i < EXP_MAX_SEEDS; i++)
    snprintf(seeds + strlen(seeds), sizeof seeds - strlen(seeds), ",%d", 100 + i);
  strcat(seeds, "]");
  CHECK_OK(load(tbase, (const char *const[]){seeds}, 1));
  CHECK(E.transfer.nseeds == EXP_MAX_SEEDS && E.transfer.seeds[EXP_MAX_SEEDS - 1] == 100 + EXP_MAX_SEEDS - 1);
  strcpy(seeds + strlen(seeds) - 1, ",7]");
  EXPECT_SET_ERR(tbase, seeds, "transfer.seeds: expected an integer or a list of 1 to 64 integers");
  for (int i = 1; i < EXP_MAX_GRID + 1; i++)
    snprintf(ks + strlen(ks), sizeof ks - strlen(ks), ",%d", 1 + i);
  strcat(ks, "]");
  EXPECT_SET_ERR(tbase, ks, "transfer.k: expected an integer or a list of 1 to 16 integers");
}

static void test_files_and_hash(void) {
  char path[] = "/tmp/ferry_test_config_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  FILE *f = fdopen(fd, "w");
  fputs(FULL, f);
  fclose(f);
  ferry_err_clear();
  CHECK_OK(cfg_load(&E, path, NULL, 0));
  CHECK_STR(E.text_path, path);
  CHECK(E.model.trunk.nlayers == 18);
  uint64_t h0 = 0, h1 = 0, h2 = 0;
  const char *const s1[] = {"train.batch=8"}, *const s2[] = {"train.batch=9"};
  CHECK(cfg_file_hash(&h0, path, NULL, 0) == 0);
  CHECK(cfg_file_hash(&h1, path, s1, 1) == 0);
  CHECK(cfg_file_hash(&h2, path, s2, 1) == 0);
  CHECK(h0 == cfg_text_hash(FULL, strlen(FULL), NULL, 0));
  CHECK(h1 == cfg_text_hash(FULL, strlen(FULL), s1, 1));
  CHECK(h0 != h1 && h1 != h2 && h0 != h2);
  /* an override is not the same as the same bytes appended to the file */
  CHECK(cfg_text_hash("ab", 2, NULL, 0) != cfg_text_hash("a", 1, (const char *const[]){"b"}, 1));
  /* errors in a file name the file */
  ferry_err_clear();
  CHECK(cfg_load(&E, path, s1, 1) == 0 && E.batch == 8);
  remove(path);

  ferry_err_clear();
  CHECK(cfg_load(&E, "/nonexistent/dir/exp.yaml", NULL, 0) == FERRY_EUSER);
  CHECK_MSG(strstr(ferry_err_msg(), "/nonexistent/dir/exp.yaml") != NULL, "%s", ferry_err_msg());
  ferry_err_clear();
  CHECK(cfg_file_hash(&h0, "/nonexistent/dir/exp.yaml", NULL, 0) == FERRY_EUSER);

  char bad[] = "/tmp/ferry_test_config_XXXXXX";
  fd = mkstemp(bad);
  CHECK(fd >= 0);
  if (fd < 0) return;
  f = fdopen(fd, "w");
  fputs("name: t\ntrain:\n  optimizer:\n    lr: fast\n", f);
  fclose(f);
  ferry_err_clear();
  CHECK(cfg_load(&E, bad, NULL, 0) == FERRY_EUSER);
  char want[128];
  snprintf(want, sizeof want, "%s:4:9: train.optimizer.lr: expected a number", bad);
  CHECK_MSG(strstr(ferry_err_msg(), want) != NULL, "%s", ferry_err_msg());
  remove(bad);
}

/* Reads a whole file; NULL if it cannot. */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) n = 0;
  if (buf) buf[n] = '\0';
  fclose(f);
  return buf;
}

static void test_reference(void) {
  char *ref = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&ref, &len);
  cfg_print_reference(f);
  fclose(f);
  CHECK(len > 1000);
  /* every key the parser accepts has a line starting with its path */
  for (size_t i = 0; i < sizeof ALL_KEYS / sizeof ALL_KEYS[0]; i++) {
    char want[96];
    snprintf(want, sizeof want, "\n%s ", ALL_KEYS[i]);
    CHECK_MSG(strstr(ref, want) != NULL || !strncmp(ref, want + 1, strlen(want + 1)),
              "reference lacks key %s", ALL_KEYS[i]);
  }
  /* layers, transforms and their parameters */
  static const char *const items[] = {"\n  dense ", "\n  conv ", "\n  maxpool ", "\n  avgpool ",
                                      "\n  gap ", "\n  relu ", "\n  gelu ", "\n  tanh ",
                                      "\n  sigmoid ", "\n  dropout ", "\n  flatten ",
                                      "\n  groupnorm ", "\n  residual ", "\n  grl ",
                                      "\n  normalize ", "\n  invert ", "\n  rotate ",
                                      "\n  noise ", "\n  crop ", "\n  hflip ",
                                      "\n    max_degrees ", "\n    lambda *", "\n    bias "};
  for (size_t i = 0; i < sizeof items / sizeof items[0]; i++)
    CHECK_MSG(strstr(ref, items[i]) != NULL, "reference lacks \"%s\"", items[i] + 1);
  /* defaults come from exp_defaults(), variant-only keys are marked */
  CHECK(strstr(ref, "[name sgd only]") != NULL);
  CHECK(strstr(ref, "[format csv only]") != NULL);
  CHECK(strstr(ref, "0.999") != NULL);
  CHECK(strstr(ref, "number in [0, 1)") != NULL);

  /* docs/experiment-format.md documents every key the reference lists */
  char docs[512];
  const char *src = __FILE__, *cut = strstr(src, "tests/unit/test_config.c");
  if (cut)
    snprintf(docs, sizeof docs, "%.*sdocs/experiment-format.md", (int)(cut - src), src);
  else
    snprintf(docs, sizeof docs, "docs/experiment-format.md");
  char *md = slurp(docs);
  CHECK_MSG(md != NULL, "cannot read %s", docs);
  if (md) {
    int missing = 0;
    for (char *line = ref; line && *line;) {
      char *end = strchr(line, '\n');
      size_t n = end ? (size_t)(end - line) : strlen(line);
      char key[128];
      if (line[0] != '#' && line[0] != ' ' && n) {
        size_t k = strcspn(line, " ");
        snprintf(key, sizeof key, "`%.*s`", (int)k, line);
      } else if (!strncmp(line, "  ", 2) && line[2] != ' ') {
        size_t k = strcspn(line + 2, " ");
        snprintf(key, sizeof key, "`%.*s`", (int)k, line + 2);
      } else {
        key[0] = '\0';
      }
      if (key[0] && !strstr(md, key)) {
        missing++;
        fprintf(stderr, "docs lack %s\n", key);
      }
      line = end ? end + 1 : NULL;
    }
    CHECK_MSG(missing == 0, "%d keys of the reference are not in %s", missing, docs);
    free(md);
  }
  if (getenv("TEST_CONFIG_VERBOSE")) fputs(ref, stdout);
  free(ref);
}

int main(void) {
  test_full();
  test_defaults_and_preset();
  test_errors();
  test_overrides();
  test_files_and_hash();
  test_reference();
  return check_report();
}
