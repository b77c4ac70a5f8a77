/* batchnorm.h -- 2-D batch normalization over NCHW activations, per channel, as
 * torch.nn.functional.batch_norm (https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html).
 * Statistics accumulate in double. */
#ifndef DTKD_BATCHNORM_H
#define DTKD_BATCHNORM_H

/* Training: batch statistics over (N, H, W). save_mean/save_invstd (C,) receive the batch mean and
 * 1/sqrt(biased var + eps) for the backward. running_mean/var (C,) (both NULL: not tracked) are
 * updated in place: r = (1 - momentum) * r + momentum * batch, with the UNBIASED variance.
 * Needs N*H*W >= 2 (DTKD_ERR_SHAPE). Returns DTKD_ERR_NONFINITE if x holds NaN/Inf,
 * DTKD_ERR_VALUE if finite inputs give statistics or an output beyond float32 (the running
 * statistics are then left as they were), DTKD_ERR_NOMEM if its 3*C-float scratch cannot be
 * allocated. Channels whose |mean| exceeds 64 standard deviations (or whose float sums
 * overflow) take an exact path -- a shifted double mean, y = (x - mean) * scale + beta with the
 * mean as two floats -- so 1e7 + noise keeps the noise and a constant 1e37 gives beta. */
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

/* Backward of the training forward: dx; dgamma, dbeta (C,) accumulated (+=). As
 * dtkd_batchnorm2d_act_backward (its errors too). */
// dx, dy, x (N,C,H,W); gamma, save_mean, save_invstd, dgamma, dbeta (C,)
int dtkd_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *gamma, const float *save_mean,
                              const float *save_invstd, long N, long C, long HW);

/* Backward of dtkd_batchnorm2d_act_forward_train: y is its output when relu was set (the ReLU
 * mask y > 0 applies to dy first), NULL otherwise; dresidual (may be NULL) receives the
 * gradient of the residual (dy masked). dx; dgamma, dbeta (C,) accumulated (+=). Returns
 * DTKD_OK, DTKD_ERR_NONFINITE if dy holds NaN/Inf, or DTKD_ERR_NOMEM; on an error dgamma and
 * dbeta are untouched. */
// dx, dresidual, dy, y, x (N,C,H,W); gamma, save_mean, save_invstd, dgamma, dbeta (C,)
int dtkd_batchnorm2d_act_backward(float *dx, float *dresidual, float *dgamma, float *dbeta,
                                  const float *dy, const float *y, const float *x,
                                  const float *gamma, const float *save_mean,
                                  const float *save_invstd, long N, long C, long HW);

/* ---- Synchronized BatchNorm: one batch split over processes ------------------------------
 * The batch statistics are those of the whole batch, M values per channel in total over all
 * processes. Each step is a local partial sum the caller adds up over the processes (an
 * allreduce), then a pass that uses the totals:
 *   forward:  sync_stats_forward(sum, x, NULL)    -> allreduce -> mean = sum / M
 *             sync_stats_forward(ssd, x, mean32)  -> allreduce -> var = ssd / M
 *             sync_forward(..., sum, ssd, M)
 *   backward: sync_stats_backward(sum_g, sum_g_xmu, g, x, save_mean) -> allreduce
 *             sync_backward(dx, ..., sum_g, sum_g_xmu, M)
 * With one process these give dtkd_batchnorm2d_act_forward_train / _act_backward's results. */

/* out[c] (double) = sum of x over (N, HW) when center is NULL, else sum of (x - center[c])^2.
 * DTKD_ERR_NONFINITE if a sum is not finite. */
// x (N,C,H,W); out (C,) double; center (C,) or NULL
int dtkd_batchnorm2d_sync_stats_forward(double *out, const float *x, const float *center,
                                        long N, long C, long HW);

/* y = act(bn(x) [+ residual]) with mean = sum / M and biased var = ssd / M (totals over all
 * processes); save_mean, save_invstd, running statistics as dtkd_batchnorm2d_act_forward_train
 * (unbiased running variance ssd / (M - 1)). Needs M >= 2 and M >= N * HW. */
// y, x, residual (N,C,H,W); gamma, beta, running_*, save_* (C,); sum, ssd (C,) double
int dtkd_batchnorm2d_sync_forward(float *y, float *save_mean, float *save_invstd,
                                  float *running_mean, float *running_var, const float *x,
                                  const float *gamma, const float *beta, const float *residual,
                                  int relu, float momentum, float eps, const double *sum,
                                  const double *ssd, long M, long N, long C, long HW);

/* Local sums of the backward: sum_g[c] = sum of g, sum_g_xmu[c] = sum of g * (x - save_mean[c]),
 * g = the gradient of the BN output (already masked by a ReLU, if any). DTKD_OK, or
 * DTKD_ERR_NOMEM. */
// g, x (N,C,H,W); save_mean (C,); sum_g, sum_g_xmu (C,) double
int dtkd_batchnorm2d_sync_stats_backward(double *sum_g, double *sum_g_xmu, const float *g,
                                         const float *x, const float *save_mean, long N, long C,
                                         long HW);

/* dx of dtkd_batchnorm2d_sync_forward from the totals (over all processes) of
 * dtkd_batchnorm2d_sync_stats_backward. dgamma and dbeta are the caller's: they are the local
 * sums (sum_g_xmu * save_invstd and sum_g of this process), which the data-parallel gradient
 * allreduce adds up. dx may be g. */
// dx, g, x (N,C,H,W); gamma, save_* (C,); sum_g, sum_g_xmu (C,) double
int dtkd_batchnorm2d_sync_backward(float *dx, const float *g, const float *x, const float *gamma,
                                   const float *save_mean, const float *save_invstd,
                                   const double *sum_g, const double *sum_g_xmu, long M, long N,
                                   long C, long HW);

#endif
