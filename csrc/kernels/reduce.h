/* reduce.h -- sums and NaN/Inf checks over one contiguous run (an H*W plane), shared by the
 * layer kernels.
 *
 * Without -ffast-math the compiler may not reorder a float sum, so a plain `s += p[i]` loop is
 * one serial add chain (~4 cycles per element). These keep 16 independent float lanes (the
 * compiler turns them into vector adds) and combine the lanes in double, so the result is the
 * same on every run and thread count. */
#ifndef DTKD_REDUCE_H
#define DTKD_REDUCE_H

#include <stdint.h>
#include <string.h>

#define DTKD_LANES 16

/* Exponent bits all ones <=> NaN or Inf (an integer test, so loops over it vectorize). */
static inline int dtkd_nonfinite_bits(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x7f800000u) == 0x7f800000u;
}

/* 1 if any of p[0..n) is NaN or Inf */
static inline int dtkd_any_nonfinite(const float *p, long n)
{
    int bad = 0;
    for (long i = 0; i < n; i++) bad |= dtkd_nonfinite_bits(p[i]);
    return bad;
}

/* max |p[i]| over p[0..n) as a float's bits (sign cleared), 0 for n == 0: non-negative floats
 * order as their bit patterns and NaN/Inf lie above FLT_MAX's 0x7f7fffff, so one integer max
 * (which vectorizes; a float max reduction does not without -ffast-math, and ran at ~3 cycles
 * per element) gives the largest magnitude and whether any value is non-finite. */
#define DTKD_FLT_MAX_BITS 0x7f7fffffu
static inline uint32_t dtkd_max_abs_bits(const float *p, long n)
{
    /* DTKD_LANES independent maxima (one chain would wait on each compare-select: ~1 value
     * per cycle); signed, as the sign-cleared bits are < 2^31 (SSE2 has no unsigned compare) */
    int32_t acc[DTKD_LANES] = {0};
    long i = 0;
    for (; i + DTKD_LANES <= n; i += DTKD_LANES)
        for (int j = 0; j < DTKD_LANES; j++) {
            int32_t u;
            memcpy(&u, p + i + j, sizeof u);
            u &= 0x7fffffff;
            acc[j] = u > acc[j] ? u : acc[j];
        }
    for (int j = 0; i < n; i++, j++) {
        int32_t u;
        memcpy(&u, p + i, sizeof u);
        u &= 0x7fffffff;
        acc[j] = u > acc[j] ? u : acc[j];
    }
    int32_t m = 0;
    for (int j = 0; j < DTKD_LANES; j++) m = acc[j] > m ? acc[j] : m;
    return (uint32_t)m;
}

static inline double dtkd_lanes_total(const float *acc)
{
    double s = 0.0;
    for (int j = 0; j < DTKD_LANES; j++) s += acc[j];
    return s;
}

/* sum of p[0..n) */
static inline double dtkd_sum(const float *p, long n)
{
    float acc[DTKD_LANES] = {0};
    long i = 0;
    for (; i + DTKD_LANES <= n; i += DTKD_LANES)
        for (int j = 0; j < DTKD_LANES; j++) acc[j] += p[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += p[i];
    return dtkd_lanes_total(acc);
}

/* sum of p[0..n) accumulated in double: the fallback when dtkd_sum's float lanes overflow
 * (finite values near float32's limit; a sum of finite floats is always finite in double) */
static inline double dtkd_sum_wide(const float *p, long n)
{
    double s = 0.0;
    for (long i = 0; i < n; i++) s += p[i];
    return s;
}

/* dtkd_sum, redone in double when the float lanes overflowed: non-finite only when p holds a
 * NaN or Inf */
static inline double dtkd_sum_safe(const float *p, long n)
{
    const double s = dtkd_sum(p, n);
    return s - s == 0.0 ? s : dtkd_sum_wide(p, n);
}

/* sum of (p[i] - m)^2 */
static inline double dtkd_sum_sqdev(const float *p, float m, long n)
{
    float acc[DTKD_LANES] = {0};
    long i = 0;
    for (; i + DTKD_LANES <= n; i += DTKD_LANES)
        for (int j = 0; j < DTKD_LANES; j++) acc[j] += (p[i + j] - m) * (p[i + j] - m);
    for (int j = 0; i < n; i++, j++) acc[j] += (p[i] - m) * (p[i] - m);
    return dtkd_lanes_total(acc);
}

/* sum of (p[i] - m) (a shifted sum: m near the values keeps the float lanes exact-ish where
 * a plain sum of values like 1e7 + noise loses the noise) */
static inline double dtkd_sum_dev(const float *p, float m, long n)
{
    float acc[DTKD_LANES] = {0};
    long i = 0;
    for (; i + DTKD_LANES <= n; i += DTKD_LANES)
        for (int j = 0; j < DTKD_LANES; j++) acc[j] += p[i + j] - m;
    for (int j = 0; i < n; i++, j++) acc[j] += p[i] - m;
    return dtkd_lanes_total(acc);
}

/* dtkd_sum_dev with double lanes: for a mean's low part, where the float lanes' rounding
 * (~1e-7 of the spread per lane sum) would exceed the correction itself */
static inline double dtkd_sum_dev_wide(const float *p, float m, long n)
{
    double acc[8] = {0};
    long i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)p[i + j] - m;
    for (int j = 0; i < n; i++, j++) acc[j] += (double)p[i] - m;
    double s = 0.0;
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

/* sum of ((p[i] - hi) - lo)^2: squared deviations from a center hi + lo held as two floats
 * (a float32 mean near 1e7 is off by up to 0.5) */
static inline double dtkd_sum_sqdev2(const float *p, float hi, float lo, long n)
{
    float acc[DTKD_LANES] = {0};
    long i = 0;
    for (; i + DTKD_LANES <= n; i += DTKD_LANES)
        for (int j = 0; j < DTKD_LANES; j++) {
            const float d = (p[i + j] - hi) - lo;
            acc[j] += d * d;
        }
    for (int j = 0; i < n; i++, j++) {
        const float d = (p[i] - hi) - lo;
        acc[j] += d * d;
    }
    return dtkd_lanes_total(acc);
}

/* sum of a[i] * (b[i] - m) */
static inline double dtkd_dot_dev(const float *a, const float *b, float m, long n)
{
    float acc[DTKD_LANES] = {0};
    long i = 0;
    for (; i + DTKD_LANES <= n; i += DTKD_LANES)
        for (int j = 0; j < DTKD_LANES; j++) acc[j] += a[i + j] * (b[i + j] - m);
    for (int j = 0; i < n; i++, j++) acc[j] += a[i] * (b[i] - m);
    return dtkd_lanes_total(acc);
}

#endif
