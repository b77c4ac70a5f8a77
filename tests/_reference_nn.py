"""Independent NumPy float64 references of the nn ops and of mdistiller's CIFAR ResNet
forward, for the tests: slow, plain and obviously right (forward only; gradients are checked
by central finite differences through these)."""
import numpy as np


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), groups=1):
    """x (N, C, H, W), w (O, C/groups, kh, kw) -> (N, O, Ho, Wo): a sum over kernel offsets."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    og = o // groups
    y = np.zeros((n, o, ho, wo))
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def batchnorm2d_train(x, gamma, beta, eps=1e-5):
    """Normalise with the batch statistics (biased variance). Returns (y, mean, unbiased_var)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    y = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps)
    y = y * np.asarray(gamma, np.float64)[:, None, None] + np.asarray(beta, np.float64)[:, None, None]
    return y, mean, var * count / (count - 1)


def batchnorm2d_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    rm = np.asarray(running_mean, np.float64)[:, None, None]
    rv = np.asarray(running_var, np.float64)[:, None, None]
    y = (np.asarray(x, np.float64) - rm) / np.sqrt(rv + eps)
    return y * np.asarray(gamma, np.float64)[:, None, None] + np.asarray(beta, np.float64)[:, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def _pool_windows(x, k, s, p, pad_value):
    """(N, C, Ho, Wo, k, k) windows of x padded with pad_value."""
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return win[:, :, ::s, ::s]


def maxpool2d(x, k, s, p):
    return _pool_windows(x, k, s, p, -np.inf).max(axis=(4, 5))


def avgpool2d(x, k, s, p):
    """count_include_pad=True: every window divides by k*k."""
    return _pool_windows(x, k, s, p, 0.0).sum(axis=(4, 5)) / (k * k)


def global_avgpool(x):
    return np.asarray(x, np.float64).mean(axis=(2, 3))


def linear(x, w, b=None):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if b is None else y + np.asarray(b, np.float64)


def resnet_forward(state, x, depth, training):
    """mdistiller's CIFAR ResNet (BasicBlock, depth 6n+2) from a state dict of arrays, written
    from the architecture description: conv1/bn1/relu, layer1..3 (strides 1, 2, 2; shortcut
    conv1x1+BN under `downsample` when present), AvgPool2d(8), fc. Returns (logits, feature)."""
    def bn(h, prefix):
        if training:
            return batchnorm2d_train(h, state[prefix + ".weight"], state[prefix + ".bias"])[0]
        return batchnorm2d_eval(h, state[prefix + ".weight"], state[prefix + ".bias"],
                                state[prefix + ".running_mean"], state[prefix + ".running_var"])

    n_blocks = (depth - 2) // 6
    h = relu(bn(conv2d(x, state["conv1.weight"], padding=(1, 1)), "bn1"))
    for layer, layer_stride in ((1, 1), (2, 2), (3, 2)):
        for i in range(n_blocks):
            p = f"layer{layer}.{i}"
            stride = layer_stride if i == 0 else 1
            out = relu(bn(conv2d(h, state[p + ".conv1.weight"], stride=(stride, stride), padding=(1, 1)), p + ".bn1"))
            out = bn(conv2d(out, state[p + ".conv2.weight"], padding=(1, 1)), p + ".bn2")
            if p + ".downsample.0.weight" in state:
                shortcut = bn(conv2d(h, state[p + ".downsample.0.weight"], stride=(stride, stride)),
                              p + ".downsample.1")
            else:
                shortcut = h
            h = relu(out + shortcut)
    feature = avgpool2d(h, 8, 8, 0).reshape(h.shape[0], -1)
    return linear(feature, state["fc.weight"], state["fc.bias"]), feature


def central_difference(f, array, index, eps=1e-6):
    """d f() / d array[index] by central differences, perturbing the float64 array in place."""
    old = array[index]
    array[index] = old + eps
    up = f()
    array[index] = old - eps
    down = f()
    array[index] = old
    return (up - down) / (2 * eps)


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
