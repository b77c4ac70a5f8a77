"""Backbones by mdistiller name. ``create("resnet8x4", num_classes=100)`` builds one with
weights drawn from ``numpy.random.default_rng(seed)``; its ``state_dict`` keys and shapes are
the PyTorch model's.

One registry, name -> constructor (as mdistiller's ``cifar_model_dict``): each family file in
this package defines ``MODELS = {name: constructor(num_classes=, in_channels=, rng=)}`` and
adds itself below with one line. A backbone's ``forward(x, return_features=False)`` returns the
logits (or ``(logits, pooled_feature)``); ``backward(dlogits, need_dx=False)`` accumulates the
parameter gradients and returns dL/dx when asked.
"""
import functools

import numpy as np

from .. import nn
from . import resnet as _resnet
from . import resnetv2 as _resnetv2
from . import vgg as _vgg
from . import wrn as _wrn
from .resnet import BasicBlock, ResNet

__all__ = ["create", "names", "identify", "matches", "count_parameters", "count_flops", "ResNet", "BasicBlock"]

# name -> constructor; one line per family file
_REGISTRY = {
    **_resnet.MODELS,
    **_resnetv2.MODELS,
    **_vgg.MODELS,
    **_wrn.MODELS,
}


def names():
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def create(name, num_classes=100, in_channels=3, seed=0):
    """Build backbone ``name`` (see :func:`names`) for ``num_classes`` classes and
    ``in_channels``-channel 32x32 inputs, initialised from ``default_rng(seed)``."""
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; available: {', '.join(names())}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg}: expected a positive int, got {value!r}")
    return _REGISTRY[name](num_classes=int(num_classes), in_channels=int(in_channels),
                           rng=np.random.default_rng(seed))


def identify(state_dict, num_classes=None, in_channels=None):
    """Names of the backbones whose ``state_dict`` has exactly these keys and shapes (what a
    checkpoint holds); see :func:`matches`."""
    return [name for name, _, _ in matches(state_dict, num_classes, in_channels)]


def matches(state_dict, num_classes=None, in_channels=None):
    """``(name, num_classes, in_channels)`` of each backbone whose state_dict has exactly the
    keys and shapes of ``state_dict`` (a missing BatchNorm ``num_batches_tracked``, as in old
    PyTorch checkpoints, is ignored). ``num_classes`` / ``in_channels`` default to what the
    state_dict says: the rows of the backbone's last linear layer and the input channels of its
    first convolution, found by the backbone's own parameter names (so any key order works)."""
    def keys(names):
        return {k for k in names if not k.endswith(_BATCH_COUNTER)}

    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    found = []
    for name in names():
        reference, stem, classifier = _layout(name, 100, 3)
        if stem is None or keys(reference) != keys(shapes):
            continue
        classes = num_classes if num_classes is not None else (shapes[classifier] or (0,))[0]
        channels = in_channels if in_channels is not None else (shapes[stem] + (0, 0))[1]
        if (classes, channels) != (100, 3):
            try:
                reference, _, _ = _layout(name, int(classes), int(channels))
            except ValueError:  # e.g. 0 classes: no such model
                continue
        if all(shapes[k] == reference[k] for k in keys(shapes)):
            found.append((name, int(classes), int(channels)))
    return found


_BATCH_COUNTER = ".num_batches_tracked"


@functools.lru_cache(maxsize=None)
def _layout(name, num_classes, in_channels):
    """(key -> shape of backbone ``name``'s state_dict, its first conv's weight key, its last
    linear layer's weight key); built once per arguments, for :func:`matches`."""
    model = create(name, num_classes=num_classes, in_channels=in_channels)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        return shapes, None, None
    return shapes, f"{convs[0]}.weight", f"{linears[-1]}.weight"


def count_parameters(model):
    """Number of trainable scalars (what ``sum(p.numel() for p in model.parameters())`` gives)."""
    return int(sum(p.data.size for p in model.parameters()))


def count_flops(model, input_shape=(1, 3, 32, 32)):
    """Forward FLOPs (2 x multiply-adds) of the convolutions and linear layers for a batch of
    ``input_shape``; BN, ReLU, pooling and adds are left out (a few percent). Runs one forward
    on zeros in eval mode to learn each layer's output size; the training flag is restored."""
    was_training = model.training
    sizes = {}
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    originals = {id(m): m.forward for m in layers}

    def recording(m):
        def forward(x, *args, **kwargs):
            y = originals[id(m)](x, *args, **kwargs)
            sizes[id(m)] = y.shape
            return y
        return forward

    try:
        for m in layers:
            object.__setattr__(m, "forward", recording(m))
        model.eval()
        model(np.zeros(input_shape, dtype=np.float32))
    finally:
        for m in layers:
            object.__delattr__(m, "forward")
        model.train(was_training)
    macs = 0
    for m in layers:
        out = sizes[id(m)]
        macs += int(np.prod(out)) * int(np.prod(m.weight.data.shape[1:]))
    return 2 * macs
