/* gemm.h -- single-precision matrix multiply, the engine of conv and linear. */
#ifndef DTKD_GEMM_H
#define DTKD_GEMM_H

/* C = alpha * op(A) * op(B) + beta * C, all row-major.
 * op(A) is M x K: A is M x K with row stride lda (trans_a == 0) or K x M (trans_a != 0).
 * op(B) is K x N: B is K x N with row stride ldb (trans_b == 0) or N x K (trans_b != 0).
 * C is M x N with row stride ldc. beta == 0 means C is written without being read.
 * Uses dtkd_get_num_threads() threads; runs on the calling thread alone when called from
 * inside an OpenMP parallel region. Returns DTKD_OK or DTKD_ERR_SHAPE / DTKD_ERR_NOMEM. */
int dtkd_sgemm(int trans_a, int trans_b, long M, long N, long K, float alpha, const float *A,
               long lda, const float *B, long ldb, float beta, float *C, long ldc);

#endif
