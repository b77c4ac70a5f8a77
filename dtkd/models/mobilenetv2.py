"""MobileNetV2 for CIFAR with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/mobilenetv2.py); ``MobileNetV2`` is its
``mobile_half`` (expansion T = 6, width multiplier 0.5), the name its cifar_model_dict uses.

conv1 (3x3 stride 2 + BN + ReLU, 16 channels), then blocks.0..6 of InvertedResidual blocks
(t, c, n, s) = (1, 16*w, 1, 1), (T, 24w, 2, 1), (T, 32w, 3, 2), (T, 64w, 4, 2), (T, 96w, 3, 1),
(T, 160w, 3, 2), (T, 320w, 1, 1); conv2 (1x1 + BN + ReLU to 1280), AvgPool2d over the 2x2 map,
classifier.0 (Linear). A block is ``conv`` = 1x1 expand + BN + ReLU, 3x3 depthwise (stride s) +
BN + ReLU, 1x1 project + BN (indices 0..7 as in PyTorch's Sequential; the ReLUs hold no
parameters), plus the input when the stride is 1 and the width is kept. mdistiller keeps the
1x1 expansion even when t = 1, and uses ReLU (not ReLU6). Convolutions are initialised
N(0, 2 / (k*k*out)), BN weight 1 / bias 0, the classifier N(0, 0.01) with zero bias.
"""
import functools
import math

import numpy as np

from .. import nn
from ..nn.fused import conv_bn
from ._input import check_images

# (expansion (T for the placeholder), channels at width 1, blocks, first stride)
SETTING = ((1, 16, 1, 1), ("T", 24, 2, 1), ("T", 32, 3, 2), ("T", 64, 4, 2), ("T", 96, 3, 1),
           ("T", 160, 3, 2), ("T", 320, 1, 1))
# name -> (T, width multiplier): mdistiller's mobile_half
ARCHS = {"MobileNetV2": (6, 0.5)}


class InvertedResidual(nn.Module):
    """``conv`` = pw 1x1 + BN + ReLU, dw 3x3 + BN + ReLU, pw-linear 1x1 + BN; + x when
    ``use_res_connect`` (stride 1, inp == oup)."""

    def __init__(self, inp, oup, stride, expand_ratio, rng):
        super().__init__()
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False, rng=rng), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False,
                      rng=rng),
            nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, bias=False, rng=rng), nn.BatchNorm2d(oup))

    def forward(self, x):
        c = self.conv
        h = conv_bn(c[0], c[1], x, relu=True)
        h = conv_bn(c[3], c[4], h, relu=True)
        return conv_bn(c[6], c[7], h, residual=x if self.use_res_connect else None)

    def backward(self, grad_out):
        c = self.conv
        d = c[7].backward(grad_out)
        d, d_res = d if self.use_res_connect else (d, None)
        dx = c[0].backward(c[1].backward(c[3].backward(c[4].backward(c[6].backward(d)))))
        if d_res is not None:
            np.add(dx, d_res, out=dx)
        return dx


class MobileNetV2(nn.Module):
    """mdistiller's CIFAR MobileNetV2. ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits, need_dx=False)``."""

    def __init__(self, T, width_mult, num_classes=100, in_channels=3, rng=None):
        super().__init__()
        rng = nn.init.get_rng(rng)
        self.T, self.width_mult = T, width_mult
        self.num_classes, self.in_channels = num_classes, in_channels
        channels = int(32 * width_mult)
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2, padding=1, bias=False, rng=rng),
            nn.BatchNorm2d(channels), nn.ReLU())
        stages = []
        for t, c, n, s in SETTING:
            out = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, s if i == 0 else 1,
                                               T if t == "T" else t, rng))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(nn.Conv2d(channels, self.last_channel, 1, bias=False, rng=rng),
                                   nn.BatchNorm2d(self.last_channel), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes, rng=rng))
        self.avgpool = nn.AvgPool2d(2)  # mdistiller: AvgPool2d(32 // 16, ceil_mode=True)
        self.flatten = nn.Flatten()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data[...] = rng.normal(0.0, math.sqrt(2.0 / k), m.weight.data.shape)
            elif isinstance(m, nn.Linear):
                m.weight.data[...] = rng.normal(0.0, 0.01, m.weight.data.shape)
                m.bias.data[...] = 0.0

    def check_input(self, x):
        """Four stride-2 stages leave a 2x2 map (what the pooling expects) for 17..32 px."""
        return check_images(x, self.in_channels, 17, 32, "MobileNetV2 (sizes 17..32 work; it is built for 32x32)")

    def forward(self, x, return_features=False):
        self.check_input(x)
        h = conv_bn(self.conv1[0], self.conv1[1], x, relu=True)
        h = self.blocks(h)
        h = conv_bn(self.conv2[0], self.conv2[1], h, relu=True)
        feature = self.flatten(self.avgpool(h))
        logits = self.classifier(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits; returns dL/dx when ``need_dx``, else None."""
        d = self.avgpool.backward(self.flatten.backward(self.classifier.backward(grad_logits)))
        d = self.blocks.backward(self.conv2[0].backward(self.conv2[1].backward(d)))
        return self.conv1[0].backward(self.conv1[1].backward(d), need_dx=need_dx)

    def extra_repr(self):
        return f"T={self.T}, width_mult={self.width_mult}, num_classes={self.num_classes}"


def mobilenetv2(name, num_classes=100, in_channels=3, rng=None):
    T, width = ARCHS[name]
    return MobileNetV2(T, width, num_classes=num_classes, in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(mobilenetv2, name) for name in ARCHS}
