"""Independent NumPy float64 forwards of mdistiller's other CIFAR families (wrn, vgg,
resnetv2), written from the architecture descriptions from a state dict of arrays, for
tests/test_zoo.py (gradients are checked by central finite differences through these)."""
import numpy as np

from _reference_nn import (avgpool2d, batchnorm2d_eval, batchnorm2d_train, conv2d, global_avgpool,
                           linear, maxpool2d, relu)


def _bn(state, h, prefix, training):
    if training:
        return batchnorm2d_train(h, state[prefix + ".weight"], state[prefix + ".bias"])[0]
    return batchnorm2d_eval(h, state[prefix + ".weight"], state[prefix + ".bias"],
                            state[prefix + ".running_mean"], state[prefix + ".running_var"])


def wrn_forward(state, x, depth, training):
    """mdistiller's pre-activation WRN (depth 6n+4) from a state dict, written from the
    architecture: conv1; block1..3 (strides 1, 2, 2) of blocks a = relu(bn1(h)),
    conv2(relu(bn2(conv1(a)))) + (h, or convShortcut(a) when present); relu(bn1), AvgPool2d(8),
    fc. Returns (logits, feature)."""
    h = conv2d(x, state["conv1.weight"], padding=(1, 1))
    for block, block_stride in ((1, 1), (2, 2), (3, 2)):
        for i in range((depth - 4) // 6):
            p = f"block{block}.layer.{i}"
            s = (block_stride, block_stride) if i == 0 else (1, 1)
            a = relu(_bn(state, h, p + ".bn1", training))
            out = relu(_bn(state, conv2d(a, state[p + ".conv1.weight"], stride=s, padding=(1, 1)),
                           p + ".bn2", training))
            out = conv2d(out, state[p + ".conv2.weight"], padding=(1, 1))
            shortcut = (conv2d(a, state[p + ".convShortcut.weight"], stride=s)
                        if p + ".convShortcut.weight" in state else h)
            h = out + shortcut
    h = relu(_bn(state, h, "bn1", training))
    feature = avgpool2d(h, 8, 8, 0).reshape(h.shape[0], -1)
    return linear(feature, state["fc.weight"], state["fc.bias"]), feature


def vgg_forward(state, x, training):
    """mdistiller's VGG (BN variant) from a state dict: per stage b, (conv+bias, BN, ReLU) for
    each conv at Sequential index 3j (BN at 3j+1); 2x2 max-pool after stages 0..2 (and 3 for
    64x64 inputs); global average pool; classifier. Returns (logits, feature)."""
    h = np.asarray(x, np.float64)
    for b in range(5):
        j = 0
        while f"block{b}.{j}.weight" in state:
            p = f"block{b}.{j}"
            h = conv2d(h, state[p + ".weight"], state[p + ".bias"], padding=(1, 1))
            h = relu(_bn(state, h, f"block{b}.{j + 1}", training))
            j += 3
        if b < 3 or (b == 3 and x.shape[2] == 64):
            h = maxpool2d(h, 2, 2, 0)
    feature = global_avgpool(h)
    return linear(feature, state["classifier.weight"], state["classifier.bias"]), feature


def resnetv2_forward(state, x, training):
    """mdistiller's resnetv2 ResNet from a state dict: conv1/bn1/relu; layer1..4 (strides 1, 2,
    2, 2) of BasicBlocks (conv1, conv2) or Bottlenecks (conv1 1x1, conv2 3x3 with the stride,
    conv3 1x1), BN after each conv, ReLU between, shortcut conv1x1+BN under ``shortcut`` when
    present, relu(sum); global average pool; linear. Returns (logits, feature)."""
    h = relu(_bn(state, conv2d(x, state["conv1.weight"], padding=(1, 1)), "bn1", training))
    for layer, layer_stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        i = 0
        while f"layer{layer}.{i}.conv1.weight" in state:
            p = f"layer{layer}.{i}"
            s = (layer_stride, layer_stride) if i == 0 else (1, 1)
            convs = [c for c in (1, 2, 3) if f"{p}.conv{c}.weight" in state]
            strided = 1 if len(convs) == 2 else 2  # BasicBlock: conv1; Bottleneck: conv2 (the 3x3)
            out = h
            for c in convs:
                w = state[f"{p}.conv{c}.weight"]
                stride = s if c == strided else (1, 1)
                pad = (1, 1) if w.shape[2] == 3 else (0, 0)
                out = _bn(state, conv2d(out, w, stride=stride, padding=pad), f"{p}.bn{c}", training)
                if c != convs[-1]:
                    out = relu(out)
            if p + ".shortcut.0.weight" in state:
                shortcut = _bn(state, conv2d(h, state[p + ".shortcut.0.weight"], stride=s),
                               p + ".shortcut.1", training)
            else:
                shortcut = h
            h = relu(out + shortcut)
            i += 1
    feature = global_avgpool(h)
    return linear(feature, state["linear.weight"], state["linear.bias"]), feature
