/* augment.h -- batch image augmentation for the data loader: gather, crop with zero padding,
 * horizontal flip and per-channel normalization, from uint8 images to float32 NCHW batches.
 *
 * This family has no backward: it runs on input data, which never needs a gradient, so it is
 * exempt from the forward/backward pairing the other kernel families follow. */
#ifndef DTKD_AUGMENT_H
#define DTKD_AUGMENT_H

#include <stdint.h>

/* out is (B, C, OH, OW) float32; images is (N, H, W, C) uint8 when channels_last != 0, else
 * (N, C, H, W); index (B,), offset (B, 2), flip (B,) are per-sample; mean, std are (C,).
 *
 * For output sample b: the source image is images[index[b]]; output pixel (y, x) of the
 * un-flipped crop reads source pixel (y + offset[b,0], x + offset[b,1]), and a source pixel
 * outside the H x W image reads as 0 (zero padding, as torchvision's RandomCrop(padding=p)
 * pads the raw image). If flip[b] != 0 the crop is mirrored left-right afterwards. Each value
 * v becomes (v / 255 - mean[c]) / std[c] (mean = 0, std = 1 gives v / 255).
 * So RandomCrop(32, padding=4) is offset in [-4, 4]; a centered 28 -> 32 pad is offset -2.
 *
 * Returns DTKD_OK, DTKD_ERR_SHAPE for non-positive sizes, or DTKD_ERR_VALUE for an index
 * outside [0, N), a crop that does not overlap the image (offset[b,0] outside (-OH, H) or
 * offset[b,1] outside (-OW, W)), or a mean/std that is not finite or a std <= 0 (nothing is
 * written then). */
int dtkd_augment_batch(float *out, const uint8_t *images, const int64_t *index,
                       const int64_t *offset, const uint8_t *flip, const float *mean,
                       const float *std, long B, long N, long H, long W, long C, long OH, long OW,
                       int channels_last);

#endif
