"""DTKD's exact sharpness-matching rule, against a float64 NumPy bisection solver written here
and central finite differences through the root."""
import numpy as np
import pytest

from dtkd import losses

import losses_reference as ref
from losses_reference import assert_grad_close, f64
from kernel_testing import num_threads

T = 4.0
EDGE = 1e-6  # the C solver's bracket: delta in [-(1 - EDGE) T, (1 - EDGE) T]


# ---- the reference solver: plain bisection in float64 ----

def sharpness_gap(s, t, delta, T):
    """f(delta) = logsumexp(s / (T + delta)) - logsumexp(t / (T - delta)) per row."""
    return ref.logsumexp(s / (T + delta)[:, None]) - ref.logsumexp(t / (T - delta)[:, None])


def exact_temperatures(s, t, T, iterations=200):
    """-> (T_s, T_t, found): the root of sharpness_gap by bisection (rows whose bracket ends
    do not change sign: found False and T_s = T_t = NaN)."""
    s, t = f64(s), f64(t)
    n = len(s)
    lo, hi = np.full(n, -(1 - EDGE) * T), np.full(n, (1 - EDGE) * T)
    f_lo, f_hi = sharpness_gap(s, t, lo, T), sharpness_gap(s, t, hi, T)
    found = np.sign(f_lo) * np.sign(f_hi) < 0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        f_mid = sharpness_gap(s, t, mid, T)
        same_as_lo = np.sign(f_mid) == np.sign(f_lo)
        lo, hi = np.where(same_as_lo, mid, lo), np.where(same_as_lo, hi, mid)
    delta = np.where(found, 0.5 * (lo + hi), np.nan)
    return T + delta, T - delta, found


def exact_dtkd(s, t, T):
    """Per-sample DTKD at the exact rule's temperatures (rows with a root only)."""
    ts, tt, found = exact_temperatures(s, t, T)
    assert found.all()
    return ref.dtkd(s, t, T, fixed_temperatures=(ts, tt))


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def batch(rng):
    """Logits with positive maxima (a root exists) and non-negative row means (it is unique)."""
    s = ref.random_logits(rng, 6, 9, scale=2.0, shift=1.0)
    t = ref.random_logits(rng, 6, 9, scale=4.0, shift=2.0)
    y = rng.integers(0, 9, size=6)
    return s, t, y


def test_exact_rule_temperatures_match_the_reference_solver(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T, rule="exact")
    ts, tt, found = exact_temperatures(s, t, T)
    assert found.all() and r.n_fallback == 0
    np.testing.assert_allclose(r.t_student, ts, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(r.t_teacher, tt, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(f64(r.t_student) + f64(r.t_teacher), 2 * T, rtol=1e-6)


def test_exact_rule_matches_the_sharpness_of_student_and_teacher(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T, rule="exact")
    sharp_s = ref.logsumexp(f64(s) / f64(r.t_student)[:, None])
    sharp_t = ref.logsumexp(f64(t) / f64(r.t_teacher)[:, None])
    np.testing.assert_allclose(sharp_s, sharp_t, rtol=1e-5, atol=1e-5)
    # the official rule only matches the max-logit approximation of it
    o = losses.dtkd(s, t, temperature=T)
    np.testing.assert_allclose(s.max(axis=1) / f64(o.t_student), t.max(axis=1) / f64(o.t_teacher),
                               rtol=1e-5)
    assert not np.allclose(r.t_student, o.t_student, rtol=1e-3)


def test_exact_rule_approaches_official_rule_when_one_logit_dominates(rng):
    # logsumexp(x / T) -> max(x) / T when the max stands far above the rest
    s = ref.random_logits(rng, 5, 10, scale=0.1)
    t = ref.random_logits(rng, 5, 10, scale=0.1)
    s[:, 3] += 60.0
    t[:, 7] += 90.0
    r = losses.dtkd(s, t, temperature=T, rule="exact")
    o = losses.dtkd(s, t, temperature=T)
    np.testing.assert_allclose(r.t_student, o.t_student, rtol=2e-3)


def test_exact_rule_loss_matches_reference(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T, rule="exact", reduction="none")
    np.testing.assert_allclose(r.loss, exact_dtkd(f64(s), f64(t), T), rtol=2e-5, atol=1e-6)


def test_exact_rule_gradient_flows_through_the_root(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T, rule="exact")
    fd = ref.finite_difference_grad(lambda x: exact_dtkd(x, f64(t), T), s) / len(s)
    assert_grad_close(r.grad, fd)
    # and the root's share is not negligible: the detached gradient differs
    d = losses.dtkd(s, t, temperature=T, rule="exact", detach_temperature=True)
    assert np.abs(f64(r.grad) - f64(d.grad)).max() > 1e-3 * np.abs(fd).max()


def test_exact_rule_gradient_with_all_negative_logits(rng):
    # both maxima < 0: the ends of the bracket change sign the other way (f increases); the
    # root exists although the official rule falls back to T
    s = ref.random_logits(rng, 4, 7, scale=1.0, shift=-5.0)
    t = ref.random_logits(rng, 4, 7, scale=1.5, shift=-6.0)
    r = losses.dtkd(s, t, temperature=T, rule="exact")
    assert r.n_fallback == 0
    assert losses.dtkd(s, t, temperature=T).n_fallback == 4
    ts, _, _ = exact_temperatures(s, t, T)
    np.testing.assert_allclose(r.t_student, ts, rtol=2e-6)
    fd = ref.finite_difference_grad(lambda x: exact_dtkd(x, f64(t), T), s) / len(s)
    assert_grad_close(r.grad, fd)


def test_exact_rule_detached_gradient_holds_temperatures_fixed(batch):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T, rule="exact", detach_temperature=True)
    ts, tt, _ = exact_temperatures(s, t, T)
    fd = ref.finite_difference_grad(
        lambda x: ref.dtkd(x, f64(t), T, fixed_temperatures=(ts, tt)), s) / len(s)
    assert_grad_close(r.grad, fd)


def test_exact_rule_without_a_root_falls_back_to_official_rule_and_counts(rng):
    s = ref.random_logits(rng, 6, 8, scale=2.0, shift=1.0)
    t = ref.random_logits(rng, 6, 8, scale=3.0, shift=2.0)
    # rows 1 and 4: student max < 0 < teacher max: f < 0 at both ends of the bracket, no root;
    # the official rule's T_s would be negative there too, so T_s = T_t = T
    s[1] = -np.abs(s[1]) - 0.5
    s[4] = -np.abs(s[4]) - 0.5
    _, _, found = exact_temperatures(s, t, T)
    assert list(np.flatnonzero(~found)) == [1, 4]
    r = losses.dtkd(s, t, temperature=T, rule="exact", reduction="none")
    assert r.n_fallback == 2
    np.testing.assert_allclose(r.t_student[[1, 4]], T)
    np.testing.assert_allclose(r.t_teacher[[1, 4]], T)
    np.testing.assert_allclose(r.loss[[1, 4]], ref.kd(f64(s[[1, 4]]), f64(t[[1, 4]]), T),
                               rtol=2e-5)
    # the other rows keep the exact rule, and the gradient is right row by row
    ok = [0, 2, 3, 5]
    np.testing.assert_allclose(r.loss[ok], exact_dtkd(f64(s[ok]), f64(t[ok]), T), rtol=2e-5)

    def per_sample(x):
        out = np.empty(len(x))
        out[ok] = exact_dtkd(x[ok], f64(t[ok]), T)
        out[[1, 4]] = ref.dtkd(x[[1, 4]], f64(t[[1, 4]]), T)  # official rule, itself at T
        return out
    assert_grad_close(r.grad, ref.finite_difference_grad(per_sample, s))


def test_dtkd_objective_with_exact_rule(batch):
    s, t, y = batch
    r = losses.dtkd_objective(s, t, y, alpha=3.0, beta=1.0, gamma=0.5, temperature=T, epoch=10,
                              warmup=20, rule="exact")
    wf = 0.5
    d = exact_dtkd(f64(s), f64(t), T).mean()
    k, c = ref.kd(f64(s), f64(t), T).mean(), ref.cross_entropy(f64(s), y).mean()
    np.testing.assert_allclose([r.dtkd, r.kd, r.ce], [d, k, c], rtol=2e-5)
    np.testing.assert_allclose(r.loss, wf * (3.0 * d + k) + 0.5 * c, rtol=2e-5)
    fd = ref.finite_difference_grad(
        lambda x: wf * (3.0 * exact_dtkd(x, f64(t), T) + ref.kd(x, f64(t), T))
        + 0.5 * ref.cross_entropy(x, y), s) / len(s)
    assert_grad_close(r.grad, fd)


def test_exact_rule_on_a_cifar_sized_batch_runs_rows_in_parallel(rng):
    # 512 x 100 logits: above the kernels' parallel threshold
    s = ref.random_logits(rng, 512, 100, scale=2.0, shift=0.5)
    t = ref.random_logits(rng, 512, 100, scale=4.0, shift=1.0)
    with num_threads(2):
        r = losses.dtkd(s, t, temperature=T, rule="exact", reduction="none")
    ts, tt, found = exact_temperatures(s, t, T, iterations=80)
    assert found.all() and r.n_fallback == 0
    np.testing.assert_allclose(r.t_student, ts, rtol=5e-6, atol=5e-6)


def test_unknown_rule_is_an_error_naming_the_argument(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="rule"):
        losses.dtkd(s, t, rule="max")
    with pytest.raises(ValueError, match="rule"):
        losses.dtkd_objective(s, t, y, rule=None)


# ---- logit standardization (Sun et al., CVPR 2024) ----

def standardize(x):
    """Reference z-score as their code: (x - mean) / (1e-7 + std), std unbiased (torch.std)."""
    x = f64(x)
    return (x - x.mean(axis=1, keepdims=True)) / (1e-7 + x.std(axis=1, ddof=1, keepdims=True))


def test_logit_standardize_matches_reference_and_finite_differences(rng):
    x = ref.random_logits(rng, 5, 11, scale=3.0, shift=2.0)
    z = losses.logit_standardize(x)
    np.testing.assert_allclose(z, standardize(x), rtol=1e-5, atol=1e-6)
    g = rng.normal(size=x.shape).astype(np.float32)
    dx = losses.logit_standardize_backward(g, x, z)
    fd = ref.finite_difference_grad(lambda v: (f64(g) * standardize(v)).sum(axis=1), x)
    assert_grad_close(dx, fd)


def test_logit_standardize_of_a_constant_row_is_zero_with_a_finite_gradient(rng):
    x = np.full((2, 6), 3.5, dtype=np.float32)
    z = losses.logit_standardize(x)
    assert np.all(z == 0)
    g = rng.normal(size=x.shape).astype(np.float32)
    dx = losses.logit_standardize_backward(g, x, z)
    # only the mean removal remains (sigma = 0: z does not move with the spread)
    assert_grad_close(dx, (f64(g) - f64(g).mean(axis=1, keepdims=True)) / 1e-7)


def test_kd_with_logit_standardization_matches_reference_and_finite_differences(batch):
    s, t, _ = batch
    r = losses.kd(s, t, temperature=2.0, logit_stand=True)
    np.testing.assert_allclose(r.loss, ref.kd(standardize(s), standardize(t), 2.0).mean(),
                               rtol=1e-5)
    fd = ref.finite_difference_grad(lambda x: ref.kd(standardize(x), standardize(t), 2.0), s)
    assert_grad_close(r.grad, fd / len(s))


def test_logit_standardized_kd_ignores_the_scale_and_shift_of_student_logits(batch):
    # the paper's point: the student need not match the teacher's logit range
    s, t, _ = batch
    a = losses.kd(s, t, logit_stand=True)
    b = losses.kd(3.0 * s + 7.0, t, logit_stand=True)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
    assert not np.isclose(losses.kd(s, t).loss, losses.kd(3.0 * s + 7.0, t).loss, rtol=1e-2)


@pytest.mark.parametrize("rule", ["official", "exact"])
@pytest.mark.parametrize("detach", [False, True])
def test_dtkd_with_logit_standardization_gradient_through_both(batch, rule, detach):
    s, t, _ = batch
    r = losses.dtkd(s, t, temperature=T, rule=rule, detach_temperature=detach, logit_stand=True)
    zs, zt = standardize(s), standardize(t)
    if rule == "exact":
        ts, tt, _ = exact_temperatures(zs, zt, T)
        np.testing.assert_allclose(r.t_student, ts, rtol=2e-6)

        def per_sample(x):
            return exact_dtkd(standardize(x), zt, T)
    else:
        ts, tt, _ = ref.temperatures(zs, zt, T)

        def per_sample(x):
            return ref.dtkd(standardize(x), zt, T)
    np.testing.assert_allclose(r.loss, per_sample(f64(s)).mean(), rtol=2e-5)
    if detach:
        def per_sample(x):  # noqa: F811 (the temperatures held at their values)
            return ref.dtkd(standardize(x), zt, T, fixed_temperatures=(ts, tt))
    fd = ref.finite_difference_grad(per_sample, s) / len(s)
    assert_grad_close(r.grad, fd)


@pytest.mark.parametrize("dynamic", [None, "both"])
def test_dkd_with_logit_standardization(batch, dynamic):
    s, t, y = batch
    r = losses.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=T, dynamic_temperature=dynamic,
                   logit_stand=True)
    zt = standardize(t)
    np.testing.assert_allclose(r.loss, ref.dkd(standardize(s), zt, y, 1.0, 8.0, T, dynamic)[0].mean(),
                               rtol=2e-5)
    fd = ref.finite_difference_grad(
        lambda x: ref.dkd(standardize(x), zt, y, 1.0, 8.0, T, dynamic)[0], s) / len(s)
    assert_grad_close(r.grad, fd)


def test_objectives_with_logit_standardization_keep_cross_entropy_on_raw_logits(batch):
    s, t, y = batch
    zs, zt = standardize(s), standardize(t)
    r = losses.dtkd_objective(s, t, y, alpha=3.0, beta=1.0, gamma=0.5, temperature=T, epoch=20,
                              logit_stand=True)
    d, k = ref.dtkd(zs, zt, T).mean(), ref.kd(zs, zt, T).mean()
    c = ref.cross_entropy(f64(s), y).mean()
    np.testing.assert_allclose([r.dtkd, r.kd, r.ce], [d, k, c], rtol=2e-5)
    fd = ref.finite_difference_grad(
        lambda x: 3.0 * ref.dtkd(standardize(x), zt, T) + ref.kd(standardize(x), zt, T)
        + 0.5 * ref.cross_entropy(x, y), s) / len(s)
    assert_grad_close(r.grad, fd)

    r = losses.dkd_objective(s, t, y, alpha=1.0, beta=8.0, gamma=1.0, temperature=T, epoch=20,
                             logit_stand=True)
    np.testing.assert_allclose(r.ce, c, rtol=2e-5)
    np.testing.assert_allclose(r.loss, ref.dkd(zs, zt, y, 1.0, 8.0, T)[0].mean() + c, rtol=2e-5)
    fd = ref.finite_difference_grad(
        lambda x: ref.dkd(standardize(x), zt, y, 1.0, 8.0, T)[0] + ref.cross_entropy(x, y),
        s) / len(s)
    assert_grad_close(r.grad, fd)


def test_logit_standardized_kd_matches_torch():
    torch = pytest.importorskip("torch", reason="torch parity of the standardized KD loss")
    rng = np.random.default_rng(7)
    s = ref.random_logits(rng, 8, 10, scale=2.0)
    t = ref.random_logits(rng, 8, 10, scale=5.0)

    def normalize(x):  # Sun et al.'s code
        return (x - x.mean(dim=-1, keepdim=True)) / (1e-7 + x.std(dim=-1, keepdim=True))
    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(t, dtype=torch.float64)
    T2 = 2.0
    log_q = torch.log_softmax(normalize(st) / T2, dim=1)
    p = torch.softmax(normalize(tt) / T2, dim=1)
    loss = (torch.nn.functional.kl_div(log_q, p, reduction="none").sum(1).mean()) * T2 ** 2
    loss.backward()
    r = losses.kd(s, t, temperature=T2, logit_stand=True)
    np.testing.assert_allclose(r.loss, loss.item(), rtol=1e-5)
    assert_grad_close(r.grad, st.grad.numpy())


def test_logit_stand_must_be_a_bool(batch):
    s, t, _ = batch
    with pytest.raises(TypeError, match="logit_stand"):
        losses.kd(s, t, logit_stand="yes")


def test_logit_stand_needs_two_classes():
    s = np.ones((3, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="student: logit_stand needs at least 2 classes"):
        losses.kd(s, s, logit_stand=True)
