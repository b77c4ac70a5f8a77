/* gemm_avx2.c -- AVX2+FMA SGEMM micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators. */
#include "kernels/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define MR 6
#define NR 16

/* c (6 x 16) = alpha * a_panel (kc x 6) . b_panel (kc x 16) + beta * c */
DTKD_TARGET_AVX2 static void
sgemm_kernel_avx2(long kc, const float *restrict a, const float *restrict b, long ldb,
                  float *restrict c, long ldc, float alpha, float beta)
{
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (long p = 0; p < kc; p++) {
        __m256 b0 = _mm256_loadu_ps(b + p * ldb), b1 = _mm256_loadu_ps(b + p * ldb + 8);
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

/* Measured on Zen 4 over kc 256..512, mc 48..120, nc 1024..4096 (differences within ~3%). */
const struct dtkd_sgemm_config dtkd_sgemm_config_avx2 = {
    .mr = MR, .nr = NR, .kc = 384, .mc = 96, .nc = 2048, .kernel = sgemm_kernel_avx2,
    .pack_8rows = dtkd_sgemm_pack_8rows_avx2,
};
#else
/* Not x86: the AVX2 path is never chosen (dtkd_isa() reports scalar); an empty config and a
 * no-op pack keep the symbols defined. */
const struct dtkd_sgemm_config dtkd_sgemm_config_avx2 = {0};
void dtkd_sgemm_pack_8rows_avx2(float *dst, long ldd, const float *src, long lds, long kc) {}
#endif
