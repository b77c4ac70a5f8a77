"""ShuffleNet V2 for CIFAR with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/ShuffleNetv2.py): ``ShuffleV2`` is its
net_size 1, out_channels (116, 232, 464, 1024), blocks (3, 7, 3).

conv1 (1x1, 24 channels) + bn1 + ReLU; layer1..3, each a DownBlock then BasicBlocks; conv2 (1x1
to 1024) + bn2 + ReLU, 4x4 average pooling, ``linear``. A BasicBlock splits the channels in
halves (x1, x2) and returns shuffle_2(cat(x1, relu(bn3(conv3(bn2(conv2(relu(bn1(conv1(x2))))))))))
with conv2 depthwise 3x3. A DownBlock concatenates two stride-2 branches, left
relu(bn2(conv2(bn1(conv1(x))))) (conv1 depthwise) and right
relu(bn5(conv5(bn4(conv4(relu(bn3(conv3(x)))))))) (conv4 depthwise), then shuffles with 2
groups. The split, concatenation and shuffle are one plane-gather kernel call
(dtkd.nn.channels). PyTorch's default initialisation (no re-init).
"""
import functools

import numpy as np

from .. import nn
from ..nn.channels import channel_slice, concat_shuffle, concat_shuffle_backward
from ..nn.fused import conv_bn
from ._input import check_images

# name -> (out_channels, num_blocks): mdistiller's configs[1]
ARCHS = {"ShuffleV2": ((116, 232, 464, 1024), (3, 7, 3))}


def _conv(cin, cout, rng, k=1, stride=1, depthwise=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=cin if depthwise else 1,
                     bias=False, rng=rng)


class BasicBlock(nn.Module):
    def __init__(self, in_channels, rng, split_ratio=0.5):
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = _conv(c, c, rng)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = _conv(c, c, rng, k=3, depthwise=True)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = _conv(c, c, rng)
        self.bn3 = nn.BatchNorm2d(c)
        self._saved = None

    def forward(self, x):
        channels = x.shape[1]
        c = int(channels * self.split_ratio)
        h = conv_bn(self.conv1, self.bn1, channel_slice(x, c, channels), relu=True)
        h = conv_bn(self.conv3, self.bn3, conv_bn(self.conv2, self.bn2, h), relu=True)
        self._save_for_backward((x.shape, c))
        return concat_shuffle([(x, 0, c), h], 2)

    def backward(self, grad_out):
        shape, c = self._saved_for_backward(self._saved)
        self._saved = None
        dx = np.empty(shape, dtype=np.float32)
        _, dh = concat_shuffle_backward(grad_out, [(dx, 0, c), shape[1] - c], 2)
        dh = self.bn2.backward(self.conv3.backward(self.bn3.backward(dh)))
        dx[:, c:] = self.conv1.backward(self.bn1.backward(self.conv2.backward(dh)))
        return dx


class DownBlock(nn.Module):
    def __init__(self, in_channels, out_channels, rng):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = _conv(in_channels, in_channels, rng, k=3, stride=2, depthwise=True)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = _conv(in_channels, mid, rng)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(in_channels, mid, rng)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, rng, k=3, stride=2, depthwise=True)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid, rng)
        self.bn5 = nn.BatchNorm2d(mid)
        self._mid = mid

    def forward(self, x):
        left = conv_bn(self.conv2, self.bn2, conv_bn(self.conv1, self.bn1, x), relu=True)
        right = conv_bn(self.conv3, self.bn3, x, relu=True)
        right = conv_bn(self.conv5, self.bn5, conv_bn(self.conv4, self.bn4, right), relu=True)
        return concat_shuffle([left, right], 2)

    def backward(self, grad_out):
        d_left, d_right = concat_shuffle_backward(grad_out, [self._mid, self._mid], 2)
        dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(self.bn2.backward(d_left))))
        d = self.conv4.backward(self.bn4.backward(self.conv5.backward(self.bn5.backward(d_right))))
        np.add(dx, self.conv3.backward(self.bn3.backward(d)), out=dx)
        return dx


class ShuffleNetV2(nn.Module):
    """mdistiller's CIFAR ShuffleNetV2. ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits, need_dx=False)``."""

    def __init__(self, out_channels, num_blocks, num_classes=100, in_channels=3, rng=None):
        super().__init__()
        rng = nn.init.get_rng(rng)
        self.out_channels, self.num_blocks = tuple(out_channels), tuple(num_blocks)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = _conv(in_channels, 24, rng)
        self.bn1 = nn.BatchNorm2d(24)
        self._channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0], rng)
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1], rng)
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2], rng)
        self.conv2 = _conv(out_channels[2], out_channels[3], rng)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AvgPool2d(4)  # F.avg_pool2d(out, 4)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(out_channels[3], num_classes, rng=rng)

    def _make_layer(self, out_channels, num_blocks, rng):
        layers = [DownBlock(self._channels, out_channels, rng)]
        layers += [BasicBlock(out_channels, rng) for _ in range(num_blocks)]
        self._channels = out_channels
        return nn.Sequential(*layers)

    def check_input(self, x):
        """Three stride-2 stages leave a 4..7 px map, pooled 4x4 to 1x1 as in PyTorch, for
        25..56 px inputs."""
        return check_images(x, self.in_channels, 25, 56, "ShuffleV2 (sizes 25..56 work; it is built for 32x32)")

    def forward(self, x, return_features=False):
        self.check_input(x)
        h = conv_bn(self.conv1, self.bn1, x, relu=True)
        h = self.layer3(self.layer2(self.layer1(h)))
        h = conv_bn(self.conv2, self.bn2, h, relu=True)
        feature = self.flatten(self.avgpool(h))
        logits = self.linear(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits; returns dL/dx when ``need_dx``, else None."""
        d = self.avgpool.backward(self.flatten.backward(self.linear.backward(grad_logits)))
        d = self.conv2.backward(self.bn2.backward(d))
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(d)))
        return self.conv1.backward(self.bn1.backward(d), need_dx=need_dx)

    def extra_repr(self):
        return (f"out_channels={self.out_channels}, num_blocks={self.num_blocks}, "
                f"num_classes={self.num_classes}")


def shufflenetv2(name, num_classes=100, in_channels=3, rng=None):
    out_channels, num_blocks = ARCHS[name]
    return ShuffleNetV2(out_channels, num_blocks, num_classes=num_classes,
                        in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(shufflenetv2, name) for name in ARCHS}
