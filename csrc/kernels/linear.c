/* Fully connected layer on top of dtkd_sgemm (row-major, PyTorch's (out, in) weight). */
#include "dtkd.h"
#include "kernels/linear.h"
#include "kernels/gemm.h"

int dtkd_linear_forward(float *y, const float *x, const float *w, const float *b, long N, long IN,
                        long OUT)
{
    if (N < 1 || IN < 1 || OUT < 1) return DTKD_ERR_SHAPE;
    int st = dtkd_sgemm(0, 1, N, OUT, IN, 1.0f, x, IN, w, IN, 0.0f, y, OUT);
    if (st || !b) return st;
    for (long n = 0; n < N; n++)
        for (long o = 0; o < OUT; o++) y[n * OUT + o] += b[o];
    return DTKD_OK;
}

int dtkd_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, long N, long IN, long OUT)
{
    if (N < 1 || IN < 1 || OUT < 1) return DTKD_ERR_SHAPE;
    int st;
    if (dx && (st = dtkd_sgemm(0, 0, N, IN, OUT, 1.0f, dy, OUT, w, IN, 0.0f, dx, IN))) return st;
    if (dw && (st = dtkd_sgemm(1, 0, OUT, IN, N, 1.0f, dy, OUT, x, IN, 1.0f, dw, IN))) return st;
    if (db)
        for (long o = 0; o < OUT; o++) {
            double acc = 0.0;
            for (long n = 0; n < N; n++) acc += dy[n * OUT + o];
            db[o] += (float)acc;
        }
    return DTKD_OK;
}
