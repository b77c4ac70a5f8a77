"""Layer sequences computed as one kernel call where that is exact."""
import numpy as np

from .. import _C
from ._checks import check_activation
from .conv import WINOGRAD_TILE_EVAL, uses_winograd
from .grad_mode import is_grad_enabled


def folds_batchnorm(bn):
    """True when ``conv_bn`` folds ``bn`` into the convolution (eval mode under ``no_grad``)."""
    return not bn.training and not is_grad_enabled()


def conv_bn(conv, bn, x, residual=None, relu=False, overwrite_residual=False):
    """``bn(conv(x))``, plus ``residual`` then ReLU when given (as a block's tail,
    ``relu(bn(conv(x)) + residual)``). In eval mode under ``no_grad`` the BatchNorm is an affine
    map per channel, folded into the convolution's weights and bias, and the residual add and
    ReLU run in the convolution's epilogue when it is a Winograd one. Outside that mode the
    conv and the BatchNorm run one by one (training keeps them as
    modules for backward, and the BatchNorm applies residual and ReLU in its own pass: see
    ``BatchNorm2d.forward``). ``overwrite_residual``: the result may be written into
    ``residual`` (a temporary of the caller's), saving an allocation."""
    if not folds_batchnorm(bn):
        return bn(conv(x), residual=residual, relu=relu)
    check_activation(x, "x", "Conv2d", 4, conv.in_channels)
    weight, shift, u = _folded(conv, bn)
    if u is not None:
        out = residual if residual is not None and overwrite_residual else None
        return _C.winograd_conv3x3_forward_transformed(x, u, shift, residual, bool(relu), out)
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    y = _C.conv2d_forward(x, weight, shift, sh, sw, ph, pw, conv.groups)
    if residual is not None:
        return _C.add_relu_forward(y, residual) if relu else _C.add_forward(y, residual)
    return _C.relu_forward(y) if relu else y


def _folded(conv, bn):
    """(folded weight, folded bias, Winograd weights or None) for the current parameters and
    running statistics. Cached on the conv against exact copies of every input of the fold:
    weights change after each optimizer step, on load_state_dict or by in-place edits, and
    running statistics in training, and any change of any element recomputes (an exact
    comparison costs ~1/10 of the fold + Winograd weight transform it saves)."""
    sources = (conv.weight.data, None if conv.bias is None else conv.bias.data, bn.weight.data,
               bn.bias.data, bn.running_mean, bn.running_var, bn.eps, uses_winograd(conv))
    cache = conv.__dict__.get("_fold_cache")
    if cache is not None and _same(cache[0], sources):
        return cache[1]
    scale = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    shift = bn.bias.data - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias.data * scale
    weight = (conv.weight.data * scale[:, None, None, None]).astype(np.float32)
    shift = shift.astype(np.float32)
    u = _C.winograd_transform_weights(weight, WINOGRAD_TILE_EVAL) if sources[-1] else None
    result = (None if u is not None else weight, shift, u)
    copies = tuple(s.copy() if isinstance(s, np.ndarray) else s for s in sources)
    object.__setattr__(conv, "_fold_cache", (copies, result))
    return result


def _same(cached, current):
    for a, b in zip(cached, current):
        if isinstance(a, np.ndarray):
            if not isinstance(b, np.ndarray) or a.shape != b.shape or not np.array_equal(a, b):
                return False
        elif a != b:
            return False
    return True
