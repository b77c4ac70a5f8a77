/* Depthwise 3x3, stride 1, padding 1 (see depthwise.h). */
#include "dtkd.h"
#include "kernels/depthwise.h"

#include <string.h>

#define PADDED_MAX ((DTKD_DW3_MAX_PLANE + 2) * (DTKD_DW3_MAX_PLANE + 2))
/* Stack per thread: two padded planes, ~35 KB at the 64 x 64 limit. */

int dtkd_depthwise3x3_applies(const struct dtkd_conv2d_dims *d)
{
    return d->G == d->C && d->O == d->C && d->KH == 3 && d->KW == 3 && d->SH == 1 &&
           d->SW == 1 && d->PH == 1 && d->PW == 1 && d->H <= DTKD_DW3_MAX_PLANE &&
           d->W <= DTKD_DW3_MAX_PLANE;
}

/* p ((H+2) x (W+2)) = the plane x (H x W) with a border of zeros. */
__attribute__((always_inline)) static inline void pad_plane(float *restrict p,
                                                            const float *restrict x, long H,
                                                            long W)
{
    const long PW = W + 2;
    memset(p, 0, PW * sizeof *p);
    memset(p + (H + 1) * PW, 0, PW * sizeof *p);
    for (long h = 0; h < H; h++) {
        float *r = p + (h + 1) * PW;
        r[0] = 0.0f;
        memcpy(r + 1, x + h * W, W * sizeof *r);
        r[W + 1] = 0.0f;
    }
}

// y (H,W) = bias + 3x3 correlation of the padded plane p ((H+2) x (W+2)) with k (3,3)
__attribute__((always_inline)) static inline void correlate_plane(float *restrict y,
                                                                  const float *restrict p,
                                                                  const float *k, float bias,
                                                                  long H, long W)
{
    const long PW = W + 2;
    const float k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4], k5 = k[5], k6 = k[6],
                k7 = k[7], k8 = k[8];
    for (long h = 0; h < H; h++) {
        const float *restrict r0 = p + h * PW, *restrict r1 = r0 + PW, *restrict r2 = r1 + PW;
        float *restrict yr = y + h * W;
        for (long w = 0; w < W; w++)
            yr[w] = bias + k0 * r0[w] + k1 * r0[w + 1] + k2 * r0[w + 2] + k3 * r1[w] +
                    k4 * r1[w + 1] + k5 * r1[w + 2] + k6 * r2[w] + k7 * r2[w + 1] +
                    k8 * r2[w + 2];
    }
}

/* q (H x (W+2)) = the plane g (H x W) with two zero columns after each row: the row pitch of the
 * padded input, so the weight gradient is one flat loop over both. */
__attribute__((always_inline)) static inline void pad_columns(float *restrict q,
                                                             const float *restrict g, long H,
                                                             long W)
{
    for (long h = 0; h < H; h++) {
        float *r = q + h * (W + 2);
        memcpy(r, g + h * W, W * sizeof *r);
        r[W] = r[W + 1] = 0.0f;
    }
}

// sum[kh*3+kw] += sum over i of q[i] * p[i + kh*(W+2) + kw]: q the dy plane with pad_columns'
// layout, p the padded x plane (two floats longer: the zero columns at the end of q read them)
__attribute__((always_inline)) static inline void weight_taps(double *sum, const float *restrict q,
                                                              const float *restrict p, long H,
                                                              long W)
{
    const long PW = W + 2, n = H * PW;
    const float *restrict r0 = p, *restrict r1 = p + PW, *restrict r2 = p + 2 * PW;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
    for (long i = 0; i < n; i++) {
        const float g = q[i];
        s0 += g * r0[i], s1 += g * r0[i + 1], s2 += g * r0[i + 2];
        s3 += g * r1[i], s4 += g * r1[i + 1], s5 += g * r1[i + 2];
        s6 += g * r2[i], s7 += g * r2[i + 1], s8 += g * r2[i + 2];
    }
    sum[0] += s0, sum[1] += s1, sum[2] += s2, sum[3] += s3, sum[4] += s4, sum[5] += s5;
    sum[6] += s6, sum[7] += s7, sum[8] += s8;
}

/* The three kernels, compiled once per instruction set (the same C; the target attribute sets
 * the vector width the loops above are vectorized with). */
#define DEPTHWISE3X3_KERNELS(SUFFIX, TARGET)                                                     \
    TARGET static void forward_##SUFFIX(float *y, const float *x, const float *w,             \
                                        const float *b, long N, long C, long H, long W)        \
    {                                                                                          \
        _Pragma("omp parallel for schedule(static) num_threads(dtkd_get_num_threads())")       \
        for (long nc = 0; nc < N * C; nc++) {                                                  \
            float p[PADDED_MAX];                                                               \
            const long c = nc % C;                                                             \
            pad_plane(p, x + nc * H * W, H, W);                                                \
            correlate_plane(y + nc * H * W, p, w + 9 * c, b ? b[c] : 0.0f, H, W);              \
        }                                                                                      \
    }                                                                                          \
    /* dx = correlation of the zero-padded dy with the kernel turned by 180 degrees */         \
    TARGET static void backward_input_##SUFFIX(float *dx, const float *dy, const float *w,    \
                                               long N, long C, long H, long W)                 \
    {                                                                                          \
        _Pragma("omp parallel for schedule(static) num_threads(dtkd_get_num_threads())")       \
        for (long nc = 0; nc < N * C; nc++) {                                                  \
            float p[PADDED_MAX], k[9];                                                         \
            const float *wc = w + 9 * (nc % C);                                                \
            for (int t = 0; t < 9; t++) k[t] = wc[8 - t];                                      \
            pad_plane(p, dy + nc * H * W, H, W);                                               \
            correlate_plane(dx + nc * H * W, p, k, 0.0f, H, W);                                \
        }                                                                                      \
    }                                                                                          \
    /* per channel: float sums within an image (vectorized), folded into double per image */  \
    TARGET static void backward_weight_##SUFFIX(float *dw, const float *dy, const float *x,   \
                                                long N, long C, long H, long W)                \
    {                                                                                          \
        _Pragma("omp parallel for schedule(static) num_threads(dtkd_get_num_threads())")       \
        for (long c = 0; c < C; c++) {                                                         \
            float p[PADDED_MAX + 2], q[DTKD_DW3_MAX_PLANE * (DTKD_DW3_MAX_PLANE + 2)];         \
            double sum[9] = {0};                                                               \
            for (long n = 0; n < N; n++) {                                                     \
                const long plane = (n * C + c) * H * W;                                        \
                pad_plane(p, x + plane, H, W);                                                 \
                p[(H + 2) * (W + 2)] = p[(H + 2) * (W + 2) + 1] = 0.0f;                        \
                pad_columns(q, dy + plane, H, W);                                              \
                weight_taps(sum, q, p, H, W);                                                  \
            }                                                                                  \
            for (int t = 0; t < 9; t++) dw[9 * c + t] += (float)sum[t];                        \
        }                                                                                      \
    }

DEPTHWISE3X3_KERNELS(base, )
#if defined(__x86_64__) || defined(__i386__)
DEPTHWISE3X3_KERNELS(avx2, DTKD_TARGET_AVX2)
DEPTHWISE3X3_KERNELS(avx512, DTKD_TARGET_AVX512)
#endif

void dtkd_depthwise3x3_forward(float *y, const float *x, const float *w, const float *b,
                               long N, long C, long H, long W)
{
#if defined(__x86_64__) || defined(__i386__)
    switch (dtkd_isa()) {
    case DTKD_ISA_AVX512: forward_avx512(y, x, w, b, N, C, H, W); return;
    case DTKD_ISA_AVX2: forward_avx2(y, x, w, b, N, C, H, W); return;
    default: break;
    }
#endif
    forward_base(y, x, w, b, N, C, H, W);
}

void dtkd_depthwise3x3_backward(float *dx, float *dw, const float *dy, const float *x,
                                const float *w, long N, long C, long H, long W)
{
    enum dtkd_isa isa = dtkd_isa();
    (void)isa;
#if defined(__x86_64__) || defined(__i386__)
    if (isa == DTKD_ISA_AVX512) {
        if (dx) backward_input_avx512(dx, dy, w, N, C, H, W);
        if (dw) backward_weight_avx512(dw, dy, x, N, C, H, W);
        return;
    }
    if (isa == DTKD_ISA_AVX2) {
        if (dx) backward_input_avx2(dx, dy, w, N, C, H, W);
        if (dw) backward_weight_avx2(dw, dy, x, N, C, H, W);
        return;
    }
#endif
    if (dx) backward_input_base(dx, dy, w, N, C, H, W);
    if (dw) backward_weight_base(dw, dy, x, N, C, H, W);
}
