"""batchnorm2d kernels (csrc/kernels/batchnorm.c) against a float64 NumPy reference, central
finite differences of it, and torch.nn.functional.batch_norm when importable."""
import numpy as np
import pytest

from dtkd import _C

from kernel_testing import assert_grad_close, num_threads, numeric_grad, rand, threads  # noqa: F401 (fixture)

SHAPES = [(4, 3, 5, 6), (2, 5, 1, 1), (1, 4, 3, 3), (16, 8, 8, 8)]


def batchnorm_train_reference(x, gamma, beta, eps):
    """Batch statistics over (N, H, W): returns y, batch mean, biased var, unbiased var."""
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    m = x.size // x.shape[1]
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    y = xhat * gamma[None, :, None, None] + beta[None, :, None, None]
    return y, mean, var, var * m / (m - 1)


def batchnorm_eval_reference(x, gamma, beta, running_mean, running_var, eps):
    c = (None, slice(None), None, None)
    return (x - running_mean[c]) / np.sqrt(running_var[c] + eps) * gamma[c] + beta[c]


def make_problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal((1, C, 1, 1)) * 3).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    running_mean = rng.standard_normal(C).astype(np.float32)
    running_var = rng.uniform(0.5, 2.0, C).astype(np.float32)
    return x, gamma, beta, running_mean, running_var


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_train_forward_and_running_stats_match_reference(shape, threads):
    x, gamma, beta, rm, rv = make_problem(shape)
    rm0, rv0 = rm.astype(np.float64), rv.astype(np.float64)
    momentum, eps = 0.1, 1e-5
    y, save_mean, save_invstd = _C.batchnorm2d_forward_train(x, gamma, beta, rm, rv, momentum, eps)
    ref, mean, var, var_unbiased = batchnorm_train_reference(
        x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), eps)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(save_mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(save_invstd, 1 / np.sqrt(var + eps), rtol=1e-6)
    # torch's rule: running = (1 - m) * running + m * batch, with the unbiased batch variance
    np.testing.assert_allclose(rm, (1 - momentum) * rm0 + momentum * mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, (1 - momentum) * rv0 + momentum * var_unbiased, rtol=1e-6)
    assert save_mean.dtype == np.float32 and save_invstd.shape == (shape[1],)


def test_batchnorm_train_without_running_stats_leaves_nothing_to_update():
    x, gamma, beta, _, _ = make_problem((3, 4, 5, 5))
    y, _, _ = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5)
    ref = batchnorm_train_reference(x.astype(np.float64), gamma, beta, 1e-5)[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_statistics_stay_accurate_with_a_large_offset():
    """Double accumulation: a channel mean of 1e4 with unit spread keeps its variance."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((32, 2, 16, 16)) + 1e4).astype(np.float32)
    gamma, beta = np.ones(2, np.float32), np.zeros(2, np.float32)
    _, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(x64.var(axis=(0, 2, 3)) + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_eval_matches_reference(shape, threads):
    x, gamma, beta, rm, rv = make_problem(shape, seed=2)
    y = _C.batchnorm2d_forward_eval(x, gamma, beta, rm, rv, 1e-5)
    ref = batchnorm_eval_reference(*(a.astype(np.float64) for a in (x, gamma, beta, rm, rv)), 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 2, 3, 4), (2, 3, 1, 1)])
def test_batchnorm_backward_matches_finite_differences(shape, threads):
    x, gamma, beta, _, _ = make_problem(shape, seed=3)
    eps = 1e-5
    _, save_mean, save_invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, eps)
    dy = rand(shape, 4)
    dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(beta)
    dx = _C.batchnorm2d_backward(dy, x, gamma, save_mean, save_invstd, dgamma, dbeta)

    x64, g64, b64, dy64 = (a.astype(np.float64) for a in (x, gamma, beta, dy))

    def loss():
        return float(np.sum(batchnorm_train_reference(x64, g64, b64, eps)[0] * dy64))

    for analytic, wrt in ((dx, x64), (dgamma, g64), (dbeta, b64)):
        assert_grad_close(analytic, numeric_grad(loss, wrt), rtol=1e-3, atol=2e-4)


def test_batchnorm_backward_accumulates_parameter_gradients():
    x, gamma, beta, _, _ = make_problem((4, 3, 4, 4), seed=5)
    _, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5)
    dy = rand(x.shape, 6)
    dg1, db1 = np.zeros_like(gamma), np.zeros_like(beta)
    dx1 = _C.batchnorm2d_backward(dy, x, gamma, mean, invstd, dg1, db1)
    dg2, db2 = np.full_like(gamma, 1.0), np.full_like(beta, 3.0)
    dx2 = _C.batchnorm2d_backward(dy, x, gamma, mean, invstd, dg2, db2)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_allclose(dg2, dg1 + 1.0, rtol=1e-6)
    np.testing.assert_allclose(db2, db1 + 3.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 16, 8, 8)])
def test_batchnorm_matches_torch_train_eval_and_running_stats(shape, threads):
    torch = pytest.importorskip("torch", reason="torch not installed: equivalence test skipped")
    F = torch.nn.functional
    x, gamma, beta, rm, rv = make_problem(shape, seed=7)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt, gt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, gamma, beta))
    yt = F.batch_norm(xt, rm_t, rv_t, gt, bt, training=True, momentum=0.1, eps=1e-5)
    dy = rand(shape, 8)
    yt.backward(torch.from_numpy(dy))

    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5)
    dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(beta)
    dx = _C.batchnorm2d_backward(dy, x, gamma, mean, invstd, dgamma, dbeta)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-4, atol=1e-4)

    y_eval = _C.batchnorm2d_forward_eval(x, gamma, beta, rm, rv, 1e-5)
    yt_eval = F.batch_norm(torch.from_numpy(x), rm_t, rv_t, torch.from_numpy(gamma),
                           torch.from_numpy(beta), training=False, eps=1e-5)
    np.testing.assert_allclose(y_eval, yt_eval.numpy(), rtol=1e-5, atol=1e-5)


# ---- BatchNorm fused with the residual add and ReLU (a ResNet block's tail) ----------------

def fused_reference(x, gamma, beta, residual, relu, eps):
    """relu?(bn(x) + residual) in float64 (residual may be None)."""
    y = batchnorm_train_reference(x, gamma, beta, eps)[0]
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0.0) if relu else y


@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (True, False)],
                         ids=["relu", "add+relu", "add"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (16, 8, 8, 8)])
def test_fused_batchnorm_forward_matches_reference(shape, residual, relu, threads):
    x, gamma, beta, rm, rv = make_problem(shape, seed=11)
    res = rand(shape, 12) if residual else None
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                   residual=res, relu=relu)
    ref = fused_reference(*(a.astype(np.float64) for a in (x, gamma, beta)),
                          None if res is None else res.astype(np.float64), relu, 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # the statistics and running updates are the plain BN's
    rm1, rv1 = rm0.copy(), rv0.copy()
    _, mean1, invstd1 = _C.batchnorm2d_forward_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5)
    np.testing.assert_array_equal(mean, mean1)
    np.testing.assert_array_equal(invstd, invstd1)
    np.testing.assert_array_equal(rm, rm1)
    np.testing.assert_array_equal(rv, rv1)


@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (True, False),
                                           (False, False)],
                         ids=["relu", "add+relu", "add", "plain"])
def test_fused_batchnorm_backward_matches_finite_differences(residual, relu, threads):
    shape, eps = (3, 2, 3, 4), 1e-5
    x, gamma, beta, _, _ = make_problem(shape, seed=13)
    res = rand(shape, 14) if residual else None
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, eps,
                                                   residual=res, relu=relu)
    dy = rand(shape, 15)
    dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(beta)
    dx, dres = _C.batchnorm2d_act_backward(dy, y if relu else None, x, gamma, mean, invstd,
                                           dgamma, dbeta, residual)
    assert (dres is None) == (not residual)

    x64, g64, b64, dy64 = (a.astype(np.float64) for a in (x, gamma, beta, dy))
    r64 = None if res is None else res.astype(np.float64)

    def loss():
        return float(np.sum(fused_reference(x64, g64, b64, r64, relu, eps) * dy64))

    wrts = [(dx, x64), (dgamma, g64), (dbeta, b64)] + ([(dres, r64)] if residual else [])
    for analytic, wrt in wrts:
        assert_grad_close(analytic, numeric_grad(loss, wrt), rtol=1e-3, atol=2e-4)


def test_fused_batchnorm_backward_matches_numpy_reference_and_torch(threads):
    """The analytic gradient written out in NumPy (float64), and torch's autograd if present."""
    shape, eps = (8, 16, 8, 8), 1e-5
    x, gamma, beta, _, _ = make_problem(shape, seed=17)
    res, dy = rand(shape, 18), rand(shape, 19)
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, eps,
                                                   residual=res, relu=True)
    dgamma, dbeta = np.zeros_like(gamma), np.zeros_like(beta)
    dx, dres = _C.batchnorm2d_act_backward(dy, y, x, gamma, mean, invstd, dgamma, dbeta, True)

    x64, g64, b64, r64, dy64 = (a.astype(np.float64) for a in (x, gamma, beta, res, dy))
    c = (None, slice(None), None, None)
    mu, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    xhat = (x64 - mu[c]) / np.sqrt(var + eps)[c]
    g = dy64 * (xhat * g64[c] + b64[c] + r64 > 0)
    ref_dgamma, ref_dbeta = (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3))
    ref_dx = (g64 / np.sqrt(var + eps))[c] * (g - g.mean(axis=(0, 2, 3))[c]
                                              - xhat * (g * xhat).mean(axis=(0, 2, 3))[c])
    np.testing.assert_allclose(dres, g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=1e-4, atol=1e-4)

    torch = pytest.importorskip("torch", reason="torch not installed: equivalence test skipped")
    xt, gt, bt, rt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, gamma, beta, res))
    yt = torch.relu(torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True,
                                                   eps=eps) + rt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    for ours, theirs in ((dx, xt), (dgamma, gt), (dbeta, bt), (dres, rt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_fused_batchnorm_rejects_bad_residual_and_y():
    x, gamma, beta, _, _ = make_problem((2, 3, 4, 4), seed=21)
    with pytest.raises(ValueError, match="residual"):
        _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5,
                                     residual=np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="residual"):
        _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5,
                                     residual=np.zeros((2, 3, 4, 4), np.float64))
    bad = np.zeros((2, 3, 4, 4), np.float32)
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="residual: contains NaN"):
        _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5, residual=bad)
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, None, None, 0.1, 1e-5, relu=True)
    with pytest.raises(ValueError, match="y: expected shape"):
        _C.batchnorm2d_act_backward(y, y[:1], x, gamma, mean, invstd, np.zeros(3, np.float32),
                                    np.zeros(3, np.float32), False)


# ---- bad input -------------------------------------------------------------------------------

def test_batchnorm_rejects_wrong_dtype_ndim_and_layout():
    x, gamma, beta, rm, rv = make_problem((2, 3, 4, 4))
    with pytest.raises(TypeError, match="x: expected dtype numpy.float32"):
        _C.batchnorm2d_forward_train(x.astype(np.float64), gamma, beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(ValueError, match="x: expected a 4-D array, got 2-D"):
        _C.batchnorm2d_forward_eval(x[0, 0], gamma, beta, rm, rv, 1e-5)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _C.batchnorm2d_forward_train(x.transpose(0, 1, 3, 2), gamma, beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(TypeError, match="running_var: expected dtype numpy.float32"):
        _C.batchnorm2d_forward_train(x, gamma, beta, rm, rv.astype(np.float64), 0.1, 1e-5)


def test_batchnorm_rejects_channel_mismatch():
    x, gamma, beta, rm, rv = make_problem((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(3\), got \(4\)"):
        _C.batchnorm2d_forward_train(x, np.ones(4, np.float32), beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(ValueError, match="running_mean: expected shape"):
        _C.batchnorm2d_forward_eval(x, gamma, beta, rm[:2].copy(), rv, 1e-5)
    with pytest.raises(ValueError, match="dy: expected shape"):
        _C.batchnorm2d_backward(np.zeros((2, 4, 4, 4), np.float32), x, gamma, rm, rv,
                                np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_batchnorm_rejects_nonfinite_and_bad_scalars():
    x, gamma, beta, rm, rv = make_problem((2, 3, 4, 4))
    bad = x.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        _C.batchnorm2d_forward_train(bad, gamma, beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        _C.batchnorm2d_forward_eval(np.where(bad == bad, bad, np.inf).astype(np.float32),
                                    gamma, beta, rm, rv, 1e-5)
    with pytest.raises(ValueError, match="gamma: contains NaN or Inf"):
        _C.batchnorm2d_forward_train(x, np.full(3, np.inf, np.float32), beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(ValueError, match="momentum: must be in"):
        _C.batchnorm2d_forward_train(x, gamma, beta, rm, rv, 1.5, 1e-5)
    with pytest.raises(ValueError, match="eps: must be finite and > 0"):
        _C.batchnorm2d_forward_eval(x, gamma, beta, rm, rv, 0.0)
    with pytest.raises(ValueError, match="running_var: must be >= 0"):
        _C.batchnorm2d_forward_eval(x, gamma, beta, rm, -rv, 1e-5)
    with pytest.raises(ValueError, match="pass both arrays or both None"):
        _C.batchnorm2d_forward_train(x, gamma, beta, rm, None, 0.1, 1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_batchnorm_backward_rejects_a_nonfinite_dy_anywhere_and_adds_nothing(threads, value):
    """The backward checks dy in its first pass (no separate scan in the binding): a NaN/Inf
    is refused wherever it is, also where the ReLU mask would zero it, in every variant, and
    the accumulated dgamma/dbeta stay as they were. Large enough for the parallel passes."""
    x, gamma, beta, rm, rv = make_problem((4, 8, 48, 48))
    y, mean, invstd = _C.batchnorm2d_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, None,
                                                   True)[:3]
    masked = tuple(np.argwhere(y == 0)[-1])  # a position the ReLU zeroes
    for where in [(0, 0, 0, 0), masked, (3, 7, 47, 47)]:
        dy = np.ones_like(x)
        dy[where] = value
        dgamma, dbeta = np.full(8, 3.0, np.float32), np.full(8, -1.0, np.float32)
        calls = [lambda: _C.batchnorm2d_act_backward(dy, y, x, gamma, mean, invstd, dgamma,
                                                     dbeta, True),
                 lambda: _C.batchnorm2d_act_backward(dy, None, x, gamma, mean, invstd, dgamma,
                                                     dbeta, True),
                 lambda: _C.batchnorm2d_act_backward(dy, y, x, gamma, mean, invstd, dgamma,
                                                     dbeta, False),
                 lambda: _C.batchnorm2d_backward(dy, x, gamma, mean, invstd, dgamma, dbeta)]
        with num_threads(threads):
            for call in calls:
                with pytest.raises(ValueError, match="^dy: contains NaN or Inf$"):
                    call()
        assert (dgamma == 3.0).all() and (dbeta == -1.0).all()


def test_batchnorm_train_needs_more_than_one_value_per_channel():
    x = np.ones((1, 3, 1, 1), np.float32)
    one = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="x: batch statistics need more than 1 value per channel"):
        _C.batchnorm2d_forward_train(x, one, one, None, None, 0.1, 1e-5)
    with pytest.raises(ValueError, match="x: empty array"):
        _C.batchnorm2d_forward_train(np.ones((0, 3, 2, 2), np.float32), one, one, None, None,
                                     0.1, 1e-5)


def test_batchnorm_output_beyond_float32_is_an_error_and_keeps_running_stats():
    # found by fuzzing: finite inputs whose result overflows float32 (gamma near 3e38, or a
    # constant channel with an eps that is 0 in float32) returned Inf/NaN without an error
    x, gamma, beta, rm, rv = make_problem((2, 3, 4, 4))
    rm0, rv0 = rm.copy(), rv.copy()
    huge = np.full(3, 3e38, np.float32)
    with pytest.raises(ValueError, match="batchnorm2d_forward_train: the output or the batch "
                                         "statistics leave float32's range"):
        _C.batchnorm2d_forward_train(x, huge, beta, rm, rv, 0.1, 1e-5)
    np.testing.assert_array_equal(rm, rm0)   # a failed call leaves the running statistics
    np.testing.assert_array_equal(rv, rv0)
    with pytest.raises(ValueError, match="the output or the batch statistics leave float32's range"):
        _C.batchnorm2d_forward_train(np.ones_like(x), gamma, beta, None, None, 0.1, 1e-300)
    with pytest.raises(ValueError, match="the output or the batch statistics leave float32's range"):
        _C.batchnorm2d_forward_train(x, huge, beta, None, None, 0.1, 1e-5,
                                     residual=np.zeros_like(x), relu=True)  # not hidden by ReLU
    with pytest.raises(ValueError, match="batchnorm2d_forward_eval: the output or the batch statistics"):
        _C.batchnorm2d_forward_eval(x, huge, beta, rm, rv, 1e-5)
    # right at the edge but representable: no error, finite output
    y, _, _ = _C.batchnorm2d_forward_train(x, gamma, np.full(3, 1e38, np.float32), None, None,
                                           0.1, 1e-5)
    assert np.isfinite(y).all()
