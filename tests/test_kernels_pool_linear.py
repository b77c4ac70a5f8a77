"""Pooling, linear and elementwise kernels (csrc/kernels/{pool,linear,elementwise}.c) against
float64 NumPy references, central finite differences of them, and torch when importable."""
import numpy as np
import pytest

from dtkd import _C

from kernel_testing import assert_grad_close, numeric_grad, rand, threads  # noqa: F401 (fixture)

POOLS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (4, 4, 0), (1, 1, 0), (5, 3, 2)]  # kernel, stride, pad


def windows(x, kernel, stride, pad, fill):
    """(N, C, OH, OW, kernel*kernel) windows of x padded with `fill`, floor output size."""
    N, C, H, W = x.shape
    OH, OW = (H + 2 * pad - kernel) // stride + 1, (W + 2 * pad - kernel) // stride + 1
    xp = np.full((N, C, H + 2 * pad, W + 2 * pad), fill, dtype=np.float64)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    out = np.empty((N, C, OH, OW, kernel * kernel))
    for oh in range(OH):
        for ow in range(OW):
            win = xp[:, :, oh * stride:oh * stride + kernel, ow * stride:ow * stride + kernel]
            out[:, :, oh, ow] = win.reshape(N, C, -1)
    return out


def maxpool_reference(x, kernel, stride, pad):
    return windows(x, kernel, stride, pad, -np.inf).max(axis=-1)


def avgpool_reference(x, kernel, stride, pad):
    return windows(x, kernel, stride, pad, 0.0).sum(axis=-1) / kernel ** 2  # count_include_pad


# ---- max pool --------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride,pad", POOLS)
def test_maxpool_forward_and_argmax_match_reference(kernel, stride, pad, threads):
    x = rand((2, 3, 9, 8), 0)
    y, argmax = _C.maxpool2d_forward(x, kernel, stride, pad)
    np.testing.assert_array_equal(y, maxpool_reference(x.astype(np.float64), kernel, stride, pad))
    assert argmax.dtype == np.int64 and argmax.shape == y.shape
    planes = x.reshape(2, 3, -1)
    np.testing.assert_array_equal(np.take_along_axis(planes, argmax.reshape(2, 3, -1), -1),
                                  y.reshape(2, 3, -1))


@pytest.mark.parametrize("kernel,stride,pad", POOLS)
def test_maxpool_backward_matches_finite_differences(kernel, stride, pad, threads):
    x = rand((2, 2, 7, 6), 1)
    y, argmax = _C.maxpool2d_forward(x, kernel, stride, pad)
    dy = rand(y.shape, 2)
    dx = _C.maxpool2d_backward(dy, argmax, 7, 6)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    numeric = numeric_grad(lambda: float(np.sum(maxpool_reference(x64, kernel, stride, pad) * dy64)),
                           x64)
    assert_grad_close(dx, numeric)


# ---- average pools ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride,pad", POOLS)
def test_avgpool_forward_matches_reference(kernel, stride, pad, threads):
    x = rand((2, 3, 9, 8), 3)
    y = _C.avgpool2d_forward(x, kernel, stride, pad)
    np.testing.assert_allclose(y, avgpool_reference(x.astype(np.float64), kernel, stride, pad),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,pad", POOLS)
def test_avgpool_backward_matches_finite_differences(kernel, stride, pad, threads):
    x = rand((2, 2, 7, 6), 4)
    y = _C.avgpool2d_forward(x, kernel, stride, pad)
    dy = rand(y.shape, 5)
    dx = _C.avgpool2d_backward(dy, 7, 6, kernel, stride, pad)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    numeric = numeric_grad(lambda: float(np.sum(avgpool_reference(x64, kernel, stride, pad) * dy64)),
                           x64)
    assert_grad_close(dx, numeric)


def test_global_avgpool_forward_and_backward(threads):
    x = rand((3, 4, 5, 6), 6)
    y = _C.global_avgpool_forward(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, x64.mean(axis=(2, 3)), rtol=1e-6, atol=1e-7)
    dy = rand((3, 4), 7)
    dx = _C.global_avgpool_backward(dy, 5, 6)
    numeric = numeric_grad(lambda: float(np.sum(x64.mean(axis=(2, 3)) * dy)), x64)
    assert_grad_close(dx, numeric)


# ---- linear ----------------------------------------------------------------------------------

@pytest.mark.parametrize("N,IN,OUT", [(5, 7, 3), (1, 4, 6), (16, 33, 10)])
def test_linear_forward_and_backward(N, IN, OUT, threads):
    x, w, b = rand((N, IN), 8), rand((OUT, IN), 9), rand((OUT,), 10)
    y = _C.linear_forward(x, w, b)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    np.testing.assert_allclose(y, np.einsum("ni,oi->no", x64, w64) + b64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_C.linear_forward(x, w, None), np.einsum("ni,oi->no", x64, w64),
                               rtol=1e-5, atol=1e-5)
    dy = rand((N, OUT), 11)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _C.linear_backward(dy, x, w, dw, db)

    def loss():
        return float(np.sum((np.einsum("ni,oi->no", x64, w64) + b64) * dy))

    for analytic, wrt in ((dx, x64), (dw, w64), (db, b64)):
        assert_grad_close(analytic, numeric_grad(loss, wrt))


def test_linear_backward_accumulates():
    x, w, dy = rand((4, 5), 12), rand((3, 5), 13), rand((4, 3), 14)
    dw1, db1 = np.zeros_like(w), np.zeros(3, np.float32)
    _C.linear_backward(dy, x, w, dw1, db1)
    dw2, db2 = np.full_like(w, 2.0), np.full(3, -1.0, np.float32)
    _C.linear_backward(dy, x, w, dw2, db2)
    np.testing.assert_allclose(dw2, dw1 + 2.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(db2, db1 - 1.0, rtol=1e-6, atol=1e-6)
    dw3 = np.zeros_like(w)
    np.testing.assert_array_equal(_C.linear_backward(dy, x, w, dw3, None),
                                  _C.linear_backward(dy, x, w, np.zeros_like(w), None))


# ---- elementwise -----------------------------------------------------------------------------

def test_relu_add_and_fused_add_relu(threads):
    a, b = rand((3, 4, 5, 6), 15), rand((3, 4, 5, 6), 16)
    y = _C.relu_forward(a)
    np.testing.assert_array_equal(y, np.maximum(a, 0))
    np.testing.assert_array_equal(_C.add_forward(a, b), a + b)
    y_fused = _C.add_relu_forward(a, b)
    np.testing.assert_array_equal(y_fused, np.maximum(a + b, 0))
    dy = rand(a.shape, 17)
    np.testing.assert_array_equal(_C.relu_backward(dy, y), np.where(a > 0, dy, 0))
    # the fused op's gradient w.r.t. both a and b is relu_backward on its output
    a64, dy64 = a.astype(np.float64)[:1, :1], dy.astype(np.float64)[:1, :1]
    b64 = b.astype(np.float64)[:1, :1]
    numeric = numeric_grad(lambda: float(np.sum(np.maximum(a64 + b64, 0) * dy64)), a64)
    assert_grad_close(_C.relu_backward(dy[:1, :1].copy(), y_fused[:1, :1].copy()), numeric)


def test_elementwise_large_arrays_take_the_parallel_path(threads):
    a, b = rand((4, 64, 32, 32), 18), rand((4, 64, 32, 32), 19)
    np.testing.assert_array_equal(_C.add_relu_forward(a, b), np.maximum(a + b, 0))
    a[3, 63, 31, 31] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        _C.relu_forward(a)


# ---- torch equivalence -----------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride,pad", POOLS)
def test_pools_match_torch(kernel, stride, pad, threads):
    torch = pytest.importorskip("torch", reason="torch not installed: equivalence test skipped")
    F = torch.nn.functional
    x = rand((4, 8, 16, 15), 20)
    for name in ("max", "avg"):
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        fn = F.max_pool2d if name == "max" else F.avg_pool2d
        yt = fn(xt, kernel, stride, pad)
        dy = rand(tuple(yt.shape), 21)
        yt.backward(torch.from_numpy(dy))
        if name == "max":
            y, argmax = _C.maxpool2d_forward(x, kernel, stride, pad)
            dx = _C.maxpool2d_backward(dy, argmax, 16, 15)
        else:
            y = _C.avgpool2d_forward(x, kernel, stride, pad)
            dx = _C.avgpool2d_backward(dy, 16, 15, kernel, stride, pad)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_global_avgpool_and_linear_match_torch(threads):
    torch = pytest.importorskip("torch", reason="torch not installed: equivalence test skipped")
    F = torch.nn.functional
    x, w, b = rand((8, 16, 8, 8), 22), rand((10, 16), 23), rand((10,), 24)
    xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b))
    logits_t = F.linear(F.adaptive_avg_pool2d(xt, 1).flatten(1), wt, bt)
    dy = rand((8, 10), 25)
    logits_t.backward(torch.from_numpy(dy))
    pooled = _C.global_avgpool_forward(x)
    logits = _C.linear_forward(pooled, w, b)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dpooled = _C.linear_backward(dy, pooled, w, dw, db)
    dx = _C.global_avgpool_backward(dpooled, 8, 8)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-5)


# ---- bad input -------------------------------------------------------------------------------

def test_pool_rejects_bad_geometry_and_input():
    x = rand((2, 3, 6, 6), 26)
    with pytest.raises(ValueError, match="kernel: 9 is larger than the padded input"):
        _C.maxpool2d_forward(x, 9, 1, 1)
    with pytest.raises(ValueError, match="pad: must be <= kernel/2 = 1, got 2"):
        _C.avgpool2d_forward(x, 3, 1, 2)
    with pytest.raises(ValueError, match="stride: must be >= 1"):
        _C.maxpool2d_forward(x, 2, 0, 0)
    with pytest.raises(TypeError, match="x: expected dtype numpy.float32"):
        _C.maxpool2d_forward(x.astype(np.float64), 2, 2, 0)
    with pytest.raises(ValueError, match="x: expected a 4-D array"):
        _C.global_avgpool_forward(x[0])
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _C.avgpool2d_forward(x[:, :, ::2], 2, 2, 0)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    for call in (lambda: _C.maxpool2d_forward(bad, 2, 2, 0),
                 lambda: _C.avgpool2d_forward(bad, 2, 2, 0),
                 lambda: _C.global_avgpool_forward(bad)):
        with pytest.raises(ValueError, match="x: contains NaN or Inf"):
            call()


def test_pool_backward_rejects_inconsistent_arguments():
    x = rand((2, 3, 6, 6), 27)
    y, argmax = _C.maxpool2d_forward(x, 2, 2, 0)
    with pytest.raises(ValueError, match="argmax: expected shape"):
        _C.maxpool2d_backward(y, argmax[:, :2].copy(), 6, 6)
    with pytest.raises(TypeError, match="argmax: expected dtype numpy.int64"):
        _C.maxpool2d_backward(y, argmax.astype(np.int32), 6, 6)
    with pytest.raises(ValueError, match=r"argmax: an index is outside \[0, H\*W\)"):
        _C.maxpool2d_backward(y, argmax, 2, 2)
    with pytest.raises(ValueError, match="dy: expected shape"):
        _C.avgpool2d_backward(y, 8, 8, 2, 2, 0)
    with pytest.raises(ValueError, match="dy: expected a 2-D array"):
        _C.global_avgpool_backward(y, 6, 6)


def test_linear_and_elementwise_reject_bad_input():
    x, w = rand((4, 5), 28), rand((3, 5), 29)
    with pytest.raises(ValueError, match=r"w: expected shape \(out, 6\) to match x"):
        _C.linear_forward(rand((4, 6), 30), w, None)
    with pytest.raises(ValueError, match="b: expected shape"):
        _C.linear_forward(x, w, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="x: expected dtype numpy.float32"):
        _C.linear_forward(x.astype(np.float64), w, None)
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        _C.linear_forward(np.full((4, 5), np.nan, np.float32), w, None)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _C.linear_forward(np.asfortranarray(rand((4, 5), 31)), w, None)
    with pytest.raises(ValueError, match="dw: expected shape"):
        _C.linear_backward(rand((4, 3), 32), x, w, np.zeros((5, 3), np.float32), None)
    with pytest.raises(ValueError, match="b: expected shape"):
        _C.add_forward(x, rand((4, 6), 33))
    with pytest.raises(ValueError, match="a, b: contain NaN or Inf"):
        _C.add_relu_forward(x, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="dy: expected shape"):
        _C.relu_backward(rand((4, 6), 34), x)
    with pytest.raises(ValueError, match="x: empty array"):
        _C.relu_forward(np.zeros((0, 3), np.float32))
