/* sgd.h -- SGD with momentum, weight decay and Nesterov, fused over many parameter tensors.
 * Semantics are torch.optim.SGD's (https://pytorch.org/docs/stable/generated/torch.optim.SGD.html):
 *   d = grad + weight_decay * param
 *   if momentum != 0: buf = d (first step) or momentum * buf + (1 - dampening) * d
 *                     d = d + momentum * buf (nesterov) or buf
 *   param -= lr * d
 */
#ifndef DTKD_SGD_H
#define DTKD_SGD_H

#include "dtkd.h"

/* One update of `count` tensors in place: params[i], momentum_bufs[i] and grads[i] each hold
 * sizes[i] floats. momentum_bufs may be NULL when momentum == 0. first_step != 0 initialises
 * every buffer to the (decayed) gradient as torch does on its first step. */
int dtkd_sgd_step(float *const *params, float *const *momentum_bufs, const float *const *grads,
                  const long *sizes, long count, float lr, float momentum, float dampening,
                  float weight_decay, int nesterov, int first_step);

#endif
