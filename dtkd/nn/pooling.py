"""Pooling over NCHW activations: max, average and global average (square windows)."""
from .. import _C
from ._checks import check_activation, check_grad, check_positive_int
from .module import Module


def _window(kernel_size, stride, padding, layer):
    k = check_positive_int(kernel_size, "kernel_size", layer)
    s = k if stride is None else check_positive_int(stride, "stride", layer)
    p = check_positive_int(padding, "padding", layer, minimum=0)
    if 2 * p > k:
        raise ValueError(f"{layer}: padding ({p}) must be at most half the kernel size ({k})")
    return k, s, p


def _check_fits(x, k, p, layer):
    if x.shape[2] + 2 * p < k or x.shape[3] + 2 * p < k:
        raise ValueError(f"{layer}: x of spatial size {x.shape[2:]} is smaller than the window {k} "
                         f"(padding {p})")


class MaxPool2d(Module):
    """``MaxPool2d(kernel_size, stride=None, padding=0)`` (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _window(kernel_size, stride, padding, "MaxPool2d")
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "MaxPool2d", 4)
        _check_fits(x, self.kernel_size, self.padding, "MaxPool2d")
        y, argmax = _C.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._save_for_backward((argmax, x.shape))
        return y

    def backward(self, grad_out):
        argmax, x_shape = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, argmax.shape, "MaxPool2d")
        self._saved = None
        return _C.maxpool2d_backward(dy, argmax, x_shape[2], x_shape[3])

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """``AvgPool2d(kernel_size, stride=None, padding=0)``; padding counts in the average
    (PyTorch's default ``count_include_pad=True``). A window covering the whole plane takes
    the global-average kernel (mdistiller's ``AvgPool2d(8)`` on 8x8 maps)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _window(kernel_size, stride, padding, "AvgPool2d")
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "AvgPool2d", 4)
        _check_fits(x, self.kernel_size, self.padding, "AvgPool2d")
        n, c, h, w = x.shape
        is_global = self.padding == 0 and h == w == self.kernel_size
        if is_global:
            y = _C.global_avgpool_forward(x).reshape(n, c, 1, 1)
        else:
            y = _C.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._save_for_backward((x.shape, y.shape, is_global))
        return y

    def backward(self, grad_out):
        x_shape, y_shape, is_global = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, y_shape, "AvgPool2d")
        self._saved = None
        n, c, h, w = x_shape
        if is_global:
            return _C.global_avgpool_backward(dy.reshape(n, c), h, w)
        return _C.avgpool2d_backward(dy, h, w, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Global average pooling: ``AdaptiveAvgPool2d(1)`` (the only output size supported),
    (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self, output_size=1):
        super().__init__()
        if output_size not in (1, (1, 1)):
            raise ValueError(f"AdaptiveAvgPool2d: only output_size=1 is supported, got {output_size!r}")
        self.output_size = 1
        self._saved = None

    def forward(self, x):
        check_activation(x, "x", "AdaptiveAvgPool2d", 4)
        self._save_for_backward(x.shape)
        return _C.global_avgpool_forward(x).reshape(x.shape[0], x.shape[1], 1, 1)

    def backward(self, grad_out):
        n, c, h, w = self._saved_for_backward(self._saved)
        dy = check_grad(grad_out, (n, c, 1, 1), "AdaptiveAvgPool2d")
        self._saved = None
        return _C.global_avgpool_backward(dy.reshape(n, c), h, w)

    def extra_repr(self):
        return "output_size=1"
