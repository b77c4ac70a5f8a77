"""The convolution algorithms of dtkd.nn (set_conv_algorithm 'auto' = Winograd for 3x3
stride-1 convs, their weight gradients included on wide layers, 'exact_weight_grad' = the same
with exact weight gradients, 'direct' = im2col + SGEMM): layer accuracy against a float64 reference, whole
models against each other in training and eval, and the eval-mode weight cache never serving
stale weights."""
import numpy as np
import pytest

import dtkd.nn as nn
from dtkd import models
from dtkd.nn.conv import WINOGRAD_WEIGHT_GRAD_MIN_CHANNELS, uses_winograd, uses_winograd_weight_grad
from dtkd.optim import SGD
from kernel_testing import simd_path


def _isa():
    from dtkd import _C
    return _C.cpu_features()["isa"]


@pytest.fixture
def algorithm():
    """Set the algorithm for one test and restore the previous setting afterwards."""
    previous = nn.get_conv_algorithm()
    yield nn.set_conv_algorithm
    nn.set_conv_algorithm(previous)


def conv3x3_reference(x, w):
    """float64 3x3 convolution, stride 1, zero padding 1: y[n,o,i,j] = sum x[n,c,i+di-1,j+dj-1] w[o,c,di,dj]."""
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2, wd + 2))
    xp[:, :, 1:-1, 1:-1] = x
    y = np.zeros((n, w.shape[0], h, wd))
    for di in range(3):
        for dj in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, di:di + h, dj:dj + wd], w[:, :, di, dj])
    return y


def test_set_conv_algorithm_validates_and_selects(algorithm):
    assert nn.get_conv_algorithm() == "auto"
    with pytest.raises(ValueError, match="set_conv_algorithm"):
        algorithm("winograd")
    rng = np.random.default_rng(0)
    eligible = nn.Conv2d(16, 8, 3, padding=1, rng=rng)
    assert uses_winograd(eligible)
    assert not uses_winograd(nn.Conv2d(16, 8, 3, stride=2, padding=1, rng=rng))
    assert not uses_winograd(nn.Conv2d(3, 8, 3, padding=1, rng=rng))  # the stem stays direct
    assert not uses_winograd(nn.Conv2d(16, 8, 1, rng=rng))
    assert not uses_winograd(nn.Conv2d(16, 16, 3, padding=1, groups=2, rng=rng))
    assert not uses_winograd_weight_grad(eligible)  # 8 output channels: the exact sum
    wide = nn.Conv2d(WINOGRAD_WEIGHT_GRAD_MIN_CHANNELS, WINOGRAD_WEIGHT_GRAD_MIN_CHANNELS, 3,
                     padding=1, rng=rng)
    assert uses_winograd_weight_grad(wide)
    assert algorithm("exact_weight_grad") == "auto"
    assert uses_winograd(wide) and not uses_winograd_weight_grad(wide)
    assert algorithm("direct") == "exact_weight_grad"
    assert nn.get_conv_algorithm() == "direct"
    assert not uses_winograd(eligible) and not uses_winograd_weight_grad(wide)


def test_winograd_weight_gradient_of_a_wide_layer_matches_the_exact_one(algorithm):
    """'auto' takes the Winograd weight gradient on a 32 -> 40 channel layer; it equals the
    float64 sum within F(4x4)'s rounding bound (as the forward: 2e-5 of sum |dy||x|), and
    'exact_weight_grad' gives the exact sum on the same layer."""
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(32, 40, 3, padding=1, rng=rng)
    x = rng.standard_normal((3, 32, 9, 11)).astype(np.float32)
    dy = rng.standard_normal((3, 40, 9, 11)).astype(np.float32)
    xp = np.zeros((3, 32, 11, 13))
    xp[:, :, 1:-1, 1:-1] = x
    want, scale = np.zeros((40, 32, 3, 3)), np.zeros((40, 32, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + 9, j:j + 11]
            want[:, :, i, j] = np.einsum("nohw,nchw->oc", dy.astype(np.float64), patch)
            scale[:, :, i, j] = np.einsum("nohw,nchw->oc", np.abs(dy.astype(np.float64)),
                                          np.abs(patch))
    grads = {}
    for algo in ("auto", "exact_weight_grad"):
        algorithm(algo)
        assert uses_winograd_weight_grad(conv) == (algo == "auto")
        conv.zero_grad()
        conv(x)
        conv.backward(dy)
        grads[algo] = conv.weight.grad.copy()
    assert np.all(np.abs(grads["auto"] - want) <= 2e-5 * scale)
    assert np.all(np.abs(grads["exact_weight_grad"] - want) <= 2e-6 * scale)
    assert not np.array_equal(grads["auto"], grads["exact_weight_grad"])


@pytest.mark.parametrize("algo", ["auto", "direct"])
def test_conv_layer_matches_float64_reference_and_finite_differences(algorithm, algo):
    algorithm(algo)
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(16, 24, 3, padding=1, rng=rng)
    assert uses_winograd(conv) == (algo == "auto")
    x = np.abs(rng.standard_normal((2, 16, 9, 11))).astype(np.float32)  # partial edge tiles
    dy = rng.standard_normal((2, 24, 9, 11)).astype(np.float32)
    w64, x64 = conv.weight.data.astype(np.float64), x.astype(np.float64)
    want = conv3x3_reference(x64, w64) + conv.bias.data[None, :, None, None]
    y = conv(x)
    scale = conv3x3_reference(np.abs(x64), np.abs(w64)).max()  # sum |x||w| bounds the rounding
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 * scale)
    dx = conv.backward(dy)

    def loss(x_, w_):
        return np.sum(conv3x3_reference(x_, w_) * dy)
    # the loss is linear in x and w, so central differences are exact up to float64 rounding
    eps = 1e-3
    for idx in [(0, 0, 0, 0), (1, 7, 4, 5), (0, 15, 8, 10), (1, 3, 0, 10)]:
        e = np.zeros_like(x64)
        e[idx] = eps
        fd = (loss(x64 + e, w64) - loss(x64 - e, w64)) / (2 * eps)
        np.testing.assert_allclose(dx[idx], fd, rtol=1e-4, atol=1e-4 * np.abs(dy).sum() / 24)
    for idx in [(0, 0, 0, 0), (23, 15, 2, 2), (5, 9, 1, 0)]:
        e = np.zeros_like(w64)
        e[idx] = eps
        fd = (loss(x64, w64 + e) - loss(x64, w64 - e)) / (2 * eps)
        np.testing.assert_allclose(conv.weight.grad[idx], fd, rtol=1e-5, atol=1e-5 * abs(fd))
    np.testing.assert_allclose(conv.bias.grad, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5)


def close(actual, desired, what):
    """The torch-equivalence tolerance of tests/test_models.py: rtol 1e-4 + 1e-4 of the max."""
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-4 * np.abs(desired).max(),
                               err_msg=what)


@pytest.mark.parametrize("name", ["resnet8x4", "resnet32"])
def test_winograd_model_logits_match_direct_model(algorithm, name):
    """Logits in training and in no_grad eval. (Gradients are compared to float64 PyTorch with
    the ReLU masks pinned, below: between two float32 algorithms a ReLU input within rounding
    of 0 can flip, which moves dx by ~2% of its max — measured 2-3 flips in resnet32.)"""
    rng = np.random.default_rng(2)
    m = models.create(name, seed=2)
    for key, b in m.named_buffers():  # non-trivial running statistics for the eval pass
        if key.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif key.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    state = m.state_dict()
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    out = {}
    for algo in ("auto", "direct"):
        algorithm(algo)
        model = models.create(name, seed=0)
        model.load_state_dict(state)
        train_logits = model.train()(x)
        model.load_state_dict(state)  # the training forward moved the running statistics
        with nn.no_grad():
            out[algo] = train_logits, model.eval()(x)
    close(out["auto"][0], out["direct"][0], "training logits")
    close(out["auto"][1], out["direct"][1], "no_grad eval logits")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_direct_algorithm_matches_float64_pytorch(algorithm, training):
    """tests/test_models.py's PyTorch equivalence (logits, dx and every parameter gradient at
    rtol 1e-4, ReLU masks pinned) under 'direct'; test_models runs it under the default 'auto'
    (Winograd F(4x4) forward and input gradient), so both paths meet the same tolerance."""
    import test_models
    algorithm("direct")
    test_models.test_matches_pytorch("resnet32", training)


def eval_logits_of_fresh_copy(m, x):
    """Eval logits of a new resnet8x4 loaded with m's current state (no cache of its own)."""
    fresh = models.create("resnet8x4", seed=123)
    fresh.load_state_dict(m.state_dict())
    with nn.no_grad():
        return fresh.eval()(x)


def test_eval_cache_never_serves_stale_weights():
    rng = np.random.default_rng(3)
    m = models.create("resnet8x4", seed=3)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)

    def eval_logits():
        with nn.no_grad():
            return m.eval()(x)

    first = eval_logits()
    cached = m.layer1[0].conv2.__dict__["_fold_cache"][1]
    again = eval_logits()
    assert m.layer1[0].conv2.__dict__["_fold_cache"][1] is cached  # unchanged weights: reused
    np.testing.assert_array_equal(again, first)

    # 1. an optimizer step (in-place update of every parameter)
    m.train()
    logits = m(x)
    m.zero_grad()
    m.backward((logits - logits.mean()) / logits.size)
    SGD(m.parameters(), lr=0.5, momentum=0.9).step()  # training also moved the running stats
    after_step = eval_logits()
    assert not np.allclose(after_step, first, rtol=1e-3)
    close(after_step, eval_logits_of_fresh_copy(m, x), "after an SGD step")

    # 2. load_state_dict of other weights
    other = models.create("resnet8x4", seed=4)
    m.load_state_dict(other.state_dict())
    after_load = eval_logits()
    close(after_load, eval_logits_of_fresh_copy(m, x), "after load_state_dict")

    # 3. one element of one conv weight edited in place, then one BN running statistic
    m.layer2[0].conv2.weight.data[3, 5, 1, 1] += 1.0
    after_edit = eval_logits()
    assert not np.array_equal(after_edit, after_load)
    close(after_edit, eval_logits_of_fresh_copy(m, x), "after an in-place weight edit")
    m.layer3[0].bn1.running_var[7] *= 4.0
    after_stats = eval_logits()
    assert not np.array_equal(after_stats, after_edit)
    close(after_stats, eval_logits_of_fresh_copy(m, x), "after a running-statistics change")


def test_fused_block_tail_matches_module_by_module_eval():
    """Under no_grad the blocks fuse BN (folded), residual add and ReLU into the convs; with
    grad enabled in eval mode they run module by module with BatchNorm's eval kernel."""
    rng = np.random.default_rng(5)
    m = models.create("resnet32", seed=5)
    for key, b in m.named_buffers():
        if key.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif key.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    m.eval()
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    unfused = m(x)
    with nn.no_grad():
        fused = m(x)
    close(fused, unfused, "fused eval logits")


def test_conv_bn_residual_relu_in_training_equals_the_layers_one_by_one():
    """In training the BatchNorm applies the residual add and ReLU in its own pass; forward and
    backward equal conv -> bn -> add -> relu run as separate ops."""
    from dtkd.nn.fused import conv_bn
    rng = np.random.default_rng(6)
    conv, bn = nn.Conv2d(16, 16, 3, padding=1, rng=rng), nn.BatchNorm2d(16)
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    r = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    y = conv_bn(conv, bn, x, residual=r, relu=True)
    dz, dr = bn.backward(dy)
    dx = conv.backward(dz)
    grads = [p.grad.copy() for p in (conv.weight, bn.weight, bn.bias)]

    conv2, bn2 = nn.Conv2d(16, 16, 3, padding=1, rng=rng), nn.BatchNorm2d(16)
    conv2.weight.data[...] = conv.weight.data
    conv2.bias.data[...] = conv.bias.data
    s = bn2(conv2(x))
    from dtkd import _C
    ref = _C.add_relu_forward(s, r)
    g = _C.relu_backward(dy, ref)
    ref_dx = conv2.backward(bn2.backward(g))
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dr, g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    for got, p in zip(grads, (conv2.weight, bn2.weight, bn2.bias)):
        np.testing.assert_allclose(got, p.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,c,o,h,w", [
    (3, 16, 16, 8, 8),     # padded-row AVX-512 kernel (O a multiple of 8, thin)
    (2, 5, 8, 7, 9),       # same, odd sizes: partial vectors and row tails
    (2, 16, 12, 5, 5),     # O not a multiple of 8: im2col path
    (1, 64, 64, 9, 9),     # O*C*H*W above the crossover: im2col path
])
@pytest.mark.parametrize("isa", ["native", "scalar"])
def test_conv3x3_backward_weight_matches_float64_reference(n, c, o, h, w, isa):
    if isa == "scalar":  # the portable path (im2col + scalar SGEMM) on every shape
        with simd_path("scalar"):
            check_conv3x3_backward_weight(n, c, o, h, w)
    else:
        check_conv3x3_backward_weight(n, c, o, h, w)


def check_conv3x3_backward_weight(n, c, o, h, w):
    from dtkd import _C
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n, o, h, w)).astype(np.float32)
    xp = np.zeros((n, c, h + 2, w + 2))
    xp[:, :, 1:-1, 1:-1] = x
    want = np.empty((o, c, 3, 3))
    for di in range(3):
        for dj in range(3):
            want[:, :, di, dj] = np.einsum("nohw,nchw->oc", dy.astype(np.float64),
                                           xp[:, :, di:di + h, dj:dj + w])
    start = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    dw = start.copy()
    assert _C.conv3x3_backward_weight(dy, x, dw) is None
    scale = np.einsum("nohw,nchw->oc", np.abs(dy).astype(np.float64), np.abs(x)).max()
    np.testing.assert_allclose(dw, start + want, rtol=0, atol=1e-6 * scale + 1e-6)  # accumulates


def test_conv3x3_backward_weight_rejects_bad_inputs():
    from dtkd import _C
    x = np.ones((2, 4, 5, 5), np.float32)
    dy = np.ones((2, 8, 5, 5), np.float32)
    dw = np.zeros((8, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="x"):
        _C.conv3x3_backward_weight(dy, x.astype(np.float64), dw)
    with pytest.raises(ValueError, match="dy"):
        _C.conv3x3_backward_weight(dy[:, :, :4], x, dw)
    with pytest.raises(ValueError, match="dw"):
        _C.conv3x3_backward_weight(dy, x, np.zeros((8, 4, 3, 2), np.float32))
    with pytest.raises(ValueError, match="x"):
        _C.conv3x3_backward_weight(dy, x[:, :, :, ::-1], dw)
    bad = dy.copy()
    bad[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="dy"):
        _C.conv3x3_backward_weight(bad, x, dw)
    with pytest.raises(ValueError, match="x"):
        _C.conv3x3_backward_weight(dy[:0], x[:0], dw)
