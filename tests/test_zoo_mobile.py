"""The mobile part of the CIFAR zoo (issue 9): MobileNetV2 (mdistiller's mobile_half),
ShuffleV1, ShuffleV2. Parameter counts, state_dict keys and shapes; each block kind's
gradients against central differences of a float64 NumPy reference; and -- where torch is
importable -- keys, counts and FLOPs, logits, input and parameter gradients and running
statistics equal to PyTorch models of the same architectures (tests/_torch_mobile.py; train and
eval modes, weights copied both ways). The channel concat/split/shuffle kernel against a NumPy
reference, central differences in float64 and torch; bad arguments; the shipped configs'
students."""
import numpy as np
import pytest

import dtkd.models as models
import dtkd.nn as nn
from dtkd import _C
import _reference_nn as ref
from _torch_mobile import torch_model
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


# -- blocks: gradients against finite differences of float64 NumPy references ---------------

def block_reference(kind, state, x, training):
    """The block's forward in float64 from its state dict, written from the architecture."""
    def bn(h, key):
        if training:
            return ref.batchnorm2d_train(h, state[key + ".weight"], state[key + ".bias"])[0]
        return ref.batchnorm2d_eval(h, state[key + ".weight"], state[key + ".bias"],
                                    state[key + ".running_mean"], state[key + ".running_var"])

    def conv(h, key, stride=1):
        w = state[key + ".weight"]
        groups = h.shape[1] // w.shape[1]
        pad = w.shape[2] // 2
        return ref.conv2d(h, w, stride=(stride, stride), padding=(pad, pad), groups=groups)

    def shuffle(h, g):
        return shuffle_reference(h, g)

    relu = ref.relu
    if kind.startswith("inverted"):
        stride = 2 if kind.endswith("s2") else 1
        h = relu(bn(conv(x, "conv.0"), "conv.1"))
        h = relu(bn(conv(h, "conv.3", stride), "conv.4"))
        h = bn(conv(h, "conv.6"), "conv.7")
        return h + x if stride == 1 else h
    if kind.startswith("v1"):
        g = 3
        h = shuffle(relu(bn(conv(x, "conv1"), "bn1")), g)
        stride = 2 if kind.endswith("s2") else 1
        h = bn(conv(relu(bn(conv(h, "conv2", stride), "bn2")), "conv3"), "bn3")
        if stride == 2:
            return relu(np.concatenate([h, ref.avgpool2d(x, 3, 2, 1)], 1))
        return relu(h + x)
    if kind == "v2_down":
        left = relu(bn(conv(bn(conv(x, "conv1", 2), "bn1"), "conv2"), "bn2"))
        right = bn(conv(relu(bn(conv(x, "conv3"), "bn3")), "conv4", 2), "bn4")
        return shuffle(np.concatenate([left, relu(bn(conv(right, "conv5"), "bn5"))], 1), 2)
    c = x.shape[1] // 2  # v2_basic
    h = bn(conv(relu(bn(conv(x[:, c:], "conv1"), "bn1")), "conv2"), "bn2")
    return shuffle(np.concatenate([x[:, :c], relu(bn(conv(h, "conv3"), "bn3"))], 1), 2)


def make_block(kind, rng):
    from dtkd.models import mobilenetv2, shufflenetv1, shufflenetv2
    return {"inverted_s1": lambda: (mobilenetv2.InvertedResidual(4, 4, 1, 2, rng), 4),
            "inverted_s2": lambda: (mobilenetv2.InvertedResidual(4, 6, 2, 2, rng), 4),
            "v1_s1": lambda: (shufflenetv1.Bottleneck(12, 12, 1, 3, rng), 12),
            "v1_s2": lambda: (shufflenetv1.Bottleneck(12, 12, 2, 3, rng), 12),
            "v2_down": lambda: (shufflenetv2.DownBlock(4, 8, rng), 4),
            "v2_basic": lambda: (shufflenetv2.BasicBlock(8, rng), 8)}[kind]()


@pytest.mark.parametrize("kind", ["inverted_s1", "inverted_s2", "v1_s1", "v1_s2", "v2_down",
                                  "v2_basic"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_gradients_match_finite_differences(kind, training):
    rng = np.random.default_rng(7)
    block, channels = make_block(kind, rng)
    for key, p in block.named_parameters():
        if p.data.ndim == 1:  # BN affine parameters away from (1, 0)
            p.data[...] += rng.standard_normal(p.data.shape).astype(np.float32) * 0.2
    for key, b in block.named_buffers():
        if key.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif key.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    block.train(training)
    x = rng.standard_normal((2, channels, 5, 5)).astype(np.float32)
    if kind.startswith("v1"):
        # a Bottleneck's input is a ReLU output; kept off 0, where finite differences straddle
        # the kink of the ReLU after the shortcut's pooling
        x = np.abs(x) + np.float32(0.05)
    state = {k: v.astype(np.float64) for k, v in block.state_dict().items()}
    y = block(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, block_reference(kind, state, x64, training), rtol=1e-4, atol=1e-4)
    dy = rng.standard_normal(y.shape)
    block.zero_grad()
    dx = block.backward(dy.astype(np.float32))

    def loss():
        return float(np.sum(block_reference(kind, state, x64, training) * dy))

    # central differences at up to 24 entries of x and of each parameter (seconds, not minutes)
    for analytic, wrt, what in [(dx, x64, "x")] + [(p.grad, state[k], k)
                                                   for k, p in block.named_parameters()]:
        picked = rng.choice(wrt.size, size=min(24, wrt.size), replace=False)
        numeric = np.array([ref.central_difference(loss, wrt, np.unravel_index(i, wrt.shape))
                            for i in picked])
        scale = max(1.0, np.abs(numeric).max())
        np.testing.assert_allclose(analytic.reshape(-1)[picked], numeric, rtol=1e-3,
                                   atol=1e-4 * scale, err_msg=what)


# -- PyTorch models of the same architectures (tests/_torch_mobile.py) ----------------------
#
# Every ReLU there goes through relu(t, key), key naming the dtkd module that applies it. Deep networks training BatchNorm on
# small batches amplify float32 rounding: a pre-activation within rounding of zero lands on
# opposite sides in two correct implementations (torch float32 and float64 themselves differ by
# 0.3-4% in dx here). So, as in tests/test_models.py, the PyTorch model runs in float64 with
# dtkd's ReLU masks (checked to agree with its own signs almost everywhere), and both compute
# the same branch: gradients must then agree to float32 accuracy.


class MaskedReLU:
    """relu(t, key) multiplying by where dtkd's ReLU at `key` passed its input in the last
    forward (the output a fusing BatchNorm or a ReLU module keeps for backward), counting sign
    disagreements with t."""

    def __init__(self, torch, model):
        self.torch, self.modules = torch, dict(model.named_modules())
        self.disagreements = self.elements = 0
        self.keys = set()

    def __call__(self, t, key):
        m = self.modules[key]
        y = m._saved if isinstance(m, nn.ReLU) else m._saved[4]
        mask = self.torch.from_numpy((y > 0).astype(np.float64))
        self.keys.add(key)
        self.disagreements += int(((t > 0).double() != mask).sum())
        self.elements += mask.numel()
        return t * mask


def flops_of_torch_model(torch, tm):
    """2 x MACs of every Conv2d / Linear for one 32x32 image, from forward hooks."""
    total = []

    def hook(module, inputs, output):
        total.append(output.numel() * int(np.prod(module.weight.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in tm.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        tm.eval()(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return 2 * sum(total)


def assert_close_float32(actual, desired, what, model_scale=0.0):
    """rtol 1e-4 plus an absolute slack of 1e-4 of the tensor's largest entry (float32 sums),
    and of 1e-7 of the model's largest gradient: a BatchNorm bias followed by a convolution
    and a training-mode BatchNorm has a gradient that is zero in exact arithmetic (the mean is
    subtracted again), so both sides hold rounding noise there."""
    desired = np.asarray(desired)
    atol = 1e-4 * max(np.abs(desired).max(), 1e-6) + 1e-7 * model_scale
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=atol, err_msg=what)


@pytest.mark.parametrize("name", MOBILE)
def test_counts_keys_and_flops_equal_pytorch(name):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    m, tm = models.create(name, num_classes=100), torch_model(torch, name, 100)
    tsd = tm.state_dict()
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in tsd.items()]
    assert models.count_parameters(m) == sum(p.numel() for p in tm.parameters())
    assert models.count_flops(m) == flops_of_torch_model(torch, tm)


@pytest.mark.parametrize("name", MOBILE)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_pytorch(name, training):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    rng = np.random.default_rng(4)
    m = models.create(name, num_classes=10, seed=4)
    for key, b in m.named_buffers():  # non-trivial running statistics for eval
        if key.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif key.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    for key, p in m.named_parameters():  # BN affine parameters away from (1, 0)
        if p.data.ndim == 1 and not key.startswith(("linear", "classifier")):
            p.data[...] += rng.standard_normal(p.data.shape).astype(np.float32) * 0.1
    initial = {k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()}
    m2 = models.create(name, num_classes=10, seed=99)  # weights also torch -> dtkd
    m2.load_state_dict(torch_model(torch, name, 10).state_dict())  # (another model's first)
    m2.load_state_dict(initial)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    dlogits = (rng.standard_normal((4, 10)) / 4).astype(np.float32)
    for model in (m, m2):
        model.train(training)
        logits = model(x)
        relu = MaskedReLU(torch, model)
        tm = torch_model(torch, name, 10, relu)
        tm.load_state_dict(initial, strict=True)
        tm = tm.double().train(training)
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        logits_t = tm(xt)
        logits_t.backward(torch.from_numpy(dlogits.astype(np.float64)))
        assert relu.disagreements <= 1e-5 * relu.elements, (relu.disagreements, relu.elements)
        assert_close_float32(logits, logits_t.detach().numpy(), "logits")
        model.zero_grad()
        dx = model.backward(dlogits, need_dx=True)
        assert_close_float32(dx, xt.grad.numpy(), "dx")
        tparams, tbufs = dict(tm.named_parameters()), dict(tm.named_buffers())
        scale = max(np.abs(p.grad.numpy()).max() for p in tparams.values())
        for key, p in model.named_parameters():
            assert_close_float32(p.grad, tparams[key].grad.numpy(), key, scale)
        for key, b in model.named_buffers():
            np.testing.assert_allclose(b, tbufs[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


# -- the shipped configs' students ------------------------------------------------------------

MOBILE_CONFIGS = [f"cifar100/{method}/{pair}.yaml" for method in ("vanilla", "kd", "dkd", "dtkd")
                  for pair in ("res32x4_shuv1", "res32x4_shuv2", "res50_mv2", "vgg13_mv2",
                               "wrn40_2_shuv1")]


def test_shipped_configs_build_their_students_and_take_a_distillation_step():
    from types import SimpleNamespace

    from dtkd import distill
    from dtkd.config import load_config, shipped_configs
    from dtkd.engine.build import build_model
    cifar100 = SimpleNamespace(num_classes=100, image_shape=(32, 32, 3))
    paths = [p for p in MOBILE_CONFIGS if p in set(shipped_configs())]  # not every method
    assert {p for p in MOBILE_CONFIGS if "/dtkd/" in p} <= set(paths)  # has every pair
    students = {}
    for path in paths:
        cfg = load_config(path)
        name = cfg.DISTILLER.STUDENT
        assert name in MOBILE, path
        students.setdefault(name, build_model(name, cifar100, seed=0))
    assert set(students) == set(MOBILE)
    # one DTKD step per student, a resnet8x4 teacher (the configs' teachers are other helpers')
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 100, size=4)
    cfg = load_config("cifar100/dtkd/res32x4_shuv1.yaml")
    teacher = models.create("resnet8x4", seed=1)
    for name, student in students.items():
        stats = distill.from_config(cfg, student, teacher).train_step(x, y, epoch=30)
        assert np.isfinite(stats["loss"]), name
        grads = [p.grad for p in student.parameters()]
        assert all(np.isfinite(g).all() for g in grads) and any(np.abs(g).max() > 0 for g in grads)
