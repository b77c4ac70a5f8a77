"""VGG with batch normalisation, with mdistiller's structure and parameter names
(megvii-research/mdistiller, mdistiller/models/cifar/vgg.py; mdistiller registers its ``vgg*_bn``
constructors as ``vgg8`` .. ``vgg19``, and so does dtkd).

Five stages ``block0`` .. ``block4``, each a Sequential of (conv 3x3 with bias, BN, ReLU)
triples whose last ReLU is left out (so a stage's last BN output is the pre-activation feature);
the model applies ReLU after every stage. Between stages ``pool0`` .. ``pool2`` (MaxPool 2x2)
halve the map; ``pool3`` runs only for 64x64 inputs (as in mdistiller); ``pool4`` is a global
average pool and ``classifier`` a Linear(512, num_classes) (512: the last stage's width).
Sequential indices count the ReLUs, so keys read ``block1.3.weight`` for a stage's second
conv, as in PyTorch. Convolutions start from N(0, 2 / (kh * kw * out_channels)) with bias 0,
BN 1/0, the classifier from N(0, 0.01^2) with bias 0.
"""
import functools

import numpy as np

from .. import nn
from ..nn import init
from ..nn.fused import conv_bn
from ._input import check_images

# configuration -> output widths of the convolutions of each stage
CFGS = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
# name -> configuration (mdistiller's vgg8_bn, vgg11_bn, ...)
ARCHS = {"vgg8": "S", "vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def _stage(widths, in_channels, rng):
    layers = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1, rng=rng), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


def _conv_bn_pairs(stage):
    """[(conv, bn), ...] of a stage, in order (the ReLUs between are applied by the BNs)."""
    modules = list(stage)
    return [(modules[i], modules[i + 1]) for i in range(0, len(modules), 3)]


class VGG(nn.Module):
    """mdistiller's CIFAR VGG (BN variant). ``forward(x, return_features=False)`` -> logits, or
    ``(logits, pooled_feature)``; ``backward(dlogits, need_dx=False)`` -> dL/dx or None."""

    def __init__(self, cfg, num_classes=100, in_channels=3, rng=None):
        """``cfg``: a key of ``CFGS`` or, as mdistiller's ``VGG(cfg)``, five tuples of widths."""
        super().__init__()
        rng = init.get_rng(rng)
        widths = CFGS[cfg] if isinstance(cfg, str) else tuple(tuple(int(w) for w in s) for s in cfg)
        if len(widths) != 5 or not all(widths):
            raise ValueError(f"VGG: cfg must name one of {sorted(CFGS)} or give five non-empty "
                             f"tuples of widths, got {cfg!r}")
        self.cfg = cfg
        self.num_classes, self.in_channels = num_classes, in_channels
        previous = in_channels
        for i, stage_widths in enumerate(widths):
            setattr(self, f"block{i}", _stage(stage_widths, previous, rng))
            previous = stage_widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(previous, num_classes, rng=rng)  # 512 for every CFGS entry
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data[...] = init.kaiming_normal(m.weight.data.shape, rng, mode="fan_out")
                m.bias.data[...] = 0.0
        self.classifier.weight.data[...] = (
            rng.standard_normal(self.classifier.weight.data.shape) * 0.01).astype(np.float32)
        self.classifier.bias.data[...] = 0.0
        self._stages = [_conv_bn_pairs(getattr(self, f"block{i}")) for i in range(5)]
        self._pooled3 = False

    def check_input(self, x):
        """Raise a clear error unless x is a finite float32 C-contiguous (N, C, H, W) batch
        of at least 8x8 (three 2x2 max-pools before the global average pool)."""
        return check_images(x, self.in_channels, 8, None, "this CIFAR VGG (three 2x2 max-pools "
                            "need at least 8x8)")

    def _pools(self):
        """The max-pool after each of stages 0..3 (None where there is none)."""
        return [self.pool0, self.pool1, self.pool2, self.pool3 if self._pooled3 else None]

    def forward(self, x, return_features=False):
        self.check_input(x)
        self._pooled3 = x.shape[2] == 64  # mdistiller pools stage 3 for 64x64 (TinyImageNet) only
        h = x
        for pairs, pool in zip(self._stages, self._pools() + [None]):
            for conv, bn in pairs:  # every conv+BN is followed by a ReLU (inside or after the stage)
                h = conv_bn(conv, bn, h, relu=True)
            if pool is not None:
                h = pool(h)
        feature = self.flatten(self.pool4(h))
        logits = self.classifier(feature)
        return (logits, feature) if return_features else logits

    def backward(self, grad_logits, need_dx=False):
        """Backward from dL/dlogits (N, num_classes). Returns dL/dx when ``need_dx``, else None."""
        d = self.pool4.backward(self.flatten.backward(self.classifier.backward(grad_logits)))
        first = self._stages[0][0][0]
        for pairs, pool in reversed(list(zip(self._stages, self._pools() + [None]))):
            if pool is not None:
                d = pool.backward(d)
            for conv, bn in reversed(pairs):
                d = conv.backward(bn.backward(d), need_dx=need_dx or conv is not first)
        return d

    def extra_repr(self):
        return f"cfg={self.cfg!r}, num_classes={self.num_classes}"


def vgg(name, num_classes=100, in_channels=3, rng=None):
    return VGG(ARCHS[name], num_classes=num_classes, in_channels=in_channels, rng=rng)


MODELS = {name: functools.partial(vgg, name) for name in ARCHS}
