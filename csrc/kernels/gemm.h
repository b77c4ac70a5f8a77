/* gemm.h -- single-precision matrix multiply, the engine of conv and linear. */
#ifndef DTKD_GEMM_H
#define DTKD_GEMM_H

#include "dtkd.h"

/* C = alpha * op(A) * op(B) + beta * C, all row-major.
 * op(A) is M x K: A is M x K with row stride lda (trans_a == 0) or K x M (trans_a != 0).
 * op(B) is K x N: B is K x N with row stride ldb (trans_b == 0) or N x K (trans_b != 0).
 * C is M x N with row stride ldc. beta == 0 means C is written without being read.
 * Uses dtkd_get_num_threads() threads; runs on the calling thread alone when called from
 * inside an OpenMP parallel region. Returns DTKD_OK or DTKD_ERR_SHAPE / DTKD_ERR_NOMEM. */
int dtkd_sgemm(int trans_a, int trans_b, long M, long N, long K, float alpha, const float *A,
               long lda, const float *B, long ldb, float beta, float *C, long ldc);

/* Micro-kernel: c (MR x NR, row stride ldc) = alpha * a_panel * b_panel + beta * c, where
 * a_panel is kc x MR (MR contiguous floats per k, 64-byte aligned) and b_panel is kc x NR with
 * row stride ldb (NR when packed; B's own stride when B is read in place). beta == 0: c is not
 * read. */
typedef void (*dtkd_sgemm_kernel_fn)(long kc, const float *a_panel, const float *b_panel,
                                     long ldb, float *c, long ldc, float alpha, float beta);

/* One instruction set's micro-kernel and its cache blocking (BLIS names): the packed B block
 * is kc x nc (L3), the packed A block mc x kc (L2), a B micro-panel kc x nr (L1). */
struct dtkd_sgemm_config {
    int mr, nr;
    long kc, mc, nc; /* mc is a multiple of mr, nc of nr */
    dtkd_sgemm_kernel_fn kernel;
    /* Optional SIMD transposing copy for the packing (NULL: portable loops):
     * dst[p * ldd + r] = src[r * lds + p] for r < 8, p < kc. */
    void (*pack_8rows)(float *dst, long ldd, const float *src, long lds, long kc);
};
extern const struct dtkd_sgemm_config dtkd_sgemm_config_scalar; /* gemm_scalar.c */
extern const struct dtkd_sgemm_config dtkd_sgemm_config_avx2;   /* gemm_avx2.c */
extern const struct dtkd_sgemm_config dtkd_sgemm_config_avx512; /* gemm_avx512.c */
void dtkd_sgemm_pack_8rows_avx2(float *dst, long ldd, const float *src, long lds, long kc);

/* FP32 FMA throughput of `isa` on `nthreads` threads, measured for about `seconds` by a loop
 * of 12 independent FMA chains (fma_peak.c), each thread timed by its own CPU time (so load
 * from other processes does not lower it). Returns GFLOP/s (an FMA counts 2 flops), or a
 * negative value when the CPU lacks `isa`. For the portable path: a 4-lane (SSE2 baseline)
 * multiply plus add, what the compiler makes of the scalar micro-kernel. */
double dtkd_fma_peak_gflops(enum dtkd_isa isa, double seconds, int nthreads);

#endif
