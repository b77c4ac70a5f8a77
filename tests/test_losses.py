"""dtkd.losses against independent float64 NumPy references and central finite differences."""
import numpy as np
import pytest

import dtkd
from dtkd import _C, losses

import losses_reference as ref
from losses_reference import assert_grad_close, f64

T = 4.0


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def batch(rng):
    """Student/teacher logits with positive maxima (no fallback) and labels."""
    s = ref.random_logits(rng, 6, 9, scale=2.0, shift=1.0)
    t = ref.random_logits(rng, 6, 9, scale=4.0, shift=2.0)
    y = rng.integers(0, 9, size=6)
    return s, t, y


# ---- softmax family ----

@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_softmax_family_matches_reference(rng, temperature):
    x = ref.random_logits(rng, 5, 11, scale=5.0)
    z = f64(x) / temperature
    np.testing.assert_allclose(losses.log_softmax(x, temperature), ref.log_softmax(z), atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(losses.softmax(x, temperature), ref.softmax(z), atol=1e-7, rtol=1e-5)
    np.testing.assert_allclose(losses.logsumexp(x, temperature), ref.logsumexp(z), rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.7, 3.0])
def test_softmax_family_gradients_match_finite_differences(rng, temperature):
    x = ref.random_logits(rng, 4, 7, scale=2.0)
    g = rng.normal(size=(4, 7))
    g_row = rng.normal(size=4)

    def weighted(fn, weights):
        return lambda s: (weights * fn(s / temperature)).reshape(len(s), -1).sum(axis=1)

    out = losses.log_softmax(x, temperature)
    assert_grad_close(losses.log_softmax_backward(g.astype(np.float32), out, temperature),
                      ref.finite_difference_grad(weighted(ref.log_softmax, g), x))
    out = losses.softmax(x, temperature)
    assert_grad_close(losses.softmax_backward(g.astype(np.float32), out, temperature),
                      ref.finite_difference_grad(weighted(ref.softmax, g), x))
    out = losses.logsumexp(x, temperature)
    assert_grad_close(losses.logsumexp_backward(g_row.astype(np.float32), x, out, temperature),
                      ref.finite_difference_grad(weighted(ref.logsumexp, g_row), x))


def test_sharpness_is_logsumexp_bounded_by_its_max_approximation(rng):
    x = ref.random_logits(rng, 8, 20, scale=3.0)
    sharp = losses.sharpness(x, temperature=2.0)
    approx = losses.sharpness(x, temperature=2.0, approximation=True)
    np.testing.assert_allclose(sharp, ref.logsumexp(f64(x) / 2.0), rtol=1e-6)
    np.testing.assert_allclose(approx, f64(x).max(axis=1) / 2.0, rtol=1e-6)
    # max(z) <= logsumexp(z) <= max(z) + log(C)
    assert np.all(approx <= sharp + 1e-6)
    assert np.all(sharp <= approx + np.log(20) + 1e-6)


# ---- DTKD temperatures ----

def test_dynamic_temperatures_follow_official_rule(batch):
    s, t, _ = batch
    ts, tt, n_fallback = losses.dynamic_temperatures(s, t, temperature=T)
    ms, mt = f64(s).max(axis=1), f64(t).max(axis=1)
    np.testing.assert_allclose(ts, 2 * ms / (ms + mt) * T, rtol=1e-6)
    np.testing.assert_allclose(tt, 2 * mt / (ms + mt) * T, rtol=1e-6)
    assert n_fallback == 0
    # The sharper side gets the higher temperature, and they average to T.
    np.testing.assert_allclose(f64(ts) + f64(tt), 2 * T, rtol=1e-6)


def test_dynamic_temperatures_fall_back_to_reference_temperature(rng):
    s = ref.random_logits(rng, 4, 6, shift=2.0)
    t = ref.random_logits(rng, 4, 6, shift=2.0)
    s[0] = -np.abs(s[0]) - 5.0       # m_s + m_t <= 0 likely, m_s < 0 certainly: T_s < 0
    s[1] = -np.abs(s[1]) - 0.1       # m_s < 0 < m_s + m_t: T_s < 0
    t[2] = -s[2].max()               # m_s + m_t == 0
    ts, tt, n_fallback = losses.dynamic_temperatures(s, t, temperature=T)
    _, _, expected = ref.temperatures(f64(s), f64(t), T)
    assert expected[:3].all() and not expected[3]
    assert n_fallback == 3
    np.testing.assert_array_equal(ts[:3], T)
    np.testing.assert_array_equal(tt[:3], T)


def test_fallback_threshold_is_fallback_eps_on_the_sum_of_max_logits():
    eps = losses.FALLBACK_EPS
    s = np.full((2, 3), -1.0, np.float32)
    t = np.full((2, 3), -1.0, np.float32)
    s[0, 0] = t[0, 0] = np.float32(0.4 * eps)     # m_s + m_t = 0.8 eps: falls back
    s[1, 0] = np.float32(eps)
    t[1, 0] = np.float32(3 * eps)                  # m_s + m_t = 4 eps: the rule applies
    ts, tt, n_fallback = losses.dynamic_temperatures(s, t, temperature=T)
    assert n_fallback == 1
    np.testing.assert_allclose([ts[0], tt[0]], [T, T])
    np.testing.assert_allclose([ts[1], tt[1]], [2 * 0.25 * T, 2 * 0.75 * T], rtol=1e-5)


# ---- cross-entropy ----

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_reference_and_finite_differences(rng, reduction):
    s = ref.random_logits(rng, 7, 5, scale=4.0)
    y = rng.integers(0, 5, size=7)
    r = losses.cross_entropy(s, y, reduction=reduction)
    per_sample = ref.cross_entropy(f64(s), y)
    scale = 1 / 7 if reduction == "mean" else 1.0
    expected = per_sample if reduction == "none" else per_sample.sum() * scale
    np.testing.assert_allclose(r.loss, expected, rtol=1e-5)
    fd = ref.finite_difference_grad(lambda x: ref.cross_entropy(x, y), s) * scale
    assert_grad_close(r.grad, fd)
    # d CE / d s = softmax(s) - onehot(y): the natural reference gradient.
    onehot = np.eye(5)[y]
    assert_grad_close(r.grad, (ref.softmax(f64(s)) - onehot) * scale)


# ---- KD ----

@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_reference_and_finite_differences(batch, temperature):
    s, t, _ = batch
    r = losses.kd(s, t, temperature=temperature, reduction="sum")
    np.testing.assert_allclose(r.loss, ref.kd(f64(s), f64(t), temperature).sum(), rtol=1e-5)
    fd = ref.finite_difference_grad(lambda x: ref.kd(x, f64(t), temperature), s)
    assert_grad_close(r.grad, fd)
    # Natural form: T (softmax(s/T) - softmax(t/T)).
    natural = temperature * (ref.softmax(f64(s) / temperature) - ref.softmax(f64(t) / temperature))
    assert_grad_close(r.grad, natural)


def test_kd_zero_when_student_equals_teacher(rng):
    s = ref.random_logits(rng, 5, 10, scale=5.0)
    r = losses.kd(s, s.copy())
    assert abs(r.loss) < 1e-6
    assert np.abs(r.grad).max() < 1e-6
    r = losses.dtkd(s, s.copy())
    assert abs(r.loss) < 1e-5
    assert np.abs(r.grad).max() < 1e-5


def test_kd_is_nonnegative_and_invariant_to_shifting_logits(batch):
    s, t, _ = batch
    r = losses.kd(s, t, reduction="none")
    assert np.all(r.loss >= -1e-6)
    shifted = losses.kd(s + np.float32(3.0), t - np.float32(2.0), reduction="none")
    np.testing.assert_allclose(shifted.loss, r.loss, rtol=1e-4, atol=1e-5)


# ---- DTKD ----

def test_dtkd_matches_official_formula(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T)
    np.testing.assert_allclose(r.loss, ref.dtkd(f64(s), f64(t), T).mean(), rtol=1e-5)
    ts, tt, _ = ref.temperatures(f64(s), f64(t), T)
    np.testing.assert_allclose(r.t_student, ts, rtol=1e-6)
    np.testing.assert_allclose(r.t_teacher, tt, rtol=1e-6)
    assert r.n_fallback == 0 and r.dtkd == r.loss


def test_dtkd_gradient_flows_through_temperatures(batch):
    """The default gradient is the full derivative of the official loss, including the path
    s -> max(s) -> (T_s, T_t); it differs from the detached one only at the arg-max entries."""
    s, t, _ = batch
    exact = losses.dtkd(s, t, reduction="sum").grad
    detached = losses.dtkd(s, t, reduction="sum", detach_temperature=True).grad
    fd = ref.finite_difference_grad(lambda x: ref.dtkd(x, f64(t), T), s)
    assert_grad_close(exact, fd)
    argmax = np.zeros(s.shape, dtype=bool)
    argmax[np.arange(len(s)), s.argmax(axis=1)] = True
    np.testing.assert_allclose(exact[~argmax], detached[~argmax], rtol=1e-5, atol=1e-6)
    assert np.abs(exact[argmax] - detached[argmax]).max() > 1e-3


def test_dtkd_detached_gradient_matches_finite_differences_at_fixed_temperatures(batch):
    s, t, _ = batch
    ts, tt, _ = ref.temperatures(f64(s), f64(t), T)
    r = losses.dtkd(s, t, reduction="sum", detach_temperature=True)
    fd = ref.finite_difference_grad(lambda x: ref.dtkd(x, f64(t), T, fixed_temperatures=(ts, tt)), s)
    assert_grad_close(r.grad, fd)


def test_dtkd_equals_kd_when_max_logits_equal(rng):
    s = ref.random_logits(rng, 5, 8, scale=2.0)
    t = ref.random_logits(rng, 5, 8, scale=3.0)
    t += (s.max(axis=1) - t.max(axis=1))[:, None]   # equal maxima per sample
    t[np.arange(5), t.argmax(axis=1)] = s.max(axis=1)
    s += np.float32(5.0)
    t += np.float32(5.0)
    d, k = losses.dtkd(s, t, reduction="none"), losses.kd(s, t, reduction="none")
    np.testing.assert_allclose(d.t_student, T, rtol=1e-6)
    np.testing.assert_allclose(d.t_teacher, T, rtol=1e-6)
    np.testing.assert_allclose(d.loss, k.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.dtkd(s, t, detach_temperature=True).grad,
                               losses.kd(s, t).grad, rtol=1e-5, atol=1e-7)


def test_dtkd_argmax_tie_sends_temperature_gradient_to_first_index(rng):
    s = ref.random_logits(rng, 1, 6, scale=1.0, shift=1.0)
    t = ref.random_logits(rng, 1, 6, scale=3.0, shift=2.0)
    s[0, 1] = s[0, 4] = s.max() + np.float32(1.0)
    exact = losses.dtkd(s, t, reduction="sum").grad
    detached = losses.dtkd(s, t, reduction="sum", detach_temperature=True).grad
    moved = np.abs(exact - detached)[0]
    assert moved[1] > 1e-4
    assert np.all(np.delete(moved, 1) < 1e-6)


def test_dtkd_fallback_samples_use_reference_temperature_and_are_counted(rng):
    s = ref.random_logits(rng, 5, 7, scale=2.0, shift=1.0)
    t = ref.random_logits(rng, 5, 7, scale=2.0, shift=2.0)
    s[1] = -np.abs(s[1]) - 4.0
    t[1] = -np.abs(t[1]) - 4.0          # both maxima negative: m_s + m_t < 0
    s[3] = -np.abs(s[3]) - 1.0          # T_s would be negative
    r = losses.dtkd(s, t, reduction="none")
    _, _, fallback = ref.temperatures(f64(s), f64(t), T)
    assert r.n_fallback == fallback.sum() == 2
    np.testing.assert_allclose(r.t_student[fallback], T)
    kd = losses.kd(s, t, reduction="none")
    np.testing.assert_allclose(r.loss[fallback], kd.loss[fallback], rtol=1e-6)
    # No gradient through the temperatures of a fallback sample.
    np.testing.assert_allclose(r.grad[fallback], kd.grad[fallback], rtol=1e-6, atol=1e-7)
    fd = ref.finite_difference_grad(lambda x: ref.dtkd(x, f64(t), T), s)
    assert_grad_close(r.grad, fd)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduction_modes_scale_loss_and_gradient(batch, reduction):
    s, t, _ = batch
    per_sample = losses.dtkd(s, t, reduction="none")
    r = losses.dtkd(s, t, reduction=reduction)
    n = len(s)
    if reduction == "none":
        np.testing.assert_allclose(r.loss, ref.dtkd(f64(s), f64(t), T), rtol=1e-5)
        np.testing.assert_allclose(r.grad, per_sample.grad)
    else:
        scale = 1 / n if reduction == "mean" else 1.0
        np.testing.assert_allclose(r.loss, per_sample.loss.astype(np.float64).sum() * scale, rtol=1e-6)
        expected = per_sample.grad * scale
        np.testing.assert_allclose(r.grad, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


# ---- DKD ----

DYNAMIC = [None, "tckd", "nckd", "both"]


@pytest.mark.parametrize("dynamic", DYNAMIC)
def test_dkd_matches_reference(batch, dynamic):
    s, t, y = batch
    r = losses.dkd(s, t, y, alpha=1.5, beta=8.0, temperature=T, reduction="none",
                   dynamic_temperature=dynamic)
    loss, tckd, nckd = ref.dkd(f64(s), f64(t), y, 1.5, 8.0, T, dynamic=dynamic)
    np.testing.assert_allclose(r.loss, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.tckd, tckd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.nckd, nckd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("dynamic", DYNAMIC)
def test_dkd_gradient_matches_finite_differences(batch, dynamic, detach):
    s, t, y = batch
    r = losses.dkd(s, t, y, alpha=1.5, beta=8.0, reduction="sum", dynamic_temperature=dynamic,
                   detach_temperature=detach)
    fixed = ref.temperatures(f64(s), f64(t), T)[:2] if detach else None
    fd = ref.finite_difference_grad(
        lambda x: ref.dkd(x, f64(t), y, 1.5, 8.0, T, dynamic=dynamic, fixed_temperatures=fixed)[0], s)
    assert_grad_close(r.grad, fd)


def test_dkd_two_classes_no_nan(rng):
    s = ref.random_logits(rng, 6, 2, scale=3.0, shift=1.0)
    t = ref.random_logits(rng, 6, 2, scale=3.0, shift=1.0)
    y = rng.integers(0, 2, size=6)
    for dynamic in DYNAMIC:
        r = losses.dkd(s, t, y, reduction="none", dynamic_temperature=dynamic)
        assert np.isfinite(r.loss).all() and np.isfinite(r.grad).all()
        np.testing.assert_array_equal(r.nckd, 0.0)   # one non-target class: nothing to match
        np.testing.assert_allclose(r.loss, ref.dkd(f64(s), f64(t), y, 1.0, 8.0, T, dynamic)[0],
                                   rtol=1e-5, atol=1e-6)
    fd = ref.finite_difference_grad(lambda x: ref.dkd(x, f64(t), y, 1.0, 8.0, T)[0], s)
    assert_grad_close(losses.dkd(s, t, y, reduction="sum").grad, fd)


def test_dkd_excludes_target_exactly_when_target_dominates(rng):
    """mdistiller subtracts 1000 from the target logit; here the target is left out exactly, so
    NCKD stays right even when the target logit is far above the rest."""
    s = ref.random_logits(rng, 4, 6, scale=1.0)
    t = ref.random_logits(rng, 4, 6, scale=1.0)
    y = np.array([0, 2, 5, 3])
    s[np.arange(4), y] += np.float32(2000.0)
    t[np.arange(4), y] += np.float32(3000.0)
    r = losses.dkd(s, t, y, reduction="none")
    _, tckd, nckd = ref.dkd(f64(s), f64(t), y, 1.0, 8.0, T)
    assert np.isfinite(r.grad).all()
    np.testing.assert_allclose(r.nckd, nckd, rtol=1e-5)
    np.testing.assert_allclose(r.tckd, tckd, rtol=1e-4, atol=1e-5)


def test_dkd_nckd_zero_and_tckd_zero_when_student_equals_teacher(batch):
    s, _, y = batch
    r = losses.dkd(s, s.copy(), y, reduction="none")
    assert np.abs(r.tckd).max() < 1e-5 and np.abs(r.nckd).max() < 1e-5
    assert np.abs(r.grad).max() < 1e-5


# ---- objectives ----

@pytest.mark.parametrize("epoch", [0, 5, 20, 40])
def test_dtkd_objective_combines_terms_with_warmup(batch, epoch):
    s, t, y = batch
    r = losses.dtkd_objective(s, t, y, alpha=3.0, beta=1.0, gamma=0.5, temperature=T,
                              epoch=epoch, warmup=20)
    wf = min(epoch / 20, 1.0)
    d, k, c = (ref.dtkd(f64(s), f64(t), T).mean(), ref.kd(f64(s), f64(t), T).mean(),
               ref.cross_entropy(f64(s), y).mean())
    assert r.warmup_factor == wf
    np.testing.assert_allclose([r.dtkd, r.kd, r.ce], [d, k, c], rtol=1e-5)
    np.testing.assert_allclose(r.loss, wf * (3.0 * d + 1.0 * k) + 0.5 * c, rtol=1e-5)
    fd = ref.finite_difference_grad(
        lambda x: wf * (3.0 * ref.dtkd(x, f64(t), T) + ref.kd(x, f64(t), T))
        + 0.5 * ref.cross_entropy(x, y), s) / len(s)
    assert_grad_close(r.grad, fd)


@pytest.mark.parametrize("dynamic", [None, "both"])
def test_dkd_objective_combines_terms_with_warmup(batch, dynamic):
    s, t, y = batch
    r = losses.dkd_objective(s, t, y, alpha=1.0, beta=8.0, gamma=1.0, temperature=T, epoch=4,
                             warmup=20, dynamic_temperature=dynamic)
    loss, tckd, nckd = ref.dkd(f64(s), f64(t), y, 1.0, 8.0, T, dynamic=dynamic)
    ce = ref.cross_entropy(f64(s), y)
    np.testing.assert_allclose(r.loss, ce.mean() + 0.2 * loss.mean(), rtol=1e-5)
    np.testing.assert_allclose([r.tckd, r.nckd, r.ce], [tckd.mean(), nckd.mean(), ce.mean()], rtol=1e-5)
    fd = ref.finite_difference_grad(
        lambda x: ref.cross_entropy(x, y) + 0.2 * ref.dkd(x, f64(t), y, 1.0, 8.0, T, dynamic=dynamic)[0],
        s) / len(s)
    assert_grad_close(r.grad, fd)


def test_result_is_read_only_and_readable(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t)
    with pytest.raises(AttributeError):
        r.loss = 0.0
    text = repr(r)
    assert text.startswith("LossResult(loss=") and "n_fallback=0" in text
    assert r.grad.dtype == np.float32 and r.grad.shape == s.shape
    assert r.t_student.dtype == np.float32 and r.t_student.shape == (len(s),)


def test_array_likes_and_other_dtypes_are_converted(batch):
    s, t, y = batch
    expected = losses.dkd(s, t, y).loss
    assert losses.dkd(s.astype(np.float64).tolist(), t.astype(np.float64),
                      y.astype(np.int32)).loss == pytest.approx(expected, rel=1e-6)
    s_strided = np.asfortranarray(s)                 # non-contiguous input is copied
    assert losses.dkd(s_strided, t, y).loss == pytest.approx(expected, rel=1e-6)


def test_inputs_off_the_fast_path_are_converted(rng):
    """Byte-swapped, subclassed, strided and misaligned float32 logits are not what the C
    boundary takes as is; the Python layer converts them and the result is the same."""
    s = ref.random_logits(rng, 6, 11).astype(np.float32)
    t = ref.random_logits(rng, 6, 11, shift=1.0).astype(np.float32)
    expected = losses.kd(s, t)

    class Sub(np.ndarray):
        pass

    raw = np.empty(s.size * 4 + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, np.float32, s.size, offset=1).reshape(s.shape)
    misaligned[...] = s
    for variant in (s.astype(s.dtype.newbyteorder()), s.view(Sub), np.asfortranarray(s),
                    misaligned):
        assert _C.same_float32_matrices(variant, t) is False
        r = losses.kd(variant, t)
        assert r.loss == pytest.approx(expected.loss, rel=1e-6)
        np.testing.assert_allclose(r.grad, expected.grad, rtol=1e-6, atol=1e-9)
    assert _C.same_float32_matrices(s, t) is True
    assert _C.same_float32_matrices(s, t[:, :10].copy()) is False


# ---- execution paths: SIMD and threads give the same numbers ----

@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_simd_paths_agree_with_reference(rng, isa):
    s = ref.random_logits(rng, 9, 37, scale=3.0, shift=1.0)   # 37: exercises loop tails
    t = ref.random_logits(rng, 9, 37, scale=3.0, shift=2.0)
    y = rng.integers(0, 37, size=9)
    previous = dtkd.cpu_features()["isa"]
    try:
        _C.set_isa(isa)
        d = losses.dtkd(s, t, reduction="none")
        k = losses.dkd(s, t, y, reduction="none", dynamic_temperature="both")
        lsm = losses.log_softmax(s, 2.0)
    finally:
        _C.set_isa(previous)
    np.testing.assert_allclose(d.loss, ref.dtkd(f64(s), f64(t), T), rtol=1e-5)
    np.testing.assert_allclose(k.loss, ref.dkd(f64(s), f64(t), y, 1.0, 8.0, T, "both")[0], rtol=1e-5)
    np.testing.assert_allclose(lsm, ref.log_softmax(f64(s) / 2.0), atol=2e-6)
    fd = ref.finite_difference_grad(lambda x: ref.dtkd(x, f64(t), T), s)
    assert_grad_close(d.grad, fd)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("num_classes", [2, 16, 21, 100, 130])   # full vectors, tails, > 1 block
def test_simd_paths_every_fused_loss(rng, isa, num_classes):
    """KD, detached DTKD, cross-entropy and DKD (fixed and dynamic temperatures) on each ISA
    path, against the float64 reference and its finite differences."""
    n = 5
    s = ref.random_logits(rng, n, num_classes, scale=3.0, shift=1.0)
    t = ref.random_logits(rng, n, num_classes, scale=3.0, shift=2.0)
    y = rng.integers(0, num_classes, size=n)
    y[0] = np.argmax(s[0])                       # the target holds the student's max
    previous = dtkd.cpu_features()["isa"]
    try:
        _C.set_isa(isa)
        got = {
            "kd": losses.kd(s, t, reduction="sum"),
            "dtkd_detached": losses.dtkd(s, t, detach_temperature=True, reduction="sum"),
            "ce": losses.cross_entropy(s, y, reduction="sum"),
            "dkd": losses.dkd(s, t, y, reduction="sum"),
            "dkd_nckd": losses.dkd(s, t, y, reduction="sum", dynamic_temperature="nckd"),
        }
    finally:
        _C.set_isa(previous)
    ts, tt = ref.temperatures(f64(s), f64(t), T)[:2]
    refs = {
        "kd": lambda x: ref.kd(x, f64(t), T),
        "dtkd_detached": lambda x: ref.dtkd(x, f64(t), T, fixed_temperatures=(ts, tt)),
        "ce": lambda x: ref.cross_entropy(x, y),
        "dkd": lambda x: ref.dkd(x, f64(t), y, 1.0, 8.0, T)[0],
        "dkd_nckd": lambda x: ref.dkd(x, f64(t), y, 1.0, 8.0, T, dynamic="nckd")[0],
    }
    for name, r in got.items():
        expected = refs[name](f64(s))
        assert r.loss == pytest.approx(expected.sum(), rel=1e-5, abs=1e-5), name
        assert_grad_close(r.grad, ref.finite_difference_grad(refs[name], s))


def test_parallel_rows_match_serial_rows(rng):
    s = ref.random_logits(rng, 256, 300, scale=3.0, shift=1.0)   # above the parallel threshold
    t = ref.random_logits(rng, 256, 300, scale=3.0, shift=2.0)
    y = rng.integers(0, 300, size=256)
    previous = dtkd.get_num_threads()
    try:
        dtkd.set_num_threads(1)
        serial = losses.dtkd_objective(s, t, y), losses.dkd(s, t, y)
        dtkd.set_num_threads(2)
        parallel = losses.dtkd_objective(s, t, y), losses.dkd(s, t, y)
    finally:
        dtkd.set_num_threads(previous)
    for a, b in zip(serial, parallel):
        assert a.loss == pytest.approx(b.loss, rel=1e-12)
        np.testing.assert_array_equal(a.grad, b.grad)
