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
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j],
                                                       optimize=True)  # BLAS: same sum, faster
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
