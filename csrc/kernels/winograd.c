/* winograd.c -- Winograd F(m x m, 3x3) forward convolution, m = 2 or 4 (see winograd.h).
 *
 * Tiles: the output is cut into m x m tiles, each reading an a x a input patch (a = m + 2,
 * pad 1; patches of neighbouring tiles overlap by 2). Tiles are numbered over (n, tile row,
 * tile column) and processed in blocks of `block_tiles`, one block per OpenMP iteration, each
 * thread with its own slice of the workspace:
 *   1. input transform  V[xi][t][c] = (B^T d B)[xi] for the block's tiles, 16 channels at a
 *      time: the patch rows are first copied channel-last into a strip (zero padding at the
 *      borders and for channels >= C), so the transform runs on 16-channel vectors;
 *   2. a*a GEMMs        M[xi] (tiles x O) = V[xi] (tiles x C) x u[xi] (C x O)   (dtkd_sgemm,
 *      which runs on the calling thread inside the parallel region);
 *   3. output transform y = A^T M A into an output strip, copied back to NCHW with the
 *      partial tiles at the right and bottom edges cut, adding bias and residual and applying
 *      ReLU on the way (the epilogue of the eval path, where BN is folded into the conv).
 * Channels live in the last dimension of V and M, so both transforms are vector operations
 * over 16 channels; the same source is compiled for AVX-512, AVX2 and portable C (GCC vector
 * extensions), chosen at run time by dtkd_isa().
 *
 * Transform matrices (Lavin & Gray 2015; points 0, +-1, +-2 and infinity for m = 4):
 *   m = 2: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], A^T = [1 1 1 0; 0 1 -1 -1],
 *          G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
 *   m = 4: B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
 *                 0 4 0 -5 0 1],
 *          A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1],
 *          G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]. */
#include "kernels/winograd.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define X86_SIMD 1
#else
#define X86_SIMD 0 /* elsewhere only the portable block runs (dtkd_isa() is scalar) */
#endif
#include <omp.h>
#include <string.h>

#include "dtkd.h"
#include "kernels/gemm.h"

#define LANES 16          /* channels per vector (one AVX-512 register) */
#define ALIGN_FLOATS 16   /* 64-byte alignment of every workspace piece */
#define MAX_A 6           /* largest input tile side (m = 4) */

typedef float vec16 __attribute__((vector_size(64)));

/* ---- weight transform: u[xi][c][o] = (G g G^T)[xi], in double, once per weight version ---- */

static inline __attribute__((always_inline)) void weight_transform_1d(double *out, const double *g,
                                                                      int m, long stride_g)
{
    double g0 = g[0], g1 = g[stride_g], g2 = g[2 * stride_g];
    if (m == 2) {
        out[0] = g0;
        out[1] = 0.5 * (g0 + g1 + g2);
        out[2] = 0.5 * (g0 - g1 + g2);
        out[3] = g2;
    } else {
        out[0] = g0 / 4.0;
        out[1] = -(g0 + g1 + g2) / 6.0;
        out[2] = -(g0 - g1 + g2) / 6.0;
        out[3] = g0 / 24.0 + g1 / 12.0 + g2 / 6.0;
        out[4] = g0 / 24.0 - g1 / 12.0 + g2 / 6.0;
        out[5] = g2;
    }
}

/* The filters' transforms LANES at a time: g[k][l] is tap k of filter l (already rotated for
 * the backward), chunk[xi][l] its (G g G^T)[xi]. Rows then columns, each lane the same double
 * operations in the same order as one filter alone, so the lanes vectorize (a scalar loop per
 * filter, ~250 cycles each, was 17% of a 256-channel layer's training forward) and the result
 * does not depend on which lanes share a vector. */
static inline __attribute__((always_inline)) void
weight_transform_lanes(float chunk[MAX_A * MAX_A][LANES], const double g[9][LANES], int m)
{
    const int a = m + 2;
    double rows[3][MAX_A][LANES];
    for (int r = 0; r < 3; r++)
        for (int l = 0; l < LANES; l++) {
            double out[MAX_A], taps[3] = {g[3 * r][l], g[3 * r + 1][l], g[3 * r + 2][l]};
            weight_transform_1d(out, taps, m, 1);
            for (int j = 0; j < a; j++) rows[r][j][l] = out[j];
        }
    for (int j = 0; j < a; j++)
        for (int l = 0; l < LANES; l++) {
            double out[MAX_A], col[3] = {rows[0][j][l], rows[1][j][l], rows[2][j][l]};
            weight_transform_1d(out, col, m, 1);
            for (int i = 0; i < a; i++) chunk[i * a + j][l] = (float)out[i];
        }
}

/* Row p of every u[xi]: u[xi][p][q] = transform of the filter w[q][p] (forward: p = c, q = o) or
 * of w[p][q] rotated by 180 degrees (backward: p = o, q = c). The a*a rows of one p are P*Q
 * floats apart (the same L1 set for typical sizes), so 16 outputs are gathered in `chunk` and
 * each row is written a full cache line at a time. */
static inline __attribute__((always_inline)) void
transform_weights_row(float *u, const float *w, long O, long C, long p, int m, int backward)
{
    const int aa = (m + 2) * (m + 2);
    const long P = backward ? O : C, Q = backward ? C : O;
    for (long q0 = 0; q0 < Q; q0 += LANES) {
        const long lanes = Q - q0 < LANES ? Q - q0 : LANES;
        double g[9][LANES];
        float chunk[MAX_A * MAX_A][LANES];
        for (long l = 0; l < LANES; l++) {
            const long o = backward ? p : q0 + l, c = backward ? q0 + l : p;
            for (int k = 0; k < 9; k++)
                g[k][l] = l < lanes ? (double)w[(o * C + c) * 9 + (backward ? 8 - k : k)] : 0.0;
        }
        weight_transform_lanes(chunk, g, m);
        for (int xi = 0; xi < aa; xi++)
            memcpy(u + ((size_t)xi * P + p) * Q + q0, chunk[xi], sizeof(float) * lanes);
    }
}

#define DEFINE_TRANSFORM_WEIGHTS_ROW_FN(name, attr)                                             \
    attr static void name(float *u, const float *w, long O, long C, long p, int m, int backward) \
    {                                                                                           \
        if (m == 2)                                                                             \
            transform_weights_row(u, w, O, C, p, 2, backward);                                  \
        else                                                                                    \
            transform_weights_row(u, w, O, C, p, 4, backward);                                  \
    }

DEFINE_TRANSFORM_WEIGHTS_ROW_FN(transform_weights_row_avx512, DTKD_TARGET_AVX512)
DEFINE_TRANSFORM_WEIGHTS_ROW_FN(transform_weights_row_avx2, DTKD_TARGET_AVX2)
DEFINE_TRANSFORM_WEIGHTS_ROW_FN(transform_weights_row_portable, )

static int transform_weights(float *u, const float *w, long O, long C, int m, int backward)
{
    if (O <= 0 || C <= 0) return DTKD_ERR_SHAPE;
    if (m != 2 && m != 4) return DTKD_ERR_VALUE;
    void (*row_fn)(float *, const float *, long, long, long, int, int);
    switch (dtkd_isa()) {
    case DTKD_ISA_AVX512: row_fn = transform_weights_row_avx512; break;
    case DTKD_ISA_AVX2: row_fn = transform_weights_row_avx2; break;
    default: row_fn = transform_weights_row_portable; break;
    }
    const long P = backward ? O : C;
    /* Threads split p, so each writes whole rows u[xi][p][:]. */
#pragma omp parallel for num_threads(dtkd_get_num_threads()) schedule(static)
    for (long p = 0; p < P; p++) row_fn(u, w, O, C, p, m, backward);
    return DTKD_OK;
}

int winograd_transform_weights(float *u, const float *w, long O, long C, int m)
{
    return transform_weights(u, w, O, C, m, 0);
}

int winograd_transform_weights_backward(float *u, const float *w, long O, long C, int m)
{
    return transform_weights(u, w, O, C, m, 1);
}

/* ---- geometry and workspace ---- */

struct wino_geom {
    long N, C, H, W, O;
    int m, a;
    long tiles_h, tiles_w, tiles;   /* tile grid per image and in total */
    long c_pad, o_pad;              /* C, O rounded up to LANES */
    long block_tiles, blocks;
    long strip_w;                   /* input strip width in columns (one full tile row + 2) */
    size_t v_stride, m_stride;      /* floats between the matrices of two points xi */
    size_t v_floats, m_floats, in_strip_floats, out_strip_floats, per_thread;
};

static size_t round_up(size_t n, size_t k) { return (n + k - 1) / k * k; }

/* Tiles per block. The GEMMs tiles x C x O want many tiles (dtkd_sgemm packs u[xi], C x O,
 * on every call, and computes rows in panels of its micro-kernel's mr: a block of mr + 1 tiles
 * costs as much as one of 2 mr), while V and M of a block (a*a*tiles*(C+O) floats) should stay
 * in the L2 cache (3/4 of it, leaving room for the packed GEMM panels). Measured on Zen 4
 * (1 MB L2, mr 14 then) at resnet32x4's shapes (batch 64, 1 and 2 threads, 28..896 tiles):
 * 56 tiles was best or within ~3% of the best everywhere, larger blocks lost 3-10% once V and M
 * left L2, smaller ones lost to the GEMM; the exception was few tiles on 2 threads (256
 * channels at 8x8: 256 tiles), where one block per thread (128) beat 56 (5 blocks, 3 rounds)
 * by ~8%. So: the L2 bound (of this CPU, and the mr of the micro-kernel the GEMM will take),
 * at least 56; among sizes up to it (and, on several threads, one block per thread when that
 * is at most 256 tiles), the one minimizing the modelled time rounds * (rows rounded to mr +
 * ~16 rows for packing u). */
static long choose_block_tiles(long c_pad, long o_pad, long O, int a, long tiles, int nthreads)
{
    const enum dtkd_isa isa = dtkd_isa();
    const long mr = dtkd_sgemm_choose(isa, 56, O)->mr;
    const long l2_floats = dtkd_sgemm_machine(isa)->l2.size / (long)sizeof(float) * 3 / 4;
    long max_tiles = l2_floats / ((long)a * a * (c_pad + o_pad));
    if (max_tiles < 56) max_tiles = 56;
    if (max_tiles > 256) max_tiles = 256;
    if (max_tiles > tiles) max_tiles = tiles;
    const long one_per_thread = nthreads > 1 ? (tiles + nthreads - 1) / nthreads : 0;
    long best = max_tiles, best_cost = -1;
    for (long t = mr; t <= 256 && t <= tiles; t++) {
        if (t > max_tiles && t != one_per_thread) continue;
        long blocks = (tiles + t - 1) / t;
        long rounds = (blocks + nthreads - 1) / nthreads;
        long cost = rounds * ((t + mr - 1) / mr * mr + 16);
        if (best_cost < 0 || cost <= best_cost) best = t, best_cost = cost;  /* ties: larger */
    }
    if (tiles < mr) best = tiles;
    return best;
}

static void geom_layout(struct wino_geom *g);

static int geom_init(struct wino_geom *g, long N, long C, long H, long W, long O, int m,
                     int nthreads)
{
    if (N <= 0 || C <= 0 || H <= 0 || W <= 0 || O <= 0) return DTKD_ERR_SHAPE;
    if (m != 2 && m != 4) return DTKD_ERR_VALUE;
    g->N = N, g->C = C, g->H = H, g->W = W, g->O = O, g->m = m, g->a = m + 2;
    g->tiles_h = (H + m - 1) / m;
    g->tiles_w = (W + m - 1) / m;
    g->tiles = N * g->tiles_h * g->tiles_w;
    g->c_pad = (long)round_up((size_t)C, LANES);
    g->o_pad = (long)round_up((size_t)O, LANES);
    g->block_tiles = choose_block_tiles(g->c_pad, g->o_pad, O, g->a, g->tiles, nthreads);
    geom_layout(g);
    return DTKD_OK;
}

/* The workspace layout for g->block_tiles tiles per block. */
static void geom_layout(struct wino_geom *g)
{
    const int m = g->m;
    g->blocks = (g->tiles + g->block_tiles - 1) / g->block_tiles;
    g->strip_w = g->tiles_w * m + 2;
    const size_t aa = (size_t)g->a * g->a;
    /* One extra cache line between the a*a matrices: a transform touches all of them for one
     * tile, and at a power-of-two distance they would all fall in one L1 set. */
    g->v_stride = (size_t)g->block_tiles * g->c_pad + LANES;
    g->m_stride = (size_t)g->block_tiles * g->o_pad + LANES;
    g->v_floats = aa * g->v_stride;
    g->m_floats = aa * g->m_stride;
    g->in_strip_floats = round_up((size_t)g->a * g->strip_w * LANES, ALIGN_FLOATS);
    g->out_strip_floats = round_up((size_t)m * g->tiles_w * m * LANES, ALIGN_FLOATS);
    g->per_thread = g->v_floats + g->m_floats + g->in_strip_floats + g->out_strip_floats;
}

size_t winograd_workspace_floats(long N, long C, long H, long W, long O, int m, int nthreads)
{
    struct wino_geom g;
    if (nthreads < 1 || geom_init(&g, N, C, H, W, O, m, nthreads) != DTKD_OK) return 0;
    return g.per_thread * (size_t)nthreads + ALIGN_FLOATS; /* + slack to align the base */
}

/* ---- strips: NCHW rows <-> channel-last rows of 16 channels ---- */

/* Zero the parts of one strip row (cols columns of LANES floats, starting at image column w0)
 * that read padding: all of it if image row h is outside [0, H), else the columns before
 * *j_lo and from *j_hi on, [*j_lo, *j_hi) being the columns inside [0, W). Returns 0 when the
 * whole row is padding, so the caller has nothing to copy. */
static inline __attribute__((always_inline)) int
zero_strip_row_padding(float *srow, long *j_lo, long *j_hi, long h, long H, long w0, long W,
                       long cols)
{
    if (h < 0 || h >= H) {
        memset(srow, 0, sizeof(float) * (size_t)cols * LANES);
        return 0;
    }
    *j_lo = w0 < 0 ? -w0 : 0;                 /* first column inside the image */
    *j_hi = W - w0 < cols ? W - w0 : cols;    /* one past the last */
    for (long j = 0; j < *j_lo; j++) memset(srow + j * LANES, 0, sizeof(float) * LANES);
    for (long j = *j_hi; j < cols; j++) memset(srow + j * LANES, 0, sizeof(float) * LANES);
    return 1;
}

/* strip[r][j][l] = x[c0 + l][h0 + r][w0 + j] for r < rows, j < cols; zero outside the image
 * and for channels >= C. x points at one image (C, H, W). */
static inline __attribute__((always_inline)) void
pack_input_strip(float *strip, long strip_w, const float *x, long c0, long C, long H, long W,
                 long h0, long w0, int rows, long cols)
{
    for (int r = 0; r < rows; r++) {
        float *srow = strip + (size_t)r * strip_w * LANES;
        const long h = h0 + r;
        long j_lo, j_hi;
        if (!zero_strip_row_padding(srow, &j_lo, &j_hi, h, H, w0, W, cols)) continue;
        for (int l = 0; l < LANES; l++) {
            if (c0 + l < C) {
                const float *xrow = x + ((c0 + l) * H + h) * W + w0;
                for (long j = j_lo; j < j_hi; j++) srow[j * LANES + l] = xrow[j];
            } else {
                for (long j = j_lo; j < j_hi; j++) srow[j * LANES + l] = 0.0f;
            }
        }
    }
}

/* What the output copy applies: y = relu?(conv + bias + residual); bias (O,) and residual
 * (N, O, H, W) may be NULL. Fusing them here saves the eval path (BN folded into the conv)
 * separate passes over y. */
struct wino_epilogue {
    const float *bias;
    const float *residual;
    int relu;
};

/* y[o0 + l][h0 + r][w0 + j] = epilogue(strip[r][j][l]) for the parts inside y and channels
 * < O; y and res point at one image (O, H, W). */
static inline __attribute__((always_inline)) void
unpack_output_strip(float *y, const float *strip, long strip_w, const struct wino_epilogue *ep,
                    const float *res, long o0, long O, long H, long W, long h0, long w0, int rows,
                    long cols)
{
    if (rows > H - h0) rows = (int)(H - h0);
    if (cols > W - w0) cols = W - w0;
    for (int l = 0; l < LANES && o0 + l < O; l++) {
        const float b = ep->bias ? ep->bias[o0 + l] : 0.0f;
        for (int r = 0; r < rows; r++) {
            const float *srow = strip + (size_t)r * strip_w * LANES + l;
            const size_t at = ((o0 + l) * H + h0 + r) * W + w0;
            for (long j = 0; j < cols; j++) {
                float v = srow[j * LANES] + b;
                if (res) v += res[at + j];
                y[at + j] = ep->relu && !(v > 0.0f) ? 0.0f : v;
            }
        }
    }
}

/* AVX-512 versions of the two strip copies: 16 x 16 blocks (16 channels x 16 columns) go
 * through registers and a transpose instead of 256 scalar loads and stores (-20% of the
 * total time at 64 channels, 32x32). The same with 8 x 8 AVX2 transposes for the AVX2 path
 * measured no faster than the compiled loops (24.5 ms both), so that path keeps those. */
#if X86_SIMD
/* r[i] = row i of a 16 x 16 block -> r[j] = column j. */
static inline DTKD_TARGET_AVX512 void transpose16x16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* Within 128-bit lane L, r[4i + k] then holds column 4L + k of rows 4i..4i+3. */
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    /* Gather lane L of r[k], r[4+k], r[8+k], r[12+k] into column 4L + k. */
    for (int k = 0; k < 4; k++) {
        __m512 ab_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 ab_hi = _mm512_shuffle_f32x4(r[k], r[4 + k], _MM_SHUFFLE(3, 2, 3, 2));
        __m512 cd_lo = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 cd_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], _MM_SHUFFLE(3, 2, 3, 2));
        t[k] = _mm512_shuffle_f32x4(ab_lo, cd_lo, _MM_SHUFFLE(2, 0, 2, 0));
        t[4 + k] = _mm512_shuffle_f32x4(ab_lo, cd_lo, _MM_SHUFFLE(3, 1, 3, 1));
        t[8 + k] = _mm512_shuffle_f32x4(ab_hi, cd_hi, _MM_SHUFFLE(2, 0, 2, 0));
        t[12 + k] = _mm512_shuffle_f32x4(ab_hi, cd_hi, _MM_SHUFFLE(3, 1, 3, 1));
    }
    for (int j = 0; j < 16; j++) r[j] = t[j];
}

static inline __mmask16 first_lanes(long n)
{
    return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
}

/* As pack_input_strip. */
static DTKD_TARGET_AVX512 void
pack_input_strip_avx512(float *strip, long strip_w, const float *x, long c0, long C, long H,
                        long W, long h0, long w0, int rows, long cols)
{
    for (int r = 0; r < rows; r++) {
        float *srow = strip + (size_t)r * strip_w * LANES;
        const long h = h0 + r;
        long j_lo, j_hi;
        if (!zero_strip_row_padding(srow, &j_lo, &j_hi, h, H, w0, W, cols)) continue;
        for (long j = j_lo; j < j_hi; j += 16) {
            const long n = j_hi - j < 16 ? j_hi - j : 16;
            const __mmask16 k = first_lanes(n);
            __m512 v[16];
            for (int l = 0; l < LANES; l++)
                v[l] = c0 + l < C ? _mm512_maskz_loadu_ps(k, x + ((c0 + l) * H + h) * W + w0 + j)
                                  : _mm512_setzero_ps();
            transpose16x16(v);
            for (long jj = 0; jj < n; jj++) _mm512_store_ps(srow + (j + jj) * LANES, v[jj]);
        }
    }
}

/* As unpack_output_strip. */
static DTKD_TARGET_AVX512 void
unpack_output_strip_avx512(float *y, const float *strip, long strip_w,
                           const struct wino_epilogue *ep, const float *res, long o0, long O,
                           long H, long W, long h0, long w0, int rows, long cols)
{
    if (rows > H - h0) rows = (int)(H - h0);
    if (cols > W - w0) cols = W - w0;
    const int lanes = O - o0 < LANES ? (int)(O - o0) : LANES;
    for (int r = 0; r < rows; r++) {
        const float *srow = strip + (size_t)r * strip_w * LANES;
        for (long j = 0; j < cols; j += 16) {
            const long n = cols - j < 16 ? cols - j : 16;
            const __mmask16 k = first_lanes(n);
            __m512 v[16];
            for (long jj = 0; jj < 16; jj++)
                v[jj] = jj < n ? _mm512_load_ps(srow + (j + jj) * LANES) : _mm512_setzero_ps();
            transpose16x16(v);
            for (int l = 0; l < lanes; l++) {
                const size_t at = ((o0 + l) * H + h0 + r) * W + w0 + j;
                const float b = ep->bias ? ep->bias[o0 + l] : 0.0f;
                __m512 out = _mm512_add_ps(v[l], _mm512_set1_ps(b));
                if (res) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(k, res + at));
                if (ep->relu) out = _mm512_max_ps(out, _mm512_setzero_ps());
                _mm512_mask_storeu_ps(y + at, k, out);
            }
        }
    }
}
#else /* !X86_SIMD: the AVX-512 names on the portable copies, never picked at run time */
#define pack_input_strip_avx512 pack_input_strip
#define unpack_output_strip_avx512 unpack_output_strip
#endif /* X86_SIMD */

/* ---- transforms on 16-channel vectors ---- */

#define LD(p) (*(const vec16 *)(p))
#define ST(p, v) (*(vec16 *)(p) = (v))

/* 1-D input transforms B^T d, d given as a vectors. */
static inline __attribute__((always_inline)) void input_1d_f2(vec16 *r, const vec16 *d)
{
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
}

static inline __attribute__((always_inline)) void input_1d_f4(vec16 *r, const vec16 *d)
{
    const vec16 d4_m4d2 = d[4] - 4.0f * d[2], d3_m4d1 = d[3] - 4.0f * d[1];
    const vec16 d4_md2 = d[4] - d[2], d3_md1 = d[3] - d[1];
    r[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    r[1] = d4_m4d2 + d3_m4d1;
    r[2] = d4_m4d2 - d3_m4d1;
    r[3] = d4_md2 + 2.0f * d3_md1;
    r[4] = d4_md2 - 2.0f * d3_md1;
    r[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

/* 1-D output transforms A^T v. */
static inline __attribute__((always_inline)) void output_1d_f2(vec16 *r, const vec16 *v)
{
    r[0] = v[0] + v[1] + v[2];
    r[1] = v[1] - v[2] - v[3];
}

static inline __attribute__((always_inline)) void output_1d_f4(vec16 *r, const vec16 *v)
{
    const vec16 s12 = v[1] + v[2], d12 = v[1] - v[2], s34 = v[3] + v[4], d34 = v[3] - v[4];
    r[0] = v[0] + s12 + s34;
    r[1] = d12 + 2.0f * d34;
    r[2] = s12 + 4.0f * s34;
    r[3] = d12 + 8.0f * d34 + v[5];
}

/* V[xi * v_stride] = (B^T d B)[xi] for one tile; d is the a x a patch at `patch` in a strip
 * with row stride row_stride floats. */
static inline __attribute__((always_inline)) void
input_transform(float *v, size_t v_stride, const float *patch, size_t row_stride, int m)
{
    const int a = m + 2;
    vec16 rows[MAX_A][MAX_A];  /* rows[i][j] = (d B)[i][j] after the first pass */
    for (int i = 0; i < a; i++) {
        vec16 d[MAX_A];
        for (int j = 0; j < a; j++) d[j] = LD(patch + i * row_stride + j * LANES);
        if (m == 2) input_1d_f2(rows[i], d);
        else input_1d_f4(rows[i], d);
    }
    for (int j = 0; j < a; j++) {
        vec16 col[MAX_A], out[MAX_A];
        for (int i = 0; i < a; i++) col[i] = rows[i][j];
        if (m == 2) input_1d_f2(out, col);
        else input_1d_f4(out, col);
        for (int i = 0; i < a; i++) ST(v + (size_t)(i * a + j) * v_stride, out[i]);
    }
}

/* out tile (m x m, row stride row_stride floats) = A^T M A for one tile of M. */
static inline __attribute__((always_inline)) void
output_transform(float *tile, size_t row_stride, const float *mt, size_t m_stride, int m)
{
    const int a = m + 2;
    vec16 rows[MAX_A][4];  /* rows[i][j] = (M A)[i][j] */
    for (int i = 0; i < a; i++) {
        vec16 v[MAX_A];
        for (int j = 0; j < a; j++) v[j] = LD(mt + (size_t)(i * a + j) * m_stride);
        if (m == 2) output_1d_f2(rows[i], v);
        else output_1d_f4(rows[i], v);
    }
    for (int j = 0; j < m; j++) {
        vec16 col[MAX_A], out[4];
        for (int i = 0; i < a; i++) col[i] = rows[i][j];
        if (m == 2) output_1d_f2(out, col);
        else output_1d_f4(out, col);
        for (int i = 0; i < m; i++) ST(tile + i * row_stride + j * LANES, out[i]);
    }
}

/* ---- one block of tiles [t0, t1): transforms, GEMMs, inverse transforms ---- */

/* Runs BODY once per tile-row segment of the block [t0, t1), with n (image), th (tile row),
 * tw0..tw1 (tile columns) and t_local (index in the block of tile tw0) set. */
#define FOR_EACH_ROW_SEGMENT(g, t0, t1, BODY)                                                    \
    for (long t_ = (t0); t_ < (t1);) {                                                           \
        const long row_ = t_ / (g)->tiles_w, n = row_ / (g)->tiles_h, th = row_ % (g)->tiles_h;  \
        const long tw0 = t_ % (g)->tiles_w;                                                      \
        const long tw1 = (g)->tiles_w < tw0 + ((t1) - t_) ? (g)->tiles_w : tw0 + ((t1) - t_);    \
        const long t_local = t_ - (t0);                                                          \
        BODY;                                                                                    \
        t_ += tw1 - tw0;                                                                         \
    }

/* V[xi][t][c] = (B^T d B)[xi] for the tiles [t0, t1) of x (N, C, H, W), 16 channels at a
 * time through the channel-last strip. */
static inline __attribute__((always_inline)) void
transform_input_block(const struct wino_geom *g, float *V, const float *x, long t0, long t1,
                      float *in_strip, int avx512)
{
    const int m = g->m, a = g->a;
    const long C = g->C, H = g->H, W = g->W;
    for (long c0 = 0; c0 < g->c_pad; c0 += LANES)
        FOR_EACH_ROW_SEGMENT(g, t0, t1, {
            const long cols = (tw1 - tw0) * m + 2;
            if (avx512)
                pack_input_strip_avx512(in_strip, g->strip_w, x + (size_t)n * C * H * W, c0, C,
                                        H, W, th * m - 1, tw0 * m - 1, a, cols);
            else
                pack_input_strip(in_strip, g->strip_w, x + (size_t)n * C * H * W, c0, C, H, W,
                                 th * m - 1, tw0 * m - 1, a, cols);
            for (long tw = tw0; tw < tw1; tw++)
                input_transform(V + (size_t)(t_local + tw - tw0) * g->c_pad + c0, g->v_stride,
                                in_strip + (tw - tw0) * m * LANES, (size_t)g->strip_w * LANES, m);
        })
}

/* ---- products of thin layers ----
 * At 16-64 channels each of the a*a products of a block is a GEMM tiles x C x O whose inner
 * dimension C is 16-64: dtkd_sgemm's fixed work per call (choosing the kernel, the thread's
 * packing buffer, packing the V panel) and its micro-kernel's C-tile stores every C <= 64 steps
 * weigh as much as the FMAs. These loops read V and u where they lie: per step c, ROWS tiles'
 * V[t][c] broadcast against u[c][o0 .. o0 + 16) in ROWS x 16 accumulators. Each sum runs over
 * c in order with one rounding per step (FMA on the SIMD paths, a product then a sum on the
 * portable one), as dtkd_sgemm's micro-kernels do for K <= kc: the same bits either way. */
#define THIN_MAX_C 64 /* the GEMM's packing pays for itself from here (its kc is >= 128) */

static int thin_products_apply(long C, long O) { return C <= THIN_MAX_C && O % LANES == 0; }

/* M (nt x O, row stride ldm) = V (nt x C, row stride ldv) . u (C x O, row-major). */
#define DEFINE_THIN_PRODUCTS(name, attr, ROWS, acc_t, ZERO, LOAD, FMA, STORE)                  \
    attr static void name(float *M, size_t ldm, const float *V, size_t ldv, const float *u,   \
                          long C, long O, long nt)                                             \
    {                                                                                          \
        for (long o0 = 0; o0 < O; o0 += LANES) {                                               \
            long t = 0;                                                                        \
            for (; t < nt; t += ROWS) {                                                        \
                const int rows = nt - t < ROWS ? (int)(nt - t) : ROWS;                        \
                acc_t acc[ROWS];                                                               \
                for (int i = 0; i < ROWS; i++) acc[i] = ZERO;                                  \
                if (rows == ROWS) {                                                            \
                    for (long c = 0; c < C; c++) {                                             \
                        const acc_t uv = LOAD(u + c * O + o0);                                 \
                        _Pragma("GCC unroll 16") for (int i = 0; i < ROWS; i++)                \
                            acc[i] = FMA(V[(t + i) * ldv + c], uv, acc[i]);                    \
                    }                                                                          \
                } else {                                                                       \
                    for (long c = 0; c < C; c++) {                                             \
                        const acc_t uv = LOAD(u + c * O + o0);                                 \
                        for (int i = 0; i < rows; i++)                                         \
                            acc[i] = FMA(V[(t + i) * ldv + c], uv, acc[i]);                    \
                    }                                                                          \
                }                                                                              \
                for (int i = 0; i < rows; i++) STORE(M + (t + i) * ldm + o0, acc[i]);          \
            }                                                                                  \
        }                                                                                      \
    }

static inline vec16 load_vec16(const float *p)
{
    vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store_vec16(float *p, vec16 v) { memcpy(p, &v, sizeof v); }
/* the portable GEMM kernel's rounding: a product, then a sum */
static inline vec16 mul_add_vec16(float a, vec16 b, vec16 acc) { return acc + a * b; }
DEFINE_THIN_PRODUCTS(thin_products_portable, , 6, vec16, (vec16){0}, load_vec16, mul_add_vec16,
                     store_vec16)

#if X86_SIMD
typedef struct { __m256 lo, hi; } ymm2;
#define YMM2_ZERO ((ymm2){_mm256_setzero_ps(), _mm256_setzero_ps()})
static inline DTKD_TARGET_AVX2 ymm2 load_ymm2(const float *p)
{
    return (ymm2){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}
static inline DTKD_TARGET_AVX2 void store_ymm2(float *p, ymm2 v)
{
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
static inline DTKD_TARGET_AVX2 ymm2 fma_ymm2(float a, ymm2 b, ymm2 acc)
{
    const __m256 av = _mm256_set1_ps(a);
    return (ymm2){_mm256_fmadd_ps(av, b.lo, acc.lo), _mm256_fmadd_ps(av, b.hi, acc.hi)};
}
/* 6 x 16: 12 ymm accumulators, 2 for u, 1 broadcast (AVX2's 16 registers) */
DEFINE_THIN_PRODUCTS(thin_products_avx2, DTKD_TARGET_AVX2, 6, ymm2, YMM2_ZERO, load_ymm2,
                     fma_ymm2, store_ymm2)

static inline DTKD_TARGET_AVX512 __m512 fma_zmm(float a, __m512 b, __m512 acc)
{
    return _mm512_fmadd_ps(_mm512_set1_ps(a), b, acc);
}
/* 12 x 16: 12 zmm accumulators (enough FMAs in flight for two 512-bit pipes) */
DEFINE_THIN_PRODUCTS(thin_products_avx512, DTKD_TARGET_AVX512, 12, __m512, _mm512_setzero_ps(),
                     _mm512_loadu_ps, fma_zmm, _mm512_storeu_ps)
#else
/* not x86: the SIMD block functions are never chosen; they share the portable products */
#define thin_products_avx2 thin_products_portable
#define thin_products_avx512 thin_products_portable
#endif

typedef void (*thin_products_fn)(float *M, size_t ldm, const float *V, size_t ldv,
                                 const float *u, long C, long O, long nt);

static inline __attribute__((always_inline)) int
process_block(const struct wino_geom *g, float *y, const float *x, const float *u,
              const struct wino_epilogue *ep, long t0, long t1, float *ws, int avx512,
              thin_products_fn thin_products)
{
    const int m = g->m, a = g->a, aa = a * a;
    const long C = g->C, H = g->H, W = g->W, O = g->O, nt = t1 - t0;
    float *V = ws, *M = V + g->v_floats, *in_strip = M + g->m_floats;
    float *out_strip = in_strip + g->in_strip_floats;
    const size_t v_stride = g->v_stride, m_stride = g->m_stride;

    transform_input_block(g, V, x, t0, t1, in_strip, avx512);

    /* Columns O..o_pad of M are never written: the output transform computes garbage lanes
     * there that the output copy drops. */
    const int thin = thin_products_apply(C, O);
    for (int xi = 0; xi < aa; xi++) {
        if (thin) {
            thin_products(M + xi * m_stride, g->o_pad, V + xi * v_stride, g->c_pad,
                          u + (size_t)xi * C * O, C, O, nt);
            continue;
        }
        int st = dtkd_sgemm(0, 0, nt, O, C, 1.0f, V + xi * v_stride, g->c_pad,
                            u + (size_t)xi * C * O, O, 0.0f, M + xi * m_stride, g->o_pad);
        if (st != DTKD_OK) return st;
    }

    const long out_w = g->tiles_w * m;  /* output strip row width in columns */
    for (long o0 = 0; o0 < g->o_pad; o0 += LANES)
        FOR_EACH_ROW_SEGMENT(g, t0, t1, {
            for (long tw = tw0; tw < tw1; tw++)
                output_transform(out_strip + (tw - tw0) * m * LANES, (size_t)out_w * LANES,
                                 M + (size_t)(t_local + tw - tw0) * g->o_pad + o0, m_stride, m);
            const size_t image = (size_t)n * O * H * W;
            const float *res = ep->residual ? ep->residual + image : NULL;
            if (avx512)
                unpack_output_strip_avx512(y + image, out_strip, out_w, ep, res, o0, O, H, W,
                                           th * m, tw0 * m, m, (tw1 - tw0) * m);
            else
                unpack_output_strip(y + image, out_strip, out_w, ep, res, o0, O, H, W, th * m,
                                    tw0 * m, m, (tw1 - tw0) * m);
        })
    return DTKD_OK;
}

/* One copy of process_block per instruction set, with that set's thin products (a block never
 * mixes paths); vec16 arithmetic becomes one AVX-512 instruction, two AVX2 ones, or four SSE
 * ones. Separate m = 2 / m = 4 instances let the compiler unroll the transforms fully. */
#define DEFINE_BLOCK_FN(name, attr, avx512, thin)                                             \
    attr static int name(const struct wino_geom *g, float *y, const float *x, const float *u, \
                         const struct wino_epilogue *ep, long t0, long t1, float *ws)         \
    {                                                                                         \
        struct wino_geom fixed = *g;                                                          \
        if (g->m == 2) {                                                                      \
            fixed.m = 2, fixed.a = 4;                                                         \
            return process_block(&fixed, y, x, u, ep, t0, t1, ws, avx512, thin);              \
        }                                                                                     \
        fixed.m = 4, fixed.a = 6;                                                             \
        return process_block(&fixed, y, x, u, ep, t0, t1, ws, avx512, thin);                  \
    }

DEFINE_BLOCK_FN(block_avx512, DTKD_TARGET_AVX512, 1, thin_products_avx512)
DEFINE_BLOCK_FN(block_avx2, DTKD_TARGET_AVX2, 0, thin_products_avx2)
DEFINE_BLOCK_FN(block_portable, , 0, thin_products_portable)

int winograd_conv3x3_forward(float *y, const float *x, const float *u, const float *bias,
                             const float *residual, long N, long C, long H, long W, long O, int m,
                             int relu, float *workspace, size_t workspace_floats)
{
    /* The block size depends on the thread count; if the workspace was sized for fewer
     * threads than are set now (set_num_threads in between), run on one. */
    struct wino_geom g;
    long nthreads = dtkd_get_num_threads();
    int st = geom_init(&g, N, C, H, W, O, m, (int)nthreads);
    if (st != DTKD_OK) return st;
    if (workspace_floats < winograd_workspace_floats(N, C, H, W, O, m, (int)nthreads)) {
        nthreads = 1;
        geom_init(&g, N, C, H, W, O, m, 1);
        if (workspace_floats < winograd_workspace_floats(N, C, H, W, O, m, 1))
            return DTKD_ERR_WORKSPACE;
    }
    if (nthreads > g.blocks) nthreads = g.blocks;
    /* Align the workspace base to 64 bytes: vec16 loads and stores assume it. */
    if ((uintptr_t)workspace % sizeof(float)) return DTKD_ERR_WORKSPACE;
    float *ws = workspace + ((-(uintptr_t)workspace / sizeof(float)) & (ALIGN_FLOATS - 1));

    const struct wino_epilogue ep = {bias, residual, relu};
    int (*block_fn)(const struct wino_geom *, float *, const float *, const float *,
                    const struct wino_epilogue *, long, long, float *);
    switch (dtkd_isa()) {
    case DTKD_ISA_AVX512: block_fn = block_avx512; break;
    case DTKD_ISA_AVX2: block_fn = block_avx2; break;
    default: block_fn = block_portable; break;
    }

    int status = DTKD_OK;
#pragma omp parallel num_threads(nthreads)
    {
        float *my_ws = ws + (size_t)omp_get_thread_num() * g.per_thread;
#pragma omp for schedule(dynamic, 1)
        for (long b = 0; b < g.blocks; b++) {
            long t0 = b * g.block_tiles;
            long t1 = t0 + g.block_tiles < g.tiles ? t0 + g.block_tiles : g.tiles;
            int s = block_fn(&g, y, x, u, &ep, t0, t1, my_ws);
            if (s != DTKD_OK) {
#pragma omp atomic write
                status = s;
            }
        }
    }
    return status;
}

/* dx[n][c] = sum_o conv3x3(dy[n][o], w[o][c] rotated by 180 degrees), pad 1: the same
 * convolution with the roles of C and O swapped. */
int winograd_conv3x3_backward_input(float *dx, const float *dy, const float *u_backward, long N,
                                    long C, long H, long W, long O, int m, float *workspace,
                                    size_t workspace_floats)
{
    return winograd_conv3x3_forward(dx, dy, u_backward, NULL, NULL, N, O, H, W, C, m, 0,
                                    workspace, workspace_floats);
}

/* ---- weight gradient ----
 * Per tile the forward is y = A^T [(G g G^T) .* (B^T d B)] A, so (transposing each linear map)
 *   dL/dg = sum over tiles of  G^T [(A dY A^T) .* (B^T d B)] G,
 * dY the tile's m x m output gradient (zero beyond the image, where the forward's partial tiles
 * are cut). The sum over tiles moves inside the transform: per point xi,
 *   Q[xi] (O x C) = sum_t P[xi][t][o] V[xi][t][c],   P = A dY A^T,  V = B^T d B,
 * a*a GEMMs with the tiles as their inner dimension (36 / 16 products per 9 m^2 of the direct
 * sum: 4x / 2.25x fewer for m = 4 / 2), then dW[o][c] = G^T Q[.][o][c] G once, in double.
 * Threads own fixed ranges of tiles (so the result does not depend on scheduling), each with
 * its own Q; the per-thread Qs are summed in double in a fixed order. */

/* 1-D gradient transform A d (m values -> a): the transpose of output_1d_f*. */
static inline __attribute__((always_inline)) void gradient_1d(vec16 *r, const vec16 *d, int m)
{
    if (m == 2) {
        r[0] = d[0];
        r[1] = d[0] + d[1];
        r[2] = d[0] - d[1];
        r[3] = -d[1];
    } else {
        const vec16 s02 = d[0] + d[2], s13 = d[1] + d[3];
        const vec16 t02 = d[0] + 4.0f * d[2], t13 = 2.0f * d[1] + 8.0f * d[3];
        r[0] = d[0];
        r[1] = s02 + s13;
        r[2] = s02 - s13;
        r[3] = t02 + t13;
        r[4] = t02 - t13;
        r[5] = d[3];
    }
}

/* P[xi * p_stride] = (A dY A^T)[xi] for one m x m tile of dY at `patch` (row stride
 * row_stride floats in a strip). */
static inline __attribute__((always_inline)) void
gradient_transform(float *p, size_t p_stride, const float *patch, size_t row_stride, int m)
{
    const int a = m + 2;
    vec16 rows[4][MAX_A]; /* rows[k][j] = (dY A^T)[k][j] */
    for (int k = 0; k < m; k++) {
        vec16 d[4];
        for (int l = 0; l < m; l++) d[l] = LD(patch + k * row_stride + l * LANES);
        gradient_1d(rows[k], d, m);
    }
    for (int j = 0; j < a; j++) {
        vec16 col[4], out[MAX_A];
        for (int k = 0; k < m; k++) col[k] = rows[k][j];
        gradient_1d(out, col, m);
        for (int i = 0; i < a; i++) ST(p + (size_t)(i * a + j) * p_stride, out[i]);
    }
}

/* Q[xi] (O x C, row stride C) += P[xi]^T V[xi] over the tiles [t0, t1). The workspace holds V,
 * P (in the place of the forward's M) and the strip. */
static inline __attribute__((always_inline)) int
weight_block(const struct wino_geom *g, float *q, const float *x, const float *dy, long t0,
             long t1, float *ws, int avx512)
{
    const int m = g->m, a = g->a, aa = a * a;
    const long C = g->C, H = g->H, W = g->W, O = g->O, nt = t1 - t0;
    float *V = ws, *P = V + g->v_floats, *strip = P + g->m_floats;

    transform_input_block(g, V, x, t0, t1, strip, avx512);
    for (long o0 = 0; o0 < g->o_pad; o0 += LANES)
        FOR_EACH_ROW_SEGMENT(g, t0, t1, {
            const long cols = (tw1 - tw0) * m;
            const float *image = dy + (size_t)n * O * H * W;
            if (avx512)
                pack_input_strip_avx512(strip, g->strip_w, image, o0, O, H, W, th * m, tw0 * m, m,
                                        cols);
            else
                pack_input_strip(strip, g->strip_w, image, o0, O, H, W, th * m, tw0 * m, m, cols);
            for (long tw = tw0; tw < tw1; tw++)
                gradient_transform(P + (size_t)(t_local + tw - tw0) * g->o_pad + o0, g->m_stride,
                                   strip + (tw - tw0) * m * LANES, (size_t)g->strip_w * LANES, m);
        })
    for (int xi = 0; xi < aa; xi++) {
        int st = dtkd_sgemm(1, 0, O, C, nt, 1.0f, P + xi * g->m_stride, g->o_pad,
                            V + xi * g->v_stride, g->c_pad, 1.0f, q + (size_t)xi * O * C, C);
        if (st != DTKD_OK) return st;
    }
    return DTKD_OK;
}

#define DEFINE_WEIGHT_BLOCK_FN(name, attr, avx512)                                              \
    attr static int name(const struct wino_geom *g, float *q, const float *x, const float *dy, \
                         long t0, long t1, float *ws)                                           \
    {                                                                                           \
        struct wino_geom fixed = *g;                                                            \
        if (g->m == 2) {                                                                        \
            fixed.m = 2, fixed.a = 4;                                                           \
            return weight_block(&fixed, q, x, dy, t0, t1, ws, avx512);                          \
        }                                                                                       \
        fixed.m = 4, fixed.a = 6;                                                               \
        return weight_block(&fixed, q, x, dy, t0, t1, ws, avx512);                              \
    }

DEFINE_WEIGHT_BLOCK_FN(weight_block_avx512, DTKD_TARGET_AVX512, 1)
DEFINE_WEIGHT_BLOCK_FN(weight_block_avx2, DTKD_TARGET_AVX2, 0)
DEFINE_WEIGHT_BLOCK_FN(weight_block_portable, , 0)

/* out[r] = (G^T q)[r], r < 3, for the a values q[i * stride]. */
static inline __attribute__((always_inline)) void weight_gradient_1d(double out[3], const double *q,
                                                                     int m, long stride)
{
    double v[MAX_A];
    for (int i = 0; i < m + 2; i++) v[i] = q[i * stride];
    if (m == 2) {
        out[0] = v[0] + 0.5 * (v[1] + v[2]);
        out[1] = 0.5 * (v[1] - v[2]);
        out[2] = 0.5 * (v[1] + v[2]) + v[3];
    } else {
        out[0] = v[0] / 4.0 - (v[1] + v[2]) / 6.0 + (v[3] + v[4]) / 24.0;
        out[1] = -(v[1] - v[2]) / 6.0 + (v[3] - v[4]) / 12.0;
        out[2] = -(v[1] + v[2]) / 6.0 + (v[3] + v[4]) / 6.0 + v[5];
    }
}

/* dw[oc][3x3] += G^T Q[.][oc] G for the `lanes` (<= LANES) filters oc0, oc0 + 1, ..., Q[xi][oc]
 * the sum of the team's per-thread Qs (q_team[k * thread_stride + xi * q_stride + oc]) in
 * thread order, in double. LANES filters at a time, each lane the same double operations as one
 * filter alone (bitwise the same result), so they vectorize: one filter at a time this was 26%
 * of a 256-channel layer's weight gradient. */
static inline __attribute__((always_inline)) void
weight_gradient_lanes(float *dw, const float *q_team, size_t thread_stride, int team,
                      size_t q_stride, long oc0, long lanes, int m)
{
    const int a = m + 2;
    double full[MAX_A * MAX_A][LANES], half[MAX_A][3][LANES];
    for (int xi = 0; xi < a * a; xi++) {
        for (int l = 0; l < LANES; l++) full[xi][l] = 0.0;
        for (int k = 0; k < team; k++) {
            const float *q = q_team + (size_t)k * thread_stride + (size_t)xi * q_stride + oc0;
            for (long l = 0; l < lanes; l++) full[xi][l] += q[l];
        }
    }
    for (int i = 0; i < a; i++)
        for (int l = 0; l < LANES; l++) {
            double v[MAX_A], out[3];
            for (int j = 0; j < a; j++) v[j] = full[i * a + j][l];
            weight_gradient_1d(out, v, m, 1);
            for (int s = 0; s < 3; s++) half[i][s][l] = out[s];
        }
    for (int s = 0; s < 3; s++) {
        double res[3][LANES];
        for (int l = 0; l < LANES; l++) {
            double col[MAX_A], out[3];
            for (int i = 0; i < a; i++) col[i] = half[i][s][l];
            weight_gradient_1d(out, col, m, 1);
            for (int r = 0; r < 3; r++) res[r][l] = out[r];
        }
        for (long l = 0; l < lanes; l++)
            for (int r = 0; r < 3; r++) dw[(oc0 + l) * 9 + r * 3 + s] += (float)res[r][l];
    }
}

#define DEFINE_WEIGHT_GRADIENT_LANES_FN(name, attr)                                             \
    attr static void name(float *dw, const float *q_team, size_t thread_stride, int team,      \
                          size_t q_stride, long oc0, long lanes, int m)                         \
    {                                                                                           \
        if (m == 2)                                                                             \
            weight_gradient_lanes(dw, q_team, thread_stride, team, q_stride, oc0, lanes, 2);    \
        else                                                                                    \
            weight_gradient_lanes(dw, q_team, thread_stride, team, q_stride, oc0, lanes, 4);    \
    }

DEFINE_WEIGHT_GRADIENT_LANES_FN(weight_gradient_lanes_avx512, DTKD_TARGET_AVX512)
DEFINE_WEIGHT_GRADIENT_LANES_FN(weight_gradient_lanes_avx2, DTKD_TARGET_AVX2)
DEFINE_WEIGHT_GRADIENT_LANES_FN(weight_gradient_lanes_portable, )

/* Tiles per block of the weight gradient: V and P of a block (a*a*tiles*(C+O) floats) in 3/4
 * of L2, as in the forward, but at least 64 tiles (the tiles are the GEMMs' inner dimension:
 * each block reads and writes Q, O*C floats per point, once per block) and at most a thread's
 * share. */
static long weight_block_tiles(const struct wino_geom *g, int nthreads)
{
    const long l2_floats = dtkd_sgemm_machine(dtkd_isa())->l2.size / (long)sizeof(float) * 3 / 4;
    long t = l2_floats / ((long)g->a * g->a * (g->c_pad + g->o_pad));
    if (t < 64) t = 64;
    if (t > 512) t = 512;
    const long share = (g->tiles + nthreads - 1) / nthreads;
    return t < share ? t : share;
}

static int weight_geom_init(struct wino_geom *g, long N, long C, long H, long W, long O, int m,
                            int nthreads)
{
    int st = geom_init(g, N, C, H, W, O, m, nthreads);
    if (st != DTKD_OK) return st;
    g->block_tiles = weight_block_tiles(g, nthreads);
    geom_layout(g);
    /* + Q (a*a x O x C), rounded to keep the next thread's slice aligned */
    g->per_thread += round_up((size_t)g->a * g->a * O * C, ALIGN_FLOATS);
    return DTKD_OK;
}

size_t winograd_backward_weight_workspace_floats(long N, long C, long H, long W, long O, int m,
                                                 int nthreads)
{
    struct wino_geom g;
    if (nthreads < 1 || weight_geom_init(&g, N, C, H, W, O, m, nthreads) != DTKD_OK) return 0;
    return g.per_thread * (size_t)nthreads + ALIGN_FLOATS;
}

int winograd_conv3x3_backward_weight(float *dw, const float *x, const float *dy, long N, long C,
                                     long H, long W, long O, int m, float *workspace,
                                     size_t workspace_floats)
{
    struct wino_geom g;
    int nthreads = dtkd_get_num_threads();
    int st = weight_geom_init(&g, N, C, H, W, O, m, nthreads);
    if (st != DTKD_OK) return st;
    if (workspace_floats < winograd_backward_weight_workspace_floats(N, C, H, W, O, m, nthreads)) {
        nthreads = 1;
        weight_geom_init(&g, N, C, H, W, O, m, 1);
        if (workspace_floats < winograd_backward_weight_workspace_floats(N, C, H, W, O, m, 1))
            return DTKD_ERR_WORKSPACE;
    }
    if ((uintptr_t)workspace % sizeof(float)) return DTKD_ERR_WORKSPACE;
    float *ws = workspace + ((-(uintptr_t)workspace / sizeof(float)) & (ALIGN_FLOATS - 1));
    int (*block_fn)(const struct wino_geom *, float *, const float *, const float *, long, long,
                    float *);
    void (*gradient_fn)(float *, const float *, size_t, int, size_t, long, long, int);
    switch (dtkd_isa()) {
    case DTKD_ISA_AVX512:
        block_fn = weight_block_avx512, gradient_fn = weight_gradient_lanes_avx512;
        break;
    case DTKD_ISA_AVX2:
        block_fn = weight_block_avx2, gradient_fn = weight_gradient_lanes_avx2;
        break;
    default:
        block_fn = weight_block_portable, gradient_fn = weight_gradient_lanes_portable;
        break;
    }
    const int a = g.a, aa = a * a;
    const size_t q_floats = (size_t)aa * O * C;
    const size_t q_offset = g.per_thread - round_up(q_floats, ALIGN_FLOATS);
    int status = DTKD_OK;
#pragma omp parallel num_threads(nthreads)
    {
        /* the team OpenMP gave (it may be smaller than asked): tiles and Qs are split by it */
        const int t = omp_get_thread_num(), team = omp_get_num_threads();
        float *my_ws = ws + (size_t)t * g.per_thread, *q = my_ws + q_offset;
        memset(q, 0, q_floats * sizeof *q);
        const long lo = g.tiles * t / team, hi = g.tiles * (t + 1) / team;
        for (long t0 = lo; t0 < hi; t0 += g.block_tiles) {
            const long t1 = t0 + g.block_tiles < hi ? t0 + g.block_tiles : hi;
            int s = block_fn(&g, q, x, dy, t0, t1, my_ws);
            if (s != DTKD_OK) {
#pragma omp atomic write
                status = s;
                break;
            }
        }
#pragma omp barrier
        if (status == DTKD_OK) {
#pragma omp for schedule(static)
            for (long oc0 = 0; oc0 < O * C; oc0 += LANES)
                gradient_fn(dw, ws + q_offset, g.per_thread, team, (size_t)O * C, oc0,
                            O * C - oc0 < LANES ? O * C - oc0 : LANES, g.m);
        }
    }
    return status;
}
