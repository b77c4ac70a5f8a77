/* linear.h -- fully connected layer, torch.nn.functional.linear: y = x w^T + b, via SGEMM. */
#ifndef DTKD_LINEAR_H
#define DTKD_LINEAR_H

// y (N,OUT) = x (N,IN) * w (OUT,IN)^T + b (OUT,) ; b may be NULL
int dtkd_linear_forward(float *y, const float *x, const float *w, const float *b, long N, long IN,
                        long OUT);
// dx (N,IN) = dy (N,OUT) * w ; dw (OUT,IN) += dy^T * x ; db (OUT,) += sum_n dy ; dx, db may be NULL
int dtkd_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, long N, long IN, long OUT);

#endif
