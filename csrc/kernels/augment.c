/* augment.c -- batch crop + flip + normalize for the data loader (see augment.h).
 *
 * No backward: data augmentation acts on inputs that never need a gradient, so this family is
 * exempt from the forward/backward pairing. The random choices (crop offsets, flips) are made
 * by the caller from a seeded generator, so this kernel is a pure function of its arguments. */
#include "kernels/augment.h"

#include <math.h>

#include "dtkd.h"

/* out is (B, C, OH, OW); images is (N, H, W, C) or (N, C, H, W) uint8. */
int dtkd_augment_batch(float *out, const uint8_t *images, const int64_t *index,
                       const int64_t *offset, const uint8_t *flip, const float *mean,
                       const float *std, long B, long N, long H, long W, long C, long OH, long OW,
                       int channels_last)
{
    if (B <= 0 || N <= 0 || H <= 0 || W <= 0 || C <= 0 || OH <= 0 || OW <= 0)
        return DTKD_ERR_SHAPE;
    for (long b = 0; b < B; b++)
        if (index[b] < 0 || index[b] >= N) return DTKD_ERR_VALUE;
    for (long b = 0; b < B; b++)  /* the crop must overlap the image */
        if (offset[2 * b] <= -OH || offset[2 * b] >= H || offset[2 * b + 1] <= -OW ||
            offset[2 * b + 1] >= W)
            return DTKD_ERR_VALUE;
    for (long c = 0; c < C; c++)
        if (!isfinite(mean[c]) || !isfinite(std[c]) || !(std[c] > 0.0f)) return DTKD_ERR_VALUE;

    /* Strides of the source in elements: pixel (y, x) of channel c of image n sits at
     * n*image_stride + c*channel_stride + y*row_stride + x*col_stride. */
    const long image_stride = H * W * C;
    const long channel_stride = channels_last ? 1 : H * W;
    const long row_stride = channels_last ? W * C : W;
    const long col_stride = channels_last ? C : 1;

    /* A CIFAR batch of 128 takes ~0.2 ms on one core: below ~1M outputs a thread team costs
     * more than it saves (and far more when the other core is busy), so stay serial there. */
    const int parallel = B * C * OH * OW >= (1L << 20);
    #pragma omp parallel for schedule(static) num_threads(dtkd_get_num_threads()) if (parallel)
    for (long b = 0; b < B; b++) {
        const uint8_t *image = images + index[b] * image_stride;
        const long oy = offset[2 * b], ox = offset[2 * b + 1];
        /* Output columns [x_lo, x_hi) read inside the image; the rest read the zero padding. */
        long x_lo = -ox > 0 ? -ox : 0;
        if (x_lo > OW) x_lo = OW;
        long x_hi = W - ox < OW ? W - ox : OW;
        if (x_hi < x_lo) x_hi = x_lo;
        for (long c = 0; c < C; c++) {
            /* (v / 255 - mean) / std as one multiply-add; padding is v = 0. */
            const float scale = 1.0f / (255.0f * std[c]);
            const float pad_value = -mean[c] / std[c];
            const uint8_t *plane = image + c * channel_stride;
            for (long y = 0; y < OH; y++) {
                float *dst = out + ((b * C + c) * OH + y) * OW;
                const long sy = y + oy;
                if (sy < 0 || sy >= H) {
                    for (long x = 0; x < OW; x++) dst[x] = pad_value;
                    continue;
                }
                const uint8_t *src_row = plane + sy * row_stride;
                if (flip[b]) {
                    /* Mirrored: crop column x lands in output column OW - 1 - x. */
                    for (long x = 0; x < x_lo; x++) dst[OW - 1 - x] = pad_value;
                    for (long x = x_lo; x < x_hi; x++)
                        dst[OW - 1 - x] = (float)src_row[(x + ox) * col_stride] * scale + pad_value;
                    for (long x = x_hi; x < OW; x++) dst[OW - 1 - x] = pad_value;
                } else {
                    for (long x = 0; x < x_lo; x++) dst[x] = pad_value;
                    for (long x = x_lo; x < x_hi; x++)
                        dst[x] = (float)src_row[(x + ox) * col_stride] * scale + pad_value;
                    for (long x = x_hi; x < OW; x++) dst[x] = pad_value;
                }
            }
        }
    }
    return DTKD_OK;
}
