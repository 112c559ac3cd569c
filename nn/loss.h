/* Losses. Each returns the SUM of per-row losses (times weights) divided by
 * norm, and writes dlogits = d(returned value)/d(logits). The caller chooses
 * norm (e.g. the number of labelled rows in the GLOBAL batch), so a batch
 * split over ranks sums to exactly the single-rank loss and gradient. */
#ifndef FERRY_NN_LOSS_H
#define FERRY_NN_LOSS_H

#include <stdint.h>

typedef enum { NN_LOSS_XENT, NN_LOSS_BCE, NN_LOSS_MSE, NN_LOSS_COUNT } nn_loss_kind;
extern const char *const nn_loss_names[NN_LOSS_COUNT];
int nn_loss_from_name(const char *s); /* -1 if unknown */

/* Softmax cross-entropy over logits [B][K] with int labels [B]. Rows with
 * label == ignore_index (use -1 for unlabelled) contribute nothing. weights
 * [B] (NULL = all 1) scale each row. smoothing in [0,1): target is
 * (1-s)*onehot + s/K. dlogits may be NULL (evaluation). Not collective. */
double nn_loss_xent(const float *logits, const int32_t *labels, const float *weights,
                    int B, int K, float smoothing, int ignore_index, double norm,
                    float *dlogits);
/* Binary cross-entropy with logits [B][K] against targets in [0,1] [B][K];
 * numerically stable (log-sum-exp form). weights [B] or NULL. */
double nn_loss_bce(const float *logits, const float *targets, const float *weights,
                   int B, int K, double norm, float *dlogits);
/* Mean squared error: sum_k (y-t)^2 per row, weights [B] or NULL. */
double nn_loss_mse(const float *pred, const float *targets, const float *weights,
                   int B, int K, double norm, float *dlogits);

/* Index of the largest logit of each row into out[B]. */
void nn_argmax(const float *logits, int B, int K, int32_t *out);

#endif
