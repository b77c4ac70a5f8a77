/* Batch normalization, NCHW. One channel per loop iteration (channels run in parallel); a
 * channel's values sit in N strided runs of H*W floats. Sums are float lanes within a run
 * (kernels/reduce.h) and double across runs and for the final statistics. */
#include "dtkd.h"
#include "kernels/batchnorm.h"
#include "kernels/reduce.h"

#include <math.h>
#include <string.h>

/* Channels run in parallel only when a channel holds enough values to repay the OpenMP
 * fork/join (a few microseconds, ~10x more when the machine is busy): a thin layer's BN at
 * 8x8 maps (batch 64: 4096 values per channel, 64 channels) is over in ~20 us on one core. */
#define PARALLEL_MIN_VALUES (1L << 16)

int dtkd_batchnorm2d_act_forward_train(float *y, float *save_mean, float *save_invstd,
                                       float *running_mean, float *running_var, const float *x,
                                       const float *gamma, const float *beta,
                                       const float *residual, int relu, float momentum,
                                       float eps, long N, long C, long HW)
{
    const long M = N * HW;
    if (M < 2) return DTKD_ERR_SHAPE;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) num_threads(dtkd_get_num_threads()) \
    if (M * C >= PARALLEL_MIN_VALUES)
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
        /* y = act(x * scale + shift [+ residual]) with scale = gamma * invstd,
         * shift = beta - mean * scale; act = ReLU or identity. */
        float scale = (float)(gamma[c] * invstd);
        float shift = (float)(beta[c] - mean * gamma[c] * invstd);
        for (long n = 0; n < N; n++) {
            const float *p = x + (n * C + c) * HW;
            const float *r = residual ? residual + (n * C + c) * HW : NULL;
            float *q = y + (n * C + c) * HW;
            if (r && relu)
                for (long i = 0; i < HW; i++) q[i] = fmaxf(p[i] * scale + shift + r[i], 0.0f);
            else if (r)
                for (long i = 0; i < HW; i++) q[i] = p[i] * scale + shift + r[i];
            else if (relu)
                for (long i = 0; i < HW; i++) q[i] = fmaxf(p[i] * scale + shift, 0.0f);
            else
                for (long i = 0; i < HW; i++) q[i] = p[i] * scale + shift;
        }
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_batchnorm2d_forward_train(float *y, float *save_mean, float *save_invstd,
                                   float *running_mean, float *running_var, const float *x,
                                   const float *gamma, const float *beta, float momentum,
                                   float eps, long N, long C, long HW)
{
    return dtkd_batchnorm2d_act_forward_train(y, save_mean, save_invstd, running_mean,
                                              running_var, x, gamma, beta, NULL, 0, momentum, eps,
                                              N, C, HW);
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

int dtkd_batchnorm2d_act_backward(float *dx, float *dresidual, float *dgamma, float *dbeta,
                                  const float *dy, const float *y, const float *x,
                                  const float *gamma, const float *save_mean,
                                  const float *save_invstd, long N, long C, long HW)
{
    const long M = N * HW;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (M * C >= PARALLEL_MIN_VALUES)
    for (long c = 0; c < C; c++) {
        const float mean = save_mean[c], invstd = save_invstd[c];
        /* g = dy masked by the ReLU (y > 0; y == NULL: no ReLU) is the gradient of the BN output
         * (and of the residual, written to dresidual); sum_g = sum g, sum_g_xhat = sum g * xhat,
         * xhat = (x - mean) * invstd */
        double sum_g = 0.0, sum_g_xhat = 0.0;
        for (long n = 0; n < N; n++) {
            const long at = (n * C + c) * HW;
            const float *g = dy + at, *p = x + at;
            if (y) {
                float *gm = dresidual ? dresidual + at : dx + at; /* dx: scratch, rewritten below */
                for (long i = 0; i < HW; i++) gm[i] = y[at + i] > 0.0f ? g[i] : 0.0f;
                g = gm;
            } else if (dresidual) {
                memcpy(dresidual + at, g, (size_t)HW * sizeof *g);
            }
            sum_g += dtkd_sum(g, HW);
            sum_g_xhat += dtkd_dot_dev(g, p, mean, HW);
        }
        sum_g_xhat *= invstd;
        dgamma[c] += (float)sum_g_xhat;
        dbeta[c] += (float)sum_g;
        /* dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)), expanded into
         * dx = k * g + kx * x + k0 with per-channel constants (in double) */
        const double k = (double)gamma[c] * invstd, mean_g = sum_g / M;
        const double kxhat = k * invstd * (sum_g_xhat / M); /* coefficient of (x - mean) */
        const float kf = (float)k, kx = (float)-kxhat, k0 = (float)(kxhat * mean - k * mean_g);
        for (long n = 0; n < N; n++) {
            const long at = (n * C + c) * HW;
            const float *g = y ? (dresidual ? dresidual + at : dx + at) : dy + at;
            const float *p = x + at;
            float *q = dx + at;
            for (long i = 0; i < HW; i++) q[i] = kf * g[i] + kx * p[i] + k0;
        }
    }
    return DTKD_OK;
}

int dtkd_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *gamma, const float *save_mean,
                              const float *save_invstd, long N, long C, long HW)
{
    return dtkd_batchnorm2d_act_backward(dx, NULL, dgamma, dbeta, dy, NULL, x, gamma, save_mean,
                                         save_invstd, N, C, HW);
}
