"""dtkd.nn: layer forwards against the NumPy float64 reference (tests/_reference_nn.py),
gradients of a small composite network against central finite differences of the reference,
Module bookkeeping (names, buffers, state_dict, train/eval, zero_grad) and bad inputs."""
import numpy as np
import pytest

import dtkd.nn as nn
import _reference_nn as ref


def rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# -- forward of each layer against the reference ----------------------------------------------

@pytest.mark.parametrize("cfg", [
    dict(cin=3, cout=5, k=3, stride=1, pad=1, groups=1, bias=True),
    dict(cin=4, cout=6, k=3, stride=2, pad=1, groups=2, bias=False),
    dict(cin=4, cout=4, k=3, stride=1, pad=1, groups=4, bias=True),   # depthwise
    dict(cin=3, cout=8, k=1, stride=2, pad=0, groups=1, bias=False),  # shortcut 1x1
    dict(cin=2, cout=3, k=(3, 2), stride=(2, 1), pad=(0, 1), groups=1, bias=True),
])
def test_conv2d_forward_matches_reference(cfg):
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], stride=cfg["stride"], padding=cfg["pad"],
                     groups=cfg["groups"], bias=cfg["bias"], rng=rng)
    x = rand(rng, 2, cfg["cin"], 9, 8)
    y = conv(x)
    want = ref.conv2d(x, conv.weight.data, None if conv.bias is None else conv.bias.data,
                      conv.stride, conv.padding, conv.groups)
    assert y.dtype == np.float32 and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_batchnorm2d_train_eval_and_running_stats():
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm2d(3, momentum=0.2)
    bn.weight.data[...] = rand(rng, 3)
    bn.bias.data[...] = rand(rng, 3)
    x = rand(rng, 4, 3, 5, 5, scale=2.0) + 1.0
    y = bn(x)
    want, mean, unbiased_var = ref.batchnorm2d_train(x, bn.weight.data, bn.bias.data)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * unbiased_var, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y_eval = bn(x)
    np.testing.assert_allclose(
        y_eval, ref.batchnorm2d_eval(x, bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var),
        rtol=1e-4, atol=1e-4)
    assert int(bn.num_batches_tracked) == 1  # eval does not count batches


def test_pools_relu_linear_flatten_forward():
    rng = np.random.default_rng(2)
    x = rand(rng, 2, 3, 7, 6)
    np.testing.assert_allclose(nn.MaxPool2d(3, 2, 1)(x), ref.maxpool2d(x, 3, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(nn.MaxPool2d(2)(x), ref.maxpool2d(x, 2, 2, 0), rtol=1e-6)
    np.testing.assert_allclose(nn.AvgPool2d(3, 2, 1)(x), ref.avgpool2d(x, 3, 2, 1), rtol=1e-5, atol=1e-6)
    x8 = rand(rng, 2, 3, 8, 8)
    np.testing.assert_allclose(nn.AvgPool2d(8)(x8), ref.avgpool2d(x8, 8, 8, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(1)(x)[:, :, 0, 0], ref.global_avgpool(x),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(nn.ReLU()(x), ref.relu(x))
    flat = nn.Flatten()(x)
    assert flat.shape == (2, 3 * 7 * 6)
    lin = nn.Linear(flat.shape[1], 4, rng=rng)
    np.testing.assert_allclose(lin(flat), ref.linear(flat, lin.weight.data, lin.bias.data),
                               rtol=1e-4, atol=1e-5)
    assert nn.Identity()(x) is x


# -- gradients of a composite network against finite differences of the reference ------------

def build_composite(rng):
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False, rng=rng),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AvgPool2d(3, 1, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5, rng=rng),
    )


def composite_reference(state, x, training):
    """The same network written with the reference ops; state holds float64 arrays."""
    def bn(h, p):
        if training:
            return ref.batchnorm2d_train(h, state[p + ".weight"], state[p + ".bias"])[0]
        return ref.batchnorm2d_eval(h, state[p + ".weight"], state[p + ".bias"],
                                    state[p + ".running_mean"], state[p + ".running_var"])
    h = ref.relu(bn(ref.conv2d(x, state["0.weight"], state["0.bias"], padding=(1, 1)), "1"))
    h = ref.maxpool2d(h, 2, 2, 0)
    h = ref.relu(bn(ref.conv2d(h, state["4.weight"], None, (2, 2), (1, 1), groups=2), "5"))
    h = ref.global_avgpool(ref.avgpool2d(h, 3, 1, 1))
    return ref.linear(h, state["10.weight"], state["10.bias"])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_composite_gradients_match_finite_differences(training):
    rng = np.random.default_rng(3)
    net = build_composite(rng)
    for name, b in net.named_buffers():  # non-trivial running stats for the eval case
        if name.endswith("running_mean"):
            b[...] = rand(rng, *b.shape, scale=0.1)
        elif name.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    net.train(training)
    x = rand(rng, 3, 2, 8, 8)
    weights = rng.standard_normal((3, 5))  # loss = sum(weights * logits)

    state = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    logits = net(x)
    np.testing.assert_allclose(logits, composite_reference(state, x, training), rtol=1e-4, atol=1e-4)
    net.zero_grad()
    dx = net.backward(weights.astype(np.float32))

    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(weights * composite_reference(state, x64, training)))
    grads = dict(net.named_parameters())
    for name, p in grads.items():
        flat_idx = rng.choice(p.data.size, size=min(6, p.data.size), replace=False)
        for fi in flat_idx:
            idx = np.unravel_index(fi, p.data.shape)
            fd = ref.central_difference(loss, state[name], idx)
            np.testing.assert_allclose(p.grad[idx], fd, rtol=2e-3, atol=2e-4, err_msg=f"{name}{idx}")
    for fi in rng.choice(x.size, size=10, replace=False):
        idx = np.unravel_index(fi, x.shape)
        fd = ref.central_difference(loss, x64, idx)
        np.testing.assert_allclose(dx[idx], fd, rtol=2e-3, atol=2e-4, err_msg=f"x{idx}")


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(4)
    net = build_composite(rng).eval()  # eval: the second forward sees the same statistics
    x = rand(rng, 2, 2, 8, 8)
    dy = rand(rng, 2, 5)
    net(x)
    net.backward(dy)
    once = {n: p.grad.copy() for n, p in net.named_parameters()}
    net(x)
    net.backward(dy)
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-5, atol=1e-6, err_msg=n)
    net.zero_grad()
    assert all(not p.grad.any() for p in net.parameters())


def test_backward_before_forward_raises():
    rng = np.random.default_rng(5)
    for layer, dy in [(nn.Conv2d(2, 3, 3, rng=rng), np.zeros((1, 3, 2, 2), np.float32)),
                      (nn.BatchNorm2d(2), np.zeros((2, 2, 2, 2), np.float32)),
                      (nn.ReLU(), np.zeros(3, np.float32)),
                      (nn.MaxPool2d(2), np.zeros((1, 1, 1, 1), np.float32)),
                      (nn.Linear(2, 3, rng=rng), np.zeros((1, 3), np.float32))]:
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(dy)


def test_backward_grad_shape_checked():
    conv = nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(6))
    conv(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="grad_out"):
        conv.backward(np.zeros((1, 3, 5, 5), np.float32))


# -- Module bookkeeping -------------------------------------------------------------------------

def test_names_buffers_children_like_pytorch():
    net = build_composite(np.random.default_rng(7))
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "5.weight", "5.bias",
                     "10.weight", "10.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "5.running_mean", "5.running_var", "5.num_batches_tracked"]
    assert len(list(net.children())) == 11 and len(list(net.modules())) == 12
    assert all(p.data.dtype == np.float32 and p.grad.shape == p.data.shape for p in net.parameters())
    keys = list(net.state_dict())
    assert keys[:7] == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                        "1.running_var", "1.num_batches_tracked"]


def test_train_eval_flags_propagate():
    net = build_composite(np.random.default_rng(8))
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_state_dict_round_trip_and_errors():
    a = build_composite(np.random.default_rng(9))
    b = build_composite(np.random.default_rng(10))
    x = rand(np.random.default_rng(11), 2, 2, 8, 8)
    a(x)  # moves running stats and num_batches_tracked
    sd = a.state_dict()
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()
    b.load_state_dict(sd)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    # the returned dict is a copy: changing it does not touch the module
    sd["0.weight"][...] = 0
    assert a.state_dict()["0.weight"].any()

    missing = {k: v for k, v in sd.items() if k != "5.running_var"}
    with pytest.raises(KeyError, match="5.running_var"):
        b.load_state_dict(missing)
    with pytest.raises(KeyError, match="extra.weight"):
        b.load_state_dict({**sd, "extra.weight": np.zeros(1)})
    bad_shape = dict(sd, **{"10.weight": np.zeros((5, 7), np.float32)})
    before = b.state_dict()
    with pytest.raises(ValueError, match="10.weight"):
        b.load_state_dict(bad_shape)
    for k, v in b.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])
    result = b.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["5.running_var"] and result.unexpected_keys == []


@pytest.mark.parametrize("make_x, error, match", [
    (lambda: np.zeros((2, 3, 8, 8), np.float32), ValueError, "channels"),
    (lambda: np.zeros((2, 2, 8, 8), np.float64), TypeError, "float32"),
    (lambda: np.zeros((2, 2, 8, 8), np.int32), TypeError, "float32"),
    (lambda: np.zeros((2, 2, 8, 16), np.float32)[:, :, :, ::2], ValueError, "contiguous"),
    (lambda: np.zeros((2, 8, 8), np.float32), ValueError, "4-D"),
    (lambda: [[1.0]], TypeError, "ndarray"),
    (lambda: np.zeros((0, 2, 8, 8), np.float32), ValueError, "empty"),
])
def test_bad_inputs_name_x(make_x, error, match):
    conv = nn.Conv2d(2, 3, 3, rng=np.random.default_rng(12))
    with pytest.raises(error, match=match) as info:
        conv(make_x())
    assert "x" in str(info.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(3, 4, 0)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(3, 4, rng=0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm2d(3, momentum=2.0)
    with pytest.raises(ValueError, match="output_size"):
        nn.AdaptiveAvgPool2d(2)
    with pytest.raises(ValueError, match="batch|value per channel"):
        nn.BatchNorm2d(2)(np.zeros((1, 2, 1, 1), np.float32))


def test_default_init_matches_pytorch_statistics():
    # PyTorch's defaults: weight and bias uniform within +-1/sqrt(fan_in); BN weight 1, bias 0
    conv = nn.Conv2d(16, 32, 3, rng=np.random.default_rng(13))
    bound = 1 / np.sqrt(16 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.9 * bound
    assert np.abs(conv.bias.data).max() <= bound
    lin = nn.Linear(64, 10, rng=np.random.default_rng(14))
    assert np.abs(lin.weight.data).max() <= 1 / 8
    bn = nn.BatchNorm2d(5)
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all()
    a = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(15))
    b = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(15))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)


def test_no_grad_keeps_nothing_for_backward():
    net = build_composite(np.random.default_rng(16))
    x = rand(np.random.default_rng(17), 2, 2, 8, 8)
    with nn.no_grad():
        y = net(x)
    assert all(getattr(m, "_saved", None) is None for m in net.modules())
    with pytest.raises(RuntimeError, match="before forward"):
        net.backward(np.ones_like(y))
    np.testing.assert_array_equal(net.eval()(x), net(x))  # and forwards work as usual after it
