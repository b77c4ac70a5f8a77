/* gemm.c -- BLIS-style SGEMM: five loops around an MR x NR micro-kernel, with A and B packed
 * into contiguous micro-panels. Only the micro-kernels (gemm_avx512.c, gemm_avx2.c,
 * gemm_scalar.c) depend on the instruction set; this file is portable C.
 *
 * The micro-kernel and the block sizes kc, mc, nc are chosen at run time for the CPU
 * (gemm_blocking.c).
 *
 * Loops (per thread):  jc over N by nc   -> pc over K by kc -> pack B block (L3)
 *                      ic over M by mc   -> pack A block (this thread's, L2)
 *                      jr over nr-panels -> ir over mr-panels -> micro-kernel.
 * Threads split either the columns or the rows of C and share nothing (each packs what it
 * reads), so they never wait for each other. Transposes are absorbed by the packing; edge
 * tiles run the micro-kernel on zero-padded panels into a small temporary and copy the valid
 * part out. */
#include "kernels/gemm.h"

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define GEMM_ALIGN 64
#define GEMM_MAX_TILE (16 * 64) /* room for MR * NR of any config (the largest is 8 * 32) */

/* ---- packing buffers: one set per calling thread, grown on demand, reused across calls ---- */

struct gemm_workspace {
    float *buf;
    size_t cap; /* floats */
};

static pthread_key_t workspace_key;
static pthread_once_t workspace_once = PTHREAD_ONCE_INIT;

static void workspace_free(void *p)
{
    struct gemm_workspace *ws = p;
    dtkd_free(ws->buf);
    dtkd_free(ws);
}

static void workspace_key_create(void) { pthread_key_create(&workspace_key, workspace_free); }

/* A buffer of at least n floats owned by the calling thread (freed when the thread exits). */
static float *workspace_get(size_t n)
{
    pthread_once(&workspace_once, workspace_key_create);
    struct gemm_workspace *ws = pthread_getspecific(workspace_key);
    if (!ws) {
        ws = dtkd_malloc(sizeof *ws);
        if (!ws) return NULL;
        *ws = (struct gemm_workspace){0};
        if (pthread_setspecific(workspace_key, ws)) {
            dtkd_free(ws);
            return NULL;
        }
    }
    if (ws->cap < n) {
        /* dtkd_malloc's blocks are GEMM_ALIGN (64-byte) aligned */
        float *p = dtkd_malloc_array(n, sizeof(float));
        if (!p) return NULL;
        dtkd_free(ws->buf);
        ws->buf = p;
        ws->cap = n;
    }
    return ws->buf;
}

/* ---- packing ---- */

/* d[0:n] = s[0:n] for the panel widths in use, with n known at compile time in each case so
 * the copy becomes a few vector moves instead of a memcpy call or a scalar loop. */
static inline void copy_panel_row(float *restrict d, const float *restrict s, int n)
{
    switch (n) {
    case 4: memcpy(d, s, 4 * sizeof(float)); break;
    case 6: memcpy(d, s, 6 * sizeof(float)); break;
    case 8: memcpy(d, s, 8 * sizeof(float)); break;
    case 16: memcpy(d, s, 16 * sizeof(float)); break;
    case 24: memcpy(d, s, 24 * sizeof(float)); break;
    case 32: memcpy(d, s, 32 * sizeof(float)); break;
    case 64: memcpy(d, s, 64 * sizeof(float)); break;
    default: memcpy(d, s, (size_t)n * sizeof(float));
    }
}

/* Pack op(A)[i0:i0+mc, p0:p0+kc] into ceil(mc/mr) panels, each kc x mr (mr floats per k),
 * zero-padding rows past mc. */
static void pack_a(float *restrict dst, int trans_a, const float *A, long lda, long i0, long mc,
                   long p0, long kc, int mr, const struct dtkd_sgemm_config *cfg)
{
    long full = trans_a ? mc / mr * mr : 0;
    if (full) { /* A is K x M: walk each k row once, mr contiguous floats to every panel */
        for (long p = 0; p < kc; p++) {
            const float *s = A + (p0 + p) * lda + i0;
            for (long ir = 0; ir < full; ir += mr) copy_panel_row(dst + ir * kc + p * mr, s + ir, mr);
        }
        dst += (size_t)full * kc;
    }
    for (long ir = full; ir < mc; ir += mr) {
        long rows = mc - ir < mr ? mc - ir : mr;
        if (trans_a) { /* the partial last panel: each k gives `rows` contiguous floats */
            const float *src = A + p0 * lda + i0 + ir;
            for (long p = 0; p < kc; p++) {
                float *d = dst + p * mr;
                const float *s = src + p * lda;
                for (long i = 0; i < rows; i++) d[i] = s[i];
                for (long i = rows; i < mr; i++) d[i] = 0.0f;
            }
        } else if (cfg->pack_8rows && rows == mr && mr % 8 == 0) { /* SIMD transposes */
            for (long i = 0; i < mr; i += 8)
                cfg->pack_8rows(dst + i, mr, A + (i0 + ir + i) * lda + p0, lda, kc);
        } else { /* A is M x K: read each row contiguously, write it strided by mr */
            for (long i = 0; i < rows; i++) {
                const float *s = A + (i0 + ir + i) * lda + p0;
                float *d = dst + i;
                for (long p = 0; p < kc; p++) d[p * mr] = s[p];
            }
            for (long i = rows; i < mr; i++)
                for (long p = 0; p < kc; p++) dst[p * mr + i] = 0.0f;
        }
        dst += (size_t)mr * kc;
    }
}

/* Pack one nr-wide panel of op(B)[p0:p0+kc, j0:j0+cols] as kc x nr (nr floats per k),
 * zero-padding columns past cols. */
static void pack_b_panel(float *restrict dst, int trans_b, const float *B, long ldb, long p0,
                         long kc, long j0, long cols, int nr, const struct dtkd_sgemm_config *cfg)
{
    if (trans_b) { /* B is N x K: read each column of op(B) contiguously */
        long j = 0;
        if (cfg->pack_8rows) /* SIMD transposes, 8 columns at a time */
            for (; j + 8 <= cols; j += 8)
                cfg->pack_8rows(dst + j, nr, B + (j0 + j) * ldb + p0, ldb, kc);
        for (; j < cols; j++) {
            const float *s = B + (j0 + j) * ldb + p0;
            float *d = dst + j;
            for (long p = 0; p < kc; p++) d[p * nr] = s[p];
        }
        for (j = cols; j < nr; j++)
            for (long p = 0; p < kc; p++) dst[p * nr + j] = 0.0f;
    } else { /* B is K x N: each k gives cols contiguous floats */
        const float *src = B + p0 * ldb + j0;
        for (long p = 0; p < kc; p++) {
            float *d = dst + p * nr;
            const float *s = src + p * ldb;
            if (cols == nr) {
                copy_panel_row(d, s, nr);
            } else {
                for (long j = 0; j < cols; j++) d[j] = s[j];
                for (long j = cols; j < nr; j++) d[j] = 0.0f;
            }
        }
    }
}

/* ---- the parallel loop nest ---- */

struct gemm_problem {
    const struct dtkd_sgemm_config *cfg;
    int trans_a, trans_b;
    long M, N, K;
    float alpha, beta;
    const float *A, *B;
    long lda, ldb, ldc;
    float *C;
    float *packs;   /* per thread: a B block (b_floats) then an A block (a_floats) */
    size_t b_floats, a_floats;
    int split_m;    /* threads split the rows of C (else: the nr-panels of each B block) */
    int direct_b;   /* full B panels are read in place, unpacked (see dtkd_sgemm) */
};

/* C[mc x cols] (row stride ldc) += the product of packed A block and packed B panels
 * [jp0, jp1), whose columns start at column 0 of the B block. */
static void macro_kernel(const struct gemm_problem *g, const float *a_pack, const float *b_pack,
                         const float *b_direct, long mc, long nc, long kc, long jp0, long jp1,
                         float *C, float beta)
{
    const struct dtkd_sgemm_config *cfg = g->cfg;
    const int mr = cfg->mr, nr = cfg->nr;
    _Alignas(GEMM_ALIGN) float tile[GEMM_MAX_TILE];
    for (long jp = jp0; jp < jp1; jp++) {
        long j = jp * nr, cols = nc - j < nr ? nc - j : nr;
        const float *bp = b_pack + (size_t)j * kc;
        long ldb = nr;
        if (b_direct && cols == nr) {
            bp = b_direct + j;
            ldb = g->ldb;
        }
        for (long i = 0; i < mc; i += mr) {
            long rows = mc - i < mr ? mc - i : mr;
            const float *ap = a_pack + (size_t)i * kc;
            float *c = C + i * g->ldc + j;
            if (rows == mr && cols == nr) {
                cfg->kernel(kc, ap, bp, ldb, c, g->ldc, g->alpha, beta);
                continue;
            }
            /* Edge tile: full-size product into `tile`, then only the valid part into C. */
            cfg->kernel(kc, ap, bp, ldb, tile, nr, 1.0f, 0.0f);
            for (long r = 0; r < rows; r++)
                for (long s = 0; s < cols; s++) {
                    float v = g->alpha * tile[r * nr + s];
                    c[r * g->ldc + s] = beta == 0.0f ? v : v + beta * c[r * g->ldc + s];
                }
        }
    }
}

/* [lo, hi) of n items for thread t of nt, in contiguous balanced ranges. */
static void split_range(long n, int t, int nt, long *lo, long *hi)
{
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

static void gemm_thread(const struct gemm_problem *g, int t, int nt)
{
    const struct dtkd_sgemm_config *cfg = g->cfg;
    const int mr = cfg->mr, nr = cfg->nr;
    float *b_pack = g->packs + (size_t)t * (g->b_floats + g->a_floats);
    float *a_pack = b_pack + g->b_floats;

    /* Rows of C this thread owns (all of them when threads split the columns). */
    long m_lo = 0, m_hi = g->M;
    if (g->split_m) {
        long panels = (g->M + mr - 1) / mr, lo, hi;
        split_range(panels, t, nt, &lo, &hi);
        m_lo = lo * mr;
        m_hi = hi * mr < g->M ? hi * mr : g->M;
    }

    for (long jc = 0; jc < g->N; jc += cfg->nc) {
        long nc = g->N - jc < cfg->nc ? g->N - jc : cfg->nc;
        long npanels = (nc + nr - 1) / nr;
        for (long pc = 0; pc < g->K; pc += cfg->kc) {
            long kc = g->K - pc < cfg->kc ? g->K - pc : cfg->kc;

            /* Each thread packs the B panels it uses into its own buffer: all of them when
             * the threads split the rows (then N is small, so the copy is too), its share of
             * them when they split the columns. Nothing is shared, so no thread ever waits
             * for another (a barrier costs a whole time slice when the machine is busy). */
            long jp_lo = 0, jp_hi = npanels;
            if (!g->split_m) split_range(npanels, t, nt, &jp_lo, &jp_hi);
            for (long jp = jp_lo; jp < jp_hi; jp++) {
                long cols = nc - jp * nr < nr ? nc - jp * nr : nr;
                if (g->direct_b && cols == nr) continue; /* read in place */
                pack_b_panel(b_pack + (size_t)jp * nr * kc, g->trans_b, g->B, g->ldb, pc, kc,
                             jc + jp * nr, cols, nr, cfg);
            }
            /* The first K block applies the caller's beta; later ones accumulate. */
            float beta = pc == 0 ? g->beta : 1.0f;
            if (jp_lo < jp_hi) {
                for (long ic = m_lo; ic < m_hi; ic += cfg->mc) {
                    long mc = m_hi - ic < cfg->mc ? m_hi - ic : cfg->mc;
                    pack_a(a_pack, g->trans_a, g->A, g->lda, ic, mc, pc, kc, mr, cfg);
                    macro_kernel(g, a_pack, b_pack,
                                 g->direct_b ? g->B + pc * g->ldb + jc : NULL, mc, nc, kc,
                                 jp_lo, jp_hi, g->C + ic * g->ldc + jc, beta);
                }
            }
        }
    }
}

/* C = beta * C (beta == 0: C = 0 without reading it), for alpha == 0 or K == 0. */
static void scale_c(long M, long N, float beta, float *C, long ldc)
{
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

int dtkd_sgemm(int trans_a, int trans_b, long M, long N, long K, float alpha, const float *A,
               long lda, const float *B, long ldb, float beta, float *C, long ldc)
{
    if (M < 0 || N < 0 || K < 0) return DTKD_ERR_SHAPE;
    if (ldc < (N > 1 ? N : 1) || lda < ((trans_a ? M : K) > 1 ? (trans_a ? M : K) : 1) ||
        ldb < ((trans_b ? K : N) > 1 ? (trans_b ? K : N) : 1))
        return DTKD_ERR_SHAPE;
    if (M == 0 || N == 0) return DTKD_OK;
    if (K == 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return DTKD_OK;
    }

    /* The micro-kernel and blocking derived for this CPU (gemm_blocking.c), copied so that an
     * autotune changing them meanwhile cannot mix two configurations in one call. */
    const struct dtkd_sgemm_config config = *dtkd_sgemm_choose(dtkd_isa(), M, N);
    const struct dtkd_sgemm_config *cfg = &config;
    const int mr = cfg->mr, nr = cfg->nr;

    /* Threads: none inside another parallel region; none for problems too small to amortize
     * a team start (~a few microseconds). */
    int nt = omp_in_parallel() ? 1 : dtkd_get_num_threads();
    double flops = 2.0 * M * N * K;
    if (flops < 2e6) nt = 1;
    long m_panels = (M + mr - 1) / mr, n_panels = (N + nr - 1) / nr;
    if (nt > m_panels * n_panels) nt = (int)(m_panels * n_panels);
    if (nt < 1) nt = 1;
    /* Split the columns when each thread gets enough of them: each thread then packs all of
     * A, which costs little when every packed float of A serves >= 2 * 256 flops
     * (N / nt >= 256). Else split whichever of rows and columns has more micro-panels (split
     * rows: each thread packs all of the, then small, B). */
    int split_m = (N >= 256L * nt && n_panels >= 4L * nt) ? 0 : m_panels >= n_panels;
    /* A row-major B used by few rows of C is read in place: each of its floats then serves
     * only M/mr micro-kernel calls, too few to repay a packing copy. Not for long rows, whose
     * stride defeats the prefetcher. Measured (1 thread, AVX-512): per-image conv shapes
     * M x 1024 x K with M <= 64 gain 8-14%; ldb >= 16384 loses up to 17%. */
    int direct_b = !trans_b && M <= 2 * cfg->mc && ldb <= 4096;

    long kc_max = K < cfg->kc ? K : cfg->kc;
    long nc_max = N < cfg->nc ? (N + nr - 1) / nr * nr : cfg->nc;
    long mc_max = M < cfg->mc ? (M + mr - 1) / mr * mr : cfg->mc;
    size_t b_floats = (size_t)kc_max * nc_max;
    size_t a_floats = (size_t)kc_max * mc_max;
    /* Round each part to whole cache lines so every block starts 64-byte aligned. */
    b_floats = (b_floats + 15) / 16 * 16;
    a_floats = (a_floats + 15) / 16 * 16;
    float *ws = workspace_get((size_t)nt * (b_floats + a_floats));
    if (!ws) return DTKD_ERR_NOMEM;

    struct gemm_problem g = {
        .cfg = cfg, .trans_a = trans_a != 0, .trans_b = trans_b != 0, .M = M, .N = N, .K = K,
        .alpha = alpha, .beta = beta, .A = A, .B = B, .lda = lda, .ldb = ldb, .ldc = ldc, .C = C,
        .packs = ws, .b_floats = b_floats, .a_floats = a_floats, .split_m = split_m,
        .direct_b = direct_b,
    };

    if (nt == 1) {
        gemm_thread(&g, 0, 1);
    } else {
#pragma omp parallel num_threads(nt)
        {
            /* The team may be smaller than asked (OMP_THREAD_LIMIT, nesting): use its size. */
            gemm_thread(&g, omp_get_thread_num(), omp_get_num_threads());
        }
    }
    return DTKD_OK;
}
