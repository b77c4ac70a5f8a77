/* Elementwise kernels: memory-bound, so one parallel pass each; the NaN/Inf check of the input
 * rides along in the same pass (a bit test, free next to the memory traffic). */
#include "dtkd.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

int dtkd_all_finite(const float *x, long n)
{
    int bad = 0;
#pragma omp parallel for reduction(|:bad) if (n > PARALLEL_MIN) num_threads(dtkd_get_num_threads())
    for (long i = 0; i < n; i++) bad |= dtkd_nonfinite_bits(x[i]);
    return !bad;
}

uint32_t dtkd_max_abs_bits_parallel(const float *x, long n)
{
    uint32_t m = 0;
#pragma omp parallel for reduction(max:m) if (n > PARALLEL_MIN) num_threads(dtkd_get_num_threads())
    for (long i0 = 0; i0 < n; i0 += 4096) {
        const uint32_t c = dtkd_max_abs_bits(x + i0, n - i0 < 4096 ? n - i0 : 4096);
        m = c > m ? c : m;
    }
    return m;
}

// x, y are (n,)
int dtkd_relu_forward(float *y, const float *x, long n)
{
    int bad = 0;
#pragma omp parallel for reduction(|:bad) if (n > PARALLEL_MIN) num_threads(dtkd_get_num_threads())
    for (long i = 0; i < n; i++) {
        bad |= dtkd_nonfinite_bits(x[i]);
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

// dy, y, dx are (n,)
int dtkd_relu_backward(float *dx, const float *dy, const float *y, long n)
{
#pragma omp parallel for if (n > PARALLEL_MIN) num_threads(dtkd_get_num_threads())
    for (long i = 0; i < n; i++) {
        float g = dy[i]; /* read unconditionally so the select vectorizes (no branch) */
        dx[i] = y[i] > 0.0f ? g : 0.0f;
    }
    return DTKD_OK;
}

// a, b, y are (n,)
int dtkd_add_forward(float *y, const float *a, const float *b, long n)
{
    int bad = 0;
#pragma omp parallel for reduction(|:bad) if (n > PARALLEL_MIN) num_threads(dtkd_get_num_threads())
    for (long i = 0; i < n; i++) {
        float s = a[i] + b[i];
        bad |= dtkd_nonfinite_bits(s);
        y[i] = s;
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

// a, b, y are (n,)
int dtkd_add_relu_forward(float *y, const float *a, const float *b, long n)
{
    int bad = 0;
#pragma omp parallel for reduction(|:bad) if (n > PARALLEL_MIN) num_threads(dtkd_get_num_threads())
    for (long i = 0; i < n; i++) {
        float s = a[i] + b[i];
        bad |= dtkd_nonfinite_bits(s);
        y[i] = s > 0.0f ? s : 0.0f;
    }
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}
