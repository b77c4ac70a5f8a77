"""Independent float64 NumPy references for dtkd.losses, written from the formulas (the
official DTKD code, mdistiller's DKD with the target class excluded exactly), and a central
finite-difference helper. Shared by the tests/test_losses*.py files."""
import numpy as np

FALLBACK_EPS = 1e-6


def log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def softmax(x):
    return np.exp(log_softmax(x))


def logsumexp(x):
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def kl_rows(t_over_tt, s_over_ts):
    """KL(softmax(t/T_t) || softmax(s/T_s)) per row."""
    lp, lq = log_softmax(t_over_tt), log_softmax(s_over_ts)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def temperatures(s, t, T):
    """Official DTKD rule; fallback T_s = T_t = T where undefined. -> (T_s, T_t, fallback mask)."""
    ms, mt = s.max(axis=1), t.max(axis=1)
    total = ms + mt
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = 2 * ms / total * T
        tt = 2 * mt / total * T
    ok = (total > FALLBACK_EPS) & np.isfinite(ts) & np.isfinite(tt) & (ts > 0) & (tt > 0)
    return np.where(ok, ts, T), np.where(ok, tt, T), ~ok


def kd(s, t, T):
    return T * T * kl_rows(t / T, s / T)


def dtkd(s, t, T, fixed_temperatures=None):
    """Per-sample DTKD; fixed_temperatures=(T_s, T_t) holds them constant (detached)."""
    ts, tt = fixed_temperatures if fixed_temperatures is not None else temperatures(s, t, T)[:2]
    return ts * tt * kl_rows(t / tt[:, None], s / ts[:, None])


def cross_entropy(s, y):
    return logsumexp(s) - s[np.arange(len(y)), y]


def _non_target(x, y):
    n, c = x.shape
    keep = np.ones_like(x, dtype=bool)
    keep[np.arange(n), y] = False
    return x[keep].reshape(n, c - 1)


def tckd_nckd(s, t, y, ts, tt):
    """Unweighted per-sample TCKD and NCKD at temperatures ts, tt (arrays (N,))."""
    zs, zt = s / ts[:, None], t / tt[:, None]
    rows = np.arange(len(y))
    lq, lp = log_softmax(zs), log_softmax(zt)
    log_qy, log_py = lq[rows, y], lp[rows, y]
    log_qr = logsumexp(_non_target(lq, y))  # log(1 - q_y), summed exactly over non-targets
    log_pr = logsumexp(_non_target(lp, y))
    tckd = np.exp(log_py) * (log_py - log_qy) + np.exp(log_pr) * (log_pr - log_qr)
    nckd = kl_rows(_non_target(zt, y), _non_target(zs, y))
    return tckd, nckd


def dkd(s, t, y, alpha, beta, T, dynamic=None, fixed_temperatures=None):
    """Per-sample (loss, weighted tckd, weighted nckd); dynamic in None/'tckd'/'nckd'/'both'."""
    n = s.shape[0]
    if fixed_temperatures is not None:
        ds, dt = fixed_temperatures
    else:
        ds, dt = temperatures(s, t, T)[:2]
    fixed = np.full(n, float(T))
    a_tc, b_tc = (ds, dt) if dynamic in ("tckd", "both") else (fixed, fixed)
    a_nc, b_nc = (ds, dt) if dynamic in ("nckd", "both") else (fixed, fixed)
    tckd = a_tc * b_tc * tckd_nckd(s, t, y, a_tc, b_tc)[0]
    nckd = a_nc * b_nc * tckd_nckd(s, t, y, a_nc, b_nc)[1]
    return alpha * tckd + beta * nckd, tckd, nckd


def finite_difference_grad(per_sample_loss, s, h=1e-5):
    """Central differences of sum_i per_sample_loss(s)_i w.r.t. s (float64). The per-sample
    losses are independent across rows, so one column is perturbed in all rows at once."""
    s = np.asarray(s, dtype=np.float64)
    grad = np.empty_like(s)
    for j in range(s.shape[1]):
        step = np.zeros_like(s)
        step[:, j] = h
        grad[:, j] = (per_sample_loss(s + step) - per_sample_loss(s - step)) / (2 * h)
    return grad


def random_logits(rng, n, c, scale=3.0, shift=0.0):
    """float32 logits whose float64 copy is exact (so references see the same numbers)."""
    return (rng.normal(size=(n, c)) * scale + shift).astype(np.float32)


def f64(x):
    return np.asarray(x, dtype=np.float64)


def assert_grad_close(grad, expected, rtol=2e-4):
    """A loss gradient against its reference, tolerance scaled by the largest entry (the
    loss tests' shared check)."""
    grad, expected = f64(grad), f64(expected)
    atol = rtol * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol)
