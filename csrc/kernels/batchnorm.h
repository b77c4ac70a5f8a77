/* batchnorm.h -- 2-D batch normalization over NCHW activations, per channel, as
 * torch.nn.functional.batch_norm (https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html).
 * Statistics accumulate in double. */
#ifndef DTKD_BATCHNORM_H
#define DTKD_BATCHNORM_H

/* Training: batch statistics over (N, H, W). save_mean/save_invstd (C,) receive the batch mean and
 * 1/sqrt(biased var + eps) for the backward. running_mean/var (C,) (both NULL: not tracked) are
 * updated in place: r = (1 - momentum) * r + momentum * batch, with the UNBIASED variance.
 * Needs N*H*W >= 2 (DTKD_ERR_SHAPE). Returns DTKD_ERR_NONFINITE if x holds NaN/Inf. */
// y, x (N,C,H,W); gamma, beta, running_*, save_* (C,)
int dtkd_batchnorm2d_forward_train(float *y, float *save_mean, float *save_invstd,
                                   float *running_mean, float *running_var, const float *x,
                                   const float *gamma, const float *beta, float momentum,
                                   float eps, long N, long C, long HW);

/* Training forward fused with what follows BN in a ResNet: y = act(bn(x) [+ residual]), act =
 * ReLU if relu else identity; residual (N,C,H,W) may be NULL. Statistics and running updates
 * as dtkd_batchnorm2d_forward_train (which is this with residual = NULL, relu = 0). One pass
 * writes y instead of three (BN, add, ReLU). */
// y, x, residual (N,C,H,W); gamma, beta, running_*, save_* (C,)
int dtkd_batchnorm2d_act_forward_train(float *y, float *save_mean, float *save_invstd,
                                       float *running_mean, float *running_var, const float *x,
                                       const float *gamma, const float *beta,
                                       const float *residual, int relu, float momentum,
                                       float eps, long N, long C, long HW);

/* Evaluation: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta. */
// y, x (N,C,H,W); gamma, beta, running_* (C,)
int dtkd_batchnorm2d_forward_eval(float *y, const float *x, const float *gamma,
                                  const float *beta, const float *running_mean,
                                  const float *running_var, float eps, long N, long C, long HW);

/* Backward of the training forward: dx; dgamma, dbeta (C,) accumulated (+=). */
// dx, dy, x (N,C,H,W); gamma, save_mean, save_invstd, dgamma, dbeta (C,)
int dtkd_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *gamma, const float *save_mean,
                              const float *save_invstd, long N, long C, long HW);

/* Backward of dtkd_batchnorm2d_act_forward_train: y is its output when relu was set (the ReLU
 * mask y > 0 applies to dy first), NULL otherwise; dresidual (may be NULL) receives the
 * gradient of the residual (dy masked). dx; dgamma, dbeta (C,) accumulated (+=). */
// dx, dresidual, dy, y, x (N,C,H,W); gamma, save_mean, save_invstd, dgamma, dbeta (C,)
int dtkd_batchnorm2d_act_backward(float *dx, float *dresidual, float *dgamma, float *dbeta,
                                  const float *dy, const float *y, const float *x,
                                  const float *gamma, const float *save_mean,
                                  const float *save_invstd, long N, long C, long HW);

#endif
