/* Batch normalization, NCHW. A channel's values sit in N strided runs of H*W floats. Sums are
 * float lanes within a run (kernels/reduce.h), formed run by run in memory order, and double
 * across a channel's runs (added in image order: channel_total) and for the final statistics. */
#include "dtkd.h"
#include "kernels/batchnorm.h"
#include "kernels/reduce.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Channels run in parallel only when a channel holds enough values to repay the OpenMP
 * fork/join (a few microseconds, ~10x more when the machine is busy): a thin layer's BN at
 * 8x8 maps (batch 64: 4096 values per channel, 64 channels) is over in ~20 us on one core. */
#define PARALLEL_MIN_VALUES (1L << 16)

/* The inner loops, with restrict pointers and a compare-select ReLU so they vectorize (fmaxf
 * and possibly-aliasing pointers kept them scalar: 6x slower, measured). Each returns nonzero
 * when a value before the ReLU is not finite: finite inputs can still overflow float32 (a huge
 * gamma or beta), and the ReLU's select would turn such a NaN into a silent 0. The check is an
 * integer OR of a compare, which vectorizes; the loop is memory-bound, so it costs nothing
 * measurable. */
#define NOT_FINITE(v) (!(fabsf(v) <= FLT_MAX))
/* v = ((p - hi) - lo) * scale + beta: centered first (the mean as two floats hi + lo), not
 * p * scale + (beta - mean * scale), whose two large terms cancel: at 1e7 + randn that lost
 * the noise (0.08 off), and at a constant 1e37 the shift overflowed */
static int affine_act_run(float *restrict q, const float *restrict p, const float *restrict r,
                          float hi, float lo, float scale, float beta, int relu, long n)
{
    int bad = 0;
    if (r && relu)
        for (long i = 0; i < n; i++) {
            const float v = ((p[i] - hi) - lo) * scale + beta + r[i];
            bad |= NOT_FINITE(v);
            q[i] = v > 0.0f ? v : 0.0f;
        }
    else if (r)
        for (long i = 0; i < n; i++) {
            const float v = ((p[i] - hi) - lo) * scale + beta + r[i];
            bad |= NOT_FINITE(v);
            q[i] = v;
        }
    else if (relu)
        for (long i = 0; i < n; i++) {
            const float v = ((p[i] - hi) - lo) * scale + beta;
            bad |= NOT_FINITE(v);
            q[i] = v > 0.0f ? v : 0.0f;
        }
    else
        for (long i = 0; i < n; i++) {
            const float v = ((p[i] - hi) - lo) * scale + beta;
            bad |= NOT_FINITE(v);
            q[i] = v;
        }
    return bad;
}

/* A channel's mean and sum of squared deviations from its N runs of HW values (run n at
 * x + n * stride), both in double: a sum shifted by the channel's first value, then squared
 * deviations from the mean as two floats (hi + lo). Either redone in double per value when the
 * float lanes overflow (finite values near float32's limit: a constant 1e37 channel). Returns
 * nonzero when x holds a NaN or Inf. */
/* Channels whose |mean| exceeds OFFSET_RATIO standard deviations (1e7 + randn: 1e7) lose
 * digits in x * scale + (beta - mean * scale) (float32 rounding of a term OFFSET_RATIO times
 * the output): they take the exact path (channel_moments, and (x - mean) * scale + beta with
 * the mean as two floats), as do channels whose float sums or shift overflow (a constant 1e37).
 * Every other channel keeps the original arithmetic bit for bit (the torch-parity tests of the
 * zoo are sensitive to its rounding at batch 2). The backward makes the same choice from
 * save_mean and save_invstd. */
#define OFFSET_RATIO 64.0f

/* The one test of that choice, shared by the forward, the backward and their synchronized
 * versions (so shards round as one process does) */
static inline int far_offset(float mean, float invstd)
{
    return fabsf(mean) * invstd > OFFSET_RATIO;
}

static int channel_moments(double *mean_out, double *ssd_out, const float *x, long N, long stride,
                           long HW)
{
    const long M = N * HW;
    const float K = x[0];
    double s = 0.0;
    for (long n = 0; n < N; n++) s += dtkd_sum_dev_wide(x + n * stride, K, HW);
    if (!(s - s == 0.0)) {
        s = 0.0;
        for (long n = 0; n < N; n++)
            for (long i = 0; i < HW; i++) s += (double)x[n * stride + i] - K;
        if (!isfinite(s)) return 1;
    }
    const double mean = K + s / M;
    const float hi = (float)mean, lo = (float)(mean - hi);
    double ssd = 0.0;
    for (long n = 0; n < N; n++) ssd += dtkd_sum_sqdev2(x + n * stride, hi, lo, HW);
    if (!(ssd - ssd == 0.0)) {
        ssd = 0.0;
        for (long n = 0; n < N; n++)
            for (long i = 0; i < HW; i++) {
                const double d = (double)x[n * stride + i] - mean;
                ssd += d * d;
            }
        if (!isfinite(ssd)) return 1;
    }
    *mean_out = mean;
    *ssd_out = ssd;
    return 0;
}

/* out = g where y > 0, else 0 (the ReLU's backward) */
static void relu_mask_run(float *restrict out, const float *restrict g, const float *restrict y,
                          long n)
{
    for (long i = 0; i < n; i++) {
        const float gi = g[i]; /* loaded unconditionally: a select, not a branch per element */
        out[i] = y[i] > 0.0f ? gi : 0.0f;
    }
}

/* total[c] = sum over n, in order, of part[(n * C + c) * k]: a channel's sum from per-run values
 * stored in memory order. The statistics passes read the runs image by image (sequential
 * memory) instead of channel by channel (a channel's runs lie C*HW floats apart and are often one
 * 4 KB page each, where the hardware prefetchers stop: the channel-by-channel passes ran at a
 * quarter of the memory bandwidth, perf on Zen 4), and the per-run values are then added in
 * the order a channel-by-channel loop adds them: the same double sums, bit for bit, on any
 * thread count. */
static double channel_total(const double *part, long N, long C, long c, int k)
{
    double total = 0.0;
    for (long n = 0; n < N; n++) total += part[(n * C + c) * k];
    return total;
}

/* q = kf * g + kx * ((p - hi) - lo) + k0, the mean hi + lo subtracted first (as in the
 * forward: kx * p + k0 cancelled two large terms at 1e7 + randn); q may be g (each element
 * read before it is written) */
static void bn_dx_run(float *q, const float *g, const float *restrict p, float kf, float kx,
                      float k0, float hi, float lo, long n)
{
    if (q == g)
        for (long i = 0; i < n; i++) q[i] = kf * q[i] + kx * ((p[i] - hi) - lo) + k0;
    else
        for (long i = 0; i < n; i++) q[i] = kf * g[i] + kx * ((p[i] - hi) - lo) + k0;
}

int dtkd_batchnorm2d_act_forward_train(float *y, float *save_mean, float *save_invstd,
                                       float *running_mean, float *running_var, const float *x,
                                       const float *gamma, const float *beta,
                                       const float *residual, int relu, float momentum,
                                       float eps, long N, long C, long HW)
{
    const long M = N * HW;
    if (M < 2) return DTKD_ERR_SHAPE;
    /* per channel: the mean's low part (lo), and the new running statistics (staged, rm and rv,
     * and committed only when the whole call succeeded: a failed call, even one whose output
     * overflows, leaves them as they were) */
    float *lo = dtkd_malloc_array((size_t)C * 5, sizeof *lo);
    /* per run (n, c): its sum, then its squared deviations from the channel's mean; per channel
     * that mean (see channel_total) */
    double *part = dtkd_malloc_array((size_t)N * C + C, sizeof *part);
    if (!lo || !part) {
        dtkd_free(lo);
        dtkd_free(part);
        return DTKD_ERR_NOMEM;
    }
    double *mean_c = part + N * C;
    float *rm_new = lo + C, *rv_new = lo + 2 * C, *hi = lo + 3 * C, *shift_c = lo + 4 * C;
    int bad = 0, overflow = 0;
    /* Two passes (mean, then squared deviations from the float32 mean) to avoid cancellation
     * in the variance. */
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (M * C >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++) part[nc] = dtkd_sum(x + nc * HW, HW);
    for (long c = 0; c < C; c++) mean_c[c] = channel_total(part, N, C, c, 1) / M;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (M * C >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++)
        part[nc] = dtkd_sum_sqdev(x + nc * HW, (float)mean_c[nc % C], HW);
#pragma omp parallel for schedule(static) reduction(|:bad, overflow) \
    num_threads(dtkd_get_num_threads()) if (M * C >= PARALLEL_MIN_VALUES)
    for (long c = 0; c < C; c++) {
        double mean = mean_c[c], ssd = channel_total(part, N, C, c, 1);
        int exact = !(isfinite(mean) && isfinite(ssd));
        if (!exact) {
            const double inv0 = 1.0 / sqrt(ssd / M + eps);
            const double shift0 = beta[c] - (float)mean * ((double)gamma[c] * (float)inv0);
            exact = far_offset((float)mean, (float)inv0) || !(fabs(shift0) <= FLT_MAX);
        }
        if (exact && channel_moments(&mean, &ssd, x + c * HW, N, C * HW, HW)) {
            bad = 1;
            continue;
        }
        double var = ssd / M, invstd = 1.0 / sqrt(var + eps);
        const double scale = (double)gamma[c] * (float)invstd;
        /* the float32 statistics and the affine map must be finite (a variance beyond float32,
         * or gamma * invstd overflowing, would make y Inf or NaN from finite inputs) */
        if (!(fabs(var) <= FLT_MAX && fabs(invstd) <= FLT_MAX && fabs(scale) <= FLT_MAX)) {
            overflow = 1;
            continue;
        }
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        exact = far_offset(save_mean[c], save_invstd[c]) || exact;
        if (exact) { /* ((x - hi) - lo) * scale + beta */
            hi[c] = save_mean[c];
            lo[c] = (float)(mean - save_mean[c]);
            shift_c[c] = beta[c];
        } else { /* the original x * scale + shift */
            hi[c] = lo[c] = 0.0f;
            shift_c[c] = (float)(beta[c] - save_mean[c] * ((double)gamma[c] * save_invstd[c]));
            if (!(fabsf(shift_c[c]) <= FLT_MAX)) {
                overflow = 1;
                continue;
            }
        }
        if (running_mean) {
            const double rm = (1.0 - momentum) * running_mean[c] + momentum * mean;
            const double rv = (1.0 - momentum) * running_var[c] + momentum * ssd / (M - 1);
            if (!(fabs(rm) <= FLT_MAX && fabs(rv) <= FLT_MAX)) {
                overflow = 1;
                continue;
            }
            rm_new[c] = (float)rm;
            rv_new[c] = (float)rv;
        }
    }
    dtkd_free(part);
    if (bad || overflow) {
        dtkd_free(lo);
        return bad ? DTKD_ERR_NONFINITE : DTKD_ERR_VALUE;
    }
    /* y = act(((x - mean) * scale + beta [+ residual]) with scale = gamma * invstd; act = ReLU
     * or identity. In memory order (image by image),
     * not channel by channel: the per-channel runs of H*W floats are often one 4 KB page each,
     * where the hardware prefetchers stop; measured at (64, 16, 32, 32): BN + add + ReLU 0.77 ms
     * channel by channel, BN then add_relu 0.62-0.71 ms, this: see benchmarks/RESULTS.md. */
#pragma omp parallel for schedule(static) reduction(|:overflow) \
    num_threads(dtkd_get_num_threads()) if (M * C >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++) {
        const long c = nc % C, at = nc * HW;
        const double scale = (double)gamma[c] * save_invstd[c];
        overflow |= affine_act_run(y + at, x + at, residual ? residual + at : NULL, hi[c], lo[c],
                                   (float)scale, shift_c[c], relu, HW);
    }
    if (running_mean && !overflow)
        for (long c = 0; c < C; c++) {
            running_mean[c] = rm_new[c];
            running_var[c] = rv_new[c];
        }
    dtkd_free(lo);
    return overflow ? DTKD_ERR_VALUE : DTKD_OK;
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
    int bad = 0, overflow = 0;
#pragma omp parallel for schedule(static) collapse(2) reduction(|:bad, overflow) \
    num_threads(dtkd_get_num_threads())
    for (long n = 0; n < N; n++)
        for (long c = 0; c < C; c++) {
            const double invstd = 1.0 / sqrt((double)running_var[c] + eps);
            const double scale = gamma[c] * invstd;
            const float *p = x + (n * C + c) * HW;
            float *q = y + (n * C + c) * HW;
            if (dtkd_any_nonfinite(p, HW)) {
                bad = 1;
                continue;
            }
            overflow |= !(fabs(scale) <= FLT_MAX) ||
                        affine_act_run(q, p, NULL, running_mean[c], 0.0f, (float)scale, beta[c],
                                       0, HW);
        }
    if (bad) return DTKD_ERR_NONFINITE;
    return overflow ? DTKD_ERR_VALUE : DTKD_OK;
}

int dtkd_batchnorm2d_act_backward(float *dx, float *dresidual, float *dgamma, float *dbeta,
                                  const float *dy, const float *y, const float *x,
                                  const float *gamma, const float *save_mean,
                                  const float *save_invstd, long N, long C, long HW)
{
    const long M = N * HW, total = N * C * HW;
    /* per run (n, c): sum g, sum g * (x - mean) and, for far-offset channels, sum (x - mean)
     * (see channel_total); per channel the five coefficients of its dx pass */
    double *part = dtkd_malloc_array((size_t)N * C * 3, sizeof *part);
    float *coef = dtkd_malloc_array((size_t)C * 5, sizeof *coef);
    if (!part || !coef) {
        dtkd_free(part);
        dtkd_free(coef);
        return DTKD_ERR_NOMEM;
    }
    /* g = dy masked by the ReLU (y > 0; y == NULL: no ReLU) is the gradient of the BN output
     * and of the residual, written into dresidual (or dx, as scratch rewritten below) run by
     * run, each run's sums then read from L1. The statistics pass goes in memory order (see
     * channel_total): run by run, channel by channel, it was three strided streams per channel
     * (or two with a separate masking pass, which measured faster that way). */
    float *gm = dresidual ? dresidual : dx;
    const int masked = y || dresidual;
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (total >= PARALLEL_MIN_VALUES) reduction(|:bad)
    for (long nc = 0; nc < N * C; nc++) {
        const long c = nc % C, at = nc * HW;
        const float mean = save_mean[c];
        const float *g = dy + at;
        /* dy's NaN/Inf check, here where the run is read anyway (then from L1), instead of a
         * separate pass over dy in the binding; masked-out values count too */
        bad |= dtkd_any_nonfinite(g, HW);
        if (masked) {
            if (y) relu_mask_run(gm + at, dy + at, y + at, HW);
            else memcpy(gm + at, dy + at, (size_t)HW * sizeof *gm);
            g = gm + at;
        }
        /* save_mean is the batch mean rounded to float32 (off by up to 0.5 at 1e7): its low
         * part, lo = mean(x - save_mean), comes from a sum over the same run (in L1) */
        double *q = part + 3 * nc;
        q[0] = dtkd_sum(g, HW);
        q[1] = dtkd_dot_dev(g, x + at, mean, HW);
        q[2] = far_offset(mean, save_invstd[c]) ? dtkd_sum_dev_wide(x + at, mean, HW) : 0.0;
    }
    if (bad) { /* before dgamma and dbeta are touched */
        dtkd_free(part);
        dtkd_free(coef);
        return DTKD_ERR_NONFINITE;
    }
    for (long c = 0; c < C; c++) {
        const float mean = save_mean[c], invstd = save_invstd[c];
        /* sum_g = sum g, sum_g_xhat = sum g * xhat, xhat = (x - mean) * invstd */
        const int exact = far_offset(mean, invstd); /* as the forward chose */
        double sum_g = channel_total(part, N, C, c, 3);
        double sum_g_xhat = channel_total(part + 1, N, C, c, 3);
        const double lo = channel_total(part + 2, N, C, c, 3) / M;
        sum_g_xhat = (sum_g_xhat - lo * sum_g) * invstd;
        dgamma[c] += (float)sum_g_xhat;
        dbeta[c] += (float)sum_g;
        /* dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)), expanded into
         * dx = k * g + kx * (x - mean) + k0 with per-channel constants (in double) */
        const double k = (double)gamma[c] * invstd, mean_g = sum_g / M;
        const double kxhat = k * invstd * (sum_g_xhat / M); /* coefficient of (x - mean) */
        float *cf = coef + 5 * c;
        cf[0] = (float)k;
        cf[1] = (float)-kxhat;
        cf[2] = exact ? (float)(-k * mean_g) : (float)(kxhat * mean - k * mean_g);
        cf[3] = exact ? mean : 0.0f;
        cf[4] = (float)lo;
    }
    const float *g = masked ? gm : dy;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (total >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++) {
        const long at = nc * HW;
        const float *k = coef + 5 * (nc % C);
        bn_dx_run(dx + at, g + at, x + at, k[0], k[1], k[2], k[3], k[4], HW);
    }
    dtkd_free(part);
    dtkd_free(coef);
    return DTKD_OK;
}

int dtkd_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *x, const float *gamma, const float *save_mean,
                              const float *save_invstd, long N, long C, long HW)
{
    return dtkd_batchnorm2d_act_backward(dx, NULL, dgamma, dbeta, dy, NULL, x, gamma, save_mean,
                                         save_invstd, N, C, HW);
}

/* ---- Synchronized BatchNorm (see batchnorm.h) ---------------------------------------------- */

int dtkd_batchnorm2d_sync_stats_forward(double *out, const float *x, const float *center,
                                        long N, long C, long HW)
{
    const long M = N * HW;
    if (M < 1 || C < 1) return DTKD_ERR_SHAPE;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(|:bad) \
    num_threads(dtkd_get_num_threads()) if (M * C >= PARALLEL_MIN_VALUES)
    for (long c = 0; c < C; c++) {
        double s = 0.0;
        for (long n = 0; n < N; n++)
            s += center ? dtkd_sum_sqdev(x + (n * C + c) * HW, center[c], HW)
                        : dtkd_sum_safe(x + (n * C + c) * HW, HW);
        if (center && !(s - s == 0.0)) { /* float lanes overflowed: redo in double */
            s = 0.0;
            for (long n = 0; n < N; n++)
                for (long i = 0; i < HW; i++) {
                    const double d = (double)x[(n * C + c) * HW + i] - center[c];
                    s += d * d;
                }
        }
        bad |= !isfinite(s);
        out[c] = s;
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_batchnorm2d_sync_forward(float *y, float *save_mean, float *save_invstd,
                                  float *running_mean, float *running_var, const float *x,
                                  const float *gamma, const float *beta, const float *residual,
                                  int relu, float momentum, float eps, const double *sum,
                                  const double *ssd, long M, long N, long C, long HW)
{
    const long local = N * HW;
    if (local < 1 || M < 2 || M < local) return DTKD_ERR_SHAPE;
    int overflow = 0;
    for (long c = 0; c < C; c++) {
        if (!isfinite(sum[c]) || !isfinite(ssd[c]) || ssd[c] < 0) return DTKD_ERR_NONFINITE;
        /* the statistics exactly as dtkd_batchnorm2d_act_forward_train forms them */
        const double mean = sum[c] / M, var = ssd[c] / M, invstd = 1.0 / sqrt(var + eps);
        const double scale = (double)gamma[c] * (float)invstd;
        if (!(fabs(var) <= FLT_MAX && fabs(invstd) <= FLT_MAX && fabs(scale) <= FLT_MAX))
            return DTKD_ERR_VALUE;
        if (running_mean) {
            const double rm = (1.0 - momentum) * running_mean[c] + momentum * mean;
            const double rv = (1.0 - momentum) * running_var[c] + momentum * ssd[c] / (M - 1);
            if (!(fabs(rm) <= FLT_MAX && fabs(rv) <= FLT_MAX)) return DTKD_ERR_VALUE;
        }
    }
    /* every channel checked: now commit (a failed call changed nothing) */
    for (long c = 0; c < C; c++) {
        const double mean = sum[c] / M;
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)(1.0 / sqrt(ssd[c] / M + eps));
        if (running_mean) {
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] +
                                     momentum * ssd[c] / (M - 1));
        }
    }
#pragma omp parallel for schedule(static) reduction(|:overflow) \
    num_threads(dtkd_get_num_threads()) if (local * C >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++) {
        const long c = nc % C, at = nc * HW;
        const double scale = (double)gamma[c] * save_invstd[c], mean = sum[c] / M;
        /* the same per-channel choice as dtkd_batchnorm2d_act_forward_train, so that shards
         * round as one process does: centered for far-offset channels or an overflowing shift,
         * else the original x * scale + shift */
        const float shift = (float)(beta[c] - save_mean[c] * scale);
        if (far_offset(save_mean[c], save_invstd[c]) || !(fabsf(shift) <= FLT_MAX))
            overflow |= affine_act_run(y + at, x + at, residual ? residual + at : NULL,
                                       save_mean[c], (float)(mean - save_mean[c]), (float)scale,
                                       beta[c], relu, HW);
        else
            overflow |= affine_act_run(y + at, x + at, residual ? residual + at : NULL, 0.0f,
                                       0.0f, (float)scale, shift, relu, HW);
    }
    return overflow ? DTKD_ERR_VALUE : DTKD_OK;
}

int dtkd_batchnorm2d_sync_stats_backward(double *sum_g, double *sum_g_xmu, const float *g,
                                         const float *x, const float *save_mean, long N, long C,
                                         long HW)
{
    const long M = N * HW;
    if (M < 1 || C < 1) return DTKD_ERR_SHAPE;
    double *part = dtkd_malloc_array((size_t)N * C * 2, sizeof *part);
    if (!part) return DTKD_ERR_NOMEM;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (M * C >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++) { /* memory order, as dtkd_batchnorm2d_act_backward */
        const long at = nc * HW;
        part[2 * nc] = dtkd_sum(g + at, HW);
        part[2 * nc + 1] = dtkd_dot_dev(g + at, x + at, save_mean[nc % C], HW);
    }
    for (long c = 0; c < C; c++) {
        sum_g[c] = channel_total(part, N, C, c, 2);
        sum_g_xmu[c] = channel_total(part + 1, N, C, c, 2);
    }
    dtkd_free(part);
    return DTKD_OK;
}

int dtkd_batchnorm2d_sync_backward(float *dx, const float *g, const float *x, const float *gamma,
                                   const float *save_mean, const float *save_invstd,
                                   const double *sum_g, const double *sum_g_xmu, long M, long N,
                                   long C, long HW)
{
    const long local = N * HW;
    if (local < 1 || M < local) return DTKD_ERR_SHAPE;
    for (long c = 0; c < C; c++)
        if (!isfinite(sum_g[c]) || !isfinite(sum_g_xmu[c])) return DTKD_ERR_NONFINITE;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) \
    if (local * C >= PARALLEL_MIN_VALUES)
    for (long nc = 0; nc < N * C; nc++) {
        const long c = nc % C, at = nc * HW;
        /* as dtkd_batchnorm2d_act_backward, with its per-channel choice: dx = k * g +
         * kx * (x - mean) + k0 for far-offset channels, else k * g + kx * x + k0' */
        const float mean = save_mean[c], invstd = save_invstd[c];
        const double k = (double)gamma[c] * invstd, mean_g = sum_g[c] / M;
        const double kxhat = k * invstd * (sum_g_xmu[c] * invstd / M);
        if (far_offset(mean, invstd))
            bn_dx_run(dx + at, g + at, x + at, (float)k, (float)-kxhat, (float)(-k * mean_g),
                      mean, 0.0f, HW);
        else
            bn_dx_run(dx + at, g + at, x + at, (float)k, (float)-kxhat,
                      (float)(kxhat * mean - k * mean_g), 0.0f, 0.0f, HW);
    }
    return DTKD_OK;
}
