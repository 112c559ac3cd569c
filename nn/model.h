/* A model is a trunk (a stack of layers) plus one or more named heads, each a
 * stack on the trunk's output. Parameters, gradients live in two slabs of
 * nparams floats (one buffer to allreduce, one to checkpoint), laid out trunk
 * first then heads in order, each layer's block 16-float aligned. Activations
 * come from one workspace sized once for max_batch: a training step does no
 * malloc.
 *
 * Parameter groups: one per layer that has parameters, named "<stack>.<layer>"
 * (e.g. "trunk.conv1", "head.main.fc"). Each has an lr multiplier and a frozen
 * flag; the optimizer and gradient sync read them. */
#ifndef FERRY_NN_MODEL_H
#define FERRY_NN_MODEL_H

#include "layer.h"

#define NN_MAX_HEADS 16
#define NN_MAX_LAYERS 64

typedef struct {
  char name[NN_NAME_MAX];
  int nlayers;
  nn_layer_spec layers[NN_MAX_LAYERS];
} nn_stack_spec;

/* Everything needed to rebuild a model (checkpoints store this). */
typedef struct {
  nn_shape in;
  int in_spatial;
  nn_stack_spec trunk;
  int nheads;
  nn_stack_spec heads[NN_MAX_HEADS];
  int init;              /* nn_init_scheme of nn_model_init_params */
} nn_model_spec;

typedef struct {
  char name[2 * NN_NAME_MAX + 8];
  size_t off, len; /* range in the slabs */
  float lr_mult;
  int frozen;
  int stack;       /* -1 trunk, else head index */
  int layer;       /* index in its stack */
} nn_param_group;

typedef struct {
  char name[NN_NAME_MAX];
  int nlayers;
  nn_layer *layers;
} nn_stack;

typedef struct nn_model {
  nn_model_spec spec;
  nn_stack trunk;
  int nheads;
  nn_stack heads[NN_MAX_HEADS];
  nn_shape feat;       /* trunk output shape; must be flat when heads exist */
  size_t nparams;
  float *params, *grads;
  int ngroups;
  nn_param_group *groups;
  int max_batch;
  float *ws;           /* activations */
  size_t ws_len;
  float *gbuf[2];      /* backward ping-pong, each max activation size */
  float *dfeat;        /* gradient w.r.t. trunk output, accumulated over heads */
  float *dfeat_tmp;    /* a further head's feature gradient before it is added */
  int dfeat_valid;     /* dfeat holds a head's contribution this pass */
  const float *trunk_in; /* input of the last trunk forward */
} nn_model;

/* Called after a layer's parameter gradients are final during
 * nn_model_backward_trunk/_head: [off, off+len) of the grad slab is ready.
 * Also a point where a caller can drive communication progress. */
typedef void (*nn_grad_ready_fn)(void *ctx, size_t off, size_t len);

/* Builds the model (validating shapes; FERRY_EUSER with a message naming the
 * stack/layer on mismatch), allocates slabs and workspace for max_batch.
 * Parameters are zero until nn_model_init_params. *out owned by the caller:
 * free with nn_model_free. Not collective. */
int nn_model_new(nn_model **out, const nn_model_spec *spec, int max_batch);
void nn_model_free(nn_model **m);
void nn_model_init_params(nn_model *m, uint64_t seed);
/* Head index by name, or -1. */
int nn_model_head(const nn_model *m, const char *name);
/* Output size of head h (number of logits). */
int nn_model_head_out(const nn_model *m, int h);

void nn_model_zero_grad(nn_model *m);
/* Trunk forward on x (layout of the input shape); returns the features
 * (flat [B][feat.c]). x must stay valid until the backward. */
const float *nn_model_forward_trunk(nn_model *m, const float *x, const nn_pass *p);
/* Head h forward on features [B][feat.c] (trunk output or cached); returns
 * logits [B][nn_model_head_out]. */
const float *nn_model_forward_head(nn_model *m, int h, const float *feat, const nn_pass *p);
/* Head backward from dlogits: accumulates head parameter gradients and, if the
 * trunk trains, adds the feature gradient into m->dfeat. feat is what the
 * head's forward was given. */
void nn_model_backward_head(nn_model *m, int h, const float *feat, const float *dlogits,
                            const nn_pass *p, nn_grad_ready_fn cb, void *ctx);
/* Trunk backward from the accumulated m->dfeat; clears dfeat_valid. */
void nn_model_backward_trunk(nn_model *m, const nn_pass *p, nn_grad_ready_fn cb, void *ctx);

/* Convenience: trunk + head h forward. */
const float *nn_model_forward(nn_model *m, int h, const float *x, const nn_pass *p);
/* Convenience: head h backward then trunk backward. */
void nn_model_backward(nn_model *m, int h, const float *dlogits, const nn_pass *p,
                       nn_grad_ready_fn cb, void *ctx);

/* Parameter groups whose name starts with prefix ("trunk", "head.main",
 * "trunk.conv1", "" for all). Returns how many matched. Freezing recomputes
 * which layers need dx, so frozen prefixes cost no backward work. */
int nn_model_set_frozen(nn_model *m, const char *prefix, int frozen);
int nn_model_set_lr_mult(nn_model *m, const char *prefix, float mult);
/* Sets lambda on every gradient-reversal layer. */
void nn_model_set_grl_lambda(nn_model *m, float lambda);
/* Number of trainable (unfrozen) parameters. */
size_t nn_model_trainable(const nn_model *m);

/* Presets. "mlp": flatten-dense256-relu-dense128-relu | head dense nclasses.
 * "cnn": conv16k5p2-relu-maxpool2-conv32k5p2-relu-maxpool2-flatten-dense128-relu
 *        | head dense nclasses.
 * "resnet": conv16k3p1-GN-relu, residual 16, residual 32 s2, residual 64 s2,
 *        GAP | head dense nclasses.
 * Fills spec->trunk and one head named head_name. FERRY_EUSER on unknown name. */
int nn_model_preset(nn_model_spec *spec, const char *preset, const char *head_name, int nclasses);

#endif
