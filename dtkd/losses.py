"""Distillation losses on logits, with exact gradients: KD, DTKD, DKD, cross-entropy, softmax.

NumPy arrays in, a :class:`LossResult` out. Logits are (N, C) arrays (any real dtype or
array-like; converted to float32 C-contiguous), labels are N integers in [0, C). The compute is
C (``csrc/kernels/losses.c``): float32 storage, double accumulation, rows in parallel, the GIL
released, so several Python threads may call these functions at once.

Gradients are with respect to the student logits only (the teacher gets none), and are the
gradient of the returned loss; with ``reduction='none'`` (per-sample losses) ``grad`` is the
gradient of the *sum* of the per-sample losses.

DTKD follows the official code (Wei & Bai, arXiv 2404.12711), per sample::

    m_s = max(s), m_t = max(t)
    T_s = 2 m_s / (m_s + m_t) * T,   T_t = 2 m_t / (m_s + m_t) * T
    L   = T_s * T_t * KL(softmax(t / T_t) || softmax(s / T_s))

The temperatures are not detached, as in the official code: the gradient flows through m_s into
T_s and T_t, and max passes it to the arg-max entry of s (the first index on ties).
``detach_temperature=True`` treats them as constants instead. A sample with
m_s + m_t <= ``FALLBACK_EPS`` or a temperature that is not finite and > 0 uses T_s = T_t = T
(and no gradient through the temperatures); ``n_fallback`` counts such samples.

The exact sharpness-matching rule (``rule='exact'`` in :func:`dtkd`, :func:`dtkd_objective`):
the paper matches the sharpness logsumexp of the two scaled logit vectors, and the official
rule is its max-logit approximation (max(s)/T_s = max(t)/T_t). The exact rule solves, per
sample, for delta in (-T, T)::

    logsumexp(s / (T + delta)) = logsumexp(t / (T - delta)),   T_s = T + delta, T_t = T - delta

by Newton's method safeguarded by bisection (in C). Positive max logits guarantee a root
(the two sides tend to +inf at opposite ends), and it is unique when the rows' means are >= 0
(always after logit standardization). The gradient includes the root's dependence on s
(implicit differentiation: d delta / d s_j = softmax(s/T_s)_j / (T_s D),
D = E_q[s]/T_s^2 + E_p[t]/T_t^2). A sample without a root falls back to the official rule
(then to T) and is counted in ``n_fallback``.

Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR
2024; ``logit_stand=True`` in :func:`kd`, :func:`dtkd`, :func:`dkd` and the objectives): each
sample's student and teacher logits are z-scored, ``(x - mean(x)) / (std(x) + 1e-7)`` with the
unbiased std as in their code, before the temperature is applied; the distillation terms see
the standardized logits, cross-entropy the raw ones, and the gradient flows back through the
student's standardization (:func:`logit_standardize_backward`). C >= 2.

Example::

    import numpy as np, dtkd
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(64, 100)), 3 * rng.normal(size=(64, 100))
    labels = rng.integers(0, 100, size=64)
    r = dtkd.losses.dtkd(student, teacher, temperature=4.0)
    r.loss, r.grad.shape, r.t_student[:3], r.n_fallback
    total = dtkd.losses.dtkd_objective(student, teacher, labels, epoch=5)
    total.loss, total.dtkd, total.kd, total.ce, total.warmup_factor
"""

import numpy as np

from . import _C
from ._validate import (FLOAT32_MAX, FLOAT32_TINY, as_float, as_float32, as_float32_temperature,
                        as_float32_weight, as_labels)

__all__ = [
    "LossResult", "FALLBACK_EPS", "RULES",
    "softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
    "logsumexp_backward", "sharpness", "dynamic_temperatures", "logit_standardize",
    "logit_standardize_backward",
    "cross_entropy", "kd", "kd_temperature", "dtkd", "dkd", "dtkd_objective", "dkd_objective",
]

#: A sample whose max logits sum to at most this falls back to T_s = T_t = T
#: (mirrors DTKD_TEMPERATURE_EPS in csrc/kernels/losses.h; a test checks they agree).
FALLBACK_EPS = 1e-6

_KL_FIXED, _KL_DYNAMIC, _KL_DYNAMIC_DETACHED, _KL_EXACT, _KL_EXACT_DETACHED = 0, 1, 2, 3, 4
#: The DTKD temperature rules (``rule=``): the official max-logit rule, or the exact
#: sharpness-matching root (see the module docstring).
RULES = ("official", "exact")
_DYNAMIC_TERMS = {None: (False, False), "tckd": (True, False), "nckd": (False, True),
                  "both": (True, True)}


class LossResult:
    """A loss and its gradient (read-only).

    Attributes
    ----------
    loss : float, or (N,) float32 array for ``reduction='none'``
    grad : (N, C) float32 array, d loss / d student logits (of the sum for ``'none'``)
    t_student, t_teacher : (N,) float32 arrays, the per-sample temperatures (DTKD losses)
    n_fallback : int, samples that fell back to T_s = T_t = T (DTKD losses)
    ce, kd, dtkd, tckd, nckd : the terms, reduced like ``loss`` (where they apply; unweighted
        by alpha/beta/gamma, but including the temperature factor T^2 or T_s T_t)
    warmup_factor : float, min(epoch / warmup, 1) (objectives)
    grad_temperature : (N,) float32 array, d loss / d T_i (:func:`kd_temperature`)
    """

    _FIELDS = ("loss", "grad", "t_student", "t_teacher", "n_fallback", "ce", "kd", "dtkd",
               "tckd", "nckd", "warmup_factor", "grad_temperature")
    __slots__ = ("_values",)

    def __init__(self, loss, grad, t_student=None, t_teacher=None, n_fallback=None, ce=None,
                 kd=None, dtkd=None, tckd=None, nckd=None, warmup_factor=None,
                 grad_temperature=None):
        # One tuple behind read-only properties (as namedtuple does): cheap to build.
        _set_values(self, (loss, grad, t_student, t_teacher, n_fallback, ce, kd, dtkd, tckd, nckd,
                           warmup_factor, grad_temperature))

    def __setattr__(self, name, value):
        raise AttributeError("LossResult is read-only")

    def __delattr__(self, name):
        raise AttributeError("LossResult is read-only")

    def __repr__(self):
        parts = []
        for name, value in zip(self._FIELDS, self._values):
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                text = f"<{value.dtype} array {value.shape}"
                text += f", mean {value.mean():.4g}>" if value.ndim == 1 else ">"
            elif isinstance(value, float):
                text = f"{value:.6g}"
            else:
                text = repr(value)
            parts.append(f"{name}={text}")
        return f"LossResult({', '.join(parts)})"


def _field(index, name):
    return property(lambda self: self._values[index], doc=f"The {name} field (read-only).")


# The slot's own setter: bypasses the read-only __setattr__ without a method lookup.
_set_values = LossResult._values.__set__

for _index, _name in enumerate(LossResult._FIELDS):
    setattr(LossResult, _name, _field(_index, _name))
del _index, _name


# ---- argument conversion (fast path for arrays that are already what the kernels take) ----

_INT64 = np.dtype(np.int64)


_is_float32_matrix = _C.same_float32_matrices


def _logits(x, name):
    if _is_float32_matrix(x):
        return x
    # NaN / Inf (also from float64 values beyond float32's range) are found by the kernels,
    # which then name the argument.
    with np.errstate(over="ignore"):
        x = as_float32(x, name, ndim=2, finite=False)
    # ascontiguousarray keeps a misaligned float32 buffer as is; the kernels need it aligned
    return x if x.flags.aligned else x.copy()


def _labels(y, n, num_classes):
    if (type(y) is np.ndarray and y.dtype is _INT64 and y.shape == (n,)
            and y.flags.c_contiguous):
        return y  # the kernel checks the range and names `labels`
    return as_labels(y, "labels", n, num_classes)


_TWO_53 = 2 ** 53


def _temperature(temperature, name="temperature"):
    """as_float32_temperature, with a fast path for a float or an int that is obviously fine."""
    if type(temperature) is float and FLOAT32_TINY <= temperature <= FLOAT32_MAX:
        return temperature
    if type(temperature) is int and 0 < temperature <= _TWO_53:
        return float(temperature)
    return as_float32_temperature(temperature, name)


def _dloss(reduction, n):
    """The backward seed for each sample's loss under a reduction."""
    if reduction == "mean":
        return 1.0 / n
    if reduction in ("sum", "none"):
        return 1.0
    if not isinstance(reduction, str):
        raise TypeError(f"reduction: expected 'mean', 'sum' or 'none', got {type(reduction).__name__}")
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(total, per_sample, reduction, n):
    if reduction == "mean":
        return total / n
    if reduction == "sum":
        return total
    return per_sample


def _real(x, name):
    """as_float, with a fast path for a finite float or an exactly representable int."""
    if type(x) is float:
        if x - x == 0.0:  # NaN and +-Inf give NaN
            return x
    elif type(x) is int and -_TWO_53 <= x <= _TWO_53:
        return float(x)
    return as_float(x, name)


def _weight(x, name):
    """A loss weight (alpha, beta, gamma): finite and within float32's range."""
    if type(x) is float and -FLOAT32_MAX <= x <= FLOAT32_MAX:
        return x
    return as_float32_weight(x, name)


def _check_pair(student, teacher):
    if _is_float32_matrix(student, teacher):  # the common case, checked in one C call
        return student, teacher
    s = _logits(student, "student")
    t = _logits(teacher, "teacher")
    if s.shape != t.shape:
        raise ValueError(f"teacher: expected the shape of student {s.shape}, got {t.shape}")
    return s, t


def _dynamic_terms(dynamic_temperature):
    try:
        return _DYNAMIC_TERMS[dynamic_temperature]
    except (KeyError, TypeError):
        raise ValueError("dynamic_temperature: expected None, 'tckd', 'nckd' or 'both', "
                         f"got {dynamic_temperature!r}") from None


def _kl_mode(rule, detach_temperature):
    """The KL kernel's mode for a DTKD rule and the detach flag."""
    detach = _check_bool(detach_temperature, "detach_temperature")
    if rule == "official":
        return _KL_DYNAMIC_DETACHED if detach else _KL_DYNAMIC
    if rule == "exact":
        return _KL_EXACT_DETACHED if detach else _KL_EXACT
    raise ValueError(f"rule: expected 'official' or 'exact', got {rule!r}")


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


# ---- softmax family ----

def log_softmax(x, temperature=1.0):
    """Row-wise ``log_softmax(x / temperature)`` of (N, C) logits -> (N, C) float32."""
    return _C.log_softmax_forward(_logits(x, "x"), _temperature(temperature))


def softmax(x, temperature=1.0):
    """Row-wise ``softmax(x / temperature)`` of (N, C) logits -> (N, C) float32."""
    return _C.softmax_forward(_logits(x, "x"), _temperature(temperature))


def logsumexp(x, temperature=1.0):
    """Row-wise ``logsumexp(x / temperature)`` of (N, C) logits -> (N,) float32."""
    return _C.logsumexp_forward(_logits(x, "x"), _temperature(temperature))


def log_softmax_backward(grad_output, output, temperature=1.0):
    """Gradient w.r.t. x of ``sum(grad_output * log_softmax(x / T))``; ``output`` is that
    log_softmax. -> (N, C) float32."""
    out = _logits(output, "output")
    return _C.log_softmax_backward(_logits(grad_output, "grad_output"), out, _temperature(temperature))


def softmax_backward(grad_output, output, temperature=1.0):
    """Gradient w.r.t. x of ``sum(grad_output * softmax(x / T))``; ``output`` is that softmax.
    -> (N, C) float32."""
    out = _logits(output, "output")
    return _C.softmax_backward(_logits(grad_output, "grad_output"), out, _temperature(temperature))


def logsumexp_backward(grad_output, x, output, temperature=1.0):
    """Gradient w.r.t. x of ``sum(grad_output * logsumexp(x / T))``: grad_output (N,), x (N, C),
    output (N,) = logsumexp(x, T). -> (N, C) float32."""
    g = as_float32(grad_output, "grad_output", ndim=1)
    out = as_float32(output, "output", ndim=1)
    return _C.logsumexp_backward(g, _logits(x, "x"), out, _temperature(temperature))


def sharpness(logits, temperature=1.0, approximation=False):
    """The paper's logit sharpness per sample: ``logsumexp(logits / temperature)`` -> (N,).

    With ``approximation=True``, the max-logit approximation the paper uses instead:
    ``max(logits) / temperature``.
    """
    x = _logits(logits, "logits")
    T = _temperature(temperature)
    if not _check_bool(approximation, "approximation"):
        return _C.logsumexp_forward(x, T)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"logits: expected a non-empty (N, C) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("logits: contains NaN or Inf")
    return (x.max(axis=1) / np.float32(T)).astype(np.float32)


def logit_standardize(logits):
    """Per-row z-score ``(x - mean(x)) / (std(x) + 1e-7)`` (unbiased std) of (N, C) logits,
    C >= 2 -> (N, C) float32 (Sun et al., CVPR 2024)."""
    return _C.logit_standardize(_logits(logits, "logits"))


def logit_standardize_backward(grad_output, logits, output):
    """Gradient w.r.t. the logits of ``sum(grad_output * logit_standardize(logits))``;
    ``output`` is that standardization. -> (N, C) float32."""
    x = _logits(logits, "logits")
    return _C.logit_standardize_backward(_logits(grad_output, "grad_output"), x,
                                         _logits(output, "output"))


def _standardized(s, t, logit_stand):
    """(s, t) as the distillation terms see them: z-scored when logit_stand."""
    if not _check_bool(logit_stand, "logit_stand"):
        return s, t
    if s.shape[1] < 2:
        raise ValueError(f"student: logit_stand needs at least 2 classes (C >= 2), got shape {s.shape}")
    return _C.logit_standardize(s), _C.logit_standardize(t)


def _through_standardization(grad, s, zs):
    """d/ds of a gradient taken w.r.t. zs = logit_standardize(s) (zs is s when not standardized)."""
    return grad if zs is s else _C.logit_standardize_backward(grad, s, zs)


def dynamic_temperatures(student, teacher, temperature=4.0):
    """The DTKD temperatures per sample -> ``(t_student, t_teacher, n_fallback)``.

    ``T_s = 2 max(s) / (max(s) + max(t)) * T``, ``T_t = 2 max(t) / (max(s) + max(t)) * T``;
    samples where that is undefined use ``T_s = T_t = T`` and are counted in n_fallback.
    """
    s, t = _check_pair(student, teacher)
    return _C.dynamic_temperatures(s, t, _temperature(temperature))


# ---- losses ----

def cross_entropy(logits, labels, reduction="mean"):
    """Cross-entropy of (N, C) logits with integer labels -> LossResult(loss, grad, ce)."""
    s = _logits(logits, "logits")
    y = _labels(labels, s.shape[0], s.shape[1])
    n = s.shape[0]
    total, per_sample, grad = _C.cross_entropy(s, y, _dloss(reduction, n or 1))
    loss = _reduce(total, per_sample, reduction, n)
    return LossResult(loss, grad, ce=loss)


def kd(student, teacher, temperature=4.0, reduction="mean", logit_stand=False):
    """Vanilla KD (Hinton et al.): ``T^2 KL(softmax(t/T) || softmax(s/T))`` per sample.

    ``logit_stand=True``: on the z-scored logits (module docstring). -> LossResult(loss, grad, kd).
    """
    s, t = _check_pair(student, teacher)
    n = s.shape[0]
    zs, zt = _standardized(s, t, logit_stand)
    total, per_sample, _, _, _, grad = _C.kl(zs, zt, _temperature(temperature), _KL_FIXED,
                                             _dloss(reduction, n or 1))
    grad = _through_standardization(grad, s, zs)
    loss = _reduce(total, per_sample, reduction, n)
    return LossResult(loss, grad, kd=loss)


def kd_temperature(student, teacher, temperature, reduction="mean"):
    """KD at a temperature per sample, with the gradient w.r.t. the temperatures (what CTKD's
    learnable temperature trains on): ``T_i^2 KL(softmax(t_i/T_i) || softmax(s_i/T_i))``.

    ``temperature``: a positive number or an (N,) array of them.
    -> LossResult(loss, grad, kd, t_student = t_teacher = the temperatures, grad_temperature
    (N,) = d loss / d T_i, for the reduced loss). For one global T, d loss / d T is
    ``grad_temperature.sum()``.
    """
    s, t = _check_pair(student, teacher)
    n = s.shape[0]
    if np.ndim(temperature) == 0:
        temps = np.full(n, _temperature(temperature), dtype=np.float32)
    else:
        temps = as_float32(temperature, "temperature", ndim=1)
        if temps.shape != (n,):
            raise ValueError(f"temperature: expected a number or shape ({n},), got {temps.shape}")
        if not (temps > 0).all():
            raise ValueError("temperature: every entry must be finite and > 0")
    total, per_sample, dtemp, grad = _C.kd_temperature(s, t, temps, _dloss(reduction, n or 1))
    loss = _reduce(total, per_sample, reduction, n)
    return LossResult(loss, grad, kd=loss, t_student=temps, t_teacher=temps,
                      grad_temperature=dtemp)


def dtkd(student, teacher, temperature=4.0, detach_temperature=False, reduction="mean",
         rule="official", logit_stand=False):
    """DTKD: ``T_s T_t KL(softmax(t/T_t) || softmax(s/T_s))`` per sample.

    ``rule='official'`` (default): the official code's temperatures from the max logits; the
    default gradient is the exact one of the official code (through T_s, T_t via the arg-max
    of s). ``rule='exact'``: the temperatures solve logsumexp(s/T_s) = logsumexp(t/T_t) with
    T_s + T_t = 2T (see the module docstring); the gradient flows through the root by implicit
    differentiation; ``n_fallback`` counts the samples without a root (official rule used).
    ``detach_temperature=True`` treats the temperatures as constants under either rule.
    ``logit_stand=True``: on the z-scored logits (module docstring; the rules then see the
    standardized maxima).
    -> LossResult(loss, grad, t_student, t_teacher, n_fallback, dtkd).
    """
    s, t = _check_pair(student, teacher)
    n = s.shape[0]
    mode = _kl_mode(rule, detach_temperature)
    zs, zt = _standardized(s, t, logit_stand)
    total, per_sample, ts, tt, n_fallback, grad = _C.kl(zs, zt, _temperature(temperature), mode,
                                                        _dloss(reduction, n or 1))
    grad = _through_standardization(grad, s, zs)
    loss = _reduce(total, per_sample, reduction, n)
    return LossResult(loss, grad, t_student=ts, t_teacher=tt, n_fallback=n_fallback, dtkd=loss)


def dkd(student, teacher, labels, alpha=1.0, beta=8.0, temperature=4.0, reduction="mean",
        dynamic_temperature=None, detach_temperature=False, logit_stand=False):
    """DKD (Zhao et al., CVPR 2022): ``alpha TCKD + beta NCKD``, each times T^2.

    TCKD is the KL between the binary (target, non-target) distributions of teacher and
    student; NCKD the KL between their distributions over the non-target classes (the target
    class excluded exactly). Defined for C >= 2 (C == 2: NCKD is 0).

    ``dynamic_temperature`` in ``'tckd'``, ``'nckd'``, ``'both'`` computes that term with the
    DTKD temperatures (T_s, T_t) and weight T_s T_t instead of T and T^2 (the paper's
    "DTKD in TCKD / NCKD" experiments); ``detach_temperature`` as in :func:`dtkd`;
    ``logit_stand=True``: on the z-scored logits (module docstring).
    -> LossResult(loss, grad, tckd, nckd, t_student, t_teacher, n_fallback); ``tckd`` and
    ``nckd`` are unweighted by alpha and beta.
    """
    s, t = _check_pair(student, teacher)
    n, c = s.shape
    y = _labels(labels, n, c)
    dyn_tc, dyn_nc = _dynamic_terms(dynamic_temperature)
    mode = _KL_DYNAMIC_DETACHED if _check_bool(detach_temperature, "detach_temperature") else _KL_DYNAMIC
    zs, zt = _standardized(s, t, logit_stand)
    total, per_sample, tckd, nckd, tckd_total, nckd_total, ts, tt, n_fallback, grad = _C.dkd(
        zs, zt, y, _weight(alpha, "alpha"), _weight(beta, "beta"), _temperature(temperature),
        dyn_tc, dyn_nc, mode, _dloss(reduction, n or 1))
    grad = _through_standardization(grad, s, zs)
    loss = _reduce(total, per_sample, reduction, n)
    tckd = _reduce(tckd_total, tckd, reduction, n)
    nckd = _reduce(nckd_total, nckd, reduction, n)
    if dyn_tc or dyn_nc:
        return LossResult(loss, grad, t_student=ts, t_teacher=tt, n_fallback=n_fallback,
                          tckd=tckd, nckd=nckd)
    return LossResult(loss, grad, tckd=tckd, nckd=nckd)


# ---- the objectives of the official trainers ----

def _warmup_factor(epoch, warmup):
    epoch = _real(epoch, "epoch")
    if epoch < 0:
        raise ValueError(f"epoch: must be >= 0, got {epoch}")
    warmup = _temperature(warmup, "warmup")
    return min(epoch / warmup, 1.0)


def dtkd_objective(student, teacher, labels, alpha=3.0, beta=1.0, gamma=1.0, temperature=4.0,
                   epoch=1, warmup=20, detach_temperature=False, rule="official",
                   logit_stand=False):
    """The official DTKD trainer's loss (batch means):
    ``min(epoch / warmup, 1) (alpha L_DTKD + beta L_KD) + gamma L_CE``.

    ``rule`` and ``detach_temperature`` as in :func:`dtkd` (for the L_DTKD term);
    ``logit_stand=True``: L_DTKD and L_KD on the z-scored logits, L_CE on the raw ones.

    -> LossResult(loss, grad, dtkd, kd, ce, t_student, t_teacher, n_fallback, warmup_factor).
    """
    s, t = _check_pair(student, teacher)
    n, c = s.shape
    y = _labels(labels, n, c)
    alpha, beta, gamma = _weight(alpha, "alpha"), _weight(beta, "beta"), _weight(gamma, "gamma")
    T = _temperature(temperature)
    wf = _warmup_factor(epoch, warmup)
    mode = _kl_mode(rule, detach_temperature)
    inv_n = 1.0 / (n or 1)
    zs, zt = _standardized(s, t, logit_stand)
    if zs is s:
        dt_total, kd_total, ce_total, ts, tt, n_fallback, grad = _C.dtkd_objective(
            s, t, y, T, mode, wf * alpha * inv_n, wf * beta * inv_n, gamma * inv_n)
    else:
        dt_total, kd_total, _, ts, tt, n_fallback, grad = _C.dtkd_objective(
            zs, zt, y, T, mode, wf * alpha * inv_n, wf * beta * inv_n, 0.0)
        grad = _through_standardization(grad, s, zs)
        ce_total, _, grad_ce = _C.cross_entropy(s, y, gamma * inv_n)
        grad += grad_ce
    l_dtkd, l_kd, l_ce = dt_total * inv_n, kd_total * inv_n, ce_total * inv_n
    loss = wf * (alpha * l_dtkd + beta * l_kd) + gamma * l_ce
    return LossResult(loss, grad, dtkd=l_dtkd, kd=l_kd, ce=l_ce, t_student=ts, t_teacher=tt,
                      n_fallback=n_fallback, warmup_factor=wf)


def dkd_objective(student, teacher, labels, alpha=1.0, beta=8.0, gamma=1.0, temperature=4.0,
                  epoch=1, warmup=20, dynamic_temperature=None, detach_temperature=False,
                  logit_stand=False):
    """mdistiller's DKD trainer loss (batch means):
    ``gamma L_CE + min(epoch / warmup, 1) (alpha TCKD + beta NCKD)``.

    ``dynamic_temperature`` / ``detach_temperature`` as in :func:`dkd`; ``logit_stand=True``:
    TCKD and NCKD on the z-scored logits, CE on the raw ones.
    -> LossResult(loss, grad, tckd, nckd, ce, warmup_factor, and the temperatures when dynamic).
    """
    s, t = _check_pair(student, teacher)
    n, c = s.shape
    y = _labels(labels, n, c)
    alpha, beta, gamma = _weight(alpha, "alpha"), _weight(beta, "beta"), _weight(gamma, "gamma")
    T = _temperature(temperature)
    wf = _warmup_factor(epoch, warmup)
    dyn_tc, dyn_nc = _dynamic_terms(dynamic_temperature)
    mode = _KL_DYNAMIC_DETACHED if _check_bool(detach_temperature, "detach_temperature") else _KL_DYNAMIC
    inv_n = 1.0 / (n or 1)
    zs, zt = _standardized(s, t, logit_stand)
    if zs is s:
        dkd_total, tckd_total, nckd_total, ce_total, ts, tt, n_fallback, grad = _C.dkd_objective(
            s, t, y, alpha, beta, T, dyn_tc, dyn_nc, mode, wf * inv_n, gamma * inv_n)
    else:
        dkd_total, tckd_total, nckd_total, _, ts, tt, n_fallback, grad = _C.dkd_objective(
            zs, zt, y, alpha, beta, T, dyn_tc, dyn_nc, mode, wf * inv_n, 0.0)
        grad = _through_standardization(grad, s, zs)
        ce_total, _, grad_ce = _C.cross_entropy(s, y, gamma * inv_n)
        grad += grad_ce
    l_ce = ce_total * inv_n
    loss = gamma * l_ce + wf * dkd_total * inv_n
    fields = dict(tckd=tckd_total * inv_n, nckd=nckd_total * inv_n, ce=l_ce, warmup_factor=wf)
    if dyn_tc or dyn_nc:
        fields.update(t_student=ts, t_teacher=tt, n_fallback=n_fallback)
    return LossResult(loss, grad, **fields)
