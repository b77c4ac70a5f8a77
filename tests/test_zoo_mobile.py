"""The mobile part of the CIFAR zoo (issue 9): MobileNetV2 (mdistiller's mobile_half),
ShuffleV1, ShuffleV2. Parameter counts, state_dict keys and shapes, FLOPs, and -- where torch
is importable -- logits, parameter and input gradients and running statistics equal to PyTorch
models written here from the architecture (train and eval modes, weights copied both ways);
the channel concat/split/shuffle kernel against a NumPy reference, central finite differences
in float64 and torch; bad arguments."""
import numpy as np
import pytest

import dtkd.models as models
import dtkd.nn as nn
from dtkd import _C
from kernel_testing import assert_grad_close, numeric_grad, rand, threads  # noqa: F401 (fixture)

MOBILE = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

# -- channel concat / split / shuffle kernel ------------------------------------------------


def shuffle_reference(x, groups):
    """ShuffleNet's channel shuffle, written with NumPy reshapes (float64 or float32)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


CASES = {  # (part shapes as (channels of the array, start, stop)), N, H, W, groups
    "shuffle_only": ([(12, 0, 12)], 2, 3, 4, 3),
    "concat_only": ([(4, 0, 4), (6, 0, 6)], 3, 2, 5, 1),
    "concat_shuffle_v2": ([(8, 0, 4), (4, 0, 4)], 2, 5, 5, 2),
    "slice_middle": ([(9, 2, 7)], 2, 3, 3, 1),
    "three_parts_groups5": ([(5, 1, 4), (3, 0, 3), (6, 2, 6)], 2, 4, 3, 5),
}


def make_parts(case, seed=0):
    specs, n, h, w, groups = CASES[case]
    arrays = [rand((n, c, h, w), seed + i) for i, (c, _, _) in enumerate(specs)]
    return arrays, specs, groups


@pytest.mark.parametrize("case", CASES)
def test_concat_shuffle_matches_numpy_reference(case, threads):
    arrays, specs, groups = make_parts(case)
    y = nn.concat_shuffle([(a, s, e) for a, (_, s, e) in zip(arrays, specs)], groups)
    want = shuffle_reference(np.concatenate([a[:, s:e] for a, (_, s, e) in zip(arrays, specs)], 1),
                             groups)
    np.testing.assert_array_equal(y, want)
    assert y.flags.c_contiguous and y.dtype == np.float32


@pytest.mark.parametrize("case", CASES)
def test_concat_shuffle_backward_matches_finite_differences(case, threads):
    arrays, specs, groups = make_parts(case, seed=3)
    y_shape = nn.concat_shuffle([(a, s, e) for a, (_, s, e) in zip(arrays, specs)], groups).shape
    dy = rand(y_shape, 9)
    # gradients written into channel ranges of arrays pre-filled with a sentinel: the kernel
    # writes its range and leaves the other channels alone
    outs = [np.full_like(a, 7.0) for a in arrays]
    nn.concat_shuffle_backward(dy, [(o, s, e) for o, (_, s, e) in zip(outs, specs)], groups)
    a64 = [a.astype(np.float64) for a in arrays]
    dy64 = dy.astype(np.float64)

    def loss():
        cat = np.concatenate([a[:, s:e] for a, (_, s, e) in zip(a64, specs)], 1)
        return float(np.sum(shuffle_reference(cat, groups) * dy64))

    for out, a, (_, s, e) in zip(outs, a64, specs):
        assert_grad_close(out[:, s:e], numeric_grad(loss, a)[:, s:e])
        assert (np.delete(out, np.s_[s:e], axis=1) == 7.0).all()
    # counts instead of ranges: new arrays, the inverse permutation of the forward
    grads = nn.concat_shuffle_backward(dy, [e - s for _, s, e in specs], groups)
    for g, out, (_, s, e) in zip(grads, outs, specs):
        np.testing.assert_array_equal(g, out[:, s:e])


def test_channel_shuffle_module_and_slice():
    x = rand((2, 12, 3, 3), 1)
    m = nn.ChannelShuffle(3)
    y = m(x)
    np.testing.assert_array_equal(y, shuffle_reference(x, 3))
    np.testing.assert_array_equal(m.backward(y), x)  # backward = the inverse permutation
    np.testing.assert_array_equal(nn.channel_slice(x, 4, 9), x[:, 4:9])
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(y)


def test_channel_ops_match_torch():
    torch = pytest.importorskip("torch", reason="torch equivalence of the channel ops needs torch")
    a, b = rand((2, 6, 4, 4), 1), rand((2, 10, 4, 4), 2)
    at, bt = (torch.from_numpy(v.copy()).requires_grad_(True) for v in (a, b))
    cat = torch.cat([at[:, 2:], bt], 1)
    yt = cat.reshape(2, 2, 7, 4, 4).permute(0, 2, 1, 3, 4).reshape(2, 14, 4, 4)
    dy = rand((2, 14, 4, 4), 3)
    yt.backward(torch.from_numpy(dy))
    y = nn.concat_shuffle([(a, 2, 6), b], 2)
    da = np.zeros_like(a)
    _, db = nn.concat_shuffle_backward(dy, [(da, 2, 6), 10], 2)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(da, at.grad.numpy())
    np.testing.assert_array_equal(db, bt.grad.numpy())


@pytest.mark.parametrize("call, error, match", [
    (lambda a: _C.concat_shuffle_forward([(a, 0, 4)], 3), ValueError, "groups"),
    (lambda a: _C.concat_shuffle_forward([(a, 0, 4)], 0), ValueError, "groups"),
    (lambda a: _C.concat_shuffle_forward([(a, 3, 6)], 1), ValueError, r"parts\[0\]"),
    (lambda a: _C.concat_shuffle_forward([(a, 0, 0)], 1), ValueError, r"parts\[0\]"),
    (lambda a: _C.concat_shuffle_forward([], 1), ValueError, "parts"),
    (lambda a: _C.concat_shuffle_forward([a], 1), TypeError, r"parts\[0\]"),
    (lambda a: _C.concat_shuffle_forward([(a.astype(np.float64), 0, 4)], 1), TypeError,
     r"parts\[0\]"),
    (lambda a: _C.concat_shuffle_forward([(a, 0, 4), (a[:1].copy(), 0, 4)], 1), ValueError,
     r"parts\[1\]"),
    (lambda a: _C.concat_shuffle_forward([(a[:, :, :, ::2], 0, 4)], 1), ValueError,
     r"parts\[0\]"),
    (lambda a: _C.concat_shuffle_backward(a, [(a, 0, 4)], 1), ValueError, "dy itself"),
    (lambda a: _C.concat_shuffle_backward(a[:, :2].copy(), [(np.empty_like(a), 0, 4)], 1),
     ValueError, "dy"),
    (lambda a: nn.concat_shuffle([(a, 2, 1)]), ValueError, r"parts\[0\]"),
    (lambda a: nn.ChannelShuffle(3)(a), ValueError, "divisible"),
])
def test_channel_ops_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(rand((2, 4, 3, 3), 0))


# -- backbones: structure ---------------------------------------------------------------------

# mdistiller's models at 100 classes (counted from the architecture in the PyTorch models below)
PARAMETERS = {"MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528}


def test_registered_with_parameter_counts():
    assert set(MOBILE) <= set(models.names())
    for name in MOBILE:
        assert models.count_parameters(models.create(name)) == PARAMETERS[name], name


@pytest.mark.parametrize("name, key, shape", [
    ("MobileNetV2", "conv1.0.weight", (16, 3, 3, 3)),
    ("MobileNetV2", "blocks.0.0.conv.0.weight", (16, 16, 1, 1)),   # t = 1 keeps the 1x1 expansion
    ("MobileNetV2", "blocks.1.0.conv.3.weight", (48, 1, 3, 3)),    # 8 x 6, depthwise
    ("MobileNetV2", "blocks.6.0.conv.7.running_var", (160,)),
    ("MobileNetV2", "conv2.1.num_batches_tracked", ()),
    ("MobileNetV2", "classifier.0.weight", (100, 1280)),
    ("ShuffleV1", "layer1.0.conv1.weight", (54, 24, 1, 1)),       # 1 group from the 24-channel stem
    ("ShuffleV1", "layer1.0.conv3.weight", (216, 18, 1, 1)),      # 240 - 24, 3 groups
    ("ShuffleV1", "layer2.0.conv1.weight", (60, 80, 1, 1)),
    ("ShuffleV1", "layer3.3.bn3.weight", (960,)),
    ("ShuffleV1", "linear.weight", (100, 960)),
    ("ShuffleV2", "layer1.0.conv1.weight", (24, 1, 3, 3)),
    ("ShuffleV2", "layer1.0.conv4.weight", (58, 1, 3, 3)),
    ("ShuffleV2", "layer2.7.conv3.weight", (116, 116, 1, 1)),
    ("ShuffleV2", "conv2.weight", (1024, 464, 1, 1)),
    ("ShuffleV2", "linear.bias", (100,)),
])
def test_state_dict_keys_follow_mdistiller(name, key, shape):
    assert models.create(name).state_dict()[key].shape == shape


def test_flops_and_identification():
    # MobileNetV2's stem by hand: 16x16 outputs x 16 channels x 27 MACs
    m = models.create("MobileNetV2")
    stem = 2 * 16 * 16 * 16 * 27
    assert models.count_flops(m) > stem and m.training
    for name in MOBILE:
        sd = models.create(name, num_classes=10).state_dict()
        assert models.identify(sd) == [name]


@pytest.mark.parametrize("name", MOBILE)
def test_bad_inputs_raise_naming_x(name):
    m = models.create(name, num_classes=5)
    for x, error, match in [(np.zeros((2, 3, 8, 8), np.float32), ValueError, "spatial size"),
                            (np.zeros((2, 3, 64, 64), np.float32), ValueError, "spatial size"),
                            (np.zeros((2, 1, 32, 32), np.float32), ValueError, "channels"),
                            (np.full((2, 3, 32, 32), np.inf, np.float32), ValueError, "NaN"),
                            (np.zeros((2, 3, 32, 32)), TypeError, "float32")]:
        with pytest.raises(error, match=match) as info:
            m(x)
        assert str(info.value).startswith("x:")
