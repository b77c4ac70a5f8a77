/* fma_peak.c -- this machine's FP32 FMA peak, the yardstick the GEMM is reported against.
 * Each version runs 12 independent accumulator chains (more than FMA latency x FMA ports, so
 * the loop is throughput-bound), fully unrolled, and returns its own result so the compiler
 * cannot drop the work. */
#include "kernels/gemm.h"

#include <omp.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#define CHUNK 100000L /* iterations between clock reads */

/* CPU time of the calling thread: the peak is a property of a core, so time that another
 * process holds the core (a shared machine) must not count against it. */
static double thread_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* a_i = a_i * x + y for 12 chains, `iters` times; FMA is the caller's vector op. */
#define FMA_CHAINS(T, SET1, FMA, ADD, iters, out)                                               \
    do {                                                                                        \
        T x = SET1(0.99999f), y = SET1(1e-6f);                                                  \
        T a0 = SET1(0.f), a1 = SET1(1.f), a2 = SET1(2.f), a3 = SET1(3.f), a4 = SET1(4.f),      \
          a5 = SET1(5.f), a6 = SET1(6.f), a7 = SET1(7.f), a8 = SET1(8.f), a9 = SET1(9.f),       \
          a10 = SET1(10.f), a11 = SET1(11.f);                                                   \
        for (long k = 0; k < (iters); k++) {                                                    \
            a0 = FMA(a0, x, y); a1 = FMA(a1, x, y); a2 = FMA(a2, x, y); a3 = FMA(a3, x, y);     \
            a4 = FMA(a4, x, y); a5 = FMA(a5, x, y); a6 = FMA(a6, x, y); a7 = FMA(a7, x, y);     \
            a8 = FMA(a8, x, y); a9 = FMA(a9, x, y); a10 = FMA(a10, x, y); a11 = FMA(a11, x, y); \
        }                                                                                       \
        out = ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))),            \
                  ADD(ADD(a8, a9), ADD(a10, a11)));                                             \
    } while (0)

/* One dependent chain a = a * x + y, `iters` times: each FMA waits for the previous one, so the
 * loop runs at the FMA latency. Unrolled by 12 like the chains, so loop overhead is the same. */
#define FMA_ONE_CHAIN(T, SET1, FMA, iters, out)                                                 \
    do {                                                                                        \
        T x = SET1(0.99999f), y = SET1(1e-6f), a0 = SET1(1.f);                                 \
        for (long k = 0; k < (iters); k++) {                                                    \
            a0 = FMA(a0, x, y); a0 = FMA(a0, x, y); a0 = FMA(a0, x, y); a0 = FMA(a0, x, y);     \
            a0 = FMA(a0, x, y); a0 = FMA(a0, x, y); a0 = FMA(a0, x, y); a0 = FMA(a0, x, y);     \
            a0 = FMA(a0, x, y); a0 = FMA(a0, x, y); a0 = FMA(a0, x, y); a0 = FMA(a0, x, y);     \
        }                                                                                       \
        out = a0;                                                                               \
    } while (0)

#if defined(__x86_64__) || defined(__i386__)
DTKD_TARGET_AVX512 static float fma_chain_avx512(long iters)
{
    __m512 s;
    FMA_ONE_CHAIN(__m512, _mm512_set1_ps, _mm512_fmadd_ps, iters, s);
    return _mm512_reduce_add_ps(s);
}

DTKD_TARGET_AVX2 static float fma_chain_avx2(long iters)
{
    __m256 s;
    FMA_ONE_CHAIN(__m256, _mm256_set1_ps, _mm256_fmadd_ps, iters, s);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    return lanes[0] + lanes[7];
}

DTKD_TARGET_AVX512 static float fma_chains_avx512(long iters)
{
    __m512 s;
    FMA_CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, iters, s);
    return _mm512_reduce_add_ps(s);
}

DTKD_TARGET_AVX2 static float fma_chains_avx2(long iters)
{
    __m256 s;
    FMA_CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, iters, s);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    return lanes[0] + lanes[7];
}
#endif

/* The portable path: the baseline build vectorizes the scalar micro-kernel with 4-lane SSE2
 * (multiply then add, no FMA), so its yardstick is a 4-lane multiply-add in GCC's vector
 * extension, which compiles to that same baseline on any target. */
typedef float vec4 __attribute__((vector_size(16)));
static vec4 vec4_set1(float v) { return (vec4){v, v, v, v}; }
static vec4 vec4_muladd(vec4 a, vec4 x, vec4 y) { return a * x + y; }
static vec4 vec4_add(vec4 a, vec4 b) { return a + b; }

static float fma_chains_scalar(long iters)
{
    vec4 s;
    FMA_CHAINS(vec4, vec4_set1, vec4_muladd, vec4_add, iters, s);
    return s[0] + s[3];
}

static float fma_chain_scalar(long iters)
{
    vec4 s;
    FMA_ONE_CHAIN(vec4, vec4_set1, vec4_muladd, iters, s);
    return s[0] + s[3];
}

/* flops of one call with `iters` iterations, and the function for `isa` (NULL: unsupported) */
static float (*chains_for(enum dtkd_isa isa, int *lanes))(long)
{
#if defined(__x86_64__) || defined(__i386__)
    if (isa == DTKD_ISA_AVX512 && dtkd_cpu_has_avx512()) { *lanes = 16; return fma_chains_avx512; }
    if (isa == DTKD_ISA_AVX2 && dtkd_cpu_has_avx2_fma()) { *lanes = 8; return fma_chains_avx2; }
#endif
    if (isa == DTKD_ISA_SCALAR) { *lanes = 4; return fma_chains_scalar; }
    return NULL;
}

double dtkd_fma_peak_gflops(enum dtkd_isa isa, double seconds, int nthreads)
{
    int lanes = 0;
    float (*chains)(long) = chains_for(isa, &lanes);
    if (!chains) return -1.0;
    if (nthreads < 1) nthreads = 1;
    double gflops = 0.0;
    volatile float sink = 0.0f;
#pragma omp parallel num_threads(nthreads) reduction(+ : gflops)
    {
        float local = chains(CHUNK); /* warm up: clocks ramp, code paged in */
        long done = 0;
        double t0 = thread_seconds(), t;
        do {
            local += chains(CHUNK);
            done += CHUNK;
            t = thread_seconds() - t0;
        } while (t < seconds);
        gflops += 2.0 * 12.0 * lanes * (double)done / t * 1e-9;
#pragma omp critical
        sink += local;
    }
    (void)sink;
    return gflops; /* the sum of each thread's rate on its own core */
}

/* Seconds of this thread's CPU time per call of fn(iters), the best of `tries` (the least
 * disturbed by interrupts and by other processes' cache traffic). */
static double best_call_seconds(float (*fn)(long), long iters, int tries, volatile float *sink)
{
    double best = -1.0;
    for (int i = 0; i < tries; i++) {
        double t0 = thread_seconds();
        *sink += fn(iters);
        double t = thread_seconds() - t0;
        if (best < 0.0 || t < best) best = t;
    }
    return best;
}

double dtkd_fma_in_flight(enum dtkd_isa isa)
{
    float (*chain)(long) = NULL;
    int lanes = 0;
    float (*chains)(long) = chains_for(isa, &lanes);
    if (!chains) return -1.0;
#if defined(__x86_64__) || defined(__i386__)
    if (isa == DTKD_ISA_AVX512) chain = fma_chain_avx512;
    else if (isa == DTKD_ISA_AVX2) chain = fma_chain_avx2;
#endif
    if (isa == DTKD_ISA_SCALAR) chain = fma_chain_scalar;
    volatile float sink = 0.0f;
    const long iters = 20000; /* 240k FMAs per call: ~0.3 ms dependent, ~0.05 ms throughput */
    chains(iters);            /* warm up */
    double one = best_call_seconds(chain, iters, 5, &sink);      /* 12 * iters dependent FMAs */
    double twelve = best_call_seconds(chains, iters, 5, &sink);  /* 12 * iters independent */
    (void)sink;
    if (one <= 0.0 || twelve <= 0.0) return -1.0;
    /* if 12 chains do not saturate the pipes (latency x pipes > 12), this reads 12: enough
     * for the tile model, which only asks whether a tile has as many accumulators */
    return one / twelve;
}
