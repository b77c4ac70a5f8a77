"""ShuffleNet V1 for CIFAR with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/ShuffleNetv1.py): ``ShuffleV1`` has
out_planes (240, 480, 960), blocks (4, 8, 4) and 3 groups.

conv1 (1x1, 24 channels) + bn1 + ReLU, layer1..3, 4x4 average pooling, ``linear``. A
Bottleneck: conv1 (grouped 1x1 to out/4 channels; 1 group when the input has 24 channels) + bn1
+ ReLU, channel shuffle, conv2 (3x3 depthwise, stride 2 in a layer's first block) + bn2 + ReLU,
conv3 (grouped 1x1) + bn3; then ReLU of the sum with the input (stride 1) or of the
concatenation with ``shortcut`` = AvgPool2d(3, stride 2, padding 1) of the input (stride 2, the
block's conv3 giving out - in channels). PyTorch's default initialisation (no re-init).
"""
import functools

import numpy as np

from .. import nn
from ..nn.channels import concat_shuffle, concat_shuffle_backward
from ..nn.fused import conv_bn
from ._input import check_images

# name -> (out_planes, num_blocks, groups)
ARCHS = {"ShuffleV1": ((240, 480, 960), (4, 8, 4), 3)}


class Bottleneck(nn.Module):
    def __init__(self, in_planes, out_planes, stride, groups, rng):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=g, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = nn.ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1,
                               groups=mid_planes, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False, rng=rng)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))
            # ReLU of the concatenation = ReLU of each part; the pooled part's (a no-op on the
            # non-negative inputs a block gets, kept so the gradient is PyTorch's exactly)
            self.relu_shortcut = nn.ReLU()
        self._saved = None

    def forward(self, x):
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        if self.shuffle1.groups > 1:
            h = self.shuffle1(h)
        h = conv_bn(self.conv2, self.bn2, h, relu=True)
        if self.stride == 2:
            out = conv_bn(self.conv3, self.bn3, h, relu=True)
            res = self.relu_shortcut(self.shortcut(x))
            self._save_for_backward((out.shape[1], res.shape[1]))
            return concat_shuffle([out, res], 1)
        return conv_bn(self.conv3, self.bn3, h, residual=x, relu=True)

    def backward(self, grad_out):
        if self.stride == 2:
            parts = self._saved_for_backward(self._saved)
            self._saved = None
            d_out, d_res = concat_shuffle_backward(grad_out, parts, 1)
            d_res = self.shortcut.backward(self.relu_shortcut.backward(d_res))
            d = self.bn3.backward(d_out)
        else:
            d, d_res = self.bn3.backward(grad_out)
        d = self.bn2.backward(self.conv3.backward(d))
        d = self.conv2.backward(d)
        if self.shuffle1.groups > 1:
            d = self.shuffle1.backward(d)
        dx = self.conv1.backward(self.bn1.backward(d))
        np.add(dx, d_res, out=dx)
        return dx


class ShuffleNet(nn.Module):
    """mdistiller's CIFAR ShuffleNet (V1). ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits, need_dx=False)``."""

    def __init__(self, out_planes, num_blocks, groups, num_classes=100, in_channels=3, rng=None):
        super().__init__()
        rng = nn.init.get_rng(rng)
        self.out_planes, self.num_blocks, self.groups = tuple(out_planes), tuple(num_blocks), groups
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(24)
        self._in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups, rng)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups, rng)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups, rng)
        self.avgpool = nn.AvgPool2d(4)  # F.avg_pool2d(out, 4)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(out_planes[2], num_classes, rng=rng)

    def _make_layer(self, out_planes, num_blocks, groups, rng):
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self._in_planes if i == 0 else 0
            layers.append(Bottleneck(self._in_planes, out_planes - cat_planes, stride, groups, rng))
            self._in_planes = out_planes
        return nn.Sequential(*layers)

    def check_input(self, x):
        """Three stride-2 stages leave a 4..7 px map, pooled 4x4 to 1x1 as in PyTorch, for
        25..56 px inputs."""
        return check_images(x, self.in_channels, 25, 56, "ShuffleV1 (sizes 25..56 work; it is built for 32x32)")

    def forward(self, x, return_features=False):
        self.check_input(x)
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        h = self.layer3(self.layer2(self.layer1(h)))
        feature = self.flatten(self.avgpool(h))
        logits = self.linear(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits; returns dL/dx when ``need_dx``, else None."""
        d = self.avgpool.backward(self.flatten.backward(self.linear.backward(grad_logits)))
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(d)))
        return self.conv1.backward(self.bn1.backward(d), need_dx=need_dx)

    def extra_repr(self):
        return (f"out_planes={self.out_planes}, num_blocks={self.num_blocks}, "
                f"groups={self.groups}, num_classes={self.num_classes}")


def shufflenetv1(name, num_classes=100, in_channels=3, rng=None):
    out_planes, num_blocks, groups = ARCHS[name]
    return ShuffleNet(out_planes, num_blocks, groups, num_classes=num_classes,
                      in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(shufflenetv1, name) for name in ARCHS}
