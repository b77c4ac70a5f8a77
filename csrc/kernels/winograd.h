/* winograd.h -- Winograd F(m x m, 3x3) convolution (Lavin & Gray, arXiv 1509.09308) for 3x3,
 * stride-1, pad-1 convolutions, m = 2 (4x4 input tiles) or m = 4 (6x6 input tiles).
 *
 * dtkd.nn uses it (set_conv_algorithm('auto'), dtkd/nn/conv.py) for the forward of these
 * convolutions in eval and in training, for their input gradient (the same convolution with
 * the kernel rotated) and, on layers of >= 32 channels, for their weight gradient (the
 * forward's bilinear form transposed; thinner layers take the exact sum of
 * dtkd_conv3x3_backward_weight, csrc/kernels/conv.c). The transforms add rounding that grows
 * with m (F(4x4) loses ~4 bits); measured on resnet32, F(4x4) logits and gradients stay within
 * a quarter of the torch-equivalence tolerance (rtol 1e-4, benchmarks/results/train_step.md).
 *
 * Transformed weights u are (a*a, C, O) with a = m + 2: one C x O matrix per point of the
 * transform, so the batched elementwise products are a*a GEMMs  [tiles x C] x [C x O]
 * (dtkd_sgemm). They are computed once per weight version by winograd_transform_weights. */
#ifndef DTKD_WINOGRAD_H
#define DTKD_WINOGRAD_H

#include <stddef.h>

/* u (a*a, C, O) <- transform of w (O, C, 3, 3), a = m + 2; m is 2 or 4. Computed in double.
 * Returns DTKD_OK, DTKD_ERR_SHAPE (O, C <= 0) or DTKD_ERR_VALUE (m not 2 or 4). */
int winograd_transform_weights(float *u, const float *w, long O, long C, int m);

/* Floats of workspace winograd_conv3x3_forward needs for these sizes when run on `nthreads`
 * threads (0 if a size is invalid). */
size_t winograd_workspace_floats(long N, long C, long H, long W, long O, int m, int nthreads);

/* y (N, O, H, W) <- conv3x3(x (N, C, H, W), weights, stride 1, pad 1) + bias (O,)
 * + residual (N, O, H, W), then max(., 0) if relu; bias and residual may be NULL (residual may
 * be y itself: each element is read before it is written). u = winograd_transform_weights(w,
 * m). Any H, W >= 1 (edge tiles are partial).
 * workspace holds workspace_floats floats (from winograd_workspace_floats); the kernel uses
 * as many of dtkd_get_num_threads() threads as it has room for.
 * Returns DTKD_OK, DTKD_ERR_SHAPE, DTKD_ERR_VALUE (m) or DTKD_ERR_NOMEM (workspace too small
 * for one thread). */
int winograd_conv3x3_forward(float *y, const float *x, const float *u, const float *bias,
                             const float *residual, long N, long C, long H, long W, long O, int m,
                             int relu, float *workspace, size_t workspace_floats);

/* Gradient to the input (no gradient to w: see the top of this file), for an inference-style
 * backward such as input saliency. u_backward (a*a, O, C) <- transform of the kernel rotated by
 * 180 degrees with O and C swapped (w'[c][o][i][j] = w[o][c][2-i][2-j]). */
int winograd_transform_weights_backward(float *u_backward, const float *w, long O, long C, int m);

/* dx (N, C, H, W) <- gradient of sum(y * dy) with respect to x for y = conv3x3(x, w), with
 * dy (N, O, H, W) and u_backward = winograd_transform_weights_backward(w, m). The workspace is
 * winograd_workspace_floats(N, O, H, W, C, m, nthreads) floats (C and O swapped). */
int winograd_conv3x3_backward_input(float *dx, const float *dy, const float *u_backward, long N,
                                    long C, long H, long W, long O, int m, float *workspace,
                                    size_t workspace_floats);

/* Floats of workspace winograd_conv3x3_backward_weight needs on `nthreads` threads (0 if a
 * size is invalid). */
size_t winograd_backward_weight_workspace_floats(long N, long C, long H, long W, long O, int m,
                                                 int nthreads);

/* dw (O, C, 3, 3) += gradient of sum(y * dy) with respect to w for y = conv3x3(x (N, C, H, W),
 * w), stride 1, pad 1, dy (N, O, H, W), by Winograd F(m x m, 3x3): the forward's bilinear form
 * transposed, G^T [(A dY A^T) .* (B^T d B)] G summed over tiles (the sum inside the transform:
 * a*a GEMMs over the tiles). Exact in exact arithmetic; in float32 it adds the transforms'
 * rounding (see the top of this file). Deterministic for a given thread count.
 * Returns DTKD_OK, DTKD_ERR_SHAPE, DTKD_ERR_VALUE (m) or DTKD_ERR_NOMEM / DTKD_ERR_WORKSPACE. */
int winograd_conv3x3_backward_weight(float *dw, const float *x, const float *dy, long N, long C,
                                     long H, long W, long O, int m, float *workspace,
                                     size_t workspace_floats);

#endif
