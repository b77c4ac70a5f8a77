"""dtkd.models: mdistiller CIFAR ResNets. Structure and parameter counts, whole-model gradients
(resnet8) against finite differences of the NumPy float64 reference, an overfit run, state_dict
round trip, bad inputs, and -- when torch is importable -- equality
with a PyTorch ResNet written here from the architecture."""
import numpy as np
import pytest

import dtkd.models as models
from dtkd.optim import SGD
import _reference_nn as ref


def widths_and_depth(name):
    depth = int(name[6:].split("x")[0])
    return depth, ((32, 64, 128, 256) if name.endswith("x4") else (16, 16, 32, 64))


def expected_parameter_count(name, num_classes=100, in_channels=3):
    """Counted from the architecture: conv3x3 without bias, BN (2 per channel), 1x1+BN
    shortcut when the width or stride changes, fc with bias."""
    depth, (w0, w1, w2, w3) = widths_and_depth(name)
    n = (depth - 2) // 6
    count = 9 * in_channels * w0 + 2 * w0
    inplanes = w0
    for planes, stride in ((w1, 1), (w2, 2), (w3, 2)):
        for i in range(n):
            count += 9 * inplanes * planes + 2 * planes + 9 * planes * planes + 2 * planes
            if i == 0 and (stride != 1 or inplanes != planes):
                count += inplanes * planes + 2 * planes
            inplanes = planes
    return count + w3 * num_classes + num_classes


def test_names_and_parameter_counts():
    resnets = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
               "resnet8x4", "resnet32x4"]
    assert set(resnets) <= set(models.names())  # the other families: tests/test_zoo.py
    # mdistiller's published counts for 100 classes
    assert models.count_parameters(models.create("resnet8x4")) == 1_233_540
    assert models.count_parameters(models.create("resnet32x4")) == 7_433_860
    for name in resnets:
        assert models.count_parameters(models.create(name)) == expected_parameter_count(name), name
    m = models.create("resnet8", num_classes=10, in_channels=1)
    assert models.count_parameters(m) == expected_parameter_count("resnet8", 10, 1)


def test_state_dict_keys_follow_mdistiller():
    sd = models.create("resnet8x4").state_dict()
    for key, shape in [("conv1.weight", (32, 3, 3, 3)), ("bn1.running_mean", (32,)),
                       ("layer1.0.conv1.weight", (64, 32, 3, 3)),
                       ("layer1.0.downsample.0.weight", (64, 32, 1, 1)),
                       ("layer1.0.downsample.1.num_batches_tracked", ()),
                       ("layer3.0.downsample.1.running_var", (256,)),
                       ("fc.weight", (100, 256)), ("fc.bias", (100,))]:
        assert sd[key].shape == shape, key
    sd8 = models.create("resnet8").state_dict()
    assert "layer1.0.downsample.0.weight" not in sd8  # 16 -> 16, stride 1: identity shortcut
    assert "layer2.0.downsample.0.weight" in sd8


def test_create_checks_arguments_and_is_seeded():
    with pytest.raises(ValueError, match="resnet9"):
        models.create("resnet9")
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet8", num_classes=0)
    a = models.create("resnet8", seed=3).state_dict()
    b = models.create("resnet8", seed=3).state_dict()
    c = models.create("resnet8", seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    # kaiming_normal(fan_out): std sqrt(2 / (out * kh * kw))
    w = models.create("resnet32x4").state_dict()["layer3.1.conv1.weight"]
    assert abs(w.std() - np.sqrt(2 / (256 * 9))) < 0.05 * np.sqrt(2 / (256 * 9))


def test_forward_shapes_and_features():
    m = models.create("resnet8", num_classes=7)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits, feature = m(x, return_features=True)
    assert logits.shape == (2, 7) and feature.shape == (2, 64)
    np.testing.assert_allclose(logits, feature @ m.fc.weight.data.T + m.fc.bias.data, rtol=1e-4, atol=1e-5)


def test_count_flops_matches_hand_count():
    # resnet8 at 32x32: conv MACs per layer = out_elems * in_channels_per_group * k * k
    macs = 32 * 32 * 16 * 27                               # conv1
    macs += 2 * 32 * 32 * 16 * 16 * 9                      # layer1
    macs += 16 * 16 * 32 * 16 * 9 + 16 * 16 * 32 * 32 * 9 + 16 * 16 * 32 * 16   # layer2 + shortcut
    macs += 8 * 8 * 64 * 32 * 9 + 8 * 8 * 64 * 64 * 9 + 8 * 8 * 64 * 32         # layer3 + shortcut
    macs += 64 * 100                                        # fc
    m = models.create("resnet8")
    assert models.count_flops(m) == 2 * macs
    assert m.training  # restored


def softmax_cross_entropy(logits, labels):
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    grad = p.copy()
    grad[np.arange(n), labels] -= 1
    return loss, (grad / n).astype(np.float32)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_resnet8_gradients_match_finite_differences(training):
    rng = np.random.default_rng(1)
    m = models.create("resnet8", num_classes=5, seed=1)
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif name.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    m.train(training)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    weights = rng.standard_normal((2, 5))
    state = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    logits, feature = m(x, return_features=True)
    want_logits, want_feature = ref.resnet_forward(state, x, 8, training)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(feature, want_feature, rtol=1e-3, atol=1e-3)
    m.zero_grad()
    dx = m.backward(weights.astype(np.float32), need_dx=True)

    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(weights * ref.resnet_forward(state, x64, 8, training)[0]))
    params = dict(m.named_parameters())
    checked = ["conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer2.0.bn1.bias",
               "layer2.0.downsample.0.weight", "layer3.0.conv1.weight", "layer3.0.downsample.1.weight",
               "fc.weight", "fc.bias"]
    for name in checked:
        p = params[name]
        for fi in rng.choice(p.data.size, size=2, replace=False):
            idx = np.unravel_index(fi, p.data.shape)
            fd = ref.central_difference(loss, state[name], idx)
            np.testing.assert_allclose(p.grad[idx], fd, rtol=5e-3, atol=5e-4, err_msg=f"{name}{idx}")
    for fi in rng.choice(x.size, size=3, replace=False):
        idx = np.unravel_index(fi, x.shape)
        fd = ref.central_difference(loss, x64, idx)
        np.testing.assert_allclose(dx[idx], fd, rtol=5e-3, atol=5e-4, err_msg=f"x{idx}")


def test_overfit_small_batch():
    rng = np.random.default_rng(2)
    m = models.create("resnet8", num_classes=10, seed=2)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=8)
    opt = SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(30):
        loss, dlogits = softmax_cross_entropy(m(x), y)
        losses.append(loss)
        opt.zero_grad()
        m.backward(dlogits)
        opt.step()
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.2 * losses[0], losses


def test_state_dict_round_trip_gives_same_outputs():
    a = models.create("resnet14", seed=5)
    b = models.create("resnet14", seed=6)
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    a(x)  # training step moves the running statistics
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    with pytest.raises(ValueError, match="fc.weight"):
        models.create("resnet14", num_classes=10).load_state_dict(a.state_dict())


@pytest.mark.parametrize("make_x, error, match", [
    (lambda: np.zeros((2, 1, 32, 32), np.float32), ValueError, "channels"),
    (lambda: np.zeros((2, 3, 16, 16), np.float32), ValueError, "spatial size"),
    (lambda: np.zeros((2, 3, 64, 64), np.float32), ValueError, "spatial size"),
    (lambda: np.zeros((2, 3, 32, 32), np.float64), TypeError, "float32"),
    (lambda: np.zeros((2, 3, 32, 32), np.uint8), TypeError, "float32"),
    (lambda: np.zeros((2, 3, 32, 64), np.float32)[..., ::2], ValueError, "contiguous"),
    (lambda: np.full((2, 3, 32, 32), np.nan, np.float32), ValueError, "NaN"),
    (lambda: np.zeros((3, 32, 32), np.float32), ValueError, "4-D"),
    (lambda: np.zeros((0, 3, 32, 32), np.float32), ValueError, "empty"),
    (lambda: "image", TypeError, "ndarray"),
])
def test_bad_inputs_raise_naming_x(make_x, error, match):
    m = models.create("resnet8")
    with pytest.raises(error, match=match) as info:
        m(make_x())
    assert str(info.value).startswith("x:")


def test_backward_before_forward_raises():
    m = models.create("resnet8")
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.zeros((2, 100), np.float32))


# -- PyTorch equivalence (the model is written here from the architecture) -------------------
#
# Both models are piecewise linear in their ReLUs. A pre-activation within float32 rounding of
# zero (there are a few among the ~1e6 of resnet32) can land on opposite sides in two correct
# implementations, and one such flip moves a BN-coupled gradient by ~1e-3. So the PyTorch
# model runs in float64 with dtkd's ReLU masks (checked to agree with its own signs almost
# everywhere), and both then compute the same branch: gradients must agree to float32 accuracy.

def torch_resnet(torch, depth, widths, num_classes, relu):
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(relu(self.bn1(self.conv1(x)))))
            return relu(out + (x if self.downsample is None else self.downsample(x)))

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv1 = tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(widths[0])
            cin = widths[0]
            for i, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
                blocks = [Block(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)]
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
                cin = cout
            self.fc = tnn.Linear(widths[3], num_classes)

        def forward(self, x):
            h = relu(self.bn1(self.conv1(x)))
            h = self.layer3(self.layer2(self.layer1(h)))
            return self.fc(torch.nn.functional.avg_pool2d(h, 8).flatten(1))

    return Net()


class MaskedReLU:
    """ReLU applying given 0/1 masks in forward order (dtkd's), counting sign disagreements."""

    def __init__(self, torch, masks):
        self.torch, self.masks, self.position = torch, masks, 0
        self.disagreements = self.elements = 0

    def __call__(self, t):
        mask = self.torch.from_numpy(self.masks[self.position].astype(np.float64))
        self.position += 1
        self.disagreements += int(((t > 0).double() != mask).sum())
        self.elements += mask.numel()
        return t * mask


def dtkd_relu_masks(model):
    """Where each ReLU of the last forward passed its input, in forward order (reads the
    outputs the BatchNorms, which apply the ReLUs in training, keep for backward)."""
    relu_output = lambda bn: bn._saved[4]
    masks = [relu_output(model.bn1) > 0]
    for layer in (model.layer1, model.layer2, model.layer3):
        for block in layer:
            masks += [relu_output(block.bn1) > 0, relu_output(block.bn2) > 0]
    return masks


def assert_close_float32(actual, desired, what):
    """rtol 1e-4 plus an absolute slack of 1e-4 of the tensor's largest entry (float32 sums)."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-4 * max(np.abs(desired).max(), 1e-6),
                               err_msg=what)


@pytest.mark.parametrize("name", ["resnet8x4", "resnet32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_pytorch(name, training):
    torch = pytest.importorskip("torch", reason="PyTorch equivalence needs torch")
    rng = np.random.default_rng(4)
    m = models.create(name, num_classes=100, seed=4)
    for key, b in m.named_buffers():  # non-trivial running statistics for eval
        if key.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif key.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    depth, widths = widths_and_depth(name)
    tm_weights = torch_resnet(torch, depth, widths, 100, torch.relu)
    # identical weights both ways: dtkd -> torch here, torch -> dtkd into a fresh model
    tm_weights.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()}, strict=True)
    m2 = models.create(name, num_classes=100, seed=99)
    m2.load_state_dict(tm_weights.state_dict())
    assert list(m2.state_dict()) == list(tm_weights.state_dict())
    initial_state = tm_weights.state_dict()

    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    dlogits = (rng.standard_normal((4, 100)) / 4).astype(np.float32)
    for model in (m, m2):
        model.train(training)
        logits = model(x)
        relu = MaskedReLU(torch, dtkd_relu_masks(model))
        tm = torch_resnet(torch, depth, widths, 100, relu)
        tm.load_state_dict(initial_state)
        tm = tm.double().train(training)
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        logits_t = tm(xt)
        logits_t.backward(torch.from_numpy(dlogits.astype(np.float64)))
        assert relu.disagreements <= 1e-5 * relu.elements, (relu.disagreements, relu.elements)

        assert_close_float32(logits, logits_t.detach().numpy(), "logits")
        model.zero_grad()
        dx = model.backward(dlogits, need_dx=True)
        assert_close_float32(dx, xt.grad.numpy(), "dx")
        tparams = dict(tm.named_parameters())
        for key, p in model.named_parameters():
            assert_close_float32(p.grad, tparams[key].grad.numpy(), key)
        tbufs = dict(tm.named_buffers())
        for key, b in model.named_buffers():
            np.testing.assert_allclose(b, tbufs[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_no_grad_eval_folds_batchnorm_exactly():
    import dtkd.nn as nn
    rng = np.random.default_rng(6)
    m = models.create("resnet8x4", seed=6)
    for key, b in m.named_buffers():
        if key.endswith("running_mean"):
            b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.1
        elif key.endswith("running_var"):
            b[...] = 0.5 + rng.random(b.shape).astype(np.float32)
    for key, p in m.named_parameters():
        if ".bn" in key or "downsample.1" in key or key.startswith("bn1"):
            p.data[...] = rng.standard_normal(p.data.shape).astype(np.float32) * 0.3 + (key.endswith("weight"))
    m.eval()
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = m(x)
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        got = m(x)
    assert nn.is_grad_enabled()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(RuntimeError, match="no_grad"):
        m.backward(np.ones_like(got))
    # in training mode no_grad still uses batch statistics (no folding)
    m.train()
    with nn.no_grad():
        train_logits = m(x)
    assert not np.allclose(train_logits, want, rtol=1e-2)
