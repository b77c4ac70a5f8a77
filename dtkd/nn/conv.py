"""2-D convolution (``torch.nn.Conv2d``): NCHW float32 activations, OIHW weights.

Algorithm (``set_conv_algorithm``): under 'auto' (the default), 3x3 stride-1 pad-1 ungrouped
convolutions with at least ``WINOGRAD_MIN_CHANNELS`` input channels run by Winograd
F(m x m, 3x3) (csrc/kernels/winograd.c): the forward, and in training the input gradient and,
where both channel counts are at least ``WINOGRAD_WEIGHT_GRAD_MIN_CHANNELS``, the weight
gradient; thinner layers keep the exact weight-gradient sum (padded rows or im2col + SGEMM).
'exact_weight_grad' is 'auto' with every weight gradient the exact sum (the default before
2026-12-07). Everything else, and everything under 'direct', runs the im2col + SGEMM
convolution (csrc/kernels/conv.c).
"""
import numpy as np

from .. import _C
from . import init
from ._checks import check_activation, check_grad, check_positive_int, pair
from .module import Module, Parameter

CONV_ALGORITHMS = ("auto", "exact_weight_grad", "direct")
# Below this many input channels the direct path keeps the conv: at the 3-channel stem
# Winograd measured 0.67-1.09x the direct conv (benchmarks/results/winograd.md).
WINOGRAD_MIN_CHANNELS = 16
# Output tile of the Winograd path: F(4x4) (36 products per 16 outputs) in eval and in training.
# In training, measured against a float64 model (benchmarks/bench_winograd_accuracy.py,
# benchmarks/RESULTS.md): resnet32's weight-gradient differences are 5e-3..5e-2 for F(4x4),
# F(2x2) and the exact 'direct' path alike (ReLU masks flipping on float32 rounding), not growing
# with depth, F(4x4)'s medians 8-13% above direct's; so F(4x4) stays the training default.
WINOGRAD_TILE_EVAL = 4
WINOGRAD_TILE_TRAIN = 4
# The Winograd weight gradient computes 1/4 of the exact sum's products (F(4x4)) but transforms
# x and dy per tile, a cost per channel against the GEMMs' per channel pair: it pays from 32
# channels. Measured at batch 64, 1 thread, on the AVX-512 and AVX2 paths of a Zen 4
# (benchmarks/RESULTS.md): C = O = 16 at 32x32 0.56-0.71x the exact padded-row kernel,
# 32 at 16x16 1.3x, 64 at 8x8 1.6x, 64 at 32x32 1.9-2.2x, 128-256 channels ~2x im2col.
# Both costs scale with the vector width, so the break-even is a channel count, not a CPU's.
# On a Zen 3 (AVX2, 512 KB L2): 16 channels 0.86x, 32 at 16x16 0.97x, 64 at 8x8 1.45x, 64 at
# 32x32 2.0x; on its portable path (no padded-row kernel for the exact sum) 1.3-2.9x from 16
# channels on: the rule holds there too (a portable-path gain at 16 channels is left unused).
WINOGRAD_WEIGHT_GRAD_MIN_CHANNELS = 32
_algorithm = ["auto"]


def set_conv_algorithm(name):
    """``'auto'`` (default: Winograd for the 3x3 stride-1 convolutions, their weight gradients
    included where it pays, see above), ``'exact_weight_grad'`` (the same with exact weight
    gradients) or ``'direct'`` (im2col + SGEMM everywhere: each output an exact float32 sum of
    products, at ~2-3x the time of those convolutions). Process-wide; returns the previous
    setting."""
    if name not in CONV_ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: expected one of {CONV_ALGORITHMS}, got {name!r}")
    previous = _algorithm[0]
    _algorithm[0] = name
    return previous


def get_conv_algorithm():
    """The current setting of ``set_conv_algorithm``."""
    return _algorithm[0]


def uses_winograd(conv):
    """True when ``conv`` (a Conv2d) runs by Winograd under the current algorithm setting."""
    return (_algorithm[0] != "direct" and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.groups == 1
            and conv.in_channels >= WINOGRAD_MIN_CHANNELS)


def uses_winograd_weight_grad(conv):
    """True when ``conv``'s weight gradient in training runs by Winograd (see above)."""
    return (_algorithm[0] == "auto" and uses_winograd(conv)
            and min(conv.in_channels, conv.out_channels) >= WINOGRAD_WEIGHT_GRAD_MIN_CHANNELS)


class Conv2d(Module):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True, rng=None)``.

    Weight (out_channels, in_channels // groups, kh, kw) and bias are initialised like PyTorch's
    default (uniform in +-1/sqrt(fan_in)) from ``rng``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, rng=None):
        super().__init__()
        layer = "Conv2d"
        self.in_channels = check_positive_int(in_channels, "in_channels", layer)
        self.out_channels = check_positive_int(out_channels, "out_channels", layer)
        self.kernel_size = pair(kernel_size, "kernel_size", layer, 1)
        self.stride = pair(stride, "stride", layer, 1)
        self.padding = pair(padding, "padding", layer, 0)
        self.groups = check_positive_int(groups, "groups", layer)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        rng = init.get_rng(rng)
        shape = (out_channels, in_channels // groups) + self.kernel_size
        fan_in = init.fans(shape)[0]
        self.weight = Parameter(init.uniform_fan_in(shape, fan_in, rng))
        self.bias = Parameter(init.uniform_fan_in((out_channels,), fan_in, rng)) if bias else None
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "Conv2d", 4, self.in_channels)
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw) = self.stride, self.padding
        if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
            raise ValueError(f"Conv2d: x of spatial size {x.shape[2:]} (padding {self.padding}) is "
                             f"smaller than the kernel {self.kernel_size}")
        bias = None if self.bias is None else self.bias.data
        winograd = uses_winograd(self)
        if winograd:
            y = _C.winograd_conv3x3_forward(x, self.weight.data, bias, WINOGRAD_TILE_TRAIN)
        else:
            y = _C.conv2d_forward(x, self.weight.data, bias, sh, sw, ph, pw, self.groups)
        self._save_for_backward((x, y.shape, winograd))
        return y

    def backward(self, grad_out, need_dx=True):
        """Accumulate weight/bias gradients; return dL/dx (None when ``need_dx`` is False,
        e.g. for a network's first layer, which saves a full pass)."""
        x, y_shape, winograd = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, y_shape, "Conv2d")
        self._saved = None
        (sh, sw), (ph, pw) = self.stride, self.padding
        bias_grad = None if self.bias is None else self.bias.grad
        if winograd:
            # the weight gradient by Winograd on wide enough layers, else the exact sum (from
            # padded rows on thin layers, else by im2col); the input gradient by Winograd,
            # both with the forward's tile size
            if uses_winograd_weight_grad(self):
                _C.winograd_conv3x3_backward_weight(dy, x, self.weight.grad, WINOGRAD_TILE_TRAIN)
            else:
                _C.conv3x3_backward_weight(dy, x, self.weight.grad)
            if bias_grad is not None:
                _C.conv2d_backward(dy, x, self.weight.data, sh, sw, ph, pw, 1, None, bias_grad, False)
            return (_C.winograd_conv3x3_backward_input(dy, self.weight.data, WINOGRAD_TILE_TRAIN)
                    if need_dx else None)
        return _C.conv2d_backward(dy, x, self.weight.data, sh, sw, ph, pw, self.groups,
                                  self.weight.grad, bias_grad, bool(need_dx))

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
