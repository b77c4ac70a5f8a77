/* losses.c -- distillation losses on logits (see losses.h for the contract and semantics).
 *
 * Layout: small always-inline row primitives (max, sum of exps, softmax-pair moments, softmax-
 * pair backward) written once in plain C with `omp simd` loops; per-row kernels built from them;
 * each per-row kernel compiled three times (portable, AVX2+FMA, AVX-512 via target attributes)
 * and chosen at run time with dtkd_isa(); batch drivers that run rows in parallel. The row
 * kernels of KL, DKD and cross-entropy take a constant `wide` flag that, in their AVX-512
 * build, swaps the primitives they spend their time in for AVX-512 intrinsic versions (masked
 * tails, in-register reductions: what GCC's omp simd lowering does badly at C ~ 100). The
 * `*_forward_backward` drivers (what the bindings call) run a row's forward and backward
 * together while its exps are in cache.
 *
 * Every pass over a row costs one exp per element and one softmax pair; the KL and DKD forwards
 * gather all the moments their loss and temperature gradient need in a single exp pass, so a
 * forward + backward reads each logit three times (max, moments, gradient) and takes four exps.
 */
/* The exp loops below vectorize only when the compiler may evaluate both arms of a select
 * (if-conversion); that needs FP traps off, which dtkd never enables. Kept to this file. */
#pragma GCC optimize("no-trapping-math")

#include "losses.h"

#include <float.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define X86_SIMD 1
#else
#define X86_SIMD 0 /* elsewhere only the portable builds run (dtkd_isa() is scalar) */
#endif

/* Rows run in parallel only when a batch holds at least this many logits: below it the
 * OpenMP fork/join costs more than the second core saves (benchmarks/bench_losses.py). */
#define PARALLEL_MIN_ELEMENTS 32768L

#define INLINE static inline __attribute__((always_inline))
#define SIMD_AVX2 DTKD_TARGET_AVX2 __attribute__((noinline))
#define SIMD_AVX512 DTKD_TARGET_AVX512 __attribute__((noinline))

/* Three builds of one always-inline function: the compiler vectorizes the same C for each ISA. */
#define ISA_VARIANTS(ret, name, params, args)                                                    \
    static __attribute__((noinline)) ret name##_portable params { return name args; }            \
    static SIMD_AVX2 ret name##_avx2 params { return name args; }                                 \
    static SIMD_AVX512 ret name##_avx512 params { return name args; }
/* The same for a row kernel whose last parameter `wide` selects the AVX-512 primitives. */
#define ISA_VARIANTS_WIDE(ret, name, params, ...)                                                \
    static __attribute__((noinline)) ret name##_portable params { return name(__VA_ARGS__, 0); } \
    static SIMD_AVX2 ret name##_avx2 params { return name(__VA_ARGS__, 0); }                      \
    static SIMD_AVX512 ret name##_avx512 params { return name(__VA_ARGS__, 1); }
#define ISA_PICK(name)                                                                           \
    (dtkd_isa() == DTKD_ISA_AVX512 ? name##_avx512                                               \
     : dtkd_isa() == DTKD_ISA_AVX2 ? name##_avx2                                                  \
                                   : name##_portable)

/* Row statuses: ROW_NONFINITE (an input holds NaN or Inf), ROW_RANGE (a result beyond float32's
 * range), 0 ok, 1 a DTKD fallback row. */
#define ROW_NONFINITE (-1)
#define ROW_RANGE (-2)

/* The kernel status for the OR of -status over the failed rows. */
static int rows_status(int bad)
{
    return bad & -ROW_NONFINITE ? DTKD_ERR_NONFINITE : bad & -ROW_RANGE ? DTKD_ERR_RANGE : DTKD_OK;
}

/* Runs the row status expression `row_status` (an int that may use the row index i: < 0 for a
 * failed row, > 0 for a DTKD fallback row) for i in [0, N), counting into the caller's
 * `bad` (the OR of the failures' -status) and `fallbacks`. Rows go to the OpenMP team only when N*C pays for it: below that even
 * an if(0) parallel region costs about a microsecond per call. */
#define FOR_EACH_ROW(N, C, row_status)                                                           \
    do {                                                                                          \
        if ((N) * (C) >= PARALLEL_MIN_ELEMENTS) {                                                 \
            _Pragma("omp parallel for num_threads(dtkd_get_num_threads()) schedule(static) reduction(| : bad) reduction(+ : fallbacks)") \
            for (long i = 0; i < (N); i++) {                                                      \
                int st_ = (row_status);                                                           \
                bad |= st_ < 0 ? -st_ : 0;                                                        \
                fallbacks += st_ > 0;                                                             \
            }                                                                                     \
        } else {                                                                                  \
            for (long i = 0; i < (N); i++) {                                                      \
                int st_ = (row_status);                                                           \
                bad |= st_ < 0 ? -st_ : 0;                                                        \
                fallbacks += st_ > 0;                                                             \
            }                                                                                     \
        }                                                                                         \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Row primitives                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* exp(x) for x <= 0 (every argument here is max-shifted; a caller whose x may be > 0 discards
 * the result), float precision (~1 ulp): Cody-Waite range reduction x = n ln2 + r, a degree-6
 * polynomial for exp(r), 2^n built in the exponent bits. n is rounded by adding 1.5 2^23
 * (whose low mantissa bits then hold n + 127, the biased exponent). Branch-free so that loops
 * calling it vectorize. Below -87 (exp(-87) ~ 1.6e-38, the edge of float's normal range) it
 * returns exactly 0: a masked logit (-1e9, -1e38) has probability 0, and e * x stays 0 in the
 * moment sums however large |x| is. (It used to return exp(-87), which those products turned
 * into KL errors of order 1e-38 |x|: a DTKD gradient of 10.38 instead of 0.38 at x = -1e20.) */
INLINE float exp_nonpos(float x)
{
    float xc = x < -87.0f ? -87.0f : x;
    union { float f; int32_t i; } k = {.f = xc * 1.44269504088896341f + (12582912.0f + 127.0f)};
    float fn = k.f - (12582912.0f + 127.0f);            /* round(x / ln2) */
    float r = xc - fn * 0.693359375f;                   /* ln2 split in two for exactness */
    r = r + fn * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = k.i << 23};
    return x < -87.0f ? 0.0f : e * scale.f;
}

/* 1 if x[0:n] is all finite: x * 0 is 0 for finite x and NaN for NaN or Inf. */
INLINE int row_finite(const float *x, long n)
{
    float poison = 0.0f;
#pragma omp simd reduction(+ : poison)
    for (long j = 0; j < n; j++) poison += x[j] * 0.0f;
    return poison == 0.0f;
}

/* max of x[lo:hi] (-INF for an empty range). */
INLINE float range_max(const float *x, long lo, long hi)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (long j = lo; j < hi; j++) m = x[j] > m ? x[j] : m;
    return m;
}

/* Sums over a row run in blocks: within a block each SIMD lane adds a few terms in float
 * (so the loop vectorizes without spilling), and block sums are added in double. */
#define SUM_BLOCK 128L

/* Row maxima of s and t in one pass; returns 0 if either row holds NaN or Inf (x * 0 is 0 for
 * finite x and NaN otherwise). */
INLINE int pair_max_finite(const float *s, const float *t, long n, float *m_s, float *m_t)
{
    float ms = -INFINITY, mt = -INFINITY, poison = 0.0f;
#pragma omp simd reduction(max : ms, mt) reduction(+ : poison)
    for (long j = 0; j < n; j++) {
        ms = s[j] > ms ? s[j] : ms;
        mt = t[j] > mt ? t[j] : mt;
        poison += s[j] * 0.0f + t[j] * 0.0f;
    }
    *m_s = ms;
    *m_t = mt;
    return poison == 0.0f;
}

/* First index of the value m in x (m is its max): the arg-max, ties to the first index.
 * A min-reduction over the row rather than an early-exit scan, so that it vectorizes. */
INLINE long first_index_of(const float *x, float m, long n)
{
    long first = n - 1;
    for (long j0 = 0; j0 < n; j0 += SUM_BLOCK) {   /* int lanes: twice the width of long */
        const int len = (int)(j0 + SUM_BLOCK < n ? SUM_BLOCK : n - j0);
        int hit = len;
#pragma omp simd reduction(min : hit)
        for (int j = 0; j < len; j++) hit = x[j0 + j] == m && j < hit ? j : hit;
        if (hit < len) return j0 + hit;
    }
    return first;
}

/* sum over j in [lo, hi) of exp((x_j - shift) / T). */
INLINE double range_sum_exp(const float *x, float shift, float inv_t, long lo, long hi)
{
    double z = 0.0;
    for (long j0 = lo; j0 < hi; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < hi ? j0 + SUM_BLOCK : hi;
        float zb = 0.0f;
#pragma omp simd reduction(+ : zb)
        for (long j = j0; j < j1; j++) zb += exp_nonpos((x[j] - shift) * inv_t);
        z += zb;
    }
    return z;
}

/* ---- AVX-512 versions of the four row primitives KD, DTKD and DKD spend their time in ----
 * The generic C above vectorizes, but GCC lowers its `omp simd` reductions through stack
 * arrays reduced one lane at a time, and finishes each loop with a scalar tail (100 classes =
 * 6 vectors + 4 scalar iterations of the exp polynomial). These take the tail as one masked
 * vector and reduce in registers; same formulas, same polynomial (fused multiply-adds). The
 * kernels below call them only from their AVX-512 builds (the `wide` flag). */

#if X86_SIMD
#define AVX512_ONLY static inline DTKD_TARGET_AVX512 __attribute__((always_inline))
/* Inlined into the AVX-512 builds of the row kernels; the other builds keep a (never taken)
 * call, since GCC does not inline across incompatible targets. */
#define AVX512_ROW static inline DTKD_TARGET_AVX512

/* Lanes [0, n) of a 16-lane block (n may exceed 16). */
AVX512_ONLY __mmask16 lanes_below(long n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* exp_nonpos on the lanes of `keep` (0 elsewhere, and 0 below -87 like exp_nonpos): the same
 * reduction and polynomial, with round-to-nearest (vrndscaleps) for n and a zero-masked
 * vscalefps for the 2^n. */
AVX512_ONLY __m512 exp_nonpos16(__mmask16 keep, __m512 x)
{
    keep &= _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(fn, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps(keep, e, fn);
}

AVX512_ROW int pair_max_finite_avx512(const float *s, const float *t, long n, float *m_s,
                                               float *m_t)
{
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
    __m512 ms = neg_inf, mt = neg_inf, poison = zero;
    for (long j = 0; j < n; j += 16) {
        const __mmask16 m = lanes_below(n - j);
        const __m512 sv = _mm512_maskz_loadu_ps(m, s + j), tv = _mm512_maskz_loadu_ps(m, t + j);
        ms = _mm512_mask_max_ps(ms, m, ms, sv);
        mt = _mm512_mask_max_ps(mt, m, mt, tv);
        poison = _mm512_add_ps(poison, _mm512_fmadd_ps(sv, zero, _mm512_mul_ps(tv, zero)));
    }
    *m_s = _mm512_reduce_max_ps(ms);
    *m_t = _mm512_reduce_max_ps(mt);
    return _mm512_reduce_add_ps(poison) == 0.0f;
}

AVX512_ROW long first_index_of_avx512(const float *x, float m, long n)
{
    const __m512 mv = _mm512_set1_ps(m);
    for (long j = 0; j < n; j += 16) {
        const __mmask16 lanes = lanes_below(n - j);
        const __mmask16 hit = _mm512_mask_cmp_ps_mask(lanes, _mm512_maskz_loadu_ps(lanes, x + j), mv, _CMP_EQ_OQ);
        if (hit) return j + __builtin_ctz((unsigned)hit);
    }
    return n - 1;
}

/* Max of x[0:n]; returns 0 if x holds NaN or Inf. */
AVX512_ROW int row_max_finite_avx512(const float *x, long n, float *max)
{
    const __m512 zero = _mm512_setzero_ps();
    __m512 m = _mm512_set1_ps(-INFINITY), poison = zero;
    for (long j = 0; j < n; j += 16) {
        const __mmask16 lanes = lanes_below(n - j);
        const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + j);
        m = _mm512_mask_max_ps(m, lanes, m, xv);
        poison = _mm512_fmadd_ps(xv, zero, poison);
    }
    *max = _mm512_reduce_max_ps(m);
    return _mm512_reduce_add_ps(poison) == 0.0f;
}

/* e[j] = exp(x[j] - shift) (x <= shift) for j in [0, n); returns their sum. */
AVX512_ROW double exp_store_sum_avx512(float *e, const float *x, float shift, long n)
{
    const __m512 sh = _mm512_set1_ps(shift);
    double z = 0.0;
    for (long j0 = 0; j0 < n; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < n ? j0 + SUM_BLOCK : n;
        __m512 zb = _mm512_setzero_ps();
        for (long j = j0; j < j1; j += 16) {
            const __mmask16 lanes = lanes_below(j1 - j);
            const __m512 ev = exp_nonpos16(lanes, _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x + j), sh));
            _mm512_mask_storeu_ps(e + j, lanes, ev);
            zb = _mm512_add_ps(zb, ev);
        }
        z += _mm512_reduce_add_ps(zb);
    }
    return z;
}

/* x[j] *= a for j in [0, n). */
AVX512_ROW void scale_row_avx512(float *x, float a, long n)
{
    const __m512 av = _mm512_set1_ps(a);
    for (long j = 0; j < n; j += 16) {
        const __mmask16 lanes = lanes_below(n - j);
        _mm512_mask_storeu_ps(x + j, lanes, _mm512_mul_ps(av, _mm512_maskz_loadu_ps(lanes, x + j)));
    }
}

/* log(x) on 8 doubles, x > 0 finite and normal: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
 * log m = 2 atanh(f), f = (m - 1) / (m + 1), |f| <= 0.172, by its series up to f^21
 * (truncation ~1e-17 relative). */
AVX512_ONLY __m512d log_pd8(__m512d x)
{
    const __m512d one = _mm512_set1_pd(1.0);
    __m512d m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __m512d e = _mm512_getexp_pd(x);
    const __mmask8 high = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, high, m, _mm512_set1_pd(0.5));
    e = _mm512_mask_add_pd(e, high, e, one);
    const __m512d f = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
    const __m512d f2 = _mm512_mul_pd(f, f);
    __m512d p = _mm512_set1_pd(1.0 / 21);
    static const double coef[] = {1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13, 1.0 / 11, 1.0 / 9,
                                  1.0 / 7, 1.0 / 5, 1.0 / 3};
    for (int k = 0; k < 9; k++) p = _mm512_fmadd_pd(p, f2, _mm512_set1_pd(coef[k]));
    const __m512d two_f = _mm512_add_pd(f, f);
    const __m512d log_m = _mm512_fmadd_pd(_mm512_mul_pd(two_f, f2), p, two_f);
    return _mm512_fmadd_pd(e, _mm512_set1_pd(0.6931471805599453), log_m);
}

#endif /* X86_SIMD */

typedef struct pair_moments pair_moments;
#if X86_SIMD
AVX512_ROW void pair_moments_row_avx512(pair_moments *acc, float *exp_s, float *exp_t,
                                                const float *s, const float *t,
                                                const dtkd_softmax_pair *pr, long skip, long n,
                                                int full);
#endif

#if X86_SIMD
AVX512_ROW void pair_backward_cached_row_avx512(float *ds, const float *exp_s,
                                                        const float *exp_t, float cq, float cp,
                                                        long n)
{
    const __m512 vq = _mm512_set1_ps(cq), vp = _mm512_set1_ps(cp);
    for (long j = 0; j < n; j += 16) {
        const __mmask16 m = lanes_below(n - j);
        const __m512 g = _mm512_fmsub_ps(vq, _mm512_maskz_loadu_ps(m, exp_s + j),
                                         _mm512_mul_ps(vp, _mm512_maskz_loadu_ps(m, exp_t + j)));
        _mm512_mask_storeu_ps(ds + j, m, g);
    }
}
#endif

/* sum of x[0:n] and of x[j] y[j]. */
INLINE double range_sum(const float *x, long n)
{
    double z = 0.0;
    for (long j0 = 0; j0 < n; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < n ? j0 + SUM_BLOCK : n;
        float zb = 0.0f;
#pragma omp simd reduction(+ : zb)
        for (long j = j0; j < j1; j++) zb += x[j];
        z += zb;
    }
    return z;
}

INLINE double range_dot(const float *x, const float *y, long n)
{
    double z = 0.0;
    for (long j0 = 0; j0 < n; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < n ? j0 + SUM_BLOCK : n;
        float zb = 0.0f;
#pragma omp simd reduction(+ : zb)
        for (long j = j0; j < j1; j++) zb += x[j] * y[j];
        z += zb;
    }
    return z;
}

/* Unnormalized moments of a softmax pair over a row (class `skip` left out; -1: none), with
 * v = (s - shift_s) / T_s, u = (t - shift_t) / T_t, e_q = exp(v), e_p = exp(u):
 * zq = sum e_q, zp = sum e_p, p_u = sum e_p u, p_v = sum e_p v, q_v = sum e_q v,
 * p_uu = sum e_p u^2, p_uv = sum e_p u v. They give KL and its derivatives in T_s, T_t.
 * When exp_s / exp_t are given, e_q and e_p are also stored there (index j), so that the
 * backward needs no exps of its own. */
struct pair_moments {
    double zq, zp, p_u, p_v, q_v, p_uu, p_uv;
    double log_zq, log_zp, log_ratio; /* log zq, log zp, log(zq / zp): set by pair_logs */
};

INLINE void pair_moments_row(pair_moments *acc, float *exp_s, float *exp_t, const float *s,
                             const float *t, const dtkd_softmax_pair *pr, long skip, long n)
{
    const int store = exp_s != NULL;
    const long lo = 0, hi = n;
    const float ss = pr->shift_s, st = pr->shift_t, ia = pr->inv_ts, ib = pr->inv_tt;
    for (long j0 = lo; j0 < hi; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < hi ? j0 + SUM_BLOCK : hi;
        float zq = 0, zp = 0, p_u = 0, p_v = 0, q_v = 0, p_uu = 0, p_uv = 0;
#pragma omp simd reduction(+ : zq, zp, p_u, p_v, q_v, p_uu, p_uv)
        for (long j = j0; j < j1; j++) {
            float v = (s[j] - ss) * ia, u = (t[j] - st) * ib;
            /* the skipped class (may have v, u > 0) is selected away, exp and all */
            float eq = j == skip ? 0.0f : exp_nonpos(v), ep = j == skip ? 0.0f : exp_nonpos(u);
            if (store) {
                exp_s[j] = eq;
                exp_t[j] = ep;
            }
            float epu = ep * u;
            zq += eq;
            zp += ep;
            p_u += epu;
            p_v += ep * v;
            q_v += eq * v;
            p_uu += epu * u;
            p_uv += epu * v;
        }
        acc->zq += zq;
        acc->zp += zp;
        acc->p_u += p_u;
        acc->p_v += p_v;
        acc->q_v += q_v;
        acc->p_uu += p_uu;
        acc->p_uv += p_uv;
    }
}

#if X86_SIMD
AVX512_ROW void pair_moments_row_avx512(pair_moments *acc, float *exp_s, float *exp_t,
                                                const float *s, const float *t,
                                                const dtkd_softmax_pair *pr, long skip, long n,
                                                int full)
{
    const __m512 ss = _mm512_set1_ps(pr->shift_s), st = _mm512_set1_ps(pr->shift_t);
    const __m512 ia = _mm512_set1_ps(pr->inv_ts), ib = _mm512_set1_ps(pr->inv_tt);
    for (long j0 = 0; j0 < n; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < n ? j0 + SUM_BLOCK : n;
        __m512 zq = _mm512_setzero_ps(), zp = zq, p_u = zq, p_v = zq, q_v = zq, p_uu = zq, p_uv = zq;
        for (long j = j0; j < j1; j += 16) {
            const __mmask16 lanes = lanes_below(j1 - j);
            /* the skipped class (may have v, u > 0) and lanes past the row are zeroed, exp and all */
            __mmask16 keep = lanes;
            if (skip >= j && skip < j + 16) keep &= (__mmask16)~(1u << (skip - j));
            const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + j), ss), ia);
            const __m512 u = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, t + j), st), ib);
            const __m512 eq = exp_nonpos16(keep, v), ep = exp_nonpos16(keep, u);
            if (exp_s) {
                _mm512_mask_storeu_ps(exp_s + j, lanes, eq);
                _mm512_mask_storeu_ps(exp_t + j, lanes, ep);
            }
            zq = _mm512_add_ps(zq, eq);
            zp = _mm512_add_ps(zp, ep);
            p_u = _mm512_fmadd_ps(ep, u, p_u);
            p_v = _mm512_fmadd_ps(ep, v, p_v);
            if (full) {
                const __m512 epu = _mm512_mul_ps(ep, u);
                q_v = _mm512_fmadd_ps(eq, v, q_v);
                p_uu = _mm512_fmadd_ps(epu, u, p_uu);
                p_uv = _mm512_fmadd_ps(epu, v, p_uv);
            }
        }
        acc->zq += _mm512_reduce_add_ps(zq);
        acc->zp += _mm512_reduce_add_ps(zp);
        acc->p_u += _mm512_reduce_add_ps(p_u);
        acc->p_v += _mm512_reduce_add_ps(p_v);
        if (full) {
            acc->q_v += _mm512_reduce_add_ps(q_v);
            acc->p_uu += _mm512_reduce_add_ps(p_uu);
            acc->p_uv += _mm512_reduce_add_ps(p_uv);
        }
    }
}

#else /* !X86_SIMD: the wide primitives' names on the portable code, so the row kernels
       * compile unchanged; they never run (the AVX-512 builds are never picked). */
INLINE int pair_max_finite_avx512(const float *s, const float *t, long n, float *m_s, float *m_t)
{
    return pair_max_finite(s, t, n, m_s, m_t);
}
INLINE long first_index_of_avx512(const float *x, float m, long n) { return first_index_of(x, m, n); }
INLINE int row_max_finite_avx512(const float *x, long n, float *max)
{
    *max = range_max(x, 0, n);
    return row_finite(x, n);
}
INLINE double exp_store_sum_avx512(float *e, const float *x, float shift, long n)
{
    for (long j = 0; j < n; j++) e[j] = exp_nonpos(x[j] - shift);
    return range_sum(e, n);
}
INLINE void scale_row_avx512(float *x, float a, long n)
{
    for (long j = 0; j < n; j++) x[j] *= a;
}
INLINE void pair_moments_row_avx512(pair_moments *acc, float *exp_s, float *exp_t, const float *s,
                                    const float *t, const dtkd_softmax_pair *pr, long skip, long n,
                                    int full)
{
    pair_moments_row(acc, exp_s, exp_t, s, t, pr, skip, n);
}
INLINE void pair_backward_cached_row_avx512(float *ds, const float *exp_s, const float *exp_t,
                                            float cq, float cp, long n)
{
    for (long j = 0; j < n; j++) ds[j] = cq * exp_s[j] - cp * exp_t[j];
}
#endif /* X86_SIMD */

/* ---- The precise path: one row's softmax pair in double ----
 * The float path above fails in two ways, each rare in training but silent: (1) at large
 * temperatures every exp is within ~1/T of 1, and KL ~ 1/T^2 is the small difference of float
 * terms of size ~1/T (16% off at T = 1e4, negative at T = 1e6); (2) when (x - max) / T
 * overflows float32 (a tiny dynamic temperature from a max logit of 1e-38, or logits near
 * float's edge), a moment becomes 0 * inf = NaN or inf. A row whose temperatures exceed
 * DTKD_PRECISE_T, or whose float moments are not finite, is redone here: v, u in double (no
 * overflow: |x - shift| / T <= 6.8e38 * 3.4e38), exps as 1 + expm1() so that log z keeps its
 * digits, log(zq / zp) as a difference of log1p's. Costs a libm expm1 per logit, only for
 * those rows. */

INLINE int moments_finite(const pair_moments *m)
{
    return isfinite(m->zq) && isfinite(m->zp) && isfinite(m->p_u) && isfinite(m->p_v) &&
           isfinite(m->q_v) && isfinite(m->p_uu) && isfinite(m->p_uv);
}

/* Fills the log fields from zq, zp (the float path). */
INLINE void pair_logs(pair_moments *m)
{
    m->log_zq = log(m->zq);
    m->log_zp = log(m->zp);
    m->log_ratio = log(m->zq / m->zp);
}

static void pair_moments_f64(pair_moments *acc, const float *s, const float *t,
                             const dtkd_softmax_pair *pr, long skip, long n)
{
    const double ss = pr->shift_s, st = pr->shift_t, ia = 1.0 / pr->temp_s, ib = 1.0 / pr->temp_t;
    double sq = 0, sp = 0, p_u = 0, p_v = 0, q_v = 0, p_uu = 0, p_uv = 0;
    long cnt = 0;
    for (long j = 0; j < n; j++) {
        if (j == skip) continue;
        const double v = ((double)s[j] - ss) * ia, u = ((double)t[j] - st) * ib;
        const double mq = expm1(v), mp = expm1(u), eq = mq + 1.0, ep = mp + 1.0;
        sq += mq;
        sp += mp;
        p_u += ep * u;
        p_v += ep * v;
        q_v += eq * v;
        p_uu += ep * u * u;
        p_uv += ep * u * v;
        cnt++;
    }
    /* the shift is a max over the set, so sq, sp > -cnt */
    const double l1q = log1p(sq / cnt), l1p = log1p(sp / cnt), lc = log((double)cnt);
    *acc = (pair_moments){cnt + sq, cnt + sp, p_u, p_v, q_v, p_uu, p_uv, lc + l1q, lc + l1p,
                          l1q - l1p};
}

/* q_j - p_j without cancellation, from lq = log q_j, lp = log p_j and d = lp - lq. */
INLINE double q_minus_p(double lq, double lp, double d)
{
    return d <= 0.0 ? -exp(lq) * expm1(d) : exp(lp) * expm1(-d);
}

/* What a precise pair leaves for the cached backward: exp_s[j] = q_j, exp_t[j] = q_j - p_j
 * (0 at `skip`), and zs = zt = 1; precise_coefficients() then rewrites coef_q, coef_p so that
 * the cached backward's cq exp_s - cp exp_t is coef_q q - coef_p p. */
static void precise_exps(float *exp_s, float *exp_t, const float *s, const float *t,
                         const dtkd_softmax_pair *pr, const pair_moments *m, long skip, long n)
{
    const double ss = pr->shift_s, st = pr->shift_t, ia = 1.0 / pr->temp_s, ib = 1.0 / pr->temp_t;
    for (long j = 0; j < n; j++) {
        if (j == skip) {
            exp_s[j] = exp_t[j] = 0.0f;
            continue;
        }
        const double v = ((double)s[j] - ss) * ia, u = ((double)t[j] - st) * ib;
        const double lq = v - m->log_zq, lp = u - m->log_zp;
        exp_s[j] = (float)exp(lq);
        exp_t[j] = (float)q_minus_p(lq, lp, (u - v) + m->log_ratio);
    }
}

/* coef_q q - coef_p p = (coef_q - coef_p) q + coef_p (q - p). */
INLINE void precise_coefficients(dtkd_softmax_pair *pr)
{
    pr->coef_q -= pr->coef_p;
    pr->coef_p = -pr->coef_p;
    pr->zs = pr->zt = 1.0;
}

/* ds[j] (=, or += when accumulate) dloss (coef_q q_j - coef_p p_j), recomputed in double. */
static void pair_backward_row_f64(float *ds, const float *s, const float *t,
                                  const dtkd_softmax_pair *pr, float dloss, int accumulate, long n)
{
    const double ss = pr->shift_s, st = pr->shift_t, ia = 1.0 / pr->temp_s, ib = 1.0 / pr->temp_t;
    const double log_ratio = pr->log_zs - pr->log_zt;
    for (long j = 0; j < n; j++) {
        const double v = ((double)s[j] - ss) * ia, u = ((double)t[j] - st) * ib;
        const double lq = v - pr->log_zs, lp = u - pr->log_zt;
        const double g = pr->coef_q == pr->coef_p
                             ? pr->coef_q * q_minus_p(lq, lp, (u - v) + log_ratio)
                             : pr->coef_q * exp(lq) - pr->coef_p * exp(lp);
        ds[j] = (float)(dloss * g + (accumulate ? ds[j] : 0.0f));
    }
}

/* 1 if dloss (coef_q q - coef_p p) and dloss dmax stay within float32 for q, p in [0, 1]
 * (the float gradient is then finite). */
INLINE int gradient_in_range(const dtkd_softmax_pair *pr, double dloss, double dmax)
{
    const double bound = fabs(dloss) * (fabs(pr->coef_q) / pr->zs + fabs(pr->coef_p) / pr->zt) +
                         fabs(dloss * dmax);
    return bound <= FLT_MAX;
}

/* The row primitives by ISA: `wide` is a constant in each build of a row kernel, so the
 * choice folds away. */
INLINE int pair_max_finite_w(int wide, const float *s, const float *t, long n, float *m_s, float *m_t)
{
    return wide ? pair_max_finite_avx512(s, t, n, m_s, m_t) : pair_max_finite(s, t, n, m_s, m_t);
}

INLINE long first_index_of_w(int wide, const float *x, float m, long n)
{
    return wide ? first_index_of_avx512(x, m, n) : first_index_of(x, m, n);
}

/* q_v, p_uu and p_uv only serve the gradient through the temperatures: with full == 0 the
 * AVX-512 path leaves them 0 (the generic one computes them anyway). */
INLINE void pair_moments_row_w(int wide, pair_moments *acc, float *exp_s, float *exp_t,
                               const float *s, const float *t, const dtkd_softmax_pair *pr,
                               long skip, long n, int full)
{
    if (wide) pair_moments_row_avx512(acc, exp_s, exp_t, s, t, pr, skip, n, full);
    else pair_moments_row(acc, exp_s, exp_t, s, t, pr, skip, n);
}

/* ds[j] = dloss (coef_q q_j - coef_p p_j) for j in [0, n) from the exps the forward stored
 * (q_j = exp_s[j] / zq, p_j = exp_t[j] / zp). ds may be exp_s: each entry is read, then written. */
INLINE void pair_backward_cached_row(int wide, float *ds, const float *exp_s, const float *exp_t,
                                     const dtkd_softmax_pair *pr, float dloss, long n)
{
    const float cq = (float)(dloss * pr->coef_q / pr->zs);
    const float cp = (float)(dloss * pr->coef_p / pr->zt);
    if (wide) {
        pair_backward_cached_row_avx512(ds, exp_s, exp_t, cq, cp, n);
        return;
    }
#pragma omp simd
    for (long j = 0; j < n; j++) ds[j] = cq * exp_s[j] - cp * exp_t[j];
}

/* ds[j] (=, or += when accumulate) dloss (coef_q q_j - coef_p p_j) for j in [0, n), with
 * q = softmax(s / T_s), p = softmax(t / T_t) normalized over the pair's class set. */
INLINE void pair_backward_row(float *ds, const float *s, const float *t,
                              const dtkd_softmax_pair *pr, float dloss, int accumulate, long n)
{
    if (pr->precise) {
        pair_backward_row_f64(ds, s, t, pr, dloss, accumulate, n);
        return;
    }
    const float ss = pr->shift_s, st = pr->shift_t, ia = pr->inv_ts, ib = pr->inv_tt;
    const float lzq = (float)pr->log_zs, lzp = (float)pr->log_zt;
    const float cq = (float)(dloss * pr->coef_q), cp = (float)(dloss * pr->coef_p);
    if (accumulate) {
#pragma omp simd
        for (long j = 0; j < n; j++)
            ds[j] += cq * exp_nonpos((s[j] - ss) * ia - lzq) - cp * exp_nonpos((t[j] - st) * ib - lzp);
    } else {
#pragma omp simd
        for (long j = 0; j < n; j++)
            ds[j] = cq * exp_nonpos((s[j] - ss) * ia - lzq) - cp * exp_nonpos((t[j] - st) * ib - lzp);
    }
}

/* A temperature usable as a divisor and storable: T and 1/T both within float32's range (a
 * dynamic temperature derived in double from a reference T near FLT_MAX can exceed it). */
INLINE int usable_temperature(double T) { return T > 0.0 && T <= FLT_MAX && 1.0 / T <= FLT_MAX; }

/* The official DTKD rule; returns 1 (and T_s = T_t = T) for a fallback sample. */
INLINE int dynamic_temperature_pair(double m_s, double m_t, double T, double *t_s, double *t_t)
{
    double sum = m_s + m_t;
    if (sum > DTKD_TEMPERATURE_EPS) {
        double a = 2.0 * m_s / sum * T, b = 2.0 * m_t / sum * T;
        if (usable_temperature(a) && usable_temperature(b)) {
            *t_s = a;
            *t_t = b;
            return 0;
        }
    }
    *t_s = *t_t = T;
    return 1;
}

/* d(T_s)/d(m_s) = -d(T_t)/d(m_s) = 2 T m_t / (m_s + m_t)^2. */
INLINE double temperature_slope(double m_s, double m_t, double T)
{
    double sum = m_s + m_t;
    return 2.0 * T * m_t / (sum * sum);
}

/* ---- the exact sharpness-matching rule ----
 * The paper derives T_s, T_t from matching the sharpness logsumexp(s / T_s) = logsumexp(t / T_t)
 * with T_s + T_t = 2T; the official rule replaces logsumexp(x / T) by max(x) / T. The exact rule
 * solves, per sample, for delta in (-T, T) with T_s = T + delta, T_t = T - delta:
 *   f(delta) = logsumexp(s / (T + delta)) - logsumexp(t / (T - delta)) = 0,
 *   f'(delta) = -E_q[s] / T_s^2 - E_p[t] / T_t^2     (q = softmax(s / T_s), p = softmax(t / T_t)).
 * As delta -> -T, logsumexp(s / T_s) -> max(s) / T_s -> +inf when max(s) > 0; as delta -> T,
 * logsumexp(t / T_t) -> +inf when max(t) > 0; so positive maxima bracket a root. The root is
 * unique when E_q[s], E_p[t] > 0 for all delta (e.g. rows of mean >= 0, since E_q[x] >= mean(x):
 * always true after logit standardization). */

/* Solver bounds: delta in [-(1 - EXACT_EDGE) T, (1 - EXACT_EDGE) T]; stop when a step or the
 * bracket is below EXACT_TOL T, after at most EXACT_MAX_ITER evaluations of f. */
#define EXACT_EDGE 1e-6
#define EXACT_TOL 1e-7
#define EXACT_MAX_ITER 60

/* logsumexp(x / T) and E_softmax(x / T)[x] of a row with max m, from one pass of exps;
 * inv = 1 / T. */
INLINE void lse_and_mean(const float *x, float m, double inv, long C, double *lse, double *mean)
{
    const float invf = (float)inv;
    double z = 0.0, zv = 0.0;
    for (long j0 = 0; j0 < C; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < C ? j0 + SUM_BLOCK : C;
        float zb = 0.0f, zvb = 0.0f;
#pragma omp simd reduction(+ : zb, zvb)
        for (long j = j0; j < j1; j++) {
            const float v = (x[j] - m) * invf;
            const float e = exp_nonpos(v);
            zb += e;
            zvb += e * v;
        }
        z += zb;
        zv += zvb;
    }
    *lse = (double)m * invf + log(z);
    *mean = (double)m + zv / z / invf;
}

/* f(delta) and -f'(delta) (> 0 where f decreases) of the exact rule. */
INLINE double exact_rule_f(const float *s, const float *t, float m_s, float m_t, double T,
                           double delta, long C, double *minus_slope)
{
    const double a = T + delta, b = T - delta;
    double lse_s, lse_t, mean_s, mean_t;
    lse_and_mean(s, m_s, 1.0 / a, C, &lse_s, &mean_s);
    lse_and_mean(t, m_t, 1.0 / b, C, &lse_t, &mean_t);
    *minus_slope = mean_s / (a * a) + mean_t / (b * b);
    return lse_s - lse_t;
}

/* T_s = T + delta, T_t = T - delta at the root of f, by Newton's method safeguarded by
 * bisection on a sign-changing bracket. Returns 1 with the temperatures set, or 0 (t_s, t_t
 * untouched) when the bracket's ends do not change sign, the iteration does not settle, or
 * f' = 0 at the root (no implicit derivative). */
INLINE int exact_temperature_pair(const float *s, const float *t, float m_s, float m_t, double T,
                                  long C, double *t_s, double *t_t)
{
    double lo = -(1.0 - EXACT_EDGE) * T, hi = (1.0 - EXACT_EDGE) * T, slope;
    const double f_lo = exact_rule_f(s, t, m_s, m_t, T, lo, C, &slope);
    const double f_hi = exact_rule_f(s, t, m_s, m_t, T, hi, C, &slope);
    if (!isfinite(f_lo) || !isfinite(f_hi) || f_lo == 0.0 || f_hi == 0.0 ||
        (f_lo > 0) == (f_hi > 0))
        return 0;
    const int lo_positive = f_lo > 0;
    /* start from the official rule's delta (the max-logit approximation of the same root) */
    const double sum = (double)m_s + m_t;
    double delta = sum > DTKD_TEMPERATURE_EPS ? T * ((double)m_s - m_t) / sum : 0.0;
    if (!(delta > lo && delta < hi)) delta = 0.5 * (lo + hi);
    const double tol = EXACT_TOL * T;
    int settled = 0;
    for (int it = 0; it < EXACT_MAX_ITER && !settled; it++) {
        const double f = exact_rule_f(s, t, m_s, m_t, T, delta, C, &slope);
        if (!isfinite(f)) return 0;
        if (f == 0.0) {
            settled = 1;
            break;
        }
        if ((f > 0) == lo_positive) lo = delta;
        else hi = delta;
        double next = slope != 0.0 ? delta + f / slope : NAN; /* Newton: delta - f / f' */
        if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
        settled = fabs(next - delta) < tol || hi - lo < tol;
        delta = next;
    }
    /* slope: -f' at the last evaluated point, within EXACT_TOL T of the root (the gradient
     * recomputes D at the root from the loss's own moments) */
    if (!settled || slope == 0.0 || !isfinite(slope)) return 0;
    if (!usable_temperature(T + delta) || !usable_temperature(T - delta)) return 0;
    *t_s = T + delta;
    *t_t = T - delta;
    return 1;
}

INLINE void set_pair(dtkd_softmax_pair *pr, float shift_s, float shift_t, double t_s, double t_t)
{
    pr->shift_s = shift_s;
    pr->shift_t = shift_t;
    pr->inv_ts = (float)(1.0 / t_s);
    pr->inv_tt = (float)(1.0 / t_t);
    pr->temp_s = t_s;
    pr->temp_t = t_t;
    pr->precise = 0;
}

/* log(exp(x) + exp(y)) without overflow. */
INLINE double log_add_exp(double x, double y)
{
    double hi = x > y ? x : y, lo = x > y ? y : x;
    return hi + log1p(exp(lo - hi));
}

/* ------------------------------------------------------------------------------------------ */
/* Softmax family                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* Row status: -1 non-finite input, 0 ok, 1 DTKD fallback sample. */

/* min of x[0:n]. */
INLINE float range_min(const float *x, long n)
{
    float m = INFINITY;
#pragma omp simd reduction(min : m)
    for (long j = 0; j < n; j++) m = x[j] < m ? x[j] : m;
    return m;
}

INLINE int log_softmax_row(float *out, const float *x, float inv_t, long C)
{
    if (!row_finite(x, C)) return ROW_NONFINITE;
    float m = range_max(x, 0, C);
    /* the smallest output, (min - max) / T - log z, must be a float */
    if (((double)m - range_min(x, C)) * inv_t + log((double)C) > FLT_MAX) return ROW_RANGE;
    float lz = (float)log(range_sum_exp(x, m, inv_t, 0, C));
#pragma omp simd
    for (long j = 0; j < C; j++) out[j] = (float)(((double)x[j] - m) * inv_t - lz); /* x - m may exceed float */
    return 0;
}
ISA_VARIANTS(int, log_softmax_row, (float *out, const float *x, float inv_t, long C),
             (out, x, inv_t, C))

INLINE int softmax_row(float *out, const float *x, float inv_t, long C)
{
    if (!row_finite(x, C)) return -1;
    float m = range_max(x, 0, C);
#pragma omp simd
    for (long j = 0; j < C; j++) out[j] = exp_nonpos((x[j] - m) * inv_t);
    double z = range_sum(out, C);
    float inv_z = (float)(1.0 / z);
#pragma omp simd
    for (long j = 0; j < C; j++) out[j] *= inv_z;
    return 0;
}
ISA_VARIANTS(int, softmax_row, (float *out, const float *x, float inv_t, long C),
             (out, x, inv_t, C))

INLINE int logsumexp_row(float *out, const float *x, float inv_t, long C)
{
    if (!row_finite(x, C)) return -1;
    float m = range_max(x, 0, C);
    *out = (float)((double)m * inv_t + log(range_sum_exp(x, m, inv_t, 0, C)));
    return isfinite(*out) ? 0 : ROW_RANGE; /* max / T beyond float32 */
}
ISA_VARIANTS(int, logsumexp_row, (float *out, const float *x, float inv_t, long C),
             (out, x, inv_t, C))

/* d log_softmax: dx_j = (dout_j - softmax_j sum_k dout_k) / T. */
INLINE int log_softmax_backward_row(float *dx, const float *dout, const float *out, float inv_t,
                                    long C)
{
    float fs = (float)range_sum(dout, C);
#pragma omp simd
    for (long j = 0; j < C; j++) dx[j] = (dout[j] - exp_nonpos(out[j]) * fs) * inv_t;
    return 0;
}
ISA_VARIANTS(int, log_softmax_backward_row,
             (float *dx, const float *dout, const float *out, float inv_t, long C),
             (dx, dout, out, inv_t, C))

/* d softmax: dx_j = p_j (dout_j - sum_k dout_k p_k) / T. */
INLINE int softmax_backward_row(float *dx, const float *dout, const float *out, float inv_t,
                                long C)
{
    float fd = (float)range_dot(dout, out, C);
#pragma omp simd
    for (long j = 0; j < C; j++) dx[j] = out[j] * (dout[j] - fd) * inv_t;
    return 0;
}
ISA_VARIANTS(int, softmax_backward_row,
             (float *dx, const float *dout, const float *out, float inv_t, long C),
             (dx, dout, out, inv_t, C))

/* d logsumexp(x / T): dx_j = dout softmax(x / T)_j / T. */
INLINE int logsumexp_backward_row(float *dx, float dout, const float *x, float out, float inv_t,
                                  long C)
{
    float m = range_max(x, 0, C);
    /* x_j/T - out = (x_j - m)/T - (out - m/T), both parts small, so no cancellation. */
    float lz = (float)((double)out - (double)m * inv_t);
    float g = dout * inv_t;
#pragma omp simd
    for (long j = 0; j < C; j++) dx[j] = g * exp_nonpos((x[j] - m) * inv_t - lz);
    return 0;
}
ISA_VARIANTS(int, logsumexp_backward_row,
             (float *dx, float dout, const float *x, float out, float inv_t, long C),
             (dx, dout, x, out, inv_t, C))

/* Runs a (out_row, in_row, inv_t, C) row kernel over N rows. */
typedef int (*rowwise_fn)(float *, const float *, float, long);

static int run_rowwise(rowwise_fn row, float *out, long out_stride, const float *x,
                       float temperature, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    const float inv_t = (float)(1.0 / temperature);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(out + i * out_stride, x + i * C, inv_t, C));
    return rows_status(bad);
}

int dtkd_log_softmax_forward(float *out, const float *x, float temperature, long N, long C)
{
    return run_rowwise(ISA_PICK(log_softmax_row), out, C, x, temperature, N, C);
}

int dtkd_softmax_forward(float *out, const float *x, float temperature, long N, long C)
{
    return run_rowwise(ISA_PICK(softmax_row), out, C, x, temperature, N, C);
}

int dtkd_logsumexp_forward(float *out, const float *x, float temperature, long N, long C)
{
    return run_rowwise(ISA_PICK(logsumexp_row), out, 1, x, temperature, N, C);
}

typedef int (*rowwise_backward_fn)(float *, const float *, const float *, float, long);

static int run_rowwise_backward(rowwise_backward_fn row, float *dx, const float *dout,
                                const float *out, float temperature, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    const float inv_t = (float)(1.0 / temperature);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(dx + i * C, dout + i * C, out + i * C, inv_t, C));
    return DTKD_OK;
}

int dtkd_log_softmax_backward(float *dx, const float *dout, const float *out, float temperature,
                              long N, long C)
{
    return run_rowwise_backward(ISA_PICK(log_softmax_backward_row), dx, dout, out, temperature,
                                N, C);
}

int dtkd_softmax_backward(float *dx, const float *dout, const float *out, float temperature,
                          long N, long C)
{
    return run_rowwise_backward(ISA_PICK(softmax_backward_row), dx, dout, out, temperature, N, C);
}

int dtkd_logsumexp_backward(float *dx, const float *dout, const float *x, const float *out,
                            float temperature, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    const float inv_t = (float)(1.0 / temperature);
    int (*row)(float *, float, const float *, float, float, long) = ISA_PICK(logsumexp_backward_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(dx + i * C, dout[i], x + i * C, out[i], inv_t, C));
    return DTKD_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Logit standardization (Sun et al., CVPR 2024)                                              */
/* ------------------------------------------------------------------------------------------ */

/* mean and sigma of a row, sigma the unbiased (C - 1) standard deviation: two passes (no
 * cancellation), float lanes within SUM_BLOCK blocks and double across them, as range_sum. */
INLINE void row_mean_sigma(const float *x, long C, double *mean, double *sigma)
{
    const double m = range_sum(x, C) / (double)C;
    const float mf = (float)m;
    double v = 0.0;
    for (long j0 = 0; j0 < C; j0 += SUM_BLOCK) {
        const long j1 = j0 + SUM_BLOCK < C ? j0 + SUM_BLOCK : C;
        float vb = 0.0f;
#pragma omp simd reduction(+ : vb)
        for (long j = j0; j < j1; j++) vb += (x[j] - mf) * (x[j] - mf);
        v += vb;
    }
    *mean = m;
    *sigma = sqrt(v / (double)(C - 1));
}

/* z_j = (x_j - mean) / (sigma + eps). */
INLINE int logit_standardize_row(float *z, const float *x, long C)
{
    if (!row_finite(x, C)) return -1;
    double m, sigma;
    row_mean_sigma(x, C, &m, &sigma);
    const float mf = (float)m, inv = (float)(1.0 / (sigma + DTKD_LOGIT_STAND_EPS));
#pragma omp simd
    for (long j = 0; j < C; j++) z[j] = (x[j] - mf) * inv;
    return 0;
}
ISA_VARIANTS(int, logit_standardize_row, (float *z, const float *x, long C), (z, x, C))

/* With c = x - mean, r = sigma + eps, z = c / r and d sigma / d x_k = c_k / ((C - 1) sigma):
 *   dx_k = (g_k - mean(g)) / r - (sum_j g_j c_j) c_k / (r^2 (C - 1) sigma)
 *        = [g_k - mean(g) - (sum_j g_j z_j) z_k r / ((C - 1) sigma)] / r.
 * A constant row (sigma = 0) has z = 0: its second term is 0. */
INLINE int logit_standardize_backward_row(float *dx, const float *dz, const float *x,
                                          const float *z, long C)
{
    double m, sigma;
    row_mean_sigma(x, C, &m, &sigma);
    const double r = sigma + DTKD_LOGIT_STAND_EPS;
    const double g_mean = range_sum(dz, C) / (double)C, gz = range_dot(dz, z, C);
    const float k = (float)(sigma > 0.0 ? gz * r / ((double)(C - 1) * sigma) : 0.0);
    const float gm = (float)g_mean, inv_r = (float)(1.0 / r);
#pragma omp simd
    for (long j = 0; j < C; j++) dx[j] = (dz[j] - gm - k * z[j]) * inv_r;
    return 0;
}
ISA_VARIANTS(int, logit_standardize_backward_row,
             (float *dx, const float *dz, const float *x, const float *z, long C),
             (dx, dz, x, z, C))

int dtkd_logit_standardize_forward(float *z, const float *x, long N, long C)
{
    if (N <= 0 || C < 2) return DTKD_ERR_SHAPE;
    int (*row)(float *, const float *, long) = ISA_PICK(logit_standardize_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(z + i * C, x + i * C, C));
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

int dtkd_logit_standardize_backward(float *dx, const float *dz, const float *x, const float *z,
                                    long N, long C)
{
    if (N <= 0 || C < 2) return DTKD_ERR_SHAPE;
    int (*row)(float *, const float *, const float *, const float *, long) =
        ISA_PICK(logit_standardize_backward_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(dx + i * C, dz + i * C, x + i * C, z + i * C, C));
    return DTKD_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* DTKD temperatures and cross-entropy                                                        */
/* ------------------------------------------------------------------------------------------ */

INLINE int dynamic_temperature_row(float *t_student, float *t_teacher, const float *s,
                                   const float *t, float T, long C)
{
    float m_s, m_t;
    if (!pair_max_finite(s, t, C, &m_s, &m_t)) return -1;
    double a, b;
    int fallback = dynamic_temperature_pair(m_s, m_t, T, &a, &b);
    *t_student = (float)a;
    *t_teacher = (float)b;
    return fallback;
}
ISA_VARIANTS(int, dynamic_temperature_row,
             (float *t_student, float *t_teacher, const float *s, const float *t, float T, long C),
             (t_student, t_teacher, s, t, T, C))

int dtkd_dynamic_temperatures(float *t_student, float *t_teacher, long *n_fallback,
                              const float *s, const float *t, float temperature, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    int (*row)(float *, float *, const float *, const float *, float, long) =
        ISA_PICK(dynamic_temperature_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(t_student + i, t_teacher + i, s + i * C, t + i * C, temperature, C));
    *n_fallback = fallbacks;
    return rows_status(bad);
}

INLINE int cross_entropy_row(float *loss, double *log_z, const float *s, int64_t y, long C)
{
    if (!row_finite(s, C)) return -1;
    float m = range_max(s, 0, C);
    *log_z = (double)m + log(range_sum_exp(s, m, 1.0f, 0, C));
    *loss = (float)(*log_z - s[y]);
    return isfinite(*loss) ? 0 : ROW_RANGE; /* s[y] ~ -3e38 below a max ~ 3e38 */
}
ISA_VARIANTS(int, cross_entropy_row, (float *loss, double *log_z, const float *s, int64_t y, long C),
             (loss, log_z, s, y, C))

INLINE int cross_entropy_backward_row(float *ds, double log_z, const float *s, int64_t y,
                                      float dloss, long C)
{
    float lz = (float)log_z;
#pragma omp simd
    for (long j = 0; j < C; j++) ds[j] = dloss * exp_nonpos(s[j] - lz);
    ds[y] -= dloss;
    return 0;
}
ISA_VARIANTS(int, cross_entropy_backward_row,
             (float *ds, double log_z, const float *s, int64_t y, float dloss, long C),
             (ds, log_z, s, y, dloss, C))

/* Both directions in one sweep: the exps of the forward, stored in ds, become the gradient
 * (one exp per logit instead of two). */
INLINE int cross_entropy_row_forward_backward(float *loss, float *ds, const float *s, int64_t y,
                                              float dloss, long C, int wide)
{
    float m;
    double z;
    if (wide) {
        if (!row_max_finite_avx512(s, C, &m)) return -1;
        z = exp_store_sum_avx512(ds, s, m, C);
    } else {
        if (!row_finite(s, C)) return -1;
        m = range_max(s, 0, C);
#pragma omp simd
        for (long j = 0; j < C; j++) ds[j] = exp_nonpos(s[j] - m);
        z = range_sum(ds, C);
    }
    *loss = (float)((double)m + log(z) - s[y]);
    if (!isfinite(*loss)) return ROW_RANGE;
    const float g = (float)(dloss / z);
    if (wide) {
        scale_row_avx512(ds, g, C);
    } else {
#pragma omp simd
        for (long j = 0; j < C; j++) ds[j] *= g;
    }
    ds[y] -= dloss;
    return 0;
}
ISA_VARIANTS_WIDE(int, cross_entropy_row_forward_backward,
                  (float *loss, float *ds, const float *s, int64_t y, float dloss, long C),
                  loss, ds, s, y, dloss, C)

static int labels_ok(const int64_t *y, long N, long C)
{
    for (long i = 0; i < N; i++)
        if (y[i] < 0 || y[i] >= C) return 0;
    return 1;
}

int dtkd_cross_entropy_forward(float *loss, double *log_z, const float *s, const int64_t *y,
                               long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, double *, const float *, int64_t, long) = ISA_PICK(cross_entropy_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, log_z + i, s + i * C, y[i], C));
    return rows_status(bad);
}

int dtkd_cross_entropy_backward(float *ds, const double *log_z, const float *s, const int64_t *y,
                                float dloss, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, double, const float *, int64_t, float, long) =
        ISA_PICK(cross_entropy_backward_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(ds + i * C, log_z[i], s + i * C, y[i], dloss, C));
    return DTKD_OK;
}

int dtkd_cross_entropy_forward_backward(float *loss, float *ds, const float *s, const int64_t *y,
                                        float dloss, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, float *, const float *, int64_t, float, long) =
        ISA_PICK(cross_entropy_row_forward_backward);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, ds + i * C, s + i * C, y[i], dloss, C));
    return rows_status(bad);
}

/* ------------------------------------------------------------------------------------------ */
/* KD / DTKD                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* A row's loss as base + weight log(ratio), its log left for one vectorized pass over the
 * batch (a scalar libm log per row was ~10% of a (64,100) KD call). */
typedef struct {
    double ratio, base, weight;
} kl_pending;

/* loss[i] = base + weight log(ratio) for every row. */
#if X86_SIMD
static SIMD_AVX512 void finish_pending_avx512(float *loss, const kl_pending *pd, long N)
{
    for (long i0 = 0; i0 < N; i0 += 8) {
        double ratio[8], base[8], weight[8];
        float out[8];
        const int len = (int)(N - i0 < 8 ? N - i0 : 8);
        for (int l = 0; l < 8; l++) {
            const int in = l < len;
            ratio[l] = in ? pd[i0 + l].ratio : 1.0;
            base[l] = in ? pd[i0 + l].base : 0.0;
            weight[l] = in ? pd[i0 + l].weight : 0.0;
        }
        const __m512d v = _mm512_fmadd_pd(_mm512_loadu_pd(weight), log_pd8(_mm512_loadu_pd(ratio)),
                                          _mm512_loadu_pd(base));
        _mm256_storeu_ps(out, _mm512_cvtpd_ps(v));
        for (int l = 0; l < len; l++) loss[i0 + l] = out[l];
    }
}
#endif

/* Returns 0 if a loss is beyond float32's range. */
static int finish_pending(float *loss, const kl_pending *pd, long N)
{
#if X86_SIMD
    if (dtkd_isa() == DTKD_ISA_AVX512) finish_pending_avx512(loss, pd, N);
    else
#endif
    for (long i = 0; i < N; i++) loss[i] = (float)(pd[i].base + pd[i].weight * log(pd[i].ratio));
    int bad = 0;
    for (long i = 0; i < N; i++) bad |= !isfinite(loss[i]);
    return !bad;
}

/* One sample of  w KL(p || q),  p = softmax(t / T_t), q = softmax(s / T_s), w = T_s T_t.
 * With v = (s - m_s)/T_s, u = (t - m_t)/T_t and r = log p - log q:
 *   KL = E_p[u] - E_p[v] - log zp + log zq;   dKL/ds_j = (q_j - p_j) / T_s;
 *   dKL/dT_s = (E_p[v] - E_q[v]) / T_s;        dKL/dT_t = -(E_p[u r] - E_p[u] KL) / T_t,
 * (KL depends on s only through s/T_s, so dKL/dT_s = -sum_j s_j dKL/ds_j / T_s, and likewise
 * for t), and m_s moves T_s and T_t by +-temperature_slope. */
INLINE int kl_row_forward(float *loss, float *t_student, float *t_teacher, dtkd_kl_saved *sv,
                          float *exp_s, float *exp_t, const float *s, const float *t, float T,
                          enum dtkd_kl_mode mode, kl_pending *pending, long C, int wide)
{
    float m_s, m_t;
    if (!pair_max_finite_w(wide, s, t, C, &m_s, &m_t)) return -1;
    double a = T, b = T;
    /* the rule that set the temperatures: the exact one, else the official one, else T */
    const int exact_mode = mode == DTKD_KL_EXACT || mode == DTKD_KL_EXACT_DETACHED;
    int exact = 0, official = 0;
    if (exact_mode) exact = exact_temperature_pair(s, t, m_s, m_t, T, C, &a, &b);
    if (mode != DTKD_KL_FIXED && !exact) official = !dynamic_temperature_pair(m_s, m_t, T, &a, &b);
    const int fallback = exact_mode ? !exact : mode != DTKD_KL_FIXED && !official;
    dtkd_softmax_pair *pr = &sv->pair;
    set_pair(pr, m_s, m_t, a, b);
    pair_moments mo = {0};
    const int temperature_grad =
        (mode == DTKD_KL_DYNAMIC || mode == DTKD_KL_EXACT) && (exact || official);
    const int precise = a > DTKD_PRECISE_T || b > DTKD_PRECISE_T;
    if (!precise) pair_moments_row_w(wide, &mo, exp_s, exp_t, s, t, pr, -1, C, temperature_grad);
    if (precise || !moments_finite(&mo)) { /* the precise path (see pair_moments_f64) */
        pair_moments_f64(&mo, s, t, pr, -1, C);
        precise_exps(exp_s, exp_t, s, t, pr, &mo, -1, C);
        pr->precise = 1;
    }

    /* one log per row: KL needs only log zq - log zp, the backward only 1 / zq and 1 / zp;
     * with `pending` and no temperature gradient, that log is left to finish_pending */
    const double e_pu = mo.p_u / mo.zp, e_pv = mo.p_v / mo.zp, e_qv = mo.q_v / mo.zq;
    const double w = a * b;
    double log_ratio = 0.0, kl = 0.0;
    if (pending && !temperature_grad && !pr->precise) {
        *pending = (kl_pending){mo.zq / mo.zp, w * (e_pu - e_pv), w};
    } else {
        log_ratio = pr->precise ? mo.log_ratio : log(mo.zq / mo.zp);
        kl = e_pu - e_pv + log_ratio;
        if (pending) *pending = (kl_pending){1.0, w * kl, 0.0};
        else *loss = (float)(w * kl);
    }
    *t_student = (float)a;
    *t_teacher = (float)b;
    pr->zs = mo.zq;
    pr->zt = mo.zp;
    pr->coef_q = pr->coef_p = w / a;
    if (pr->precise) precise_coefficients(pr);
    sv->dmax = 0.0;
    sv->argmax_s = 0;
    if (temperature_grad) {
        /* dl/da = b kl + w dKL/da = b (kl + E_p[v] - E_q[v]), with E_p[v] cancelled by hand: at
         * a tiny T_s both are ~1/T_s while dl/da stays moderate; dl/db = a kl + w dKL/db. */
        const double e_pur = mo.p_uu / mo.zp - mo.p_uv / mo.zp + log_ratio * e_pu;
        const double dkl_db = -(e_pur - e_pu * kl) / b;
        const double dl_da = b * (e_pu - e_qv + log_ratio), dl_db = a * kl + w * dkl_db;
        if (exact) {
            /* implicit differentiation through the root of f(delta; s) = 0:
             * d delta / d s_j = -(df/ds_j) / f'(delta) = q_j / (T_s D), D = -f'(delta)
             * = E_q[s] / T_s^2 + E_p[t] / T_t^2; T_s, T_t move by +-d delta, so the term is
             * (dl_da - dl_db) q_j / (T_s D): dense, and proportional to q like the KL's own
             * (adding to coef_q is right before and after precise_coefficients) */
            const double mean_s = m_s + a * e_qv, mean_t = m_t + b * e_pu;
            const double D = mean_s / (a * a) + mean_t / (b * b);
            if (D != 0.0 && isfinite(D)) pr->coef_q += (dl_da - dl_db) / (a * D);
        } else {
            sv->dmax = temperature_slope(m_s, m_t, T) * (dl_da - dl_db);
            sv->argmax_s = first_index_of_w(wide, s, m_s, C);
        }
    }
    if (!(pending && !temperature_grad && !pr->precise) && !isfinite((float)(w * kl)))
        return ROW_RANGE;
    return fallback;
}
ISA_VARIANTS_WIDE(int, kl_row_forward,
                  (float *loss, float *t_student, float *t_teacher, dtkd_kl_saved *sv,
                   float *exp_s, float *exp_t, const float *s, const float *t, float T,
                   enum dtkd_kl_mode mode, long C),
                  loss, t_student, t_teacher, sv, exp_s, exp_t, s, t, T, mode, NULL, C)

INLINE int kl_row_backward(float *ds, const dtkd_kl_saved *sv, const float *exp_s,
                           const float *exp_t, float dloss, long C, int wide)
{
    if (!gradient_in_range(&sv->pair, dloss, sv->dmax)) return ROW_RANGE;
    pair_backward_cached_row(wide, ds, exp_s, exp_t, &sv->pair, dloss, C);
    ds[sv->argmax_s] += (float)(dloss * sv->dmax);
    return 0;
}
ISA_VARIANTS_WIDE(int, kl_row_backward,
                  (float *ds, const dtkd_kl_saved *sv, const float *exp_s, const float *exp_t,
                   float dloss, long C),
                  ds, sv, exp_s, exp_t, dloss, C)

int dtkd_kl_forward(float *loss, float *t_student, float *t_teacher, dtkd_kl_saved *saved,
                    float *exp_s, float *exp_t, long *n_fallback, const float *s, const float *t,
                    float temperature, enum dtkd_kl_mode mode, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    int (*row)(float *, float *, float *, dtkd_kl_saved *, float *, float *, const float *,
               const float *, float, enum dtkd_kl_mode, long) = ISA_PICK(kl_row_forward);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, t_student + i, t_teacher + i, saved + i, exp_s + i * C,
                           exp_t + i * C, s + i * C, t + i * C, temperature, mode, C));
    *n_fallback = fallbacks;
    return rows_status(bad);
}

int dtkd_kl_backward(float *ds, const dtkd_kl_saved *saved, const float *exp_s,
                     const float *exp_t, float dloss, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    int (*row)(float *, const dtkd_kl_saved *, const float *, const float *, float, long) =
        ISA_PICK(kl_row_backward);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(ds + i * C, saved + i, exp_s + i * C, exp_t + i * C, dloss, C));
    return rows_status(bad);
}

/* Both directions row by row: the row's exps are still in L1 when its gradient is written. */
INLINE int kl_row_forward_backward(float *loss, float *t_student, float *t_teacher, float *ds,
                                   float *exp_t, const float *s, const float *t, float T,
                                   enum dtkd_kl_mode mode, float dloss, kl_pending *pending,
                                   long C, int wide)
{
    dtkd_kl_saved sv;
    const int st = kl_row_forward(loss, t_student, t_teacher, &sv, ds, exp_t, s, t, T, mode,
                                  pending, C, wide);
    if (st < 0) return st;
    const int bst = kl_row_backward(ds, &sv, ds, exp_t, dloss, C, wide);
    return bst < 0 ? bst : st;
}
ISA_VARIANTS_WIDE(int, kl_row_forward_backward,
                  (float *loss, float *t_student, float *t_teacher, float *ds, float *exp_t,
                   const float *s, const float *t, float T, enum dtkd_kl_mode mode, float dloss,
                   kl_pending *pending, long C),
                  loss, t_student, t_teacher, ds, exp_t, s, t, T, mode, dloss, pending, C)

int dtkd_kl_forward_backward(float *loss, float *t_student, float *t_teacher, float *ds,
                             float *scratch, long *n_fallback, const float *s, const float *t,
                             float temperature, enum dtkd_kl_mode mode, float dloss, long N,
                             long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    int (*row)(float *, float *, float *, float *, float *, const float *, const float *, float,
               enum dtkd_kl_mode, float, kl_pending *, long) = ISA_PICK(kl_row_forward_backward);
    float *exp_t = scratch;
    /* DTKD's exact gradient needs each row's log at once: only KD and detached DTKD defer it */
    kl_pending *pending = mode == DTKD_KL_DYNAMIC || mode == DTKD_KL_EXACT
                              ? NULL
                              : (kl_pending *)(scratch + DTKD_KL_PENDING_OFFSET(N, C));
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, t_student + i, t_teacher + i, ds + i * C, exp_t + i * C,
                           s + i * C, t + i * C, temperature, mode, dloss,
                           pending ? pending + i : NULL, C));
    *n_fallback = fallbacks;
    if (bad) return rows_status(bad);
    if (pending && !finish_pending(loss, pending, N)) return DTKD_ERR_RANGE;
    return DTKD_OK;
}

/* ---- KD at a per-sample temperature, with its derivative (CTKD's learnable temperature) ----
 * loss_i = T_i^2 KL(softmax(t / T_i) || softmax(s / T_i)); with a = b = T_i in the KL row's
 * notation, d loss_i / d T_i = 2 T_i KL + T_i^2 (dKL/dT_s + dKL/dT_t). */
INLINE int kd_temperature_row(float *loss, float *dtemp, float *ds, float *exp_t, const float *s,
                              const float *t, float T, float dloss, long C, int wide)
{
    float m_s, m_t;
    if (!pair_max_finite_w(wide, s, t, C, &m_s, &m_t)) return -1;
    dtkd_softmax_pair pr;
    set_pair(&pr, m_s, m_t, T, T);
    pair_moments mo = {0};
    pair_moments_row_w(wide, &mo, ds, exp_t, s, t, &pr, -1, C, 1);
    const double e_pu = mo.p_u / mo.zp, e_pv = mo.p_v / mo.zp, e_qv = mo.q_v / mo.zq;
    const double log_ratio = log(mo.zq / mo.zp);
    const double kl = e_pu - e_pv + log_ratio, w = (double)T * T;
    const double e_pur = mo.p_uu / mo.zp - mo.p_uv / mo.zp + log_ratio * e_pu;
    const double dkl_da = (e_pv - e_qv) / T, dkl_db = -(e_pur - e_pu * kl) / T;
    *loss = (float)(w * kl);
    *dtemp = (float)(dloss * (2.0 * T * kl + w * (dkl_da + dkl_db)));
    pr.zs = mo.zq;
    pr.zt = mo.zp;
    pr.coef_q = pr.coef_p = T; /* w / T */
    pair_backward_cached_row(wide, ds, ds, exp_t, &pr, dloss, C);
    return 0;
}
ISA_VARIANTS_WIDE(int, kd_temperature_row,
                  (float *loss, float *dtemp, float *ds, float *exp_t, const float *s,
                   const float *t, float T, float dloss, long C),
                  loss, dtemp, ds, exp_t, s, t, T, dloss, C)

int dtkd_kd_temperature_forward_backward(float *loss, float *dtemp, float *ds, float *exp_t,
                                         const float *s, const float *t, const float *temperature,
                                         float dloss, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    for (long i = 0; i < N; i++)
        if (!usable_temperature(temperature[i])) return DTKD_ERR_VALUE;
    int (*row)(float *, float *, float *, float *, const float *, const float *, float, float,
               long) = ISA_PICK(kd_temperature_row);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, dtemp + i, ds + i * C, exp_t + i * C, s + i * C, t + i * C,
                           temperature[i], dloss, C));
    return bad ? DTKD_ERR_NONFINITE : DTKD_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* DKD                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* TCKD and NCKD of one sample at one temperature pair (T_s, T_t), and their derivatives in
 * T_s, T_t. The pair is shifted by the non-target maxima; with v, u over the non-target set,
 * d_s = (s_y - shift_s)/T_s, d_t likewise, q_y = e^d_s / (e^d_s + zq):
 *   TCKD = p_y log(p_y/q_y) + (1-p_y) log((1-p_y)/(1-q_y)),  NCKD = KL over non-target classes;
 *   dTCKD/d(s_y/T_s) = q_y - p_y,   dTCKD/d(s_j/T_s) = (p_y - q_y) q^_j,
 *   dNCKD/d(s_j/T_s) = q^_j - p^_j  (q^, p^: softmax over the non-target classes),
 *   dTCKD/d(t/T_t) = rho p_y (1-p_y) (e_y - p^),  rho = dTCKD/dp_y. */
typedef struct {
    double tckd, nckd, dtckd_da, dtckd_db, dnckd_da, dnckd_db, qy_minus_py, nckd_plus_a_dnckd_da;
} dkd_terms;

INLINE void dkd_pair_terms(dkd_terms *out, dtkd_softmax_pair *pr, float *exp_s, float *exp_t,
                           const float *s, const float *t, int64_t y, float shift_s,
                           float shift_t, double a, double b, long C, int wide,
                           int temperature_grad)
{
    set_pair(pr, shift_s, shift_t, a, b);
    pair_moments mo = {0};
    const int precise = a > DTKD_PRECISE_T || b > DTKD_PRECISE_T;
    if (!precise) pair_moments_row_w(wide, &mo, exp_s, exp_t, s, t, pr, y, C, temperature_grad);
    if (precise || !moments_finite(&mo)) { /* the precise path (see pair_moments_f64) */
        pair_moments_f64(&mo, s, t, pr, y, C);
        if (exp_s) precise_exps(exp_s, exp_t, s, t, pr, &mo, y, C);
        pr->precise = 1;
    } else {
        pair_logs(&mo);
    }
    const double lzq = mo.log_zq, lzp = mo.log_zp;
    pr->zs = mo.zq;
    pr->zt = mo.zp;
    pr->log_zs = lzq;
    pr->log_zt = lzp;
    const double e_pu = mo.p_u / mo.zp, e_pv = mo.p_v / mo.zp, e_qv = mo.q_v / mo.zq;

    const double nckd = e_pu - e_pv + mo.log_ratio;
    const double e_pur = mo.p_uu / mo.zp - mo.p_uv / mo.zp + mo.log_ratio * e_pu;
    out->nckd = nckd;
    out->nckd_plus_a_dnckd_da = e_pu - e_qv + mo.log_ratio; /* nckd + a dnckd/da, E_p[v] cancelled */
    out->dnckd_da = (e_pv - e_qv) / a;
    out->dnckd_db = -(e_pur - e_pu * nckd) / b;

    const double d_s = ((double)s[y] - shift_s) * pr->inv_ts;
    const double d_t = ((double)t[y] - shift_t) * pr->inv_tt;
    const double lq = log_add_exp(d_s, lzq), lp = log_add_exp(d_t, lzp);
    const double log_qy = d_s - lq, log_qr = lzq - lq, log_py = d_t - lp, log_pr = lzp - lp;
    const double py = exp(log_py), pr_rest = exp(log_pr), qy = exp(log_qy);
    out->tckd = py * (log_py - log_qy) + pr_rest * (log_pr - log_qr);
    out->qy_minus_py = qy - py;
    out->dtckd_da = -(qy - py) * (d_s - e_qv) / a;
    const double rho = (log_py - log_qy) - (log_pr - log_qr);
    out->dtckd_db = -rho * py * pr_rest * (d_t - e_pu) / b;
}

/* Non-target max of x (the class y excluded). */
INLINE float non_target_max(const float *x, int64_t y, long C)
{
    float m0 = range_max(x, 0, y), m1 = range_max(x, y + 1, C);
    return m0 > m1 ? m0 : m1;
}

INLINE int dkd_row_forward(float *loss, float *tckd, float *nckd, float *t_student,
                           float *t_teacher, dtkd_dkd_saved *sv, float *exp_s, float *exp_t,
                           const float *s, const float *t, int64_t y, float alpha, float beta, float T, int dynamic_tckd,
                           int dynamic_nckd, enum dtkd_kl_mode mode, long C, int wide)
{
    float m_s, m_t;
    if (!pair_max_finite_w(wide, s, t, C, &m_s, &m_t)) return -1;
    double a = T, b = T;
    int fallback = 0;
    if (dynamic_tckd || dynamic_nckd) fallback = dynamic_temperature_pair(m_s, m_t, T, &a, &b);
    *t_student = (float)a;
    *t_teacher = (float)b;
    const double a_tc = dynamic_tckd ? a : T, b_tc = dynamic_tckd ? b : T;
    const double a_nc = dynamic_nckd ? a : T, b_nc = dynamic_nckd ? b : T;
    const int shared = a_tc == a_nc && b_tc == b_nc;
    const int temperature_grad =
        mode != DTKD_KL_DYNAMIC_DETACHED && !fallback && (dynamic_tckd || dynamic_nckd);
    /* Non-target maxima: the row maxima unless the target holds them. */
    const float shift_s = s[y] < m_s ? m_s : non_target_max(s, y, C);
    const float shift_t = t[y] < m_t ? m_t : non_target_max(t, y, C);

    dkd_terms tc, nc;
    dkd_pair_terms(&tc, &sv->pair[0], exp_s, exp_t, s, t, y, shift_s, shift_t, a_tc, b_tc, C, wide,
                   temperature_grad);
    if (shared) nc = tc;
    else dkd_pair_terms(&nc, &sv->pair[1], NULL, NULL, s, t, y, shift_s, shift_t, a_nc, b_nc,
                         C, wide, temperature_grad);
    sv->n_pairs = shared ? 1 : 2;

    const double w_tc = a_tc * b_tc, w_nc = a_nc * b_nc;
    *tckd = (float)(w_tc * tc.tckd);
    *nckd = (float)(w_nc * nc.nckd);
    *loss = (float)(alpha * w_tc * tc.tckd + beta * w_nc * nc.nckd);

    /* Gradient at fixed temperatures, by the pair whose softmax it needs. */
    const double g_tc = alpha * w_tc / a_tc, g_nc = beta * w_nc / a_nc;
    sv->grad_target = g_tc * tc.qy_minus_py;
    sv->pair[0].coef_q = -g_tc * tc.qy_minus_py + (shared ? g_nc : 0.0);
    sv->pair[0].coef_p = shared ? g_nc : 0.0;
    if (!shared) {
        sv->pair[1].coef_q = g_nc;
        sv->pair[1].coef_p = g_nc;
    }
    if (sv->pair[0].precise) precise_coefficients(&sv->pair[0]);
    if (!isfinite(*loss)) return ROW_RANGE;

    /* Gradient through the temperatures, for the terms that use them. */
    sv->dmax = 0.0;
    sv->argmax_s = 0;
    if (temperature_grad) {
        double dl_da = 0.0, dl_db = 0.0;
        if (dynamic_tckd) {
            dl_da += alpha * (b * tc.tckd + a * b * tc.dtckd_da);
            dl_db += alpha * (a * tc.tckd + a * b * tc.dtckd_db);
        }
        if (dynamic_nckd) {
            dl_da += beta * b * nc.nckd_plus_a_dnckd_da;
            dl_db += beta * (a * nc.nckd + a * b * nc.dnckd_db);
        }
        sv->dmax = temperature_slope(m_s, m_t, T) * (dl_da - dl_db);
        sv->argmax_s = first_index_of_w(wide, s, m_s, C);
    }
    return fallback;
}
ISA_VARIANTS_WIDE(int, dkd_row_forward,
                  (float *loss, float *tckd, float *nckd, float *t_student, float *t_teacher,
                   dtkd_dkd_saved *sv, float *exp_s, float *exp_t, const float *s,
                   const float *t, int64_t y, float alpha, float beta, float T,
                   int dynamic_tckd, int dynamic_nckd, enum dtkd_kl_mode mode, long C),
                  loss, tckd, nckd, t_student, t_teacher, sv, exp_s, exp_t, s, t, y, alpha,
                  beta, T, dynamic_tckd, dynamic_nckd, mode, C)

INLINE int dkd_row_backward(float *ds, const dtkd_dkd_saved *sv, const float *exp_s,
                            const float *exp_t, const float *s, const float *t, int64_t y,
                            float dloss, long C, int wide)
{
    /* Pair 0 from the stored exps, a second pair (other temperatures) recomputed; the loops
     * run over all classes for speed and the target entry is then overwritten. */
    if (!gradient_in_range(&sv->pair[0], dloss, sv->dmax) ||
        (sv->n_pairs == 2 && !gradient_in_range(&sv->pair[1], dloss, sv->dmax)) ||
        !(fabs(dloss * sv->grad_target) <= FLT_MAX))
        return ROW_RANGE;
    pair_backward_cached_row(wide, ds, exp_s, exp_t, &sv->pair[0], dloss, C);
    if (sv->n_pairs == 2) pair_backward_row(ds, s, t, &sv->pair[1], dloss, 1, C);
    ds[y] = (float)(dloss * sv->grad_target);
    ds[sv->argmax_s] += (float)(dloss * sv->dmax);
    return 0;
}
ISA_VARIANTS_WIDE(int, dkd_row_backward,
                  (float *ds, const dtkd_dkd_saved *sv, const float *exp_s, const float *exp_t,
                   const float *s, const float *t, int64_t y, float dloss, long C),
                  ds, sv, exp_s, exp_t, s, t, y, dloss, C)

int dtkd_dkd_forward(float *loss, float *tckd, float *nckd, float *t_student, float *t_teacher,
                     dtkd_dkd_saved *saved, float *exp_s, float *exp_t, long *n_fallback,
                     const float *s, const float *t, const int64_t *y, float alpha, float beta,
                     float temperature, int dynamic_tckd, int dynamic_nckd,
                     enum dtkd_kl_mode mode, long N, long C)
{
    if (N <= 0 || C < 2) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, float *, float *, float *, float *, dtkd_dkd_saved *, float *, float *,
               const float *, const float *, int64_t, float, float, float, int, int,
               enum dtkd_kl_mode, long) = ISA_PICK(dkd_row_forward);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, tckd + i, nckd + i, t_student + i, t_teacher + i, saved + i,
                           exp_s + i * C, exp_t + i * C, s + i * C, t + i * C, y[i], alpha, beta,
                           temperature, dynamic_tckd, dynamic_nckd, mode, C));
    *n_fallback = fallbacks;
    return rows_status(bad);
}

int dtkd_dkd_backward(float *ds, const dtkd_dkd_saved *saved, const float *exp_s,
                      const float *exp_t, const float *s, const float *t, const int64_t *y,
                      float dloss, long N, long C)
{
    if (N <= 0 || C < 2) return DTKD_ERR_SHAPE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, const dtkd_dkd_saved *, const float *, const float *, const float *,
               const float *, int64_t, float, long) = ISA_PICK(dkd_row_backward);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(ds + i * C, saved + i, exp_s + i * C, exp_t + i * C, s + i * C,
                           t + i * C, y[i], dloss, C));
    return rows_status(bad);
}

INLINE int dkd_row_forward_backward(float *loss, float *tckd, float *nckd, float *t_student,
                                    float *t_teacher, float *ds, float *exp_t, const float *s,
                                    const float *t, int64_t y, float alpha, float beta, float T,
                                    int dynamic_tckd, int dynamic_nckd, enum dtkd_kl_mode mode,
                                    float dloss, long C, int wide)
{
    dtkd_dkd_saved sv = {0}; /* pair[1] is only read when set (n_pairs == 2) */
    const int st = dkd_row_forward(loss, tckd, nckd, t_student, t_teacher, &sv, ds, exp_t, s, t,
                                   y, alpha, beta, T, dynamic_tckd, dynamic_nckd, mode, C, wide);
    if (st < 0) return st;
    const int bst = dkd_row_backward(ds, &sv, ds, exp_t, s, t, y, dloss, C, wide);
    return bst < 0 ? bst : st;
}
ISA_VARIANTS_WIDE(int, dkd_row_forward_backward,
                  (float *loss, float *tckd, float *nckd, float *t_student, float *t_teacher,
                   float *ds, float *exp_t, const float *s, const float *t, int64_t y,
                   float alpha, float beta, float T, int dynamic_tckd, int dynamic_nckd,
                   enum dtkd_kl_mode mode, float dloss, long C),
                  loss, tckd, nckd, t_student, t_teacher, ds, exp_t, s, t, y, alpha, beta, T,
                  dynamic_tckd, dynamic_nckd, mode, dloss, C)

int dtkd_dkd_forward_backward(float *loss, float *tckd, float *nckd, float *t_student,
                              float *t_teacher, float *ds, float *exp_t, long *n_fallback,
                              const float *s, const float *t, const int64_t *y, float alpha,
                              float beta, float temperature, int dynamic_tckd, int dynamic_nckd,
                              enum dtkd_kl_mode mode, float dloss, long N, long C)
{
    if (N <= 0 || C < 2) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, float *, float *, float *, float *, float *, float *, const float *,
               const float *, int64_t, float, float, float, int, int, enum dtkd_kl_mode, float,
               long) = ISA_PICK(dkd_row_forward_backward);
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(loss + i, tckd + i, nckd + i, t_student + i, t_teacher + i, ds + i * C,
                           exp_t + i * C, s + i * C, t + i * C, y[i], alpha, beta, temperature,
                           dynamic_tckd, dynamic_nckd, mode, dloss, C));
    *n_fallback = fallbacks;
    return rows_status(bad);
}

/* ------------------------------------------------------------------------------------------ */
/* The trainers' objectives, every term of a row in one visit                                 */
/* ------------------------------------------------------------------------------------------ */

INLINE void add_row(float *dst, const float *src, long n)
{
#pragma omp simd
    for (long j = 0; j < n; j++) dst[j] += src[j];
}

/* One row of w_dtkd DTKD + w_kd KD + w_ce CE: each term's gradient goes to the scratch row g
 * and is added to ds while the row is in cache. Row status as the KL kernel's. */
INLINE int dtkd_objective_row(float *dtkd_loss, float *kd_loss, float *ce_loss, float *t_student,
                              float *t_teacher, float *ds, float *g, float *exp_t, const float *s,
                              const float *t, int64_t y, float T, enum dtkd_kl_mode mode,
                              float w_dtkd, float w_kd, float w_ce, long C, int wide)
{
    float unused_ts, unused_tt;
    const int st = kl_row_forward_backward(dtkd_loss, t_student, t_teacher, ds, exp_t, s, t, T,
                                           mode, w_dtkd, NULL, C, wide);
    if (st < 0) return st;
    const int st_kd = kl_row_forward_backward(kd_loss, &unused_ts, &unused_tt, g, exp_t, s, t, T,
                                              DTKD_KL_FIXED, w_kd, NULL, C, wide);
    if (st_kd < 0) return st_kd;
    add_row(ds, g, C);
    const int st_ce = cross_entropy_row_forward_backward(ce_loss, g, s, y, w_ce, C, wide);
    if (st_ce < 0) return st_ce;
    add_row(ds, g, C);
    return st;
}
ISA_VARIANTS_WIDE(int, dtkd_objective_row,
                  (float *dtkd_loss, float *kd_loss, float *ce_loss, float *t_student,
                   float *t_teacher, float *ds, float *g, float *exp_t, const float *s,
                   const float *t, int64_t y, float T, enum dtkd_kl_mode mode, float w_dtkd,
                   float w_kd, float w_ce, long C),
                  dtkd_loss, kd_loss, ce_loss, t_student, t_teacher, ds, g, exp_t, s, t, y, T,
                  mode, w_dtkd, w_kd, w_ce, C)

int dtkd_dtkd_objective_forward_backward(float *dtkd_loss, float *kd_loss, float *ce_loss,
                                         float *t_student, float *t_teacher, float *ds,
                                         float *scratch, long *n_fallback, const float *s,
                                         const float *t, const int64_t *y, float temperature,
                                         enum dtkd_kl_mode mode, float w_dtkd, float w_kd,
                                         float w_ce, long N, long C)
{
    if (N <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, float *, float *, float *, float *, float *, float *, float *,
               const float *, const float *, int64_t, float, enum dtkd_kl_mode, float, float,
               float, long) = ISA_PICK(dtkd_objective_row);
    float *g = scratch, *exp_t = scratch + N * C;
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(dtkd_loss + i, kd_loss + i, ce_loss + i, t_student + i, t_teacher + i,
                           ds + i * C, g + i * C, exp_t + i * C, s + i * C, t + i * C, y[i],
                           temperature, mode, w_dtkd, w_kd, w_ce, C));
    *n_fallback = fallbacks;
    return rows_status(bad);
}

/* One row of w_dkd (alpha TCKD + beta NCKD) + w_ce CE. */
INLINE int dkd_objective_row(float *dkd_loss, float *tckd, float *nckd, float *ce_loss,
                             float *t_student, float *t_teacher, float *ds, float *g,
                             float *exp_t, const float *s, const float *t, int64_t y,
                             float alpha, float beta, float T, int dynamic_tckd,
                             int dynamic_nckd, enum dtkd_kl_mode mode, float w_dkd, float w_ce,
                             long C, int wide)
{
    const int st = dkd_row_forward_backward(dkd_loss, tckd, nckd, t_student, t_teacher, ds, exp_t,
                                            s, t, y, alpha, beta, T, dynamic_tckd, dynamic_nckd,
                                            mode, w_dkd, C, wide);
    if (st < 0) return st;
    const int st_ce = cross_entropy_row_forward_backward(ce_loss, g, s, y, w_ce, C, wide);
    if (st_ce < 0) return st_ce;
    add_row(ds, g, C);
    return st;
}
ISA_VARIANTS_WIDE(int, dkd_objective_row,
                  (float *dkd_loss, float *tckd, float *nckd, float *ce_loss, float *t_student,
                   float *t_teacher, float *ds, float *g, float *exp_t, const float *s,
                   const float *t, int64_t y, float alpha, float beta, float T,
                   int dynamic_tckd, int dynamic_nckd, enum dtkd_kl_mode mode, float w_dkd,
                   float w_ce, long C),
                  dkd_loss, tckd, nckd, ce_loss, t_student, t_teacher, ds, g, exp_t, s, t, y,
                  alpha, beta, T, dynamic_tckd, dynamic_nckd, mode, w_dkd, w_ce, C)

int dtkd_dkd_objective_forward_backward(float *dkd_loss, float *tckd, float *nckd,
                                        float *ce_loss, float *t_student, float *t_teacher,
                                        float *ds, float *scratch, long *n_fallback,
                                        const float *s, const float *t, const int64_t *y,
                                        float alpha, float beta, float temperature,
                                        int dynamic_tckd, int dynamic_nckd,
                                        enum dtkd_kl_mode mode, float w_dkd, float w_ce, long N,
                                        long C)
{
    if (N <= 0 || C < 2) return DTKD_ERR_SHAPE;
    if (!usable_temperature(temperature)) return DTKD_ERR_VALUE;
    if (!labels_ok(y, N, C)) return DTKD_ERR_LABEL;
    int (*row)(float *, float *, float *, float *, float *, float *, float *, float *, float *,
               const float *, const float *, int64_t, float, float, float, int, int,
               enum dtkd_kl_mode, float, float, long) = ISA_PICK(dkd_objective_row);
    float *g = scratch, *exp_t = scratch + N * C;
    int bad = 0;
    long fallbacks = 0;
    FOR_EACH_ROW(N, C, row(dkd_loss + i, tckd + i, nckd + i, ce_loss + i, t_student + i,
                           t_teacher + i, ds + i * C, g + i * C, exp_t + i * C, s + i * C,
                           t + i * C, y[i], alpha, beta, temperature, dynamic_tckd, dynamic_nckd,
                           mode, w_dkd, w_ce, C));
    *n_fallback = fallbacks;
    return rows_status(bad);
}
