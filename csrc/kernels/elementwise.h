/* elementwise.h -- ReLU, residual add, fused add+ReLU, and the finiteness check the bindings
 * run on inputs of heavy ops. Every array is n floats, any shape (NCHW in practice). */
#ifndef DTKD_ELEMENTWISE_H
#define DTKD_ELEMENTWISE_H

#include <stdint.h>

/* 1 if all n values of x are finite, else 0. Parallel, one pass. */
int dtkd_all_finite(const float *x, long n);
/* max |x[i]| as a float's bits (reduce.h's dtkd_max_abs_bits): above DTKD_FLT_MAX_BITS when x
 * holds NaN/Inf. Parallel, one pass. */
uint32_t dtkd_max_abs_bits_parallel(const float *x, long n);

/* y = max(x, 0); returns DTKD_ERR_NONFINITE if x holds NaN/Inf (checked in the same pass). */
int dtkd_relu_forward(float *y, const float *x, long n);
/* dx = dy where y > 0, else 0 (y is the forward output; also the backward of add_relu). */
int dtkd_relu_backward(float *dx, const float *dy, const float *y, long n);

/* y = a + b (residual add); its backward passes dy to both inputs unchanged. */
int dtkd_add_forward(float *y, const float *a, const float *b, long n);
/* y = max(a + b, 0) (residual add fused with ReLU); backward is dtkd_relu_backward on y. */
int dtkd_add_relu_forward(float *y, const float *a, const float *b, long n);

#endif
