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

/* A micro-kernel an instruction set offers: its mr x nr register tile and the function. Lists
 * end with {0, 0, NULL}; the first entry is the default when the model has no preference. */
struct dtkd_sgemm_kernel_desc {
    int mr, nr;
    dtkd_sgemm_kernel_fn fn;
};
extern const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_scalar[]; /* gemm_scalar.c */
extern const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_avx2[];   /* gemm_avx2.c */
extern const struct dtkd_sgemm_kernel_desc dtkd_sgemm_kernels_avx512[]; /* gemm_avx512.c */
void dtkd_sgemm_pack_8rows_avx2(float *dst, long ldd, const float *src, long lds, long kc);

/* One micro-kernel and its cache blocking (BLIS names): the packed B block is kc x nc (L3),
 * the packed A block mc x kc (L2), a B micro-panel kc x nr (L1). */
struct dtkd_sgemm_config {
    int mr, nr;
    long kc, mc, nc; /* mc is a multiple of mr, nc of nr */
    dtkd_sgemm_kernel_fn kernel;
    /* Optional SIMD transposing copy for the packing (NULL: portable loops):
     * dst[p * ldd + r] = src[r * lds + p] for r < 8, p < kc. */
    void (*pack_8rows)(float *dst, long ldd, const float *src, long lds, long kc);
    double efficiency; /* modelled fraction of peak of the register tile (latency hiding) */
    int tuned;         /* 1: kc, mc, nc set by dtkd_sgemm_set_blocking (autotune), 0: model */
};

/* What the blocking model (gemm_blocking.c, after Low et al., "Analytical Modeling Is Enough
 * for High-Performance BLIS", ACM TOMS 2016) reads of a machine. */
struct dtkd_sgemm_machine {
    struct dtkd_cache_level l1d, l2, l3;
    double fma_in_flight; /* independent FMAs needed to hide the FMA latency (latency x pipes) */
    int vector_floats;    /* floats per vector register */
    int registers;        /* vector registers */
};

/* kc, mc, nc for an mr x nr micro-kernel on machine m: the A and B micro-panels share the L1
 * ways but one, the packed A block fills L2's ways but one and those of a B micro-panel, the
 * packed B block its thread's share of L3 (nc capped at 4096 columns). */
void dtkd_sgemm_blocking_model(const struct dtkd_sgemm_machine *m, int mr, int nr, long *kc,
                               long *mc, long *nc);
/* mc and nc for an mr x nr micro-kernel at a given kc (the second half of the model). */
void dtkd_sgemm_blocking_for_kc(const struct dtkd_sgemm_machine *m, int mr, int nr, long kc,
                                long *mc, long *nc);
/* Modelled efficiency of an mr x nr register tile: 0 if it does not fit the registers
 * (accumulators + B vectors + 1 broadcast), else min(1, accumulators / fma_in_flight). */
double dtkd_sgemm_tile_efficiency(const struct dtkd_sgemm_machine *m, int mr, int nr);

/* The configurations (one per micro-kernel of `isa`, derived once per process from the CPU's
 * caches and its measured FMA latency x throughput) and their count. */
const struct dtkd_sgemm_config *dtkd_sgemm_configs(enum dtkd_isa isa, int *count);
/* The machine facts the configurations of `isa` were derived from. */
const struct dtkd_sgemm_machine *dtkd_sgemm_machine(enum dtkd_isa isa);
/* The configuration dtkd_sgemm uses for an M x N product: the least modelled time, i.e. the
 * least padded tile area (edge tiles are computed in full) divided by tile efficiency. */
const struct dtkd_sgemm_config *dtkd_sgemm_choose(enum dtkd_isa isa, long M, long N);
/* Override kc, mc, nc of configuration `index` of `isa` (autotune); all <= 0: back to the
 * model. kc belongs to the path: it is set for every configuration of `isa` (the K blocking
 * decides the rounding, and must not change with the kernel a shape picks). Returns DTKD_OK
 * or DTKD_ERR_VALUE. */
int dtkd_sgemm_set_blocking(enum dtkd_isa isa, int index, long kc, long mc, long nc);

/* Make dtkd_sgemm_choose return configuration `index` of `isa` for every problem (-1: choose
 * by the model again), so autotune times one kernel and tests check each. */
int dtkd_sgemm_force_kernel(enum dtkd_isa isa, int index);

/* Independent FMAs the CPU needs in flight to reach its FMA throughput on `isa`: the time of
 * one dependent FMA over the time per FMA at full throughput (= latency x FMA pipes), measured
 * by two short loops on the calling thread's CPU time. Negative if the CPU lacks `isa`. */
double dtkd_fma_in_flight(enum dtkd_isa isa);

/* FP32 FMA throughput of `isa` on `nthreads` threads, measured for about `seconds` by a loop
 * of 12 independent FMA chains (fma_peak.c), each thread timed by its own CPU time (so load
 * from other processes does not lower it). Returns GFLOP/s (an FMA counts 2 flops), or a
 * negative value when the CPU lacks `isa`. For the portable path: a 4-lane (SSE2 baseline)
 * multiply plus add, what the compiler makes of the scalar micro-kernel. */
double dtkd_fma_peak_gflops(enum dtkd_isa isa, double seconds, int nthreads);

#endif
