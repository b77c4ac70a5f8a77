"""2-D convolution (``torch.nn.Conv2d``): NCHW float32 activations, OIHW weights."""
from .. import _C
from . import init
from ._checks import check_activation, check_grad, check_positive_int, pair
from .module import Module, Parameter


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
        y = _C.conv2d_forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                              sh, sw, ph, pw, self.groups)
        self._save_for_backward((x, y.shape))
        return y

    def backward(self, grad_out, need_dx=True):
        """Accumulate weight/bias gradients; return dL/dx (None when ``need_dx`` is False,
        e.g. for a network's first layer, which saves a full pass)."""
        x, y_shape = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, y_shape, "Conv2d")
        (sh, sw), (ph, pw) = self.stride, self.padding
        dx = _C.conv2d_backward(dy, x, self.weight.data, sh, sw, ph, pw, self.groups,
                                self.weight.grad, None if self.bias is None else self.bias.grad,
                                bool(need_dx))
        self._saved = None
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
