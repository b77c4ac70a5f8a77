"""CIFAR ResNets with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/resnet.py).

depth = 6n + 2: conv1 3x3 + bn1 + relu, then layer1..layer3 of n BasicBlocks with strides
1, 2, 2, then AvgPool2d(8) and fc. A block's shortcut is a 1x1 conv + BN (``downsample.0`` /
``downsample.1``) when the stride or the width changes, else the identity. Convolutions have no
bias and are initialised with kaiming_normal (fan_out, relu); BN weight 1, bias 0; fc like
PyTorch's Linear default. (mdistiller's blocks also return the pre-ReLU sum of the last block
for feature distillers; dtkd's methods need only logits and the pooled feature.)
"""
import functools

import numpy as np

from .. import nn
from ..nn import init
from ..nn.fused import conv_bn, folds_batchnorm
from ._input import check_images

# name -> (depth, widths [stem, layer1, layer2, layer3])
ARCHS = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def conv3x3(in_planes, out_planes, stride, rng):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, rng=rng)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut = downsample or identity."""

    def __init__(self, inplanes, planes, stride, downsample, is_last, rng):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride, rng)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, 1, rng)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        if folds_batchnorm(self.bn2):
            # eval under no_grad: BN folded, and ReLU / residual add + ReLU in the conv epilogues
            h = conv_bn(self.conv1, self.bn1, x, relu=True)
            if self.downsample is None:
                return conv_bn(self.conv2, self.bn2, h, residual=x, relu=True)
            shortcut = conv_bn(self.downsample[0], self.downsample[1], x)
            return conv_bn(self.conv2, self.bn2, h, residual=shortcut, relu=True,
                           overwrite_residual=True)
        # training: each BatchNorm applies its ReLU (and bn2 the residual add) in its own pass
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        residual = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        return conv_bn(self.conv2, self.bn2, h, residual=residual, relu=True)

    def backward(self, grad_out):
        d_out, d_sum = self.bn2.backward(grad_out)  # through the ReLU; d_sum: the residual's
        dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(d_out)))
        d_shortcut = d_sum if self.downsample is None else self.downsample.backward(d_sum)
        np.add(dx, d_shortcut, out=dx)
        return dx


class ResNet(nn.Module):
    """mdistiller's CIFAR ResNet. ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits)`` -> dL/dx, accumulating parameter grads."""

    def __init__(self, depth, widths, num_classes=100, in_channels=3, rng=None):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet: depth must be 6n+2 for BasicBlock, got {depth}")
        rng = init.get_rng(rng)
        n = (depth - 2) // 6
        self.depth, self.widths = depth, tuple(widths)
        self.num_classes, self.in_channels = num_classes, in_channels
        self._inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(widths[1], n, 1, rng)
        self.layer2 = self._make_layer(widths[2], n, 2, rng)
        self.layer3 = self._make_layer(widths[3], n, 2, rng)
        self.avgpool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes, rng=rng)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data[...] = init.kaiming_normal(m.weight.data.shape, rng, mode="fan_out")
        self._backward_ready = False

    def _make_layer(self, planes, blocks, stride, rng):
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes, 1, stride=stride, bias=False, rng=rng),
                nn.BatchNorm2d(planes))
        layers = [BasicBlock(self._inplanes, planes, stride, downsample, blocks == 1, rng)]
        self._inplanes = planes
        for i in range(1, blocks):
            layers.append(BasicBlock(planes, planes, 1, None, i == blocks - 1, rng))
        return nn.Sequential(*layers)

    def check_input(self, x):
        """Raise a clear error unless x is a finite float32 C-contiguous (N, C, H, W) batch
        this model accepts (the map before AvgPool2d(8) must be 8..15 wide: 29..60 px)."""
        return check_images(x, self.in_channels, 29, 60, "this CIFAR ResNet (it pools the 8x8 "
                            "map of a 32x32 input; sizes 29..60 work)")

    def forward(self, x, return_features=False):
        self.check_input(x)
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        h = self.layer3(self.layer2(self.layer1(h)))
        feature = self.flatten(self.avgpool(h))
        logits = self.fc(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits (N, num_classes). Returns dL/dx when ``need_dx``, else None
        (the input gradient of the first conv is a full extra pass that training never uses)."""
        d = self.avgpool.backward(self.flatten.backward(self.fc.backward(grad_logits)))
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(d)))
        return self.conv1.backward(self.bn1.backward(d), need_dx=need_dx)

    def extra_repr(self):
        return f"depth={self.depth}, widths={self.widths}, num_classes={self.num_classes}"


def resnet(name, num_classes=100, in_channels=3, rng=None):
    depth, widths = ARCHS[name]
    return ResNet(depth, widths, num_classes=num_classes, in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(resnet, name) for name in ARCHS}
