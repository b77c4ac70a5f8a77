/* gemm.c -- placeholder reference SGEMM (triple loop, double accumulation); the packed,
 * blocked version with SIMD micro-kernels replaces it. */
#include "dtkd.h"
#include "kernels/gemm.h"

int dtkd_sgemm(int trans_a, int trans_b, long M, long N, long K, float alpha, const float *A,
               long lda, const float *B, long ldb, float beta, float *C, long ldc)
{
    if (M < 0 || N < 0 || K < 0) return DTKD_ERR_SHAPE;
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++) {
            double acc = 0.0;
            for (long p = 0; p < K; p++) {
                float a = trans_a ? A[p * lda + i] : A[i * lda + p];
                float b = trans_b ? B[j * ldb + p] : B[p * ldb + j];
                acc += (double)a * b;
            }
            float prev = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
            C[i * ldc + j] = alpha * (float)acc + prev;
        }
    return DTKD_OK;
}
