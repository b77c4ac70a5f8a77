/* 2-D convolution, NCHW / OIHW, as torch.nn.functional.conv2d
 * (https://pytorch.org/docs/stable/generated/torch.nn.functional.conv2d.html).
 *
 * Per image n and group g, with Kg = (C/G)*KH*KW and the column matrix col (Kg, OH*OW):
 *   forward   y[n,g]  (O/G, OH*OW)  = w[g] (O/G, Kg) * col(x[n,g])
 *   backward  dw[g]   (O/G, Kg)    += dy[n,g] * col(x[n,g])^T
 *             dcol    (Kg, OH*OW)   = w[g]^T * dy[n,g],  dx[n,g] = col2im(dcol)
 * When OH*OW is small (deep layers), several images are stacked side by side in one column
 * matrix (Kg, nb*OH*OW), so one GEMM covers nb images: the weights are packed once per block and
 * dw is updated once per block instead of once per image. The GEMM output then goes through a
 * staging buffer (O/G, nb*OH*OW) that is copied to / gathered from NCHW.
 * A 1x1 stride-1 unpadded conv needs no col: the input plane (C/G, H*W) is the matrix.
 * Depthwise convs (groups == C) are a direct loop: their GEMMs would have one row. */
#include "dtkd.h"
#include "kernels/conv.h"
#include "kernels/depthwise.h"
#include "kernels/gemm.h"
#include "kernels/reduce.h"

#include <omp.h>
#include <string.h>

int dtkd_conv2d_dims_init(struct dtkd_conv2d_dims *d)
{
    if (d->N < 1 || d->C < 1 || d->H < 1 || d->W < 1 || d->O < 1 || d->KH < 1 || d->KW < 1 ||
        d->SH < 1 || d->SW < 1 || d->PH < 0 || d->PW < 0 || d->G < 1)
        return DTKD_ERR_SHAPE;
    if (d->C % d->G || d->O % d->G) return DTKD_ERR_SHAPE;
    if (d->H + 2 * d->PH < d->KH || d->W + 2 * d->PW < d->KW) return DTKD_ERR_SHAPE;
    d->OH = (d->H + 2 * d->PH - d->KH) / d->SH + 1;
    d->OW = (d->W + 2 * d->PW - d->KW) / d->SW + 1;
    return DTKD_OK;
}

static int is_depthwise(const struct dtkd_conv2d_dims *d) { return d->G == d->C && d->G > 1; }

static int is_pointwise(const struct dtkd_conv2d_dims *d)
{
    return d->KH == 1 && d->KW == 1 && d->SH == 1 && d->SW == 1 && d->PH == 0 && d->PW == 0;
}

/* Images run in parallel (one workspace slot each) only when there are enough of them for all
 * threads; otherwise images run one block after another and SGEMM uses the threads. */
static int parallel_over_images(const struct dtkd_conv2d_dims *d, int threads)
{
    return threads > 1 && d->N >= threads && !is_depthwise(d);
}

/* GEMMs get at least this many columns when images are small: stacking amortizes packing. */
#define GEMM_MIN_COLUMNS 512

/* Images stacked in one GEMM (always 1 on the pointwise path, whose operand is x itself). */
static long block_images(const struct dtkd_conv2d_dims *d, int threads)
{
    if (is_pointwise(d)) return 1;
    long per_thread = parallel_over_images(d, threads) ? (d->N + threads - 1) / threads : d->N;
    long nb = (GEMM_MIN_COLUMNS + d->OH * d->OW - 1) / (d->OH * d->OW);
    return nb < per_thread ? nb : per_thread;
}

/* One thread's workspace slot: column matrix, staging buffer, and (backward, parallel) a private
 * dw partial. */
struct slot_layout {
    long col, stage, dw;
};

static struct slot_layout slot_layout(const struct dtkd_conv2d_dims *d, int threads, int backward,
                                      int need_dw)
{
    const long Kg = (d->C / d->G) * d->KH * d->KW, nb = block_images(d, threads);
    struct slot_layout s = {0, 0, 0};
    if (is_depthwise(d)) return s;
    if (!is_pointwise(d)) s.col = Kg * nb * d->OH * d->OW;
    if (nb > 1) s.stage = (d->O / d->G) * nb * d->OH * d->OW;
    if (backward && need_dw && parallel_over_images(d, threads)) s.dw = d->O * Kg;
    return s;
}

static long workspace_len(const struct dtkd_conv2d_dims *d, int threads, int backward, int need_dw)
{
    struct slot_layout s = slot_layout(d, threads, backward, need_dw);
    return (parallel_over_images(d, threads) ? threads : 1) * (s.col + s.stage + s.dw);
}

long dtkd_conv2d_forward_workspace(const struct dtkd_conv2d_dims *d, int threads)
{
    return workspace_len(d, threads, 0, 0);
}

long dtkd_conv2d_backward_workspace(const struct dtkd_conv2d_dims *d, int threads, int need_dw)
{
    return workspace_len(d, threads, 1, need_dw);
}

/* The largest thread count (<= dtkd_get_num_threads()) whose workspace fits in `len`; 0 if none. */
static int threads_for_workspace(const struct dtkd_conv2d_dims *d, long len, int backward,
                                 int need_dw)
{
    for (int t = dtkd_get_num_threads(); t >= 1; t--)
        if (workspace_len(d, t, backward, need_dw) <= len) return t;
    return 0;
}

/* Valid output columns [lo, hi) for kernel column kw: those whose input column
 * ow*S - P + kw lies in [0, W). */
static void valid_range(long *lo, long *hi, long k, long S, long P, long W, long OW)
{
    long first = P - k > 0 ? (P - k + S - 1) / S : 0;
    long last = W - 1 + P - k >= 0 ? (W - 1 + P - k) / S + 1 : 0;
    if (last > OW) last = OW;
    if (first > last) first = last;
    *lo = first;
    *hi = last;
}

/* r[i] = src[2 i] and its adjoint d[2 i] += r[i]: the stride-2 rows of im2col / col2im (every
 * downsampling 3x3 conv of the ResNets). With restrict and a literal stride gcc vectorizes the
 * loads (two vector loads and a shuffle per vector, peeling the end so as not to read past
 * src[2 (n - 1)]); the generic strided loop stayed scalar, ~2 cycles per value, and was most
 * of a thin stride-2 layer's im2col (perf, Zen 4). */
static inline void gather_stride2(float *restrict r, const float *restrict src, long n)
{
    for (long i = 0; i < n; i++) r[i] = src[2 * i];
}

static inline void scatter_add_stride2(float *restrict d, const float *restrict r, long n)
{
    for (long i = 0; i < n; i++) d[2 * i] += r[i];
}

// col (Cg*KH*KW, OH*OW; row stride ld) <- x (Cg, H, W): a row per (channel, kh, kw), 0 in padding
static void im2col(float *col, long ld, const float *x, long Cg, const struct dtkd_conv2d_dims *d)
{
    const long H = d->H, W = d->W, OH = d->OH, OW = d->OW;
    for (long c = 0; c < Cg; c++)
        for (long kh = 0; kh < d->KH; kh++)
            for (long kw = 0; kw < d->KW; kw++) {
                float *row = col + ((c * d->KH + kh) * d->KW + kw) * ld;
                long lo, hi;
                valid_range(&lo, &hi, kw, d->SW, d->PW, W, OW);
                for (long oh = 0; oh < OH; oh++) {
                    float *r = row + oh * OW;
                    long ih = oh * d->SH - d->PH + kh;
                    if (ih < 0 || ih >= H) {
                        memset(r, 0, OW * sizeof *r);
                        continue;
                    }
                    const float *xr = x + (c * H + ih) * W;
                    for (long ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    if (d->SW == 1)
                        memcpy(r + lo, xr + lo - d->PW + kw, (hi - lo) * sizeof *r);
                    else if (d->SW == 2)
                        gather_stride2(r + lo, xr + lo * 2 - d->PW + kw, hi - lo);
                    else
                        for (long ow = lo; ow < hi; ow++) r[ow] = xr[ow * d->SW - d->PW + kw];
                    for (long ow = hi; ow < OW; ow++) r[ow] = 0.0f;
                }
            }
}

// dx (Cg, H, W) += col2im(col (Cg*KH*KW, OH*OW; row stride ld)): the adjoint of im2col
static void col2im(float *dx, const float *col, long ld, long Cg, const struct dtkd_conv2d_dims *d)
{
    const long H = d->H, W = d->W, OH = d->OH, OW = d->OW;
    for (long c = 0; c < Cg; c++)
        for (long kh = 0; kh < d->KH; kh++)
            for (long kw = 0; kw < d->KW; kw++) {
                const float *row = col + ((c * d->KH + kh) * d->KW + kw) * ld;
                long lo, hi;
                valid_range(&lo, &hi, kw, d->SW, d->PW, W, OW);
                for (long oh = 0; oh < OH; oh++) {
                    long ih = oh * d->SH - d->PH + kh;
                    if (ih < 0 || ih >= H) continue;
                    const float *r = row + oh * OW;
                    float *xr = dx + (c * H + ih) * W;
                    if (d->SW == 1) { /* unit stride: a plain vectorizable row add */
                        float *dst = xr + kw - d->PW;
                        for (long ow = lo; ow < hi; ow++) dst[ow] += r[ow];
                    } else if (d->SW == 2) {
                        scatter_add_stride2(xr + lo * 2 - d->PW + kw, r + lo, hi - lo);
                    } else {
                        for (long ow = lo; ow < hi; ow++) xr[ow * d->SW - d->PW + kw] += r[ow];
                    }
                }
            }
}

/* ---- depthwise (groups == C): direct loops; output channel o reads input channel o / (O/C) */

// y (N,O,OH,OW) = depthwise conv of x (N,C,H,W) with w (O,1,KH,KW), + b
static void depthwise_forward(float *y, const float *x, const float *w, const float *b,
                              const struct dtkd_conv2d_dims *d)
{
    const long mult = d->O / d->C, OHW = d->OH * d->OW, HW = d->H * d->W;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
    for (long no = 0; no < d->N * d->O; no++) {
        long n = no / d->O, o = no % d->O;
        const float *xc = x + (n * d->C + o / mult) * HW;
        float *yp = y + no * OHW;
        float bias = b ? b[o] : 0.0f;
        for (long i = 0; i < OHW; i++) yp[i] = bias;
        for (long kh = 0; kh < d->KH; kh++)
            for (long kw = 0; kw < d->KW; kw++) {
                float wv = w[(o * d->KH + kh) * d->KW + kw];
                long lo, hi;
                valid_range(&lo, &hi, kw, d->SW, d->PW, d->W, d->OW);
                for (long oh = 0; oh < d->OH; oh++) {
                    long ih = oh * d->SH - d->PH + kh;
                    if (ih < 0 || ih >= d->H) continue;
                    const float *xr = xc + ih * d->W - d->PW + kw;
                    float *yr = yp + oh * d->OW;
                    for (long ow = lo; ow < hi; ow++) yr[ow] += wv * xr[ow * d->SW];
                }
            }
    }
}

// dx (N,C,H,W) = depthwise conv^T of dy; dw (O,1,KH,KW) += sum over images of dy * x
static void depthwise_backward(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const struct dtkd_conv2d_dims *d)
{
    const long mult = d->O / d->C, OHW = d->OH * d->OW, HW = d->H * d->W;
    if (dx) {
        /* Each (n, c) plane of dx gathers from its own `mult` output channels: no races. */
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
        for (long nc = 0; nc < d->N * d->C; nc++) {
            long n = nc / d->C, c = nc % d->C;
            float *dxp = dx + nc * HW;
            memset(dxp, 0, HW * sizeof *dxp);
            for (long o = c * mult; o < (c + 1) * mult; o++) {
                const float *dyp = dy + (n * d->O + o) * OHW;
                for (long kh = 0; kh < d->KH; kh++)
                    for (long kw = 0; kw < d->KW; kw++) {
                        float wv = w[(o * d->KH + kh) * d->KW + kw];
                        long lo, hi;
                        valid_range(&lo, &hi, kw, d->SW, d->PW, d->W, d->OW);
                        for (long oh = 0; oh < d->OH; oh++) {
                            long ih = oh * d->SH - d->PH + kh;
                            if (ih < 0 || ih >= d->H) continue;
                            float *xr = dxp + ih * d->W - d->PW + kw;
                            const float *gr = dyp + oh * d->OW;
                            for (long ow = lo; ow < hi; ow++) xr[ow * d->SW] += wv * gr[ow];
                        }
                    }
            }
        }
    }
    if (dw) {
        /* One thread per output channel sums over all images in order: deterministic. */
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
        for (long o = 0; o < d->O; o++)
            for (long kh = 0; kh < d->KH; kh++)
                for (long kw = 0; kw < d->KW; kw++) {
                    long lo, hi;
                    valid_range(&lo, &hi, kw, d->SW, d->PW, d->W, d->OW);
                    double acc = 0.0;
                    for (long n = 0; n < d->N; n++) {
                        const float *xc = x + (n * d->C + o / mult) * HW;
                        const float *dyp = dy + (n * d->O + o) * OHW;
                        for (long oh = 0; oh < d->OH; oh++) {
                            long ih = oh * d->SH - d->PH + kh;
                            if (ih < 0 || ih >= d->H) continue;
                            const float *xr = xc + ih * d->W - d->PW + kw;
                            const float *gr = dyp + oh * d->OW;
                            float part = 0.0f;
                            for (long ow = lo; ow < hi; ow++) part += xr[ow * d->SW] * gr[ow];
                            acc += part;
                        }
                    }
                    dw[(o * d->KH + kh) * d->KW + kw] += (float)acc;
                }
    }
}

/* ---- general path: im2col (or the plane itself) + SGEMM, one block of nb images at a time */

// The GEMM operand (Kg, nb*OH*OW) for group g of the nb images from n0: their column matrices
// side by side in col, or, on the pointwise path (col == NULL, nb == 1), the x plane itself.
static const float *block_columns(float *col, const float *x, const struct dtkd_conv2d_dims *d,
                                  long g, long n0, long nb)
{
    const long Cg = d->C / d->G, HW = d->H * d->W, OHW = d->OH * d->OW;
    if (!col) return x + (n0 * d->C + g * Cg) * HW;
    for (long j = 0; j < nb; j++)
        im2col(col + j * OHW, nb * OHW, x + ((n0 + j) * d->C + g * Cg) * HW, Cg, d);
    return col;
}

// y[n0..n0+nb) (O, OH*OW each) = w * col(x[n]) + b, group by group
static int forward_block(float *y, float *col, float *stage, const float *x, const float *w,
                         const float *b, const struct dtkd_conv2d_dims *d, long n0, long nb)
{
    const long Cg = d->C / d->G, Og = d->O / d->G, Kg = Cg * d->KH * d->KW;
    const long OHW = d->OH * d->OW, cols = nb * OHW;
    for (long g = 0; g < d->G; g++) {
        const float *B = block_columns(col, x, d, g, n0, nb);
        /* One image: straight into y. Several: into the staging buffer, then scattered. */
        float *out = nb > 1 ? stage : y + (n0 * d->O + g * Og) * OHW;
        int st = dtkd_sgemm(0, 0, Og, cols, Kg, 1.0f, w + g * Og * Kg, Kg, B, cols, 0.0f, out,
                            cols);
        if (st) return st;
        for (long j = 0; j < nb; j++)
            for (long o = 0; o < Og; o++) {
                float *dst = y + ((n0 + j) * d->O + g * Og + o) * OHW;
                const float *src = out + o * cols + j * OHW;
                float bias = b ? b[g * Og + o] : 0.0f;
                if (src != dst || bias != 0.0f)
                    for (long i = 0; i < OHW; i++) dst[i] = src[i] + bias;
            }
    }
    return DTKD_OK;
}

// dw_acc (O, Kg) += dy[n] * col(x[n])^T ; dx[n] = col2im(w^T * dy[n]) for the nb images from n0
static int backward_block(float *dx, float *dw_acc, float *col, float *stage, const float *dy,
                          const float *x, const float *w, const struct dtkd_conv2d_dims *d,
                          long n0, long nb)
{
    const long Cg = d->C / d->G, Og = d->O / d->G, Kg = Cg * d->KH * d->KW;
    const long HW = d->H * d->W, OHW = d->OH * d->OW, cols = nb * OHW;
    for (long g = 0; g < d->G; g++) {
        const float *wg = w + g * Og * Kg;
        const float *dyg = dy + (n0 * d->O + g * Og) * OHW;
        if (nb > 1) { /* gather the block's dy into (Og, nb*OHW) */
            for (long o = 0; o < Og; o++)
                for (long j = 0; j < nb; j++)
                    memcpy(stage + o * cols + j * OHW, dy + ((n0 + j) * d->O + g * Og + o) * OHW,
                           OHW * sizeof *stage);
            dyg = stage;
        }
        int st;
        if (dw_acc) {
            const float *B = block_columns(col, x, d, g, n0, nb);
            st = dtkd_sgemm(0, 1, Og, Kg, cols, 1.0f, dyg, cols, B, cols, 1.0f,
                            dw_acc + g * Og * Kg, Kg);
            if (st) return st;
        }
        if (dx) {
            if (!col) { /* pointwise (nb == 1): the dx plane is w^T * dy directly */
                st = dtkd_sgemm(1, 0, Kg, OHW, Og, 1.0f, wg, Kg, dyg, OHW, 0.0f,
                                dx + (n0 * d->C + g * Cg) * HW, HW);
                if (st) return st;
                continue;
            }
            st = dtkd_sgemm(1, 0, Kg, cols, Og, 1.0f, wg, Kg, dyg, cols, 0.0f, col, cols);
            if (st) return st;
            for (long j = 0; j < nb; j++) {
                float *plane = dx + ((n0 + j) * d->C + g * Cg) * HW;
                memset(plane, 0, Cg * HW * sizeof *plane);
                col2im(plane, col + j * OHW, cols, Cg, d);
            }
        }
    }
    return DTKD_OK;
}

/* Loop over the images [lo, hi) in blocks: n0 is a block's first image, cnt (<= nb) its size. */
#define FOR_BLOCKS(lo, hi, nb, n0, cnt)                                                        \
    for (long n0 = (lo), cnt = (hi) - n0 < (nb) ? (hi) - n0 : (nb); n0 < (hi);                 \
         n0 += cnt, cnt = (hi) - n0 < (nb) ? (hi) - n0 : (nb))

/* Thread t of nt takes the contiguous image range [lo, hi): deterministic partition. */
static void thread_range(long *lo, long *hi, long N, int t, int nt)
{
    long per = (N + nt - 1) / nt;
    *lo = t * per < N ? t * per : N;
    *hi = *lo + per < N ? *lo + per : N;
}

int dtkd_conv2d_forward(float *y, float *workspace, long workspace_len, const float *x,
                        const float *w, const float *b, const struct dtkd_conv2d_dims *d)
{
    if (dtkd_depthwise3x3_applies(d)) {
        dtkd_depthwise3x3_forward(y, x, w, b, d->N, d->C, d->H, d->W);
        return DTKD_OK;
    }
    if (is_depthwise(d)) {
        depthwise_forward(y, x, w, b, d);
        return DTKD_OK;
    }
    const int threads = threads_for_workspace(d, workspace_len, 0, 0);
    if (threads < 1) return DTKD_ERR_WORKSPACE;
    const long nb = block_images(d, threads);
    const struct slot_layout s = slot_layout(d, threads, 0, 0);
    const long slot = s.col + s.stage;
    int status = DTKD_OK;
    if (!parallel_over_images(d, threads)) {
        FOR_BLOCKS(0, d->N, nb, n0, cnt)
        {
            status = forward_block(y, s.col ? workspace : NULL, workspace + s.col, x, w, b, d,
                                   n0, cnt);
            if (status) break;
        }
        return status;
    }
#pragma omp parallel num_threads(threads) reduction(max:status)
    {
        const int t = omp_get_thread_num();
        float *col = workspace + t * slot, *stage = col + s.col;
        long lo, hi;
        thread_range(&lo, &hi, d->N, t, omp_get_num_threads());
        FOR_BLOCKS(lo, hi, nb, n0, cnt)
        {
            int st = forward_block(y, s.col ? col : NULL, stage, x, w, b, d, n0, cnt);
            if (st > status) status = st;
        }
    }
    return status;
}

// db (O,) += sum of dy (N,O,OH,OW) over images and positions, in double
static void bias_backward(float *db, const float *dy, const struct dtkd_conv2d_dims *d)
{
    const long OHW = d->OH * d->OW;
#pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads())
    for (long o = 0; o < d->O; o++) {
        double acc = 0.0;
        for (long n = 0; n < d->N; n++) acc += dtkd_sum(dy + (n * d->O + o) * OHW, OHW);
        db[o] += (float)acc;
    }
}

int dtkd_conv2d_backward(float *dx, float *dw, float *db, float *workspace, long workspace_len,
                         const float *dy, const float *x, const float *w,
                         const struct dtkd_conv2d_dims *d)
{
    if (db) bias_backward(db, dy, d);
    if (dtkd_depthwise3x3_applies(d)) {
        dtkd_depthwise3x3_backward(dx, dw, dy, x, w, d->N, d->C, d->H, d->W);
        return DTKD_OK;
    }
    if (is_depthwise(d)) {
        depthwise_backward(dx, dw, dy, x, w, d);
        return DTKD_OK;
    }
    if (!dx && !dw) return DTKD_OK;
    const int threads = threads_for_workspace(d, workspace_len, 1, dw != NULL);
    if (threads < 1) return DTKD_ERR_WORKSPACE;
    const long nb = block_images(d, threads);
    const struct slot_layout s = slot_layout(d, threads, 1, dw != NULL);
    const long slot = s.col + s.stage + s.dw;
    int status = DTKD_OK;
    if (!parallel_over_images(d, threads)) {
        FOR_BLOCKS(0, d->N, nb, n0, cnt)
        {
            status = backward_block(dx, dw, s.col ? workspace : NULL, workspace + s.col, dy, x,
                                    w, d, n0, cnt);
            if (status) break;
        }
        return status;
    }
    /* Each thread accumulates dw over its images into its own zeroed partial; the partials are
     * then added in thread order, so the result does not depend on timing. */
    int used = threads;
#pragma omp parallel num_threads(threads) reduction(max:status)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *col = workspace + t * slot, *stage = col + s.col, *part = stage + s.stage;
        if (t == 0) used = nt;
        if (s.dw) memset(part, 0, s.dw * sizeof *part);
        long lo, hi;
        thread_range(&lo, &hi, d->N, t, nt);
        FOR_BLOCKS(lo, hi, nb, n0, cnt)
        {
            int st = backward_block(dx, s.dw ? part : NULL, s.col ? col : NULL, stage, dy, x, w,
                                    d, n0, cnt);
            if (st > status) status = st;
        }
    }
    if (s.dw && status == DTKD_OK) {
        const float *partials = workspace + s.col + s.stage;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long i = 0; i < s.dw; i++) {
            float sum = 0.0f;
            for (int t = 0; t < used; t++) sum += partials[t * slot + i];
            dw[i] += sum;
        }
    }
    return status;
}

/* ---- 3x3 stride-1 weight gradient from padded rows (no im2col) ----
 * With x zero-padded to (H+2) x (W+2) per channel and dy widened to rows of W+2 (two zero
 * columns), a shift (di, dj) of the 3x3 window is a constant offset di*(W+2)+dj into the flat
 * padded plane, so dw[o][c][di][dj] = sum_p dyp[o][p] * xp[c][p + di*(W+2) + dj] over the flat
 * index p: a dot product of two contiguous rows. The AVX-512 kernel keeps 8 output channels x
 * 3 shifts dj in 24 accumulators (each dy load feeds 3 FMAs, each x load 8), the AVX2 one 4 x 3
 * in 12, looping images in chunks whose dy rows stay in L2 across all input channels. Threads
 * own blocks of output channels, so dw needs no reduction and is deterministic. On the
 * portable path, when O is not a multiple of the block or the layer is wide, the im2col path
 * (dtkd_conv2d_backward) computes it. */

#define DW_OB 8 /* output channels per register block */

struct dw3_geom {
    long N, C, H, W, O;
    long row;    /* W + 2 */
    long plen;   /* dy row length: H*(W+2) rounded up to 16 */
    long xlen;   /* padded x plane: covers every read p + 2*(W+2) + 2 < plen + 2*(W+2) + 2 */
};

static struct dw3_geom dw3_geom(long N, long C, long H, long W, long O)
{
    struct dw3_geom g = {N, C, H, W, O, W + 2, 0, 0};
    g.plen = (H * g.row + 15) / 16 * 16;
    long need = g.plen + 2 * g.row + 2, plane = (H + 2) * g.row;
    g.xlen = ((need > plane ? need : plane) + 15) / 16 * 16;
    return g;
}

/* Measured (1 thread, batch 64; benchmarks/results/train_step.md): 1.70x / 1.34x / 1.15x the
 * im2col path at C = O = 16 / 32 / 64 on 32x32 / 16x16 / 8x8 maps (O*C*H*W = 2^18), but
 * 0.64x / 0.89x / 0.83x at 64 / 128 / 256 on 32x32 / 16x16 / 8x8 (there the GEMM's packing is
 * amortized over enough rows, and this loop re-reads x for every 8 outputs). */
#define DW_OB_AVX2 4 /* AVX2: 4 output channels x 3 shifts = 12 of the 16 ymm registers */

/* Output channels per register block of the padded path on the ISA in use, 0 if none. */
static int dw3_block_channels(void)
{
#if defined(__x86_64__) || defined(__i386__)
    switch (dtkd_isa()) {
    case DTKD_ISA_AVX512: return DW_OB;
    case DTKD_ISA_AVX2: return DW_OB_AVX2;
    default: return 0;
    }
#else
    return 0;
#endif
}

static int dw3_padded_path(long C, long H, long W, long O)
{
    const int ob = dw3_block_channels();
    return ob && O % ob == 0 && O * C * H * W <= (1L << 18);
}

long dtkd_conv3x3_backward_weight_workspace(long N, long C, long H, long W, long O)
{
    struct dtkd_conv2d_dims d = {N, C, H, W, O, 3, 3, 1, 1, 1, 1, 1, 0, 0};
    if (dtkd_conv2d_dims_init(&d)) return 0;
    if (!dw3_padded_path(C, H, W, O))
        return dtkd_conv2d_backward_workspace(&d, dtkd_get_num_threads(), 1);
    const struct dw3_geom g = dw3_geom(N, C, H, W, O);
    return N * O * g.plen + N * C * g.xlen;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

DTKD_TARGET_AVX512
static void dw3_block_avx512(float *dw, const float *dyp, const float *xp,
                             const struct dw3_geom *g, long o0, long n0, long nn)
{
    for (long c = 0; c < g->C; c++)
        for (int di = 0; di < 3; di++) {
            __m512 acc[DW_OB][3];
#pragma GCC unroll 8
            for (int o = 0; o < DW_OB; o++)
#pragma GCC unroll 3
                for (int j = 0; j < 3; j++) acc[o][j] = _mm512_setzero_ps();
            for (long n = n0; n < n0 + nn; n++) {
                const float *xr = xp + (n * g->C + c) * g->xlen + di * g->row;
                const float *dr = dyp + (n * g->O + o0) * g->plen;
                for (long p = 0; p < g->plen; p += 16) {
                    const __m512 x0 = _mm512_loadu_ps(xr + p), x1 = _mm512_loadu_ps(xr + p + 1),
                                 x2 = _mm512_loadu_ps(xr + p + 2);
#pragma GCC unroll 8  /* keeps the 24 accumulators in registers */
                    for (int o = 0; o < DW_OB; o++) {
                        __m512 d = _mm512_loadu_ps(dr + o * g->plen + p);
                        /* one load for 3 FMAs: else gcc folds the load into each FMA and
                         * the loop becomes load-bound (27 loads per 24 FMAs) */
                        __asm__("" : "+v"(d));
                        acc[o][0] = _mm512_fmadd_ps(d, x0, acc[o][0]);
                        acc[o][1] = _mm512_fmadd_ps(d, x1, acc[o][1]);
                        acc[o][2] = _mm512_fmadd_ps(d, x2, acc[o][2]);
                    }
                }
            }
            for (int o = 0; o < DW_OB; o++)
                for (int j = 0; j < 3; j++)
                    dw[((o0 + o) * g->C + c) * 9 + di * 3 + j] += _mm512_reduce_add_ps(acc[o][j]);
        }
}

/* The same on AVX2: 4 output channels x 3 shifts in 12 ymm accumulators; each dy load feeds
 * 3 FMAs, each x load 4. */
DTKD_TARGET_AVX2
static void dw3_block_avx2(float *dw, const float *dyp, const float *xp, const struct dw3_geom *g,
                           long o0, long n0, long nn)
{
    for (long c = 0; c < g->C; c++)
        for (int di = 0; di < 3; di++) {
            __m256 acc[DW_OB_AVX2][3];
#pragma GCC unroll 4
            for (int o = 0; o < DW_OB_AVX2; o++)
#pragma GCC unroll 3
                for (int j = 0; j < 3; j++) acc[o][j] = _mm256_setzero_ps();
            for (long n = n0; n < n0 + nn; n++) {
                const float *xr = xp + (n * g->C + c) * g->xlen + di * g->row;
                const float *dr = dyp + (n * g->O + o0) * g->plen;
                for (long p = 0; p < g->plen; p += 8) {
                    const __m256 x0 = _mm256_loadu_ps(xr + p), x1 = _mm256_loadu_ps(xr + p + 1),
                                 x2 = _mm256_loadu_ps(xr + p + 2);
#pragma GCC unroll 4
                    for (int o = 0; o < DW_OB_AVX2; o++) {
                        __m256 d = _mm256_loadu_ps(dr + o * g->plen + p);
                        __asm__("" : "+x"(d)); /* one load for 3 FMAs (see the AVX-512 loop) */
                        acc[o][0] = _mm256_fmadd_ps(d, x0, acc[o][0]);
                        acc[o][1] = _mm256_fmadd_ps(d, x1, acc[o][1]);
                        acc[o][2] = _mm256_fmadd_ps(d, x2, acc[o][2]);
                    }
                }
            }
            for (int o = 0; o < DW_OB_AVX2; o++)
                for (int j = 0; j < 3; j++) {
                    /* horizontal sum of 8 lanes */
                    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[o][j]),
                                          _mm256_extractf128_ps(acc[o][j], 1));
                    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                    h = _mm_add_ss(h, _mm_movehdup_ps(h));
                    dw[((o0 + o) * g->C + c) * 9 + di * 3 + j] += _mm_cvtss_f32(h);
                }
        }
}
#endif

int dtkd_conv3x3_backward_weight(float *dw, float *workspace, long workspace_len,
                                 const float *dy, const float *x, long N, long C, long H, long W,
                                 long O)
{
    if (N < 1 || C < 1 || H < 1 || W < 1 || O < 1) return DTKD_ERR_SHAPE;
#if defined(__x86_64__) || defined(__i386__)
    if (dw3_padded_path(C, H, W, O)) {
        const struct dw3_geom g = dw3_geom(N, C, H, W, O);
        if (workspace_len < N * O * g.plen + N * C * g.xlen) return DTKD_ERR_WORKSPACE;
        float *dyp = workspace, *xp = workspace + N * O * g.plen;
        const int threads = dtkd_get_num_threads();
#pragma omp parallel num_threads(threads)
        {
#pragma omp for schedule(static)
            for (long no = 0; no < N * O; no++) { /* dy rows widened to W + 2, zero tail */
                float *dst = dyp + no * g.plen;
                const float *src = dy + no * H * W;
                memset(dst, 0, g.plen * sizeof *dst);
                for (long h = 0; h < H; h++) memcpy(dst + h * g.row, src + h * W, W * sizeof *dst);
            }
#pragma omp for schedule(static)
            for (long nc = 0; nc < N * C; nc++) { /* x planes zero-padded by one pixel */
                float *dst = xp + nc * g.xlen;
                const float *src = x + nc * H * W;
                memset(dst, 0, g.xlen * sizeof *dst);
                for (long h = 0; h < H; h++)
                    memcpy(dst + (h + 1) * g.row + 1, src + h * W, W * sizeof *dst);
            }
            /* Images per chunk: the dy rows of one block of output channels are re-read for
             * every (c, di), so they should stay in a cache: half of L1 on AVX2 (measured on
             * Zen 3, 1 thread, batch 64, C = O = 16/32/64 at 32x32/16x16/8x8: 5.8/5.0/6.0 ms
             * against 9.1/6.6/7.2 ms with a 128 KB L2-sized chunk, which is L2-bandwidth bound
             * there, and 8.3/6.8/7.5 ms by im2col + SGEMM), 128 KB of L2 on AVX-512 (measured on Zen 4). */
            const int obc = dw3_block_channels();
            const long cache_floats = obc == DW_OB ? 32 * 1024
                                                   : dtkd_cpu_info()->l1d.size / (long)sizeof(float) / 2;
            long chunk = cache_floats / (obc * g.plen);
            if (chunk < 1) chunk = 1;
#pragma omp for schedule(static)
            for (long ob = 0; ob < O / obc; ob++)
                for (long n0 = 0; n0 < N; n0 += chunk) {
                    const long nn = N - n0 < chunk ? N - n0 : chunk;
                    if (obc == DW_OB) dw3_block_avx512(dw, dyp, xp, &g, ob * DW_OB, n0, nn);
                    else dw3_block_avx2(dw, dyp, xp, &g, ob * DW_OB_AVX2, n0, nn);
                }
        }
        return DTKD_OK;
    }
#endif
    /* portable path: im2col + SGEMM */
    struct dtkd_conv2d_dims d = {N, C, H, W, O, 3, 3, 1, 1, 1, 1, 1, 0, 0};
    int st = dtkd_conv2d_dims_init(&d);
    if (st) return st;
    const long len = dtkd_conv2d_backward_workspace(&d, dtkd_get_num_threads(), 1);
    if (workspace_len < len) return DTKD_ERR_WORKSPACE;
    /* w is only read for dx, which is not asked for */
    return dtkd_conv2d_backward(NULL, dw, NULL, workspace, workspace_len, dy, x, dw, &d);
}
