/* pool.h -- max, average and global average pooling over NCHW activations, square windows,
 * floor output size OH = (H + 2*pad - kernel) / stride + 1 (torch's ceil_mode=False).
 * Every (n, c) plane is independent; planes run in parallel. NC = N * C planes. */
#ifndef DTKD_POOL_H
#define DTKD_POOL_H

/* Pool geometry check: kernel, stride >= 1, 0 <= pad <= kernel / 2 (torch's rule), and the window
 * fits the padded input. Fills *OH, *OW. DTKD_OK or DTKD_ERR_SHAPE. */
int dtkd_pool2d_out_size(long *OH, long *OW, long H, long W, long kernel, long stride, long pad);

/* torch.nn.functional.max_pool2d; padding acts as -inf. argmax: index of the max in its H*W
 * plane (first on ties). DTKD_ERR_NONFINITE if x holds NaN/Inf. */
// y, argmax (NC,OH,OW); x (NC,H,W)
int dtkd_maxpool2d_forward(float *y, int64_t *argmax, const float *x, long NC, long H, long W,
                           long kernel, long stride, long pad);
/* dx = 0, then dx[plane, argmax] += dy. DTKD_ERR_VALUE if an argmax is outside [0, H*W). */
// dx (NC,H,W); dy, argmax (NC,OH,OW)
int dtkd_maxpool2d_backward(float *dx, const float *dy, const int64_t *argmax, long NC, long H,
                            long W, long OH, long OW);

/* torch.nn.functional.avg_pool2d with count_include_pad=True: every window sum / kernel^2. */
// y (NC,OH,OW); x (NC,H,W)
int dtkd_avgpool2d_forward(float *y, const float *x, long NC, long H, long W, long kernel,
                           long stride, long pad);
// dx (NC,H,W); dy (NC,OH,OW)
int dtkd_avgpool2d_backward(float *dx, const float *dy, long NC, long H, long W, long kernel,
                            long stride, long pad);

/* adaptive_avg_pool2d(x, 1) flattened: y[plane] = mean of the plane (double accumulation). */
// y (NC,); x (NC,HW)
int dtkd_global_avgpool_forward(float *y, const float *x, long NC, long HW);
// dx (NC,HW) = dy (NC,) / HW broadcast
int dtkd_global_avgpool_backward(float *dx, const float *dy, long NC, long HW);

#endif
