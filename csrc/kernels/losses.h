/* losses.h -- distillation losses on logits: softmax family, cross-entropy, KD, DTKD, DKD.
 *
 * Every kernel takes float32 logits of shape (N, C) row-major, sums in double (over float
 * partial sums of at most 128 logits), works on rows in parallel (OpenMP, when N*C is large
 * enough to pay), picks its SIMD path at run time and returns DTKD_OK or an error
 * code (DTKD_ERR_SHAPE, DTKD_ERR_NONFINITE, DTKD_ERR_LABEL, DTKD_ERR_VALUE). Forward kernels
 * write per-sample losses and the per-sample values their backward needs into caller-owned
 * buffers; backward kernels write the gradient of  dloss * sum_i loss_i  w.r.t. the student
 * logits (pass dloss = 1/N for a batch mean). Teacher logits never get a gradient.
 *
 * DTKD semantics follow the official code (Wei & Bai, arXiv 2404.12711):
 *   m_s = max(s), m_t = max(t), T_s = 2 m_s / (m_s + m_t) T, T_t = 2 m_t / (m_s + m_t) T,
 *   loss = T_s T_t KL(softmax(t / T_t) || softmax(s / T_s)).
 * Logits far below their row's max (masked classes: -1e9, -1e38) get probability exactly 0, as in
 * float64; an actual -inf (or NaN) is rejected as non-finite input (DTKD_ERR_NONFINITE), a mask
 * should use a large finite negative. A row whose temperature is large (> DTKD_PRECISE_T, where
 * float32 exps lose the KL to cancellation) or whose (x - max) / T overflows float32 is computed
 * in double; a result (loss, gradient) beyond float32's range is DTKD_ERR_RANGE.
 * A sample with m_s + m_t <= DTKD_TEMPERATURE_EPS, or a derived temperature that is not > 0
 * with it and its inverse within float32's range (T_t ~ 2T when m_t >> m_s, beyond FLT_MAX for
 * a reference T above FLT_MAX / 2), falls back to T_s = T_t = T (counted; no gradient through
 * its temperatures). Otherwise the
 * exact gradient flows through m_s into T_s and T_t: max passes it to the arg-max entry of s
 * (the first index on ties), unless the temperatures are detached.
 *
 * The exact rule (DTKD_KL_EXACT*, KL kernels only) solves logsumexp(s / T_s) =
 * logsumexp(t / T_t) with T_s + T_t = 2T per sample (safeguarded Newton / bisection, losses.c);
 * the gradient flows through the root by implicit differentiation (dense: d T_s / d s_j is
 * proportional to softmax(s / T_s)_j). A sample without a root (no sign change of the bracket,
 * typically a max logit <= 0) uses the official rule, with its gradient, and is counted in
 * n_fallback (which then counts the samples the exact rule did not set, including those where
 * the official rule falls back to T as well).
 */
#ifndef DTKD_LOSSES_H
#define DTKD_LOSSES_H

#include "dtkd.h"

#define DTKD_TEMPERATURE_EPS 1e-6
/* Above this T_s or T_t a KL row runs in double (see losses.c, "precise path"). */
#define DTKD_PRECISE_T 16.0

/* How the KL kernel chooses its temperatures. */
enum dtkd_kl_mode {
    DTKD_KL_FIXED = 0,        /* vanilla KD: T_s = T_t = T, weight T^2 */
    DTKD_KL_DYNAMIC = 1,      /* DTKD, exact gradient through T_s, T_t */
    DTKD_KL_DYNAMIC_DETACHED = 2, /* DTKD, temperatures treated as constants */
    DTKD_KL_EXACT = 3,        /* DTKD, exact sharpness-matching rule, gradient through its root */
    DTKD_KL_EXACT_DETACHED = 4, /* DTKD, exact rule, temperatures treated as constants */
};

/* One softmax pair (student s / T_s, teacher t / T_t) over a set of classes, as the forward
 * saw it, plus the coefficients of the backward  grad_j = dloss (coef_q q_j - coef_p p_j). */
typedef struct {
    float shift_s, shift_t;   /* max of s and of t over the set (softmax shifts) */
    float inv_ts, inv_tt;     /* 1 / T_s and 1 / T_t as used */
    double zs, zt;            /* sum exp((x - shift) / T) over the set */
    double log_zs, log_zt;    /* their logs (DKD only: kept for a backward that recomputes exps) */
    double coef_q, coef_p;    /* backward coefficients of q_j and p_j */
    double temp_s, temp_t;    /* T_s and T_t in double (the precise path's divisors) */
    int precise;              /* 1: the row took the double-precision path (see losses.c) */
} dtkd_softmax_pair;

/* What the KL forward keeps per sample for its backward. */
typedef struct {
    dtkd_softmax_pair pair;   /* over all C classes */
    double dmax;              /* d loss / d max(s) through the temperatures (0: none) */
    long argmax_s;            /* first arg-max of s */
} dtkd_kl_saved;

/* What the DKD forward keeps per sample: one or two softmax pairs over the non-target classes
 * (two when TCKD and NCKD use different temperatures), the target entry's gradient and dmax. */
typedef struct {
    dtkd_softmax_pair pair[2];
    int n_pairs;
    double grad_target;       /* d loss / d s_y at fixed temperatures */
    double dmax;
    long argmax_s;
} dtkd_dkd_saved;

/* ---- softmax family (temperature T > 0) ---- */

/* out (N,C) = log_softmax(x / T); x (N,C). */
int dtkd_log_softmax_forward(float *out, const float *x, float temperature, long N, long C);
/* dx (N,C) from dout (N,C), out (N,C) = the forward's output. */
int dtkd_log_softmax_backward(float *dx, const float *dout, const float *out, float temperature,
                              long N, long C);

/* out (N,C) = softmax(x / T); x (N,C). */
int dtkd_softmax_forward(float *out, const float *x, float temperature, long N, long C);
/* dx (N,C) from dout (N,C), out (N,C) = the forward's output. */
int dtkd_softmax_backward(float *dx, const float *dout, const float *out, float temperature,
                          long N, long C);

/* out (N) = logsumexp(x / T) per row (the paper's "sharpness" of x / T); x (N,C). */
int dtkd_logsumexp_forward(float *out, const float *x, float temperature, long N, long C);
/* dx (N,C) = dout_i softmax(x_i / T) / T; dout (N), x (N,C), out (N) = the forward's output. */
int dtkd_logsumexp_backward(float *dx, const float *dout, const float *x, const float *out,
                            float temperature, long N, long C);

/* ---- logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation",
 * CVPR 2024): z = (x - mean(x)) / (std(x) + DTKD_LOGIT_STAND_EPS) per row, std the unbiased
 * (C - 1) standard deviation as in their code (torch.std); C >= 2 ---- */

#define DTKD_LOGIT_STAND_EPS 1e-7

/* z (N,C) from x (N,C). */
int dtkd_logit_standardize_forward(float *z, const float *x, long N, long C);
/* dx (N,C) = the gradient of sum(dz * z) w.r.t. x; x, z (N,C) as the forward saw them. */
int dtkd_logit_standardize_backward(float *dx, const float *dz, const float *x, const float *z,
                                    long N, long C);

/* ---- DTKD temperatures ---- */

/* t_student, t_teacher (N) and the number of fallback samples, from s, t (N,C). */
int dtkd_dynamic_temperatures(float *t_student, float *t_teacher, long *n_fallback,
                              const float *s, const float *t, float temperature, long N, long C);

/* ---- cross-entropy with integer labels ---- */

/* loss (N) = logsumexp(s_i) - s_i[y_i]; log_z (N) saved for the backward; s (N,C), y (N). */
int dtkd_cross_entropy_forward(float *loss, double *log_z, const float *s, const int64_t *y,
                               long N, long C);
/* ds (N,C) = dloss (softmax(s) - onehot(y)). */
int dtkd_cross_entropy_backward(float *ds, const double *log_z, const float *s, const int64_t *y,
                                float dloss, long N, long C);

/* Forward and backward in one sweep (what the Python binding calls): loss (N) as the forward,
 * ds (N,C) as the backward. */
int dtkd_cross_entropy_forward_backward(float *loss, float *ds, const float *s, const int64_t *y,
                                        float dloss, long N, long C);

/* ---- KD / DTKD: w KL(softmax(t / T_t) || softmax(s / T_s)) ----
 * The forward stores the shifted exps exp((s - max s)/T_s), exp((t - max t)/T_t) in exp_s,
 * exp_t (N,C) for the backward, which then needs no exp of its own (halves the exps). */

/* loss, t_student, t_teacher (N); saved (N); exp_s, exp_t (N,C); n_fallback; s, t (N,C). */
int dtkd_kl_forward(float *loss, float *t_student, float *t_teacher, dtkd_kl_saved *saved,
                    float *exp_s, float *exp_t, long *n_fallback, const float *s, const float *t,
                    float temperature, enum dtkd_kl_mode mode, long N, long C);
/* ds (N,C) = d(dloss sum_i loss_i)/ds. ds may be exp_s (updated in place). */
int dtkd_kl_backward(float *ds, const dtkd_kl_saved *saved, const float *exp_s,
                     const float *exp_t, float dloss, long N, long C);

/* The forward and then the backward, row by row (a row's exps are still in cache when its
 * gradient is written): loss, t_student, t_teacher, n_fallback as dtkd_kl_forward, ds (N,C)
 * as dtkd_kl_backward; scratch holds DTKD_KL_SCRATCH_FLOATS(N, C) floats, 8-byte aligned
 * (the teacher exps, then 3 doubles per row). What the Python binding calls. */
#define DTKD_KL_PENDING_OFFSET(N, C) ((((N) * (C) + 1) / 2) * 2)
#define DTKD_KL_SCRATCH_FLOATS(N, C) (DTKD_KL_PENDING_OFFSET(N, C) + 6 * (N))
int dtkd_kl_forward_backward(float *loss, float *t_student, float *t_teacher, float *ds,
                             float *scratch, long *n_fallback, const float *s, const float *t,
                             float temperature, enum dtkd_kl_mode mode, float dloss, long N,
                             long C);

/* KD at a per-sample temperature T_i (CTKD's learnable temperature):
 * loss (N) = T_i^2 KL(softmax(t_i / T_i) || softmax(s_i / T_i)), dtemp (N) = dloss d loss_i / d T_i,
 * ds (N,C) = d(dloss sum_i loss_i)/ds; exp_t (N,C) scratch; temperature (N), each finite > 0
 * (else DTKD_ERR_VALUE). Forward and backward in one sweep. */
int dtkd_kd_temperature_forward_backward(float *loss, float *dtemp, float *ds, float *exp_t,
                                         const float *s, const float *t, const float *temperature,
                                         float dloss, long N, long C);

/* ---- DKD: alpha TCKD + beta NCKD (C >= 2) ----
 * TCKD = KL over (target, rest), NCKD = KL over the non-target classes (the target excluded
 * exactly), each times T^2. With dynamic_tckd / dynamic_nckd the term uses the DTKD
 * temperatures (T_s, T_t) and weight T_s T_t instead; mode says whether they are detached
 * (DTKD_KL_DYNAMIC_DETACHED) or not (any other value). */

/* tckd, nckd, loss = alpha tckd + beta nckd, t_student, t_teacher (N); saved (N); exp_s, exp_t
 * (N,C): the first pair's non-target exps, kept for the backward as in the KL kernel. */
int dtkd_dkd_forward(float *loss, float *tckd, float *nckd, float *t_student, float *t_teacher,
                     dtkd_dkd_saved *saved, float *exp_s, float *exp_t, long *n_fallback,
                     const float *s, const float *t, const int64_t *y, float alpha, float beta,
                     float temperature, int dynamic_tckd, int dynamic_nckd,
                     enum dtkd_kl_mode mode, long N, long C);
/* ds (N,C) = d(dloss sum_i loss_i)/ds; ds may be exp_s. */
int dtkd_dkd_backward(float *ds, const dtkd_dkd_saved *saved, const float *exp_s,
                      const float *exp_t, const float *s, const float *t, const int64_t *y,
                      float dloss, long N, long C);

/* Forward then backward, row by row, as dtkd_kl_forward_backward; exp_t (N,C) is scratch. */
int dtkd_dkd_forward_backward(float *loss, float *tckd, float *nckd, float *t_student,
                              float *t_teacher, float *ds, float *exp_t, long *n_fallback,
                              const float *s, const float *t, const int64_t *y, float alpha,
                              float beta, float temperature, int dynamic_tckd, int dynamic_nckd,
                              enum dtkd_kl_mode mode, float dloss, long N, long C);

/* ---- the official trainers' objectives, all terms of a row in one visit ----
 * Per-sample terms (N) and ds (N,C) = the gradient of the weighted sum of the terms (weights
 * include the warmup factor and 1/N); scratch is (2 N C) floats. */

/* dtkd_loss, kd_loss, ce_loss, t_student, t_teacher (N); ds = d(w_dtkd sum dtkd + w_kd sum kd
 * + w_ce sum ce)/ds; mode as the KL kernel's for the DTKD term. */
int dtkd_dtkd_objective_forward_backward(float *dtkd_loss, float *kd_loss, float *ce_loss,
                                         float *t_student, float *t_teacher, float *ds,
                                         float *scratch, long *n_fallback, const float *s,
                                         const float *t, const int64_t *y, float temperature,
                                         enum dtkd_kl_mode mode, float w_dtkd, float w_kd,
                                         float w_ce, long N, long C);

/* dkd_loss (= alpha tckd + beta nckd), tckd, nckd, ce_loss, t_student, t_teacher (N);
 * ds = d(w_dkd sum dkd_loss + w_ce sum ce)/ds; the DKD arguments as dtkd_dkd_forward's. */
int dtkd_dkd_objective_forward_backward(float *dkd_loss, float *tckd, float *nckd,
                                        float *ce_loss, float *t_student, float *t_teacher,
                                        float *ds, float *scratch, long *n_fallback,
                                        const float *s, const float *t, const int64_t *y,
                                        float alpha, float beta, float temperature,
                                        int dynamic_tckd, int dynamic_nckd,
                                        enum dtkd_kl_mode mode, float w_dkd, float w_ce, long N,
                                        long C);

#endif
