/* gemm_avx2.c -- AVX2+FMA SGEMM micro-kernels (6 x 16 and 4 x 24 tiles of C in ymm
 * accumulators) and the AVX2 transposing copy used by the packing. */
#include "kernels/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* c (MR x 8*NV) = alpha * a_panel (kc x MR) . b_panel (kc x 8*NV) + beta * c: MR * NV ymm
 * accumulators, per k NV vector loads of B and MR broadcasts of A. One body, instantiated for
 * the shapes the blocking model chooses among (gemm_blocking.c): 6x16 (12 accumulators, what
 * BLIS uses on Haswell/Zen) and 4x24 (12 accumulators, fewer loads per FMA, and no edge rows
 * when M is a multiple of 4, as the output channels of a conv are). */
#define DEFINE_AVX2_KERNEL(name, MR, NV)                                                       \
    DTKD_TARGET_AVX2 static void name(                                      \
        long kc, const float *restrict a, const float *restrict b, long ldb, float *restrict c, \
        long ldc, float alpha, float beta)                                                     \
    {                                                                                          \
        /* C's rows are far apart: start fetching them now (as gemm_avx512.c) */                \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                                 \
            _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);                            \
            _mm_prefetch((const char *)(c + i * ldc + 8 * NV - 1), _MM_HINT_T0);               \
        }                                                                                      \
        __m256 acc[MR][NV];                                                                    \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                                   \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] = _mm256_setzero_ps(); \
        for (long p = 0; p < kc; p++) {                                                        \
            __m256 bv[NV];                                                                     \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                               \
                bv[v] = _mm256_loadu_ps(b + p * ldb + 8 * v);                                  \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                             \
                __m256 ai = _mm256_broadcast_ss(a + p * MR + i);                               \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                           \
                    acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);                         \
            }                                                                                  \
        }                                                                                      \
        __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                                 \
            float *ci = c + i * ldc;                                                           \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                             \
                __m256 r = _mm256_mul_ps(va, acc[i][v]);                                       \
                if (beta != 0.0f) r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8 * v), r);     \
                _mm256_storeu_ps(ci + 8 * v, r);                                               \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_AVX2_KERNEL(sgemm_kernel_avx2_6x16, 6, 2)
DEFINE_AVX2_KERNEL(sgemm_kernel_avx2_4x24, 4, 3)

/* dst[p * ldd + r] = src[r * lds + p] for r < 8, p < kc: the transposing copy behind packing
 * a row-major A or a transposed B, by 8 x 8 in-register transposes (the portable loop does one
 * strided scalar store per float). Also used by the AVX-512 path. */
DTKD_TARGET_AVX2 void
dtkd_sgemm_pack_8rows_avx2(float *dst, long ldd, const float *src, long lds, long kc)
{
    long p = 0;
    for (; p + 8 <= kc; p += 8) {
        __m256 r0 = _mm256_loadu_ps(src + 0 * lds + p), r1 = _mm256_loadu_ps(src + 1 * lds + p);
        __m256 r2 = _mm256_loadu_ps(src + 2 * lds + p), r3 = _mm256_loadu_ps(src + 3 * lds + p);
        __m256 r4 = _mm256_loadu_ps(src + 4 * lds + p), r5 = _mm256_loadu_ps(src + 5 * lds + p);
        __m256 r6 = _mm256_loadu_ps(src + 6 * lds + p), r7 = _mm256_loadu_ps(src + 7 * lds + p);
        /* interleave pairs of rows, then pairs of pairs, then the 128-bit halves */
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        float *d = dst + p * ldd;
        _mm256_storeu_ps(d + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(d + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (; p < kc; p++)
        for (int r = 0; r < 8; r++) dst[p * ldd + r] = src[r * lds + p];
}

/* The shapes the model may choose; blocking (kc, mc, nc) is derived at run time. */
const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_avx2[] = {
    {6, 16, sgemm_kernel_avx2_6x16},
    {4, 24, sgemm_kernel_avx2_4x24},
    {0, 0, NULL},
};
#else
/* Not x86: the AVX2 path is never chosen (dtkd_isa() reports scalar); an empty kernel list and
 * a no-op pack keep the symbols defined. */
const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_avx2[] = {{0, 0, NULL}};
void dtkd_sgemm_pack_8rows_avx2(float *dst, long ldd, const float *src, long lds, long kc) {}
#endif
