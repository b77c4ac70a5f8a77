"""The ImageNet-style ResNets adapted to CIFAR, with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/resnetv2.py): ``ResNet18`` (BasicBlock,
2-2-2-2) and ``ResNet50`` (Bottleneck, 3-4-6-3).

conv1 3x3 (-> 64 channels, stride 1) + bn1 + ReLU, then layer1..layer4 (planes 64, 128, 256,
512; strides 1, 2, 2, 2), a global average pool and ``linear``. A BasicBlock is
relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); a Bottleneck is 1x1 -> 3x3 (stride) -> 1x1
(4 x planes) with BN after each, ReLU after the first two, and the same residual tail. The
shortcut is ``shortcut.0`` (1x1 conv, stride) + ``shortcut.1`` (BN) when the stride or the
width changes, else the identity (mdistiller's empty Sequential: no keys). Convolutions have no
bias and start from kaiming_normal (fan_out, relu); BN 1/0; ``linear`` like PyTorch's Linear
default.
"""
import functools

import numpy as np

from .. import nn
from ..nn import init
from ..nn.fused import conv_bn
from ._input import check_images


def _shortcut(in_planes, out_planes, stride, rng):
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False, rng=rng),
                         nn.BatchNorm2d(out_planes))


def _tail(conv, bn, h, shortcut, x):
    """relu(bn(conv(h)) + shortcut(x)): the residual add and ReLU in the BN's pass (training)
    or in the folded conv's epilogue (eval under no_grad)."""
    if shortcut is None:
        return conv_bn(conv, bn, h, residual=x, relu=True)
    residual = conv_bn(shortcut[0], shortcut[1], x)
    return conv_bn(conv, bn, h, residual=residual, relu=True, overwrite_residual=True)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_planes, planes, stride, rng):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, rng)

    def forward(self, x):
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        return _tail(self.conv2, self.bn2, h, self.shortcut, x)

    def backward(self, grad_out):
        d_out, d_sum = self.bn2.backward(grad_out)  # through the ReLU; d_sum: the residual's
        dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(d_out)))
        np.add(dx, d_sum if self.shortcut is None else self.shortcut.backward(d_sum), out=dx)
        return dx


class Bottleneck(nn.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)); conv2 has the stride."""

    expansion = 4

    def __init__(self, in_planes, planes, stride, rng):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False, rng=rng)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride, rng)

    def forward(self, x):
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        h = conv_bn(self.conv2, self.bn2, h, relu=True)
        return _tail(self.conv3, self.bn3, h, self.shortcut, x)

    def backward(self, grad_out):
        d_out, d_sum = self.bn3.backward(grad_out)
        d = self.bn2.backward(self.conv3.backward(d_out))
        dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(d)))
        np.add(dx, d_sum if self.shortcut is None else self.shortcut.backward(d_sum), out=dx)
        return dx


# name -> (block, blocks per layer)
ARCHS = {
    "ResNet18": (BasicBlock, (2, 2, 2, 2)),
    "ResNet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNetV2(nn.Module):
    """mdistiller's ``resnetv2.ResNet``. ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits, need_dx=False)`` -> dL/dx or None."""

    def __init__(self, block, num_blocks, num_classes=100, in_channels=3, rng=None):
        super().__init__()
        rng = init.get_rng(rng)
        self.block, self.num_blocks = block, tuple(num_blocks)
        self.num_classes, self.in_channels = num_classes, in_channels
        self._in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(64)
        for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, num_blocks[i], stride, rng))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(512 * block.expansion, num_classes, rng=rng)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data[...] = init.kaiming_normal(m.weight.data.shape, rng, mode="fan_out")

    def _make_layer(self, planes, blocks, stride, rng):
        layers = []
        for i in range(blocks):
            layers.append(self.block(self._in_planes, planes, stride if i == 0 else 1, rng))
            self._in_planes = planes * self.block.expansion
        return nn.Sequential(*layers)

    def check_input(self, x):
        """Raise a clear error unless x is a finite float32 C-contiguous (N, C, H, W) batch
        of at least 8x8 (three stride-2 stages before the global average pool)."""
        return check_images(x, self.in_channels, 8, None, "this CIFAR ResNet (three stride-2 "
                            "stages need at least 8x8)")

    def forward(self, x, return_features=False):
        self.check_input(x)
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        feature = self.flatten(self.avgpool(h))
        logits = self.linear(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits (N, num_classes). Returns dL/dx when ``need_dx``, else None."""
        d = self.avgpool.backward(self.flatten.backward(self.linear.backward(grad_logits)))
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(self.layer4.backward(d))))
        return self.conv1.backward(self.bn1.backward(d), need_dx=need_dx)

    def extra_repr(self):
        return (f"block={self.block.__name__}, num_blocks={self.num_blocks}, "
                f"num_classes={self.num_classes}")


def resnetv2(name, num_classes=100, in_channels=3, rng=None):
    block, num_blocks = ARCHS[name]
    return ResNetV2(block, num_blocks, num_classes=num_classes, in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(resnetv2, name) for name in ARCHS}
