/* depthwise.h -- depthwise 3x3 convolution, stride 1, padding 1, one output channel per input
 * channel (groups == C == O): every stride-1 depthwise conv of MobileNetV2 and ShuffleNet V1/V2.
 * conv.c takes this path for those shapes (planes up to DTKD_DW3_MAX_PLANE wide and high) and
 * its general direct loop for every other depthwise conv.
 *
 * Each (n, c) plane is copied into a zero-bordered (H+2) x (W+2) buffer on the thread's stack,
 * so each of the nine taps reads a contiguous row with no bounds tests: the loops vectorize,
 * compiled for AVX-512, AVX2 and the baseline and picked by dtkd_isa(). No workspace. */
#ifndef DTKD_DEPTHWISE_H
#define DTKD_DEPTHWISE_H

#include "kernels/conv.h"

#define DTKD_DW3_MAX_PLANE 64

/* 1 if conv dims `d` take this path. */
int dtkd_depthwise3x3_applies(const struct dtkd_conv2d_dims *d);

// y (N,C,H,W) = depthwise 3x3 conv (stride 1, pad 1) of x (N,C,H,W) with w (C,1,3,3), + b (C,) or NULL
void dtkd_depthwise3x3_forward(float *y, const float *x, const float *w, const float *b,
                               long N, long C, long H, long W);

// dx (N,C,H,W) = conv^T of dy (or NULL: skipped); dw (C,1,3,3) += sum over images of dy * x
// shifted (or NULL: skipped). dw sums images in order per channel: deterministic.
void dtkd_depthwise3x3_backward(float *dx, float *dw, const float *dy, const float *x,
                                const float *w, long N, long C, long H, long W);

#endif
