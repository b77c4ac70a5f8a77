/* Batch normalization, NCHW. One channel per loop iteration (channels run in parallel); a
 * channel's values sit in N strided runs of H*W floats. Sums are float lanes within a run
 * (kernels/reduce.h) and double across runs and for the final statistics. */
#include "dtkd.h"
#include "kernels/batchnorm.h"
#include "kernels/reduce.h"

#include <math.h>

int dtkd_batchnorm2d_forward_train(float *y, float *save_mean, float *save_invstd,
                                   float *running_mean, float *running_var, const float *x,
                                   const float *gamma, const float *beta, float momentum,
                                   float eps, long N, long C, long HW)
{
    const long M = N * HW;
    if (M < 2) return DTKD_ERR_SHAPE;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) num_threads(dtkd_get_num_threads())
    for (long c = 0; c < C; c++) {
        /* Two passes (mean, then squared deviations) to avoid cancellation in the variance. */
        double sum = 0.0;
        for (long n = 0; n < N; n++) sum += dtkd_sum(x + (n * C + c) * HW, HW);
        double mean = sum / M, ssd = 0.0;
        for (long n = 0; n < N; n++) ssd += dtkd_sum_sqdev(x + (n * C + c) * HW, (float)mean, HW);
        if (!isfinite(mean) || !isfinite(ssd)) {
            bad = 1;
            continue;
        }
        double var = ssd / M, invstd = 1.0 / sqrt(var + eps);
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        if (running_mean) {
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] +
                                     momentum * ssd / (M - 1));
        }
        /* y = x * scale + shift with scale = gamma * invstd, shift = beta - mean * scale. */
        float scale = (float)(gamma[c] * invstd);
        float shift = (float)(beta[c] - mean * gamma[c] * invstd);
        for (long n = 0; n < N; n++) {
            const float *p = x + (n * C + c) * HW;
            float *q = y + (n * C + c) * HW;
            for (long i = 0; i < HW; i++) q[i] = p[i] * scale + shift;
        }
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_batchnorm2d_forward_eval(float *y, const float *x, const float *gamma,
                                  const float *beta, const float *running_mean,
                                  const float *running_var, float eps, long N, long C, long HW)
{
    int bad = 0;
#pragma omp parallel for schedule(static) collapse(2) reduction(|:bad) \
    num_threads(dtkd_get_num_threads())
    for (long n = 0; n < N; n++)
        for (long c = 0; c < C; c++) {
            double invstd = 1.0 / sqrt((double)running_var[c] + eps);
            float scale = (float)(gamma[c] * invstd);
            float shift = (float)(beta[c] - running_mean[c] * (double)gamma[c] * invstd);
            const float *p = x + (n * C + c) * HW;
            float *q = y + (n * C + c) * HW;
            bad |= dtkd_any_nonfinite(p, HW);
            for (long i = 0; i < HW; i++) q[i] = p[i] * scale + shift;
        }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *gamma, const float *save_mean,
                              const float *save_invstd, long N, long C, long HW)
{
    const long M = N * HW;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
    for (long c = 0; c < C; c++) {
        const float mean = save_mean[c], invstd = save_invstd[c];
        /* sum_dy = sum dy, sum_dy_xhat = sum dy * xhat, xhat = (x - mean) * invstd */
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (long n = 0; n < N; n++) {
            const float *g = dy + (n * C + c) * HW, *p = x + (n * C + c) * HW;
            sum_dy += dtkd_sum(g, HW);
            sum_dy_xhat += dtkd_dot_dev(g, p, mean, HW);
        }
        sum_dy_xhat *= invstd;
        dgamma[c] += (float)sum_dy_xhat;
        dbeta[c] += (float)sum_dy;
        /* dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), expanded into
         * dx = k * dy + kx * x + k0 with per-channel constants (in double) */
        const double k = (double)gamma[c] * invstd, mean_dy = sum_dy / M;
        const double kxhat = k * invstd * (sum_dy_xhat / M); /* coefficient of (x - mean) */
        const float kf = (float)k, kx = (float)-kxhat, k0 = (float)(kxhat * mean - k * mean_dy);
        for (long n = 0; n < N; n++) {
            const float *g = dy + (n * C + c) * HW, *p = x + (n * C + c) * HW;
            float *q = dx + (n * C + c) * HW;
            for (long i = 0; i < HW; i++) q[i] = kf * g[i] + kx * p[i] + k0;
        }
    }
    return DTKD_OK;
}
