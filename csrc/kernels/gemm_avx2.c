/* gemm_avx2.c -- AVX2+FMA SGEMM micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators. */
#include "kernels/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define MR 6
#define NR 16

/* c (6 x 16) = alpha * a_panel (kc x 6) . b_panel (kc x 16) + beta * c */
__attribute__((target("avx2,fma"))) static void
sgemm_kernel_avx2(long kc, const float *restrict a, const float *restrict b, float *restrict c,
                  long ldc, float alpha, float beta)
{
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (long p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(b + p * NR), b1 = _mm256_load_ps(b + p * NR + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + p * MR + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        float *ci = c + i * ldc;
        __m256 r0 = _mm256_mul_ps(va, acc[i][0]), r1 = _mm256_mul_ps(va, acc[i][1]);
        if (beta != 0.0f) {
            r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), r0);
            r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), r1);
        }
        _mm256_storeu_ps(ci, r0);
        _mm256_storeu_ps(ci + 8, r1);
    }
}

const struct dtkd_sgemm_config dtkd_sgemm_config_avx2 = {
    .mr = MR, .nr = NR, .kc = 256, .mc = 120, .nc = 4096, .kernel = sgemm_kernel_avx2,
};
#else
/* Not x86: the AVX2 path is never chosen (dtkd_isa() reports scalar); alias the portable one. */
const struct dtkd_sgemm_config dtkd_sgemm_config_avx2 = {0};
#endif
