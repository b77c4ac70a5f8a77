/* Pooling kernels, NCHW; one (n, c) plane per parallel iteration. */
#include "dtkd.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"

#include <math.h>
#include <string.h>

int dtkd_pool2d_out_size(long *OH, long *OW, long H, long W, long kernel, long stride, long pad)
{
    if (H < 1 || W < 1 || kernel < 1 || stride < 1 || pad < 0 || pad > kernel / 2)
        return DTKD_ERR_SHAPE;
    if (H + 2 * pad < kernel || W + 2 * pad < kernel) return DTKD_ERR_SHAPE;
    *OH = (H + 2 * pad - kernel) / stride + 1;
    *OW = (W + 2 * pad - kernel) / stride + 1;
    return DTKD_OK;
}

/* The inputs [*lo, *hi) along one axis of size `size` that output position o's window covers:
 * the window o*stride - pad + [0, kernel) clipped to the plane (padding holds no inputs). */
static inline void window_range(long *lo, long *hi, long o, long size, long kernel, long stride,
                                long pad)
{
    long first = o * stride - pad, end = first + kernel;
    *lo = first < 0 ? 0 : first;
    *hi = end < size ? end : size;
}

int dtkd_maxpool2d_forward(float *y, int64_t *argmax, const float *x, long NC, long H, long W,
                           long kernel, long stride, long pad)
{
    long OH, OW;
    if (dtkd_pool2d_out_size(&OH, &OW, H, W, kernel, stride, pad)) return DTKD_ERR_SHAPE;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) num_threads(dtkd_get_num_threads())
    for (long p = 0; p < NC; p++) {
        const float *xp = x + p * H * W;
        bad |= dtkd_any_nonfinite(xp, H * W);
        for (long oh = 0; oh < OH; oh++)
            for (long ow = 0; ow < OW; ow++) {
                long h0, h1, w0, w1;
                window_range(&h0, &h1, oh, H, kernel, stride, pad);
                window_range(&w0, &w1, ow, W, kernel, stride, pad);
                /* pad <= kernel/2 guarantees each window holds at least one input. */
                long best = h0 * W + w0;
                for (long h = h0; h < h1; h++)
                    for (long w = w0; w < w1; w++)
                        if (xp[h * W + w] > xp[best]) best = h * W + w;
                y[(p * OH + oh) * OW + ow] = xp[best];
                argmax[(p * OH + oh) * OW + ow] = best;
            }
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_maxpool2d_backward(float *dx, const float *dy, const int64_t *argmax, long NC, long H,
                            long W, long OH, long OW)
{
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) num_threads(dtkd_get_num_threads())
    for (long p = 0; p < NC; p++) {
        float *dxp = dx + p * H * W;
        memset(dxp, 0, H * W * sizeof *dxp);
        for (long i = 0; i < OH * OW; i++) {
            int64_t a = argmax[p * OH * OW + i];
            if (a < 0 || a >= H * W) {
                bad = 1;
                continue;
            }
            dxp[a] += dy[p * OH * OW + i];
        }
    }
    return bad ? DTKD_ERR_VALUE : DTKD_OK;
}

int dtkd_avgpool2d_forward(float *y, const float *x, long NC, long H, long W, long kernel,
                           long stride, long pad)
{
    long OH, OW;
    if (dtkd_pool2d_out_size(&OH, &OW, H, W, kernel, stride, pad)) return DTKD_ERR_SHAPE;
    /* the window sum in double: a float sum of finite values near float32's limit (4 x 1e38)
     * overflowed and was reported as a NaN/Inf in x; the average itself is always in range */
    const double inv_area = 1.0 / (double)(kernel * kernel);
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) num_threads(dtkd_get_num_threads())
    for (long p = 0; p < NC; p++) {
        const float *xp = x + p * H * W;
        for (long oh = 0; oh < OH; oh++)
            for (long ow = 0; ow < OW; ow++) {
                long h0, h1, w0, w1;
                window_range(&h0, &h1, oh, H, kernel, stride, pad);
                window_range(&w0, &w1, ow, W, kernel, stride, pad);
                double sum = 0.0;
                for (long h = h0; h < h1; h++)
                    for (long w = w0; w < w1; w++) sum += xp[h * W + w];
                bad |= !isfinite(sum);
                y[(p * OH + oh) * OW + ow] = (float)(sum * inv_area);
            }
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_avgpool2d_backward(float *dx, const float *dy, long NC, long H, long W, long kernel,
                            long stride, long pad)
{
    long OH, OW;
    if (dtkd_pool2d_out_size(&OH, &OW, H, W, kernel, stride, pad)) return DTKD_ERR_SHAPE;
    const float inv_area = 1.0f / (float)(kernel * kernel);
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
    for (long p = 0; p < NC; p++) {
        float *dxp = dx + p * H * W;
        memset(dxp, 0, H * W * sizeof *dxp);
        for (long oh = 0; oh < OH; oh++)
            for (long ow = 0; ow < OW; ow++) {
                long h0, h1, w0, w1;
                window_range(&h0, &h1, oh, H, kernel, stride, pad);
                window_range(&w0, &w1, ow, W, kernel, stride, pad);
                float g = dy[(p * OH + oh) * OW + ow] * inv_area;
                for (long h = h0; h < h1; h++)
                    for (long w = w0; w < w1; w++) dxp[h * W + w] += g;
            }
    }
    return DTKD_OK;
}

int dtkd_global_avgpool_forward(float *y, const float *x, long NC, long HW)
{
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) num_threads(dtkd_get_num_threads())
    for (long p = 0; p < NC; p++) {
        double sum = dtkd_sum_safe(x + p * HW, HW);
        bad |= !isfinite(sum);
        y[p] = (float)(sum / HW);
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_global_avgpool_backward(float *dx, const float *dy, long NC, long HW)
{
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
    for (long p = 0; p < NC; p++) {
        float g = dy[p] / (float)HW;
        for (long i = 0; i < HW; i++) dx[p * HW + i] = g;
    }
    return DTKD_OK;
}
