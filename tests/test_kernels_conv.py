"""conv2d kernels (csrc/kernels/conv.c) against an independent float64 NumPy reference,
central finite differences of that reference, and torch.nn.functional.conv2d when importable."""
import numpy as np
import pytest

from dtkd import _C

# threads: 1 and 2; with 2, N >= 2 takes the images-in-parallel path
from kernel_testing import assert_grad_close, numeric_grad, rand, threads  # noqa: F401 (fixture)

# (N, C, H, W, O, KH, KW, stride_h, stride_w, pad_h, pad_w, groups): each exercises one path
GEOMETRIES = {
    "3x3_s1_p1": (3, 4, 7, 6, 5, 3, 3, 1, 1, 1, 1, 1),
    "3x3_s2_p1": (2, 3, 8, 9, 4, 3, 3, 2, 2, 1, 1, 1),
    # stride-2 rows long enough for the vectorized gather / scatter-add (19 outputs: vectors and
    # a remainder), and rows whose last read is the last float of x (no padding, odd width)
    "3x3_s2_wide_rows": (2, 3, 10, 37, 4, 3, 3, 2, 2, 1, 1, 1),
    "3x3_s2_p0_reads_to_the_end": (2, 3, 9, 17, 4, 3, 3, 2, 2, 0, 0, 1),
    "1x1_s1_direct": (3, 6, 5, 4, 7, 1, 1, 1, 1, 0, 0, 1),
    "1x1_s2_shortcut": (2, 4, 7, 7, 6, 1, 1, 2, 2, 0, 0, 1),
    "grouped": (2, 6, 6, 5, 4, 3, 3, 1, 1, 1, 1, 2),
    "grouped_1x1_direct": (2, 6, 5, 5, 9, 1, 1, 1, 1, 0, 0, 3),
    "depthwise": (2, 5, 6, 7, 5, 3, 3, 1, 1, 1, 1, 5),
    "depthwise_mult2_s2": (2, 3, 7, 6, 6, 3, 3, 2, 2, 1, 1, 3),
    # csrc/kernels/depthwise.c (3x3 s1 p1, one output per channel): a row of 21 leaves a vector
    # remainder on every ISA
    "depthwise3x3_padded_rows": (2, 3, 9, 21, 3, 3, 3, 1, 1, 1, 1, 3),
    "rect_kernel_mixed": (2, 3, 6, 8, 4, 2, 3, 1, 2, 0, 1, 1),
    "kernel_fills_input": (2, 2, 3, 3, 3, 5, 5, 1, 1, 1, 1, 1),
    "single_image": (1, 4, 6, 6, 3, 3, 3, 1, 1, 1, 1, 1),
    # 16x16 outputs: two images per GEMM block, and N=5 leaves a partial last block
    "image_blocks_remainder": (5, 2, 16, 16, 3, 3, 3, 1, 1, 1, 1, 1),
}


def conv2d_reference(x, w, b, sh, sw, ph, pw, groups):
    """Direct convolution in float64: one einsum per kernel tap and group."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    Og = O // groups
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    y = np.zeros((N, O, OH, OW))
    for g in range(groups):
        for kh in range(KH):
            for kw in range(KW):
                patch = xp[:, g * Cg:(g + 1) * Cg, kh:kh + sh * OH:sh, kw:kw + sw * OW:sw]
                y[:, g * Og:(g + 1) * Og] += np.einsum("nchw,oc->nohw", patch,
                                                        w[g * Og:(g + 1) * Og, :, kh, kw])
    if b is not None:
        y += b[None, :, None, None]
    return y


def make_problem(geometry, seed=0):
    N, C, H, W, O, KH, KW, sh, sw, ph, pw, g = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // g, KH, KW)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    return x, w, b, (sh, sw, ph, pw, g)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_conv2d_forward_matches_direct_reference(name, threads):
    x, w, b, geo = make_problem(GEOMETRIES[name])
    y = _C.conv2d_forward(x, w, b, *geo)
    ref = conv2d_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), *geo)
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    y_nobias = _C.conv2d_forward(x, w, None, *geo)
    np.testing.assert_allclose(y_nobias, ref - b[None, :, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_conv2d_backward_matches_finite_differences(name, threads):
    x, w, b, geo = make_problem(GEOMETRIES[name], seed=1)
    dy = rand(_C.conv2d_forward(x, w, b, *geo).shape, 2)
    dw = np.zeros_like(w)
    db = np.zeros_like(b)
    dx = _C.conv2d_backward(dy, x, w, *geo, dw, db, True)

    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))

    def loss():
        return float(np.sum(conv2d_reference(x64, w64, b64, *geo) * dy64))

    for analytic, wrt in ((dx, x64), (dw, w64), (db, b64)):
        assert_grad_close(analytic, numeric_grad(loss, wrt))


def test_conv2d_backward_accumulates_and_skips_dx():
    x, w, b, geo = make_problem(GEOMETRIES["3x3_s1_p1"])
    dy = np.ones(_C.conv2d_forward(x, w, b, *geo).shape, np.float32)
    dw1, db1 = np.zeros_like(w), np.zeros_like(b)
    _C.conv2d_backward(dy, x, w, *geo, dw1, db1, False)
    dw2, db2 = np.full_like(w, 0.5), np.full_like(b, -2.0)
    assert _C.conv2d_backward(dy, x, w, *geo, dw2, db2, False) is None
    np.testing.assert_allclose(dw2, dw1 + 0.5, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db2, db1 - 2.0, rtol=1e-6, atol=1e-5)
    # dw=None and db=None: only dx is produced
    dx = _C.conv2d_backward(dy, x, w, *geo, None, None, True)
    assert dx.shape == x.shape


def test_conv2d_weight_gradient_is_deterministic_across_calls(threads):
    x, w, b, geo = make_problem((8, 8, 10, 10, 8, 3, 3, 1, 1, 1, 1, 1))
    dy = rand((8, 8, 10, 10), 3)
    results = []
    for _ in range(3):
        dw = np.zeros_like(w)
        _C.conv2d_backward(dy, x, w, *geo, dw, None, False)
        results.append(dw)
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("name", GEOMETRIES)
def test_conv2d_matches_torch(name, threads):
    torch = pytest.importorskip("torch", reason="torch not installed: equivalence test skipped")
    F = torch.nn.functional
    x, w, b, (sh, sw, ph, pw, g) = make_problem(GEOMETRIES[name], seed=4)
    xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, stride=(sh, sw), padding=(ph, pw), groups=g)
    dy = rand(tuple(yt.shape), 5)
    yt.backward(torch.from_numpy(dy))
    y = _C.conv2d_forward(x, w, b, sh, sw, ph, pw, g)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _C.conv2d_backward(dy, x, w, sh, sw, ph, pw, g, dw, db, True)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("C,O,H,stride", [(32, 64, 32, 1), (64, 128, 16, 2), (64, 64, 8, 1)],
                         ids=["layer1", "layer2_down", "layer3_blocked"])
def test_conv2d_resnet_shapes_match_torch(C, O, H, stride, threads):
    """resnet8x4 layer shapes (batch 16 to stay quick): im2col + sgemm at realistic sizes, one
    image per GEMM (32x32) and several stacked per GEMM (8x8)."""
    torch = pytest.importorskip("torch", reason="torch not installed: equivalence test skipped")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    x = rng.standard_normal((16, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((O, C, 3, 3)) * 0.05).astype(np.float32)
    xt, wt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(w).requires_grad_(True)
    yt = F.conv2d(xt, wt, None, stride=stride, padding=1)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    y = _C.conv2d_forward(x, w, None, stride, stride, 1, 1, 1)
    dw = np.zeros_like(w)
    dx = _C.conv2d_backward(dy, x, w, stride, stride, 1, 1, 1, dw, None, True)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-4, atol=2e-3)


# ---- bad input: a clear exception that names the argument, never a crash ----------------------

def good():
    x, w, b, _ = make_problem((2, 4, 6, 6, 6, 3, 3, 1, 1, 1, 1, 2))
    return x, w, b


def test_conv2d_rejects_wrong_dtype():
    x, w, b = good()
    with pytest.raises(TypeError, match="x: expected dtype numpy.float32, got numpy.float64"):
        _C.conv2d_forward(x.astype(np.float64), w, b, 1, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="w"):
        _C.conv2d_forward(x, w.astype(np.float16), b, 1, 1, 1, 1, 2)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        _C.conv2d_forward(x.tolist(), w, b, 1, 1, 1, 1, 2)


def test_conv2d_rejects_wrong_ndim():
    x, w, b = good()
    with pytest.raises(ValueError, match="x: expected a 4-D array"):
        _C.conv2d_forward(x[0], w, b, 1, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="b: expected a 1-D array, got 2-D"):
        _C.conv2d_forward(x, w, b[:, None], 1, 1, 1, 1, 2)


def test_conv2d_rejects_channel_mismatch():
    x, w, b = good()
    expected = r"w: expected w.shape\[1\] == C/groups = 4 \(x has C=4 channels, groups=1\)"
    with pytest.raises(ValueError, match=expected):
        _C.conv2d_forward(x, w, b, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="b: expected shape"):
        _C.conv2d_forward(x, w, b[:5], 1, 1, 1, 1, 2)


def test_conv2d_rejects_groups_not_dividing_channels():
    x, w, b = good()
    with pytest.raises(ValueError, match="groups: 3 does not divide the 4 input channels"):
        _C.conv2d_forward(x, w, b, 1, 1, 1, 1, 3)
    x3 = np.zeros((2, 3, 6, 6), np.float32)
    w3 = np.zeros((4, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="groups: 3 does not divide the 4 output channels"):
        _C.conv2d_forward(x3, w3, None, 1, 1, 1, 1, 3)
    with pytest.raises(ValueError, match="groups: must be >= 1"):
        _C.conv2d_forward(x, w, b, 1, 1, 1, 1, 0)


def test_conv2d_rejects_kernel_larger_than_padded_input():
    x = np.zeros((1, 2, 3, 3), np.float32)
    w = np.zeros((2, 2, 7, 7), np.float32)
    with pytest.raises(ValueError, match="w: kernel 7x7 is larger than the padded input"):
        _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1)


def test_conv2d_rejects_bad_stride_and_padding():
    x, w, b = good()
    with pytest.raises(ValueError, match="stride_h: must be >= 1"):
        _C.conv2d_forward(x, w, b, 0, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="pad_w: must be >= 0"):
        _C.conv2d_forward(x, w, b, 1, 1, 1, -1, 2)


@pytest.mark.parametrize("arg", ["x", "w", "b"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_conv2d_rejects_nonfinite(arg, bad):
    arrays = dict(zip("xwb", good()))
    arrays[arg].flat[3] = bad
    with pytest.raises(ValueError, match=f"{arg}: contains NaN or Inf"):
        _C.conv2d_forward(arrays["x"], arrays["w"], arrays["b"], 1, 1, 1, 1, 2)


def test_conv2d_rejects_non_contiguous_and_empty():
    x, w, b = good()
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _C.conv2d_forward(np.zeros((2, 4, 6, 12), np.float32)[..., ::2], w, b, 1, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="x: empty array"):
        _C.conv2d_forward(np.zeros((0, 4, 6, 6), np.float32), w, b, 1, 1, 1, 1, 2)


def test_conv2d_backward_rejects_bad_gradient_buffers():
    x, w, b = good()
    dy = np.zeros((2, 6, 6, 6), np.float32)
    with pytest.raises(ValueError, match="dy: expected shape"):
        _C.conv2d_backward(np.zeros((2, 6, 5, 6), np.float32), x, w, 1, 1, 1, 1, 2, None, None, True)
    with pytest.raises(ValueError, match="dw: expected shape"):
        _C.conv2d_backward(dy, x, w, 1, 1, 1, 1, 2, np.zeros((6, 4, 3, 3), np.float32), None, True)
    with pytest.raises(TypeError, match="db: expected dtype numpy.float32"):
        _C.conv2d_backward(dy, x, w, 1, 1, 1, 1, 2, None, np.zeros(6), True)
    readonly = np.zeros_like(w)
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="dw: output array is read-only"):
        _C.conv2d_backward(dy, x, w, 1, 1, 1, 1, 2, readonly, None, True)


def test_conv2d_random_geometries_match_reference():
    """Property test: any valid geometry (kernel, stride, padding, groups) matches the reference
    forward, and the backward satisfies the adjoint identity <dy, conv(x)> = <dx, x> (no bias)
    and <dy, conv(x)> = <dw, w> for conv's bilinearity."""
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(N=st.integers(1, 3), groups=st.integers(1, 3), cg=st.integers(1, 3),
                      og=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9),
                      KH=st.integers(1, 4), KW=st.integers(1, 4), sh=st.integers(1, 3),
                      sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
                      seed=st.integers(0, 2 ** 16))
    def check(N, groups, cg, og, H, W, KH, KW, sh, sw, ph, pw, seed):
        hypothesis.assume(H + 2 * ph >= KH and W + 2 * pw >= KW)
        C, O = groups * cg, groups * og
        geo = (sh, sw, ph, pw, groups)
        x, w, b, _ = make_problem((N, C, H, W, O, KH, KW) + geo[:4] + (groups,), seed)
        y = _C.conv2d_forward(x, w, b, *geo)
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        np.testing.assert_allclose(y, conv2d_reference(x64, w64, b.astype(np.float64), *geo),
                                   rtol=1e-5, atol=1e-5)
        dy = rand(y.shape, seed + 1)
        dw = np.zeros_like(w)
        dx = _C.conv2d_backward(dy, x, w, *geo, dw, None, True)
        inner = float(np.sum(conv2d_reference(x64, w64, None, *geo) * dy))
        np.testing.assert_allclose(float(np.sum(dx * x64)), inner, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(np.sum(dw * w64)), inner, rtol=1e-4, atol=1e-4)

    check()
