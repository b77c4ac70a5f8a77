/* SGD update, torch.optim.SGD semantics (see sgd.h). Memory-bound and elementwise: one OpenMP
 * team shares the elements of every tensor, so small and large tensors both split evenly. */
#include "kernels/sgd.h"

#include <math.h>

/* param, buf, grad are (n,); updates param (and buf when momentum != 0) in place. */
static void sgd_update_tensor(float *param, float *buf, const float *grad, long n, float lr,
                              float momentum, float dampening, float weight_decay, int nesterov,
                              int first_step)
{
    #pragma omp for schedule(static) nowait
    for (long i = 0; i < n; i++) {
        float d = grad[i];
        if (weight_decay != 0.0f) d += weight_decay * param[i];
        if (momentum != 0.0f) {
            float b = first_step ? d : momentum * buf[i] + (1.0f - dampening) * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        param[i] -= lr * d;
    }
}

int dtkd_sgd_step(float *const *params, float *const *momentum_bufs, const float *const *grads,
                  const long *sizes, long count, float lr, float momentum, float dampening,
                  float weight_decay, int nesterov, int first_step)
{
    if (count < 0) return DTKD_ERR_SHAPE;
    if (!isfinite(lr) || lr < 0.0f || !isfinite(momentum) || momentum < 0.0f ||
        !isfinite(dampening) || !isfinite(weight_decay) || weight_decay < 0.0f)
        return DTKD_ERR_VALUE;
    /* torch: Nesterov momentum requires a momentum and zero dampening */
    if (nesterov && (momentum <= 0.0f || dampening != 0.0f)) return DTKD_ERR_VALUE;
    if (momentum != 0.0f && !momentum_bufs) return DTKD_ERR_VALUE;
    for (long t = 0; t < count; t++)
        if (sizes[t] < 0) return DTKD_ERR_SHAPE;

    #pragma omp parallel num_threads(dtkd_get_num_threads())
    for (long t = 0; t < count; t++)
        sgd_update_tensor(params[t], momentum_bufs ? momentum_bufs[t] : NULL, grads[t], sizes[t],
                          lr, momentum, dampening, weight_decay, nesterov, first_step);
    return DTKD_OK;
}
