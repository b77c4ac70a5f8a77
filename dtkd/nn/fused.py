"""Layer sequences computed as one kernel call where that is exact."""
import numpy as np

from .. import _C
from ._checks import check_activation
from .grad_mode import is_grad_enabled


def conv_bn(conv, bn, x):
    """``bn(conv(x))``. In eval mode under ``no_grad`` the BatchNorm is an affine map per
    channel, folded into the convolution's weights and bias (computed afresh each call from
    the current parameters and running statistics, so nothing goes stale)."""
    if bn.training or is_grad_enabled():
        return bn(conv(x))
    check_activation(x, "x", "Conv2d", 4, conv.in_channels)
    scale = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    shift = bn.bias.data - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias.data * scale
    weight = (conv.weight.data * scale[:, None, None, None]).astype(np.float32)
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    return _C.conv2d_forward(x, weight, shift.astype(np.float32), sh, sw, ph, pw, conv.groups)
