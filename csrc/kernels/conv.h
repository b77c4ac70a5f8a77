/* conv.h -- 2-D convolution (PyTorch's torch.nn.functional.conv2d), NCHW activations,
 * OIHW weights: forward, and backward to the input, the weight and the bias.
 *
 * General path: per block of images and group, im2col into a workspace slot, then one SGEMM
 * (a block stacks enough images to give the GEMM >= 512 columns; one image at 32x32).
 * Direct paths: 1x1 stride-1 unpadded convs use the input plane as the GEMM operand (no copy);
 * depthwise convs (groups == C) run a direct loop. Images run in parallel (a contiguous range and
 * one workspace slot per thread, SGEMM single-threaded inside) when N >= threads, else SGEMM uses
 * the threads. The weight gradient is deterministic for a given thread count (per-thread partial
 * sums added in thread order).
 *
 * Workspace: the caller sizes it with dtkd_conv2d_*_workspace(d, dtkd_get_num_threads(), ...);
 * a kernel uses the largest thread count whose workspace fits in workspace_len. */
#ifndef DTKD_CONV_H
#define DTKD_CONV_H

/* Sizes of one convolution. OH, OW are derived: (H + 2*PH - KH) / SH + 1 (floor, as torch). */
struct dtkd_conv2d_dims {
    long N, C, H, W;      /* input (N, C, H, W) */
    long O, KH, KW;       /* weight (O, C/G, KH, KW) */
    long SH, SW, PH, PW;  /* stride, zero padding */
    long G;               /* groups: C and O divisible by G */
    long OH, OW;          /* output (N, O, OH, OW), filled by dtkd_conv2d_dims_init */
};

/* Fill d->OH, d->OW and validate the sizes: DTKD_OK, or DTKD_ERR_SHAPE (a size < 1, padding < 0,
 * groups not dividing C or O, or the kernel larger than the padded input). */
int dtkd_conv2d_dims_init(struct dtkd_conv2d_dims *d);

/* Floats of workspace the forward / backward need for `threads` threads (may be 0). */
long dtkd_conv2d_forward_workspace(const struct dtkd_conv2d_dims *d, int threads);
long dtkd_conv2d_backward_workspace(const struct dtkd_conv2d_dims *d, int threads,
                                    int need_dw);

// y (N,O,OH,OW) = conv(x (N,C,H,W), w (O,C/G,KH,KW)) + b (O,) ; b may be NULL
int dtkd_conv2d_forward(float *y, float *workspace, long workspace_len, const float *x,
                        const float *w, const float *b, const struct dtkd_conv2d_dims *d);

// dx (N,C,H,W) = conv^T(dy), dw (O,C/G,KH,KW) += dy * x, db (O,) += sum dy ; each output may be NULL
int dtkd_conv2d_backward(float *dx, float *dw, float *db, float *workspace, long workspace_len,
                         const float *dy, const float *x, const float *w,
                         const struct dtkd_conv2d_dims *d);

/* Weight gradient of a 3x3, stride-1, pad-1, ungrouped convolution without im2col, for thin
 * layers where the im2col GEMM (M = O rows) is bound by packing its 9C x pixels operand.
 * Floats of workspace for dtkd_get_num_threads() threads (padded copies of dy and x, or the
 * im2col path's workspace where that one runs). */
long dtkd_conv3x3_backward_weight_workspace(long N, long C, long H, long W, long O);

// dw (O,C,3,3) += sum over n, pixels of dy (N,O,H,W) * x (N,C,H,W) shifted (stride 1, pad 1)
int dtkd_conv3x3_backward_weight(float *dw, float *workspace, long workspace_len,
                                 const float *dy, const float *x, long N, long C, long H, long W,
                                 long O);

#endif
