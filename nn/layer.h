/* Layers: an enum + name table + one forward/backward pair per op
 * (nn/layer.c dispatches with a switch). Adding a layer is a fixed checklist:
 * enum value, name in nn_op_names, shape rule in nn_layer_setup, forward,
 * backward, initialiser, and a gradient check in tests/test_gradcheck.c.
 *
 * Activation layout. A per-sample shape is (c, h, w). Spatial tensors (the
 * output of images, conv, pooling) are stored channel-major over the batch,
 * [c][B][h][w] ("CNHW"): a convolution over the whole batch is then one sgemm
 * whose output needs no transpose, and per-channel work is contiguous. Flat
 * tensors (after flatten, GAP or dense) are [B][c] with h = w = 1. For c = 1
 * the two layouts coincide. Every layer states which layout it takes. */
#ifndef FERRY_NN_LAYER_H
#define FERRY_NN_LAYER_H

#include <stddef.h>
#include <stdint.h>

#define NN_NAME_MAX 48

typedef enum {
  NN_DENSE,     /* flat [B][in] -> [B][out]; W [out][in], b [out] */
  NN_CONV2D,    /* spatial; W [out][in_c*k*k], b [out]; stride, pad */
  NN_MAXPOOL2D, /* spatial; k, stride (default k) */
  NN_AVGPOOL2D, /* spatial; k, stride (default k), no padding */
  NN_GAP,       /* global average pool: spatial [c][B][h][w] -> flat [B][c] */
  NN_RELU,
  NN_GELU, /* tanh approximation */
  NN_TANH,
  NN_SIGMOID,
  NN_DROPOUT,   /* inverted dropout, p = drop probability, mask keyed by sample id */
  NN_FLATTEN,   /* spatial -> flat [B][c*h*w] in (c, h, w) order */
  NN_GROUPNORM, /* per-sample groups (groups=1 is LayerNorm over c,h,w); gamma, beta [c] */
  NN_RESIDUAL,  /* basic block: conv3x3(s)-GN-ReLU-conv3x3-GN + shortcut (1x1 conv s + GN when shape changes), ReLU */
  NN_GRL,       /* gradient reversal: y = x, dx = -lambda * dy */
  NN_OP_COUNT
} nn_op;

extern const char *const nn_op_names[NN_OP_COUNT];
/* Returns the op whose name is s, or -1. */
int nn_op_from_name(const char *s);

typedef struct {
  int c, h, w;
} nn_shape;

static inline size_t nn_shape_numel(nn_shape s) { return (size_t)s.c * s.h * s.w; }

/* What a user writes for one layer. Unused fields are 0. */
typedef struct {
  nn_op op;
  char name[NN_NAME_MAX]; /* unique in its stack; filled in when empty */
  int out;                /* dense units, conv/residual out channels */
  int k, stride, pad;     /* conv/pool kernel; stride 0 = default */
  int groups;             /* groupnorm groups (must divide c) */
  int no_bias;            /* dense/conv without bias */
  float p;                /* dropout probability in [0, 1) */
  float lambda;           /* grl scale */
} nn_layer_spec;

typedef struct nn_layer nn_layer;

/* One pass over a micro-batch of B rows. */
typedef struct {
  int B;
  int training;       /* dropout active only when set */
  uint64_t key;       /* per-step random key (dropout) */
  const int64_t *ids; /* global sample ids of the B rows; NULL = row index */
} nn_pass;

struct nn_layer {
  nn_layer_spec spec;
  nn_shape in, out;
  int in_spatial, out_spatial;
  int need_dx;       /* backward must produce dx (some earlier layer trains) */
  int frozen;        /* no parameter gradients computed */
  int group;         /* parameter group index in the model, -1 if no params */
  size_t p_off;      /* offset of W (then b) in the model's parameter slab */
  size_t w_len, b_len;
  float *W, *b, *dW, *db; /* into the model slabs; NULL when absent */
  float *y;          /* output activations, max_batch * numel(out) */
  float *aux;        /* saved state: conv planes/tables or im2col, pool argmax, GN stats, dropout mask */
  size_t aux_len;    /* floats of aux per max_batch */
  float *scratch;    /* residual: internal buffers */
  nn_layer *sub;     /* residual: body (5 layers) then shortcut (0 or 2) */
  int nsub, nbody;
};

/* Computes out shape, parameter and workspace sizes of a layer from its spec
 * and input shape. Returns FERRY_EUSER with a message naming the layer and the
 * expected vs found shape when shapes do not chain. Not collective. */
int nn_layer_setup(nn_layer *L, const nn_layer_spec *spec, nn_shape in, int in_spatial);
/* Floats of workspace the layer needs at batch size B (y, aux, scratch). */
size_t nn_layer_ws_floats(const nn_layer *L, int B);
/* Points y/aux/scratch into ws (which must hold nn_layer_ws_floats); returns
 * the floats used. */
size_t nn_layer_bind_ws(nn_layer *L, float *ws, int B);
/* Number of parameters (weights + biases) including sub-layers. */
size_t nn_layer_nparams(const nn_layer *L);
/* Points W/b/dW/db (and sub-layers') at params+off / grads+off; returns floats used. */
size_t nn_layer_bind_params(nn_layer *L, float *params, float *grads, size_t off);
/* Seeded initialisation: He-normal (fan_in) for a dense/conv followed by a
 * ReLU-like activation (relu_next), Xavier-uniform otherwise; biases zero;
 * GN gamma 1 beta 0. Keyed by (seed, layer name) so that adding a head does
 * not change the trunk's initial values. */
void nn_layer_init(nn_layer *L, uint64_t seed, int relu_next);

/* Initialisation schemes for dense and conv weights (fan_in = inputs per
 * output unit):
 *  NN_INIT_TORCH  (default) He/Kaiming-uniform with negative slope a = sqrt(5),
 *                 i.e. W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise:
 *                 PyTorch's nn.Linear / nn.Conv2d defaults, so learning rates
 *                 tuned there carry over (SGD lr 0.05 + momentum 0.9 on the CNN
 *                 is unstable early with plain He-normal);
 *  NN_INIT_HE     He-normal N(0, 2/fan_in) before ReLU-like layers, Xavier-
 *                 uniform otherwise, zero bias (nn_layer_init);
 *  NN_INIT_XAVIER Xavier-uniform everywhere, zero bias. */
typedef enum { NN_INIT_TORCH, NN_INIT_HE, NN_INIT_XAVIER, NN_INIT_COUNT } nn_init_scheme;
extern const char *const nn_init_names[NN_INIT_COUNT];
void nn_layer_init_scheme(nn_layer *L, uint64_t seed, int relu_next, nn_init_scheme scheme);
/* Forward over B rows: reads x, writes L->y (and aux). */
void nn_layer_forward(nn_layer *L, const float *x, const nn_pass *p);
/* Backward: given x (the forward input) and dy, ACCUMULATES (+=) parameter
 * gradients into dW/db unless frozen, and writes dx when dx != NULL. */
void nn_layer_backward(nn_layer *L, const float *x, const float *dy, float *dx, const nn_pass *p);
void nn_layer_free(nn_layer *L); /* frees sub-layers only; not the layer itself */

#endif
