/* gemm_scalar.c -- portable SGEMM micro-kernel (plain C; the compiler may vectorize it with
 * the baseline SSE2). The reference the SIMD micro-kernels are tested against. */
#include "kernels/gemm.h"

#define MR 4
#define NR 8

/* c (MR x NR) = alpha * a_panel (kc x MR) . b_panel (kc x NR) + beta * c */
static void sgemm_kernel_scalar(long kc, const float *restrict a, const float *restrict b,
                                long ldb, float *restrict c, long ldc, float alpha, float beta)
{
    float acc[MR][NR] = {{0.0f}};
    for (long p = 0; p < kc; p++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[p * MR + i] * b[p * ldb + j];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * acc[i][j]
                                          : alpha * acc[i][j] + beta * c[i * ldc + j];
}

/* Blocking (kc, mc, nc) is derived at run time (gemm_blocking.c). */
const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_scalar[] = {
    {MR, NR, sgemm_kernel_scalar},
    {0, 0, NULL},
};
