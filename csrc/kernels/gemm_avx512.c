/* gemm_avx512.c -- AVX-512 SGEMM micro-kernel: an MR x NR tile of C held in MR * NR/16 zmm
 * accumulators; per k, NR/16 vector loads of B and MR broadcasts of A. */
#include "kernels/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* 8 x 32 (16 accumulators) measured as fast as 6x64, 14x32 and 12x32 at 1024^3 and faster on
 * conv shapes, whose M (output channels) is a power of two that 8 divides. */
#define MR 8
#define NR 32
#define NV (NR / 16)

/* c (MR x NR) = alpha * a_panel (kc x MR) . b_panel (kc x NR) + beta * c */
DTKD_TARGET_AVX512 static void
sgemm_kernel_avx512(long kc, const float *restrict a, const float *restrict b, long ldb,
                    float *restrict c, long ldc, float alpha, float beta)
{
    /* C's rows are far apart (a cache/TLB miss each): start fetching them now, so the miss
     * overlaps the k loop instead of stalling the stores (measured +5% at 1024^3). */
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm_prefetch((const char *)(c + i * ldc + 16 * v), _MM_HINT_T0);
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (long p = 0; p < kc; p++) {
        __m512 bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + p * ldb + 16 * v);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[p * MR + i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        float *ci = c + i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 r = _mm512_mul_ps(va, acc[i][v]);
            if (beta != 0.0f) r = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci + 16 * v), r);
            _mm512_storeu_ps(ci + 16 * v, r);
        }
    }
}

/* Blocking (kc, mc, nc) is derived at run time (gemm_blocking.c). */
const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_avx512[] = {
    {MR, NR, sgemm_kernel_avx512},
    {0, 0, NULL},
};
#else
const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_avx512[] = {{0, 0, NULL}};
#endif
