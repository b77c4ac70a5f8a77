/* 2-D convolution, NCHW / OIHW, as torch.nn.functional.conv2d
 * (https://pytorch.org/docs/stable/generated/torch.nn.functional.conv2d.html).
 *
 * Per image n and group g, with Kg = (C/G)*KH*KW and the column matrix col (Kg, OH*OW):
 *   forward   y[n,g]  (O/G, OH*OW)  = w[g] (O/G, Kg) * col(x[n,g])
 *   backward  dw[g]   (O/G, Kg)    += dy[n,g] * col(x[n,g])^T
 *             dcol    (Kg, OH*OW)   = w[g]^T * dy[n,g],  dx[n,g] = col2im(dcol)
 * A 1x1 stride-1 unpadded conv needs no col: the input plane (C/G, H*W) is the matrix.
 * Depthwise convs (groups == C) are a direct loop: their GEMMs would have one row. */
#include "dtkd.h"
#include "kernels/conv.h"
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

/* Floats of one thread's column matrix (0 when the input plane is used directly). */
static long col_len(const struct dtkd_conv2d_dims *d)
{
    if (is_depthwise(d) || is_pointwise(d)) return 0;
    return (d->C / d->G) * d->KH * d->KW * d->OH * d->OW;
}

/* Images run in parallel (one slot each) only when there are enough of them for all threads. */
static int parallel_over_images(const struct dtkd_conv2d_dims *d, int threads)
{
    return threads > 1 && d->N >= threads && !is_depthwise(d);
}

long dtkd_conv2d_forward_workspace(const struct dtkd_conv2d_dims *d, int threads)
{
    return (parallel_over_images(d, threads) ? threads : 1) * col_len(d);
}

long dtkd_conv2d_backward_workspace(const struct dtkd_conv2d_dims *d, int threads, int need_dw)
{
    if (!parallel_over_images(d, threads)) return col_len(d);
    long dw_len = need_dw ? d->O * (d->C / d->G) * d->KH * d->KW : 0;
    return threads * (col_len(d) + dw_len);
}

/* The largest thread count (<= dtkd_get_num_threads()) whose workspace fits in `len`; 0 if none. */
static int threads_for_workspace(const struct dtkd_conv2d_dims *d, long len, int backward,
                                 int need_dw)
{
    for (int t = dtkd_get_num_threads(); t >= 1; t--) {
        long need = backward ? dtkd_conv2d_backward_workspace(d, t, need_dw)
                             : dtkd_conv2d_forward_workspace(d, t);
        if (need <= len) return t;
    }
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

// col (Cg*KH*KW, OH*OW) <- x (Cg, H, W): one row per (channel, kh, kw), zeros where padded
static void im2col(float *col, const float *x, long Cg, const struct dtkd_conv2d_dims *d)
{
    const long H = d->H, W = d->W, OH = d->OH, OW = d->OW;
    for (long c = 0; c < Cg; c++)
        for (long kh = 0; kh < d->KH; kh++)
            for (long kw = 0; kw < d->KW; kw++) {
                float *row = col + ((c * d->KH + kh) * d->KW + kw) * OH * OW;
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
                    else
                        for (long ow = lo; ow < hi; ow++) r[ow] = xr[ow * d->SW - d->PW + kw];
                    for (long ow = hi; ow < OW; ow++) r[ow] = 0.0f;
                }
            }
}

// dx (Cg, H, W) += col2im(col (Cg*KH*KW, OH*OW)): the adjoint of im2col
static void col2im(float *dx, const float *col, long Cg, const struct dtkd_conv2d_dims *d)
{
    const long H = d->H, W = d->W, OH = d->OH, OW = d->OW;
    for (long c = 0; c < Cg; c++)
        for (long kh = 0; kh < d->KH; kh++)
            for (long kw = 0; kw < d->KW; kw++) {
                const float *row = col + ((c * d->KH + kh) * d->KW + kw) * OH * OW;
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

/* ---- general path: im2col (or the plane itself) + SGEMM, one image at a time */

// y[n] (O, OH*OW) = w * col(x[n]) + b, group by group
static int forward_image(float *y, float *col, const float *x, const float *w, const float *b,
                         const struct dtkd_conv2d_dims *d, long n)
{
    const long Cg = d->C / d->G, Og = d->O / d->G, Kg = Cg * d->KH * d->KW;
    const long HW = d->H * d->W, OHW = d->OH * d->OW;
    for (long g = 0; g < d->G; g++) {
        const float *xg = x + (n * d->C + g * Cg) * HW;
        float *yg = y + (n * d->O + g * Og) * OHW;
        const float *B = xg;
        if (col) {
            im2col(col, xg, Cg, d);
            B = col;
        }
        int st = dtkd_sgemm(0, 0, Og, OHW, Kg, 1.0f, w + g * Og * Kg, Kg, B, OHW, 0.0f, yg, OHW);
        if (st) return st;
        if (b)
            for (long o = 0; o < Og; o++) {
                float bias = b[g * Og + o];
                for (long i = 0; i < OHW; i++) yg[o * OHW + i] += bias;
            }
    }
    return DTKD_OK;
}

int dtkd_conv2d_forward(float *y, float *workspace, long workspace_len, const float *x,
                        const float *w, const float *b, const struct dtkd_conv2d_dims *d)
{
    if (is_depthwise(d)) {
        depthwise_forward(y, x, w, b, d);
        return DTKD_OK;
    }
    int threads = threads_for_workspace(d, workspace_len, 0, 0);
    if (threads < 1) return DTKD_ERR_SHAPE;
    const long slot = col_len(d);
    if (!parallel_over_images(d, threads)) {
        for (long n = 0; n < d->N; n++) {
            int st = forward_image(y, slot ? workspace : NULL, x, w, b, d, n);
            if (st) return st;
        }
        return DTKD_OK;
    }
    int status = DTKD_OK;
#pragma omp parallel num_threads(threads) reduction(max:status)
    {
        /* Static partition by thread id: each thread owns workspace slot `t`. */
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *col = slot ? workspace + t * slot : NULL;
        for (long n = t; n < d->N; n += nt) {
            int st = forward_image(y, col, x, w, b, d, n);
            if (st > status) status = st;
        }
    }
    return status;
}

// dw_acc (O, Kg) += dy[n] * col(x[n])^T ; dx[n] = col2im(w^T * dy[n]) ; either may be NULL
static int backward_image(float *dx, float *dw_acc, float *col, const float *dy,
                          const float *x, const float *w, const struct dtkd_conv2d_dims *d,
                          long n)
{
    const long Cg = d->C / d->G, Og = d->O / d->G, Kg = Cg * d->KH * d->KW;
    const long HW = d->H * d->W, OHW = d->OH * d->OW;
    for (long g = 0; g < d->G; g++) {
        const float *xg = x + (n * d->C + g * Cg) * HW;
        const float *dyg = dy + (n * d->O + g * Og) * OHW;
        const float *wg = w + g * Og * Kg;
        int st;
        if (dw_acc) {
            const float *B = xg;
            if (col) {
                im2col(col, xg, Cg, d);
                B = col;
            }
            st = dtkd_sgemm(0, 1, Og, Kg, OHW, 1.0f, dyg, OHW, B, OHW, 1.0f, dw_acc + g * Og * Kg,
                            Kg);
            if (st) return st;
        }
        if (dx) {
            float *dxg = dx + (n * d->C + g * Cg) * HW;
            if (!col) {
                st = dtkd_sgemm(1, 0, Kg, OHW, Og, 1.0f, wg, Kg, dyg, OHW, 0.0f, dxg, HW);
                if (st) return st;
            } else {
                st = dtkd_sgemm(1, 0, Kg, OHW, Og, 1.0f, wg, Kg, dyg, OHW, 0.0f, col, OHW);
                if (st) return st;
                memset(dxg, 0, Cg * HW * sizeof *dxg);
                col2im(dxg, col, Cg, d);
            }
        }
    }
    return DTKD_OK;
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
    if (is_depthwise(d)) {
        depthwise_backward(dx, dw, dy, x, w, d);
        return DTKD_OK;
    }
    if (!dx && !dw) return DTKD_OK;
    int threads = threads_for_workspace(d, workspace_len, 1, dw != NULL);
    if (threads < 1) return DTKD_ERR_SHAPE;
    const long slot = col_len(d);
    if (!parallel_over_images(d, threads)) {
        for (long n = 0; n < d->N; n++) {
            int st = backward_image(dx, dw, slot ? workspace : NULL, dy, x, w, d, n);
            if (st) return st;
        }
        return DTKD_OK;
    }
    /* Each thread accumulates dw over its images into its own zeroed partial; the partials are
     * then added in thread order, so the result does not depend on timing. */
    const long wlen = d->O * (d->C / d->G) * d->KH * d->KW;
    float *partials = workspace + threads * slot;
    int status = DTKD_OK, used = threads;
#pragma omp parallel num_threads(threads) reduction(max:status)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0) used = nt;
        float *col = slot ? workspace + t * slot : NULL;
        float *part = dw ? partials + t * wlen : NULL;
        if (part) memset(part, 0, wlen * sizeof *part);
        for (long n = t; n < d->N; n += nt) {
            int st = backward_image(dx, part, col, dy, x, w, d, n);
            if (st > status) status = st;
        }
    }
    if (dw && status == DTKD_OK) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long i = 0; i < wlen; i++) {
            float sum = 0.0f;
            for (int t = 0; t < used; t++) sum += partials[t * wlen + i];
            dw[i] += sum;
        }
    }
    return status;
}
