"""Winograd F(2x2,3x3) / F(4x4,3x3) convolution (csrc/kernels/winograd.c) against a float64
NumPy direct convolution written here: the forward, the input gradient and the weight
gradient."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dtkd import _C

from kernel_testing import available_isas, num_threads, numeric_grad, simd_path

TILE_SIZES = (2, 4)
# Error bound per output, as a multiple of sum_k |x_k||w_k| (the conv of |x| with |w|): float32
# rounding of the transforms grows with the tile (F(4x4)'s transform has entries up to 8 and
# divides by 6 and 24), so each tile size has its own bound. Measured maxima at resnet32x4
# widths were ~1e-7 (m=2) and ~2e-6 (m=4) with an exact GEMM; the bounds leave room for a GEMM
# that accumulates in float32.
ERROR_BOUND = {2: 2e-6, 4: 2e-5}


def conv3x3_reference(x, w, b=None):
    """Direct 3x3 convolution, stride 1, zero pad 1, in float64: y[n,o] = sum_c,i,j
    w[o,c,i,j] * xpad[n,c,h+i,w+j] (+ b[o])."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2, wd + 2))
    xp[:, :, 1:-1, 1:-1] = x
    y = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j],
                           optimize=True)
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def assert_close_to_reference(y, x, w, b, m):
    ref = conv3x3_reference(x, w, b)
    scale = conv3x3_reference(np.abs(x), np.abs(w))
    if b is not None:
        scale += np.abs(b.astype(np.float64))[None, :, None, None]
    err = np.abs(y.astype(np.float64) - ref)
    bound = ERROR_BOUND[m] * (scale + 1e-6 * scale.max())
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"m={m}: error {err[worst]:.3g} at {worst} exceeds {bound[worst]:.3g}")


def random_problem(rng, n, c, h, w, o, bias=True):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    return x, wt, b


@pytest.fixture
def isa_limit():
    """Cap the SIMD path for one test and restore the one in use before afterwards."""
    with simd_path(_C.cpu_features()["isa"]):
        yield _C.set_isa


# Odd and tiny sizes exercise the partial tiles at the right and bottom edges; C and O not
# multiples of 16 exercise the padded channel lanes; C <= 64 with O a multiple of 16 takes the
# thin layers' products (full blocks of tiles and a remainder), the rest dtkd_sgemm.
SHAPES = [
    (1, 1, 1, 1, 1),
    (1, 1, 5, 7, 1),
    (2, 3, 5, 7, 5),
    (3, 17, 9, 6, 33),
    (1, 16, 2, 3, 16),
    (2, 32, 8, 8, 32),
    (1, 5, 13, 1, 4),
    (1, 2, 1, 11, 3),
    (2, 64, 12, 12, 48),  # thin layer (C <= 64, O a multiple of 16): products without the GEMM
    (1, 80, 6, 6, 16),    # C > 64: the GEMM again
]


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_direct_convolution(shape, m, isa_limit):
    rng = np.random.default_rng(sum(shape) + m)
    x, w, b = random_problem(rng, *shape)
    for isa in available_isas():  # each has its own strip copies at the edges
        isa_limit(isa)
        assert_close_to_reference(_C.winograd_conv3x3_forward(x, w, b, m), x, w, b, m)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_forward_without_bias(m):
    x, w, _ = random_problem(np.random.default_rng(1), 2, 6, 7, 5, 9)
    assert_close_to_reference(_C.winograd_conv3x3_forward(x, w, None, m), x, w, None, m)
    assert_close_to_reference(_C.winograd_conv3x3_forward(x, w), x, w, None, 4)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_every_instruction_set_matches_the_reference(m, isa_limit):
    x, w, b = random_problem(np.random.default_rng(2), 2, 20, 11, 10, 18)
    for isa in available_isas():
        isa_limit(isa)
        assert_close_to_reference(_C.winograd_conv3x3_forward(x, w, b, m), x, w, b, m)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_many_tile_blocks_and_threads_give_the_same_result(m):
    # 3 images of 30x30 make hundreds of tiles: several blocks per thread, a partial last one.
    x, w, b = random_problem(np.random.default_rng(3), 3, 24, 30, 30, 20)
    with num_threads(1):
        y1 = _C.winograd_conv3x3_forward(x, w, b, m)
    with num_threads(2):
        y2 = _C.winograd_conv3x3_forward(x, w, b, m)
    assert_close_to_reference(y1, x, w, b, m)
    assert_close_to_reference(y2, x, w, b, m)


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("c,o,hw", [(32, 64, 32), (64, 64, 32), (128, 128, 16), (256, 256, 8)])
def test_error_at_resnet32x4_widths_and_activation_scales(c, o, hw, m):
    # Post-BN-ReLU activations (half-normal) and Kaiming-scaled weights, as in resnet32x4.
    rng = np.random.default_rng(c + m)
    x = np.maximum(rng.standard_normal((2, c, hw, hw)), 0).astype(np.float32)
    w = (rng.standard_normal((o, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
    b = (0.1 * rng.standard_normal(o)).astype(np.float32)
    assert_close_to_reference(_C.winograd_conv3x3_forward(x, w, b, m), x, w, b, m)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_fused_residual_and_relu(m, isa_limit):
    # The eval path's epilogue: y = relu(conv(x) + b + residual).
    rng = np.random.default_rng(8)
    x, w, b = random_problem(rng, 2, 18, 7, 19, 21)
    residual = rng.standard_normal((2, 21, 7, 19)).astype(np.float32)
    ref = conv3x3_reference(x, w, b) + residual
    scale = conv3x3_reference(np.abs(x), np.abs(w)) + np.abs(b)[None, :, None, None] + np.abs(
        residual)
    for isa in available_isas():
        isa_limit(isa)
        for relu in (False, True):
            y = _C.winograd_conv3x3_forward(x, w, b, m, residual=residual, relu=relu)
            want = np.maximum(ref, 0) if relu else ref
            assert np.all(np.abs(y - want) <= ERROR_BOUND[m] * scale), (isa, relu)
            if relu:
                assert y.min() >= 0.0
        u = _C.winograd_transform_weights(w, m)
        np.testing.assert_array_equal(
            _C.winograd_conv3x3_forward_transformed(x, u, b, residual, True),
            _C.winograd_conv3x3_forward(x, w, b, m, residual=residual, relu=True))


def test_out_buffer_is_written_and_may_be_the_residual():
    rng = np.random.default_rng(12)
    x, w, b = random_problem(rng, 2, 5, 6, 7, 3)
    out = np.full((2, 3, 6, 7), np.nan, np.float32)
    y = _C.winograd_conv3x3_forward(x, w, b, out=out)
    assert y is out
    np.testing.assert_array_equal(out, _C.winograd_conv3x3_forward(x, w, b))
    # In place: residual and out the same array (the eval path's y = relu(conv + y)).
    residual = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    want = _C.winograd_conv3x3_forward(x, w, b, residual=residual, relu=True)
    u = _C.winograd_transform_weights(w)
    y = _C.winograd_conv3x3_forward_transformed(x, u, b, residual, True, out=residual)
    assert y is residual
    np.testing.assert_array_equal(residual, want)


def test_relu_without_bias_or_residual():
    x, w, _ = random_problem(np.random.default_rng(9), 1, 4, 9, 9, 5)
    y = _C.winograd_conv3x3_forward(x, w, relu=True)
    ref = np.maximum(conv3x3_reference(x, w), 0)
    assert np.all(np.abs(y - ref) <= ERROR_BOUND[4] * conv3x3_reference(np.abs(x), np.abs(w)))


def transform_reference(w, m):
    """G g G^T per (o, c) in float64 with the matrices of Lavin & Gray, as (a*a, C, O)."""
    if m == 2:
        g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    else:
        g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    u = np.einsum("ik,ockl,jl->ijco", g, w.astype(np.float64), g)
    return u.reshape(-1, w.shape[1], w.shape[0])


@pytest.mark.parametrize("m", TILE_SIZES)
def test_weight_transform_matches_g_g_gt(m):
    w = np.random.default_rng(4).standard_normal((7, 5, 3, 3)).astype(np.float32)
    u = _C.winograd_transform_weights(w, m)
    assert u.shape == ((m + 2) ** 2, 5, 7) and u.dtype == np.float32
    np.testing.assert_allclose(u, transform_reference(w, m), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("m", TILE_SIZES)
def test_pretransformed_weights_give_the_same_output(m):
    x, w, b = random_problem(np.random.default_rng(5), 2, 9, 6, 9, 11)
    u = _C.winograd_transform_weights(w, m)
    np.testing.assert_array_equal(_C.winograd_conv3x3_forward_transformed(x, u, b),
                                  _C.winograd_conv3x3_forward(x, w, b, m))


def test_f4_is_the_default_tile():
    x, w, b = random_problem(np.random.default_rng(6), 1, 4, 6, 6, 3)
    np.testing.assert_array_equal(_C.winograd_conv3x3_forward(x, w, b),
                                  _C.winograd_conv3x3_forward(x, w, b, 4))
    assert _C.winograd_transform_weights(w).shape == (36, 4, 3)


# ---- input gradient (the same convolution with the kernel rotated) ----

def conv3x3_input_grad_reference(dy, w):
    """d/dx of sum(y * dy) for y = conv3x3_reference(x, w), in float64: each output
    y[n,o,h,w'] reads xpad[n,c,h+i,w'+j] with weight w[o,c,i,j], so scatter dy back."""
    dy = np.asarray(dy, np.float64)
    w = np.asarray(w, np.float64)
    n, o, h, wd = dy.shape
    dxp = np.zeros((n, w.shape[1], h + 2, wd + 2))
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + h, j:j + wd] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    return dxp[:, :, 1:-1, 1:-1]


@pytest.mark.parametrize("m", TILE_SIZES)
def test_input_gradient_matches_finite_differences(m):
    rng = np.random.default_rng(10)
    x, w, _ = random_problem(rng, 1, 3, 5, 6, 4, bias=False)
    dy = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    dx = _C.winograd_conv3x3_backward_input(dy, w, m)
    x64 = x.astype(np.float64)
    fd = numeric_grad(lambda: float(np.sum(conv3x3_reference(x64, w) * dy)), x64)
    np.testing.assert_allclose(dx, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("shape", [(2, 17, 9, 7, 33), (1, 64, 8, 8, 32), (1, 1, 1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_input_gradient_matches_reference(shape, m):
    n, c, h, wd, o = shape
    rng = np.random.default_rng(11)
    _, w, _ = random_problem(rng, *shape, bias=False)
    dy = rng.standard_normal((n, o, h, wd)).astype(np.float32)
    ref = conv3x3_input_grad_reference(dy, w)
    scale = conv3x3_input_grad_reference(np.abs(dy), np.abs(w))
    dx = _C.winograd_conv3x3_backward_input(dy, w, m)
    assert dx.shape == (n, c, h, wd)
    assert np.all(np.abs(dx - ref) <= ERROR_BOUND[m] * (scale + 1e-6 * scale.max()))
    # The rotated transform fed to the forward kernel is the same computation.
    u_bwd = _C.winograd_transform_weights_backward(w, m)
    assert u_bwd.shape == ((m + 2) ** 2, o, c)
    np.testing.assert_array_equal(_C.winograd_conv3x3_forward_transformed(dy, u_bwd), dx)


def test_input_gradient_rejects_bad_dy():
    _, w, _ = good_args()
    with pytest.raises(ValueError, match=r"dy: expected shape \(\*, 4, \*, \*\)"):
        _C.winograd_conv3x3_backward_input(np.zeros((2, 3, 5, 5), np.float32), w)
    with pytest.raises(TypeError, match="dy"):
        _C.winograd_conv3x3_backward_input(np.zeros((2, 4, 5, 5)), w)
    bad = np.zeros((2, 4, 5, 5), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="dy: contains NaN or Inf"):
        _C.winograd_conv3x3_backward_input(bad, w)
    with pytest.raises(ValueError, match="dy: expected a non-empty"):
        _C.winograd_conv3x3_backward_input(np.zeros((0, 4, 5, 5), np.float32), w)
    with pytest.raises(ValueError, match="m: output tile size must be 2 or 4"):
        _C.winograd_conv3x3_backward_input(np.zeros((2, 4, 5, 5), np.float32), w, 5)


# ---- weight gradient (the forward's bilinear form transposed, summed over tiles) ----

def conv3x3_weight_grad_reference(dy, x):
    """d/dw of sum(y * dy) for y = conv3x3_reference(x, w), in float64: dw[o,c,i,j] =
    sum_n,h,w' dy[n,o,h,w'] * xpad[n,c,h+i,w'+j]."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2, wd + 2))
    xp[:, :, 1:-1, 1:-1] = x
    dw = np.zeros((dy.shape[1], c, 3, 3))
    for i in range(3):
        for j in range(3):
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xp[:, :, i:i + h, j:j + wd],
                                       optimize=True)
    return dw


def winograd_weight_grad(dy, x, m, start=None):
    dw = np.zeros((dy.shape[1], x.shape[1], 3, 3), np.float32) if start is None else start.copy()
    assert _C.winograd_conv3x3_backward_weight(dy, x, dw, m) is None
    return dw


@pytest.mark.parametrize("m", TILE_SIZES)
def test_weight_gradient_matches_finite_differences(m):
    rng = np.random.default_rng(20)
    x, w, _ = random_problem(rng, 2, 3, 5, 6, 4, bias=False)
    dy = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    w64 = w.astype(np.float64)
    fd = numeric_grad(lambda: float(np.sum(conv3x3_reference(x, w64) * dy)), w64)
    np.testing.assert_allclose(winograd_weight_grad(dy, x, m), fd, rtol=1e-4,
                               atol=1e-4 * np.abs(fd).max())


# Odd sizes (partial edge tiles), channel counts off the 16-lane vectors, one pixel, and the
# resnet widths.
WEIGHT_GRAD_SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 4), (3, 17, 9, 6, 20), (2, 40, 8, 8, 33),
                      (4, 16, 32, 32, 16), (2, 64, 16, 16, 64)]


@pytest.mark.parametrize("m", TILE_SIZES)
@pytest.mark.parametrize("shape", WEIGHT_GRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_weight_gradient_matches_reference_on_every_isa(shape, m, isa_limit):
    n, c, h, wd, o = shape
    rng = np.random.default_rng(21)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    dy = rng.standard_normal((n, o, h, wd)).astype(np.float32)
    ref = conv3x3_weight_grad_reference(dy, x)
    # per entry, relative to sum |dy| |x| over the same products, as for the forward
    scale = conv3x3_weight_grad_reference(np.abs(dy), np.abs(x))
    for isa in available_isas():
        isa_limit(isa)
        for threads in (1, 2):
            with num_threads(threads):
                dw = winograd_weight_grad(dy, x, m)
            err = np.abs(dw - ref)
            bound = ERROR_BOUND[m] * (scale + 1e-6 * scale.max())
            assert np.all(err <= bound), (isa, threads, float((err / bound).max()))


@pytest.mark.parametrize("m", TILE_SIZES)
def test_weight_gradient_accumulates_and_is_deterministic(m):
    """dw += like the exact kernel (a network's gradient is summed over its uses), and the
    same inputs give the same bits on the same thread count (fixed tile ranges per thread)."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((8, 32, 12, 12)).astype(np.float32)
    dy = rng.standard_normal((8, 48, 12, 12)).astype(np.float32)
    start = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    for threads in (1, 2):
        with num_threads(threads):
            once = winograd_weight_grad(dy, x, m)
            np.testing.assert_array_equal(winograd_weight_grad(dy, x, m), once)
            np.testing.assert_allclose(winograd_weight_grad(dy, x, m, start), start + once,
                                       rtol=1e-6, atol=1e-6)


def test_weight_gradient_rejects_bad_input():
    x, w, _ = good_args()
    dy = np.zeros((2, 4, 5, 5), np.float32)
    dw = np.zeros(w.shape, np.float32)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, \*, 5, 5\)"):
        _C.winograd_conv3x3_backward_weight(dy[:1], x, dw)
    with pytest.raises(ValueError, match=r"dw: expected shape \(4, 3, 3, 3\)"):
        _C.winograd_conv3x3_backward_weight(dy, x, dw[:3])
    with pytest.raises(TypeError, match="x"):
        _C.winograd_conv3x3_backward_weight(dy, x.astype(np.float64), dw)
    bad = dy.copy()
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(ValueError, match="dy: contains NaN or Inf"):
        _C.winograd_conv3x3_backward_weight(bad, x, dw)
    bad_dw = dw.copy()
    bad_dw[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="dw: contains NaN or Inf"):
        _C.winograd_conv3x3_backward_weight(dy, x, bad_dw)
    with pytest.raises(ValueError, match="x: expected a non-empty"):
        _C.winograd_conv3x3_backward_weight(dy[:0], x[:0], dw)
    with pytest.raises(ValueError, match="m: output tile size must be 2 or 4"):
        _C.winograd_conv3x3_backward_weight(dy, x, dw, 3)
    with pytest.raises(ValueError, match="dw"):
        _C.winograd_conv3x3_backward_weight(dy, x, np.zeros(w.shape, np.float32)[..., ::-1])
    np.testing.assert_array_equal(dw, 0)  # nothing written on any of these


# ---- bad inputs: clear exceptions naming the argument, never a crash ----

def good_args():
    x, w, b = random_problem(np.random.default_rng(7), 2, 3, 5, 5, 4)
    return x, w, b


def test_rejects_wrong_dtypes():
    x, w, b = good_args()
    with pytest.raises(TypeError, match="x"):
        _C.winograd_conv3x3_forward(x.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="w"):
        _C.winograd_conv3x3_forward(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="b"):
        _C.winograd_conv3x3_forward(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        _C.winograd_conv3x3_forward(x.tolist(), w, b)
    with pytest.raises(TypeError, match="u"):
        _C.winograd_conv3x3_forward_transformed(x, _C.winograd_transform_weights(w).astype(
            np.float64), b)


def test_rejects_wrong_shapes():
    x, w, b = good_args()
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 3, \*, \*\)"):
        _C.winograd_conv3x3_forward(x[:, :2].copy(), w, b)
    with pytest.raises(ValueError, match="x: expected a 4-D"):
        _C.winograd_conv3x3_forward(x[0], w, b)
    with pytest.raises(ValueError, match=r"w: expected shape \(\*, \*, 3, 3\)"):
        _C.winograd_conv3x3_forward(x, np.zeros((4, 3, 5, 5), np.float32), b)
    with pytest.raises(ValueError, match=r"b: expected shape \(4\)"):
        _C.winograd_conv3x3_forward(x, w, b[:3].copy())
    with pytest.raises(ValueError, match="u: expected shape"):
        _C.winograd_conv3x3_forward_transformed(x, np.zeros((25, 3, 4), np.float32), b)
    with pytest.raises(ValueError, match=r"residual: expected shape \(2, 4, 5, 5\)"):
        _C.winograd_conv3x3_forward(x, w, b, residual=np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="residual"):
        _C.winograd_conv3x3_forward(x, w, b, residual=np.zeros((2, 4, 5, 5)))


def test_rejects_bad_out_buffers():
    x, w, b = good_args()
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 4, 5, 5\)"):
        _C.winograd_conv3x3_forward(x, w, b, out=np.empty((2, 4, 5, 6), np.float32))
    with pytest.raises(TypeError, match="out"):
        _C.winograd_conv3x3_forward(x, w, b, out=np.empty((2, 4, 5, 5)))
    read_only = np.empty((2, 4, 5, 5), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out: output array is read-only"):
        _C.winograd_conv3x3_forward(x, w, b, out=read_only)
    # A convolution 4 -> 4 whose out is x itself would read overwritten inputs.
    x4 = np.random.default_rng(13).standard_normal((1, 4, 5, 5)).astype(np.float32)
    w4 = np.ones((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        _C.winograd_conv3x3_forward(x4, w4, out=x4)
    both = np.zeros((2, 2, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="out: must be residual itself or not overlap it"):
        _C.winograd_conv3x3_forward(x, w, b, residual=both.reshape(4, 4, 5, 5)[1:3],
                                    out=both.reshape(4, 4, 5, 5)[2:4])


def test_rejects_empty_arrays():
    x, w, b = good_args()
    with pytest.raises(ValueError, match="x: expected a non-empty"):
        _C.winograd_conv3x3_forward(x[:0], w, b)
    with pytest.raises(ValueError, match="x: expected a non-empty"):
        _C.winograd_conv3x3_forward(x[:, :, :0].copy(), w, b)
    with pytest.raises(ValueError, match="w: expected a non-empty"):
        _C.winograd_conv3x3_forward(x, w[:0], b)


def test_rejects_nonfinite_values():
    x, w, b = good_args()
    residual = np.zeros((2, 4, 5, 5), np.float32)
    for name, arr in (("x", x), ("w", w), ("b", b), ("residual", residual)):
        for bad in (np.nan, np.inf):
            args = {"x": x, "w": w, "b": b, "residual": residual}
            args[name] = arr.copy()
            args[name].flat[1] = bad
            with pytest.raises(ValueError, match=f"{name}: contains NaN or Inf"):
                _C.winograd_conv3x3_forward(args["x"], args["w"], args["b"],
                                            residual=args["residual"])


def test_rejects_non_contiguous_arrays():
    x, w, b = good_args()
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _C.winograd_conv3x3_forward(np.asfortranarray(x), w, b)
    with pytest.raises(ValueError, match="w: expected a C-contiguous"):
        _C.winograd_conv3x3_forward(x, np.asfortranarray(w), b)


def test_rejects_unsupported_tile_size():
    x, w, b = good_args()
    with pytest.raises(ValueError, match="m: output tile size must be 2 or 4, got 3"):
        _C.winograd_conv3x3_forward(x, w, b, 3)
    with pytest.raises(ValueError, match="m: output tile size must be 2 or 4, got 6"):
        _C.winograd_transform_weights(w, 6)


def test_weight_gradient_with_a_smaller_openmp_team_than_asked():
    """OpenMP may give a parallel region fewer threads than asked (OMP_THREAD_LIMIT, nesting):
    the tiles and the per-thread partial sums are split by the team actually running, so no
    uninitialised partial sum is added in."""
    code = (
        "import numpy as np, dtkd\n"
        "from dtkd import _C\n"
        "dtkd.set_num_threads(2)\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((4, 32, 12, 12)).astype(np.float32)\n"
        "dy = rng.standard_normal((4, 32, 12, 12)).astype(np.float32)\n"
        "dw = np.zeros((32, 32, 3, 3), np.float32)\n"
        "ex = np.zeros_like(dw)\n"
        "_C.winograd_conv3x3_backward_weight(dy, x, dw, 4)\n"
        "_C.conv3x3_backward_weight(dy, x, ex)\n"
        "print(float(np.abs(dw - ex).max() / np.abs(ex).max()))\n")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4


@pytest.mark.parametrize("n_threads", [1, 2])
def test_input_scan_sees_every_element_and_the_magnitude_of_negatives(n_threads):
    """The inputs' NaN/Inf check and max |x| (for the Winograd range) are one integer max over
    the float bits, in parallel chunks past 32768 values: a bad value in the last element, a
    NaN with its sign bit set, and a large negative value are all seen."""
    x = np.zeros((3, 16, 40, 40), np.float32)  # 76,800 values: the chunked, parallel scan
    u = _C.winograd_transform_weights(np.full((16, 16, 3, 3), 1e-3, np.float32), 4)
    with num_threads(n_threads):
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            x.flat[-1] = bad
            with pytest.raises(ValueError, match="x: contains NaN or Inf"):
                _C.winograd_conv3x3_forward_transformed(x, u)
        x.flat[-1] = -3e37  # max |x| is a magnitude: negative values count
        with pytest.raises(ValueError, match=r"x: max \|x\| = 3e\+37 is beyond"):
            _C.winograd_conv3x3_forward_transformed(x, u)
        x.flat[-1] = -1.5
        x.flat[40000] = -0.0
        y = _C.winograd_conv3x3_forward_transformed(x, u)
        assert np.isfinite(y).all() and np.abs(y).max() > 0
