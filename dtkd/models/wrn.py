"""Wide ResNets with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/wrn.py): pre-activation blocks.

depth = 6n + 4, widen factor k: conv1 3x3 (-> 16 channels), then block1..block3, each a
``layer`` of n BasicBlocks (widths 16k, 32k, 64k; strides 1, 2, 2), then bn1 + ReLU,
AvgPool2d(8) and fc. A block pre-activates its input, h = relu(bn1(x)), and returns
``conv2(relu(bn2(conv1(h)))) + shortcut``: the shortcut is x itself when the width is
unchanged, else ``convShortcut(h)`` (a 1x1 conv without BN, on the pre-activated input).
Convolutions have no bias and start from N(0, 2 / (kh * kw * out_channels)) (kaiming,
fan_out); BN weight 1, bias 0; fc weight like PyTorch's Linear default, bias 0. mdistiller's
dropRate is 0 for every CIFAR WRN it builds, so there is no dropout.
"""
import functools

import numpy as np

from .. import nn
from ..nn import init
from ..nn.fused import conv_bn
from ._input import check_images

# name -> (depth, widen factor)
ARCHS = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


class BasicBlock(nn.Module):
    """Pre-activation block: h = relu(bn1(x)); conv2(relu(bn2(conv1(h)))) + (x or convShortcut(h))."""

    def __init__(self, in_planes, out_planes, stride, rng):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False, rng=rng)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, bias=False, rng=rng)

    def forward(self, x):
        h = self.bn1(x, relu=True)
        out = self.conv2(conv_bn(self.conv1, self.bn2, h, relu=True))
        np.add(out, x if self.equalInOut else self.convShortcut(h), out=out)
        return out

    def backward(self, grad_out):
        d_h = self.conv1.backward(self.bn2.backward(self.conv2.backward(grad_out)))
        if self.equalInOut:
            dx = self.bn1.backward(d_h)
            np.add(dx, grad_out, out=dx)  # the identity shortcut
            return dx
        np.add(d_h, self.convShortcut.backward(grad_out), out=d_h)
        return self.bn1.backward(d_h)


class NetworkBlock(nn.Module):
    """``layer``: nb_layers BasicBlocks; the first changes the width and takes the stride."""

    def __init__(self, nb_layers, in_planes, out_planes, stride, rng):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, rng)
            for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)

    def backward(self, grad_out):
        return self.layer.backward(grad_out)


class WideResNet(nn.Module):
    """mdistiller's CIFAR WRN-depth-k. ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits, need_dx=False)`` -> dL/dx or None."""

    def __init__(self, depth, widen_factor, num_classes=100, in_channels=3, rng=None):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet: depth must be 6n+4 (n >= 1), got {depth}")
        rng = init.get_rng(rng)
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor = depth, widen_factor
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, rng=rng)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, rng)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, rng)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, rng)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes, rng=rng)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data[...] = init.kaiming_normal(m.weight.data.shape, rng, mode="fan_out")
        self.fc.bias.data[...] = 0.0

    def check_input(self, x):
        """Raise a clear error unless x is a finite float32 C-contiguous (N, C, H, W) batch
        this model accepts (the map before AvgPool2d(8) must be 8..15 wide: 29..60 px)."""
        return check_images(x, self.in_channels, 29, 60, "this CIFAR WRN (it pools the 8x8 map "
                            "of a 32x32 input; sizes 29..60 work)")

    def forward(self, x, return_features=False):
        self.check_input(x)
        h = self.block3(self.block2(self.block1(self.conv1(x))))
        feature = self.flatten(self.avgpool(self.bn1(h, relu=True)))
        logits = self.fc(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits (N, num_classes). Returns dL/dx when ``need_dx``, else None."""
        d = self.bn1.backward(self.avgpool.backward(self.flatten.backward(self.fc.backward(grad_logits))))
        d = self.block1.backward(self.block2.backward(self.block3.backward(d)))
        return self.conv1.backward(d, need_dx=need_dx)

    def extra_repr(self):
        return f"depth={self.depth}, widen_factor={self.widen_factor}, num_classes={self.num_classes}"


def wrn(name, num_classes=100, in_channels=3, rng=None):
    depth, widen_factor = ARCHS[name]
    return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(wrn, name) for name in ARCHS}
